#!/usr/bin/env node
// Browser end-to-end driver for the yiwang node, called by the Rust test suite.
//
//   node run.mjs --base http://127.0.0.1:PORT --stream NAME --pub-token T --view-token T2 \
//                --codec vp8|h264 [--timeout-ms 60000] [--mode pubplay|play-only|publish-only|simulcast]
//
// Launches Debian's /usr/bin/chromium (headless, fake camera + microphone) through playwright-core,
// opens publish.html (WHIP) and then play.html (WHEP) as two pages, polls window.yiwang.stats()
// every 500 ms until the viewer decoded more than --min-frames frames (default 100) and received
// audio packets, or the deadline passes. Prints exactly ONE JSON line on stdout:
//
//   {"ok":true,"error":null,"mode":"pubplay","stream":"cam","requestedCodec":"vp8",
//    "negotiatedCodec":"vp8","publisherCodec":"vp8","elapsedMs":8123,
//    "publisher":{...},"viewer":{...},"log":[...]}
//
// negotiatedCodec is the viewer's inbound-rtp codec (codecId -> mimeType, lower-cased subtype:
// "vp8" | "h264"); publisherCodec the publisher's outbound-rtp codec. With --codec, both must
// equal it for ok. publisher/viewer hold window.yiwang state, error, httpStatus, session,
// deleteStatus and the stats() fields (publisher: framesEncoded, framesSent, packetsSentVideo,
// packetsSentAudio, codec; viewer: framesDecoded, frameWidth, frameHeight, audioPacketsReceived,
// videoPacketsReceived, codec, connectionState; plus diagnostics such as the ICE pair).
//
// --picture ball|smpte: once the viewer(s) decoded enough, 12 frames of each viewer's <video>,
// 250 ms apart, must show that pattern (tests/browser/picture.mjs); the JSON then has "picture"
// ({"viewer": r} or {"low": r, "high": r}, r = {ok, pattern, frames, error, png}) and ok requires
// every r.ok. --fake-video smpte: the publisher's fake camera plays SMPTE bars from a Y4M file
// (picture.mjs fakeCamera(), --width × --height) instead of Chromium's built-in green picture,
// whose all-zero chroma looks like missing slices; check its viewers with --picture smpte.
//
// and exits 0 when ok, 1 otherwise (2 on bad usage). Progress and diagnostics go to stderr.
// Every wait is bounded; a watchdog exits even if the browser hangs.
//
// --mode simulcast: opens publish.html?simulcast=1&width=W&height=H (default 1280x720; codec vp8
// unless --codec), waits (at most --layers-timeout-ms, default 20000, within the deadline) until
// the publisher's stats show >= 2 RID layers that are active and whose framesEncoded grows, then
// opens TWO viewers, play.html?layer=low and play.html?layer=high, and polls until both decoded
// more than --min-frames frames (audio is recorded but not required). The JSON then has
//   "viewers": {"low": {...stats}, "high": {...stats}}, "viewer": null,
//   "publisher": {..., "layers": [{rid, frameWidth, frameHeight, framesEncoded, bytesSent, active}]},
//   "widths": {"low": 320, "high": 1280, "lowSamples": [...], "highSamples": [...]},
//   "frameRatio": {"low": 1.0, "high": 1.0}
// and ok requires low width < high width. frameRatio is each viewer's framesDecoded growth over
// the last polls divided by the growth of the publisher's largest per-layer framesEncoded; ok
// also requires it to be <= 1.5 for both viewers, since a viewer fed ALL layers interleaved in
// one stream decodes ~3x the frames of one layer (what a node that accepts a=simulcast but
// does not select a layer does) and could still show ordered widths by chance. Chromium adapts resolution under CPU load (2 cores:
// the full layer often drops to 480-960 px wide and back), so a single sample can mislead:
// widths.high is the MAX frameWidth of the high viewer over the last 6 polls (~3 s) and
// widths.low the frameWidth of the low viewer at the last poll. When both decoded enough but
// the widths are not ordered yet, polling goes on for up to 5 s more (within the deadline) before
// failing with an error that names both widths. negotiatedCodec is the high viewer's codec.

import { chromium } from 'playwright-core';
import { expectPicture, fakeCamera, PATTERNS } from './picture.mjs';

const USAGE = `usage: node run.mjs --base URL --stream NAME [--pub-token T] [--view-token T2]
       [--codec vp8|h264] [--timeout-ms 60000] [--mode pubplay|play-only|publish-only|simulcast]
       [--min-frames 100] [--no-audio] [--width 1280] [--height 720] [--layers-timeout-ms 20000]
       [--web URL (where the pages are loaded from; default --base)] [--chromium /usr/bin/chromium]
       [--headed] [--cap-via IP:PORT (simulcast mode: the "low" viewer, on auto, receives via this relay)]
       [--picture ball|smpte (what the viewers' pictures must show)] [--fake-video smpte (the publisher's camera)]`;

function parseArgs(argv) {
  const o = {
    base: null,
    stream: null,
    pubToken: '',
    viewToken: '',
    codec: '',
    timeoutMs: 60000,
    mode: 'pubplay',
    minFrames: 100,
    capVia: null,
    layersTimeoutMs: 20000,
    audio: true,
    width: 1280,
    height: 720,
    web: null,
    chromium: process.env.YIWANG_CHROMIUM || '/usr/bin/chromium',
    headed: false,
    picture: null,
    fakeVideo: null,
  };
  const need = (i) => {
    if (i + 1 >= argv.length) throw new Error(`missing value for ${argv[i]}`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case '--base': o.base = need(i); i++; break;
      case '--stream': o.stream = need(i); i++; break;
      case '--pub-token': o.pubToken = need(i); i++; break;
      case '--view-token': o.viewToken = need(i); i++; break;
      case '--codec': o.codec = need(i).toLowerCase(); i++; break;
      case '--timeout-ms': o.timeoutMs = parseInt(need(i), 10); i++; break;
      case '--mode': o.mode = need(i); i++; break;
      case '--min-frames': o.minFrames = parseInt(need(i), 10); i++; break;
      case '--cap-via': o.capVia = need(i); i++; break;
      case '--layers-timeout-ms': o.layersTimeoutMs = parseInt(need(i), 10); i++; break;
      case '--no-audio': o.audio = false; break;
      case '--width': o.width = parseInt(need(i), 10); i++; break;
      case '--height': o.height = parseInt(need(i), 10); i++; break;
      case '--web': o.web = need(i); i++; break;
      case '--chromium': o.chromium = need(i); i++; break;
      case '--headed': o.headed = true; break;
      case '--picture': o.picture = need(i); i++; break;
      case '--fake-video': o.fakeVideo = need(i); i++; break;
      case '-h': case '--help': console.error(USAGE); process.exit(0); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!o.base) throw new Error('--base is required');
  if (!o.stream) throw new Error('--stream is required');
  if (!['pubplay', 'play-only', 'publish-only', 'simulcast'].includes(o.mode)) throw new Error(`bad --mode ${o.mode}`);
  if (o.codec && !['vp8', 'h264', 'vp9', 'av1'].includes(o.codec)) throw new Error(`bad --codec ${o.codec}`);
  if (!(o.timeoutMs > 0)) throw new Error('bad --timeout-ms');
  if (!(o.layersTimeoutMs > 0)) throw new Error('bad --layers-timeout-ms');
  if (o.picture !== null && !PATTERNS.includes(o.picture)) throw new Error(`bad --picture ${o.picture}`);
  if (o.fakeVideo !== null && o.fakeVideo !== 'smpte') throw new Error(`bad --fake-video ${o.fakeVideo}`);
  // Simulcast publishes VP8 unless told otherwise (publish.html's own default, made explicit here).
  if (o.mode === 'simulcast' && !o.codec) o.codec = 'vp8';
  o.base = o.base.replace(/\/+$/, '');
  o.web = (o.web || o.base).replace(/\/+$/, '');
  return o;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`run.mjs: ${e.message}\n${USAGE}`);
  process.stdout.write(JSON.stringify({ ok: false, error: `usage: ${e.message}` }) + '\n');
  process.exit(2);
}

const t0 = Date.now();
const deadline = t0 + opts.timeoutMs;
const elapsed = () => Date.now() - t0;
const log = []; // last console / page lines, for diagnostics in the JSON
/** Never print tokens; drop terminal colour codes from playwright messages. */
const redact = (t) => String(t).replace(/\u001b\[[0-9;]*m/g, '').replace(/(token=)[^&"'\s]+/g, '$1…').replace(/(Bearer )[A-Za-z0-9._~+\/=-]+/g, '$1…');
const note = (line) => {
  const l = redact(`[${(elapsed() / 1000).toFixed(1)}s] ${line}`);
  log.push(l);
  if (log.length > 60) log.shift();
  console.error(`run.mjs ${l}`);
};

const result = {
  ok: false,
  error: null,
  mode: opts.mode,
  stream: opts.stream,
  requestedCodec: opts.codec || null,
  negotiatedCodec: null,
  publisherCodec: null,
  elapsedMs: 0,
  publisher: null,
  viewer: null,
  log,
};
if (opts.mode === 'simulcast') {
  result.viewers = { low: null, high: null };
  result.widths = { low: null, high: null, lowSamples: [], highSamples: [] };
  result.frameRatio = { low: null, high: null };
}

let printed = false;
function finish(code) {
  if (printed) return;
  printed = true;
  result.elapsedMs = elapsed();
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = code;
}

// Watchdog: whatever happens in the browser, print and exit after timeout + 30 s.
const watchdog = setTimeout(() => {
  if (!result.error) result.error = 'watchdog: driver hung past --timeout-ms + 30 s';
  result.ok = false;
  finish(1);
  process.exit(1);
}, opts.timeoutMs + 30000);
watchdog.unref();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([
    p,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timeout after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** "video/H264;profile-level-id=..." -> "h264". */
function codecName(mime) {
  if (!mime) return null;
  const m = /^video\/([^;]+)/i.exec(mime);
  return m ? m[1].toLowerCase() : null;
}

/** window.yiwang snapshot from a page: state, error, stats (bounded). */
async function snapshot(page) {
  return withTimeout(
    page.evaluate(async () => {
      const y = window.yiwang;
      if (!y) return { state: 'no-yiwang', error: null };
      let stats = null;
      let statsError = null;
      try {
        stats = await y.stats();
      } catch (e) {
        statsError = String(e && e.message ? e.message : e);
      }
      return {
        state: y.state,
        error: y.error || null,
        httpStatus: y.httpStatus || null,
        session: y.session || null,
        preferredCodec: y.preferredCodec || null,
        iceGatheringComplete: y.iceGatheringComplete ?? null,
        statsError,
        ...(stats || {}),
      };
    }),
    5000,
    'page.evaluate(window.yiwang.stats())',
  );
}

function pageUrl(file, token, extra = {}) {
  const q = new URLSearchParams({ stream: opts.stream });
  if (token) q.set('token', token);
  if (file === 'publish.html') {
    if (opts.mode === 'simulcast') q.set('simulcast', '1');
    if (opts.codec) q.set('codec', opts.codec);
    q.set('width', String(opts.width));
    q.set('height', String(opts.height));
    if (!opts.audio) q.set('audio', '0');
  }
  if (opts.web !== opts.base) q.set('server', opts.base);
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return `${opts.web}/${file}?${q}`;
}

function wirePage(page, name) {
  page.on('console', (m) => {
    const t = m.type();
    if (t === 'error' || t === 'warning' || t === 'warn' || t === 'log' || t === 'info')
      note(`${name} console.${t}: ${m.text()}`);
  });
  page.on('pageerror', (e) => note(`${name} pageerror: ${e.message}`));
  page.on('requestfailed', (r) => note(`${name} requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText ?? ''}`));
  page.on('response', (r) => {
    const u = r.url();
    if (/\/(whip|whep|session)\//.test(u) || r.status() >= 400)
      note(`${name} ${r.request().method()} ${u.replace(/token=[^&]+/, 'token=…')} -> ${r.status()}`);
  });
  page.on('crash', () => note(`${name} page crashed`));
}

async function openPage(context, name, url) {
  const page = await context.newPage();
  wirePage(page, name);
  note(`${name}: open ${url.replace(/token=[^&]+/, 'token=…')}`);
  const resp = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: Math.max(1000, Math.min(15000, deadline - Date.now())) });
  if (!resp || !resp.ok()) {
    const body = resp ? (await resp.text().catch(() => '')).slice(0, 300) : '';
    throw new Error(`${name}: GET ${url.split('?')[0]} -> HTTP ${resp ? resp.status() : 'no response'} ${body}`.trim());
  }
  // Wait for the module script to install window.yiwang (bounded).
  await page.waitForFunction(() => !!window.yiwang, null, { timeout: Math.max(1000, Math.min(10000, deadline - Date.now())) });
  return page;
}

const pages = { publisher: null, viewer: null, low: null, high: null };
let pub = null;

/** Where a page's snapshot lives in the result: viewer / publisher, or viewers.low / viewers.high. */
function slot(name) {
  return name === 'low' || name === 'high' ? result.viewers && result.viewers[name] : result[name];
}

/** DELETE every session through window.yiwang.close() (viewers first), recording the HTTP status. */
async function endSessions() {
  for (const name of ['viewer', 'low', 'high', 'publisher']) {
    const page = pages[name];
    const rec = slot(name);
    if (!page || !rec) continue;
    try {
      const st = await withTimeout(page.evaluate(() => (window.yiwang && window.yiwang.close ? window.yiwang.close() : null)), 5000, `${name} close`);
      rec.deleteStatus = st;
      if (st !== null) note(`${name}: DELETE session -> ${st}`);
    } catch (e) {
      rec.deleteStatus = String(e.message || e);
      note(`${name}: close failed: ${e.message}`);
    }
  }
}

/** --picture: checks the named viewers' pictures into result.picture; throws on the first bad one. */
async function checkPictures(names) {
  if (!opts.picture) return;
  result.picture = {};
  for (const n of names) {
    const r = await expectPicture(pages[n], '#video', opts.picture, { name: `${opts.stream}-${n}` });
    result.picture[n] = r;
    note(`${n} picture: ${r.ok ? `${r.frames.length} frames show ${opts.picture}` : r.error}${r.png ? ` (${r.png})` : ''}`);
    if (!r.ok) throw new Error(`${n}: ${r.error}`);
  }
}

/** One line, bounded: HTTP bodies may be HTML pages. */
function oneLine(msg, max = 400) {
  const t = redact(msg).replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim();
  return t.length > max ? t.slice(0, max) + '…' : t;
}

const isFatal = (s) => s && (s.state === 'error' || s.state === 'failed');

const layerText = (ls) => (ls || []).map((l) => `${l.rid}:${l.frameWidth}x${l.frameHeight}/${l.framesEncoded}f${l.active ? '' : '(inactive)'}`).join(' ') || 'none';

/**
 * Simulcast: wait until >= 2 of the publisher's RID layers are active and encoding (framesEncoded
 * > 0 and grown since the previous poll). Bounded by --layers-timeout-ms and the deadline.
 */
async function waitLayers() {
  const until = Math.min(deadline, Date.now() + opts.layersTimeoutMs);
  let prev = new Map();
  let lastProgress = 0;
  for (;;) {
    const s = await snapshot(pub);
    result.publisher = s;
    if (isFatal(s)) throw new Error(`publisher ${s.state}: ${s.error || s.connectionState}`);
    const layers = s.layers || [];
    const live = layers.filter((l) => l.active && l.framesEncoded > 0 && l.framesEncoded > (prev.get(l.rid) ?? 0));
    prev = new Map(layers.map((l) => [l.rid, l.framesEncoded]));
    if (live.length >= 2) {
      note(`publisher simulcast: ${live.length} layers encoding: ${layerText(layers)}`);
      return;
    }
    if (Date.now() - lastProgress > 2000) {
      lastProgress = Date.now();
      note(`publisher layers: ${layerText(layers)}`);
    }
    if (Date.now() > until) {
      throw new Error(
        `publisher encodes ${live.length} simulcast layer(s) after ${opts.layersTimeoutMs} ms, need >= 2: ` +
          `${layers.length} RID outbound-rtp entries [${layerText(layers)}]` +
          (layers.length <= 1 ? ' (did the node answer without a=simulcast? Chromium then sends only the first encoding)' : ''),
      );
    }
    await sleep(500);
  }
}

/**
 * Simulcast: one viewer with ?layer=low and one with ?layer=high; poll until both decoded more
 * than --min-frames, then require low width < high width (see the header comment for which
 * samples are compared).
 */
async function simulcastViewers(context) {
  const names = ['low', 'high'];
  const urls = {};
  // Default: explicit layers. With --cap-via IP:PORT both viewers choose automatically (from the
  // node's bandwidth estimate); "low" receives through that address (a rate-capped relay in front
  // of the node) and must end up on a smaller layer than "high", which is not capped.
  const query = opts.capVia ? { low: { layer: 'auto', via: opts.capVia }, high: { layer: 'auto' } } : { low: { layer: 'low' }, high: { layer: 'high' } };
  for (const n of names) {
    urls[n] = pageUrl('play.html', opts.viewToken, query[n]);
    pages[n] = await openPage(context, `viewer-${n}`, urls[n]);
  }
  const WINDOW = 6; // polls of 500 ms
  const samples = { low: [], high: [] };
  // framesDecoded per viewer and the publisher's largest per-layer framesEncoded, per poll: a
  // viewer decoding clearly more frames than any ONE layer carries is being sent several layers
  // mixed into one stream (seen with a node that ignores ?layer= but accepts a=simulcast).
  const counts = { low: [], high: [], pub: [] };
  const pushWin = (a, x) => { a.push(x); if (a.length > WINDOW) a.shift(); };
  const delta = (a) => (a.length >= 2 ? a[a.length - 1] - a[0] : 0);
  const ratios = () => {
    const dp = delta(counts.pub);
    const r = (n) => (dp >= 10 && counts[n].length === counts.pub.length ? +(delta(counts[n]) / dp).toFixed(2) : null);
    return { low: r('low'), high: r('high') };
  };
  const widths = () => ({
    low: samples.low.length ? samples.low[samples.low.length - 1] : null,
    high: samples.high.length ? Math.max(...samples.high) : null,
  });
  let lastProgress = 0;
  let enoughSince = 0;
  for (;;) {
    result.publisher = await snapshot(pub);
    if (isFatal(result.publisher)) throw new Error(`publisher ${result.publisher.state}: ${result.publisher.error || result.publisher.connectionState}`);
    for (const n of names) {
      const v = await snapshot(pages[n]);
      result.viewers[n] = v;
      if (isFatal(v)) {
        if (v.httpStatus === 404 && Date.now() + 1500 < deadline) {
          note(`viewer-${n} got 404, retrying: ${v.error}`);
          await sleep(1000);
          await pages[n].goto(urls[n], { waitUntil: 'domcontentloaded', timeout: Math.max(1000, Math.min(15000, deadline - Date.now())) });
          samples[n] = [];
          counts[n] = [];
          continue;
        }
        throw new Error(`viewer-${n} (layer=${n}) ${v.state}: ${v.error || v.connectionState}`);
      }
      if (v.framesDecoded > 0) pushWin(samples[n], v.frameWidth || 0);
      pushWin(counts[n], v.framesDecoded || 0);
    }
    pushWin(counts.pub, Math.max(0, ...((result.publisher.layers || []).map((l) => l.framesEncoded))));
    const lo = result.viewers.low;
    const hi = result.viewers.high;
    if (hi && hi.codec) result.negotiatedCodec = codecName(hi.codec);
    const w = widths();
    result.widths = { low: w.low, high: w.high, lowSamples: samples.low.slice(), highSamples: samples.high.slice() };
    const fr = (result.frameRatio = ratios());
    const enough = lo && hi && lo.framesDecoded > opts.minFrames && hi.framesDecoded > opts.minFrames;
    const ordered = w.low !== null && w.high !== null && w.low > 0 && w.low < w.high;
    const mixed = names.filter((n) => fr[n] !== null && fr[n] > 1.5);
    if (enough && !enoughSince) enoughSince = Date.now();
    // The capped viewer must keep decoding at its smaller size, not merely have a small picture.
    const lowFlowing = !opts.capVia || delta(counts.low) >= 10;
    if (enough && ordered && lowFlowing && fr.low !== null && fr.high !== null && mixed.length === 0) break;
    if (Date.now() - lastProgress > 2000) {
      lastProgress = Date.now();
      const p = result.publisher;
      note(
        names.map((n) => {
          const v = result.viewers[n];
          return `viewer-${n} ${v.state}/${v.connectionState} decoded=${v.framesDecoded} ${v.frameWidth}x${v.frameHeight} vpkts=${v.videoPacketsReceived}`;
        }).join(' | ') + ` | publisher layers ${layerText(p && p.layers)}`,
      );
    }
    // Both decoded enough but widths not ordered: give adaptation up to 5 s to settle.
    const settleOver = enough && Date.now() - enoughSince > 5000;
    if (settleOver || Date.now() > deadline) {
      if (enough && mixed.length) {
        throw new Error(
          mixed.map((n) => `viewer-${n} decodes ${fr[n]}x the frames of any single publisher layer`).join(', ') +
            ` over the last ${counts.pub.length} polls: the node forwards several simulcast layers mixed into one stream` +
            ` (widths low=${w.low} high=${w.high})`,
        );
      }
      if (enough && ordered) {
        throw new Error(`could not measure the viewers' frame rate against the publisher's layers (frameRatio ${JSON.stringify(fr)})`);
      }
      if (enough) {
        throw new Error(
          `layer=low viewer is not smaller than layer=high viewer: low frameWidth=${w.low} (last poll), ` +
            `high frameWidth=${w.high} (max of last ${samples.high.length} polls); ` +
            `frameRatio ${JSON.stringify(fr)}; publisher layers [${layerText(result.publisher && result.publisher.layers)}] (does the node honour ?layer=?)`,
        );
      }
      const why = names
        .filter((n) => !(result.viewers[n].framesDecoded > opts.minFrames))
        .map((n) => `viewer-${n} state=${result.viewers[n].state} connection=${result.viewers[n].connectionState} framesDecoded=${result.viewers[n].framesDecoded} (need > ${opts.minFrames}, videoPacketsReceived=${result.viewers[n].videoPacketsReceived})`);
      throw new Error(`timeout after ${opts.timeoutMs} ms: ${why.join(', ')}`);
    }
    await sleep(500);
  }
  note(`simulcast widths: low=${result.widths.low} high=${result.widths.high}; frames decoded per layer frame: low=${result.frameRatio.low} high=${result.frameRatio.high}`);
  await checkPictures(names);
  if (opts.codec) {
    for (const n of names) {
      const c = codecName(result.viewers[n].codec);
      if (c !== opts.codec) throw new Error(`viewer-${n} negotiated ${c}, wanted ${opts.codec}`);
    }
  }
}

async function main() {
  const args = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    // Two pages in one headless browser: keep both running at full speed.
    '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
    '--autoplay-policy=no-user-gesture-required',
  ];
  if (opts.fakeVideo) args.push(`--use-file-for-fake-video-capture=${fakeCamera(opts.width, opts.height)}`);
  note(`launch ${opts.chromium} (headless=${!opts.headed})`);
  const browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: !opts.headed,
    args,
    timeout: Math.max(5000, Math.min(30000, deadline - Date.now())),
  });
  note(`browser ${browser.version()}`);
  try {
    const context = await browser.newContext({ permissions: ['camera', 'microphone'] });

    if (opts.mode !== 'play-only') {
      pub = pages.publisher = await openPage(context, 'publisher', pageUrl('publish.html', opts.pubToken));
      // Wait until the publisher is connected and sending video, before adding the viewer.
      for (;;) {
        const s = await snapshot(pub);
        result.publisher = s;
        if (isFatal(s)) throw new Error(`publisher ${s.state}: ${s.error || s.connectionState}`);
        if (s.state === 'connected' && s.packetsSentVideo > 0) {
          result.publisherCodec = codecName(s.codec);
          note(`publisher connected: codec=${s.codec} sent=${s.packetsSentVideo} pkts, ${s.frameWidth}x${s.frameHeight}, ice=${s.pair ? s.pair.local + ' -> ' + s.pair.remote : '?'}`);
          if (opts.codec && result.publisherCodec !== opts.codec)
            throw new Error(`publisher negotiated ${result.publisherCodec} although its offer put ${opts.codec} first (the node's WHIP answer chose it)`);
          break;
        }
        if (Date.now() > deadline) throw new Error(`timeout waiting for publisher to connect (state=${s.state}, ice=${s.iceConnectionState})`);
        await sleep(500);
      }
      if (opts.mode === 'simulcast') {
        await waitLayers();
        await simulcastViewers(context);
        result.ok = true;
        return;
      }
      if (opts.mode === 'publish-only') {
        // Let it run a moment so that framesEncoded means something.
        while (Date.now() < deadline) {
          const s = await snapshot(pub);
          result.publisher = s;
          if (isFatal(s)) throw new Error(`publisher ${s.state}: ${s.error || s.connectionState}`);
          if (s.framesSent > opts.minFrames) break;
          await sleep(500);
        }
        result.negotiatedCodec = codecName(result.publisher.codec);
        if (!(result.publisher.framesSent > opts.minFrames)) throw new Error(`publisher sent only ${result.publisher.framesSent} frames`);
        if (opts.codec && result.negotiatedCodec !== opts.codec) throw new Error(`negotiated ${result.negotiatedCodec}, wanted ${opts.codec}`);
        result.ok = true;
        return;
      }
    }

    const playUrl = pageUrl('play.html', opts.viewToken);
    const view = (pages.viewer = await openPage(context, 'viewer', playUrl));
    let lastProgress = 0;
    for (;;) {
      if (pub) {
        result.publisher = await snapshot(pub);
        if (isFatal(result.publisher)) throw new Error(`publisher ${result.publisher.state}: ${result.publisher.error || result.publisher.connectionState}`);
      }
      const v = await snapshot(view);
      result.viewer = v;
      if (v.codec) result.negotiatedCodec = codecName(v.codec);
      if (isFatal(v)) {
        // A GStreamer publisher may not be registered yet: retry a 404 until the deadline.
        if (v.httpStatus === 404 && Date.now() + 1500 < deadline) {
          note(`viewer got 404, retrying: ${v.error}`);
          await sleep(1000);
          await view.goto(playUrl, { waitUntil: 'domcontentloaded', timeout: Math.max(1000, Math.min(15000, deadline - Date.now())) });
          continue;
        }
        throw new Error(`viewer ${v.state}: ${v.error || v.connectionState}`);
      }
      const audioOk = !opts.audio || v.audioPacketsReceived > 0;
      if (v.framesDecoded > opts.minFrames && audioOk) break;
      if (Date.now() - lastProgress > 2000) {
        lastProgress = Date.now();
        const p = result.publisher;
        note(
          `viewer ${v.state}/${v.connectionState} decoded=${v.framesDecoded} ${v.frameWidth}x${v.frameHeight} vpkts=${v.videoPacketsReceived} apkts=${v.audioPacketsReceived} codec=${v.codec}` +
            (p ? ` | publisher ${p.state} sent=${p.framesSent} vpkts=${p.packetsSentVideo} apkts=${p.packetsSentAudio}` : ''),
        );
      }
      if (Date.now() > deadline) {
        const why = [];
        if (!(v.framesDecoded > opts.minFrames)) why.push(`framesDecoded=${v.framesDecoded} (need > ${opts.minFrames}, videoPacketsReceived=${v.videoPacketsReceived})`);
        if (!audioOk) why.push(`audioPacketsReceived=${v.audioPacketsReceived}`);
        throw new Error(`timeout after ${opts.timeoutMs} ms: viewer state=${v.state} connection=${v.connectionState}: ${why.join(', ')}`);
      }
      await sleep(500);
    }
    if (opts.codec && result.negotiatedCodec !== opts.codec) {
      throw new Error(`viewer negotiated ${result.negotiatedCodec}, wanted ${opts.codec}`);
    }
    await checkPictures(['viewer']);
    result.ok = true;
  } finally {
    await endSessions();
    await withTimeout(browser.close(), 10000, 'browser.close()').catch((e) => note(`close: ${e.message}`));
  }
}

main()
  .then(() => {
    note(result.ok ? 'OK' : `FAILED: ${result.error}`);
    finish(result.ok ? 0 : 1);
  })
  .catch((e) => {
    result.ok = false;
    result.error = oneLine(e && e.message ? e.message : e);
    note(`FAILED: ${result.error}`);
    finish(1);
  });
