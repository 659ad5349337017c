//! Trunks between nodes: the province CA, the mutually authenticated QUIC configuration tuned
//! for media, and the tokio shell that drives the sans-IO [`::trunk::Router`].
//!
//! - [`ca`]: `media-server ca init` / `ca issue NODE` — the province CA and per-node certificates;
//! - [`tls`]: rustls + quinn configuration: both ends present a certificate issued by the
//!   province CA and are checked against the node name they claim; BBR, a 1350-byte initial MTU,
//!   datagrams on, keep-alive 250 ms and idle timeout 1 s so a cut trunk is noticed within 1 s.
//!
//! This module must not touch the SFU or signaling: media forwarding over trunks is not built
//! yet (docs/trunk.md).

pub mod ca;
pub mod tls;
