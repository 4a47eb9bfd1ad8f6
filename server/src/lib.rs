// A library reports through return values; only the binary prints.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

//! `secureclaw serve`: the HTTP API over one engine session.
//!
//! ```text
//! request ─► body limit ─► router (/api/v1, /health, /metrics, /openapi.json, /docs, /redoc)
//!                              │
//!              Identity (Bearer JWT, in-memory session) ─► handler ─► engine Session
//! ```
//!
//! The server never touches the sandbox, the vault or the LLM crates: everything goes through
//! [`secureclaw_engine::session::Session`]. Its own records (accounts, tasks, settings) are
//! front-end rows of that session, sealed like the runs; rows of one user are sealed again
//! under that user's key.

pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod dispatch;
pub mod docs;
pub mod error;
pub mod extract;
pub mod hooks;
pub mod idempotency;
pub mod launch;
pub mod lost_worker;
pub mod ops;
pub mod retention;
pub mod schedules;
pub mod sources;
pub mod tasks;
pub mod tls;
pub mod ui;
pub mod watching;
pub mod workspaces;

pub use app::{AppState, ServeError, router, serve};
pub use config::ServerConfig;
pub use error::ApiError;
