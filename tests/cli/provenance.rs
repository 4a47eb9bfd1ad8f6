//! Git provenance through the real binary: `run` of a file inside a git work tree records the
//! repository, commit, path, blob and dirtiness in the run record (`show`) and the ledger's
//! `run_started` entry; `rerun` runs exactly the recorded commit's text, and refuses a missing
//! or tampered commit, a run without provenance, and an uncommitted text unless it can be
//! found by its recorded SHA-256.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{output_text, secureclaw as bin};
use serde_json::Value;

/// A real git repository in a tempdir, driven by the `git` command line.
pub struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// The work tree, canonical (as provenance records it).
    pub fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.dir.path())
            .env("GIT_AUTHOR_NAME", "test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", output_text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn write(&self, path: &str, text: &str) {
        let p = self.dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Write and commit `path`; returns the new commit.
    pub fn commit(&self, path: &str, text: &str, message: &str) -> String {
        self.write(path, text);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A workflow that writes which version of its text ran, and its input, to `out.txt`.
fn versioned(version: &str) -> String {
    format!(
        "version: 1\nname: versioned\ninputs:\n  who: {{ type: string, default: nobody }}\nsteps:\n  - id: mark\n    write: {{ path: out.txt, content: \"{version} {{{{ inputs.who }}}}\" }}\n"
    )
}

/// A workspace with its state dir, where every command of a test runs.
struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    fn new() -> Ws {
        Ws {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state(&self) -> PathBuf {
        self.path().join(".secureclaw")
    }

    fn run(&self, file: &Path, extra: &[&str]) -> Output {
        bin()
            .arg("run")
            .arg(file)
            .arg("--workspace")
            .arg(self.path())
            .args(["--sandbox", "native"])
            .args(extra)
            .output()
            .unwrap()
    }

    fn rerun(&self, run: &str, extra: &[&str]) -> Output {
        bin()
            .args(["rerun", run, "--sandbox", "native", "--state-dir"])
            .arg(self.state())
            .args(extra)
            .output()
            .unwrap()
    }

    fn show(&self, run: &str) -> Value {
        let out = bin()
            .args(["show", run, "--json", "--state-dir"])
            .arg(self.state())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn show_text(&self, run: &str) -> String {
        let out = bin()
            .args(["show", run, "--state-dir"])
            .arg(self.state())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The ledger's `run_started` entry of `run`, from a verified export.
    fn run_started(&self, run: &str) -> Value {
        let keep = tempfile::tempdir().unwrap();
        let file = keep.path().join("ledger.jsonl");
        let out = bin()
            .args(["ledger", "export", "--out"])
            .arg(&file)
            .arg("--state-dir")
            .arg(self.state())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"].clone())
            .find(|e| e["kind"] == "run_started" && e["run"] == run)
            .unwrap_or_else(|| panic!("no run_started entry for {run}"))
    }

    fn out_txt(&self) -> String {
        std::fs::read_to_string(self.path().join("out.txt")).unwrap()
    }
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", output_text(out));
}

fn refused(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", output_text(out));
    let text = output_text(out);
    assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
}

#[test]
fn a_run_from_a_work_tree_records_its_commit_in_show_and_the_ledger() {
    let repo = Repo::new();
    repo.git(&["checkout", "-q", "-b", "feature"]);
    let commit = repo.commit("flows/wf.yaml", &versioned("v1"), "v1");
    let blob = repo.git(&["rev-parse", "HEAD:flows/wf.yaml"]);
    let ws = Ws::new();
    ok(&ws.run(&repo.path().join("flows/wf.yaml"), &[]));

    let expected = serde_json::json!({
        "repository": repo.path().display().to_string(),
        "branch": "feature",
        "commit": commit,
        "path": "flows/wf.yaml",
        "blob": blob,
        "dirty": false,
    });
    let rec = ws.show("last");
    assert_eq!(rec["provenance"], expected, "{rec}");
    let entry = ws.run_started(rec["run_id"].as_str().unwrap());
    assert_eq!(entry["result"]["provenance"], expected, "{entry}");
    let text = ws.show_text("last");
    assert!(
        text.contains(&format!("commit {commit} on feature"))
            && text.contains(&format!("path flows/wf.yaml  blob {blob}"))
            && !text.contains("uncommitted"),
        "{text}"
    );

    // An uncommitted change anywhere in the tree is recorded as such, in both places.
    repo.write("notes.txt", "untracked files do not count");
    ok(&ws.run(&repo.path().join("flows/wf.yaml"), &[]));
    assert_eq!(ws.show("last")["provenance"]["dirty"], false);
    repo.write("flows/wf.yaml", &versioned("v1-edited"));
    ok(&ws.run(&repo.path().join("flows/wf.yaml"), &[]));
    let rec = ws.show("last");
    assert_eq!(rec["provenance"]["dirty"], true, "{rec}");
    assert_eq!(
        ws.run_started(rec["run_id"].as_str().unwrap())["result"]["provenance"]["dirty"],
        true
    );
    assert!(ws.show_text("last").contains("(uncommitted changes)"));
}

#[test]
fn a_text_that_is_not_exactly_the_committed_blob_is_recorded_dirty() {
    let repo = Repo::new();
    repo.commit("wf.yaml", &versioned("filtered"), "v1");
    // A checkout filter rewrites the text in the work tree; git does not call it a change.
    repo.git(&["config", "core.autocrlf", "true"]);
    std::fs::remove_file(repo.path().join("wf.yaml")).unwrap();
    repo.git(&["checkout", "--", "wf.yaml"]);
    assert!(
        std::fs::read_to_string(repo.path().join("wf.yaml"))
            .unwrap()
            .contains("\r\n")
    );
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
    let ws = Ws::new();
    ok(&ws.run(&repo.path().join("wf.yaml"), &[]));
    assert_eq!(ws.show("last")["provenance"]["dirty"], true);
    // So a re-run needs --allow-dirty, and then finds the text that ran by its SHA-256.
    refused(&ws.rerun("last", &[]), "uncommitted changes");
    ok(&ws.rerun("last", &["--allow-dirty"]));
}

#[test]
fn a_file_outside_git_runs_without_provenance_and_is_rerun_by_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.yaml");
    std::fs::write(&file, versioned("plain")).unwrap();
    let ws = Ws::new();
    ok(&ws.run(&file, &[]));
    let rec = ws.show("last");
    assert!(rec.get("provenance").is_none(), "{rec}");
    assert!(ws.run_started(rec["run_id"].as_str().unwrap())["result"]["provenance"].is_null());
    assert!(!ws.show_text("last").contains("commit"));
    refused(&ws.rerun("last", &[]), "has no git provenance");
    refused(&ws.rerun("last", &[]), "secureclaw run");
}

#[test]
fn rerun_runs_the_recorded_commit_with_the_recorded_inputs() {
    let repo = Repo::new();
    let first = repo.commit("wf.yaml", &versioned("v1"), "v1");
    let ws = Ws::new();
    ok(&ws.run(&repo.path().join("wf.yaml"), &["--input", "who=alice"]));
    let original = ws.show("last")["run_id"].as_str().unwrap().to_string();
    assert_eq!(ws.out_txt(), "v1 alice");

    // A later commit changes the file; the work tree now holds v2.
    let second = repo.commit("wf.yaml", &versioned("v2"), "v2");
    assert_ne!(first, second);
    ok(&ws.run(&repo.path().join("wf.yaml"), &[]));
    assert_eq!(ws.out_txt(), "v2 nobody");

    let out = ws.rerun(&original, &[]);
    ok(&out);
    assert_eq!(ws.out_txt(), "v1 alice", "{}", output_text(&out));
    let rec = ws.show("last");
    assert_eq!(rec["started_by"], format!("rerun:{original}"));
    assert_eq!(rec["provenance"]["commit"], first);
    assert_eq!(rec["provenance"]["dirty"], false);
    assert!(
        ws.show_text("last")
            .contains(&format!("started by rerun:{original}"))
    );

    // `--input` overrides a recorded input; `--workspace` another place to run in.
    let elsewhere = tempfile::tempdir().unwrap();
    ok(&ws.rerun(
        &original,
        &[
            "--input",
            "who=bob",
            "--workspace",
            elsewhere.path().to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(elsewhere.path().join("out.txt")).unwrap(),
        "v1 bob"
    );
    assert_eq!(ws.out_txt(), "v1 alice");
}

#[test]
fn rerun_asks_for_secret_inputs_again() {
    let repo = Repo::new();
    repo.commit(
        "wf.yaml",
        "version: 1\nname: secret\ninputs:\n  token: { type: string, secret: true }\n  who: { type: string }\nsteps:\n  - id: mark\n    write: { path: out.txt, content: \"{{ inputs.who }} {{ inputs.token | length }}\" }\n",
        "secret",
    );
    let ws = Ws::new();
    let with_token = |c: &mut Command| {
        c.env("TOKEN_FOR_TEST", "s3cret-value");
    };
    let mut run = bin();
    with_token(&mut run);
    ok(&run
        .arg("run")
        .arg(repo.path().join("wf.yaml"))
        .arg("--workspace")
        .arg(ws.path())
        .args([
            "--sandbox",
            "native",
            "-i",
            "token=@env:TOKEN_FOR_TEST",
            "-i",
            "who=carol",
        ])
        .output()
        .unwrap());
    let out = ws.rerun("last", &[]);
    refused(&out, "secret input `token`");
    refused(&out, "--input token=@env:VAR");
    assert!(!output_text(&out).contains("s3cret-value"));

    let mut again = bin();
    with_token(&mut again);
    ok(&again
        .args(["rerun", "last", "--sandbox", "native", "--state-dir"])
        .arg(ws.state())
        .args(["-i", "token=@env:TOKEN_FOR_TEST"])
        .output()
        .unwrap());
    // The recorded non-secret input came back; the secret was given again.
    assert_eq!(ws.out_txt(), "carol 12");
}

#[test]
fn rerun_refuses_a_tampered_or_missing_commit() {
    let repo = Repo::new();
    repo.commit("wf.yaml", &versioned("v1"), "v1");
    let ws = Ws::new();
    ok(&ws.run(&repo.path().join("wf.yaml"), &[]));
    std::fs::remove_file(ws.path().join("out.txt")).unwrap();

    // Tampered: the recorded blob's object now holds another text.
    let blob = repo.git(&["rev-parse", "HEAD:wf.yaml"]);
    let other = repo.git(&["hash-object", "-w", "--stdin", "--path", "x"]);
    let object = |id: &str| {
        repo.path()
            .join(".git/objects")
            .join(&id[..2])
            .join(&id[2..])
    };
    let forged = std::fs::read(object(&other)).unwrap();
    std::fs::remove_file(object(&blob)).unwrap();
    std::fs::write(object(&blob), forged).unwrap();
    let out = ws.rerun("last", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        !ws.path().join("out.txt").exists(),
        "a tampered text ran: {}",
        output_text(&out)
    );

    // Missing: the repository at the recorded path no longer has the commit.
    std::fs::remove_dir_all(repo.path().join(".git")).unwrap();
    repo.git(&["init", "-q", "-b", "main"]);
    repo.commit("wf.yaml", &versioned("impostor"), "another history");
    refused(&ws.rerun("last", &[]), "cannot read wf.yaml at commit");
    assert!(!ws.path().join("out.txt").exists());
}

#[test]
fn a_dirty_run_is_rerun_only_with_allow_dirty_and_only_its_exact_text() {
    let repo = Repo::new();
    repo.commit("wf.yaml", &versioned("committed"), "v1");
    repo.write("wf.yaml", &versioned("uncommitted"));
    let ws = Ws::new();
    ok(&ws.run(&repo.path().join("wf.yaml"), &[]));
    assert_eq!(ws.out_txt(), "uncommitted nobody");
    let dirty_run = ws.show("last")["run_id"].as_str().unwrap().to_string();

    let out = ws.rerun(&dirty_run, &[]);
    refused(&out, "uncommitted changes");
    refused(&out, "--allow-dirty");

    // The text that ran is still in the work tree: it runs, marked dirty.
    std::fs::remove_file(ws.path().join("out.txt")).unwrap();
    ok(&ws.rerun(&dirty_run, &["--allow-dirty"]));
    assert_eq!(ws.out_txt(), "uncommitted nobody");
    assert_eq!(ws.show("last")["provenance"]["dirty"], true);

    // Once it is gone, nothing has its SHA-256: refused, not replaced by the commit.
    repo.write("wf.yaml", &versioned("edited again"));
    std::fs::remove_file(ws.path().join("out.txt")).unwrap();
    refused(&ws.rerun(&dirty_run, &["--allow-dirty"]), "SHA-256");
    assert!(!ws.path().join("out.txt").exists());
}

#[test]
fn watch_records_provenance_like_run() {
    let repo = Repo::new();
    let commit = repo.commit("wf.yaml", &versioned("watched"), "v1");
    let ws = Ws::new();
    ok(&bin()
        .arg("watch")
        .arg(repo.path().join("wf.yaml"))
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "native", "--max-runs", "1"])
        .output()
        .unwrap());
    assert_eq!(ws.show("last")["provenance"]["commit"], commit);
}
