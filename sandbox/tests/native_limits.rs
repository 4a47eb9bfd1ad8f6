//! The native backend's resource accounting on a real kernel: the write budget, the pids limit
//! a successful step ran into, and cgroups that must not outlive a run.
//!
//! The tests of this file share one lock: the cgroup check looks at every step cgroup of this
//! process, so no other step may be running while it looks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "support/report.rs"]
mod report;
#[path = "support/tmpfs_workspace.rs"]
mod tmpfs_workspace;
use tmpfs_workspace::TmpfsWorkspace;

use std::path::PathBuf;
use std::time::Duration;

use secureclaw_sandbox::{ExecOutcome, ExecSpec, ExitReason, NativeSandbox, Sandbox};
use tokio_util::sync::CancellationToken;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn native() -> NativeSandbox {
    NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into())
}

fn ws() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = std::fs::canonicalize(d.path()).unwrap();
    (d, p)
}

async fn run(spec: &ExecSpec) -> ExecOutcome {
    native().run(spec, CancellationToken::new()).await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const BUDGET: u64 = 16 << 20;

fn budget_spec(script: &str, ws: PathBuf) -> ExecSpec {
    let mut spec = ExecSpec::shell(script, ws);
    spec.limits.disk_bytes = BUDGET;
    // Far above what any budget case needs: ending by timeout would be a failure.
    spec.limits.timeout = Duration::from_secs(120);
    spec
}

#[tokio::test]
async fn one_endless_file_ends_as_disk_budget_and_stays_within_it() {
    let _serial = SERIAL.lock().await;
    for script in [
        // The classic: the kernel's SIGXFSZ ends `yes` (exec'd by sh).
        "yes > big",
        // The shell survives the killed writer, writes on and exits 0 afterwards: the last
        // sample of the disk watch sees the budget gone.
        "yes > big; yes > big2; echo after",
        // SIGXFSZ ignored: write() fails with EFBIG, the writers exit 1, the step exits 0.
        "trap '' XFSZ; yes > big; yes > big2; exit 0",
        // A writer in the background, the step sleeping: the disk watch stops it.
        "(yes > big &) ; sleep 100",
    ] {
        let tmp = TmpfsWorkspace::new("256m", 0);
        let ws = tmp.path();
        let out = run(&budget_spec(script, ws.clone())).await;
        assert_eq!(
            out.exit,
            ExitReason::DiskBudget,
            "{script}: {}",
            text(&out.stderr)
        );
        for f in ["big", "big2"] {
            // The kernel bounds every single file at the budget.
            let size = std::fs::metadata(ws.join(f)).map_or(0, |m| m.len());
            assert!(size <= BUDGET, "{script}: {size} bytes written to {f}");
        }
        assert_eq!(
            std::fs::metadata(ws.join("big")).unwrap().len(),
            BUDGET,
            "{script}: the writer did not reach the budget"
        );
        assert!(
            out.warnings.iter().any(|w| w.contains("write budget")),
            "{script}: {:?}",
            out.warnings
        );
        assert!(out.exit.describe().contains("write budget"));
    }
}

#[tokio::test]
async fn many_small_files_past_the_budget_end_as_disk_budget() {
    let _serial = SERIAL.lock().await;
    let tmp = TmpfsWorkspace::new("256m", 0);
    let ws = tmp.path();
    let out = run(&budget_spec(
        "i=0; while :; do head -c 1048576 /dev/zero > f$i || exit 3; i=$((i+1)); done",
        ws.clone(),
    ))
    .await;
    assert_eq!(out.exit, ExitReason::DiskBudget, "{}", text(&out.stderr));
    let files = std::fs::read_dir(&ws).unwrap().count();
    // Past the budget (16 files of 1 MiB), stopped well before the 120 s timeout would.
    assert!(files >= 15, "{files} files");
}

/// A write budget of 0 is none, as on the container backends: no RLIMIT_FSIZE at all.
#[tokio::test]
async fn a_write_budget_of_zero_sets_no_file_size_limit() {
    let _serial = SERIAL.lock().await;
    let tmp = TmpfsWorkspace::new("256m", 0);
    let ws = tmp.path();
    let mut spec = ExecSpec::shell(
        "head -c 3000000 /dev/zero > grown && ulimit -f && ulimit -H -f",
        ws.clone(),
    );
    spec.limits.disk_bytes = 0;
    let out = run(&spec).await;
    assert_eq!(
        out.exit,
        ExitReason::Exited { code: 0 },
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "unlimited\nunlimited\n");
    assert_eq!(
        std::fs::metadata(ws.join("grown")).unwrap().len(),
        3_000_000
    );
    report::assert_no_write_budget(&out);
}

#[tokio::test]
async fn a_step_within_its_budget_is_untouched() {
    let _serial = SERIAL.lock().await;
    let tmp = TmpfsWorkspace::new("256m", 0);
    let ws = tmp.path();
    let mut spec = ExecSpec::shell("head -c 1048576 /dev/zero > small && echo done", ws.clone());
    spec.limits.disk_bytes = 512 << 20;
    let out = run(&spec).await;
    assert_eq!(
        out.exit,
        ExitReason::Exited { code: 0 },
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.stdout, b"done\n");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert!(
        out.enforcement
            .layers
            .iter()
            .any(|l| l.name == "write-budget" && l.active)
    );
    // The kernel limit is in place inside (RLIMIT_FSIZE, in 512-byte blocks for ulimit -f).
    let out = run(&ExecSpec {
        limits: spec.limits.clone(),
        ..ExecSpec::shell("ulimit -f; ulimit -H -f", ws)
    })
    .await;
    assert_eq!(
        text(&out.stdout),
        format!("{0}\n{0}\n", (512u64 << 20) / 512)
    );
}

#[tokio::test]
async fn a_fork_bomb_that_exits_0_is_reported_with_a_pids_warning() {
    let _serial = SERIAL.lock().await;
    let (_d, ws) = ws();
    // perl carries on when fork fails (dash would give up); the step exits 0 either way.
    let mut spec = ExecSpec::shell(
        "perl -e 'for (1..40) { my $p = fork(); if (defined $p && $p == 0) { sleep 1; exit 0 } } 1 while wait() != -1; exit 0'",
        ws.clone(),
    );
    spec.limits.pids = 16;
    let out = run(&spec).await;
    assert_eq!(out.exit, ExitReason::Exited { code: 0 });
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("process limit") && w.contains("16")),
        "{:?}",
        out.warnings
    );
    // A step that stays under its limit carries no such warning (the reused cgroup's earlier
    // events do not count).
    let mut spec = ExecSpec::shell("for i in 1 2 3; do sleep 0.1 & done; wait", ws);
    spec.limits.pids = 16;
    let out = run(&spec).await;
    assert!(out.exit.success());
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

/// Step cgroups of this process under every cgroup hierarchy's `secureclaw` directory.
fn my_cgroups() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}-", std::process::id());
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !(right.starts_with("cgroup ") || right.starts_with("cgroup2 ")) {
            continue;
        }
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(PathBuf::from(mount).join("secureclaw")) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_finished_run_leaves_no_cgroup_behind() {
    let _serial = SERIAL.lock().await;
    let (_d, ws) = ws();
    let sb = native();
    let specs: Vec<ExecSpec> = ["true", "exit 3", "sleep 0.2 & wait"]
        .iter()
        .map(|s| ExecSpec::shell(s, ws.clone()))
        .collect();
    let (a, b, c) = tokio::join!(
        sb.run(&specs[0], CancellationToken::new()),
        sb.run(&specs[1], CancellationToken::new()),
        sb.run(&specs[2], CancellationToken::new()),
    );
    for out in [a, b, c] {
        assert!(
            out.unwrap()
                .enforcement
                .layers
                .iter()
                .any(|l| l.name == "cgroup-pids")
        );
    }
    // While the engine holds them for reuse they exist (the check below can see them)...
    assert!(!my_cgroups().is_empty(), "no step cgroup was ever made");
    // ...and the end of the run removes them.
    sb.flush().await;
    assert_eq!(my_cgroups(), Vec::<PathBuf>::new());
}
