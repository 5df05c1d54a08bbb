//! HTTP for partners against a real broker and the real binary: the event
//! collector answers per event and writes only valid events; the JSON
//! gateway returns what gRPC returns, masked the same way, with the same
//! authentication, scopes and limits.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::time::Duration;

use common::*;
use omnifold_proto::v1 as proto;
use serde_json::{Value, json};

/// A stack serving HTTP, with the harness key and keys of its own: a
/// partner that may only send events, a reader without `profile:pii`, and
/// a key limited to one call a second.
struct Http {
    stack: Stack,
    port: u16,
    partner: String,
    reader: String,
    slow: String,
}

fn start(name: &str, env: &[(&str, &str)]) -> Http {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, name, 2);
    let data = tempfile::tempdir().unwrap();
    let keys = data.path().join("keys.toml");
    std::fs::copy(keys_file(), &keys).unwrap();
    let new_key = |name: &str, scopes: &str, more: &[&str]| {
        let file = keys.to_str().unwrap();
        let mut args = vec!["keys", "new", "--name", name, "--file", file, "--scopes", scopes];
        args.extend(more);
        setup.run(&args).trim().to_owned()
    };
    let partner = new_key("partner", "events:write", &[]);
    let reader = new_key("reader", "profile:read,loyalty:read,loyalty:write", &[]);
    let slow = new_key("slow", "profile:read", &["--rate-per-second", "1"]);
    let port = free_port();
    setup.extra_env.insert("OMNIFOLD_AUTH__KEYS_FILE".into(), keys.display().to_string());
    setup.extra_env.insert("OMNIFOLD_SERVER__HTTP_LISTEN".into(), format!("127.0.0.1:{port}"));
    setup.extra_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    setup.create_topics();
    let service = Service::start(&setup, data.path());
    Http { stack: Stack { broker, data, setup, service }, port, partner, reader, slow }
}

impl Http {
    async fn send(&self, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> (u16, Value, String) {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        let (status, head, body) = http_request(self.port, method, path, &headers, body).await;
        let retry_after = head.get("retry-after").cloned().unwrap_or_default();
        let value =
            serde_json::from_slice(&body).unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(&body)));
        (status, value, retry_after)
    }
}

fn event(id: &str, member: &str, payload: &str) -> Value {
    let subject = format!(r#"{{"memberId":"{member}"}}"#);
    serde_json::from_slice(&json_event(id, &days_ago(1.0), "MOBILE_APP", &subject, payload)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_answers_each_event_of_a_mixed_batch_and_writes_only_the_valid_ones() {
    let http = start("http-collect", &[("OMNIFOLD_SERVER__HTTP_MAX_BODY_BYTES", "4096")]);
    let view = event("h-view", "m-1", r#""productViewed":{"sku":"SKU-1","category":"shoes"}"#);
    let mut no_subject = event("h-bad", "m-1", r#""productViewed":{"sku":"SKU-2","category":"shoes"}"#);
    no_subject.as_object_mut().unwrap().remove("subject");
    let mint = event("h-mint", "m-1", r#""pointsAdjusted":{"delta":"100000","reason":"gift","actor":"partner"}"#);
    let order = event(
        "h-order",
        "m-1",
        r#""orderPlaced":{"orderId":"o-h","currency":"CNY","totalMinor":"25600","lines":[{"sku":"SKU-1","category":"shoes","quantity":1,"unitPriceMinor":"25600"}]}"#,
    );
    let batch = json!({"events": [view, no_subject, mint, 42, order]});
    let body = serde_json::to_vec(&batch).unwrap();

    // Credentials and scope first, as for gRPC.
    let (status, answer, _) = http.send("POST", "/v1/events", None, &body).await;
    assert_eq!((status, answer["status"].as_str()), (401, Some("UNAUTHENTICATED")), "{answer}");
    let (status, answer, _) = http.send("POST", "/v1/events", Some(&http.reader), &body).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("events:write"), "{answer}");

    let (status, answer, _) = http.send("POST", "/v1/events", Some(&http.partner), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64(), answer["failed"].as_u64()),
        (Some(2), Some(3), Some(0))
    );
    let results = answer["results"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ACCEPTED", "REJECTED", "REJECTED", "REJECTED", "ACCEPTED"]);
    assert_eq!(results[0]["eventId"], "h-view");
    assert!(results[1]["reason"].as_str().unwrap().contains("subject"), "{}", results[1]);
    assert!(results[2]["reason"].as_str().unwrap().contains("AdjustPoints"), "{}", results[2]);
    assert!(!results[3]["reason"].as_str().unwrap().is_empty());

    // The accepted events are folded; nothing else reached Kafka.
    http.stack.service.wait_consumed(&http.stack.setup, 2).await;
    let p = get(&http.stack.service, "m-1").await.unwrap();
    assert_eq!((p.browse.unwrap().product_views, p.purchases.as_ref().unwrap().orders), (1, 1));
    let points = p.loyalty.unwrap();
    assert!(points.active_points + points.pending_points < 100_000, "the order's points only, none minted: {points:?}");
    assert!(http.stack.setup.dead_letters(0).is_empty());
    // Sending the batch again changes nothing (event ids).
    let (status, _, _) = http.send("POST", "/v1/events", Some(&http.partner), &body).await;
    assert_eq!(status, 200);
    http.stack.service.wait_consumed(&http.stack.setup, 4).await;
    let again = get(&http.stack.service, "m-1").await.unwrap();
    assert_eq!(again.purchases.unwrap().orders, 1);

    // Size limits say what they are.
    let big =
        json!({"events": [event("h-big", "m-1", &format!(r#""searchPerformed":{{"query":"{}"}}"#, "x".repeat(5000)))]});
    let (status, answer, _) =
        http.send("POST", "/v1/events", Some(&http.partner), &serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("4096"), "{answer}");
    let many: Vec<Value> = (0..501).map(|_| json!({})).collect();
    let (status, answer, _) =
        http.send("POST", "/v1/events", Some(&http.partner), &serde_json::to_vec(&many).unwrap()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("500"), "{answer}");
    let (status, _, _) = http.send("POST", "/v1/events", Some(&http.partner), b"not json").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_returns_what_grpc_returns_masked_the_same_way() {
    let http = start("http-gateway", &[]);
    let subject = r#"{"memberId":"m-1"}"#;
    let link = r#""identityLinked":{"identifiers":[{"type":"PHONE","value":"+8613800000001"},{"type":"EMAIL","value":"li@example.com"}]}"#;
    let order = r#""orderPlaced":{"orderId":"o-1","currency":"CNY","totalMinor":"10000"}"#;
    let events = vec![
        ("m-1".to_owned(), json_event("g-link", &days_ago(20.0), "MOBILE_APP", subject, link)),
        ("m-1".to_owned(), json_event("g-order", &days_ago(20.0), "STORE_POS", subject, order)),
    ];
    http.stack.setup.produce(&events);
    http.stack.service.wait_consumed(&http.stack.setup, 2).await;

    // The same instant for both, so time windows agree.
    let at = days_ago(1.0);
    let at_query = at.replace('+', "%2B");
    let (status, over_http, _) =
        http.send("GET", &format!("/v1/profiles/m-1?as_of={at_query}"), Some(&http.reader), b"").await;
    assert_eq!(status, 200, "{over_http}");
    let conn = connect_as(&http.stack.service.grpc, Some(&http.reader)).await.unwrap();
    let as_of: pbjson_types::Timestamp = serde_json::from_value(json!(at)).unwrap();
    let over_grpc = proto::profile_service_client::ProfileServiceClient::new(conn.clone())
        .get_profile(proto::GetProfileRequest { member: member("m-1"), as_of: Some(as_of), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_http, serde_json::to_value(&over_grpc).unwrap());
    let shown = over_http["identifiers"].to_string();
    assert!(!shown.contains("13800000001") && shown.contains("****"), "masked: {shown}");

    // By an identifier, a lookup, and the loyalty reads.
    let (status, by_phone, _) = http
        .send("GET", &format!("/v1/profiles/PHONE:%2B8613800000001?as_of={at_query}"), Some(&http.reader), b"")
        .await;
    assert_eq!((status, &by_phone), (200, &over_http));
    let (status, found, _) = http.send("GET", "/v1/identifiers/PHONE/%2B8613800000001", Some(&http.reader), b"").await;
    assert_eq!((status, found["memberId"].as_str()), (200, Some("m-1")), "{found}");
    for path in ["/v1/members/m-1/balance", "/v1/members/m-1/benefits", "/v1/members/m-1/ledger?page_size=5"] {
        let (status, answer, _) = http.send("GET", path, Some(&http.reader), b"").await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let (status, answer, _) = http.send("GET", "/v1/profiles/nobody", Some(&http.reader), b"").await;
    assert_eq!((status, answer["status"].as_str()), (404, Some("NOT_FOUND")), "{answer}");
    let (status, answer, _) = http.send("GET", "/v1/profiles/m-1?fields=nonsense", Some(&http.reader), b"").await;
    assert_eq!((status, answer["status"].as_str()), (400, Some("INVALID_ARGUMENT")), "{answer}");

    // A redemption: a verdict, and the same verdict for the same request id.
    let redeem = br#"{"requestId":"http-1","points":"50","channel":"MOBILE_APP","reward":"coupon"}"#;
    let first = redeem_over_http(&http, redeem).await;
    assert_eq!(first["status"], "ACCEPTED", "{first}");
    let again = redeem_over_http(&http, redeem).await;
    assert_eq!((&again["status"], &again["eventId"]), (&first["status"], &first["eventId"]), "the same verdict");
    assert_eq!(again["balance"]["activePoints"], first["balance"]["activePoints"], "spent once");
    let (status, _, _) = http.send("POST", "/v1/members/m-1/redemptions", Some(&http.partner), redeem).await;
    assert_eq!(status, 403, "a partner that may only send events may not spend points");

    // A caller over its rate gets 429 and how long to wait.
    let mut limited = None;
    for _ in 0..5 {
        let (status, answer, retry_after) = http.send("GET", "/v1/profiles/m-1", Some(&http.slow), b"").await;
        if status == 429 {
            limited = Some((answer, retry_after));
            break;
        }
    }
    let (answer, retry_after) = limited.expect("a 429 within five calls at one a second");
    assert_eq!(answer["status"], "RESOURCE_EXHAUSTED");
    assert!(retry_after.parse::<u64>().unwrap() >= 1, "{retry_after}");

    // The document of these routes is served.
    let (status, doc, _) = http.send("GET", "/v1/openapi.json", None, b"").await;
    assert_eq!((status, doc["openapi"].as_str().map(|v| v.starts_with("3."))), (200, Some(true)));
}

/// Redeems until the verdict is decided (IN_PROGRESS is asked again).
async fn redeem_over_http(http: &Http, body: &[u8]) -> Value {
    eventually("a redemption verdict", Duration::from_secs(30), || async {
        let (status, answer, _) = http.send("POST", "/v1/members/m-1/redemptions", Some(&http.reader), body).await;
        assert_eq!(status, 200, "{answer}");
        (answer["status"] != "IN_PROGRESS").then_some(answer)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_answers_over_http_for_members_another_owns() {
    let broker = Broker::start();
    let setup = Setup::new(&broker, "http-pair", 4);
    setup.create_topics();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports = [free_port(), free_port()];
    let with_http = |i: usize| {
        let listen = format!("127.0.0.1:{}", ports[i]);
        Service::start_with(&setup, dirs[i].path(), &[("OMNIFOLD_SERVER__HTTP_LISTEN", listen.as_str())])
    };
    let (a, _b) = (with_http(0), with_http(1));
    // Both own partitions before anything is asked.
    eventually("the partitions shared by both instances", Duration::from_secs(60), || async {
        let status = a.status().await;
        let owners: std::collections::BTreeSet<&str> = status
            .partitions
            .iter()
            .filter(|p| p.owner_state == "serving")
            .map(|p| p.owner_instance.as_str())
            .collect();
        (owners.len() == 2 && status.partitions.iter().all(|p| p.owner_state == "serving")).then_some(())
    })
    .await;
    let here: Vec<u32> = a.status().await.partitions.iter().filter(|p| p.local).map(|p| p.partition).collect();
    let members: Vec<String> = (0..8).map(|i| format!("m-{i}")).collect();
    let subject = |m: &str| format!(r#"{{"memberId":"{m}"}}"#);
    let view = r#""productViewed":{"sku":"SKU-1","category":"shoes"}"#;
    setup.produce(
        &members
            .iter()
            .map(|m| (m.clone(), json_event(&format!("{m}-v"), &days_ago(1.0), "ONLINE_WEB", &subject(m), view)))
            .collect::<Vec<_>>(),
    );
    let elsewhere =
        members.iter().filter(|m| !here.contains(&omnifold_core::partition::partition_for(m.as_bytes(), 4))).count();
    assert!(elsewhere > 0, "some members are owned by the other instance");
    // Through the first instance's HTTP port: every member, those of the
    // other instance forwarded there with the caller's credentials.
    let bearer = format!("Bearer {API_KEY}");
    for m in &members {
        eventually(&format!("{m} over HTTP"), Duration::from_secs(60), || async {
            let (status, _, body) =
                http_request(ports[0], "GET", &format!("/v1/profiles/{m}"), &[("authorization", &bearer)], b"").await;
            assert!(status != 401 && status != 403, "{m}: {status} {}", String::from_utf8_lossy(&body));
            (status == 200).then_some(())
        })
        .await;
    }
}
