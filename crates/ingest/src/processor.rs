//! One partition's micro-batch: decode, dedupe, fold, and stage the commit.
//! No Kafka here, so the file replay and the benchmarks use it too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

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
pub struct Processed {
    pub batch: Batch,
    pub dead_letters: Vec<DeadLetter>,
    pub applied: u64,
    pub duplicates: u64,
    pub next_offset: i64,
}

/// Folds records of one topic into the store.
#[derive(Clone)]
pub struct Processor {
    store: Arc<Store>,
    fold: Arc<FoldConfig>,
    topic: String,
    max_event_bytes: usize,
}

impl Processor {
    pub fn new(store: Arc<Store>, fold: Arc<FoldConfig>, topic: impl Into<String>, max_event_bytes: usize) -> Self {
        Processor { store, fold, topic: topic.into(), max_event_bytes }
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

        let mut keys: Vec<String> = decoded.iter().filter_map(|d| d.as_ref().ok()).map(|e| e.subject.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut members: HashMap<String, Member> = keys
            .iter()
            .cloned()
            .zip(store.members(partition, &key_refs)?)
            .filter_map(|(k, m)| m.map(|m| (k, m)))
            .collect();

        let mut applied_ids: HashSet<&str> = HashSet::new();
        let mut dirty: HashSet<String> = HashSet::new();
        let (mut applied, mut duplicates) = (0, 0);
        for (record, event) in records.iter().zip(&decoded) {
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
            let key = event.subject.key();
            let member = members.entry(key.clone()).or_insert_with(|| Member::new(key.clone(), kind_of(event)));
            let pos = Position { partition, offset: record.offset };
            match fold::apply(member, event, pos, &self.fold) {
                Ok(()) => {
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
        Ok(Processed { batch, dead_letters, applied, duplicates, next_offset })
    }
}
