//! The node's process configuration: one TOML file, one serde root made of sections.
//!
//! Every field has a default (shown by `media-server --print-config`), so an empty file, or no
//! file, is a working single-site node. Command-line flags override the file. Unknown keys are an
//! error, so a typo does not silently fall back to a default.
//!
//! Relative paths in a file (`[node] data_dir`, `[http] tls_cert`/`tls_key`, `[trunk] ca`, `cert`,
//! `key`, `revoked`) are relative to the folder of that file, not to the working directory, so a
//! node started by a service manager from `/` finds the same files; `--print-config` shows them
//! resolved. Paths given as flags (`--data`) are relative to the working directory, as usual.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use signaling::ids::NodeId;

use sfu::forward::ForwardConfig;
use sfu::SfuConfig;

/// Root of the node's TOML configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity and storage.
    pub node: NodeSection,
    /// The HTTP listener (WHIP/WHEP, API, metrics, wall UI).
    pub http: HttpConfig,
    /// The WebRTC media socket.
    pub media: MediaConfig,
    /// The QUIC listener for native clients.
    pub quic: QuicConfig,
    /// Which token issuers the node trusts.
    pub auth: AuthConfig,
    /// SFU tunables.
    pub sfu: SfuSection,
    /// The mobile office (attachments).
    pub office: OfficeConfig,
    /// Trunks to other nodes (off unless `listen`, `parent` or `peers` is set).
    pub trunk: TrunkConfig,
    /// The video wall (map tiles).
    pub wall: WallConfig,
    /// The province bus over a nats-server beside the node (off by default). See docs/province.md.
    pub nats: NatsConfig,
    /// Signaling sessions (QUIC and `/ws`): caps per subject and per node.
    pub signaling: SignalingConfig,
}

/// `[nats]`: the nats-server beside the node that carries the province bus. Off by default (the
/// in-process bus: a single site needs nothing more). Its configuration is written from this
/// section and `[trunk]` (`media-server nats-config`); see docs/province.md.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Use NATS for the province bus. Default false.
    pub enabled: bool,
    /// Start nats-server as a child of the node and restart it (backoff 0.5 s doubling to 30 s)
    /// when it exits; its log is `<data_dir>/nats/nats-server.log`. When false, run nats-server
    /// yourself with the file `media-server nats-config` writes. Default true.
    pub supervise: bool,
    /// The nats-server binary (≥ 2.9; Debian 12's package). Default `nats-server`.
    pub server_bin: PathBuf,
    /// The client listener the node connects to; keep it on loopback. Default 127.0.0.1:4222.
    pub client_listen: SocketAddr,
    /// Where children's servers dial in (TLS leaf connections, client certificates of the
    /// province CA required). Default none (a node without children).
    pub leaf_listen: Option<SocketAddr>,
    /// The leaf port on the parents: the leaf URLs are `tls://<host of [trunk] parent>:PORT` and
    /// the same for `second_parent`. Default 7422.
    pub parent_leaf_port: u16,
    /// `HOST:PORT` of the first parent's leaf listener, when not the trunk host and
    /// `parent_leaf_port`. The host must be a name or address in the parent's certificate.
    /// Default none.
    pub parent_leaf: Option<String>,
    /// `HOST:PORT` of the second parent's leaf listener (failover). Default none.
    pub second_parent_leaf: Option<String>,
    /// Children allowed to dial in, each with the names of the nodes below it, e.g.
    /// `county-7 = ["town-1", "town-2"]`: a child may publish only under those names. Default
    /// none.
    pub children: std::collections::BTreeMap<String, Vec<String>>,
    /// nats-server's HTTP monitoring listener. Default none.
    pub monitor_listen: Option<SocketAddr>,
    /// Largest bus message, bytes. Default 1048576.
    pub max_payload: usize,
    /// JetStream file store limit, bytes (mail waiting during a cut). Default 1073741824.
    pub max_file_store: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            enabled: false,
            supervise: true,
            server_bin: PathBuf::from("nats-server"),
            client_listen: SocketAddr::from(([127, 0, 0, 1], 4222)),
            leaf_listen: None,
            parent_leaf_port: 7422,
            parent_leaf: None,
            second_parent_leaf: None,
            children: Default::default(),
            monitor_listen: None,
            max_payload: 1024 * 1024,
            max_file_store: 1 << 30,
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node id (`[A-Za-z0-9._-]`, up to 64). Default: the id stored in the data dir, or a new
    /// random `node-xxxxxxxx` on first start.
    pub id: Option<NodeId>,
    /// Where keys, certificates and (later) the store live. Default `./yiwang-data`.
    pub data_dir: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: None,
            data_dir: PathBuf::from("yiwang-data"),
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Serve `/metrics` on this separate address instead of the main listener. Default: none
    /// (metrics on the main listener).
    pub metrics_listen: Option<SocketAddr>,
    /// Largest accepted request body (SDP offers), bytes. Default 65536; larger → 413.
    pub max_body_bytes: usize,
    /// Serve HTTPS (and `wss://` for `/ws`) instead of plain HTTP on `listen`. Default false.
    /// Browsers give camera and microphone only to secure contexts, so a wall or office page
    /// opened from another machine on the LAN needs this.
    pub https: bool,
    /// PEM certificate chain for HTTPS. Default none: the node's own self-signed certificate
    /// (`node.crt` in the data dir, the one QUIC clients pin). Give it with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Seconds from accept until the TLS handshake (HTTPS) and the first request's headers
    /// must be done; then the node closes the connection. Default 10.
    pub header_timeout_secs: u64,
    /// Seconds a connection may wait between requests (keep-alive). Default 30.
    pub idle_timeout_secs: u64,
    /// Seconds from a request's headers until its body (WHIP/WHEP offers, orders) must be in;
    /// then 408 `body_timeout` and the connection is closed. Default 30.
    pub body_timeout_secs: u64,
    /// Open HTTP connections, every listener together. Default 4096; kept below the
    /// descriptor limit (raised to its hard limit at start) minus a quarter of it.
    pub max_connections: usize,
    /// Open HTTP connections from one IP address. Default 512. At either cap the connection
    /// idle the longest is closed to make room (docs/api.md, "Connections").
    pub max_connections_per_ip: usize,
    /// WHIP and WHEP sessions one token subject may hold at once; one more is 429
    /// `too_many_sessions` until one ends. Default 64 (a wall of many tiles).
    pub media_peers_per_subject: usize,
}

impl HttpConfig {
    /// The listener limits these keys give (before clamping to the descriptor limit).
    pub fn listener_limits(&self) -> crate::listener::Limits {
        let secs = std::time::Duration::from_secs;
        crate::listener::Limits {
            header_timeout: secs(self.header_timeout_secs.max(1)),
            idle_timeout: secs(self.idle_timeout_secs.max(1)),
            body_timeout: secs(self.body_timeout_secs.max(1)),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: ([0, 0, 0, 0], 8080).into(),
            metrics_listen: None,
            max_body_bytes: 64 * 1024,
            https: false,
            tls_cert: None,
            tls_key: None,
            header_timeout_secs: 10,
            idle_timeout_secs: 30,
            body_timeout_secs: 30,
            max_connections: 4096,
            max_connections_per_ip: 512,
            media_peers_per_subject: 64,
        }
    }
}

/// `[media]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// UDP listen address of the one WebRTC socket. Default `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// Address put in ICE candidates. Default: the listen IP, or when that is unspecified
    /// (`0.0.0.0`), the IP of the interface that routes outward, else `127.0.0.1`.
    pub advertise: Option<IpAddr>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            listen: ([0, 0, 0, 0], 8443).into(),
            advertise: None,
        }
    }
}

/// `[quic]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// UDP listen address of the QUIC endpoint (ALPN `yiwang/1`). Default `0.0.0.0:4433`.
    pub listen: SocketAddr,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            listen: ([0, 0, 0, 0], 4433).into(),
        }
    }
}

/// `[signaling]`: caps on signaling sessions, over QUIC and WebSocket together. A session counts
/// from `hello` until it ends: while attached, and while detached and awaiting resume (up to
/// 120 s). A `hello` beyond a cap is refused with `too_many_sessions` (close code 22); resuming a
/// session the subject holds is never refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SignalingConfig {
    /// Most sessions one subject may hold, for the roles officer, pilot, device and viewer (a
    /// tablet, bridge or camera needs one, two while a reconnect overlaps). Default 8.
    pub max_sessions_per_subject: usize,
    /// Most sessions one subject may hold for the console roles admin, commander and operator
    /// (a wall of several screens, a console and a phone under one subject). Default 32.
    pub max_sessions_per_console: usize,
    /// Most sessions on the node, whatever the subject. Default 20000.
    pub max_sessions: usize,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        let core = signaling::core::CoreConfig::default();
        SignalingConfig {
            max_sessions_per_subject: core.max_sessions_per_subject,
            max_sessions_per_console: core.max_sessions_per_console,
            max_sessions: core.max_sessions,
        }
    }
}

impl SignalingConfig {
    /// The signaling core's tunables with these caps.
    pub fn core_config(&self) -> signaling::core::CoreConfig {
        signaling::core::CoreConfig {
            max_sessions_per_subject: self.max_sessions_per_subject,
            max_sessions_per_console: self.max_sessions_per_console,
            max_sessions: self.max_sessions,
            ..Default::default()
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Trust tokens signed by this node's own issuer key. Default true.
    pub trust_own_key: bool,
    /// Further trusted issuer public keys, as 64 hex characters (Ed25519, 32 bytes) — for example
    /// a province's central issuer — or `NODE=HEX` to accept the key's tokens only when their
    /// `iss` is `NODE`. Default none. (This node's own key is always bound to its own id.)
    pub trusted_issuers: Vec<String>,
    /// Longest token lifetime (`exp` − `iat`) accepted, in seconds. Default 604800 (7 days).
    pub max_token_lifetime_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            trust_own_key: true,
            trusted_issuers: Vec::new(),
            max_token_lifetime_secs: signaling::auth::DEFAULT_MAX_LIFETIME_SECS,
        }
    }
}

/// `[sfu]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SfuSection {
    /// Minimum interval between keyframe requests to one publisher, ms. Default 500.
    pub keyframe_min_interval_ms: u64,
    /// A viewer waiting for a keyframe asks again after this long, ms. Default 1000.
    pub keyframe_retry_ms: u64,
    /// Sessions not connected (ICE + DTLS) within this time are dropped, s. Default 20.
    pub connect_timeout_secs: u64,
    /// Connected sessions silent (no datagram) for this long are dropped, s. Default 15.
    pub idle_timeout_secs: u64,
    /// RTP packets kept per outgoing video stream for NACK answers. Default 512.
    pub send_buffer_video: usize,
    /// RTP packets kept per outgoing audio stream for NACK answers. Default 100.
    pub send_buffer_audio: usize,
    /// A viewer's bandwidth estimate starts here, kbit/s. Default 2500.
    pub bwe_initial_kbps: u64,
    /// A viewer's estimator probes towards this rate, kbit/s. Default 4000.
    pub bwe_desired_kbps: u64,
    /// Most a single-layer publisher is asked to send (REMB; lowered to its best viewer's
    /// estimate), kbit/s. Default 2500.
    pub publisher_max_kbps: u64,
    /// Pace viewers' video at their bandwidth estimate (str0m's pacer). Default true.
    pub pace_video: bool,
}

impl Default for SfuSection {
    fn default() -> Self {
        let d = SfuConfig::default();
        SfuSection {
            keyframe_min_interval_ms: d.forward.keyframe_min_interval.as_millis() as u64,
            keyframe_retry_ms: d.forward.keyframe_retry.as_millis() as u64,
            connect_timeout_secs: d.connect_timeout.as_secs(),
            idle_timeout_secs: d.idle_timeout.as_secs(),
            send_buffer_video: d.send_buffer_video,
            send_buffer_audio: d.send_buffer_audio,
            bwe_initial_kbps: d.bwe_initial_kbps,
            bwe_desired_kbps: d.bwe_desired_kbps,
            publisher_max_kbps: d.publisher_max_kbps,
            pace_video: d.pace_video,
        }
    }
}

impl SfuSection {
    /// The engine configuration these settings describe.
    pub fn to_sfu_config(&self) -> SfuConfig {
        SfuConfig {
            forward: ForwardConfig {
                keyframe_min_interval: Duration::from_millis(self.keyframe_min_interval_ms),
                keyframe_retry: Duration::from_millis(self.keyframe_retry_ms),
            },
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            send_buffer_video: self.send_buffer_video.max(1),
            send_buffer_audio: self.send_buffer_audio.max(1),
            bwe_initial_kbps: self.bwe_initial_kbps.max(30),
            bwe_desired_kbps: self.bwe_desired_kbps.max(self.bwe_initial_kbps),
            publisher_max_kbps: self.publisher_max_kbps.max(50),
            pace_video: self.pace_video,
        }
    }
}

/// `[office]`: attachments (`POST /api/attachments`) and what they may take of the data dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OfficeConfig {
    /// Largest accepted attachment (`POST /api/attachments`), bytes. Default 26214400 (25 MiB);
    /// larger → 413. Independent of `http.max_body_bytes`.
    pub attachment_max_bytes: u64,
    /// Bytes of attachments the node stores in all. Default 10737418240 (10 GiB); beyond → 507
    /// `quota_exceeded`.
    pub attachment_quota_bytes: u64,
    /// Bytes of attachments stored per uploader (token subject; an attachment counts for its
    /// first uploader). Default 1073741824 (1 GiB); beyond → 507 `quota_exceeded`.
    pub attachment_subject_quota_bytes: u64,
    /// Free-space floor of the data dir's file system, bytes: an upload that would leave less
    /// free is refused (507 `storage_full`), so the office store always has room. The floor is
    /// the smaller of this and `min_free_percent`. Default 268435456 (256 MiB).
    pub min_free_bytes: u64,
    /// Free-space floor, percent of the file system's size (0–100). Default 2.
    pub min_free_percent: f64,
    /// Uploads in progress at once, in all. Default 32; beyond → 429 `too_many_uploads`.
    pub attachment_max_uploads: usize,
    /// Uploads in progress at once per uploader. Default 4; beyond → 429 `too_many_uploads`.
    pub attachment_max_uploads_per_subject: usize,
    /// An upload whose body sends nothing for this long is ended with 408 `upload_timeout` (its
    /// temporary file removed). Default 30.
    pub attachment_idle_timeout_secs: u64,
    /// After the first `attachment_idle_timeout_secs`, an upload must have averaged at least this
    /// many bytes per second since it began, or it ends with 408 `upload_timeout`. 0 = no
    /// minimum. Default 1024.
    pub attachment_min_rate_bytes_per_sec: u64,
}

impl Default for OfficeConfig {
    fn default() -> Self {
        let l = crate::attachments::Limits::default();
        OfficeConfig {
            attachment_max_bytes: l.max_bytes,
            attachment_quota_bytes: l.quota_bytes,
            attachment_subject_quota_bytes: l.subject_quota_bytes,
            min_free_bytes: l.min_free_bytes,
            min_free_percent: l.min_free_percent,
            attachment_max_uploads: l.max_uploads,
            attachment_max_uploads_per_subject: l.max_uploads_per_subject,
            attachment_idle_timeout_secs: l.idle_timeout.as_secs(),
            attachment_min_rate_bytes_per_sec: l.min_rate_bytes_per_sec,
        }
    }
}

impl OfficeConfig {
    /// The attachment store's limits these settings describe (a cap of 0 is taken as 1, a
    /// timeout of 0 as 1 s, a percentage outside 0–100 clamped).
    pub fn attachment_limits(&self) -> crate::attachments::Limits {
        crate::attachments::Limits {
            max_bytes: self.attachment_max_bytes,
            quota_bytes: self.attachment_quota_bytes,
            subject_quota_bytes: self.attachment_subject_quota_bytes,
            min_free_bytes: self.min_free_bytes,
            min_free_percent: if self.min_free_percent.is_nan() {
                0.0
            } else {
                self.min_free_percent.clamp(0.0, 100.0)
            },
            max_uploads: self.attachment_max_uploads.max(1),
            max_uploads_per_subject: self.attachment_max_uploads_per_subject.max(1),
            idle_timeout: Duration::from_secs(self.attachment_idle_timeout_secs.max(1)),
            min_rate_bytes_per_sec: self.attachment_min_rate_bytes_per_sec,
        }
    }
}

/// `[trunk]`: this node's links to its parent(s) and peers in the province.
///
/// Off unless `listen`, `parent` or `peers` is set; then `ca`, `cert` and `key` are required
/// (made by `media-server ca init` / `ca issue NODE`). Names of parents and peers are learned from
/// their certificates, so only addresses are configured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrunkConfig {
    /// This node's name on trunks; its certificate must carry it. Default: the node id.
    pub node: Option<NodeId>,
    /// UDP address of the trunk endpoint (children and peers dial it). Default: none, and an
    /// ephemeral port when only dialling.
    pub listen: Option<SocketAddr>,
    /// `HOST:PORT` of the parent's trunk endpoint. Default none (the province root).
    pub parent: Option<String>,
    /// `HOST:PORT` of a second parent, used when the trunk to the first is down. Default none.
    pub second_parent: Option<String>,
    /// `HOST:PORT` of peers (siblings that exchange their subtrees' streams). Default none.
    pub peers: Vec<String>,
    /// The province CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM), issued by the CA.
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key: Option<PathBuf>,
    /// How long a stream keeps crossing trunks after its last viewer here left, s. Default 10.
    pub grace_secs: u64,
    /// The province's revocation list of node certificates (`revoked.txt` from `media-server
    /// ca revoke`); reread when it changes. Default none.
    pub revoked: Option<PathBuf>,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        TrunkConfig {
            node: None,
            listen: None,
            parent: None,
            second_parent: None,
            peers: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            grace_secs: 10,
            revoked: None,
        }
    }
}

impl TrunkConfig {
    /// Whether trunks are configured at all.
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
            || self.parent.is_some()
            || self.second_parent.is_some()
            || !self.peers.is_empty()
    }
}

/// Datum of a map tile source.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TileCoords {
    /// WGS-84 (OpenStreetMap and most sources): positions are drawn as reported.
    #[default]
    Wgs84,
    /// GCJ-02 (most Chinese providers): the wall shifts WGS-84 positions to match the tiles.
    Gcj02,
}

/// `[wall]`: the video wall's map.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WallConfig {
    /// Map tile URL template in Leaflet's form (`https://{s}.tile.example/{z}/{x}/{y}.png`).
    /// Default none: the map shows markers over a coordinate grid, with no network access.
    pub tile_url: Option<String>,
    /// Datum of the tiles: `wgs84` (default) or `gcj02`.
    pub tile_coords: TileCoords,
    /// Attribution shown on the map for the tiles. Default empty.
    pub tile_attribution: String,
    /// Subdomains substituted for `{s}`. Default `abc`.
    pub tile_subdomains: String,
    /// Highest zoom level the tiles have. Default 18.
    pub tile_max_zoom: u8,
    /// Map centre `[lat, lon]` before any position is known. Default `[30.59, 114.30]`.
    pub center: [f64; 2],
    /// Zoom level before any position is known. Default 12.
    pub zoom: u8,
}

impl Default for WallConfig {
    fn default() -> Self {
        WallConfig {
            tile_url: None,
            tile_coords: TileCoords::Wgs84,
            tile_attribution: String::new(),
            tile_subdomains: "abc".into(),
            tile_max_zoom: 18,
            center: [30.59, 114.30],
            zoom: 12,
        }
    }
}

impl WallConfig {
    /// The document `GET /api/wall/config` serves to the wall.
    pub fn to_json(&self) -> serde_json::Value {
        let tiles = self.tile_url.as_ref().map(|url| {
            serde_json::json!({
                "url": url,
                "coords": self.tile_coords,
                "attribution": self.tile_attribution,
                "subdomains": self.tile_subdomains,
                "max_zoom": self.tile_max_zoom,
            })
        });
        serde_json::json!({ "tiles": tiles, "center": self.center, "zoom": self.zoom })
    }
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column, key).
        message: String,
    },
    /// A file the configuration names cannot be read.
    #[error("{key} = \"{}\": cannot read it: {source}", path.display())]
    File {
        /// The key, as `[section] name`.
        key: &'static str,
        /// The path, resolved.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl NodeConfig {
    /// Reads and parses a TOML file; relative paths in it are resolved against its folder.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(parse_error)?;
        let base = path.parent().unwrap_or(Path::new(""));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        // Only what the file itself sets: the default data dir stays relative to the working
        // directory, as documented for running without a file.
        if has_key(&table, "node", "data_dir") {
            config.node.data_dir = base.join(&config.node.data_dir);
        }
        for p in config.file_paths_mut().into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    fn file_paths_mut(&mut self) -> [Option<&mut PathBuf>; 6] {
        [
            self.http.tls_cert.as_mut(),
            self.http.tls_key.as_mut(),
            self.trunk.ca.as_mut(),
            self.trunk.cert.as_mut(),
            self.trunk.key.as_mut(),
            self.trunk.revoked.as_mut(),
        ]
    }

    /// Checks that every file the configuration will read at start can be read, naming the key
    /// of the first that cannot: the HTTPS certificate and key when `[http] https` is on, the
    /// CA, certificate and key when trunks are configured. (`[trunk] revoked` may appear later:
    /// it is reread when it changes.)
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let mut wanted: Vec<(&'static str, &PathBuf)> = Vec::new();
        if self.http.https {
            wanted.extend(self.http.tls_cert.iter().map(|p| ("[http] tls_cert", p)));
            wanted.extend(self.http.tls_key.iter().map(|p| ("[http] tls_key", p)));
        }
        if self.trunk.enabled() {
            wanted.extend(self.trunk.ca.iter().map(|p| ("[trunk] ca", p)));
            wanted.extend(self.trunk.cert.iter().map(|p| ("[trunk] cert", p)));
            wanted.extend(self.trunk.key.iter().map(|p| ("[trunk] key", p)));
        }
        for (key, path) in wanted {
            std::fs::File::open(path).map_err(|source| ConfigError::File {
                key,
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn has_key(table: &toml::Table, section: &str, key: &str) -> bool {
    table
        .get(section)
        .and_then(|s| s.as_table())
        .is_some_and(|s| s.contains_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_in_a_file_are_relative_to_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("ca")).unwrap();
        let file = etc.join("node.toml");
        std::fs::write(
            &file,
            "[node]\ndata_dir = \"data\"\n[trunk]\nparent = \"city:4434\"\nca = \"ca/ca.pem\"\n\
             cert = \"/abs/node.pem\"\nkey = \"node.key\"\n",
        )
        .unwrap();
        let c = NodeConfig::load(&file).unwrap();
        assert_eq!(c.node.data_dir, etc.join("data"));
        assert_eq!(c.trunk.ca.as_deref(), Some(etc.join("ca/ca.pem").as_path()));
        assert_eq!(c.trunk.cert.as_deref(), Some(Path::new("/abs/node.pem")));
        assert_eq!(c.trunk.key.as_deref(), Some(etc.join("node.key").as_path()));
        // None of them exists: the error names the first key and its resolved path.
        let err = c.check_files().unwrap_err().to_string();
        assert!(err.starts_with("[trunk] ca = "), "{err}");
        assert!(
            err.contains(&etc.join("ca/ca.pem").display().to_string()),
            "{err}"
        );
        std::fs::write(etc.join("ca/ca.pem"), "x").unwrap();
        let err = c.check_files().unwrap_err().to_string();
        assert!(err.starts_with("[trunk] cert = \"/abs/node.pem\""), "{err}");
        // A file without data_dir keeps the default, relative to the working directory.
        std::fs::write(&file, "[http]\nhttps = false\n").unwrap();
        let c = NodeConfig::load(&file).unwrap();
        assert_eq!(c.node.data_dir, PathBuf::from("yiwang-data"));
        assert!(c.check_files().is_ok());
    }

    #[test]
    fn empty_file_is_the_default_and_round_trips() {
        let c: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(c, NodeConfig::default());
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            toml::from_str::<NodeConfig>("[http]\nlisten_addr = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c: NodeConfig =
            toml::from_str("[media]\nadvertise = \"10.0.0.5\"\n[node]\nid = \"county-7\"\n")
                .unwrap();
        assert_eq!(c.media.advertise, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(c.media.listen, MediaConfig::default().listen);
        assert_eq!(c.node.id.as_ref().map(|i| i.as_str()), Some("county-7"));
    }

    #[test]
    fn trunk_section() {
        assert!(!NodeConfig::default().trunk.enabled());
        let c: NodeConfig = toml::from_str(
            "[trunk]\nparent = \"city-a.example:4434\"\nsecond_parent = \"10.1.0.2:4434\"\npeers = [\"county-8:4434\"]\n\
             ca = \"/etc/yiwang/ca.pem\"\ncert = \"/etc/yiwang/county-7.pem\"\nkey = \"/etc/yiwang/county-7.key\"\n",
        )
        .unwrap();
        assert!(c.trunk.enabled());
        assert_eq!(c.trunk.grace_secs, 10);
        assert_eq!(c.trunk.parent.as_deref(), Some("city-a.example:4434"));
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert!(toml::from_str::<NodeConfig>("[trunk]\nparents = []\n").is_err());
    }

    #[test]
    fn wall_section() {
        let c: NodeConfig = toml::from_str(
            "[wall]\ntile_url = \"https://t/{z}/{x}/{y}.png\"\ntile_coords = \"gcj02\"\n",
        )
        .unwrap();
        assert_eq!(c.wall.tile_coords, TileCoords::Gcj02);
        let j = c.wall.to_json();
        assert_eq!(j["tiles"]["coords"], "gcj02");
        assert_eq!(j["zoom"], 12);
        assert!(NodeConfig::default().wall.to_json()["tiles"].is_null());
        assert!(toml::from_str::<NodeConfig>("[wall]\ntile_coords = \"bd09\"\n").is_err());
    }

    #[test]
    fn signaling_section() {
        let d = NodeConfig::default().signaling;
        assert_eq!(
            (
                d.max_sessions_per_subject,
                d.max_sessions_per_console,
                d.max_sessions
            ),
            (8, 32, 20_000)
        );
        let c: NodeConfig = toml::from_str("[signaling]\nmax_sessions_per_subject = 2\n").unwrap();
        let core = c.signaling.core_config();
        assert_eq!(core.max_sessions_per_subject, 2);
        assert_eq!(core.max_sessions_per_console, 32);
        assert_eq!(
            core.replay_buffer,
            signaling::core::CoreConfig::default().replay_buffer
        );
        assert!(toml::from_str::<NodeConfig>("[signaling]\nmax_per_subject = 1\n").is_err());
    }

    #[test]
    fn office_section() {
        assert_eq!(
            NodeConfig::default().office.attachment_max_bytes,
            26_214_400
        );
        let c: NodeConfig = toml::from_str("[office]\nattachment_max_bytes = 1048576\n").unwrap();
        assert_eq!(c.office.attachment_max_bytes, 1 << 20);
        assert!(toml::from_str::<NodeConfig>("[office]\nmax_bytes = 1\n").is_err());
        // Every key is printed with its default and read back.
        let printed = NodeConfig::default().to_toml();
        for key in [
            "attachment_quota_bytes = 10737418240",
            "attachment_subject_quota_bytes = 1073741824",
            "min_free_bytes = 268435456",
            "min_free_percent = 2.0",
            "attachment_max_uploads = 32",
            "attachment_max_uploads_per_subject = 4",
            "attachment_idle_timeout_secs = 30",
            "attachment_min_rate_bytes_per_sec = 1024",
        ] {
            assert!(printed.contains(key), "{key} in\n{printed}");
        }
        let back: NodeConfig = toml::from_str(&printed).unwrap();
        assert_eq!(back.office, OfficeConfig::default());
        let l = OfficeConfig {
            attachment_max_uploads: 0,
            attachment_idle_timeout_secs: 0,
            min_free_percent: 250.0,
            ..OfficeConfig::default()
        }
        .attachment_limits();
        assert_eq!(
            (l.max_uploads, l.idle_timeout, l.min_free_percent),
            (1, Duration::from_secs(1), 100.0)
        );
    }
}
