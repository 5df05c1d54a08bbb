//! A partition's state as immutable files, and back (issue 11: snapshots
//! and handover).
//!
//! Export reads every per-partition column family of one partition from
//! one RocksDB snapshot and writes it as chunk files in key order, with the
//! partition's offsets as metadata ([`PartitionSnapshot`]). A chunk holds
//! the entries of one column family and is named by the xxh3-128 of its
//! bytes; chunk boundaries fall at keys whose hash says so (once a chunk
//! has its minimum size), so they depend on the keys around them, not on
//! everything before: after a change, most chunks are byte for byte the
//! ones of the snapshot before, and a snapshot store holds them once.
//!
//! Import trusts nothing it reads: each chunk's bytes must hash to its
//! name, every key must belong to the partition and come in order, and
//! the metadata must match the store (topic, partition count, format).
//! The chunks become SST files that RocksDB ingests after the partition's
//! range is deleted. A marker written before the first change and removed
//! in the batch that sets the offsets means a restore that a crash cut
//! short is never trusted: opening the store drops what it had written.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{IngestExternalFileOptions, ReadOptions, SstFileWriter, WriteBatch};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::{
    CF_AUDIENCE_MEMBERS, CF_AUDIENCES, CF_BOOKS, CF_DEDUPE, CF_HISTORY, CF_JOINS, CF_LEDGER, CF_MEMBERS, CF_META,
    CF_TIMERS, CF_VERDICTS, Error, Result, Store, format, keys,
};

/// The column families whose keys start with the partition: a partition's
/// whole state besides its offsets.
/// A chunk names its column family by its index here: new ones go last.
const PARTITION_CFS: [&str; 10] = [
    CF_MEMBERS,
    CF_BOOKS,
    CF_LEDGER,
    CF_VERDICTS,
    CF_HISTORY,
    CF_JOINS,
    CF_DEDUPE,
    CF_AUDIENCES,
    CF_TIMERS,
    CF_AUDIENCE_MEMBERS,
];

/// The oldest store format a snapshot may be of: format 4 lacks only the
/// audiences' member lists, which a restore builds from the states.
const OLDEST_FORMAT: u32 = 4;

/// The first bytes of every chunk file.
const MAGIC: &[u8; 8] = b"OFCHUNK1";

/// Bytes of entries in a chunk before a boundary may fall, and at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunking {
    pub min: u64,
    pub max: u64,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking { min: 1 << 20, max: 16 << 20 }
    }
}

/// One partition's state: the chunk files that hold it and what they
/// cover. Serialised as a snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: u32,
    /// The topic's partition count the state was built for.
    pub partition_count: u32,
    /// The store format of the entries (`omnifold_store::FORMAT_VERSION`).
    pub format_version: u32,
    /// The next offset to fold after this state.
    pub next_offset: i64,
    /// The partition's event-time watermark (dedupe horizon).
    pub watermark: Option<i64>,
    pub chunks: Vec<Chunk>,
}

/// One chunk file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// The xxh3-128 of the file's bytes, 32 hex digits: its file name.
    pub name: String,
    pub column_family: String,
    pub entries: u64,
    pub bytes: u64,
}

impl PartitionSnapshot {
    /// Bytes of every chunk together.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes).sum()
    }
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Format(format!("snapshot: {what}"))
}

/// The meta key marking a partition whose restore has not finished.
fn restoring_key(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = format!("restoring/{topic}/").into_bytes();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

const RESTORING_PREFIX: &[u8] = b"restoring/";

/// Writes one chunk file, hashing its bytes as they go.
struct ChunkWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    hash: Xxh3,
    cf: &'static str,
    entries: u64,
    bytes: u64,
}

impl ChunkWriter {
    fn create(dir: &Path, cf: &'static str, cf_index: u8, partition: u32, seq: usize) -> Result<ChunkWriter> {
        let tmp = dir.join(format!(".chunk-{seq}.tmp"));
        let mut w = ChunkWriter {
            out: BufWriter::new(File::create(&tmp).map_err(io)?),
            tmp,
            hash: Xxh3::new(),
            cf,
            entries: 0,
            bytes: 0,
        };
        w.write(MAGIC)?;
        w.write(&[cf_index])?;
        w.write(&partition.to_be_bytes())?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.hash.update(b);
        self.out.write_all(b).map_err(io)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        for part in [key, value] {
            let len = u32::try_from(part.len()).map_err(|_| bad("an entry larger than 4 GiB"))?;
            self.write(&len.to_be_bytes())?;
            self.write(part)?;
        }
        self.entries += 1;
        self.bytes += (key.len() + value.len()) as u64;
        Ok(())
    }

    /// Ends the file with its entry count and hash and names it by the
    /// hash of all of it.
    fn finish(mut self, dir: &Path) -> Result<Chunk> {
        // The trailer: the entry count, and the hash of everything before it.
        let inner = self.hash.digest128().to_be_bytes();
        self.write(&self.entries.to_be_bytes())?;
        self.write(&inner)?;
        self.out.flush().map_err(io)?;
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        let name = format!("{:032x}", self.hash.digest128());
        let bytes = std::fs::metadata(&self.tmp).map_err(io)?.len();
        std::fs::rename(&self.tmp, dir.join(&name)).map_err(io)?;
        Ok(Chunk { name, column_family: self.cf.to_owned(), entries: self.entries, bytes })
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Format(format!("snapshot file: {e}"))
}

/// Whether a chunk of `bytes` so far ends before `key`.
fn boundary(chunking: Chunking, bytes: u64, key: &[u8]) -> bool {
    bytes >= chunking.max || (bytes >= chunking.min && xxh3_64(key).is_multiple_of(32))
}

impl Store {
    /// Writes partition `partition`'s state into `dir` as chunk files and
    /// returns what they hold. `None` when the store has no state for it.
    pub fn export_partition(&self, topic: &str, partition: u32, dir: &Path) -> Result<Option<PartitionSnapshot>> {
        self.export_partition_with(topic, partition, dir, Chunking::default())
    }

    pub(crate) fn export_partition_with(
        &self,
        topic: &str,
        partition: u32,
        dir: &Path,
        chunking: Chunking,
    ) -> Result<Option<PartitionSnapshot>> {
        let Some(partition_count) = self.partition_count(topic)? else {
            return Ok(None);
        };
        let snap = self.db.snapshot();
        let meta = |key: Vec<u8>| -> Result<Option<i64>> {
            Ok(snap.get_cf(self.cf(CF_META), key)?.and_then(|v| keys::decode_i64(&v)))
        };
        let Some(next_offset) = meta(keys::offset(topic, partition))? else {
            return Ok(None);
        };
        let watermark = meta(keys::watermark(topic, partition))?;
        let (start, end) = (partition.to_be_bytes().to_vec(), keys::prefix_end(&partition.to_be_bytes()));
        let mut chunks = Vec::new();
        for (i, cf) in PARTITION_CFS.iter().enumerate() {
            let mut opts = ReadOptions::default();
            opts.set_snapshot(&snap);
            opts.set_iterate_upper_bound(end.clone());
            let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), opts);
            it.seek(&start);
            let mut writer: Option<ChunkWriter> = None;
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if writer.as_ref().is_some_and(|w| boundary(chunking, w.bytes, k))
                    && let Some(w) = writer.take()
                {
                    chunks.push(w.finish(dir)?);
                }
                if writer.is_none() {
                    writer = Some(ChunkWriter::create(dir, cf, i as u8, partition, chunks.len())?);
                }
                if let Some(w) = writer.as_mut() {
                    w.put(k, v)?;
                }
                it.next();
            }
            it.status()?;
            if let Some(w) = writer {
                chunks.push(w.finish(dir)?);
            }
        }
        Ok(Some(PartitionSnapshot {
            topic: topic.to_owned(),
            partition,
            partition_count,
            format_version: format::CURRENT,
            next_offset,
            watermark,
            chunks,
        }))
    }

    /// Replaces partition `partition`'s state with the snapshot whose
    /// chunk files are in `dir`. Everything is checked before the store
    /// changes; a crash midway leaves the partition empty when the store is
    /// opened again, never half restored.
    pub fn import_partition(&self, snapshot: &PartitionSnapshot, dir: &Path) -> Result<()> {
        self.check_snapshot(snapshot)?;
        let (topic, p) = (snapshot.topic.as_str(), snapshot.partition);
        let mut by_cf: Vec<(&'static str, Vec<PathBuf>)> = PARTITION_CFS.iter().map(|cf| (*cf, Vec::new())).collect();
        let mut written = Vec::new();
        let result = (|| {
            for chunk in &snapshot.chunks {
                let (cf, sst) = self.chunk_to_sst(chunk, p, dir)?;
                written.push(sst.clone());
                if let Some((_, paths)) = by_cf.iter_mut().find(|(name, _)| *name == cf) {
                    paths.push(sst);
                }
            }
            self.bind_partitions(topic, snapshot.partition_count)?;
            self.replace_partition(snapshot, &by_cf)
        })();
        for sst in written {
            let _ = std::fs::remove_file(sst);
        }
        result
    }

    fn check_snapshot(&self, s: &PartitionSnapshot) -> Result<()> {
        if !(OLDEST_FORMAT..=format::CURRENT).contains(&s.format_version) {
            return Err(bad(format!(
                "of store format {}, and this omnifold restores formats {OLDEST_FORMAT} to {}",
                s.format_version,
                format::CURRENT
            )));
        }
        if s.partition >= s.partition_count {
            return Err(bad(format!("partition {} of a topic of {} partitions", s.partition, s.partition_count)));
        }
        if let Some(n) = self.partition_count(&s.topic)?
            && n != s.partition_count
        {
            return Err(bad(format!("built for {} partitions, and this store for {n}", s.partition_count)));
        }
        if let Some(other) = self.topics()?.into_iter().find(|t| *t != s.topic) {
            return Err(bad(format!("of topic {}, and this store holds topic {other}", s.topic)));
        }
        if s.next_offset < 0 {
            return Err(bad(format!("next offset {} is negative", s.next_offset)));
        }
        Ok(())
    }

    /// Reads a chunk file, checks it, and writes its entries as an SST file
    /// beside it; returns its column family and the SST's path.
    fn chunk_to_sst(&self, chunk: &Chunk, partition: u32, dir: &Path) -> Result<(&'static str, PathBuf)> {
        let valid_name = chunk.name.len() == 32 && chunk.name.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_name {
            return Err(bad(format!("`{}` is not a chunk name", chunk.name)));
        }
        let path = dir.join(&chunk.name);
        let mut data = Vec::new();
        BufReader::new(File::open(&path).map_err(io)?).read_to_end(&mut data).map_err(io)?;
        let hash = xxhash_rust::xxh3::xxh3_128(&data);
        if format!("{hash:032x}") != chunk.name {
            return Err(bad(format!("chunk {} does not hash to its name (damaged or altered)", chunk.name)));
        }
        let parsed = parse_chunk(&data, partition)?;
        let cf = PARTITION_CFS[parsed.cf_index];
        if cf != chunk.column_family || parsed.entries.len() as u64 != chunk.entries {
            return Err(bad(format!("chunk {} does not hold what the metadata says", chunk.name)));
        }
        let sst = dir.join(format!("{}.sst", chunk.name));
        let opts = rocksdb::Options::default();
        let mut w = SstFileWriter::create(&opts);
        w.open(&sst)?;
        for (k, v) in &parsed.entries {
            w.put(k, v)?;
        }
        w.finish()?;
        Ok((cf, sst))
    }

    /// Marks the partition as restoring, empties it, ingests the SST files
    /// and sets its offsets, removing the mark in the same batch.
    fn replace_partition(&self, s: &PartitionSnapshot, by_cf: &[(&'static str, Vec<PathBuf>)]) -> Result<()> {
        let (topic, p) = (s.topic.as_str(), s.partition);
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_META), restoring_key(topic, p), [1u8], &sync)?;
        self.clear_partition(topic, p)?;
        for (cf, paths) in by_cf.iter().filter(|(_, paths)| !paths.is_empty()) {
            let mut opts = IngestExternalFileOptions::default();
            opts.set_move_files(true);
            self.db.ingest_external_file_cf_opts(self.cf(cf), &opts, paths.clone())?;
        }
        if s.format_version < 5 {
            format::index_audiences(self, Some(p))?;
        }
        self.forget_audiences(p);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), keys::offset(topic, p), s.next_offset.to_be_bytes());
        if let Some(w) = s.watermark {
            batch.put_cf(self.cf(CF_META), keys::watermark(topic, p), w.to_be_bytes());
        }
        batch.delete_cf(self.cf(CF_META), restoring_key(topic, p));
        self.db.write_opt(batch, &sync)?;
        self.horizons.reset(p, s.watermark.map_or(i64::MIN, |w| w.saturating_sub(self.retention_ms)));
        Ok(())
    }

    /// Deletes every entry and the offsets of a partition.
    fn clear_partition(&self, topic: &str, p: u32) -> Result<()> {
        let (start, end) = (p.to_be_bytes().to_vec(), keys::prefix_end(&p.to_be_bytes()));
        for cf in PARTITION_CFS {
            self.db.delete_range_cf(self.cf(cf), &start, &end)?;
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_META), keys::offset(topic, p));
        batch.delete_cf(self.cf(CF_META), keys::watermark(topic, p));
        self.db.write_opt(batch, &self.write_opts)?;
        Ok(())
    }

    /// At open: a partition whose restore a crash cut short is emptied.
    pub(crate) fn drop_unfinished_restores(&self) -> Result<()> {
        let mut marked = Vec::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_META), RESTORING_PREFIX) {
            let (k, _) = kv?;
            if !k.starts_with(RESTORING_PREFIX) {
                break;
            }
            marked.push(k.to_vec());
        }
        for key in marked {
            let rest = &key[RESTORING_PREFIX.len()..];
            let Some(split) = rest.len().checked_sub(4) else {
                continue;
            };
            let (topic, p) = (String::from_utf8_lossy(&rest[..split.saturating_sub(1)]), &rest[split..]);
            let Some(p) = keys::partition_of(p) else {
                continue;
            };
            tracing::warn!(topic = %topic, partition = p, "a restore of this partition did not finish; its state is dropped");
            self.clear_partition(&topic, p)?;
            self.db.delete_cf(self.cf(CF_META), &key)?;
        }
        Ok(())
    }
}

/// A chunk's column family and entries, checked.
struct Parsed<'a> {
    cf_index: usize,
    entries: Vec<(&'a [u8], &'a [u8])>,
}

/// Parses a chunk file's bytes: header, entries (each key of `partition`,
/// strictly increasing), and the trailer's count and hash.
fn parse_chunk(data: &[u8], partition: u32) -> Result<Parsed<'_>> {
    let head = MAGIC.len() + 1 + 4;
    let trailer = 8 + 16;
    if data.len() < head + trailer || &data[..MAGIC.len()] != MAGIC {
        return Err(bad("not a chunk file"));
    }
    let cf_index = usize::from(data[MAGIC.len()]);
    if cf_index >= PARTITION_CFS.len() {
        return Err(bad(format!("unknown column family {cf_index}")));
    }
    let owner = &data[MAGIC.len() + 1..head];
    if owner != partition.to_be_bytes() {
        return Err(bad("a chunk of another partition"));
    }
    let (body, tail) = data.split_at(data.len() - trailer);
    let inner = u128::from_be_bytes(tail[8..].try_into().map_err(|_| bad("trailer"))?);
    if xxhash_rust::xxh3::xxh3_128(body) != inner {
        return Err(bad("a chunk whose contents do not match its own hash"));
    }
    let count = u64::from_be_bytes(tail[..8].try_into().map_err(|_| bad("trailer"))?);
    let mut entries: Vec<(&[u8], &[u8])> = Vec::new();
    let mut at = &body[head..];
    while !at.is_empty() {
        let (k, v) = (take(&mut at)?, take(&mut at)?);
        if !k.starts_with(&partition.to_be_bytes()) {
            return Err(bad("a key of another partition"));
        }
        if entries.last().is_some_and(|(prev, _)| *prev >= k) {
            return Err(bad("keys out of order"));
        }
        entries.push((k, v));
    }
    if entries.len() as u64 != count {
        return Err(bad("an entry count that does not match"));
    }
    Ok(Parsed { cf_index, entries })
}

/// The next length-prefixed part of a chunk's entries.
fn take<'a>(at: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = at.get(..4).ok_or_else(|| bad("a cut entry"))?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| bad("a cut entry"))?) as usize;
    let part = at.get(4..4 + len).ok_or_else(|| bad("a cut entry"))?;
    *at = &at[4 + len..];
    Ok(part)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use omnifold_core::{Member, ProfileKind};

    use super::*;
    use crate::StoreConfig;

    fn open(dir: &Path) -> Arc<Store> {
        Store::open(&StoreConfig { path: dir.to_owned(), ..StoreConfig::default() }).unwrap()
    }

    /// `members` members with `views` product views each, on `partition`,
    /// folded to offset `next`.
    fn fill(store: &Store, partition: u32, members: usize, views: u64, next: i64) {
        store.bind_partitions("events", 4).unwrap();
        let mut b = store.batch("events", partition);
        for i in 0..members {
            let mut m = Member::new(format!("m-{i:04}"), ProfileKind::KnownMember);
            m.browse.product_views = views;
            b.put_member(store, &mut m, None);
            b.mark_seen(store, &format!("e-{i}-{views}"), 1_000 + i as i64);
        }
        b.set_watermark(store, 5_000);
        b.set_next_offset(store, next);
        store.commit(b).unwrap();
    }

    fn small() -> Chunking {
        Chunking { min: 256, max: 4_096 }
    }

    fn members(store: &Store, partition: u32) -> Vec<Member> {
        store.scan_members(partition).map(|m| m.unwrap()).collect()
    }

    #[test]
    fn a_partition_restored_elsewhere_is_the_same_partition() {
        let (a, b, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (open(a.path()), open(b.path()));
        fill(&from, 1, 200, 3, 77);
        fill(&from, 2, 5, 9, 12);
        let snap = from.export_partition_with("events", 1, files.path(), small()).unwrap().unwrap();
        assert_eq!((snap.partition, snap.partition_count, snap.next_offset, snap.watermark), (1, 4, 77, Some(5_000)));
        assert!(snap.chunks.len() > 2, "small chunks: {}", snap.chunks.len());
        // The new owner has an older copy of the partition, and another partition of its own.
        fill(&to, 1, 50, 1, 20);
        fill(&to, 3, 4, 2, 8);
        to.import_partition(&snap, files.path()).unwrap();
        assert_eq!(members(&to, 1), members(&from, 1));
        assert_eq!(to.next_offset("events", 1).unwrap(), Some(77));
        assert_eq!(to.watermark("events", 1).unwrap(), Some(5_000));
        assert_eq!(
            to.markers(1, &["e-7-3", "e-7-1"]).unwrap(),
            vec![Some(1_007), None],
            "markers came, stale ones went"
        );
        assert_eq!(members(&to, 3).len(), 4, "other partitions are untouched");
        assert_eq!(to.next_offset("events", 2).unwrap(), None);
    }

    #[test]
    fn a_change_leaves_most_chunks_as_they_were() {
        let (a, one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = open(a.path());
        fill(&store, 0, 400, 3, 10);
        let first = store.export_partition_with("events", 0, one.path(), small()).unwrap().unwrap();
        let mut b = store.batch("events", 0);
        let mut m = Member::new("m-0399", ProfileKind::KnownMember);
        m.browse.product_views = 4;
        b.put_member(&store, &mut m, None);
        b.set_next_offset(&store, 11);
        store.commit(b).unwrap();
        let second = store.export_partition_with("events", 0, two.path(), small()).unwrap().unwrap();
        let before: std::collections::BTreeSet<&String> = first.chunks.iter().map(|c| &c.name).collect();
        let changed = second.chunks.iter().filter(|c| !before.contains(&c.name)).count();
        assert!(
            changed >= 1 && changed * 4 <= second.chunks.len(),
            "{changed} of {} chunks changed",
            second.chunks.len()
        );
    }

    #[test]
    fn damaged_or_foreign_chunks_are_refused_before_anything_changes() {
        let (a, b, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (open(a.path()), open(b.path()));
        fill(&from, 1, 30, 3, 40);
        fill(&to, 1, 10, 1, 15);
        let snap = from.export_partition_with("events", 1, files.path(), small()).unwrap().unwrap();
        let refused = |s: &PartitionSnapshot, says: &str| {
            let e = to.import_partition(s, files.path()).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert_eq!(to.next_offset("events", 1).unwrap(), Some(15), "nothing changed");
            assert_eq!(members(&to, 1).len(), 10);
        };
        // A flipped byte.
        let victim = files.path().join(&snap.chunks[0].name);
        let mut bytes = std::fs::read(&victim).unwrap();
        let original = bytes.clone();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&victim, &bytes).unwrap();
        refused(&snap, "does not hash to its name");
        std::fs::write(&victim, &original).unwrap();
        // Claimed for another partition, topic, count or format.
        refused(&PartitionSnapshot { partition: 2, ..snap.clone() }, "another partition");
        refused(&PartitionSnapshot { partition_count: 8, ..snap.clone() }, "built for 8 partitions");
        refused(&PartitionSnapshot { topic: "other".into(), ..snap.clone() }, "of topic other");
        refused(&PartitionSnapshot { format_version: 99, ..snap.clone() }, "store format 99");
        let mut wrong_cf = snap.clone();
        wrong_cf.chunks[0].column_family = "ledger".into();
        refused(&wrong_cf, "does not hold what the metadata says");
        to.import_partition(&snap, files.path()).unwrap();
        assert_eq!(members(&to, 1), members(&from, 1));
    }

    #[test]
    fn a_restore_cut_short_is_never_trusted() {
        let (a, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        {
            let store = open(a.path());
            fill(&store, 1, 20, 3, 40);
            fill(&store, 2, 3, 1, 9);
            // A crash after the mark and part of the work: the mark is there,
            // the partition holds whatever the restore had written.
            store.db.put_cf(store.cf(CF_META), restoring_key("events", 1), [1u8]).unwrap();
            let _ = store.export_partition("events", 1, files.path()).unwrap();
        }
        let store = open(a.path());
        assert_eq!(store.next_offset("events", 1).unwrap(), None, "the partition starts over");
        assert!(members(&store, 1).is_empty());
        assert_eq!(members(&store, 2).len(), 3, "other partitions are kept");
        assert_eq!(store.next_offset("events", 2).unwrap(), Some(9));
    }
}
