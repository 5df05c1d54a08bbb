//! The snapshot store on a directory and on S3-compatible storage (moto's
//! server, installed by `make deps`): take, pointer, retention, restore.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use omnifold_core::{Member, ProfileKind};
use omnifold_snapshots::testing::{BUCKET, Moto};
use omnifold_snapshots::{Restored, SnapshotConfig, Snapshots};
use omnifold_store::{Store, StoreConfig};

fn open_store(dir: &Path) -> Arc<Store> {
    Store::open(&StoreConfig { path: dir.to_owned(), ..StoreConfig::default() }).unwrap()
}

/// Members `m-0000..` on `partition` with `views` views each, a dedupe
/// marker per member, folded to offset `next`.
fn fill(store: &Store, partition: u32, members: usize, views: u64, next: i64) {
    store.bind_partitions("events", 4).unwrap();
    let mut b = store.batch("events", partition);
    for i in 0..members {
        let mut m = Member::new(format!("m-{i:04}"), ProfileKind::KnownMember);
        m.browse.product_views = views;
        b.put_member(store, &mut m, None);
        b.mark_seen(store, &format!("e-{i}"), 1_000 + i as i64);
    }
    b.set_next_offset(store, next);
    store.commit(b).unwrap();
}

/// One member changed, the offset moved to `next`.
fn touch(store: &Store, partition: u32, member: &str, views: u64, next: i64) {
    let mut b = store.batch("events", partition);
    let mut m = Member::new(member, ProfileKind::KnownMember);
    m.browse.product_views = views;
    b.put_member(store, &mut m, None);
    b.set_next_offset(store, next);
    store.commit(b).unwrap();
}

fn members(store: &Store, partition: u32) -> Vec<Member> {
    store.scan_members(partition).map(|m| m.unwrap()).collect()
}

/// A snapshot store for an instance, with its own local chunk directory.
struct Instance {
    snapshots: Snapshots,
    _local: tempfile::TempDir,
}

fn instance(cfg: &SnapshotConfig, rt: &tokio::runtime::Runtime, name: &str) -> Instance {
    let local = tempfile::tempdir().unwrap();
    let snapshots = Snapshots::open(cfg, local.path().to_owned(), name, rt.handle().clone()).unwrap();
    Instance { snapshots, _local: local }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// Take, take again, take a change, restore elsewhere, and a stale
/// instance that cannot move the pointer back: on any backend.
fn take_and_restore(cfg: &SnapshotConfig) {
    let rt = runtime();
    let (a_dir, b_dir, c_dir) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, c) = (open_store(a_dir.path()), open_store(b_dir.path()), open_store(c_dir.path()));
    let (ia, ib, ic) = (instance(cfg, &rt, "a"), instance(cfg, &rt, "b"), instance(cfg, &rt, "c"));

    fill(&a, 1, 300, 3, 100);
    let first = ia.snapshots.take(&a, "events", 1, Some(0)).unwrap().expect("a first snapshot");
    assert_eq!(first.manifest.next_offset(), 100);
    assert_eq!((first.uploaded, first.reused), (first.manifest.snapshot.chunks.len(), 0));
    assert!(ia.snapshots.take(&a, "events", 1, Some(0)).unwrap().is_none(), "nothing newer to take");

    touch(&a, 1, "m-0007", 9, 101);
    let second = ia.snapshots.take(&a, "events", 1, Some(0)).unwrap().expect("a second snapshot");
    assert_eq!(second.manifest.next_offset(), 101);
    assert!(second.reused >= 1 && second.uploaded >= 1, "only what changed is uploaded: {second:?}");
    assert_eq!(ia.snapshots.latest("events", 1).unwrap().unwrap().next_offset(), 101);

    // A new owner with nothing restores the latest, then has nothing to restore.
    match ib.snapshots.restore(&b, "events", 1).unwrap() {
        Restored::Snapshot { manifest, downloaded, .. } => {
            assert_eq!((manifest.next_offset(), downloaded), (101, manifest.snapshot.chunks.len()));
        }
        other => panic!("expected a restore, got {other:?}"),
    }
    assert_eq!(members(&b, 1), members(&a, 1));
    assert_eq!(b.next_offset("events", 1).unwrap(), Some(101));
    assert_eq!(ib.snapshots.restore(&b, "events", 1).unwrap(), Restored::Local { next_offset: Some(101) });

    // An instance with an older copy takes nothing, and the pointer stays.
    fill(&c, 1, 10, 1, 50);
    assert!(ic.snapshots.take(&c, "events", 1, Some(0)).unwrap().is_none());
    assert_eq!(ic.snapshots.latest("events", 1).unwrap().unwrap().next_offset(), 101);
    // And it restores past its copy.
    assert!(matches!(ic.snapshots.restore(&c, "events", 1).unwrap(), Restored::Snapshot { .. }));
    assert_eq!(members(&c, 1), members(&a, 1));
    // Other partitions have no snapshot.
    assert!(ia.snapshots.latest("events", 2).unwrap().is_none());
}

#[test]
fn a_directory_store_takes_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    take_and_restore(&SnapshotConfig { url: dir.path().display().to_string(), ..SnapshotConfig::default() });
}

#[test]
fn retention_keeps_the_newest_and_the_oldest_the_log_reaches() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = SnapshotConfig {
        url: format!("file://{}", dir.path().display()),
        retain: 2,
        chunk_grace_ms: 0,
        ..SnapshotConfig::default()
    };
    let rt = runtime();
    let store = open_store(data.path());
    let i = instance(&cfg, &rt, "a");
    fill(&store, 0, 50, 1, 10);
    let mut last = None;
    for (n, next) in [10, 20, 30, 40].into_iter().enumerate() {
        touch(&store, 0, &format!("m-{n:04}"), 100 + n as u64, next);
        last = i.snapshots.take(&store, "events", 0, Some(15)).unwrap();
    }
    let retention = last.unwrap().retention;
    assert_eq!(retention.kept, vec![20, 30, 40], "the newest 2, and the oldest at or after the log's start");
    assert_eq!(retention.covered, Some(3));
    let held: Vec<i64> = i.snapshots.list("events", 0).unwrap().iter().map(|m| m.next_offset()).collect();
    assert_eq!(held, vec![20, 30, 40]);
    // Only chunks a kept manifest names remain.
    let named: std::collections::BTreeSet<String> = i
        .snapshots
        .list("events", 0)
        .unwrap()
        .into_iter()
        .flat_map(|m| m.snapshot.chunks.into_iter().map(|c| c.name))
        .collect();
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path().join("events/00000/chunks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(on_disk, named);
    // Once the log starts after every kept snapshot but the newest, only the newest 2 stay.
    touch(&store, 0, "m-0040", 7, 50);
    let r = i.snapshots.take(&store, "events", 0, Some(45)).unwrap().unwrap().retention;
    assert_eq!((r.kept, r.covered), (vec![40, 50], Some(1)));
}

#[test]
fn a_damaged_snapshot_gives_way_to_the_one_before() {
    let (dir, a_dir, b_dir) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = SnapshotConfig { url: dir.path().display().to_string(), ..SnapshotConfig::default() };
    let rt = runtime();
    let (a, b) = (open_store(a_dir.path()), open_store(b_dir.path()));
    let (ia, ib) = (instance(&cfg, &rt, "a"), instance(&cfg, &rt, "b"));
    fill(&a, 2, 40, 1, 10);
    let old = ia.snapshots.take(&a, "events", 2, None).unwrap().unwrap().manifest;
    touch(&a, 2, "m-0001", 5, 20);
    let new = ia.snapshots.take(&a, "events", 2, None).unwrap().unwrap().manifest;
    let changed = new.snapshot.chunks.iter().find(|c| !old.snapshot.chunks.contains(c)).unwrap();
    let victim = dir.path().join("events/00002/chunks").join(&changed.name);
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    match ib.snapshots.restore(&b, "events", 2).unwrap() {
        Restored::Snapshot { manifest, .. } => assert_eq!(manifest.next_offset(), 10),
        other => panic!("expected the older snapshot, got {other:?}"),
    }
    assert_eq!(b.next_offset("events", 2).unwrap(), Some(10));
    assert_eq!(members(&b, 2).len(), 40);
}

#[test]
fn bad_snapshot_configs_say_what_to_fix() {
    let bad = |cfg: SnapshotConfig, says: &str| {
        let e = cfg.validate().map(|_| ()).and_then(|_| {
            let rt = runtime();
            Snapshots::open(&cfg, std::env::temp_dir(), "x", rt.handle().clone()).map(|_| ())
        });
        let e = e.unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    };
    let on = |url: &str| SnapshotConfig { url: url.into(), ..SnapshotConfig::default() };
    bad(SnapshotConfig { retain: 0, ..on("/tmp/x") }, "retain must be 1 to 1000");
    bad(SnapshotConfig { every_ms: 10, ..on("/tmp/x") }, "every_ms must be 0");
    bad(on("gs://bucket"), "scheme gs:// is not supported");
    bad(on("s3:///prefix"), "names no bucket");
    let opts = BTreeMap::from([("aws_nonsense".to_owned(), "1".to_owned())]);
    bad(SnapshotConfig { options: opts.clone(), ..on("s3://bucket") }, "`aws_nonsense` is not an S3 option");
    bad(SnapshotConfig { options: opts, ..on("/tmp/x") }, "options apply to s3:// urls only");
}

#[test]
fn an_s3_store_takes_and_restores() {
    let moto = Moto::start();
    take_and_restore(&moto.config("omnifold"));
}

/// The pointer relies on a create-only put failing for a second writer:
/// true of both backends.
#[test]
fn create_only_puts_refuse_a_second_writer_on_both_backends() {
    use object_store::{ObjectStore, PutMode, path::Path as ObjPath};
    let rt = runtime();
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let s3 = {
        let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name(BUCKET);
        for (k, v) in &moto.options() {
            b = b.with_config(k.parse().unwrap(), v);
        }
        Arc::new(b.build().unwrap()) as Arc<dyn ObjectStore>
    };
    let fs =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap()) as Arc<dyn ObjectStore>;
    for store in [s3, fs] {
        rt.block_on(async {
            let path = ObjPath::from("x/latest/00000000000000000001");
            store.put_opts(&path, b"one".to_vec().into(), PutMode::Create.into()).await.unwrap();
            let second = store.put_opts(&path, b"two".to_vec().into(), PutMode::Create.into()).await;
            assert!(matches!(second, Err(object_store::Error::AlreadyExists { .. })), "{store}: {second:?}");
        });
    }
}
