//! The `gvisor` backend against the real runsc on this machine: every promise of the sandbox
//! contract attacked from inside a step.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../../tests/common/docker_skip.rs"]
#[allow(dead_code)] // the Docker half is for the other test binaries
mod docker_skip;
#[path = "support/report.rs"]
mod report;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use secureclaw_sandbox::gvisor::{GvisorSandbox, STATE_ROOT};
use secureclaw_sandbox::{ExecOutcome, ExecSpec, ExitReason, NetworkPolicy, Sandbox, SandboxError};
use tokio_util::sync::CancellationToken;

/// One test at a time: each checks that nothing of its step is left, which it could not tell
/// from another test's step still running (and a sandbox per step is heavy on two cores).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(spec: &ExecSpec) -> Result<ExecOutcome, SandboxError> {
    let sandbox = GvisorSandbox::new().unwrap();
    let outcome = sandbox.run(spec, CancellationToken::new()).await;
    sandbox.flush().await;
    outcome
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The bundles and runsc sandboxes of this process: none may outlive its step.
fn leftovers() -> Vec<String> {
    let me = format!("secureclaw-{}-", std::process::id());
    let bundles = std::fs::read_dir(format!("{STATE_ROOT}/bundles"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&me))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let listed = std::process::Command::new("runsc")
        .args(["--root", &format!("{STATE_ROOT}/state"), "list", "-quiet"])
        .output()
        .unwrap();
    bundles
        .into_iter()
        .chain(
            text(&listed.stdout)
                .lines()
                .filter(|l| l.starts_with(&me))
                .map(str::to_string),
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_on_gvisors_kernel_unprivileged_and_writes_only_the_workspace() {
    if docker_skip::skip_without_gvisor() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let ws = tempfile::tempdir().unwrap();
    let script = r#"
        echo "kernel: $(cat /proc/version)"
        dmesg >/dev/null 2>&1 && echo "syslog: allowed" || echo "syslog: refused"
        echo "uid: $(id -u)"
        grep CapEff /proc/self/status
        grep Seccomp: /proc/self/status
        touch /usr/planted 2>/dev/null && echo "root: writable" || echo "root: read-only"
        echo x > /etc/planted 2>/dev/null && echo "etc: writable" || echo "etc: read-only"
        cp /bin/true /tmp/t && /tmp/t 2>/dev/null && echo "tmp: exec" || echo "tmp: noexec"
        echo "links: $(cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
        echo written > made.txt
    "#;
    let spec = ExecSpec::shell(script, ws.path().to_path_buf());
    let outcome = run(&spec).await.unwrap();
    let out = text(&outcome.stdout);
    assert!(outcome.exit.success(), "{out}\n{}", text(&outcome.stderr));
    let host_kernel = std::fs::read_to_string("/proc/version").unwrap();
    let seen_kernel = out.lines().find(|l| l.starts_with("kernel: ")).unwrap();
    assert!(
        !seen_kernel.contains(host_kernel.trim()),
        "the step saw the host kernel: {seen_kernel}"
    );
    // The seccomp policy is in force inside gVisor: it refuses syslog(2) to every step.
    assert!(out.contains("syslog: refused"), "{out}");
    assert!(out.contains("uid: 1000"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    for expected in ["root: read-only", "etc: read-only", "tmp: noexec"] {
        assert!(out.contains(expected), "{expected}\n{out}");
    }
    let links = out.lines().find(|l| l.starts_with("links: ")).unwrap();
    assert_eq!(links.trim(), "links: lo", "{out}");
    // A root-owned workspace is idmapped: the step wrote as 1000 inside, root owns it on disk.
    let made = ws.path().join("made.txt");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "written\n");
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), 0);
    assert!(!std::path::Path::new("/usr/planted").exists());
    let layers: Vec<&str> = outcome
        .enforcement
        .layers
        .iter()
        .filter(|l| l.active)
        .map(|l| l.name.as_str())
        .collect();
    for name in [
        "user-space-kernel",
        "cgroups",
        "workspace-nosuid",
        "no-network",
    ] {
        assert!(layers.contains(&name), "{name} not in {layers:?}");
    }
    assert!(outcome.enforcement.missing.is_empty());
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_dir_is_hidden_and_git_is_read_only() {
    if docker_skip::skip_without_gvisor() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join(".git")).unwrap();
    std::fs::write(ws.path().join(".git/config"), "[core]\n").unwrap();
    std::fs::create_dir_all(ws.path().join(".secureclaw")).unwrap();
    std::fs::write(ws.path().join(".secureclaw/vault.key"), "secret-material").unwrap();
    let script = r#"
        cat .secureclaw/vault.key 2>/dev/null && echo "state: read" || echo "state: hidden"
        echo planted > .secureclaw/planted 2>/dev/null && echo "state: writable" || echo "state: read-only"
        echo "[alias] x = !sh" >> .git/config 2>/dev/null && echo "git: writable" || echo "git: read-only"
        cat .git/config
    "#;
    let mut spec = ExecSpec::shell(script, ws.path().to_path_buf());
    spec.masked = vec![ws.path().join(".secureclaw")];
    let outcome = run(&spec).await.unwrap();
    let out = text(&outcome.stdout);
    for expected in [
        "state: hidden",
        "state: read-only",
        "git: read-only",
        "[core]",
    ] {
        assert!(out.contains(expected), "{expected}\n{out}");
    }
    assert!(!out.contains("secret-material"));
    assert_eq!(
        std::fs::read_to_string(ws.path().join(".git/config")).unwrap(),
        "[core]\n"
    );
    assert!(!ws.path().join(".secureclaw/planted").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_past_the_limit_ends_the_step_as_out_of_memory() {
    if docker_skip::skip_without_gvisor() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let ws = tempfile::tempdir().unwrap();
    // `tail` keeps the whole line in memory: 400 MB without a newline.
    let mut spec = ExecSpec::shell(
        "head -c 400000000 /dev/zero | tail > /dev/null; echo survived",
        ws.path().to_path_buf(),
    );
    spec.limits.memory_bytes = 160 << 20;
    let outcome = run(&spec).await.unwrap();
    assert_eq!(
        outcome.exit,
        ExitReason::OutOfMemory,
        "stdout {} stderr {}",
        text(&outcome.stdout),
        text(&outcome.stderr)
    );
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_kills_the_whole_sandbox() {
    if docker_skip::skip_without_gvisor() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let ws = tempfile::tempdir().unwrap();
    let mut spec = ExecSpec::shell(
        "echo printed-before-the-limit; (sleep 60; echo late > late.txt) & sleep 60",
        ws.path().to_path_buf(),
    );
    spec.limits.timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let outcome = run(&spec).await.unwrap();
    assert_eq!(outcome.exit, ExitReason::TimedOut);
    // What the step printed before it was ended is kept, however slowly the sandbox goes away.
    assert!(
        text(&outcome.stdout).contains("printed-before-the-limit"),
        "stdout {:?}",
        text(&outcome.stdout)
    );
    assert!(started.elapsed() < Duration::from_secs(50));
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    assert!(!ws.path().join("late.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_limit_holds_inside_the_sandbox() {
    if docker_skip::skip_without_gvisor() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let ws = tempfile::tempdir().unwrap();
    let mut spec = ExecSpec::shell(
        "n=0; for i in $(seq 1 60); do sleep 5 & n=$((n+1)); echo $n > started; done; wait",
        ws.path().to_path_buf(),
    );
    spec.limits.pids = 12;
    spec.limits.timeout = Duration::from_secs(60);
    let outcome = run(&spec).await.unwrap();
    let err = text(&outcome.stderr);
    assert!(err.contains("fork"), "{err}");
    let started: u32 = std::fs::read_to_string(ws.path().join("started"))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(
        started < 12,
        "{started} sleepers started under a limit of 12"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_steps_are_refused_with_the_backends_that_allow_them() {
    if docker_skip::skip_without_gvisor() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let ws = tempfile::tempdir().unwrap();
    let mut spec = ExecSpec::shell("true", ws.path().to_path_buf());
    spec.network = NetworkPolicy::Domains(vec!["example.org".into()]);
    let err = run(&spec).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, SandboxError::Unsupported { .. }) && text.contains("native"),
        "{text}"
    );
}

/// A write budget of 0 is none, as on every backend: no sampling and no RLIMIT_FSIZE of 0, which
/// would stop the step at its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_budget_of_zero_lets_a_file_grow() {
    if docker_skip::skip_without_gvisor() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let ws = tempfile::tempdir().unwrap();
    let mut spec = ExecSpec::shell(
        "head -c 3000000 /dev/zero > /workspace/grown && echo written",
        ws.path().to_path_buf(),
    );
    spec.limits.disk_bytes = 0;
    let outcome = run(&spec).await.unwrap();
    assert_eq!(
        outcome.exit,
        ExitReason::Exited { code: 0 },
        "stderr {}",
        text(&outcome.stderr)
    );
    assert_eq!(text(&outcome.stdout).trim(), "written");
    assert_eq!(
        std::fs::metadata(ws.path().join("grown")).unwrap().len(),
        3_000_000
    );
    report::assert_no_write_budget(&outcome);
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}
