//! One user's whole path through the API, as the README walks it: register, turn on two-factor
//! sign-in, sign in with a code, have the planner write a workflow from an instruction, look at
//! the plan, run it, approve its gate exactly as shown, follow it live, undo it, and verify the
//! exported ledger offline.

use serde_json::json;

use crate::auth::{code_at, now};
use crate::harness::{PASSWORD, unique};
use crate::instructions::{Fake, server_for};
use crate::taskkit::{Sse, assert_consecutive, kinds, verify_export, wait_state};

const PLANNED: &str = "version: 1
name: release-notes
description: Draft release notes, then publish them once a person agrees.
steps:
  - id: draft
    write:
      path: notes/draft.md
      content: \"# Notes\\n\"
  - id: publish
    needs: [draft]
    approve: true
    write:
      path: notes/published.md
      content: \"# Published\\n\"
";

#[tokio::test]
async fn register_two_factor_plan_approve_stream_revert_and_verify() {
    let fake = Fake::start(vec![format!("```yaml\n{PLANNED}```\n")]);
    let server = server_for(&fake);
    let name = unique("journey");

    // Register: a token, and a TOTP setup that is not required yet.
    let mut api = server.client();
    let reg = api.register(&name).await;
    let secret = reg.body["totp"]["secret"].as_str().unwrap().to_string();
    let t = now();
    let on = api
        .post(
            "/api/v1/auth/2fa/enable",
            json!({"code": code_at(&secret, t)}),
        )
        .await;
    assert_eq!(on.status, 200, "{:?}", on.body);
    assert_eq!(api.post("/api/v1/auth/logout", json!({})).await.status, 204);

    // Sign in again: the password gives a ticket, the next code gives the token.
    let ticket = api
        .post(
            "/api/v1/auth/login",
            json!({"username": name, "password": PASSWORD}),
        )
        .await;
    assert_eq!(ticket.body["totp_required"], true, "{:?}", ticket.body);
    let signed = api
        .post(
            "/api/v1/auth/login/totp",
            json!({
                "login_token": ticket.body["login_token"],
                "code": code_at(&secret, t + 30),
            }),
        )
        .await;
    assert_eq!(signed.status, 200, "{:?}", signed.body);
    api.token = Some(signed.body["access_token"].as_str().unwrap().to_string());

    // An instruction becomes a plan with tiers and undo classes; nothing has run.
    let task = api
        .post(
            "/api/v1/tasks",
            json!({"instruction": "draft release notes and publish them", "token_budget": 20000}),
        )
        .await;
    assert_eq!(task.status, 201, "{:?}", task.body);
    assert_eq!(fake.requests().len(), 1);
    let id = task.body["id"].as_str().unwrap().to_string();
    let plan = &task.body["plan"];
    assert_eq!(plan[0]["id"], "draft");
    assert_eq!(plan[1]["id"], "publish");
    assert_eq!(plan[1]["needs_approval"], true, "{plan}");
    let workspace = server.data_dir.join("workspaces").join(&id);
    assert!(!workspace.join("notes").exists());

    // Run it: the gate parks the run, and the stream says so.
    let run = api
        .post(&format!("/api/v1/tasks/{id}/run"), json!({}))
        .await;
    assert_eq!(run.status, 202, "{:?}", run.body);
    let stream_path = format!("/api/v1/tasks/{id}/stream");
    let mut sse = Sse::open(&api, &stream_path, None).await;
    let before = sse.until("run_parked", None).await;
    assert!(kinds(&before).contains(&"approval_needed"), "{before:?}");
    wait_state(&api, &id, &["awaiting_approval"]).await;

    // Approve exactly what was shown: the request hash from the approvals list.
    let gates = api.get(&format!("/api/v1/tasks/{id}/approvals")).await;
    assert_eq!(gates.status, 200, "{:?}", gates.body);
    let gate = &gates.body["gates"][0];
    assert_eq!(gate["step"], "publish");
    let ok = api
        .post(
            &format!("/api/v1/tasks/{id}/steps/publish/approve"),
            json!({"request_hash": gate["request_hash"]}),
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);

    // The same stream goes on to the end, numbered without gaps.
    // (The parked stretch ends with `run_finished` in state `awaiting_approval`.)
    let after = sse.until("run_finished", Some("succeeded")).await;
    let mut all = before.clone();
    all.extend(after);
    assert_consecutive(&all, 1);
    assert_eq!(all.last().unwrap().data["state"], "succeeded");
    assert_eq!(
        std::fs::read_to_string(workspace.join("notes/published.md")).unwrap(),
        "# Published\n"
    );

    // Undo it: the dry run lists both steps, the revert removes what they wrote.
    let dry = api
        .post(
            &format!("/api/v1/tasks/{id}/revert"),
            json!({"dry_run": true}),
        )
        .await;
    assert_eq!(dry.status, 200, "{:?}", dry.body);
    assert_eq!(dry.body["outcome"], "planned");
    let undo = api
        .post(&format!("/api/v1/tasks/{id}/revert"), json!({}))
        .await;
    assert_eq!(undo.status, 200, "{:?}", undo.body);
    assert!(!workspace.join("notes/draft.md").exists());
    assert!(!workspace.join("notes/published.md").exists());

    // The run's ledger, exported over HTTP, verifies offline with the CLI.
    let export = api.get(&format!("/api/v1/tasks/{id}/ledger/export")).await;
    assert_eq!(export.status, 200, "{:?}", export.body);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.jsonl");
    let head = dir.path().join("run.head.json");
    std::fs::write(&file, export.body["jsonl"].as_str().unwrap()).unwrap();
    std::fs::write(&head, export.body["head"].to_string()).unwrap();
    let out = verify_export(&file, &head, &server.state_dir());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jsonl = export.body["jsonl"].as_str().unwrap();
    for kind in ["run_started", "run_parked", "approval_given", "run_resumed"] {
        assert!(jsonl.contains(kind), "the export lacks {kind}");
    }
}
