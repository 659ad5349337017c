#!/usr/bin/env node
// Browser end-to-end driver for the yiwang node, called by the Rust test suite.
//
//   node run.mjs --base http://127.0.0.1:PORT --stream NAME --pub-token T --view-token T2 \
//                --codec vp8|h264 [--timeout-ms 60000] [--mode pubplay|play-only|publish-only]
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
// and exits 0 when ok, 1 otherwise (2 on bad usage). Progress and diagnostics go to stderr.
// Every wait is bounded; a watchdog exits even if the browser hangs.

import { chromium } from 'playwright-core';

const USAGE = `usage: node run.mjs --base URL --stream NAME [--pub-token T] [--view-token T2]
       [--codec vp8|h264] [--timeout-ms 60000] [--mode pubplay|play-only|publish-only]
       [--min-frames 100] [--no-audio] [--width 1280] [--height 720]
       [--web URL (where the pages are loaded from; default --base)] [--chromium /usr/bin/chromium]
       [--headed]`;

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
    audio: true,
    width: 1280,
    height: 720,
    web: null,
    chromium: process.env.YIWANG_CHROMIUM || '/usr/bin/chromium',
    headed: false,
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
      case '--no-audio': o.audio = false; break;
      case '--width': o.width = parseInt(need(i), 10); i++; break;
      case '--height': o.height = parseInt(need(i), 10); i++; break;
      case '--web': o.web = need(i); i++; break;
      case '--chromium': o.chromium = need(i); i++; break;
      case '--headed': o.headed = true; break;
      case '-h': case '--help': console.error(USAGE); process.exit(0); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!o.base) throw new Error('--base is required');
  if (!o.stream) throw new Error('--stream is required');
  if (!['pubplay', 'play-only', 'publish-only'].includes(o.mode)) throw new Error(`bad --mode ${o.mode}`);
  if (o.codec && !['vp8', 'h264', 'vp9', 'av1'].includes(o.codec)) throw new Error(`bad --codec ${o.codec}`);
  if (!(o.timeoutMs > 0)) throw new Error('bad --timeout-ms');
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

function pageUrl(file, token) {
  const q = new URLSearchParams({ stream: opts.stream });
  if (token) q.set('token', token);
  if (file === 'publish.html') {
    if (opts.codec) q.set('codec', opts.codec);
    q.set('width', String(opts.width));
    q.set('height', String(opts.height));
    if (!opts.audio) q.set('audio', '0');
  }
  if (opts.web !== opts.base) q.set('server', opts.base);
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

const pages = { publisher: null, viewer: null };
let pub = null;

/** DELETE both sessions through window.yiwang.close() (viewer first), recording the HTTP status. */
async function endSessions() {
  for (const name of ['viewer', 'publisher']) {
    const page = pages[name];
    if (!page || !result[name]) continue;
    try {
      const st = await withTimeout(page.evaluate(() => (window.yiwang && window.yiwang.close ? window.yiwang.close() : null)), 5000, `${name} close`);
      result[name].deleteStatus = st;
      if (st !== null) note(`${name}: DELETE session -> ${st}`);
    } catch (e) {
      result[name].deleteStatus = String(e.message || e);
      note(`${name}: close failed: ${e.message}`);
    }
  }
}

/** One line, bounded: HTTP bodies may be HTML pages. */
function oneLine(msg, max = 400) {
  const t = redact(msg).replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim();
  return t.length > max ? t.slice(0, max) + '…' : t;
}

const isFatal = (s) => s && (s.state === 'error' || s.state === 'failed');

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
