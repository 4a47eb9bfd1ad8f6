//! Approval gates of a parked run: list them, approve or deny one, and resume the run once
//! every gate has an answer.
//!
//! An answer names the `request_hash` of the gate as the approver saw it (step, rendered
//! command or request, tier, rule, reason, network). If the gate now differs, the answer is
//! refused (`409 stale_approval`): the approver approved something else.

use axum::Json;
use axum::extract::{Path, State};
use secureclaw_engine::record::StoreError;
use secureclaw_engine::session::SessionError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::model::parse_step_id;
use super::routes::{accessible_task, run_of, watch_step_times};
use super::scrub::OutputScrubber;
use super::views::label;
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;

/// A gate the run waits at.
#[derive(Debug, Serialize, ToSchema)]
pub struct Gate {
    pub step: String,
    pub tier: String,
    pub rule: String,
    pub reason: String,
    /// The rendered action as the approver is shown it: the command, path or request.
    pub summary: String,
    /// Hosts the step may reach.
    pub network: Vec<String>,
    /// Send this back with the answer.
    pub request_hash: String,
    /// `approved` or `denied` once answered; absent while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Approvals {
    /// The run's state; gates exist only while it is `awaiting_approval`.
    pub state: String,
    pub gates: Vec<Gate>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The `request_hash` of the gate being answered.
    pub request_hash: String,
    /// Why (kept in the ledger).
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Answered {
    pub step: String,
    pub approved: bool,
    /// Gates still without an answer.
    pub open: Vec<String>,
    /// True when this answer was the last one and the run went on.
    pub resumed: bool,
}

/// The gates of the task's parked run.
#[utoipa::path(get, path = "/tasks/{id}/approvals", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task id (UUID)")),
    responses(
        (status = 200, description = "the gates", body = Approvals),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the task has not run", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_approvals(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> ApiResult<Json<Approvals>> {
    let task = accessible_task(&state, &who, &id)?;
    let run = run_of(&task)?;
    let scrub = OutputScrubber::new(state.config.pii_scrub)?;
    let gates = match state.session.gates(run) {
        Ok(g) => g,
        Err(SessionError::NotParked {
            state: run_state, ..
        }) => {
            return Ok(Json(Approvals {
                state: run_state,
                gates: Vec::new(),
            }));
        }
        // Started so recently that the engine has no record of it yet.
        Err(SessionError::Store(StoreError::NotFound(_))) if state.session.is_live(run) => {
            return Ok(Json(Approvals {
                state: "running".into(),
                gates: Vec::new(),
            }));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Json(Approvals {
        state: "awaiting_approval".into(),
        gates: gates
            .into_iter()
            .map(|(p, d)| {
                let d = d.filter(|d| d.hash == p.hash);
                Gate {
                    step: p.request.step,
                    tier: label(&p.request.tier),
                    rule: p.request.rule,
                    reason: p.request.reason,
                    summary: scrub.text(&p.request.summary),
                    network: p.request.network,
                    request_hash: p.hash,
                    decision: d
                        .as_ref()
                        .map(|d| if d.approved { "approved" } else { "denied" }.to_string()),
                    decided_by: d.map(|d| d.by),
                }
            })
            .collect(),
    }))
}

/// Approve one gate of the task's parked run.
#[utoipa::path(post, path = "/tasks/{id}/steps/{step}/approve", tag = "tasks", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "task id (UUID)"),
        ("step" = String, Path, description = "step id"),
    ),
    request_body = Answer,
    responses(
        (status = 200, description = "recorded; the run resumes when no gate is open", body = Answered),
        (status = 403, description = "not an approver, or approving one's own run", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`stale_approval`, `not_parked` or `not_waiting`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the decision is recorded, but the run is parked on a worker node (`serve --workers`) none of whose workers took the resume within 30 s (`node_unavailable`), or the worker that took it stopped before answering (`node_lost`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn approve_step(
    State(state): State<AppState>,
    who: Identity,
    Path((id, step)): Path<(String, String)>,
    JsonBody(answer): JsonBody<Answer>,
) -> ApiResult<Json<Answered>> {
    decide(&state, &who, &id, &step, answer, true).await
}

/// Deny one gate of the task's parked run: the step and what needs it are skipped.
#[utoipa::path(post, path = "/tasks/{id}/steps/{step}/deny", tag = "tasks", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "task id (UUID)"),
        ("step" = String, Path, description = "step id"),
    ),
    request_body = Answer,
    responses(
        (status = 200, description = "recorded; the run resumes when no gate is open", body = Answered),
        (status = 403, description = "not an approver, or answering one's own run", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`stale_approval`, `not_parked` or `not_waiting`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the decision is recorded, but the run is parked on a worker node (`serve --workers`) none of whose workers took the resume within 30 s (`node_unavailable`), or the worker that took it stopped before answering (`node_lost`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn deny_step(
    State(state): State<AppState>,
    who: Identity,
    Path((id, step)): Path<(String, String)>,
    JsonBody(answer): JsonBody<Answer>,
) -> ApiResult<Json<Answered>> {
    decide(&state, &who, &id, &step, answer, false).await
}

async fn decide(
    state: &AppState,
    who: &Identity,
    id: &str,
    step: &str,
    answer: Answer,
    approved: bool,
) -> ApiResult<Json<Answered>> {
    let task = accessible_task(state, who, id)?;
    let step = parse_step_id(step)?;
    if let Some(role) = &state.config.approver_role
        && !who.has_role(role)
    {
        return Err(ApiError::forbidden(format!(
            "only members of the `{role}` role may answer approval gates"
        )));
    }
    if state.config.no_self_approval && who.user_id == task.owner {
        return Err(ApiError::forbidden(
            "this server does not let the owner of a run answer its approval gates",
        )
        .with_hint("ask another approver"));
    }
    let run = run_of(&task)?.to_string();
    let _guard = state.tasks.lock(&task.id).await;
    let gates = state.session.gates(&run).map_err(|e| match e {
        SessionError::Store(StoreError::NotFound(_)) => {
            ApiError::conflict("not_parked", "the run is not waiting for approval")
        }
        e => e.into(),
    })?;
    let Some((gate, _)) = gates.iter().find(|(p, _)| p.request.step == step) else {
        return Err(ApiError::conflict(
            "not_waiting",
            format!(
                "step `{step}` is not waiting for approval (waiting: {})",
                gates
                    .iter()
                    .map(|(p, _)| p.request.step.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if gate.hash != answer.request_hash {
        return Err(ApiError::conflict(
            "stale_approval",
            "the gate is not the one answered: its request hash differs",
        )
        .with_hint("GET the approvals again and answer what they show now"));
    }
    let by = who.actor();
    if approved {
        state.session.approve(&run, Some(&step), &by).await?;
    } else {
        state
            .session
            .deny(&run, &step, &by, answer.reason.clone())
            .await?;
    }
    let open: Vec<String> = state
        .session
        .gates(&run)?
        .into_iter()
        .filter(|(p, d)| d.as_ref().is_none_or(|d| d.hash != p.hash))
        .map(|(p, _)| p.request.step)
        .collect();
    let resumed = open.is_empty();
    if resumed
        && let (Some(dispatch), Some(node)) =
            (&state.dispatch, crate::dispatch::elsewhere(state, &run)?)
    {
        // Parked on a worker: it goes on there, where its workspace is.
        let cont = crate::dispatch::RoutedContinue {
            run_id: run.clone(),
            retry: false,
            force: false,
        };
        let sent = dispatch
            .continue_on(&node, &cont, crate::dispatch::ROUTED_WAIT)
            .await;
        crate::dispatch::routed_answer(sent, &node, &run, "resume")?;
        state
            .metrics
            .runs_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else if resumed {
        let after = state.session.last_event_seq(&run)?;
        let handle = state.session.resume(&run, false, None)?;
        state
            .metrics
            .runs_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        watch_step_times(state.metrics.clone(), handle.events(after), None);
    }
    Ok(Json(Answered {
        step,
        approved,
        open,
        resumed,
    }))
}
