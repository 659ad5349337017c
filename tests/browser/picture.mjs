// What a <video> in a Chromium page shows, checked against the test sources' patterns: the same
// rules as tests/src/gst_peer/picture.rs (the GStreamer viewers' check). A stream whose frames
// decode can still show garbage (slices missing from a picture decode as green blocks, smeared
// until the next keyframe), so the drivers that report "decoded" also report this.
//
//   import { expectPicture } from './picture.mjs';
//   const r = await expectPicture(page, '#video', 'ball', { frames: 12, everyMs: 250, name: 'drone' });
//   // r = { ok, pattern, frames: [{ width, height, ok, why }], error, png }
//
// Patterns (GStreamer's videotestsrc, as the test sources paint them):
//   ball   one white ball on black (the GStreamer publisher, drone-bridge's test camera): >= 85 %
//          of the pixels black (all channels <= 60), <= 0.5 % coloured (channels > 80 apart), the
//          white pixels (all channels >= 170) at least 12 and within a box about as wide and tall
//          as a disc of that many pixels (one ball).
//   smpte  the seven top bars (field-client's test source, the Chromium publisher's fake camera
//          file from fakeCamera()): in the middle 40 % of each bar, rows 20-60 % of the height,
//          >= 90 % of the pixels within 60 per channel of the bar's colour.
// On a frame that fails, its PNG goes to target/pictures/NAME-PID-N.png (path in `png`).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const targetDir = path.join(here, '..', '..', 'target');

export const PATTERNS = ['ball', 'smpte'];
let saved = 0;

/** Runs in the page: draws the element's current frame on a canvas and checks it. */
function checkInPage({ selector, pattern }) {
  const v = typeof selector === 'string' ? document.querySelector(selector) : selector;
  if (!v) return { ok: false, why: `no element ${selector}` };
  const w = v.videoWidth;
  const h = v.videoHeight;
  if (!w || !h) return { ok: false, why: 'no decoded frame yet (videoWidth 0)' };
  const c = document.createElement('canvas');
  c.width = w;
  c.height = h;
  const g = c.getContext('2d', { willReadFrequently: true });
  g.drawImage(v, 0, 0, w, h);
  const d = g.getImageData(0, 0, w, h).data;
  const px = (x, y) => {
    const i = (y * w + x) * 4;
    return [d[i], d[i + 1], d[i + 2]];
  };
  const png = () => c.toDataURL('image/png');
  if (pattern === 'ball') {
    let dark = 0, coloured = 0, white = 0;
    let x0 = Infinity, x1 = -1, y0 = Infinity, y1 = -1;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const p = px(x, y);
        const lo = Math.min(...p), hi = Math.max(...p);
        if (hi <= 60) dark++;
        if (hi - lo > 80) coloured++;
        if (lo >= 170) { white++; x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
      }
    }
    const n = w * h;
    const what = `${w}x${h}: ${(100 * dark / n).toFixed(1)} % black, ${(100 * coloured / n).toFixed(2)} % coloured, ${white} white pixels`;
    if (dark / n < 0.85 || coloured / n > 0.005) return { ok: false, width: w, height: h, why: `not a ball on black (${what}; want >= 85 % black, <= 0.5 % coloured)`, png: png() };
    if (white < 12) return { ok: false, width: w, height: h, why: `no ball (${what})`, png: png() };
    const side = 2 * Math.sqrt(white) + 4;
    const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
    if (bw > side || bh > side) return { ok: false, width: w, height: h, why: `the white is not one ball (${what}, spread over ${bw}x${bh} at ${x0},${y0})`, png: png() };
    return { ok: true, width: w, height: h, ball: { x: (x0 + x1) / 2 / w, y: (y0 + y1) / 2 / h } };
  }
  if (pattern === 'smpte') {
    const bars = [[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255], [255, 0, 0], [0, 0, 255]];
    const at = (f, n) => Math.min(n - 1, Math.floor(f * n));
    const bad = [];
    bars.forEach((want, i) => {
      const xa = at((i + 0.3) / 7, w), xb = Math.max(xa + 1, at((i + 0.7) / 7, w));
      const ya = at(0.2, h), yb = Math.max(ya + 1, at(0.6, h));
      let n = 0, near = 0;
      const sum = [0, 0, 0];
      for (let y = ya; y < yb; y++) {
        for (let x = xa; x < xb; x++) {
          const p = px(x, y);
          n++;
          if (p.every((c, k) => Math.abs(c - want[k]) <= 60)) near++;
          for (let k = 0; k < 3; k++) sum[k] += p[k];
        }
      }
      if (near * 10 < n * 9) bad.push(`bar ${i} [${want}]: mean [${sum.map((s) => Math.round(s / n))}], ${Math.round(100 * near / n)} % near`);
    });
    if (bad.length) return { ok: false, width: w, height: h, why: `not the SMPTE bars (${w}x${h}): ${bad.join('; ')}`, png: png() };
    return { ok: true, width: w, height: h };
  }
  return { ok: false, why: `unknown pattern ${pattern}` };
}

/**
 * Checks `frames` frames of the <video> matched by `selector` in `page` (or a frame locator's
 * page), `everyMs` apart (12 × 250 ms span 3 s, more than a GOP of the test sources): all must
 * show `pattern`. Never throws for a bad picture: returns { ok, pattern, frames, error, png }.
 */
export async function expectPicture(page, selector, pattern, { frames = 12, everyMs = 250, name = 'video' } = {}) {
  if (!PATTERNS.includes(pattern)) return { ok: false, pattern, frames: [], error: `unknown pattern ${pattern}`, png: null };
  const seen = [];
  for (let i = 0; i < frames; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, everyMs));
    const r = await page.evaluate(checkInPage, { selector, pattern });
    const { png, ...rest } = r;
    seen.push(rest);
    if (!r.ok) {
      let file = null;
      if (png) {
        const dir = path.join(targetDir, 'pictures');
        fs.mkdirSync(dir, { recursive: true });
        file = path.join(dir, `${String(name).replace(/[^A-Za-z0-9-]/g, '_')}-${process.pid}-${saved++}.png`);
        fs.writeFileSync(file, Buffer.from(png.split(',')[1], 'base64'));
      }
      return { ok: false, pattern, frames: seen, error: `frame ${i} of ${frames} does not show ${pattern}: ${r.why}`, png: file };
    }
  }
  return { ok: true, pattern, frames: seen, error: null, png: null };
}

/**
 * A Y4M file of GStreamer's SMPTE bars (WIDTH×HEIGHT, 30 fps, `seconds` long; their bottom right
 * corner is moving noise, so the encoder has something to code), made once with gst-launch-1.0
 * under target/, for Chromium's --use-file-for-fake-video-capture (which loops it). Returns its
 * path.
 */
export function fakeCamera(width = 1280, height = 720, seconds = 2) {
  const file = path.join(targetDir, `fake-camera-smpte-${width}x${height}-${seconds}s.y4m`);
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(targetDir, { recursive: true });
  const part = `${file}.${process.pid}.part`;
  execFileSync('gst-launch-1.0', [
    '-q', 'videotestsrc', 'pattern=smpte', `num-buffers=${30 * seconds}`,
    '!', `video/x-raw,format=I420,width=${width},height=${height},framerate=30/1`,
    '!', 'y4menc', '!', 'filesink', `location=${part}`,
  ], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 60000 });
  fs.renameSync(part, file);
  return file;
}
