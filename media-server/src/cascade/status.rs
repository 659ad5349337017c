//! What `GET /api/trunks` shows of a node's trunks: uplinks, trunks that are up (RTT, bytes,
//! losses) and the forwarding of every stream. Plain serialisable values, filled by the shell's
//! router actor ([`super::shell::TrunkHandle::status`]); nothing here runs.

/// The state of a node's trunks, as `GET /api/trunks` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrunkStatus {
    /// This node's name.
    pub node: String,
    /// The trunk endpoint's bound address.
    pub listen: String,
    /// The configured parents and peers, in order.
    pub uplinks: Vec<UplinkStatus>,
    /// Every trunk that is up (uplinks and children), by peer name.
    pub trunks: Vec<LinkStatus>,
    /// The forwarding of every stream this node relays, publishes to a trunk or pulls.
    pub routes: Vec<RouteStatus>,
}

/// A configured parent or peer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UplinkStatus {
    /// `parent` (the first), `second_parent` (any later one) or `peer`.
    pub kind: &'static str,
    /// The configured `HOST:PORT` (shown to admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Its node name, once a trunk to it has come up (from its certificate).
    pub node: Option<String>,
    /// Whether a trunk to it is up now.
    pub up: bool,
}

/// A trunk that is up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkStatus {
    /// The node at the other end.
    pub peer: String,
    /// What it is to this node: `parent`, `second_parent`, `peer` or `child`.
    pub role: &'static str,
    /// Whether this node dialled it (uplinks) or accepted it (children).
    pub dialled: bool,
    /// Seconds since it came up.
    pub up_secs: u64,
    /// QUIC's smoothed round-trip time, ms.
    pub rtt_ms: f64,
    /// UDP bytes sent on it.
    pub tx_bytes: u64,
    /// UDP bytes received on it.
    pub rx_bytes: u64,
    /// Packets QUIC declared lost on it.
    pub lost_packets: u64,
}

/// One stream's forwarding at this node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteStatus {
    /// `NODE/STREAM`.
    pub stream: String,
    /// Where its media is accepted from: `local` (the publisher is here) or a node name.
    pub source: Option<String>,
    /// A path being switched to (make-before-break), if any.
    pub next: Option<String>,
    /// Where it goes.
    pub outputs: Vec<RouteOutput>,
}

/// One output of a route.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteOutput {
    /// `local` (viewers here) or a node name.
    pub to: String,
    /// The layer ids sent there.
    pub layers: Vec<u8>,
}
