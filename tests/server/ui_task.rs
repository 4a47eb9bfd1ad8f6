//! The task page of the web UI, over HTTP with the session cookie, against a real server: what
//! a finished, a parked and a failed run show, the approval form, revert with its dry run,
//! the diff page, the ledger badge and export, and that another user's task is a 404 page.

use serde_json::{Value, json};

use crate::harness::{Api, Server, shared};
use crate::taskkit::{GATED, Sse, started, wait_state, workflow_task};
use crate::uikit::{Browser, attr_after, csrf};

/// A step that prints and one that writes, so there is a log and a diff.
const WRITES: &str = r#"version: 1
name: writes
steps:
  - id: greet
    shell: echo hello from greet
  - id: note
    needs: [greet]
    write: { path: note.txt, content: "first line\nsecond line\n" }
"#;

const FAILS: &str = r#"version: 1
name: fails
steps:
  - id: boom
    shell: echo about to fail >&2; exit 3
"#;

/// Fails at `check` until a file `go` is in the workspace; `after` uses what `first` and
/// `check` printed.
const FAILS_UNTIL_GO: &str = r#"version: 1
name: fails-until-go
steps:
  - id: first
    shell: "echo made once > first.txt && echo made once"
  - id: check
    needs: [first]
    shell: "test -f go && echo ok"
  - id: after
    needs: [check]
    write: { path: after.txt, content: "{{ steps.first.output | trim }} {{ steps.check.output | trim }}" }
"#;

const SLOW: &str = r#"version: 1
name: slow
steps:
  - id: wait
    shell: echo started > started.txt && sleep 30
"#;

/// A step allowed one name that asks the egress proxy (inside its sandbox at 127.0.0.1:3128)
/// for another: the attempt is refused and recorded.
const EGRESS: &str = r#"version: 1
name: egress
steps:
  - id: fetch
    network: ["a.test"]
    shell: |
      bash -c 'exec 3<>/dev/tcp/127.0.0.1/3128; printf "GET http://b.test/ HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n" >&3; head -c 12 <&3'
"#;

fn workspace_file(server: &Server, task: &str, file: &str) -> std::path::PathBuf {
    server.data_dir.join("workspaces").join(task).join(file)
}

async fn finished(api: &Api, yaml: &str, states: &[&str]) -> String {
    let (id, _) = started(api, yaml).await;
    wait_state(api, &id, states).await;
    id
}

#[tokio::test]
async fn a_finished_task_shows_its_steps_logs_dag_and_ledger() {
    let api = Api::user(shared(), "ui-task-done").await;
    let id = finished(&api, WRITES, &["succeeded"]).await;
    let b = Browser::of(&api);
    let p = b.get(&format!("/ui/tasks/{id}")).await;
    assert_eq!(p.status, 200, "{}", p.html);
    let h = &p.html;
    assert!(
        h.contains(r#"id="task-state" class="badge state-succeeded""#),
        "{h}"
    );
    assert!(h.contains(r#"<svg id="dag""#));
    assert!(
        h.contains(r#"data-step="greet" data-state="succeeded""#),
        "{h}"
    );
    assert!(h.contains(r#"data-step="note" data-state="succeeded""#));
    // The step table: one row per step with state, tier, rule and undo class.
    assert!(h.contains(r#"<tr data-step="greet">"#));
    assert!(h.contains(r#"class="badge tier tier-low_write">low write<"#));
    assert!(h.contains(r#"class="rule"><span class="mono">action:write</span>"#));
    assert!(h.contains(r#"class="undo">exact<"#), "{h}");
    assert!(h.contains(r#"class="revert-step" data-step="note""#));
    // Logs: the scrubbed output so far, once.
    let log_at = h.find(r#"class="step-log" data-step="greet""#).unwrap();
    assert_eq!(h[log_at..].matches("hello from greet").count(), 1, "{h}");
    // Enforcement and egress per step.
    assert!(h.contains(r#"class="enforcement" data-step="greet""#));
    assert!(h.contains(r#"class="egress" data-step="greet""#));
    // Nothing left to follow: the script starts from what the page shows.
    assert!(!h.contains(r#"id="live""#));
    assert!(h.contains(r#"data-after=""#));
    assert!(!h.contains(r#"id="cancel""#) && !h.contains(r#"id="retry""#));
    // The ledger: checked, and an export the cookie may download.
    let badge = attr_after(h, r#"id="ledger-verified""#, "class");
    assert!(badge.contains("ledger-ok"), "{badge}");
    assert!(h.contains("verified ("), "{h}");
    let export = attr_after(h, r#"id="ledger-export""#, "href").replace("&#x2f;", "/");
    assert_eq!(export, format!("/ui/tasks/{id}/ledger.jsonl"));
    let e = b.get(&export).await;
    assert_eq!(e.status, 200, "{}", e.html);
    assert!(e.html.lines().count() > 0);
    for line in e.html.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
    let head = attr_after(h, r#"id="ledger-head""#, "href").replace("&#x2f;", "/");
    assert_eq!(head, format!("{export}.head.json"));
    let head = b.get(&head).await;
    assert_eq!(head.status, 200, "{}", head.html);
    let head: Value = serde_json::from_str(&head.html).unwrap();
    assert_eq!(head["format"], "secureclaw-ledger-head", "{head}");
    // Another user's download is the same 404 as the page.
    let other = Browser::of(&Api::user(shared(), "ui-task-ledger-other").await);
    assert_eq!(other.get(&export).await.status, 404);
}

#[tokio::test]
async fn the_diff_page_marks_added_lines() {
    let api = Api::user(shared(), "ui-task-diff").await;
    let id = finished(&api, WRITES, &["succeeded"]).await;
    let b = Browser::of(&api);
    let p = b.get(&format!("/ui/tasks/{id}/diff")).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains(r#"<section id="diff">"#));
    assert!(
        p.html
            .contains(r#"<span class="diff-add">+first line</span>"#),
        "{}",
        p.html
    );
    assert!(
        p.html
            .contains(r#"<span class="diff-add">+second line</span>"#)
    );
    let one = b.get(&format!("/ui/tasks/{id}/diff?step=note")).await;
    assert_eq!(one.status, 200);
    assert!(one.html.contains("+first line"));
    let none = b.get(&format!("/ui/tasks/{id}/diff?step=greet")).await;
    assert!(none.html.contains("No changes"), "{}", none.html);
}

#[tokio::test]
async fn a_parked_task_shows_its_card_and_the_form_approves_it() {
    let api = Api::user(shared(), "ui-task-gate").await;
    let id = finished(&api, GATED, &["awaiting_approval"]).await;
    let b = Browser::of(&api);
    let p = b.get(&format!("/ui/tasks/{id}")).await;
    assert_eq!(p.status, 200, "{}", p.html);
    let h = &p.html;
    assert!(
        h.contains(r#"class="approval card" data-step="publish""#),
        "{h}"
    );
    assert!(h.contains(r#"<pre class="command">write published.txt</pre>"#));
    assert!(h.contains(r#"<span class="tier badge tier-low_write">low write</span>"#));
    assert!(h.contains(r#"class="rule mono">action:write<"#));
    assert!(h.contains(r#"class="approve primary""#) && h.contains(r#"class="deny danger""#));
    assert!(h.contains(r#"id="cancel""#));
    // The card binds to the gate as shown: the hash the API lists.
    let gates = api.get(&format!("/api/v1/tasks/{id}/approvals")).await;
    let hash = gates.body["gates"][0]["request_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        attr_after(
            h,
            r#"class="approval card" data-step="publish""#,
            "data-hash"
        ),
        hash
    );
    let token = csrf(h);
    let action = format!("/ui/tasks/{id}/steps/publish/approve");

    // Without the form's token nothing happens.
    let forged = b
        .post(&action, &[("csrf", "nope"), ("request_hash", &hash)])
        .await;
    assert_eq!(forged.status, 403);
    // An answer to another version of the gate is refused, as by the API.
    let stale = b
        .post(
            &action,
            &[("csrf", &token), ("request_hash", &"0".repeat(64))],
        )
        .await;
    assert_eq!(stale.status, 409, "{}", stale.html);

    // A reload shows the same card: it comes from the parked state.
    let again = b.get(&format!("/ui/tasks/{id}")).await;
    assert!(again.html.contains(r#"data-step="publish" data-hash=""#));

    let ok = b
        .post(&action, &[("csrf", &token), ("request_hash", &hash)])
        .await;
    assert_eq!(ok.status, 303, "{}", ok.html);
    assert_eq!(ok.location, format!("/ui/tasks/{id}?notice=approved"));
    wait_state(&api, &id, &["succeeded"]).await;
    let done = b.get(&ok.location).await;
    assert!(done.html.contains("Approved. The run goes on."));
    assert!(!done.html.contains(r#"class="approval card""#));
    assert!(
        done.html
            .contains(r#"data-step="publish" data-state="succeeded""#)
    );
}

#[tokio::test]
async fn another_users_task_page_is_not_found() {
    let owner = Api::user(shared(), "ui-task-owner").await;
    let other = Api::user(shared(), "ui-task-other").await;
    let id = finished(&owner, GATED, &["awaiting_approval"]).await;
    let b = Browser::of(&other);
    let token = csrf(&b.get("/ui/").await.html);
    for path in [
        format!("/ui/tasks/{id}"),
        format!("/ui/tasks/{id}/diff"),
        format!("/ui/tasks/{id}/revert"),
    ] {
        let p = b.get(&path).await;
        assert_eq!(p.status, 404, "{path}: {}", p.html);
        assert!(!p.html.contains("publish"), "{path} leaks the task");
    }
    for path in [
        format!("/ui/tasks/{id}/cancel"),
        format!("/ui/tasks/{id}/retry"),
        format!("/ui/tasks/{id}/rerun"),
        format!("/ui/tasks/{id}/revert"),
    ] {
        let p = b.post(&path, &[("csrf", &token)]).await;
        assert_eq!(p.status, 404, "{path}: {}", p.html);
    }
    let p = b
        .post(
            &format!("/ui/tasks/{id}/steps/publish/approve"),
            &[("csrf", &token), ("request_hash", "x")],
        )
        .await;
    assert_eq!(p.status, 404);
    // Untouched: still parked for its owner.
    wait_state(&owner, &id, &["awaiting_approval"]).await;
    // A malformed id is a 404 page too.
    assert_eq!(b.get("/ui/tasks/not-a-task").await.status, 404);
}

#[tokio::test]
async fn revert_shows_the_dry_run_then_restores_on_confirm() {
    let server = shared();
    let api = Api::user(server, "ui-task-revert").await;
    let id = finished(&api, WRITES, &["succeeded"]).await;
    let file = workspace_file(server, &id, "note.txt");
    assert!(file.exists());
    let b = Browser::of(&api);

    let page = b.get(&format!("/ui/tasks/{id}")).await;
    assert_eq!(
        attr_after(&page.html, r#"id="revert-run""#, "href").replace("&#x2f;", "/"),
        format!("/ui/tasks/{id}/revert")
    );

    let p = b.get(&format!("/ui/tasks/{id}/revert?step=note")).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains(r#"id="revert-preview""#));
    assert!(p.html.contains("note.txt"), "{}", p.html);
    assert!(p.html.contains("remove (the run created it)"));
    assert!(p.html.contains(r#"id="revert-drift""#));
    assert!(p.html.contains("No drift"));
    assert!(p.html.contains(r#"id="revert-confirm""#));
    // Looking changed nothing.
    assert!(file.exists());

    // A file changed since the run: the preview says so and a plain confirm undoes nothing.
    std::fs::write(&file, "edited by hand\n").unwrap();
    let drifted = b.get(&format!("/ui/tasks/{id}/revert")).await;
    assert!(!drifted.html.contains("No drift"));
    assert!(drifted.html.contains(r#"id="revert-force""#));
    let token = csrf(&drifted.html);
    let refused = b
        .post(&format!("/ui/tasks/{id}/revert?step="), &[("csrf", &token)])
        .await;
    assert_eq!(refused.status, 303, "{}", refused.html);
    assert!(refused.location.contains("notice=conflict"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "edited by hand\n");
    let shown = b.get(&refused.location).await;
    assert!(shown.html.contains("Nothing was undone"));

    // Confirmed with the overwrite box: restored, and the task page says so.
    let done = b
        .post(
            &format!("/ui/tasks/{id}/revert?step="),
            &[("csrf", &token), ("force", "1")],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.html);
    assert_eq!(done.location, format!("/ui/tasks/{id}?notice=reverted"));
    assert!(!file.exists());
    let after = b.get(&done.location).await;
    assert!(after.html.contains("Reverted."));
    assert!(after.html.contains(r#"<ul id="reverts">"#));
}

#[tokio::test]
async fn a_failed_task_retries_from_its_failed_step_in_place() {
    let server = shared();
    let api = Api::user(server, "ui-task-retry").await;
    let id = finished(&api, FAILS_UNTIL_GO, &["failed"]).await;
    let b = Browser::of(&api);
    let p = b.get(&format!("/ui/tasks/{id}")).await;
    assert!(
        p.html
            .contains(r#"id="task-state" class="badge state-failed""#)
    );
    assert!(p.html.contains(r#"id="retry""#), "{}", p.html);
    assert!(p.html.contains("Retry from the failed step"));
    assert!(p.html.contains(r#"id="rerun""#));
    assert!(!p.html.contains("Runs the workflow again as a new task"));
    let token = csrf(&p.html);

    // Another user's retry is the same 404 as for a task that does not exist, page and API.
    let other = Api::user(server, "ui-task-retry-other").await;
    let ob = Browser::of(&other);
    let other_token = csrf(&ob.get("/ui/").await.html);
    let r = ob
        .post(&format!("/ui/tasks/{id}/retry"), &[("csrf", &other_token)])
        .await;
    assert_eq!(r.status, 404, "{}", r.html);
    let r = other
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);

    // What the failed step missed now exists: a change since the failure, refused unless forced.
    std::fs::write(workspace_file(server, &id, "go"), "").unwrap();
    let r = api
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["code"], "workspace_drift", "{:?}", r.body);
    let r = b
        .post(
            &format!("/ui/tasks/{id}/retry"),
            &[("csrf", &token), ("force", "1")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.html);
    assert_eq!(r.location, format!("/ui/tasks/{id}?notice=retried"));
    let done = wait_state(&api, &id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let p = b.get(&format!("/ui/tasks/{id}")).await;
    let h = &p.html;
    assert!(
        h.contains(r#"id="task-state" class="badge state-succeeded""#),
        "{h}"
    );
    assert!(
        h.contains(r#"data-step="first" data-state="succeeded""#),
        "{h}"
    );
    assert!(
        h.contains(r#"data-step="check" data-state="succeeded""#),
        "{h}"
    );
    assert!(
        h.contains(r#"data-step="after" data-state="succeeded""#),
        "{h}"
    );
    // The first step ran once: its file was written by the first attempt only.
    assert_eq!(
        std::fs::read_to_string(workspace_file(server, &id, "after.txt")).unwrap(),
        "made once ok"
    );
    let record = api.get(&format!("/api/v1/tasks/{id}")).await;
    let first = record.body["run"]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == "first"))
        .cloned()
        .unwrap_or_else(|| panic!("{:?}", record.body));
    assert_eq!(first["attempts"], 1, "{first:#}");
    // The run's stream from the start goes past the failure to the retry's end.
    let mut sse = Sse::open(&api, &format!("/api/v1/tasks/{id}/stream"), None).await;
    let all = sse.rest().await;
    let kinds: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert!(kinds.contains(&"run_retried"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "run_finished").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(all.last().unwrap().data["state"], "succeeded", "{all:#?}");

    // Nothing left to retry.
    let r = api
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["code"], "not_failed", "{:?}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("only a failed run can be retried"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn a_failed_task_can_still_run_again_as_a_new_task() {
    let api = Api::user(shared(), "ui-task-rerun").await;
    let id = finished(&api, FAILS, &["failed"]).await;
    let b = Browser::of(&api);
    let p = b.get(&format!("/ui/tasks/{id}")).await;
    assert!(p.html.contains(r#"class="exit">3<"#), "{}", p.html);
    assert!(p.html.contains("about to fail"));
    assert!(p.html.contains(r#"id="rerun""#));
    let r = b
        .post(
            &format!("/ui/tasks/{id}/rerun"),
            &[("csrf", &csrf(&p.html))],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.html);
    let new_id = r.location.strip_prefix("/ui/tasks/").unwrap().to_string();
    assert_ne!(new_id, id);
    let again = wait_state(&api, &new_id, &["failed"]).await;
    assert_eq!(again["started_by"], json!(format!("rerun:{id}")));
}

#[tokio::test]
async fn a_running_task_can_be_cancelled_from_its_page() {
    let server = shared();
    let api = Api::user(server, "ui-task-cancel").await;
    let (id, _) = started(&api, SLOW).await;
    // Cancel once the step is under way, as a person watching it would.
    let mark = workspace_file(server, &id, "started.txt");
    for _ in 0..600 {
        if mark.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(mark.exists(), "the step never started");
    let b = Browser::of(&api);
    let p = b.get(&format!("/ui/tasks/{id}")).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains(r#"id="cancel""#), "{}", p.html);
    assert!(p.html.contains(r#"id="live""#));
    let r = b
        .post(
            &format!("/ui/tasks/{id}/cancel"),
            &[("csrf", &csrf(&p.html))],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.html);
    assert!(r.location.starts_with(&format!("/ui/tasks/{id}?notice=")));
    wait_state(&api, &id, &["cancelled"]).await;
}

#[tokio::test]
async fn a_task_that_has_not_run_shows_its_plan() {
    let api = Api::user(shared(), "ui-task-plan").await;
    let task = workflow_task(&api, WRITES).await;
    let id = task["id"].as_str().unwrap();
    let p = Browser::of(&api).get(&format!("/ui/tasks/{id}")).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(!p.html.contains(r#"id="task-state""#));
}

#[tokio::test]
async fn a_network_step_is_approved_on_the_page_and_its_egress_is_shown() {
    let api = Api::user(shared(), "ui-task-egress").await;
    let id = finished(&api, EGRESS, &["awaiting_approval"]).await;
    let b = Browser::of(&api);
    let p = b.get(&format!("/ui/tasks/{id}")).await;
    assert!(
        p.html
            .contains(r#"<span class="tier badge tier-network_egress">network egress</span>"#),
        "{}",
        p.html
    );
    assert!(p.html.contains(r#"<dd class="network mono">a.test</dd>"#));
    let hash = attr_after(
        &p.html,
        r#"class="approval card" data-step="fetch""#,
        "data-hash",
    );
    let ok = b
        .post(
            &format!("/ui/tasks/{id}/steps/fetch/approve"),
            &[("csrf", &csrf(&p.html)), ("request_hash", &hash)],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.html);
    wait_state(&api, &id, &["succeeded", "failed"]).await;
    let done = b.get(&format!("/ui/tasks/{id}")).await;
    let at = done
        .html
        .find(r#"class="egress" data-step="fetch""#)
        .unwrap();
    let egress = &done.html[at..];
    assert!(
        egress.contains(r#"<span class="badge verdict-refused">refused</span> <span class="mono">GET b.test:80</span>"#),
        "{egress}"
    );
    assert!(egress.contains("not allowed"));
    let at = done
        .html
        .find(r#"class="enforcement" data-step="fetch""#)
        .unwrap();
    assert!(done.html[at..].contains("layer-on"), "{}", &done.html[at..]);
}

#[tokio::test]
async fn secret_inputs_stay_off_the_page() {
    let api = Api::user(shared(), "ui-task-secret").await;
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
    let secret = "s3cr3t-value-UI";
    let r = api
        .post(
            "/api/v1/tasks",
            json!({"workflow": yaml, "inputs": {"token": secret}}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let run = api
        .post(&format!("/api/v1/tasks/{id}/run"), json!({}))
        .await;
    assert_eq!(run.status, 202);
    wait_state(&api, &id, &["succeeded"]).await;
    let p = Browser::of(&api).get(&format!("/ui/tasks/{id}")).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains("who=world"), "{}", p.html);
    assert!(p.html.contains("[secret:token]"));
    assert!(!p.html.contains(secret), "the secret is on the page");
}
