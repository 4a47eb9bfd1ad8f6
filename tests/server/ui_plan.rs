//! The new-task page, the plan preview and the run-a-workflow form, over HTTP against a real
//! server: forms posted as a browser posts them (urlencoded, session cookie, CSRF token), the
//! HTML answered checked for what the page promises.

use serde_json::json;

use crate::fake_anthropic::Fake;
use crate::gitkit::{GitRepo, add_source, admin_server};
use crate::harness::{Api, Server};
use crate::instructions::server_for;
use crate::taskkit::wait_state;
use crate::uikit::{Browser, attr_after};

/// The task id of a `/ui/tasks/{id}` redirect.
fn task_of(location: &str) -> String {
    let id = location
        .strip_prefix("/ui/tasks/")
        .unwrap_or_else(|| panic!("{location}"));
    assert_eq!(id.len(), 36, "{location}");
    id.to_string()
}

/// The `<tr data-step="ID" ...>…</tr>` row of a step.
fn row<'a>(html: &'a str, step: &str) -> &'a str {
    let start = html
        .find(&format!(r#"<tr data-step="{step}""#))
        .unwrap_or_else(|| panic!("no row {step} in {html}"));
    let len = html[start..].find("</tr>").unwrap();
    &html[start..start + len]
}

const PLANNED: &str = "version: 1
name: tidy
description: Note the key, then wipe the build directory.
steps:
  - id: note
    write:
      path: out/key.txt
      content: \"<SECRET_1>\\n\"
  - id: wipe
    needs: [note]
    risk: destructive
    shell: rm -rf build
";

#[tokio::test]
async fn an_instruction_posted_by_the_form_becomes_a_plan_preview() {
    let fake = Fake::start(vec![format!("```yaml\n{PLANNED}```\n")]);
    let server = server_for(&fake);
    let api = Api::user(&server, "ui-plan").await;
    let b = Browser::of(&api);
    let csrf = b.csrf().await;

    let new = b.get("/ui/tasks/new").await;
    assert!(new.html.contains(r#"id="instruction""#), "{}", new.html);
    assert!(new.html.contains(r#"id="plan-submit""#), "{}", new.html);

    // Without the CSRF token nothing is planned.
    let forged = b
        .post(
            "/ui/tasks/new",
            &[("csrf", "x"), ("instruction", "tidy up")],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(fake.requests().is_empty());

    let instruction = "store the key AKIAZ7XQ3LM9PQ2RST4U in out/key.txt, then wipe build/";
    let created = b
        .post(
            "/ui/tasks/new",
            &[("csrf", &csrf), ("instruction", instruction)],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.html);
    let id = task_of(&created.location);
    // The provider saw the placeholder, never the key.
    let sent = fake.requests();
    assert!(!sent[0].contains("AKIAZ7XQ3LM9PQ2RST4U"), "{}", sent[0]);

    // The task's own page shows the plan while the task has not run.
    let task_page = b.get(&created.location).await;
    assert_eq!(task_page.status, 200, "{}", task_page.html);
    assert!(
        task_page.html.contains(r#"id="approve-plan""#),
        "{}",
        task_page.html
    );
    let preview = b.get(&format!("/ui/tasks/{id}/plan")).await;
    assert_eq!(preview.status, 200, "{}", preview.html);
    let html = &preview.html;
    assert!(html.contains(r#"<svg id="dag""#), "{html}");
    assert!(html.contains(r#"data-step="wipe""#), "{html}");
    // Escaped like all text (`/` included).
    assert!(html.contains(&instruction.replace('/', "&#x2f;")), "{html}");
    assert!(html.contains("anthropic"), "provenance: {html}");
    // The destructive step says so in words and with a marker, not by colour alone.
    let wipe = row(html, "wipe");
    assert!(wipe.contains(r#"class="destructive""#), "{wipe}");
    assert!(wipe.contains("⚠"), "{wipe}");
    assert!(
        wipe.contains(r#"class="tier""#) && wipe.contains("destructive"),
        "{wipe}"
    );
    assert!(
        wipe.contains(r#"class="rule mono">rm-recursive<"#),
        "{wipe}"
    );
    assert!(wipe.contains("recursive delete"), "{wipe}");
    assert!(wipe.contains("stops for approval"), "{wipe}");
    let note = row(html, "note");
    assert!(note.contains(r#"data-undo="exact""#), "{note}");
    // Where the secret of the instruction went, by placeholder, without its value.
    let secrets = &html[html.find(r#"id="placeholders""#).unwrap()..];
    let secrets = &secrets[..secrets.find("</section>").unwrap()];
    assert!(secrets.contains("&lt;SECRET_1&gt;"), "{secrets}");
    assert!(
        secrets.contains("note: &#x2f;write&#x2f;content"),
        "{secrets}"
    );
    assert!(!secrets.contains("AKIAZ7XQ3LM9PQ2RST4U"), "{secrets}");
    assert!(html.contains(r#"id="workflow-yaml""#));
    assert!(html.contains(r#"id="validate""#));
    assert!(html.contains(r#"id="approve-plan""#));
    assert!(
        html.contains("will still stop and wait for approval"),
        "{html}"
    );
    // No inline script or style reaches the page.
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "{html}"
    );
}

#[tokio::test]
async fn a_planner_failure_keeps_the_instruction_and_says_why() {
    // A provider that answers nothing useful: every call fails.
    let fake = Fake::start(Vec::new());
    let server = server_for(&fake);
    let api = Api::user(&server, "ui-plan-fail").await;
    let b = Browser::of(&api);
    let csrf = b.csrf().await;
    let page = b
        .post(
            "/ui/tasks/new",
            &[("csrf", &csrf), ("instruction", "make <b>tea</b>")],
        )
        .await;
    assert_eq!(page.status, 502, "{}", page.html);
    assert!(page.html.contains(r#"id="plan-error""#), "{}", page.html);
    // Kept, and escaped.
    assert!(
        page.html.contains("make &lt;b&gt;tea&lt;&#x2f;b&gt;"),
        "{}",
        page.html
    );
}

const POSTED: &str = "version: 1
name: greet
steps:
  - id: greet
    write:
      path: out/hello.txt
      content: \"hello\\n\"
";

/// A task from pasted YAML through the new-task page; its id.
async fn pasted(b: &Browser, csrf: &str) -> String {
    let created = b
        .post(
            "/ui/tasks/new/workflow",
            &[("csrf", csrf), ("workflow", POSTED)],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.html);
    task_of(&created.location)
}

#[tokio::test]
async fn an_edited_plan_is_checked_with_located_errors_and_saved_as_a_new_task() {
    let server = Server::start(&[], &[]);
    let api = Api::user(&server, "ui-edit").await;
    let b = Browser::of(&api);
    let csrf = b.csrf().await;

    // Pasted YAML with a mistake: the form again, the error located.
    let bad = b
        .post(
            "/ui/tasks/new/workflow",
            &[
                ("csrf", &csrf),
                (
                    "workflow",
                    "version: 1\nname: x\nsteps:\n  - id: a\n    needs: [nope]\n    shell: echo\n",
                ),
            ],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.html);
    assert!(bad.html.contains(r#"id="workflow-error""#), "{}", bad.html);
    assert!(bad.html.contains("nope"), "{}", bad.html);

    let id = pasted(&b, &csrf).await;
    let broken = POSTED.replace("  - id: greet\n", "  - id: greet\n    needs: [missing]\n");
    let checked = b
        .post(
            &format!("/ui/tasks/{id}/plan"),
            &[
                ("csrf", &csrf),
                ("workflow", &broken),
                ("action", "validate"),
            ],
        )
        .await;
    assert_eq!(checked.status, 400, "{}", checked.html);
    let errors = &checked.html[checked.html.find(r#"id="validation-errors""#).unwrap()..];
    assert!(errors.contains(r#"data-line="5""#), "{errors}");
    assert!(errors.contains("missing"), "{errors}");
    // The edit is shown again as typed.
    assert!(
        checked.html.contains("needs: [missing]"),
        "{}",
        checked.html
    );

    // A valid edit, checked: its steps and tiers.
    let edited = POSTED.replace("hello", "hi there");
    let ok = b
        .post(
            &format!("/ui/tasks/{id}/plan"),
            &[
                ("csrf", &csrf),
                ("workflow", &edited),
                ("action", "validate"),
            ],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.html);
    assert!(ok.html.contains(r#"id="validation-ok""#), "{}", ok.html);

    // Saved: a new task; the old plan is untouched.
    let saved = b
        .post(
            &format!("/ui/tasks/{id}/plan"),
            &[("csrf", &csrf), ("workflow", &edited), ("action", "save")],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.html);
    let new_id = task_of(&saved.location);
    assert_ne!(new_id, id);
    let old = api.get(&format!("/api/v1/tasks/{id}")).await;
    assert!(old.body["workflow"].as_str().unwrap().contains("hello\\n"));
    let new = api.get(&format!("/api/v1/tasks/{new_id}")).await;
    assert!(new.body["workflow"].as_str().unwrap().contains("hi there"));

    // Someone else's task is not found, whatever the form says.
    let other = Api::user(&server, "ui-edit-other").await;
    let ob = Browser::of(&other);
    let ocsrf = ob.csrf().await;
    let denied = ob
        .post(
            &format!("/ui/tasks/{id}/plan"),
            &[("csrf", &ocsrf), ("workflow", POSTED), ("action", "save")],
        )
        .await;
    assert_eq!(denied.status, 404);
}

#[tokio::test]
async fn approving_the_plan_starts_its_run() {
    let server = Server::start(&[], &[]);
    let api = Api::user(&server, "ui-approve").await;
    let b = Browser::of(&api);
    let csrf = b.csrf().await;
    let id = pasted(&b, &csrf).await;
    let preview = b.get(&format!("/ui/tasks/{id}/plan")).await;
    let hash = attr_after(&preview.html, r#"name="plan_sha256""#, "value");

    // Without the session's CSRF token nothing starts.
    let forged = b
        .post(
            &format!("/ui/tasks/{id}/start"),
            &[("csrf", "x"), ("plan_sha256", &hash)],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.html);

    // A hash of another plan is refused.
    let stale = b
        .post(
            &format!("/ui/tasks/{id}/start"),
            &[("csrf", &csrf), ("plan_sha256", &"0".repeat(64))],
        )
        .await;
    assert_eq!(stale.status, 409, "{}", stale.html);
    assert_eq!(
        api.get(&format!("/api/v1/tasks/{id}")).await.body["state"],
        "planned"
    );

    let started = b
        .post(
            &format!("/ui/tasks/{id}/start"),
            &[("csrf", &csrf), ("plan_sha256", &hash)],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.html);
    assert_eq!(started.location, format!("/ui/tasks/{id}"));
    wait_state(&api, &id, &["succeeded"]).await;
    // A second click goes to the run, not to an error.
    let again = b
        .post(
            &format!("/ui/tasks/{id}/start"),
            &[("csrf", &csrf), ("plan_sha256", &hash)],
        )
        .await;
    assert_eq!(again.status, 303, "{}", again.html);
}

const TYPED: &str = "version: 1
name: typed
description: Say something a few times.
inputs:
  times:
    type: integer
    default: 2
    description: How many times
  loud:
    type: boolean
    default: false
    description: Shout it
  word:
    type: string
    description: The word to say
steps:
  - id: say
    shell: echo {{ inputs.word }} {{ inputs.times }} {{ inputs.loud }}
";

#[tokio::test]
async fn a_source_workflow_runs_from_a_form_of_its_typed_inputs() {
    let repo = GitRepo::new();
    repo.write("flows/typed.yaml", TYPED);
    repo.commit("typed");
    let (_server, admin) = admin_server(&[], &[]).await;
    add_source(&admin, "ops", &repo.location(), json!({"dir": "flows"})).await;
    let listed = admin.get("/api/v1/workflows").await;
    let path = listed.body["workflows"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let b = Browser::of(&admin);
    let csrf = b.csrf().await;

    // The new-task page links to it.
    let new = b.get("/ui/tasks/new").await;
    assert!(
        new.html
            .contains("run?source=ops&amp;path=flows%2Ftyped.yaml"),
        "{}",
        new.html
    );

    let form_path = format!(
        "/ui/workflows/run?{}",
        serde_urlencoded_pairs(&[("source", "ops"), ("path", &path)])
    );
    let form = b.get(&form_path).await;
    assert_eq!(form.status, 200, "{}", form.html);
    let html = &form.html;
    assert!(html.contains(r#"id="input-times""#), "{html}");
    assert!(html.contains(r#"type="number" step="1""#), "{html}");
    assert!(html.contains(r#"value="2""#), "{html}");
    assert!(
        html.contains(r#"id="input-loud""#) && html.contains(r#"type="checkbox""#),
        "{html}"
    );
    assert!(
        html.contains(r#"<label for="input-word">The word to say"#),
        "{html}"
    );
    assert!(html.contains(r#"id="run-workflow""#), "{html}");

    // A bad number and a missing word: the form again, each error by its field.
    let bad = b
        .post(
            "/ui/workflows/run",
            &[
                ("csrf", &csrf),
                ("source", "ops"),
                ("path", &path),
                ("input.times", "many"),
                ("input.word", ""),
            ],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.html);
    assert!(bad.html.contains(r#"id="error-times""#), "{}", bad.html);
    assert!(bad.html.contains(r#"id="error-word""#), "{}", bad.html);
    assert!(bad.html.contains(r#"value="many""#), "{}", bad.html);

    let ran = b
        .post(
            "/ui/workflows/run",
            &[
                ("csrf", &csrf),
                ("source", "ops"),
                ("path", &path),
                ("input.times", "3"),
                ("input.loud", "true"),
                ("input.word", "hey"),
            ],
        )
        .await;
    assert_eq!(ran.status, 303, "{}", ran.html);
    let id = task_of(&ran.location);
    let task = wait_state(&admin, &id, &["succeeded", "failed"]).await;
    assert_eq!(task["inputs"]["times"], 3, "{task:?}");
    assert_eq!(task["inputs"]["loud"], true, "{task:?}");
    assert_eq!(
        task["run"]["steps"][0]["stdout"].as_str().unwrap().trim(),
        "hey 3 true"
    );
}

fn serde_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://x/").unwrap();
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or("").to_string()
}
