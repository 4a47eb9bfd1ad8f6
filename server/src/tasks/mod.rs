//! Tasks: a plan or a workflow, its owner, and the run it became.

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// Task bookkeeping shared by the handlers.
#[derive(Default)]
pub struct TaskService {}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
