// yiwang.js — shared WHIP/WHEP helper for publish.html and play.html.
// Plain ES module, no build step. The node serves it at /yiwang.js.
//
// Contract (media-server):
//   POST /whip/{stream}  Content-Type: application/sdp, Authorization: Bearer TOKEN, body = offer
//   POST /whep/{stream}  same, recvonly offer
//   -> 201, Location: /session/{id}, body = answer.   DELETE /session/{id} ends it.
// The server is ICE-lite without trickle, so we wait for ICE gathering to complete (bounded)
// before POSTing the offer.

/** Query parameters of the current page as a plain object. */
export function params() {
  return Object.fromEntries(new URLSearchParams(location.search));
}

/** Base URL of the node: `?server=` overrides (e.g. pages served from elsewhere), else this origin. */
export function serverBase(p = params()) {
  const s = p.server || location.origin;
  return s.replace(/\/+$/, '');
}

/** Error carrying the HTTP status and response body of a failed request. */
export class HttpError extends Error {
  constructor(status, body, url) {
    super(`HTTP ${status}${body ? ': ' + body.trim() : ''}`);
    this.status = status;
    this.body = body;
    this.url = url;
  }
}

/** Wait until ICE gathering is complete, or `ms` elapsed; then return (never throws). */
export function waitIceGathering(pc, ms = 2000) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (complete) => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      resolve(complete);
    };
    const onChange = () => {
      if (pc.iceGatheringState === 'complete') done(true);
    };
    const timer = setTimeout(() => done(false), ms);
    pc.addEventListener('icegatheringstatechange', onChange);
  });
}

/** fetch() with a timeout. */
async function fetchTimeout(url, init, ms) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ms);
  try {
    return await fetch(url, { ...init, signal: ctl.signal });
  } catch (e) {
    if (e.name === 'AbortError') throw new Error(`timeout after ${ms} ms: ${init.method} ${url}`);
    throw new Error(`network error: ${init.method} ${url}: ${e.message}`);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Reorder the codecs of a video transceiver so that `want` ('vp8' | 'h264' | 'vp9' | 'av1')
 * comes first. For H.264 prefer packetization-mode=1 with profile 42e01f, then 42001f.
 * The other codecs stay after it (so the offer is still valid for any server).
 * Returns the mimeType put first, or null when not possible.
 */
export function preferCodec(transceiver, want) {
  if (!want || !transceiver.setCodecPreferences) return null;
  const mime = 'video/' + want.toLowerCase();
  // Chromium validates preferences against receiver capabilities; fall back to sender ones.
  const caps = RTCRtpReceiver.getCapabilities('video') || RTCRtpSender.getCapabilities('video');
  if (!caps) return null;
  const codecs = caps.codecs.slice();
  const fmtp = (c) => (c.sdpFmtpLine || '').toLowerCase();
  const rank = (c) => {
    if (c.mimeType.toLowerCase() !== mime) return 100;
    if (mime !== 'video/h264') return 0;
    const f = fmtp(c);
    const pm1 = /packetization-mode=1/.test(f);
    if (pm1 && /profile-level-id=42e01f/.test(f)) return 0;
    if (pm1 && /profile-level-id=42001f/.test(f)) return 1;
    if (pm1) return 2;
    return 3;
  };
  const wanted = codecs.filter((c) => rank(c) < 100).sort((a, b) => rank(a) - rank(b));
  if (wanted.length === 0) return null;
  const rest = codecs.filter((c) => rank(c) === 100);
  const ordered = wanted.concat(rest);
  try {
    transceiver.setCodecPreferences(ordered);
  } catch (e) {
    const sc = RTCRtpSender.getCapabilities('video');
    if (!sc) throw e;
    const w2 = sc.codecs.filter((c) => rank(c) < 100).sort((a, b) => rank(a) - rank(b));
    transceiver.setCodecPreferences(w2.concat(sc.codecs.filter((c) => rank(c) === 100)));
  }
  return wanted[0].mimeType + (wanted[0].sdpFmtpLine ? ' ' + wanted[0].sdpFmtpLine : '');
}

/**
 * Create an offer, wait for ICE gathering (bounded), POST it to `${base}/${kind}/${stream}`
 * (plus `?query` when `query` is a non-empty object / URLSearchParams, e.g. WHEP `layer=low`),
 * apply the answer. Returns { location } (absolute session URL, or null).
 */
/**
 * Rewrites the node's UDP candidates in an answer to `via` ("IP:PORT"), for tests that put an
 * impairment relay in front of the node's media port (the ICE-lite node accepts the relay's
 * address as a peer-reflexive candidate).
 */
export function routeVia(sdp, via) {
  const i = via.lastIndexOf(':');
  const ip = via.slice(0, i).replace(/^\[|\]$/g, '');
  const port = via.slice(i + 1);
  return sdp
    .split('\r\n')
    .map((line) => {
      if (!line.startsWith('a=candidate:')) return line;
      const f = line.split(' ');
      if (f.length > 5 && f[2].toLowerCase() === 'udp') {
        f[4] = ip;
        f[5] = port;
      }
      return f.join(' ');
    })
    .join('\r\n');
}

export async function negotiate(pc, { kind, base, stream, token, query, via, gatherMs = 2000, httpMs = 10000, onState }) {
  const set = (s) => onState && onState(s);
  set('offering');
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  set('gathering');
  const complete = await waitIceGathering(pc, gatherMs);
  const sdp = pc.localDescription.sdp;
  const qs = query ? new URLSearchParams(query).toString() : '';
  const url = `${base}/${kind}/${encodeURIComponent(stream)}${qs ? '?' + qs : ''}`;
  set('posting');
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetchTimeout(url, { method: 'POST', headers, body: sdp }, httpMs);
  const body = await resp.text();
  if (resp.status !== 201 && resp.status !== 200) throw new HttpError(resp.status, body, url);
  const loc = resp.headers.get('Location');
  set('connecting');
  await pc.setRemoteDescription({ type: 'answer', sdp: via ? routeVia(body, via) : body });
  // Location is usually absolute-path ("/session/ID"): resolve against the POST URL.
  return { location: loc ? new URL(loc, url).href : null, iceGatheringComplete: complete, offer: sdp, answer: body };
}

/**
 * DELETE the session (best effort; keepalive so it survives page unload).
 * Resolves to the HTTP status, or an error string; never rejects.
 */
export async function endSession(sessionUrl, token, ms = 3000) {
  if (!sessionUrl) return null;
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const r = await fetchTimeout(sessionUrl, { method: 'DELETE', headers, keepalive: true }, ms);
    return r.status;
  } catch (e) {
    return String(e.message || e);
  }
}

/** window.yiwang.close(): DELETE the session, close the peer connection. Returns the DELETE status. */
export function closer(y, pc, token, ui) {
  return async () => {
    const url = y.session;
    y.session = null;
    const status = await endSession(url, token);
    pc.close();
    ui.state('closed');
    y.deleteStatus = status;
    return status;
  };
}

/** Map of stats id -> stats object. */
async function statsMap(pc) {
  const m = new Map();
  (await pc.getStats()).forEach((s) => m.set(s.id, s));
  return m;
}

function codecOf(m, s) {
  const c = s && s.codecId && m.get(s.codecId);
  return c ? c.mimeType + (c.sdpFmtpLine ? ';' + c.sdpFmtpLine : '') : null;
}

/** Selected ICE candidate pair, for diagnostics. */
function selectedPair(m) {
  for (const s of m.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      const p = m.get(s.selectedCandidatePairId);
      if (!p) return null;
      const l = m.get(p.localCandidateId);
      const r = m.get(p.remoteCandidateId);
      return {
        state: p.state,
        local: l ? `${l.address || l.ip}:${l.port}/${l.protocol} ${l.candidateType}` : null,
        remote: r ? `${r.address || r.ip}:${r.port}/${r.protocol} ${r.candidateType}` : null,
      };
    }
  }
  return null;
}

/**
 * Publisher statistics from outbound-rtp (video layers summed). `layers` lists the simulcast
 * layers, one per RID (outbound-rtp entries that carry a `rid`; empty without simulcast), in the
 * order of the sender's encodings (lowest first as publish.html configures them):
 * { rid, frameWidth, frameHeight, framesEncoded, bytesSent, active, qualityLimitationReason }.
 * `active` is the encoding's `active` flag as Chromium reports it; a layer the encoder dropped
 * under CPU/bandwidth pressure stays active but stops growing framesEncoded.
 */
export async function publisherStats(pc) {
  const m = await statsMap(pc);
  const layers = [];
  const out = {
    framesEncoded: 0,
    framesSent: 0,
    packetsSentVideo: 0,
    packetsSentAudio: 0,
    codec: null,
    frameWidth: 0,
    frameHeight: 0,
    encoderImplementation: null,
    connectionState: pc.connectionState,
    iceConnectionState: pc.iceConnectionState,
    pair: selectedPair(m),
  };
  for (const s of m.values()) {
    if (s.type !== 'outbound-rtp') continue;
    if (s.kind === 'video') {
      out.framesEncoded += s.framesEncoded || 0;
      out.framesSent += s.framesSent || 0;
      out.packetsSentVideo += s.packetsSent || 0;
      out.frameWidth = Math.max(out.frameWidth, s.frameWidth || 0);
      out.frameHeight = Math.max(out.frameHeight, s.frameHeight || 0);
      out.codec = out.codec || codecOf(m, s);
      out.encoderImplementation = out.encoderImplementation || s.encoderImplementation || null;
      if (s.rid !== undefined && s.rid !== null && s.rid !== '') {
        layers.push({
          rid: s.rid,
          frameWidth: s.frameWidth || 0,
          frameHeight: s.frameHeight || 0,
          framesEncoded: s.framesEncoded || 0,
          bytesSent: s.bytesSent || 0,
          active: s.active !== false,
          qualityLimitationReason: s.qualityLimitationReason || null,
        });
      }
    } else if (s.kind === 'audio') {
      out.packetsSentAudio += s.packetsSent || 0;
    }
  }
  // Order the layers like the sender's encodings (q, h, f), unknown RIDs last by height.
  let order = [];
  try {
    const snd = pc.getSenders().find((x) => x.track && x.track.kind === 'video');
    order = snd ? (snd.getParameters().encodings || []).map((e) => e.rid) : [];
  } catch (_) { /* closed */ }
  const pos = (l) => { const i = order.indexOf(l.rid); return i < 0 ? order.length : i; };
  layers.sort((a, b) => pos(a) - pos(b) || a.frameHeight - b.frameHeight);
  out.layers = layers;
  return out;
}

/** Viewer statistics from inbound-rtp. */
export async function viewerStats(pc) {
  const m = await statsMap(pc);
  const out = {
    framesDecoded: 0,
    frameWidth: 0,
    frameHeight: 0,
    audioPacketsReceived: 0,
    videoPacketsReceived: 0,
    codec: null,
    audioCodec: null,
    keyFramesDecoded: 0,
    decoderImplementation: null,
    connectionState: pc.connectionState,
    iceConnectionState: pc.iceConnectionState,
    pair: selectedPair(m),
  };
  for (const s of m.values()) {
    if (s.type !== 'inbound-rtp') continue;
    if (s.kind === 'video') {
      out.framesDecoded += s.framesDecoded || 0;
      out.keyFramesDecoded += s.keyFramesDecoded || 0;
      out.videoPacketsReceived += s.packetsReceived || 0;
      out.frameWidth = Math.max(out.frameWidth, s.frameWidth || 0);
      out.frameHeight = Math.max(out.frameHeight, s.frameHeight || 0);
      out.codec = out.codec || codecOf(m, s);
      out.decoderImplementation = out.decoderImplementation || s.decoderImplementation || null;
    } else if (s.kind === 'audio') {
      out.audioPacketsReceived += s.packetsReceived || 0;
      out.audioCodec = out.audioCodec || codecOf(m, s);
    }
  }
  return out;
}

/** Small status line helper: writes to #status and #error, mirrors into window.yiwang. */
export function makeUi(y) {
  const statusEl = document.getElementById('status');
  const errorEl = document.getElementById('error');
  const labels = {
    init: '初始化 / starting',
    media: '获取摄像头 / opening camera',
    offering: '创建会话 / creating offer',
    gathering: '收集网络地址 / gathering ICE',
    posting: '连接节点 / contacting node',
    connecting: '建立媒体通道 / connecting',
    connected: '已连接 / connected',
    disconnected: '连接中断 / disconnected',
    failed: '连接失败 / failed',
    closed: '已结束 / closed',
    error: '错误 / error',
  };
  return {
    state(s) {
      y.state = s;
      if (statusEl) {
        statusEl.textContent = labels[s] || s;
        statusEl.dataset.state = s;
      }
    },
    error(e) {
      const msg = e instanceof Error ? e.message : String(e);
      y.error = msg;
      if (e instanceof HttpError) y.httpStatus = e.status;
      this.state('error');
      if (errorEl) {
        errorEl.textContent = msg;
        errorEl.hidden = false;
      }
      console.error('yiwang error:', msg);
    },
  };
}
