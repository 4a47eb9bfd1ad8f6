//! Failure paths end to end on the native sandbox: `if: failure()`, `if: always()`, the default
//! `success()`, `continue_on_error`, revert and retry of runs where a failure path ran, and the
//! short forms of `needs` and `env`.

use crate::common;
use common::{output_text, step, text, tree_fingerprint as tree};

use common::secureclaw as bin;

type Ws = common::Workspace;

fn new_ws() -> Ws {
    Ws::new(&["--sandbox", "native", "--yes"])
}

fn state_of(rec: &serde_json::Value, id: &str) -> String {
    step(rec, id)["state"].as_str().unwrap().to_string()
}

fn reason_of(rec: &serde_json::Value, id: &str) -> String {
    step(rec, id)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `build` fails when `inputs.code` is not 0; `report` waits on `deploy`, so the failure it
/// sees is two steps up.
const PIPELINE: &str = r#"
version: 1
name: pipeline
inputs:
  code: { type: integer }
steps:
  - id: build
    shell: echo built > build.txt; exit {{ inputs.code }}
  - id: deploy
    needs: build
    write: { path: deployed.txt, content: "deployed" }
  - id: report
    needs: deploy
    if: failure()
    write: { path: failure.txt, content: "build exited {{ steps.build.exit_code }}" }
  - id: cleanup
    needs: [deploy]
    if: always()
    shell: echo cleaned >> cleanup.log
  - id: after-report
    needs: report
    write: { path: after-report.txt, content: "x" }
  - id: independent
    write: { path: independent.txt, content: "x" }
"#;

#[test]
fn a_failure_runs_the_failure_path_and_always_steps_and_skips_the_success_path() {
    let ws = new_ws();
    let wf = ws.workflow(PIPELINE);
    let out = ws.run(&wf, &["--input", "code=1"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let rec = ws.show();
    assert_eq!(rec["state"], "failed", "the failure happened: {rec:#}");
    assert_eq!(state_of(&rec, "build"), "failed");
    assert!(
        !ws.path().join("build.txt").exists(),
        "the failed step's changes are rolled back"
    );
    assert_eq!(state_of(&rec, "deploy"), "skipped");
    assert!(reason_of(&rec, "deploy").contains("needs `build`, which failed"));
    assert!(!ws.path().join("deployed.txt").exists());
    // `report` sees the failure through the skipped `deploy`, and the failed step's results.
    assert_eq!(state_of(&rec, "report"), "succeeded", "{rec:#}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("failure.txt")).unwrap(),
        "build exited 1"
    );
    assert_eq!(state_of(&rec, "cleanup"), "succeeded");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("cleanup.log")).unwrap(),
        "cleaned\n"
    );
    // A plain step after a failure-path step still needs everything upstream to have succeeded.
    assert_eq!(state_of(&rec, "after-report"), "skipped");
    assert!(
        reason_of(&rec, "after-report").contains("upstream of `report` failed"),
        "{}",
        reason_of(&rec, "after-report")
    );
    assert!(!ws.path().join("after-report.txt").exists());
    // Independent branches finish as before.
    assert_eq!(state_of(&rec, "independent"), "succeeded");
}

#[test]
fn without_a_failure_the_failure_path_is_skipped_and_always_steps_still_run() {
    let ws = new_ws();
    let wf = ws.workflow(PIPELINE);
    let out = ws.run(&wf, &["--input", "code=0"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let rec = ws.show();
    assert_eq!(rec["state"], "succeeded");
    assert_eq!(state_of(&rec, "build"), "succeeded");
    assert_eq!(state_of(&rec, "deploy"), "succeeded");
    assert_eq!(state_of(&rec, "report"), "skipped");
    assert!(
        reason_of(&rec, "report").contains("condition `failure()` is false"),
        "{}",
        reason_of(&rec, "report")
    );
    assert!(!ws.path().join("failure.txt").exists());
    assert_eq!(state_of(&rec, "after-report"), "skipped");
    assert_eq!(state_of(&rec, "cleanup"), "succeeded");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("cleanup.log")).unwrap(),
        "cleaned\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("deployed.txt")).unwrap(),
        "deployed"
    );
}

#[test]
fn a_failure_path_can_be_combined_with_an_expression() {
    let wf_text = r#"
version: 1
name: notify
inputs:
  notify: { type: boolean }
steps:
  - id: build
    shell: exit 2
  - id: notify
    needs: build
    if: failure() && inputs.notify
    write: { path: notified.txt, content: "{{ steps.build.exit_code }}" }
"#;
    for (notify, expected) in [("true", Some("2")), ("false", None)] {
        let ws = new_ws();
        let wf = ws.workflow(wf_text);
        let out = ws.run(&wf, &["--input", &format!("notify={notify}")]);
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        let got = std::fs::read_to_string(ws.path().join("notified.txt")).ok();
        assert_eq!(got.as_deref(), expected, "notify={notify}");
    }
}

const CONTINUES: &str = r#"
version: 1
name: continues
steps:
  - id: lint
    continue_on_error: true
    shell: echo partial > lint.txt; exit 3
  - id: test
    needs: lint
    shell: test ! -e lint.txt && echo {{ steps.lint.exit_code }} > test.txt
  - id: format
    continue_on_error: true
    keep_on_failure: true
    shell: echo formatted > fmt.txt; exit 1
  - id: check
    needs: format
    shell: cat fmt.txt > check.txt
  - id: report
    needs: [test, check]
    if: failure()
    write: { path: failure.txt, content: "x" }
"#;

#[test]
fn continue_on_error_lets_dependents_run_and_the_run_succeed() {
    let ws = new_ws();
    std::fs::write(ws.path().join("keep.txt"), "before").unwrap();
    let before = tree(ws.path());
    let wf = ws.workflow(CONTINUES);
    let before_wf = tree(ws.path());
    assert_ne!(before, before_wf);
    let out = ws.run(&wf, &["--jobs", "1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let said = text(&out.stderr);
    assert!(said.contains("continued"), "{said}");
    let rec = ws.show();
    assert_eq!(rec["state"], "succeeded", "{rec:#}");
    for id in ["lint", "format"] {
        assert_eq!(state_of(&rec, id), "failed", "{id} stays failed");
        assert_eq!(step(&rec, id)["continued"], true, "{id}");
        assert!(reason_of(&rec, id).contains("continued"), "{id}");
    }
    // Without `keep_on_failure` the continued step's changes are rolled back as usual...
    assert!(!ws.path().join("lint.txt").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("test.txt")).unwrap(),
        "3\n"
    );
    // ...with it, its dependents see what it left.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("check.txt")).unwrap(),
        "formatted\n"
    );
    // A failure that was let through is not one for `failure()`.
    assert_eq!(state_of(&rec, "report"), "skipped");
    // What a kept failure left is undone with the run.
    let out = bin()
        .args(["revert", "last", "--state-dir"])
        .arg(ws.path().join(".secureclaw"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(tree(ws.path()), before_wf);
}

/// A run whose `build` fails after `prepare` changed the tree; the failure path deletes and
/// writes files, the always step appends to one.
const FAILS_AND_CLEANS: &str = r#"
version: 1
name: fails-and-cleans
steps:
  - id: prepare
    shell: echo prepared >> notes.txt; mkdir -p out; echo 1 > out/a
  - id: build
    needs: prepare
    shell: echo broken > notes.txt; rm -f data.bin; exit 1
  - id: on-failure
    needs: build
    if: failure()
    shell: rm -rf out scratch; printf 'failed\n' > FAILED.md
  - id: always
    needs: [on-failure]
    if: always()
    shell: echo always >> notes.txt; chmod 600 notes.txt
"#;

#[test]
fn revert_after_a_failure_path_ran_restores_the_tree_byte_for_byte() {
    let ws = new_ws();
    std::fs::write(ws.path().join("notes.txt"), "original\n").unwrap();
    std::fs::write(ws.path().join("data.bin"), [0u8, 1, 2, 255]).unwrap();
    std::fs::create_dir(ws.path().join("scratch")).unwrap();
    std::fs::write(ws.path().join("scratch/tmp"), "scratch").unwrap();
    let wf = ws.workflow(FAILS_AND_CLEANS);
    let before = tree(ws.path());
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let rec = ws.show();
    assert_eq!(rec["state"], "failed");
    assert_eq!(state_of(&rec, "build"), "failed");
    assert_eq!(state_of(&rec, "on-failure"), "succeeded", "{rec:#}");
    assert_eq!(state_of(&rec, "always"), "succeeded");
    assert!(!ws.path().join("scratch").exists());
    assert!(ws.path().join("data.bin").exists(), "build was rolled back");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes.txt")).unwrap(),
        "original\nprepared\nalways\n"
    );
    assert_ne!(tree(ws.path()), before);
    let out = bin()
        .args(["revert", "last", "--state-dir"])
        .arg(ws.path().join(".secureclaw"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(tree(ws.path()), before);
    let rec = ws.show();
    for id in ["prepare", "on-failure", "always"] {
        assert_eq!(state_of(&rec, id), "reverted", "{id}: {rec:#}");
    }
}

const FAILS_UNTIL_GO: &str = r#"
version: 1
name: fails-until-go
steps:
  - id: build
    shell: test -e go && echo built > built.txt
  - id: on-failure
    needs: build
    if: failure()
    shell: echo handled >> handled.txt
  - id: always
    needs: build
    if: always()
    shell: echo always >> always.txt
  - id: deploy
    needs: build
    write: { path: deployed.txt, content: "deployed" }
  - id: after-handling
    needs: on-failure
    shell: echo after >> after-handling.txt
"#;

fn run_id(stderr: &[u8]) -> String {
    let said = text(stderr);
    said.lines()
        .find_map(|l| {
            l.strip_prefix("run ")
                .and_then(|r| r.split_whitespace().next())
        })
        .unwrap_or_else(|| panic!("no run id in: {said}"))
        .to_string()
}

#[test]
fn a_retry_keeps_failure_paths_that_ran_and_evaluates_the_rest_again() {
    let ws = new_ws();
    let wf = ws.workflow(FAILS_UNTIL_GO);
    let before = tree(ws.path());
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let id = run_id(&out.stderr);
    let rec = ws.show();
    assert_eq!(state_of(&rec, "on-failure"), "succeeded");
    assert_eq!(state_of(&rec, "always"), "succeeded");
    assert_eq!(state_of(&rec, "deploy"), "skipped");
    assert_eq!(state_of(&rec, "after-handling"), "skipped");
    std::fs::write(ws.path().join("go"), "").unwrap();
    let state = ws.path().join(".secureclaw");
    let out = bin()
        .args(["retry", &id, "--force", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let said = text(&out.stderr);
    assert!(
        said.contains("running again build, deploy, after-handling"),
        "{said}"
    );
    let rec = ws.show();
    assert_eq!(rec["state"], "succeeded", "{rec:#}");
    assert_eq!(state_of(&rec, "build"), "succeeded");
    assert_eq!(state_of(&rec, "deploy"), "succeeded");
    // What ran after the failure stays done: it is neither run again nor undone.
    assert_eq!(state_of(&rec, "on-failure"), "succeeded");
    assert_eq!(state_of(&rec, "always"), "succeeded");
    for (file, content) in [
        ("handled.txt", "handled\n"),
        ("always.txt", "always\n"),
        ("built.txt", "built\n"),
        ("deployed.txt", "deployed"),
        ("after-handling.txt", "after\n"),
    ] {
        assert_eq!(
            std::fs::read_to_string(ws.path().join(file)).unwrap(),
            content,
            "{file}"
        );
    }
    // The step after the kept failure path runs now that everything upstream succeeded.
    assert_eq!(state_of(&rec, "after-handling"), "succeeded");
    // Reverting the retried run undoes the failure path with everything else (`go` is ours,
    // not the run's: gone first, so the tree can match the pre-run manifest).
    std::fs::remove_file(ws.path().join("go")).unwrap();
    let out = bin()
        .args(["revert", &id, "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(text(&out.stdout).contains("reverted step `on-failure`"));
    assert_eq!(tree(ws.path()), before);
}

#[test]
fn needs_may_name_one_step_and_env_values_may_be_numbers_or_booleans() {
    let ws = new_ws();
    let wf = ws.workflow(
        r#"
version: 1
name: short-forms
env: { PORT: 8080, DEBUG: true }
steps:
  - id: first
    env: { RATIO: 0.5, QUIET: false }
    shell: echo "$PORT $DEBUG $RATIO $QUIET" {{ env.PORT }} > env.txt
  - id: second
    needs: first
    write: { path: second.txt, content: "after {{ steps.first.exit_code }}" }
"#,
    );
    let out = ws.run(&wf, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("env.txt")).unwrap(),
        "8080 true 0.5 false 8080\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("second.txt")).unwrap(),
        "after 0"
    );
    let rec = ws.show();
    assert_eq!(step(&rec, "second")["needs"], serde_json::json!(["first"]));
}

const DESTRUCTIVE_CLEANUP: &str = r#"
version: 1
name: destructive-cleanup
steps:
  - id: build
    shell: exit 1
  - id: cleanup
    needs: build
    if: failure()
    shell: rm -rf cache
"#;

#[test]
fn a_failure_path_step_is_gated_like_any_other_step() {
    let ws = Ws::new(&["--sandbox", "native"]);
    std::fs::create_dir(ws.path().join("cache")).unwrap();
    let wf = ws.workflow(DESTRUCTIVE_CLEANUP);
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        ws.path().join("cache").exists(),
        "the destructive cleanup ran without approval"
    );
    let id = run_id(&out.stderr);
    let rec = ws.show();
    assert_eq!(rec["state"], "awaiting_approval");
    assert_eq!(state_of(&rec, "cleanup"), "waiting_approval");
    // Approved and resumed, the failure path runs; the run still failed.
    let out = bin()
        .args([
            "approve",
            &id,
            "--step",
            "cleanup",
            "--resume",
            "--state-dir",
        ])
        .arg(ws.path().join(".secureclaw"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(!ws.path().join("cache").exists());
    let rec = ws.show();
    assert_eq!(state_of(&rec, "cleanup"), "succeeded");
    assert_eq!(rec["state"], "failed", "{rec:#}");
}

#[test]
fn fail_fast_stops_the_run_before_any_failure_path() {
    let ws = new_ws();
    let wf = ws.workflow(
        r#"
version: 1
name: fail-fast
steps:
  - id: build
    shell: exit 1
  - id: report
    needs: build
    if: always()
    write: { path: report.txt, content: "x" }
"#,
    );
    let out = ws.run(&wf, &["--fail-fast"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let rec = ws.show();
    assert_eq!(rec["state"], "failed");
    assert_eq!(state_of(&rec, "report"), "cancelled", "{rec:#}");
    assert!(!ws.path().join("report.txt").exists());
}
