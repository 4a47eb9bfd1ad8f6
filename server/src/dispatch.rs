//! Runs handed to workers. With a store several machines share (`serve --store`, and
//! `secureclaw worker` processes on it), a replica does not execute the runs it starts: it
//! queues them, and the worker that claims one runs it under the id given here, so the task
//! names its run at once and every replica reads the run's record and events from the store.

use std::collections::BTreeMap;

use secureclaw_engine::session::RunSettings;
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
}
