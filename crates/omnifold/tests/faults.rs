//! Faults a real deployment meets, against the real binary: the broker
//! going away for 30 s while ingest and redemptions run, a full disk under
//! the store, and a record the broker refuses for good. In each, the process
//! keeps running, reads keep answering, health says what is wrong, nothing
//! is lost or counted twice, and folding resumes once the cause is gone.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use omnifold_proto::v1 as proto;

const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// Members with an active balance of 1,000 points (an order 30 days ago),
/// and a cookie each that browsed before logging in.
fn members_with_points(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in 0..n {
        let member = format!(r#"{{"memberId":"m-{m}"}}"#);
        let anon = format!(r#"{{"anonymousId":"ck-{m}"}}"#);
        let order = format!(r#""orderPlaced":{{"orderId":"o-{m}","currency":"CNY","totalMinor":"100000"}}"#);
        out.push((format!("m-{m}"), json_event(&format!("o-{m}"), &days_ago(30.0), "STORE_POS", &member, &order)));
        let view = r#""productViewed":{"sku":"SKU-1","category":"shoes"}"#;
        out.push((format!("ck-{m}"), json_event(&format!("v-{m}"), &days_ago(2.0), "ONLINE_WEB", &anon, view)));
    }
    out
}

/// Logins that link each cookie to its member: claims and joins to write.
fn logins(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|m| {
            let member = format!(r#"{{"memberId":"m-{m}"}}"#);
            let link = format!(r#""identityLinked":{{"anonymousId":"ck-{m}"}}"#);
            (format!("m-{m}"), json_event(&format!("l-{m}"), &days_ago(1.0), "MOBILE_APP", &member, &link))
        })
        .collect()
}

/// Every accepted request id is in its member's ledger exactly once, and
/// no other redemption is.
async fn accepted_exactly_once(service: &Service, accepted: &BTreeMap<String, Vec<String>>) {
    for (m, want) in accepted {
        let mut got = redeemed_request_ids(service, m).await;
        got.sort();
        let mut want = want.clone();
        want.sort();
        assert_eq!(got, want, "the REDEEM entries of {m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_away_for_30_s_loses_nothing_and_redemptions_answer_unavailable() {
    let storage = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_persistent(storage.path());
    let mut setup = Setup::new(&broker, "outage", 3);
    setup.extra_env.insert("OMNIFOLD_KAFKA__ASSIGNMENT".into(), "all".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    let n = 8;
    let first = members_with_points(n);
    setup.produce(&first);
    service.wait_consumed(&setup, first.len() as i64).await;
    let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in 0..n {
        let r = redeem_until_decided(&service.grpc, &format!("m-{m}"), &format!("before-{m}"), 100).await;
        assert_eq!(r.status, proto::RedemptionStatus::Accepted as i32);
        accepted.entry(format!("m-{m}")).or_default().push(format!("before-{m}"));
    }

    // The logins go in, and the broker goes away while ingest writes their
    // claims and joins.
    setup.produce(&logins(n));
    broker.stop();
    let stopped = Instant::now();
    eventually("the instance sees the broker down", Duration::from_secs(30), || async {
        (service.status().await.broker == "down").then_some(())
    })
    .await;
    service.wait_health("omnifold.ingest", NOT_SERVING).await;
    // Redemptions go through the log: not served; reads answer from the store: served.
    service.wait_health("omnifold.v1.LoyaltyService", NOT_SERVING).await;
    assert_eq!(service.health("").await, SERVING, "the server itself serves");
    assert_eq!(service.health("omnifold.v1.ProfileService").await, SERVING);
    // Reads answer from the store.
    let p = get(&service, "m-0").await.expect("a read during the outage");
    assert_eq!(p.purchases.unwrap().orders, 1);
    // A redemption answers UNAVAILABLE at once, saying why; nothing is spent.
    let mut loyalty = service.loyalty().await;
    let asked = Instant::now();
    let err = loyalty
        .redeem_points(proto::RedeemPointsRequest {
            member: member("m-0"),
            request_id: "during-0".into(),
            points: 100,
            channel: proto::Channel::MobileApp as i32,
            reward: "voucher".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("unreachable") && err.message().contains("request_id"), "{}", err.message());
    eprintln!("UNAVAILABLE after {:?} (command timeout 5 s)", asked.elapsed());
    // Redemptions keep arriving from the apps throughout the outage.
    let during: Vec<_> = (0..n)
        .map(|m| {
            let grpc = service.grpc.clone();
            tokio::spawn(async move {
                let (member, request) = (format!("m-{m}"), format!("during-{m}"));
                let r = redeem_until_decided(&grpc, &member, &request, 100).await;
                (member, request, r.status)
            })
        })
        .collect();
    // The outage lasts 30 s.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    assert!(service.status().await.ingest_running, "ingest waits; it does not exit");

    broker.restart();
    for task in during {
        let (member, request, status) = task.await.unwrap();
        assert_eq!(status, proto::RedemptionStatus::Accepted as i32, "{request}");
        accepted.entry(member).or_default().push(request);
    }
    let total = (first.len() + n) as i64;
    service.wait_consumed(&setup, total).await;
    service.wait_health("omnifold.ingest", SERVING).await;
    service.wait_health("omnifold.v1.LoyaltyService", SERVING).await;
    for m in 0..n {
        let p = get(&service, &format!("m-{m}")).await.unwrap();
        assert_eq!(p.browse.unwrap().product_views, 1, "m-{m}: the cookie's history joined");
    }
    accepted_exactly_once(&service, &accepted).await;
    // Exactly what a clean replay of the log gives.
    assert_eq!(digest(&setup, data.path()), replayed_digest(&setup));
    assert!(service.stop().success());
}

/// A size-limited directory (tmpfs) for the store, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(ok.success(), "this test mounts a tmpfs (run as root, as make test does on CI)");
        SmallDisk { dir }
    }

    fn grow(&self, bytes: u64) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stalls_folding_corrupts_nothing_and_folding_resumes_when_space_returns() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "disk", 2);
    setup.extra_env.insert("OMNIFOLD_KAFKA__ASSIGNMENT".into(), "all".into());
    setup.extra_env.insert("OMNIFOLD_STORE__WRITE_BUFFER_BYTES".into(), (4u64 << 20).to_string());
    setup.extra_env.insert("OMNIFOLD_STORE__BLOCK_CACHE_BYTES".into(), (8u64 << 20).to_string());
    setup.extra_env.insert("OMNIFOLD_STORE__KEEP_HISTORY".into(), "true".into());
    setup.create_topics();
    let disk = SmallDisk::mount(3 << 20);
    let data = disk.dir.path().join("store");
    let service = Service::start(&setup, &data);
    // Searches with long queries that do not compress, kept in each
    // member's history: more than 3 MiB even once flushed to table files
    // and the write-ahead log is recycled (a flush could otherwise shrink
    // the store under the limit, depending on when it ran).
    let noise = |i: u64| -> String {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    };
    let events: Vec<(String, Vec<u8>)> = (0..12_000u64)
        .map(|i| {
            let m = format!("m-{}", i % 50);
            let subject = format!(r#"{{"memberId":"{m}"}}"#);
            let search = format!(r#""searchPerformed":{{"query":"{i:04} {}"}}"#, noise(i));
            (m, json_event(&format!("s-{i}"), &days_ago(1.0), "ONLINE_WEB", &subject, &search))
        })
        .collect();
    setup.produce(&events);
    let stalled = eventually("a partition stalls on the full disk", Duration::from_secs(120), || async {
        let s = service.status().await;
        s.partitions.into_iter().find(|p| p.state == "stalled")
    })
    .await;
    assert!(stalled.error.contains("No space left on device"), "{}", stalled.error);
    service.wait_health("omnifold.ingest", NOT_SERVING).await;
    // Reads answer meanwhile (a member not folded yet is simply not found).
    if let Err(e) = get(&service, "m-0").await {
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    }

    disk.grow(256 << 20);
    service.wait_consumed(&setup, events.len() as i64).await;
    service.wait_health("omnifold.ingest", SERVING).await;
    for m in 0..50 {
        let p = get(&service, &format!("m-{m}")).await.unwrap();
        assert_eq!(p.browse.unwrap().searches, 240, "m-{m}: every search once");
    }
    assert!(service.stop().success());
    // Nothing corrupt: exactly what a clean replay of the log gives.
    assert_eq!(digest(&setup, &data), replayed_digest(&setup));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_the_broker_refuses_stalls_its_partition_not_the_process() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "refused", 2);
    setup.extra_env.insert("OMNIFOLD_KAFKA__ASSIGNMENT".into(), "all".into());
    // librdkafka's topic.metadata.propagation.max.ms, in its environment spelling.
    setup.extra_env.insert("OMNIFOLD_KAFKA__LIBRDKAFKA__TOPIC_METADATA_PROPAGATION_MAX_MS".into(), "1000".into());
    setup.create_topics();
    // The dead-letter topic it is told to use does not exist: every dead
    // letter is refused.
    setup.dlq = format!("{}.missing", setup.dlq);
    let data = tempfile::tempdir().unwrap();
    let mut service = Service::start(&setup, data.path());
    let good = |id: &str, m: &str| {
        let subject = format!(r#"{{"memberId":"{m}"}}"#);
        (m.to_owned(), json_event(id, &days_ago(1.0), "ONLINE_WEB", &subject, r#""searchPerformed":{"query":"tea"}"#))
    };
    // m-a's partition meets a broken record; the other partition's member does not.
    let other = (0..).map(|i| format!("m-{i}")).find(|m| {
        omnifold_core::partition::partition_for(m.as_bytes(), 2) != omnifold_core::partition::partition_for(b"m-a", 2)
    });
    let other = other.unwrap();
    setup.produce(&[good("a1", "m-a"), ("m-a".into(), b"{broken".to_vec()), good("a2", "m-a"), good("b1", &other)]);
    let stalled = eventually("m-a's partition stalls", Duration::from_secs(60), || async {
        service.status().await.partitions.into_iter().find(|p| p.state == "stalled")
    })
    .await;
    assert!(stalled.error.contains("refused a record") && stalled.error.contains(".missing"), "{}", stalled.error);
    // The other partition folds on; the process runs.
    eventually("the other partition folds", Duration::from_secs(30), || async { get(&service, &other).await.ok() })
        .await;
    assert!(service.is_running());
    service.wait_health("omnifold.ingest", NOT_SERVING).await;

    // The operator creates the topic: the partition resumes, in order.
    setup.create_topics();
    eventually("m-a has both searches", Duration::from_secs(60), || async {
        get(&service, "m-a").await.ok().filter(|p| p.browse.as_ref().is_some_and(|b| b.searches == 2))
    })
    .await;
    assert_eq!(setup.dead_letters(1).len(), 1);
    service.wait_health("omnifold.ingest", SERVING).await;
}
