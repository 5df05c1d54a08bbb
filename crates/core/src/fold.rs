//! The fold: apply one validated event to a member aggregate.
//!
//! `apply` either changes the member and returns `Ok` with the ledger entries
//! and verdict it produced, or leaves it exactly as it was and returns a
//! [`Rejection`]. All checks run before any change.

use crate::Rejection;
use crate::config::FoldConfig;
use crate::effects::Effects;
use crate::erasure;
use crate::event::{Event, Line, Payload, ReturnLine, Returned};
use crate::identity::{self, Claimed};
use crate::loyalty::{self, collects_points};
use crate::member::{Consent, Member, OrderLine, OrderRecord, ProfileKind, Stamped};
use crate::profile;

/// Where in the log an event was read: the fold records it as the member's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub offset: i64,
}

/// The kind of profile an event's subject starts.
pub fn kind_of(event: &Event) -> ProfileKind {
    if event.subject.member_id.is_some() {
        ProfileKind::KnownMember
    } else if event.subject.anonymous_id.is_some() {
        ProfileKind::Anonymous
    } else {
        ProfileKind::Provisional
    }
}

/// Applies `event`, read at `pos`, to `member`.
pub fn apply(member: &mut Member, event: &Event, pos: Position, cfg: &FoldConfig) -> Result<Effects, Rejection> {
    let at = event.occurred_at;
    match &event.payload {
        Payload::ErasureRequested { request_id, .. } => {
            let fx = erasure::erase(member, event, request_id.as_deref());
            record_position(member, pos, false);
            return Ok(fx);
        }
        Payload::KeyErased { member_id, .. } => return Ok(erasure::forget_key(member, member_id)),
        _ => {}
    }
    if let Some(erased_at) = member.erased_at {
        erasure::after(member, erased_at, cfg)?;
    }
    let mut fx = Effects::default();
    let mut claims: Vec<Claimed> = Vec::new();
    match &event.payload {
        // Identity events omnifold writes itself are bookkeeping, not activity.
        Payload::IdentityClaimed { member_id, merge, .. } => {
            identity::on_claim(member, event, member_id, *merge, cfg, &mut fx)?;
            record_position(member, pos, false);
            return Ok(fx);
        }
        Payload::ProfileJoinPart { .. } => {
            return Err(Rejection("a join's part is kept by the ingest until its join arrives, not folded".into()));
        }
        Payload::ProfileJoined { from_key, from_kind, identifier, parts, state, .. } => {
            points_holder(member)?;
            if *parts > 0 && state.is_none() {
                return Err(Rejection(format!("the state of the join of {from_key} has not arrived")));
            }
            let (snapshot, ledger) = match state {
                Some(s) => (Some(&s.profile), s.ledger.as_slice()),
                None => (None, &[][..]),
            };
            // Combining checks every sum as it goes: work on a copy, so a
            // refused join leaves the member as it was.
            let mut joined = member.clone();
            identity::on_joined(
                &mut joined,
                event,
                &identity::Joined {
                    from_key,
                    from_kind: *from_kind,
                    identifier: identifier.as_ref(),
                    snapshot,
                    ledger,
                },
                cfg,
                &mut fx,
            )?;
            *member = joined;
            record_position(member, pos, false);
            loyalty::advance(member, at, &mut fx);
            return Ok(fx);
        }
        Payload::ProductViewed { sku, category, .. } => profile::view_product(member, sku, category, at, cfg),
        Payload::SearchPerformed { query } => profile::search(member, query, at, cfg),
        Payload::CartUpdated { .. } => member.browse.cart_updates = member.browse.cart_updates.saturating_add(1),
        Payload::OrderPlaced { order_id, currency, lines, total_minor } => {
            let order = NewOrder { order_id, currency, lines, total_minor: *total_minor };
            place_order(member, event, &order, cfg, &mut fx)?
        }
        Payload::OrderReturned { order_id, return_id, returned } => {
            return_order(member, event, order_id, return_id, returned, cfg, &mut fx)?
        }
        Payload::OrderCancelled { order_id, .. } => cancel_order(member, event, order_id, cfg, &mut fx)?,
        Payload::MemberEnrolled { .. } => {
            member.enrolled_at = Some(member.enrolled_at.map_or(at, |e| e.min(at)));
        }
        Payload::ProfileUpdated { traits } => {
            for (k, v) in traits {
                let newer = member.traits.get(k).is_none_or(|old| old.older_than(at, &event.event_id));
                if newer {
                    member.traits.insert(k.clone(), Stamped { value: v.clone(), at, event_id: event.event_id.clone() });
                }
            }
        }
        Payload::ConsentChanged { purpose, granted } => {
            let newer = member.consents.get(purpose).is_none_or(|old| old.older_than(at, &event.event_id));
            if newer {
                member.consents.insert(
                    purpose.clone(),
                    Stamped {
                        value: Consent { granted: *granted, channel: event.channel },
                        at,
                        event_id: event.event_id.clone(),
                    },
                );
            }
        }
        Payload::IdentityLinked { anonymous_id, identifiers } => {
            // Linked once the keys' partitions agree (profileJoined).
            claims.extend(anonymous_id.iter().cloned().map(Claimed::Anonymous));
            claims.extend(identifiers.iter().cloned().map(Claimed::Identifier));
        }
        Payload::MembersMerged { from_member_id, .. } => {
            identity::on_merge_request(member, event, from_member_id, cfg, &mut fx.outbox)?;
        }
        Payload::PointsAdjusted { delta, reason, actor, request_id } => {
            points_holder(member)?;
            loyalty::room(member, delta.unsigned_abs())?;
            let adjustment = loyalty::Adjustment { delta: *delta, reason, actor, request_id: request_id.as_deref() };
            loyalty::adjust(member, event, &adjustment, &cfg.loyalty, &mut fx);
        }
        Payload::PointsRedemptionRequested { request_id, points, reward } => {
            points_holder(member)?;
            loyalty::room(member, points.unsigned_abs())?;
            loyalty::redeem(member, event, request_id, *points, reward, &mut fx);
        }
        Payload::ErasureRequested { .. } | Payload::KeyErased { .. } => {
            return Err(Rejection("an erasure is folded before any other event".into()));
        }
        Payload::AudienceBackfill { .. } | Payload::AudienceDefined(_) => {
            return Err(Rejection("an audience backfill is a partition's, not a member's".into()));
        }
    }
    // A member claims every anonymous id and identifier its events carry;
    // another profile just records the identifiers it was seen with.
    if collects_points(member) {
        for c in identity::claims_of(member, event, &claims) {
            fx.outbox.push(identity::claim(member, event, &c, false));
        }
    } else {
        member.identifiers.extend(event.subject.identifiers.iter().cloned());
    }
    let stats = member.channels.entry(event.channel).or_default();
    stats.events = stats.events.saturating_add(1);
    stats.last_seen_at = stats.last_seen_at.max(at);
    member.first_seen_at = Some(member.first_seen_at.map_or(at, |f| f.min(at)));
    member.last_seen_at = Some(member.last_seen_at.map_or(at, |l| l.max(at)));
    record_position(member, pos, true);
    if collects_points(member) {
        loyalty::advance(member, at, &mut fx);
    }
    Ok(fx)
}

/// Records how far the fold has read for this member, and counts the
/// event if it is activity (not identity bookkeeping).
fn record_position(member: &mut Member, pos: Position, activity: bool) {
    member.version.partition = pos.partition;
    member.version.next_offset = member.version.next_offset.max(pos.offset.saturating_add(1));
    member.version.events_applied = member.version.events_applied.saturating_add(u64::from(activity));
}

fn points_holder(member: &Member) -> Result<(), Rejection> {
    if collects_points(member) {
        Ok(())
    } else {
        Err(Rejection(format!("points belong to members; `{}` is not a member id (set subject.memberId)", member.key)))
    }
}

/// The parts of an `orderPlaced` payload.
struct NewOrder<'a> {
    order_id: &'a str,
    currency: &'a str,
    lines: &'a [Line],
    total_minor: i64,
}

fn place_order(
    member: &mut Member,
    event: &Event,
    order: &NewOrder<'_>,
    cfg: &FoldConfig,
    fx: &mut Effects,
) -> Result<(), Rejection> {
    let NewOrder { order_id, currency, lines, total_minor } = *order;
    if member.purchases.history.contains(order_id) {
        return Err(Rejection(format!("order {order_id} was already placed by another event")));
    }
    let total = if total_minor > 0 { total_minor } else { list_value(lines)? };
    let total_program = cfg
        .to_program(currency, total)
        .ok_or_else(|| Rejection(format!("no conversion rate configured for currency {currency}")))?;
    // Units are a statistic: a sum beyond u32 saturates.
    let units = u32::try_from(lines.iter().map(|l| u64::from(l.quantity)).sum::<u64>()).unwrap_or(u32::MAX);
    let at = event.occurred_at;
    // Earned at the tier held when the order occurs, before its own spend counts.
    let points = if collects_points(member) {
        let tier = loyalty::tier_at(member, at, &cfg.loyalty);
        loyalty::order_points(total_program, lines, event.channel, tier, &cfg.loyalty)
    } else {
        0
    };
    // Every sum the order changes must fit before anything changes.
    let gross = profile::sum(member, "gross spend", member.purchases.gross_minor, total_program)?;
    let channel_spend = member.channels.get(&event.channel).map_or(0, |s| s.spend_minor);
    let channel_spend = profile::sum(member, "channel spend", channel_spend, total_program)?;
    loyalty::room(member, points.unsigned_abs())?;
    if collects_points(member) {
        // Records the tier reviews due by the order (the tier itself was read above).
        loyalty::tier_for_order(member, at, &cfg.loyalty);
    }
    let p = &mut member.purchases;
    p.orders = p.orders.saturating_add(1);
    p.units = p.units.saturating_add(u64::from(units));
    p.gross_minor = gross;
    p.first_order_at = Some(p.first_order_at.map_or(at, |f| f.min(at)));
    p.last_order_at = Some(p.last_order_at.map_or(at, |l| l.max(at)));
    if let Some(store) = &event.store_id {
        let n = p.stores.entry(store.clone()).or_default();
        *n = n.saturating_add(1);
    }
    let record = OrderRecord {
        order_id: order_id.to_owned(),
        at,
        channel: event.channel,
        store_id: event.store_id.clone(),
        currency: currency.to_owned(),
        total_minor: total,
        total_program_minor: total_program,
        units,
        lines: lines
            .iter()
            .map(|l| OrderLine {
                sku: l.sku.clone(),
                category: l.category.clone(),
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
            })
            .collect(),
        returned_list_minor: 0,
        returned_minor: 0,
        returned_program_minor: 0,
        returned_units: Default::default(),
        return_ids: Default::default(),
        cancelled: false,
        points,
        points_revoked: 0,
    };
    p.history.insert(record);
    p.spend.add_order(at, total_program);
    profile::prune_history(member, cfg);
    let stats = member.channels.entry(event.channel).or_default();
    stats.orders = stats.orders.saturating_add(1);
    stats.spend_minor = channel_spend;
    for l in lines {
        if !l.category.is_empty() {
            profile::bump_category(member, &l.category, 0, u64::from(l.quantity), cfg);
        }
    }
    if collects_points(member) {
        loyalty::earn_order(member, event, order_id, points, &cfg.loyalty, fx);
    }
    Ok(())
}

/// Σ unit price × quantity of order lines, exactly (validated lines fit).
fn list_value(lines: &[Line]) -> Result<i64, Rejection> {
    let v: i128 = lines.iter().map(|l| i128::from(l.unit_price_minor) * i128::from(l.quantity)).sum();
    i64::try_from(v).map_err(|_| Rejection(format!("the order's list value {v} is out of range")))
}

/// An order's list value (its lines were validated, so it fits).
fn list_value_of(order: &OrderRecord) -> i64 {
    let v: i128 = order.lines.iter().map(|l| i128::from(l.unit_price_minor) * i128::from(l.quantity)).sum();
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn find_order<'a>(member: &'a mut Member, order_id: &str) -> Result<&'a mut OrderRecord, Rejection> {
    member
        .purchases
        .history
        .get_mut(order_id)
        .ok_or_else(|| Rejection(format!("order {order_id} is not known for this subject")))
}

fn return_order(
    member: &mut Member,
    event: &Event,
    order_id: &str,
    return_id: &str,
    returned: &Returned,
    cfg: &FoldConfig,
    fx: &mut Effects,
) -> Result<(), Rejection> {
    let order_points = find_order(member, order_id)?.points;
    loyalty::room(member, order_points.unsigned_abs())?;
    let order = find_order(member, order_id)?;
    if order.return_ids.contains(return_id) {
        return Ok(()); // the same return reported again under another event id
    }
    if order.cancelled {
        return Err(Rejection(format!("order {order_id} was cancelled")));
    }
    let list_total = i128::from(list_value_of(order));
    let (new_list, new_returned, new_units) = match returned {
        Returned::Lines(lines) => {
            let mut units = order.returned_units.clone();
            let mut list = i128::from(order.returned_list_minor);
            for ReturnLine { sku, quantity } in lines {
                let Some(line) = order.lines.iter().find(|l| &l.sku == sku) else {
                    return Err(Rejection(format!("order {order_id} has no line for SKU {sku}")));
                };
                let done = units.entry(sku.clone()).or_default();
                if u64::from(*done) + u64::from(*quantity) > u64::from(line.quantity) {
                    return Err(Rejection(format!(
                        "return of {quantity} × {sku} exceeds the {} ordered ({} already returned)",
                        line.quantity, *done
                    )));
                }
                *done += quantity;
                list += i128::from(line.unit_price_minor) * i128::from(*quantity);
            }
            // Refund what was paid for the returned share, cumulatively so
            // rounding never drifts over several returns. The returned list
            // value is at most the order's, so both fit.
            let refunded = if list_total > 0 { i128::from(order.total_minor) * list / list_total } else { 0 };
            (list as i64, refunded as i64, units)
        }
        Returned::Amount(amount) => {
            let refunded = order.returned_minor.saturating_add(*amount);
            if refunded > order.total_minor {
                return Err(Rejection(format!(
                    "return of {amount} exceeds what is left of order {order_id} ({} of {})",
                    order.total_minor - order.returned_minor,
                    order.total_minor
                )));
            }
            (order.returned_list_minor, refunded, order.returned_units.clone())
        }
    };
    let new_program = cfg.to_program(&order.currency, new_returned).unwrap_or(0);
    let delta = new_program - order.returned_program_minor;
    order.returned_list_minor = new_list;
    order.returned_minor = new_returned;
    order.returned_program_minor = new_program;
    order.returned_units = new_units;
    order.return_ids.insert(return_id.to_owned());
    // Points taken back: floor(order points × refunded / paid), cumulative.
    let revoked = if order.total_minor > 0 {
        (i128::from(order.points) * i128::from(order.returned_minor) / i128::from(order.total_minor)) as i64
    } else {
        0
    };
    let revoke = revoked - order.points_revoked;
    order.points_revoked = revoked;
    let (channel, placed_at) = (order.channel, order.at);
    member.purchases.spend.returned(placed_at, delta);
    member.purchases.returned_minor = member.purchases.returned_minor.saturating_add(delta);
    member.purchases.returns = member.purchases.returns.saturating_add(1);
    let stats = member.channels.entry(channel).or_default();
    stats.spend_minor = stats.spend_minor.saturating_sub(delta);
    let reason = format!("return {return_id}");
    loyalty::revoke(member, event, order_id, revoke, &reason, &cfg.loyalty, fx);
    Ok(())
}

fn cancel_order(
    member: &mut Member,
    event: &Event,
    order_id: &str,
    cfg: &FoldConfig,
    fx: &mut Effects,
) -> Result<(), Rejection> {
    let order_points = find_order(member, order_id)?.points;
    loyalty::room(member, order_points.unsigned_abs())?;
    let order = find_order(member, order_id)?;
    if order.cancelled {
        return Ok(());
    }
    order.cancelled = true;
    let order_at = order.at;
    let revoke = order.points - order.points_revoked;
    order.points_revoked = order.points;
    let (channel, store, units, total, returned) =
        (order.channel, order.store_id.clone(), order.units, order.total_program_minor, order.returned_program_minor);
    let p = &mut member.purchases;
    p.spend.cancelled(order_at, total.saturating_sub(returned));
    p.orders = p.orders.saturating_sub(1);
    p.units = p.units.saturating_sub(u64::from(units));
    p.gross_minor = p.gross_minor.saturating_sub(total);
    p.returned_minor = p.returned_minor.saturating_sub(returned);
    p.cancelled = p.cancelled.saturating_add(1);
    if let Some(s) = store
        && let Some(n) = p.stores.get_mut(&s)
    {
        *n = n.saturating_sub(1);
        if *n == 0 {
            p.stores.remove(&s);
        }
    }
    let stats = member.channels.entry(channel).or_default();
    stats.orders = stats.orders.saturating_sub(1);
    stats.spend_minor = stats.spend_minor.saturating_sub(total.saturating_sub(returned));
    loyalty::revoke(member, event, order_id, revoke, "order cancelled", &cfg.loyalty, fx);
    Ok(())
}
