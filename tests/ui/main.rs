//! The web UI in a real browser: Debian's chromium, driven over WebDriver by chromedriver,
//! against a real `secureclaw serve` on loopback whose planner is a scripted fake LLM.
//!
//! Screenshots of every page on the way land in `target/ui-screenshots/` (desktop and 360 px
//! wide); a failed wait leaves `FAILED-<test>.png` there too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

#[path = "../common/fake_anthropic.rs"]
mod fake_anthropic;
mod harness;
#[path = "../server/harness.rs"]
mod server;

mod csp;
mod isolation;
mod journey;
mod layout;
