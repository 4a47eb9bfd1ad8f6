//! Run events: what happens in a run, numbered, kept, and replayable from any point.
//!
//! Every event of a run gets the run id and the next sequence number (from 1). The run's
//! [`EventLog`] keeps the recent ones in memory and hands every one to the store, which keeps
//! all of them sealed; a subscriber that starts late ([`EventLog::subscribe`] with the last
//! number it saw, what SSE's `Last-Event-ID` carries) gets exactly the tail: older events
//! from the store, recent ones from memory, then live ones. Memory per run is bounded however
//! long the run: an event leaves memory only once the store has it. The run id is on the
//! envelope, not repeated in the event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::model::Tier;
use crate::record::{RunState, RunStore, StepState};
use crate::storage::{Batch, Table};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    RunStarted {
        workflow: String,
        steps: usize,
        backend: String,
        isolated: bool,
    },
    /// A parked run continues (in this process or another).
    RunResumed {
        by: String,
    },
    /// A failed run continues from its failed step: `steps` run again, the steps that
    /// succeeded stay done.
    RunRetried {
        by: String,
        steps: Vec<String>,
    },
    StepStarted {
        step: String,
        attempt: u32,
        tier: Tier,
        summary: String,
    },
    StepRetrying {
        step: String,
        attempt: u32,
        delay_ms: u64,
        reason: String,
    },
    /// A piece of a step's output (`stream`: `stdout`, `stderr` or `output`), in order.
    Output {
        step: String,
        stream: String,
        text: String,
    },
    /// A connection attempt a step made through the egress proxy.
    Egress {
        step: String,
        host: String,
        port: u16,
        allowed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    StepFinished {
        step: String,
        state: StepState,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The injection detector flagged what a step brought back: a step that takes a value
    /// from it waits for approval. `pattern` is the strongest finding, `stream` where it is.
    UntrustedContentFlagged {
        step: String,
        stream: String,
        layer: String,
        pattern: String,
        score: f32,
    },
    ApprovalNeeded {
        step: String,
        tier: Tier,
        rule: String,
        reason: String,
        summary: String,
    },
    ApprovalDecided {
        step: String,
        approved: bool,
        by: String,
    },
    /// The run stopped at approval gates and was saved; `approve`/`deny` then `resume` it.
    RunParked {
        steps: Vec<String>,
    },
    Warning {
        message: String,
    },
    RunFinished {
        state: RunState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    RevertStarted {
        steps: Vec<String>,
        dry_run: bool,
    },
    RevertStep {
        step: String,
        action: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    RevertFinished {
        state: String,
    },
}

impl RunEvent {
    /// The last event of a run's current stretch: a subscriber that only follows stops here.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RunEvent::RunFinished { .. } | RunEvent::RevertFinished { .. }
        )
    }
}

/// An event as subscribers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub run_id: String,
    pub seq: u64,
    /// RFC 3339, UTC.
    pub at: String,
    #[serde(flatten)]
    pub event: RunEvent,
}

/// Receives events as they happen. Must be cheap: it is called from the scheduler loop.
pub type EventSink = Arc<dyn Fn(&RunEvent) + Send + Sync>;

pub fn discard() -> EventSink {
    Arc::new(|_| {})
}

/// Most recent events a log keeps in memory once the store has them.
const RECENT: usize = 512;
/// Events handed to the store in one batch at most.
const FLUSH_EVERY: usize = 64;
/// Output events carry at most this many bytes of text each.
pub const OUTPUT_CHUNK: usize = 16 * 1024;

/// The store key of an event: sortable by sequence number within a run.
pub fn event_key(run_id: &str, seq: u64) -> String {
    format!("{run_id}/{seq:012}")
}

/// One run's events: numbering, memory, persistence and fan-out.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    run_id: String,
    store: Option<Arc<RunStore>>,
    state: Mutex<LogState>,
    live: broadcast::Sender<EventEnvelope>,
}

#[derive(Default)]
struct LogState {
    next_seq: u64,
    /// Recent events, oldest first; everything the store may not have yet is here.
    recent: VecDeque<EventEnvelope>,
    /// Events not yet handed to the store.
    unsent: Vec<EventEnvelope>,
    /// Every event up to this sequence number is durable in the store.
    durable: u64,
    closed: bool,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("run_id", &self.inner.run_id)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// A log for `run_id` whose events continue after `last_seq` (0 for a new run), kept in
    /// `store` (or only in memory without one).
    pub fn new(run_id: impl Into<String>, last_seq: u64, store: Option<Arc<RunStore>>) -> Self {
        let (live, _) = broadcast::channel(1024);
        EventLog {
            inner: Arc::new(LogInner {
                run_id: run_id.into(),
                store,
                state: Mutex::new(LogState {
                    next_seq: last_seq + 1,
                    durable: last_seq,
                    ..LogState::default()
                }),
                live,
            }),
        }
    }

    /// The sink the scheduler calls.
    pub fn sink(&self) -> EventSink {
        let me = self.clone();
        Arc::new(move |ev: &RunEvent| me.emit(ev.clone()))
    }

    /// Number, keep and publish one event.
    pub fn emit(&self, event: RunEvent) {
        let terminal = event.is_terminal();
        let step_done = matches!(event, RunEvent::StepFinished { .. });
        let Ok(mut st) = self.inner.state.lock() else {
            return;
        };
        let env = EventEnvelope {
            run_id: self.inner.run_id.clone(),
            seq: st.next_seq,
            at: crate::record::now_rfc3339(),
            event,
        };
        st.next_seq += 1;
        st.recent.push_back(env.clone());
        st.unsent.push(env.clone());
        // Sent under the lock, so a subscriber that registered under it sees no gap.
        let _ = self.inner.live.send(env);
        // A step's output events come just before its `step_finished`: stored with it, a
        // reader in another process (`logs --follow`) sees each step's output when it ends,
        // not only at the next record save, which a long step after it may hold off.
        if terminal || step_done || st.unsent.len() >= FLUSH_EVERY {
            self.flush_locked(&mut st);
        }
        self.trim(&mut st);
    }

    /// Hand every unsent event to the store now (the scheduler calls this with each save).
    pub fn flush(&self) {
        if let Ok(mut st) = self.inner.state.lock() {
            self.flush_locked(&mut st);
        }
    }

    fn flush_locked(&self, st: &mut LogState) {
        if st.unsent.is_empty() {
            return;
        }
        let events = std::mem::take(&mut st.unsent);
        let Some(store) = &self.inner.store else {
            return;
        };
        let mut batch = Batch {
            lease: store.lease_of(&self.inner.run_id),
            ..Batch::default()
        };
        let upto = events.last().map(|e| e.seq).unwrap_or_default();
        for e in &events {
            if batch
                .put_json(Table::Events, event_key(&e.run_id, e.seq), e)
                .is_err()
            {
                return;
            }
        }
        let me = Arc::downgrade(&self.inner);
        store.submit(
            batch,
            Some(Box::new(move |r| {
                if r.is_ok()
                    && let Some(inner) = me.upgrade()
                    && let Ok(mut st) = inner.state.lock()
                {
                    st.durable = st.durable.max(upto);
                }
            })),
        );
    }

    /// Drop from memory what the store has, keeping the most recent ones.
    fn trim(&self, st: &mut LogState) {
        let keep_all = self.inner.store.is_none();
        while st.recent.len() > RECENT
            && !keep_all
            && st.recent.front().is_some_and(|e| e.seq <= st.durable)
        {
            st.recent.pop_front();
        }
    }

    /// No more events: subscribers that caught up end.
    pub fn close(&self) {
        if let Ok(mut st) = self.inner.state.lock() {
            self.flush_locked(&mut st);
            st.closed = true;
        }
    }

    /// Every event after `after` (0: from the start), then the live ones until the run's
    /// current stretch ends.
    pub fn subscribe(&self, after: u64) -> EventStream {
        let Ok(st) = self.inner.state.lock() else {
            return EventStream::empty();
        };
        let live = self.inner.live.subscribe();
        // Nothing more comes live once the stretch's final event is out: `close` sets no
        // signal a waiting subscriber would wake on, so one that starts after that event (a
        // follower catching up between the final event and `close`) must not wait at all.
        let over = st.closed
            || st
                .recent
                .back()
                .is_some_and(|e| e.event.is_terminal() && e.seq <= after);
        let first_in_memory = st.recent.front().map(|e| e.seq).unwrap_or(st.next_seq);
        let memory: VecDeque<EventEnvelope> = st
            .recent
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        EventStream {
            run_id: self.inner.run_id.clone(),
            store: self.inner.store.clone(),
            from_store: (after + 1)..first_in_memory,
            memory,
            live: (!over).then_some(live),
            next: after + 1,
            log: Some(self.clone()),
            ended: false,
        }
    }
}

/// Events of one run from a point on: stored, then recent, then live.
pub struct EventStream {
    run_id: String,
    store: Option<Arc<RunStore>>,
    from_store: std::ops::Range<u64>,
    memory: VecDeque<EventEnvelope>,
    live: Option<broadcast::Receiver<EventEnvelope>>,
    next: u64,
    log: Option<EventLog>,
    ended: bool,
}

impl EventStream {
    fn empty() -> Self {
        EventStream {
            run_id: String::new(),
            store: None,
            from_store: 0..0,
            memory: VecDeque::new(),
            live: None,
            next: 1,
            log: None,
            ended: true,
        }
    }

    /// A stream over a run's stored events only (a run not live in this process).
    pub fn stored(store: Arc<RunStore>, run_id: &str, after: u64) -> Self {
        EventStream {
            run_id: run_id.to_string(),
            store: Some(store),
            from_store: (after + 1)..u64::MAX,
            memory: VecDeque::new(),
            live: None,
            next: after + 1,
            log: None,
            ended: false,
        }
    }

    /// The next event, or `None` at the end.
    pub async fn next(&mut self) -> Option<EventEnvelope> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(e) = self.next_backlog() {
                return Some(self.deliver(e));
            }
            let live = self.live.as_mut()?;
            match live.recv().await {
                Ok(e) if e.seq < self.next => continue,
                Ok(e) if e.seq == self.next => return Some(self.deliver(e)),
                // A gap (or lag): read the missing part back from the log.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let log = self.log.clone()?;
                    let again = log.subscribe(self.next - 1);
                    self.from_store = again.from_store;
                    self.memory = again.memory;
                    self.live = again.live;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.live = None;
                }
            }
        }
    }

    fn deliver(&mut self, e: EventEnvelope) -> EventEnvelope {
        self.next = e.seq + 1;
        if e.event.is_terminal() && self.log.is_some() {
            self.ended = true;
        }
        e
    }

    fn next_backlog(&mut self) -> Option<EventEnvelope> {
        while self.from_store.start < self.from_store.end {
            let seq = self.from_store.start;
            self.from_store.start += 1;
            if seq < self.next {
                continue;
            }
            let store = self.store.as_ref()?;
            match store.get_json::<EventEnvelope>(Table::Events, &event_key(&self.run_id, seq)) {
                Ok(Some(e)) => return Some(e),
                // The end of what is stored (a stored-only stream), or an event the store
                // never got: continue from memory.
                _ => {
                    self.from_store = 0..0;
                }
            }
        }
        while let Some(e) = self.memory.pop_front() {
            if e.seq >= self.next {
                return Some(e);
            }
        }
        None
    }
}

/// Output text cut into events of at most [`OUTPUT_CHUNK`] bytes, on character boundaries.
pub fn output_events(step: &str, stream: &str, text: &str) -> Vec<RunEvent> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(OUTPUT_CHUNK);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (chunk, tail) = rest.split_at(cut);
        out.push(RunEvent::Output {
            step: step.to_string(),
            stream: stream.to_string(),
            text: chunk.to_string(),
        });
        rest = tail;
    }
    out
}
