// The new-task page and the plan preview: "planning…" while the planner works, checking an
// edited workflow in place, and jumping to the line of an error. Without this module every
// form still works as a plain POST.
import { api, el, announce } from './app.js';

const TIER_WORDS = {
  read_only: 'read-only',
  low_write: 'writes',
  destructive: 'destructive',
  network_egress: 'network',
};

/** Disable a form's submit button once it is sent, with words saying what is going on. */
function busyOnSubmit(form, button, words, progress) {
  if (!form || !button) return;
  form.addEventListener('submit', () => {
    // Disabled after this tick, so the browser still sends the button's own value.
    setTimeout(() => {
      button.disabled = true;
      button.textContent = words;
    }, 0);
    if (progress) progress.textContent = 'Planning… this can take a few seconds.';
  });
}

/** Put the caret at `line`:`column` (1-based) of the textarea and bring it into view. */
function gotoLine(textarea, line, column) {
  const lines = textarea.value.split('\n');
  const l = Math.max(1, Math.min(line || 1, lines.length));
  let offset = 0;
  for (let i = 0; i < l - 1; i++) offset += lines[i].length + 1;
  offset += Math.max(0, Math.min((column || 1) - 1, lines[l - 1].length));
  textarea.focus();
  textarea.setSelectionRange(offset, offset);
  // Scroll the line into view: the textarea's line height times the lines above.
  const lh = parseFloat(getComputedStyle(textarea).lineHeight) || 20;
  textarea.scrollTop = Math.max(0, (l - 3) * lh);
}

function errorItem(e) {
  const where = el('a', {
    href: '#workflow-yaml', class: 'goto-line',
    'data-line': String(e.line), 'data-column': String(e.column),
  }, el('span', { class: 'mono', text: `${e.line}:${e.column}` }));
  const li = el('li', {}, where, ` ${e.message}`);
  if (e.path) li.append(' ', el('span', { class: 'mono muted', text: e.path }));
  if (e.hint) li.append(' ', el('span', { class: 'hint', text: `— ${e.hint}` }));
  return li;
}

function showVerdict(box, list, verdict) {
  for (const old of box.querySelectorAll('#validation-ok, #validation-steps, .alert')) old.remove();
  list.replaceChildren();
  if (verdict.valid) {
    const ok = el('p', { class: 'ok-note', id: 'validation-ok', text: `Valid: ${verdict.steps.length} step(s).` });
    const steps = el('ul', { id: 'validation-steps', class: 'plain-list' });
    for (const s of verdict.steps) {
      const word = TIER_WORDS[s.tier] || s.tier;
      const badge = el('span', { class: `badge tier-${s.tier}`, text: (s.tier === 'destructive' ? '⚠ ' : '') + word });
      const li = el('li', {}, el('span', { class: 'mono', text: s.id }), ' ', badge);
      if (s.needs_approval) li.append(' · stops for approval');
      steps.append(li);
    }
    box.prepend(ok, steps);
    announce('The workflow is valid.');
  } else {
    for (const e of verdict.errors) list.append(errorItem(e));
    announce(`The workflow has ${verdict.errors.length} error(s).`, 'alert');
  }
}

function initEdit() {
  const textarea = document.getElementById('workflow-yaml');
  const check = document.getElementById('validate');
  const list = document.getElementById('validation-errors');
  const box = document.getElementById('validation');
  if (!textarea || !check || !list || !box) return;
  check.addEventListener('click', async (ev) => {
    ev.preventDefault();
    check.disabled = true;
    try {
      const verdict = await api('POST', '/api/v1/workflows/validate', { workflow: textarea.value });
      showVerdict(box, list, verdict);
    } catch (err) {
      announce(`Could not check the workflow: ${err.message}`, 'alert');
    } finally {
      check.disabled = false;
    }
  });
  list.addEventListener('click', (ev) => {
    const a = ev.target.closest('.goto-line');
    if (!a) return;
    ev.preventDefault();
    gotoLine(textarea, Number(a.dataset.line), Number(a.dataset.column));
  });
}

busyOnSubmit(
  document.getElementById('plan-form'),
  document.getElementById('plan-submit'),
  'Planning…',
  document.getElementById('plan-progress'),
);
const approve = document.getElementById('approve-plan');
busyOnSubmit(approve && approve.form, approve, 'Starting…', null);
initEdit();
