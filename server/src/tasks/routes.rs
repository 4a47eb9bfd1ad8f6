//! Tasks: create (from an instruction or a workflow), list, show, run, cancel, diff, revert,
//! ledger export, and workflow validation.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use secureclaw_engine::events::{EventStream, RunEvent};
use secureclaw_engine::planner::{PlanError, Planner};
use secureclaw_engine::record::{RunRecord, RunState};
use secureclaw_engine::session::{
    Audit, RevertOptions, RevertOutcome, RunSettings, Session, SessionError,
};
use secureclaw_engine::tools::vault::kind;
use secureclaw_engine::validate::{Validated, validate_bytes};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::model::{Origin, Task, TaskStore, parse_action_id, parse_step_id};
use super::scrub::OutputScrubber;
use super::views::{
    PlanStep, TaskSummary, TaskView, WorkflowError, plan_steps, task_summary, task_view,
    workflow_errors, workflow_errors_json,
};
use crate::app::AppState;
use crate::auth::Identity;
use crate::dispatch::{ROUTED_WAIT, RoutedContinue, elsewhere, routed_answer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{JsonBody, JsonOrDefault};
use crate::ops::Metrics;

/// Repair rounds the planner may take after an invalid answer.
const PLANNER_REPAIRS: u32 = 2;
/// `GET /tasks` pages at most this many tasks.
const MAX_LIMIT: usize = 200;
const DEFAULT_LIMIT: usize = 50;
/// The name diagnostics give a posted workflow.
const POSTED: &str = "(posted)";

/// A new task: either `instruction` (planned by the LLM planner) or `workflow` (YAML).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// What to do, in plain words; the planner writes the workflow.
    pub instruction: Option<String>,
    /// Tokens the planner may spend over all its rounds (default: the server's).
    pub token_budget: Option<u64>,
    /// Workflow YAML, instead of an instruction.
    pub workflow: Option<String>,
    /// Input values by name; strings are parsed to the declared type.
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<BTreeMap<String, Value>>,
    /// A workspace the server registered (`--workspace NAME=PATH`); without one the task gets
    /// its own empty directory.
    pub workspace: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    pub workflow: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ValidateReply {
    pub valid: bool,
    pub errors: Vec<WorkflowError>,
    pub steps: Vec<PlanStep>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    /// Tasks the caller may see in all.
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    pub task_id: String,
    pub run_id: String,
    /// Follow it at this URL (SSE).
    pub stream: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cancelled {
    pub run_id: String,
    /// True when the run was going on and was told to stop.
    pub cancelled: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryTask {
    /// Go on even though the workspace changed since the run failed.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertTask {
    /// Only say what would be undone.
    #[serde(default)]
    pub dry_run: bool,
    /// Undo even over later changes to the same paths.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertAction {
    /// Also undo the steps that depend on this one.
    #[serde(default)]
    pub cascade: bool,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub force: bool,
}

/// What a revert did (`applied`) or would do (`planned`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevertReply {
    /// `planned` (dry run) or `applied`.
    pub outcome: String,
    /// The revert plan (steps in undo order, actions, drift conflicts) or its report.
    #[schema(value_type = Object)]
    pub detail: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepDiff {
    pub step: String,
    /// Unified diff of what the step changed.
    pub diff: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiffReply {
    pub steps: Vec<StepDiff>,
}

/// A run's ledger entries and the signed head to check them against offline.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerExport {
    /// The signed head (`secureclaw ledger verify-export FILE --head HEAD`).
    #[schema(value_type = Object)]
    pub head: Value,
    /// One signed entry per line.
    pub jsonl: String,
}

/// The task `id` names, if the caller may see it; else `404 not_found`, whether it exists or
/// not.
pub fn accessible_task(state: &AppState, who: &Identity, id: &str) -> ApiResult<Task> {
    let id = super::model::parse_task_id(id)?;
    match TaskStore::new(state.session.clone()).load(&id)? {
        Some(task) if who.may_access(&task.owner) => Ok(task),
        _ => Err(ApiError::not_found("task")),
    }
}

/// The run of a task, or `409 not_started`.
pub fn run_of(task: &Task) -> ApiResult<&str> {
    task.run_id.as_deref().ok_or_else(|| {
        ApiError::conflict("not_started", "the task has not run yet")
            .with_hint(format!("POST /api/v1/tasks/{}/run", task.id))
    })
}

pub(crate) fn validate_text(yaml: &str) -> Result<Validated, secureclaw_engine::diag::Diagnostics> {
    validate_bytes(FsPath::new(POSTED), yaml.as_bytes())
}

pub(crate) fn invalid_workflow(d: &secureclaw_engine::diag::Diagnostics) -> ApiError {
    ApiError::bad_request(
        "invalid_workflow",
        format!("the workflow has {} error(s)", d.len()),
    )
    .with_errors(workflow_errors_json(d))
}

/// A task's stored workflow, validated again (it was valid when stored).
fn stored_workflow(task: &Task) -> ApiResult<Validated> {
    validate_text(&task.workflow).map_err(|d| {
        ApiError::internal(format!(
            "the task's stored workflow no longer validates: {d}"
        ))
    })
}

/// The task's run record; `None` before it runs, and for a run so new the engine has not
/// stored its record yet.
fn run_record(session: &Session, task: &Task) -> ApiResult<Option<RunRecord>> {
    use secureclaw_engine::record::StoreError;
    let Some(run) = &task.run_id else {
        return Ok(None);
    };
    // The stored id is exact: read that one record rather than resolving a prefix against
    // every run (a listing asks this once a row).
    match session.run_record(run)? {
        // A failed run retried here goes on under its stored record, which says `failed` until
        // the engine saves it again: while it is live, it is running.
        Some(mut r) if r.state == RunState::Failed && session.is_live(run) => {
            r.state = RunState::Running;
            Ok(Some(r))
        }
        Some(r) => Ok(Some(r)),
        None if session.is_live(run) => Ok(None),
        // On a shared store the run may wait in the queue, or be starting on another node.
        None if session.node().is_some() => Ok(None),
        None => Err(SessionError::Store(StoreError::NotFound(run.clone())).into()),
    }
}

// ---- create ------------------------------------------------------------------------

/// Create a task from an instruction (planned) or a workflow (validated).
#[utoipa::path(post, path = "/tasks", tag = "tasks", request_body = CreateTask,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the task, planned", body = TaskView),
        (status = 400, description = "invalid workflow or inputs, or a prompt injection", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a request with the same `Idempotency-Key` is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`Idempotency-Key` reused with another request", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "the planner failed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_task(
    State(state): State<AppState>,
    who: Identity,
    JsonBody(req): JsonBody<CreateTask>,
) -> ApiResult<impl IntoResponse> {
    let id = TaskStore::new_id();
    let (origin, validated, provenance) = match (&req.instruction, &req.workflow) {
        (Some(instruction), None) => {
            let budget = req
                .token_budget
                .unwrap_or(state.config.default_token_budget);
            let plan = plan_instruction(instruction, budget).await?;
            state.session.record_plan(&plan, None).await?;
            (
                Origin::Instruction,
                plan.validated.clone(),
                Some(plan.provenance()),
            )
        }
        (None, Some(yaml)) => {
            let v = validate_text(yaml).map_err(|d| invalid_workflow(&d))?;
            (Origin::Workflow, v, None)
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give exactly one of `instruction` and `workflow`",
            ));
        }
    };
    let inputs = resolve_inputs(&validated, req.inputs.as_ref())?;
    let (workspace_name, workspace) = match &req.workspace {
        Some(name) => match state.workspace(name) {
            Some(path) => (Some(name.clone()), path),
            None => {
                return Err(ApiError::bad_request(
                    "unknown_workspace",
                    format!("no workspace named `{name}` is registered"),
                )
                .with_hint(format!(
                    "registered: {}",
                    state.workspace_names().join(", ")
                )));
            }
        },
        None => (None, state.config.workspaces_dir().join(&id)),
    };
    let task = Task {
        id: id.clone(),
        owner: who.user_id.clone(),
        created: secureclaw_engine::record::now_rfc3339(),
        origin,
        instruction: req.instruction.clone(),
        provenance,
        workflow: validated.source.to_string(),
        inputs,
        workspace_name,
        workspace,
        run_id: None,
        git: None,
        started_by: None,
    };
    let audit = Audit::new(
        kind::TASK_CREATED,
        who.actor(),
        json!({
            "task": id,
            "origin": origin,
            "workflow": validated.workflow.name,
            "steps": validated.workflow.steps.len(),
        }),
    );
    TaskStore::new(state.session.clone())
        .save(&task, vec![audit])
        .await?;
    let scrub = OutputScrubber::new(state.config.pii_scrub)?;
    Ok((
        StatusCode::CREATED,
        Json(task_view(&task, Some(&validated), None, &scrub)),
    ))
}

async fn plan_instruction(
    instruction: &str,
    budget: u64,
) -> ApiResult<secureclaw_engine::planner::Plan> {
    let (planner, _semantic) = Planner::from_env()
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "planner_failed", e.to_string()))?;
    let planner = planner.with_token_budget(budget);
    planner
        .plan(instruction, PLANNER_REPAIRS)
        .await
        .map_err(|e| match &e {
            PlanError::Injection { .. } => {
                ApiError::bad_request("prompt_injection", e.to_string())
                    .with_hint("rephrase the instruction as a plain task; nothing was sent to a provider")
            }
            PlanError::EmptyInstruction => ApiError::bad_request("invalid_request", e.to_string()),
            PlanError::Llm { .. } if e.is_budget_exhausted() => {
                ApiError::bad_request("token_budget_exhausted", e.to_string())
                    .with_hint("give a larger `token_budget` (the default is the server's)")
            }
            PlanError::Llm { source, .. } => {
                let err = ApiError::new(StatusCode::BAD_GATEWAY, "planner_failed", e.to_string());
                if source.to_string().contains("no provider") {
                    err.with_hint(
                        "configure a provider on the server: LLM_PROVIDER (claude or openai) and ANTHROPIC_API_KEY or OPENAI_API_KEY",
                    )
                } else {
                    err
                }
            }
            PlanError::Invalid { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "planner_failed", e.to_string())
            }
        })
}

pub(crate) fn resolve_inputs(
    v: &Validated,
    given: Option<&BTreeMap<String, Value>>,
) -> ApiResult<BTreeMap<String, Value>> {
    use secureclaw_engine::inputs::{InputSources, resolve_sources};
    let file = given
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_inputs", e.to_string()))?;
    resolve_sources(
        &v.workflow,
        InputSources {
            file,
            ..Default::default()
        },
    )
    .map_err(|errs| {
        ApiError::bad_request("invalid_inputs", "the inputs do not fit the workflow").with_errors(
            errs.iter()
                .map(|e| json!({"message": e.to_string()}))
                .collect(),
        )
    })
}

// ---- read ----------------------------------------------------------------------------

/// Own tasks, newest first (admins: everyone's).
#[utoipa::path(get, path = "/tasks", tag = "tasks", security(("bearer" = [])),
    params(
        ("limit" = Option<usize>, Query, description = "at most this many (default 50, at most 200)"),
        ("offset" = Option<usize>, Query, description = "skip this many"),
    ),
    responses(
        (status = 200, description = "the tasks", body = TaskList),
        (status = 400, description = "bad paging", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_tasks(
    State(state): State<AppState>,
    who: Identity,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<TaskList>> {
    let number = |name: &str, default: usize| -> ApiResult<usize> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad_request("invalid_request", format!("`{name}` must be a number"))
            }),
        }
    };
    let limit = number("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT);
    let offset = number("offset", 0)?;
    let store = TaskStore::new(state.session.clone());
    let ids = store.ids((!who.admin).then_some(who.user_id.as_str()))?;
    let mut tasks = Vec::new();
    for id in ids.iter().skip(offset).take(limit) {
        let Some(task) = store.load(id)? else {
            continue;
        };
        if !who.may_access(&task.owner) {
            continue;
        }
        let name = validate_text(&task.workflow)
            .map(|v| v.workflow.name)
            .unwrap_or_default();
        let run = run_record(&state.session, &task).ok().flatten();
        tasks.push(task_summary(&task, name, run.as_ref()));
    }
    Ok(Json(TaskList {
        tasks,
        total: ids.len(),
        limit,
        offset,
    }))
}

/// One task: its plan, and its run's steps with states, tiers and scrubbed output.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task id (UUID)")),
    responses(
        (status = 200, description = "the task", body = TaskView),
        (status = 404, description = "no such task (or not yours)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_task(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskView>> {
    let task = accessible_task(&state, &who, &id)?;
    let validated = stored_workflow(&task)?;
    let run = run_record(&state.session, &task)?;
    let scrub = OutputScrubber::new(state.config.pii_scrub)?;
    Ok(Json(task_view(
        &task,
        Some(&validated),
        run.as_ref(),
        &scrub,
    )))
}

// ---- run and cancel ---------------------------------------------------------------------

/// Start the task's run. Gates park it until approved (`GET /tasks/{id}/approvals`).
#[utoipa::path(post, path = "/tasks/{id}/run", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task id (UUID)")),
    responses(
        (status = 202, description = "the run started", body = RunStarted),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "a malformed `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the task already ran (`already_started`), or a request with the same `Idempotency-Key` is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`Idempotency-Key` reused with another request", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn run_task(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let task = accessible_task(&state, &who, &id)?;
    let _guard = state.tasks.lock(&task.id).await;
    // Read again under the lock: another request may have started it meanwhile.
    let mut task = accessible_task(&state, &who, &task.id)?;
    if let Some(run) = &task.run_id {
        return Err(ApiError::conflict(
            "already_started",
            format!("the task already ran (run {run})"),
        ));
    }
    let workflow = stored_workflow(&task)?;
    let started = Instant::now();
    let settings = RunSettings {
        // The server never runs steps without isolation.
        forbid_host: true,
        ..RunSettings::default()
    };
    let run_id = crate::launch::start_run(&state, &task, workflow, settings, started).await?;
    task.run_id = Some(run_id.clone());
    TaskStore::new(state.session.clone())
        .save(&task, Vec::new())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RunStarted {
            stream: format!("/api/v1/tasks/{}/stream", task.id),
            task_id: task.id,
            run_id,
        }),
    ))
}

/// Continue the task's failed run from its failed step, as the same run: the steps that
/// succeeded stay done, the failed step and what did not run because of it run again.
#[utoipa::path(post, path = "/tasks/{id}/retry", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "the same key gives the same answer, and retries once")),
    request_body(content = Option<RetryTask>, description = "optional; `force` goes on over workspace changes"),
    responses(
        (status = 202, description = "the run goes on (same run id); follow it at `stream`", body = RunStarted),
        (status = 400, description = "the run cannot be retried (a failed step kept its changes, or it failed before any step ran), or a malformed `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the run is not failed (`not_failed`), has not run (`not_started`), the workspace changed since it failed (`workspace_drift`), or a request with the same `Idempotency-Key` is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`Idempotency-Key` reused with another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the run ran on a worker node (`serve --workers`) none of whose workers took the retry within 30 s (`node_unavailable`: nothing was started), or the worker that took it stopped before answering (`node_lost`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn retry_task(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
    JsonOrDefault(req): JsonOrDefault<RetryTask>,
) -> ApiResult<impl IntoResponse> {
    let task = accessible_task(&state, &who, &id)?;
    let _guard = state.tasks.lock(&task.id).await;
    let run = run_of(&task)?.to_string();
    if let (Some(dispatch), Some(node)) = (&state.dispatch, elsewhere(&state, &run)?) {
        // The node that ran it holds its workspace: the retry goes on there.
        let cont = RoutedContinue {
            run_id: run.clone(),
            retry: true,
            force: req.force,
        };
        let sent = dispatch.continue_on(&node, &cont, ROUTED_WAIT).await;
        routed_answer(sent, &node, &run, "retry")?;
    } else {
        // Stored events only, as the retry numbers its own after them (it waits for the store).
        state.session.sync().await?;
        let after = state.session.last_event_seq(&run)?;
        let handle = state.session.retry(&run, req.force, None).await?;
        watch_step_times(state.metrics.clone(), handle.events(after), None);
    }
    state
        .metrics
        .runs_started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok((
        StatusCode::ACCEPTED,
        Json(RunStarted {
            stream: format!("/api/v1/tasks/{}/stream", task.id),
            task_id: task.id,
            run_id: run,
        }),
    ))
}

/// Feed the step-time metrics from a run's events (and, for a new run, the time from the
/// request to its first step).
pub fn watch_step_times(metrics: Arc<Metrics>, mut events: EventStream, since: Option<Instant>) {
    tokio::spawn(async move {
        let mut first = since;
        let mut running: std::collections::HashMap<String, Instant> = Default::default();
        while let Some(e) = events.next().await {
            match e.event {
                RunEvent::StepStarted { step, .. } => {
                    if let Some(t) = first.take() {
                        metrics.run_to_first_step.observe(t.elapsed());
                    }
                    running.insert(step, Instant::now());
                }
                RunEvent::StepFinished { step, .. } => {
                    if let Some(t) = running.remove(&step) {
                        metrics.step_seconds.observe(t.elapsed());
                    }
                }
                _ => {}
            }
        }
    });
}

/// Stop the task's run: running steps are killed and rolled back.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task id (UUID)")),
    responses(
        (status = 200, description = "whether a running run was told to stop", body = Cancelled),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the task has not run", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel_task(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> ApiResult<Json<Cancelled>> {
    let task = accessible_task(&state, &who, &id)?;
    let run = run_of(&task)?;
    let cancelled = state.session.cancel(run)?;
    Ok(Json(Cancelled {
        run_id: run.to_string(),
        cancelled,
    }))
}

// ---- diff and revert ------------------------------------------------------------------

/// What the run changed in the workspace, as unified diffs per step.
#[utoipa::path(get, path = "/tasks/{id}/diff", tag = "tasks", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "task id (UUID)"),
        ("step" = Option<String>, Query, description = "only this step"),
    ),
    responses(
        (status = 200, description = "the diffs, in write order", body = DiffReply),
        (status = 400, description = "the run has no such step", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such task, or a malformed step id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the task has not run (`not_started`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn task_diff(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<DiffReply>> {
    let task = accessible_task(&state, &who, &id)?;
    let run = run_of(&task)?;
    let step = q.get("step").map(|s| parse_step_id(s)).transpose()?;
    let (_, changes) = state.session.changes(run, step.as_deref())?;
    let mut steps = Vec::new();
    for (step, set) in changes {
        steps.push(StepDiff {
            diff: state.session.render_diff(&set, false)?,
            step,
        });
    }
    Ok(Json(DiffReply { steps }))
}

/// Undo the task's run (`dry_run`: only say what would be undone).
#[utoipa::path(post, path = "/tasks/{id}/revert", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task id (UUID)")),
    request_body = RevertTask,
    responses(
        (status = 200, description = "the plan or what was undone", body = RevertReply),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the run is going on, or the workspace drifted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the run ran on a worker node (`serve --workers`) none of whose workers took the revert within 30 s (`node_unavailable`: nothing was reverted), or the worker that took it stopped before answering (`node_lost`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revert_task(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
    JsonOrDefault(req): JsonOrDefault<RevertTask>,
) -> ApiResult<Json<RevertReply>> {
    let task = accessible_task(&state, &who, &id)?;
    revert(
        &state,
        &task,
        RevertOptions {
            step: None,
            cascade: false,
            force: req.force,
            dry_run: req.dry_run,
        },
    )
    .await
}

/// Undo one step of a task (`TASK_ID.STEP_ID`), with its dependents when `cascade`.
#[utoipa::path(post, path = "/actions/{action_id}/revert", tag = "tasks", security(("bearer" = [])),
    params(("action_id" = String, Path, description = "`TASK_ID.STEP_ID`, as `GET /tasks/{id}` lists it")),
    request_body = RevertAction,
    responses(
        (status = 200, description = "the plan or what was undone", body = RevertReply),
        (status = 404, description = "no such action", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the run is going on, or the workspace drifted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the run ran on a worker node (`serve --workers`) none of whose workers took the revert within 30 s (`node_unavailable`: nothing was reverted), or the worker that took it stopped before answering (`node_lost`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revert_action(
    State(state): State<AppState>,
    who: Identity,
    Path(action): Path<String>,
    JsonOrDefault(req): JsonOrDefault<RevertAction>,
) -> ApiResult<Json<RevertReply>> {
    let (task_id, step) = parse_action_id(&action)?;
    let task =
        accessible_task(&state, &who, &task_id).map_err(|_| ApiError::not_found("action"))?;
    let run = task
        .run_id
        .as_deref()
        .ok_or_else(|| ApiError::not_found("action"))?;
    if state.session.show(run)?.step(&step).is_none() {
        return Err(ApiError::not_found("action"));
    }
    revert(
        &state,
        &task,
        RevertOptions {
            step: Some(step),
            cascade: req.cascade,
            force: req.force,
            dry_run: req.dry_run,
        },
    )
    .await
}

/// How long a revert waits for a run that is finishing (its last event already streamed, its
/// record being saved) before calling it in progress.
const FINISHING_GRACE: Duration = Duration::from_secs(2);

/// True once `run` is not live here, waiting up to [`FINISHING_GRACE`] for it to end: a client
/// that saw `run_finished` on the stream and reverts at once should not be told the run is
/// still going on.
async fn run_ends_soon(session: &Session, run: &str) -> bool {
    let mut changes = session.live_changes();
    let deadline = tokio::time::Instant::now() + FINISHING_GRACE;
    while session.is_live(run) {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return !session.is_live(run),
        }
    }
    true
}

async fn revert(
    state: &AppState,
    task: &Task,
    opts: RevertOptions,
) -> ApiResult<Json<RevertReply>> {
    let run = run_of(task)?;
    let _guard = state.tasks.lock(&task.id).await;
    if !run_ends_soon(&state.session, run).await {
        return Err(ApiError::conflict(
            "run_in_progress",
            "the run is going on; cancel it or wait for it to end",
        ));
    }
    // Only the node that ran the run holds its workspace and pre-images: a run of a worker
    // is reverted there, whoever asks.
    if let (Some(dispatch), Some(node)) = (&state.dispatch, elsewhere(state, run)?) {
        let routed = crate::dispatch::RoutedRevert::new(run, &opts);
        let sent = dispatch.revert_on(&node, &routed, ROUTED_WAIT).await;
        return routed_answer(sent, &node, run, "revert").map(Json);
    }
    Ok(Json(revert_run(&state.session, run, opts).await?))
}

/// Reverts `run` on this node, whose disk holds its workspace (the replica's own runs, or a
/// worker's through [`crate::dispatch::revert_here`]).
pub(crate) async fn revert_run(
    session: &Session,
    run: &str,
    opts: RevertOptions,
) -> ApiResult<RevertReply> {
    let (outcome, detail) = match session.revert(run, opts).await? {
        RevertOutcome::Planned(p) => ("planned", serde_json::to_value(p)),
        RevertOutcome::Applied(r) => ("applied", serde_json::to_value(r)),
    };
    Ok(RevertReply {
        outcome: outcome.to_string(),
        detail: detail.map_err(|e| ApiError::internal(e.to_string()))?,
    })
}

// ---- ledger ----------------------------------------------------------------------------

/// The run's ledger entries as signed JSONL with the signed head, for offline verification.
#[utoipa::path(get, path = "/tasks/{id}/ledger/export", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task id (UUID)")),
    responses(
        (status = 200, description = "the export", body = LedgerExport),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the task has not run", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ledger_export(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> ApiResult<Json<LedgerExport>> {
    let task = accessible_task(&state, &who, &id)?;
    let run = run_of(&task)?;
    let (bytes, head) = state.session.ledger_export(Some(run))?;
    Ok(Json(LedgerExport {
        head: serde_json::to_value(head).map_err(|e| ApiError::internal(e.to_string()))?,
        jsonl: String::from_utf8(bytes).map_err(|e| ApiError::internal(e.to_string()))?,
    }))
}

// ---- validation --------------------------------------------------------------------------

/// Validate workflow YAML: located errors, or the steps with their tiers.
#[utoipa::path(post, path = "/workflows/validate", tag = "tasks", security(("bearer" = [])),
    request_body = ValidateRequest,
    responses((status = 200, description = "the verdict", body = ValidateReply)))]
pub async fn validate_workflow(
    _who: Identity,
    JsonBody(req): JsonBody<ValidateRequest>,
) -> Json<ValidateReply> {
    Json(match validate_text(&req.workflow) {
        Ok(v) => ValidateReply {
            valid: true,
            errors: Vec::new(),
            steps: plan_steps(&v),
        },
        Err(d) => ValidateReply {
            valid: false,
            errors: workflow_errors(&d),
            steps: Vec::new(),
        },
    })
}
