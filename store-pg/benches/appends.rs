//! Ledger appends per second on the shared store, with 1 and 4 writers (each a node of its own:
//! its own pool and state directory), against the embedded redb store in the same run.
//!
//!   cargo bench -p secureclaw-store-pg --bench appends
//!
//! Each commit is what a step's end commits: the run record and two ledger entries. PostgreSQL
//! runs with fsync on (as the embedded store syncs each commit), on a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/pg/server.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use secureclaw_engine::storage::{Batch, StateBackend, Table, VaultBackend};
use secureclaw_store_pg::PgStore;
use secureclaw_vault::{KdfParams, NewEntry, Vault};

const FAST: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
    salt_len: 16,
};
const RUN_FOR: Duration = Duration::from_secs(5);

fn commit(backend: &dyn StateBackend, writer: usize, n: usize) {
    let mut batch = Batch::default();
    let run = format!("run-{writer}-{n}");
    batch.puts.push((Table::Runs, run.clone(), vec![b'x'; 600]));
    batch
        .entries
        .push(NewEntry::new("bench", "step_finished").run(&run));
    batch
        .entries
        .push(NewEntry::new("bench", "step_started").run(&run));
    backend.commit(&[batch]).unwrap();
}

/// Commits from `backends` (one thread each) for [`RUN_FOR`]; entries per second and the
/// p50 / p99 commit latency.
fn measure(backends: &[Arc<dyn StateBackend>]) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = backends
            .iter()
            .enumerate()
            .map(|(w, b)| {
                let b = b.clone();
                scope.spawn(move || {
                    let mut own = Vec::new();
                    let mut n = 0;
                    while started.elapsed() < RUN_FOR {
                        let t = Instant::now();
                        commit(&*b, w, n);
                        own.push(t.elapsed());
                        n += 1;
                    }
                    own
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (latencies.len() as f64 * 2.0 / secs, pick(0.5), pick(0.99))
}

fn report(what: &str, (per_sec, p50, p99): (f64, Duration, Duration)) {
    println!(
        "APPENDS {what}: {per_sec:.0} entries/s ({:.0} commits/s), commit p50 {:.2} ms, p99 {:.2} ms",
        per_sec / 2.0,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

fn main() {
    require_durable_server();
    let url = server::server().fresh_database();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    Vault::create(dirs[0].path(), "pw", &FAST).unwrap();
    let nodes: Vec<Arc<dyn StateBackend>> = dirs
        .iter()
        .map(|d| {
            let store = PgStore::connect(&url).unwrap();
            let vault = store.join_vault(d.path(), "pw").unwrap();
            Arc::new(store.backend(vault)) as Arc<dyn StateBackend>
        })
        .collect();
    report("postgres, 1 writer", measure(&nodes[..1]));
    report("postgres, 4 writers", measure(&nodes));

    let local = tempfile::tempdir().unwrap();
    let vault = Vault::create(local.path(), "pw", &FAST).unwrap();
    let redb: Arc<dyn StateBackend> = Arc::new(VaultBackend(vault));
    report("redb, 1 writer", measure(std::slice::from_ref(&redb)));
    report(
        "redb, 4 writers",
        measure(&[redb.clone(), redb.clone(), redb.clone(), redb]),
    );
}

fn require_durable_server() {
    assert!(
        std::env::var_os("SECURECLAW_TEST_PG_FSYNC").is_some(),
        "run with SECURECLAW_TEST_PG_FSYNC=1 (the bench measures a durable PostgreSQL)"
    );
}
