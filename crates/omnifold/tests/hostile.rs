//! What issue 9 found, tried again against a real broker and the real
//! binary: an absurd adjustment, a long anonymous history joining at login,
//! internal events forged by a producer, a retry after a merge, a crash
//! halfway through a join, and a topic whose partition count changed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::time::Duration;

use common::*;
use omnifold_proto::v1 as proto;
use prost::Message;

fn member_json(id: &str) -> String {
    format!(r#"{{"memberId":"{id}"}}"#)
}

async fn balance(service: &Service, id: &str) -> proto::Balance {
    let mut c = service.loyalty().await;
    c.get_balance(proto::GetBalanceRequest { member: member(id), as_of: None }).await.unwrap().into_inner()
}

/// An order 30 days ago: 1,000 active points.
fn thousand_points(m: &str) -> (String, Vec<u8>) {
    let order = r#""orderPlaced":{"orderId":"o-1","currency":"CNY","totalMinor":"100000"}"#;
    (m.into(), json_event(&format!("{m}-o1"), &days_ago(30.0), "STORE_POS", &member_json(m), order))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adjustment_of_i64_min_points_is_a_dead_letter_and_the_balance_does_not_move() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("hostile-adjust", 2);
    setup.produce(&[thousand_points("m-1")]);
    service.wait_consumed(&setup, 1).await;
    assert_eq!(balance(&service, "m-1").await.active_points, 1_000);
    let evil = r#""pointsAdjusted":{"delta":"-9223372036854775808","reason":"x","actor":"y"}"#;
    setup.produce(&[("m-1".into(), json_event("evil", &days_ago(1.0), "CALL_CENTER", &member_json("m-1"), evil))]);
    service.wait_consumed(&setup, 2).await;
    let letters = setup.dead_letters(1);
    assert_eq!(letters[0].kind, "validation");
    assert!(letters[0].reason.contains("pointsAdjusted.delta") && letters[0].reason.contains("fold.limits.max_points"));
    assert_eq!(balance(&service, "m-1").await.active_points, 1_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn six_hundred_anonymous_views_join_the_member_at_login() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("hostile-join", 3);
    let anon = r#"{"anonymousId":"ck-big"}"#;
    let mut events: Vec<(String, Vec<u8>)> = (0..600)
        .map(|i| {
            let view = format!(r#""productViewed":{{"sku":"SKU-{i}","category":"c{}","priceMinor":"1999"}}"#, i % 7);
            (
                "ck-big".to_owned(),
                json_event(&format!("v{i}"), &days_ago(70.0 - i as f64 * 0.1), "ONLINE_WEB", anon, &view),
            )
        })
        .collect();
    let link = r#""identityLinked":{"anonymousId":"ck-big"}"#;
    events.push(("m-big".into(), json_event("login", &days_ago(1.0), "MOBILE_APP", &member_json("m-big"), link)));
    setup.produce(&events);
    service.wait_consumed(&setup, events.len() as i64).await;
    let p = get(&service, "m-big").await.unwrap();
    assert_eq!(p.browse.unwrap().product_views, 600);
    assert_eq!(p.version.unwrap().events_applied, 601);
    assert!(setup.dead_letters(0).is_empty());
}

/// The wire bytes of a `profileJoined` handing `m-1` a member with a lot of
/// a million points, as an attacker would craft it (no signature).
fn crafted_join(into: &str) -> Vec<(String, Vec<u8>)> {
    let mut ghost = omnifold_core::Member::new("m-ghost", omnifold_core::ProfileKind::KnownMember);
    ghost.loyalty.earned = 1_000_000;
    ghost.loyalty.lots.insert(omnifold_core::loyalty::Lot {
        seq: 0,
        order_id: None,
        channel: omnifold_core::Channel::CallCenter,
        points: 1_000_000,
        remaining: 1_000_000,
        activates_at: now_ms() - 86_400_000,
        expires_at: now_ms() + 300 * 86_400_000,
    });
    ghost.version.events_applied = 1;
    let state = omnifold_core::join::JoinedState { profile: ghost, ..Default::default() };
    let (parts, digest) = state.into_parts(60_000);
    let envelope = |id: &str, payload: proto::event::Payload| proto::Event {
        event_id: id.into(),
        occurred_at: Some(omnifold_core::time::to_timestamp(now_ms() - 3_600_000)),
        channel: proto::Channel::CallCenter as i32,
        store_id: String::new(),
        subject: Some(proto::Subject { member_id: into.into(), ..Default::default() }),
        payload: Some(payload),
    };
    let part = envelope(
        "joined-evil.0",
        proto::event::Payload::ProfileJoinPart(proto::ProfileJoinPart {
            join_id: "joined-evil".into(),
            index: 0,
            data: parts[0].clone(),
        }),
    );
    let join = envelope(
        "joined-evil",
        proto::event::Payload::ProfileJoined(proto::ProfileJoined {
            from_key: "m-ghost".into(),
            identifier: None,
            from_kind: "member".into(),
            parts: 1,
            digest,
        }),
    );
    vec![(into.into(), part.encode_to_vec()), (into.into(), join.encode_to_vec())]
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_events_forged_by_a_producer_are_refused_and_mint_nothing() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("hostile-forged", 2);
    setup.produce(&[thousand_points("m-1")]);
    service.wait_consumed(&setup, 1).await;
    let before = balance(&service, "m-1").await;
    let mut records = crafted_join("m-1");
    // A claim of someone else's phone for the attacker.
    let claim = proto::Event {
        event_id: "claim-evil".into(),
        occurred_at: Some(omnifold_core::time::to_timestamp(now_ms() - 3_600_000)),
        channel: proto::Channel::CallCenter as i32,
        store_id: String::new(),
        subject: Some(proto::Subject {
            identifiers: vec![proto::Identifier {
                r#type: proto::IdentifierType::Phone as i32,
                value: "+8613800000001".into(),
            }],
            ..Default::default()
        }),
        payload: Some(proto::event::Payload::IdentityClaimed(proto::IdentityClaimed {
            member_id: "m-attacker".into(),
            merge: false,
            cause_event_id: "x".into(),
        })),
    };
    records.push(("PHONE:+8613800000001".into(), claim.encode_to_vec()));
    setup.produce(&records);
    service.wait_consumed(&setup, 4).await;
    let letters = setup.dead_letters(3);
    let kinds: Vec<&str> = letters.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(kinds, vec!["forged", "forged", "forged"], "{letters:#?}");
    for what in ["profileJoinPart", "profileJoined", "identityClaimed"] {
        let reason = format!("{what} events are written only by omnifold");
        assert!(letters.iter().any(|l| l.reason.contains(&reason)), "no dead letter says `{reason}`: {letters:#?}");
    }
    let after = balance(&service, "m-1").await;
    assert_eq!((after.active_points, after.lifetime_earned), (before.active_points, before.lifetime_earned));
    let mut profiles = service.profiles().await;
    let lookup = profiles
        .lookup_identifier(proto::LookupIdentifierRequest {
            identifier: Some(proto::Identifier {
                r#type: proto::IdentifierType::Phone as i32,
                value: "+8613800000001".into(),
            }),
        })
        .await;
    assert_eq!(lookup.unwrap_err().code(), tonic::Code::NotFound, "the phone belongs to no one");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redemption_retried_after_a_merge_gets_its_first_answer_and_spends_once() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("hostile-merge", 3);
    setup.produce(&[thousand_points("m-a"), thousand_points("m-b")]);
    service.wait_consumed(&setup, 2).await;
    let first = redeem_until_decided(&service.grpc, "m-a", "rq-1", 600).await;
    assert_eq!(first.status, proto::RedemptionStatus::Accepted as i32);
    let mut admin = service.admin().await;
    let merged = admin
        .merge_members(proto::MergeMembersRequest {
            from_member_id: "m-a".into(),
            into_member_id: "m-b".into(),
            request_id: "merge-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(merged.completed);
    // The app did not see the answer and asks again, for m-a, which is m-b now.
    let retry = redeem_until_decided(&service.grpc, "m-a", "rq-1", 600).await;
    assert_eq!(retry.status, proto::RedemptionStatus::Accepted as i32);
    assert_eq!(retry.event_id, first.event_id, "the same decision, not a second one");
    let b = balance(&service, "m-b").await;
    assert_eq!((b.active_points, b.lifetime_redeemed), (1_400, 600));
    assert_eq!(redeemed_request_ids(&service, "m-b").await, vec!["rq-1".to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_halfway_through_a_join_applies_it_once() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "hostile-midjoin", 3);
    setup.extra_env.insert("OMNIFOLD_KAFKA__ASSIGNMENT".into(), "all".into());
    // Small records: the cookie's history travels in many parts.
    setup.extra_env.insert("OMNIFOLD_KAFKA__MAX_EVENT_BYTES".into(), "4096".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let anon = r#"{"anonymousId":"ck-9"}"#;
    let views: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| {
            let view = format!(r#""productViewed":{{"sku":"SKU-{i}","category":"shoes","priceMinor":"1999"}}"#);
            (
                "ck-9".to_owned(),
                json_event(&format!("v{i}"), &days_ago(9.0 - i as f64 * 0.01), "ONLINE_WEB", anon, &view),
            )
        })
        .collect();
    let service = Service::start(&setup, data.path());
    setup.produce(&views);
    service.wait_consumed(&setup, views.len() as i64).await;
    drop(service);

    // The login: the cookie's partition writes half the join's parts, then dies.
    let crashing = Service::start_with(&setup, data.path(), &[("OMNIFOLD_FAILPOINT", "mid_outbox")]);
    let link = r#""identityLinked":{"anonymousId":"ck-9"}"#;
    setup.produce(&[("m-9".into(), json_event("login", &days_ago(1.0), "MOBILE_APP", &member_json("m-9"), link))]);
    let status = crashing.wait_exit(Duration::from_secs(60));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "aborted halfway: {status}");

    let service = Service::start(&setup, data.path());
    service.wait_consumed(&setup, views.len() as i64 + 1).await;
    let p = get(&service, "m-9").await.unwrap();
    assert_eq!(p.browse.unwrap().product_views, 200, "every view joined, once");
    assert_eq!(p.version.unwrap().events_applied, 201);
    assert!(setup.dead_letters(0).is_empty());
    assert_eq!(digest(&setup, data.path()), replayed_digest(&setup));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_refuses_a_topic_whose_partition_count_changed() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "hostile-count", 2);
    setup.extra_env.insert("OMNIFOLD_KAFKA__ASSIGNMENT".into(), "all".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    setup.produce(&[thousand_points("m-1")]);
    service.wait_consumed(&setup, 1).await;
    assert!(service.stop().success());

    // The same topic name, now with 3 partitions (a new cluster, or the
    // topic recreated): every member's partition may have changed.
    let other = Broker::start();
    let mut moved = Setup::new(&other, "hostile-count", 3);
    moved.extra_env = setup.extra_env.clone();
    moved.create_topics();
    let out =
        moved.command().args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was built for 2 partitions of topic hostile-count.events, which has 3 now"), "{err}");
    assert!(err.contains("Changing the partition count"), "{err}");
}

/// What a person holds, read over gRPC: balance, events applied, views.
async fn holdings(service: &Service, id: &str) -> (i64, i64, u64, u64) {
    let b = balance(service, id).await;
    let p = get(service, id).await.unwrap();
    (b.active_points, b.pending_points, p.version.unwrap().events_applied, p.browse.unwrap().product_views)
}

/// docs/operations.md, "Changing the partition count": stop writes, copy
/// the producers' records into a topic with the new count, fold it with a
/// new store, and every person holds what they held, joins, merges,
/// redemptions and a misrouted record included.
#[tokio::test(flavor = "multi_thread")]
async fn the_partition_count_changes_by_copy_and_fold_with_every_balance_kept() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("recount", 2);
    let mut events: Vec<(String, Vec<u8>)> = (1..=5).map(|m| thousand_points(&format!("m-{m}"))).collect();
    let anon = r#"{"anonymousId":"ck-1"}"#;
    for i in 0..30 {
        let view = format!(r#""productViewed":{{"sku":"SKU-{i}","category":"shoes","priceMinor":"1999"}}"#);
        events.push((
            "ck-1".into(),
            json_event(&format!("v{i}"), &days_ago(20.0 - i as f64 * 0.1), "ONLINE_WEB", anon, &view),
        ));
    }
    let link = r#""identityLinked":{"anonymousId":"ck-1"}"#;
    events.push(("m-1".into(), json_event("login", &days_ago(10.0), "MOBILE_APP", &member_json("m-1"), link)));
    let merge = r#""membersMerged":{"fromMemberId":"m-3","intoMemberId":"m-2"}"#;
    events.push(("m-2".into(), json_event("merge", &days_ago(5.0), "CALL_CENTER", &member_json("m-2"), merge)));
    setup.produce(&events);
    // A producer that partitions its own way: a view of m-5's on the other
    // partition (forwarded to m-5's, signed).
    let misrouted = json_event(
        "lost-view",
        &days_ago(4.0),
        "ONLINE_WEB",
        &member_json("m-5"),
        r#""productViewed":{"sku":"X","category":"c","priceMinor":"100"}"#,
    );
    let home = omnifold_core::partition::partition_for(b"m-5", 2) as i32;
    let producer = setup.producer();
    producer
        .send(rdkafka::producer::BaseRecord::to(&setup.topic).partition(1 - home).key("m-5").payload(&misrouted))
        .unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    service.wait_consumed(&setup, events.len() as i64 + 1).await;
    let redeemed = redeem_until_decided(&service.grpc, "m-4", "r-1", 300).await;
    assert_eq!(redeemed.status, proto::RedemptionStatus::Accepted as i32);
    // After the merge, m-3's order goes on to m-2.
    let order = r#""orderPlaced":{"orderId":"o-3b","currency":"CNY","totalMinor":"50000"}"#;
    setup.produce(&[("m-3".into(), json_event("m-3-o2", &days_ago(3.0), "STORE_POS", &member_json("m-3"), order))]);
    service.wait_consumed(&setup, events.len() as i64 + 3).await;
    let people = ["m-1", "m-2", "m-3", "m-4", "m-5"];
    let mut before = Vec::new();
    for id in people {
        before.push(holdings(&service, id).await);
    }
    assert_eq!(before[0].3, 30, "the anonymous views joined m-1");
    assert_eq!(before[4].3, 1, "the misrouted view reached m-5");
    assert!(service.stop().success());

    // The procedure, with three partitions.
    let mut moved = Setup::new(&_broker, "recount-3", 3);
    moved.extra_env = setup.extra_env.clone();
    moved.create_topics();
    let copied = setup.run(&["topics", "copy", "--to-topic", &moved.topic, "--idle-ms", "500"]);
    let left_out: u64 =
        copied.split(" written by omnifold").next().and_then(|s| s.rsplit('(').next()).unwrap().parse().unwrap();
    assert!(left_out >= 2, "the forwards and the join are omnifold's: {copied}");
    let again = setup.command().args(["topics", "copy", "--to-topic", &moved.topic]).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds records"));
    let data = tempfile::tempdir().unwrap();
    let folded = Service::start(&moved, data.path());
    folded.wait_consumed(&moved, 1).await;
    for (id, want) in people.into_iter().zip(&before) {
        assert_eq!(&holdings(&folded, id).await, want, "{id}");
    }
    assert_eq!(redeemed_request_ids(&folded, "m-4").await, vec!["r-1".to_owned()]);
    assert!(moved.dead_letters(0).is_empty());
}
