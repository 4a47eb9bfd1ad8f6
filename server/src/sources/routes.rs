//! Sources and their workflows: register, list, fetch, remove; list every workflow file with
//! its located errors and triggers; run one (at the source's head or an exact commit); run a
//! task again at exactly the commit it ran.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secureclaw_engine::record::Provenance;
use secureclaw_engine::schedule::CronSchedule;
use secureclaw_engine::session::{AppBatch, AppTable, Audit};
use secureclaw_engine::validate::validate_bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Scan, SourceRecord, SourceWorkflow, Sources};
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;
use crate::launch::{Launch, Launched, launch};
use crate::tasks::model::Origin;
use crate::tasks::routes::accessible_task;
use crate::tasks::views::{WorkflowError, workflow_errors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sources, register_source))
        .routes(routes!(remove_source))
        .routes(routes!(fetch_source))
        .routes(routes!(list_workflows))
        .routes(routes!(run_workflow))
        .routes(routes!(rerun_task))
}

/// A source to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSource {
    /// Letters, digits, `-` and `_`.
    pub name: String,
    /// An absolute local path (a git repository or a plain directory), or a `file://`,
    /// `https://` or `ssh://` URL.
    pub location: String,
    pub branch: Option<String>,
    /// Only workflow files under this directory of the repository.
    pub dir: Option<String>,
    /// A registered workspace for the runs its triggers start.
    pub workspace: Option<String>,
    /// Allow fetching `https://`/`ssh://` locations (default: no network).
    #[serde(default)]
    pub allow_network: bool,
}

/// A source and its files as of its last fetch.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub name: String,
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    pub allow_network: bool,
    /// `git` or `directory`.
    pub kind: String,
    /// The commit the source reads now (absent for a plain directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// When it was last read (RFC 3339).
    pub fetched: String,
    pub workflows: Vec<WorkflowFile>,
    /// Files found but not read, and why.
    pub skipped: Vec<SkippedFile>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

/// One workflow file of a source.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowFile {
    pub source: String,
    /// Relative to the repository's root.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Git blob id of the file at that commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    pub valid: bool,
    /// The workflow's `name`, when it validates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Located problems (line, column, JSON pointer, message, hint).
    pub errors: Vec<WorkflowError>,
    /// What starts it besides a user (`webhook`, `schedule`, `watch`), from its `on:` block.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub triggers: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceList {
    pub sources: Vec<SourceView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowFile>,
    /// Sources that could not be read, and why.
    pub unavailable: Vec<SkippedFile>,
}

/// A workflow of a source to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunWorkflow {
    pub source: String,
    /// The file's path in the source (as `GET /workflows` lists it).
    pub path: String,
    /// Run it at exactly this commit instead of the source's head.
    pub commit: Option<String>,
    /// Input values by name; strings are parsed to the declared type.
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<BTreeMap<String, Value>>,
    /// A registered workspace (default: the source's; else the task's own directory).
    pub workspace: Option<String>,
    /// Fetch the source before reading it (default: use the last fetch).
    #[serde(default)]
    pub fetch: bool,
}

fn require_admin(who: &Identity) -> ApiResult<()> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only an admin manages workflow sources",
        ))
    }
}

fn check_name(name: &str) -> ApiResult<()> {
    crate::workspaces::check_label(name, "invalid_source", "a source")
}

/// Credentials in a URL would be stored and shown with the source.
fn check_no_credentials(location: &str) -> ApiResult<()> {
    if let Some((_, rest)) = location.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err(ApiError::bad_request(
                "invalid_source",
                "the URL holds a password",
            )
            .with_hint("leave credentials out of the URL: the server uses its ssh agent and git credential helpers"));
        }
    }
    Ok(())
}

pub fn triggers_summary(v: &secureclaw_engine::validate::Validated) -> Option<Value> {
    let on = &v.workflow.on;
    if on.is_empty() {
        return None;
    }
    let schedule = on.schedule.as_ref().map(|s| {
        let full = s.full();
        let next = CronSchedule::parse(&full)
            .ok()
            .and_then(|c| c.next_after(chrono::Utc::now()))
            .map(|t| t.to_rfc3339());
        json!({"cron": full.cron, "timezone": full.timezone.unwrap_or_else(|| "UTC".into()), "missed": full.missed, "overlap": full.overlap, "next": next})
    });
    Some(json!({
        "webhook": on.webhook,
        "schedule": schedule,
        "watch": (!on.watch.is_empty()).then_some(&on.watch),
    }))
}

fn file_view(scan: &Scan, w: &SourceWorkflow) -> WorkflowFile {
    let (valid, name, errors, triggers) = match &w.validated {
        Ok(v) => (
            true,
            Some(v.workflow.name.clone()),
            Vec::new(),
            triggers_summary(v),
        ),
        Err(d) => (false, None, workflow_errors(d), None),
    };
    WorkflowFile {
        source: w.source.clone(),
        path: w.path.clone(),
        commit: scan.commit.clone(),
        blob: w.blob.clone(),
        valid,
        name,
        errors,
        triggers,
    }
}

fn source_view(sources: &Sources, scan: &Scan) -> SourceView {
    let rec = &scan.record;
    SourceView {
        name: rec.name.clone(),
        location: rec.location.clone(),
        branch: scan.branch.clone().or_else(|| rec.branch.clone()),
        dir: rec.dir.clone(),
        workspace: rec.workspace.clone(),
        allow_network: rec.allow_network,
        kind: if sources.open(rec).is_ok_and(|s| s.is_git()) {
            "git".into()
        } else {
            "directory".into()
        },
        commit: scan.commit.clone(),
        fetched: scan.fetched.clone(),
        workflows: scan.workflows.iter().map(|w| file_view(scan, w)).collect(),
        skipped: scan
            .skipped
            .iter()
            .map(|(path, reason)| SkippedFile {
                path: path.clone(),
                reason: reason.clone(),
            })
            .collect(),
    }
}

/// Every registered source with its files as of its last fetch.
#[utoipa::path(get, path = "/sources", tag = "workflows", security(("bearer" = [])),
    responses(
        (status = 200, description = "the sources", body = SourceList),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_sources(
    State(state): State<AppState>,
    _who: Identity,
) -> ApiResult<Json<SourceList>> {
    let mut sources = Vec::new();
    for rec in state.sources.records(&state)?.into_values() {
        if let Ok(scan) = state.sources.current(&rec).await {
            sources.push(source_view(&state.sources, &scan));
        }
    }
    Ok(Json(SourceList { sources }))
}

/// Register (or replace) a workflow source; it is read at once, and every workflow file is
/// validated.
#[utoipa::path(post, path = "/sources", tag = "workflows", security(("bearer" = [])),
    request_body = NewSource,
    responses(
        (status = 201, description = "registered and read", body = SourceView),
        (status = 400, description = "bad name, location, branch, directory or workspace; network not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "the repository could not be read", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register_source(
    State(state): State<AppState>,
    who: Identity,
    JsonBody(new): JsonBody<NewSource>,
) -> ApiResult<(StatusCode, Json<SourceView>)> {
    require_admin(&who)?;
    check_name(&new.name)?;
    check_no_credentials(&new.location)?;
    if let Some(ws) = &new.workspace
        && state.workspace(ws).is_none()
    {
        return Err(ApiError::bad_request(
            "unknown_workspace",
            format!("no workspace named `{ws}` is registered"),
        ));
    }
    let location = new.location.trim().to_string();
    if !location.contains("://") && !location.contains('@') {
        let p = std::path::Path::new(&location);
        let data = std::fs::canonicalize(&state.config.data_dir)
            .unwrap_or_else(|_| state.config.data_dir.clone());
        if let Ok(real) = std::fs::canonicalize(p)
            && (real.starts_with(&data) || data.starts_with(&real))
        {
            return Err(ApiError::bad_request(
                "invalid_source",
                "a source may neither lie inside the server's data dir nor contain it",
            ));
        }
    }
    let rec = SourceRecord {
        name: new.name.clone(),
        location,
        branch: new.branch.filter(|b| !b.is_empty()),
        dir: new.dir.filter(|d| !d.is_empty()),
        workspace: new.workspace,
        allow_network: new.allow_network,
        owner: who.user_id.clone(),
        created: secureclaw_engine::record::now_rfc3339(),
    };
    // Refuse what cannot be read before it is stored.
    state.sources.open(&rec).map_err(|e| {
        if e.code == "source_unavailable" {
            ApiError::bad_request("invalid_source", e.detail.clone().unwrap_or_default())
        } else {
            e
        }
    })?;
    let scan = state.sources.scan(&rec, true).await?;
    let mut batch = AppBatch::default();
    batch.put_json(AppTable::Settings, Sources::row_key(&rec.name), &rec)?;
    batch.audit(Audit::new(
        "source_registered",
        who.actor(),
        json!({"name": rec.name, "location": rec.location, "branch": rec.branch, "dir": rec.dir, "commit": scan.commit, "workspace": rec.workspace, "allow_network": rec.allow_network}),
    ));
    state.session.app_commit(batch).await?;
    // The scan told the listeners before the record was stored: tell them again now that
    // the source is there to be read.
    state.sources.notify();
    Ok((
        StatusCode::CREATED,
        Json(source_view(&state.sources, &scan)),
    ))
}

/// Forget a source. Its tasks stay; its triggers stop.
#[utoipa::path(delete, path = "/sources/{name}", tag = "workflows", security(("bearer" = [])),
    params(("name" = String, Path, description = "source name")),
    responses(
        (status = 204, description = "removed"),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such source", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove_source(
    State(state): State<AppState>,
    who: Identity,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&who)?;
    let rec = state.sources.record(&state, &name)?;
    let mut batch = AppBatch::default();
    batch.delete(AppTable::Settings, Sources::row_key(&rec.name));
    batch.audit(Audit::new(
        "source_removed",
        who.actor(),
        json!({"name": rec.name}),
    ));
    state.session.app_commit(batch).await?;
    state.sources.forget(&rec.name);
    Ok(StatusCode::NO_CONTENT)
}

/// Fetch a source now and validate its files again.
#[utoipa::path(post, path = "/sources/{name}/fetch", tag = "workflows", security(("bearer" = [])),
    params(("name" = String, Path, description = "source name")),
    responses(
        (status = 200, description = "fetched and read", body = SourceView),
        (status = 404, description = "no such source", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "the repository could not be read", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn fetch_source(
    State(state): State<AppState>,
    _who: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<SourceView>> {
    let rec = state.sources.record(&state, &name)?;
    let scan = state.sources.scan(&rec, true).await?;
    Ok(Json(source_view(&state.sources, &scan)))
}

/// Every workflow file of every source, with its validation status and located errors.
#[utoipa::path(get, path = "/workflows", tag = "workflows", security(("bearer" = [])),
    responses(
        (status = 200, description = "the files", body = WorkflowList),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_workflows(
    State(state): State<AppState>,
    _who: Identity,
) -> ApiResult<Json<WorkflowList>> {
    let mut workflows = Vec::new();
    let mut unavailable = Vec::new();
    for rec in state.sources.records(&state)?.into_values() {
        match state.sources.current(&rec).await {
            Ok(scan) => workflows.extend(scan.workflows.iter().map(|w| file_view(&scan, w))),
            Err(e) => unavailable.push(SkippedFile {
                path: rec.name.clone(),
                reason: e.detail.clone().unwrap_or_default(),
            }),
        }
    }
    Ok(Json(WorkflowList {
        workflows,
        unavailable,
    }))
}

/// Run a workflow of a source as a task of the caller: at the source's head, or at exactly
/// `commit`. The run records the repository, commit, path and blob.
#[utoipa::path(post, path = "/workflows/run", tag = "workflows", security(("bearer" = [])),
    request_body = RunWorkflow,
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key and body give the same run")),
    responses(
        (status = 202, description = "the run started", body = Launched),
        (status = 400, description = "the workflow does not validate, or bad inputs", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such source or file", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a request with the same `Idempotency-Key` is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`Idempotency-Key` reused with another request", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "the repository could not be read", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn run_workflow(
    State(state): State<AppState>,
    who: Identity,
    JsonBody(req): JsonBody<RunWorkflow>,
) -> ApiResult<(StatusCode, Json<Launched>)> {
    let since = Instant::now();
    let resolved = match &req.commit {
        Some(commit) => {
            state
                .sources
                .resolve_at(&state, &req.source, commit, &req.path, None)
                .await?
        }
        None => {
            state
                .sources
                .resolve(&state, &req.source, &req.path, req.fetch)
                .await?
        }
    };
    let launched = launch(
        &state,
        Launch {
            owner: who.user_id.clone(),
            actor: who.actor(),
            origin: Origin::Source,
            started_by: Some(who.actor()),
            workflow: resolved.validated,
            inputs: req.inputs.unwrap_or_default(),
            workspace: req.workspace.or(resolved.workspace),
            approve: Vec::new(),
            since,
            once: None,
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(launched)))
}

/// Run a task's workflow again as a new task of the caller, with the same inputs and
/// workspace: a workflow from git at exactly the commit and blob it ran, any other workflow
/// from the text it stored.
#[utoipa::path(post, path = "/tasks/{id}/rerun", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "the same key gives the same run")),
    responses(
        (status = 202, description = "the new run started", body = Launched),
        (status = 404, description = "no such task, or its source is gone", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "the stored workflow or inputs no longer validate, or a malformed `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the file at that commit is not the blob the run recorded, or a request with the same `Idempotency-Key` is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`Idempotency-Key` reused with another request", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "the repository could not be read", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rerun_task(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Launched>)> {
    let since = Instant::now();
    let task = accessible_task(&state, &who, &id)?;
    let workflow = match &task.git {
        Some(Provenance {
            source: Some(source),
            commit,
            path,
            blob,
            ..
        }) => {
            state
                .sources
                .resolve_at(&state, source, commit, path, Some(blob))
                .await?
                .validated
        }
        _ => validate_bytes(std::path::Path::new("(stored)"), task.workflow.as_bytes())
            .map_err(|d| crate::tasks::routes::invalid_workflow(&d))?,
    };
    let origin = if task.git.is_some() {
        Origin::Source
    } else {
        task.origin
    };
    let launched = launch(
        &state,
        Launch {
            owner: who.user_id.clone(),
            actor: who.actor(),
            origin,
            started_by: Some(format!("rerun:{}", task.id)),
            workflow,
            inputs: task.inputs.clone(),
            workspace: task.workspace_name.clone(),
            approve: Vec::new(),
            since,
            once: None,
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(launched)))
}
