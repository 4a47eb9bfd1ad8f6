#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Streaming replies in each provider's real stream format, through the chain.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FakeServer, Reply, anthropic_ok};
use secureclaw_llm::{
    ApiKey, ChatRequest, FallbackChain, HttpProvider, LlmError, Provider, ProviderConfig,
    ProviderError, ProviderKind, TokenBudget,
};
use serde_json::json;

fn provider(kind: ProviderKind, base: &str) -> Arc<dyn Provider> {
    Arc::new(
        HttpProvider::new(
            ProviderConfig {
                kind,
                base_url: base.to_owned(),
                model: "m".into(),
                api_key: Some(ApiKey::new("sk-test-streaming-key-000000000000")),
            },
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
        .unwrap(),
    )
}

fn raw(body: String) -> Reply {
    Reply {
        status: 200,
        headers: vec![],
        body,
        hang: false,
    }
}

fn sse(events: &[(&str, serde_json::Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

fn anthropic_stream(pieces: &[&str], input: u64, output: u64) -> Reply {
    let mut ev = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "content": [], "stop_reason": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for p in pieces {
        ev.push(("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
    }
    ev.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    ev.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}})));
    ev.push(("message_stop", json!({"type": "message_stop"})));
    raw(sse(&ev))
}

async fn collect(
    chain: &FallbackChain,
    req: &ChatRequest,
) -> (Result<secureclaw_llm::ChainResult, LlmError>, Vec<String>) {
    let mut pieces = Vec::new();
    let r = chain
        .complete_stream(req, &mut TokenBudget::unlimited(), &mut |p: &str| {
            pieces.push(p.to_owned())
        })
        .await;
    (r, pieces)
}

#[tokio::test]
async fn anthropic_sse_stream_with_placeholders_restored() {
    let a = FakeServer::start(vec![anthropic_stream(
        &["notify <EMA", "IL_1> about ", "the logs"],
        25,
        9,
    )])
    .await;
    let chain = FallbackChain::new(vec![provider(ProviderKind::Anthropic, &a.base_url)]).unwrap();
    let req = ChatRequest::new(None, "archive logs and tell ops@example.com");
    let (r, pieces) = collect(&chain, &req).await;
    let r = r.unwrap();
    assert_eq!(pieces.concat(), "notify ops@example.com about the logs");
    assert!(pieces.len() >= 2, "{pieces:?}");
    assert_eq!(r.completion.text, "notify ops@example.com about the logs");
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (25, 9));
    assert_eq!(r.completion.stop_reason.as_deref(), Some("end_turn"));
    let sent = a.requests()[0].json();
    assert_eq!(sent["stream"], true);
    assert!(!a.requests()[0].body.contains("ops@example.com"));
}

#[tokio::test]
async fn openai_sse_stream_with_usage_chunk() {
    let chunk = |content: Option<&str>, finish: Option<&str>| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06",
               "choices": [{"index": 0, "delta": content.map(|c| json!({"content": c})).unwrap_or(json!({})), "finish_reason": finish}]})
    };
    let mut body = String::new();
    body.push_str(&format!("data: {}\n\n", json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})));
    body.push_str(&format!("data: {}\n\n", chunk(Some("Hello"), None)));
    body.push_str(&format!("data: {}\n\n", chunk(Some(" world"), None)));
    body.push_str(&format!("data: {}\n\n", chunk(None, Some("stop"))));
    body.push_str(&format!("data: {}\n\n", json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})));
    body.push_str("data: [DONE]\n\n");
    let o = FakeServer::start(vec![raw(body)]).await;
    let chain = FallbackChain::new(vec![provider(ProviderKind::OpenAi, &o.base_url)]).unwrap();
    let (r, pieces) = collect(&chain, &ChatRequest::new(None, "hi")).await;
    let r = r.unwrap();
    assert_eq!(pieces, ["Hello", " world"]);
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (11, 2));
    let sent = o.requests()[0].json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn ollama_ndjson_stream() {
    let lines = [
        json!({"model": "mistral:7b", "created_at": "2026-11-25T18:00:00Z", "message": {"role": "assistant", "content": "lo"}, "done": false}),
        json!({"model": "mistral:7b", "created_at": "2026-11-25T18:00:00Z", "message": {"role": "assistant", "content": "cal"}, "done": false}),
        json!({"model": "mistral:7b", "created_at": "2026-11-25T18:00:01Z", "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop", "prompt_eval_count": 7, "eval_count": 2}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let l = FakeServer::start(vec![raw(body)]).await;
    let chain = FallbackChain::new(vec![provider(ProviderKind::Ollama, &l.base_url)]).unwrap();
    let (r, pieces) = collect(&chain, &ChatRequest::new(None, "hi")).await;
    let r = r.unwrap();
    assert_eq!(pieces, ["lo", "cal"]);
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (7, 2));
    assert_eq!(l.requests()[0].json()["stream"], true);
}

#[tokio::test]
async fn stream_falls_back_before_the_first_piece_but_not_after() {
    // 429 before anything was streamed: move on.
    let a = FakeServer::start(vec![
        Reply::json(429, json!({})).with_header("retry-after", "60"),
    ])
    .await;
    let b = FakeServer::start(vec![anthropic_stream(&["fine"], 1, 1)]).await;
    let chain = FallbackChain::new(vec![
        provider(ProviderKind::Anthropic, &a.base_url),
        provider(ProviderKind::Anthropic, &b.base_url),
    ])
    .unwrap();
    let (r, pieces) = collect(&chain, &ChatRequest::new(None, "hi")).await;
    assert_eq!(r.unwrap().attempts.len(), 2);
    assert_eq!(pieces, ["fine"]);

    // An overload error event after text was delivered: stop, do not repeat the reply elsewhere.
    let mut body = anthropic_stream(&["partial "], 1, 1).body;
    body.truncate(body.find("event: content_block_stop").unwrap());
    body.push_str(&format!(
        "event: error\ndata: {}\n\n",
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    ));
    let a = FakeServer::start(vec![raw(body)]).await;
    let b = FakeServer::start(vec![anthropic_ok("never", 1, 1)]).await;
    let chain = FallbackChain::new(vec![
        provider(ProviderKind::Anthropic, &a.base_url),
        provider(ProviderKind::Anthropic, &b.base_url),
    ])
    .unwrap();
    let (r, pieces) = collect(&chain, &ChatRequest::new(None, "hi")).await;
    assert_eq!(pieces, ["partial "]);
    match r.unwrap_err() {
        LlmError::StreamInterrupted {
            error, attempts, ..
        } => {
            assert_eq!(error, ProviderError::Overloaded { status: 529 });
            assert_eq!(attempts.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(b.requests().is_empty());
}
