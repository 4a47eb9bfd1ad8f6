//! `Vault::open_read_only`: everything readable, every write refused with `ReadOnly`, and the
//! state directory left byte for byte (and mtime for mtime) as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{PASS, entry, new_vault};
use secureclaw_vault::{NewEntry, Vault, VaultError, verify_export};

fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = std::fs::metadata(&d).unwrap();
        out.insert(d.clone(), (Vec::new(), m.mtime(), m.mtime_nsec()));
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.clone(),
                    (std::fs::read(&p).unwrap(), m.mtime(), m.mtime_nsec()),
                );
            }
        }
    }
    out
}

fn read_only(e: VaultError) {
    assert!(matches!(e, VaultError::ReadOnly { .. }), "{e}");
}

#[test]
fn a_read_only_handle_reads_everything_and_writes_nothing() {
    let (dir, v) = new_vault();
    v.put("runs", "r1", b"record").unwrap();
    v.ledger().append(entry("r1", "a")).unwrap();
    let blob = v.blobs().put(b"pre-image").unwrap();
    drop(v);
    let before = fingerprint(dir.path());

    let ro = Vault::open_read_only(dir.path(), PASS).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(
        ro.get("runs", "r1").unwrap().as_deref(),
        Some(&b"record"[..])
    );
    assert_eq!(ro.keys("runs").unwrap(), vec!["r1".to_owned()]);
    assert_eq!(ro.blobs().get(&blob).unwrap(), b"pre-image");
    assert_eq!(ro.ledger().verify().unwrap().entries, 1);
    let mut out = Vec::new();
    let head = ro.ledger().export(None, &mut out).unwrap();
    verify_export(&out[..], &ro.ledger().key(), Some(&head)).unwrap();
    assert_eq!(ro.status().unwrap().ledger_entries, 1);
    // A second reader at the same time is fine (shared lock).
    let ro2 = Vault::open_read_only(dir.path(), PASS).unwrap();
    assert_eq!(ro2.ledger().head().unwrap().count, 1);

    read_only(ro.put("runs", "r2", b"x").unwrap_err());
    read_only(ro.delete("runs", "r1").unwrap_err());
    read_only(ro.ledger().append(NewEntry::new("t", "k")).unwrap_err());
    read_only(ro.write(|tx| tx.put("runs", "r3", b"y")).unwrap_err());
    read_only(ro.blobs().put(b"new").unwrap_err());
    read_only(ro.blobs().put_reader(&b"streamed"[..]).unwrap_err());
    read_only(ro.blobs().gc(&HashSet::new()).unwrap_err());
    read_only(ro.rekey("new passphrase", None).unwrap_err());
    drop((ro, ro2));
    assert!(before == fingerprint(dir.path()), "the state dir changed");
    // The read-only handle saw the same data a writable one does.
    let rw = Vault::open(dir.path(), PASS).unwrap();
    assert!(!rw.is_read_only());
    assert!(rw.blobs().contains(&blob));
}

#[test]
fn read_only_open_checks_the_passphrase_and_the_lock_like_a_writable_one() {
    let (dir, v) = new_vault();
    assert!(matches!(
        Vault::open_read_only(dir.path(), PASS),
        Err(VaultError::Locked { .. })
    ));
    drop(v);
    assert!(matches!(
        Vault::open_read_only(dir.path(), "wrong"),
        Err(VaultError::WrongPassphrase)
    ));
    let _ro = Vault::open_read_only(dir.path(), PASS).unwrap();
    assert!(matches!(
        Vault::open(dir.path(), PASS),
        Err(VaultError::Locked { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Vault::open_read_only(empty.path(), PASS),
        Err(VaultError::NotFound { .. })
    ));
}
