//! Standbys (`kafka.standby = "all"`): warm copies of the partitions other
//! instances own, folded from the topic as records come, through the same
//! processor as the owner's fold and without writing anything back (like a
//! replay that never ends). When the group gives this instance one of
//! them, its store is seconds behind, not the partition's history.
//!
//! The consumer's rebalance callback and this thread share [`Standbys`]:
//! the callback takes a partition for the main fold before it reads the
//! partition's offset from the store, and the follower commits a batch of
//! a partition only while holding the lock and seeing it is not taken. So
//! the two folds never write one partition at once, and the member cache
//! they share stays what the store holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tracing::{info, warn};

use crate::consumer::{await_partition_count, client_config, record_of};
use crate::processor::{Processor, Record};
use crate::resume::{Resume, admit_event, seek_to};
use crate::status::Quiet;
use crate::{IngestConfig, IngestStatus, Result, Shutdown};

/// The partitions the main fold owns here; the follower keeps the others.
#[derive(Debug, Clone, Default)]
pub struct Standbys(Arc<Mutex<BTreeSet<u32>>>);

impl Standbys {
    fn owned(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The main fold takes `partition`: once this returns, the follower
    /// writes nothing more of it.
    pub(crate) fn take(&self, partition: u32) {
        self.owned().insert(partition);
    }

    /// The main fold let `partition` go: the follower keeps it from here.
    pub(crate) fn give_back(&self, partition: u32) {
        self.owned().remove(&partition);
    }
}

/// Runs until `shutdown`: follows every partition of `cfg.topic` that the
/// main fold does not own, from the store's offset of each.
pub fn run_standby(
    cfg: &IngestConfig,
    processor: &Processor,
    standbys: &Standbys,
    status: &IngestStatus,
    shutdown: &Shutdown,
) -> Result<()> {
    crate::priority::lower_this_thread(cfg.fold_nice);
    let Some(partitions) = await_partition_count(cfg, &cfg.topic, status, shutdown)? else {
        return Ok(());
    };
    let consumer: BaseConsumer<Quiet> = client_config(cfg)
        .set("group.id", format!("{}.standby", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // As the main fold: a position the broker no longer has (retention)
        // goes to the earliest record, never to the end.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .create_with_context(Quiet)?;
    let mut follower =
        Follower { cfg, processor, standbys, status, consumer, partitions, following: BTreeMap::new(), store: 0 };
    while !shutdown.is_triggered() {
        if let Err(e) = follower.step() {
            warn!(error = %e, "the standby fold failed; starting its partitions again from the store");
            follower.following.clear();
            let _ = follower.consumer.unassign();
            shutdown.sleep(Duration::from_secs(1));
        }
    }
    Ok(())
}

struct Follower<'a> {
    cfg: &'a IngestConfig,
    processor: &'a Processor,
    standbys: &'a Standbys,
    status: &'a IngestStatus,
    consumer: BaseConsumer<Quiet>,
    partitions: u32,
    /// The partitions followed, with where each is read from.
    following: BTreeMap<u32, Resume>,
    /// The store they were positioned from (its address): a switch to a
    /// rebuilt store (`SwitchStore`) positions them again from its offsets.
    store: usize,
}

impl Follower<'_> {
    fn step(&mut self) -> Result<()> {
        self.follow_the_others()?;
        if self.following.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        let mut messages = Vec::new();
        while messages.len() < self.cfg.batch_max_records {
            match self.consumer.poll(if messages.is_empty() { Duration::from_millis(100) } else { Duration::ZERO }) {
                Some(Ok(m)) => messages.push(m),
                Some(Err(e)) => warn!(error = %e, "standby poll error"),
                None => break,
            }
        }
        let mut by_partition: BTreeMap<u32, Vec<Record<'_>>> = BTreeMap::new();
        let mut rewinds: BTreeMap<u32, i64> = BTreeMap::new();
        for m in &messages {
            let p = m.partition() as u32;
            let Some(resume) = self.following.get_mut(&p) else {
                continue;
            };
            if admit_event(resume, &mut rewinds, p, m.offset()) {
                by_partition.entry(p).or_default().push(record_of(m));
            }
        }
        for (p, to) in rewinds {
            self.consumer.seek(&self.cfg.topic, p as i32, seek_to(to), Duration::from_secs(10))?;
        }
        for (p, records) in by_partition {
            if let Some(next) = fold(self.processor, self.standbys, p, &records)? {
                self.status.standby_at(p, next);
            }
        }
        Ok(())
    }

    /// Follows every partition the main fold does not own, each from the
    /// store's offset; assigns the consumer again when that set changed.
    fn follow_the_others(&mut self) -> Result<()> {
        let others: BTreeSet<u32> = {
            let owned = self.standbys.owned();
            (0..self.partitions).filter(|p| !owned.contains(p)).collect()
        };
        let store = self.processor.store();
        let same_store = Arc::as_ptr(&store) as usize == self.store;
        if same_store && others.iter().eq(self.following.keys()) {
            return Ok(());
        }
        self.store = Arc::as_ptr(&store) as usize;
        let mut tpl = TopicPartitionList::new();
        let mut following = BTreeMap::new();
        for p in &others {
            let next = store.next_offset(&self.cfg.topic, *p)?.unwrap_or(0);
            let resume = Resume::at(next, self.cfg.resume_rewind_records);
            tpl.add_partition_offset(&self.cfg.topic, *p as i32, resume.start())?;
            following.insert(*p, resume);
            self.status.standby_at(*p, next);
        }
        for p in self.following.keys().filter(|p| !others.contains(p)) {
            self.status.standby_dropped(*p);
        }
        self.consumer.assign(&tpl)?;
        info!(partitions = ?others, "standby: following the partitions other instances own");
        self.following = following;
        Ok(())
    }
}

/// Folds and commits one partition's records, unless the main fold took
/// the partition meanwhile; the next offset to fold after them.
fn fold(processor: &Processor, standbys: &Standbys, p: u32, records: &[Record<'_>]) -> Result<Option<i64>> {
    let owned = standbys.owned();
    if owned.contains(&p) {
        return Ok(None);
    }
    let processed = processor.process(p, records)?;
    let applied = processed.applied;
    processor.commit(processed)?;
    drop(owned);
    metrics::counter!("omnifold_standby_events_applied_total").increment(applied);
    Ok(records.last().map(|r| r.offset + 1))
}
