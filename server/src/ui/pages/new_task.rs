//! (to be written) The new-task page and the plan preview of a task that has not run yet.

use axum::Router;
use minijinja::context;

use crate::app::AppState;
use crate::tasks::model::Task;
use crate::ui::{UiResult, Viewer};

pub fn routes() -> Router<AppState> {
    Router::new()
}

/// The page of a task that has not run yet: its plan, to check and approve.
/// (`task::routes` shows this for a task without a run.)
pub async fn plan_preview(state: &AppState, viewer: &Viewer, task: Task) -> UiResult {
    viewer.page(
        state,
        "task_plan.html",
        "Plan",
        context! { task_id => task.id, workflow => task.workflow },
    )
}
