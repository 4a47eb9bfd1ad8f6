//! `Idempotency-Key` on the requests that start runs: the same key and request answer the same
//! task, a key reused for another request is refused, a key still in flight is a conflict.

use std::io::Read as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Api, Reply, Server, shared};

const TINY: &str =
    "version: 1\nname: tiny\nsteps:\n  - id: a\n    write: { path: a.txt, content: \"a\\n\" }\n";

async fn post_with_key(api: &Api, path: &str, key: &str, body: Value) -> Reply {
    api.send(
        api.request(reqwest::Method::POST, path)
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn the_same_key_and_request_answer_the_same_task_and_run() {
    let api = Api::user(shared(), "idem").await;
    let key = "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"";
    let body = json!({"workflow": TINY});
    let first = post_with_key(&api, "/api/v1/tasks", key, body.clone()).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let again = post_with_key(&api, "/api/v1/tasks", key, body.clone()).await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(
        again.body["id"], first.body["id"],
        "a second task was created"
    );
    assert_eq!(again.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(again.content_type(), "application/json");
    let listed = api.get("/api/v1/tasks").await;
    assert_eq!(listed.body["total"], 1, "{:?}", listed.body);

    // The same key with another body is refused, and creates nothing.
    let other = json!({"workflow": TINY.replace("tiny", "other")});
    let r = post_with_key(&api, "/api/v1/tasks", key, other).await;
    assert_eq!(
        (r.status, r.code()),
        (422, "idempotency_key_reused"),
        "{:?}",
        r.body
    );
    assert_eq!(r.content_type(), "application/problem+json");
    assert_eq!(api.get("/api/v1/tasks").await.body["total"], 1);

    // Keys are per caller: another user's identical key and body is their own request.
    let other_user = Api::user(shared(), "idem-other").await;
    let r = post_with_key(&other_user, "/api/v1/tasks", key, body).await;
    assert_eq!(r.status, 201);
    assert_ne!(r.body["id"], first.body["id"]);

    // Starting the run: a retry with the key answers the same run instead of 409.
    let id = first.body["id"].as_str().unwrap();
    let run = format!("/api/v1/tasks/{id}/run");
    let started = post_with_key(&api, &run, "run-1", json!({})).await;
    assert_eq!(started.status, 202, "{:?}", started.body);
    let retried = post_with_key(&api, &run, "run-1", json!({})).await;
    assert_eq!(retried.status, 202, "{:?}", retried.body);
    assert_eq!(retried.body["run_id"], started.body["run_id"]);
    // Without the key the retry is what it always was.
    let plain = api.post(&run, json!({})).await;
    assert_eq!((plain.status, plain.code()), (409, "already_started"));

    // A malformed key is refused before anything runs; routes that start no run ignore it.
    let r = post_with_key(&api, "/api/v1/tasks", "", json!({"workflow": TINY})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_idempotency_key"));
    let r = post_with_key(
        &api,
        "/api/v1/workflows/validate",
        "v-1",
        json!({"workflow": TINY}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("idempotency-replayed").is_none());
}

/// A provider that takes every connection and answers none for a while: the planner's request
/// stays in flight.
fn stalling_provider() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(4)));
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_key_still_in_flight_is_a_conflict() {
    let provider = stalling_provider();
    let server = Server::start(
        &[
            ("ANTHROPIC_BASE_URL", provider.as_str()),
            ("ANTHROPIC_API_KEY", "test"),
            ("LLM_PROVIDER", "claude"),
            ("LLM_FALLBACK_ORDER", "claude"),
            ("LLM_TIMEOUT_SECONDS", "3"),
        ],
        &[],
    );
    let api = Api::user(&server, "inflight").await;
    let body = json!({"instruction": "write hello into a file"});
    let first = {
        let api = api.clone();
        let body = body.clone();
        tokio::spawn(async move { post_with_key(&api, "/api/v1/tasks", "slow-1", body).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = post_with_key(&api, "/api/v1/tasks", "slow-1", body.clone()).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "idempotency_in_flight"),
        "{:?}",
        r.body
    );
    assert!(r.headers.get("retry-after").is_some());
    // The first fails at the provider; a failure is not stored, so the key may be retried.
    let first = first.await.unwrap();
    assert!(first.status >= 400, "{:?}", first.body);
    let r = post_with_key(&api, "/api/v1/tasks", "slow-1", body).await;
    assert_ne!(r.status, 409, "the key stayed claimed: {:?}", r.body);
    assert_ne!(r.status, 422);
}
