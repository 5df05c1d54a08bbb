//! Taking a partition's snapshot, moving the latest pointer, keeping what
//! retention asks for, and restoring the newest snapshot that is sound.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use omnifold_store::{PartitionSnapshot, Store};

use crate::layout::{Layout, number_of};
use crate::{Error, Result, SnapshotConfig};

/// Pointer entries kept behind the current one.
const POINTER_HISTORY: u64 = 8;

/// A snapshot's metadata: the partition's state as chunk files, with when
/// and by whom it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub taken_at_ms: i64,
    /// The instance that took it.
    pub instance: String,
    pub snapshot: PartitionSnapshot,
}

impl Manifest {
    pub fn next_offset(&self) -> i64 {
        self.snapshot.next_offset
    }
}

/// One entry of the latest pointer's history.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pointer {
    next_offset: i64,
}

/// What taking a snapshot did.
#[derive(Debug, Clone)]
pub struct Taken {
    pub manifest: Manifest,
    /// Chunks uploaded now, and their bytes.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Chunks the store held already (unchanged since an earlier snapshot).
    pub reused: usize,
    pub retention: Retention,
}

/// What retention kept and deleted after a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Next offsets of the snapshots kept, oldest first.
    pub kept: Vec<i64>,
    pub deleted: usize,
    pub chunks_deleted: usize,
    /// Kept snapshots the topic's log still reaches back to (`None`: the
    /// log's start was not known).
    pub covered: Option<usize>,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The local copy is as far as the latest snapshot, or no snapshot
    /// could be restored: ingest goes on from the local offset.
    Local { next_offset: Option<i64> },
    /// The partition's state is now this snapshot's.
    Snapshot { manifest: Box<Manifest>, downloaded: usize, downloaded_bytes: u64, reused: usize },
}

/// A snapshot store, and the local directory its chunk files pass through.
pub struct Snapshots {
    objects: Arc<dyn ObjectStore>,
    root: Path,
    /// Exports are written and downloads kept here, per partition: a chunk
    /// already here is not fetched again.
    local: PathBuf,
    cfg: SnapshotConfig,
    instance: String,
    rt: tokio::runtime::Handle,
    /// One take or restore at a time in this process.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").field("url", &self.cfg.url).field("local", &self.local).finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The object store and root path `cfg.url` names.
fn objects_of(cfg: &SnapshotConfig) -> Result<(Arc<dyn ObjectStore>, Path)> {
    if let Some(rest) = cfg.url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!("url `{}` names no bucket (s3://bucket/prefix)", cfg.url)));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in &cfg.options {
            let key: AmazonS3ConfigKey =
                key.parse().map_err(|_| Error::Config(format!("`{key}` is not an S3 option of object_store")))?;
            builder = builder.with_config(key, value);
        }
        return Ok((Arc::new(builder.build()?), Path::from(prefix.trim_matches('/'))));
    }
    if !cfg.options.is_empty() {
        return Err(Error::Config("options apply to s3:// urls only".into()));
    }
    let dir = cfg.url.strip_prefix("file://").unwrap_or(&cfg.url);
    std::fs::create_dir_all(dir)?;
    Ok((Arc::new(LocalFileSystem::new_with_prefix(dir)?), Path::default()))
}

fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Snapshots {
    /// Opens the snapshot store `cfg` names; chunk files pass through
    /// `local`. `rt` runs the store's I/O: the methods block on it, so
    /// call them from a thread outside the runtime (or `spawn_blocking`).
    pub fn open(cfg: &SnapshotConfig, local: PathBuf, instance: &str, rt: tokio::runtime::Handle) -> Result<Snapshots> {
        cfg.validate()?;
        if !cfg.enabled() {
            return Err(Error::Config("no url: snapshots are off".into()));
        }
        let (objects, root) = objects_of(cfg)?;
        std::fs::create_dir_all(&local)?;
        Ok(Snapshots {
            objects,
            root,
            local,
            cfg: cfg.clone(),
            instance: instance.to_owned(),
            rt,
            busy: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &SnapshotConfig {
        &self.cfg
    }

    /// Takes a snapshot of `partition` if the store holds it further than
    /// the latest snapshot: uploads the chunks the snapshot store lacks,
    /// writes the manifest, moves the pointer, applies retention.
    /// `log_start` is the topic's first offset, for retention's coverage.
    /// `None` when there is nothing newer to take.
    pub fn take(&self, store: &Store, topic: &str, partition: u32, log_start: Option<i64>) -> Result<Option<Taken>> {
        let _busy = lock(&self.busy);
        self.rt.block_on(self.take_async(store, topic, partition, log_start))
    }

    /// The latest snapshot of `partition`, by the pointer.
    pub fn latest(&self, topic: &str, partition: u32) -> Result<Option<Manifest>> {
        self.rt.block_on(async {
            let layout = Layout::new(&self.root, topic, partition);
            match self.pointer(&layout).await? {
                Some((_, p)) => Ok(Some(self.manifest(&layout, topic, partition, p.next_offset).await?)),
                None => Ok(None),
            }
        })
    }

    /// Every snapshot of `partition` held, oldest first.
    pub fn list(&self, topic: &str, partition: u32) -> Result<Vec<Manifest>> {
        self.rt.block_on(async {
            let layout = Layout::new(&self.root, topic, partition);
            let mut out = Vec::new();
            for offset in self.manifest_offsets(&layout).await? {
                out.push(self.manifest(&layout, topic, partition, offset).await?);
            }
            Ok(out)
        })
    }

    /// Brings `partition` to its latest snapshot when that is further than
    /// the local copy; a snapshot that cannot be restored (a chunk missing
    /// or damaged) gives way to the one before it. The local copy is kept
    /// when no snapshot is further or none can be restored.
    pub fn restore(&self, store: &Store, topic: &str, partition: u32) -> Result<Restored> {
        let _busy = lock(&self.busy);
        self.rt.block_on(self.restore_async(store, topic, partition))
    }

    async fn take_async(&self, store: &Store, topic: &str, p: u32, log_start: Option<i64>) -> Result<Option<Taken>> {
        let layout = Layout::new(&self.root, topic, p);
        let Some(next) = store.next_offset(topic, p)? else {
            return Ok(None);
        };
        let latest = self.pointer(&layout).await?.map(|(_, ptr)| ptr.next_offset);
        if latest.is_some_and(|l| l >= next) {
            return Ok(None);
        }
        let dir = self.partition_dir(topic, p)?;
        let Some(snapshot) = store.export_partition(topic, p, &dir)? else {
            return Ok(None);
        };
        let present = self.names_under(&layout.chunks()).await?;
        let (mut uploaded, mut uploaded_bytes, mut reused) = (0, 0, 0);
        for chunk in &snapshot.chunks {
            if present.contains(&chunk.name) {
                reused += 1;
                continue;
            }
            let data = tokio::fs::read(dir.join(&chunk.name)).await?;
            uploaded_bytes += data.len() as u64;
            self.objects.put(&layout.chunk(&chunk.name), PutPayload::from(data)).await?;
            uploaded += 1;
        }
        let manifest = Manifest { taken_at_ms: now_ms(), instance: self.instance.clone(), snapshot };
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Damaged(e.to_string()))?;
        match self.objects.put_opts(&layout.manifest(manifest.next_offset()), body.into(), PutMode::Create.into()).await
        {
            // Another instance took the same offset: the same state, kept once.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let pointed = self.advance(&layout, manifest.next_offset()).await?;
        let retention = self.retain(&layout, topic, p, pointed, log_start).await?;
        tidy_local(&dir, &manifest.snapshot)?;
        metrics::counter!("omnifold_snapshots_taken_total").increment(1);
        metrics::counter!("omnifold_snapshot_uploaded_bytes_total").increment(uploaded_bytes);
        info!(
            partition = p,
            next_offset = manifest.next_offset(),
            chunks = manifest.snapshot.chunks.len(),
            uploaded,
            uploaded_bytes,
            "snapshot taken"
        );
        Ok(Some(Taken { manifest, uploaded, uploaded_bytes, reused, retention }))
    }

    /// `{local}/{topic}/{partition}`, created.
    fn partition_dir(&self, topic: &str, p: u32) -> Result<PathBuf> {
        let dir = self.local.join(topic).join(format!("{p:05}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The file names of the objects under `prefix`.
    async fn names_under(&self, prefix: &Path) -> Result<HashSet<String>> {
        let metas: Vec<_> = self.objects.list(Some(prefix)).try_collect().await?;
        Ok(metas.iter().filter_map(|m| m.location.filename().map(str::to_owned)).collect())
    }

    /// The numbers named under `prefix`, ascending (other names ignored).
    async fn numbers_under(&self, prefix: &Path) -> Result<Vec<u64>> {
        let metas: Vec<_> = self.objects.list(Some(prefix)).try_collect().await?;
        let mut numbers: Vec<u64> = metas.iter().filter_map(|m| number_of(&m.location)).collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    async fn manifest_offsets(&self, layout: &Layout) -> Result<Vec<i64>> {
        Ok(self.numbers_under(&layout.manifests()).await?.into_iter().filter_map(|n| i64::try_from(n).ok()).collect())
    }

    /// The pointer's current entry: the highest of its history.
    async fn pointer(&self, layout: &Layout) -> Result<Option<(u64, Pointer)>> {
        let Some(&seq) = self.numbers_under(&layout.pointers()).await?.last() else {
            return Ok(None);
        };
        let path = layout.pointer(seq);
        let bytes = self.objects.get(&path).await?.bytes().await?;
        let pointer: Pointer = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Damaged(format!("pointer {path} is not valid ({e}); remove it to go back one")))?;
        Ok(Some((seq, pointer)))
    }

    /// Reads and checks the manifest at `next_offset`.
    async fn manifest(&self, layout: &Layout, topic: &str, p: u32, next_offset: i64) -> Result<Manifest> {
        let path = layout.manifest(next_offset);
        let bytes = self.objects.get(&path).await?.bytes().await?;
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::Damaged(format!("manifest {path} is not valid: {e}")))?;
        let s = &m.snapshot;
        if s.topic != topic || s.partition != p || s.next_offset != next_offset {
            return Err(Error::Damaged(format!(
                "manifest {path} describes {}/{} at {}, not what its name says",
                s.topic, s.partition, s.next_offset
            )));
        }
        Ok(m)
    }

    /// Moves the pointer to `next_offset` unless it is there or further:
    /// creates the next entry of its history, which fails if another
    /// writer created it first (then reads again). Never moves backwards.
    /// Returns the offset the pointer names now.
    async fn advance(&self, layout: &Layout, next_offset: i64) -> Result<i64> {
        for _ in 0..16 {
            let current = self.pointer(layout).await?;
            if let Some((_, p)) = current.filter(|(_, p)| p.next_offset >= next_offset) {
                return Ok(p.next_offset);
            }
            let seq = current.map_or(0, |(s, _)| s + 1);
            let body = serde_json::to_vec(&Pointer { next_offset }).map_err(|e| Error::Damaged(e.to_string()))?;
            match self.objects.put_opts(&layout.pointer(seq), body.into(), PutMode::Create.into()).await {
                Ok(_) => {
                    if let Some(old) = seq.checked_sub(POINTER_HISTORY) {
                        match self.objects.delete(&layout.pointer(old)).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => warn!(error = %e, "could not delete an old pointer entry"),
                        }
                    }
                    return Ok(next_offset);
                }
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Damaged("pointer: 16 writers in a row moved it first".into()))
    }

    /// Keeps the newest `retain` snapshots, the one the pointer names
    /// (`pointed`), and the oldest one the topic's log still reaches back
    /// to; deletes the other manifests, then the chunks no kept manifest
    /// names once they are older than the grace period.
    async fn retain(
        &self,
        layout: &Layout,
        topic: &str,
        p: u32,
        pointed: i64,
        log_start: Option<i64>,
    ) -> Result<Retention> {
        let offsets = self.manifest_offsets(layout).await?;
        let mut keep: BTreeSet<i64> = offsets.iter().rev().take(self.cfg.retain).copied().collect();
        if let Some(start) = log_start
            && let Some(oldest_covered) = offsets.iter().find(|o| **o >= start)
        {
            keep.insert(*oldest_covered);
        }
        keep.insert(pointed);
        let mut deleted = 0;
        for offset in offsets.iter().filter(|o| !keep.contains(o)) {
            match self.objects.delete(&layout.manifest(*offset)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(e.into()),
            }
        }
        let covered = log_start.map(|start| keep.iter().filter(|o| **o >= start).count());
        match covered {
            Some(0) => error!(
                partition = p,
                log_start = log_start.unwrap_or(0),
                newest = keep.last().copied().unwrap_or(-1),
                "the topic's log no longer reaches back to any snapshot: a new owner cannot rebuild this partition \
                 without losing records; take snapshots more often than the topic's retention"
            ),
            // Older snapshots are kept, and the log no longer reaches them.
            Some(1) if keep.len() > 1 => warn!(
                partition = p,
                "the topic's log reaches back to one snapshot only: if snapshots stop, the next retention of the \
                 topic opens a gap"
            ),
            _ => {}
        }
        let chunks_deleted = self.collect_chunks(layout, topic, p, &keep).await?;
        Ok(Retention { kept: keep.into_iter().collect(), deleted, chunks_deleted, covered })
    }

    /// Deletes the chunks no manifest in `keep` names, once older than the
    /// grace period. Nothing is deleted when a kept manifest cannot be read.
    async fn collect_chunks(&self, layout: &Layout, topic: &str, p: u32, keep: &BTreeSet<i64>) -> Result<usize> {
        let mut named = HashSet::new();
        for offset in keep {
            match self.manifest(layout, topic, p, *offset).await {
                Ok(m) => named.extend(m.snapshot.chunks.into_iter().map(|c| c.name)),
                Err(e) => {
                    warn!(partition = p, offset, error = %e, "a kept manifest cannot be read; no chunk is deleted");
                    return Ok(0);
                }
            }
        }
        let older_than = now_ms().saturating_sub(self.cfg.chunk_grace_ms as i64);
        let metas: Vec<_> = self.objects.list(Some(&layout.chunks())).try_collect().await?;
        let mut deleted = 0;
        for meta in metas {
            let unnamed = meta.location.filename().is_some_and(|n| !named.contains(n));
            if unnamed && meta.last_modified.timestamp_millis() <= older_than {
                match self.objects.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(deleted)
    }

    async fn restore_async(&self, store: &Store, topic: &str, p: u32) -> Result<Restored> {
        let layout = Layout::new(&self.root, topic, p);
        let local = store.next_offset(topic, p)?;
        let Some((_, ptr)) = self.pointer(&layout).await? else {
            return Ok(Restored::Local { next_offset: local });
        };
        if local.is_some_and(|n| n >= ptr.next_offset) {
            return Ok(Restored::Local { next_offset: local });
        }
        // The pointer's snapshot first, then older ones still ahead of the local copy.
        let mut candidates = vec![ptr.next_offset];
        let older = self.manifest_offsets(&layout).await?;
        candidates.extend(older.into_iter().rev().filter(|o| *o < ptr.next_offset && local.is_none_or(|n| *o > n)));
        let dir = self.partition_dir(topic, p)?;
        for offset in candidates {
            match self.restore_one(store, &layout, &dir, topic, p, offset).await {
                Ok(restored) => {
                    metrics::counter!("omnifold_snapshot_restores_total", "partition" => p.to_string()).increment(1);
                    return Ok(restored);
                }
                Err(e) => {
                    warn!(partition = p, offset, error = %e, "this snapshot cannot be restored; trying an older one")
                }
            }
        }
        error!(
            partition = p,
            "no snapshot could be restored; the partition is read from the topic from its local offset"
        );
        Ok(Restored::Local { next_offset: local })
    }

    async fn restore_one(
        &self,
        store: &Store,
        layout: &Layout,
        dir: &FsPath,
        topic: &str,
        p: u32,
        offset: i64,
    ) -> Result<Restored> {
        let manifest = self.manifest(layout, topic, p, offset).await?;
        let (mut downloaded, mut downloaded_bytes, mut reused) = (0, 0, 0);
        for chunk in &manifest.snapshot.chunks {
            let path = dir.join(&chunk.name);
            if holds_chunk(&path, &chunk.name) {
                reused += 1;
                continue;
            }
            let bytes = self.objects.get(&layout.chunk(&chunk.name)).await?.bytes().await?;
            downloaded_bytes += bytes.len() as u64;
            let tmp = dir.join(format!(".{}.download", chunk.name));
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &path).await?;
            downloaded += 1;
        }
        store.import_partition(&manifest.snapshot, dir)?;
        tidy_local(dir, &manifest.snapshot)?;
        info!(
            partition = p,
            next_offset = offset,
            downloaded,
            downloaded_bytes,
            reused,
            "partition restored from a snapshot"
        );
        Ok(Restored::Snapshot { manifest: Box::new(manifest), downloaded, downloaded_bytes, reused })
    }
}

/// Whether the file at `path` is the chunk `name` (its bytes hash to it).
fn holds_chunk(path: &FsPath, name: &str) -> bool {
    std::fs::read(path).is_ok_and(|data| format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&data)) == name)
}

/// Removes the local files of `dir` that `snapshot` does not name: the
/// local copy holds one snapshot's chunks.
fn tidy_local(dir: &FsPath, snapshot: &PartitionSnapshot) -> Result<()> {
    let named: HashSet<&str> = snapshot.chunks.iter().map(|c| c.name.as_str()).collect();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| named.contains(n)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
