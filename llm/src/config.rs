//! Provider configuration from the documented environment variables.

use std::fmt;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::LlmError;

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Anthropic,
    OpenAi,
    Ollama,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [Self::Anthropic, Self::OpenAi, Self::Ollama];

    pub fn name(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::OpenAi => "openai",
            Self::Ollama => "ollama",
        }
    }

    /// Accepts the documented spellings (`claude`, `openai`, `ollama`) and the vendor names.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "claude" | "anthropic" => Some(Self::Anthropic),
            "openai" | "gpt" | "chatgpt" => Some(Self::OpenAi),
            "ollama" | "local" => Some(Self::Ollama),
            _ => None,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An API key. Its `Debug` and `Display` never show the value, and it is zeroed on drop, so a key
/// cannot reach a log, an error or a result by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The value, for the one place that needs it: the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One provider: where it is, which model, which key.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: String,
    pub model: String,
    pub api_key: Option<ApiKey>,
}

/// Everything the provider layer reads from the environment.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Providers in the order they are tried; `LLM_PROVIDER` comes first.
    pub providers: Vec<ProviderConfig>,
    /// Whole-request timeout per attempt (`LLM_TIMEOUT_SECONDS`, default 60).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Longest `retry-after` we wait for before retrying the same provider; longer ones move on
    /// (`LLM_RETRY_AFTER_CAP_SECONDS`, default 10).
    pub retry_after_cap: Duration,
    /// Retries of one provider after a 429 with an acceptable `retry-after` (default 1).
    pub max_rate_limit_retries: u32,
    /// `PII_SCRUB_ENABLED` (default true).
    pub pii_scrub: bool,
    /// `PROMPT_INJECTION_DETECT_ENABLED` (default true).
    pub injection_detect: bool,
}

pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com";
pub const DEFAULT_OLLAMA_BASE_URL: &str = "http://localhost:11434";
pub const DEFAULT_CLAUDE_MODEL: &str = "claude-sonnet-4-6";
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o";
pub const DEFAULT_OLLAMA_MODEL: &str = "mistral:7b";

impl LlmConfig {
    /// What to set when no hosted provider has a key, so the planner depends on a local Ollama
    /// alone: a failure to reach it is then a missing configuration, and the message says so.
    pub fn setup_hint(&self) -> Option<String> {
        if self.providers.iter().any(|p| p.api_key.is_some()) {
            return None;
        }
        let ollama = self
            .providers
            .iter()
            .find(|p| p.kind == ProviderKind::Ollama)
            .map_or(DEFAULT_OLLAMA_BASE_URL, |p| p.base_url.as_str());
        Some(format!(
            "no LLM provider is configured: set ANTHROPIC_API_KEY (Claude) or OPENAI_API_KEY, \
             or run Ollama and set OLLAMA_BASE_URL to its address (now {ollama})"
        ))
    }

    /// Read the process environment.
    pub fn from_env() -> Result<Self, LlmError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Read configuration through `get` (tests pass a map instead of touching the environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, LlmError> {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let first = match var("LLM_PROVIDER") {
            Some(v) => Some(ProviderKind::parse(&v).ok_or_else(|| {
                LlmError::Config(format!(
                    "LLM_PROVIDER={v:?} is not one of claude, openai, ollama"
                ))
            })?),
            None => None,
        };
        let mut order: Vec<ProviderKind> = match var("LLM_FALLBACK_ORDER") {
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    ProviderKind::parse(s).ok_or_else(|| {
                        LlmError::Config(format!("LLM_FALLBACK_ORDER: unknown provider {s:?}"))
                    })
                })
                .collect::<Result<_, _>>()?,
            None => ProviderKind::ALL.to_vec(),
        };
        if let Some(first) = first {
            order.retain(|k| *k != first);
            order.insert(0, first);
        }
        let mut seen = Vec::new();
        order.retain(|k| {
            let new = !seen.contains(k);
            seen.push(*k);
            new
        });

        let providers = order
            .into_iter()
            .map(|kind| match kind {
                ProviderKind::Anthropic => ProviderConfig {
                    kind,
                    base_url: var("ANTHROPIC_BASE_URL")
                        .unwrap_or_else(|| DEFAULT_ANTHROPIC_BASE_URL.into()),
                    model: var("CLAUDE_MODEL").unwrap_or_else(|| DEFAULT_CLAUDE_MODEL.into()),
                    api_key: var("ANTHROPIC_API_KEY").map(ApiKey::new),
                },
                ProviderKind::OpenAi => ProviderConfig {
                    kind,
                    base_url: var("OPENAI_BASE_URL")
                        .unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.into()),
                    model: var("OPENAI_MODEL").unwrap_or_else(|| DEFAULT_OPENAI_MODEL.into()),
                    api_key: var("OPENAI_API_KEY").map(ApiKey::new),
                },
                ProviderKind::Ollama => ProviderConfig {
                    kind,
                    base_url: var("OLLAMA_BASE_URL")
                        .unwrap_or_else(|| DEFAULT_OLLAMA_BASE_URL.into()),
                    model: var("OLLAMA_MODEL").unwrap_or_else(|| DEFAULT_OLLAMA_MODEL.into()),
                    api_key: None,
                },
            })
            .collect();

        let secs = |k: &str, default: f64| -> Result<Duration, LlmError> {
            match var(k) {
                None => Ok(Duration::from_secs_f64(default)),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        LlmError::Config(format!("{k}={v:?} is not a number of seconds"))
                    }),
            }
        };
        Ok(Self {
            providers,
            request_timeout: secs("LLM_TIMEOUT_SECONDS", 60.0)?,
            connect_timeout: Duration::from_secs(10),
            retry_after_cap: secs("LLM_RETRY_AFTER_CAP_SECONDS", 10.0)?,
            max_rate_limit_retries: 1,
            pii_scrub: flag(var("PII_SCRUB_ENABLED"), "PII_SCRUB_ENABLED")?,
            injection_detect: flag(
                var("PROMPT_INJECTION_DETECT_ENABLED"),
                "PROMPT_INJECTION_DETECT_ENABLED",
            )?,
        })
    }
}

/// Boolean variables default to on; only an explicit false-ish value turns a guard off.
fn flag(v: Option<String>, name: &str) -> Result<bool, LlmError> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(LlmError::Config(format!(
            "{name}={other:?} is not true/false"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<LlmConfig, LlmError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        LlmConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = cfg(&[]).unwrap();
        let kinds: Vec<_> = c.providers.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, ProviderKind::ALL);
        assert_eq!(c.providers[0].model, "claude-sonnet-4-6");
        assert_eq!(c.providers[1].model, "gpt-4o");
        assert_eq!(c.providers[2].model, "mistral:7b");
        assert_eq!(c.providers[2].base_url, "http://localhost:11434");
        assert!(c.pii_scrub && c.injection_detect);
    }

    #[test]
    fn the_setup_hint_names_the_variables_only_when_no_key_is_set() {
        let hint = cfg(&[("OLLAMA_BASE_URL", "http://127.0.0.1:9")])
            .unwrap()
            .setup_hint()
            .unwrap();
        for variable in ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OLLAMA_BASE_URL"] {
            assert!(hint.contains(variable), "{hint}");
        }
        assert!(hint.contains("http://127.0.0.1:9"), "{hint}");
        let keyed = cfg(&[("OPENAI_API_KEY", "sk-test")]).unwrap();
        assert_eq!(keyed.setup_hint(), None);
    }

    #[test]
    fn llm_provider_goes_first_and_keys_are_redacted() {
        let c = cfg(&[
            ("LLM_PROVIDER", "ollama"),
            ("OPENAI_API_KEY", "sk-test-abcdef0123456789"),
            ("PII_SCRUB_ENABLED", "false"),
        ])
        .unwrap();
        assert_eq!(c.providers[0].kind, ProviderKind::Ollama);
        assert!(!c.pii_scrub);
        let shown = format!("{c:?}");
        assert!(!shown.contains("abcdef0123456789"), "{shown}");
        assert!(cfg(&[("LLM_PROVIDER", "bard")]).is_err());
    }

    #[test]
    fn fallback_order_is_configurable() {
        let c = cfg(&[("LLM_FALLBACK_ORDER", "ollama,openai")]).unwrap();
        let kinds: Vec<_> = c.providers.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [ProviderKind::Ollama, ProviderKind::OpenAi]);
        let c = cfg(&[
            ("LLM_FALLBACK_ORDER", "ollama,openai"),
            ("LLM_PROVIDER", "openai"),
        ])
        .unwrap();
        let kinds: Vec<_> = c.providers.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [ProviderKind::OpenAi, ProviderKind::Ollama]);
    }
}
