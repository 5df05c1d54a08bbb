//! `omnifold snapshot`: take snapshots now (over gRPC) and list the ones a
//! snapshot store holds (read from the store `[snapshots]` names).

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use omnifold_proto::v1 as proto;
use omnifold_snapshots::Snapshots;

use crate::config::Config;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Ask a running instance for snapshots of the partitions it folds, now.
    Take {
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = crate::tools::DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
        /// Only this partition (repeatable); default: every partition the instance folds.
        #[arg(long)]
        partition: Vec<u32>,
    },
    /// List the snapshots held for each partition, oldest first, and which one is the latest.
    List {
        /// Only this partition (repeatable); default: every partition of the events topic.
        #[arg(long)]
        partition: Vec<u32>,
    },
}

pub fn run(config: &Config, runtime: &tokio::runtime::Runtime, command: SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Take { server, partition } => runtime.block_on(take(server, partition)),
        SnapshotCommand::List { partition } => list(config, runtime, partition),
    }
}

async fn take(server: String, partitions: Vec<u32>) -> Result<()> {
    let r = crate::tools::admin(&server)
        .await?
        .take_snapshot(proto::TakeSnapshotRequest { partitions })
        .await
        .map_err(crate::tools::refused)?
        .into_inner();
    let mut failed = 0;
    for p in &r.results {
        if !p.error.is_empty() {
            failed += 1;
            println!("partition {}: {}", p.partition, p.error);
        } else if p.taken {
            println!(
                "partition {}: snapshot at offset {}: {} chunks, {} bytes; uploaded {} chunks, {} bytes",
                p.partition, p.next_offset, p.chunks, p.bytes, p.uploaded_chunks, p.uploaded_bytes
            );
        } else {
            println!("partition {}: the latest snapshot is already as far as this instance has folded", p.partition);
        }
    }
    if failed > 0 {
        bail!("{failed} of {} partitions have no new snapshot", r.results.len());
    }
    Ok(())
}

fn list(config: &Config, runtime: &tokio::runtime::Runtime, partitions: Vec<u32>) -> Result<()> {
    if !config.snapshots.enabled() {
        bail!("snapshots are off: set [snapshots] url (or OMNIFOLD_SNAPSHOTS__URL)");
    }
    let partitions = if partitions.is_empty() {
        let count = omnifold_ingest::partition_count(&config.kafka, &config.kafka.topic)
            .with_context(|| format!("reading the partition count of {}", config.kafka.topic))?;
        (0..count).collect()
    } else {
        partitions
    };
    let local = tempfile::tempdir().context("a directory for chunk files")?;
    let snapshots =
        Snapshots::open(&config.snapshots, local.path().to_owned(), "omnifold-cli", runtime.handle().clone())
            .with_context(|| format!("opening the snapshot store {}", config.snapshots.url))?;
    println!(
        "{:>9} {:>14} {:<25} {:<24} {:>7} {:>14} latest",
        "partition", "next offset", "taken", "by", "chunks", "bytes"
    );
    for p in partitions {
        let latest = snapshots.latest(&config.kafka.topic, p)?.map(|m| m.next_offset());
        for m in snapshots.list(&config.kafka.topic, p)? {
            let taken = crate::tools::rfc3339_of(m.taken_at_ms);
            println!(
                "{:>9} {:>14} {:<25} {:<24} {:>7} {:>14} {}",
                p,
                m.next_offset(),
                taken,
                m.instance,
                m.snapshot.chunks.len(),
                m.snapshot.bytes(),
                if latest == Some(m.next_offset()) { "yes" } else { "" }
            );
        }
    }
    Ok(())
}
