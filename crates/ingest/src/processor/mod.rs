//! One partition's micro-batch: decode, authenticate, dedupe, fold, and
//! stage the commit. No Kafka here, so the file replay, the tests and the
//! benchmarks use it too.
//!
//! The work per record is in `batch.rs`; sending and putting together the
//! state of joins is in `joins.rs`; folding old history into a base
//! snapshot is in `history.rs`. This module holds the types and the guard
//! that keeps a bug in the fold from stopping a partition.

mod audiences;
mod batch;
mod cache;
mod history;
mod joins;

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::error;

use omnifold_core::audience::{Audiences, Transition};
use omnifold_core::{Change, FoldConfig, Member};
use omnifold_store::{Batch, Store, StoreHandle};

use crate::Result;
use crate::dead_letter::DeadLetter;
use crate::sign::{SIGNATURE_HEADER, Signer};

/// The header that routes a forwarded event to a profile other than its
/// subject's key: the member the subject's key has joined.
pub const ROUTE_HEADER: &str = "omnifold-route";

/// One consumed record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The `omnifold-route` header of a forwarded event.
    pub route: Option<&'a str>,
    /// The `omnifold-sig` header of a record omnifold wrote.
    pub signature: Option<&'a [u8]>,
    /// The Kafka record timestamp, milliseconds (none for files).
    pub timestamp: Option<i64>,
}

impl<'a> Record<'a> {
    pub fn new(offset: i64, key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Self {
        Record { offset, key, value, ..Record::default() }
    }
}

/// A record to write to a topic before the batch commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl OutRecord {
    /// A record only omnifold may write: signed over key, route and value.
    pub(crate) fn signed(signer: &Signer, key: Vec<u8>, value: Vec<u8>, route: Option<&str>) -> OutRecord {
        let mut headers: Vec<(&'static str, String)> =
            route.map(|r| (ROUTE_HEADER, r.to_owned())).into_iter().collect();
        headers.push((SIGNATURE_HEADER, signer.sign(Some(&key), route, &value)));
        OutRecord { key: Some(key), value, headers }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// A processed batch, ready to commit once its dead letters are delivered.
/// Hand it to [`Processor::commit`].
pub struct Processed {
    /// The store instance the batch was staged for (and commits to).
    store: Arc<Store>,
    pub batch: Batch,
    /// The members the batch read, as they are after it: they go back into
    /// the cache only once the batch is committed.
    touched: Vec<Member>,
    /// What the batch changed, for the change stream (empty unless the
    /// processor reports changes: [`Processor::with_on_changes`]).
    changed: Vec<Changed>,
    partition: u32,
    pub dead_letters: Vec<DeadLetter>,
    /// Events for the events topic: forwards to the partition that owns
    /// their member, identity claims, joins and their parts. Written before
    /// the commit, in this order.
    pub outbox: Vec<OutRecord>,
    /// Identity-index updates for the identity topic, written before the commit.
    pub index: Vec<OutRecord>,
    /// The changed profiles for the profile-changes topic
    /// (`kafka.changes_topic`), written before the commit.
    pub changes: Vec<OutRecord>,
    /// Audience entries and exits, in the order they happened:
    /// `(member, transition)` ([`Processed::audience_records`]).
    transitions: Vec<(String, Transition)>,
    pub applied: u64,
    pub duplicates: u64,
    /// Events that arrived on a partition that does not own their key.
    pub misrouted: u64,
    /// Events forwarded to the member their key joined.
    pub forwarded: u64,
    /// The offset of the batch's first record.
    pub first_offset: i64,
    pub next_offset: i64,
}

/// One profile a batch changed, before its commit.
#[derive(Debug, Clone)]
pub(crate) struct Changed {
    key: String,
    next_offset: i64,
    deleted: bool,
    /// The audiences it entered and left here, in order.
    audiences: Vec<Transition>,
}

/// A committed batch's changes: the records `first_offset..next_offset`
/// of `partition`, and the profiles they changed when the sink wanted them
/// (none: not taken, so a window of changes must start again after it).
#[derive(Debug, Clone)]
pub struct Committed {
    pub partition: u32,
    pub first_offset: i64,
    pub next_offset: i64,
    pub changes: Option<Vec<Change>>,
}

/// Where committed batches' changes go (the change stream).
pub trait ChangeSink: Send + Sync {
    /// Whether anyone may want the changed profiles of `partition`: taking
    /// them costs a copy of each, so a partition nobody watches gets none.
    fn wants(&self, partition: u32) -> bool;
    fn committed(&self, c: Committed);
}

impl Processed {
    /// The batch's audience entries and exits as records of the audience
    /// topic (`kafka.audience_topic`), to write before the commit.
    pub fn audience_records(&self) -> Vec<OutRecord> {
        audiences::records(self.partition, &self.transitions)
    }

    /// Applies the batch's identity-index updates to `store` itself, in the
    /// same batch, instead of writing them to the identity topic (replays,
    /// which write nothing back to Kafka).
    pub fn index_locally(&mut self) {
        for r in &self.index {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let member = std::str::from_utf8(&r.value).ok().filter(|v| !v.is_empty());
            self.batch.put_index(&self.store, &key, member);
        }
    }
}

type Cache = Option<Arc<Mutex<cache::MemberCache>>>;

/// The member cache's default byte bound (`kafka.member_cache_bytes`).
pub const DEFAULT_MEMBER_CACHE_BYTES: usize = 128 << 20;

/// Called with the partition after each commit (for example to wake
/// requests waiting for a verdict).
pub type OnCommit = Arc<dyn Fn(u32) + Send + Sync>;

/// Called with each committed batch's changes (the change stream).
pub type OnChanges = Arc<dyn ChangeSink>;

/// Renders a changed profile as its record on the profile-changes topic;
/// `None` leaves it out. `member` is the profile as the batch leaves it,
/// none when its record is deleted.
pub trait ChangeTopic: Send + Sync {
    fn record(
        &self,
        partition: u32,
        key: &str,
        next_offset: i64,
        member: Option<&Member>,
        audiences: &Audiences,
    ) -> Option<OutRecord>;
}

/// Folds records of one topic into the store.
#[derive(Clone)]
pub struct Processor {
    /// The store to fold into: shared with the server, replaced by a
    /// switch or a reopen.
    stores: Arc<StoreHandle>,
    fold: Arc<FoldConfig>,
    topic: String,
    max_event_bytes: usize,
    /// Largest piece of a join's state per record.
    part_bytes: usize,
    signer: Signer,
    /// Members exactly as committed. A batch takes its members out and puts
    /// them back only after its commit, so the cache is never ahead of the store.
    cache: Cache,
    on_commit: Option<OnCommit>,
    on_changes: Option<OnChanges>,
    /// Renders each batch's changes for the profile-changes topic.
    change_topic: Option<Arc<dyn ChangeTopic>>,
    /// The configured audiences; each partition adds those defined through
    /// `AdminService` it has folded (`Store::audiences`).
    audiences: Arc<Audiences>,
}

/// The changed profiles as committed (copies of the batch's members).
fn changes_of(changed: &[Changed], touched: &[Member]) -> Vec<Change> {
    let by_key: std::collections::HashMap<&str, &Member> = touched.iter().map(|m| (m.key.as_str(), m)).collect();
    changed
        .iter()
        .map(|c| Change {
            key: c.key.clone(),
            next_offset: c.next_offset,
            member: (!c.deleted).then(|| by_key.get(c.key.as_str()).map(|m| Arc::new((*m).clone()))).flatten(),
            audiences: c.audiences.clone(),
        })
        .collect()
}

impl Processor {
    /// A processor of `topic` into `store`: records above `max_event_bytes`
    /// are dead letters, and what only omnifold may write is signed and
    /// verified with `signer`.
    pub fn new(
        store: Arc<Store>,
        fold: Arc<FoldConfig>,
        topic: impl Into<String>,
        max_event_bytes: usize,
        signer: Signer,
    ) -> Self {
        Processor::on_handle(StoreHandle::new(store), fold, topic, max_event_bytes, signer)
    }

    /// [`Processor::new`] folding into whatever store `stores` holds.
    pub fn on_handle(
        stores: Arc<StoreHandle>,
        fold: Arc<FoldConfig>,
        topic: impl Into<String>,
        max_event_bytes: usize,
        signer: Signer,
    ) -> Self {
        Processor {
            stores,
            fold,
            topic: topic.into(),
            max_event_bytes,
            part_bytes: max_event_bytes.saturating_sub(1024).max(256),
            signer,
            cache: None,
            on_commit: None,
            on_changes: None,
            change_topic: None,
            audiences: Arc::default(),
        }
    }

    /// Cuts joins into parts of at most `bytes` (tests use small parts).
    pub fn with_join_part_bytes(mut self, bytes: usize) -> Self {
        self.part_bytes = bytes.max(1);
        self
    }

    /// Keeps up to `entries` decoded members between batches, of at most
    /// `bytes` estimated bytes (`Member::approx_heap_bytes`); either at 0
    /// turns the cache off.
    pub fn with_member_cache(mut self, entries: usize, bytes: usize) -> Self {
        self.cache = NonZeroUsize::new(entries)
            .filter(|_| bytes > 0)
            .map(|n| Arc::new(Mutex::new(cache::MemberCache::new(n, bytes))));
        self
    }

    /// The same processor folding into another store (a handle of its
    /// own), with an empty cache of the same bounds.
    pub fn with_store(&self, store: Arc<Store>) -> Processor {
        let (entries, bytes) =
            self.cache.as_ref().map_or((0, 0), |c| c.lock().unwrap_or_else(PoisonError::into_inner).limits());
        Processor { stores: StoreHandle::new(store), cache: None, ..self.clone() }.with_member_cache(entries, bytes)
    }

    /// Calls `f` with the partition after every commit.
    pub fn with_on_commit(mut self, f: OnCommit) -> Self {
        self.on_commit = Some(f);
        self
    }

    /// Hands what each batch changed to `sink`, after its commit.
    pub fn with_on_changes(mut self, sink: OnChanges) -> Self {
        self.on_changes = Some(sink);
        self
    }

    /// Renders what each batch changed with `topic`, for the profile-changes
    /// topic ([`Processed::changes`]).
    pub fn with_change_topic(mut self, topic: Arc<dyn ChangeTopic>) -> Self {
        self.change_topic = Some(topic);
        self
    }

    /// Evaluates `audiences` in the fold (docs/audiences.md): each batch
    /// keeps the memberships and returns their entries and exits.
    pub fn with_audiences(mut self, audiences: Arc<Audiences>) -> Self {
        self.audiences = audiences;
        self
    }

    /// Forgets every cached member (the store behind the handle changed).
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// Commits a processed batch and returns its members to the cache.
    pub fn commit(&self, processed: Processed) -> Result<()> {
        processed.store.commit(processed.batch)?;
        if let Some(f) = &self.on_commit {
            f(processed.partition);
        }
        if let Some(sink) = &self.on_changes
            && processed.next_offset > processed.first_offset
        {
            // Asked after the commit: a watcher that starts after this
            // answer reads the store with this batch in it.
            let changes = sink.wants(processed.partition).then(|| changes_of(&processed.changed, &processed.touched));
            sink.committed(Committed {
                partition: processed.partition,
                first_offset: processed.first_offset,
                next_offset: processed.next_offset,
                changes,
            });
        }
        if let Some(cache) = &self.cache {
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            for m in processed.touched {
                cache.put((processed.partition, m.key.clone()), m);
            }
            metrics::gauge!("omnifold_member_cache_bytes").set(cache.bytes() as f64);
        }
        Ok(())
    }

    /// The store folded into now.
    pub fn store(&self) -> Arc<Store> {
        self.stores.get()
    }

    /// The handle of the store folded into, to share with the server.
    pub fn handle(&self) -> &Arc<StoreHandle> {
        &self.stores
    }

    /// The fold's rules this processor applies.
    pub fn fold(&self) -> &FoldConfig {
        &self.fold
    }

    /// The signer of the records only omnifold may write.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Processes consecutive records of one partition (offsets ascending).
    ///
    /// A bug in the fold that panics on some record must not stop the
    /// partition in a loop: the batch is processed again with that record
    /// sent to the dead-letter topic (kind `bug`), and so on for each
    /// record that panics.
    pub fn process(&self, partition: u32, records: &[Record<'_>]) -> Result<Processed> {
        let first_offset = records.first().map_or(-1, |r| r.offset);
        let _span = tracing::info_span!("batch", partition, first_offset, records = records.len()).entered();
        let mut poisoned: BTreeSet<usize> = BTreeSet::new();
        loop {
            let at = std::cell::Cell::new(None);
            let run = catch_unwind(AssertUnwindSafe(|| self.process_once(partition, records, &poisoned, &at)));
            match run {
                Ok(result) => return result,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    // Outside any record, or the same record again: the
                    // failure is not a record's; the caller stalls the partition.
                    let Some(i) = at.get().filter(|i| !poisoned.contains(i)) else {
                        return Err(crate::Error::Bug(format!("processing a batch panicked: {what}")));
                    };
                    error!(partition, offset = records[i].offset, panic = %what, "the fold failed on a record; it goes to the dead-letter topic");
                    poisoned.insert(i);
                }
            }
        }
    }

    fn process_once(
        &self,
        partition: u32,
        records: &[Record<'_>],
        poisoned: &BTreeSet<usize>,
        at: &std::cell::Cell<Option<usize>>,
    ) -> Result<Processed> {
        let store = self.stores.get();
        let mut run = batch::Run::load(self, &store, partition, records)?;
        for i in 0..records.len() {
            at.set(Some(i));
            if poisoned.contains(&i) {
                run.dead_letter(i, "bug", "the fold failed on this event (a bug in omnifold: please report it)".into());
                continue;
            }
            run.step(i)?;
        }
        at.set(None);
        run.finish()
    }
}
