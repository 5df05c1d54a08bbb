//! Snapshots of the partitions this instance folds: taken on a schedule
//! (records folded and time since the last) and on demand
//! (`AdminService.TakeSnapshot`), on a thread of their own beside the fold.
//!
//! The fold never waits for a snapshot: an export reads one RocksDB
//! snapshot of the partition while batches go on committing. Restores
//! happen at assignment, before the partition is read (`consumer.rs`).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use omnifold_snapshots::{Snapshots, Taken};
use omnifold_store::StoreHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::warn;

use crate::status::{Quiet, SnapshotMark};
use crate::{IngestConfig, IngestStatus, Result, Shutdown, client_config};

/// How often the schedule is looked at.
const TICK: Duration = Duration::from_millis(250);
/// How long a partition whose snapshot failed waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// A request for snapshots now: of `partitions`, or of every partition
/// this instance folds when empty.
struct Request {
    partitions: Vec<u32>,
    reply: tokio::sync::oneshot::Sender<Vec<SnapshotOutcome>>,
}

/// What one partition's snapshot request came to.
#[derive(Debug)]
pub struct SnapshotOutcome {
    pub partition: u32,
    /// `Ok(None)`: the latest snapshot is already as far as the store.
    pub result: std::result::Result<Option<Taken>, String>,
}

/// Asks the snapshot thread for snapshots now.
#[derive(Debug, Clone)]
pub struct SnapshotRequests(SyncSender<Request>);

impl SnapshotRequests {
    /// Takes snapshots of `partitions` (every partition folded here when
    /// empty) and returns what each came to.
    pub async fn take(&self, partitions: Vec<u32>) -> std::result::Result<Vec<SnapshotOutcome>, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.0.try_send(Request { partitions, reply }).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => "a snapshot request is already waiting; try again".to_owned(),
            std::sync::mpsc::TrySendError::Disconnected(_) => "snapshots are not running".to_owned(),
        })?;
        answer.await.map_err(|_| "the snapshot thread stopped".to_owned())
    }
}

/// The sending and receiving ends for [`run_snapshots`].
pub fn snapshot_requests() -> (SnapshotRequests, SnapshotQueue) {
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    (SnapshotRequests(tx), SnapshotQueue(rx))
}

/// The requests [`run_snapshots`] answers.
#[derive(Debug)]
pub struct SnapshotQueue(Receiver<Request>);

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("partitions", &self.partitions).finish()
    }
}

/// Where a partition's schedule stands.
#[derive(Debug, Clone, Copy)]
struct Last {
    /// The next offset of the latest snapshot (or of the store when a
    /// take found nothing newer).
    offset: i64,
    at: Instant,
    failed: Option<Instant>,
}

/// Runs until `shutdown`: takes a snapshot of each partition this instance
/// folds once `every_records` were folded or `every_ms` passed since its
/// last (and it changed), and answers requests for snapshots now.
pub fn run_snapshots(
    cfg: &IngestConfig,
    snapshots: &Snapshots,
    stores: &StoreHandle,
    status: &IngestStatus,
    queue: SnapshotQueue,
    shutdown: &Shutdown,
) -> Result<()> {
    crate::priority::lower_this_thread(cfg.fold_nice);
    let probe: BaseConsumer<Quiet> = client_config(cfg).create_with_context(Quiet)?;
    let mut taker = Taker { cfg, snapshots, stores, status, probe, last: HashMap::new() };
    while !shutdown.is_triggered() {
        match queue.0.recv_timeout(TICK) {
            Ok(request) => taker.answer(request),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                shutdown.sleep(TICK);
            }
        }
        taker.scheduled();
    }
    Ok(())
}

struct Taker<'a> {
    cfg: &'a IngestConfig,
    snapshots: &'a Snapshots,
    stores: &'a StoreHandle,
    status: &'a IngestStatus,
    probe: BaseConsumer<Quiet>,
    last: HashMap<u32, Last>,
}

impl Taker<'_> {
    fn answer(&mut self, request: Request) {
        let folded = self.status.folded();
        let partitions: Vec<u32> =
            if request.partitions.is_empty() { folded.iter().map(|(p, _)| *p).collect() } else { request.partitions };
        let outcomes = partitions
            .into_iter()
            .map(|p| {
                let result = if folded.iter().any(|(f, _)| *f == p) {
                    self.take(p)
                } else {
                    Err(format!("partition {p} is not folded by this instance; ask its owner"))
                };
                SnapshotOutcome { partition: p, result }
            })
            .collect();
        let _ = request.reply.send(outcomes);
    }

    /// Takes the snapshots that are due.
    fn scheduled(&mut self) {
        let folded = self.status.folded();
        self.last.retain(|p, _| folded.iter().any(|(f, _)| f == p));
        for (p, applied) in folded {
            let last = match self.last.get(&p) {
                Some(last) => *last,
                None => self.first_look(p),
            };
            let cfg = self.snapshots.config();
            if due(cfg.every_records, cfg.every_ms, &last, applied) {
                let _ = self.take(p);
            }
        }
    }

    /// A partition seen for the first time: where its latest snapshot is.
    fn first_look(&mut self, p: u32) -> Last {
        let now = Instant::now();
        let last = match self.snapshots.latest(&self.cfg.topic, p) {
            Ok(Some(m)) => {
                self.status.snapshot_known(p, mark(&m));
                Last { offset: m.next_offset(), at: now, failed: None }
            }
            Ok(None) => Last { offset: 0, at: now, failed: None },
            Err(e) => {
                warn!(partition = p, error = %e, "cannot read the latest snapshot; trying again later");
                Last { offset: 0, at: now, failed: Some(now) }
            }
        };
        self.last.insert(p, last);
        last
    }

    fn take(&mut self, p: u32) -> std::result::Result<Option<Taken>, String> {
        let log_start =
            self.probe.fetch_watermarks(&self.cfg.topic, p as i32, Duration::from_secs(5)).ok().map(|w| w.0);
        let store = self.stores.get();
        let now = Instant::now();
        let result = self.snapshots.take(&store, &self.cfg.topic, p, log_start);
        let before = self.last.get(&p).map_or(0, |l| l.offset);
        let last = match &result {
            Ok(Some(t)) => {
                self.status.snapshot_known(p, mark(&t.manifest));
                Last { offset: t.manifest.next_offset(), at: now, failed: None }
            }
            Ok(None) => {
                let offset = store.next_offset(&self.cfg.topic, p).ok().flatten().unwrap_or(before).max(before);
                Last { offset, at: now, failed: None }
            }
            Err(e) => {
                warn!(partition = p, error = %e, "taking a snapshot failed; trying again later");
                Last { offset: before, at: now, failed: Some(now) }
            }
        };
        self.last.insert(p, last);
        result.map_err(|e| e.to_string())
    }
}

fn mark(m: &omnifold_snapshots::Manifest) -> SnapshotMark {
    SnapshotMark { next_offset: m.next_offset(), taken_at_ms: m.taken_at_ms }
}

/// Whether a partition folded to `applied` is due for a snapshot.
fn due(every_records: u64, every_ms: u64, last: &Last, applied: i64) -> bool {
    if last.failed.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
        return false;
    }
    let folded = u64::try_from(applied - last.offset).unwrap_or(0);
    let by_records = every_records > 0 && folded >= every_records;
    let by_time = every_ms > 0 && folded > 0 && last.at.elapsed() >= Duration::from_millis(every_ms);
    by_records || by_time
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_due_by_records_or_by_time_once_it_changed() {
        let now = Instant::now();
        let last = Last { offset: 100, at: now, failed: None };
        assert!(!due(50, 0, &last, 149));
        assert!(due(50, 0, &last, 150));
        assert!(!due(0, 0, &last, 1_000_000), "neither schedule is on");
        let old = Last { at: now - Duration::from_secs(2), ..last };
        assert!(due(0, 1_000, &old, 101), "time passed and it changed");
        assert!(!due(0, 1_000, &old, 100), "time passed, nothing changed");
        let failed = Last { failed: Some(now), ..old };
        assert!(!due(1, 1_000, &failed, 1_000), "a failure waits before the next try");
    }
}
