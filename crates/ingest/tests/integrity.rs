//! The processor against real RocksDB, for what issue 9 found: internal
//! events forged by a producer, joins of any size, retries across merges,
//! and a dedupe that depends on the log alone.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use std::sync::Arc;

use omnifold_core::FoldConfig;
use omnifold_core::partition::partition_for;
use omnifold_core::time::{DAY, to_timestamp};
use omnifold_ingest::{LocalLog, Processor, Record, Signer};
use omnifold_proto::v1 as proto;
use omnifold_store::{Store, StoreConfig};
use prost::Message;
use proto::event::Payload;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const SECRET: &str = "a-test-secret-of-at-least-32-characters";

fn store() -> (tempfile::TempDir, Arc<Store>) {
    store_with(StoreConfig::default())
}

fn store_with(config: StoreConfig) -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..config }).unwrap();
    (dir, store)
}

fn processor(store: &Arc<Store>) -> Processor {
    let fold = Arc::new(FoldConfig::default().validate().unwrap());
    Processor::new(store.clone(), fold, "t", 65536, Signer::new(SECRET, &[]))
}

fn event(id: &str, at: i64, channel: proto::Channel, subject: proto::Subject, payload: Payload) -> proto::Event {
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
        category: "shoes".into(),
        price_minor: 100,
        currency: String::new(),
    })
}

fn link(anonymous_id: &str) -> Payload {
    Payload::IdentityLinked(proto::IdentityLinked { anonymous_id: anonymous_id.into(), identifiers: vec![] })
}

fn merge(from: &str, into: &str) -> Payload {
    Payload::MembersMerged(proto::MembersMerged { from_member_id: from.into(), into_member_id: into.into() })
}

fn redeem(request: &str, points: i64) -> Payload {
    Payload::PointsRedemptionRequested(proto::PointsRedemptionRequested {
        request_id: request.into(),
        points,
        reward: "voucher".into(),
    })
}

/// Folds `events` through a local log of `partitions` partitions.
fn fold_all(p: &Processor, partitions: u32, events: &[proto::Event]) -> omnifold_ingest::LocalReplay {
    let mut log = LocalLog::new(p, "t", partitions, 500).unwrap();
    for e in events {
        log.append(e.encode_to_vec());
    }
    log.drain().unwrap();
    log.done
}

/// The member a key resolves to, following routes.
fn resolved(store: &Store, partitions: u32, key: &str) -> omnifold_core::Member {
    let mut k = key.to_owned();
    for _ in 0..16 {
        let m = store.member(partition_for(k.as_bytes(), partitions), &k).unwrap().unwrap();
        match &m.routes_to {
            Some(to) => k = to.clone(),
            None => return m,
        }
    }
    panic!("{key} routes in a loop");
}

#[test]
fn a_crafted_join_that_would_mint_points_is_refused_and_the_balance_does_not_move() {
    let (_dir, store) = store();
    let p = processor(&store);
    // m-1 earns 100 points.
    let earn = event("o1", T0, proto::Channel::StorePos, member("m-1"), order("o-1", 10_000)).encode_to_vec();
    let processed = p.process(0, &[Record::new(0, Some(b"m-1"), Some(&earn))]).unwrap();
    p.commit(processed).unwrap();
    let before = store.member(0, "m-1").unwrap().unwrap();

    // An attacker with write access to the topic sends a join of a "member"
    // holding a lot of a million points, a claim of someone's phone, and an
    // order under an omnifold-route header, none signed (or signed with a
    // guessed secret).
    let rich = omnifold_core::join::JoinedState {
        profile: {
            let mut m = omnifold_core::Member::new("m-ghost", omnifold_core::ProfileKind::KnownMember);
            m.loyalty.earned = 1_000_000;
            m.loyalty.lots.insert(omnifold_core::loyalty::Lot {
                seq: 0,
                order_id: None,
                channel: omnifold_core::Channel::CallCenter,
                points: 1_000_000,
                remaining: 1_000_000,
                activates_at: T0,
                expires_at: T0 + 400 * DAY,
            });
            m.version.events_applied = 1;
            m
        },
        ..Default::default()
    };
    let (parts, digest) = rich.into_parts(1 << 20);
    let part = event(
        "joined-x.0",
        T0 + DAY,
        proto::Channel::CallCenter,
        member("m-1"),
        Payload::ProfileJoinPart(proto::ProfileJoinPart {
            join_id: "joined-x".into(),
            index: 0,
            data: parts[0].clone(),
        }),
    )
    .encode_to_vec();
    let join = event(
        "joined-x",
        T0 + DAY,
        proto::Channel::CallCenter,
        member("m-1"),
        Payload::ProfileJoined(proto::ProfileJoined {
            from_key: "m-ghost".into(),
            identifier: None,
            from_kind: "member".into(),
            parts: 1,
            digest,
        }),
    )
    .encode_to_vec();
    let claim = event(
        "claim-x",
        T0 + DAY,
        proto::Channel::CallCenter,
        proto::Subject {
            identifiers: vec![proto::Identifier {
                r#type: proto::IdentifierType::Phone as i32,
                value: "+8613900000001".into(),
            }],
            ..Default::default()
        },
        Payload::IdentityClaimed(proto::IdentityClaimed {
            member_id: "m-attacker".into(),
            merge: false,
            cause_event_id: "x".into(),
        }),
    )
    .encode_to_vec();
    let routed = event("o2", T0 + DAY, proto::Channel::StorePos, anon("ck-1"), order("o-2", 99_900)).encode_to_vec();
    let guessed = Signer::new("not-the-cluster-secret-but-long-enough", &[]).sign(Some(b"m-1"), None, &join);
    let records = [
        Record::new(1, Some(b"m-1"), Some(&part)),
        Record { signature: Some(guessed.as_bytes()), ..Record::new(2, Some(b"m-1"), Some(&join)) },
        Record::new(3, Some(b"PHONE:+8613900000001"), Some(&claim)),
        Record { route: Some("m-1"), ..Record::new(4, Some(b"m-1"), Some(&routed)) },
    ];
    let processed = p.process(0, &records).unwrap();
    let refused: Vec<(&str, i64)> = processed.dead_letters.iter().map(|d| (d.kind, d.offset)).collect();
    assert_eq!(refused, vec![("forged", 1), ("forged", 2), ("forged", 3), ("forged", 4)]);
    assert!(processed.dead_letters[1].reason.contains("profileJoined events are written only by omnifold"));
    assert!(processed.dead_letters[3].reason.contains("the omnifold-route header is written only by omnifold"));
    assert_eq!(processed.applied, 0);
    p.commit(processed).unwrap();
    assert_eq!(store.member(0, "m-1").unwrap().unwrap(), before, "the balance did not move");
    assert!(store.join_parts(0, "m-1", None).unwrap().is_empty(), "no forged part is kept");
}

#[test]
fn records_omnifold_writes_are_signed_and_accepted_back() {
    let (_dir, store) = store();
    let p = processor(&store);
    // A cookie's history, then a login: the claim, parts and join omnifold
    // writes carry a signature the same cluster secret accepts.
    let events = [
        event("v1", T0, proto::Channel::OnlineWeb, anon("ck-1"), view("A")),
        event("l1", T0 + DAY, proto::Channel::MobileApp, member("m-1"), link("ck-1")),
    ];
    let done = fold_all(&p, 3, &events);
    assert!(done.dead_letters.is_empty(), "{:?}", done.dead_letters);
    let m = resolved(&store, 3, "ck-1");
    assert_eq!((m.key.as_str(), m.browse.product_views), ("m-1", 1));
    // Another instance with the same secret accepts them; one without does not.
    let claim = event(
        "c1",
        T0,
        proto::Channel::MobileApp,
        anon("ck-2"),
        Payload::IdentityClaimed(proto::IdentityClaimed {
            member_id: "m-2".into(),
            merge: false,
            cause_event_id: "x".into(),
        }),
    )
    .encode_to_vec();
    let sig = Signer::new(SECRET, &[]).sign(Some(b"ck-2"), None, &claim);
    let rec = Record { signature: Some(sig.as_bytes()), ..Record::new(0, Some(b"ck-2"), Some(&claim)) };
    let (_d2, other) = store_pair();
    let accepted = processor(&other).process(0, &[rec]).unwrap();
    assert!(accepted.dead_letters.is_empty());
    let stranger = Processor::new(
        other.clone(),
        Arc::new(FoldConfig::default().validate().unwrap()),
        "t",
        65536,
        Signer::new("another-cluster-entirely-0123456789", &[]),
    );
    assert_eq!(stranger.process(0, &[rec]).unwrap().dead_letters[0].kind, "forged");
}

fn store_pair() -> (tempfile::TempDir, Arc<Store>) {
    store()
}

#[test]
fn an_anonymous_history_of_ten_thousand_events_joins_a_member_completely() {
    // With kept history, so the joined events must come along too.
    let (_dir, store) = store_with(StoreConfig { keep_history: true, ..StoreConfig::default() });
    // Small parts, so the join travels in many of them.
    let p = processor(&store).with_join_part_bytes(4096);
    let mut events: Vec<proto::Event> = (0..10_000)
        .map(|i| {
            event(&format!("v{i}"), T0 + i * 60_000, proto::Channel::OnlineWeb, anon("ck-1"), view(&format!("S{i}")))
        })
        .collect();
    events.push(event("o1", T0 + 8 * DAY, proto::Channel::OnlineWeb, anon("ck-1"), order("o-1", 25_000)));
    events.push(event("l1", T0 + 9 * DAY, proto::Channel::MobileApp, member("m-1"), link("ck-1")));
    let done = fold_all(&p, 4, &events);
    assert!(done.dead_letters.is_empty(), "{:?}", done.dead_letters.first());
    let m = resolved(&store, 4, "ck-1");
    assert_eq!(m.key, "m-1");
    assert_eq!(m.browse.product_views, 10_000);
    assert_eq!(m.version.events_applied, 10_002);
    assert_eq!((m.purchases.orders, m.purchases.gross_minor), (1, 25_000));
    assert_eq!(m.loyalty.earned, 250, "the guest order earns once it joins");
    let pm = partition_for(b"m-1", 4);
    assert_eq!(store.history(pm, "m-1").count(), 10_002, "every event is kept for reads as of the past");
    assert!(store.join_parts(pm, "m-1", None).unwrap().is_empty(), "the parts are dropped once applied");
}

#[test]
fn two_members_with_a_thousand_orders_each_merge_completely() {
    let (_dir, store) = store();
    let p = processor(&store).with_join_part_bytes(8192);
    let mut events = Vec::new();
    for (m, base) in [("m-a", 0), ("m-b", 1_000)] {
        for i in 0..1_000 {
            let id = format!("{m}-{i}");
            events.push(event(&id, T0 + (base + i) * 60_000, proto::Channel::StorePos, member(m), order(&id, 100)));
        }
    }
    events.push(event("r1", T0 + 10 * DAY, proto::Channel::MobileApp, member("m-a"), redeem("rq-1", 300)));
    events.push(event("mg", T0 + 11 * DAY, proto::Channel::CallCenter, member("m-b"), merge("m-a", "m-b")));
    let done = fold_all(&p, 4, &events);
    assert!(done.dead_letters.is_empty(), "{:?}", done.dead_letters.first());
    let m = resolved(&store, 4, "m-a");
    assert_eq!(m.key, "m-b");
    assert_eq!((m.purchases.orders, m.purchases.gross_minor), (2_000, 200_000));
    assert_eq!((m.loyalty.earned, m.loyalty.redeemed), (2_000, 300));
    let pb = partition_for(b"m-b", 4);
    // m-a's 1,000 earn entries and its redemption are in m-b's ledger.
    assert_eq!(store.ledger(pb, "m-b", None).count(), 2_001);
    let b = m.balance(T0 + 30 * DAY, &FoldConfig::default().validate().unwrap().loyalty);
    assert_eq!(b.active + b.pending, 1_700);
}

#[test]
fn a_redemption_decided_before_a_merge_stays_decided_after_it() {
    let (_dir, store) = store();
    let p = processor(&store);
    let mut log = LocalLog::new(&p, "t", 4, 500).unwrap();
    for e in [
        // 1,000 points: enough to spend rq-1 twice, were it decided twice.
        event("o1", T0, proto::Channel::StorePos, member("m-a"), order("o-1", 100_000)),
        event("r1", T0 + 10 * DAY, proto::Channel::MobileApp, member("m-a"), redeem("rq-1", 300)),
        event("mg", T0 + 11 * DAY, proto::Channel::CallCenter, member("m-b"), merge("m-a", "m-b")),
    ] {
        log.append(e.encode_to_vec());
    }
    log.drain().unwrap();
    // The app retries rq-1 after the merge: the API resolves m-a to m-b and
    // appends it for m-b, under another event id; an old copy keyed by m-a
    // arrives late too and is forwarded to m-b.
    for e in [
        event("r1-retry", T0 + 12 * DAY, proto::Channel::MobileApp, member("m-b"), redeem("rq-1", 300)),
        event("r1-copy", T0 + 12 * DAY, proto::Channel::MobileApp, member("m-a"), redeem("rq-1", 300)),
    ] {
        log.append(e.encode_to_vec());
    }
    log.drain().unwrap();
    assert!(log.done.dead_letters.is_empty(), "{:?}", log.done.dead_letters);
    let m = resolved(&store, 4, "m-a");
    assert_eq!(m.key, "m-b");
    assert_eq!(m.loyalty.redeemed, 300, "spent once");
    let pb = partition_for(b"m-b", 4);
    let v = store.verdicts(pb, &[("m-b", "rq-1")]).unwrap().remove(0).expect("the verdict moved with the merge");
    assert_eq!((v.points, v.event_id.as_str()), (300, "r1"));
    let redemptions = store
        .ledger(pb, "m-b", None)
        .map(|e| e.unwrap())
        .filter(|e| e.kind == omnifold_core::loyalty::EntryKind::Redeem)
        .count();
    assert_eq!(redemptions, 1);
}

#[test]
fn what_counts_as_a_duplicate_depends_only_on_the_log() {
    let retention = StoreConfig::default().dedupe_retention_hours as i64 * 3_600_000;
    let (_dir, store) = store();
    let p = processor(&store);
    let search = |id: &str, at: i64| {
        event(
            id,
            at,
            proto::Channel::OnlineWeb,
            member("m"),
            Payload::SearchPerformed(proto::SearchPerformed { query: id.into() }),
        )
        .encode_to_vec()
    };
    let (a, b, a_late, c) =
        (search("a", T0), search("b", T0 + retention + DAY), search("a", T0), search("c", T0 + DAY / 2));
    let run = |p: &Processor, offset: i64, v: &[u8]| {
        let done = p.process(0, &[Record::new(offset, Some(b"m"), Some(v))]).unwrap();
        let out = (done.applied, done.duplicates, done.dead_letters.iter().map(|d| d.kind).collect::<Vec<_>>());
        p.commit(done).unwrap();
        out
    };
    assert_eq!(run(&p, 0, &a), (1, 0, vec![]));
    assert_eq!(run(&p, 1, &a), (0, 1, vec![]), "within the window: a duplicate");
    assert_eq!(run(&p, 2, &b), (1, 0, vec![]), "event time moves past a's window");
    // A copy of `a` now cannot be told from a new event: refused, never applied twice.
    assert_eq!(run(&p, 3, &a_late), (0, 0, vec!["too_late"]));
    assert_eq!(run(&p, 4, &c), (0, 0, vec!["too_late"]), "a new but too old event is refused the same way");
    assert_eq!(store.member(0, "m").unwrap().unwrap().browse.searches, 2);

    // Expired markers go at the next compaction, whenever that happens.
    assert_eq!(store.stored_markers(0).unwrap(), 2);
    store.compact();
    assert_eq!(store.stored_markers(0).unwrap(), 1, "a's marker is gone, b's stays");

    // A replay of the same log into a store that never compacts decides the same.
    let (_d2, replayed) = store_pair();
    let p2 = processor(&replayed);
    let decisions: Vec<_> = [&a, &a, &b, &a_late, &c].iter().enumerate().map(|(i, v)| run(&p2, i as i64, v)).collect();
    assert_eq!(decisions[3], (0, 0, vec!["too_late"]));
    assert_eq!(replayed.member(0, "m").unwrap(), store.member(0, "m").unwrap());
}
