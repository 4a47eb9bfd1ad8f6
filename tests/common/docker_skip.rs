//! Tests that need a Docker daemon, or gVisor's runsc with a root engine, on a machine without
//! one. `scripts/test` finds the daemon unreachable (or runsc unusable), says so, and sets
//! `SECURECLAW_TEST_SKIP_DOCKER=1` (`SECURECLAW_TEST_SKIP_GVISOR=1`); each such test then returns
//! at once and appends its name to the file named by `SECURECLAW_TEST_SKIP_LOG`, which the script
//! prints at the end. Without the variable a missing daemon or runsc fails the test loudly:
//! nothing is ever skipped silently.

use std::io::Write;

pub const SKIP_VAR: &str = "SECURECLAW_TEST_SKIP_DOCKER";
pub const GVISOR_SKIP_VAR: &str = "SECURECLAW_TEST_SKIP_GVISOR";
pub const LOG_VAR: &str = "SECURECLAW_TEST_SKIP_LOG";

/// True when this test must be skipped for want of Docker (the caller returns at once).
pub fn skip_without_docker() -> bool {
    skip_when_set(SKIP_VAR, "no Docker daemon")
}

/// True when this test must be skipped for want of runsc or root (the caller returns at once).
#[allow(dead_code)] // not every test binary that includes this file runs gVisor tests
pub fn skip_without_gvisor() -> bool {
    skip_when_set(GVISOR_SKIP_VAR, "no usable runsc")
}

fn skip_when_set(var: &str, why: &str) -> bool {
    if std::env::var_os(var).is_none_or(|v| v.is_empty() || v == "0") {
        return false;
    }
    skip_because(&format!("{why} ({var} is set)"))
}

/// Skip this test, saying `why` on stderr and in the skip log (the caller returns at once).
pub fn skip_because(why: &str) -> bool {
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    eprintln!("skipped {test}: {why}");
    if let Some(log) = std::env::var_os(LOG_VAR)
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(f, "{} {test} ({why})", env!("CARGO_CRATE_NAME"));
    }
    true
}
