//! HTTP providers speaking the real wire formats of Anthropic, OpenAI and Ollama.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{ApiKey, ProviderConfig, ProviderKind};
use crate::error::ProviderError;

/// Who said a message. The system prompt is separate ([`ChatRequest::system`]) because Anthropic
/// takes it as a top-level field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A provider-neutral chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub system: Option<String>,
    pub messages: Vec<Message>,
    /// Upper bound on output tokens; the chain lowers it to fit the task's token budget.
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

impl ChatRequest {
    pub fn new(system: Option<String>, user: impl Into<String>) -> Self {
        Self {
            system,
            messages: vec![Message::user(user)],
            max_tokens: 4096,
            temperature: None,
        }
    }

    /// Rough input-token estimate (4 bytes a token), used only to refuse a call that cannot fit
    /// the remaining budget before paying for it.
    pub fn estimated_input_tokens(&self) -> u64 {
        let bytes = self.system.as_deref().map_or(0, str::len)
            + self
                .messages
                .iter()
                .map(|m| m.content.len() + 4)
                .sum::<usize>();
        u64::try_from(bytes / 4 + 1).unwrap_or(u64::MAX)
    }
}

/// Tokens billed for one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    pub fn add(&mut self, other: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    /// The model that answered, as the provider reports it.
    pub model: String,
    pub stop_reason: Option<String>,
}

/// Something that answers chat requests. The fallback chain holds a list of these; tests and a
/// future streaming or mock provider implement it too.
#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    fn model(&self) -> &str;
    /// Local providers (Ollama on loopback) receive unscrubbed text: nothing leaves the machine.
    fn is_local(&self) -> bool;
    async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError>;

    /// Like [`Provider::complete`], calling `on_text` with each piece of text as it arrives. The
    /// default answers in one piece.
    async fn complete_stream(
        &self,
        req: &ChatRequest,
        on_text: &mut (dyn for<'s> FnMut(&'s str) + Send),
    ) -> Result<Completion, ProviderError> {
        let c = self.complete(req).await?;
        on_text(&c.text);
        Ok(c)
    }
}

/// A provider over HTTP (reqwest).
pub struct HttpProvider {
    config: ProviderConfig,
    client: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProvider")
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpProvider {
    pub fn new(
        config: ProviderConfig,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let mut builder = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .user_agent(concat!("secureclaw/", env!("CARGO_PKG_VERSION")));
        if is_loopback_url(&config.base_url) {
            // A proxy from the environment must not see traffic meant for this machine.
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| ProviderError::Connect(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            config,
            client,
            timeout: request_timeout,
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn endpoint(&self) -> String {
        let base = self.config.base_url.trim_end_matches('/');
        // Accept base URLs given with or without the API version segment.
        let base = base.strip_suffix("/v1").unwrap_or(base);
        match self.config.kind {
            ProviderKind::Anthropic => format!("{base}/v1/messages"),
            ProviderKind::OpenAi => format!("{base}/v1/chat/completions"),
            ProviderKind::Ollama => format!("{base}/api/chat"),
        }
    }

    fn key(&self) -> Result<&ApiKey, ProviderError> {
        self.config
            .api_key
            .as_ref()
            .ok_or(ProviderError::MissingKey {
                var: match self.config.kind {
                    ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
                    _ => "OPENAI_API_KEY",
                },
            })
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let model = &self.config.model;
        match self.config.kind {
            ProviderKind::Anthropic => {
                let mut b = json!({
                    "model": model,
                    "max_tokens": req.max_tokens,
                    "messages": req.messages,
                });
                if let Some(s) = &req.system {
                    b["system"] = json!(s);
                }
                if let Some(t) = req.temperature {
                    b["temperature"] = json!(t);
                }
                b
            }
            ProviderKind::OpenAi | ProviderKind::Ollama => {
                let mut messages = Vec::with_capacity(req.messages.len() + 1);
                if let Some(s) = &req.system {
                    messages.push(json!({"role": "system", "content": s}));
                }
                messages.extend(req.messages.iter().map(|m| json!(m)));
                if self.config.kind == ProviderKind::OpenAi {
                    let mut b = json!({
                        "model": model,
                        "messages": messages,
                        "max_tokens": req.max_tokens,
                    });
                    if let Some(t) = req.temperature {
                        b["temperature"] = json!(t);
                    }
                    b
                } else {
                    let mut options = json!({ "num_predict": req.max_tokens });
                    if let Some(t) = req.temperature {
                        options["temperature"] = json!(t);
                    }
                    json!({
                        "model": model,
                        "messages": messages,
                        "stream": false,
                        "options": options,
                    })
                }
            }
        }
    }

    fn parse(&self, v: &Value) -> Result<Completion, ProviderError> {
        let num = |v: &Value| v.as_u64().unwrap_or(0);
        let missing = |what: &str| ProviderError::Decode(format!("reply has no {what}"));
        match self.config.kind {
            ProviderKind::Anthropic => {
                let blocks = v["content"].as_array().ok_or_else(|| missing("content"))?;
                let text: String = blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .collect();
                Ok(Completion {
                    text,
                    usage: Usage {
                        input_tokens: num(&v["usage"]["input_tokens"]),
                        output_tokens: num(&v["usage"]["output_tokens"]),
                    },
                    model: v["model"].as_str().unwrap_or(&self.config.model).to_owned(),
                    stop_reason: v["stop_reason"].as_str().map(str::to_owned),
                })
            }
            ProviderKind::OpenAi => {
                let choice = &v["choices"][0];
                let text = choice["message"]["content"]
                    .as_str()
                    .ok_or_else(|| missing("choices[0].message.content"))?;
                Ok(Completion {
                    text: text.to_owned(),
                    usage: Usage {
                        input_tokens: num(&v["usage"]["prompt_tokens"]),
                        output_tokens: num(&v["usage"]["completion_tokens"]),
                    },
                    model: v["model"].as_str().unwrap_or(&self.config.model).to_owned(),
                    stop_reason: choice["finish_reason"].as_str().map(str::to_owned),
                })
            }
            ProviderKind::Ollama => {
                let text = v["message"]["content"]
                    .as_str()
                    .ok_or_else(|| missing("message.content"))?;
                Ok(Completion {
                    text: text.to_owned(),
                    usage: Usage {
                        input_tokens: num(&v["prompt_eval_count"]),
                        output_tokens: num(&v["eval_count"]),
                    },
                    model: v["model"].as_str().unwrap_or(&self.config.model).to_owned(),
                    stop_reason: v["done_reason"].as_str().map(str::to_owned),
                })
            }
        }
    }

    fn classify_transport(&self, e: &reqwest::Error, started: Instant) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout {
                after: started.elapsed(),
            }
        } else if e.is_connect() {
            ProviderError::Connect(format!("{} ({})", self.endpoint(), root_cause(e)))
        } else {
            ProviderError::Connect(root_cause(e))
        }
    }
}

#[async_trait]
impl Provider for HttpProvider {
    fn kind(&self) -> ProviderKind {
        self.config.kind
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn is_local(&self) -> bool {
        self.config.kind == ProviderKind::Ollama && is_loopback_url(&self.config.base_url)
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        let started = Instant::now();
        let resp = self.send(req, false, started).await?;
        let text = resp
            .text()
            .await
            .map_err(|e| self.classify_transport(&e, started))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ProviderError::Decode(format!("not JSON: {e}")))?;
        self.parse(&v)
    }

    async fn complete_stream(
        &self,
        req: &ChatRequest,
        on_text: &mut (dyn for<'s> FnMut(&'s str) + Send),
    ) -> Result<Completion, ProviderError> {
        let started = Instant::now();
        let mut resp = self.send(req, true, started).await?;
        let mut acc = StreamAccumulator::new(self.config.kind, &self.config.model);
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| self.classify_transport(&e, started))?;
            let Some(chunk) = chunk else { break };
            pending.extend_from_slice(&chunk);
            // SSE and NDJSON are both line-framed; a line may span chunks.
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(delta) = acc.line(line.trim_end())? {
                    on_text(&delta);
                }
            }
        }
        if !pending.is_empty() {
            let line = String::from_utf8_lossy(&pending).into_owned();
            if let Some(delta) = acc.line(line.trim_end())? {
                on_text(&delta);
            }
        }
        acc.finish()
    }
}

impl HttpProvider {
    /// Send the request and turn a non-2xx status into a typed error.
    async fn send(
        &self,
        req: &ChatRequest,
        stream: bool,
        started: Instant,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut body = self.body(req);
        if stream {
            body["stream"] = json!(true);
            if self.config.kind == ProviderKind::OpenAi {
                // Without this OpenAI sends no usage on streams, and the budget could not be charged.
                body["stream_options"] = json!({"include_usage": true});
            }
        }
        let mut http = self.client.post(self.endpoint()).json(&body);
        let key = match self.config.kind {
            ProviderKind::Anthropic => {
                let k = self.key()?;
                http = http
                    .header("x-api-key", k.expose())
                    .header("anthropic-version", "2023-06-01");
                Some(k)
            }
            ProviderKind::OpenAi => {
                let k = self.key()?;
                http = http.bearer_auth(k.expose());
                Some(k)
            }
            ProviderKind::Ollama => None,
        };
        let resp = http
            .send()
            .await
            .map_err(|e| self.classify_transport(&e, started))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp
            .text()
            .await
            .map_err(|e| self.classify_transport(&e, started))?;
        let body = redact_body(&text, key);
        Err(match status {
            429 => ProviderError::RateLimited { retry_after },
            529 | 503 => ProviderError::Overloaded { status },
            401 | 403 => ProviderError::Auth { status, body },
            408 => ProviderError::Timeout {
                after: started.elapsed(),
            },
            400 | 404 | 413 | 422 => ProviderError::BadRequest { status, body },
            s if s >= 500 => ProviderError::Server { status, body },
            _ => ProviderError::UnexpectedStatus { status, body },
        })
    }
}

/// Builds a [`Completion`] from stream events: Anthropic and OpenAI server-sent events, Ollama
/// JSON lines.
struct StreamAccumulator {
    kind: ProviderKind,
    text: String,
    usage: Usage,
    model: String,
    stop_reason: Option<String>,
}

impl StreamAccumulator {
    fn new(kind: ProviderKind, model: &str) -> Self {
        Self {
            kind,
            text: String::new(),
            usage: Usage::default(),
            model: model.to_owned(),
            stop_reason: None,
        }
    }

    /// Feed one line; returns the text delta it carried, if any.
    fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError> {
        let json = match self.kind {
            ProviderKind::Ollama => line,
            _ => match line.strip_prefix("data:") {
                Some(d) => d.trim_start(),
                // `event:` names, comments and blank separators carry nothing we need.
                None => return Ok(None),
            },
        };
        if json.is_empty() || json == "[DONE]" {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(json)
            .map_err(|e| ProviderError::Decode(format!("stream event is not JSON: {e}")))?;
        let num = |v: &Value| v.as_u64();
        let delta = match self.kind {
            ProviderKind::Anthropic => match v["type"].as_str() {
                Some("message_start") => {
                    let m = &v["message"];
                    if let Some(n) = num(&m["usage"]["input_tokens"]) {
                        self.usage.input_tokens = n;
                    }
                    if let Some(model) = m["model"].as_str() {
                        self.model = model.to_owned();
                    }
                    None
                }
                Some("content_block_delta") if v["delta"]["type"] == "text_delta" => {
                    v["delta"]["text"].as_str().map(str::to_owned)
                }
                Some("message_delta") => {
                    if let Some(n) = num(&v["usage"]["output_tokens"]) {
                        self.usage.output_tokens = n;
                    }
                    if let Some(r) = v["delta"]["stop_reason"].as_str() {
                        self.stop_reason = Some(r.to_owned());
                    }
                    None
                }
                Some("error") => {
                    return Err(match v["error"]["type"].as_str() {
                        Some("overloaded_error") => ProviderError::Overloaded { status: 529 },
                        Some("rate_limit_error") => {
                            ProviderError::RateLimited { retry_after: None }
                        }
                        _ => ProviderError::Server {
                            status: 500,
                            body: redact_body(&v["error"].to_string(), None),
                        },
                    });
                }
                _ => None,
            },
            ProviderKind::OpenAi => {
                if let Some(n) = num(&v["usage"]["prompt_tokens"]) {
                    self.usage.input_tokens = n;
                }
                if let Some(n) = num(&v["usage"]["completion_tokens"]) {
                    self.usage.output_tokens = n;
                }
                if let Some(model) = v["model"].as_str() {
                    self.model = model.to_owned();
                }
                let choice = &v["choices"][0];
                if let Some(r) = choice["finish_reason"].as_str() {
                    self.stop_reason = Some(r.to_owned());
                }
                choice["delta"]["content"].as_str().map(str::to_owned)
            }
            ProviderKind::Ollama => {
                if let Some(e) = v["error"].as_str() {
                    return Err(ProviderError::Server {
                        status: 500,
                        body: redact_body(e, None),
                    });
                }
                if v["done"] == true {
                    self.usage.input_tokens = num(&v["prompt_eval_count"]).unwrap_or(0);
                    self.usage.output_tokens = num(&v["eval_count"]).unwrap_or(0);
                    self.stop_reason = v["done_reason"].as_str().map(str::to_owned);
                }
                v["message"]["content"].as_str().map(str::to_owned)
            }
        };
        let delta = delta.filter(|d| !d.is_empty());
        if let Some(d) = &delta {
            self.text.push_str(d);
        }
        Ok(delta)
    }

    fn finish(self) -> Result<Completion, ProviderError> {
        if self.stop_reason.is_none() && self.text.is_empty() {
            return Err(ProviderError::Decode(
                "stream ended without any event".into(),
            ));
        }
        Ok(Completion {
            text: self.text,
            usage: self.usage,
            model: self.model,
            stop_reason: self.stop_reason,
        })
    }
}

/// `retry-after` in seconds (integer or decimal). HTTP dates are rare from these APIs and are
/// treated as absent, which makes the chain move on rather than guess.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Provider error bodies sometimes echo the key ("Incorrect API key provided: sk-...") and may
/// quote our prompt: remove the key, scrub what looks like a secret, and keep it short.
pub fn redact_body(body: &str, key: Option<&ApiKey>) -> String {
    let mut s = body.to_owned();
    if let Some(k) = key.filter(|k| !k.expose().is_empty()) {
        s = s.replace(k.expose(), "<redacted>");
    }
    if let Ok(scrubber) = crate::scrub::Scrubber::builtin() {
        s = scrubber.scrub(&s).0;
    }
    const MAX: usize = 500;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url("http://localhost:11434"));
        assert!(is_loopback_url("http://127.0.0.1:1/x"));
        assert!(is_loopback_url("http://[::1]:8080"));
        assert!(!is_loopback_url("https://api.openai.com"));
        assert!(!is_loopback_url("http://localhost.evil.com"));
    }

    #[test]
    fn redaction_removes_key_and_secrets() {
        let k = ApiKey::new("sk-proj-ABCdef123456789012345678");
        let b = redact_body(
            "Incorrect API key provided: sk-proj-ABCdef123456789012345678; also ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R9s0T",
            Some(&k),
        );
        assert!(!b.contains("ABCdef"), "{b}");
        assert!(!b.contains("ghp_1a2B"), "{b}");
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
