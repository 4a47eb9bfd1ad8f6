//! The dashboard: the viewer's tasks, those waiting for approval first.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use minijinja::context;

use super::DASHBOARD;
use crate::app::AppState;
use crate::ui::{UiResult, Viewer};

pub fn routes() -> Router<AppState> {
    Router::new().route(DASHBOARD, get(dashboard))
}

async fn dashboard(State(state): State<AppState>, viewer: Viewer) -> UiResult {
    viewer.page(&state, "dashboard.html", "Tasks", context! {})
}
