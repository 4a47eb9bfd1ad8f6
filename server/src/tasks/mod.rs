//! Tasks: a plan or a workflow, its owner, and the run it became.
//!
//! ```text
//! POST /tasks ─► planned ─► POST /tasks/{id}/run ─► running ─┬─► succeeded | failed | cancelled
//!                                                            ├─► awaiting_approval ─► approve/deny ─► running …
//!                                                            └─► failed ─► POST /tasks/{id}/retry ─► running …
//! ```
//!
//! Every endpoint answers `404 not_found` for a task of another user (unless the caller is an
//! admin), exactly as for a task that does not exist. Ids are checked before anything is
//! looked up, and only the full run id a task stored is ever handed to the session.

pub mod approvals;
pub mod model;
pub mod routes;
pub mod scrub;
pub mod stream;
pub mod views;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// Task bookkeeping shared by the handlers: one lock per task, so starting, answering gates,
/// resuming and reverting one task happen one at a time.
#[derive(Default)]
pub struct TaskService {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl TaskService {
    /// Hold the task's lock until the guard drops.
    pub async fn lock(&self, task_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = match self.locks.lock() {
            Ok(mut map) => {
                // Locks nobody holds or waits for are dropped, so the map stays small.
                map.retain(|_, l| Arc::strong_count(l) > 1);
                map.entry(task_id.to_string()).or_default().clone()
            }
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        };
        lock.lock_owned().await
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::create_task, routes::list_tasks))
        .routes(routes!(routes::get_task))
        .routes(routes!(routes::run_task))
        .routes(routes!(routes::retry_task))
        .routes(routes!(routes::cancel_task))
        .routes(routes!(routes::task_diff))
        .routes(routes!(routes::revert_task))
        .routes(routes!(routes::revert_action))
        .routes(routes!(routes::ledger_export))
        .routes(routes!(routes::validate_workflow))
        .routes(routes!(approvals::list_approvals))
        .routes(routes!(approvals::approve_step))
        .routes(routes!(approvals::deny_step))
        .routes(routes!(stream::stream_task))
}
