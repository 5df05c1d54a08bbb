//! The store's format version and its binding to one topic: a newer
//! omnifold opens (and upgrades) a store an older one wrote, an older one
//! refuses a newer store, and a store refuses a topic whose partition count
//! changed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use std::path::Path;

use omnifold_store::{Store, StoreConfig};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn open(path: &Path, read_only: bool) -> Result<std::sync::Arc<Store>, omnifold_store::Error> {
    Store::open(&StoreConfig { path: path.into(), read_only, ..StoreConfig::default() })
}

/// `fixtures/store-v1` was written by omnifold 0.1 (`omnifold replay
/// --file` of two members' 60 events into 2 partitions), before stores had
/// a format version.
#[test]
fn a_store_written_by_omnifold_0_1_is_upgraded_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1"), dir.path());
    let err = open(dir.path(), true).unwrap_err().to_string();
    assert!(err.contains("has format 1, from an older omnifold; start `omnifold serve` on it once"), "{err}");

    let store = open(dir.path(), false).unwrap();
    assert_eq!(store.format_version().unwrap(), Some(omnifold_store::FORMAT_VERSION));
    let m0 = store.member(0, "m-0").unwrap().unwrap();
    assert_eq!((m0.version.events_applied, m0.purchases.orders), (30, 10));
    let m1 = store.member(1, "m-1").unwrap().unwrap();
    assert_eq!(m1.version.events_applied, 30);
    // The upgrade set each partition's watermark to its latest event time.
    assert_eq!(store.watermark("omnifold.events", 0).unwrap(), m0.last_seen_at);
    assert_eq!(store.watermark("omnifold.events", 1).unwrap(), m1.last_seen_at);
    drop(store);
    // Upgraded once: read-only tools open it now.
    assert!(open(dir.path(), true).is_ok());
}

/// `fixtures/store-v2` was written by omnifold 0.2 (`omnifold replay --file
/// fixtures/store-v2.events.jsonl --partitions 2`): two members with twelve
/// orders each, one partly returned, kept inline in the member records.
#[test]
fn a_store_written_by_omnifold_0_2_gets_its_orders_split_out_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2"), dir.path());
    let err = open(dir.path(), true).unwrap_err().to_string();
    assert!(err.contains("has format 2, from an older omnifold"), "{err}");

    let store = open(dir.path(), false).unwrap();
    assert_eq!(store.format_version().unwrap(), Some(omnifold_store::FORMAT_VERSION));
    for (p, key) in [(0, "m-0"), (1, "m-1")] {
        let m = store.member(p, key).unwrap().unwrap();
        assert_eq!((m.version.events_applied, m.purchases.orders, m.purchases.history.len()), (14, 12, 12));
        let returned = m.purchases.history.get(&format!("o-{key}-3")).unwrap();
        assert_eq!(returned.returned_units.values().sum::<u32>(), 1);
    }
    drop(store);
    let store = open(dir.path(), true).unwrap();
    assert_eq!(store.member(0, "m-0").unwrap().unwrap().purchases.history.len(), 12);
}

#[test]
fn a_store_of_a_newer_format_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), false).unwrap();
    store.set_format_version_for_tests(omnifold_store::FORMAT_VERSION + 1).unwrap();
    drop(store);
    for read_only in [false, true] {
        let err = open(dir.path(), read_only).unwrap_err().to_string();
        assert!(
            err.contains(&format!("has format {}, written by a newer omnifold", omnifold_store::FORMAT_VERSION + 1)),
            "{err}"
        );
        assert!(err.contains("upgrade omnifold"), "{err}");
    }
}

#[test]
fn a_store_refuses_a_topic_whose_partition_count_changed_or_another_topic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), false).unwrap();
    store.bind_partitions("events", 4).unwrap();
    store.bind_partitions("events", 4).unwrap();
    let err = store.bind_partitions("events", 6).unwrap_err().to_string();
    assert!(err.contains("was built for 4 partitions of topic events, which has 6 now"), "{err}");
    assert!(err.contains("Changing the partition count"), "{err}");
    assert_eq!(store.partition_count("events").unwrap(), Some(4), "the stored count is not overwritten");
    let err = store.bind_partitions("other", 4).unwrap_err().to_string();
    assert!(err.contains("holds the state of topic events, not other"), "{err}");
}

/// A store of format 4 has its members' audience states but no member
/// lists: the upgrade lists every member a state says is in an audience.
#[test]
fn a_store_of_format_4_gets_its_audience_member_lists() {
    use omnifold_core::audience::{AudienceState, Membership};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), false).unwrap();
    let state = |ins: &[(&str, bool)]| AudienceState {
        memberships: ins
            .iter()
            .map(|(a, member)| {
                ((*a).to_owned(), Membership { member: *member, seq: if *member { 1 } else { 2 }, at: 0 })
            })
            .collect(),
        timer: None,
    };
    for (p, key, ins) in [
        (0, "m-1", state(&[("buyers", true), ("lapsed", false)])),
        (0, "m-2", state(&[("buyers", true)])),
        (1, "m-3", state(&[("buyers", true), ("lapsed", true)])),
        (1, "m-4", state(&[("buyers", false)])),
    ] {
        let mut b = store.batch("events", p);
        b.put_audience_state(&store, key, &ins, None);
        store.commit(b).unwrap();
    }
    store.set_format_version_for_tests(4).unwrap();
    let frozen = store.freeze();
    assert!(frozen.audience_members(0, "buyers", None, 10).unwrap().is_empty(), "format 4 has no lists");
    drop(frozen);
    drop(store);

    let store = open(dir.path(), false).unwrap();
    assert_eq!(store.format_version().unwrap(), Some(omnifold_store::FORMAT_VERSION));
    let frozen = store.freeze();
    let list = |p, a| frozen.audience_members(p, a, None, 10).unwrap();
    assert_eq!(list(0, "buyers"), ["m-1", "m-2"]);
    assert_eq!(list(1, "buyers"), ["m-3"]);
    assert!(list(0, "lapsed").is_empty());
    assert_eq!(list(1, "lapsed"), ["m-3"]);
    assert_eq!((frozen.audience_size(0, "buyers").unwrap(), frozen.audience_size(1, "buyers").unwrap()), (2, 1));
    // Pages go on after the member given.
    assert_eq!(frozen.audience_members(0, "buyers", Some("m-1"), 10).unwrap(), ["m-2"]);
    assert_eq!(frozen.audience_members(0, "buyers", None, 1).unwrap(), ["m-1"]);
}
