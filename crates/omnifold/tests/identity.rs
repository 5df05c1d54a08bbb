//! Identity resolution end to end, against a real broker and the real
//! binary: one person across a web cookie, an app login, a POS sale by
//! phone, a second device and a duplicate account; chains of merges; a
//! refused conflict; an event on the wrong partition; and a crash between
//! forwarding an event and committing the batch.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use omnifold_core::time::{DAY, to_timestamp};
use omnifold_proto::v1 as proto;
use prost::Message;
use proto::event::Payload;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tonic::Code;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn phone(v: &str) -> proto::Identifier {
    proto::Identifier { r#type: proto::IdentifierType::Phone as i32, value: v.into() }
}

fn email(v: &str) -> proto::Identifier {
    proto::Identifier { r#type: proto::IdentifierType::Email as i32, value: v.into() }
}

fn by_member(id: &str) -> proto::Subject {
    proto::Subject { member_id: id.into(), ..Default::default() }
}

fn by_anon(id: &str) -> proto::Subject {
    proto::Subject { anonymous_id: id.into(), ..Default::default() }
}

fn by_identifier(i: proto::Identifier) -> proto::Subject {
    proto::Subject { identifiers: vec![i], ..Default::default() }
}

/// A protobuf record keyed like every producer keys it: the subject key.
fn event(
    id: &str,
    days_ago: i64,
    channel: proto::Channel,
    subject: proto::Subject,
    payload: Payload,
) -> (String, Vec<u8>) {
    let key = if !subject.member_id.is_empty() {
        subject.member_id.clone()
    } else if !subject.anonymous_id.is_empty() {
        subject.anonymous_id.clone()
    } else {
        let i = &subject.identifiers[0];
        format!("{}:{}", proto::IdentifierType::try_from(i.r#type).unwrap().as_str_name(), i.value)
    };
    let e = proto::Event {
        event_id: id.into(),
        occurred_at: Some(to_timestamp(now() - days_ago * DAY)),
        channel: channel as i32,
        store_id: String::new(),
        subject: Some(subject),
        payload: Some(payload),
    };
    (key, e.encode_to_vec())
}

fn view(sku: &str) -> Payload {
    Payload::ProductViewed(proto::ProductViewed {
        sku: sku.into(),
        category: "shoes".into(),
        price_minor: 10_000,
        currency: String::new(),
    })
}

fn order(id: &str, total_minor: i64) -> Payload {
    Payload::OrderPlaced(proto::OrderPlaced { order_id: id.into(), currency: "CNY".into(), lines: vec![], total_minor })
}

fn link(anonymous_id: &str, identifiers: Vec<proto::Identifier>) -> Payload {
    Payload::IdentityLinked(proto::IdentityLinked { anonymous_id: anonymous_id.into(), identifiers })
}

fn merged(from: &str, into: &str) -> Payload {
    Payload::MembersMerged(proto::MembersMerged { from_member_id: from.into(), into_member_id: into.into() })
}

async fn lookup(service: &Service, i: proto::Identifier) -> Result<proto::LookupIdentifierResponse, tonic::Status> {
    let mut c = service.profiles().await;
    c.lookup_identifier(proto::LookupIdentifierRequest { identifier: Some(i) }).await.map(|r| r.into_inner())
}

async fn profile_by(service: &Service, r: proto::member_ref::Ref) -> Result<proto::Profile, tonic::Status> {
    let mut c = service.profiles().await;
    let req =
        proto::GetProfileRequest { member: Some(proto::MemberRef { r#ref: Some(r) }), read_mask: None, as_of: None };
    c.get_profile(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_person_across_cookie_login_pos_second_device_and_duplicate_account() {
    use proto::Channel::{MobileApp, OnlineWeb, StorePos};
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("story", 4);
    let ann_phone = phone("+8613900000001");
    let stream = vec![
        // An older duplicate account with an email and an order (50 points).
        event("d1", 25, OnlineWeb, by_member("m-ann-old"), link("", vec![email("Ann@Example.com")])),
        event("d2", 25, OnlineWeb, by_member("m-ann-old"), order("o-old", 5_000)),
        // Anonymous browsing on the web.
        event("w1", 20, OnlineWeb, by_anon("ck-1"), view("SKU-A")),
        event("w2", 19, OnlineWeb, by_anon("ck-1"), view("SKU-B")),
        // Registration in the app: the cookie and the phone join the member.
        event("a1", 18, MobileApp, by_member("m-ann"), link("ck-1", vec![ann_phone.clone()])),
        event("a2", 18, MobileApp, by_member("m-ann"), order("o-app", 20_000)), // 300 points (app 1.5)
        // A sale at a store, by phone number only: 100 points.
        event("p1", 15, StorePos, by_identifier(ann_phone.clone()), order("o-pos", 10_000)),
        // A second device, before and after it logs in.
        event("v1", 10, MobileApp, by_anon("dev-2"), view("SKU-C")),
        event("v2", 9, MobileApp, by_member("m-ann"), link("dev-2", vec![])),
        event("v3", 8, MobileApp, by_anon("dev-2"), view("SKU-D")),
        // The duplicate account is merged, then used once more.
        event("m1", 5, proto::Channel::CallCenter, by_member("m-ann"), merged("m-ann-old", "m-ann")),
        event("m2", 4, OnlineWeb, by_member("m-ann-old"), view("SKU-E")),
    ];
    setup.produce(&stream);
    service.wait_consumed(&setup, stream.len() as i64).await;

    let ann = get(&service, "m-ann").await.unwrap();
    let b = ann.browse.as_ref().unwrap();
    assert_eq!(b.product_views, 5, "views from the cookie, the second device and the merged account");
    let mut skus: Vec<&str> = b.recent_products.iter().map(|r| r.sku.as_str()).collect();
    skus.sort_unstable();
    assert_eq!(skus, vec!["SKU-A", "SKU-B", "SKU-C", "SKU-D", "SKU-E"]);
    let p = ann.purchases.as_ref().unwrap();
    assert_eq!((p.orders, p.gross_minor), (3, 35_000));
    let pos = ann.channels.iter().find(|c| c.channel == StorePos as i32).unwrap();
    assert_eq!((pos.orders, pos.spend_minor), (1, 10_000));
    let mut aliases = ann.aliases.clone();
    aliases.sort();
    assert_eq!(aliases, vec!["ck-1", "dev-2", "m-ann-old"]);
    assert_eq!(ann.merged_member_ids, vec!["m-ann-old"]);
    let mut ids: Vec<(i32, &str)> = ann.identifiers.iter().map(|i| (i.r#type, i.value.as_str())).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            (proto::IdentifierType::Phone as i32, "+8613900000001"),
            (proto::IdentifierType::Email as i32, "ann@example.com")
        ]
    );

    let mut loyalty = service.loyalty().await;
    let balance = loyalty
        .get_balance(proto::GetBalanceRequest { member: member("m-ann"), as_of: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.lifetime_earned, 300 + 100 + 50, "the app, POS and merged account's orders");
    assert_eq!(balance.active_points + balance.pending_points, 450);

    // Every identifier, anonymous id and the merged member id answers.
    let l = lookup(&service, ann_phone.clone()).await.unwrap();
    assert_eq!((l.member_id.as_str(), l.resolved_via.as_str()), ("m-ann", "identifier"));
    let l = lookup(&service, email("ann@example.com")).await.unwrap();
    assert_eq!(l.member_id, "m-ann");
    for (r, via) in [
        (proto::member_ref::Ref::AnonymousId("ck-1".into()), "anonymous_id"),
        (proto::member_ref::Ref::AnonymousId("dev-2".into()), "anonymous_id"),
        (proto::member_ref::Ref::MemberId("m-ann-old".into()), "merged_member"),
        (proto::member_ref::Ref::Identifier(ann_phone.clone()), "identifier"),
    ] {
        let p = profile_by(&service, r.clone()).await.unwrap_or_else(|e| panic!("{r:?}: {e}"));
        assert_eq!(p.member_id, "m-ann", "{r:?} ({via})");
    }
    // Points can be redeemed by phone number too.
    let r = loyalty
        .get_balance(proto::GetBalanceRequest {
            member: Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::Identifier(ann_phone)) }),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.member_id, "m-ann");
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_chains_conflicts_provisional_profiles_and_misrouted_events() {
    use proto::Channel::{CallCenter, OnlineWeb, StorePos};
    let broker = Broker::start();
    let setup = Setup::new(&broker, "rules", 4);
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start_with_metrics(&setup, data.path());
    let bob_card = proto::Identifier { r#type: proto::IdentifierType::LoyaltyCard as i32, value: "CARD-77".into() };
    let stream = vec![
        // A provisional profile: a sale by card before anyone holds the card.
        event("c1", 12, StorePos, by_identifier(bob_card.clone()), order("o-card", 8_000)),
        event("c2", 11, StorePos, by_identifier(bob_card.clone()), view("SKU-1")),
        event("b1", 10, OnlineWeb, by_member("m-bob"), link("", vec![bob_card.clone()])),
        // Chains: A into B, then B into C.
        event("x1", 9, OnlineWeb, by_member("m-a"), order("o-a", 1_000)),
        event("x2", 9, OnlineWeb, by_member("m-b"), order("o-b", 2_000)),
        event("x3", 9, OnlineWeb, by_member("m-c"), order("o-c", 3_000)),
        event("x4", 8, CallCenter, by_member("m-b"), merged("m-a", "m-b")),
    ];
    setup.produce(&stream);
    service.wait_consumed(&setup, stream.len() as i64).await;
    let second = vec![
        event("x5", 7, CallCenter, by_member("m-c"), merged("m-b", "m-c")),
        // A conflict: m-eve links Bob's card, which is unique per member.
        event("e1", 6, OnlineWeb, by_member("m-eve"), link("", vec![bob_card.clone()])),
    ];
    setup.produce(&second);
    service.wait_consumed(&setup, (stream.len() + second.len()) as i64).await;

    // The provisional profile joined Bob, and its sale earned his points.
    let bob = get(&service, "m-bob").await.unwrap();
    assert_eq!(bob.purchases.as_ref().unwrap().orders, 1);
    assert_eq!(bob.browse.as_ref().unwrap().product_views, 1);
    let card = lookup(&service, bob_card.clone()).await.unwrap();
    assert_eq!(
        (card.member_id.as_str(), card.path.clone()),
        ("m-bob", vec!["LOYALTY_CARD:CARD-77".to_owned(), "m-bob".to_owned()])
    );
    let mut loyalty = service.loyalty().await;
    let b = loyalty.get_balance(proto::GetBalanceRequest { member: member("m-bob"), as_of: None }).await.unwrap();
    assert_eq!(b.into_inner().lifetime_earned, 80);

    // The chain resolves: A → B → C, with all three orders in C.
    let c = get(&service, "m-c").await.unwrap();
    assert_eq!(c.purchases.as_ref().unwrap().orders, 3);
    let a = profile_by(&service, proto::member_ref::Ref::MemberId("m-a".into())).await.unwrap();
    assert_eq!(a.member_id, "m-c");
    let mut aliases = c.aliases.clone();
    aliases.sort();
    assert_eq!(aliases, vec!["m-a", "m-b"]);

    // The conflicting link was refused into the dead-letter topic with the
    // reason; the card still belongs to Bob and Eve does not hold it.
    let letters = setup.dead_letters(1);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].kind, "rule");
    assert_eq!(
        letters[0].reason,
        "LOYALTY_CARD:CARD-77 belongs to member m-bob; linking it to member m-eve was refused"
    );
    assert_eq!(lookup(&service, bob_card.clone()).await.unwrap().member_id, "m-bob");
    let eve = get(&service, "m-eve").await.unwrap();
    assert!(eve.identifiers.is_empty());

    // An event produced with another partitioner lands on the wrong
    // partition: it is forwarded to its member, never folded there.
    let key = "m-c";
    let right = omnifold_core::partition::partition_for(key.as_bytes(), 4) as i32;
    let wrong = (right + 1) % 4;
    let (_, value) = event("w1", 1, OnlineWeb, by_member(key), order("o-wrong", 4_000));
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &setup.brokers).create().unwrap();
    producer
        .send(FutureRecord::to(&setup.topic).key(key).partition(wrong).payload(&value), Duration::from_secs(10))
        .await
        .unwrap();
    service.wait_consumed(&setup, (stream.len() + second.len() + 1) as i64).await;
    let c = get(&service, "m-c").await.unwrap();
    assert_eq!(c.purchases.as_ref().unwrap().orders, 4, "the misrouted order reached its member once");
    let metrics = service.metrics().await;
    let line = metrics.lines().find(|l| l.starts_with("omnifold_events_misrouted_total")).unwrap_or_default();
    assert_eq!(line.split_whitespace().last(), Some("1"), "{metrics}");

    // Refused requests say what to fix.
    let err = lookup(&service, proto::Identifier { r#type: 0, value: "x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = lookup(&service, phone("+8613900000099")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// A plain HTTP GET on loopback (the Prometheus endpoint).
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_forwarding_and_committing_applies_the_event_once() {
    use proto::Channel::{MobileApp, OnlineWeb};
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "crash", 4);
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let link_events = vec![
        event("k1", 9, OnlineWeb, by_anon("ck-9"), view("SKU-1")),
        event("k2", 8, MobileApp, by_member("m-kim"), link("ck-9", vec![])),
    ];
    let service = Service::start(&setup, data.path());
    setup.produce(&link_events);
    service.wait_consumed(&setup, 2).await;
    drop(service);

    // The cookie now routes to Kim. With the failpoint, the instance dies
    // right after forwarding the order and before committing its batch.
    setup.extra_env.insert("OMNIFOLD_KAFKA__GROUP_ID".into(), "crash.group-2".into());
    setup.extra_env.insert("OMNIFOLD_FAILPOINT".into(), "after_outbox".into());
    let mut crashing = Service::start(&setup, data.path());
    setup.produce(&[event("k3", 7, OnlineWeb, by_anon("ck-9"), order("o-9", 12_300))]);
    eventually("the instance aborts at the failpoint", Duration::from_secs(60), || {
        let running = crashing.is_running();
        async move { (!running).then_some(()) }
    })
    .await;

    // Restarted: the order is forwarded again (same event id) and applied once.
    setup.extra_env.remove("OMNIFOLD_FAILPOINT");
    setup.extra_env.insert("OMNIFOLD_KAFKA__GROUP_ID".into(), "crash.group-3".into());
    let service = Service::start(&setup, data.path());
    service.wait_consumed(&setup, 3).await;
    let kim = get(&service, "m-kim").await.unwrap();
    let p = kim.purchases.as_ref().unwrap();
    assert_eq!((p.orders, p.gross_minor), (1, 12_300));
    assert_eq!(kim.browse.as_ref().unwrap().product_views, 1);
    let mut loyalty = service.loyalty().await;
    let b = loyalty.get_balance(proto::GetBalanceRequest { member: member("m-kim"), as_of: None }).await.unwrap();
    assert_eq!(b.into_inner().lifetime_earned, 123);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_instance_answers_lookups_for_every_identifier() {
    let broker = Broker::start();
    let setup = Setup::new(&broker, "twins", 4);
    setup.create_topics();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Service::start(&setup, data_a.path());
    let b = Service::start(&setup, data_b.path());
    // Both instances share one consumer group: wait until B owns partitions.
    let mut round = 0;
    eventually("the second instance owns partitions", Duration::from_secs(60), || {
        round += 1;
        let (setup, b) = (&setup, &b);
        async move {
            setup.probe(round).await;
            b.next_offsets().await.iter().any(|n| *n > 0).then_some(())
        }
    })
    .await;

    let members: Vec<String> = (0..8).map(|i| format!("m-twin-{i}")).collect();
    let phones: Vec<proto::Identifier> = (0..8).map(|i| phone(&format!("+86139000001{i:02}"))).collect();
    let links: Vec<(String, Vec<u8>)> = members
        .iter()
        .zip(&phones)
        .map(|(m, p)| {
            event(&format!("link-{m}"), 1, proto::Channel::MobileApp, by_member(m), link("", vec![p.clone()]))
        })
        .collect();
    setup.produce(&links);

    // Every instance answers for every identifier, from its replica of the
    // identity index, including members whose partitions it does not own.
    for service in [&a, &b] {
        for (m, p) in members.iter().zip(&phones) {
            eventually(&format!("{m} by phone"), Duration::from_secs(60), || async {
                lookup(service, p.clone()).await.ok().filter(|l| l.member_id == *m).map(|_| ())
            })
            .await;
        }
    }
    // And both answer every member's profile, the same one: the instance
    // that does not own a member's partition forwards to the one that does.
    let owned_by = |s: &proto::GetPartitionStatusResponse| -> Vec<u32> {
        s.partitions.iter().filter(|p| p.local).map(|p| p.partition).collect()
    };
    eventually("every partition served, some by each instance", Duration::from_secs(60), || async {
        let (on_a, on_b) = (a.status().await, b.status().await);
        let served = on_a.partitions.iter().all(|p| p.owner_state == "serving");
        (served && !owned_by(&on_a).is_empty() && !owned_by(&on_b).is_empty()).then_some(())
    })
    .await;
    for m in &members {
        // The group may still move a partition (UNAVAILABLE: ask again).
        let (on_a, on_b) = eventually(&format!("{m} through both"), Duration::from_secs(60), || async {
            match (get(&a, m).await, get(&b, m).await) {
                (Ok(x), Ok(y)) => Some((x, y)),
                (Err(e), _) | (_, Err(e)) => {
                    assert_eq!(e.code(), Code::Unavailable, "{m}: {e:?}");
                    None
                }
            }
        })
        .await;
        assert_eq!(
            proto::Profile { as_of: None, ..on_a },
            proto::Profile { as_of: None, ..on_b },
            "{m} is answered the same by both instances"
        );
    }
}
