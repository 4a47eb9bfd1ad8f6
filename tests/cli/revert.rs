//! `secureclaw revert` and `diff` end to end: real workspaces, the real binary.

use crate::common;
use common::text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::tree_fingerprint as tree;
use std::process::{Output, Stdio};

use common::secureclaw as bin;

/// A workspace with its workflow file kept outside it.
struct Ws {
    dir: tempfile::TempDir,
    wf_dir: tempfile::TempDir,
}

impl Ws {
    fn new() -> Self {
        Ws {
            dir: tempfile::tempdir().unwrap(),
            wf_dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn state(&self) -> PathBuf {
        self.path().join(".secureclaw")
    }
    fn write(&self, rel: &str, content: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap()
    }
    fn run(&self, wf: &str) -> Output {
        let p = self.wf_dir.path().join("wf.yaml");
        std::fs::write(&p, wf).unwrap();
        bin()
            .arg("run")
            .arg(&p)
            .arg("--workspace")
            .arg(self.path())
            .args(["--sandbox", "host", "--yes"])
            .output()
            .unwrap()
    }
    fn cmd(&self, args: &[&str]) -> Output {
        bin()
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .output()
            .unwrap()
    }
    fn tree(&self) -> BTreeMap<Vec<u8>, String> {
        tree(self.path())
    }
    fn ledger(&self) -> String {
        let file = self.wf_dir.path().join("ledger.jsonl");
        let out = bin()
            .args(["ledger", "export", "--state-dir"])
            .arg(self.state())
            .arg("--out")
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::read_to_string(file).unwrap()
    }
    fn ledger_kinds(&self) -> Vec<String> {
        self.ledger()
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                let e = v.get("entry").unwrap_or(&v);
                Some(format!(
                    "{}:{}",
                    e["kind"].as_str()?,
                    e["step"].as_str().unwrap_or("-")
                ))
            })
            .collect()
    }
}

/// The run id from `run`'s closing line (`run ID state ...`).
fn run_id(out: &Output) -> String {
    let err = text(&out.stderr);
    let line = err.lines().rev().find(|l| l.starts_with("run ")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_string()
}

fn seed(ws: &Ws) {
    ws.write("keep.txt", "keep\n");
    ws.write("src/main.txt", "line 1\nline 2\nline 3\n");
    ws.write("src/old.txt", "old\n");
    std::fs::create_dir_all(ws.path().join("empty")).unwrap();
    std::os::unix::fs::symlink("src/main.txt", ws.path().join("link")).unwrap();
    std::fs::write(ws.path().join("bin.dat"), [0u8, 1, 2, 255, 0, 7]).unwrap();
}

const PIPELINE: &str = r#"version: 1
name: pipeline
steps:
  - id: gen
    write: { path: gen/out.txt, content: "generated\n" }
  - id: edit
    needs: [gen]
    shell: "echo 'line 4' >> src/main.txt && rm src/old.txt && chmod 755 keep.txt && rmdir empty && ln -sfn keep.txt link"
  - id: more
    needs: [edit]
    shell: "echo again >> gen/out.txt && printf '\\000\\001' > bin.dat && mkdir -p a/b && touch a/b/c"
"#;

#[test]
fn whole_run_revert_restores_the_tree_and_is_ledgered() {
    let ws = Ws::new();
    seed(&ws);
    let before = ws.tree();
    let out = ws.run(PIPELINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(ws.tree(), before);
    let out = ws.cmd(&["revert", "last"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("matches the pre-run state"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(ws.tree(), before);
    let kinds = ws.ledger_kinds();
    for k in [
        "revert_started:-",
        "action_reverted:more",
        "action_reverted:edit",
        "action_reverted:gen",
        "revert_finished:-",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing {k} in {kinds:?}");
    }
    // Newest effect first.
    let pos = |k: &str| kinds.iter().position(|x| x == k).unwrap();
    assert!(pos("action_reverted:more") < pos("action_reverted:edit"));
    assert!(pos("action_reverted:edit") < pos("action_reverted:gen"));
    let verify = ws.cmd(&["ledger", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    // The step ledger entries carry manifests and the inverse.
    let edit = ws
        .ledger()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v.get("entry").cloned().unwrap_or(v))
        .find(|e| e["kind"] == "step_finished" && e["step"] == "edit")
        .unwrap();
    assert!(edit["pre_manifest"].is_string() && edit["post_manifest"].is_string());
    assert_eq!(edit["inverse"]["class"], "restore");
    assert_eq!(edit["inverse"]["paths"], 5, "{}", edit["inverse"]);
    // Reverting again finds nothing left to do.
    let again = ws.cmd(&["revert", "last"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(ws.tree(), before);
}

#[test]
fn step_by_step_revert_and_cascade() {
    let ws = Ws::new();
    seed(&ws);
    let before = ws.tree();
    assert!(ws.run(PIPELINE).status.success());
    // `gen` wrote gen/out.txt, which `more` appended to: reverting it alone is refused.
    let out = ws.cmd(&["revert", "last", "--step", "gen"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--cascade") && text(&out.stderr).contains("more"),
        "{}",
        text(&out.stderr)
    );
    assert!(ws.read("gen/out.txt").contains("again"));
    // `edit` shares no path with `more`: it reverts alone.
    let out = ws.cmd(&["revert", "last", "--step", "edit"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ws.read("src/main.txt"), "line 1\nline 2\nline 3\n");
    assert!(ws.path().join("src/old.txt").exists() && ws.path().join("empty").is_dir());
    assert!(
        ws.read("gen/out.txt").contains("again"),
        "`more` is untouched"
    );
    // The dry run of the cascade names every file it will touch, and touches none.
    let dry = ws.cmd(&["revert", "last", "--step", "gen", "--cascade", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let plan = text(&dry.stdout);
    for p in [
        "gen/out.txt",
        "bin.dat",
        "a/b/c",
        "step `more`",
        "step `gen`",
    ] {
        assert!(plan.contains(p), "{p} missing from {plan}");
    }
    assert!(ws.read("gen/out.txt").contains("again"));
    let out = ws.cmd(&["revert", "last", "--step", "gen", "--cascade"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ws.tree(), before);
}

#[test]
fn drift_is_reported_and_never_clobbered_unless_forced() {
    let ws = Ws::new();
    seed(&ws);
    let before = ws.tree();
    assert!(ws.run(PIPELINE).status.success());
    ws.write("src/main.txt", "my own edit\n");
    let out = ws.cmd(&["revert", "last"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("conflict") && err.contains("src/main.txt"),
        "{err}"
    );
    assert_eq!(
        ws.read("src/main.txt"),
        "my own edit\n",
        "newer work is kept"
    );
    assert!(ws.path().join("a/b/c").exists(), "nothing was reverted");
    assert!(ws.ledger_kinds().iter().any(|k| k == "revert_finished:-"));
    let out = ws.cmd(&["revert", "last", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ws.tree(), before);
}

#[test]
fn a_failed_step_leaves_the_workspace_as_it_was() {
    let ws = Ws::new();
    seed(&ws);
    let before = ws.tree();
    let out = ws.run(
        r#"version: 1
name: failing
steps:
  - id: bad
    shell: "echo junk > junk.txt && rm keep.txt && echo x >> src/main.txt && exit 4"
"#,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("rolled back"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(ws.tree(), before);
    // keep_on_failure keeps the changes, and revert still undoes them.
    let out = ws.run(
        r#"version: 1
name: keeping
steps:
  - id: bad
    keep_on_failure: true
    shell: "echo junk > junk.txt && exit 4"
"#,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(ws.read("junk.txt"), "junk\n");
    // Two runs in the same second: `last` cannot tell them apart, so name the run.
    let id = run_id(&out);
    let out = ws.cmd(&["revert", &id]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(ws.tree(), before);
}

#[test]
fn diff_shows_what_a_run_and_a_step_changed() {
    let ws = Ws::new();
    seed(&ws);
    assert!(ws.run(PIPELINE).status.success());
    let out = ws.cmd(&["diff", "last", "--color", "never"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d = text(&out.stdout);
    for s in [
        "+++ b/gen/out.txt",
        "+line 4",
        "--- a/src/old.txt",
        "-old",
        "Binary files differ",
        "new mode 755",
        "+again",
    ] {
        assert!(d.contains(s), "{s:?} missing from:\n{d}");
    }
    let out = ws.cmd(&["diff", "last", "--step", "edit", "--color", "never"]);
    let d = text(&out.stdout);
    assert!(d.contains("+line 4") && !d.contains("+again"), "{d}");
}

#[test]
fn an_engine_killed_during_a_step_is_reverted_exactly() {
    let ws = Ws::new();
    seed(&ws);
    let before = ws.tree();
    let wf = ws.wf_dir.path().join("wf.yaml");
    std::fs::write(
        &wf,
        r#"version: 1
name: crashing
steps:
  - id: first
    write: { path: first.txt, content: "1\n" }
  - id: slow
    needs: [first]
    shell: "echo half >> src/main.txt && rm -r src/old.txt && mkdir -p made/deep && echo x > made/deep/f && touch made/ready && sleep 60"
"#,
    )
    .unwrap();
    let mut child = bin()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "host", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = ws.path().join("made/ready");
    for _ in 0..600 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ready.exists(), "the step never got going");
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();
    let out = ws.cmd(&["revert", "last"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(ws.tree(), before);
    let show = ws.cmd(&["show", "last", "--json"]);
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(rec["state"], "interrupted");
}

#[test]
fn http_steps_without_compensation_are_flagged_not_skipped() {
    let ws = Ws::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .unwrap();
    });
    let out = ws.run(&format!(
        r#"version: 1
name: pivot
steps:
  - id: notify
    http: {{ method: POST, url: "http://hook.test:{port}/hook" }}
    network: ["hook.test:{port}"]
  - id: note
    needs: [notify]
    write: {{ path: note.txt, content: "sent\n" }}
"#
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    server.join().unwrap();
    let out = ws.cmd(&["revert", "last"]);
    let o = text(&out.stdout);
    assert!(o.contains("manual review") && o.contains("notify"), "{o}");
    assert!(!ws.path().join("note.txt").exists());
}

#[test]
fn http_compensations_run_on_loopback_and_failures_are_reported_separately() {
    use std::io::{Read, Write};
    let ws = Ws::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A port nothing listens on: its compensation fails every attempt.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let body = if line.contains("/create") { "42" } else { "ok" };
            s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            seen.push(line);
        }
        seen
    });
    let out = ws.run(&format!(
        r#"version: 1
name: compensated
steps:
  - id: create
    http: {{ method: POST, url: "http://hook.test:{port}/create" }}
    network: ["hook.test:{port}"]
    compensate:
      http: {{ method: DELETE, url: "http://hook.test:{port}/items/undo" }}
  - id: other
    http: {{ method: POST, url: "http://hook.test:{port}/other" }}
    network: ["hook.test:{port}", "hook.test:{dead}"]
    compensate:
      http: {{ method: POST, url: "http://hook.test:{dead}/undo", timeout: 2s }}
  - id: note
    needs: [create, other]
    write: {{ path: note.txt, content: "sent\n" }}
"#
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dry = ws.cmd(&["revert", "last", "--dry-run"]);
    let plan = text(&dry.stdout);
    assert!(
        plan.contains("compensate: DELETE") && plan.contains("remove   note.txt"),
        "{plan}"
    );
    let out = ws.cmd(&["revert", "last"]);
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{o}");
    assert!(o.contains("reverted step `create`"), "{o}");
    assert!(o.contains("other: compensation failed"), "{o}");
    assert!(
        !ws.path().join("note.txt").exists(),
        "the other steps were still undone"
    );
    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen[2].starts_with("DELETE /items/undo "), "{seen:?}");
    let ledger = ws.ledger();
    assert!(ledger.contains("\"compensation\":\"http\""), "{ledger}");
}

/// A step that replaces a directory by a file of the same name (and a failed step that does
/// the same) is undone exactly: the paths under the old directory are looked up through what is
/// now a file, which must read as "absent", not as an error.
#[test]
fn a_directory_replaced_by_a_file_is_put_back() {
    let ws = Ws::new();
    ws.write("d/e", "inner\n");
    ws.write("d/f/g", "deeper\n");
    let before = ws.tree();
    let out = ws.run(
        "version: 1\nname: swap\nsteps:\n  - { id: swap, shell: 'rm -rf d && head -c 1200000 /dev/urandom > d' }\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(ws.path().join("d").is_file());
    let id = run_id(&out);
    let out = ws.cmd(&["revert", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ws.tree(), before);
    assert_eq!(ws.read("d/f/g"), "deeper\n");

    // The same swap in a step that fails is rolled back by the run itself.
    let out = ws.run(
        "version: 1\nname: swap-fail\nsteps:\n  - { id: swap, shell: 'rm -rf d && echo x > d && exit 1' }\n",
    );
    assert!(!out.status.success());
    assert_eq!(ws.tree(), before);
}

/// A directory replaced by a symlink is put back without looking through the symlink: the
/// paths under the old directory are absent, whether the link loops (`d -> d`, where a lookup
/// of `d/e` fails with ELOOP) or points at another directory holding a file of the same name.
#[test]
fn a_directory_replaced_by_a_symlink_is_put_back() {
    for (name, swap) in [
        ("loop", "rm -rf d && ln -sfn d d"),
        (
            "elsewhere",
            "rm -rf d && mkdir o && echo other > o/e && ln -s o d",
        ),
    ] {
        let ws = Ws::new();
        ws.write("d/e", "inner\n");
        let before = ws.tree();
        let out = ws.run(&format!(
            "version: 1\nname: {name}\nsteps:\n  - {{ id: swap, shell: '{swap}' }}\n"
        ));
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(ws.path().join("d").is_symlink(), "{name}");
        let id = run_id(&out);
        let out = ws.cmd(&["revert", &id]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(ws.tree(), before, "{name}");
        assert_eq!(ws.read("d/e"), "inner\n", "{name}");
    }
}
