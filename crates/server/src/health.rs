//! Ingest's health as the server sees it: behind a trait, so the server
//! needs no Kafka client. The binary implements it with the ingest crate's
//! status. `grpc.health.v1` reports, per service:
//!
//! - `omnifold.ingest`: NOT_SERVING while the broker is away, ingest is not
//!   running or a partition is stalled;
//! - `omnifold.v1.ProfileService`, `omnifold.v1.AdminService` and `""`
//!   (the server, what a Kubernetes gRPC probe asks): NOT_SERVING while a
//!   partition folded here is more than `server.ready_max_lag` records
//!   behind its end, so reads would be stale. A broker outage leaves them
//!   SERVING: reads answer from the store;
//! - `omnifold.v1.LoyaltyService`: also NOT_SERVING while the broker is
//!   away or ingest is unhealthy, since redemptions go through the log.
//!
//! The HTTP `/readyz` of the binary answers the same as `""`.

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
    /// Records behind the partition's end (none until its end is known).
    pub lag: Option<i64>,
}

impl IngestReport {
    /// Folding everything it should: running, broker up, nothing stalled.
    pub fn healthy(&self) -> bool {
        self.running && self.broker_up != Some(false) && self.partitions.values().all(|p| p.stalled.is_none())
    }

    /// Whether reads are fresh: every partition folded here at most
    /// `max_lag` records behind its end; otherwise why not.
    pub fn caught_up(&self, max_lag: i64) -> Result<(), String> {
        for (p, r) in &self.partitions {
            match r.lag {
                None => return Err(format!("the end of partition {p} is not known yet")),
                Some(lag) if lag > max_lag => {
                    return Err(format!("partition {p} is {lag} records behind (server.ready_max_lag = {max_lag})"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Why the instance is not ready to serve reads, if it is not.
    pub fn readiness(&self, max_lag: i64) -> Result<(), String> {
        if !self.running {
            return Err("ingest is not running".into());
        }
        self.caught_up(max_lag)
    }
}

/// The default of `server.ready_max_lag`.
pub const DEFAULT_READY_MAX_LAG: i64 = 10_000;

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

/// The health-check names and what each needs (see the module's doc).
const READS: [&str; 3] = ["", "omnifold.v1.ProfileService", "omnifold.v1.AdminService"];
const WRITES: &str = "omnifold.v1.LoyaltyService";

/// Keeps every service's status in the health service up to date.
pub(crate) async fn watch(ingest: Arc<dyn IngestHealth>, reporter: HealthReporter, max_lag: i64) {
    let mut last: BTreeMap<&'static str, ServingStatus> = BTreeMap::new();
    loop {
        let report = ingest.report();
        let serving = |ok: bool| if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
        let reads = serving(report.readiness(max_lag).is_ok());
        let mut now = vec![
            (INGEST_SERVICE, serving(report.healthy())),
            (WRITES, serving(report.healthy() && reads == ServingStatus::Serving)),
        ];
        now.extend(READS.iter().map(|s| (*s, reads)));
        for (service, status) in now {
            if last.get(service) != Some(&status) {
                reporter.set_service_status(service, status).await;
                last.insert(service, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lags: &[Option<i64>]) -> IngestReport {
        let partitions =
            lags.iter().enumerate().map(|(p, lag)| (p as u32, PartitionReport { stalled: None, lag: *lag }));
        IngestReport { running: true, broker_up: Some(true), partitions: partitions.collect(), ..Default::default() }
    }

    #[test]
    fn ready_when_every_partition_is_within_the_lag_and_its_end_is_known() {
        assert_eq!(report(&[Some(0), Some(10)]).readiness(10), Ok(()));
        let behind = report(&[Some(0), Some(11)]).readiness(10).unwrap_err();
        assert_eq!(behind, "partition 1 is 11 records behind (server.ready_max_lag = 10)");
        assert_eq!(report(&[None]).readiness(10).unwrap_err(), "the end of partition 0 is not known yet");
        let stopped = IngestReport { running: false, ..report(&[Some(0)]) };
        assert_eq!(stopped.readiness(10).unwrap_err(), "ingest is not running");
        // A broker outage alone leaves reads ready (they answer from the store).
        let away = IngestReport { broker_up: Some(false), ..report(&[Some(0)]) };
        assert!(away.readiness(10).is_ok() && !away.healthy());
    }
}
