//! The crash loop: `omnifold serve` folds a known stream (orders, browsing,
//! logins that join cookie histories in several parts, a merge, returns)
//! while apps redeem points through the API, and is killed again and again:
//! by SIGKILL at random moments, and by aborts at chosen points (before and
//! after a store commit, after writing its outbox, halfway through a join's
//! parts). It is started again each time. At the end the store is exactly
//! what a clean replay of the log gives, and every accepted redemption is
//! in the ledger exactly once.
//!
//! `CRASHLOOP_KILLS` sets the number of kills (24 by default; `make soak`
//! runs hundreds), `CRASHLOOP_SEED` replays a run (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use omnifold_proto::v1 as proto;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MEMBERS: usize = 24;

/// The stream: per member an old order (active points), cookie browsing
/// long enough to join in several parts, a login, newer orders and a return;
/// one member merged into another.
fn stream() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in 0..MEMBERS {
        let member = format!(r#"{{"memberId":"m-{m}"}}"#);
        let anon = format!(r#"{{"anonymousId":"ck-{m}"}}"#);
        let order = |id: &str, total: u32| {
            format!(r#""orderPlaced":{{"orderId":"{id}","currency":"CNY","totalMinor":"{total}"}}"#)
        };
        out.push((
            format!("m-{m}"),
            json_event(&format!("o0-{m}"), &days_ago(40.0), "STORE_POS", &member, &order(&format!("o0-{m}"), 200_000)),
        ));
        for v in 0..60 {
            let view = format!(r#""productViewed":{{"sku":"SKU-{v}","category":"c{}","priceMinor":"1999"}}"#, v % 5);
            out.push((
                format!("ck-{m}"),
                json_event(&format!("v-{m}-{v}"), &days_ago(20.0 - v as f64 * 0.1), "ONLINE_WEB", &anon, &view),
            ));
        }
        let link = format!(r#""identityLinked":{{"anonymousId":"ck-{m}"}}"#);
        out.push((format!("m-{m}"), json_event(&format!("l-{m}"), &days_ago(10.0), "MOBILE_APP", &member, &link)));
        for k in 1..4 {
            let id = format!("o{k}-{m}");
            out.push((
                format!("m-{m}"),
                json_event(&id, &days_ago(10.0 - k as f64), "MOBILE_APP", &member, &order(&id, 30_000)),
            ));
        }
        let ret = format!(r#""orderReturned":{{"orderId":"o1-{m}","returnId":"r-{m}","amountMinor":"10000"}}"#);
        out.push((format!("m-{m}"), json_event(&format!("r-{m}"), &days_ago(5.0), "STORE_POS", &member, &ret)));
    }
    // m-1 merges into m-0 (its history, lots and decided redemptions move).
    let merge = r#""membersMerged":{"fromMemberId":"m-1","intoMemberId":"m-0"}"#;
    out.push(("m-0".into(), json_event("merge-1", &days_ago(1.0), "CALL_CENTER", r#"{"memberId":"m-0"}"#, merge)));
    out
}

/// Redemptions from the apps: retried with the same request id, against
/// whichever instance is up, until decided. Returns the accepted ones.
async fn redeem_all(grpc: Arc<Mutex<String>>, requests: Vec<(String, String)>) -> BTreeMap<String, Vec<String>> {
    let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (member_id, request) in requests {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(Instant::now() < deadline, "{request} was never decided");
            let addr = grpc.lock().unwrap().clone();
            let answer =
                match common::connect(&addr).await.map(proto::loyalty_service_client::LoyaltyServiceClient::new) {
                    Ok(mut c) => c
                        .redeem_points(proto::RedeemPointsRequest {
                            member: member(&member_id),
                            request_id: request.clone(),
                            points: 300,
                            channel: proto::Channel::MiniProgram as i32,
                            reward: "voucher".into(),
                        })
                        .await
                        .ok()
                        .map(|r| r.into_inner().status),
                    Err(_) => None,
                };
            match answer {
                Some(s) if s == proto::RedemptionStatus::Accepted as i32 => {
                    // Spent by the member the request was for, or by the
                    // one it merged into.
                    let holder = if member_id == "m-1" { "m-0".to_owned() } else { member_id.clone() };
                    accepted.entry(holder).or_default().push(request.clone());
                    break;
                }
                Some(s) if s == proto::RedemptionStatus::Rejected as i32 => break,
                // IN_PROGRESS, UNAVAILABLE, NOT_FOUND (not folded yet), a dead instance: ask again.
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    accepted
}

/// One way to die.
#[derive(Debug, Clone, Copy)]
enum Death {
    /// SIGKILL after this many milliseconds.
    Kill(u64),
    /// Abort at a failpoint, on its Nth hit.
    At(&'static str, u32),
}

/// Until every point has been reached, the next death waits at the first
/// one not reached yet (an armed instance with no work that reaches its
/// point is killed after a while, and the point is armed again once more of
/// the stream is in); then any death.
fn pick(rng: &mut StdRng, reached: &BTreeMap<&str, u32>) -> Death {
    const POINTS: [&str; 4] = ["before_commit", "after_commit", "after_outbox", "mid_outbox"];
    if let Some(point) = POINTS.iter().find(|p| !reached.contains_key(*p)) {
        return Death::At(point, rng.random_range(1..4));
    }
    if rng.random_bool(0.5) {
        Death::Kill(rng.random_range(30..900))
    } else {
        Death::At(POINTS[rng.random_range(0..POINTS.len())], rng.random_range(1..6))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_again_and_again_it_ends_exactly_as_a_clean_replay() {
    let kills: usize = std::env::var("CRASHLOOP_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let seed: u64 = std::env::var("CRASHLOOP_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash loop: {kills} kills, CRASHLOOP_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "crashloop", 3);
    for (k, v) in [
        ("OMNIFOLD_KAFKA__ASSIGNMENT", "all"),
        // Small batches: many commits to land between and inside.
        ("OMNIFOLD_KAFKA__BATCH_MAX_RECORDS", "40"),
        // Small records: every cookie's join travels in several parts.
        ("OMNIFOLD_KAFKA__MAX_EVENT_BYTES", "4096"),
    ] {
        setup.extra_env.insert(k.into(), v.into());
    }
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();

    // The producers write the stream in slices while the service dies and
    // comes back; the apps redeem meanwhile.
    let events = stream();
    let total_events = events.len();
    let producer = {
        let (setup, events) = (setup.clone(), events.clone());
        std::thread::spawn(move || {
            // Paced to last through the kills: there is always work to die in.
            for slice in events.chunks(15) {
                setup.produce(slice);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut service = Service::start(&setup, data.path());
    let grpc = Arc::new(Mutex::new(service.grpc.clone()));
    let requests: Vec<(String, String)> =
        (0..MEMBERS * 2).map(|i| (format!("m-{}", i % MEMBERS), format!("rq-{i}"))).collect();
    let redemptions = tokio::spawn(redeem_all(grpc.clone(), requests));

    let (mut by_signal, mut by_failpoint) = (0, 0);
    let mut reached: BTreeMap<&str, u32> = BTreeMap::new();
    for _ in 0..kills {
        let death = pick(&mut rng, &reached);
        match death {
            Death::Kill(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                service.kill9();
                by_signal += 1;
            }
            Death::At(point, nth) => {
                // The armed instance replaces the running one.
                service.kill9();
                let armed_at = format!("{point}:{nth}");
                match Service::try_start_with(&setup, data.path(), &[("OMNIFOLD_FAILPOINT", armed_at.as_str())]) {
                    Ok(mut armed) => {
                        *grpc.lock().unwrap() = armed.grpc.clone();
                        // Dies at the point, or is killed if there is no work to reach it.
                        let deadline = Instant::now() + Duration::from_secs(3);
                        while !armed.has_exited() && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if armed.has_exited() {
                            *reached.entry(point).or_default() += 1;
                            by_failpoint += 1;
                        } else {
                            by_signal += 1;
                        }
                        armed.kill9();
                    }
                    Err(_) => {
                        *reached.entry(point).or_default() += 1;
                        by_failpoint += 1;
                    }
                }
            }
        }
        service = Service::start(&setup, data.path());
        *grpc.lock().unwrap() = service.grpc.clone();
    }
    eprintln!("killed {by_signal} times by SIGKILL and {by_failpoint} times at a failpoint: {reached:?}");
    assert!(by_signal + by_failpoint >= kills);
    for point in ["before_commit", "after_commit", "after_outbox", "mid_outbox"] {
        assert!(reached.contains_key(point), "the failpoint {point} was never reached: {reached:?}");
    }

    producer.join().unwrap();
    let accepted = redemptions.await.unwrap();
    service.wait_consumed(&setup, total_events as i64).await;

    // Nothing lost, nothing twice: every member's stream is in it once.
    for m in 2..MEMBERS {
        let p = get(&service, &format!("m-{m}")).await.unwrap();
        let purchases = p.purchases.unwrap();
        assert_eq!((purchases.orders, purchases.returns), (4, 1), "m-{m}");
        assert_eq!(p.browse.unwrap().product_views, 60, "m-{m}: the cookie's history joined once");
    }
    let merged = get(&service, "m-1").await.unwrap();
    assert_eq!(merged.member_id, "m-0");
    assert_eq!(merged.purchases.unwrap().orders, 8, "m-0 holds both members' orders");
    for (m, want) in &accepted {
        let mut got = redeemed_request_ids(&service, m).await;
        got.sort();
        let mut want = want.clone();
        want.sort();
        assert_eq!(got, want, "every accepted redemption of {m} is in the ledger exactly once");
    }
    // And the store is byte for byte what a clean replay of the log gives.
    let live = digest(&setup, data.path());
    assert!(service.stop().success());
    assert_eq!(live, replayed_digest(&setup));
}
