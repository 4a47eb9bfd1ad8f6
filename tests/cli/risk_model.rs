//! The optional command risk model through a real run: without the `ml` feature (or its model
//! files) the heuristics stand alone and the run record says so; with them, a command the
//! heuristics underrate is raised (never lowered) and pauses for approval.

use crate::common;

use common::secureclaw;

/// Runs a one-step workflow (no terminal, no approvals) and returns the exit code and record.
fn run_one(command: &str) -> (Option<i32>, serde_json::Value) {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        format!(
            "version: 1\nname: model\nsteps:\n  - id: a\n    shell: {}\n",
            serde_json::to_string(command).unwrap()
        ),
    )
    .unwrap();
    let out = secureclaw()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws.path())
        .output()
        .unwrap();
    let show = secureclaw()
        .args(["show", "last", "--json", "--state-dir"])
        .arg(ws.path().join(".secureclaw"))
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&show.stdout).unwrap(),
    )
}

#[cfg(not(feature = "ml"))]
#[test]
fn without_the_model_the_record_says_heuristics_only() {
    let (code, rec) = run_one("echo hello");
    assert_eq!(code, Some(0));
    let status = rec["risk_model"].as_str().unwrap();
    assert!(status.contains("heuristic tiers only"), "{status}");
}

/// An SQL delete through a generic SQL client the heuristics do not know (`usql`): they call it
/// `low_write`, the model (trained on nearby exemplars, not on this command) raises it to
/// `destructive`.
#[cfg(feature = "ml")]
#[test]
fn the_model_raises_an_underrated_command_and_the_run_pauses() {
    let command = "usql sqlite:shop.db -c 'DELETE FROM customers;'";
    let heuristic = secureclaw()
        .args(["risk", "--json", command])
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&heuristic.stdout).unwrap();
    let (code, rec) = run_one(command);
    let status = rec["risk_model"].as_str().unwrap();
    assert!(
        status.contains("active"),
        "built with `ml` but the model is unavailable (run scripts/setup-models.sh): {status}"
    );
    assert_eq!(line["tier"], "low_write", "{line}");
    assert_eq!(line["model_raise"]["tier"], "destructive", "{line}");
    // Raised: without a terminal or --approve, the run stops before the step.
    assert_eq!(code, Some(3), "{rec:#}");
    let step = &rec["steps"][0];
    assert_eq!(step["tier"], "destructive");
    assert_eq!(step["rule"], "risk-model");
    assert_eq!(step["state"], "waiting_approval");
}

#[cfg(feature = "ml")]
#[test]
fn the_model_never_lowers_a_tier() {
    // The heuristics rate this destructive; whatever the model thinks, it stays destructive.
    let (code, rec) = run_one("rm -rf build");
    assert_eq!(code, Some(3));
    assert_eq!(rec["steps"][0]["tier"], "destructive");
    assert_ne!(rec["steps"][0]["rule"], "risk-model");
}
