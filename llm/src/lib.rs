// A library reports through return values (errors, warnings, traces); the caller decides what
// reaches the terminal. Unit tests may print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

//! secureclaw's LLM layer: providers with a fallback chain, a PII/secret scrubber for what leaves
//! the machine, and a prompt-injection detector for untrusted text. See docs/llm.md.
//!
//! - [`FallbackChain`] over [`HttpProvider`]s (Anthropic Messages, OpenAI Chat Completions,
//!   Ollama `/api/chat`), configured by [`LlmConfig::from_env`].
//! - [`Scrubber`] (patterns in `patterns/pii.toml`) with a [`Restorer`] for the reply.
//! - [`Detector`] (unicode + regex layers, patterns in `patterns/injection.toml`); more layers plug
//!   in through [`DetectorLayer`]. With feature `ml`, [`attach_semantic`] adds the semantic layer
//!   (MiniLM through ONNX Runtime, model files from `scripts/setup-models.sh`, see [`semantic`]);
//!   without it, or without the files, it says why and the other layers work alone.
//! - [`CommandRiskModel`] (feature `ml`): may raise, never lower, the engine's command risk tiers.
//! - [`Guards`] bundles the pre-call checks the planner runs on an instruction.

#[cfg(feature = "ml")]
pub mod cascade;
pub mod chain;
#[cfg(feature = "ml")]
pub mod classifier;
pub mod config;
pub mod detect;
#[cfg(feature = "ml")]
pub mod embed;
pub mod error;
pub mod guards;
pub mod lexical;
pub mod models;
pub mod normalize;
pub mod provider;
pub mod risk_model;
pub mod scrub;
pub mod semantic;
pub mod units;

pub use chain::{Attempt, AttemptOutcome, ChainResult, FallbackChain, TokenBudget, scrub_request};
pub use config::{ApiKey, LlmConfig, ProviderConfig, ProviderKind};
pub use detect::{Detector, DetectorLayer, Finding, RegexLayer, UnicodeLayer, Verdict};
pub use error::{LlmError, PatternError, ProviderError};
pub use guards::{Guards, PreparedInput};
pub use lexical::{LexicalLayer, LexicalModel};
pub use models::{ModelError, ModelFiles};
pub use normalize::{Normalized, normalize};
pub use provider::{ChatRequest, Completion, HttpProvider, Message, Provider, Role, Usage};
pub use risk_model::{CommandRiskModel, ModelTier, RiskModelStatus, RiskRaise, load_risk_model};
pub use scrub::{PiiKind, PiiMatch, Restorer, ScrubSession, Scrubber};
pub use semantic::{SemanticStatus, attach as attach_semantic};
