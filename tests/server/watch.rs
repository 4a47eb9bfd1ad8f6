//! A source workflow with `on.watch` runs when a watched file in its workspace changes: one run
//! per burst of changes, none for git-ignored files, editor swap files or the run's own writes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::gitkit::{GitRepo, add_source, admin_server};
use crate::harness::Api;
use crate::taskkit::{PATIENCE, wait_state};

/// Writes into the tree it watches.
const BUILD: &str = r#"version: 1
name: build
on:
  watch: ["src/**"]
steps:
  - id: build
    shell: cat src/input.txt > src/out.txt
"#;

/// Longer than the server's debounce several times over: a run that was going to start has.
const SETTLE: Duration = Duration::from_millis(1500);

async fn watch_tasks(api: &Api) -> Vec<Value> {
    let r = api.get("/api/v1/tasks?limit=200").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["origin"] == "watch")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_watched_change_runs_once_and_ignored_files_and_own_writes_do_not() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join("src/cache")).unwrap();
    std::fs::write(ws.path().join(".gitignore"), "src/cache/\n").unwrap();
    std::fs::write(ws.path().join("src/input.txt"), "zero\n").unwrap();
    let repo = GitRepo::new();
    repo.write("flows/build.yaml", BUILD);
    repo.commit("build on change");
    let flag = format!("ws={}", ws.path().display());
    let (_server, admin) = admin_server(&[], &["--workspace", &flag]).await;
    add_source(
        &admin,
        "repo",
        &repo.location(),
        json!({"dir": "flows", "branch": "main", "workspace": "ws"}),
    )
    .await;

    // The watcher comes up right after the registration; until a run shows, change again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut n = 0;
    let first = loop {
        n += 1;
        std::fs::write(ws.path().join("src/input.txt"), format!("one {n}\n")).unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut seen = Vec::new();
        while tokio::time::Instant::now() < until && seen.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen = watch_tasks(&admin).await;
        }
        if let Some(t) = seen.first() {
            break t.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no watch run");
    };
    let id = first["id"].as_str().unwrap();
    let done = wait_state(&admin, id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done:?}");
    assert_eq!(done["started_by"], "watch:repo/flows/build.yaml");
    assert!(
        std::fs::read_to_string(ws.path().join("src/out.txt"))
            .unwrap()
            .starts_with("one "),
    );
    // The ledger entry that says why it ran is in the run's export.
    let export = admin
        .get(&format!("/api/v1/tasks/{id}/ledger/export"))
        .await;
    assert_eq!(export.status, 200, "{:?}", export.body);
    let jsonl = export.body["jsonl"].as_str().unwrap();
    assert!(jsonl.contains("\"watch_fired\""), "{jsonl}");

    // Its own write to src/out.txt started nothing; nor do ignored files and editor leftovers.
    std::fs::write(ws.path().join("src/cache/blob.bin"), "cached").unwrap();
    std::fs::write(ws.path().join("src/.input.txt.swp"), "swap").unwrap();
    std::fs::write(ws.path().join("src/input.txt~"), "backup").unwrap();
    tokio::time::sleep(SETTLE).await;
    assert_eq!(watch_tasks(&admin).await.len(), 1);

    // A burst of saves is one run.
    for i in 0..10 {
        std::fs::write(ws.path().join("src/input.txt"), format!("two {i}\n")).unwrap();
    }
    std::fs::write(ws.path().join("src/other.txt"), "x").unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let second = loop {
        let tasks = watch_tasks(&admin).await;
        if tasks.len() > 1 {
            break tasks.into_iter().find(|t| t["id"] != first["id"]).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no second run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = wait_state(
        &admin,
        second["id"].as_str().unwrap(),
        &["succeeded", "failed"],
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done:?}");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(watch_tasks(&admin).await.len(), 2);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("src/out.txt")).unwrap(),
        "two 9\n"
    );
}
