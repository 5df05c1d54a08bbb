//! Audiences in the fold (docs/audiences.md): after each event its member
//! is evaluated at the partition's event time, and as that time passes a
//! member's timer, the member is evaluated at the timer's instant. Each
//! entry and exit is a [`Transition`] with its sequence number; the states
//! and timers are written with the batch, the transitions before it commits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use omnifold_core::audience::{AudienceState, Audiences, Definition, Transition};
use omnifold_core::{FoldConfig, Member, Payload};
use omnifold_store::Store;

use super::OutRecord;
use super::batch::Run;
use crate::Result;

/// Timers read from the store per round.
const TIMER_ROUND: usize = 1_024;

/// One member's audience state in a batch.
struct Held {
    state: AudienceState,
    /// The timer the store holds for the member (to move when it changes).
    stored_timer: Option<i64>,
    changed: bool,
}

/// What a batch does with audiences.
pub(super) struct AudienceRun {
    /// The partition's audiences (a definition folded here replaces them).
    audiences: Arc<Audiences>,
    held: HashMap<String, Held>,
    /// Timers set in this batch, and store timers this batch removed.
    added: BTreeSet<(i64, String)>,
    removed: HashSet<(i64, String)>,
    /// Every timer at or before this instant has fired.
    fired_until: i64,
    /// Entries and exits, in the order they happened: (member, transition).
    pub(super) transitions: Vec<(String, Transition)>,
    /// The offset after the record being folded: a transition's version.
    pub(super) next_offset: i64,
    /// Each member with a transition, and the version of its latest one.
    moved: HashMap<String, i64>,
}

/// A batch's entries and exits: in order, and each moved member's version.
pub(super) struct Moves {
    pub(super) transitions: Vec<(String, Transition)>,
    pub(super) versions: HashMap<String, i64>,
}

impl AudienceRun {
    pub(super) fn audiences(&self) -> &Arc<Audiences> {
        &self.audiences
    }

    pub(super) fn new(audiences: Arc<Audiences>, watermark: Option<i64>) -> AudienceRun {
        AudienceRun {
            audiences,
            held: HashMap::new(),
            added: BTreeSet::new(),
            removed: HashSet::new(),
            fired_until: watermark.unwrap_or(i64::MIN),
            transitions: Vec::new(),
            next_offset: 0,
            moved: HashMap::new(),
        }
    }
}

impl Run<'_> {
    /// Event time reached `now`: every timer due by then fires, in
    /// `(instant, member)` order, each member evaluated at its timer's
    /// instant. The store's timers are read in rounds after a cursor (what
    /// fired here is deleted only at the commit), merged with the timers
    /// set in this batch, which firing may add to.
    pub(super) fn audiences_advance(&mut self, now: i64) -> Result<()> {
        let Some(run) = &self.audiences else { return Ok(()) };
        if now <= run.fired_until {
            return Ok(());
        }
        let mut after: Option<(i64, String)> = None;
        loop {
            let chunk = self.store().due_timers(
                self.partition,
                after.as_ref().map(|(a, k)| (*a, k.as_str())),
                now,
                TIMER_ROUND,
            )?;
            let last_round = chunk.len() < TIMER_ROUND;
            // This round fires everything up to its last stored timer (all
            // up to `now` in the last round).
            let bound = if last_round { None } else { chunk.last().cloned() };
            let mut stored = chunk.into_iter().peekable();
            while let Some((at, key)) = self.next_due(&mut stored, now, bound.as_ref()) {
                self.fire(at, &key)?;
            }
            match bound {
                Some(b) => after = Some(b),
                None => break,
            }
        }
        if let Some(run) = &mut self.audiences {
            run.fired_until = now;
        }
        Ok(())
    }

    /// The earliest timer still to fire: the next of the store's round not
    /// removed here, or the first set here, whichever comes first, within
    /// `bound` (or `now`).
    fn next_due(
        &self,
        stored: &mut std::iter::Peekable<std::vec::IntoIter<(i64, String)>>,
        now: i64,
        bound: Option<&(i64, String)>,
    ) -> Option<(i64, String)> {
        let run = self.audiences.as_ref()?;
        while stored.peek().is_some_and(|t| run.removed.contains(t)) {
            stored.next();
        }
        let within = |t: &(i64, String)| t.0 <= now && bound.is_none_or(|b| t <= b);
        let set_here = run.added.first().filter(|t| within(t));
        match (stored.peek(), set_here) {
            (Some(s), Some(a)) if a < s => Some(a.clone()),
            (Some(_), _) => stored.next(),
            (None, Some(a)) => Some(a.clone()),
            (None, None) => None,
        }
    }

    /// The timer `(at, key)` fires: the member is evaluated at `at` (and
    /// joins the batch's members, for the change stream).
    fn fire(&mut self, at: i64, key: &str) -> Result<()> {
        let store = self.store();
        if !self.members.contains_key(key)
            && let Some(m) = store.member(self.partition, key)?
        {
            self.members.insert(key.to_owned(), m);
        }
        let Some(run) = &mut self.audiences else { return Ok(()) };
        let t = (at, key.to_owned());
        if !run.added.remove(&t) {
            run.removed.insert(t);
        }
        if let Some(m) = self.members.get(key) {
            evaluate(run, store, self.partition, &self.p.fold, key, m, at)?;
        }
        Ok(())
    }

    /// Record `next_offset - 1` is being folded: transitions from here on
    /// carry its version.
    pub(super) fn audiences_at_record(&mut self, next_offset: i64) {
        if let Some(run) = &mut self.audiences {
            run.next_offset = next_offset;
        }
    }

    /// Evaluates the batch's member `key` after its event, at the
    /// partition's event time.
    pub(super) fn audiences_after_event(&mut self, key: &str) -> Result<()> {
        let store = self.store();
        let (Some(run), Some(at), Some(member)) = (&mut self.audiences, self.watermark, self.members.get(key)) else {
            return Ok(());
        };
        evaluate(run, store, self.partition, &self.p.fold, key, member, at)
    }

    /// Stages the changed states (with their timers) and the audiences'
    /// member lists for the commit, and returns the batch's moves.
    pub(super) fn audiences_finish(&mut self) -> Moves {
        let Some(run) = self.audiences.take() else {
            return Moves { transitions: Vec::new(), versions: HashMap::new() };
        };
        let store = self.store();
        for (key, t) in &run.transitions {
            self.batch.set_audience_member(store, &t.audience, key, t.entered);
        }
        for (key, h) in &run.held {
            if h.changed {
                self.batch.put_audience_state(store, key, &h.state, h.stored_timer);
            }
        }
        // A timer that fired for a member not otherwise changed here.
        for (at, key) in &run.removed {
            if !run.held.get(key).is_some_and(|h| h.changed) {
                self.batch.delete_timer(store, key, *at);
            }
        }
        Moves { transitions: run.transitions, versions: run.moved }
    }
}

impl Run<'_> {
    /// Folds record `i`, one about the partition's audiences (a definition,
    /// or the next chunk of a backfill pass).
    pub(super) fn audiences_of_partition(&mut self, i: usize) -> Result<()> {
        match self.event(i).map(|e| e.payload.clone()) {
            Some(Payload::AudienceBackfill { audiences, members }) => self.audiences_backfill(i, &audiences, members),
            Some(Payload::AudienceDefined(definition)) => self.audience_defined(i, definition),
            _ => Ok(()),
        }
    }

    /// Folds record `i`, an `audienceBackfill`: starts a pass over the
    /// partition for `audiences` if it names any, then evaluates the pass's
    /// next `members` members at the partition's event time.
    fn audiences_backfill(&mut self, i: usize, audiences: &[String], members: u32) -> Result<()> {
        let store = self.store();
        let mut state = match self.backfill.take() {
            Some(b) => b,
            None => store.backfill(self.partition)?.unwrap_or_default(),
        };
        if !audiences.is_empty() {
            let defined = self.audiences.as_ref().map(|r| r.audiences.fingerprints()).unwrap_or_default();
            state.start(audiences, defined);
        }
        if !state.pending.is_empty() && members > 0 {
            let (chunk, more) = self.pass_chunk(state.after.as_deref(), members as usize)?;
            let (n, last) = (chunk.len() as u64, chunk.last().map(|m| m.key.clone()));
            self.audiences_at_record(self.records[i].offset + 1);
            for m in chunk {
                self.backfill_member(m)?;
            }
            state.advance(n, last, more);
        }
        self.backfill = Some(state);
        Ok(())
    }

    /// Folds record `i`, an `audienceDefined`: a later version than the
    /// partition has replaces it, the partition's audiences are made again
    /// for the rest of the batch, and a backfill pass starts for it (the
    /// owner's `audienceBackfill` records carry it on).
    fn audience_defined(&mut self, i: usize, definition: Definition) -> Result<()> {
        let store = self.store();
        let mut all: BTreeMap<String, Definition> =
            store.definitions(self.partition)?.into_iter().map(|d| (d.name.clone(), d)).collect();
        all.extend(self.defined.iter().map(|(n, d)| (n.clone(), d.clone())));
        if all.get(&definition.name).is_some_and(|held| !definition.supersedes(held)) {
            return Ok(());
        }
        self.batch.put_definition(store, &definition);
        let name = definition.name.clone();
        all.insert(name.clone(), definition.clone());
        self.defined.insert(name.clone(), definition);
        let defs: Vec<Definition> = all.into_values().collect();
        let effective = Arc::new(Audiences::with_defined(&self.p.audiences, &defs));
        match &mut self.audiences {
            Some(run) => run.audiences = effective,
            None => self.audiences = Some(AudienceRun::new(effective, self.watermark)),
        }
        self.audiences_backfill(i, &[name], 0)
    }

    /// The next `limit` members of the partition after `after`, in key
    /// order, as they stand at this record: the store's and this batch's
    /// (a member folded earlier in the batch is not in the store yet), so
    /// where batches end changes nothing. And whether more follow.
    fn pass_chunk(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Member>, bool)> {
        let (stored, more_stored) = self.store().members_after(self.partition, after, limit)?;
        // The store's chunk ends at its last key when more follow there:
        // batch members beyond it come in a later chunk.
        let bound = if more_stored { stored.last().map(|m| m.key.clone()) } else { None };
        let fresh = |k: &String| after.is_none_or(|a| k.as_str() > a) && bound.as_ref().is_none_or(|b| k <= b);
        let mut all: BTreeMap<String, Member> = stored.into_iter().map(|m| (m.key.clone(), m)).collect();
        // As the commit would store them: a profile made here whose every
        // event was refused is never stored, a deleted one is gone.
        let stored_at_commit =
            |m: &Member| m.version.events_applied > 0 || m.routes_to.is_some() || m.erased_at.is_some();
        for (k, m) in self.members.iter().filter(|(k, m)| fresh(k) && stored_at_commit(m)) {
            all.insert(k.clone(), m.clone());
        }
        all.retain(|k, _| !self.is_deleted(k));
        let more = more_stored || all.len() > limit;
        Ok((all.into_values().take(limit).collect(), more))
    }

    /// Evaluates one member of a backfill pass (as this batch has it, if it
    /// has it); one that moved joins the batch's members.
    fn backfill_member(&mut self, stored: Member) -> Result<()> {
        let store = self.store();
        let (Some(run), Some(at)) = (&mut self.audiences, self.watermark) else { return Ok(()) };
        let key = stored.key.clone();
        let member = self.members.get(&key).unwrap_or(&stored);
        evaluate(run, store, self.partition, &self.p.fold, &key, member, at)?;
        if run.moved.contains_key(&key) && !self.members.contains_key(&key) {
            self.members.insert(key, stored);
        }
        Ok(())
    }
}

/// Entries and exits as records of the audience topic: keyed by member id,
/// JSON with the audience, the direction, its sequence number and instant.
pub(super) fn records(partition: u32, transitions: &[(String, Transition)]) -> Vec<OutRecord> {
    transitions
        .iter()
        .map(|(key, t)| {
            let value = serde_json::json!({
                "memberId": key,
                "audience": t.audience,
                "event": if t.entered { "entered" } else { "exited" },
                "seq": t.seq,
                "at": omnifold_core::time::rfc3339(t.at),
            });
            OutRecord {
                key: Some(key.as_bytes().to_vec()),
                value: serde_json::to_vec(&value).unwrap_or_default(),
                headers: vec![("omnifold-partition", partition.to_string())],
            }
        })
        .collect()
}

/// Evaluates `member` at `at` into its state: its transitions, its timer.
fn evaluate(
    run: &mut AudienceRun,
    store: &Store,
    partition: u32,
    fold: &FoldConfig,
    key: &str,
    member: &Member,
    at: i64,
) -> Result<()> {
    if !run.held.contains_key(key) {
        let state = store.audience_states(partition, &[key])?.pop().flatten().unwrap_or_default();
        let stored_timer = state.timer;
        run.held.insert(key.to_owned(), Held { state, stored_timer, changed: false });
    }
    let Some(h) = run.held.get_mut(key) else { return Ok(()) };
    let before = h.state.timer;
    let transitions = run.audiences.evaluate(&mut h.state, member, at, fold);
    let after = h.state.timer;
    h.changed |= !transitions.is_empty() || before != after || h.stored_timer != after;
    if !transitions.is_empty() {
        run.moved.insert(key.to_owned(), run.next_offset);
    }
    if before != after {
        if let Some(b) = before {
            let t = (b, key.to_owned());
            if !run.added.remove(&t) {
                run.removed.insert(t);
            }
        }
        if let Some(a) = after {
            run.removed.remove(&(a, key.to_owned()));
            run.added.insert((a, key.to_owned()));
        }
    }
    run.transitions.extend(transitions.into_iter().map(|t| (key.to_owned(), t)));
    Ok(())
}
