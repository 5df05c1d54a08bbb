//! Property-test strategies: random but valid multi-channel event streams,
//! for this crate's tests and (feature `testing`) other crates' tests.

use proptest::prelude::*;

use crate::time::{DAY, to_timestamp};
use omnifold_proto::v1 as proto;
use proto::event::Payload;

/// A base instant (2026-01-01T00:00:00Z) streams are built around.
pub const BASE: i64 = 1_767_225_600_000;

const SKUS: [(&str, &str, i64); 5] =
    [("A", "shoes", 10_000), ("B", "shoes", 5_000), ("C", "beauty", 2_990), ("D", "home", 12_345), ("E", "", 700)];

#[derive(Debug, Clone)]
enum Step {
    View(usize),
    Search(u8),
    Order { lines: Vec<(usize, u8)>, discount_pct: u8, usd: bool },
    ReturnLine { order_back: usize, line: usize },
    ReturnAmount { order_back: usize, pct: u8 },
    Cancel { order_back: usize },
    Trait(u8, u8),
    Consent(bool),
    Redeem { request: u8, points: i64 },
    Adjust { request: u8, delta: i64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..SKUS.len()).prop_map(Step::View),
        1 => (0u8..4).prop_map(Step::Search),
        3 => (prop::collection::vec((0..SKUS.len(), 1u8..4), 1..4), 0u8..30, prop::bool::weighted(0.2))
            .prop_map(|(lines, discount_pct, usd)| Step::Order { lines, discount_pct, usd }),
        1 => (0usize..3, 0usize..3).prop_map(|(order_back, line)| Step::ReturnLine { order_back, line }),
        1 => (0usize..3, 1u8..60).prop_map(|(order_back, pct)| Step::ReturnAmount { order_back, pct }),
        1 => (0usize..3).prop_map(|order_back| Step::Cancel { order_back }),
        1 => (0u8..3, 0u8..3).prop_map(|(k, v)| Step::Trait(k, v)),
        1 => any::<bool>().prop_map(Step::Consent),
        2 => (0u8..6, 1i64..3_000).prop_map(|(request, points)| Step::Redeem { request, points }),
        1 => (0u8..6, prop_oneof![-2_000i64..0, 1i64..2_000]).prop_map(|(request, delta)| Step::Adjust { request, delta }),
    ]
}

const CHANNELS: [proto::Channel; 6] = [
    proto::Channel::OnlineWeb,
    proto::Channel::MobileApp,
    proto::Channel::MiniProgram,
    proto::Channel::StorePos,
    proto::Channel::Marketplace,
    proto::Channel::CallCenter,
];

/// Streams of valid wire events for up to 4 subjects (members, an anonymous
/// id and a phone-only subject), with times that go back and forth and
/// sometimes jump months ahead (so points activate and expire). Request ids
/// of redemptions and adjustments repeat, as client retries do.
pub fn events(max_len: usize) -> impl Strategy<Value = Vec<proto::Event>> {
    // Time steps in quarter days.
    let dt = prop_oneof![12 => -3i64..20, 1 => 200i64..1_600];
    prop::collection::vec((0usize..4, 0usize..6, dt, step()), 1..max_len).prop_map(|steps| {
        let mut t = BASE;
        let mut orders: Vec<Vec<String>> = vec![Vec::new(); 4];
        let mut out = Vec::with_capacity(steps.len());
        for (i, (who, ch, dt, step)) in steps.into_iter().enumerate() {
            t += dt * DAY / 4;
            let subject = match who {
                0 => proto::Subject { member_id: "m-1".into(), ..Default::default() },
                1 => proto::Subject { member_id: "m-2".into(), ..Default::default() },
                2 => proto::Subject { anonymous_id: "anon-9".into(), ..Default::default() },
                _ => proto::Subject {
                    identifiers: vec![proto::Identifier {
                        r#type: proto::IdentifierType::Phone as i32,
                        value: "+8613900000001".into(),
                    }],
                    ..Default::default()
                },
            };
            let pick = |back: usize| orders[who].iter().rev().nth(back).cloned().unwrap_or_else(|| "o-none".into());
            let payload = match step {
                Step::View(s) => Payload::ProductViewed(proto::ProductViewed {
                    sku: SKUS[s].0.into(),
                    category: SKUS[s].1.into(),
                    price_minor: SKUS[s].2,
                    currency: String::new(),
                }),
                Step::Search(q) => Payload::SearchPerformed(proto::SearchPerformed { query: format!("q{q}") }),
                Step::Order { lines, discount_pct, usd } => {
                    let order_id = format!("o-{i}");
                    orders[who].push(order_id.clone());
                    let lines: Vec<proto::OrderLine> = lines
                        .into_iter()
                        .map(|(s, q)| proto::OrderLine {
                            sku: SKUS[s].0.into(),
                            category: SKUS[s].1.into(),
                            quantity: i32::from(q),
                            unit_price_minor: SKUS[s].2,
                        })
                        .collect();
                    let list: i64 = lines.iter().map(|l| l.unit_price_minor * i64::from(l.quantity)).sum();
                    Payload::OrderPlaced(proto::OrderPlaced {
                        order_id,
                        currency: if usd { "USD".into() } else { "CNY".into() },
                        lines,
                        total_minor: list - list * i64::from(discount_pct) / 100,
                    })
                }
                Step::ReturnLine { order_back, line } => Payload::OrderReturned(proto::OrderReturned {
                    order_id: pick(order_back),
                    return_id: format!("r-{i}"),
                    lines: vec![proto::ReturnLine { sku: SKUS[line].0.into(), quantity: 1 }],
                    amount_minor: 0,
                }),
                Step::ReturnAmount { order_back, pct } => Payload::OrderReturned(proto::OrderReturned {
                    order_id: pick(order_back),
                    return_id: format!("r-{i}"),
                    lines: vec![],
                    amount_minor: 100 * i64::from(pct),
                }),
                Step::Cancel { order_back } => {
                    Payload::OrderCancelled(proto::OrderCancelled { order_id: pick(order_back), reason: String::new() })
                }
                Step::Trait(k, v) => Payload::ProfileUpdated(proto::ProfileUpdated {
                    traits: [(format!("k{k}"), if v == 0 { String::new() } else { format!("v{v}") })].into(),
                }),
                Step::Consent(granted) => {
                    Payload::ConsentChanged(proto::ConsentChanged { purpose: "marketing".into(), granted })
                }
                Step::Redeem { request, points } => {
                    Payload::PointsRedemptionRequested(proto::PointsRedemptionRequested {
                        request_id: format!("rq-{request}"),
                        points,
                        reward: "voucher".into(),
                    })
                }
                Step::Adjust { request, delta } => Payload::PointsAdjusted(proto::PointsAdjusted {
                    delta,
                    reason: "correction".into(),
                    actor: "ops".into(),
                    request_id: format!("adj-{request}"),
                }),
            };
            out.push(proto::Event {
                event_id: format!("e-{i}"),
                occurred_at: Some(to_timestamp(t)),
                channel: CHANNELS[ch] as i32,
                store_id: if ch == 3 { format!("s-{}", i % 2) } else { String::new() },
                subject: Some(subject),
                payload: Some(payload),
            });
        }
        out
    })
}

/// Values a hostile or broken producer may send in a numeric field.
fn absurd_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(i64::MIN + 1),
        Just(-1i64),
        Just(0i64),
        Just(1_000_000_000_000i64),
        Just(1_000_000_000_001i64),
        any::<i64>(),
        (-10_000i64..10_000),
    ]
}

fn absurd_i32() -> impl Strategy<Value = i32> {
    prop_oneof![Just(i32::MIN), Just(i32::MAX), Just(0i32), Just(-1i32), Just(100_001i32), any::<i32>(), 1i32..5]
}

/// [`events`] with some numeric fields replaced by absurd values: amounts,
/// prices, quantities, deltas and points at the edges of their types.
/// Validation refuses some; the fold must take the rest without overflow.
pub fn hostile_events(max_len: usize) -> impl Strategy<Value = Vec<proto::Event>> {
    (events(max_len), prop::collection::vec((any::<prop::sample::Index>(), absurd_i64(), absurd_i32()), 0..12))
        .prop_map(|(mut stream, changes)| {
            for (at, big, small) in changes {
                let i = at.index(stream.len());
                match stream[i].payload.as_mut() {
                    Some(Payload::ProductViewed(p)) => p.price_minor = big,
                    Some(Payload::OrderPlaced(p)) => match p.lines.first_mut() {
                        Some(l) if small % 2 == 0 => l.quantity = small,
                        Some(l) if big % 3 == 0 => l.unit_price_minor = big,
                        _ => p.total_minor = big,
                    },
                    Some(Payload::OrderReturned(p)) => match p.lines.first_mut() {
                        Some(l) => l.quantity = small,
                        None => p.amount_minor = big,
                    },
                    Some(Payload::PointsAdjusted(p)) => p.delta = big,
                    Some(Payload::PointsRedemptionRequested(p)) => p.points = big,
                    _ => {}
                }
            }
            stream
        })
}

/// The default fold rules, validated: what the fold tests fold with.
#[allow(clippy::expect_used, reason = "a test helper fails loudly")]
pub fn fold_config() -> crate::FoldConfig {
    crate::FoldConfig::default().validate().expect("the default rules are valid")
}

/// An event of member `m-1` at `at` on `channel`, carrying `payload` (a
/// till's events name their store, `store-1`).
#[allow(clippy::expect_used, reason = "a test helper fails loudly")]
pub fn member_event(id: &str, at: i64, channel: proto::Channel, payload: Payload) -> crate::Event {
    crate::Event::try_from(proto::Event {
        event_id: id.into(),
        occurred_at: Some(to_timestamp(at)),
        channel: channel as i32,
        store_id: if channel == proto::Channel::StorePos { "store-1".into() } else { String::new() },
        subject: Some(proto::Subject { member_id: "m-1".into(), ..Default::default() }),
        payload: Some(payload),
    })
    .expect("a valid test event")
}
