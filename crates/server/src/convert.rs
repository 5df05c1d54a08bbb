//! Domain aggregates to wire messages.

use omnifold_core::loyalty::{self, EntryKind, LoyaltyConfig};
use omnifold_core::member::ProfileKind;
use omnifold_core::time::to_timestamp;
use omnifold_core::{FoldConfig, LedgerEntry, Member, Millis, Tier};
use omnifold_proto::v1 as proto;

use crate::request::ReadMask;

pub fn version(m: &Member) -> proto::ProfileVersion {
    proto::ProfileVersion {
        partition: m.version.partition,
        next_offset: m.version.next_offset,
        events_applied: m.version.events_applied,
    }
}

/// The profile as of `now` (time windows), restricted to `mask`.
pub fn profile(m: &Member, now: Millis, mask: &ReadMask, fold: &FoldConfig) -> proto::Profile {
    let mut p = proto::Profile::default();
    let want = |f: &str| mask.includes(f);
    if want("member_id") {
        p.member_id = m.key.clone();
    }
    if want("kind") {
        p.kind = kind(m.kind) as i32;
    }
    if want("identifiers") {
        p.identifiers = m
            .identifiers
            .iter()
            .map(|i| proto::Identifier { r#type: i.kind.to_proto() as i32, value: i.value.clone() })
            .collect();
    }
    if want("aliases") {
        p.aliases = m.aliases.iter().cloned().collect();
    }
    if want("traits") {
        p.traits = m.live_traits().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    }
    if want("consents") {
        p.consents = m
            .consents
            .iter()
            .map(|(purpose, c)| proto::Consent {
                purpose: purpose.clone(),
                granted: c.value.granted,
                changed_at: Some(to_timestamp(c.at)),
                channel: c.value.channel.to_proto() as i32,
            })
            .collect();
    }
    if want("channels") {
        p.channels = m
            .channels
            .iter()
            .map(|(c, s)| proto::ChannelStats {
                channel: c.to_proto() as i32,
                events: s.events,
                orders: s.orders,
                spend_minor: s.spend_minor,
                last_seen_at: Some(to_timestamp(s.last_seen_at)),
            })
            .collect();
    }
    if want("browse") {
        p.browse = Some(browse(m));
    }
    if want("purchases") {
        p.purchases = Some(purchases(m, now, &fold.program_currency));
    }
    if want("loyalty") {
        let b = m.balance(now, &fold.loyalty);
        p.loyalty = Some(proto::LoyaltySummary {
            tier: tier(b.tier) as i32,
            active_points: b.active,
            pending_points: b.pending,
            negative_balance: b.negative,
            tier_since: b.tier_since.map(to_timestamp),
        });
    }
    if want("version") {
        p.version = Some(version(m));
    }
    if want("first_seen_at") {
        p.first_seen_at = m.first_seen_at.map(to_timestamp);
    }
    if want("last_seen_at") {
        p.last_seen_at = m.last_seen_at.map(to_timestamp);
    }
    if want("as_of") {
        p.as_of = Some(to_timestamp(now));
    }
    if want("enrolled_at") {
        p.enrolled_at = m.enrolled_at.map(to_timestamp);
    }
    if want("merged_member_ids") {
        p.merged_member_ids = m.merged_members.iter().cloned().collect();
    }
    p
}

fn browse(m: &Member) -> proto::BrowseSummary {
    let b = &m.browse;
    let total: u64 = b.categories.values().map(|c| c.weight()).sum();
    let mut cats: Vec<_> = b.categories.iter().collect();
    cats.sort_by(|a, b| b.1.weight().cmp(&a.1.weight()).then_with(|| a.0.cmp(b.0)));
    proto::BrowseSummary {
        recent_products: b
            .recent
            .iter()
            .map(|r| proto::RecentProduct {
                sku: r.sku.clone(),
                category: r.category.clone(),
                last_viewed_at: Some(to_timestamp(r.last_viewed_at)),
                views: r.views,
            })
            .collect(),
        category_affinity: cats
            .into_iter()
            .map(|(name, c)| proto::CategoryAffinity {
                category: name.clone(),
                score: if total == 0 { 0.0 } else { c.weight() as f64 / total as f64 },
                views: c.views,
                units_purchased: c.units,
            })
            .collect(),
        product_views: b.product_views,
        searches: b.searches,
        recent_searches: b.recent_searches.iter().map(|s| s.query.clone()).collect(),
        cart_updates: b.cart_updates,
    }
}

fn purchases(m: &Member, now: Millis, currency: &str) -> proto::PurchaseSummary {
    let p = &m.purchases;
    let w = m.windows(now);
    proto::PurchaseSummary {
        currency: currency.to_owned(),
        orders: p.orders,
        units: p.units,
        gross_minor: p.gross_minor,
        returned_minor: p.returned_minor,
        net_minor: p.net_minor(),
        average_order_value_minor: w.average_order_value_minor,
        first_order_at: p.first_order_at.map(to_timestamp),
        last_order_at: p.last_order_at.map(to_timestamp),
        favourite_store_id: p.favourite_store().unwrap_or_default().to_owned(),
        orders_last_90_days: w.orders_last_90_days,
        orders_last_365_days: w.orders_last_365_days,
        net_last_365_days_minor: w.net_last_365_days_minor,
        rfm: Some(proto::Rfm {
            recency_days: w.rfm.recency_days,
            frequency: w.rfm.frequency,
            monetary_minor: w.rfm.monetary_minor,
            r_score: w.rfm.r,
            f_score: w.rfm.f,
            m_score: w.rfm.m,
            segment: w.rfm.segment.to_owned(),
        }),
        returns: p.returns,
        cancelled_orders: p.cancelled,
    }
}

pub fn tier(t: Tier) -> proto::Tier {
    match t {
        Tier::Member => proto::Tier::Member,
        Tier::Silver => proto::Tier::Silver,
        Tier::Gold => proto::Tier::Gold,
        Tier::Platinum => proto::Tier::Platinum,
    }
}

pub fn entry_kind(k: EntryKind) -> proto::LedgerEntryKind {
    match k {
        EntryKind::Earn => proto::LedgerEntryKind::Earn,
        EntryKind::Redeem => proto::LedgerEntryKind::Redeem,
        EntryKind::Revoke => proto::LedgerEntryKind::Revoke,
        EntryKind::Expire => proto::LedgerEntryKind::Expire,
        EntryKind::Adjust => proto::LedgerEntryKind::Adjust,
    }
}

fn pending(b: &loyalty::Balance) -> Vec<proto::PendingPoints> {
    b.pending_lots
        .iter()
        .map(|p| proto::PendingPoints {
            points: p.points,
            activates_at: Some(to_timestamp(p.activates_at)),
            order_id: p.order_id.clone().unwrap_or_default(),
        })
        .collect()
}

fn expiring(b: &loyalty::Balance) -> Vec<proto::ExpiringPoints> {
    b.expiring_lots
        .iter()
        .map(|e| proto::ExpiringPoints { points: e.points, expires_at: Some(to_timestamp(e.expires_at)) })
        .collect()
}

/// The member's points as of `now`.
pub fn balance(m: &Member, now: Millis, cfg: &LoyaltyConfig) -> proto::Balance {
    let b = m.balance(now, cfg);
    proto::Balance {
        member_id: m.key.clone(),
        active_points: b.active,
        pending_points: b.pending,
        pending: pending(&b),
        expiring_soon_points: b.expiring_soon,
        expiring: expiring(&b),
        negative_balance: b.negative,
        lifetime_earned: b.earned,
        lifetime_redeemed: b.redeemed,
        lifetime_expired: b.expired,
        lifetime_revoked: b.revoked,
        lifetime_written_off: b.written_off,
        tier: tier(b.tier) as i32,
        tier_since: b.tier_since.map(to_timestamp),
        version: Some(version(m)),
        as_of: Some(to_timestamp(now)),
    }
}

/// Tier, benefits and progress as of `now`.
pub fn benefits(m: &Member, now: Millis, cfg: &LoyaltyConfig) -> proto::Benefits {
    let b = m.balance(now, cfg);
    let s = m.standing(now, cfg);
    proto::Benefits {
        member_id: m.key.clone(),
        tier: tier(s.tier) as i32,
        benefits: cfg
            .benefits(s.tier)
            .iter()
            .map(|b| proto::Benefit { code: b.code.clone(), description: b.description.clone() })
            .collect(),
        next_tier: s.next_tier.map_or(proto::Tier::Unspecified, tier) as i32,
        qualifying_spend_minor: s.qualifying_spend_minor,
        next_tier_threshold_minor: s.next_tier_threshold_minor.unwrap_or(0),
        pending: pending(&b),
        expiring: expiring(&b),
        tier_since: s.tier_since.map(to_timestamp),
        next_review_at: s.next_review.map(to_timestamp),
        active_points: b.active,
        pending_points: b.pending,
        expiring_soon_points: b.expiring_soon,
        as_of: Some(to_timestamp(now)),
    }
}

pub fn ledger_entry(e: &LedgerEntry) -> proto::LedgerEntry {
    proto::LedgerEntry {
        kind: entry_kind(e.kind) as i32,
        points: e.points,
        occurred_at: Some(to_timestamp(e.at)),
        event_id: e.event_id.clone(),
        order_id: e.order_id.clone().unwrap_or_default(),
        channel: e.channel.map_or(proto::Channel::Unspecified, |c| c.to_proto()) as i32,
        reason: e.reason.clone(),
        actor: e.actor.clone(),
        request_id: e.request_id.clone().unwrap_or_default(),
        activates_at: e.activates_at.map(to_timestamp),
        expires_at: e.expires_at.map(to_timestamp),
        seq: e.seq,
    }
}

pub fn kind(k: ProfileKind) -> proto::ProfileKind {
    match k {
        ProfileKind::KnownMember => proto::ProfileKind::KnownMember,
        ProfileKind::Anonymous => proto::ProfileKind::Anonymous,
        ProfileKind::Provisional => proto::ProfileKind::Provisional,
    }
}

pub fn liability(
    r: &omnifold_core::loyalty::report::Liability,
    partitions: Vec<u32>,
) -> proto::GetPointsLiabilityResponse {
    proto::GetPointsLiabilityResponse {
        as_of: Some(to_timestamp(r.as_of)),
        rows: r
            .rows
            .iter()
            .map(|((t, c), row)| proto::LiabilityRow {
                tier: tier(*t) as i32,
                channel: c.to_proto() as i32,
                active_points: row.active,
                pending_points: row.pending,
                members: row.members,
            })
            .collect(),
        total_active_points: r.total_active(),
        total_pending_points: r.total_pending(),
        total_negative_balance: r.negative,
        partitions,
    }
}

/// An audience entry or exit as the change stream sends it.
pub(crate) fn transition(t: &omnifold_core::audience::Transition) -> proto::AudienceTransition {
    proto::AudienceTransition {
        audience: t.audience.clone(),
        entered: t.entered,
        seq: t.seq,
        at: Some(omnifold_core::time::to_timestamp(t.at)),
    }
}
