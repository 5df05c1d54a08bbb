//! Ingest's health as the server sees it: behind a trait, so the server
//! needs no Kafka client. The binary implements it with the ingest crate's
//! status. `grpc.health.v1` reports it as the service `omnifold.ingest`:
//! NOT_SERVING while the broker is away, ingest is not running or a
//! partition is stalled; reads (the omnifold.v1 services) stay SERVING.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The health-check service name of ingest.
pub const INGEST_SERVICE: &str = "omnifold.ingest";

/// One reading of ingest's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub running: bool,
    /// `None` until known.
    pub broker_up: Option<bool>,
    /// When the broker's state last changed (Unix milliseconds).
    pub broker_since_ms: i64,
    /// Records written by a batch and not yet acknowledged.
    pub records_waiting: u64,
    /// The partitions this instance folds.
    pub partitions: BTreeMap<u32, PartitionReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionReport {
    /// Why the partition is stalled, since when (Unix ms), attempts since.
    pub stalled: Option<(String, i64, u32)>,
}

impl IngestReport {
    /// Folding everything it should: running, broker up, nothing stalled.
    pub fn healthy(&self) -> bool {
        self.running && self.broker_up != Some(false) && self.partitions.values().all(|p| p.stalled.is_none())
    }
}

/// Where the server reads ingest's health.
pub trait IngestHealth: std::fmt::Debug + Send + Sync + 'static {
    fn report(&self) -> IngestReport;

    /// When the broker went down, if it is down now (Unix milliseconds):
    /// commands then answer UNAVAILABLE at once.
    fn broker_down_since(&self) -> Option<i64> {
        let r = self.report();
        (r.broker_up == Some(false)).then_some(r.broker_since_ms)
    }
}

/// Keeps `omnifold.ingest` in the health service up to date.
pub(crate) async fn watch(ingest: Arc<dyn IngestHealth>, reporter: HealthReporter) {
    let mut last = None;
    loop {
        let status = if ingest.report().healthy() { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            reporter.set_service_status(INGEST_SERVICE, status).await;
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
