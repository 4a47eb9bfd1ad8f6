//! secureclaw's LLM layer: providers with a fallback chain, a PII/secret scrubber for what leaves
//! the machine, and a prompt-injection detector for untrusted text. See docs/llm.md.
//!
//! - [`FallbackChain`] over [`HttpProvider`]s (Anthropic Messages, OpenAI Chat Completions,
//!   Ollama `/api/chat`), configured by [`LlmConfig::from_env`].
//! - [`Scrubber`] (patterns in `patterns/pii.toml`) with a [`Restorer`] for the reply.
//! - [`Detector`] (unicode + regex layers, patterns in `patterns/injection.toml`); more layers plug
//!   in through [`DetectorLayer`].
//! - [`Guards`] bundles the pre-call checks the planner runs on an instruction.

pub mod chain;
pub mod config;
pub mod detect;
pub mod error;
pub mod guards;
pub mod normalize;
pub mod provider;
pub mod scrub;

pub use chain::{Attempt, AttemptOutcome, ChainResult, FallbackChain, TokenBudget, scrub_request};
pub use config::{ApiKey, LlmConfig, ProviderConfig, ProviderKind};
pub use detect::{Detector, DetectorLayer, Finding, RegexLayer, UnicodeLayer, Verdict};
pub use error::{LlmError, PatternError, ProviderError};
pub use guards::{Guards, PreparedInput};
pub use normalize::{Normalized, normalize};
pub use provider::{ChatRequest, Completion, HttpProvider, Message, Provider, Role, Usage};
pub use scrub::{PiiKind, PiiMatch, Restorer, ScrubSession, Scrubber};
