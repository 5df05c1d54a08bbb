//! The fold's rules with exact numbers: orders, returns with discounts,
//! cancellations, currency conversion, windows, last-write-wins traits and
//! bounded browse history.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use omnifold_core::fold::{Position, apply, kind_of};
use omnifold_core::testing::{fold_config as cfg, member_event as ev};
use omnifold_core::time::DAY;
use omnifold_core::{Event, FoldConfig, Member};
use omnifold_proto::v1 as proto;
use proto::event::Payload;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn line(sku: &str, category: &str, quantity: i32, unit: i64) -> proto::OrderLine {
    proto::OrderLine { sku: sku.into(), category: category.into(), quantity, unit_price_minor: unit }
}

fn order(id: &str, currency: &str, lines: Vec<proto::OrderLine>, total: i64) -> Payload {
    Payload::OrderPlaced(proto::OrderPlaced {
        order_id: id.into(),
        currency: currency.into(),
        lines,
        total_minor: total,
    })
}

fn ret_lines(order: &str, ret: &str, sku: &str, q: i32) -> Payload {
    Payload::OrderReturned(proto::OrderReturned {
        order_id: order.into(),
        return_id: ret.into(),
        lines: vec![proto::ReturnLine { sku: sku.into(), quantity: q }],
        amount_minor: 0,
    })
}

fn fold(events: &[Event]) -> (Member, Vec<String>) {
    let cfg = cfg();
    let mut m = Member::new("m-1", kind_of(&events[0]));
    let mut rejected = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let before = m.clone();
        if let Err(r) = apply(&mut m, e, Position { partition: 0, offset: i as i64 }, &cfg) {
            assert_eq!(m, before, "a rejected event changes nothing");
            rejected.push(r.0);
        }
    }
    (m, rejected)
}

#[test]
fn returns_refund_the_paid_share_cumulatively() {
    // List 2×100.00 + 1×50.00 = 250.00, paid 225.00 after a 10% discount.
    let events = [
        ev(
            "e1",
            T0,
            proto::Channel::MobileApp,
            order("o1", "CNY", vec![line("A", "shoes", 2, 10_000), line("B", "bags", 1, 5_000)], 22_500),
        ),
        ev("e2", T0 + DAY, proto::Channel::MobileApp, ret_lines("o1", "r1", "A", 1)),
        ev("e3", T0 + 2 * DAY, proto::Channel::StorePos, ret_lines("o1", "r2", "A", 1)),
        ev("e4", T0 + 3 * DAY, proto::Channel::MobileApp, ret_lines("o1", "r3", "A", 1)),
        ev("e5", T0 + 3 * DAY, proto::Channel::MobileApp, ret_lines("o1", "r2", "A", 1)),
    ];
    let (m, rejected) = fold(&events);
    let p = &m.purchases;
    // floor(225 × 100/250) = 90.00, then floor(225 × 200/250) = 180.00.
    assert_eq!((p.gross_minor, p.returned_minor, p.net_minor()), (22_500, 18_000, 4_500));
    assert_eq!(p.returns, 2, "r2 reported twice counts once");
    assert_eq!(rejected, vec!["return of 1 × A exceeds the 2 ordered (2 already returned)"]);
    // Refunds come off the channel the order was placed on.
    let app = &m.channels[&omnifold_core::Channel::MobileApp];
    assert_eq!((app.orders, app.spend_minor), (1, 4_500));
}

#[test]
fn rounding_never_drifts_over_many_partial_returns() {
    // 3 units at 33.33 paid 99.99 with no discount, then 3 returns of 1.
    let mut events =
        vec![ev("e0", T0, proto::Channel::OnlineWeb, order("o1", "CNY", vec![line("X", "", 3, 3_333)], 0))];
    for i in 1..=3 {
        events.push(ev(&format!("e{i}"), T0 + i, proto::Channel::OnlineWeb, ret_lines("o1", &format!("r{i}"), "X", 1)));
    }
    let (m, _) = fold(&events);
    assert_eq!(m.purchases.gross_minor, 9_999);
    assert_eq!(m.purchases.returned_minor, 9_999, "all returned means all refunded");
}

#[test]
fn amount_returns_cancellations_and_unknown_orders() {
    let events = [
        ev("e1", T0, proto::Channel::StorePos, order("o1", "CNY", vec![line("A", "shoes", 1, 10_000)], 0)),
        ev("e2", T0 + 1, proto::Channel::OnlineWeb, order("o2", "CNY", vec![line("B", "home", 2, 2_000)], 0)),
        ev(
            "e3",
            T0 + 2,
            proto::Channel::StorePos,
            Payload::OrderReturned(proto::OrderReturned {
                order_id: "o1".into(),
                return_id: "r1".into(),
                lines: vec![],
                amount_minor: 2_500,
            }),
        ),
        ev(
            "e4",
            T0 + 3,
            proto::Channel::StorePos,
            Payload::OrderReturned(proto::OrderReturned {
                order_id: "o1".into(),
                return_id: "r2".into(),
                lines: vec![],
                amount_minor: 8_000,
            }),
        ),
        ev(
            "e5",
            T0 + 4,
            proto::Channel::OnlineWeb,
            Payload::OrderCancelled(proto::OrderCancelled { order_id: "o2".into(), reason: String::new() }),
        ),
        ev("e6", T0 + 5, proto::Channel::OnlineWeb, ret_lines("o9", "r9", "A", 1)),
        ev("e7", T0 + 6, proto::Channel::OnlineWeb, order("o1", "CNY", vec![line("A", "shoes", 1, 1)], 0)),
    ];
    let (m, rejected) = fold(&events);
    let p = &m.purchases;
    assert_eq!((p.orders, p.units, p.cancelled), (1, 1, 1));
    assert_eq!((p.gross_minor, p.returned_minor, p.net_minor()), (10_000, 2_500, 7_500));
    assert_eq!(p.favourite_store(), Some("store-1"));
    assert_eq!(
        rejected,
        vec![
            "return of 8000 exceeds what is left of order o1 (7500 of 10000)".to_owned(),
            "order o9 is not known for this subject".to_owned(),
            "order o1 was already placed by another event".to_owned(),
        ]
    );
    let web = &m.channels[&omnifold_core::Channel::OnlineWeb];
    assert_eq!((web.orders, web.spend_minor, web.events), (0, 0, 2), "rejected events do not count");
}

#[test]
fn foreign_currency_converts_at_the_configured_rate() {
    let (m, rejected) = fold(&[
        ev("e1", T0, proto::Channel::Marketplace, order("o1", "USD", vec![line("A", "", 1, 1_999)], 0)),
        ev("e2", T0 + 1, proto::Channel::Marketplace, order("o2", "JPY", vec![line("A", "", 1, 100)], 0)),
        ev("e3", T0 + 2, proto::Channel::Marketplace, ret_lines("o1", "r1", "A", 1)),
    ]);
    // 19.99 USD × 7.1 = 141.929 CNY → 14192 fen, rounded down.
    assert_eq!(m.purchases.gross_minor, 14_192);
    assert_eq!(m.purchases.returned_minor, 14_192);
    assert_eq!(rejected, vec!["no conversion rate configured for currency JPY"]);
}

#[test]
fn windows_and_rfm_use_the_instant_asked_for() {
    let now = T0 + 500 * DAY;
    let (m, _) = fold(&[
        ev("e1", now - 400 * DAY, proto::Channel::OnlineWeb, order("o1", "CNY", vec![line("A", "", 1, 900_000)], 0)),
        ev("e2", now - 100 * DAY, proto::Channel::OnlineWeb, order("o2", "CNY", vec![line("A", "", 1, 300_000)], 0)),
        ev("e3", now - 10 * DAY, proto::Channel::MobileApp, order("o3", "CNY", vec![line("A", "", 1, 100_000)], 0)),
    ]);
    let w = m.windows(now);
    assert_eq!((w.orders_last_90_days, w.orders_last_365_days), (1, 2));
    assert_eq!(w.net_last_365_days_minor, 400_000);
    assert_eq!(w.average_order_value_minor, 1_300_000 / 3);
    assert_eq!(w.rfm.recency_days, Some(10));
    // R: 10 days → 5; F: 2 orders → 2; M: 4,000 CNY → 3.
    assert_eq!((w.rfm.r, w.rfm.f, w.rfm.m, w.rfm.segment), (5, 2, 3, "promising"));
    // Seen from before the last order, it does not count yet.
    let earlier = m.windows(now - 50 * DAY);
    assert_eq!((earlier.orders_last_90_days, earlier.orders_last_365_days), (1, 2));
    assert_eq!(earlier.rfm.recency_days, Some(50));
    let before_all = m.windows(now - 450 * DAY);
    assert_eq!((before_all.orders_last_365_days, before_all.rfm.segment), (0, "none"));
}

#[test]
fn traits_and_consents_take_the_latest_event_time() {
    let upd = |k: &str, v: &str| {
        Payload::ProfileUpdated(proto::ProfileUpdated { traits: [(k.to_owned(), v.to_owned())].into() })
    };
    let (m, _) = fold(&[
        ev("e1", T0 + 10, proto::Channel::MobileApp, upd("city", "Shanghai")),
        ev("e2", T0 + 5, proto::Channel::OnlineWeb, upd("city", "Beijing")),
        ev("e3", T0 + 20, proto::Channel::OnlineWeb, upd("size", "M")),
        ev("e4", T0 + 30, proto::Channel::OnlineWeb, upd("size", "")),
        ev(
            "e5",
            T0 + 9,
            proto::Channel::OnlineWeb,
            Payload::ConsentChanged(proto::ConsentChanged { purpose: "sms".into(), granted: true }),
        ),
        ev(
            "e6",
            T0 + 8,
            proto::Channel::OnlineWeb,
            Payload::ConsentChanged(proto::ConsentChanged { purpose: "sms".into(), granted: false }),
        ),
    ]);
    assert_eq!(m.live_traits().collect::<Vec<_>>(), vec![("city", "Shanghai")]);
    assert!(m.consents["sms"].value.granted);
    assert_eq!((m.first_seen_at, m.last_seen_at), (Some(T0 + 5), Some(T0 + 30)));
}

#[test]
fn recent_products_are_distinct_newest_first_and_bounded() {
    let view = |sku: &str| {
        Payload::ProductViewed(proto::ProductViewed {
            sku: sku.into(),
            category: "c".into(),
            price_minor: 1,
            currency: String::new(),
        })
    };
    let mut events: Vec<Event> = (0..25)
        .map(|i| ev(&format!("v{i}"), T0 + i * 1_000, proto::Channel::OnlineWeb, view(&format!("S{i}"))))
        .collect();
    events.push(ev("again", T0 + 100_000, proto::Channel::OnlineWeb, view("S10")));
    let (m, _) = fold(&events);
    let recent: Vec<&str> = m.browse.recent.iter().map(|r| r.sku.as_str()).collect();
    assert_eq!(recent.len(), 20);
    assert_eq!(&recent[..3], ["S10", "S24", "S23"]);
    assert_eq!(m.browse.recent[0].views, 2);
    assert_eq!(m.browse.product_views, 26);
    assert_eq!(m.browse.categories["c"].views, 26);
}

#[test]
fn encoding_round_trips() {
    let (m, _) =
        fold(&[ev("e1", T0, proto::Channel::StorePos, order("o1", "CNY", vec![line("A", "shoes", 2, 10_000)], 0))]);
    let bytes = m.encode();
    assert_eq!(Member::decode(&bytes).unwrap(), m);
    assert!(Member::decode(&[9, 1, 2]).is_err());
}

/// The member cache is bounded by this estimate: it must grow with what a
/// member holds, and never be below the member's own compact encoding.
#[test]
fn the_heap_estimate_grows_with_the_member_and_is_never_below_its_encoding() {
    let view = |i: i64| {
        let sku = format!("SKU-{i}");
        let payload = Payload::ProductViewed(proto::ProductViewed {
            sku,
            category: format!("c{}", i % 7),
            price_minor: 1,
            currency: String::new(),
        });
        ev(&format!("v{i}"), T0 + i * 1_000, proto::Channel::OnlineWeb, payload)
    };
    let buy = |i: i64| {
        let lines = vec![line(&format!("SKU-{i}"), "shoes", 1, 10_000), line("SOCK", "socks", 2, 500)];
        ev(&format!("o{i}"), T0 + i * 86_400_000, proto::Channel::StorePos, order(&format!("o-{i}"), "CNY", lines, 0))
    };
    let (one_view, _) = fold(&[view(0)]);
    let (views, _) = fold(&(0..40).map(view).collect::<Vec<_>>());
    let (orders, _) = fold(&(0..300).map(buy).collect::<Vec<_>>());
    let sizes: Vec<usize> = [&one_view, &views, &orders].iter().map(|m| m.approx_heap_bytes()).collect();
    assert!(sizes[0] < sizes[1] && sizes[1] < sizes[2], "{sizes:?}");
    assert!(sizes[2] > 300 * std::mem::size_of::<omnifold_core::member::OrderRecord>(), "{sizes:?}");
    for m in [&one_view, &views, &orders] {
        assert!(m.approx_heap_bytes() >= m.encode().len(), "{} < {}", m.approx_heap_bytes(), m.encode().len());
    }
}

/// Tiers and the yearly windows count every order in their window, also
/// when only the latest order is kept for returns (`max_orders_kept`): they
/// read the dated spend, not the kept orders.
#[test]
fn tiers_and_windows_count_orders_the_history_no_longer_keeps() {
    let mut cfg = FoldConfig::default();
    cfg.max_orders_kept = 1;
    let cfg = cfg.validate().unwrap();
    let mut m = Member::new("m-1", omnifold_core::ProfileKind::KnownMember);
    // Four orders of 600.00, ten days apart: 2,400.00 reaches SILVER (2,000.00).
    for i in 0..4 {
        let e = ev(
            &format!("e{i}"),
            T0 + i * 10 * DAY,
            proto::Channel::StorePos,
            order(&format!("o{i}"), "CNY", vec![], 60_000),
        );
        apply(&mut m, &e, Position { partition: 0, offset: i }, &cfg).unwrap();
    }
    assert_eq!(m.purchases.history.len(), 1);
    let now = T0 + 31 * DAY;
    assert_eq!(m.balance(now, &cfg.loyalty).tier, omnifold_core::Tier::Silver);
    let w = m.windows(now);
    assert_eq!((w.orders_last_365_days, w.net_last_365_days_minor), (4, 240_000));
    // The window's edge falls mid-day, between two orders' instants.
    let w = m.windows(T0 + 90 * DAY + 10 * DAY - 1);
    assert_eq!(w.orders_last_90_days, 3, "the order at T0 + 10 days is 1 ms inside the 90 days");
    let w = m.windows(T0 + 90 * DAY + 10 * DAY);
    assert_eq!(w.orders_last_90_days, 2);
}

/// A member record written before dated spend was kept (full format 2,
/// split format 3) decodes with its spend rebuilt from its kept orders, so
/// its tier and windows read the same; trailing bytes are refused.
#[test]
fn records_from_before_dated_spend_decode_with_it_rebuilt() {
    let lines = || vec![line("A", "shoes", 2, 10_000)];
    let (m, rejected) = fold(&[
        ev("e1", T0, proto::Channel::StorePos, order("o1", "CNY", lines(), 0)),
        ev("e2", T0 + DAY, proto::Channel::StorePos, order("o2", "CNY", lines(), 0)),
        ev("e3", T0 + DAY, proto::Channel::StorePos, order("o3", "CNY", lines(), 0)),
        ev("e4", T0 + 2 * DAY, proto::Channel::StorePos, ret_lines("o2", "r1", "A", 1)),
        ev(
            "e5",
            T0 + 2 * DAY,
            proto::Channel::StorePos,
            Payload::OrderCancelled(proto::OrderCancelled { order_id: "o3".into(), reason: String::new() }),
        ),
    ]);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(m.purchases.spend.window(T0 - 1, T0 + DAY).net_program_minor, 30_000);

    let full_v2 = [vec![2u8], postcard::to_allocvec(&m).unwrap()].concat();
    assert_eq!(Member::decode(&full_v2).unwrap(), m);

    let mut hot = m.clone();
    let orders: Vec<_> = m.purchases.history.iter().cloned().collect();
    let lots: Vec<_> = m.loyalty.lots.iter().cloned().collect();
    (hot.purchases.history, hot.loyalty.lots) = Default::default();
    let counts = [(orders.len() as u32).to_be_bytes(), (lots.len() as u32).to_be_bytes()].concat();
    let hot_v3 = [vec![3u8], counts, postcard::to_allocvec(&hot).unwrap()].concat();
    let (mut got, counts) = Member::decode_stored(&hot_v3).unwrap();
    assert!(counts.rebuild_spend && got.purchases.spend.is_empty());
    (got.purchases.history, got.loyalty.lots) = (orders.into(), lots.into());
    got.purchases.rebuild_spend();
    assert_eq!(got, m);

    // Now the spend is kept beside the record, which counts its marks.
    let (now, counts) = Member::decode_stored(&m.clone().encode_hot()).unwrap();
    assert!(!counts.rebuild_spend && now.purchases.spend.is_empty());
    assert_eq!(counts.marks as usize, m.purchases.spend.len());
    let trailing = [m.encode(), vec![0]].concat();
    assert!(Member::decode(&trailing).unwrap_err().to_string().contains("after a member's encoding"));
}
