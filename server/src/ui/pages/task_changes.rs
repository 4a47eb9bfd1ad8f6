//! What a task's run changed, and undoing it.
//!
//! ```text
//! GET  /ui/tasks/{id}/diff[?step=ID]    ─► task_diff                       (unified diff)
//! GET  /ui/tasks/{id}/revert[?step=ID]  ─► revert_task / revert_action, dry run: the preview
//! POST /ui/tasks/{id}/revert[?step=ID]  ─► the same, for real            ─► 303 to the task
//! ```
//!
//! The revert page always shows the dry run first (what would be undone, and which files
//! changed since the run), so nobody undoes anything without having seen it. Reverting one
//! step also undoes the steps that depend on it (cascade); the preview lists them.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::AppState;
use crate::extract::JsonOrDefault;
use crate::tasks::model::{action_id, parse_step_id};
use crate::tasks::routes::{RevertAction, RevertReply, RevertTask};
use crate::ui::pages::task_path;
use crate::ui::{UiForm, UiResult, Viewer};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/tasks/{id}/diff", get(diff_page))
        .route(
            "/ui/tasks/{id}/revert",
            get(revert_page).post(revert_confirm),
        )
}

#[derive(Debug, Deserialize)]
pub struct StepQuery {
    #[serde(default)]
    pub step: Option<String>,
    /// `conflict`: a revert was refused because files changed since the run.
    #[serde(default)]
    pub notice: Option<String>,
}

impl StepQuery {
    /// The step named, if any (an empty `step=` means the whole run); a malformed id is the
    /// API's 404.
    fn step(&self) -> Result<Option<String>, crate::error::ApiError> {
        match self.step.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => parse_step_id(s).map(Some),
        }
    }
}

// ---- diff -----------------------------------------------------------------------------------

/// One line of a unified diff, with what it is in words (a class and its prefix), so added
/// and removed lines differ by more than colour.
#[derive(Debug, Serialize, PartialEq)]
pub struct DiffLine {
    /// `add`, `del`, `hunk`, `file` or `context`.
    pub kind: &'static str,
    pub text: String,
}

pub fn diff_lines(diff: &str) -> Vec<DiffLine> {
    diff.lines()
        .map(|line| {
            let kind = if line.starts_with("+++") || line.starts_with("---") {
                "file"
            } else if line.starts_with('+') {
                "add"
            } else if line.starts_with('-') {
                "del"
            } else if line.starts_with("@@") {
                "hunk"
            } else if line.starts_with("diff ")
                || line.starts_with("new file")
                || line.starts_with("deleted file")
                || line.starts_with("index ")
            {
                "file"
            } else {
                "context"
            };
            DiffLine {
                kind,
                text: line.to_string(),
            }
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct StepDiffView {
    step: String,
    lines: Vec<DiffLine>,
    added: usize,
    removed: usize,
}

async fn diff_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<StepQuery>,
) -> UiResult {
    let step = q.step()?;
    let mut query = BTreeMap::new();
    if let Some(s) = &step {
        query.insert("step".to_string(), s.clone());
    }
    let Json(reply) = crate::tasks::routes::task_diff(
        State(state.clone()),
        viewer.who.clone(),
        Path(id.clone()),
        Query(query),
    )
    .await?;
    let steps: Vec<StepDiffView> = reply
        .steps
        .into_iter()
        .filter(|d| !d.diff.trim().is_empty())
        .map(|d| {
            let lines = diff_lines(&d.diff);
            StepDiffView {
                added: lines.iter().filter(|l| l.kind == "add").count(),
                removed: lines.iter().filter(|l| l.kind == "del").count(),
                step: d.step,
                lines,
            }
        })
        .collect();
    viewer.page(
        &state,
        "task_diff.html",
        "Changes",
        context! {
            task_id => id.clone(),
            task_path => task_path(&id),
            step => step,
            steps => steps,
        },
    )
}

// ---- revert ---------------------------------------------------------------------------------

/// One step of a revert plan, in undo order.
#[derive(Debug, Serialize)]
struct UndoStep {
    id: String,
    /// `restore`, `compensate` or `manual_review`.
    action: String,
    /// What restoring does per path: `remove` a created file, `restore` a changed or deleted one.
    files: Vec<UndoFile>,
    /// Why a person has to look (manual review), or the compensating request.
    note: String,
}

#[derive(Debug, Serialize)]
struct UndoFile {
    path: String,
    what: &'static str,
}

#[derive(Debug, Serialize)]
struct DriftView {
    step: String,
    path: String,
    expected: String,
    found: String,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn undo_steps(plan: &Value) -> Vec<UndoStep> {
    plan.get("steps")
        .and_then(Value::as_array)
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    let action = text_of(s.get("action").unwrap_or(&Value::Null));
                    let files = s
                        .pointer("/changes/changes")
                        .and_then(Value::as_array)
                        .map(|cs| {
                            cs.iter()
                                .map(|c| UndoFile {
                                    path: text_of(c.get("path").unwrap_or(&Value::Null)),
                                    what: if c.get("pre").is_none_or(Value::is_null) {
                                        "remove (the run created it)"
                                    } else if c.get("post").is_none_or(Value::is_null) {
                                        "restore (the run deleted it)"
                                    } else {
                                        "restore (the run changed it)"
                                    },
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let note = match action.as_str() {
                        "manual_review" => text_of(s.get("reason").unwrap_or(&Value::Null)),
                        "compensate" => format!(
                            "runs the step's compensating action: {}",
                            text_of(s.get("compensate").unwrap_or(&Value::Null))
                        ),
                        _ => String::new(),
                    };
                    UndoStep {
                        id: text_of(s.get("id").unwrap_or(&Value::Null)),
                        action,
                        files,
                        note,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn drift_of(plan: &Value) -> Vec<DriftView> {
    plan.get("conflicts")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| DriftView {
                    step: text_of(c.get("step").unwrap_or(&Value::Null)),
                    path: text_of(c.get("path").unwrap_or(&Value::Null)),
                    expected: text_of(c.get("expected").unwrap_or(&Value::Null)),
                    found: text_of(c.get("found").unwrap_or(&Value::Null)),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The revert page of the run or one step; always with a query, so more can be appended.
fn revert_path(id: &str, step: Option<&str>) -> String {
    format!("/ui/tasks/{id}/revert?step={}", step.unwrap_or_default())
}

/// Revert the whole run or one step (with what depends on it), as the API does.
async fn revert(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    step: Option<&str>,
    dry_run: bool,
    force: bool,
) -> UiResult<RevertReply> {
    let Json(reply) = match step {
        Some(step) => {
            crate::tasks::routes::revert_action(
                State(state.clone()),
                viewer.who.clone(),
                Path(action_id(id, step)),
                JsonOrDefault(RevertAction {
                    cascade: true,
                    dry_run,
                    force,
                }),
            )
            .await?
        }
        None => {
            crate::tasks::routes::revert_task(
                State(state.clone()),
                viewer.who.clone(),
                Path(id.to_string()),
                JsonOrDefault(RevertTask { dry_run, force }),
            )
            .await?
        }
    };
    Ok(reply)
}

async fn revert_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<StepQuery>,
) -> UiResult {
    let step = q.step()?;
    let reply = revert(&state, &viewer, &id, step.as_deref(), true, false).await?;
    let already: Vec<String> = reply
        .detail
        .get("already_reverted")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(text_of).collect())
        .unwrap_or_default();
    let action = revert_path(&id, step.as_deref());
    viewer.page(
        &state,
        "task_revert.html",
        "Revert",
        context! {
            task_id => id.clone(),
            task_path => task_path(&id),
            step => step,
            action => action,
            undo => undo_steps(&reply.detail),
            already => already,
            drift => drift_of(&reply.detail),
            conflict => q.notice.as_deref() == Some("conflict"),
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct RevertForm {
    pub csrf: String,
    /// Undo even over files changed since the run (the preview listed them).
    #[serde(default)]
    pub force: Option<String>,
}

async fn revert_confirm(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<StepQuery>,
    UiForm(form): UiForm<RevertForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let step = q.step()?;
    let force = form.force.is_some_and(|f| !f.is_empty());
    let reply = revert(&state, &viewer, &id, step.as_deref(), false, force).await?;
    let summary = reply.detail.get("summary").cloned().unwrap_or_default();
    let to = match summary.get("state").and_then(Value::as_str) {
        // Nothing was undone: back to the preview, which lists the files in the way.
        Some("conflict") => format!("{}&notice=conflict", revert_path(&id, step.as_deref())),
        _ => {
            let clean = ["failures", "manual_review"].iter().all(|k| {
                summary
                    .get(*k)
                    .and_then(Value::as_array)
                    .is_none_or(|a| a.is_empty())
            });
            let notice = if clean { "reverted" } else { "revert-partial" };
            format!("{}?notice={notice}", task_path(&id))
        }
    };
    Ok(axum::response::IntoResponse::into_response(
        axum::response::Redirect::to(&to),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lines_say_what_they_are() {
        let d = "--- a/x.txt\n+++ b/x.txt\n@@ -1 +1 @@\n-old\n+new\n same\n";
        let kinds: Vec<_> = diff_lines(d).iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["file", "file", "hunk", "del", "add", "context"]);
        assert_eq!(diff_lines(d)[4].text, "+new");
    }

    #[test]
    fn a_revert_plan_reads_as_steps_and_drift() {
        let plan = serde_json::json!({
            "steps": [
                {"id": "w", "action": "restore", "changes": {"changes": [
                    {"path": "a.txt", "pre": null, "post": {"sha256": "x"}},
                    {"path": "b.txt", "pre": {"sha256": "y"}, "post": {"sha256": "z"}}
                ]}},
                {"id": "h", "action": "manual_review", "reason": "irreversible"}
            ],
            "conflicts": [{"step": "w", "path": "b.txt", "expected": "z", "found": "q"}]
        });
        let steps = undo_steps(&plan);
        assert_eq!(steps.len(), 2);
        assert!(steps[0].files[0].what.starts_with("remove"));
        assert!(steps[0].files[1].what.contains("changed"));
        assert_eq!(steps[1].note, "irreversible");
        let drift = drift_of(&plan);
        assert_eq!(drift[0].path, "b.txt");
    }
}
