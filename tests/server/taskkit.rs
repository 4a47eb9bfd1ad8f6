//! Helpers of the task tests: create and run tasks, read a task's SSE stream.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::harness::{Api, PASSPHRASE};

/// Longest wait for anything a tiny workflow does.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A gate first (`approve: true`), then a step that needs it.
pub const GATED: &str = r#"version: 1
name: gated
steps:
  - id: prepare
    write: { path: prep.txt, content: "prepared\n" }
  - id: publish
    needs: [prepare]
    approve: true
    write: { path: published.txt, content: "published\n" }
  - id: after
    needs: [publish]
    read: { path: published.txt }
"#;

/// `secureclaw ledger verify-export FILE --head HEAD --state-dir STATE` with the harness
/// passphrase: how an auditor checks an export offline.
pub fn verify_export(
    file: &std::path::Path,
    head: &std::path::Path,
    state: &std::path::Path,
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .args(["ledger", "verify-export"])
        .arg(file)
        .arg("--head")
        .arg(head)
        .arg("--state-dir")
        .arg(state)
        .env("SECURECLAW_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap()
}

/// Create a task from workflow YAML; asserts 201.
pub async fn workflow_task(api: &Api, yaml: &str) -> Value {
    let r = api.post("/api/v1/tasks", json!({ "workflow": yaml })).await;
    assert_eq!(r.status, 201, "create: {:?}", r.body);
    r.body
}

/// Create and start a task; returns (task id, run id).
pub async fn started(api: &Api, yaml: &str) -> (String, String) {
    let task = workflow_task(api, yaml).await;
    let id = task["id"].as_str().unwrap().to_string();
    let r = api
        .post(&format!("/api/v1/tasks/{id}/run"), json!({}))
        .await;
    assert_eq!(r.status, 202, "run: {:?}", r.body);
    (id, r.body["run_id"].as_str().unwrap().to_string())
}

/// Poll the task until its state is one of `states`.
pub async fn wait_state(api: &Api, id: &str, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = api.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if states.contains(&r.body["state"].as_str().unwrap_or("")) {
            return r.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never reached {states:?}: {:?}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    pub fn seq(&self) -> u64 {
        self.id.as_deref().unwrap().parse().unwrap()
    }
}

/// An open event stream.
pub struct Sse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buf: String,
    /// Comment lines seen (heartbeats).
    pub comments: Vec<String>,
    /// The last event number received: a stream never goes back or repeats one.
    last_seq: Option<u64>,
}

impl Sse {
    pub async fn open(api: &Api, path: &str, last_event_id: Option<u64>) -> Sse {
        // A connection of its own, as a browser's EventSource has.
        let mut rb = reqwest::Client::new().get(api.url(path));
        if let Some(t) = &api.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(n) = last_event_id {
            rb = rb.header("Last-Event-ID", n.to_string());
        }
        let res = rb.send().await.unwrap();
        let status = res.status().as_u16();
        assert_eq!(
            status,
            200,
            "{path}: {}",
            res.text().await.unwrap_or_default()
        );
        Sse {
            status,
            headers: res.headers().clone(),
            body: Box::pin(res.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            buf: String::new(),
            comments: Vec::new(),
            last_seq: None,
        }
    }

    /// The next event; `None` when the stream ends. Panics after [`PATIENCE`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(PATIENCE, self.next_inner())
            .await
            .expect("no event within the patience")
    }

    async fn next_inner(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                let mut any = false;
                for line in block.lines() {
                    if line.is_empty() {
                        continue;
                    }
                    if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.trim().to_string());
                        continue;
                    }
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    any = true;
                    match k {
                        "id" => id = Some(v.to_string()),
                        "event" => event = v.to_string(),
                        "data" => {
                            if !data.is_empty() {
                                data.push('\n');
                            }
                            data.push_str(v);
                        }
                        _ => {}
                    }
                }
                if !any {
                    continue;
                }
                let e = SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                };
                if e.event != "resync"
                    && let Some(seq) = e.id.as_deref().and_then(|i| i.parse::<u64>().ok())
                {
                    if let Some(last) = self.last_seq {
                        assert!(seq > last, "event {seq} after {last}: {e:?}");
                    }
                    self.last_seq = Some(seq);
                }
                return Some(e);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// Every event until the stream ends.
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(PATIENCE, self.next_inner()).await {
                Ok(Some(e)) => out.push(e),
                Ok(None) => return out,
                Err(_) => panic!("no event within the patience; the stream had sent {out:#?}"),
            }
        }
    }

    /// Events up to and including the first of kind `kind` (with `data.state == state` when
    /// given).
    pub async fn until(&mut self, kind: &str, state: Option<&str>) -> Vec<SseEvent> {
        let mut out = Vec::new();
        loop {
            let e = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before {kind}: {out:#?}"));
            let hit = e.event == kind && state.is_none_or(|s| e.data["state"] == s);
            out.push(e);
            if hit {
                return out;
            }
        }
    }
}

/// Event numbers must be the SSE ids, consecutive from `first`.
pub fn assert_consecutive(events: &[SseEvent], first: u64) {
    for (i, e) in events.iter().enumerate() {
        let want = first + i as u64;
        assert_eq!(e.seq(), want, "event {i} out of order: {events:#?}");
        assert_eq!(e.data["seq"], want, "data.seq differs from the id: {e:?}");
        assert_eq!(
            e.data["event"],
            e.event.as_str(),
            "event kind differs: {e:?}"
        );
    }
}

pub fn kinds(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}
