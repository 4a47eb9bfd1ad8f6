//! The dashboard, workflows and audit pages over HTTP: what each viewer sees, with the session
//! cookie a browser would send.

use serde_json::json;

use crate::gitkit::{GitRepo, add_source, admin_server};
use crate::harness::{Api, shared};
use crate::taskkit::{GATED, started, wait_state, workflow_task};

const GREET: &str = r#"version: 1
name: greet
steps:
  - id: greet
    write: { path: hello.txt, content: "Hello\n" }
"#;

const BROKEN: &str =
    "version: 1\nname: broken\nsteps:\n  - id: a\n    shell: echo a\n    needs: [nope]\n";

/// A page as a browser signed in as `api`'s user gets it: status and HTML.
async fn page(api: &Api, path: &str) -> (u16, String) {
    let token = api.token.clone().unwrap();
    let res = api
        .http
        .get(api.url(path))
        .header("cookie", format!("sc_session={token}"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    // Templates escape `/` in values; a browser reads `&#x2f;` as `/`, and so do these tests.
    (status, res.text().await.unwrap().replace("&#x2f;", "/"))
}

/// The element with `id="ID"` up to the end of its tag `tag` (tables and sections here do not
/// nest in themselves).
fn element<'a>(html: &'a str, tag: &str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let end = html[start..]
        .find(&format!("</{tag}>"))
        .unwrap_or_else(|| panic!("#{id} does not end"));
    &html[start..start + end]
}

fn title(html: &str) -> &str {
    let start = html.find("<title>").unwrap() + "<title>".len();
    let end = html.find("</title>").unwrap();
    &html[start..end]
}

fn row_count(html: &str) -> usize {
    html.matches("<tr data-task=").count()
}

#[tokio::test]
async fn the_dashboard_lists_own_tasks_waiting_ones_first_and_nobody_elses() {
    let (server, admin) = admin_server(&[], &[]).await;
    let ada = Api::user(&server, "ada").await;
    let bob = Api::user(&server, "bob").await;

    let (empty_status, empty) = page(&ada, "/ui/").await;
    assert_eq!(empty_status, 200);
    assert!(empty.contains("No tasks yet."), "{empty}");
    assert!(empty.contains("href=\"/ui/tasks/new\""));

    let planned = workflow_task(&ada, GREET).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (gated, _) = started(&ada, GATED).await;
    wait_state(&ada, &gated, &["awaiting_approval"]).await;

    let (status, html) = page(&ada, "/ui/").await;
    assert_eq!(status, 200);
    assert_eq!(title(&html), "(1) Tasks · secureclaw");
    let awaiting = element(&html, "table", "awaiting");
    assert!(
        awaiting.contains(&format!("data-task=\"{gated}\"")),
        "{awaiting}"
    );
    assert!(!awaiting.contains(&planned));
    assert!(awaiting.contains("awaiting approval"));
    assert!(html.find("id=\"awaiting\"") < html.find("id=\"tasks\""));
    let tasks = element(&html, "table", "tasks");
    assert_eq!(row_count(tasks), 2, "{tasks}");
    // Newest first.
    assert!(tasks.find(&gated) < tasks.find(&planned), "{tasks}");
    assert!(tasks.contains(&format!("href=\"/ui/tasks/{planned}\"")));
    assert!(tasks.contains("class=\"badge state-planned\">planned<"));
    assert!(tasks.contains("1 of 3 done"), "{tasks}");
    // Only admins get the owner column.
    assert!(!tasks.contains("data-label=\"Owner\""));

    // Another user sees neither task, and waits for nothing.
    let (_, other) = page(&bob, "/ui/").await;
    assert_eq!(title(&other), "Tasks · secureclaw");
    assert!(
        !other.contains(&planned) && !other.contains(&gated),
        "{other}"
    );

    // An admin sees everyone's, with the owner named.
    let (_, all) = page(&admin, "/ui/").await;
    assert_eq!(title(&all), "(1) Tasks · secureclaw");
    let tasks = element(&all, "table", "tasks");
    assert!(tasks.contains(&planned) && tasks.contains(&gated));
    assert!(tasks.contains("data-label=\"Owner\">ada-"), "{tasks}");

    // The audit page: ada's own entries, filtered by kind; none of them for bob.
    let (status, audit) = page(&ada, "/ui/audit?kind=task_created").await;
    assert_eq!(status, 200);
    let table = element(&audit, "table", "audit");
    assert_eq!(table.matches("<tr class=\"entry\"").count(), 2, "{table}");
    assert_eq!(table.matches("data-kind=\"task_created\"").count(), 2);
    assert!(table.contains(&planned) && table.contains(&gated));
    assert!(audit.contains("<option value=\"task_created\" selected>"));

    let (_, by_task) = page(&ada, &format!("/ui/audit?task={gated}")).await;
    let table = element(&by_task, "table", "audit");
    assert!(table.contains("data-kind=\"run_parked\""), "{table}");
    assert!(!table.contains(&planned), "{table}");

    let (_, theirs) = page(&bob, "/ui/audit").await;
    let table = element(&theirs, "table", "audit");
    assert!(
        !table.contains(&planned) && !table.contains(&gated),
        "{table}"
    );
    assert!(!table.contains("user:ada-"), "{table}");
    assert!(table.contains("data-kind=\"auth_registered\""), "{table}");
    let (_, probing) = page(&bob, &format!("/ui/audit?task={gated}")).await;
    assert_eq!(
        element(&probing, "table", "audit")
            .matches("<tr class=\"entry\"")
            .count(),
        0
    );

    // The API the page draws: the same entries and the same refusal.
    let api = ada.get("/api/v1/audit?kind=task_created&limit=1").await;
    assert_eq!(api.status, 200, "{:?}", api.body);
    assert_eq!(api.body["total"], 2);
    assert_eq!(api.body["entries"].as_array().unwrap().len(), 1);
    assert_eq!(api.body["entries"][0]["task"], gated.as_str());
    let refused = bob.get(&format!("/api/v1/audit?task={gated}")).await;
    assert_eq!(refused.status, 404);
    assert_eq!(bob.get("/api/v1/audit?limit=x").await.status, 400);

    let (_, everything) = page(&admin, "/ui/audit?user=").await;
    assert!(element(&everything, "table", "audit").contains(&gated));
}

#[tokio::test]
async fn more_than_a_page_of_tasks_pages() {
    let api = Api::user(shared(), "pages").await;
    for _ in 0..51 {
        let r = api
            .post("/api/v1/tasks", json!({ "workflow": GREET }))
            .await;
        assert_eq!(r.status, 201);
    }
    let (_, first) = page(&api, "/ui/").await;
    assert_eq!(row_count(element(&first, "table", "tasks")), 50);
    assert!(
        first.contains("<a rel=\"next\" href=\"/ui/?page=2\">"),
        "{first}"
    );
    assert!(!first.contains("rel=\"prev\""));

    let (_, second) = page(&api, "/ui/?page=2").await;
    assert_eq!(row_count(element(&second, "table", "tasks")), 1);
    assert!(
        second.contains("<a rel=\"prev\" href=\"/ui/\">"),
        "{second}"
    );
    assert!(!second.contains("rel=\"next\""));

    // A page number that is not one shows the first page.
    let (status, odd) = page(&api, "/ui/?page=x").await;
    assert_eq!(status, 200);
    assert_eq!(row_count(element(&odd, "table", "tasks")), 50);
}

#[tokio::test]
async fn the_workflows_page_lists_sources_and_files_with_their_status() {
    let repo = GitRepo::new();
    repo.write("flows/say.yaml", GREET);
    repo.write("flows/broken.yaml", BROKEN);
    repo.commit("first");
    let (server, admin) = admin_server(&[], &[]).await;
    add_source(
        &admin,
        "ops",
        &repo.location(),
        json!({"dir": "flows", "branch": "main"}),
    )
    .await;

    let (status, html) = page(&admin, "/ui/workflows").await;
    assert_eq!(status, 200);
    let sources = element(&html, "section", "sources");
    assert!(sources.contains("data-source=\"ops\""), "{sources}");
    assert!(sources.contains("main"));

    let files = element(&html, "table", "workflow-files");
    let say = &files[files
        .find("flows/say.yaml")
        .unwrap_or_else(|| panic!("{files}"))..];
    let say = &say[..say.find("</tr>").unwrap()];
    assert!(say.contains(">valid<"), "{say}");
    assert!(
        say.contains("href=\"/ui/workflows/run?source=ops&amp;path=flows%2Fsay.yaml\""),
        "{say}"
    );
    let broken = &files[files.find("flows/broken.yaml").unwrap()..];
    let broken = &broken[..broken.find("</tr>").unwrap()];
    assert!(broken.contains(">invalid<"), "{broken}");
    assert!(broken.contains("nope"), "{broken}");
    assert!(!broken.contains("/ui/workflows/run"), "{broken}");

    assert!(element(&html, "section", "triggers").contains("No webhook triggers"));
    assert!(html.contains("id=\"schedules\""));

    // A user who is not an admin sees the files, and why there are no triggers.
    let user = Api::user(&server, "viewer").await;
    let (status, theirs) = page(&user, "/ui/workflows").await;
    assert_eq!(status, 200);
    assert!(element(&theirs, "table", "workflow-files").contains("flows/say.yaml"));
    assert!(element(&theirs, "section", "triggers").contains("Only admins"));
}

#[tokio::test]
async fn the_pages_send_a_browser_without_a_session_to_sign_in() {
    let api = shared().client();
    for path in ["/ui/", "/ui/workflows", "/ui/audit"] {
        let r = api.http.get(api.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(
            r.url().path().starts_with("/ui/login"),
            "{path}: {}",
            r.url()
        );
    }
}
