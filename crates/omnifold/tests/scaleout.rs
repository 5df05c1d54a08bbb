//! Several instances in one consumer group, against a real broker and the
//! real binary: every instance answers for every member (forwarding to the
//! owner, or redirecting when so configured), commands work from any
//! instance, answers carry their partition's applied offset, and a stopped
//! instance's partitions move without an answer going back in time.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use omnifold_core::partition::partition_for;
use omnifold_proto::v1 as proto;
use tonic::Code;
use tonic::metadata::MetadataValue;

const MEMBERS: usize = 24;

/// Per member: an order (points) and two product views.
fn stream(round: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in 0..MEMBERS {
        let key = format!("m-{m}");
        let member = format!(r#"{{"memberId":"{key}"}}"#);
        let order = format!(r#""orderPlaced":{{"orderId":"o-{round}-{m}","currency":"CNY","totalMinor":"50000"}}"#);
        out.push((key.clone(), json_event(&format!("o-{round}-{m}"), &days_ago(40.0), "STORE_POS", &member, &order)));
        for v in 0..2 {
            let view = format!(r#""productViewed":{{"sku":"SKU-{v}","category":"shoes","priceMinor":"1999"}}"#);
            let id = format!("v-{round}-{m}-{v}");
            out.push((key.clone(), json_event(&id, &days_ago(1.0), "ONLINE_WEB", &member, &view)));
        }
    }
    out
}

/// Waits until every partition has a serving owner, as `service` sees it,
/// and returns each partition's owner address.
async fn owners(service: &Service, partitions: usize, instances: usize) -> BTreeMap<u32, String> {
    eventually("every partition served", Duration::from_secs(90), || async {
        let Ok(mut admin) =
            common::connect(&service.grpc).await.map(proto::admin_service_client::AdminServiceClient::new)
        else {
            return None;
        };
        let status = admin.get_partition_status(proto::GetPartitionStatusRequest {}).await.ok()?.into_inner();
        let serving: BTreeMap<u32, String> = status
            .partitions
            .iter()
            .filter(|p| p.owner_state == "serving")
            .map(|p| (p.partition, p.owner_address.clone()))
            .collect();
        let distinct: BTreeSet<&String> = serving.values().collect();
        (serving.len() == partitions && distinct.len() == instances).then_some(serving)
    })
    .await
}

/// A profile read through `service`, with the routing metadata of its answer.
async fn read(service: &Service, id: &str) -> Result<(proto::Profile, String, i64), tonic::Status> {
    let mut c = service.profiles().await;
    let r = c.get_profile(proto::GetProfileRequest { member: member(id), read_mask: None, as_of: None }).await?;
    let served_by = r.metadata().get("omnifold-served-by").unwrap().to_str().unwrap().to_owned();
    let applied = r.metadata().get("omnifold-applied-offset").unwrap().to_str().unwrap().parse().unwrap();
    Ok((without_read_time(r.into_inner()), served_by, applied))
}

/// `read`, asked again while the answer is UNAVAILABLE (the group may
/// still move a partition after it first settled), as a client would.
async fn settled(service: &Service, id: &str) -> Result<(proto::Profile, String, i64), tonic::Status> {
    eventually(&format!("{id} through {} settled", service.grpc), Duration::from_secs(60), || async {
        match read(service, id).await {
            Err(s) if s.code() == Code::Unavailable => None,
            other => Some(other),
        }
    })
    .await
}

/// A profile without the instant it was read at, to compare answers.
fn without_read_time(p: proto::Profile) -> proto::Profile {
    proto::Profile { as_of: None, ..p }
}

/// Reads every member through `service` until each has folded `events`.
async fn read_all(service: &Service, events: u64) -> BTreeMap<String, proto::Profile> {
    let mut out = BTreeMap::new();
    for m in 0..MEMBERS {
        let id = format!("m-{m}");
        let p = eventually(&format!("{id} through {}", service.grpc), Duration::from_secs(90), || async {
            read(service, &id).await.ok().filter(|(p, ..)| p.version.as_ref().unwrap().events_applied == events)
        })
        .await;
        out.insert(id, p.0);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_instance_answers_for_every_member_and_redeems_once() {
    let broker = Broker::start();
    let setup = Setup::new(&broker, "trio", 4);
    setup.create_topics();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Service::start(&setup, dirs[0].path());
    let b = Service::start(&setup, dirs[1].path());
    // The third routes nothing itself: it names the owner instead.
    let c = Service::start_with(&setup, dirs[2].path(), &[("OMNIFOLD_SERVER__ROUTING", "redirect")]);
    let owner_of = owners(&a, 4, 3).await;
    setup.produce(&stream("first"));

    // A and B answer every member, each the same profile, served by its owner.
    let through_a = read_all(&a, 3).await;
    let through_b = read_all(&b, 3).await;
    assert_eq!(through_a, through_b, "two instances gave different answers");
    for m in 0..MEMBERS {
        let id = format!("m-{m}");
        let (profile, served_by, applied) = settled(&b, &id).await.unwrap();
        let partition = partition_for(id.as_bytes(), 4);
        let owner_url = &owner_of[&partition];
        let (_, owner_name, _) = settled(&a, &id).await.unwrap();
        assert_eq!(served_by, owner_name, "{id} is answered by one instance whichever is asked");
        assert!(applied >= profile.version.unwrap().next_offset, "{id}: the partition has folded the member's events");
        // C answers its own members and sends the others to their owner.
        match settled(&c, &id).await {
            Ok((p, ..)) => {
                assert_eq!(owner_url, &c.grpc, "{id}: C answered for a partition it does not own");
                assert_eq!(p, through_a[&id]);
            }
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{id}: {s:?}");
                assert_eq!(s.metadata().get("omnifold-owner").unwrap().to_str().unwrap(), owner_url);
            }
        }
    }

    // Every partition's end and lag, as its owner last said: all folded.
    eventually("every partition's lag known and zero", Duration::from_secs(30), || async {
        let status = a.status().await;
        status
            .partitions
            .iter()
            .all(|p| p.lag == 0 && p.high_watermark == p.owner_applied && p.high_watermark > 0)
            .then_some(())
    })
    .await;

    // `omnifold status` prints one line per partition with its owner.
    let table = setup.run(&["status", "--server", &b.grpc]);
    for p in owner_of.keys() {
        let line = table.lines().find(|l| l.split_whitespace().next() == Some(&p.to_string()));
        let line = line.unwrap_or_else(|| panic!("no line for partition {p}:\n{table}"));
        assert!([&a, &b, &c].iter().any(|s| line.contains(s.grpc.as_str())), "{line}");
    }

    // A batch through A fans out by owner and comes back in request order.
    let asked: Vec<_> = (0..MEMBERS).rev().map(|m| member(&format!("m-{m}")).unwrap()).collect();
    let mut profiles = a.profiles().await;
    let batch = profiles
        .batch_get_profiles(proto::BatchGetProfilesRequest { members: asked.clone(), read_mask: None, as_of: None })
        .await
        .unwrap()
        .into_inner();
    for (want, got) in asked.iter().zip(&batch.results) {
        assert_eq!(got.member.as_ref(), Some(want));
        assert_eq!(got.code, 0, "{}", got.message);
        let Some(proto::member_ref::Ref::MemberId(id)) = &want.r#ref else { panic!() };
        assert_eq!(got.profile.clone().map(without_read_time).as_ref(), Some(&through_a[id]));
        assert!(got.applied_offset > 0);
    }

    // A redemption through an instance that does not own the member is
    // decided once by the owner; asking again elsewhere gets the same answer.
    let id =
        (0..MEMBERS).map(|m| format!("m-{m}")).find(|id| owner_of[&partition_for(id.as_bytes(), 4)] != a.grpc).unwrap();
    let first = redeem_until_decided(&a.grpc, &id, "scaleout-redeem-1", 100).await;
    assert_eq!(first.status, proto::RedemptionStatus::Accepted as i32, "{}", first.reason);
    let again = redeem_until_decided(&b.grpc, &id, "scaleout-redeem-1", 100).await;
    assert_eq!((again.status, &again.event_id), (first.status, &first.event_id));
    let owner = [&a, &b, &c].into_iter().find(|s| s.grpc == owner_of[&partition_for(id.as_bytes(), 4)]).unwrap();
    assert_eq!(redeemed_request_ids(owner, &id).await, vec!["scaleout-redeem-1".to_owned()]);
    let mut loyalty = b.loyalty().await;
    let balance = loyalty.get_balance(proto::GetBalanceRequest { member: member(&id), as_of: None }).await.unwrap();
    assert_eq!(balance.into_inner().active_points, first.balance.unwrap().active_points);

    // The liability report: each instance reports the partitions it answers
    // for, so their sum counts every member once.
    let (partitions, active) =
        eventually("the reports cover every partition once", Duration::from_secs(60), || async {
            let mut partitions = Vec::new();
            let mut active = 0;
            for s in [&a, &b, &c] {
                let mut admin = s.admin().await;
                let r = admin.get_points_liability(proto::GetPointsLiabilityRequest { as_of: None }).await.unwrap();
                let r = r.into_inner();
                partitions.extend(r.partitions);
                active += r.total_active_points;
            }
            partitions.sort_unstable();
            // A partition moving meanwhile is in no report for a moment.
            (partitions.len() == 4).then_some((partitions, active))
        })
        .await;
    assert_eq!(partitions, vec![0, 1, 2, 3], "no partition in two reports");
    assert_eq!(active, MEMBERS as i64 * 500 - 100, "every member's points once, less the redemption");

    // Read your writes: an offset beyond what the partition has folded is
    // answered UNAVAILABLE with a hint; a bad one is refused.
    let (_, _, applied) = settled(&a, &id).await.unwrap();
    let mut ask = tonic::Request::new(proto::GetProfileRequest { member: member(&id), read_mask: None, as_of: None });
    ask.metadata_mut().insert("omnifold-min-offset", MetadataValue::from(applied + 1_000_000));
    let behind = profiles.get_profile(ask).await.unwrap_err();
    assert_eq!(behind.code(), Code::Unavailable, "{behind:?}");
    assert!(behind.metadata().get("omnifold-retry-after-ms").is_some());
    let mut ask = tonic::Request::new(proto::GetProfileRequest { member: member(&id), read_mask: None, as_of: None });
    ask.metadata_mut().insert("omnifold-min-offset", MetadataValue::from(applied));
    assert!(profiles.get_profile(ask).await.is_ok(), "an offset already folded is answered");
    let mut ask = tonic::Request::new(proto::GetProfileRequest { member: member(&id), read_mask: None, as_of: None });
    ask.metadata_mut().insert("omnifold-min-offset", MetadataValue::from_static("soon"));
    assert_eq!(profiles.get_profile(ask).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_instance_hands_its_partitions_over_and_no_answer_goes_back() {
    let broker = Broker::start();
    let setup = Setup::new(&broker, "handover", 4);
    setup.create_topics();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Service::start(&setup, dir_a.path());
    let b = Service::start(&setup, dir_b.path());
    owners(&a, 4, 2).await;
    setup.produce(&stream("first"));
    let before = read_all(&a, 3).await;
    assert_eq!(before, read_all(&b, 3).await);

    // B stops: its partitions move to A, which folds them from the topic
    // before it answers for them. Meanwhile every answer is either the
    // member as it was or newer, or UNAVAILABLE (ask again).
    let stopping = tokio::task::spawn_blocking(move || b.stop());
    let moved = owners(&a, 4, 1);
    tokio::pin!(moved);
    loop {
        tokio::select! {
            _ = &mut moved => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                for (id, seen) in &before {
                    match read(&a, id).await {
                        Ok((p, ..)) => assert!(
                            p.version.unwrap().events_applied >= seen.version.unwrap().events_applied,
                            "{id} went back in time during the handover"
                        ),
                        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{id}: {s:?}"),
                    }
                }
            }
        }
    }
    assert!(stopping.await.unwrap().success(), "B stopped cleanly");
    assert_eq!(read_all(&a, 3).await, before, "A answers for every member as B did");
    setup.produce(&stream("second"));
    let after = read_all(&a, 6).await;
    assert_eq!(after.len(), MEMBERS);
}

/// The digest line of each partition in `dump --digest` output.
fn digests(dump: &str) -> BTreeMap<u32, String> {
    dump.lines()
        .filter_map(|l| {
            let p = l.strip_prefix("partition ")?.split_whitespace().next()?.parse().ok()?;
            Some((p, l.to_owned()))
        })
        .collect()
}

/// On librdkafka's mock cluster, not tansu: tansu 0.6 evicts a member
/// that stopped heartbeating but never hands its partitions to the others
/// (they rejoin and get their own partitions back; a dead member's stay
/// unassigned), which is the fault under test here.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_instance_s_partitions_move_and_nothing_is_lost_stale_or_spent_twice() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let mut setup = Setup::on(&cluster.bootstrap_servers(), "killed", 4);
    // The group notices a silent instance after 6 s instead of 45.
    setup.extra_env.insert("OMNIFOLD_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into());
    for (topic, partitions) in [(&setup.topic, 4), (&setup.dlq, 1), (&setup.identity, 1), (&setup.owners, 1)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Service::start(&setup, dirs[0].path());
    let b = Service::start(&setup, dirs[1].path());
    let c = Service::start(&setup, dirs[2].path());
    owners(&a, 4, 3).await;
    setup.produce(&stream("first"));
    let mut seen: BTreeMap<String, u64> = read_all(&a, 3).await.into_keys().map(|id| (id, 3)).collect();

    // Clients redeem through A and B while C is killed and the second half
    // of the stream goes in.
    let redeemers: Vec<_> = (0..MEMBERS)
        .map(|m| {
            let grpc = if m % 2 == 0 { a.grpc.clone() } else { b.grpc.clone() };
            tokio::spawn(async move {
                let id = format!("m-{m}");
                redeem_until_decided(&grpc, &id, &format!("killed-{m}"), 100).await
            })
        })
        .collect();
    c.kill9();
    setup.produce(&stream("second"));

    // Every read through A or B meanwhile is the member as seen before or
    // newer, or UNAVAILABLE; the partitions move to A and B.
    {
        let moved = owners(&a, 4, 2);
        tokio::pin!(moved);
        loop {
            tokio::select! {
                _ = &mut moved => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    for service in [&a, &b] {
                        for (id, before) in seen.iter_mut() {
                            match read(service, id).await {
                                Ok((p, ..)) => {
                                    let now = p.version.unwrap().events_applied;
                                    assert!(now >= *before, "{id} went back from {before} to {now} events");
                                    *before = now;
                                }
                                Err(s) => assert_eq!(s.code(), Code::Unavailable, "{id}: {s:?}"),
                            }
                        }
                    }
                }
            }
        }
    }
    for r in redeemers {
        let r = r.await.unwrap();
        assert_eq!(r.status, proto::RedemptionStatus::Accepted as i32, "{}", r.reason);
    }
    // Both halves and the redemption, once each, answered alike by A and B.
    let through_a = read_all(&a, 7).await;
    assert_eq!(through_a, read_all(&b, 7).await);
    for m in 0..MEMBERS {
        let id = format!("m-{m}");
        assert_eq!(redeemed_request_ids(&a, &id).await, vec![format!("killed-{m}")], "{id} redeemed once");
        assert_eq!(through_a[&id].loyalty.as_ref().unwrap().active_points, 2 * 500 - 100, "{id}");
    }

    // Each partition's state in its owner's store is what a replay of the
    // whole log into one store gives.
    let status = a.status().await;
    let owner_of: BTreeMap<u32, String> =
        status.partitions.iter().map(|p| (p.partition, p.owner_address.clone())).collect();
    let grpc = (a.grpc.clone(), b.grpc.clone());
    assert!(a.stop().success() && b.stop().success());
    let (in_a, in_b) = (digests(&digest(&setup, dirs[0].path())), digests(&digest(&setup, dirs[1].path())));
    let replayed = digests(&replayed_digest(&setup));
    assert_eq!(replayed.len(), 4);
    for (p, line) in &replayed {
        let owned = if owner_of[p] == grpc.0 { &in_a } else { &in_b };
        assert_eq!(owned.get(p), Some(line), "partition {p} in its owner's store");
    }
}

/// Snapshots taken on demand (and at stop) only, never on a schedule.
fn no_scheduled_snapshots(setup: &mut Setup) {
    setup.extra_env.insert("OMNIFOLD_SNAPSHOTS__EVERY_RECORDS".into(), "0".into());
    setup.extra_env.insert("OMNIFOLD_SNAPSHOTS__EVERY_MS".into(), "0".into());
}

/// Events of `stream(round)` per partition of `partitions`.
fn events_per_partition(round: &str, partitions: u32) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for (key, _) in stream(round) {
        *out.entry(partition_for(key.as_bytes(), partitions)).or_default() += 1;
    }
    out
}

/// Snapshots on demand, then more of the stream, then a new instance joins
/// with an empty store: it restores the latest snapshot of each partition
/// it is given and folds only what came after it.
async fn a_new_instance_starts_from_the_snapshots(name: &str, snapshots: &[(String, String)]) {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, name, 2);
    setup.extra_env.extend(snapshots.iter().cloned());
    // On demand only, so the test knows which snapshot is the latest.
    no_scheduled_snapshots(&mut setup);
    setup.create_topics();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Service::start(&setup, &dir_a.path().join("store"));
    owners(&a, 2, 1).await;
    setup.produce(&stream("first"));
    read_all(&a, 3).await;

    let out = setup.run(&["snapshot", "take", "--server", &a.grpc]);
    let taken: BTreeMap<u32, i64> = out
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("partition ")?;
            let (p, rest) = rest.split_once(": snapshot at offset ")?;
            Some((p.parse().ok()?, rest.split(':').next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(taken.len(), 2, "a snapshot of each partition:\n{out}");
    assert!(taken.values().all(|n| *n > 0), "{out}");
    // The owner's claims carry them into every instance's status.
    eventually("the snapshots in the status", Duration::from_secs(30), || async {
        let status = a.status().await;
        let shown = status
            .partitions
            .iter()
            .all(|p| taken.get(&p.partition) == Some(&p.snapshot_offset) && p.snapshot_taken.is_some());
        shown.then_some(())
    })
    .await;
    // `snapshot list` reads them from the snapshot store.
    let listed = setup.run(&["snapshot", "list"]);
    for (p, n) in &taken {
        let line = listed.lines().find(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.first() == Some(&p.to_string().as_str()) && words.get(1) == Some(&n.to_string().as_str())
        });
        assert!(line.is_some_and(|l| l.ends_with("yes")), "partition {p} at {n}, the latest:\n{listed}");
    }

    setup.produce(&stream("second"));
    let before = read_all(&a, 6).await;

    // B joins with nothing, and counts what it folds.
    let b = Service::start_with_metrics(&setup, &dir_b.path().join("store"));
    owners(&a, 2, 2).await;
    assert_eq!(read_all(&b, 6).await, before, "B answers as A did");
    let page = b.metrics().await;
    let restored: BTreeMap<String, u64> = metric_by(&page, "omnifold_snapshot_restores_total", "partition");
    assert!(!restored.is_empty() && restored.values().all(|n| *n == 1), "B restored its partitions once: {page}");
    // What B folded is exactly the events after the snapshots of the
    // partitions it restored: it read nothing from before them.
    let second = events_per_partition("second", 2);
    let after_snapshots: u64 = restored.keys().map(|p| second[&p.parse::<u32>().unwrap()]).sum();
    assert_eq!(
        metric(&page, "omnifold_events_applied_total"),
        after_snapshots,
        "B folded only the events after the snapshots of {restored:?}, not the history before them"
    );
    assert!(b.stop().success() && a.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_instance_starts_from_snapshots_in_a_directory() {
    let store = tempfile::tempdir().unwrap();
    let url = store.path().display().to_string();
    a_new_instance_starts_from_the_snapshots("snapdir", &[("OMNIFOLD_SNAPSHOTS__URL".into(), url)]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_instance_starts_from_snapshots_in_s3() {
    let moto = omnifold_snapshots::testing::Moto::start();
    let mut env =
        vec![("OMNIFOLD_SNAPSHOTS__URL".to_owned(), format!("s3://{}/omnifold", omnifold_snapshots::testing::BUCKET))];
    for (k, v) in moto.options() {
        env.push((format!("OMNIFOLD_SNAPSHOTS__OPTIONS__{}", k.to_ascii_uppercase()), v));
    }
    a_new_instance_starts_from_the_snapshots("snaps3", &env).await;
}

/// A standby answers a read for a partition another instance owns when the
/// caller opts in, with its lag; without it, the owner answers. When the
/// owner stops, the standby takes the partition over without folding its
/// history again.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_answers_when_asked_and_takes_over_without_replaying() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "standby", 2);
    setup.extra_env.insert("OMNIFOLD_KAFKA__STANDBY".into(), "all".into());
    setup.create_topics();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Service::start(&setup, &dir_a.path().join("store"));
    let b = Service::start_with_metrics(&setup, &dir_b.path().join("store"));
    owners(&a, 2, 2).await;
    setup.produce(&stream("first"));
    let before = read_all(&a, 3).await;

    // Every member through B, from B's own copy (owned or standby) when
    // asked to, else from the owner.
    let standby_read = |id: String| {
        let b = &b;
        async move {
            let mut c = b.profiles().await;
            let mut ask =
                tonic::Request::new(proto::GetProfileRequest { member: member(&id), read_mask: None, as_of: None });
            ask.metadata_mut().insert("omnifold-read-standby", MetadataValue::from_static("true"));
            let r = c.get_profile(ask).await.ok()?;
            let by = r.metadata().get("omnifold-served-by")?.to_str().ok()?.to_owned();
            let lag = r.metadata().get("omnifold-standby-lag").map(|v| v.to_str().unwrap().parse::<i64>().unwrap());
            let p = without_read_time(r.into_inner());
            (p.version.unwrap().events_applied == 3).then_some((p, by, lag))
        }
    };
    let mut from_standby = Vec::new();
    for (id, profile) in &before {
        let (p, by, lag) =
            eventually(&format!("{id} from B's copy"), Duration::from_secs(60), || standby_read(id.clone())).await;
        assert_eq!(&p, profile, "{id}");
        let (_, owner, _) = settled(&a, id).await.unwrap();
        let (_, b_name, _) = settled(&b, id).await.unwrap();
        match lag {
            // Answered from the standby copy: by B, for a member A owns.
            Some(lag) => {
                assert_ne!(owner, by, "{id}: a standby answer from the owner");
                assert!(lag >= -1, "{id}: lag {lag}");
                assert_eq!(b_name, owner, "{id}: without opting in, the owner answers");
                from_standby.push(id.clone());
            }
            None => assert_eq!(by, owner, "{id}: B's own member, answered as owner"),
        }
    }
    assert!(!from_standby.is_empty(), "some members are on A's partition");
    // B's status shows its copy of A's partition, and how far it has folded.
    let status = b.status().await;
    assert!(status.partitions.iter().any(|p| !p.local && p.standby_applied > 0), "{status:?}");
    assert!(status.partitions.iter().all(|p| p.local || p.standby_applied >= 0), "{status:?}");
    // And A's status, read from the ownership topic, lists B as a standby
    // of A's partition; `omnifold status` prints it.
    let b_name = status.partitions.iter().find(|p| p.local).unwrap().owner_instance.clone();
    eventually("B's copy in A's status", Duration::from_secs(30), || async {
        let s = a.status().await;
        let listed =
            s.partitions.iter().any(|p| p.local && p.standbys.iter().any(|c| c.instance == b_name && c.applied > 0));
        listed.then_some(())
    })
    .await;
    let table = setup.run(&["status", "--server", &a.grpc]);
    assert!(table.contains(&format!("{b_name}:")), "{table}");

    // A redemption asked of the standby with the opt-in goes to the owner.
    let id_redeemed = from_standby[0].clone();
    let mut loyalty = b.loyalty().await;
    let mut ask = tonic::Request::new(proto::RedeemPointsRequest {
        member: member(&id_redeemed),
        request_id: "standby-redeem-1".into(),
        points: 100,
        channel: proto::Channel::MobileApp as i32,
        reward: "voucher".into(),
    });
    ask.metadata_mut().insert("omnifold-read-standby", MetadataValue::from_static("true"));
    let answer = loyalty.redeem_points(ask).await.unwrap();
    let (_, owner, _) = settled(&a, &id_redeemed).await.unwrap();
    assert_eq!(answer.metadata().get("omnifold-served-by").unwrap().to_str().unwrap(), owner);
    let first = redeem_until_decided(&b.grpc, &id_redeemed, "standby-redeem-1", 100).await;
    assert_eq!(first.status, proto::RedemptionStatus::Accepted as i32, "{}", first.reason);

    // A stops; B takes its partition over from the warm copy.
    assert!(a.stop().success());
    owners(&b, 2, 1).await;
    for id in before.keys() {
        let events = if *id == id_redeemed { 4 } else { 3 };
        eventually(&format!("{id} through B alone"), Duration::from_secs(60), || async {
            read(&b, id).await.ok().filter(|(p, ..)| p.version.unwrap().events_applied == events)
        })
        .await;
    }
    let page = b.metrics().await;
    let (owned, standby) =
        (metric(&page, "omnifold_events_applied_total"), metric(&page, "omnifold_standby_events_applied_total"));
    assert!(standby > 0, "{page}");
    assert_eq!(owned + standby, stream("first").len() as u64 + 1, "every event folded once on B: {page}");
    assert_eq!(metric(&page, "omnifold_events_duplicate_total"), 0, "nothing read twice: {page}");
    assert!(b.stop().success());
}

/// An instance that stops leaves a snapshot of every partition it folded
/// (`snapshots.on_stop`, the default): the instance that takes them over
/// with an empty store folds nothing again.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_instance_leaves_snapshots_its_successor_starts_from() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "onstop", 2);
    let store = tempfile::tempdir().unwrap();
    setup.extra_env.insert("OMNIFOLD_SNAPSHOTS__URL".into(), store.path().display().to_string());
    // Only the ones taken at stop.
    no_scheduled_snapshots(&mut setup);
    setup.create_topics();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Service::start(&setup, &dir_a.path().join("store"));
    owners(&a, 2, 1).await;
    setup.produce(&stream("first"));
    let before = read_all(&a, 3).await;
    assert!(a.stop().success());
    let listed = setup.run(&["snapshot", "list"]);
    assert_eq!(listed.lines().filter(|l| l.ends_with("yes")).count(), 2, "a latest snapshot per partition:\n{listed}");

    let b = Service::start_with_metrics(&setup, &dir_b.path().join("store"));
    owners(&b, 2, 1).await;
    assert_eq!(read_all(&b, 3).await, before);
    let page = b.metrics().await;
    assert_eq!(metric_by(&page, "omnifold_snapshot_restores_total", "partition").len(), 2, "{page}");
    assert_eq!(metric(&page, "omnifold_events_applied_total"), 0, "everything came from the snapshots: {page}");
    assert!(b.stop().success());
}
