use serde_json::json;

use crate::harness::{Api, shared};

#[tokio::test]
async fn health_answers_in_the_documented_shape() {
    let api = shared().client();
    let r = api.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.body["database"], "connected");
    assert!(r.body["version"].is_string());
}

#[tokio::test]
async fn a_token_stops_working_after_logout() {
    let api = Api::user(shared(), "smoke").await;
    assert_eq!(api.get("/api/v1/auth/me").await.status, 200);
    assert_eq!(api.post("/api/v1/auth/logout", json!({})).await.status, 204);
    let r = api.get("/api/v1/auth/me").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "unauthorized");
    assert_eq!(r.content_type(), "application/problem+json");
}
