//! One user's task is invisible to another: its address is the not-found page and their
//! dashboard does not list it.

use serde_json::json;

use crate::harness::{account, assert_csp_clean, js_str, shared, with_browser};
use crate::server::unique;

fn one_write(name: &str) -> String {
    format!(
        "version: 1\nname: {name}\nsteps:\n  - id: note\n    write: {{ path: note.txt, content: \"private\\n\" }}\n"
    )
}

#[tokio::test]
async fn another_users_task_is_not_found_and_not_listed() {
    let server = &shared().server;
    let (_, owner) = account(server, "owner").await;
    let private_name = unique("private-task");
    let r = owner
        .post(
            "/api/v1/tasks",
            json!({"workflow": one_write(&private_name)}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let theirs = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        owner.get(&format!("/api/v1/tasks/{theirs}")).await.status,
        200
    );

    let (viewer, viewer_api) = account(server, "viewer").await;
    let r = viewer_api
        .post(
            "/api/v1/tasks",
            json!({"workflow": one_write(&unique("own-task"))}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let mine = r.body["id"].as_str().unwrap().to_string();

    with_browser("isolation", &server.url, |b| async move {
        b.sign_in(&viewer).await;
        // The list works (the viewer's own task is there) and holds nothing of the other's.
        b.wait(
            "the viewer's own task on the dashboard",
            &format!(
                "document.querySelector({})",
                js_str(&format!("#tasks tr[data-task=\"{mine}\"]"))
            ),
        )
        .await;
        let source = b.client.source().await.unwrap();
        assert!(
            !source.contains(&theirs) && !source.contains(&private_name),
            "the dashboard shows another user's task"
        );
        b.shot("dashboard-of-another-user").await;

        b.goto(&format!("/ui/tasks/{theirs}")).await;
        b.wait(
            "the not-found page",
            "document.querySelector('.error') && document.body.innerText.includes('HTTP 404')",
        )
        .await;
        let source = b.client.source().await.unwrap();
        assert!(
            !source.contains(&private_name) && !source.contains("note.txt"),
            "the not-found page shows the task"
        );
        b.shot("task-of-another-user").await;
        // The API the pages' scripts call answers the same way to the browser's cookie.
        let (status, _, _) = b.fetch(&format!("/api/v1/tasks/{theirs}")).await;
        assert_eq!(status, 404);
        assert_csp_clean(server).await;
    })
    .await;
}
