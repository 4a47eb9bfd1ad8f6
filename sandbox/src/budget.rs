//! The write budget of a step ([`crate::Limits::disk_bytes`]): how much the host filesystem
//! that holds the workspace may fill while the step runs.
//!
//! The kernel bounds one file (`RLIMIT_FSIZE` at the budget); [`DiskWatch`] bounds the total by
//! sampling the filesystem's free blocks (`statvfs`) against a baseline taken before the step
//! started. The sample is filesystem-wide: other writers on the same filesystem count too, and
//! a step can overshoot by what it writes between two samples.

use std::path::{Path, PathBuf};

/// Free-space sampling of the filesystem holding `path`.
#[derive(Debug, Clone)]
pub struct DiskWatch {
    path: PathBuf,
    baseline_free: u64,
    budget: u64,
}

fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.f_bfree.saturating_mul(st.f_frsize))
}

impl DiskWatch {
    /// Take the baseline now, before the step starts.
    pub fn start(path: &Path, budget: u64) -> std::io::Result<DiskWatch> {
        Ok(DiskWatch {
            path: path.to_path_buf(),
            baseline_free: free_bytes(path)?,
            budget,
        })
    }

    /// Bytes the filesystem lost since the baseline (0 when it gained space).
    pub fn written(&self) -> std::io::Result<u64> {
        Ok(self.baseline_free.saturating_sub(free_bytes(&self.path)?))
    }

    /// Whether the filesystem lost at least the budget since the baseline. A sample that fails
    /// (the workspace vanished) counts as not exceeded: the step's own error says more.
    pub fn exceeded(&self) -> bool {
        self.written().is_ok_and(|w| w >= self.budget)
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn a_written_file_is_seen_and_trips_a_small_budget() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DiskWatch::start(dir.path(), 4 << 20).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![7u8; 16 << 20]).unwrap();
        std::fs::File::open(&big).unwrap().sync_all().unwrap();
        assert!(watch.written().unwrap() >= 4 << 20);
        assert!(watch.exceeded());
    }
}
