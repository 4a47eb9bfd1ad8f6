//! The write budget of a step ([`crate::Limits::disk_bytes`]): how much the step may add to the
//! host disk while it runs.
//!
//! The kernel bounds one file (`RLIMIT_FSIZE` at the budget); [`DiskWatch`] bounds the total.
//! The workspace is the only host-backed place a step can write (every backend mounts the root
//! read-only and `/tmp` as a size-limited tmpfs), so the watch counts the step's own writes:
//! - the growth of the space allocated under the workspace (`st_blocks` of every entry, a hard
//!   link counted once, masked paths skipped since the step cannot reach them), against a
//!   baseline taken before the step starts;
//! - plus files the step's processes hold open after unlinking them (or keep mapped), on a
//!   filesystem of the workspace: they fill the disk and no walk of the tree sees them.
//!
//! Other writers on the same filesystem neither count nor hide the step's writes. An earlier
//! design sampled the filesystem's free blocks (`statvfs`): a test tree deleted beside a step
//! freed space as fast as the step wrote, and the step ran to its timeout past its budget.
//!
//! Cost: one `lstat` per path per sample (what the engine's snapshot scan costs once per step),
//! in a blocking thread. Samples back off to four times the last walk's duration, so a large
//! workspace costs at most a fifth of a core; a step can overshoot by what it writes between
//! two samples.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a sample's walk cost stretches the pause before the next one.
const BACKOFF: u32 = 4;
/// The budget of a watch that has none.
const NONE: u64 = u64::MAX;

/// The step's writes, measured against the workspace as it was before the step.
#[derive(Debug, Clone)]
pub struct DiskWatch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Absolute paths under `root` the step cannot reach (masked): the engine's own files.
    skip: Vec<PathBuf>,
    budget: u64,
    baseline: u64,
    /// Filesystems the workspace spans: an unlinked file held open counts only on these.
    devices: HashSet<u64>,
    /// Files listing the step's processes, one pid per line (`cgroup.procs`).
    processes: Mutex<Vec<PathBuf>>,
}

/// One measurement of a tree: allocated bytes and the devices it spans.
struct TreeUsage {
    bytes: u64,
    devices: HashSet<u64>,
}

fn allocated(md: &std::fs::Metadata) -> u64 {
    md.blocks().saturating_mul(512)
}

/// Allocated bytes under `root` (not following symlinks), each inode counted once. Entries
/// that vanish mid-walk are skipped: the step may be deleting them.
fn tree_usage(root: &Path, skip: &[PathBuf]) -> std::io::Result<TreeUsage> {
    let top = std::fs::symlink_metadata(root)?;
    let mut devices = HashSet::from([top.dev()]);
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let mut bytes = 0u64;
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !skip.iter().any(|s| e.path() == s));
    for entry in walk {
        let Ok(entry) = entry else { continue };
        let Ok(md) = entry.metadata() else { continue };
        if md.nlink() > 1 && !md.is_dir() && !linked.insert((md.dev(), md.ino())) {
            continue;
        }
        devices.insert(md.dev());
        bytes = bytes.saturating_add(allocated(&md));
    }
    Ok(TreeUsage { bytes, devices })
}

/// Allocated bytes of files on `devices` that the processes listed in `lists` hold open or
/// mapped after their last link went.
fn unlinked_open(lists: &[PathBuf], devices: &HashSet<u64>) -> u64 {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut bytes = 0u64;
    for list in lists {
        let Ok(text) = std::fs::read_to_string(list) else {
            continue;
        };
        for pid in text.split_whitespace() {
            for table in ["fd", "map_files"] {
                let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/{table}")) else {
                    continue;
                };
                for link in dir.flatten() {
                    // `metadata` follows the magic link to the open file itself.
                    let Ok(md) = std::fs::metadata(link.path()) else {
                        continue;
                    };
                    if md.nlink() == 0
                        && md.is_file()
                        && devices.contains(&md.dev())
                        && seen.insert((md.dev(), md.ino()))
                    {
                        bytes = bytes.saturating_add(allocated(&md));
                    }
                }
            }
        }
    }
    bytes
}

impl DiskWatch {
    /// Take the baseline now, before the step starts: a walk of `root` that skips `masked`
    /// (paths relative to `root` the step cannot see). Runs in a blocking thread. A budget of 0
    /// means none (library callers only: the engine refuses 0), and then nothing is walked.
    pub async fn start(
        root: &Path,
        masked: Vec<PathBuf>,
        budget: u64,
    ) -> std::io::Result<DiskWatch> {
        let root = root.to_path_buf();
        let skip = masked.iter().map(|m| root.join(m)).collect();
        tokio::task::spawn_blocking(move || DiskWatch::start_blocking(root, skip, budget))
            .await
            .map_err(std::io::Error::other)?
    }

    fn start_blocking(root: PathBuf, skip: Vec<PathBuf>, budget: u64) -> std::io::Result<Self> {
        let (budget, usage) = match budget {
            0 | NONE => (
                NONE,
                TreeUsage {
                    bytes: 0,
                    devices: HashSet::new(),
                },
            ),
            b => (b, tree_usage(&root, &skip)?),
        };
        Ok(DiskWatch {
            inner: Arc::new(Inner {
                root,
                skip,
                budget,
                baseline: usage.bytes,
                devices: usage.devices,
                processes: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The step's processes, as files listing their pids (its cgroup's `cgroup.procs`): the
    /// files they hold open after unlinking them count too. Without them only the tree counts.
    pub fn watch_processes(&self, lists: Vec<PathBuf>) {
        // A poisoned lock only means a sampler panicked; the list itself is still whole.
        let mut processes = self
            .inner
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *processes = lists;
    }

    fn measure(&self) -> std::io::Result<u64> {
        let inner = &self.inner;
        if inner.budget == NONE {
            return Ok(0);
        }
        let now = tree_usage(&inner.root, &inner.skip)?;
        let lists = inner
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let hidden = unlinked_open(&lists, &inner.devices);
        Ok(now
            .bytes
            .saturating_sub(inner.baseline)
            .saturating_add(hidden))
    }

    /// Bytes the step added since the baseline (0 when it freed space). Runs in a blocking
    /// thread.
    pub async fn written(&self) -> std::io::Result<u64> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.measure())
            .await
            .map_err(std::io::Error::other)?
    }

    /// Whether the step added at least the budget. A sample that fails (the workspace
    /// vanished) counts as not exceeded: the step's own error says more.
    pub async fn exceeded(&self) -> bool {
        self.written().await.is_ok_and(|w| w >= self.inner.budget)
    }

    /// Resolves once the step has added its budget: samples every `interval`, or four times
    /// the last walk's duration when that is longer. Without a budget, never.
    pub async fn reached(&self, interval: Duration) {
        if self.inner.budget == NONE {
            return std::future::pending().await;
        }
        let mut pause = interval;
        loop {
            tokio::time::sleep(pause).await;
            let began = Instant::now();
            if self.exceeded().await {
                return;
            }
            pause = interval.max(began.elapsed().saturating_mul(BACKOFF));
        }
    }

    pub fn budget(&self) -> u64 {
        self.inner.budget
    }
}

/// [`DiskWatch::reached`] for a watch that may be missing (its baseline could not be taken):
/// without one, never.
pub async fn reached(watch: Option<&DiskWatch>, interval: Duration) {
    match watch {
        Some(watch) => watch.reached(interval).await,
        None => std::future::pending().await,
    }
}

/// [`DiskWatch::exceeded`] for a watch that may be missing: without one, no.
pub async fn exceeded(watch: Option<&DiskWatch>) -> bool {
    match watch {
        Some(watch) => watch.exceeded().await,
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn write_synced(path: &Path, bytes: u64) {
        std::fs::write(path, vec![7u8; usize::try_from(bytes).unwrap()]).unwrap();
        std::fs::File::open(path).unwrap().sync_all().unwrap();
    }

    #[tokio::test]
    async fn files_written_under_the_workspace_trip_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DiskWatch::start(dir.path(), Vec::new(), 4 * MIB)
            .await
            .unwrap();
        assert!(!watch.exceeded().await);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for i in 0..6 {
            write_synced(&dir.path().join(format!("sub/f{i}")), MIB);
        }
        let written = watch.written().await.unwrap();
        assert!((6 * MIB..8 * MIB).contains(&written), "{written}");
        assert!(watch.exceeded().await);
    }

    /// The attack on the old free-space sample: space freed elsewhere on the same filesystem
    /// while the step writes must not hide the step's writes.
    #[tokio::test]
    async fn space_freed_beside_the_workspace_does_not_hide_its_writes() {
        let parent = tempfile::tempdir().unwrap();
        let workspace = parent.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        let elsewhere = parent.path().join("elsewhere");
        write_synced(&elsewhere, 32 * MIB);
        let watch = DiskWatch::start(&workspace, Vec::new(), 16 * MIB)
            .await
            .unwrap();
        write_synced(&workspace.join("big"), 24 * MIB);
        std::fs::remove_file(&elsewhere).unwrap();
        assert!(watch.exceeded().await);
    }

    /// And writes by others on the same filesystem are not charged to the step.
    #[tokio::test]
    async fn writes_beside_the_workspace_do_not_count() {
        let parent = tempfile::tempdir().unwrap();
        let workspace = parent.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        let watch = DiskWatch::start(&workspace, Vec::new(), 4 * MIB)
            .await
            .unwrap();
        write_synced(&parent.path().join("elsewhere"), 32 * MIB);
        assert_eq!(watch.written().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn hard_links_and_holes_are_not_counted_as_writes() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DiskWatch::start(dir.path(), Vec::new(), 4 * MIB)
            .await
            .unwrap();
        write_synced(&dir.path().join("one"), 3 * MIB);
        for i in 0..8 {
            std::fs::hard_link(dir.path().join("one"), dir.path().join(format!("link{i}")))
                .unwrap();
        }
        // A 1 GiB file that is all hole allocates nothing.
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let written = watch.written().await.unwrap();
        assert!(written < 4 * MIB, "{written}");
        assert!(!watch.exceeded().await);
    }

    #[tokio::test]
    async fn a_budget_of_zero_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DiskWatch::start(dir.path(), Vec::new(), 0).await.unwrap();
        write_synced(&dir.path().join("big"), 2 * MIB);
        assert!(!watch.exceeded().await);
        assert_eq!(watch.budget(), u64::MAX);
    }

    #[tokio::test]
    async fn freeing_workspace_space_counts_as_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        write_synced(&dir.path().join("old"), 8 * MIB);
        let watch = DiskWatch::start(dir.path(), Vec::new(), 4 * MIB)
            .await
            .unwrap();
        std::fs::remove_file(dir.path().join("old")).unwrap();
        write_synced(&dir.path().join("new"), 2 * MIB);
        assert_eq!(watch.written().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn masked_paths_are_the_engines_and_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".state");
        std::fs::create_dir(&state).unwrap();
        let watch = DiskWatch::start(dir.path(), vec![".state".into()], 4 * MIB)
            .await
            .unwrap();
        write_synced(&state.join("vault"), 8 * MIB);
        assert_eq!(watch.written().await.unwrap(), 0);
    }

    /// A file unlinked while a process of the step holds it open fills the disk where no walk
    /// sees it; the step's process list makes it count.
    #[tokio::test]
    async fn an_unlinked_file_held_open_by_the_step_counts() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DiskWatch::start(dir.path(), Vec::new(), 4 * MIB)
            .await
            .unwrap();
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3>hidden; rm hidden; head -c 8388608 /dev/zero >&3; sync; echo ready; exec sleep 30")
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready.trim(), "ready");
        // Not one of the step's processes: invisible, as it would be for any other writer.
        assert!(!watch.exceeded().await);
        let list = dir.path().join("procs");
        std::fs::write(&list, format!("{}\n", holder.id())).unwrap();
        watch.watch_processes(vec![list]);
        let written = watch.written().await;
        let _ = holder.kill();
        let _ = holder.wait();
        let written = written.unwrap();
        assert!(written >= 8 * MIB, "{written}");
    }
}
