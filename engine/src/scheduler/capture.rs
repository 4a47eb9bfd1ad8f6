//! Effect capture around writing steps: pre/post scans, change sets, rollback.

use std::path::PathBuf;
use std::sync::Arc;

use std::os::unix::ffi::OsStrExt;

use super::render::Rendered;
use super::step::{Finished, StepJob};
use crate::record::StepState;
use crate::snapshot::{ChangeSet, Manifest, RelPath, SnapshotError, Snapshotter};

/// What an engine-side `write` or `patch` step can touch: the file, the directories above it
/// (it creates missing ones) and, listed, the directory it is in (it writes a temporary file
/// there and renames it over the target). Capturing these is capturing the step.
#[derive(Debug, Clone, Default)]
pub(super) struct Targets {
    paths: Vec<RelPath>,
    dirs: Vec<RelPath>,
}

impl Targets {
    /// The step's targets, when they are known in advance: an engine-side file action, in a
    /// run whose shell steps are isolated (a host-backend step can leave a process behind
    /// that keeps writing, and only a full scan would attribute its writes to a step).
    pub(super) fn of(ctx: &SnapCtx, job: &StepJob) -> Option<Targets> {
        if !job.sandbox.isolated() {
            return None;
        }
        let rel = match &job.rendered {
            Rendered::Write { path, .. } | Rendered::Patch { path, .. } => path,
            _ => return None,
        };
        let abs = crate::workspace::resolve(&job.jail, rel).ok()?;
        let leaf = abs.strip_prefix(ctx.snap.root()).ok()?;
        if leaf.as_os_str().is_empty() {
            return None;
        }
        let mut t = Targets::default();
        let mut first = true;
        for a in leaf.ancestors() {
            let r = RelPath(a.as_os_str().as_bytes().to_vec());
            if !first && t.dirs.is_empty() {
                // The file's own directory (the root when it is at the top).
                t.dirs.push(r.clone());
            }
            first = false;
            if !r.0.is_empty() {
                t.paths.push(r);
            }
        }
        Some(t)
    }

    fn union(mut self, other: Option<Targets>) -> Targets {
        if let Some(o) = other {
            self.paths.extend(o.paths);
            self.dirs.extend(o.dirs);
        }
        self.paths.sort_unstable();
        self.paths.dedup();
        self.dirs.sort_unstable();
        self.dirs.dedup();
        self
    }
}

/// A writing step's effect on the workspace.
pub(super) struct Capture {
    pub(super) changes: ChangeSet,
    pub(super) pre_hash: String,
    pub(super) post_hash: String,
}

/// Snapshots for one run: the capturer and the latest manifest (the in-memory stat cache).
pub(super) struct SnapCtx {
    pub(super) snap: Snapshotter,
    pub(super) run_id: String,
    pub(super) last: std::sync::Mutex<Arc<Manifest>>,
}

impl SnapCtx {
    pub(super) fn last(&self) -> Arc<Manifest> {
        self.last
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(super) fn set_last(&self, m: Arc<Manifest>) {
        match self.last.lock() {
            Ok(mut g) => *g = m,
            Err(p) => *p.into_inner() = m,
        }
    }

    /// Capture before a step and persist the result for crash recovery: only the step's
    /// targets when they are known, the last full scan when it is fresh (see
    /// [`Snapshotter::is_fresh`]), else a full scan.
    pub(super) async fn pre(
        self: &Arc<Self>,
        step: &str,
        targets: Option<Targets>,
    ) -> Result<Arc<Manifest>, SnapshotError> {
        let (me, step) = (self.clone(), step.to_string());
        blocking(move || {
            let last = me.last();
            let m = match &targets {
                Some(t) => match me.snap.refresh(&last, &t.paths, &t.dirs, true) {
                    Ok(m) => Arc::new(m),
                    Err(_) => Arc::new(me.snap.scan(Some(&last))?),
                },
                None if me.snap.is_fresh(&last) => last,
                None => Arc::new(me.snap.scan(Some(&last))?),
            };
            // A path whose pre-image is missing could not be put back: the step does not run.
            m.require_captured(me.snap.root())?;
            me.snap.save_inflight(&me.run_id, &step, &m)?;
            me.set_last(m.clone());
            Ok(m)
        })
        .await
    }

    /// Capture after a step (hashing only what moved since `pre`): the step's targets when
    /// they are known, else a full scan. When storing the post-images fails (a full vault), a
    /// scan that only hashes still tells what to roll back: the error is returned with it.
    pub(super) async fn post(
        self: &Arc<Self>,
        pre: Arc<Manifest>,
        targets: Option<Targets>,
    ) -> Result<(Arc<Manifest>, Option<SnapshotError>), SnapshotError> {
        let me = self.clone();
        blocking(move || {
            let targeted =
                targets.and_then(|t| me.snap.refresh(&pre, &t.paths, &t.dirs, true).ok());
            let (m, stored) = match targeted {
                Some(m) => (m, None),
                None => match me.snap.scan(Some(&pre)) {
                    Ok(m) => (m, None),
                    Err(e) => (me.snap.scan_hash_only(Some(&pre))?, Some(e)),
                },
            };
            let m = Arc::new(m);
            me.set_last(m.clone());
            Ok((m, stored))
        })
        .await
    }

    /// Keep a step's change set with the next commit (see
    /// [`Snapshotter::defer_step_changes`]).
    pub(super) fn defer_changes(
        &self,
        step: &str,
        changes: &ChangeSet,
    ) -> Result<(), SnapshotError> {
        self.snap.defer_step_changes(&self.run_id, step, changes)
    }

    pub(super) async fn save_changes(
        self: &Arc<Self>,
        step: &str,
        changes: ChangeSet,
    ) -> Result<(), SnapshotError> {
        let (me, step) = (self.clone(), step.to_string());
        blocking(move || me.snap.save_step_changes(&me.run_id, &step, &changes)).await
    }

    /// Put the workspace back to `pre`, then look again: what the first scan could not see (a
    /// directory it could not list until its mode was restored, a file a straggling process
    /// made after it) is undone too, until the workspace matches `pre` or passes run out.
    ///
    /// With `targets`, only they are looked at again: the rest of `pre` may be older than the
    /// workspace (it was not scanned for this step), and what changed there is not the step's.
    pub(super) async fn rollback(
        self: &Arc<Self>,
        pre: Arc<Manifest>,
        changes: ChangeSet,
        targets: Option<Targets>,
    ) -> Result<usize, SnapshotError> {
        const PASSES: usize = 3;
        let me = self.clone();
        blocking(move || {
            // A path that cannot be put back is reported after every other path was.
            let mut failed = None;
            let mut restore = |changes: &[crate::snapshot::Change]| {
                me.snap
                    .restore(changes)
                    .map_err(|e| failed = Some(e))
                    .unwrap_or(0)
            };
            let mut restored = restore(&changes.changes);
            for pass in 1..=PASSES {
                let now = match &targets {
                    Some(t) => me.snap.refresh(&pre, &t.paths, &t.dirs, false)?,
                    None => me.snap.scan_hash_only(Some(&pre))?,
                };
                let rest = crate::snapshot::diff(&pre, &now);
                if rest.is_empty() {
                    me.set_last(Arc::new(now));
                    return Ok(restored);
                }
                if pass == PASSES {
                    return Err(failed.unwrap_or_else(|| SnapshotError::Io {
                        path: me.snap.abs(&rest.changes[0].path),
                        source: std::io::Error::other(format!(
                            "the workspace still differs from before the step at {} path(s) after {PASSES} restores (is a process the step started still writing?)",
                            rest.len()
                        )),
                    }));
                }
                restored += restore(&rest.changes);
            }
            Ok(restored)
        })
        .await
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(SnapshotError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(format!("snapshot task failed: {e}")),
        })
    })
}

/// How many hazards a failure reason names before it says how many more there are.
const HAZARDS_NAMED: usize = 5;

/// After an attempt of a writing step: what it changed, and a rollback if it failed or left
/// what no step may leave (see [`crate::snapshot::hazards`]). Whatever goes wrong here, the
/// pre-images already taken are used: the step is rolled back with everything that could be
/// captured, or its change set is kept for `secureclaw revert`.
pub(super) async fn capture_after(
    ctx: &Arc<SnapCtx>,
    pre: Arc<Manifest>,
    targets: Option<Targets>,
    job: &StepJob,
    f: &mut Finished,
) {
    // Resolved again: the union covers the step even if a path it went through changed.
    let targets = targets.map(|t| t.union(Targets::of(ctx, job)));
    let add_reason = |f: &mut Finished, note: String| {
        f.reason = Some(match f.reason.take() {
            Some(r) => format!("{r}; {note}"),
            None => note,
        });
    };
    let (post, store_error) = match ctx.post(pre.clone(), targets.clone()).await {
        Ok(m) => m,
        Err(e) => {
            // Only the workspace root itself could not be read: there is nothing to compare.
            f.state = StepState::Failed;
            add_reason(
                f,
                format!(
                    "capturing the workspace after the step failed: {e}; its changes could not be determined"
                ),
            );
            return;
        }
    };
    let changes = crate::snapshot::diff(&pre, &post);
    let pre_hash = pre.hash();
    let hazards = crate::snapshot::hazards(&post, &changes);
    if let Some(e) = &store_error {
        f.state = StepState::Failed;
        add_reason(
            f,
            format!("storing its post-images failed ({e}), so its changes cannot be kept"),
        );
    }
    if !hazards.is_empty() {
        f.state = StepState::Failed;
        let mut named: Vec<String> = hazards
            .iter()
            .take(HAZARDS_NAMED)
            .map(ToString::to_string)
            .collect();
        if hazards.len() > HAZARDS_NAMED {
            named.push(format!("and {} more", hazards.len() - HAZARDS_NAMED));
        }
        add_reason(
            f,
            format!(
                "it left what no step may leave in the workspace: {}",
                named.join("; ")
            ),
        );
    }
    // Hazards and uncapturable changes are never kept, `keep_on_failure` or not.
    let forced = !hazards.is_empty() || store_error.is_some();
    // A cancelled step (Ctrl-C, a server shutting down, fail-fast) stopped half way: what it
    // left is undone like a failed step's, so a stop never leaves a half-made change behind.
    let roll_back = matches!(f.state, StepState::Failed | StepState::Cancelled)
        && (forced || !job.step.keep_on_failure)
        && !changes.is_empty();
    if roll_back {
        let n = changes.len();
        match ctx.rollback(pre.clone(), changes.clone(), targets).await {
            Ok(_) => {
                add_reason(
                    f,
                    if forced {
                        format!("its workspace changes were rolled back ({n} path(s))")
                    } else {
                        format!(
                            "its workspace changes were rolled back ({n} path(s); `keep_on_failure: true` keeps them)"
                        )
                    },
                );
                f.capture = Some(Capture {
                    changes: ChangeSet::default(),
                    post_hash: pre_hash.clone(),
                    pre_hash,
                });
            }
            Err(e) => {
                add_reason(
                    f,
                    format!(
                        "rolling back its workspace changes FAILED: {e}; `secureclaw revert` can retry"
                    ),
                );
                // The change set (with every pre-image) outlives the run record's saves.
                if let Err(e) = ctx.save_changes(&job.step.id, changes.clone()).await {
                    add_reason(f, format!("saving its change set failed too: {e}"));
                }
                f.capture = Some(Capture {
                    changes,
                    pre_hash,
                    post_hash: post.hash(),
                });
            }
        }
        return;
    }
    // Committed with the next writing step's in-flight record (or the stat cache at the end
    // of the run): until then this step's own in-flight record stays, and recovers it.
    if let Err(e) = ctx.defer_changes(&job.step.id, &changes) {
        f.state = StepState::Failed;
        add_reason(f, format!("saving its change set failed: {e}"));
    }
    f.capture = Some(Capture {
        post_hash: if changes.is_empty() {
            pre_hash.clone()
        } else {
            post.hash()
        },
        changes,
        pre_hash,
    });
}
