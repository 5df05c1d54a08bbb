//! RocksDB storage for omnifold: member aggregates, points ledgers, command
//! verdicts, dedupe markers and the consumed offsets, written together in one
//! atomic batch per partition.
//!
//! Architecture invariant: no RocksDB type appears in this crate's public API,
//! and this crate knows nothing about Kafka or gRPC. Offsets are plain
//! `(topic, partition, next offset)` numbers to it.

mod config;
mod keys;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBufferManager,
    WriteOptions,
};

pub use config::StoreConfig;
use omnifold_core::{LedgerEntry, Member, Verdict};

const CF_MEMBERS: &str = "members";
const CF_DEDUPE: &str = "dedupe";
const CF_META: &str = "meta";
const CF_LEDGER: &str = "ledger";
const CF_VERDICTS: &str = "verdicts";
const CF_INDEX: &str = "index";
const CF_HISTORY: &str = "history";
const ALL_CFS: [&str; 7] = [CF_MEMBERS, CF_DEDUPE, CF_META, CF_LEDGER, CF_VERDICTS, CF_INDEX, CF_HISTORY];

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb: {0}")]
    Db(String),
    #[error(transparent)]
    Corrupt(#[from] omnifold_core::Error),
    #[error("invalid store config: {0}")]
    Config(String),
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Db(e.into_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An open store. Cheap to share behind an `Arc`; reads and commits may run
/// from several threads.
pub struct Store {
    db: DB,
    keep_history: bool,
    history_days: u32,
    write_opts: WriteOptions,
    _cache: Cache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens (creating if needed) the store at `config.path`.
    pub fn open(config: &StoreConfig) -> Result<Arc<Store>> {
        config.validate()?;
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        // Memtables are charged to the same cache, so block cache + memtables
        // together stay within `block_cache_bytes`.
        let wbm =
            WriteBufferManager::new_write_buffer_manager_with_cache(config.write_buffer_bytes, true, cache.clone());

        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);

        let cf_opts = |name: &str| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            o.set_write_buffer_size(config.write_buffer_bytes / 4);
            if name == CF_DEDUPE {
                let retention = i64::try_from(Duration::from_secs(config.dedupe_retention_hours * 3600).as_millis())
                    .unwrap_or(i64::MAX);
                o.set_compaction_filter("dedupe-retention", move |_level: u32, _key: &[u8], value: &[u8]| {
                    match keys::decode_i64(value) {
                        Some(marked) if marked.saturating_add(retention) < now_millis() => Decision::Remove,
                        _ => Decision::Keep,
                    }
                });
            }
            ColumnFamilyDescriptor::new(name, o)
        };
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_write_buffer_manager(&wbm);
        db_opts.increase_parallelism(2);
        db_opts.set_max_open_files(config.max_open_files);
        db_opts.set_keep_log_file_num(3);
        let db = if config.read_only {
            DB::open_cf_descriptors_read_only(&db_opts, &config.path, ALL_CFS.map(cf_opts), false)?
        } else {
            DB::open_cf_descriptors(&db_opts, &config.path, ALL_CFS.map(cf_opts))?
        };
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(config.sync_writes && !config.bulk_load);
        write_opts.disable_wal(config.bulk_load);
        Ok(Arc::new(Store {
            db,
            keep_history: config.keep_history,
            history_days: config.history_days,
            write_opts,
            _cache: cache,
        }))
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// The next offset to consume for a partition, if the store has one.
    pub fn next_offset(&self, topic: &str, partition: u32) -> Result<Option<i64>> {
        let v = self.db.get_cf(self.cf(CF_META), keys::offset(topic, partition))?;
        Ok(v.and_then(|v| keys::decode_i64(&v)))
    }

    /// The partition count the store was built for, per topic.
    pub fn partition_count(&self, topic: &str) -> Result<Option<u32>> {
        let v = self.db.get_cf(self.cf(CF_META), keys::partitions(topic))?;
        Ok(v.and_then(|v| keys::decode_i64(&v)).map(|n| n as u32))
    }

    pub fn set_partition_count(&self, topic: &str, count: u32) -> Result<()> {
        self.db.put_cf_opt(
            self.cf(CF_META),
            keys::partitions(topic),
            i64::from(count).to_be_bytes(),
            &self.write_opts,
        )?;
        Ok(())
    }

    /// One member's aggregate.
    pub fn member(&self, partition: u32, key: &str) -> Result<Option<Member>> {
        match self.db.get_pinned_cf(self.cf(CF_MEMBERS), keys::scoped(partition, key))? {
            Some(bytes) => Ok(Some(Member::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Several members of one partition in one round of reads.
    pub fn members(&self, partition: u32, keys: &[&str]) -> Result<Vec<Option<Member>>> {
        let mut ks: Vec<Vec<u8>> = keys.iter().map(|k| keys::scoped(partition, k)).collect();
        let order: Vec<usize> = {
            let mut idx: Vec<usize> = (0..ks.len()).collect();
            idx.sort_by(|a, b| ks[*a].cmp(&ks[*b]));
            idx
        };
        let sorted: Vec<Vec<u8>> = order.iter().map(|i| std::mem::take(&mut ks[*i])).collect();
        let got = self.db.batched_multi_get_cf(self.cf(CF_MEMBERS), &sorted, true);
        let mut out: Vec<Option<Member>> = vec![None; keys.len()];
        for (slot, r) in order.into_iter().zip(got) {
            if let Some(bytes) = r? {
                out[slot] = Some(Member::decode(&bytes)?);
            }
        }
        Ok(out)
    }

    /// A member's ledger, newest first, starting below `before` (a sequence
    /// number) when given.
    pub fn ledger(
        &self,
        partition: u32,
        member: &str,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<LedgerEntry>> + '_ {
        let prefix = keys::member_prefix(partition, member);
        let start = match before {
            Some(0) => None,
            Some(seq) => Some(keys::sequenced(partition, member, seq - 1)),
            None => Some(keys::sequenced(partition, member, u64::MAX)),
        };
        start
            .into_iter()
            .flat_map(move |start| {
                self.db.iterator_cf(self.cf(CF_LEDGER), IteratorMode::From(&start, Direction::Reverse))
            })
            .take_while(move |r| {
                r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix) && k.len() == prefix.len() + 8)
            })
            .map(|r| {
                let (_, v) = r?;
                Ok(LedgerEntry::decode(&v)?)
            })
    }

    /// Whether events are kept per member (`keep_history`).
    pub fn keeps_history(&self) -> bool {
        self.keep_history
    }

    /// Days of history kept per member (0: all).
    pub fn history_days(&self) -> u32 {
        self.history_days
    }

    /// The snapshot older events of a member were folded into, if any.
    pub fn history_base(&self, partition: u32, member: &str) -> Result<Option<Member>> {
        match self.db.get_pinned_cf(self.cf(CF_HISTORY), keys::sequenced(partition, member, 0))? {
            Some(v) => Ok(Some(Member::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// A member's kept events, oldest first: `(sequence, event time, record)`.
    pub fn history(&self, partition: u32, member: &str) -> impl Iterator<Item = Result<(u64, i64, Vec<u8>)>> + '_ {
        let prefix = keys::member_prefix(partition, member);
        let start = keys::sequenced(partition, member, 1);
        self.db
            .iterator_cf(self.cf(CF_HISTORY), IteratorMode::From(&start, Direction::Forward))
            .take_while(move |r| {
                r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix) && k.len() == prefix.len() + 8)
            })
            .map(|r| {
                let (k, v) = r?;
                let seq = keys::decode_i64(&k[k.len() - 8..]).unwrap_or(0) as u64;
                let (at, record) = v.split_first_chunk::<8>().ok_or_else(|| {
                    Error::Corrupt(omnifold_core::Error::Corrupt("history entry shorter than its time".into()))
                })?;
                Ok((seq, i64::from_be_bytes(*at), record.to_vec()))
            })
    }

    /// The verdicts recorded for `(member, request id)` pairs of one partition.
    pub fn verdicts(&self, partition: u32, requests: &[(&str, &str)]) -> Result<Vec<Option<Verdict>>> {
        let ks: Vec<Vec<u8>> = requests.iter().map(|(m, r)| keys::verdict(partition, m, r)).collect();
        self.db
            .batched_multi_get_cf(self.cf(CF_VERDICTS), &ks, false)
            .into_iter()
            .map(|r| Ok(r?.map(|v| Verdict::decode(&v)).transpose()?))
            .collect()
    }

    /// The identity index: the member a key (an identifier's `TYPE:value`,
    /// an anonymous id, a merged member id) routes to, as replicated from
    /// every partition's fold.
    pub fn index(&self, key: &str) -> Result<Option<String>> {
        let v = self.db.get_pinned_cf(self.cf(CF_INDEX), key.as_bytes())?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// For each event id, whether it was already applied in this partition.
    pub fn seen(&self, partition: u32, event_ids: &[&str]) -> Result<Vec<bool>> {
        let ks: Vec<Vec<u8>> = event_ids.iter().map(|id| keys::scoped(partition, id)).collect();
        let got = self.db.batched_multi_get_cf(self.cf(CF_DEDUPE), &ks, false);
        got.into_iter().map(|r| Ok(r?.is_some())).collect()
    }

    /// Starts a batch for one partition of one topic.
    pub fn batch(&self, topic: &str, partition: u32) -> Batch {
        Batch { inner: rocksdb::WriteBatch::default(), topic: topic.to_owned(), partition, marked_at: now_millis() }
    }

    /// Writes a batch atomically: state, dedupe markers and offset together.
    pub fn commit(&self, batch: Batch) -> Result<()> {
        self.db.write_opt(batch.inner, &self.write_opts)?;
        Ok(())
    }

    /// All members of a partition, in key order.
    pub fn scan_members(&self, partition: u32) -> impl Iterator<Item = Result<Member>> + '_ {
        let prefix = partition.to_be_bytes();
        self.db
            .prefix_iterator_cf(self.cf(CF_MEMBERS), prefix)
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(|r| {
                let (_, v) = r?;
                Ok(Member::decode(&v)?)
            })
    }

    /// Flushes memtables to disk (used at shutdown so restarts replay less WAL).
    pub fn flush(&self) -> Result<()> {
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

/// The store an instance currently serves and folds into, replaceable while
/// it runs (a switch to a rebuilt store).
#[derive(Debug)]
pub struct StoreHandle(std::sync::RwLock<Arc<Store>>);

impl StoreHandle {
    pub fn new(store: Arc<Store>) -> Arc<StoreHandle> {
        Arc::new(StoreHandle(std::sync::RwLock::new(store)))
    }

    /// The current store.
    pub fn get(&self) -> Arc<Store> {
        self.0.read().expect("store handle lock").clone()
    }

    /// Makes `store` the current one; readers holding the old one finish with it.
    pub fn set(&self, store: Arc<Store>) {
        *self.0.write().expect("store handle lock") = store;
    }
}

/// A request to fold into and serve from another store (rebuilt by a
/// replay) from now on, answered with each partition's next offset once the
/// switch is done.
pub struct StoreSwitch {
    pub to: Arc<Store>,
    pub done: std::sync::mpsc::Sender<std::result::Result<std::collections::BTreeMap<u32, i64>, String>>,
}

/// Changes to one partition that become visible together, or not at all.
pub struct Batch {
    inner: rocksdb::WriteBatch,
    topic: String,
    partition: u32,
    marked_at: i64,
}

impl Batch {
    pub fn put_member(&mut self, store: &Store, member: &Member) {
        self.inner.put_cf(store.cf(CF_MEMBERS), keys::scoped(self.partition, &member.key), member.encode());
    }

    pub fn put_ledger(&mut self, store: &Store, member: &str, entry: &LedgerEntry) {
        self.inner.put_cf(store.cf(CF_LEDGER), keys::sequenced(self.partition, member, entry.seq), entry.encode());
    }

    pub fn put_verdict(&mut self, store: &Store, member: &str, verdict: &Verdict) {
        self.inner.put_cf(
            store.cf(CF_VERDICTS),
            keys::verdict(self.partition, member, &verdict.request_id),
            verdict.encode(),
        );
    }

    /// Keeps an event applied to `member` at its sequence number (a no-op
    /// when the store keeps no history).
    pub fn put_history(&mut self, store: &Store, member: &str, seq: u64, at: i64, record: &[u8]) {
        if !store.keep_history {
            return;
        }
        let mut v = Vec::with_capacity(8 + record.len());
        v.extend_from_slice(&at.to_be_bytes());
        v.extend_from_slice(record);
        self.inner.put_cf(store.cf(CF_HISTORY), keys::sequenced(self.partition, member, seq), v);
    }

    /// Replaces kept events `seqs` of `member` by the snapshot they fold into.
    pub fn prune_history(&mut self, store: &Store, member: &str, seqs: &[u64], base: &Member) {
        let cf = store.cf(CF_HISTORY);
        for seq in seqs {
            self.inner.delete_cf(cf, keys::sequenced(self.partition, member, *seq));
        }
        self.inner.put_cf(cf, keys::sequenced(self.partition, member, 0), base.encode());
    }

    /// Sets (or with `None` removes) a key's entry in the identity index.
    pub fn put_index(&mut self, store: &Store, key: &str, member: Option<&str>) {
        match member {
            Some(m) => self.inner.put_cf(store.cf(CF_INDEX), key.as_bytes(), m.as_bytes()),
            None => self.inner.delete_cf(store.cf(CF_INDEX), key.as_bytes()),
        }
    }

    pub fn mark_seen(&mut self, store: &Store, event_id: &str) {
        self.inner.put_cf(store.cf(CF_DEDUPE), keys::scoped(self.partition, event_id), self.marked_at.to_be_bytes());
    }

    /// Records that every offset before `next` has been applied.
    pub fn set_next_offset(&mut self, store: &Store, next: i64) {
        self.inner.put_cf(store.cf(CF_META), keys::offset(&self.topic, self.partition), next.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use omnifold_core::ProfileKind;

    fn open(dir: &Path) -> Arc<Store> {
        Store::open(&StoreConfig { path: dir.to_owned(), ..StoreConfig::default() }).unwrap()
    }

    #[test]
    fn batch_commits_state_markers_and_offset_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert_eq!(store.next_offset("events", 3).unwrap(), None);
        let mut m = Member::new("m-1", ProfileKind::KnownMember);
        m.browse.product_views = 7;
        let mut b = store.batch("events", 3);
        b.put_member(&store, &m);
        b.mark_seen(&store, "e-1");
        b.set_next_offset(&store, 42);
        // Nothing is visible before the commit.
        assert_eq!(store.member(3, "m-1").unwrap(), None);
        store.commit(b).unwrap();
        assert_eq!(store.member(3, "m-1").unwrap(), Some(m.clone()));
        assert_eq!(store.member(2, "m-1").unwrap(), None, "partitions are separate key spaces");
        assert_eq!(store.seen(3, &["e-1", "e-2"]).unwrap(), vec![true, false]);
        assert_eq!(store.next_offset("events", 3).unwrap(), Some(42));
        let got = store.members(3, &["zz", "m-1"]).unwrap();
        assert_eq!(got, vec![None, Some(m)]);
    }

    #[test]
    fn reopened_store_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let mut b = store.batch("events", 0);
            b.put_member(&store, &Member::new("a", ProfileKind::Anonymous));
            b.set_next_offset(&store, 9);
            store.commit(b).unwrap();
            store.set_partition_count("events", 4).unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.next_offset("events", 0).unwrap(), Some(9));
        assert_eq!(store.partition_count("events").unwrap(), Some(4));
        assert_eq!(store.scan_members(0).map(|m| m.unwrap().key).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(store.scan_members(1).count(), 0);
    }
}
