//! Identity resolution in the fold, over a simulated log: one FIFO queue
//! per key (a partition keeps each key's order; nothing orders different
//! keys), with the fold's outgoing events and forwards appended to the
//! queue of the key they are for. Exact rules for joins, merges and
//! conflicts, and a property: whatever order the queues are served in, a
//! person ends up with the same profile and points.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use omnifold_core::fold::{Position, apply, kind_of};
use omnifold_core::identity::OnConflict;
use omnifold_core::join::JoinedState;
use omnifold_core::loyalty::EntryKind;
use omnifold_core::member::ProfileKind;
use omnifold_core::time::{DAY, to_timestamp};
use omnifold_core::{Event, FoldConfig, LedgerEntry, Member, Payload as DomainPayload};
use omnifold_proto::v1 as proto;
use proptest::prelude::*;
use proto::event::Payload;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// The log: per-key queues of (route, event).
struct Net {
    cfg: FoldConfig,
    queues: BTreeMap<String, VecDeque<(Option<String>, proto::Event)>>,
    profiles: BTreeMap<String, Member>,
    ledgers: BTreeMap<String, Vec<LedgerEntry>>,
    seen: BTreeSet<(String, String)>,
    /// Join parts kept per (key, join id), as the ingest keeps them.
    parts: BTreeMap<(String, String), BTreeMap<u32, Vec<u8>>>,
    rejected: Vec<String>,
    offset: i64,
}

/// Small parts, so joins here travel in many of them.
const PART_BYTES: usize = 97;

fn key_of(e: &proto::Event) -> String {
    let s = e.subject.as_ref().unwrap();
    if !s.member_id.is_empty() {
        s.member_id.clone()
    } else if !s.anonymous_id.is_empty() {
        s.anonymous_id.clone()
    } else {
        let i = &s.identifiers[0];
        format!("{}:{}", proto::IdentifierType::try_from(i.r#type).unwrap().as_str_name(), i.value)
    }
}

impl Net {
    fn new(cfg: FoldConfig) -> Net {
        Net {
            cfg: cfg.validate().unwrap(),
            queues: BTreeMap::new(),
            profiles: BTreeMap::new(),
            ledgers: BTreeMap::new(),
            seen: BTreeSet::new(),
            parts: BTreeMap::new(),
            rejected: Vec::new(),
            offset: 0,
        }
    }

    fn send(&mut self, route: Option<String>, e: proto::Event) {
        let key = route.clone().unwrap_or_else(|| key_of(&e));
        self.queues.entry(key).or_default().push_back((route, e));
    }

    /// Folds the head of `key`'s queue, as its partition would.
    fn step(&mut self, key: &str) {
        let Some((route, wire)) = self.queues.get_mut(key).and_then(VecDeque::pop_front) else {
            return;
        };
        let mut event = Event::try_from(wire.clone()).unwrap();
        if !self.seen.insert((key.to_owned(), event.event_id.clone())) {
            return;
        }
        let kind = if route.is_some() { ProfileKind::KnownMember } else { kind_of(&event) };
        let m = self.profiles.entry(key.to_owned()).or_insert_with(|| Member::new(key, kind));
        if !matches!(event.payload, DomainPayload::IdentityClaimed { .. })
            && let Some(to) = m.routes_to.clone()
        {
            self.seen.remove(&(key.to_owned(), event.event_id.clone()));
            self.send(Some(to), wire);
            return;
        }
        match &mut event.payload {
            DomainPayload::ProfileJoinPart { join_id, index, data } => {
                self.parts.entry((key.to_owned(), join_id.clone())).or_default().insert(*index, data.clone());
                return;
            }
            DomainPayload::ProfileJoined { parts, digest, state, .. } if *parts > 0 => {
                let kept = self.parts.remove(&(key.to_owned(), event.event_id.clone())).unwrap_or_default();
                let data: Vec<&[u8]> = kept.values().map(Vec::as_slice).collect();
                *state = Some(Box::new(JoinedState::from_parts(&data, *parts, digest).unwrap()));
            }
            _ => {}
        }
        self.offset += 1;
        let m = self.profiles.get_mut(key).unwrap();
        match apply(m, &event, Position { partition: 0, offset: self.offset }, &self.cfg) {
            Ok(fx) => {
                self.ledgers.entry(key.to_owned()).or_default().extend(fx.ledger);
                for out in fx.outbox {
                    self.send_out(out);
                }
            }
            Err(r) => {
                self.seen.remove(&(key.to_owned(), event.event_id.clone()));
                self.rejected.push(r.0);
            }
        }
    }

    /// Sends what the fold wrote; a join's state goes ahead in parts.
    fn send_out(&mut self, mut out: omnifold_core::Outgoing) {
        if let (Some(profile), Some(Payload::ProfileJoined(j))) = (out.join.take(), &mut out.event.payload) {
            let ledger = self.ledgers.get(&profile.key).cloned().unwrap_or_default();
            let state = JoinedState { profile: *profile, ledger, ..JoinedState::default() };
            let (parts, digest) = state.into_parts(PART_BYTES);
            j.parts = parts.len() as u32;
            j.digest = digest;
            for (index, data) in parts.into_iter().enumerate() {
                let part = proto::ProfileJoinPart { join_id: out.event.event_id.clone(), index: index as u32, data };
                let mut e = out.event.clone();
                e.event_id = format!("{}.{index}", out.event.event_id);
                e.payload = Some(Payload::ProfileJoinPart(part));
                self.send(None, e);
            }
        }
        self.send(None, out.event);
    }

    /// Serves the queues in key order until all are empty.
    fn run(&mut self) {
        while let Some(key) = self.queues.iter().find(|(_, q)| !q.is_empty()).map(|(k, _)| k.clone()) {
            self.step(&key);
        }
    }

    /// Serves the queues in the order `picks` chooses, then drains.
    fn run_with(&mut self, picks: &[prop::sample::Index]) {
        for p in picks {
            let busy: Vec<String> = self.queues.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| k.clone()).collect();
            if busy.is_empty() {
                break;
            }
            self.step(&busy[p.index(busy.len())]);
        }
        self.run();
    }

    fn member(&self, key: &str) -> &Member {
        let mut k = key;
        while let Some(to) = self.profiles[k].routes_to.as_deref() {
            k = to;
        }
        &self.profiles[k]
    }
}

fn ev(id: &str, at: i64, channel: proto::Channel, subject: proto::Subject, payload: Payload) -> proto::Event {
    proto::Event {
        event_id: id.into(),
        occurred_at: Some(to_timestamp(at)),
        channel: channel as i32,
        store_id: String::new(),
        subject: Some(subject),
        payload: Some(payload),
    }
}

fn member(id: &str) -> proto::Subject {
    proto::Subject { member_id: id.into(), ..Default::default() }
}

fn anon(id: &str) -> proto::Subject {
    proto::Subject { anonymous_id: id.into(), ..Default::default() }
}

fn ident(t: proto::IdentifierType, v: &str) -> proto::Identifier {
    proto::Identifier { r#type: t as i32, value: v.into() }
}

fn by(i: proto::Identifier) -> proto::Subject {
    proto::Subject { identifiers: vec![i], ..Default::default() }
}

fn order(id: &str, total: i64) -> Payload {
    Payload::OrderPlaced(proto::OrderPlaced {
        order_id: id.into(),
        currency: "CNY".into(),
        lines: vec![],
        total_minor: total,
    })
}

fn view(sku: &str) -> Payload {
    Payload::ProductViewed(proto::ProductViewed {
        sku: sku.into(),
        category: "c".into(),
        price_minor: 100,
        currency: String::new(),
    })
}

fn link(anonymous_id: &str, identifiers: Vec<proto::Identifier>) -> Payload {
    Payload::IdentityLinked(proto::IdentityLinked { anonymous_id: anonymous_id.into(), identifiers })
}

fn merge(from: &str, into: &str) -> Payload {
    Payload::MembersMerged(proto::MembersMerged { from_member_id: from.into(), into_member_id: into.into() })
}

use proto::Channel::{CallCenter, MobileApp, OnlineWeb, StorePos};
use proto::IdentifierType::{DeviceId, Phone};

#[test]
fn a_provisional_profile_joins_the_member_and_its_sale_earns_from_its_own_time() {
    let phone = ident(Phone, "+8613900000001");
    let mut net = Net::new(FoldConfig::default());
    net.send(None, ev("p1", T0, StorePos, by(phone.clone()), order("o-pos", 12_345)));
    net.run();
    assert_eq!(net.profiles["PHONE:+8613900000001"].kind, ProfileKind::Provisional);
    net.send(None, ev("l1", T0 + 3 * DAY, MobileApp, member("m-1"), link("", vec![phone.clone()])));
    net.run();
    let m = net.member("PHONE:+8613900000001");
    assert_eq!(m.key, "m-1");
    assert_eq!(m.purchases.orders, 1);
    // 123.45 at a store: 123 points, pending from the sale, not from the link.
    let earn = net.ledgers["m-1"].iter().find(|e| e.kind == EntryKind::Earn).unwrap();
    assert_eq!((earn.points, earn.at, earn.activates_at), (123, T0, Some(T0 + 7 * DAY)));
    assert_eq!(earn.reason, "joined from PHONE:+8613900000001");
    assert_eq!(m.balance(T0 + 7 * DAY, &net.cfg.loyalty).active, 123);
    // Later sales by phone are forwarded to the member and earn there.
    net.send(None, ev("p2", T0 + 4 * DAY, StorePos, by(phone), order("o-pos-2", 1_000)));
    net.run();
    assert_eq!(net.member("m-1").purchases.orders, 2);
    assert_eq!(net.member("m-1").loyalty.earned, 133);
}

#[test]
fn chains_of_merges_resolve_and_merging_again_changes_nothing() {
    let mut net = Net::new(FoldConfig::default());
    for (id, key, total) in [("a", "m-a", 1_000), ("b", "m-b", 2_000), ("c", "m-c", 3_000)] {
        net.send(None, ev(id, T0, OnlineWeb, member(key), order(&format!("o-{key}"), total)));
    }
    net.send(
        None,
        ev(
            "r1",
            T0 + DAY,
            OnlineWeb,
            member("m-a"),
            Payload::PointsRedemptionRequested(proto::PointsRedemptionRequested {
                request_id: "x".into(),
                points: 5,
                reward: String::new(),
            }),
        ),
    );
    net.send(None, ev("m1", T0 + 8 * DAY, CallCenter, member("m-b"), merge("m-a", "m-b")));
    net.run();
    net.send(None, ev("m2", T0 + 9 * DAY, CallCenter, member("m-c"), merge("m-b", "m-c")));
    net.send(None, ev("m3", T0 + 10 * DAY, CallCenter, member("m-b"), merge("m-a", "m-b"))); // again, via the chain
    net.send(None, ev("v1", T0 + 11 * DAY, OnlineWeb, member("m-a"), view("SKU-1"))); // A → B → C
    net.run();
    assert!(net.rejected.is_empty(), "{:?}", net.rejected);
    let c = net.member("m-a");
    assert_eq!(c.key, "m-c");
    assert_eq!((c.purchases.orders, c.purchases.gross_minor, c.browse.product_views), (3, 6_000, 1));
    assert_eq!(c.merged_members.iter().map(String::as_str).collect::<Vec<_>>(), vec!["m-a", "m-b"]);
    let b = c.balance(T0 + 12 * DAY, &net.cfg.loyalty);
    assert_eq!((b.earned, b.redeemed, b.active), (60, 0, 60), "A's redemption was refused: its points were pending");
    // C's ledger: its own earn, then B's (and A's through B), renumbered.
    let reasons: Vec<String> = net.ledgers["m-c"].iter().map(|e| e.reason.clone()).collect();
    assert_eq!(reasons, vec!["", "merged from m-b", "merged from m-b: merged from m-a"]);
    let seqs: Vec<u64> = net.ledgers["m-c"].iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2]);
}

#[test]
fn unique_identifiers_conflict_and_shared_devices_route_nowhere() {
    let phone = ident(Phone, "+8613900000002");
    let device = ident(DeviceId, "tablet-1");
    let mut net = Net::new(FoldConfig::default());
    net.send(None, ev("l1", T0, MobileApp, member("m-1"), link("", vec![phone.clone(), device.clone()])));
    net.run();
    net.send(None, ev("l2", T0 + DAY, MobileApp, member("m-2"), link("", vec![phone.clone(), device.clone()])));
    net.run();
    assert_eq!(net.rejected, vec!["PHONE:+8613900000002 belongs to member m-1; linking it to member m-2 was refused"]);
    assert_eq!(net.member("PHONE:+8613900000002").key, "m-1");
    // The shared tablet is listed by both, and its own events stay its own.
    assert!(net.profiles["DEVICE_ID:tablet-1"].shared);
    for m in ["m-1", "m-2"] {
        assert!(net.member(m).identifiers.iter().any(|i| i.value == "tablet-1"), "{m}");
    }
    assert!(!net.member("m-2").identifiers.iter().any(|i| i.value == "+8613900000002"));
    net.send(None, ev("d1", T0 + 2 * DAY, OnlineWeb, by(device), view("SKU-9")));
    net.run();
    assert_eq!(net.profiles["DEVICE_ID:tablet-1"].browse.product_views, 1);
    assert_eq!(net.member("m-1").browse.product_views + net.member("m-2").browse.product_views, 0);
}

#[test]
fn with_merge_on_conflict_the_linking_member_merges_into_the_holder() {
    let phone = ident(Phone, "+8613900000003");
    let mut cfg = FoldConfig::default();
    cfg.identity.on_conflict = OnConflict::Merge;
    let mut net = Net::new(cfg);
    net.send(None, ev("l1", T0, MobileApp, member("m-1"), link("", vec![phone.clone()])));
    net.send(None, ev("o2", T0, OnlineWeb, member("m-2"), order("o-2", 5_000)));
    net.run();
    net.send(None, ev("l2", T0 + DAY, MobileApp, member("m-2"), link("", vec![phone])));
    net.run();
    assert!(net.rejected.is_empty(), "{:?}", net.rejected);
    let m = net.member("m-2");
    assert_eq!((m.key.as_str(), m.purchases.orders), ("m-1", 1));
}

#[test]
fn merges_stop_at_the_configured_limit() {
    let mut cfg = FoldConfig::default();
    cfg.identity.max_merged_members = 2;
    let mut net = Net::new(cfg);
    for (i, from) in ["m-x", "m-y", "m-z"].into_iter().enumerate() {
        net.send(None, ev(&format!("o{i}"), T0, OnlineWeb, member(from), view("SKU")));
        net.send(None, ev(&format!("m{i}"), T0 + DAY, CallCenter, member("m-1"), merge(from, "m-1")));
        net.run();
    }
    assert_eq!(net.member("m-1").merged_members.len(), 2);
    assert_eq!(net.rejected.len(), 1);
    assert!(net.rejected[0].contains("identity.max_merged_members"), "{}", net.rejected[0]);
}

/// One person's story, as its events are produced; every key's events in order.
fn story() -> Vec<proto::Event> {
    let phone = ident(Phone, "+8613900000009");
    vec![
        ev("w1", T0, OnlineWeb, anon("ck-1"), view("A")),
        ev("w2", T0 + 1, OnlineWeb, anon("ck-1"), order("o-guest", 3_000)),
        ev("d1", T0, OnlineWeb, member("m-old"), order("o-old", 5_000)),
        ev("a1", T0 + DAY, MobileApp, member("m-1"), link("ck-1", vec![phone.clone()])),
        ev("a2", T0 + DAY, MobileApp, member("m-1"), order("o-app", 20_000)),
        ev("p1", T0 + 2 * DAY, StorePos, by(phone.clone()), order("o-pos", 10_000)),
        ev("p2", T0 + 2 * DAY, StorePos, by(phone), view("B")),
        ev("w3", T0 + 3 * DAY, OnlineWeb, anon("ck-1"), view("C")),
        ev("v1", T0 + 3 * DAY, MobileApp, anon("dev-2"), view("D")),
        ev("v2", T0 + 4 * DAY, MobileApp, member("m-1"), link("dev-2", vec![])),
        ev("m1", T0 + 5 * DAY, CallCenter, member("m-1"), merge("m-old", "m-1")),
        ev("m2", T0 + 6 * DAY, OnlineWeb, member("m-old"), view("E")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_person_ends_up_the_same_whatever_the_timing(picks in prop::collection::vec(any::<prop::sample::Index>(), 0..200)) {
        let mut net = Net::new(FoldConfig::default());
        for e in story() {
            net.send(None, e);
        }
        net.run_with(&picks);
        prop_assert!(net.rejected.is_empty(), "{:?}", net.rejected);
        let m = net.member("m-1");
        prop_assert_eq!(m.key.as_str(), "m-1");
        prop_assert_eq!((m.purchases.orders, m.purchases.gross_minor), (4, 38_000));
        prop_assert_eq!(m.browse.product_views, 5);
        prop_assert_eq!(m.version.events_applied, 12);
        // 30 (guest order, web) + 300 (app) + 100 (store) + 50 (old account).
        let b = m.balance(T0 + 30 * DAY, &net.cfg.loyalty);
        prop_assert_eq!((b.earned, b.active, b.pending), (480, 480, 0));
        for key in ["ck-1", "dev-2", "PHONE:+8613900000009", "m-old"] {
            prop_assert_eq!(net.member(key).key.as_str(), "m-1", "{}", key);
        }
        let sum: i64 = net.ledgers["m-1"].iter().map(|e| e.points).sum();
        prop_assert_eq!(sum, 480);
    }
}
