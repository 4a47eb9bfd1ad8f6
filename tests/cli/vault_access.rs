//! End to end: the reading commands work while a long `secureclaw run` holds the state dir
//! (through the run's read socket), and `secureclaw unlock` lets commands run without any
//! passphrase source until `secureclaw lock`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(o: &Output) -> String {
    format!(
        "status: {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The binary with the test passphrase and a runtime dir of its own (no real agent is used).
fn cli(xdg: &Path) -> Command {
    let mut c = common::secureclaw();
    c.env("XDG_RUNTIME_DIR", xdg)
        .env_remove("SECURECLAW_AGENT")
        .stdin(Stdio::null());
    c
}

/// The same without any passphrase source (no env, no flag, no terminal).
fn cli_no_pass(xdg: &Path) -> Command {
    let mut c = cli(xdg);
    c.env_remove("SECURECLAW_PASSPHRASE");
    c
}

/// A `secureclaw run` whose shell step waits on a fifo; killed if the test fails.
struct LongRun {
    child: Child,
    gate: PathBuf,
}

impl LongRun {
    fn open_gate(&self) {
        // Opening the fifo for writing waits for the step's reader, which is already there.
        std::fs::write(&self.gate, "go\n").unwrap();
    }
}

impl Drop for LongRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success());
}

fn start_long_run(ws: &Path, xdg: &Path) -> LongRun {
    let gate = ws.join("gate");
    mkfifo(&gate);
    let wf = ws.join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: long\nsteps:\n  - { id: a, write: { path: a.txt, content: x } }\n  - { id: wait, needs: [a], shell: \"cat gate > got.txt\" }\n",
    )
    .unwrap();
    let child = cli(xdg)
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws)
        .args(["--sandbox", "host"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    LongRun { child, gate }
}

#[test]
fn reading_commands_work_while_a_run_holds_the_state() {
    let ws = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    let state = ws.path().join(".secureclaw");
    let mut run = start_long_run(ws.path(), xdg.path());
    // Wait until the first step is recorded and the run sits in the second.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // `runs` lists the run as soon as it starts; `show` says when step `a` is recorded.
        let out = cli(xdg.path())
            .args(["show", "last", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && shown.contains("running") && shown.contains("succeeded  a") {
            break;
        }
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "the run ended early"
        );
        assert!(
            Instant::now() < deadline,
            "runs never saw the run: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(state.join("vault.sock").exists());
    // The run process holds the database: a writable open is refused and names it.
    let holder = run.child.id();
    let out = cli(xdg.path())
        .args(["vault", "rekey", "--state-dir"])
        .arg(&state)
        .env("SECURECLAW_NEW_PASSPHRASE", "another one")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("process {holder}")),
        "{}",
        text(&out)
    );

    let read = |args: &[&str]| {
        let out = cli(xdg.path())
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = read(&["show", "last"]);
    assert!(shown.contains("running"), "{shown}");
    assert!(shown.contains("succeeded  a"), "{shown}");
    assert!(read(&["diff", "last"]).contains("a.txt"));
    assert!(read(&["ledger", "verify"]).contains("chain intact"));
    let export = ws.path().join("ledger.jsonl");
    read(&["ledger", "export", "--out", export.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&export).unwrap().lines().count() >= 2);
    assert!(read(&["vault", "status"]).contains("vault"));

    // The run goes on and finishes normally; its socket goes with it.
    run.open_gate();
    let status = run.child.wait().unwrap();
    assert!(status.success(), "run: {status:?}");
    assert!(!state.join("vault.sock").exists());
    assert!(read(&["show", "last"]).contains("succeeded"));
}

#[test]
fn unlock_then_commands_need_no_passphrase_until_lock() {
    let ws = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    let state = ws.path().join(".secureclaw");
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: one\nsteps:\n  - { id: a, write: { path: a.txt, content: x } }\n",
    )
    .unwrap();
    let out = cli(xdg.path())
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "host"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let show = |c: &mut Command| {
        c.args(["show", "last", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    };
    // Without a passphrase source and without the agent: refused.
    let out = show(&mut cli_no_pass(xdg.path()));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase"));

    let out = cli(xdg.path())
        .args(["unlock", "--timeout", "10m", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = cli_no_pass(xdg.path())
        .args(["unlock", "--status"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(status.contains("unlock agent pid"), "{status}");
    assert!(status.contains("vault "), "{status}");

    let out = show(&mut cli_no_pass(xdg.path()));
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    let out = cli_no_pass(xdg.path())
        .args(["runs", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // SECURECLAW_AGENT=off ignores it.
    let out = show(cli_no_pass(xdg.path()).env("SECURECLAW_AGENT", "off"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = cli_no_pass(xdg.path()).arg("lock").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = show(&mut cli_no_pass(xdg.path()));
    assert_eq!(out.status.code(), Some(2), "after lock: {}", text(&out));
}
