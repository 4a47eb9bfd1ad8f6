//! The dashboard: the viewer's tasks (an admin's: everyone's), those waiting for approval
//! first, newest first, a page at a time.
//!
//! It reads tasks the way `GET /api/v1/tasks` does (`TaskStore::ids` for the owner's index,
//! `TaskStore::load`, `Identity::may_access`, `views::task_summary`), and opens only the
//! current page's tasks and run records. Waiting tasks come from the engine's list of parked
//! runs, so with none parked (the usual case) no other task is opened.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use minijinja::context;
use secureclaw_engine::record::{RunRecord, RunState};
use serde::Serialize;

use super::DASHBOARD;
use super::pager::{PER_PAGE, PageQuery, Pager};
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::ApiError;
use crate::tasks::model::{Task, TaskStore};
use crate::tasks::routes::validate_text;
use crate::tasks::views::task_summary;
use crate::ui::{UiResult, Viewer};

pub fn routes() -> Router<AppState> {
    Router::new().route(DASHBOARD, get(dashboard))
}

/// One row of a task table.
#[derive(Debug, Serialize)]
pub struct TaskRow {
    pub id: String,
    /// The workflow's name.
    pub name: String,
    /// The plain-language instruction of a planned task.
    pub instruction: Option<String>,
    pub state: String,
    /// Who or what started it, in words: `you`, a user, a trigger, a schedule, a watch.
    pub started_by: String,
    /// The owner's username (shown to admins, who see everyone's tasks).
    pub owner: String,
    pub created: String,
    /// Steps finished and steps in all, once it has a run.
    pub steps_done: Option<usize>,
    pub steps_total: usize,
}

/// What the dashboard shows.
#[derive(Debug, Serialize)]
pub struct Dashboard {
    pub awaiting: Vec<TaskRow>,
    pub tasks: Vec<TaskRow>,
    pub pager: Pager,
}

pub async fn dashboard(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<PageQuery>,
) -> UiResult {
    let data = dashboard_data(&state, &viewer.who, q.number())?;
    let title = match data.awaiting.len() {
        0 => "Tasks".to_string(),
        n => format!("({n}) Tasks"),
    };
    viewer.page(
        &state,
        "dashboard.html",
        &title,
        context! {
            awaiting => data.awaiting,
            tasks => data.tasks,
            pager => data.pager,
            show_owner => viewer.who.admin,
            new_task => super::NEW_TASK,
        },
    )
}

/// The rows of page `page` and every task waiting for approval, as `who` may see them.
pub fn dashboard_data(
    state: &AppState,
    who: &Identity,
    page: usize,
) -> Result<Dashboard, ApiError> {
    let store = TaskStore::new(state.session.clone());
    let ids = store.ids((!who.admin).then_some(who.user_id.as_str()))?;
    let mut names = OwnerNames::new(state, who);

    let mut tasks = Vec::new();
    for id in ids.iter().skip(Pager::offset(page)).take(PER_PAGE) {
        let Some(task) = store.load(id)? else {
            continue;
        };
        if !who.may_access(&task.owner) {
            continue;
        }
        let run = run_record(state, &task);
        tasks.push(row(&task, run.as_ref(), &mut names));
    }

    let parked: BTreeSet<String> = state.session.parked_runs()?.into_iter().collect();
    let mut awaiting = Vec::new();
    if !parked.is_empty() {
        for id in &ids {
            let Some(task) = store.load(id)? else {
                continue;
            };
            let waits = task.run_id.as_ref().is_some_and(|r| parked.contains(r));
            if !waits || !who.may_access(&task.owner) {
                continue;
            }
            let run = run_record(state, &task);
            // A parked row can outlive its wait (a cancelled run): the record decides.
            if run
                .as_ref()
                .is_some_and(|r| r.state == RunState::AwaitingApproval)
            {
                awaiting.push(row(&task, run.as_ref(), &mut names));
            }
        }
    }

    Ok(Dashboard {
        awaiting,
        tasks,
        pager: Pager::new(DASHBOARD, &[], page, ids.len()),
    })
}

/// The task's run record, when it has one stored; a run too new to have one shows as running
/// (as in `GET /api/v1/tasks`). Looked up by its exact id: `Session::show` would resolve the id
/// against every stored run, once per row.
fn run_record(state: &AppState, task: &Task) -> Option<RunRecord> {
    task.run_id
        .as_deref()
        .and_then(|r| state.session.run_record(r).ok().flatten())
}

fn row(task: &Task, run: Option<&RunRecord>, names: &mut OwnerNames<'_>) -> TaskRow {
    let validated = validate_text(&task.workflow).ok();
    let name = validated
        .as_ref()
        .map(|v| v.workflow.name.clone())
        .unwrap_or_default();
    let steps_total = match (run, &validated) {
        (Some(r), _) => r.steps.len(),
        (None, Some(v)) => v.workflow.steps.len(),
        (None, None) => 0,
    };
    let summary = task_summary(task, name, run);
    let owner = names.of(&task.owner);
    TaskRow {
        started_by: started_by(task.started_by.as_deref(), &owner),
        owner,
        id: summary.id,
        name: summary.name,
        instruction: task.instruction.clone(),
        state: summary.state,
        created: summary.created,
        steps_done: run.map(|r| r.steps.iter().filter(|s| s.state.is_final()).count()),
        steps_total,
    }
}

/// Who or what started a task, in words, from its `started_by` (`user:NAME`, `rerun:TASK`,
/// `lost-worker:TASK`, `trigger:NAME`, `schedule:SOURCE/PATH`, `watch:SOURCE/PATH`); a task
/// without one was created by its owner.
pub fn started_by(started_by: Option<&str>, owner: &str) -> String {
    match started_by.and_then(|s| s.split_once(':')) {
        Some(("user", name)) => name.to_string(),
        Some(("rerun", task)) => format!("re-run of {}", task.chars().take(8).collect::<String>()),
        Some(("lost-worker", task)) => format!(
            "re-run of {} (its worker was lost)",
            task.chars().take(8).collect::<String>()
        ),
        Some(("trigger", name)) => format!("trigger {name}"),
        Some(("schedule", what)) => format!("schedule {what}"),
        Some(("watch", what)) => format!("watch {what}"),
        Some(_) | None => match started_by {
            Some(other) => other.to_string(),
            None => owner.to_string(),
        },
    }
}

/// Usernames by user id, looked up once a page.
struct OwnerNames<'a> {
    state: &'a AppState,
    known: BTreeMap<String, String>,
}

impl<'a> OwnerNames<'a> {
    fn new(state: &'a AppState, who: &Identity) -> Self {
        let mut known = BTreeMap::new();
        known.insert(who.user_id.clone(), who.username.clone());
        OwnerNames { state, known }
    }

    fn of(&mut self, user_id: &str) -> String {
        if let Some(n) = self.known.get(user_id) {
            return n.clone();
        }
        // An account that cannot be read still has its id to show.
        let name = match self.state.auth.accounts.get(user_id) {
            Ok(Some(a)) => a.username,
            _ => user_id.to_string(),
        };
        self.known.insert(user_id.to_string(), name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starters_are_named_in_words() {
        assert_eq!(started_by(None, "ada"), "ada");
        assert_eq!(started_by(Some("user:bob"), "ada"), "bob");
        assert_eq!(started_by(Some("trigger:push"), "ada"), "trigger push");
        assert_eq!(
            started_by(Some("schedule:repo/nightly.yml"), "ada"),
            "schedule repo/nightly.yml"
        );
        assert_eq!(
            started_by(Some("watch:repo/w.yml"), "ada"),
            "watch repo/w.yml"
        );
        assert_eq!(
            started_by(Some("rerun:0192abcd-0000"), "ada"),
            "re-run of 0192abcd"
        );
        assert_eq!(
            started_by(Some("lost-worker:0192abcd-0000"), "ada"),
            "re-run of 0192abcd (its worker was lost)"
        );
        assert_eq!(started_by(Some("odd"), "ada"), "odd");
    }
}
