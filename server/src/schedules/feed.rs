//! Where the scheduler and the watchers learn which workflows declare triggers: the valid
//! workflows of the registered sources, read again each time the sources change.

use std::sync::Mutex;

use secureclaw_engine::validate::Validated;
use tokio::sync::watch;

use crate::app::AppState;
use crate::error::ApiResult;

/// A valid workflow of a source, with the `on:` triggers it declares.
#[derive(Clone)]
pub struct TriggeredWorkflow {
    /// The registered source's name.
    pub source: String,
    /// The file's path inside the source.
    pub path: String,
    pub validated: Validated,
    /// The user id of the admin who registered the source: its runs are that user's tasks.
    pub owner: String,
    /// The source's workspace, when it has one.
    pub workspace: Option<String>,
}

impl TriggeredWorkflow {
    /// `SOURCE/PATH`: the workflow's name in `started_by`, in settings keys and in the API.
    pub fn key(&self) -> String {
        format!("{}/{}", self.source, self.path)
    }
}

#[async_trait::async_trait]
pub trait WorkflowFeed: Send + Sync {
    /// Every valid workflow that may carry triggers, as of the sources' last fetch.
    async fn triggered(&self, state: &AppState) -> ApiResult<Vec<TriggeredWorkflow>>;
    /// Bumped each time the answer of `triggered` may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// A feed that holds what it is given: no sources (the default), or a fixed list.
#[derive(Default)]
pub struct FixedFeed {
    workflows: Mutex<Vec<TriggeredWorkflow>>,
    changed: watch::Sender<u64>,
}

impl FixedFeed {
    /// Replace the list and tell the listeners.
    pub fn set(&self, workflows: Vec<TriggeredWorkflow>) {
        *self.workflows.lock().unwrap_or_else(|p| p.into_inner()) = workflows;
        self.changed.send_modify(|n| *n += 1);
    }
}

#[async_trait::async_trait]
impl WorkflowFeed for FixedFeed {
    async fn triggered(&self, _state: &AppState) -> ApiResult<Vec<TriggeredWorkflow>> {
        Ok(self
            .workflows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The registered sources: their valid workflows that declare a trigger, as of their last
/// fetch.
#[async_trait::async_trait]
impl WorkflowFeed for crate::sources::Sources {
    async fn triggered(&self, state: &AppState) -> ApiResult<Vec<TriggeredWorkflow>> {
        Ok(crate::sources::Sources::triggered(self, state)
            .await?
            .into_iter()
            .filter_map(|w| {
                Some(TriggeredWorkflow {
                    validated: w.validated.ok()?.as_ref().clone(),
                    source: w.source,
                    path: w.path,
                    owner: w.owner,
                    workspace: w.workspace,
                })
            })
            .collect())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        crate::sources::Sources::changes(self)
    }
}
