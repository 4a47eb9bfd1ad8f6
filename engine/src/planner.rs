//! The planner: an instruction in plain words → a validated workflow, through an LLM.
//!
//! Flow: guards on the instruction (injection → refuse; secrets → placeholders), a prompt that
//! carries the workflow JSON Schema, the policy and examples, the reply's YAML through the
//! engine's full validation, and bounded repair rounds that quote the located errors back.
//! Placeholders are restored locally, so the returned YAML holds the real values while the
//! provider only ever saw `<SECRET_n>`.

use std::path::Path;
use std::sync::OnceLock;

use secureclaw_llm::{
    Attempt, ChatRequest, FallbackChain, Finding, Guards, LlmError, Message, ScrubSession,
    TokenBudget, Usage,
};
use sha2::{Digest as _, Sha256};

use crate::validate::{Validated, validate_bytes};

/// The system prompt template; `{schema}` and `{example_*}` are filled in once.
const SYSTEM_TEMPLATE: &str = include_str!("planner/system.md");
const EXAMPLE_HELLO: &str = include_str!("../../examples/hello/workflow.yaml");
const EXAMPLE_ROTATE: &str = include_str!("../../examples/rotate-logs/workflow.yaml");

/// The file name diagnostics are located against (the plan has no file until it is written).
pub const PLAN_FILE_NAME: &str = "plan.yaml";

/// Default output allowance per call; a workflow is small, a repair round repeats it.
const MAX_TOKENS: u32 = 4096;

/// The full system prompt (schema, policy, examples).
pub fn system_prompt() -> &'static str {
    static PROMPT: OnceLock<String> = OnceLock::new();
    PROMPT.get_or_init(|| {
        // Plain replacement, not `format!`: the schema and the examples are full of braces.
        SYSTEM_TEMPLATE
            .replace("{schema}", &crate::model::workflow_schema_text())
            .replace("{example_hello}", &with_newline(EXAMPLE_HELLO))
            .replace("{example_rotate}", &with_newline(EXAMPLE_ROTATE))
    })
}

fn with_newline(s: &str) -> String {
    let mut s = s.to_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// A validated plan and where it came from.
#[derive(Debug)]
pub struct Plan {
    /// The workflow, placeholders restored to the real values.
    pub yaml: String,
    pub validated: Validated,
    /// Provider and model that produced the accepted reply.
    pub provider: String,
    pub model: String,
    /// SHA-256 (hex) of the system prompt and the first user message as sent.
    pub prompt_sha256: String,
    /// Calls made: 1 when the first answer was valid.
    pub rounds: u32,
    /// Tokens over all rounds.
    pub usage: Usage,
    /// Every provider attempt over all rounds.
    pub attempts: Vec<Attempt>,
    /// Placeholder names that stood in for secrets in what was sent.
    pub placeholders: Vec<String>,
}

impl Plan {
    /// SHA-256 (hex) of the YAML as returned.
    pub fn yaml_sha256(&self) -> String {
        sha256_hex(self.yaml.as_bytes())
    }

    /// Provenance for the ledger (`plan_created`): no workflow text, no secrets.
    pub fn provenance(&self) -> serde_json::Value {
        serde_json::json!({
            "provider": self.provider,
            "model": self.model,
            "prompt_sha256": self.prompt_sha256,
            "rounds": self.rounds,
            "usage": self.usage,
            "yaml_sha256": self.yaml_sha256(),
            "workflow": self.validated.workflow.name,
            "placeholders": self.placeholders,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "refused: the instruction looks like a prompt injection (score {score:.2}); nothing was sent\n{details}"
    )]
    Injection { score: f32, details: String },
    #[error("the instruction is empty")]
    EmptyInstruction,
    #[error("the LLM call failed in round {round}: {source}")]
    Llm {
        round: u32,
        #[source]
        source: LlmError,
    },
    #[error(
        "no valid workflow after {rounds} round(s) ({repairs} repair(s)); last errors:\n{errors}"
    )]
    Invalid {
        rounds: u32,
        repairs: u32,
        /// The located errors of the last reply (Display of `Diagnostics`).
        errors: String,
        /// The last YAML received (restored).
        yaml: String,
        usage: Usage,
    },
}

impl PlanError {
    /// True when the error is the planner refusing the input, as opposed to failing at the task.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Injection { .. } | Self::EmptyInstruction)
    }

    /// True when planning stopped at the caller's token budget: the caller's limit was too
    /// small, no provider failed.
    pub fn is_budget_exhausted(&self) -> bool {
        matches!(
            self,
            Self::Llm {
                source: LlmError::BudgetExhausted { .. },
                ..
            }
        )
    }
}

/// Turns instructions into validated workflows.
/// The planner could not be set up from the environment.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlannerSetupError(pub String);

pub struct Planner {
    chain: FallbackChain,
    guards: Guards,
    budget: Option<u64>,
    max_tokens: u32,
}

impl Planner {
    pub fn new(chain: FallbackChain, guards: Guards) -> Self {
        Self {
            chain,
            guards,
            budget: None,
            max_tokens: MAX_TOKENS,
        }
    }

    /// Cap the tokens one `plan` call may spend over all its rounds.
    /// The planner the environment configures (`LLM_PROVIDER`, keys, models, guard
    /// switches), with the semantic injection layer when its model files are installed.
    /// Returns the semantic layer's status line with it.
    pub fn from_env() -> Result<(Self, String), PlannerSetupError> {
        let cfg = secureclaw_llm::LlmConfig::from_env()
            .map_err(|e| PlannerSetupError(format!("reading the LLM configuration: {e}")))?;
        let chain = FallbackChain::from_config(&cfg)
            .map_err(|e| PlannerSetupError(format!("setting up the LLM providers: {e}")))?;
        let guards = Guards::from_config(&cfg)
            .map_err(|e| PlannerSetupError(format!("loading the prompt guards: {e}")))?;
        let (guards, semantic) = guards.with_semantic();
        Ok((Planner::new(chain, guards), semantic.summary()))
    }

    pub fn with_token_budget(mut self, limit: u64) -> Self {
        self.budget = Some(limit);
        self
    }

    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// Plan `instruction`: one call, then up to `max_repairs` repair rounds.
    pub async fn plan(&self, instruction: &str, max_repairs: u32) -> Result<Plan, PlanError> {
        if instruction.trim().is_empty() {
            return Err(PlanError::EmptyInstruction);
        }
        // Refuse before anything leaves the machine.
        if let Some(detector) = &self.guards.detector {
            let verdict = detector.scan(instruction);
            if verdict.flagged {
                return Err(PlanError::Injection {
                    score: verdict.score,
                    details: describe_findings(&verdict.findings),
                });
            }
        }
        // One session for the whole conversation: the same secret keeps the same placeholder in
        // the instruction, the errors and the YAML sent back, and one restorer covers them all.
        let mut session: Option<ScrubSession<'static>> = self.guards.scrubber.map(|s| s.session());

        let system = system_prompt().to_owned();
        let first = format!(
            "Instruction:\n{}\n\nReply with the workflow as one ```yaml block.",
            scrub_with(&mut session, instruction)
        );
        let prompt_sha256 = {
            let mut h = Sha256::new();
            h.update(system.as_bytes());
            // A separator byte so (system, user) pairs cannot collide by shifting text.
            h.update([0u8]);
            h.update(first.as_bytes());
            hex::encode(h.finalize())
        };
        let mut req = ChatRequest::new(Some(system), first);
        req.max_tokens = self.max_tokens;
        // Planning should be repeatable, not creative.
        req.temperature = Some(0.0);

        let mut budget = match self.budget {
            Some(l) => TokenBudget::new(l),
            None => TokenBudget::unlimited(),
        };
        let mut usage = Usage::default();
        let mut attempts = Vec::new();
        let mut round = 0u32;
        loop {
            round += 1;
            let res = self
                .chain
                .complete(&req, &mut budget)
                .await
                .map_err(|source| PlanError::Llm { round, source })?;
            usage.add(res.usage);
            attempts.extend(res.attempts.iter().cloned());
            let reply = res.completion.text;
            let sent_yaml = extract_yaml(&reply);
            let restorer = session.as_ref().map(|s| s.restorer());
            let yaml = match restorer {
                Some(r) => r.restore(&sent_yaml),
                None => sent_yaml.clone(),
            };
            match validate_bytes(Path::new(PLAN_FILE_NAME), yaml.as_bytes()) {
                Ok(validated) => {
                    return Ok(Plan {
                        yaml,
                        validated,
                        provider: res.provider.name().to_owned(),
                        model: res.completion.model,
                        prompt_sha256,
                        rounds: round,
                        usage,
                        attempts,
                        placeholders: session
                            .as_ref()
                            .map(|s| s.restorer().placeholders())
                            .unwrap_or_default(),
                    });
                }
                Err(diags) => {
                    let errors = diags.to_string();
                    let repairs = round - 1;
                    if repairs >= max_repairs {
                        return Err(PlanError::Invalid {
                            rounds: round,
                            repairs,
                            errors,
                            yaml,
                            usage,
                        });
                    }
                    // The errors are computed on the restored YAML and may quote a secret:
                    // scrub them (same session, same placeholders) before they are sent.
                    let repair = format!(
                        "The workflow you wrote does not validate. The engine reported:\n\n{}\n\n\
                         Your workflow was:\n\n```yaml\n{}\n```\n\n\
                         Fix every error and reply with the whole corrected workflow as one \
                         ```yaml block.",
                        scrub_with(&mut session, &errors),
                        sent_yaml.trim_end()
                    );
                    req.messages.push(Message::assistant(reply));
                    req.messages.push(Message::user(repair));
                }
            }
        }
    }
}

fn scrub_with(session: &mut Option<ScrubSession<'static>>, text: &str) -> String {
    match session.as_mut() {
        Some(s) => s.scrub(text),
        None => text.to_owned(),
    }
}

/// One line per finding: layer, pattern, matched text.
fn describe_findings(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "  {} layer, pattern `{}`, matched {:?} (score {:.2})",
                f.layer, f.pattern_id, f.matched, f.score
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What to set when no LLM provider is configured (the variables, and the Ollama address that
/// was tried); `None` when a provider key is set or the configuration cannot be read.
pub fn provider_setup_hint() -> Option<String> {
    secureclaw_llm::config::LlmConfig::from_env()
        .ok()
        .and_then(|c| c.setup_hint())
}

/// The YAML in a reply: the first ```yaml (or ```yml) block, else the first fenced block, else
/// the whole reply (a bare document, minus any prose before `version:` or `---`).
pub fn extract_yaml(reply: &str) -> String {
    if let Some(body) = fenced(reply, &["yaml", "yml"]) {
        return body;
    }
    if let Some(body) = fenced(reply, &[""]) {
        return body;
    }
    let lines: Vec<&str> = reply.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == "---" || l.starts_with("version:"))
        .unwrap_or(0);
    let mut out = lines[start..].join("\n");
    out.push('\n');
    out
}

/// The body of the first fence whose info string is one of `langs` ("" = any language).
fn fenced(reply: &str, langs: &[&str]) -> Option<String> {
    let mut lines = reply.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let Some(info) = t.strip_prefix("```") else {
            continue;
        };
        let info = info.trim().to_ascii_lowercase();
        let wanted = langs.iter().any(|l| l.is_empty() || info == *l);
        if !wanted {
            continue;
        }
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                return Some(body);
            }
            body.push_str(l);
            body.push('\n');
        }
        // An unclosed fence (reply cut off): take what came.
        return Some(body);
    }
    None
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_fenced_yaml() {
        let r = "Here you go:\n```yaml\nversion: 1\nname: x\n```\nDone.";
        assert_eq!(extract_yaml(r), "version: 1\nname: x\n");
        let r = "```\nversion: 1\n```";
        assert_eq!(extract_yaml(r), "version: 1\n");
        let r = "Sure.\nversion: 1\nname: x";
        assert_eq!(extract_yaml(r), "version: 1\nname: x\n");
    }

    #[test]
    fn prompt_carries_schema_and_examples() {
        let p = system_prompt();
        assert!(p.contains("\"$schema\"") || p.contains("\"properties\""));
        assert!(p.contains("name: hello"));
        assert!(p.contains("name: rotate-logs"));
        assert!(!p.contains("{schema}"));
    }

    #[test]
    fn examples_in_the_prompt_validate() {
        for ex in [EXAMPLE_HELLO, EXAMPLE_ROTATE] {
            assert!(validate_bytes(Path::new("ex.yaml"), ex.as_bytes()).is_ok());
        }
    }
}
