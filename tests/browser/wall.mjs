#!/usr/bin/env node
// Step driver for the video wall (web/index.html), called by the Rust test suite.
//
//   node wall.mjs --base http://127.0.0.1:PORT [--chromium /usr/bin/chromium] [--timeout-ms 300000]
//
// Launches Debian's chromium (headless, through playwright-core, viewport 1600×900) and then reads
// one JSON command per line on stdin, answering each with exactly one JSON line on stdout:
// {"ok":true,...result} or {"ok":false,"error":"..."}. Every command is bounded by its own
// `timeoutMs` (default 30000). Progress goes to stderr. The browser closes at EOF or {"op":"quit"};
// a watchdog exits after --timeout-ms whatever happens.
//
// Commands (the page is the wall unless a command names another page):
//   {"op":"signin","token":T,"via":"paste"|"url"}   open / and sign in; waits for the wall (or a
//        refusal); -> {role, subject, signedIn, error:{reason,text}|null, ms}
//   {"op":"layout","key":"2"}              press a layout key (1..5) -> {layout, tiles}
//   {"op":"maximise","stream":S} / {"op":"restore"}
//   {"op":"waitTile","stream":S,"minFrames":60}  until that tile's <video> counts more than
//        minFrames frames (getVideoPlaybackQuality) -> the tile's stats (frameHeight, kbps, …)
//   {"op":"waitTileState","stream":S,"state":"stalled"}  until S's tile is in that data-state
//   {"op":"picture","stream":S,"pattern":"ball"|"smpte","frames":12}  `frames` frames of S's tile
//        <video>, 250 ms apart, must each show the pattern (tests/browser/picture.mjs; fails with
//        what the bad frame shows and its PNG under target/pictures/) -> {pattern, frames}
//   {"op":"tiles"}                         -> {tiles: window.wall.tileStats(), pageKbps}
//   {"op":"pageKbps","ms":4000}            mean page kbit/s (sum over tiles) over ms -> {kbps, samples}
//   {"op":"waitMarker","subject":S}        -> marker data-* (lat, lon, mapLat, mapLon, kind, stale)
//   {"op":"mapView"}                       -> {map: {width, height}, markers: {SUBJECT: {inside, x, y}}}:
//        where each marker's centre is on the map's box (x, y from its top left) and whether it is
//        inside it (what the operator sees without moving the map)
//   {"op":"sendOrder","to":S,"text":X}     fills the Orders tab form and submits -> {order: ORDER}
//   {"op":"waitOrder","order":ID,"state":"accepted"} -> {state, eta, text}
//   {"op":"waitSos"}                       -> {text, from, sos, sounding}
//   {"op":"ackSos"}                        -> {hidden}
//   {"op":"controls"}                      -> which controls are visible (orderForm, chatForm,
//        droneCommands, sosAck) and the number of tiles
//   {"op":"droneOverlay","stream":S,"alt":42.5,"altTol":1,"mode":"RTL"}  until the drone overlay on
//        S's tile shows (that relative altitude, within altTol m, default exactly; that flight mode)
//        -> its fields and the command buttons offered
//   {"op":"droneCommand","stream":S,"command":"rtl","confirm":true}  click, confirm -> {question, cmd, result}
//   {"op":"waitDroneAck","stream":S,"cmd":"dc-1","result":"accepted"}
//   {"op":"lang"}                          click the language switch -> {lang, title, htmlLang, signout, cjk: Chinese runs left on the wall}
//   {"op":"waitCatalog","stream":S}        until the stream list shows S -> {items: [{stream, remote,
//        text} | {heading: NODE, text}]} (other nodes' streams come under a heading per node)
//   {"op":"trunks","up":1,"state":"ok"}    until the trunk chip shows at least that many trunks up
//        (and that state, if given) -> {hidden, state ("ok" | "down"), up, text}
//   {"op":"pick","index":1,"stream":S}     choose S in tile 1's selector -> {stream, pinned}
//   {"op":"drag","stream":S,"index":2}     drag S from the stream list onto tile 2 -> {stream, pinned}
//   {"op":"clickMarker","subject":S}       -> {layout, tiles}
//   {"op":"log","what":["order","sos"]}    until the Log tab lists those entries -> {whats}
//   {"op":"sendChat","text":X} / {"op":"waitChat","from":S,"text":X}
//   {"op":"screenshot","path":P}           PNG of the wall page
//   {"op":"eval","js":"..."}               (diagnostics only) the value of an expression
//   {"op":"quit"}

import { chromium } from 'playwright-core';
import readline from 'node:readline';
import { expectPicture } from './picture.mjs';

const argv = process.argv.slice(2);
const arg = (name, dflt) => { const i = argv.indexOf(name); return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt; };
const base = (arg('--base', '') || '').replace(/\/+$/, '');
const exe = arg('--chromium', process.env.YIWANG_CHROMIUM || '/usr/bin/chromium');
const totalMs = parseInt(arg('--timeout-ms', '300000'), 10);
if (!base) { process.stdout.write(JSON.stringify({ ok: false, error: 'usage: --base URL' }) + '\n'); process.exit(2); }

const t0 = Date.now();
const note = (l) => console.error(`wall.mjs [${((Date.now() - t0) / 1000).toFixed(1)}s] ${String(l).replace(/(token=)[^&"'\s]+/g, '$1…')}`);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
setTimeout(() => { out({ ok: false, error: 'watchdog: driver ran past --timeout-ms' }); process.exit(1); }, totalMs).unref();

const browser = await chromium.launch({
  executablePath: exe,
  headless: true,
  timeout: 30000,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
    '--disable-background-timer-throttling', '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows',
    '--autoplay-policy=no-user-gesture-required', '--ignore-certificate-errors',
  ],
});
note(`browser ${browser.version()}`);
const context = await browser.newContext({ viewport: { width: 1600, height: 900 }, permissions: ['camera', 'microphone'], ignoreHTTPSErrors: true });
let page = null;

function wire(p, name) {
  p.on('console', (m) => { if (['error', 'warning'].includes(m.type())) note(`${name} console.${m.type()}: ${m.text()}`); });
  p.on('pageerror', (e) => note(`${name} pageerror: ${e.message}`));
}

/** Polls `fn` (an async function returning a value or null) every 250 ms until non-null. */
async function until(what, ms, fn) {
  const end = Date.now() + ms;
  let last = null;
  for (;;) {
    last = await fn();
    if (last !== null && last !== undefined && last !== false) return last;
    if (Date.now() > end) throw new Error(`timeout after ${ms} ms waiting for ${what}`);
    await sleep(250);
  }
}

const ops = {
  async signin({ token, via = 'paste', timeoutMs = 30000 }) {
    if (!page) { page = await context.newPage(); wire(page, 'wall'); }
    const started = Date.now();
    if (via === 'url') {
      await page.goto(`${base}/?token=${encodeURIComponent(token)}`, { waitUntil: 'domcontentloaded' });
    } else {
      await page.goto(`${base}/`, { waitUntil: 'domcontentloaded' });
      await page.evaluate(() => sessionStorage.clear());
      await page.goto(`${base}/`, { waitUntil: 'domcontentloaded' });
      await page.locator('[data-testid=signin-token]').fill(token);
      await page.locator('[data-testid=signin-submit]').click();
    }
    const r = await until('the wall or a sign-in refusal', timeoutMs, () => page.evaluate(() => {
      if (window.wall && window.wall.ready) return { signedIn: true };
      const e = document.querySelector('[data-testid=signin-error]');
      const reason = e && !e.hidden ? e.dataset.reason : null;
      if (reason && !['connecting', 'network'].includes(reason)) return { signedIn: false, error: { reason, text: e.textContent } };
      return null;
    }));
    const info = await page.evaluate(() => ({ secure: window.isSecureContext, role: window.wall.role, subject: window.wall.subject, lang: window.wall.lang, url: location.href, stored: !!sessionStorage.getItem('yiwang.token') }));
    return { ...r, ...info, error: r.error || null, ms: Date.now() - started };
  },
  async layout({ key }) {
    await page.locator('body').click({ position: { x: 5, y: 5 } }).catch(() => {});
    await page.keyboard.press(String(key));
    return page.evaluate(() => ({ layout: window.wall.layout, tiles: document.querySelectorAll('#tiles .tile').length }));
  },
  async maximise({ stream }) {
    const i = await page.evaluate((s) => window.wall.maximise(s), stream);
    return { index: i, layout: await page.evaluate(() => window.wall.layout) };
  },
  async restore() {
    await page.keyboard.press('Escape');
    return { layout: await page.evaluate(() => window.wall.layout) };
  },
  async waitTile({ stream, minFrames = 60, timeoutMs = 60000 }) {
    return until(`tile ${stream} past ${minFrames} frames`, timeoutMs, async () => {
      const ts = await page.evaluate(() => window.wall.tileStats());
      const tile = ts.find((x) => x.stream === stream);
      return tile && tile.totalVideoFrames > minFrames ? tile : null;
    });
  },
  async waitTileState({ stream, state, timeoutMs = 30000 }) {
    return until(`tile ${stream} ${state}`, timeoutMs, () => page.evaluate(({ stream, state }) => {
      const e = document.querySelector(`[data-testid^=tile-][data-stream="${stream}"]`);
      if (!e || e.dataset.state !== state) return null;
      return { state, stalledMark: !e.querySelector('[data-testid=tile-stalled]').hidden, stateText: e.querySelector('[data-testid=tile-state]').textContent };
    }, { stream, state }));
  },
  async picture({ stream, pattern, frames = 12 }) {
    const r = await expectPicture(page, `[data-testid^=tile-][data-stream="${stream}"] video`, pattern, { frames, name: `wall-${stream}` });
    if (!r.ok) throw new Error(`tile ${stream}: ${r.error}${r.png ? ` (${r.png})` : ''}`);
    return { pattern: r.pattern, frames: r.frames };
  },
  async tiles() {
    return page.evaluate(() => ({ tiles: window.wall.tileStats(), pageKbps: window.wall.pageKbps(), firstFrameMs: window.wall.firstFrameAt !== null ? window.wall.firstFrameAt - window.wall.signinAt : null }));
  },
  async pageKbps({ ms = 4000 }) {
    const samples = [];
    const end = Date.now() + ms;
    while (Date.now() < end) { await sleep(1000); samples.push(await page.evaluate(() => window.wall.pageKbps())); }
    return { kbps: Math.round(samples.reduce((a, b) => a + b, 0) / Math.max(1, samples.length)), samples };
  },
  async waitMarker({ subject, timeoutMs = 30000 }) {
    return until(`marker ${subject}`, timeoutMs, () => page.evaluate((s) => {
      const m = document.querySelector(`[data-testid="marker-${s}"]`);
      if (!m) return null;
      const d = m.dataset;
      return { lat: +d.lat, lon: +d.lon, mapLat: +d.mapLat, mapLon: +d.mapLon, kind: d.kind, stale: d.stale === 'true', visible: m.getBoundingClientRect().width > 0 };
    }, subject));
  },
  async mapView() {
    return page.evaluate(() => {
      const m = document.getElementById('map').getBoundingClientRect();
      const markers = {};
      for (const e of document.querySelectorAll('[data-testid^=marker-]')) {
        const b = e.querySelector('i').getBoundingClientRect();
        const x = b.left + b.width / 2 - m.left, y = b.top + b.height / 2 - m.top;
        markers[e.dataset.subject] = { inside: x >= 0 && x <= m.width && y >= 0 && y <= m.height, x: Math.round(x), y: Math.round(y) };
      }
      return { map: { width: Math.round(m.width), height: Math.round(m.height) }, markers };
    });
  },
  async sendOrder({ to, text, timeoutMs = 15000 }) {
    await page.locator('[data-testid=tab-orders]').click();
    const before = await page.evaluate(() => window.wall.orders().map((o) => o.id));
    await page.locator('[data-testid=order-to]').fill(to);
    await page.locator('[data-testid=order-text]').fill(text);
    await page.locator('[data-testid=order-send]').click();
    const order = await until('the new order in the panel', timeoutMs, () => page.evaluate(({ before, text }) => window.wall.orders().find((o) => !before.includes(o.id) && o.text === text) || null, { before, text }));
    return { order };
  },
  async waitOrder({ order, state, timeoutMs = 30000 }) {
    await page.locator('[data-testid=tab-orders]').click();
    return until(`order ${order} ${state}`, timeoutMs, () => page.evaluate(({ order, state }) => {
      const li = document.querySelector(`[data-testid=order-item][data-order="${order}"]`);
      if (!li || li.dataset.state !== state) return null;
      return { state: li.dataset.state, eta: li.dataset.eta === '' ? null : +li.dataset.eta, text: li.textContent, visible: li.getBoundingClientRect().height > 0 };
    }, { order, state }));
  },
  async waitSos({ timeoutMs = 30000 }) {
    return until('the SOS banner', timeoutMs, () => page.evaluate(() => {
      const b = document.querySelector('[data-testid=sos-banner]');
      if (!b || b.hidden) return null;
      return { text: b.textContent, from: b.dataset.from, sos: b.dataset.sos, sounding: window.wall.sosSounding, ackVisible: !document.querySelector('[data-testid=sos-ack]').hidden };
    }));
  },
  async ackSos({ timeoutMs = 15000 }) {
    await page.locator('[data-testid=sos-ack]').click();
    return until('the banner to go', timeoutMs, () => page.evaluate(() => (document.querySelector('[data-testid=sos-banner]').hidden ? { hidden: true, sounding: window.wall.sosSounding } : null)));
  },
  async controls() {
    return page.evaluate(() => {
      // Offered by the role (hidden attribute on the control itself), whichever panel tab is open.
      const vis = (sel) => { const e = document.querySelector(sel); return !!e && !e.hidden; };
      return {
        orderForm: vis('[data-testid=order-form]'),
        chatForm: vis('[data-testid=chat-form]'),
        sosAck: vis('[data-testid=sos-ack]'),
        droneCommands: document.querySelectorAll('[data-testid^=drone-cmd-]').length,
        tiles: document.querySelectorAll('#tiles .tile').length,
        playing: window.wall.tileStats().filter((x) => x.state === 'playing').length,
      };
    });
  },
  async droneOverlay({ stream, alt = null, altTol = 1e-6, mode = null, timeoutMs = 30000 }) {
    return until(`the drone overlay on ${stream}${alt !== null ? ' at ' + alt + ' m' : ''}${mode !== null ? ' in ' + mode : ''}`, timeoutMs, () => page.evaluate(({ stream, alt, altTol, mode }) => {
      const box = document.querySelector(`[data-testid^=tile-][data-stream="${stream}"] [data-testid=drone-overlay]`);
      if (!box || box.hidden) return null;
      if (alt !== null && (box.dataset.alt === '' || Math.abs(+box.dataset.alt - alt) > altTol)) return null;
      const f = (id) => { const e = box.querySelector(`[data-testid=drone-${id}]`); return e ? e.dataset.value : null; };
      if (mode !== null && f('mode') !== mode) return null;
      return { drone: box.dataset.drone, alt: box.dataset.alt === '' ? null : +box.dataset.alt, altText: f('alt'), speed: f('speed'), heading: f('heading'), battery: f('battery'), mode: f('mode'), armed: f('armed'), link: f('link'),
        commands: [...box.querySelectorAll('[data-testid^=drone-cmd-]')].map((b) => b.dataset.testid.slice('drone-cmd-'.length)) };
    }, { stream, alt, altTol, mode }));
  },
  async droneCommand({ stream, command, confirm = true, timeoutMs = 15000 }) {
    const box = page.locator(`[data-testid^=tile-][data-stream="${stream}"] [data-testid=drone-overlay]`);
    await box.locator(`[data-testid=drone-cmd-${command}]`).click();
    await page.locator('[data-testid=confirm]').waitFor({ state: 'visible', timeout: timeoutMs });
    const question = await page.locator('[data-testid=confirm-text]').textContent();
    await page.locator(confirm ? '[data-testid=confirm-ok]' : '[data-testid=confirm-cancel]').click();
    if (!confirm) return { question, sent: false };
    const ack = await until('the command id on the overlay', timeoutMs, () => page.evaluate((stream) => {
      const a = document.querySelector(`[data-testid^=tile-][data-stream="${stream}"] [data-testid=drone-ack]`);
      return a ? { cmd: a.dataset.cmd, result: a.dataset.result, text: a.textContent } : null;
    }, stream));
    return { question, sent: true, ...ack };
  },
  async waitDroneAck({ stream, cmd, result, timeoutMs = 15000 }) {
    return until(`ack ${result} for ${cmd}`, timeoutMs, () => page.evaluate(({ stream, cmd, result }) => {
      const a = document.querySelector(`[data-testid^=tile-][data-stream="${stream}"] [data-testid=drone-ack]`);
      return a && a.dataset.cmd === cmd && a.dataset.result === result ? { cmd, result, text: a.textContent } : null;
    }, { stream, cmd, result }));
  },
  async lang() {
    await page.locator('[data-testid=lang-switch]').click();
    return page.evaluate(() => ({ cjk: (document.querySelector('#wall').innerText.match(/[\u3400-\u9fff]+/g) || []), lang: window.wall.lang, title: document.title, htmlLang: document.documentElement.lang, signout: document.querySelector('[data-testid=signout]').textContent }));
  },
  async waitCatalog({ stream, timeoutMs = 30000 }) {
    return until(`${stream} in the stream list`, timeoutMs, async () => {
      const items = await page.evaluate(() => window.wall.catalog());
      return items.some((x) => x.stream === stream) ? { items } : null;
    });
  },
  async trunks({ up = 0, state = null, timeoutMs = 15000 }) {
    return until(`the trunk chip to show ${up} up${state ? `, ${state}` : ''}`, timeoutMs, async () => {
      const c = await page.evaluate(() => window.wall.trunks());
      return !c.hidden && c.up >= up && (!state || c.state === state) ? c : null;
    });
  },
  async pick({ index, stream }) {
    await page.locator(`[data-testid=tile-${index}] [data-testid=tile-pick]`).selectOption(stream);
    return page.evaluate((i) => { const e = document.querySelector(`[data-testid=tile-${i}]`); return { stream: e.dataset.stream, pinned: e.dataset.pinned === 'true' }; }, index);
  },
  async drag({ stream, index }) {
    await page.locator(`[data-testid=catalog-item][data-stream="${stream}"]`).dragTo(page.locator(`[data-testid=tile-${index}]`));
    return page.evaluate((i) => { const e = document.querySelector(`[data-testid=tile-${i}]`); return { stream: e.dataset.stream, pinned: e.dataset.pinned === 'true' }; }, index);
  },
  async clickMarker({ subject }) {
    await page.locator(`[data-testid="marker-${subject}"]`).click();
    return page.evaluate(() => ({ layout: window.wall.layout, tiles: window.wall.tileStats().map((t) => t.stream) }));
  },
  async log({ what = [], timeoutMs = 15000 }) {
    await page.locator('[data-testid=tab-log]').click();
    return until(`log entries ${what.join(', ')}`, timeoutMs, () => page.evaluate((what) => {
      const items = [...document.querySelectorAll('[data-testid=log-item]')].map((e) => e.dataset.what);
      return what.every((w) => items.includes(w)) ? { whats: items } : null;
    }, what));
  },
  async sendChat({ text }) {
    await page.locator('[data-testid=tab-chat]').click();
    await page.locator('[data-testid=chat-input]').fill(text);
    await page.locator('[data-testid=chat-send]').click();
    return until('the chat line', 15000, () => page.evaluate((text) => [...document.querySelectorAll('[data-testid=chat-item]')].some((e) => e.textContent.includes(text)) || null, text)).then(() => ({ sent: true }));
  },
  async waitChat({ from, text, timeoutMs = 30000 }) {
    await page.locator('[data-testid=tab-chat]').click();
    return until(`chat from ${from}`, timeoutMs, () => page.evaluate(({ from, text }) => {
      const e = [...document.querySelectorAll('[data-testid=chat-item]')].find((x) => x.dataset.from === from && x.textContent.includes(text));
      return e ? { text: e.textContent } : null;
    }, { from, text }));
  },
  async screenshot({ path }) {
    await page.screenshot({ path, fullPage: false });
    return { path };
  },
  async eval({ js }) {
    return { value: await page.evaluate(js) };
  },
};

const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
let quitting = false;
async function quit() {
  if (quitting) return;
  quitting = true;
  await Promise.race([browser.close(), sleep(10000)]).catch(() => {});
  process.exit(0);
}
rl.on('line', (line) => {
  chain = chain.then(async () => {
    let cmd;
    try { cmd = JSON.parse(line); } catch (e) { out({ ok: false, error: `bad JSON: ${e.message}` }); return; }
    if (cmd.op === 'quit') { out({ ok: true }); await quit(); return; }
    const fn = ops[cmd.op];
    if (!fn) { out({ ok: false, error: `unknown op ${cmd.op}` }); return; }
    note(`> ${cmd.op} ${cmd.stream || cmd.subject || cmd.key || ''}`);
    try {
      const r = await Promise.race([fn(cmd), sleep((cmd.timeoutMs || 30000) + 15000).then(() => { throw new Error(`${cmd.op} did not finish`); })]);
      out({ ok: true, ...r });
    } catch (e) {
      note(`! ${cmd.op}: ${e.message}`);
      out({ ok: false, error: String(e.message || e).replace(/\u001b\[[0-9;]*m/g, '').slice(0, 600) });
    }
  });
});
rl.on('close', () => { chain.then(quit); });
out({ ok: true, ready: true, browser: browser.version() });
