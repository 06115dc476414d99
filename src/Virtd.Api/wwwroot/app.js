// virtd's dashboard: plain JavaScript modules, no build step, built on the public API alone (REST, the SSE event
// stream, the console WebSockets). Routes live in the URL's hash: #/, #/d/NAME, #/d/NAME/edit, #/new, #/host, #/events.
import { Terminal } from '/vendor/xterm/xterm.mjs';
import { FitAddon } from '/vendor/xterm/addon-fit.mjs';

const STATES = ['running', 'paused', 'shutting-down', 'shut-off', 'crashed'];
const EVENT_TYPES = ['domain.defined', 'domain.updated', 'domain.undefined', 'domain.lifecycle', 'job.queued', 'job.started',
  'job.finished', 'daemon.state', 'resync'];
const ROLES = { reader: 1, operator: 2, admin: 3 };

const S = {
  me: null,              // the session: { identity, role, method, expiresAt }
  domains: new Map(),    // name → domain (as GET /api/v1/domains lists it)
  rows: new Map(),       // name → <tr> of the list, while the list is shown
  listed: null,          // the promise of the current full listing
  pending: [],           // events that came while listing
  es: null, lastEventId: null, reconnectDelay: 500, reconnectTimer: 0,
  recent: [],            // the last events, newest first, for the events page
  listeners: new Set(),  // the current page's event handlers
  cleanup: [],           // what the current page must close when left
};

// ---------------------------------------------------------------- helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $('#main');
const can = role => S.me && ROLES[S.me.role] >= ROLES[role];
const fmtTime = t => t ? new Date(t).toLocaleString() : '—';
const fmtMiB = m => m >= 1024 && m % 1024 === 0 ? `${m / 1024} GiB` : `${m} MiB`;

class Problem extends Error {
  constructor(status, p) {
    super(p.detail || p.title);
    this.status = status;
    this.problem = p;
  }
}

/** One API call; a problem answer throws a Problem; 401 anywhere but sign-in means the session has ended. */
async function api(method, path, body, headers = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...headers } };
  if (method !== 'GET') init.headers['Content-Type'] = 'application/json'; // a cookie-authenticated change must say JSON
  if (body !== undefined) init.body = JSON.stringify(body);
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new Problem(0, { title: 'The daemon cannot be reached', detail: 'The request did not get an answer; the daemon may be restarting.' });
  }
  if (r.status === 401 && !(method === 'POST' && path === '/api/v1/session')) sessionEnded();
  if (!r.ok) {
    let p;
    try { p = await r.json(); } catch { p = { title: r.statusText || `HTTP ${r.status}`, detail: '' }; }
    throw new Problem(r.status, p);
  }
  const type = r.headers.get('Content-Type') || '';
  const data = r.status === 204 ? null : type.includes('json') ? await r.json() : await r.text();
  return { data, etag: r.headers.get('ETag'), status: r.status };
}

/** Shows a problem's title and detail (never raw JSON) in the page's alert region. */
function notify(title, detail = '', kind = 'error', keep = false) {
  const n = $('#notice');
  n.replaceChildren(h('strong', { text: title }), detail ? h('span', { text: detail }) : '',
    h('button', { type: 'button', class: 'link', onclick: () => { n.hidden = true; } }, 'Dismiss'));
  n.className = kind === 'info' ? 'notice info' : 'notice';
  n.hidden = false;
  S.noticeKeep = keep; // true: it tells what a navigation the page is about to make did
}

function showProblem(e) {
  if (e instanceof Problem) {
    if (e.status === 401 && S.me === null) return; // the sign-in page says it
    notify(e.problem.title || 'Error', e.problem.detail || '');
  } else {
    notify('Something went wrong in the page', String(e && e.message || e));
  }
}

function clearNotice() { $('#notice').hidden = true; }

// ---------------------------------------------------------------- session

async function boot() {
  $('#signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  try {
    S.me = (await api('GET', '/api/v1/session')).data;
  } catch (e) {
    S.me = null;
  }
  if (S.me) signedIn(); else route();
}

function signedIn() {
  $('#nav').hidden = false;
  $('#who').hidden = false;
  $('#identity').textContent = `${S.me.identity} (${S.me.role})`;
  for (const a of document.querySelectorAll('[data-role]')) a.hidden = !can(a.dataset.role);
  startEvents();
  relist();
  if (location.hash === '#/signin' || location.hash === '') location.hash = '#/';
  else route();
}

function sessionEnded() {
  if (!S.me) return;
  S.me = null;
  stopEvents();
  $('#nav').hidden = true;
  $('#who').hidden = true;
  notify('Your session has ended', 'It expired, was revoked, or you signed out elsewhere. Sign in again with a token.', 'info', true);
  location.hash = '#/signin';
  route();
}

async function signOut() {
  try { await api('DELETE', '/api/v1/session'); } catch (e) { /* signed out either way */ }
  S.me = null;
  stopEvents();
  $('#nav').hidden = true;
  $('#who').hidden = true;
  notify('Signed out', '', 'info', true);
  location.hash = '#/signin';
}

function renderSignIn() {
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, 'aria-describedby': 'token-hint' });
  const error = h('p', { class: 'field-error', id: 'token-error', role: 'alert' });
  const form = h('form', {
    class: 'signin', onsubmit: async ev => {
      ev.preventDefault();
      error.textContent = '';
      try {
        await api('POST', '/api/v1/session', { token: input.value.trim() });
        S.me = (await api('GET', '/api/v1/session')).data;
        clearNotice();
        signedIn();
      } catch (e) {
        error.textContent = e instanceof Problem ? `${e.problem.title}: ${e.problem.detail || ''}` : String(e);
        input.setAttribute('aria-invalid', 'true');
        input.focus();
      }
    },
  },
  h('h1', { text: 'Sign in to virtd' }),
  h('div', { class: 'field' }, h('label', { for: 'token', text: 'API token' }), input,
    h('span', { class: 'hint', id: 'token-hint', text: 'A token\u2019s secret (POST /api/v1/tokens makes one; the first start writes initial-admin-token). It sets a session cookie; the token is not stored in the page.' })),
  error,
  h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Sign in')));
  main().replaceChildren(form);
  input.focus();
}

// ---------------------------------------------------------------- live events

function setLive(on, text) {
  const l = $('#live');
  l.textContent = text || (on ? 'live' : 'reconnecting…');
  l.className = on ? 'live on' : 'live off';
}

function startEvents() {
  stopEvents();
  const url = '/api/v1/events' + (S.lastEventId ? `?lastEventId=${encodeURIComponent(S.lastEventId)}` : '');
  const es = new EventSource(url);
  S.es = es;
  es.onopen = () => { S.reconnectDelay = 500; setLive(true); };
  es.onerror = () => {
    setLive(false);
    // A dropped connection is retried by the browser with Last-Event-ID; an HTTP error (401, 503) closes it for good.
    if (es.readyState === EventSource.CLOSED) scheduleReconnect();
  };
  for (const type of EVENT_TYPES) es.addEventListener(type, ev => onEvent(type, ev));
}

function stopEvents() {
  clearTimeout(S.reconnectTimer);
  if (S.es) S.es.close();
  S.es = null;
}

function scheduleReconnect() {
  stopEvents();
  S.reconnectTimer = setTimeout(async () => {
    try {
      await api('GET', '/api/v1/session'); // 401: the session is over (api says so)
      startEvents();
      relist();
    } catch (e) {
      if (S.me) scheduleReconnect();
    }
  }, S.reconnectDelay);
  S.reconnectDelay = Math.min(S.reconnectDelay * 2, 5000);
}

function onEvent(type, ev) {
  if (ev.lastEventId) S.lastEventId = ev.lastEventId;
  let data = {};
  try { data = JSON.parse(ev.data); } catch { /* an event without JSON */ }
  S.recent.unshift({ id: ev.lastEventId, type, data, at: new Date() });
  if (S.recent.length > 500) S.recent.length = 500;
  if (type === 'resync') { relist(); return; }
  if (type === 'daemon.state') setLive(true, `live · daemon ${data.state}`);
  if (S.listed) S.pending.push([type, data]); else apply(type, data);
  for (const l of S.listeners) l(type, data);
}

/** The whole list again (at sign-in, on resync, after a reconnect): the truth, then the events that came meanwhile. */
async function relist() {
  const listing = (async () => {
    const all = new Map();
    let next = null;
    do {
      const page = (await api('GET', '/api/v1/domains?limit=10000' + (next ? `&after=${encodeURIComponent(next)}` : ''))).data;
      for (const d of page.items) all.set(d.name, d);
      next = page.next;
    } while (next);
    return all;
  })();
  S.listed = listing;
  try {
    const all = await listing;
    if (S.listed !== listing) return;
    S.domains = all;
    S.listed = null;
    const pending = S.pending;
    S.pending = [];
    for (const [t, d] of pending) apply(t, d, false);
    if (S.rows.size || $('#domains')) renderRows();
  } catch (e) {
    if (S.listed === listing) S.listed = null;
    showProblem(e);
  }
}

/** An event applied to the list's model and its row. */
function apply(type, data, paint = true) {
  const name = data.domain;
  if (!name) return;
  const d = S.domains.get(name);
  switch (type) {
    case 'domain.lifecycle':
      if (d && data.state) {
        d.state = data.state;
        d.reason = data.reason || d.reason;
        d.stateChangedAt = new Date().toISOString();
        if (data.state === 'shut-off' || data.state === 'crashed') d.pid = null;
      }
      break;
    case 'job.started':
      if (d) d.currentJob = { id: data.jobId, kind: data.kind, state: 'running' };
      break;
    case 'job.finished':
      if (d && d.currentJob && d.currentJob.id === data.jobId) d.currentJob = null;
      break;
    case 'domain.defined':
    case 'domain.updated':
      refreshDomain(name);
      return;
    case 'domain.undefined':
      S.domains.delete(name);
      if (paint) removeRow(name);
      return;
    default:
      return;
  }
  if (d && paint) paintRow(d);
}

async function refreshDomain(name) {
  try {
    const d = (await api('GET', `/api/v1/domains/${encodeURIComponent(name)}`)).data;
    S.domains.set(d.name, d);
    paintRow(d);
  } catch (e) {
    if (e instanceof Problem && e.status === 404) { S.domains.delete(name); removeRow(name); }
  }
}

// ---------------------------------------------------------------- domain list

function renderList() {
  const name = h('input', { id: 'f-name', type: 'search', placeholder: 'part of a name', oninput: filterRows });
  const state = h('select', { id: 'f-state', onchange: filterRows }, h('option', { value: '' }, 'any state'),
    STATES.map(s => h('option', { value: s }, s)));
  const table = h('table', { id: 'domains' },
    h('caption', { class: 'muted', id: 'count' }),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'State'), h('th', { scope: 'col', class: 'num' }, 'vCPUs'),
      h('th', { scope: 'col', class: 'num' }, 'Memory'), h('th', { scope: 'col', class: 'hide-narrow' }, 'Driver'),
      h('th', { scope: 'col' }, 'Job now'))),
    h('tbody', { id: 'rows' }));
  main().replaceChildren(
    h('h1', { text: 'Domains' }),
    h('div', { class: 'filters', role: 'search' },
      h('div', {}, h('label', { for: 'f-name' }, 'Name'), name),
      h('div', {}, h('label', { for: 'f-state' }, 'State'), state),
      can('admin') ? h('div', {}, h('a', { class: 'button', href: '#/new' }, 'New domain')) : null),
    h('div', { class: 'scroll' }, table));
  renderRows();
}

function renderRows() {
  const tbody = $('#rows');
  if (!tbody) return;
  S.rows.clear();
  const names = [...S.domains.keys()].sort();
  const frag = document.createDocumentFragment();
  for (const n of names) {
    const tr = rowFor(S.domains.get(n));
    S.rows.set(n, tr);
    frag.append(tr);
  }
  tbody.replaceChildren(frag);
  filterRows();
  document.documentElement.dataset.listed = String(names.length); // for tests and the benchmark: the list is painted
}

function rowFor(d) {
  const tr = h('tr', { dataset: { name: d.name } },
    h('td', {}, h('a', { href: `#/d/${encodeURIComponent(d.name)}` }, d.name)),
    h('td', { class: 'st' }), h('td', { class: 'num cpu' }), h('td', { class: 'num mem' }), h('td', { class: 'hide-narrow drv' }), h('td', { class: 'job' }));
  fillRow(tr, d);
  return tr;
}

function fillRow(tr, d) {
  const def = d.definition || {};
  tr.dataset.state = d.state;
  tr.cells[1].replaceChildren(h('span', { class: `state ${d.state}` }, d.state), h('span', { class: 'reason' }, d.reason || ''));
  tr.cells[2].textContent = def.vcpus ?? '';
  tr.cells[3].textContent = def.memoryMiB ? fmtMiB(def.memoryMiB) : '';
  tr.cells[4].textContent = d.driver || '';
  tr.cells[5].textContent = d.currentJob ? `${d.currentJob.kind} (${d.currentJob.state})` : '';
}

function paintRow(d) {
  const tbody = $('#rows');
  if (!tbody) return;
  let tr = S.rows.get(d.name);
  if (tr) { fillRow(tr, d); filterOne(tr, d); return; }
  tr = rowFor(d);
  S.rows.set(d.name, tr);
  const after = [...S.rows.keys()].filter(n => n > d.name).sort()[0];
  tbody.insertBefore(tr, after ? S.rows.get(after) : null);
  filterOne(tr, d);
  updateCount();
}

function removeRow(name) {
  const tr = S.rows.get(name);
  if (tr) { tr.remove(); S.rows.delete(name); updateCount(); }
}

function filterOne(tr, d) {
  const text = ($('#f-name')?.value || '').trim().toLowerCase();
  const state = $('#f-state')?.value || '';
  tr.hidden = (text && !d.name.toLowerCase().includes(text)) || (state && d.state !== state);
}

function filterRows() {
  for (const [n, tr] of S.rows) filterOne(tr, S.domains.get(n));
  updateCount();
}

function updateCount() {
  const c = $('#count');
  if (!c) return;
  let shown = 0;
  for (const tr of S.rows.values()) if (!tr.hidden) shown++;
  c.textContent = shown === S.rows.size ? `${S.rows.size} domains` : `${shown} of ${S.rows.size} domains shown`;
}

// ---------------------------------------------------------------- a domain

const ACTIONS = [
  { name: 'start', label: 'Start', when: ['shut-off', 'crashed'] },
  { name: 'shutdown', label: 'Shut down', when: ['running'], confirm: 'Press the ACPI power button and wait for the guest to power off?',
    options: [{ key: 'timeout', label: 'Timeout (seconds)', type: 'number', value: 60, min: 1, max: 3600 },
      { key: 'force', label: 'Destroy it if it does not power off in time', type: 'checkbox' }] },
  { name: 'reboot', label: 'Reboot', when: ['running'], confirm: 'Reboot the guest (ACPI)?' },
  { name: 'reset', label: 'Reset', when: ['running', 'paused'], confirm: 'Hard-reset the VM? Unsaved guest data is lost.', danger: true },
  { name: 'suspend', label: 'Suspend', when: ['running'] },
  { name: 'resume', label: 'Resume', when: ['paused'] },
  { name: 'destroy', label: 'Destroy', when: ['running', 'paused', 'shutting-down', 'crashed'], danger: true,
    confirm: 'Destroy the VM: SIGTERM, then SIGKILL after the timeout (unless graceful)? Unsaved guest data is lost.',
    options: [{ key: 'graceful', label: 'Graceful: never SIGKILL (fail instead)', type: 'checkbox' },
      { key: 'timeout', label: 'Timeout (seconds)', type: 'number', value: 10, min: 1, max: 300 }] },
];

/** A confirmation dialog with the action's options; resolves to the body to send, or null when cancelled. */
function confirmDialog(title, text, options = [], danger = false, okLabel = 'Confirm') {
  return new Promise(resolve => {
    const inputs = options.map(o => {
      const id = `opt-${o.key}`;
      const input = o.type === 'checkbox'
        ? h('input', { id, type: 'checkbox' })
        : h('input', { id, type: 'number', value: o.value, min: o.min, max: o.max, required: true });
      return { o, input, el: o.type === 'checkbox' ? h('label', { class: 'check', for: id }, input, o.label) : h('div', { class: 'field' }, h('label', { for: id }, o.label), input) };
    });
    const dialog = h('dialog', { 'aria-labelledby': 'dlg-title' });
    const form = h('form', { method: 'dialog' },
      h('h2', { id: 'dlg-title', text: title }), h('p', { text }), inputs.map(i => i.el),
      h('div', { class: 'actions' },
        h('button', { type: 'submit', value: 'ok', class: danger ? 'danger primary' : 'primary' }, okLabel),
        h('button', { type: 'submit', value: 'cancel', formnovalidate: true }, 'Cancel')));
    dialog.append(form);
    document.body.append(dialog);
    dialog.addEventListener('close', () => {
      const ok = dialog.returnValue === 'ok';
      const body = {};
      for (const { o, input } of inputs) body[o.key] = o.type === 'checkbox' ? input.checked : Number(input.value);
      dialog.remove();
      resolve(ok ? body : null);
    });
    dialog.showModal();
  });
}

async function renderDomain(name) {
  const view = {
    title: h('h1', {}), actions: h('div', { class: 'actions', role: 'group', 'aria-label': 'Actions' }),
    runtime: h('dl', { class: 'facts' }), gate: h('div', {}), jobs: h('div', { class: 'scroll' }), definition: h('pre', { class: 'json', tabindex: '0', 'aria-label': 'Definition as JSON' }),
    console: h('section', { 'aria-labelledby': 'h-console' }), vnc: h('section', { 'aria-labelledby': 'h-vnc' }),
  };
  main().replaceChildren(view.title, view.actions,
    h('div', { class: 'grid' },
      h('section', { 'aria-labelledby': 'h-runtime' }, h('h2', { id: 'h-runtime' }, 'Runtime'), view.runtime),
      h('section', { 'aria-labelledby': 'h-gate' }, h('h2', { id: 'h-gate' }, 'Job gate'), view.gate)),
    h('section', { 'aria-labelledby': 'h-jobs' }, h('h2', { id: 'h-jobs' }, 'Recent jobs'), view.jobs),
    view.console, view.vnc,
    h('section', { 'aria-labelledby': 'h-def' }, h('h2', { id: 'h-def' }, 'Definition'), view.definition));
  let domain = null;
  let timer = 0;
  const load = async () => {
    try {
      const [d, jobs, gate] = await Promise.all([
        api('GET', `/api/v1/domains/${encodeURIComponent(name)}`),
        api('GET', `/api/v1/jobs?domain=${encodeURIComponent(name)}&limit=10`),
        api('GET', `/api/v1/domains/${encodeURIComponent(name)}/gate`)]);
      domain = d.data;
      paintDomain(view, domain, jobs.data.items, gate.data);
      consoleFollows(domain);
    } catch (e) {
      if (e instanceof Problem && e.status === 404) {
        main().replaceChildren(h('h1', { text: name }), h('p', { text: `There is no domain '${name}' (any more).` }), h('a', { href: '#/' }, 'All domains'));
        return;
      }
      showProblem(e);
    }
  };
  const onEvent = (type, data) => {
    if (type === 'resync' || data.domain === name || data.domainUuid === domain?.uuid) {
      clearTimeout(timer);
      timer = setTimeout(load, 50);
    }
  };
  S.listeners.add(onEvent);
  S.cleanup.push(() => { S.listeners.delete(onEvent); clearTimeout(timer); });

  const term = can('operator') ? serialConsole(view.console, name) : null;
  if (term) S.cleanup.push(() => term.close());
  if (can('operator')) vncSection(view.vnc, name);
  const consoleFollows = d => term && term.follow(d.state === 'running' || d.state === 'paused' || d.state === 'shutting-down');
  await load();
}

function paintDomain(view, d, jobs, gate) {
  view.title.replaceChildren(d.name, ' ', h('span', { class: `state ${d.state}`, id: 'domain-state', dataset: { state: d.state } }, d.state),
    h('span', { class: 'reason' }, d.reason || ''));
  if (can('operator')) {
    view.actions.replaceChildren(...ACTIONS.map(a => h('button', {
      type: 'button', class: a.danger ? 'danger' : '', disabled: !a.when.includes(d.state), 'data-action': a.name,
      onclick: () => act(d.name, a),
    }, a.label)),
    can('admin') ? h('a', { class: 'button', href: `#/d/${encodeURIComponent(d.name)}/edit` }, 'Edit') : null,
    can('admin') ? h('button', { type: 'button', class: 'danger', disabled: !['shut-off', 'crashed'].includes(d.state), onclick: () => undefine(d.name) }, 'Undefine') : null);
  }
  const def = d.definition;
  const fact = (k, v) => [h('dt', { text: k }), h('dd', {}, v ?? '—')];
  view.runtime.replaceChildren(
    ...fact('State', `${d.state} (${d.reason})`), ...fact('Since', fmtTime(d.stateChangedAt)), ...fact('Started', fmtTime(d.startedAt)),
    ...fact('PID', d.pid), ...fact('Driver', d.driver), ...fact('vCPUs', def.vcpus), ...fact('Memory', fmtMiB(def.memoryMiB)),
    ...fact('UUID', d.uuid), ...fact('Pending changes', d.pendingChanges ? 'yes: taken at the next start' : 'no'));
  view.gate.replaceChildren(
    gate.holder ? h('p', {}, `Held by ${gate.holder.kind} (${gate.holder.state}) for ${gate.holder.ageSeconds.toFixed(1)} s`) : h('p', { class: 'muted' }, 'Free'),
    gate.queued.length ? h('ol', {}, gate.queued.map(j => h('li', {}, `${j.kind} queued ${j.ageSeconds.toFixed(1)} s ago`))) : h('p', { class: 'muted' }, 'Nothing queued'));
  view.jobs.replaceChildren(jobs.length === 0 ? h('p', { class: 'muted' }, 'No jobs yet') : h('table', {},
    h('thead', {}, h('tr', {}, ['Job', 'State', 'Created', 'Finished', 'Outcome'].map(t => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, jobs.map(j => h('tr', { dataset: { job: j.id, kind: j.kind, state: j.state } },
      h('td', {}, j.kind), h('td', {}, j.state), h('td', {}, fmtTime(j.createdAt)), h('td', {}, fmtTime(j.finishedAt)),
      h('td', { class: 'outcome' }, outcome(j)))))));
  view.definition.textContent = JSON.stringify(def, null, 2);
}

function outcome(j) {
  if (j.error) return h('span', { class: 'error-list' }, `${j.error.title}: ${j.error.detail}`);
  if (!j.result) return '';
  const r = j.result;
  return [r.noop ? 'nothing to do' : null, r.stoppedBy ? `stopped by ${r.stoppedBy}` : null, r.state ? `now ${r.state}` : null].filter(Boolean).join(', ');
}

async function act(name, a) {
  let body = {};
  if (a.confirm) {
    body = await confirmDialog(`${a.label} ${name}`, a.confirm, a.options || [], !!a.danger, a.label);
    if (!body) return;
  }
  try {
    const job = (await api('POST', `/api/v1/domains/${encodeURIComponent(name)}/${a.name}`, body)).data;
    notify(`${a.label}: job ${job.state}`, `Job ${job.id}; the page follows it live.`, 'info');
  } catch (e) {
    showProblem(e);
  }
}

async function undefine(name) {
  if (!await confirmDialog(`Undefine ${name}`, 'Remove this domain\u2019s definition? Its disks are kept.', [], true, 'Undefine')) return;
  try {
    await api('DELETE', `/api/v1/domains/${encodeURIComponent(name)}`);
    notify(`${name} undefined`, '', 'info', true);
    location.hash = '#/';
  } catch (e) { showProblem(e); }
}

const wsUrl = path => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;

/** The serial console in xterm.js: connects while the domain runs, reconnects after a drop (a daemon restart). */
function serialConsole(section, name) {
  const status = h('p', { class: 'muted', id: 'console-status', role: 'status' }, 'Not connected');
  const box = h('div', { class: 'terminal', id: 'console' });
  section.replaceChildren(h('h2', { id: 'h-console' }, 'Serial console'), status, box);
  const term = new Terminal({ convertEol: false, scrollback: 5000, fontSize: 14, screenReaderMode: false, cursorBlink: false });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  try { fit.fit(); } catch { /* not laid out yet */ }
  const onResize = () => { try { fit.fit(); } catch { /* hidden */ } };
  window.addEventListener('resize', onResize);
  let ws = null, wanted = false, closed = false, retry = 0, delay = 500;
  const encoder = new TextEncoder();
  term.onData(s => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(s)); });
  const connect = () => {
    if (closed || !wanted || ws) return;
    status.textContent = 'Connecting…';
    const socket = new WebSocket(wsUrl(`/api/v1/domains/${encodeURIComponent(name)}/console`));
    socket.binaryType = 'arraybuffer';
    ws = socket;
    let opened = false;
    socket.onopen = () => { opened = true; delay = 500; term.reset(); status.textContent = 'Connected: what you type goes to the guest'; };
    socket.onmessage = ev => term.write(new Uint8Array(ev.data));
    socket.onclose = ev => {
      ws = null;
      if (closed) return;
      status.textContent = opened ? `Disconnected${ev.reason ? `: ${ev.reason}` : ''}` : 'Cannot connect (the daemon may be restarting)';
      if (wanted) { clearTimeout(retry); retry = setTimeout(connect, delay); delay = Math.min(delay * 2, 5000); }
    };
  };
  return {
    follow(running) {
      wanted = running;
      if (running) connect();
      else if (!ws) status.textContent = 'The domain is not running';
    },
    close() {
      closed = true;
      clearTimeout(retry);
      window.removeEventListener('resize', onResize);
      if (ws) ws.close();
      term.dispose();
    },
  };
}

/** The graphical console in noVNC, on demand (it is loaded only then). */
function vncSection(section, name) {
  const status = h('p', { class: 'muted', role: 'status', id: 'vnc-status' }, 'Not shown');
  const screen = h('div', { class: 'vnc', id: 'vnc' });
  let rfb = null;
  const button = h('button', {
    type: 'button', id: 'vnc-open', onclick: async () => {
      if (rfb) { rfb.disconnect(); return; }
      status.textContent = 'Connecting…';
      const { default: RFB } = await import('/vendor/novnc/core/rfb.js');
      rfb = new RFB(screen, wsUrl(`/api/v1/domains/${encodeURIComponent(name)}/vnc`), { wsProtocols: ['binary'] });
      rfb.scaleViewport = false; // the guest's pixels as they are; the box scrolls at phone width
      rfb.addEventListener('connect', () => { status.textContent = 'Connected'; button.textContent = 'Close screen'; });
      rfb.addEventListener('disconnect', ev => {
        status.textContent = ev.detail.clean ? 'Closed' : 'Disconnected (the domain may have no VNC, or stopped)';
        rfb = null;
        button.textContent = 'Show screen';
      });
    },
  }, 'Show screen');
  section.replaceChildren(h('h2', { id: 'h-vnc' }, 'Screen (VNC)'), h('div', { class: 'actions' }, button), status, screen);
  S.cleanup.push(() => { if (rfb) rfb.disconnect(); });
}

// ---------------------------------------------------------------- define and edit

const FIELD = (path, label, input, hint) => h('div', { class: 'field', dataset: { field: path } },
  h('label', { for: `in-${path}` }, label), input, hint ? h('span', { class: 'hint', id: `hint-${path}` }, hint) : null,
  h('p', { class: 'field-error', id: `err-${path}`, hidden: true }));

function input(path, attrs = {}) {
  return h('input', { id: `in-${path}`, name: path, dataset: { path }, 'aria-describedby': `err-${path} hint-${path}`, ...attrs });
}

function select(path, options, value) {
  return h('select', { id: `in-${path}`, name: path, dataset: { path }, 'aria-describedby': `err-${path}` },
    options.map(([v, t]) => h('option', { value: v, selected: v === (value ?? '') }, t)));
}

async function renderForm(name) {
  let etag = null, original = {};
  if (name) {
    try {
      const r = await api('GET', `/api/v1/domains/${encodeURIComponent(name)}`);
      etag = r.etag;
      original = r.data.definition;
    } catch (e) { showProblem(e); return; }
  }
  const d = original;
  const disks = h('div', { id: 'disks' });
  const addDisk = (disk = {}) => {
    const i = disks.children.length;
    const p = `disks[${i}]`;
    disks.append(h('fieldset', { class: 'disk' }, h('legend', {}, `Disk ${i + 1}`),
      h('div', { class: 'row' },
        FIELD(`${p}.volume`, 'Volume (pool/name)', input(`${p}.volume`, { value: disk.volume || '' })),
        FIELD(`${p}.path`, 'or path', input(`${p}.path`, { value: disk.volume ? '' : (disk.path || '') })),
        FIELD(`${p}.format`, 'Format', select(`${p}.format`, [['', 'as stored'], ['raw', 'raw'], ['qcow2', 'qcow2']], disk.format)),
        FIELD(`${p}.bus`, 'Bus', select(`${p}.bus`, [['virtio', 'virtio'], ['sata', 'sata'], ['ide', 'ide']], disk.bus || 'virtio')),
        h('label', { class: 'check' }, h('input', { type: 'checkbox', dataset: { path: `${p}.readOnly` }, checked: !!disk.readOnly }), 'Read-only')),
      h('button', { type: 'button', class: 'link', onclick: ev => ev.target.closest('fieldset').remove() }, `Remove disk ${i + 1}`)));
  };
  for (const disk of d.disks || []) addDisk(disk);
  const vnc = d.graphics?.vnc === true ? 'on' : d.graphics?.vnc === false ? 'off' : '';
  const general = h('div', { class: 'error-list', id: 'form-errors', role: 'alert' });
  const form = h('form', { class: 'def', novalidate: true, onsubmit: ev => { ev.preventDefault(); submit(); } },
    h('h1', { text: name ? `Edit ${name}` : 'New domain' }),
    general,
    FIELD('name', 'Name', input('name', { value: d.name || '', required: true, autocomplete: 'off' }), 'Letters, digits, . _ -; at most 63; not a UUID'),
    FIELD('description', 'Description', input('description', { value: d.description || '' })),
    h('div', { class: 'row' },
      FIELD('driver', 'Driver', select('driver', [['', 'the daemon\u2019s default'], ['qemu', 'qemu'], ['simulated', 'simulated']], d.driver)),
      FIELD('vcpus', 'vCPUs', input('vcpus', { type: 'number', value: d.vcpus ?? 1, min: 1, inputmode: 'numeric' })),
      FIELD('memoryMiB', 'Memory (MiB)', input('memoryMiB', { type: 'number', value: d.memoryMiB ?? 128, inputmode: 'numeric' }), '16 to 1048576'),
      FIELD('machine', 'Machine', select('machine', [['q35', 'q35'], ['pc', 'pc']], d.machine || 'q35'))),
    h('fieldset', {}, h('legend', {}, 'Direct kernel boot (optional)'),
      FIELD('boot.kernel', 'Kernel', input('boot.kernel', { value: d.boot?.kernel || '' })),
      FIELD('boot.initrd', 'Initrd', input('boot.initrd', { value: d.boot?.initrd || '' })),
      FIELD('boot.cmdline', 'Command line', input('boot.cmdline', { value: d.boot?.cmdline || '' }))),
    h('fieldset', {}, h('legend', {}, 'Disks'), disks, h('div', {}, h('button', { type: 'button', onclick: () => addDisk() }, 'Add a disk'))),
    h('div', { class: 'row' },
      FIELD('nics', 'User-mode NICs', input('nics', { type: 'number', min: 0, max: 8, value: (d.nics || []).filter(n => n.mode !== 'none').length })),
      FIELD('graphics.vnc', 'VNC', select('graphics.vnc', [['', 'default (on with disks)'], ['on', 'on'], ['off', 'off']], vnc)),
      FIELD('onPoweroff', 'On power-off', select('onPoweroff', [['destroy', 'destroy'], ['restart', 'restart']], d.onPoweroff || 'destroy')),
      FIELD('onReboot', 'On reboot', select('onReboot', [['restart', 'restart'], ['destroy', 'destroy']], d.onReboot || 'restart')),
      FIELD('onCrash', 'On crash', select('onCrash', [['destroy', 'destroy'], ['restart', 'restart']], d.onCrash || 'destroy'))),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', id: 'in-autostart', dataset: { path: 'autostart' }, checked: !!d.autostart }), 'Start with the daemon'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, name ? 'Save' : 'Define'),
      h('a', { class: 'button', href: name ? `#/d/${encodeURIComponent(name)}` : '#/' }, 'Cancel')));
  main().replaceChildren(form);

  const val = path => form.querySelector(`[data-path="${CSS.escape(path)}"]`);
  const text = path => (val(path)?.value || '').trim();
  const num = path => { const t = text(path); return t === '' ? undefined : Number(t); };
  const build = () => {
    const def = { ...original };
    def.name = text('name');
    def.description = text('description') || undefined;
    def.driver = text('driver') || undefined;
    def.vcpus = num('vcpus');
    def.memoryMiB = num('memoryMiB');
    def.machine = text('machine');
    const boot = { kernel: text('boot.kernel') || undefined, initrd: text('boot.initrd') || undefined, cmdline: text('boot.cmdline') || undefined };
    def.boot = boot.kernel || boot.initrd || boot.cmdline ? boot : undefined;
    def.disks = [...disks.querySelectorAll('fieldset.disk')].map(fs => {
      const f = k => fs.querySelector(`[data-path$=".${k}"]`);
      const disk = { bus: f('bus').value, readOnly: f('readOnly').checked };
      if (f('volume').value.trim()) disk.volume = f('volume').value.trim(); else disk.path = f('path').value.trim();
      if (f('format').value) disk.format = f('format').value;
      return disk;
    });
    const nics = num('nics') || 0;
    def.nics = Array.from({ length: nics }, () => ({ mode: 'user' }));
    const v = text('graphics.vnc');
    def.graphics = v === 'on' ? { vnc: true } : v === 'off' ? { vnc: false } : undefined;
    def.onPoweroff = text('onPoweroff');
    def.onReboot = text('onReboot');
    def.onCrash = text('onCrash');
    def.autostart = val('autostart').checked;
    if (!name) delete def.uuid;
    return def;
  };
  const showErrors = errors => {
    for (const el of form.querySelectorAll('.field-error')) { el.hidden = true; el.textContent = ''; }
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    general.replaceChildren();
    let first = null;
    for (const [path, messages] of Object.entries(errors || {})) {
      const field = val(path);
      const err = form.querySelector(`#err-${CSS.escape(path)}`);
      const msg = messages.join('; ');
      if (field && err) {
        err.textContent = msg;
        err.hidden = false;
        field.setAttribute('aria-invalid', 'true');
        first = first || field;
      } else {
        general.append(h('p', {}, `${path || 'definition'}: ${msg}`));
      }
    }
    (first || general).focus?.();
  };
  const submit = async () => {
    clearNotice();
    try {
      const r = name
        ? await api('PUT', `/api/v1/domains/${encodeURIComponent(name)}`, build(), etag ? { 'If-Match': etag } : {})
        : await api('POST', '/api/v1/domains', build());
      notify(name ? `${r.data.name} saved` : `${r.data.name} defined`, r.data.pendingChanges ? 'It is running: the changes apply at its next start.' : '', 'info', true);
      location.hash = `#/d/${encodeURIComponent(r.data.name)}`;
    } catch (e) {
      if (e instanceof Problem && e.status === 412) {
        showErrors({});
        general.replaceChildren(h('p', {}, h('strong', {}, 'Changed meanwhile: '),
          'someone else changed this domain after you opened this form, so nothing was saved. ',
          h('button', { type: 'button', class: 'link', onclick: () => renderForm(name) }, 'Load the current definition'),
          ' (your edits here are lost).'));
        general.setAttribute('tabindex', '-1');
        general.focus();
      } else if (e instanceof Problem && e.problem.errors) {
        showErrors(e.problem.errors);
      } else {
        showErrors({});
        showProblem(e);
      }
    }
  };
  val('name').focus();
}

// ---------------------------------------------------------------- host and events

async function renderHost() {
  try {
    const [host, pools] = await Promise.all([api('GET', '/api/v1/host'), api('GET', '/api/v1/pools')]);
    const x = host.data;
    const fact = (k, v) => [h('dt', { text: k }), h('dd', {}, v ?? '—')];
    main().replaceChildren(h('h1', { text: `Host ${x.hostname}` }),
      h('div', { class: 'grid' },
        h('section', { 'aria-labelledby': 'h-host' }, h('h2', { id: 'h-host' }, 'Machine and daemon'), h('dl', { class: 'facts' },
          ...fact('CPUs', x.cpus), ...fact('Memory', fmtMiB(x.memoryMiB)), ...fact('OS', x.os), ...fact('Default driver', x.defaultDriver),
          ...fact('Daemon', `${x.daemon.version}, ${x.daemon.state}, pid ${x.daemon.pid}`), ...fact('Up', `${Math.round(x.daemon.uptimeSeconds)} s`),
          ...fact('Domains', `${x.domains.defined} defined, ${x.domains.running} running, ${x.domains.paused} paused`),
          ...fact('Event subscribers', x.eventSubscribers))),
        h('section', { 'aria-labelledby': 'h-pool' }, h('h2', { id: 'h-pool' }, 'Job pool'), h('dl', { class: 'facts' },
          ...fact('Workers', `${x.jobs.workers} (+${x.jobs.priorityWorkers} priority)`), ...fact('Running', x.jobs.running),
          ...fact('Queued', `${x.jobs.queued} of ${x.jobs.queueLimit}`), ...fact('Per domain queue', x.jobs.perDomainQueueLimit),
          ...fact('Gate wait timeout', `${x.jobs.waitTimeoutSeconds} s`)))),
      h('h2', { text: 'Drivers' }),
      h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, ['Driver', 'Available', 'Version', 'Accelerator', 'Running', 'Confinement', 'Detail'].map(t => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, x.hypervisors.map(v => h('tr', {}, h('td', {}, v.driver), h('td', {}, v.available ? 'yes' : 'no'), h('td', {}, v.version || '—'),
          h('td', {}, v.accelerator || '—'), h('td', { class: 'num' }, v.runningVms),
          h('td', {}, v.confinement ? `user ${v.confinement.user}, sandbox ${v.confinement.sandbox ? 'on' : 'off'}, cgroups: ${v.confinement.cgroups}` : '—'),
          h('td', {}, v.detail || '')))))),
      h('h2', { text: 'Storage pools' }),
      h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, ['Pool', 'Path', 'Capacity', 'Free'].map(t => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, pools.data.items.map(p => h('tr', {}, h('td', {}, p.name), h('td', {}, p.path),
          h('td', { class: 'num' }, bytes(p.capacity)), h('td', { class: 'num' }, bytes(p.free))))))));
  } catch (e) { showProblem(e); }
}

function bytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function renderEvents() {
  const type = h('select', { id: 'e-type', onchange: () => paint() }, h('option', { value: '' }, 'all types'), EVENT_TYPES.map(t => h('option', { value: t }, t)));
  const domain = h('input', { id: 'e-domain', type: 'search', oninput: () => paint() });
  const list = h('ul', { class: 'events', id: 'events', 'aria-live': 'off' });
  const paint = () => {
    const t = type.value, dn = domain.value.trim().toLowerCase();
    list.replaceChildren(...S.recent.filter(e => (!t || e.type === t) && (!dn || (e.data.domain || '').toLowerCase().includes(dn))).slice(0, 300)
      .map(e => h('li', {}, `${e.at.toLocaleTimeString()} #${e.id || ''} ${e.type} ${describe(e)}`)));
  };
  main().replaceChildren(h('h1', { text: 'Events' }),
    h('p', { class: 'muted' }, 'The live stream (GET /api/v1/events) as it arrives, newest first.'),
    h('div', { class: 'filters', role: 'search' },
      h('div', {}, h('label', { for: 'e-type' }, 'Type'), type), h('div', {}, h('label', { for: 'e-domain' }, 'Domain'), domain)),
    list);
  paint();
  let timer = 0;
  const onEvent = () => { clearTimeout(timer); timer = setTimeout(paint, 100); };
  S.listeners.add(onEvent);
  S.cleanup.push(() => { S.listeners.delete(onEvent); clearTimeout(timer); });
}

function describe(e) {
  const d = e.data;
  if (e.type.startsWith('job.')) return `${d.domain || ''} ${d.kind} ${d.state}${d.errorCode ? ` (${d.errorCode})` : ''}`;
  if (e.type.startsWith('domain.')) return `${d.domain} ${d.event || ''} ${d.state || ''} ${d.reason || ''}`.trim();
  if (e.type === 'resync') return `${d.reason}: ${d.detail}`;
  return JSON.stringify(d);
}

// ---------------------------------------------------------------- routing

function route() {
  for (const c of S.cleanup.splice(0)) c();
  if (S.noticeKeep) S.noticeKeep = false; else clearNotice(); // a notice outlives only the navigation it caused
  S.rows.clear();
  const hash = location.hash || '#/';
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === hash) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (!S.me) { renderSignIn(); document.title = 'Sign in · virtd'; return; }
  let m;
  if (hash === '#/' || hash === '#/signin') { document.title = 'Domains · virtd'; renderList(); }
  else if (hash === '#/new') { document.title = 'New domain · virtd'; renderForm(null); }
  else if (hash === '#/host') { document.title = 'Host · virtd'; renderHost(); }
  else if (hash === '#/events') { document.title = 'Events · virtd'; renderEvents(); }
  else if ((m = hash.match(/^#\/d\/([^/]+)\/edit$/))) { document.title = `Edit ${decodeURIComponent(m[1])} · virtd`; renderForm(decodeURIComponent(m[1])); }
  else if ((m = hash.match(/^#\/d\/([^/]+)$/))) { document.title = `${decodeURIComponent(m[1])} · virtd`; renderDomain(decodeURIComponent(m[1])); }
  else { main().replaceChildren(h('h1', { text: 'Not found' }), h('a', { href: '#/' }, 'All domains')); }
  main().focus({ preventScroll: true });
}

boot();
