//! Runs that start on a file change: each valid source workflow with `on.watch` globs, whose
//! source has a workspace, has that workspace watched (the engine's
//! [`ChangeWatcher`]: `.gitignore`, `.ignore`, editor swap files, `.git` and the server's data
//! dir never count).
//!
//! - Changes are debounced into one batch, and a batch starts one run.
//! - Never two runs of one workflow at once: changes made while a run goes on (or waits at a
//!   gate) queue one follow-up run after it, however many there were.
//! - A run's own writes never start a run: after the run, the watcher reads every event up to
//!   a fence it writes itself, and drops each path the run recorded changing that is still as
//!   the run left it ([`foreign_changes`]).
//! - The watchers are rebuilt each time the sources change.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secureclaw_engine::session::Audit;
use secureclaw_engine::tools::vault::kind;
use secureclaw_engine::watch::{ChangeWatcher, Seen, content_hash, foreign_changes};
use serde_json::json;

use crate::app::AppState;
use crate::launch::{Launch, launch};
use crate::schedules::{TriggeredWorkflow, WorkflowFeed, still_going};
use crate::tasks::model::Origin;

/// How long the files must be quiet before a batch of changes starts a run.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// How often a run that waits at a gate is looked at again (a resumed run also wakes the
/// waiter through the session's live-run changes).
const PARKED_POLL: Duration = Duration::from_secs(1);

/// The last run each watched workflow started, kept across rebuilds so a rebuilt watcher does
/// not start a run beside one still going.
type LastRuns = Arc<Mutex<HashMap<String, String>>>;

/// Start watching; it ends when the server stops (`state.stopping`).
pub fn spawn(state: AppState, feed: Arc<dyn WorkflowFeed>) -> tokio::task::JoinHandle<()> {
    spawn_counted(state, feed, Arc::default())
}

/// `spawn`, counting the watchers that are up in `up`.
fn spawn_counted(
    state: AppState,
    feed: Arc<dyn WorkflowFeed>,
    up: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let stopping = state.stopping.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stopping.cancelled() => {}
            () = watch_all(state, feed, up) => {}
        }
    })
}

async fn watch_all(state: AppState, feed: Arc<dyn WorkflowFeed>, up: Arc<AtomicUsize>) {
    let mut changes = feed.changes();
    let last: LastRuns = Arc::default();
    loop {
        changes.borrow_and_update();
        let workflows = feed.triggered(&state).await.unwrap_or_default();
        let running: Vec<_> = workflows
            .into_iter()
            .filter(|wf| !wf.validated.workflow.on.watch.is_empty())
            .filter_map(|wf| {
                let dir = state.workspace(wf.workspace.as_deref()?)?;
                Some(tokio::spawn(watch_one(
                    state.clone(),
                    wf,
                    dir,
                    last.clone(),
                    up.clone(),
                )))
            })
            .collect();
        if changes.changed().await.is_err() {
            // The feed is gone: the watchers stay as they are until the server stops.
            std::future::pending::<()>().await;
        }
        for task in running {
            task.abort();
        }
        up.store(0, Ordering::Relaxed);
    }
}

/// Watch one workflow's workspace and run it on change, for as long as the task lives.
async fn watch_one(
    state: AppState,
    wf: TriggeredWorkflow,
    dir: PathBuf,
    last: LastRuns,
    up: Arc<AtomicUsize>,
) {
    let key = wf.key();
    let never = vec![state.config.data_dir.clone()];
    let globs = wf.validated.workflow.on.watch.clone();
    let Ok(mut watcher) = ChangeWatcher::workspace_only(&dir, &globs, never) else {
        return;
    };
    up.fetch_add(1, Ordering::Relaxed);
    let mut queued: Option<Vec<PathBuf>> = None;
    let mut seen = Seen::new();
    let previous = last.lock().ok().and_then(|l| l.get(&key).cloned());
    if let Some(run) = previous
        && still_going(&state, &run)
    {
        queued = after_run(&state, &mut watcher, &run, &mut seen).await;
    }
    loop {
        let batch = match queued.take() {
            Some(b) => b,
            None => match watcher.next_batch(DEBOUNCE).await {
                Some(b) => b,
                None => return,
            },
        };
        for p in &batch {
            seen.insert(p.clone(), content_hash(p));
        }
        let Some(run) = start(&state, &wf, &key, watcher.workspace(), &batch).await else {
            continue;
        };
        if let Ok(mut l) = last.lock() {
            l.insert(key.clone(), run.clone());
        }
        queued = after_run(&state, &mut watcher, &run, &mut seen).await;
    }
}

/// Wait for `run` to end, then return what others changed meanwhile (one follow-up run).
async fn after_run(
    state: &AppState,
    watcher: &mut ChangeWatcher,
    run: &str,
    seen: &mut Seen,
) -> Option<Vec<PathBuf>> {
    wait_for_end(state, run).await;
    let changed = watcher.settle().await;
    let left = own_writes(state, run, watcher.workspace());
    let foreign = foreign_changes(&changed, &left, seen);
    (!foreign.is_empty()).then_some(foreign)
}

async fn start(
    state: &AppState,
    wf: &TriggeredWorkflow,
    key: &str,
    workspace: &Path,
    batch: &[PathBuf],
) -> Option<String> {
    let actor = format!("watch:{key}");
    let launched = launch(
        state,
        Launch {
            owner: wf.owner.clone(),
            actor: actor.clone(),
            origin: Origin::Watch,
            started_by: Some(actor.clone()),
            workflow: wf.validated.clone(),
            inputs: BTreeMap::new(),
            workspace: wf.workspace.clone(),
            // Nobody is there to approve: gates park the run for the API.
            approve: Vec::new(),
            since: Instant::now(),
            once: None,
        },
    )
    .await
    .ok()?;
    let changed: Vec<String> = batch
        .iter()
        .take(20)
        .map(|p| p.strip_prefix(workspace).unwrap_or(p).display().to_string())
        .collect();
    let mut audit = Audit::new(
        kind::WATCH_FIRED,
        actor,
        json!({
            "source": wf.source,
            "path": wf.path,
            "changed": changed,
            "changed_count": batch.len(),
            "task": launched.task_id,
            "run": launched.run_id,
        }),
    );
    // In the run's own ledger export too.
    audit.run = Some(launched.run_id.clone());
    let _ = state.session.audit(audit).await;
    Some(launched.run_id)
}

async fn wait_for_end(state: &AppState, run: &str) {
    let mut live = state.session.live_changes();
    while still_going(state, run) {
        tokio::select! {
            changed = live.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(PARKED_POLL).await;
                }
            }
            () = tokio::time::sleep(PARKED_POLL) => {}
        }
    }
}

/// Each path the run changed, with its SHA-256 as the run left it (`None`: deleted).
fn own_writes(state: &AppState, run: &str, workspace: &Path) -> BTreeMap<PathBuf, Option<String>> {
    let mut left = BTreeMap::new();
    let Ok((_, steps)) = state.session.changes(run, None) else {
        return left;
    };
    // In write order, so the last step's state of a path wins.
    for (_, set) in steps {
        for change in set.changes {
            left.insert(
                workspace.join(change.path.as_path()),
                change.post.and_then(|e| e.sha256),
            );
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secureclaw_engine::record::RunState;
    use secureclaw_engine::session::{Access, AppTable, PassphraseSource, Session, SessionOptions};
    use serde_json::Value;

    use super::*;
    use crate::config::ServerConfig;
    use crate::schedules::FixedFeed;

    /// Writes into the watched tree, then parks at a gate: the test decides when it ends.
    const BUILD: &str = r#"version: 1
name: build
on:
  watch: ["src/**"]
steps:
  - id: prepare
    write: { path: src/prep.txt, content: "prepared\n" }
  - id: publish
    needs: [prepare]
    approve: true
    write: { path: src/published.txt, content: "published\n" }
"#;

    async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        for _ in 0..3000 {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn runs(state: &AppState) -> Vec<String> {
        let mut runs: Vec<(String, String)> = state
            .session
            .runs()
            .unwrap()
            .into_iter()
            .map(|r| (r.started_at, r.run_id))
            .collect();
        runs.sort();
        runs.into_iter().map(|(_, id)| id).collect()
    }

    async fn parked(state: &AppState, run: &str) {
        eventually("the run to park", || {
            let r = state.session.show(run).ok()?;
            (r.state == RunState::AwaitingApproval && !state.session.is_live(run)).then_some(())
        })
        .await;
    }

    /// Approve the gate and let the run finish.
    async fn finish(state: &AppState, run: &str) {
        state.session.approve(run, None, "test").await.unwrap();
        // The workspace changed while it waited: resume anyway.
        let handle = state.session.resume(run, true, None).unwrap();
        let record = handle.wait().await.unwrap();
        assert_eq!(record.state, RunState::Succeeded);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_run_per_batch_one_follow_up_and_never_for_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("src/ignored")).unwrap();
        std::fs::write(ws.join(".gitignore"), "src/ignored/\n").unwrap();
        std::fs::write(ws.join("src/input.txt"), "zero\n").unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "watching-test-passphrase").unwrap();
        let session = Session::open(SessionOptions {
            state_dir: dir.path().join("data/state"),
            passphrase: PassphraseSource::File(pass),
            access: Access::Write { create: true },
            actor: "test:watching".into(),
        })
        .unwrap();
        let mut config = ServerConfig::defaults(dir.path().join("data"));
        config.workspaces.insert("ws".into(), ws.clone());
        let state = AppState::new(session, config).await.unwrap();
        let validated =
            secureclaw_engine::validate::validate_bytes(Path::new("build.yml"), BUILD.as_bytes())
                .unwrap();
        let feed = Arc::new(FixedFeed::default());
        feed.set(vec![TriggeredWorkflow {
            source: "repo".into(),
            path: "build.yml".into(),
            validated,
            owner: "u-owner".into(),
            workspace: Some("ws".into()),
        }]);
        let up = Arc::new(AtomicUsize::new(0));
        let task = spawn_counted(state.clone(), feed, up.clone());
        eventually("the watcher", || {
            (up.load(Ordering::Relaxed) == 1).then_some(())
        })
        .await;

        // A burst of changes is one batch: one run.
        for i in 0..5 {
            std::fs::write(ws.join("src/input.txt"), format!("one {i}\n")).unwrap();
        }
        std::fs::write(ws.join("src/other.txt"), "x").unwrap();
        let first = eventually("the first run", || runs(&state).first().cloned()).await;
        parked(&state, &first).await;
        // Changes while it waits queue one follow-up, however many they are.
        std::fs::write(ws.join("src/input.txt"), "two\n").unwrap();
        std::fs::write(ws.join("src/more.txt"), "x").unwrap();
        tokio::time::sleep(DEBOUNCE * 2).await;
        std::fs::write(ws.join("src/more.txt"), "y").unwrap();
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert_eq!(runs(&state).len(), 1, "a run started beside the first");
        finish(&state, &first).await;
        let second = eventually("the follow-up run", || runs(&state).get(1).cloned()).await;
        let record = state.session.show(&second).unwrap();
        assert_eq!(record.started_by.as_deref(), Some("watch:repo/build.yml"));
        parked(&state, &second).await;
        // The follow-up wrote src/prep.txt again with the same bytes and, once let through,
        // src/published.txt: neither is a change.
        finish(&state, &second).await;
        assert_eq!(
            std::fs::read_to_string(ws.join("src/published.txt")).unwrap(),
            "published\n"
        );

        // Its own writes, git-ignored files and editor leftovers start nothing.
        std::fs::write(ws.join("src/ignored/cache.bin"), "x").unwrap();
        std::fs::write(ws.join("src/.input.txt.swp"), "x").unwrap();
        std::fs::write(ws.join("src/input.txt~"), "x").unwrap();
        tokio::time::sleep(DEBOUNCE * 5).await;
        assert_eq!(runs(&state).len(), 2, "{:?}", runs(&state));

        let (jsonl, _) = state.session.ledger_export(None).unwrap();
        let fired: Vec<Value> = String::from_utf8(jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"].take())
            .filter(|e| e["kind"] == kind::WATCH_FIRED)
            .collect();
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert_eq!(fired[0]["result"]["run"], first.as_str());
        let follow_up: Vec<&str> = fired[1]["result"]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(follow_up.contains(&"src/more.txt"), "{follow_up:?}");
        assert!(follow_up.contains(&"src/input.txt"), "{follow_up:?}");
        assert!(!follow_up.contains(&"src/prep.txt"), "{follow_up:?}");
        assert_eq!(state.session.app_keys(AppTable::Tasks).unwrap().len(), 2);

        state.stopping.cancel();
        task.await.unwrap();
        state.session.shutdown().await;
    }
}
