//! One partition's micro-batch: decode, dedupe, fold, and stage the commit.
//! No Kafka here, so the file replay and the benchmarks use it too.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use omnifold_core::fold::{self, Position, kind_of};
use omnifold_core::{Event, FoldConfig, Member, decode_event};
use omnifold_store::{Batch, Store};

use crate::Result;
use crate::dead_letter::DeadLetter;

/// One consumed record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// A processed batch, ready to commit once its dead letters are delivered.
/// Hand it to [`Processor::commit`].
pub struct Processed {
    pub batch: Batch,
    /// The members the batch read, as they are after it: they go back into
    /// the cache only once the batch is committed.
    touched: Vec<Member>,
    partition: u32,
    pub dead_letters: Vec<DeadLetter>,
    pub applied: u64,
    pub duplicates: u64,
    pub next_offset: i64,
}

type Cache = Option<Arc<Mutex<LruCache<(u32, String), Member>>>>;

/// Called with the partition after each commit (for example to wake
/// requests waiting for a verdict).
pub type OnCommit = Arc<dyn Fn(u32) + Send + Sync>;

/// Folds records of one topic into the store.
#[derive(Clone)]
pub struct Processor {
    store: Arc<Store>,
    fold: Arc<FoldConfig>,
    topic: String,
    max_event_bytes: usize,
    /// Members exactly as committed. A batch takes its members out and puts
    /// them back only after its commit, so the cache is never ahead of the store.
    cache: Cache,
    on_commit: Option<OnCommit>,
}

impl Processor {
    pub fn new(store: Arc<Store>, fold: Arc<FoldConfig>, topic: impl Into<String>, max_event_bytes: usize) -> Self {
        Processor { store, fold, topic: topic.into(), max_event_bytes, cache: None, on_commit: None }
    }

    /// Keeps up to `entries` decoded members between batches.
    pub fn with_member_cache(mut self, entries: usize) -> Self {
        self.cache = NonZeroUsize::new(entries).map(|n| Arc::new(Mutex::new(LruCache::new(n))));
        self
    }

    /// Calls `f` with the partition after every commit.
    pub fn with_on_commit(mut self, f: OnCommit) -> Self {
        self.on_commit = Some(f);
        self
    }

    /// Commits a processed batch and returns its members to the cache.
    pub fn commit(&self, processed: Processed) -> Result<()> {
        self.store.commit(processed.batch)?;
        if let Some(f) = &self.on_commit {
            f(processed.partition);
        }
        if let Some(cache) = &self.cache {
            let mut cache = cache.lock().expect("member cache lock");
            for m in processed.touched {
                cache.put((processed.partition, m.key.clone()), m);
            }
        }
        Ok(())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Processes consecutive records of one partition (offsets ascending).
    pub fn process(&self, partition: u32, records: &[Record<'_>]) -> Result<Processed> {
        let store = &*self.store;
        let mut batch = store.batch(&self.topic, partition);
        let mut dead_letters = Vec::new();
        let decoded: Vec<Result<Event, omnifold_core::Error>> =
            records.iter().map(|r| decode_event(r.value.unwrap_or_default(), self.max_event_bytes)).collect();

        let ids: Vec<&str> = decoded.iter().filter_map(|d| d.as_ref().ok()).map(|e| e.event_id.as_str()).collect();
        let seen_before = store.seen(partition, &ids)?;
        let seen_before: HashSet<&str> = ids.iter().zip(seen_before).filter(|(_, s)| *s).map(|(id, _)| *id).collect();

        // Each record's subject key, computed once.
        let record_keys: Vec<Option<String>> =
            decoded.iter().map(|d| d.as_ref().ok().map(|e| e.subject.key())).collect();
        let mut keys: Vec<String> = record_keys.iter().flatten().cloned().collect();
        keys.sort_unstable();
        keys.dedup();
        let mut members: HashMap<String, Member> = HashMap::with_capacity(keys.len());
        if let Some(cache) = &self.cache {
            let mut cache = cache.lock().expect("member cache lock");
            for k in &keys {
                if let Some(m) = cache.pop(&(partition, k.clone())) {
                    members.insert(k.clone(), m);
                }
            }
        }
        let missing: Vec<&str> = keys.iter().map(String::as_str).filter(|k| !members.contains_key(*k)).collect();
        for (k, m) in missing.iter().zip(store.members(partition, &missing)?) {
            if let Some(m) = m {
                members.insert((*k).to_owned(), m);
            }
        }

        // Commands already decided: a retried request id gets no second effect.
        let requests: Vec<(&str, &str)> = decoded
            .iter()
            .zip(&record_keys)
            .filter_map(|(d, k)| Some((k.as_deref()?, d.as_ref().ok()?.request_id()?)))
            .collect();
        let decided_before = store.verdicts(partition, &requests)?;
        let mut decided: HashSet<(String, String)> = requests
            .iter()
            .zip(decided_before)
            .filter(|(_, v)| v.is_some())
            .map(|((k, r), _)| ((*k).to_owned(), (*r).to_owned()))
            .collect();

        let mut applied_ids: HashSet<&str> = HashSet::new();
        let mut dirty: HashSet<String> = HashSet::new();
        let (mut applied, mut duplicates) = (0, 0);
        for ((record, event), key) in records.iter().zip(&decoded).zip(record_keys) {
            let dead = |reason: String, kind: &'static str| DeadLetter {
                reason,
                kind,
                original: record.value.unwrap_or_default().to_vec(),
                key: record.key.map(<[u8]>::to_vec),
                topic: self.topic.clone(),
                partition,
                offset: record.offset,
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    dead_letters.push(dead(e.to_string(), e.kind()));
                    continue;
                }
            };
            let id = event.event_id.as_str();
            if seen_before.contains(id) || applied_ids.contains(id) {
                duplicates += 1;
                continue;
            }
            let key = key.expect("valid events have a key");
            if let Some(r) = event.request_id()
                && decided.contains(&(key.clone(), r.to_owned()))
            {
                duplicates += 1;
                applied_ids.insert(id);
                batch.mark_seen(store, id);
                continue;
            }
            let member = members.entry(key.clone()).or_insert_with(|| Member::new(key.clone(), kind_of(event)));
            let pos = Position { partition, offset: record.offset };
            match fold::apply(member, event, pos, &self.fold) {
                Ok(effects) => {
                    for entry in &effects.ledger {
                        batch.put_ledger(store, &key, entry);
                    }
                    if let Some(v) = &effects.verdict {
                        batch.put_verdict(store, &key, v);
                        decided.insert((key.clone(), v.request_id.clone()));
                    }
                    applied += 1;
                    applied_ids.insert(id);
                    batch.mark_seen(store, id);
                    dirty.insert(key);
                }
                // Not marked seen: the same event id can be replayed after a fix.
                Err(rejection) => dead_letters.push(dead(rejection.0, "rule")),
            }
        }
        let mut dirty: Vec<String> = dirty.into_iter().collect();
        dirty.sort_unstable();
        for key in dirty {
            batch.put_member(store, &members[&key]);
        }
        let next_offset = records.last().map_or(0, |r| r.offset + 1);
        if !records.is_empty() {
            batch.set_next_offset(store, next_offset);
        }
        // Members created here but refused every event were never stored.
        let touched = members.into_values().filter(|m| m.version.events_applied > 0).collect();
        Ok(Processed { batch, touched, partition, dead_letters, applied, duplicates, next_offset })
    }
}
