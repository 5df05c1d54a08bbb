//! The loyalty rules with exact numbers. Each `example_*` test is a worked
//! example in docs/loyalty.md, with the same numbers.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use omnifold_core::fold::{Position, apply, kind_of};
use omnifold_core::loyalty::{EntryKind, NegativeBalance, VerdictStatus};
use omnifold_core::testing::{fold_config as cfg, member_event as ev};
use omnifold_core::time::{DAY, to_timestamp};
use omnifold_core::{Event, FoldConfig, LedgerEntry, Member, Tier, Verdict};
use omnifold_proto::v1 as proto;
use proto::Channel::{MobileApp, OnlineWeb, StorePos};
use proto::event::Payload;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const MS: i64 = 1;

/// An order paid `total` (minor units) for one line of the same list value.
fn order(id: &str, currency: &str, total: i64) -> Payload {
    order_lines(id, currency, vec![("SKU", "misc", 1, total)], total)
}

fn order_lines(id: &str, currency: &str, lines: Vec<(&str, &str, i32, i64)>, total: i64) -> Payload {
    Payload::OrderPlaced(proto::OrderPlaced {
        order_id: id.into(),
        currency: currency.into(),
        lines: lines
            .into_iter()
            .map(|(sku, category, quantity, unit)| proto::OrderLine {
                sku: sku.into(),
                category: category.into(),
                quantity,
                unit_price_minor: unit,
            })
            .collect(),
        total_minor: total,
    })
}

fn return_amount(order: &str, ret: &str, amount: i64) -> Payload {
    Payload::OrderReturned(proto::OrderReturned {
        order_id: order.into(),
        return_id: ret.into(),
        lines: vec![],
        amount_minor: amount,
    })
}

fn return_line(order: &str, ret: &str, sku: &str) -> Payload {
    Payload::OrderReturned(proto::OrderReturned {
        order_id: order.into(),
        return_id: ret.into(),
        lines: vec![proto::ReturnLine { sku: sku.into(), quantity: 1 }],
        amount_minor: 0,
    })
}

fn redeem(request: &str, points: i64) -> Payload {
    Payload::PointsRedemptionRequested(proto::PointsRedemptionRequested {
        request_id: request.into(),
        points,
        reward: "voucher".into(),
    })
}

fn adjust(delta: i64) -> Payload {
    Payload::PointsAdjusted(proto::PointsAdjusted {
        delta,
        reason: "goodwill".into(),
        actor: "agent-7".into(),
        request_id: String::new(),
    })
}

/// Folds the events; returns the member, every ledger entry and verdict.
fn fold_with(events: &[Event], cfg: &FoldConfig) -> (Member, Vec<LedgerEntry>, Vec<Verdict>) {
    let mut m = Member::new("m-1", kind_of(&events[0]));
    let (mut ledger, mut verdicts) = (Vec::new(), Vec::new());
    for (i, e) in events.iter().enumerate() {
        let fx = apply(&mut m, e, Position { partition: 0, offset: i as i64 }, cfg)
            .unwrap_or_else(|r| panic!("{} rejected: {r}", e.event_id));
        ledger.extend(fx.ledger);
        verdicts.extend(fx.verdict);
    }
    (m, ledger, verdicts)
}

fn fold(events: &[Event]) -> (Member, Vec<LedgerEntry>, Vec<Verdict>) {
    fold_with(events, &cfg())
}

fn earned(ledger: &[LedgerEntry]) -> Vec<i64> {
    ledger.iter().filter(|e| e.kind == EntryKind::Earn).map(|e| e.points).collect()
}

#[test]
fn example_1_earn_with_channel_and_tier_multipliers_rounding_down() {
    let (m, ledger, _) = fold(&[
        ev("e1", T0, MobileApp, order("o1", "CNY", 19_999)), // 199.99 × 1.5 = 299.985
        ev("e2", T0, StorePos, order("o2", "CNY", 19_999)),  // 199.99 × 1.0
        ev("e3", T0 + DAY, OnlineWeb, order("o3", "CNY", 1_000_000)), // 10,000.00 at MEMBER, then GOLD
        ev("e4", T0 + 2 * DAY, MobileApp, order("o4", "CNY", 100_001)), // 1,000.01 × 1.5 × 1.25 = 1875.01875
    ]);
    assert_eq!(earned(&ledger), vec![299, 199, 10_000, 1_875]);
    let b = m.balance(T0 + 2 * DAY, &cfg().loyalty);
    assert_eq!(b.tier, Tier::Gold);
    assert_eq!(b.tier_since, Some(T0 + DAY));
    assert_eq!(b.pending, 299 + 199 + 10_000 + 1_875);
    assert_eq!(b.active, 0);
}

#[test]
fn example_2_category_multipliers_average_over_the_lines() {
    let mut cfg = FoldConfig::default();
    cfg.loyalty.category_multipliers.insert("beauty".into(), 2.0);
    let cfg = cfg.validate().unwrap();
    // List 100.00 beauty + 100.00 shoes, paid 180.00: (2.0 + 1.0) / 2 = 1.5 → 270.
    let (_, ledger, _) = fold_with(
        &[ev(
            "e1",
            T0,
            OnlineWeb,
            order_lines("o1", "CNY", vec![("LIP", "beauty", 1, 10_000), ("RUN", "shoes", 1, 10_000)], 18_000),
        )],
        &cfg,
    );
    assert_eq!(earned(&ledger), vec![270]);
}

#[test]
fn example_3_pending_for_exactly_seven_days() {
    let (m, ledger, _) = fold(&[ev("e1", T0, OnlineWeb, order("o1", "CNY", 10_000))]);
    let cfg = cfg().loyalty;
    assert_eq!(ledger[0].activates_at, Some(T0 + 7 * DAY));
    let before = m.balance(T0 + 7 * DAY - MS, &cfg);
    assert_eq!((before.active, before.pending), (0, 100));
    assert_eq!(before.pending_lots[0].activates_at, T0 + 7 * DAY);
    let after = m.balance(T0 + 7 * DAY, &cfg);
    assert_eq!((after.active, after.pending), (100, 0));
}

#[test]
fn example_4_expiry_365_days_after_activation() {
    let events = [ev("e1", T0, OnlineWeb, order("o1", "CNY", 10_000))];
    let (m, ledger, _) = fold(&events);
    let cfg = cfg().loyalty;
    let expires = T0 + 7 * DAY + 365 * DAY;
    assert_eq!(ledger[0].expires_at, Some(expires));
    // Within 30 days of expiry the points show as expiring soon.
    let soon = m.balance(expires - 30 * DAY, &cfg);
    assert_eq!((soon.active, soon.expiring_soon), (100, 100));
    let last = m.balance(expires - MS, &cfg);
    assert_eq!((last.active, last.expired), (100, 0));
    let gone = m.balance(expires, &cfg);
    assert_eq!((gone.active, gone.expired), (0, 100));
    // The expiry is written to the ledger when a later event closes the lot.
    let (m, ledger, _) = fold(&[
        events[0].clone(),
        ev("e2", expires + DAY, OnlineWeb, Payload::SearchPerformed(proto::SearchPerformed { query: "boots".into() })),
    ]);
    let last = ledger.last().unwrap();
    assert_eq!((last.kind, last.points, last.at), (EntryKind::Expire, -100, expires));
    assert!(m.loyalty.lots.is_empty());
    assert_eq!(m.balance(expires + DAY, &cfg).expired, 100);
}

#[test]
fn example_5_spending_takes_the_lot_that_expires_first() {
    let (m, ledger, verdicts) = fold(&[
        ev("e1", T0, OnlineWeb, order("o1", "CNY", 10_000)), // lot A: 100
        ev("e2", T0 + 30 * DAY, OnlineWeb, order("o2", "CNY", 20_000)), // lot B: 200
        ev("e3", T0 + 60 * DAY, MobileApp, redeem("r1", 150)),
    ]);
    assert_eq!(verdicts[0].status, VerdictStatus::Accepted);
    assert_eq!(ledger.last().unwrap().points, -150);
    let lots: Vec<(i64, i64)> = m.loyalty.lots.iter().map(|l| (l.points, l.remaining)).collect();
    assert_eq!(lots, vec![(100, 0), (200, 150)]);
    let cfg = cfg().loyalty;
    // Lot A's expiry takes nothing; B's 150 last until its own expiry.
    let after_a = m.balance(T0 + 372 * DAY, &cfg);
    assert_eq!((after_a.active, after_a.expired), (150, 0));
    let after_b = m.balance(T0 + 402 * DAY, &cfg);
    assert_eq!((after_b.active, after_b.expired), (0, 150));
}

#[test]
fn redemption_spends_only_active_points() {
    let (m, _, verdicts) = fold(&[
        ev("e1", T0, OnlineWeb, order("o1", "CNY", 10_000)),
        ev("e2", T0 + 6 * DAY, MobileApp, redeem("r1", 1)), // still pending
        ev("e3", T0 + 7 * DAY, MobileApp, redeem("r2", 101)),
        ev("e4", T0 + 7 * DAY, MobileApp, redeem("r3", 100)),
    ]);
    let v: Vec<_> = verdicts.iter().map(|v| (v.request_id.as_str(), v.status)).collect();
    assert_eq!(
        v,
        vec![("r1", VerdictStatus::Rejected), ("r2", VerdictStatus::Rejected), ("r3", VerdictStatus::Accepted)]
    );
    assert_eq!(verdicts[1].reason, "insufficient points: 100 active, 101 requested");
    let b = m.balance(T0 + 8 * DAY, &cfg().loyalty);
    assert_eq!((b.active, b.redeemed), (0, 100));
}

#[test]
fn example_6_return_after_redemption_leaves_a_negative_balance_the_next_earnings_pay_off() {
    let (m, ledger, verdicts) = fold(&[
        ev("e1", T0, OnlineWeb, order("o1", "CNY", 100_000)), // 1000 points
        ev("e2", T0 + 10 * DAY, MobileApp, redeem("r1", 800)),
        ev("e3", T0 + 20 * DAY, OnlineWeb, return_amount("o1", "ret-1", 100_000)), // revoke 1000: 200 + 800 short
        ev("e4", T0 + 25 * DAY, MobileApp, redeem("r2", 1)),
        ev("e5", T0 + 30 * DAY, OnlineWeb, order("o2", "CNY", 50_000)), // 500, all to the debt
        ev("e6", T0 + 40 * DAY, OnlineWeb, order("o3", "CNY", 40_000)), // 400: 300 to the debt, 100 kept
    ]);
    let cfg = cfg().loyalty;
    let revoke = ledger.iter().find(|e| e.kind == EntryKind::Revoke).unwrap();
    assert_eq!((revoke.points, revoke.reason.as_str()), (-1_000, "return ret-1; 800 points short"));
    assert_eq!(verdicts[1].status, VerdictStatus::Rejected, "nothing can be redeemed while points are owed");
    assert_eq!(verdicts[1].reason, "insufficient points: 0 spendable (800 owed), 1 requested");
    let b = m.balance(T0 + 50 * DAY, &cfg);
    assert_eq!((b.active, b.pending, b.negative), (100, 0, 0));
    assert_eq!((b.earned, b.redeemed, b.revoked, b.expired), (1_900, 800, 1_000, 0));
    let earns: Vec<&str> = ledger.iter().filter(|e| e.kind == EntryKind::Earn).map(|e| e.reason.as_str()).collect();
    assert_eq!(earns, vec!["", "500 points paid off the negative balance", "300 points paid off the negative balance"]);
    // Between the two orders the debt was 300.
    let (mid, _, _) = fold(&[
        ev("e1", T0, OnlineWeb, order("o1", "CNY", 100_000)),
        ev("e2", T0 + 10 * DAY, MobileApp, redeem("r1", 800)),
        ev("e3", T0 + 20 * DAY, OnlineWeb, return_amount("o1", "ret-1", 100_000)),
        ev("e5", T0 + 30 * DAY, OnlineWeb, order("o2", "CNY", 50_000)),
    ]);
    assert_eq!(mid.loyalty.negative, 300);
}

#[test]
fn write_off_policy_forgives_the_shortfall() {
    let mut cfg = FoldConfig::default();
    cfg.loyalty.negative_balance = NegativeBalance::WriteOff;
    let cfg = cfg.validate().unwrap();
    let (m, _, _) = fold_with(
        &[
            ev("e1", T0, OnlineWeb, order("o1", "CNY", 100_000)),
            ev("e2", T0 + 10 * DAY, MobileApp, redeem("r1", 800)),
            ev("e3", T0 + 20 * DAY, OnlineWeb, return_amount("o1", "ret-1", 100_000)),
        ],
        &cfg,
    );
    let b = m.balance(T0 + 21 * DAY, &cfg.loyalty);
    assert_eq!((b.active, b.negative, b.revoked, b.written_off), (0, 0, 200, 800));
}

#[test]
fn example_7_partial_returns_revoke_cumulatively() {
    // 3 × 33.33 = 99.99 on the app: floor(99.99 × 1.5) = 149 points.
    let events = [
        ev("e1", T0, MobileApp, order_lines("o1", "CNY", vec![("CUP", "home", 3, 3_333)], 9_999)),
        ev("e2", T0 + DAY, MobileApp, return_line("o1", "ret-1", "CUP")), // floor(149 × 1/3) = 49
        ev("e3", T0 + 2 * DAY, MobileApp, return_line("o1", "ret-2", "CUP")), // floor(149 × 2/3) = 99 → 50
        ev("e4", T0 + 3 * DAY, MobileApp, return_line("o1", "ret-3", "CUP")), // 149 → 50
    ];
    let (m, ledger, _) = fold(&events);
    let revokes: Vec<i64> = ledger.iter().filter(|e| e.kind == EntryKind::Revoke).map(|e| e.points).collect();
    assert_eq!(earned(&ledger), vec![149]);
    assert_eq!(revokes, vec![-49, -50, -50]);
    let b = m.balance(T0 + 4 * DAY, &cfg().loyalty);
    assert_eq!((b.pending, b.active, b.negative), (0, 0, 0));
}

#[test]
fn cancellation_revokes_what_is_left_of_the_order() {
    let (m, ledger, _) = fold(&[
        ev("e1", T0, OnlineWeb, order("o1", "CNY", 30_000)),
        ev("e2", T0 + DAY, OnlineWeb, return_amount("o1", "ret-1", 10_000)), // 100
        ev(
            "e3",
            T0 + 2 * DAY,
            OnlineWeb,
            Payload::OrderCancelled(proto::OrderCancelled { order_id: "o1".into(), reason: "fraud".into() }),
        ),
    ]);
    let revokes: Vec<(i64, &str)> =
        ledger.iter().filter(|e| e.kind == EntryKind::Revoke).map(|e| (e.points, e.reason.as_str())).collect();
    assert_eq!(revokes, vec![(-100, "return ret-1"), (-200, "order cancelled")]);
    assert_eq!(m.balance(T0 + 3 * DAY, &cfg().loyalty).pending, 0);
}

#[test]
fn example_8_tier_upgrades_at_once_and_drops_only_at_the_anniversary() {
    let events = [
        ev("e1", T0, OnlineWeb, order("o1", "CNY", 250_000)), // 2,500: SILVER from T0
        ev("e2", T0 + 100 * DAY, OnlineWeb, order("o2", "CNY", 800_000)), // 10,500: GOLD from day 100
        ev("e3", T0 + 200 * DAY, OnlineWeb, return_amount("o2", "ret-1", 800_000)), // 2,500, still GOLD
        ev("e4", T0 + 300 * DAY, OnlineWeb, order("o3", "CNY", 300_000)), // earns at GOLD: 3,750
    ];
    let (m, ledger, _) = fold(&events);
    let cfg = cfg().loyalty;
    assert_eq!(earned(&ledger), vec![2_500, 8_000, 3_750]);
    let tier_at = |days: i64, ms: i64| m.balance(T0 + days * DAY + ms, &cfg).tier;
    assert_eq!(tier_at(0, 0), Tier::Silver);
    assert_eq!(tier_at(100, -MS), Tier::Silver);
    assert_eq!(tier_at(100, 0), Tier::Gold);
    assert_eq!(tier_at(250, 0), Tier::Gold, "a return does not lower the tier before the anniversary");
    // Anniversary of GOLD: day 465. Spend in (day 100, day 465] = 0 + 3,000.
    assert_eq!(tier_at(465, -MS), Tier::Gold);
    assert_eq!(tier_at(465, 0), Tier::Silver);
    let s = m.standing(T0 + 465 * DAY, &cfg);
    assert_eq!((s.tier_since, s.qualifying_spend_minor), (Some(T0 + 465 * DAY), 300_000));
    assert_eq!((s.next_tier, s.next_tier_threshold_minor), (Some(Tier::Gold), Some(1_000_000)));
    let before = m.standing(T0 + 300 * DAY, &cfg);
    assert_eq!(before.next_review, Some(T0 + 465 * DAY));
    // The fold records the review when the next event after it arrives.
    let mut later = events.to_vec();
    later.push(ev("e5", T0 + 470 * DAY, OnlineWeb, order("o4", "CNY", 10_000)));
    let (m, ledger, _) = fold(&later);
    assert_eq!(m.loyalty.tier, Tier::Silver);
    assert_eq!(*earned(&ledger).last().unwrap(), 100, "earned at SILVER (1.0)");
}

#[test]
fn late_order_earns_at_the_tier_held_when_it_occurred() {
    let (_, ledger, _) = fold(&[
        ev("e1", T0 + 10 * DAY, OnlineWeb, order("o1", "CNY", 1_000_000)), // GOLD from day 10
        ev("e2", T0 + 5 * DAY, MobileApp, order("o0", "CNY", 10_000)),     // day 5: MEMBER, 1.5 → 150
        ev("e3", T0 + 11 * DAY, MobileApp, order("o2", "CNY", 10_000)),    // GOLD: 1.5 × 1.25 → 187
    ]);
    assert_eq!(earned(&ledger), vec![10_000, 150, 187]);
}

#[test]
fn example_9_foreign_currency_converts_before_earning() {
    // 100.00 USD at 7.1 = 710.00 CNY.
    let (m, ledger, _) = fold(&[
        ev("e1", T0, StorePos, order("o1", "USD", 10_000)),
        ev("e2", T0, MobileApp, order("o2", "USD", 10_000)),
        ev("e3", T0 + DAY, StorePos, return_amount("o1", "ret-1", 5_000)), // half of 710
    ]);
    assert_eq!(earned(&ledger), vec![710, 1_065]);
    assert_eq!(m.balance(T0 + 2 * DAY, &cfg().loyalty).pending, 355 + 1_065);
}

#[test]
fn adjustments_are_active_at_once_or_take_active_points() {
    let (m, ledger, _) = fold(&[
        ev("e1", T0, OnlineWeb, order("o1", "CNY", 10_000)),
        ev("e2", T0 + DAY, OnlineWeb, adjust(500)),
        ev("e3", T0 + 2 * DAY, OnlineWeb, adjust(-600)),
    ]);
    let adj = &ledger[1];
    assert_eq!(
        (adj.kind, adj.points, adj.actor.as_str(), adj.reason.as_str()),
        (EntryKind::Adjust, 500, "agent-7", "goodwill")
    );
    let b = m.balance(T0 + 2 * DAY, &cfg().loyalty);
    // 500 active, 100 still pending: taking 600 leaves a debt of 100.
    assert_eq!((b.active, b.pending, b.negative), (0, 100, 100));
    assert_eq!((b.earned, b.revoked), (600, 600));
}

#[test]
fn anonymous_subjects_do_not_earn_and_cannot_hold_points() {
    let anon = |id: &str, payload: Payload| {
        Event::try_from(proto::Event {
            event_id: id.into(),
            occurred_at: Some(to_timestamp(T0)),
            channel: OnlineWeb as i32,
            store_id: String::new(),
            subject: Some(proto::Subject { anonymous_id: "cookie-1".into(), ..Default::default() }),
            payload: Some(payload),
        })
        .unwrap()
    };
    let cfg = cfg();
    let mut m = Member::new("cookie-1", kind_of(&anon("e1", order("o1", "CNY", 10_000))));
    let fx =
        apply(&mut m, &anon("e1", order("o1", "CNY", 10_000)), Position { partition: 0, offset: 0 }, &cfg).unwrap();
    assert!(fx.ledger.is_empty());
    assert_eq!(m.purchases.orders, 1);
    let err = apply(&mut m, &anon("e2", redeem("r1", 1)), Position { partition: 0, offset: 1 }, &cfg).unwrap_err();
    assert!(err.0.contains("points belong to members"), "{err}");
}
