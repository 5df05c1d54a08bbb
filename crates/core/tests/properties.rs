//! Properties of the fold over random multi-channel streams: determinism,
//! atomic rejections, books that always balance, and a points ledger that
//! always adds up.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use omnifold_core::fold::{Position, apply, kind_of};
use omnifold_core::loyalty::NegativeBalance;
use omnifold_core::testing::{events, hostile_events};
use omnifold_core::time::DAY;
use omnifold_core::{Event, FoldConfig, LedgerEntry, Member};
use proptest::prelude::*;
use std::collections::BTreeMap;

type Folded = BTreeMap<String, (Member, Vec<LedgerEntry>)>;

fn fold_with(wire: &[omnifold_proto::v1::Event], cfg: &FoldConfig) -> Folded {
    let mut members: Folded = BTreeMap::new();
    for (i, w) in wire.iter().enumerate() {
        // Hostile streams carry events validation refuses: they never reach the fold.
        let Ok(e) = Event::validate(w.clone(), &cfg.limits) else {
            continue;
        };
        let key = e.subject.key();
        let (m, ledger) = members.entry(key.clone()).or_insert_with(|| (Member::new(key, kind_of(&e)), Vec::new()));
        let before = m.clone();
        match apply(m, &e, Position { partition: 0, offset: i as i64 }, cfg) {
            Ok(fx) => ledger.extend(fx.ledger),
            Err(_) => assert_eq!(*m, before, "rejected event {} changed the member", e.event_id),
        }
    }
    members
}

fn fold_all(wire: &[omnifold_proto::v1::Event]) -> BTreeMap<String, Member> {
    let cfg = FoldConfig::default().validate().unwrap();
    fold_with(wire, &cfg).into_iter().map(|(k, (m, _))| (k, m)).collect()
}

/// earned − redeemed − expired − revoked = active + pending − negative at
/// `at`, and no lot is ever below zero or above what it earned.
fn check_points(m: &Member, at: i64, cfg: &FoldConfig) -> Result<(), TestCaseError> {
    let b = m.balance(at, &cfg.loyalty);
    prop_assert_eq!(b.earned - b.redeemed - b.expired - b.revoked, b.active + b.pending - b.negative, "at {}", at);
    prop_assert!(b.active >= 0 && b.pending >= 0 && b.negative >= 0 && b.written_off >= 0);
    for lot in &m.loyalty.lots {
        prop_assert!(0 <= lot.remaining && lot.remaining <= lot.points, "lot {:?}", lot);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn same_events_same_bytes(stream in events(60)) {
        let a = fold_all(&stream);
        let b = fold_all(&stream);
        for (k, m) in &a {
            prop_assert_eq!(m.encode(), b[k].encode());
        }
    }

    #[test]
    fn books_balance(stream in events(80)) {
        for m in fold_all(&stream).values() {
            let p = &m.purchases;
            let channel_spend: i64 = m.channels.values().map(|c| c.spend_minor).sum();
            let channel_orders: u64 = m.channels.values().map(|c| c.orders).sum();
            prop_assert_eq!(p.net_minor(), channel_spend);
            prop_assert_eq!(p.orders, channel_orders);
            // Streams jump months ahead, so old orders may leave the kept
            // history; the totals match it whenever it is complete.
            let complete = p.history.first().map(|o| o.at) == p.first_order_at;
            let live: Vec<_> = p.history.iter().filter(|o| !o.cancelled).collect();
            prop_assert!(p.orders >= live.len() as u64);
            if complete {
                prop_assert_eq!(p.orders, live.len() as u64);
                prop_assert_eq!(p.gross_minor, live.iter().map(|o| o.total_program_minor).sum::<i64>());
                prop_assert_eq!(p.returned_minor, live.iter().map(|o| o.returned_program_minor).sum::<i64>());
            }
            for o in &p.history {
                prop_assert!(0 <= o.returned_minor && o.returned_minor <= o.total_minor);
            }
            // The dated spend tiers and windows read says what the kept
            // orders say, over every year the kept orders cover.
            if let Some(latest) = p.history.last().map(|o| o.at) {
                for t in [latest, latest - 30 * DAY, latest - DAY / 3] {
                    let from = t - 365 * DAY;
                    let kept: Vec<_> = live.iter().filter(|o| o.at > from && o.at <= t).collect();
                    let w = p.spend.window(from, t);
                    prop_assert_eq!(w.orders, kept.len() as u64, "orders in (t - 365 d, {}]", t);
                    prop_assert_eq!(w.net_program_minor, kept.iter().map(|o| o.net_program_minor()).sum::<i64>());
                }
            }
            let events: u64 = m.channels.values().map(|c| c.events).sum();
            prop_assert_eq!(events, m.version.events_applied);
            prop_assert!(m.browse.recent.len() <= 20);
        }
    }

    #[test]
    fn points_add_up_under_either_negative_balance_policy(stream in events(120), write_off in any::<bool>()) {
        let mut cfg = FoldConfig::default();
        if write_off {
            cfg.loyalty.negative_balance = NegativeBalance::WriteOff;
        }
        let cfg = cfg.validate().unwrap();
        for (m, ledger) in fold_with(&stream, &cfg).values() {
            let clock = m.loyalty.clock;
            for at in [clock, clock + 7 * DAY, clock + 200 * DAY, clock + 400 * DAY] {
                check_points(m, at, &cfg)?;
            }
            if write_off {
                prop_assert_eq!(m.loyalty.negative, 0);
            } else {
                // The ledger's entries sum to the balance at the fold's clock,
                // when every lot that has expired is closed.
                let b = m.balance(clock, &cfg.loyalty);
                prop_assert_eq!(ledger.iter().map(|e| e.points).sum::<i64>(), b.active + b.pending - b.negative);
            }
            // Entries are numbered without gaps, in the order written.
            prop_assert!(ledger.iter().enumerate().all(|(i, e)| e.seq == i as u64));
            prop_assert_eq!(m.loyalty.next_seq, ledger.len() as u64);
            if m.kind != omnifold_core::ProfileKind::KnownMember {
                prop_assert!(ledger.is_empty() && m.loyalty.lots.is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Absurd amounts, quantities, deltas and points (i64::MIN, i64::MAX,
    /// just over the limits) are refused by validation or folded exactly:
    /// nothing overflows, the books balance and no lot goes below zero.
    #[test]
    fn absurd_values_never_break_the_books(stream in hostile_events(80), write_off in any::<bool>()) {
        let mut cfg = FoldConfig::default();
        if write_off {
            cfg.loyalty.negative_balance = NegativeBalance::WriteOff;
        }
        let cfg = cfg.validate().unwrap();
        for (m, ledger) in fold_with(&stream, &cfg).values() {
            let clock = m.loyalty.clock;
            for at in [clock, clock + 7 * DAY, clock + 400 * DAY] {
                check_points(m, at, &cfg)?;
            }
            if !write_off {
                let b = m.balance(clock, &cfg.loyalty);
                prop_assert_eq!(ledger.iter().map(|e| e.points).sum::<i64>(), b.active + b.pending - b.negative);
            }
            let p = &m.purchases;
            prop_assert!(p.gross_minor >= 0 && p.returned_minor >= 0 && p.returned_minor <= p.gross_minor);
        }
    }
}

/// The finding that opened issue 9: one adjustment of i64::MIN points
/// is refused by validation, naming the field and the limit.
#[test]
fn an_adjustment_of_i64_min_points_is_refused() {
    let json = r#"{"eventId":"evil","occurredAt":"2026-06-01T10:00:00Z","channel":"CALL_CENTER",
        "subject":{"memberId":"m-1"},"pointsAdjusted":{"delta":"-9223372036854775808","reason":"x","actor":"y"}}"#;
    let err = omnifold_core::decode_event(json.as_bytes(), 65536, &Default::default()).unwrap_err();
    assert_eq!(err.kind(), "validation");
    assert!(
        err.to_string().contains(
            "`pointsAdjusted.delta`: 9223372036854775808 is above the limit of 1000000000 (fold.limits.max_points)"
        ),
        "{err}"
    );
}
