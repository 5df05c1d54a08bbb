//! Properties of the fold over random multi-channel streams: determinism,
//! atomic rejections, and books that always balance.

use omnifold_core::fold::{Position, apply, kind_of};
use omnifold_core::testing::events;
use omnifold_core::{Event, FoldConfig, Member};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn fold_all(wire: &[omnifold_proto::v1::Event]) -> BTreeMap<String, Member> {
    let cfg = FoldConfig::default().validate().unwrap();
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for (i, w) in wire.iter().enumerate() {
        let e = Event::try_from(w.clone()).expect("generated events are valid");
        let key = e.subject.key();
        let m = members.entry(key.clone()).or_insert_with(|| Member::new(key, kind_of(&e)));
        let before = m.clone();
        if apply(m, &e, Position { partition: 0, offset: i as i64 }, &cfg).is_err() {
            assert_eq!(*m, before, "rejected event {} changed the member", e.event_id);
        }
    }
    members
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
            let live: Vec<_> = p.history.iter().filter(|o| !o.cancelled).collect();
            prop_assert_eq!(p.orders, live.len() as u64);
            prop_assert_eq!(p.gross_minor, live.iter().map(|o| o.total_program_minor).sum::<i64>());
            prop_assert_eq!(p.returned_minor, live.iter().map(|o| o.returned_program_minor).sum::<i64>());
            for o in &p.history {
                prop_assert!(0 <= o.returned_minor && o.returned_minor <= o.total_minor);
            }
            let events: u64 = m.channels.values().map(|c| c.events).sum();
            prop_assert_eq!(events, m.version.events_applied);
            prop_assert!(m.browse.recent.len() <= 20);
        }
    }
}
