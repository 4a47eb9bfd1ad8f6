//! What the task endpoints return: the plan of a workflow, a task with its run, problems of a
//! workflow as located JSON.

use std::collections::BTreeMap;

use secureclaw_engine::diag::Diagnostics;
use secureclaw_engine::record::{Provenance, RunRecord, StepRecord};
use secureclaw_engine::validate::Validated;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::model::{Origin, Task, action_id};
use super::scrub::OutputScrubber;

/// One step of a plan, in the order the run takes them.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanStep {
    pub id: String,
    /// `read`, `write`, `patch`, `shell` or `http`.
    pub action: String,
    /// `read_only`, `low_write`, `destructive` or `network_egress`.
    pub tier: String,
    /// The classifier rule that decided the tier.
    pub rule: String,
    pub reason: String,
    /// The run parks before this step until someone approves it.
    pub needs_approval: bool,
    /// How revert undoes it: `none`, `restore`, `compensate` or `pivot` (irreversible).
    pub undo: String,
}

pub fn plan_steps(v: &Validated) -> Vec<PlanStep> {
    v.order
        .iter()
        .filter_map(|&i| {
            let s = v.workflow.steps.get(i)?;
            let r = v.risk.get(i)?;
            Some(PlanStep {
                id: s.id.clone(),
                action: s.kind().as_str().to_string(),
                tier: r.tier.as_str().to_string(),
                rule: r.rule.clone(),
                reason: r.reason.clone(),
                needs_approval: r.needs_approval(),
                undo: label(&v.inverse.get(i)),
            })
        })
        .collect()
}

/// A located problem of a workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowError {
    pub line: usize,
    pub column: usize,
    /// JSON pointer to the offending value (`/steps/0/needs/0`), empty for the whole document.
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

pub fn workflow_errors(d: &Diagnostics) -> Vec<WorkflowError> {
    d.iter()
        .map(|d| WorkflowError {
            line: d.location.line,
            column: d.location.column,
            path: d.path.clone(),
            message: d.message.clone(),
            hint: d.hint.clone(),
        })
        .collect()
}

pub fn workflow_errors_json(d: &Diagnostics) -> Vec<Value> {
    workflow_errors(d)
        .into_iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect()
}

/// A step of the task's run as it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepStatus {
    pub id: String,
    /// `TASK_ID.STEP_ID`: names this step in `POST /actions/{action_id}/revert`.
    pub action_id: String,
    pub action: String,
    /// `pending`, `waiting_approval`, `running`, `succeeded`, `failed`, `skipped`, `cancelled`.
    pub state: String,
    pub tier: String,
    pub rule: String,
    pub undo: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Output, stdout and stderr, scrubbed of secrets.
    pub output: String,
    pub stdout: String,
    pub stderr: String,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who approved it, if it needed approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

fn step_status(task_id: &str, s: &StepRecord, scrub: &OutputScrubber) -> StepStatus {
    StepStatus {
        id: s.id.clone(),
        action_id: action_id(task_id, &s.id),
        action: s.kind.as_str().to_string(),
        state: label(&s.state),
        tier: s.tier.as_str().to_string(),
        rule: s.rule.clone(),
        undo: label(&s.inverse),
        attempts: s.attempts,
        started_at: s.started_at.clone(),
        finished_at: s.finished_at.clone(),
        duration_ms: s.duration_ms,
        exit_code: s.exit_code,
        output: scrub.text(&s.output),
        stdout: scrub.text(&s.stdout),
        stderr: scrub.text(&s.stderr),
        reason: s.reason.as_ref().map(|r| scrub.text(r)),
        approval: s.approval.clone(),
    }
}

/// The run of a task.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunStatus {
    pub run_id: String,
    /// `running`, `succeeded`, `failed`, `awaiting_approval`, `cancelled`, `interrupted`.
    pub state: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub backend: String,
    /// Reverts of this run, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub reverts: Vec<Value>,
    pub steps: Vec<StepStatus>,
}

/// A task: what it does, whose it is, and its run.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// UUID v7.
    pub id: String,
    /// The owner's user id.
    pub owner: String,
    pub created: String,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// The planner's provenance (provider, model, rounds, tokens), for planned tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub provenance: Option<Value>,
    /// Where the workflow came from in git: `source`, `repository`, `branch`, `commit`, `path`,
    /// `blob`, `dirty`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub git: Option<Provenance>,
    /// Who or what started it (`user:NAME`, `rerun:TASK`, `lost-worker:TASK`, `trigger:NAME`,
    /// `schedule:…`, `watch:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The workflow's `name`.
    pub name: String,
    /// The workflow YAML.
    pub workflow: String,
    /// Input values; secret ones are shown as `[secret:NAME]`.
    #[schema(value_type = Object)]
    pub inputs: BTreeMap<String, Value>,
    /// The registered workspace's name; absent when the task has its own directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// `planned` before it runs, else the run's state.
    pub state: String,
    pub plan: Vec<PlanStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunStatus>,
}

/// A line of `GET /tasks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskSummary {
    pub id: String,
    pub owner: String,
    pub created: String,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    pub name: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

pub fn task_view(
    task: &Task,
    validated: Option<&Validated>,
    run: Option<&RunRecord>,
    scrub: &OutputScrubber,
) -> TaskView {
    let secret = |name: &str| {
        validated
            .and_then(|v| v.workflow.inputs.get(name))
            .is_none_or(|spec| spec.secret)
    };
    let inputs = task
        .inputs
        .iter()
        .map(|(k, v)| {
            let shown = if secret(k) {
                Value::String(format!("[secret:{k}]"))
            } else {
                v.clone()
            };
            (k.clone(), shown)
        })
        .collect();
    TaskView {
        id: task.id.clone(),
        owner: task.owner.clone(),
        created: task.created.clone(),
        origin: task.origin,
        instruction: task.instruction.clone(),
        provenance: task.provenance.clone(),
        git: task.git.clone(),
        started_by: task.started_by.clone(),
        name: validated
            .map(|v| v.workflow.name.clone())
            .unwrap_or_default(),
        workflow: task.workflow.clone(),
        inputs,
        workspace: task.workspace_name.clone(),
        state: state(task, run),
        plan: validated.map(plan_steps).unwrap_or_default(),
        run: run.map(|r| RunStatus {
            run_id: r.run_id.clone(),
            state: label(&r.state),
            started_at: r.started_at.clone(),
            finished_at: r.finished_at.clone(),
            message: r.message.as_ref().map(|m| scrub.text(m)),
            backend: r.backend.clone(),
            reverts: r
                .reverts
                .iter()
                .filter_map(|x| serde_json::to_value(x).ok())
                .collect(),
            steps: r
                .steps
                .iter()
                .map(|s| step_status(&task.id, s, scrub))
                .collect(),
        }),
    }
}

pub fn task_summary(task: &Task, name: String, run: Option<&RunRecord>) -> TaskSummary {
    TaskSummary {
        id: task.id.clone(),
        owner: task.owner.clone(),
        created: task.created.clone(),
        origin: task.origin,
        started_by: task.started_by.clone(),
        name,
        state: state(task, run),
        run_id: task.run_id.clone(),
    }
}

/// `planned` before the task runs; `running` while its run has no record yet; else the run's.
fn state(task: &Task, run: Option<&RunRecord>) -> String {
    match (run, &task.run_id) {
        (Some(r), _) => label(&r.state),
        (None, Some(_)) => "running".to_string(),
        (None, None) => "planned".to_string(),
    }
}

/// A unit-like enum's serde name (`awaiting_approval`).
pub fn label<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
