//! Workflow sources: a real git repository registered by path, its files listed with located
//! errors, runs that record the commit and blob they ran, a new commit picked up by a fetch,
//! and a re-run at exactly the old commit.

use serde_json::{Value, json};

use crate::gitkit::{GitRepo, add_source, admin_server};
use crate::harness::Api;
use crate::taskkit::wait_state;

fn echo_workflow(word: &str) -> String {
    format!("version: 1\nname: say\nsteps:\n  - id: say\n    shell: echo {word}\n")
}

const BROKEN: &str =
    "version: 1\nname: broken\nsteps:\n  - id: a\n    shell: echo a\n    needs: [nope]\n";

async fn run(api: &Api, body: Value) -> (String, String) {
    let r = api.post("/api/v1/workflows/run", body).await;
    assert_eq!(r.status, 202, "run: {:?}", r.body);
    (
        r.body["task_id"].as_str().unwrap().to_string(),
        r.body["run_id"].as_str().unwrap().to_string(),
    )
}

async fn said(api: &Api, task: &str) -> (Value, String) {
    let t = wait_state(api, task, &["succeeded", "failed"]).await;
    assert_eq!(t["state"], "succeeded", "{t:?}");
    let out = t["run"]["steps"][0]["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    (t, out)
}

#[tokio::test]
async fn a_repository_source_lists_its_files_runs_at_a_commit_and_reruns_exactly() {
    let repo = GitRepo::new();
    repo.write("flows/say.yaml", &echo_workflow("one"));
    repo.write("flows/broken.yaml", BROKEN);
    repo.write("elsewhere/ignored.yaml", &echo_workflow("no"));
    let first = repo.commit("first");
    let (server, admin) = admin_server(&[], &[]).await;
    let src = add_source(
        &admin,
        "ops",
        &repo.location(),
        json!({"dir": "flows", "branch": "main"}),
    )
    .await;
    assert_eq!(src["kind"], "git");
    assert_eq!(src["commit"], first.as_str());
    assert_eq!(src["branch"], "main");

    // Every file under the directory, validated, with located errors for the broken one.
    let list = admin.get("/api/v1/workflows").await;
    assert_eq!(list.status, 200);
    let files = list.body["workflows"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["flows/broken.yaml", "flows/say.yaml"]);
    let broken = &files[0];
    assert_eq!(broken["valid"], false);
    let err = &broken["errors"][0];
    assert_eq!(
        (err["line"].as_u64(), err["path"].as_str()),
        (Some(6), Some("/steps/0/needs/0")),
        "{err:?}"
    );
    assert!(err["message"].as_str().unwrap().contains("nope"), "{err:?}");
    assert_eq!(files[1]["valid"], true);
    assert_eq!(
        files[1]["blob"],
        repo.blob(&first, "flows/say.yaml").as_str()
    );

    // Any signed-in user runs it as their own task; the run names the commit and blob.
    let user = Api::user(&server, "runner").await;
    let (task, run_id) = run(&user, json!({"source": "ops", "path": "flows/say.yaml"})).await;
    let (t, out) = said(&user, &task).await;
    assert_eq!(out, "one");
    assert_eq!(t["origin"], "source");
    assert!(
        t["started_by"].as_str().unwrap().starts_with("user:runner"),
        "{t:?}"
    );
    let git = &t["git"];
    assert_eq!(git["commit"], first.as_str());
    assert_eq!(git["path"], "flows/say.yaml");
    assert_eq!(git["source"], "ops");
    assert_eq!(git["blob"], repo.blob(&first, "flows/say.yaml").as_str());
    assert_eq!(git["repository"], repo.location().as_str());
    assert_eq!(git["dirty"], false);

    // The ledger's run_started entry carries the same provenance.
    let export = user
        .get(&format!("/api/v1/tasks/{task}/ledger/export"))
        .await;
    assert_eq!(export.status, 200);
    let started: Value = export.body["jsonl"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"].clone())
        .find(|e| e["kind"] == "run_started" && e["run"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no run_started entry: {}", export.body["jsonl"]));
    assert_eq!(
        started["result"]["provenance"]["commit"],
        first.as_str(),
        "{started:?}"
    );
    assert_eq!(started["result"]["provenance"]["blob"], git["blob"]);

    // A new commit is not seen until the source is fetched; then runs take it.
    repo.write("flows/say.yaml", &echo_workflow("two"));
    let second = repo.commit("second");
    let (task2, _) = run(
        &user,
        json!({"source": "ops", "path": "flows/say.yaml", "fetch": true}),
    )
    .await;
    let (t2, out2) = said(&user, &task2).await;
    assert_eq!(out2, "two");
    assert_eq!(t2["git"]["commit"], second.as_str());

    // The first task re-runs at exactly its commit: the old text, not the head's.
    let r = user
        .post(&format!("/api/v1/tasks/{task}/rerun"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let (t3, out3) = said(&user, r.body["task_id"].as_str().unwrap()).await;
    assert_eq!(out3, "one");
    assert_eq!(t3["git"]["commit"], first.as_str());
    assert_eq!(t3["started_by"], format!("rerun:{task}").as_str());
    // And so does a run asked for at a commit.
    let (task4, _) = run(
        &user,
        json!({"source": "ops", "path": "flows/say.yaml", "commit": first}),
    )
    .await;
    assert_eq!(said(&user, &task4).await.1, "one");

    // A broken file does not run; its errors come back.
    let r = user
        .post(
            "/api/v1/workflows/run",
            json!({"source": "ops", "path": "flows/broken.yaml"}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.code(), "invalid_workflow");
    let r = user
        .post(
            "/api/v1/workflows/run",
            json!({"source": "ops", "path": "elsewhere/ignored.yaml"}),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = user
        .post(
            "/api/v1/workflows/run",
            json!({"source": "ops", "path": "flows/say.yaml", "commit": "0".repeat(40)}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.code(), "not_in_commit");
    drop(server);
}

#[tokio::test]
async fn only_admins_register_sources_and_bad_locations_are_refused() {
    let repo = GitRepo::new();
    repo.write("w.yaml", &echo_workflow("x"));
    repo.commit("c");
    let (server, admin) = admin_server(&[], &[]).await;
    let user = Api::user(&server, "plain").await;
    let r = user
        .post(
            "/api/v1/sources",
            json!({"name": "s", "location": repo.location()}),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);

    let cases = [
        (
            json!({"name": "n", "location": "https://example.invalid/r.git"}),
            "network_refused",
        ),
        (
            json!({"name": "n", "location": "ssh://git@example.invalid/r.git"}),
            "network_refused",
        ),
        (
            json!({"name": "n", "location": "http://example.invalid/r.git", "allow_network": true}),
            "invalid_source",
        ),
        (
            json!({"name": "n", "location": "https://u:secret@example.invalid/r.git", "allow_network": true}),
            "invalid_source",
        ),
        (
            json!({"name": "n", "location": "relative/path"}),
            "invalid_source",
        ),
        (
            json!({"name": "n", "location": "/does/not/exist"}),
            "invalid_source",
        ),
        (
            json!({"name": "../n", "location": repo.location()}),
            "invalid_source",
        ),
        (
            json!({"name": "n", "location": repo.location(), "dir": "../x"}),
            "invalid_source",
        ),
        (
            json!({"name": "n", "location": repo.location(), "workspace": "nope"}),
            "unknown_workspace",
        ),
        (
            json!({"name": "n", "location": server.data_dir.display().to_string()}),
            "invalid_source",
        ),
    ];
    for (body, code) in cases {
        let r = admin.post("/api/v1/sources", body.clone()).await;
        assert_eq!((r.status, r.code()), (400, code), "{body}: {:?}", r.body);
    }
    // A missing branch is named.
    let r = admin
        .post(
            "/api/v1/sources",
            json!({"name": "n", "location": repo.location(), "branch": "nope"}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        r.body["detail"].as_str().unwrap().contains("nope"),
        "{:?}",
        r.body
    );
    // Nothing was stored by the refused requests.
    let listed = admin.get("/api/v1/sources").await;
    assert_eq!(
        listed.body["sources"].as_array().unwrap().len(),
        0,
        "{:?}",
        listed.body
    );

    // A plain directory is a source too, without provenance; removal forgets it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.yaml"), echo_workflow("plain")).unwrap();
    let src = add_source(
        &admin,
        "plain",
        &dir.path().display().to_string(),
        json!({}),
    )
    .await;
    assert_eq!(src["kind"], "directory");
    assert!(src.get("commit").is_none());
    let (task, _) = run(&admin, json!({"source": "plain", "path": "w.yaml"})).await;
    let (t, out) = said(&admin, &task).await;
    assert_eq!(out, "plain");
    assert!(t.get("git").is_none());
    let r = admin
        .send(admin.request(reqwest::Method::DELETE, "/api/v1/sources/plain"))
        .await;
    assert_eq!(r.status, 204);
    let r = admin
        .post(
            "/api/v1/workflows/run",
            json!({"source": "plain", "path": "w.yaml"}),
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_file_url_source_is_mirrored_and_survives_a_restart() {
    let repo = GitRepo::new();
    repo.write("w.yaml", &echo_workflow("mirrored"));
    let first = repo.commit("c");
    let (server, admin) = admin_server(&[], &[]).await;
    let url = format!("file://{}", repo.location());
    let src = add_source(&admin, "mirror", &url, json!({})).await;
    assert_eq!(src["commit"], first.as_str());
    let name = admin_name(&admin).await;
    let server = server.restart(&[], &[]);
    let mut admin2 = server.client();
    admin2.login(&name).await;
    let list = admin2.get("/api/v1/workflows").await;
    assert_eq!(
        list.body["workflows"][0]["commit"],
        first.as_str(),
        "{:?}",
        list.body
    );
    repo.write("w.yaml", &echo_workflow("later"));
    let second = repo.commit("c2");
    let r = admin2.post("/api/v1/sources/mirror/fetch", json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["commit"], second.as_str());
}

async fn admin_name(api: &Api) -> String {
    api.get("/api/v1/auth/me").await.body["username"]
        .as_str()
        .unwrap()
        .to_string()
}
