// wall.js — the video wall: sign-in, live tiles, map, drone overlays, incident panel, SOS.
//
// Talks to the node over /ws (the signaling protocol yiwang/1, docs/protocol.md): hello with the
// token, then catalog/units/log requests, events (presence, position, telemetry, drone_link,
// drone_command_ack), mail (chat, orders, order states, SOS), and one `subscribe` per tile for
// its WebRTC session. Plain ES module, no build step; Leaflet is loaded as a classic script from
// vendor/ (scripts/build-web.sh puts it there) and is optional: without it the map says so.
//
// window.wall exposes read-only state for tests and the benchmark (tileStats(), markers(), …).

import { t, initLang, setLang, getLang, translate } from './i18n.js';
import { waitIceGathering } from './yiwang.js';
import { wgs84ToGcj02, gridStep } from './geo.js';

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
};

// ---------------------------------------------------------------------------------------------
// Rights (docs/roles.md): what the UI offers. The node checks every request anyway.

const CONSOLE = ['admin', 'commander', 'operator', 'viewer'];
const may = {
  chat: (r) => ['admin', 'commander', 'operator', 'officer', 'pilot'].includes(r),
  order: (r) => ['admin', 'commander', 'operator'].includes(r),
  sosAck: (r) => ['admin', 'commander', 'operator'].includes(r),
  droneCommand: (r, subject, drone, grants) =>
    r === 'admin' || r === 'commander' ||
    (r === 'pilot' && (grants.includes(drone) || new RegExp(`^${subject.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-drone\\d+$`).test(drone))),
};

// ---------------------------------------------------------------------------------------------
// State

const TOKEN_KEY = 'yiwang.token';
const LAYOUTS = { '1': 1, '2x2': 4, '3x3': 9, '4x4': 16, '1+5': 6 };
const KEYS = { 1: '1', 2: '2x2', 3: '3x3', 4: '4x4', 5: '1+5' };
const STALE_MS = 60000;

const S = {
  token: null,
  welcome: null,
  role: null,
  subject: null,
  grants: { drones: [] },
  incident: 'duty',
  incidents: [],
  streams: new Map(), // name -> catalog entry
  units: new Map(), // subject -> unit
  drones: new Map(), // name -> { t, link, track: [[lat,lon]...], time }
  orders: new Map(), // id -> order
  chats: [], // chat mail items
  log: new Map(), // incident -> { last, entries }
  sos: new Map(), // id -> sos mail item (raised)
  commands: new Map(), // cmd id -> { drone, command, result, text }
  layout: '2x2',
  tiles: [], // { stream, pinned, player, el, ... }
  saved: null, // layout + assignments before maximise
  config: { tiles: null, center: [30.59, 114.3], zoom: 12 },
  signinAt: null,
  firstFrameAt: null,
};

// ---------------------------------------------------------------------------------------------
// Signaling over /ws

class Sig {
  constructor() {
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.session = null;
    this.lastSeq = 0;
    this.mailSeq = 0;
    this.final = null;
    this.backoff = 500;
    this.ackTimer = null;
    this.mailAckTimer = null;
    this.onWelcome = () => {};
    this.onEvent = () => {};
    this.onMail = () => {};
    this.onFinal = () => {};
    this.onState = () => {};
  }

  url() {
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
  }

  connect() {
    if (this.final) return;
    const ws = (this.ws = new WebSocket(this.url()));
    let welcomed = false;
    ws.onopen = () => {
      const hello = { type: 'hello', v: 1, token: S.token };
      if (this.session) hello.resume = { session: this.session, after: this.lastSeq };
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      if (m.type === 'welcome') {
        welcomed = true;
        this.backoff = 500;
        if (!m.resumed) { this.lastSeq = 0; }
        this.session = m.session;
        this.onState('connected');
        this.onWelcome(m);
      } else if (m.type === 'event') {
        if (m.seq <= this.lastSeq) return;
        this.lastSeq = m.seq;
        this.scheduleAck();
        try { this.onEvent(m.event); } catch (e) { console.error('event', e); }
      } else if (m.type === 'mail') {
        if (m.seq <= this.mailSeq) return;
        this.mailSeq = m.seq;
        this.scheduleMailAck();
        try { this.onMail(m.item, m.seq); } catch (e) { console.error('mail', e); }
      } else if (m.type === 'result' || m.type === 'error') {
        if (m.re !== undefined && this.pending.has(m.re)) {
          const p = this.pending.get(m.re);
          this.pending.delete(m.re);
          clearTimeout(p.timer);
          if (m.type === 'result') p.resolve(m.data);
          else p.reject(Object.assign(new Error(m.message), { code: m.code }));
        } else if (m.type === 'error' && ['unauthorized', 'revoked', 'bad_hello', 'unsupported_version', 'session_closed'].includes(m.code)) {
          this.final = m;
        }
      }
    };
    ws.onclose = (ev) => {
      for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(Object.assign(new Error('disconnected'), { code: 'disconnected' })); }
      this.pending.clear();
      // Final: an error that forbids reconnecting (sent before the close), or its close code
      // alone; 4017 only for `bye` (a session resumed elsewhere sends session_closed first).
      const finalClose = [4011, 4012, 4013, 4014].includes(ev.code) || (ev.code === 4017 && ev.reason === 'bye');
      if (this.final || finalClose) {
        if (!this.final) this.final = { code: ev.code === 4014 ? 'revoked' : ev.code === 4013 ? 'unauthorized' : 'session_closed', message: ev.reason };
        this.onFinal(this.final, welcomed);
        return;
      }
      this.onState(welcomed ? 'reconnecting' : 'network');
      const wait = this.backoff * (0.5 + Math.random() / 2);
      this.backoff = Math.min(this.backoff * 2, 5000);
      setTimeout(() => this.connect(), wait);
    };
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  request(msg, ms = 10000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(Object.assign(new Error('disconnected'), { code: 'disconnected' }));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(Object.assign(new Error(`no reply to ${msg.type} within ${ms} ms`), { code: 'timeout' }));
      }, ms);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...msg, id }));
    });
  }

  scheduleAck() {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => { this.ackTimer = null; this.send({ type: 'ack', after: this.lastSeq }); }, 1000);
  }

  scheduleMailAck() {
    if (this.mailAckTimer) return;
    this.mailAckTimer = setTimeout(() => { this.mailAckTimer = null; this.send({ type: 'mail_ack', upto: this.mailSeq }); }, 300);
  }

  bye() {
    this.final = { code: 'bye' };
    this.send({ type: 'bye' });
    try { this.ws.close(); } catch (_) { /* closed */ }
  }
}

let sig = null;

async function api(path, init = {}) {
  const r = await fetch(path, { ...init, headers: { ...(init.headers || {}), Authorization: `Bearer ${S.token}` } });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw Object.assign(new Error((body && body.message) || `HTTP ${r.status}`), { status: r.status, code: body && body.error });
  return body;
}

// ---------------------------------------------------------------------------------------------
// Sign-in

function tokenClaims(token) {
  try {
    const p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(p + '==='.slice((p.length + 3) % 4)));
  } catch (_) {
    return null;
  }
}

function showSignin(message) {
  $('wall').hidden = true;
  $('signin').hidden = false;
  const e = $('signin-error');
  e.hidden = !message;
  e.textContent = message || '';
  if (message) e.dataset.reason = message;
  $('signin-token').focus();
}

function refusal(err) {
  const msg = err.message || '';
  if (err.code === 'revoked') return { reason: 'revoked', text: t('err_revoked') };
  if (err.code === 'unauthorized' && /expired/i.test(msg)) return { reason: 'expired', text: t('err_expired') };
  if (err.code === 'unauthorized' || err.code === 'bad_hello') return { reason: 'refused', text: t('err_refused') + msg };
  return { reason: 'ended', text: t('err_session') };
}

function signIn(token) {
  token = (token || '').trim();
  if (!token) { showSignin(t('err_no_token')); return; }
  S.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  S.signinAt = performance.now();
  S.firstFrameAt = null;
  $('signin-error').hidden = false;
  $('signin-error').textContent = t('signin_connecting');
  $('signin-error').dataset.reason = 'connecting';
  sig = new Sig();
  sig.onWelcome = onWelcome;
  sig.onEvent = onEvent;
  sig.onMail = onMail;
  sig.onState = (s) => {
    $('conn').dataset.state = s;
    renderHeader();
    if (s === 'network' && !S.welcome) { $('signin-error').textContent = t('err_network'); $('signin-error').dataset.reason = 'network'; }
  };
  sig.onFinal = (err, welcomed) => {
    const r = refusal(err);
    if (err.code === 'bye') return;
    sessionStorage.removeItem(TOKEN_KEY);
    teardown();
    showSignin(r.text);
    $('signin-error').dataset.reason = r.reason;
    if (welcomed) console.warn('session ended', err);
  };
  sig.connect();
}

/** The top bar's subject, role and connection state, in the current language. */
function renderHeader() {
  if (S.welcome) $('who').textContent = `${S.welcome.subject} · ${t('role')}: ${S.welcome.role}`;
  const s = $('conn').dataset.state;
  $('conn').textContent = !s ? '' : s === 'connected' ? t('connected') : s === 'reconnecting' ? t('reconnecting') : t('err_network');
}

function teardown() {
  for (const tile of S.tiles) stopPlayer(tile);
  S.welcome = null;
  window.wall.ready = false;
}

// ---------------------------------------------------------------------------------------------
// Welcome, events, mail

async function onWelcome(w) {
  const first = !S.welcome;
  S.welcome = w;
  S.role = w.role;
  S.subject = w.subject;
  S.incidents = w.incidents || [];
  const claims = tokenClaims(S.token) || {};
  S.grants.drones = claims.drones || [];
  if (!S.incidents.includes(S.incident)) S.incident = S.incidents[0] || 'duty';
  $('signin').hidden = true;
  $('wall').hidden = false;
  $('who').dataset.role = w.role;
  renderHeader();
  applyRights();
  renderIncidents();
  if (first) {
    await loadConfig();
    setLayout(S.layout);
    initMap();
  } else if (!w.resumed) {
    // A new session: the old one's media sessions end with it, so every tile subscribes again.
    for (const tile of S.tiles) if (tile.stream) restartPlayer(tile, 0);
  }
  // Mail from where this subject last acknowledged; live mail follows a complete sync.
  syncMail().catch((e) => console.warn('mail_sync', e));
  await Promise.allSettled([refreshCatalog(), refreshUnits(), refreshOrders(), refreshLog(), refreshTrunks()]);
  window.wall.ready = true;
}

async function syncMail() {
  for (let i = 0; i < 50; i++) {
    const r = await sig.request(sig.mailSeq ? { type: 'mail_sync', after: sig.mailSeq } : { type: 'mail_sync' });
    if (!r || !r.more) return;
  }
}

function onEvent(ev) {
  switch (ev.kind) {
    case 'presence': {
      const u = S.units.get(ev.subject) || { subject: ev.subject, incidents: [] };
      Object.assign(u, { role: ev.role, online: ev.online, last_seen: ev.last_seen });
      S.units.set(ev.subject, u);
      renderUnits();
      break;
    }
    case 'position': {
      const u = S.units.get(ev.subject) || { subject: ev.subject, role: ev.role, online: true, incidents: [] };
      const { kind, subject, role, ...pos } = ev;
      u.position = pos;
      S.units.set(ev.subject, u);
      renderUnits();
      break;
    }
    case 'telemetry': {
      const d = drone(ev.drone);
      Object.assign(d.t, ev.t || {});
      d.time = Date.now();
      if (typeof d.t.lat === 'number' && typeof d.t.lon === 'number') {
        const last = d.track[d.track.length - 1];
        if (!last || last[0] !== d.t.lat || last[1] !== d.t.lon) d.track.push([d.t.lat, d.t.lon]);
        if (d.track.length > 2000) d.track.shift();
      }
      renderDrones(ev.drone);
      renderUnits();
      break;
    }
    case 'drone_link': {
      drone(ev.drone).link = ev.up ? 'up' : 'lost';
      renderDrones(ev.drone);
      renderUnits();
      break;
    }
    case 'drone_command_ack': {
      const c = S.commands.get(ev.cmd) || { drone: ev.drone };
      Object.assign(c, { result: ev.result, text: ev.text || null });
      S.commands.set(ev.cmd, c);
      renderDrones(ev.drone);
      break;
    }
    case 'member':
    case 'assigned':
    case 'unassigned':
    case 'incident':
      refreshUnits();
      if (ev.kind !== 'member') sig.request({ type: 'incidents' }).then(() => {}).catch(() => {});
      break;
    default:
      break;
  }
}

function drone(name) {
  let d = S.drones.get(name);
  if (!d) { d = { t: {}, link: null, track: [], time: 0 }; S.drones.set(name, d); }
  return d;
}

function onMail(item) {
  switch (item.kind) {
    case 'chat':
      S.chats.push(item);
      if (S.chats.length > 500) S.chats.shift();
      renderChat();
      break;
    case 'order':
      // An order addressed to this subject (a console rarely gets one): show it like any other.
      S.orders.set(item.order, { ...(S.orders.get(item.order) || {}), id: item.order, incident: item.incident, from: item.from, to: item.to, text: item.text, state: 'sent', sent_at: item.time });
      renderOrders();
      break;
    case 'order_state': {
      const o = S.orders.get(item.order) || { id: item.order };
      o.state = item.state;
      if (item.eta_min !== null && item.eta_min !== undefined) o.eta_min = item.eta_min;
      if (item.reason) o.reason = item.reason;
      S.orders.set(item.order, o);
      if (!o.text) refreshOrders();
      renderOrders();
      break;
    }
    case 'sos':
      S.sos.set(item.sos, item);
      renderSos();
      break;
    case 'sos_ack':
      S.sos.delete(item.sos);
      renderSos();
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Periodic state

async function refreshCatalog() {
  if (!S.welcome) return;
  const [cat, all] = await Promise.allSettled([sig.request({ type: 'catalog' }), api('/api/streams')]);
  const m = new Map();
  // /api/streams lists every live stream (WHIP-only publishers too); the catalog adds kind/owner_role.
  if (all.status === 'fulfilled') for (const s of all.value.streams || []) m.set(s.name, { kind: 'camera', ...s });
  if (cat.status === 'fulfilled') for (const s of cat.value.streams || []) m.set(s.name, { ...(m.get(s.name) || {}), ...s });
  // Streams published at other nodes that this node's trunks reach (`NODE/STREAM`): shown and
  // watchable, but never put on a tile by themselves (each one watched is pulled over the trunks).
  // Their `layers` is a count, not a list of sizes: kept as `layerCount`.
  for (const res of [all, cat]) {
    if (res.status !== 'fulfilled') continue;
    for (const r of res.value.remote || []) {
      if (!m.has(r.name)) m.set(r.name, { kind: 'camera', ...r, layers: [], layerCount: r.layers, remote: true });
    }
  }
  if (all.status === 'rejected' && cat.status === 'rejected') return;
  S.streams = m;
  renderCatalog();
  autofill();
}

/** The node's trunks to the rest of the province (`GET /api/trunks`): hidden without trunks;
 *  "N trunks up", or the configured uplinks that are down, highlighted. */
async function refreshTrunks() {
  if (!S.welcome) return;
  let r;
  try { r = await api('/api/trunks'); } catch (_) { return; }
  S.trunks = r;
  renderTrunks();
}

function renderTrunks() {
  const e = $('trunks');
  const r = S.trunks;
  if (!r || !r.enabled) { e.hidden = true; return; }
  const down = (r.uplinks || []).filter((u) => !u.up).map((u) => u.node || u.addr || u.kind);
  e.hidden = false;
  e.dataset.state = down.length ? 'down' : 'ok';
  e.dataset.up = String((r.trunks || []).length);
  e.textContent = down.length ? t('trunks_down', { nodes: down.join(', ') }) : t('trunks_ok', { n: (r.trunks || []).length });
  e.title = (r.trunks || []).map((x) => t('trunk_line', { peer: x.peer, role: x.role, rtt: Math.round(x.rtt_ms) })).join('\n');
}

async function refreshUnits() {
  if (!S.welcome) return;
  try {
    const r = await sig.request({ type: 'units' });
    const m = new Map();
    for (const u of r.units || []) {
      m.set(u.subject, u);
      if (u.kind === 'drone') {
        const d = drone(u.subject);
        if (u.telemetry) Object.assign(d.t, u.telemetry);
        if (u.link) d.link = u.link;
      }
    }
    // Keep positions that events brought in after the request left.
    for (const [k, u] of S.units) if (!m.has(k) && u.position) m.set(k, u);
    S.units = m;
    renderUnits();
    renderOrderTargets();
  } catch (e) { /* retried by the timer */ }
}

async function refreshOrders() {
  if (!S.welcome) return;
  try {
    const r = await api('/api/orders');
    for (const o of r.orders || []) S.orders.set(o.id, { ...(S.orders.get(o.id) || {}), ...o });
    renderOrders();
  } catch (e) { /* retried */ }
}

async function refreshLog() {
  if (!S.welcome) return;
  const inc = S.incident;
  const l = S.log.get(inc) || { last: 0, entries: [] };
  try {
    const r = await sig.request({ type: 'log', incident: inc, after: l.last });
    for (const e of r.entries || []) { l.entries.push(e); l.last = Math.max(l.last, e.seq); }
    if (l.entries.length > 1000) l.entries.splice(0, l.entries.length - 1000);
    S.log.set(inc, l);
    if ((r.entries || []).length) renderLog();
  } catch (e) { /* retried */ }
}

setInterval(() => { refreshCatalog(); }, 2000);
setInterval(() => { refreshTrunks(); }, 5000);
setInterval(() => { refreshUnits(); refreshLog(); }, 3000);
setInterval(() => { refreshOrders(); }, 10000);
setInterval(() => { renderUnits(); }, 5000); // staleness

// ---------------------------------------------------------------------------------------------
// Tiles

function tileEl(i) {
  const tile = S.tiles[i];
  const video = el('video', { 'data-testid': 'tile-video', autoplay: true, muted: true, playsinline: true });
  video.muted = true;
  const pick = el('select', { 'data-testid': 'tile-pick', title: t('tile_pick'), onchange: (e) => assign(i, e.target.value || null, true) });
  const root = el(
    'div',
    {
      class: 'tile', 'data-testid': `tile-${i}`, 'data-index': i,
      ondragover: (e) => { e.preventDefault(); root.classList.add('drop'); },
      ondragleave: () => root.classList.remove('drop'),
      ondrop: (e) => { e.preventDefault(); root.classList.remove('drop'); const s = e.dataTransfer.getData('text/plain'); if (s) assign(i, s, true); },
      ondblclick: () => (S.layout === '1' && S.saved ? restore() : maximise(i)),
      onmouseenter: () => { S.hover = i; },
    },
    video,
    el('div', { class: 'tile-empty', 'data-testid': 'tile-empty', 'data-i18n': 'tile_empty', text: t('tile_empty') }),
    el('div', { class: 'tile-top' },
      el('span', { class: 'tile-label', 'data-testid': 'tile-label' }),
      el('span', { class: 'tile-bitrate', 'data-testid': 'tile-bitrate' }),
      el('span', { class: 'tile-stalled', 'data-testid': 'tile-stalled', 'data-i18n': 'tile_stalled', text: t('tile_stalled'), hidden: true }),
      el('span', { class: 'tile-state', 'data-testid': 'tile-state' })),
    el('div', { class: 'tile-tools' },
      pick,
      el('button', { 'data-testid': 'tile-pin', onclick: () => { tile.pinned = !tile.pinned; renderTile(i); autofill(); } }),
      el('button', { 'data-testid': 'tile-max', onclick: () => (S.layout === '1' && S.saved ? restore() : maximise(i)) })),
    el('div', { class: 'drone-overlay', 'data-testid': 'drone-overlay', hidden: true }),
  );
  video.addEventListener('playing', () => noteFrame(tile));
  return root;
}

function noteFrame(tile) {
  if (tile.firstFrameAt === null && tile.player) {
    tile.firstFrameAt = performance.now();
    if (S.firstFrameAt === null && S.signinAt !== null) S.firstFrameAt = tile.firstFrameAt;
  }
}

function setLayout(name) {
  if (!LAYOUTS[name]) return;
  S.layout = name;
  const n = LAYOUTS[name];
  while (S.tiles.length < n) S.tiles.push({ stream: null, pinned: false, player: null, el: null, stats: null, firstFrameAt: null });
  for (let i = n; i < S.tiles.length; i++) stopPlayer(S.tiles[i]);
  S.tiles.length = n;
  const box = $('tiles');
  box.className = `layout-${name.replace('+', 'p')}`;
  box.dataset.layout = name;
  box.replaceChildren();
  S.tiles.forEach((tile, i) => {
    tile.el = tileEl(i);
    box.append(tile.el);
    if (tile.player) tile.el.querySelector('video').srcObject = tile.player.stream;
  });
  for (const b of document.querySelectorAll('#layouts button')) b.classList.toggle('on', b.dataset.layout === name);
  autofill();
  // Sizes are known after layout: re-ask each playing tile for the layer that fits.
  requestAnimationFrame(() => {
    S.tiles.forEach((tile, i) => { renderTile(i); refit(tile); });
  });
}

function maximise(i) {
  const tile = S.tiles[i];
  if (!tile || !tile.stream) return;
  if (!S.saved) S.saved = { layout: S.layout, tiles: S.tiles.map((x) => ({ stream: x.stream, pinned: x.pinned })) };
  // Keep the maximised tile's player: it re-asks for a bigger layer once laid out.
  const keep = S.tiles[i];
  S.tiles.forEach((x, j) => { if (j !== i) stopPlayer(x); });
  S.tiles = [keep];
  keep.pinned = true;
  setLayout('1');
}

function restore() {
  const saved = S.saved;
  if (!saved) return;
  S.saved = null;
  const cur = S.tiles[0];
  const n = LAYOUTS[saved.layout];
  const tiles = [];
  for (let j = 0; j < n; j++) {
    const s = saved.tiles[j] || { stream: null, pinned: false };
    if (cur && cur.stream === s.stream && !tiles.includes(cur)) { cur.pinned = s.pinned; tiles.push(cur); continue; }
    tiles.push({ stream: s.stream, pinned: s.pinned, player: null, el: null, stats: null, firstFrameAt: null });
  }
  if (cur && !tiles.includes(cur)) stopPlayer(cur);
  S.tiles = tiles;
  setLayout(saved.layout);
}

function assign(i, stream, byHand) {
  const tile = S.tiles[i];
  if (!tile) return;
  if (tile.stream === stream && tile.player) return;
  stopPlayer(tile);
  tile.stream = stream;
  // Picking by hand pins the tile (auto-fill leaves it alone); clearing it by hand unpins it.
  if (byHand) tile.pinned = !!stream;
  tile.firstFrameAt = null;
  if (stream) startPlayer(tile);
  renderTile(i);
  if (!stream) autofill();
}

/** Empty unpinned tiles take live streams not shown yet, newest first. */
function autofill() {
  if (!S.welcome) return;
  const shown = new Set(S.tiles.map((x) => x.stream).filter(Boolean));
  // Unpinned tiles whose stream ended become free.
  S.tiles.forEach((tile, i) => {
    if (tile.stream && !tile.pinned && !S.streams.has(tile.stream)) { stopPlayer(tile); shown.delete(tile.stream); tile.stream = null; renderTile(i); }
  });
  const free = [...S.streams.values()]
    .filter((s) => !shown.has(s.name) && !s.remote)
    .sort((a, b) => (b.started_unix_ms || 0) - (a.started_unix_ms || 0));
  S.tiles.forEach((tile, i) => {
    if (!tile.stream && !tile.pinned && free.length) {
      tile.stream = free.shift().name;
      tile.firstFrameAt = null;
      startPlayer(tile);
      renderTile(i);
    }
  });
  S.tiles.forEach((tile, i) => { if (tile.stream && !tile.player && !tile.retryTimer) startPlayer(tile); renderTile(i); });
}

/** The rows a tile's video should get: its CSS height times the pixel ratio. */
function wantedHeight(tile) {
  const v = tile.el && tile.el.querySelector('video');
  const h = v ? v.clientHeight : 0;
  return Math.max(90, Math.round((h || 360) * (window.devicePixelRatio || 1)));
}

/** The layer (by height) the node would pick for `maxHeight`, from the catalog's layer list. */
function layerFor(stream, maxHeight) {
  const s = S.streams.get(stream);
  const ls = s && Array.isArray(s.layers) ? s.layers : [];
  if (ls.length === 0 || ls.some((l) => !l.height)) return null;
  const fit = ls.filter((l) => l.height <= maxHeight);
  return (fit.length ? fit[fit.length - 1] : ls[0]).height;
}

function refit(tile) {
  if (!tile.player || !tile.stream) return;
  const want = wantedHeight(tile);
  const have = tile.player.maxHeight;
  const a = layerFor(tile.stream, want);
  const b = layerFor(tile.stream, have);
  const differs = a !== null && b !== null ? a !== b : Math.abs(want - have) / have > 0.25;
  if (differs) restartPlayer(tile, 0);
}

async function startPlayer(tile) {
  if (!tile.stream || !S.welcome) return;
  clearTimeout(tile.retryTimer);
  tile.retryTimer = null;
  const stream = tile.stream;
  const maxHeight = wantedHeight(tile);
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  const remote = new MediaStream();
  const player = { pc, stream: remote, name: stream, media: null, maxHeight, state: 'connecting', startedAt: performance.now(), lastFrames: 0, lastFramesAt: performance.now(), lastBytes: 0, lastBytesAt: performance.now() };
  tile.player = player;
  tile.state = 'connecting';
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (ev) => {
    remote.addTrack(ev.track);
    const v = tile.el && tile.el.querySelector('video');
    if (v && v.srcObject !== remote) {
      v.srcObject = remote;
      v.play().catch(() => {});
      // The first frame actually presented: what "sign-in to first picture" measures.
      if (v.requestVideoFrameCallback) v.requestVideoFrameCallback(() => { if (tile.player === player) noteFrame(tile); });
    }
  };
  pc.onconnectionstatechange = () => {
    if (tile.player !== player) return;
    if (pc.connectionState === 'failed' || pc.connectionState === 'closed') restartPlayer(tile);
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc, 2000);
    if (tile.player !== player) { pc.close(); return; }
    const r = await sig.request({ type: 'subscribe', stream, maxHeight, sdp: pc.localDescription.sdp }, 15000);
    if (tile.player !== player) { sig.request({ type: 'media_close', media: r.media }).catch(() => {}); pc.close(); return; }
    player.media = r.media;
    await pc.setRemoteDescription({ type: 'answer', sdp: r.sdp });
    const v = tile.el && tile.el.querySelector('video');
    if (v && v.srcObject !== remote) v.srcObject = remote;
  } catch (e) {
    if (tile.player !== player) return;
    tile.state = e.code === 'not_found' ? 'offline' : 'error';
    tile.error = e.message;
    restartPlayer(tile);
  }
}

function stopPlayer(tile) {
  clearTimeout(tile.retryTimer);
  tile.retryTimer = null;
  const p = tile.player;
  tile.player = null;
  tile.stats = null;
  if (!p) return;
  if (p.media && sig) sig.request({ type: 'media_close', media: p.media }).catch(() => {});
  try { p.pc.close(); } catch (_) { /* closed */ }
  const v = tile.el && tile.el.querySelector('video');
  if (v) v.srcObject = null;
}

/** Reconnects a tile's player after `delay` ms (default: a growing backoff, at most 8 s). */
function restartPlayer(tile, delay) {
  const stream = tile.stream;
  stopPlayer(tile);
  tile.stream = stream;
  tile.attempts = (tile.attempts || 0) + 1;
  const wait = delay ?? Math.min(8000, 500 * 2 ** Math.min(4, tile.attempts - 1));
  tile.retryTimer = setTimeout(() => { tile.retryTimer = null; if (tile.stream === stream) startPlayer(tile); }, wait);
  renderTiles();
}

/** Per-tile statistics from getStats() and getVideoPlaybackQuality(), once a second. */
async function pollTiles() {
  const now = performance.now();
  await Promise.all(S.tiles.map(async (tile, i) => {
    const p = tile.player;
    if (!p) { tile.stats = null; return; }
    let st = { framesDecoded: 0, frameWidth: 0, frameHeight: 0, bytesReceived: 0, packetsReceived: 0 };
    try {
      (await p.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          st.framesDecoded += s.framesDecoded || 0;
          st.frameWidth = Math.max(st.frameWidth, s.frameWidth || 0);
          st.frameHeight = Math.max(st.frameHeight, s.frameHeight || 0);
          st.bytesReceived += s.bytesReceived || 0;
          st.packetsReceived += s.packetsReceived || 0;
        } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
          st.bytesReceived += s.bytesReceived || 0;
        }
      });
    } catch (_) { return; }
    const v = tile.el && tile.el.querySelector('video');
    const q = v && v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    st.totalVideoFrames = q ? q.totalVideoFrames : 0;
    const dt = (now - p.lastBytesAt) / 1000;
    st.kbps = dt > 0 ? Math.round(((st.bytesReceived - p.lastBytes) * 8) / 1000 / dt) : 0;
    p.lastBytes = st.bytesReceived;
    p.lastBytesAt = now;
    if (st.framesDecoded > p.lastFrames) { p.lastFrames = st.framesDecoded; p.lastFramesAt = now; if (st.framesDecoded > 0) { noteFrame(tile); tile.attempts = 0; } }
    st.stalled = p.lastFrames > 0 && now - p.lastFramesAt > 2000;
    const silentFor = now - (p.lastFrames > 0 ? p.lastFramesAt : p.startedAt);
    tile.state = st.stalled ? 'stalled' : p.lastFrames > 0 ? 'playing' : 'connecting';
    st.maxHeight = p.maxHeight;
    tile.stats = st;
    // No frames for 8 s (or never within 12 s): the session is dead; subscribe again.
    if ((p.lastFrames > 0 && silentFor > 8000) || (p.lastFrames === 0 && silentFor > 12000)) restartPlayer(tile);
    renderTile(i);
  }));
}
setInterval(pollTiles, 1000);

function fmtKbps(k) {
  return k >= 1000 ? `${(k / 1000).toFixed(1)} Mbit/s` : `${k} kbit/s`;
}

/** camera, drone or fixed: drones by name (`SUBJECT-droneN`) or telemetry, else the catalog's kind. */
function streamKind(name) {
  if (/-drone\d+$/.test(name) || S.drones.has(name)) return 'drone';
  const s = S.streams.get(name);
  return (s && s.kind) || 'camera';
}

function renderTiles() {
  S.tiles.forEach((_, i) => renderTile(i));
}

function renderTile(i) {
  const tile = S.tiles[i];
  if (!tile || !tile.el) return;
  const root = tile.el;
  const s = tile.stream ? S.streams.get(tile.stream) : null;
  root.dataset.stream = tile.stream || '';
  root.dataset.state = tile.stream ? tile.state || 'connecting' : 'empty';
  root.dataset.pinned = tile.pinned ? 'true' : 'false';
  root.querySelector('.tile-empty').hidden = !!tile.stream;
  const unit = s ? S.units.get(s.owner) : null;
  const kind = tile.stream ? streamKind(tile.stream) : 'camera';
  const incs = unit && unit.incidents && unit.incidents.length ? ` · ${unit.incidents.join(',')}` : '';
  root.querySelector('.tile-label').textContent = tile.stream ? `${tile.stream} · ${t('kind_' + kind)}${incs}` : '';
  const st = tile.stats;
  root.querySelector('.tile-bitrate').textContent = st ? `${fmtKbps(st.kbps)} · ${st.frameWidth}×${st.frameHeight}` : '';
  root.querySelector('.tile-bitrate').dataset.kbps = st ? st.kbps : 0;
  root.querySelector('.tile-stalled').hidden = !(st && st.stalled);
  root.querySelector('.tile-state').textContent = !tile.stream ? '' : tile.state === 'offline' || tile.retryTimer ? t('tile_offline') : tile.state === 'connecting' ? t('tile_connecting') : '';
  const pin = root.querySelector('[data-testid=tile-pin]');
  pin.textContent = tile.pinned ? t('tile_unpin') : t('tile_pin');
  pin.classList.toggle('on', tile.pinned);
  root.querySelector('[data-testid=tile-max]').textContent = S.layout === '1' && S.saved ? t('tile_restore') : t('tile_max');
  const pick = root.querySelector('[data-testid=tile-pick]');
  const names = [...S.streams.keys()].sort();
  if (tile.stream && !names.includes(tile.stream)) names.unshift(tile.stream);
  const sig2 = names.join('|') + '#' + (tile.stream || '') + '#' + getLang();
  if (pick.dataset.sig !== sig2) {
    pick.dataset.sig = sig2;
    pick.replaceChildren(el('option', { value: '', text: t('tile_none') }), ...names.map((n) => el('option', { value: n, text: n, selected: n === tile.stream })));
  }
  renderOverlay(i, kind === 'drone' ? tile.stream : null);
}

// ---------------------------------------------------------------------------------------------
// Drone overlay

function renderDrones(name) {
  S.tiles.forEach((tile, i) => { if (tile.stream === name) renderTile(i); });
}

const num = (x, d = 1) => (typeof x === 'number' && isFinite(x) ? x.toFixed(d) : '—');

function renderOverlay(i, name) {
  const box = S.tiles[i].el.querySelector('.drone-overlay');
  if (!name) { box.hidden = true; box.replaceChildren(); return; }
  const d = drone(name);
  const tm = d.t;
  box.hidden = false;
  box.dataset.drone = name;
  const link = d.link || (S.units.get(name) && S.units.get(name).link) || null;
  const field = (id, label, value) => el('span', { class: 'df', 'data-testid': `drone-${id}`, 'data-value': value }, el('small', { text: label }), ' ', value);
  const allowed = may.droneCommand(S.role, S.subject || '', name, S.grants.drones);
  const last = [...S.commands.entries()].filter(([, c]) => c.drone === name).pop();
  // replaceChildren, unlike el(), would print a null child as the text "null".
  box.replaceChildren(...[
    el('div', { class: 'drow' },
      field('alt', t('drone_alt'), `${num(tm.alt_rel)} m`),
      field('speed', t('drone_speed'), `${num(tm.ground_speed)} m/s`),
      field('heading', t('drone_heading'), `${num(tm.heading, 0)}°`),
      field('battery', t('drone_battery'), `${num(tm.battery_pct, 0)}%`)),
    el('div', { class: 'drow' },
      field('mode', t('drone_mode'), tm.mode || '—'),
      field('armed', '', tm.armed === undefined ? '—' : tm.armed ? t('drone_armed') : t('drone_disarmed')),
      field('link', '', link === 'lost' ? t('drone_link_lost') : link === 'up' ? t('drone_link_up') : '—')),
    allowed
      ? el('div', { class: 'drow cmds' },
          ...['rtl', 'hold', 'land', 'guided'].map((c) => el('button', { 'data-testid': `drone-cmd-${c}`, text: t('cmd_' + c), onclick: () => droneCommand(name, c) })),
          last ? el('span', { class: 'ack', 'data-testid': 'drone-ack', 'data-cmd': last[0], 'data-result': last[1].result || 'sent', text: `${last[0]}: ${last[1].result ? (last[1].result === 'refused' ? t('cmd_refused') : last[1].result) + (last[1].text ? ' ' + last[1].text : '') : t('cmd_sent')}` }) : null)
      : null,
  ].filter((k) => k !== null));
  box.dataset.alt = tm.alt_rel ?? '';
}

async function droneCommand(name, command) {
  const d = drone(name);
  const ok = await confirmDialog(t('cmd_confirm', { drone: name, cmd: t('cmd_' + command) }), command === 'guided' ? d.t : null);
  if (!ok) return;
  const msg = { type: 'drone_command', drone: name, command };
  if (command === 'guided') Object.assign(msg, ok.target);
  try {
    const r = await sig.request(msg);
    S.commands.set(r.cmd, { drone: name, command, result: null });
  } catch (e) {
    S.commands.set(`err-${Date.now()}`, { drone: name, command, result: 'refused', text: e.message });
  }
  renderDrones(name);
}

function confirmDialog(text, target) {
  const dlg = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-target').hidden = !target;
  if (target) {
    $('confirm-lat').value = target.lat ?? '';
    $('confirm-lon').value = target.lon ?? '';
    $('confirm-alt').value = target.alt_rel ?? 30;
  }
  return new Promise((resolve) => {
    dlg.onclose = () => {
      if (dlg.returnValue !== 'ok') return resolve(null);
      if (!target) return resolve({});
      const v = (id) => parseFloat($(id).value);
      const tgt = { lat: v('confirm-lat'), lon: v('confirm-lon'), alt: v('confirm-alt') };
      resolve(Object.values(tgt).every((x) => isFinite(x)) ? { target: tgt } : null);
    };
    dlg.returnValue = '';
    dlg.showModal();
  });
}

// ---------------------------------------------------------------------------------------------
// Catalog list

function renderCatalog() {
  const ul = $('catalog-list');
  const all = [...S.streams.values()];
  if (!all.length) { ul.replaceChildren(el('li', { class: 'muted', text: t('no_streams') })); return; }
  const item = (s) => el('li', {
    draggable: 'true', 'data-testid': 'catalog-item', 'data-stream': s.name, 'data-remote': s.remote ? 'true' : 'false', title: s.owner || s.name,
    ondragstart: (e) => e.dataTransfer.setData('text/plain', s.name),
    onclick: () => { const i = S.tiles.findIndex((x) => !x.pinned); assign(i < 0 ? 0 : i, s.name, true); },
  }, `${s.remote ? s.stream : s.name}`, el('small', { class: 'muted', text: ` ${t('kind_' + streamKind(s.name))}` }));
  // This node's streams, newest first; then other nodes' streams, nearest node first, under a
  // heading per node.
  const items = all.filter((s) => !s.remote).sort((a, b) => (b.started_unix_ms || 0) - (a.started_unix_ms || 0)).map(item);
  const remote = all.filter((s) => s.remote).sort((a, b) => (a.cost - b.cost) || a.node.localeCompare(b.node) || a.stream.localeCompare(b.stream));
  let node = null;
  for (const s of remote) {
    if (s.node !== node) {
      node = s.node;
      const n = remote.filter((x) => x.node === node).length;
      items.push(el('li', { class: 'catalog-node', 'data-testid': 'catalog-node', 'data-node': node, text: t('node_streams', { node, n }) }));
    }
    items.push(item(s));
  }
  ul.replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------
// Map

// fitted: the subjects the view was last fitted to; fitting: a fit of ours is moving the map;
// moved: the operator moved or zoomed the map, so it is no longer fitted to the units.
const M = { map: null, layer: null, grid: null, markers: new Map(), tracks: new Map(), gcj: false, fitted: '', fitting: false, moved: false };

function initMap() {
  if (M.map) return;
  const L = window.L;
  if (!L) { $('map-note').dataset.state = 'no-lib'; renderMapNote(); return; }
  // Tiles only from the node's config: a link must not be able to point the wall elsewhere.
  const cfg = S.config.tiles;
  const url = cfg && cfg.url;
  const coords = (cfg && cfg.coords) || 'wgs84';
  M.gcj = coords === 'gcj02';
  M.map = L.map('map', { zoomControl: true, attributionControl: !!url, preferCanvas: false }).setView(S.config.center, S.config.zoom);
  if (url) {
    L.tileLayer(url, { maxZoom: (cfg && cfg.max_zoom) || 18, attribution: (cfg && cfg.attribution) || '', subdomains: (cfg && cfg.subdomains) || 'abc' }).addTo(M.map);
    $('map-note').textContent = '';
    $('map-note').dataset.state = M.gcj ? 'tiles-gcj02' : 'tiles';
  } else {
    $('map-note').dataset.state = 'grid';
    renderMapNote();
  }
  M.grid = L.layerGroup().addTo(M.map);
  if (!url) { M.map.on('moveend zoomend', drawGrid); drawGrid(); }
  // Any move or zoom that is not one of our fits is the operator's (drag, wheel, buttons, keys).
  M.map.on('movestart zoomstart', () => { if (!M.fitting) M.moved = true; });
  renderUnits();
}

function renderMapNote() {
  const st = $('map-note').dataset.state;
  $('map-note').textContent = st === 'grid' ? t('map_grid') : st === 'no-lib' ? t('map_no_lib') : '';
}

function drawGrid() {
  const L = window.L;
  const b = M.map.getBounds();
  const step = gridStep(Math.max(b.getNorth() - b.getSouth(), 1e-6));
  M.grid.clearLayers();
  const fix = (x) => +x.toFixed(6);
  const w = b.getWest(), e = b.getEast(), s = b.getSouth(), n = b.getNorth();
  for (let lat = Math.ceil(s / step) * step; lat <= n; lat += step) {
    L.polyline([[lat, w], [lat, e]], { color: '#3a4654', weight: 1, interactive: false }).addTo(M.grid);
    L.marker([lat, w], { interactive: false, icon: L.divIcon({ className: 'grid-label', html: `${fix(lat)}°`, iconSize: null }) }).addTo(M.grid);
  }
  for (let lon = Math.ceil(w / step) * step; lon <= e; lon += step) {
    L.polyline([[s, lon], [n, lon]], { color: '#3a4654', weight: 1, interactive: false }).addTo(M.grid);
    L.marker([s, lon], { interactive: false, icon: L.divIcon({ className: 'grid-label', html: `${fix(lon)}°`, iconSize: null }) }).addTo(M.grid);
  }
}

/** Where a WGS-84 position is drawn on the configured tiles. */
function mapPoint(lat, lon) {
  return M.gcj ? wgs84ToGcj02(lat, lon) : [lat, lon];
}

/** Everything with a position: officers (units) and drones (telemetry or drone units). */
function positioned() {
  const out = new Map();
  const now = Date.now();
  for (const u of S.units.values()) {
    if (!u.position || typeof u.position.lat !== 'number') continue;
    if (CONSOLE.includes(u.role) && u.kind !== 'drone') continue;
    const isDrone = u.kind === 'drone';
    const time = u.position.time || u.last_seen || 0;
    out.set(u.subject, { subject: u.subject, kind: isDrone ? 'drone' : 'officer', lat: u.position.lat, lon: u.position.lon, stale: !u.online || now - time > STALE_MS });
  }
  for (const [name, d] of S.drones) {
    if (typeof d.t.lat !== 'number') continue;
    const time = d.t.time || d.time;
    out.set(name, { subject: name, kind: 'drone', lat: d.t.lat, lon: d.t.lon, stale: d.link === 'lost' || now - time > STALE_MS });
  }
  return out;
}

function renderUnits() {
  renderOrderTargets();
  S.tiles.forEach((_, i) => renderTile(i));
  if (!M.map) return;
  const L = window.L;
  const items = positioned();
  for (const [k, m] of M.markers) if (!items.has(k)) { m.remove(); M.markers.delete(k); }
  for (const it of items.values()) {
    const ll = mapPoint(it.lat, it.lon);
    const html = `<div class="mk ${it.kind}${it.stale ? ' stale' : ''}" data-testid="marker-${it.subject}" data-subject="${it.subject}" data-kind="${it.kind}" data-lat="${it.lat}" data-lon="${it.lon}" data-map-lat="${ll[0]}" data-map-lon="${ll[1]}" data-stale="${it.stale}"><i></i><span>${it.subject}</span></div>`;
    let m = M.markers.get(it.subject);
    if (!m) {
      m = L.marker(ll, { icon: L.divIcon({ className: 'mk-wrap', html, iconSize: null }), title: it.subject });
      m.on('click', () => openStreamOf(it.subject));
      m.addTo(M.map);
      M.markers.set(it.subject, m);
    } else {
      m.setLatLng(ll);
      if (m._yiwangHtml !== html) m.setIcon(L.divIcon({ className: 'mk-wrap', html, iconSize: null }));
    }
    m._yiwangHtml = html;
  }
  for (const [name, d] of S.drones) {
    if (d.track.length < 2) continue;
    const pts = d.track.map(([a, b]) => mapPoint(a, b));
    let line = M.tracks.get(name);
    if (!line) { line = L.polyline(pts, { color: '#f0883e', weight: 2, className: `track track-${name}` }).addTo(M.map); M.tracks.set(name, line); }
    else line.setLatLngs(pts);
  }
  fitUnits(items);
}

/**
 * Until the operator moves the map, keeps every unit in view: fits the view to all of them when
 * one appears or goes, or when one leaves the view (units arrive one by one: the drones'
 * telemetry, the units list). Without animation, so the moves it makes are told from the
 * operator's.
 */
function fitUnits(items) {
  if (M.moved || !items.size) return;
  const pts = [...items.values()].map((it) => mapPoint(it.lat, it.lon));
  const who = [...items.keys()].sort().join('\n');
  const view = M.map.getBounds();
  if (who === M.fitted && pts.every((p) => view.contains(p))) return;
  M.fitted = who;
  M.fitting = true;
  try {
    if (pts.length === 1) M.map.setView(pts[0], 15, { animate: false });
    else M.map.fitBounds(pts, { padding: [30, 30], maxZoom: 16, animate: false });
  } finally {
    M.fitting = false;
  }
}

/** A marker was clicked: show the subject's stream (its own name, or one it owns). */
function openStreamOf(subject) {
  const s = S.streams.get(subject) || [...S.streams.values()].find((x) => x.owner === subject);
  if (!s) return;
  const at = S.tiles.findIndex((x) => x.stream === s.name);
  if (at >= 0) { maximise(at); return; }
  const i = S.tiles.findIndex((x) => !x.pinned);
  assign(i < 0 ? 0 : i, s.name, true);
}

// ---------------------------------------------------------------------------------------------
// Incident panel

function renderIncidents() {
  const sel = $('incident');
  sel.replaceChildren(...S.incidents.map((i) => el('option', { value: i, text: i, selected: i === S.incident })));
}

function renderChat() {
  const ul = $('chat-list');
  const items = S.chats.filter((c) => c.incident === S.incident || (!c.incident && (c.to === S.subject || c.from === S.subject)));
  ul.replaceChildren(...items.slice(-200).map((c) => el('li', { 'data-testid': 'chat-item', 'data-from': c.from },
    el('small', { class: 'muted', text: `${new Date(c.time).toLocaleTimeString(locale())} ` }), el('b', { text: c.from }), `: ${c.text}`)));
  ul.scrollTop = ul.scrollHeight;
}

function orderLine(o) {
  const state = t('order_' + (o.state || 'sent'));
  const eta = o.state === 'accepted' && o.eta_min !== undefined && o.eta_min !== null ? ` · ${t('eta')} ${o.eta_min} ${t('minutes')}` : '';
  const reason = o.reason ? ` · ${t('reason')}: ${o.reason}` : '';
  return `${state}${eta}${reason}`;
}

function renderOrders() {
  const ul = $('order-list');
  const list = [...S.orders.values()].filter((o) => !o.incident || o.incident === S.incident).sort((a, b) => (b.sent_at || 0) - (a.sent_at || 0));
  ul.replaceChildren(...list.slice(0, 200).map((o) => el('li', {
    'data-testid': 'order-item', 'data-order': o.id, 'data-state': o.state || 'sent', 'data-eta': o.eta_min ?? '', class: `order ${o.state || 'sent'}`,
  }, el('b', { text: `${o.id} → ${o.to || ''}` }), ` ${o.text || ''} `, el('span', { class: 'order-state', 'data-testid': 'order-state', text: orderLine(o) }))));
}

function renderOrderTargets() {
  const dl = $('order-to-list');
  if (!dl) return;
  const subs = [...S.units.values()].filter((u) => u.kind !== 'drone' && !CONSOLE.includes(u.role) && u.subject !== S.subject).map((u) => u.subject).sort();
  const sig2 = subs.join('|');
  if (dl.dataset.sig === sig2) return;
  dl.dataset.sig = sig2;
  dl.replaceChildren(...subs.map((s) => el('option', { value: s })));
}

function renderLog() {
  const l = S.log.get(S.incident);
  const ul = $('log-list');
  if (!l) { ul.replaceChildren(); return; }
  ul.replaceChildren(...l.entries.slice(-300).reverse().map((e) => el('li', { 'data-testid': 'log-item', 'data-what': e.what, 'data-seq': e.seq },
    el('small', { class: 'muted', text: `#${e.seq} ${new Date(e.time).toLocaleTimeString(locale())} ` }), el('b', { text: e.who }), ` ${e.what}`,
    e.detail ? el('small', { class: 'muted', text: ` ${JSON.stringify(e.detail)}` }) : null)));
}

/** The locale for times and numbers: the UI's language. */
const locale = () => (getLang() === 'zh' ? 'zh-CN' : 'en-GB');

function panelError(e) {
  const p = $('panel-error');
  p.hidden = !e;
  p.textContent = e ? `${t('error')}: ${e.message || e}` : '';
}

let msgN = 0;
const msgId = (k) => `wall-${S.subject}-${k}-${Date.now().toString(36)}-${(msgN++).toString(36)}`;

async function sendChat(ev) {
  ev.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text) return;
  try {
    const r = await sig.request({ type: 'chat', msg_id: msgId('c'), incident: S.incident, text });
    S.chats.push({ kind: 'chat', id: r.item, from: S.subject, incident: S.incident, text, time: r.time });
    input.value = '';
    panelError(null);
    renderChat();
  } catch (e) { panelError(e); }
}

async function sendOrder(ev) {
  ev.preventDefault();
  const to = $('order-to').value.trim();
  const text = $('order-text').value.trim();
  if (!to || !text) return;
  try {
    const r = await sig.request({ type: 'order', msg_id: msgId('o'), incident: S.incident, to, text });
    S.orders.set(r.order.id, { ...(S.orders.get(r.order.id) || {}), ...r.order });
    $('order-text').value = '';
    panelError(null);
    renderOrders();
  } catch (e) { panelError(e); }
}

// ---------------------------------------------------------------------------------------------
// SOS: a banner and a tone until acknowledged

let audio = null;
function renderSos() {
  const list = [...S.sos.values()].sort((a, b) => b.time - a.time);
  const banner = $('sos');
  banner.hidden = list.length === 0;
  window.wall.sosSounding = list.length > 0;
  if (list.length) {
    const s = list[0];
    const pos = s.position ? ` (${s.position.lat.toFixed(5)}, ${s.position.lon.toFixed(5)})` : '';
    $('sos-text').textContent = `${t('sos_from')} ${s.from}${s.text ? ': ' + s.text : ''}${pos}${list.length > 1 ? ` (+${list.length - 1})` : ''}`;
    banner.dataset.sos = s.sos;
    banner.dataset.from = s.from;
    beep(true);
  } else {
    beep(false);
  }
  $('sos-ack').hidden = !may.sosAck(S.role);
}

function beep(on) {
  if (!on) { if (audio) { clearInterval(audio.timer); audio.ctx.close().catch(() => {}); audio = null; } return; }
  if (audio) return;
  try {
    const ctx = new AudioContext();
    const tone = () => {
      const o = ctx.createOscillator();
      const g = ctx.createGain();
      o.frequency.value = 880;
      g.gain.value = 0.2;
      o.connect(g).connect(ctx.destination);
      o.start();
      o.stop(ctx.currentTime + 0.4);
    };
    tone();
    audio = { ctx, timer: setInterval(tone, 1200) };
  } catch (_) { /* no audio device */ }
}

async function ackSos() {
  const id = $('sos').dataset.sos;
  if (!id) return;
  try {
    await sig.request({ type: 'sos_ack', sos: id });
    S.sos.delete(id);
    renderSos();
  } catch (e) {
    if (e.code === 'not_found') { S.sos.delete(id); renderSos(); } else panelError(e);
  }
}

// ---------------------------------------------------------------------------------------------
// Rights in the UI

function applyRights() {
  const r = S.role;
  $('chat-form').hidden = !may.chat(r);
  $('order-form').hidden = !may.order(r);
  $('sos-ack').hidden = !may.sosAck(r);
  document.body.dataset.role = r;
}

// ---------------------------------------------------------------------------------------------
// Wiring

window.wall = {
  ready: false,
  sosSounding: false,
  get role() { return S.role; },
  get subject() { return S.subject; },
  get layout() { return S.layout; },
  get lang() { return getLang(); },
  get signinAt() { return S.signinAt; },
  get firstFrameAt() { return S.firstFrameAt; },
  /** One entry per visible tile: stream, state, pinned and the latest getStats() figures. */
  tileStats() {
    return S.tiles.map((x, i) => ({ index: i, stream: x.stream, pinned: x.pinned, state: x.stream ? x.state : 'empty', firstFrameMs: x.firstFrameAt !== null && S.signinAt !== null ? x.firstFrameAt - S.signinAt : null, ...(x.stats || {}) }));
  },
  /** The stream list as shown: {stream, remote, node} per item, node headings as {heading}. */
  catalog() {
    return [...document.querySelectorAll('#catalog-list li')].map((li) => (li.dataset.testid === 'catalog-node'
      ? { heading: li.dataset.node, text: li.textContent }
      : { stream: li.dataset.stream, remote: li.dataset.remote === 'true', text: li.textContent }));
  },
  /** The trunk status chip: {hidden, state, up, text}. */
  trunks() {
    const e = $('trunks');
    return { hidden: e.hidden, state: e.dataset.state || null, up: Number(e.dataset.up || 0), text: e.textContent };
  },
  /** Sum of every tile's received kbit/s over the last second. */
  pageKbps() { return S.tiles.reduce((a, x) => a + ((x.stats && x.stats.kbps) || 0), 0); },
  markers() { return [...positioned().values()].map((it) => { const ll = mapPoint(it.lat, it.lon); return { ...it, mapLat: ll[0], mapLon: ll[1] }; }); },
  orders() { return [...S.orders.values()]; },
  setLayout,
  maximise(stream) { const i = S.tiles.findIndex((x) => x.stream === stream); if (i >= 0) maximise(i); return i; },
  restore,
  assign(i, stream) { assign(i, stream, true); },
};

function keydown(e) {
  const tag = (e.target && e.target.tagName) || '';
  if (['INPUT', 'TEXTAREA', 'SELECT'].includes(tag) || !S.welcome || e.ctrlKey || e.metaKey || e.altKey) return;
  if (KEYS[e.key]) { S.saved = null; setLayout(KEYS[e.key]); e.preventDefault(); }
  else if (e.key === 'f' || e.key === 'F') { maximise(S.hover ?? 0); e.preventDefault(); }
  else if (e.key === 'Escape') { restore(); }
}

async function loadConfig() {
  try {
    // The tile settings (a tile URL may carry a provider key) come only with a token.
    const r = await fetch('/api/wall/config', S.token ? { headers: { Authorization: `Bearer ${S.token}` } } : {});
    if (r.ok) Object.assign(S.config, await r.json());
  } catch (_) { /* defaults */ }
}

async function main() {
  initLang();
  translate(document);
  for (const b of document.querySelectorAll('.lang-switch')) b.addEventListener('click', () => { setLang(getLang() === 'zh' ? 'en' : 'zh'); renderHeader(); renderTrunks(); renderTiles(); renderOrders(); renderCatalog(); renderSos(); renderMapNote(); renderChat(); renderLog(); });
  for (const b of document.querySelectorAll('#layouts button')) b.addEventListener('click', () => { S.saved = null; setLayout(b.dataset.layout); });
  for (const b of document.querySelectorAll('.tabs button')) b.addEventListener('click', () => {
    for (const x of document.querySelectorAll('.tabs button')) x.classList.toggle('on', x === b);
    for (const tab of ['chat', 'orders', 'log']) $(`tab-${tab}`).hidden = tab !== b.dataset.tab;
  });
  $('incident').addEventListener('change', (e) => { S.incident = e.target.value; renderChat(); renderOrders(); renderLog(); refreshLog(); });
  $('chat-form').addEventListener('submit', sendChat);
  $('order-form').addEventListener('submit', sendOrder);
  $('sos-ack').addEventListener('click', ackSos);
  $('signout').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); if (sig) sig.bye(); teardown(); showSignin(null); });
  $('signin-form').addEventListener('submit', (e) => { e.preventDefault(); signIn($('signin-token').value); });
  document.addEventListener('keydown', keydown);
  window.addEventListener('pagehide', () => { if (sig) sig.bye(); });

  // ?token= once: kept in this tab's sessionStorage, dropped from the address bar.
  const q = new URLSearchParams(location.search);
  if (q.get('token')) {
    sessionStorage.setItem(TOKEN_KEY, q.get('token'));
    q.delete('token');
    history.replaceState(null, '', location.pathname + (q.toString() ? '?' + q : ''));
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token); else showSignin(null);
}

main();
