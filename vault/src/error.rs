//! Errors. Every failure the vault can detect has its own variant so that callers (and the CLI)
//! can say precisely what went wrong; nothing here is ever reported by a panic.

use std::path::PathBuf;

use crate::blobs::BlobId;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no vault in {dir} (run `secureclaw vault init` first)")]
    NotFound { dir: PathBuf },
    #[error("a vault already exists in {dir}")]
    AlreadyExists { dir: PathBuf },
    #[error(
        "wrong passphrase: the key check failed, nothing was read or written \
         (or the KDF parameters in the vault header were altered)"
    )]
    WrongPassphrase,
    #[error("corrupt header {path}: {reason}")]
    HeaderCorrupt { path: PathBuf, reason: String },
    #[error("vault format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error(
        "the state directory {dir} is read-only (a backup, a read-only mount, or not writable \
         by this user) and this needs to write to it; runs, show, ledger verify, ledger export \
         and vault status work without writing"
    )]
    ReadOnly { dir: PathBuf },
    #[error(
        "the vault database {path} was not closed cleanly and needs recovery, which writes to \
         it: run any command on a writable copy of the state directory first"
    )]
    NeedsRecovery { path: PathBuf },
    /// Another process holds the database open for writing and no snapshot could be had from
    /// its read socket (`why` says what happened when asking; empty for a writable open).
    #[error(
        "the vault database {path} is in use by {}{}; wait for it to finish or stop it",
        pid.map_or_else(|| "another process".to_owned(), crate::remote::describe_pid),
        if why.is_empty() { String::new() } else { format!(" and {why}") }
    )]
    Locked {
        path: PathBuf,
        pid: Option<u32>,
        why: String,
    },
    #[error("the vault database {path} is corrupt: {reason}")]
    DatabaseCorrupt { path: PathBuf, reason: String },
    #[error(
        "the vault database does not belong to this vault header \
         (copied from another state directory?)"
    )]
    ForeignDatabase,
    #[error(
        "{dir} holds vault {local}, but the shared store belongs to vault {shared}: give this \
         node an empty state directory (it copies the shared header) or the store of its own vault"
    )]
    OtherVault {
        dir: PathBuf,
        local: String,
        shared: String,
    },
    #[error(
        "sealed value {what} failed authentication: it was modified, moved from another row, \
         or comes from another vault"
    )]
    Tampered { what: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("blob {0} is not in the blob store")]
    BlobNotFound(BlobId),
    #[error("blob {id} is corrupt: {reason}")]
    BlobCorrupt { id: String, reason: String },
    #[error("invalid parameter: {0}")]
    InvalidParams(String),
    #[error("passphrase: {0}")]
    Passphrase(#[from] PassphraseError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vault storage error: {0}")]
    Storage(#[source] Box<redb::Error>),
    #[error("malformed JSON in {what}: {reason}")]
    Json { what: String, reason: String },
    #[error("cryptographic failure: {0}")]
    Crypto(String),
}

/// Why a ledger (live or exported) is not what was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakReason {
    #[error(
        "the sealed entry does not open (modified, moved to another position, or from another vault)"
    )]
    Unsealable,
    #[error("the HMAC does not match (entry modified, reordered, or from another vault)")]
    MacMismatch,
    #[error("entry is missing: expected seq {expected}, found seq {found}")]
    Missing { expected: u64, found: u64 },
    #[error("entry carries seq {inner} but is stored at seq {outer}")]
    SeqMismatch { outer: u64, inner: u64 },
    #[error("prev_mac does not link to the previous entry's mac")]
    BrokenLink,
    #[error("entries are out of order (seq {found} after seq {previous})")]
    OutOfOrder { previous: u64, found: u64 },
    #[error("malformed entry: {0}")]
    Malformed(String),
    #[error(
        "the ledger ends at seq {last} but its sealed head records {head_count} entries (tail entries deleted or head rolled back)"
    )]
    HeadMismatch { last: u64, head_count: u64 },
    #[error(
        "the entry exists but its mac differs from the exported head's (ledger rewritten or rolled back)"
    )]
    HeadMacMismatch,
    #[error(
        "the ledger has {found} entries, fewer than the {expected} recorded in the exported head (truncated or rolled back)"
    )]
    Truncated { expected: u64, found: u64 },
}

/// Ledger verification failures.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The live ledger is broken at `seq` (the first bad entry).
    #[error("ledger broken at entry seq {seq}: {reason}")]
    Broken { seq: u64, reason: BreakReason },
    /// An exported JSONL file is broken at `line` (1-based).
    #[error("ledger export broken at line {line}{}: {reason}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
    ExportBroken {
        line: u64,
        seq: Option<u64>,
        reason: BreakReason,
    },
    /// The export has fewer entries than its signed head says (lines cut off).
    #[error(
        "ledger export is truncated: the signed head lists {expected} entries ending in mac {expected_last_mac}, the file has {found}"
    )]
    ExportTruncated {
        expected: u64,
        found: u64,
        expected_last_mac: String,
    },
    /// The export head's own MAC does not verify with this key.
    #[error("export head is not authentic with this key: {0}")]
    HeadInvalid(String),
}

/// Failures while obtaining a passphrase.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read passphrase from {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("passphrase from {0} is not valid UTF-8")]
    NotUnicode(String),
    #[error("passphrase from {0} is empty")]
    Empty(String),
    #[error("the two passphrases entered do not match")]
    Mismatch,
    #[error(
        "no passphrase available: stdin is not a terminal; set SECURECLAW_PASSPHRASE or pass \
         --passphrase-file / --passphrase-fd"
    )]
    NoTerminal,
}

impl VaultError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn json(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Json {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}

/// Converts any redb error, naming lock conflicts and corruption precisely.
pub(crate) fn storage(path: &std::path::Path, e: impl Into<redb::Error>) -> VaultError {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => VaultError::Locked {
            path: path.to_path_buf(),
            pid: crate::remote::holder_pid(path),
            why: String::new(),
        },
        redb::Error::Corrupted(reason) => VaultError::DatabaseCorrupt {
            path: path.to_path_buf(),
            reason,
        },
        redb::Error::UpgradeRequired(v) => VaultError::DatabaseCorrupt {
            path: path.to_path_buf(),
            reason: format!("redb file format {v} needs an upgrade"),
        },
        other => VaultError::Storage(Box::new(other)),
    }
}
