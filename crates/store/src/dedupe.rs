//! Dedupe markers that depend only on the log.
//!
//! A marker is `partition | event id → marker time`: the partition's event
//! time (its watermark: the latest event time applied) when the event was
//! applied, never earlier than the event's own time. The partition's
//! horizon is its watermark minus `dedupe_retention_hours`; a marker older
//! than the horizon no longer counts, and the ingest refuses events older
//! than the horizon that it cannot tell from a duplicate. Both follow from
//! the log alone, so live ingest, a replay and a store rebuilt elsewhere
//! make the same decisions. Expired markers are dropped for free by a
//! compaction filter that reads the horizons; when that happens does not
//! matter, because a marker below the horizon already counts for nothing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rocksdb::compaction_filter::Decision;

use crate::keys;

/// Each partition's horizon, shared with the compaction filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Horizons(Arc<RwLock<HashMap<u32, i64>>>);

impl Horizons {
    pub(crate) fn get(&self, partition: u32) -> i64 {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&partition).copied().unwrap_or(i64::MIN)
    }

    /// Moves a partition's horizon forward (never back).
    pub(crate) fn advance(&self, partition: u32, horizon: i64) {
        let mut h = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = h.entry(partition).or_insert(i64::MIN);
        *e = (*e).max(horizon);
    }

    /// Sets a partition's horizon, also back: its state was replaced by a
    /// snapshot's.
    pub(crate) fn reset(&self, partition: u32, horizon: i64) {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(partition, horizon);
    }

    /// The compaction filter of the dedupe column family.
    pub(crate) fn filter(&self) -> impl Fn(u32, &[u8], &[u8]) -> Decision + Send + 'static {
        let horizons = self.clone();
        move |_level, key, value| {
            let (Some(p), Some(marked)) = (keys::partition_of(key), keys::decode_i64(value)) else {
                return Decision::Keep;
            };
            if marked < horizons.get(p) { Decision::Remove } else { Decision::Keep }
        }
    }
}
