//! End to end, against a real broker and the real binary: a mixed JSON and
//! protobuf multi-channel stream becomes exact profiles; redelivery changes
//! nothing; kill -9 mid-stream loses and double-counts nothing; bad input
//! lands in the dead-letter topic while the partition keeps moving.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::time::Duration;

use common::*;
use omnifold_proto::v1 as proto;
use omnifold_proto::wkt::FieldMask;
use tonic::Code;

/// Every field of `Profile`, from the contract's descriptors.
fn profile_fields() -> Vec<String> {
    let set: prost_types::FileDescriptorSet = prost::Message::decode(omnifold_proto::FILE_DESCRIPTOR_SET).unwrap();
    let profile = set
        .file
        .iter()
        .filter(|f| f.package() == "omnifold.v1")
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == "Profile")
        .unwrap();
    profile.field.iter().map(|f| f.name().to_owned()).collect()
}

const ALICE: &str = r#"{"memberId":"m-alice"}"#;
const BOB: &str = r#"{"memberId":"m-bob"}"#;

/// The mixed stream of the acceptance criteria; odd records as protobuf.
fn mixed_stream() -> Vec<(String, Vec<u8>)> {
    let e = |id: &str, at: &str, ch: &str, subject: &str, payload: &str| json_event(id, at, ch, subject, payload);
    let records = vec![
        (
            "m-alice",
            e(
                "a1",
                "2026-06-01T10:00:00Z",
                "ONLINE_WEB",
                ALICE,
                r#""productViewed":{"sku":"SKU-1","category":"shoes","priceMinor":"59900"}"#,
            ),
        ),
        (
            "m-alice",
            e(
                "a2",
                "2026-06-01T10:01:00Z",
                "ONLINE_WEB",
                ALICE,
                r#""productViewed":{"sku":"SKU-2","category":"bags","priceMinor":"129900"}"#,
            ),
        ),
        (
            "m-alice",
            e(
                "a3",
                "2026-06-01T10:02:00Z",
                "ONLINE_WEB",
                ALICE,
                r#""productViewed":{"sku":"SKU-1","category":"shoes","priceMinor":"59900"}"#,
            ),
        ),
        (
            "m-alice",
            e(
                "a4",
                "2026-06-02T09:00:00Z",
                "MOBILE_APP",
                ALICE,
                r#""orderPlaced":{"orderId":"o-a1","currency":"CNY","lines":[{"sku":"SKU-1","category":"shoes","quantity":2,"unitPriceMinor":"59900"}],"totalMinor":"119800"}"#,
            ),
        ),
        (
            "m-alice",
            e(
                "a5",
                "2026-06-03T15:00:00Z",
                "STORE_POS",
                r#"{"memberId":"m-alice","identifiers":[{"type":"PHONE","value":"+86 138 0000 0001"}]}"#,
                r#""storeId":"store-sh-01","orderPlaced":{"orderId":"o-a2","currency":"CNY","lines":[{"sku":"SKU-3","category":"beauty","quantity":1,"unitPriceMinor":"30000"}]}"#,
            ),
        ),
        (
            "m-alice",
            e(
                "a6",
                "2026-06-05T12:00:00Z",
                "STORE_POS",
                ALICE,
                r#""storeId":"store-sh-01","orderReturned":{"orderId":"o-a1","returnId":"r-1","lines":[{"sku":"SKU-1","quantity":1}]}"#,
            ),
        ),
        (
            "m-bob",
            e(
                "b1",
                "2026-06-02T08:00:00Z",
                "MINI_PROGRAM",
                BOB,
                r#""orderPlaced":{"orderId":"o-b1","currency":"USD","lines":[{"sku":"SKU-9","category":"tea","quantity":1,"unitPriceMinor":"1000"}]}"#,
            ),
        ),
        ("m-bob", e("b2", "2026-06-02T08:05:00Z", "ONLINE_WEB", BOB, r#""searchPerformed":{"query":"green tea"}"#)),
        (
            "anon-x",
            e(
                "x1",
                "2026-06-02T08:06:00Z",
                "ONLINE_WEB",
                r#"{"anonymousId":"anon-x"}"#,
                r#""productViewed":{"sku":"SKU-2","category":"bags"}"#,
            ),
        ),
    ];
    records
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| (k.to_owned(), if i % 2 == 1 { to_protobuf(&v) } else { v }))
        .collect()
}

fn channel(p: &proto::Profile, c: proto::Channel) -> &proto::ChannelStats {
    p.channels.iter().find(|s| s.channel == c as i32).unwrap_or_else(|| panic!("no stats for {c:?}"))
}

/// A fixed instant for windows, so answers can be compared whole.
fn at(rfc3339: &str) -> Option<pbjson_types::Timestamp> {
    Some(serde_json::from_value(serde_json::Value::String(rfc3339.into())).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_stream_builds_exact_profiles() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("mixed", 4);
    let stream = mixed_stream();
    setup.produce(&stream);
    service.wait_consumed(&setup, stream.len() as i64).await;

    let alice = get(&service, "m-alice").await.unwrap();
    let p = alice.purchases.as_ref().unwrap();
    assert_eq!((p.orders, p.units, p.returns), (2, 3, 1));
    assert_eq!((p.gross_minor, p.returned_minor, p.net_minor), (149_800, 59_900, 89_900));
    assert_eq!(p.average_order_value_minor, 44_950);
    assert_eq!((p.currency.as_str(), p.favourite_store_id.as_str()), ("CNY", "store-sh-01"));
    let web = channel(&alice, proto::Channel::OnlineWeb);
    assert_eq!((web.events, web.orders, web.spend_minor), (3, 0, 0));
    let app = channel(&alice, proto::Channel::MobileApp);
    assert_eq!((app.events, app.orders, app.spend_minor), (1, 1, 59_900), "the return comes off the app order");
    let pos = channel(&alice, proto::Channel::StorePos);
    assert_eq!((pos.events, pos.orders, pos.spend_minor), (2, 1, 30_000));
    let recent: Vec<(&str, u32)> =
        alice.browse.as_ref().unwrap().recent_products.iter().map(|r| (r.sku.as_str(), r.views)).collect();
    assert_eq!(recent, vec![("SKU-1", 2), ("SKU-2", 1)]);
    assert_eq!(
        alice.identifiers,
        vec![proto::Identifier { r#type: proto::IdentifierType::Phone as i32, value: "+8613800000001".into() }]
    );
    assert_eq!(alice.version.as_ref().unwrap().events_applied, 6);

    let bob = get(&service, "m-bob").await.unwrap();
    let p = bob.purchases.as_ref().unwrap();
    assert_eq!((p.orders, p.gross_minor, p.net_minor), (1, 7_100, 7_100), "10.00 USD at 7.1");
    assert_eq!(channel(&bob, proto::Channel::MiniProgram).spend_minor, 7_100);
    assert_eq!(bob.browse.as_ref().unwrap().recent_searches, vec!["green tea"]);

    let anon = get(&service, "anon-x").await.unwrap();
    assert_eq!(anon.kind, proto::ProfileKind::Anonymous as i32);

    // Batch read with a field mask; unknown members are reported, not fatal.
    let mut client = service.profiles().await;
    let batch = client
        .batch_get_profiles(proto::BatchGetProfilesRequest {
            members: vec![member("m-bob").unwrap(), member("m-nobody").unwrap()],
            read_mask: Some(FieldMask { paths: vec!["purchases".into()] }),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 2);
    let first = batch.results[0].profile.as_ref().unwrap();
    assert!(first.purchases.is_some() && first.browse.is_none() && first.member_id.is_empty());
    assert_eq!(batch.results[1].code, Code::NotFound as i32);

    // Each field read alone answers what a whole read does, though a read
    // without `purchases` or `loyalty` leaves the member's orders and lots
    // unread.
    let read = |paths: Vec<String>| proto::GetProfileRequest {
        member: member("m-alice"),
        read_mask: Some(FieldMask { paths }),
        as_of: at("2026-11-01T00:00:00Z"),
    };
    let whole = client.get_profile(read(Vec::new())).await.unwrap().into_inner();
    assert!(
        whole.purchases.as_ref().unwrap().orders_last_365_days > 0 && whole.loyalty.as_ref().unwrap().active_points > 0
    );
    let mut pieced = proto::Profile::default();
    let fields = profile_fields();
    assert!(fields.len() >= 16, "{fields:?}");
    for field in fields {
        let part = client.get_profile(read(vec![field])).await.unwrap().into_inner();
        prost::Message::merge(&mut pieced, prost::Message::encode_to_vec(&part).as_slice()).unwrap();
    }
    assert_eq!(pieced, whole);

    // Errors say what is wrong.
    assert_eq!(get(&service, "m-nobody").await.unwrap_err().code(), Code::NotFound);
    let err = client
        .get_profile(proto::GetProfileRequest {
            member: member("m-bob"),
            read_mask: Some(FieldMask { paths: vec!["purchase".into()] }),
            as_of: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`purchase` is not a Profile field"), "{}", err.message());
    let err = client.get_profile(proto::GetProfileRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Windows at a chosen instant.
    let later = client
        .get_profile(proto::GetProfileRequest {
            member: member("m-alice"),
            read_mask: None,
            as_of: at("2026-07-01T00:00:00Z"),
        })
        .await
        .unwrap()
        .into_inner();
    let p = later.purchases.unwrap();
    assert_eq!((p.orders_last_90_days, p.net_last_365_days_minor), (2, 89_900));
    assert_eq!(p.rfm.unwrap().recency_days, Some(27));

    let balance = service
        .loyalty()
        .await
        .get_balance(proto::GetBalanceRequest { member: member("m-alice"), as_of: None })
        .await
        .unwrap();
    assert_eq!(balance.into_inner().member_id, "m-alice");

    let channel = tonic::transport::Channel::from_shared(service.grpc.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "omnifold.v1.ProfileService".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn redelivered_events_change_nothing() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("redeliver", 3);
    let stream = mixed_stream();
    setup.produce(&stream);
    service.wait_consumed(&setup, stream.len() as i64).await;
    let mut client = service.profiles().await;
    let read = |id: &'static str| proto::GetProfileRequest {
        member: member(id),
        read_mask: None,
        as_of: at("2026-07-01T00:00:00Z"),
    };
    let before = [
        client.get_profile(read("m-alice")).await.unwrap().into_inner(),
        client.get_profile(read("m-bob")).await.unwrap().into_inner(),
    ];
    // The producer "retries": same ids, the other encoding.
    let again: Vec<(String, Vec<u8>)> = mixed_stream()
        .into_iter()
        .map(|(k, v)| {
            let flipped = if v.first() == Some(&b'{') {
                to_protobuf(&v)
            } else {
                let e: proto::Event = prost::Message::decode(v.as_slice()).unwrap();
                serde_json::to_vec(&e).unwrap()
            };
            (k, flipped)
        })
        .collect();
    setup.produce(&again);
    service.wait_consumed(&setup, 2 * stream.len() as i64).await;
    let after = [
        client.get_profile(read("m-alice")).await.unwrap().into_inner(),
        client.get_profile(read("m-bob")).await.unwrap().into_inner(),
    ];
    assert_eq!(before, after);
}

/// Events for `members` members: views and orders, with known totals.
fn chunk(tag: &str, members: usize, per_member: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in 0..members {
        let subject = format!(r#"{{"memberId":"m-{m}"}}"#);
        for i in 0..per_member {
            let id = format!("{tag}-{m}-{i}");
            let ts = format!("2026-05-{:02}T10:{:02}:00Z", 1 + i % 28, m % 60);
            let payload = if i % 3 == 0 {
                format!(
                    r#""orderPlaced":{{"orderId":"o-{id}","currency":"CNY","lines":[{{"sku":"S{i}","quantity":1,"unitPriceMinor":"1000"}}]}}"#
                )
            } else {
                format!(r#""productViewed":{{"sku":"S{i}","category":"c{}"}}"#, i % 4)
            };
            let v = json_event(&id, &ts, "MOBILE_APP", &subject, &payload);
            out.push((format!("m-{m}"), if i % 2 == 0 { v } else { to_protobuf(&v) }));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_loses_and_double_counts_nothing() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "crash", 4);
    // Small batches: many commits, so the crash lands between two of them.
    setup.extra_env.insert("OMNIFOLD_KAFKA__BATCH_MAX_RECORDS".into(), "25".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let (members, per) = (40, 30);
    let first = chunk("c1", members, per);
    let redelivered = first[..200].to_vec(); // a producer retry of the first 200
    let second = chunk("c2", members, per);

    // The process aborts (no flush, like kill -9) right before its 6th store
    // commit: 5 batches of at most 25 records are in the store, the rest of
    // the stream is not.
    setup.produce(&first);
    let service = Service::start_with(&setup, data.path(), &[("OMNIFOLD_FAILPOINT", "before_commit:6")]);
    let status = service.wait_exit(Duration::from_secs(60));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "aborted by the failpoint: {status}");
    let at_crash: u64 = setup.events_applied(data.path()).values().sum();
    assert!(0 < at_crash && at_crash <= 5 * 25, "the crash landed mid-stream: {at_crash} of {} applied", first.len());

    // The stream goes on while the service is down, then it restarts.
    setup.produce(&redelivered);
    let service = Service::start(&setup, data.path());
    setup.produce(&second);
    let total = (first.len() + redelivered.len() + second.len()) as i64;
    service.wait_consumed(&setup, total).await;

    for m in 0..members {
        let p = get(&service, &format!("m-{m}")).await.unwrap();
        assert_eq!(p.version.as_ref().unwrap().events_applied, 2 * per as u64, "member m-{m}");
        let orders = 2 * per.div_ceil(3) as u64;
        let purchases = p.purchases.unwrap();
        assert_eq!((purchases.orders, purchases.gross_minor), (orders, orders as i64 * 1000), "member m-{m}");
        assert_eq!(p.browse.unwrap().product_views, 2 * (per - per.div_ceil(3)) as u64);
    }
    // A graceful stop exits 0 and keeps everything.
    assert!(service.stop().success());
    let service = Service::start(&setup, data.path());
    let p = get(&service, "m-0").await.unwrap();
    assert_eq!(p.version.unwrap().events_applied, 2 * per as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_goes_to_the_dead_letter_topic_and_ingest_goes_on() {
    let Stack { broker: _broker, data: _data, setup, mut service } = Stack::start("bad", 2);
    let good =
        |id: &str| json_event(id, "2026-06-01T10:00:00Z", "ONLINE_WEB", ALICE, r#""searchPerformed":{"query":"tea"}"#);
    let huge = json_event(
        "big",
        "2026-06-01T10:00:00Z",
        "ONLINE_WEB",
        ALICE,
        &format!(r#""searchPerformed":{{"query":"{}"}}"#, "x".repeat(100_000)),
    );
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("invalid json", br#"{"eventId":"j1","occurredAt":"#.to_vec()),
        ("unknown field `loyaltyTierChanged`", json_event("u1", "2026-06-01T10:00:00Z", "ONLINE_WEB", ALICE, r#""loyaltyTierChanged":{"tier":"GOLD"}"#)),
        ("missing required field `eventId`", br#"{"occurredAt":"2026-06-01T10:00:00Z","channel":"ONLINE_WEB","subject":{"memberId":"m-alice"},"searchPerformed":{"query":"x"}}"#.to_vec()),
        ("event too large", huge),
        ("invalid json", json_event("w1", "2026-06-01T10:00:00Z", "ONLINE_WEB", ALICE, r#""productViewed":{"sku":["not","a","string"]}"#)),
        ("undecodable protobuf", vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ("order o-missing is not known", json_event("r1", "2026-06-01T10:00:00Z", "ONLINE_WEB", ALICE, r#""orderReturned":{"orderId":"o-missing","returnId":"x","amountMinor":"100"}"#)),
    ];
    let mut records = vec![("m-alice".to_owned(), good("g1"))];
    for (_, v) in &bad {
        records.push(("m-alice".to_owned(), v.clone()));
    }
    records.push(("m-alice".to_owned(), good("g2")));
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;

    let letters = setup.dead_letters(bad.len());
    assert_eq!(letters.len(), bad.len(), "one dead letter per bad record: {letters:#?}");
    for ((reason, original), letter) in bad.iter().zip(&letters) {
        assert!(letter.reason.contains(reason), "want `{reason}`, got `{}`", letter.reason);
        assert_eq!(letter.original_size, original.len() as u64);
        if original.len() > 65_536 {
            // Cut to kafka.max_event_bytes, so the dead letter itself is never too large.
            assert!(letter.original_truncated);
            assert!(letter.original.len() == 65_536 && original.starts_with(&letter.original));
        } else {
            assert!(!letter.original_truncated && letter.original == *original, "{reason}");
        }
        assert_eq!(letter.topic, setup.topic);
        assert_eq!(letter.original_key, b"m-alice");
    }
    let offsets: Vec<i64> = letters.iter().map(|l| l.offset).collect();
    assert_eq!(offsets, (1..=bad.len() as i64).collect::<Vec<_>>(), "all on m-alice's partition, in order");

    let alice = get(&service, "m-alice").await.unwrap();
    assert_eq!(alice.browse.unwrap().searches, 2, "the valid events around the bad ones are applied");
    assert!(service.is_running());
}

/// A listen address already in use ends `serve` at once with an error exit
/// that names the address (not a crash, and not after ingest has started).
#[test]
fn a_listen_address_in_use_ends_serve_with_an_error_that_names_it() {
    let broker = Broker::start();
    let setup = Setup::new(&broker, "in-use", 1);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = setup.command().args(["serve", "--listen", &addr, "--data-dir"]).arg(data.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an error exit, not a signal: {:?}\n{stderr}", out.status);
    assert!(stderr.contains(&format!("binding {addr}")), "{stderr}");
    assert!(out.stdout.is_empty(), "never said it was serving: {}", String::from_utf8_lossy(&out.stdout));
}
