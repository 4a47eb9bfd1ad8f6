//! The unlock agent: holds vault master keys in memory so that commands skip the passphrase and
//! the Argon2id work (like ssh-agent).
//!
//! `secureclaw unlock` derives a vault's master key once (Argon2id of the passphrase, checked
//! against the header's key-check value) and hands it to an agent process listening on
//! `$XDG_RUNTIME_DIR/secureclaw/agent.sock` (else `/tmp/secureclaw-<uid>/agent.sock`; the
//! directory 0700 and owned by the user, the socket 0600). The agent keeps one key per vault id,
//! in memory it asks the kernel to lock (`mlockall`) in a process that is not dumpable
//! (`PR_SET_DUMPABLE 0`: no core file, no ptrace by other same-uid processes), and drops it,
//! zeroised, after its idle timeout or on `secureclaw lock`; with no key left the agent exits.
//! The key only ever crosses the socket; nothing of it is written to a file.
//!
//! Whoever can connect (only the same uid: both ends check `SO_PEERCRED`) can use an unlocked
//! vault for the agent's lifetime, as with ssh-agent. `SECURECLAW_AGENT=off` makes every open
//! ignore the agent.
//!
//! Wire format: one request per connection, binary, integers little-endian.
//!
//! ```text
//! ADD    0x01 vault_id[16] master_key[32] idle_timeout_secs:u64   -> 0x00
//! GET    0x02 vault_id[16]                                        -> 0x00 master_key[32] | 0x01
//! LOCK   0x03                                                     -> 0x00 (then the agent exits)
//! STATUS 0x04 -> 0x00 pid:u32 memory_locked:u8 n:u32 { vault_id[16] idle_left:u64 timeout:u64 }*n
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::crypto::{KEY_LEN, SecretKey};
use crate::error::VaultError;
use crate::header;

/// Set to `off` to make every open ignore the agent.
pub const ENV_AGENT: &str = "SECURECLAW_AGENT";
/// The socket's file name in [`socket_dir`].
pub const SOCKET_FILE: &str = "agent.sock";
/// The default idle timeout of a key.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long a freshly started agent waits for its first key before giving up.
const FIRST_KEY_GRACE: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

const OP_ADD: u8 = 1;
const OP_GET: u8 = 2;
const OP_LOCK: u8 = 3;
const OP_STATUS: u8 = 4;
const R_OK: u8 = 0;
const R_NONE: u8 = 1;

/// Failures of the agent and of talking to it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the unlock agent is disabled ({ENV_AGENT}=off)")]
    Disabled,
    #[error("no unlock agent is running (socket {0})")]
    NotRunning(PathBuf),
    #[error("refusing {path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("the unlock agent answered something unexpected: {0}")]
    Protocol(String),
    #[error("the unlock agent did not come up on {0}")]
    StartFailed(PathBuf),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let context = context.into();
    move |source| AgentError::Io { context, source }
}

/// Whether opens consult the agent (`SECURECLAW_AGENT` is not `off`).
pub fn enabled() -> bool {
    std::env::var(ENV_AGENT).map_or(true, |v| !v.eq_ignore_ascii_case("off"))
}

/// The agent's directory: `$XDG_RUNTIME_DIR/secureclaw`, else `/tmp/secureclaw-<uid>`. Not
/// created here.
pub fn socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() && Path::new(&d).is_absolute() => {
            PathBuf::from(d).join("secureclaw")
        }
        _ => PathBuf::from(format!(
            "/tmp/secureclaw-{}",
            rustix::process::geteuid().as_raw()
        )),
    }
}

/// The agent's socket path.
pub fn socket_path() -> PathBuf {
    socket_dir().join(SOCKET_FILE)
}

/// Creates (0700) or checks the agent directory: it must be a real directory owned by us and
/// closed to everyone else, or another user could have planted it (the `/tmp` fallback).
fn prepare_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
    }
    check_dir(dir)
}

fn check_dir(dir: &Path) -> Result<(), AgentError> {
    let m = std::fs::symlink_metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
    let unsafe_dir = |reason: &str| AgentError::Unsafe {
        path: dir.to_path_buf(),
        reason: reason.into(),
    };
    if !m.file_type().is_dir() {
        return Err(unsafe_dir("not a directory"));
    }
    if m.uid() != rustix::process::geteuid().as_raw() {
        return Err(unsafe_dir("owned by another user"));
    }
    if m.mode() & 0o077 != 0 {
        return Err(unsafe_dir("open to other users (mode must be 0700)"));
    }
    Ok(())
}

/// Connects to the agent in `dir` and checks it runs as our uid.
fn connect(dir: &Path) -> Result<UnixStream, AgentError> {
    let path = dir.join(SOCKET_FILE);
    check_dir(dir).map_err(|e| match e {
        AgentError::Io { .. } => AgentError::NotRunning(path.clone()),
        other => other,
    })?;
    let stream = UnixStream::connect(&path).map_err(|_| AgentError::NotRunning(path.clone()))?;
    if !crate::remote::same_uid(&stream) {
        return Err(AgentError::Unsafe {
            path,
            reason: "the agent socket belongs to another user".into(),
        });
    }
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io("agent socket"))?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(io("agent socket"))?;
    Ok(stream)
}

fn send(stream: &UnixStream, req: &[u8]) -> Result<u8, AgentError> {
    let mut s = stream;
    s.write_all(req).map_err(io("writing to the agent"))?;
    let mut code = [0u8; 1];
    s.read_exact(&mut code)
        .map_err(io("reading from the agent"))?;
    Ok(code[0])
}

/// The master key the agent holds for `vault_id`, if any (refreshing its idle timer).
fn get(dir: &Path, vault_id: &[u8; 16]) -> Result<Option<SecretKey>, AgentError> {
    let stream = connect(dir)?;
    let req = Zeroizing::new([&[OP_GET][..], vault_id].concat());
    match send(&stream, &req)? {
        R_OK => {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            (&stream)
                .read_exact(key.as_mut())
                .map_err(io("reading from the agent"))?;
            Ok(Some(key))
        }
        R_NONE => Ok(None),
        other => Err(AgentError::Protocol(format!("answer code {other}"))),
    }
}

/// The root key of the vault described by `hdr`, unwrapped with the agent's master key; `None`
/// when the agent is off, absent, has no key for it, or has one that fails the key check.
pub(crate) fn root_from_agent(
    dir: &Path,
    hdr: &header::Parsed,
) -> Result<Option<SecretKey>, VaultError> {
    if !enabled() {
        return Ok(None);
    }
    let Ok(Some(kek)) = get(&socket_dir(), &hdr.vault_id) else {
        return Ok(None);
    };
    match header::unlock_master(dir, hdr, &kek) {
        Ok(root) => Ok(Some(root)),
        Err(VaultError::WrongPassphrase) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What [`unlock`] did.
#[derive(Debug, Clone)]
pub struct Unlocked {
    pub vault_id: String,
    pub agent_pid: u32,
    pub started_agent: bool,
    pub timeout: Duration,
}

/// Derives the master key of the vault in `state_dir` from `passphrase` (checked against the
/// header) and hands it to the agent, starting the agent with `start` when none answers.
/// `start` must run [`serve`] in a new process (the CLI re-executes itself).
pub fn unlock(
    state_dir: &Path,
    passphrase: &str,
    timeout: Duration,
    start: impl FnOnce() -> std::process::Command,
) -> Result<Unlocked, AgentError> {
    if !enabled() {
        return Err(AgentError::Disabled);
    }
    unlock_in(&socket_dir(), state_dir, passphrase, timeout, start)
}

/// [`unlock`] with the agent in `dir` (the agent `start` runs must use the same directory).
pub fn unlock_in(
    dir: &Path,
    state_dir: &Path,
    passphrase: &str,
    timeout: Duration,
    start: impl FnOnce() -> std::process::Command,
) -> Result<Unlocked, AgentError> {
    let hdr = header::read(state_dir)?;
    let kek = header::derive_master(&hdr, passphrase)?;
    let started_agent = match connect(dir) {
        Ok(_) => false,
        Err(AgentError::NotRunning(path)) => {
            prepare_dir(dir)?;
            let mut cmd = start();
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut child = cmd.spawn().map_err(io("starting the unlock agent"))?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while connect(dir).is_err() {
                if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                    return Err(AgentError::StartFailed(path));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // The agent detaches itself (setsid); it is reaped by init once this process exits.
            drop(child);
            true
        }
        Err(e) => return Err(e),
    };
    let stream = connect(dir)?;
    let req = Zeroizing::new(
        [
            &[OP_ADD][..],
            &hdr.vault_id,
            kek.as_ref(),
            &timeout.as_secs().max(1).to_le_bytes(),
        ]
        .concat(),
    );
    match send(&stream, &req)? {
        R_OK => {}
        other => return Err(AgentError::Protocol(format!("answer code {other}"))),
    }
    let agent_pid = rustix::net::sockopt::socket_peercred(&stream)
        .map(|c| c.pid.as_raw_nonzero().get().unsigned_abs())
        .unwrap_or(0);
    Ok(Unlocked {
        vault_id: hex::encode(hdr.vault_id),
        agent_pid,
        started_agent,
        timeout,
    })
}

/// Drops every key the agent holds and ends it. `Ok(false)` when no agent was running.
pub fn lock() -> Result<bool, AgentError> {
    lock_in(&socket_dir())
}

/// [`lock`] for the agent in `dir`.
pub fn lock_in(dir: &Path) -> Result<bool, AgentError> {
    let stream = match connect(dir) {
        Ok(s) => s,
        Err(AgentError::NotRunning(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    match send(&stream, &[OP_LOCK])? {
        R_OK => Ok(true),
        other => Err(AgentError::Protocol(format!("answer code {other}"))),
    }
}

/// One key the agent holds, as [`status`] reports it (the key itself is never reported).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldKey {
    pub vault_id: String,
    pub idle_left_secs: u64,
    pub timeout_secs: u64,
}

/// What a running agent reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub socket: PathBuf,
    pub memory_locked: bool,
    pub keys: Vec<HeldKey>,
}

/// The running agent's state; `Ok(None)` when none runs.
pub fn status() -> Result<Option<AgentStatus>, AgentError> {
    status_in(&socket_dir())
}

/// [`status`] of the agent in `dir`.
pub fn status_in(dir: &Path) -> Result<Option<AgentStatus>, AgentError> {
    let stream = match connect(dir) {
        Ok(s) => s,
        Err(AgentError::NotRunning(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    match status_over(dir, &stream) {
        // The agent closed the connection as it was ending (its last key dropped or `lock`):
        // it is not running any more.
        Err(AgentError::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(None)
        }
        other => other,
    }
}

fn status_over(
    dir: &Path,
    stream: &std::os::unix::net::UnixStream,
) -> Result<Option<AgentStatus>, AgentError> {
    if send(stream, &[OP_STATUS])? != R_OK {
        return Err(AgentError::Protocol("status refused".into()));
    }
    let mut r = stream;
    let rd = io("reading from the agent");
    let mut head = [0u8; 9];
    r.read_exact(&mut head).map_err(rd)?;
    let pid = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let n = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
    let mut keys = Vec::new();
    for _ in 0..n.min(4096) {
        let mut rec = [0u8; 32];
        r.read_exact(&mut rec)
            .map_err(io("reading from the agent"))?;
        let (id, rest) = rec.split_at(16);
        let (idle, timeout) = rest.split_at(8);
        keys.push(HeldKey {
            vault_id: hex::encode(id),
            idle_left_secs: u64::from_le_bytes(idle.try_into().unwrap_or_default()),
            timeout_secs: u64::from_le_bytes(timeout.try_into().unwrap_or_default()),
        });
    }
    Ok(Some(AgentStatus {
        pid,
        socket: dir.join(SOCKET_FILE),
        memory_locked: head[4] != 0,
        keys,
    }))
}

/// A key in the agent: boxed so that the map moving entries never copies the key bytes.
struct Held {
    key: Box<SecretKey>,
    timeout: Duration,
    last_used: Instant,
}

struct AgentState {
    keys: HashMap<[u8; 16], Held>,
    ever_held: bool,
    started: Instant,
}

/// Runs the agent in this process until its last key is dropped: detaches from the terminal
/// (`setsid`), makes the process non-dumpable, locks its memory, binds the socket and serves.
/// Returns only on a setup failure; a finished agent exits the process with status 0.
pub fn serve() -> Result<std::convert::Infallible, AgentError> {
    // Not dumpable: no core file, and other processes of the same uid cannot ptrace it or read
    // its /proc/PID/mem.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| io("prctl(PR_SET_DUMPABLE, 0)")(e.into()))?;
    use rustix::mm::MlockAllFlags as F;
    // Everything mapped now and later stays in RAM (never swapped). Without the privilege for
    // the current mappings (RLIMIT_MEMLOCK), at least everything allocated from now on.
    let memory_locked = rustix::mm::mlockall(F::CURRENT | F::FUTURE).is_ok()
        || rustix::mm::mlockall(F::FUTURE | F::ONFAULT).is_ok();
    // Leave the caller's session so that closing its terminal does not end the agent; fails
    // only when already a session leader, which is as good.
    let _ = rustix::process::setsid();
    let dir = socket_dir();
    prepare_dir(&dir)?;
    let path = dir.join(SOCKET_FILE);
    if std::fs::symlink_metadata(&path).is_ok() {
        if UnixStream::connect(&path).is_ok() {
            return Err(AgentError::Unsafe {
                path,
                reason: "another agent already answers there".into(),
            });
        }
        std::fs::remove_file(&path).map_err(io(format!("removing stale {}", path.display())))?;
    }
    let listener = UnixListener::bind(&path).map_err(io(format!("binding {}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("restricting {}", path.display())))?;
    let ino = std::fs::symlink_metadata(&path)
        .map_err(io(format!("reading {}", path.display())))?
        .ino();
    let state = Arc::new(Mutex::new(AgentState {
        keys: HashMap::new(),
        ever_held: false,
        started: Instant::now(),
    }));
    let finish = {
        let path = path.clone();
        move |state: &mut AgentState| -> ! {
            state.keys.clear(); // each key is zeroised as it drops
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == ino) {
                let _ = std::fs::remove_file(&path);
            }
            std::process::exit(0)
        }
    };
    {
        let state = state.clone();
        let finish = finish.clone();
        std::thread::Builder::new()
            .name("agent-expiry".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let Ok(mut s) = state.lock() else {
                        std::process::exit(1)
                    };
                    let now = Instant::now();
                    s.keys
                        .retain(|_, h| now.duration_since(h.last_used) < h.timeout);
                    let idle_start = !s.ever_held && s.started.elapsed() > FIRST_KEY_GRACE;
                    if s.keys.is_empty() && (s.ever_held || idle_start) {
                        finish(&mut s);
                    }
                }
            })
            .map_err(io("starting the expiry thread"))?;
    }
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if !crate::remote::same_uid(&stream) {
            continue; // dropped unanswered
        }
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let Ok(mut s) = state.lock() else {
            std::process::exit(1)
        };
        if let Ok(Some(())) = handle(&stream, &mut s, memory_locked) {
            let _ = (&stream).flush();
            drop(stream);
            finish(&mut s);
        }
    }
    Err(AgentError::Protocol("the listener closed".into()))
}

/// Answers one request; `Some(())` when the agent must end (LOCK).
fn handle(
    stream: &UnixStream,
    s: &mut AgentState,
    memory_locked: bool,
) -> std::io::Result<Option<()>> {
    let mut r = stream;
    let mut op = [0u8; 1];
    r.read_exact(&mut op)?;
    match op[0] {
        OP_ADD => {
            let mut id = [0u8; 16];
            r.read_exact(&mut id)?;
            let mut key: Box<SecretKey> = Box::new(Zeroizing::new([0u8; KEY_LEN]));
            r.read_exact(key.as_mut().as_mut())?;
            let mut secs = [0u8; 8];
            r.read_exact(&mut secs)?;
            let timeout = Duration::from_secs(u64::from_le_bytes(secs).max(1));
            s.keys.insert(
                id,
                Held {
                    key,
                    timeout,
                    last_used: Instant::now(),
                },
            );
            s.ever_held = true;
            r.write_all(&[R_OK])?;
        }
        OP_GET => {
            let mut id = [0u8; 16];
            r.read_exact(&mut id)?;
            let now = Instant::now();
            match s.keys.get_mut(&id) {
                Some(h) if now.duration_since(h.last_used) < h.timeout => {
                    h.last_used = now;
                    let mut out = Zeroizing::new([0u8; 1 + KEY_LEN]);
                    out[0] = R_OK;
                    out[1..].copy_from_slice(h.key.as_ref().as_ref());
                    r.write_all(out.as_ref())?;
                }
                _ => r.write_all(&[R_NONE])?,
            }
        }
        OP_LOCK => {
            s.keys.clear();
            r.write_all(&[R_OK])?;
            return Ok(Some(()));
        }
        OP_STATUS => {
            let now = Instant::now();
            let mut out = vec![R_OK];
            out.extend_from_slice(&std::process::id().to_le_bytes());
            out.push(u8::from(memory_locked));
            out.extend_from_slice(&(s.keys.len() as u32).to_le_bytes());
            for (id, h) in &s.keys {
                let left = h.timeout.saturating_sub(now.duration_since(h.last_used));
                out.extend_from_slice(id);
                out.extend_from_slice(&left.as_secs().to_le_bytes());
                out.extend_from_slice(&h.timeout.as_secs().to_le_bytes());
            }
            r.write_all(&out)?;
        }
        _ => {}
    }
    Ok(None)
}
