//! Spawn → exit latency of the native sandbox (full hardening), side by side with a bare
//! fork/exec and with `docker run --rm` of a comparably hardened container.
//!
//! `cargo bench -p secureclaw-sandbox --bench spawn` (env: `BENCH_RUNS`, default 200;
//! `BENCH_DOCKER_RUNS`, default = BENCH_RUNS; `BENCH_DOCKER_IMAGE`, default
//! `secureclaw-bench-busybox:latest`, built offline by
//! `secureclaw sandbox build-image --tag secureclaw-bench-busybox:latest`).
//! Results are recorded in `docs/performance.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secureclaw_sandbox::{ExecSpec, NativeSandbox, Sandbox};
use tokio_util::sync::CancellationToken;

mod common;

fn cell(v: Vec<Duration>) -> String {
    common::cell(v, 2)
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = env_num("BENCH_RUNS", 200);
    let docker_runs = env_num("BENCH_DOCKER_RUNS", runs);
    let image = std::env::var("BENCH_DOCKER_IMAGE")
        .unwrap_or_else(|_| "secureclaw-bench-busybox:latest".into());
    let ws = tempfile::tempdir().unwrap();
    let wsp = std::fs::canonicalize(ws.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sb = NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into());
    let docker_ok = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);

    let cases: [(&str, Vec<String>); 2] = [
        ("true", vec!["/bin/true".into()]),
        (
            "sh -c 'echo hi > /workspace/x'",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo hi > /workspace/x".into(),
            ],
        ),
    ];
    println!("runs per cell: {runs} (docker: {docker_runs})");
    println!("| command | native sandbox (median / p95) | bare fork/exec | docker run --rm |");
    println!("|---|---|---|---|");
    for (label, argv) in cases {
        let mut spec = ExecSpec::shell("", wsp.clone());
        spec.argv = argv.clone();
        let first = rt
            .block_on(sb.run(&spec, CancellationToken::new()))
            .unwrap();
        assert!(
            first.exit.success(),
            "{:?} {}",
            first.exit,
            String::from_utf8_lossy(&first.stderr)
        );
        // Full hardening or no figure at all.
        assert!(
            first.enforcement.missing.is_empty(),
            "{:?}",
            first.enforcement.missing
        );
        let native: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let out = rt
                    .block_on(sb.run(&spec, CancellationToken::new()))
                    .unwrap();
                let elapsed = t.elapsed();
                assert!(out.exit.success());
                // Set when SECURECLAW_SANDBOX_TRACE is: the per-phase timings, on stderr.
                if let Some(trace) = &out.trace {
                    eprintln!("{trace}");
                }
                elapsed
            })
            .collect();

        let host_argv: Vec<String> = argv
            .iter()
            .map(|a| a.replace("/workspace", &wsp.display().to_string()))
            .collect();
        let bare: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let out = Command::new(&host_argv[0])
                    .args(&host_argv[1..])
                    .current_dir(&wsp)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                t.elapsed()
            })
            .collect();

        let docker = if docker_ok {
            let samples: Vec<Duration> = (0..docker_runs)
                .map(|_| {
                    let t = Instant::now();
                    let out = Command::new("docker")
                        .args([
                            "run",
                            "--rm",
                            "--network",
                            "none",
                            "--cap-drop",
                            "ALL",
                            "--security-opt",
                            "no-new-privileges",
                            "--read-only",
                            "--tmpfs",
                            "/tmp:rw,noexec,nosuid,size=64m",
                            "--memory",
                            "512m",
                            "--cpus",
                            "1",
                            "--pids-limit",
                            "128",
                            "--user",
                            "0:0",
                            "-v",
                        ])
                        .arg(format!("{}:/workspace", wsp.display()))
                        .arg(&image)
                        .args(&argv)
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "docker: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    t.elapsed()
                })
                .collect();
            cell(samples)
        } else {
            "n/a".into()
        };
        println!(
            "| `{label}` | {} | {} | {docker} |",
            cell(native),
            cell(bare)
        );
    }
    if !docker_ok {
        println!(
            "note: docker column skipped: image `{image}` not present (`secureclaw sandbox build-image --tag {image}` builds it offline) or no Docker engine"
        );
    }
}
