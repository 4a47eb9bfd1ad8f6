//! What the engine and the re-executed helper say to each other over the control socket.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::policy::Insn;
use crate::Layer;

/// The first argument that turns our own binary into the sandbox helper.
pub const HELPER_ARG: &str = "__sandbox-init";

/// The fd number the control socket has when the helper starts: its stdin, so the engine can
/// spawn it without a pre-exec hook (posix_spawn/vfork instead of a full fork of the engine).
pub const CONTROL_FD: i32 = 0;

/// Sent by the engine, one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperConfig {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workspace: PathBuf,
    /// `cgroup.procs` files the sandbox's init joins before anything runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// Host ids the step's uid/gid 1000 maps to.
    pub outside_uid: u32,
    pub outside_gid: u32,
    /// Present the workspace through an idmapped mount (its owner on disk = `outside_uid`),
    /// so a root engine can run the step as an unprivileged host uid that still owns the
    /// workspace. Needs CAP_SYS_ADMIN (root engine) and a filesystem that supports idmaps.
    pub idmap_workspace: bool,
    /// Accept running with a missing layer (the result reports it).
    pub allow_degraded: bool,
    /// Accept an empty read-only /proc when the kernel refuses a fresh procfs (the operator
    /// accepted `proc` with SECURECLAW_SANDBOX_ACCEPT_MISSING).
    #[serde(default)]
    pub accept_empty_proc: bool,
    pub tmp_size_bytes: u64,
    /// Seccomp programs in installation order; empty when seccomp is unavailable (degraded).
    pub seccomp: Vec<Vec<Insn>>,
    /// Landlock ABI to enforce; 0 when unavailable (degraded).
    pub landlock_abi: i32,
    /// Paths (relative to the workspace) hidden behind an empty read-only tmpfs.
    #[serde(default)]
    pub hidden: Vec<PathBuf>,
    /// RLIMIT_FSIZE of the step (the write budget bounds every single file); `None` = none.
    #[serde(default)]
    pub file_size_limit: Option<u64>,
    /// Extra host paths (absolute) mounted read-only at the same path.
    #[serde(default)]
    pub grants: Vec<PathBuf>,
    /// Absolute paths inside the grants hidden behind an empty read-only file or directory
    /// (credentials a toolchain directory may hold).
    #[serde(default)]
    pub grant_masks: Vec<PathBuf>,
}

/// Sent inside the sandbox (init and step) to the helper, one JSON line each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum InnerMsg {
    Layer(Layer),
    Missing {
        what: String,
    },
    Fatal {
        stage: String,
        message: String,
    },
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A phase boundary (CLOCK_MONOTONIC nanoseconds), for `SECURECLAW_SANDBOX_TRACE`.
    Mark {
        phase: String,
        ns: u64,
    },
}

/// Sent by the helper to the engine when the step is over, one JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HelperResult {
    pub layers: Vec<Layer>,
    pub missing: Vec<String>,
    /// Set when the sandbox could not be built; the step never ran.
    pub fatal: Option<String>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Phase boundaries (CLOCK_MONOTONIC nanoseconds) across helper, init and step.
    #[serde(default)]
    pub marks: Vec<(String, u64)>,
}
