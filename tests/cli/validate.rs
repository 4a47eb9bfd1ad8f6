//! `secureclaw validate` end to end: every example passes, and every file in `tests/broken/`
//! prints exactly the located errors its `# expect:` lines name.

use crate::common;

use std::path::{Path, PathBuf};

use common::secureclaw as bin;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    common::walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect()
}

#[test]
fn examples_and_project_workflows_validate() {
    let mut files = yaml_files(&root().join("examples"));
    files.extend(yaml_files(&root().join("workflows")));
    assert!(
        files.len() >= 4,
        "expected examples and workflows, found {files:?}"
    );
    let out = bin().arg("validate").args(&files).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_workflows_report_their_located_errors() {
    let files = yaml_files(&root().join("tests/broken"));
    assert!(
        files.len() >= 20,
        "the broken corpus shrank: {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        let hints: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect-hint: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let out = bin().arg("validate").arg(file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{}: exit {:?}, expected 1",
                file.display(),
                out.status.code()
            ));
        }
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
        for e in &expects {
            // `L:C: message` must match `FILE:L:C: error: message…`; a bare message matches anywhere.
            let found = match e.split_once(": ") {
                Some((pos, msg))
                    if pos.contains(':') && pos.chars().all(|c| c.is_ascii_digit() || c == ':') =>
                {
                    errors.iter().any(|l| {
                        l.starts_with(&format!("{}:{pos}: error: ", file.display()))
                            && l.contains(msg)
                    })
                }
                _ => errors.iter().any(|l| l.contains(e)),
            };
            if !found {
                failures.push(format!(
                    "{}: expected `{e}`\n--- got ---\n{stderr}",
                    file.display()
                ));
            }
        }
        for h in &hints {
            if !stderr.contains(&format!("hint: {h}")) {
                failures.push(format!(
                    "{}: expected hint `{h}`\n--- got ---\n{stderr}",
                    file.display()
                ));
            }
        }
        // Every error line carries a position, and nothing panicked.
        assert!(!stderr.contains("panicked"), "{}: {stderr}", file.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_errors_are_reported_at_once() {
    let out = bin()
        .arg("validate")
        .arg(root().join("tests/broken/escaping-paths.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(": error: ").count(), 3, "{stderr}");
    assert!(stderr.contains("3 errors found"), "{stderr}");
}

#[test]
fn json_output_is_machine_readable() {
    let out = bin()
        .args(["validate", "--json"])
        .arg(root().join("tests/broken/unknown-key.yaml"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = &v[0]["errors"][0];
    assert_eq!(err["location"]["line"], 7);
    assert_eq!(err["path"], "/steps/0/shel");
    assert_eq!(err["hint"], "did you mean `shell`?");
}

#[test]
fn explain_shows_tier_and_rule() {
    let out = bin()
        .args(["validate", "--explain"])
        .arg(root().join("examples/hello/workflow.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("greet") && stdout.contains("low_write") && stdout.contains("action:write"),
        "{stdout}"
    );
}

#[test]
fn schema_command_prints_the_checked_in_schema() {
    let out = bin().arg("schema").output().unwrap();
    let on_disk = std::fs::read(root().join("schemas/workflow.schema.json")).unwrap();
    assert_eq!(out.stdout, on_disk);
}

/// Every trigger form the format allows validates: the checks refuse mistakes, not features.
#[test]
fn every_valid_trigger_form_validates() {
    let forms = [
        // Short schedule, webhook mapping every required input (an empty pointer is the whole
        // payload), GitHub events.
        "inputs:\n  ref: { type: string }\n  payload: { type: object }\non:\n  webhook:\n    events: [push, pull_request, ping]\n    inputs: { ref: /ref, payload: \"\" }\n",
        // Generic HMAC with its header; a pointer with both escapes.
        "inputs:\n  id: { type: string, default: x }\non:\n  webhook: { preset: hmac, header: X-Signature-256, inputs: { id: \"/a~1b/~0c\" } }\n",
        // Standard Webhooks, no inputs at all.
        "on:\n  webhook: { preset: standard_webhooks }\n",
        // The full schedule form with seconds, a time zone and both policies; watch globs.
        "inputs:\n  days: { type: integer, default: 3 }\non:\n  schedule: { cron: \"30 0 3 * * Mon-Fri\", timezone: Asia/Tokyo, missed: run_once, overlap: true }\n  watch: [\"src/**/*.rs\", \"docs/*.md\", \"{a,b}/*.txt\", Cargo.toml]\n",
        "on:\n  schedule: \"*/5 * * * *\"\n",
    ];
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = forms
        .iter()
        .enumerate()
        .map(|(i, on)| {
            let p = dir.path().join(format!("form-{i}.yaml"));
            std::fs::write(
                &p,
                format!("version: 1\nname: form-{i}\n{on}steps:\n  - id: a\n    shell: \"true\"\n"),
            )
            .unwrap();
            p
        })
        .collect();
    let out = bin().arg("validate").args(&files).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CLI checks `on:` and otherwise ignores it: the triggered example runs now, on the
/// default native sandbox, with its inputs' defaults and a given one.
#[test]
fn triggered_example_runs_on_the_native_sandbox() {
    let ws = common::Workspace::new(&["--sandbox", "native"]);
    let out = ws.run(
        &root().join("examples/triggered/workflow.yaml"),
        &["--input", "commit=abc123"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = ws.show();
    assert_eq!(rec["state"], "succeeded", "{rec}");
    assert_eq!(
        common::step(&rec, "show")["output"],
        "refs/heads/main abc123\n"
    );
}
