//! The tokio shell: [`UdpRelay`], a UDP relay between clients and one upstream address that runs
//! one [`Impairment`] per direction (the `yiwang-relay` binary is a CLI around it). Behind the
//! `relay` feature, so the model ([`crate::link`]) stays free of tokio.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{self, AtomicBool};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::config::ImpairConfig;
use crate::link::{ImpairStats, Impairment};

/// How long a client's mapping (its upstream socket) lives without traffic either way.
const CLIENT_IDLE: Duration = Duration::from_secs(120);
/// How often idle mappings are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// At most this many clients at once; datagrams of further clients are dropped.
const MAX_CLIENTS: usize = 4096;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Mixed into the down direction's seed so the two directions never share a random stream, even
/// when given the same configuration (`--both`).
const DOWN_SEED_SALT: u64 = 0xD0_57_EA_11_5A_17_00_01;

/// Counters of a [`UdpRelay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Client → upstream direction.
    pub up: ImpairStats,
    /// Upstream → client direction.
    pub down: ImpairStats,
    /// Clients currently mapped (each with its own upstream socket).
    pub clients: usize,
    /// Datagrams the model delivered but the relay could not send (socket errors, client table
    /// full).
    pub send_errors: u64,
    /// Datagrams dropped (both directions) while the link was cut ([`UdpRelay::set_cut`]).
    pub cut_dropped: u64,
}

/// A UDP relay that impairs traffic between clients and one upstream address, like a NAT on a bad
/// link.
///
/// Datagrams from any client to the listen address go through the `up` [`Impairment`] and are
/// then sent to the upstream from a socket of that client's own, bound to the listen IP with an
/// ephemeral port. **The relay rewrites the source address**: the upstream sees one address per
/// client (the relay's), as behind a NAT, never the client's. Replies from the upstream to that
/// socket go through the `down` [`Impairment`] and back to the client from the listen socket.
/// (WebRTC works through it because the SFU is ICE-lite and accepts peer-reflexive candidates.)
///
/// Both directions are single shared links: all clients share one bottleneck, one loss process.
/// A client's mapping expires after 120 s without traffic; at most 4096 clients at once. Memory
/// is bounded by [`HELD_BYTES_LIMIT`](crate::HELD_BYTES_LIMIT) per direction plus small channels.
#[derive(Debug)]
pub struct UdpRelay {
    local_addr: SocketAddr,
    stats: Arc<Mutex<RelayStats>>,
    cut: Arc<AtomicBool>,
    rebind: Arc<Notify>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl UdpRelay {
    /// Binds `listen` (port 0 for an ephemeral port) and starts relaying to `upstream`.
    ///
    /// The down direction's seed is mixed with a constant so that the same configuration in both
    /// directions does not give both the same random stream. Must be called inside a tokio
    /// runtime; the relay runs as one task (plus one receive task per client) until
    /// [`shutdown`](Self::shutdown) or drop.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        up: ImpairConfig,
        mut down: ImpairConfig,
    ) -> io::Result<UdpRelay> {
        let socket = UdpSocket::bind(listen).await?;
        let local_addr = socket.local_addr()?;
        down.seed ^= DOWN_SEED_SALT;
        let stats = Arc::new(Mutex::new(RelayStats::default()));
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let bind_ip = match (local_addr.ip(), upstream.ip()) {
            (IpAddr::V4(ip), IpAddr::V4(_)) => IpAddr::V4(ip),
            (IpAddr::V6(ip), IpAddr::V6(_)) => IpAddr::V6(ip),
            (_, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (_, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let cut = Arc::new(AtomicBool::new(false));
        let rebind = Arc::new(Notify::new());
        let shell = RelayShell {
            cut: cut.clone(),
            rebind: rebind.clone(),
            cut_dropped: 0,
            socket,
            upstream,
            bind_ip,
            up: Impairment::new(up),
            down: Impairment::new(down),
            clients: HashMap::new(),
            readers: JoinSet::new(),
            stats: stats.clone(),
            send_errors: 0,
        };
        let task = tokio::spawn(shell.run(shutdown_rx));
        Ok(UdpRelay {
            local_addr,
            stats,
            cut,
            rebind,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// The bound listen address (clients send here).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cuts the link (`true`: every datagram in either direction is dropped as it arrives) or
    /// restores it. Datagrams already held by the model (delayed) are still delivered. For tests
    /// of tunnels and dead zones: the cut is total and instant, as when a tablet loses coverage.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, atomic::Ordering::Relaxed);
    }

    /// Forgets every client's mapping, as a NAT does when it reboots or a tablet roams to another
    /// network: each client's next datagram opens a new upstream socket, so the upstream sees the
    /// same client arrive from a new address (a new port on the listen IP). Replies still on the
    /// way to an old address are lost (its socket is closed). For tests of QUIC connection
    /// migration and ICE riding an address change mid-stream.
    pub fn rebind(&self) {
        self.rebind.notify_one();
    }

    /// Counters of both directions (updated by the relay task after every event).
    pub fn stats(&self) -> RelayStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the relay and waits for its task to end; every socket is closed on return.
    /// Datagrams still held by the model are discarded.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// One client's mapping.
struct Client {
    socket: Arc<UdpSocket>,
    last_active: tokio::time::Instant,
    reader: AbortHandle,
}

/// The relay task's state.
struct RelayShell {
    cut: Arc<AtomicBool>,
    rebind: Arc<Notify>,
    cut_dropped: u64,
    socket: UdpSocket,
    upstream: SocketAddr,
    bind_ip: IpAddr,
    up: Impairment<(SocketAddr, Vec<u8>)>,
    down: Impairment<(SocketAddr, Vec<u8>)>,
    clients: HashMap<SocketAddr, Client>,
    readers: JoinSet<()>,
    stats: Arc<Mutex<RelayStats>>,
    send_errors: u64,
}

impl RelayShell {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        let (down_tx, mut down_rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(1024);
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let up_timer = tokio::time::sleep_until(far());
        let down_timer = tokio::time::sleep_until(far());
        tokio::pin!(up_timer, down_timer);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = tokio::time::Instant::now();
            while let Some((client, data)) = self.up.poll(now.into_std()) {
                self.send_up(client, &data, &down_tx).await;
            }
            while let Some((client, data)) = self.down.poll(now.into_std()) {
                if let Err(e) = self.socket.send_to(&data, client).await {
                    tracing::debug!(%client, error = %e, "relay: send to client failed");
                    self.send_errors += 1;
                }
            }
            self.publish();
            let up_due = self.up.poll_timeout().map(tokio::time::Instant::from_std);
            let down_due = self.down.poll_timeout().map(tokio::time::Instant::from_std);
            if let Some(at) = up_due {
                up_timer.as_mut().reset(at);
            }
            if let Some(at) = down_due {
                down_timer.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                // Before the sockets: a datagram sent after `rebind()` returned takes a new mapping.
                () = self.rebind.notified() => self.forget_clients(),
                () = &mut up_timer, if up_due.is_some() => {}
                () = &mut down_timer, if down_due.is_some() => {}
                Some((client, data)) = down_rx.recv() => {
                    if self.cut.load(atomic::Ordering::Relaxed) {
                        self.cut_dropped += 1;
                        continue;
                    }
                    let now = tokio::time::Instant::now();
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.last_active = now;
                    }
                    let len = data.len();
                    self.down.push(now.into_std(), (client, data), len);
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        if self.cut.load(atomic::Ordering::Relaxed) {
                            self.cut_dropped += 1;
                            continue;
                        }
                        let now = tokio::time::Instant::now().into_std();
                        self.up.push(now, (from, buf[..n].to_vec()), n);
                    }
                    Err(e) => tracing::debug!(error = %e, "relay: receive on listen socket failed"),
                },
                Some(_) = self.readers.join_next() => {}
                _ = sweep.tick() => self.expire_idle(),
            }
        }
        self.readers.abort_all();
    }

    /// Sends a datagram the up model delivered, creating the client's mapping if needed.
    async fn send_up(
        &mut self,
        client: SocketAddr,
        data: &[u8],
        down_tx: &mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ) {
        let now = tokio::time::Instant::now();
        if !self.clients.contains_key(&client) {
            if self.clients.len() >= MAX_CLIENTS {
                tracing::warn!(
                    "relay: client table full ({MAX_CLIENTS}), dropping a new client's datagram"
                );
                self.send_errors += 1;
                return;
            }
            match self.map_client(client, down_tx).await {
                Ok(c) => {
                    self.clients.insert(client, c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay: cannot open an upstream socket for a client");
                    self.send_errors += 1;
                    return;
                }
            }
        }
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        c.last_active = now;
        if let Err(e) = c.socket.send(data).await {
            tracing::debug!(%client, error = %e, "relay: send upstream failed");
            self.send_errors += 1;
        }
    }

    async fn map_client(
        &mut self,
        client: SocketAddr,
        down_tx: &mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ) -> io::Result<Client> {
        let socket = UdpSocket::bind(SocketAddr::new(self.bind_ip, 0)).await?;
        // Connected: the kernel drops anything not from the upstream (endpoint-dependent filtering).
        socket.connect(self.upstream).await?;
        tracing::debug!(%client, mapped = %socket.local_addr()?, "relay: new client mapping");
        let socket = Arc::new(socket);
        let reader_socket = socket.clone();
        let tx = down_tx.clone();
        let reader = self.readers.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match reader_socket.recv(&mut buf).await {
                    Ok(n) => {
                        if tx.send((client, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                    // ICMP port unreachable from the upstream, reported on the connected socket.
                    Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {}
                    Err(e) => {
                        tracing::debug!(%client, error = %e, "relay: upstream socket receive failed");
                        break;
                    }
                }
            }
        });
        Ok(Client {
            socket,
            last_active: tokio::time::Instant::now(),
            reader,
        })
    }

    fn forget_clients(&mut self) {
        tracing::debug!(
            clients = self.clients.len(),
            "relay: every client mapping forgotten"
        );
        for (_, c) in self.clients.drain() {
            c.reader.abort();
        }
    }

    fn expire_idle(&mut self) {
        let now = tokio::time::Instant::now();
        self.clients.retain(|client, c| {
            let keep = now.duration_since(c.last_active) < CLIENT_IDLE;
            if !keep {
                tracing::debug!(%client, "relay: client mapping expired");
                c.reader.abort();
            }
            keep
        });
    }

    fn publish(&self) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        *stats = RelayStats {
            up: self.up.stats(),
            down: self.down.stats(),
            clients: self.clients.len(),
            send_errors: self.send_errors,
            cut_dropped: self.cut_dropped,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    const WAIT: Duration = Duration::from_secs(10);

    /// An echo server on an ephemeral loopback port; returns its address and the set of source
    /// addresses it has seen.
    async fn echo_server() -> (
        SocketAddr,
        Arc<Mutex<std::collections::HashSet<SocketAddr>>>,
    ) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                seen2.lock().unwrap().insert(from);
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        (addr, seen)
    }

    async fn client(relay: &UdpRelay) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(relay.local_addr()).await.unwrap();
        socket
    }

    #[tokio::test]
    async fn relay_without_loss_echoes_everything_in_order() {
        let (echo, seen) = echo_server().await;
        let relay = UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            ImpairConfig::default(),
            ImpairConfig::default(),
        )
        .await
        .unwrap();
        let listen = relay.local_addr();
        let c = client(&relay).await;
        let mut buf = [0u8; 64];
        for i in 0..1_000u32 {
            c.send(&i.to_be_bytes()).await.unwrap();
            let n = tokio::time::timeout(WAIT, c.recv(&mut buf))
                .await
                .expect("echo timed out")
                .unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes());
        }
        let s = relay.stats();
        assert_eq!(
            (s.up.pushed, s.up.delivered, s.down.pushed, s.down.delivered),
            (1_000, 1_000, 1_000, 1_000)
        );
        assert_eq!((s.clients, s.send_errors), (1, 0));
        // The upstream saw the relay's per-client address, not the client's.
        let seen: Vec<SocketAddr> = seen.lock().unwrap().iter().copied().collect();
        assert_eq!(seen.len(), 1);
        assert_ne!(seen[0], c.local_addr().unwrap());
        assert_eq!(seen[0].ip(), listen.ip());
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
        // Every socket is closed: the listen port can be bound again.
        UdpSocket::bind(listen).await.unwrap();
    }

    #[tokio::test]
    async fn relay_gives_each_client_its_own_upstream_address() {
        let (echo, seen) = echo_server().await;
        let relay = UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            ImpairConfig::default(),
            ImpairConfig::default(),
        )
        .await
        .unwrap();
        let (a, b) = (client(&relay).await, client(&relay).await);
        let mut buf = [0u8; 16];
        for (c, msg) in [(&a, b"a"), (&b, b"b"), (&a, b"A")] {
            c.send(msg).await.unwrap();
            let n = tokio::time::timeout(WAIT, c.recv(&mut buf))
                .await
                .expect("echo timed out")
                .unwrap();
            assert_eq!(&buf[..n], msg);
        }
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(relay.stats().clients, 2);
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
    }

    #[tokio::test]
    async fn a_rebound_relay_sends_each_client_from_a_new_address() {
        let (echo, seen) = echo_server().await;
        let relay = UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            ImpairConfig::default(),
            ImpairConfig::default(),
        )
        .await
        .unwrap();
        let c = client(&relay).await;
        let mut buf = [0u8; 16];
        let echo_of = |msg: &'static [u8]| {
            let c = &c;
            let mut buf = [0u8; 16];
            async move {
                c.send(msg).await.unwrap();
                let n = tokio::time::timeout(WAIT, c.recv(&mut buf))
                    .await
                    .expect("echo timed out")
                    .unwrap();
                assert_eq!(&buf[..n], msg);
            }
        };
        echo_of(b"before").await;
        relay.rebind();
        // The rebind is handled by the relay task before the next datagram it receives.
        echo_of(b"after").await;
        let seen: Vec<SocketAddr> = seen.lock().unwrap().iter().copied().collect();
        assert_eq!(
            seen.len(),
            2,
            "the upstream saw the client from two addresses: {seen:?}"
        );
        assert_eq!(relay.stats().clients, 1, "the old mapping is gone");
        // The client itself kept its address and its relay address: only the upstream side moved.
        c.send(b"again").await.unwrap();
        tokio::time::timeout(WAIT, c.recv(&mut buf))
            .await
            .expect("echo timed out")
            .unwrap();
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
    }

    #[tokio::test]
    async fn relay_with_ten_percent_loss_each_way_returns_about_81_percent() {
        let (echo, _) = echo_server().await;
        let lossy: ImpairConfig = "loss=10%,seed=1".parse().unwrap();
        let relay = UdpRelay::start("127.0.0.1:0".parse().unwrap(), echo, lossy.clone(), lossy)
            .await
            .unwrap();
        let c = client(&relay).await;
        let mut received = 0u64;
        let mut buf = [0u8; 64];
        let mut sent = 0u64;
        // Windows of 50 so no kernel buffer overflows; after each, wait until every datagram is
        // accounted for (delivered or dropped by the model, and every echo read).
        for window in 0..20u32 {
            for i in window * 50..(window + 1) * 50 {
                c.send(&i.to_be_bytes()).await.unwrap();
                sent += 1;
            }
            tokio::time::timeout(WAIT, async {
                loop {
                    while c.try_recv(&mut buf).is_ok() {
                        received += 1;
                    }
                    let s = relay.stats();
                    let settled = s.up.pushed == sent
                        && s.up.delivered + s.up.dropped() == sent
                        && s.down.pushed == s.up.delivered
                        && s.down.delivered + s.down.dropped() == s.down.pushed
                        && received == s.down.delivered;
                    if settled {
                        break;
                    }
                    tokio::time::sleep(MS).await;
                }
            })
            .await
            .expect("relay did not settle");
        }
        let s = relay.stats();
        assert_eq!(s.up.dropped(), s.up.dropped_random);
        assert!(
            (760..=860).contains(&received),
            "{received} echoes of 1000; {s:?}"
        );
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
    }

    #[tokio::test]
    async fn relay_delays_in_real_time() {
        let (echo, _) = echo_server().await;
        let delayed = ImpairConfig::default().delay(30 * MS);
        let relay = UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            delayed.clone(),
            delayed,
        )
        .await
        .unwrap();
        let c = client(&relay).await;
        let mut buf = [0u8; 16];
        let start = tokio::time::Instant::now();
        c.send(b"x").await.unwrap();
        tokio::time::timeout(WAIT, c.recv(&mut buf))
            .await
            .expect("echo timed out")
            .unwrap();
        assert!(start.elapsed() >= 60 * MS, "{:?}", start.elapsed());
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
    }
}
