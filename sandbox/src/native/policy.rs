//! The seccomp policy: `sandbox/policy/seccomp.toml` (a reviewed data file) compiled to BPF.
//!
//! The engine compiles it once per process and ships the BPF words to the helper, so the helper
//! never parses anything security-relevant after it has entered the sandbox.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

/// The policy as checked into the repository.
pub const POLICY_TOML: &str = include_str!("../../policy/seccomp.toml");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("seccomp policy is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("seccomp policy: {0}")]
    Invalid(String),
    #[error("seccomp policy does not compile: {0}")]
    Compile(String),
    #[error("seccomp is not supported on this architecture")]
    Arch,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub default_errno: u32,
    #[serde(default)]
    pub group: Vec<Group>,
    #[serde(default)]
    pub conditional: Vec<Conditional>,
    #[serde(default)]
    pub errno: Vec<ErrnoRule>,
    pub denied: Denied,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub why: String,
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditional {
    pub syscall: String,
    pub why: String,
    pub arg: u8,
    pub width: u8,
    pub mask: u64,
    #[serde(default)]
    pub values: Vec<u64>,
    #[serde(default)]
    pub not_values: Vec<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrnoRule {
    pub syscall: String,
    pub why: String,
    pub errno: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Denied {
    pub syscalls: Vec<String>,
}

/// One BPF instruction as plain numbers (`code`, `jt`, `jf`, `k`), so it can cross the pipe.
pub type Insn = (u16, u8, u8, u32);

/// The compiled filters, in installation order (the last installed wins ties on errno).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub programs: Vec<Vec<Insn>>,
    /// Syscall names of the policy that this architecture does not have.
    pub skipped: Vec<String>,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text)?;
        policy.check()?;
        Ok(policy)
    }

    /// Every name the policy allows, plain or conditionally.
    pub fn allowed_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .group
            .iter()
            .flat_map(|g| g.allow.iter().map(String::as_str))
            .collect();
        names.extend(self.conditional.iter().map(|c| c.syscall.as_str()));
        names
    }

    fn check(&self) -> Result<(), PolicyError> {
        let allowed = self.allowed_names();
        for name in &self.denied.syscalls {
            if allowed.contains(&name.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "`{name}` is both in [denied] and allowed"
                )));
            }
        }
        let plain: Vec<&str> = self
            .group
            .iter()
            .flat_map(|g| g.allow.iter().map(String::as_str))
            .collect();
        for c in &self.conditional {
            // An unconditional allow would win over the argument check (in libseccomp too).
            if plain.contains(&c.syscall.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "`{}` is both allowed plainly and conditional",
                    c.syscall
                )));
            }
        }
        for e in &self.errno {
            if allowed.contains(&e.syscall.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "`{}` has an errno override but is allowed",
                    e.syscall
                )));
            }
        }
        for group in &self.group {
            if group.why.trim().is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "group `{}` has no `why`",
                    group.name
                )));
            }
        }
        for c in &self.conditional {
            if c.why.trim().is_empty() || (c.values.is_empty() == c.not_values.is_empty()) {
                return Err(PolicyError::Invalid(format!(
                    "conditional `{}` needs a `why` and exactly one of values/not_values",
                    c.syscall
                )));
            }
            if c.width != 32 && c.width != 64 {
                return Err(PolicyError::Invalid(format!(
                    "conditional `{}`: width must be 32 or 64",
                    c.syscall
                )));
            }
        }
        Ok(())
    }

    fn allow_json(&self, skip: &[String]) -> serde_json::Value {
        let mut rules = Vec::new();
        for name in self.group.iter().flat_map(|g| g.allow.iter()) {
            if !skip.contains(name) {
                rules.push(json!({ "syscall": name }));
            }
        }
        for c in &self.conditional {
            if skip.contains(&c.syscall) {
                continue;
            }
            let ty = if c.width == 32 { "dword" } else { "qword" };
            if c.values.is_empty() {
                // AND of "not equal" conditions in one rule.
                let args: Vec<_> = c
                    .not_values
                    .iter()
                    .map(|v| json!({"index": c.arg, "type": ty, "op": "ne", "val": v}))
                    .collect();
                rules.push(json!({ "syscall": c.syscall, "args": args }));
            } else {
                // OR of rules, one per accepted value.
                for v in &c.values {
                    rules.push(json!({
                        "syscall": c.syscall,
                        "args": [{"index": c.arg, "type": ty, "op": {"masked_eq": c.mask}, "val": v}],
                    }));
                }
            }
        }
        json!({
            "allow": {
                "mismatch_action": {"errno": self.default_errno},
                "match_action": "allow",
                "filter": rules,
            }
        })
    }

    fn errno_json(&self, rule: &ErrnoRule) -> serde_json::Value {
        json!({
            "errno": {
                "mismatch_action": "allow",
                "match_action": {"errno": rule.errno},
                "filter": [{ "syscall": rule.syscall }],
            }
        })
    }

    /// The filter the sandbox installs: one program, a binary search over syscall numbers
    /// (see `bpf.rs`).
    pub fn compile(&self) -> Result<Compiled, PolicyError> {
        let arch = target_arch()?;
        let (entries, skipped) = self.verdicts(&|name| syscall_number(name, arch));
        let program =
            super::bpf::generate(super::bpf::native_arch()?, entries, self.default_errno)?;
        Ok(Compiled {
            programs: vec![program],
            skipped,
        })
    }

    /// The same policy compiled by seccompiler (a linear chain, plus one filter per errno
    /// override): the reference the generated tree is checked against.
    pub fn compile_reference(&self) -> Result<Compiled, PolicyError> {
        let arch = target_arch()?;
        let mut skipped: Vec<String> = Vec::new();
        // seccompiler keeps its syscall table private; it names the first unknown syscall in
        // its error, so unknown names are peeled off one by one (they are the
        // architecture-specific legacy calls such as `open` on aarch64).
        let allow = loop {
            let text = self.allow_json(&skipped).to_string();
            match seccompiler::compile_from_json(text.as_bytes(), arch) {
                Ok(map) => break map,
                Err(e) => match unknown_syscall(&e.to_string()) {
                    Some(name) if !skipped.contains(&name) => skipped.push(name),
                    _ => return Err(PolicyError::Compile(e.to_string())),
                },
            }
        };
        let mut programs = vec![to_insns(allow.get("allow"))?];
        for rule in &self.errno {
            let text = self.errno_json(rule).to_string();
            match seccompiler::compile_from_json(text.as_bytes(), arch) {
                Ok(map) => programs.push(to_insns(map.get("errno"))?),
                Err(e) if unknown_syscall(&e.to_string()).is_some() => {
                    skipped.push(rule.syscall.clone())
                }
                Err(e) => return Err(PolicyError::Compile(e.to_string())),
            }
        }
        Ok(Compiled { programs, skipped })
    }
}

/// The number of a syscall on `arch`, from seccompiler's (private) table: compile a one-rule
/// filter and read the number back from its comparison. Done once per name per process.
fn syscall_number(name: &str, arch: seccompiler::TargetArch) -> Option<u32> {
    let text = json!({
        "f": {
            "mismatch_action": "allow",
            "match_action": {"errno": 1},
            "filter": [{ "syscall": name }],
        }
    })
    .to_string();
    let map = seccompiler::compile_from_json(text.as_bytes(), arch).ok()?;
    let prog = map.get("f")?;
    // After the architecture check the program loads the number (ld [0]) and compares it.
    let load = prog.iter().position(|i| i.code == 0x20 && i.k == 0)?;
    prog[load + 1..]
        .iter()
        .find(|i| i.code == 0x15)
        .map(|i| i.k)
}

/// The number of a syscall on the architecture this binary runs on.
#[cfg(test)]
pub(crate) fn native_number(name: &str) -> Option<u32> {
    syscall_number(name, target_arch().ok()?)
}

fn unknown_syscall(message: &str) -> Option<String> {
    let rest = message.split("Invalid syscall name: ").nth(1)?;
    Some(rest.split(" for given arch").next()?.trim().to_string())
}

fn to_insns(program: Option<&seccompiler::BpfProgram>) -> Result<Vec<Insn>, PolicyError> {
    let program = program.ok_or_else(|| PolicyError::Compile("filter missing".into()))?;
    Ok(program.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
}

fn target_arch() -> Result<seccompiler::TargetArch, PolicyError> {
    if cfg!(target_arch = "x86_64") {
        Ok(seccompiler::TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(seccompiler::TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Ok(seccompiler::TargetArch::riscv64)
    } else {
        Err(PolicyError::Arch)
    }
}

/// The repository policy, compiled once per process.
pub fn compiled() -> Result<&'static Compiled, String> {
    static CELL: OnceLock<Result<Compiled, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        Policy::parse(POLICY_TOML)
            .and_then(|p| p.compile())
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Which groups a syscall name belongs to (for error messages and docs).
pub fn groups_of(policy: &Policy) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for g in &policy.group {
        for name in &g.allow {
            out.insert(name.clone(), g.name.clone());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn repository_policy_parses_and_compiles() {
        let policy = Policy::parse(POLICY_TOML).unwrap();
        let compiled = policy.compile().unwrap();
        assert_eq!(compiled.programs.len(), 1);
        let reference = policy.compile_reference().unwrap();
        println!(
            "instructions: generated {} vs seccompiler {:?}",
            compiled.programs[0].len(),
            reference.programs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(
            compiled.programs[0].len() < 1200,
            "{}",
            compiled.programs[0].len()
        );
        if cfg!(target_arch = "x86_64") {
            assert!(
                compiled.skipped.is_empty(),
                "unknown: {:?}",
                compiled.skipped
            );
        }
    }

    #[test]
    fn issue_minimum_is_denied() {
        let policy = Policy::parse(POLICY_TOML).unwrap();
        let allowed = policy.allowed_names();
        for name in [
            "ptrace",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "kexec_load",
            "init_module",
            "finit_module",
            "open_by_handle_at",
            "userfaultfd",
            "io_uring_setup",
            "clone3",
        ] {
            assert!(!allowed.contains(&name), "{name} must not be allowed");
            assert!(
                policy.denied.syscalls.iter().any(|d| d == name),
                "{name} not listed"
            );
        }
    }

    #[test]
    fn a_policy_allowing_a_denied_call_is_rejected() {
        let text = POLICY_TOML.replace("\"getrandom\"", "\"getrandom\", \"ptrace\"");
        assert!(matches!(Policy::parse(&text), Err(PolicyError::Invalid(_))));
    }

    /// The generated search tree must decide exactly like seccompiler's reference filters
    /// for every syscall number and the argument values the conditional rules look at.
    #[test]
    fn generated_tree_matches_the_seccompiler_reference() {
        use crate::native::bpf::{RET_ALLOW, native_arch, run};
        let policy = Policy::parse(POLICY_TOML).unwrap();
        let ours = policy.compile().unwrap();
        let reference = policy.compile_reference().unwrap();
        let audit = native_arch().unwrap().audit;
        let reference_verdict = |nr: u32, args: [u64; 6]| {
            let mut verdict = RET_ALLOW;
            // Later filters win ties between errno actions, and any errno beats allow.
            for prog in &reference.programs {
                let v = run(prog, nr, audit, args);
                if v != RET_ALLOW {
                    verdict = v;
                }
            }
            verdict
        };
        let interesting: Vec<u64> = vec![
            0,
            1,
            2,
            10,
            16,
            17,
            0x11,
            0x5412,
            0x1_0000_5412,
            0x541C,
            0x5413,
            0x10000000 | 17,
            0x20000,
            0x7E020000,
            0x3D0F00,
            0x0040000,
            0xFFFFFFFF,
            0xFFFF_FFFF_FFFF_FFFF,
            0x8_0000_0000,
            u64::from(u32::MAX) + 1,
            // File modes and open flags: setuid/setgid, high-bit and sign-extended spellings,
            // O_CREAT, O_TMPFILE, device and regular file types.
            0o4755,
            0o2755,
            0o755,
            0x1_0000_09ED,
            0xFFFF_FFFF_0000_09ED,
            0xFFFF_FFFF_FFFF_F1ED,
            0x40,
            0x41,
            0x400000,
            0x410000,
            0o100755,
            0o104755,
            0o020644,
            0o060644,
            0o010644,
            0o140644,
        ];
        let mut checked = 0;
        for nr in (0..600u32).chain([0x4000_0000, 0x4000_0001, 0x4000_0038, u32::MAX]) {
            for a in &interesting {
                for slot in 0..4 {
                    let mut args = [0u64; 6];
                    args[slot] = *a;
                    let want = reference_verdict(nr, args);
                    let got = run(&ours.programs[0], nr, audit, args);
                    assert_eq!(
                        got, want,
                        "nr {nr} args {args:x?}: ours {got:#x} reference {want:#x}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 20_000);
        // A foreign architecture is killed, never allowed.
        assert_ne!(run(&ours.programs[0], 0, 0x4000_0003, [0; 6]), RET_ALLOW);
    }

    #[test]
    fn a_conditional_that_is_also_allowed_plainly_is_rejected() {
        // The plain allow would win over the mode check: chmod 4755 would pass again.
        let text = POLICY_TOML.replace("\"getrandom\"", "\"getrandom\", \"chmod\"");
        assert!(matches!(Policy::parse(&text), Err(PolicyError::Invalid(_))));
        let text = POLICY_TOML.replace("\"getrandom\"", "\"getrandom\", \"openat2\"");
        assert!(matches!(Policy::parse(&text), Err(PolicyError::Invalid(_))));
    }

    /// The mode rules decide as intended, on the compiled program itself.
    #[test]
    fn setuid_setgid_modes_and_device_nodes_are_refused() {
        use crate::native::bpf::{RET_ALLOW, native_arch, run};
        let policy = Policy::parse(POLICY_TOML).unwrap();
        let prog = &policy.compile().unwrap().programs[0];
        let audit = native_arch().unwrap().audit;
        let allowed = |name: &str, slot: usize, v: u64, other: (usize, u64)| {
            let nr = native_number(name).unwrap();
            let mut args = [0u64; 6];
            args[other.0] = other.1;
            args[slot] = v;
            run(prog, nr, audit, args) == RET_ALLOW
        };
        let setid = [
            0o4755u64,
            0o2755,
            0o6755,
            0o4000,
            0x1_0000_09ED,
            0xFFFF_FFFF_0000_09ED,
            0xFFFF_FFFF_FFFF_FFFF,
            0x8000_0000_0000_0800,
        ];
        let plain = [
            0o755u64,
            0o644,
            0o1777,
            0,
            0x1_0000_01ED,
            0xFFFF_F000_0000_01ED,
        ];
        let mut mode_calls = vec![("fchmod", 1usize), ("fchmodat", 2), ("fchmodat2", 2)];
        if cfg!(target_arch = "x86_64") {
            mode_calls.extend([("chmod", 1), ("creat", 1)]);
        }
        for (name, slot) in &mode_calls {
            for m in setid {
                assert!(
                    !allowed(name, *slot, m, (5, 0)),
                    "{name} mode {m:#x} allowed"
                );
            }
            for m in plain {
                assert!(
                    allowed(name, *slot, m, (5, 0)),
                    "{name} mode {m:#x} refused"
                );
            }
        }
        let mut open_calls = vec![("openat", 2usize, 3usize)];
        if cfg!(target_arch = "x86_64") {
            open_calls.push(("open", 1, 2));
        }
        for (name, flags, mode) in open_calls {
            for creating in [0x40u64, 0x441, 0x400000 | 0x10000, 0xFFFF_FFFF_0000_0041] {
                for m in setid {
                    assert!(
                        !allowed(name, mode, m, (flags, creating)),
                        "{name} flags {creating:#x} mode {m:#x} allowed"
                    );
                }
                assert!(allowed(name, mode, 0o644, (flags, creating)));
            }
            // Without O_CREAT/O_TMPFILE the mode argument is ignored by the kernel.
            for f in [0u64, 1, 2, 0x80000, 0x1_0000_0000] {
                assert!(allowed(name, mode, 0o4755, (flags, f)), "{name} {f:#x}");
            }
        }
        let mut mknods = vec![("mknodat", 2usize)];
        if cfg!(target_arch = "x86_64") {
            mknods.push(("mknod", 1));
        }
        for (name, slot) in mknods {
            for m in [0o644u64, 0o100644, 0o010644, 0o140755] {
                assert!(allowed(name, slot, m, (5, 0)), "{name} {m:o} refused");
            }
            for m in [
                0o020644u64,
                0o060644,
                0o020000,
                0o104755,
                0o102755,
                0o4755,
                0o010000 | 0o6000,
                0xFFFF_FFFF_0000_2000,
            ] {
                assert!(!allowed(name, slot, m, (5, 0)), "{name} {m:#o} allowed");
            }
        }
        let openat2 = native_number("openat2").unwrap();
        assert_eq!(
            run(prog, openat2, audit, [0; 6]),
            crate::native::bpf::RET_ERRNO | 38
        );
    }

    #[test]
    fn a_typo_is_rejected() {
        let text = POLICY_TOML.replace("\"getrandom\"", "\"getrandomm\"");
        let policy = Policy::parse(&text).unwrap();
        // Unknown on every architecture: compile skips it, and the test below catches that.
        let compiled = policy.compile().unwrap();
        assert_eq!(compiled.skipped, vec!["getrandomm".to_string()]);
    }
}
