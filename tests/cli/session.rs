//! Parked runs through the binary: a run stopped at a gate is approved and resumed by new
//! processes after the first one exited, its events replay from any point, and the
//! command line depends on the engine alone.

use crate::common;

use common::secureclaw;

const GATED: &str = r#"version: 1
name: gated
sandbox: { backend: host }
steps:
  - id: before
    write: { path: a.txt, content: "first" }
  - id: gate
    needs: [before]
    approve: true
    write: { path: b.txt, content: "needs a yes" }
  - id: after
    needs: [gate]
    write: { path: c.txt, content: "last" }
"#;

fn run_id(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("run ")
                .and_then(|r| r.split_whitespace().next())
        })
        .unwrap_or_else(|| panic!("no run id in: {text}"))
        .to_string()
}

#[test]
fn a_parked_run_is_approved_and_resumed_by_later_processes() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let wf = dir.path().join("gated.yaml");
    std::fs::write(&wf, GATED).unwrap();
    let first = secureclaw()
        .args(["run", wf.to_str().unwrap(), "-w", ws.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        first.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let id = run_id(&first.stderr);
    let said = String::from_utf8_lossy(&first.stderr);
    assert!(said.contains("parked"), "{said}");
    assert!(!ws.join("b.txt").exists());
    // The workflow file is gone: the parked run carries its own text.
    std::fs::remove_file(&wf).unwrap();
    let state = ws.join(".secureclaw");
    let st = state.to_str().unwrap();
    let resume_early = secureclaw()
        .args(["resume", &id, "--state-dir", st])
        .output()
        .unwrap();
    assert_eq!(
        resume_early.status.code(),
        Some(3),
        "still parked without an approval"
    );
    let wrong = secureclaw()
        .args(["approve", &id, "--step", "after", "--state-dir", st])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("waiting: gate"));
    let ok = secureclaw()
        .args(["approve", &id, "--step", "gate", "--state-dir", st])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let resumed = secureclaw()
        .args(["resume", &id, "--state-dir", st])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(std::fs::read_to_string(ws.join("c.txt")).unwrap(), "last");
    let show = secureclaw()
        .args(["show", &id, "--json", "--state-dir", st])
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(rec["state"], "succeeded");
    assert!(
        rec["steps"][1]["approval"]
            .as_str()
            .unwrap()
            .starts_with("cli:")
    );

    // Every event of the three processes, numbered without gaps, and replay from the middle.
    let logs = |after: u64| -> Vec<serde_json::Value> {
        let out = secureclaw()
            .args([
                "logs",
                &id,
                "--after",
                &after.to_string(),
                "--state-dir",
                st,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = logs(0);
    for (k, e) in all.iter().enumerate() {
        assert_eq!(e["seq"], k as u64 + 1);
        assert_eq!(e["run_id"], id.as_str());
    }
    let kinds: Vec<&str> = all.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for k in [
        "run_started",
        "run_parked",
        "approval_decided",
        "run_resumed",
        "run_finished",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let mid = all.len() as u64 / 2;
    assert_eq!(logs(mid), all[mid as usize..].to_vec());
}

/// `src/` reaches the rest of the workspace through the engine only.
#[test]
fn the_command_line_depends_on_the_engine_alone() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The CLI and the server are the two front ends: each reaches the leaf crates only
    // through the engine's session API (the CLI also starts the server).
    for front in [root.to_path_buf(), root.join("server")] {
        front_end_uses_the_engine_alone(&front);
    }
}

fn front_end_uses_the_engine_alone(root: &std::path::Path) {
    let leaf = [
        "secureclaw_sandbox",
        "secureclaw_vault",
        "secureclaw_llm",
        "secureclaw_risk",
        "secureclaw_egress",
    ];
    for path in common::walk(&root.join("src")) {
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for l in leaf {
            assert!(
                !text.contains(l),
                "{} uses {l}: go through secureclaw_engine",
                path.display()
            );
        }
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .unwrap();
    for l in leaf {
        let name = l.replace('_', "-");
        assert!(
            !deps.contains(&name),
            "{} depends on {name}: only the engine may",
            root.display()
        );
    }
}

/// Twenty runs at once in this process, through the session API, while other processes
/// list and show them from the same state dir.
#[test]
fn other_processes_read_the_state_while_twenty_runs_go_on() {
    use secureclaw_engine::model::Backend;
    use secureclaw_engine::record::RunState;
    use secureclaw_engine::session::{
        Access, PassphraseSource, RunRequest, RunSettings, Session, SessionOptions,
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // The vault is made by the binary, with the tests' cheap KDF settings.
    let init = secureclaw()
        .args(["vault", "init", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let pass = dir.path().join("pass");
    std::fs::write(&pass, common::TEST_PASSPHRASE).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let session = Session::open(SessionOptions {
            state_dir: state.clone(),
            passphrase: PassphraseSource::File(pass.clone()),
            access: Access::Write { create: false },
            actor: "test".into(),
        })
        .unwrap();
        // Every run waits on one gate file, so they are all going on while the other process
        // reads, however slow the machine.
        let gate = dir.path().join("go");
        let text = format!(
            "version: 1\nname: held\nsandbox: {{ backend: host }}\nsteps:\n  - id: wait\n    shell: while [ ! -e {} ]; do sleep 0.05; done\n  - id: note\n    needs: [wait]\n    write: {{ path: done.txt, content: ok }}\n",
            gate.display()
        );
        let mut handles = Vec::new();
        for k in 0..20 {
            let wf = secureclaw_engine::validate::validate_bytes(
                std::path::Path::new("(test)"),
                text.as_bytes(),
            )
            .unwrap();
            handles.push(
                session
                    .submit(RunRequest {
                        workflow: wf,
                        inputs: Default::default(),
                        workspace: dir.path().join(format!("ws{k}")),
                        settings: RunSettings {
                            backend: Some(Backend::Host),
                            ..RunSettings::default()
                        },
                        approver: None,
                    })
                    .unwrap(),
            );
        }
        let first = handles[0].id().to_string();
        // Each run's first record is saved as it starts: wait for all twenty.
        let mut started = handles.iter().map(|h| h.events(0)).collect::<Vec<_>>();
        for s in &mut started {
            // `run_started` is sent once the run's first record is durable.
            let first_event = s.next().await.unwrap();
            assert!(matches!(
                first_event.event,
                secureclaw_engine::events::RunEvent::RunStarted { .. }
            ));
        }
        // While they run: another process lists them and shows one.
        let st = state.to_str().unwrap().to_string();
        let (runs, show) = tokio::task::spawn_blocking(move || {
            let runs = secureclaw()
                .args(["runs", "--json", "--state-dir", &st])
                .output()
                .unwrap();
            let show = secureclaw()
                .args(["show", &first, "--json", "--state-dir", &st])
                .output()
                .unwrap();
            (runs, show)
        })
        .await
        .unwrap();
        assert!(runs.status.success(), "{}", String::from_utf8_lossy(&runs.stderr));
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&runs.stdout).unwrap();
        assert_eq!(listed.len(), 20, "every run is listed while they go on");
        assert!(listed.iter().all(|r| r["state"] == "running"), "{listed:?}");
        assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
        std::fs::write(&gate, "").unwrap();
        for h in handles {
            assert_eq!(h.wait().await.unwrap().state, RunState::Succeeded);
        }
    });
}

const FAILS_UNTIL_GO: &str = r#"version: 1
name: fails-until-go
sandbox: { backend: host }
steps:
  - id: made
    write: { path: a.txt, content: "first" }
  - id: check
    needs: [made]
    shell: "test -f go"
  - id: after
    needs: [check]
    write: { path: c.txt, content: "last" }
"#;

#[test]
fn a_failed_run_is_retried_from_its_failed_step_by_a_later_process() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let wf = dir.path().join("fails.yaml");
    std::fs::write(&wf, FAILS_UNTIL_GO).unwrap();
    let first = secureclaw()
        .args(["run", wf.to_str().unwrap(), "-w", ws.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&first.stderr).to_string();
    assert_eq!(first.status.code(), Some(1), "{said}");
    assert!(said.contains("secureclaw retry"), "{said}");
    let id = run_id(&first.stderr);
    let state = ws.join(".secureclaw");
    let st = state.to_str().unwrap();
    std::fs::write(ws.join("go"), "").unwrap();
    let drift = secureclaw()
        .args(["retry", &id, "--state-dir", st])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&drift.stderr).to_string();
    assert_eq!(drift.status.code(), Some(2), "{said}");
    assert!(said.contains("changed: go"), "{said}");
    let retried = secureclaw()
        .args(["retry", &id, "--force", "--state-dir", st])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&retried.stderr).to_string();
    assert!(retried.status.success(), "{said}");
    assert!(said.contains("running again check, after"), "{said}");
    assert_eq!(std::fs::read_to_string(ws.join("c.txt")).unwrap(), "last");
    let show = secureclaw()
        .args(["show", &id, "--json", "--state-dir", st])
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(rec["state"], "succeeded");
    assert_eq!(rec["steps"][0]["attempts"], 1, "{rec:#}");
    let again = secureclaw()
        .args(["retry", &id, "--state-dir", st])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&again.stderr).to_string();
    assert_eq!(again.status.code(), Some(2), "{said}");
    assert!(said.contains("only a failed run can be retried"), "{said}");
}
