// fastws dashboard: the browser client (/static/fastws-client.js, the npm package's own module),
// live metrics from GET /api/websocket/status, history from GET /api/websocket/history, and the
// websocket_v2 flag through PUT /api/websocket. No framework, no bundler, no inline handlers (CSP).

import { FastWSClient, FastWSError } from '/static/fastws-client.js';

const LOG_LIMIT = 500;          // messages kept in the log (and waiting while it is paused)
const SEEN_LIMIT = 5000;        // event ids remembered to show each event once (live or resynced)
const CHART_POINTS = 120;       // seconds of metrics on the charts
const POLL_MS = 1000;
const PRIORITIES = ['low', 'normal', 'high', 'critical'];
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

const $ = (id) => document.getElementById(id);

const state = {
  client: null,
  offs: [],
  status: 'idle',
  tenantId: '',
  userId: '',
  token: '',
  filters: { eventTypes: [], sources: [], priority: [] },
  channels: new Map(),          // canonical channel -> event types ([] = any)
  lastSeen: new Map(),          // channel -> {epoch, offset} of the last event shown
  seen: new Set(),
  seenOrder: [],
  paused: false,
  pending: [],
  logCount: 0,
  auth: null,                   // 'open' | 'jwt' | null (not known yet)
  flags: null,
  metrics: { previous: null, workers: [], charts: {} },
  errors: [],                   // failures the page showed (for the debug handle)
};

// ---------------------------------------------------------------------------------------- helpers

function list(text) {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

function setResult(element, text, ok) {
  element.textContent = text;
  element.classList.toggle('ok', ok === true);
  element.classList.toggle('bad', ok === false);
}

function describeError(error) {
  if (error instanceof FastWSError || (error && error.code)) return `${error.code}: ${error.message}`;
  return String(error && error.message ? error.message : error);
}

function wsDefaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

function restHeaders(token) {
  const headers = {};
  if (state.tenantId) headers['X-Tenant-ID'] = state.tenantId;
  if (state.userId) headers['X-User-ID'] = state.userId;
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function rest(method, path, { token = state.token, body } = {}) {
  const headers = restHeaders(token);
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let payload = null;
  try { payload = await response.json(); } catch { payload = null; }
  if (!response.ok || !payload || payload.success === false) {
    const error = (payload && payload.error) || { code: `http_${response.status}`, message: response.statusText };
    const failure = new Error(error.message);
    failure.code = error.code;
    failure.status = response.status;
    throw failure;
  }
  return payload;
}

function canonical(channel) {
  if (!channel) return `tenant:${state.tenantId}`;
  return channel.includes(':') ? channel : `${channel}:${state.tenantId}`;
}

// ------------------------------------------------------------------------------------ message log

function remember(id) {
  if (!id) return true;
  if (state.seen.has(id)) return false;
  state.seen.add(id);
  state.seenOrder.push(id);
  if (state.seenOrder.length > SEEN_LIMIT) state.seen.delete(state.seenOrder.shift());
  return true;
}

function entry(event, origin) {
  const li = document.createElement('li');
  if (origin === 'system' || origin === 'error') {
    li.className = origin;
    li.textContent = `${new Date().toLocaleTimeString()} ${event}`;
    return li;
  }
  li.dataset.id = event.id || '';
  li.dataset.event = event.eventType || event.type || '';
  li.dataset.channel = event.channel || '';
  li.dataset.origin = origin;
  const meta = document.createElement('span');
  meta.className = 'meta';
  const when = event.timestamp ? event.timestamp.slice(11, 23) : new Date().toISOString().slice(11, 23);
  const offset = event.offset !== undefined ? ` #${event.offset}` : '';
  meta.textContent = `${when} ${event.channel || ''}${offset}${origin === 'history' ? ' (history)' : ''}`;
  const name = document.createElement('span');
  name.className = `name prio-${event.priority || 'normal'}`;
  name.textContent = event.eventType || event.type || '?';
  const who = document.createElement('span');
  who.className = 'meta';
  who.textContent = `${event.priority || ''} ${event.source || ''} ${event.userId || ''}`;
  const data = document.createElement('code');
  data.className = 'data';
  const text = JSON.stringify(event.data === undefined ? event : event.data);
  data.textContent = text.length > 400 ? `${text.slice(0, 400)}…` : text;
  li.append(meta, name, who, data);
  return li;
}

function appendLog(li) {
  const log = $('log');
  log.prepend(li);
  while (log.children.length > LOG_LIMIT) log.lastElementChild.remove();
  state.logCount = log.children.length;
  $('log-count').textContent = String(state.logCount);
}

function show(event, origin = 'live') {
  const li = entry(event, origin);
  if (state.paused) {
    state.pending.push(li);
    if (state.pending.length > LOG_LIMIT) state.pending.shift();
    $('log-pending').textContent = `${state.pending.length} waiting`;
    return;
  }
  appendLog(li);
}

function note(text, kind = 'system') {
  show(text, kind);
}

function track(event) {
  if (event.channel && event.offset !== undefined) {
    const position = state.client && state.client.positions && state.client.positions.get(event.channel);
    const epoch = position ? position.epoch : (state.lastSeen.get(event.channel) || {}).epoch;
    state.lastSeen.set(event.channel, { epoch, offset: event.offset });
  }
}

function onEvent(event) {
  if (!event || typeof event !== 'object') return;
  if (event.eventType === 'connection') {
    show(event);
    return;
  }
  if (!remember(event.id)) return;
  track(event);
  show(event);
}

// The connection's filters, as the server applies them (docs/protocol.md): every non-empty list must match.
function matches(event) {
  const { eventTypes, sources, priority } = state.filters;
  if (eventTypes.length && !eventTypes.includes(event.eventType)) return false;
  if (sources.length && !sources.includes(event.source)) return false;
  if (priority.length && !priority.includes(event.priority)) return false;
  const types = state.channels.get(event.channel);
  if (types && types.length && !types.includes(event.eventType)) return false;
  if (event.targetUserId && event.targetUserId !== state.userId) return false;
  return true;
}

// After a reconnect the server could not replay (a restart, or history overflowed): what is still in
// the channel's history is read over REST, filtered as the server would, and shown once.
async function resync(channel) {
  await null; // the client takes the server's new position right after telling of the failure
  const position = state.client && state.client.positions ? state.client.positions.get(channel) : null;
  const last = state.lastSeen.get(channel);
  const since = last && position && last.epoch === position.epoch ? last.offset : 0;
  try {
    const query = new URLSearchParams({ channel, since: String(since), limit: '1000' });
    const page = await rest('GET', `/api/websocket/history?${query}`);
    let shown = 0;
    for (const event of page.events) {
      if (!matches(event) || !remember(event.id)) continue;
      track(event);
      show(event, 'history');
      shown += 1;
    }
    note(`resync ${channel}: ${shown} event(s) from history (epoch ${page.epoch}, offset ${page.offset})`);
  } catch (error) {
    note(`resync ${channel} failed: ${describeError(error)}`, 'error');
  }
}

// ------------------------------------------------------------------------------------- connection

function setStatus(status) {
  state.status = status;
  const pill = $('status');
  pill.dataset.status = status;
  const attempts = state.client && status === 'reconnecting' ? ` (${state.client.reconnectAttempts})` : '';
  pill.textContent = status + attempts;
  $('connect').disabled = status === 'connected' || status === 'connecting';
  $('disconnect').disabled = !state.client || status === 'disconnected' || status === 'idle';
}

const SETTINGS_KEY = 'fastws.dashboard.connection';

// The connection form is kept for the tab (sessionStorage: gone with the tab), the admin token never.
function saveSettings() {
  const settings = { url: $('url').value, tenant: $('tenant').value, user: $('user').value, token: $('token').value };
  try { sessionStorage.setItem(SETTINGS_KEY, JSON.stringify(settings)); } catch { /* storage off */ }
}

function restoreSettings() {
  let settings = null;
  try { settings = JSON.parse(sessionStorage.getItem(SETTINGS_KEY) || 'null'); } catch { settings = null; }
  if (!settings || typeof settings !== 'object') return;
  for (const name of ['url', 'tenant', 'user', 'token']) {
    if (typeof settings[name] === 'string' && settings[name]) $(name).value = settings[name];
  }
}

function disconnect() {
  for (const off of state.offs) off();
  state.offs = [];
  if (state.client) state.client.close();
  state.client = null;
  setStatus('disconnected');
}

async function connect() {
  disconnect();
  saveSettings();
  state.tenantId = $('tenant').value.trim();
  state.userId = $('user').value.trim();
  state.token = $('token').value.trim();
  const channels = [...state.channels.keys()].filter((c) => c !== `tenant:${state.tenantId}`);
  const client = new FastWSClient({
    url: $('url').value.trim() || wsDefaultUrl(),
    tenantId: state.tenantId,
    userId: state.userId,
    token: state.token || undefined,
    filters: state.filters,
    channels,
    autoReconnect: true,
    reconnectInterval: 500,
    maxReconnectInterval: 4000,
    maxReconnectAttempts: Infinity,
    requestTimeout: 10000,
    followLegacy: false,
  });
  state.client = client;
  state.offs = [
    client.on('message', onEvent),
    client.on('status', (status) => setStatus(typeof status === 'string' ? status : client.status)),
    client.on('open', (welcome) => {
      show(welcome);
      const data = (welcome && welcome.data) || {};
      $('connection-detail').textContent =
        `connection ${data.connectionId || '?'} on worker ${data.worker ?? '?'}; ` +
        `tenant:${state.tenantId} at offset ${data.offset ?? '?'} (epoch ${data.epoch || '?'})`;
      renderChannels();
      refreshFlags();
    }),
    client.on('close', (info) => {
      if (info && info.code !== undefined) note(`closed ${info.code}${info.reason ? `: ${info.reason}` : ''}`);
    }),
    client.on('error', (error) => {
      state.errors.push(describeError(error));
      note(`error: ${describeError(error)}`, 'error');
    }),
    client.on('recovery', ({ channel, recovered }) => {
      note(`recovery ${channel}: ${recovered ? 'missed events replayed' : 'not recovered'}`);
      if (!recovered) resync(channel);
    }),
  ];
  setStatus('connecting');
  try {
    await client.connect();
  } catch (error) {
    if (state.client === client) note(`connect failed: ${describeError(error)}`, 'error');
  }
}

// ---------------------------------------------------------------------------- filters and channels

async function applyFilters(event) {
  event.preventDefault();
  const filters = {
    eventTypes: list($('filter-event-types').value),
    sources: list($('filter-sources').value),
    priority: PRIORITIES.filter((p) => $(`filter-priority-${p}`).checked),
  };
  const result = $('filters-result');
  if (!state.client) {
    state.filters = filters;
    setResult(result, 'saved: applied when connecting', true);
    return;
  }
  try {
    await state.client.updateFilters(filters);
    state.filters = filters;
    setResult(result, `applied ${JSON.stringify(filters)}`, true);
  } catch (error) {
    setResult(result, describeError(error), false);
  }
}

function renderChannels() {
  const ul = $('channels-list');
  ul.replaceChildren();
  const home = `tenant:${state.tenantId}`;
  for (const [channel, types] of [[home, []], ...[...state.channels].filter(([c]) => c !== home)]) {
    const li = document.createElement('li');
    li.dataset.channel = channel;
    const label = document.createElement('span');
    label.textContent = types.length ? `${channel} [${types.join(', ')}]` : channel;
    li.append(label);
    if (channel !== home) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'secondary unsubscribe';
      button.dataset.channel = channel;
      button.textContent = 'Unsubscribe';
      li.append(button);
    }
    ul.append(li);
  }
}

async function subscribe(event) {
  event.preventDefault();
  const result = $('channels-result');
  const channel = $('channel-input').value.trim();
  const types = list($('channel-event-types').value);
  if (!state.client) {
    setResult(result, 'connect first', false);
    return;
  }
  try {
    const ack = await state.client.subscribe(channel, types.length ? types : undefined);
    const name = (ack && ack.channel) || canonical(channel);
    state.channels.set(name, types);
    renderChannels();
    setResult(result, `subscribed ${name} (epoch ${ack && ack.epoch}, offset ${ack && ack.offset})`, true);
    $('channel-input').value = '';
  } catch (error) {
    setResult(result, describeError(error), false);
  }
}

async function unsubscribe(event) {
  const button = event.target.closest('button.unsubscribe');
  if (!button || !state.client) return;
  const channel = button.dataset.channel;
  const result = $('channels-result');
  try {
    await state.client.unsubscribe(channel);
    state.channels.delete(channel);
    renderChannels();
    setResult(result, `unsubscribed ${channel}`, true);
  } catch (error) {
    setResult(result, describeError(error), false);
  }
}

// ---------------------------------------------------------------------------------------- publish

function parsePayload() {
  const text = $('pub-payload').value.trim();
  const error = $('pub-payload-error');
  if (!text) {
    error.textContent = '';
    return { ok: true, value: {} };
  }
  try {
    const value = JSON.parse(text);
    error.textContent = '';
    return { ok: true, value };
  } catch (failure) {
    error.textContent = `invalid JSON: ${failure.message}`;
    return { ok: false };
  }
}

async function publish(event) {
  event.preventDefault();
  const result = $('publish-result');
  const payload = parsePayload();
  if (!payload.ok) {
    setResult(result, 'fix the payload first', false);
    return;
  }
  if (!state.client) {
    setResult(result, 'connect first', false);
    return;
  }
  const name = $('pub-event').value.trim();
  const options = { priority: $('pub-priority').value };
  const channel = $('pub-channel').value.trim();
  const source = $('pub-source').value.trim();
  const target = $('pub-target').value.trim();
  if (channel) options.channel = channel;
  if (source) options.source = source;
  if (target) options.targetUserId = target;
  try {
    const ack = await state.client.publish(name, payload.value, options);
    setResult(result, `ack: id ${ack.id}, offset ${ack.offset}`, true);
    result.dataset.id = ack.id;
  } catch (error) {
    setResult(result, `error ${describeError(error)}`, false);
    result.dataset.id = '';
  }
}

// ---------------------------------------------------------------------------------------- history

async function loadHistory(event) {
  event.preventDefault();
  const result = $('history-result');
  const list = $('history-events');
  const query = new URLSearchParams({
    channel: canonical($('history-channel').value.trim()),
    since: $('history-since').value || '0',
    limit: $('history-limit').value || '100',
  });
  if (!state.tenantId) state.tenantId = $('tenant').value.trim();
  if (!state.userId) state.userId = $('user').value.trim();
  try {
    const page = await rest('GET', `/api/websocket/history?${query}`, { token: state.token || $('token').value.trim() });
    list.replaceChildren(...page.events.map((e) => entry(e, 'history')));
    setResult(result, `${page.channel}: ${page.events.length} event(s), epoch ${page.epoch}, latest offset ${page.offset}`, true);
  } catch (error) {
    list.replaceChildren();
    setResult(result, describeError(error), false);
  }
}

// ------------------------------------------------------------------------------------------ flags

function adminToken() {
  return $('admin-token').value.trim() || state.token || $('token').value.trim();
}

// Each worker applies a flag change within a tick (50 ms) of another worker's PUT, so a status
// answered by another worker just after a change may still show the old flags: for a moment after
// a change, the PUT's answer is what the page shows.
const FLAGS_SETTLE_MS = 1000;

function renderFlags(flags, fromPut = false) {
  if (!flags) return;
  if (fromPut) state.flagsPutAt = Date.now();
  else if (Date.now() - (state.flagsPutAt || 0) < FLAGS_SETTLE_MS) return;
  state.flags = flags;
  $('flag-v2').textContent = flags.websocket_v2 ? 'on' : 'off';
  $('flag-v2').dataset.value = String(flags.websocket_v2);
  $('flag-v2-toggle').textContent = flags.websocket_v2 ? 'Turn off' : 'Turn on';
  const rollout = $('flag-rollout');
  const existing = $('flag-existing');
  if (document.activeElement !== rollout) rollout.value = flags.rollout_percent;
  if (document.activeElement !== existing) existing.value = flags.existing;
  const ul = $('overrides');
  ul.replaceChildren();
  for (const [tenant, value] of Object.entries(flags.tenants || {})) {
    const li = document.createElement('li');
    li.dataset.tenant = tenant;
    const label = document.createElement('span');
    label.textContent = `${tenant}: ${value}`;
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'secondary remove-override';
    remove.dataset.tenant = tenant;
    remove.textContent = 'Remove';
    li.append(label, remove);
    ul.append(li);
  }
}

async function refreshFlags() {
  if (state.metrics.flagsFromStatus) return;
  const tenant = state.tenantId || $('tenant').value.trim();
  if (!NAME.test(tenant)) return;
  try {
    const info = await rest('GET', '/api/websocket', { token: state.token || $('token').value.trim() });
    renderFlags(info.websocket.flags);
  } catch {
    // shown by the flags card when an action fails; the status poll reports authentication
  }
}

async function putFlags(changes) {
  const result = $('flags-result');
  if (state.auth === 'jwt' && !$('admin-token').value.trim()) {
    setResult(result, 'authentication is on: enter an admin token', false);
    $('admin-token').focus();
    return;
  }
  try {
    const answer = await rest('PUT', '/api/websocket', { token: adminToken(), body: { flags: changes } });
    renderFlags(answer.flags, true);
    setResult(result, `saved ${JSON.stringify(changes)}`, true);
  } catch (error) {
    setResult(result, describeError(error), false);
  }
}

// ---------------------------------------------------------------------------------------- metrics

const SERIES_COLORS = ['#2463eb', '#16803c', '#b45309', '#9333ea', '#0891b2', '#be123c', '#4d7c0f', '#a16207'];
const PRIORITY_COLORS = { low: '#94a3b8', normal: '#2463eb', high: '#b45309', critical: '#b91c1c' };

function chartWidth(element) {
  return Math.max(200, Math.floor(element.getBoundingClientRect().width));
}

function makeChart(id, labels, colors) {
  const element = $(id);
  element.replaceChildren();
  const options = {
    width: chartWidth(element),
    height: 170,
    legend: { show: true, live: false },
    cursor: { show: false },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    axes: [{ size: 28 }, { size: 44 }],
    series: [{}, ...labels.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 1.5, points: { show: false } }))],
  };
  const data = [[], ...labels.map(() => [])];
  return new window.uPlot(options, data, element);
}

function ensureCharts(workers) {
  const charts = state.metrics.charts;
  const key = workers.join(',');
  if (charts.key === key) return;
  for (const name of ['connections', 'rate', 'drops']) if (charts[name]) charts[name].destroy();
  const perWorker = workers.map((w) => `worker ${w}`);
  charts.connections = makeChart('chart-connections', ['total', ...perWorker], SERIES_COLORS);
  charts.rate = makeChart('chart-rate', ['sent', 'published', ...perWorker.map((w) => `${w} sent`)], SERIES_COLORS);
  charts.drops = makeChart('chart-drops', PRIORITIES, PRIORITIES.map((p) => PRIORITY_COLORS[p]));
  charts.key = key;
  charts.series = { connections: [[], ...workers.map(() => [])], rate: [[], [], ...workers.map(() => [])], drops: PRIORITIES.map(() => []), x: [] };
}

function push(array, value) {
  array.push(value);
  if (array.length > CHART_POINTS) array.shift();
}

function perSecond(now, before, seconds) {
  if (before === undefined || seconds <= 0) return 0;
  return Math.max(0, (now - before) / seconds);
}

function renderTotals(ws, detailed) {
  const metrics = ws.metrics;
  const items = [
    ['status', ws.status],
    ['connections', metrics.active_connections],
    ['total connections', metrics.total_connections],
    ['events published', metrics.events_published],
    ['events sent', metrics.events_sent],
    ['workers', metrics.workers],
  ];
  if (detailed) items.push(['core', ws.implementation], ['uptime', `${Math.round(ws.uptime_seconds)} s`]);
  $('totals').replaceChildren(...items.map(([name, value]) => {
    const div = document.createElement('div');
    const dt = document.createElement('dt');
    dt.textContent = name;
    const dd = document.createElement('dd');
    dd.textContent = String(value ?? '');
    dd.dataset.metric = name;
    div.append(dt, dd);
    return div;
  }));
  $('server-info').textContent = detailed ? `v${ws.version} · ${ws.implementation} core` : '';
}

function renderWorkers(rows, rates) {
  const tbody = $('workers').tBodies[0];
  tbody.replaceChildren(...Object.entries(rows).map(([worker, row]) => {
    const tr = document.createElement('tr');
    const cells = [worker, row.pid, row.state, row.connections, rates[worker].toFixed(1), row.events_published, ...row.drops];
    for (const value of cells) {
      const td = document.createElement('td');
      td.textContent = String(value);
      tr.append(td);
    }
    return tr;
  }));
}

function record(ws, detailed) {
  const now = Date.now() / 1000;
  const previous = state.metrics.previous;
  const seconds = previous ? now - previous.time : 0;
  const rows = detailed && ws.workers ? ws.workers : { 0: { connections: ws.metrics.active_connections, events_sent: ws.metrics.events_sent, events_published: ws.metrics.events_published, drops: [0, 0, 0, 0], pid: '', state: 'running' } };
  const workers = Object.keys(rows);
  ensureCharts(workers);
  const series = state.metrics.charts.series;
  push(series.x, now);
  push(series.connections[0], ws.metrics.active_connections);
  workers.forEach((w, i) => push(series.connections[i + 1], rows[w].connections));
  push(series.rate[0], perSecond(ws.metrics.events_sent, previous && previous.sent, seconds));
  push(series.rate[1], perSecond(ws.metrics.events_published, previous && previous.published, seconds));
  const rates = {};
  workers.forEach((w, i) => {
    rates[w] = perSecond(rows[w].events_sent, previous && previous.rows[w] && previous.rows[w].events_sent, seconds);
    push(series.rate[i + 2], rates[w]);
  });
  const drops = PRIORITIES.map((_, p) => workers.reduce((sum, w) => sum + (rows[w].drops ? rows[w].drops[p] : 0), 0));
  drops.forEach((value, p) => push(series.drops[p], perSecond(value, previous && previous.drops[p], seconds)));
  const charts = state.metrics.charts;
  charts.connections.setData([series.x, ...series.connections]);
  charts.rate.setData([series.x, ...series.rate]);
  charts.drops.setData([series.x, ...series.drops]);
  state.metrics.previous = { time: now, sent: ws.metrics.events_sent, published: ws.metrics.events_published, rows, drops };
  renderWorkers(rows, rates);
}

// The first poll asks for the plain status, which says whether authentication is on; after that,
// the detailed status (every worker's row, the flags) when the server is open or an admin token is
// given, else the plain one with the connection's token. Without any token on a server that needs
// one, polling waits until a token is entered (no request bound to fail every second).
async function poll() {
  const source = $('metrics-source');
  const admin = $('admin-token').value.trim();
  const user = state.token || $('token').value.trim();
  if (state.auth === 'jwt' && !admin && !user) {
    source.textContent = '(authentication is on: enter a token)';
    return;
  }
  let answer = null;
  let detailed = false;
  try {
    if (state.auth === 'open' || (state.auth === 'jwt' && admin)) {
      answer = await rest('GET', '/api/websocket/status?detailed=true', { token: admin || user });
      detailed = true;
    } else {
      answer = await rest('GET', '/api/websocket/status', { token: user });
    }
  } catch (error) {
    if (error.code === 'unauthorized' || error.code === 'token_expired') state.auth = 'jwt';
    else if (error.code === 'forbidden') $('flags-result').textContent = 'the admin token is not an admin token';
    source.textContent = error.code ? `(${error.code})` : '(server unreachable)';
    renderAuth();
    return;
  }
  const ws = answer.websocket;
  const auth = ws.auth || 'open';
  const learned = state.auth !== auth;
  state.auth = auth;
  renderAuth();
  source.textContent = detailed ? `(worker ${ws.worker ?? 0} answering, every worker's row)` : '(totals; per-worker rows need an admin token)';
  renderTotals(ws, detailed);
  record(ws, detailed);
  state.metrics.flagsFromStatus = Boolean(detailed && ws.flags);
  if (detailed && ws.flags) renderFlags(ws.flags);
  if (learned && (auth === 'open' || admin)) await poll();
}

function renderAuth() {
  const jwt = state.auth === 'jwt';
  $('auth-mode').textContent = state.auth ? `auth: ${state.auth}` : '';
  $('admin-token-label').hidden = !jwt;
}

function schedulePoll() {
  poll().catch((error) => note(`status poll failed: ${describeError(error)}`, 'error')).finally(() => setTimeout(schedulePoll, POLL_MS));
}

function resizeCharts() {
  const charts = state.metrics.charts;
  for (const [name, id] of [['connections', 'chart-connections'], ['rate', 'chart-rate'], ['drops', 'chart-drops']]) {
    if (charts[name] && charts[name].width !== chartWidth($(id))) charts[name].setSize({ width: chartWidth($(id)), height: 170 });
  }
}

// ----------------------------------------------------------------------------------------- wiring

function init() {
  $('url').value = wsDefaultUrl();
  restoreSettings();
  state.tenantId = $('tenant').value.trim();
  state.userId = $('user').value.trim();
  $('connect-form').addEventListener('submit', (event) => { event.preventDefault(); connect(); });
  $('disconnect').addEventListener('click', disconnect);
  $('filters-form').addEventListener('submit', applyFilters);
  $('subscribe-form').addEventListener('submit', subscribe);
  $('channels-list').addEventListener('click', unsubscribe);
  $('publish-form').addEventListener('submit', publish);
  $('pub-payload').addEventListener('input', parsePayload);
  $('history-form').addEventListener('submit', loadHistory);
  $('log-pause').addEventListener('click', () => {
    state.paused = !state.paused;
    $('log-pause').setAttribute('aria-pressed', String(state.paused));
    $('log-pause').textContent = state.paused ? 'Resume' : 'Pause';
    if (!state.paused) {
      for (const li of state.pending.splice(0)) appendLog(li);
      $('log-pending').textContent = '';
    }
  });
  $('log-clear').addEventListener('click', () => {
    $('log').replaceChildren();
    state.pending = [];
    state.logCount = 0;
    $('log-count').textContent = '0';
    $('log-pending').textContent = '';
  });
  $('flag-v2-toggle').addEventListener('click', () => {
    // the change the button names: the opposite of what the page shows
    putFlags({ websocket_v2: $('flag-v2').dataset.value !== 'true' });
  });
  $('flags-form').addEventListener('submit', (event) => {
    event.preventDefault();
    putFlags({ rollout_percent: Number($('flag-rollout').value), existing: $('flag-existing').value });
  });
  $('override-form').addEventListener('submit', (event) => {
    event.preventDefault();
    putFlags({ tenants: { [$('override-tenant').value.trim()]: $('override-state').value } });
  });
  $('overrides').addEventListener('click', (event) => {
    const button = event.target.closest('button.remove-override');
    if (button) putFlags({ tenants: { [button.dataset.tenant]: null } });
  });
  new ResizeObserver(resizeCharts).observe($('metrics-card'));
  setStatus('idle');
  renderChannels();
  schedulePoll();
}

// A debug handle for tests and the browser console.
window.__dashboard = {
  state,
  get client() { return state.client; },
  get charts() { return state.metrics.charts; },
  log() { return [...$('log').children].map((li) => ({ ...li.dataset, text: li.textContent })); },
};

init();
