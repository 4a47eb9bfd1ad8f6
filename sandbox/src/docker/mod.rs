//! The `docker` backend: one ephemeral, hardened container per step, through the Docker
//! Engine API (bollard), never the `docker` CLI.
//!
//! Every container gets the default hardening whatever the image: all capabilities dropped, our
//! own default-deny seccomp profile (generated from `sandbox/policy/seccomp.toml`, see
//! `profile.rs`), `no-new-privileges`, a non-root user, a read-only root filesystem, the
//! workspace bind-mounted read-write from a `nosuid,nodev` mount the engine prepares (idmapped
//! for a root-owned workspace, see `workspace.rs`) with `.git` read-only and the state dir
//! under an empty read-only directory, a `noexec` tmpfs on `/tmp`, a private IPC namespace
//! without `/dev/shm` and a read-only `/dev/mqueue`, a private cgroup namespace, network mode
//! `none`, memory without swap, CPU and pids limits, `RLIMIT_FSIZE` and a sampled write budget,
//! and a wall clock. Before the step starts, the container is inspected and the layers are read
//! back from the daemon: a layer the daemon did not apply is a refusal, not a footnote.
//! Containers are removed after the step whatever happened; containers and workspace mounts of
//! dead engines are found by label and name and removed on next start.

pub mod image;
pub mod profile;
pub mod server_profile;
pub mod workspace;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, HostConfigCgroupnsModeEnum,
    HostConfigLogConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum, MountType,
    ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::capture::SharedOutput;
use crate::{
    EnforcementReport, ExecOutcome, ExecSpec, ExitReason, Layer, NetworkPolicy, Sandbox,
    SandboxError,
};
pub use image::{ImageRecipe, build_image, default_image, versioned_image};

/// The variable for the container network mode. Only `none` is accepted: a step's
/// outbound access is its `network:` allowlist through the egress proxy, never a bridge.
pub const NETWORK_MODE_VAR: &str = "DOCKER_NETWORK_MODE";

fn check_network_mode_var() -> Result<(), SandboxError> {
    match std::env::var(NETWORK_MODE_VAR) {
        Ok(mode) if mode.trim() != "none" && !mode.trim().is_empty() => {
            Err(SandboxError::Unsupported {
                backend: NAME.into(),
                feature: format!(
                    "{NETWORK_MODE_VAR}={mode}: containers always run with network mode `none`; give the step a `network: [domain, ...]` allowlist for outbound access through the egress proxy"
                ),
            })
        }
        _ => Ok(()),
    }
}

const NAME: &str = "docker";
/// Label on every container we create; its value identifies the engine process.
pub const ENGINE_LABEL: &str = "org.secureclaw.engine";
/// Label on every step container: the host path of the workspace it works on (the bind
/// source is a prepared mount, so the mount list does not name it).
pub const WORKSPACE_LABEL: &str = "org.secureclaw.workspace";
/// The uid/gid a step runs as when the workspace belongs to root (the default 1000:1000).
pub const DEFAULT_USER: (u32, u32) = (1000, 1000);
/// Size of the step's `/tmp` (64m by default).
const TMP_OPTIONS: &str = "rw,noexec,nosuid,nodev,size=64m";

pub(crate) fn unavailable(reason: String) -> SandboxError {
    SandboxError::Unavailable {
        backend: NAME.into(),
        reason,
    }
}

pub(crate) fn docker_error(what: &str, e: bollard::errors::Error) -> SandboxError {
    let hint = match &e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.contains("image") => {
            " (build the sandbox image offline with `secureclaw sandbox build-image`)"
        }
        bollard::errors::Error::HyperResponseError { .. }
        | bollard::errors::Error::IOError { .. } => {
            " (is the Docker daemon running, and may this user use /var/run/docker.sock?)"
        }
        _ => "",
    };
    unavailable(format!("cannot {what}: {e}{hint}"))
}

/// One client per process, with the API version negotiated against the daemon (an older
/// daemon refuses a client that announces a newer version). Leftover containers of dead
/// engines are removed the first time we talk to the daemon.
async fn client() -> Result<&'static Docker, SandboxError> {
    static CLIENT: OnceCell<Result<Docker, String>> = OnceCell::const_new();
    CLIENT
        .get_or_init(|| async {
            let unreachable = |e: bollard::errors::Error| {
                format!(
                    "cannot reach the Docker daemon: {e} (is it running, and may this user use its socket? DOCKER_HOST names another one)"
                )
            };
            let docker = Docker::connect_with_local_defaults()
                .map_err(unreachable)?
                .negotiate_version()
                .await
                .map_err(unreachable)?;
            let _ = sweep(&docker).await;
            Ok(docker)
        })
        .await
        .as_ref()
        .map_err(|reason| unavailable(reason.clone()))
}

/// `pid:starttime` of this process: a pid alone could be reused by an unrelated process.
pub(crate) fn engine_id() -> String {
    let pid = std::process::id();
    format!("{pid}:{}", process_start(pid).unwrap_or_default())
}

fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); the command name (field 2) may contain spaces, so split after it.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub(crate) fn engine_alive(id: &str) -> bool {
    let Some((pid, start)) = id.split_once(':') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    process_start(pid) == Some(start)
}

/// Remove containers whose engine is gone (killed mid-step). Returns their names.
pub async fn sweep(docker: &Docker) -> Result<Vec<String>, SandboxError> {
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".to_string(), vec![ENGINE_LABEL.to_string()])]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| docker_error("list leftover containers", e))?;
    let mut removed = workspace::sweep(|name| {
        let mut parts = name.splitn(3, '-');
        match (parts.next(), parts.next()) {
            (Some(pid), Some(start)) => engine_alive(&format!("{pid}:{start}")),
            _ => true,
        }
    });
    for c in list {
        let owner = c
            .labels
            .as_ref()
            .and_then(|l| l.get(ENGINE_LABEL))
            .cloned()
            .unwrap_or_default();
        if engine_alive(&owner) {
            continue;
        }
        if let Some(id) = c.id
            && remove(docker, &id).await.is_ok()
        {
            removed.push(format!(
                "docker container {}",
                c.names.and_then(|n| n.first().cloned()).unwrap_or(id)
            ));
        }
    }
    Ok(removed)
}

/// Remove leftovers of dead engines, for `sweep_leftovers` callers outside a runtime.
pub async fn sweep_leftovers() -> Vec<String> {
    match client().await {
        Ok(docker) => sweep(docker).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

async fn remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    docker
        .remove_container(
            id,
            Some(
                RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
}

/// Removals in flight: the step's result does not wait for its container to be deleted (tens
/// of milliseconds in the daemon), but `flush` (called by the engine before a run ends) does.
fn removals() -> &'static tokio_util::task::TaskTracker {
    static TRACKER: std::sync::OnceLock<tokio_util::task::TaskTracker> = std::sync::OnceLock::new();
    TRACKER.get_or_init(tokio_util::task::TaskTracker::new)
}

/// Force-removes the container when the step's future ends or is dropped (cancelled).
struct Removal {
    docker: &'static Docker,
    id: Option<String>,
}

impl Removal {
    async fn now(mut self) {
        if let Some(id) = self.id.take() {
            let _ = remove(self.docker, &id).await;
        }
    }

    /// Remove in the background, tracked for `flush`.
    fn soon(mut self) {
        if let Some(id) = self.id.take() {
            let docker = self.docker;
            removals().spawn(async move {
                let _ = remove(docker, &id).await;
            });
        }
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let docker = self.docker;
            if tokio::runtime::Handle::try_current().is_ok() {
                removals().spawn(async move {
                    let _ = remove(docker, &id).await;
                });
            }
            // Without a runtime the label sweep of the next engine removes it.
        }
    }
}

/// The hardened Docker backend.
#[derive(Debug, Clone)]
pub struct DockerSandbox {
    default_image: String,
    egress_pins: crate::egress::Pins,
    /// The daemon's OCI runtime for step containers (`None`: the daemon's default).
    runtime: Option<String>,
}

impl Default for DockerSandbox {
    fn default() -> Self {
        DockerSandbox {
            default_image: default_image(),
            egress_pins: Default::default(),
            runtime: None,
        }
    }
}

/// The variable naming the daemon's OCI runtime for step containers, e.g. `runsc` where the
/// daemon has gVisor registered (`runtimes` in `/etc/docker/daemon.json`).
pub const RUNTIME_VAR: &str = "DOCKER_RUNTIME";

impl DockerSandbox {
    /// The backend as the environment configures it ([`RUNTIME_VAR`]).
    pub fn new() -> Self {
        Self::default().with_runtime(
            std::env::var(RUNTIME_VAR)
                .ok()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty()),
        )
    }

    /// Use `image` for steps whose workflow names none.
    pub fn with_default_image(image: impl Into<String>) -> Self {
        DockerSandbox {
            default_image: image.into(),
            ..Self::default()
        }
    }

    /// Run step containers under the daemon's runtime `runtime` (`None`: its default).
    pub fn with_runtime(mut self, runtime: Option<String>) -> Self {
        self.runtime = runtime;
        self
    }

    /// Operator pins for the egress proxy (name → address, like curl's `--resolve`).
    pub fn with_egress_pins(mut self, pins: crate::egress::Pins) -> Self {
        self.egress_pins = pins;
        self
    }

    /// The daemon, for `sandbox build-image` and `sandbox check`.
    pub async fn docker() -> Result<&'static Docker, SandboxError> {
        client().await
    }
}

/// How the step gets the workspace.
pub(crate) struct Plan {
    /// uid:gid the step runs as.
    pub(crate) user: (u32, u32),
    /// The workspace's owner on disk is shown as the step's ids through an idmapped mount
    /// (root-owned workspace: the step runs as 1000:1000, never as root).
    pub(crate) idmap: Option<workspace::IdMap>,
}

/// The uid:gid the step runs as: the workspace's owner, so files the step creates belong to
/// the user who owns the workspace, except root, which is never used: a root-owned workspace
/// is idmapped so that its owner appears as the default 1000:1000 inside, and what the step
/// creates is written to disk as root.
pub(crate) fn plan(workspace: &Path) -> Result<Plan, SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(workspace)?;
    Ok(if meta.uid() == 0 {
        Plan {
            user: DEFAULT_USER,
            idmap: Some(((0, DEFAULT_USER.0), (meta.gid(), DEFAULT_USER.1))),
        }
    } else {
        Plan {
            user: (meta.uid(), meta.gid()),
            idmap: None,
        }
    })
}

pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The workspace bind source: a prepared `nosuid,nodev` (and, for a root-owned workspace,
/// idmapped) mount when the engine is root; the workspace itself otherwise (the `nosuid` layer
/// is then missing and the step refused unless degraded mode is accepted).
fn prepare_workspace(
    workspace: &Path,
    plan: &Plan,
    runtime: Option<&str>,
    name: &str,
) -> Result<(Option<workspace::PreparedWorkspace>, Option<String>), SandboxError> {
    let refuse = |why: String| {
        Err(SandboxError::Unsupported {
            backend: NAME.into(),
            feature: format!(
                "a root-owned workspace ({}): {why}. The step runs as 1000:1000 and could not write to it. Fix: `chown -R 1000:1000 {}` (steps then write as that user), or run the engine as root on a filesystem with idmapped mounts (ext4, xfs, btrfs, tmpfs), or use `--sandbox native`",
                workspace.display(),
                workspace.display()
            ),
        })
    };
    if !is_root() {
        if plan.idmap.is_some() {
            return refuse(
                "only a root engine can give the container an idmapped mount of it".into(),
            );
        }
        return Ok((
            None,
            Some("the engine is not root, so it cannot prepare a nosuid,nodev mount of the workspace for the daemon (run the engine as root)".into()),
        ));
    }
    // gVisor's file server creates files as root before handing them to the step's uid: the
    // idmapping must map root too.
    let swap = runtime == Some("runsc");
    match workspace::prepare_mapped(workspace, plan.idmap, swap, name) {
        Ok(prepared) => Ok((Some(prepared), None)),
        Err(e) if plan.idmap.is_some() => refuse(e),
        Err(e) => Ok((None, Some(e))),
    }
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(source.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        bind_options: Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the container must look like; compared with what the daemon reports back.
struct Expected {
    user: String,
    network_mode: String,
    memory: i64,
    nano_cpus: i64,
    pids: i64,
    /// RLIMIT_FSIZE: the write budget bounds any one file.
    fsize: i64,
    /// The bind source of `/workspace` (the prepared mount, or the workspace itself).
    workspace_source: PathBuf,
    /// The prepared mount was attached and the kernel reports it `nosuid,nodev`; `Err` says
    /// why not.
    workspace_nosuid: Result<(), String>,
    /// The workspace's owner is shown as the step's uid through an idmapped mount.
    idmapped: bool,
    /// Paths under `/workspace` the step must not see (the state dir), each with what covers
    /// it: an empty read-only directory, or an empty file for a file (`Err`: why none).
    masked: Vec<(String, Result<PathBuf, String>)>,
    /// Extra host paths bound read-only at the same path.
    read_only: Vec<PathBuf>,
    /// The OCI runtime asked of the daemon (`None`: its default).
    runtime: Option<String>,
}

/// `/dev/mqueue`: an empty read-only tmpfs over Docker's writable mqueue mount.
const MQUEUE_OPTIONS: &str = "ro,noexec,nosuid,nodev,size=4k,mode=0555";

fn container_body(
    spec: &ExecSpec,
    workspace: &Path,
    image: &str,
    expected: &Expected,
    profile: &str,
) -> ContainerCreateBody {
    let env = crate::step_env(spec);
    let source = &expected.workspace_source;
    let mut mounts = vec![bind(source, "/workspace", false)];
    if workspace.join(".git").is_dir() {
        mounts.push(bind(&source.join(".git"), "/workspace/.git", true));
    }
    for path in &expected.read_only {
        mounts.push(bind(path, &path.to_string_lossy(), true));
    }
    // The state dir: an empty read-only directory over it (`find .` and `tar .` traverse it).
    for (hidden, cover) in &expected.masked {
        if let Ok(cover) = cover {
            mounts.push(bind(cover, hidden, true));
        }
    }
    let tmpfs = HashMap::from([
        ("/tmp".to_string(), TMP_OPTIONS.to_string()),
        ("/dev/mqueue".to_string(), MQUEUE_OPTIONS.to_string()),
    ]);
    let labels = HashMap::from([
        (ENGINE_LABEL.to_string(), engine_id()),
        (
            WORKSPACE_LABEL.to_string(),
            workspace.to_string_lossy().into_owned(),
        ),
    ]);
    let host_config = HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec![
            "no-new-privileges:true".into(),
            format!("seccomp={profile}"),
        ]),
        readonly_rootfs: Some(true),
        runtime: expected.runtime.clone(),
        network_mode: Some(expected.network_mode.clone()),
        memory: Some(expected.memory),
        memory_swap: Some(expected.memory),
        nano_cpus: Some(expected.nano_cpus),
        pids_limit: Some(expected.pids),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("fsize".into()),
            soft: Some(expected.fsize),
            hard: Some(expected.fsize),
        }]),
        mounts: Some(mounts),
        tmpfs: Some(tmpfs),
        privileged: Some(false),
        // A private IPC namespace without /dev/shm (Docker mounts none in mode `none`).
        ipc_mode: Some("none".into()),
        // The container's own cgroup is the root of what it sees (/proc/self/cgroup shows `/`).
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        // Output is streamed through attach; nothing is kept on the daemon's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        ..Default::default()
    };
    let (entrypoint, cmd) = spec.argv.split_at(1);
    ContainerCreateBody {
        image: Some(image.into()),
        entrypoint: Some(entrypoint.to_vec()),
        cmd: Some(cmd.to_vec()),
        env: Some(env),
        user: Some(expected.user.clone()),
        working_dir: Some("/workspace".into()),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The isolation layers as the daemon reports them for a created container.
fn layers_from_inspect(
    inspected: &ContainerInspectResponse,
    expected: &Expected,
    profile: &str,
) -> (Vec<Layer>, Vec<String>) {
    let hc = inspected.host_config.clone().unwrap_or_default();
    let user = inspected
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .unwrap_or_default();
    let sec = hc.security_opt.clone().unwrap_or_default();
    let seccomp = sec
        .iter()
        .find(|o| o.starts_with("seccomp="))
        .map(|o| &o["seccomp=".len()..]);
    // Exactly our profile: a string comparison, no JSON parse per step.
    let seccomp_ok = seccomp == Some(profile);
    let caps_dropped = hc
        .cap_drop
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.eq_ignore_ascii_case("ALL")))
        && hc.cap_add.as_ref().is_none_or(|c| c.is_empty())
        && hc.privileged != Some(true);
    let tmp_ok = hc
        .tmpfs
        .as_ref()
        .and_then(|t| t.get("/tmp"))
        .is_some_and(|o| o.contains("noexec") && o.contains("nosuid"));
    let checks: Vec<(&'static str, bool, String)> = vec![
        (
            "user",
            user == expected.user && !user.starts_with("0:") && user != "0" && !user.is_empty(),
            format!("runs as {user} (not root)"),
        ),
        (
            "capabilities",
            caps_dropped,
            format!(
                "cap_drop {:?}, cap_add {:?}, privileged {:?}",
                hc.cap_drop.unwrap_or_default(),
                hc.cap_add.unwrap_or_default(),
                hc.privileged.unwrap_or(false)
            ),
        ),
        (
            "seccomp",
            seccomp_ok,
            if seccomp_ok {
                "secureclaw default-deny profile (from sandbox/policy/seccomp.toml)".into()
            } else {
                format!(
                    "profile {:?}",
                    seccomp.map(|s| s.chars().take(40).collect::<String>())
                )
            },
        ),
        (
            "no-new-privileges",
            sec.iter()
                .any(|o| o == "no-new-privileges:true" || o == "no-new-privileges"),
            "setuid binaries cannot raise privileges".into(),
        ),
        (
            "read-only-rootfs",
            hc.readonly_rootfs == Some(true),
            "image filesystem mounted read-only".into(),
        ),
        (
            "network",
            hc.network_mode.as_deref() == Some(expected.network_mode.as_str()),
            format!(
                "network mode {}",
                hc.network_mode.clone().unwrap_or_default()
            ),
        ),
        ("tmp-noexec", tmp_ok, format!("/tmp tmpfs {TMP_OPTIONS}")),
        (
            "memory",
            hc.memory == Some(expected.memory) && hc.memory_swap == Some(expected.memory),
            format!("{} bytes, no swap", hc.memory.unwrap_or_default()),
        ),
        (
            "cpu",
            hc.nano_cpus == Some(expected.nano_cpus),
            format!("{} cpu(s)", hc.nano_cpus.unwrap_or_default() as f64 / 1e9),
        ),
        (
            "pids",
            hc.pids_limit == Some(expected.pids),
            format!("{} processes", hc.pids_limit.unwrap_or_default()),
        ),
    ];
    let mut checks = checks;
    if let Some(runtime) = &expected.runtime {
        checks.push((
            "runtime",
            hc.runtime.as_deref() == Some(runtime.as_str()),
            match hc.runtime.as_deref() {
                Some("runsc") => {
                    "runsc: gVisor's user-space kernel serves the step's system calls".into()
                }
                other => format!("OCI runtime {}", other.unwrap_or("(the daemon's default)")),
            },
        ));
    }
    let mounts = hc.mounts.clone().unwrap_or_default();
    let tmpfs = hc.tmpfs.clone().unwrap_or_default();
    let bound = |target: &str, source: &Path, read_only: bool| {
        mounts.iter().any(|m| {
            m.target.as_deref() == Some(target)
                && m.source.as_deref() == source.to_str()
                && m.typ == Some(MountType::BIND)
                && m.read_only.unwrap_or(false) == read_only
        })
    };
    let read_only_tmpfs = |target: &str| {
        tmpfs
            .get(target)
            .is_some_and(|o| o.split(',').any(|f| f == "ro"))
    };
    let fsize = hc
        .ulimits
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|u| u.name.as_deref() == Some("fsize"));
    let workspace_bound = bound("/workspace", &expected.workspace_source, false);
    checks.push((
        "workspace-nosuid",
        workspace_bound && expected.workspace_nosuid.is_ok(),
        match &expected.workspace_nosuid {
            Ok(()) => format!(
                "/workspace bound from {} (nosuid,nodev, read back from the host kernel)",
                expected.workspace_source.display()
            ),
            Err(why) => format!("/workspace without nosuid,nodev: {why}"),
        },
    ));
    if expected.idmapped {
        checks.push((
            "workspace-idmap",
            workspace_bound && expected.workspace_nosuid.is_ok(),
            format!(
                "root-owned workspace idmapped: its owner appears as {} inside, files the step creates belong to root on disk",
                expected.user
            ),
        ));
    }
    checks.push((
        "cgroup-namespace",
        hc.cgroupns_mode == Some(HostConfigCgroupnsModeEnum::PRIVATE),
        format!(
            "cgroupns mode {}",
            hc.cgroupns_mode
                .map(|m| m.to_string())
                .unwrap_or_else(|| "host (daemon default)".into())
        ),
    ));
    checks.push((
        "ipc",
        hc.ipc_mode.as_deref() == Some("none"),
        format!(
            "ipc mode {} (private IPC namespace, no /dev/shm)",
            hc.ipc_mode.clone().unwrap_or_default()
        ),
    ));
    checks.push((
        "mqueue-readonly",
        read_only_tmpfs("/dev/mqueue"),
        format!("/dev/mqueue tmpfs {MQUEUE_OPTIONS}"),
    ));
    checks.push((
        "file-size",
        fsize
            .as_ref()
            .is_some_and(|u| u.soft == Some(expected.fsize) && u.hard == Some(expected.fsize)),
        match fsize.and_then(|u| u.hard) {
            Some(-1) => "RLIMIT_FSIZE unlimited (no write budget)".to_string(),
            Some(bytes) => {
                format!("RLIMIT_FSIZE {bytes} bytes (the write budget bounds any one file)")
            }
            None => "RLIMIT_FSIZE not set".to_string(),
        },
    ));
    if !expected.masked.is_empty() {
        checks.push((
            "state-dir-masked",
            expected.masked.iter().all(|(target, cover)| {
                cover.as_ref().is_ok_and(|cover| bound(target, cover, true))
            }),
            expected
                .masked
                .iter()
                .map(|(target, cover)| match cover {
                    Ok(cover) => format!("{target} covered by {} (read-only)", cover.display()),
                    Err(why) => format!("{target} not covered: {why}"),
                })
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    if !expected.read_only.is_empty() {
        checks.push((
            "read-only-paths",
            expected
                .read_only
                .iter()
                .all(|p| bound(&p.to_string_lossy(), p, true)),
            format!(
                "{} bound read-only",
                expected
                    .read_only
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut layers = Vec::new();
    let mut missing = Vec::new();
    for (name, active, detail) in checks {
        if !active {
            missing.push(format!("{name}: the daemon reports {detail}"));
        }
        layers.push(Layer {
            name: name.into(),
            active,
            detail,
        });
    }
    (layers, missing)
}

enum Ended {
    Exited(i64),
    DiskBudget,
    TimedOut,
    Cancelled,
    Lost(String),
}

#[async_trait::async_trait]
impl Sandbox for DockerSandbox {
    fn name(&self) -> &'static str {
        NAME
    }

    fn isolated(&self) -> bool {
        true
    }

    async fn flush(&self) {
        let tracker = removals();
        tracker.close();
        tracker.wait().await;
        tracker.reopen();
    }

    async fn run(
        &self,
        spec: &ExecSpec,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        crate::require_argv(spec)?;
        check_network_mode_var()?;
        let start = Instant::now();
        let docker = client().await?;
        let workspace = std::fs::canonicalize(&spec.workspace)?;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.default_image.clone());
        let profile = profile::repository_profile().map_err(unavailable)?;
        let plan = plan(&workspace)?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("secureclaw-step-{}-{n}", std::process::id());
        // Named after the engine (pid and start time) so that the next engine can tell the
        // mounts of a dead one from those of a live one.
        let mount_name = format!("{}-{n}", engine_id().replace(':', "-"));
        let (prepared, not_prepared) =
            prepare_workspace(&workspace, &plan, self.runtime.as_deref(), &mount_name)?;
        let (uid, gid) = plan.user;

        let mut spec = spec.clone();
        let egress = match &spec.network {
            NetworkPolicy::None => None,
            NetworkPolicy::Domains(_) if self.runtime.as_deref() == Some("runsc") => {
                return Err(SandboxError::Unsupported {
                    backend: NAME.into(),
                    feature: format!(
                        "network egress (`network:` allow-lists) with {RUNTIME_VAR}=runsc: gVisor's network stack cannot share the egress proxy's namespace; run steps that need the network with the default runtime"
                    ),
                });
            }
            NetworkPolicy::Domains(domains) => {
                let holder = egress::Holder::start(docker, &self.default_image, profile).await?;
                let session = match holder.proxy(domains, &self.egress_pins).await {
                    Ok(s) => s,
                    Err(e) => {
                        holder.remove().await;
                        return Err(e);
                    }
                };
                crate::egress::set_proxy_env(&mut spec.env);
                Some((holder, session))
            }
        };
        let expected = Expected {
            user: format!("{uid}:{gid}"),
            network_mode: match &egress {
                Some((holder, _)) => format!("container:{}", holder.id()),
                None => "none".into(),
            },
            memory: i64::try_from(spec.limits.memory_bytes).unwrap_or(i64::MAX),
            nano_cpus: (spec.limits.cpus * 1e9).round() as i64,
            pids: i64::from(spec.limits.pids),
            // Docker's -1 is RLIM_INFINITY.
            fsize: spec
                .limits
                .file_size_limit()
                .map_or(-1, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
            workspace_source: prepared
                .as_ref()
                .map(|p| p.path().to_path_buf())
                .unwrap_or_else(|| workspace.clone()),
            workspace_nosuid: match (&prepared, not_prepared) {
                (Some(p), _) if p.nosuid_nodev() => Ok(()),
                (Some(p), _) => Err(format!(
                    "the kernel does not report {} as nosuid,nodev",
                    p.path().display()
                )),
                (None, why) => Err(why.unwrap_or_default()),
            },
            idmapped: prepared.as_ref().is_some_and(|p| p.idmapped()),
            masked: crate::masked_relative(&spec, &workspace)
                .iter()
                .map(|rel| {
                    let cover = if workspace.join(rel).is_dir() {
                        workspace::empty_dir()
                    } else {
                        workspace::empty_file()
                    };
                    (format!("/workspace/{}", rel.display()), cover)
                })
                .collect(),
            read_only: spec.read_only.clone(),
            runtime: self.runtime.clone(),
        };
        let result = self
            .run_container(
                docker, &name, &spec, &workspace, &image, &expected, profile, cancel,
            )
            .await;
        // The container has ended: its own copy of the mount lives in its namespace until the
        // daemon removes it; the host's copy goes now.
        drop(prepared);
        let events = match egress {
            Some((holder, session)) => {
                let events = session.finish().await;
                holder.remove().await;
                events
            }
            None => Vec::new(),
        };
        let mut outcome = result?;
        outcome.duration = start.elapsed();
        outcome.egress = events;
        Ok(outcome)
    }
}

impl DockerSandbox {
    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        &self,
        docker: &'static Docker,
        name: &str,
        spec: &ExecSpec,
        workspace: &Path,
        image: &str,
        expected: &Expected,
        profile: &str,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let body = container_body(spec, workspace, image, expected, profile);
        let mut trace = Trace::new();
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(name).build()),
                body,
            )
            .await
            .map_err(|e| match &expected.runtime {
                Some(runtime) if e.to_string().contains("runtime") => unavailable(format!(
                    "{RUNTIME_VAR}={runtime}: the daemon refused the runtime ({e}); register it in /etc/docker/daemon.json `runtimes` (for gVisor: `runsc install`) and reload dockerd (SIGHUP)"
                )),
                _ => docker_error(&format!("create a container from image `{image}`"), e),
            })?;
        let removal = Removal {
            docker,
            id: Some(created.id.clone()),
        };
        let id = created.id.as_str();

        trace.mark("create");
        let inspected = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| docker_error("inspect the step's container", e))?;
        trace.mark("inspect");
        let (mut layers, missing) = layers_from_inspect(&inspected, expected, profile);
        if !missing.is_empty() && !spec.allow_degraded {
            removal.now().await;
            return Err(SandboxError::degraded(NAME, missing, layers));
        }

        let attached = docker
            .attach_container(
                id,
                Some(
                    AttachContainerOptionsBuilder::default()
                        .stream(true)
                        .stdout(true)
                        .stderr(true)
                        .build(),
                ),
            )
            .await
            .map_err(|e| docker_error("attach to the step's container", e))?;
        let cap = spec.limits.output_cap;
        let (out, err) = (SharedOutput::default(), SharedOutput::default());
        let reader = tokio::spawn(read_streams(attached.output, cap, out.clone(), err.clone()));
        trace.mark("attach");

        // The baseline of the write budget, taken before the step can write.
        let disk = crate::budget::DiskWatch::start(
            workspace,
            crate::masked_relative(spec, workspace),
            spec.limits.disk_bytes,
        )
        .await
        .ok();
        if let Some(disk) = &disk {
            disk.watch_processes(container_cgroup_files(id, "cgroup.procs"));
        }
        let mut pids = PidsEvents::new(id);
        docker
            .start_container(id, None)
            .await
            .map_err(|e| docker_error("start the step's container", e))?;
        trace.mark("start");
        let ended = {
            let mut wait = docker.wait_container(id, None);
            let deadline = tokio::time::sleep(spec.limits.timeout);
            tokio::pin!(deadline);
            let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
            sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let over_budget = crate::budget::reached(disk.as_ref(), SAMPLE_INTERVAL);
            tokio::pin!(over_budget);
            loop {
                tokio::select! {
                    item = wait.next() => break match item {
                        Some(Ok(r)) => Ended::Exited(r.status_code),
                        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                            Ended::Exited(code)
                        }
                        Some(Err(e)) => Ended::Lost(e.to_string()),
                        None => Ended::Lost("the daemon closed the wait stream".into()),
                    },
                    _ = &mut deadline => break Ended::TimedOut,
                    _ = cancel.cancelled() => break Ended::Cancelled,
                    _ = &mut over_budget => break Ended::DiskBudget,
                    _ = sample.tick() => pids.sample(),
                }
            }
        };
        if !matches!(ended, Ended::Exited(_)) {
            let _ = docker
                .kill_container(
                    id,
                    Some(
                        KillContainerOptionsBuilder::default()
                            .signal("KILL")
                            .build(),
                    ),
                )
                .await;
        }
        trace.mark("wait");
        // Usually gone with the container by now; a step that ended between two samples is
        // read here if the cgroup is still there, else found in the kernel log.
        pids.sample();
        pids.finish();
        let oom = match ended {
            Ended::Exited(code) if code != 0 => docker
                .inspect_container(id, None)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.oom_killed)
                .unwrap_or(false),
            _ => false,
        };
        removal.soon();
        let trace = trace.report();
        crate::capture::drain(reader).await;
        let (out, err) = (out.take(), err.take());
        let exit = match ended {
            Ended::Exited(code) => {
                // A last sample, for a step that exited (the other endings are final).
                let over_budget = crate::budget::exceeded(disk.as_ref()).await;
                crate::container_exit(i32::try_from(code).unwrap_or(-1), oom, over_budget)
            }
            Ended::DiskBudget => ExitReason::DiskBudget,
            Ended::TimedOut => ExitReason::TimedOut,
            Ended::Cancelled => ExitReason::Cancelled,
            Ended::Lost(reason) => return Err(unavailable(format!("lost the step: {reason}"))),
        };
        layers.push(Layer {
            name: "wall-clock".into(),
            active: true,
            detail: format!("{:?}", spec.limits.timeout),
        });
        layers.push(Layer {
            name: "write-budget".into(),
            active: disk.is_some() && spec.limits.has_write_budget(),
            detail: spec.limits.write_budget_detail(&format!(
                "the workspace's growth and the container's unlinked open files, sampled every {SAMPLE_INTERVAL:?} or more"
            )),
        });
        // `run` sets the duration: it also covers the egress holder.
        let mut outcome = ExecOutcome::new(
            exit,
            out,
            err,
            Duration::ZERO,
            EnforcementReport::isolated(NAME, layers, missing),
        );
        outcome.trace = trace;
        if let Some(refused) = pids.refused() {
            outcome.warnings.push(format!(
                "pids limit reached: the kernel refused {refused} fork(s) at the limit of {} processes",
                spec.limits.pids
            ));
        }
        Ok(outcome)
    }
}

/// How often a running step's write budget and pids events are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// A file of the container's cgroup, under each of the daemon's usual layouts (cgroupfs or
/// systemd driver, cgroup v1 through the pids hierarchy, or v2); at most one exists.
fn container_cgroup_files(id: &str, file: &str) -> Vec<PathBuf> {
    ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .flat_map(|root| {
            [
                format!("{root}/docker/{id}/{file}"),
                format!("{root}/system.slice/docker-{id}.scope/{file}"),
            ]
        })
        .map(PathBuf::from)
        .collect()
}

/// Forks the pids limit refused. The container's cgroup goes away with the container (before
/// the wait returns), so its `pids.events` counter is sampled while the step runs; a step that
/// hits the limit and ends between two samples is caught by the kernel's own record of it (a
/// root engine reads the kernel log from where it stood at the start of the step: "fork
/// rejected by pids controller in .../<container id>", logged once per cgroup).
struct PidsEvents {
    id: String,
    candidates: Vec<PathBuf>,
    found: Option<PathBuf>,
    max: u64,
    kmsg: Option<std::os::fd::OwnedFd>,
    logged: bool,
}

impl PidsEvents {
    /// The container's cgroup under the daemon's usual layouts (cgroupfs or systemd driver,
    /// cgroup v1 or v2). Call before the container starts (the kernel log position).
    fn new(id: &str) -> Self {
        use rustix::fs::{Mode, OFlags};
        let kmsg = rustix::fs::open(
            "/dev/kmsg",
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .filter(|fd| rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)).is_ok());
        PidsEvents {
            id: id.to_string(),
            candidates: container_cgroup_files(id, "pids.events"),
            found: None,
            max: 0,
            kmsg,
            logged: false,
        }
    }

    fn sample(&mut self) {
        let read = |p: &Path| -> Option<u64> {
            let text = std::fs::read_to_string(p).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("max "))
                .and_then(|n| n.trim().parse().ok())
        };
        if self.found.is_none() {
            self.found = self.candidates.iter().find(|p| read(p).is_some()).cloned();
        }
        if let Some(n) = self.found.as_deref().and_then(read) {
            self.max = self.max.max(n);
        }
    }

    /// After the container ended: the kernel log records since the start.
    fn finish(&mut self) {
        let Some(fd) = &self.kmsg else { return };
        let mut buf = vec![0u8; 8192];
        // One record per read; EAGAIN at the end, EPIPE when a record was overwritten
        // (skipped). Bounded: the log is a ring buffer.
        for _ in 0..100_000 {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let record = String::from_utf8_lossy(&buf[..n]);
                    if record.contains("fork rejected by pids controller")
                        && record.contains(&self.id)
                    {
                        self.logged = true;
                    }
                }
                Err(rustix::io::Errno::PIPE) => continue,
                Err(_) => break,
            }
        }
    }

    /// How many forks were refused, when any were.
    fn refused(&self) -> Option<String> {
        match (self.max, self.logged) {
            (0, false) => None,
            (0, true) => Some("at least one".into()),
            (n, _) => Some(n.to_string()),
        }
    }
}

/// Phase timings of one step for `SECURECLAW_SANDBOX_TRACE=1` (returned in
/// [`ExecOutcome::trace`]), as in the native backend.
struct Trace {
    on: bool,
    last: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Trace {
    fn new() -> Self {
        Trace {
            on: std::env::var_os("SECURECLAW_SANDBOX_TRACE").is_some(),
            last: Instant::now(),
            marks: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        if self.on {
            self.marks.push((phase, self.last.elapsed()));
            self.last = Instant::now();
        }
    }

    /// The one-line report, when tracing is on.
    fn report(&self) -> Option<String> {
        self.on.then(|| {
            let parts: Vec<String> = self
                .marks
                .iter()
                .map(|(p, d)| format!("{p}={}us", d.as_micros()))
                .collect();
            format!("docker trace: {}", parts.join(" "))
        })
    }
}

/// Split the attach stream into stdout and stderr, keeping `cap` bytes of each and counting
/// the rest.
async fn read_streams(
    mut stream: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    cap: usize,
    out: SharedOutput,
    err: SharedOutput,
) {
    while let Some(Ok(chunk)) = stream.next().await {
        let (target, bytes) = match chunk {
            bollard::container::LogOutput::StdOut { message } => (&out, message),
            bollard::container::LogOutput::StdErr { message } => (&err, message),
            bollard::container::LogOutput::Console { message } => (&out, message),
            bollard::container::LogOutput::StdIn { .. } => continue,
        };
        target.push(&bytes, cap);
    }
}

mod egress {
    //! Egress for containers: the step container joins the network namespace of a small
    //! "holder" container (network mode `none`, same hardening), in which the engine has
    //! opened the proxy's listening socket before the step starts. The step therefore has
    //! loopback only, and its one way out is the proxy on 127.0.0.1:3128.

    use std::collections::HashMap;
    use std::os::fd::OwnedFd;

    use bollard::Docker;
    use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
    use bollard::query_parameters::CreateContainerOptionsBuilder;

    use super::{ENGINE_LABEL, docker_error, engine_id, unavailable};
    use crate::SandboxError;
    use crate::egress::EgressSession;

    pub struct Holder {
        docker: &'static Docker,
        id: String,
        /// Removes the holder if the step's future is dropped before `remove`.
        removal: super::Removal,
    }

    impl Holder {
        pub async fn start(
            docker: &'static Docker,
            image: &str,
            profile: &str,
        ) -> Result<Holder, SandboxError> {
            let body = ContainerCreateBody {
                image: Some(image.into()),
                entrypoint: Some(vec!["/bin/sleep".into()]),
                cmd: Some(vec!["86400".into()]),
                user: Some(format!(
                    "{}:{}",
                    super::DEFAULT_USER.0,
                    super::DEFAULT_USER.1
                )),
                labels: Some(HashMap::from([(ENGINE_LABEL.to_string(), engine_id())])),
                host_config: Some(HostConfig {
                    cap_drop: Some(vec!["ALL".into()]),
                    security_opt: Some(vec![
                        "no-new-privileges:true".into(),
                        format!("seccomp={profile}"),
                    ]),
                    readonly_rootfs: Some(true),
                    network_mode: Some("none".into()),
                    memory: Some(16 * 1024 * 1024),
                    pids_limit: Some(4),
                    log_config: Some(HostConfigLogConfig {
                        typ: Some("none".into()),
                        config: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let name = format!(
                "secureclaw-net-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let created = docker
                .create_container(
                    Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                    body,
                )
                .await
                .map_err(|e| {
                    docker_error(
                        &format!("create the network holder from `{image}` (egress needs the secureclaw sandbox image)"),
                        e,
                    )
                })?;
            let holder = Holder {
                docker,
                removal: super::Removal {
                    docker,
                    id: Some(created.id.clone()),
                },
                id: created.id,
            };
            if let Err(e) = docker.start_container(&holder.id, None).await {
                holder.remove().await;
                return Err(docker_error("start the network holder", e));
            }
            Ok(holder)
        }

        pub fn id(&self) -> &str {
            &self.id
        }

        fn netns(&self, pid: i64) -> Result<OwnedFd, SandboxError> {
            std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .map(OwnedFd::from)
                .map_err(|e| {
                    unavailable(format!(
                        "cannot open the holder's network namespace: {e} (egress with docker needs the engine on the Docker host, as root)"
                    ))
                })
        }

        pub async fn proxy(
            &self,
            domains: &[String],
            pins: &crate::egress::Pins,
        ) -> Result<EgressSession, SandboxError> {
            let inspected = self
                .docker
                .inspect_container(&self.id, None)
                .await
                .map_err(|e| docker_error("inspect the network holder", e))?;
            let pid = inspected
                .state
                .and_then(|s| s.pid)
                .filter(|p| *p > 0)
                .ok_or_else(|| unavailable("the network holder is not running".into()))?;
            let netns = self.netns(pid)?;
            EgressSession::start_in(&netns, domains, pins).await
        }

        pub async fn remove(self) {
            self.removal.now().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn engine_ids_identify_live_processes_only() {
        assert!(engine_alive(&engine_id()));
        assert!(!engine_alive("999999999:1"));
        let me = std::process::id();
        assert!(!engine_alive(&format!("{me}:1")), "pid reuse is detected");
        assert!(!engine_alive("garbage"));
    }

    #[test]
    fn the_daemon_dropping_a_layer_is_reported() {
        let expected = Expected {
            user: "1000:1000".into(),
            network_mode: "none".into(),
            memory: 512 << 20,
            nano_cpus: 1_000_000_000,
            pids: 128,
            fsize: 1 << 30,
            workspace_source: "/tmp".into(),
            workspace_nosuid: Ok(()),
            idmapped: false,
            masked: vec![(
                "/workspace/.secureclaw".into(),
                Ok("/run/secureclaw/empty".into()),
            )],
            read_only: Vec::new(),
            runtime: None,
        };
        let spec = ExecSpec::shell("true", "/tmp".into());
        let profile = "{\"defaultAction\":\"SCMP_ACT_ERRNO\"}";
        let body = container_body(&spec, Path::new("/tmp"), "img", &expected, profile);
        let as_inspected = |hc: HostConfig| ContainerInspectResponse {
            host_config: Some(hc),
            config: Some(bollard::models::ContainerConfig {
                user: body.user.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let good = as_inspected(body.host_config.clone().unwrap());
        let (_, missing) = layers_from_inspect(&good, &expected, profile);
        assert!(missing.is_empty(), "{missing:?}");

        // DOCKER_RUNTIME=runsc asked for and the daemon running the container under runc.
        let under_gvisor = Expected {
            runtime: Some("runsc".into()),
            ..expected_like(&expected)
        };
        let body_runsc = container_body(&spec, Path::new("/tmp"), "img", &under_gvisor, profile);
        assert_eq!(
            body_runsc.host_config.as_ref().unwrap().runtime.as_deref(),
            Some("runsc")
        );
        let (layers, missing) = layers_from_inspect(
            &as_inspected(body_runsc.host_config.clone().unwrap()),
            &under_gvisor,
            profile,
        );
        assert!(missing.is_empty(), "{missing:?}");
        assert!(layers.iter().any(|l| l.name == "runtime" && l.active));
        let mut hc = body_runsc.host_config.clone().unwrap();
        hc.runtime = Some("runc".into());
        let (_, missing) = layers_from_inspect(&as_inspected(hc), &under_gvisor, profile);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("runtime:"), "{missing:?}");

        // Another default-deny profile is not ours (it could allow ptrace): refused too.
        let mut hc = body.host_config.clone().unwrap();
        hc.security_opt = Some(vec![
            "no-new-privileges:true".into(),
            "seccomp={\"defaultAction\":\"SCMP_ACT_ERRNO\",\"syscalls\":[]}".into(),
        ]);
        let (_, missing) = layers_from_inspect(&as_inspected(hc), &expected, profile);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("seccomp:"), "{missing:?}");

        let mut hc = body.host_config.clone().unwrap();
        hc.security_opt = Some(vec!["seccomp=unconfined".into()]);
        hc.readonly_rootfs = Some(false);
        hc.cap_add = Some(vec!["SYS_ADMIN".into()]);
        hc.network_mode = Some("bridge".into());
        let (_, missing) = layers_from_inspect(&as_inspected(hc), &expected, profile);
        let names: Vec<&str> = missing
            .iter()
            .map(|m| m.split(':').next().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![
                "capabilities",
                "seccomp",
                "no-new-privileges",
                "read-only-rootfs",
                "network"
            ]
        );

        // The layers the container probes asked for: each one the daemon drops is a refusal.
        let mut hc = body.host_config.clone().unwrap();
        hc.cgroupns_mode = Some(HostConfigCgroupnsModeEnum::HOST);
        hc.ipc_mode = Some("private".into());
        hc.ulimits = None;
        hc.tmpfs.as_mut().unwrap().remove("/dev/mqueue");
        // The workspace bound straight from the host path (no nosuid,nodev), the state dir
        // not covered.
        hc.mounts = Some(vec![bind(Path::new("/elsewhere"), "/workspace", false)]);
        let (_, missing) = layers_from_inspect(&as_inspected(hc), &expected, profile);
        let names: Vec<&str> = missing
            .iter()
            .map(|m| m.split(':').next().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![
                "workspace-nosuid",
                "cgroup-namespace",
                "ipc",
                "mqueue-readonly",
                "file-size",
                "state-dir-masked"
            ]
        );

        // A prepared mount the kernel does not report nosuid,nodev is refused too, and so is
        // a file-size limit other than the budget.
        let not_nosuid = Expected {
            workspace_nosuid: Err("the kernel does not report it".into()),
            ..expected_like(&expected)
        };
        let mut hc = body.host_config.clone().unwrap();
        hc.ulimits = Some(vec![ResourcesUlimits {
            name: Some("fsize".into()),
            soft: Some(-1),
            hard: Some(-1),
        }]);
        let (_, missing) = layers_from_inspect(&as_inspected(hc), &not_nosuid, profile);
        let names: Vec<&str> = missing
            .iter()
            .map(|m| m.split(':').next().unwrap())
            .collect();
        assert_eq!(names, vec!["workspace-nosuid", "file-size"]);
    }

    fn expected_like(e: &Expected) -> Expected {
        Expected {
            user: e.user.clone(),
            network_mode: e.network_mode.clone(),
            memory: e.memory,
            nano_cpus: e.nano_cpus,
            pids: e.pids,
            fsize: e.fsize,
            workspace_source: e.workspace_source.clone(),
            workspace_nosuid: e.workspace_nosuid.clone(),
            idmapped: e.idmapped,
            masked: e.masked.clone(),
            read_only: e.read_only.clone(),
            runtime: e.runtime.clone(),
        }
    }

    #[test]
    fn a_prepared_workspace_mount_is_nosuid_nodev_and_goes_away() {
        // Preparing mounts needs root, like every docker test here.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let name = format!("{}-unit-test", engine_id().replace(':', "-"));
        let prepared = workspace::prepare(dir.path(), None, &name).unwrap();
        assert!(prepared.nosuid_nodev());
        assert_eq!(
            std::fs::read_to_string(prepared.path().join("f")).unwrap(),
            "x"
        );
        let path = prepared.path().to_path_buf();
        drop(prepared);
        assert!(!path.exists(), "the prepared mount was left behind");
    }
}
