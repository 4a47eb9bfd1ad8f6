//! Every example runs (in the default native sandbox, in the docker backend and under gVisor) and reverts
//! with the workspace byte-identical afterwards: content, modes, symlinks, empty directories.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::secureclaw;

/// Everything about a tree that revert promises to restore, minus the state dir.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for p in common::walk(root) {
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if rel.starts_with(".secureclaw") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let content = if meta.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if meta.is_dir() {
            b"<dir>".to_vec()
        } else {
            std::fs::read(&p).unwrap()
        };
        out.insert(rel, (meta.permissions().mode(), content));
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

fn run_and_revert(example: &str, seed: Option<&str>) {
    run_and_revert_on(example, seed, "native");
}

fn run_and_revert_on(example: &str, seed: Option<&str>, backend: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ws = tempfile::tempdir().unwrap();
    if let Some(seed) = seed {
        copy_dir(&root.join(seed), ws.path());
    }
    if backend == "docker" {
        common::build_default_image();
        // Containers run as the default 1000:1000: a user's workspace belongs to the user.
        common::chown_tree(ws.path(), 1000);
    }
    let before = tree(ws.path());
    let out = secureclaw()
        .arg("run")
        .arg(root.join(example))
        .arg("--workspace")
        .arg(ws.path())
        .args(["--approve", "destructive", "--sandbox", backend])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{example}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(tree(ws.path()), before, "{example} changed nothing");
    let state = ws.path().join(".secureclaw");
    let rec = secureclaw()
        .args(["show", "last", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&rec.stdout).unwrap();
    assert_eq!(
        rec["isolated"], true,
        "{example} must run isolated by default"
    );
    assert_eq!(rec["backend"], backend);
    let out = secureclaw()
        .args(["revert", "last", "--state-dir"])
        .arg(&state)
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{example}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tree(ws.path()),
        before,
        "{example}: the workspace differs after revert"
    );
}

#[test]
fn hello_runs_isolated_and_reverts_exactly() {
    run_and_revert("examples/hello/workflow.yaml", None);
}

#[test]
fn rotate_logs_runs_isolated_and_reverts_exactly() {
    run_and_revert("examples/rotate-logs/workflow.yaml", None);
}

#[test]
fn refactor_with_test_runs_isolated_and_reverts_exactly() {
    run_and_revert(
        "examples/refactor-with-test/workflow.yaml",
        Some("examples/refactor-with-test/workspace"),
    );
}

/// Under gVisor the workspace stays root-owned: the step writes as 1000 through an idmapped
/// mount, and what it makes belongs to root on disk.
#[test]
fn every_example_runs_under_gvisor_and_reverts_exactly() {
    if crate::common::docker_skip::skip_without_gvisor() {
        return;
    }
    run_and_revert_on("examples/hello/workflow.yaml", None, "gvisor");
    run_and_revert_on("examples/rotate-logs/workflow.yaml", None, "gvisor");
    run_and_revert_on(
        "examples/refactor-with-test/workflow.yaml",
        Some("examples/refactor-with-test/workspace"),
        "gvisor",
    );
}

#[test]
fn every_example_runs_in_docker_and_reverts_exactly() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    run_and_revert_on("examples/hello/workflow.yaml", None, "docker");
    run_and_revert_on("examples/rotate-logs/workflow.yaml", None, "docker");
    run_and_revert_on(
        "examples/refactor-with-test/workflow.yaml",
        Some("examples/refactor-with-test/workspace"),
        "docker",
    );
}
