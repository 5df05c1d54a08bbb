//! The state a profile brings when it joins a member, in its own wire
//! format (`omnifold.v1.JoinedState`), and how it is cut into parts small
//! enough for any broker and put together again.
//!
//! A join sends `parts` `profileJoinPart` events and then the
//! `profileJoined` that names them, with a digest of the whole. The
//! receiving partition keeps the parts until the join arrives and combines
//! the state all at once, or not at all.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use xxhash_rust::xxh3::xxh3_128;

use crate::Error;
use crate::event::Channel;
use crate::ident::Identifier;
use crate::loyalty::{CommandKind, EntryKind, LedgerEntry, Lot, Verdict, VerdictStatus};
use crate::member::{
    Browse, CategoryStats, ChannelStats, Consent, Member, OrderLine, OrderRecord, ProfileKind, Purchases,
    RecentProduct, RecentSearch, Stamped,
};
use crate::spend::{Spend, SpendMark};
use crate::time::Millis;
use omnifold_proto::v1 as proto;

/// What a joined profile contributes to the member it joins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinedState {
    /// The joined profile as it was when its key became a route.
    pub profile: Member,
    /// Its points ledger, oldest first.
    pub ledger: Vec<LedgerEntry>,
    /// Its kept event history, oldest first: `(event time, record)`.
    pub history: Vec<(Millis, Vec<u8>)>,
    /// Its decided redemptions and adjustments.
    pub verdicts: Vec<Verdict>,
}

/// Most parts one join may have (a state of up to ~64 GiB at 64 KiB parts).
pub const MAX_PARTS: u32 = 1 << 20;

impl JoinedState {
    /// The encoded state cut into parts of at most `part_bytes` bytes, and
    /// the digest of the whole.
    pub fn into_parts(&self, part_bytes: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let bytes = to_wire(self).encode_to_vec();
        let digest = xxh3_128(&bytes).to_be_bytes().to_vec();
        let parts = bytes.chunks(part_bytes.max(1)).map(<[u8]>::to_vec).collect();
        (parts, digest)
    }

    /// Puts the parts of a join together again: all of them, in order,
    /// matching the digest, decoding to a valid state.
    pub fn from_parts(parts: &[&[u8]], expected: u32, digest: &[u8]) -> Result<JoinedState, Error> {
        if parts.len() != expected as usize {
            return Err(Error::invalid("profileJoined.parts", format!("{} of {expected} parts arrived", parts.len())));
        }
        let bytes = parts.concat();
        if xxh3_128(&bytes).to_be_bytes()[..] != *digest {
            return Err(Error::invalid("profileJoined.digest", "the parts do not match the join's digest"));
        }
        let wire = proto::JoinedState::decode(bytes.as_slice()).map_err(|e| Error::Protobuf(e.to_string()))?;
        from_wire(wire)
    }
}

fn kind_name(k: ProfileKind) -> &'static str {
    match k {
        ProfileKind::KnownMember => "member",
        ProfileKind::Anonymous => "anonymous",
        ProfileKind::Provisional => "provisional",
    }
}

fn entry_kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::Earn => "earn",
        EntryKind::Redeem => "redeem",
        EntryKind::Revoke => "revoke",
        EntryKind::Expire => "expire",
        EntryKind::Adjust => "adjust",
    }
}

fn channel(c: Channel) -> i32 {
    c.to_proto() as i32
}

/// The wire form of a joined state.
pub fn to_wire(s: &JoinedState) -> proto::JoinedState {
    proto::JoinedState {
        profile: Some(profile_to_wire(&s.profile)),
        ledger: s.ledger.iter().map(ledger_to_wire).collect(),
        history: s.history.iter().map(|(at, r)| proto::JoinedHistoryEntry { at_ms: *at, record: r.clone() }).collect(),
        verdicts: s.verdicts.iter().map(verdict_to_wire).collect(),
    }
}

fn profile_to_wire(m: &Member) -> proto::JoinedProfile {
    let b = &m.browse;
    let p = &m.purchases;
    let l = &m.loyalty;
    proto::JoinedProfile {
        key: m.key.clone(),
        kind: kind_name(m.kind).into(),
        identifiers: m
            .identifiers
            .iter()
            .map(|i| proto::Identifier { r#type: i.kind.to_proto() as i32, value: i.value.clone() })
            .collect(),
        aliases: m.aliases.iter().cloned().collect(),
        merged_members: m.merged_members.iter().cloned().collect(),
        traits: m
            .traits
            .iter()
            .map(|(k, v)| proto::JoinedTrait {
                name: k.clone(),
                value: v.value.clone(),
                at_ms: v.at,
                event_id: v.event_id.clone(),
            })
            .collect(),
        consents: m
            .consents
            .iter()
            .map(|(k, v)| proto::JoinedConsent {
                purpose: k.clone(),
                granted: v.value.granted,
                channel: channel(v.value.channel),
                at_ms: v.at,
                event_id: v.event_id.clone(),
            })
            .collect(),
        channels: m
            .channels
            .iter()
            .map(|(c, s)| proto::JoinedChannel {
                channel: channel(*c),
                events: s.events,
                orders: s.orders,
                spend_minor: s.spend_minor,
                last_seen_at_ms: s.last_seen_at,
            })
            .collect(),
        browse: Some(proto::JoinedBrowse {
            recent: b
                .recent
                .iter()
                .map(|r| proto::JoinedRecentProduct {
                    sku: r.sku.clone(),
                    category: r.category.clone(),
                    last_viewed_at_ms: r.last_viewed_at,
                    views: r.views,
                })
                .collect(),
            categories: b
                .categories
                .iter()
                .map(|(n, c)| proto::JoinedCategory { name: n.clone(), views: c.views, units: c.units })
                .collect(),
            product_views: b.product_views,
            searches: b.searches,
            recent_searches: b
                .recent_searches
                .iter()
                .map(|s| proto::JoinedSearch { query: s.query.clone(), at_ms: s.at })
                .collect(),
            cart_updates: b.cart_updates,
        }),
        purchases: Some(proto::JoinedPurchases {
            orders: p.orders,
            units: p.units,
            gross_minor: p.gross_minor,
            returned_minor: p.returned_minor,
            returns: p.returns,
            cancelled: p.cancelled,
            first_order_at_ms: p.first_order_at,
            last_order_at_ms: p.last_order_at,
            stores: p.stores.clone(),
            history: p.history.iter().map(order_to_wire).collect(),
            spend: p
                .spend
                .marks()
                .iter()
                .map(|m| proto::JoinedSpendMark {
                    at_ms: m.at,
                    orders: m.orders,
                    net_program_minor: m.net_program_minor,
                })
                .collect(),
            spend_kept: true,
        }),
        points: Some(proto::JoinedPoints {
            lots: l
                .lots
                .iter()
                .map(|lot| proto::JoinedLot {
                    seq: lot.seq,
                    order_id: lot.order_id.clone().unwrap_or_default(),
                    channel: channel(lot.channel),
                    points: lot.points,
                    remaining: lot.remaining,
                    activates_at_ms: lot.activates_at,
                    expires_at_ms: lot.expires_at,
                })
                .collect(),
            negative: l.negative,
            earned: l.earned,
            redeemed: l.redeemed,
            revoked: l.revoked,
            expired: l.expired,
            written_off: l.written_off,
            clock_ms: l.clock,
        }),
        first_seen_at_ms: m.first_seen_at,
        last_seen_at_ms: m.last_seen_at,
        enrolled_at_ms: m.enrolled_at,
        events_applied: m.version.events_applied,
    }
}

fn order_to_wire(o: &OrderRecord) -> proto::JoinedOrder {
    proto::JoinedOrder {
        order_id: o.order_id.clone(),
        at_ms: o.at,
        channel: channel(o.channel),
        store_id: o.store_id.clone().unwrap_or_default(),
        currency: o.currency.clone(),
        total_minor: o.total_minor,
        total_program_minor: o.total_program_minor,
        units: o.units,
        lines: o
            .lines
            .iter()
            .map(|l| proto::JoinedOrderLine {
                sku: l.sku.clone(),
                category: l.category.clone(),
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
            })
            .collect(),
        returned_list_minor: o.returned_list_minor,
        returned_minor: o.returned_minor,
        returned_program_minor: o.returned_program_minor,
        returned_units: o.returned_units.clone(),
        return_ids: o.return_ids.iter().cloned().collect(),
        cancelled: o.cancelled,
        points: o.points,
        points_revoked: o.points_revoked,
    }
}

fn ledger_to_wire(e: &LedgerEntry) -> proto::JoinedLedgerEntry {
    proto::JoinedLedgerEntry {
        seq: e.seq,
        kind: entry_kind_name(e.kind).into(),
        points: e.points,
        at_ms: e.at,
        event_id: e.event_id.clone(),
        order_id: e.order_id.clone().unwrap_or_default(),
        channel: e.channel.map_or(0, channel),
        reason: e.reason.clone(),
        actor: e.actor.clone(),
        request_id: e.request_id.clone().unwrap_or_default(),
        activates_at_ms: e.activates_at,
        expires_at_ms: e.expires_at,
    }
}

fn verdict_to_wire(v: &Verdict) -> proto::JoinedVerdict {
    proto::JoinedVerdict {
        request_id: v.request_id.clone(),
        kind: match v.kind {
            CommandKind::Redeem => "redeem",
            CommandKind::Adjust => "adjust",
            CommandKind::Erase => "erase",
        }
        .into(),
        accepted: v.status == VerdictStatus::Accepted,
        points: v.points,
        reason: v.reason.clone(),
        event_id: v.event_id.clone(),
        at_ms: v.at,
        seq: v.seq,
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> Error {
    Error::invalid(field, reason)
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn wire_channel(field: &'static str, v: i32) -> Result<Channel, Error> {
    Channel::from_proto(v).ok_or_else(|| bad(field, format!("unknown channel {v}")))
}

fn non_negative(field: &'static str, v: i64) -> Result<i64, Error> {
    if v < 0 {
        return Err(bad(field, format!("must not be negative, got {v}")));
    }
    Ok(v)
}

/// A joined state from the wire, checked: known kinds and channels, valid
/// identifiers, no negative money or points, no lot holding more than it earned.
pub fn from_wire(w: proto::JoinedState) -> Result<JoinedState, Error> {
    let profile = profile_from_wire(w.profile.ok_or(Error::Missing("joinedState.profile"))?)?;
    let ledger = w.ledger.into_iter().map(ledger_from_wire).collect::<Result<_, _>>()?;
    let history = w.history.into_iter().map(|h| (h.at_ms, h.record)).collect();
    let verdicts = w.verdicts.into_iter().map(verdict_from_wire).collect::<Result<_, _>>()?;
    Ok(JoinedState { profile, ledger, history, verdicts })
}

fn profile_from_wire(w: proto::JoinedProfile) -> Result<Member, Error> {
    let kind = match w.kind.as_str() {
        "member" => ProfileKind::KnownMember,
        "anonymous" => ProfileKind::Anonymous,
        "provisional" => ProfileKind::Provisional,
        other => return Err(bad("joinedProfile.kind", format!("unknown kind `{other}`"))),
    };
    if w.key.is_empty() {
        return Err(Error::Missing("joinedProfile.key"));
    }
    let mut m = Member::new(w.key, kind);
    m.identifiers = w.identifiers.iter().map(Identifier::try_from).collect::<Result<BTreeSet<_>, _>>()?;
    m.aliases = w.aliases.into_iter().collect();
    m.merged_members = w.merged_members.into_iter().collect();
    for t in w.traits {
        m.traits.insert(t.name, Stamped { value: t.value, at: t.at_ms, event_id: t.event_id });
    }
    for c in w.consents {
        let value = Consent { granted: c.granted, channel: wire_channel("joinedConsent.channel", c.channel)? };
        m.consents.insert(c.purpose, Stamped { value, at: c.at_ms, event_id: c.event_id });
    }
    for c in w.channels {
        let stats = ChannelStats {
            events: c.events,
            orders: c.orders,
            spend_minor: c.spend_minor,
            last_seen_at: c.last_seen_at_ms,
        };
        m.channels.insert(wire_channel("joinedChannel.channel", c.channel)?, stats);
    }
    m.browse = browse_from_wire(w.browse.unwrap_or_default());
    m.purchases = purchases_from_wire(w.purchases.unwrap_or_default())?;
    let points = w.points.unwrap_or_default();
    let l = &mut m.loyalty;
    for lot in points.lots {
        let (points, remaining) = (non_negative("joinedLot.points", lot.points)?, lot.remaining);
        if !(0..=points).contains(&remaining) {
            return Err(bad("joinedLot.remaining", format!("{remaining} is not between 0 and the lot's {points}")));
        }
        l.insert_lot(Lot {
            seq: lot.seq,
            order_id: opt(lot.order_id),
            channel: wire_channel("joinedLot.channel", lot.channel)?,
            points,
            remaining,
            activates_at: lot.activates_at_ms,
            expires_at: lot.expires_at_ms,
        });
    }
    l.negative = non_negative("joinedPoints.negative", points.negative)?;
    l.earned = non_negative("joinedPoints.earned", points.earned)?;
    l.redeemed = non_negative("joinedPoints.redeemed", points.redeemed)?;
    l.revoked = non_negative("joinedPoints.revoked", points.revoked)?;
    l.expired = non_negative("joinedPoints.expired", points.expired)?;
    l.written_off = non_negative("joinedPoints.writtenOff", points.written_off)?;
    l.clock = points.clock_ms;
    let open: i64 = l.lots.iter().fold(0i64, |s, lot| s.saturating_add(lot.remaining));
    if open > l.earned {
        return Err(bad(
            "joinedPoints.lots",
            format!("the lots hold {open} points, more than the {} earned", l.earned),
        ));
    }
    m.first_seen_at = w.first_seen_at_ms;
    m.last_seen_at = w.last_seen_at_ms;
    m.enrolled_at = w.enrolled_at_ms;
    m.version.events_applied = w.events_applied;
    Ok(m)
}

fn browse_from_wire(b: proto::JoinedBrowse) -> Browse {
    Browse {
        recent: b
            .recent
            .into_iter()
            .map(|r| RecentProduct {
                sku: r.sku,
                category: r.category,
                last_viewed_at: r.last_viewed_at_ms,
                views: r.views,
            })
            .collect(),
        categories: b
            .categories
            .into_iter()
            .map(|c| (c.name, CategoryStats { views: c.views, units: c.units }))
            .collect(),
        product_views: b.product_views,
        searches: b.searches,
        recent_searches: b.recent_searches.into_iter().map(|s| RecentSearch { query: s.query, at: s.at_ms }).collect(),
        cart_updates: b.cart_updates,
    }
}

fn purchases_from_wire(p: proto::JoinedPurchases) -> Result<Purchases, Error> {
    let history = p.history.into_iter().map(order_from_wire).collect::<Result<Vec<_>, _>>()?;
    let marks = p
        .spend
        .into_iter()
        .map(|m| SpendMark { at: m.at_ms, orders: m.orders, net_program_minor: m.net_program_minor })
        .collect();
    let spend = Spend::from_marks(marks).map_err(|e| bad("joinedPurchases.spend", e))?;
    let mut purchases = Purchases {
        orders: p.orders,
        units: p.units,
        gross_minor: non_negative("joinedPurchases.grossMinor", p.gross_minor)?,
        returned_minor: non_negative("joinedPurchases.returnedMinor", p.returned_minor)?,
        returns: p.returns,
        cancelled: p.cancelled,
        first_order_at: p.first_order_at_ms,
        last_order_at: p.last_order_at_ms,
        stores: p.stores,
        history: history.into(),
        spend,
    };
    if !p.spend_kept {
        purchases.rebuild_spend();
    }
    Ok(purchases)
}

fn order_from_wire(o: proto::JoinedOrder) -> Result<OrderRecord, Error> {
    let total = non_negative("joinedOrder.totalMinor", o.total_minor)?;
    let returned = non_negative("joinedOrder.returnedMinor", o.returned_minor)?;
    if returned > total {
        return Err(bad("joinedOrder.returnedMinor", format!("{returned} is more than the order's {total}")));
    }
    let points = non_negative("joinedOrder.points", o.points)?;
    if !(0..=points).contains(&o.points_revoked) {
        return Err(bad("joinedOrder.pointsRevoked", format!("{} is not between 0 and {points}", o.points_revoked)));
    }
    Ok(OrderRecord {
        order_id: o.order_id,
        at: o.at_ms,
        channel: wire_channel("joinedOrder.channel", o.channel)?,
        store_id: opt(o.store_id),
        currency: o.currency,
        total_minor: total,
        total_program_minor: non_negative("joinedOrder.totalProgramMinor", o.total_program_minor)?,
        units: o.units,
        lines: o
            .lines
            .into_iter()
            .map(|l| {
                Ok(OrderLine {
                    sku: l.sku,
                    category: l.category,
                    quantity: l.quantity,
                    unit_price_minor: non_negative("joinedOrderLine.unitPriceMinor", l.unit_price_minor)?,
                })
            })
            .collect::<Result<_, Error>>()?,
        returned_list_minor: non_negative("joinedOrder.returnedListMinor", o.returned_list_minor)?,
        returned_minor: returned,
        returned_program_minor: non_negative("joinedOrder.returnedProgramMinor", o.returned_program_minor)?,
        returned_units: o.returned_units.into_iter().collect::<BTreeMap<_, _>>(),
        return_ids: o.return_ids.into_iter().collect(),
        cancelled: o.cancelled,
        points,
        points_revoked: o.points_revoked,
    })
}

fn ledger_from_wire(e: proto::JoinedLedgerEntry) -> Result<LedgerEntry, Error> {
    let kind = match e.kind.as_str() {
        "earn" => EntryKind::Earn,
        "redeem" => EntryKind::Redeem,
        "revoke" => EntryKind::Revoke,
        "expire" => EntryKind::Expire,
        "adjust" => EntryKind::Adjust,
        other => return Err(bad("joinedLedgerEntry.kind", format!("unknown kind `{other}`"))),
    };
    Ok(LedgerEntry {
        seq: e.seq,
        kind,
        points: e.points,
        at: e.at_ms,
        event_id: e.event_id,
        order_id: opt(e.order_id),
        channel: if e.channel == 0 { None } else { Some(wire_channel("joinedLedgerEntry.channel", e.channel)?) },
        reason: e.reason,
        actor: e.actor,
        request_id: opt(e.request_id),
        activates_at: e.activates_at_ms,
        expires_at: e.expires_at_ms,
    })
}

fn verdict_from_wire(v: proto::JoinedVerdict) -> Result<Verdict, Error> {
    let kind = match v.kind.as_str() {
        "redeem" => CommandKind::Redeem,
        "adjust" => CommandKind::Adjust,
        "erase" => CommandKind::Erase,
        other => return Err(bad("joinedVerdict.kind", format!("unknown kind `{other}`"))),
    };
    if v.request_id.is_empty() {
        return Err(Error::Missing("joinedVerdict.requestId"));
    }
    Ok(Verdict {
        request_id: v.request_id,
        kind,
        status: if v.accepted { VerdictStatus::Accepted } else { VerdictStatus::Rejected },
        points: v.points,
        reason: v.reason,
        event_id: v.event_id,
        at: v.at_ms,
        seq: v.seq,
    })
}
