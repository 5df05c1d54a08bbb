//! A view of the store as it stood at one instant, held across requests
//! (the pages of one audience listing): a RocksDB snapshot together with
//! the store it belongs to, so the store outlives it.
//!
//! Holding one keeps RocksDB from dropping what was overwritten since, so
//! holders keep few and let go soon (docs/audiences.md, "Listing").

use std::sync::Arc;

use rocksdb::{DB, ReadOptions, SnapshotWithThreadMode};

use crate::{CF_AUDIENCE_MEMBERS, Result, Store, keys};

type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    struct Held {
        owner: Arc<Store>,
        #[covariant]
        dependent: Snapshot,
    }
);

/// The store frozen at one instant ([`Store::freeze`]).
pub struct Frozen(Held);

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen").field("store", self.0.borrow_owner()).finish()
    }
}

impl Store {
    /// The store as it stands now, held until the [`Frozen`] is dropped.
    pub fn freeze(self: &Arc<Self>) -> Frozen {
        Frozen(Held::new(self.clone(), |s| s.db.snapshot()))
    }
}

impl Frozen {
    /// The store this view is of.
    pub fn store(&self) -> &Arc<Store> {
        self.0.borrow_owner()
    }

    /// Up to `limit` members of `audience` in `partition` after the member
    /// `after` (from the first with `None`), in member order.
    pub fn audience_members(
        &self,
        partition: u32,
        audience: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let prefix = keys::audience_prefix(partition, audience);
        let mut it = self.iter(&prefix);
        match after {
            Some(a) => {
                let from = keys::audience_member(partition, audience, a);
                it.seek(&from);
                if it.key() == Some(&from[..]) {
                    it.next();
                }
            }
            None => it.seek(&prefix),
        }
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            if out.len() == limit {
                break;
            }
            let member = k.get(prefix.len()..).and_then(|m| std::str::from_utf8(m).ok());
            let corrupt = || omnifold_core::Error::Corrupt("an audience member key is not UTF-8".into());
            out.push(member.ok_or_else(corrupt)?.to_owned());
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// How many members `audience` holds in `partition`: its keys counted
    /// (a listing's size agrees with its pages).
    pub fn audience_size(&self, partition: u32, audience: &str) -> Result<u64> {
        let prefix = keys::audience_prefix(partition, audience);
        let mut it = self.iter(&prefix);
        it.seek(&prefix);
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// The audience backfill of `partition` as it stood (none: it never had one).
    pub fn backfill(&self, partition: u32) -> Result<Option<omnifold_core::audience::Backfill>> {
        let store = self.0.borrow_owner();
        let v = self.0.borrow_dependent().get_cf(store.cf(CF_AUDIENCE_MEMBERS), keys::backfill(partition))?;
        Ok(v.map(|v| omnifold_core::audience::Backfill::decode(&v)).transpose()?)
    }

    fn iter(&self, prefix: &[u8]) -> rocksdb::DBRawIteratorWithThreadMode<'_, DB> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::prefix_end(prefix));
        let store = self.0.borrow_owner();
        self.0.borrow_dependent().raw_iterator_cf_opt(store.cf(CF_AUDIENCE_MEMBERS), opts)
    }
}
