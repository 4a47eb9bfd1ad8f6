//! The escape battery (`tests/escape/cases.rs`) run through the `Sandbox` trait: every attack
//! must be refused on `native` and on `docker` the way its case declares, and the same attacks
//! must succeed on `host` (they are real).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use secureclaw_sandbox::docker::{DockerSandbox, ImageRecipe, build_image};
use secureclaw_sandbox::{ExecSpec, ExitReason, HostSandbox, NativeSandbox, Sandbox};
use tokio_util::sync::CancellationToken;

include!("../../tests/escape/cases.rs");
include!("../../tests/escape/harness.rs");

fn spec_for(case: &Case, env: &Env) -> ExecSpec {
    let mut spec = ExecSpec::shell(&env.render(case), env.ws.clone());
    spec.env.insert(
        "PATH".into(),
        "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
    );
    spec.env.insert("SECURECLAW_CASE_SELF".into(), "1".into());
    spec.limits.timeout = Duration::from_millis(case.timeout_ms);
    spec.limits.memory_bytes = case.memory_mib * 1024 * 1024;
    spec.limits.pids = case.pids;
    if case.disk_mib > 0 {
        spec.limits.disk_bytes = case.disk_mib * 1024 * 1024;
    }
    if case.state_in_workspace {
        spec.masked.push(env.ws.join(".secureclaw"));
    }
    spec
}

fn limit_of(exit: &ExitReason) -> Option<Limit> {
    match exit {
        ExitReason::TimedOut => Some(Limit::Timeout),
        ExitReason::OutOfMemory => Some(Limit::Memory),
        ExitReason::DiskBudget => Some(Limit::DiskBudget),
        _ => None,
    }
}

/// Runs one case on `sb`; returns how the step ended and the evidence left on the host.
async fn attack(sb: &dyn Sandbox, case: &Case) -> (Observed, Vec<String>) {
    let env = setup_case(case);
    if case.state_in_workspace {
        // Where the engine keeps its state by default, as the engine would hand it over:
        // masked.
        let state = env.ws.join(".secureclaw");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("vault.header.json"), "{\"format\": 1}\n").unwrap();
    }
    if sb.name() == "docker" {
        // The container runs as the seed's 1000:1000, which must own the workspace to write.
        chown_tree(&env.ws, 1000);
    }
    let before = env.outside();
    let spec = spec_for(case, &env);
    let run = sb.run(&spec, CancellationToken::new());
    let result = if case.other_step {
        let mut other = ExecSpec::shell("sleep 6", env.ws.clone());
        other
            .env
            .insert("SECURECLAW_STEP_SECRET".into(), TOKEN.into());
        other.env.insert("PATH".into(), "/usr/bin:/bin".into());
        let (r, _) = tokio::join!(run, sb.run(&other, CancellationToken::new()));
        r
    } else {
        run.await
    };
    let settle = Duration::from_millis(case.settle_ms);
    let evidence = tokio::task::block_in_place(|| env.settled_evidence(&before, settle));
    let seen = match result {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            Observed {
                success: out.exit.success(),
                limit: limit_of(&out.exit),
                detail: format!("exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.exit),
                stdout,
                stderr,
            }
        }
        Err(e) => Observed {
            success: false,
            limit: None,
            stdout: String::new(),
            stderr: String::new(),
            detail: format!("backend error: {e}"),
        },
    };
    (seen, evidence)
}

fn native() -> NativeSandbox {
    NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into())
}

#[test]
fn battery_cases_are_distinct_and_declare_their_refusal() {
    assert!(CASES.len() >= 30, "{} cases", CASES.len());
    let mut ids: Vec<_> = CASES.iter().map(|c| c.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), CASES.len(), "duplicate case ids");
    for case in CASES {
        // The binary runner uses the id as the workflow's name.
        assert!(
            case.id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{}: ids are lowercase words joined by '-'",
            case.id
        );
        if let Blocked::Error(errors) = case.blocked {
            assert!(!errors.is_empty(), "{}: no refusal declared", case.id);
        }
        // Only limits the host cannot keep may be declared as kept by the host.
        assert!(
            !case.host_enforces || matches!(case.blocked, Blocked::Limit(Limit::Timeout)),
            "{}: host_enforces is for timeouts",
            case.id
        );
        // Every attack leaves its own evidence when it works.
        assert!(
            case.script.contains("PWNED") || case.script.contains("{OUT}/"),
            "{}: the script leaves no evidence when the attack works",
            case.id
        );
    }
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

/// Runs every case on `sb` and fails with the list of escapes and wrong refusals.
async fn assert_stops_every_attack(sb: &dyn Sandbox) {
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in CASES {
        let t = Instant::now();
        let (seen, evidence) = attack(sb, case).await;
        println!(
            "{} {:<26} {:>6} ms  {}",
            sb.name(),
            case.id,
            t.elapsed().as_millis(),
            seen.detail.lines().next().unwrap_or("")
        );
        failures.extend(judge_isolated(case, &seen, &evidence));
    }
    println!(
        "{}: {} cases in {:.1} s",
        sb.name(),
        CASES.len(),
        started.elapsed().as_secs_f64()
    );
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

/// The image the battery attacks from: busybox plus the host's perl (with its core modules),
/// setuid `su` and `setcap`, so the attacks are the same programs as on the other backends.
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
                include: vec![
                    "perl".into(),
                    "/bin/su".into(),
                    "/usr/sbin/setcap".into(),
                    perl_base.into(),
                ],
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
    assert_stops_every_attack(&sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_lets_the_attacks_through() {
    let root = running_as_root();
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut required = 0;
    for case in CASES.iter().filter(|c| c.host_safe) {
        if let Err(why) = host_applicable(case) {
            println!("host {why}");
            continue;
        }
        let (seen, evidence) = attack(&HostSandbox, case).await;
        println!("host {:<26} evidence {evidence:?}", case.id);
        let verdict = judge_host(case, &seen, &evidence);
        if root {
            required += 1;
            failures.extend(verdict);
        } else if !verdict.is_empty() {
            println!("host (not root, not required): {}", verdict.join("\n"));
        }
    }
    println!(
        "host: {required} cases required, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The battery is only meaningful if the attacks work when nothing stops them.
    assert!(
        failures.is_empty(),
        "attacks that did not work on host:\n{}",
        failures.join("\n")
    );
}
