//! The change stream (`WatchProfile`) against a real broker and the real
//! binary: every change in fold order, each with its version; a resume
//! from a version gets every later change once, with no gap and no
//! repeat; quiet streams get progress; a resume point older than what is
//! kept answers OUT_OF_RANGE; watches are bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::time::Duration;

use common::*;
use omnifold_proto::v1 as proto;
use proto::watch_profile_response::Event;
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(60);

/// Produces one event and waits until it (and everything before) is folded.
async fn fold_one(stack: &Stack, event: (String, Vec<u8>), total: &mut i64) {
    stack.setup.produce(&[event]);
    *total += 1;
    stack.service.wait_consumed(&stack.setup, *total).await;
}

async fn watch(
    service: &Service,
    r: proto::WatchProfileRequest,
) -> Result<Streaming<proto::WatchProfileResponse>, tonic::Status> {
    service.profiles().await.watch_profile(r).await.map(tonic::Response::into_inner)
}

fn watch_member(id: &str, resume: Option<proto::WatchCursor>) -> proto::WatchProfileRequest {
    proto::WatchProfileRequest { member: member(id), resume_from: resume.into_iter().collect(), ..Default::default() }
}

/// The next change on the stream, skipping progress messages.
async fn next_change(stream: &mut Streaming<proto::WatchProfileResponse>) -> proto::ProfileChange {
    loop {
        let msg = tokio::time::timeout(WAIT, stream.message()).await.expect("a message in time");
        match msg.expect("the stream goes on").expect("not ended").event {
            Some(Event::Change(c)) => return c,
            Some(Event::Progress(_)) => {}
            None => panic!("an empty message"),
        }
    }
}

/// The next progress message, failing on any change before it.
async fn next_progress(stream: &mut Streaming<proto::WatchProfileResponse>) -> proto::WatchProgress {
    let msg = tokio::time::timeout(WAIT, stream.message()).await.expect("a message in time");
    match msg.expect("the stream goes on").expect("not ended").event {
        Some(Event::Progress(p)) => p,
        other => panic!("expected progress, got {other:?}"),
    }
}

fn views(c: &proto::ProfileChange) -> u64 {
    c.profile.as_ref().and_then(|p| p.browse.as_ref()).map_or(0, |b| b.product_views)
}

fn fast_progress(name: &str, partitions: i32, env: &[(&str, &str)]) -> Stack {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, name, partitions);
    setup.extra_env.insert("OMNIFOLD_SERVER__WATCH_PROGRESS_MS".into(), "200".into());
    setup.extra_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    Stack { broker, data, setup, service }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sends_every_change_in_order_and_resumes_with_no_gap_and_no_repeat() {
    let stack = fast_progress("watch-resume", 2, &[]);
    let mut total = 0;
    fold_one(&stack, view("m-1", 1), &mut total).await;
    let mut stream = watch(&stack.service, watch_member("m-1", None)).await.unwrap();
    // The profile now, marked initial, with its version.
    let first = next_change(&mut stream).await;
    assert!(first.initial);
    assert_eq!(views(&first), 1);
    let v1 = first.version.unwrap();
    assert_eq!(first.profile.as_ref().unwrap().version.as_ref().unwrap().next_offset, v1.next_offset);
    // Each event folded alone is one change, in order; another member's
    // events (on whichever partition) are not this watch's.
    let mut last = v1;
    for n in 2..=3 {
        fold_one(&stack, view("m-2", n), &mut total).await;
        fold_one(&stack, view("m-1", n), &mut total).await;
        let c = next_change(&mut stream).await;
        assert!(!c.initial);
        assert_eq!((c.member_id.as_str(), views(&c)), ("m-1", u64::from(n)));
        let v = c.version.unwrap();
        assert_eq!(v.partition, last.partition);
        assert!(v.next_offset > last.next_offset, "versions ascend: {v:?} after {last:?}");
        last = v;
    }
    // Quiet: progress carries the partition's position, at or past the last change.
    let p = next_progress(&mut stream).await;
    assert_eq!(p.cursors.len(), 1);
    assert!(p.cursors[0].next_offset >= last.next_offset);
    drop(stream);

    // Three more while nobody watches; a resume from the last version seen
    // gets exactly those, in order, then only progress.
    for n in 4..=6 {
        fold_one(&stack, view("m-1", n), &mut total).await;
    }
    let mut stream = watch(&stack.service, watch_member("m-1", Some(last))).await.unwrap();
    for n in 4..=6 {
        let c = next_change(&mut stream).await;
        assert!(!c.initial);
        assert_eq!(views(&c), n);
        assert!(c.version.unwrap().next_offset > last.next_offset);
        last = c.version.unwrap();
    }
    next_progress(&mut stream).await;
    // A resume from a progress point behaves the same: nothing repeats.
    let p = next_progress(&mut stream).await;
    drop(stream);
    let mut stream = watch(&stack.service, watch_member("m-1", Some(p.cursors[0]))).await.unwrap();
    next_progress(&mut stream).await;
    fold_one(&stack, view("m-1", 7), &mut total).await;
    assert_eq!(views(&next_change(&mut stream).await), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_watch_sees_every_member_and_an_erasure() {
    let stack = fast_progress("watch-partitions", 2, &[]);
    let mut total = 0;
    fold_one(&stack, view("m-0", 1), &mut total).await;
    let all = proto::WatchProfileRequest {
        partitions: Some(proto::PartitionRange { first: 0, last: 1 }),
        ..Default::default()
    };
    let mut stream = watch(&stack.service, all).await.unwrap();
    // From now: progress first, with both partitions where the store is.
    let p = next_progress(&mut stream).await;
    let offsets = stack.service.next_offsets().await;
    assert_eq!(p.cursors.iter().map(|c| c.next_offset).collect::<Vec<_>>(), offsets);
    let members: Vec<String> = (1..=6).map(|i| format!("m-{i}")).collect();
    stack.setup.produce(&members.iter().map(|m| view(m, 1)).collect::<Vec<_>>());
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < members.len() {
        let c = next_change(&mut stream).await;
        if c.member_id.starts_with("probe-") {
            continue; // the harness's own events, to tell when the fold is idle
        }
        assert!(members.contains(&c.member_id), "only members with events: {}", c.member_id);
        assert!(seen.insert(c.member_id), "each member once");
    }
    // An erasure is a removal, without the profile.
    let mut admin = stack.service.admin().await;
    admin
        .erase_member(proto::EraseMemberRequest {
            member: member("m-3"),
            request_id: "erase-m-3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = next_change(&mut stream).await;
    assert_eq!((c.member_id.as_str(), c.removed, c.profile.is_none()), ("m-3", true, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_older_than_the_changes_kept_answers_out_of_range() {
    // The window keeps only each partition's latest change.
    let stack = fast_progress("watch-too-old", 1, &[("OMNIFOLD_SERVER__WATCH_BUFFER_BYTES", "1")]);
    let mut total = 0;
    fold_one(&stack, view("m-1", 1), &mut total).await;
    let mut stream = watch(&stack.service, watch_member("m-1", None)).await.unwrap();
    let seen = next_change(&mut stream).await.version.unwrap();
    drop(stream);
    fold_one(&stack, view("m-1", 2), &mut total).await;
    fold_one(&stack, view("m-2", 1), &mut total).await;
    // m-1 changed after `seen`, and that change is no longer kept.
    let status = watch(&stack.service, watch_member("m-1", Some(seen))).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("read the profile again, then watch from its version"), "{}", status.message());
    // Doing what it says works: the profile's version is a resume point.
    let p = get(&stack.service, "m-1").await.unwrap();
    let version = proto::WatchCursor { partition: 0, next_offset: p.version.unwrap().next_offset };
    let mut stream = watch(&stack.service, watch_member("m-1", Some(version))).await.unwrap();
    next_progress(&mut stream).await;
    // Produced without waiting (whose probes would push it out of this tiny window).
    stack.setup.produce(&[view("m-1", 3)]);
    assert_eq!(views(&next_change(&mut stream).await), 3);
    // A partition watch from offset 0: the window starts later.
    let old = proto::WatchProfileRequest {
        partitions: Some(proto::PartitionRange { first: 0, last: 0 }),
        resume_from: vec![proto::WatchCursor { partition: 0, next_offset: 0 }],
        ..Default::default()
    };
    assert_eq!(watch(&stack.service, old).await.unwrap_err().code(), Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_bounded_and_bad_requests_say_what_to_fix() {
    let stack = fast_progress("watch-bounds", 1, &[("OMNIFOLD_SERVER__MAX_WATCHERS", "1")]);
    let mut total = 0;
    fold_one(&stack, view("m-1", 1), &mut total).await;
    let stream = watch(&stack.service, watch_member("m-1", None)).await.unwrap();
    let status = watch(&stack.service, watch_member("m-1", None)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    drop(stream);
    // The first watch's slot comes back once its stream is gone.
    eventually("a watch slot free again", WAIT, || async {
        watch(&stack.service, watch_member("m-1", None)).await.ok().map(|_| ())
    })
    .await;
    let none = watch(&stack.service, proto::WatchProfileRequest::default()).await.unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    assert!(none.message().contains("name a member"), "{}", none.message());
    let beyond = proto::WatchProfileRequest {
        partitions: Some(proto::PartitionRange { first: 0, last: 7 }),
        ..Default::default()
    };
    let status = watch(&stack.service, beyond).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("0..=0"), "{}", status.message());
    assert_eq!(watch(&stack.service, watch_member("nobody", None)).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_ends_out_of_range_instead_of_holding_changes() {
    // A window of about a hundred changes.
    let stack = fast_progress("watch-slow", 1, &[("OMNIFOLD_SERVER__WATCH_BUFFER_BYTES", "200000")]);
    let all = proto::WatchProfileRequest {
        partitions: Some(proto::PartitionRange { first: 0, last: 0 }),
        ..Default::default()
    };
    // Right after the start the partition may still be changing hands
    // (UNAVAILABLE, retry): watch once it is this instance's.
    let mut stream = eventually("a watch", WAIT, || async { watch(&stack.service, all.clone()).await.ok() }).await;
    next_progress(&mut stream).await;
    // Thousands of changes while the watcher reads nothing.
    let events: Vec<_> = (0..3000).map(|i| view(&format!("m-{i}"), 1)).collect();
    stack.setup.produce(&events);
    stack.service.wait_consumed(&stack.setup, events.len() as i64).await;
    let mut changes = 0;
    let status = loop {
        match tokio::time::timeout(WAIT, stream.message()).await.expect("a message in time") {
            Ok(Some(proto::WatchProfileResponse { event: Some(Event::Change(_)) })) => changes += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status after {changes} changes"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(changes < events.len(), "what was buffered is bounded: {changes} changes");
}

/// One record of the profile-changes topic.
#[derive(Debug, Clone)]
struct Published {
    key: String,
    partition: i32,
    /// The `ProfileChange` as JSON; none for a tombstone.
    change: Option<serde_json::Value>,
    version: String,
    routes_to: Option<String>,
}

/// Every record of `topic` (all partitions, from the start).
fn read_changes(setup: &Setup, topic: &str) -> Vec<Published> {
    use rdkafka::Message as _;
    use rdkafka::message::Headers;
    read_topic(setup, topic, setup.partitions)
        .into_iter()
        .map(|m| {
            let header = |name: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8(v.to_vec()).unwrap())
            };
            Published {
                key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                partition: m.partition(),
                change: m.payload().map(|v| serde_json::from_slice(v).unwrap()),
                version: header("omnifold-version").expect("every record has its version"),
                routes_to: header("omnifold-routes-to"),
            }
        })
        .collect()
}

/// The records of `key`, in the order written.
fn of<'a>(records: &'a [Published], key: &str) -> Vec<&'a Published> {
    records.iter().filter(|r| r.key == key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_go_to_the_compacted_topic_masked_with_a_tombstone_for_an_erased_member() {
    let topic = "changes-topic.profile-changes";
    let stack = fast_progress("changes-topic", 2, &[("OMNIFOLD_KAFKA__CHANGES_TOPIC", topic)]);
    let mut total = 0;
    for n in 1..=3 {
        fold_one(&stack, view("m-1", n), &mut total).await;
    }
    let named = json_event(
        "m-2-named",
        &days_ago(0.01),
        "MOBILE_APP",
        r#"{"memberId":"m-2"}"#,
        r#""profileUpdated":{"traits":{"name":"Zhang San"}}"#,
    );
    fold_one(&stack, ("m-2".into(), named), &mut total).await;
    let anonymous = json_event(
        "anon-view",
        &days_ago(0.01),
        "ONLINE_WEB",
        r#"{"anonymousId":"ck-anon-1"}"#,
        r#""productViewed":{"sku":"SKU-9"}"#,
    );
    fold_one(&stack, ("ck-anon-1".into(), anonymous), &mut total).await;
    let erase = proto::EraseMemberRequest { member: member("m-2"), reason: String::new(), request_id: "dsr-1".into() };
    let done = stack.service.admin().await.erase_member(erase).await.unwrap().into_inner();
    assert_eq!(done.status, proto::ErasureStatus::Done as i32);

    let records = eventually("the erasure on the topic", WAIT, || async {
        let records = read_changes(&stack.setup, topic);
        of(&records, "m-2").last().is_some_and(|r| r.change.is_none()).then_some(records)
    })
    .await;
    // Every change of m-1, in fold order, on one partition (compaction
    // keeps its latest), each stamped with the version that produced it.
    let m1 = of(&records, "m-1");
    // proto3 JSON writes 64-bit integers as strings.
    let views: Vec<&str> =
        m1.iter().map(|r| r.change.as_ref().unwrap()["profile"]["browse"]["productViews"].as_str().unwrap()).collect();
    assert_eq!(views, ["1", "2", "3"]);
    assert!(m1.iter().all(|r| r.partition == m1[0].partition));
    for r in &m1 {
        let v = &r.change.as_ref().unwrap()["version"];
        assert_eq!(r.version, format!("{}:{}", v["partition"].as_u64().unwrap(), v["nextOffset"].as_str().unwrap()));
    }
    // The latest is the profile a read gives, at the same version.
    let read = get(&stack.service, "m-1").await.unwrap();
    let version = read.version.unwrap();
    assert_eq!(m1.last().unwrap().version, format!("{}:{}", version.partition, version.next_offset));
    // Personal data is masked (kafka.changes_pii = false), then the erased
    // member is a tombstone; an anonymous profile's key (a cookie) is not
    // published at all.
    let m2 = of(&records, "m-2");
    let name = m2[0].change.as_ref().unwrap()["profile"]["traits"]["name"].as_str().unwrap().to_owned();
    assert!(!name.is_empty() && name != "Zhang San", "masked: {name}");
    assert!(m2.last().unwrap().change.is_none() && m2.last().unwrap().routes_to.is_none());
    assert!(of(&records, "ck-anon-1").is_empty(), "{records:?}");
    assert!(records.iter().all(|r| r.change.as_ref().is_none_or(|c| !c.to_string().contains("Zhang San"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_commit_loses_no_change_on_the_topic() {
    // One partition, batches of 5: each member's only event is in one
    // batch; the process aborts right after its second commit, so the
    // members of that batch never change again. Their records reached the
    // topic before the commit, or they would be lost for good.
    let topic = "changes-crash.profile-changes";
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "changes-crash", 1);
    setup.extra_env.insert("OMNIFOLD_KAFKA__CHANGES_TOPIC".into(), topic.into());
    setup.extra_env.insert("OMNIFOLD_KAFKA__BATCH_MAX_RECORDS".into(), "5".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let members: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    setup.produce(&members.iter().map(|m| view(m, 1)).collect::<Vec<_>>());
    let crashing = Service::start_with(&setup, data.path(), &[("OMNIFOLD_FAILPOINT", "after_commit:2")]);
    let status = crashing.wait_exit(Duration::from_secs(60));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "aborted by the failpoint: {status}");
    let at_crash = setup.events_applied(data.path());
    assert!((1..20).contains(&at_crash.len()), "the crash landed mid-stream: {at_crash:?}");

    let service = Service::start(&setup, data.path());
    service.wait_consumed(&setup, members.len() as i64).await;
    let records = read_changes(&setup, topic);
    for m in &members {
        let r = of(&records, m);
        let version = get(&service, m).await.unwrap().version.unwrap();
        let latest = r.last().unwrap_or_else(|| panic!("no record of {m}: {records:?}"));
        assert_eq!(latest.version, format!("0:{}", version.next_offset), "{m}");
        // A batch written again after a crash repeats its records with the
        // same version: a reader keeps the latest and loses nothing.
        assert!(r.iter().all(|x| x.version == latest.version), "{m}: {r:?}");
    }
}
