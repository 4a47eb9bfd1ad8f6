// The task page, live: follows the run's event stream and updates the drawing, the states,
// the logs and the approval cards in place. The page is complete without this script; it
// only saves reloading.
//
// The server rendered everything up to event number `data-after` on #task; the stream starts
// right after it (`?after=`), and on a reconnect EventSource sends `Last-Event-ID`, so the
// server resumes after the last event this page applied. Event ids are also checked here:
// an event at or below the last applied one is ignored, so no log line is shown twice.

import { api, el, announce } from './app.js';

const root = document.getElementById('task');

/** Words for a state: `waiting_approval` → `waiting approval`. */
const words = (s) => String(s || '').replace(/_/g, ' ');

/** Replace an element's `state-*` class with the one of `state`. */
function setStateClass(node, state) {
  for (const c of [...node.classList]) if (c.startsWith('state-')) node.classList.remove(c);
  node.classList.add(`state-${state}`);
}

function setTaskState(state) {
  const badge = document.getElementById('task-state');
  if (!badge) return;
  setStateClass(badge, state);
  badge.dataset.state = state;
  badge.textContent = words(state);
  root.dataset.state = state;
  setActions(state);
}

function setStepState(step, state) {
  const node = document.querySelector(`#dag .dag-node[data-step="${CSS.escape(step)}"]`);
  if (node) {
    setStateClass(node, state);
    node.dataset.state = state;
    const label = node.querySelector('.dag-state');
    if (label) label.textContent = words(state);
  }
  const cell = document.querySelector(`#steps tr[data-step="${CSS.escape(step)}"] .state`);
  if (cell) {
    setStateClass(cell, state);
    cell.textContent = words(state);
  }
}

/** Fill in a step row's cells from its events (the server shows the same on a reload). */
function setStepCells(step, cells) {
  const row = document.querySelector(`#steps tr[data-step="${CSS.escape(step)}"]`);
  if (!row) return;
  for (const [cls, value] of Object.entries(cells)) {
    const cell = row.querySelector(`.${cls}`);
    if (cell && value !== undefined && value !== null) cell.textContent = String(value);
  }
}

/** `850 ms`, `1.2 s`, `3 min 4 s`, as the server writes durations. */
function duration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.floor((ms % 60000) / 1000)} s`;
}

function appendLog(step, text) {
  let section = document.querySelector(`#logs section.step-log[data-step="${CSS.escape(step)}"]`);
  if (!section) {
    section = el('section', { class: 'step-log', 'data-step': step, 'aria-label': `Log of ${step}` },
      el('h3', { class: 'mono', text: step }), el('pre', { tabindex: '0' }));
    document.getElementById('logs').append(section);
  }
  // A finished step's log came whole with the page (or from earlier events): its output
  // events, if the stream replays them, are already shown.
  if (section.dataset.complete) return;
  section.querySelector('pre').append(document.createTextNode(text));
}

function completeLog(step) {
  const section = document.querySelector(`#logs section.step-log[data-step="${CSS.escape(step)}"]`);
  if (section) section.dataset.complete = '1';
}

/** Show the cards of the gates the run waits at, built like the server's `_approval.html`. */
async function showApprovals() {
  const section = document.getElementById('approvals');
  if (!section) return;
  let reply;
  try {
    reply = await api('GET', `/api/v1/tasks/${root.dataset.task}/approvals`);
  } catch (e) {
    announce(`Could not load the approval gates: ${e.message}`, 'alert');
    return;
  }
  const list = section.querySelector('.approval-list');
  const csrf = document.querySelector('meta[name="csrf-token"]').getAttribute('content');
  for (const g of reply.gates || []) {
    if (list.querySelector(`.approval[data-step="${CSS.escape(g.step)}"]`)) continue;
    const base = `/ui/tasks/${root.dataset.task}/steps/${encodeURIComponent(g.step)}`;
    const hidden = (name, value) => el('input', { type: 'hidden', name, value });
    const reasonId = `deny-reason-${g.step}`;
    list.append(el('article', { class: 'approval card', 'data-step': g.step, 'data-hash': g.request_hash },
      el('h3', {}, 'Step ', el('span', { class: 'mono', text: g.step })),
      el('pre', { class: 'command', text: g.summary }),
      el('dl', { class: 'facts' },
        el('dt', { text: 'Tier' }), el('dd', {}, el('span', { class: `tier badge tier-${g.tier}`, text: words(g.tier) })),
        el('dt', { text: 'Rule' }), el('dd', { class: 'rule mono', text: g.rule }),
        el('dt', { text: 'Why' }), el('dd', { class: 'reason', text: g.reason }),
        (g.network && g.network.length) ? el('dt', { text: 'May reach' }) : null,
        (g.network && g.network.length) ? el('dd', { class: 'network mono', text: g.network.join(', ') }) : null),
      el('div', { class: 'row' },
        el('form', { method: 'post', action: `${base}/approve` },
          hidden('csrf', csrf), hidden('request_hash', g.request_hash),
          el('button', { type: 'submit', class: 'approve primary', text: 'Approve' })),
        el('form', { method: 'post', action: `${base}/deny`, class: 'row' },
          hidden('csrf', csrf), hidden('request_hash', g.request_hash),
          el('label', { for: reasonId, text: 'Reason (optional)' }),
          el('input', { type: 'text', id: reasonId, name: 'reason', maxlength: '500' }),
          el('button', { type: 'submit', class: 'deny danger', text: 'Deny' })))));
  }
  if (list.children.length) {
    section.hidden = false;
    announce('The run waits for approval.');
  }
}

function hideApprovals() {
  const section = document.getElementById('approvals');
  if (!section) return;
  section.hidden = true;
  section.querySelector('.approval-list').replaceChildren();
}

const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);
// A failed run goes on from its failed step; any stopped run can start over as a new task.
const RETRYABLE = new Set(['failed']);
const RERUNNABLE = new Set(['failed', 'cancelled', 'interrupted']);

/** The header's buttons for a run in `state`, as the server renders them. */
function setActions(state) {
  const show = (id, on) => { const e = document.getElementById(id); if (e) e.hidden = !on; };
  show('cancel-form', !FINAL.has(state));
  show('retry-form', RETRYABLE.has(state));
  show('rerun-form', RERUNNABLE.has(state));
  show('revert-run', FINAL.has(state) || state === 'awaiting_approval');
}

/** The run's message is about the state the page was drawn in (parked, say); once the run
 * moves on it no longer holds. */
function clearRunMessage() {
  const message = document.querySelector('.run-message');
  if (message) message.hidden = true;
}

/** The message the run ended (or parked) with, in place of the one the page was drawn with. */
function setRunMessage(text) {
  let message = document.querySelector('.run-message');
  if (!text) { clearRunMessage(); return; }
  if (!message) {
    message = el('p', { class: 'run-message' });
    document.getElementById('task-state')?.closest('p')?.after(message);
  }
  message.textContent = text;
  message.hidden = false;
}

function setLive(text, kind) {
  const live = document.getElementById('live');
  if (!live) return;
  live.textContent = text;
  live.dataset.live = kind;
}

function follow() {
  let last = Number(root.dataset.after || '0');
  const source = new EventSource(`${root.dataset.stream}?after=${last}`);
  source.addEventListener('open', () => setLive('live', 'on'));
  source.addEventListener('error', () => {
    // EventSource reconnects by itself with Last-Event-ID; a closed one has given up.
    setLive(source.readyState === EventSource.CLOSED ? 'disconnected: reload the page' : 'reconnecting…', 'off');
  });
  const on = (kind, apply) => source.addEventListener(kind, (msg) => {
    const seq = Number(msg.lastEventId);
    if (Number.isFinite(seq) && seq > 0) {
      if (seq <= last) return;
      last = seq;
    }
    let data;
    try { data = JSON.parse(msg.data); } catch { return; }
    apply(data);
  });
  on('run_started', () => setTaskState('running'));
  on('run_resumed', () => { setTaskState('running'); hideApprovals(); clearRunMessage(); });
  on('run_retried', (d) => {
    setTaskState('running');
    clearRunMessage();
    (d.steps || []).forEach((s) => setStepState(s, 'pending'));
  });
  on('step_started', (d) => { setStepState(d.step, 'running'); setStepCells(d.step, { attempts: d.attempt }); });
  on('step_finished', (d) => {
    setStepState(d.step, d.state);
    // A step that finished without a reason clears what an earlier state said (a gate's
    // "needs approval", say).
    setStepCells(d.step, { duration: duration(d.duration_ms || 0), exit: d.exit_code, reason: d.reason || '' });
    completeLog(d.step);
  });
  // The `output` stream repeats stdout; the log is stdout and stderr, as the server shows it.
  on('output', (d) => { if (d.stream !== 'output') appendLog(d.step, d.text || ''); });
  on('approval_needed', (d) => setStepState(d.step, 'waiting_approval'));
  on('run_parked', () => { setTaskState('awaiting_approval'); showApprovals(); });
  on('run_finished', (d) => {
    setTaskState(d.state);
    setRunMessage(d.message);
    if (d.state === 'awaiting_approval') { showApprovals(); return; }
    hideApprovals();
    // The run is over: the stream ends, and EventSource must not reopen it.
    source.close();
    setLive('finished', 'off');
    // Enforcement, egress and the ledger are written when the run ends: offer the full page
    // rather than reloading under the reader.
    const live = document.getElementById('live');
    if (live && !document.getElementById('final-details')) {
      live.after(' ', el('a', { id: 'final-details', href: location.pathname, text: 'Show the final details' }));
    }
  });
  // The server says this page fell behind: reconnecting resumes after the last id it sent.
  source.addEventListener('resync', () => setLive('catching up…', 'off'));
}

if (root && root.dataset.stream && !FINAL.has(root.dataset.state) && 'EventSource' in window) {
  follow();
}
