//! The seccomp profile of the server container (`docker/seccomp-server.json`): the container
//! that runs `secureclaw serve` and, inside it, the native sandbox for every step.
//!
//! Generated from two reviewed data files: the step policy (`sandbox/policy/seccomp.toml`), so
//! the outer filter never refuses what a step may do, and `sandbox/policy/seccomp-server.toml`,
//! which adds what building a sandbox takes and names what no group may ever allow.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::native::policy::{POLICY_TOML, Policy, PolicyError};

/// The server container's policy as checked into the repository.
pub const SERVER_POLICY_TOML: &str = include_str!("../../policy/seccomp-server.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerPolicy {
    default_errno: u32,
    group: Vec<ServerGroup>,
    never: Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerGroup {
    name: String,
    why: String,
    allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Never {
    syscalls: Vec<String>,
}

/// The syscalls the server profile allows, sorted, and the ones it must never allow.
fn allowed_and_never(
    step: &Policy,
    server_toml: &str,
) -> Result<(Vec<String>, Vec<String>, u32), PolicyError> {
    let server: ServerPolicy = toml::from_str(server_toml)?;
    let mut allowed: Vec<String> = step
        .allowed_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    for g in &server.group {
        if g.why.trim().is_empty() {
            return Err(PolicyError::Invalid(format!(
                "server group `{}` has no `why`",
                g.name
            )));
        }
        allowed.extend(g.allow.iter().cloned());
    }
    allowed.sort();
    allowed.dedup();
    if let Some(name) = allowed.iter().find(|n| server.never.syscalls.contains(n)) {
        return Err(PolicyError::Invalid(format!(
            "`{name}` is in the server profile's [never] list but allowed (by a server group or the step policy)"
        )));
    }
    Ok((allowed, server.never.syscalls, server.default_errno))
}

/// The server container's profile as Docker's JSON (`security_opt: seccomp=FILE`).
pub fn server_profile() -> Result<Value, PolicyError> {
    let step = Policy::parse(POLICY_TOML)?;
    let (allowed, _, errno) = allowed_and_never(&step, SERVER_POLICY_TOML)?;
    Ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno,
        // A syscall through another ABI (i386 `int 0x80`, x32) matches no listed architecture
        // and gets the kernel's bad-architecture answer.
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [{ "names": allowed, "action": "SCMP_ACT_ALLOW" }],
    }))
}

/// The profile as the pretty JSON checked in at `docker/seccomp-server.json`.
pub fn server_profile_pretty() -> Result<String, PolicyError> {
    let value = server_profile()?;
    serde_json::to_string_pretty(&value)
        .map(|s| s + "\n")
        .map_err(|e| PolicyError::Invalid(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn allowed(p: &Value) -> Vec<String> {
        p["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_checked_in_profile_is_the_generated_one() {
        let checked_in = include_str!("../../../docker/seccomp-server.json");
        assert_eq!(
            checked_in,
            server_profile_pretty().unwrap(),
            "docker/seccomp-server.json is stale: regenerate it with \
             `secureclaw sandbox seccomp-profile --server > docker/seccomp-server.json`"
        );
    }

    #[test]
    fn default_deny_and_one_allow_rule() {
        let p = server_profile().unwrap();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(p["syscalls"].as_array().unwrap().len(), 1);
        assert_eq!(p["syscalls"][0]["action"], "SCMP_ACT_ALLOW");
    }

    /// The calls that turn a foothold in the server container into the host: tracing other
    /// processes, kernel modules, eBPF, keyrings, file handles, the clock, io_uring.
    #[test]
    fn host_level_calls_are_never_allowed() {
        let names = allowed(&server_profile().unwrap());
        for attack in [
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "init_module",
            "finit_module",
            "kexec_load",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "open_by_handle_at",
            "userfaultfd",
            "io_uring_setup",
            "settimeofday",
            "reboot",
            "swapon",
            "iopl",
            "pidfd_getfd",
            "fsopen",
            "chroot",
        ] {
            assert!(!names.iter().any(|n| n == attack), "{attack} is allowed");
        }
    }

    /// The outer filter must not refuse what the step policy lets a step do, or steps would
    /// fail only when the server runs in a container.
    #[test]
    fn everything_a_step_may_call_passes_the_server_profile() {
        let names = allowed(&server_profile().unwrap());
        let step = Policy::parse(POLICY_TOML).unwrap();
        for name in step.allowed_names() {
            assert!(names.iter().any(|n| n == name), "{name} refused");
        }
        for needed in [
            "unshare",
            "mount",
            "pivot_root",
            "open_tree",
            "clone3",
            "capset",
        ] {
            assert!(names.iter().any(|n| n == needed), "{needed} refused");
        }
    }

    #[test]
    fn a_group_that_allows_a_never_call_is_rejected() {
        let step = Policy::parse(POLICY_TOML).unwrap();
        let hostile = SERVER_POLICY_TOML.replace(
            r#"allow = ["clone3", "openat2"]"#,
            r#"allow = ["clone3", "openat2", "ptrace"]"#,
        );
        assert_ne!(hostile, SERVER_POLICY_TOML);
        let err = allowed_and_never(&step, &hostile).unwrap_err();
        assert!(err.to_string().contains("`ptrace`"), "{err}");
    }

    #[test]
    fn a_group_without_a_reason_is_rejected() {
        let step = Policy::parse(POLICY_TOML).unwrap();
        let hostile: String = SERVER_POLICY_TOML
            .lines()
            .map(|l| {
                if l.starts_with("why = \"clone3") {
                    "why = \"  \""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(hostile, SERVER_POLICY_TOML);
        let err = allowed_and_never(&step, &hostile).unwrap_err();
        assert!(err.to_string().contains("has no `why`"), "{err}");
    }
}
