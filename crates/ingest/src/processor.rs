//! One partition's micro-batch: decode, dedupe, fold, and stage the commit.
//! No Kafka here, so the file replay and the benchmarks use it too.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use prost::Message;

use omnifold_core::fold::{self, Position, kind_of};
use omnifold_core::identity::Outgoing;
use omnifold_core::member::ProfileKind;
use omnifold_core::partition::partition_for;
use omnifold_core::time::DAY;
use omnifold_core::{Event, FoldConfig, LedgerEntry, Member, Payload, decode_event};
use omnifold_proto::v1 as proto;
use omnifold_store::{Batch, Store};

use crate::Result;
use crate::dead_letter::DeadLetter;

/// The header that routes a forwarded event to a profile other than its
/// subject's key: the member the subject's key has joined.
pub const ROUTE_HEADER: &str = "omnifold-route";

/// One consumed record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The `omnifold-route` header of a forwarded event.
    pub route: Option<&'a str>,
}

impl<'a> Record<'a> {
    pub fn new(offset: i64, key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Self {
        Record { offset, key, value, route: None }
    }
}

/// A record to write to a topic before the batch commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
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
    /// Events for the events topic: forwards to the partition that owns
    /// their member, identity claims and joins. Written before the commit.
    pub outbox: Vec<OutRecord>,
    /// Identity-index updates for the identity topic, written before the commit.
    pub index: Vec<OutRecord>,
    pub applied: u64,
    pub duplicates: u64,
    /// Events that arrived on a partition that does not own their key.
    pub misrouted: u64,
    /// Events forwarded to the member their key joined.
    pub forwarded: u64,
    pub next_offset: i64,
}

impl Processed {
    /// Applies the batch's identity-index updates to `store` itself, in the
    /// same batch, instead of writing them to the identity topic (replays,
    /// which write nothing back to Kafka).
    pub fn index_locally(&mut self, store: &Store) {
        for r in &self.index {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let member = std::str::from_utf8(&r.value).ok().filter(|v| !v.is_empty());
            self.batch.put_index(store, &key, member);
        }
    }
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

    /// The same processor folding into another store, with an empty cache.
    pub fn with_store(&self, store: Arc<Store>) -> Processor {
        let entries = self.cache.as_ref().map_or(0, |c| c.lock().expect("member cache lock").cap().get());
        let mut p = Processor { store, cache: None, ..self.clone() };
        if entries > 0 {
            p = p.with_member_cache(entries);
        }
        p
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

    /// The fold's rules this processor applies.
    pub fn fold(&self) -> &FoldConfig {
        &self.fold
    }

    /// Processes consecutive records of one partition (offsets ascending).
    pub fn process(&self, partition: u32, records: &[Record<'_>]) -> Result<Processed> {
        let store = &*self.store;
        let mut batch = store.batch(&self.topic, partition);
        let mut dead_letters = Vec::new();
        let decoded: Vec<Result<Event, omnifold_core::Error>> = records
            .iter()
            .map(|r| decode_event(r.value.unwrap_or_default(), self.max_event_bytes, &self.fold.limits))
            .collect();

        let ids: Vec<&str> = decoded.iter().filter_map(|d| d.as_ref().ok()).map(|e| e.event_id.as_str()).collect();
        let seen_before = store.seen(partition, &ids)?;
        let seen_before: HashSet<&str> = ids.iter().zip(seen_before).filter(|(_, s)| *s).map(|(id, _)| *id).collect();

        // Each record's profile key, computed once: where a forward routed
        // it, else its subject's key.
        let record_keys: Vec<Option<String>> = decoded
            .iter()
            .zip(records)
            .map(|(d, r)| d.as_ref().ok().map(|e| r.route.map_or_else(|| e.subject.key(), str::to_owned)))
            .collect();
        let partitions = store.partition_count(&self.topic)?;
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
        let (mut applied, mut duplicates, mut misrouted, mut forwarded) = (0, 0, 0, 0);
        let mut outbox: Vec<OutRecord> = Vec::new();
        let mut index: Vec<OutRecord> = Vec::new();
        // Ledger entries and history written in this batch, for joins that
        // carry the joined profile's.
        let mut batch_ledger: HashMap<String, Vec<LedgerEntry>> = HashMap::new();
        // Borrowed from `records` and `decoded`: no copy of each event.
        let mut batch_history: HashMap<String, Vec<(i64, &[u8])>> = HashMap::new();
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
            let original = || record.value.unwrap_or_default().to_vec();
            // Never fold an event where it does not belong: send it on.
            if let Some(n) = partitions
                && partition_for(key.as_bytes(), n) != partition
            {
                misrouted += 1;
                outbox.push(forward(&key, original(), record.route));
                continue;
            }
            if !matches!(event.payload, Payload::IdentityClaimed { .. })
                && let Some(to) = members.get(&key).and_then(|m| m.routes_to.clone())
            {
                forwarded += 1;
                outbox.push(forward(&to, original(), Some(&to)));
                continue;
            }
            if let Some(r) = event.request_id()
                && decided.contains(&(key.clone(), r.to_owned()))
            {
                duplicates += 1;
                applied_ids.insert(id);
                batch.mark_seen(store, id);
                continue;
            }
            let kind = if record.route.is_some() { ProfileKind::KnownMember } else { kind_of(event) };
            let member = members.entry(key.clone()).or_insert_with(|| Member::new(key.clone(), kind));
            let pos = Position { partition, offset: record.offset };
            let applied_before = member.version.events_applied;
            match fold::apply(member, event, pos, &self.fold) {
                Ok(effects) => {
                    // The member's history: this event, or what a join brought.
                    let mut kept: Vec<(u64, i64, &[u8])> = Vec::new();
                    match &event.payload {
                        Payload::ProfileJoined { history, .. } => kept.extend(
                            history
                                .iter()
                                .enumerate()
                                .map(|(i, (at, r))| (applied_before + 1 + i as u64, *at, r.as_slice())),
                        ),
                        Payload::IdentityClaimed { .. } => {}
                        _ => kept.push((
                            member.version.events_applied,
                            event.occurred_at,
                            record.value.unwrap_or_default(),
                        )),
                    }
                    if store.keeps_history() {
                        for (seq, at, r) in kept {
                            batch.put_history(store, &key, seq, at, r);
                            match batch_history.get_mut(&key) {
                                Some(h) => h.push((at, r)),
                                None => {
                                    batch_history.insert(key.clone(), vec![(at, r)]);
                                }
                            }
                            member.history.oldest_kept = Some(member.history.oldest_kept.map_or(at, |o| o.min(at)));
                        }
                    }
                    for entry in &effects.ledger {
                        batch.put_ledger(store, &key, entry);
                    }
                    for out in effects.outbox {
                        outbox.push(self.outgoing(partition, out, &batch_ledger, &batch_history)?);
                    }
                    for (route_key, to) in effects.routes {
                        // An empty value: the key routes nowhere (shared).
                        let value = to.unwrap_or_default().into_bytes();
                        index.push(OutRecord { key: Some(route_key.into_bytes()), value, headers: Vec::new() });
                    }
                    if !effects.ledger.is_empty() {
                        batch_ledger.entry(key.clone()).or_default().extend(effects.ledger);
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
        let days = i64::from(store.history_days());
        if days > 0 && store.keeps_history() {
            for key in &dirty {
                let m = members.get_mut(key).expect("dirty members are loaded");
                let (Some(oldest), Some(last)) = (m.history.oldest_kept, m.last_seen_at) else {
                    continue;
                };
                // Prune in steps of a month at most once, not on every event.
                if last - oldest > (days + 30) * DAY {
                    let appended = batch_history.get(key).map_or(&[][..], Vec::as_slice);
                    self.prune_history(partition, &mut batch, m, last - days * DAY, appended)?;
                }
            }
        }
        for key in dirty {
            batch.put_member(store, &members[&key]);
        }
        let next_offset = records.last().map_or(0, |r| r.offset + 1);
        if !records.is_empty() {
            batch.set_next_offset(store, next_offset);
        }
        // Members created here but refused every event were never stored.
        let touched = members.into_values().filter(|m| m.version.events_applied > 0 || m.routes_to.is_some()).collect();
        Ok(Processed {
            batch,
            touched,
            partition,
            dead_letters,
            outbox,
            index,
            applied,
            duplicates,
            misrouted,
            forwarded,
            next_offset,
        })
    }

    /// Folds the member's committed history before `horizon` into its base
    /// snapshot and drops those events.
    fn prune_history(
        &self,
        partition: u32,
        batch: &mut Batch,
        m: &mut Member,
        horizon: i64,
        appended: &[(i64, &[u8])],
    ) -> Result<()> {
        let store = &*self.store;
        let entries: Vec<(u64, i64, Vec<u8>)> = store.history(partition, &m.key).collect::<Result<_, _>>()?;
        let (old, rest): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, at, _)| *at < horizon);
        if !old.is_empty() {
            let mut base = store.history_base(partition, &m.key)?.unwrap_or_else(|| Member::new(m.key.clone(), m.kind));
            for (_, _, record) in &old {
                if let Ok(e) = decode_event(record, usize::MAX, &self.fold.limits) {
                    // What the fold refuses or would write is beside the point here.
                    let _ = fold::apply(&mut base, &e, Position { partition, offset: 0 }, &self.fold);
                }
            }
            let seqs: Vec<u64> = old.iter().map(|(seq, _, _)| *seq).collect();
            batch.prune_history(store, &m.key, &seqs, &base);
            m.history.pruned += old.len() as u64;
            m.history.pruned_before = m.history.pruned_before.max(horizon);
        }
        m.history.oldest_kept = rest.iter().map(|(_, at, _)| *at).chain(appended.iter().map(|(at, _)| *at)).min();
        Ok(())
    }

    /// An event the fold wrote, ready to send; a join of a member carries
    /// that member's ledger, stored and from this batch.
    fn outgoing(
        &self,
        partition: u32,
        mut out: Outgoing,
        batch_ledger: &HashMap<String, Vec<LedgerEntry>>,
        batch_history: &HashMap<String, Vec<(i64, &[u8])>>,
    ) -> Result<OutRecord> {
        if let Some(of) = &out.attach_state_of
            && let Some(proto::event::Payload::ProfileJoined(j)) = &mut out.event.payload
        {
            let mut stored: Vec<LedgerEntry> = self.store.ledger(partition, of, None).collect::<Result<_, _>>()?;
            stored.reverse();
            stored.extend(batch_ledger.get(of).into_iter().flatten().cloned());
            j.ledger = stored.iter().map(LedgerEntry::encode).collect();
            let entry = |at: i64, r: &[u8]| [&at.to_be_bytes()[..], r].concat();
            let mut history: Vec<Vec<u8>> = Vec::new();
            for h in self.store.history(partition, of) {
                let (_, at, r) = h?;
                history.push(entry(at, &r));
            }
            history.extend(batch_history.get(of).into_iter().flatten().map(|(at, r)| entry(*at, r)));
            j.history = history;
        }
        Ok(OutRecord { key: Some(out.key.into_bytes()), value: out.event.encode_to_vec(), headers: Vec::new() })
    }
}

/// The record that sends an event, unchanged, to the partition of `key`.
fn forward(key: &str, value: Vec<u8>, route: Option<&str>) -> OutRecord {
    OutRecord {
        key: Some(key.as_bytes().to_vec()),
        value,
        headers: route.map(|r| (ROUTE_HEADER, r.to_owned())).into_iter().collect(),
    }
}
