//! Fold + commit throughput without a broker: decode, dedupe, fold and one
//! RocksDB batch per micro-batch, as ingest does per partition.
//!
//! Run: `cargo bench -p omnifold-benches --bench fold` (or `make bench`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use omnifold_benches::{event, event_protobuf, processor};
use omnifold_ingest::Record;
use omnifold_store::{Store, StoreConfig};

const MEMBERS: u64 = 20_000;

/// Records per batch: `BENCH_FOLD_BATCH`, else ingest's default `batch_max_records`.
fn batch_size() -> u64 {
    std::env::var("BENCH_FOLD_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000)
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

criterion_group!(benches, bench);
criterion_main!(benches);
