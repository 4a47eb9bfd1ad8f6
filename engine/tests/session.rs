//! The session API driven directly: concurrent runs, parked runs that resume in a new
//! session, approvals bound to what was shown, and event replay from any point.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use secureclaw_engine::events::{EventEnvelope, EventLog, RunEvent};
use secureclaw_engine::park::StepDecision;
use secureclaw_engine::policy::{ApprovalRequest, Approver, Decision, Policy};
use secureclaw_engine::record::{RunState, RunStore, StepState};
use secureclaw_engine::scheduler::{Engine, Resume, RunOptions};
use secureclaw_engine::session::{
    Access, PassphraseSource, RunRequest, RunSettings, Session, SessionError, SessionOptions,
};
use secureclaw_engine::validate::{Validated, validate_bytes};
use secureclaw_vault::{KdfParams, Vault};

const PASS: &str = "session tests";

/// A state dir with a vault made cheaply (the KDF cost is not what these tests are about).
fn state(dir: &Path) -> (PathBuf, PathBuf) {
    let state = dir.join("state");
    Vault::create(
        &state,
        PASS,
        &KdfParams {
            memory_kib: 256,
            iterations: 1,
            ..KdfParams::default()
        },
    )
    .unwrap();
    let pass_file = dir.join("pass");
    std::fs::write(&pass_file, PASS).unwrap();
    (state, pass_file)
}

fn open(state: &Path, pass_file: &Path) -> Session {
    Session::open(SessionOptions {
        state_dir: state.to_path_buf(),
        passphrase: PassphraseSource::File(pass_file.to_path_buf()),
        access: Access::Write { create: false },
        actor: "test:session".into(),
    })
    .unwrap()
}

fn workflow(text: &str) -> Validated {
    validate_bytes(Path::new("(test)"), text.as_bytes()).unwrap_or_else(|d| panic!("{d}"))
}

fn request(wf: Validated, workspace: &Path) -> RunRequest {
    RunRequest {
        workflow: wf,
        inputs: BTreeMap::new(),
        workspace: workspace.to_path_buf(),
        settings: RunSettings {
            // Only engine-side actions in these workflows: no step needs a sandbox.
            backend: Some(secureclaw_engine::model::Backend::Host),
            ..RunSettings::default()
        },
        approver: None,
    }
}

/// `n` write steps in a chain.
fn chain(n: usize) -> String {
    let mut y = String::from("version: 1\nname: chain\nsteps:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - id: s{i}\n    write: {{ path: out/f{i}.txt, content: \"step {i}\" }}\n"
        ));
        if i > 0 {
            y.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    y
}

async fn all_events(session: &Session, run: &str, after: u64) -> Vec<EventEnvelope> {
    let mut s = session.events(run, after).unwrap();
    let mut out = Vec::new();
    while let Some(e) = s.next().await {
        out.push(e);
    }
    out
}

fn assert_numbered(events: &[EventEnvelope], from: u64) {
    for (k, e) in events.iter().enumerate() {
        assert_eq!(
            e.seq,
            from + k as u64,
            "events are numbered without gaps: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_runs_at_once_each_with_its_own_numbered_events() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let session = open(&state, &pass);
    let mut handles = Vec::new();
    for k in 0..20 {
        let ws = dir.path().join(format!("ws{k}"));
        handles.push(session.submit(request(workflow(&chain(5)), &ws)).unwrap());
    }
    let ids: Vec<String> = handles.iter().map(|h| h.id().to_string()).collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "every run has its own id");
    for h in handles {
        let rec = h.wait().await.unwrap();
        assert_eq!(rec.state, RunState::Succeeded, "{:?}", rec.message);
        assert!(rec.steps.iter().all(|s| s.state == StepState::Succeeded));
    }
    for (k, id) in ids.iter().enumerate() {
        let ws = dir.path().join(format!("ws{k}"));
        assert_eq!(
            std::fs::read_to_string(ws.join("out/f4.txt")).unwrap(),
            "step 4"
        );
        let events = all_events(&session, id, 0).await;
        assert_numbered(&events, 1);
        assert!(events.iter().all(|e| &e.run_id == id));
        assert!(matches!(events[0].event, RunEvent::RunStarted { .. }));
        assert!(matches!(
            events.last().unwrap().event,
            RunEvent::RunFinished {
                state: RunState::Succeeded,
                ..
            }
        ));
    }
    assert_eq!(session.runs().unwrap().len(), 20);
    // The ledger recorded all of it, in one chain.
    drop(session);
    let vault = Vault::open(&state, PASS).unwrap();
    let report = vault.ledger().verify().unwrap();
    assert!(report.entries >= 20 * 7, "{} entries", report.entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_middle_sequence_number_yields_exactly_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let session = open(&state, &pass);
    let h = session
        .submit(request(workflow(&chain(40)), &dir.path().join("ws")))
        .unwrap();
    let id = h.id().to_string();
    // A subscriber that joins while the run goes on, from a point it already saw.
    let mut live = h.events(7);
    let live_task = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(e) = live.next().await {
            out.push(e);
        }
        out
    });
    h.wait().await.unwrap();
    let live_events = live_task.await.unwrap();
    let full = all_events(&session, &id, 0).await;
    assert!(full.len() > 80, "{} events", full.len());
    assert_numbered(&full, 1);
    assert_eq!(
        live_events,
        full[7..].to_vec(),
        "a live subscriber gets exactly the tail"
    );
    for after in [1, 33, full.len() as u64 - 1, full.len() as u64] {
        let tail = all_events(&session, &id, after).await;
        assert_eq!(tail, full[after as usize..].to_vec(), "after {after}");
    }
    // From another session (as another process would): the same, from the store.
    drop(session);
    let again = open(&state, &pass);
    assert_eq!(all_events(&again, &id, 20).await, full[20..].to_vec());
}

/// A row created twice keeps the first value (the embedded store, like the shared one).
#[tokio::test]
async fn a_created_row_is_never_overwritten_by_a_second_create() {
    let dir = tempfile::tempdir().unwrap();
    let (state_dir, pass) = state(dir.path());
    let session = open(&state_dir, &pass);
    let table = secureclaw_engine::session::AppTable::Settings;
    let first = session
        .app_create(table, "generated", b"first".to_vec())
        .await
        .unwrap();
    let second = session
        .app_create(table, "generated", b"second".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (first.as_slice(), second.as_slice()),
        (&b"first"[..], &b"first"[..])
    );
    assert_eq!(
        session.app_get(table, "generated").unwrap().unwrap(),
        b"first"
    );
}

/// A follower that catches up after a stretch's final event, but before the log is closed,
/// must find the stream over rather than wait for events that never come (a task's event
/// stream hung on exactly that while a run parked).
#[tokio::test]
async fn a_subscriber_after_the_final_event_does_not_wait_for_close() {
    let log = EventLog::new("run-y", 0, None);
    log.emit(RunEvent::Warning {
        message: "work".into(),
    });
    log.emit(RunEvent::RunFinished {
        state: secureclaw_engine::record::RunState::AwaitingApproval,
        message: None,
    });
    // Not closed yet: the run is still tidying up.
    let mut late = log.subscribe(2);
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), late.next())
        .await
        .expect("a subscriber after the final event waited for more");
    assert!(next.is_none(), "{next:?}");
    // One that starts before the final event still gets it, and then ends.
    let mut early = log.subscribe(1);
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), early.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.seq, 2);
    assert!(early.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_keeps_bounded_memory_and_replays_old_events_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _) = state(dir.path());
    let store = Arc::new(RunStore::new(Vault::open(&state, PASS).unwrap(), "test"));
    let log = EventLog::new("run-x", 0, Some(store.clone()));
    for k in 0..3000 {
        log.emit(RunEvent::Warning {
            message: format!("event {k}"),
        });
    }
    log.close();
    // Wait until the writer has everything (the last batch is handed over on close).
    for _ in 0..200 {
        if secureclaw_engine::session::last_stored_seq(&store, "run-x") == 3000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        secureclaw_engine::session::last_stored_seq(&store, "run-x"),
        3000
    );
    let mut s = log.subscribe(100);
    let mut seen = Vec::new();
    while let Some(e) = s.next().await {
        seen.push(e);
    }
    assert_eq!(seen.len(), 2900);
    assert_numbered(&seen, 101);
    assert_eq!(
        seen[0].event,
        RunEvent::Warning {
            message: "event 100".into()
        }
    );
}

/// A workflow whose middle step needs approval (`approve: true`).
const GATED: &str = r#"version: 1
name: gated
steps:
  - id: before
    write: { path: a.txt, content: "first" }
  - id: gate
    needs: [before]
    approve: true
    write: { path: b.txt, content: "needs a yes" }
  - id: after
    needs: [gate]
    write: { path: c.txt, content: "last" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_is_approved_and_resumed_in_a_new_session() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let ws = dir.path().join("ws");
    let (id, first_before) = {
        let session = open(&state, &pass);
        let rec = session
            .submit(request(workflow(GATED), &ws))
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(rec.state, RunState::AwaitingApproval);
        assert_eq!(rec.step("gate").unwrap().state, StepState::WaitingApproval);
        assert_eq!(rec.step("after").unwrap().state, StepState::Pending);
        assert!(!ws.join("b.txt").exists(), "the gated step did not run");
        (
            rec.run_id.clone(),
            rec.step("before").unwrap().started_at.clone(),
        )
    };
    // A new session, as a new process after a restart would open.
    let session = open(&state, &pass);
    let before_resume = all_events(&session, &id, 0).await;
    assert!(matches!(
        before_resume.last().unwrap().event,
        RunEvent::RunFinished {
            state: RunState::AwaitingApproval,
            ..
        }
    ));
    // Resuming before anyone approved parks again at the same gate.
    let again = session
        .resume(&id, false, None)
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(again.state, RunState::AwaitingApproval);
    let decided = session.approve(&id, Some("gate"), "alice").await.unwrap();
    assert_eq!(decided.len(), 1);
    let rec = session
        .resume(&id, false, None)
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(rec.state, RunState::Succeeded, "{:?}", rec.message);
    assert_eq!(rec.run_id, id, "the same run goes on");
    assert_eq!(rec.step("gate").unwrap().approval.as_deref(), Some("alice"));
    assert_eq!(
        rec.step("before").unwrap().started_at,
        first_before,
        "a finished step is not run again"
    );
    assert_eq!(std::fs::read_to_string(ws.join("c.txt")).unwrap(), "last");
    // The events go on from where they stopped, across all three stretches.
    let all = all_events(&session, &id, 0).await;
    assert_numbered(&all, 1);
    assert!(all.len() > before_resume.len());
    assert!(all.iter().any(|e| matches!(&e.event, RunEvent::ApprovalDecided { step, approved: true, by } if step == "gate" && by == "alice")));
    assert!(
        all.iter()
            .any(|e| matches!(e.event, RunEvent::RunResumed { .. }))
    );
    // A finished run is not parked any more.
    assert!(matches!(
        session.approve(&id, None, "bob").await,
        Err(SessionError::NotParked { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_gate_skips_the_step_and_what_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let ws = dir.path().join("ws");
    let session = open(&state, &pass);
    let rec = session
        .submit(request(workflow(GATED), &ws))
        .unwrap()
        .wait()
        .await
        .unwrap();
    let id = rec.run_id;
    assert!(matches!(
        session.deny(&id, "nope", "carol", None).await,
        Err(SessionError::NotWaiting { .. })
    ));
    session
        .deny(&id, "gate", "carol", Some("not today".into()))
        .await
        .unwrap();
    let rec = session
        .resume(&id, false, None)
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(rec.state, RunState::Failed);
    assert_eq!(rec.step("gate").unwrap().state, StepState::Skipped);
    assert_eq!(rec.step("after").unwrap().state, StepState::Skipped);
    assert!(rec.message.unwrap_or_default().contains("not today"));
    assert!(!ws.join("b.txt").exists() && !ws.join("c.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_workspace_changed_since_the_park_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let ws = dir.path().join("ws");
    let session = open(&state, &pass);
    let id = session
        .submit(request(workflow(GATED), &ws))
        .unwrap()
        .wait()
        .await
        .unwrap()
        .run_id;
    session.approve(&id, None, "alice").await.unwrap();
    std::fs::write(ws.join("a.txt"), "edited by hand").unwrap();
    std::fs::write(ws.join("new.txt"), "appeared").unwrap();
    match session.resume(&id, false, None) {
        Err(SessionError::Drift { paths, .. }) => {
            assert!(paths.contains(&"a.txt".to_string()), "{paths:?}");
            assert!(paths.contains(&"new.txt".to_string()), "{paths:?}");
        }
        Err(e) => panic!("expected drift, got {e}"),
        Ok(_) => panic!("expected drift, the run resumed"),
    }
    let rec = session
        .resume(&id, true, None)
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(rec.state, RunState::Succeeded);
}

/// Counts what it is asked, and approves.
struct Counting(AtomicUsize, Mutex<Vec<ApprovalRequest>>);

#[async_trait]
impl Approver for Counting {
    async fn decide(&self, request: &ApprovalRequest) -> Decision {
        self.0.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut v) = self.1.lock() {
            v.push(request.clone());
        }
        Decision::Approved {
            by: "prompt".into(),
        }
    }
}

/// An approval given to a parked run applies only to exactly what was shown: the same
/// request passes without asking; a changed one (another command, tier or reason) is asked
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_binds_to_what_was_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let ws = dir.path().join("ws");
    let session = open(&state, &pass);
    let parked = session
        .submit(request(workflow(GATED), &ws))
        .unwrap()
        .wait()
        .await
        .unwrap();
    let (_, park) = session.parked(&parked.run_id).unwrap();
    assert_eq!(park.pending.len(), 1);
    let shown = park.pending[0].clone();
    assert_eq!(shown.request.step, "gate");
    drop(session);

    for (hash, asked) in [
        (shown.hash.clone(), 0),
        ("a-different-request".to_string(), 1),
    ] {
        let counting = Arc::new(Counting(AtomicUsize::new(0), Mutex::new(Vec::new())));
        let store = Arc::new(RunStore::new(Vault::open(&state, PASS).unwrap(), "test"));
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let w2 = warnings.clone();
        let engine = Engine {
            sandbox: secureclaw_sandbox::by_name("host").unwrap(),
            approver: counting.clone(),
            policy: Policy::default(),
            events: Arc::new(move |e: &RunEvent| {
                if let RunEvent::Warning { message } = e {
                    w2.lock().unwrap().push(message.clone());
                }
            }),
            store: store.clone(),
        };
        // The record as it parked (each round starts from it).
        let record = parked.clone();
        let decision = StepDecision {
            step: "gate".into(),
            approved: true,
            by: "alice".into(),
            hash,
            at: "now".into(),
            reason: None,
        };
        let rec = engine
            .run(
                &workflow(GATED),
                RunOptions {
                    workspace: ws.clone(),
                    state_dir: state.clone(),
                    inputs: BTreeMap::new(),
                    jobs: 1,
                    fail_fast: false,
                    base_limits: Default::default(),
                    read_only: Vec::new(),
                    risk_model: None,
                    risk_model_status: String::new(),
                    run_id: Some(parked.run_id.clone()),
                    resume: Some(Resume {
                        record,
                        views: park.views.clone(),
                        decisions: [("gate".to_string(), decision)].into(),
                        write_seq: park.write_seq,
                        by: "test".into(),
                        retried: Vec::new(),
                    }),
                    request: serde_json::Value::Null,
                    started_by: None,
                },
                tokio_util::sync::CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(rec.state, RunState::Succeeded);
        assert_eq!(counting.0.load(Ordering::SeqCst), asked);
        let expected_by = if asked == 0 { "alice" } else { "prompt" };
        assert_eq!(
            rec.step("gate").unwrap().approval.as_deref(),
            Some(expected_by)
        );
        let warned = warnings
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("asking again"));
        assert_eq!(warned, asked == 1);
        if asked == 1 {
            // The approver saw the same request the parked run showed.
            assert_eq!(counting.1.lock().unwrap()[0], shown.request);
        }
        // Undo, so the next round starts from the same workspace.
        std::fs::remove_file(ws.join("b.txt")).ok();
        std::fs::remove_file(ws.join("c.txt")).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_finds_parked_runs_reads_runs_by_exact_id_and_walks_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let session = open(&state, &pass);
    assert!(session.parked_runs().unwrap().is_empty());
    let rec = session
        .submit(request(workflow(GATED), &dir.path().join("ws")))
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(rec.state, RunState::AwaitingApproval);
    assert_eq!(session.parked_runs().unwrap(), vec![rec.run_id.clone()]);

    let exact = session.run_record(&rec.run_id).unwrap().unwrap();
    assert_eq!(exact.state, RunState::AwaitingApproval);
    // Only the whole id: a prefix that `show` would resolve is nobody here.
    assert!(session.run_record(&rec.run_id[..8]).unwrap().is_none());
    assert!(session.show(&rec.run_id[..8]).is_ok());

    let all = session.ledger_entries(None).unwrap();
    let mine = session.ledger_entries(Some(&rec.run_id)).unwrap();
    assert!(!mine.is_empty() && mine.len() <= all.len());
    assert!(
        mine.iter()
            .all(|e| e.run.as_deref() == Some(rec.run_id.as_str()))
    );
    assert!(mine.iter().any(|e| e.kind == "run_parked"));
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");

    session.approve(&rec.run_id, None, "alice").await.unwrap();
    let done = session
        .resume(&rec.run_id, false, None)
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert!(
        session.parked_runs().unwrap().is_empty(),
        "no longer parked"
    );
}

/// `first` writes a file and prints a word; `second` fails until a file `go` exists; `third`
/// needs `second` and writes what the two printed (the word of `first` comes from the first
/// attempt's kept view).
const FAILS_UNTIL_GO: &str = r#"version: 1
name: fails-until-go
steps:
  - id: first
    shell: "echo made > first.txt && echo hello"
  - id: second
    shell: "test -f go && echo ok"
    needs: [first]
  - id: third
    write: { path: out/third.txt, content: "{{ steps.first.output | trim }} {{ steps.second.output | trim }}" }
    needs: [second]
"#;

fn started(events: &[EventEnvelope], step: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.event, RunEvent::StepStarted { step: s, .. } if s == step))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_from_its_failed_step_and_reverts_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("kept.txt"), "there before").unwrap();
    let session = open(&state, &pass);
    let mut req = request(workflow(FAILS_UNTIL_GO), &ws);
    req.settings.yes = true;
    let failed = session.submit(req).unwrap().wait().await.unwrap();
    let id = failed.run_id.clone();
    assert_eq!(failed.state, RunState::Failed);
    assert_eq!(failed.step("first").unwrap().state, StepState::Succeeded);
    assert_eq!(failed.step("second").unwrap().state, StepState::Failed);
    assert_eq!(failed.step("third").unwrap().state, StepState::Skipped);

    // `go` is a change to the workspace since the failure: refused unless forced.
    std::fs::write(ws.join("go"), "").unwrap();
    match session.retry(&id, false, None).await {
        Err(SessionError::Drift { paths, .. }) => {
            assert_eq!(paths, vec!["go".to_string()]);
        }
        Err(e) => panic!("expected drift, got {e}"),
        Ok(_) => panic!("expected drift, the run was retried"),
    }
    // A new session, as after a restart: what the retry needs was kept in the store.
    session.sync().await.unwrap();
    drop(session);
    let session = open(&state, &pass);
    let before_retry = session.last_event_seq(&id).unwrap();
    let handle = session.retry(&id, true, None).await.unwrap();
    assert_eq!(handle.id(), id, "a retry continues the same run");
    let rec = handle.wait().await.unwrap();
    assert_eq!(rec.state, RunState::Succeeded, "{rec:#?}");
    assert_eq!(rec.step("first").unwrap().attempts, 1);
    assert_eq!(rec.step("second").unwrap().state, StepState::Succeeded);
    assert_eq!(rec.step("third").unwrap().state, StepState::Succeeded);
    assert_eq!(
        std::fs::read_to_string(ws.join("out/third.txt")).unwrap(),
        "hello ok"
    );

    session.sync().await.unwrap();
    let events = all_events(&session, &id, 0).await;
    assert_numbered(&events, 1);
    assert_eq!(
        started(&events, "first"),
        1,
        "the step that succeeded ran once"
    );
    assert_eq!(started(&events, "second"), 2);
    assert_eq!(started(&events, "third"), 1);
    let retried = events
        .iter()
        .filter(|e| e.seq > before_retry)
        .find_map(|e| match &e.event {
            RunEvent::RunRetried { steps, .. } => Some(steps.clone()),
            _ => None,
        })
        .expect("a run_retried event");
    assert_eq!(retried, vec!["second".to_string(), "third".to_string()]);
    let kinds: Vec<String> = session
        .ledger_entries(Some(&id))
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"run_retried".to_string()), "{kinds:?}");

    // Succeeded: nothing more to retry.
    match session.retry(&id, true, None).await {
        Err(e @ SessionError::NotFailed { .. }) => {
            assert!(
                e.to_string().contains("only a failed run can be retried"),
                "{e}"
            );
            assert!(e.is_invalid_request());
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a succeeded run was retried"),
    }

    // Revert undoes both attempts' work: the first attempt's file and the retried steps'.
    session
        .revert(
            &id,
            secureclaw_engine::session::RevertOptions {
                step: None,
                cascade: false,
                force: false,
                dry_run: false,
            },
        )
        .await
        .unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&ws)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".secureclaw")
        .collect();
    left.sort();
    assert_eq!(left, vec!["go".to_string(), "kept.txt".to_string()]);
    assert_eq!(
        std::fs::read_to_string(ws.join("kept.txt")).unwrap(),
        "there before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_again_can_be_retried_again() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let ws = dir.path().join("ws");
    let session = open(&state, &pass);
    let mut req = request(workflow(FAILS_UNTIL_GO), &ws);
    req.settings.yes = true;
    let id = session.submit(req).unwrap().wait().await.unwrap().run_id;
    let again = session
        .retry(&id, false, None)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(again.state, RunState::Failed);
    assert_eq!(again.step("first").unwrap().attempts, 1);
    std::fs::write(ws.join("go"), "").unwrap();
    let done = session
        .retry(&id, true, None)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    session.sync().await.unwrap();
    let events = all_events(&session, &id, 0).await;
    assert_eq!(started(&events, "first"), 1);
    assert_eq!(started(&events, "second"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_failed_run_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let ws = dir.path().join("ws");
    let session = open(&state, &pass);
    let mut req = request(workflow(FAILS_UNTIL_GO), &ws);
    req.settings.yes = true;
    let id = session.submit(req).unwrap().wait().await.unwrap().run_id;
    session
        .revert(
            &id,
            secureclaw_engine::session::RevertOptions {
                step: None,
                cascade: false,
                force: false,
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert!(!ws.join("first.txt").exists());
    match session.retry(&id, true, None).await {
        Err(e @ SessionError::Invalid { .. }) => {
            assert!(e.to_string().contains("was reverted"), "{e}");
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a reverted run was retried"),
    }
}

/// A store whose every commit lands `delay` late, as on a loaded database server.
struct SlowStore {
    inner: secureclaw_engine::storage::VaultBackend,
    delay: std::time::Duration,
}

impl secureclaw_engine::storage::StateBackend for SlowStore {
    fn commit(
        &self,
        batches: &[secureclaw_engine::storage::Batch],
    ) -> Result<(), secureclaw_engine::storage::StorageError> {
        std::thread::sleep(self.delay);
        self.inner.commit(batches)
    }
    fn get(
        &self,
        table: secureclaw_engine::storage::Table,
        key: &str,
    ) -> Result<Option<Vec<u8>>, secureclaw_engine::storage::StorageError> {
        self.inner.get(table, key)
    }
    fn keys(
        &self,
        table: secureclaw_engine::storage::Table,
    ) -> Result<Vec<String>, secureclaw_engine::storage::StorageError> {
        self.inner.keys(table)
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

/// No ledger to read back: the test reads the run's events, not its ledger.
struct NoLedger;

impl secureclaw_vault::LedgerSource for NoLedger {
    fn read_ledger(
        &self,
        _visit: &mut secureclaw_vault::VisitRecord<'_>,
    ) -> Result<Option<Vec<u8>>, secureclaw_vault::VaultError> {
        Ok(None)
    }
    fn read_head(&self) -> Result<Option<Vec<u8>>, secureclaw_vault::VaultError> {
        Ok(None)
    }
}

/// A worker gives its job back (ending the lease the run's commits are made under) as soon as
/// the run's handle says it ended: the run's last events must be in the store by then, or a
/// slow store commits them after the lease is gone and refuses them, and a follower on another
/// node never sees `run_finished`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_last_events_are_stored_when_its_handle_says_it_ended() {
    use secureclaw_engine::storage::{StateBackend, Table, VaultBackend};
    let dir = tempfile::tempdir().unwrap();
    let (state, pass) = state(dir.path());
    let vault = Vault::open(&state, PASS).unwrap();
    let store = Arc::new(SlowStore {
        inner: VaultBackend(vault.clone()),
        delay: std::time::Duration::from_millis(150),
    });
    let session = Session::open_shared(
        SessionOptions {
            state_dir: state.clone(),
            passphrase: PassphraseSource::File(pass),
            access: Access::Write { create: false },
            actor: "test:session".into(),
        },
        secureclaw_engine::session::SharedState {
            vault,
            backend: store.clone(),
            ledger: Arc::new(NoLedger),
            node: "node-a".into(),
        },
    )
    .unwrap();
    let handle = session
        .submit(request(workflow(&chain(2)), &dir.path().join("ws")))
        .unwrap();
    let run = handle.id().to_string();
    let mut emitted = handle.events(0);
    let rec = handle.wait().await.unwrap();
    assert_eq!(rec.state, RunState::Succeeded, "{:?}", rec.message);
    // Read straight from the store, as another node would, not from this session's memory.
    let prefix = format!("{run}/");
    let stored = store
        .keys(Table::Events)
        .unwrap()
        .into_iter()
        .filter(|k| k.starts_with(&prefix))
        .count();
    let mut all = Vec::new();
    while let Some(e) = emitted.next().await {
        all.push(e);
    }
    assert!(matches!(
        all.last().unwrap().event,
        RunEvent::RunFinished { .. }
    ));
    assert_eq!(
        stored,
        all.len(),
        "the store holds {stored} of the run's {} events when its handle returns",
        all.len()
    );
}
