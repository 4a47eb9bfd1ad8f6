//! Vault benchmarks. Figures and exact commands: docs/perf-vault.md.
//!
//! `VAULT_BENCH_VERIFY_N` sets the ledger size for the verify benchmark (default 1,000,000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use redb::{ReadableDatabase, TableDefinition};
use secureclaw_vault::{KdfParams, NewEntry, Vault, VaultOptions, kind};

const FAST: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
    salt_len: 16,
};

fn entry(i: u64) -> NewEntry {
    // Shaped like an engine step_finished entry (~450 bytes canonical).
    NewEntry::new("engine", kind::STEP_FINISHED)
        .run("0197a3c2-7d1e-7c4a-9f1b-3d2e5a6b7c8d")
        .step(format!("step-{i}"))
        .tier("low_write")
        .enforcement(serde_json::json!({"backend":"native","namespaces":true,"seccomp":true,"landlock":true,"cgroups":true}))
        .manifests(
            Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()),
            Some("60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752".into()),
        )
        .inverse(serde_json::json!({"restore":[{"path":"src/lib.rs","blob":"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"}]}))
        .result(serde_json::json!({"exit_code":0}))
}

fn ledger_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger_append");
    g.measurement_time(Duration::from_secs(8));
    for batch in [1u64, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::create(dir.path(), "bench", &FAST).unwrap();
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::new("durable_batch", batch), &batch, |b, &n| {
            let mut i = 0;
            b.iter(|| {
                let entries = (0..n).map(|k| entry(i + k)).collect();
                i += n;
                black_box(vault.ledger().append_batch(entries).unwrap());
            })
        });
    }
    g.finish();
}

fn ledger_verify(c: &mut Criterion) {
    let n: u64 = std::env::var("VAULT_BENCH_VERIFY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::create(dir.path(), "bench", &FAST).unwrap();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(10_000);
        vault
            .ledger()
            .append_batch((i..i + k).map(entry).collect())
            .unwrap();
        i += k;
    }
    drop(vault);
    let db_mib = std::fs::metadata(dir.path().join("vault.redb"))
        .unwrap()
        .len()
        / (1 << 20);
    eprintln!("ledger_verify: {n} entries, vault.redb is {db_mib} MiB");
    let mut g = c.benchmark_group("open_large_vault");
    g.sample_size(10);
    for check in [false, true] {
        let opts = VaultOptions {
            check_integrity_on_open: check,
            ..VaultOptions::default()
        };
        let name = if check {
            "integrity_check"
        } else {
            "no_integrity_check"
        };
        g.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter(|| black_box(Vault::open_with(dir.path(), "bench", opts.clone()).unwrap()))
        });
    }
    g.finish();
    let vault = Vault::open(dir.path(), "bench").unwrap();
    let mut g = c.benchmark_group("ledger_verify");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new("entries", n), |b| {
        b.iter(|| black_box(vault.ledger().verify().unwrap()))
    });
    g.finish();
}

const PLAIN: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("plain");

fn store_overhead(c: &mut Criterion) {
    let value = vec![0x5au8; 256];
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::create(dir.path(), "bench", &FAST).unwrap();
    let plain_db = redb::Database::create(dir.path().join("plain.redb")).unwrap();
    let keys: Vec<String> = (0..1000).map(|i| format!("run-{i:06}")).collect();

    let mut g = c.benchmark_group("store_put_1000_in_one_txn");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("plain_redb", |b| {
        b.iter(|| {
            let txn = plain_db.begin_write().unwrap();
            {
                let mut t = txn.open_table(PLAIN).unwrap();
                for k in &keys {
                    t.insert(k.as_bytes(), value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        })
    });
    g.bench_function("sealed_vault", |b| {
        b.iter(|| {
            vault
                .write(|tx| {
                    for k in &keys {
                        tx.put("runs", k, &value)?;
                    }
                    Ok(())
                })
                .unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("store_get");
    g.bench_function("plain_redb", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let txn = plain_db.begin_read().unwrap();
            let t = txn.open_table(PLAIN).unwrap();
            let v = t.get(keys[i % 1000].as_bytes()).unwrap().unwrap();
            black_box(v.value().to_vec());
            i += 1;
        })
    });
    g.bench_function("sealed_vault", |b| {
        let mut i = 0usize;
        b.iter(|| {
            black_box(vault.get("runs", &keys[i % 1000]).unwrap().unwrap());
            i += 1;
        })
    });
    g.finish();
}

fn blob_put_get(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::create(dir.path(), "bench", &FAST).unwrap();
    let size = 8 * 1024 * 1024;
    let mut g = c.benchmark_group("blob_8MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(size as u64));
    let mut n = 0u64;
    g.bench_function("put_new", |b| {
        b.iter(|| {
            let mut data = vec![7u8; size];
            data[..8].copy_from_slice(&n.to_le_bytes());
            n += 1;
            black_box(vault.blobs().put(&data).unwrap())
        })
    });
    let id = vault.blobs().put(&vec![9u8; size]).unwrap();
    g.bench_function("get", |b| {
        b.iter(|| black_box(vault.blobs().get(&id).unwrap()))
    });
    g.finish();
}

fn argon2_unlock(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    drop(Vault::create(dir.path(), "bench", &KdfParams::default()).unwrap());
    let mut g = c.benchmark_group("unlock");
    g.sample_size(10);
    g.bench_function("argon2id_default_64MiB_t3_p1", |b| {
        b.iter(|| black_box(Vault::open(dir.path(), "bench").unwrap()))
    });
    g.finish();
}

criterion_group!(
    benches,
    ledger_append,
    store_overhead,
    blob_put_get,
    argon2_unlock,
    ledger_verify
);
criterion_main!(benches);
