//! A member's memberships as the fold keeps them: in or out of each
//! audience, with a sequence number per member and audience that grows by
//! one with each entry and exit, and the next instant at which time alone
//! may change one of them (the member's timer).

use serde::{Deserialize, Serialize};

use super::{Audiences, holds, next_change};
use crate::config::FoldConfig;
use crate::member::{Member, ProfileKind};
use crate::time::Millis;

/// The encoding's version byte.
const STATE_VERSION: u8 = 1;

/// One audience's membership of one member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// In the audience now.
    pub member: bool,
    /// Entries and exits so far: odd while in.
    pub seq: u64,
    /// The instant of the latest entry or exit.
    pub at: Millis,
}

/// Every membership of one member, and its timer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceState {
    /// By audience name, in name order; an audience never entered has none.
    pub memberships: Vec<(String, Membership)>,
    /// The next instant time alone may change a membership.
    pub timer: Option<Millis>,
}

/// A member entering or leaving an audience: emitted once per `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub audience: String,
    pub entered: bool,
    pub seq: u64,
    pub at: Millis,
}

impl AudienceState {
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(STATE_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<AudienceState, crate::Error> {
        crate::codec::decode(STATE_VERSION, "audience state", bytes)
    }

    /// The audiences the member is in, in name order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.memberships.iter().filter(|(_, m)| m.member).map(|(n, _)| n.as_str())
    }

    /// Leaves every audience at `at` (an erased or merged-away member) and
    /// drops the timer.
    pub fn leave_all(&mut self, at: Millis) -> Vec<Transition> {
        self.timer = None;
        self.memberships.iter_mut().filter_map(|(n, m)| update(n, m, false, at)).collect()
    }
}

/// Sets `m`, the membership of `audience`, to `now` at `at`; the
/// transition if it changed.
fn update(audience: &str, m: &mut Membership, now: bool, at: Millis) -> Option<Transition> {
    if m.member == now {
        return None;
    }
    *m = Membership { member: now, seq: m.seq + 1, at };
    Some(Transition { audience: audience.to_owned(), entered: now, seq: m.seq, at })
}

/// Whether `member` can be in an audience: a live member, not an
/// anonymous or provisional profile, an erased member or a merged-away one.
pub(super) fn in_audiences(member: &Member) -> bool {
    member.kind == ProfileKind::KnownMember && member.erased_at.is_none() && member.routes_to.is_none()
}

impl Audiences {
    /// Evaluates every audience for `member` at `at` into `state`: the
    /// entries and exits, in audience name order, and the member's next
    /// timer. A profile that is not a live member's is in none; a
    /// membership of an audience no longer configured ends.
    pub fn evaluate(
        &self,
        state: &mut AudienceState,
        member: &Member,
        at: Millis,
        cfg: &FoldConfig,
    ) -> Vec<Transition> {
        if !in_audiences(member) {
            return state.leave_all(at);
        }
        // One walk over the audiences and the memberships, both in name
        // order: a membership before the next audience's name is of an
        // audience no longer configured.
        let (mut out, mut timer, mut i) = (Vec::new(), None::<Millis>, 0);
        for a in self.iter() {
            while let Some((n, m)) = state.memberships.get_mut(i)
                && n.as_str() < a.name.as_str()
            {
                out.extend(update(n, m, false, at));
                i += 1;
            }
            let consented = a.purpose.as_ref().is_none_or(|p| member.consents.get(p).is_some_and(|c| c.value.granted));
            let now = consented && holds(&a.rule, member, at, cfg);
            match state.memberships.get_mut(i) {
                Some((n, m)) if *n == a.name => {
                    out.extend(update(n, m, now, at));
                    i += 1;
                }
                _ if now => {
                    state.memberships.insert(i, (a.name.clone(), Membership { member: true, seq: 1, at }));
                    out.push(Transition { audience: a.name.clone(), entered: true, seq: 1, at });
                    i += 1;
                }
                _ => {}
            }
            if consented
                && a.timed
                && let Some(t) = next_change(&a.rule, member, at, cfg)
            {
                timer = Some(timer.map_or(t, |x| x.min(t)));
            }
        }
        for (n, m) in state.memberships.iter_mut().skip(i) {
            out.extend(update(n, m, false, at));
        }
        state.timer = timer;
        out
    }
}

/// The encoding's version byte of [`Backfill`].
const BACKFILL_VERSION: u8 = 1;

/// A partition's pass over its members for audiences defined, changed or
/// removed (docs/audiences.md, "Backfill"). Folded from the partition's
/// `audienceBackfill` records, so a replay makes the same passes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    /// Audiences being built: the pass under way is for them.
    pub pending: std::collections::BTreeSet<String>,
    /// The last member the pass evaluated (none: it starts at the first).
    pub after: Option<String>,
    /// Members the pass has evaluated.
    pub evaluated: u64,
    /// Each audience's fingerprint when the latest pass started: what the
    /// next start compares the definitions with.
    pub defined: std::collections::BTreeMap<String, u64>,
}

impl Backfill {
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(BACKFILL_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Backfill, crate::Error> {
        crate::codec::decode(BACKFILL_VERSION, "backfill", bytes)
    }

    /// Starts a new pass for `audiences` (with those already pending), over
    /// every member, recording the definitions `defined`.
    pub fn start(&mut self, audiences: &[String], defined: std::collections::BTreeMap<String, u64>) {
        self.pending.extend(audiences.iter().cloned());
        self.after = None;
        self.evaluated = 0;
        self.defined = defined;
    }

    /// The pass evaluated `members`, the last of them `last`; `more`: the
    /// partition has members after it. A finished pass builds nothing.
    pub fn advance(&mut self, members: u64, last: Option<String>, more: bool) {
        self.evaluated += members;
        if more {
            self.after = last;
        } else {
            self.pending.clear();
            self.after = None;
        }
    }
}

impl Audiences {
    /// Each audience's fingerprint: a hash of what decides its members
    /// (its rule as written and its purpose).
    pub fn fingerprints(&self) -> std::collections::BTreeMap<String, u64> {
        self.iter()
            .map(|a| {
                let text = format!("{}\0{}", a.source, a.purpose.as_deref().unwrap_or(""));
                (a.name.clone(), xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
            })
            .collect()
    }

    /// The audiences defined, changed or removed since `before` was recorded.
    pub fn changed_since(&self, before: &std::collections::BTreeMap<String, u64>) -> Vec<String> {
        let now = self.fingerprints();
        let mut names: std::collections::BTreeSet<&String> =
            now.iter().filter(|(n, f)| before.get(*n) != Some(f)).map(|(n, _)| n).collect();
        names.extend(before.keys().filter(|n| !now.contains_key(*n)));
        names.into_iter().cloned().collect()
    }
}
