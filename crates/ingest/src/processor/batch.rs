//! The work on one batch, record by record: the checks every record passes
//! (decoded, authentic, not from the future, not a duplicate, not too late,
//! on its own partition, not for a key that joined a member, not a retried
//! command) and then the fold, with what it writes staged in the batch.

use std::borrow::Cow;
use std::sync::{Arc, PoisonError};

// Keys come from the log, so the maps are seeded per process (foldhash's
// RandomState); foldhash instead of SipHash because hashing member keys
// and event ids is on every record's path.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use omnifold_core::config::AfterErasure;
use omnifold_core::effects::Erase;
use omnifold_core::event::ERASED_PREFIX;
use omnifold_core::fold::{self, Position, kind_of};
use omnifold_core::member::{Lineage, ProfileKind};
use omnifold_core::partition::partition_for;
use omnifold_core::time::DAY;
use omnifold_core::{Effects, Event, LedgerEntry, Member, Payload, Verdict, decode_event};
use omnifold_store::{Batch, JoinPart, Store};

use super::{Changed, OutRecord, Processed, Processor, Record};
use crate::Result;
use crate::dead_letter::DeadLetter;

/// Events kept for a member's history in this batch: (event time, record).
type KeptEvents<'a> = Vec<(i64, Cow<'a, [u8]>)>;

/// One batch in progress.
pub(super) struct Run<'a> {
    pub(super) p: &'a Processor,
    /// The store instance this batch reads and is staged for.
    store: &'a Arc<Store>,
    pub(super) partition: u32,
    pub(super) records: &'a [Record<'a>],
    pub(super) batch: Batch,
    /// Each record decoded and validated (a join's state is put in here
    /// once its parts are together).
    decoded: Vec<std::result::Result<Event, omnifold_core::Error>>,
    /// Each record's profile key: where a forward routed it, else its
    /// subject's. Taken (not cloned) when the record is folded.
    keys: Vec<Option<String>>,
    partitions: Option<u32>,
    pub(super) members: HashMap<String, Member>,
    /// Each member's books as read (`Member::lineage`), so the commit
    /// writes only the book entries that changed.
    loaded: HashMap<String, Lineage>,
    /// Dedupe markers: from the store, and written by this batch.
    markers: HashMap<String, i64>,
    /// Whether `markers` holds a forward marker: most batches have none,
    /// and then no record needs its forward marker's key built.
    forwards_marked: bool,
    /// `(member, request id)` of the commands already decided.
    decided: HashSet<(String, String)>,
    /// The partition's latest applied event time.
    pub(super) watermark: Option<i64>,
    /// Audience evaluation (none: no audiences configured).
    pub(super) audiences: Option<super::audiences::AudienceRun>,
    /// The partition's audience backfill, once a record of it was folded.
    pub(super) backfill: Option<omnifold_core::audience::Backfill>,
    /// Audience definitions folded in this batch, by name.
    pub(super) defined: std::collections::BTreeMap<String, omnifold_core::audience::Definition>,
    dirty: HashSet<String>,
    /// Keys an erasure deleted (their record is removed at the commit).
    deleted: HashSet<String>,
    /// Keys with no record that an erasure deleted before (their marker is
    /// stored): events for them are refused under `after_erasure = refuse`.
    erased: HashSet<String>,
    dead_letters: Vec<DeadLetter>,
    pub(super) outbox: Vec<OutRecord>,
    index: Vec<OutRecord>,
    /// Ledger entries, history and verdicts written in this batch, for
    /// joins that carry the joined profile's.
    pub(super) batch_ledger: HashMap<String, Vec<LedgerEntry>>,
    pub(super) batch_history: HashMap<String, KeptEvents<'a>>,
    pub(super) batch_verdicts: HashMap<String, Vec<Verdict>>,
    /// Join parts kept in this batch, by member.
    pub(super) staged: HashMap<String, Vec<JoinPart>>,
    /// Kept parts dropped in this batch (applied, or moved on).
    pub(super) unstaged: HashSet<(String, String, u32)>,
    applied: u64,
    duplicates: u64,
    misrouted: u64,
    forwarded: u64,
}

impl<'a> Run<'a> {
    /// Decodes the records and reads what the batch needs from the store:
    /// members (cache first), dedupe markers, decided commands, the watermark.
    pub(super) fn load(
        p: &'a Processor,
        store: &'a Arc<Store>,
        partition: u32,
        records: &'a [Record<'a>],
    ) -> Result<Run<'a>> {
        let decoded: Vec<_> = records
            .iter()
            .map(|r| decode_event(r.value.unwrap_or_default(), p.max_event_bytes, &p.fold.limits))
            .collect();
        let keys: Vec<Option<String>> = decoded
            .iter()
            .zip(records)
            .map(|(d, r)| d.as_ref().ok().map(|e| r.route.map_or_else(|| e.subject.key(), str::to_owned)))
            .collect();
        let members = load_members(p, store, partition, &keys)?;
        let erased = erased_keys(p, store, partition, &keys, &members)?;
        let loaded = members.iter().map(|(k, m)| (k.clone(), m.lineage())).collect();
        let partitions = store.partition_count(&p.topic)?;
        // Each event id, and where it may have been forwarded from here, the
        // marker of that.
        let ids: Vec<String> = decoded
            .iter()
            .zip(&keys)
            .filter_map(|(d, k)| Some((d.as_ref().ok()?, k.as_deref()?)))
            .flat_map(|(e, k)| {
                let forwardable = may_have_forwarded(partition, partitions, k, members.get(k));
                std::iter::once(e.event_id.clone()).chain(forwardable.then(|| forwarded_marker(&e.event_id)))
            })
            .collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let markers: HashMap<String, i64> =
            ids.iter().zip(store.markers(partition, &id_refs)?).filter_map(|(id, m)| Some((id.clone(), m?))).collect();
        let requests: Vec<(&str, &str)> = decoded
            .iter()
            .zip(&keys)
            .filter_map(|(d, k)| Some((k.as_deref()?, d.as_ref().ok()?.request_id()?)))
            .collect();
        let decided = requests
            .iter()
            .zip(store.verdicts(partition, &requests)?)
            .filter(|(_, v)| v.is_some())
            .map(|((k, r), _)| ((*k).to_owned(), (*r).to_owned()))
            .collect();
        let watermark = store.watermark(&p.topic, partition)?;
        let effective = store.audiences(partition, &p.audiences)?;
        let audiences = (!effective.is_empty()).then(|| super::audiences::AudienceRun::new(effective, watermark));
        Ok(Run {
            p,
            store,
            audiences,
            backfill: None,
            defined: std::collections::BTreeMap::new(),
            partition,
            records,
            batch: store.batch(&p.topic, partition),
            decoded,
            keys,
            partitions,
            members,
            loaded,
            forwards_marked: markers.keys().any(|k| is_forwarded_marker(k)),
            markers,
            decided,
            watermark,
            dirty: HashSet::new(),
            deleted: HashSet::new(),
            erased,
            dead_letters: Vec::new(),
            outbox: Vec::new(),
            index: Vec::new(),
            batch_ledger: HashMap::new(),
            batch_history: HashMap::new(),
            batch_verdicts: HashMap::new(),
            staged: HashMap::new(),
            unstaged: HashSet::new(),
            applied: 0,
            duplicates: 0,
            misrouted: 0,
            forwarded: 0,
        })
    }

    pub(super) fn store(&self) -> &'a Store {
        self.store
    }

    /// Whether an erasure in this batch deletes the record under `key`.
    pub(super) fn is_deleted(&self, key: &str) -> bool {
        self.deleted.contains(key)
    }

    /// Sends record `i` to the dead-letter topic with its reason.
    pub(super) fn dead_letter(&mut self, i: usize, kind: &'static str, reason: String) {
        let r = &self.records[i];
        self.dead_letters.push(DeadLetter {
            reason,
            kind,
            original: r.value.unwrap_or_default().to_vec(),
            key: r.key.map(<[u8]>::to_vec),
            topic: self.p.topic.clone(),
            partition: self.partition,
            offset: r.offset,
        });
    }

    /// Markers older than this count for nothing; events older than this
    /// cannot be told from a duplicate.
    fn horizon(&self) -> i64 {
        self.watermark.map_or(i64::MIN, |w| w.saturating_sub(self.store().dedupe_retention_ms()))
    }

    /// Marks an event id applied (or passed on) at the current watermark.
    fn mark_seen(&mut self, id: &str, occurred_at: i64) {
        let marker = self.watermark.map_or(occurred_at, |w| w.max(occurred_at));
        self.batch.mark_seen(self.store(), id, marker);
        self.forwards_marked |= is_forwarded_marker(id);
        self.markers.insert(id.to_owned(), marker);
    }

    /// Runs record `i` through every check, then the fold.
    pub(super) fn step(&mut self, i: usize) -> Result<()> {
        let record = self.records[i];
        let event = match &self.decoded[i] {
            Ok(e) => e,
            Err(e) => {
                let (kind, reason) = (e.kind(), e.to_string());
                self.dead_letter(i, kind, reason);
                return Ok(());
            }
        };
        let (internal, id, at) = (event.is_internal(), event.event_id.clone(), event.occurred_at);
        // Decided at the key it names, route or not (a claim, an erased key).
        let at_key = matches!(event.payload, Payload::IdentityClaimed { .. } | Payload::KeyErased { .. });
        let request = event.request_id().map(str::to_owned);
        let of_partition = matches!(event.payload, Payload::AudienceBackfill { .. } | Payload::AudienceDefined(_));
        let part = match &event.payload {
            Payload::ProfileJoinPart { join_id, index, data } => {
                Some(JoinPart { join_id: join_id.clone(), index: *index, at, data: data.clone() })
            }
            _ => None,
        };
        if let Some(reason) = self.forged(&record, event) {
            self.dead_letter(i, "forged", reason);
            return Ok(());
        }
        if let Err(e) = self.p.fold.limits.check_event_time(at, record.timestamp) {
            self.dead_letter(i, e.kind(), e.to_string());
            return Ok(());
        }
        // A producer's retry of what was forwarded from here; a copy
        // omnifold passed on (signed) is not one. The signature is checked
        // only when a forward marker is there.
        let alive = |m: Option<&i64>| m.is_some_and(|m| *m >= self.horizon());
        let forwarded_before = !internal
            && self.forwards_marked
            && alive(self.markers.get(&forwarded_marker(&id)))
            && record.route.is_none()
            && !self.signed(&record);
        if alive(self.markers.get(&id)) || forwarded_before {
            self.duplicates += 1;
            return Ok(());
        }
        // Anything else this old could be a duplicate we no longer know,
        // forwards too: the partition they left had an earlier horizon.
        // omnifold's own events are made once per cause.
        if !internal && at < self.horizon() {
            let reason = self.too_late_reason(at);
            self.dead_letter(i, "too_late", reason);
            return Ok(());
        }
        // The partition's, not a member's: no key, route or member.
        if of_partition {
            self.mark_seen(&id, at);
            return self.audiences_of_partition(i);
        }
        let Some(key) = self.keys[i].take() else {
            return Err(crate::Error::Bug("a valid event without a key".into()));
        };
        // Marked as forwarded from here (not as applied: it may go to this
        // same partition, where it is applied under its own id).
        if self.send_on(i, &key, at_key) {
            self.mark_seen(&forwarded_marker(&id), at);
            return Ok(());
        }
        if let Some(r) = request
            && self.decided.contains(&(key.clone(), r))
        {
            self.duplicates += 1;
            self.mark_seen(&id, at);
            return Ok(());
        }
        if let Some(part) = part {
            self.stage_part(&key, part);
            self.mark_seen(&id, at);
            return Ok(());
        }
        if let Err(reason) = self.assemble_join(i, &key) {
            self.dead_letter(i, "rule", reason);
            return Ok(());
        }
        self.fold(i, key)
    }

    /// Whether a record carries omnifold's valid signature (a forward).
    fn signed(&self, record: &Record<'_>) -> bool {
        record.signature.is_some()
            && self.p.signer.verify(record.key, record.route, record.value.unwrap_or_default(), record.signature)
    }

    /// Why record `i` is refused as forged, if it is: an event only
    /// omnifold may write, or a route header, without omnifold's signature.
    fn forged(&self, record: &Record<'_>, event: &Event) -> Option<String> {
        if !event.is_internal() && record.route.is_none() {
            return None;
        }
        let value = record.value.unwrap_or_default();
        if self.p.signer.verify(record.key, record.route, value, record.signature) {
            return None;
        }
        let what = if event.is_internal() {
            format!("{} events are", internal_name(&event.payload))
        } else {
            "the omnifold-route header is".to_owned()
        };
        Some(format!(
            "{what} written only by omnifold, and this record has no valid omnifold-sig signature (refused: it could \
             move a person's history or points)"
        ))
    }

    fn too_late_reason(&self, at: i64) -> String {
        let hours = self.store().dedupe_retention_ms() / 3_600_000;
        format!(
            "occurredAt {} is older than this partition's dedupe window ({hours} hours of event time before its latest \
             event, {}): a duplicate could no longer be recognised, so it was not applied. If it is new, raise \
             store.dedupe_retention_hours and replay it from the dead-letter topic",
            omnifold_core::time::rfc3339(at),
            omnifold_core::time::rfc3339(self.watermark.unwrap_or(at)),
        )
    }

    /// Forwards record `i` when it does not belong here: to the partition
    /// that owns its key, or to the member its key joined. True if sent on.
    fn send_on(&mut self, i: usize, key: &str, at_key: bool) -> bool {
        let record = self.records[i];
        let value = || record.value.unwrap_or_default().to_vec();
        if let Some(n) = self.partitions
            && partition_for(key.as_bytes(), n) != self.partition
        {
            self.misrouted += 1;
            let out = OutRecord::signed(&self.p.signer, key.as_bytes().to_vec(), value(), record.route);
            self.outbox.push(out);
            return true;
        }
        // A claim, or an erased key, is decided at its key, route or not.
        if !at_key && let Some(to) = self.members.get(key).and_then(|m| m.routes_to.clone()) {
            self.forwarded += 1;
            self.outbox.push(OutRecord::signed(&self.p.signer, to.clone().into_bytes(), value(), Some(&to)));
            return true;
        }
        false
    }

    /// Folds record `i` into the member stored under `key`.
    fn fold(&mut self, i: usize, key: String) -> Result<()> {
        let record = self.records[i];
        let Some(at) = self.decoded[i].as_ref().ok().map(|e| e.occurred_at) else {
            return Ok(());
        };
        // Event time reached the event's: timers due by then fire first.
        self.audiences_at_record(record.offset + 1);
        self.audiences_advance(at)?;
        let Ok(event) = &self.decoded[i] else {
            return Ok(());
        };
        if self.erased.contains(&key) && !event.is_internal() && self.p.fold.after_erasure == AfterErasure::Refuse {
            // The reason does not repeat the key: it may be an identifier.
            let reason = "the event's key belonged to an erased profile; events for it are refused \
                          (fold.after_erasure = \"refuse\")";
            self.dead_letter(i, "rule", reason.to_owned());
            return Ok(());
        }
        let kind = if record.route.is_some() { ProfileKind::KnownMember } else { kind_of(event) };
        // Looked up before inserting, so a member already here costs no key copy.
        if !self.members.contains_key(&key) {
            self.members.insert(key.clone(), Member::new(key.clone(), kind));
        }
        let Some(member) = self.members.get_mut(&key) else {
            return Err(crate::Error::Bug("a member inserted into the batch is missing".into()));
        };
        let was_route = member.routes_to.is_some();
        let pos = Position { partition: self.partition, offset: record.offset };
        let applied_before = member.version.events_applied;
        let effects = match fold::apply(member, event, pos, &self.p.fold) {
            Ok(effects) => effects,
            // Not marked seen: the same event id can be replayed after a fix.
            Err(rejection) => {
                self.dead_letter(i, "rule", rejection.0);
                return Ok(());
            }
        };
        let became_route = !was_route && member.routes_to.is_some();
        let (id, at) = (event.event_id.clone(), event.occurred_at);
        let is_join = matches!(event.payload, Payload::ProfileJoined { .. });
        self.keep_history(i, &key, applied_before);
        self.stage_effects(&key, effects, at)?;
        if is_join {
            self.finish_join(i, &key)?;
        }
        if became_route {
            self.move_staged_parts(&key)?;
        }
        self.applied += 1;
        self.watermark = Some(self.watermark.map_or(at, |w| w.max(at)));
        self.mark_seen(&id, at);
        self.audiences_after_event(&key)?;
        self.dirty.insert(key);
        Ok(())
    }

    /// The member's kept history: this event, or what a join brought.
    fn keep_history(&mut self, i: usize, key: &str, applied_before: u64) {
        let store = self.store();
        if !store.keeps_history() {
            return;
        }
        let record = self.records[i];
        let Ok(event) = &self.decoded[i] else {
            return;
        };
        let Some(member) = self.members.get_mut(key) else {
            return;
        };
        let kept: Vec<(u64, i64, Cow<'a, [u8]>)> = match &event.payload {
            Payload::ProfileJoined { state, .. } => state
                .iter()
                .flat_map(|s| s.history.iter())
                .enumerate()
                .map(|(n, (t, r))| (applied_before + 1 + n as u64, *t, Cow::Owned(r.clone())))
                .collect(),
            // Bookkeeping, and erasures (which remove the history they would join).
            Payload::IdentityClaimed { .. }
            | Payload::ProfileJoinPart { .. }
            | Payload::ErasureRequested { .. }
            | Payload::KeyErased { .. } => Vec::new(),
            _ => vec![(
                member.version.events_applied,
                event.occurred_at,
                Cow::Borrowed(record.value.unwrap_or_default()),
            )],
        };
        for (seq, t, r) in kept {
            self.batch.put_history(store, key, seq, t, &r);
            member.history.oldest_kept = Some(member.history.oldest_kept.map_or(t, |o| o.min(t)));
            self.batch_history.entry(key.to_owned()).or_default().push((t, r));
        }
    }

    /// Stages what the fold produced: ledger entries, the verdict, routes
    /// for the identity index, and the events it writes (signed).
    fn stage_effects(&mut self, key: &str, effects: Effects, at: i64) -> Result<()> {
        self.stage_erase(key, effects.erase, at);
        let store = self.store();
        for entry in &effects.ledger {
            self.batch.put_ledger(store, key, entry);
        }
        if !effects.ledger.is_empty() {
            self.batch_ledger.entry(key.to_owned()).or_default().extend(effects.ledger);
        }
        if let Some(v) = effects.verdict {
            self.batch.put_verdict(store, key, &v);
            self.decided.insert((key.to_owned(), v.request_id.clone()));
            self.batch_verdicts.entry(key.to_owned()).or_default().push(v);
        }
        for (route_key, to) in effects.routes {
            // An empty value: the key routes nowhere (shared).
            let value = to.unwrap_or_default().into_bytes();
            let sig = self.p.signer.sign(Some(route_key.as_bytes()), None, &value);
            let headers = vec![(crate::sign::SIGNATURE_HEADER, sig)];
            self.index.push(OutRecord { key: Some(route_key.into_bytes()), value, headers });
        }
        for out in effects.outbox {
            self.send(out)?;
        }
        Ok(())
    }

    /// Removes what is stored under `key` as an erasure says, before
    /// anything the erasure itself writes (its verdict) is staged.
    fn stage_erase(&mut self, key: &str, erase: Erase, at: i64) {
        if erase == Erase::Nothing {
            return;
        }
        self.batch.erase_books(self.store(), key);
        self.batch_ledger.remove(key);
        self.batch_history.remove(key);
        self.batch_verdicts.remove(key);
        self.staged.remove(key);
        self.decided.retain(|(k, _)| k != key);
        // The books are gone: the record is written whole at the commit.
        self.loaded.remove(key);
        if erase == Erase::All {
            self.deleted.insert(key.to_owned());
            if let Some(m) = self.members.get_mut(key) {
                *m = Member::new(key.to_owned(), m.kind);
            }
            self.remember_erased(key, at);
        }
    }

    /// Stores the marker of a deleted key: a record under a name made from
    /// the key with the cluster secret (HMAC), so the key itself is not kept
    /// and cannot be guessed back from the marker (a phone number could be
    /// from a plain hash).
    fn remember_erased(&mut self, key: &str, at: i64) {
        let marker = marker_key(self.p, key);
        let mut m = Member::new(marker.clone(), ProfileKind::Provisional);
        m.erased_at = Some(at);
        self.members.insert(marker.clone(), m);
        self.dirty.insert(marker);
        self.erased.insert(key.to_owned());
    }

    /// Verdicts a join brought: the member keeps its own answer for a
    /// request id it decided itself.
    pub(super) fn adopt_verdicts(&mut self, key: &str, verdicts: Vec<Verdict>) -> Result<()> {
        let fresh: Vec<Verdict> =
            verdicts.into_iter().filter(|v| !self.decided.contains(&(key.to_owned(), v.request_id.clone()))).collect();
        let pairs: Vec<(&str, &str)> = fresh.iter().map(|v| (key, v.request_id.as_str())).collect();
        let stored = self.store().verdicts(self.partition, &pairs)?;
        for (v, s) in fresh.into_iter().zip(stored) {
            if s.is_none() {
                self.batch.put_verdict(self.store(), key, &v);
                self.decided.insert((key.to_owned(), v.request_id.clone()));
                self.batch_verdicts.entry(key.to_owned()).or_default().push(v);
            }
        }
        Ok(())
    }

    /// The decoded event of record `i`, for the join code to fill in.
    pub(super) fn event_mut(&mut self, i: usize) -> Option<&mut Event> {
        self.decoded[i].as_mut().ok()
    }

    pub(super) fn event(&self, i: usize) -> Option<&Event> {
        self.decoded[i].as_ref().ok()
    }

    /// Writes the dirty members and the offset, prunes old history.
    pub(super) fn finish(mut self) -> Result<Processed> {
        let store = self.store();
        let mut dirty: Vec<String> = self.dirty.drain().collect();
        dirty.sort_unstable();
        self.prune_histories(&dirty)?;
        for key in &dirty {
            if self.deleted.contains(key) {
                self.batch.delete_member(store, key);
            }
            if let Some(m) = self.members.get_mut(key)
                && !(self.deleted.contains(key) && m.version.events_applied == 0 && m.routes_to.is_none())
            {
                self.batch.put_member(store, m, self.loaded.get(key).copied());
            }
        }
        let effective = self.audiences.as_ref().map(|r| r.audiences().clone()).unwrap_or_default();
        let moves = self.audiences_finish();
        let reported = self.p.on_changes.is_some() || self.p.change_topic.is_some();
        let changed = if reported { self.changed(&dirty, &moves) } else { Vec::new() };
        let changes = self.change_records(&changed, &effective);
        let transitions = moves.transitions;
        let next_offset = self.records.last().map_or(0, |r| r.offset + 1);
        if !self.records.is_empty() {
            self.batch.set_next_offset(store, next_offset);
        }
        if let Some(w) = self.watermark {
            self.batch.set_watermark(store, w);
        }
        if let Some(b) = &self.backfill {
            self.batch.put_backfill(store, b);
        }
        // Members created here but refused every event were never stored.
        let touched = self
            .members
            .into_iter()
            .filter(|(k, m)| !self.deleted.contains(k) || m.version.events_applied > 0)
            .map(|(_, m)| m)
            .filter(|m| m.version.events_applied > 0 || m.routes_to.is_some() || m.erased_at.is_some())
            .collect();
        Ok(Processed {
            store: self.store.clone(),
            batch: self.batch,
            touched,
            changed,
            partition: self.partition,
            dead_letters: self.dead_letters,
            outbox: self.outbox,
            index: self.index,
            changes,
            transitions,
            applied: self.applied,
            duplicates: self.duplicates,
            misrouted: self.misrouted,
            forwarded: self.forwarded,
            first_offset: self.records.first().map_or(0, |r| r.offset),
            next_offset,
        })
    }

    /// What the batch changed, for the change stream: each changed
    /// profile's key and version, whether its record is deleted, and the
    /// audiences it entered and left, in fold order. A profile only time
    /// moved in or out of an audience has the version of the record that
    /// moved time. Erasure markers are omnifold's own and are left out.
    /// (The profiles themselves are taken at the commit, and only when
    /// someone watches the partition.)
    fn changed(&self, dirty: &[String], moves: &super::audiences::Moves) -> Vec<Changed> {
        let mut by_member: HashMap<&str, Vec<omnifold_core::audience::Transition>> = HashMap::new();
        for (key, t) in &moves.transitions {
            by_member.entry(key.as_str()).or_default().push(t.clone());
        }
        let only_moved = moves.versions.keys().filter(|k| dirty.binary_search(k).is_err());
        let mut changed: Vec<Changed> = dirty
            .iter()
            .chain(only_moved)
            .filter(|k| !k.starts_with(ERASED_PREFIX))
            .filter_map(|key| {
                let m = self.members.get(key)?;
                let moved = moves.versions.get(key).copied().unwrap_or(i64::MIN);
                Some(Changed {
                    key: key.clone(),
                    next_offset: m.version.next_offset.max(moved),
                    deleted: self.deleted.contains(key),
                    audiences: by_member.remove(key.as_str()).unwrap_or_default(),
                })
            })
            .collect();
        changed.sort_by(|a, b| (a.next_offset, &a.key).cmp(&(b.next_offset, &b.key)));
        changed
    }

    /// The profile-changes topic's records of `changed`, in fold order.
    fn change_records(&self, changed: &[Changed], audiences: &omnifold_core::audience::Audiences) -> Vec<OutRecord> {
        let Some(topic) = &self.p.change_topic else { return Vec::new() };
        changed
            .iter()
            .filter_map(|c| {
                let member = if c.deleted { None } else { self.members.get(&c.key) };
                topic.record(self.partition, &c.key, c.next_offset, member, audiences)
            })
            .collect()
    }

    fn prune_histories(&mut self, dirty: &[String]) -> Result<()> {
        let store = self.store();
        let days = i64::from(store.history_days());
        if days == 0 || !store.keeps_history() {
            return Ok(());
        }
        for key in dirty {
            let Some(m) = self.members.get(key) else {
                continue;
            };
            let (Some(oldest), Some(last)) = (m.history.oldest_kept, m.last_seen_at) else {
                continue;
            };
            // Prune in steps of a month at most once, not on every event.
            if last - oldest > (days + 30) * DAY {
                self.prune_history(key, last - days * DAY)?;
            }
        }
        Ok(())
    }
}

/// Where the marker of an erased key is stored: `erased:` and the HMAC of
/// the key under the cluster secret.
fn marker_key(p: &Processor, key: &str) -> String {
    format!("{ERASED_PREFIX}{}", p.signer.sign(Some(key.as_bytes()), None, b"erased-key"))
}

/// The batch's keys with no record whose marker says an erasure deleted them.
fn erased_keys(
    p: &Processor,
    store: &Store,
    partition: u32,
    keys: &[Option<String>],
    members: &HashMap<String, Member>,
) -> Result<HashSet<String>> {
    let mut absent: Vec<&str> =
        keys.iter().flatten().map(String::as_str).filter(|k| !members.contains_key(*k)).collect();
    absent.sort_unstable();
    absent.dedup();
    if absent.is_empty() {
        return Ok(HashSet::new());
    }
    let markers: Vec<String> = absent.iter().map(|k| marker_key(p, k)).collect();
    let refs: Vec<&str> = markers.iter().map(String::as_str).collect();
    let found = store.members(partition, &refs)?;
    Ok(absent.into_iter().zip(found).filter(|(_, m)| m.is_some()).map(|(k, _)| k.to_owned()).collect())
}

/// Members of the batch's keys: from the cache (taken out until the
/// commit), else from the store.
fn load_members(
    p: &Processor,
    store: &Store,
    partition: u32,
    keys: &[Option<String>],
) -> Result<HashMap<String, Member>> {
    let mut wanted: Vec<&str> = keys.iter().flatten().map(String::as_str).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut members: HashMap<String, Member> = HashMap::with_capacity(wanted.len());
    if let Some(cache) = &p.cache {
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        for k in &wanted {
            if let Some(m) = cache.pop(&(partition, (*k).to_owned())) {
                members.insert((*k).to_owned(), m);
            }
        }
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|k| !members.contains_key(*k)).collect();
    for (k, m) in missing.iter().zip(store.members(partition, &missing)?) {
        if let Some(m) = m {
            members.insert((*k).to_owned(), m);
        }
    }
    Ok(members)
}

fn internal_name(p: &Payload) -> &'static str {
    match p {
        Payload::IdentityClaimed { .. } => "identityClaimed",
        Payload::ProfileJoined { .. } => "profileJoined",
        Payload::ProfileJoinPart { .. } => "profileJoinPart",
        Payload::KeyErased { .. } => "keyErased",
        Payload::AudienceBackfill { .. } => "audienceBackfill",
        Payload::AudienceDefined(_) => "audienceDefined",
        _ => "internal",
    }
}

/// Whether this partition may ever have forwarded an event of `key`, so
/// that a producer's retry of it must be looked for among the forward
/// markers: only when the key belongs to another partition (misrouted), or
/// its profile routes to a member or was a route and is now shared. Any
/// other key's events were always folded here. Unknown partition count:
/// assume it may.
fn may_have_forwarded(partition: u32, partitions: Option<u32>, key: &str, member: Option<&Member>) -> bool {
    let Some(n) = partitions else {
        return true;
    };
    partition_for(key.as_bytes(), n) != partition || member.is_some_and(|m| m.routes_to.is_some() || m.shared)
}

/// The dedupe key under which an event forwarded from a partition is
/// remembered there: a producer's retry of it is dropped at the source, so
/// the partition it went to may take forwards as they come. Event ids hold
/// no control characters, so this never meets one.
fn forwarded_marker(event_id: &str) -> String {
    format!("{FORWARDED}{event_id}")
}

const FORWARDED: &str = "\u{1}fwd\u{1}";

fn is_forwarded_marker(id: &str) -> bool {
    id.starts_with(FORWARDED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forward_marker_is_looked_for_only_where_a_forward_can_have_left() {
        let here = (0..100).map(|i| format!("m-{i}")).find(|k| partition_for(k.as_bytes(), 4) == 1).unwrap();
        let elsewhere = (0..100).map(|i| format!("m-{i}")).find(|k| partition_for(k.as_bytes(), 4) != 1).unwrap();
        let plain = Member::new(here.clone(), ProfileKind::KnownMember);
        assert!(!may_have_forwarded(1, Some(4), &here, None), "a new key of this partition");
        assert!(!may_have_forwarded(1, Some(4), &here, Some(&plain)), "a member folded here all along");
        assert!(may_have_forwarded(1, Some(4), &elsewhere, None), "a misrouted key");
        let routed = Member { routes_to: Some("m-other".into()), ..plain.clone() };
        assert!(may_have_forwarded(1, Some(4), &here, Some(&routed)), "a key that joined a member");
        let shared = Member { shared: true, ..plain.clone() };
        assert!(may_have_forwarded(1, Some(4), &here, Some(&shared)), "a route that became shared");
        assert!(may_have_forwarded(1, None, &here, Some(&plain)), "unknown partition count");
    }
}
