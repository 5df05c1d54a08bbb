//! Data-engineer tools: `replay` rebuilds a store from the events topic,
//! `dump` writes a store (or a partition, or a member) as canonical JSON
//! lines with a stable digest per partition, so two stores compare with
//! standard tools.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use xxhash_rust::xxh3::Xxh3;

use omnifold_ingest::{Processor, Shutdown};
use omnifold_store::{Store, StoreConfig};

use crate::config::Config;
use crate::produce::progress;

#[derive(Args)]
pub struct ReplayArgs {
    /// A new (or partly rebuilt) store directory; `serve --data-dir` can use it.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Stop once the topic has been quiet this long after reaching the end.
    #[arg(long, default_value_t = 2_000)]
    pub idle_ms: u64,
}

/// `omnifold replay`: the events topic, from the beginning, into a store.
pub fn replay(config: &Config, args: ReplayArgs) -> Result<()> {
    let store_cfg = StoreConfig { path: args.data_dir.clone(), bulk_load: true, ..config.store.clone() };
    let store = Store::open(&store_cfg).with_context(|| format!("opening store {}", args.data_dir.display()))?;
    let processor =
        Processor::new(store, Arc::new(config.fold.clone()), &config.kafka.topic, config.kafka.max_event_bytes)
            .with_member_cache(config.kafka.member_cache_entries);
    let bar = progress(0, "replaying");
    let shutdown = Shutdown::default();
    let done =
        omnifold_ingest::replay(&config.kafka, &processor, Duration::from_millis(args.idle_ms), &shutdown, |p| {
            bar.set_length(p.expected.max(p.records));
            bar.set_position(p.records);
        })
        .context("replaying the events topic")?;
    bar.finish_and_clear();
    println!(
        "replayed {} records ({} events applied) from {} into {}",
        done.records,
        done.applied,
        config.kafka.topic,
        args.data_dir.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct DumpArgs {
    /// The store to read (opened read-only; it may be in use).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Only this member (its key: member id, anonymous id or `TYPE:value`).
    #[arg(long)]
    pub member: Option<String>,
    /// Print only one digest line per partition instead of the dump.
    #[arg(long)]
    pub digest: bool,
}

/// One line of the dump: a member with its ledger, in canonical JSON.
fn line(store: &Store, partition: u32, member: &omnifold_core::Member) -> Result<String> {
    let ledger: Vec<omnifold_core::LedgerEntry> =
        store.ledger(partition, &member.key, None).collect::<Result<Vec<_>, _>>()?.into_iter().rev().collect();
    let v = serde_json::json!({ "partition": partition, "key": member.key, "member": member, "ledger": ledger });
    Ok(serde_json::to_string(&v)?)
}

/// `omnifold dump`: members sorted by partition and key, one JSON line each.
pub fn dump(config: &Config, args: DumpArgs) -> Result<()> {
    let store_cfg = StoreConfig { path: args.data_dir.clone(), read_only: true, ..config.store.clone() };
    let store = Store::open(&store_cfg).with_context(|| format!("opening store {}", args.data_dir.display()))?;
    let topic = &config.kafka.topic;
    let Some(count) = store.partition_count(topic)? else {
        bail!("{} holds no state for topic {topic}", args.data_dir.display());
    };
    let partitions: Vec<u32> = match (args.partition, &args.member) {
        (Some(p), _) if p >= count => bail!("partition {p} does not exist: the topic has {count}"),
        (Some(p), _) => vec![p],
        (None, Some(m)) => vec![omnifold_core::partition::partition_for(m.as_bytes(), count)],
        (None, None) => (0..count).collect(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for p in partitions {
        let mut digest = Xxh3::new();
        let mut members = 0u64;
        for m in store.scan_members(p) {
            let m = m?;
            if args.member.as_ref().is_some_and(|k| *k != m.key) {
                continue;
            }
            let l = line(&store, p, &m)?;
            digest.update(l.as_bytes());
            digest.update(b"\n");
            members += 1;
            if !args.digest {
                writeln!(out, "{l}")?;
            }
        }
        if args.digest {
            writeln!(out, "partition {p} members {members} digest {:032x}", digest.digest128())?;
        }
    }
    out.flush()?;
    Ok(())
}
