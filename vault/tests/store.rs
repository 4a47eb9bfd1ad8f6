#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test
mod common;

use common::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use secureclaw_vault::{KdfParams, PassphraseError, Vault, VaultError, VaultOptions};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn vault_is_send_sync_and_clone() {
    assert_send_sync::<Vault>();
}

#[test]
fn put_get_list_delete_roundtrip() {
    let (dir, v) = new_vault();
    v.put("runs", "r1", b"first").unwrap();
    v.put("runs", "r2", b"second").unwrap();
    v.put("creds", "github", b"ghp_secret").unwrap();
    assert_eq!(v.get("runs", "r1").unwrap().as_deref(), Some(&b"first"[..]));
    assert_eq!(v.get("runs", "missing").unwrap(), None);
    assert_eq!(v.get("no-such-table", "x").unwrap(), None);
    assert_eq!(v.keys("runs").unwrap(), vec!["r1", "r2"]);
    assert_eq!(v.keys("empty").unwrap(), Vec::<String>::new());
    v.put("runs", "r1", b"replaced").unwrap();
    assert_eq!(
        v.get("runs", "r1").unwrap().as_deref(),
        Some(&b"replaced"[..])
    );
    assert!(v.delete("runs", "r1").unwrap());
    assert!(!v.delete("runs", "r1").unwrap());
    assert_eq!(v.keys("runs").unwrap(), vec!["r2"]);
    drop(v);
    let v = Vault::open(dir.path(), PASS).unwrap();
    assert_eq!(
        v.get("creds", "github").unwrap().as_deref(),
        Some(&b"ghp_secret"[..])
    );
}

#[test]
fn typed_json_helpers() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Run {
        id: String,
        steps: u32,
    }
    let (_d, v) = new_vault();
    let r = Run {
        id: "abc".into(),
        steps: 3,
    };
    v.put_json("runs", "abc", &r).unwrap();
    assert_eq!(v.get_json::<Run>("runs", "abc").unwrap(), Some(r));
    v.put("runs", "bad", b"not json").unwrap();
    assert!(matches!(
        v.get_json::<Run>("runs", "bad"),
        Err(VaultError::Json { .. })
    ));
}

#[test]
fn transaction_is_atomic() {
    let (_d, v) = new_vault();
    let r: Result<(), VaultError> = v.write(|tx| {
        tx.put("runs", "a", b"1")?;
        tx.append(entry("a", "s"))?;
        Err(VaultError::InvalidParams("caller aborts".into()))
    });
    assert!(r.is_err());
    assert_eq!(v.get("runs", "a").unwrap(), None);
    assert_eq!(v.ledger().head().unwrap().count, 0);
    v.write(|tx| {
        tx.put("runs", "a", b"1")?;
        assert_eq!(tx.get("runs", "a")?.as_deref(), Some(&b"1"[..]));
        tx.append(entry("a", "s"))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(v.get("runs", "a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(v.ledger().verify().unwrap().entries, 1);
}

fn file_digest(p: &std::path::Path) -> (Vec<u8>, std::time::SystemTime) {
    let meta = std::fs::metadata(p).unwrap();
    (std::fs::read(p).unwrap(), meta.modified().unwrap())
}

#[test]
fn wrong_passphrase_is_refused_before_anything_is_read_or_written() {
    let (dir, v) = new_vault();
    v.put("runs", "r", b"x").unwrap();
    v.ledger().append(entry("r", "s")).unwrap();
    drop(v);
    let db = dir.path().join("vault.redb");
    let hdr = dir.path().join("vault.header.json");
    let before = (file_digest(&db), file_digest(&hdr));
    let listing = |p: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let files_before = listing(dir.path());
    let err = Vault::open(dir.path(), "wrong passphrase").unwrap_err();
    assert!(matches!(err, VaultError::WrongPassphrase), "{err}");
    assert!(err.to_string().contains("wrong passphrase"));
    assert_eq!((file_digest(&db), file_digest(&hdr)), before);
    assert_eq!(listing(dir.path()), files_before);
    // The database was not even opened: an exclusive lock held elsewhere does not matter.
    let _holder = raw_db(dir.path());
    assert!(matches!(
        Vault::open(dir.path(), "nope"),
        Err(VaultError::WrongPassphrase)
    ));
}

#[cfg(unix)]
#[test]
fn a_state_dir_created_by_the_vault_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    Vault::create(&state, PASS, &FAST).unwrap();
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn open_missing_and_create_twice() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!Vault::exists(dir.path()));
    assert!(matches!(
        Vault::open(dir.path(), PASS),
        Err(VaultError::NotFound { .. })
    ));
    let v = Vault::create(dir.path(), PASS, &FAST).unwrap();
    assert!(Vault::exists(dir.path()));
    assert!(matches!(
        Vault::create(dir.path(), PASS, &FAST),
        Err(VaultError::AlreadyExists { .. })
    ));
    drop(v);
    assert!(matches!(
        Vault::create(tempfile::tempdir().unwrap().path(), "", &FAST),
        Err(VaultError::Passphrase(PassphraseError::Empty(_)))
    ));
}

#[test]
fn second_open_while_held_reports_locked() {
    let (dir, _v) = new_vault();
    assert!(matches!(
        Vault::open(dir.path(), PASS),
        Err(VaultError::Locked { .. })
    ));
}

#[test]
fn a_flipped_bit_anywhere_in_a_value_is_rejected() {
    let (dir, v) = new_vault();
    v.put("creds", "token", b"secret").unwrap();
    drop(v);
    let (table, row, sealed) = {
        let db = raw_db(dir.path());
        let table = store_tables(&db).pop().unwrap();
        let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&table);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(def).unwrap();
        let (k, val) = t.first().unwrap().unwrap();
        (table.clone(), k.value().to_vec(), val.value().to_vec())
    };
    // One bit in every byte (the bit position rotates), reopening each time.
    for bit in (0..sealed.len()).map(|byte| byte * 8 + byte % 8) {
        {
            let db = raw_db(dir.path());
            let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&table);
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let txn = db.begin_write().unwrap();
            txn.open_table(def)
                .unwrap()
                .insert(row.as_slice(), bad.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let v = Vault::open(dir.path(), PASS).unwrap();
        match v.get("creds", "token") {
            Err(VaultError::Tampered { .. }) => {}
            other => panic!("bit {bit}: expected Tampered, got {other:?}"),
        }
    }
}

#[test]
fn values_swapped_between_rows_or_tables_fail_to_open() {
    let (dir, v) = new_vault();
    v.put("creds", "a", b"value-a").unwrap();
    v.put("creds", "b", b"value-b").unwrap();
    v.put("settings", "a", b"setting-a").unwrap();
    drop(v);
    {
        let db = raw_db(dir.path());
        let tables = store_tables(&db);
        assert_eq!(tables.len(), 2, "one redb table per vault table");
        // Find the table with two rows (creds) and swap its values.
        for name in &tables {
            let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(name);
            let rows: Vec<(Vec<u8>, Vec<u8>)> = {
                let txn = db.begin_read().unwrap();
                let t = txn.open_table(def).unwrap();
                t.iter()
                    .unwrap()
                    .map(|r| {
                        let (k, v) = r.unwrap();
                        (k.value().to_vec(), v.value().to_vec())
                    })
                    .collect()
            };
            if rows.len() == 2 {
                let txn = db.begin_write().unwrap();
                {
                    let mut t = txn.open_table(def).unwrap();
                    t.insert(rows[0].0.as_slice(), rows[1].1.as_slice())
                        .unwrap();
                    t.insert(rows[1].0.as_slice(), rows[0].1.as_slice())
                        .unwrap();
                }
                txn.commit().unwrap();
            }
        }
    }
    let v = Vault::open(dir.path(), PASS).unwrap();
    assert!(matches!(
        v.get("creds", "a"),
        Err(VaultError::Tampered { .. })
    ));
    assert!(matches!(
        v.get("creds", "b"),
        Err(VaultError::Tampered { .. })
    ));
    assert!(matches!(v.keys("creds"), Err(VaultError::Tampered { .. })));
    assert_eq!(
        v.get("settings", "a").unwrap().as_deref(),
        Some(&b"setting-a"[..])
    );
}

#[test]
fn value_copied_into_another_table_fails_to_open() {
    let (dir, v) = new_vault();
    v.put("creds", "k", b"secret").unwrap();
    v.put("settings", "k", b"public").unwrap();
    drop(v);
    {
        let db = raw_db(dir.path());
        let tables = store_tables(&db);
        let read = |name: &str| {
            let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(name);
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(def).unwrap();
            let (k, v) = t.first().unwrap().unwrap();
            (k.value().to_vec(), v.value().to_vec())
        };
        let (_, v0) = read(&tables[0]);
        let (k1, _) = read(&tables[1]);
        let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&tables[1]);
        let txn = db.begin_write().unwrap();
        txn.open_table(def)
            .unwrap()
            .insert(k1.as_slice(), v0.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let v = Vault::open(dir.path(), PASS).unwrap();
    let results = [v.get("creds", "k"), v.get("settings", "k")];
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Err(VaultError::Tampered { .. })))
            .count(),
        1
    );
}

#[test]
fn database_from_another_vault_is_refused() {
    let (a, va) = new_vault();
    let (b, vb) = new_vault();
    va.put("x", "y", b"z").unwrap();
    drop(va);
    drop(vb);
    std::fs::copy(a.path().join("vault.redb"), b.path().join("vault.redb")).unwrap();
    assert!(matches!(
        Vault::open(b.path(), PASS),
        Err(VaultError::ForeignDatabase)
    ));
}

#[test]
fn corrupted_or_missing_database_file_is_an_error_not_a_panic() {
    let (dir, v) = new_vault();
    for i in 0..50 {
        v.put("runs", &format!("r{i}"), &[i as u8; 100]).unwrap();
        v.ledger().append(entry("r", &format!("s{i}"))).unwrap();
    }
    drop(v);
    let path = dir.path().join("vault.redb");
    let pristine = std::fs::read(&path).unwrap();
    // Truncations.
    for len in [0usize, 100, 4096, pristine.len() / 2] {
        std::fs::write(&path, &pristine[..len]).unwrap();
        let r = Vault::open(dir.path(), PASS).and_then(|v| v.ledger().verify().map(|_| ()));
        assert!(r.is_err(), "truncated to {len} bytes was accepted");
    }
    // Garbage overwrites at many offsets: open + full read must never panic; any accepted
    // result must still be authentic (the data checks catch what redb does not).
    let step = (pristine.len() / 97).max(1);
    for off in (0..pristine.len()).step_by(step) {
        let mut bad = pristine.clone();
        for b in bad.iter_mut().skip(off).take(64) {
            *b ^= 0xa5;
        }
        std::fs::write(&path, &bad).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            let v = Vault::open(dir.path(), PASS)?;
            v.ledger().verify()?;
            for i in 0..50 {
                let got = v.get("runs", &format!("r{i}"))?;
                assert_eq!(
                    got,
                    Some(vec![i as u8; 100]),
                    "corruption silently changed a value"
                );
            }
            Ok::<_, VaultError>(())
        });
        assert!(outcome.is_ok(), "panic with corruption at offset {off}");
    }
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Vault::open(dir.path(), PASS),
        Err(VaultError::DatabaseCorrupt { .. })
    ));
}

#[test]
fn corrupt_header_is_reported_precisely() {
    let (dir, v) = new_vault();
    drop(v);
    let hp = dir.path().join("vault.header.json");
    let orig = std::fs::read_to_string(&hp).unwrap();
    std::fs::write(&hp, "{not json").unwrap();
    assert!(matches!(
        Vault::open(dir.path(), PASS),
        Err(VaultError::HeaderCorrupt { .. })
    ));
    // Tampering with the wrapped key: the passphrase checks out but the key does not unwrap.
    let mut h: serde_json::Value = serde_json::from_str(&orig).unwrap();
    let ct = h["wrapped_root_key"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut chars: Vec<char> = ct.chars().collect();
    chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
    h["wrapped_root_key"]["ciphertext"] = chars.into_iter().collect::<String>().into();
    std::fs::write(&hp, serde_json::to_string(&h).unwrap()).unwrap();
    let err = Vault::open(dir.path(), PASS).unwrap_err();
    assert!(matches!(err, VaultError::HeaderCorrupt { .. }), "{err}");
    // A future format version is named as such.
    let mut h: serde_json::Value = serde_json::from_str(&orig).unwrap();
    h["version"] = 99.into();
    std::fs::write(&hp, serde_json::to_string(&h).unwrap()).unwrap();
    assert!(matches!(
        Vault::open(dir.path(), PASS),
        Err(VaultError::UnsupportedVersion { found: 99, .. })
    ));
    // Weakened KDF parameters derive another key: refused as a wrong passphrase.
    let mut h: serde_json::Value = serde_json::from_str(&orig).unwrap();
    h["kdf"]["iterations"] = 2.into();
    std::fs::write(&hp, serde_json::to_string(&h).unwrap()).unwrap();
    assert!(matches!(
        Vault::open(dir.path(), PASS),
        Err(VaultError::WrongPassphrase)
    ));
}

#[test]
fn rekey_changes_the_passphrase_without_touching_data() {
    let (dir, v) = new_vault();
    v.put("creds", "k", b"secret").unwrap();
    v.ledger().append(entry("r", "s")).unwrap();
    let db_before = std::fs::read(dir.path().join("vault.redb")).unwrap();
    let new_params = KdfParams {
        memory_kib: 128,
        ..FAST
    };
    v.rekey("new passphrase", Some(&new_params)).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("vault.redb")).unwrap(),
        db_before,
        "rekey must not re-encrypt"
    );
    drop(v);
    assert!(matches!(
        Vault::open(dir.path(), PASS),
        Err(VaultError::WrongPassphrase)
    ));
    let v = Vault::open(dir.path(), "new passphrase").unwrap();
    assert_eq!(v.status().unwrap().kdf.memory_kib, 128);
    assert_eq!(
        v.get("creds", "k").unwrap().as_deref(),
        Some(&b"secret"[..])
    );
    assert_eq!(v.ledger().verify().unwrap().entries, 1);
    assert!(v.rekey("", None).is_err());
}

#[test]
fn data_key_rotates_before_the_limit_and_old_values_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = VaultOptions {
        rotate_after: 10,
        ..VaultOptions::default()
    };
    let v = Vault::create_with(dir.path(), PASS, &FAST, opts.clone()).unwrap();
    for i in 0..25 {
        v.put("t", &format!("k{i}"), format!("v{i}").as_bytes())
            .unwrap();
    }
    let st = v.status().unwrap();
    assert!(
        st.key_epoch >= 2,
        "expected rotations, epoch {}",
        st.key_epoch
    );
    assert!(st.encryptions_in_epoch <= 10);
    drop(v);
    // The counter survives reopening (it is committed with the ciphertexts).
    let v = Vault::open_with(dir.path(), PASS, opts).unwrap();
    let st2 = v.status().unwrap();
    assert_eq!(
        (st2.key_epoch, st2.encryptions_in_epoch),
        (st.key_epoch, st.encryptions_in_epoch)
    );
    for i in 0..25 {
        assert_eq!(
            v.get("t", &format!("k{i}")).unwrap().unwrap(),
            format!("v{i}").into_bytes()
        );
    }
    // Values sealed under different epochs really use different keys: the epoch is in the
    // sealed header (byte 1..5).
    let db = {
        drop(v);
        raw_db(dir.path())
    };
    let table = store_tables(&db).pop().unwrap();
    let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&table);
    let txn = db.begin_read().unwrap();
    let epochs: std::collections::BTreeSet<u32> = txn
        .open_table(def)
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| {
            let (_, v) = r.unwrap();
            u32::from_le_bytes(v.value()[1..5].try_into().unwrap())
        })
        .collect();
    assert!(epochs.len() >= 3, "{epochs:?}");
}

#[test]
fn kdf_params_from_env_lookup() {
    let p = KdfParams::from_lookup(|_| None).unwrap();
    assert_eq!(p, KdfParams::default());
    assert_eq!(
        (p.memory_kib, p.iterations, p.parallelism, p.salt_len),
        (65536, 3, 1, 16)
    );
    let p = KdfParams::from_lookup(|k| match k {
        "ARGON2_MEMORY_KB" => Some("131072".into()),
        "ARGON2_ITERATIONS" => Some("4".into()),
        "ARGON2_PARALLELISM" => Some("2".into()),
        "ARGON2_SALT_BYTES" => Some("32".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        (p.memory_kib, p.iterations, p.parallelism, p.salt_len),
        (131072, 4, 2, 32)
    );
    assert!(KdfParams::from_lookup(|k| (k == "ARGON2_SALT_BYTES").then(|| "8".into())).is_err());
    assert!(KdfParams::from_lookup(|k| (k == "ARGON2_ITERATIONS").then(|| "zero".into())).is_err());
    assert!(KdfParams::from_lookup(|k| (k == "ARGON2_ITERATIONS").then(|| "0".into())).is_err());
    assert!(KdfParams::from_lookup(|k| (k == "ARGON2_MEMORY_KB").then(|| "4".into())).is_err());
}

#[test]
fn user_keys_are_distinct_and_stable() {
    let (dir, v) = new_vault();
    let a = v.user_key("alice").unwrap();
    let b = v.user_key("bob").unwrap();
    assert_ne!(*a, *b);
    drop(v);
    let v = Vault::open(dir.path(), PASS).unwrap();
    assert_eq!(*v.user_key("alice").unwrap(), *a);
}

#[test]
fn concurrent_writers_never_fork_the_chain() {
    let (_d, v) = new_vault();
    std::thread::scope(|s| {
        for t in 0..4 {
            let v = v.clone();
            s.spawn(move || {
                for i in 0..25 {
                    if i % 2 == 0 {
                        v.ledger()
                            .append(entry(&format!("run{t}"), &format!("s{i}")))
                            .unwrap();
                    } else {
                        v.write(|tx| {
                            tx.put("runs", &format!("{t}-{i}"), b"x")?;
                            tx.append(entry(&format!("run{t}"), &format!("s{i}")))?;
                            Ok(())
                        })
                        .unwrap();
                    }
                }
            });
        }
    });
    let rep = v.ledger().verify().unwrap();
    assert_eq!(rep.entries, 100);
    let recs = v.ledger().entries(None).unwrap();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.entry.seq, i as u64 + 1);
    }
    for w in recs.windows(2) {
        assert_eq!(w[1].prev_mac, w[0].mac);
    }
}
