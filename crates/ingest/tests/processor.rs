//! The processor against a real RocksDB store: duplicates anywhere and any
//! batch boundaries give the state, ledger and verdicts of one clean pass
//! over the events; a retried request id is decided once; reprocessing
//! committed records changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use omnifold_core::fold::{Position, apply, kind_of};
use omnifold_core::testing::events;
use omnifold_core::{Event, FoldConfig, LedgerEntry, Member, Verdict};
use omnifold_ingest::{Processor, Record};
use omnifold_proto::v1 as proto;
use omnifold_store::{Store, StoreConfig};
use proptest::prelude::*;
use prost::Message;

/// What one clean pass of the core fold gives.
struct Reference {
    members: BTreeMap<String, Member>,
    ledgers: BTreeMap<String, Vec<LedgerEntry>>,
    verdicts: BTreeMap<(String, String), Verdict>,
    /// Per event: applied (or a retry of a decided request), not refused.
    accepted: Vec<bool>,
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
            continue;
        }
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

fn run_batches(processor: &Processor, values: &[Vec<u8>], cuts: &[usize]) -> (u64, u64) {
    let records: Vec<Record<'_>> =
        values.iter().enumerate().map(|(i, v)| Record::new(i as i64, None, Some(v))).collect();
    let (mut applied, mut dups) = (0, 0);
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
    bounds.push(records.len());
    bounds.sort_unstable();
    for end in bounds {
        if end <= start {
            continue;
        }
        let p = processor.process(0, &records[start..end]).unwrap();
        assert!(p.dead_letters.iter().all(|d| d.kind == "rule"), "only rule rejections in valid streams");
        applied += p.applied;
        dups += p.duplicates;
        processor.commit(p).unwrap();
        start = end;
    }
    (applied, dups)
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
        let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
        // A cache smaller than the number of subjects, so eviction happens too.
        let processor = Processor::new(store.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 65536)
            .with_member_cache(cache);
        let (applied, dups) = run_batches(&processor, &values, &cuts);
        let reference = reference(&stream);
        let want = &reference.members;
        // A copy of an applied event is a duplicate; a copy of a refused one
        // is refused again (refused events are not marked seen, so they can
        // be replayed after a fix). A retried request id is a duplicate too.
        let copies_of_applied = order.iter().enumerate().filter(|(i, src)| order[..*i].contains(src) && reference.accepted[**src]).count();
        prop_assert_eq!(dups, copies_of_applied as u64 + reference.retries);
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
        let store2 = Store::open(&StoreConfig { path: dir2.path().into(), ..StoreConfig::default() }).unwrap();
        let replay = Processor::new(store2.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 65536);
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
        let (again, _) = run_batches(&processor, &values, &[values.len() / 2]);
        prop_assert_eq!(again, 0);
        let after: Vec<Vec<u8>> = store.scan_members(0).map(|m| m.unwrap().encode()).collect();
        prop_assert_eq!(before, after);
        prop_assert_eq!(stored_ledgers(&store, want.keys().cloned()), ledgers);
    }
}

#[test]
fn bad_records_become_dead_letters_and_the_partition_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
    let processor = Processor::new(store.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 2048);
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
    let processor = Processor::new(store.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 65536)
        .with_member_cache(10);
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
    let processor = Processor::new(store.clone(), Arc::new(FoldConfig::default().validate().unwrap()), "t", 65536);
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
    assert_eq!((m.loyalty.redeemed, m.loyalty.lots[0].remaining), (100, 50));
    let v = store.verdicts(0, &[("m", "r1")]).unwrap().remove(0).unwrap();
    assert_eq!((v.event_id.as_str(), v.points, v.seq), ("x1", 100, Some(1)));
    let points: Vec<i64> = store.ledger(0, "m", None).map(|e| e.unwrap().points).collect();
    assert_eq!(points, vec![-100, 150], "newest first: one redemption, one earn");
}
