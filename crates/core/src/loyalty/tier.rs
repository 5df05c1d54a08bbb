//! Tiers: qualifying spend over a rolling window, immediate upgrades, and
//! reviews at each anniversary of the tier's start that may lower it.

use serde::{Deserialize, Serialize};

use super::{LoyaltyConfig, Tier, collects_points};
use crate::member::Member;
use crate::time::Millis;

/// Tier changes kept for orders that arrive late (event time before the
/// latest change): they earn at the tier held when they occurred.
const CHANGES_KEPT: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChange {
    pub at: Millis,
    pub from: Tier,
    pub to: Tier,
}

/// Net spend (program minor units, returns subtracted, cancelled orders
/// excluded) of orders placed in `(at − window, at]`.
pub(crate) fn qualifying_spend(member: &Member, at: Millis, cfg: &LoyaltyConfig) -> i64 {
    member.purchases.spend.window(at - cfg.tier_window(), at).net_program_minor
}

#[derive(Debug, Clone, Copy)]
struct State {
    tier: Tier,
    since: Option<Millis>,
    next_review: Option<Millis>,
}

/// Applies every review due up to `until`, reporting each change.
fn review(
    member: &Member,
    mut s: State,
    until: Millis,
    cfg: &LoyaltyConfig,
    mut on_change: impl FnMut(TierChange),
) -> State {
    while let Some(due) = s.next_review.filter(|r| *r <= until) {
        let target = cfg.tier_for(qualifying_spend(member, due, cfg));
        if target != s.tier {
            on_change(TierChange { at: due, from: s.tier, to: target });
            s.tier = target;
            s.since = (target != Tier::Member).then_some(due);
        }
        s.next_review = (s.tier != Tier::Member).then(|| due + cfg.tier_review());
    }
    s
}

fn state(member: &Member) -> State {
    let l = &member.loyalty;
    State { tier: l.tier, since: l.tier_since, next_review: l.next_review }
}

fn record(member: &mut Member, s: State, changes: Vec<TierChange>) {
    let l = &mut member.loyalty;
    l.tier = s.tier;
    l.tier_since = s.since;
    l.next_review = s.next_review;
    l.tier_changes.extend(changes);
    let over = l.tier_changes.len().saturating_sub(CHANGES_KEPT);
    l.tier_changes.drain(..over);
}

/// Tier, its start and its next review as of `at`, without changing anything.
pub(crate) fn standing_at(member: &Member, at: Millis, cfg: &LoyaltyConfig) -> (Tier, Option<Millis>, Option<Millis>) {
    let changes = &member.loyalty.tier_changes;
    if let Some(last) = changes.last()
        && at < last.at
    {
        // Before the latest change: what the recorded changes say.
        let i = changes.partition_point(|c| c.at <= at);
        let tier = if i == 0 { changes[0].from } else { changes[i - 1].to };
        let since = (i > 0 && tier != Tier::Member).then(|| changes[i - 1].at);
        return (tier, since, None);
    }
    let s = review(member, state(member), at, cfg, |_| {});
    (s.tier, s.since, s.next_review)
}

/// The tier an order placed at `at` earns at: reviews due by then are
/// applied first. The order's own spend does not count yet.
pub(crate) fn tier_for_order(member: &mut Member, at: Millis, cfg: &LoyaltyConfig) -> Tier {
    if !collects_points(member) {
        return Tier::Member;
    }
    let mut changes = Vec::new();
    let s = review(member, state(member), at, cfg, |c| changes.push(c));
    record(member, s, changes);
    standing_at(member, at, cfg).0
}

/// After an order's spend counts: upgrade at once if the spend now
/// qualifies for a higher tier. A late order upgrades from the latest
/// recorded change on, never rewriting tier history.
pub(crate) fn upgrade(member: &mut Member, at: Millis, cfg: &LoyaltyConfig) {
    if !collects_points(member) {
        return;
    }
    let l = &member.loyalty;
    let floor = l.tier_changes.last().map_or(at, |c| c.at.max(at));
    let at = floor.max(l.tier_since.unwrap_or(at));
    let target = cfg.tier_for(qualifying_spend(member, at, cfg));
    if target > l.tier {
        let change = TierChange { at, from: l.tier, to: target };
        let s = State { tier: target, since: Some(at), next_review: Some(at + cfg.tier_review()) };
        record(member, s, vec![change]);
    }
}
