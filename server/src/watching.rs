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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secureclaw_engine::session::Audit;
use secureclaw_engine::tools::vault::kind;
use secureclaw_engine::watch::{ChangeWatcher, foreign_changes};
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
    let stopping = state.stopping.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stopping.cancelled() => {}
            () = watch_all(state, feed) => {}
        }
    })
}

async fn watch_all(state: AppState, feed: Arc<dyn WorkflowFeed>) {
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
    }
}

/// Watch one workflow's workspace and run it on change, for as long as the task lives.
async fn watch_one(state: AppState, wf: TriggeredWorkflow, dir: PathBuf, last: LastRuns) {
    let key = wf.key();
    let never = vec![state.config.data_dir.clone()];
    let globs = wf.validated.workflow.on.watch.clone();
    let Ok(mut watcher) = ChangeWatcher::workspace_only(&dir, &globs, never) else {
        return;
    };
    let mut queued: Option<Vec<PathBuf>> = None;
    let previous = last.lock().ok().and_then(|l| l.get(&key).cloned());
    if let Some(run) = previous
        && still_going(&state, &run)
    {
        queued = after_run(&state, &mut watcher, &run).await;
    }
    loop {
        let batch = match queued.take() {
            Some(b) => b,
            None => match watcher.next_batch(DEBOUNCE).await {
                Some(b) => b,
                None => return,
            },
        };
        let Some(run) = start(&state, &wf, &key, watcher.workspace(), &batch).await else {
            continue;
        };
        if let Ok(mut l) = last.lock() {
            l.insert(key.clone(), run.clone());
        }
        queued = after_run(&state, &mut watcher, &run).await;
    }
}

/// Wait for `run` to end, then return what others changed meanwhile (one follow-up run).
async fn after_run(
    state: &AppState,
    watcher: &mut ChangeWatcher,
    run: &str,
) -> Option<Vec<PathBuf>> {
    wait_for_end(state, run).await;
    let changed = watcher.settle().await;
    let left = own_writes(state, run, watcher.workspace());
    let foreign = foreign_changes(&changed, &left);
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
        },
    )
    .await
    .ok()?;
    let changed: Vec<String> = batch
        .iter()
        .take(20)
        .map(|p| p.strip_prefix(workspace).unwrap_or(p).display().to_string())
        .collect();
    let _ = state
        .session
        .audit(Audit::new(
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
        ))
        .await;
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
