//! Run records: what happened in a run, per step, kept in the state dir so `runs` and `show`
//! can list them and a crash leaves the last known state behind.
//!
//! Records are written atomically (temp file + rename) on every state change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secureclaw_sandbox::EnforcementReport;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Tier;
use crate::validate::InverseClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    /// Stopped before a step that needed an approval nobody gave.
    AwaitingApproval,
    Cancelled,
    /// The engine died while the run was in progress (found on the next start).
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    WaitingApproval,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    Reverted,
}

impl StepState {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            StepState::Pending | StepState::WaitingApproval | StepState::Running
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub kind: crate::model::ActionKind,
    pub state: StepState,
    pub tier: Tier,
    pub rule: String,
    pub inverse: InverseClass,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The action after templating (command, path, URL...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered: Option<Value>,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<EnforcementReport>,
    /// Who or what approved it, if it needed approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// Exactly which nodes an up-front approval covers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PlanApproval {
    pub by: String,
    pub tiers: Vec<Tier>,
    pub nodes: Vec<ApprovedNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovedNode {
    pub id: String,
    pub tier: Tier,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow: String,
    pub workflow_file: PathBuf,
    /// SHA-256 of the workflow file as run.
    pub workflow_sha256: String,
    pub workspace: PathBuf,
    pub backend: String,
    pub isolated: bool,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub pid: u32,
    pub inputs: BTreeMap<String, Value>,
    #[serde(default)]
    pub approval: PlanApproval,
    pub steps: Vec<StepRecord>,
}

impl RunRecord {
    pub fn step(&self, id: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.id == id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run `{0}` not found (see `secureclaw runs`)")]
    NotFound(String),
    #[error("run id `{0}` matches several runs; give more characters")]
    Ambiguous(String),
    #[error("state dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run record {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Run records under `<state_dir>/runs/<run_id>/run.json`.
#[derive(Debug, Clone)]
pub struct RunStore {
    root: PathBuf,
}

impl RunStore {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("runs");
        std::fs::create_dir_all(&root).map_err(|source| StoreError::Io {
            path: root.clone(),
            source,
        })?;
        restrict_permissions(state_dir);
        Ok(RunStore { root })
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join(run_id)
    }

    pub fn save(&self, record: &RunRecord) -> Result<(), StoreError> {
        let dir = self.run_dir(&record.run_id);
        let io = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join("run.json.tmp");
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Corrupt {
            path: tmp.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, dir.join("run.json")).map_err(io)?;
        Ok(())
    }

    pub fn load(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        let id = self.resolve(run_id)?;
        let path = self.run_dir(&id).join("run.json");
        let bytes = std::fs::read(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Accept a unique prefix of a run id, or `last` for the newest run.
    pub fn resolve(&self, run_id: &str) -> Result<String, StoreError> {
        let ids = self.ids()?;
        if run_id == "last" {
            return ids
                .last()
                .cloned()
                .ok_or_else(|| StoreError::NotFound(run_id.into()));
        }
        if ids.iter().any(|i| i == run_id) {
            return Ok(run_id.to_string());
        }
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(run_id)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::NotFound(run_id.into())),
            _ => Err(StoreError::Ambiguous(run_id.into())),
        }
    }

    /// Run ids, oldest first (ids sort by start time).
    pub fn ids(&self) -> Result<Vec<String>, StoreError> {
        let rd = std::fs::read_dir(&self.root).map_err(|source| StoreError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut ids: Vec<String> = rd
            .filter_map(Result::ok)
            .filter(|e| e.path().join("run.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn list(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.ids()?.iter().map(|id| self.load(id)).collect()
    }

    /// Mark runs whose engine process is gone as interrupted. Returns their ids.
    pub fn mark_interrupted(&self) -> Result<Vec<String>, StoreError> {
        let mut marked = Vec::new();
        for mut rec in self.list()? {
            if rec.state == RunState::Running && !process_alive(rec.pid) {
                rec.state = RunState::Interrupted;
                rec.message = Some("the engine stopped while this run was in progress".into());
                for s in &mut rec.steps {
                    if s.state == StepState::Running {
                        s.state = StepState::Failed;
                        s.reason = Some("interrupted: the engine stopped during this step".into());
                    }
                }
                self.save(&rec)?;
                marked.push(rec.run_id);
            }
        }
        Ok(marked)
    }
}

fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The state dir holds run history: readable by its owner only.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A new run id: sortable by start time, readable, unique enough for one state dir.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}-{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        &uuid[..6]
    )
}
