//! RocksDB storage for omnifold: member aggregates, points ledgers, command
//! verdicts, dedupe markers and the consumed offsets, written together in one
//! atomic batch per partition.
//!
//! Architecture invariant: no RocksDB type appears in this crate's public API,
//! and this crate knows nothing about Kafka or gRPC. Offsets are plain
//! `(topic, partition, next offset)` numbers to it.

mod books;
mod config;
mod dedupe;
mod format;
mod frozen;
mod keys;
mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    WriteBufferManager, WriteOptions,
};

pub use config::StoreConfig;
pub use format::CURRENT as FORMAT_VERSION;
pub use frozen::Frozen;
use omnifold_core::audience::{AudienceState, Audiences, Definition};
use omnifold_core::member::{Counts, Lineage};
use omnifold_core::{LedgerEntry, Member, Verdict};
pub use snapshot::{Chunk, PartitionSnapshot};

const CF_MEMBERS: &str = "members";
const CF_DEDUPE: &str = "dedupe";
const CF_META: &str = "meta";
const CF_LEDGER: &str = "ledger";
const CF_VERDICTS: &str = "verdicts";
const CF_INDEX: &str = "index";
const CF_HISTORY: &str = "history";
const CF_JOINS: &str = "joins";
const CF_BOOKS: &str = "books";
/// Each member's audience memberships and timer (docs/audiences.md).
const CF_AUDIENCES: &str = "audiences";
/// Each partition's member timers, in instant order.
const CF_TIMERS: &str = "timers";
/// Each audience's members, per partition (`keys::audience_member`).
const CF_AUDIENCE_MEMBERS: &str = "audience_members";
const ALL_CFS: [&str; 12] = [
    CF_MEMBERS,
    CF_DEDUPE,
    CF_META,
    CF_LEDGER,
    CF_VERDICTS,
    CF_INDEX,
    CF_HISTORY,
    CF_JOINS,
    CF_BOOKS,
    CF_AUDIENCES,
    CF_TIMERS,
    CF_AUDIENCE_MEMBERS,
];

/// Members read per snapshot by `scan_members`.
const SCAN_CHUNK: usize = 1_000;

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb: {0}")]
    Db(String),
    #[error(transparent)]
    Corrupt(#[from] omnifold_core::Error),
    #[error("invalid store config: {0}")]
    Config(String),
    #[error("{0}")]
    Format(String),
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Db(e.into_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An open store. Cheap to share behind an `Arc`; reads and commits may run
/// from several threads.
/// RocksDB's figures for monitoring ([`Store::figures`]), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub block_cache_usage_bytes: u64,
    pub pending_compaction_bytes: u64,
    pub live_data_bytes: u64,
    pub sst_files_bytes: u64,
    pub memtable_bytes: u64,
}

pub struct Store {
    db: DB,
    /// Opened read-only (dump, verify, or while a reopen is under way).
    read_only: bool,
    /// Each partition's dedupe horizon, shared with the compaction filter.
    horizons: dedupe::Horizons,
    /// `dedupe_retention_hours` in milliseconds.
    retention_ms: i64,
    keep_history: bool,
    history_days: u32,
    write_opts: WriteOptions,
    /// The bound topic's partition count: once bound it never changes, so
    /// the fold and every read take it from here instead of RocksDB.
    bound: std::sync::OnceLock<(String, u32)>,
    _cache: Cache,
    /// Each partition's audiences as last read ([`Store::audiences`]),
    /// with the configured ones they were made with.
    audiences: std::sync::Mutex<std::collections::HashMap<u32, PartitionAudiences>>,
}

/// A partition's audiences, and the configured ones they were made with.
type PartitionAudiences = (Arc<Audiences>, Arc<Audiences>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
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

        let horizons = dedupe::Horizons::default();
        let retention_ms =
            i64::try_from(Duration::from_secs(config.dedupe_retention_hours.saturating_mul(3600)).as_millis())
                .unwrap_or(i64::MAX);
        let cf_opts = |name: &str| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            o.set_write_buffer_size(config.write_buffer_bytes / 4);
            if name == CF_DEDUPE {
                o.set_compaction_filter("dedupe-horizon", horizons.filter());
            }
            // Point look-ups that mostly find nothing (an event id not seen
            // yet, a request not decided yet, a member id that routes
            // nowhere: every routed request asks the index): a whole-key
            // bloom filter in the memtable answers most of them without a
            // skip-list search.
            if name == CF_DEDUPE || name == CF_VERDICTS || name == CF_INDEX {
                o.set_memtable_prefix_bloom_ratio(0.1);
                o.set_memtable_whole_key_filtering(true);
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
        // Every column family on disk is opened, also ones a newer omnifold
        // added, so the format check below can say what is wrong.
        let mut names: Vec<String> = ALL_CFS.iter().map(|s| (*s).to_owned()).collect();
        if let Ok(existing) = DB::list_cf(&db_opts, &config.path) {
            names.extend(existing.into_iter().filter(|n| n != "default" && !ALL_CFS.contains(&n.as_str())));
        }
        let db = if config.read_only {
            let existing = DB::list_cf(&db_opts, &config.path)?;
            let descriptors = names.iter().filter(|n| existing.contains(n)).map(|n| cf_opts(n));
            DB::open_cf_descriptors_read_only(&db_opts, &config.path, descriptors, false)?
        } else {
            DB::open_cf_descriptors(&db_opts, &config.path, names.iter().map(|n| cf_opts(n)))?
        };
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(config.sync_writes && !config.bulk_load);
        write_opts.disable_wal(config.bulk_load);
        let store = Store {
            db,
            read_only: config.read_only,
            horizons,
            retention_ms,
            keep_history: config.keep_history,
            history_days: config.history_days,
            write_opts,
            bound: std::sync::OnceLock::new(),
            _cache: cache,
            audiences: Default::default(),
        };
        format::check_and_upgrade(&store, &config.path, config.read_only)?;
        if !config.read_only {
            store.drop_unfinished_restores()?;
        }
        store.load_horizons()?;
        Ok(Arc::new(store))
    }

    /// Sets every partition's dedupe horizon from its stored watermark.
    fn load_horizons(&self) -> Result<()> {
        let iter = self.db.prefix_iterator_cf(self.cf(CF_META), keys::WATERMARK_PREFIX);
        for kv in iter {
            let (k, v) = kv?;
            if !k.starts_with(keys::WATERMARK_PREFIX) {
                break;
            }
            let p = k.len().checked_sub(4).and_then(|i| keys::partition_of(&k[i..]));
            if let (Some(p), Some(w)) = (p, keys::decode_i64(&v)) {
                self.horizons.advance(p, w.saturating_sub(self.retention_ms));
            }
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every name in ALL_CFS is created at open (format::check_and_upgrade
        // refuses a read-only store that lacks one).
        #[allow(clippy::expect_used)]
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// The next offset to consume for a partition, if the store has one.
    pub fn next_offset(&self, topic: &str, partition: u32) -> Result<Option<i64>> {
        let v = self.db.get_cf(self.cf(CF_META), keys::offset(topic, partition))?;
        Ok(v.and_then(|v| keys::decode_i64(&v)))
    }

    /// The partition count the store was built for, per topic.
    pub fn partition_count(&self, topic: &str) -> Result<Option<u32>> {
        if let Some((t, n)) = self.bound.get()
            && t == topic
        {
            return Ok(Some(*n));
        }
        let v = self.db.get_cf(self.cf(CF_META), keys::partitions(topic))?;
        let count = v.and_then(|v| keys::decode_i64(&v)).map(|n| n as u32);
        if let Some(n) = count {
            let _ = self.bound.set((topic.to_owned(), n));
        }
        Ok(count)
    }

    /// The events topics the store holds state for (normally one).
    pub fn topics(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_META), keys::PARTITIONS_PREFIX) {
            let (k, _) = kv?;
            let Some(topic) = k.strip_prefix(keys::PARTITIONS_PREFIX) else {
                break;
            };
            out.push(String::from_utf8_lossy(topic).into_owned());
        }
        Ok(out)
    }

    /// Binds the store to `topic` with `count` partitions, the first time;
    /// afterwards refuses another count or another topic. Member keys are
    /// scoped by partition, so a store cannot follow a repartitioned topic.
    pub fn bind_partitions(&self, topic: &str, count: u32) -> Result<()> {
        match self.partition_count(topic)? {
            Some(n) if n == count => return Ok(()),
            Some(n) => {
                return Err(Error::Format(format!(
                    "the store at {} was built for {n} partitions of topic {topic}, which has {count} now; every \
                     member lives on the partition its key hashes to, so this store cannot follow the change: \
                     rebuild it from a topic with the new count (docs/operations.md, \"Changing the partition \
                     count\")",
                    self.db.path().display()
                )));
            }
            None => {}
        }
        if let Some(other) = self.topics()?.into_iter().find(|t| t != topic) {
            return Err(Error::Format(format!(
                "the store at {} holds the state of topic {other}, not {topic}: point kafka.topic at {other}, or \
                 use another data directory for {topic}",
                self.db.path().display()
            )));
        }
        self.db.put_cf_opt(
            self.cf(CF_META),
            keys::partitions(topic),
            i64::from(count).to_be_bytes(),
            &self.write_opts,
        )?;
        Ok(())
    }

    /// The name of the instance that serves from this store: `make` the
    /// first time (it is then kept), so an instance keeps its name across
    /// restarts on the same disk and recognises its own ownership claims.
    pub fn instance_name(&self, make: impl FnOnce() -> String) -> Result<String> {
        if let Some(v) = self.db.get_cf(self.cf(CF_META), keys::INSTANCE_NAME)?
            && let Ok(name) = String::from_utf8(v)
            && !name.is_empty()
        {
            return Ok(name);
        }
        let name = make();
        self.db.put_cf_opt(self.cf(CF_META), keys::INSTANCE_NAME, name.as_bytes(), &self.write_opts)?;
        Ok(name)
    }

    /// One member's aggregate, with its books, as of one instant.
    pub fn member(&self, partition: u32, key: &str) -> Result<Option<Member>> {
        self.member_with(partition, key, books::Which::All)
    }

    /// One member's record, dated spend and open lots, without its kept
    /// orders, as of one instant: for balances, tiers and windows, which
    /// need no more.
    pub fn member_without_orders(&self, partition: u32, key: &str) -> Result<Option<Member>> {
        self.member_with(partition, key, books::Which::SpendAndLots)
    }

    /// One member's record and the books `which` names, from one snapshot.
    fn member_with(&self, partition: u32, key: &str, which: books::Which) -> Result<Option<Member>> {
        let snapshot = self.db.snapshot();
        let Some(bytes) = snapshot.get_pinned_cf(self.cf(CF_MEMBERS), keys::scoped(partition, key))? else {
            return Ok(None);
        };
        Ok(Some(books::member(&mut books::cursor(self, &snapshot), partition, &bytes, which)?))
    }

    /// One member's record without its books (kept orders, open lots) and
    /// dated spend: for reads that return nothing drawn from them, so they
    /// read one key. Those parts are empty.
    pub fn member_without_books(&self, partition: u32, key: &str) -> Result<Option<Member>> {
        match self.db.get_pinned_cf(self.cf(CF_MEMBERS), keys::scoped(partition, key))? {
            Some(bytes) => Ok(Some(Member::decode_stored(&bytes)?.0)),
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
        let snapshot = self.db.snapshot();
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snapshot);
        let got = self.db.batched_multi_get_cf_opt(self.cf(CF_MEMBERS), &sorted, true, &opts);
        let mut found: Vec<(usize, Member, Counts)> = Vec::with_capacity(keys.len());
        for (slot, r) in order.into_iter().zip(got) {
            if let Some(bytes) = r? {
                let (member, counts) = Member::decode_stored(&bytes)?;
                found.push((slot, member, counts));
            }
        }
        // The books in key order, through one cursor.
        found.sort_by(|a, b| (a.1.key.len(), &a.1.key).cmp(&(b.1.key.len(), &b.1.key)));
        let mut cursor = books::cursor(self, &snapshot);
        let mut out: Vec<Option<Member>> = vec![None; keys.len()];
        for (slot, mut member, counts) in found {
            books::load(&mut cursor, partition, &mut member, counts, books::Which::All)?;
            out[slot] = Some(member);
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

    /// The store's format version (`None` for a store of omnifold 0.1).
    pub fn format_version(&self) -> Result<Option<u32>> {
        format::read(self)
    }

    /// Stamps another format version (tests of what a newer omnifold wrote).
    #[doc(hidden)]
    pub fn set_format_version_for_tests(&self, version: u32) -> Result<()> {
        format::write(self, version)
    }

    /// Every verdict recorded for a member, by request id.
    pub fn member_verdicts(&self, partition: u32, member: &str) -> Result<Vec<Verdict>> {
        let prefix = keys::member_prefix(partition, member);
        let mut out = Vec::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_VERDICTS), &prefix) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(Verdict::decode(&v)?);
        }
        Ok(out)
    }

    /// The audience states of `members` of one partition (none: never
    /// evaluated).
    pub fn audience_states(&self, partition: u32, members: &[&str]) -> Result<Vec<Option<AudienceState>>> {
        let ks: Vec<Vec<u8>> = members.iter().map(|m| keys::scoped(partition, m)).collect();
        self.db
            .batched_multi_get_cf(self.cf(CF_AUDIENCES), &ks, false)
            .into_iter()
            .map(|r| Ok(r?.map(|v| AudienceState::decode(&v)).transpose()?))
            .collect()
    }

    /// The audience backfill of `partition` (none: it never had one).
    pub fn backfill(&self, partition: u32) -> Result<Option<omnifold_core::audience::Backfill>> {
        let v = self.db.get_pinned_cf(self.cf(CF_AUDIENCE_MEMBERS), keys::backfill(partition))?;
        Ok(v.map(|v| omnifold_core::audience::Backfill::decode(&v)).transpose()?)
    }

    /// Up to `limit` members of `partition` after the member `after` (from
    /// the first with `None`), in key order, each whole; and whether more
    /// follow.
    pub fn members_after(&self, partition: u32, after: Option<&str>, limit: usize) -> Result<(Vec<Member>, bool)> {
        let from = after.map(|a| keys::scoped(partition, a));
        let (members, last) = self.scan_chunk_of(partition, from.as_deref(), limit)?;
        Ok((members, last.is_some()))
    }

    /// Up to `limit` timers of `partition` after `after` (from the first
    /// with `None`) and due at or before `until`, in instant order:
    /// `(instant, member)`.
    pub fn due_timers(
        &self,
        partition: u32,
        after: Option<(i64, &str)>,
        until: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::timer_prefix(partition, until.saturating_add(1)));
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_TIMERS), opts);
        match after {
            Some((at, member)) => {
                let from = keys::timer(partition, at, member);
                it.seek(&from);
                if it.key() == Some(&from[..]) {
                    it.next();
                }
            }
            None => it.seek(keys::timer_prefix(partition, i64::MIN)),
        }
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            if out.len() == limit {
                break;
            }
            let corrupt = || Error::Corrupt(omnifold_core::Error::Corrupt("a timer key is cut short".into()));
            out.push(keys::decode_timer(partition, k).ok_or_else(corrupt)?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The parts of a join kept for `member`, in order: `(join id, index,
    /// event time, data)`, for one join or (with `None`) all of them.
    pub fn join_parts(&self, partition: u32, member: &str, join_id: Option<&str>) -> Result<Vec<JoinPart>> {
        let prefix = match join_id {
            Some(j) => keys::join_prefix(partition, member, j),
            None => keys::member_prefix(partition, member),
        };
        let mut out = Vec::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_JOINS), &prefix) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let corrupt = || Error::Corrupt(omnifold_core::Error::Corrupt("a kept join part is cut short".into()));
            let (join_id, index) = keys::decode_join_part(partition, member, &k).ok_or_else(corrupt)?;
            let (at, data) = v.split_first_chunk::<8>().ok_or_else(corrupt)?;
            out.push(JoinPart { join_id, index, at: i64::from_be_bytes(*at), data: data.to_vec() });
        }
        Ok(out)
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

    /// For each event id, its dedupe marker in this partition, if one is
    /// stored: the marker time (see [`Store::watermark`]). Markers below the
    /// partition's horizon count for nothing, whether or not compaction
    /// has dropped them yet.
    pub fn markers(&self, partition: u32, event_ids: &[&str]) -> Result<Vec<Option<i64>>> {
        let ks: Vec<Vec<u8>> = event_ids.iter().map(|id| keys::scoped(partition, id)).collect();
        let got = self.db.batched_multi_get_cf(self.cf(CF_DEDUPE), &ks, false);
        got.into_iter().map(|r| Ok(r?.and_then(|v| keys::decode_i64(&v)))).collect()
    }

    /// The latest event time applied in a partition (its watermark), which
    /// the dedupe window is counted back from.
    pub fn watermark(&self, topic: &str, partition: u32) -> Result<Option<i64>> {
        let v = self.db.get_cf(self.cf(CF_META), keys::watermark(topic, partition))?;
        Ok(v.and_then(|v| keys::decode_i64(&v)))
    }

    /// How long, in event time behind the watermark, a marker counts.
    pub fn dedupe_retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// Dedupe markers physically stored for a partition, expired or not
    /// (for tests and operators watching compaction).
    pub fn stored_markers(&self, partition: u32) -> Result<u64> {
        let prefix = partition.to_be_bytes();
        let mut n = 0;
        for kv in self.db.prefix_iterator_cf(self.cf(CF_DEDUPE), prefix) {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Compacts every column family now (expired markers are dropped).
    pub fn compact(&self) {
        for cf in ALL_CFS {
            self.db.compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Starts a batch for one partition of one topic.
    pub fn batch(&self, topic: &str, partition: u32) -> Batch {
        Batch {
            inner: rocksdb::WriteBatch::default(),
            topic: topic.to_owned(),
            partition,
            watermark: None,
            audiences_changed: false,
        }
    }

    /// Writes a batch atomically: state, dedupe markers and offset together.
    pub fn commit(&self, batch: Batch) -> Result<()> {
        self.db.write_opt(batch.inner, &self.write_opts)?;
        if let Some(w) = batch.watermark {
            self.horizons.advance(batch.partition, w.saturating_sub(self.retention_ms));
        }
        if batch.audiences_changed {
            self.forget_audiences(batch.partition);
        }
        Ok(())
    }

    /// The audiences of `partition`: `configured`, and those defined
    /// through `AdminService` that the partition has folded.
    pub fn audiences(&self, partition: u32, configured: &Arc<Audiences>) -> Result<Arc<Audiences>> {
        let cache = || self.audiences.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((c, a)) = cache().get(&partition)
            && Arc::ptr_eq(c, configured)
        {
            return Ok(a.clone());
        }
        let all = Arc::new(Audiences::with_defined(configured, &self.definitions(partition)?));
        cache().insert(partition, (configured.clone(), all.clone()));
        Ok(all)
    }

    /// The audience definitions `partition` has folded, deleted ones too,
    /// in name order.
    pub fn definitions(&self, partition: u32) -> Result<Vec<Definition>> {
        let prefix = keys::definitions(partition);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_AUDIENCE_MEMBERS), opts);
        it.seek(&prefix);
        let mut out = Vec::new();
        while let Some(v) = it.value() {
            out.push(Definition::decode(v)?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Forgets the audiences read of `partition` (its definitions changed).
    pub(crate) fn forget_audiences(&self, partition: u32) {
        self.audiences.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&partition);
    }

    /// All members of a partition, in key order. Each chunk of members is
    /// read from one snapshot, so every member is whole and of one version.
    pub fn scan_members(&self, partition: u32) -> impl Iterator<Item = Result<Member>> + '_ {
        let mut after: Option<Vec<u8>> = None;
        let mut chunk = std::collections::VecDeque::new();
        let mut done = false;
        std::iter::from_fn(move || {
            if chunk.is_empty() && !done {
                match self.scan_chunk(partition, after.as_deref()) {
                    Ok((members, last)) => {
                        done = last.is_none();
                        after = last;
                        chunk.extend(members.into_iter().map(Ok));
                    }
                    Err(e) => {
                        done = true;
                        chunk.push_back(Err(e));
                    }
                }
            }
            chunk.pop_front()
        })
    }

    /// Up to `SCAN_CHUNK` members of a partition after the key `after`, and
    /// the last key read (`None` at the partition's end).
    fn scan_chunk(&self, partition: u32, after: Option<&[u8]>) -> Result<(Vec<Member>, Option<Vec<u8>>)> {
        self.scan_chunk_of(partition, after, SCAN_CHUNK)
    }

    /// [`Store::scan_chunk`] of up to `limit` members.
    fn scan_chunk_of(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Member>, Option<Vec<u8>>)> {
        let snapshot = self.db.snapshot();
        let start = partition.to_be_bytes();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::prefix_end(&start));
        let mut records = snapshot.raw_iterator_cf_opt(self.cf(CF_MEMBERS), opts);
        records.seek(after.unwrap_or(&start));
        if after.is_some() && records.key() == after {
            records.next();
        }
        let mut cursor = books::cursor(self, &snapshot);
        let (mut members, mut last) = (Vec::new(), None);
        while let (Some(k), Some(v)) = (records.key(), records.value()) {
            if members.len() == limit {
                break;
            }
            members.push(books::member(&mut cursor, partition, v, books::Which::All)?);
            last = Some(k.to_vec());
            records.next();
        }
        records.status()?;
        let more = records.valid();
        Ok((members, if more { last } else { None }))
    }

    /// Flushes memtables to disk (used at shutdown so restarts replay less WAL).
    /// RocksDB's own figures, for monitoring (summed over column families;
    /// the block cache is shared).
    pub fn figures(&self) -> Figures {
        let sum = |name: &str| -> u64 {
            ALL_CFS.iter().filter_map(|cf| self.db.property_int_value_cf(self.cf(cf), name).ok().flatten()).sum()
        };
        let cache = ALL_CFS
            .first()
            .and_then(|cf| self.db.property_int_value_cf(self.cf(cf), "rocksdb.block-cache-usage").ok().flatten());
        Figures {
            block_cache_usage_bytes: cache.unwrap_or(0),
            pending_compaction_bytes: sum("rocksdb.estimate-pending-compaction-bytes"),
            live_data_bytes: sum("rocksdb.estimate-live-data-size"),
            sst_files_bytes: sum("rocksdb.total-sst-files-size"),
            memtable_bytes: sum("rocksdb.cur-size-all-mem-tables"),
        }
    }

    pub fn flush(&self) -> Result<()> {
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

/// The store an instance currently serves and folds into, replaceable while
/// it runs (a switch to a rebuilt store, a reopen after a write error).
#[derive(Debug)]
pub struct StoreHandle(std::sync::RwLock<Arc<Store>>);

impl StoreHandle {
    pub fn new(store: Arc<Store>) -> Arc<StoreHandle> {
        Arc::new(StoreHandle(std::sync::RwLock::new(store)))
    }

    /// The current store.
    pub fn get(&self) -> Arc<Store> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Makes `store` the current one; readers holding the old one finish with it.
    pub fn set(&self, store: Arc<Store>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = store;
    }

    /// Replaces the current store by a fresh instance of its directory.
    ///
    /// A failed write (a full disk) leaves RocksDB refusing every later
    /// write until the database is opened again. Meanwhile readers are
    /// served by a read-only instance (which takes no lock), the current
    /// one is closed once every holder has let go of it (up to `wait`), and
    /// a writable one is opened. If that fails (the disk is still full),
    /// the read-only instance keeps serving and the error is returned; call
    /// again later.
    pub fn reopen(&self, config: &StoreConfig, wait: Duration) -> Result<Arc<Store>> {
        let current = self.get();
        if !current.read_only {
            let reader = Store::open(&StoreConfig { read_only: true, ..config.clone() })?;
            self.set(reader);
            let deadline = std::time::Instant::now() + wait;
            drop(
                sole(current, deadline)
                    .map_err(|_| Error::Db("the store is still in use; cannot reopen it yet".into()))?,
            );
        } else {
            drop(current);
        }
        let fresh = Store::open(config)?;
        self.set(fresh.clone());
        Ok(fresh)
    }

    /// Closes the store on the calling thread once every other holder of the
    /// handle and of the store has let go (up to `wait`).
    ///
    /// Architecture invariant: the process closes its store on the thread that
    /// then exits, never on one racing `main`'s return: RocksDB's background
    /// work and its close use C++ statics that `exit` destroys, so a close under
    /// way on another thread at exit is a crash (facebook/rocksdb#11374).
    pub fn close(self: Arc<Self>, wait: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + wait;
        let in_use = || Error::Db("the store is still in use; it was not closed".into());
        let handle = sole(self, deadline).map_err(|_| in_use())?;
        let store = handle.0.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(sole(store, deadline).map_err(|_| in_use())?);
        Ok(())
    }
}

/// `arc`'s value once the caller holds its only reference, or `arc` back at
/// `deadline`. Holders let go on their own (a read finishing, a thread
/// ending), so this waits in short steps.
fn sole<T>(mut arc: Arc<T>, deadline: std::time::Instant) -> std::result::Result<T, Arc<T>> {
    loop {
        match Arc::try_unwrap(arc) {
            Ok(value) => return Ok(value),
            Err(again) if std::time::Instant::now() > deadline => return Err(again),
            Err(again) => arc = again,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A request to fold into and serve from another store (rebuilt by a
/// replay) from now on, answered with each partition's next offset once the
/// switch is done.
pub struct StoreSwitch {
    pub to: Arc<Store>,
    pub done: std::sync::mpsc::Sender<std::result::Result<std::collections::BTreeMap<u32, i64>, String>>,
}

/// One kept part of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPart {
    pub join_id: String,
    pub index: u32,
    /// The event time of the part.
    pub at: i64,
    pub data: Vec<u8>,
}

/// Changes to one partition that become visible together, or not at all.
pub struct Batch {
    inner: rocksdb::WriteBatch,
    topic: String,
    partition: u32,
    /// The partition's watermark after this batch, if it moved.
    watermark: Option<i64>,
    /// The batch writes an audience definition.
    audiences_changed: bool,
}

impl Batch {
    /// Writes a member's record and, beside it, the book entries (orders,
    /// lots) that changed. `loaded` is `Member::lineage` of the member as the
    /// caller read it from this store, `None` when it found none: a book that
    /// continues what was loaded writes only its changes; a book that
    /// replaced it is written whole, after the stored one is deleted.
    pub fn put_member(&mut self, store: &Store, member: &mut Member, loaded: Option<Lineage>) {
        books::stage(&mut self.inner, store.cf(CF_BOOKS), self.partition, member, loaded);
        self.inner.put_cf(store.cf(CF_MEMBERS), keys::scoped(self.partition, &member.key), member.encode_hot());
        member.purchases.history.mark_stored();
        member.loyalty.lots.mark_stored();
        member.purchases.spend.mark_stored();
    }

    /// Deletes everything stored under a member's key but its record (an
    /// erasure: the record becomes its tombstone): ledger, decided requests,
    /// kept events, join parts and books.
    pub fn erase_books(&mut self, store: &Store, member: &str) {
        let prefix = keys::member_prefix(self.partition, member);
        let end = keys::prefix_end(&prefix);
        for cf in [CF_LEDGER, CF_VERDICTS, CF_HISTORY, CF_JOINS, CF_BOOKS] {
            self.inner.delete_range_cf(store.cf(cf), &prefix, &end);
        }
    }

    /// Deletes a member's record and everything stored under its key.
    pub fn delete_member(&mut self, store: &Store, member: &str) {
        self.erase_books(store, member);
        self.inner.delete_cf(store.cf(CF_MEMBERS), keys::scoped(self.partition, member));
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

    /// Keeps one part of a join until the join arrives.
    pub fn put_join_part(&mut self, store: &Store, member: &str, part: &JoinPart) {
        let mut v = Vec::with_capacity(8 + part.data.len());
        v.extend_from_slice(&part.at.to_be_bytes());
        v.extend_from_slice(&part.data);
        self.inner.put_cf(store.cf(CF_JOINS), keys::join_part(self.partition, member, &part.join_id, part.index), v);
    }

    /// Drops a kept part (its join was applied, or it moved on with its member).
    pub fn delete_join_part(&mut self, store: &Store, member: &str, join_id: &str, index: u32) {
        self.inner.delete_cf(store.cf(CF_JOINS), keys::join_part(self.partition, member, join_id, index));
    }

    /// Writes a member's audience state, moving its timer from `old` to the
    /// state's.
    pub fn put_audience_state(&mut self, store: &Store, member: &str, state: &AudienceState, old: Option<i64>) {
        if let Some(at) = old {
            self.inner.delete_cf(store.cf(CF_TIMERS), keys::timer(self.partition, at, member));
        }
        if let Some(at) = state.timer {
            self.inner.put_cf(store.cf(CF_TIMERS), keys::timer(self.partition, at, member), []);
        }
        self.inner.put_cf(store.cf(CF_AUDIENCES), keys::scoped(self.partition, member), state.encode());
    }

    /// Puts `member` in `audience`'s member list (`entered`) or takes it out.
    pub fn set_audience_member(&mut self, store: &Store, audience: &str, member: &str, entered: bool) {
        let k = keys::audience_member(self.partition, audience, member);
        if entered {
            self.inner.put_cf(store.cf(CF_AUDIENCE_MEMBERS), k, []);
        } else {
            self.inner.delete_cf(store.cf(CF_AUDIENCE_MEMBERS), k);
        }
    }

    /// Writes one of the partition's audience definitions.
    pub fn put_definition(&mut self, store: &Store, definition: &Definition) {
        let k = keys::definition(self.partition, &definition.name);
        self.inner.put_cf(store.cf(CF_AUDIENCE_MEMBERS), k, definition.encode());
        self.audiences_changed = true;
    }

    /// Writes the partition's audience backfill.
    pub fn put_backfill(&mut self, store: &Store, backfill: &omnifold_core::audience::Backfill) {
        self.inner.put_cf(store.cf(CF_AUDIENCE_MEMBERS), keys::backfill(self.partition), backfill.encode());
    }

    /// Removes a member's timer at `at` (it fired).
    pub fn delete_timer(&mut self, store: &Store, member: &str, at: i64) {
        self.inner.delete_cf(store.cf(CF_TIMERS), keys::timer(self.partition, at, member));
    }

    /// Sets (or with `None` removes) a key's entry in the identity index.
    pub fn put_index(&mut self, store: &Store, key: &str, member: Option<&str>) {
        match member {
            Some(m) => self.inner.put_cf(store.cf(CF_INDEX), key.as_bytes(), m.as_bytes()),
            None => self.inner.delete_cf(store.cf(CF_INDEX), key.as_bytes()),
        }
    }

    /// Marks an event id applied, at `marker` (the watermark when it was
    /// applied, and not before its own event time).
    pub fn mark_seen(&mut self, store: &Store, event_id: &str, marker: i64) {
        self.inner.put_cf(store.cf(CF_DEDUPE), keys::scoped(self.partition, event_id), marker.to_be_bytes());
    }

    /// Records the partition's watermark (the latest event time applied).
    pub fn set_watermark(&mut self, store: &Store, watermark: i64) {
        self.inner.put_cf(store.cf(CF_META), keys::watermark(&self.topic, self.partition), watermark.to_be_bytes());
        self.watermark = Some(watermark);
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
        b.put_member(&store, &mut m, None);
        b.mark_seen(&store, "e-1", 5);
        b.set_next_offset(&store, 42);
        // Nothing is visible before the commit.
        assert_eq!(store.member(3, "m-1").unwrap(), None);
        store.commit(b).unwrap();
        assert_eq!(store.member(3, "m-1").unwrap(), Some(m.clone()));
        assert_eq!(store.member(2, "m-1").unwrap(), None, "partitions are separate key spaces");
        assert_eq!(store.markers(3, &["e-1", "e-2"]).unwrap(), vec![Some(5), None]);
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
            b.put_member(&store, &mut Member::new("a", ProfileKind::Anonymous), None);
            b.set_next_offset(&store, 9);
            store.commit(b).unwrap();
            store.bind_partitions("events", 4).unwrap();
            assert_eq!(store.instance_name(|| "first".into()).unwrap(), "first");
        }
        let store = open(dir.path());
        assert_eq!(store.next_offset("events", 0).unwrap(), Some(9));
        assert_eq!(store.partition_count("events").unwrap(), Some(4));
        assert_eq!(store.instance_name(|| "second".into()).unwrap(), "first", "the name made first is kept");
        assert_eq!(store.scan_members(0).map(|m| m.unwrap().key).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(store.scan_members(1).count(), 0);
    }

    #[test]
    fn close_waits_for_the_last_reader_and_releases_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { path: dir.path().into(), ..Default::default() };
        let handle = StoreHandle::new(Store::open(&config).unwrap());
        // A reader that does not let go: close gives up and the store stays open.
        let reader = handle.get();
        assert!(handle.close(Duration::from_millis(20)).is_err());
        assert!(Store::open(&config).is_err(), "RocksDB's lock is still held");
        drop(reader);

        // A reader that lets go while close waits: close returns once it has.
        let handle = StoreHandle::new(Store::open(&config).unwrap());
        let reader = handle.get();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = wait.recv();
            drop(reader);
        });
        go.send(()).unwrap();
        handle.close(Duration::from_secs(60)).unwrap();
        Store::open(&config).expect("closed: the directory opens again");
        t.join().unwrap();
    }

    fn order(id: &str, at: i64) -> omnifold_core::member::OrderRecord {
        omnifold_core::member::OrderRecord {
            order_id: id.into(),
            at,
            channel: omnifold_core::Channel::StorePos,
            store_id: None,
            currency: "CNY".into(),
            total_minor: 100,
            total_program_minor: 100,
            units: 1,
            lines: Vec::new(),
            returned_list_minor: 0,
            returned_minor: 0,
            returned_program_minor: 0,
            returned_units: Default::default(),
            return_ids: Default::default(),
            cancelled: false,
            points: 1,
            points_revoked: 0,
        }
    }

    /// Book entries stored for a member.
    fn stored_entries(store: &Store, partition: u32, member: &str) -> usize {
        let prefix = keys::member_prefix(partition, member);
        store
            .db
            .prefix_iterator_cf(store.cf(CF_BOOKS), &prefix)
            .take_while(|kv| kv.as_ref().unwrap().0.starts_with(&prefix))
            .count()
    }

    /// Stores a new member `key` with orders o-1 and o-2.
    fn with_two_orders(store: &Store, key: &str) {
        let mut m = Member::new(key, ProfileKind::KnownMember);
        m.purchases.history.insert(order("o-1", 10));
        m.purchases.history.insert(order("o-2", 20));
        commit_member(store, &mut m, None);
    }

    fn commit_member(store: &Store, m: &mut Member, loaded: Option<Lineage>) -> usize {
        let mut b = store.batch("events", 0);
        b.put_member(store, m, loaded);
        let writes = b.inner.len();
        store.commit(b).unwrap();
        writes
    }

    fn lot(seq: u64) -> omnifold_core::loyalty::Lot {
        omnifold_core::loyalty::Lot {
            seq,
            order_id: None,
            channel: omnifold_core::Channel::StorePos,
            points: 5,
            remaining: 5,
            activates_at: 0,
            expires_at: 1_000,
        }
    }

    /// A member with two orders (their spend dated) and one open lot.
    fn with_orders_and_a_lot(store: &Store, key: &str) -> Member {
        let mut m = Member::new(key, ProfileKind::KnownMember);
        m.purchases.history.insert(order("o-1", 10));
        m.purchases.history.insert(order("o-2", 20));
        m.purchases.rebuild_spend();
        m.loyalty.lots.insert(lot(7));
        commit_member(store, &mut m, None);
        m
    }

    #[test]
    fn a_balance_read_loads_the_lots_and_not_the_orders() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let m = with_orders_and_a_lot(&store, "m-1");
        let mut got = store.member_without_orders(0, "m-1").unwrap().unwrap();
        assert!(got.purchases.history.is_empty());
        assert_eq!(got.loyalty.lots.iter().map(|l| l.seq).collect::<Vec<_>>(), [7]);
        assert_eq!(got.purchases.spend, m.purchases.spend);
        assert_eq!(got.purchases.spend.window(0, 20).net_program_minor, 200);
        assert_eq!(store.member(0, "m-1").unwrap().unwrap(), m);
        assert!(store.member_without_orders(0, "nobody").unwrap().is_none());
        assert!(store.member_without_books(0, "m-1").unwrap().unwrap().purchases.spend.is_empty());

        // A change that leaves the spend alone writes the record only; one
        // that empties it deletes its entry.
        let mut whole = store.member(0, "m-1").unwrap().unwrap();
        let loaded = whole.lineage();
        whole.browse.product_views += 1;
        assert_eq!(commit_member(&store, &mut whole, Some(loaded)), 1);
        let before = stored_entries(&store, 0, "m-1");
        let loaded = got.lineage();
        got.purchases.spend = Default::default();
        got.purchases.rebuild_spend();
        assert_eq!(commit_member(&store, &mut got, Some(loaded)), 2, "the record and the spend's deletion");
        assert_eq!(stored_entries(&store, 0, "m-1"), before - 1);
    }

    /// A record written before dated spend (format 3: no spend after the
    /// member) is read with its spend rebuilt from its orders, by every
    /// kind of read, and the store is stamped with the current format.
    #[test]
    fn a_record_of_format_3_is_read_with_its_spend_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let m = with_orders_and_a_lot(&store, "m-1");
        let key = keys::scoped(0, "m-1");
        let v5 = store.db.get_cf(store.cf(CF_MEMBERS), &key).unwrap().unwrap();
        assert_eq!(v5[0], omnifold_core::member::HOT_FORMAT_VERSION);
        // Format 3: no count of spend marks in the header, no spend entry.
        let v3 = [&[omnifold_core::member::HOT_FORMAT_VERSION_3], &v5[1..9], &v5[13..]].concat();
        store.db.put_cf(store.cf(CF_MEMBERS), &key, v3).unwrap();
        let spend_key = [keys::member_prefix(0, "m-1").as_slice(), b"d"].concat();
        assert!(store.db.get_cf(store.cf(CF_BOOKS), &spend_key).unwrap().is_some());
        store.db.delete_cf(store.cf(CF_BOOKS), &spend_key).unwrap();
        store.set_format_version_for_tests(3).unwrap();
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.format_version().unwrap(), Some(FORMAT_VERSION));
        assert_eq!(store.member(0, "m-1").unwrap().unwrap(), m);
        assert_eq!(store.member_without_orders(0, "m-1").unwrap().unwrap().purchases.spend, m.purchases.spend);
        assert_eq!(store.members(0, &["m-1"]).unwrap()[0].as_ref(), Some(&m));
    }

    #[test]
    fn a_member_writes_only_the_orders_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut m = Member::new("m-1", ProfileKind::KnownMember);
        for (i, at) in [30, 10, 20].into_iter().enumerate() {
            assert!(m.purchases.history.insert(order(&format!("o-{i}"), at)));
        }
        assert_eq!(commit_member(&store, &mut m, None), 4, "three orders and the record");
        let mut got = store.member(0, "m-1").unwrap().unwrap();
        assert_eq!(got, m);
        let ids: Vec<&str> = got.purchases.history.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["o-1", "o-2", "o-0"], "oldest first");

        // An event that changes no order writes only the record.
        let loaded = got.lineage();
        got.browse.product_views += 1;
        assert_eq!(commit_member(&store, &mut got, Some(loaded)), 1);
        // One order changed, one added, the oldest dropped: three order writes.
        got.purchases.history.get_mut("o-2").unwrap().cancelled = true;
        got.purchases.history.insert(order("o-3", 40));
        got.purchases.history.drain_first(1);
        assert_eq!(commit_member(&store, &mut got, Some(loaded)), 4);
        assert_eq!(store.member(0, "m-1").unwrap().unwrap(), got);
        assert_eq!(stored_entries(&store, 0, "m-1"), 3);
    }

    #[test]
    fn a_replaced_order_book_leaves_no_order_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        with_two_orders(&store, "m-1");
        // A neighbour whose key extends this one is not touched.
        let mut n = Member::new("m-10", ProfileKind::KnownMember);
        n.purchases.history.insert(order("o-9", 10));
        commit_member(&store, &mut n, None);

        let mut got = store.member(0, "m-1").unwrap().unwrap();
        let loaded = got.lineage();
        got.purchases = Default::default();
        got.purchases.history.insert(order("o-3", 30));
        commit_member(&store, &mut got, Some(loaded));
        assert_eq!(store.member(0, "m-1").unwrap().unwrap(), got);
        assert_eq!(stored_entries(&store, 0, "m-1"), 1);
        assert_eq!(store.member(0, "m-10").unwrap().unwrap(), n);
    }

    #[test]
    fn a_member_record_whose_orders_are_missing_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        with_two_orders(&store, "m-1");
        let key = [keys::member_prefix(0, "m-1").as_slice(), b"o", b"o-2"].concat();
        store.db.delete_cf(store.cf(CF_BOOKS), key).unwrap();
        let err = store.member(0, "m-1").unwrap_err().to_string();
        assert!(err.contains("member m-1: its record counts 2 orders, the store holds 1"), "{err}");
    }

    #[test]
    fn a_read_never_pairs_a_record_with_books_of_another_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        commit_member(&store, &mut Member::new("m-1", ProfileKind::KnownMember), None);
        let writes = 300;
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for i in 0..writes {
                    let mut m = store.member(0, "m-1").unwrap().unwrap();
                    let loaded = m.lineage();
                    m.purchases.history.insert(order(&format!("o-{i}"), i));
                    m.purchases.orders = m.purchases.history.len() as u64;
                    commit_member(&store, &mut m, Some(loaded));
                }
            });
            let mut reads = 0;
            while !writer.is_finished() || reads == 0 {
                let m = store.member(0, "m-1").unwrap().unwrap();
                assert_eq!(m.purchases.history.len() as u64, m.purchases.orders);
                let scanned = store.scan_members(0).next().unwrap().unwrap();
                assert_eq!(scanned.purchases.history.len() as u64, scanned.purchases.orders);
                reads += 1;
            }
        });
        assert_eq!(store.member(0, "m-1").unwrap().unwrap().purchases.orders, writes as u64);
    }

    #[test]
    fn a_scan_reads_every_member_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut b = store.batch("events", 0);
        for i in 0..(2 * SCAN_CHUNK + 1) {
            let mut m = Member::new(format!("m-{i:05}"), ProfileKind::KnownMember);
            m.purchases.history.insert(order("o-1", 10));
            b.put_member(&store, &mut m, None);
        }
        store.commit(b).unwrap();
        let keys: Vec<String> = store.scan_members(0).map(|m| m.unwrap().key).collect();
        assert_eq!(keys.len(), 2 * SCAN_CHUNK + 1);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order, each once");
        assert_eq!(store.scan_members(1).count(), 0);
    }
}
