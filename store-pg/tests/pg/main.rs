//! The shared store against a real PostgreSQL: rows sealed like the vault's, one ledger chain
//! however many nodes append, a queue that never hands one job to two workers, and a dump that
//! reveals nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod server;

use std::sync::Arc;
use std::time::Duration;

use secureclaw_engine::record::{RunState, RunStore};
use secureclaw_engine::storage::{Batch, StateBackend, StorageError, Table, Writer};
use secureclaw_store_pg::{JobKind, JobState, Lost, PgError, PgStore};
use secureclaw_vault::{KdfParams, NewEntry, Vault};

const FAST: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
    salt_len: 16,
};

/// A fresh database and the first node's vault, published to it.
fn first_node() -> (String, tempfile::TempDir, PgStore, Vault) {
    let url = server::server().fresh_database();
    let dir = tempfile::tempdir().unwrap();
    Vault::create(dir.path(), "pw", &FAST).unwrap();
    let store = PgStore::connect(&url).unwrap();
    let vault = store.join_vault(dir.path(), "pw").unwrap();
    (url, dir, store, vault)
}

fn put(batch: &mut Batch, table: Table, key: &str, value: &str) {
    batch
        .puts
        .push((table, key.to_string(), value.as_bytes().to_vec()));
}

fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new(server::server_bin("psql"))
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-Atqc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn rows_and_ledger_round_trip_and_a_second_node_reads_them() {
    let (url, _dir, store, vault) = first_node();
    let a = store.backend(vault);
    let mut batch = Batch::default();
    put(&mut batch, Table::Runs, "run-1", "{\"state\":\"running\"}");
    put(&mut batch, Table::Runs, "run-2", "{\"state\":\"done\"}");
    batch
        .entries
        .push(NewEntry::new("node-a", "run_start").run("run-1"));
    a.commit(&[batch]).unwrap();
    // Put then delete in one group commit: the delete wins; put twice: the last wins.
    let mut b1 = Batch::default();
    put(&mut b1, Table::Parked, "run-1", "x");
    put(&mut b1, Table::Runs, "run-2", "{\"state\":\"reverted\"}");
    let mut b2 = Batch::default();
    b2.deletes.push((Table::Parked, "run-1".into()));
    a.commit(&[b1, b2]).unwrap();

    // A second node, with an empty state directory, joins the vault from the database.
    let node_b = tempfile::tempdir().unwrap();
    let store_b = PgStore::connect(&url).unwrap();
    let vault_b = store_b
        .join_vault(&node_b.path().join("state"), "pw")
        .unwrap();
    let b = store_b.backend(vault_b.clone());
    assert_eq!(
        b.get(Table::Runs, "run-2").unwrap().unwrap(),
        b"{\"state\":\"reverted\"}"
    );
    assert_eq!(b.get(Table::Parked, "run-1").unwrap(), None);
    assert_eq!(b.keys(Table::Runs).unwrap(), ["run-1", "run-2"]);
    assert!(b.keys(Table::Approvals).unwrap().is_empty());
    let mut batch = Batch::default();
    batch
        .entries
        .push(NewEntry::new("node-b", "run_end").run("run-1"));
    b.commit(&[batch]).unwrap();
    for backend in [&a, &b] {
        let ledger = backend.vault().ledger_in(backend);
        assert_eq!(ledger.verify().unwrap().entries, 2);
        let actors: Vec<_> = ledger
            .entries(None)
            .unwrap()
            .into_iter()
            .map(|r| r.entry.actor)
            .collect();
        assert_eq!(actors, ["node-a", "node-b"]);
    }
    // A wrong passphrase never opens the shared vault.
    let node_c = tempfile::tempdir().unwrap();
    assert!(matches!(
        store_b.join_vault(node_c.path(), "not it"),
        Err(PgError::Vault(
            secureclaw_vault::VaultError::WrongPassphrase
        ))
    ));
    let _ = url;
}

#[test]
fn nodes_creating_one_row_at_once_all_read_back_the_one_that_won() {
    let (url, _dir, store, vault) = first_node();
    let key = "jwt_secret";
    let table = Table::App(secureclaw_engine::session::AppTable::Settings);
    // Four nodes, each with a secret of its own, create the row at the same moment.
    let start = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (url, vault, start) = (url.clone(), vault.clone(), start.clone());
            std::thread::spawn(move || {
                let node = PgStore::connect(&url).unwrap().backend(vault);
                let mut batch = Batch::default();
                batch
                    .creates
                    .push((table, key.to_string(), format!("secret-{i}").into_bytes()));
                start.wait();
                node.commit(&[batch]).unwrap();
                node.get(table, key).unwrap().unwrap()
            })
        })
        .collect();
    let seen: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "nodes read different values back: {:?}",
        seen.iter()
            .map(|v| String::from_utf8_lossy(v))
            .collect::<Vec<_>>()
    );
    // A create never overwrites; a put does.
    let backend = store.backend(vault);
    let mut again = Batch::default();
    again
        .creates
        .push((table, key.to_string(), b"latecomer".to_vec()));
    backend.commit(&[again]).unwrap();
    assert_eq!(backend.get(table, key).unwrap().unwrap(), seen[0]);
    let mut put_it = Batch::default();
    put(&mut put_it, table, key, "replaced");
    backend.commit(&[put_it]).unwrap();
    assert_eq!(backend.get(table, key).unwrap().unwrap(), b"replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_is_told_when_another_node_commits_its_runs_events_and_only_then() {
    let (url, _dir, store, vault) = first_node();
    let here = store.backend(vault.clone());
    let mut told = here.event_commits("run-1").unwrap();
    let other_run = here.event_commits("run-2").unwrap();
    let other = Arc::new(PgStore::connect(&url).unwrap().backend(vault));
    let commit = |table: Table| {
        let other = other.clone();
        async move {
            let mut batch = Batch::default();
            put(&mut batch, table, "run-1/000000000001", "{}");
            tokio::task::spawn_blocking(move || other.commit(&[batch]))
                .await
                .unwrap()
                .unwrap();
        }
    };
    // A run's record alone: nothing to tell.
    commit(Table::Runs).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), told.changed())
            .await
            .is_err(),
        "told of a commit without events"
    );
    // Its events: told (the bound only keeps a broken test from hanging), and the follower of
    // another run is not, by the same notification.
    commit(Table::Events).await;
    tokio::time::timeout(Duration::from_secs(10), told.changed())
        .await
        .expect("no notification of the events commit")
        .unwrap();
    assert!(
        !other_run.has_changed().unwrap(),
        "woken by another run's events"
    );
    // Every follower of this node shares the one listener.
    let mut second = here.event_commits("run-1").unwrap();
    second.borrow_and_update();
    commit(Table::Events).await;
    tokio::time::timeout(Duration::from_secs(10), second.changed())
        .await
        .expect("no notification for the second follower")
        .unwrap();
    assert!(!other_run.has_changed().unwrap());
}

#[test]
fn a_notification_names_runs_only_as_keyed_tags() {
    let (url, _dir, store, vault) = first_node();
    let backend = store.backend(vault);
    // Caught by a plain LISTEN, as any client of the database could.
    let listen = std::process::Command::new(server::server_bin("psql"))
        .args([
            url.as_str(),
            "-q",
            "-X",
            "-c",
            "LISTEN sc_events",
            "-c",
            "SELECT pg_sleep(2)",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let mut batch = Batch::default();
    put(
        &mut batch,
        Table::Events,
        "run-secret-name/000000000001",
        "{}",
    );
    backend.commit(&[batch]).unwrap();
    let out = listen.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("sc_events"), "no notification seen: {said}");
    assert!(!said.contains("run-secret-name"), "{said}");
    let payload = said
        .split("payload \"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap_or_default();
    assert_eq!(payload.len(), 16, "{said}");
    assert!(payload.bytes().all(|b| b.is_ascii_hexdigit()), "{said}");
}

#[test]
fn four_nodes_appending_at_once_keep_one_unforked_chain() {
    let (url, _dir, store, vault) = first_node();
    let nodes: Vec<_> = (0..4)
        .map(|i| {
            let dir = tempfile::tempdir().unwrap();
            let s = PgStore::connect(&url).unwrap();
            let v = s.join_vault(&dir.path().join("n"), "pw").unwrap();
            (dir, Arc::new(s.backend(v)), i)
        })
        .collect();
    let per_node = 50;
    std::thread::scope(|scope| {
        for (_, backend, i) in &nodes {
            let backend = backend.clone();
            scope.spawn(move || {
                for n in 0..per_node {
                    let mut batch = Batch::default();
                    let run = format!("run-{i}-{n}");
                    put(&mut batch, Table::Runs, &run, "{}");
                    batch
                        .entries
                        .push(NewEntry::new(format!("node-{i}"), "step_end").run(&run));
                    batch
                        .entries
                        .push(NewEntry::new(format!("node-{i}"), "run_end").run(&run));
                    backend.commit(&[batch]).unwrap();
                }
            });
        }
    });
    let backend = store.backend(vault);
    let report = backend.vault().ledger_in(&backend).verify().unwrap();
    assert_eq!(report.entries, 4 * per_node * 2);
    assert_eq!(
        backend.keys(Table::Runs).unwrap().len(),
        4 * per_node as usize
    );
    // Each run's two entries are adjacent: a commit's entries are never interleaved.
    let entries = backend.vault().ledger_in(&backend).entries(None).unwrap();
    for pair in entries.chunks(2) {
        assert_eq!(pair[0].entry.run, pair[1].entry.run);
        assert_eq!(pair[0].entry.kind, "step_end");
    }
    assert_eq!(
        psql(&url, "SELECT count(*), max(seq) FROM sc_ledger").trim(),
        "400|400"
    );
}

#[test]
fn a_dump_of_the_database_reveals_no_name_or_value() {
    let (url, _dir, store, vault) = first_node();
    let backend = store.backend(vault);
    let mut batch = Batch::default();
    put(
        &mut batch,
        Table::Runs,
        "run-SECRETRUNID",
        "{\"output\":\"AKIA-SECRET-OUTPUT\"}",
    );
    batch.entries.push(
        NewEntry::new("alice-SECRETACTOR", "step_end")
            .run("run-SECRETRUNID")
            .step("SECRETSTEP"),
    );
    backend.commit(&[batch]).unwrap();
    let q = store.queue(backend.vault().clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(q.enqueue(
        JobKind::Run,
        b"workflow SECRETWORKFLOW",
        Some("delivery-SECRETID"),
    ))
    .unwrap();
    let dump = std::process::Command::new(server::server_bin("pg_dump"))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.contains("sc_rows") && text.contains("sc_ledger"),
        "a real dump"
    );
    for secret in ["SECRET", "runs", "step_end", "alice", "delivery"] {
        assert!(!text.contains(secret), "the dump shows {secret:?}");
    }
}

#[test]
fn a_tampered_or_moved_row_and_a_deleted_ledger_record_are_caught() {
    let (url, _dir, store, vault) = first_node();
    let backend = store.backend(vault);
    let mut batch = Batch::default();
    put(&mut batch, Table::Runs, "run-1", "one");
    put(&mut batch, Table::Runs, "run-2", "two");
    for k in ["a", "b", "c"] {
        batch.entries.push(NewEntry::new("n", k));
    }
    backend.commit(&[batch]).unwrap();
    // Swap the two runs' sealed values: each is bound to its row.
    psql(
        &url,
        "WITH r AS (SELECT array_agg(value ORDER BY row_key) v FROM sc_rows) \
         UPDATE sc_rows SET value = CASE WHEN row_key = (SELECT row_key FROM sc_rows ORDER BY row_key LIMIT 1) \
         THEN (SELECT v[2] FROM r) ELSE (SELECT v[1] FROM r) END",
    );
    assert!(backend.get(Table::Runs, "run-1").is_err());
    assert!(backend.keys(Table::Runs).is_err());
    // Flip one byte of a ledger record.
    psql(
        &url,
        "UPDATE sc_ledger SET record = set_byte(record, 30, get_byte(record, 30) # 1) WHERE seq = 2",
    );
    let ledger = backend.vault().ledger_in(&backend);
    let err = ledger.verify().unwrap_err().to_string();
    assert!(err.contains("2"), "{err}");
    // Delete the last record: the sealed head catches the truncation.
    psql(&url, "DELETE FROM sc_ledger WHERE seq >= 2");
    assert!(ledger.verify().is_err());
}

#[test]
fn a_newer_schema_is_refused_with_the_version() {
    let url = server::server().fresh_database();
    PgStore::connect(&url).unwrap();
    psql(&url, "UPDATE sc_schema SET version = 99");
    let err = PgStore::connect(&url).unwrap_err();
    assert!(
        matches!(err, PgError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade secureclaw"), "{err}");
}

#[test]
fn a_store_with_no_vault_and_a_node_with_none_says_how_to_start() {
    let url = server::server().fresh_database();
    let store = PgStore::connect(&url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = store.join_vault(dir.path(), "pw").unwrap_err();
    assert!(matches!(err, PgError::NoVault), "{err}");
    // A node whose state directory belongs to another vault is refused.
    let (url2, _d, store2, _v) = first_node();
    let other = tempfile::tempdir().unwrap();
    Vault::create(other.path(), "pw", &FAST).unwrap();
    let err = store2.join_vault(other.path(), "pw").unwrap_err();
    assert!(err.to_string().contains("holds vault"), "{err}");
    let _ = url2;
    // A bad URL names the server without its password.
    let err = PgStore::connect("postgres://u:hunter2@127.0.0.1:1/x").unwrap_err();
    let msg = err.to_string();
    assert!(
        !msg.contains("hunter2") && msg.contains("127.0.0.1:1"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_never_claim_one_job_twice() {
    let (url, _dir, store, vault) = first_node();
    let submitter = store.queue(vault.clone());
    let jobs = 120;
    for n in 0..jobs {
        submitter
            .enqueue(JobKind::Run, format!("job {n}").as_bytes(), None)
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for _ in 0..4 {
        let s = PgStore::connect(&url).unwrap();
        let q = s.queue(vault.clone());
        handles.push(tokio::spawn(async move {
            let _keep = s;
            let mut got = Vec::new();
            while let Some(job) = q.claim(Duration::from_secs(30)).await.unwrap() {
                got.push(String::from_utf8(job.payload.clone()).unwrap());
                q.finish(job.id).await.unwrap().unwrap();
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a job was claimed twice");
    assert_eq!(all.len(), jobs);
    assert_eq!(
        psql(&url, "SELECT count(*) FROM sc_jobs WHERE state = 'done'").trim(),
        "120"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_interrupts_the_job_and_its_worker_learns_it_lost() {
    let (_url, _dir, store, vault) = first_node();
    let worker = store.queue(vault.clone());
    let other = store.queue(vault.clone());
    let id = worker
        .enqueue(JobKind::Run, b"run", None)
        .await
        .unwrap()
        .unwrap();
    let job = worker
        .claim(Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.id, id);
    assert_eq!(
        worker
            .heartbeat(id, Duration::from_millis(300))
            .await
            .unwrap(),
        Ok(())
    );
    // Nobody else can renew or finish it.
    assert_eq!(
        other.heartbeat(id, Duration::from_secs(5)).await.unwrap(),
        Err(Lost)
    );
    assert_eq!(other.finish(id).await.unwrap(), Err(Lost));
    assert!(
        other.expire_leases().await.unwrap().is_empty(),
        "the lease is live"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let expired = other.expire_leases().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, id);
    assert_eq!(expired[0].owner, worker.worker_id());
    assert_eq!(expired[0].payload, b"run");
    let (state, owner, attempts) = other.state(id).await.unwrap().unwrap();
    assert_eq!(state, JobState::Interrupted);
    assert_eq!(owner.as_deref(), Some(worker.worker_id()));
    assert_eq!(attempts, 1);
    // The worker that was cut off learns it at its next heartbeat, and cannot finish.
    assert_eq!(
        worker.heartbeat(id, Duration::from_secs(5)).await.unwrap(),
        Err(Lost)
    );
    assert_eq!(worker.finish(id).await.unwrap(), Err(Lost));
    // Never claimed again: a run is executed by the worker that claimed it, or not at all.
    assert!(other.claim(Duration::from_secs(5)).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_swept_once_old_and_nothing_that_still_needs_a_node_is() {
    let (_url, _dir, store, vault) = first_node();
    let q = store.queue(vault.clone());
    let lease = Duration::from_millis(200);
    let mut ids = Vec::new();
    for n in 0..5 {
        let key = format!("delivery-{n}");
        ids.push(
            q.enqueue(JobKind::Run, b"run", Some(&key))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // done; interrupted and recorded; interrupted, its run not yet recorded; running; queued.
    let mut claimed = Vec::new();
    for n in 0..4 {
        let held = if n == 3 {
            Duration::from_secs(60)
        } else {
            lease
        };
        claimed.push(q.claim(held).await.unwrap().unwrap().id);
    }
    assert_eq!(claimed, ids[..4]);
    assert_eq!(q.finish(ids[0]).await.unwrap(), Ok(()));
    tokio::time::sleep(lease * 2).await;
    let expired: Vec<_> = q
        .expire_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(expired, ids[1..3]);
    q.recorded(ids[1]).await.unwrap();

    assert_eq!(
        q.sweep_finished(Duration::from_secs(3600)).await.unwrap(),
        0,
        "swept before its time"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(q.sweep_finished(Duration::ZERO).await.unwrap(), 2);
    let left: Vec<Option<JobState>> = states_of(&q, &ids).await;
    assert_eq!(
        left,
        [
            None,
            None,
            Some(JobState::Interrupted),
            Some(JobState::Running),
            Some(JobState::Queued)
        ]
    );
    // A swept job's dedup key is free again; a kept one's still holds.
    assert!(
        q.enqueue(JobKind::Run, b"run", Some("delivery-0"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        q.enqueue(JobKind::Run, b"run", Some("delivery-2"))
            .await
            .unwrap()
            .is_none()
    );
}

async fn states_of(q: &secureclaw_store_pg::Queue, ids: &[uuid::Uuid]) -> Vec<Option<JobState>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(q.state(*id).await.unwrap().map(|s| s.0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_under_a_lapsed_lease_is_refused_and_leaves_what_the_cluster_recorded() {
    let (_url, _dir, store, vault) = first_node();
    let backend = Arc::new(store.backend(vault.clone()));
    let worker = store.queue(vault.clone());
    let other = store.queue(vault.clone());
    worker.enqueue(JobKind::Run, b"run", None).await.unwrap();
    let job = worker
        .claim(Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    let lease = worker.lease_token(&job);
    let save = |state: &str, lease: Option<String>| {
        let mut b = Batch {
            lease,
            ..Batch::default()
        };
        put(&mut b, Table::Runs, "run-1", state);
        b.entries
            .push(NewEntry::new("worker", "step_started").run("run-1"));
        b
    };
    let commit = |batches: Vec<Batch>| {
        let backend = backend.clone();
        async move {
            tokio::task::spawn_blocking(move || backend.commit(&batches))
                .await
                .unwrap()
        }
    };
    // While the lease is held, the worker's saves land.
    commit(vec![save("running", Some(lease.clone()))])
        .await
        .unwrap();
    // A lease another worker would claim to hold is refused.
    let forged = other.lease_token(&job);
    assert!(matches!(
        commit(vec![save("forged", Some(forged))]).await,
        Err(StorageError::LeaseLost)
    ));
    // The lease lapses; another node marks the run interrupted.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(other.expire_leases().await.unwrap().len(), 1);
    commit(vec![save("interrupted", None)]).await.unwrap();
    // The worker comes back and saves late: refused, with everything else in that commit.
    let late = commit(vec![
        save("interrupted", None),
        save("succeeded", Some(lease.clone())),
    ])
    .await;
    assert!(matches!(late, Err(StorageError::LeaseLost)), "{late:?}");
    assert_eq!(
        backend.get(Table::Runs, "run-1").unwrap().as_deref(),
        Some(&b"interrupted"[..])
    );
    // Two commits landed, each with one entry: the refused ones appended nothing.
    let ledger = vault.ledger_in(&*backend);
    assert_eq!(ledger.verify().unwrap().entries, 2);
    // The writer retries a refused group batch by batch: only the late save fails.
    let writer = Writer::start(backend.clone()).unwrap();
    let (a, b) = (
        writer.commit(save("interrupted", None)),
        writer.commit(save("succeeded", Some(lease))),
    );
    let (a, b) = tokio::join!(a, b);
    a.unwrap();
    assert!(matches!(b, Err(StorageError::LeaseLost)), "{b:?}");
    // A job whose run had ended before the lease lapsed ends done.
    assert!(other.settle_interrupted(job.id).await.unwrap());
    assert_eq!(
        other.state(job.id).await.unwrap().unwrap().0,
        JobState::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_kept_from_the_claim_while_the_caller_is_blocked_and_lost_once_taken() {
    let (url, _dir, store, vault) = first_node();
    let worker = store.queue(vault.clone());
    let other = store.queue(vault.clone());
    worker.enqueue(JobKind::Run, b"run", None).await.unwrap();
    let lease = Duration::from_millis(600);
    let job = worker.claim(lease).await.unwrap().unwrap();
    let keeper = worker.keep_lease(&job, lease);
    // The caller's thread is held up for three leases (a slow start): the heartbeats run on
    // the store's runtime, so the lease holds.
    std::thread::sleep(lease * 3);
    assert!(
        other.expire_leases().await.unwrap().is_empty(),
        "the lease lapsed while its keeper was alive"
    );
    assert!(!keeper.is_lost());
    // Another node takes the job away (as expiring does): the keeper learns it at its next
    // heartbeat.
    psql(&url, "UPDATE sc_jobs SET state = 'interrupted'");
    tokio::time::timeout(lease * 2, keeper.lost())
        .await
        .expect("the keeper did not report the lease lost");
    assert!(keeper.is_lost());
    // A keeper dropped stops renewing: the lease lapses.
    psql(
        &url,
        "UPDATE sc_jobs SET state = 'running', lease_until = now() + interval '600 milliseconds'",
    );
    let keeper = worker.keep_lease(&job, lease);
    drop(keeper);
    tokio::time::sleep(lease * 2).await;
    assert_eq!(other.expire_leases().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_left_unrecorded_is_handed_to_the_next_node_until_recorded() {
    let (_url, _dir, store, vault) = first_node();
    let worker = store.queue(vault.clone());
    let other = store.queue(vault.clone());
    let id = worker
        .enqueue(JobKind::Run, b"run", None)
        .await
        .unwrap()
        .unwrap();
    worker
        .claim(Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The node that expires it dies before recording its run.
    assert_eq!(other.expire_leases().await.unwrap().len(), 1);
    let wait = Duration::from_millis(500);
    assert!(
        other.unrecorded(wait).await.unwrap().is_empty(),
        "handed out while the node that expired it may still record it"
    );
    tokio::time::sleep(wait * 2).await;
    let left = other.unrecorded(wait).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].id, left[0].owner.as_str()),
        (id, worker.worker_id())
    );
    assert_eq!(left[0].payload, b"run");
    other.recorded(id).await.unwrap();
    assert!(other.unrecorded(wait).await.unwrap().is_empty());
    assert_eq!(
        other.state(id).await.unwrap().unwrap().0,
        JobState::Interrupted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_that_lost_a_lease_can_still_record_its_run_interrupted() {
    let (_url, _dir, store, vault) = first_node();
    let backend = Arc::new(store.backend(vault.clone()));
    let runs = RunStore::with_backend(vault.clone(), backend.clone(), "worker").with_node("node-a");
    let worker = store.queue_as(vault.clone(), "node-a");
    worker.enqueue(JobKind::Run, b"run", None).await.unwrap();
    let job = worker
        .claim(Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    // This node starts the run under the lease, slowly: the lease lapses and this same node
    // expires it before the run's start is stored.
    runs.hold_lease("run-1", worker.lease_token(&job));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(worker.expire_leases().await.unwrap().len(), 1);
    let (runs, marked) = tokio::task::spawn_blocking(move || {
        let marked = runs.mark_lost_before_start("run-1", "wf", "node-a");
        (runs, marked)
    })
    .await
    .unwrap();
    assert!(
        marked.unwrap(),
        "the cluster's mark was refused by the lost lease"
    );
    let rec = runs
        .get("run-1")
        .unwrap()
        .expect("no record: the run would never end");
    assert_eq!(rec.state, RunState::Interrupted);
    // Its ledger entry landed with it.
    assert_eq!(vault.ledger_in(&*backend).verify().unwrap().entries, 1);
    // The run's own late save still carries the lapsed lease, and is refused.
    let mut late = rec.clone();
    late.state = RunState::Running;
    assert!(
        runs.save(&late).is_err(),
        "a save under the lost lease landed"
    );
    assert_eq!(
        runs.get("run-1").unwrap().unwrap().state,
        RunState::Interrupted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_queued_by_two_replicas_is_queued_once_and_wakes_a_listener() {
    let (url, _dir, store, vault) = first_node();
    let replica_a = store.queue(vault.clone());
    let store_b = PgStore::connect(&url).unwrap();
    let replica_b = store_b.queue(vault.clone());
    let worker = store.queue(vault.clone());
    worker.listen().await.unwrap();
    let a = replica_a.enqueue(JobKind::Run, b"push", Some("gh-delivery-1"));
    let b = replica_b.enqueue(JobKind::Run, b"push", Some("gh-delivery-1"));
    let (a, b) = tokio::join!(a, b);
    let ids: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(ids.len(), 1, "one of the two is a duplicate");
    // The notification arrived: waiting returns long before the poll interval.
    let started = std::time::Instant::now();
    worker.wait_for_work(Duration::from_secs(60)).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        worker
            .claim(Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        worker
            .claim(Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_shared_encryption_count_is_the_sum_over_nodes() {
    let (url, _dir, store, vault) = first_node();
    let a = store.backend(vault);
    let node_b = tempfile::tempdir().unwrap();
    let store_b = PgStore::connect(&url).unwrap();
    let b = store_b.backend(store_b.join_vault(node_b.path(), "pw").unwrap());
    let one = |backend: &secureclaw_store_pg::PgBackend, key: &str| {
        let mut batch = Batch::default();
        put(&mut batch, Table::Runs, key, "{}");
        backend.commit(&[batch]).unwrap();
    };
    let shared = || -> u64 {
        psql(&url, "SELECT used FROM sc_counter")
            .trim()
            .parse()
            .unwrap()
    };
    one(&a, "a-0");
    let before = shared();
    // A seals 500 values on its own (as blob chunks are) while B commits 100 rows.
    for n in 0..500 {
        a.vault()
            .seal_shared("local", &n.to_string(), b"x")
            .unwrap();
    }
    for n in 0..100 {
        one(&b, &format!("b-{n}"));
    }
    one(&a, "a-1");
    // Every encryption of both nodes is counted: 500 + 100 + A's last row at least.
    assert!(shared() >= before + 601, "{} < {} + 601", shared(), before);
}
