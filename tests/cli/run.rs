//! `secureclaw run` end to end on real files, through the real binary.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::secureclaw as bin;

type Ws = common::Workspace;
use common::step;

fn new_ws() -> Ws {
    Ws::new(&["--sandbox", "host"])
}

#[test]
fn hello_example_runs_and_is_recorded() {
    let ws = new_ws();
    let wf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/hello/workflow.yaml");
    let out = ws.run(&wf, &["--input", "who=tester"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(ws.path().join("out/hello.txt")).unwrap();
    assert!(text.starts_with("Hello, tester!\n"), "{text}");
    let rec = ws.show();
    assert_eq!(rec["state"], "succeeded");
    assert_eq!(
        rec["isolated"], false,
        "host runs must be marked unisolated"
    );
    assert_eq!(
        step(&rec, "show")["output"]
            .as_str()
            .unwrap()
            .lines()
            .next(),
        Some("Hello, tester!")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT isolated"));
}

const DESTRUCTIVE: &str = r#"
version: 1
name: wipe
steps:
  - id: before
    write: { path: before.txt, content: x }
  - id: wipe
    needs: [before]
    shell: rm -rf build
  - id: after
    needs: [wipe]
    write: { path: after.txt, content: x }
  - id: independent
    write: { path: independent.txt, content: x }
"#;

#[test]
fn destructive_step_stops_without_approval_and_nothing_after_runs() {
    let ws = new_ws();
    std::fs::create_dir(ws.path().join("build")).unwrap();
    let wf = ws.workflow(DESTRUCTIVE);
    let out = ws.run(&wf, &["--jobs", "1"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs approval") && stderr.contains("--approve destructive"),
        "{stderr}"
    );
    assert!(
        ws.path().join("build").exists(),
        "the destructive step ran without approval"
    );
    assert!(!ws.path().join("after.txt").exists());
    let rec = ws.show();
    assert_eq!(rec["state"], "awaiting_approval");
    assert_eq!(step(&rec, "wipe")["state"], "waiting_approval");
    assert_eq!(step(&rec, "after")["state"], "pending");
}

#[test]
fn destructive_step_proceeds_with_approval_and_the_approval_is_recorded() {
    let ws = new_ws();
    std::fs::create_dir(ws.path().join("build")).unwrap();
    let wf = ws.workflow(DESTRUCTIVE);
    let out = ws.run(&wf, &["--approve", "destructive"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!ws.path().join("build").exists());
    assert!(ws.path().join("after.txt").exists());
    let rec = ws.show();
    let nodes = rec["approval"]["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.len(),
        1,
        "the approval must cover exactly the destructive node: {nodes:?}"
    );
    assert_eq!(nodes[0]["id"], "wipe");
    assert_eq!(nodes[0]["tier"], "destructive");
    assert!(step(&rec, "wipe")["approval"].is_string());
}

#[test]
fn templating_cannot_smuggle_a_destructive_command_past_approval() {
    let ws = new_ws();
    std::fs::create_dir(ws.path().join("keep")).unwrap();
    let wf = ws.workflow(
        r#"
version: 1
name: smuggle
inputs:
  cmd: { type: string, default: "ls" }
steps:
  - id: run
    shell: "{{ inputs.cmd | raw }}"
"#,
    );
    let out = ws.run(&wf, &["--input", "cmd=rm -rf keep"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ws.path().join("keep").exists());
}

#[test]
fn a_failure_skips_dependents_but_independent_branches_finish() {
    let ws = new_ws();
    let wf = ws.workflow(
        r#"
version: 1
name: fail
steps:
  - { id: bad, shell: "echo broken >&2; exit 7" }
  - { id: child, needs: [bad], write: { path: child.txt, content: x } }
  - { id: grandchild, needs: [child], write: { path: grandchild.txt, content: x } }
  - { id: other, shell: "sleep 0.2; echo done > other.txt" }
"#,
    );
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken"),
        "stderr of the failed step is shown"
    );
    assert!(ws.path().join("other.txt").exists());
    let rec = ws.show();
    assert_eq!(step(&rec, "bad")["exit_code"], 7);
    assert_eq!(step(&rec, "child")["state"], "skipped");
    assert_eq!(step(&rec, "grandchild")["state"], "skipped");
    assert_eq!(step(&rec, "other")["state"], "succeeded");
}

#[test]
fn fail_fast_cancels_the_rest() {
    let ws = new_ws();
    let wf = ws.workflow(
        r#"
version: 1
name: ff
steps:
  - { id: bad, read: { path: does-not-exist.txt } }
  - { id: slow, shell: "sleep 20; touch slow.txt" }
"#,
    );
    let started = std::time::Instant::now();
    let out = ws.run(&wf, &["--fail-fast"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!ws.path().join("slow.txt").exists());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "slow step was not cancelled"
    );
    assert_eq!(step(&ws.show(), "slow")["state"], "cancelled");
}

#[test]
fn retry_with_backoff_then_success() {
    let ws = new_ws();
    let wf = ws.workflow(
        r#"
version: 1
name: flaky
steps:
  - id: flaky
    retry: { attempts: 3, backoff: 10ms }
    # The attempt counter must survive the failed attempt's rollback.
    keep_on_failure: true
    shell: "echo x >> tries; [ $(wc -l < tries) -ge 2 ]"
"#,
    );
    let out = ws.run(&wf, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(step(&ws.show(), "flaky")["attempts"], 2);
}

#[test]
fn timeout_kills_the_step_with_a_clear_reason() {
    let ws = new_ws();
    let wf = ws.workflow(
        r#"
version: 1
name: slow
steps:
  - { id: slow, timeout: 300ms, shell: "sleep 30" }
"#,
    );
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(1));
    let s = step(&ws.show(), "slow").clone();
    assert!(s["reason"].as_str().unwrap().contains("timed out"), "{s}");
}

#[test]
fn conditions_skip_steps_and_their_dependents() {
    let ws = new_ws();
    let wf = ws.workflow(
        r#"
version: 1
name: cond
inputs:
  go: { type: boolean, default: false }
steps:
  - { id: maybe, if: "inputs.go", write: { path: maybe.txt, content: x } }
  - { id: after, needs: [maybe], write: { path: after.txt, content: x } }
  - { id: always, write: { path: always.txt, content: "{{ inputs.go }}" } }
"#,
    );
    assert!(ws.run(&wf, &[]).status.success());
    assert!(!ws.path().join("maybe.txt").exists());
    assert!(!ws.path().join("after.txt").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("always.txt")).unwrap(),
        "false"
    );
    assert!(ws.run(&wf, &["--input", "go=true"]).status.success());
    assert!(ws.path().join("after.txt").exists());
}

#[test]
fn outputs_flow_between_steps() {
    let ws = new_ws();
    let wf = ws.workflow(
        r#"
version: 1
name: flow
env: { GREETING: "hi" }
steps:
  - { id: count, shell: "printf '3\n'" }
  - id: use-it
    needs: [count]
    env: { N: "{{ steps.count.output }}" }
    shell: 'echo "$GREETING $N {{ steps.count.exit_code }}"'
  - { id: save, needs: [use-it], write: { path: out.txt, content: "{{ steps['use-it'].stdout }}" } }
"#,
    );
    let out = ws.run(&wf, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
        "hi 3 0\n"
    );
}

#[test]
fn the_engine_environment_does_not_leak_into_steps() {
    let ws = new_ws();
    let wf = ws.workflow("version: 1\nname: env\nsteps:\n  - { id: e, shell: 'env > env.txt' }\n");
    let out = ws.run(&wf, &[]);
    assert!(out.status.success());
    let env = std::fs::read_to_string(ws.path().join("env.txt")).unwrap();
    assert!(!env.contains("CARGO"), "engine env leaked: {env}");
}

#[test]
fn file_actions_cannot_leave_the_workspace_through_symlinks() {
    let ws = new_ws();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join("link")).unwrap();
    let wf = ws.workflow(
        r#"
version: 1
name: escape
steps:
  - { id: via-link, write: { path: link/owned.txt, content: pwned } }
"#,
    );
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!outside.path().join("owned.txt").exists());
    let rec = ws.show();
    assert!(
        step(&rec, "via-link")["reason"]
            .as_str()
            .unwrap()
            .contains("symlink"),
        "{rec}"
    );
}

#[test]
fn input_errors_are_reported_before_anything_runs() {
    let ws = new_ws();
    let wf = ws.workflow(
        "version: 1\nname: i\ninputs:\n  count: { type: integer }\nsteps:\n  - { id: a, write: { path: a.txt, content: '{{ inputs.count }}' } }\n",
    );
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing required input `count`"));
    let out = ws.run(&wf, &["--input", "count=seven"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expects integer"));
    let out = ws.run(&wf, &["--input", "coutn=1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `count`"));
    assert!(!ws.path().join("a.txt").exists());
}

#[test]
fn invalid_workflows_do_not_run() {
    let ws = new_ws();
    let wf = ws.workflow("version: 1\nname: x\nsteps:\n  - { id: a, shel: 'touch ran' }\n");
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!ws.path().join("ran").exists());
}

#[test]
fn policy_can_forbid_the_host_backend() {
    let ws = new_ws();
    let wf = ws.workflow("version: 1\nname: x\nsteps:\n  - { id: a, shell: 'touch ran' }\n");
    let out = ws.run(&wf, &["--forbid-host"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!ws.path().join("ran").exists());
}

#[test]
fn json_events_are_one_object_per_line() {
    let ws = new_ws();
    let wf = ws.workflow("version: 1\nname: j\nsteps:\n  - { id: a, shell: 'true' }\n");
    let out = ws.run(&wf, &["--json"]);
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    assert!(kinds.contains(&"step_finished"));
}

#[test]
fn http_steps_reach_allowlisted_loopback_hosts() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        let req = String::from_utf8_lossy(&buf[..n]).into_owned();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .unwrap();
        req
    });
    let ws = new_ws();
    let wf = ws.workflow(&format!(
        "version: 1\nname: h\nsteps:\n  - id: call\n    network: [\"hook.test:{port}\"]\n    http: {{ method: POST, url: \"http://hook.test:{port}/hook\", json: {{ done: true }} }}\n  - {{ id: save, needs: [call], write: {{ path: body.txt, content: \"{{{{ steps.call.output }}}}\" }} }}\n"
    ));
    let out = ws.run(&wf, &["--approve", "network_egress"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = server.join().unwrap();
    assert!(req.starts_with("POST /hook"), "{req}");
    assert!(req.contains("{\"done\":true}"), "{req}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("body.txt")).unwrap(),
        "hello"
    );
}

#[test]
fn ctrl_c_cancels_the_run_and_kills_the_step() {
    let ws = new_ws();
    let wf = ws.workflow(
        "version: 1\nname: c\nsteps:\n  - { id: long, shell: 'touch started; sleep 30; touch finished' }\n",
    );
    let child = bin()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "host"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step itself is running (it says so in the workspace), then interrupt
    // like a terminal would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ws.path().join("started").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = ws.show();
    assert_eq!(rec["state"], "cancelled");
    assert_eq!(step(&rec, "long")["state"], "cancelled");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!ws.path().join("finished").exists());
}

/// Run under a real pseudo-terminal (util-linux `script`), answering the prompt with `answer`.
fn run_on_tty(ws: &Ws, wf: &Path, answer: &str) -> (Option<i32>, String) {
    let cmd = format!(
        "{} run {} --workspace {} --sandbox host",
        env!("CARGO_BIN_EXE_secureclaw"),
        wf.display(),
        ws.path().display()
    );
    let mut child = common::with_vault_env(&mut Command::new("script"), common::TEST_PASSPHRASE)
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Answer once the prompt is up; `script` forwards stdin to the terminal.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(answer.as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn on_a_terminal_the_prompt_shows_the_command_and_yes_runs_it() {
    let ws = new_ws();
    std::fs::create_dir(ws.path().join("build")).unwrap();
    let wf = ws.workflow(DESTRUCTIVE);
    let (code, screen) = run_on_tty(&ws, &wf, "y\n");
    assert!(
        screen.contains("needs approval")
            && screen.contains("rm -rf build")
            && screen.contains("rm-recursive"),
        "{screen}"
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(!ws.path().join("build").exists());
    assert!(ws.path().join("after.txt").exists());
    assert!(
        step(&ws.show(), "wipe")["approval"]
            .as_str()
            .unwrap()
            .contains("terminal")
    );
}

#[test]
fn on_a_terminal_no_stops_the_run() {
    let ws = new_ws();
    std::fs::create_dir(ws.path().join("build")).unwrap();
    let wf = ws.workflow(DESTRUCTIVE);
    let (code, screen) = run_on_tty(&ws, &wf, "n\n");
    assert_eq!(code, Some(3), "{screen}");
    assert!(ws.path().join("build").exists());
    assert!(!ws.path().join("after.txt").exists());
    assert!(screen.contains("denied"), "{screen}");
}
