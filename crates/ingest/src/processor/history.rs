//! Kept history beyond `store.history_days`: the older events of a member
//! are folded into a base snapshot and dropped.

use omnifold_core::fold::{self, Position};
use omnifold_core::{Member, decode_event};

use super::batch::Run;
use crate::Result;

impl Run<'_> {
    /// Folds the member's committed history before `horizon` into its base
    /// snapshot and drops those events.
    pub(super) fn prune_history(&mut self, key: &str, horizon: i64) -> Result<()> {
        let store = self.store();
        let (partition, fold_cfg) = (self.partition, &self.p.fold);
        let entries: Vec<(u64, i64, Vec<u8>)> = store.history(partition, key).collect::<Result<_, _>>()?;
        let (old, rest): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, at, _)| *at < horizon);
        let appended: Vec<i64> = self.batch_history.get(key).into_iter().flatten().map(|(at, _)| *at).collect();
        let Some(m) = self.members.get_mut(key) else {
            return Ok(());
        };
        if !old.is_empty() {
            let mut base = store.history_base(partition, key)?.unwrap_or_else(|| Member::new(key, m.kind));
            for (_, _, record) in &old {
                if let Ok(e) = decode_event(record, usize::MAX, &fold_cfg.limits) {
                    // What the fold refuses or would write is beside the point here.
                    let _ = fold::apply(&mut base, &e, Position { partition, offset: 0 }, fold_cfg);
                }
            }
            let seqs: Vec<u64> = old.iter().map(|(seq, _, _)| *seq).collect();
            self.batch.prune_history(store, key, &seqs, &base);
            m.history.pruned += old.len() as u64;
            m.history.pruned_before = m.history.pruned_before.max(horizon);
        }
        m.history.oldest_kept = rest.iter().map(|(_, at, _)| *at).chain(appended).min();
        Ok(())
    }
}
