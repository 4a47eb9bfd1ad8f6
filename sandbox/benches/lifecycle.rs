//! Container lifecycle of the docker backend (bollard: create → inspect → attach → start →
//! wait → remove, full hardening) for `true`, side by side with the `docker run --rm` CLI with
//! the same hardening, the native backend and the gvisor backend (runsc), in the same run; and
//! the docker backend under the daemon's `runsc` runtime where it has one
//! (`scripts/docker-register-runsc.sh`).
//!
//! `cargo bench -p secureclaw-sandbox --bench lifecycle` (env: `BENCH_RUNS`, default 100).
//! Needs the Docker daemon; the image is built offline first (same code as
//! `secureclaw sandbox build-image`). Results are recorded in `docs/performance.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secureclaw_sandbox::docker::{DockerSandbox, ImageRecipe, build_image, profile};
use secureclaw_sandbox::{ExecSpec, GvisorSandbox, NativeSandbox, Sandbox};
use tokio_util::sync::CancellationToken;

mod common;

fn stats(v: Vec<Duration>) -> String {
    common::cell(v, 1)
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let image = "secureclaw-sandbox:bench".to_string();
    rt.block_on(async {
        let docker = DockerSandbox::docker().await.unwrap();
        build_image(docker, &ImageRecipe::new(image.clone()), |_| {})
            .await
            .unwrap();
    });
    let ws = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(ws.path(), Some(1000), Some(1000)).unwrap();
    let wsp = std::fs::canonicalize(ws.path()).unwrap();
    let spec = ExecSpec {
        argv: vec!["/bin/true".into()],
        ..ExecSpec::shell("", wsp.clone())
    };

    let docker_sb = DockerSandbox::with_default_image(image.clone());
    let gvisor = GvisorSandbox::new().unwrap();
    let has_runsc = rt.block_on(async {
        let info = DockerSandbox::docker().await.unwrap().info().await.unwrap();
        info.runtimes.is_some_and(|r| r.contains_key("runsc"))
    });
    let docker_runsc = has_runsc.then(|| {
        DockerSandbox::with_default_image(image.clone()).with_runtime(Some("runsc".into()))
    });
    let native = NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into());
    // Warm up both (first daemon contact, first helper exec).
    rt.block_on(async {
        for _ in 0..3 {
            let o = docker_sb
                .run(&spec, CancellationToken::new())
                .await
                .unwrap();
            assert!(o.exit.success() && o.enforcement.missing.is_empty());
            native.run(&spec, CancellationToken::new()).await.unwrap();
            let o = gvisor.run(&spec, CancellationToken::new()).await.unwrap();
            assert!(o.exit.success() && o.enforcement.missing.is_empty());
            if let Some(d) = &docker_runsc {
                d.run(&spec, CancellationToken::new()).await.unwrap();
            }
        }
    });

    let profile_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(profile_file.path(), profile::repository_profile().unwrap()).unwrap();
    let cli = |_: usize| {
        let t = Instant::now();
        let status = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges:true",
                "--security-opt",
            ])
            .arg(format!("seccomp={}", profile_file.path().display()))
            .args([
                "--read-only",
                "--user",
                "1000:1000",
                "--tmpfs",
                "/tmp:rw,noexec,nosuid,nodev,size=64m",
                "--memory",
                "512m",
                "--memory-swap",
                "512m",
                "--cpus",
                "1",
                "--pids-limit",
                "128",
                "--log-driver",
                "none",
                "-v",
            ])
            .arg(format!("{}:/workspace", wsp.display()))
            .args(["-w", "/workspace", &image, "/bin/true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        t.elapsed()
    };

    // Interleave the three so load changes hit them alike.
    let (mut bollard_t, mut cli_t, mut native_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gvisor_t, mut docker_runsc_t) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let o = rt
            .block_on(docker_sb.run(&spec, CancellationToken::new()))
            .unwrap();
        bollard_t.push(t.elapsed());
        assert!(o.exit.success());
        // Set when SECURECLAW_SANDBOX_TRACE is: the per-phase timings, on stderr.
        if let Some(trace) = &o.trace {
            eprintln!("{trace}");
        }
        cli_t.push(cli(i));
        let t = Instant::now();
        let o = rt
            .block_on(native.run(&spec, CancellationToken::new()))
            .unwrap();
        native_t.push(t.elapsed());
        assert!(o.exit.success());
        if let Some(trace) = &o.trace {
            eprintln!("{trace}");
        }
        let t = Instant::now();
        let o = rt
            .block_on(gvisor.run(&spec, CancellationToken::new()))
            .unwrap();
        gvisor_t.push(t.elapsed());
        assert!(o.exit.success());
        if let Some(d) = &docker_runsc {
            let t = Instant::now();
            let o = rt.block_on(d.run(&spec, CancellationToken::new())).unwrap();
            docker_runsc_t.push(t.elapsed());
            assert!(o.exit.success());
        }
    }
    println!("runs: {runs} each, `true`, full hardening (median / p95)");
    println!(
        "| docker backend (bollard) | docker run --rm (CLI) | native backend | gvisor backend ({}) | docker backend, runtime runsc |",
        gvisor.platform()
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} |",
        stats(bollard_t),
        stats(cli_t),
        stats(native_t),
        stats(gvisor_t),
        if docker_runsc_t.is_empty() {
            "(the daemon has no runsc runtime)".to_string()
        } else {
            stats(docker_runsc_t)
        }
    );
}
