//! Server settings: defaults that work with no setup, then the environment (the documented
//! variable names), then flags (the binary sets fields after `from_env`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Where the server listens and how it treats requests.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `127.0.0.1:8080` unless told otherwise.
    pub listen: SocketAddr,
    /// State (vault, runs, accounts) and per-task workspaces live here.
    pub data_dir: PathBuf,
    /// PEM certificate chain and private key; both or neither.
    pub tls: Option<TlsFiles>,
    /// `JWT_SECRET`; when empty one is generated and sealed in the vault.
    pub jwt_secret: Option<String>,
    /// `JWT_EXPIRY_MINUTES` (60).
    pub jwt_expiry: Duration,
    /// `TOTP_ISSUER` (SecureClawAgent).
    pub totp_issuer: String,
    /// `PII_SCRUB_ENABLED` (true): secrets are scrubbed before text leaves for a provider or a
    /// stream.
    pub pii_scrub: bool,
    /// `PROMPT_INJECTION_DETECT_ENABLED` (true).
    pub injection_detect: bool,
    /// Workspaces a task may name instead of getting a fresh one: name → path.
    pub workspaces: BTreeMap<String, PathBuf>,
    /// Proxies whose `X-Forwarded-For` is believed; without any, the socket address is the
    /// client.
    pub trusted_proxies: Vec<IpAddr>,
    /// Largest request body accepted, checked before anything else reads it.
    pub max_body_bytes: usize,
    /// `SECURECLAW_HOOK_MAX_BODY_BYTES` (1 MiB): largest webhook delivery, checked before the
    /// trigger is looked up or its signature checked (`max_body_bytes` still caps every body).
    pub hook_max_body_bytes: usize,
    /// Only members of this role may approve gates (admins always may); `None`: any user who
    /// may see the task.
    pub approver_role: Option<String>,
    /// Refuse approvals by the user who started the run.
    pub no_self_approval: bool,
    /// Token budget of a planner call when a task does not give one.
    pub default_token_budget: u64,
    /// SSE heartbeat interval.
    pub heartbeat: Duration,
    /// `SECURECLAW_METRICS_TOKEN`: when set, `/metrics` wants it as a bearer token; when not,
    /// `/metrics` answers loopback clients only.
    pub metrics_token: Option<String>,
    /// Which LLM providers are set up (for `/health`; never the keys themselves).
    pub llm: LlmProviders,
}

/// What `/health` may say about the LLM providers: configured or not, and which one goes
/// first. Read from the same variables the planner reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmProviders {
    /// `LLM_PROVIDER` as a vendor name (`anthropic`, `openai`, `ollama`); `anthropic` when
    /// unset, as the planner does.
    pub selected: String,
    pub anthropic_key: bool,
    pub openai_key: bool,
    /// `OLLAMA_BASE_URL` was given (Ollama needs no key; its default URL is a guess).
    pub ollama_url: bool,
    pub anthropic_model: String,
    pub openai_model: String,
    pub ollama_model: String,
}

impl Default for LlmProviders {
    fn default() -> Self {
        LlmProviders {
            selected: "anthropic".into(),
            anthropic_key: false,
            openai_key: false,
            ollama_url: false,
            anthropic_model: "claude-sonnet-4-6".into(),
            openai_model: "gpt-4o".into(),
            ollama_model: "mistral:7b".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {why}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub why: String,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl ServerConfig {
    /// Defaults only: what `secureclaw serve` does with no configuration at all.
    pub fn defaults(data_dir: PathBuf) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir,
            tls: None,
            jwt_secret: None,
            jwt_expiry: Duration::from_secs(60 * 60),
            totp_issuer: "SecureClawAgent".to_string(),
            pii_scrub: true,
            injection_detect: true,
            workspaces: BTreeMap::new(),
            trusted_proxies: Vec::new(),
            max_body_bytes: 1024 * 1024,
            hook_max_body_bytes: 1024 * 1024,
            approver_role: None,
            no_self_approval: false,
            default_token_budget: 100_000,
            heartbeat: Duration::from_secs(15),
            metrics_token: None,
            llm: LlmProviders::default(),
        }
    }

    /// Defaults, then the environment.
    pub fn from_env(data_dir: PathBuf) -> Result<Self, ConfigError> {
        Self::from_lookup(data_dir, |k| std::env::var(k).ok())
    }

    /// Defaults, then the variables `get` knows (tests pass a map).
    pub fn from_lookup(
        data_dir: PathBuf,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut c = Self::defaults(data_dir);
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("JWT_SECRET") {
            c.jwt_secret = Some(v);
        }
        if let Some(v) = get("JWT_EXPIRY_MINUTES") {
            let mins: u64 = parse(&v, "JWT_EXPIRY_MINUTES", "a whole number of minutes")?;
            if mins == 0 {
                return Err(err("JWT_EXPIRY_MINUTES", &v, "must be at least 1"));
            }
            c.jwt_expiry = Duration::from_secs(mins * 60);
        }
        if let Some(v) = get("TOTP_ISSUER") {
            c.totp_issuer = v;
        }
        if let Some(v) = get("PII_SCRUB_ENABLED") {
            c.pii_scrub = boolean(&v, "PII_SCRUB_ENABLED")?;
        }
        if let Some(v) = get("PROMPT_INJECTION_DETECT_ENABLED") {
            c.injection_detect = boolean(&v, "PROMPT_INJECTION_DETECT_ENABLED")?;
        }
        if let Some(v) = get("SECURECLAW_LISTEN") {
            c.listen = parse(&v, "SECURECLAW_LISTEN", "an address such as 127.0.0.1:8080")?;
        }
        if let Some(v) = get("SECURECLAW_TRUSTED_PROXIES") {
            c.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    parse(
                        s,
                        "SECURECLAW_TRUSTED_PROXIES",
                        "IP addresses, comma-separated",
                    )
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("SECURECLAW_MAX_BODY_BYTES") {
            c.max_body_bytes = parse(&v, "SECURECLAW_MAX_BODY_BYTES", "a number of bytes")?;
        }
        if let Some(v) = get("SECURECLAW_HOOK_MAX_BODY_BYTES") {
            c.hook_max_body_bytes =
                parse(&v, "SECURECLAW_HOOK_MAX_BODY_BYTES", "a number of bytes")?;
        }
        if let Some(v) = get("SECURECLAW_APPROVER_ROLE") {
            c.approver_role = Some(v);
        }
        if let Some(v) = get("SECURECLAW_NO_SELF_APPROVAL") {
            c.no_self_approval = boolean(&v, "SECURECLAW_NO_SELF_APPROVAL")?;
        }
        if let Some(v) = get("SECURECLAW_SSE_HEARTBEAT_SECONDS") {
            let secs: u64 = parse(
                &v,
                "SECURECLAW_SSE_HEARTBEAT_SECONDS",
                "a whole number of seconds",
            )?;
            if secs == 0 {
                return Err(err(
                    "SECURECLAW_SSE_HEARTBEAT_SECONDS",
                    &v,
                    "must be at least 1",
                ));
            }
            c.heartbeat = Duration::from_secs(secs);
        }
        if let Some(v) = get("SECURECLAW_METRICS_TOKEN") {
            if v.len() < 16 {
                return Err(err(
                    "SECURECLAW_METRICS_TOKEN",
                    "(hidden)",
                    "must be at least 16 characters",
                ));
            }
            c.metrics_token = Some(v);
        }
        if let Some(v) = get("LLM_PROVIDER") {
            c.llm.selected = match v.trim().to_ascii_lowercase().as_str() {
                "claude" | "anthropic" => "anthropic",
                "openai" => "openai",
                "ollama" => "ollama",
                _ => return Err(err("LLM_PROVIDER", &v, "expected claude, openai or ollama")),
            }
            .into();
        }
        c.llm.anthropic_key = get("ANTHROPIC_API_KEY").is_some();
        c.llm.openai_key = get("OPENAI_API_KEY").is_some();
        c.llm.ollama_url = get("OLLAMA_BASE_URL").is_some();
        if let Some(v) = get("CLAUDE_MODEL") {
            c.llm.anthropic_model = v;
        }
        if let Some(v) = get("OPENAI_MODEL") {
            c.llm.openai_model = v;
        }
        if let Some(v) = get("OLLAMA_MODEL") {
            c.llm.ollama_model = v;
        }
        Ok(c)
    }

    /// Parse `name=PATH` (the `--workspace` flag).
    pub fn add_workspace(&mut self, spec: &str) -> Result<(), ConfigError> {
        let Some((name, path)) = spec.split_once('=') else {
            return Err(err("--workspace", spec, "expected NAME=PATH"));
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                "--workspace",
                spec,
                "the name may hold letters, digits, '-' and '_' only",
            ));
        }
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(err("--workspace", spec, "the path must be absolute"));
        }
        self.workspaces.insert(name.to_string(), path);
        Ok(())
    }

    /// Where the vault, runs and accounts live.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }

    /// Where tasks without a registered workspace get their own.
    /// Mirrors of the remote repositories of workflow sources.
    pub fn sources_cache_dir(&self) -> PathBuf {
        self.data_dir.join("sources")
    }

    pub fn workspaces_dir(&self) -> PathBuf {
        self.data_dir.join("workspaces")
    }

    /// `http://` or `https://` and the address, for the startup line.
    pub fn url(&self, bound: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{bound}")
    }
}

/// `$XDG_DATA_HOME/secureclaw`, else `~/.local/share/secureclaw`, else `./secureclaw-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("secureclaw");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/secureclaw");
    }
    PathBuf::from("secureclaw-data")
}

fn err(name: &str, value: &str, why: &str) -> ConfigError {
    ConfigError {
        name: name.to_string(),
        value: value.to_string(),
        why: why.to_string(),
    }
}

fn parse<T: std::str::FromStr>(v: &str, name: &str, want: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| err(name, v, &format!("expected {want}")))
}

fn boolean(v: &str, name: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(err(name, v, "expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServerConfig::from_lookup(PathBuf::from("/d"), |k| map.get(k).cloned())
    }

    #[test]
    fn no_configuration_gives_the_documented_defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.jwt_expiry, Duration::from_secs(3600));
        assert_eq!(c.totp_issuer, "SecureClawAgent");
        assert!(c.pii_scrub && c.injection_detect);
        assert!(c.jwt_secret.is_none());
    }

    #[test]
    fn variables_override_and_bad_values_name_the_variable() {
        let c = with(&[("JWT_EXPIRY_MINUTES", "5"), ("PII_SCRUB_ENABLED", "false")]).unwrap();
        assert_eq!(c.jwt_expiry, Duration::from_secs(300));
        assert!(!c.pii_scrub);
        let e = with(&[("JWT_EXPIRY_MINUTES", "soon")]).unwrap_err();
        assert!(e.to_string().contains("JWT_EXPIRY_MINUTES"), "{e}");
        assert!(with(&[("JWT_EXPIRY_MINUTES", "0")]).is_err());
    }

    #[test]
    fn workspace_specs_are_checked() {
        let mut c = ServerConfig::defaults(PathBuf::from("/d"));
        c.add_workspace("site=/srv/site").unwrap();
        assert_eq!(c.workspaces["site"], PathBuf::from("/srv/site"));
        assert!(c.add_workspace("nopath").is_err());
        assert!(c.add_workspace("../x=/srv").is_err());
        assert!(c.add_workspace("rel=srv").is_err());
    }

    #[test]
    fn llm_providers_are_summarised_without_their_keys() {
        let c = with(&[("LLM_PROVIDER", "claude"), ("OPENAI_API_KEY", "sk-x")]).unwrap();
        assert_eq!(c.llm.selected, "anthropic");
        assert!(c.llm.openai_key && !c.llm.anthropic_key && !c.llm.ollama_url);
        assert!(!format!("{:?}", c.llm).contains("sk-x"));
        assert!(with(&[("LLM_PROVIDER", "bard")]).is_err());
        assert!(with(&[("SECURECLAW_METRICS_TOKEN", "short")]).is_err());
    }
}
