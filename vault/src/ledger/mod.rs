//! The append-only, HMAC-chained ledger, its JSONL export and the offline verifier.
//!
//! Each entry is serialised as canonical JSON ([`canonical_json`]) and chained:
//! `mac_n = HMAC-SHA256(mac_key, mac_{n-1} || canonical_entry_n)` with `mac_0` = 32 zero bytes.
//! The stored record is `mac || canonical_entry`, sealed with AES-256-GCM (AAD = its seq).
//! A sealed head (count, last mac) in the meta table catches deleted tail entries; an exported,
//! signed head catches a rolled-back database or a truncated export. Format: docs/ledger-format.md.

mod chain;
mod entry;
mod export;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests;

pub use chain::{
    ChainedEntries, Ledger, LedgerHead, LedgerKey, LedgerRecord, LedgerSource, VerifyReport,
    VisitRecord,
};
pub(crate) use chain::{append_in, chain_after};
pub(crate) use entry::now_rfc3339;
pub use entry::{LedgerEntry, NewEntry, canonical_json, kind};
pub use export::{ExportHead, ExportLine, ExportReport, parse_export_head, verify_export};
