//! Shared by the end-to-end tests: the real `secureclaw` binary with a throwaway vault setup.
#![allow(dead_code)] // each test crate uses a different subset

use std::process::Command;

pub const TEST_PASSPHRASE: &str = "test passphrase";

/// The binary with a known passphrase and cheap Argon2 (the default parameters are tested in
/// the vault crate; here they would only make every command slow).
pub fn secureclaw() -> Command {
    secureclaw_with_passphrase(TEST_PASSPHRASE)
}

pub fn secureclaw_with_passphrase(pass: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_secureclaw"));
    with_vault_env(&mut c, pass);
    c
}

/// The same environment for a command that runs the binary indirectly (e.g. under `script`).
pub fn with_vault_env<'a>(c: &'a mut Command, pass: &str) -> &'a mut Command {
    c.env("SECURECLAW_PASSPHRASE", pass)
        .env("ARGON2_MEMORY_KB", "256")
        .env("ARGON2_ITERATIONS", "1")
}

/// Every path below `root` (directories included, symlinks listed but never followed), sorted.
pub fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}
