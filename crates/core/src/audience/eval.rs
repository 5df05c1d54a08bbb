//! Evaluating a compiled rule on a member at an instant, and the next
//! instant at which time alone may change the answer.

use super::{Cmp, Measure, Rule, Test, Value};
use crate::config::FoldConfig;
use crate::member::Member;
use crate::time::Millis;

/// Whether `member` is in the audience of `rule` at `at`. A measure with
/// no value (no order yet, a trait not set) makes its comparison false.
pub fn holds(rule: &Rule, member: &Member, at: Millis, cfg: &FoldConfig) -> bool {
    match rule {
        Rule::And(all) => all.iter().all(|r| holds(r, member, at, cfg)),
        Rule::Or(all) => all.iter().any(|r| holds(r, member, at, cfg)),
        Rule::Not(inner) => !holds(inner, member, at, cfg),
        Rule::Test(t) => test(t, member, at),
        Rule::Compare(m, op, v) => measure(m, member, at, cfg).is_some_and(|x| compare(&x, *op, v)),
    }
}

/// The earliest instant after `at` at which the answer may differ with no
/// new event: a window passing an order or a view, points activating or
/// expiring (or entering an expiry period), a recency threshold passing, a
/// tier review. `None`: only an event can change it. Conservative: the
/// answer may also stay the same then.
pub fn next_change(rule: &Rule, member: &Member, at: Millis, cfg: &FoldConfig) -> Option<Millis> {
    match rule {
        Rule::And(all) | Rule::Or(all) => all.iter().filter_map(|r| next_change(r, member, at, cfg)).min(),
        Rule::Not(inner) => next_change(inner, member, at, cfg),
        Rule::Test(crate::audience::Test::Enrolled) => member.enrolled_at.filter(|e| *e > at),
        Rule::Test(_) => None,
        Rule::Compare(m, op, v) => measure_change(m, *op, v, member, at, cfg),
    }
}

fn test(t: &Test, m: &Member, at: Millis) -> bool {
    match t {
        Test::Consented(purpose) => m.consents.get(purpose).is_some_and(|c| c.value.granted),
        Test::HasIdentifier(kind) => m.identifiers.iter().any(|i| i.kind == *kind),
        Test::HasTrait(name) => m.traits.get(name).is_some_and(|t| !t.value.is_empty()),
        Test::Enrolled => m.enrolled_at.is_some_and(|e| e <= at),
    }
}

fn compare(x: &Value, op: Cmp, v: &Value) -> bool {
    let ord = match (x, v) {
        (Value::Int(a), Value::Int(b))
        | (Value::Minor(a), Value::Minor(b))
        | (Value::Duration(a), Value::Duration(b)) => a.cmp(b),
        (Value::Tier(a), Value::Tier(b)) => a.cmp(b),
        (Value::Share(a), Value::Share(b)) => match a.partial_cmp(b) {
            Some(o) => o,
            None => return false,
        },
        (Value::Text(a), Value::Text(b)) => a.cmp(b),
        // The checker gives every measure a value of its own type.
        _ => return false,
    };
    match op {
        Cmp::Eq => ord.is_eq(),
        Cmp::Ne => ord.is_ne(),
        Cmp::Lt => ord.is_lt(),
        Cmp::Le => ord.is_le(),
        Cmp::Gt => ord.is_gt(),
        Cmp::Ge => ord.is_ge(),
    }
}

fn count(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The value of `m` for `member` at `at`; `None` when it has none.
fn measure(m: &Measure, member: &Member, at: Millis, cfg: &FoldConfig) -> Option<Value> {
    let p = &member.purchases;
    Some(match m {
        Measure::Tier => Value::Tier(member.standing(at, &cfg.loyalty).tier),
        Measure::PointsActive => Value::Int(member.balance(at, &cfg.loyalty).active),
        Measure::PointsPending => Value::Int(member.balance(at, &cfg.loyalty).pending),
        Measure::PointsExpiring { within } => Value::Int(
            member
                .loyalty
                .lots
                .iter()
                .filter(|l| l.remaining > 0 && l.activates_at <= at && at < l.expires_at)
                .filter(|l| l.expires_at <= at.saturating_add(*within))
                .map(|l| l.remaining)
                .fold(0i64, i64::saturating_add),
        ),
        Measure::Orders { within: Some(w), .. } => count(p.spend.window(at.saturating_sub(*w), at).orders),
        Measure::Orders { channel: Some(c), .. } => count(member.channels.get(c).map_or(0, |s| s.orders)),
        Measure::Orders { .. } => count(p.orders),
        Measure::Spend { within: Some(w), .. } => {
            Value::Minor(p.spend.window(at.saturating_sub(*w), at).net_program_minor)
        }
        Measure::Spend { channel: Some(c), .. } => Value::Minor(member.channels.get(c).map_or(0, |s| s.spend_minor)),
        Measure::Spend { .. } => Value::Minor(p.net_minor()),
        Measure::ProductsViewed { within, category } => count(
            member
                .browse
                .recent
                .iter()
                .filter(|r| r.last_viewed_at > at.saturating_sub(*within) && r.last_viewed_at <= at)
                .filter(|r| category.as_ref().is_none_or(|c| *c == r.category))
                .count() as u64,
        ),
        Measure::Affinity { category } => {
            let total: u64 = member.browse.categories.values().map(|c| c.weight()).sum();
            let mine = member.browse.categories.get(category).map_or(0, |c| c.weight());
            Value::Share(if total == 0 { 0.0 } else { mine as f64 / total as f64 })
        }
        Measure::Events { channel: Some(c) } => count(member.channels.get(c).map_or(0, |s| s.events)),
        Measure::Events { channel: None } => count(member.channels.values().map(|s| s.events).sum()),
        Measure::SinceLastOrder => Value::Duration(at - p.spend.last_order_at(at)?),
        Measure::SinceLastSeen { .. } => Value::Duration((at - last_seen(m, member)?).max(0)),
        Measure::SinceEnrolled => Value::Duration(at - member.enrolled_at.filter(|e| *e <= at)?),
        Measure::Trait(name) => {
            Value::Text(member.traits.get(name).map(|t| t.value.clone()).filter(|v| !v.is_empty())?)
        }
    })
}

/// When the member was last seen, on the measure's channel or any.
fn last_seen(m: &Measure, member: &Member) -> Option<Millis> {
    match m {
        Measure::SinceLastSeen { channel: Some(c) } => member.channels.get(c).map(|s| s.last_seen_at),
        _ => member.last_seen_at,
    }
}

/// The earliest instant after `at` at which `m op v` may change by time alone.
fn measure_change(m: &Measure, op: Cmp, v: &Value, member: &Member, at: Millis, cfg: &FoldConfig) -> Option<Millis> {
    let after = |t: Millis| (t > at).then_some(t);
    let lots = || member.loyalty.lots.iter().filter(|l| l.remaining > 0);
    match m {
        Measure::Tier => member.standing(at, &cfg.loyalty).next_review.and_then(after),
        Measure::PointsActive | Measure::PointsPending => {
            lots().flat_map(|l| [l.activates_at, l.expires_at]).filter_map(after).min()
        }
        Measure::PointsExpiring { within } => lots()
            .flat_map(|l| [l.activates_at, l.expires_at, l.expires_at.saturating_sub(*within)])
            .filter_map(after)
            .min(),
        // A mark inside the window leaves it `w` after it was placed; a
        // mark dated later than `at` enters it then.
        Measure::Orders { within: Some(w), .. } | Measure::Spend { within: Some(w), .. } => member
            .purchases
            .spend
            .marks()
            .iter()
            .map(|mark| if mark.at > at { mark.at } else { mark.at.saturating_add(*w) })
            .filter_map(after)
            .min(),
        Measure::ProductsViewed { within, .. } => member
            .browse
            .recent
            .iter()
            .map(|r| if r.last_viewed_at > at { r.last_viewed_at } else { r.last_viewed_at.saturating_add(*within) })
            .filter_map(after)
            .min(),
        // A recency passes its threshold `d` after the instant it counts
        // from; a later-dated order (or enrolment, or visit) starts it over.
        Measure::SinceLastOrder => {
            let spend = &member.purchases.spend;
            let later = spend.marks().iter().map(|k| k.at).find(|t| *t > at);
            let edge = spend.last_order_at(at).and_then(|l| threshold(l, op, v));
            [edge, later].into_iter().flatten().filter_map(after).min()
        }
        Measure::SinceLastSeen { .. } | Measure::SinceEnrolled => {
            let since = if matches!(m, Measure::SinceEnrolled) { member.enrolled_at } else { last_seen(m, member) }?;
            [threshold(since, op, v), Some(since)].into_iter().flatten().filter_map(after).min()
        }
        Measure::Orders { .. }
        | Measure::Spend { .. }
        | Measure::Affinity { .. }
        | Measure::Events { .. }
        | Measure::Trait(_) => None,
    }
}

/// When `(now - since) op d` flips: at `since + d` for `<` and `>=`, one
/// millisecond later for `<=` and `>`.
fn threshold(since: Millis, op: Cmp, v: &Value) -> Option<Millis> {
    let Value::Duration(d) = v else { return None };
    let edge = since.saturating_add(*d);
    Some(match op {
        Cmp::Lt | Cmp::Ge | Cmp::Eq | Cmp::Ne => edge,
        Cmp::Le | Cmp::Gt => edge.saturating_add(1),
    })
}
