//! `GET /tasks/{id}/stream`: a run's events as Server-Sent Events.
//!
//! Each event is `id: SEQ` (the engine's sequence number), `event: KIND`, `data: ENVELOPE`.
//! `Last-Event-ID` (or `?after=`) resumes right after that number. The stream stays open
//! while the run is parked and goes on when it resumes; it ends after the run's final
//! `run_finished`.
//!
//! Each client gets a bounded queue. A client that leaves it full for longer than
//! [`STALL`] is behind: it gets `event: resync` with the last number it was sent, and the
//! stream closes, so it reconnects with that `Last-Event-ID` instead of the server holding an
//! ever longer backlog for it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use secureclaw_engine::events::{EventEnvelope, RunEvent};
use secureclaw_engine::record::RunState;
use secureclaw_engine::session::Session;
use tokio::sync::mpsc;

use super::routes::{accessible_task, run_of};
use super::scrub::OutputScrubber;
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult, Problem};

/// Events queued for one client at most.
pub const QUEUE: usize = 64;
/// How long a full queue may stay full before the client is told to resync.
pub const STALL: Duration = Duration::from_secs(5);
/// How often a stream waiting on a parked run (or on a run another node executes, should a
/// notification be lost) looks again without being told.
const RECHECK: Duration = Duration::from_secs(2);
/// How often a stream on a run queued for a worker (shared store) looks for its first events.
const QUEUED_RECHECK: Duration = Duration::from_millis(250);
/// How long a stream of a run another node executed waits for the run's last events once its
/// record says it ended: that node commits the final record just before them. A run that ends
/// with no final event (interrupted by the cluster) ends its stream after this.
const FINAL_EVENTS_WAIT: Duration = Duration::from_secs(3);

/// An event ready to send, with its number.
struct Outgoing {
    seq: u64,
    event: Event,
}

/// One server-sent event as a client's parser sees it (for the API document).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // documents the wire format; the handler writes the fields as SSE lines
pub struct StreamEvent {
    /// The engine's event number, from 1 without gaps (absent on heartbeats).
    pub id: Option<String>,
    /// The event kind: `run_started`, `step_finished`, ..., or `resync`.
    pub event: Option<String>,
    /// The JSON envelope `{run_id, seq, at, event, ...}`, as text.
    pub data: String,
    /// Reconnection delay hint in milliseconds, if the server sends one.
    pub retry: Option<u64>,
}

/// Follow the task's run live.
#[utoipa::path(get, path = "/tasks/{id}/stream", tag = "tasks", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "task id (UUID)"),
        ("after" = Option<u64>, Query, description = "start after this event number (as `Last-Event-ID`)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event number"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `id` = event number, `event` = kind, `data` = the JSON envelope; `event: resync` when the client fell behind", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "`Last-Event-ID` or `after` is not an event number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the task has not run", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream_task(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let task = accessible_task(&state, &who, &id)?;
    let run = run_of(&task)?.to_string();
    let after = resume_point(&headers, q.get("after").map(String::as_str))?;
    let scrub = OutputScrubber::new(state.config.pii_scrub)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let behind = Arc::new(AtomicBool::new(false));
    tokio::spawn(pump(
        state.session.clone(),
        run,
        after,
        tx,
        scrub,
        behind.clone(),
    ));
    let sse = Sse::new(body(rx, behind, after, state.stopping.clone())).keep_alive(
        KeepAlive::new()
            .interval(state.config.heartbeat)
            .text("heartbeat"),
    );
    let mut res = sse.into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// `Last-Event-ID` wins over `?after=`; neither: from the start.
fn resume_point(headers: &HeaderMap, after: Option<&str>) -> ApiResult<u64> {
    let given = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().unwrap_or("x").trim().to_string()),
        None => after.map(str::to_string),
    };
    match given {
        None => Ok(0),
        Some(text) if text.is_empty() => Ok(0),
        Some(text) => text.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_request",
                "`Last-Event-ID` / `after` must be an event number",
            )
        }),
    }
}

/// The response body: queued events until the pump ends; `resync` as soon as the pump says
/// the client is behind. A server that is stopping ends every stream at once (the client
/// reconnects with `Last-Event-ID` and misses nothing).
fn body(
    rx: mpsc::Receiver<Outgoing>,
    behind: Arc<AtomicBool>,
    after: u64,
    stopping: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct St {
        rx: mpsc::Receiver<Outgoing>,
        behind: Arc<AtomicBool>,
        last: u64,
        done: bool,
        stopping: tokio_util::sync::CancellationToken,
    }
    let st = St {
        rx,
        behind,
        last: after,
        done: false,
        stopping,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.behind.load(Ordering::Acquire) {
            let next = tokio::select! {
                out = st.rx.recv() => out,
                () = st.stopping.cancelled() => return None,
            };
            if let Some(out) = next {
                st.last = out.seq;
                return Some((Ok(out.event), st));
            }
        }
        if st.behind.load(Ordering::Acquire) {
            st.done = true;
            let resync = Event::default()
                .id(st.last.to_string())
                .event("resync")
                .data(serde_json::json!({ "last_seq": st.last }).to_string());
            return Some((Ok(resync), st));
        }
        None
    })
}

/// Read the run's events and queue them for the client until the run's final
/// `run_finished`, the client leaves, or it falls behind.
async fn pump(
    session: Session,
    run: String,
    mut after: u64,
    tx: mpsc::Sender<Outgoing>,
    scrub: OutputScrubber,
    behind: Arc<AtomicBool>,
) {
    let mut changes = session.live_changes();
    // This run's events other nodes commit (a shared store), told at once rather than at the
    // next poll.
    let mut elsewhere = session.event_commits(&run);
    // Whether the store has had a chance to catch up since the last read.
    let mut settled = false;
    // Once the record of a run another node executed says it ended: until when its last
    // events are waited for.
    let mut final_by: Option<tokio::time::Instant> = None;
    loop {
        changes.borrow_and_update();
        if let Some(e) = &mut elsewhere {
            e.borrow_and_update();
        }
        let mut events = match session.events(&run, after) {
            Ok(events) => events,
            // On a shared store a queued run has no record until a worker starts it.
            Err(_) if session.node().is_some() && matches!(session.run_record(&run), Ok(None)) => {
                tokio::select! {
                    _ = tx.closed() => return,
                    () = committed(&mut elsewhere) => continue,
                    _ = tokio::time::sleep(QUEUED_RECHECK) => continue,
                }
            }
            Err(_) => return,
        };
        while let Some(envelope) = events.next().await {
            after = envelope.seq;
            let ended = end_state(&envelope);
            let out = Outgoing {
                seq: envelope.seq,
                event: sse_event(envelope, &scrub),
            };
            match tx.send_timeout(out, STALL).await {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    behind.store(true, Ordering::Release);
                    return;
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
            }
            // A failure a retry went on from is not the end: later events follow it.
            if let Some(state) = ended
                && !(state == RunState::Failed && went_on_after(&session, &run, after))
            {
                return;
            }
        }
        // Out of events without the final one: the run is parked (or between stretches).
        if !session.is_live(&run) {
            // A run's last events are queued for the store when it ends, not yet stored: wait
            // until they are, then read again.
            if !settled {
                settled = true;
                let _ = session.sync().await;
                continue;
            }
            // `run` is the task's exact stored id: read that record alone.
            match session.run_record(&run) {
                Ok(Some(r)) if r.state == RunState::AwaitingApproval => {}
                // On a shared store the run may be going on on another node, or wait in the
                // queue: its events arrive in the store.
                Ok(Some(r)) if r.state == RunState::Running && session.node().is_some() => {}
                Ok(None) if session.node().is_some() => {}
                _ if session.is_live(&run) => continue,
                // Ended on another node: its last events follow the record's commit there.
                Ok(Some(_)) if session.node().is_some() => {
                    let by = *final_by
                        .get_or_insert_with(|| tokio::time::Instant::now() + FINAL_EVENTS_WAIT);
                    if tokio::time::Instant::now() >= by {
                        return;
                    }
                }
                // Ended without a final event this stream saw (e.g. interrupted): done.
                _ => return,
            }
        }
        let recheck = if final_by.is_some() {
            QUEUED_RECHECK
        } else {
            RECHECK
        };
        tokio::select! {
            _ = changes.changed() => {}
            () = committed(&mut elsewhere) => {}
            _ = tx.closed() => return,
            _ = tokio::time::sleep(recheck) => {}
        }
        settled = false;
    }
}

/// Returns when another node committed run events; never without a shared store.
async fn committed(elsewhere: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(e) = elsewhere
        && e.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// True when a retry already continued the run past its failure at `seq`: the store holds
/// later events. (Whether the run is live says nothing here: a run that just ended is still
/// live for a moment after its final event, and a stream that waited on it would never end.)
fn went_on_after(session: &Session, run: &str, seq: u64) -> bool {
    session.last_event_seq(run).is_ok_and(|last| last > seq)
}

/// The state the run ended in, when this is its last event: `run_finished` in any state but
/// parked.
fn end_state(e: &EventEnvelope) -> Option<RunState> {
    match &e.event {
        RunEvent::RunFinished { state, .. } if *state != RunState::AwaitingApproval => Some(*state),
        _ => None,
    }
}

fn sse_event(envelope: EventEnvelope, scrub: &OutputScrubber) -> Event {
    let seq = envelope.seq;
    let mut data = serde_json::to_value(&envelope).unwrap_or_default();
    scrub.event(&mut data);
    let kind = data
        .get("event")
        .and_then(|k| k.as_str())
        .unwrap_or("event")
        .to_string();
    Event::default()
        .id(seq.to_string())
        .event(kind)
        .data(data.to_string())
}
