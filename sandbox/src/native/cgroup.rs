//! Per-step cgroups through the cgroup filesystem (v2 unified, or v1 per-controller trees).
//!
//! Every step gets `<hierarchy>/secureclaw/<engine-pid>-<n>` in each hierarchy it uses. The
//! engine pid in the name lets [`sweep`] tell a leftover of a dead engine from a live step.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Limits;

const BASE: &str = "secureclaw";

#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// A cgroup2 mount with the controllers we need available.
    V2 {
        mount: PathBuf,
    },
    /// Legacy per-controller mounts; any of them may be absent.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    None(String),
}

impl Layout {
    /// What the kernel offers, read from `/proc/self/mountinfo`.
    pub fn detect() -> Layout {
        let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
            return Layout::None("cannot read /proc/self/mountinfo".into());
        };
        let (mut memory, mut pids, mut cpu, mut v2) = (None, None, None, None);
        for line in info.lines() {
            // Fields: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
            let mut halves = line.splitn(2, " - ");
            let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
                continue;
            };
            let mountpoint = left.split(' ').nth(4).map(PathBuf::from);
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let superopts = right.nth(1).unwrap_or_default();
            let Some(mountpoint) = mountpoint else {
                continue;
            };
            match fstype {
                "cgroup2" => {
                    let controllers = fs::read_to_string(mountpoint.join("cgroup.controllers"))
                        .unwrap_or_default();
                    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
                    if has("memory") && has("pids") && v2.is_none() {
                        v2 = Some(mountpoint);
                    }
                }
                "cgroup" => {
                    let opts: Vec<&str> = superopts.split(',').collect();
                    if opts.contains(&"memory") && memory.is_none() {
                        memory = Some(mountpoint.clone());
                    }
                    if opts.contains(&"pids") && pids.is_none() {
                        pids = Some(mountpoint.clone());
                    }
                    if opts.contains(&"cpu") && cpu.is_none() {
                        cpu = Some(mountpoint);
                    }
                }
                _ => {}
            }
        }
        if let Some(mount) = v2 {
            return Layout::V2 { mount };
        }
        if memory.is_some() || pids.is_some() || cpu.is_some() {
            return Layout::V1 { memory, pids, cpu };
        }
        Layout::None("no cgroup filesystem with memory/pids controllers is mounted".into())
    }

    /// The directories under which step cgroups are created, one per hierarchy.
    fn bases(&self) -> Vec<(Controller, PathBuf)> {
        match self {
            Layout::V2 { mount } => vec![(Controller::Unified, mount.join(BASE))],
            Layout::V1 { memory, pids, cpu } => {
                let mut out = Vec::new();
                if let Some(p) = memory {
                    out.push((Controller::Memory, p.join(BASE)));
                }
                if let Some(p) = pids {
                    out.push((Controller::Pids, p.join(BASE)));
                }
                if let Some(p) = cpu {
                    out.push((Controller::Cpu, p.join(BASE)));
                }
                out
            }
            Layout::None(_) => Vec::new(),
        }
    }

    /// Create the base directories and check we may write there. Returns the limits we can
    /// enforce (`memory`, `cpu`, `pids`) and what is missing with a reason.
    pub fn prepare(&self) -> (Vec<&'static str>, Vec<String>) {
        let mut have = Vec::new();
        let mut missing = Vec::new();
        if let Layout::None(reason) = self {
            return (have, vec![format!("cgroups: {reason}")]);
        }
        for (ctl, base) in self.bases() {
            let ok = fs::create_dir_all(&base).is_ok()
                && match ctl {
                    Controller::Unified => enable_v2_controllers(&base).is_ok(),
                    _ => true,
                }
                && probe_writable(&base);
            let names: &[&'static str] = match ctl {
                Controller::Unified => &["memory", "cpu", "pids"],
                Controller::Memory => &["memory"],
                Controller::Pids => &["pids"],
                Controller::Cpu => &["cpu"],
            };
            for n in names {
                if ok {
                    have.push(*n);
                } else {
                    missing.push(format!(
                        "cgroup-{n}: cannot create cgroups under {}",
                        base.display()
                    ));
                }
            }
        }
        for n in ["memory", "cpu", "pids"] {
            if !have.contains(&n)
                && !missing
                    .iter()
                    .any(|m| m.starts_with(&format!("cgroup-{n}")))
            {
                missing.push(format!("cgroup-{n}: controller not mounted"));
            }
        }
        if let Layout::V2 { mount } = self {
            let controllers = fs::read_to_string(mount.join(BASE).join("cgroup.subtree_control"))
                .unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "cpu") {
                have.retain(|n| *n != "cpu");
                missing.push("cgroup-cpu: cpu controller not enabled".into());
            }
        }
        (have, missing)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Controller {
    Unified,
    Memory,
    Pids,
    Cpu,
}

fn enable_v2_controllers(base: &Path) -> io::Result<()> {
    // Controllers must be enabled in every ancestor's subtree_control, root first.
    if let Some(parent) = base.parent() {
        let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
    }
    let _ = fs::write(base.join("cgroup.subtree_control"), "+memory +pids +cpu");
    let enabled = fs::read_to_string(base.join("cgroup.subtree_control"))?;
    if enabled.split_whitespace().any(|c| c == "memory") {
        Ok(())
    } else {
        Err(io::Error::other("memory controller could not be enabled"))
    }
}

fn probe_writable(base: &Path) -> bool {
    let probe = base.join(format!("probe-{}", std::process::id()));
    let ok = fs::create_dir(&probe).is_ok() || probe.is_dir();
    let _ = fs::remove_dir(&probe);
    ok
}

/// The cgroups of one step (one directory per hierarchy).
#[derive(Debug)]
pub struct StepCgroup {
    dirs: Vec<(Controller, PathBuf)>,
    /// Event counters when the step started: a reused cgroup keeps its history.
    base_oom: u64,
    base_pids: u64,
}

/// Empty step cgroups kept for reuse: creating and removing a cgroup costs milliseconds
/// (RCU grace periods in the kernel), rewriting its limits costs microseconds.
static POOL: std::sync::Mutex<Vec<StepCgroup>> = std::sync::Mutex::new(Vec::new());
const POOL_MAX: usize = 8;

fn pool() -> std::sync::MutexGuard<'static, Vec<StepCgroup>> {
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removals running in the background, waited for by [`drain`].
static REMOVALS: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

fn removals() -> std::sync::MutexGuard<'static, Vec<std::thread::JoinHandle<()>>> {
    REMOVALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remove every pooled step cgroup and wait for the background removals: called when a run
/// ends, so that only a crashed engine leaves cgroups behind.
pub fn drain() {
    let pooled: Vec<StepCgroup> = std::mem::take(&mut *pool());
    for cg in pooled {
        cg.remove();
    }
    let running: Vec<_> = std::mem::take(&mut *removals());
    for handle in running {
        let _ = handle.join();
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Step cgroups of this process that are in use: [`sweep`] must never touch them, even when a
/// dead engine of an earlier boot had the same pid.
static ACTIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn active() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    ACTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StepCgroup {
    pub fn create(layout: &Layout, limits: &Limits) -> io::Result<StepCgroup> {
        let pooled = pool().pop();
        if let Some(mut cg) = pooled {
            match cg.apply(limits) {
                Ok(()) => {
                    cg.base_oom = cg.oom_count();
                    cg.base_pids = cg.pids_count();
                    return Ok(cg);
                }
                Err(_) => cg.remove(),
            }
        }
        let name = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut cg = StepCgroup {
            dirs: Vec::new(),
            base_oom: 0,
            base_pids: 0,
        };
        for (ctl, base) in layout.bases() {
            let dir = base.join(&name);
            if let Err(e) = fs::create_dir(&dir) {
                cg.remove();
                return Err(e);
            }
            active().push(dir.clone());
            cg.dirs.push((ctl, dir));
        }
        if let Err(e) = cg.apply(limits) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn apply(&self, limits: &Limits) -> io::Result<()> {
        for (ctl, dir) in &self.dirs {
            let ctl = *ctl;
            let quota = (limits.cpus.max(0.01) * 100_000.0) as u64;
            match ctl {
                Controller::Unified => {
                    fs::write(dir.join("memory.max"), limits.memory_bytes.to_string())?;
                    // No swap: the memory limit must be a real one.
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                    fs::write(dir.join("pids.max"), limits.pids.to_string())?;
                    let _ = fs::write(dir.join("cpu.max"), format!("{quota} 100000"));
                }
                Controller::Memory => {
                    // memsw must stay >= the memory limit at every moment: when raising, the
                    // first memsw write succeeds; when lowering, the second one does.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    let bytes = limits.memory_bytes.to_string();
                    let _ = fs::write(&memsw, &bytes);
                    fs::write(dir.join("memory.limit_in_bytes"), &bytes)?;
                    let _ = fs::write(&memsw, &bytes);
                    let _ = fs::write(dir.join("memory.swappiness"), "0");
                }
                Controller::Pids => {
                    fs::write(dir.join("pids.max"), limits.pids.to_string())?;
                }
                Controller::Cpu => {
                    fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
                    fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Hand the cgroup back after the step: kept for reuse when it is empty, else removed
    /// (in the background: a v1 memory cgroup can take a while to go).
    pub fn release(self) {
        let empty = self.dirs.iter().all(|(_, d)| {
            fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
        });
        let mut pool = pool();
        if empty && pool.len() < POOL_MAX {
            pool.push(self);
        } else {
            drop(pool);
            let handle = std::thread::spawn(move || self.remove());
            removals().push(handle);
        }
    }

    /// The cgroup's path below each hierarchy's root (`/secureclaw/<name>`), the form an OCI
    /// runtime takes as `cgroupsPath`.
    pub fn relative_path(&self) -> Option<PathBuf> {
        let (_, dir) = self.dirs.first()?;
        let name = dir.file_name()?;
        Some(Path::new("/").join(BASE).join(name))
    }

    /// The `cgroup.procs` files the helper writes the sandbox's init pid into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// SIGKILL every process still in the step's cgroups.
    pub fn kill_all(&self) {
        for (ctl, dir) in &self.dirs {
            kill_cgroup(dir, *ctl == Controller::Unified);
        }
    }

    fn oom_count(&self) -> u64 {
        self.dirs
            .iter()
            .map(|(ctl, dir)| match ctl {
                Controller::Unified => counter(&dir.join("memory.events"), "oom_kill"),
                Controller::Memory => counter(&dir.join("memory.oom_control"), "oom_kill"),
                _ => 0,
            })
            .sum()
    }

    fn pids_count(&self) -> u64 {
        self.dirs
            .iter()
            .filter(|(ctl, _)| matches!(ctl, Controller::Unified | Controller::Pids))
            .map(|(_, dir)| counter(&dir.join("pids.events"), "max"))
            .sum()
    }

    pub fn oom_killed(&self) -> bool {
        self.oom_count() > self.base_oom
    }

    pub fn pids_limited(&self) -> bool {
        self.pids_count() > self.base_pids
    }

    /// Remove the directories; processes are gone by now, but a v1 memory cgroup may take a
    /// moment to release. What cannot be removed is left for the next [`sweep`].
    pub fn remove(self) {
        for (ctl, dir) in &self.dirs {
            remove_dir_retrying(dir, *ctl == Controller::Unified);
        }
        active().retain(|d| !self.dirs.iter().any(|(_, mine)| mine == d));
    }
}

fn remove_dir_retrying(dir: &Path, unified: bool) {
    for attempt in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => {
                kill_cgroup(dir, unified);
                std::thread::sleep(Duration::from_millis(if attempt < 10 { 1 } else { 10 }));
            }
        }
    }
}

fn counter(file: &Path, key: &str) -> u64 {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

fn kill_cgroup(dir: &Path, unified: bool) {
    if unified && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    // v1 has no cgroup.kill: signal what is listed, a few rounds to catch forks in flight (the
    // pid namespace's init dying takes the rest with it anyway).
    for _ in 0..5 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Remove step cgroups whose engine is no longer running (killed engines leave them behind).
pub fn sweep(layout: &Layout) -> Vec<String> {
    let mut removed = Vec::new();
    for (ctl, base) in layout.bases() {
        let Ok(entries) = fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner: Option<u32> = name
                .split('-')
                .next()
                .and_then(|p| p.parse().ok())
                .or_else(|| name.strip_prefix("probe-").and_then(|p| p.parse().ok()));
            let alive = if owner == Some(std::process::id()) {
                active().contains(&path)
            } else {
                owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
            };
            if alive {
                continue;
            }
            kill_cgroup(&path, ctl == Controller::Unified);
            remove_dir_retrying(&path, ctl == Controller::Unified);
            if !path.exists() {
                removed.push(format!("cgroup {}", path.display()));
            }
        }
    }
    removed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_cgroups_of_dead_engines_only() {
        let layout = Layout::detect();
        let (have, _) = layout.prepare();
        if have.is_empty() {
            eprintln!("skipped: no writable cgroup hierarchy here");
            return;
        }
        // Above any pid_max: this engine cannot be alive.
        let dead = layout
            .bases()
            .into_iter()
            .map(|(_, b)| b.join("999999999-7"));
        let dead: Vec<PathBuf> = dead.collect();
        for d in &dead {
            fs::create_dir(d).unwrap();
        }
        let mine = StepCgroup::create(&layout, &Limits::default()).unwrap();
        let removed = sweep(&layout);
        for d in &dead {
            assert!(!d.exists(), "{} survived the sweep", d.display());
            assert!(removed.iter().any(|r| r.contains(&d.display().to_string())));
        }
        for f in mine.procs_files() {
            assert!(
                f.exists(),
                "a live step's cgroup was swept: {}",
                f.display()
            );
        }
        mine.remove();
    }
}
