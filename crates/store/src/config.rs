//! Store settings: where it lives and how much memory it may use.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Block cache shared by all column families; memtables are charged to
    /// it too, so this bounds the store's memory whatever the member count.
    pub block_cache_bytes: usize,
    /// Memtable budget, taken from the block cache.
    pub write_buffer_bytes: usize,
    /// How long an applied event id is remembered, counted in event time
    /// back from the partition's latest event. An event older than that
    /// cannot be told from a duplicate and goes to the dead-letter topic
    /// (kind `too_late`) instead of being applied.
    pub dedupe_retention_hours: u64,
    /// fsync every commit. Off: a process crash loses nothing (the WAL is in
    /// the OS cache); a power loss may lose the last commits, which are then
    /// re-read from Kafka because the offsets roll back with them.
    pub sync_writes: bool,
    pub max_open_files: i32,
    /// Keep every event applied to a member (as consumed, with its event
    /// time), so reads `as_of` a past instant are exact. Off by default: it
    /// writes one more key per event, the record's bytes, and costs about a
    /// fifth of fold throughput (docs/benchmarks.md, docs/decisions.md).
    /// Without it a read `as_of` an instant before the member's latest
    /// event answers FAILED_PRECONDITION.
    pub keep_history: bool,
    /// Keep each member's events of the last this many days (counted back
    /// from its latest event); older ones are folded into a base snapshot.
    /// Reads as of an instant before what was folded answer
    /// FAILED_PRECONDITION. 0 keeps everything.
    pub history_days: u32,
    /// Runtime only (replay): skip the write-ahead log; the caller flushes
    /// at the end, and a crash means starting the rebuild again.
    #[serde(skip)]
    pub bulk_load: bool,
    /// Runtime only (dump, verify): open without writing, alongside a
    /// running instance.
    #[serde(skip)]
    pub read_only: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from(".omnifold/data"),
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            dedupe_retention_hours: 30 * 24,
            sync_writes: false,
            max_open_files: 512,
            keep_history: false,
            history_days: 0,
            bulk_load: false,
            read_only: false,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.block_cache_bytes < (8 << 20) {
            return Err(Error::Config("block_cache_bytes must be at least 8 MiB".into()));
        }
        if self.write_buffer_bytes < (4 << 20) || self.write_buffer_bytes > self.block_cache_bytes {
            return Err(Error::Config(
                "write_buffer_bytes must be at least 4 MiB and at most block_cache_bytes".into(),
            ));
        }
        if !(1..=100 * 365 * 24).contains(&self.dedupe_retention_hours) {
            return Err(Error::Config("dedupe_retention_hours must be 1 to 876000 (100 years)".into()));
        }
        Ok(())
    }
}
