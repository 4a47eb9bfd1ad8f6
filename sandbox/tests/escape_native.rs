//! The escape battery (`tests/escape/cases.rs`) run through the `Sandbox` trait: every attack
//! must be refused on `native`, `docker` and `gvisor` the way its case declares, and the same attacks
//! must succeed on `host` (they are real).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../../tests/common/docker_skip.rs"]
mod docker_skip;

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
        // The container runs as the default 1000:1000, which must own the workspace to write.
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
    let (seen, evidence) = attack(sb, &CONTROL).await;
    let mut failures = judge_control(sb.name(), &seen, &evidence);
    for case in CASES {
        let t = Instant::now();
        let (seen, evidence) = attack(sb, case).await;
        println!(
            "{} {:<26} {:>6} ms  {} | {}",
            sb.name(),
            case.id,
            t.elapsed().as_millis(),
            seen.detail.lines().next().unwrap_or(""),
            last_line(&seen.stderr)
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
            // A tag of its own per recipe: another checkout building an older recipe under the
            // same name on the same daemon would take tools away mid-run.
            let tag = "secureclaw-sandbox:escape-battery-setcap".to_string();
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
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = DockerSandbox::with_default_image(escape_image().await);
    assert_stops_every_attack(&sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_stops_every_attack() {
    if docker_skip::skip_without_gvisor() {
        return;
    }
    let sb = secureclaw_sandbox::GvisorSandbox::new().unwrap();
    assert_stops_every_attack(&sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_lets_the_attacks_through() {
    let root = running_as_root();
    let started = Instant::now();
    let (seen, evidence) = attack(&HostSandbox, &CONTROL).await;
    let mut failures = judge_control("host", &seen, &evidence);
    let mut required = 0;
    for case in CASES.iter().filter(|c| c.host_safe) {
        if let Err(why) = host_applicable(case) {
            println!("host {why}");
            continue;
        }
        let (seen, evidence) = attack(&HostSandbox, case).await;
        println!("host {:<26} evidence {evidence:?}", case.id);
        let verdict = judge_host(case, &seen, &evidence, false);
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

/// The judge itself can fail: attacks that were stopped for the wrong reason (a missing tool, a
/// typo, a workspace the step cannot write, a different error than the policy's) are not
/// counted as blocked. Real runs on `host`, where nothing else stops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_rejects_attacks_stopped_for_the_wrong_reason() {
    const MISSING_TOOL: Case = case(
        "missing-tool",
        "a tool the backend lacks",
        &["sc-no-such-tool"],
        Blocked::Error(&[EPERM]),
        "sc-no-such-tool && touch PWNED",
    );
    const TYPO: Case = case(
        "typo",
        "a command that does not exist",
        PERL,
        Blocked::Error(&[EPERM, ENOENT]),
        "perll -e 1 && touch PWNED",
    );
    const WRONG_ERROR: Case = case(
        "wrong-error",
        "refused, but not the way declared",
        &["cat"],
        Blocked::Error(&[EPERM]),
        "cat ./no-such-file && touch PWNED",
    );
    const NO_CONTROL: Case = case(
        "no-control",
        "the control write fails",
        NONE,
        Blocked::Error(&[EACCES]),
        "touch PWNED",
    );
    let expect = [
        (&MISSING_TOOL, "a tool is missing"),
        (&TYPO, "the attack did not run"),
        (&WRONG_ERROR, "expected the step to fail with one of"),
        (&NO_CONTROL, "could not write its workspace"),
    ];
    for (case, why) in expect {
        let env = setup_case(case);
        if case.id == "no-control" {
            // The control file is a directory: the prologue's write fails as a read-only or
            // full workspace would.
            std::fs::create_dir(env.ws.join(CONTROL_FILE)).unwrap();
        }
        let spec = spec_for(case, &env);
        let out = HostSandbox
            .run(&spec, CancellationToken::new())
            .await
            .unwrap();
        let seen = Observed {
            success: out.exit.success(),
            limit: limit_of(&out.exit),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            detail: String::new(),
        };
        let failures = judge_isolated(case, &seen, &env.evidence(&env.outside()));
        assert!(
            failures.iter().any(|f| f.contains(why)),
            "{}: expected a failure saying {why:?}, got {failures:?}",
            case.id
        );
    }
    // And a case refused the declared way passes.
    const REFUSED: Case = case(
        "refused",
        "refused the declared way",
        &["cat"],
        Blocked::Error(&[ENOENT]),
        "cat ./no-such-file && touch PWNED",
    );
    let env = setup_case(&REFUSED);
    let out = HostSandbox
        .run(&spec_for(&REFUSED, &env), CancellationToken::new())
        .await
        .unwrap();
    let seen = Observed {
        success: out.exit.success(),
        limit: limit_of(&out.exit),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        detail: String::new(),
    };
    let failures = judge_isolated(&REFUSED, &seen, &env.evidence(&env.outside()));
    assert!(failures.is_empty(), "{failures:?}");
}
