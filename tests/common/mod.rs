//! Shared by the end-to-end tests: the real `secureclaw` binary with a throwaway vault setup.
#![allow(dead_code)] // a test binary beside tests/cli (one not folded in yet) uses a subset

pub mod docker_skip;
pub mod fake_anthropic;

use std::path::Path;
use std::process::Command;

pub const TEST_PASSPHRASE: &str = "test passphrase";

/// The binary with a known passphrase and cheap Argon2 (the default parameters are tested in
/// the vault crate; here they would only make every command slow).
pub fn secureclaw() -> Command {
    secureclaw_with_passphrase(TEST_PASSPHRASE)
}

pub fn secureclaw_with_passphrase(pass: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_secureclaw"));
    with_vault_env(&mut c, pass);
    c
}

/// The same environment for a command that runs the binary indirectly (e.g. under `script`).
pub fn with_vault_env<'a>(c: &'a mut Command, pass: &str) -> &'a mut Command {
    // A state dir from the developer's own environment must not leak into a test.
    c.env("SECURECLAW_PASSPHRASE", pass)
        // Test servers stand in for `hook.test` on loopback (an operator pin, like curl's
        // --resolve): without the pin, http steps and the egress proxy refuse loopback.
        .env("SECURECLAW_EGRESS_RESOLVE", "hook.test=127.0.0.1")
        .env("ARGON2_MEMORY_KB", "256")
        .env("ARGON2_ITERATIONS", "1")
        .env_remove("SECURECLAW_STATE_DIR")
}

/// Bytes as text (lossy), for messages and matching.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A command's stderr as text.
pub fn stderr(out: &std::process::Output) -> String {
    text(&out.stderr)
}

/// A command's stdout and stderr, labelled, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Step cgroup directories created by the engine with this pid, in every mounted cgroup
/// hierarchy (v1 controllers and v2).
pub fn step_cgroups_of(pid: u32) -> Vec<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !(right.starts_with("cgroup ") || right.starts_with("cgroup2 ")) {
            continue;
        }
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        if let Ok(entries) = std::fs::read_dir(Path::new(mount).join("secureclaw")) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{pid}-"))
                {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// Every path below `root` (directories included, symlinks listed but never followed), sorted.
pub fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Everything revert must restore, per path below `root` except the state dir: kind, mode,
/// content (length + FNV-1a hash + first bytes), link target. Not mtimes.
pub fn tree_fingerprint(root: &std::path::Path) -> std::collections::BTreeMap<Vec<u8>, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    for p in walk(root) {
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        if rel.starts_with(b".secureclaw") {
            continue;
        }
        let md = std::fs::symlink_metadata(&p).unwrap();
        let mode = md.permissions().mode() & 0o7777;
        let v = if md.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&p).unwrap())
        } else if md.is_dir() {
            format!("dir {mode:o}")
        } else {
            let c = std::fs::read(&p).unwrap();
            let h = c.iter().fold(0xcbf29ce484222325u64, |h, &x| {
                (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
            });
            format!(
                "file {mode:o} {} {h:x} {:x?}",
                c.len(),
                &c[..c.len().min(64)]
            )
        };
        out.insert(rel, v);
    }
    out
}

/// Give a tree to `id`:`id` (the docker backend's step runs as the workspace's owner; a
/// root-owned workspace is idmapped so that the step sees it as 1000:1000).
pub fn chown_tree(dir: &Path, id: u32) {
    std::os::unix::fs::lchown(dir, Some(id), Some(id)).unwrap();
    if std::fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            chown_tree(&e.unwrap().path(), id);
        }
    }
}

/// Build the docker backend's default image offline through the CLI, once per test run;
/// returns what `build-image` printed (`TAG ID`).
pub fn build_default_image() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = secureclaw()
                .args(["sandbox", "build-image"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .clone()
}

/// A throwaway workspace that holds its workflow file and runs it with fixed arguments (the
/// backend, approvals) through the real binary.
pub struct Workspace {
    dir: tempfile::TempDir,
    run_args: &'static [&'static str],
}

impl Workspace {
    pub fn new(run_args: &'static [&'static str]) -> Self {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
            run_args,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn workflow(&self, text: &str) -> std::path::PathBuf {
        let p = self.path().join("wf.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn run(&self, wf: &Path, extra: &[&str]) -> std::process::Output {
        secureclaw()
            .arg("run")
            .arg(wf)
            .arg("--workspace")
            .arg(self.path())
            .args(self.run_args)
            .args(extra)
            .output()
            .unwrap()
    }

    /// The last run's record (`show last --json`).
    pub fn show(&self) -> serde_json::Value {
        let out = secureclaw()
            .args(["show", "last", "--json", "--state-dir"])
            .arg(self.path().join(".secureclaw"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// One step of a run record, by id.
pub fn step<'a>(record: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

/// Starts `secureclaw run` of one 60 s docker step in `ws` and waits (bounded) until
/// `started(engine pid)` says the step is up: the engine is returned for the test to kill.
pub fn start_long_docker_run(
    ws: &Path,
    what: &str,
    started: impl Fn(u32) -> bool,
) -> std::process::Child {
    let wf = ws.join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: long\nsteps:\n  - { id: a, shell: \"sleep 60\" }\n",
    )
    .unwrap();
    let mut engine = secureclaw()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws)
        .args(["--sandbox", "docker"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = engine.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started(pid) {
        if std::time::Instant::now() >= deadline {
            let _ = engine.kill();
            panic!("{what} never appeared");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    engine
}
