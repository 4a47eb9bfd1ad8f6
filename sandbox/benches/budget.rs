//! What the write budget costs as the workspace grows: one sample of the step's writes
//! (`DiskWatch::written`, a walk of the workspace plus the step's open files), and a native
//! `true` step on that workspace, whose baseline walk and last sample are on the step's path.
//!
//! `cargo bench -p secureclaw-sandbox --bench budget` (env: `BENCH_RUNS`, default 30).
//! Results are recorded in `docs/performance.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use secureclaw_sandbox::budget::DiskWatch;
use secureclaw_sandbox::{ExecSpec, NativeSandbox, Sandbox};
use tokio_util::sync::CancellationToken;

mod common;

/// `files` files of 1 KiB, 100 per directory.
fn populate(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i}")), [b'x'; 1024]).unwrap();
    }
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sb = NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into());
    println!("| workspace files | one sample | native `true` step |");
    println!("|---|---|---|");
    for files in [0usize, 1_000, 10_000, 100_000] {
        let ws = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(ws.path()).unwrap();
        populate(&root, files);
        let (samples, steps) = rt.block_on(async {
            let watch = DiskWatch::start(&root, Vec::new(), 1 << 30).await.unwrap();
            let mut samples: Vec<Duration> = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                watch.written().await.unwrap();
                samples.push(t.elapsed());
            }
            let mut steps: Vec<Duration> = Vec::new();
            for _ in 0..runs {
                let mut spec = ExecSpec::shell("", root.clone());
                spec.argv = vec!["/bin/true".into()];
                let t = Instant::now();
                let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
                steps.push(t.elapsed());
                assert!(out.exit.success(), "{:?}", out.exit);
            }
            (samples, steps)
        });
        println!(
            "| {files} | {} | {} |",
            common::cell(samples, 2),
            common::cell(steps, 2)
        );
    }
}
