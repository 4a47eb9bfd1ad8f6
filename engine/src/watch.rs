//! Watch mode's file watcher: reports debounced batches of changed paths, ignoring the state
//! dir and `.git` (so a run's own bookkeeping never triggers the next run).

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("invalid --path glob `{glob}`: {source}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
}

pub struct ChangeWatcher {
    _watcher: RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<PathBuf>,
    workflow_file: PathBuf,
    workspace: PathBuf,
    ignore: Vec<PathBuf>,
    globs: GlobSet,
}

impl ChangeWatcher {
    /// Watch `workflow_file`, and the files under `workspace` matching `globs`.
    pub fn new(
        workflow_file: &Path,
        workspace: &Path,
        globs: &[String],
        ignore: Vec<PathBuf>,
    ) -> Result<Self, WatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        })
        .map_err(|source| WatchError::Notify {
            path: workflow_file.to_path_buf(),
            source,
        })?;
        let workflow_file = workflow_file
            .canonicalize()
            .unwrap_or_else(|_| workflow_file.to_path_buf());
        // Watch the directory, not the file: editors replace files by rename.
        let dir = workflow_file
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                path: dir.clone(),
                source,
            })?;
        let workspace = workspace
            .canonicalize()
            .unwrap_or_else(|_| workspace.to_path_buf());
        let mut builder = GlobSetBuilder::new();
        for g in globs {
            builder.add(Glob::new(g).map_err(|source| WatchError::Glob {
                glob: g.clone(),
                source,
            })?);
        }
        let globs_set = builder.build().map_err(|source| WatchError::Glob {
            glob: globs.join(", "),
            source,
        })?;
        if !globs.is_empty() {
            watcher
                .watch(&workspace, RecursiveMode::Recursive)
                .map_err(|source| WatchError::Notify {
                    path: workspace.clone(),
                    source,
                })?;
        }
        let ignore = ignore
            .into_iter()
            .map(|p| p.canonicalize().unwrap_or(p))
            .collect();
        Ok(ChangeWatcher {
            _watcher: watcher,
            rx,
            workflow_file,
            workspace,
            ignore,
            globs: globs_set,
        })
    }

    fn relevant(&self, path: &Path) -> bool {
        if path == self.workflow_file {
            return true;
        }
        if self.ignore.iter().any(|i| path.starts_with(i)) {
            return false;
        }
        let Ok(rel) = path.strip_prefix(&self.workspace) else {
            return false;
        };
        if rel.components().any(|c| c.as_os_str() == ".git") {
            return false;
        }
        self.globs.is_match(rel)
    }

    /// Wait for the next relevant change, then collect further changes until `quiet` passes
    /// without one. Returns the changed paths, or `None` if the watcher stopped.
    pub async fn next_batch(&mut self, quiet: Duration) -> Option<Vec<PathBuf>> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            let p = self.rx.recv().await?;
            if self.relevant(&p) {
                batch.push(p);
            }
        }
        loop {
            match tokio::time::timeout(quiet, self.rx.recv()).await {
                Ok(Some(p)) => {
                    if self.relevant(&p) && !batch.contains(&p) {
                        batch.push(p);
                    }
                }
                Ok(None) | Err(_) => return Some(batch),
            }
        }
    }

    /// After a run: discard what changed while it ran (mostly the run's own writes), except the
    /// workflow file itself. Returns true if the workflow file changed meanwhile.
    pub fn drain_after_run(&mut self) -> bool {
        let mut workflow_changed = false;
        while let Ok(p) = self.rx.try_recv() {
            workflow_changed |= p == self.workflow_file;
        }
        workflow_changed
    }
}
