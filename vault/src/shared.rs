//! Sealing for a store outside the state directory: a database several machines share. Such a
//! store keeps exactly what `vault.redb` keeps (keyed-hash table and row names, values sealed
//! with AES-256-GCM bound to their table and row, the HMAC-chained ledger with its sealed head),
//! so whoever reads it learns no more than from a stolen state directory. The vault does every
//! cryptographic step; the store only stores, and serialises appends.
//!
//! Every node opens the same vault: the header (nothing secret) is kept in the shared store and
//! [`Vault::join`] makes a node's state directory from it. The node's own database then holds
//! only its blobs (the workspace pre-images of the runs it executed) and its counters.

use std::path::Path;

use crate::error::{PassphraseError, VaultError};
use crate::keys::KeyRing;
use crate::ledger::{ChainedEntries, Ledger, LedgerSource, NewEntry, chain_after};
use crate::store::{key_of_row, open_row, row_key, store_domain, table_name};
use crate::{VaultOptions, header};

/// Where a row of the shared store lives: both parts are keyed hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedName {
    /// The table's keyed name (`t_` and 32 hex digits).
    pub table: String,
    /// The row's keyed name.
    pub row: [u8; 32],
}

impl Vault {
    /// The keyed names of `table`/`key` in a shared store.
    pub fn shared_name(&self, table: &str, key: &str) -> SharedName {
        SharedName {
            table: table_name(&self.inner, table),
            row: row_key(&self.inner, table, key),
        }
    }

    /// The keyed name of a whole table, to list its rows.
    pub fn shared_table(&self, table: &str) -> String {
        table_name(&self.inner, table)
    }

    /// `value` sealed for `table`/`key` (the key is sealed with it, to list tables).
    pub fn seal_shared(&self, table: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, VaultError> {
        let plain =
            zeroize::Zeroizing::new([crate::keys::lp(key.as_bytes()).as_slice(), value].concat());
        let row = row_key(&self.inner, table, key);
        self.inner.keys.seal(&store_domain(table, &row), &plain)
    }

    /// Opens a value sealed by [`Vault::seal_shared`] for `table`/`key`; a value modified, or
    /// moved from another row, table or vault, is [`VaultError::Tampered`].
    pub fn open_shared(
        &self,
        table: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        open_row(&self.inner, table, key, sealed)
    }

    /// The key sealed in a row of `table` (to list a table), checked against the row it sits in.
    pub fn open_shared_key(
        &self,
        table: &str,
        row: &[u8],
        sealed: &[u8],
    ) -> Result<String, VaultError> {
        key_of_row(&self.inner, table, row, sealed)
    }

    /// `entries` chained after the ledger head sealed in `sealed_head` (`None`: empty). The
    /// store writes the result in the transaction that read the head, holding a lock on it.
    pub fn chain_shared(
        &self,
        sealed_head: Option<&[u8]>,
        entries: Vec<NewEntry>,
    ) -> Result<ChainedEntries, VaultError> {
        chain_after(&self.inner, sealed_head, entries)
    }

    /// The ledger kept in `source`: verify, export and read it as the vault's own.
    pub fn ledger_in<'v>(&'v self, source: &'v dyn LedgerSource) -> Ledger<'v> {
        Ledger::in_source(&self.inner, source)
    }

    /// The data-key epoch and the encryptions counted in it.
    pub fn encryption_counter(&self) -> (u32, u64) {
        self.inner.keys.counter()
    }

    /// Raises the counter to at least `(epoch, used)`: several nodes share one count, kept in
    /// the shared store, so the random-nonce limit holds for all of them together.
    pub fn raise_encryption_counter(&self, epoch: u32, used: u64) {
        let ours = self.inner.keys.counter();
        if (epoch, used) > ours {
            self.inner.keys.set_counter(epoch, used);
        }
    }

    /// The header file as it is on disk (nothing secret in it).
    pub fn header_bytes(&self) -> Result<Vec<u8>, VaultError> {
        header::read_bytes(&self.inner.dir)
    }

    /// Opens this node's state directory for the vault whose header a shared store keeps.
    ///
    /// * An empty or missing directory becomes a new node of that vault: the passphrase is
    ///   checked against the shared header, then a database for this node's blobs and the
    ///   header are written.
    /// * A directory of the same vault is opened; a shared header that differs (the passphrase
    ///   was changed) replaces the local copy once the passphrase opens it.
    /// * A directory of another vault is [`VaultError::OtherVault`].
    pub fn join(
        state_dir: &Path,
        shared_header: &[u8],
        passphrase: &str,
    ) -> Result<Self, VaultError> {
        if passphrase.is_empty() {
            return Err(PassphraseError::Empty("the passphrase".into()).into());
        }
        let shared = header::parse(state_dir, shared_header)?;
        if Self::exists(state_dir) {
            let local = header::read(state_dir)?;
            if local.vault_id != shared.vault_id {
                return Err(VaultError::OtherVault {
                    dir: state_dir.to_path_buf(),
                    local: hex::encode(local.vault_id),
                    shared: hex::encode(shared.vault_id),
                });
            }
            if header::read_bytes(state_dir)? != shared_header {
                // Unlocking proves the shared copy is this vault's, under this passphrase.
                header::unlock(state_dir, &shared, passphrase)?;
                header::write_bytes(state_dir, shared_header)?;
            }
            return Self::open(state_dir, passphrase);
        }
        let root = header::unlock(state_dir, &shared, passphrase)?;
        let db_path = crate::prepare_new_dir(state_dir)?;
        let keys = KeyRing::new(shared.vault_id, root, VaultOptions::default().rotate_after)?;
        let inner = crate::new_database(state_dir, db_path, keys)?;
        // Last, as in `create`: until the header exists the directory is not a vault.
        header::write_bytes(state_dir, shared_header)?;
        Ok(Self::serving(inner))
    }
}

use crate::Vault;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::{BreakReason, KdfParams, LedgerError};

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        salt_len: 16,
    };

    /// A shared store in memory: rows by name, ledger records by seq, the sealed head.
    #[derive(Default)]
    struct Memory {
        records: Mutex<BTreeMap<u64, Vec<u8>>>,
        head: Mutex<Option<Vec<u8>>>,
    }

    impl Memory {
        fn append(&self, v: &Vault, entries: Vec<NewEntry>) {
            let mut head = self.head.lock().unwrap();
            let chained = v.chain_shared(head.as_deref(), entries).unwrap();
            let mut records = self.records.lock().unwrap();
            records.extend(chained.sealed);
            *head = Some(chained.sealed_head);
        }
    }

    impl LedgerSource for Memory {
        fn read_ledger(
            &self,
            visit: &mut crate::VisitRecord<'_>,
        ) -> Result<Option<Vec<u8>>, VaultError> {
            for (seq, sealed) in self.records.lock().unwrap().iter() {
                visit(*seq, sealed)?;
            }
            Ok(self.head.lock().unwrap().clone())
        }

        fn read_head(&self) -> Result<Option<Vec<u8>>, VaultError> {
            Ok(self.head.lock().unwrap().clone())
        }
    }

    fn entry(n: u32) -> NewEntry {
        NewEntry::new("node", "step_start").run(format!("run-{n}"))
    }

    #[test]
    fn two_nodes_of_one_vault_open_each_others_rows_and_extend_one_chain() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = Vault::create(a_dir.path(), "pw", &FAST).unwrap();
        let b_state = b_dir.path().join("state");
        let b = Vault::join(&b_state, &a.header_bytes().unwrap(), "pw").unwrap();
        assert_eq!(a.vault_id(), b.vault_id());

        let sealed = a.seal_shared("runs", "run-1", b"record").unwrap();
        assert_eq!(b.open_shared("runs", "run-1", &sealed).unwrap(), b"record");
        let name = a.shared_name("runs", "run-1");
        assert_eq!(name, b.shared_name("runs", "run-1"));
        assert!(!name.table.contains("runs"));
        assert_eq!(
            b.open_shared_key("runs", &name.row, &sealed).unwrap(),
            "run-1"
        );
        // Moved to another row or table: refused.
        assert!(matches!(
            b.open_shared("runs", "run-2", &sealed),
            Err(VaultError::Tampered { .. })
        ));
        assert!(matches!(
            b.open_shared("parked", "run-1", &sealed),
            Err(VaultError::Tampered { .. })
        ));
        let other = a.shared_name("runs", "run-2");
        assert!(b.open_shared_key("runs", &other.row, &sealed).is_err());

        let store = Memory::default();
        store.append(&a, vec![entry(1), entry(2)]);
        store.append(&b, vec![entry(3)]);
        store.append(&a, vec![entry(4)]);
        for v in [&a, &b] {
            let report = v.ledger_in(&store).verify().unwrap();
            assert_eq!(report.entries, 4);
            let runs: Vec<_> = v
                .ledger_in(&store)
                .entries(None)
                .unwrap()
                .into_iter()
                .map(|r| r.entry.run.unwrap())
                .collect();
            assert_eq!(runs, ["run-1", "run-2", "run-3", "run-4"]);
        }
        // The export of the shared ledger verifies offline like any other.
        let mut out = Vec::new();
        let head = b.ledger_in(&store).export(None, &mut out).unwrap();
        assert_eq!(head.ledger_count, 4);
        let key = a.ledger_in(&store).key();
        let report = crate::verify_export(&out[..], &key, Some(&head)).unwrap();
        assert_eq!(report.entries, 4);
    }

    #[test]
    fn a_forked_append_that_skipped_the_head_lock_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let a = Vault::create(dir.path(), "pw", &FAST).unwrap();
        let store = Memory::default();
        store.append(&a, vec![entry(1)]);
        // Two nodes read the same head and both append: the second overwrites seq 2.
        let head = store.head.lock().unwrap().clone();
        let first = a.chain_shared(head.as_deref(), vec![entry(2)]).unwrap();
        let second = a.chain_shared(head.as_deref(), vec![entry(3)]).unwrap();
        store.records.lock().unwrap().extend(first.sealed);
        *store.head.lock().unwrap() = Some(first.sealed_head);
        store.append(&a, vec![entry(4)]);
        store.records.lock().unwrap().extend(second.sealed);
        let err = a.ledger_in(&store).verify().unwrap_err();
        assert!(
            matches!(
                err,
                VaultError::Ledger(LedgerError::Broken {
                    seq: 3,
                    reason: BreakReason::MacMismatch
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_dropped_tail_record_is_caught_by_the_sealed_head() {
        let dir = tempfile::tempdir().unwrap();
        let a = Vault::create(dir.path(), "pw", &FAST).unwrap();
        let store = Memory::default();
        store.append(&a, vec![entry(1), entry(2), entry(3)]);
        store.records.lock().unwrap().remove(&3);
        assert!(matches!(
            a.ledger_in(&store).verify(),
            Err(VaultError::Ledger(LedgerError::Broken {
                reason: BreakReason::HeadMismatch { .. },
                ..
            }))
        ));
        assert!(a.ledger_in(&store).append(entry(9)).is_err());
    }

    #[test]
    fn join_refuses_a_wrong_passphrase_and_another_vault_and_follows_a_rekey() {
        let a_dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let a = Vault::create(a_dir.path(), "pw", &FAST).unwrap();
        let shared = a.header_bytes().unwrap();
        let node = tempfile::tempdir().unwrap();
        let state = node.path().join("s");
        assert!(matches!(
            Vault::join(&state, &shared, "wrong"),
            Err(VaultError::WrongPassphrase)
        ));
        assert!(
            !state.join(crate::DB_FILE).exists(),
            "nothing written on refusal"
        );
        let other = Vault::create(other_dir.path(), "pw", &FAST).unwrap();
        assert!(matches!(
            Vault::join(other_dir.path(), &shared, "pw"),
            Err(VaultError::OtherVault { .. })
        ));
        drop(other);

        let joined = Vault::join(&state, &shared, "pw").unwrap();
        drop(joined);
        a.rekey("new pw", None).unwrap();
        let rekeyed = a.header_bytes().unwrap();
        // The old passphrase does not open the new shared header, and leaves the copy as it was.
        assert!(Vault::join(&state, &rekeyed, "pw").is_err());
        let joined = Vault::join(&state, &rekeyed, "new pw").unwrap();
        assert_eq!(joined.header_bytes().unwrap(), rekeyed);
        assert!(matches!(
            Vault::open(&state, "pw"),
            Err(VaultError::WrongPassphrase)
        ));
        // A corrupt shared header is an error, not a panic.
        assert!(Vault::join(&state, b"{not json", "new pw").is_err());
    }

    #[test]
    fn the_shared_counter_only_rises() {
        let dir = tempfile::tempdir().unwrap();
        let a = Vault::create(dir.path(), "pw", &FAST).unwrap();
        a.raise_encryption_counter(0, 1000);
        assert_eq!(a.encryption_counter(), (0, 1000));
        a.raise_encryption_counter(0, 10);
        assert_eq!(a.encryption_counter(), (0, 1000));
        a.raise_encryption_counter(1, 3);
        assert_eq!(a.encryption_counter(), (1, 3));
    }
}
