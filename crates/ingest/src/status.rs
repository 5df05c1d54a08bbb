//! What ingest is doing, for health checks and `GetPartitionStatus`: whether
//! the broker answers, what is waiting to be written to it, and each
//! partition's health (stalled, with the reason and since when).
//!
//! Ingest writes it; the server reads snapshots. The broker's state comes
//! from the ingest consumer's librdkafka statistics (`statistics.interval.ms`):
//! the broker is up when at least one of its connections is up. The
//! consumer reports it (it fetches all the time), and the outbox producer
//! while it has records waiting (the consumer is not polled then); an idle
//! producer says nothing, since a broker may close an idle connection
//! without anything being wrong.
//!
//! librdkafka's own logs and errors go to `tracing` at debug level through
//! [`quiet_log`] and [`quiet_error`]: during an outage every client would
//! otherwise log each reconnect attempt as an error. The status says it once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::statistics::Statistics;

/// How often every client reports the broker's state, in milliseconds.
pub(crate) const STATS_INTERVAL_MS: u32 = 500;

/// A shared, cheap-to-clone view of ingest's health.
#[derive(Debug, Clone, Default)]
pub struct IngestStatus(Arc<Mutex<Snapshot>>);

/// One reading of ingest's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Whether ingest is running (it has started and not stopped).
    pub running: bool,
    /// `None` until the first report; then whether a broker connection is up.
    pub broker_up: Option<bool>,
    /// When the broker's state last changed (Unix milliseconds).
    pub broker_since_ms: i64,
    /// Records waiting for the broker to acknowledge them, and since when.
    pub waiting: Option<Waiting>,
    /// Partitions this instance folds, by number, and those it answers for
    /// from its store after a restart until the group assigns them
    /// (`PartitionHealth::resting`).
    pub partitions: BTreeMap<u32, PartitionHealth>,
    /// Warm copies of partitions other instances own (`kafka.standby`):
    /// the next offset each has folded to.
    pub standby: BTreeMap<u32, i64>,
    /// The consumer group and topic, the labels of the lag metrics.
    pub source: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub records: usize,
    pub since_ms: i64,
}

/// One partition's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionHealth {
    /// Set while the partition is stalled: it folds nothing until the
    /// cause is gone (retried with backoff).
    pub stalled: Option<Stall>,
    /// The next offset the fold will read: the store's at assignment, then
    /// each commit's.
    pub applied: i64,
    /// The offset the partition must reach before this instance answers
    /// for it (the ownership thread sets it after assignment; docs/scale-out.md).
    pub target: Option<i64>,
    /// The partition's end (high watermark) at the consumer's last
    /// statistics, for lag.
    pub end: Option<i64>,
    /// Ends seen that the fold has not reached yet, each with when it was
    /// first seen (Unix ms), oldest first: the first one's time is when
    /// the oldest record not folded yet was there (lag in seconds, as
    /// kafka-lag-exporter estimates it from offsets and times).
    pub ends_seen: std::collections::VecDeque<(i64, i64)>,
    /// Not assigned (yet): kept from this instance's own last ownership
    /// after a restart, answered from the store until the group assigns
    /// the partition or another instance claims it.
    pub resting: bool,
    /// The latest snapshot of the partition this instance knows of: taken
    /// or restored here, or found in the snapshot store.
    pub snapshot: Option<SnapshotMark>,
}

/// A snapshot's place in the partition and when it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMark {
    pub next_offset: i64,
    pub taken_at_ms: i64,
}

/// Ends remembered per partition for the lag in seconds; when more
/// arrive, the second oldest is dropped, so the oldest time stays exact.
const ENDS_SEEN: usize = 64;

impl PartitionHealth {
    /// Caught up far enough to answer for the partition.
    pub fn serving(&self) -> bool {
        self.target.is_some_and(|t| self.applied >= t)
    }

    /// Records behind the partition's end (0 when the end is not known).
    pub fn lag(&self) -> i64 {
        self.end.map_or(0, |end| (end - self.applied).max(0))
    }

    /// How long the oldest record not folded yet has been in the
    /// partition, in milliseconds (0 when caught up).
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        match self.ends_seen.front() {
            Some((_, at)) if self.lag() > 0 => (now_ms - at).max(0),
            _ => 0,
        }
    }

    fn saw_end(&mut self, end: i64, at: i64) {
        if end > self.applied && self.ends_seen.back().is_none_or(|(last, _)| end > *last) {
            if self.ends_seen.len() >= ENDS_SEEN {
                self.ends_seen.remove(1);
            }
            self.ends_seen.push_back((end, at));
        }
    }

    /// Drops the ends the fold has reached.
    fn forget_folded_ends(&mut self) {
        while self.ends_seen.front().is_some_and(|(end, _)| *end <= self.applied) {
            self.ends_seen.pop_front();
        }
    }
}

/// One partition's lag, as the metrics name it.
struct Lag {
    partition: u32,
    records: i64,
    millis: i64,
    applied: i64,
    end: Option<i64>,
}

impl Snapshot {
    /// The lag of every partition folded here.
    fn lags(&self, now_ms: i64) -> Vec<Lag> {
        let folded = self.partitions.iter().filter(|(_, h)| !h.resting);
        folded
            .map(|(p, h)| Lag {
                partition: *p,
                records: h.lag(),
                millis: h.lag_ms(now_ms),
                applied: h.applied,
                end: h.end,
            })
            .collect()
    }
}

/// The lags as gauges, named and labelled as kafka-lag-exporter does, so
/// its dashboards and alerts apply.
fn export_lag(group: &str, topic: &str, lags: &[Lag]) {
    for l in lags {
        let labels = [("group", group.to_owned()), ("topic", topic.to_owned()), ("partition", l.partition.to_string())];
        metrics::gauge!("kafka_consumergroup_group_lag", &labels).set(l.records as f64);
        metrics::gauge!("kafka_consumergroup_group_lag_seconds", &labels).set(l.millis as f64 / 1e3);
        metrics::gauge!("kafka_consumergroup_group_offset", &labels).set(l.applied as f64);
        if let Some(end) = l.end {
            let labels = [("topic", topic.to_owned()), ("partition", l.partition.to_string())];
            metrics::gauge!("kafka_partition_latest_offset", &labels).set(end as f64);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub reason: String,
    pub since_ms: i64,
    /// Attempts since it stalled.
    pub retries: u32,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl IngestStatus {
    fn with<T>(&self, f: impl FnOnce(&mut Snapshot) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| s.clone())
    }

    /// Whether the broker is known to be down right now.
    pub fn broker_down(&self) -> bool {
        self.with(|s| s.broker_up == Some(false))
    }

    /// When the broker went down, if it is down (Unix milliseconds).
    pub fn broker_down_since(&self) -> Option<i64> {
        self.with(|s| (s.broker_up == Some(false)).then_some(s.broker_since_ms))
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.with(|s| s.running = running);
    }

    pub(crate) fn set_broker(&self, up: bool) {
        self.with(|s| {
            if s.broker_up != Some(up) {
                s.broker_up = Some(up);
                s.broker_since_ms = now_ms();
                if up {
                    tracing::info!("the broker answers again");
                } else {
                    tracing::warn!("no broker connection is up; ingest waits and retries, reads go on");
                }
            }
        });
    }

    /// Reads the broker's state from a client's statistics.
    /// Until a connection was up once, a client that is still connecting
    /// says nothing (a broker that cannot be reached at start is reported
    /// by the wait for it).
    pub(crate) fn observe(&self, stats: &Statistics) {
        if stats.client_type == "consumer" {
            self.observe_ends(stats);
        }
        let up = stats.brokers.values().any(|b| b.state == "UP");
        let seen_up = self.with(|s| s.broker_up.is_some());
        if up || seen_up {
            self.set_broker(up);
        }
    }

    /// The ends of the partitions this instance folds, from its consumer's
    /// statistics (it consumes the events topic only).
    fn observe_ends(&self, stats: &Statistics) {
        let now = now_ms();
        let lags = self.with(|s| {
            for part in stats.topics.values().flat_map(|t| t.partitions.values()) {
                let (Ok(p), true) = (u32::try_from(part.partition), part.hi_offset >= 0) else {
                    continue;
                };
                if let Some(h) = s.partitions.get_mut(&p) {
                    h.end = Some(part.hi_offset);
                    h.saw_end(part.hi_offset, now);
                }
            }
            s.source.clone().map(|source| (source, s.lags(now)))
        });
        // Outside the lock the fold's commits take.
        if let Some(((group, topic), lags)) = lags {
            export_lag(&group, &topic, &lags);
        }
    }

    pub(crate) fn set_waiting(&self, waiting: Option<usize>) {
        self.with(|s| match (waiting, &s.waiting) {
            (None, _) => s.waiting = None,
            (Some(n), Some(w)) => s.waiting = Some(Waiting { records: n, since_ms: w.since_ms }),
            (Some(n), None) => s.waiting = Some(Waiting { records: n, since_ms: now_ms() }),
        });
    }

    /// Partitions assigned, each with the store's next offset for it. One
    /// this instance was answering for already (resting after a restart)
    /// keeps being answered: its target is where the store is.
    pub(crate) fn assigned(&self, partitions: impl IntoIterator<Item = (u32, i64)>) {
        self.with(|s| {
            for (p, applied) in partitions {
                let target = s.partitions.get(&p).filter(|h| h.resting && h.applied <= applied).map(|_| applied);
                s.partitions.insert(p, PartitionHealth { applied, target, ..PartitionHealth::default() });
            }
        });
    }

    /// A partition this instance owned last, with its store folded to
    /// `applied`, answered while no other instance claims it (unless the
    /// group assigned it meanwhile, which takes precedence).
    pub(crate) fn rest(&self, partition: u32, applied: i64) {
        self.with(|s| {
            s.partitions.entry(partition).or_insert(PartitionHealth {
                applied,
                target: Some(applied),
                resting: true,
                ..PartitionHealth::default()
            });
        });
    }

    /// A batch of `partition` committed: the fold reads from `next` on.
    pub(crate) fn committed(&self, partition: u32, next: i64) {
        self.with(|s| {
            if let Some(h) = s.partitions.get_mut(&partition) {
                h.applied = h.applied.max(next);
                h.forget_folded_ends();
            }
        });
    }

    /// The consumer group and topic ingest reads (the lag metrics' labels).
    pub(crate) fn set_source(&self, group: &str, topic: &str) {
        self.with(|s| s.source = Some((group.to_owned(), topic.to_owned())));
    }

    /// Sets where `partition` must reach before it is answered for.
    pub(crate) fn set_target(&self, partition: u32, target: i64) {
        self.with(|s| {
            if let Some(h) = s.partitions.get_mut(&partition) {
                h.target = Some(target);
            }
        });
    }

    /// One partition's health, if this instance folds it.
    pub fn partition(&self, partition: u32) -> Option<PartitionHealth> {
        self.with(|s| s.partitions.get(&partition).cloned())
    }

    /// The partitions this instance folds, each with the next offset to
    /// fold (not those it only answers for from its store after a restart).
    pub fn folded(&self) -> Vec<(u32, i64)> {
        self.with(|s| s.partitions.iter().filter(|(_, h)| !h.resting).map(|(p, h)| (*p, h.applied)).collect())
    }

    /// The next offset the warm copy of `partition` has folded to, if this
    /// instance keeps one.
    pub fn standby(&self, partition: u32) -> Option<i64> {
        self.with(|s| s.standby.get(&partition).copied())
    }

    pub(crate) fn standby_at(&self, partition: u32, applied: i64) {
        self.with(|s| s.standby.insert(partition, applied));
    }

    pub(crate) fn standby_dropped(&self, partition: u32) {
        self.with(|s| s.standby.remove(&partition));
    }

    /// Notes the latest snapshot of a partition this instance folds.
    pub(crate) fn snapshot_known(&self, partition: u32, mark: SnapshotMark) {
        self.with(|s| {
            if let Some(h) = s.partitions.get_mut(&partition)
                && h.snapshot.is_none_or(|m| m.next_offset <= mark.next_offset)
            {
                h.snapshot = Some(mark);
            }
        });
    }

    pub(crate) fn revoked(&self, partitions: impl IntoIterator<Item = u32>) {
        self.with(|s| {
            for p in partitions {
                s.partitions.remove(&p);
            }
        });
    }

    pub(crate) fn stall(&self, partition: u32, reason: &str) {
        self.with(|s| {
            let h = s.partitions.entry(partition).or_default();
            match &mut h.stalled {
                Some(st) if st.reason == reason => st.retries += 1,
                _ => h.stalled = Some(Stall { reason: reason.to_owned(), since_ms: now_ms(), retries: 0 }),
            }
        });
    }

    pub(crate) fn healthy(&self, partition: u32) {
        self.with(|s| {
            if let Some(h) = s.partitions.get_mut(&partition)
                && h.stalled.take().is_some()
            {
                tracing::info!(partition, "partition folds again");
            }
        });
    }
}

/// librdkafka's log lines, at debug level: the status reports what matters.
pub(crate) fn quiet_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    tracing::debug!(target: "librdkafka", ?level, fac, message);
}

/// librdkafka's global errors (a broker going away, a transport failure),
/// at debug level: the status reports them once.
pub(crate) fn quiet_error(error: &rdkafka::error::KafkaError, reason: &str) {
    tracing::debug!(target: "librdkafka", %error, reason);
}

/// A client context that keeps librdkafka quiet (see [`quiet_log`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        quiet_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        quiet_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_in_seconds_is_the_age_of_the_oldest_record_not_folded() {
        let mut h = PartitionHealth { applied: 10, end: Some(10), ..PartitionHealth::default() };
        h.saw_end(10, 1_000);
        assert_eq!((h.lag(), h.lag_ms(5_000)), (0, 0), "caught up");
        // Records arrive at 2 s and 3 s; the fold is still at 10.
        h.end = Some(12);
        h.saw_end(12, 2_000);
        h.end = Some(15);
        h.saw_end(15, 3_000);
        assert_eq!((h.lag(), h.lag_ms(6_000)), (5, 4_000), "waiting since 2 s");
        // The fold passes 12: the oldest left arrived at 3 s.
        h.applied = 13;
        h.forget_folded_ends();
        assert_eq!((h.lag(), h.lag_ms(6_000)), (2, 3_000));
        h.applied = 15;
        h.forget_folded_ends();
        assert_eq!((h.lag(), h.lag_ms(6_000)), (0, 0));
    }

    #[test]
    fn many_ends_keep_the_oldest_time() {
        let mut h = PartitionHealth { applied: 0, ..PartitionHealth::default() };
        for i in 1..=(ENDS_SEEN as i64 * 3) {
            h.end = Some(i);
            h.saw_end(i, i * 100);
        }
        assert_eq!(h.ends_seen.len(), ENDS_SEEN);
        assert_eq!(h.lag_ms(100_000), 100_000 - 100);
    }
}
