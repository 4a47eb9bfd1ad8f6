//! The docker backend's isolation gaps found by container probes (amicontained, CDK, deepce),
//! each shown closed from inside a real container, plus the write budget, the pids warning,
//! the masked state dir and root-owned workspaces.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../../tests/common/docker_skip.rs"]
mod docker_skip;

#[path = "support/docker_fixture.rs"]
mod docker_fixture;

#[path = "support/tmpfs_workspace.rs"]
mod tmpfs_workspace;
use tmpfs_workspace::TmpfsWorkspace;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use secureclaw_sandbox::docker::DockerSandbox;
use secureclaw_sandbox::{ExecOutcome, ExecSpec, ExitReason, Sandbox};
use tokio_util::sync::CancellationToken;

async fn image() -> String {
    docker_fixture::image("secureclaw-sandbox:docker-hardening-test").await
}

async fn sandbox() -> DockerSandbox {
    DockerSandbox::with_default_image(image().await)
}

async fn run(sb: &DockerSandbox, spec: &ExecSpec) -> ExecOutcome {
    sb.run(spec, CancellationToken::new()).await.unwrap()
}

fn stdout(out: &ExecOutcome) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &ExecOutcome) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn layer<'a>(out: &'a ExecOutcome, name: &str) -> &'a secureclaw_sandbox::Layer {
    out.enforcement
        .layers
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no layer {name}: {:?}", out.enforcement.layers))
}

/// The mount options of the mount at `target` in a `/proc/self/mountinfo` text.
fn mount_options<'a>(mountinfo: &'a str, target: &str) -> Option<&'a str> {
    mountinfo.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        (fields.get(4) == Some(&target)).then(|| fields[5])
    })
}

/// A control line every probe step prints first: the step ran and could write.
const CONTROL: &str = "echo control > control.txt && cat control.txt; ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_is_nosuid_and_nodev_from_inside() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    let spec = ExecSpec::shell(
        &format!("{CONTROL} cat /proc/self/mountinfo"),
        ws.path().to_path_buf(),
    );
    let out = run(&sb, &spec).await;
    let text = stdout(&out);
    assert!(text.starts_with("control\n"), "{text}{}", stderr(&out));
    let opts = mount_options(&text, "/workspace").expect("/workspace in mountinfo");
    let flags: Vec<&str> = opts.split(',').collect();
    assert!(flags.contains(&"nosuid"), "/workspace mounted {opts}");
    assert!(flags.contains(&"nodev"), "/workspace mounted {opts}");
    assert!(
        flags.contains(&"rw"),
        "/workspace must stay writable: {opts}"
    );
    assert!(layer(&out, "workspace-nosuid").active);
    assert!(out.enforcement.missing.is_empty(), "{:?}", out.enforcement);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setuid_file_planted_in_the_workspace_does_not_elevate_inside() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    // A setuid-root program, as if a previous step or the host left it (root owns it, 4755;
    // busybox picks its applet from its own name, so the copy keeps it).
    std::fs::create_dir(ws.path().join("plant")).unwrap();
    let planted = ws.path().join("plant/busybox");
    std::fs::copy("/bin/busybox", &planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // The kernel's answer: the effective uid through the planted program stays 1000 (nosuid
    // on the mount, and no_new_privs besides).
    let spec = ExecSpec::shell(
        &format!("{CONTROL} ls -ln plant/busybox | cut -c1-10; ./plant/busybox id -u"),
        ws.path().to_path_buf(),
    );
    let out = run(&sb, &spec).await;
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"control"), "{text}{}", stderr(&out));
    assert_eq!(
        lines.get(1),
        Some(&"-rwsr-xr-x"),
        "the plant is setuid: {text}"
    );
    assert_eq!(lines.get(2), Some(&"1000"), "setuid honoured: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cgroup_namespace_is_private() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    // The container's hostname is its short id: what the probes found in /proc/self/cgroup.
    let spec = ExecSpec::shell(
        &format!(
            "{CONTROL} hostname; cat /proc/self/cgroup; echo ---; grep ' - cgroup' /proc/self/mountinfo"
        ),
        ws.path().to_path_buf(),
    );
    let out = run(&sb, &spec).await;
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("control"), "{text}{}", stderr(&out));
    let short_id = lines.next().unwrap().to_string();
    assert_eq!(short_id.len(), 12, "{text}");
    let rest: Vec<&str> = lines.collect();
    let split = rest.iter().position(|l| *l == "---").unwrap();
    let (cgroup, mounts) = (&rest[..split], &rest[split + 1..]);
    assert!(!cgroup.is_empty(), "no cgroup lines: {text}");
    for line in cgroup {
        // hierarchy-id:controllers:path; the path is `/` in a private cgroup namespace and
        // `/docker/<container id>` in the host's.
        let path = line.splitn(3, ':').nth(2).unwrap();
        assert_eq!(path, "/", "host cgroup path visible: {line}");
    }
    assert!(!mounts.is_empty(), "no cgroup mounts: {text}");
    for line in cgroup.iter().chain(mounts) {
        assert!(
            !line.contains(&short_id) && !line.contains("docker"),
            "container id leaks: {line}"
        );
    }
    let l = layer(&out, "cgroup-namespace");
    assert!(l.active && l.detail.contains("private"), "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_shm_and_dev_mqueue_are_closed() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    // Each attempt prints a marker only if it worked; the control line proves the step ran
    // and could write in the workspace.
    let spec = ExecSpec::shell(
        &format!(
            "{CONTROL} \
             echo x > /dev/shm/x 2>/dev/null && echo SHM-WRITABLE; \
             mkdir -p /dev/shm 2>/dev/null && echo SHM-CREATED; \
             echo x > /dev/mqueue/q 2>/dev/null && echo MQUEUE-WRITABLE; \
             ls -d /dev/shm 2>/dev/null || echo no-shm; \
             cat /proc/self/mountinfo"
        ),
        ws.path().to_path_buf(),
    );
    let out = run(&sb, &spec).await;
    let text = stdout(&out);
    assert!(text.starts_with("control\n"), "{text}{}", stderr(&out));
    for marker in ["SHM-WRITABLE", "SHM-CREATED", "MQUEUE-WRITABLE"] {
        assert!(!text.contains(marker), "{marker}: {text}");
    }
    assert!(text.contains("no-shm\n"), "/dev/shm exists: {text}");
    assert!(mount_options(&text, "/dev/shm").is_none(), "{text}");
    let mq = mount_options(&text, "/dev/mqueue").expect("/dev/mqueue mounted");
    assert!(mq.split(',').any(|f| f == "ro"), "/dev/mqueue {mq}");
    assert!(layer(&out, "ipc").active);
    assert!(layer(&out, "mqueue-readonly").active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_owned_workspace_is_writable_and_stays_root_owned() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    // As `mktemp -d` or CI give it: owned by root, mode 0700.
    let ws = tempfile::tempdir().unwrap();
    assert_eq!(std::fs::metadata(ws.path()).unwrap().uid(), 0);
    std::fs::create_dir(ws.path().join("src")).unwrap();
    std::fs::write(ws.path().join("src/main.txt"), "old\n").unwrap();
    // `.git` stays read-only through the idmapped mount (the step now "owns" root's files).
    std::fs::create_dir_all(ws.path().join(".git/hooks")).unwrap();
    let spec = ExecSpec::shell(
        "id -u; (echo x > .git/hooks/pre-commit) 2>/dev/null && echo HOOK >&2; echo new > src/main.txt; mkdir -p out/deep && echo made > out/deep/f; mkdir plant && cp /bin/busybox plant/busybox && chmod 4755 plant/busybox; ls -ln plant/busybox | cut -c1-10; ./plant/busybox id -u",
        ws.path().to_path_buf(),
    );
    let out = run(&sb, &spec).await;
    let text = stdout(&out);
    assert_eq!(
        out.exit,
        ExitReason::Exited { code: 0 },
        "{text}{}",
        stderr(&out)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "1000", "the step never runs as root: {text}");
    assert_eq!(
        lines.get(2),
        Some(&"1000"),
        "setuid honoured inside: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("src/main.txt")).unwrap(),
        "new\n"
    );
    for made in ["out", "out/deep", "out/deep/f", "plant/busybox"] {
        let meta = std::fs::metadata(ws.path().join(made)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{made} not root-owned");
    }
    assert!(layer(&out, "workspace-idmap").active);
    assert!(out.enforcement.missing.is_empty(), "{:?}", out.enforcement);
    assert!(!stderr(&out).contains("HOOK"), "{}", stderr(&out));
    assert!(!ws.path().join(".git/hooks/pre-commit").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_other_users_in_a_root_owned_workspace_stay_theirs() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = tempfile::tempdir().unwrap();
    // A file of uid 1000 (a real account on many machines) inside a root-owned workspace: the
    // idmapping shows root as the step, so 1000's file is not the step's to change.
    std::fs::write(ws.path().join("theirs"), "theirs\n").unwrap();
    std::os::unix::fs::chown(ws.path().join("theirs"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(
        ws.path().join("theirs"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let spec = ExecSpec::shell(
        &format!(
            "{CONTROL} echo pwned > theirs 2>/dev/null && echo WROTE; chmod 777 theirs 2>/dev/null && echo CHMOD; true"
        ),
        ws.path().to_path_buf(),
    );
    let out = run(&sb, &spec).await;
    let text = stdout(&out);
    assert_eq!(text, "control\n", "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("theirs")).unwrap(),
        "theirs\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_dir_is_an_empty_read_only_dir_that_find_and_tar_traverse() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    for root_owned in [false, true] {
        let ws = if root_owned {
            tempfile::tempdir().unwrap()
        } else {
            docker_fixture::workspace()
        };
        let root = ws.path();
        std::fs::create_dir_all(root.join(".secureclaw/blobs")).unwrap();
        std::fs::write(root.join(".secureclaw/vault.header.json"), "{}").unwrap();
        std::fs::set_permissions(
            root.join(".secureclaw"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        let mut spec = ExecSpec::shell(
            "find . | sort; tar czf /tmp/x.tgz . && echo TAR-OK; tar tzf /tmp/x.tgz | sort | tr '\\n' ' '; echo; \
             touch .secureclaw/planted 2>/dev/null && echo PLANTED; \
             cat .secureclaw/vault.header.json 2>/dev/null && echo READ; true",
            root.to_path_buf(),
        );
        spec.masked = vec![root.join(".secureclaw")];
        let out = run(&sb, &spec).await;
        let text = stdout(&out);
        assert_eq!(
            out.exit,
            ExitReason::Exited { code: 0 },
            "{text}{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).is_empty(),
            "find/tar complained: {}",
            stderr(&out)
        );
        let lines: Vec<&str> = text.lines().collect();
        // The state dir is there, empty: nothing under it is listed.
        assert_eq!(lines[..3], [".", "./.secureclaw", "./a.txt"], "{text}");
        assert_eq!(lines[3], "TAR-OK", "{text}");
        assert!(
            !text.contains("vault.header") && !text.contains("blobs"),
            "{text}"
        );
        assert!(
            !text.contains("PLANTED") && !text.contains("READ"),
            "{text}"
        );
        assert!(!root.join(".secureclaw/planted").exists());
        assert!(layer(&out, "state-dir-masked").active);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_read_only_paths_are_readable_and_not_writable() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    let tools = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(tools.path().join("tool.txt"), "tool\n").unwrap();
    let tools_path = std::fs::canonicalize(tools.path()).unwrap();
    let mut spec = ExecSpec::shell(
        &format!(
            "{CONTROL} cat {p}/tool.txt; echo x > {p}/tool.txt 2>/dev/null && echo WROTE; true",
            p = tools_path.display()
        ),
        ws.path().to_path_buf(),
    );
    spec.read_only = vec![tools_path.clone()];
    let out = run(&sb, &spec).await;
    assert_eq!(stdout(&out), "control\ntool\n", "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(tools_path.join("tool.txt")).unwrap(),
        "tool\n"
    );
    assert!(layer(&out, "read-only-paths").active);
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yes_into_a_file_stops_at_the_write_budget() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = TmpfsWorkspace::new("256m", 1000);
    let budget: u64 = 16 << 20;
    // `yes > big` alone (the step is the container's pid 1, so it gets EFBIG at the budget)
    // and as one command of several (a child, killed by SIGXFSZ; the step would exit 0).
    for command in ["yes > big", "yes > big; echo after"] {
        let mut spec = ExecSpec::shell(command, ws.path());
        spec.limits.disk_bytes = budget;
        spec.limits.timeout = Duration::from_secs(120);
        let out = run(&sb, &spec).await;
        assert_eq!(
            out.exit,
            ExitReason::DiskBudget,
            "{command}: {}",
            stderr(&out)
        );
        let len = file_len(&ws.path().join("big"));
        assert!(
            len <= budget && len > 0,
            "{command}: big is {len} bytes, budget {budget}"
        );
        let l = layer(&out, "file-size");
        assert!(l.active && l.detail.contains(&budget.to_string()), "{l:?}");
        std::fs::remove_file(ws.path().join("big")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_files_under_the_per_file_limit_still_stop_at_the_budget() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = TmpfsWorkspace::new("512m", 1000);
    let budget: u64 = 16 << 20;
    // Each file stays below RLIMIT_FSIZE; only the sampled total can stop this, and the step
    // would exit 0.
    let mut spec = ExecSpec::shell(
        "i=0; while [ $i -lt 40 ]; do head -c 4194304 /dev/zero > f$i; i=$((i+1)); done; exit 0",
        ws.path(),
    );
    spec.limits.disk_bytes = budget;
    spec.limits.timeout = Duration::from_secs(120);
    let out = run(&sb, &spec).await;
    assert_eq!(out.exit, ExitReason::DiskBudget, "{}", stderr(&out));
    assert!(!out.exit.success());
    let total: u64 = std::fs::read_dir(ws.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total >= budget, "stopped before the budget: {total}");
    assert!(total < 40 * (4 << 20), "the step was not stopped: {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_within_its_budget_is_not_stopped() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = TmpfsWorkspace::new("256m", 1000);
    let mut spec = ExecSpec::shell("head -c 4194304 /dev/zero > f; echo done", ws.path());
    spec.limits.disk_bytes = 16 << 20;
    let out = run(&sb, &spec).await;
    assert_eq!(out.exit, ExitReason::Exited { code: 0 }, "{}", stderr(&out));
    assert_eq!(stdout(&out), "done\n");
    assert_eq!(file_len(&ws.path().join("f")), 4 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_that_exits_0_is_reported_with_the_pids_limit() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    // The forks beyond the limit fail inside a subshell; the step itself goes on and exits 0.
    let bombs = [
        "(i=0; while [ $i -lt 100 ]; do sleep 2 & i=$((i+1)); done) 2>/dev/null; wait; exit 0",
        "for i in $(seq 100); do (sleep 2 &) 2>/dev/null; done; sleep 2; true",
    ];
    for bomb in bombs {
        let mut spec = ExecSpec::shell(bomb, ws.path().to_path_buf());
        spec.limits.pids = 24;
        spec.limits.timeout = Duration::from_secs(60);
        let out = run(&sb, &spec).await;
        assert_eq!(
            out.exit,
            ExitReason::Exited { code: 0 },
            "{bomb}: {}",
            stderr(&out)
        );
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains("pids limit") && w.contains("24")),
            "{bomb}: no pids warning: {:?}",
            out.warnings
        );
    }
    // Control: a step that stays under the limit gets no warning.
    let mut spec = ExecSpec::shell("sleep 0.2 & sleep 0.2 & wait", ws.path().to_path_buf());
    spec.limits.pids = 24;
    let out = run(&sb, &spec).await;
    assert_eq!(out.exit, ExitReason::Exited { code: 0 });
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_file_reads_empty_and_cannot_be_written() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    let root = ws.path();
    std::fs::write(root.join("secret.key"), "top secret").unwrap();
    let mut spec = ExecSpec::shell(
        &format!(
            "{CONTROL} wc -c < secret.key; cat secret.key; echo x > secret.key 2>/dev/null && echo WROTE; rm secret.key 2>/dev/null && echo REMOVED; true"
        ),
        root.to_path_buf(),
    );
    spec.masked = vec![root.join("secret.key")];
    let out = run(&sb, &spec).await;
    assert_eq!(stdout(&out), "control\n0\n", "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(root.join("secret.key")).unwrap(),
        "top secret"
    );
    assert!(layer(&out, "state-dir-masked").active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_node_planted_in_the_workspace_cannot_be_opened_inside() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    // /dev/zero's numbers (1:5): a device the container's device cgroup allows, so only the
    // workspace's `nodev` stands between the step and it.
    let node = ws.path().join("zero");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &node,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5),
    )
    .unwrap();
    std::os::unix::fs::chown(&node, Some(1000), Some(1000)).unwrap();
    let spec = ExecSpec::shell(
        &format!("{CONTROL} head -c 4 zero 2>/dev/null | wc -c; head -c 4 /dev/zero | wc -c; true"),
        ws.path().to_path_buf(),
    );
    let out = run(&sb, &spec).await;
    let text = stdout(&out);
    // The container's own /dev/zero works (the tool does), the planted node does not.
    assert_eq!(text, "control\n0\n4\n", "{}", stderr(&out));
}
