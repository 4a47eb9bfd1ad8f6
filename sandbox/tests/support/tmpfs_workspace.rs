//! A workspace on its own small tmpfs (root only): the write budget samples the free space of
//! the workspace's filesystem, and a private one makes that measurement independent of what
//! else the machine writes or frees meanwhile (other tests, builds).

use std::path::PathBuf;

pub struct TmpfsWorkspace {
    dir: tempfile::TempDir,
}

impl TmpfsWorkspace {
    /// `size` in mount(8) syntax (`256m`); the root of the tmpfs is owned by `owner`.
    pub fn new(size: &str, owner: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        std::os::unix::fs::chown(dir.path(), Some(owner), Some(owner)).unwrap();
        TmpfsWorkspace { dir }
    }

    pub fn path(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }
}

impl Drop for TmpfsWorkspace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
