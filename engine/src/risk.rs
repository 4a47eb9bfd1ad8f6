//! A node's risk tier, decided here and only here: from its action before templating (at
//! validation), then from what will really run (after templating, just before the step
//! starts), where the optional command risk model may raise it, never lower it.
//!
//! The shell classifier and its rules are the `risk` crate's (data: `risk/rules/shell.toml`);
//! the model is the `llm` crate's. This module is the policy that combines them.

use serde::Serialize;

use crate::model::{ActionKind, Step, Tier};

/// A node's risk tier and the rule that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRisk {
    pub tier: Tier,
    pub rule: String,
    pub reason: String,
    /// `approve: true`: pause whatever the tier.
    pub forced_approval: bool,
}

impl NodeRisk {
    pub fn needs_approval(&self) -> bool {
        self.forced_approval || self.tier.needs_approval()
    }
}

/// The tier an action gets before the author's `risk:` and `approve:` are applied; `shell` is
/// the step's command (with template expressions replaced by placeholders at validation).
pub fn computed_risk(step: &Step, shell: &str) -> NodeRisk {
    let plain = |tier, rule: &str, reason: &str| NodeRisk {
        tier,
        rule: rule.into(),
        reason: reason.into(),
        forced_approval: false,
    };
    let mut risk = match step.kind() {
        ActionKind::Read => plain(
            Tier::ReadOnly,
            "action:read",
            "reads files in the workspace",
        ),
        ActionKind::Write => plain(
            Tier::LowWrite,
            "action:write",
            "writes a file in the workspace",
        ),
        ActionKind::Patch => plain(
            Tier::LowWrite,
            "action:patch",
            "patches a file in the workspace",
        ),
        ActionKind::Http => plain(
            Tier::NetworkEgress,
            "action:http",
            "makes a network request",
        ),
        ActionKind::Shell => {
            let a = secureclaw_risk::classify_shell(shell);
            NodeRisk {
                tier: a.tier,
                rule: a.rule,
                reason: a.reason,
                forced_approval: false,
            }
        }
    };
    if !step.network.is_empty() && risk.tier < Tier::NetworkEgress {
        risk = NodeRisk {
            tier: Tier::NetworkEgress,
            rule: "network-allowlist".into(),
            reason: format!("may reach {}", step.network.join(", ")),
            forced_approval: false,
        };
    }
    risk
}

/// The node's tier: the computed one, raised (never lowered) by the author's `risk:`, with
/// `approve: true` forcing a pause whatever the tier.
pub fn node_risk(step: &Step, computed: NodeRisk) -> NodeRisk {
    let mut risk = computed;
    if let Some(declared) = step.risk
        && declared > risk.tier
    {
        risk = NodeRisk {
            tier: declared,
            rule: "author:risk".into(),
            reason: "raised by the workflow author".into(),
            forced_approval: false,
        };
    }
    risk.forced_approval = step.approve;
    risk
}

/// The tier of what will really run: templating can make a command more dangerous than its
/// template looked, and the model (feature `ml`) may find it close to a dangerous exemplar.
/// Only ever raises `static_risk`; a model failure leaves the heuristic tier standing.
pub fn effective_risk(
    static_risk: &NodeRisk,
    rendered_shell: Option<&str>,
    model: Option<&secureclaw_llm::CommandRiskModel>,
) -> NodeRisk {
    let mut risk = static_risk.clone();
    let Some(command) = rendered_shell else {
        return risk;
    };
    let a = secureclaw_risk::classify_shell(command);
    if a.tier > risk.tier {
        risk = NodeRisk {
            tier: a.tier,
            rule: a.rule,
            reason: format!("{} (after templating)", a.reason),
            forced_approval: static_risk.forced_approval,
        };
    }
    let heuristic = secureclaw_llm::ModelTier::parse(risk.tier.as_str());
    if let (Some(model), Some(heuristic)) = (model, heuristic)
        && let Ok(Some(raise)) = model.assess(command, heuristic)
        && let Some(tier) = Tier::parse(raise.tier.as_str())
        && tier > risk.tier
    {
        risk = NodeRisk {
            tier,
            rule: "risk-model".into(),
            reason: format!(
                "the risk model finds it close to `{}` (similarity {:.2}, margin {:.2})",
                raise.exemplar_text, raise.score, raise.margin
            ),
            forced_approval: static_risk.forced_approval,
        };
    }
    risk
}
