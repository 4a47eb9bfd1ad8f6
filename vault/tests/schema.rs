//! The checked-in JSON Schemas must match the types. Regenerate with
//! `UPDATE_SCHEMAS=1 cargo test -p secureclaw-vault --test schema`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use secureclaw_vault::{ExportHead, ExportLine, LedgerEntry};

fn check(file: &str, schema: schemars::Schema) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas")
        .join(file);
    let want = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "schemas/{file} is stale: run `UPDATE_SCHEMAS=1 cargo test -p secureclaw-vault --test schema` and commit the result"
    );
}

#[test]
fn ledger_entry_schema_is_current() {
    check(
        "ledger-entry.schema.json",
        schemars::schema_for!(LedgerEntry),
    );
}

#[test]
fn ledger_export_line_schema_is_current() {
    check(
        "ledger-export-line.schema.json",
        schemars::schema_for!(ExportLine),
    );
}

#[test]
fn ledger_export_head_schema_is_current() {
    check(
        "ledger-export-head.schema.json",
        schemars::schema_for!(ExportHead),
    );
}

#[test]
fn exported_lines_match_the_schema_shape() {
    // Every required key of the entry schema appears in an exported entry and nothing else.
    let schema = serde_json::to_value(schemars::schema_for!(LedgerEntry)).unwrap();
    let mut props: Vec<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    props.sort();
    let dir = tempfile::tempdir().unwrap();
    let params = secureclaw_vault::KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        salt_len: 16,
    };
    let v = secureclaw_vault::Vault::create(dir.path(), "p", &params).unwrap();
    v.ledger()
        .append(secureclaw_vault::NewEntry::new("cli", "run_started"))
        .unwrap();
    let mut out = Vec::new();
    v.ledger().export(None, &mut out).unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
    let mut keys: Vec<String> = line["entry"].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, props);
    let required: Vec<String> =
        serde_json::from_value(schema["required"].clone()).unwrap_or_default();
    assert!(required.iter().all(|k| keys.contains(k)));
}
