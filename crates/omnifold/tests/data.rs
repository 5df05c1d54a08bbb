//! Data tools end to end: a store rebuilt offline with `omnifold replay`
//! from the same topic dumps to the same digests as the live store.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use common::*;

/// The binary's stdout, failing the test on a non-zero exit.
fn run(setup: &Setup, args: &[&str]) -> String {
    setup.run(args)
}

#[tokio::test(flavor = "multi_thread")]
async fn live_ingest_and_offline_replay_dump_to_the_same_digests() {
    let Stack { broker: _broker, data, setup, service } = Stack::start("replay", 3);
    let e =
        |id: &str, subject: &str, payload: &str| json_event(id, "2026-06-01T10:00:00Z", "MOBILE_APP", subject, payload);
    let records: Vec<(String, Vec<u8>)> = vec![
        (
            "ck-7".into(),
            e(
                "r1",
                r#"{"anonymousId":"ck-7"}"#,
                r#""productViewed":{"sku":"S1","category":"shoes","priceMinor":"100"}"#,
            ),
        ),
        (
            "m-7".into(),
            e(
                "r2",
                r#"{"memberId":"m-7"}"#,
                r#""identityLinked":{"anonymousId":"ck-7","identifiers":[{"type":"PHONE","value":"+8613900000077"}]}"#,
            ),
        ),
        (
            "m-7".into(),
            e(
                "r3",
                r#"{"memberId":"m-7"}"#,
                r#""orderPlaced":{"orderId":"o-1","currency":"CNY","totalMinor":"25000"}"#,
            ),
        ),
        (
            "m-8".into(),
            e("r4", r#"{"memberId":"m-8"}"#, r#""orderPlaced":{"orderId":"o-2","currency":"USD","totalMinor":"1000"}"#),
        ),
        (
            "m-8".into(),
            e("r5", r#"{"memberId":"m-8"}"#, r#""pointsRedemptionRequested":{"requestId":"q-1","points":"5"}"#),
        ),
        ("m-8".into(), b"{not json".to_vec()),
        (
            "PHONE:+8613900000077".into(),
            e(
                "r6",
                r#"{"identifiers":[{"type":"PHONE","value":"+8613900000077"}]}"#,
                r#""orderPlaced":{"orderId":"o-3","currency":"CNY","totalMinor":"1000"}"#,
            ),
        ),
    ];
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;
    assert!(service.stop().success());

    let live = data.path().to_str().unwrap().to_owned();
    let rebuilt = tempfile::tempdir().unwrap();
    let rebuilt_dir = rebuilt.path().join("store");
    let rebuilt_dir = rebuilt_dir.to_str().unwrap();
    let said = run(&setup, &["replay", "--data-dir", rebuilt_dir, "--idle-ms", "500"]);
    assert!(said.starts_with("replayed "), "{said}");

    let live_digest = run(&setup, &["dump", "--data-dir", &live, "--digest"]);
    let rebuilt_digest = run(&setup, &["dump", "--data-dir", rebuilt_dir, "--digest"]);
    assert_eq!(live_digest.lines().count(), 3, "{live_digest}");
    assert_eq!(live_digest, rebuilt_digest);
    // The dumps are byte-identical too, and one member can be dumped alone.
    assert_eq!(run(&setup, &["dump", "--data-dir", &live]), run(&setup, &["dump", "--data-dir", rebuilt_dir]));
    let one = run(&setup, &["dump", "--data-dir", &live, "--member", "m-7"]);
    assert_eq!(one.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    assert_eq!(v["key"], "m-7");
    assert_eq!(v["member"]["purchases"]["orders"], 2, "its own order and the phone sale");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_fixed_and_replayed_once() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("dlq", 2);
    let at = "2026-06-01T10:00:00Z";
    let m9 = r#"{"memberId":"m-9"}"#;
    let records: Vec<(String, Vec<u8>)> = vec![
        // A return that arrives before its order: refused (rule).
        ("m-9".into(), json_event("ret-1", at, "ONLINE_WEB", m9, r#""orderReturned":{"orderId":"o-9","returnId":"rt-1","amountMinor":"500"}"#)),
        // An event without its id: refused (validation).
        ("m-9".into(), br#"{"occurredAt":"2026-06-01T10:00:00Z","channel":"ONLINE_WEB","subject":{"memberId":"m-9"},"searchPerformed":{"query":"tea"}}"#.to_vec()),
    ];
    setup.produce(&records);
    service.wait_consumed(&setup, 2).await;
    let list = run(&setup, &["dlq", "list"]);
    let lines: Vec<Vec<&str>> = list.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert_eq!((lines[0][1], lines[0][3]), ("rule", "ret-1"));
    assert_eq!((lines[1][1], lines[1][3]), ("validation", "-"));
    let shown: serde_json::Value = serde_json::from_str(&run(&setup, &["dlq", "show", lines[0][0]])).unwrap();
    assert_eq!(shown["reason"], "order o-9 is not known for this subject");

    // The fixes: the missing order arrives; the event without an id gets one.
    setup.produce(&[(
        "m-9".into(),
        json_event(
            "ord-9",
            at,
            "ONLINE_WEB",
            m9,
            r#""orderPlaced":{"orderId":"o-9","currency":"CNY","totalMinor":"1000"}"#,
        ),
    )]);
    let exported = run(&setup, &["dlq", "export", "--kind", "validation"]);
    let mut fixed: serde_json::Value = serde_json::from_str(exported.trim()).unwrap();
    fixed["eventId"] = "search-fixed-1".into();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{fixed}\n")).unwrap();
    run(&setup, &["produce", "--file", file.path().to_str().unwrap()]);
    let said = run(&setup, &["dlq", "replay", "--kind", "rule"]);
    assert!(said.starts_with("sent 1 dead letters"), "{said}");
    service.wait_consumed(&setup, 5).await;
    let applied = |p: &omnifold_proto::v1::Profile| {
        let purchases = p.purchases.as_ref().unwrap();
        (purchases.orders, purchases.returns, purchases.returned_minor, p.browse.as_ref().unwrap().searches)
    };
    let after_fix = get(&service, "m-9").await.unwrap();
    assert_eq!(applied(&after_fix), (1, 1, 500, 1));

    // Replaying the same dead letters again changes nothing.
    run(&setup, &["dlq", "replay", "--kind", "rule"]);
    service.wait_consumed(&setup, 6).await;
    let again = get(&service, "m-9").await.unwrap();
    let without_clock = |p: omnifold_proto::v1::Profile| omnifold_proto::v1::Profile { as_of: None, ..p };
    assert_eq!(without_clock(again), without_clock(after_fix));
}

/// A store of format 2 (omnifold 0.2, orders inline in member records;
/// `crates/store/tests/fixtures`) is upgraded by the first read-write open
/// and then dumps byte for byte what omnifold 0.2 dumped from it.
#[test]
fn an_upgraded_format_2_store_dumps_what_it_dumped_before() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../store/tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures.join("store-v2")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    drop(
        omnifold_store::Store::open(&omnifold_store::StoreConfig { path: dir.path().into(), ..Default::default() })
            .unwrap(),
    );
    let out =
        std::process::Command::new(BIN).args(["dump", "--data-dir", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = std::fs::read_to_string(fixtures.join("store-v2.dump.jsonl")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_a_corrupted_member_and_none_on_a_healthy_store() {
    let Stack { broker: _broker, data, setup, service } = Stack::start("verify", 2);
    let at = "2026-06-01T10:00:00Z";
    let records: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let m = format!("m-{i}");
            let subject = format!(r#"{{"memberId":"{m}"}}"#);
            let order =
                format!(r#""orderPlaced":{{"orderId":"o-{i}","currency":"CNY","totalMinor":"{}"}}"#, 1_000 * (i + 1));
            (m, json_event(&format!("v-{i}"), at, "STORE_POS", &subject, &order))
        })
        .collect();
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;
    let dir = data.path().to_str().unwrap().to_owned();

    // Healthy, and checked while the service is running.
    let said = run(&setup, &["verify", "--data-dir", &dir]);
    assert!(said.contains("against the log: 0 differ"), "{said}");
    assert!(service.stop().success());

    // Corrupt one member's stored aggregate on purpose.
    {
        let store = omnifold_store::Store::open(&omnifold_store::StoreConfig {
            path: data.path().to_owned(),
            ..Default::default()
        })
        .unwrap();
        let p = omnifold_core::partition::partition_for(b"m-3", 2);
        let mut m = store.member(p, "m-3").unwrap().unwrap();
        m.purchases.gross_minor += 1;
        let mut batch = store.batch(&setup.topic, p);
        let loaded = m.lineage();
        batch.put_member(&store, &mut m, Some(loaded));
        store.commit(batch).unwrap();
    }
    let out = setup.command().args(["verify", "--data-dir", &dir]).output().unwrap();
    assert!(!out.status.success(), "verify exits non-zero on a difference");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("member m-3 (partition"), "{said}");
    assert!(said.contains("differs from the log in member.purchases"), "{said}");
    assert!(said.contains(": 1 differ"), "{said}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 members differ from the log"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_files_gives_the_stores_of_live_ingest() {
    use std::io::Write;
    let Stack { broker: _broker, data, setup, service } = Stack::start("files", 3);
    let at = |d: u32| format!("2026-06-{d:02}T10:00:00Z");
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..12u32 {
        let m = format!("m-{i}");
        let subject = format!(r#"{{"memberId":"{m}"}}"#);
        let channel = ["ONLINE_WEB", "MOBILE_APP", "STORE_POS"][i as usize % 3];
        records.push((
            m.clone(),
            json_event(
                &format!("f-{i}-a"),
                &at(1 + i % 9),
                channel,
                &subject,
                r#""productViewed":{"sku":"S1","category":"shoes","priceMinor":"100"}"#,
            ),
        ));
        let order =
            format!(r#""orderPlaced":{{"orderId":"o-{i}","currency":"CNY","totalMinor":"{}"}}"#, 1_000 + 37 * i);
        records.push((m.clone(), json_event(&format!("f-{i}-b"), &at(2 + i % 9), channel, &subject, &order)));
        if i % 4 == 0 {
            let ret = format!(r#""orderReturned":{{"orderId":"o-{i}","returnId":"r-{i}","amountMinor":"300"}}"#);
            records.push((m, json_event(&format!("f-{i}-c"), &at(3 + i % 9), channel, &subject, &ret)));
        }
    }
    records.push(("m-0".into(), b"{not json".to_vec()));
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;
    assert!(service.stop().success());

    // The same events as files: JSON lines, gzip, and zstd protobuf-delimited.
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("events.jsonl");
    let body: Vec<u8> = records.iter().flat_map(|(_, v)| v.iter().copied().chain(*b"\n")).collect();
    std::fs::write(&jsonl, &body).unwrap();
    let gz = dir.path().join("events.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&body).unwrap();
    enc.finish().unwrap();
    let zst = dir.path().join("events.pb.zst");
    let mut pb = Vec::new();
    for (_, v) in records.iter().filter(|(_, v)| v.first() == Some(&b'{') && v.len() > 10) {
        use prost::Message;
        let e: omnifold_proto::v1::Event = serde_json::from_slice(v).unwrap();
        e.encode_length_delimited(&mut pb).unwrap();
    }
    std::fs::write(&zst, zstd::encode_all(pb.as_slice(), 3).unwrap()).unwrap();

    let store_of = |name: &str, file: &std::path::Path, format: &str| {
        let out = dir.path().join(name);
        let said = run(
            &setup,
            &[
                "replay",
                "--file",
                file.to_str().unwrap(),
                "--format",
                format,
                "--partitions",
                "3",
                "--data-dir",
                out.to_str().unwrap(),
            ],
        );
        assert!(said.starts_with("replayed "), "{said}");
        out.to_str().unwrap().to_owned()
    };
    let from_json = store_of("json", &jsonl, "json");
    let from_gz = store_of("gz", &gz, "json");
    let from_zst = store_of("zst", &zst, "protobuf");
    let digest = |d: &str| run(&setup, &["dump", "--data-dir", d, "--digest"]);
    assert_eq!(digest(&from_json), digest(&from_gz));
    assert_eq!(digest(&from_json), digest(&from_zst), "the encoding changes nothing");
    // Every member is exactly as live ingest built it (the live store also
    // holds the test's probe events, so compare member by member).
    let live = data.path().to_str().unwrap().to_owned();
    for i in 0..12 {
        let m = format!("m-{i}");
        let a = run(&setup, &["dump", "--data-dir", &live, "--member", &m]);
        let b = run(&setup, &["dump", "--data-dir", &from_json, "--member", &m]);
        assert!(!a.is_empty());
        assert_eq!(a, b, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_a_time_folds_only_what_was_written_since() {
    let Stack { broker: _broker, data: _data, setup, service: _service } = Stack::start("fromtime", 2);
    let ev = |i: u32| {
        let m = format!("m-{i}");
        let subject = format!(r#"{{"memberId":"{m}"}}"#);
        (
            m,
            json_event(
                &format!("t-{i}"),
                "2026-06-01T10:00:00Z",
                "ONLINE_WEB",
                &subject,
                r#""searchPerformed":{"query":"tea"}"#,
            ),
        )
    };
    setup.produce(&(0..4).map(ev).collect::<Vec<_>>());
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + 1;
    let since_text = serde_json::to_value(omnifold_core::time::to_timestamp(since)).unwrap();
    while (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64) <= since {
        std::thread::yield_now();
    }
    setup.produce(&(4..7).map(ev).collect::<Vec<_>>());

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    run(&setup, &["replay", "--data-dir", store, "--from-time", since_text.as_str().unwrap(), "--idle-ms", "500"]);
    let dump = run(&setup, &["dump", "--data-dir", store]);
    let mut keys: Vec<String> = dump
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["m-4", "m-5", "m-6"], "tansu answers offset 0 for any time: records before it are skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_to_a_rebuilt_store_keeps_every_read_answering_and_never_older() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let Stack { broker: _broker, data, setup, service } = Stack::start("bluegreen", 3);
    let members: Vec<String> = (0..6).map(|i| format!("m-{i}")).collect();
    let wave = |tag: &str| -> Vec<(String, Vec<u8>)> {
        members
            .iter()
            .map(|m| {
                let subject = format!(r#"{{"memberId":"{m}"}}"#);
                let id = format!("{tag}-{m}");
                (
                    m.clone(),
                    json_event(
                        &id,
                        "2026-06-01T10:00:00Z",
                        "ONLINE_WEB",
                        &subject,
                        r#""searchPerformed":{"query":"tea"}"#,
                    ),
                )
            })
            .collect()
    };
    setup.produce(&wave("a"));
    service.wait_consumed(&setup, 6).await;

    // Green: rebuilt from the topic while blue serves; then blue reads on.
    let green = tempfile::tempdir().unwrap();
    let green_dir = green.path().join("store");
    run(&setup, &["replay", "--data-dir", green_dir.to_str().unwrap(), "--idle-ms", "300"]);
    setup.produce(&wave("b"));
    service.wait_consumed(&setup, 12).await;

    // A client reads continuously through the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (grpc, stop, reads, members) = (service.grpc.clone(), stop.clone(), reads.clone(), members.clone());
        tokio::spawn(async move {
            let mut c = omnifold_proto::v1::profile_service_client::ProfileServiceClient::new(
                common::connect(&grpc).await.unwrap(),
            );
            let mut seen: std::collections::HashMap<String, (i64, u64)> = Default::default();
            while !stop.load(Ordering::SeqCst) {
                for m in &members {
                    let p = c
                        .get_profile(omnifold_proto::v1::GetProfileRequest {
                            member: member(m),
                            read_mask: None,
                            as_of: None,
                        })
                        .await
                        .unwrap_or_else(|e| panic!("read of {m} failed during the switch: {e}"))
                        .into_inner();
                    let v = p.version.unwrap();
                    let now = (v.next_offset, v.events_applied);
                    let before = seen.insert(m.clone(), now).unwrap_or((0, 0));
                    assert!(now >= before, "{m} went back from {before:?} to {now:?}");
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let said = run(&setup, &["switch", "--server", &service.grpc, "--data-dir", green_dir.to_str().unwrap()]);
    assert!(said.contains("serving from"), "{said}");
    setup.produce(&wave("c"));
    service.wait_consumed(&setup, 18).await;
    stop.store(true, Ordering::SeqCst);
    reader.await.unwrap();
    assert!(reads.load(Ordering::SeqCst) > 0);

    // Every member has all three waves, served and folded by the green store;
    // blue stopped at the switch.
    for m in &members {
        let p = get(&service, m).await.unwrap();
        assert_eq!(p.browse.unwrap().searches, 3, "{m}");
    }
    let blue = data.path().to_str().unwrap().to_owned();
    let in_green = run(&setup, &["dump", "--data-dir", green_dir.to_str().unwrap(), "--member", "m-0"]);
    let in_blue = run(&setup, &["dump", "--data-dir", &blue, "--member", "m-0"]);
    let searches = |dump: &str| {
        serde_json::from_str::<serde_json::Value>(dump.trim()).unwrap()["member"]["browse"]["searches"].clone()
    };
    assert_eq!((searches(&in_blue), searches(&in_green)), (2.into(), 3.into()));
}
