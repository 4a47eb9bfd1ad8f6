//! Parked runs: a run that reaches an approval gate nobody can answer now is saved, not
//! finished, and continues later, in this process or another, after a restart.
//!
//! An approval binds to a hash of exactly what the approver saw (the step, its rendered action,
//! tier, rule, reason and network); if any of it differs when the run resumes, the decision
//! does not apply and approval is asked again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;

use crate::policy::ApprovalRequest;
use crate::snapshot::Manifest;
use crate::template::StepView;

/// A gate the run is waiting at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingApproval {
    pub request: ApprovalRequest,
    /// [`request_hash`] of the request.
    pub hash: String,
}

/// An approver's answer for one step of a parked run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepDecision {
    pub step: String,
    pub approved: bool,
    pub by: String,
    /// The request hash the approver answered.
    pub hash: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Everything a parked run needs to continue. Sealed in the store like every other row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParkState {
    pub run_id: String,
    /// The workflow text as submitted (validated again on resume).
    pub workflow_source: String,
    pub workflow_file: PathBuf,
    /// The inputs as given, secrets included (the record keeps them scrubbed).
    pub inputs: BTreeMap<String, Value>,
    /// What templates saw of each finished step, unscrubbed.
    pub views: BTreeMap<String, StepView>,
    pub pending: Vec<PendingApproval>,
    /// The workspace when the run parked (runs with writing steps): resume refuses to go on
    /// over changes made since, unless forced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    pub write_seq: u32,
    /// How the run was submitted (backend, limits, policy), as the session recorded it.
    pub request: Value,
    pub parked_at: String,
}

/// The hash an approval binds to.
pub fn request_hash(req: &ApprovalRequest) -> String {
    let canonical = serde_json::json!({
        "step": req.step,
        "tier": req.tier,
        "rule": req.rule,
        "reason": req.reason,
        "summary": req.summary,
        "network": req.network,
    });
    hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()))
}

/// The store key of a decision.
pub fn decision_key(run_id: &str, step: &str) -> String {
    format!("{run_id}/{step}")
}
