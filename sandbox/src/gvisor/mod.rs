//! The `gvisor` backend: each step runs under gVisor's `runsc`, a kernel in user space, from an
//! OCI bundle the engine writes (`bundle.rs`).
//!
//! The native backend lets the step's allowed system calls reach the host kernel; here they
//! reach gVisor's Sentry, which serves them itself and uses a small set of host calls under its
//! own seccomp filter. A kernel bug in a system call the step makes is then a bug in the Sentry,
//! not an escape. The cost is a slower start (a Sentry per step) and gVisor's compatibility.
//!
//! Engine side: the workspace is prepared as for the docker backend (a `nosuid,nodev` mount,
//! idmapped for a root-owned workspace); the sandbox's cgroup is created by the engine with the
//! step's memory and CPU limits (the process limit is `RLIMIT_NPROC` inside gVisor, since the
//! Sentry's own threads count against a host pids limit); `runsc run` is the step; on timeout,
//! cancellation or the write budget the sandbox is killed and deleted; the OOM counter of the
//! cgroup says whether memory ended it.

#![allow(unsafe_code)] // one prctl between fork and exec (parent-death signal); its block says why it is sound

mod bundle;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::capture::{capture_in_background, collect};
use crate::docker::workspace;
use crate::native::cgroup;
use crate::{
    EnforcementReport, ExecOutcome, ExecSpec, ExitReason, Layer, Limits, NetworkPolicy, Sandbox,
    SandboxError,
};

pub const NAME: &str = "gvisor";

/// Where runsc keeps the state of running sandboxes and the engine its bundles (root-only).
pub const STATE_ROOT: &str = "/run/secureclaw/gvisor";

/// The runsc binary (default: `runsc` on `PATH`).
pub const RUNSC_VAR: &str = "SECURECLAW_RUNSC";
/// The gVisor platform: how the Sentry intercepts the step's system calls.
pub const PLATFORM_VAR: &str = "SECURECLAW_GVISOR_PLATFORM";
/// `ptrace` works on any host, inside a VM too (`kvm` needs nested virtualisation and hangs in
/// many VMs; `systrap` is the faster default of runsc releases from mid-2023 on).
pub const DEFAULT_PLATFORM: &str = "ptrace";
pub const PLATFORMS: &[&str] = &["ptrace", "systrap", "kvm"];

/// The host cgroup's pids limit is only a backstop (the step's own limit is `RLIMIT_NPROC`,
/// enforced inside gVisor): on `ptrace` every guest task is a host thread of a stub process and
/// has a Sentry thread tracing it, and the Sentry's Go runtime starts more threads under load.
/// A Sentry that cannot start a thread dies (`fatal error: newosproc`), so the backstop is
/// generous: four host tasks per guest task plus this many for the runtime itself.
const RUNTIME_TASKS: u32 = 512;

/// The host pids limit of a sandbox whose step may have `pids` processes.
fn host_pids(pids: u32) -> u32 {
    pids.saturating_mul(4).saturating_add(RUNTIME_TASKS)
}

/// How often the write budget is sampled while a step runs.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// Exit status runsc gives when it fails itself (not the step).
const RUNSC_FAILED: i32 = 128;

/// The gVisor sandbox backend.
#[derive(Debug, Clone)]
pub struct GvisorSandbox {
    runsc: PathBuf,
    platform: String,
}

fn unavailable(reason: impl Into<String>) -> SandboxError {
    SandboxError::Unavailable {
        backend: NAME.into(),
        reason: reason.into(),
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

impl GvisorSandbox {
    /// The backend as the environment configures it ([`RUNSC_VAR`], [`PLATFORM_VAR`]).
    pub fn new() -> Result<Self, SandboxError> {
        let runsc = match std::env::var_os(RUNSC_VAR) {
            Some(p) => PathBuf::from(p),
            None => find_on_path("runsc").ok_or_else(|| {
                unavailable(format!(
                    "runsc is not installed (Debian: `apt-get install runsc`; a current release from gvisor.dev is better), or set {RUNSC_VAR}"
                ))
            })?,
        };
        if !runsc.is_file() {
            return Err(unavailable(format!(
                "{RUNSC_VAR}={}: no such file",
                runsc.display()
            )));
        }
        let platform = std::env::var(PLATFORM_VAR).unwrap_or_else(|_| DEFAULT_PLATFORM.to_string());
        Self::with(runsc, &platform)
    }

    /// A backend running `runsc` on `platform`.
    pub fn with(runsc: PathBuf, platform: &str) -> Result<Self, SandboxError> {
        if !PLATFORMS.contains(&platform) {
            return Err(unavailable(format!(
                "{PLATFORM_VAR}={platform:?}: unknown platform (known: {})",
                PLATFORMS.join(", ")
            )));
        }
        Ok(GvisorSandbox {
            runsc,
            platform: platform.to_string(),
        })
    }

    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// `runsc --version`'s first line.
    pub fn version(&self) -> String {
        static VERSION: OnceLock<String> = OnceLock::new();
        VERSION
            .get_or_init(|| {
                std::process::Command::new(&self.runsc)
                    .arg("--version")
                    .output()
                    .ok()
                    .and_then(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .next()
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| "runsc (version unknown)".into())
            })
            .clone()
    }

    fn runsc(&self) -> Command {
        let mut cmd = Command::new(&self.runsc);
        cmd.arg("--root").arg(state_dir());
        cmd
    }

    /// Kill and delete the sandbox `id`; quiet when it is already gone.
    async fn destroy(&self, id: &str) {
        let _ = self
            .runsc()
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

fn state_dir() -> PathBuf {
    Path::new(STATE_ROOT).join("state")
}

fn bundles_dir() -> PathBuf {
    Path::new(STATE_ROOT).join("bundles")
}

/// The cgroup layout, detected and prepared once per process.
fn cgroups() -> &'static (cgroup::Layout, Vec<String>) {
    static CELL: OnceLock<(cgroup::Layout, Vec<String>)> = OnceLock::new();
    CELL.get_or_init(|| {
        let layout = cgroup::Layout::detect();
        let (_, missing) = layout.prepare();
        (layout, missing)
    })
}

/// A sandbox id that names its engine (pid and start time) so that the next engine can tell
/// the leftovers of a dead one from those of a live one.
fn sandbox_id(n: u64) -> String {
    format!(
        "secureclaw-{}-{n}",
        crate::docker::engine_id().replace(':', "-")
    )
}

/// The engine id in a sandbox id made by [`sandbox_id`].
fn owner_of(id: &str) -> Option<String> {
    let mut parts = id.strip_prefix("secureclaw-")?.splitn(3, '-');
    Some(format!("{}:{}", parts.next()?, parts.next()?))
}

enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut,
    Cancelled,
    DiskBudget,
}

#[async_trait]
impl Sandbox for GvisorSandbox {
    fn name(&self) -> &'static str {
        NAME
    }

    fn isolated(&self) -> bool {
        true
    }

    async fn flush(&self) {
        let _ = tokio::task::spawn_blocking(cgroup::drain).await;
    }

    async fn run(
        &self,
        spec: &ExecSpec,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        crate::require_argv(spec)?;
        if let NetworkPolicy::Domains(_) = spec.network {
            return Err(SandboxError::Unsupported {
                backend: NAME.into(),
                feature: "network egress (`network:` allow-lists): gVisor steps run with `--network=none`; run steps that need the network on `native` or `docker`".into(),
            });
        }
        if !crate::docker::is_root() {
            return Err(unavailable(
                "runsc needs root to create the sandbox (run the engine as root, or use `native`)",
            ));
        }
        let start = Instant::now();
        let workspace = std::fs::canonicalize(&spec.workspace)?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = sandbox_id(n);

        let mut layers = Vec::new();
        let mut missing = Vec::new();
        let plan = crate::docker::plan(&workspace)?;
        // Named like the docker backend's prepared mounts (`<pid>-<start>-...`), so that either
        // backend's sweep tells a dead engine's mount from a live one.
        let mount_name = format!("{}-g{n}", crate::docker::engine_id().replace(':', "-"));
        let prepared = match workspace::prepare_mapped(&workspace, plan.idmap, true, &mount_name) {
            Ok(p) => Some(p),
            Err(e) if plan.idmap.is_some() => {
                return Err(SandboxError::Unsupported {
                    backend: NAME.into(),
                    feature: format!(
                        "a root-owned workspace ({}): {e}. The step runs as 1000:1000 and could not write to it. Fix: `chown -R 1000:1000 {}`, or use a filesystem with idmapped mounts (ext4, xfs, btrfs, tmpfs), or `--sandbox native`",
                        workspace.display(),
                        workspace.display()
                    ),
                });
            }
            Err(e) => {
                missing.push(format!("workspace-nosuid: {e}"));
                None
            }
        };
        if let Some(p) = &prepared {
            let detail = if p.idmapped() {
                "nosuid,nodev; idmapped: the root-owned workspace shows as the step's uid"
            } else {
                "nosuid,nodev"
            };
            layers.push(layer("workspace-nosuid", p.nosuid_nodev(), detail));
        }
        let source = prepared
            .as_ref()
            .map(|p| p.path().to_path_buf())
            .unwrap_or_else(|| workspace.clone());

        let (layout, cgroup_missing) = cgroups();
        missing.extend(cgroup_missing.iter().cloned());
        let host_limits = Limits {
            pids: host_pids(spec.limits.pids),
            ..spec.limits.clone()
        };
        let guard = match cgroup::StepCgroup::create(layout, &host_limits) {
            Ok(cg) => Some(cg),
            Err(e) => {
                missing.push(format!("cgroups: cannot create the sandbox's cgroup: {e}"));
                None
            }
        };
        let guard = crate::native::CgroupGuard(guard);
        let cgroups_path = guard
            .0
            .as_ref()
            .and_then(|cg| cg.relative_path())
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(path) = &cgroups_path {
            layers.push(layer(
                "cgroups",
                true,
                format!(
                    "{path}: memory {} bytes (no swap), {} CPU, for the whole sandbox (Sentry, gofer and step)",
                    spec.limits.memory_bytes, spec.limits.cpus
                ),
            ));
        }

        let masked = crate::masked_relative(spec, &workspace)
            .iter()
            .filter_map(|rel| {
                let cover = if workspace.join(rel).is_dir() {
                    workspace::empty_dir()
                } else {
                    workspace::empty_file()
                };
                match cover {
                    Ok(cover) => Some((format!("/workspace/{}", rel.display()), cover)),
                    Err(e) => {
                        missing.push(format!("state-dir-masked: {e}"));
                        None
                    }
                }
            })
            .collect::<Vec<_>>();
        let env = crate::step_env(spec);
        let git_read_only = workspace.join(".git").is_dir();
        let bundle_spec = bundle::BundleSpec {
            argv: spec.argv.clone(),
            env,
            user: plan.user,
            workspace_source: source,
            git_read_only,
            masked: masked.clone(),
            read_only: spec.read_only.clone(),
            nproc: spec.limits.pids,
            // u64::MAX is RLIM_INFINITY.
            fsize: spec.limits.file_size_limit().unwrap_or(u64::MAX),
            cgroups_path,
            seccomp: Some(seccomp_profile()?),
        };
        let bundle_dir = bundles_dir().join(&id);
        let bundle = BundleDir(bundle_dir.clone());
        create_private_dir(&bundles_dir())?;
        create_private_dir(&state_dir())?;
        std::fs::create_dir(&bundle_dir)?;
        bundle::write(&bundle_dir, &bundle_spec)?;

        layers.extend(contract_layers(
            self,
            spec,
            plan.user,
            git_read_only,
            &masked,
        ));
        if !missing.is_empty() && !spec.allow_degraded {
            return Err(SandboxError::degraded(NAME, missing, layers));
        }

        let disk = crate::budget::DiskWatch::start(
            &workspace,
            crate::masked_relative(spec, &workspace),
            spec.limits.disk_bytes,
        )
        .await
        .ok();
        if let (Some(disk), Some(cg)) = (&disk, &guard.0) {
            // The Sentry and the gofer hold the host files the step opens.
            disk.watch_processes(cg.procs_files());
        }
        let mut command = self.runsc();
        // The sandbox dies with the engine: `runsc run` gets SIGKILL when the thread that
        // started it ends (a runtime worker thread, which lives as long as the engine), and
        // runsc's own sandbox and gofer processes die with it. A killed engine's bundle and
        // cgroup are then swept at the next start.
        // SAFETY: between fork and exec only prctl runs, which is async-signal-safe and
        // touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = command
            .arg(format!("--platform={}", self.platform))
            .arg("--network=none")
            .arg("--oci-seccomp")
            .arg("--log-format=json")
            .arg("--log")
            .arg(bundle_dir.join("runsc.log"))
            .args(["run", "--bundle"])
            .arg(&bundle_dir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SandboxError::Spawn {
                program: self.runsc.display().to_string(),
                source,
            })?;
        let cap = spec.limits.output_cap;
        let out = child.stdout.take().map(|s| capture_in_background(s, cap));
        let err = child.stderr.take().map(|s| capture_in_background(s, cap));

        let ended = {
            let over_budget = crate::budget::reached(disk.as_ref(), SAMPLE_INTERVAL);
            tokio::select! {
                status = child.wait() => Ended::Exited(status?),
                _ = tokio::time::sleep(spec.limits.timeout) => Ended::TimedOut,
                _ = cancel.cancelled() => Ended::Cancelled,
                _ = over_budget => Ended::DiskBudget,
            }
        };
        if !matches!(ended, Ended::Exited(_)) {
            // The whole sandbox goes: the Sentry, the gofer and every process of the step.
            self.destroy(&id).await;
            if let Some(cg) = &guard.0 {
                cg.kill_all();
            }
            let _ = child.kill().await;
        }
        self.destroy(&id).await;
        let oom = guard.0.as_ref().is_some_and(|cg| cg.oom_killed());
        // The backstop reached: the Sentry could not start a thread and died with the step.
        let host_pids_hit = guard.0.as_ref().is_some_and(|cg| cg.pids_limited());
        drop(guard);
        let (out, err) = (collect(out).await, collect(err).await);
        let runsc_error = runsc_error(&bundle_dir.join("runsc.log"));
        drop(bundle);
        drop(prepared);

        let exit = match ended {
            Ended::Exited(status) => {
                let code = status.code().unwrap_or(-1);
                if code == RUNSC_FAILED
                    && let Some(message) = runsc_error
                {
                    return Err(unavailable(format!("runsc failed: {message}")));
                }
                if code != 0 && !oom && host_pids_hit {
                    ExitReason::PidsLimit
                } else {
                    // A last sample, for a step that exited (the other endings are final).
                    let over_budget = crate::budget::exceeded(disk.as_ref()).await;
                    crate::container_exit(code, oom, over_budget)
                }
            }
            Ended::TimedOut => ExitReason::TimedOut,
            Ended::Cancelled => ExitReason::Cancelled,
            Ended::DiskBudget => ExitReason::DiskBudget,
        };
        layers.push(layer(
            "wall-clock",
            true,
            format!("{:?}", spec.limits.timeout),
        ));
        layers.push(layer(
            "write-budget",
            disk.is_some() && spec.limits.has_write_budget(),
            spec.limits.write_budget_detail(&format!(
                "the workspace's growth and the sandbox's unlinked open files, sampled every {SAMPLE_INTERVAL:?} or more; RLIMIT_FSIZE at the same size"
            )),
        ));
        Ok(ExecOutcome::new(
            exit,
            out,
            err,
            start.elapsed(),
            EnforcementReport::isolated(NAME, layers, missing),
        ))
    }
}

/// The native backend's reviewed seccomp policy (`sandbox/policy/seccomp.toml`) in OCI form,
/// parsed once per process. gVisor applies it to the step inside the sandbox (`--oci-seccomp`):
/// the step is refused the same calls as on the other backends (setuid modes, file
/// capabilities, namespaces), and what it may call is then served by the Sentry.
fn seccomp_profile() -> Result<serde_json::Value, SandboxError> {
    static CELL: OnceLock<Result<serde_json::Value, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let policy = crate::native::policy::Policy::parse(crate::native::policy::POLICY_TOML)
            .map_err(|e| e.to_string())?;
        crate::docker::profile::docker_profile(&policy).map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|e| unavailable(format!("the seccomp policy: {e}")))
}

fn layer(name: &str, active: bool, detail: impl Into<String>) -> Layer {
    Layer {
        name: name.into(),
        active,
        detail: detail.into(),
    }
}

/// The layers the bundle itself sets up, as written into its `config.json`.
fn contract_layers(
    sandbox: &GvisorSandbox,
    spec: &ExecSpec,
    (uid, gid): (u32, u32),
    git_read_only: bool,
    masked: &[(String, PathBuf)],
) -> Vec<Layer> {
    let mut layers = vec![
        layer(
            "user-space-kernel",
            true,
            format!(
                "gVisor ({}), platform {}: the step's system calls are served by the Sentry, not the host kernel",
                sandbox.version(),
                sandbox.platform
            ),
        ),
        layer(
            "seccomp",
            true,
            "the reviewed policy (sandbox/policy/seccomp.toml), default deny, applied inside gVisor (--oci-seccomp)",
        ),
        layer(
            "read-only-root",
            true,
            "an empty read-only root; /usr, /bin, /lib* and selected /etc entries bound read-only, nosuid,nodev",
        ),
        layer(
            "no-network",
            true,
            "--network=none: the sandbox has its own loopback only",
        ),
        layer(
            "user",
            uid != 0,
            format!("uid {uid}, gid {gid}, no capabilities, no_new_privs"),
        ),
        layer(
            "tmp-noexec",
            true,
            format!("/tmp tmpfs {}", bundle::TMP_OPTIONS.join(",")),
        ),
        layer(
            "pids",
            true,
            format!(
                "RLIMIT_NPROC {} inside gVisor; the sandbox's host cgroup allows {} tasks (the runtime's threads count there)",
                spec.limits.pids,
                host_pids(spec.limits.pids)
            ),
        ),
    ];
    if git_read_only {
        layers.push(layer(
            "git-read-only",
            true,
            "/workspace/.git bound read-only",
        ));
    }
    if !masked.is_empty() {
        layers.push(layer(
            "state-dir-masked",
            true,
            format!(
                "covered by an empty read-only mount: {}",
                masked
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    layers
}

/// The first error runsc logged about itself (a bad bundle, an unusable platform).
fn runsc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        (entry["level"] == "error" || entry["level"] == "fatal")
            .then(|| entry["msg"].as_str().unwrap_or_default().to_string())
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The bundle directory, removed when the step is over (or the run future dropped).
struct BundleDir(PathBuf);

impl Drop for BundleDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Delete the sandboxes and bundles of engines that died mid-step. Returns what was removed.
pub fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(bundles_dir()) else {
        return removed;
    };
    let runsc = GvisorSandbox::new().ok();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if owner_of(&id).is_some_and(|owner| crate::docker::engine_alive(&owner)) {
            continue;
        }
        if let Some(sandbox) = &runsc {
            let _ = std::process::Command::new(&sandbox.runsc)
                .arg("--root")
                .arg(state_dir())
                .args(["delete", "--force", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(format!("gvisor sandbox {id}"));
        }
    }
    removed.extend(workspace::sweep(|name| {
        let mut parts = name.splitn(3, '-');
        match (parts.next(), parts.next()) {
            (Some(pid), Some(start)) => crate::docker::engine_alive(&format!("{pid}:{start}")),
            _ => true,
        }
    }));
    removed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_name_their_engine() {
        let id = sandbox_id(7);
        let owner = owner_of(&id).unwrap();
        assert!(crate::docker::engine_alive(&owner), "{id} -> {owner}");
        assert_eq!(owner_of("secureclaw-1-2-3").as_deref(), Some("1:2"));
        assert!(owner_of("something-else").is_none());
    }

    #[test]
    fn an_unknown_platform_is_refused_with_the_known_ones() {
        let err = GvisorSandbox::with(PathBuf::from("/usr/bin/runsc"), "vmx").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ptrace") && text.contains("vmx"), "{text}");
    }

    #[test]
    fn runsc_errors_are_read_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runsc.log");
        std::fs::write(
            &log,
            "{\"msg\":\"starting\",\"level\":\"info\"}\n{\"msg\":\"reading spec: bad\",\"level\":\"error\"}\n",
        )
        .unwrap();
        assert_eq!(runsc_error(&log).as_deref(), Some("reading spec: bad"));
        std::fs::write(&log, "{\"msg\":\"fine\",\"level\":\"info\"}\n").unwrap();
        assert_eq!(runsc_error(&log), None);
    }
}
