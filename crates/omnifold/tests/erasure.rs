//! Erasure that sticks, against a real broker and the real binary: a member
//! erased through `EraseMember` (by any identifier) is gone from every read,
//! every lookup, the liability report and reads of the past; a replay of
//! the whole log into a fresh store erases them again; later events for
//! them start nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::time::Duration;

use common::*;
use omnifold_proto::v1 as proto;
use tonic::Code;

/// A member with a phone, an e-mail, a cookie that browsed before login,
/// traits and an order with points; all dated 30 days ago.
fn member_events(m: &str, n: u32) -> Vec<(String, Vec<u8>)> {
    let at = days_ago(30.0);
    let subject = format!(r#"{{"memberId":"{m}"}}"#);
    let cookie = format!(r#"{{"anonymousId":"ck-{m}"}}"#);
    let link = format!(
        r#""identityLinked":{{"anonymousId":"ck-{m}","identifiers":[{{"type":"PHONE","value":"+86138000000{n:02}"}},{{"type":"EMAIL","value":"{m}@example.com"}}]}}"#
    );
    let traits = r#""profileUpdated":{"traits":{"name":"Li Lei","city":"Hangzhou"}}"#;
    let order = format!(r#""orderPlaced":{{"orderId":"o-{m}","currency":"CNY","totalMinor":"100000"}}"#);
    let view = r#""productViewed":{"sku":"SKU-1","category":"shoes"}"#;
    vec![
        (format!("ck-{m}"), json_event(&format!("{m}-view"), &at, "ONLINE_WEB", &cookie, view)),
        (m.to_owned(), json_event(&format!("{m}-link"), &at, "MOBILE_APP", &subject, &link)),
        (m.to_owned(), json_event(&format!("{m}-traits"), &at, "MOBILE_APP", &subject, traits)),
        (m.to_owned(), json_event(&format!("{m}-order"), &at, "STORE_POS", &subject, &order)),
    ]
}

fn phone(n: u32) -> proto::Identifier {
    proto::Identifier { r#type: proto::IdentifierType::Phone as i32, value: format!("+86138000000{n:02}") }
}

fn by_identifier(i: proto::Identifier) -> Option<proto::MemberRef> {
    Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::Identifier(i)) })
}

/// The dump of a store as `key -> line`.
fn dump(setup: &Setup, data: &std::path::Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    setup
        .run(&["dump", "--data-dir", data.to_str().unwrap()])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["key"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_member_stays_erased_in_every_read_and_across_a_replay() {
    let Stack { broker: _broker, data, setup, service: owned } = Stack::start_with_history("erasure", 4);
    let service = &owned;
    let mut events = member_events("m-1", 1);
    events.extend(member_events("m-2", 2));
    // A provisional profile: a phone no member holds, seen on the web.
    let stranger = r#"{"identifiers":[{"type":"PHONE","value":"+8613900000009"}]}"#;
    let view = r#""productViewed":{"sku":"SKU-9","category":"tea"}"#;
    events.push(("PHONE:+8613900000009".into(), json_event("p-view", &days_ago(1.0), "ONLINE_WEB", stranger, view)));
    setup.produce(&events);
    service.wait_consumed(&setup, events.len() as i64).await;
    let mut profiles = service.profiles().await;
    // Linked: the phone finds the member, the cookie's view joined it.
    eventually("m-1 linked and joined", Duration::from_secs(60), || {
        let mut profiles = profiles.clone();
        async move {
            let found = profiles.lookup_identifier(proto::LookupIdentifierRequest { identifier: Some(phone(1)) });
            let p = get(service, "m-1").await.ok()?;
            (found.await.ok()?.into_inner().member_id == "m-1" && p.browse?.product_views == 1).then_some(())
        }
    })
    .await;
    let mut admin = service.admin().await;
    let liability = |admin: &mut proto::admin_service_client::AdminServiceClient<Conn>| {
        let mut admin = admin.clone();
        async move {
            let r = admin.get_points_liability(proto::GetPointsLiabilityRequest { as_of: None }).await.unwrap();
            let r = r.into_inner();
            (r.total_active_points, r.rows.iter().map(|row| row.members).sum::<u64>())
        }
    };
    let (before, members) = liability(&mut admin).await;
    assert!(before > 0 && members == 2, "both members hold points: {before} in {members}");
    let erased_from = now_ms();

    // Erase by the phone: the job is done, with its deadline.
    let erase = proto::EraseMemberRequest {
        member: by_identifier(phone(1)),
        reason: "data subject request".into(),
        request_id: "dsr-1".into(),
    };
    let done = admin.erase_member(erase.clone()).await.unwrap().into_inner();
    assert_eq!((done.status, done.member_id.as_str()), (proto::ErasureStatus::Done as i32, "m-1"));
    let (requested, deadline) = (done.requested_at.unwrap(), done.deadline.unwrap());
    assert_eq!(deadline.seconds - requested.seconds, 30 * 86_400, "privacy.erasure_deadline_days");
    // The same job asked again (by member id now): the same answer, nothing more.
    let again = proto::EraseMemberRequest { member: member("m-1"), ..erase.clone() };
    let again = admin.erase_member(again).await.unwrap().into_inner();
    assert_eq!((again.status, again.requested_at), (proto::ErasureStatus::Done as i32, Some(requested)));
    let said = setup.run(&["erase", "m-1", "--request-id", "dsr-1", "--server", &service.grpc]);
    assert!(said.starts_with("DONE m-1 (job dsr-1): requested "), "the CLI asks the same: {said}");

    // A provisional profile is erased by its identifier too, and its record
    // (whose key is the phone) is deleted outright.
    let stranger = proto::Identifier { r#type: proto::IdentifierType::Phone as i32, value: "+8613900000009".into() };
    let erase_stranger = proto::EraseMemberRequest {
        member: by_identifier(stranger),
        reason: String::new(),
        request_id: "dsr-2".into(),
    };
    let done = admin.erase_member(erase_stranger).await.unwrap().into_inner();
    assert_eq!((done.status, done.member_id.as_str()), (proto::ErasureStatus::Done as i32, "PHONE:+8613900000009"));

    // Every read: not found, as for someone who never existed.
    let missing = |r: Result<tonic::Response<proto::Profile>, tonic::Status>| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    };
    missing(profiles.get_profile(proto::GetProfileRequest { member: member("m-1"), ..Default::default() }).await);
    let past = Some(pbjson_types::Timestamp { seconds: erased_from / 1000 - 3_600, nanos: 0 });
    let as_of = proto::GetProfileRequest { member: member("m-1"), read_mask: None, as_of: past };
    missing(profiles.get_profile(as_of).await);
    let cookie = proto::MemberRef { r#ref: Some(proto::member_ref::Ref::AnonymousId("ck-m-1".into())) };
    let mut loyalty = service.loyalty().await;
    let ledger = loyalty.list_ledger(proto::ListLedgerRequest { member: member("m-1"), ..Default::default() }).await;
    assert_eq!(ledger.unwrap_err().code(), Code::NotFound);
    let export = admin.export_member(proto::ExportMemberRequest { member: member("m-1") }).await;
    assert_eq!(export.unwrap_err().code(), Code::NotFound);
    let email = proto::Identifier { r#type: proto::IdentifierType::Email as i32, value: "m-1@example.com".into() };
    // Each former identifier and the cookie: the keys forget the member
    // (their records go as the fold reads keyErased; the index as it reads
    // the identity topic's tombstones).
    eventually("every former key forgets m-1", Duration::from_secs(60), || {
        let (mut profiles, cookie, email) = (profiles.clone(), cookie.clone(), email.clone());
        async move {
            for i in [phone(1), email] {
                let r = profiles.lookup_identifier(proto::LookupIdentifierRequest { identifier: Some(i) }).await;
                if r.map_err(|e| e.code()).err() != Some(Code::NotFound) {
                    return None;
                }
            }
            let r = profiles.get_profile(proto::GetProfileRequest { member: Some(cookie), ..Default::default() });
            (r.await.map_err(|e| e.code()).err() == Some(Code::NotFound)).then_some(())
        }
    })
    .await;
    let (after, members) = liability(&mut admin).await;
    assert_eq!(members, 1, "the liability report no longer counts m-1");
    assert!(after < before && after > 0, "{after} of {before}");
    assert!(get(service, "m-2").await.is_ok(), "the other member is untouched");

    // Later events for the erased member, and for the keys they held, start
    // nothing: each is refused, with the reason (fold.after_erasure).
    let now = days_ago(0.0);
    let search = r#""searchPerformed":{"query":"tea"}"#;
    let late = [
        ("m-1", r#"{"memberId":"m-1"}"#),
        ("PHONE:+8613800000001", r#"{"identifiers":[{"type":"PHONE","value":"+8613800000001"}]}"#),
        ("ck-m-1", r#"{"anonymousId":"ck-m-1"}"#),
        ("PHONE:+8613900000009", r#"{"identifiers":[{"type":"PHONE","value":"+8613900000009"}]}"#),
    ];
    let late: Vec<(String, Vec<u8>)> = late
        .iter()
        .enumerate()
        .map(|(n, (key, subject))| {
            ((*key).to_owned(), json_event(&format!("late-{n}"), &now, "MOBILE_APP", subject, search))
        })
        .collect();
    setup.produce(&late);
    let letters = setup.dead_letters(late.len());
    assert_eq!(letters.len(), late.len());
    assert!(letters.iter().any(|l| l.reason.contains("`m-1` was erased")), "{letters:?}");
    let keys = letters.iter().filter(|l| l.reason.contains("belonged to an erased profile")).count();
    assert_eq!(keys, 3, "the phone, the cookie and the erased provisional profile's phone: {letters:?}");
    assert!(letters.iter().all(|l| !l.reason.contains("+86")), "a reason names no identifier: {letters:?}");
    service.wait_consumed(&setup, 0).await;
    missing(profiles.get_profile(proto::GetProfileRequest { member: member("m-1"), ..Default::default() }).await);

    // The store holds a tombstone for m-1 and nothing under its former keys.
    let live = dump(&setup, data.path());
    let tombstone = &live["m-1"];
    assert!(tombstone["member"]["erased_at"].is_number(), "{tombstone}");
    assert_eq!(tombstone["member"]["identifiers"], serde_json::json!([]));
    assert_eq!(
        (tombstone["ledger"].as_array().unwrap().len(), tombstone["verdicts"].as_array().unwrap().len()),
        (0, 1)
    );
    for key in ["PHONE:+8613800000001", "EMAIL:m-1@example.com", "ck-m-1", "PHONE:+8613900000009"] {
        assert!(!live.contains_key(key), "{key} is still stored: {}", live[key]);
    }
    assert!(!live.values().any(|v| v.to_string().contains("Li Lei") && v["key"] == "m-1"));

    // A replay of the whole log into a fresh store: the same store, m-1
    // erased again at the same point, nothing of them brought back.
    let fresh = tempfile::tempdir().unwrap();
    let rebuilt = fresh.path().join("store");
    setup.run(&["replay", "--data-dir", rebuilt.to_str().unwrap(), "--idle-ms", "500"]);
    let replayed = dump(&setup, &rebuilt);
    assert_eq!(replayed.keys().collect::<Vec<_>>(), live.keys().collect::<Vec<_>>());
    assert_eq!(replayed["m-1"]["member"], live["m-1"]["member"], "the replay erases m-1 again");
    assert_eq!(replayed["m-2"], live["m-2"]);
    owned.stop();
}
