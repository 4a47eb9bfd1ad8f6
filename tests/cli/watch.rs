//! `secureclaw watch` re-runs on a real file change, and ignores the run's own writes.

use crate::common;

use std::path::Path;
use std::process::Stdio;
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
