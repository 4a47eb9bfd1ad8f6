//! The checked-in schema must be what the code generates, and must validate what it documents.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

#[test]
fn checked_in_schema_is_fresh() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/workflow.schema.json"
    );
    let on_disk = std::fs::read_to_string(path).expect("schemas/workflow.schema.json exists");
    let generated = secureclaw_engine::model::workflow_schema_text();
    assert!(
        on_disk == generated,
        "schemas/workflow.schema.json is stale: regenerate it with\n    cargo run -q -- schema > schemas/workflow.schema.json"
    );
}

#[test]
fn schema_is_valid_draft_2020_12() {
    let schema = secureclaw_engine::model::workflow_schema();
    assert!(jsonschema::meta::is_valid(&schema));
}
