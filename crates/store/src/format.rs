//! The store's format version, kept in `meta`: a newer omnifold opens an
//! older store (upgrading it), an older omnifold refuses a newer one.
//!
//! - 1 (omnifold 0.1, no version key): dedupe markers hold the wall-clock
//!   time they were written.
//! - 2: dedupe markers hold event time and every partition has a watermark
//!   (`dedupe.rs`); kept join parts (`joins`). The upgrade sets each
//!   partition's watermark to its members' latest event time; old markers
//!   stay, their wall-clock times count as event times (they are later,
//!   so they are kept a little longer, never shorter).
//! - 3: a member's books (kept orders, open lots) are kept one entry per
//!   key (`books`) beside its record, which holds only their numbers
//!   (`Member::encode_hot`). The upgrade splits every member, each in one
//!   write with its entries, so an interrupted upgrade resumes where it
//!   stopped.
//! - 4: a member's dated spend (`Purchases::spend`) is kept beside its
//!   record as one `books` entry, and the record counts its marks (record
//!   format 5). Records of format 3 are read as they are, their spend
//!   rebuilt from their kept orders, and written in the new format when
//!   their member next changes: the upgrade only stamps the version, so
//!   that an older omnifold, which cannot read the new records, refuses the
//!   store instead of failing on its members.
//! - 5: each audience's members are listed per partition
//!   (`audience_members`) beside the members' audience states. The upgrade
//!   lists every member each state says is in an audience (`index_audiences`;
//!   it is also how a restored snapshot of format 4 gets its lists).

use std::path::Path;

use omnifold_core::Member;

use crate::{CF_AUDIENCE_MEMBERS, CF_AUDIENCES, CF_BOOKS, CF_MEMBERS, CF_META, Error, Result, Store, keys};

/// The format this omnifold writes.
pub const CURRENT: u32 = 5;

pub(crate) fn read(store: &Store) -> Result<Option<u32>> {
    let v = store.db.get_cf(store.cf(CF_META), keys::FORMAT_VERSION)?;
    Ok(v.and_then(|v| keys::decode_i64(&v)).map(|n| n as u32))
}

/// Whether the store holds anything yet (a fresh directory does not).
fn is_empty(store: &Store) -> Result<bool> {
    for cf in [CF_META, CF_MEMBERS] {
        if let Some(kv) = store.db.iterator_cf(store.cf(cf), rocksdb::IteratorMode::Start).next() {
            kv?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// Refuses a store of a newer format, upgrades an older one (unless opened
/// read-only) and stamps a fresh one.
pub(crate) fn check_and_upgrade(store: &Store, path: &Path, read_only: bool) -> Result<()> {
    let found = match read(store)? {
        Some(v) => v,
        None if is_empty(store)? => {
            if !read_only {
                write(store, CURRENT)?;
            }
            return Ok(());
        }
        None => 1,
    };
    if found > CURRENT {
        return Err(Error::Format(format!(
            "the store at {} has format {found}, written by a newer omnifold; this one reads formats up to {CURRENT}: \
             upgrade omnifold, or rebuild a store for this version with `omnifold replay`",
            path.display()
        )));
    }
    if found < CURRENT {
        if read_only {
            return Err(Error::Format(format!(
                "the store at {} has format {found}, from an older omnifold; start `omnifold serve` on it once to \
                 upgrade it to format {CURRENT} (dump and verify only read)",
                path.display()
            )));
        }
        if found < 2 {
            upgrade_from_1(store)?;
        }
        if found < 3 {
            upgrade_from_2(store)?;
        }
        if found < 5 {
            index_audiences(store, None)?;
        }
        write(store, CURRENT)?;
        tracing::info!(path = %path.display(), from = found, to = CURRENT, "store format upgraded");
    }
    Ok(())
}

pub(crate) fn write(store: &Store, version: u32) -> Result<()> {
    store.db.put_cf_opt(
        store.cf(CF_META),
        keys::FORMAT_VERSION,
        i64::from(version).to_be_bytes(),
        &store.write_opts,
    )?;
    Ok(())
}

/// 1 → 2: every partition's watermark from its members' latest event time,
/// and the version, in one batch.
fn upgrade_from_1(store: &Store) -> Result<()> {
    let mut latest: std::collections::BTreeMap<u32, i64> = std::collections::BTreeMap::new();
    for kv in store.db.iterator_cf(store.cf(CF_MEMBERS), rocksdb::IteratorMode::Start) {
        let (k, v) = kv?;
        let (Some(p), Ok(m)) = (keys::partition_of(&k), omnifold_core::Member::decode(&v)) else {
            continue;
        };
        if let Some(t) = m.last_seen_at {
            let e = latest.entry(p).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let topics = store.topics()?;
    let mut batch = rocksdb::WriteBatch::default();
    for topic in &topics {
        for (p, t) in &latest {
            batch.put_cf(store.cf(CF_META), keys::watermark(topic, *p), t.to_be_bytes());
        }
    }
    batch.put_cf(store.cf(CF_META), keys::FORMAT_VERSION, 2i64.to_be_bytes());
    store.db.write_opt(batch, &store.write_opts)?;
    Ok(())
}

/// Members split per write batch of the 2 → 3 upgrade.
const SPLIT_CHUNK: usize = 10_000;

/// 2 → 3: every member record with its books inline becomes a record and
/// one key per order and lot. Records already split are left as they are.
fn upgrade_from_2(store: &Store) -> Result<()> {
    let (members, books) = (store.cf(CF_MEMBERS), store.cf(CF_BOOKS));
    let mut batch = rocksdb::WriteBatch::default();
    let mut split = 0usize;
    for kv in store.db.iterator_cf(members, rocksdb::IteratorMode::Start) {
        let (k, v) = kv?;
        if !omnifold_core::member::is_full_encoding(&v) {
            continue;
        }
        let mut m = Member::decode(&v).map_err(|e| {
            Error::Format(format!(
                "the member record {} cannot be read for the upgrade to format 3 ({e}); rebuild the store \
                 with `omnifold replay`",
                String::from_utf8_lossy(k.get(4..).unwrap_or_default())
            ))
        })?;
        let Some(p) = keys::partition_of(&k).filter(|p| keys::scoped(*p, &m.key) == *k) else {
            return Err(Error::Format(format!("a member record's key does not name its member {}", m.key)));
        };
        crate::books::stage(&mut batch, books, p, &m, None);
        batch.put_cf(members, &k, m.encode_hot());
        split += 1;
        if split.is_multiple_of(SPLIT_CHUNK) {
            store.db.write_opt(std::mem::take(&mut batch), &store.write_opts)?;
            tracing::info!(members = split, "splitting member records from their orders and lots");
        }
    }
    batch.put_cf(store.cf(CF_META), keys::FORMAT_VERSION, 3i64.to_be_bytes());
    store.db.write_opt(batch, &store.write_opts)?;
    Ok(())
}

/// Lists every member an audience state says is in an audience, of one
/// partition or (with `None`) all: the lists of format 5, from states
/// written before them. Lists already there are rewritten the same.
pub(crate) fn index_audiences(store: &Store, partition: Option<u32>) -> Result<()> {
    let (states, lists) = (store.cf(CF_AUDIENCES), store.cf(CF_AUDIENCE_MEMBERS));
    let mut opts = rocksdb::ReadOptions::default();
    let start = partition.map(u32::to_be_bytes);
    if let Some(p) = &start {
        opts.set_iterate_upper_bound(keys::prefix_end(p));
    }
    let mut it = store.db.raw_iterator_cf_opt(states, opts);
    match &start {
        Some(p) => it.seek(p),
        None => it.seek_to_first(),
    }
    let (mut batch, mut listed) = (rocksdb::WriteBatch::default(), 0usize);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let (Some(p), Some(member)) = (keys::partition_of(k), k.get(4..).and_then(|m| std::str::from_utf8(m).ok()))
        else {
            return Err(Error::Format("an audience state's key is not a partition and a member".into()));
        };
        for audience in omnifold_core::audience::AudienceState::decode(v)?.names() {
            batch.put_cf(lists, keys::audience_member(p, audience, member), []);
            listed += 1;
        }
        if batch.len() >= SPLIT_CHUNK {
            store.db.write_opt(std::mem::take(&mut batch), &store.write_opts)?;
            tracing::info!(memberships = listed, "listing audience members");
        }
        it.next();
    }
    it.status()?;
    store.db.write_opt(batch, &store.write_opts)?;
    Ok(())
}
