//! `secureclaw workflows` on a real git repository (commits, a branch, a bad file, an
//! uncommitted edit) and on a plain directory: every workflow file with its status, located
//! errors, triggers and the commit it was read at.

use crate::common;
use crate::provenance::Repo;

use common::{output_text, secureclaw as bin};
use serde_json::Value;

const TRIGGERED: &str = "version: 1\nname: nightly\ninputs:\n  ref: { type: string, default: main }\non:\n  webhook: { preset: github, events: [push], inputs: { ref: /ref } }\n  schedule: { cron: \"0 3 * * *\", timezone: Europe/Paris }\n  watch: [\"src/**/*.rs\"]\nsteps:\n  - id: a\n    shell: \"true\"\n";
const PLAIN: &str = "version: 1\nname: plain\nsteps:\n  - id: a\n    shell: \"true\"\n";
const BAD: &str =
    "version: 1\nname: bad\non:\n  schedule: \"0 3 31 2 *\"\nsteps:\n  - id: a\n    shel: make\n";

fn workflows(args: &[&str]) -> std::process::Output {
    bin().arg("workflows").args(args).output().unwrap()
}

fn json(args: &[&str]) -> (Option<i32>, Value) {
    let out = workflows(&[args, &["--json"]].concat());
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
    (out.status.code(), v)
}

fn file<'a>(doc: &'a Value, path: &str) -> &'a Value {
    doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not listed: {doc}"))
}

fn paths(doc: &Value) -> Vec<&str> {
    doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect()
}

fn repo() -> (Repo, String) {
    let repo = Repo::new();
    repo.write("flows/nightly.yaml", TRIGGERED);
    repo.write("flows/bad.yml", BAD);
    repo.write("README.md", "not a workflow");
    let head = repo.commit("plain.yaml", PLAIN, "workflows");
    (repo, head)
}

#[test]
fn a_repository_is_listed_at_its_commit_with_errors_and_triggers() {
    let (repo, head) = repo();
    // Not committed: never listed, and the committed text is what is checked.
    repo.write("flows/draft.yaml", PLAIN);
    repo.write("plain.yaml", "not: [valid");
    let location = repo.path().display().to_string();

    let (code, doc) = json(&[&location]);
    assert_eq!(code, Some(1), "a bad file fails the listing: {doc}");
    assert_eq!(doc["commit"], head);
    assert_eq!(doc["branch"], "main");
    let mut listed = paths(&doc);
    listed.sort();
    assert_eq!(
        listed,
        ["flows/bad.yml", "flows/nightly.yaml", "plain.yaml"]
    );
    assert_eq!(file(&doc, "plain.yaml")["valid"], true);
    assert_eq!(
        file(&doc, "plain.yaml")["blob"],
        repo.git(&["rev-parse", "HEAD:plain.yaml"])
    );
    let bad = file(&doc, "flows/bad.yml");
    assert_eq!(bad["valid"], false);
    let errors = bad["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["path"] == "/steps/0/shel" && e["location"]["line"] == 7),
        "{bad}"
    );
    let on = &file(&doc, "flows/nightly.yaml")["triggers"];
    assert_eq!(on["webhook"]["preset"], "github");
    assert_eq!(on["webhook"]["events"][0], "push");
    assert_eq!(on["webhook"]["inputs"]["ref"], "/ref");
    assert_eq!(on["schedule"]["timezone"], "Europe/Paris");
    // 03:00 in Paris is 01:00 or 02:00 UTC.
    let next = on["schedule"]["next"].as_str().unwrap();
    assert!(
        next.ends_with("T02:00:00Z") || next.ends_with("T01:00:00Z"),
        "{next}"
    );
    assert_eq!(on["watch"][0], "src/**/*.rs");

    // The same in text: status, located errors with their hint, triggers, the commit.
    let out = workflows(&[&location]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        head.as_str(),
        "invalid flows/bad.yml",
        "7:5: unknown key `shel`",
        "did you mean `shell`?",
        "ok      flows/nightly.yaml",
        "webhook   github on push; inputs ref ← /ref",
        "schedule  0 3 * * * (Europe/Paris), next ",
        "watch     src/**/*.rs",
        "3 files: 2 ok, 1 invalid",
    ] {
        assert!(text.contains(needle), "`{needle}` missing in:\n{text}");
    }
}

#[test]
fn dir_and_rev_choose_what_is_read() {
    let (repo, _) = repo();
    let location = repo.path().display().to_string();
    let (code, doc) = json(&[&location, "--dir", "flows"]);
    assert_eq!(code, Some(1));
    let mut listed = paths(&doc);
    listed.sort();
    assert_eq!(listed, ["flows/bad.yml", "flows/nightly.yaml"]);

    // A branch with the bad file fixed and one more workflow.
    repo.git(&["checkout", "-q", "-b", "next"]);
    repo.write("flows/bad.yml", PLAIN);
    let next = repo.commit("flows/extra.yaml", PLAIN, "fix and add");
    repo.git(&["checkout", "-q", "main"]);
    let (code, doc) = json(&[&location, "--rev", "next", "--dir", "flows"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["commit"], next);
    assert_eq!(doc["branch"], "next");
    assert_eq!(paths(&doc).len(), 3);
    // main is untouched by the branch.
    assert_eq!(json(&[&location, "--dir", "flows"]).0, Some(1));

    // Inside the work tree, a subdirectory is read from the repository's commit.
    let out = bin()
        .args(["workflows", "--json"])
        .current_dir(repo.path().join("flows"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["location"], location);
    assert_eq!(doc["dir"], "flows");
    assert_eq!(doc["commit"], repo.git(&["rev-parse", "main"]));
    assert_eq!(paths(&doc).len(), 2, "{doc}");

    let out = workflows(&[&location, "--rev", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let out = workflows(&[&location, "--dir", "../outside"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}

#[test]
fn a_plain_directory_is_listed_as_it_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), PLAIN).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/b.yml"), TRIGGERED).unwrap();
    let (code, doc) = json(&[dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(0), "{doc}");
    assert!(doc["commit"].is_null());
    assert_eq!(paths(&doc).len(), 2);
    let out = bin()
        .arg("workflows")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("not a git repository")
    );
    std::fs::write(dir.path().join("c.yaml"), BAD).unwrap();
    assert_eq!(json(&[dir.path().to_str().unwrap()]).0, Some(1));
}

#[test]
fn help_teaches_the_command() {
    let out = workflows(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--rev",
        "--dir",
        "--json",
        "from the work tree: what is listed",
        "Examples:",
    ] {
        assert!(text.contains(needle), "`{needle}` missing in:\n{text}");
    }
}
