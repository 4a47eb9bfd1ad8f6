//! A step's output through the binary: the tail under a failure, `show`'s cut that says what it
//! left out, and `logs` (all of it, per step, followed live, or as JSON events).

use crate::common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{output_text, secureclaw as bin, stderr, text};

type Ws = common::Workspace;

const FAILING: &str = r#"
version: 1
name: failing
steps:
  - id: prepare
    shell: echo prepared
  - id: build
    needs: [prepare]
    shell: for i in $(seq 1 30); do echo "line $i"; done; echo "compiler says no" >&2; exit 3
"#;

fn failed_run() -> (Ws, Output) {
    let ws = Ws::new(&["--sandbox", "host"]);
    let wf = ws.workflow(FAILING);
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    (ws, out)
}

/// The follow-up command a line of `said` names in parentheses after `marker`, as arguments.
fn command_after(said: &str, marker: &str) -> Vec<String> {
    let at = said
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in: {said}"));
    let rest = &said[at + marker.len()..];
    let end = rest.find(')').unwrap_or(rest.len());
    shlex::split(&rest[..end]).unwrap()
}

fn run_id(out: &Output) -> String {
    stderr(out)
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string()
}

#[test]
fn a_failed_step_shows_its_last_lines_and_the_command_for_the_rest() {
    let (ws, out) = failed_run();
    let said = stderr(&out);
    let lines: Vec<&str> = said.lines().map(str::trim).collect();
    assert!(lines.contains(&"| compiler says no"), "{said}");
    assert!(lines.contains(&"| line 30"), "{said}");
    // 20 lines in all: stderr's one and stdout's last 19.
    assert!(lines.contains(&"| line 12"), "{said}");
    assert!(!lines.contains(&"| line 11"), "{said}");
    assert!(
        said.contains("… 11 earlier lines (secureclaw logs "),
        "{said}"
    );

    // The command it names, typed as printed, shows every line of that step.
    let args = command_after(&said, "earlier lines (secureclaw ");
    assert_eq!(args[0], "logs");
    assert!(args.contains(&"--step".to_string()) && args.contains(&"build".to_string()));
    let logs = bin().args(&args).output().unwrap();
    assert!(logs.status.success(), "{}", output_text(&logs));
    let all = text(&logs.stdout);
    for i in 1..=30 {
        assert!(all.lines().any(|l| l == format!("line {i}")), "{all}");
    }
    assert!(all.contains("compiler says no"), "{all}");
    assert!(!all.contains("prepared"), "only the step asked for: {all}");
    drop(ws);
}

#[test]
fn logs_prints_every_step_that_ran_in_order_under_a_header() {
    let (ws, out) = failed_run();
    let id = run_id(&out);
    let logs = bin()
        .args(["logs", &id, "--workspace"])
        .arg(ws.path())
        .output()
        .unwrap();
    assert!(logs.status.success(), "{}", output_text(&logs));
    let all = text(&logs.stdout);
    let first = all.find("==> prepare (succeeded) <==").expect(&all);
    let prepared = all.find("prepared").expect(&all);
    let second = all.find("==> build (failed, exit 3) <==").expect(&all);
    let stderr_label = all.find("[stderr]").expect(&all);
    assert!(
        first < prepared && prepared < second && second < stderr_label,
        "{all}"
    );
    assert!(
        all.contains("line 1\n") && all.contains("compiler says no"),
        "{all}"
    );

    let missing = bin()
        .args(["logs", &id, "--step", "nope", "--workspace"])
        .arg(ws.path())
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("has no step `nope`") && stderr(&missing).contains("build"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn show_says_how_many_lines_it_left_out_and_where_they_are() {
    let (ws, out) = failed_run();
    let shown = bin()
        .args(["show", "last", "--workspace"])
        .arg(ws.path())
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", output_text(&shown));
    let said = text(&shown.stdout);
    assert!(
        said.contains("| line 5\n") && !said.contains("| line 6\n"),
        "{said}"
    );
    let args = command_after(&said, "… 25 more lines (secureclaw ");
    assert_eq!(args[..2], ["logs".to_string(), run_id(&out)]);
    let logs = bin().args(&args).output().unwrap();
    assert!(
        text(&logs.stdout).contains("line 30"),
        "{}",
        output_text(&logs)
    );
}

#[test]
fn logs_says_when_the_output_cap_cut_a_step_output() {
    let ws = Ws::new(&["--sandbox", "host"]);
    let wf = ws.workflow(
        r#"
version: 1
name: chatty
sandbox: { output_cap: 1Ki }
steps:
  - id: chatty
    shell: head -c 5000 /dev/zero | tr '\0' 'x'
"#,
    );
    let out = ws.run(&wf, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    let logs = bin()
        .args(["logs", "last", "--step", "chatty", "--workspace"])
        .arg(ws.path())
        .output()
        .unwrap();
    let all = text(&logs.stdout);
    assert!(
        all.contains("the output cap kept the first 1024 of 5000 stdout bytes"),
        "{all}"
    );
    let kept = all.lines().next().unwrap();
    assert_eq!(kept, "x".repeat(1024), "{all}");
    let rec = ws.show();
    assert_eq!(rec["steps"][0]["output_cut"]["stdout_total"], 5000);
}

#[test]
fn logs_events_are_json_lines_each_with_its_number_and_time() {
    let (ws, out) = failed_run();
    let id = run_id(&out);
    for flag in ["--events", "--json"] {
        let logs = bin()
            .args(["logs", &id, flag, "--workspace"])
            .arg(ws.path())
            .output()
            .unwrap();
        assert!(logs.status.success(), "{}", output_text(&logs));
        let events: Vec<serde_json::Value> = text(&logs.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(events.len() > 5, "{events:?}");
        for (k, e) in events.iter().enumerate() {
            assert_eq!(e["seq"], k as u64 + 1);
            let at = e["at"].as_str().unwrap_or_else(|| panic!("no time: {e}"));
            chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|err| panic!("{at}: {err}"));
        }
        assert!(events.iter().any(|e| e["event"] == "output"
            && e["step"] == "build"
            && e["text"].as_str().unwrap().contains("line 30")));
    }
    // `--after N` is the tail of the events, as before.
    let tail = bin()
        .args(["logs", &id, "--after", "2", "--workspace"])
        .arg(ws.path())
        .output()
        .unwrap();
    let first: serde_json::Value =
        serde_json::from_str(text(&tail.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 3);
}

/// Waits (bounded, so a broken follower fails instead of hanging) until `done` says yes.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn step_state(state: &Path, step: &str) -> Option<String> {
    let out = bin()
        .args(["show", "last", "--json", "--state-dir"])
        .arg(state)
        .output()
        .ok()?;
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    // Until the run is recorded, the answer is an error object.
    rec["steps"].as_array()?.iter().find(|s| s["id"] == step)?["state"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn logs_follow_streams_a_run_going_on_in_another_process_until_it_ends() {
    let ws = Ws::new(&["--sandbox", "host"]);
    // The second step waits for a file the test creates only once the follower showed the
    // first step's output: what comes after can only reach the follower live.
    let wf = ws.workflow(
        r#"
version: 1
name: slow
steps:
  - id: first
    shell: echo first output
  - id: second
    needs: [first]
    timeout: 120s
    shell: while [ ! -e go ]; do sleep 0.1; done; echo second output; echo second complaint >&2
  - id: third
    needs: [second]
    shell: echo third output
"#,
    );
    let mut run = bin()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "host"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = ws.path().join(".secureclaw");
    wait_until("the run's record", || step_state(&state, "first").is_some());
    let mut follow = bin()
        .args(["logs", "last", "--follow", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let first = line == "first output";
        seen.push(line);
        if first {
            break;
        }
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("first output"),
        "{seen:?}"
    );
    std::fs::write(ws.path().join("go"), "").unwrap();
    seen.extend(lines.map(Result::unwrap));
    let status = follow.wait().unwrap();
    assert!(status.success(), "{seen:?}");
    assert!(run.wait().unwrap().success());
    let all = seen.join("\n");
    let order = [
        "==> first <==",
        "first output",
        "==> second <==",
        "second output",
        "[stderr]",
        "second complaint",
        "==> third <==",
        "third output",
    ];
    let mut at = 0;
    for want in order {
        at += all[at..]
            .find(want)
            .unwrap_or_else(|| panic!("no `{want}` after byte {at} in:\n{all}"));
    }
}

#[test]
fn a_retry_that_fails_again_shows_the_failed_step_output_too() {
    let ws = Ws::new(&["--sandbox", "host"]);
    let wf = ws.workflow(
        r#"
version: 1
name: needs-a-file
steps:
  - id: check
    shell: cat needed.txt || { echo "needed.txt is still missing" >&2; exit 1; }
"#,
    );
    let first = ws.run(&wf, &[]);
    assert_eq!(first.status.code(), Some(1), "{}", output_text(&first));
    let retried = bin()
        .args(["retry", "last", "--workspace"])
        .arg(ws.path())
        .output()
        .unwrap();
    assert_eq!(retried.status.code(), Some(1), "{}", output_text(&retried));
    let said = stderr(&retried);
    assert!(
        said.lines()
            .any(|l| l.trim() == "| needed.txt is still missing"),
        "{said}"
    );
}
