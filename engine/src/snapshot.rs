//! Workspace snapshots: manifests, change sets, pre-images in the vault, and restoring them.
//!
//! A [`Manifest`] maps every path under the workspace (except `.git` and the state dir) to its
//! kind, permission bits, content hash and symlink target, plus the stat fields
//! (inode, size, mtime, ctime) that let the next scan skip files that did not move. Every file
//! hashed is also streamed into the vault's encrypted, deduplicated blob store, so any state a
//! manifest describes can be rebuilt: the pre-image of whatever a step changes is already stored
//! before the step runs, without knowing in advance which files a shell command will touch.
//!
//! Cost: a scan is one `lstat` per path; only files whose stat changed since the previous scan
//! are read, hashed and stored (the vault dedups content it already holds).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use secureclaw_vault::{BlobId, Vault, VaultError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod codec;

/// Default cap on one file's size; bigger files make the capture refuse, never skip.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;
/// Environment variable overriding [`DEFAULT_MAX_FILE_BYTES`] (`512MiB`, `2GiB`...).
pub const ENV_MAX_FILE: &str = "SECURECLAW_SNAPSHOT_MAX_FILE";
/// A file whose mtime or ctime is this close to the time of the scan that hashed it may change
/// again within the same timestamp tick (coarse filesystem clocks): its cached hash is not
/// trusted (the "racy git" rule).
const RACY_NS: i128 = 2_000_000_000;
/// Sealed vault table: the last manifest of each workspace (the stat cache).
const CACHE_TABLE: &str = "snapshot_cache";
/// Sealed vault table: the pre-manifest of the step a run is executing (for crash recovery).
const INFLIGHT_TABLE: &str = "snapshot_inflight";
/// Sealed vault table: each step's change set, written by the step itself before the next
/// writer may start, so a crash cannot lose it even if the run record was not saved yet.
const STEPS_TABLE: &str = "snapshot_steps";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A path whose state cannot be captured before a step (so the step cannot be undone).
    #[error(
        "{path}: {why}: its pre-image cannot be captured, so the step is refused (move the file out of the workspace, or raise {ENV_MAX_FILE} for a large one)"
    )]
    Uncapturable { path: PathBuf, why: String },
    #[error("snapshot store: {0}")]
    Vault(#[from] VaultError),
    #[error("{ENV_MAX_FILE}: {0}")]
    Config(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A path relative to the workspace, as raw bytes (names need not be UTF-8). Serialised as a
/// string when it is UTF-8, else as `{"hex": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(pub Vec<u8>);

impl RelPath {
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }
    /// For display: lossy, with control characters (a newline in a name) escaped.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).escape_debug().to_string()
    }
    fn depth(&self) -> usize {
        self.0.iter().filter(|&&b| b == b'/').count()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RelPathRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => RelPathRepr::Text(t.to_string()),
            Err(_) => RelPathRepr::Hex {
                hex: hex::encode(&self.0),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match RelPathRepr::deserialize(d)? {
            RelPathRepr::Text(t) => RelPath(t.into_bytes()),
            RelPathRepr::Hex { hex } => {
                RelPath(hex::decode(hex).map_err(serde::de::Error::custom)?)
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// Special files have no content to capture: they are recorded so a step that leaves one is
    /// seen (and refused), and a user's own can be told apart from a step's.
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl EntryKind {
    fn of(ft: fs::FileType) -> EntryKind {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else if ft.is_char_device() {
            EntryKind::CharDevice
        } else if ft.is_block_device() {
            EntryKind::BlockDevice
        } else {
            EntryKind::File
        }
    }

    /// FIFOs, sockets and device nodes.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDevice | EntryKind::BlockDevice
        )
    }

    fn tag(self) -> u8 {
        match self {
            EntryKind::File => b'f',
            EntryKind::Dir => b'd',
            EntryKind::Symlink => b'l',
            EntryKind::Fifo => b'p',
            EntryKind::Socket => b's',
            EntryKind::CharDevice => b'c',
            EntryKind::BlockDevice => b'b',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "FIFO",
            EntryKind::Socket => "unix socket",
            EntryKind::CharDevice => "character device node",
            EntryKind::BlockDevice => "block device node",
        }
    }
}

/// Set-user-ID and set-group-ID permission bits.
pub const SETID_BITS: u32 = 0o6000;
/// The extended attribute that holds a file's capabilities.
const FILE_CAPS_XATTR: &str = "security.capability";

/// One path's state. `kind`, `mode`, `sha256` and `target` are the state; the rest is the stat
/// cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits (`0o7777`); 0 for symlinks.
    pub mode: u32,
    #[serde(default)]
    pub size: u64,
    /// SHA-256 of the content (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the content is in the vault (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobId>,
    /// The link target, never followed (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RelPath>,
    #[serde(default)]
    pub ino: u64,
    #[serde(default)]
    pub mtime_ns: i128,
    #[serde(default)]
    pub ctime_ns: i128,
    /// The file carries capabilities (`security.capability`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file_caps: bool,
    /// Why this path's content (a file) or listing (a directory) could not be captured: over
    /// the size cap, unreadable. Such a path is never accepted as a step's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncaptured: Option<String>,
}

impl Entry {
    /// What `lstat` alone says about a path; the caller fills in the hash, blob and link target.
    fn stat_only(md: &fs::Metadata) -> Entry {
        let kind = EntryKind::of(md.file_type());
        Entry {
            kind,
            mode: if kind == EntryKind::Symlink {
                0
            } else {
                md.permissions().mode() & 0o7777
            },
            size: if kind == EntryKind::File { md.len() } else { 0 },
            sha256: None,
            blob: None,
            target: None,
            ino: md.ino(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            file_caps: false,
            uncaptured: None,
        }
    }
}

/// Whether a file carries capabilities (never follows a symlink).
fn has_file_caps(path: &Path) -> bool {
    rustix::fs::lgetxattr_query(path, FILE_CAPS_XATTR).is_ok()
}

impl Entry {
    /// Same state (what revert restores and diff shows), ignoring stat-only differences.
    pub fn same_state(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.sha256 == other.sha256
            && self.target == other.target
            && self.file_caps == other.file_caps
    }

    fn same_stat(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.ino == other.ino
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
    }

    pub fn describe(&self) -> String {
        match self.kind {
            EntryKind::File => format!("file {:o}, {} bytes", self.mode, self.size),
            EntryKind::Dir => format!("directory {:o}", self.mode),
            EntryKind::Symlink => format!(
                "symlink -> {}",
                self.target
                    .as_ref()
                    .map(RelPath::display)
                    .unwrap_or_default()
            ),
            k => format!("{} {:o}", k.name(), self.mode),
        }
    }
}

/// Every path of a workspace at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// When the scan started (ns since the epoch); for the racy-timestamp rule.
    #[serde(default)]
    pub scanned_at_ns: i128,
    /// Serialised as a list of `[path, entry]` pairs: a path need not be UTF-8, a JSON key must.
    #[serde(with = "entry_list")]
    pub entries: BTreeMap<RelPath, Entry>,
}

mod entry_list {
    use super::{BTreeMap, Entry, RelPath};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<RelPath, Entry>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<RelPath, Entry>, D::Error> {
        Ok(Vec::<(RelPath, Entry)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

impl Manifest {
    /// SHA-256 over the state of every path (not the stat cache): equal hashes, equal trees.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (p, e) in &self.entries {
            h.update((p.0.len() as u64).to_le_bytes());
            h.update(&p.0);
            h.update([e.kind.tag()]);
            h.update(e.mode.to_le_bytes());
            let s = e.sha256.as_deref().unwrap_or_default().as_bytes();
            h.update((s.len() as u64).to_le_bytes());
            h.update(s);
            let t = e
                .target
                .as_ref()
                .map(|t| t.0.as_slice())
                .unwrap_or_default();
            h.update((t.len() as u64).to_le_bytes());
            h.update(t);
            // Only when set, so manifests without capabilities hash as they always did.
            if e.file_caps {
                h.update(b"caps");
            }
        }
        hex::encode(h.finalize())
    }

    /// The first path whose state could not be captured (its pre-image would be missing).
    pub fn first_uncaptured(&self) -> Option<(&RelPath, &str)> {
        self.entries
            .iter()
            .find_map(|(p, e)| e.uncaptured.as_deref().map(|why| (p, why)))
    }

    /// Refuse a manifest that is to serve as the pre-state of a step or a run.
    pub fn require_captured(&self, root: &Path) -> Result<(), SnapshotError> {
        match self.first_uncaptured() {
            Some((p, why)) => Err(SnapshotError::Uncapturable {
                path: root.join(p.as_path()),
                why: why.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// One path a step changed: its state before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: RelPath,
    pub pre: Option<Entry>,
    pub post: Option<Entry>,
}

impl Change {
    pub fn what(&self) -> &'static str {
        match (&self.pre, &self.post) {
            (None, Some(_)) => "created",
            (Some(_), None) => "deleted",
            (Some(a), Some(b)) if a.kind != b.kind => "replaced",
            (Some(a), Some(b)) if a.sha256 == b.sha256 && a.target == b.target => "mode",
            _ => "modified",
        }
    }
}

/// Everything a step changed, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub changes: Vec<Change>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
    pub fn len(&self) -> usize {
        self.changes.len()
    }
    /// SHA-256 of the canonical JSON of the change set (what the ledger commits to).
    pub fn digest(&self) -> String {
        let v = serde_json::to_value(self).unwrap_or_default();
        hex::encode(Sha256::digest(secureclaw_vault::canonical_json(&v)))
    }
}

/// Something a step left in the workspace that must not stay there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hazard {
    pub path: RelPath,
    pub what: String,
}

impl std::fmt::Display for Hazard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

/// What a step left that no step may leave: a file with a set-user-ID or set-group-ID bit or
/// with file capabilities that it did not have before, a FIFO, socket or device node, and any
/// path whose content or listing could not be captured (so the step could not be undone).
/// A user's own set-id files and special files that the step did not touch are not in the
/// change set, so they are left alone.
pub fn hazards(post: &Manifest, changes: &ChangeSet) -> Vec<Hazard> {
    let mut out = Vec::new();
    for c in &changes.changes {
        let Some(b) = &c.post else { continue };
        let same_file = |a: &Entry| {
            a.kind == EntryKind::File && b.kind == EntryKind::File && a.sha256 == b.sha256
        };
        let mut found = Vec::new();
        match b.kind {
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                found.push(format!("a {} (mode {:o})", b.kind.name(), b.mode));
            }
            // A user's own FIFO or socket whose mode changed is still theirs.
            EntryKind::Fifo | EntryKind::Socket
                if c.pre.as_ref().is_none_or(|a| a.kind != b.kind) =>
            {
                found.push(format!(
                    "a {} (it cannot be captured or restored)",
                    b.kind.name()
                ));
            }
            EntryKind::File => {
                let setid = b.mode & SETID_BITS;
                let had = c
                    .pre
                    .as_ref()
                    .filter(|a| same_file(a))
                    .map_or(0, |a| a.mode & SETID_BITS);
                if setid & !had != 0 {
                    let bits = match setid & !had {
                        0o4000 => "the set-user-ID bit",
                        0o2000 => "the set-group-ID bit",
                        _ => "the set-user-ID and set-group-ID bits",
                    };
                    found.push(format!("{bits} (mode {:o})", b.mode));
                }
                if b.file_caps && !c.pre.as_ref().is_some_and(|a| same_file(a) && a.file_caps) {
                    found.push(format!("file capabilities ({FILE_CAPS_XATTR})"));
                }
            }
            _ => {}
        }
        if !found.is_empty() {
            out.push(Hazard {
                path: c.path.clone(),
                what: found.join(" and "),
            });
        }
    }
    // A directory that could not be listed hides what is in it, whether or not its own state
    // changed.
    for (p, e) in &post.entries {
        if let Some(why) = &e.uncaptured {
            out.push(Hazard {
                path: p.clone(),
                what: format!("{why}: what the step did there cannot be captured"),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| {
        if a.path == b.path {
            b.what = format!("{}; {}", b.what, a.what);
            true
        } else {
            false
        }
    });
    out
}

/// Whether a failed lookup means the path is not there: missing, or under something that is
/// no longer a directory.
fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// The difference between two manifests.
pub fn diff(pre: &Manifest, post: &Manifest) -> ChangeSet {
    let mut changes = Vec::new();
    let mut a = pre.entries.iter().peekable();
    let mut b = post.entries.iter().peekable();
    loop {
        let ord = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((pa, _)), Some((pb, _))) => pa.cmp(pb),
        };
        match ord {
            std::cmp::Ordering::Less => {
                if let Some((p, e)) = a.next() {
                    changes.push(Change {
                        path: p.clone(),
                        pre: Some(e.clone()),
                        post: None,
                    });
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((p, e)) = b.next() {
                    changes.push(Change {
                        path: p.clone(),
                        pre: None,
                        post: Some(e.clone()),
                    });
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((p, ea)), Some((_, eb))) = (a.next(), b.next())
                    && !ea.same_state(eb)
                {
                    changes.push(Change {
                        path: p.clone(),
                        pre: Some(ea.clone()),
                        post: Some(eb.clone()),
                    });
                }
            }
        }
    }
    ChangeSet { changes }
}

/// The entries directly under directory `d` (`d` empty: the root).
fn children_in<'a>(
    entries: &'a BTreeMap<RelPath, Entry>,
    d: &RelPath,
) -> impl Iterator<Item = (&'a RelPath, &'a Entry)> + 'a {
    let mut prefix = d.0.clone();
    if !prefix.is_empty() {
        prefix.push(b'/');
    }
    let plen = prefix.len();
    entries
        .range(RelPath(prefix.clone())..)
        .take_while(move |(p, _)| p.0.starts_with(&prefix))
        .filter(move |(p, _)| !p.0[plen..].contains(&b'/'))
}

/// Drops every entry strictly inside `p` (it is not, or no longer, a directory).
fn remove_inside(entries: &mut BTreeMap<RelPath, Entry>, p: &RelPath) {
    let mut prefix = p.0.clone();
    prefix.push(b'/');
    let inside: Vec<RelPath> = entries
        .range(RelPath(prefix.clone())..)
        .take_while(|(q, _)| q.0.starts_with(&prefix))
        .map(|(q, _)| q.clone())
        .collect();
    for q in inside {
        entries.remove(&q);
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

/// Reads and hashes while the vault streams the content in. Reading past `cap` fails (a file
/// that grows while it is read is refused like one that was large to begin with), and a read
/// error is remembered so it is not mistaken for a failure of the vault.
struct Tee<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
    cap: u64,
    over_cap: bool,
    read_error: Option<String>,
}

impl<R: Read> Tee<R> {
    fn new(inner: R, cap: u64) -> Self {
        Tee {
            inner,
            hasher: Sha256::new(),
            len: 0,
            cap,
            over_cap: false,
            read_error: None,
        }
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.read_error = Some(e.to_string());
                return Err(e);
            }
        };
        self.len += n as u64;
        if self.len > self.cap {
            self.over_cap = true;
            return Err(std::io::Error::other("over the snapshot cap"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// What reading one file gave.
enum Content {
    Captured {
        sha256: String,
        blob: Option<BlobId>,
        len: u64,
    },
    /// It was removed between the listing and the read: it is absent.
    Vanished,
    /// It cannot be captured; why.
    Uncaptured(String),
}

fn too_large(size: u64, cap: u64) -> String {
    format!("{size} bytes, over the snapshot cap of {cap} bytes ({ENV_MAX_FILE})")
}

/// Captures and restores one workspace, with its pre-images in one vault.
#[derive(Clone)]
pub struct Snapshotter {
    vault: Vault,
    root: PathBuf,
    /// Paths never captured nor restored (relative): `.git`, the state dir.
    excluded: Vec<RelPath>,
    max_file: u64,
    /// The last full scan that stored every pre-image, shared by this snapshotter's clones.
    fresh: std::sync::Arc<std::sync::Mutex<Option<FullScan>>>,
    /// Change sets waiting to be committed with the next in-flight record or stat cache.
    pending: std::sync::Arc<std::sync::Mutex<Vec<PendingRow>>>,
    /// Called with each path a scan is about to examine or list (tests change the tree there).
    #[cfg(test)]
    on_entry: Option<ScanHook>,
}

/// A `STEPS_TABLE` row (key, JSON) waiting for the next commit.
type PendingRow = (String, Vec<u8>);

/// When the last full, storing scan ran (see [`Snapshotter::is_fresh`]).
#[derive(Debug, Clone, Copy)]
struct FullScan {
    scanned_at_ns: i128,
    paths: usize,
    ended: std::time::Instant,
    took: std::time::Duration,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.root)
            .field("excluded", &self.excluded)
            .field("max_file", &self.max_file)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
type ScanHook = std::sync::Arc<dyn Fn(&Path, ScanMoment) + Send + Sync>;

#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanMoment {
    Examine,
    List,
}

/// What one scan thread found.
#[derive(Default)]
struct Found {
    entries: Vec<(RelPath, Entry)>,
    /// Directories whose listing failed, and why.
    unlisted: Vec<(RelPath, String)>,
}

impl Snapshotter {
    /// `root` must be canonical. `state_dir` is excluded when it lies inside it.
    pub fn new(vault: Vault, root: &Path, state_dir: &Path) -> Result<Self, SnapshotError> {
        let mut excluded = vec![RelPath(b".git".to_vec())];
        let state = state_dir
            .canonicalize()
            .unwrap_or_else(|_| state_dir.to_path_buf());
        if let Ok(rel) = state.strip_prefix(root)
            && !rel.as_os_str().is_empty()
        {
            excluded.push(RelPath(rel.as_os_str().as_bytes().to_vec()));
        }
        let max_file = match std::env::var(ENV_MAX_FILE) {
            Ok(v) => {
                crate::units::parse_size(&v).map_err(|e| SnapshotError::Config(e.to_string()))?
            }
            Err(_) => DEFAULT_MAX_FILE_BYTES,
        };
        Ok(Self {
            vault,
            root: root.to_path_buf(),
            excluded,
            max_file,
            fresh: Default::default(),
            pending: Default::default(),
            #[cfg(test)]
            on_entry: None,
        })
    }

    pub fn with_max_file(mut self, bytes: u64) -> Self {
        self.max_file = bytes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    pub fn abs(&self, p: &RelPath) -> PathBuf {
        self.root.join(p.as_path())
    }

    /// Whether a parent of `p` is not a real directory (gone, a file, or a symlink): then `p`
    /// does not exist in the tree, whatever a lookup that follows the symlink would find (a
    /// step can replace `d/` by `d -> elsewhere`, or by the loop `d -> d`).
    fn under_a_non_directory(&self, p: &RelPath) -> bool {
        let bytes = &p.0;
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .any(|(i, _)| {
                let parent = RelPath(bytes[..i].to_vec());
                !fs::symlink_metadata(self.abs(&parent)).is_ok_and(|m| m.file_type().is_dir())
            })
    }

    fn is_excluded(&self, p: &RelPath) -> bool {
        self.excluded.contains(p)
    }

    /// Scan the workspace. Files whose stat matches `prev` (and is not racy) keep their hash
    /// and blob; every other file is hashed and stored in the vault.
    ///
    /// A scan does not stop at a path it cannot capture: a file over the cap or unreadable, a
    /// directory that cannot be listed, is recorded with the reason (`Entry::uncaptured`), and
    /// a path removed while the scan runs is simply absent. Callers that need every pre-image
    /// check [`Manifest::require_captured`]. Only a failure of the workspace root or of the
    /// vault is an error.
    pub fn scan(&self, prev: Option<&Manifest>) -> Result<Manifest, SnapshotError> {
        self.scan_with(prev, true)
    }

    /// A scan that hashes but stores nothing: enough to tell what changed since `prev` (for a
    /// rollback, which only needs the pre-images) when the vault itself cannot take more.
    pub fn scan_hash_only(&self, prev: Option<&Manifest>) -> Result<Manifest, SnapshotError> {
        self.scan_with(prev, false)
    }

    fn scan_with(&self, prev: Option<&Manifest>, store: bool) -> Result<Manifest, SnapshotError> {
        self.forget_fresh();
        let started = std::time::Instant::now();
        let scanned_at_ns = now_ns();
        // Directories are scanned by a few threads from a shared queue: a scan is mostly
        // `lstat` latency, which overlaps well.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        let queue = std::sync::Mutex::new(Queue {
            dirs: vec![RelPath(Vec::new())],
            busy: 0,
            failed: false,
        });
        let results: Vec<Result<Found, SnapshotError>> = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..threads)
                .map(|_| sc.spawn(|| self.scan_worker(&queue, prev, store)))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(SnapshotError::Io {
                            path: self.root.clone(),
                            source: std::io::Error::other("a scan thread panicked"),
                        })
                    })
                })
                .collect()
        });
        let mut all = Vec::new();
        let mut unlisted = Vec::new();
        for r in results {
            let found = r?;
            all.extend(found.entries);
            unlisted.extend(found.unlisted);
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut entries: BTreeMap<RelPath, Entry> = all.into_iter().collect();
        for (dir, why) in unlisted {
            if let Some(e) = entries.get_mut(&dir) {
                e.uncaptured = Some(why);
            }
        }
        if store {
            self.set_fresh(Some(FullScan {
                scanned_at_ns,
                paths: entries.len(),
                ended: std::time::Instant::now(),
                took: started.elapsed(),
            }));
        }
        Ok(Manifest {
            scanned_at_ns,
            entries,
        })
    }

    fn set_fresh(&self, f: Option<FullScan>) {
        match self.fresh.lock() {
            Ok(mut g) => *g = f,
            Err(p) => *p.into_inner() = f,
        }
    }

    /// Forget the last full scan: the workspace was changed by us (a restore) or only part of
    /// it was looked at since.
    pub fn forget_fresh(&self) {
        self.set_fresh(None);
    }

    /// Whether `m` is the result of the last full, storing scan of this snapshotter, nothing
    /// was restored or refreshed since, and it ended no longer ago than it took. Such a
    /// manifest may serve as the pre-state of the next writing step instead of a new scan: a
    /// change made by someone else in that window is attributed to the step, as one made while
    /// a scan runs always was (the window is at most doubled). Writers are serialised by the
    /// scheduler, so no step of ours writes in that window.
    pub fn is_fresh(&self, m: &Manifest) -> bool {
        let f = match self.fresh.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        f.is_some_and(|f| {
            f.scanned_at_ns == m.scanned_at_ns
                && f.paths == m.entries.len()
                && f.ended.elapsed() <= f.took
        })
    }

    /// `prev` with `paths` looked at again (and, for each of `dirs`, every direct child of it
    /// and every path `prev` has directly under it), storing the pre-image of every file whose
    /// stat moved (or is racy) when `store`. Everything else is taken from `prev` unchanged.
    ///
    /// This is a capture of a step whose writes are known in advance (an engine-side `write`
    /// or `patch`): it costs what the step touched, not the workspace. A path that cannot be
    /// examined is an error (the caller falls back to a full scan).
    pub fn refresh(
        &self,
        prev: &Manifest,
        paths: &[RelPath],
        dirs: &[RelPath],
        store: bool,
    ) -> Result<Manifest, SnapshotError> {
        self.forget_fresh();
        let mut m = prev.clone();
        let mut todo: Vec<RelPath> = paths.to_vec();
        for d in dirs {
            if self.is_excluded_or_inside(d) {
                continue;
            }
            todo.push(d.clone());
            // What `prev` had there: a child that is gone must be seen as gone.
            todo.extend(children_in(&prev.entries, d).map(|(p, _)| p.clone()));
            let abs = self.abs(d);
            let rd = match fs::read_dir(&abs) {
                Ok(rd) => rd,
                Err(e) if is_absent(&e) => continue,
                Err(e) => {
                    return Err(SnapshotError::Io {
                        path: abs,
                        source: e,
                    });
                }
            };
            for de in rd {
                let de = de.map_err(io(&abs))?;
                let mut rel = d.0.clone();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(de.file_name().as_bytes());
                todo.push(RelPath(rel));
            }
        }
        todo.sort_unstable();
        todo.dedup();
        for p in todo {
            if p.0.is_empty() || self.is_excluded_or_inside(&p) {
                continue;
            }
            let path = self.abs(&p);
            #[cfg(test)]
            if let Some(hook) = &self.on_entry {
                hook(&path, ScanMoment::Examine);
            }
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if is_absent(&e) => {
                    m.entries.remove(&p);
                    remove_inside(&mut m.entries, &p);
                    continue;
                }
                Err(e) => return Err(SnapshotError::Io { path, source: e }),
            };
            let mut e = Entry::stat_only(&md);
            match e.kind {
                EntryKind::Dir => {
                    // A directory that was not one before: what it holds must be listed too.
                    if prev
                        .entries
                        .get(&p)
                        .is_none_or(|k| k.kind != EntryKind::Dir)
                        && !dirs.contains(&p)
                        && fs::read_dir(&path).map_err(io(&path))?.next().is_some()
                    {
                        return Err(SnapshotError::Io {
                            path,
                            source: std::io::Error::other(
                                "a new directory that is not empty: needs a full scan",
                            ),
                        });
                    }
                }
                EntryKind::Symlink => {
                    remove_inside(&mut m.entries, &p);
                    match fs::read_link(&path) {
                        Ok(t) => e.target = Some(RelPath(t.into_os_string().into_vec())),
                        Err(err) if is_absent(&err) => {
                            m.entries.remove(&p);
                            continue;
                        }
                        Err(err) => return Err(SnapshotError::Io { path, source: err }),
                    }
                }
                // Another name of the same inode sees every in-place write (an append): it
                // may be anywhere in the workspace, so only a full scan finds it.
                EntryKind::File if md.nlink() > 1 => {
                    return Err(SnapshotError::Io {
                        path,
                        source: std::io::Error::other("a file with hard links: needs a full scan"),
                    });
                }
                EntryKind::File => {
                    remove_inside(&mut m.entries, &p);
                    let known = prev.entries.get(&p).filter(|c| c.blob.is_some() || !store);
                    let racy = known.is_some_and(|c| {
                        c.mtime_ns >= prev.scanned_at_ns - RACY_NS
                            || c.ctime_ns >= prev.scanned_at_ns - RACY_NS
                    });
                    match known {
                        Some(c) if c.same_stat(&e) && !racy && c.sha256.is_some() => {
                            e.sha256 = c.sha256.clone();
                            e.blob = c.blob;
                            e.file_caps = c.file_caps;
                        }
                        _ => {
                            if !self.capture_file(&path, &mut e, known, store)? {
                                m.entries.remove(&p);
                                continue;
                            }
                        }
                    }
                }
                _ => remove_inside(&mut m.entries, &p),
            }
            m.entries.insert(p, e);
        }
        Ok(m)
    }

    /// Excluded (`.git`, the state dir), or inside an excluded directory.
    fn is_excluded_or_inside(&self, p: &RelPath) -> bool {
        self.excluded
            .iter()
            .any(|x| p.0.starts_with(&x.0) && (p.0.len() == x.0.len() || p.0[x.0.len()] == b'/'))
    }

    fn scan_worker(
        &self,
        queue: &std::sync::Mutex<Queue>,
        prev: Option<&Manifest>,
        store: bool,
    ) -> Result<Found, SnapshotError> {
        let mut out = Found::default();
        loop {
            let next = {
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.failed {
                    return Ok(out);
                }
                match q.dirs.pop() {
                    Some(d) => {
                        q.busy += 1;
                        Some(d)
                    }
                    None if q.busy == 0 => return Ok(out),
                    None => None,
                }
            };
            let Some(dir) = next else {
                std::thread::yield_now();
                continue;
            };
            let mut subdirs = Vec::new();
            let r = self.scan_dir(&dir, prev, store, &mut out, &mut subdirs);
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            q.busy -= 1;
            q.dirs.extend(subdirs);
            if let Err(e) = r {
                q.failed = true;
                return Err(e);
            }
        }
    }

    /// One directory's entries; subdirectories are queued, not descended.
    fn scan_dir(
        &self,
        dir: &RelPath,
        prev: Option<&Manifest>,
        store: bool,
        out: &mut Found,
        subdirs: &mut Vec<RelPath>,
    ) -> Result<(), SnapshotError> {
        let abs = self.abs(dir);
        let is_root = dir.0.is_empty();
        #[cfg(test)]
        if let Some(hook) = &self.on_entry {
            hook(&abs, ScanMoment::List);
        }
        let rd = match fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) if is_root => {
                return Err(SnapshotError::Io {
                    path: abs,
                    source: e,
                });
            }
            // Removed since its parent was listed: it is absent, and so is all it held.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                out.unlisted
                    .push((dir.clone(), format!("directory cannot be listed: {e}")));
                return Ok(());
            }
        };
        for de in rd {
            let de = match de {
                Ok(de) => de,
                Err(e) if is_root => {
                    return Err(SnapshotError::Io {
                        path: abs,
                        source: e,
                    });
                }
                Err(e) => {
                    out.unlisted
                        .push((dir.clone(), format!("directory cannot be listed: {e}")));
                    return Ok(());
                }
            };
            let name = de.file_name();
            let mut rel = Vec::with_capacity(dir.0.len() + 1 + name.len());
            rel.extend_from_slice(&dir.0);
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let rel = RelPath(rel);
            if self.is_excluded(&rel) {
                continue;
            }
            let path = de.path();
            #[cfg(test)]
            if let Some(hook) = &self.on_entry {
                hook(&path, ScanMoment::Examine);
            }
            // fstatat relative to the open directory, never following a symlink.
            let md = match de.metadata() {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    out.entries.push((
                        rel,
                        Entry {
                            kind: EntryKind::File,
                            mode: 0,
                            size: 0,
                            sha256: None,
                            blob: None,
                            target: None,
                            ino: 0,
                            mtime_ns: 0,
                            ctime_ns: 0,
                            file_caps: false,
                            uncaptured: Some(format!("cannot be examined: {e}")),
                        },
                    ));
                    continue;
                }
            };
            let mut e = Entry::stat_only(&md);
            match e.kind {
                EntryKind::Dir => subdirs.push(rel.clone()),
                EntryKind::Symlink => match fs::read_link(&path) {
                    Ok(t) => e.target = Some(RelPath(t.into_os_string().into_vec())),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => e.uncaptured = Some(format!("link cannot be read: {err}")),
                },
                EntryKind::File => {
                    let known = prev.and_then(|m| {
                        let c = m.entries.get(&rel)?;
                        let racy = c.mtime_ns >= m.scanned_at_ns - RACY_NS
                            || c.ctime_ns >= m.scanned_at_ns - RACY_NS;
                        c.blob.is_some().then_some((c, c.same_stat(&e) && !racy))
                    });
                    if let Some((c, true)) = known {
                        e.sha256 = c.sha256.clone();
                        e.blob = c.blob;
                        e.file_caps = c.file_caps;
                    } else if !self.capture_file(&path, &mut e, known.map(|k| k.0), store)? {
                        continue;
                    }
                }
                // Nothing to read: the kind and mode are the whole state.
                _ => {}
            }
            out.entries.push((rel, e));
        }
        Ok(())
    }

    /// Fill in a file's hash (and blob, when `store`), whose stat moved since `known` (if any).
    /// False: the file is gone.
    fn capture_file(
        &self,
        path: &Path,
        e: &mut Entry,
        known: Option<&Entry>,
        store: bool,
    ) -> Result<bool, SnapshotError> {
        // Hash first when the content may be unchanged: storing costs a durable write, so
        // only content the vault does not hold yet is stored.
        let first = if known.is_some() || !store {
            self.read_content(path, e.size, false)?
        } else {
            self.read_content(path, e.size, true)?
        };
        let content = match first {
            Content::Captured { sha256, .. }
                if store && known.is_some_and(|k| k.sha256.as_deref() != Some(&sha256)) =>
            {
                self.read_content(path, e.size, true)?
            }
            other => other,
        };
        match content {
            Content::Vanished => return Ok(false),
            Content::Uncaptured(why) => e.uncaptured = Some(why),
            Content::Captured { sha256, blob, len } => {
                e.blob = blob.or_else(|| {
                    known
                        .filter(|k| k.sha256.as_deref() == Some(&sha256))
                        .and_then(|k| k.blob)
                });
                e.sha256 = Some(sha256);
                e.size = len;
            }
        }
        e.file_caps = has_file_caps(path);
        Ok(true)
    }

    /// Read one file through the hasher (and into the vault, when `store`), within the cap.
    fn read_content(&self, path: &Path, size: u64, store: bool) -> Result<Content, SnapshotError> {
        if size > self.max_file {
            return Ok(Content::Uncaptured(too_large(size, self.max_file)));
        }
        let f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Content::Vanished),
            Err(e) => return Ok(Content::Uncaptured(format!("cannot be read: {e}"))),
        };
        let mut tee = Tee::new(f, self.max_file);
        let refused = |tee: &Tee<fs::File>| {
            if tee.over_cap {
                Some(Content::Uncaptured(format!(
                    "{} (it grew while it was read)",
                    too_large(tee.len, self.max_file)
                )))
            } else {
                tee.read_error
                    .as_ref()
                    .map(|e| Content::Uncaptured(format!("cannot be read: {e}")))
            }
        };
        let blob = if store {
            match self.vault.blobs().put_reader(&mut tee) {
                Ok(id) => Some(id),
                Err(e) => return refused(&tee).ok_or(SnapshotError::Vault(e)),
            }
        } else {
            match std::io::copy(&mut tee, &mut std::io::sink()) {
                Ok(_) => None,
                Err(e) => {
                    return refused(&tee).ok_or_else(|| SnapshotError::Io {
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
            }
        };
        Ok(Content::Captured {
            sha256: hex::encode(tee.hasher.finalize()),
            blob,
            len: tee.len,
        })
    }

    /// The current state of one path, hashing a file only when its stat differs from `known`.
    pub fn current(
        &self,
        p: &RelPath,
        known: Option<&Entry>,
    ) -> Result<Option<Entry>, SnapshotError> {
        let path = self.abs(p);
        if self.under_a_non_directory(p) {
            return Ok(None);
        }
        let md = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // A parent that is no longer a directory (a step replaced `d/` by a file `d`)
            // means the path does not exist either.
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(SnapshotError::Io { path, source: e }),
        };
        let mut e = Entry::stat_only(&md);
        match e.kind {
            EntryKind::Symlink => {
                let t = fs::read_link(&path).map_err(io(&path))?;
                e.target = Some(RelPath(t.into_os_string().into_vec()));
            }
            EntryKind::File => match known {
                Some(k) if k.same_stat(&e) && k.sha256.is_some() => {
                    e.sha256 = k.sha256.clone();
                    e.blob = k.blob;
                    e.file_caps = k.file_caps;
                }
                _ => {
                    if !self.capture_file(&path, &mut e, None, false)? {
                        return Ok(None);
                    }
                }
            },
            _ => {}
        }
        Ok(Some(e))
    }

    /// Put every path of `changes` back to its `pre` state. Idempotent: a path already in its
    /// pre state is left alone (so an interrupted restore can simply run again).
    pub fn restore(&self, changes: &[Change]) -> Result<usize, SnapshotError> {
        // Parents that lost owner write/search permission would block the work below; open them
        // up for the duration and put their modes back at the end.
        let mut reopened: BTreeMap<PathBuf, u32> = BTreeMap::new();
        for c in changes {
            let mut parent = c.path.as_path().parent();
            while let Some(p) = parent {
                let abs = self.root.join(p);
                if !reopened.contains_key(&abs)
                    && let Ok(md) = fs::symlink_metadata(&abs)
                    && md.is_dir()
                {
                    let mode = md.permissions().mode() & 0o7777;
                    if mode & 0o300 != 0o300 {
                        fs::set_permissions(&abs, fs::Permissions::from_mode(mode | 0o700))
                            .map_err(io(&abs))?;
                        reopened.insert(abs, mode);
                    }
                }
                parent = p.parent();
            }
        }
        let result = self.restore_inner(changes);
        for (abs, mode) in reopened.iter().rev() {
            let wanted = changes
                .iter()
                .find(|c| self.abs(&c.path) == *abs)
                .and_then(|c| c.pre.as_ref().map(|e| e.mode))
                .unwrap_or(*mode);
            if fs::symlink_metadata(abs).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(abs, fs::Permissions::from_mode(wanted)).map_err(io(abs))?;
            }
        }
        result
    }

    /// Remove one path a step created (or replaced); already gone is fine.
    fn remove_path(&self, abs: &Path) -> Result<(), SnapshotError> {
        let md = match fs::symlink_metadata(abs) {
            Ok(m) => m,
            Err(e) if is_absent(&e) => return Ok(()),
            Err(e) => return Err(io(abs)(e)),
        };
        let r = if md.is_dir() {
            fs::remove_dir(abs)
        } else {
            fs::remove_file(abs)
        };
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(abs)(e)),
            _ => Ok(()),
        }
    }

    /// Put one path's pre state back (content, link, directory, FIFO or socket; not its mode).
    fn recreate(&self, c: &Change) -> Result<(), SnapshotError> {
        let Some(pre) = &c.pre else { return Ok(()) };
        let abs = self.abs(&c.path);
        match pre.kind {
            EntryKind::Dir => match fs::create_dir(&abs) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && abs.is_dir() => {}
                Err(e) => {
                    return Err(SnapshotError::Io {
                        path: abs,
                        source: e,
                    });
                }
            },
            EntryKind::Symlink => {
                let target = pre.target.clone().unwrap_or(RelPath(Vec::new()));
                if fs::symlink_metadata(&abs).is_ok() {
                    fs::remove_file(&abs).map_err(io(&abs))?;
                }
                std::os::unix::fs::symlink(target.as_path(), &abs).map_err(io(&abs))?;
            }
            EntryKind::File => {
                let cur = fs::symlink_metadata(&abs).ok();
                // Capabilities a step gave the file go with a fresh copy of its content.
                let same_content = cur.as_ref().is_some_and(|m| m.is_file())
                    && self
                        .current(&c.path, None)?
                        .is_some_and(|e| e.sha256 == pre.sha256 && (pre.file_caps || !e.file_caps));
                if !same_content {
                    let blob = pre.blob.ok_or_else(|| SnapshotError::Io {
                        path: abs.clone(),
                        source: std::io::Error::other("no pre-image recorded"),
                    })?;
                    // A read-only file cannot be replaced in place by everyone; the restore
                    // renames over it, which only needs the directory to be writable.
                    self.vault.blobs().restore_to_path(&blob, &abs)?;
                }
            }
            EntryKind::Fifo | EntryKind::Socket => {
                let present = fs::symlink_metadata(&abs).ok();
                if present
                    .as_ref()
                    .is_some_and(|m| EntryKind::of(m.file_type()) == pre.kind)
                {
                    return Ok(());
                }
                if present.is_some() {
                    fs::remove_file(&abs).map_err(io(&abs))?;
                }
                if pre.kind == EntryKind::Fifo {
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        &abs,
                        rustix::fs::FileType::Fifo,
                        rustix::fs::Mode::from_raw_mode(pre.mode & 0o777),
                        0,
                    )
                    .map_err(|e| SnapshotError::Io {
                        path: abs.clone(),
                        source: e.into(),
                    })?;
                } else {
                    // A socket file is what binding leaves; nothing listens on it (nothing
                    // did once its owner was gone).
                    drop(std::os::unix::net::UnixListener::bind(&abs).map_err(io(&abs))?);
                }
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let present = fs::symlink_metadata(&abs).ok();
                if !present
                    .as_ref()
                    .is_some_and(|m| EntryKind::of(m.file_type()) == pre.kind)
                {
                    return Err(SnapshotError::Io {
                        path: abs,
                        source: std::io::Error::other(format!(
                            "the {} that was here cannot be recreated by secureclaw (device numbers are not recorded): recreate it by hand with mknod",
                            pre.kind.name()
                        )),
                    });
                }
            }
        }
        Ok(())
    }

    fn restore_inner(&self, changes: &[Change]) -> Result<usize, SnapshotError> {
        self.forget_fresh();
        let mut todo: Vec<&Change> = Vec::new();
        for c in changes {
            let done = match &c.pre {
                // Only absence matters: nothing to read (a path the step left may be huge).
                None => matches!(fs::symlink_metadata(self.abs(&c.path)), Err(e) if is_absent(&e)),
                Some(pre) => self
                    .current(&c.path, c.post.as_ref())?
                    .is_some_and(|cur| cur.same_state(pre)),
            };
            if !done {
                todo.push(c);
            }
        }
        // 1. Remove what must go, children before parents.
        let mut removals: Vec<&Change> = todo
            .iter()
            .copied()
            .filter(|c| match (&c.pre, &c.post) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(a), Some(b)) => a.kind != b.kind || a.kind == EntryKind::Symlink,
            })
            .collect();
        removals.sort_by(|a, b| b.path.cmp(&a.path));
        // One path that cannot be put back must not keep the others from their pre-images: the
        // first failure is reported once everything else was done.
        let mut first_error: Option<SnapshotError> = None;
        let mut note = |r: Result<(), SnapshotError>| {
            if let Err(e) = r
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        };
        for c in &removals {
            note(self.remove_path(&self.abs(&c.path)));
        }
        // 2. Recreate pre states, parents before children.
        let mut creations: Vec<&Change> =
            todo.iter().copied().filter(|c| c.pre.is_some()).collect();
        creations.sort_by(|a, b| a.path.cmp(&b.path));
        for c in &creations {
            note(self.recreate(c));
        }
        // What revert recreates belongs to the workspace's owner (owners are not recorded in
        // pre-images yet; see docs/revert.md), never to a root engine.
        if let Some(owner) = crate::workspace::owner_of(&self.root) {
            for c in &creations {
                crate::workspace::give_to(owner, &self.abs(&c.path));
            }
        }
        // 3. Modes: files first, then directories deepest first.
        let mut modes: Vec<&Change> = creations
            .iter()
            .copied()
            .filter(|c| c.pre.as_ref().is_some_and(|e| e.kind != EntryKind::Symlink))
            .collect();
        modes.sort_by(|a, b| {
            let key = |c: &Change| {
                (
                    c.pre.as_ref().is_some_and(|e| e.kind == EntryKind::Dir),
                    std::cmp::Reverse(c.path.depth()),
                )
            };
            key(a).cmp(&key(b))
        });
        for c in modes {
            if let Some(pre) = &c.pre {
                let abs = self.abs(&c.path);
                note(
                    fs::set_permissions(&abs, fs::Permissions::from_mode(pre.mode))
                        .map_err(io(&abs)),
                );
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(todo.len()),
        }
    }

    fn cache_key(&self) -> String {
        hex::encode(Sha256::digest(self.root.as_os_str().as_bytes()))
    }

    /// The last manifest of this workspace, as the stat cache for the next scan.
    pub fn load_cache(&self) -> Option<Manifest> {
        let bytes = zeroize::Zeroizing::new(
            self.vault
                .get(CACHE_TABLE, &self.cache_key())
                .ok()
                .flatten()?,
        );
        decode_manifest(&bytes).map(|(_, m)| m)
    }

    /// Stores `m` as the stat cache (compact binary, one sealed value), with the change sets
    /// still waiting (see [`Snapshotter::defer_step_changes`]), in one durable commit.
    pub fn save_cache(&self, m: &Manifest) -> Result<(), SnapshotError> {
        let bytes = zeroize::Zeroizing::new(codec::encode(b"", m));
        self.commit_with_pending(CACHE_TABLE, &self.cache_key(), &bytes)
    }

    /// Remember the pre-manifest of the step `run` is about to execute, durably, so a crash
    /// during the step can still be reverted. The change sets still waiting are committed in
    /// the same transaction.
    pub fn save_inflight(
        &self,
        run: &str,
        step: &str,
        pre: &Manifest,
    ) -> Result<(), SnapshotError> {
        let bytes = zeroize::Zeroizing::new(codec::encode(step.as_bytes(), pre));
        self.commit_with_pending(INFLIGHT_TABLE, run, &bytes)
    }

    /// One durable commit of `table`/`key` and every change set waiting.
    fn commit_with_pending(
        &self,
        table: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), SnapshotError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.vault.write(|tx| {
            for (k, v) in pending.iter() {
                tx.put(STEPS_TABLE, k, v)?;
            }
            tx.put(table, key, value)
        })?;
        pending.clear();
        Ok(())
    }

    /// Saves a step's change set durably, now.
    pub fn save_step_changes(
        &self,
        run: &str,
        step: &str,
        changes: &ChangeSet,
    ) -> Result<(), SnapshotError> {
        self.vault
            .put_json(STEPS_TABLE, &format!("{run}/{step}"), changes)?;
        Ok(())
    }

    /// Saves a step's change set with the next commit of this snapshotter (the next writing
    /// step's in-flight record, or the stat cache when the run ends) instead of a commit of
    /// its own. Crash-safe as long as the step's own in-flight record is only replaced by that
    /// commit: until then, an engine that dies leaves the in-flight record, from which the
    /// change set is recomputed (the pre-manifest against the workspace as it is).
    pub fn defer_step_changes(
        &self,
        run: &str,
        step: &str,
        changes: &ChangeSet,
    ) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec(changes).map_err(|e| {
            SnapshotError::Vault(VaultError::Json {
                what: format!("{STEPS_TABLE}/{run}/{step}"),
                reason: e.to_string(),
            })
        })?;
        let key = format!("{run}/{step}");
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|(k, _)| *k != key);
        pending.push((key, bytes));
        Ok(())
    }
}

/// A step's change set as the step saved it (before the run record caught up).
pub fn load_step_changes(
    vault: &Vault,
    run: &str,
    step: &str,
) -> Result<Option<ChangeSet>, SnapshotError> {
    Ok(vault.get_json(STEPS_TABLE, &format!("{run}/{step}"))?)
}

/// The directories left to scan, shared by the scan threads.
struct Queue {
    dirs: Vec<RelPath>,
    /// Directories being scanned (they may still queue subdirectories).
    busy: usize,
    failed: bool,
}

/// The step a run was executing and the workspace before it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inflight {
    pub step: String,
    pub pre: Manifest,
}

/// The in-flight record of a run, if its engine stopped during a writing step.
pub fn load_inflight(vault: &Vault, run: &str) -> Result<Option<Inflight>, SnapshotError> {
    let Some(bytes) = vault.get(INFLIGHT_TABLE, run)? else {
        return Ok(None);
    };
    let bytes = zeroize::Zeroizing::new(bytes);
    if !codec::is_binary(&bytes) {
        return Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            SnapshotError::Vault(VaultError::Json {
                what: format!("{INFLIGHT_TABLE}/{run}"),
                reason: e.to_string(),
            })
        })?));
    }
    let damaged = || {
        SnapshotError::Vault(VaultError::Tampered {
            what: format!("{INFLIGHT_TABLE}/{run} (undecodable)"),
        })
    };
    let (step, pre) = codec::decode(&bytes).ok_or_else(damaged)?;
    let step = String::from_utf8(step).map_err(|_| damaged())?;
    Ok(Some(Inflight { step, pre }))
}

/// A manifest stored by [`Snapshotter::save_cache`] (or as JSON by earlier versions).
fn decode_manifest(bytes: &[u8]) -> Option<(Vec<u8>, Manifest)> {
    if codec::is_binary(bytes) {
        codec::decode(bytes)
    } else {
        serde_json::from_slice(bytes).ok().map(|m| (Vec::new(), m))
    }
}

/// Forget a run's crash-recovery state once its record holds every change set (one durable
/// commit, however many steps).
pub fn clear_inflight<'a>(
    vault: &Vault,
    run: &str,
    steps: impl IntoIterator<Item = &'a str>,
) -> Result<(), SnapshotError> {
    vault.write(|tx| {
        for s in steps {
            tx.delete(STEPS_TABLE, &format!("{run}/{s}"))?;
        }
        tx.delete(INFLIGHT_TABLE, run)?;
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Snapshotter) {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        fs::create_dir_all(ws.join("d/sub")).unwrap();
        fs::write(ws.join("a"), "alpha").unwrap();
        fs::write(ws.join("d/b"), "beta").unwrap();
        fs::write(ws.join(OsStr::from_bytes(b"n\xffo")), "odd name").unwrap();
        std::os::unix::fs::symlink("a", ws.join("l")).unwrap();
        let state = ws.join(".secureclaw");
        let vault = Vault::create(
            &state,
            "test",
            &secureclaw_vault::KdfParams {
                memory_kib: 256,
                iterations: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let ws = ws.canonicalize().unwrap();
        let snap = Snapshotter::new(vault, &ws, &state).unwrap();
        (dir, snap)
    }

    #[test]
    fn the_stat_cache_and_in_flight_record_round_trip_and_json_ones_are_still_read() {
        let (_d, snap) = setup();
        let m = snap.scan(None).unwrap();
        snap.save_cache(&m).unwrap();
        let back = snap.load_cache().unwrap();
        assert_eq!(back.entries, m.entries);
        assert_eq!(back.scanned_at_ns, m.scanned_at_ns);
        snap.save_inflight("r1", "step-\u{e9}", &m).unwrap();
        let inf = load_inflight(snap.vault(), "r1").unwrap().unwrap();
        assert_eq!(inf.step, "step-\u{e9}");
        assert_eq!(inf.pre.entries, m.entries);

        // What earlier versions wrote (JSON) is still understood.
        snap.vault()
            .put_json(CACHE_TABLE, &snap.cache_key(), &m)
            .unwrap();
        assert_eq!(snap.load_cache().unwrap().entries, m.entries);
        snap.vault()
            .put_json(
                INFLIGHT_TABLE,
                "r2",
                &Inflight {
                    step: "s".into(),
                    pre: m.clone(),
                },
            )
            .unwrap();
        let inf = load_inflight(snap.vault(), "r2").unwrap().unwrap();
        assert_eq!((inf.step.as_str(), inf.pre.hash()), ("s", m.hash()));

        // One commit clears every step's record and the in-flight one.
        snap.save_step_changes("r1", "a", &ChangeSet::default())
            .unwrap();
        snap.save_step_changes("r1", "b", &ChangeSet::default())
            .unwrap();
        clear_inflight(snap.vault(), "r1", ["a", "b"]).unwrap();
        assert!(load_inflight(snap.vault(), "r1").unwrap().is_none());
        assert!(
            load_step_changes(snap.vault(), "r1", "a")
                .unwrap()
                .is_none()
        );
        assert!(
            load_step_changes(snap.vault(), "r1", "b")
                .unwrap()
                .is_none()
        );
        assert!(load_inflight(snap.vault(), "r2").unwrap().is_some());
    }

    #[test]
    fn a_full_scan_is_fresh_only_until_a_restore_a_refresh_or_as_long_as_it_took() {
        let (_d, mut snap) = setup();
        // Slow every path down so the scan takes far longer than the checks below.
        snap.on_entry = Some(std::sync::Arc::new(|_: &Path, _| {
            std::thread::sleep(std::time::Duration::from_millis(60))
        }));
        let m = snap.scan(None).unwrap();
        assert!(snap.is_fresh(&m));
        // Another manifest (the same tree scanned without storing) is not the fresh one.
        let other = snap.scan_hash_only(Some(&m)).unwrap();
        assert!(!snap.is_fresh(&other));
        assert!(
            !snap.is_fresh(&m),
            "a scan that stores nothing forgets the fresh one"
        );

        let m = snap.scan(Some(&m)).unwrap();
        assert!(snap.is_fresh(&m));
        fs::write(snap.root().join("a"), "changed").unwrap();
        let changed = snap.scan(Some(&m)).unwrap();
        let changes = diff(&m, &changed);
        snap.restore(&changes.changes).unwrap();
        assert!(
            !snap.is_fresh(&changed),
            "a restore changed the workspace since"
        );

        let m = snap.scan(Some(&changed)).unwrap();
        let r = snap
            .refresh(&m, &[RelPath(b"a".to_vec())], &[], true)
            .unwrap();
        assert!(!snap.is_fresh(&m) && !snap.is_fresh(&r));

        snap.on_entry = None;
        let m = snap.scan(Some(&r)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!snap.is_fresh(&m), "older than the scan took");
    }

    #[test]
    fn refresh_sees_renames_new_directories_and_vanished_paths_in_the_listed_directory() {
        let (_d, snap) = setup();
        let m = snap.scan(None).unwrap();
        let root = snap.root().to_path_buf();
        fs::rename(root.join("d/b"), root.join("d/renamed")).unwrap();
        fs::create_dir(root.join("d/newdir")).unwrap();
        let r = snap
            .refresh(
                &m,
                &[RelPath(b"d".to_vec())],
                &[RelPath(b"d".to_vec())],
                true,
            )
            .unwrap();
        let full = snap.scan(None).unwrap();
        assert_eq!(r.hash(), full.hash());
        assert_eq!(
            diff(&m, &r)
                .changes
                .iter()
                .map(|c| c.path.display())
                .collect::<Vec<_>>(),
            ["d/b", "d/newdir", "d/renamed"]
        );
        // A new directory that is not empty, found by a listing: only a full scan can say
        // what it holds.
        fs::write(root.join("d/newdir/inside"), "x").unwrap();
        assert!(
            snap.refresh(&r, &[], &[RelPath(b"d".to_vec())], true)
                .is_ok()
        );
        fs::create_dir(root.join("d/full")).unwrap();
        fs::write(root.join("d/full/x"), "x").unwrap();
        assert!(
            snap.refresh(&r, &[], &[RelPath(b"d".to_vec())], true)
                .is_err()
        );
        // A directory replaced by a file drops what was inside it.
        fs::remove_dir_all(root.join("d/sub")).unwrap();
        fs::write(root.join("d/sub"), "now a file").unwrap();
        let r2 = snap
            .refresh(&r, &[RelPath(b"d/sub".to_vec())], &[], true)
            .unwrap();
        assert!(r2.entries.keys().all(|p| !p.0.starts_with(b"d/sub/")));
        assert_eq!(
            r2.entries[&RelPath(b"d/sub".to_vec())].kind,
            EntryKind::File
        );
        // The state dir and .git are never refreshed, like they are never scanned.
        fs::create_dir_all(root.join(".git")).unwrap();
        fs::write(root.join(".git/HEAD"), "x").unwrap();
        let r3 = snap
            .refresh(
                &r2,
                &[
                    RelPath(b".git/HEAD".to_vec()),
                    RelPath(b".secureclaw".to_vec()),
                ],
                &[RelPath(b".git".to_vec())],
                true,
            )
            .unwrap();
        assert_eq!(r3.hash(), r2.hash());
    }

    #[test]
    fn refresh_rehashes_a_same_size_rewrite_with_the_mtime_set_back() {
        let (_d, snap) = setup();
        let a = snap.root().join("a");
        let m = snap.scan(None).unwrap();
        let old = fs::metadata(&a).unwrap().modified().unwrap();
        fs::write(&a, "ALPHA").unwrap();
        fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let r = snap
            .refresh(&m, &[RelPath(b"a".to_vec())], &[], true)
            .unwrap();
        let e = &r.entries[&RelPath(b"a".to_vec())];
        assert_ne!(e.sha256, m.entries[&RelPath(b"a".to_vec())].sha256);
        assert_eq!(
            snap.vault().blobs().get(&e.blob.unwrap()).unwrap(),
            b"ALPHA"
        );
    }

    #[test]
    fn a_deferred_change_set_is_committed_with_the_next_in_flight_record() {
        let (_d, snap) = setup();
        let m = snap.scan(None).unwrap();
        snap.save_inflight("r", "s1", &m).unwrap();
        let mut after = m.clone();
        after.entries.remove(&RelPath(b"a".to_vec()));
        let changes = diff(&m, &after);
        snap.defer_step_changes("r", "s1", &changes).unwrap();
        // Not yet: the in-flight record of s1 is what recovers it until the next commit.
        assert!(
            load_step_changes(snap.vault(), "r", "s1")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            load_inflight(snap.vault(), "r").unwrap().unwrap().step,
            "s1"
        );
        snap.save_inflight("r", "s2", &after).unwrap();
        assert_eq!(
            load_step_changes(snap.vault(), "r", "s1").unwrap(),
            Some(changes.clone())
        );
        assert_eq!(
            load_inflight(snap.vault(), "r").unwrap().unwrap().step,
            "s2"
        );
        // The stat cache carries the last one.
        snap.defer_step_changes("r", "s2", &ChangeSet::default())
            .unwrap();
        snap.save_cache(&after).unwrap();
        assert_eq!(
            load_step_changes(snap.vault(), "r", "s2").unwrap(),
            Some(ChangeSet::default())
        );
    }

    #[test]
    fn the_state_dir_and_git_are_not_captured_and_odd_names_round_trip() {
        let (_d, snap) = setup();
        fs::create_dir(snap.root().join(".git")).unwrap();
        fs::write(snap.root().join(".git/HEAD"), "ref").unwrap();
        let m = snap.scan(None).unwrap();
        assert!(
            m.entries
                .keys()
                .all(|p| !p.0.starts_with(b".git") && !p.0.starts_with(b".secureclaw"))
        );
        assert!(m.entries.contains_key(&RelPath(b"n\xffo".to_vec())));
        let json = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.hash(), m.hash());
    }

    #[test]
    fn an_interrupted_restore_completes_when_run_again() {
        let (_d, snap) = setup();
        let pre = snap.scan(None).unwrap();
        let r = snap.root().to_path_buf();
        fs::write(r.join("a"), "changed").unwrap();
        fs::remove_file(r.join("d/b")).unwrap();
        fs::create_dir_all(r.join("new/deep")).unwrap();
        fs::write(r.join("new/deep/f"), "f").unwrap();
        fs::remove_file(r.join("l")).unwrap();
        std::os::unix::fs::symlink("elsewhere", r.join("l")).unwrap();
        fs::set_permissions(r.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        let post = snap.scan(Some(&pre)).unwrap();
        let changes = diff(&pre, &post);
        assert_eq!(changes.len(), 7, "{changes:#?}");
        // A crash after part of the work: restore a few paths only, then everything.
        snap.restore(&changes.changes[..3]).unwrap();
        snap.restore(&changes.changes).unwrap();
        assert_eq!(snap.scan(None).unwrap().hash(), pre.hash());
        // And once more: nothing left to do.
        assert_eq!(snap.restore(&changes.changes).unwrap(), 0);
    }

    #[test]
    fn files_over_the_cap_are_recorded_uncaptured_and_refused_as_a_pre_state() {
        let (_d, snap) = setup();
        // "alpha" and "odd name" are over 4 bytes, "beta" is not.
        let snap = snap.with_max_file(4);
        let m = snap.scan(None).unwrap();
        let (path, why) = m.first_uncaptured().unwrap();
        assert_eq!(path.0, b"a".to_vec(), "{why}");
        assert!(why.contains("over the snapshot cap of 4 bytes"), "{why}");
        let uncaptured: Vec<&RelPath> = m
            .entries
            .iter()
            .filter(|(_, e)| e.uncaptured.is_some())
            .map(|(p, _)| p)
            .collect();
        assert_eq!(uncaptured.len(), 2, "{uncaptured:?}");
        assert!(m.entries[path].blob.is_none() && m.entries[path].sha256.is_none());
        match m.require_captured(snap.root()) {
            Err(SnapshotError::Uncapturable { path, why }) => {
                assert!(path.ends_with("a") && why.contains("cap"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Set-id files and capabilities a step leaves are hazards; the user's own are not.
    #[test]
    fn setid_bits_and_capabilities_a_step_leaves_are_hazards() {
        let (_d, snap) = setup();
        let r = snap.root().to_path_buf();
        let mode = |p: &str, m: u32| {
            fs::set_permissions(r.join(p), fs::Permissions::from_mode(m)).unwrap();
        };
        fs::write(r.join("users-own-suid"), "theirs").unwrap();
        mode("users-own-suid", 0o4755);
        fs::write(r.join("users-suid-rewritten"), "theirs").unwrap();
        mode("users-suid-rewritten", 0o4755);
        fs::write(r.join("users-suid-chmodded"), "theirs").unwrap();
        mode("users-suid-chmodded", 0o4775);
        let pre = snap.scan(None).unwrap();
        fs::write(r.join("suid"), "x").unwrap();
        mode("suid", 0o4755);
        fs::write(r.join("both"), "x").unwrap();
        mode("both", 0o6755);
        fs::write(r.join("d/sub/sgid"), "x").unwrap();
        mode("d/sub/sgid", 0o2711);
        mode("a", 0o4644); // an existing file, not created
        fs::write(r.join("users-suid-rewritten"), "replaced").unwrap();
        mode("users-suid-rewritten", 0o4755);
        mode("users-suid-chmodded", 0o4755); // the user's bit stays, group write goes
        mode("d/sub", 0o2755); // a set-gid directory only passes its group on
        let post = snap.scan(Some(&pre)).unwrap();
        let changes = diff(&pre, &post);
        let found: BTreeMap<String, String> = hazards(&post, &changes)
            .into_iter()
            .map(|h| (h.path.display(), h.what))
            .collect();
        let names: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["a", "both", "d/sub/sgid", "suid", "users-suid-rewritten"],
            "{found:#?}"
        );
        assert!(found["a"].contains("set-user-ID bit (mode 4644)"));
        assert!(found["both"].contains("set-user-ID and set-group-ID bits"));
        assert!(found["d/sub/sgid"].contains("set-group-ID bit"));
        // Rolled back: no set-id file is left but the user's own, exactly as they were.
        snap.restore(&changes.changes).unwrap();
        assert_eq!(snap.scan(None).unwrap().hash(), pre.hash());
    }

    #[test]
    fn file_capabilities_are_seen_and_a_restore_drops_them() {
        let Ok(setcap) = which("setcap") else {
            panic!("setcap (libcap2-bin) is required for the file capability tests");
        };
        let (_d, snap) = setup();
        let r = snap.root().to_path_buf();
        fs::copy("/bin/true", r.join("existing")).unwrap();
        let pre = snap.scan(None).unwrap();
        fs::copy("/bin/true", r.join("new")).unwrap();
        for f in ["new", "existing"] {
            let st = std::process::Command::new(&setcap)
                .arg("cap_net_raw+ep")
                .arg(r.join(f))
                .status()
                .unwrap();
            assert!(st.success(), "setcap {f}");
        }
        let post = snap.scan(Some(&pre)).unwrap();
        assert!(post.entries[&RelPath(b"existing".to_vec())].file_caps);
        let changes = diff(&pre, &post);
        let found: Vec<String> = hazards(&post, &changes)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|h| h.contains("security.capability")));
        snap.restore(&changes.changes).unwrap();
        assert!(!has_file_caps(&r.join("existing")));
        assert!(!r.join("new").exists());
        assert_eq!(snap.scan(None).unwrap().hash(), pre.hash());
    }

    fn which(tool: &str) -> Result<PathBuf, ()> {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .ok_or(())
    }

    fn is_root() -> bool {
        fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    /// FIFOs, sockets and device nodes: recorded (never opened: a FIFO would block the scan),
    /// flagged, removed by a restore; a user's own FIFO and socket are recreated.
    #[test]
    fn special_files_are_recorded_flagged_and_undone() {
        let (_d, snap) = setup();
        let r = snap.root().to_path_buf();
        let fifo = |p: &Path| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o640),
                0,
            )
            .unwrap()
        };
        fifo(&r.join("users-fifo"));
        drop(std::os::unix::net::UnixListener::bind(r.join("users-sock")).unwrap());
        let pre = snap.scan(None).unwrap();
        pre.require_captured(&r).unwrap();
        assert_eq!(
            pre.entries[&RelPath(b"users-fifo".to_vec())].kind,
            EntryKind::Fifo
        );
        fifo(&r.join("d/new-fifo"));
        drop(std::os::unix::net::UnixListener::bind(r.join("new-sock")).unwrap());
        fs::remove_file(r.join("users-fifo")).unwrap();
        fs::remove_file(r.join("users-sock")).unwrap();
        fs::write(r.join("users-sock"), "a file now").unwrap();
        fs::write(r.join("a"), "overwritten").unwrap();
        fs::remove_file(r.join("d/b")).unwrap();
        let root = is_root();
        if root {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                r.join("null"),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o666),
                rustix::fs::makedev(1, 3),
            )
            .unwrap();
        } else {
            eprintln!("NOT ROOT: the device node case of this test is not exercised");
        }
        let post = snap.scan(Some(&pre)).unwrap();
        let changes = diff(&pre, &post);
        let found: Vec<String> = hazards(&post, &changes)
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut want = vec!["d/new-fifo: a FIFO", "new-sock: a unix socket"];
        if root {
            want.push("null: a character device node");
        }
        assert_eq!(found.len(), want.len(), "{found:?}");
        for (f, w) in found.iter().zip(&want) {
            assert!(f.starts_with(w), "{f} / {w}");
        }
        snap.restore(&changes.changes).unwrap();
        assert_eq!(snap.scan(None).unwrap().hash(), pre.hash());
        assert_eq!(fs::read(r.join("a")).unwrap(), b"alpha");
        assert_eq!(fs::read(r.join("d/b")).unwrap(), b"beta");
        assert!(!r.join("null").exists() && !r.join("new-sock").exists());
    }

    /// Paths removed between the listing of their directory and their `lstat` or read are
    /// absent, not a failed scan.
    #[test]
    fn paths_that_vanish_during_the_scan_are_absent_not_an_error() {
        let (_d, mut snap) = setup();
        let r = snap.root().to_path_buf();
        fs::create_dir_all(r.join("gone-dir/inner")).unwrap();
        fs::write(r.join("gone-dir/inner/f"), "f").unwrap();
        fs::write(r.join("gone-file"), "g").unwrap();
        std::os::unix::fs::symlink("a", r.join("gone-link")).unwrap();
        let pre = snap.scan(None).unwrap();
        let victims: Vec<PathBuf> = ["gone-dir", "gone-file", "gone-link"]
            .iter()
            .map(|p| r.join(p))
            .collect();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = hits.clone();
        snap.on_entry = Some(std::sync::Arc::new(move |p: &Path, when| {
            if when == ScanMoment::Examine && victims.iter().any(|v| v == p) {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
            }
        }));
        // The content of a file must be re-read (its stat moved) for the read to race.
        fs::write(r.join("a"), "changed").unwrap();
        let post = snap.scan(Some(&pre)).unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
        let changes = diff(&pre, &post);
        let gone: Vec<String> = changes
            .changes
            .iter()
            .filter(|c| c.post.is_none())
            .map(|c| c.path.display())
            .collect();
        assert_eq!(
            gone,
            [
                "gone-dir",
                "gone-dir/inner",
                "gone-dir/inner/f",
                "gone-file",
                "gone-link"
            ]
        );
        assert!(hazards(&post, &changes).is_empty());
        snap.on_entry = None;
        snap.restore(&changes.changes).unwrap();
        assert_eq!(snap.scan(None).unwrap().hash(), pre.hash());
    }

    /// When the vault cannot take post-images, a scan that only hashes still tells what
    /// changed, and the pre-images already stored put it back.
    #[test]
    fn a_vault_that_cannot_store_still_lets_the_step_be_rolled_back() {
        let (d, snap) = setup();
        let r = snap.root().to_path_buf();
        let pre = snap.scan(None).unwrap();
        // Blobs are written through `blobs/tmp` (the vault's layout): a file in its place
        // breaks storing.
        let tmp = d.path().join("ws/.secureclaw").join("blobs/tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::write(&tmp, "not a directory").unwrap();
        fs::write(r.join("a"), "overwritten").unwrap();
        fs::remove_file(r.join("d/b")).unwrap();
        fs::write(r.join("new"), "created").unwrap();
        assert!(matches!(
            snap.scan(Some(&pre)),
            Err(SnapshotError::Vault(_))
        ));
        let post = snap.scan_hash_only(Some(&pre)).unwrap();
        let changes = diff(&pre, &post);
        let paths: Vec<String> = changes.changes.iter().map(|c| c.path.display()).collect();
        assert_eq!(paths, ["a", "d/b", "new"]);
        snap.restore(&changes.changes).unwrap();
        assert_eq!(snap.scan_hash_only(None).unwrap().hash(), pre.hash());
        assert_eq!(fs::read(r.join("a")).unwrap(), b"alpha");
    }

    /// A directory the scan cannot list hides what the step did in it: a hazard.
    #[test]
    fn an_unlistable_directory_is_a_hazard() {
        let (_d, snap) = setup();
        let r = snap.root().to_path_buf();
        let pre = snap.scan(None).unwrap();
        // Replacing a directory by a file between its `lstat` and its listing makes read_dir
        // fail with ENOTDIR, which no permission (nor root) can prevent.
        let mut snap = snap;
        let target = r.join("d/sub");
        snap.on_entry = Some(std::sync::Arc::new(move |p: &Path, when| {
            if when == ScanMoment::List && p == target {
                fs::remove_dir(&target).unwrap();
                fs::write(&target, "now a file").unwrap();
            }
        }));
        let post = snap.scan(Some(&pre)).unwrap();
        let changes = diff(&pre, &post);
        let found = hazards(&post, &changes);
        assert!(
            found
                .iter()
                .any(|h| h.path.0 == b"d/sub" && h.what.contains("cannot be listed")),
            "{found:?}"
        );
    }
}
