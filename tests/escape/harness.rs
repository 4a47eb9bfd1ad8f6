// The escape battery's fixture and judge, shared (with `include!`, after cases.rs) by both
// runners: the throwaway tree each case attacks, the prologue every step starts with (tool
// probe, control write), the evidence checked from the host afterwards, and the verdict.
// Paths are written out in full so the including files need no particular imports.

const TOKEN: &str = "sc-other-step-token-5f2d8a";
const HOST_TOKEN: &str = "sc-host-process-token-9c41e7";
/// What the prologue prints to stderr (and exits 97 with) when a tool is missing.
const PROBE_MISSING: &str = "sc-probe: missing tool";
/// What the prologue prints to stderr (and exits 98 with) when the workspace is not writable.
const CONTROL_FAILED: &str = "sc-control: the workspace is not writable";
/// What a script prints when its attack worked (the harness adds it wherever a script touches
/// `PWNED`): evidence that outlives an engine rolling the step's files back.
const ATTACK_WORKED: &str = "sc-attack-worked";
/// The file the prologue writes in the workspace and reads back.
const CONTROL_FILE: &str = ".sc-control";
/// Error texts that mean the attack never ran, whatever else the step printed.
const NEVER_RAN: &[&str] = &[": not found", "applet not found", "Can't locate", "syntax error"];

/// One case's world: a workspace with a `.git`, a canary directory beside it ({OUT}), a state
/// dir with a planted key ({STATE}), a host loopback listener counting connections ({PORT}), a
/// host process outside any sandbox ({HOSTPID}) and, for the cases that read one, a host
/// block device ({BLOCKDEV}).
#[allow(dead_code)] // `base` is used by the binary runner only
struct Env {
    _root: tempfile::TempDir,
    base: std::path::PathBuf,
    ws: std::path::PathBuf,
    out: std::path::PathBuf,
    state: std::path::PathBuf,
    port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    victim: std::process::Child,
    block_device: Option<String>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.victim.kill();
        let _ = self.victim.wait();
        if let Some(dev) = &self.block_device {
            let _ = std::process::Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

fn setup() -> Env {
    let root = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(root.path()).unwrap();
    // A sandbox user must be able to reach the workspace (a private parent is a separate
    // concern, tested on its own): the battery attacks from an ordinary layout.
    std::fs::set_permissions(
        &base,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ws = base.join("ws");
    let out = base.join("outside");
    let state = base.join("state");
    std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
    std::fs::write(ws.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(out.join("ssh")).unwrap();
    std::fs::write(out.join("secret.txt"), "host secret\n").unwrap();
    std::fs::write(
        out.join("ssh/id_ed25519"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("vault.key"), "key material\n").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // A host process outside any sandbox: its cwd is the canary dir, its environment holds a
    // secret.
    let victim = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(&out)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SC_HOST_SECRET", HOST_TOKEN)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Env {
        _root: root,
        base,
        ws,
        out,
        state,
        port,
        hits,
        victim,
        block_device: None,
    }
}

/// The world for `case`: [`setup`], plus a host block device when the case reads one.
fn setup_case(case: &Case) -> Env {
    let mut env = setup();
    if case.script.contains("{BLOCKDEV}") {
        // A read-only loop device over a scratch file: a real block device of the host that
        // root can read (the machine's own disks may be closed even to root).
        let image = env.base.join("blockdev.img");
        std::fs::write(&image, vec![0x5a; 1 << 20]).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env.block_device = Some(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }
    env
}

/// The euid of this test process (the owner of what it creates).
fn running_as_root() -> bool {
    let probe = tempfile::tempfile().unwrap();
    std::os::unix::fs::MetadataExt::uid(&probe.metadata().unwrap()) == 0
}

type Tree = std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>;

impl Env {
    /// The canary directory as it is now (paths and contents).
    fn outside(&self) -> Tree {
        let mut map = Tree::new();
        let mut stack = vec![self.out.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                    map.insert(p, Vec::new());
                } else {
                    map.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
                }
            }
        }
        map
    }

    /// Files in the workspace that would hand out privileges later: setuid/setgid bits, device
    /// nodes, file capabilities.
    fn planted(&self) -> Vec<String> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let mut found = Vec::new();
        let mut regular = Vec::new();
        let mut stack = vec![self.ws.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let Ok(md) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                let ft = md.file_type();
                let mode = md.permissions().mode();
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_char_device() || ft.is_block_device() {
                    found.push(format!("device node {}", p.display()));
                } else if ft.is_file() {
                    if mode & 0o6000 != 0 {
                        found.push(format!("{} has mode {:o}", p.display(), mode & 0o7777));
                    }
                    regular.push(p);
                }
            }
        }
        if !regular.is_empty() {
            // lgetxattr(2) through perl (the battery's one host tool): std has no xattrs.
            let out = std::process::Command::new("perl")
                .args([
                    "-e",
                    "for my $p (@ARGV) { my $n = 'security.capability'; my $b = \"\\0\" x 64; \
                     print \"$p\\n\" if syscall(192, $p, $n, $b, 64) > 0 }",
                ])
                .args(&regular)
                .output()
                .unwrap();
            assert!(out.status.success(), "perl lgetxattr probe failed");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                found.push(format!("{line} has a file capability"));
            }
        }
        found
    }

    /// What the attack left behind: the PWNED marker, changes in the canary directory since
    /// `before`, connections on the host listener, privileges planted in the workspace. Empty
    /// means the attack failed.
    fn evidence(&self, before: &Tree) -> Vec<String> {
        let mut evidence = Vec::new();
        if self.ws.join("PWNED").exists() {
            evidence.push("PWNED marker written".to_string());
        }
        let after = self.outside();
        if &after != before {
            let changed: Vec<_> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, _)| k.display().to_string())
                .collect();
            evidence.push(format!("outside dir changed: {changed:?}"));
        }
        if self.hits.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            evidence.push("host listener accepted a connection".to_string());
        }
        evidence.extend(self.planted());
        evidence
    }

    /// The evidence, polled until some shows or `settle` has passed (a late daemon acts after
    /// the step; a loaded machine makes it later still).
    fn settled_evidence(&self, before: &Tree, settle: std::time::Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + settle;
        loop {
            let evidence = self.evidence(before);
            if !evidence.is_empty() || std::time::Instant::now() >= deadline {
                return evidence;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A script with its placeholders filled in.
    fn fill(&self, script: &str) -> String {
        script
            .replace("{OUT}", &self.out.display().to_string())
            .replace("{STATE}", &self.state.display().to_string())
            .replace("{PORT}", &self.port.to_string())
            .replace("{TOKEN}", TOKEN)
            .replace("{HOSTTOKEN}", HOST_TOKEN)
            .replace("{HOSTPID}", &self.victim.id().to_string())
            .replace(
                "{BLOCKDEV}",
                self.block_device.as_deref().unwrap_or("/dev/null-block"),
            )
    }

    /// The step a case runs: the prologue (tool probe, control write read back), then the
    /// attack with its placeholders filled in.
    fn render(&self, case: &Case) -> String {
        let tools = case.tools.join(" ");
        format!(
            "for t in {tools}; do command -v \"$t\" > /dev/null || {{ echo \"{PROBE_MISSING} $t\" >&2; exit 97; }}; done\n\
             echo {control} > {CONTROL_FILE} && cat {CONTROL_FILE} || {{ echo '{CONTROL_FAILED}' >&2; exit 98; }}\n\
             {}",
            self.fill(case.script)
                .replace("touch PWNED", &format!("{{ touch PWNED; echo {ATTACK_WORKED}; }}")),
            control = control_text(case),
        )
    }
}

/// What the control write prints when the step ran and could write to its workspace.
fn control_text(case: &Case) -> String {
    format!("sc-control-ran:{}", case.id)
}

/// How a step ended, as either runner sees it.
struct Observed {
    /// The step exited 0.
    success: bool,
    /// The limit the backend ended the step with, if any.
    limit: Option<Limit>,
    stdout: String,
    stderr: String,
    /// Everything worth printing when the verdict fails.
    detail: String,
}

/// The checks every run of a case must pass before its result means anything: the tools were
/// there, the step ran and could write.
fn proof_of_attack(case: &Case, seen: &Observed) -> Option<String> {
    if seen.stderr.contains(PROBE_MISSING) {
        return Some(format!("{}: a tool is missing, the attack never ran", case.id));
    }
    // A step ended for writing past its budget ran and wrote its workspace: that is the proof,
    // whatever it printed before the backend ended it.
    let wrote_past_budget = matches!(case.blocked, Blocked::Limit(Limit::DiskBudget))
        && seen.limit == Some(Limit::DiskBudget);
    if !wrote_past_budget && !seen.stdout.contains(&control_text(case)) {
        return Some(format!(
            "{}: the step did not run or could not write its workspace",
            case.id
        ));
    }
    None
}

/// The verdict on an isolating backend: no evidence, and the case was blocked the way it
/// declares (not by a missing tool or a typo). Returns the failures.
fn judge_isolated(case: &Case, seen: &Observed, evidence: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(f) = proof_of_attack(case, seen) {
        failures.push(f);
    }
    if !evidence.is_empty() {
        failures.push(format!("{}: ESCAPED {evidence:?}", case.id));
    }
    if seen.stdout.contains(ATTACK_WORKED) {
        failures.push(format!(
            "{}: ESCAPED: the attack worked inside the step (whatever was undone afterwards)",
            case.id
        ));
    }
    if let Some(marker) = NEVER_RAN.iter().find(|m| seen.stderr.contains(**m)) {
        failures.push(format!(
            "{}: the attack did not run (stderr says {marker:?})",
            case.id
        ));
    }
    match case.blocked {
        Blocked::Error(errors) => {
            if seen.success || !errors.iter().any(|e| seen.stderr.contains(e)) {
                failures.push(format!(
                    "{}: expected the step to fail with one of {errors:?} on stderr",
                    case.id
                ));
            }
        }
        Blocked::Limit(limit) => {
            if seen.limit != Some(limit) {
                failures.push(format!(
                    "{}: expected the backend to end the step ({limit:?}), got {:?}",
                    case.id, seen.limit
                ));
            }
        }
        Blocked::Ran(text) => {
            if !seen.success || !(seen.stdout.contains(text) || seen.stderr.contains(text)) {
                failures.push(format!(
                    "{}: expected the step to succeed printing {text:?}",
                    case.id
                ));
            }
        }
    }
    if !failures.is_empty() {
        failures.push(format!("    {}", seen.detail.replace('\n', "\n    ")));
    }
    failures
}

/// The verdict on `host`: the attack worked (or, for a limit the host keeps too, ran into it).
/// `through_engine`: the step ran through the binary, whose capture refuses plants after every
/// step (`engine_sweeps`): there the attack must work inside the step, and the engine must fail
/// the step and leave nothing behind. Returns the failures.
fn judge_host(
    case: &Case,
    seen: &Observed,
    evidence: &[String],
    through_engine: bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(f) = proof_of_attack(case, seen) {
        failures.push(f);
    }
    match (case.host_enforces, case.blocked) {
        _ if case.engine_sweeps && through_engine => {
            if !seen.stdout.contains(ATTACK_WORKED) {
                failures.push(format!(
                    "{}: the attack should work inside a host step",
                    case.id
                ));
            }
            if seen.success || !evidence.is_empty() {
                failures.push(format!(
                    "{}: the engine should refuse what the step left and undo it (step succeeded: {}, left {evidence:?})",
                    case.id, seen.success
                ));
            }
        }
        (true, Blocked::Limit(limit)) => {
            if seen.limit != Some(limit) {
                failures.push(format!(
                    "{}: on host the step should run into its limit ({limit:?}), got {:?}",
                    case.id, seen.limit
                ));
            }
        }
        _ => {
            if evidence.is_empty() {
                failures.push(format!("{}: the attack should succeed on host", case.id));
            }
        }
    }
    if !failures.is_empty() {
        failures.push(format!("    {}", seen.detail.replace('\n', "\n    ")));
    }
    failures
}

/// Whether the host runner can require `case`: false (with the reason) when the host lacks
/// what the attack needs.
fn host_applicable(case: &Case) -> Result<(), String> {
    if !case.host_needs.is_empty() && !std::path::Path::new(case.host_needs).exists() {
        return Err(format!(
            "{}: not applicable on this host ({} does not exist)",
            case.id, case.host_needs
        ));
    }
    Ok(())
}

/// The last line a step printed on stderr (where its refusal is), for the battery's log.
fn last_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

/// The verdict on the control step: it ran, wrote, and its evidence reached the host.
fn judge_control(backend: &str, seen: &Observed, evidence: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(f) = proof_of_attack(&CONTROL, seen) {
        failures.push(f);
    }
    if !seen.success || !evidence.iter().any(|e| e.contains("PWNED")) {
        failures.push(format!(
            "control: on {backend} a step's own write must reach the host (evidence {evidence:?})\n    {}",
            seen.detail.replace('\n', "\n    ")
        ));
    }
    failures
}
