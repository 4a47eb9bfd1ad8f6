// A library reports through return values (errors, warnings, traces); the caller decides what
// reaches the terminal. Unit tests may print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

//! The secureclaw engine: workflow model, validation, templating, risk, policy, scheduling.

pub mod actions;
pub mod diag;
pub mod events;
pub mod git;
pub mod inputs;
pub mod keyring;
pub mod model;
pub mod park;
pub mod planner;
pub mod policy;
pub mod record;
pub mod revert;
pub mod risk;
pub mod schedule;
pub mod scheduler;
pub mod schema;
pub mod screen;
pub mod session;
pub mod snapshot;
pub mod storage;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tools;
pub mod units;
pub mod validate;
pub mod watch;
pub mod workspace;
pub mod yaml;
