//! Who may see and act on a task: its owner and admins; everyone else gets the same 404 as for
//! a task that does not exist. Ids are checked before anything is looked up.

use serde_json::{Value, json};

use crate::harness::{Api, Reply, Server};
use crate::taskkit::{started, wait_state};

const GREET: &str = r#"version: 1
name: greet
steps:
  - id: greet
    write: { path: out/hello.txt, content: "Hello\n" }
"#;

const GATED: &str = r#"version: 1
name: gated
steps:
  - id: publish
    approve: true
    write: { path: published.txt, content: "published\n" }
"#;

/// Every task endpoint, with `{id}` and `{action}` to fill in.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/api/v1/tasks/{id}"),
    ("POST", "/api/v1/tasks/{id}/run"),
    ("POST", "/api/v1/tasks/{id}/cancel"),
    ("GET", "/api/v1/tasks/{id}/approvals"),
    ("POST", "/api/v1/tasks/{id}/steps/greet/approve"),
    ("POST", "/api/v1/tasks/{id}/steps/greet/deny"),
    ("GET", "/api/v1/tasks/{id}/stream"),
    ("POST", "/api/v1/tasks/{id}/revert"),
    ("GET", "/api/v1/tasks/{id}/diff"),
    ("GET", "/api/v1/tasks/{id}/diff?step=greet"),
    ("GET", "/api/v1/tasks/{id}/ledger/export"),
    ("POST", "/api/v1/actions/{action}/revert"),
];

fn body_for(path: &str) -> Value {
    if path.contains("/steps/") {
        json!({"request_hash": "0".repeat(64)})
    } else if path.ends_with("/revert") {
        json!({"dry_run": true})
    } else {
        json!({})
    }
}

async fn call(api: &Api, method: &str, path: &str) -> Reply {
    let rb = match method {
        "GET" => api.request(reqwest::Method::GET, path),
        _ => api
            .request(reqwest::Method::POST, path)
            .json(&body_for(path)),
    };
    api.send(rb.timeout(std::time::Duration::from_secs(30)))
        .await
}

fn fill(path: &str, id: &str) -> String {
    path.replace("{action}", &format!("{id}.greet"))
        .replace("{id}", id)
}

/// A new signed-in user on a dedicated server (the first one there is the admin).
async fn user(server: &Server, name: &str) -> Api {
    Api::user(server, name).await
}

#[tokio::test]
async fn another_users_task_is_not_found_on_every_endpoint_and_an_admin_sees_it() {
    let server = Server::start(&[], &[]);
    let admin = user(&server, "admin").await;
    let owner = user(&server, "owner").await;
    let intruder = user(&server, "intruder").await;
    let (id, _) = started(&owner, GREET).await;
    wait_state(&owner, &id, &["succeeded"]).await;
    let missing = uuid_v7_like(&id);

    for (method, template) in ENDPOINTS {
        let path = fill(template, &id);
        let theirs = call(&intruder, method, &path).await;
        assert_eq!(theirs.status, 404, "{method} {path}: {:?}", theirs.body);
        assert_eq!(theirs.code(), "not_found", "{method} {path}");
        assert_eq!(theirs.content_type(), "application/problem+json");
        // Exactly what a task that does not exist gets: nothing to tell them apart.
        let none = call(&intruder, method, &fill(template, &missing)).await;
        assert_eq!(none.status, 404, "{method} {template} (missing)");
        assert_eq!(
            theirs.body["detail"], none.body["detail"],
            "{method} {template}: a foreign task reads differently from a missing one"
        );
        // Without signing in: 401 before anything.
        let anon = call(&server.client(), method, &path).await;
        assert_eq!(anon.status, 401, "{method} {path}");
    }
    // Nothing the intruder tried changed the task.
    let mine = owner.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.body["state"], "succeeded");
    assert!(mine.body["run"]["reverts"].as_array().unwrap().is_empty());

    // The intruder's listing does not have it; the owner's and the admin's do.
    let listed = |r: &Reply| {
        r.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str())
    };
    assert!(!listed(&intruder.get("/api/v1/tasks").await));
    assert!(listed(&owner.get("/api/v1/tasks").await));
    assert!(listed(&admin.get("/api/v1/tasks").await));

    // The admin sees and reads it.
    for path in [
        format!("/api/v1/tasks/{id}"),
        format!("/api/v1/tasks/{id}/diff"),
        format!("/api/v1/tasks/{id}/approvals"),
        format!("/api/v1/tasks/{id}/ledger/export"),
    ] {
        let r = admin.get(&path).await;
        assert_eq!(r.status, 200, "admin {path}: {:?}", r.body);
    }
}

/// Another valid v7-shaped id that no task has.
fn uuid_v7_like(id: &str) -> String {
    let last = id.chars().last().unwrap();
    let swapped = if last == '0' { '1' } else { '0' };
    format!("{}{swapped}", &id[..id.len() - 1])
}

#[tokio::test]
async fn ids_that_are_not_task_ids_never_reach_the_store_or_the_filesystem() {
    let server = Server::start(&[], &[]);
    let _admin = user(&server, "admin").await;
    let owner = user(&server, "owner").await;
    let (id, run_id) = started(&owner, GREET).await;
    wait_state(&owner, &id, &["succeeded"]).await;
    let bad_ids = [
        "..".to_string(),
        "..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        "%2e%2e".to_string(),
        "last".to_string(),
        // A run id (or its prefix) is not a task id.
        run_id.clone(),
        run_id[..8].to_string(),
        id.to_uppercase(),
        id.replace('-', ""),
        format!("{id}%00"),
        format!("{id}%2F.."),
    ];
    for bad in &bad_ids {
        for (method, template) in ENDPOINTS {
            let path = fill(template, bad);
            let r = call(&owner, method, &path).await;
            assert!(
                r.status == 404 || r.status == 400,
                "{method} {path}: {} {:?}",
                r.status,
                r.body
            );
        }
    }
    // Step ids are checked too.
    for step in ["..", "..%2F..%2Fetc", "a.b", &"x".repeat(65)] {
        let r = call(
            &owner,
            "POST",
            &format!("/api/v1/tasks/{id}/steps/{step}/approve"),
        )
        .await;
        assert_eq!(r.status, 404, "{step}: {:?}", r.body);
    }
    // The workspace of the task is its own directory under the data dir, named by its id.
    assert!(
        server
            .data_dir
            .join("workspaces")
            .join(&id)
            .join("out/hello.txt")
            .is_file()
    );
}

#[tokio::test]
async fn approvers_need_the_role_and_may_not_answer_their_own_runs() {
    let server = Server::start(
        &[
            ("SECURECLAW_APPROVER_ROLE", "approvers"),
            ("SECURECLAW_NO_SELF_APPROVAL", "true"),
        ],
        &[],
    );
    let admin = user(&server, "admin").await;
    let owner = user(&server, "owner").await;
    assert_eq!(admin.get("/api/v1/auth/me").await.body["admin"], true);

    let (id, _) = started(&owner, GATED).await;
    wait_state(&owner, &id, &["awaiting_approval"]).await;
    let gates = owner.get(&format!("/api/v1/tasks/{id}/approvals")).await;
    let hash = gates.body["gates"][0]["request_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = json!({"request_hash": hash});
    // The owner is not in the role (and it is their own run).
    let r = owner
        .post(
            &format!("/api/v1/tasks/{id}/steps/publish/approve"),
            answer.clone(),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{:?}", r.body);
    let r = owner
        .post(
            &format!("/api/v1/tasks/{id}/steps/publish/deny"),
            answer.clone(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        owner.get(&format!("/api/v1/tasks/{id}")).await.body["state"],
        "awaiting_approval"
    );
    // An admin may approve someone else's run.
    let r = admin
        .post(&format!("/api/v1/tasks/{id}/steps/publish/approve"), answer)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_state(&owner, &id, &["succeeded"]).await;

    // But not their own, with self-approval off.
    let (mine, _) = started(&admin, GATED).await;
    wait_state(&admin, &mine, &["awaiting_approval"]).await;
    let gates = admin.get(&format!("/api/v1/tasks/{mine}/approvals")).await;
    let hash = gates.body["gates"][0]["request_hash"].as_str().unwrap();
    let r = admin
        .post(
            &format!("/api/v1/tasks/{mine}/steps/publish/approve"),
            json!({"request_hash": hash}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
}
