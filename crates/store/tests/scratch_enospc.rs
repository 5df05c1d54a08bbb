use omnifold_store::{Store, StoreConfig};
#[test]
fn scratch() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("m");
    std::fs::create_dir_all(&mnt).unwrap();
    assert!(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    let store = Store::open(&StoreConfig { path: mnt.join("db"), ..StoreConfig::default() }).unwrap();
    let mut failed_at = None;
    for i in 0..10_000 {
        let mut b = store.batch("t", 0);
        let mut m = omnifold_core::Member::new(format!("m-{i}"), omnifold_core::ProfileKind::KnownMember);
        m.traits.insert(
            "x".into(),
            omnifold_core::member::Stamped { value: "y".repeat(20_000), at: 0, event_id: "e".into() },
        );
        b.put_member(&store, &m);
        b.set_next_offset(&store, i + 1);
        if let Err(e) = store.commit(b) {
            eprintln!("fail at {i}: {e}");
            failed_at = Some(i);
            break;
        }
    }
    let i = failed_at.unwrap();
    for _ in 0..3 {
        let mut b = store.batch("t", 0);
        b.set_next_offset(&store, 5);
        eprintln!("again: {:?}", store.commit(b).err());
    }
    assert!(std::process::Command::new("mount").args(["-o", "remount,size=64m"]).arg(&mnt).status().unwrap().success());
    for k in 0..20 {
        let mut b = store.batch("t", 0);
        b.set_next_offset(&store, 5);
        let r = store.commit(b);
        eprintln!("after remount {k}: {:?}", r.as_ref().err());
        if r.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    eprintln!("next offset {:?} (failed at {i})", store.next_offset("t", 0));
    drop(store);
    let store = Store::open(&StoreConfig { path: mnt.join("db"), ..StoreConfig::default() });
    eprintln!("reopen: {:?}", store.as_ref().err());
    if let Ok(s) = store {
        eprintln!("next after reopen {:?}", s.next_offset("t", 0));
        let mut b = s.batch("t", 0);
        b.set_next_offset(&s, 7);
        eprintln!("write after reopen {:?}", s.commit(b).err());
    }
    std::process::Command::new("umount").arg("-l").arg(&mnt).status().unwrap();
}
