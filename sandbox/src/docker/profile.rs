//! The Docker seccomp profile, generated from the same reviewed policy data as the native
//! backend's BPF (`sandbox/policy/seccomp.toml`), so the two backends cannot drift apart.
//!
//! Docker's default profile allows `ptrace` (kernels >= 4.8) and much else; ours is default-deny.

use serde_json::{Value, json};

use crate::native::policy::{POLICY_TOML, Policy, PolicyError};

/// The libseccomp name of the architecture this binary runs on. Only the native architecture
/// is listed: a syscall made through another ABI (i386 `int 0x80`, x32) hits libseccomp's
/// bad-architecture action and the process is killed, as in the native backend.
fn scmp_arch() -> Result<&'static str, PolicyError> {
    if cfg!(target_arch = "x86_64") {
        Ok("SCMP_ARCH_X86_64")
    } else if cfg!(target_arch = "aarch64") {
        Ok("SCMP_ARCH_AARCH64")
    } else if cfg!(target_arch = "riscv64") {
        Ok("SCMP_ARCH_RISCV64")
    } else {
        Err(PolicyError::Arch)
    }
}

/// The profile as Docker's JSON (the content of `--security-opt seccomp=FILE`).
pub fn docker_profile(policy: &Policy) -> Result<Value, PolicyError> {
    let mut rules = Vec::new();
    let mut plain: Vec<&str> = policy
        .group
        .iter()
        .flat_map(|g| g.allow.iter().map(String::as_str))
        .collect();
    plain.sort_unstable();
    plain.dedup();
    rules.push(json!({ "names": plain, "action": "SCMP_ACT_ALLOW" }));

    for c in &policy.conditional {
        if c.values.is_empty() {
            // "Allowed unless the argument is one of `not_values`". libseccomp compares whole
            // 64-bit words and, when an unconditional ALLOW and an argument-matching ERRNO
            // rule name the same syscall, the ALLOW wins (the escape battery's `tiocsti` case
            // caught exactly that). So the allowed complement is spelled out instead: the
            // ranges between the forbidden values, each split into aligned blocks that one
            // MASKED_EQ comparison matches (like CIDR blocks). For a 32-bit argument the upper
            // half must be zero or all ones (sign extension); anything else is refused.
            let mut forbidden: Vec<u64> = c
                .not_values
                .iter()
                .map(|v| if c.width == 32 { v & 0xFFFF_FFFF } else { *v })
                .collect();
            forbidden.sort_unstable();
            forbidden.dedup();
            let top = if c.width == 32 { 0xFFFF_FFFF } else { u64::MAX };
            let uppers: &[u64] = if c.width == 32 {
                &[0, 0xFFFF_FFFF_0000_0000]
            } else {
                &[0]
            };
            let mut gaps = Vec::new();
            let mut next = Some(0u64);
            for &v in &forbidden {
                if let Some(lo) = next
                    && v > lo
                {
                    gaps.push((lo, v - 1));
                }
                next = v.checked_add(1);
            }
            if let Some(lo) = next
                && lo <= top
            {
                gaps.push((lo, top));
            }
            for (from, to) in gaps {
                for (mask, value) in aligned_blocks(from, to) {
                    for upper in uppers {
                        rules.push(json!({
                            "names": [c.syscall],
                            "action": "SCMP_ACT_ALLOW",
                            "args": [{
                                "index": c.arg,
                                "value": if c.width == 32 { mask | 0xFFFF_FFFF_0000_0000 } else { mask },
                                "valueTwo": value | upper,
                                "op": "SCMP_CMP_MASKED_EQ",
                            }],
                        }));
                    }
                }
            }
        } else {
            // One rule per accepted value: rules for the same syscall are ORed.
            for v in &c.values {
                rules.push(json!({
                    "names": [c.syscall],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{
                        "index": c.arg,
                        "value": mask_for(c.width, c.mask),
                        "valueTwo": v,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }],
                }));
            }
        }
    }
    for e in &policy.errno {
        rules.push(json!({
            "names": [e.syscall],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": e.errno,
        }));
    }
    Ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": policy.default_errno,
        "architectures": [scmp_arch()?],
        "syscalls": rules,
    }))
}

/// `[from, to]` as the fewest aligned power-of-two blocks, each `(mask, first value)`:
/// `x` is in a block when `x & mask == first`.
fn aligned_blocks(mut from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut blocks = Vec::new();
    while from <= to {
        // The largest block that starts at `from` (alignment) and does not pass `to`.
        let mut size_log = if from == 0 { 64 } else { from.trailing_zeros() };
        while size_log > 0 {
            let last = if size_log == 64 {
                u64::MAX
            } else {
                from | ((1u64 << size_log) - 1)
            };
            if last <= to {
                break;
            }
            size_log -= 1;
        }
        let mask = if size_log == 64 {
            0
        } else {
            !((1u64 << size_log) - 1)
        };
        blocks.push((mask, from));
        let last = from | !mask;
        if last == u64::MAX {
            break;
        }
        from = last + 1;
    }
    blocks
}

/// A 32-bit argument is compared on its lower half only.
fn mask_for(width: u8, mask: u64) -> u64 {
    if width == 32 {
        mask & 0xFFFF_FFFF
    } else {
        mask
    }
}

/// The repository policy as a Docker profile, serialised once per process.
pub fn repository_profile() -> Result<&'static str, String> {
    static CELL: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        Policy::parse(POLICY_TOML)
            .and_then(|p| docker_profile(&p))
            .map(|v| v.to_string())
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map(String::as_str)
    .map_err(Clone::clone)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn profile() -> Value {
        docker_profile(&Policy::parse(POLICY_TOML).unwrap()).unwrap()
    }

    fn allowed_unconditionally(p: &Value) -> Vec<String> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn default_deny_and_dangerous_calls_never_allowed() {
        let p = profile();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        let policy = Policy::parse(POLICY_TOML).unwrap();
        let allowed = allowed_unconditionally(&p);
        for name in &policy.denied.syscalls {
            assert!(
                !allowed.contains(name),
                "{name} is allowed in the docker profile"
            );
            // Not even conditionally.
            for r in p["syscalls"].as_array().unwrap() {
                if r["action"] == "SCMP_ACT_ALLOW" {
                    assert!(
                        !r["names"].as_array().unwrap().iter().any(|n| n == name),
                        "{name} allowed by {r}"
                    );
                }
            }
        }
        // Docker's own default profile allows ptrace; ours must not.
        assert!(!allowed.iter().any(|n| n == "ptrace"));
    }

    #[test]
    fn every_policy_allow_reaches_the_profile() {
        let policy = Policy::parse(POLICY_TOML).unwrap();
        let text = profile().to_string();
        for name in policy.allowed_names() {
            assert!(text.contains(&format!("\"{name}\"")), "{name} missing");
        }
    }

    #[test]
    fn clone_namespace_flags_are_masked() {
        let p = profile();
        let clone: Vec<&Value> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"][0] == "clone")
            .collect();
        assert_eq!(clone.len(), 1, "{clone:?}");
        let arg = &clone[0]["args"][0];
        assert_eq!(arg["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(arg["value"], 0x7E02_0000u64);
        assert_eq!(arg["valueTwo"], 0);
    }

    /// Whether libseccomp would let the call through (see `docker_verdict`).
    fn allows(p: &Value, name: &str, args: [u64; 6]) -> bool {
        docker_verdict(p, name, args).is_none()
    }

    #[test]
    fn tiocsti_is_refused_whatever_the_upper_half() {
        let p = profile();
        let ioctl = |req: u64| allows(&p, "ioctl", [0, req, 0, 0, 0, 0]);
        for req in [
            0x5412u64,
            0x541C,
            0x1_0000_5412,
            0xFFFF_FFFF_0000_5412,
            0xDEAD_0000_541C,
        ] {
            assert!(!ioctl(req), "{req:#x} allowed");
        }
        // Ordinary terminal and file ioctls pass, also sign-extended ones.
        for req in [
            0u64,
            0x5401,
            0x5411,
            0x5413,
            0x541B,
            0x541D,
            0x8004_5430,
            0xFFFF_FFFF_8004_5430,
            0xFFFF_FFFF,
        ] {
            assert!(ioctl(req), "{req:#x} refused");
        }
        // Junk in the upper half that is not a sign extension is refused.
        assert!(!ioctl(0x1_0000_5401));
    }

    /// The action libseccomp takes for one call: `None` = allow, `Some(errno)` otherwise.
    /// A matching ERRNO rule beats ALLOW; nothing matching means the default action.
    fn docker_verdict(p: &Value, name: &str, args: [u64; 6]) -> Option<u64> {
        let mut allowed = false;
        let mut errno = None;
        for r in p["syscalls"].as_array().unwrap() {
            if !r["names"].as_array().unwrap().iter().any(|n| n == name) {
                continue;
            }
            let matches = r.get("args").is_none_or(|a| {
                a.as_array().unwrap().iter().all(|c| {
                    let x = args[c["index"].as_u64().unwrap() as usize];
                    let (v, v2) = (
                        c["value"].as_u64().unwrap(),
                        c["valueTwo"].as_u64().unwrap_or(0),
                    );
                    match c["op"].as_str().unwrap() {
                        "SCMP_CMP_MASKED_EQ" => x & v == v2,
                        "SCMP_CMP_EQ" => x == v,
                        "SCMP_CMP_NE" => x != v,
                        op => panic!("unexpected op {op}"),
                    }
                })
            });
            if matches {
                match r["action"].as_str().unwrap() {
                    "SCMP_ACT_ALLOW" => allowed = true,
                    "SCMP_ACT_ERRNO" => errno = Some(r["errnoRet"].as_u64().unwrap()),
                    other => panic!("unexpected action {other}"),
                }
            }
        }
        match errno {
            Some(e) => Some(e),
            None if allowed => None,
            None => Some(p["defaultErrnoRet"].as_u64().unwrap()),
        }
    }

    /// The docker profile and the native BPF program decide every policy syscall alike, for
    /// the argument values the conditional rules look at (mode bits, open flags, file types,
    /// clone flags, ioctl requests), in every argument slot, with high-bit and sign-extended
    /// spellings. Only the 32-bit rules with `not_values` (ioctl) differ by design: docker
    /// refuses an upper half that is neither zero nor a sign extension.
    #[test]
    fn docker_profile_decides_like_the_native_filter() {
        use crate::native::bpf::{RET_ALLOW, RET_ERRNO, native_arch, run};
        use crate::native::policy::native_number;
        let policy = Policy::parse(POLICY_TOML).unwrap();
        let program = &policy.compile().unwrap().programs[0];
        let audit = native_arch().unwrap().audit;
        let p = profile();
        let mut names: Vec<&str> = policy.allowed_names();
        names.extend(policy.errno.iter().map(|e| e.syscall.as_str()));
        names.extend(policy.denied.syscalls.iter().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        let lows: [u64; 22] = [
            0, 1, 0x40, 0x41, 0x400000, 0x410041, 0o755, 0o4755, 0o2755, 0o6000, 0o1777, 0o100644,
            0o104755, 0o020644, 0o060644, 0o010644, 0o140755, 0x5412, 0x541C, 0x5401, 0x7E020000,
            0x11,
        ];
        let uppers = [0u64, 0x1_0000_0000, 0xFFFF_FFFF_0000_0000];
        let mut checked = 0;
        for name in names {
            let Some(nr) = native_number(name) else {
                continue;
            };
            let has_not_values = policy
                .conditional
                .iter()
                .any(|c| c.syscall == name && !c.not_values.is_empty());
            for slot in 0..4 {
                for low in lows {
                    for upper in uppers {
                        if has_not_values && upper == 0x1_0000_0000 {
                            continue;
                        }
                        let mut args = [0u64; 6];
                        // A creating open in the flags slot, so the mode slot matters too.
                        args[(slot + 1) % 4] = 0x41;
                        args[slot] = low | upper;
                        let native = run(program, nr, audit, args);
                        let native =
                            (native != RET_ALLOW).then_some(u64::from(native & !RET_ERRNO));
                        assert_eq!(
                            docker_verdict(&p, name, args),
                            native,
                            "{name} args {args:x?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn aligned_blocks_cover_exactly_the_range() {
        for (from, to) in [
            (0u64, 0x5411u64),
            (0x5413, 0x541B),
            (0x541D, 0xFFFF_FFFF),
            (7, 7),
            (0, u64::MAX),
        ] {
            let blocks = aligned_blocks(from, to);
            assert!(blocks.len() <= 128, "{}", blocks.len());
            let inside = |x: u64| blocks.iter().any(|(m, v)| x & m == *v);
            for x in [
                from,
                to,
                from.saturating_sub(1),
                to.saturating_add(1),
                from / 2 + to / 2,
            ] {
                assert_eq!(
                    inside(x),
                    (from..=to).contains(&x),
                    "{x:#x} in [{from:#x}, {to:#x}]"
                );
            }
        }
    }
}
