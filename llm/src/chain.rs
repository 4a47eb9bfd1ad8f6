//! The fallback chain: try providers in order, move on for transient and auth failures, stop on
//! a bad request, account tokens against the task's budget, scrub what leaves the machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{LlmConfig, ProviderKind};
use crate::error::{LlmError, ProviderError};
use crate::provider::{ChatRequest, Completion, HttpProvider, Provider, Usage};
use crate::scrub::{Restorer, Scrubber};

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The provider answered; the chain stops here.
    Succeeded,
    /// Rate limited with a short enough `retry-after`: the same provider is tried again.
    Retried,
    /// Failed in a way another provider may not: the chain moved on.
    MovedOn,
    /// Failed in a way no provider will fix (a 400): the chain stopped.
    Stopped,
}

/// One call to one provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub provider: ProviderKind,
    pub model: String,
    pub outcome: AttemptOutcome,
    /// Why it failed (absent on success). Never contains a key: see `provider::redact_body`.
    pub error: Option<ProviderError>,
    /// Tokens billed by this attempt (zero for failures: providers do not bill them).
    pub usage: Usage,
    pub elapsed_ms: u64,
    /// How long the chain slept (honouring `retry-after`) before this attempt.
    pub waited_ms: u64,
    /// Whether the request sent was scrubbed (false only for local providers or scrub disabled).
    pub scrubbed: bool,
}

/// A successful chain call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainResult {
    /// The reply, with placeholders restored to the real values.
    pub completion: Completion,
    pub provider: ProviderKind,
    /// Every attempt in order, including the successful one.
    pub attempts: Vec<Attempt>,
    /// Sum over attempts.
    pub usage: Usage,
    /// Placeholders that were substituted in the request (names only).
    pub placeholders: Vec<String>,
}

/// Tokens one task may spend across all its calls (`token_budget` in the task API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenBudget {
    pub limit: u64,
    pub used: u64,
}

impl TokenBudget {
    pub fn new(limit: u64) -> Self {
        Self { limit, used: 0 }
    }

    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    pub fn record(&mut self, usage: Usage) {
        self.used = self.used.saturating_add(usage.total());
    }
}

/// Providers in fallback order.
pub struct FallbackChain {
    providers: Vec<Arc<dyn Provider>>,
    retry_after_cap: Duration,
    max_rate_limit_retries: u32,
    scrubber: Option<&'static Scrubber>,
}

impl std::fmt::Debug for FallbackChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackChain")
            .field(
                "providers",
                &self
                    .providers
                    .iter()
                    .map(|p| format!("{}:{}", p.kind(), p.model()))
                    .collect::<Vec<_>>(),
            )
            .field("retry_after_cap", &self.retry_after_cap)
            .field("scrub", &self.scrubber.is_some())
            .finish()
    }
}

impl FallbackChain {
    /// A chain over `providers` with the built-in scrubber on, a 10 s retry-after cap and one
    /// rate-limit retry per provider.
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Result<Self, LlmError> {
        Ok(Self {
            providers,
            retry_after_cap: Duration::from_secs(10),
            max_rate_limit_retries: 1,
            scrubber: Some(Scrubber::builtin()?),
        })
    }

    /// HTTP providers from the configuration, in its order.
    pub fn from_config(config: &LlmConfig) -> Result<Self, LlmError> {
        let providers = config
            .providers
            .iter()
            .map(|p| {
                HttpProvider::new(p.clone(), config.request_timeout, config.connect_timeout)
                    .map(|h| Arc::new(h) as Arc<dyn Provider>)
                    .map_err(|e| LlmError::Config(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut chain = Self::new(providers)?
            .with_retry_after_cap(config.retry_after_cap)
            .with_max_rate_limit_retries(config.max_rate_limit_retries);
        if !config.pii_scrub {
            chain.scrubber = None;
        }
        Ok(chain)
    }

    pub fn with_retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    pub fn with_max_rate_limit_retries(mut self, n: u32) -> Self {
        self.max_rate_limit_retries = n;
        self
    }

    /// Turn the scrubber off (`PII_SCRUB_ENABLED=false`) or use another pattern set.
    pub fn with_scrubber(mut self, scrubber: Option<&'static Scrubber>) -> Self {
        self.scrubber = scrubber;
        self
    }

    pub fn providers(&self) -> impl Iterator<Item = (ProviderKind, &str)> {
        self.providers.iter().map(|p| (p.kind(), p.model()))
    }

    /// Send `req` down the chain. Tokens used are charged to `budget` (also when the chain fails
    /// later). The reply has placeholders restored.
    pub async fn complete(
        &self,
        req: &ChatRequest,
        budget: &mut TokenBudget,
    ) -> Result<ChainResult, LlmError> {
        self.run(req, budget, None).await
    }

    /// Like [`FallbackChain::complete`], streaming the reply (placeholders already restored) to
    /// `on_text`. The chain falls back only until the first piece of text was delivered; a
    /// failure after that is [`LlmError::StreamInterrupted`].
    pub async fn complete_stream(
        &self,
        req: &ChatRequest,
        budget: &mut TokenBudget,
        on_text: &mut (dyn for<'s> FnMut(&'s str) + Send),
    ) -> Result<ChainResult, LlmError> {
        self.run(req, budget, Some(on_text)).await
    }

    async fn run(
        &self,
        req: &ChatRequest,
        budget: &mut TokenBudget,
        mut on_text: Option<&mut (dyn for<'s> FnMut(&'s str) + Send)>,
    ) -> Result<ChainResult, LlmError> {
        if self.providers.is_empty() {
            return Err(LlmError::NoProviders);
        }
        let (scrubbed, restorer) = match self.scrubber {
            Some(s) => {
                let (r, restorer) = scrub_request(s, req);
                (Some(r), restorer)
            }
            None => (None, Restorer::default()),
        };
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut total = Usage::default();
        for provider in &self.providers {
            let send_scrubbed = scrubbed.is_some() && !provider.is_local();
            let base = match (&scrubbed, send_scrubbed) {
                (Some(s), true) => s,
                _ => req,
            };
            let mut retries = 0;
            let mut waited = Duration::ZERO;
            loop {
                let estimate = base.estimated_input_tokens();
                let remaining = budget.remaining();
                if remaining <= estimate {
                    return Err(LlmError::BudgetExhausted {
                        used: budget.used,
                        budget: budget.limit,
                        attempts,
                    });
                }
                let mut this = base.clone();
                let room = u32::try_from(remaining - estimate).unwrap_or(u32::MAX);
                this.max_tokens = this.max_tokens.min(room);

                let started = Instant::now();
                let mut emitted = false;
                let result = match on_text.as_deref_mut() {
                    None => provider.complete(&this).await,
                    Some(sink) => {
                        let mut restore = StreamRestorer::new(&restorer);
                        let mut forward = |piece: &str| {
                            let out = restore.push(piece);
                            if !out.is_empty() {
                                emitted = true;
                                sink(&out);
                            }
                        };
                        let r = provider.complete_stream(&this, &mut forward).await;
                        let rest = restore.finish();
                        if !rest.is_empty() && r.is_ok() {
                            emitted = true;
                            sink(&rest);
                        }
                        r
                    }
                };
                let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
                waited = Duration::ZERO;
                match result {
                    Ok(mut completion) => {
                        budget.record(completion.usage);
                        total.add(completion.usage);
                        attempts.push(Attempt {
                            provider: provider.kind(),
                            model: provider.model().to_owned(),
                            outcome: AttemptOutcome::Succeeded,
                            error: None,
                            usage: completion.usage,
                            elapsed_ms,
                            waited_ms,
                            scrubbed: send_scrubbed,
                        });
                        completion.text = restorer.restore(&completion.text);
                        return Ok(ChainResult {
                            completion,
                            provider: provider.kind(),
                            attempts,
                            usage: total,
                            placeholders: restorer.placeholders(),
                        });
                    }
                    Err(error) => {
                        let retry_wait = match &error {
                            ProviderError::RateLimited {
                                retry_after: Some(d),
                            } if *d <= self.retry_after_cap
                                && retries < self.max_rate_limit_retries =>
                            {
                                Some(*d)
                            }
                            _ => None,
                        };
                        if emitted {
                            attempts.push(Attempt {
                                provider: provider.kind(),
                                model: provider.model().to_owned(),
                                outcome: AttemptOutcome::Stopped,
                                error: Some(error.clone()),
                                usage: Usage::default(),
                                elapsed_ms,
                                waited_ms,
                                scrubbed: send_scrubbed,
                            });
                            return Err(LlmError::StreamInterrupted {
                                provider: provider.kind().to_string(),
                                error,
                                attempts,
                            });
                        }
                        let outcome = if retry_wait.is_some() {
                            AttemptOutcome::Retried
                        } else if error.falls_back() {
                            AttemptOutcome::MovedOn
                        } else {
                            AttemptOutcome::Stopped
                        };
                        attempts.push(Attempt {
                            provider: provider.kind(),
                            model: provider.model().to_owned(),
                            outcome,
                            error: Some(error.clone()),
                            usage: Usage::default(),
                            elapsed_ms,
                            waited_ms,
                            scrubbed: send_scrubbed,
                        });
                        match outcome {
                            AttemptOutcome::Retried => {
                                if let Some(d) = retry_wait {
                                    tokio::time::sleep(d).await;
                                    waited = d;
                                }
                                retries += 1;
                            }
                            AttemptOutcome::Stopped => {
                                return Err(LlmError::Fatal {
                                    provider: provider.kind().to_string(),
                                    error,
                                    attempts,
                                });
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
        Err(LlmError::Exhausted { attempts })
    }
}

/// Restores placeholders in streamed text, holding back a trailing `<...` that may be the start
/// of a placeholder split across pieces.
struct StreamRestorer<'a> {
    restorer: &'a Restorer,
    held: String,
}

impl<'a> StreamRestorer<'a> {
    /// Longer than any placeholder (`<SECRET_99999>`): past this a `<` is just text.
    const MAX_HELD: usize = 24;

    fn new(restorer: &'a Restorer) -> Self {
        Self {
            restorer,
            held: String::new(),
        }
    }

    fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        let cut = match self.held.rfind('<') {
            Some(i) if !self.held[i..].contains('>') && self.held.len() - i < Self::MAX_HELD => i,
            _ => self.held.len(),
        };
        let rest = self.held.split_off(cut);
        let ready = std::mem::replace(&mut self.held, rest);
        self.restorer.restore(&ready)
    }

    fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.held);
        self.restorer.restore(&rest)
    }
}

/// Scrub the system prompt and every message in one session, so a value gets the same
/// placeholder wherever it appears.
pub fn scrub_request(scrubber: &Scrubber, req: &ChatRequest) -> (ChatRequest, Restorer) {
    let mut session = scrubber.session();
    let mut out = req.clone();
    if let Some(s) = &req.system {
        out.system = Some(session.scrub(s));
    }
    for m in &mut out.messages {
        m.content = session.scrub(&m.content);
    }
    (out, session.into_restorer())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_restorer_handles_placeholders_split_across_pieces() {
        let s = Scrubber::builtin().unwrap();
        let (scrubbed, restorer) = s.scrub("key AKIAZ7XQ3LM9PQ2RST4U mail a@example.com");
        assert_eq!(scrubbed, "key <SECRET_1> mail <EMAIL_1>");
        let mut r = StreamRestorer::new(&restorer);
        let mut out = String::new();
        for piece in [
            "use <SEC",
            "RET_1> and <",
            "EMAIL_1",
            ">, 3 < 4 ",
            "<b>done",
        ] {
            out.push_str(&r.push(piece));
        }
        out.push_str(&r.finish());
        assert_eq!(
            out,
            "use AKIAZ7XQ3LM9PQ2RST4U and a@example.com, 3 < 4 <b>done"
        );
    }
}
