//! The one test that pays for the real Argon2id defaults (64 MiB, t=3, p=1).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use secureclaw_vault::{KdfParams, Vault, VaultError};

#[test]
fn default_parameters_create_and_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::create(
        dir.path(),
        "default-params passphrase",
        &KdfParams::default(),
    )
    .unwrap();
    v.put("settings", "k", b"v").unwrap();
    drop(v);
    let hdr: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("vault.header.json")).unwrap())
            .unwrap();
    assert_eq!(hdr["kdf"]["algorithm"], "argon2id");
    assert_eq!(hdr["kdf"]["memory_kib"], 65536);
    assert_eq!(hdr["kdf"]["iterations"], 3);
    assert_eq!(hdr["kdf"]["parallelism"], 1);
    use base64::Engine;
    let salt = base64::engine::general_purpose::STANDARD
        .decode(hdr["kdf"]["salt"].as_str().unwrap())
        .unwrap();
    assert_eq!(salt.len(), 16);
    assert!(matches!(
        Vault::open(dir.path(), "wrong"),
        Err(VaultError::WrongPassphrase)
    ));
    let v = Vault::open(dir.path(), "default-params passphrase").unwrap();
    assert_eq!(v.get("settings", "k").unwrap().as_deref(), Some(&b"v"[..]));
}
