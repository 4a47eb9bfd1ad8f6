//! Workflow sources: git repositories (or plain directories) an admin registers, whose
//! workflow files users run by name and whose triggers (webhooks, schedules, watches) the
//! server acts on.
//!
//! A source row lives in the settings table. Its files are read from a commit (see
//! `secureclaw_engine::git`), validated, and kept in memory as of the last fetch; every run
//! records the repository, commit, path and blob it ran.

pub mod routes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use secureclaw_engine::diag::Diagnostics;
use secureclaw_engine::git::{GitError, GitSource, Snapshot, SourceSpec};
use secureclaw_engine::session::AppTable;
use secureclaw_engine::validate::{Validated, validate_bytes};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// Settings rows of sources start with this; the rest of the key is the name.
const KEY_PREFIX: &str = "sources/";

/// A registered source, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SourceRecord {
    /// Letters, digits, `-` and `_`.
    pub name: String,
    /// An absolute local path, or a `file://`, `https://` or `ssh://` URL.
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Only workflow files under this directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The registered workspace its triggered runs (webhook, schedule, watch) use; without one
    /// each run gets its own empty directory, and `watch` triggers cannot work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Whether `https://`/`ssh://` locations may be fetched.
    #[serde(default)]
    pub allow_network: bool,
    /// The user id of the admin who registered it: triggered runs are that user's tasks.
    pub owner: String,
    pub created: String,
}

impl SourceRecord {
    pub fn spec(&self) -> SourceSpec {
        SourceSpec {
            location: self.location.clone(),
            branch: self.branch.clone(),
            dir: self.dir.clone(),
            allow_network: self.allow_network,
        }
    }
}

/// One workflow file of a source, validated.
#[derive(Clone)]
pub struct SourceWorkflow {
    pub source: String,
    pub path: String,
    pub blob: Option<String>,
    /// The workflow (with its provenance), or why it does not validate.
    pub validated: Result<Arc<Validated>, Arc<Diagnostics>>,
    pub owner: String,
    pub workspace: Option<String>,
}

/// A source's files as of its last fetch.
#[derive(Clone)]
pub struct Scan {
    pub record: SourceRecord,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub fetched: String,
    pub workflows: Vec<SourceWorkflow>,
    pub skipped: Vec<(String, String)>,
}

/// A workflow ready to run.
pub struct Resolved {
    pub validated: Validated,
    pub owner: String,
    pub workspace: Option<String>,
}

/// The sources service: scans by name, one fetch at a time per source, and a signal for
/// whoever acts on triggers.
pub struct Sources {
    cache_dir: PathBuf,
    scans: Mutex<HashMap<String, Scan>>,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Sources {
    pub fn new(cache_dir: PathBuf) -> Self {
        Sources {
            cache_dir,
            scans: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Bumped after every fetch, registration and removal.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Every registered source, by name.
    pub fn records(&self, state: &AppState) -> ApiResult<BTreeMap<String, SourceRecord>> {
        let mut out = BTreeMap::new();
        for key in state.session.app_keys(AppTable::Settings)? {
            if let Some(name) = key.strip_prefix(KEY_PREFIX)
                && let Some(rec) = state
                    .session
                    .app_get_json::<SourceRecord>(AppTable::Settings, &key)?
            {
                out.insert(name.to_string(), rec);
            }
        }
        Ok(out)
    }

    pub fn record(&self, state: &AppState, name: &str) -> ApiResult<SourceRecord> {
        state
            .session
            .app_get_json::<SourceRecord>(AppTable::Settings, &key(name))?
            .ok_or_else(|| ApiError::not_found("source"))
    }

    pub fn row_key(name: &str) -> String {
        key(name)
    }

    pub fn open(&self, rec: &SourceRecord) -> ApiResult<GitSource> {
        GitSource::open(rec.spec(), &self.cache_dir).map_err(git_error)
    }

    /// Fetch the source (when `fetch`), read and validate its workflow files, and keep the scan.
    pub async fn scan(&self, rec: &SourceRecord, fetch: bool) -> ApiResult<Scan> {
        let lock = {
            let mut map = self
                .fetching
                .lock()
                .map_err(|_| ApiError::internal("sources lock poisoned"))?;
            map.entry(rec.name.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        let src = self.open(rec)?;
        let (snap, fetched) = tokio::task::spawn_blocking(move || {
            if fetch {
                src.fetch()?;
            }
            let snap = src.snapshot()?;
            Ok::<_, GitError>((snap, src))
        })
        .await
        .map_err(|e| ApiError::internal(format!("scan task: {e}")))?
        .map_err(git_error)?;
        let scan = build_scan(rec, &fetched, snap);
        if let Ok(mut scans) = self.scans.lock() {
            scans.insert(rec.name.clone(), scan.clone());
        }
        self.notify();
        Ok(scan)
    }

    /// The last scan of `name`, scanning (without fetching) if there is none yet.
    pub async fn current(&self, rec: &SourceRecord) -> ApiResult<Scan> {
        let known = self
            .scans
            .lock()
            .ok()
            .and_then(|s| s.get(&rec.name).cloned());
        match known {
            Some(s) => Ok(s),
            None => self.scan(rec, false).await,
        }
    }

    pub fn forget(&self, name: &str) {
        if let Ok(mut scans) = self.scans.lock() {
            scans.remove(name);
        }
        self.notify();
    }

    /// The workflow `path` of source `name`, ready to run: fetched first when `fetch` (a push
    /// delivery), else as of the last fetch.
    pub async fn resolve(
        &self,
        state: &AppState,
        name: &str,
        path: &str,
        fetch: bool,
    ) -> ApiResult<Resolved> {
        let rec = self.record(state, name)?;
        let scan = if fetch {
            self.scan(&rec, true).await?
        } else {
            self.current(&rec).await?
        };
        let wf = scan
            .workflows
            .iter()
            .find(|w| w.path == path)
            .ok_or_else(|| {
                ApiError::not_found("workflow").with_hint(format!(
                    "`GET /api/v1/workflows` lists the files of source `{name}`"
                ))
            })?;
        match &wf.validated {
            Ok(v) => Ok(Resolved {
                validated: (**v).clone(),
                owner: rec.owner.clone(),
                workspace: rec.workspace.clone(),
            }),
            Err(d) => Err(crate::tasks::routes::invalid_workflow(d)),
        }
    }

    /// The workflow `path` of source `name` at exactly `commit`, checked against `blob` when
    /// given: how a recorded run is run again.
    pub async fn resolve_at(
        &self,
        state: &AppState,
        name: &str,
        commit: &str,
        path: &str,
        blob: Option<&str>,
    ) -> ApiResult<Resolved> {
        let rec = self.record(state, name)?;
        let src = self.open(&rec)?;
        let (commit_s, path_s) = (commit.to_string(), path.to_string());
        let read = tokio::task::spawn_blocking(move || match src.read_at(&commit_s, &path_s) {
            // The commit may be newer than the mirror: fetch once and try again.
            Err(GitError::NotInCommit { .. }) if src.is_git() => {
                src.fetch()?;
                src.read_at(&commit_s, &path_s)
            }
            other => other,
        })
        .await
        .map_err(|e| ApiError::internal(format!("read task: {e}")))?
        .map_err(git_error)?;
        if let (Some(want), Some(got)) = (blob, read.blob.as_deref())
            && want != got
        {
            return Err(ApiError::conflict(
                "blob_mismatch",
                format!("`{path}` at {commit} is blob {got}, the run recorded {want}"),
            ));
        }
        let snap = Snapshot {
            commit: Some(commit.to_string()),
            branch: rec.branch.clone(),
            files: Vec::new(),
            skipped: Vec::new(),
        };
        let mut validated = validate_bytes(Path::new(&display_name(name, path)), &read.bytes)
            .map_err(|d| crate::tasks::routes::invalid_workflow(&d))?;
        let src = self.open(&rec)?;
        validated.provenance = src.provenance(&snap, &read, name);
        Ok(Resolved {
            validated,
            owner: rec.owner,
            workspace: rec.workspace,
        })
    }

    /// Valid workflows that declare triggers, of every source, as of their last fetch.
    pub async fn triggered(&self, state: &AppState) -> ApiResult<Vec<SourceWorkflow>> {
        let mut out = Vec::new();
        for rec in self.records(state)?.into_values() {
            let Ok(scan) = self.current(&rec).await else {
                continue;
            };
            out.extend(scan.workflows.into_iter().filter(|w| {
                w.validated
                    .as_ref()
                    .is_ok_and(|v| !v.workflow.on.is_empty())
            }));
        }
        Ok(out)
    }
}

fn key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

/// How diagnostics name a source's file: `SOURCE:PATH`.
pub fn display_name(source: &str, path: &str) -> String {
    format!("{source}:{path}")
}

fn build_scan(rec: &SourceRecord, src: &GitSource, snap: Snapshot) -> Scan {
    let workflows = snap
        .files
        .iter()
        .map(|f| {
            let validated =
                match validate_bytes(Path::new(&display_name(&rec.name, &f.path)), &f.bytes) {
                    Ok(mut v) => {
                        v.provenance = src.provenance(&snap, f, &rec.name);
                        Ok(Arc::new(v))
                    }
                    Err(d) => Err(Arc::new(d)),
                };
            SourceWorkflow {
                source: rec.name.clone(),
                path: f.path.clone(),
                blob: f.blob.clone(),
                validated,
                owner: rec.owner.clone(),
                workspace: rec.workspace.clone(),
            }
        })
        .collect();
    Scan {
        record: rec.clone(),
        commit: snap.commit.clone(),
        branch: snap.branch.clone(),
        fetched: secureclaw_engine::record::now_rfc3339(),
        workflows,
        skipped: snap.skipped,
    }
}

/// A git failure as the API reports it.
pub fn git_error(e: GitError) -> ApiError {
    let code = match &e {
        GitError::NetworkRefused { .. } => "network_refused",
        GitError::Location { .. } | GitError::BadPath(_) => "invalid_source",
        GitError::NotInCommit { .. } | GitError::BadCommit(_) => "not_in_commit",
        GitError::Git { .. } | GitError::Io { .. } => "source_unavailable",
    };
    let status = match &e {
        GitError::Git { .. } | GitError::Io { .. } => axum::http::StatusCode::BAD_GATEWAY,
        _ => axum::http::StatusCode::BAD_REQUEST,
    };
    let err = ApiError::new(status, code, e.to_string());
    match e.hint() {
        Some(h) => err.with_hint(h),
        None => err,
    }
}
