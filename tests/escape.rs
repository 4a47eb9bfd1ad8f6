//! The escape battery, end to end: every case in `tests/escape/cases.rs` runs as a workflow
//! step through the real `secureclaw` binary. On `native` and `docker` every attack must fail
//! and leave the host untouched; on `host` the same attacks are run to show which succeed there
//! (proving the checks can fail).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

include!("escape/cases.rs");
include!("escape/harness.rs");

fn indent(script: &str) -> String {
    script
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>()
}

fn workflow(name: &str, backend: &str, case: &Case, script: &str, env_yaml: &str) -> String {
    format!(
        "version: 1\nname: {name}\nsandbox: {{ backend: {backend}, timeout: {}ms, memory: {}Mi, pids: {} }}\nsteps:\n  - id: attack\n{env_yaml}    shell: |\n{}",
        case.timeout_ms,
        case.memory_mib,
        case.pids,
        indent(script)
    )
}

fn secureclaw(env: &Env, file: &Path, backend: &str, state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secureclaw"));
    cmd.arg("run")
        .arg(file)
        .arg("--workspace")
        .arg(&env.ws)
        .arg("--state-dir")
        .arg(state)
        .arg("--sandbox")
        .arg(backend)
        .arg("--yes")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("SECURECLAW_PASSPHRASE", "escape-battery-passphrase")
        // The vault's key derivation is not what this battery tests; keep it cheap.
        .env("ARGON2_MEMORY_KB", "8192")
        .env("DOCKER_BASE_IMAGE", ESCAPE_IMAGE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

struct Verdict {
    evidence: Vec<String>,
    code: Option<i32>,
    output: String,
}

/// The docker backend attacks from an image with the same tools as the host: busybox plus perl
/// (with its core modules) and setuid `su`, built offline through the CLI once per test binary.
const ESCAPE_IMAGE: &str = "secureclaw-sandbox:escape-cli";

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
            .args([
                "--include",
                "perl",
                "--include",
                "/bin/su",
                "--include",
                &perl_base,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn attack(backend: &str, case: &Case) -> Verdict {
    let env = setup();
    if backend == "docker" {
        escape_image();
        // Containers run as the workspace's owner; a root-owned one would be read-only.
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
            &env.render(case.script),
            "    env: { SECURECLAW_CASE_SELF: \"1\" }\n",
        ),
    )
    .unwrap();
    let other: Option<Child> = case.other_step.then(|| {
        let other_file = env.base.join("other.yaml");
        let env_yaml = format!("    env: {{ SECURECLAW_STEP_SECRET: \"{TOKEN}\" }}\n");
        std::fs::write(
            &other_file,
            workflow("other", backend, case, "sleep 4", &env_yaml),
        )
        .unwrap();
        secureclaw(&env, &other_file, backend, &env.base.join("state-other"))
            .spawn()
            .unwrap()
    });
    let out = secureclaw(&env, &file, backend, &env.state)
        .output()
        .unwrap();
    if let Some(other) = other {
        let _ = other.wait_with_output();
    }
    std::thread::sleep(Duration::from_millis(case.settle_ms));
    let evidence = env.evidence(&before);
    Verdict {
        evidence,
        code: out.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Every case on `backend`: no evidence on the host, every step really ran, and the resource
/// cases ended in failure.
fn assert_stops_every_attack(backend: &str) {
    let mut failures = Vec::new();
    for case in CASES {
        let v = attack(backend, case);
        println!("{backend} {:<22} exit {:?}", case.id, v.code);
        if !v.evidence.is_empty() {
            failures.push(format!(
                "{}: ESCAPED {:?}\n{}",
                case.id, v.evidence, v.output
            ));
        }
        // 0 = the step succeeded, 1 = it failed; 2/3 would mean the case never ran.
        if !matches!(v.code, Some(0) | Some(1)) {
            failures.push(format!(
                "{}: did not run (exit {:?})\n{}",
                case.id, v.code, v.output
            ));
        }
        if !case.expect.is_empty() && v.code != Some(1) {
            failures.push(format!(
                "{}: the step should have failed ({})\n{}",
                case.id, case.expect, v.output
            ));
        }
    }
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
    assert_stops_every_attack("docker");
}

#[test]
fn host_backend_lets_the_attacks_through() {
    let mut escaped = Vec::new();
    let mut held = Vec::new();
    for case in CASES.iter().filter(|c| c.host_safe) {
        let v = attack("host", case);
        assert!(
            matches!(v.code, Some(0) | Some(1)),
            "{}: did not run on host (exit {:?})\n{}",
            case.id,
            v.code,
            v.output
        );
        if v.evidence.is_empty() {
            held.push(case.id);
        } else {
            escaped.push(case.id);
        }
    }
    println!("host: {} attacks succeeded: {escaped:?}", escaped.len());
    println!("host: {} failed anyway: {held:?}", held.len());
    for must in [
        "write-absolute",
        "write-dotdot",
        "write-symlink",
        "read-ssh-key",
        "git-hooks",
        "exec-from-tmp",
        "tcp-host-loopback",
        "daemon",
        "memory-bomb",
        "fork-bomb",
    ] {
        assert!(
            escaped.contains(&must),
            "`{must}` should succeed on host; escaped={escaped:?}"
        );
    }
}

/// The engine is SIGKILLed in the middle of a step: the step must die with it (no process
/// keeps running), and the next engine start sweeps the cgroups the dead one left behind.
#[test]
fn killed_engine_leaves_nothing_running_and_the_next_start_sweeps() {
    let env = setup();
    let case = &CASES[0];
    let file = env.base.join("slow.yaml");
    let script = format!("sleep 3; touch {}/survived", env.out.display());
    std::fs::write(&file, workflow("slow", "native", case, &script, "")).unwrap();
    let mut engine = secureclaw(&env, &file, "native", &env.state)
        .spawn()
        .unwrap();
    let pid = engine.id();
    // Let the step start (vault unlock + validation + sandbox setup), then kill -9 the engine.
    let started = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        step_cgroups_of(pid).iter().any(|d| d.exists())
    });
    engine.kill().unwrap();
    let _ = engine.wait();
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        !env.out.join("survived").exists(),
        "the step outlived the killed engine"
    );
    if !started {
        eprintln!("note: no step cgroup seen (no cgroup hierarchy here); sweep not checked");
        return;
    }
    // A new engine run sweeps what the dead one left.
    let quick = env.base.join("quick.yaml");
    std::fs::write(&quick, workflow("quick", "native", case, "true", "")).unwrap();
    let out = secureclaw(&env, &quick, "native", &env.state)
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

/// Step cgroup directories created by the engine with this pid (any hierarchy).
fn step_cgroups_of(pid: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for hierarchy in ["", "memory", "pids", "cpu", "unified"] {
        let base = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join("secureclaw");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{pid}-"))
                {
                    out.push(e.path());
                }
            }
        }
    }
    out
}
