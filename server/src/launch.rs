//! Starting a run without a person at a terminal: a source's workflow run by hand, a webhook
//! delivery, a schedule, a watched change. Each becomes a task of its owner (the operator who
//! registered the source or bound the trigger) and starts at once; gates park it for approval
//! in the API, exactly like a task a user created.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use secureclaw_engine::model::Tier;
use secureclaw_engine::record::Provenance;
use secureclaw_engine::session::{AppTable, Audit, RunRequest, RunSettings};
use secureclaw_engine::tools::vault::kind;
use secureclaw_engine::validate::Validated;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::tasks::model::{Origin, Task, TaskStore};
use crate::tasks::routes::{resolve_inputs, watch_step_times};

/// A run to start.
pub struct Launch {
    /// The user id the task belongs to.
    pub owner: String,
    /// Who the ledger says acted (`user:alice`, `trigger:deploy`).
    pub actor: String,
    pub origin: Origin,
    /// `user:NAME`, `rerun:TASK`, `trigger:NAME`, `schedule:SOURCE/PATH`,
    /// `watch:SOURCE/PATH`.
    pub started_by: Option<String>,
    pub workflow: Validated,
    /// Input values by name; strings are parsed to the declared type.
    pub inputs: BTreeMap<String, Value>,
    /// A registered workspace's name; `None`: the task gets its own empty directory.
    pub workspace: Option<String>,
    /// Tiers approved up front (only what the operator allowed for the trigger).
    pub approve: Vec<Tier>,
    /// When the request that asked for the run arrived: the time to the first step is
    /// measured from here.
    pub since: Instant,
    /// What makes this start unique across server replicas (a schedule's fire time, a
    /// webhook delivery id): when runs are queued for workers, a second replica queueing the
    /// same one starts nothing.
    pub once: Option<String>,
}

/// A started run.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Launched {
    pub task_id: String,
    pub run_id: String,
    /// Follow it at this URL (SSE).
    pub stream: String,
}

/// The error code of a start that another server replica already made (the same `once` key).
pub const DUPLICATE_START: &str = "duplicate";

/// Create the task and start its run.
pub async fn launch(state: &AppState, l: Launch) -> ApiResult<Launched> {
    let inputs = resolve_inputs(&l.workflow, Some(&l.inputs))?;
    let id = TaskStore::new_id();
    let workspace = match &l.workspace {
        Some(name) => state.workspace(name).ok_or_else(|| {
            ApiError::bad_request(
                "unknown_workspace",
                format!("no workspace named `{name}` is registered"),
            )
        })?,
        None => state.config.workspaces_dir().join(&id),
    };
    let git: Option<Provenance> = l.workflow.provenance.clone();
    let mut task = Task {
        id: id.clone(),
        owner: l.owner.clone(),
        created: secureclaw_engine::record::now_rfc3339(),
        origin: l.origin,
        instruction: None,
        provenance: None,
        workflow: l.workflow.source.to_string(),
        inputs: inputs.clone(),
        workspace_name: l.workspace.clone(),
        workspace: workspace.clone(),
        run_id: None,
        git: git.clone(),
        started_by: l.started_by.clone(),
    };
    let audit = Audit::new(
        kind::TASK_CREATED,
        l.actor.clone(),
        json!({
            "task": id,
            "origin": l.origin,
            "workflow": l.workflow.workflow.name,
            "steps": l.workflow.workflow.steps.len(),
            "started_by": l.started_by,
            "provenance": git,
        }),
    );
    let store = TaskStore::new(state.session.clone());
    let settings = RunSettings {
        // The server never runs steps without isolation.
        forbid_host: true,
        approve: l.approve,
        started_by: l.started_by,
        ..RunSettings::default()
    };
    let run_id = if state.dispatch.is_some() {
        // Queued first: when another replica already queued this start, no task is made.
        let run = queued_run(&task, &l.workflow, settings);
        if !enqueue(state, &run, l.once.as_deref()).await? {
            return Err(ApiError::conflict(
                DUPLICATE_START,
                "another server replica already started this run",
            ));
        }
        task.run_id = Some(run.run_id.clone());
        store.save(&task, vec![audit]).await?;
        run.run_id
    } else {
        // On a store other replicas share, the start is claimed first: when another replica
        // already made it (the same schedule time, the same delivery), no task is made here.
        if let (Some(once), Some(_)) = (&l.once, state.session.node()) {
            let claimed = state
                .session
                .app_create(
                    AppTable::Index,
                    &format!("once/{once}"),
                    id.as_bytes().to_vec(),
                )
                .await?;
            if claimed != id.as_bytes() {
                return Err(ApiError::conflict(
                    DUPLICATE_START,
                    "another server replica already started this run",
                ));
            }
        }
        store.save(&task, vec![audit]).await?;
        let run_id = start_run(state, &task, l.workflow, settings, l.since).await?;
        task.run_id = Some(run_id.clone());
        store.save(&task, Vec::new()).await?;
        run_id
    };
    Ok(Launched {
        stream: format!("/api/v1/tasks/{id}/stream"),
        task_id: id,
        run_id,
    })
}

/// Start `task`'s run: here, or queued for a worker when the server dispatches runs. Returns
/// the run's id either way.
pub async fn start_run(
    state: &AppState,
    task: &Task,
    workflow: Validated,
    settings: RunSettings,
    since: Instant,
) -> ApiResult<String> {
    if let Some(dispatch) = &state.dispatch {
        // Keyed by the task, which runs once: a start whose answer was lost (the replica
        // stopped after queueing the run, before recording it on the task) and is asked again,
        // or the same start asked of two replicas at once, finds the run queued the first time
        // instead of queueing a second.
        let key = task_run_key(&task.id);
        let run = queued_run(task, &workflow, settings);
        if enqueue(state, &run, Some(&key)).await? {
            return Ok(run.run_id);
        }
        let earlier = dispatch
            .queued_under(&key)
            .await
            .map_err(|e| ApiError::internal(format!("reading the run queued before: {e}")))?;
        return earlier.map(|r| r.run_id).ok_or_else(|| {
            ApiError::internal("this task's run was queued before, and its job is gone")
        });
    }
    let handle = state.session.submit(RunRequest {
        workflow,
        inputs: task.inputs.clone(),
        workspace: task.workspace.clone(),
        settings,
        approver: None,
    })?;
    state.metrics.runs_started.fetch_add(1, Ordering::Relaxed);
    watch_step_times(state.metrics.clone(), handle.events(0), Some(since));
    Ok(handle.id().to_string())
}

/// The dedup key of the run a task starts with (a task runs once; a retry or a resume goes to
/// the node that ran it).
fn task_run_key(task: &str) -> String {
    format!("task-run/{task}")
}

/// `task`'s run as queued for a worker, under a new run id.
fn queued_run(
    task: &Task,
    workflow: &Validated,
    settings: RunSettings,
) -> crate::dispatch::QueuedRun {
    crate::dispatch::QueuedRun {
        run_id: secureclaw_engine::record::new_run_id(),
        task_id: task.id.clone(),
        workflow: workflow.source.to_string(),
        inputs: task.inputs.clone(),
        workspace_name: task.workspace_name.clone(),
        settings,
        provenance: workflow.provenance.clone(),
        attempt: 1,
    }
}

/// Queues `run` for a worker; false when `once` was queued before.
async fn enqueue(
    state: &AppState,
    run: &crate::dispatch::QueuedRun,
    once: Option<&str>,
) -> ApiResult<bool> {
    let Some(dispatch) = &state.dispatch else {
        return Ok(false);
    };
    let queued = dispatch
        .enqueue(run, once)
        .await
        .map_err(|e| ApiError::internal(format!("queueing the run for a worker: {e}")))?;
    if queued {
        state.metrics.runs_started.fetch_add(1, Ordering::Relaxed);
    }
    Ok(queued)
}
