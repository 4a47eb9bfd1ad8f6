//! The pages, one module each. Paths are constants here so templates, redirects and tests
//! agree on them.

pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod ledger_download;
pub mod new_task;
pub mod pager;
pub mod run_workflow;
pub mod settings;
pub mod task;
pub mod task_changes;
pub mod workflows;

use axum::Router;

use crate::app::AppState;

pub const DASHBOARD: &str = "/ui/";
pub const LOGIN: &str = "/ui/login";
pub const LOGIN_TOTP: &str = "/ui/login/totp";
pub const LOGOUT: &str = "/ui/logout";
pub const REGISTER: &str = "/ui/register";
pub const SETTINGS: &str = "/ui/settings";
pub const NEW_TASK: &str = "/ui/tasks/new";
pub const WORKFLOWS: &str = "/ui/workflows";
pub const AUDIT: &str = "/ui/audit";

/// The page of one task.
pub fn task_path(id: &str) -> String {
    format!("/ui/tasks/{id}")
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(auth::routes())
        .merge(settings::routes())
        .merge(dashboard::routes())
        .merge(new_task::routes())
        .merge(task::routes())
        .merge(task_changes::routes())
        .merge(ledger_download::routes())
        .merge(workflows::routes())
        .merge(audit::routes())
        .merge(run_workflow::routes())
}
