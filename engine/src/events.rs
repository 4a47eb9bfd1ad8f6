//! Progress events of a run, for the terminal display and `--json` consumers.

use serde::Serialize;

use crate::model::Tier;
use crate::record::{RunState, StepState};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        workflow: String,
        steps: usize,
        backend: String,
        isolated: bool,
    },
    StepStarted {
        step: String,
        attempt: u32,
        tier: Tier,
        summary: String,
    },
    StepRetrying {
        step: String,
        attempt: u32,
        delay_ms: u64,
        reason: String,
    },
    StepFinished {
        step: String,
        state: StepState,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    ApprovalNeeded {
        step: String,
        tier: Tier,
        rule: String,
        reason: String,
        summary: String,
    },
    Warning {
        message: String,
    },
    RunFinished {
        run_id: String,
        state: RunState,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

/// Receives events as they happen. Must be cheap: it is called from the scheduler loop.
pub type EventSink = std::sync::Arc<dyn Fn(&RunEvent) + Send + Sync>;

pub fn discard() -> EventSink {
    std::sync::Arc::new(|_| {})
}
