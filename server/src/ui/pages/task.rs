//! The page of one task once it ran: its state, the DAG coloured by step states, the steps
//! with their enforcement and egress, the logs so far, the open approval gates, and the
//! ledger. A task that has not run yet shows its plan instead (`new_task::plan_preview`).
//!
//! ```text
//! GET  /ui/tasks/{id}                        the page (server-rendered; task.js follows the run)
//! POST /ui/tasks/{id}/cancel                 ─► cancel_task      ─► 303 back
//! POST /ui/tasks/{id}/retry                  ─► retry_task       ─► 303 back (the same run goes on)
//! POST /ui/tasks/{id}/rerun                  ─► rerun_task       ─► 303 to the new task
//! POST /ui/tasks/{id}/steps/{step}/approve   ─► approve_step     ─► 303 back
//! POST /ui/tasks/{id}/steps/{step}/deny      ─► deny_step        ─► 303 back
//! ```
//!
//! Every handler calls the API's own handler with the viewer's identity, so a page can do
//! exactly what the API lets its viewer do, and another user's task is a 404 page.
//!
//! The logs and step states come from the run's stored events up to a number the page
//! carries (`data-after`); the script's event stream starts right after it, so no line is
//! shown twice or missed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse as _, Redirect};
use axum::routing::{get, post};
use axum::{Json, Router};
use minijinja::{Value, context};
use secureclaw_engine::events::RunEvent;
use secureclaw_engine::record::RunRecord;
use secureclaw_engine::session::Session;
use serde::{Deserialize, Serialize};

use super::new_task::plan_preview;
use super::task_path;
use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::tasks::approvals::{Answer, Gate};
use crate::tasks::routes::{accessible_task, validate_text};
use crate::tasks::scrub::OutputScrubber;
use crate::tasks::views::{TaskView, label};
use crate::ui::dag::{self, DagStep};
use crate::ui::{UiForm, UiResult, Viewer};

/// How long the page waits for the stored events it counts on; a slower store gives a page
/// with fewer lines, which the event stream then completes.
const HISTORY_WAIT: Duration = Duration::from_secs(3);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/tasks/{id}", get(task_page))
        .route("/ui/tasks/{id}/cancel", post(cancel))
        .route("/ui/tasks/{id}/retry", post(retry))
        .route("/ui/tasks/{id}/rerun", post(rerun))
        .route("/ui/tasks/{id}/steps/{step}/approve", post(approve))
        .route("/ui/tasks/{id}/steps/{step}/deny", post(deny))
}

/// Run states after which nothing more happens (the script does not follow these).
pub fn is_final_state(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "interrupted")
}

/// Step states after which a step does nothing more (and its output is all there).
fn is_final_step_state(state: &str) -> bool {
    matches!(
        state,
        "succeeded" | "failed" | "skipped" | "cancelled" | "reverted"
    )
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Which fixed notice to show after a form's redirect (never free text).
    #[serde(default)]
    pub notice: Option<String>,
}

/// The words of a notice a redirect names; unknown names show nothing.
pub fn notice_text(key: Option<&str>) -> Option<&'static str> {
    Some(match key? {
        "approved" => "Approved. The run goes on.",
        "approved-waiting" => "Approved. The run goes on once every other gate has an answer.",
        "denied" => "Denied. The run goes on without the step and what needs it.",
        "denied-waiting" => {
            "Denied. The step and what needs it will be skipped once every other gate has an answer."
        }
        "cancel-sent" => "The run was told to stop.",
        "retried" => "Retrying from the failed step. The steps that succeeded stay done.",
        "not-running" => "The run was not going on; nothing was cancelled.",
        "reverted" => "Reverted. The workspace is back to what it was before.",
        "revert-partial" => {
            "The revert finished, but not everything could be undone: see the revert history below."
        }
        _ => return None,
    })
}

/// One step as the page shows it.
#[derive(Debug, Serialize)]
struct StepRow {
    id: String,
    action: String,
    state: String,
    tier: String,
    rule: String,
    undo: String,
    attempts: u32,
    duration: String,
    exit_code: Option<i32>,
    reason: Option<String>,
    approval: Option<String>,
    enforcement: Option<EnforcementView>,
    egress: Vec<EgressView>,
    log: String,
    /// The log is the step's whole output: it finished (output comes at a step's end).
    complete: bool,
    /// The step wrote to the workspace: it has a diff, and undoing it means something.
    changed: bool,
}

#[derive(Debug, Serialize)]
struct EnforcementView {
    backend: String,
    isolated: bool,
    layers: Vec<LayerView>,
    missing: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LayerView {
    name: String,
    active: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct EgressView {
    method: String,
    host: String,
    port: u64,
    /// `allowed` or `refused`.
    verdict: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct LedgerBadge {
    verified: bool,
    /// `verified (N entries)` or what failed.
    text: String,
}

/// What the stored events say so far: each step's log and latest state, the run's state, and
/// the number of the last event read.
#[derive(Debug, Default)]
struct History {
    last_seq: u64,
    logs: BTreeMap<String, String>,
    step_states: HashMap<String, String>,
    run_state: Option<String>,
}

/// Read the run's stored events up to the last one stored now.
async fn read_history(session: &Session, run: &str, scrub: &OutputScrubber) -> History {
    let mut h = History::default();
    let Ok(last) = session.last_event_seq(run) else {
        return h;
    };
    if last == 0 {
        return h;
    }
    let Ok(mut events) = session.events(run, 0) else {
        return h;
    };
    let deadline = tokio::time::Instant::now() + HISTORY_WAIT;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
        h.last_seq = e.seq;
        apply_event(&mut h, &e.event, scrub);
        if e.seq >= last {
            break;
        }
    }
    h
}

fn apply_event(h: &mut History, event: &RunEvent, scrub: &OutputScrubber) {
    match event {
        // A step's `output` stream repeats its stdout (or, for a failed request, the body its
        // reason describes): the log is stdout and stderr, as the script follows it.
        RunEvent::Output { stream, .. } if stream == "output" => {}
        RunEvent::Output { step, text, .. } => {
            h.logs
                .entry(step.clone())
                .or_default()
                .push_str(&scrub.text(text));
        }
        RunEvent::StepStarted { step, .. } => {
            h.step_states.insert(step.clone(), "running".into());
        }
        RunEvent::StepFinished { step, state, .. } => {
            h.step_states.insert(step.clone(), label(state));
        }
        RunEvent::ApprovalNeeded { step, .. } => {
            h.step_states
                .insert(step.clone(), "waiting_approval".into());
        }
        RunEvent::RunResumed { .. } | RunEvent::RunStarted { .. } => {
            h.run_state = Some("running".into());
        }
        RunEvent::RunRetried { steps, .. } => {
            h.run_state = Some("running".into());
            for step in steps {
                h.step_states.insert(step.clone(), "pending".into());
            }
        }
        RunEvent::RunParked { .. } => {
            h.run_state = Some("awaiting_approval".into());
        }
        RunEvent::RunFinished { state, .. } => {
            h.run_state = Some(label(state));
        }
        _ => {}
    }
}

/// `1.2 s`, `850 ms`, `3 min 4 s`.
pub fn human_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn enforcement_of(v: &serde_json::Value) -> Option<EnforcementView> {
    let o = v.as_object()?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    Some(EnforcementView {
        backend: o.get("backend").map(text).unwrap_or_default(),
        isolated: o.get("isolated").and_then(|b| b.as_bool()).unwrap_or(false),
        layers: o
            .get("layers")
            .and_then(|l| l.as_array())
            .map(|ls| {
                ls.iter()
                    .map(|l| LayerView {
                        name: l.get("name").map(text).unwrap_or_default(),
                        active: l.get("active").and_then(|b| b.as_bool()).unwrap_or(false),
                        detail: l.get("detail").map(text).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        missing: o
            .get("missing")
            .and_then(|m| m.as_array())
            .map(|m| m.iter().map(text).collect())
            .unwrap_or_default(),
    })
}

fn egress_of(v: &serde_json::Value) -> EgressView {
    let text = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let decision = v.get("decision").cloned().unwrap_or_default();
    let verdict = decision
        .get("verdict")
        .and_then(|x| x.as_str())
        .unwrap_or("refused")
        .to_string();
    let reason = decision.get("reason").map(reason_words).unwrap_or_default();
    EgressView {
        method: text("method"),
        host: text("host"),
        port: v.get("port").and_then(|p| p.as_u64()).unwrap_or(0),
        verdict,
        reason,
    }
}

/// A refusal reason in words: `{"kind": "not_allowed", "host": "x"}` → `not allowed (host x)`.
fn reason_words(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.replace('_', " "),
        serde_json::Value::Object(o) => {
            let kind = o
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("refused")
                .replace('_', " ");
            let details: Vec<String> = o
                .iter()
                .filter(|(k, _)| k.as_str() != "kind")
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k} {s}"),
                    other => format!("{k} {other}"),
                })
                .collect();
            if details.is_empty() {
                kind
            } else {
                format!("{kind} ({})", details.join(", "))
            }
        }
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The rows of the step table, in the plan's order, with what the run and its events say.
fn step_rows(
    view: &TaskView,
    record: Option<&RunRecord>,
    history: &mut History,
    scrub: &OutputScrubber,
) -> Vec<StepRow> {
    let statuses: HashMap<&str, _> = view
        .run
        .iter()
        .flat_map(|r| r.steps.iter())
        .map(|s| (s.id.as_str(), s))
        .collect();
    let records: HashMap<&str, _> = record
        .iter()
        .flat_map(|r| r.steps.iter())
        .map(|s| (s.id.as_str(), s))
        .collect();
    view.plan
        .iter()
        .map(|p| {
            let status = statuses.get(p.id.as_str());
            let rec = records.get(p.id.as_str());
            // The record and the stored events are saved apart, so either may be ahead: a
            // step the record calls finished is shown with the record's full output, and the
            // script ignores its output events (`data-complete`); otherwise the events say
            // how far it got.
            let recorded_final = status.is_some_and(|s| is_final_step_state(&s.state));
            let from_events = history.logs.remove(&p.id).unwrap_or_default();
            let (state, log) = match status {
                Some(s) if recorded_final => (s.state.clone(), format!("{}{}", s.stdout, s.stderr)),
                _ => (
                    history
                        .step_states
                        .get(&p.id)
                        .cloned()
                        .or_else(|| status.map(|s| s.state.clone()))
                        .unwrap_or_else(|| "pending".into()),
                    from_events,
                ),
            };
            let complete = is_final_step_state(&state);
            StepRow {
                id: p.id.clone(),
                action: p.action.clone(),
                state,
                tier: p.tier.clone(),
                rule: p.rule.clone(),
                undo: p.undo.clone(),
                attempts: status.map(|s| s.attempts).unwrap_or(0),
                duration: status
                    .and_then(|s| s.duration_ms)
                    .map(human_duration)
                    .unwrap_or_default(),
                exit_code: status.and_then(|s| s.exit_code),
                reason: status.and_then(|s| s.reason.clone()),
                approval: status.and_then(|s| s.approval.clone()),
                enforcement: rec
                    .and_then(|r| r.enforcement.as_ref())
                    .and_then(|e| serde_json::to_value(e).ok())
                    .and_then(|e| enforcement_of(&e)),
                egress: rec
                    .map(|r| {
                        r.egress
                            .iter()
                            .filter_map(|e| serde_json::to_value(e).ok())
                            .map(|e| egress_of(&e))
                            .map(|mut e| {
                                e.reason = scrub.text(&e.reason);
                                e
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                complete,
                log,
                changed: rec
                    .and_then(|r| r.changes.as_ref())
                    .is_some_and(|c| !c.is_empty()),
            }
        })
        .collect()
}

/// The ledger chain checked in place; slow on a long ledger, so off the async threads.
async fn ledger_badge(session: &Session) -> LedgerBadge {
    let session = session.clone();
    match tokio::task::spawn_blocking(move || session.ledger_verify()).await {
        Ok(Ok(report)) => LedgerBadge {
            verified: true,
            text: format!("verified ({} entries)", report.entries),
        },
        Ok(Err(e)) => LedgerBadge {
            verified: false,
            text: format!("not verified: {e}"),
        },
        Err(e) => LedgerBadge {
            verified: false,
            text: format!("not verified: the check did not finish ({e})"),
        },
    }
}

async fn task_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> UiResult {
    let Json(view) =
        crate::tasks::routes::get_task(State(state.clone()), viewer.who.clone(), Path(id.clone()))
            .await?;
    let task = accessible_task(&state, &viewer.who, &id)?;
    let Some(run_id) = task.run_id.clone() else {
        return plan_preview(&state, &viewer, task).await;
    };
    let validated = validate_text(&task.workflow).map_err(|d| {
        ApiError::internal(format!(
            "the task's stored workflow no longer validates: {d}"
        ))
    })?;
    let scrub = OutputScrubber::new(state.config.pii_scrub)?;
    // The task view was read before the events: whatever it calls finished stays finished, and
    // for the rest the events are the newer word. The record (enforcement, egress) is read last.
    let mut history = read_history(&state.session, &run_id, &scrub).await;
    // The stored id is exact: one record, not a resolution against every run.
    let record = state.session.run_record(&run_id).ok().flatten();
    // A final state in the record is the last word, unless the run goes on again here (a
    // retry, whose record and events may not be stored yet); before that the events are the
    // newer.
    let live = state.session.is_live(&run_id);
    let run_state = if is_final_state(&view.state) && !live {
        view.state.clone()
    } else {
        let said = history
            .run_state
            .clone()
            .unwrap_or_else(|| view.state.clone());
        // Only a failure can be stale this way: a retry continues a failed run. Any other
        // final state of a run still live here is its real end, a moment before it leaves.
        if live && said == "failed" {
            "running".to_string()
        } else {
            said
        }
    };
    let steps = step_rows(&view, record.as_ref(), &mut history, &scrub);

    let states: HashMap<&str, &str> = steps
        .iter()
        .map(|s| (s.id.as_str(), s.state.as_str()))
        .collect();
    let dag_steps: Vec<DagStep> = dag::steps_of(&validated)
        .into_iter()
        .map(|mut s| {
            s.state = states.get(s.id.as_str()).map(|x| x.to_string());
            s
        })
        .collect();
    let dag = dag::layout(&dag_steps);

    let gates: Vec<Gate> = if run_state == "awaiting_approval" {
        let Json(a) = crate::tasks::approvals::list_approvals(
            State(state.clone()),
            viewer.who.clone(),
            Path(id.clone()),
        )
        .await?;
        a.gates
    } else {
        Vec::new()
    };
    let ledger = ledger_badge(&state.session).await;
    let run = view.run.as_ref();
    let started_by = view
        .started_by
        .clone()
        .or_else(|| record.as_ref().and_then(|r| r.started_by.clone()))
        .unwrap_or_else(|| {
            if view.owner == viewer.who.user_id {
                format!("user:{}", viewer.who.username)
            } else {
                format!("the user with id {}", view.owner)
            }
        });
    let title = if view.name.is_empty() {
        "Task".to_string()
    } else {
        format!("Task {}", view.name)
    };
    viewer.page(
        &state,
        "task.html",
        &title,
        context! {
            task => context! {
                id => view.id,
                name => view.name,
                instruction => view.instruction,
                created => view.created,
                started_by => started_by,
                workspace => view.workspace,
                origin => label(&view.origin),
                // Secret inputs are already `[secret:NAME]` in the API's view.
                inputs => view.inputs.iter().map(|(k, v)| {
                    let shown = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), shown)
                }).collect::<Vec<_>>(),
            },
            run => context! {
                id => run_id,
                state => run_state,
                is_final => is_final_state(&run_state),
                may_cancel => matches!(run_state.as_str(), "running" | "awaiting_approval"),
                may_retry => run_state == "failed",
                may_rerun => matches!(run_state.as_str(), "failed" | "cancelled" | "interrupted"),
                started_at => run.map(|r| r.started_at.clone()),
                finished_at => run.and_then(|r| r.finished_at.clone()),
                message => run.and_then(|r| r.message.clone()),
                backend => run.map(|r| r.backend.clone()),
                reverts => run.map(|r| r.reverts.clone()).unwrap_or_default(),
                last_seq => history.last_seq,
            },
            steps => steps,
            dag => Value::from_serialize(&dag),
            gates => gates,
            ledger => ledger,
            notice => notice_text(q.notice.as_deref()),
            stream => format!("/api/v1/tasks/{id}/stream"),
        },
    )
}

// ---- actions ------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    pub csrf: String,
}

#[derive(Debug, Deserialize)]
pub struct AnswerForm {
    pub csrf: String,
    /// The hash of the gate exactly as the card showed it: approving binds to that.
    pub request_hash: String,
    #[serde(default)]
    pub reason: Option<String>,
}

fn back_to(id: &str, notice: &str) -> axum::response::Response {
    Redirect::to(&format!("{}?notice={notice}", task_path(id))).into_response()
}

async fn cancel(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<CsrfOnly>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let Json(c) = crate::tasks::routes::cancel_task(
        State(state.clone()),
        viewer.who.clone(),
        Path(id.clone()),
    )
    .await?;
    let notice = if c.cancelled {
        "cancel-sent"
    } else {
        "not-running"
    };
    Ok(back_to(&id, notice))
}

#[derive(Debug, Deserialize)]
pub struct RetryForm {
    pub csrf: String,
    /// A checked box: go on even though the workspace changed since the failure.
    #[serde(default)]
    pub force: Option<String>,
}

/// Continue the failed run from its failed step, on this same page: the run goes on live.
async fn retry(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<RetryForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let force = form.force.is_some_and(|v| !v.is_empty());
    crate::tasks::routes::retry_task(
        State(state.clone()),
        viewer.who.clone(),
        Path(id.clone()),
        crate::extract::JsonOrDefault(crate::tasks::routes::RetryTask { force }),
    )
    .await?;
    Ok(back_to(&id, "retried"))
}

/// Run the workflow again as a new task (the same inputs and workspace), from the first step.
async fn rerun(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<CsrfOnly>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let (_, Json(launched)) = crate::sources::routes::rerun_task(
        State(state.clone()),
        viewer.who.clone(),
        Path(id.clone()),
    )
    .await?;
    Ok(Redirect::to(&task_path(&launched.task_id)).into_response())
}

/// The notice after an answer: whether the run went on or other gates are still open.
fn answered_notice(approved: bool, resumed: bool) -> &'static str {
    match (approved, resumed) {
        (true, true) => "approved",
        (true, false) => "approved-waiting",
        (false, true) => "denied",
        (false, false) => "denied-waiting",
    }
}

async fn answer(
    state: AppState,
    viewer: Viewer,
    id: String,
    step: String,
    form: AnswerForm,
    approved: bool,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let answer = Answer {
        request_hash: form.request_hash,
        reason: form.reason.filter(|r| !r.trim().is_empty()),
    };
    let path = Path((id.clone(), step));
    if approved {
        let Json(answered) = crate::tasks::approvals::approve_step(
            State(state.clone()),
            viewer.who.clone(),
            path,
            JsonBody(answer),
        )
        .await?;
        Ok(back_to(&id, answered_notice(true, answered.resumed)))
    } else {
        let Json(answered) = crate::tasks::approvals::deny_step(
            State(state.clone()),
            viewer.who.clone(),
            path,
            JsonBody(answer),
        )
        .await?;
        Ok(back_to(&id, answered_notice(false, answered.resumed)))
    }
}

async fn approve(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((id, step)): Path<(String, String)>,
    UiForm(form): UiForm<AnswerForm>,
) -> UiResult {
    answer(state, viewer, id, step, form, true).await
}

async fn deny(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((id, step)): Path<(String, String)>,
    UiForm(form): UiForm<AnswerForm>,
) -> UiResult {
    answer(state, viewer, id, step, form, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(1250), "1.2 s");
        assert_eq!(human_duration(184_000), "3 min 4 s");
    }

    #[test]
    fn only_known_notices_are_shown() {
        assert!(notice_text(Some("approved")).is_some());
        assert!(notice_text(Some("<script>")).is_none());
        assert!(notice_text(None).is_none());
    }

    #[test]
    fn egress_attempts_say_allowed_or_refused() {
        let e = egress_of(&serde_json::json!({
            "method": "CONNECT", "host": "example.com", "port": 443,
            "decision": {"verdict": "refused", "reason": {"kind": "not_allowed", "host": "example.com"}}
        }));
        assert_eq!(e.verdict, "refused");
        assert_eq!(e.reason, "not allowed (host example.com)");
        assert_eq!(e.port, 443);
    }
}
