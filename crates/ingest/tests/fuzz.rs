//! Fuzzing decode + validate + fold through the processor: inputs from the
//! corpus in `tests/fuzz-corpus/`, sent as JSON or protobuf and mutated
//! (bit flips, inserted and deleted bytes, truncation, splices of two
//! inputs, numbers replaced by extreme ones), folded on a real RocksDB store
//! over two partitions, with joins cut in small parts.
//!
//! No input may panic (the processor's guard turns a panic into a `bug`
//! dead letter, so none may appear), stall a partition (the log drains,
//! and every valid event ends applied, passed on or dead-lettered), or
//! break the books of any member.
//!
//! Bounded in `make test`: `FUZZ_CASES` runs (default 64) of up to 64 inputs
//! each, and 40 times as many single decodes. `make fuzz` runs 50,000.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use omnifold_core::{FoldConfig, decode_event};
use omnifold_ingest::{LocalLog, Processor, Signer};
use omnifold_store::{Store, StoreConfig};
use proptest::prelude::*;
use prost::Message;

const PARTITIONS: u32 = 2;

/// The seed inputs: each corpus file as JSON, and as protobuf.
static CORPUS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is in {}", dir.display());
    let mut out = Vec::new();
    for f in files {
        let json = std::fs::read(&f).unwrap();
        if let Ok(e) = omnifold_core::decode::decode_wire(&json, usize::MAX) {
            out.push(e.encode_to_vec());
        }
        out.push(json);
    }
    out
});

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

/// One change to an input.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    /// The tail of another corpus input from here.
    Splice(prop::sample::Index, prop::sample::Index, prop::sample::Index),
    /// A run of digits replaced by an extreme number or token.
    Extreme(prop::sample::Index, prop::sample::Index),
}

const EXTREMES: &[&str] = &[
    "-9223372036854775808",
    "9223372036854775807",
    "18446744073709551616",
    "-1",
    "0",
    "1e400",
    "NaN",
    "\"\"",
    "null",
    "[]",
    "{}",
    "99999999999999999999999999999",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1u8..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, x)| Mutation::Extreme(i, x)),
    ]
}

fn mutate(input: &mut Vec<u8>, m: &Mutation) {
    if input.is_empty() {
        return;
    }
    match m {
        Mutation::FlipBit(i, bit) => {
            let at = i.index(input.len());
            input[at] ^= 1 << bit;
        }
        Mutation::Insert(i, b) => input.insert(i.index(input.len() + 1), *b),
        Mutation::Delete(i, n) => {
            let at = i.index(input.len());
            input.drain(at..(at + *n as usize).min(input.len()));
        }
        Mutation::Truncate(i) => input.truncate(i.index(input.len())),
        Mutation::Splice(at, other, from) => {
            let other = &CORPUS[other.index(CORPUS.len())];
            input.truncate(at.index(input.len()));
            input.extend_from_slice(&other[from.index(other.len())..]);
        }
        Mutation::Extreme(i, x) => {
            let digits: Vec<usize> = (0..input.len()).filter(|&k| input[k].is_ascii_digit()).collect();
            if digits.is_empty() {
                return;
            }
            let start = digits[i.index(digits.len())];
            let end = (start..input.len()).find(|&k| !input[k].is_ascii_digit()).unwrap_or(input.len());
            let extreme = EXTREMES[x.index(EXTREMES.len())].as_bytes();
            input.splice(start..end, extreme.iter().copied());
        }
    }
}

/// A corpus input with up to four mutations (often none, so valid events
/// build up state for the mutated ones to meet).
fn input() -> impl Strategy<Value = Vec<u8>> {
    (any::<prop::sample::Index>(), prop::collection::vec(mutation(), 0..4), any::<bool>()).prop_map(
        |(seed, mutations, mutate_it)| {
            let mut bytes = CORPUS[seed.index(CORPUS.len())].clone();
            if mutate_it {
                for m in &mutations {
                    mutate(&mut bytes, m);
                }
            }
            bytes
        },
    )
}

fn signer() -> Signer {
    Signer::new("a-fuzzing-secret-of-at-least-32-characters", &[])
}

/// Every valid input ended somewhere: applied or passed on (its id is
/// marked seen on some partition) or dead-lettered (the event: another
/// encoding of it may have gone, and a copy of it is then a duplicate).
fn accounted_for(store: &Store, inputs: &[Vec<u8>], dead: &[Vec<u8>], fold: &FoldConfig) -> Result<(), TestCaseError> {
    let id_of = |bytes: &[u8]| decode_event(bytes, usize::MAX, &fold.limits).ok().map(|e| e.event_id);
    let dead: BTreeSet<String> = dead.iter().filter_map(|d| id_of(d)).collect();
    for id in inputs.iter().filter_map(|b| id_of(b)) {
        let seen = (0..PARTITIONS).any(|p| store.markers(p, &[&id]).unwrap()[0].is_some());
        prop_assert!(seen || dead.contains(&id), "{} was neither applied nor dead-lettered", id);
    }
    Ok(())
}

/// The books of every member balance and no lot is out of bounds.
fn books_balance(store: &Store, fold: &FoldConfig) -> Result<(), TestCaseError> {
    // After every corpus event (June 2026): pending points have activated.
    let at = 1_790_000_000_000;
    for p in 0..PARTITIONS {
        for m in store.scan_members(p) {
            let m = m.unwrap();
            let b = m.balance(at, &fold.loyalty);
            prop_assert_eq!(
                b.earned - b.redeemed - b.expired - b.revoked,
                b.active + b.pending - b.negative,
                "{}",
                m.key
            );
            prop_assert!(b.active >= 0 && b.pending >= 0 && b.negative >= 0, "{}", m.key);
            for lot in &m.loyalty.lots {
                prop_assert!(0 <= lot.remaining && lot.remaining <= lot.points, "{} {:?}", m.key, lot);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases() * 40))]

    /// Decoding and validating any bytes answers, never panics.
    #[test]
    fn any_bytes_decode_to_an_event_or_an_error(bytes in input()) {
        let fold = FoldConfig::default();
        let _ = decode_event(&bytes, 65_536, &fold.limits);
    }
}

/// What a fuzz run reached, summed over its cases.
#[derive(Default)]
struct Reached {
    inputs: u64,
    applied: u64,
    kinds: BTreeSet<&'static str>,
}

/// One case: a mutated stream through the processor.
fn fold_case(inputs: &[Vec<u8>], batch: usize, reached: &mut Reached) -> Result<(), TestCaseError> {
    let fold = Arc::new(FoldConfig::default().validate().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { path: dir.path().into(), dedupe_retention_hours: 87_600, ..StoreConfig::default() };
    let store = Store::open(&config).unwrap();
    let processor = Processor::new(store.clone(), fold.clone(), "t", 4096, signer()).with_join_part_bytes(256);
    let mut log = LocalLog::new(&processor, "t", PARTITIONS, batch).unwrap();
    for (i, bytes) in inputs.iter().enumerate() {
        // Every third record on a partition of the producer's choosing.
        if i % 3 == 2 {
            log.append_to(i as u32, bytes.clone());
        } else {
            log.append(bytes.clone());
        }
    }
    // Returns only once every partition has read all it was given.
    log.drain().unwrap();
    prop_assert!(log.done.records >= inputs.len() as u64);
    let bugs: Vec<&String> = log.done.dead_letters.iter().filter(|d| d.kind == "bug").map(|d| &d.reason).collect();
    prop_assert!(bugs.is_empty(), "{:?}", bugs);
    let dead: Vec<Vec<u8>> = log.done.dead_letters.iter().map(|d| d.original.clone()).collect();
    accounted_for(&store, inputs, &dead, &fold)?;
    books_balance(&store, &fold)?;
    reached.inputs += inputs.len() as u64;
    reached.applied += log.done.applied;
    reached.kinds.extend(log.done.dead_letters.iter().map(|d| d.kind));
    Ok(())
}

/// Mutated streams through the processor: no panic, no stall, nothing
/// lost, the books balance; and the run reached the fold and each kind of
/// refusal (a fuzzer that only makes garbage tests the decoder alone).
#[test]
fn mutated_streams_fold_without_panics_stalls_or_broken_books() {
    use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
    // A new seed each run; failures are kept next to this file and tried
    // first on the next run.
    let regressions = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz.proptest-regressions");
    let config = Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let reached = std::cell::RefCell::new(Reached::default());
    let strategy = (prop::collection::vec(input(), 1..64), 1usize..20);
    runner.run(&strategy, |(inputs, batch)| fold_case(&inputs, batch, &mut reached.borrow_mut())).unwrap();
    let reached = reached.into_inner();
    eprintln!("fuzzed {} inputs: {} events applied, dead letters {:?}", reached.inputs, reached.applied, reached.kinds);
    assert!(reached.applied > 0);
    for kind in ["decode", "validation", "forged"] {
        assert!(reached.kinds.contains(kind), "no {kind} dead letter in {:?}", reached.kinds);
    }
}
