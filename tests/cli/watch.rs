//! `secureclaw watch` re-runs on a real file change, and ignores the run's own writes.

use crate::common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Each run of the test workflow appends a line to `runs.log` (a path the watch ignores).
fn runs(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("runs.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `secureclaw watch WF` on the host backend, re-running on changes under `src/`, stopping
/// after `max_runs` runs; stderr piped for the test to read.
fn watch_src(wf: &Path, workspace: &Path, max_runs: u32) -> std::process::Child {
    common::secureclaw()
        .arg("watch")
        .arg(wf)
        .arg("--workspace")
        .arg(workspace)
        .args([
            "--sandbox",
            "host",
            "--path",
            "src/**",
            "--debounce",
            "100ms",
        ])
        .arg("--max-runs")
        .arg(max_runs.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn watch_reruns_when_a_watched_file_changes() {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: w\nsteps:\n  - { id: copy, shell: 'cat src/input.txt > copy.txt; echo run >> runs.log' }\n",
    )
    .unwrap();
    std::fs::create_dir(ws.path().join("src")).unwrap();
    std::fs::write(ws.path().join("src/input.txt"), "one\n").unwrap();
    let child = watch_src(&wf, ws.path(), 3);
    wait_for("the first run", Duration::from_secs(30), || {
        std::fs::read_to_string(ws.path().join("copy.txt")).is_ok_and(|c| c == "one\n")
    });
    // The run's own write to copy.txt must not have triggered another run.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(runs(ws.path()), 1);

    std::fs::write(ws.path().join("src/input.txt"), "two\n").unwrap();
    wait_for("a re-run after the change", Duration::from_secs(30), || {
        std::fs::read_to_string(ws.path().join("copy.txt")).is_ok_and(|c| c == "two\n")
    });
    assert_eq!(runs(ws.path()), 2);

    // Editing the workflow itself triggers too.
    std::fs::write(
        &wf,
        "version: 1\nname: w\nsteps:\n  - { id: copy, shell: 'echo edited > copy.txt' }\n",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("copy.txt")).unwrap(),
        "edited\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.matches("running").count() >= 3, "{stderr}");
    assert!(stderr.contains("changed:"), "{stderr}");
}

#[test]
fn watch_skips_ignored_files_editor_leftovers_and_its_own_writes() {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    // The step writes inside the watched tree: that write must not start the next run.
    std::fs::write(
        &wf,
        "version: 1\nname: w\nsteps:\n  - { id: copy, shell: 'cat src/input.txt > src/copy.txt; echo run >> runs.log' }\n",
    )
    .unwrap();
    std::fs::create_dir_all(ws.path().join("src/generated")).unwrap();
    std::fs::write(ws.path().join(".gitignore"), "src/generated/\n*.bak\n").unwrap();
    std::fs::write(ws.path().join("src/input.txt"), "one\n").unwrap();
    let child = watch_src(&wf, ws.path(), 2);
    wait_for("the first run", Duration::from_secs(30), || {
        runs(ws.path()) == 1
    });
    for (name, text) in [
        ("src/generated/out.txt", "generated"),
        ("src/input.bak", "backup"),
        ("src/.input.txt.swp", "vim swap"),
        ("src/input.txt~", "backup"),
        ("src/4913", ""),
        ("src/.#input.txt", "emacs lock"),
        ("src/#input.txt#", "emacs auto-save"),
        ("src/input.txt___jb_tmp___", "jetbrains safe write"),
    ] {
        std::fs::write(ws.path().join(name), text).unwrap();
    }
    // Long enough for several debounce periods: none of those may start a run.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(runs(ws.path()), 1);

    std::fs::write(ws.path().join("src/input.txt"), "two\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(runs(ws.path()), 2, "{stderr}");
    let triggers: Vec<&str> = stderr.lines().filter(|l| l.contains("changed:")).collect();
    assert_eq!(triggers.len(), 1, "{stderr}");
    assert!(triggers[0].ends_with("input.txt)"), "{stderr}");
}

/// `secureclaw watch WF` on the host backend with the given extra flags; stderr piped.
fn watch(wf: &Path, workspace: &Path, extra: &[&str]) -> std::process::Child {
    common::secureclaw()
        .arg("watch")
        .arg(wf)
        .arg("--workspace")
        .arg(workspace)
        .args(["--sandbox", "host"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Read the child's stderr up to the first line containing `marker`; the lines read so far.
fn read_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    marker: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let found = line.contains(marker);
        seen.push(line);
        if found {
            return seen;
        }
    }
    panic!("stderr ended before `{marker}`:\n{}", seen.join("\n"));
}

fn interrupt(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Reads `src/input.txt` and copies it: no shell step, so the declared inputs are exact.
const COPY_DECLARED: &str = r#"version: 1
name: w
steps:
  - { id: r, read: { path: src/input.txt } }
  - { id: copy, needs: [r], write: { path: copy.txt, content: "{{ steps.r.output }}" } }
  - { id: log, needs: [copy], write: { path: runs.log, content: "run\n", append: true } }
"#;

#[test]
fn watch_without_path_watches_the_declared_inputs_and_says_so() {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::write(&wf, COPY_DECLARED).unwrap();
    std::fs::create_dir(ws.path().join("src")).unwrap();
    std::fs::write(ws.path().join("src/input.txt"), "one\n").unwrap();
    std::fs::write(ws.path().join("src/other.txt"), "x\n").unwrap();
    let child = watch(&wf, ws.path(), &["--max-runs", "2"]);
    wait_for("the first run", Duration::from_secs(30), || {
        runs(ws.path()) == 1
    });
    // Files the workflow does not read are not its inputs.
    std::fs::write(ws.path().join("src/other.txt"), "y\n").unwrap();
    std::fs::write(ws.path().join("notes.txt"), "y\n").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(runs(ws.path()), 1);

    std::fs::write(ws.path().join("src/input.txt"), "two\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(runs(ws.path()), 2, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("copy.txt")).unwrap(),
        "two\n"
    );
    let start = stderr.lines().next().unwrap_or_default();
    assert!(
        start.ends_with(&format!("watching: {}, src/input.txt", wf.display())),
        "{stderr}"
    );
    assert!(stderr.contains("(changed: src/input.txt)"), "{stderr}");
}

#[test]
fn watch_trigger_globs_are_watched_and_gitignored_or_swap_files_under_them_are_not() {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: w\non: { watch: [\"src/**\"] }\nsteps:\n  - { id: log, shell: 'echo run >> runs.log' }\n",
    )
    .unwrap();
    std::fs::create_dir_all(ws.path().join("src/target")).unwrap();
    std::fs::write(ws.path().join(".gitignore"), "target/\n").unwrap();
    std::fs::write(ws.path().join("src/lib.rs"), "one\n").unwrap();
    let child = watch(&wf, ws.path(), &["--max-runs", "2"]);
    wait_for("the first run", Duration::from_secs(30), || {
        runs(ws.path()) == 1
    });
    std::fs::write(ws.path().join("src/target/out.o"), "built").unwrap();
    std::fs::write(ws.path().join("src/.lib.rs.swp"), "vim").unwrap();
    std::fs::write(ws.path().join("src/.lib.rs.swx"), "vim").unwrap();
    std::fs::write(ws.path().join("src/lib.rs~"), "backup").unwrap();
    std::fs::write(ws.path().join("src/4913"), "").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(runs(ws.path()), 1);

    std::fs::write(ws.path().join("src/lib.rs"), "two\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(runs(ws.path()), 2, "{stderr}");
    assert!(
        stderr
            .lines()
            .next()
            .is_some_and(|l| l.ends_with(&format!("watching: {}, src/**", wf.display()))),
        "{stderr}"
    );
    let triggers: Vec<&str> = stderr.lines().filter(|l| l.contains("changed:")).collect();
    assert_eq!(
        triggers,
        ["watch [2] running ".to_string() + &wf.display().to_string() + " (changed: src/lib.rs)"],
        "{stderr}"
    );
}

#[test]
fn watch_says_when_it_watches_the_whole_workspace() {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: w\nsteps:\n  - { id: build, shell: 'echo run >> runs.log' }\n",
    )
    .unwrap();
    let mut child = watch(&wf, ws.path(), &["--max-runs", "2"]);
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // Changes while a run goes on are the run's: change something once it is over.
    let mut stderr = read_until(&mut lines, "waiting for changes");
    std::fs::write(ws.path().join("anything.txt"), "x").unwrap();
    stderr.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    let stderr = stderr.join("\n");
    assert!(status.success(), "{stderr}");
    assert_eq!(runs(ws.path()), 2, "{stderr}");
    let start = stderr.lines().next().unwrap_or_default();
    assert!(
        start.contains(&format!(
            "watching: {}, the whole workspace (shell step `build` declares no inputs",
            wf.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("(changed: anything.txt)"), "{stderr}");
}

#[test]
fn ctrl_c_during_a_run_cancels_it_rolls_it_back_and_exits_130() {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: w\nsteps:\n  - { id: long, shell: 'echo partial > started; sleep 30; touch finished' }\n",
    )
    .unwrap();
    let child = watch(&wf, ws.path(), &[]);
    wait_for("the step to start", Duration::from_secs(60), || {
        ws.path().join("started").exists()
    });
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // Cancelled like `run` cancels: the step's write is rolled back, nothing after it ran.
    assert!(!ws.path().join("started").exists(), "{stderr}");
    assert!(!ws.path().join("finished").exists(), "{stderr}");
    let show = common::secureclaw()
        .args(["show", "last", "--json", "--state-dir"])
        .arg(ws.path().join(".secureclaw"))
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(record["state"], "cancelled", "{stderr}");
}

#[test]
fn ctrl_c_while_waiting_for_changes_exits_130() {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::create_dir(ws.path().join("src")).unwrap();
    std::fs::write(ws.path().join("src/input.txt"), "one\n").unwrap();
    std::fs::write(&wf, COPY_DECLARED).unwrap();
    let mut child = watch(&wf, ws.path(), &[]);
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let before = read_until(&mut lines, "waiting for changes");
    interrupt(&child);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "{}\n{}",
        before.join("\n"),
        rest.join("\n")
    );
    assert_eq!(runs(ws.path()), 1);
}

#[test]
fn watch_takes_a_workflow_file_not_an_instruction() {
    let help = common::secureclaw()
        .args(["watch", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let text: String = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.contains("--debounce <DEBOUNCE>"), "{text}");
    assert!(text.contains("[default: 50ms]"), "{text}");
    assert!(!text.contains("--instruction"), "{text}");
    assert!(text.contains("secureclaw plan"), "{text}");

    let ws = tempfile::tempdir().unwrap();
    let out = common::secureclaw()
        .args(["watch", "--instruction", "tidy the logs", "--workspace"])
        .arg(ws.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unexpected argument '--instruction'"),
        "{stderr}"
    );
    // Nothing was planned or created.
    assert!(!ws.path().join(".secureclaw").exists());
}

#[test]
fn an_edited_workflow_is_watched_by_what_it_declares_now() {
    let ws = tempfile::tempdir().unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::create_dir(ws.path().join("src")).unwrap();
    std::fs::write(ws.path().join("src/input.txt"), "one\n").unwrap();
    std::fs::write(ws.path().join("src/other.txt"), "other\n").unwrap();
    std::fs::write(&wf, COPY_DECLARED).unwrap();
    let child = watch(&wf, ws.path(), &["--max-runs", "3"]);
    wait_for("the first run", Duration::from_secs(30), || {
        runs(ws.path()) == 1
    });
    std::fs::write(&wf, COPY_DECLARED.replace("src/input.txt", "src/other.txt")).unwrap();
    wait_for(
        "the run of the edited workflow",
        Duration::from_secs(30),
        || runs(ws.path()) == 2,
    );
    // What the edited workflow no longer reads is no longer watched.
    std::fs::write(ws.path().join("src/input.txt"), "two\n").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(runs(ws.path()), 2);
    std::fs::write(ws.path().join("src/other.txt"), "changed\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(runs(ws.path()), 3, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("copy.txt")).unwrap(),
        "changed\n"
    );
    let watching: Vec<&str> = stderr.lines().filter(|l| l.contains("watching:")).collect();
    assert_eq!(watching.len(), 2, "{stderr}");
    assert!(watching[1].ends_with(", src/other.txt"), "{stderr}");
}
