// A library reports through return values (errors, warnings, traces); the caller decides what
// reaches the terminal. Unit tests may print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

//! Risk tiers and the heuristic classifier for commands.
//!
//! This crate knows nothing about workflows: it answers "how dangerous is this command?" with a
//! tier and the rules that decided it. The engine combines that with the action kind's floor and
//! the author's `risk:` override.
//!
//! Shell commands are parsed with `brush-parser` and every command the line could run (pipeline
//! stages, `&&`/`||` lists, subshells, `$( )`, `bash -c` strings, `sudo`/`xargs`/`find -exec`
//! wrappers...) is matched against the rules in `rules/shell.toml`. The highest tier wins; every
//! matching rule is kept in [`Assessment::matched`].

mod analyze;
mod rules;
mod tier;
mod words;

use std::path::Path;
use std::sync::LazyLock;

pub use rules::RulesError;
pub use tier::{Tier, UnknownTier};

/// The reviewed rules compiled into the binary.
pub const EMBEDDED_RULES: &str = include_str!("../rules/shell.toml");

/// One rule that matched part of a command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleHit {
    /// Stable rule id from the rules file (e.g. `rm-recursive`).
    pub rule: String,
    pub tier: Tier,
    /// Human explanation from the rules file.
    pub reason: String,
    /// The part of the command line the rule matched (one simple command or redirection).
    pub command: String,
}

/// The outcome of classifying one command: the tier and which rule set it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    pub tier: Tier,
    /// Stable identifier of the rule that set the tier (e.g. `rm-recursive`), or `default`.
    pub rule: String,
    /// Human explanation, shown by `validate --explain` and at approval prompts.
    pub reason: String,
    /// Every rule that matched, in command order. A command can be both destructive and
    /// network egress (`curl ... | sh`); `tier` is the highest, this list keeps the rest.
    #[serde(default)]
    pub matched: Vec<RuleHit>,
}

impl Assessment {
    /// Whether any matched rule has exactly this tier (e.g. a `network_egress` command that
    /// also deletes).
    pub fn has_tier(&self, tier: Tier) -> bool {
        self.tier == tier || self.matched.iter().any(|h| h.tier == tier)
    }

    fn from_hits(mut hits: Vec<RuleHit>) -> Assessment {
        let mut seen = std::collections::HashSet::new();
        hits.retain(|h| seen.insert((h.rule.clone(), h.command.clone())));
        // First hit of the highest tier, so the headline rule is the earliest reason to worry.
        let top = hits
            .iter()
            .fold(None::<&RuleHit>, |best, h| match best {
                Some(b) if b.tier >= h.tier => Some(b),
                _ => Some(h),
            })
            .cloned();
        match top {
            Some(top) => Assessment {
                tier: top.tier,
                rule: top.rule,
                reason: top.reason,
                matched: hits,
            },
            None => Assessment {
                tier: Tier::ReadOnly,
                rule: "empty".into(),
                reason: "nothing to run".into(),
                matched: hits,
            },
        }
    }
}

/// Facts about the real workspace the caller may know; everything is optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// The host directory mounted as the workspace. When set, `> file` onto a file that already
    /// exists there is rated as a destructive truncation.
    pub workspace_dir: Option<&'a Path>,
}

/// A classifier built from a rules file.
#[derive(Debug)]
pub struct Classifier {
    rules: rules::RuleSet,
}

impl Classifier {
    /// Parse and validate a rules file (the schema is documented in `docs/risk.md`).
    pub fn from_rules(text: &str) -> Result<Classifier, RulesError> {
        Ok(Classifier {
            rules: rules::RuleSet::parse(text)?,
        })
    }

    /// The classifier for [`EMBEDDED_RULES`], built once.
    pub fn embedded() -> Result<&'static Classifier, &'static RulesError> {
        static EMBEDDED: LazyLock<Result<Classifier, RulesError>> =
            LazyLock::new(|| Classifier::from_rules(EMBEDDED_RULES));
        EMBEDDED.as_ref()
    }

    /// Classify a shell command line (may contain newlines, pipes, lists, ...).
    pub fn classify(&self, command: &str) -> Assessment {
        self.classify_in(command, &Context::default())
    }

    /// Like [`Classifier::classify`], with facts about the real workspace.
    pub fn classify_in(&self, command: &str, context: &Context<'_>) -> Assessment {
        let mut analyzer = analyze::Analyzer::new(&self.rules, context.workspace_dir);
        if command.trim().is_empty() {
            analyzer.builtin("empty", command, None);
        } else {
            analyzer.source(command);
        }
        if analyzer.hits.is_empty() {
            analyzer.builtin("empty", command.trim(), None);
        }
        Assessment::from_hits(analyzer.hits)
    }

    /// Classify a file write by the engine's `write`/`patch` actions to `path`
    /// (workspace-relative or absolute).
    pub fn classify_path_write(&self, path: &str) -> Assessment {
        let mut analyzer = analyze::Analyzer::new(&self.rules, None);
        // Quote the path so it is taken literally, then rate it as a plain output redirection.
        let quoted = format!(": >'{}'", path.replace('\'', "'\\''"));
        analyzer.source(&quoted);
        let hits: Vec<RuleHit> = analyzer
            .hits
            .into_iter()
            .filter(|h| h.rule != "redirect-truncate-bare")
            .collect();
        if hits.is_empty() {
            let (rule, tier, reason) = self.rules.builtin("default");
            return Assessment::from_hits(vec![RuleHit {
                rule: rule.into(),
                tier,
                reason: reason.into(),
                command: path.into(),
            }]);
        }
        Assessment::from_hits(hits)
    }
}

fn rules_unavailable(err: &RulesError, what: &str) -> Assessment {
    // Unreachable in a tested build (the embedded file is validated by a unit test); if it ever
    // happens, refuse to under-rate anything.
    Assessment {
        tier: Tier::Destructive,
        rule: "rules-invalid".into(),
        reason: format!("embedded risk rules failed to load: {err}"),
        matched: vec![RuleHit {
            rule: "rules-invalid".into(),
            tier: Tier::Destructive,
            reason: format!("embedded risk rules failed to load: {err}"),
            command: what.into(),
        }],
    }
}

/// Classify a shell command line with the embedded rules.
pub fn classify_shell(command: &str) -> Assessment {
    match Classifier::embedded() {
        Ok(c) => c.classify(command),
        Err(e) => rules_unavailable(e, command),
    }
}

/// Classify a write of the engine's `write`/`patch` actions to `path` with the embedded rules.
pub fn classify_path_write(path: &str) -> Assessment {
    match Classifier::embedded() {
        Ok(c) => c.classify_path_write(path),
        Err(e) => rules_unavailable(e, path),
    }
}
