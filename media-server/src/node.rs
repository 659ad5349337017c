//! Composition of a site node: identity, token verifier, media socket and task, HTTP listener(s),
//! QUIC endpoint and signaling hub. `media-server`'s `main` and the integration tests both start a node through
//! [`start`], so what the tests exercise is what operators run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Once};

use anyhow::Context as _;
use ed25519_dalek::VerifyingKey;
use signaling::auth::TokenVerifier;
use signaling::core::Core;
use signaling::store::Store;

/// The office store's file in the data directory (SQLite, WAL).
pub const OFFICE_DB: &str = "office.db";
use signaling::ids::NodeId;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tracing::info;

use crate::attachments::AttachmentStore;
use crate::config::NodeConfig;
use crate::health::{Health, Probes, TaskFailure, Watchdog};
use crate::http::{self, AppState};
use crate::identity::NodeIdentity;
use crate::media::{self, MediaHandle};
use crate::metrics::Metrics;
use crate::quic;
use crate::signal::{self, Hub};
use crate::streams::LiveStreams;
use sfu::Sfu;

/// Installs the process-wide crypto providers once: str0m's (aws-lc-rs, for DTLS/SRTP) and
/// rustls's (ring, for QUIC). Each library uses its own; installing both up front keeps them
/// from racing to pick a default at first use.
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        str0m::crypto::from_feature_flags().install_process_default();
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A running node and the addresses it actually bound.
pub struct RunningNode {
    /// This node's id.
    pub node_id: NodeId,
    /// HTTP listener address.
    pub http_addr: SocketAddr,
    /// Whether that listener speaks HTTPS (`[http] https`).
    pub https: bool,
    /// Separate metrics listener, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The media (WebRTC) UDP socket's address.
    pub media_addr: SocketAddr,
    /// The address put in ICE candidates.
    pub advertised_media_addr: SocketAddr,
    /// The QUIC endpoint's address.
    pub quic_addr: SocketAddr,
    /// Keys and certificate.
    pub identity: Arc<NodeIdentity>,
    /// The live-stream table.
    pub live: LiveStreams,
    /// Node counters.
    pub metrics: Arc<Metrics>,
    /// The media task.
    pub media: MediaHandle,
    /// The signaling server.
    pub hub: Arc<Hub>,
    /// The trunk shell, when `[trunk]` is configured.
    pub trunk: Option<crate::cascade::shell::TrunkHandle>,
    /// The node's essential tasks: [`RunningNode::failed`] resolves when one stops.
    pub watchdog: Arc<Watchdog>,
    /// The HTTP listeners' connections (caps, timeouts, counters).
    pub connections: Arc<crate::listener::ConnTable>,
    probes: Probes,
    tasks: Vec<JoinHandle<()>>,
    quic: quinn::Endpoint,
}

impl RunningNode {
    /// The line printed once every listener is bound (pinned: scripts wait for it).
    pub fn ready_line(&self) -> String {
        format!(
            "ready http={} media={} quic={}",
            self.http_addr, self.media_addr, self.quic_addr
        )
    }

    /// Resolves when an essential task (media, signaling timers, QUIC acceptor, HTTP server,
    /// trunk sync) has returned or panicked: the node can no longer serve and should exit
    /// non-zero so that its supervisor restarts it.
    pub async fn failed(&self) -> TaskFailure {
        self.watchdog.failed().await
    }

    /// What `GET /healthz` would answer now.
    pub async fn health(&self) -> Health {
        crate::health::check(self.node_id.as_str(), &self.probes).await
    }

    /// Stops every task of the node.
    pub async fn shutdown(self) {
        self.quic.close(0u32.into(), b"node shutting down");
        if let Some(t) = self.trunk {
            t.shutdown().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The IP to advertise in ICE candidates for a socket bound to `bound`.
pub fn advertise_ip(bound: IpAddr, configured: Option<IpAddr>) -> IpAddr {
    if let Some(ip) = configured {
        return ip;
    }
    if !bound.is_unspecified() {
        return bound;
    }
    // The address of the interface that routes outward; connecting a UDP socket sends nothing.
    StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Receive and send buffer asked for on the media socket: bursts from many peers (or junk) must
/// not overflow the kernel's default ~200 KiB and cost real media packets.
pub const MEDIA_SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Binds the one WebRTC UDP socket with large kernel buffers (the kernel may cap them at
/// `net.core.rmem_max`; that is logged, not fatal).
fn bind_media_socket(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    for (what, r) in [
        ("receive", socket.set_recv_buffer_size(MEDIA_SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(MEDIA_SOCKET_BUFFER)),
    ] {
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot enlarge media socket {what} buffer");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// The data directory holds keys, the office store (orders, chat, positions) and attachments:
/// only the node's user may enter it (0700), whatever mode it was created with.
fn restrict_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("node.data_dir {}: cannot make it private", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The office store's files 0600 and the attachments folder 0700 (SQLite and `mkdir` follow the
/// umask, usually 0644/0755).
fn restrict_files(dir: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for (name, mode) in [
            (OFFICE_DB.to_string(), 0o600),
            (format!("{OFFICE_DB}-wal"), 0o600),
            (format!("{OFFICE_DB}-shm"), 0o600),
            ("attachments".to_string(), 0o700),
        ] {
            let path = dir.join(name);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("{}: cannot make it private", path.display()))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Builds the token verifier the configuration asks for.
pub fn verifier(config: &NodeConfig, identity: &NodeIdentity) -> anyhow::Result<TokenVerifier> {
    let mut v = TokenVerifier::new(identity.node_id.clone());
    v.set_max_lifetime_secs(config.auth.max_token_lifetime_secs);
    if config.auth.trust_own_key {
        v.trust_issuer(identity.verifying_key(), identity.node_id.clone());
    }
    for entry in &config.auth.trusted_issuers {
        let (issuer, hexkey) = match entry.split_once('=') {
            Some((node, key)) => {
                let node = NodeId::parse(node.trim()).map_err(|e| {
                    anyhow::anyhow!("auth.trusted_issuers: {entry:?}: the node before '=': {e}")
                })?;
                (Some(node), key.trim())
            }
            None => (None, entry.trim()),
        };
        let bytes: [u8; 32] = hex::decode(hexkey)
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| {
                format!("auth.trusted_issuers: {entry:?} is not 64 hex characters (or NODE=HEX)")
            })?;
        let key = VerifyingKey::from_bytes(&bytes).with_context(|| {
            format!("auth.trusted_issuers: {entry:?} is not an Ed25519 public key")
        })?;
        match issuer {
            Some(node) => v.trust_issuer(key, node),
            None => v.trust(key),
        };
    }
    if v.keys().is_empty() {
        anyhow::bail!("no trusted token issuer: set auth.trust_own_key or auth.trusted_issuers");
    }
    Ok(v)
}

/// Starts a node: loads or creates its identity in the data dir, binds every listener, spawns
/// the tasks. Returns once everything is bound.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    init_crypto();
    let identity = Arc::new(
        NodeIdentity::load_or_create(&config.node.data_dir, config.node.id.as_ref())
            .context("node identity")?,
    );
    restrict_data_dir(&config.node.data_dir)?;
    let verifier = Arc::new(verifier(&config, &identity)?);
    let metrics = Arc::new(Metrics::default());
    let live = LiveStreams::default();

    let socket = bind_media_socket(config.media.listen)
        .with_context(|| format!("binding media socket {}", config.media.listen))?;
    let media_addr = socket.local_addr()?;
    let advertised = SocketAddr::new(
        advertise_ip(media_addr.ip(), config.media.advertise),
        media_addr.port(),
    );
    let sfu = Sfu::new(config.sfu.to_sfu_config(), advertised);
    let watchdog = Watchdog::new();
    let (media, media_task) = media::spawn(socket, sfu, metrics.clone(), live.clone());
    let media_task = watchdog.watch("media", media_task);

    let store_path = config.node.data_dir.join(OFFICE_DB);
    let store = Store::open(&store_path)
        .with_context(|| format!("opening the office store {}", store_path.display()))?;
    let core = Core::new(
        config.signaling.core_config(),
        identity.node_id.clone(),
        (*verifier).clone(),
        store,
        signal::now(),
    );
    let hub = Hub::new(core, media.clone(), live.clone(), &config.node.data_dir);
    let timer_task = watchdog.spawn("signaling", hub.clone().run_timers());

    let quic = quic::bind(config.quic.listen, &identity)
        .with_context(|| format!("binding QUIC endpoint {}", config.quic.listen))?;
    let quic_addr = quic.local_addr()?;
    let quic_task = watchdog.spawn("quic", quic::serve(quic.clone(), hub.clone()));

    let attachments_dir = config.node.data_dir.join("attachments");
    let attachments = Arc::new(
        AttachmentStore::open(&attachments_dir, config.office.attachment_limits())
            .with_context(|| format!("attachment store {}", attachments_dir.display()))?,
    );
    restrict_files(&config.node.data_dir)?;

    // Trunks before the HTTP API, which reports their state (`GET /api/trunks`).
    let (media_link, media_link_rx) = crate::cascade::shell::media_link();
    let (trunk, trunk_sync) = match crate::cascade::start_for_node(
        &config.trunk,
        &identity.node_id,
        live.clone(),
        Some(media_link),
    )
    .await?
    {
        Some((handle, sync_task)) => {
            info!(trunk = %handle.local_addr(), "trunk endpoint bound");
            media
                .attach_trunk(handle.clone(), media_link_rx)
                .await
                .map_err(|e| anyhow::anyhow!("attaching trunks to the media task: {e}"))?;
            (Some(handle), Some(sync_task))
        }
        None => (None, None),
    };

    let probes = Probes {
        watchdog: watchdog.clone(),
        media: media.clone(),
        hub: hub.clone(),
        store: store_path.clone(),
        trunk: trunk.clone(),
    };
    let state = AppState {
        node_id: identity.node_id.clone(),
        verifier,
        media: media.clone(),
        live: live.clone(),
        metrics: metrics.clone(),
        metrics_here: config.http.metrics_listen.is_none(),
        hub: hub.clone(),
        attachments,
        wall: Arc::new(config.wall.clone()),
        trunk: trunk.clone(),
        probes: probes.clone(),
        media_peers: crate::peer_cap::MediaPeers::new(config.http.media_peers_per_subject),
    };
    // Every HTTP listener shares one connection table, its caps below the descriptor limit.
    let nofile = crate::listener::raise_nofile_limit();
    let limits = config.http.listener_limits().clamped(nofile);
    info!(
        max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_connections_per_ip,
        "HTTP connection caps"
    );
    let connections = crate::listener::ConnTable::new(limits);
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let app = http::router(state.clone(), config.http.max_body_bytes);
    let tls = if config.http.https {
        Some(crate::tls::acceptor(
            config.http.tls_cert.as_deref(),
            config.http.tls_key.as_deref(),
            &identity,
        )?)
    } else {
        None
    };
    let http_task = watchdog.spawn(
        "http",
        crate::listener::serve(listener, tls, app, connections.clone()),
    );
    let mut tasks = vec![media_task, timer_task, quic_task, http_task];
    tasks.extend(trunk_sync.map(|sync| watchdog.watch("trunk", sync)));

    // The province bus's nats-server (`[nats]`, off by default), supervised beside the node.
    if config.nats.enabled && config.nats.supervise {
        tasks.push(crate::natsd::start(&config, &identity.node_id)?);
    }

    let mut metrics_addr = None;
    if let Some(addr) = config.http.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics listener {addr}"))?;
        metrics_addr = Some(l.local_addr()?);
        let app = http::metrics_router(state);
        tasks.push(tokio::spawn(crate::listener::serve(
            l,
            None,
            app,
            connections.clone(),
        )));
    }

    info!(node = %identity.node_id, http = %http_addr, https = config.http.https, media = %media_addr, quic = %quic_addr, "node started");
    Ok(RunningNode {
        node_id: identity.node_id.clone(),
        http_addr,
        https: config.http.https,
        metrics_addr,
        media_addr,
        advertised_media_addr: advertised,
        quic_addr,
        identity,
        live,
        metrics,
        media,
        hub,
        trunk,
        watchdog,
        connections,
        probes,
        tasks,
        quic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling::auth::{Role, TokenIssuer, TokenRequest};
    use signaling::error::AuthError;

    fn request() -> TokenRequest {
        TokenRequest::new(
            signaling::Subject::parse("off-1").unwrap(),
            Role::Officer,
            "*",
            "00",
        )
    }

    #[test]
    fn configured_issuers_bind_iss_and_the_lifetime_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let me =
            NodeIdentity::load_or_create(dir.path(), Some(&NodeId::parse("county-a").unwrap()))
                .unwrap();
        let province = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let city = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let mut config = NodeConfig::default();
        config.auth.trusted_issuers = vec![
            format!(
                "province={}",
                hex::encode(province.verifying_key().as_bytes())
            ),
            hex::encode(city.verifying_key().as_bytes()),
        ];
        let v = verifier(&config, &me).unwrap();
        let now = 1_800_000_000;
        let node = |s: &str| NodeId::parse(s).unwrap();

        let own = me.issuer().issue(&request(), now);
        assert!(v.verify(&own, now).is_ok());
        // The node's own key cannot mint in another node's name, nor the bound province key.
        let forged =
            TokenIssuer::new(me.signing_key.clone(), node("province")).issue(&request(), now);
        assert_eq!(v.verify(&forged, now), Err(AuthError::WrongIssuer));
        let p = TokenIssuer::new(province.clone(), node("province"));
        assert!(v.verify(&p.issue(&request(), now), now).is_ok());
        let p_as_city = TokenIssuer::new(province, node("city-a"));
        assert_eq!(
            v.verify(&p_as_city.issue(&request(), now), now),
            Err(AuthError::WrongIssuer)
        );
        // The unbound city key takes any iss.
        let c = TokenIssuer::new(city, node("city-b"));
        assert!(v.verify(&c.issue(&request(), now), now).is_ok());

        let mut long = request();
        long.ttl_secs = 8 * 24 * 3600;
        assert!(matches!(
            v.verify(&me.issuer().issue(&long, now), now),
            Err(AuthError::TooLongLived { max_secs: 604_800 })
        ));

        config.auth.trusted_issuers = vec!["province=zz".into()];
        let err = verifier(&config, &me).unwrap_err().to_string();
        assert!(
            err.contains("auth.trusted_issuers") && err.contains("NODE=HEX"),
            "{err}"
        );
        config.auth.trusted_issuers = vec!["Not A Node=00".into()];
        let err = verifier(&config, &me).unwrap_err().to_string();
        assert!(err.contains("the node before '='"), "{err}");
    }
}
