//! Shared pieces of the benchmarks: a deterministic stream of small JSON
//! events, like the ones channels send.

use prost::Message;

use omnifold_core::time::{DAY, to_timestamp};
use omnifold_proto::v1 as proto;

/// 2026-01-01T00:00:00Z.
pub const BASE: i64 = 1_767_225_600_000;

/// The `i`-th event of a stream over `members` members: mostly product
/// views, one in eight an order. Returns `(key, JSON bytes)`.
pub fn event(i: u64, members: u64) -> (String, Vec<u8>) {
    let m = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % members;
    let key = format!("m-{m:07}");
    let payload = if i.is_multiple_of(8) {
        proto::event::Payload::OrderPlaced(proto::OrderPlaced {
            order_id: format!("o-{i}"),
            currency: "CNY".into(),
            lines: vec![proto::OrderLine {
                sku: format!("SKU-{}", i % 500),
                category: format!("c{}", i % 20),
                quantity: 1,
                unit_price_minor: 1_000 + (i % 97) as i64 * 100,
            }],
            total_minor: 0,
        })
    } else {
        proto::event::Payload::ProductViewed(proto::ProductViewed {
            sku: format!("SKU-{}", i % 500),
            category: format!("c{}", i % 20),
            price_minor: 9_900,
            currency: String::new(),
        })
    };
    let e = proto::Event {
        event_id: format!("ev-{i}"),
        occurred_at: Some(to_timestamp(BASE + (i as i64 % 300) * DAY / 10)),
        channel: [proto::Channel::OnlineWeb, proto::Channel::MobileApp, proto::Channel::StorePos][(i % 3) as usize]
            as i32,
        store_id: String::new(),
        subject: Some(proto::Subject { member_id: key.clone(), ..Default::default() }),
        payload: Some(payload),
    };
    (key, serde_json::to_vec(&e).expect("serialisable"))
}

/// The same event as protobuf binary.
pub fn event_protobuf(i: u64, members: u64) -> (String, Vec<u8>) {
    let (k, json) = event(i, members);
    let e: proto::Event = serde_json::from_slice(&json).expect("valid");
    (k, e.encode_to_vec())
}

pub mod load;
pub mod report;
