//! The sealed key/value store on redb, and the write transaction shared with the ledger.

use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::VaultError;
use crate::keys::lp;
use crate::ledger::{self, LedgerRecord, NewEntry};
use crate::{Inner, Vault};

/// Plain (non-secret) bookkeeping plus a few sealed records, keyed by fixed names.
pub(crate) const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");
/// Ledger entries by sequence number, each value sealed.
pub(crate) const LEDGER: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("ledger");

pub(crate) const META_COUNTER: &str = "nonce_counter";
pub(crate) const META_VAULT_CHECK: &str = "vault_check";
pub(crate) const META_LEDGER_HEAD: &str = "ledger_head";

const DOMAIN_STORE: &[u8] = b"secureclaw/v1/store\0";
const DOMAIN_META: &[u8] = b"secureclaw/v1/meta\0";

pub(crate) fn meta_domain(name: &str) -> Vec<u8> {
    [DOMAIN_META, &lp(name.as_bytes())].concat()
}

/// The AAD of a store value: its table and its row (the row hash is a keyed function of the
/// table and key, so binding it binds both, and it is known when listing a table).
pub(crate) fn store_domain(table: &str, row: &[u8]) -> Vec<u8> {
    [DOMAIN_STORE, &lp(table.as_bytes()), &lp(row)].concat()
}

/// Table names and row keys are keyed hashes, so the database file does not reveal run ids,
/// step names or credential names.
pub(crate) fn table_name(inner: &Inner, table: &str) -> String {
    let h = inner.keys.name(&[b"table\0", table.as_bytes()]);
    format!("t_{}", hex::encode(&h[..16]))
}

pub(crate) fn row_key(inner: &Inner, table: &str, key: &str) -> [u8; 32] {
    inner
        .keys
        .name(&[b"row\0", &lp(table.as_bytes()), key.as_bytes()])
}

impl Inner {
    pub(crate) fn init_db(&self) -> Result<(), VaultError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.storage(e))?;
            let check = self
                .keys
                .seal(&meta_domain(META_VAULT_CHECK), &self.keys.vault_id)?;
            meta.insert(META_VAULT_CHECK, check.as_slice())
                .map_err(|e| self.storage(e))?;
            txn.open_table(LEDGER).map_err(|e| self.storage(e))?;
        }
        self.commit(txn)
    }

    /// Confirms the database was created with this header's root key and loads the counters.
    pub(crate) fn check_db(&self) -> Result<(), VaultError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let meta = txn.open_table(META).map_err(|e| match e {
            redb::TableError::TableDoesNotExist(_) => VaultError::DatabaseCorrupt {
                path: self.db_path.clone(),
                reason: "the vault tables are missing".into(),
            },
            other => self.storage(other),
        })?;
        let check = meta
            .get(META_VAULT_CHECK)
            .map_err(|e| self.storage(e))?
            .ok_or(VaultError::ForeignDatabase)?;
        match self
            .keys
            .open(&meta_domain(META_VAULT_CHECK), check.value())
        {
            Some(id) if id == self.keys.vault_id => {}
            _ => return Err(VaultError::ForeignDatabase),
        }
        if let Some(c) = meta.get(META_COUNTER).map_err(|e| self.storage(e))? {
            let v = c.value();
            if v.len() != 12 {
                return Err(VaultError::DatabaseCorrupt {
                    path: self.db_path.clone(),
                    reason: "nonce counter record has the wrong size".into(),
                });
            }
            let mut epoch = [0u8; 4];
            let mut used = [0u8; 8];
            epoch.copy_from_slice(&v[..4]);
            used.copy_from_slice(&v[4..]);
            self.keys
                .set_counter(u32::from_le_bytes(epoch), u64::from_le_bytes(used));
        }
        Ok(())
    }

    /// Commits `txn` after recording the encryption counter in it, so the persisted count always
    /// covers every committed ciphertext (the counter is not secret: it is stored plain).
    pub(crate) fn commit(&self, txn: redb::WriteTransaction) -> Result<(), VaultError> {
        {
            let mut meta = txn.open_table(META).map_err(|e| self.storage(e))?;
            let (epoch, used) = self.keys.counter();
            let mut rec = [0u8; 12];
            rec[..4].copy_from_slice(&epoch.to_le_bytes());
            rec[4..].copy_from_slice(&used.to_le_bytes());
            meta.insert(META_COUNTER, rec.as_slice())
                .map_err(|e| self.storage(e))?;
        }
        txn.commit().map_err(|e| self.storage(e))
    }

    /// Accounts for `n` encryptions done outside a store transaction (blob chunks) and makes the
    /// count durable before any of them is written.
    pub(crate) fn reserve_encryptions(&self, n: u64) -> Result<u32, VaultError> {
        let txn = self.begin_write()?;
        let epoch = self.keys.take(n)?;
        self.commit(txn)?;
        Ok(epoch)
    }
}

/// A write transaction over the sealed store and the ledger: everything in it commits
/// atomically (durably, fsync'd) or not at all. Obtain one with [`Vault::write`].
pub struct WriteTx<'v> {
    pub(crate) inner: &'v Inner,
    pub(crate) txn: redb::WriteTransaction,
}

impl WriteTx<'_> {
    /// Seals and stores `value` under `table`/`key`, replacing any previous value.
    pub fn put(&mut self, table: &str, key: &str, value: &[u8]) -> Result<(), VaultError> {
        let inner = self.inner;
        let def_name = table_name(inner, table);
        let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&def_name);
        let mut t = self.txn.open_table(def).map_err(|e| inner.storage(e))?;
        let plain = zeroize::Zeroizing::new([lp(key.as_bytes()).as_slice(), value].concat());
        let row = row_key(inner, table, key);
        let sealed = inner.keys.seal(&store_domain(table, &row), &plain)?;
        t.insert(row.as_slice(), sealed.as_slice())
            .map_err(|e| inner.storage(e))?;
        Ok(())
    }

    /// Reads a value as this transaction sees it.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, VaultError> {
        let inner = self.inner;
        let def_name = table_name(inner, table);
        let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&def_name);
        let t = match self.txn.open_table(def) {
            Ok(t) => t,
            Err(e) => return Err(inner.storage(e)),
        };
        let v = t
            .get(row_key(inner, table, key).as_slice())
            .map_err(|e| inner.storage(e))?;
        v.map(|v| open_row(inner, table, key, v.value()))
            .transpose()
    }

    /// Removes `table`/`key`; returns whether it existed.
    pub fn delete(&mut self, table: &str, key: &str) -> Result<bool, VaultError> {
        let inner = self.inner;
        let def_name = table_name(inner, table);
        let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&def_name);
        let mut t = self.txn.open_table(def).map_err(|e| inner.storage(e))?;
        let old = t
            .remove(row_key(inner, table, key).as_slice())
            .map_err(|e| inner.storage(e))?;
        Ok(old.is_some())
    }

    pub fn put_json<T: Serialize + ?Sized>(
        &mut self,
        table: &str,
        key: &str,
        value: &T,
    ) -> Result<(), VaultError> {
        let bytes = zeroize::Zeroizing::new(
            serde_json::to_vec(value).map_err(|e| VaultError::json(format!("{table}/{key}"), e))?,
        );
        self.put(table, key, &bytes)
    }

    /// Appends one ledger entry in this transaction.
    pub fn append(&mut self, entry: NewEntry) -> Result<LedgerRecord, VaultError> {
        ledger::append_in(self.inner, &self.txn, vec![entry])?
            .pop()
            .ok_or_else(|| VaultError::Crypto("append produced no record".into()))
    }

    /// Appends entries in this transaction.
    pub fn append_batch(
        &mut self,
        entries: Vec<NewEntry>,
    ) -> Result<Vec<LedgerRecord>, VaultError> {
        ledger::append_in(self.inner, &self.txn, entries)
    }
}

pub(crate) fn open_row(
    inner: &Inner,
    table: &str,
    key: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let tampered = || VaultError::Tampered {
        what: format!("{table}/{key}"),
    };
    let row = row_key(inner, table, key);
    let mut plain = inner
        .keys
        .open(&store_domain(table, &row), sealed)
        .ok_or_else(tampered)?;
    let stored_key = split_row(&plain).ok_or_else(tampered)?;
    if stored_key.0 != key.as_bytes() {
        return Err(tampered());
    }
    let start = stored_key.1;
    Ok(plain.split_off(start))
}

/// The key sealed in `row` of `table`, checked against the row it sits in.
pub(crate) fn key_of_row(
    inner: &Inner,
    table: &str,
    row: &[u8],
    sealed: &[u8],
) -> Result<String, VaultError> {
    let tampered = || VaultError::Tampered {
        what: format!("{table}/<row {}>", hex::encode(&row[..row.len().min(8)])),
    };
    let plain = zeroize::Zeroizing::new(
        inner
            .keys
            .open(&store_domain(table, row), sealed)
            .ok_or_else(tampered)?,
    );
    let (key_bytes, _) = split_row(&plain).ok_or_else(tampered)?;
    let key = std::str::from_utf8(key_bytes)
        .map_err(|_| tampered())?
        .to_owned();
    // The sealed key must hash to the row it sits in (defence in depth: the AAD already binds
    // the row).
    if row_key(inner, table, &key).as_slice() != row {
        return Err(tampered());
    }
    Ok(key)
}

/// Splits `lp(key) || value`, returning the key and the value's offset.
pub(crate) fn split_row(plain: &[u8]) -> Option<(&[u8], usize)> {
    let len = u64::from_le_bytes(plain.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
    Some((plain.get(8..end)?, end))
}

impl Vault {
    /// Runs `f` in one write transaction (store writes and ledger appends together) and commits
    /// it durably if `f` returns `Ok`; on `Err` nothing is written.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let inner = &*self.inner;
        let txn = inner.begin_write()?;
        let mut tx = WriteTx { inner, txn };
        let out = f(&mut tx)?;
        inner.commit(tx.txn)?;
        Ok(out)
    }

    /// Seals and stores `value` under `table`/`key` (one durable transaction).
    pub fn put(&self, table: &str, key: &str, value: &[u8]) -> Result<(), VaultError> {
        self.write(|tx| tx.put(table, key, value))
    }

    /// Stores `value` as JSON.
    pub fn put_json<T: Serialize + ?Sized>(
        &self,
        table: &str,
        key: &str,
        value: &T,
    ) -> Result<(), VaultError> {
        self.write(|tx| tx.put_json(table, key, value))
    }

    /// Reads and opens `table`/`key`. A value that was modified, or moved from another row,
    /// table or vault, fails with [`VaultError::Tampered`].
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, VaultError> {
        let inner = &*self.inner;
        let def_name = table_name(inner, table);
        let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&def_name);
        let txn = inner.db.begin_read().map_err(|e| inner.storage(e))?;
        let t = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(inner.storage(e)),
        };
        let v = t
            .get(row_key(inner, table, key).as_slice())
            .map_err(|e| inner.storage(e))?;
        v.map(|v| open_row(inner, table, key, v.value()))
            .transpose()
    }

    /// Reads a JSON value stored with [`Vault::put_json`].
    pub fn get_json<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
    ) -> Result<Option<T>, VaultError> {
        match self.get(table, key)? {
            None => Ok(None),
            Some(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| VaultError::json(format!("{table}/{key}"), e))
            }
        }
    }

    /// Removes `table`/`key`; returns whether it existed.
    pub fn delete(&self, table: &str, key: &str) -> Result<bool, VaultError> {
        self.write(|tx| tx.delete(table, key))
    }

    /// All keys of `table`, sorted. Every row is opened (authenticated) to recover its key.
    pub fn keys(&self, table: &str) -> Result<Vec<String>, VaultError> {
        let inner = &*self.inner;
        let def_name = table_name(inner, table);
        let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&def_name);
        let txn = inner.db.begin_read().map_err(|e| inner.storage(e))?;
        let t = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(inner.storage(e)),
        };
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| inner.storage(e))? {
            let (k, v) = row.map_err(|e| inner.storage(e))?;
            let key = key_of_row(inner, table, k.value(), v.value())?;
            out.push(key);
        }
        out.sort();
        Ok(out)
    }
}
