//! The signaling shells: QUIC (quinn, native clients) and WebSocket (axum `GET /ws`, browsers)
//! around the sans-IO [`signaling::core::Core`], plus the revocation file.
//!
//! The shells only move frames. Each connection gets a [`ConnId`] and an outbound channel.
//!
//! **Where the core runs.** The core commits to the office store (SQLite) before it
//! acknowledges office messages, and those commits block. So the core does not run on the tokio
//! workers: it lives on its own thread (`signaling-core`, see `core_thread`), which owns it and
//! is fed by one bounded channel of commands: a connection opened or closed, a received frame,
//! or a closure (HTTP reads and orders, a media result to log). One owner and one queue keep
//! what the shared mutex used to guarantee: every command runs to completion in arrival order,
//! each connection's frames in the order its reader read them, and the outputs are queued to
//! the connections by that thread in the core's order, so a recipient sees mail in mailbox
//! order exactly once. The same thread runs the timers (every 100 ms, and exactly when a
//! coalesced fan-out is due) and reads new lines of the revocation file. When the queue is full,
//! connection readers wait instead of buffering without bound. Other designs were set aside:
//! `spawn_blocking` per call would need the mutex back to keep the order, and `block_in_place`
//! stalls a worker and needs the multi-threaded runtime.
//!
//! The core's outputs are: frames and closes for the connections' writers, media operations
//! (run against the SFU on the runtime, answered on the same connection), revocations (applied
//! to the HTTP routes' copy of the token gate and appended, fsynced, to `revoked.jsonl` in the
//! data directory) and ended sessions (whose media sessions are closed).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::{json, Value};
use signaling::core::{ConnId, Core, MediaOp, Output, Revocation, TokenGate, VerifiedHello};
use signaling::proto::{
    encode, encode_frame, ErrorCode, FrameDecoder, ProtoError, ServerMsg, StreamKind, MAX_FRAME,
};
use signaling::{Role, UnixMs};
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

/// The time now, as the signaling core takes it.
pub fn now() -> UnixMs {
    UnixMs(now_ms())
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

/// What the hub asks of the core thread, in the order it must happen.
enum Cmd {
    /// A connection arrived.
    Open(ConnId),
    /// A connection's transport is gone.
    Closed(ConnId),
    /// A received message, holding its share of the connection's read-ahead budget until the
    /// core has taken it.
    Frame(ConnId, Vec<u8>, ReadPermit),
    /// A connection's first message, a `hello` whose token its task already verified.
    Hello(ConnId, VerifiedHello, ReadPermit),
    /// A frame the shell could not read.
    FrameError(ConnId, ProtoError),
    /// Anything else (HTTP reads and orders, media results): runs on the core, answers itself.
    Call(Box<dyn FnOnce(&mut Core) + Send>),
}

/// Bytes of received messages one connection may have on their way to the core (queued, not
/// yet taken): two largest frames. Beyond that its reader stops reading, so a connection whose
/// messages the core is slow to take is held back by QUIC flow control (or TCP's) instead of
/// filling the core's queue: with the QUIC receive windows of one frame
/// ([`crate::quic::RECEIVE_WINDOW`]) a QUIC connection holds at most about five frames in the
/// node (the window, a frame being decoded, one waiting for its share, these two).
pub const READ_AHEAD: usize = 2 * MAX_FRAME;

/// A connection's share of its [`READ_AHEAD`] budget, given back when dropped.
type ReadPermit = tokio::sync::OwnedSemaphorePermit;

/// What a connection's reader does with each message it read: the first one, when it is a
/// `hello`, has its token verified here on the connection's task (the Ed25519 work of a flood of
/// hellos runs on the runtime's workers, beside the flood, not on the core's one thread); every
/// message waits for its share of the read-ahead budget.
struct Reader {
    hub: Arc<Hub>,
    conn: ConnId,
    budget: Arc<tokio::sync::Semaphore>,
    first: bool,
}

impl Reader {
    fn new(hub: &Arc<Hub>, conn: ConnId) -> Reader {
        Reader {
            hub: hub.clone(),
            conn,
            budget: Arc::new(tokio::sync::Semaphore::new(READ_AHEAD)),
            first: true,
        }
    }

    /// Hands one received message to the core, waiting while the connection's budget is spent.
    async fn deliver(&mut self, bytes: Vec<u8>) {
        let share = bytes.len().clamp(1, READ_AHEAD) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(share).await else {
            return;
        };
        let first = std::mem::replace(&mut self.first, false);
        let hello = if first {
            let gate = self.hub.gate.read().unwrap_or_else(|e| e.into_inner());
            VerifiedHello::check(&gate, &bytes, now())
        } else {
            None
        };
        let cmd = match hello {
            Some(h) => Cmd::Hello(self.conn, h, permit),
            None => Cmd::Frame(self.conn, bytes, permit),
        };
        self.hub.submit(cmd).await;
    }
}

/// Messages in flight to the core thread before the connections' readers wait: a full queue
/// slows the readers down instead of growing without bound.
const CORE_QUEUE: usize = 4096;

/// The signaling core is not running (its thread ended): the node cannot serve signaling.
pub fn core_gone() -> ProtoError {
    ProtoError::new(
        None,
        ErrorCode::Unavailable,
        "the signaling core is not running",
    )
}

/// The signaling server of a node: the core's thread plus everything the shells share.
pub struct Hub {
    cmds: mpsc::Sender<Cmd>,
    /// Set when the hub stops the core thread (node shutdown).
    stop: tokio::sync::watch::Sender<bool>,
    /// Resolves when the core thread has ended (stopped, or panicked).
    ended: tokio::sync::watch::Receiver<bool>,
    conns: Mutex<HashMap<ConnId, ConnTx>>,
    next_conn: AtomicU64,
    media: MediaHandle,
    live: LiveStreams,
    media_sessions: Mutex<HashMap<String, Vec<String>>>,
    /// Kind of each stream published over signaling, with the owner that declared it.
    kinds: Mutex<HashMap<String, (signaling::Subject, StreamKind)>>,
    /// The HTTP routes' copy of the core's token gate, revoked in step with it.
    gate: RwLock<TokenGate>,
    rt: tokio::runtime::Handle,
}

impl Hub {
    /// A hub around `core`; revocations already in the data directory's file are applied. The
    /// core moves to its own thread (see the module docs). Call from within a tokio runtime.
    pub fn new(mut core: Core, media: MediaHandle, live: LiveStreams, data_dir: &Path) -> Arc<Hub> {
        let mut revocations = RevocationFile::new(data_dir);
        let mut gate = core.token_gate().clone();
        for r in revocations.read_new() {
            core.apply_revocation(now(), &r);
            gate.apply(&r);
        }
        let (cmds, rx) = mpsc::channel(CORE_QUEUE);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        let hub = Arc::new(Hub {
            cmds,
            stop,
            ended,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            media,
            live,
            media_sessions: Mutex::new(HashMap::new()),
            kinds: Mutex::new(HashMap::new()),
            gate: RwLock::new(gate),
            rt: tokio::runtime::Handle::current(),
        });
        // Outputs of the revocations applied above (sessions cannot exist yet).
        while core.poll_output().is_some() {}
        let for_thread = hub.clone();
        let spawned = std::thread::Builder::new()
            .name("signaling-core".into())
            .spawn(move || {
                let _ended = Ended(ended_tx);
                core_thread(core, rx, stop_rx, revocations, for_thread);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the signaling core thread");
        }
        hub
    }

    /// Hands `cmd` to the core thread, waiting while its queue is full. False if it is gone.
    async fn submit(&self, cmd: Cmd) -> bool {
        self.cmds.send(cmd).await.is_ok()
    }

    /// Round-trips a question through the core thread (`/healthz`): `Err` once it has stopped.
    pub async fn ping(&self) -> Result<(), ProtoError> {
        self.call(|_core| ()).await
    }

    /// Runs `f` on the core (on its thread, in order with every connection's messages), then
    /// dispatches its outputs; returns what `f` returned.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> R + Send + 'static,
    ) -> Result<R, ProtoError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Box::new(move |core: &mut Core| {
            let _ = tx.send(f(core));
        });
        if !self.submit(Cmd::Call(job)).await {
            return Err(core_gone());
        }
        rx.await.map_err(|_| core_gone())
    }

    /// [`Hub::call`] for a fallible `f`.
    pub async fn try_call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<R, ProtoError> + Send + 'static,
    ) -> Result<R, ProtoError> {
        self.call(f).await?
    }

    /// Registers a connection: its id, its outbound queue, and a flag set when the hub gave up
    /// on it for being too slow.
    async fn open(self: &Arc<Self>) -> (ConnId, Outq, Arc<AtomicBool>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, normal) = mpsc::channel(OUTBOUND_QUEUE);
        let (utx, urgent) = mpsc::channel(OUTBOUND_QUEUE);
        let slow = Arc::new(AtomicBool::new(false));
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (tx, utx, slow.clone()));
        self.submit(Cmd::Open(id)).await;
        (id, Outq { urgent, normal }, slow)
    }

    /// The transport of `conn` is gone. The core thread forgets its outbound queue only after
    /// it has run everything submitted before (a final error and close still reach the writer).
    async fn closed(self: &Arc<Self>, conn: ConnId) {
        if !self.submit(Cmd::Closed(conn)).await {
            self.forget(conn);
        }
    }

    /// Drops `conn`'s outbound queue: its writer ends once it has written what is queued.
    fn forget(&self, conn: ConnId) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&conn);
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

    /// Does what one output of the core says. Runs on the core thread: frames and closes are
    /// queued to their connections (a non-blocking hand-off, so each connection sees its
    /// messages in the core's order); media operations and media closes run on the runtime;
    /// a revocation is appended (fsynced) to the file here, where blocking is allowed.
    fn dispatch(self: &Arc<Self>, o: Output, revocations: &RevocationFile) {
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
                self.rt.spawn(async move {
                    let msg = match hub.media_op(&session, op).await {
                        Ok(data) => ServerMsg::Result { re, data },
                        Err(e) => ProtoError::new(Some(re), e.0, e.1).to_msg(),
                    };
                    hub.send_msg(conn, &msg);
                });
            }
            Output::Revoked(r) => {
                self.gate
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(&r);
                if let Err(e) = RevocationFile::append(revocations.path(), &r) {
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
                    self.rt.spawn(async move {
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
                let (sid, published) = (session.to_owned(), stream.clone());
                let note = move |c: &mut Core| c.note_published(now(), &sid, &published, kind);
                self.submit(Cmd::Call(Box::new(note))).await;
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

    /// Lives as long as the core thread: returns when it ended (a panic included), and stops it
    /// when dropped (the node's shutdown aborts this task).
    pub async fn run_timers(self: Arc<Self>) {
        struct StopOnDrop(tokio::sync::watch::Sender<bool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                let _ = self.0.send(true);
            }
        }
        let _stop = StopOnDrop(self.stop.clone());
        self.core_ended().await;
        warn!("the signaling core thread ended");
    }

    /// Resolves once the core thread has ended.
    pub async fn core_ended(&self) {
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|e| *e).await;
    }

    /// Whether the core thread is running.
    pub fn core_running(&self) -> bool {
        !*self.ended.borrow()
    }

    /// Serves one QUIC connection: the first bidirectional stream the client opens is the
    /// control stream.
    pub async fn serve_quic(self: Arc<Self>, conn: quinn::Connection) {
        let (id, mut rx, slow) = self.open().await;
        let accepted = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await;
        let (mut send, mut recv) = match accepted {
            Ok(Ok(s)) => s,
            _ => {
                conn.close(
                    ErrorCode::BadHello.close_code().into(),
                    b"open the control stream and send hello within 10 s",
                );
                self.closed(id).await;
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
        let mut reader = Reader::new(&self, id);
        while let Ok(Some(chunk)) = recv.read_chunk(MAX_FRAME, true).await {
            decoder.push(&chunk.bytes);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => reader.deliver(frame).await,
                    Ok(None) => break,
                    Err(e) => {
                        self.submit(Cmd::FrameError(id, e.to_proto())).await;
                        let _ = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
                        self.closed(id).await;
                        writer.abort();
                        return;
                    }
                }
            }
        }
        self.closed(id).await;
        // The writer ends when the hub drops the sender (done by `closed`).
        let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    }

    /// Serves one WebSocket (`GET /ws`): one message per text frame.
    pub async fn serve_ws(self: Arc<Self>, socket: WebSocket) {
        use futures_util::{SinkExt as _, StreamExt as _};
        let (id, mut rx, slow) = self.open().await;
        let (mut sink, mut stream) = socket.split();
        let mut reader = Reader::new(&self, id);
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
                        self.submit(Cmd::FrameError(id, e)).await;
                        break;
                    }
                    reader.deliver(t.as_bytes().to_vec()).await;
                }
                Message::Binary(_) => {
                    let e = ProtoError::new(
                        None,
                        ErrorCode::BadRequest,
                        "send messages as text frames",
                    );
                    self.submit(Cmd::FrameError(id, e)).await;
                    break;
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        self.closed(id).await;
        // The writer delivers what is queued (a final error and close frame), then ends.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }

    /// Verifies a bearer token for the HTTP API (signature, audience, expiry, revocation).
    /// Answered from the hub's copy of the core's token gate, without a trip to the core thread.
    pub fn authenticate(&self, token: &str) -> Result<signaling::Claims, ProtoError> {
        self.gate
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .authenticate(token, now())
    }
}

/// Sets the hub's "core ended" flag when the core thread ends, however it ends.
struct Ended(tokio::sync::watch::Sender<bool>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// The core's thread: one current-thread runtime that waits for the next command, the next
/// timer (every `TICK`, or earlier when a coalesced fan-out is due) or the stop signal, runs the
/// core, and dispatches its outputs. The office store's commits block this thread only.
fn core_thread(
    mut core: Core,
    mut rx: mpsc::Receiver<Cmd>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut revocations: RevocationFile,
    hub: Arc<Hub>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "cannot build the signaling core's runtime");
            return;
        }
    };
    rt.block_on(async {
        let mut next_tick = tokio::time::Instant::now() + TICK;
        let mut ticks: u64 = 0;
        loop {
            let due = core
                .next_fanout_due()
                .map(|at| tokio::time::Instant::now() + Duration::from_millis(at.ms_since(now())));
            let wake = due.map_or(next_tick, |d| d.min(next_tick));
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep_until(wake) => {
                    core.handle_timeout(now());
                    if tokio::time::Instant::now() >= next_tick {
                        next_tick += TICK;
                        if next_tick < tokio::time::Instant::now() {
                            next_tick = tokio::time::Instant::now() + TICK;
                        }
                        ticks += 1;
                        if ticks.is_multiple_of(REVOCATION_POLL_TICKS) {
                            for r in revocations.read_new() {
                                hub.gate.write().unwrap_or_else(|e| e.into_inner()).apply(&r);
                                core.apply_revocation(now(), &r);
                            }
                        }
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Open(conn)) => core.open(now(), conn),
                    Some(Cmd::Closed(conn)) => {
                        core.closed(now(), conn);
                        while let Some(o) = core.poll_output() {
                            hub.dispatch(o, &revocations);
                        }
                        hub.forget(conn);
                    }
                    Some(Cmd::Frame(conn, bytes, _taken)) => core.frame(now(), conn, &bytes),
                    Some(Cmd::Hello(conn, hello, _taken)) => core.hello_verified(now(), conn, hello),
                    Some(Cmd::FrameError(conn, e)) => core.frame_error(conn, e),
                    Some(Cmd::Call(f)) => f(&mut core),
                    None => break,
                },
            }
            while let Some(o) = core.poll_output() {
                hub.dispatch(o, &revocations);
            }
        }
    });
    // No core, no signaling: every connection's writer ends, closing its transport.
    hub.conns.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The QUIC frame encoding of `msg` (re-exported for tests and tools).
pub fn quic_frame(msg: &ServerMsg) -> Vec<u8> {
    encode_frame(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling::auth::{TokenIssuer, TokenRequest, TokenVerifier};
    use signaling::core::{duty, CoreConfig};
    use signaling::proto::MailItem;
    use signaling::store::{
        IncidentRow, LogEntry, Mail, NewItem, OfficeStore, Order, OrderState, SqliteStore,
        StoreError, Stored,
    };
    use signaling::{NodeId, Subject};

    /// The SQLite store, noting on which thread each write runs.
    struct Probe {
        inner: SqliteStore,
        writers: Arc<Mutex<Vec<String>>>,
    }

    impl Probe {
        fn note(&self) {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            self.writers.lock().unwrap().push(name);
        }
    }

    impl OfficeStore for Probe {
        fn put(
            &mut self,
            item: NewItem<'_>,
            build: &mut dyn FnMut(i64) -> MailItem,
        ) -> Result<Stored, StoreError> {
            self.note();
            self.inner.put(item, build)
        }
        fn mail_after(&self, r: &Subject, a: u64, l: usize) -> Result<Vec<Mail>, StoreError> {
            self.inner.mail_after(r, a, l)
        }
        fn item_in_mailbox(
            &self,
            r: &Subject,
            i: i64,
        ) -> Result<Option<(String, String)>, StoreError> {
            self.inner.item_in_mailbox(r, i)
        }
        fn last_seq(&self, r: &Subject) -> Result<u64, StoreError> {
            self.inner.last_seq(r)
        }
        fn acked(&self, r: &Subject) -> Result<u64, StoreError> {
            self.inner.acked(r)
        }
        fn ack(
            &mut self,
            r: &Subject,
            upto: u64,
            now: UnixMs,
        ) -> Result<Vec<(String, Subject)>, StoreError> {
            self.note();
            self.inner.ack(r, upto, now)
        }
        fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
            self.inner.order(id)
        }
        fn set_order_state(
            &mut self,
            id: &str,
            st: OrderState,
            now: UnixMs,
            eta: Option<u32>,
            reason: Option<&str>,
        ) -> Result<(), StoreError> {
            self.note();
            self.inner.set_order_state(id, st, now, eta, reason)
        }
        fn orders(&self, s: Option<&Subject>, l: usize) -> Result<Vec<Order>, StoreError> {
            self.inner.orders(s, l)
        }
        fn incidents(&self) -> Result<Vec<IncidentRow>, StoreError> {
            self.inner.incidents()
        }
        fn save_incident(&mut self, inc: &IncidentRow) -> Result<(), StoreError> {
            self.note();
            self.inner.save_incident(inc)
        }
        fn set_assigned(&mut self, i: &str, s: &str, a: bool) -> Result<(), StoreError> {
            self.note();
            self.inner.set_assigned(i, s, a)
        }
        fn append_log(
            &mut self,
            i: &str,
            t: UnixMs,
            who: &str,
            what: &str,
            d: &Value,
        ) -> Result<u64, StoreError> {
            self.note();
            self.inner.append_log(i, t, who, what, d)
        }
        fn log_after(&self, i: &str, a: u64, l: usize) -> Result<(Vec<LogEntry>, u64), StoreError> {
            self.inner.log_after(i, a, l)
        }
        fn note_subject(&mut self, s: &Subject, now: UnixMs) -> Result<(), StoreError> {
            self.note();
            self.inner.note_subject(s, now)
        }
        fn knows_subject(&self, s: &Subject) -> Result<bool, StoreError> {
            self.inner.knows_subject(s)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_commits_run_on_the_core_thread_and_it_stops_with_the_node() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let node = NodeId::parse("node-a").unwrap();
        let mut verifier = TokenVerifier::new(node.clone());
        verifier.trust(key.verifying_key());
        let issuer = TokenIssuer::new(key, node.clone());
        let mut inner = SqliteStore::open_in_memory().unwrap();
        let off = Subject::parse("off-1").unwrap();
        inner.note_subject(&off, now()).unwrap();
        let writers = Arc::new(Mutex::new(Vec::new()));
        let store = Probe {
            inner,
            writers: writers.clone(),
        };
        let core = Core::new(CoreConfig::default(), node, verifier, store, now());
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let live = LiveStreams::default();
        let sfu = sfu::Sfu::new(Default::default(), socket.local_addr().unwrap());
        let (media, _media_task) = crate::media::spawn(socket, sfu, Arc::default(), live.clone());
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(core, media, live, dir.path());
        let timers = tokio::spawn(hub.clone().run_timers());
        writers.lock().unwrap().clear();

        let token = issuer.issue(
            &TokenRequest::new(
                Subject::parse("cmd-1").unwrap(),
                signaling::Role::Commander,
                "node-a",
                "00",
            ),
            now().secs().as_secs(),
        );
        let claims = hub.authenticate(&token).expect("the HTTP gate accepts it");
        let data = hub
            .try_call(move |c| {
                c.send_order(now(), &claims, None, None, &duty(), &off, "Go to gate 3")
            })
            .await
            .expect("stored");
        assert_eq!(data["new"], true, "{data}");
        let writers_seen = writers.lock().unwrap().clone();
        assert!(!writers_seen.is_empty(), "the order was committed");
        assert!(
            writers_seen.iter().all(|w| w == "signaling-core"),
            "store writes ran on {writers_seen:?}, not only on the core's thread"
        );

        // The node's shutdown aborts the timer task: the core thread stops with it.
        assert!(hub.core_running());
        timers.abort();
        tokio::time::timeout(Duration::from_secs(5), hub.core_ended())
            .await
            .expect("the core thread ends within 5 s");
        assert!(!hub.core_running());
        let refused = hub.call(|c| c.session_count()).await;
        assert_eq!(refused.unwrap_err().code, ErrorCode::Unavailable);
    }
}
