//! Concurrent readers and the unlock agent, with real processes: a second process
//! (`vault-access-probe`) holds the vault writable or runs the agent, this one reads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FAST, PASS};
use secureclaw_vault::{READ_SOCKET_FILE, Vault, VaultError, agent, is_stale_socket};

const PROBE: &str = env!("CARGO_BIN_EXE_vault-access-probe");
const NOBODY: u32 = 65534;

fn probe() -> Command {
    let mut c = Command::new(PROBE);
    c.env("SECURECLAW_PASSPHRASE", PASS)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove(agent::ENV_AGENT);
    c
}

/// A child process that dies with the test.
struct Proc {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Self { child, out }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    fn wait_for(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.out.read_line(&mut line).unwrap() > 0,
                "child ended before printing {prefix:?}"
            );
            if line.starts_with(prefix) {
                return line.trim().to_owned();
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh vault in a temp dir, closed again so another process can hold it.
fn closed_vault() -> tempfile::TempDir {
    let (dir, v) = common::new_vault();
    drop(v);
    dir
}

fn holder(dir: &Path) -> Proc {
    let mut c = probe();
    c.arg("hold").arg(dir);
    let mut p = Proc::spawn(c);
    p.wait_for("ready");
    p
}

fn run_probe(args: &[&str], uid: Option<u32>, env: &[(&str, &Path)]) -> String {
    let mut c = probe();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(uid) = uid {
        c.uid(uid).gid(uid);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "probe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn socket_of(dir: &Path) -> PathBuf {
    dir.join(READ_SOCKET_FILE)
}

#[test]
fn readers_get_consistent_snapshots_while_another_process_writes() {
    let dir = closed_vault();
    let mut churn = {
        let mut c = probe();
        c.arg("churn").arg(dir.path());
        Proc::spawn(c)
    };
    churn.wait_for("ready");
    churn.wait_for("committed 3");
    // Without the socket this open fails: redb's lock is held by the churning process.
    let mut last = 0;
    for _ in 0..25 {
        let ro = Vault::open_read_only(dir.path(), PASS).unwrap();
        assert!(ro.is_read_only());
        let latest: u64 = String::from_utf8(ro.get("runs", "latest").unwrap().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!(latest >= last, "snapshots went back in time");
        last = latest;
        // Every value and every ledger entry of one snapshot belongs to the same commit.
        let keys = ro.keys("runs").unwrap();
        assert_eq!(
            keys.len() as u64,
            latest + 1,
            "rows of several commits mixed"
        );
        assert_eq!(keys[0], "latest");
        assert_eq!(keys.last(), Some(&format!("r{latest:06}")));
        let report = ro.ledger().verify().unwrap();
        assert_eq!(
            report.entries, latest,
            "ledger and store from different commits"
        );
        assert_eq!(ro.ledger().head().unwrap().count, latest);
        let entries = ro.ledger().entries(None).unwrap();
        assert_eq!(
            entries.last().and_then(|e| e.entry.run.clone()),
            Some(format!("r{latest:06}"))
        );
        // A snapshot is read-only.
        assert!(matches!(
            ro.put("runs", "x", b"y"),
            Err(VaultError::ReadOnly { .. })
        ));
    }
    // The writer kept committing while being read.
    let later: u64 = churn
        .wait_for(&format!("committed {}", last + 5))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(later > last);
    churn.kill();
}

#[test]
fn a_wrong_passphrase_learns_nothing_although_the_owner_serves() {
    let dir = closed_vault();
    let _owner = holder(dir.path());
    assert!(matches!(
        Vault::open_read_only(dir.path(), "not the passphrase"),
        Err(VaultError::WrongPassphrase)
    ));
    // What the socket hands anyone of our uid: the sealed database, and nothing in the clear.
    let mut s = UnixStream::connect(socket_of(dir.path())).unwrap();
    s.write_all(&[1]).unwrap();
    let mut served = Vec::new();
    s.read_to_end(&mut served).unwrap();
    assert!(
        served.len() > 100,
        "the socket served {} bytes",
        served.len()
    );
    for needle in [&b"marker-plaintext-held-by-owner"[..], b"creds", b"runs"] {
        assert!(
            !served.windows(needle.len()).any(|w| w == needle),
            "{} in the clear on the read socket",
            String::from_utf8_lossy(needle)
        );
    }
    // With the passphrase, the same snapshot opens.
    let ro = Vault::open_read_only(dir.path(), PASS).unwrap();
    assert_eq!(
        ro.get("creds", "token").unwrap().unwrap(),
        b"marker-plaintext-held-by-owner"
    );
}

#[test]
fn another_uid_is_refused_by_the_read_socket() {
    let dir = closed_vault();
    let _owner = holder(dir.path());
    let sock = socket_of(dir.path());
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Open the path to everyone so that only the peer-credential check stands in the way.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let s = sock.to_str().unwrap();
    let ours = run_probe(&["probe-read", s], None, &[]);
    assert!(ours != "bytes 0", "the owner's uid got nothing: {ours}");
    assert_eq!(run_probe(&["probe-read", s], Some(NOBODY), &[]), "bytes 0");
}

#[test]
fn stale_sockets_are_replaced_and_a_holder_without_one_is_named() {
    let dir = closed_vault();
    let sock = socket_of(dir.path());
    // A socket left by a killed owner.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(is_stale_socket(&sock));
    let mut owner = holder(dir.path());
    assert!(!is_stale_socket(&sock), "the new owner did not replace it");
    assert!(
        Vault::open_read_only(dir.path(), PASS)
            .unwrap()
            .is_read_only()
    );
    // kill -9: the file stays, nobody answers; the lock went with the process (the database
    // needs recovery, which a reading open does).
    owner.kill();
    assert!(is_stale_socket(&sock));
    drop(Vault::open_for_reading(dir.path(), PASS).unwrap());
    let v = Vault::open(dir.path(), PASS).unwrap();
    assert!(!is_stale_socket(&sock));
    drop(v);
    assert!(!sock.exists(), "a closed owner leaves its socket behind");

    // Something that is not a socket is left alone, and the reader is told who holds the vault.
    std::fs::write(&sock, b"not a socket").unwrap();
    let owner = holder(dir.path());
    let err = Vault::open_read_only(dir.path(), PASS).unwrap_err();
    match &err {
        VaultError::Locked { pid, .. } => assert_eq!(*pid, Some(owner.child.id())),
        other => panic!("expected Locked, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("process {}", owner.child.id())),
        "{msg}"
    );
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
}

#[test]
fn the_same_process_is_not_served_its_own_snapshot() {
    let (dir, _v) = common::new_vault();
    assert!(matches!(
        Vault::open_read_only(dir.path(), PASS),
        Err(VaultError::Locked { pid: Some(p), .. }) if p == std::process::id()
    ));
}

// --- the unlock agent ---

/// A private runtime dir (like $XDG_RUNTIME_DIR) and the agent directory in it.
struct Runtime {
    xdg: tempfile::TempDir,
}

impl Runtime {
    fn new() -> Self {
        Self {
            xdg: tempfile::tempdir().unwrap(),
        }
    }
    fn dir(&self) -> PathBuf {
        self.xdg.path().join("secureclaw")
    }
    fn start(&self) -> impl FnOnce() -> Command + '_ {
        move || {
            let mut c = probe();
            c.arg("agent").env("XDG_RUNTIME_DIR", self.xdg.path());
            c
        }
    }
    fn unlock(&self, state: &Path, pass: &str, timeout: Duration) -> agent::Unlocked {
        agent::unlock_in(&self.dir(), state, pass, timeout, self.start()).unwrap()
    }
    /// `open-agent` in a process that has no passphrase at all.
    fn open_in_child(&self, state: &Path, agent_env: Option<&str>) -> String {
        let mut c = Command::new(PROBE);
        c.arg("open-agent")
            .arg(state)
            .env_remove("SECURECLAW_PASSPHRASE")
            .env("XDG_RUNTIME_DIR", self.xdg.path());
        match agent_env {
            Some(v) => c.env(agent::ENV_AGENT, v),
            None => c.env_remove(agent::ENV_AGENT),
        };
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
    fn wait_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent::status_in(&self.dir()).unwrap().is_some() {
            assert!(Instant::now() < deadline, "the agent is still running");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // A test may have opened the directories up; the client refuses such a directory.
        for d in [self.xdg.path(), self.dir().as_path()] {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        }
        let _ = agent::lock_in(&self.dir());
    }
}

fn vault_with_runs() -> tempfile::TempDir {
    let (dir, v) = common::new_vault();
    v.put("runs", "r1", b"one").unwrap();
    v.put("runs", "r2", b"two").unwrap();
    drop(v);
    dir
}

#[test]
fn unlock_opens_without_a_passphrase_until_lock_or_rekey() {
    let rt = Runtime::new();
    let dir = vault_with_runs();
    assert_eq!(rt.open_in_child(dir.path(), None), "none");
    let u = rt.unlock(dir.path(), PASS, Duration::from_secs(600));
    assert!(u.started_agent);
    let sock = rt.dir().join(agent::SOCKET_FILE);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&rt.dir()), 0o700);
    assert_eq!(mode(&sock), 0o600);
    let st = agent::status_in(&rt.dir()).unwrap().unwrap();
    assert_eq!(st.pid, u.agent_pid);
    assert!(st.memory_locked);
    assert_eq!(st.keys.len(), 1);
    assert_eq!(st.keys[0].vault_id, u.vault_id);

    assert_eq!(rt.open_in_child(dir.path(), None), "opened 2");
    assert_eq!(rt.open_in_child(dir.path(), Some("off")), "none");
    // A second unlock reuses the running agent.
    assert!(
        !rt.unlock(dir.path(), PASS, Duration::from_secs(600))
            .started_agent
    );

    // A changed passphrase makes the held key fail the header's key check: no longer used.
    Vault::open(dir.path(), PASS)
        .unwrap()
        .rekey("a new passphrase", Some(&FAST))
        .unwrap();
    assert_eq!(rt.open_in_child(dir.path(), None), "none");
    rt.unlock(dir.path(), "a new passphrase", Duration::from_secs(600));
    assert_eq!(rt.open_in_child(dir.path(), None), "opened 2");

    assert!(agent::lock_in(&rt.dir()).unwrap());
    rt.wait_gone();
    assert!(!sock.exists());
    assert_eq!(rt.open_in_child(dir.path(), None), "none");
    assert!(!agent::lock_in(&rt.dir()).unwrap(), "lock with no agent");
}

#[test]
fn a_wrong_passphrase_starts_no_agent() {
    let rt = Runtime::new();
    let dir = vault_with_runs();
    let err = agent::unlock_in(
        &rt.dir(),
        dir.path(),
        "wrong",
        Duration::from_secs(60),
        rt.start(),
    )
    .unwrap_err();
    assert!(
        matches!(err, agent::AgentError::Vault(VaultError::WrongPassphrase)),
        "{err:?}"
    );
    assert!(agent::status_in(&rt.dir()).unwrap().is_none());
}

#[test]
fn the_idle_timeout_drops_the_key_and_ends_the_agent() {
    let rt = Runtime::new();
    let dir = vault_with_runs();
    rt.unlock(dir.path(), PASS, Duration::from_secs(1));
    rt.wait_gone();
    assert_eq!(rt.open_in_child(dir.path(), None), "none");
}

#[test]
fn another_uid_is_refused_by_the_agent() {
    let rt = Runtime::new();
    let dir = vault_with_runs();
    let u = rt.unlock(dir.path(), PASS, Duration::from_secs(600));
    let sock = rt.dir().join(agent::SOCKET_FILE);
    // Only the peer-credential check stands in the way once the path is open to everyone.
    for d in [rt.xdg.path(), rt.dir().as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let s = sock.to_str().unwrap();
    let args = ["probe-agent", s, u.vault_id.as_str()];
    assert_eq!(
        run_probe(&args, None, &[]),
        "bytes 33",
        "the owner gets the key"
    );
    assert_eq!(run_probe(&args, Some(NOBODY), &[]), "bytes 0");
    // And a nobody client does not trust a runtime dir that is not its own.
    let err = run_probe_err(&["open-agent", dir.path().to_str().unwrap()], rt.xdg.path());
    assert!(err.is_empty() || err.contains("none"), "{err}");
}

/// `open-agent` as nobody: the vault dir is root's, so the child fails or finds no key; either
/// way it gets no key from root's agent.
fn run_probe_err(args: &[&str], xdg: &Path) -> String {
    let out = probe()
        .args(args)
        .env_remove("SECURECLAW_PASSPHRASE")
        .env("XDG_RUNTIME_DIR", xdg)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!stdout.starts_with("opened"), "nobody opened root's vault");
    stdout
}

#[test]
fn the_key_never_touches_disk() {
    let rt = Runtime::new();
    let dir = vault_with_runs();
    rt.unlock(dir.path(), PASS, Duration::from_secs(600));
    assert_eq!(rt.open_in_child(dir.path(), None), "opened 2");
    // The master key the agent holds, recomputed from the passphrase and the header.
    let hdr: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("vault.header.json")).unwrap())
            .unwrap();
    use base64::Engine as _;
    let salt = base64::engine::general_purpose::STANDARD
        .decode(hdr["kdf"]["salt"].as_str().unwrap())
        .unwrap();
    let mut key = [0u8; 32];
    secureclaw_vault::crypto::argon2id(
        PASS.as_bytes(),
        &salt,
        FAST.memory_kib,
        FAST.iterations,
        FAST.parallelism,
        &[],
        &[],
        &mut key,
    )
    .unwrap();
    let hex_key = hex::encode(key);
    for root in [rt.xdg.path(), dir.path()] {
        for file in files(root) {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            assert!(
                !bytes.windows(32).any(|w| w == key),
                "the key is in {}",
                file.display()
            );
            assert!(
                !bytes.windows(64).any(|w| w == hex_key.as_bytes()),
                "the hex key is in {}",
                file.display()
            );
        }
    }
}

/// Regular files below `root` (not following symlinks), skipping anything unreadable.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() && e.metadata().is_ok_and(|m| m.len() < 64 << 20) {
                out.push(e.path());
            }
        }
    }
    out
}
