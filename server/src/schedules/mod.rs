//! Runs that start at a time: each valid source workflow with `on.schedule` gets its next time
//! from its cron expression in its time zone, and at that time becomes a task of the source's
//! owner, started like any other triggered run.
//!
//! - Never two runs of one workflow at once unless the schedule says `overlap: true`: a time
//!   that comes while the previous run is still going (running, or parked at an approval
//!   gate) is skipped, and the skip recorded.
//! - The last time each schedule was considered survives a restart (a settings row). At start,
//!   a schedule that missed times while the server was down follows its policy: `skip`
//!   forgets them, `run_once` runs once however many were missed.
//! - Every start and every skip is a ledger entry (`schedule_fired`, `schedule_skipped`).

pub mod clock;
pub mod feed;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use secureclaw_engine::model::{MissedRuns, Schedule};
use secureclaw_engine::record::RunState;
use secureclaw_engine::schedule::CronSchedule;
use secureclaw_engine::session::{AppBatch, AppTable, Audit};
use secureclaw_engine::tools::vault::kind;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

pub use clock::{Clock, ManualClock, RealClock};
pub use feed::{FixedFeed, TriggeredWorkflow, WorkflowFeed};
pub use routes::routes;

use crate::app::AppState;
use crate::launch::{Launch, launch};
use crate::tasks::model::Origin;

/// How often a replica on a shared store reads the sources again for schedules registered
/// through another replica.
const SHARED_REREAD: std::time::Duration = std::time::Duration::from_secs(10);

/// On a shared store, a time this recent that a replica finds unconsidered when it first sees
/// a schedule is one another replica is firing now, not one missed while every replica was down.
const SHARED_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// Settings key prefix of the rows that remember each schedule's last considered time.
const LAST_KEY: &str = "schedules/last/";

/// What the server remembers of one schedule across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LastRow {
    /// The last due time handled (fired or skipped), or when the schedule was first seen.
    considered: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fired: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skipped: Option<Skipped>,
}

/// One scheduled workflow as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub source: String,
    pub path: String,
    /// The workflow's `name`.
    pub workflow: String,
    /// The user id whose tasks its runs become.
    pub owner: String,
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// `skip` or `run_once`.
    #[schema(value_type = String, example = "skip")]
    pub missed: MissedRuns,
    pub overlap: bool,
    /// The next time it fires, RFC 3339 UTC.
    pub next: Option<String>,
    pub last_fired: Option<String>,
    pub last_task: Option<String>,
    pub last_run: Option<String>,
    /// The last time that passed without a run, and why.
    pub last_skipped: Option<Skipped>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Skipped {
    pub at: String,
    pub reason: String,
}

/// The scheduler's current view, read by the API.
#[derive(Default)]
pub struct ScheduleBoard {
    views: Mutex<BTreeMap<String, ScheduleView>>,
}

impl ScheduleBoard {
    pub fn list(&self) -> Vec<ScheduleView> {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, key: &str, f: impl FnOnce(&mut ScheduleView)) {
        if let Some(v) = self
            .views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(key)
        {
            f(v);
        }
    }

    fn replace(&self, views: BTreeMap<String, ScheduleView>) {
        *self.views.lock().unwrap_or_else(|p| p.into_inner()) = views;
    }
}

/// Whether a run is running here, or parked at a gate waiting for someone: either way the
/// next one must wait.
pub fn still_going(state: &AppState, run: &str) -> bool {
    state.session.is_live(run)
        || state
            .session
            .show(run)
            .is_ok_and(|r| matches!(r.state, RunState::Running | RunState::AwaitingApproval))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

struct Entry {
    wf: TriggeredWorkflow,
    spec: Schedule,
    cron: CronSchedule,
    next: Option<DateTime<Utc>>,
}

/// The scheduler task.
pub struct Scheduler {
    state: AppState,
    feed: Arc<dyn WorkflowFeed>,
    clock: Arc<dyn Clock>,
}

/// Start the scheduler; it ends when the server stops (`state.stopping`).
pub fn spawn(
    state: AppState,
    feed: Arc<dyn WorkflowFeed>,
    clock: Arc<dyn Clock>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Scheduler { state, feed, clock }.run())
}

impl Scheduler {
    async fn run(self) {
        let stopping = self.state.stopping.clone();
        tokio::select! {
            () = stopping.cancelled() => {}
            () = self.schedule() => {}
        }
    }

    async fn schedule(&self) {
        let mut changes = self.feed.changes();
        let mut feed_open = true;
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        loop {
            changes.borrow_and_update();
            entries = self.reload(entries).await;
            loop {
                let earliest = entries.values().filter_map(|e| e.next).min();
                let wake = async {
                    match earliest {
                        Some(t) => self.clock.sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let changed = async {
                    match feed_open {
                        true => changes.changed().await.is_ok(),
                        // A feed that is gone changes no more: keep what it last said.
                        false => std::future::pending().await,
                    }
                };
                // On a shared store another replica may register or remove a source: this
                // one's feed is told only of its own changes, so it reads again now and then.
                let reread = async {
                    match self.state.session.node() {
                        Some(_) => tokio::time::sleep(SHARED_REREAD).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    open = changed => {
                        feed_open = open;
                        break;
                    }
                    () = reread => break,
                    () = wake => self.fire_due(&mut entries).await,
                }
            }
        }
    }

    /// Read the feed again; schedules seen before keep their next time, new ones catch up
    /// on what they missed (their policy) and are given their next time.
    async fn reload(&self, mut old: BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
        let workflows = match self.feed.triggered(&self.state).await {
            Ok(w) => w,
            // Keep the schedules as they were; the next change reads again.
            Err(_) => return old,
        };
        let mut entries = BTreeMap::new();
        for wf in workflows {
            let Some(spec) = wf.validated.workflow.on.schedule.as_ref().map(|s| s.full()) else {
                continue;
            };
            // Validation parsed it already; a schedule that does not parse is not run.
            let Ok(cron) = CronSchedule::parse(&spec) else {
                continue;
            };
            let key = wf.key();
            let next = match old.remove(&key) {
                Some(prev) if prev.spec == spec => prev.next,
                _ => None,
            };
            let mut entry = Entry {
                wf,
                spec,
                cron,
                next,
            };
            if entry.next.is_none() {
                self.catch_up(&key, &mut entry).await;
            }
            entries.insert(key, entry);
        }
        self.state.schedules.replace(
            entries
                .iter()
                .map(|(k, e)| (k.clone(), self.view(k, e)))
                .collect(),
        );
        entries
    }

    fn view(&self, key: &str, e: &Entry) -> ScheduleView {
        let row = self.last_row(key).unwrap_or_default();
        ScheduleView {
            source: e.wf.source.clone(),
            path: e.wf.path.clone(),
            workflow: e.wf.validated.workflow.name.clone(),
            owner: e.wf.owner.clone(),
            cron: e.spec.cron.clone(),
            timezone: e.spec.timezone.clone().unwrap_or_else(|| "UTC".into()),
            missed: e.spec.missed,
            overlap: e.spec.overlap,
            next: e.next.map(rfc3339),
            last_fired: row.fired,
            last_task: row.task,
            last_run: row.run,
            last_skipped: row.skipped,
        }
    }

    fn last_row(&self, key: &str) -> Option<LastRow> {
        self.state
            .session
            .app_get_json::<LastRow>(AppTable::Settings, &format!("{LAST_KEY}{key}"))
            .ok()
            .flatten()
    }

    /// A schedule seen for the first time by this server process.
    async fn catch_up(&self, key: &str, e: &mut Entry) {
        let now = self.clock.now();
        let row = self.last_row(key);
        let missed = row
            .as_ref()
            .and_then(|r| parse_time(&r.considered))
            .and_then(|last| e.cron.next_after(last).filter(|t| *t <= now));
        match (row, missed) {
            (None, _) => {
                // Downtime is measured from here on.
                let row = LastRow {
                    considered: rfc3339(now),
                    ..LastRow::default()
                };
                let _ = self.commit(key, &row, None).await;
            }
            (Some(_), None) => {}
            // On a shared store another replica fires the times as they come, and records
            // each: a time only just past is being fired, not missed. This replica fires it
            // too, and the start another replica made first wins.
            (Some(_), Some(first))
                if self.state.session.node().is_some() && now - first < SHARED_GRACE =>
            {
                e.next = Some(first);
                return;
            }
            (Some(_), Some(first)) => match e.spec.missed {
                MissedRuns::Skip => {
                    self.skip(
                        key,
                        e,
                        now,
                        format!(
                            "missed while the server was down (first missed time {}); the policy is skip",
                            rfc3339(first)
                        ),
                    )
                    .await;
                }
                // Fired as the first missed time: replicas that catch up at once compute the
                // same time, so the missed times run once across them too.
                MissedRuns::RunOnce => {
                    self.fire(key, e, first, Some(first)).await;
                }
            },
        }
        e.next = e.cron.next_after(now);
    }

    async fn fire_due(&self, entries: &mut BTreeMap<String, Entry>) {
        let now = self.clock.now();
        for (key, e) in entries.iter_mut() {
            let Some(due) = e.next.filter(|t| *t <= now) else {
                continue;
            };
            self.fire(key, e, due, None).await;
            // One start for a time that came late, however many times passed meanwhile.
            e.next = e.cron.next_after(now.max(due));
            let next = e.next.map(rfc3339);
            self.state.schedules.update(key, |v| v.next = next);
        }
    }

    /// Start the workflow for time `due`, unless its previous run is still going.
    async fn fire(&self, key: &str, e: &Entry, due: DateTime<Utc>, missed: Option<DateTime<Utc>>) {
        let row = self.last_row(key).unwrap_or_default();
        if !e.spec.overlap
            && let Some(run) = row.run.as_deref()
            && still_going(&self.state, run)
        {
            self.skip(
                key,
                e,
                due,
                format!("the previous run {run} is still going (overlap is off)"),
            )
            .await;
            return;
        }
        let actor = format!("schedule:{key}");
        let started = launch(
            &self.state,
            Launch {
                owner: e.wf.owner.clone(),
                actor: actor.clone(),
                origin: Origin::Schedule,
                started_by: Some(actor.clone()),
                workflow: e.wf.validated.clone(),
                inputs: BTreeMap::new(),
                workspace: e.wf.workspace.clone(),
                // Nobody is there to approve: gates park the run for the API.
                approve: Vec::new(),
                since: Instant::now(),
                // One start per fire time, however many replicas evaluate the schedule.
                once: Some(format!("schedule:{key}@{}", rfc3339(due))),
            },
        )
        .await;
        let launched = match started {
            Ok(l) => l,
            // Another replica evaluating the same schedule started this time first: its start
            // is the one, and it records the firing.
            Err(err) if err.code == crate::launch::DUPLICATE_START => return,
            Err(err) => {
                self.skip(key, e, due, format!("the run could not start: {err}"))
                    .await;
                return;
            }
        };
        let row = LastRow {
            // A catch-up start stands for every time missed up to now.
            considered: rfc3339(match missed {
                Some(_) => self.clock.now().max(due),
                None => due,
            }),
            fired: Some(rfc3339(due)),
            task: Some(launched.task_id.clone()),
            run: Some(launched.run_id.clone()),
            skipped: row.skipped,
        };
        let mut audit = Audit::new(
            kind::SCHEDULE_FIRED,
            actor,
            json!({
                "source": e.wf.source,
                "path": e.wf.path,
                "cron": e.spec.cron,
                "timezone": e.spec.timezone,
                "due": rfc3339(due),
                "missed_since": missed.map(rfc3339),
                "task": launched.task_id,
                "run": launched.run_id,
            }),
        );
        // In the run's own ledger export too.
        audit.run = Some(launched.run_id.clone());
        let _ = self.commit(key, &row, Some(audit)).await;
        self.state.schedules.update(key, |v| {
            v.last_fired = row.fired.clone();
            v.last_task = row.task.clone();
            v.last_run = row.run.clone();
        });
    }

    async fn skip(&self, key: &str, e: &Entry, due: DateTime<Utc>, reason: String) {
        let mut row = self.last_row(key).unwrap_or_default();
        row.considered = rfc3339(due);
        row.skipped = Some(Skipped {
            at: rfc3339(due),
            reason: reason.clone(),
        });
        let audit = Audit::new(
            kind::SCHEDULE_SKIPPED,
            format!("schedule:{key}"),
            json!({
                "source": e.wf.source,
                "path": e.wf.path,
                "cron": e.spec.cron,
                "timezone": e.spec.timezone,
                "due": rfc3339(due),
                "reason": reason,
            }),
        );
        let _ = self.commit(key, &row, Some(audit)).await;
        self.state.schedules.update(key, |v| {
            v.last_skipped = Some(Skipped {
                at: rfc3339(due),
                reason,
            });
        });
    }

    async fn commit(
        &self,
        key: &str,
        row: &LastRow,
        audit: Option<Audit>,
    ) -> Result<(), crate::error::ApiError> {
        let mut batch = AppBatch::default();
        batch.put_json(AppTable::Settings, format!("{LAST_KEY}{key}"), row)?;
        if let Some(a) = audit {
            batch.audit(a);
        }
        self.state.session.app_commit(batch).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
