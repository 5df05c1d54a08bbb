//! Fold + commit throughput without a broker: decode, dedupe, fold and one
//! RocksDB batch per micro-batch, as ingest does per partition.
//!
//! Run: `cargo bench -p omnifold-benches --bench fold` (or `make bench`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use omnifold_benches::{BASE, env_or, event, event_protobuf, processor, store_config};
use omnifold_core::fold::Position;
use omnifold_core::{Event, FoldConfig, Member, ProfileKind, apply, decode_event};
use omnifold_ingest::{IngestConfig, Record};
use omnifold_store::{Store, StoreConfig};

const MEMBERS: u64 = 20_000;

/// Records per batch: `BENCH_FOLD_BATCH`, else ingest's default `batch_max_records`.
fn batch_size() -> u64 {
    env_or("BENCH_FOLD_BATCH", IngestConfig::default().batch_max_records as u64)
}

/// Members of the history benchmark, each viewed once per batch.
const VIEWERS: u64 = 1_000;

/// A product view by member `m` (of `VIEWERS`), the `i`-th event of the run.
fn view(i: u64, m: u64) -> Vec<u8> {
    let e = serde_json::json!({
        "eventId": format!("view-{i}"),
        "occurredAt": "2026-11-01T10:00:00Z",
        "channel": "MOBILE_APP",
        "subject": {"memberId": format!("m-{m:07}")},
        "productViewed": {"sku": format!("SKU-{}", i % 500), "category": format!("c{}", i % 20)},
    });
    serde_json::to_vec(&e).unwrap()
}

/// Order `k` of member `m`, one a day through 2026.
fn order(m: u64, k: u64) -> Vec<u8> {
    let e = serde_json::json!({
        "eventId": format!("order-{m}-{k}"),
        "occurredAt": omnifold_core::time::rfc3339(BASE + k as i64 * omnifold_core::time::DAY),
        "channel": "STORE_POS",
        "subject": {"memberId": format!("m-{m:07}")},
        "orderPlaced": {"orderId": format!("o-{m}-{k}"), "currency": "CNY",
            "lines": [{"sku": format!("SKU-{}", k % 500), "category": "c1", "quantity": 1, "unitPriceMinor": "1000"}]},
    });
    serde_json::to_vec(&e).unwrap()
}

/// Members of the history benchmarks with `orders` kept orders each, in a
/// store of their own; filled on first use, so a run that filters the
/// benchmarks out skips it.
struct History {
    orders: u64,
    _dir: tempfile::TempDir,
    store: std::sync::Arc<Store>,
    processor: omnifold_ingest::Processor,
    offset: i64,
    filled: bool,
}

impl History {
    fn new(orders: u64) -> History {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig { path: dir.path().into(), ..store_config() }).unwrap();
        store.bind_partitions("bench", 1).unwrap();
        let processor = processor(store.clone(), "bench").unwrap();
        History { orders, _dir: dir, store, processor, offset: 0, filled: false }
    }

    fn fold(&mut self, values: Vec<Vec<u8>>) {
        let records: Vec<Record<'_>> =
            values.iter().enumerate().map(|(i, v)| Record::new(self.offset + i as i64, None, Some(v))).collect();
        let p = self.processor.process(0, &records).unwrap();
        assert_eq!(p.applied, records.len() as u64, "every event applies");
        self.processor.commit(p).unwrap();
        self.offset += records.len() as i64;
    }

    /// Every member placed `orders` orders (or, with none, viewed a product once).
    fn fill(&mut self) {
        if !std::mem::replace(&mut self.filled, true) {
            if self.orders == 0 {
                self.fold((0..VIEWERS).map(|m| view((1 << 40) + m, m)).collect());
            }
            for k in 0..self.orders {
                self.fold((0..VIEWERS).map(|m| order(m, k)).collect());
            }
        }
    }
}

/// What one product view costs as a member's order history grows: members
/// with `orders` kept orders each get one view per batch. The layout is
/// right when the cost does not depend on the history. Then what reading
/// those members costs: the record and open lots, as a profile or balance
/// read loads them, against the whole member with its kept orders (what
/// such reads loaded before dated spend).
fn bench_history(c: &mut Criterion) {
    let mut histories = [History::new(0), History::new(300)];
    let mut g = c.benchmark_group("fold_history");
    g.throughput(Throughput::Elements(VIEWERS));
    g.sample_size(20);
    for h in &mut histories {
        let mut next = 0u64;
        g.bench_function(format!("view_with_{}_orders_kept", h.orders), |b| {
            h.fill();
            b.iter_batched(
                || {
                    let start = next;
                    next += VIEWERS;
                    (0..VIEWERS).map(|m| view(start + m, m)).collect::<Vec<_>>()
                },
                |values| h.fold(values),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
    let mut g = c.benchmark_group("read_history");
    g.throughput(Throughput::Elements(VIEWERS));
    g.sample_size(20);
    let keys: Vec<String> = (0..VIEWERS).map(|m| format!("m-{m:07}")).collect();
    for h in &mut histories {
        for (what, whole) in [("record_and_lots", false), ("whole_member", true)] {
            g.bench_function(format!("{what}_with_{}_orders_kept", h.orders), |b| {
                h.fill();
                b.iter(|| {
                    for k in &keys {
                        let m = if whole { h.store.member(0, k) } else { h.store.member_without_orders(0, k) };
                        assert!(m.unwrap().is_some());
                    }
                })
            });
        }
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let batch = batch_size();
    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(batch));
    g.sample_size(20);
    // The store's default, and JSON again with every event kept per member
    // (`keep_history`, off by default), to show what exact past reads cost.
    let default = store_config().keep_history;
    let variants = [
        ("json", event as fn(u64, u64) -> (String, Vec<u8>), default),
        ("protobuf", event_protobuf, default),
        ("json_kept_history", event, true),
    ];
    for (name, make, keep_history) in variants {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig { path: dir.path().into(), keep_history, ..store_config() }).unwrap();
        // As ingest does: one partition owns every key.
        store.bind_partitions("bench", 1).unwrap();
        // The default member cache holds all MEMBERS.
        let processor = processor(store.clone(), "bench").unwrap();
        let mut next = 0u64;
        g.bench_function(format!("decode_fold_commit_{name}"), |b| {
            b.iter_batched(
                || {
                    let start = next;
                    next += batch;
                    (start, (start..start + batch).map(|i| make(i, MEMBERS).1).collect::<Vec<_>>())
                },
                |(start, values)| {
                    let records: Vec<Record<'_>> = values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Record::new((start + i as u64) as i64, None, Some(v)))
                        .collect();
                    let p = processor.process(0, &records).unwrap();
                    processor.commit(p).unwrap();
                },
                BatchSize::LargeInput,
            )
        });
    }
    // The baseline: the same events' bytes, written blind (one history
    // entry per event, no decode, no fold) in one RocksDB batch per batch;
    // so in a store that keeps history, whatever the default.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), keep_history: true, ..store_config() }).unwrap();
    let mut next = 0u64;
    g.bench_function("blind_write_batch_json", |b| {
        b.iter_batched(
            || {
                let start = next;
                next += batch;
                (start..start + batch).map(|i| (i, event(i, MEMBERS))).collect::<Vec<_>>()
            },
            |events| {
                let mut wb = store.batch("bench", 0);
                for (i, (key, value)) in &events {
                    wb.put_history(&store, key, *i, 0, value);
                }
                store.commit(wb).unwrap();
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Events of one kind from the stream `event` generates, from `from` on:
/// every 8th is an order, the rest product views.
fn of_kind(order: bool, from: u64, n: u64) -> impl Iterator<Item = u64> {
    (from..).filter(move |i: &u64| i.is_multiple_of(8) == order).take(n as usize)
}

/// Members of the stage benchmark, each folded from 20 events first.
const STAGE_MEMBERS: u64 = 1_000;

/// Each stage of the fold on its own, per event kind: decode (JSON and
/// protobuf), the fold of one event into a member that has seen 20, and
/// the encoding of the member record the commit writes.
fn bench_stages(c: &mut Criterion) {
    const N: u64 = 1_000;
    let cfg = FoldConfig::default().validate().unwrap();
    let max = IngestConfig::default().max_event_bytes;
    let decode = |v: &[u8]| decode_event(v, max, &cfg.limits).unwrap();
    let history = 20 * STAGE_MEMBERS;
    let mut members: HashMap<String, Member> = HashMap::new();
    for i in 0..history {
        let (key, v) = event(i, STAGE_MEMBERS);
        let m = members.entry(key.clone()).or_insert_with(|| Member::new(key, ProfileKind::KnownMember));
        let _ = apply(m, &decode(&v), Position { partition: 0, offset: i as i64 }, &cfg);
    }
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Elements(N));
    g.sample_size(30);
    for (kind, order) in [("view", false), ("order", true)] {
        for (encoding, make) in [("json", event as fn(u64, u64) -> (String, Vec<u8>)), ("protobuf", event_protobuf)] {
            let bytes: Vec<Vec<u8>> = of_kind(order, history, N).map(|i| make(i, STAGE_MEMBERS).1).collect();
            g.bench_function(format!("decode_{encoding}_{kind}"), |b| {
                b.iter(|| bytes.iter().map(|v| std::hint::black_box(decode(v)).event_id.len()).sum::<usize>())
            });
        }
        let events: Vec<(String, Event)> = of_kind(order, history, N)
            .map(|i| {
                let (key, v) = event(i, STAGE_MEMBERS);
                (key, decode(&v))
            })
            .collect();
        g.bench_function(format!("fold_{kind}"), |b| {
            b.iter_batched(
                || members.clone(),
                |mut ms| {
                    for (key, e) in &events {
                        let m = ms.get_mut(key).unwrap();
                        let _ = apply(m, e, Position { partition: 0, offset: 1 << 40 }, &cfg);
                    }
                    ms
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.bench_function("encode_member_record", |b| {
        b.iter_batched(
            || members.clone(),
            |mut ms| ms.values_mut().map(|m| m.encode_hot().len()).sum::<usize>(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench, bench_history, bench_stages);
criterion_main!(benches);
