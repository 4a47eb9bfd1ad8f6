//! Runs handed to workers. With a store several machines share (`serve --store`, and
//! `secureclaw worker` processes on it), a replica does not execute the runs it starts: it
//! queues them, and the worker that claims one runs it under the id given here, so the task
//! names its run at once and every replica reads the run's record and events from the store.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use secureclaw_engine::session::{RevertOptions, RunSettings, Session};

use crate::error::ApiError;
use crate::tasks::routes::RevertReply;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A run as queued for a worker: everything needed to start it, nothing that names this
/// replica's disk (the worker makes the workspace on its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedRun {
    pub run_id: String,
    pub task_id: String,
    /// The workflow's text, validated again by the worker.
    pub workflow: String,
    pub inputs: BTreeMap<String, Value>,
    /// A registered workspace's name (the worker must have one of that name); `None`: the
    /// worker gives the task an empty directory of its own.
    pub workspace_name: Option<String>,
    pub settings: RunSettings,
}

/// Where runs go instead of this process.
#[async_trait::async_trait]
pub trait Dispatch: Send + Sync {
    /// Queues `run`. With `dedup`, a run queued before under the same key (by any replica) makes
    /// this return `Ok(false)` and queue nothing.
    async fn enqueue(&self, run: &QueuedRun, dedup: Option<&str>) -> Result<bool, String>;

    /// Has a worker of `node` perform `revert` and waits for its answer. `Ok(None)` when none
    /// took it within `wait`: it is taken back, and nothing was reverted.
    async fn revert_on(
        &self,
        node: &str,
        revert: &RoutedRevert,
        wait: Duration,
    ) -> Result<Option<RevertAnswer>, String>;
}

/// A revert sent to the node that ran the run: only that node's disk holds the run's
/// workspace and the pre-images that undo it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedRevert {
    pub run_id: String,
    pub step: Option<String>,
    pub cascade: bool,
    pub force: bool,
    pub dry_run: bool,
}

impl RoutedRevert {
    pub fn new(run_id: &str, opts: &RevertOptions) -> Self {
        RoutedRevert {
            run_id: run_id.to_string(),
            step: opts.step.clone(),
            cascade: opts.cascade,
            force: opts.force,
            dry_run: opts.dry_run,
        }
    }

    fn options(&self) -> RevertOptions {
        RevertOptions {
            step: self.step.clone(),
            cascade: self.cascade,
            force: self.force,
            dry_run: self.dry_run,
        }
    }
}

/// What the node answered: the reply a revert on this replica would give, or its problem.
pub type RevertAnswer = Result<RevertReply, RoutedProblem>;

/// An [`ApiError`] as it travels from the node that met it to the replica that answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedProblem {
    pub status: u16,
    pub code: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// The codes a revert's problems carry ([`ApiError::from`] a session error, and the revert's
/// own); any other is answered as `node_error`.
const REVERT_CODES: &[&str] = &[
    "not_found",
    "workspace_drift",
    "busy",
    "other_node",
    "invalid_request",
    "revert_refused",
    "run_in_progress",
    "internal",
];

impl From<ApiError> for RoutedProblem {
    fn from(e: ApiError) -> Self {
        RoutedProblem {
            status: e.status.as_u16(),
            code: e.code.to_string(),
            detail: e.detail,
            hint: e.hint,
        }
    }
}

impl From<RoutedProblem> for ApiError {
    fn from(p: RoutedProblem) -> Self {
        let code = REVERT_CODES
            .iter()
            .find(|c| **c == p.code)
            .copied()
            .unwrap_or("node_error");
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut err = ApiError::new(status, code, p.detail.unwrap_or_default());
        err.hint = p.hint;
        err
    }
}

/// Performs a routed revert on this node (a worker's side of [`Dispatch::revert_on`]): the
/// same revert a replica performs for a run of its own.
pub async fn revert_here(session: &Session, revert: &RoutedRevert) -> RevertAnswer {
    crate::tasks::routes::revert_run(session, &revert.run_id, revert.options())
        .await
        .map_err(RoutedProblem::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_met_on_the_node_is_answered_as_the_replicas_own() {
        let met = ApiError::conflict("workspace_drift", "hello.txt changed").with_hint("force");
        let travelled: RoutedProblem =
            serde_json::from_slice(&serde_json::to_vec(&RoutedProblem::from(met)).unwrap())
                .unwrap();
        let answered = ApiError::from(travelled);
        assert_eq!(answered.status, StatusCode::CONFLICT);
        assert_eq!(answered.code, "workspace_drift");
        assert_eq!(answered.detail.as_deref(), Some("hello.txt changed"));
        assert_eq!(answered.hint.as_deref(), Some("force"));
        // A code this replica does not know, or a status that is none, still answers.
        let odd = ApiError::from(RoutedProblem {
            status: 1000,
            code: "from_a_newer_node".into(),
            detail: None,
            hint: None,
        });
        assert_eq!(
            (odd.status, odd.code),
            (StatusCode::BAD_GATEWAY, "node_error")
        );
    }
}
