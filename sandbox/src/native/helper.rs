//! The privileged part of the native backend: the re-executed helper and the sandbox init.
//!
//! Process tree of one step:
//!
//! ```text
//! engine ── helper (`secureclaw __sandbox-init`, host namespaces, engine's uid)
//!              └── init (pid 1 of new user/mnt/pid/net/ipc/uts/cgroup namespaces)
//!                     └── step (uid 1000, no caps, no_new_privs, Landlock, seccomp) → execve
//! ```
//!
//! The helper is single-threaded (it is entered before anything in `main` can start a thread),
//! which is what makes `clone`/`fork` without `exec` sound here. All `unsafe` of the backend is
//! in this file.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::protocol::{CONTROL_FD, HelperConfig, HelperResult, InnerMsg};
use crate::Layer;

/// Inside ids of the step (`user 1000`, the default hardening).
pub const INSIDE_UID: u32 = 1000;
pub const INSIDE_GID: u32 = 1000;

// Stable kernel uapi values (linux/mount.h), spelled out so we do not depend on which libc
// version exports them.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// CLOCK_MONOTONIC in nanoseconds (comparable across our processes).
pub fn now_ns() -> u64 {
    // SAFETY: valid out-pointer to a timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("path has a NUL byte: {p:?}"))
}

fn check(ret: libc::c_long, what: &str) -> Result<libc::c_long, String> {
    if ret < 0 {
        Err(format!("{what}: {}", errno()))
    } else {
        Ok(ret)
    }
}

/// The Landlock ABI the running kernel offers (0 when Landlock is off).
pub fn landlock_abi() -> i32 {
    // SAFETY: the version query takes no pointer (NULL, size 0) and creates no fd.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}

/// Entry of `secureclaw __sandbox-init`. Never returns.
pub fn helper_main() -> ! {
    // The control socket arrives as stdin. Move it off fd 0 (close-on-exec) and put
    // /dev/null there, which is what the step inherits as its stdin.
    // SAFETY: fcntl/open/dup2 on fds of this fresh process; the new fd is owned below.
    let control = unsafe {
        let fd = libc::fcntl(CONTROL_FD, libc::F_DUPFD_CLOEXEC, 3);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 || null < 0 || libc::dup2(null, 0) < 0 {
            libc::_exit(125);
        }
        libc::close(null);
        OwnedFd::from_raw_fd(fd)
    };
    let mut result = HelperResult::default();
    result.marks.push(("helper-start".into(), now_ns()));
    let code = match run_helper(&control, &mut result) {
        Ok(()) => 0,
        Err(e) => {
            result.fatal = Some(e);
            1
        }
    };
    let mut line = serde_json::to_vec(&result).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    let _ = fs::File::from(control).write_all(&line);
    // SAFETY: plain process exit; nothing is left to flush.
    unsafe { libc::_exit(code) }
}

/// Read the first chunk from the control socket, with at most one passed fd.
fn recv_with_fd(control: &OwnedFd) -> Result<(Vec<u8>, Option<OwnedFd>), String> {
    let mut data = vec![0u8; 64 * 1024];
    // Room for one SCM_RIGHTS message carrying one int, 8-byte aligned.
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all pointers below point to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let n = loop {
        // SAFETY: valid socket fd and msghdr.
        let n = unsafe { libc::recvmsg(control.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 || errno().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    let n = usize::try_from(n).map_err(|_| format!("reading the step config: {}", errno()))?;
    data.truncate(n);
    let mut fd = None;
    // SAFETY: walking the control messages the kernel wrote into cbuf.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((data, fd))
}

/// Engine side: send `data` with `fd` attached (SCM_RIGHTS) on a blocking unix socket.
pub fn send_with_fd(
    sock: &std::os::unix::net::UnixStream,
    data: &[u8],
    fd: RawFd,
) -> std::io::Result<usize> {
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; every pointer refers to a live buffer; the control
    // message is laid out with the CMSG_* helpers inside cbuf, which is large enough.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }
}

/// The calling thread's network namespace, to come back to after [`new_netns`].
pub fn current_netns() -> Result<OwnedFd, String> {
    fs::File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|e| format!("netns fd: {e}"))
}

/// Create a fresh network namespace with `lo` up and return an fd for it; the calling
/// (dedicated) thread goes back to `home` afterwards so it never lingers in a step's
/// namespace. Needs CAP_SYS_ADMIN and CAP_NET_ADMIN (a root engine).
pub fn new_netns(home: &OwnedFd) -> Result<OwnedFd, String> {
    // SAFETY: unshare/setns of the network namespace affect only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!("unshare(CLONE_NEWNET): {}", errno()));
    }
    let made = loopback_up().and_then(|()| current_netns());
    // SAFETY: as above; `home` is a valid namespace fd.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns back: {}", errno()));
    }
    made
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-int buffer.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into(),
        "pipe2",
    )?;
    // SAFETY: pipe2 succeeded, so both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn run_helper(control: &OwnedFd, result: &mut HelperResult) -> Result<(), String> {
    // The first chunk may carry a pre-created network namespace as SCM_RIGHTS.
    let (first, netns) = recv_with_fd(control)?;
    let mut reader = BufReader::new(
        std::io::Cursor::new(first).chain(fs::File::from(
            control
                .try_clone()
                .map_err(|e| format!("control socket: {e}"))?,
        )),
    );
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("reading the step config: {e}"))?;
    let config: HelperConfig =
        serde_json::from_str(&line).map_err(|e| format!("bad step config: {e}"))?;
    let mut config = config;
    result.marks.push(("config-read".into(), now_ns()));
    // The workspace as the step will see it, prepared while we still hold CAP_SYS_ADMIN in
    // the host namespace (idmapped mounts cannot be made from inside).
    let workspace_tree = if config.idmap_workspace {
        match idmapped_tree(&config) {
            Ok(fd) => {
                result.marks.push((
                    "idmap-userns".into(),
                    IDMAP_USERNS_DONE.load(std::sync::atomic::Ordering::Relaxed),
                ));
                result.marks.push(("idmap-mount".into(), now_ns()));
                result.layers.push(Layer {
                    name: "unprivileged-uid".into(),
                    active: true,
                    detail: format!(
                        "step runs as host uid {} (not root); the workspace is idmapped so its owner on disk appears as the step's uid",
                        config.outside_uid
                    ),
                });
                Some(fd)
            }
            Err(e) if config.allow_degraded => {
                result.missing.push(format!(
                    "unprivileged-uid: idmapped workspace mount failed ({e}); the step runs as the engine's uid"
                ));
                // SAFETY: geteuid/getegid cannot fail.
                (config.outside_uid, config.outside_gid) =
                    unsafe { (libc::geteuid(), libc::getegid()) };
                None
            }
            Err(e) => {
                return Err(format!(
                    "cannot run the step as an unprivileged uid: idmapped mount of the workspace failed ({e}); accept degraded mode to run it as the engine's uid"
                ));
            }
        }
    } else if rustix::process::geteuid().is_root() {
        // A root helper opens the workspace here, while it can still traverse private parent
        // directories (a workspace under /root, mode 0700); the step's uid could not.
        if config.outside_uid == 0 && !config.allow_degraded {
            return Err(
                "the step's uid would map to host root; accept degraded mode to allow it".into(),
            );
        }
        if config.outside_uid == 0 {
            result
                .missing
                .push("unprivileged-uid: the step's uid maps to host root".into());
        } else {
            result.layers.push(Layer {
                name: "unprivileged-uid".into(),
                active: true,
                detail: format!("step runs as host uid {}", config.outside_uid),
            });
        }
        let fd = open_tree(&config.workspace)?;
        set_attr(&fd, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, &config.workspace)?;
        Some(fd)
    } else {
        if config.outside_uid == 0 {
            if !config.allow_degraded {
                return Err(
                    "the step's uid would map to host root; accept degraded mode to allow it"
                        .into(),
                );
            }
            result
                .missing
                .push("unprivileged-uid: the step's uid maps to host root".into());
        } else {
            result.layers.push(Layer {
                name: "unprivileged-uid".into(),
                active: true,
                detail: format!("step runs as host uid {}", config.outside_uid),
            });
        }
        None
    };
    let config = &config;
    // Granted paths, opened the same way (a toolchain under a private home directory).
    let mut grant_trees = Vec::new();
    if rustix::process::geteuid().is_root() {
        for g in &config.grants {
            grant_trees.push((g.clone(), Some(open_grant(g)?)));
        }
    } else {
        grant_trees.extend(config.grants.iter().map(|g| (g.clone(), None)));
    }

    let (sync_r, sync_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    // Held open by this helper until it exits: the init checks it after re-arming its
    // parent-death signal, closing the window in which our death would go unnoticed.
    let (life_r, life_w) = pipe()?;

    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    // A fresh, never-used network namespace made ahead of time by the engine (creating one
    // is the most expensive part of a sandbox): enter it, and the init inherits it.
    if let Some(netns) = netns {
        // SAFETY: setns on a namespace fd we own; we are single-threaded.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
            flags &= !libc::CLONE_NEWNET;
        }
    }
    let fresh_netns = flags & libc::CLONE_NEWNET == 0;
    // SAFETY: a fork-like clone (no new stack, no shared memory) of a single-threaded process:
    // the child gets a private copy of the address space and only uses async-signal-safe
    // calls or plain Rust code that cannot observe another thread's locks (there are none).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!(
            "cannot create the sandbox namespaces (clone: {}); unprivileged user namespaces may be disabled",
            errno()
        ));
    }
    if pid == 0 {
        drop(sync_w);
        drop(report_r);
        drop(life_w);
        drop(reader);
        // SAFETY: closing the engine's control socket in the child: the sandbox must not be
        // able to talk to the engine.
        unsafe { libc::close(control.as_raw_fd()) };
        let code = init_main(
            config,
            fresh_netns,
            Opened {
                workspace: workspace_tree,
                grants: grant_trees,
            },
            sync_r,
            report_w,
            life_r,
        );
        // SAFETY: leave without running atexit handlers of the copied parent state.
        unsafe { libc::_exit(code) }
    }
    let pid = pid as libc::pid_t;
    drop(sync_r);
    drop(report_w);
    drop(life_r);
    drop(workspace_tree);
    drop(grant_trees);

    result.marks.push(("namespaces-cloned".into(), now_ns()));
    let setup = parent_setup(config, pid);
    if let Err(e) = setup {
        // SAFETY: killing our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        return Err(e);
    }
    result.marks.push(("cgroups-and-maps".into(), now_ns()));
    // Release the init process.
    fs::File::from(sync_w)
        .write_all(b"1")
        .map_err(|e| format!("releasing the sandbox init: {e}"))?;
    result.layers.push(Layer {
        name: "uid-map".into(),
        active: true,
        detail: format!(
            "uid {INSIDE_UID} inside = uid {} outside, gid {INSIDE_GID} = gid {}",
            config.outside_uid, config.outside_gid
        ),
    });
    if !config.cgroup_procs.is_empty() {
        result.layers.push(Layer {
            name: "cgroup".into(),
            active: true,
            detail: format!("joined {} cgroup(s)", config.cgroup_procs.len()),
        });
    }

    watch(control, report_r, pid, result);
    drop(life_w);
    Ok(())
}

/// Host trees opened before the sandbox's namespaces exist (by a root helper).
struct Opened {
    workspace: Option<OwnedFd>,
    /// Each grant with its tree when it could be opened ahead (else the init opens it).
    grants: Vec<(PathBuf, Option<OwnedFd>)>,
}

fn open_grant(path: &Path) -> Result<OwnedFd, String> {
    let fd = open_tree(path).map_err(|e| format!("read-only grant: {e}"))?;
    set_attr(&fd, RO, path)?;
    Ok(fd)
}

/// A user namespace whose only mapping is `inside` -> `outside` (uids and gids), as an fd.
/// Used by the native helper and by the docker backend's workspace mount (a multi-threaded
/// engine): the clone's child only makes async-signal-safe calls.
pub(crate) fn idmap_userns(uid: (u32, u32), gid: (u32, u32)) -> Result<OwnedFd, String> {
    idmap_userns_maps(
        &format!("{} {} 1\n", uid.0, uid.1),
        &format!("{} {} 1\n", gid.0, gid.1),
    )
}

/// A user namespace with the given `uid_map` and `gid_map` contents, as an fd.
pub(crate) fn idmap_userns_maps(uid_map: &str, gid_map: &str) -> Result<OwnedFd, String> {
    let (hold_r, hold_w) = pipe()?;
    // SAFETY: fork-like clone; the child only closes, reads and exits (async-signal-safe).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!("clone(CLONE_NEWUSER): {}", errno()));
    }
    if pid == 0 {
        drop(hold_w);
        let mut b = [0u8; 1];
        // SAFETY: reading into a valid buffer, then leaving.
        unsafe {
            libc::read(hold_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0)
        }
    }
    drop(hold_r);
    let pid = pid as libc::pid_t;
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let res = (|| {
        fs::write(dir.join("uid_map"), uid_map).map_err(|e| format!("idmap uid_map: {e}"))?;
        fs::write(dir.join("gid_map"), gid_map).map_err(|e| format!("idmap gid_map: {e}"))?;
        fs::File::open(dir.join("ns/user"))
            .map(OwnedFd::from)
            .map_err(|e| format!("idmap userns: {e}"))
    })();
    // The holder exits once this end closes; reap it, so a long-lived engine keeps no zombie.
    drop(hold_w);
    let mut status = 0;
    // SAFETY: reaping our own child; status is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    res
}

static IDMAP_USERNS_DONE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn idmapped_tree(config: &HelperConfig) -> Result<OwnedFd, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&config.workspace)
        .map_err(|e| format!("workspace {}: {e}", config.workspace.display()))?;
    // The workspace's owner on disk becomes the step's host uid: files it owns are the
    // step's, files it creates are written back as that owner.
    let userns = idmap_userns(
        (meta.uid(), config.outside_uid),
        (meta.gid(), config.outside_gid),
    )?;
    IDMAP_USERNS_DONE.store(now_ns(), std::sync::atomic::Ordering::Relaxed);
    let fd = open_tree(&config.workspace)?;
    mount_setattr(
        &fd,
        &MountAttr {
            attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        },
        "idmapped mount of the workspace",
    )?;
    Ok(fd)
}

fn parent_setup(config: &HelperConfig, pid: libc::pid_t) -> Result<(), String> {
    for procs in &config.cgroup_procs {
        fs::write(procs, pid.to_string())
            .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        // Without CAP_SETGID an unprivileged writer may only map its own gid after giving up
        // setgroups for the namespace.
        fs::write(proc_dir.join("setgroups"), "deny").map_err(|e| format!("setgroups: {e}"))?;
    }
    fs::write(
        proc_dir.join("uid_map"),
        format!("{INSIDE_UID} {} 1\n", config.outside_uid),
    )
    .map_err(|e| format!("writing uid_map: {e}"))?;
    fs::write(
        proc_dir.join("gid_map"),
        format!("{INSIDE_GID} {} 1\n", config.outside_gid),
    )
    .map_err(|e| format!("writing gid_map: {e}"))?;
    Ok(())
}

fn reap(pid: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid int out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Some(status);
        }
        if r < 0 && errno().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// Relay the inner messages until the init exits; kill the sandbox if the engine goes away.
fn watch(control: &OwnedFd, report_r: OwnedFd, pid: libc::pid_t, result: &mut HelperResult) {
    let mut report = fs::File::from(report_r);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: report.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: control.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if errno().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if fds[1].revents != 0 {
            // The engine sends nothing after the config: any event is its end (crash, kill,
            // or cancellation). Nothing of the step may outlive it.
            // SAFETY: killing our own child; its pid namespace dies with it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
            // SAFETY: nobody is left to report to.
            unsafe { libc::_exit(1) }
        }
        if fds[0].revents != 0 {
            match report.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
    }
    for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<InnerMsg>(line) {
            Ok(InnerMsg::Layer(l)) => result.layers.push(l),
            Ok(InnerMsg::Missing { what }) => result.missing.push(what),
            Ok(InnerMsg::Fatal { stage, message }) => {
                result.fatal = Some(format!("{stage}: {message}"))
            }
            Ok(InnerMsg::Exit { code, signal }) => {
                result.code = code;
                result.signal = signal;
            }
            Ok(InnerMsg::Mark { phase, ns }) => result.marks.push((phase, ns)),
            Err(_) => {}
        }
    }
    if let Some(status) = reap(pid)
        && result.code.is_none()
        && result.signal.is_none()
        && libc::WIFSIGNALED(status)
    {
        // The init itself was killed (OOM killer, or the engine's cgroup kill).
        result.signal = Some(libc::WTERMSIG(status));
    }
}

/// Writes one message on the report pipe (best effort: the helper may be gone).
struct Reporter(OwnedFd);

impl Reporter {
    fn send(&self, msg: &InnerMsg) {
        if let Ok(mut line) = serde_json::to_vec(msg) {
            line.push(b'\n');
            // SAFETY: writing a valid buffer to our own pipe fd.
            unsafe { libc::write(self.0.as_raw_fd(), line.as_ptr().cast(), line.len()) };
        }
    }
    fn layer(&self, name: &str, active: bool, detail: impl Into<String>) {
        self.send(&InnerMsg::Layer(Layer {
            name: name.into(),
            active,
            detail: detail.into(),
        }));
    }
    fn mark(&self, phase: &str) {
        self.send(&InnerMsg::Mark {
            phase: phase.into(),
            ns: now_ns(),
        });
    }
    fn fatal(&self, stage: &str, message: impl Into<String>) {
        self.send(&InnerMsg::Fatal {
            stage: stage.into(),
            message: message.into(),
        });
    }
}

/// pid 1 of the sandbox.
fn init_main(
    config: &HelperConfig,
    netns_ready: bool,
    opened: Opened,
    sync_r: OwnedFd,
    report_w: OwnedFd,
    life_r: OwnedFd,
) -> i32 {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let rep = Reporter(report_w);
    let mut byte = [0u8; 1];
    // EOF here means the helper died before releasing us (then PDEATHSIG may not have fired).
    if !matches!(fs::File::from(sync_r).read(&mut byte), Ok(1)) {
        return 1;
    }
    // Our host uid (usually root) has no mapping in the namespace; files we create while
    // building the root need a mapped owner. Capabilities in the namespace stay (the kernel
    // only drops them on leaving the namespace's uid 0, which is unmapped) until the step
    // drops them all.
    // SAFETY: plain id syscalls.
    let ids = unsafe {
        libc::setresgid(INSIDE_GID, INSIDE_GID, INSIDE_GID) == 0
            && libc::setresuid(INSIDE_UID, INSIDE_UID, INSIDE_UID) == 0
    };
    if !ids {
        rep.fatal("identity", errno().to_string());
        return 1;
    }
    // A credential change clears the parent-death signal: arm it again, then make sure the
    // helper did not die in between (its end of the life pipe would be closed).
    let mut life = libc::pollfd {
        fd: life_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: prctl with integer arguments; poll on one valid pollfd without waiting.
    let helper_gone = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::poll(&mut life, 1, 0) != 0
    };
    if helper_gone {
        return 1;
    }
    rep.layer("namespaces", true, "user, mount, pid, network, ipc, uts");
    rep.mark("init-released");
    if let Err(e) = build_sandbox(config, netns_ready, opened, &rep) {
        rep.fatal("sandbox setup", e);
        return 1;
    }
    rep.mark("root-built");

    // SAFETY: fork in a single-threaded process.
    let child = unsafe { libc::fork() };
    if child < 0 {
        rep.fatal("fork", errno().to_string());
        return 1;
    }
    if child == 0 {
        let err = step_main(config, &rep);
        rep.fatal("step", err);
        // SAFETY: exec failed; leave at once.
        unsafe { libc::_exit(127) }
    }
    // Reap everything (we are the subreaper of the namespace) until the step itself ends;
    // when we return, the kernel kills whatever the step left behind.
    loop {
        let mut status = 0;
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == child {
            rep.mark("step-exited");
            let msg = if libc::WIFEXITED(status) {
                InnerMsg::Exit {
                    code: Some(libc::WEXITSTATUS(status)),
                    signal: None,
                }
            } else {
                InnerMsg::Exit {
                    code: None,
                    signal: Some(libc::WTERMSIG(status)),
                }
            };
            rep.send(&msg);
            return 0;
        }
        if r < 0 && errno().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
    }
}

fn open_tree(path: &Path) -> Result<OwnedFd, String> {
    let c = cstr(path)?;
    // SAFETY: valid C string; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    let fd = check(fd, &format!("open_tree {}", path.display()))?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn set_attr(fd: &OwnedFd, set: u64, what: &Path) -> Result<(), String> {
    mount_setattr(
        fd,
        &MountAttr {
            attr_set: set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        },
        &format!("mount_setattr {}", what.display()),
    )
}

/// `mount_setattr(2)` on a detached tree, recursively.
fn mount_setattr(fd: &OwnedFd, attr: &MountAttr, what: &str) -> Result<(), String> {
    let empty = c"";
    // SAFETY: `fd` is a live fd, the empty path is paired with AT_EMPTY_PATH, and `attr` points
    // to a live struct of exactly the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r, what).map(|_| ())
}

fn attach(fd: &OwnedFd, target: &Path) -> Result<(), String> {
    let t = cstr(target)?;
    let empty = c"";
    // SAFETY: valid fd and C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r, &format!("move_mount to {}", target.display())).map(|_| ())
}

fn mount(
    source: &CStr,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), String> {
    let t = cstr(target)?;
    // SAFETY: all pointers are valid C strings or NULL.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            t.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    check(r.into(), &format!("mount {}", target.display())).map(|_| ())
}

/// System directories the step may read and execute (absent ones are skipped).
pub(crate) const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"];
/// Files and directories of `/etc` programs commonly need; nothing secret.
pub(crate) const ETC_ENTRIES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "localtime",
    "timezone",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "protocols",
    "services",
    "os-release",
    "debian_version",
    "mime.types",
    "inputrc",
    "profile",
    "bash.bashrc",
    "gitconfig",
];
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// A source prepared before the new root hides the host paths.
enum Source {
    Tree(OwnedFd),
    Symlink(PathBuf),
    File(Vec<u8>),
}

fn prepare(host: &Path, attrs: u64) -> Result<Option<Source>, String> {
    let Ok(meta) = fs::symlink_metadata(host) else {
        return Ok(None);
    };
    if meta.file_type().is_symlink() {
        return fs::read_link(host)
            .map(|t| Some(Source::Symlink(t)))
            .map_err(|e| format!("readlink {}: {e}", host.display()));
    }
    let fd = open_tree(host)?;
    set_attr(&fd, attrs, host)?;
    Ok(Some(Source::Tree(fd)))
}

fn place(source: Source, target: &Path, dir_hint: bool) -> Result<(), String> {
    match source {
        Source::Symlink(to) => std::os::unix::fs::symlink(&to, target)
            .map_err(|e| format!("symlink {}: {e}", target.display())),
        Source::File(bytes) => {
            fs::write(target, bytes).map_err(|e| format!("write {}: {e}", target.display()))
        }
        Source::Tree(fd) => {
            // The mount point must have the type of what is mounted on it.
            let mut st: libc::stat = unsafe_zeroed_stat();
            let empty = c"";
            // SAFETY: valid fd, empty path, out-pointer to a stat buffer.
            let r = unsafe {
                libc::fstatat(fd.as_raw_fd(), empty.as_ptr(), &mut st, libc::AT_EMPTY_PATH)
            };
            let is_dir = if r == 0 {
                st.st_mode & libc::S_IFMT == libc::S_IFDIR
            } else {
                dir_hint
            };
            if is_dir {
                fs::create_dir_all(target)
            } else {
                fs::write(target, b"")
            }
            .map_err(|e| format!("mount point {}: {e}", target.display()))?;
            attach(&fd, target)
        }
    }
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

const RO: u64 = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

fn build_sandbox(
    config: &HelperConfig,
    netns_ready: bool,
    opened: Opened,
    rep: &Reporter,
) -> Result<(), String> {
    // SAFETY: unshare with a flag constant.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } == 0 {
        rep.layer(
            "cgroup-namespace",
            true,
            "the step sees its own cgroup as root",
        );
    } else {
        rep.send(&InnerMsg::Missing {
            what: format!("cgroup-namespace: {}", errno()),
        });
    }
    // Nothing we mount may propagate back to the host.
    mount(
        c"none",
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;

    // Grab everything from the host tree first: the new root is then mounted over a host
    // directory (which may contain the workspace).
    let mut sys = Vec::new();
    for name in SYSTEM_DIRS {
        if let Some(src) = prepare(&Path::new("/").join(name), RO)? {
            sys.push((*name, src));
        }
    }
    let mut etc = Vec::new();
    for name in ETC_ENTRIES {
        if let Some(src) = prepare(&Path::new("/etc").join(name), RO)? {
            etc.push((*name, src));
        }
    }
    let mut dev = Vec::new();
    for name in DEV_NODES {
        if let Some(src) = prepare(
            &Path::new("/dev").join(name),
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
        )? {
            dev.push((*name, src));
        }
    }
    let workspace = match opened.workspace {
        Some(fd) => fd,
        None => {
            let fd = open_tree(&config.workspace)?;
            set_attr(&fd, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, &config.workspace)?;
            fd
        }
    };
    // Checked on the opened tree, not by path: the path may cross directories the step's uid
    // cannot traverse.
    if !fd_is_dir(&workspace) {
        return Err(format!(
            "workspace {} is not a directory",
            config.workspace.display()
        ));
    }
    let mut grants = Vec::new();
    for (path, fd) in opened.grants {
        let fd = match fd {
            Some(fd) => fd,
            None => open_grant(&path)?,
        };
        grants.push((path, fd));
    }

    rep.mark("sources-opened");
    let root = ["/tmp", "/mnt", "/run"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or("no directory to build the new root on")?;
    mount(
        c"tmpfs",
        root,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"mode=0755,size=1m"),
    )?;
    for (name, src) in sys {
        place(src, &root.join(name), true)?;
    }
    for (path, fd) in grants {
        let rel = grant_target(&path)?;
        place(Source::Tree(fd), &root.join(rel), true)?;
    }
    // The source of the bind mounts that hide files: an empty read-only file on the new
    // root, unlinked once every mask is in place.
    let empty = root.join(".secureclaw-empty");
    fs::write(&empty, b"").map_err(|e| format!("write {}: {e}", empty.display()))?;
    if !config.grants.is_empty() {
        for mask in &config.grant_masks {
            let rel = grant_target(mask)?;
            hide(root, &rel, &empty)?;
        }
        rep.layer(
            "read-only-grants",
            true,
            format!(
                "read-only, nosuid,nodev at the same path: {}{}",
                config
                    .grants
                    .iter()
                    .map(|g| g.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if config.grant_masks.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} credential path(s) inside hidden",
                        config.grant_masks.len()
                    )
                }
            ),
        );
    }
    let r_etc = root.join("etc");
    fs::create_dir(&r_etc).map_err(|e| format!("mkdir etc: {e}"))?;
    for (name, src) in etc {
        place(src, &r_etc.join(name), false)?;
    }
    let synth: [(&str, String); 3] = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/bin/sh\nsandbox:x:{INSIDE_UID}:{INSIDE_GID}:secureclaw step:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "group",
            format!("root:x:0:\nsandbox:x:{INSIDE_GID}:\nnogroup:x:65534:\n"),
        ),
        (
            "hosts",
            "127.0.0.1 localhost secureclaw\n::1 localhost ip6-localhost\n".to_string(),
        ),
    ];
    for (name, content) in synth {
        place(Source::File(content.into_bytes()), &r_etc.join(name), false)?;
    }

    let r_dev = root.join("dev");
    fs::create_dir(&r_dev).map_err(|e| format!("mkdir dev: {e}"))?;
    mount(
        c"tmpfs",
        &r_dev,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=0755,size=64k"),
    )?;
    for (name, src) in dev {
        place(src, &r_dev.join(name), false)?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, r_dev.join(name))
            .map_err(|e| format!("dev symlink {name}: {e}"))?;
    }
    mount(
        c"none",
        &r_dev,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )?;

    let r_proc = root.join("proc");
    fs::create_dir(&r_proc).map_err(|e| format!("mkdir proc: {e}"))?;
    // Read-only: with a writable procfs, /proc/sys and /proc/sysrq-trigger are host-wide.
    let fresh_proc = mount(
        c"proc",
        &r_proc,
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
        None,
    );
    if let Err(why) = fresh_proc {
        // Inside a container whose own /proc has masked entries (Docker's default), the kernel
        // refuses a new procfs in a user namespace. Binding the container's /proc instead would
        // show the step the server and every other step; an empty /proc hides everything and
        // only breaks programs that read it, so it is the fallback, and only when accepted.
        if !(config.allow_degraded || config.accept_empty_proc) {
            return Err(format!(
                "{why}: the kernel refuses a fresh /proc here (inside a container that masks parts of its own /proc); \
                 run the container with `--security-opt systempaths=unconfined`, or accept an empty /proc for every step \
                 with SECURECLAW_SANDBOX_ACCEPT_MISSING=proc"
            ));
        }
        mount(
            c"tmpfs",
            &r_proc,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
            Some(c"mode=0555,size=4k"),
        )?;
        rep.send(&InnerMsg::Missing {
            what: format!("proc: {why}; /proc is an empty read-only directory"),
        });
    }

    let r_tmp = root.join("tmp");
    fs::create_dir(&r_tmp).map_err(|e| format!("mkdir tmp: {e}"))?;
    let tmp_opts = CString::new(format!("mode=1777,size={}", config.tmp_size_bytes))
        .map_err(|_| "tmp options")?;
    mount(
        c"tmpfs",
        &r_tmp,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&tmp_opts),
    )?;
    rep.layer(
        "tmp",
        true,
        format!("tmpfs {} bytes, nosuid,nodev,noexec", config.tmp_size_bytes),
    );

    let r_ws = root.join("workspace");
    place(Source::Tree(workspace), &r_ws, true)?;
    // .git is cloned from the workspace as mounted (so it keeps the idmap) and made read-only.
    // A symlinked .git points outside the workspace: it dangles inside, nothing to protect.
    let git = r_ws.join(".git");
    if let Ok(m) = fs::symlink_metadata(&git)
        && !m.file_type().is_symlink()
    {
        let fd = open_tree(&git)?;
        set_attr(&fd, RO, &git)?;
        place(Source::Tree(fd), &git, m.is_dir())?;
        rep.layer("git-readonly", true, "/workspace/.git mounted read-only");
    }
    for hidden in &config.hidden {
        hide(&r_ws, hidden, &empty)?;
    }
    fs::remove_file(&empty).map_err(|e| format!("remove {}: {e}", empty.display()))?;
    rep.layer("workspace", true, "/workspace read-write, nosuid,nodev");

    rep.mark("mounts-placed");
    // Switch to the new root and drop the host tree from this namespace entirely.
    std::env::set_current_dir(root).map_err(|e| format!("chdir new root: {e}"))?;
    let dot = c".";
    // SAFETY: pivot_root(".", ".") stacks the old root under the new one; both C strings
    // are valid.
    check(
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) },
        "pivot_root",
    )?;
    // SAFETY: valid C string.
    check(
        unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) }.into(),
        "detaching the host root",
    )?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    mount(
        c"none",
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    rep.layer(
        "readonly-root",
        true,
        "pivot_root into a read-only tmpfs: /usr, /bin, /lib* and selected /etc entries bound read-only, minimal /dev, read-only /proc",
    );

    rep.mark("pivoted");
    let name = b"secureclaw";
    // SAFETY: valid buffer and length.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        rep.send(&InnerMsg::Missing {
            what: format!("hostname: {}", errno()),
        });
    }
    if netns_ready {
        rep.layer(
            "network",
            true,
            "own network namespace (fresh, pre-created for this step): loopback only",
        );
        return Ok(());
    }
    match loopback_up() {
        Ok(()) => rep.layer("network", true, "own network namespace: loopback only"),
        Err(e) => rep.layer(
            "network",
            true,
            format!("own network namespace, no interface up ({e})"),
        ),
    }
    Ok(())
}

/// Directories of the new root the grants may not be placed in (they are the sandbox's own).
const RESERVED: &[&str] = &["workspace", "tmp", "proc", "dev", "etc"];

/// Where a granted host path goes in the new root (relative to it), checked.
fn grant_target(path: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => rel.push(n),
            _ => {
                return Err(format!(
                    "read-only grant {}: not a plain absolute path",
                    path.display()
                ));
            }
        }
    }
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    match first {
        None => Err("read-only grant of `/`".into()),
        Some(f) if RESERVED.contains(&f.as_str()) || SYSTEM_DIRS.contains(&f.as_str()) => {
            Err(format!(
                "read-only grant {}: inside /{f}, which the sandbox provides itself",
                path.display()
            ))
        }
        Some(_) => Ok(rel),
    }
}

/// Hide `rel` below `base` behind an empty read-only directory or file. The path is resolved
/// without following symlinks and without leaving `base` (an earlier step may have planted a
/// symlink); a missing path needs no hiding.
fn hide(base: &Path, rel: &Path, empty: &Path) -> Result<(), String> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    const RESOLVE_BENEATH: u64 = 0x08;
    let b = cstr(base)?;
    // SAFETY: valid C string; the fd is owned below.
    let dir = unsafe {
        libc::open(
            b.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check(dir.into(), &format!("open {}", base.display()))?;
    // SAFETY: fresh fd owned by us.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let c = cstr(rel)?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid dir fd, C string and open_how struct of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        let e = errno();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(format!(
            "hiding {}: {e} (a symlink on the way is refused)",
            rel.display()
        ));
    }
    // SAFETY: fresh fd owned by us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // The mount goes onto the very inode opened above, whatever happens to the path.
    let target = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if fd_is_dir(&fd) {
        // An empty directory that `find .` and `tar czf x .` traverse without an error.
        mount(
            c"tmpfs",
            &target,
            Some(c"tmpfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(c"size=4k,mode=0555"),
        )
    } else {
        // An empty read-only file (not /dev/null: tar would archive a device node), made
        // read-only before it is attached onto the opened inode.
        let tree = open_tree(empty)?;
        set_attr(&tree, RO | MOUNT_ATTR_NOEXEC, empty)?;
        let empty_path = c"";
        // SAFETY: both fds are live; empty paths are paired with the *_EMPTY_PATH flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty_path.as_ptr(),
                fd.as_raw_fd(),
                empty_path.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        check(r, &format!("hiding {}", rel.display())).map(|_| ())
    }
}

fn fd_is_dir(fd: &OwnedFd) -> bool {
    let mut st: libc::stat = unsafe_zeroed_stat();
    let empty = c"";
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, out-pointer to a stat buffer.
    let r = unsafe { libc::fstatat(fd.as_raw_fd(), empty.as_ptr(), &mut st, libc::AT_EMPTY_PATH) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket call.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(s.into(), "socket")?;
    // SAFETY: fresh fd owned by us.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket and ifreq buffer.
    check(
        unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }.into(),
        "SIOCGIFFLAGS",
    )?;
    // SAFETY: reading and writing the flags member of the union that SIOCGIFFLAGS filled.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: valid socket and ifreq buffer.
    check(
        unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }.into(),
        "SIOCSIFFLAGS",
    )?;
    Ok(())
}

/// The step process: drop everything, lock down, exec. Returns only on failure.
fn step_main(config: &HelperConfig, rep: &Reporter) -> String {
    match step_lockdown(config, rep) {
        Ok(()) => {}
        Err(e) => return e,
    }
    exec(config)
}

fn step_lockdown(config: &HelperConfig, rep: &Reporter) -> Result<(), String> {
    rep.mark("step-forked");
    // SAFETY: the following are syscalls with integer arguments or valid pointers.
    unsafe {
        libc::setsid();
        // A core dump could be piped to a host-side helper (core_pattern): none at all.
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        if let Some(limit) = config.file_size_limit {
            // The write budget bounds every single file in the kernel: past it, write() raises
            // SIGXFSZ (or fails with EFBIG). Soft and hard, so the step cannot raise it.
            let fsize = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &fsize);
        }
        // Capability bounding set: nothing can ever come back, even through file caps.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && errno().raw_os_error() == Some(libc::EINVAL)
            {
                break;
            }
        }
        // Supplementary groups: none (fails harmlessly when setgroups is denied for the ns).
        libc::setgroups(0, std::ptr::null());
        check(
            libc::setresgid(INSIDE_GID, INSIDE_GID, INSIDE_GID).into(),
            "setresgid",
        )?;
        check(
            libc::setresuid(INSIDE_UID, INSIDE_UID, INSIDE_UID).into(),
            "setresuid",
        )?;
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        // Drop the namespace's capabilities explicitly: uid 1000 is not root inside, but the
        // kernel only clears capabilities on a uid change away from the namespace's root.
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = CapHeader {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check(
            libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()),
            "capset",
        )?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
            "no_new_privs",
        )?;
    }
    rep.mark("creds-dropped");
    rep.layer(
        "capabilities",
        true,
        "none: effective, permitted, inheritable, ambient and bounding sets empty",
    );
    rep.layer(
        "no-new-privs",
        true,
        "PR_SET_NO_NEW_PRIVS=1; setuid bits ignored (and nosuid mounts)",
    );
    rep.layer(
        "identity",
        true,
        format!("uid {INSIDE_UID} gid {INSIDE_GID}, no supplementary groups"),
    );

    if config.landlock_abi > 0 {
        let detail = apply_landlock(config.landlock_abi, &config.grants)?;
        rep.layer("landlock", true, detail);
    } else {
        rep.send(&InnerMsg::Missing {
            what: "landlock: not offered by this kernel".into(),
        });
    }

    rep.mark("landlock");
    std::env::set_current_dir("/workspace").map_err(|e| format!("chdir /workspace: {e}"))?;
    // SAFETY: marks every fd from 3 up close-on-exec (the report pipe already is).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };

    if config.seccomp.is_empty() {
        rep.send(&InnerMsg::Missing {
            what: "seccomp: filter unavailable".into(),
        });
    } else {
        rep.layer(
            "seccomp",
            true,
            format!(
                "default-deny allowlist from sandbox/policy/seccomp.toml ({} filter(s))",
                config.seccomp.len()
            ),
        );
        for program in &config.seccomp {
            let filter: Vec<seccompiler::sock_filter> = program
                .iter()
                .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
                .collect();
            seccompiler::apply_filter(&filter).map_err(|e| format!("seccomp: {e}"))?;
        }
    }
    rep.mark("step-exec");
    Ok(())
}

fn apply_landlock(abi: i32, grants: &[PathBuf]) -> Result<String, String> {
    use landlock::{
        ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    };
    let abi = ABI::from(abi);
    let all = AccessFs::from_all(abi);
    let read_exec = AccessFs::from_read(abi);
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let mut rules: Vec<(&str, BitFlags<AccessFs>)> = vec![("/", AccessFs::ReadDir.into())];
    for d in SYSTEM_DIRS {
        rules.push((d, read_exec));
    }
    rules.push(("/etc", read));
    // Granted toolchains: read and execute, like the system directories.
    let grant_paths: Vec<String> = grants.iter().map(|g| g.display().to_string()).collect();
    for g in &grant_paths {
        rules.push((g.as_str(), read_exec));
    }
    rules.push(("/proc", read));
    rules.push((
        "/dev",
        read | AccessFs::WriteFile | (all & AccessFs::IoctlDev),
    ));
    rules.push(("/workspace", all));
    // No Execute under /tmp: noexec twice over.
    rules.push(("/tmp", all & !AccessFs::Execute));

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(|e| format!("landlock: {e}"))?;
    let scoped = !Scope::from_all(abi).is_empty();
    if scoped {
        ruleset = ruleset
            .scope(Scope::from_all(abi))
            .map_err(|e| format!("landlock scope: {e}"))?;
    }
    let mut created = ruleset.create().map_err(|e| format!("landlock: {e}"))?;
    for (path, access) in rules {
        let path = if path.starts_with('/') {
            PathBuf::from(path)
        } else {
            Path::new("/").join(path)
        };
        if !path.exists() {
            continue;
        }
        let fd = PathFd::new(&path).map_err(|e| format!("landlock {}: {e}", path.display()))?;
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| format!("landlock rule {}: {e}", path.display()))?;
    }
    let status = created
        .restrict_self()
        .map_err(|e| format!("landlock: {e}"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("landlock: ruleset not enforced".into());
    }
    Ok(format!(
        "ABI {} ({:?}); read-only system, /tmp no-exec, writes only under /workspace and /tmp{}",
        abi as i32,
        status.ruleset,
        if scoped {
            "; signals and abstract unix sockets scoped to the sandbox"
        } else {
            ""
        }
    ))
}

fn find_program(argv0: &str, env: &[(String, String)]) -> Option<PathBuf> {
    if argv0.contains('/') {
        return Some(PathBuf::from(argv0));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(super::DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(dir).join(argv0))
        .find(|p| {
            let c = match cstr(p) {
                Ok(c) => c,
                Err(_) => return false,
            };
            // SAFETY: valid C string.
            unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
        })
}

fn exec(config: &HelperConfig) -> String {
    let Some(argv0) = config.argv.first() else {
        return "empty argv".into();
    };
    let Some(program) = find_program(argv0, &config.env) else {
        return format!("`{argv0}` not found in PATH");
    };
    let Ok(prog) = cstr(&program) else {
        return "program path has a NUL byte".into();
    };
    let args: Result<Vec<CString>, _> = config
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect();
    let envs: Result<Vec<CString>, _> = config
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect();
    let (Ok(args), Ok(envs)) = (args, envs) else {
        return "argument or environment has a NUL byte".into();
    };
    let mut argp: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envs.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(prog.as_ptr(), argp.as_ptr(), envp.as_ptr()) };
    format!("exec {}: {}", program.display(), errno())
}
