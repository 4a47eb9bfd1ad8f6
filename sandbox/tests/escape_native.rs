//! The escape battery (`tests/escape/cases.rs`) run through the `Sandbox` trait: every attack
//! must fail on `native` and on `docker`, and the same attacks are run on `host` to show they
//! are real.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use secureclaw_sandbox::docker::{DockerSandbox, ImageRecipe, build_image};
use secureclaw_sandbox::{ExecSpec, ExitReason, HostSandbox, NativeSandbox, Sandbox};
use tokio_util::sync::CancellationToken;

include!("../../tests/escape/cases.rs");
include!("../../tests/escape/harness.rs");

fn spec_for(case: &Case, env: &Env) -> ExecSpec {
    let mut spec = ExecSpec::shell(&env.render(case.script), env.ws.clone());
    spec.env.insert(
        "PATH".into(),
        "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
    );
    spec.env.insert("SECURECLAW_CASE_SELF".into(), "1".into());
    spec.limits.timeout = Duration::from_millis(case.timeout_ms);
    spec.limits.memory_bytes = case.memory_mib * 1024 * 1024;
    spec.limits.pids = case.pids;
    spec
}

struct Verdict {
    evidence: Vec<String>,
    exit: Option<ExitReason>,
    stderr: String,
}

async fn attack(sb: &dyn Sandbox, case: &Case) -> Verdict {
    let env = setup();
    if sb.name() == "docker" {
        // The container runs as the seed's 1000:1000, which must own the workspace to write.
        chown_tree(&env.ws, 1000);
    }
    let before = env.outside();
    let spec = spec_for(case, &env);
    let run = sb.run(&spec, CancellationToken::new());
    let result = if case.other_step {
        let mut other = ExecSpec::shell("sleep 4", env.ws.clone());
        other
            .env
            .insert("SECURECLAW_STEP_SECRET".into(), TOKEN.into());
        other.env.insert("PATH".into(), "/usr/bin:/bin".into());
        let (r, _) = tokio::join!(run, sb.run(&other, CancellationToken::new()));
        r
    } else {
        run.await
    };
    tokio::time::sleep(Duration::from_millis(case.settle_ms)).await;
    let evidence = env.evidence(&before);
    match result {
        Ok(out) => Verdict {
            evidence,
            exit: Some(out.exit),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(e) => Verdict {
            evidence,
            exit: None,
            stderr: e.to_string(),
        },
    }
}

fn native() -> NativeSandbox {
    NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into())
}

#[test]
fn battery_has_at_least_30_cases() {
    assert!(CASES.len() >= 30, "{} cases", CASES.len());
    let mut ids: Vec<_> = CASES.iter().map(|c| c.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), CASES.len(), "duplicate case ids");
}

fn chown_tree(dir: &Path, id: u32) {
    std::os::unix::fs::chown(dir, Some(id), Some(id)).unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            chown_tree(&p, id);
        } else {
            std::os::unix::fs::lchown(&p, Some(id), Some(id)).unwrap();
        }
    }
}

/// Runs every case on `sb` and fails with the list of escapes and wrong endings.
async fn assert_stops_every_attack(sb: &dyn Sandbox) {
    let mut failures = Vec::new();
    for case in CASES {
        let v = attack(sb, case).await;
        let Some(exit) = &v.exit else {
            failures.push(format!("{}: backend error: {}", case.id, v.stderr));
            continue;
        };
        println!("{} {:<22} -> {:?}", sb.name(), case.id, exit);
        if !v.evidence.is_empty() {
            failures.push(format!(
                "{}: ESCAPED: {:?} (stderr: {})",
                case.id, v.evidence, v.stderr
            ));
        }
        let ok = match case.expect {
            "oom" => *exit == ExitReason::OutOfMemory,
            "timeout" => *exit == ExitReason::TimedOut,
            "fail" => !exit.success(),
            _ => true,
        };
        if !ok {
            failures.push(format!(
                "{}: expected {}, got {exit:?}",
                case.id, case.expect
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} sandbox failures:\n{}",
        sb.name(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_stops_every_attack() {
    assert_stops_every_attack(&native()).await;
}

/// The image the battery attacks from: busybox plus the host's perl (with its core modules)
/// and setuid `su`, so the attacks are the same programs as on the other backends.
async fn escape_image() -> String {
    static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| async {
            let tag = "secureclaw-sandbox:escape-test".to_string();
            let inc = std::process::Command::new("perl")
                .args(["-e", "print for grep m{/perl-base$}, @INC"])
                .output()
                .unwrap();
            let perl_base = String::from_utf8(inc.stdout).unwrap();
            assert!(!perl_base.is_empty(), "perl-base module dir not found");
            let recipe = ImageRecipe {
                include: vec!["perl".into(), "/bin/su".into(), perl_base.into()],
                ..ImageRecipe::new(tag.clone())
            };
            let docker = DockerSandbox::docker().await.unwrap();
            build_image(docker, &recipe, |_| {}).await.unwrap();
            tag
        })
        .await
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stops_every_attack() {
    let sb = DockerSandbox::with_default_image(escape_image().await);
    // The attack tools really work in the image: a battery of "command not found" would pass
    // vacuously.
    let dir = tempfile::tempdir().unwrap();
    chown_tree(dir.path(), 1000);
    let probe = ExecSpec::shell(
        "perl -MIO::Socket::INET -e 'print qq(perl ok\n)' && su --help >/dev/null 2>&1 && echo su ok && unshare --help 2>&1 | head -1",
        dir.path().to_path_buf(),
    );
    let out = sb.run(&probe, CancellationToken::new()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("perl ok") && stdout.contains("su ok"),
        "image tools missing: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_stops_every_attack(&sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_lets_the_attacks_through() {
    let mut escaped = Vec::new();
    let mut held = Vec::new();
    for case in CASES.iter().filter(|c| c.host_safe) {
        let v = attack(&HostSandbox, case).await;
        if v.evidence.is_empty() {
            held.push(case.id);
        } else {
            escaped.push(case.id);
        }
    }
    println!("host: {} attacks succeeded: {escaped:?}", escaped.len());
    println!("host: {} attacks failed anyway: {held:?}", held.len());
    // The battery is only meaningful if the attacks work when nothing stops them.
    for must in [
        "write-absolute",
        "write-dotdot",
        "write-symlink",
        "read-ssh-key",
        "read-state-dir",
        "git-hooks",
        "exec-from-tmp",
        "tcp-host-loopback",
        "daemon",
        "memory-bomb",
        "fork-bomb",
        "read-other-step-env",
        "ptrace",
        "tiocsti",
        "tiocsti-high-bits",
    ] {
        assert!(
            escaped.contains(&must),
            "`{must}` should succeed on host; escaped={escaped:?}"
        );
    }
}
