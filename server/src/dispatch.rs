//! Runs handed to workers. With a store several machines share (`serve --store`, and
//! `secureclaw worker` processes on it), a replica does not execute the runs it starts: it
//! queues them, and the worker that claims one runs it under the id given here, so the task
//! names its run at once and every replica reads the run's record and events from the store.
//! What only the node that ran a run can do (revert it from the pre-images on its disk, resume
//! or retry it in its workspace) is routed to that node's workers, and their answer is the
//! replica's.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use secureclaw_engine::record::Provenance;
use secureclaw_engine::session::{RevertOptions, RunSettings, Session};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::tasks::routes::RevertReply;

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
    /// Where the workflow came from in git, for the run's record (and a rerun after a lost
    /// worker: [`crate::lost_worker`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// 1 for a task's run; one more for each rerun after a lost worker.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

/// Where runs go instead of this process.
#[async_trait::async_trait]
pub trait Dispatch: Send + Sync {
    /// Queues `run`. With `dedup`, a run queued before under the same key (by any replica) makes
    /// this return `Ok(false)` and queue nothing.
    async fn enqueue(&self, run: &QueuedRun, dedup: Option<&str>) -> Result<bool, String>;

    /// The run queued before under `dedup` (by any replica), while its job is kept.
    async fn queued_under(&self, dedup: &str) -> Result<Option<QueuedRun>, String>;

    /// Has a worker of `node` perform `revert` and waits for its answer.
    async fn revert_on(
        &self,
        node: &str,
        revert: &RoutedRevert,
        wait: Duration,
    ) -> Result<Routed<RevertAnswer>, String>;

    /// Has a worker of `node` resume or retry a run, and waits until it started there (the run
    /// then goes on under that worker's lease, its events through the store) or was refused.
    async fn continue_on(
        &self,
        node: &str,
        cont: &RoutedContinue,
        wait: Duration,
    ) -> Result<Routed<ContinueAnswer>, String>;
}

/// What became of a request sent to another node's workers.
#[derive(Debug)]
pub enum Routed<A> {
    /// A worker of the node answered.
    Answered(A),
    /// No worker of the node took it within the wait: it was taken back, nothing was done.
    NotTaken,
    /// A worker took it and lost its lease before answering (it died, or was cut off from the
    /// store): some of it may have been done.
    Lost,
}

/// The replica's answer to `what` (`revert`, `retry`, `resume`) of `run`, sent to `node`:
/// the node's own answer, or why there is none.
pub fn routed_answer<A>(
    sent: Result<Routed<Result<A, RoutedProblem>>, String>,
    node: &str,
    run: &str,
    what: &str,
) -> Result<A, ApiError> {
    match sent {
        Ok(Routed::Answered(answer)) => Ok(answer?),
        Ok(Routed::NotTaken) => Err(node_unavailable(node, run, what)),
        Ok(Routed::Lost) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_lost",
            format!(
                "a worker of node {node} took the {what} of run {run} and stopped before it \
                 answered (it died, or lost the store); some of it may have been done"
            ),
        )
        .with_hint("read the run's record (its steps and reverts) before asking again")),
        Err(e) => Err(ApiError::internal(format!(
            "sending the {what} to node {node}: {e}"
        ))),
    }
}

/// A stopped run to go on, sent to the node that ran it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedContinue {
    pub run_id: String,
    /// Retry from the failed step; else resume after the approvals.
    pub retry: bool,
    pub force: bool,
}

/// The node's answer to a [`RoutedContinue`]: it started, or its problem.
pub type ContinueAnswer = Result<(), RoutedProblem>;

/// How long a request about another node's run waits for a worker of that node to take it.
pub const ROUTED_WAIT: Duration = Duration::from_secs(30);

/// The answer when no worker of `node` took a request about `run` within [`ROUTED_WAIT`].
pub fn node_unavailable(node: &str, run: &str, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "node_unavailable",
        format!(
            "run {run} ran on node {node}, whose disk holds its workspace and the pre-images \
             that undo it, and no worker of that node took the {what} within {} s; nothing was \
             done",
            ROUTED_WAIT.as_secs()
        ),
    )
    .with_hint("start that node's worker again (same data directory), then retry")
}

/// The node `run` must be handled on when it is not this one and this replica hands work to
/// workers; `None`: handle it here.
pub fn elsewhere(state: &crate::app::AppState, run: &str) -> Result<Option<String>, ApiError> {
    if state.dispatch.is_none() {
        return Ok(None);
    }
    let node = state.session.run_record(run)?.and_then(|r| r.node);
    Ok(node.filter(|n| Some(n.as_str()) != state.session.node()))
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

/// The codes a routed request's problems carry ([`ApiError::from`] a session error, and the
/// request's own); any other is answered as `node_error`.
const ROUTED_CODES: &[&str] = &[
    "not_found",
    "not_parked",
    "not_waiting",
    "not_failed",
    "workspace_drift",
    "busy",
    "other_node",
    "invalid_request",
    "revert_refused",
    "run_in_progress",
    "internal",
];

impl RoutedProblem {
    /// A request whose payload this node cannot read (a replica of another version).
    pub fn unreadable(e: impl std::fmt::Display) -> Self {
        RoutedProblem {
            status: 500,
            code: "internal".into(),
            detail: Some(format!("the routed request does not read here: {e}")),
            hint: Some("run the same secureclaw version on every node".into()),
        }
    }
}

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
        let code = ROUTED_CODES
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

    #[test]
    fn a_request_no_worker_answered_says_whether_anything_may_have_been_done() {
        let answer = |sent: Result<Routed<Result<u8, RoutedProblem>>, String>| {
            routed_answer(sent, "node-w1", "run-1", "revert")
        };
        assert_eq!(answer(Ok(Routed::Answered(Ok(7)))).unwrap(), 7);
        let refused = RoutedProblem::from(ApiError::conflict("run_in_progress", "going on"));
        let e = answer(Ok(Routed::Answered(Err(refused)))).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::CONFLICT, "run_in_progress")
        );
        // Not taken: nothing was done, and the operator is told which node to start.
        let e = answer(Ok(Routed::NotTaken)).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "node_unavailable")
        );
        assert!(e.detail.unwrap().contains("nothing was done"));
        // Taken and lost: some of it may have been done, and the answer says so.
        let e = answer(Ok(Routed::Lost)).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "node_lost")
        );
        let detail = e.detail.unwrap();
        assert!(
            detail.contains("node-w1") && detail.contains("run-1"),
            "{detail}"
        );
        assert!(detail.contains("may have been done"), "{detail}");
        let e = answer(Err("connection refused".into())).unwrap_err();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
