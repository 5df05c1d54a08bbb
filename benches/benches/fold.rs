//! Fold + commit throughput without a broker: decode, dedupe, fold and one
//! RocksDB batch per micro-batch, as ingest does per partition.
//!
//! Run: `cargo bench -p omnifold-benches --bench fold` (or `make bench`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use omnifold_benches::{BASE, env_or, event, event_protobuf, processor};
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

/// What one product view costs as a member's order history grows: members
/// with `orders` kept orders each get one view per batch. The layout is
/// right when the cost does not depend on the history.
fn bench_history(c: &mut Criterion) {
    let mut g = c.benchmark_group("fold_history");
    g.throughput(Throughput::Elements(VIEWERS));
    g.sample_size(20);
    for orders in [0u64, 300] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
        store.bind_partitions("bench", 1).unwrap();
        let processor = processor(store.clone(), "bench").unwrap();
        let mut offset = 0i64;
        let mut fold = |values: Vec<Vec<u8>>| {
            let records: Vec<Record<'_>> =
                values.iter().enumerate().map(|(i, v)| Record::new(offset + i as i64, None, Some(v))).collect();
            let p = processor.process(0, &records).unwrap();
            assert_eq!(p.applied, records.len() as u64, "every event applies");
            processor.commit(p).unwrap();
            offset += records.len() as i64;
        };
        for k in 0..orders {
            fold((0..VIEWERS).map(|m| order(m, k)).collect());
        }
        let mut next = 0u64;
        g.bench_function(format!("view_with_{orders}_orders_kept"), |b| {
            b.iter_batched(
                || {
                    let start = next;
                    next += VIEWERS;
                    (0..VIEWERS).map(|m| view(start + m, m)).collect::<Vec<_>>()
                },
                &mut fold,
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let batch = batch_size();
    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(batch));
    g.sample_size(20);
    for (name, make) in [("json", event as fn(u64, u64) -> (String, Vec<u8>)), ("protobuf", event_protobuf)] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
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
    // entry per event, no decode, no fold) in one RocksDB batch per batch.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..StoreConfig::default() }).unwrap();
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

criterion_group!(benches, bench, bench_history);
criterion_main!(benches);
