//! Error types. Nothing here ever holds an API key: provider bodies are redacted before they are
//! stored (see `provider::redact_body`).

use std::time::Duration;

/// A pattern file (`patterns/*.toml`) is malformed or one of its self-tests fails.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("{file}: not valid TOML for the pattern schema: {message}")]
    Parse { file: &'static str, message: String },
    #[error("{file}: unsupported version {found} (expected 1)")]
    Version { file: &'static str, found: u32 },
    #[error("{file}: pattern `{id}`: invalid regex: {message}")]
    Regex {
        file: &'static str,
        id: String,
        message: String,
    },
    #[error("{file}: duplicate pattern id `{id}`")]
    DuplicateId { file: &'static str, id: String },
    #[error("{file}: pattern `{id}`: {message}")]
    Invalid {
        file: &'static str,
        id: String,
        message: String,
    },
    /// Examples that were not matched or counter-examples that were, all of them at once.
    #[error("{file}: pattern self-test failed:
  {}", failures.join("
  "))]
    SelfTest {
        file: &'static str,
        failures: Vec<String>,
    },
}

/// Why one provider attempt failed. `falls_back()` decides whether the chain moves on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderError {
    #[error("rate limited (HTTP 429){}", retry_after_text(*retry_after))]
    RateLimited {
        #[serde(serialize_with = "ser_opt_duration")]
        retry_after: Option<Duration>,
    },
    #[error("provider overloaded (HTTP {status})")]
    Overloaded { status: u16 },
    #[error("provider server error (HTTP {status}): {body}")]
    Server { status: u16, body: String },
    #[error("authentication rejected (HTTP {status}): {body}")]
    Auth { status: u16, body: String },
    #[error("bad request (HTTP {status}): {body}")]
    BadRequest { status: u16, body: String },
    #[error("unexpected HTTP status {status}: {body}")]
    UnexpectedStatus { status: u16, body: String },
    #[error("timed out after {}ms", .after.as_millis())]
    Timeout {
        #[serde(serialize_with = "ser_duration")]
        after: Duration,
    },
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("response could not be decoded: {0}")]
    Decode(String),
    #[error("no API key configured ({var} is unset)")]
    MissingKey { var: &'static str },
}

impl ProviderError {
    /// A 400 (or another unexpected 4xx) means our request is wrong, which the next provider will
    /// not fix: surface it instead of spending money and leaking the prompt further.
    pub fn falls_back(&self) -> bool {
        match self {
            Self::RateLimited { .. }
            | Self::Overloaded { .. }
            | Self::Server { .. }
            | Self::Auth { .. }
            | Self::Timeout { .. }
            | Self::Connect(_)
            | Self::MissingKey { .. }
            // A garbled reply is that provider's problem; another provider may answer fine.
            | Self::Decode(_) => true,
            Self::BadRequest { .. } | Self::UnexpectedStatus { .. } => false,
        }
    }
}

fn retry_after_text(d: Option<Duration>) -> String {
    d.map(|d| format!(", retry after {}s", d.as_secs_f32()))
        .unwrap_or_default()
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// The chain as a whole failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("no provider is configured")]
    NoProviders,
    #[error("{provider} rejected the request and falling back would not help: {error}")]
    Fatal {
        provider: String,
        error: ProviderError,
        /// Every attempt made, including the fatal one.
        attempts: Vec<crate::chain::Attempt>,
    },
    #[error("{provider} failed after part of the reply was streamed (no fallback): {error}")]
    StreamInterrupted {
        provider: String,
        error: ProviderError,
        attempts: Vec<crate::chain::Attempt>,
    },
    #[error("every provider failed ({} attempts); last: {}", attempts.len(), last_error(attempts))]
    Exhausted {
        attempts: Vec<crate::chain::Attempt>,
    },
    #[error("token budget exhausted: {used} of {budget} tokens used")]
    BudgetExhausted {
        used: u64,
        budget: u64,
        attempts: Vec<crate::chain::Attempt>,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Patterns(#[from] PatternError),
}

fn last_error(attempts: &[crate::chain::Attempt]) -> String {
    attempts
        .last()
        .and_then(|a| a.error.as_ref())
        .map(|e| e.to_string())
        .unwrap_or_else(|| "none".into())
}

impl LlmError {
    /// The attempts made before the failure (empty for configuration errors).
    pub fn attempts(&self) -> &[crate::chain::Attempt] {
        match self {
            Self::Fatal { attempts, .. }
            | Self::StreamInterrupted { attempts, .. }
            | Self::Exhausted { attempts }
            | Self::BudgetExhausted { attempts, .. } => attempts,
            _ => &[],
        }
    }
}
