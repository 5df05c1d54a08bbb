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

use omnifold_core::audience::{Audiences, Backfill};
use omnifold_core::partition::partition_event;
use omnifold_proto::v1 as proto;
use omnifold_store::{Store, StoreHandle};

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
                if self.checked.contains(&p) { Vec::new() } else { changed(&store, p, &self.d.audiences, &state)? };
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

/// The audiences to start a pass for on partition `p`: those defined,
/// changed or removed since its last pass (`state`), among its audiences
/// (the `configured` ones and those defined through `AdminService`, whose
/// fingerprints the pass recorded too).
fn changed(store: &Store, p: u32, configured: &Arc<Audiences>, state: &Backfill) -> Result<Vec<String>> {
    Ok(store.audiences(p, configured)?.changed_since(&state.defined))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use omnifold_core::FoldConfig;
    use omnifold_core::audience::AudienceConfig;
    use omnifold_store::StoreConfig;

    use super::*;
    use crate::{Processor, Record};

    /// A partition that folded an API definition and its pass has nothing
    /// to start again at the next start: only a change does.
    #[test]
    fn a_restart_starts_no_pass_for_audiences_defined_through_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig { path: dir.path().into(), ..Default::default() }).unwrap();
        let config = |rule: &str| AudienceConfig { rule: rule.into(), ..Default::default() };
        let configured =
            Arc::new(Audiences::compile(&BTreeMap::from([("a".to_owned(), config("orders > 0"))])).unwrap());
        let signer = Signer::new("a-test-secret-of-at-least-32-characters", &[]);
        let fold = Arc::new(FoldConfig::default().validate().unwrap());
        let processor =
            Processor::new(store.clone(), fold, "t", 65536, signer.clone()).with_audiences(configured.clone());
        let payload = proto::event::Payload::AudienceDefined(proto::AudienceDefined {
            name: "b".into(),
            rule: "orders > 1".into(),
            version: 1,
            ..Default::default()
        });
        let (key, event) = partition_event(0, 1, "d-1".into(), omnifold_core::testing::BASE, payload);
        let value = event.encode_to_vec();
        let sig = signer.sign(Some(key.as_bytes()), None, &value);
        let records =
            [Record { signature: Some(sig.as_bytes()), ..Record::new(0, Some(key.as_bytes()), Some(&value)) }];
        processor.commit(processor.process(0, &records).unwrap()).unwrap();
        let state = store.backfill(0).unwrap().unwrap();
        assert_eq!(state.defined.keys().collect::<Vec<_>>(), ["a", "b"], "the pass recorded both");
        assert!(changed(&store, 0, &configured, &state).unwrap().is_empty());
        // Changed in the configuration: that one starts again.
        let changed_config =
            Arc::new(Audiences::compile(&BTreeMap::from([("a".to_owned(), config("orders > 5"))])).unwrap());
        assert_eq!(changed(&store, 0, &changed_config, &state).unwrap(), ["a"]);
    }
}
