//! The node's own accept loop for its HTTP, HTTPS and metrics listeners: hyper's HTTP/1.1
//! connection serving the axum `Router`, with the timeouts and caps plain `axum::serve` lacks.
//!
//! What holds here (docs/api.md, "Connections"):
//!
//! - **Header timeout**: a new connection must finish its TLS handshake (HTTPS) and send the
//!   headers of its first request within `[http] header_timeout_secs`, counted from accept.
//! - **Idle timeout**: between requests (keep-alive, or a next request whose headers trickle) a
//!   connection may stay at most `[http] idle_timeout_secs`.
//! - **Body timeout**: every request carries a [`BodyDeadline`] (`[http] body_timeout_secs` after
//!   its headers arrived); the handlers that read bodies (`crate::http`) answer 408
//!   `body_timeout` with `Connection: close` when it passes. While a request is in progress
//!   (handler running, response still being produced) the idle and header timeouts do not apply.
//! - **Connection caps**: at most `max_connections` in all (one table for every listener of the
//!   node) and `max_connections_per_ip` from one address, both kept below the process's
//!   descriptor limit ([`raise_nofile_limit`], [`Limits::clamped`]). When a cap is reached the
//!   connection that has been *idle* longest (no request in progress: never sent one, or
//!   waiting between requests) — of that address, or of all — is closed to make room; only
//!   when every connection in the way is busy is the newcomer closed instead. So a flood of
//!   idle sockets from one address cannot lock out a health probe from the same address: the
//!   probe's fresh connection evicts the flood's oldest, and its request starts at once.
//!
//! A WebSocket upgrade (`/ws`) leaves the table once upgraded: the signaling hub bounds its
//! sessions. This module knows nothing of routes; `node.rs` composes it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::Service as _;
use tracing::{debug, info, warn};

/// Timeouts and caps of the node's HTTP listeners (from `[http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Accept → TLS handshake done and the first request's headers read.
    pub header_timeout: Duration,
    /// Longest wait between two requests of one connection.
    pub idle_timeout: Duration,
    /// Headers read → the whole body read (enforced by the handlers that read bodies).
    pub body_timeout: Duration,
    /// Open connections, all listeners together.
    pub max_connections: usize,
    /// Open connections from one IP address.
    pub max_connections_per_ip: usize,
}

/// Descriptors kept free of HTTP connections: the media and QUIC sockets, SQLite, attachments,
/// WebSockets after their upgrade, logs.
pub fn descriptor_reserve(nofile: u64) -> u64 {
    (nofile / 4).max(128)
}

impl Limits {
    /// These limits with both caps kept below `nofile` (the descriptor limit) minus
    /// [`descriptor_reserve`], and the per-IP cap at most the global one (each at least 1).
    pub fn clamped(mut self, nofile: u64) -> Limits {
        let room = nofile.saturating_sub(descriptor_reserve(nofile)).max(1);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        self.max_connections = self.max_connections.clamp(1, room);
        self.max_connections_per_ip = self.max_connections_per_ip.clamp(1, self.max_connections);
        self
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force after.
/// Failures are logged, not fatal (the caps are then clamped to the old limit).
pub fn raise_nofile_limit() -> u64 {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => {
                        info!(from = soft, to = hard, "descriptor limit raised");
                        hard
                    }
                    Err(e) => {
                        warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
                        soft
                    }
                }
            }
            Ok((soft, _)) => {
                info!(limit = soft, "descriptor limit");
                soft
            }
            Err(e) => {
                warn!(error = %e, "cannot read the descriptor limit; assuming 1024");
                1024
            }
        }
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// When the body of a request must have arrived: put into every request's extensions by the
/// listener, read by the handlers that read bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Instant);

/// Counters of the connection table (for tests and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections open now.
    pub open: usize,
    /// Idle connections closed to make room for a newcomer.
    pub evicted: u64,
    /// Newcomers closed at once because every connection in the way was busy.
    pub refused: u64,
    /// Connections closed by the header or idle timeout.
    pub timed_out: u64,
}

/// The connections of every HTTP listener of one node.
#[derive(Debug)]
pub struct ConnTable {
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
    stats: ConnStats,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    ip: IpAddr,
    accepted: Instant,
    state: Mutex<ConnState>,
    wake: Notify,
}

#[derive(Debug)]
struct ConnState {
    /// Requests whose response has not been sent in full.
    in_flight: usize,
    /// Requests begun so far.
    served: u64,
    /// Since when no request is in progress.
    idle_since: Instant,
    evicted: bool,
}

/// Why a connection was closed by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Evicted,
    HeaderTimeout,
    IdleTimeout,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// Idle since, or `None` while a request is in progress.
    fn idle_since(&self) -> Option<Instant> {
        let s = lock(&self.state);
        (s.in_flight == 0).then_some(s.idle_since)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = lock(&self.state);
        s.in_flight += 1;
        s.served += 1;
        drop(s);
        self.wake.notify_one();
        InFlight(self.clone())
    }

    /// Resolves when the node should close this connection.
    async fn closed(&self, limits: &Limits) -> Close {
        loop {
            let due = {
                let s = lock(&self.state);
                if s.evicted {
                    return Close::Evicted;
                }
                match (s.in_flight, s.served) {
                    (0, 0) => Some((self.accepted + limits.header_timeout, Close::HeaderTimeout)),
                    (0, _) => Some((s.idle_since + limits.idle_timeout, Close::IdleTimeout)),
                    _ => None,
                }
            };
            match due {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

/// A request in progress on a connection; dropped when its response body is done.
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.0.state);
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
        drop(s);
        self.0.wake.notify_one();
    }
}

/// A response body that keeps its request counted as in progress until it is sent or dropped.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl ConnTable {
    /// A table enforcing `limits` (already [`Limits::clamped`]).
    pub fn new(limits: Limits) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            limits,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counters now.
    pub fn stats(&self) -> ConnStats {
        let inner = lock(&self.inner);
        ConnStats {
            open: inner.conns.len(),
            ..inner.stats
        }
    }

    /// Admits a connection from `ip`, closing the longest-idle one in the way when a cap is
    /// reached; `None` when every connection in the way is busy.
    fn admit(&self, ip: IpAddr) -> Option<Arc<Conn>> {
        let mut inner = lock(&self.inner);
        if inner.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_connections_per_ip
            && !inner.evict_idlest(Some(ip))
        {
            inner.stats.refused += 1;
            return None;
        }
        if inner.conns.len() >= self.limits.max_connections && !inner.evict_idlest(None) {
            inner.stats.refused += 1;
            return None;
        }
        inner.next_id += 1;
        let now = Instant::now();
        let conn = Arc::new(Conn {
            id: inner.next_id,
            ip,
            accepted: now,
            state: Mutex::new(ConnState {
                in_flight: 0,
                served: 0,
                idle_since: now,
                evicted: false,
            }),
            wake: Notify::new(),
        });
        inner.conns.insert(conn.id, conn.clone());
        *inner.per_ip.entry(ip).or_insert(0) += 1;
        Some(conn)
    }

    fn remove(&self, conn: &Conn, why: Option<Close>) {
        let mut inner = lock(&self.inner);
        if matches!(why, Some(Close::HeaderTimeout | Close::IdleTimeout)) {
            inner.stats.timed_out += 1;
        }
        inner.forget(conn.id);
    }
}

impl Inner {
    fn forget(&mut self, id: u64) -> Option<Arc<Conn>> {
        let conn = self.conns.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&conn.ip);
            }
        }
        Some(conn)
    }

    /// Closes the connection (of `ip`, or any) idle the longest; false if none is idle.
    fn evict_idlest(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .conns
            .values()
            .filter(|c| ip.is_none_or(|ip| c.ip == ip))
            .filter_map(|c| c.idle_since().map(|t| (t, c.id)))
            .min();
        let Some((_, id)) = victim else {
            return false;
        };
        if let Some(conn) = self.forget(id) {
            lock(&conn.state).evicted = true;
            conn.wake.notify_one();
            self.stats.evicted += 1;
        }
        true
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until this future is dropped, which closes
/// its connections too; every connection is entered in `table`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    table: Arc<ConnTable>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(conn) = table.admit(peer.ip()) else {
            debug!("connection refused: every connection in the way is busy");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(run_conn(
            tcp,
            peer,
            tls.clone(),
            app.clone(),
            conn,
            table.clone(),
        ));
    }
}

async fn run_conn(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    conn: Arc<Conn>,
    table: Arc<ConnTable>,
) {
    let limits = table.limits;
    let why = match tls {
        None => http1(tcp, peer, app, &conn, &limits).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout_at(
                conn.accepted + limits.header_timeout,
                acceptor.accept(tcp),
            );
            let tls = tokio::select! {
                r = handshake => r,
                why = conn.closed(&limits) => {
                    table.remove(&conn, Some(why));
                    return;
                }
            };
            match tls {
                Ok(Ok(stream)) => http1(stream, peer, app, &conn, &limits).await,
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => Some(Close::HeaderTimeout),
            }
        }
    };
    if let Some(why) = why {
        debug!(?why, "connection closed by the node");
    }
    table.remove(&conn, why);
}

/// Serves HTTP/1.1 on `io` until the client leaves or the node closes the connection.
async fn http1<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    conn: &Arc<Conn>,
    limits: &Limits,
) -> Option<Close>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = limits.body_timeout;
    let tracker = conn.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let in_flight = tracker.begin();
        req.extensions_mut()
            .insert(BodyDeadline(Instant::now() + body_timeout));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let resp = match app.call(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|inner| Tracked {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header and idle timeouts are this module's (`Conn::closed`), not hyper's.
    builder.timer(hyper_util::rt::TokioTimer::new());
    builder.header_read_timeout(None);
    let serving = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        r = serving => {
            if let Err(e) = r {
                debug!(error = %e, "HTTP connection ended with an error");
            }
            None
        }
        why = conn.closed(limits) => Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: max,
            max_connections_per_ip: per_ip,
        }
    }

    #[test]
    fn caps_stay_below_the_descriptor_limit() {
        let l = limits(4096, 512).clamped(1024);
        assert_eq!((l.max_connections, l.max_connections_per_ip), (768, 512));
        let l = limits(4096, 8192).clamped(1 << 20);
        assert_eq!((l.max_connections, l.max_connections_per_ip), (4096, 4096));
        let l = limits(0, 0).clamped(64);
        assert_eq!((l.max_connections, l.max_connections_per_ip), (1, 1));
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_and_refuses_when_all_are_busy() {
        let table = ConnTable::new(limits(3, 2));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = table.admit(a).unwrap();
        let a2 = table.admit(a).unwrap();
        // a1 is busy: the per-IP cap evicts a2, the idle one.
        let busy = a1.begin();
        let a3 = table.admit(a).unwrap();
        assert!(lock(&a2.state).evicted && !lock(&a1.state).evicted);
        let b1 = table.admit(b).unwrap();
        // Global cap 3 (a1 busy, a3 and b1 idle): a3 has been idle longer than b1.
        let b2 = table.admit(b).unwrap();
        assert!(lock(&a3.state).evicted);
        // a1 busy, b1 and b2 idle: the global cap evicts b1, the longer idle.
        let _a4 = table.admit(a).unwrap().begin();
        assert!(lock(&b1.state).evicted && !lock(&b2.state).evicted);
        assert_eq!(table.stats().open, 3);
        // Everything busy: newcomers are refused, whichever address they come from.
        let _b2 = b2.begin();
        assert!(table.admit(b).is_none(), "every connection is busy");
        assert!(table.admit(a).is_none(), "every connection of a is busy");
        assert_eq!(table.stats().refused, 2);
        assert_eq!(table.stats().evicted, 3);
        drop(busy);
        assert!(table.admit("10.0.0.3".parse().unwrap()).is_some());
    }
}
