//! Snapshot capture and restore on a large workspace. Figures go to docs/performance.md.
//!
//! cargo bench -p secureclaw-engine --bench snapshot
//!
//! Workspace size: SNAPSHOT_BENCH_FILES (default 10000) files totalling SNAPSHOT_BENCH_MB
//! (default 200) MB.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use secureclaw_engine::snapshot::{Manifest, RelPath, Snapshotter, diff};
use secureclaw_vault::{KdfParams, Vault};

struct Fixture {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    state: PathBuf,
    snap: Snapshotter,
    last: Manifest,
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fixture() -> Fixture {
    let files = env_num("SNAPSHOT_BENCH_FILES", 10_000);
    let total = env_num("SNAPSHOT_BENCH_MB", 200) * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let state = ws.join(".secureclaw");
    let per = total / files;
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..files {
        let d = ws.join(format!("d{:02}/e{:02}", i % 50, (i / 50) % 20));
        std::fs::create_dir_all(&d).unwrap();
        // Incompressible content, different per file (no dedup flattering the first capture).
        let mut buf = vec![0u8; per];
        for chunk in buf.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = seed.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        std::fs::write(d.join(format!("f{i}.bin")), buf).unwrap();
    }
    // The same tree as a git repository, for `git status` as a yardstick.
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&ws)
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@example.invalid",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    std::fs::write(ws.join(".git/info/exclude"), ".secureclaw\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "bench"]);
    let vault = Vault::create(
        &state,
        "bench",
        &KdfParams {
            memory_kib: 256,
            iterations: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let ws = ws.canonicalize().unwrap();
    let snap = Snapshotter::new(vault, &ws, &state).unwrap();
    let t = Instant::now();
    let last = snap.scan(None).unwrap();
    eprintln!(
        "first capture (stores the whole workspace once): {} paths, {:.1} s",
        last.entries.len(),
        t.elapsed().as_secs_f64()
    );
    // Let every file age past the racy-timestamp window, as in a workspace at rest.
    std::thread::sleep(Duration::from_millis(2100));
    let last = snap.scan(Some(&last)).unwrap();
    Fixture {
        _dir: dir,
        ws,
        state,
        snap,
        last,
    }
}

fn touch(ws: &Path, n: u64) {
    std::fs::write(ws.join("d07/e03/f157.bin"), format!("changed {n}\n")).unwrap();
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        total += if md.is_dir() {
            dir_bytes(&e.path())
        } else {
            md.len()
        };
    }
    total
}

fn benches(c: &mut Criterion) {
    let mut fx = fixture();
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(20);
    let mut n = 0u64;
    group.bench_function("pre+post capture, 1 file changed", |b| {
        b.iter(|| {
            let pre = fx.snap.scan(Some(&fx.last)).unwrap();
            n += 1;
            touch(&fx.ws, n);
            let post = fx.snap.scan(Some(&pre)).unwrap();
            let changes = diff(&pre, &post);
            assert_eq!(changes.len(), 1);
            fx.last = post;
        })
    });
    group.bench_function("one scan, nothing changed", |b| {
        b.iter(|| fx.snap.scan(Some(&fx.last)).unwrap().entries.len())
    });
    // What every `secureclaw run` pays once before its first scan, and once at its end.
    fx.snap.save_cache(&fx.last).unwrap();
    group.bench_function("load the stat cache (open + decode)", |b| {
        b.iter(|| fx.snap.load_cache().unwrap().entries.len())
    });
    group.bench_function("save the stat cache (encode + seal + commit)", |b| {
        b.iter(|| fx.snap.save_cache(&fx.last).unwrap())
    });
    // An engine-side `write` step: its targets (the file, its directories, the listing of
    // its directory) before and after, instead of two scans.
    let target = RelPath(b"d07/e03/f157.bin".to_vec());
    let targets = [
        RelPath(b"d07".to_vec()),
        RelPath(b"d07/e03".to_vec()),
        target.clone(),
    ];
    let dirs = [RelPath(b"d07/e03".to_vec())];
    group.bench_function("targeted pre+post capture of a 1-file write", |b| {
        b.iter(|| {
            let pre = fx.snap.refresh(&fx.last, &targets, &dirs, true).unwrap();
            n += 1;
            touch(&fx.ws, n);
            let post = fx.snap.refresh(&pre, &targets, &dirs, true).unwrap();
            assert_eq!(diff(&pre, &post).len(), 1);
            fx.last = post;
        })
    });
    group.bench_function("persist in-flight pre-manifest", |b| {
        b.iter(|| {
            fx.snap
                .save_inflight("bench-run", "step", &fx.last)
                .unwrap()
        })
    });
    // Revert of a step that changed one file: drift check of the path, then restore.
    let pre = fx.snap.scan(Some(&fx.last)).unwrap();
    touch(&fx.ws, 1_000_000);
    let post = fx.snap.scan(Some(&pre)).unwrap();
    let forward = diff(&pre, &post);
    let backward = diff(&post, &pre);
    let mut flip = false;
    group.bench_function("revert 1 changed file (drift check + restore)", |b| {
        b.iter(|| {
            let cs = if flip { &backward } else { &forward };
            flip = !flip;
            let c = &cs.changes[0];
            let now = fx.snap.current(&c.path, c.post.as_ref()).unwrap();
            assert!(now.is_some_and(|e| c.post.as_ref().is_some_and(|p| e.same_state(p))));
            assert_eq!(fx.snap.restore(&cs.changes).unwrap(), 1);
        })
    });
    group.bench_function("git status (same tree)", |b| {
        b.iter(|| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(&fx.ws)
                .args(["status", "--porcelain"])
                .output()
                .unwrap();
            assert!(out.status.success());
        })
    });
    group.finish();

    // Storage growth: 100 runs that each change one file (capture, in-flight record, cache).
    let before = dir_bytes(&fx.state);
    let mut last = fx.snap.scan(Some(&fx.last)).unwrap();
    for i in 0..100 {
        let pre = fx.snap.scan(Some(&last)).unwrap();
        fx.snap
            .save_inflight(&format!("run{i}"), "step", &pre)
            .unwrap();
        touch(&fx.ws, 2_000_000 + i);
        let post = fx.snap.scan(Some(&pre)).unwrap();
        fx.snap.save_cache(&post).unwrap();
        secureclaw_engine::snapshot::clear_inflight(fx.snap.vault(), &format!("run{i}"), ["step"])
            .unwrap();
        last = post;
    }
    let after = dir_bytes(&fx.state);
    eprintln!(
        "storage growth, 100 runs changing 1 file each: {} KiB ({} -> {} KiB state dir)",
        after.saturating_sub(before) / 1024,
        before / 1024,
        after / 1024
    );
}

criterion_group!(snapshot, benches);
criterion_main!(snapshot);
