//! Joins of any size. The partition whose key joins a member sends the
//! key's state (profile, ledger, history, verdicts) as a `JoinedState` cut
//! into `profileJoinPart` events under the broker's size limit, then the
//! `profileJoined` with the number of parts and a digest; all keyed by the
//! member, so they arrive in order on its partition. There each part is
//! kept in the store (the `joins` column family, in the batch that reads
//! it), and the join combines the state when every part is there: all at
//! once, exactly once (parts and join are deduplicated by event id, the
//! parts are dropped in the batch that applies the join). A member that
//! becomes a route itself with parts still waiting passes them on to the
//! member it joined, where the join will be forwarded too.

use prost::Message;

use omnifold_core::Outgoing;
use omnifold_core::join::JoinedState;
use omnifold_core::time::to_timestamp;
use omnifold_core::{LedgerEntry, Payload};
use omnifold_proto::v1 as proto;
use omnifold_store::JoinPart;

use super::OutRecord;
use super::batch::Run;
use crate::Result;

/// The event id of a join's part: the join's id and the part's index.
fn part_event_id(join_id: &str, index: u32) -> String {
    format!("{join_id}.{index}")
}

impl Run<'_> {
    /// Writes an event the fold produced, signed; a join first sends the
    /// joined profile's state in parts.
    pub(super) fn send(&mut self, mut out: Outgoing) -> Result<()> {
        if let Some(profile) = out.join.take()
            && let Some(proto::event::Payload::ProfileJoined(j)) = &mut out.event.payload
        {
            let state = self.state_of(*profile)?;
            let (parts, digest) = state.into_parts(self.p.part_bytes);
            j.parts = parts.len() as u32;
            j.digest = digest;
            for (index, data) in parts.into_iter().enumerate() {
                let part = JoinPart { join_id: out.event.event_id.clone(), index: index as u32, at: 0, data };
                let event = part_event(&out.event, &out.key, &part);
                self.outbox.push(OutRecord::signed(&self.p.signer, out.key.clone().into_bytes(), event, None));
            }
        }
        let value = out.event.encode_to_vec();
        self.outbox.push(OutRecord::signed(&self.p.signer, out.key.into_bytes(), value, None));
        Ok(())
    }

    /// A profile's whole state as it stands in this batch: its stored
    /// ledger, history and verdicts, and what this batch added to them.
    fn state_of(&self, profile: omnifold_core::Member) -> Result<JoinedState> {
        let (store, p, key) = (self.store(), self.partition, profile.key.clone());
        let mut ledger: Vec<LedgerEntry> = store.ledger(p, &key, None).collect::<Result<_, _>>()?;
        ledger.reverse();
        ledger.extend(self.batch_ledger.get(&key).into_iter().flatten().cloned());
        let mut history: Vec<(i64, Vec<u8>)> =
            store.history(p, &key).map(|h| h.map(|(_, at, r)| (at, r))).collect::<Result<_, _>>()?;
        history.extend(self.batch_history.get(&key).into_iter().flatten().map(|(at, r)| (*at, r.to_vec())));
        let mut verdicts = store.member_verdicts(p, &key)?;
        verdicts.extend(self.batch_verdicts.get(&key).into_iter().flatten().cloned());
        Ok(JoinedState { profile, ledger, history, verdicts })
    }

    /// Keeps a part until its join arrives.
    pub(super) fn stage_part(&mut self, key: &str, part: JoinPart) {
        self.batch.put_join_part(self.store(), key, &part);
        self.unstaged.remove(&(key.to_owned(), part.join_id.clone(), part.index));
        self.staged.entry(key.to_owned()).or_default().push(part);
    }

    /// The parts kept for `key` (of one join, or all), from the store and
    /// this batch, without those dropped in this batch, by join and index.
    fn kept_parts(&self, key: &str, join_id: Option<&str>) -> Result<Vec<JoinPart>> {
        let mut parts: Vec<JoinPart> = self.store().join_parts(self.partition, key, join_id)?;
        parts.extend(
            self.staged.get(key).into_iter().flatten().filter(|s| join_id.is_none_or(|j| s.join_id == j)).cloned(),
        );
        parts.retain(|s| !self.unstaged.contains(&(key.to_owned(), s.join_id.clone(), s.index)));
        parts.sort_by(|a, b| (&a.join_id, a.index).cmp(&(&b.join_id, b.index)));
        parts.dedup_by(|a, b| a.join_id == b.join_id && a.index == b.index);
        Ok(parts)
    }

    /// Puts together the state of the join in record `i`, if it is a join
    /// whose state came in parts. The reason, if it cannot.
    pub(super) fn assemble_join(&mut self, i: usize, key: &str) -> std::result::Result<(), String> {
        let Some(event) = self.event(i) else {
            return Ok(());
        };
        let Payload::ProfileJoined { parts, digest, state: None, .. } = &event.payload else {
            return Ok(());
        };
        if *parts == 0 {
            return Ok(());
        }
        let (join_id, parts, digest) = (event.event_id.clone(), *parts, digest.clone());
        let kept = self.kept_parts(key, Some(&join_id)).map_err(|e| e.to_string())?;
        let data: Vec<&[u8]> = kept.iter().map(|p| p.data.as_slice()).collect();
        let state = JoinedState::from_parts(&data, parts, &digest)
            .map_err(|e| format!("the state of join {join_id} cannot be put together: {e}"))?;
        if let Some(Payload::ProfileJoined { state: slot, .. }) = self.event_mut(i).map(|e| &mut e.payload) {
            *slot = Some(Box::new(state));
        }
        Ok(())
    }

    /// After the join in record `i` was applied: its parts are dropped and
    /// the verdicts it brought are the member's.
    pub(super) fn finish_join(&mut self, i: usize, key: &str) -> Result<()> {
        let Some(event) = self.event_mut(i) else {
            return Ok(());
        };
        let join_id = event.event_id.clone();
        let verdicts = match &mut event.payload {
            Payload::ProfileJoined { state: Some(state), .. } => std::mem::take(&mut state.verdicts),
            _ => Vec::new(),
        };
        for part in self.kept_parts(key, Some(&join_id))? {
            self.batch.delete_join_part(self.store(), key, &join_id, part.index);
            self.unstaged.insert((key.to_owned(), join_id.clone(), part.index));
        }
        self.adopt_verdicts(key, verdicts)
    }

    /// `key` just became a route: the parts waiting for joins to it go on
    /// to the member it routes to, where those joins will be forwarded too.
    pub(super) fn move_staged_parts(&mut self, key: &str) -> Result<()> {
        let Some(to) = self.members.get(key).and_then(|m| m.routes_to.clone()) else {
            return Ok(());
        };
        for part in self.kept_parts(key, None)? {
            let template = proto::Event {
                occurred_at: Some(to_timestamp(part.at)),
                channel: proto::Channel::CallCenter as i32,
                ..Default::default()
            };
            let value = part_event(&template, key, &part);
            self.outbox.push(OutRecord::signed(&self.p.signer, to.clone().into_bytes(), value, Some(&to)));
            self.batch.delete_join_part(self.store(), key, &part.join_id, part.index);
            self.unstaged.insert((key.to_owned(), part.join_id, part.index));
        }
        Ok(())
    }
}

/// A `profileJoinPart` event for `member`, dated like `join`.
fn part_event(join: &proto::Event, member: &str, part: &JoinPart) -> Vec<u8> {
    proto::Event {
        event_id: part_event_id(&part.join_id, part.index),
        occurred_at: join.occurred_at,
        channel: join.channel,
        store_id: String::new(),
        subject: Some(proto::Subject { member_id: member.to_owned(), ..Default::default() }),
        payload: Some(proto::event::Payload::ProfileJoinPart(proto::ProfileJoinPart {
            join_id: part.join_id.clone(),
            index: part.index,
            data: part.data.clone(),
        })),
    }
    .encode_to_vec()
}
