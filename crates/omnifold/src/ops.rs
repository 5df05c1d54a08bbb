//! The operator's HTTP port (`server.metrics_listen`): Prometheus
//! `/metrics`, and `/livez` and `/readyz` for Kubernetes probes; and the
//! store and ownership figures sampled for `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use omnifold_ingest::IngestStatus;
use omnifold_server::IngestHealth;
use omnifold_store::StoreHandle;

/// Buckets of the latency histograms, in seconds.
const SECONDS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Buckets of `omnifold_batch_records`.
const RECORDS: [f64; 9] = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10000.0];

/// Installs the Prometheus recorder (before anything records), with
/// histograms as histograms: latencies in seconds, batch sizes in records.
pub fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("omnifold_batch_records".into()), &RECORDS))
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    counters_at_zero();
    Ok(handle)
}

/// Counters an alert watches, exported at 0 before anything happens:
/// `rate()` and `increase()` need a first sample, and an absent series
/// cannot tell "never happened" from "not exported".
fn counters_at_zero() {
    for name in [
        "omnifold_events_applied_total",
        "omnifold_events_duplicate_total",
        "omnifold_partition_stalls_total",
        "omnifold_audit_failures_total",
        "omnifold_erasures_overdue_total",
        "omnifold_profile_changes_published_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in ["decode", "validation", "too_large", "rule", "too_late", "forged", "bug"] {
        metrics::counter!("omnifold_dead_letters_total", "reason" => reason).increment(0);
    }
}

/// What the probes read.
#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    ingest: Arc<dyn IngestHealth>,
    max_lag: i64,
}

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    ingest: Arc<dyn IngestHealth>,
    max_lag: i64,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Ops { metrics, ingest, max_lag });
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

async fn render(State(ops): State<Ops>) -> String {
    ops.metrics.render()
}

/// 200 when reads are fresh (the same as the gRPC health of `""`), else
/// 503 with the reason.
async fn ready(State(ops): State<Ops>) -> (StatusCode, String) {
    match ops.ingest.report().readiness(ops.max_lag) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// How often the store and ownership figures are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples RocksDB's figures and what this instance folds into gauges,
/// and keeps the recorder's histograms drained, until the task is dropped.
pub async fn sample(metrics: PrometheusHandle, stores: Arc<StoreHandle>, status: IngestStatus) {
    loop {
        let f = stores.get().figures();
        metrics::gauge!("omnifold_rocksdb_block_cache_usage_bytes").set(f.block_cache_usage_bytes as f64);
        metrics::gauge!("omnifold_rocksdb_pending_compaction_bytes").set(f.pending_compaction_bytes as f64);
        metrics::gauge!("omnifold_rocksdb_live_data_bytes").set(f.live_data_bytes as f64);
        metrics::gauge!("omnifold_rocksdb_sst_files_bytes").set(f.sst_files_bytes as f64);
        metrics::gauge!("omnifold_rocksdb_memtable_bytes").set(f.memtable_bytes as f64);
        let s = status.snapshot();
        let folded = s.partitions.values().filter(|h| !h.resting).count();
        let serving = s.partitions.values().filter(|h| h.serving()).count();
        metrics::gauge!("omnifold_partitions_folded").set(folded as f64);
        metrics::gauge!("omnifold_partitions_serving").set(serving as f64);
        metrics::gauge!("omnifold_partitions_standby").set(s.standby.len() as f64);
        metrics.run_upkeep();
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnifold_server::{IngestReport, PartitionReport};

    #[derive(Debug)]
    struct Lagging(i64);

    impl IngestHealth for Lagging {
        fn report(&self) -> IngestReport {
            let p = PartitionReport { stalled: None, lag: Some(self.0) };
            IngestReport { running: true, broker_up: Some(true), partitions: [(0, p)].into(), ..Default::default() }
        }
    }

    fn ops(lag: i64) -> State<Ops> {
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        State(Ops { metrics, ingest: Arc::new(Lagging(lag)), max_lag: 10 })
    }

    #[tokio::test]
    async fn readyz_answers_503_with_the_reason_while_a_partition_is_too_far_behind() {
        assert_eq!(ready(ops(10)).await, (StatusCode::OK, "ready\n".into()));
        let (code, body) = ready(ops(11)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: partition 0 is 11 records behind (server.ready_max_lag = 10)\n");
    }
}
