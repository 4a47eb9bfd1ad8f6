//! The OCI bundle one step runs from: `config.json` plus a root directory that holds only
//! mount points and the synthesised `/etc` files.
//!
//! The contract is the other backends': a read-only root made of the host's system
//! directories (bound read-only, `nosuid,nodev`), `/workspace` bound read-write with its `.git`
//! read-only and the state dir covered, `/tmp` a `noexec` tmpfs, the step as an unprivileged
//! uid with no capabilities and `no_new_privs`, its own pid/ipc/uts/mount/network namespaces.
//! Resource limits are not in the spec: the engine creates the sandbox's cgroup with its limits
//! and names it in `cgroupsPath`, so runsc joins it and the engine can read the OOM counter
//! after the sandbox is gone (runsc removes only the cgroups it created itself).

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// What the bundle is made from.
#[derive(Debug, Clone)]
pub(crate) struct BundleSpec {
    pub argv: Vec<String>,
    /// `KEY=value`, the whole environment of the step.
    pub env: Vec<String>,
    pub user: (u32, u32),
    /// The host directory bound at `/workspace` (a prepared `nosuid,nodev` mount).
    pub workspace_source: PathBuf,
    /// Bind `/workspace/.git` read-only (the workspace has a `.git` directory).
    pub git_read_only: bool,
    /// `/workspace/...` targets hidden behind an empty read-only directory or file.
    pub masked: Vec<(String, PathBuf)>,
    /// Host paths bound read-only at the same path (toolchains).
    pub read_only: Vec<PathBuf>,
    /// `RLIMIT_NPROC`, enforced by gVisor's kernel: the step's process limit. The host cgroup's
    /// pids limit only bounds the runtime's own threads.
    pub nproc: u32,
    /// `RLIMIT_FSIZE`: the write budget as the largest file.
    pub fsize: u64,
    /// The cgroup the engine created for the sandbox (relative to each hierarchy's root).
    pub cgroups_path: Option<String>,
    /// The step's seccomp filter in OCI form, applied by gVisor's kernel inside the sandbox.
    pub seccomp: Option<Value>,
}

/// Options of every read-only bind of a host system path.
const SYSTEM_BIND: &[&str] = &["rbind", "ro", "nosuid", "nodev"];
/// `/tmp`: writable, but nothing written there can be executed.
pub(crate) const TMP_OPTIONS: &[&str] = &["nosuid", "nodev", "noexec", "mode=1777", "size=64m"];
/// Host names inside: the sandbox's own loopback only.
const HOSTS: &str = "127.0.0.1 localhost secureclaw\n::1 localhost ip6-localhost\n";

fn bind(source: &Path, target: &str, options: &[&str]) -> Value {
    json!({
        "destination": target,
        "type": "bind",
        "source": source.to_string_lossy(),
        "options": options,
    })
}

/// The host's system directories and `/etc` entries as they will appear inside: a bind for a
/// directory or file, a symlink recreated in the root for a symlink (merged-`/usr` systems link
/// `/bin` to `usr/bin`).
enum HostEntry {
    Bind {
        host: PathBuf,
        target: String,
        dir: bool,
    },
    Link {
        target: String,
        points_to: PathBuf,
    },
}

fn host_entries() -> Vec<HostEntry> {
    let system = crate::native::helper::SYSTEM_DIRS
        .iter()
        .map(|name| Path::new("/").join(name));
    let etc = crate::native::helper::ETC_ENTRIES
        .iter()
        .map(|name| Path::new("/etc").join(name));
    system
        .chain(etc)
        .filter_map(|host| {
            let meta = std::fs::symlink_metadata(&host).ok()?;
            let target = host.to_string_lossy().into_owned();
            if meta.file_type().is_symlink() {
                let points_to = std::fs::read_link(&host).ok()?;
                Some(HostEntry::Link { target, points_to })
            } else {
                Some(HostEntry::Bind {
                    dir: meta.is_dir(),
                    host,
                    target,
                })
            }
        })
        .collect()
}

/// The `config.json` of the step.
pub(crate) fn config(spec: &BundleSpec) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "noexec", "mode=755"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": TMP_OPTIONS}),
    ];
    for entry in host_entries() {
        if let HostEntry::Bind { host, target, .. } = entry {
            mounts.push(bind(&host, &target, SYSTEM_BIND));
        }
    }
    for path in &spec.read_only {
        mounts.push(bind(path, &path.to_string_lossy(), SYSTEM_BIND));
    }
    mounts.push(bind(
        &spec.workspace_source,
        "/workspace",
        &["rbind", "rw", "nosuid", "nodev"],
    ));
    if spec.git_read_only {
        mounts.push(bind(
            &spec.workspace_source.join(".git"),
            "/workspace/.git",
            &["rbind", "ro", "nosuid", "nodev"],
        ));
    }
    for (target, cover) in &spec.masked {
        mounts.push(bind(
            cover,
            target,
            &["bind", "ro", "nosuid", "nodev", "noexec"],
        ));
    }
    let mut linux = json!({
        "namespaces": [
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
        ],
    });
    if let Some(path) = &spec.cgroups_path {
        linux["cgroupsPath"] = json!(path);
    }
    if let Some(seccomp) = &spec.seccomp {
        linux["seccomp"] = seccomp.clone();
    }
    json!({
        "ociVersion": "1.0.0",
        "process": {
            "terminal": false,
            "user": {"uid": spec.user.0, "gid": spec.user.1},
            "args": spec.argv,
            "env": spec.env,
            "cwd": "/workspace",
            "capabilities": {
                "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []
            },
            "noNewPrivileges": true,
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                {"type": "RLIMIT_NPROC", "hard": spec.nproc, "soft": spec.nproc},
                {"type": "RLIMIT_FSIZE", "hard": spec.fsize, "soft": spec.fsize},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "secureclaw",
        "mounts": mounts,
        "linux": linux,
    })
}

/// Write the bundle into the empty directory `dir`: `config.json`, and `rootfs/` with a mount
/// point for every mount and the synthesised `/etc/passwd`, `/etc/group` and `/etc/hosts`.
pub(crate) fn write(dir: &Path, spec: &BundleSpec) -> io::Result<()> {
    let root = dir.join("rootfs");
    for d in ["proc", "dev", "tmp", "workspace", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for entry in host_entries() {
        match entry {
            HostEntry::Bind { target, dir, .. } => mount_point(&root, &target, dir)?,
            HostEntry::Link { target, points_to } => {
                let at = inside(&root, &target);
                if let Some(parent) = at.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::os::unix::fs::symlink(points_to, at)?;
            }
        }
    }
    for path in &spec.read_only {
        mount_point(&root, &path.to_string_lossy(), path.is_dir())?;
    }
    let (uid, gid) = spec.user;
    let etc = root.join("etc");
    std::fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{gid}:secureclaw step:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
    )?;
    std::fs::write(
        etc.join("group"),
        format!("root:x:0:\nsandbox:x:{gid}:\nnogroup:x:65534:\n"),
    )?;
    std::fs::write(etc.join("hosts"), HOSTS)?;
    let config = serde_json::to_vec_pretty(&config(spec)).map_err(io::Error::other)?;
    std::fs::write(dir.join("config.json"), config)
}

fn inside(root: &Path, target: &str) -> PathBuf {
    root.join(target.trim_start_matches('/'))
}

/// An empty directory or file at `target` under `root` for a bind to land on.
fn mount_point(root: &Path, target: &str, dir: bool) -> io::Result<()> {
    let at = inside(root, target);
    if dir {
        std::fs::create_dir_all(at)
    } else {
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(at, b"")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn spec() -> BundleSpec {
        BundleSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            user: (1000, 1000),
            workspace_source: PathBuf::from("/run/secureclaw/docker/x"),
            git_read_only: true,
            masked: vec![("/workspace/.secureclaw".into(), PathBuf::from("/empty"))],
            read_only: Vec::new(),
            nproc: 64,
            fsize: 1 << 20,
            cgroups_path: Some("/secureclaw/1-0".into()),
            seccomp: Some(json!({"defaultAction": "SCMP_ACT_ERRNO"})),
        }
    }

    fn mount<'a>(config: &'a Value, target: &str) -> &'a Value {
        config["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["destination"] == target)
            .unwrap_or_else(|| panic!("no mount at {target}"))
    }

    fn options(m: &Value) -> Vec<&str> {
        m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect()
    }

    #[test]
    fn the_step_is_unprivileged_with_nothing_to_gain() {
        let c = config(&spec());
        let p = &c["process"];
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["noNewPrivileges"], true);
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(p["capabilities"][set], json!([]), "{set}");
        }
        let nproc = p["rlimits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "RLIMIT_NPROC")
            .unwrap();
        assert_eq!(nproc["hard"], 64);
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["linux"]["cgroupsPath"], "/secureclaw/1-0");
        assert!(c["linux"].get("resources").is_none());
        assert_eq!(c["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let namespaces: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(namespaces.contains(&"network") && namespaces.contains(&"pid"));
    }

    #[test]
    fn only_the_workspace_is_writable_and_tmp_cannot_run_programs() {
        let c = config(&spec());
        for m in c["mounts"].as_array().unwrap() {
            let target = m["destination"].as_str().unwrap();
            if m["type"] == "bind" && target != "/workspace" {
                assert!(options(m).contains(&"ro"), "{target} is writable");
            }
            if m["type"] == "bind" {
                assert!(options(m).contains(&"nosuid"), "{target} allows setuid");
            }
        }
        assert!(options(mount(&c, "/workspace")).contains(&"rw"));
        assert!(options(mount(&c, "/workspace/.git")).contains(&"ro"));
        assert_eq!(mount(&c, "/workspace/.secureclaw")["source"], "/empty");
        assert!(options(mount(&c, "/tmp")).contains(&"noexec"));
    }

    #[test]
    fn the_written_root_has_a_mount_point_for_every_mount() {
        let dir = tempfile::tempdir().unwrap();
        let s = BundleSpec {
            git_read_only: false,
            masked: Vec::new(),
            ..spec()
        };
        write(dir.path(), &s).unwrap();
        let root = dir.path().join("rootfs");
        let config: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        for m in config["mounts"].as_array().unwrap() {
            let target = m["destination"].as_str().unwrap();
            assert!(
                inside(&root, target).exists(),
                "no mount point for {target}"
            );
        }
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("sandbox:x:1000:1000"));
    }
}
