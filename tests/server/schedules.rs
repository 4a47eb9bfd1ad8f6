//! A source workflow with `on.schedule` starts on time in a real server, never beside its own
//! run still waiting at a gate, and `GET /api/v1/schedules` shows it to its owner only.

use std::time::Duration;

use serde_json::{Value, json};

use crate::gitkit::{GitRepo, add_source, admin_server};
use crate::harness::Api;
use crate::taskkit::PATIENCE;

/// Every second; parks at its gate, so the next second finds it still going.
const EVERY_SECOND: &str = r#"version: 1
name: tick
on:
  schedule: { cron: "* * * * * *", timezone: Asia/Tokyo }
steps:
  - id: prepare
    write: { path: prep.txt, content: "prepared\n" }
  - id: publish
    needs: [prepare]
    approve: true
    write: { path: published.txt, content: "published\n" }
"#;

async fn schedules(api: &Api) -> Vec<Value> {
    let r = api.get("/api/v1/schedules").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["schedules"].as_array().unwrap().clone()
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_schedule_fires_skips_while_its_run_waits_and_is_listed_for_its_owner() {
    let repo = GitRepo::new();
    repo.write("flows/tick.yaml", EVERY_SECOND);
    repo.commit("tick");
    let (server, admin) = admin_server(&[], &[]).await;
    add_source(&admin, "repo", &repo.location(), json!({"dir": "flows"})).await;

    let listed = until("the schedule listed", async || {
        schedules(&admin).await.into_iter().next()
    })
    .await;
    assert_eq!(listed["path"], "flows/tick.yaml");
    assert_eq!(listed["cron"], "* * * * * *");
    assert_eq!(listed["timezone"], "Asia/Tokyo");
    assert_eq!(listed["missed"], "skip");
    assert!(listed["next"].is_string(), "{listed:?}");

    // It fires, parks at its gate, and the following seconds are skipped, not run beside it.
    let skipped = until("a skipped second", async || {
        schedules(&admin)
            .await
            .into_iter()
            .next()
            .filter(|s| s["last_skipped"].is_object())
    })
    .await;
    let reason = skipped["last_skipped"]["reason"].as_str().unwrap();
    assert!(reason.contains("still going"), "{reason}");
    let task = skipped["last_task"].as_str().unwrap().to_string();
    let r = admin.get(&format!("/api/v1/tasks/{task}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["origin"], "schedule");
    assert_eq!(r.body["started_by"], "schedule:repo/flows/tick.yaml");
    assert_eq!(r.body["state"], "awaiting_approval", "{:?}", r.body);
    let tasks = admin.get("/api/v1/tasks?limit=200").await;
    let scheduled = tasks.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["origin"] == "schedule")
        .count();
    assert_eq!(scheduled, 1, "{:?}", tasks.body);
    let export = admin
        .get(&format!("/api/v1/tasks/{task}/ledger/export"))
        .await;
    assert!(
        export.body["jsonl"]
            .as_str()
            .unwrap()
            .contains("\"schedule_fired\""),
        "{:?}",
        export.body
    );

    // Another user has no schedules of their own; signed out, no answer.
    let user = Api::user(&server, "viewer").await;
    assert!(schedules(&user).await.is_empty());
    let anon = server.client();
    assert_eq!(anon.get("/api/v1/schedules").await.status, 401);
}
