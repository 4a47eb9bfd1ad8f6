//! The `native` backend: Linux namespaces, a read-only pivot_root, seccomp, Landlock and
//! cgroups, built by a helper that is our own binary re-executed (`secureclaw __sandbox-init`).
//!
//! Engine side (this file): probes what the kernel offers, refuses to run without a layer
//! unless degraded mode is accepted, creates the step's cgroups, spawns the helper with a
//! control socket as fd 3, enforces the wall clock and kills the whole tree. The helper side
//! is in `helper.rs`; the policy compiler in `policy.rs`; cgroups in `cgroup.rs`.

pub mod accept;
pub(crate) mod bpf;
pub(crate) mod cgroup;
pub(crate) mod helper;
pub mod policy;
mod protocol;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Instant;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::capture::{capture_in_background, collect};
use crate::{
    CappedOutput, EnforcementReport, ExecOutcome, ExecSpec, ExitReason, Layer, NetworkPolicy,
    Sandbox, SandboxError,
};
pub use helper::{INSIDE_GID, INSIDE_UID};
use protocol::{HELPER_ARG, HelperConfig, HelperResult};

pub use crate::DEFAULT_PATH;
/// Size of the step's `/tmp` (64m by default).
pub const TMP_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// Fresh network namespaces kept ready (each is used by exactly one step, then dropped).
const NETNS_POOL: usize = 2;

/// A background thread that keeps a few fresh network namespaces ready: creating one costs
/// ~0.7 ms, the biggest single part of a sandbox's start. Only a root engine can make them
/// (they belong to the host user namespace; the step holds no capability in them). When the
/// pool is empty or unavailable the helper creates the namespace itself, as before.
fn take_netns() -> Option<std::os::fd::OwnedFd> {
    static POOL: OnceLock<
        Option<std::sync::Mutex<std::sync::mpsc::Receiver<std::os::fd::OwnedFd>>>,
    > = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(NETNS_POOL);
        std::thread::Builder::new()
            .name("secureclaw-netns".into())
            .spawn(move || {
                let Ok(home) = helper::current_netns() else {
                    return;
                };
                while let Ok(fd) = helper::new_netns(&home) {
                    if tx.send(fd).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(std::sync::Mutex::new(rx))
    });
    pool.as_ref()?.lock().ok()?.try_recv().ok()
}
const NAME: &str = "native";

/// What the running kernel offers, probed once per process.
#[derive(Debug)]
struct Probe {
    landlock_abi: i32,
    seccomp: Result<Vec<Vec<policy::Insn>>, String>,
    cgroups: cgroup::Layout,
    cgroup_have: Vec<&'static str>,
    cgroup_missing: Vec<String>,
}

fn probe() -> &'static Probe {
    static CELL: OnceLock<Probe> = OnceLock::new();
    CELL.get_or_init(|| {
        let cgroups = cgroup::Layout::detect();
        let (cgroup_have, cgroup_missing) = cgroups.prepare();
        // Every engine process cleans up after dead ones on first use, even if its binary
        // forgot to call `sweep_leftovers` (our own test binaries, for one).
        let _ = cgroup::sweep(&cgroups);
        let seccomp = if Path::new("/proc/sys/kernel/seccomp/actions_avail").exists() {
            policy::compiled().map(|c| c.programs.clone())
        } else {
            Err("kernel has no seccomp filter support".into())
        };
        Probe {
            landlock_abi: helper::landlock_abi(),
            seccomp,
            cgroups,
            cgroup_have,
            cgroup_missing,
        }
    })
}

/// Host uid/gid a root engine runs steps as (`nobody`/`nogroup`).
pub const UNPRIVILEGED_ID: u32 = 65534;

/// The native Linux sandbox.
#[derive(Debug, Clone)]
pub struct NativeSandbox {
    helper: PathBuf,
    outside_uid: u32,
    outside_gid: u32,
    idmap_workspace: bool,
    egress_pins: crate::egress::Pins,
}

impl NativeSandbox {
    /// Uses the running executable as the helper: the binary must call
    /// [`crate::run_helper_if_requested`] first thing in `main`.
    pub fn new() -> Result<Self, SandboxError> {
        let helper = std::env::current_exe().map_err(|e| SandboxError::Unavailable {
            backend: NAME.into(),
            reason: format!("cannot locate our own executable for the helper: {e}"),
        })?;
        Ok(Self::with_helper(helper))
    }

    /// Uses `helper` (a binary whose `main` calls [`crate::run_helper_if_requested`]).
    pub fn with_helper(helper: PathBuf) -> Self {
        let (uid, gid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        if uid == 0 {
            // Root engine: the step must not be host root, even without capabilities (owner
            // permissions of root's files, global sysctls keyed on uid 0). It runs as nobody,
            // and the workspace is idmapped so that it still owns the workspace's files.
            NativeSandbox {
                helper,
                outside_uid: UNPRIVILEGED_ID,
                outside_gid: UNPRIVILEGED_ID,
                idmap_workspace: true,
                egress_pins: Default::default(),
            }
        } else {
            // Unprivileged engine: its own uid is the only one it may map, and it is not root.
            NativeSandbox {
                helper,
                outside_uid: uid,
                outside_gid: gid,
                idmap_workspace: false,
                egress_pins: Default::default(),
            }
        }
    }

    /// Host uid/gid the step's uid/gid 1000 maps to, without an idmapped workspace (the
    /// workspace must then be writable by these ids). Needs a root engine for ids other than
    /// its own.
    pub fn with_outside_ids(mut self, uid: u32, gid: u32) -> Self {
        self.outside_uid = uid;
        self.outside_gid = gid;
        self.idmap_workspace = false;
        self
    }

    /// Operator pins for the egress proxy (name → address, like curl's `--resolve`).
    pub fn with_egress_pins(mut self, pins: crate::egress::Pins) -> Self {
        self.egress_pins = pins;
        self
    }

    /// The layers this kernel can provide, without running anything (for `sandbox check`).
    pub fn capabilities() -> EnforcementReport {
        let p = probe();
        let mut layers = vec![Layer {
            name: "namespaces".into(),
            active: true,
            detail: "user, mount, pid, network, ipc, uts, cgroup (checked at run time)".into(),
        }];
        layers.push(Layer {
            name: "landlock".into(),
            active: p.landlock_abi > 0,
            detail: format!("ABI {}", p.landlock_abi),
        });
        layers.push(Layer {
            name: "seccomp".into(),
            active: p.seccomp.is_ok(),
            detail: match &p.seccomp {
                Ok(progs) => format!("{} filter(s) compiled", progs.len()),
                Err(e) => e.clone(),
            },
        });
        for c in &p.cgroup_have {
            layers.push(Layer {
                name: format!("cgroup-{c}"),
                active: true,
                detail: format!("{:?}", p.cgroups),
            });
        }
        let missing = missing_layers(p);
        EnforcementReport {
            backend: NAME.into(),
            isolated: true,
            layers,
            missing: match accept::Accepted::from_env() {
                Ok(accepted) => accepted.mark(missing),
                Err(_) => missing,
            },
        }
    }
}

fn missing_layers(p: &Probe) -> Vec<String> {
    let mut missing = Vec::new();
    if p.landlock_abi <= 0 {
        missing.push("landlock: not enabled in this kernel".to_string());
    }
    if let Err(e) = &p.seccomp {
        missing.push(format!("seccomp: {e}"));
    }
    missing.extend(p.cgroup_missing.iter().cloned());
    missing
}

fn degraded(missing: Vec<String>, layers: Vec<Layer>) -> SandboxError {
    SandboxError::degraded(NAME, missing, layers)
}

enum Ended {
    Finished(String),
    TimedOut,
    Cancelled,
    /// The disk watch saw the write budget exceeded; the tree was killed.
    DiskBudget,
}

/// How often the write budget is sampled while a step runs.
const DISK_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// SIGXFSZ: the kernel's answer to a write past RLIMIT_FSIZE.
const SIGXFSZ: i32 = 25;

#[async_trait]
impl Sandbox for NativeSandbox {
    fn name(&self) -> &'static str {
        NAME
    }

    fn isolated(&self) -> bool {
        true
    }

    /// Step cgroups kept for reuse go when the run ends: nothing is left behind for the next
    /// engine to mistake for a crash.
    async fn flush(&self) {
        let _ = tokio::task::spawn_blocking(cgroup::drain).await;
    }

    async fn run(
        &self,
        spec: &ExecSpec,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        crate::require_argv(spec)?;
        let workspace = std::fs::canonicalize(&spec.workspace)?;
        let p = probe();
        let accepted =
            accept::Accepted::from_env().map_err(|reason| SandboxError::Unavailable {
                backend: NAME.into(),
                reason,
            })?;
        let mut missing = missing_layers(p);
        let refused = accepted.refused(&missing);
        if !refused.is_empty() && !spec.allow_degraded {
            return Err(degraded(refused, Vec::new()));
        }

        let start = Instant::now();
        let cg = if p.cgroup_have.is_empty() {
            None
        } else {
            match cgroup::StepCgroup::create(&p.cgroups, &spec.limits) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    missing.push(format!("cgroups: cannot create the step's cgroup: {e}"));
                    let refused = accepted.refused(&missing);
                    if !refused.is_empty() && !spec.allow_degraded {
                        return Err(degraded(refused, Vec::new()));
                    }
                    None
                }
            }
        };
        // If this future is dropped mid-step (the engine gave up on it), the guard kills what
        // is left in the step's cgroup; killing the helper (kill_on_drop) takes the rest.
        let mut guard = CgroupGuard(cg);
        let mut spec = std::borrow::Cow::Borrowed(spec);
        let (netns, egress) = match &spec.network {
            NetworkPolicy::None => (take_netns(), None),
            NetworkPolicy::Domains(domains) => {
                let netns = egress_netns().await?;
                let session =
                    crate::egress::EgressSession::start_in(&netns, domains, &self.egress_pins)
                        .await?;
                crate::egress::set_proxy_env(&mut spec.to_mut().env);
                (Some(netns), Some(session))
            }
        };
        // The baseline of the write budget, taken before the helper starts.
        let disk = crate::budget::DiskWatch::start(
            &workspace,
            crate::masked_relative(&spec, &workspace),
            spec.limits.disk_bytes,
        )
        .await?;
        if let Some(cg) = &guard.0 {
            disk.watch_processes(cg.procs_files());
        }
        let result = self
            .run_in(&spec, &workspace, p, guard.0.as_ref(), netns, &disk, cancel)
            .await;
        let events = match egress {
            Some(session) => session.finish().await,
            None => Vec::new(),
        };
        let result = result.map(|(ended, r, out, err, trace)| (ended, r, out, err, trace, events));
        let outcome = if let Some(cg) = guard.0.take() {
            let outcome = result.map(|(ended, r, out, err, trace, events)| {
                let oom = cg.oom_killed();
                let pids = cg.pids_limited();
                (ended, r, out, err, trace, events, oom, pids)
            });
            cg.release();
            let (ended, r, out, err, trace, events, oom, pids) = outcome?;
            let mut o = self.finish(
                &spec, p, missing, start, ended, r, out, err, oom, pids, true,
            )?;
            o.egress = events;
            o.trace = trace;
            o
        } else {
            let (ended, r, out, err, trace, events) = result?;
            let mut o = self.finish(
                &spec, p, missing, start, ended, r, out, err, false, false, false,
            )?;
            o.egress = events;
            o.trace = trace;
            o
        };
        let mut outcome = outcome;
        // A last sample: a step that wrote past its budget between two samples and ended does
        // not succeed (the engine rolls its changes back).
        // One walk serves both the verdict and the figure in the warning.
        let written = match outcome.exit {
            ExitReason::Cancelled => None,
            _ => disk.written().await.ok(),
        };
        if written.is_some_and(|w| w >= disk.budget()) {
            outcome.exit = ExitReason::DiskBudget;
        }
        if outcome.exit == ExitReason::DiskBudget {
            outcome.warnings.push(format!(
                "write budget: the step wrote at least {} bytes (its `disk` limit is {} bytes)",
                written.unwrap_or(0).max(disk.budget()),
                disk.budget()
            ));
        }
        Ok(outcome)
    }
}

/// A fresh network namespace the engine holds an fd to, so it can open the egress proxy's
/// port inside before the step starts. Only a root engine can make one.
async fn egress_netns() -> Result<std::os::fd::OwnedFd, SandboxError> {
    if let Some(fd) = take_netns() {
        return Ok(fd);
    }
    let made = tokio::task::spawn_blocking(|| {
        let home = helper::current_netns()?;
        helper::new_netns(&home)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    made.map_err(|e| SandboxError::Unavailable {
        backend: NAME.into(),
        reason: format!(
            "network allowlists need a network namespace made by the engine ({e}); run the engine as root"
        ),
    })
}

pub(crate) struct CgroupGuard(pub(crate) Option<cgroup::StepCgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            cg.kill_all();
            cg.release();
        }
    }
}

/// How the step ended, the helper's result, its output, and the phase-timing line when
/// `SECURECLAW_SANDBOX_TRACE` is set.
type RunParts = (
    Ended,
    HelperResult,
    CappedOutput,
    CappedOutput,
    Option<String>,
);

impl NativeSandbox {
    #[allow(clippy::too_many_arguments)]
    async fn run_in(
        &self,
        spec: &ExecSpec,
        workspace: &Path,
        p: &Probe,
        cg: Option<&cgroup::StepCgroup>,
        netns: Option<std::os::fd::OwnedFd>,
        disk: &crate::budget::DiskWatch,
        cancel: CancellationToken,
    ) -> Result<RunParts, SandboxError> {
        let mut grants = Vec::new();
        for g in &spec.read_only {
            let canonical = std::fs::canonicalize(g).map_err(|e| SandboxError::Unavailable {
                backend: NAME.into(),
                reason: format!("read-only path {}: {e}", g.display()),
            })?;
            grants.push(canonical);
        }
        // Parents before the grants nested in them, so that a nested mount is not covered.
        grants.sort_by_key(|g| g.components().count());
        grants.dedup();
        // Credentials inside a grant are hidden, unless a grant names them itself.
        let mut grant_masks = Vec::new();
        for g in &grants {
            for m in crate::grants::masks(g) {
                if !grants.iter().any(|other| other.starts_with(&m)) && !grant_masks.contains(&m) {
                    grant_masks.push(m);
                }
            }
        }
        let mut env: Vec<(String, String)> = spec.env.clone().into_iter().collect();
        for (k, v) in [("PATH", DEFAULT_PATH), ("HOME", "/tmp")] {
            if !spec.env.contains_key(k) {
                env.push((k.into(), v.into()));
            }
        }
        let config = HelperConfig {
            argv: spec.argv.clone(),
            env,
            workspace: workspace.to_path_buf(),
            cgroup_procs: cg.map(|c| c.procs_files()).unwrap_or_default(),
            outside_uid: self.outside_uid,
            outside_gid: self.outside_gid,
            idmap_workspace: self.idmap_workspace,
            allow_degraded: spec.allow_degraded,
            accept_empty_proc: accept::Accepted::from_env().is_ok_and(|a| a.proc()),
            tmp_size_bytes: TMP_SIZE_BYTES,
            seccomp: p.seccomp.clone().unwrap_or_default(),
            landlock_abi: p.landlock_abi,
            hidden: crate::masked_relative(spec, workspace),
            file_size_limit: spec.limits.file_size_limit(),
            grants,
            grant_masks,
        };
        let mut line = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
        line.push(b'\n');

        let t_spawn = helper::now_ns();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let mut cmd = Command::new(&self.helper);
        cmd.arg(HELPER_ARG)
            .env_clear()
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            program: self.helper.display().to_string(),
            source,
        })?;
        let sent = match &netns {
            Some(fd) => {
                use std::os::fd::AsRawFd;
                helper::send_with_fd(&ours, &line, fd.as_raw_fd())?
            }
            None => 0,
        };
        drop(netns);
        ours.set_nonblocking(true)?;
        let mut control = tokio::net::UnixStream::from_std(ours)?;
        control.write_all(&line[sent..]).await?;

        let cap = spec.limits.output_cap;
        let stdout = child.stdout.take().map(|s| capture_in_background(s, cap));
        let stderr = child.stderr.take().map(|s| capture_in_background(s, cap));

        let ended = {
            let (read_half, _write_half) = control.split();
            let mut reader = BufReader::new(read_half);
            let wait = async {
                let mut line = String::new();
                let _ = reader.read_line(&mut line).await;
                let _ = child.wait().await;
                line
            };
            let over_budget = disk.reached(DISK_POLL);
            tokio::select! {
                line = wait => Ended::Finished(line),
                _ = tokio::time::sleep(spec.limits.timeout) => Ended::TimedOut,
                _ = cancel.cancelled() => Ended::Cancelled,
                _ = over_budget => Ended::DiskBudget,
            }
        };
        let result = match &ended {
            Ended::Finished(line) => serde_json::from_str(line).unwrap_or_default(),
            _ => {
                // Killing the helper kills the sandbox init (parent-death signal), and with it
                // the whole pid namespace; the cgroup kill catches anything in flight.
                let _ = child.start_kill();
                if let Some(cg) = cg {
                    cg.kill_all();
                }
                let _ = child.wait().await;
                HelperResult::default()
            }
        };
        drop(control);
        let (out, err) = (collect(stdout).await, collect(stderr).await);
        let trace = std::env::var_os("SECURECLAW_SANDBOX_TRACE").map(|_| {
            let mut line = "sandbox trace: spawn=0".to_string();
            for (phase, ns) in &result.marks {
                line.push_str(&format!(
                    " {phase}=+{}us",
                    ns.saturating_sub(t_spawn) / 1000
                ));
            }
            line.push_str(&format!(
                " done=+{}us",
                helper::now_ns().saturating_sub(t_spawn) / 1000
            ));
            line
        });
        Ok((ended, result, out, err, trace))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        spec: &ExecSpec,
        p: &Probe,
        mut missing: Vec<String>,
        start: Instant,
        ended: Ended,
        r: HelperResult,
        out: CappedOutput,
        mut err: CappedOutput,
        oom: bool,
        pids: bool,
        cgroups: bool,
    ) -> Result<ExecOutcome, SandboxError> {
        let mut layers = r.layers;
        if cgroups {
            let l = &spec.limits;
            for (name, detail) in [
                ("memory", format!("{} bytes, no swap", l.memory_bytes)),
                ("cpu", format!("{} cpu(s)", l.cpus)),
                ("pids", format!("{} processes", l.pids)),
            ] {
                if p.cgroup_have.contains(&name) {
                    layers.push(Layer {
                        name: format!("cgroup-{name}"),
                        active: true,
                        detail,
                    });
                }
            }
        }
        layers.push(Layer {
            name: "wall-clock".into(),
            active: true,
            detail: format!("{:?}", spec.limits.timeout),
        });
        layers.push(Layer {
            name: "write-budget".into(),
            active: spec.limits.has_write_budget(),
            detail: spec.limits.write_budget_detail(&format!(
                "RLIMIT_FSIZE per file, the workspace's growth and the step's unlinked open files sampled every {DISK_POLL:?} or more"
            )),
        });
        missing.extend(r.missing);
        missing.sort();
        missing.dedup();
        let missing = match accept::Accepted::from_env() {
            Ok(accepted) => accepted.mark(missing),
            Err(_) => missing,
        };

        let exit = match ended {
            Ended::DiskBudget => ExitReason::DiskBudget,
            Ended::TimedOut if pids => ExitReason::PidsLimit,
            Ended::TimedOut if oom => ExitReason::OutOfMemory,
            Ended::TimedOut => ExitReason::TimedOut,
            Ended::Cancelled => ExitReason::Cancelled,
            Ended::Finished(_) => {
                let raw = match (r.code, r.signal) {
                    (Some(code), _) => ExitReason::Exited { code },
                    (None, Some(signal)) => ExitReason::Signaled { signal },
                    (None, None) => {
                        let reason = r.fatal.unwrap_or_else(|| {
                            format!(
                                "the sandbox helper `{}` ended without a result (does its `main` call secureclaw_sandbox::run_helper_if_requested() first?)",
                                self.helper.display()
                            )
                        });
                        return Err(SandboxError::Unavailable {
                            backend: NAME.into(),
                            reason,
                        });
                    }
                };
                if let Some(fatal) = &r.fatal {
                    // The step process could not exec: say why on its stderr.
                    err.kept
                        .extend_from_slice(format!("secureclaw: {fatal}\n").as_bytes());
                }
                if raw.success() {
                    raw
                } else if r.signal == Some(SIGXFSZ) || r.code == Some(128 + SIGXFSZ) {
                    // A write past RLIMIT_FSIZE (the write budget): the kernel's SIGXFSZ, seen
                    // directly or through a shell's 128+signal exit status.
                    ExitReason::DiskBudget
                } else if oom {
                    ExitReason::OutOfMemory
                } else if pids {
                    ExitReason::PidsLimit
                } else {
                    raw
                }
            }
        };
        let succeeded = exit.success();
        let mut outcome = ExecOutcome::new(
            exit,
            out,
            err,
            start.elapsed(),
            EnforcementReport::isolated(NAME, layers, missing),
        );
        if pids && succeeded {
            // The step exited 0, but the kernel refused some of its forks (pids.events max).
            outcome.warnings.push(format!(
                "process limit: the step reached its limit of {} processes and some forks were refused, although it exited 0",
                spec.limits.pids
            ));
        }
        Ok(outcome)
    }
}

/// `secureclaw __sandbox-init`: become the helper and never return.
pub fn run_helper_if_requested() {
    if std::env::args_os().nth(1).is_some_and(|a| a == HELPER_ARG) {
        helper::helper_main();
    }
}

/// Remove leftovers of engines that died (cgroups; mounts live only in the sandboxes' own
/// mount namespaces and processes die with their helper, so cgroups are all that can remain).
pub fn sweep_leftovers() -> Vec<String> {
    cgroup::sweep(&cgroup::Layout::detect())
}
