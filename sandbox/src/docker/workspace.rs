//! The workspace as the daemon gets it: a bind mount the engine prepares on the host.
//!
//! The Docker API has no `nosuid`/`nodev` for bind mounts, and Docker 20.10 no idmapped
//! mounts. A bind mount keeps the flags and the idmapping
//! of its source mount, so a root engine clones the workspace's mount tree (`open_tree`), sets
//! `nosuid,nodev` on it (and, for a root-owned workspace, an idmapping that shows the owner as
//! the step's uid), attaches it under [`MOUNT_ROOT`] and hands that path to the daemon as the
//! bind source. The mount is detached as soon as the step's container has ended; the next
//! engine detaches those of engines that died mid-step.
#![allow(unsafe_code)] // mount syscalls without a maintained wrapper; each block says why it is sound

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where prepared workspace mounts live on the host (root-only, mode 0700).
pub const MOUNT_ROOT: &str = "/run/secureclaw/docker";

// Stable kernel uapi values (linux/mount.h), spelled out so we do not depend on which libc
// version exports them.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// An on-disk owner shown as the step's ids: `(disk uid, step uid)`, `(disk gid, step gid)`.
pub type IdMap = ((u32, u32), (u32, u32));

/// A prepared workspace mount, detached and removed on drop.
#[derive(Debug)]
pub struct PreparedWorkspace {
    path: PathBuf,
    idmapped: bool,
}

impl PreparedWorkspace {
    /// The bind source for the daemon.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn idmapped(&self) -> bool {
        self.idmapped
    }

    /// Whether the kernel reports the mount at `path` as `nosuid,nodev` (read back, not
    /// assumed).
    pub fn nosuid_nodev(&self) -> bool {
        rustix::fs::statvfs(&self.path).is_ok_and(|st| {
            st.f_flag.contains(rustix::fs::StatVfsMountFlags::NOSUID)
                && st.f_flag.contains(rustix::fs::StatVfsMountFlags::NODEV)
        })
    }
}

impl Drop for PreparedWorkspace {
    fn drop(&mut self) {
        detach(&self.path);
    }
}

fn detach(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: valid C string; a lazy unmount of a mount we attached (the container's own
        // copy lives in its mount namespace and is not affected).
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir(path);
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// A user namespace whose only mapping is the given one, as an fd; cached per mapping (the
/// namespace lives as long as its fd).
fn idmap_userns(map: IdMap, swap: bool) -> Result<RawFd, String> {
    static CACHE: Mutex<Option<HashMap<(IdMap, bool), OwnedFd>>> = Mutex::new(None);
    let mut cache = CACHE
        .lock()
        .map_err(|_| "idmap cache poisoned".to_string())?;
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(fd) = cache.get(&(map, swap)) {
        return Ok(fd.as_raw_fd());
    }
    let fd = new_userns(map, swap)?;
    let raw = fd.as_raw_fd();
    cache.insert((map, swap), fd);
    Ok(raw)
}

fn new_userns(
    ((disk_uid, step_uid), (disk_gid, step_gid)): IdMap,
    swap: bool,
) -> Result<OwnedFd, String> {
    // The mount shows on-disk `disk_uid` as `step_uid`: inside (the mount's view) is the disk
    // id, outside is the id the kernel gives the step's files. `swap` also maps the other way
    // round, so that a file server running as the disk id (gVisor's gofer runs as root) can
    // create files before it gives them to the step's uid.
    let line = |inside: u32, outside: u32| {
        if swap && inside != outside {
            format!("{inside} {outside} 1\n{outside} {inside} 1\n")
        } else {
            format!("{inside} {outside} 1\n")
        }
    };
    crate::native::helper::idmap_userns_maps(&line(disk_uid, step_uid), &line(disk_gid, step_gid))
}

/// Clone the mount tree at `workspace`, make it `nosuid,nodev` (and idmapped with `idmap`), and
/// attach it at a fresh directory under [`MOUNT_ROOT`] named `name`. Needs root.
pub fn prepare(
    workspace: &Path,
    idmap: Option<IdMap>,
    name: &str,
) -> Result<PreparedWorkspace, String> {
    prepare_mapped(workspace, idmap, false, name)
}

/// [`prepare`], with the idmapping also mapping the step's ids back to the disk's when `swap`
/// (for a runtime whose file server creates files as root before handing them over).
pub fn prepare_mapped(
    workspace: &Path,
    idmap: Option<IdMap>,
    swap: bool,
    name: &str,
) -> Result<PreparedWorkspace, String> {
    let root = Path::new(MOUNT_ROOT);
    std::fs::create_dir_all(root).map_err(|e| format!("{MOUNT_ROOT}: {e}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{MOUNT_ROOT}: {e}"))?;
    }
    let path = root.join(name);
    std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let attach = || -> Result<(), String> {
        let src = CString::new(workspace.as_os_str().as_bytes())
            .map_err(|_| "workspace path contains NUL".to_string())?;
        // SAFETY: valid C string; returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                src.as_ptr(),
                OPEN_TREE_CLONE
                    | libc::O_CLOEXEC as libc::c_uint
                    | libc::AT_RECURSIVE as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(os_error(&format!("open_tree {}", workspace.display())));
        }
        // SAFETY: a fresh fd owned here.
        let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let (set, userns_fd) = match idmap {
            Some(map) => (
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_IDMAP,
                idmap_userns(map, swap)?,
            ),
            None => (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0),
        };
        let attr = MountAttr {
            attr_set: set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns_fd as u64,
        };
        // SAFETY: `tree` is a live fd paired with AT_EMPTY_PATH, `attr` points to a live
        // struct of exactly the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r != 0 {
            return Err(os_error(if idmap.is_some() {
                "idmapped nosuid,nodev mount of the workspace"
            } else {
                "nosuid,nodev mount of the workspace"
            }));
        }
        let target = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "mount path contains NUL".to_string())?;
        // SAFETY: valid fd and C strings.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r != 0 {
            return Err(os_error(&format!("move_mount to {}", path.display())));
        }
        Ok(())
    };
    match attach() {
        Ok(()) => Ok(PreparedWorkspace {
            path,
            idmapped: idmap.is_some(),
        }),
        Err(e) => {
            let _ = std::fs::remove_dir(&path);
            Err(e)
        }
    }
}

/// Detach prepared mounts whose engine is gone (`alive` says which names are still in use).
/// Returns what was removed.
pub fn sweep(alive: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(MOUNT_ROOT) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if alive(&name) {
            continue;
        }
        let path = entry.path();
        detach(&path);
        if !path.exists() {
            removed.push(format!("docker workspace mount {}", path.display()));
        }
    }
    removed
}

/// An empty read-only directory to bind over the state dir inside the workspace: the step sees
/// an empty directory it can list (`find .` and `tar .` traverse it) but not write. A tmpfs
/// would not do: the runtime gives a tmpfs the mode of the directory it covers (the state dir
/// is 0700 root), so the step could not even list it. Created once per engine user, owned by
/// it, mode 0555, checked empty before each use.
pub fn empty_dir() -> Result<PathBuf, String> {
    empty_cover(true)
}

/// The same for a masked file: an empty file, mode 0444.
pub fn empty_file() -> Result<PathBuf, String> {
    empty_cover(false)
}

fn empty_cover(dir: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let uid = rustix::process::geteuid().as_raw();
    let name = if dir { "empty" } else { "empty-file" };
    let path = if uid == 0 {
        PathBuf::from("/run/secureclaw").join(name)
    } else {
        std::env::temp_dir().join(format!("secureclaw-{name}-{uid}"))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let created = if dir {
        std::fs::DirBuilder::new().mode(0o555).create(&path)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map(drop)
    };
    match created {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    // Never follow a symlink planted there, and never reuse something that is not ours, is
    // writable, or is not empty.
    let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let empty = if dir {
        meta.is_dir()
            && std::fs::read_dir(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .next()
                .is_none()
    } else {
        meta.is_file() && meta.len() == 0
    };
    if !empty || meta.uid() != uid || meta.mode() & 0o222 != 0 {
        return Err(format!(
            "{} must be an empty {} of uid {uid} without write permission",
            path.display(),
            if dir { "directory" } else { "file" }
        ));
    }
    let mode = if dir { 0o555 } else { 0o444 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
