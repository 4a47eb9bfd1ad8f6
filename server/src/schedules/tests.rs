//! The scheduler over a real session, driven by a hand-set clock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secureclaw_engine::record::RunState;
use secureclaw_engine::session::{Access, AppTable, PassphraseSource, Session, SessionOptions};
use serde_json::Value;

use super::*;
use crate::config::ServerConfig;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn open_state(dir: &Path) -> AppState {
    let pass = dir.join("pass");
    std::fs::write(&pass, "schedules-test-passphrase").unwrap();
    let session = Session::open(SessionOptions {
        state_dir: dir.join("state"),
        passphrase: PassphraseSource::File(pass),
        access: Access::Write { create: true },
        actor: "test:schedules".into(),
    })
    .unwrap();
    AppState::new(session, ServerConfig::defaults(dir.into()))
        .await
        .unwrap()
}

fn scheduled(path: &str, yaml: &str) -> TriggeredWorkflow {
    let validated =
        secureclaw_engine::validate::validate_bytes(Path::new(path), yaml.as_bytes()).unwrap();
    assert!(validated.workflow.on.schedule.is_some(), "{yaml}");
    TriggeredWorkflow {
        source: "repo".into(),
        path: path.into(),
        validated,
        owner: "u-owner".into(),
        workspace: None,
    }
}

/// Parks at its gate: a run that stays "going" until someone answers.
fn gated_nightly() -> String {
    r#"version: 1
name: nightly
on:
  schedule: { cron: "0 3 * * *", timezone: Europe/Paris }
steps:
  - id: prepare
    write: { path: prep.txt, content: "prepared\n" }
  - id: publish
    needs: [prepare]
    approve: true
    write: { path: published.txt, content: "published\n" }
"#
    .into()
}

fn hourly(name: &str, missed: &str) -> String {
    format!(
        r#"version: 1
name: {name}
on:
  schedule: {{ cron: "0 * * * *", missed: {missed} }}
steps:
  - id: stamp
    write: {{ path: stamp.txt, content: "ran\n" }}
"#
    )
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1500 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn view(state: &AppState, path: &str) -> Option<ScheduleView> {
    state.schedules.list().into_iter().find(|v| v.path == path)
}

/// The ledger entries of one kind, as exported.
fn ledger(state: &AppState, kind: &str) -> Vec<Value> {
    let (jsonl, _head) = state.session.ledger_export(None).unwrap();
    String::from_utf8(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"].take())
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn tasks(state: &AppState) -> usize {
    state.session.app_keys(AppTable::Tasks).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_at_its_time_in_its_zone_and_never_beside_a_run_still_going() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_state(dir.path()).await;
    let feed = Arc::new(FixedFeed::default());
    feed.set(vec![scheduled("nightly.yml", &gated_nightly())]);
    let clock = Arc::new(ManualClock::new(at("2026-01-10T00:00:00Z")));
    let task = spawn(state.clone(), feed.clone(), clock.clone());

    // 03:00 in Paris in winter is 02:00 UTC.
    let v = eventually("the schedule on the board", || view(&state, "nightly.yml")).await;
    assert_eq!(v.next.as_deref(), Some("2026-01-10T02:00:00Z"));
    assert_eq!(v.timezone, "Europe/Paris");
    clock.set(at("2026-01-10T01:59:59Z"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tasks(&state), 0, "fired before its time");

    clock.set(at("2026-01-10T02:00:00Z"));
    let v = eventually("the first start", || {
        view(&state, "nightly.yml").filter(|v| v.last_run.is_some())
    })
    .await;
    assert_eq!(v.last_fired.as_deref(), Some("2026-01-10T02:00:00Z"));
    let run = v.last_run.unwrap();
    let record = eventually("the run parked at its gate", || {
        state
            .session
            .show(&run)
            .ok()
            .filter(|r| r.state == RunState::AwaitingApproval)
    })
    .await;
    assert_eq!(
        record.started_by.as_deref(),
        Some("schedule:repo/nightly.yml")
    );
    let fired = ledger(&state, kind::SCHEDULE_FIRED);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["actor"], "schedule:repo/nightly.yml");
    assert_eq!(fired[0]["result"]["due"], "2026-01-10T02:00:00Z");
    assert_eq!(fired[0]["result"]["run"], run.as_str());

    // The next night the first run still waits for its approval: that time is skipped.
    clock.set(at("2026-01-11T02:00:00Z"));
    let v = eventually("the skip", || {
        view(&state, "nightly.yml").filter(|v| v.last_skipped.is_some())
    })
    .await;
    let skipped = v.last_skipped.unwrap();
    assert_eq!(skipped.at, "2026-01-11T02:00:00Z");
    assert!(skipped.reason.contains("still going"), "{}", skipped.reason);
    assert_eq!(v.next.as_deref(), Some("2026-01-12T02:00:00Z"));
    assert_eq!(tasks(&state), 1);
    let skips = ledger(&state, kind::SCHEDULE_SKIPPED);
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0]["result"]["due"], "2026-01-11T02:00:00Z");
    assert_eq!(ledger(&state, kind::SCHEDULE_FIRED).len(), 1);

    state.stopping.cancel();
    task.await.unwrap();
    state.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_true_starts_beside_a_parked_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_state(dir.path()).await;
    let yaml = gated_nightly().replace("timezone: Europe/Paris", "timezone: UTC, overlap: true");
    let feed = Arc::new(FixedFeed::default());
    feed.set(vec![scheduled("nightly.yml", &yaml)]);
    let clock = Arc::new(ManualClock::new(at("2026-01-10T00:00:00Z")));
    let task = spawn(state.clone(), feed, clock.clone());
    eventually("the schedule", || view(&state, "nightly.yml")).await;
    clock.set(at("2026-01-10T03:00:00Z"));
    let first = eventually("the first start", || view(&state, "nightly.yml")?.last_run).await;
    eventually("the first run parked", || {
        let r = state.session.show(&first).ok()?;
        (r.state == RunState::AwaitingApproval).then_some(())
    })
    .await;
    clock.set(at("2026-01-11T03:00:00Z"));
    let second = eventually("the second start", || {
        view(&state, "nightly.yml")?
            .last_run
            .filter(|r| *r != first)
    })
    .await;
    assert_ne!(first, second);
    assert_eq!(tasks(&state), 2);
    assert!(ledger(&state, kind::SCHEDULE_SKIPPED).is_empty());
    state.stopping.cancel();
    task.await.unwrap();
    state.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_skip_forgets_and_run_once_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let feed = Arc::new(FixedFeed::default());
    feed.set(vec![
        scheduled("skip.yml", &hourly("skipper", "skip")),
        scheduled("once.yml", &hourly("once", "run_once")),
    ]);

    // First life: both schedules are seen at 10:30, then the server stops.
    let state = open_state(dir.path()).await;
    let clock = Arc::new(ManualClock::new(at("2026-03-02T10:30:00Z")));
    let task = spawn(state.clone(), feed.clone(), clock.clone());
    for path in ["skip.yml", "once.yml"] {
        let v = eventually("the schedule", || view(&state, path)).await;
        assert_eq!(v.next.as_deref(), Some("2026-03-02T11:00:00Z"));
    }
    state.stopping.cancel();
    task.await.unwrap();
    state.session.shutdown().await;
    drop(state);

    // Second life at 14:10: 11:00, 12:00, 13:00 and 14:00 were missed.
    let state = open_state(dir.path()).await;
    let clock = Arc::new(ManualClock::new(at("2026-03-02T14:10:00Z")));
    let task = spawn(state.clone(), feed.clone(), clock.clone());
    let once = eventually("run_once's start", || {
        view(&state, "once.yml").filter(|v| v.last_run.is_some())
    })
    .await;
    assert_eq!(once.next.as_deref(), Some("2026-03-02T15:00:00Z"));
    let skip = eventually("skip's record", || {
        view(&state, "skip.yml").filter(|v| v.last_skipped.is_some())
    })
    .await;
    assert!(skip.last_run.is_none(), "{skip:?}");
    assert!(
        skip.last_skipped
            .unwrap()
            .reason
            .contains("missed while the server was down"),
    );
    assert_eq!(skip.next.as_deref(), Some("2026-03-02T15:00:00Z"));

    let fired = ledger(&state, kind::SCHEDULE_FIRED);
    assert_eq!(fired.len(), 1, "one start for four missed times: {fired:?}");
    assert_eq!(fired[0]["result"]["path"], "once.yml");
    assert_eq!(fired[0]["result"]["missed_since"], "2026-03-02T11:00:00Z");
    let skipped = ledger(&state, kind::SCHEDULE_SKIPPED);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["result"]["path"], "skip.yml");
    assert_eq!(tasks(&state), 1);

    // A third life with nothing missed starts nothing.
    let run = once.last_run.unwrap();
    eventually("the run_once run to finish", || {
        let r = state.session.show(&run).ok()?;
        (r.state == RunState::Succeeded).then_some(())
    })
    .await;
    state.stopping.cancel();
    task.await.unwrap();
    state.session.shutdown().await;
    drop(state);
    let state = open_state(dir.path()).await;
    let clock = Arc::new(ManualClock::new(at("2026-03-02T14:50:00Z")));
    let task = spawn(state.clone(), feed, clock);
    eventually("the schedules", || view(&state, "skip.yml")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ledger(&state, kind::SCHEDULE_FIRED).len(), 1);
    assert_eq!(ledger(&state, kind::SCHEDULE_SKIPPED).len(), 1);
    state.stopping.cancel();
    task.await.unwrap();
    state.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_feed_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_state(dir.path()).await;
    let feed = Arc::new(FixedFeed::default());
    let clock = Arc::new(ManualClock::new(at("2026-01-10T00:00:00Z")));
    let task = spawn(state.clone(), feed.clone(), clock.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(state.schedules.list().is_empty());
    feed.set(vec![scheduled("h.yml", &hourly("h", "skip"))]);
    let v = eventually("the new schedule", || view(&state, "h.yml")).await;
    assert_eq!(v.next.as_deref(), Some("2026-01-10T01:00:00Z"));
    feed.set(Vec::new());
    eventually("the schedule gone", || {
        state.schedules.list().is_empty().then_some(())
    })
    .await;
    clock.set(at("2026-01-10T01:00:00Z"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tasks(&state), 0, "a removed schedule fired");
    state.stopping.cancel();
    task.await.unwrap();
    state.session.shutdown().await;
}

#[test]
fn clock_changes_neither_drop_nor_double_a_time() {
    let s = secureclaw_engine::model::ScheduleSpec::Full(secureclaw_engine::model::Schedule {
        cron: "30 2 * * *".into(),
        timezone: Some("Europe/Paris".into()),
        missed: MissedRuns::Skip,
        overlap: false,
    });
    let cron = CronSchedule::parse(&s.full()).unwrap();
    // 2026-03-29: Paris skips from 02:00 to 03:00; 02:30 does not exist that day.
    // It runs at the first time that does: 03:00 CEST, 01:00 UTC.
    assert_eq!(
        cron.next_after(at("2026-03-28T12:00:00Z")),
        Some(at("2026-03-29T01:00:00Z"))
    );
    // 2026-10-25: Paris goes from 03:00 back to 02:00; 02:30 happens twice and runs once
    // (02:30 CEST, 00:30 UTC), then 02:30 CET the next day.
    let autumn = cron.next_after(at("2026-10-24T12:00:00Z")).unwrap();
    assert_eq!(autumn, at("2026-10-25T00:30:00Z"));
    assert_eq!(cron.next_after(autumn), Some(at("2026-10-26T01:30:00Z")));
}
