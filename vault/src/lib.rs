// A library reports through return values (errors, warnings, traces); the caller decides what
// reaches the terminal. Unit tests may print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

//! secureclaw-vault: everything the engine persists, encrypted at rest.
//!
//! * Keys: master key = Argon2id(passphrase, random salt), used only to check the passphrase and
//!   unwrap a random root key; sub-keys come from HKDF-SHA256 with distinct labels
//!   (see [`keys`](crate::keys)). Nothing secret is ever written in the clear.
//! * Store: a redb database whose every value is AES-256-GCM sealed with a fresh random nonce and
//!   AAD binding it to its table and key. Table and row names are keyed hashes.
//! * Blobs: encrypted, content-addressed (keyed hash names), deduplicated, streamed in chunks.
//! * Ledger: append-only, each entry's `mac = HMAC-SHA256(mac_key, prev_mac || canonical_entry)`,
//!   verifiable in place or from an exported JSONL file plus a signed head.
//!
//! The on-disk layout of a state directory:
//!
//! ```text
//! vault.header.json   KDF params, salt, key-check value, wrapped root key (no secrets)
//! vault.redb          sealed tables, the ledger, counters
//! blobs/xx/yyyy...    encrypted blob files named by keyed hash
//! ```

pub mod agent;
mod blobs;
pub mod crypto;
mod error;
mod header;
mod keys;
mod ledger;
mod params;
mod passphrase;
mod remote;
mod shared;
mod store;
mod strict_json;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use blobs::{BlobId, Blobs, GcReport};
pub use error::{BreakReason, LedgerError, PassphraseError, VaultError};
pub use keys::DEFAULT_ROTATE_AFTER;
pub use ledger::{
    ChainedEntries, ExportHead, ExportLine, ExportReport, Ledger, LedgerEntry, LedgerHead,
    LedgerKey, LedgerRecord, LedgerSource, NewEntry, VerifyReport, VisitRecord, canonical_json,
    kind, parse_export_head, verify_export,
};
pub use params::{
    ENV_ITERATIONS, ENV_MEMORY_KB, ENV_PARALLELISM, ENV_SALT_BYTES, KdfParams, MAX_COST_KIB_PASSES,
    MAX_ITERATIONS, MAX_MEMORY_KIB, MAX_PARALLELISM, MAX_SALT_BYTES, MIN_SALT_BYTES,
};
pub use passphrase::{ENV_PASSPHRASE, PassphraseSource};
pub use remote::{SOCKET_FILE as READ_SOCKET_FILE, is_stale_socket};
pub use shared::SharedName;
pub use store::WriteTx;

use error::storage;
use keys::KeyRing;

pub(crate) const DB_FILE: &str = "vault.redb";
pub(crate) const BLOB_DIR: &str = "blobs";

/// Tunables that are not part of the on-disk format.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// Encryptions per data key before rotating to the next epoch (default 2^30).
    pub rotate_after: u64,
    /// Verify the checksum of every database page when opening (default true). redb trusts a
    /// cleanly closed file and may panic on one altered outside it; with the check, an altered
    /// file is refused with [`VaultError::DatabaseCorrupt`]. Costs one read of the whole file.
    pub check_integrity_on_open: bool,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self {
            rotate_after: DEFAULT_ROTATE_AFTER,
            check_integrity_on_open: true,
        }
    }
}

/// What `secureclaw vault status` shows. Contains nothing secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VaultStatus {
    pub state_dir: PathBuf,
    pub vault_id: String,
    pub created: String,
    pub kdf: KdfParams,
    pub key_epoch: u32,
    pub encryptions_in_epoch: u64,
    pub rotate_after: u64,
    pub ledger_entries: u64,
    pub blob_count: u64,
    pub blob_bytes: u64,
}

/// An open, unlocked vault. Cheap to clone (shared handle); `Send + Sync`.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The read socket served while this handle holds the database writable (first, so it
    /// stops before the database closes).
    owner: std::sync::OnceLock<remote::Owner>,
    dir: PathBuf,
    db_path: PathBuf,
    db: Db,
    keys: KeyRing,
    /// Serialises blob renames against garbage collection.
    blob_lock: Mutex<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// True when `state_dir` holds a vault header.
    pub fn exists(state_dir: &Path) -> bool {
        header::path(state_dir).is_file()
    }

    /// Creates a new vault in `state_dir` (created if missing) protected by `passphrase`.
    pub fn create(
        state_dir: &Path,
        passphrase: &str,
        params: &KdfParams,
    ) -> Result<Self, VaultError> {
        Self::create_with(state_dir, passphrase, params, VaultOptions::default())
    }

    pub fn create_with(
        state_dir: &Path,
        passphrase: &str,
        params: &KdfParams,
        opts: VaultOptions,
    ) -> Result<Self, VaultError> {
        params.validate()?;
        if passphrase.is_empty() {
            return Err(PassphraseError::Empty("the new passphrase".into()).into());
        }
        let db_path = prepare_new_dir(state_dir)?;
        let mut vault_id = [0u8; 16];
        crypto::random_bytes(&mut vault_id)?;
        let mut root = zeroize::Zeroizing::new([0u8; crypto::KEY_LEN]);
        crypto::random_bytes(root.as_mut())?;
        let created = ledger::now_rfc3339()?;
        let hdr = header::build(vault_id, created, &root, passphrase, params)?;

        let keys = KeyRing::new(vault_id, root, opts.rotate_after)?;
        let inner = new_database(state_dir, db_path, keys)?;
        // The header goes last: until it exists the directory is not a vault, so a crash here
        // leaves an unusable database that `create` refuses to overwrite rather than a vault
        // with a missing key.
        header::write(state_dir, &hdr)?;
        Ok(Self::serving(inner))
    }

    /// Wraps a writable handle and starts its read socket (see `remote`).
    fn serving(inner: Inner) -> Self {
        let inner = Arc::new(inner);
        if let Some(owner) = remote::serve(&inner) {
            // Just created, so never set before.
            let _ = inner.owner.set(owner);
        }
        Self { inner }
    }

    /// Opens the vault in `state_dir`. A wrong passphrase fails with
    /// [`VaultError::WrongPassphrase`] after reading only the header: the database is not opened.
    pub fn open(state_dir: &Path, passphrase: &str) -> Result<Self, VaultError> {
        Self::open_with(state_dir, passphrase, VaultOptions::default())
    }

    pub fn open_with(
        state_dir: &Path,
        passphrase: &str,
        opts: VaultOptions,
    ) -> Result<Self, VaultError> {
        let hdr = header::read(state_dir)?;
        let root = header::unlock(state_dir, &hdr, passphrase)?;
        Self::open_unwrapped(state_dir, &hdr, root, opts)
    }

    /// Opens the vault with the master key the unlock agent holds for it, without the
    /// passphrase: `Ok(None)` when the agent is off (`SECURECLAW_AGENT=off`), not running, holds
    /// no key for this vault, or holds one that no longer passes the header's key check (the
    /// passphrase was changed since).
    pub fn open_with_agent(state_dir: &Path) -> Result<Option<Self>, VaultError> {
        let hdr = header::read(state_dir)?;
        let Some(root) = agent::root_from_agent(state_dir, &hdr)? else {
            return Ok(None);
        };
        Self::open_unwrapped(state_dir, &hdr, root, VaultOptions::default()).map(Some)
    }

    /// [`Vault::open_for_reading`] with the agent's key; `Ok(None)` as for
    /// [`Vault::open_with_agent`].
    pub fn open_for_reading_with_agent(state_dir: &Path) -> Result<Option<Self>, VaultError> {
        let hdr = header::read(state_dir)?;
        let Some(root) = agent::root_from_agent(state_dir, &hdr)? else {
            return Ok(None);
        };
        match Self::open_read_only_unwrapped(state_dir, &hdr, root.clone()) {
            Err(needs @ VaultError::NeedsRecovery { .. }) => {
                match Self::open_unwrapped(state_dir, &hdr, root, VaultOptions::default()) {
                    Err(VaultError::ReadOnly { .. }) => Err(needs),
                    other => other,
                }
            }
            other => other,
        }
        .map(Some)
    }

    fn open_unwrapped(
        state_dir: &Path,
        hdr: &header::Parsed,
        root: crypto::SecretKey,
        opts: VaultOptions,
    ) -> Result<Self, VaultError> {
        let keys = KeyRing::new(hdr.vault_id, root, opts.rotate_after)?;
        let db_path = state_dir.join(DB_FILE);
        if !db_path.is_file() {
            return Err(VaultError::DatabaseCorrupt {
                path: db_path,
                reason: "the database file is missing".into(),
            });
        }
        let db = Db::Writable(open_db(state_dir, &db_path, opts.check_integrity_on_open)?);
        let inner = Inner::new(state_dir, db_path, db, keys);
        inner.check_db()?;
        Ok(Self::serving(inner))
    }

    /// Opens the vault for reading only: the database is opened read-only under a shared lock,
    /// nothing in the state directory is created, changed or locked for writing (no counter,
    /// no stat cache, no recovery), so it works on a backup mounted read-only or made
    /// unwritable, even for root. Every write through this handle fails with
    /// [`VaultError::ReadOnly`].
    ///
    /// redb runs its page-checksum check only on a writable open; data-level tampering is still
    /// caught by the AEAD on every value and the ledger MACs. A database that was not closed
    /// cleanly needs recovery, which writes: that is [`VaultError::NeedsRecovery`].
    ///
    /// While another process holds the database writable, the handle reads a consistent
    /// snapshot of the sealed database that process serves on `STATE/vault.sock` (ciphertext
    /// only: the passphrase is checked here as for a file); without one it fails with
    /// [`VaultError::Locked`] naming that process.
    pub fn open_read_only(state_dir: &Path, passphrase: &str) -> Result<Self, VaultError> {
        let hdr = header::read(state_dir)?;
        let root = header::unlock(state_dir, &hdr, passphrase)?;
        Self::open_read_only_unwrapped(state_dir, &hdr, root)
    }

    fn open_read_only_unwrapped(
        state_dir: &Path,
        hdr: &header::Parsed,
        root: crypto::SecretKey,
    ) -> Result<Self, VaultError> {
        let keys = KeyRing::new(hdr.vault_id, root, DEFAULT_ROTATE_AFTER)?;
        let db_path = state_dir.join(DB_FILE);
        if !db_path.is_file() {
            return Err(VaultError::DatabaseCorrupt {
                path: db_path,
                reason: "the database file is missing".into(),
            });
        }
        let db = match open_db_read_only(&db_path) {
            Err(VaultError::Locked { .. }) => {
                Db::Remote(remote::fetch(state_dir, &db_path, &hdr.vault_id)?)
            }
            other => Db::ReadOnly(other?),
        };
        let inner = Inner::new(state_dir, db_path, db, keys);
        inner.check_db()?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// For commands that only read: [`Vault::open_read_only`], except that a database needing
    /// recovery (not closed cleanly) is opened for writing, which recovers it, when the state
    /// directory allows; on a read-only one that stays [`VaultError::NeedsRecovery`].
    pub fn open_for_reading(state_dir: &Path, passphrase: &str) -> Result<Self, VaultError> {
        match Self::open_read_only(state_dir, passphrase) {
            Err(needs @ VaultError::NeedsRecovery { .. }) => {
                match Self::open(state_dir, passphrase) {
                    Err(VaultError::ReadOnly { .. }) => Err(needs),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// A new read-only handle on this vault with the keys this one holds (no passphrase, no
    /// Argon2id): a reader following what another process writes opens it again to see the
    /// writes since (a handle on a database another process holds reads a snapshot).
    pub fn reopen_for_reading(&self) -> Result<Self, VaultError> {
        let hdr = header::read(&self.inner.dir)?;
        Self::open_read_only_unwrapped(&self.inner.dir, &hdr, self.inner.keys.root().clone())
    }

    /// Whether this handle was opened with [`Vault::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        matches!(self.inner.db, Db::ReadOnly(_) | Db::Remote(_))
    }

    /// Changes the passphrase (and optionally the KDF parameters). Only the header is rewritten:
    /// the root key is re-wrapped under the new master key, no data is re-encrypted.
    pub fn rekey(
        &self,
        new_passphrase: &str,
        params: Option<&KdfParams>,
    ) -> Result<(), VaultError> {
        if new_passphrase.is_empty() {
            return Err(PassphraseError::Empty("the new passphrase".into()).into());
        }
        self.inner.require_writable()?;
        let old = header::read(&self.inner.dir)?;
        let params = params.copied().unwrap_or(old.params);
        let hdr = header::build(
            self.inner.keys.vault_id,
            old.created,
            self.inner.keys.root(),
            new_passphrase,
            &params,
        )?;
        header::write(&self.inner.dir, &hdr)
    }

    /// The state directory this vault lives in.
    pub fn state_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The vault's random id (hex); exported heads carry it.
    pub fn vault_id(&self) -> String {
        hex::encode(self.inner.keys.vault_id)
    }

    /// The append-only ledger.
    pub fn ledger(&self) -> Ledger<'_> {
        Ledger::new(&self.inner)
    }

    /// The encrypted content-addressed blob store.
    pub fn blobs(&self) -> Blobs<'_> {
        Blobs::new(&self.inner)
    }

    /// A keyed digest of user data, for ledger entries (which get exported): lowercase hex of
    /// `HMAC-SHA256(record-digest key, lp(what) || data)`, where `what` names the kind of data
    /// (`content`, `inputs`, `manifest`...). Equal data gives equal digests within this vault, so
    /// entries stay comparable, but without the vault nobody can test a guess against one (a plain
    /// SHA-256 of a short secret is confirmed by hashing candidates). The key is neither the ledger
    /// MAC key nor the names key: an auditor holding the ledger key learns nothing more.
    pub fn keyed_digest(&self, what: &str, data: &[u8]) -> String {
        hex::encode(self.inner.keys.digest(what, data))
    }

    /// A per-user 256-bit key, independent of every other key in the vault.
    pub fn user_key(&self, user_id: &str) -> Result<crypto::SecretKey, VaultError> {
        self.inner
            .keys
            .subkey(&format!("secureclaw/v1/user/{user_id}"))
    }

    /// Non-secret facts about the vault.
    pub fn status(&self) -> Result<VaultStatus, VaultError> {
        let hdr = header::read(&self.inner.dir)?;
        let (key_epoch, encryptions_in_epoch) = self.inner.keys.counter();
        let (blob_count, blob_bytes) = self.blobs().stats()?;
        Ok(VaultStatus {
            state_dir: self.inner.dir.clone(),
            vault_id: self.vault_id(),
            created: hdr.created,
            kdf: hdr.params,
            key_epoch,
            encryptions_in_epoch,
            rotate_after: self.inner.keys.rotate_after(),
            ledger_entries: self.ledger().head()?.count,
            blob_count,
            blob_bytes,
        })
    }
}

/// Makes `state_dir` for a new vault (private to its owner when this creates it; an existing
/// one is left as the user set it) and checks no vault is there yet; the database's path.
pub(crate) fn prepare_new_dir(state_dir: &Path) -> Result<PathBuf, VaultError> {
    let fresh_dir = !state_dir.exists();
    std::fs::create_dir_all(state_dir)
        .map_err(|e| VaultError::io(format!("creating {}", state_dir.display()), e))?;
    // Everything inside is ciphertext, but sizes and counts are not.
    #[cfg(unix)]
    if fresh_dir {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| VaultError::io(format!("restricting {}", state_dir.display()), e))?;
    }
    let db_path = state_dir.join(DB_FILE);
    if Vault::exists(state_dir) || db_path.exists() {
        return Err(VaultError::AlreadyExists {
            dir: state_dir.to_path_buf(),
        });
    }
    Ok(db_path)
}

/// A new database at `db_path`, initialised under `keys`. The caller writes the header after
/// it: until the header exists the directory is not a vault, so a crash in between leaves an
/// unusable database that is refused rather than a vault with a missing key.
pub(crate) fn new_database(
    state_dir: &Path,
    db_path: PathBuf,
    keys: KeyRing,
) -> Result<Inner, VaultError> {
    let db = Db::Writable(redb::Database::create(&db_path).map_err(|e| storage(&db_path, e))?);
    let inner = Inner::new(state_dir, db_path, db, keys);
    inner.init_db()?;
    Ok(inner)
}

/// The database, opened for writing or (for reading commands on a read-only state dir) not.
pub(crate) enum Db {
    Writable(redb::Database),
    ReadOnly(redb::ReadOnlyDatabase),
    /// A snapshot of a database another process holds, served by its read socket and held in
    /// memory; read-only like `ReadOnly`.
    Remote(redb::Database),
}

impl Db {
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Db::Writable(db) => redb::ReadableDatabase::begin_read(db),
            Db::ReadOnly(db) => redb::ReadableDatabase::begin_read(db),
            Db::Remote(db) => redb::ReadableDatabase::begin_read(db),
        }
    }
}

/// Whether an I/O error says the file system or the file refuses writing (a read-only mount,
/// an immutable file, no write permission).
fn refuses_writing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
    )
}

fn open_db(state_dir: &Path, db_path: &Path, check: bool) -> Result<redb::Database, VaultError> {
    // The integrity check turns altered files into errors; the catch_unwind is a second net for
    // when it is switched off (redb documents that a plain open may panic on such a file).
    let path = db_path.to_path_buf();
    match std::panic::catch_unwind(move || {
        redb::Builder::new()
            .set_check_integrity_on_open(check)
            .open(&path)
    }) {
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) if refuses_writing(&e) => {
            Err(VaultError::ReadOnly {
                dir: state_dir.to_path_buf(),
            })
        }
        Ok(r) => r.map_err(|e| storage(db_path, e)),
        Err(_) => Err(VaultError::DatabaseCorrupt {
            path: db_path.to_path_buf(),
            reason: "the database file could not be parsed".into(),
        }),
    }
}

fn open_db_read_only(db_path: &Path) -> Result<redb::ReadOnlyDatabase, VaultError> {
    let path = db_path.to_path_buf();
    match std::panic::catch_unwind(move || redb::Builder::new().open_read_only(&path)) {
        Ok(Err(redb::DatabaseError::RepairAborted)) => Err(VaultError::NeedsRecovery {
            path: db_path.to_path_buf(),
        }),
        Ok(r) => r.map_err(|e| storage(db_path, e)),
        Err(_) => Err(VaultError::DatabaseCorrupt {
            path: db_path.to_path_buf(),
            reason: "the database file could not be parsed".into(),
        }),
    }
}

impl Inner {
    fn new(state_dir: &Path, db_path: PathBuf, db: Db, keys: KeyRing) -> Self {
        Inner {
            owner: std::sync::OnceLock::new(),
            dir: state_dir.to_path_buf(),
            db_path,
            db,
            keys,
            blob_lock: Mutex::new(()),
        }
    }

    pub(crate) fn storage(&self, e: impl Into<redb::Error>) -> VaultError {
        storage(&self.db_path, e)
    }

    pub(crate) fn require_writable(&self) -> Result<(), VaultError> {
        match self.db {
            Db::Writable(_) => Ok(()),
            Db::ReadOnly(_) | Db::Remote(_) => Err(VaultError::ReadOnly {
                dir: self.dir.clone(),
            }),
        }
    }

    /// A write transaction; refused on a handle opened read-only.
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, VaultError> {
        match &self.db {
            Db::Writable(db) => db.begin_write().map_err(|e| self.storage(e)),
            Db::ReadOnly(_) | Db::Remote(_) => Err(VaultError::ReadOnly {
                dir: self.dir.clone(),
            }),
        }
    }
}
