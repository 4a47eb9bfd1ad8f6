//! End-to-end tests of the `secureclaw` binary, one module per area, all in one test binary: the
//! whole workspace is linked once for them instead of once per file. Shared helpers are in
//! `tests/common`; the escape battery's cases in `tests/escape` (shared with the sandbox
//! crate's runner).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

#[path = "../common/mod.rs"]
mod common;

mod capture_attacks;
mod completions;
mod conventions;
mod docker_hardening;
mod egress;
mod escape;
mod examples_revert;
mod failure_paths;
mod guard;
mod inputs;
mod logs;
mod native;
mod plan;
mod provenance;
mod readonly_state;
mod revert;
mod revert_prop;
mod risk_model;
mod run;
mod sandbox;
mod session;
mod state_dir_attacks;
mod untrusted;
mod validate;
mod vault;
mod vault_access;
mod watch;
mod workflows;
