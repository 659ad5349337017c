//! The tokio shell of the trunk router: one QUIC endpoint, a dialler per configured parent or
//! peer (reconnecting with backoff), a task per connection carrying the control stream, and one
//! actor task that owns the sans-IO [`trunk::Router`] and its timer.
//!
//! A connection: the dialler opens the one bidirectional stream, both sides send `Hello` first;
//! each checks the other's certificate names the node its `Hello` claims
//! ([`TrunkCredentials::verify_peer_name`]); only then is the trunk up for the router. Names of
//! parents and peers are learned this way, so the config lists only addresses.
//!
//! The media plane: with a [`MediaLink`] in the config, every datagram received on a trunk goes
//! to the SFU's media task, together with the router's routes, keyframe requests for local
//! publishers, viewer news and the media-plane control messages (`Flow`, `Nack`) as
//! [`TrunkEvent`]s; the media task sends datagrams with [`TrunkHandle::send_datagram`]. The
//! routes are also kept in [`TrunkHandle::route`] for tests and diagnostics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use trunk::wire::{encode, FrameDecoder, Message};
use trunk::{
    CatalogEntry, LayerId, LayerSet, NodeName, Output, Route, Router, RouterConfig, StreamAddr,
    StreamName, ViewerEvent, ViewerId,
};

use super::status::{LinkStatus, RouteOutput, RouteStatus, TrunkStatus, UplinkStatus};
use super::tls::TrunkCredentials;

/// How long a new connection may take to say `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Control messages (and trunk up/down news) queued from all trunks to the router; a full queue
/// stops reading from the trunks (QUIC flow control pushes back on the peers).
pub const NET_QUEUE: usize = 1024;
/// Control messages queued towards one trunk; a peer that lets this fill up is not reading and
/// its trunk is closed (it reconnects and gets a fresh catalog).
pub const LINK_QUEUE: usize = 8192;
/// Reconnect backoff of a dialler: from this ...
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// ... doubling up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Viewer events kept for [`TrunkHandle::take_events`] (the oldest are dropped beyond).
pub const EVENTS_KEPT: usize = 1024;

/// Datagrams from all trunks queued towards the media task; beyond this they are dropped (the
/// media task is behind; loss is better than delay for live media).
pub const DATAGRAM_QUEUE: usize = 8192;

/// News for the media plane (the SFU's media task).
#[derive(Debug, Clone)]
pub enum TrunkEvent {
    /// The router's forwarding of `addr` changed (empty: forward nothing).
    Route {
        /// The stream.
        addr: StreamAddr,
        /// Its forwarding.
        route: Route,
    },
    /// Ask the local publisher of `stream` for a keyframe of `layer` (throttled by the router).
    PublisherKeyframe {
        /// The local stream.
        stream: StreamName,
        /// The layer.
        layer: LayerId,
    },
    /// News for a local viewer of a remote stream.
    Viewer {
        /// The viewer.
        viewer: ViewerId,
        /// The stream.
        addr: StreamAddr,
        /// What happened.
        event: ViewerEvent,
    },
    /// A media-plane control message (`Flow`, `Nack`) from the trunk to `from`.
    Control {
        /// The peer node.
        from: NodeName,
        /// The message.
        msg: Message,
    },
    /// The trunk to this node came up or went down: flow ids on it start afresh.
    Reset(NodeName),
}

/// Where the shell delivers media-plane news and datagrams.
#[derive(Debug, Clone)]
pub struct MediaLink {
    /// Routes, keyframe requests, viewer news, control messages.
    pub events: mpsc::UnboundedSender<TrunkEvent>,
    /// Datagrams and the trunk they came from (bounded: [`DATAGRAM_QUEUE`]).
    pub datagrams: mpsc::Sender<(NodeName, bytes::Bytes)>,
}

/// The receiving ends of a [`MediaLink`].
#[derive(Debug)]
pub struct MediaLinkRx {
    /// See [`MediaLink::events`].
    pub events: mpsc::UnboundedReceiver<TrunkEvent>,
    /// See [`MediaLink::datagrams`].
    pub datagrams: mpsc::Receiver<(NodeName, bytes::Bytes)>,
}

/// A media link and its receiving ends.
pub fn media_link() -> (MediaLink, MediaLinkRx) {
    let (etx, erx) = mpsc::unbounded_channel();
    let (dtx, drx) = mpsc::channel(DATAGRAM_QUEUE);
    (
        MediaLink {
            events: etx,
            datagrams: dtx,
        },
        MediaLinkRx {
            events: erx,
            datagrams: drx,
        },
    )
}

/// Byte counters of one trunk connection (from QUIC's own statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkStats {
    /// The peer node.
    pub peer: NodeName,
    /// UDP bytes sent on the connection.
    pub tx_bytes: u64,
    /// UDP bytes received on the connection.
    pub rx_bytes: u64,
}

/// What the shell needs to run.
#[derive(Debug, Clone)]
pub struct ShellConfig {
    /// This node's name (its certificate must carry it).
    pub node: NodeName,
    /// UDP address of the trunk endpoint.
    pub listen: SocketAddr,
    /// `HOST:PORT` of parents, primary first.
    pub parents: Vec<String>,
    /// `HOST:PORT` of peers.
    pub peers: Vec<String>,
    /// Prune grace of the router.
    pub grace: Duration,
    /// Certificates.
    pub credentials: TrunkCredentials,
    /// The media plane, if any (without, trunks carry control only).
    pub media: Option<MediaLink>,
    /// The province's revocation list of node certificates
    /// ([`RevocationList`](super::tls::RevocationList)), reread when it changes (checked every
    /// [`REVOCATION_POLL`]); trunks whose peer it lists are refused or closed.
    pub revoked: Option<std::path::PathBuf>,
}

/// A dialled trunk that stayed up this long resets the redial backoff.
const STABLE_LINK: Duration = Duration::from_secs(2);

/// How often the revocation list file is checked for changes.
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// A trunk connection reported by its task to the actor.
struct Link {
    id: u64,
    dialled: bool,
    /// When it came up.
    since: std::time::Instant,
    /// Rank among parents (`Some(n)`) or a peer (`None`) when dialled; unused when accepted.
    uplink: Option<Uplink>,
    tx: mpsc::Sender<Message>,
    conn: quinn::Connection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uplink {
    Parent(usize),
    Peer(usize),
}

enum Cmd {
    Up {
        peer: NodeName,
        link: Link,
    },
    Down {
        peer: NodeName,
        id: u64,
    },
    Msg {
        peer: NodeName,
        id: u64,
        msg: Message,
    },
    Publish(StreamName, LayerSet),
    Unpublish(StreamName),
    Subscribe(ViewerId, StreamAddr, LayerSet),
    Unsubscribe(ViewerId, StreamAddr),
    Catalog(oneshot::Sender<Vec<CatalogEntry>>),
    Trunks(oneshot::Sender<Vec<NodeName>>),
    Status(oneshot::Sender<TrunkStatus>),
    /// The revocation list changed: close trunks whose peer it now lists.
    Recheck,
    Control(NodeName, Message),
    Keyframe(StreamAddr, LayerId),
    NextReady(StreamAddr),
}

/// Handle on a running trunk shell. Dropping every handle does not stop it; call
/// [`TrunkHandle::shutdown`].
#[derive(Clone)]
pub struct TrunkHandle {
    cmd: mpsc::UnboundedSender<Cmd>,
    routes: Arc<Mutex<HashMap<StreamAddr, Route>>>,
    events: Arc<Mutex<Vec<(ViewerId, StreamAddr, ViewerEvent)>>>,
    conns: Arc<Mutex<HashMap<NodeName, quinn::Connection>>>,
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    node: NodeName,
}

impl TrunkHandle {
    /// This node's name on the trunks.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// Sends a media datagram on the trunk to `peer` (dropped if that trunk is down or the
    /// datagram does not fit).
    pub fn send_datagram(&self, peer: &NodeName, data: Vec<u8>) -> bool {
        let Ok(conns) = self.conns.lock() else {
            return false;
        };
        conns
            .get(peer)
            .is_some_and(|c| c.send_datagram(data.into()).is_ok())
    }

    /// Sends a media-plane control message (`Flow`, `Nack`) on the trunk to `peer`.
    pub fn send_control(&self, peer: NodeName, msg: Message) {
        let _ = self.cmd.send(Cmd::Control(peer, msg));
    }

    /// A local viewer of the remote `addr` needs a keyframe of `layer` (throttled by the
    /// router).
    pub fn request_keyframe(&self, addr: StreamAddr, layer: LayerId) {
        let _ = self.cmd.send(Cmd::Keyframe(addr, layer));
    }

    /// The route's `next` path delivers: switch to it.
    pub fn next_path_ready(&self, addr: StreamAddr) {
        let _ = self.cmd.send(Cmd::NextReady(addr));
    }

    /// Byte counters of every trunk that is up.
    pub fn stats(&self) -> Vec<TrunkStats> {
        let Ok(conns) = self.conns.lock() else {
            return Vec::new();
        };
        conns
            .iter()
            .map(|(peer, c)| {
                let s = c.stats();
                TrunkStats {
                    peer: peer.clone(),
                    tx_bytes: s.udp_tx.bytes,
                    rx_bytes: s.udp_rx.bytes,
                }
            })
            .collect()
    }

    /// QUIC's smoothed round-trip time of every trunk that is up.
    pub fn rtts(&self) -> Vec<(NodeName, Duration)> {
        let Ok(conns) = self.conns.lock() else {
            return Vec::new();
        };
        conns
            .iter()
            .map(|(peer, c)| (peer.clone(), c.rtt()))
            .collect()
    }

    /// The bound trunk address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A local publisher started: `NODE/stream` is announced upward.
    pub fn publish(&self, stream: StreamName, layers: LayerSet) {
        let _ = self.cmd.send(Cmd::Publish(stream, layers));
    }

    /// A local publisher stopped.
    pub fn unpublish(&self, stream: StreamName) {
        let _ = self.cmd.send(Cmd::Unpublish(stream));
    }

    /// A local viewer wants `layers` of `addr`.
    pub fn subscribe(&self, viewer: ViewerId, addr: StreamAddr, layers: LayerSet) {
        let _ = self.cmd.send(Cmd::Subscribe(viewer, addr, layers));
    }

    /// A local viewer left.
    pub fn unsubscribe(&self, viewer: ViewerId, addr: StreamAddr) {
        let _ = self.cmd.send(Cmd::Unsubscribe(viewer, addr));
    }

    /// Every stream reachable from this node by announced routes.
    pub async fn catalog(&self) -> Vec<CatalogEntry> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(Cmd::Catalog(tx));
        rx.await.unwrap_or_default()
    }

    /// The state of every configured uplink, every trunk up and every route.
    pub async fn status(&self) -> Option<TrunkStatus> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(Cmd::Status(tx));
        rx.await.ok()
    }

    /// The nodes with a trunk up.
    pub async fn trunks(&self) -> Vec<NodeName> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(Cmd::Trunks(tx));
        rx.await.unwrap_or_default()
    }

    /// The router's current forwarding of `addr` (for the media plane).
    pub fn route(&self, addr: &StreamAddr) -> Option<Route> {
        self.routes.lock().ok()?.get(addr).cloned()
    }

    /// Viewer events so far (drained).
    pub fn take_events(&self) -> Vec<(ViewerId, StreamAddr, ViewerEvent)> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// Closes every trunk and the endpoint.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutdown");
        self.endpoint.wait_idle().await;
    }
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Binds the endpoint and starts the actor, the acceptor and one dialler per uplink.
pub async fn start(cfg: ShellConfig) -> anyhow::Result<TrunkHandle> {
    if let Some(path) = &cfg.revoked {
        let set = super::tls::RevocationList::read(path)?;
        info!(path = %path.display(), revoked = set.len(), "trunk revocation list loaded");
        cfg.credentials.revocations().replace(set);
    }
    let endpoint = super::tls::endpoint_with(
        cfg.listen,
        &cfg.credentials,
        cfg.credentials.client_config_any_node()?,
    )?;
    let local = endpoint.local_addr()?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::channel(NET_QUEUE);
    let routes = Arc::new(Mutex::new(HashMap::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(Mutex::new(HashMap::new()));
    let mut rc = RouterConfig::new(cfg.node.clone());
    rc.grace = cfg.grace;
    let creds = Arc::new(cfg.credentials.clone());
    let actor = Actor {
        creds: creds.clone(),
        router: Router::new(rc),
        me: cfg.node.clone(),
        links: HashMap::new(),
        parents: vec![None; cfg.parents.len()],
        peers: vec![None; cfg.peers.len()],
        uplink_addrs: (cfg.parents.clone(), cfg.peers.clone()),
        listen: local,
        routes: routes.clone(),
        events: events.clone(),
        conns: conns.clone(),
        media: cfg.media.as_ref().map(|m| m.events.clone()),
    };
    tokio::spawn(actor.run(cmd_rx, net_rx));
    if let Some(path) = cfg.revoked.clone() {
        tokio::spawn(watch_revocations(path, creds.clone(), cmd_tx.downgrade()));
    }
    let dgrams = cfg.media.as_ref().map(|m| m.datagrams.clone());
    {
        let (endpoint, cmd, creds, me, dgrams) = (
            endpoint.clone(),
            net_tx.clone(),
            creds.clone(),
            cfg.node.clone(),
            dgrams.clone(),
        );
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (cmd, creds, me, dgrams) =
                    (cmd.clone(), creds.clone(), me.clone(), dgrams.clone());
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => {
                            run_link(conn, false, None, me, creds, cmd, dgrams).await;
                        }
                        Err(e) => debug!(error = %e, "trunk handshake refused"),
                    }
                });
            }
        });
    }
    let uplinks = cfg
        .parents
        .iter()
        .enumerate()
        .map(|(i, a)| (Uplink::Parent(i), a.clone()))
        .chain(
            cfg.peers
                .iter()
                .enumerate()
                .map(|(i, a)| (Uplink::Peer(i), a.clone())),
        );
    for (which, addr) in uplinks {
        let (endpoint, cmd, creds, me) = (
            endpoint.clone(),
            net_tx.clone(),
            creds.clone(),
            cfg.node.clone(),
        );
        tokio::spawn(dial_loop(
            endpoint,
            addr,
            which,
            me,
            creds,
            cmd,
            dgrams.clone(),
        ));
    }
    Ok(TrunkHandle {
        cmd: cmd_tx,
        routes,
        events,
        conns,
        endpoint,
        local,
        node: cfg.node.clone(),
    })
}

async fn dial_loop(
    endpoint: quinn::Endpoint,
    addr: String,
    which: Uplink,
    me: NodeName,
    creds: Arc<TrunkCredentials>,
    cmd: mpsc::Sender<Cmd>,
    dgrams: Option<mpsc::Sender<(NodeName, bytes::Bytes)>>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if cmd.is_closed() {
            return;
        }
        let target = match tokio::net::lookup_host(&addr).await.map(|mut a| a.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                warn!(%addr, "trunk uplink address does not resolve");
                None
            }
        };
        if let Some(target) = target {
            // The uplink's name is learned from its Hello (checked against its certificate),
            // so the TLS server name only has to be a valid name; see `tls::client_config`.
            match endpoint.connect(target, super::tls::ANY_NODE) {
                Ok(connecting) => match connecting.await {
                    Ok(conn) => {
                        let started = std::time::Instant::now();
                        let was_up = run_link(
                            conn,
                            true,
                            Some(which),
                            me.clone(),
                            creds.clone(),
                            cmd.clone(),
                            dgrams.clone(),
                        )
                        .await;
                        // Back off afresh only after a trunk that held: one refused or closed
                        // at once (a revoked certificate, a name mismatch) keeps backing off.
                        if was_up && started.elapsed() >= STABLE_LINK {
                            backoff = BACKOFF_MIN;
                        }
                    }
                    Err(e) => debug!(%addr, error = %e, "trunk connect failed"),
                },
                Err(quinn::ConnectError::EndpointStopping) => return,
                Err(e) => warn!(%addr, error = %e, "trunk connect refused locally"),
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs one trunk connection until it ends.
async fn run_link(
    conn: quinn::Connection,
    dialled: bool,
    uplink: Option<Uplink>,
    me: NodeName,
    creds: Arc<TrunkCredentials>,
    cmd: mpsc::Sender<Cmd>,
    dgrams: Option<mpsc::Sender<(NodeName, bytes::Bytes)>>,
) -> bool {
    let streams = tokio::time::timeout(HELLO_TIMEOUT, async {
        if dialled {
            conn.open_bi().await
        } else {
            conn.accept_bi().await
        }
    })
    .await;
    let Ok(Ok((mut send, mut recv))) = streams else {
        conn.close(1u32.into(), b"no control stream");
        return false;
    };
    if send
        .write_all(&encode(&Message::Hello { node: me.clone() }))
        .await
        .is_err()
    {
        return false;
    }
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match dec.next_message() {
                Ok(Some(Message::Hello { node })) => return Some(node),
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) => {}
            }
            match recv.read(&mut buf).await {
                Ok(Some(n)) => dec.push(&buf[..n]),
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let Some(peer) = hello else {
        conn.close(1u32.into(), b"no hello");
        return false;
    };
    if peer == me {
        conn.close(1u32.into(), b"that is me");
        return false;
    }
    match creds.verify_peer_name(&conn, peer.as_str()) {
        Ok(()) => {}
        Err(e @ super::tls::TrunkTlsError::Revoked(_)) => {
            warn!(%peer, error = %e, "refusing trunk");
            conn.close(5u32.into(), b"certificate revoked");
            return false;
        }
        Err(e) => {
            warn!(%peer, error = %e, "trunk peer's certificate does not name it; closing");
            conn.close(2u32.into(), b"name not in certificate");
            return false;
        }
    }
    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    info!(%peer, dialled, "trunk up");
    let (tx, mut rx) = mpsc::channel::<Message>(LINK_QUEUE);
    let _ = cmd
        .send(Cmd::Up {
            peer: peer.clone(),
            link: Link {
                id,
                dialled,
                since: std::time::Instant::now(),
                uplink,
                tx,
                conn: conn.clone(),
            },
        })
        .await;
    let writer = async {
        while let Some(m) = rx.recv().await {
            if send.write_all(&encode(&m)).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    };
    let reader = async {
        loop {
            loop {
                match dec.next_message() {
                    Ok(Some(msg)) => {
                        if cmd
                            .send(Cmd::Msg {
                                peer: peer.clone(),
                                id,
                                msg,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(trunk::DecodeError::FrameTooLarge(_)) => return,
                    Err(e) => debug!(%peer, error = %e, "bad trunk frame skipped"),
                }
            }
            match recv.read(&mut buf).await {
                Ok(Some(n)) => dec.push(&buf[..n]),
                _ => return,
            }
        }
    };
    let datagrams = async {
        let Some(dgrams) = dgrams else {
            return std::future::pending().await;
        };
        while let Ok(d) = conn.read_datagram().await {
            // A full queue means the media task is behind: drop (live media prefers loss).
            if let Err(mpsc::error::TrySendError::Closed(_)) = dgrams.try_send((peer.clone(), d)) {
                return;
            }
        }
    };
    tokio::select! {
        _ = writer => {},
        _ = reader => {},
        _ = datagrams => {},
        _ = conn.closed() => {},
    }
    conn.close(0u32.into(), b"bye");
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == 5u32.into() => {
            tracing::error!(%peer, "trunk closed by the peer: it lists this node's certificate as revoked");
        }
        _ => info!(%peer, "trunk down"),
    }
    let _ = cmd.send(Cmd::Down { peer, id }).await;
    true
}

/// Rereads the revocation list when its size or modification time changes, until the shell is
/// gone; a list that cannot be read or parsed is reported and the previous one kept.
async fn watch_revocations(
    path: std::path::PathBuf,
    creds: Arc<TrunkCredentials>,
    cmd: mpsc::WeakUnboundedSender<Cmd>,
) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(REVOCATION_POLL);
    loop {
        tick.tick().await;
        let Some(cmd) = cmd.upgrade() else { return };
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match super::tls::RevocationList::read(&path) {
            Ok(set) => {
                info!(path = %path.display(), revoked = set.len(), "trunk revocation list reread");
                creds.revocations().replace(set);
                let _ = cmd.send(Cmd::Recheck);
            }
            Err(e) => {
                warn!(error = %e, "trunk revocation list not applied; keeping the previous one")
            }
        }
    }
}

struct Actor {
    creds: Arc<TrunkCredentials>,
    router: Router,
    me: NodeName,
    links: HashMap<NodeName, Link>,
    parents: Vec<Option<NodeName>>,
    peers: Vec<Option<NodeName>>,
    /// The configured `HOST:PORT`s of parents (in order) and peers.
    uplink_addrs: (Vec<String>, Vec<String>),
    listen: SocketAddr,
    routes: Arc<Mutex<HashMap<StreamAddr, Route>>>,
    events: Arc<Mutex<Vec<(ViewerId, StreamAddr, ViewerEvent)>>>,
    conns: Arc<Mutex<HashMap<NodeName, quinn::Connection>>>,
    media: Option<mpsc::UnboundedSender<TrunkEvent>>,
}

impl Actor {
    fn to_media(&self, ev: TrunkEvent) {
        if let Some(m) = &self.media {
            let _ = m.send(ev);
        }
    }

    /// Serves the handles' commands (`ctl`) and the trunks' news (`net`) until both are closed.
    async fn run(mut self, mut ctl: mpsc::UnboundedReceiver<Cmd>, mut net: mpsc::Receiver<Cmd>) {
        let (mut ctl_open, mut net_open) = (true, true);
        while ctl_open || net_open {
            let timer = self.router.poll_timeout();
            let sleep = async {
                match timer {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = ctl.recv(), if ctl_open => match c {
                    Some(c) => self.handle(c),
                    None => ctl_open = false,
                },
                c = net.recv(), if net_open => match c {
                    Some(c) => self.handle(c),
                    None => net_open = false,
                },
                _ = sleep => self.router.handle_timeout(std::time::Instant::now()),
            }
            self.drain();
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = std::time::Instant::now();
        match cmd {
            Cmd::Up { peer, link } => {
                if let Some(old) = self.links.get(&peer) {
                    // Two connections between the same nodes (peers dialling each other, or a
                    // reconnect before the old one timed out): keep the one dialled by the
                    // smaller name, or else the newer.
                    let preferred_dialled = self.me < peer;
                    if old.dialled != link.dialled && link.dialled != preferred_dialled {
                        link.conn.close(3u32.into(), b"duplicate trunk");
                        return;
                    }
                    old.conn.close(3u32.into(), b"replaced");
                    self.router.trunk_down(now, &peer);
                }
                match link.uplink {
                    Some(Uplink::Parent(i)) => self.parents[i] = Some(peer.clone()),
                    Some(Uplink::Peer(i)) => self.peers[i] = Some(peer.clone()),
                    None => {}
                }
                let parents = self.parents.iter().flatten().cloned().collect();
                let peers = self.peers.iter().flatten().cloned().collect();
                self.router.set_uplinks(now, parents, peers);
                if let Ok(mut c) = self.conns.lock() {
                    c.insert(peer.clone(), link.conn.clone());
                }
                self.links.insert(peer.clone(), link);
                self.to_media(TrunkEvent::Reset(peer.clone()));
                self.router.trunk_up(now, peer);
            }
            Cmd::Down { peer, id } => {
                if self.links.get(&peer).is_some_and(|l| l.id == id) {
                    self.links.remove(&peer);
                    if let Ok(mut c) = self.conns.lock() {
                        c.remove(&peer);
                    }
                    self.to_media(TrunkEvent::Reset(peer.clone()));
                    self.router.trunk_down(now, &peer);
                }
            }
            Cmd::Msg { peer, id, msg } => {
                if self.links.get(&peer).is_some_and(|l| l.id == id) {
                    match msg {
                        Message::Flow { .. } | Message::Nack { .. } => {
                            self.to_media(TrunkEvent::Control { from: peer, msg })
                        }
                        msg => self.router.handle_message(now, &peer, msg),
                    }
                }
            }
            Cmd::Control(peer, msg) => {
                if let Some(l) = self.links.get(&peer) {
                    if l.tx.try_send(msg).is_err() {
                        warn!(%peer, "trunk peer is not reading its control stream; closing");
                        l.conn.close(4u32.into(), b"control stream backlog");
                    }
                }
            }
            Cmd::Keyframe(addr, layer) => self.router.request_keyframe(now, &addr, layer),
            Cmd::NextReady(addr) => self.router.next_path_ready(now, &addr),
            Cmd::Publish(s, l) => self.router.publish(now, s, l),
            Cmd::Unpublish(s) => self.router.unpublish(now, &s),
            Cmd::Subscribe(v, a, l) => self.router.subscribe(now, v, a, l),
            Cmd::Unsubscribe(v, a) => self.router.unsubscribe(now, v, &a),
            Cmd::Catalog(tx) => {
                let _ = tx.send(self.router.catalog());
            }
            Cmd::Trunks(tx) => {
                let _ = tx.send(self.links.keys().cloned().collect());
            }
            Cmd::Status(tx) => {
                let _ = tx.send(self.status());
            }
            Cmd::Recheck => {
                for (peer, l) in &self.links {
                    if let Err(e) = self.creds.verify_peer_name(&l.conn, peer.as_str()) {
                        warn!(%peer, error = %e, "closing trunk");
                        l.conn.close(5u32.into(), b"certificate revoked");
                    }
                }
            }
        }
    }

    fn status(&self) -> TrunkStatus {
        let hop = |h: &trunk::Hop| match h {
            trunk::Hop::Local => "local".to_owned(),
            trunk::Hop::Trunk(n) => n.to_string(),
        };
        let mut uplinks = Vec::new();
        for (kind, addrs, names) in [
            ("parent", &self.uplink_addrs.0, &self.parents),
            ("peer", &self.uplink_addrs.1, &self.peers),
        ] {
            for (i, addr) in addrs.iter().enumerate() {
                let node = names.get(i).cloned().flatten();
                uplinks.push(UplinkStatus {
                    kind: if kind == "parent" && i > 0 {
                        "second_parent"
                    } else {
                        kind
                    },
                    addr: Some(addr.clone()),
                    up: node.as_ref().is_some_and(|n| self.links.contains_key(n)),
                    node: node.map(|n| n.to_string()),
                });
            }
        }
        let mut trunks: Vec<LinkStatus> = self
            .links
            .iter()
            .map(|(peer, l)| {
                let st = l.conn.stats();
                LinkStatus {
                    peer: peer.to_string(),
                    role: match self.router.role_of(peer) {
                        trunk::TrunkRole::Parent(0) => "parent",
                        trunk::TrunkRole::Parent(_) => "second_parent",
                        trunk::TrunkRole::Peer => "peer",
                        trunk::TrunkRole::Child => "child",
                    },
                    dialled: l.dialled,
                    up_secs: l.since.elapsed().as_secs(),
                    rtt_ms: l.conn.rtt().as_secs_f64() * 1000.0,
                    tx_bytes: st.udp_tx.bytes,
                    rx_bytes: st.udp_rx.bytes,
                    lost_packets: st.path.lost_packets,
                }
            })
            .collect();
        trunks.sort_by(|a, b| a.peer.cmp(&b.peer));
        let mut routes: Vec<RouteStatus> = self
            .routes
            .lock()
            .map(|r| {
                r.iter()
                    .map(|(addr, route)| RouteStatus {
                        stream: addr.to_string(),
                        source: route.source.as_ref().map(hop),
                        next: route.next.as_ref().map(hop),
                        outputs: route
                            .outputs
                            .iter()
                            .map(|(h, layers)| RouteOutput {
                                to: hop(h),
                                layers: layers.iter().map(|l| l.0).collect(),
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        routes.sort_by(|a, b| a.stream.cmp(&b.stream));
        TrunkStatus {
            node: self.me.to_string(),
            listen: self.listen.to_string(),
            uplinks,
            trunks,
            routes,
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.router.poll_output() {
            match out {
                Output::Send { trunk, msg } => {
                    if let Some(l) = self.links.get(&trunk) {
                        if l.tx.try_send(msg).is_err() {
                            warn!(peer = %trunk, "trunk peer is not reading its control stream; closing");
                            l.conn.close(4u32.into(), b"control stream backlog");
                        }
                    }
                }
                Output::Route { addr, route } => {
                    if let Ok(mut r) = self.routes.lock() {
                        if route == Route::default() {
                            r.remove(&addr);
                        } else {
                            r.insert(addr.clone(), route.clone());
                        }
                    }
                    self.to_media(TrunkEvent::Route { addr, route });
                }
                Output::PublisherKeyframe { stream, layer } => {
                    debug!(%stream, ?layer, "keyframe request for a local publisher");
                    self.to_media(TrunkEvent::PublisherKeyframe { stream, layer });
                }
                Output::Viewer {
                    viewer,
                    addr,
                    event,
                } => {
                    if let Ok(mut e) = self.events.lock() {
                        // Kept for `take_events`; bounded when nobody takes them.
                        if e.len() >= EVENTS_KEPT {
                            e.remove(0);
                        }
                        e.push((viewer, addr.clone(), event));
                    }
                    self.to_media(TrunkEvent::Viewer {
                        viewer,
                        addr,
                        event,
                    });
                }
            }
        }
    }
}
