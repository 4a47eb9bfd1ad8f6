//! The `docker` backend against the real Docker daemon on this machine, with the image built
//! offline by the same code as `secureclaw sandbox build-image`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../../tests/common/docker_skip.rs"]
mod docker_skip;

#[path = "support/docker_fixture.rs"]
mod docker_fixture;
#[path = "support/report.rs"]
mod report;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use secureclaw_sandbox::docker::{DockerSandbox, ENGINE_LABEL, WORKSPACE_LABEL, sweep};
use secureclaw_sandbox::{ExecSpec, ExitReason, Sandbox};
use tokio_util::sync::CancellationToken;

async fn image() -> String {
    docker_fixture::image("secureclaw-sandbox:docker-test").await
}

async fn sandbox() -> DockerSandbox {
    DockerSandbox::with_default_image(image().await)
}

/// Containers this engine process owns right now (running or not) that mount `workspace`
/// (tests run in parallel: each looks for its own).
async fn containers_of(workspace: &Path) -> Vec<String> {
    let source = std::fs::canonicalize(workspace).unwrap();
    let docker = DockerSandbox::docker().await.unwrap();
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".to_string(), vec![ENGINE_LABEL.to_string()])]);
    let me = format!("{}:", std::process::id());
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(ENGINE_LABEL))
                .is_some_and(|v| v.starts_with(&me))
                && c.labels
                    .as_ref()
                    .and_then(|l| l.get(WORKSPACE_LABEL))
                    .is_some_and(|w| w.as_str() == source.to_str().unwrap())
        })
        .filter_map(|c| c.id)
        .collect()
}

/// Poll (bounded) until a container for `workspace` exists: a loaded machine may take a while
/// to create one, so no fixed sleep.
async fn wait_for_container(workspace: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while containers_of(workspace).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step's container never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_hardened_and_its_container_is_removed() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    let spec = ExecSpec::shell(
        "id -u; id -g; echo to-stderr >&2; cat /proc/self/status | grep -E '^(Seccomp|NoNewPrivs|CapEff):'; touch /etc/x 2>/dev/null && echo ROOT-WRITABLE; echo made > out.txt",
        ws.path().to_path_buf(),
    );
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.exit, ExitReason::Exited { code: 0 }, "{stdout}");
    assert!(stdout.starts_with("1000\n1000\n"), "{stdout}");
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(!stdout.contains("ROOT-WRITABLE"));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
        "made\n"
    );
    assert!(out.enforcement.missing.is_empty(), "{:?}", out.enforcement);
    for layer in [
        "user",
        "capabilities",
        "seccomp",
        "no-new-privileges",
        "read-only-rootfs",
        "network",
        "memory",
        "pids",
    ] {
        assert!(
            out.enforcement
                .layers
                .iter()
                .any(|l| l.name == layer && l.active),
            "{layer} not active: {:?}",
            out.enforcement.layers
        );
    }
    // Removal happens off the step's critical path; `flush` waits for it (the engine calls it
    // before a run ends).
    sb.flush().await;
    assert!(
        containers_of(ws.path()).await.is_empty(),
        "container left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_is_read_only_masked_paths_are_hidden_and_tmp_is_noexec() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    let root = ws.path();
    std::fs::create_dir_all(root.join(".git/hooks")).unwrap();
    std::fs::create_dir_all(root.join(".secureclaw")).unwrap();
    std::fs::write(root.join(".secureclaw/vault.key"), "secret").unwrap();
    for p in [".git", ".git/hooks", ".secureclaw"] {
        std::os::unix::fs::chown(root.join(p), Some(1000), Some(1000)).unwrap();
    }
    let mut spec = ExecSpec::shell(
        "echo x > .git/hooks/pre-commit 2>/dev/null && echo HOOK; cat .secureclaw/vault.key 2>/dev/null && echo KEY; cp /bin/busybox /tmp/bb && /tmp/bb true 2>/dev/null && echo EXEC; echo ok",
        root.to_path_buf(),
    );
    spec.masked = vec![root.join(".secureclaw")];
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "ok\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.join(".git/hooks/pre-commit").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_cancellation_kill_and_remove_the_container() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    let mut spec = ExecSpec::shell("sleep 60", ws.path().to_path_buf());
    spec.limits.timeout = Duration::from_millis(800);
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    assert_eq!(out.exit, ExitReason::TimedOut);
    assert!(out.duration < Duration::from_secs(30));
    sb.flush().await;

    spec.limits.timeout = Duration::from_secs(60);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let ws_path = ws.path().to_path_buf();
    // Cancel once the step's container exists (polled, bounded), so cancellation hits a
    // running container.
    tokio::spawn(async move {
        wait_for_container(&ws_path).await;
        c.cancel();
    });
    let out = sb.run(&spec, cancel).await.unwrap();
    assert_eq!(out.exit, ExitReason::Cancelled);
    // Removal happens off the step's critical path; `flush` waits for it (the engine calls it
    // before a run ends).
    sb.flush().await;
    assert!(
        containers_of(ws.path()).await.is_empty(),
        "container left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_output_limits_hold() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    // busybox has no allocator bomb; a tmpfs-backed file would be capped by /tmp's size, so
    // grow a shell variable instead.
    let mut spec = ExecSpec::shell(
        "x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
        ws.path().to_path_buf(),
    );
    spec.limits.memory_bytes = 32 * 1024 * 1024;
    spec.limits.timeout = Duration::from_secs(60);
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    assert_eq!(out.exit, ExitReason::OutOfMemory, "{:?}", out.exit);

    let mut spec = ExecSpec::shell(
        "head -c 3000000 /dev/zero; head -c 10 /dev/zero >&2",
        ws.path().to_path_buf(),
    );
    spec.limits.output_cap = 1000;
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert_eq!(out.stdout_total, 3_000_000);
    assert_eq!(out.stderr_total, 10);
}

/// A write budget of 0 is none, as on every backend: no sampling and no `fsize` ulimit of 0,
/// which would stop the step at its first byte. The hardening check still reads the ulimit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_budget_of_zero_lets_a_file_grow() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    let mut spec = ExecSpec::shell(
        "head -c 3000000 /dev/zero > /workspace/grown && echo written",
        ws.path().to_path_buf(),
    );
    spec.limits.disk_bytes = 0;
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    assert_eq!(
        out.exit,
        ExitReason::Exited { code: 0 },
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "written");
    assert_eq!(
        std::fs::metadata(ws.path().join("grown")).unwrap().len(),
        3_000_000
    );
    // The report says there is no budget, and the container's file size limit is unlimited.
    report::assert_no_write_budget(&out);
    let file_size = report::layer(&out, "file-size");
    assert!(
        file_size.is_some_and(|l| l.active && l.detail.contains("unlimited")),
        "{file_size:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_a_clear_error() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = DockerSandbox::with_default_image("secureclaw-sandbox:does-not-exist");
    let ws = docker_fixture::workspace();
    let err = sb
        .run(
            &ExecSpec::shell("true", ws.path().to_path_buf()),
            CancellationToken::new(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("secureclaw sandbox build-image"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_dead_engine_are_swept() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let tag = image().await;
    let docker = DockerSandbox::docker().await.unwrap();
    // A container labelled with an engine that no longer exists (as after a kill -9).
    let body = bollard::models::ContainerCreateBody {
        image: Some(tag),
        cmd: Some(vec!["sleep".into(), "300".into()]),
        labels: Some(HashMap::from([(
            ENGINE_LABEL.to_string(),
            "999999999:1".to_string(),
        )])),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .unwrap();
    docker.start_container(&created.id, None).await.unwrap();
    let removed = sweep(docker).await.unwrap();
    assert!(!removed.is_empty(), "nothing swept");
    assert!(
        docker.inspect_container(&created.id, None).await.is_err(),
        "the dead engine's container still exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_engines_running_step_is_not_swept() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let sb = sandbox().await;
    let ws = docker_fixture::workspace();
    // The step waits for the test's go-ahead, so it is surely running during the sweep.
    let mut spec = ExecSpec::shell(
        "while [ ! -e go ]; do sleep 0.05; done; echo survived",
        ws.path().to_path_buf(),
    );
    spec.limits.timeout = Duration::from_secs(60);
    let run = tokio::spawn(async move { sb.run(&spec, CancellationToken::new()).await });
    let ws_path = ws.path().to_path_buf();
    // The lookup the other tests rely on ("no container left") does see a live one.
    wait_for_container(&ws_path).await;
    assert_eq!(containers_of(&ws_path).await.len(), 1);
    sweep(DockerSandbox::docker().await.unwrap()).await.unwrap();
    std::fs::write(ws_path.join("go"), "").unwrap();
    let out = run.await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "survived\n");
}

#[test]
fn the_offline_dockerfile_is_from_scratch() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let text = secureclaw_sandbox::docker::image::DOCKERFILE_OFFLINE;
    assert!(text.lines().any(|l| l.trim() == "FROM scratch"));
    assert!(text.contains("USER 1000:1000"));
    assert!(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docker/Dockerfile.sandbox"
        ))
        .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflows_image_wins_and_the_hardening_stays() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let tag = image().await;
    // A backend whose own default image does not exist: only `spec.image` can make this run.
    let sb = DockerSandbox::with_default_image("secureclaw-sandbox:does-not-exist");
    let ws = docker_fixture::workspace();
    let mut spec = ExecSpec::shell(
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
        ws.path().to_path_buf(),
    );
    spec.image = Some(tag);
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("NoNewPrivs:\t1") && stdout.contains("Seccomp:\t2"),
        "{stdout}"
    );
    assert!(out.enforcement.missing.is_empty());
}

/// Set where the daemon has gVisor registered as `runsc` (CI registers it): the test then fails
/// instead of skipping when the runtime is missing.
const REQUIRE_RUNSC_VAR: &str = "SECURECLAW_TEST_REQUIRE_DOCKER_RUNSC";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_runsc_runs_the_step_on_gvisors_kernel() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let docker = DockerSandbox::docker().await.unwrap();
    let info = docker.info().await.unwrap();
    let has_runsc = info
        .runtimes
        .as_ref()
        .is_some_and(|r| r.contains_key("runsc"));
    if !has_runsc {
        assert!(
            std::env::var_os(REQUIRE_RUNSC_VAR).is_none(),
            "{REQUIRE_RUNSC_VAR} is set but the daemon has no `runsc` runtime"
        );
        docker_skip::skip_because("the Docker daemon has no `runsc` runtime");
        return;
    }
    let sandbox = sandbox().await.with_runtime(Some("runsc".into()));
    // A user's workspace, and a root-owned one (idmapped: root owns what the step makes).
    let users = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(users.path(), Some(1000), Some(1000)).unwrap();
    let roots = tempfile::tempdir().unwrap();
    for (ws, owner) in [(&users, 1000), (&roots, 0)] {
        let spec = ExecSpec::shell("echo made > made.txt", ws.path().into());
        let outcome = sandbox.run(&spec, CancellationToken::new()).await.unwrap();
        assert!(
            outcome.exit.success(),
            "{}",
            String::from_utf8_lossy(&outcome.stderr)
        );
        let made = ws.path().join("made.txt");
        assert_eq!(std::fs::read_to_string(&made).unwrap(), "made\n");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&made).unwrap().uid(), owner);
    }
    let ws = users;
    let spec = ExecSpec::shell("cat /proc/version; echo made > made.txt", ws.path().into());
    let outcome = sandbox.run(&spec, CancellationToken::new()).await.unwrap();
    sandbox.flush().await;
    let out = String::from_utf8_lossy(&outcome.stdout).into_owned();
    assert!(
        outcome.exit.success(),
        "{out}{}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    let host = std::fs::read_to_string("/proc/version").unwrap();
    assert!(
        !out.contains(host.trim()),
        "the step saw the host kernel: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("made.txt")).unwrap(),
        "made\n"
    );
    let runtime = outcome
        .enforcement
        .layers
        .iter()
        .find(|l| l.name == "runtime")
        .expect("a runtime layer");
    assert!(
        runtime.active && runtime.detail.contains("gVisor"),
        "{runtime:?}"
    );
    assert!(
        outcome.enforcement.missing.is_empty(),
        "{:?}",
        outcome.enforcement.missing
    );
}
