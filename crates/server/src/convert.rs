//! Domain aggregates to wire messages.

use omnifold_core::member::ProfileKind;
use omnifold_core::time::to_timestamp;
use omnifold_core::{Member, Millis};
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
pub fn profile(m: &Member, now: Millis, mask: &ReadMask, currency: &str) -> proto::Profile {
    let mut p = proto::Profile::default();
    let want = |f: &str| mask.includes(f);
    if want("member_id") {
        p.member_id = m.key.clone();
    }
    if want("kind") {
        p.kind = match m.kind {
            ProfileKind::KnownMember => proto::ProfileKind::KnownMember,
            ProfileKind::Anonymous => proto::ProfileKind::Anonymous,
            ProfileKind::Provisional => proto::ProfileKind::Provisional,
        } as i32;
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
        p.purchases = Some(purchases(m, now, currency));
    }
    if want("loyalty") {
        p.loyalty = Some(proto::LoyaltySummary {
            tier: proto::Tier::Member as i32,
            active_points: m.loyalty.active_points,
            pending_points: m.loyalty.pending_points,
            negative_balance: m.loyalty.negative_balance,
            tier_since: m.loyalty.tier_since.map(to_timestamp),
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
