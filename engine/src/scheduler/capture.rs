//! Effect capture around writing steps: pre/post scans, change sets, rollback.

use std::path::PathBuf;
use std::sync::Arc;

use super::step::{Finished, StepJob};
use crate::record::StepState;
use crate::snapshot::{ChangeSet, Manifest, SnapshotError, Snapshotter};

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

    /// Scan before a step and persist the result for crash recovery.
    pub(super) async fn pre(self: &Arc<Self>, step: &str) -> Result<Arc<Manifest>, SnapshotError> {
        let (me, step) = (self.clone(), step.to_string());
        blocking(move || {
            let m = Arc::new(me.snap.scan(Some(&me.last()))?);
            // A path whose pre-image is missing could not be put back: the step does not run.
            m.require_captured(me.snap.root())?;
            me.snap.save_inflight(&me.run_id, &step, &m)?;
            me.set_last(m.clone());
            Ok(m)
        })
        .await
    }

    /// Scan after a step (hashing only what moved since `pre`). When storing the post-images
    /// fails (a full vault), a scan that only hashes still tells what to roll back: the
    /// error is returned with it.
    pub(super) async fn post(
        self: &Arc<Self>,
        pre: Arc<Manifest>,
    ) -> Result<(Arc<Manifest>, Option<SnapshotError>), SnapshotError> {
        let me = self.clone();
        blocking(move || {
            let (m, stored) = match me.snap.scan(Some(&pre)) {
                Ok(m) => (m, None),
                Err(e) => (me.snap.scan_hash_only(Some(&pre))?, Some(e)),
            };
            let m = Arc::new(m);
            me.set_last(m.clone());
            Ok((m, stored))
        })
        .await
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
    pub(super) async fn rollback(
        self: &Arc<Self>,
        pre: Arc<Manifest>,
        changes: ChangeSet,
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
                let now = me.snap.scan_hash_only(Some(&pre))?;
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
    job: &StepJob,
    f: &mut Finished,
) {
    let add_reason = |f: &mut Finished, note: String| {
        f.reason = Some(match f.reason.take() {
            Some(r) => format!("{r}; {note}"),
            None => note,
        });
    };
    let (post, store_error) = match ctx.post(pre.clone()).await {
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
    let roll_back = f.state == StepState::Failed
        && (forced || !job.step.keep_on_failure)
        && !changes.is_empty();
    if roll_back {
        let n = changes.len();
        match ctx.rollback(pre.clone(), changes.clone()).await {
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
                    pre_hash: pre.hash(),
                    post_hash: pre.hash(),
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
                    pre_hash: pre.hash(),
                    post_hash: post.hash(),
                });
            }
        }
        return;
    }
    if let Err(e) = ctx.save_changes(&job.step.id, changes.clone()).await {
        f.state = StepState::Failed;
        add_reason(f, format!("saving its change set failed: {e}"));
    }
    f.capture = Some(Capture {
        changes,
        pre_hash: pre.hash(),
        post_hash: post.hash(),
    });
}
