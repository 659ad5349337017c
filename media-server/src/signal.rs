//! The signaling shells: QUIC (quinn, native clients) and WebSocket (axum `GET /ws`, browsers)
//! around the sans-IO [`signaling::core::Core`], plus the revocation file.
//!
//! The shells only move frames. Each connection gets a [`ConnId`] and an outbound channel; every
//! received message goes to the core under one mutex; the core's outputs are dispatched after the
//! lock is released: frames to the connection's writer, closes, media operations (run against
//! the SFU on their own task, answered on the same connection) and revocations (appended to
//! `revoked.jsonl` in the data directory).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::{json, Value};
use signaling::core::{ConnId, Core, MediaOp, Output, Revocation};
use signaling::proto::{
    encode, encode_frame, ErrorCode, FrameDecoder, ProtoError, ServerMsg, StreamKind, MAX_FRAME,
};
use signaling::Role;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::media::MediaHandle;
use crate::streams::LiveStreams;
use sfu::forward::LayerPref;
use sfu::SfuError;

/// Name of the revocation file in the data directory: one JSON object per line,
/// `{"sub":"off-12","at":UNIX_SECS}` or `{"jti":"…"}`. Append-only.
pub const REVOCATION_FILE: &str = "revoked.jsonl";

/// Outbound frames per connection before the connection counts as too slow and is closed
/// (its session stays resumable and replays what it missed).
const OUTBOUND_QUEUE: usize = 4096;

/// How often the core's timers run.
const TICK: Duration = Duration::from_millis(100);

/// How often the revocation file is checked for new lines (in ticks).
const REVOCATION_POLL_TICKS: u64 = 5;

/// Dead-peer detection on WebSocket: ping every this often…
const WS_PING: Duration = Duration::from_secs(3);
/// …and close when nothing arrived for this long.
const WS_IDLE: Duration = Duration::from_secs(10);

enum Outbound {
    Text(String),
    Close { code: ErrorCode, reason: String },
}

/// A connection's outbound queue and its "given up: too slow" flag.
type ConnTx = (
    mpsc::Sender<Outbound>,
    mpsc::Sender<Outbound>,
    Arc<AtomicBool>,
);

/// A connection's outbound queues as its writer sees them: urgent messages (SOS) first.
struct Outq {
    urgent: mpsc::Receiver<Outbound>,
    normal: mpsc::Receiver<Outbound>,
}

impl Outq {
    /// The next message to write, urgent ones first; `None` once the hub dropped the connection.
    async fn recv(&mut self) -> Option<Outbound> {
        tokio::select! {
            biased;
            Some(u) = self.urgent.recv() => Some(u),
            n = self.normal.recv() => n,
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The append-only revocation file.
#[derive(Debug)]
pub struct RevocationFile {
    path: PathBuf,
    read_upto: u64,
}

impl RevocationFile {
    /// The file in `data_dir` (it need not exist yet).
    pub fn new(data_dir: &Path) -> Self {
        RevocationFile {
            path: data_dir.join(REVOCATION_FILE),
            read_upto: 0,
        }
    }

    /// Appends one revocation (fsynced before returning).
    pub fn append(path: &Path, r: &Revocation) -> std::io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        let mut line = serde_json::to_string(r).map_err(std::io::Error::other)?;
        line.push('\n');
        f.write_all(line.as_bytes())?;
        f.sync_all()
    }

    /// Revocations added since the last call (all of them the first time). A malformed line is
    /// logged and skipped; a partly written last line is left for the next call.
    pub fn read_new(&mut self) -> Vec<Revocation> {
        let Ok(meta) = fs::metadata(&self.path) else {
            return Vec::new();
        };
        if meta.len() < self.read_upto {
            self.read_upto = 0; // replaced by a shorter file: read it again
        }
        if meta.len() == self.read_upto {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let read = fs::File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.read_upto))?;
            f.read_to_end(&mut buf)
        });
        if let Err(e) = read {
            warn!(path = %self.path.display(), error = %e, "cannot read revocations");
            return Vec::new();
        }
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.read_upto += complete as u64;
        let mut out = Vec::new();
        for line in buf[..complete].split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Revocation>(line) {
                Ok(r) => out.push(r),
                Err(e) => {
                    warn!(path = %self.path.display(), error = %e, "skipping a malformed revocation line")
                }
            }
        }
        out
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The signaling server of a node: the core plus everything the shells share.
pub struct Hub {
    core: Mutex<Core>,
    conns: Mutex<HashMap<ConnId, ConnTx>>,
    next_conn: AtomicU64,
    media: MediaHandle,
    live: LiveStreams,
    media_sessions: Mutex<HashMap<String, Vec<String>>>,
    /// Kind of each stream published over signaling, with the owner that declared it.
    kinds: Mutex<HashMap<String, (signaling::Subject, StreamKind)>>,
    revocations: Mutex<RevocationFile>,
}

impl Hub {
    /// A hub around `core`; revocations already in the data directory's file are applied.
    pub fn new(core: Core, media: MediaHandle, live: LiveStreams, data_dir: &Path) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            core: Mutex::new(core),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            media,
            live,
            media_sessions: Mutex::new(HashMap::new()),
            kinds: Mutex::new(HashMap::new()),
            revocations: Mutex::new(RevocationFile::new(data_dir)),
        });
        hub.poll_revocations();
        hub
    }

    /// Takes the core's lock and asks it one question: returns once the core is free to serve
    /// (`/healthz`). Blocks while another task holds the lock; call it off the async workers.
    pub fn ping(&self) {
        let _ = self.core().connection_count();
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core, then dispatches its outputs.
    ///
    /// Messages and closes are queued to their connections while the core's lock is still held
    /// (a non-blocking hand-off), so two tasks driving the core can never interleave what they
    /// queue for one connection: every connection sees its messages in the core's order. Media
    /// operations, revocations and session ends run after the lock is released.
    pub fn with_core<R>(self: &Arc<Self>, f: impl FnOnce(&mut Core) -> R) -> R {
        let (r, later) = {
            let mut core = self.core();
            let r = f(&mut core);
            let mut later = Vec::new();
            while let Some(o) = core.poll_output() {
                match o {
                    Output::Send { .. } | Output::Urgent { .. } | Output::Close { .. } => {
                        self.dispatch(o)
                    }
                    other => later.push(other),
                }
            }
            (r, later)
        };
        for o in later {
            self.dispatch(o);
        }
        r
    }

    /// Registers a connection: its id, its outbound queue, and a flag set when the hub gave up
    /// on it for being too slow.
    fn open(self: &Arc<Self>) -> (ConnId, Outq, Arc<AtomicBool>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, normal) = mpsc::channel(OUTBOUND_QUEUE);
        let (utx, urgent) = mpsc::channel(OUTBOUND_QUEUE);
        let slow = Arc::new(AtomicBool::new(false));
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (tx, utx, slow.clone()));
        self.with_core(|c| c.open(now_ms(), id));
        (id, Outq { urgent, normal }, slow)
    }

    fn closed(self: &Arc<Self>, conn: ConnId) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&conn);
        self.with_core(|c| c.closed(now_ms(), conn));
    }

    fn to_conn(&self, conn: ConnId, out: Outbound) {
        self.queue(conn, out, false);
    }

    fn queue(&self, conn: ConnId, out: Outbound, urgent: bool) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let Some((tx, utx, slow)) = conns.get(&conn) else {
            return;
        };
        let tx = if urgent { utx } else { tx };
        if tx.try_send(out).is_err() {
            // Too slow: dropping the sender makes its writer close the transport.
            debug!(conn, "closing a connection that does not keep up");
            slow.store(true, Ordering::Relaxed);
            conns.remove(&conn);
        }
    }

    fn send_msg(&self, conn: ConnId, msg: &ServerMsg) {
        self.to_conn(conn, Outbound::Text(encode(msg)));
    }

    fn dispatch(self: &Arc<Self>, o: Output) {
        match o {
            Output::Send { conn, msg } => self.send_msg(conn, &msg),
            Output::Urgent { conn, msg } => self.queue(conn, Outbound::Text(encode(&msg)), true),
            Output::Close { conn, code, reason } => {
                self.to_conn(conn, Outbound::Close { code, reason })
            }
            Output::Media {
                conn,
                session,
                re,
                op,
            } => {
                let hub = self.clone();
                tokio::spawn(async move {
                    let msg = match hub.media_op(&session, op).await {
                        Ok(data) => ServerMsg::Result { re, data },
                        Err(e) => ProtoError::new(Some(re), e.0, e.1).to_msg(),
                    };
                    hub.send_msg(conn, &msg);
                });
            }
            Output::Revoked(r) => {
                let path = self
                    .revocations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .path()
                    .to_owned();
                if let Err(e) = RevocationFile::append(&path, &r) {
                    warn!(error = %e, "cannot persist a revocation (applied in memory only)");
                }
            }
            Output::SessionEnded { session } => {
                let ids = self
                    .media_sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&session)
                    .unwrap_or_default();
                if !ids.is_empty() {
                    let media = self.media.clone();
                    tokio::spawn(async move {
                        for id in ids {
                            let _ = media.close(id).await;
                        }
                    });
                }
            }
        }
    }

    async fn media_op(
        self: &Arc<Self>,
        session: &str,
        op: MediaOp,
    ) -> Result<Value, (ErrorCode, String)> {
        let sfu_err = |e: SfuError| {
            let code = match e {
                SfuError::BadSdp(_) | SfuError::NoUsableMedia(_) => ErrorCode::BadRequest,
                SfuError::Conflict { .. } => ErrorCode::Conflict,
                SfuError::NotLive | SfuError::NoSession => ErrorCode::NotFound,
                // `SfuError` is non-exhaustive: a reason added later is the media plane's.
                _ => ErrorCode::Unavailable,
            };
            (code, e.to_string())
        };
        match op {
            MediaOp::Publish {
                stream,
                owner,
                kind,
                sdp,
            } => {
                let a = self
                    .media
                    .publish(stream.clone(), owner.clone(), sdp)
                    .await
                    .map_err(sfu_err)?;
                self.track(session, &a.session_id);
                self.kinds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(stream.to_string(), (owner, kind));
                self.with_core(|c| c.note_published(now_ms(), session, &stream, kind));
                Ok(json!({"media": a.session_id, "sdp": a.sdp, "stream": stream}))
            }
            MediaOp::Subscribe {
                stream,
                layer,
                max_height,
                sdp,
            } => {
                let pref = match (layer, max_height) {
                    (Some(_), Some(_)) => {
                        return Err((
                            ErrorCode::BadRequest,
                            "give layer or maxHeight, not both".into(),
                        ))
                    }
                    (Some(l), None) => l
                        .parse::<LayerPref>()
                        .map_err(|m| (ErrorCode::BadRequest, m))?,
                    (None, Some(0)) => {
                        return Err((ErrorCode::BadRequest, "maxHeight must be positive".into()))
                    }
                    (None, Some(h)) => LayerPref::MaxHeight(h),
                    (None, None) => LayerPref::Auto,
                };
                let a = match stream.remote_addr() {
                    // `NODE/STREAM`: pulled over the trunks (this node's own name included).
                    Some(addr) => self.media.view_remote(addr, sdp, pref).await,
                    None => self.media.view(stream.clone(), sdp, pref).await,
                }
                .map_err(sfu_err)?;
                self.track(session, &a.session_id);
                Ok(json!({"media": a.session_id, "sdp": a.sdp, "stream": stream}))
            }
            MediaOp::Close { media } => {
                let owned = self
                    .media_sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(session)
                    .and_then(|v| v.iter().position(|m| *m == media).map(|i| v.remove(i)))
                    .is_some();
                if !owned {
                    return Err((
                        ErrorCode::NotFound,
                        format!("no media session {media} of this session"),
                    ));
                }
                self.media.close(media).await.map_err(sfu_err)?;
                Ok(Value::Null)
            }
            // Streams at other nodes have no owner here: listed for callers who see every stream.
            MediaOp::Catalog { owners, all } => {
                let remote = if all {
                    self.live.remote_list()
                } else {
                    Vec::new()
                };
                Ok(json!({"streams": self.catalog(&owners, all), "remote": remote}))
            }
        }
    }

    fn track(&self, session: &str, media: &str) {
        self.media_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(session.to_owned())
            .or_default()
            .push(media.to_owned());
    }

    /// Live streams whose owner is in `owners` (every stream if `all`), with kind and role.
    pub fn catalog(&self, owners: &BTreeMap<signaling::Subject, Role>, all: bool) -> Vec<Value> {
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        self.live
            .list()
            .into_iter()
            .filter(|s| all || owners.contains_key(&s.owner))
            .map(|s| {
                let role = owners.get(&s.owner).copied();
                let declared = kinds
                    .get(s.name.as_str())
                    .filter(|(o, _)| *o == s.owner)
                    .map(|(_, k)| *k);
                let kind = declared.unwrap_or(match role {
                    Some(Role::Device) => StreamKind::Fixed,
                    _ => StreamKind::Camera,
                });
                let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("kind".into(), json!(kind));
                    m.insert("owner_role".into(), json!(role));
                }
                v
            })
            .collect()
    }

    /// Applies revocations appended to the file since the last check.
    pub fn poll_revocations(self: &Arc<Self>) {
        let new = self
            .revocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_new();
        if !new.is_empty() {
            self.with_core(|c| {
                for r in &new {
                    c.apply_revocation(now_ms(), r);
                }
            });
        }
    }

    /// Runs the core's timers and watches the revocation file, forever.
    ///
    /// Wakes every `TICK`, or earlier when a coalesced position or drone telemetry is due, so
    /// a held report goes out at the end of its window rather than up to a tick later.
    pub async fn run_timers(self: Arc<Self>) {
        let mut next_tick = tokio::time::Instant::now() + TICK;
        let mut n: u64 = 0;
        loop {
            let due = self.read(Core::next_fanout_due).map(|at| {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                tokio::time::Instant::now() + wait
            });
            let wake = due.map_or(next_tick, |d| d.min(next_tick));
            tokio::time::sleep_until(wake).await;
            self.with_core(|c| c.handle_timeout(now_ms()));
            if tokio::time::Instant::now() >= next_tick {
                next_tick += TICK;
                if next_tick < tokio::time::Instant::now() {
                    next_tick = tokio::time::Instant::now() + TICK;
                }
                n += 1;
                if n.is_multiple_of(REVOCATION_POLL_TICKS) {
                    self.poll_revocations();
                }
            }
        }
    }

    /// Serves one QUIC connection: the first bidirectional stream the client opens is the
    /// control stream.
    pub async fn serve_quic(self: Arc<Self>, conn: quinn::Connection) {
        let (id, mut rx, slow) = self.open();
        let accepted = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await;
        let (mut send, mut recv) = match accepted {
            Ok(Ok(s)) => s,
            _ => {
                conn.close(
                    ErrorCode::BadHello.close_code().into(),
                    b"open the control stream and send hello within 10 s",
                );
                self.closed(id);
                return;
            }
        };
        let writer_conn = conn.clone();
        let writer = tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                match out {
                    Outbound::Text(t) => {
                        let mut frame = Vec::with_capacity(4 + t.len());
                        frame.extend_from_slice(&(t.len() as u32).to_be_bytes());
                        frame.extend_from_slice(t.as_bytes());
                        if send.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                    Outbound::Close { code, reason } => {
                        // Let what was written (the error frame) reach the client first.
                        let _ = send.finish();
                        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                        writer_conn.close(code.close_code().into(), reason.as_bytes());
                        return;
                    }
                }
            }
            if slow.load(Ordering::Relaxed) {
                writer_conn.close(
                    ErrorCode::TooSlow.close_code().into(),
                    b"connection too slow; resume to catch up",
                );
            }
        });
        let mut decoder = FrameDecoder::new();
        while let Ok(Some(chunk)) = recv.read_chunk(MAX_FRAME, true).await {
            decoder.push(&chunk.bytes);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => self.with_core(|c| c.frame(now_ms(), id, &frame)),
                    Ok(None) => break,
                    Err(e) => {
                        self.with_core(|c| c.frame_error(id, e.to_proto()));
                        let _ = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
                        self.closed(id);
                        writer.abort();
                        return;
                    }
                }
            }
        }
        self.closed(id);
        // The writer ends when the hub drops the sender (done by `closed`).
        let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    }

    /// Serves one WebSocket (`GET /ws`): one message per text frame.
    pub async fn serve_ws(self: Arc<Self>, socket: WebSocket) {
        use futures_util::{SinkExt as _, StreamExt as _};
        let (id, mut rx, slow) = self.open();
        let (mut sink, mut stream) = socket.split();
        let writer = tokio::spawn(async move {
            let mut ping = tokio::time::interval(WS_PING);
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(Outbound::Text(t)) => {
                            if sink.send(Message::Text(t.into())).await.is_err() {
                                return;
                            }
                        }
                        Some(Outbound::Close { code, reason }) => {
                            let frame = CloseFrame { code: 4000 + code.close_code(), reason: truncate(&reason, 120).into() };
                            let _ = sink.send(Message::Close(Some(frame))).await;
                            return;
                        }
                        None => {
                            if slow.load(Ordering::Relaxed) {
                                let frame = CloseFrame { code: 4000 + ErrorCode::TooSlow.close_code(), reason: "connection too slow; resume to catch up".into() };
                                let _ = sink.send(Message::Close(Some(frame))).await;
                            }
                            return;
                        }
                    },
                    _ = ping.tick() => {
                        if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        loop {
            let next = tokio::time::timeout(WS_IDLE, stream.next()).await;
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_))) | Ok(None) => break,
                Err(_) => {
                    debug!(conn = id, "WebSocket idle; closing");
                    self.to_conn(
                        id,
                        Outbound::Close {
                            code: ErrorCode::Idle,
                            reason: "no traffic for 10 s".into(),
                        },
                    );
                    break;
                }
            };
            match msg {
                Message::Text(t) => {
                    if t.len() > MAX_FRAME {
                        let e = ProtoError::new(
                            None,
                            ErrorCode::TooLarge,
                            format!(
                                "message of {} bytes exceeds the {MAX_FRAME}-byte limit",
                                t.len()
                            ),
                        );
                        self.with_core(|c| c.frame_error(id, e));
                        break;
                    }
                    self.with_core(|c| c.frame(now_ms(), id, t.as_bytes()));
                }
                Message::Binary(_) => {
                    let e = ProtoError::new(
                        None,
                        ErrorCode::BadRequest,
                        "send messages as text frames",
                    );
                    self.with_core(|c| c.frame_error(id, e));
                    break;
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        self.closed(id);
        // The writer delivers what is queued (a final error and close frame), then ends.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }

    /// Verifies a bearer token for the HTTP API (signature, audience, expiry, revocation).
    pub fn authenticate(&self, token: &str) -> Result<signaling::Claims, ProtoError> {
        self.core().authenticate(token, now_ms())
    }

    /// Reads the core (for the HTTP API).
    pub fn read<R>(&self, f: impl FnOnce(&Core) -> R) -> R {
        f(&self.core())
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The QUIC frame encoding of `msg` (re-exported for tests and tools).
pub fn quic_frame(msg: &ServerMsg) -> Vec<u8> {
    encode_frame(msg)
}
