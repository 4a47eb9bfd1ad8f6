//! KDF parameters are read from the header, which anyone with write access to the state dir can
//! edit. Out-of-range values must be refused as a corrupt header, naming the field, before any
//! Argon2 work: 4e9 passes or 8 GiB of memory must not hang or exhaust the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{FAST, PASS, new_vault};
use secureclaw_vault::{KdfParams, LedgerKey, MAX_ITERATIONS, Vault, VaultError};
use serde_json::{Value, json};

fn header_with(dir: &std::path::Path, orig: &Value, field: &str, value: Value) {
    let mut h = orig.clone();
    match value {
        Value::Null if field.ends_with("!missing") => {
            let name = field.trim_end_matches("!missing");
            h["kdf"].as_object_mut().unwrap().remove(name);
        }
        v => h["kdf"][field] = v,
    }
    std::fs::write(
        dir.join("vault.header.json"),
        serde_json::to_vec_pretty(&h).unwrap(),
    )
    .unwrap();
}

fn assert_corrupt_naming(err: VaultError, field: &str, case: &str) {
    let shown = err.to_string();
    match &err {
        VaultError::HeaderCorrupt { reason, .. } => assert!(
            reason.contains(&format!("kdf.{field}")),
            "{case}: the reason must name kdf.{field}: {reason}"
        ),
        other => panic!("{case}: expected a corrupt header, got {other:?}"),
    }
    assert!(shown.contains("corrupt header"), "{case}: {shown}");
}

fn out_of_range_cases() -> Vec<(&'static str, Value)> {
    vec![
        // Too big.
        ("iterations", json!(4_000_000_000u64)),
        ("iterations", json!(u32::MAX)),
        ("iterations", json!(MAX_ITERATIONS + 1)),
        ("iterations", json!(5_000_000_000u64)),
        ("memory_kib", json!(8u64 * 1024 * 1024)),
        ("memory_kib", json!(u32::MAX)),
        ("memory_kib", json!(1u64 << 40)),
        ("parallelism", json!(256)),
        ("parallelism", json!(16_777_215)),
        ("argon2_version", json!(1u64 << 33)),
        // Zero and below Argon2's floor.
        ("iterations", json!(0)),
        ("memory_kib", json!(0)),
        ("memory_kib", json!(7)),
        ("parallelism", json!(0)),
        // Negative.
        ("iterations", json!(-1)),
        ("memory_kib", json!(-65536)),
        ("parallelism", json!(-1)),
        // Floats, including ones JSON writes with an exponent.
        ("iterations", json!(3.0)),
        ("iterations", json!(4e9)),
        ("iterations", json!(1.5)),
        ("memory_kib", json!(65536.5)),
        ("memory_kib", json!(1e300)),
        ("parallelism", json!(1.0)),
        // Strings, booleans, null, containers, absent.
        ("iterations", json!("3")),
        ("memory_kib", json!("65536")),
        ("parallelism", json!("1")),
        ("iterations", json!(true)),
        ("memory_kib", json!(null)),
        ("parallelism", json!([1])),
        ("iterations", json!({"n": 3})),
        ("iterations!missing", Value::Null),
        ("memory_kib!missing", Value::Null),
    ]
}

#[test]
fn every_kdf_parameter_out_of_range_is_a_corrupt_header_naming_it() {
    let (dir, v) = new_vault();
    drop(v);
    let hp = dir.path().join("vault.header.json");
    let orig: Value = serde_json::from_slice(&std::fs::read(&hp).unwrap()).unwrap();
    for (field, value) in out_of_range_cases() {
        let name = field.trim_end_matches("!missing");
        let case = format!("kdf.{field} = {value}");
        header_with(dir.path(), &orig, field, value);
        assert_corrupt_naming(Vault::open(dir.path(), PASS).unwrap_err(), name, &case);
        // The offline verifier's key derivation reads the same header.
        assert_corrupt_naming(
            LedgerKey::unlock(dir.path(), PASS).unwrap_err(),
            name,
            &case,
        );
    }
}

#[test]
fn memory_times_passes_is_bounded_too() {
    let (dir, v) = new_vault();
    drop(v);
    let hp = dir.path().join("vault.header.json");
    let orig: Value = serde_json::from_slice(&std::fs::read(&hp).unwrap()).unwrap();
    let mut h = orig.clone();
    h["kdf"]["memory_kib"] = json!(4u64 * 1024 * 1024);
    h["kdf"]["iterations"] = json!(8);
    std::fs::write(&hp, serde_json::to_vec(&h).unwrap()).unwrap();
    assert_corrupt_naming(
        Vault::open(dir.path(), PASS).unwrap_err(),
        "iterations",
        "4 GiB x 8 passes",
    );
}

#[test]
fn salt_length_out_of_range_is_named() {
    use base64::Engine as _;
    let (dir, v) = new_vault();
    drop(v);
    let hp = dir.path().join("vault.header.json");
    let orig: Value = serde_json::from_slice(&std::fs::read(&hp).unwrap()).unwrap();
    for len in [0usize, 8, 15, 65, 4096] {
        let salt = base64::engine::general_purpose::STANDARD.encode(vec![7u8; len]);
        header_with(dir.path(), &orig, "salt", json!(salt));
        assert_corrupt_naming(
            Vault::open(dir.path(), PASS).unwrap_err(),
            "salt",
            &format!("{len}-byte salt"),
        );
    }
    header_with(dir.path(), &orig, "salt", json!("not base64!"));
    assert_corrupt_naming(Vault::open(dir.path(), PASS).unwrap_err(), "salt", "junk");
}

#[test]
fn a_duplicated_kdf_key_or_a_huge_header_is_corrupt() {
    let (dir, v) = new_vault();
    drop(v);
    let hp = dir.path().join("vault.header.json");
    let orig = std::fs::read_to_string(&hp).unwrap();
    // A second `iterations` after the real one: serde_json alone would keep the last.
    let dup = orig.replacen(
        "\"iterations\": 1,",
        "\"iterations\": 1,\n    \"iterations\": 4000000000,",
        1,
    );
    assert_ne!(dup, orig);
    std::fs::write(&hp, &dup).unwrap();
    let err = Vault::open(dir.path(), PASS).unwrap_err();
    assert!(
        matches!(&err, VaultError::HeaderCorrupt { reason, .. } if reason.contains("duplicate key `iterations`")),
        "{err}"
    );
    let mut huge = orig.trim_end().trim_end_matches('}').to_owned();
    huge.push_str(&format!(",\"pad\":\"{}\"}}", "x".repeat(1 << 20)));
    std::fs::write(&hp, &huge).unwrap();
    let err = Vault::open(dir.path(), PASS).unwrap_err();
    assert!(
        matches!(&err, VaultError::HeaderCorrupt { reason, .. } if reason.contains("larger than")),
        "{err}"
    );
}

#[test]
fn values_inside_the_bounds_still_open_and_create_enforces_the_same_bounds() {
    // The largest pass count is accepted (cheap here: 64 KiB of memory).
    let dir = tempfile::tempdir().unwrap();
    let p = KdfParams {
        iterations: MAX_ITERATIONS,
        ..FAST
    };
    Vault::create(dir.path(), PASS, &p).unwrap();
    Vault::open(dir.path(), PASS).unwrap();
    // Creating with what reading refuses is refused too, naming the variable.
    for bad in [
        KdfParams {
            iterations: MAX_ITERATIONS + 1,
            ..FAST
        },
        KdfParams {
            memory_kib: 8 * 1024 * 1024,
            ..FAST
        },
        KdfParams {
            parallelism: 256,
            ..FAST
        },
    ] {
        let d = tempfile::tempdir().unwrap();
        let err = Vault::create(d.path(), PASS, &bad).unwrap_err();
        assert!(
            matches!(&err, VaultError::InvalidParams(m) if m.contains("ARGON2_")),
            "{err}"
        );
    }
    let err = KdfParams::from_lookup(|k| (k == "ARGON2_ITERATIONS").then(|| "4000000000".into()))
        .unwrap_err();
    assert!(err.to_string().contains("ARGON2_ITERATIONS"), "{err}");
}
