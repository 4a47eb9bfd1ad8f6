//! The capture shortcuts, attacked: an engine-side `write`/`patch` step is captured from its
//! targets alone (not a scan of the workspace), the last full scan is reused as the next
//! step's pre-state while it is fresh, and a change set is committed with the next step's
//! in-flight record. Each test checks what a full scan of the workspace would have said, and
//! that reverting the run puts every byte back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use secureclaw_engine::events;
use secureclaw_engine::policy::{NoApprover, Policy};
use secureclaw_engine::record::{RunRecord, RunState, RunStore};
use secureclaw_engine::revert::{self, RevertRequest};
use secureclaw_engine::scheduler::{Engine, RunOptions};
use secureclaw_engine::snapshot::Snapshotter;
use secureclaw_engine::testing::NoopSandbox;
use secureclaw_engine::validate::validate_bytes;

struct Fx {
    _dir: tempfile::TempDir,
    ws: std::path::PathBuf,
    state: std::path::PathBuf,
    engine: Engine,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join("d/sub")).unwrap();
    std::fs::create_dir_all(ws.join("e")).unwrap();
    std::fs::write(ws.join("a"), "alpha\n").unwrap();
    std::fs::write(ws.join("d/b"), "beta\n").unwrap();
    std::fs::write(ws.join("d/sub/c"), "gamma\n").unwrap();
    let ws = ws.canonicalize().unwrap();
    let state = dir.path().join("state");
    let vault = secureclaw_vault::Vault::create(
        &state,
        "test",
        &secureclaw_vault::KdfParams {
            memory_kib: 256,
            iterations: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let engine = Engine {
        sandbox: Arc::new(NoopSandbox),
        approver: Arc::new(NoApprover),
        policy: Policy::default(),
        events: events::discard(),
        store: Arc::new(RunStore::new(vault, "test")),
    };
    Fx {
        _dir: dir,
        ws,
        state,
        engine,
    }
}

impl Fx {
    fn run(&self, yaml: &str) -> RunRecord {
        let path = self.ws.parent().unwrap().join("wf.yaml");
        std::fs::write(&path, yaml).unwrap();
        let wf = validate_bytes(&path, yaml.as_bytes()).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(self.engine.run(
            &wf,
            RunOptions {
                workspace: self.ws.clone(),
                state_dir: self.state.clone(),
                inputs: Default::default(),
                jobs: 4,
                fail_fast: false,
                base_limits: Default::default(),
                read_only: Vec::new(),
                risk_model: None,
                risk_model_status: String::new(),
                run_id: None,
                resume: None,
                request: serde_json::Value::Null,
                started_by: None,
            },
            tokio_util::sync::CancellationToken::new(),
        ))
        .unwrap()
    }

    fn snap(&self) -> Snapshotter {
        Snapshotter::new(self.engine.store.vault().clone(), &self.ws, &self.state).unwrap()
    }

    /// The manifest hash of a fresh, cache-less scan of the workspace.
    fn full_scan_hash(&self) -> String {
        self.snap().scan(None).unwrap().hash()
    }

    fn revert_all(&self, record: &mut RunRecord) {
        let snap = self.snap();
        let req = RevertRequest {
            step: None,
            cascade: false,
            force: false,
        };
        let plan = revert::plan(&snap, record, &req).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let report = rt
            .block_on(revert::apply(
                &self.engine.store,
                &snap,
                record,
                &plan,
                &req,
            ))
            .unwrap();
        assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
        assert_eq!(report.summary.verified, Some(true), "{report:?}");
    }
}

/// Kind, mode and content of every path (not timestamps).
fn fingerprint(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let what = if md.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", md.permissions().mode() & 0o7777)
            } else if md.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else {
                format!(
                    "file {:o} {:?}",
                    md.permissions().mode() & 0o7777,
                    std::fs::read(&p).unwrap()
                )
            };
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            out.insert(rel, what);
        }
    }
    out
}

fn changed_paths(r: &RunRecord, step: &str) -> Vec<String> {
    r.step(step)
        .unwrap()
        .changes
        .as_ref()
        .unwrap()
        .changes
        .iter()
        .map(|c| c.path.display())
        .collect()
}

#[test]
fn targeted_capture_sees_what_a_full_scan_sees_and_reverts_every_byte() {
    let f = fx();
    let before = fingerprint(&f.ws);
    let mut r = f.run(
        r#"
version: 1
name: t
steps:
  - id: nested
    write: { path: n1/n2/new.txt, content: "new\n" }
  - id: overwrite
    needs: [nested]
    write: { path: a, content: "ALPHA\n" }
  - id: same_size
    needs: [overwrite]
    write: { path: a, content: "alpha\n" }
  - id: append
    needs: [same_size]
    write: { path: d/b, content: "more\n", append: true }
  - id: mode
    needs: [append]
    write: { path: d/sub/c, content: "gamma\n", mode: "600" }
  - id: patch
    needs: [mode]
    patch:
      path: d/b
      diff: |
        --- a/d/b
        +++ b/d/b
        @@ -1,2 +1,2 @@
         beta
        -more
        +MORE
"#,
    );
    assert_eq!(r.state, RunState::Succeeded, "{r:#?}");
    assert_eq!(
        changed_paths(&r, "nested"),
        ["n1", "n1/n2", "n1/n2/new.txt"]
    );
    assert_eq!(changed_paths(&r, "overwrite"), ["a"]);
    // Same size, same second, new content: seen.
    assert_eq!(changed_paths(&r, "same_size"), ["a"]);
    assert_eq!(changed_paths(&r, "append"), ["d/b"]);
    assert_eq!(changed_paths(&r, "mode"), ["d/sub/c"]);
    assert_eq!(changed_paths(&r, "patch"), ["d/b"]);
    // Each step's post-state hash is the pre-state hash of the next, and the last one is what
    // a full scan of the workspace says now; so is the stat cache the run left.
    let order = [
        "nested",
        "overwrite",
        "same_size",
        "append",
        "mode",
        "patch",
    ];
    for w in order.windows(2) {
        assert_eq!(
            r.step(w[0]).unwrap().post_manifest,
            r.step(w[1]).unwrap().pre_manifest,
            "{w:?}"
        );
    }
    let now = f.full_scan_hash();
    assert_eq!(
        r.step("patch").unwrap().post_manifest.as_deref(),
        Some(now.as_str())
    );
    assert_eq!(f.snap().load_cache().unwrap().hash(), now);
    // No temporary file left, and no in-flight record once the run is over.
    assert!(
        !fingerprint(&f.ws)
            .keys()
            .any(|k| k.ends_with(b"secureclaw-tmp"))
    );
    f.revert_all(&mut r);
    assert_eq!(fingerprint(&f.ws), before);
}

#[test]
fn an_append_to_a_hard_linked_file_is_seen_under_every_name() {
    let f = fx();
    std::fs::hard_link(f.ws.join("d/b"), f.ws.join("e/twin")).unwrap();
    let before = fingerprint(&f.ws);
    let mut r = f.run(
        r#"
version: 1
name: t
steps:
  - id: append
    write: { path: d/b, content: "more\n", append: true }
"#,
    );
    assert_eq!(r.state, RunState::Succeeded, "{r:#?}");
    assert_eq!(changed_paths(&r, "append"), ["d/b", "e/twin"]);
    assert_eq!(
        r.step("append").unwrap().post_manifest.as_deref(),
        Some(f.full_scan_hash().as_str())
    );
    f.revert_all(&mut r);
    assert_eq!(fingerprint(&f.ws), before);
}

#[test]
fn a_write_through_a_symlinked_directory_is_captured_where_it_lands() {
    let f = fx();
    std::os::unix::fs::symlink("d/sub", f.ws.join("link")).unwrap();
    let before = fingerprint(&f.ws);
    let mut r = f.run(
        r#"
version: 1
name: t
steps:
  - id: through
    write: { path: link/new, content: "x\n" }
  - id: over
    needs: [through]
    write: { path: link/c, content: "changed\n" }
"#,
    );
    assert_eq!(r.state, RunState::Succeeded, "{r:#?}");
    assert_eq!(changed_paths(&r, "through"), ["d/sub/new"]);
    assert_eq!(changed_paths(&r, "over"), ["d/sub/c"]);
    assert_eq!(
        r.step("over").unwrap().post_manifest.as_deref(),
        Some(f.full_scan_hash().as_str())
    );
    f.revert_all(&mut r);
    assert_eq!(fingerprint(&f.ws), before);
}

#[test]
fn mtime_set_back_and_same_size_rewrites_between_runs_are_seen() {
    let f = fx();
    // A first run leaves a stat cache; then the file is rewritten behind the engine's back
    // with the same size and its mtime set back to what the cache holds.
    let first = f
        .run("version: 1\nname: t\nsteps:\n  - id: w\n    write: { path: x, content: \"1\\n\" }\n");
    assert_eq!(first.state, RunState::Succeeded);
    let a = f.ws.join("a");
    let old = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::write(&a, "ALPHA\n").unwrap();
    let file = std::fs::File::options().write(true).open(&a).unwrap();
    file.set_modified(old).unwrap();
    drop(file);
    let before = fingerprint(&f.ws);
    // Overwrite `a` from a step: its pre-image must be the rewritten content, not the cached.
    let mut r = f.run(
        "version: 1\nname: t\nsteps:\n  - id: w\n    write: { path: a, content: \"final\\n\" }\n",
    );
    assert_eq!(r.state, RunState::Succeeded, "{r:#?}");
    f.revert_all(&mut r);
    assert_eq!(fingerprint(&f.ws), before);
    assert_eq!(std::fs::read(&a).unwrap(), b"ALPHA\n");
}

#[test]
fn a_shell_step_after_write_steps_is_captured_by_a_full_scan() {
    // The no-op sandbox runs nothing, so the "shell step" here changes nothing itself; the
    // change made between the write steps by someone else must not be taken for the write
    // step's, and a later full scan must still see the whole workspace.
    let f = fx();
    let before = fingerprint(&f.ws);
    let mut r = f.run(
        r#"
version: 1
name: t
steps:
  - id: w1
    write: { path: d/new, content: "1\n" }
  - id: sh
    needs: [w1]
    shell: "true"
  - id: w2
    needs: [sh]
    write: { path: d/new, content: "2\n" }
"#,
    );
    assert_eq!(r.state, RunState::Succeeded, "{r:#?}");
    assert_eq!(changed_paths(&r, "w1"), ["d/new"]);
    assert!(changed_paths(&r, "sh").is_empty());
    assert_eq!(changed_paths(&r, "w2"), ["d/new"]);
    assert_eq!(
        r.step("w2").unwrap().post_manifest.as_deref(),
        Some(f.full_scan_hash().as_str())
    );
    f.revert_all(&mut r);
    assert_eq!(fingerprint(&f.ws), before);
}
