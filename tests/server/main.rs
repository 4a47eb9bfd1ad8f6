//! The HTTP API end to end: a real `secureclaw serve` on loopback, real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

#[path = "../common/fake_anthropic.rs"]
mod fake_anthropic;
mod gitkit;
mod harness;

mod auth;
mod auth_attacks;
mod openapi;
mod ops;
mod smoke;
mod taskkit;

mod authz;
mod hooks;
mod idempotency;
mod instructions;
mod journey;
mod scaling;
mod schedules;
mod sources;
mod tasks;
mod ui_auth;
mod ui_pages;
mod ui_plan;
mod ui_task;
mod uikit;
mod watch;
