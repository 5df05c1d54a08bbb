//! The processor against a real RocksDB store: duplicates anywhere and any
//! batch boundaries give the state, ledger and verdicts of one clean pass
//! over the events; a retried request id is decided once; reprocessing
//! committed records changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use std::collections::BTreeMap;
use std::sync::Arc;

use omnifold_core::fold::{Position, apply, kind_of};
use omnifold_core::testing::events;
use omnifold_core::{Event, FoldConfig, LedgerEntry, Member, Verdict};
use omnifold_ingest::{IngestConfig, Processor, Record, Signer};
use omnifold_proto::v1 as proto;
use omnifold_store::{Store, StoreConfig};
use proptest::prelude::*;
use prost::Message;

/// The cluster secret of these tests.
fn signer() -> Signer {
    Signer::new("a-test-secret-of-at-least-32-characters", &[])
}

/// What one clean pass of the core fold gives.
struct Reference {
    members: BTreeMap<String, Member>,
    ledgers: BTreeMap<String, Vec<LedgerEntry>>,
    verdicts: BTreeMap<(String, String), Verdict>,
    /// Per event: applied (or a retry of a decided request), not refused.
    accepted: Vec<bool>,
    /// Per event: a retry of a request id already decided (not applied).
    retry: Vec<bool>,
    /// Events that repeat a request id already decided for their member.
    retries: u64,
}

/// One clean pass of the core fold, where a request id the member already
/// has a verdict for is not applied again.
fn reference(stream: &[proto::Event]) -> Reference {
    let cfg = FoldConfig::default().validate().unwrap();
    let mut r = Reference {
        members: BTreeMap::new(),
        ledgers: BTreeMap::new(),
        verdicts: BTreeMap::new(),
        accepted: Vec::new(),
        retry: Vec::new(),
        retries: 0,
    };
    for (i, w) in stream.iter().enumerate() {
        let e = Event::try_from(w.clone()).unwrap();
        let key = e.subject.key();
        if let Some(req) = e.request_id()
            && r.verdicts.contains_key(&(key.clone(), req.to_owned()))
        {
            r.retries += 1;
            r.accepted.push(true);
            r.retry.push(true);
            continue;
        }
        r.retry.push(false);
        let m = r.members.entry(key.clone()).or_insert_with(|| Member::new(key.clone(), kind_of(&e)));
        match apply(m, &e, Position { partition: 0, offset: i as i64 }, &cfg) {
            Ok(fx) => {
                if !fx.ledger.is_empty() {
                    r.ledgers.entry(key.clone()).or_default().extend(fx.ledger);
                }
                if let Some(v) = fx.verdict {
                    r.verdicts.insert((key, v.request_id.clone()), v);
                }
                r.accepted.push(true);
            }
            Err(_) => r.accepted.push(false),
        }
    }
    // A subject whose every event was refused has no profile.
    r.members.retain(|_, m| m.version.events_applied > 0);
    r
}

/// Every member's ledger as stored, oldest first.
fn stored_ledgers(store: &Store, keys: impl Iterator<Item = String>) -> BTreeMap<String, Vec<LedgerEntry>> {
    keys.map(|k| {
        let mut entries: Vec<LedgerEntry> = store.ledger(0, &k, None).map(|e| e.unwrap()).collect();
        entries.reverse();
        (k, entries)
    })
    .filter(|(_, e)| !e.is_empty())
    .collect()
}

/// Offsets differ once duplicates are interleaved, and the kept-history
/// bookkeeping is the processor's, not the fold's; everything else must not.
fn normalised(mut m: Member) -> Vec<u8> {
    m.version.next_offset = 0;
    m.history = Default::default();
    m.encode()
}

/// What one pass of batches did.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    applied: u64,
    duplicates: u64,
    too_late: u64,
}

fn run_batches(processor: &Processor, values: &[Vec<u8>], cuts: &[usize]) -> Counts {
    let records: Vec<Record<'_>> =
        values.iter().enumerate().map(|(i, v)| Record::new(i as i64, None, Some(v))).collect();
    let mut counts = Counts::default();
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
    bounds.push(records.len());
    bounds.sort_unstable();
    for end in bounds {
        if end <= start {
            continue;
        }
        let p = processor.process(0, &records[start..end]).unwrap();
        assert!(
            p.dead_letters.iter().all(|d| d.kind == "rule" || d.kind == "too_late"),
            "only rule rejections and late copies in valid streams: {:?}",
            p.dead_letters
        );
        counts.applied += p.applied;
        counts.duplicates += p.duplicates;
        counts.too_late += p.dead_letters.iter().filter(|d| d.kind == "too_late").count() as u64;
        processor.commit(p).unwrap();
        start = end;
    }
    counts
}

/// The duplicates and too-late copies the dedupe rules give for `order`
/// (indexes into `stream`, copies included): a copy is a duplicate while
/// its original's marker is within the window, else too late if it is
/// older than the window, else refused again like its original.
fn expected_dedupe(stream: &[proto::Event], order: &[usize], reference: &Reference) -> (u64, u64) {
    let retention = StoreConfig::default().dedupe_retention_hours as i64 * 3_600_000;
    let time = |e: &proto::Event| omnifold_core::time::from_timestamp(e.occurred_at.as_ref().unwrap());
    let (mut watermark, mut markers) = (None::<i64>, BTreeMap::<usize, i64>::new());
    let (mut dups, mut late) = (0, 0);
    for (i, src) in order.iter().enumerate() {
        let t = time(&stream[*src]);
        let horizon = watermark.map_or(i64::MIN, |w| w - retention);
        let copy = order[..i].contains(src);
        if let Some(m) = markers.get(src) {
            if *m >= horizon {
                dups += 1;
            } else {
                late += 1;
            }
        } else if copy && t < horizon {
            late += 1;
        } else if reference.retry[*src] {
            dups += 1;
            markers.insert(*src, watermark.map_or(t, |w| w.max(t)));
        } else if reference.accepted[*src] && !copy {
            watermark = Some(watermark.map_or(t, |w| w.max(t)));
            markers.insert(*src, watermark.unwrap_or(t));
        }
    }
    (dups, late)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn duplicates_and_batching_change_nothing(
        stream in events(60),
        dup_picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..20),
        json in prop::collection::vec(any::<bool>(), 60),
        cuts in prop::collection::vec(0usize..200, 0..6),
        cache in 0usize..4,
    ) {
        let encode = |i: usize, e: &proto::Event| if json[i % json.len()] { serde_json::to_vec(e).unwrap() } else { e.encode_to_vec() };
        // Re-deliver copies of random events at random later positions, in
        // either encoding (a producer retry may differ in format, not in id).
        let mut order: Vec<usize> = (0..stream.len()).collect();
        for (which, place) in &dup_picks {
            let src = which.index(stream.len());
            let first = order.iter().position(|x| *x == src).unwrap();
            let at = first + 1 + place.index(order.len() - first);
            order.insert(at, src);
        }
        let values: Vec<Vec<u8>> = order.iter().enumerate().map(|(i, src)| encode(i, &stream[*src])).collect();
        let dir = tempfile::tempdir().unwrap();
        // With kept history (off by default), so the test sees every event kept too.
        let store = Store::open(&StoreConfig { path: dir.path().into(), keep_history: true, ..StoreConfig::default() }).unwrap();
        // A cache smaller than the number of subjects, so eviction happens too.
        let processor = Processor::new(store.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 65536, signer())
            .with_member_cache(cache, IngestConfig::default().member_cache_bytes);
        let counts = run_batches(&processor, &values, &cuts);
        let reference = reference(&stream);
        let want = &reference.members;
        // A copy of an applied event is a duplicate while it is within the
        // dedupe window, else it is refused as too late (never applied
        // twice); a copy of a refused one is refused again (refused events
        // are not marked seen, so they can be replayed after a fix). A
        // retried request id is a duplicate too.
        prop_assert_eq!((counts.duplicates, counts.too_late), expected_dedupe(&stream, &order, &reference));
        let applied = counts.applied;
        let stored: BTreeMap<String, Member> = store.scan_members(0).map(|m| { let m = m.unwrap(); (m.key.clone(), m) }).collect();
        prop_assert_eq!(stored.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (k, m) in want {
            prop_assert_eq!(normalised(stored[k].clone()), normalised(m.clone()), "member {}", k);
        }
        prop_assert_eq!(applied, want.values().map(|m| m.version.events_applied).sum::<u64>());
        // Every applied event is kept, one per sequence number, for reads as of the past.
        for (k, m) in want {
            let seqs: Vec<u64> = store.history(0, k).map(|h| h.unwrap().0).collect();
            prop_assert_eq!(seqs, (1..=m.version.events_applied).collect::<Vec<u64>>(), "history of {}", k);
        }
        prop_assert_eq!(store.next_offset("t", 0).unwrap(), Some(values.len() as i64));
        // The ledgers and verdicts are exactly the clean pass's.
        let ledgers = stored_ledgers(&store, want.keys().cloned());
        prop_assert_eq!(&ledgers, &reference.ledgers);
        for ((member, request), v) in &reference.verdicts {
            let got = store.verdicts(0, &[(member, request)]).unwrap();
            prop_assert_eq!(got[0].as_ref(), Some(v));
        }

        // Replaying the same log into a fresh store, with other batch
        // boundaries, gives the same members, ledgers and verdicts, byte for byte.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(&StoreConfig { path: dir2.path().into(), keep_history: true, ..StoreConfig::default() }).unwrap();
        let replay = Processor::new(store2.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 65536, signer());
        run_batches(&replay, &values, &[1, values.len() / 3]);
        let bytes = |s: &Store| {
            let members: Vec<Vec<u8>> = s.scan_members(0).map(|m| m.unwrap().encode()).collect();
            let ledgers: Vec<Vec<u8>> = want.keys().flat_map(|k| s.ledger(0, k, None).map(|e| e.unwrap().encode()).collect::<Vec<_>>()).collect();
            let verdicts: Vec<Option<Vec<u8>>> = reference.verdicts.keys().map(|(m, r)| s.verdicts(0, &[(m, r)]).unwrap()[0].as_ref().map(|v| v.encode())).collect();
            (members, ledgers, verdicts)
        };
        prop_assert_eq!(bytes(&store), bytes(&store2));

        // Delivering everything again (a replay) changes no byte.
        let before: Vec<Vec<u8>> = store.scan_members(0).map(|m| m.unwrap().encode()).collect();
        let again = run_batches(&processor, &values, &[values.len() / 2]);
        prop_assert_eq!(again.applied, 0);
        let after: Vec<Vec<u8>> = store.scan_members(0).map(|m| m.unwrap().encode()).collect();
        prop_assert_eq!(before, after);
        prop_assert_eq!(stored_ledgers(&store, want.keys().cloned()), ledgers);
    }
}

#[test]
fn bad_records_become_dead_letters_and_the_partition_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
    let processor =
        Processor::new(store.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 2048, signer());
    let good = br#"{"eventId":"ok-1","occurredAt":"2026-01-01T00:00:00Z","channel":"ONLINE_WEB","subject":{"memberId":"m"},"searchPerformed":{"query":"tea"}}"#;
    let big = format!(
        r#"{{"eventId":"big","occurredAt":"2026-01-01T00:00:00Z","channel":"ONLINE_WEB","subject":{{"memberId":"m"}},"searchPerformed":{{"query":"{}"}}}}"#,
        "x".repeat(3000)
    );
    let values: Vec<&[u8]> = vec![b"{oops", good, big.as_bytes(), b"\x08\x96\x01\xff", b""];
    let records: Vec<Record<'_>> =
        values.iter().enumerate().map(|(i, v)| Record::new(10 + i as i64, Some(b"m"), Some(v))).collect();
    let p = processor.process(0, &records).unwrap();
    let kinds: Vec<(&str, i64)> = p.dead_letters.iter().map(|d| (d.kind, d.offset)).collect();
    assert_eq!(kinds, vec![("decode", 10), ("too_large", 12), ("decode", 13), ("decode", 14)]);
    assert_eq!(p.dead_letters[0].original, b"{oops");
    assert_eq!(p.applied, 1);
    assert_eq!(p.next_offset, 15);
    processor.commit(p).unwrap();
    assert_eq!(store.member(0, "m").unwrap().unwrap().browse.searches, 1);
}

#[test]
fn a_batch_that_is_not_committed_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
    let processor =
        Processor::new(store.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 65536, signer())
            .with_member_cache(10, IngestConfig::default().member_cache_bytes);
    let search = |id: &str| {
        format!(
            r#"{{"eventId":"{id}","occurredAt":"2026-01-01T00:00:00Z","channel":"ONLINE_WEB","subject":{{"memberId":"m"}},"searchPerformed":{{"query":"q-{id}"}}}}"#
        )
    };
    let (a, b, c) = (search("a"), search("b"), search("c"));
    fn rec(offset: i64, v: &str) -> Record<'_> {
        Record::new(offset, None, Some(v.as_bytes()))
    }
    processor.commit(processor.process(0, &[rec(0, &a)]).unwrap()).unwrap();
    // Processed but never committed (say, the dead-letter topic was down and
    // the process stopped): neither the store nor the cache may keep it.
    drop(processor.process(0, &[rec(1, &b)]).unwrap());
    assert_eq!(store.next_offset("t", 0).unwrap(), Some(1));
    processor.commit(processor.process(0, &[rec(1, &b), rec(2, &c)]).unwrap()).unwrap();
    let m = store.member(0, "m").unwrap().unwrap();
    assert_eq!((m.browse.searches, m.version.events_applied), (3, 3));
    let queries: Vec<&str> = m.browse.recent_searches.iter().map(|s| s.query.as_str()).collect();
    assert_eq!(queries, vec!["q-a", "q-b", "q-c"], "equal times order by query");
}

#[test]
fn a_retried_request_id_is_decided_once_even_with_a_new_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
    let processor =
        Processor::new(store.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 65536, signer());
    let ev = |id: &str, at: &str, payload: &str| {
        format!(
            r#"{{"eventId":"{id}","occurredAt":"{at}","channel":"MOBILE_APP","subject":{{"memberId":"m"}},{payload}}}"#
        )
    };
    let order =
        ev("o", "2026-01-01T00:00:00Z", r#""orderPlaced":{"orderId":"o1","currency":"CNY","totalMinor":"10000"}"#);
    let redeem = |id: &str, points: u32| {
        ev(
            id,
            "2026-01-09T00:00:00Z",
            &format!(r#""pointsRedemptionRequested":{{"requestId":"r1","points":"{points}"}}"#),
        )
    };
    // The order earns 150 (app 1.5×). r1 asks 100 three times, once under
    // another event id; the second batch repeats it again.
    let (a, b, c) = (redeem("x1", 100), redeem("x2", 100), redeem("x1", 100));
    let first = [order.as_str(), &a, &b, &c];
    let records: Vec<Record<'_>> =
        first.iter().enumerate().map(|(i, v)| Record::new(i as i64, Some(b"m"), Some(v.as_bytes()))).collect();
    let p = processor.process(0, &records).unwrap();
    assert_eq!((p.applied, p.duplicates), (2, 2));
    processor.commit(p).unwrap();
    let d = redeem("x3", 100);
    let p = processor.process(0, &[Record::new(4, Some(b"m"), Some(d.as_bytes()))]).unwrap();
    assert_eq!((p.applied, p.duplicates), (0, 1));
    processor.commit(p).unwrap();
    let m = store.member(0, "m").unwrap().unwrap();
    assert_eq!((m.loyalty.redeemed, m.loyalty.lots.first().unwrap().remaining), (100, 50));
    let v = store.verdicts(0, &[("m", "r1")]).unwrap().remove(0).unwrap();
    assert_eq!((v.event_id.as_str(), v.points, v.seq), ("x1", 100, Some(1)));
    let points: Vec<i64> = store.ledger(0, "m", None).map(|e| e.unwrap().points).collect();
    assert_eq!(points, vec![-100, 150], "newest first: one redemption, one earn");
}

/// [`events`] with identity traffic: the cookie and the phone are linked to
/// members, and one member is merged into the other, at drawn places.
fn with_identity(mut stream: Vec<proto::Event>, links: &[(usize, u8)]) -> Vec<proto::Event> {
    use proto::event::Payload;
    for (n, (at, what)) in links.iter().enumerate() {
        let i = at % (stream.len() + 1);
        let time = stream.get(i.min(stream.len().saturating_sub(1))).and_then(|e| e.occurred_at).unwrap_or_default();
        let (subject, payload) = match what % 3 {
            0 => (
                "m-1",
                Payload::IdentityLinked(proto::IdentityLinked { anonymous_id: "anon-9".into(), identifiers: vec![] }),
            ),
            1 => (
                "m-2",
                Payload::IdentityLinked(proto::IdentityLinked {
                    anonymous_id: String::new(),
                    identifiers: vec![proto::Identifier {
                        r#type: proto::IdentifierType::Phone as i32,
                        value: "+8613900000001".into(),
                    }],
                }),
            ),
            _ => (
                "m-1",
                Payload::MembersMerged(proto::MembersMerged {
                    from_member_id: "m-2".into(),
                    into_member_id: "m-1".into(),
                }),
            ),
        };
        let e = proto::Event {
            event_id: format!("id-{n}"),
            occurred_at: Some(time),
            channel: proto::Channel::MobileApp as i32,
            store_id: String::new(),
            subject: Some(proto::Subject { member_id: subject.into(), ..Default::default() }),
            payload: Some(payload),
        };
        stream.insert(i, e);
    }
    stream
}

/// What a person ends up with, whichever key asked: the facts that do not
/// depend on when identity events crossed partitions.
fn person(store: &Store, partitions: u32, key: &str) -> Option<(String, u64, u64, i64, i64, u64)> {
    use omnifold_core::partition::partition_for;
    let mut k = key.to_owned();
    loop {
        let m = store.member(partition_for(k.as_bytes(), partitions), &k).unwrap()?;
        match m.routes_to {
            Some(to) => k = to,
            None => {
                let p = &m.purchases;
                return Some((
                    m.key,
                    m.version.events_applied,
                    p.orders,
                    p.gross_minor,
                    p.returned_minor,
                    m.browse.product_views,
                ));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Three partitions, identity traffic and records on the wrong
    /// partition, so events are forwarded to the partition that owns their
    /// member and joins cross partitions: duplicates anywhere, misrouted
    /// records and any batch sizes give every person the same profile as
    /// one clean pass, with every event applied once.
    #[test]
    fn duplicates_and_batching_change_nothing_across_partitions(
        stream in events(50),
        links in prop::collection::vec((0usize..60, any::<u8>()), 0..4),
        dup_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..15),
        misrouted in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        batch in 1usize..40,
    ) {
        let stream = with_identity(stream, &links);
        let fold = Arc::new(FoldConfig::default().validate().unwrap());
        let run = |values: &[Vec<u8>], batch: usize, wrong: &std::collections::BTreeSet<usize>| {
            let dir = tempfile::tempdir().unwrap();
            // Forwards arrive after their partition moved on by any amount
            // of event time here; the dedupe window is the test below's.
            let config = StoreConfig { path: dir.path().into(), dedupe_retention_hours: 87_600, ..StoreConfig::default() };
            let store = Store::open(&config).unwrap();
            let p = Processor::new(store.clone(), fold.clone(), "t", 65536, signer()).with_join_part_bytes(200);
            let mut log = omnifold_ingest::LocalLog::new(&p, "t", 3, batch).unwrap();
            for (i, v) in values.iter().enumerate() {
                if wrong.contains(&i) {
                    log.append_to(i as u32 + 1, v.clone());
                } else {
                    log.append(v.clone());
                }
            }
            log.drain().unwrap();
            let kinds: Vec<String> = log.done.dead_letters.iter().map(|d| format!("{}: {}", d.kind, d.reason)).collect();
            (dir, store, kinds)
        };
        let clean: Vec<Vec<u8>> = stream.iter().map(|e| e.encode_to_vec()).collect();
        let mut noisy = clean.clone();
        for pick in &dup_picks {
            // A producer retry right after the original: within the window.
            let i = pick.index(clean.len());
            let at = noisy.iter().position(|v| *v == clean[i]).unwrap() + 1;
            noisy.insert(at, clean[i].clone());
        }
        // Product views a producer put on a partition of its own choosing
        // (views commute; an order and its return on different partitions
        // keep no order, on any broker).
        let views: Vec<usize> = (0..noisy.len())
            .filter(|&i| matches!(proto::Event::decode(&noisy[i][..]).unwrap().payload, Some(proto::event::Payload::ProductViewed(_))))
            .collect();
        let wrong: std::collections::BTreeSet<usize> =
            if views.is_empty() { Default::default() } else { misrouted.iter().map(|i| views[i.index(views.len())]).collect() };
        let (_a, want, clean_kinds) = run(&clean, 10_000, &Default::default());
        let (_b, got, noisy_kinds) = run(&noisy, batch, &wrong);
        prop_assert!(clean_kinds.iter().chain(&noisy_kinds).all(|k| k.starts_with("rule")), "{:?} {:?}", clean_kinds, noisy_kinds);
        for key in ["m-1", "m-2", "anon-9", "PHONE:+8613900000001"] {
            prop_assert_eq!(person(&got, 3, key), person(&want, 3, key), "{} {:?} {:?}", key, clean_kinds, noisy_kinds);
        }
    }
}

/// A producer sent an event to the wrong partition and, as a retry, to the
/// right one, which applied it and moved on by more than the dedupe window
/// before the forward arrived: the forward cannot be told from a duplicate
/// any more, so it is refused as too late instead of applied twice.
#[test]
fn a_forward_that_arrives_past_the_dedupe_window_is_too_late_not_applied_twice() {
    use omnifold_core::partition::partition_for;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
    let fold = Arc::new(FoldConfig::default().validate().unwrap());
    let processor = Processor::new(store.clone(), fold, "t", 65536, signer());
    let event = |id: &str, date: &str| {
        format!(
            r#"{{"eventId":"{id}","occurredAt":"{date}T00:00:00Z","channel":"ONLINE_WEB","subject":{{"memberId":"m"}},"searchPerformed":{{"query":"q"}}}}"#
        )
        .into_bytes()
    };
    let home = partition_for(b"m", 2);
    let mut log = omnifold_ingest::LocalLog::new(&processor, "t", 2, 100).unwrap();
    log.append_to(1 - home, event("late", "2026-01-01"));
    log.append(event("late", "2026-01-01"));
    log.append(event("six-weeks-later", "2026-02-15"));
    log.drain().unwrap();
    let kinds: Vec<&str> = log.done.dead_letters.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, vec!["too_late"]);
    let m = store.member(home, "m").unwrap().unwrap();
    assert_eq!((m.version.events_applied, m.browse.searches), (2, 2));
}

/// More timers due at once than the fold reads from the store in one round
/// (1,024): each fires once, in instant order, and where batches end does
/// not change the entries and exits written.
#[test]
fn more_timers_than_a_round_fire_in_one_batch_each_once_in_order() {
    use omnifold_core::audience::{AudienceConfig, Audiences};
    use omnifold_core::time::{DAY, to_timestamp};
    let rule = AudienceConfig { rule: "orders(within=7d) > 0".into(), ..Default::default() };
    let audiences = Arc::new(Audiences::compile(&BTreeMap::from([("buyers".to_owned(), rule)])).unwrap());
    let t0 = omnifold_core::testing::BASE;
    let event = |id: String, who: String, at: i64, payload| {
        proto::Event {
            event_id: id,
            occurred_at: Some(to_timestamp(at)),
            channel: proto::Channel::StorePos as i32,
            store_id: "s-1".into(),
            subject: Some(proto::Subject { member_id: who, ..Default::default() }),
            payload: Some(payload),
        }
        .encode_to_vec()
    };
    let members = 1_500u64;
    let mut values: Vec<Vec<u8>> = (0..members)
        .map(|i| {
            let order = proto::event::Payload::OrderPlaced(proto::OrderPlaced {
                order_id: format!("o-{i}"),
                currency: "CNY".into(),
                lines: vec![],
                total_minor: 1_000,
            });
            event(format!("e-{i}"), format!("m-{i:05}"), t0 + i as i64, order)
        })
        .collect();
    // A week and a day later: every order has left the window by then.
    let search = proto::event::Payload::SearchPerformed(proto::SearchPerformed { query: "later".into() });
    values.push(event("late".into(), "m-other".into(), t0 + 8 * DAY, search));
    let written = |cuts: &[usize]| -> Vec<serde_json::Value> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
        let fold = Arc::new(FoldConfig::default().validate().unwrap());
        let processor = Processor::new(store, fold, "t", 65536, signer()).with_audiences(audiences.clone());
        let records: Vec<Record<'_>> =
            values.iter().enumerate().map(|(i, v)| Record::new(i as i64, None, Some(v))).collect();
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([&records.len()]) {
            let p = processor.process(0, &records[start..end]).unwrap();
            out.extend(
                p.audience_records().iter().map(|r| serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()),
            );
            processor.commit(p).unwrap();
            start = end;
        }
        out
    };
    let one_by_one = written(&[1_500]);
    let exits: Vec<&serde_json::Value> = one_by_one.iter().filter(|v| v["event"] == "exited").collect();
    assert_eq!(exits.len(), members as usize, "every member leaves once");
    for (i, v) in exits.iter().enumerate() {
        assert_eq!(v["memberId"], format!("m-{i:05}"), "in the order of their instants");
        assert_eq!(v["seq"], 2);
        assert_eq!(v["at"], omnifold_core::time::rfc3339(t0 + i as i64 + 7 * DAY));
    }
    assert_eq!(written(&[100, 700, 1_200, 1_499]), one_by_one, "batch boundaries change nothing");
}

/// A backfill pass (`audienceBackfill` records, signed) evaluates every
/// member of the partition once, a chunk per record, at the partition's
/// event time; a member an event evaluated first does not move twice; an
/// unsigned record is refused; and where batches end changes nothing.
#[test]
fn a_backfill_pass_evaluates_every_member_once_a_chunk_per_record() {
    use omnifold_core::audience::{AudienceConfig, Audiences};
    use omnifold_core::time::{DAY, to_timestamp};
    let t0 = omnifold_core::testing::BASE;
    let event = |id: String, who: String, at: i64, payload| proto::Event {
        event_id: id,
        occurred_at: Some(to_timestamp(at)),
        channel: proto::Channel::StorePos as i32,
        store_id: "s-1".into(),
        subject: Some(proto::Subject { member_id: who, ..Default::default() }),
        payload: Some(payload),
    };
    let order = |i: usize| {
        proto::event::Payload::OrderPlaced(proto::OrderPlaced {
            order_id: format!("o-{i}"),
            currency: "CNY".into(),
            lines: vec![],
            total_minor: 1_000,
        })
    };
    // Fifty members ordered before any audience was defined.
    let before: Vec<Vec<u8>> = (0..50)
        .map(|i| event(format!("e-{i}"), format!("m-{i:02}"), t0 + i as i64, order(i)).encode_to_vec())
        .collect();
    let backfill = |n: usize, audiences: &[&str]| {
        let payload = proto::event::Payload::AudienceBackfill(proto::AudienceBackfill {
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            members: 7,
        });
        event(format!("b-{n}"), "p".into(), t0 + DAY, payload).encode_to_vec()
    };
    // Then: a pass for both audiences, ten records of seven members (the
    // pass needs eight), m-49 ordering again after the third.
    let mut after: Vec<Vec<u8>> = vec![backfill(0, &["buyers", "recent"])];
    after.extend((1..3).map(|n| backfill(n, &[])));
    after.push(event("again".into(), "m-49".into(), t0 + DAY, order(99)).encode_to_vec());
    after.extend((3..10).map(|n| backfill(n, &[])));
    let defs = BTreeMap::from([
        ("buyers".to_owned(), AudienceConfig { rule: "orders > 0".into(), ..Default::default() }),
        ("recent".to_owned(), AudienceConfig { rule: "orders(within=7d) > 0".into(), ..Default::default() }),
    ]);
    let audiences = Arc::new(Audiences::compile(&defs).unwrap());
    let sign = |v: &Vec<u8>| signer().sign(Some(b"p"), None, v);
    // (member, audience, entered or exited, seq, instant)
    type Move = (String, String, String, u64, String);
    let run = |cuts: &[usize]| -> (Vec<Move>, omnifold_core::audience::Backfill) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
        let fold = Arc::new(FoldConfig::default().validate().unwrap());
        let plain = Processor::new(store.clone(), fold.clone(), "t", 65536, signer());
        let records: Vec<Record<'_>> =
            before.iter().enumerate().map(|(i, v)| Record::new(i as i64, None, Some(v))).collect();
        plain.commit(plain.process(0, &records).unwrap()).unwrap();
        let processor = Processor::new(store.clone(), fold, "t", 65536, signer()).with_audiences(audiences.clone());
        let sigs: Vec<String> = after.iter().map(sign).collect();
        let records: Vec<Record<'_>> = after
            .iter()
            .zip(&sigs)
            .enumerate()
            .map(|(i, (v, s))| Record {
                key: Some(b"p"),
                signature: Some(s.as_bytes()),
                ..Record::new(50 + i as i64, Some(b"p"), Some(v))
            })
            .collect();
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([&records.len()]) {
            let p = processor.process(0, &records[start..end]).unwrap();
            for r in p.audience_records() {
                let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                let s = |k: &str| v[k].as_str().unwrap().to_owned();
                out.push((s("memberId"), s("audience"), s("event"), v["seq"].as_u64().unwrap(), s("at")));
            }
            processor.commit(p).unwrap();
            if end == 3 {
                // Three records in: 21 members evaluated, both still building.
                let b = store.backfill(0).unwrap().unwrap();
                assert_eq!((b.evaluated, b.pending.len()), (21, 2), "{b:?}");
            }
            start = end;
        }
        (out, store.backfill(0).unwrap().unwrap())
    };
    let (moves, pass) = run(&[3]);
    assert!(pass.pending.is_empty() && pass.after.is_none(), "the pass ended: {pass:?}");
    assert_eq!(pass.evaluated, 50);
    for audience in ["buyers", "recent"] {
        let entered: Vec<&String> = moves.iter().filter(|m| m.1 == audience).map(|m| &m.0).collect();
        assert_eq!(entered.len(), 50, "{audience}: every member enters once");
        assert!(moves.iter().filter(|m| m.1 == audience).all(|m| m.2 == "entered" && m.3 == 1));
    }
    // Each entered at the partition's event time when it was reached (the
    // pass's records do not move it): the first three records' 21 members
    // at the last order's time; m-49 by its own event a day later, and the
    // rest then too.
    for (member, _, _, _, at) in &moves {
        let first_three = member.as_str() < "m-21";
        let when = if first_three { t0 + 49 } else { t0 + DAY };
        assert_eq!(*at, omnifold_core::time::rfc3339(when), "{member}");
    }
    assert_eq!(run(&[1, 3, 4, 9]).0, moves, "batch boundaries change nothing");

    // Unsigned, it is refused as forged.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
    let fold = Arc::new(FoldConfig::default().validate().unwrap());
    let processor = Processor::new(store.clone(), fold, "t", 65536, signer()).with_audiences(audiences);
    let forged = [Record::new(0, Some(b"p"), Some(&after[0]))];
    let p = processor.process(0, &forged).unwrap();
    assert_eq!(p.dead_letters.len(), 1);
    assert!(p.dead_letters[0].reason.contains("audienceBackfill events are written only by omnifold"));
    processor.commit(p).unwrap();
    assert!(store.backfill(0).unwrap().is_none());
}
