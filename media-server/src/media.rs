//! The tokio shell around the SFU engine: one UDP socket, one task, a command channel.
//!
//! The task owns the [`Sfu`] and the socket. It waits for whichever comes first, readable
//! datagrams, a command from the HTTP side, or the engine's deadline, feeds it to the engine, then
//! sends every pending transmit. Socket I/O is batched (quinn-udp: `recvmmsg`/GRO in, GSO out).
//!
//! The engine writes none of the node's shared tables: the task applies what it reports (its
//! events to the [`LiveStreams`] table, its counters to the [`Metrics`]) after every round and
//! before answering a command, and hands it the trunk catalog's live layers when they change.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use signaling::ids::{StreamName, Subject};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::cascade::shell::{MediaLinkRx, TrunkEvent, TrunkHandle};
use crate::metrics::Metrics;
use crate::streams::LiveStreams;
use sfu::forward::{LayerPref, PeerId};
use sfu::{SessionAnswer, Sfu, SfuError, Transmit, TrunkRequest};
use trunk::media::TrunkOutput;

enum Command {
    Publish {
        stream: StreamName,
        owner: Subject,
        offer: String,
        reply: oneshot::Sender<Result<SessionAnswer, SfuError>>,
    },
    View {
        stream: StreamName,
        offer: String,
        pref: LayerPref,
        reply: oneshot::Sender<Result<SessionAnswer, SfuError>>,
    },
    Close {
        session_id: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    ViewRemote {
        addr: trunk::StreamAddr,
        offer: String,
        pref: LayerPref,
        reply: oneshot::Sender<Result<SessionAnswer, SfuError>>,
    },
    AttachTrunk {
        handle: TrunkHandle,
        rx: MediaLinkRx,
    },
    /// Which of these sessions still exist (the per-subject cap on media peers, `http.rs`).
    Alive {
        ids: Vec<String>,
        reply: oneshot::Sender<Vec<bool>>,
    },
    /// Answered at once: proves the task is running and reading its commands (`/healthz`).
    Ping { reply: oneshot::Sender<()> },
    /// Test kit only: makes the task panic, the one failure a test cannot cause from outside.
    #[cfg(feature = "testkit")]
    Panic,
}

/// How long a viewer of a remote stream waits for the pull to deliver its first media.
pub const REMOTE_VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// A remote stream whose audio arrived but no video for this long is answered audio-only.
const AUDIO_ONLY_AFTER: std::time::Duration = std::time::Duration::from_secs(3);
/// A remote stream whose video arrived but no audio for this long is answered video-only (an
/// audio track sends every 20 ms, so it shows up well within this if there is one).
const VIDEO_ONLY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// A WHEP viewer of a remote stream waiting for the pull to deliver.
struct PendingView {
    peer: PeerId,
    addr: trunk::StreamAddr,
    offer: String,
    pref: LayerPref,
    since: Instant,
    failed: Option<trunk::FailReason>,
    reply: oneshot::Sender<Result<SessionAnswer, SfuError>>,
}

/// The media task's side of the trunks.
struct TrunkIo {
    handle: TrunkHandle,
    rx: MediaLinkRx,
    pending: Vec<PendingView>,
    /// When the trunks' round-trip times were last given to the SFU.
    rtt_at: Option<Instant>,
}

/// Handle used by the HTTP (and later signaling) side to reach the media task.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    tx: mpsc::Sender<Command>,
}

impl MediaHandle {
    /// Publishes `stream` for `owner` with a WHIP offer; returns the answer.
    pub async fn publish(
        &self,
        stream: StreamName,
        owner: Subject,
        offer: String,
    ) -> Result<SessionAnswer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish {
            stream,
            owner,
            offer,
            reply,
        })
        .await?;
        rx.await.map_err(|_| SfuError::Unavailable)?
    }

    /// Views `stream` with a WHEP offer and a layer preference; returns the answer.
    pub async fn view(
        &self,
        stream: StreamName,
        offer: String,
        pref: LayerPref,
    ) -> Result<SessionAnswer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::View {
            stream,
            offer,
            pref,
            reply,
        })
        .await?;
        rx.await.map_err(|_| SfuError::Unavailable)?
    }

    /// Views the stream `addr` published at another node with a WHEP offer: the stream is
    /// pulled over the trunks and the answer comes once its first media arrived (at most
    /// [`REMOTE_VIEW_WAIT`]). [`SfuError::NotLive`] if no node publishes it (or this node has no
    /// trunks), [`SfuError::Unavailable`] if no path leads to it now.
    pub async fn view_remote(
        &self,
        addr: trunk::StreamAddr,
        offer: String,
        pref: LayerPref,
    ) -> Result<SessionAnswer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ViewRemote {
            addr,
            offer,
            pref,
            reply,
        })
        .await?;
        rx.await.map_err(|_| SfuError::Unavailable)?
    }

    /// Connects the media task to the trunk shell: datagrams and routes in, datagrams and
    /// subscriptions out. The SFU's trunk plane takes the handle's node name.
    pub async fn attach_trunk(&self, handle: TrunkHandle, rx: MediaLinkRx) -> Result<(), SfuError> {
        self.send(Command::AttachTrunk { handle, rx }).await
    }

    /// Ends the session `session_id`.
    pub async fn close(&self, session_id: String) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close { session_id, reply }).await?;
        rx.await.map_err(|_| SfuError::Unavailable)?
    }

    /// For each of `ids`, whether that session still exists (it ends when its client deletes
    /// it or when it times out).
    pub async fn alive(&self, ids: Vec<String>) -> Result<Vec<bool>, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Alive { ids, reply }).await?;
        rx.await.map_err(|_| SfuError::Unavailable)
    }

    /// Round-trips through the task's command channel: `Err` when the task has stopped.
    pub async fn ping(&self) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Ping { reply }).await?;
        rx.await.map_err(|_| SfuError::Unavailable)
    }

    /// Test kit only: makes the media task panic (what a bug in the engine would do).
    #[cfg(feature = "testkit")]
    pub async fn inject_panic(&self) -> Result<(), SfuError> {
        self.send(Command::Panic).await
    }

    async fn send(&self, cmd: Command) -> Result<(), SfuError> {
        self.tx.send(cmd).await.map_err(|_| SfuError::Unavailable)
    }
}

/// Deadlines closer than this are served without sleeping (tokio's timer ticks in milliseconds).
const TIMER_GRANULARITY: std::time::Duration = std::time::Duration::from_millis(1);

/// How long the media task sleeps when the engine has no deadline.
const IDLE_WAKE: std::time::Duration = std::time::Duration::from_secs(1);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the media task on `socket`; it keeps `metrics` and `live` up to date with what the
/// engine reports. The task ends when every [`MediaHandle`] is dropped.
pub fn spawn(
    socket: UdpSocket,
    sfu: Sfu,
    metrics: Arc<Metrics>,
    live: LiveStreams,
) -> (MediaHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let tables = Tables {
        metrics,
        live,
        trunk_stats_at: None,
        catalog_seen: 0,
    };
    let task = tokio::spawn(run(socket, sfu, tables, rx));
    (MediaHandle { tx }, task)
}

/// How often the trunk media plane's counters are copied into the metrics.
const TRUNK_STATS_EVERY: Duration = Duration::from_millis(20);

/// The node's shared tables, kept from what the engine reports.
struct Tables {
    metrics: Arc<Metrics>,
    live: LiveStreams,
    /// When the trunk counters were last copied.
    trunk_stats_at: Option<Instant>,
    /// The [`LiveStreams::remote_version`] last handed to the engine.
    catalog_seen: u64,
}

impl Tables {
    /// Applies the engine's events and counters (and, with trunks, the trunk plane's counters
    /// at most every [`TRUNK_STATS_EVERY`]).
    fn apply(&mut self, sfu: &mut Sfu, trunks: bool) {
        let mut now_ms = None;
        while let Some(e) = sfu.poll_event() {
            self.live.apply(e, *now_ms.get_or_insert_with(unix_ms));
        }
        self.metrics.record(sfu.counters());
        let now = Instant::now();
        if trunks
            && self
                .trunk_stats_at
                .is_none_or(|t| now.saturating_duration_since(t) >= TRUNK_STATS_EVERY)
        {
            self.trunk_stats_at = Some(now);
            if let Ok(mut m) = self.metrics.trunk.lock() {
                *m = sfu.trunk_counters();
            }
        }
    }

    /// Hands the engine the trunk catalog's remote streams and their live layers, when the
    /// cascade shell changed them.
    fn feed_catalog(&mut self, sfu: &mut Sfu) {
        let version = self.live.remote_version();
        if version == self.catalog_seen {
            return;
        }
        self.catalog_seen = version;
        let streams = self.live.remote_list().into_iter().filter_map(|r| {
            let addr = trunk::StreamAddr::parse(&r.name).ok()?;
            Some((addr, trunk::LayerSet(r.layer_ids)))
        });
        sfu.set_remote_catalog(streams);
    }
}

/// Receive buffer per batch slot: with GRO one slot can carry many coalesced datagrams.
const SLOT: usize = 64 * 1024;
/// Most receive batches handled before the task looks at its timer and commands again.
const MAX_BATCHES_PER_WAKE: usize = 8;

/// Batched socket I/O: `recvmmsg` (and GRO where the kernel does it) in, UDP GSO out, through
/// quinn-udp, so a burst costs a few system calls instead of one per datagram.
struct BatchIo {
    state: quinn_udp::UdpSocketState,
    slots: Vec<Vec<u8>>,
    metas: Vec<quinn_udp::RecvMeta>,
    /// Transmits taken from the engine, not yet on the wire.
    out: VecDeque<Transmit>,
    /// Scratch for coalescing a GSO train.
    train: Vec<u8>,
}

impl BatchIo {
    fn new(socket: &UdpSocket) -> io::Result<BatchIo> {
        Ok(BatchIo {
            state: quinn_udp::UdpSocketState::new(socket.into())?,
            slots: (0..quinn_udp::BATCH_SIZE)
                .map(|_| vec![0u8; SLOT])
                .collect(),
            metas: vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE],
            out: VecDeque::new(),
            train: Vec::with_capacity(SLOT),
        })
    }

    /// Reads whatever is queued (up to a few batches) into the engine. Returns false when the
    /// socket had nothing (a spurious readiness).
    fn recv(&mut self, socket: &UdpSocket, sfu: &mut Sfu) -> bool {
        let mut got = false;
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let mut slots = self.slots.iter_mut();
            let mut iovs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("BATCH_SIZE slots")));
            let (state, metas) = (&self.state, &mut self.metas);
            match socket.try_io(Interest::READABLE, || {
                state.recv(socket.into(), &mut iovs, metas)
            }) {
                Ok(n) => {
                    got = true;
                    let now = Instant::now();
                    for (meta, buf) in self.metas[..n].iter().zip(iovs.iter()) {
                        if meta.len == 0 {
                            // An empty datagram is still input (and junk to be counted).
                            sfu.handle_receive(now, meta.addr, &[]);
                        }
                        // With GRO one slot holds several datagrams of `stride` bytes.
                        for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                            sfu.handle_receive(now, meta.addr, datagram);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP port-unreachable from a departed peer surfaces here on Linux; harmless.
                Err(e) if is_transient(&e) => debug!(error = %e, "transient receive error"),
                Err(e) => {
                    warn!(error = %e, "media socket receive failed");
                    break;
                }
            }
        }
        got
    }

    /// Sends every pending transmit. Consecutive datagrams to one destination, all of one size
    /// but the last, leave as one GSO send.
    async fn flush(&mut self, socket: &UdpSocket, sfu: &mut Sfu) {
        while let Some(t) = sfu.poll_transmit() {
            self.out.push_back(t);
        }
        let max_segments = self.state.max_gso_segments().max(1);
        while let Some(first) = self.out.front() {
            let (dest, size) = (first.destination, first.contents.len());
            let mut n = 1;
            while n < max_segments && (n + 1) * size <= SLOT {
                match self.out.get(n) {
                    Some(t) if t.destination == dest && t.contents.len() <= size => {
                        n += 1;
                        if t.contents.len() < size {
                            break; // a shorter datagram can only end a train
                        }
                    }
                    _ => break,
                }
            }
            // A lone datagram goes out from its own buffer; a train is copied into one.
            let contents: &[u8] = if n == 1 {
                &first.contents
            } else {
                self.train.clear();
                for t in self.out.range(..n) {
                    self.train.extend_from_slice(&t.contents);
                }
                &self.train
            };
            let transmit = quinn_udp::Transmit {
                destination: dest,
                ecn: None,
                contents,
                segment_size: (n > 1).then_some(size),
                src_ip: None,
            };
            loop {
                match socket.try_io(Interest::WRITABLE, || {
                    self.state.send(socket.into(), &transmit)
                }) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if socket.writable().await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, %dest, "send failed");
                        break;
                    }
                }
            }
            self.out.drain(..n);
        }
    }
}

/// Most trunk datagrams taken from the queue per wake-up.
const TRUNK_BATCH: usize = 256;

async fn run(socket: UdpSocket, mut sfu: Sfu, mut tables: Tables, mut rx: mpsc::Receiver<Command>) {
    let mut io = match BatchIo::new(&socket) {
        Ok(io) => io,
        Err(e) => {
            tracing::error!(error = %e, "media socket unusable");
            return;
        }
    };
    let mut trunk: Option<TrunkIo> = None;
    loop {
        if let Some(t) = trunk.as_mut() {
            tables.feed_catalog(&mut sfu);
            t.pump(&mut sfu, &mut tables);
        }
        io.flush(&socket, &mut sfu).await;
        tables.apply(&mut sfu, trunk.is_some());
        // With no session there is nothing to time out: wake at least once a second anyway.
        let now = Instant::now();
        let mut next = sfu.poll_timeout().unwrap_or(now + IDLE_WAKE).max(now);
        if trunk.as_ref().is_some_and(|t| !t.pending.is_empty()) {
            next = next.min(now + std::time::Duration::from_millis(100));
        }
        if next <= now + TIMER_GRANULARITY {
            // str0m's pacer releases one packet per timeout and asks to be polled again within
            // microseconds while it has packets queued; tokio's timer would round that up to a
            // millisecond per packet. Take what the socket and the channel already hold, drive
            // the engine, let other tasks run, and go round again without sleeping.
            io.recv(&socket, &mut sfu);
            while let Ok(cmd) = rx.try_recv() {
                handle_command(&mut sfu, &mut trunk, &mut tables, cmd);
            }
            if let Some(t) = trunk.as_mut() {
                t.take_queued(&mut sfu);
            }
            sfu.handle_timeout(Instant::now());
            tokio::task::yield_now().await;
            continue;
        }
        let deadline = tokio::time::Instant::from_std(next);
        let trunk_in = async {
            match trunk.as_mut() {
                Some(t) => tokio::select! {
                    e = t.rx.events.recv() => e.map(TrunkIn::Event),
                    d = t.rx.datagrams.recv() => d.map(TrunkIn::Datagram),
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = trunk_in => {
                if let Some(got) = got {
                    if let Some(t) = trunk.as_mut() {
                        t.handle(&mut sfu, got);
                        t.take_queued(&mut sfu);
                    }
                }
            }
            r = socket.readable() => match r {
                Ok(()) => {
                    io.recv(&socket, &mut sfu);
                }
                Err(e) => {
                    warn!(error = %e, "media socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            cmd = rx.recv() => match cmd {
                None => return,
                Some(cmd) => handle_command(&mut sfu, &mut trunk, &mut tables, cmd),
            },
            _ = tokio::time::sleep_until(deadline) => sfu.handle_timeout(Instant::now()),
        }
    }
}

enum TrunkIn {
    Event(TrunkEvent),
    Datagram((trunk::NodeName, bytes::Bytes)),
}

impl TrunkIo {
    fn handle(&mut self, sfu: &mut Sfu, got: TrunkIn) {
        let now = Instant::now();
        match got {
            TrunkIn::Datagram((from, d)) => sfu.trunk_datagram(now, &from, &d),
            TrunkIn::Event(TrunkEvent::Route { addr, route }) => sfu.trunk_route(now, addr, route),
            TrunkIn::Event(TrunkEvent::PublisherKeyframe { stream, layer }) => {
                sfu.publisher_keyframe(now, &stream, layer.0);
            }
            TrunkIn::Event(TrunkEvent::Viewer { viewer, event, .. }) => {
                if let trunk::ViewerEvent::Failed(r) = event {
                    if let Some(p) = self.pending.iter_mut().find(|p| p.peer.0 == viewer.0) {
                        p.failed = Some(r);
                    }
                }
            }
            TrunkIn::Event(TrunkEvent::Control { from, msg }) => sfu.trunk_control(now, &from, msg),
            TrunkIn::Event(TrunkEvent::Reset(peer)) => sfu.trunk_reset(&peer),
        }
    }

    /// Takes what is already queued (a bounded batch of datagrams) without waiting.
    fn take_queued(&mut self, sfu: &mut Sfu) {
        while let Ok(e) = self.rx.events.try_recv() {
            self.handle(sfu, TrunkIn::Event(e));
        }
        for _ in 0..TRUNK_BATCH {
            let Ok(d) = self.rx.datagrams.try_recv() else {
                break;
            };
            self.handle(sfu, TrunkIn::Datagram(d));
        }
    }

    /// Carries out the SFU's trunk requests and answers the remote viewers whose pull delivered
    /// (or failed, or took too long).
    fn pump(&mut self, sfu: &mut Sfu, tables: &mut Tables) {
        let now = Instant::now();
        if self
            .rtt_at
            .is_none_or(|t| now.saturating_duration_since(t) >= std::time::Duration::from_secs(1))
        {
            self.rtt_at = Some(now);
            for (peer, rtt) in self.handle.rtts() {
                sfu.trunk_rtt(&peer, rtt);
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let (video, audio, since) = sfu.remote_codecs(&p.addr);
            let waited = now.saturating_duration_since(p.since);
            let flowing = since.map_or(std::time::Duration::ZERO, |t| {
                now.saturating_duration_since(t)
            });
            let result = if (video && (audio || flowing >= VIDEO_ONLY_AFTER))
                || (audio && flowing >= AUDIO_ONLY_AFTER)
            {
                Some(sfu.view_remote(now, p.peer, &p.addr, &p.offer, p.pref))
            } else if let Some(r) = p.failed {
                Some(Err(match r {
                    trunk::FailReason::NotFound => SfuError::NotLive,
                    trunk::FailReason::NoRoute => SfuError::Unavailable,
                }))
            } else if waited >= REMOTE_VIEW_WAIT {
                Some(Err(SfuError::Unavailable))
            } else {
                None
            };
            match result {
                None => i += 1,
                Some(r) => {
                    let p = self.pending.swap_remove(i);
                    if r.is_err() && p.failed.is_none() {
                        sfu.unwatch(p.peer, p.addr.clone());
                    }
                    tables.apply(sfu, true);
                    let _ = p.reply.send(r);
                }
            }
        }
        while let Some(r) = sfu.poll_trunk() {
            match r {
                TrunkRequest::Plane(TrunkOutput::Datagram { to, data }) => {
                    self.handle.send_datagram(&to, data);
                }
                TrunkRequest::Plane(TrunkOutput::Control { to, msg }) => {
                    self.handle.send_control(to, msg)
                }
                TrunkRequest::Plane(TrunkOutput::NextPathReady(addr)) => {
                    self.handle.next_path_ready(addr)
                }
                TrunkRequest::Subscribe {
                    viewer,
                    addr,
                    layers,
                } => self.handle.subscribe(viewer, addr, layers),
                TrunkRequest::Unsubscribe { viewer, addr } => self.handle.unsubscribe(viewer, addr),
                TrunkRequest::Keyframe { addr, layer } => self.handle.request_keyframe(addr, layer),
            }
        }
    }
}

/// Carries out one command; what the engine reports is applied to the tables before the
/// answer goes back, so whoever asked sees the new stream or viewer at once.
fn handle_command(sfu: &mut Sfu, trunk: &mut Option<TrunkIo>, tables: &mut Tables, cmd: Command) {
    let now = Instant::now();
    let trunks = trunk.is_some();
    match cmd {
        Command::Publish {
            stream,
            owner,
            offer,
            reply,
        } => {
            let r = sfu.publish(now, stream, owner, &offer);
            tables.apply(sfu, trunks);
            let _ = reply.send(r);
        }
        Command::View {
            stream,
            offer,
            pref,
            reply,
        } => {
            let r = sfu.view(now, &stream, &offer, pref);
            tables.apply(sfu, trunks);
            let _ = reply.send(r);
        }
        Command::Close { session_id, reply } => {
            let r = sfu.close_session(now, &session_id);
            tables.apply(sfu, trunks);
            let _ = reply.send(r);
        }
        Command::ViewRemote {
            addr,
            offer,
            pref,
            reply,
        } => match trunk.as_mut() {
            None => {
                let _ = reply.send(Err(SfuError::NotLive));
            }
            // This node's own stream, named the cascade's way.
            Some(t) if addr.node == *t.handle.node() => {
                let r = sfu.view(now, &addr.stream, &offer, pref);
                tables.apply(sfu, trunks);
                let _ = reply.send(r);
            }
            Some(t) => {
                let peer = sfu.watch_remote(addr.clone());
                t.pending.push(PendingView {
                    peer,
                    addr,
                    offer,
                    pref,
                    since: now,
                    failed: None,
                    reply,
                });
            }
        },
        Command::AttachTrunk { handle, rx } => {
            sfu.enable_trunks(handle.node().clone());
            *trunk = Some(TrunkIo {
                handle,
                rx,
                pending: Vec::new(),
                rtt_at: None,
            });
        }
        Command::Alive { ids, reply } => {
            let _ = reply.send(ids.iter().map(|id| sfu.has_session(id)).collect());
        }
        Command::Ping { reply } => {
            let _ = reply.send(());
        }
        #[cfg(feature = "testkit")]
        Command::Panic => panic!("media task: panic injected by the test kit"),
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
    )
}
