//! The audience backfill driver (docs/audiences.md, "Backfill"): for each
//! partition this instance owns, it writes the `audienceBackfill` records
//! the fold makes its passes from. At start, one naming the audiences
//! defined, changed or removed since the partition's last pass; then, while
//! a pass is under way, the next one each interval once the last is folded.
//!
//! Architecture invariant: the fold's passes depend only on these records'
//! place in the log, never on when they were written, so a replay makes the
//! same ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tracing::{debug, warn};

use omnifold_core::audience::Audiences;
use omnifold_core::partition::partition_event;
use omnifold_proto::v1 as proto;
use omnifold_store::StoreHandle;

use crate::status::now_ms;
use crate::{CommandProducer, IngestConfig, Result, Shutdown, Signer};

/// What the driver needs.
pub struct BackfillDriver {
    pub producer: CommandProducer,
    pub signer: Signer,
    pub stores: Arc<StoreHandle>,
    /// The configured audiences (each partition adds those it has folded
    /// through `AdminService`).
    pub audiences: Arc<Audiences>,
    /// Whether this instance owns a partition (only the owner writes).
    pub owns: Arc<dyn Fn(u32) -> bool + Send + Sync>,
}

/// Drives every owned partition's passes until `shutdown`.
pub async fn run_backfills(cfg: &IngestConfig, d: BackfillDriver, shutdown: Shutdown) {
    let interval = Duration::from_millis(cfg.audience_backfill_interval_ms);
    let mut run = Driving { cfg, d, checked: HashSet::new(), outstanding: HashMap::new() };
    while !shutdown.is_triggered() {
        if let Err(e) = run.round().await {
            warn!(error = %e, "audience backfill: will try again");
        }
        tokio::time::sleep(interval).await;
    }
}

struct Driving<'a> {
    cfg: &'a IngestConfig,
    d: BackfillDriver,
    /// Partitions whose definitions were compared since the start.
    checked: HashSet<u32>,
    /// The offset of each partition's last record, until it is folded.
    outstanding: HashMap<u32, i64>,
}

impl Driving<'_> {
    async fn round(&mut self) -> Result<()> {
        let store = self.d.stores.get();
        let Some(count) = store.partition_count(&self.cfg.topic)? else { return Ok(()) };
        for p in (0..count).filter(|p| (self.d.owns)(*p)) {
            let next = store.next_offset(&self.cfg.topic, p)?.unwrap_or(0);
            if self.outstanding.get(&p).is_some_and(|o| next <= *o) {
                continue;
            }
            self.outstanding.remove(&p);
            let state = store.backfill(p)?.unwrap_or_default();
            let start =
                if self.checked.contains(&p) { Vec::new() } else { self.d.audiences.changed_since(&state.defined) };
            if start.is_empty() && state.pending.is_empty() {
                self.checked.insert(p);
                continue;
            }
            let offset = self.write(p, count, start).await?;
            debug!(partition = p, offset, evaluated = state.evaluated, "audience backfill record written");
            self.checked.insert(p);
            self.outstanding.insert(p, offset);
        }
        Ok(())
    }

    /// Writes one record to partition `p` of `count`: its offset.
    async fn write(&self, p: u32, count: u32, audiences: Vec<String>) -> Result<i64> {
        let id = format!("audience-backfill-{p}-{:032x}", rand::random::<u128>());
        let payload = proto::event::Payload::AudienceBackfill(proto::AudienceBackfill {
            audiences,
            members: self.cfg.audience_backfill_members,
        });
        let (key, event) = partition_event(p, count, id, now_ms(), payload);
        self.d.producer.append_internal(p, key.as_bytes(), &event.encode_to_vec(), &self.d.signer).await
    }
}
