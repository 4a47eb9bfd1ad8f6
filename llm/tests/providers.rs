#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Providers and the fallback chain against scripted servers on loopback.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeServer, Reply, anthropic_ok, ollama_ok, openai_ok};
use secureclaw_llm::{
    ApiKey, AttemptOutcome, ChatRequest, FallbackChain, HttpProvider, LlmConfig, LlmError,
    Provider, ProviderConfig, ProviderError, ProviderKind, TokenBudget,
};
use serde_json::json;

const ANTHROPIC_KEY: &str =
    "sk-ant-api03-TESTKEYdoNotLeak0123456789abcdefghijklmnopqrstuvwxyzABCDEFG-xyzAA";
const OPENAI_KEY: &str = "sk-proj-TESTKEYdoNotLeak9876543210zyxwvutsrqponmlkjihgfedcba";

fn provider(kind: ProviderKind, base: &str, timeout: Duration) -> Arc<dyn Provider> {
    let (model, key) = match kind {
        ProviderKind::Anthropic => ("claude-sonnet-4-6", Some(ApiKey::new(ANTHROPIC_KEY))),
        ProviderKind::OpenAi => ("gpt-4o", Some(ApiKey::new(OPENAI_KEY))),
        ProviderKind::Ollama => ("mistral:7b", None),
    };
    Arc::new(
        HttpProvider::new(
            ProviderConfig {
                kind,
                base_url: base.to_owned(),
                model: model.to_owned(),
                api_key: key,
            },
            timeout,
            Duration::from_secs(2),
        )
        .unwrap(),
    )
}

fn req() -> ChatRequest {
    let mut r = ChatRequest::new(
        Some("You write secureclaw workflows.".into()),
        "archive last week's logs and tell the team",
    );
    r.max_tokens = 1000;
    r
}

struct Three {
    a: FakeServer,
    o: FakeServer,
    l: FakeServer,
    chain: FallbackChain,
}

async fn three(a: Vec<Reply>, o: Vec<Reply>, l: Vec<Reply>) -> Three {
    let a = FakeServer::start(a).await;
    let o = FakeServer::start(o).await;
    let l = FakeServer::start(l).await;
    let t = Duration::from_millis(1500);
    let chain = FallbackChain::new(vec![
        provider(ProviderKind::Anthropic, &a.base_url, t),
        provider(ProviderKind::OpenAi, &o.base_url, t),
        provider(ProviderKind::Ollama, &l.base_url, t),
    ])
    .unwrap()
    .with_retry_after_cap(Duration::from_millis(500));
    Three { a, o, l, chain }
}

/// No key may appear in any rendering of a result or error.
fn assert_no_keys(s: &str) {
    assert!(!s.contains("TESTKEYdoNotLeak"), "a key leaked: {s}");
}

#[tokio::test]
async fn anthropic_wire_format() {
    let t = three(vec![anthropic_ok("steps: []", 42, 7)], vec![], vec![]).await;
    let mut budget = TokenBudget::new(100_000);
    let r = t.chain.complete(&req(), &mut budget).await.unwrap();
    assert_eq!(r.provider, ProviderKind::Anthropic);
    assert_eq!(r.completion.text, "steps: []");
    assert_eq!(r.usage.input_tokens, 42);
    assert_eq!(r.usage.output_tokens, 7);
    assert_eq!(budget.used, 49);
    let rec = &t.a.requests()[0];
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(rec.header("anthropic-version"), Some("2023-06-01"));
    assert!(rec.header("authorization").is_none());
    let body = rec.json();
    assert_eq!(body["model"], "claude-sonnet-4-6");
    assert_eq!(body["system"], "You write secureclaw workflows.");
    assert_eq!(body["max_tokens"], 1000);
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "archive last week's logs and tell the team"}])
    );
    assert_no_keys(&format!("{r:?} {}", serde_json::to_string(&r).unwrap()));
}

#[tokio::test]
async fn openai_wire_format() {
    let o = FakeServer::start(vec![openai_ok("ok", 30, 5)]).await;
    // A base URL given with /v1 is not doubled.
    let p = provider(
        ProviderKind::OpenAi,
        &format!("{}/v1/", o.base_url),
        Duration::from_secs(2),
    );
    let c = p.complete(&req()).await.unwrap();
    assert_eq!(c.text, "ok");
    assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (30, 5));
    assert_eq!(c.model, "gpt-4o-2024-08-06");
    let rec = &o.requests()[0];
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(
        rec.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    let body = rec.json();
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You write secureclaw workflows."})
    );
    assert_eq!(body["messages"][1]["role"], "user");
    assert_eq!(body["max_tokens"], 1000);
}

#[tokio::test]
async fn ollama_wire_format() {
    let l = FakeServer::start(vec![ollama_ok("local answer", 12, 3)]).await;
    let p = provider(ProviderKind::Ollama, &l.base_url, Duration::from_secs(2));
    assert!(p.is_local());
    let c = p.complete(&req()).await.unwrap();
    assert_eq!(c.text, "local answer");
    assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (12, 3));
    let rec = &l.requests()[0];
    assert_eq!(rec.path, "/api/chat");
    assert!(rec.header("authorization").is_none() && rec.header("x-api-key").is_none());
    let body = rec.json();
    assert_eq!(body["model"], "mistral:7b");
    assert_eq!(body["stream"], false);
    assert_eq!(body["options"]["num_predict"], 1000);
    assert_eq!(body["messages"][0]["role"], "system");
}

#[tokio::test]
async fn rate_limit_with_short_retry_after_retries_same_provider() {
    let t = three(
        vec![
            Reply::json(429, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}))
                .with_header("retry-after", "0.2"),
            anthropic_ok("second time lucky", 10, 2),
        ],
        vec![],
        vec![],
    )
    .await;
    let started = Instant::now();
    let r = t
        .chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.provider, ProviderKind::Anthropic);
    assert_eq!(r.attempts.len(), 2);
    assert_eq!(r.attempts[0].outcome, AttemptOutcome::Retried);
    assert_eq!(
        r.attempts[0].error,
        Some(ProviderError::RateLimited {
            retry_after: Some(Duration::from_millis(200))
        })
    );
    assert_eq!(r.attempts[1].waited_ms, 200);
    assert!(t.o.requests().is_empty());
}

#[tokio::test]
async fn rate_limit_with_long_retry_after_moves_on() {
    let t = three(
        vec![Reply::json(429, json!({"error": "rate"})).with_header("retry-after", "30")],
        vec![openai_ok("from openai", 20, 4)],
        vec![],
    )
    .await;
    let started = Instant::now();
    let r = t
        .chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "must not wait 30 s"
    );
    assert_eq!(r.provider, ProviderKind::OpenAi);
    assert_eq!(r.completion.text, "from openai");
    assert_eq!(r.attempts[0].outcome, AttemptOutcome::MovedOn);
    assert_eq!(r.attempts[1].outcome, AttemptOutcome::Succeeded);
}

#[tokio::test]
async fn overload_529_and_5xx_move_on() {
    let t = three(
        vec![Reply::json(529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))],
        vec![Reply::json(502, json!({"error": "bad gateway"}))],
        vec![ollama_ok("local", 5, 1)],
    )
    .await;
    let r = t
        .chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert_eq!(r.provider, ProviderKind::Ollama);
    let errs: Vec<_> = r.attempts.iter().map(|a| a.error.clone()).collect();
    assert_eq!(errs[0], Some(ProviderError::Overloaded { status: 529 }));
    assert!(matches!(
        errs[1],
        Some(ProviderError::Server { status: 502, .. })
    ));
    assert_eq!(errs[2], None);
}

#[tokio::test]
async fn auth_error_moves_on_and_echoed_key_is_redacted() {
    let t = three(
        vec![Reply::json(401, json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid x-api-key {ANTHROPIC_KEY}")}}))],
        vec![Reply::json(403, json!({"error": {"message": format!("Incorrect API key provided: {OPENAI_KEY}"), "type": "invalid_request_error", "code": "invalid_api_key"}}))],
        vec![ollama_ok("local", 5, 1)],
    )
    .await;
    let r = t
        .chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert_eq!(r.provider, ProviderKind::Ollama);
    assert!(matches!(
        r.attempts[0].error,
        Some(ProviderError::Auth { status: 401, .. })
    ));
    assert!(matches!(
        r.attempts[1].error,
        Some(ProviderError::Auth { status: 403, .. })
    ));
    let shown = format!(
        "{r:?}\n{}\n{}",
        serde_json::to_string(&r).unwrap(),
        r.attempts
            .iter()
            .filter_map(|a| a.error.as_ref())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_no_keys(&shown);
}

#[tokio::test]
async fn timeout_moves_on() {
    let a = FakeServer::start(vec![Reply::hang()]).await;
    let o = FakeServer::start(vec![openai_ok("after timeout", 1, 1)]).await;
    let chain = FallbackChain::new(vec![
        provider(
            ProviderKind::Anthropic,
            &a.base_url,
            Duration::from_millis(300),
        ),
        provider(ProviderKind::OpenAi, &o.base_url, Duration::from_secs(2)),
    ])
    .unwrap();
    let started = Instant::now();
    let r = chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(r.provider, ProviderKind::OpenAi);
    assert!(
        matches!(r.attempts[0].error, Some(ProviderError::Timeout { .. })),
        "{:?}",
        r.attempts[0]
    );
}

#[tokio::test]
async fn connection_refused_moves_on() {
    // Bind then drop: the port is very likely closed when the chain connects.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let o = FakeServer::start(vec![openai_ok("up", 1, 1)]).await;
    let chain = FallbackChain::new(vec![
        provider(ProviderKind::Anthropic, &closed, Duration::from_secs(2)),
        provider(ProviderKind::OpenAi, &o.base_url, Duration::from_secs(2)),
    ])
    .unwrap();
    let r = chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert!(
        matches!(r.attempts[0].error, Some(ProviderError::Connect(_))),
        "{:?}",
        r.attempts[0]
    );
    assert_eq!(r.provider, ProviderKind::OpenAi);
}

#[tokio::test]
async fn bad_request_400_stops_the_chain() {
    let t = three(
        vec![Reply::json(400, json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: field required"}}))],
        vec![openai_ok("must not be reached", 1, 1)],
        vec![ollama_ok("must not be reached", 1, 1)],
    )
    .await;
    let err = t
        .chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap_err();
    match &err {
        LlmError::Fatal {
            provider,
            error,
            attempts,
        } => {
            assert_eq!(provider, "anthropic");
            assert!(matches!(
                error,
                ProviderError::BadRequest { status: 400, .. }
            ));
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].outcome, AttemptOutcome::Stopped);
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
    assert!(err.to_string().contains("field required"));
    assert!(t.o.requests().is_empty() && t.l.requests().is_empty());
    assert_no_keys(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn every_provider_failing_lists_every_attempt() {
    let t = three(
        vec![Reply::json(529, json!({}))],
        vec![Reply::json(429, json!({}))],
        vec![Reply::json(503, json!({}))],
    )
    .await;
    let err = t
        .chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Exhausted { .. }));
    let kinds: Vec<_> = err.attempts().iter().map(|a| a.provider).collect();
    assert_eq!(kinds, ProviderKind::ALL);
    assert!(
        err.attempts()
            .iter()
            .all(|a| a.outcome == AttemptOutcome::MovedOn)
    );
    assert_no_keys(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn missing_key_moves_on_without_a_request() {
    let a = FakeServer::start(vec![anthropic_ok("unreachable", 1, 1)]).await;
    let l = FakeServer::start(vec![ollama_ok("local", 1, 1)]).await;
    let no_key = Arc::new(
        HttpProvider::new(
            ProviderConfig {
                kind: ProviderKind::Anthropic,
                base_url: a.base_url.clone(),
                model: "claude-sonnet-4-6".into(),
                api_key: None,
            },
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap(),
    );
    let chain = FallbackChain::new(vec![
        no_key,
        provider(ProviderKind::Ollama, &l.base_url, Duration::from_secs(1)),
    ])
    .unwrap();
    let r = chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert_eq!(
        r.attempts[0].error,
        Some(ProviderError::MissingKey {
            var: "ANTHROPIC_API_KEY"
        })
    );
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn token_budget_caps_max_tokens_and_refuses_when_spent() {
    let t = three(
        vec![anthropic_ok("a", 100, 50), anthropic_ok("b", 100, 50)],
        vec![],
        vec![],
    )
    .await;
    let mut budget = TokenBudget::new(300);
    let r = t.chain.complete(&req(), &mut budget).await.unwrap();
    assert_eq!(budget.used, 150);
    // max_tokens was lowered to what the budget leaves after the estimated input.
    let sent = t.a.requests()[0].json()["max_tokens"].as_u64().unwrap();
    assert!(sent < 300 && sent > 250, "{sent}");
    assert_eq!(r.usage.total(), 150);
    let _ = t.chain.complete(&req(), &mut budget).await.unwrap();
    assert_eq!(budget.used, 300);
    let err = t.chain.complete(&req(), &mut budget).await.unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::BudgetExhausted {
                used: 300,
                budget: 300,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(t.a.requests().len(), 2);
}

#[tokio::test]
async fn config_from_the_documented_variables_drives_the_chain() {
    let a = FakeServer::start(vec![Reply::json(401, json!({}))]).await;
    let o = FakeServer::start(vec![openai_ok("configured", 1, 1)]).await;
    let vars: HashMap<&str, String> = HashMap::from([
        ("LLM_PROVIDER", "claude".to_owned()),
        ("LLM_FALLBACK_ORDER", "claude,openai".to_owned()),
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_owned()),
        ("OPENAI_API_KEY", OPENAI_KEY.to_owned()),
        ("ANTHROPIC_BASE_URL", a.base_url.clone()),
        ("OPENAI_BASE_URL", o.base_url.clone()),
        ("OPENAI_MODEL", "gpt-4o-mini".to_owned()),
        ("LLM_TIMEOUT_SECONDS", "2".to_owned()),
    ]);
    let config = LlmConfig::from_lookup(|k| vars.get(k).cloned()).unwrap();
    assert_no_keys(&format!("{config:?}"));
    let chain = FallbackChain::from_config(&config).unwrap();
    assert_no_keys(&format!("{chain:?}"));
    let r = chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert_eq!(r.completion.text, "configured");
    assert_eq!(o.requests()[0].json()["model"], "gpt-4o-mini");
    assert_eq!(r.attempts[1].model, "gpt-4o-mini");
}

#[tokio::test]
async fn malformed_reply_moves_on() {
    let t = three(
        vec![Reply {
            status: 200,
            headers: vec![],
            body: "<html>oops".into(),
            hang: false,
        }],
        vec![openai_ok("fine", 1, 1)],
        vec![],
    )
    .await;
    let r = t
        .chain
        .complete(&req(), &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert!(matches!(
        r.attempts[0].error,
        Some(ProviderError::Decode(_))
    ));
    assert_eq!(r.provider, ProviderKind::OpenAi);
}
