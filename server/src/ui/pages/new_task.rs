//! The new-task page and the plan preview of a task that has not run yet.
//!
//! ```text
//! /ui/tasks/new ──POST──► create_task (instruction or pasted YAML) ──303──► /ui/tasks/{id}
//! /ui/tasks/{id}/plan  GET: the plan preview; POST: validate an edited YAML, or save it as a
//!                      new task (the shown plan is never changed in place)
//! /ui/tasks/{id}/start POST: approve the plan as a whole ──► run_task ──303──► /ui/tasks/{id}
//! ```
//!
//! Every action calls the API's own handler as the viewer, so the API's checks apply.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use secureclaw_engine::validate::Validated;
use serde::{Deserialize, Serialize};

use super::{NEW_TASK, task_path};
use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::tasks::model::Task;
use crate::tasks::routes::CreateTask;
use crate::tasks::views::{PlanStep, TaskView};
use crate::ui::forms::UiForm;
use crate::ui::{UiError, UiResult, Viewer, dag};

/// Where a pasted workflow is posted.
pub const NEW_TASK_WORKFLOW: &str = "/ui/tasks/new/workflow";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(NEW_TASK, get(new_task_page).post(create_from_instruction))
        .route(NEW_TASK_WORKFLOW, post(create_from_workflow))
        .route("/ui/tasks/{id}/plan", get(plan_page).post(edit_plan))
        .route("/ui/tasks/{id}/start", post(start))
}

/// The address of a task's plan preview (also shown on the task page before it runs).
pub fn plan_path(id: &str) -> String {
    format!("/ui/tasks/{id}/plan")
}

// ---- new task --------------------------------------------------------------------------

/// What the new-task page shows besides its forms. Not `Debug`: an instruction or a workflow
/// may hold a secret, which no log may print.
#[derive(Default, Serialize)]
struct NewTaskForm {
    instruction: String,
    /// The planner's refusal or failure, in its words.
    error: Option<String>,
    hint: Option<String>,
    workflow: String,
    workflow_error: Option<String>,
    workflow_errors: Vec<LocatedError>,
}

/// A workflow of a registered source that can be run from the UI.
#[derive(Debug, Serialize)]
struct RunnableWorkflow {
    source: String,
    path: String,
    name: String,
    href: String,
}

/// Source workflows listed per page of the new-task page.
const WORKFLOWS_PER_PAGE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// 1-based; anything unreadable is the first page.
    #[serde(default)]
    pub page: Option<String>,
}

/// The page number asked for, 1 when absent or not a number.
fn page_number(q: &PageQuery) -> usize {
    q.page
        .as_deref()
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

async fn new_task_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<PageQuery>,
) -> UiResult {
    let page = page_number(&q);
    new_task_form(
        &state,
        &viewer,
        NewTaskForm::default(),
        StatusCode::OK,
        page,
    )
    .await
}

async fn new_task_form(
    state: &AppState,
    viewer: &Viewer,
    form: NewTaskForm,
    status: StatusCode,
    page: usize,
) -> UiResult {
    let (all, sources_error) = runnable_workflows(state, viewer).await;
    let skip = (page - 1).saturating_mul(WORKFLOWS_PER_PAGE);
    let next_page = (all.len() > skip.saturating_add(WORKFLOWS_PER_PAGE)).then_some(page + 1);
    let prev_page = (page > 1).then(|| page - 1);
    let workflows: Vec<RunnableWorkflow> = all
        .into_iter()
        .skip(skip)
        .take(WORKFLOWS_PER_PAGE)
        .collect();
    let mut res = viewer.page(
        state,
        "new_task.html",
        "New task",
        context! {
            form => Value::from_serialize(&form),
            workflows => Value::from_serialize(&workflows),
            sources_error => sources_error,
            next_page => next_page,
            prev_page => prev_page,
        },
    )?;
    *res.status_mut() = status;
    Ok(res)
}

/// The valid workflow files of every registered source, as the API lists them. A source that
/// cannot be read does not keep the page from showing; its reason is shown instead.
async fn runnable_workflows(
    state: &AppState,
    viewer: &Viewer,
) -> (Vec<RunnableWorkflow>, Option<String>) {
    match crate::sources::routes::list_workflows(State(state.clone()), viewer.who.clone()).await {
        Ok(axum::Json(list)) => {
            let runnable = list
                .workflows
                .into_iter()
                .filter(|w| w.valid)
                .map(|w| RunnableWorkflow {
                    href: super::run_workflow::run_path(&w.source, &w.path),
                    name: w.name.unwrap_or_else(|| w.path.clone()),
                    source: w.source,
                    path: w.path,
                })
                .collect();
            let unavailable = (!list.unavailable.is_empty()).then(|| {
                list.unavailable
                    .iter()
                    .map(|s| format!("{}: {}", s.path, s.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            (runnable, unavailable)
        }
        Err(e) => (Vec::new(), e.detail),
    }
}

/// Not `Debug`: the instruction may hold a secret, which no log may print.
#[derive(Deserialize)]
pub struct InstructionForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub instruction: String,
}

async fn create_from_instruction(
    State(state): State<AppState>,
    viewer: Viewer,
    UiForm(form): UiForm<InstructionForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let req = CreateTask {
        instruction: Some(form.instruction.clone()),
        token_budget: None,
        workflow: None,
        inputs: None,
        workspace: None,
    };
    match create(&state, &viewer, req).await {
        Ok(id) => Ok(see_other(&task_path(&id))),
        // Refusals and planner failures are the user's to fix: the form again, text kept.
        Err(e) if e.status.is_client_error() || e.status == StatusCode::BAD_GATEWAY => {
            let status = e.status;
            new_task_form(
                &state,
                &viewer,
                NewTaskForm {
                    instruction: form.instruction,
                    error: Some(e.detail.unwrap_or_else(|| e.code.to_string())),
                    hint: e.hint,
                    ..NewTaskForm::default()
                },
                status,
                1,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// Not `Debug`: the workflow may hold a secret, which no log may print.
#[derive(Deserialize)]
pub struct WorkflowForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub workflow: String,
}

async fn create_from_workflow(
    State(state): State<AppState>,
    viewer: Viewer,
    UiForm(form): UiForm<WorkflowForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let req = CreateTask {
        instruction: None,
        token_budget: None,
        workflow: Some(form.workflow.clone()),
        inputs: None,
        workspace: None,
    };
    match create(&state, &viewer, req).await {
        Ok(id) => Ok(see_other(&task_path(&id))),
        Err(e) if e.status.is_client_error() => {
            let status = e.status;
            new_task_form(
                &state,
                &viewer,
                NewTaskForm {
                    workflow: form.workflow,
                    workflow_error: Some(e.detail.clone().unwrap_or_else(|| e.code.to_string())),
                    workflow_errors: located_errors(&e),
                    ..NewTaskForm::default()
                },
                status,
                1,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// Create a task through the API's handler as the viewer; the new task's id.
async fn create(state: &AppState, viewer: &Viewer, req: CreateTask) -> Result<String, ApiError> {
    let res =
        crate::tasks::routes::create_task(State(state.clone()), viewer.who.clone(), JsonBody(req))
            .await?
            .into_response();
    let view: serde_json::Value = response_json(res).await?;
    view.get("id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| ApiError::internal("the created task has no id"))
}

/// The JSON body of a handler's response (handlers that answer `impl IntoResponse`).
async fn response_json<T: serde::de::DeserializeOwned>(res: Response) -> Result<T, ApiError> {
    // A task view is a workflow and a plan: well under this.
    const LIMIT: usize = 16 * 1024 * 1024;
    let bytes = axum::body::to_bytes(res.into_body(), LIMIT)
        .await
        .map_err(|e| ApiError::internal(format!("reading the API's answer: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(format!("reading the API's answer: {e}")))
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---- located errors --------------------------------------------------------------------

/// A problem of a workflow at a line and column, as the page lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocatedError {
    #[serde(default)]
    pub line: usize,
    #[serde(default)]
    pub column: usize,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub hint: Option<String>,
}

/// The located errors an API problem carries (`invalid_workflow`, `invalid_inputs`).
fn located_errors(e: &ApiError) -> Vec<LocatedError> {
    e.errors
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect()
}

// ---- plan preview ------------------------------------------------------------------------

/// How revert undoes a step, in the words the page uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UndoClass {
    /// Files are put back exactly as they were.
    Exact,
    /// A declared compensating action undoes the outside effect.
    Compensatable,
    /// Nothing revert can do: either nothing to undo, or irreversible.
    None,
}

/// The page's undo class of the API's `undo` label, with a short explanation.
pub fn undo_of(api_undo: &str) -> (UndoClass, &'static str) {
    match api_undo {
        "restore" => (
            UndoClass::Exact,
            "revert puts the files back exactly as they were before the step",
        ),
        "compensate" => (
            UndoClass::Compensatable,
            "revert runs the step's declared compensating action; the outside effect is undone by a new action, not erased",
        ),
        "none" => (UndoClass::None, "nothing to undo: the step only reads"),
        // `pivot`, and anything newer this page does not know: assume the worst.
        _ => (
            UndoClass::None,
            "irreversible: revert cannot undo it and flags it for manual review",
        ),
    }
}

/// One row of the plan table.
#[derive(Debug, Serialize)]
pub(crate) struct PlanRow {
    id: String,
    action: String,
    tier: String,
    tier_label: &'static str,
    destructive: bool,
    rule: String,
    reason: String,
    needs_approval: bool,
    undo: UndoClass,
    undo_why: &'static str,
}

pub(crate) fn plan_rows(steps: &[PlanStep]) -> Vec<PlanRow> {
    steps
        .iter()
        .map(|s| {
            let (undo, undo_why) = undo_of(&s.undo);
            PlanRow {
                id: s.id.clone(),
                action: s.action.clone(),
                tier_label: dag::tier_label(&s.tier),
                destructive: s.tier == "destructive",
                tier: s.tier.clone(),
                rule: s.rule.clone(),
                reason: s.reason.clone(),
                needs_approval: s.needs_approval,
                undo,
                undo_why,
            }
        })
        .collect()
}

/// A secret the plan holds or takes, and where it is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretUse {
    /// `<SECRET_1>` (what the provider saw instead of the value) or `[secret:NAME]` (a
    /// `secret: true` input, hidden in every record).
    pub placeholder: String,
    /// `planner` when the placeholder stood in for a value of the instruction; `input` for a
    /// secret input.
    pub kind: &'static str,
    /// `STEP: /field/pointer` for each place that uses it.
    pub used_in: Vec<String>,
}

/// Where secrets sit in the plan.
///
/// The planner replaced secret-looking values of the instruction by numbered placeholders
/// before it went to the provider (one scrub session, instruction first) and put the values
/// back into the YAML. Scrubbing the instruction and then every string of every step in one
/// session of the same scrubber hands out the same numbers again, so the step fields that
/// carry a replaced value are found without showing the value itself.
pub fn secret_uses(
    v: &Validated,
    instruction: Option<&str>,
    sent_placeholders: &[String],
) -> Vec<SecretUse> {
    let mut out = Vec::new();
    let fields = step_strings(v);
    if let (Some(instruction), Ok(scrubber)) = (
        instruction,
        secureclaw_engine::tools::guard::Scrubber::builtin(),
    ) {
        let mut session = scrubber.session();
        let _ = session.scrub(instruction);
        let mut used: BTreeMap<String, Vec<String>> = sent_placeholders
            .iter()
            .map(|p| (p.clone(), Vec::new()))
            .collect();
        for (place, text) in &fields {
            let scrubbed = session.scrub(text);
            for p in sent_placeholders {
                if scrubbed.contains(p.as_str())
                    && let Some(list) = used.get_mut(p)
                {
                    list.push(place.clone());
                }
            }
        }
        out.extend(used.into_iter().map(|(placeholder, used_in)| SecretUse {
            placeholder,
            kind: "planner",
            used_in,
        }));
    }
    for (name, spec) in &v.workflow.inputs {
        if !spec.secret {
            continue;
        }
        let needle = format!("inputs.{name}");
        let used_in = fields
            .iter()
            .filter(|(_, text)| mentions(text, &needle))
            .map(|(place, _)| place.clone())
            .collect();
        out.push(SecretUse {
            placeholder: format!("[secret:{name}]"),
            kind: "input",
            used_in,
        });
    }
    out
}

/// `needle` occurs in `text` as a whole name (`inputs.token`, not `inputs.token2`).
fn mentions(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(at, _)| {
        text[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// Every string of every step, as (`STEP: /pointer`, text), and the workflow's own `env`.
fn step_strings(v: &Validated) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for step in &v.workflow.steps {
        if let Ok(value) = serde_json::to_value(step) {
            collect_strings(&step.id, "", &value, &mut out);
        }
    }
    for (k, text) in &v.workflow.env {
        out.push((format!("workflow env: {k}"), text.clone()));
    }
    out
}

fn collect_strings(
    step: &str,
    pointer: &str,
    value: &serde_json::Value,
    out: &mut Vec<(String, String)>,
) {
    use serde_json::Value as J;
    match value {
        J::String(s) => out.push((format!("{step}: {pointer}"), s.clone())),
        J::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                collect_strings(step, &format!("{pointer}/{i}"), x, out);
            }
        }
        J::Object(map) => {
            for (k, x) in map {
                // The id names the place already.
                if pointer.is_empty() && k == "id" {
                    continue;
                }
                let k = k.replace('~', "~0").replace('/', "~1");
                collect_strings(step, &format!("{pointer}/{k}"), x, out);
            }
        }
        _ => {}
    }
}

/// An edit of the plan's YAML, shown again with its verdict. Not `Debug`: the YAML may hold
/// a secret.
#[derive(Default, Serialize)]
struct Edit {
    yaml: String,
    checked: bool,
    valid: bool,
    errors: Vec<LocatedError>,
    /// The edited plan's steps with their tiers, when it is valid.
    steps: Vec<PlanRow>,
    /// Why saving it failed (e.g. its inputs), besides located errors.
    problem: Option<String>,
}

/// The page of a task that has not run yet: its plan, to check and approve.
/// (`task::routes` shows this for a task without a run.)
pub async fn plan_preview(state: &AppState, viewer: &Viewer, task: Task) -> UiResult {
    plan_with(state, viewer, task, None).await
}

async fn plan_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> UiResult {
    let task = crate::tasks::routes::accessible_task(&state, &viewer.who, &id)?;
    plan_with(&state, &viewer, task, None).await
}

async fn plan_with(state: &AppState, viewer: &Viewer, task: Task, edit: Option<Edit>) -> UiResult {
    // The API's view of the task: its plan, provenance and inputs with secrets masked, checked
    // against the viewer exactly as `GET /api/v1/tasks/{id}` does.
    let axum::Json(view): axum::Json<TaskView> = crate::tasks::routes::get_task(
        State(state.clone()),
        viewer.who.clone(),
        Path(task.id.clone()),
    )
    .await?;
    let validated = crate::tasks::routes::validate_text(&task.workflow).map_err(|d| {
        ApiError::internal(format!(
            "the task's stored workflow no longer validates: {d}"
        ))
    })?;
    let dag_view = dag::layout(&dag::steps_of(&validated));
    let rows = plan_rows(&view.plan);
    let provenance = view.provenance.as_ref();
    let text_of = |key: &str| {
        provenance
            .and_then(|p| p.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let sent: Vec<String> = provenance
        .and_then(|p| p.get("placeholders"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let secrets = secret_uses(&validated, task.instruction.as_deref(), &sent);
    let approvals = rows.iter().filter(|r| r.needs_approval).count();
    let started = task.run_id.is_some();
    let inputs: Vec<(String, String)> = view
        .inputs
        .iter()
        .map(|(k, v)| {
            let shown = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), shown)
        })
        .collect();
    let status = match &edit {
        Some(e) if e.checked && !e.valid => StatusCode::BAD_REQUEST,
        Some(e) if e.problem.is_some() => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    let edit = edit.unwrap_or_else(|| Edit {
        yaml: task.workflow.clone(),
        ..Edit::default()
    });
    let title = if view.name.is_empty() {
        "Plan".to_string()
    } else {
        format!("Plan: {}", view.name)
    };
    let mut res = viewer.page(
        state,
        "task_plan.html",
        &title,
        context! {
            task => context! {
                id => view.id,
                name => view.name,
                description => validated.workflow.description.clone(),
                created => view.created,
                origin => view.origin,
                instruction => view.instruction,
                started_by => view.started_by,
                workspace => view.workspace,
            },
            provider => text_of("provider"),
            model => text_of("model"),
            rounds => provenance.and_then(|p| p.get("rounds")).and_then(|v| v.as_u64()),
            git => view.git.as_ref().map(|g| {
                let commit: String = g.commit.chars().take(12).collect();
                format!("{}:{} @ {commit}", g.source.as_deref().unwrap_or(&g.repository), g.path)
            }),
            inputs => inputs,
            dag => Value::from_serialize(&dag_view),
            steps => Value::from_serialize(&rows),
            approvals => approvals,
            secrets => Value::from_serialize(&secrets),
            plan_sha256 => validated.sha256.clone(),
            started => started,
            edit => Value::from_serialize(&edit),
        },
    )?;
    *res.status_mut() = status;
    Ok(res)
}

/// Not `Debug`: the workflow may hold a secret, which no log may print.
#[derive(Deserialize)]
pub struct EditForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub workflow: String,
    /// `validate` (show the verdict) or `save` (a new task from the edit).
    #[serde(default)]
    pub action: Option<String>,
}

async fn edit_plan(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<EditForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let task = crate::tasks::routes::accessible_task(&state, &viewer.who, &id)?;
    let verdict = crate::tasks::routes::validate_workflow(
        viewer.who.clone(),
        JsonBody(crate::tasks::routes::ValidateRequest {
            workflow: form.workflow.clone(),
        }),
    )
    .await
    .0;
    let mut edit = Edit {
        yaml: form.workflow.clone(),
        checked: true,
        valid: verdict.valid,
        errors: verdict
            .errors
            .iter()
            .filter_map(|e| serde_json::to_value(e).ok())
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
        steps: plan_rows(&verdict.steps),
        problem: None,
    };
    if form.action.as_deref() != Some("save") || !verdict.valid {
        return plan_with(&state, &viewer, task, Some(edit)).await;
    }
    // Saved as a new task: the plan that was shown (and perhaps approved elsewhere) stays as
    // it was. Input values carry over where the edited workflow still declares them.
    let declared: BTreeSet<String> = crate::tasks::routes::validate_text(&form.workflow)
        .map(|v| v.workflow.inputs.keys().cloned().collect())
        .unwrap_or_default();
    let inputs: BTreeMap<String, serde_json::Value> = task
        .inputs
        .iter()
        .filter(|(k, _)| declared.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let req = CreateTask {
        instruction: None,
        token_budget: None,
        workflow: Some(form.workflow),
        inputs: Some(inputs),
        workspace: task.workspace_name.clone(),
    };
    match create(&state, &viewer, req).await {
        Ok(new_id) => Ok(see_other(&task_path(&new_id))),
        Err(e) if e.status.is_client_error() => {
            edit.errors.extend(located_errors(&e));
            edit.problem = Some(e.detail.unwrap_or_else(|| e.code.to_string()));
            plan_with(&state, &viewer, task, Some(edit)).await
        }
        Err(e) => Err(e.into()),
    }
}

// ---- approve and run ---------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct StartForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    /// SHA-256 of the workflow the page showed: a different stored plan is not started.
    pub plan_sha256: String,
}

async fn start(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<StartForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let task = crate::tasks::routes::accessible_task(&state, &viewer.who, &id)?;
    let shown_matches = crate::tasks::routes::validate_text(&task.workflow)
        .map(|v| v.sha256 == form.plan_sha256)
        .unwrap_or(false);
    if !shown_matches {
        return Err(UiError::Api(
            ApiError::conflict(
                "plan_changed",
                "the plan stored for this task is not the plan the page showed",
            )
            .with_hint("open the task again, check its plan and approve that one"),
        ));
    }
    match crate::tasks::routes::run_task(State(state.clone()), viewer.who.clone(), Path(task.id))
        .await
    {
        Ok(_) => Ok(see_other(&task_path(&id))),
        // A second click (or another tab) got there first: the run is on its page.
        Err(e) if e.code == "already_started" => Ok(see_other(&task_path(&id))),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_labels_map_to_three_classes() {
        assert_eq!(undo_of("restore").0, UndoClass::Exact);
        assert_eq!(undo_of("compensate").0, UndoClass::Compensatable);
        assert_eq!(undo_of("pivot").0, UndoClass::None);
        assert_eq!(undo_of("none").0, UndoClass::None);
        assert!(undo_of("pivot").1.contains("irreversible"));
        assert!(undo_of("none").1.contains("only reads"));
        // Unknown labels are treated as irreversible, never as undoable.
        assert_eq!(undo_of("something-new").0, UndoClass::None);
    }

    #[test]
    fn page_numbers_start_at_one() {
        let q = |p: &str| PageQuery {
            page: Some(p.to_string()),
        };
        assert_eq!(page_number(&PageQuery::default()), 1);
        assert_eq!(page_number(&q("3")), 3);
        assert_eq!(page_number(&q("0")), 1);
        assert_eq!(page_number(&q("x")), 1);
    }

    #[test]
    fn whole_names_only() {
        assert!(mentions("{{ inputs.token }}", "inputs.token"));
        assert!(mentions("x inputs.token", "inputs.token"));
        assert!(!mentions("{{ inputs.token2 }}", "inputs.token"));
        assert!(!mentions("{{ inputs.tok }}", "inputs.token"));
    }

    const WITH_SECRET: &str = "version: 1
name: push
inputs:
  api_token:
    type: string
    secret: true
steps:
  - id: call
    shell: printf %s {{ inputs.api_token }} > out/token.txt
  - id: note
    write:
      path: out/key.txt
      content: \"AKIAZ7XQ3LM9PQ2RST4U\\n\"
";

    #[test]
    fn secrets_are_traced_to_the_steps_that_use_them() {
        let v = crate::tasks::routes::validate_text(WITH_SECRET).expect("valid");
        let instruction = "store the key AKIAZ7XQ3LM9PQ2RST4U in out/key.txt";
        let scrubber = secureclaw_engine::tools::guard::Scrubber::builtin().expect("scrubber");
        let (_, restorer) = scrubber.scrub(instruction);
        let sent = restorer.placeholders();
        assert_eq!(sent.len(), 1, "{sent:?}");
        let uses = secret_uses(&v, Some(instruction), &sent);
        let planner = uses.iter().find(|u| u.kind == "planner").expect("planner");
        assert_eq!(planner.placeholder, sent[0]);
        assert_eq!(planner.used_in, vec!["note: /write/content".to_string()]);
        let input = uses.iter().find(|u| u.kind == "input").expect("input");
        assert_eq!(input.placeholder, "[secret:api_token]");
        assert_eq!(input.used_in, vec!["call: /shell".to_string()]);
    }

    #[test]
    fn a_plan_without_secrets_has_none() {
        let v = crate::tasks::routes::validate_text(
            "version: 1\nname: x\nsteps:\n  - id: a\n    shell: echo hi\n",
        )
        .expect("valid");
        assert!(secret_uses(&v, Some("say hi"), &[]).is_empty());
    }
}
