//! The docker backend's hardening end to end, through the real `secureclaw` binary: a
//! root-owned workspace (as `mktemp -d` and CI give it), the state dir inside steps, and the
//! isolation gaps container probes found, each checked from inside the step's container.

use crate::common;
use common::output_text as text;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{build_default_image, secureclaw};

fn run(ws: &Path, workflow: &str, extra: &[&str]) -> Output {
    build_default_image();
    let wf = ws.join("wf.yaml");
    std::fs::write(&wf, workflow).unwrap();
    secureclaw()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws)
        .args(["--sandbox", "docker"])
        .args(extra)
        .output()
        .unwrap()
}

fn show(ws: &Path) -> serde_json::Value {
    let out = secureclaw()
        .args(["show", "last", "--json", "--state-dir"])
        .arg(ws.join(".secureclaw"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A root-owned workspace, mode 0700, like `mktemp -d` as root.
fn root_owned_workspace() -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    let meta = std::fs::metadata(ws.path()).unwrap();
    assert_eq!(meta.uid(), 0, "the tests run as root");
    ws
}

#[test]
fn writing_steps_work_on_a_root_owned_workspace() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    let ws = root_owned_workspace();
    std::fs::create_dir(ws.path().join("src")).unwrap();
    std::fs::write(ws.path().join("src/lib.txt"), "old\n").unwrap();
    let out = run(
        ws.path(),
        r#"
version: 1
name: root-owned
steps:
  - id: build
    shell: "mkdir -p out/deep && echo built > out/deep/result.txt && id -u > out/uid.txt && echo new > src/lib.txt"
  - id: again
    needs: [build]
    shell: "cp out/deep/result.txt out/copy.txt && echo again >> out/deep/result.txt && touch out/second"
"#,
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let root = ws.path();
    assert_eq!(
        std::fs::read_to_string(root.join("out/deep/result.txt")).unwrap(),
        "built\nagain\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("out/uid.txt")).unwrap(),
        "1000\n",
        "the step runs as 1000, never as root"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("src/lib.txt")).unwrap(),
        "new\n"
    );
    // What the step made belongs to the workspace's owner on disk.
    for made in [
        "out",
        "out/deep",
        "out/deep/result.txt",
        "out/copy.txt",
        "out/second",
    ] {
        let meta = std::fs::metadata(root.join(made)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{made}");
    }
    let rec = show(root);
    assert_eq!(rec["state"], "succeeded", "{rec:#}");
    let layers = rec["steps"][0]["enforcement"]["layers"].to_string();
    assert!(layers.contains("workspace-idmap"), "{layers}");
    assert!(layers.contains("workspace-nosuid"), "{layers}");
}

#[test]
fn find_and_tar_traverse_the_workspace_and_never_see_the_state_dir() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    for owner in [None, Some(1000)] {
        let ws = root_owned_workspace();
        if let Some(id) = owner {
            common::chown_tree(ws.path(), id);
        }
        std::fs::write(ws.path().join("a.txt"), "a").unwrap();
        let out = run(
            ws.path(),
            r#"
version: 1
name: listing
steps:
  - id: list
    shell: "find . | sort > /tmp/list && tar czf /tmp/ws.tgz . && tar tzf /tmp/ws.tgz | sort > /tmp/tar && cp /tmp/list list.txt && cp /tmp/tar tar.txt"
"#,
            &[],
        );
        assert!(out.status.success(), "{owner:?}: {}", text(&out));
        let list = std::fs::read_to_string(ws.path().join("list.txt")).unwrap();
        let tar = std::fs::read_to_string(ws.path().join("tar.txt")).unwrap();
        // The state dir (the vault, its header, the ledger) exists on the host ...
        assert!(ws.path().join(".secureclaw").read_dir().unwrap().count() > 0);
        // ... and inside it is an empty directory: nothing under it is listed or archived.
        for listing in [&list, &tar] {
            let state: Vec<&str> = listing
                .lines()
                .filter(|l| l.contains(".secureclaw"))
                .collect();
            assert!(
                state
                    .iter()
                    .all(|l| *l == "./.secureclaw" || *l == "./.secureclaw/"),
                "{owner:?}: the state dir's content is visible: {listing}"
            );
            assert!(listing.contains("./a.txt"), "{owner:?}: {listing}");
        }
    }
}

#[test]
fn the_probes_gaps_are_closed_inside_the_step() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    let ws = root_owned_workspace();
    common::chown_tree(ws.path(), 1000);
    // Every probe writes what it saw into the workspace; markers appear only if an attempt
    // worked. The first line proves the step ran and could write.
    let out = run(
        ws.path(),
        r#"
version: 1
name: probes
steps:
  - id: probe
    shell: |
      echo ran > ran.txt
      grep ' /workspace ' /proc/self/mountinfo > mountinfo.txt
      cat /proc/self/cgroup > cgroup.txt
      hostname > hostname.txt
      (echo x > /dev/shm/x) 2>/dev/null && echo SHM >> markers.txt
      (echo x > /dev/mqueue/q) 2>/dev/null && echo MQUEUE >> markers.txt
      touch markers.txt
"#,
        // Writing to /dev/shm is classified destructive (a device path): approve it, the
        // sandbox is what must stop it.
        &["--yes"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let read = |name: &str| std::fs::read_to_string(ws.path().join(name)).unwrap();
    assert_eq!(read("ran.txt"), "ran\n");
    let mountinfo = read("mountinfo.txt");
    let opts: Vec<&str> = mountinfo.split(' ').nth(5).unwrap().split(',').collect();
    assert!(
        opts.contains(&"nosuid") && opts.contains(&"nodev"),
        "{mountinfo}"
    );
    let short_id = read("hostname.txt").trim().to_string();
    let cgroup = read("cgroup.txt");
    assert!(!cgroup.is_empty());
    for line in cgroup.lines() {
        assert!(line.ends_with(":/"), "host cgroup path visible: {line}");
        assert!(!line.contains(&short_id), "{line}");
    }
    assert_eq!(read("markers.txt"), "", "writable IPC mounts");
    let layers = show(ws.path())["steps"][0]["enforcement"]["layers"].to_string();
    for layer in [
        "workspace-nosuid",
        "cgroup-namespace",
        "ipc",
        "mqueue-readonly",
        "file-size",
        "state-dir-masked",
        "write-budget",
    ] {
        assert!(layers.contains(layer), "{layer}: {layers}");
    }
}

/// Prepared workspace mounts are gone once the run is over (none pile up on the host).
#[test]
fn no_prepared_mount_outlives_the_run() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    let ws = root_owned_workspace();
    let out = run(
        ws.path(),
        "version: 1\nname: one\nsteps:\n  - { id: a, shell: \"echo x > x.txt\" }\n",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let mine: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with("/run/secureclaw/docker"))
        .collect();
    // Other tests may be mid-step: only mounts of engines that are gone would be leftovers.
    for p in mine {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let pid: u32 = name.split('-').next().unwrap().parse().unwrap();
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "mount of a finished engine left behind: {}",
            p.display()
        );
    }
}

/// Prepared mounts of this engine pid (name `<pid>-<starttime>-<n>`).
fn prepared_mounts_of(pid: u32) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|p| {
            p.parent() == Some(Path::new("/run/secureclaw/docker"))
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{pid}-"))
        })
        .collect()
}

#[test]
fn a_killed_engines_workspace_mount_is_detached_by_the_next_engine() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    build_default_image();
    let ws = root_owned_workspace();
    // The step's mount appears once the step starts.
    let mut engine =
        common::start_long_docker_run(ws.path(), "the step's workspace mount", |pid| {
            !prepared_mounts_of(pid).is_empty()
        });
    let pid = engine.id();
    // kill -9: the engine gets no chance to detach it.
    engine.kill().unwrap();
    engine.wait().unwrap();
    let left = prepared_mounts_of(pid);
    assert_eq!(left.len(), 1, "nothing was left to sweep: {left:?}");
    let out = secureclaw()
        .args(["sandbox", "check", "--backend", "docker"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        prepared_mounts_of(pid).is_empty(),
        "the dead engine's workspace mount is still attached"
    );
    assert!(!left[0].exists(), "its directory is still there");
}

/// The binary as uid 1000 in the docker group: an engine that is not root but may use the
/// daemon (what a developer in the `docker` group has).
fn as_docker_group_user(args: &[&std::ffi::OsStr]) -> Output {
    let group = std::process::Command::new("getent")
        .args(["group", "docker"])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&group.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .trim()
        .to_string();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid", "1000", "--regid", "1000", "--groups", &gid])
        .arg(env!("CARGO_BIN_EXE_secureclaw"))
        .args(args);
    common::with_vault_env(&mut cmd, common::TEST_PASSPHRASE);
    cmd.output().unwrap()
}

#[test]
fn an_engine_that_cannot_idmap_a_root_owned_workspace_refuses_with_the_fix() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    build_default_image();
    let ws = root_owned_workspace();
    std::fs::set_permissions(
        ws.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    common::chown_tree(state.path(), 1000);
    let wf = state.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: t\nsteps:\n  - { id: a, shell: \"echo x > x.txt\" }\n",
    )
    .unwrap();
    let state_dir = state.path().join("state");
    let out = as_docker_group_user(&[
        "run".as_ref(),
        wf.as_os_str(),
        "--workspace".as_ref(),
        ws.path().as_os_str(),
        "--state-dir".as_ref(),
        state_dir.as_os_str(),
        "--sandbox".as_ref(),
        "docker".as_ref(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains(&format!("chown -R 1000:1000 {}", ws.path().display())),
        "no exact fix: {all}"
    );
    assert!(!all.contains("Permission denied"), "{all}");
    assert!(!ws.path().join("x.txt").exists());
}

#[test]
fn an_engine_that_cannot_prepare_a_nosuid_workspace_is_refused_unless_degraded() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    build_default_image();
    for degraded in [false, true] {
        let ws = tempfile::tempdir().unwrap();
        common::chown_tree(ws.path(), 1000);
        let wf = ws.path().join("wf.yaml");
        let sandbox = if degraded {
            "sandbox: { allow_degraded: true }\n"
        } else {
            ""
        };
        std::fs::write(
            &wf,
            format!(
                "version: 1\nname: t\n{sandbox}steps:\n  - {{ id: a, shell: \"echo x > x.txt\" }}\n"
            ),
        )
        .unwrap();
        let out = as_docker_group_user(&[
            "run".as_ref(),
            wf.as_os_str(),
            "--workspace".as_ref(),
            ws.path().as_os_str(),
            "--sandbox".as_ref(),
            "docker".as_ref(),
        ]);
        let all = text(&out);
        if degraded {
            // Accepted explicitly: the step runs, and its record says what was missing.
            assert!(out.status.success(), "{all}");
            assert!(ws.path().join("x.txt").exists());
            let missing = show(ws.path())["steps"][0]["enforcement"]["missing"].to_string();
            assert!(missing.contains("workspace-nosuid"), "{missing}");
        } else {
            assert!(!out.status.success(), "{all}");
            assert!(all.contains("workspace-nosuid"), "{all}");
            assert!(!ws.path().join("x.txt").exists(), "the step ran: {all}");
        }
    }
}
