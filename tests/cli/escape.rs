//! The escape battery, end to end: every case in `tests/escape/cases.rs` runs as a workflow
//! step through the real `secureclaw` binary. On `native` and `docker` every attack must be
//! refused the way its case declares (read from the step record `secureclaw show --json`
//! keeps) and leave the host untouched; on `host` the same attacks must succeed (they are real).

use crate::common;
use common::step_cgroups_of;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secureclaw_sandbox::ExitReason;

include!("../escape/cases.rs");
include!("../escape/harness.rs");

const PASSPHRASE: &str = "escape-battery-passphrase";

fn indent(script: &str) -> String {
    script
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>()
}

fn workflow(name: &str, backend: &str, case: &Case, script: &str, env_yaml: &str) -> String {
    let disk = if case.disk_mib > 0 {
        format!(", disk: {}Mi", case.disk_mib)
    } else {
        String::new()
    };
    format!(
        "version: 1\nname: {name}\nsandbox: {{ backend: {backend}, timeout: {}ms, memory: {}Mi, pids: {}{disk} }}\nsteps:\n  - id: attack\n{env_yaml}    shell: |\n{}",
        case.timeout_ms,
        case.memory_mib,
        case.pids,
        indent(script)
    )
}

/// `secureclaw` with the battery's vault settings.
fn secureclaw_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secureclaw"));
    cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("SECURECLAW_PASSPHRASE", PASSPHRASE)
        // The vault's key derivation is not what this battery tests; keep it cheap.
        .env("ARGON2_MEMORY_KB", "8192")
        .env("DOCKER_BASE_IMAGE", ESCAPE_IMAGE)
        .env_remove("SECURECLAW_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `secureclaw run`; `state` None uses the default state dir (`.secureclaw` in the workspace).
fn secureclaw(env: &Env, file: &Path, backend: &str, state: Option<&Path>) -> Command {
    let mut cmd = secureclaw_cmd();
    cmd.arg("run").arg(file).arg("--workspace").arg(&env.ws);
    if let Some(state) = state {
        cmd.arg("--state-dir").arg(state);
    }
    cmd.arg("--sandbox").arg(backend).arg("--yes");
    cmd
}

/// The docker backend attacks from an image with the same tools as the host: busybox plus perl
/// (with its core modules), setuid `su` and `setcap`, built offline through the CLI once per
/// test binary.
/// (A tag of its own per recipe: another checkout building an older recipe under the same name
/// on the same daemon would take tools away mid-run.)
const ESCAPE_IMAGE: &str = "secureclaw-sandbox:escape-battery-cli-setcap";

fn escape_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let inc = Command::new("perl")
            .args(["-e", "print for grep m{/perl-base$}, @INC"])
            .output()
            .unwrap();
        let perl_base = String::from_utf8(inc.stdout).unwrap();
        assert!(!perl_base.is_empty(), "perl-base module dir not found");
        let out = common::secureclaw()
            .args(["sandbox", "build-image", "--tag", ESCAPE_IMAGE])
            .args(["--include", "perl", "--include", "/bin/su"])
            .args(["--include", "/usr/sbin/setcap", "--include", &perl_base])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// How the `attack` step of the last run in `state` ended, from its record.
fn observe(state: &Path, run_output: &std::process::Output) -> Observed {
    let run_text = format!(
        "run exit {:?}\n{}{}",
        run_output.status.code(),
        String::from_utf8_lossy(&run_output.stdout),
        String::from_utf8_lossy(&run_output.stderr)
    );
    let shown = secureclaw_cmd()
        .args(["show", "last", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    let record: Option<serde_json::Value> = serde_json::from_slice(&shown.stdout).ok();
    let step = record
        .as_ref()
        .and_then(|r| r["steps"].as_array())
        .and_then(|steps| steps.iter().find(|s| s["id"] == "attack"))
        .cloned();
    let Some(step) = step else {
        return Observed {
            success: false,
            limit: None,
            stdout: String::new(),
            stderr: String::new(),
            detail: format!(
                "no step record ({})\n{run_text}",
                String::from_utf8_lossy(&shown.stderr)
            ),
        };
    };
    let text = |k: &str| step[k].as_str().unwrap_or_default().to_string();
    let reason = text("reason");
    let limit = [
        (ExitReason::TimedOut, Limit::Timeout),
        (ExitReason::OutOfMemory, Limit::Memory),
        (ExitReason::DiskBudget, Limit::DiskBudget),
    ]
    .into_iter()
    .find(|(exit, _)| reason.contains(&exit.describe()))
    .map(|(_, limit)| limit);
    Observed {
        success: text("state") == "succeeded",
        limit,
        stdout: text("stdout"),
        stderr: text("stderr"),
        detail: format!(
            "step {} ({reason})\nstdout: {}\nstderr: {}\n{run_text}",
            text("state"),
            text("stdout"),
            text("stderr")
        ),
    }
}

/// Runs one case on `backend` through the binary; returns how the step ended and the
/// evidence left on the host.
fn attack(backend: &str, case: &Case) -> (Observed, Vec<String>) {
    let env = setup_case(case);
    if backend == "docker" {
        escape_image();
        // Containers run as the workspace's owner: the battery attacks from a user's workspace.
        common::chown_tree(&env.ws, 1000);
    }
    let before = env.outside();
    let file = env.base.join("attack.yaml");
    std::fs::write(
        &file,
        workflow(
            case.id,
            backend,
            case,
            &env.render(case),
            "    env: { SECURECLAW_CASE_SELF: \"1\" }\n",
        ),
    )
    .unwrap();
    let other: Option<Child> = case.other_step.then(|| {
        let other_file = env.base.join("other.yaml");
        let env_yaml = format!("    env: {{ SECURECLAW_STEP_SECRET: \"{TOKEN}\" }}\n");
        std::fs::write(
            &other_file,
            workflow("other", backend, case, "sleep 6", &env_yaml),
        )
        .unwrap();
        let other_state = env.base.join("state-other");
        secureclaw(&env, &other_file, backend, Some(&other_state))
            .spawn()
            .unwrap()
    });
    // The default state dir (in the workspace) for the cases that look for it.
    let state = if case.state_in_workspace {
        env.ws.join(".secureclaw")
    } else {
        env.state.clone()
    };
    let explicit_state = (!case.state_in_workspace).then_some(state.as_path());
    let out = secureclaw(&env, &file, backend, explicit_state)
        .output()
        .unwrap();
    if let Some(other) = other {
        let _ = other.wait_with_output();
    }
    let evidence = env.settled_evidence(&before, Duration::from_millis(case.settle_ms));
    (observe(&state, &out), evidence)
}

/// Every case on `backend`: no evidence on the host, every step really ran, and each was
/// refused the way its case declares.
fn assert_stops_every_attack(backend: &str) {
    let started = Instant::now();
    let (seen, evidence) = attack(backend, &CONTROL);
    let mut failures = judge_control(backend, &seen, &evidence);
    for case in CASES {
        let t = Instant::now();
        let (seen, evidence) = attack(backend, case);
        println!(
            "{backend} {:<26} {:>6} ms  {} | {}",
            case.id,
            t.elapsed().as_millis(),
            seen.detail.lines().next().unwrap_or(""),
            last_line(&seen.stderr)
        );
        failures.extend(judge_isolated(case, &seen, &evidence));
    }
    println!(
        "{backend}: {} cases in {:.1} s",
        CASES.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{backend} failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn native_backend_stops_every_attack() {
    assert_stops_every_attack("native");
}

#[test]
fn docker_backend_stops_every_attack() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    assert_stops_every_attack("docker");
}

#[test]
fn gvisor_backend_stops_every_attack() {
    if crate::common::docker_skip::skip_without_gvisor() {
        return;
    }
    assert_stops_every_attack("gvisor");
}

#[test]
fn host_backend_lets_the_attacks_through() {
    let root = running_as_root();
    let started = Instant::now();
    let (seen, evidence) = attack("host", &CONTROL);
    let mut failures = judge_control("host", &seen, &evidence);
    let mut required = 0;
    for case in CASES.iter().filter(|c| c.host_safe) {
        if let Err(why) = host_applicable(case) {
            println!("host {why}");
            continue;
        }
        let (seen, evidence) = attack("host", case);
        println!("host {:<26} evidence {evidence:?}", case.id);
        let verdict = judge_host(case, &seen, &evidence, true);
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
    assert!(
        failures.is_empty(),
        "attacks that did not work on host:\n{}",
        failures.join("\n")
    );
}

/// The engine is SIGKILLed in the middle of a step: the step must die with it (no process
/// keeps running), and the next engine start sweeps the cgroups the dead one left behind.
#[test]
fn killed_engine_leaves_nothing_running_and_the_next_start_sweeps() {
    let env = setup();
    let case = &CASES[0];
    let file = env.base.join("slow.yaml");
    // The step says when it runs: the engine is killed only once it really does.
    let script = "touch started; sleep 3.217; touch survived";
    std::fs::write(&file, workflow("slow", "native", case, script, "")).unwrap();
    let mut engine = secureclaw(&env, &file, "native", Some(&env.state))
        .spawn()
        .unwrap();
    let pid = engine.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut started = false;
    while Instant::now() < deadline && step_sleepers() == 0 {
        started |= step_cgroups_of(pid).iter().any(|d| d.exists());
        std::thread::sleep(Duration::from_millis(20));
    }
    started |= step_cgroups_of(pid).iter().any(|d| d.exists());
    assert!(
        env.ws.join("started").exists() && step_sleepers() > 0,
        "the step never started (or its `sleep 3.217` is not visible from the host)"
    );
    engine.kill().unwrap();
    let _ = engine.wait();
    // The step's processes die with the engine (polled, with a deadline well under the
    // step's own 3.2 s), and it never gets to write its marker.
    let deadline = Instant::now() + Duration::from_secs(3);
    while step_sleepers() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(step_sleepers(), 0, "the step outlived the killed engine");
    assert!(
        !env.ws.join("survived").exists(),
        "the step outlived the killed engine"
    );
    // A native step always runs in its cgroups (without them it is refused, not degraded).
    assert!(
        started,
        "the step ran but no step cgroup of engine {pid} was seen under /sys/fs/cgroup"
    );
    // A new engine run sweeps what the dead one left.
    let quick = env.base.join("quick.yaml");
    std::fs::write(&quick, workflow("quick", "native", case, "true", "")).unwrap();
    let out = secureclaw(&env, &quick, "native", Some(&env.state))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = step_cgroups_of(pid)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "not swept: {left:?}");
}

/// The engine is SIGKILLed in the middle of a gvisor step: `runsc run`, its Sentry and its gofer
/// die with it, the step never finishes, and the next engine start deletes the bundle and the
/// cgroup the dead engine left.
#[test]
fn killed_engine_takes_its_gvisor_sandbox_along_and_the_next_start_sweeps() {
    if crate::common::docker_skip::skip_without_gvisor() {
        return;
    }
    let env = setup();
    let case = &CASES[0];
    let file = env.base.join("slow.yaml");
    let script = "touch started; sleep 4; touch survived";
    std::fs::write(&file, workflow("slow", "gvisor", case, script, "")).unwrap();
    let mut engine = secureclaw(&env, &file, "gvisor", Some(&env.state))
        .spawn()
        .unwrap();
    let pid = engine.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !env.ws.join("started").exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.ws.join("started").exists(), "the step never started");
    assert!(
        !gvisor_processes_of(pid).is_empty(),
        "no runsc process of engine {pid} while its step runs"
    );
    // What the sweep must remove (checked now: once the engine is dead, any other test's
    // engine starting in parallel may sweep it first).
    let bundles = || -> Vec<String> {
        std::fs::read_dir("/run/secureclaw/gvisor/bundles")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("secureclaw-{pid}-")))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        !bundles().is_empty(),
        "no bundle of engine {pid} while its step runs"
    );
    let killed = Instant::now();
    engine.kill().unwrap();
    let _ = engine.wait();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !gvisor_processes_of(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        gvisor_processes_of(pid),
        Vec::<String>::new(),
        "the sandbox outlived the killed engine"
    );
    // Past the step's own end: it never got there.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed()));
    assert!(
        !env.ws.join("survived").exists(),
        "the step outlived the killed engine"
    );
    let quick = env.base.join("quick.yaml");
    std::fs::write(&quick, workflow("quick", "native", case, "true", "")).unwrap();
    let out = secureclaw(&env, &quick, "native", Some(&env.state))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bundles().is_empty(), "not swept: {:?}", bundles());
    let left: Vec<_> = step_cgroups_of(pid)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "not swept: {left:?}");
}

/// Host processes of gVisor sandboxes an engine started (runsc and its Sentry and gofer name
/// the sandbox id, which starts with the engine's pid).
fn gvisor_processes_of(engine: u32) -> Vec<String> {
    let id = format!("secureclaw-{engine}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&id).then_some(cmdline)
        })
        .collect()
}

/// Host processes running the killed-engine case's `sleep 3.217`.
fn step_sleepers() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"3.217"))
        })
        .count()
}
