//! Behaviour of the native backend on a real kernel: isolation properties, limits, lifetime
//! and the enforcement report.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use secureclaw_sandbox::{ExecSpec, ExitReason, NativeSandbox, Sandbox, SandboxError};
use tokio_util::sync::CancellationToken;

fn native() -> NativeSandbox {
    NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into())
}

fn ws() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = std::fs::canonicalize(d.path()).unwrap();
    (d, p)
}

async fn run(spec: &ExecSpec) -> secureclaw_sandbox::ExecOutcome {
    native().run(spec, CancellationToken::new()).await.unwrap()
}

/// A word unique to this workspace, put into a step's scripts so their processes can be found
/// from the host.
fn token_of(ws: &std::path::Path) -> String {
    format!("sc-live-{}", ws.file_name().unwrap().to_string_lossy())
}

/// Waits (bounded) until no process on the host carries `token` in its command line. Once
/// none does, nothing of the step is left that could still write, so absent files prove the
/// kill, with no fixed sleep that a loaded machine could outrun.
async fn wait_until_gone(token: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let alive = live_processes(token);
        if alive.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "step processes outlived the step: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Command lines of the host's processes that carry `token`.
fn live_processes(token: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(token))
        .collect()
}

/// The lifetime tests below are only as good as this search: it must find a live shell by the
/// token in its script.
#[tokio::test]
async fn live_processes_are_found_by_their_token() {
    let (_d, ws) = ws();
    let live = token_of(&ws);
    let mut child = std::process::Command::new("sh")
        // A command after `sleep` keeps the shell itself alive (dash execs a last command).
        .args(["-c", &format!(": {live}; sleep 30; :")])
        .spawn()
        .unwrap();
    // Until the child has exec'd the shell its command line is this test binary's, and while
    // the shell forks `sleep` the fork shows the shell's command line too: look again (bounded)
    // rather than race either exec.
    let mut found = live_processes(&live);
    for _ in 0..500 {
        if found.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        found = live_processes(&live);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    wait_until_gone(&live).await;
}

#[tokio::test]
async fn captures_output_exit_code_and_reports_every_layer() {
    let (_d, ws) = ws();
    let out = run(&ExecSpec::shell("echo out; echo err >&2; exit 3", ws)).await;
    assert_eq!(out.exit, ExitReason::Exited { code: 3 });
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let r = &out.enforcement;
    assert!(r.isolated);
    assert!(r.missing.is_empty(), "missing: {:?}", r.missing);
    for layer in [
        "namespaces",
        "cgroup-namespace",
        "readonly-root",
        "workspace",
        "tmp",
        "network",
        "capabilities",
        "no-new-privs",
        "identity",
        "unprivileged-uid",
        "landlock",
        "seccomp",
        "cgroup-memory",
        "cgroup-cpu",
        "cgroup-pids",
        "wall-clock",
    ] {
        assert!(
            r.layers.iter().any(|l| l.name == layer && l.active),
            "layer {layer} not reported active: {:#?}",
            r.layers
        );
    }
    let landlock = r.layers.iter().find(|l| l.name == "landlock").unwrap();
    assert!(landlock.detail.starts_with("ABI "), "{}", landlock.detail);
}

#[tokio::test]
async fn runs_as_uid_1000_without_capabilities_under_seccomp() {
    let (_d, ws) = ws();
    let out = run(&ExecSpec::shell(
        "id -u; id -g; grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; hostname",
        ws,
    ))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.exit.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], &["1000", "1000"]);
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert!(
            text.contains(&format!("{cap}:\t0000000000000000")),
            "{cap} not empty: {text}"
        );
    }
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.ends_with("secureclaw\n"), "{text}");
}

#[tokio::test]
async fn clone3_fails_with_enosys_so_libc_falls_back_to_clone() {
    let (_d, ws) = ws();
    // 435 = clone3 on x86_64 and aarch64.
    let out = run(&ExecSpec::shell(
        "perl -e 'syscall(435, 0, 0); print $!+0' ; echo; perl -e 'syscall(101, 0, 0, 0, 0); print $!+0'",
        ws,
    ))
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "38\n1");
}

#[tokio::test]
async fn output_is_capped_but_counted() {
    let (_d, ws) = ws();
    let mut spec = ExecSpec::shell("head -c 100000 /dev/zero", ws);
    spec.limits.output_cap = 1000;
    let out = run(&spec).await;
    assert_eq!(out.stdout.len(), 1000);
    assert_eq!(out.stdout_total, 100_000);
}

#[tokio::test]
async fn workspace_files_belong_to_the_workspace_owner_on_the_host() {
    let (_d, ws) = ws();
    let out = run(&ExecSpec::shell(
        "echo hi > made && ls -ln made",
        ws.clone(),
    ))
    .await;
    assert!(
        out.exit.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owner = std::fs::metadata(&ws).unwrap().uid();
    assert_eq!(std::fs::metadata(ws.join("made")).unwrap().uid(), owner);
    assert_eq!(std::fs::read(ws.join("made")).unwrap(), b"hi\n");
    // Inside, the step owns it as uid 1000.
    assert!(String::from_utf8_lossy(&out.stdout).contains(" 1000 1000 "));
}

#[tokio::test]
async fn git_dir_is_readable_but_read_only() {
    let (_d, ws) = ws();
    std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
    std::fs::write(ws.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    let out = run(&ExecSpec::shell(
        "cat .git/HEAD; touch .git/hooks/x 2>/dev/null && echo WROTE; touch ok",
        ws.clone(),
    ))
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ref: refs/heads/main\n"
    );
    assert!(!ws.join(".git/hooks/x").exists());
    assert!(
        ws.join("ok").exists(),
        "the rest of the workspace stays writable"
    );
}

#[tokio::test]
async fn masked_paths_are_invisible() {
    let (_d, ws) = ws();
    std::fs::create_dir_all(ws.join(".secureclaw")).unwrap();
    std::fs::write(ws.join(".secureclaw/vault.key"), "secret").unwrap();
    std::fs::write(ws.join("token.txt"), "secret").unwrap();
    let mut spec = ExecSpec::shell(
        "cat .secureclaw/vault.key; cat token.txt; ls -A .secureclaw; echo end",
        ws.clone(),
    );
    spec.masked = vec![ws.join(".secureclaw"), ws.join("token.txt")];
    let out = run(&spec).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "end\n");
    assert_eq!(std::fs::read(ws.join("token.txt")).unwrap(), b"secret");
}

/// The state dir inside the workspace is an empty read-only directory to the step: `find .`,
/// `tar czf` and `ls -a` go through the workspace without an error and reveal nothing of it. A
/// masked file is an empty regular file (not a device node that tar would archive).
#[tokio::test]
async fn a_masked_state_dir_does_not_break_find_or_tar() {
    let (_d, ws) = ws();
    std::fs::create_dir_all(ws.join(".secureclaw/blobs/ab")).unwrap();
    std::fs::write(ws.join(".secureclaw/vault.header.json"), "{}").unwrap();
    std::fs::write(ws.join(".secureclaw/blobs/ab/cd"), "secret").unwrap();
    std::fs::write(ws.join("token.txt"), "secret").unwrap();
    std::fs::write(ws.join("src.txt"), "code").unwrap();
    let mut spec = ExecSpec::shell(
        "set -e; find . | sort; echo ---; tar czf /tmp/x.tgz . ; tar tzf /tmp/x.tgz | sort; echo ---; ls -a .secureclaw | tr '\n' ' '; echo; stat -c '%F %s' token.txt; cat token.txt; touch .secureclaw/x 2>/dev/null || echo read-only",
        ws.clone(),
    );
    spec.masked = vec![ws.join(".secureclaw"), ws.join("token.txt")];
    let out = run(&spec).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.exit.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("vault") && !text.contains("blobs"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("./src.txt"), "{text}");
    assert!(
        text.contains(". .. \nregular empty file 0\nread-only"),
        "{text}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A masked path spelled through a symlink is hidden where it really is, and a symlink planted
/// where a mask goes is refused rather than followed.
#[tokio::test]
async fn masks_compare_canonical_paths_and_never_follow_a_planted_symlink() {
    let (_d, ws) = ws();
    std::fs::create_dir_all(ws.join(".secureclaw")).unwrap();
    std::fs::write(ws.join(".secureclaw/vault.key"), "secret").unwrap();
    std::os::unix::fs::symlink(".secureclaw", ws.join("st")).unwrap();
    // Masked by a non-canonical spelling (through the symlink and a `.` component).
    let mut spec = ExecSpec::shell(
        "cat st/vault.key .secureclaw/vault.key; echo end",
        ws.clone(),
    );
    spec.masked = vec![ws.join("./st")];
    let out = run(&spec).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "end\n");
}

/// Engine as root, workspace under a private (0700) parent such as /root: the sandbox user
/// cannot traverse the parent, so the helper opens the workspace while it is still privileged.
#[tokio::test]
async fn a_workspace_under_a_private_parent_works() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the private-parent case needs a root engine");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let ws = std::fs::canonicalize(parent.path())
        .unwrap()
        .join("project");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("in.txt"), "hello").unwrap();
    std::fs::create_dir(ws.join(".git")).unwrap();
    std::fs::write(ws.join(".git/HEAD"), "ref").unwrap();
    let mut spec = ExecSpec::shell("cat in.txt; cat .git/HEAD; echo made > out.txt", ws.clone());
    spec.masked = vec![ws.join(".git/HEAD")];
    let out = run(&spec).await;
    assert!(
        out.exit.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
    assert_eq!(std::fs::read(ws.join("out.txt")).unwrap(), b"made\n");
    assert_eq!(
        std::fs::metadata(ws.join("out.txt")).unwrap().uid(),
        std::fs::metadata(&ws).unwrap().uid()
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    let (_d, ws) = ws();
    let live = token_of(&ws);
    let mut spec = ExecSpec::shell(
        &format!(
            ": {live}; echo printed-before-the-limit; (trap '' TERM; sleep 2; touch survived) & setsid sh -c ': {live}; sleep 2; touch daemon' & sleep 30"
        ),
        ws.clone(),
    );
    spec.limits.timeout = Duration::from_millis(300);
    let out = run(&spec).await;
    assert_eq!(out.exit, ExitReason::TimedOut);
    // What the step printed before it was ended is kept.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("printed-before-the-limit"), "{stdout:?}");
    wait_until_gone(&live).await;
    assert!(!ws.join("survived").exists());
    assert!(!ws.join("daemon").exists());
}

#[tokio::test]
async fn background_children_die_with_the_step() {
    let (_d, ws) = ws();
    let live = token_of(&ws);
    let spec = ExecSpec::shell(
        &format!(
            "setsid sh -c ': {live}; sleep 1; touch late' </dev/null >/dev/null 2>&1 & exit 0"
        ),
        ws.clone(),
    );
    let out = run(&spec).await;
    assert!(out.exit.success());
    wait_until_gone(&live).await;
    assert!(!ws.join("late").exists());
}

#[tokio::test]
async fn cancellation_and_a_dropped_engine_future_kill_the_step() {
    let (_d, ws) = ws();
    let live = token_of(&ws);
    let spec = ExecSpec::shell(&format!(": {live}; sleep 1; touch cancelled"), ws.clone());
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        t.cancel();
    });
    let out = native().run(&spec, token).await.unwrap();
    assert_eq!(out.exit, ExitReason::Cancelled);

    // The engine side vanishes mid-step (future dropped, as when the engine dies).
    let spec = ExecSpec::shell(&format!(": {live}; sleep 1; touch orphaned"), ws.clone());
    let sb = native();
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        sb.run(&spec, CancellationToken::new()),
    )
    .await;
    assert!(r.is_err(), "the step should still have been running");
    wait_until_gone(&live).await;
    assert!(!ws.join("cancelled").exists());
    assert!(!ws.join("orphaned").exists());
}

#[tokio::test]
async fn limits_report_a_clear_reason() {
    let (_d, ws) = ws();
    let mut spec = ExecSpec::shell("perl -e '$x = \"a\" x (200 * 1024 * 1024)'", ws.clone());
    spec.limits.memory_bytes = 48 * 1024 * 1024;
    assert_eq!(run(&spec).await.exit, ExitReason::OutOfMemory);

    let mut spec = ExecSpec::shell(
        "for i in $(seq 40); do sleep 2 & done; wait; exit 1",
        ws.clone(),
    );
    spec.limits.pids = 16;
    assert_eq!(run(&spec).await.exit, ExitReason::PidsLimit);

    // A reused cgroup does not carry the previous step's OOM into the next one.
    let ok = run(&ExecSpec::shell("exit 1", ws)).await;
    assert_eq!(ok.exit, ExitReason::Exited { code: 1 });
}

#[tokio::test]
async fn missing_program_is_a_failed_step_with_a_reason() {
    let (_d, ws) = ws();
    let mut spec = ExecSpec::shell("", ws);
    spec.argv = vec!["no-such-program-xyz".into()];
    let out = run(&spec).await;
    assert_eq!(out.exit, ExitReason::Exited { code: 127 });
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn mapping_the_step_to_host_root_is_refused_unless_degraded_mode_is_accepted() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs a root engine to request a uid-0 mapping");
        return;
    }
    let (_d, ws) = ws();
    let sb = native().with_outside_ids(0, 0);
    let mut spec = ExecSpec::shell("true", ws);
    let err = sb.run(&spec, CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::Unavailable { reason, .. } if reason.contains("degraded")),
        "{err}"
    );
    spec.allow_degraded = true;
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    assert!(out.exit.success());
    assert!(
        out.enforcement
            .missing
            .iter()
            .any(|m| m.starts_with("unprivileged-uid")),
        "{:?}",
        out.enforcement.missing
    );
}

#[tokio::test]
async fn concurrent_steps_are_isolated_from_each_other() {
    let (_d, ws1) = ws();
    let (_e, ws2) = ws();
    let mut a = ExecSpec::shell("sleep 1", ws1);
    a.env.insert("OTHER_SECRET".into(), "tok-8c1e".into());
    let b = ExecSpec::shell(
        "sleep 0.3; ls /proc | grep -c '^[0-9]'; cat /proc/[0-9]*/environ 2>/dev/null | grep -c tok-8c1e",
        ws2,
    );
    let sb = native();
    let (ra, rb) = tokio::join!(
        sb.run(&a, CancellationToken::new()),
        sb.run(&b, CancellationToken::new())
    );
    assert!(ra.unwrap().exit.success());
    let rb = rb.unwrap();
    let text = String::from_utf8_lossy(&rb.stdout);
    let counts: Vec<u32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    // Only the step's own processes (init, sh, ls/grep) are visible; the other step's are not.
    assert!(counts[0] <= 5, "{text}");
    assert_eq!(counts[1], 0, "{text}");
}

#[tokio::test]
async fn network_is_loopback_only_and_loopback_works() {
    let (_d, ws) = ws();
    // Several runs: the first ones create their namespace in the helper, later ones get a
    // pre-created one from the engine's pool; both must look the same from inside.
    for _ in 0..4 {
        let out = run(&ExecSpec::shell(
            "perl -MIO::Socket::INET -e '$l = IO::Socket::INET->new(LocalAddr => \"127.0.0.1:4567\", Listen => 1, ReuseAddr => 1) or die \"listen\"; IO::Socket::INET->new(PeerAddr => \"127.0.0.1:4567\") or die \"connect\"; print \"loopback ok\\n\"'; grep ':' /proc/net/dev | cut -d: -f1 | tr -d ' '",
            ws.clone(),
        ))
        .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "loopback ok\nlo\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
