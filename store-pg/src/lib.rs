// A library reports through return values; the caller decides what reaches the terminal.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

//! secureclaw-store-pg: run state, the ledger and the work queue in PostgreSQL, so several
//! servers and workers share them (docs/scaling.md).
//!
//! The database holds what a state directory's `vault.redb` holds: keyed-hash names and
//! sealed values, the HMAC-chained ledger with its sealed head. The vault seals, opens, chains
//! and verifies; PostgreSQL stores, serialises appends (a row lock on the ledger head) and
//! hands out work (`FOR UPDATE SKIP LOCKED`, leases, `LISTEN/NOTIFY`).
//!
//! [`PgStore::connect`] migrates the schema (migrations are in `store-pg/migrations/`) and
//! refuses a database whose schema is newer than this build. [`PgStore::join_vault`] opens the
//! node's state directory for the vault whose header the database keeps (publishing the
//! node's own header when the database has none). [`PgBackend`] is the engine's
//! [`secureclaw_engine::storage::StateBackend`] and the vault's [`LedgerSource`].

mod backend;
mod bridge;
mod error;
mod notify;
mod queue;
mod store;

pub use backend::PgBackend;
pub use error::PgError;
pub use queue::{Claimed, Expired, JobKind, JobState, LeaseKeeper, Lost, Queue};
pub use secureclaw_vault::LedgerSource;
pub use store::{PgStore, SCHEMA_VERSION, is_postgres_url};
