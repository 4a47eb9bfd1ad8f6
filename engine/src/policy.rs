//! Policy: which nodes run unattended, which pause, and what an approval covers.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::Serialize;

use crate::model::Tier;

/// Engine-wide policy knobs (from config, env, flags).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Tiers approved up front (`--approve destructive,network_egress`, or all with `--yes`).
    pub pre_approved: BTreeSet<Tier>,
    /// Also pre-approve steps marked `approve: true`.
    pub approve_forced: bool,
    /// Whether the unisolated `host` backend may be used at all.
    pub allow_host: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            pre_approved: BTreeSet::new(),
            approve_forced: false,
            allow_host: true,
        }
    }
}

impl Policy {
    pub fn yes() -> Self {
        Policy {
            pre_approved: Tier::ALL.into_iter().collect(),
            approve_forced: true,
            allow_host: true,
        }
    }

    pub fn covers(&self, tier: Tier, forced: bool) -> bool {
        (!tier.needs_approval() || self.pre_approved.contains(&tier))
            && (!forced || self.approve_forced)
    }
}

/// What an approver is shown.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ApprovalRequest {
    pub step: String,
    pub tier: Tier,
    pub rule: String,
    pub reason: String,
    /// The rendered action: the exact command, path or URL.
    pub summary: String,
    pub network: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approved {
        by: String,
    },
    Denied {
        by: String,
    },
    /// Nobody can be asked (no terminal): the run must stop here.
    Unavailable,
}

#[async_trait]
pub trait Approver: Send + Sync {
    async fn decide(&self, request: &ApprovalRequest) -> Decision;
}

/// Used when there is no terminal to ask.
pub struct NoApprover;

#[async_trait]
impl Approver for NoApprover {
    async fn decide(&self, _: &ApprovalRequest) -> Decision {
        Decision::Unavailable
    }
}
