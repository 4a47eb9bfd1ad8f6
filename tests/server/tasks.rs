//! Tasks end to end: create, validate, run, stream, diff, revert, approve and deny, cancel,
//! ledger export.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::harness::{Api, Server, shared};
use crate::taskkit::{
    GATED, Sse, assert_consecutive, kinds, started, verify_export, wait_state, workflow_task,
};

const GREET: &str = r#"version: 1
name: greet
steps:
  - id: greet
    write: { path: out/hello.txt, content: "Hello\n" }
  - id: show
    needs: [greet]
    shell: cat out/hello.txt
"#;

#[tokio::test]
async fn a_workflow_task_is_planned_with_tiers_and_undo_classes() {
    let api = Api::user(shared(), "plan").await;
    let task = workflow_task(&api, GATED).await;
    assert_eq!(task["state"], "planned");
    assert_eq!(task["origin"], "workflow");
    assert_eq!(task["name"], "gated");
    let id = task["id"].as_str().unwrap();
    assert_eq!(
        uuid_version(id),
        '7',
        "task ids are UUID v7 (time-ordered): {id}"
    );
    let plan = task["plan"].as_array().unwrap();
    let ids: Vec<_> = plan.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["prepare", "publish", "after"]);
    assert_eq!(plan[0]["action"], "write");
    assert_eq!(plan[0]["tier"], "low_write");
    assert_eq!(plan[0]["undo"], "restore");
    assert_eq!(plan[0]["needs_approval"], false);
    assert_eq!(plan[1]["needs_approval"], true);
    assert_eq!(plan[2]["undo"], "none");
    assert!(plan[0]["rule"].is_string() && plan[0]["reason"].is_string());

    let got = api.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["plan"], task["plan"]);
    assert!(got.body.get("run").is_none());
}

fn uuid_version(id: &str) -> char {
    id.chars().nth(14).unwrap()
}

#[tokio::test]
async fn an_invalid_workflow_is_refused_with_located_errors() {
    let api = Api::user(shared(), "invalid").await;
    let yaml =
        "version: 1\nname: bad\nsteps:\n  - id: a\n    needs: [nowhere]\n    read: { path: x }\n";
    let r = api.post("/api/v1/tasks", json!({"workflow": yaml})).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.code(), "invalid_workflow");
    assert_eq!(r.content_type(), "application/problem+json");
    let errors = r.body["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    let e = &errors[0];
    assert_eq!(e["line"], 5, "{e}");
    assert!(e["column"].as_u64().unwrap() > 0);
    assert!(e["message"].as_str().unwrap().contains("nowhere"), "{e}");

    // Neither or both of instruction and workflow.
    let r = api.post("/api/v1/tasks", json!({})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_request"));
    let r = api
        .post(
            "/api/v1/tasks",
            json!({"workflow": GREET, "instruction": "x"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_request"));
    // An unknown workspace name is not a path.
    let r = api
        .post(
            "/api/v1/tasks",
            json!({"workflow": GREET, "workspace": "../etc"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "unknown_workspace"));
    // Inputs are checked against the declarations.
    let r = api
        .post(
            "/api/v1/tasks",
            json!({"workflow": GREET, "inputs": {"nope": 1}}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_inputs"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn validate_answers_errors_or_steps() {
    let api = Api::user(shared(), "validate").await;
    let r = api
        .post("/api/v1/workflows/validate", json!({"workflow": GATED}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["valid"], true);
    assert_eq!(r.body["errors"], json!([]));
    assert_eq!(r.body["steps"][1]["id"], "publish");
    assert_eq!(r.body["steps"][1]["needs_approval"], true);

    let r = api
        .post(
            "/api/v1/workflows/validate",
            json!({"workflow": "version: 1\nname: x\nsteps: []\nbogus: 1\n"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["valid"], false);
    let e = &r.body["errors"][0];
    assert!(e["line"].as_u64().unwrap() >= 1 && e["column"].as_u64().unwrap() >= 1);
    assert!(e["message"].is_string());
    // Signed-in users only.
    let anon = shared().client();
    let r = anon
        .post("/api/v1/workflows/validate", json!({"workflow": GATED}))
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn a_run_streams_to_completion_and_resumes_exactly_after_last_event_id() {
    let api = Api::user(shared(), "stream").await;
    let (id, run_id) = started(&api, GREET).await;

    let mut sse = Sse::open(&api, &format!("/api/v1/tasks/{id}/stream"), None).await;
    assert_eq!(sse.status, 200);
    let ct = sse.headers["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    assert!(sse.headers.get("content-encoding").is_none());
    let all = sse.rest().await;
    assert_consecutive(&all, 1);
    let k = kinds(&all);
    assert_eq!(k.first(), Some(&"run_started"), "{k:?}");
    assert_eq!(k.last(), Some(&"run_finished"), "{k:?}");
    assert_eq!(all.last().unwrap().data["state"], "succeeded");
    assert!(all.iter().all(|e| e.data["run_id"] == run_id.as_str()));
    let started_steps: Vec<_> = all
        .iter()
        .filter(|e| e.event == "step_started")
        .map(|e| e.data["step"].as_str().unwrap())
        .collect();
    assert_eq!(started_steps, ["greet", "show"]);
    let output: String = all
        .iter()
        .filter(|e| e.event == "output" && e.data["step"] == "show")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert!(output.contains("Hello"), "{all:#?}");

    // Resume after every possible point: exactly the tail, no gap, no duplicate.
    let n = all.len() as u64;
    for after in [0, 1, n / 2, n - 1, n] {
        let mut again = Sse::open(&api, &format!("/api/v1/tasks/{id}/stream"), Some(after)).await;
        let tail = again.rest().await;
        assert_eq!(tail.len() as u64, n - after, "after {after}: {tail:#?}");
        assert_consecutive(&tail, after + 1);
        for (a, b) in tail.iter().zip(&all[after as usize..]) {
            assert_eq!(a.data, b.data);
        }
    }
    // `?after=` does the same.
    let mut q = Sse::open(
        &api,
        &format!("/api/v1/tasks/{id}/stream?after={}", n - 1),
        None,
    )
    .await;
    let tail = q.rest().await;
    assert_eq!(kinds(&tail), ["run_finished"]);
    // A malformed resume point is a problem, not a stream from the start.
    let bad = api
        .send(
            api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{id}/stream"))
                .header("Last-Event-ID", "../1"),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_request"));

    // The record: steps with states, tiers, undo classes, action ids, output.
    let task = wait_state(&api, &id, &["succeeded"]).await;
    let steps = task["run"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["id"], "greet");
    assert_eq!(steps[0]["state"], "succeeded");
    assert_eq!(steps[0]["tier"], "low_write");
    assert_eq!(steps[0]["undo"], "restore");
    assert_eq!(steps[0]["action_id"], format!("{id}.greet"));
    assert!(steps[1]["output"].as_str().unwrap().contains("Hello"));
    assert_eq!(task["run"]["run_id"], run_id.as_str());

    // Running twice is refused.
    let r = api
        .post(&format!("/api/v1/tasks/{id}/run"), json!({}))
        .await;
    assert_eq!((r.status, r.code()), (409, "already_started"));
    // Nothing is running any more.
    let r = api
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["cancelled"], false);
}

/// Every file under `dir` (but the state dir) with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with(".secureclaw") {
                continue;
            }
            if p.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[tokio::test]
async fn diff_then_revert_puts_a_registered_workspace_back_byte_for_byte() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("a.txt"), "original\n").unwrap();
    std::fs::create_dir(site.path().join("keep")).unwrap();
    std::fs::write(site.path().join("keep/k.bin"), [0u8, 1, 2, 255]).unwrap();
    let before = tree(site.path());
    let spec = format!("site={}", site.path().display());
    let server = Server::start(&[], &["--workspace", &spec]);
    let api = Api::user(&server, "revert").await;
    let yaml = r#"version: 1
name: edit
steps:
  - id: edit
    write: { path: a.txt, content: "changed\n" }
  - id: add
    needs: [edit]
    shell: echo new > b.txt
"#;
    let r = api
        .post(
            "/api/v1/tasks",
            json!({"workflow": yaml, "workspace": "site"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["workspace"], "site");
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        api.post(&format!("/api/v1/tasks/{id}/run"), json!({}))
            .await
            .status,
        202
    );
    let mut sse = Sse::open(&api, &format!("/api/v1/tasks/{id}/stream"), None).await;
    let all = sse.rest().await;
    assert_eq!(all.last().unwrap().data["state"], "succeeded", "{all:#?}");
    assert_eq!(
        std::fs::read_to_string(site.path().join("a.txt")).unwrap(),
        "changed\n"
    );

    let d = api.get(&format!("/api/v1/tasks/{id}/diff")).await;
    assert_eq!(d.status, 200, "{:?}", d.body);
    let steps = d.body["steps"].as_array().unwrap();
    let edit = steps.iter().find(|s| s["step"] == "edit").unwrap();
    let text = edit["diff"].as_str().unwrap();
    assert!(
        text.contains("-original") && text.contains("+changed"),
        "{text}"
    );
    let one = api.get(&format!("/api/v1/tasks/{id}/diff?step=add")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["steps"].as_array().unwrap().len(), 1);
    assert!(
        one.body["steps"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+new")
    );
    let bad = api.get(&format!("/api/v1/tasks/{id}/diff?step=../x")).await;
    assert_eq!(bad.status, 404);

    // A dry run says what would happen and changes nothing.
    let dry = api
        .post(
            &format!("/api/v1/tasks/{id}/revert"),
            json!({"dry_run": true}),
        )
        .await;
    assert_eq!(dry.status, 200, "{:?}", dry.body);
    assert_eq!(dry.body["outcome"], "planned");
    let planned: Vec<_> = dry.body["detail"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(planned, ["add", "edit"], "newest first");
    assert_eq!(
        std::fs::read_to_string(site.path().join("a.txt")).unwrap(),
        "changed\n"
    );

    let done = api
        .post(&format!("/api/v1/tasks/{id}/revert"), json!({}))
        .await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(done.body["outcome"], "applied");
    assert_eq!(
        tree(site.path()),
        before,
        "the workspace is back byte for byte"
    );
}

#[tokio::test]
async fn one_action_reverts_alone_by_its_action_id() {
    let api = Api::user(shared(), "action").await;
    let (id, _) = started(&api, GREET).await;
    let task = wait_state(&api, &id, &["succeeded"]).await;
    let action = task["run"]["steps"][0]["action_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(action, format!("{id}.greet"));
    let dry = api
        .post(
            &format!("/api/v1/actions/{action}/revert"),
            json!({"dry_run": true, "cascade": false}),
        )
        .await;
    assert_eq!(dry.status, 200, "{:?}", dry.body);
    let steps: Vec<_> = dry.body["detail"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["greet"]);
    let r = api
        .post(&format!("/api/v1/actions/{action}/revert"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "applied");
    // A step the run does not have, and malformed action ids.
    for bad in [
        format!("{id}.nosuch"),
        id.clone(),
        format!("{id}..."),
        "..%2F..".to_string(),
    ] {
        let r = api
            .post(&format!("/api/v1/actions/{bad}/revert"), json!({}))
            .await;
        assert_eq!(r.status, 404, "{bad}: {:?}", r.body);
        assert_eq!(r.code(), "not_found");
    }
}

#[tokio::test]
async fn a_gate_parks_the_run_and_approval_resumes_it_on_the_same_stream() {
    let api = Api::user(shared(), "gate").await;
    let (id, _) = started(&api, GATED).await;
    let mut sse = Sse::open(&api, &format!("/api/v1/tasks/{id}/stream"), None).await;
    let first = sse.until("run_finished", Some("awaiting_approval")).await;
    assert_consecutive(&first, 1);
    assert!(kinds(&first).contains(&"approval_needed"), "{first:#?}");
    assert!(kinds(&first).contains(&"run_parked"), "{first:#?}");
    wait_state(&api, &id, &["awaiting_approval"]).await;

    let gates = api.get(&format!("/api/v1/tasks/{id}/approvals")).await;
    assert_eq!(gates.status, 200, "{:?}", gates.body);
    assert_eq!(gates.body["state"], "awaiting_approval");
    let gate = &gates.body["gates"][0];
    assert_eq!(gate["step"], "publish");
    assert!(
        gate["summary"].as_str().unwrap().contains("published.txt"),
        "{gate}"
    );
    let hash = gate["request_hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 64);

    // An answer to something else than what is pending is refused.
    let stale = api
        .post(
            &format!("/api/v1/tasks/{id}/steps/publish/approve"),
            json!({"request_hash": "0".repeat(64)}),
        )
        .await;
    assert_eq!((stale.status, stale.code()), (409, "stale_approval"));
    // A step that is not waiting.
    let other = api
        .post(
            &format!("/api/v1/tasks/{id}/steps/prepare/approve"),
            json!({"request_hash": hash}),
        )
        .await;
    assert_eq!((other.status, other.code()), (409, "not_waiting"));
    let traversal = api
        .post(
            &format!("/api/v1/tasks/{id}/steps/..%2F..%2Fetc/approve"),
            json!({"request_hash": hash}),
        )
        .await;
    assert_eq!(traversal.status, 404);
    // Still parked: nothing went on.
    assert_eq!(
        api.get(&format!("/api/v1/tasks/{id}")).await.body["state"],
        "awaiting_approval"
    );

    let ok = api
        .post(
            &format!("/api/v1/tasks/{id}/steps/publish/approve"),
            json!({"request_hash": hash, "reason": "looks right"}),
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body["resumed"], true);
    assert_eq!(ok.body["open"], json!([]));

    // The same connection goes on to the end.
    let rest = sse.rest().await;
    assert_consecutive(&rest, first.len() as u64 + 1);
    let k = kinds(&rest);
    assert!(k.contains(&"approval_decided"), "{k:?}");
    assert!(k.contains(&"run_resumed"), "{k:?}");
    assert_eq!(rest.last().unwrap().data["state"], "succeeded", "{rest:#?}");
    let task = wait_state(&api, &id, &["succeeded"]).await;
    let publish = &task["run"]["steps"][1];
    assert_eq!(publish["state"], "succeeded");
    assert!(
        publish["approval"].as_str().unwrap().contains("user:"),
        "{publish}"
    );
    // Answered and resumed: no gate left, and answering again is refused.
    let gates = api.get(&format!("/api/v1/tasks/{id}/approvals")).await;
    assert_eq!(gates.body["gates"], json!([]));
    let again = api
        .post(
            &format!("/api/v1/tasks/{id}/steps/publish/approve"),
            json!({"request_hash": hash}),
        )
        .await;
    assert_eq!((again.status, again.code()), (409, "not_parked"));
}

#[tokio::test]
async fn a_denied_gate_skips_its_step_and_what_needs_it() {
    let api = Api::user(shared(), "deny").await;
    let (id, _) = started(&api, GATED).await;
    wait_state(&api, &id, &["awaiting_approval"]).await;
    let gates = api.get(&format!("/api/v1/tasks/{id}/approvals")).await;
    let hash = gates.body["gates"][0]["request_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api
        .post(
            &format!("/api/v1/tasks/{id}/steps/publish/deny"),
            json!({"request_hash": hash, "reason": "not today"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["approved"], false);
    assert_eq!(r.body["resumed"], true);
    let task = wait_state(&api, &id, &["succeeded", "failed"]).await;
    let steps = &task["run"]["steps"];
    assert_eq!(steps[0]["state"], "succeeded");
    assert_eq!(steps[1]["state"], "skipped", "{task:#}");
    assert_eq!(steps[2]["state"], "skipped", "{task:#}");
    let diff = api.get(&format!("/api/v1/tasks/{id}/diff")).await;
    let text: String = diff.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["diff"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !text.contains("published"),
        "a denied step wrote nothing: {text}"
    );
}

#[tokio::test]
async fn the_ledger_export_of_a_run_verifies_offline_with_the_cli() {
    let server = Server::start(&[], &[]);
    let api = Api::user(&server, "ledger").await;
    let (id, run_id) = started(&api, GREET).await;
    wait_state(&api, &id, &["succeeded"]).await;
    let r = api.get(&format!("/api/v1/tasks/{id}/ledger/export")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["head"]["run"], run_id.as_str());
    let jsonl = r.body["jsonl"].as_str().unwrap();
    assert!(jsonl.lines().count() >= 2, "{jsonl}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.jsonl");
    let head = dir.path().join("run.head.json");
    std::fs::write(&file, jsonl).unwrap();
    std::fs::write(&head, serde_json::to_vec_pretty(&r.body["head"]).unwrap()).unwrap();
    let verify = |file: &Path| verify_export(file, &head, &server.state_dir());
    let out = verify(&file);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: one line cut off no longer matches the signed head.
    let cut: String = jsonl
        .lines()
        .take(jsonl.lines().count() - 1)
        .map(|l| format!("{l}\n"))
        .collect();
    let short = dir.path().join("cut.jsonl");
    std::fs::write(&short, cut).unwrap();
    assert!(
        !verify(&short).status.success(),
        "a cut export must not verify"
    );
}

#[tokio::test]
async fn secret_inputs_are_not_shown_back() {
    let api = Api::user(shared(), "secret").await;
    let yaml = r#"version: 1
name: secretive
inputs:
  token: { type: string, secret: true }
  who: { type: string, default: world }
steps:
  - id: say
    shell: echo "token=$TOKEN who={{ inputs.who }}"
    env: { TOKEN: "{{ inputs.token }}" }
"#;
    let secret = "s3cr3t-value-XYZ";
    let r = api
        .post(
            "/api/v1/tasks",
            json!({"workflow": yaml, "inputs": {"token": secret}}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["inputs"]["who"], "world");
    assert_eq!(r.body["inputs"]["token"], "[secret:token]");
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        api.post(&format!("/api/v1/tasks/{id}/run"), json!({}))
            .await
            .status,
        202
    );
    let mut sse = Sse::open(&api, &format!("/api/v1/tasks/{id}/stream"), None).await;
    let all = sse.rest().await;
    let text: Vec<Value> = all.iter().map(|e| e.data.clone()).collect();
    let dump = serde_json::to_string(&text).unwrap();
    assert!(dump.contains("who=world"), "{dump}");
    assert!(
        !dump.contains(secret),
        "the secret left in the stream: {dump}"
    );
    let task = wait_state(&api, &id, &["succeeded"]).await;
    let shown = task.to_string();
    assert!(
        !shown.contains(secret),
        "the secret left in the task: {shown}"
    );
}

/// `curl -X POST .../revert` with no body at all takes the defaults (a real revert); a body
/// that is there must still be JSON.
#[tokio::test]
async fn a_revert_without_a_body_takes_the_defaults() {
    let api = Api::user(shared(), "nobody").await;
    let (id, _) = started(&api, GREET).await;
    wait_state(&api, &id, &["succeeded"]).await;
    let path = format!("/api/v1/tasks/{id}/revert");
    let garbled = api
        .send(
            api.request(reqwest::Method::POST, &path)
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(garbled.status, 400, "{:?}", garbled.body);
    let r = api.send(api.request(reqwest::Method::POST, &path)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "applied");
    let written = shared()
        .data_dir
        .join("workspaces")
        .join(&id)
        .join("out/hello.txt");
    assert!(!written.exists(), "the revert left {}", written.display());
}

/// An idle stream (the run is parked) carries heartbeat comments at the configured interval,
/// with the headers that keep proxies from buffering or compressing it.
#[tokio::test]
async fn an_idle_stream_carries_heartbeats() {
    let server = Server::start(&[("SECURECLAW_SSE_HEARTBEAT_SECONDS", "1")], &[]);
    let api = Api::user(&server, "heartbeat").await;
    let (id, _) = started(&api, GATED).await;
    wait_state(&api, &id, &["awaiting_approval"]).await;
    let mut sse = Sse::open(&api, &format!("/api/v1/tasks/{id}/stream"), None).await;
    assert_eq!(
        sse.headers.get("x-accel-buffering").unwrap(),
        "no",
        "{:?}",
        sse.headers
    );
    assert_eq!(sse.headers.get("cache-control").unwrap(), "no-cache");
    assert!(sse.headers.get("content-encoding").is_none());
    // The parked stretch ends with `run_finished` in state `awaiting_approval`; the stream
    // stays open for the resume.
    let parked = sse.until("run_finished", Some("awaiting_approval")).await;
    assert!(!parked.is_empty());
    // Nothing happens while the run is parked: only heartbeats arrive. Ask for the next event
    // with a short patience: it must time out having seen heartbeat comments.
    let waited = tokio::time::timeout(std::time::Duration::from_millis(3500), sse.next()).await;
    assert!(
        waited.is_err(),
        "an event arrived on an idle stream: {waited:?}"
    );
    assert!(
        sse.comments
            .iter()
            .filter(|c| c.contains("heartbeat"))
            .count()
            >= 2,
        "heartbeats: {:?}",
        sse.comments
    );
}
