#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use secureclaw_vault::{KdfParams, NewEntry, Vault, kind};

/// Cheap Argon2 parameters for tests (the defaults are tested once, in defaults.rs).
pub const FAST: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
    salt_len: 16,
};

pub const PASS: &str = "correct horse battery staple";

pub fn new_vault() -> (tempfile::TempDir, Vault) {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Vault::create(dir.path(), PASS, &FAST).expect("create vault");
    (dir, v)
}

pub fn entry(run: &str, step: &str) -> NewEntry {
    NewEntry::new("engine", kind::STEP_FINISHED)
        .run(run)
        .step(step)
        .tier("low_write")
        .result(serde_json::json!({"exit_code": 0}))
}

pub const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");
pub const LEDGER: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("ledger");

/// Opens the raw redb file as an attacker with write access to the state dir would.
pub fn raw_db(dir: &Path) -> redb::Database {
    redb::Database::open(dir.join("vault.redb")).expect("open raw redb")
}

/// Names of the sealed store tables (t_<keyed hash>).
pub fn store_tables(db: &redb::Database) -> Vec<String> {
    let txn = db.begin_read().expect("read");
    txn.list_tables()
        .expect("list")
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with("t_"))
        .collect()
}

pub fn ledger_rows(db: &redb::Database) -> Vec<(u64, Vec<u8>)> {
    let txn = db.begin_read().expect("read");
    let t = txn.open_table(LEDGER).expect("ledger");
    t.iter()
        .expect("iter")
        .map(|r| {
            let (k, v) = r.expect("row");
            (k.value(), v.value().to_vec())
        })
        .collect()
}

pub fn set_ledger_row(db: &redb::Database, seq: u64, value: Option<&[u8]>) {
    let txn = db.begin_write().expect("write");
    {
        let mut t = txn.open_table(LEDGER).expect("ledger");
        match value {
            Some(v) => {
                t.insert(seq, v).expect("insert");
            }
            None => {
                t.remove(seq).expect("remove");
            }
        }
    }
    txn.commit().expect("commit");
}

pub fn flip_bit(v: &[u8], byte: usize) -> Vec<u8> {
    let mut out = v.to_vec();
    out[byte] ^= 0x01;
    out
}
