//! kill -9 during a burst of appends leaves a ledger that verifies, and every commit the child
//! acknowledged is still there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use secureclaw_vault::Vault;

#[test]
fn sigkill_during_appends_leaves_a_verifiable_ledger() {
    let (dir, v) = new_vault();
    drop(v);
    let mut acknowledged = 0u64;
    for round in 0..8u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vault-stress-append"))
            .arg(dir.path())
            .arg(if round % 2 == 0 { "1" } else { "25" })
            .env("SECURECLAW_PASSPHRASE", PASS)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Let it commit a varying number of batches, then kill it while it is mid-burst
        // (it never pauses between transactions).
        for _ in 0..(3 + round * 5) {
            let line = lines.next().expect("child exited early").unwrap();
            let seq: u64 = line.strip_prefix("committed ").unwrap().parse().unwrap();
            assert!(seq > acknowledged);
            acknowledged = seq;
        }
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(!status.success());
        // Drain what it printed before dying: those commits were acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(s) = line.strip_prefix("committed ") {
                acknowledged = s.parse().unwrap();
            }
        }
        let v = Vault::open(dir.path(), PASS).unwrap();
        let rep = v
            .ledger()
            .verify()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            rep.entries >= acknowledged,
            "round {round}: lost acknowledged commits ({} < {acknowledged})",
            rep.entries
        );
        acknowledged = rep.entries;
    }
    assert!(acknowledged > 50);
}
