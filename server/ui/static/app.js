// Shared helpers of the UI's script modules. Every call goes to the JSON API with the session
// cookie (sent by the browser) and the page's CSRF token (from its meta tag).

/** The page's CSRF token. */
export function csrfToken() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.getAttribute('content') : '';
}

/** A problem document's words, for showing to the user. */
export function problemText(body, status) {
  if (body && typeof body === 'object') {
    const parts = [body.detail || body.title || `HTTP ${status}`];
    if (body.hint) parts.push(body.hint);
    return parts.join(' — ');
  }
  return `HTTP ${status}`;
}

/**
 * Call the API: `api('POST', '/api/v1/tasks/ID/run', {..})` → parsed JSON.
 * Throws an Error whose message is the problem's detail and hint, with `.status` and `.body`.
 */
export async function api(method, path, body) {
  const headers = { 'Accept': 'application/json' };
  const init = { method, headers, credentials: 'same-origin' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken();
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
  if (!res.ok) {
    const err = new Error(problemText(parsed, res.status));
    err.status = res.status;
    err.body = parsed;
    throw err;
  }
  return parsed;
}

/** Create an element: `el('li', {class: 'x', text: 'hi'}, child...)`. Text is never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** Announce a message to screen readers and show it in the page's status region. */
export function announce(text, kind = 'notice') {
  let region = document.getElementById('status');
  if (!region) {
    region = el('div', { id: 'status', role: 'status', 'aria-live': 'polite' });
    document.querySelector('main').prepend(region);
  }
  region.className = kind;
  region.textContent = text;
}
