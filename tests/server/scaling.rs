//! Several servers on one shared PostgreSQL store: accounts, tasks, runs and one ledger seen
//! from every replica, the ledger verified and exported from yet another node.

use std::process::Command;

use crate::harness::{PASSPHRASE, Server, unique};
use crate::taskkit::{started, wait_state};

#[path = "../../store-pg/tests/pg/server.rs"]
mod pg;

const WRITE: &str = r#"version: 1
name: shared
steps:
  - id: hello
    write: { path: hello.txt, content: "hi\n" }
"#;

fn cli(args: &[&str], data: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .args(args)
        .env("SECURECLAW_PASSPHRASE", PASSPHRASE)
        .env("ARGON2_MEMORY_KB", "8192")
        .env("ARGON2_ITERATIONS", "1")
        .env("HOME", data)
        .env_remove("SECURECLAW_STATE_DIR")
        .env_remove("SECURECLAW_STORE")
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_accounts_tasks_runs_and_one_ledger() {
    let url = pg::server().fresh_database();
    let store = ["--store", url.as_str()];
    let a = Server::start(&[], &store);
    let b = Server::start(&[], &store);

    // An account made on replica A signs in on replica B.
    let name = unique("shared");
    let mut on_a = a.client();
    on_a.register(&name).await;
    let mut on_b = b.client();
    on_b.login(&name).await;

    // Sign-in sessions are shared: A's token is good on B, both sessions are listed on either
    // replica, and signing out on B ends the session on A too.
    let a_token_on_b = crate::harness::Api {
        base: b.client().base,
        ..on_a.clone()
    };
    let me = a_token_on_b.get("/api/v1/auth/me").await;
    assert_eq!(me.status, 200, "{:?}", me.body);
    let listed = on_a.get("/api/v1/auth/sessions").await;
    assert_eq!(
        listed.body.as_array().map(Vec::len),
        Some(2),
        "{:?}",
        listed.body
    );
    let mut second = a.client();
    second.login(&name).await;
    let second_on_b = crate::harness::Api {
        base: b.client().base,
        ..second.clone()
    };
    assert_eq!(
        second_on_b
            .post("/api/v1/auth/logout", serde_json::json!({}))
            .await
            .status,
        204
    );
    assert_eq!(second.get("/api/v1/auth/me").await.status, 401);
    assert_eq!(on_a.get("/api/v1/auth/me").await.status, 200);

    // A task run on A is seen, with its run, on B; one run on B too.
    let (task_a, run_a) = started(&on_a, WRITE).await;
    wait_state(&on_a, &task_a, &["succeeded"]).await;
    let seen = wait_state(&on_b, &task_a, &["succeeded"]).await;
    assert_eq!(seen["id"], task_a.as_str(), "{seen}");
    let ledger = on_b
        .get(&format!("/api/v1/tasks/{task_a}/ledger/export"))
        .await;
    assert_eq!(ledger.status, 200, "{:?}", ledger.body);
    assert!(
        ledger.body.to_string().contains(&run_a),
        "{:?}",
        ledger.body
    );
    // Reverting it is A's to do: B has neither its workspace nor the pre-images.
    let refused = on_b
        .post(
            &format!("/api/v1/tasks/{task_a}/revert"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(refused.status, 409, "{:?}", refused.body);
    assert_eq!(refused.code(), "other_node", "{:?}", refused.body);
    let hint = refused.body["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("the replica that is node"),
        "{:?}",
        refused.body
    );
    assert!(std::fs::read_dir(&a.data_dir).is_ok());
    let reverted = on_a
        .post(
            &format!("/api/v1/tasks/{task_a}/revert"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(reverted.status, 200, "{:?}", reverted.body);
    assert_eq!(
        reverted.body["detail"]["summary"]["verified"], true,
        "{:?}",
        reverted.body
    );
    let (task_b, _) = started(&on_b, WRITE).await;
    wait_state(&on_b, &task_b, &["succeeded"]).await;

    // An account added from a third node (the server need not run there).
    let node_c = tempfile::tempdir().unwrap();
    let pw = node_c.path().join("pw");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    let data_c = node_c.path().join("data");
    let out = cli(
        &[
            "user",
            "add",
            "carol",
            "--password-file",
            pw.to_str().unwrap(),
            "--data-dir",
            data_c.to_str().unwrap(),
            "--store",
            &url,
        ],
        node_c.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = a
        .client()
        .post(
            "/api/v1/auth/login",
            serde_json::json!({"username": "carol", "password": "correct horse battery staple"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // One chain holds both replicas' runs: verified and exported from a fourth node.
    let node_d = tempfile::tempdir().unwrap();
    let state_d = node_d.path().join("state");
    let out = cli(
        &[
            "ledger",
            "verify",
            "--store",
            &url,
            "--state-dir",
            state_d.to_str().unwrap(),
        ],
        node_d.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("chain intact"), "{}", text(&out));
    let export = node_d.path().join("ledger.jsonl");
    let out = cli(
        &[
            "ledger",
            "export",
            "--store",
            &url,
            "--state-dir",
            state_d.to_str().unwrap(),
            "--out",
            export.to_str().unwrap(),
        ],
        node_d.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines = std::fs::read_to_string(&export).unwrap();
    let runs: std::collections::BTreeSet<String> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["entry"]["run"].as_str().map(str::to_owned))
        .collect();
    assert!(
        runs.len() >= 2,
        "both replicas' runs are in one ledger: {runs:?}"
    );
    assert!(runs.contains(&run_a), "{runs:?}");
    let head = node_d.path().join("ledger.jsonl.head.json");
    let out = crate::taskkit::verify_export(&export, &head, &state_d);
    assert!(out.status.success(), "{}", text(&out));

    // A wrong passphrase on a new node is refused before anything is written there.
    let node_e = tempfile::tempdir().unwrap();
    let state_e = node_e.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .args(["ledger", "verify", "--store", &url, "--state-dir"])
        .arg(&state_e)
        .env("SECURECLAW_PASSPHRASE", "not the passphrase")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!state_e.join("vault.redb").exists());

    // The store's URL must be PostgreSQL.
    let out = cli(
        &[
            "ledger",
            "verify",
            "--store",
            "mysql://x",
            "--state-dir",
            state_d.to_str().unwrap(),
        ],
        node_d.path(),
    );
    assert!(text(&out).contains("PostgreSQL URL"), "{}", text(&out));
    drop((a, b));

    // Passphrase rotation with every node stopped: the shared header changes in place, and a
    // node opens it only with the new passphrase.
    let out = Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .args(["vault", "rekey", "--store", &url, "--state-dir"])
        .arg(&state_d)
        .env("SECURECLAW_PASSPHRASE", PASSPHRASE)
        .env("SECURECLAW_NEW_PASSPHRASE", "rotated passphrase")
        .env("ARGON2_MEMORY_KB", "8192")
        .env("ARGON2_ITERATIONS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("next start"), "{}", text(&out));
    let node_f = tempfile::tempdir().unwrap();
    let verify_as = |pass: &str| {
        Command::new(env!("CARGO_BIN_EXE_secureclaw"))
            .args(["ledger", "verify", "--store", &url, "--state-dir"])
            .arg(node_f.path().join("state"))
            .env("SECURECLAW_PASSPHRASE", pass)
            .output()
            .unwrap()
    };
    let old = verify_as(PASSPHRASE);
    assert!(!old.status.success(), "{}", text(&old));
    assert!(text(&old).contains("wrong passphrase"), "{}", text(&old));
    let new = verify_as("rotated passphrase");
    assert!(new.status.success(), "{}", text(&new));
    // Node C (`user add` above) holds the old header: it takes the new one with the new
    // passphrase.
    let state_c = data_c.join("state");
    let before = std::fs::read(state_c.join("vault.header.json")).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .args(["ledger", "verify", "--store", &url, "--state-dir"])
        .arg(&state_c)
        .env("SECURECLAW_PASSPHRASE", "rotated passphrase")
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert_ne!(
        std::fs::read(state_c.join("vault.header.json")).unwrap(),
        before
    );
    // A flag that would be ignored is refused instead.
    let out = cli(
        &[
            "vault",
            "status",
            "--store",
            &url,
            "--state-dir",
            state_c.to_str().unwrap(),
        ],
        node_c.path(),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("`vault rekey` only"), "{}", text(&out));
}

/// A `secureclaw worker` process on the shared store, killed when dropped.
struct Worker {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Worker {
    fn start(url: &str, data: &std::path::Path) -> Worker {
        std::fs::create_dir_all(data).unwrap();
        let log = data.join("worker.log");
        let child = Command::new(env!("CARGO_BIN_EXE_secureclaw"))
            .args([
                "worker",
                "--store",
                url,
                "--lease",
                "2s",
                "--poll",
                "300ms",
                "--data-dir",
            ])
            .arg(data)
            .env("SECURECLAW_PASSPHRASE", PASSPHRASE)
            .env("HOME", data)
            .env_remove("SECURECLAW_STATE_DIR")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Worker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to cancel, roll back or give up its leases.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + crate::taskkit::PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

const SLOW: &str = r#"version: 1
name: slow
steps:
  - id: partial
    shell: "echo started > partial.txt && sleep 60"
"#;

/// A task runs once however its start is asked: the same start asked of two replicas at once
/// (each holds only its own per-task lock), or asked again after a replica stopped between
/// queueing the run and recording it on the task, queues one run, and every 202 names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_run_started_on_two_replicas_at_once_is_queued_once() {
    const TASKS: usize = 12;
    let url = pg::server().fresh_database();
    let a = Server::start(&[], &["--store", url.as_str(), "--workers"]);
    let b = Server::start(&[], &["--store", url.as_str(), "--workers"]);
    let on_a = crate::harness::Api::user(&a, "once").await;
    let on_b = crate::harness::Api {
        base: b.client().base,
        ..on_a.clone()
    };
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let task = crate::taskkit::workflow_task(&on_a, WRITE).await;
        tasks.push(task["id"].as_str().unwrap().to_string());
    }
    // No worker runs them: every run stays queued, one job each.
    let starts = tasks.iter().map(|task| {
        let path = format!("/api/v1/tasks/{task}/run");
        let (on_a, on_b) = (&on_a, &on_b);
        async move {
            let (x, y) = tokio::join!(
                on_a.post(&path, serde_json::json!({})),
                on_b.post(&path, serde_json::json!({}))
            );
            (task.clone(), [x, y])
        }
    });
    for (task, replies) in futures_util::future::join_all(starts).await {
        // A run a worker has not taken yet is named by the answers alone.
        let run = replies
            .iter()
            .find(|r| r.status == 202)
            .and_then(|r| r.body["run_id"].as_str())
            .unwrap_or_else(|| panic!("neither start of {task} was accepted: {replies:?}"))
            .to_string();
        for r in &replies {
            match r.status {
                202 => assert_eq!(r.body["run_id"], run.as_str(), "{:?}", r.body),
                409 => assert!(r.body.to_string().contains(&run), "{:?}", r.body),
                other => panic!("starting {task}: {other} {:?}", r.body),
            }
        }
    }
    let jobs = std::process::Command::new(pg::server_bin("psql"))
        .arg(&url)
        .args(["-Atqc", "SELECT count(*) FROM sc_jobs"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&jobs.stdout).trim(),
        TASKS.to_string(),
        "{}",
        String::from_utf8_lossy(&jobs.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_what_replicas_queue_and_a_killed_worker_rolls_back_when_it_returns() {
    let url = pg::server().fresh_database();
    let server = Server::start(&[], &["--store", url.as_str(), "--workers"]);
    let api = crate::harness::Api::user(&server, "queued").await;
    let nodes = tempfile::tempdir().unwrap();
    let one = nodes.path().join("one");
    let w1 = Worker::start(&url, &one);

    // Queued by the replica, run by the worker, in the worker's own workspace; the replica
    // streams every event of it.
    let (task, _run) = started(&api, WRITE).await;
    let mut stream =
        crate::taskkit::Sse::open(&api, &format!("/api/v1/tasks/{task}/stream"), None).await;
    let events = stream.until("run_finished", Some("succeeded")).await;
    crate::taskkit::assert_consecutive(&events, 1);
    let kinds = crate::taskkit::kinds(&events);
    assert!(kinds.contains(&"step_finished"), "{kinds:?}");
    let done = wait_state(&api, &task, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}\n{}", w1.log());
    assert!(
        one.join("workspaces")
            .join(&task)
            .join("hello.txt")
            .is_file()
    );
    assert!(!server.data_dir.join("workspaces").join(&task).exists());

    // Killed mid-step: the partial write stays on its disk until it comes back.
    let (slow, slow_run) = started(&api, SLOW).await;
    let partial = one.join("workspaces").join(&slow).join("partial.txt");
    until("the step's first write", async || {
        partial.is_file().then_some(())
    })
    .await;
    w1.kill();
    let two = nodes.path().join("two");
    let w2 = Worker::start(&url, &two);
    let interrupted = wait_state(&api, &slow, &["interrupted"]).await;
    assert!(
        interrupted.to_string().contains("lost its lease"),
        "{interrupted}\n{}",
        w2.log()
    );
    assert!(
        partial.is_file(),
        "nobody but its worker touches its workspace"
    );
    assert!(w2.log().contains(&slow_run), "{}", w2.log());

    // Back: it rolls its interrupted run back, byte for byte, once.
    let w1 = Worker::start(&url, &one);
    until("the rollback", async || (!partial.exists()).then_some(())).await;
    let rolled = until("the revert on record", async || {
        let r = api.get(&format!("/api/v1/tasks/{slow}")).await;
        let reverts = r.body["run"]["reverts"].as_array().map_or(0, Vec::len);
        (reverts > 0).then_some(r.body)
    })
    .await;
    assert_eq!(rolled["state"], "interrupted", "{rolled}");
    let revert = &rolled["run"]["reverts"][0];
    assert_eq!(revert["state"], "completed", "{rolled}");
    assert_eq!(revert["verified"], true, "{rolled}");
    assert_eq!(rolled["run"]["steps"][0]["state"], "reverted", "{rolled}");
    // It says so once the revert returns, a moment after the revert is on record.
    until("w1 saying it rolled the run back", async || {
        w1.log().contains("rolled back run").then_some(())
    })
    .await;
    drop((w1, w2));
    let w1_again = Worker::start(&url, &one);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !w1_again.log().contains("rolled back run"),
        "once: {}",
        w1_again.log()
    );
    let r = api.get(&format!("/api/v1/tasks/{slow}")).await;
    assert_eq!(
        r.body["run"]["reverts"].as_array().map(Vec::len),
        Some(1),
        "{:?}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_asked_of_a_replica_runs_on_the_worker_that_ran_the_run() {
    let url = pg::server().fresh_database();
    let server = Server::start(&[], &["--store", url.as_str(), "--workers"]);
    let api = crate::harness::Api::user(&server, "routed").await;
    let nodes = tempfile::tempdir().unwrap();
    let (one, two) = (nodes.path().join("one"), nodes.path().join("two"));
    // Two workers: a revert that any worker could take would land on the wrong disk half the
    // time.
    let (w1, w2) = (Worker::start(&url, &one), Worker::start(&url, &two));
    let (task, run) = started(&api, WRITE).await;
    let done = wait_state(&api, &task, &["succeeded", "failed"]).await;
    assert_eq!(
        done["state"],
        "succeeded",
        "{done}\n{}\n{}",
        w1.log(),
        w2.log()
    );
    let file = |data: &std::path::Path| data.join("workspaces").join(&task).join("hello.txt");
    let (ran, other, ran_log) = match (file(&one).is_file(), file(&two).is_file()) {
        (true, false) => (one.clone(), two.clone(), &w1),
        (false, true) => (two.clone(), one.clone(), &w2),
        found => panic!("the run's file on ({found:?}): expected on exactly one worker"),
    };

    // The dry run is the node's: it reads the pre-images on its disk.
    let dry = api
        .post(
            &format!("/api/v1/tasks/{task}/revert"),
            serde_json::json!({"dry_run": true}),
        )
        .await;
    assert_eq!(dry.status, 200, "{:?}\n{}", dry.body, ran_log.log());
    assert_eq!(dry.body["outcome"], "planned", "{:?}", dry.body);
    assert_eq!(
        dry.body["detail"]["steps"][0]["id"], "hello",
        "{:?}",
        dry.body
    );
    assert!(file(&ran).is_file(), "a dry run changed the workspace");

    // The node's drift check is the one that counts: the file changed after the run, and the
    // revert stops on it, exactly as on one machine.
    std::fs::write(file(&ran), "edited by hand\n").unwrap();
    let drift = api
        .post(
            &format!("/api/v1/tasks/{task}/revert"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(drift.status, 200, "{:?}", drift.body);
    assert_eq!(
        drift.body["detail"]["summary"]["state"], "conflict",
        "{:?}",
        drift.body
    );
    assert_eq!(
        drift.body["detail"]["conflicts"][0]["path"], "hello.txt",
        "{:?}",
        drift.body
    );
    assert_eq!(
        std::fs::read_to_string(file(&ran)).unwrap(),
        "edited by hand\n",
        "a revert stopped by drift changed the workspace"
    );

    let applied = api
        .post(
            &format!("/api/v1/tasks/{task}/revert"),
            serde_json::json!({"force": true}),
        )
        .await;
    assert_eq!(applied.status, 200, "{:?}\n{}", applied.body, ran_log.log());
    assert_eq!(applied.body["outcome"], "applied", "{:?}", applied.body);
    assert!(
        !file(&ran).exists(),
        "the revert did not reach the worker's disk"
    );
    assert!(!other.join("workspaces").join(&task).exists());
    let log = ran_log.log();
    assert!(
        log.contains(&format!("revert of run {run} (dry run): planned")),
        "{log}"
    );
    assert!(
        log.contains(&format!("revert of run {run}: applied")),
        "{log}"
    );
    let view = api.get(&format!("/api/v1/tasks/{task}")).await;
    assert_eq!(
        (
            &view.body["run"]["reverts"][0]["state"],
            &view.body["run"]["reverts"][1]["state"]
        ),
        (
            &serde_json::json!("conflict"),
            &serde_json::json!("completed")
        ),
        "{:?}",
        view.body
    );
    assert_eq!(
        view.body["run"]["steps"][0]["state"], "reverted",
        "{:?}",
        view.body
    );
}

/// Fails until a file named `go` is in its workspace.
const FLAKY: &str = r#"version: 1
name: flaky
steps:
  - id: check
    shell: "[ -f go ] || exit 3; echo went > went.txt"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_parked_or_failed_on_a_worker_goes_on_there_when_approved_or_retried_via_a_replica() {
    let url = pg::server().fresh_database();
    let server = Server::start(&[], &["--store", url.as_str(), "--workers"]);
    let api = crate::harness::Api::user(&server, "goes-on").await;
    let data = tempfile::tempdir().unwrap();
    let w = Worker::start(&url, data.path());
    let workspace = |task: &str| data.path().join("workspaces").join(task);

    // Parked at its gate on the worker; approved through the replica, it goes on there.
    let (gated, gated_run) = started(&api, crate::taskkit::GATED).await;
    wait_state(&api, &gated, &["awaiting_approval"]).await;
    let gates = api.get(&format!("/api/v1/tasks/{gated}/approvals")).await;
    assert_eq!(gates.status, 200, "{:?}", gates.body);
    let hash = gates.body["gates"][0]["request_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let approved = api
        .post(
            &format!("/api/v1/tasks/{gated}/steps/publish/approve"),
            serde_json::json!({"request_hash": hash}),
        )
        .await;
    assert_eq!(approved.status, 200, "{:?}\n{}", approved.body, w.log());
    assert_eq!(approved.body["resumed"], true, "{:?}", approved.body);
    let done = wait_state(&api, &gated, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}\n{}", w.log());
    assert_eq!(
        std::fs::read_to_string(workspace(&gated).join("published.txt")).unwrap(),
        "published\n"
    );
    assert!(
        w.log()
            .contains(&format!("resume of run {gated_run}: started")),
        "{}",
        w.log()
    );

    // Failed on the worker; retried through the replica, it goes on there. The workspace
    // changed since the failure: the worker's drift check refuses, and says so through the
    // replica, until the retry is forced.
    let (flaky, flaky_run) = started(&api, FLAKY).await;
    let failed = wait_state(&api, &flaky, &["succeeded", "failed"]).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    std::fs::write(workspace(&flaky).join("go"), "").unwrap();
    let drift = api
        .post(
            &format!("/api/v1/tasks/{flaky}/retry"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(drift.status, 409, "{:?}\n{}", drift.body, w.log());
    assert_eq!(drift.body["code"], "workspace_drift", "{:?}", drift.body);
    let retried = api
        .post(
            &format!("/api/v1/tasks/{flaky}/retry"),
            serde_json::json!({"force": true}),
        )
        .await;
    assert_eq!(retried.status, 202, "{:?}\n{}", retried.body, w.log());
    assert_eq!(retried.body["run_id"], flaky_run.as_str());
    let done = wait_state(&api, &flaky, &["succeeded"]).await;
    assert_eq!(
        done["run"]["run_id"],
        flaky_run.as_str(),
        "the same run went on"
    );
    assert!(workspace(&flaky).join("went.txt").is_file());
    let log = w.log();
    assert!(
        log.contains(&format!(
            "retry of run {flaky_run}: refused (workspace_drift)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("retry of run {flaky_run}: started")),
        "{log}"
    );
}

/// Every two seconds, runs side by side: each fire time is one run, whatever else is going.
const TICK: &str = r#"version: 1
name: tick
on:
  schedule: { cron: "*/2 * * * * *", overlap: true }
steps:
  - id: mark
    write: { path: tick.txt, content: "tick\n" }
"#;

/// Killed mid-step on its worker, then rerun elsewhere because its file says so.
const RERUN_IF_LOST: &str = r#"version: 1
name: rerun-if-lost
on_worker_lost: rerun
steps:
  - id: partial
    shell: "echo started > partial.txt && sleep 6"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_sourced_run_whose_worker_is_lost_runs_again_on_another_worker_when_its_file_says_so()
{
    let url = pg::server().fresh_database();
    let repo = crate::gitkit::GitRepo::new();
    repo.write("flows/lost.yaml", RERUN_IF_LOST);
    let commit = repo.commit("rerun if lost");
    let (_server, admin) =
        crate::gitkit::admin_server(&[], &["--store", url.as_str(), "--workers"]).await;
    add_flows(&admin, &repo).await;
    let nodes = tempfile::tempdir().unwrap();
    let one = nodes.path().join("one");
    let w1 = Worker::start(&url, &one);
    let r = admin
        .post(
            "/api/v1/workflows/run",
            serde_json::json!({"source": "repo", "path": "flows/lost.yaml"}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let (task, run) = (
        r.body["task_id"].as_str().unwrap().to_string(),
        r.body["run_id"].as_str().unwrap().to_string(),
    );
    let partial = one.join("workspaces").join(&task).join("partial.txt");
    until("the step's first write", async || {
        partial.is_file().then_some(())
    })
    .await;
    w1.kill();
    // Two workers left: the run is marked once and rerun once, whichever of them sees it.
    let (two, three) = (nodes.path().join("two"), nodes.path().join("three"));
    let (w2, w3) = (Worker::start(&url, &two), Worker::start(&url, &three));
    let interrupted = wait_state(&admin, &task, &["interrupted"]).await;
    assert!(
        interrupted.to_string().contains("lost its lease"),
        "{interrupted}"
    );

    // A new task of the same owner, from the same commit, that ran to its end elsewhere.
    let rerun = until("the rerun's task", async || {
        let r = admin.get("/api/v1/tasks?limit=50").await;
        r.body["tasks"]
            .as_array()?
            .iter()
            .find(|t| t["started_by"] == format!("lost-worker:{task}").as_str())
            .cloned()
    })
    .await;
    let rerun_task = rerun["id"].as_str().unwrap().to_string();
    let done = wait_state(&admin, &rerun_task, &["succeeded", "failed", "interrupted"]).await;
    let logs = format!("w2:\n{}\nw3:\n{}", w2.log(), w3.log());
    assert_eq!(done["state"], "succeeded", "{done}\n{logs}");
    assert_eq!(done["git"]["commit"], commit.as_str(), "{done}");
    assert_ne!(done["run"]["run_id"], run.as_str(), "{done}");
    let ran_on: Vec<bool> = [&two, &three]
        .iter()
        .map(|n| {
            n.join("workspaces")
                .join(&rerun_task)
                .join("partial.txt")
                .is_file()
        })
        .collect();
    assert_eq!(
        ran_on.iter().filter(|&&b| b).count(),
        1,
        "one worker ran it: {ran_on:?}\n{logs}"
    );
    assert!(
        partial.is_file(),
        "the lost run's workspace waits for its worker"
    );
    let r = admin.get("/api/v1/tasks?limit=50").await;
    let reruns = r.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["started_by"]
                .as_str()
                .is_some_and(|s| s.starts_with("lost-worker:"))
        })
        .count();
    assert_eq!(reruns, 1, "{:?}\n{logs}", r.body);
    // A rerun is not rerun: it ended. And the old run is still the old worker's to roll back.
    let w1 = Worker::start(&url, &one);
    until("the rollback", async || (!partial.exists()).then_some(())).await;
    drop((w1, w2, w3));

    // The ledger says who started the rerun and why, and both runs name the commit.
    let ledger = export_ledger(&url, &nodes.path().join("audit"));
    let created: Vec<&serde_json::Value> = ledger
        .iter()
        .map(|e| &e["entry"])
        .filter(|e| e["kind"] == "task_created" && e["result"]["rerun_of"] == run.as_str())
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(
        created[0]["actor"].as_str().unwrap().starts_with("node:"),
        "{created:?}"
    );
    assert_eq!(created[0]["result"]["attempt"], 2, "{created:?}");
    let started: Vec<&serde_json::Value> = ledger
        .iter()
        .map(|e| &e["entry"])
        .filter(|e| e["kind"] == "run_started")
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    for s in started {
        assert_eq!(s["result"]["provenance"]["commit"], commit.as_str(), "{s}");
        assert_eq!(s["result"]["provenance"]["path"], "flows/lost.yaml", "{s}");
    }
}

/// Registers `repo`'s `flows` directory as the source `repo`.
async fn add_flows(admin: &crate::harness::Api, repo: &crate::gitkit::GitRepo) {
    crate::gitkit::add_source(
        admin,
        "repo",
        &repo.location(),
        serde_json::json!({"dir": "flows"}),
    )
    .await;
}

/// The ledger of the shared store, exported from a node of its own.
fn export_ledger(url: &str, node: &std::path::Path) -> Vec<serde_json::Value> {
    let state = node.join("state");
    let export = node.join("ledger.jsonl");
    let out = cli(
        &[
            "ledger",
            "export",
            "--store",
            url,
            "--state-dir",
            state.to_str().unwrap(),
            "--out",
            export.to_str().unwrap(),
        ],
        node,
    );
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_evaluating_one_schedule_start_each_time_once() {
    one_schedule_on_two_replicas(true).await;
}

/// Without workers each replica runs what it starts: the claim of a fire time is the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_running_their_own_runs_start_each_time_of_a_schedule_once() {
    one_schedule_on_two_replicas(false).await;
}

async fn one_schedule_on_two_replicas(workers: bool) {
    let url = pg::server().fresh_database();
    let mut args = vec!["--store", url.as_str()];
    if workers {
        args.push("--workers");
    }
    let repo = crate::gitkit::GitRepo::new();
    repo.write("flows/tick.yaml", TICK);
    repo.commit("tick");
    let a = Server::start(&[], &args);
    let b = Server::start(&[], &args);
    let name = unique("admin");
    let mut admin = a.client();
    admin.register(&name).await;
    let mut on_b = b.client();
    on_b.login(&name).await;
    // Registered through A: B reads the sources again by itself and evaluates the same
    // schedule.
    add_flows(&admin, &repo).await;
    for (replica, api) in [("a", &admin), ("b", &on_b)] {
        until(&format!("the schedule listed on {replica}"), async || {
            let r = api.get("/api/v1/schedules").await;
            (r.body["schedules"].as_array().map_or(0, Vec::len) == 1).then_some(())
        })
        .await;
    }
    let nodes = tempfile::tempdir().unwrap();
    let worker = workers.then(|| Worker::start(&url, &nodes.path().join("w")));

    // Let several times come while both replicas run it.
    let scheduled = async |api: &crate::harness::Api| -> Vec<serde_json::Value> {
        let r = api.get("/api/v1/tasks?limit=200").await;
        r.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["origin"] == "schedule")
            .cloned()
            .collect()
    };
    until("four scheduled runs succeeded", async || {
        let done = scheduled(&admin)
            .await
            .iter()
            .filter(|t| t["state"] == "succeeded")
            .count();
        (done >= 4).then_some(())
    })
    .await;
    drop(b);
    drop(a);
    drop(worker);

    // One task per fire time, one `schedule_fired` each, and no replica recorded a time as
    // skipped because the other had started it.
    let ledger = export_ledger(&url, &nodes.path().join("audit"));
    let of_kind = |k: &str| -> Vec<&serde_json::Value> {
        ledger
            .iter()
            .filter(|e| e["entry"]["kind"] == k)
            .map(|e| &e["entry"])
            .collect()
    };
    let fired = of_kind("schedule_fired");
    let skipped = of_kind("schedule_skipped");
    assert!(skipped.is_empty(), "{skipped:?}");
    let dues: std::collections::BTreeSet<&str> = fired
        .iter()
        .map(|e| e["result"]["due"].as_str().unwrap())
        .collect();
    assert_eq!(dues.len(), fired.len(), "a time fired twice: {fired:?}");
    let created = of_kind("task_created")
        .into_iter()
        .filter(|e| e["result"]["origin"] == "schedule")
        .count();
    assert_eq!(created, fired.len(), "{fired:?}");
    let started = of_kind("run_started").len();
    assert!(
        started >= 4 && started <= fired.len(),
        "{started} runs for {} fire times",
        fired.len()
    );
}
