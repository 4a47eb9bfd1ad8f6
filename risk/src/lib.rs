//! Risk tiers and the heuristic classifier for commands.
//!
//! This crate knows nothing about workflows: it answers "how dangerous is this command?" with a
//! tier and the rule that decided it. The engine combines that with the action kind's floor and
//! the author's `risk:` override.

mod tier;

pub use tier::Tier;

/// The outcome of classifying one command: the tier and which rule set it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    pub tier: Tier,
    /// Stable identifier of the rule that set the tier (e.g. `rm-recursive`), or `default`.
    pub rule: String,
    /// Human explanation, shown by `validate --explain` and at approval prompts.
    pub reason: String,
}

/// Classify a shell command line. Placeholder until the rule engine lands: everything is
/// `low_write` so nothing dangerous is ever under-rated by omission.
pub fn classify_shell(command: &str) -> Assessment {
    let _ = command;
    Assessment {
        tier: Tier::LowWrite,
        rule: "default".into(),
        reason: "shell command (classifier not loaded)".into(),
    }
}
