//! Reading a vault that another process holds open for writing.
//!
//! redb locks its file: while a process (a `secureclaw run`, a server) holds the vault writable,
//! no other process can open the database, not even read-only. So the process that opens the
//! vault writable also serves a unix socket, `STATE/vault.sock` (mode 0600, peers of another uid
//! refused), that answers one request: a snapshot of the sealed database taken inside one redb
//! read transaction (MVCC: it never blocks the owner's writers). It holds only what the file
//! holds: ciphertext under keyed-hash names, plain counters. A reader still needs the key (the
//! passphrase or the agent) to make anything of it, checks it against the sealed key-check row
//! exactly as for a file it opened itself, and loads the snapshot into an in-memory redb, so
//! every read path (store, ledger, status) runs unchanged on one consistent view.
//!
//! Wire format (all integers little-endian, `lp(x)` = u64 length then the bytes):
//!
//! ```text
//! client -> server   0x01                         (snapshot request)
//! server -> client   "SCVS1\0" vault_id[16]
//!                    { kind:u8 lp(table name) { 0x01 lp(key) lp(value) }* 0x00 }*  0x00
//! ```
//!
//! `kind` is 1 for `meta` (UTF-8 keys), 2 for `ledger` (u64 keys, 8 bytes), 3 for a sealed store
//! table (byte keys). Anything else in the stream ends the read with an error.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition, TableHandle as _};

use crate::Inner;
use crate::error::VaultError;
use crate::store::{LEDGER, META};

/// The read socket's file name in the state directory.
pub const SOCKET_FILE: &str = "vault.sock";

const MAGIC: &[u8; 6] = b"SCVS1\0";
const OP_SNAPSHOT: u8 = 1;
const KIND_META: u8 = 1;
const KIND_LEDGER: u8 = 2;
const KIND_STORE: u8 = 3;
const ROW: u8 = 1;
const END: u8 = 0;
/// Bounds a reader applies to what a socket sends (a real table name is 34 bytes, a row key 32,
/// a value is one sealed record).
const MAX_NAME: u64 = 256;
const MAX_KEY: u64 = 4096;
const MAX_VALUE: u64 = 1 << 30;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The serving side, owned by the writable vault handle: dropping it stops the thread and
/// removes the socket file (when it is still ours).
pub(crate) struct Owner {
    path: PathBuf,
    ino: u64,
    stop: Arc<AtomicBool>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            // Wake the accept loop so the thread sees the flag and ends, then remove the file.
            let _ = UnixStream::connect(&self.path);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` holds a socket nobody answers on (its owner died without removing it).
pub fn is_stale_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && UnixStream::connect(path).is_err()
}

/// Starts serving sealed snapshots of `inner`'s database. `None` when the socket cannot be
/// made (a path too long for a unix socket, something that is not a socket in the way): the
/// owner works as before, readers then get [`VaultError::Locked`] naming its pid.
pub(crate) fn serve(inner: &Arc<Inner>) -> Option<Owner> {
    let path = inner.dir.join(SOCKET_FILE);
    // Whoever holds the database lock is the only legitimate server, and that is us now: a
    // socket left in the way is stale (its owner was killed). Anything else is left alone.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path).ok()?,
        Ok(_) => return None,
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path).ok()?;
    let ok = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).is_ok();
    let ino = std::fs::symlink_metadata(&path).ok()?.ino();
    let owner = Owner {
        path,
        ino,
        stop: Arc::new(AtomicBool::new(false)),
    };
    if !ok {
        return None; // dropping `owner` removes the socket
    }
    let weak = Arc::downgrade(inner);
    let stop = owner.stop.clone();
    std::thread::Builder::new()
        .name("vault-read-socket".into())
        .spawn(move || accept_loop(&listener, &weak, &stop))
        .ok()?;
    Some(owner)
}

fn accept_loop(listener: &UnixListener, weak: &Weak<Inner>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        if !same_uid(&stream) {
            continue; // dropped unanswered
        }
        // This process's own handles never read through the socket (the client refuses its
        // own process): answering would only keep the database open in this thread a moment
        // after the handle that owns it was dropped.
        if rustix::net::sockopt::socket_peercred(&stream)
            .is_ok_and(|c| c.pid == rustix::process::getpid())
        {
            continue;
        }
        let Some(inner) = weak.upgrade() else { return };
        // A failed or aborted answer only ends that connection; the reader sees a short stream.
        let answered = serve_one(&inner, &stream);
        // The last byte goes out only after this thread let go of the database: a reader that
        // got a whole snapshot and then sees its owner close it must find the file unlocked,
        // not still held for a moment by this thread.
        drop(inner);
        if answered.is_ok() {
            let _ = (&stream).write_all(&[END]);
        }
    }
}

/// The peer runs as our effective uid.
pub(crate) fn same_uid(stream: &UnixStream) -> bool {
    rustix::net::sockopt::socket_peercred(stream).is_ok_and(|c| c.uid == rustix::process::geteuid())
}

/// Why an answer was cut short (the reader only sees a short stream, so no detail is kept).
#[derive(Debug)]
struct ServeError;

impl<E: Into<redb::Error>> From<E> for ServeError {
    fn from(_: E) -> Self {
        Self
    }
}

fn io(_: std::io::Error) -> ServeError {
    ServeError
}

/// Writes a snapshot of `inner`'s database, all but its final [`END`] byte.
fn serve_one(inner: &Inner, stream: &UnixStream) -> Result<(), ServeError> {
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let mut op = [0u8; 1];
    let mut reader = stream;
    reader.read_exact(&mut op).map_err(io)?;
    if op[0] != OP_SNAPSHOT {
        return Ok(());
    }
    let crate::Db::Writable(db) = &inner.db else {
        return Ok(());
    };
    let txn = db.begin_read()?;
    let mut out = BufWriter::new(stream);
    out.write_all(MAGIC).map_err(io)?;
    out.write_all(&inner.keys.vault_id).map_err(io)?;
    let mut names: Vec<String> = txn.list_tables()?.map(|h| h.name().to_owned()).collect();
    names.sort();
    for name in names {
        if name == "meta" {
            table_start(&mut out, KIND_META, &name)?;
            for row in txn.open_table(META)?.iter()? {
                let (k, v) = row?;
                write_row(&mut out, k.value().as_bytes(), v.value())?;
            }
        } else if name == "ledger" {
            table_start(&mut out, KIND_LEDGER, &name)?;
            for row in txn.open_table(LEDGER)?.iter()? {
                let (k, v) = row?;
                write_row(&mut out, &k.value().to_le_bytes(), v.value())?;
            }
        } else if name.starts_with("t_") {
            table_start(&mut out, KIND_STORE, &name)?;
            let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&name);
            for row in txn.open_table(def)?.iter()? {
                let (k, v) = row?;
                write_row(&mut out, k.value(), v.value())?;
            }
        } else {
            continue; // not a table this version knows how to copy
        }
        out.write_all(&[END]).map_err(io)?;
    }
    out.flush().map_err(io)
}

fn table_start(out: &mut impl Write, kind: u8, name: &str) -> Result<(), ServeError> {
    out.write_all(&[kind]).map_err(io)?;
    write_lp(out, name.as_bytes())
}

fn write_row(out: &mut impl Write, k: &[u8], v: &[u8]) -> Result<(), ServeError> {
    out.write_all(&[ROW]).map_err(io)?;
    write_lp(out, k)?;
    write_lp(out, v)
}

fn write_lp(out: &mut impl Write, b: &[u8]) -> Result<(), ServeError> {
    out.write_all(&(b.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(b).map_err(io)
}

/// Asks the process holding `dir`'s database for a snapshot and loads it into an in-memory
/// database. Every failure to get one is [`VaultError::Locked`] naming the holder.
pub(crate) fn fetch(
    dir: &Path,
    db_path: &Path,
    vault_id: &[u8; 16],
) -> Result<redb::Database, VaultError> {
    let locked = |why: &str| VaultError::Locked {
        path: db_path.to_path_buf(),
        pid: holder_pid(db_path),
        why: why.to_owned(),
    };
    let path = dir.join(SOCKET_FILE);
    let stream = UnixStream::connect(&path).map_err(|e| {
        locked(&match e.kind() {
            std::io::ErrorKind::NotFound => "it serves no read socket".to_owned(),
            std::io::ErrorKind::ConnectionRefused => {
                format!("its read socket {} is stale", path.display())
            }
            _ => format!("its read socket {} does not answer: {e}", path.display()),
        })
    })?;
    let cred = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| locked(&format!("cannot identify the read socket's process: {e}")))?;
    if cred.uid != rustix::process::geteuid() {
        return Err(locked("its read socket belongs to another user"));
    }
    if cred.pid == rustix::process::getpid() {
        return Err(locked("that is this process itself"));
    }
    let short = |e: std::io::Error| locked(&format!("reading its read socket failed: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(short)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(short)?;
    (&stream).write_all(&[OP_SNAPSHOT]).map_err(short)?;
    let mut r = BufReader::new(&stream);
    let mut magic = [0u8; 6];
    r.read_exact(&mut magic).map_err(short)?;
    let mut id = [0u8; 16];
    r.read_exact(&mut id).map_err(short)?;
    if &magic != MAGIC || &id != vault_id {
        return Err(locked("its read socket serves another vault"));
    }
    let bad = |what: &str| locked(&format!("its read socket sent {what}"));
    let mem = redb::Builder::new()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map_err(|e| crate::error::storage(db_path, e))?;
    let db_err = |e: redb::Error| crate::error::storage(db_path, e);
    let txn = mem.begin_write().map_err(|e| db_err(e.into()))?;
    loop {
        let kind = read_u8(&mut r).map_err(short)?;
        if kind == END {
            break;
        }
        let name = String::from_utf8(read_lp(&mut r, MAX_NAME).map_err(short)?)
            .map_err(|_| bad("a table name that is not UTF-8"))?;
        match (kind, name.as_str()) {
            (KIND_META, "meta") => {
                let mut t = txn.open_table(META).map_err(|e| db_err(e.into()))?;
                while let Some((k, v)) = read_row(&mut r).map_err(short)? {
                    let k =
                        String::from_utf8(k).map_err(|_| bad("a meta key that is not UTF-8"))?;
                    t.insert(k.as_str(), v.as_slice())
                        .map_err(|e| db_err(e.into()))?;
                }
            }
            (KIND_LEDGER, "ledger") => {
                let mut t = txn.open_table(LEDGER).map_err(|e| db_err(e.into()))?;
                while let Some((k, v)) = read_row(&mut r).map_err(short)? {
                    let seq: [u8; 8] = k.try_into().map_err(|_| bad("a malformed ledger key"))?;
                    t.insert(u64::from_le_bytes(seq), v.as_slice())
                        .map_err(|e| db_err(e.into()))?;
                }
            }
            (KIND_STORE, n) if n.starts_with("t_") => {
                let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(n);
                let mut t = txn.open_table(def).map_err(|e| db_err(e.into()))?;
                while let Some((k, v)) = read_row(&mut r).map_err(short)? {
                    t.insert(k.as_slice(), v.as_slice())
                        .map_err(|e| db_err(e.into()))?;
                }
            }
            _ => return Err(bad(&format!("an unexpected table {name:?}"))),
        }
    }
    txn.commit().map_err(|e| db_err(e.into()))?;
    Ok(mem)
}

fn read_u8(r: &mut impl Read) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_lp(r: &mut impl Read, max: u64) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a field of {len} bytes (at most {max} expected)"),
        ));
    }
    let mut out = Vec::new();
    r.take(len).read_to_end(&mut out)?;
    if out.len() as u64 != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(out)
}

fn read_row(r: &mut impl Read) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    match read_u8(r)? {
        END => Ok(None),
        ROW => Ok(Some((read_lp(r, MAX_KEY)?, read_lp(r, MAX_VALUE)?))),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected marker {other}"),
        )),
    }
}

/// The pid holding a lock on `db_path`, from `/proc/locks` (Linux); `None` when unknown.
pub(crate) fn holder_pid(db_path: &Path) -> Option<u32> {
    let m = std::fs::metadata(db_path).ok()?;
    let dev = m.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        m.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END"; waiters carry an extra "->".
        if f.get(1) == Some(&"->") || f.get(5) != Some(&want.as_str()) {
            return None;
        }
        f.get(4)?.parse().ok()
    })
}

/// `pid (comm)` for a message.
pub(crate) fn describe_pid(pid: u32) -> String {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => format!("process {pid} ({})", comm.trim()),
        Err(_) => format!("process {pid}"),
    }
}
