//! The node's QUIC endpoint (quinn, ALPN `yiwang/1`), authenticated by the node certificate that
//! tokens pin by fingerprint. Native clients (field-client, drone-bridge) speak the signaling
//! protocol on it; [`crate::signal::Hub::serve_quic`] serves each connection.
//!
//! Transport tuning: the node sends keep-alives every [`KEEP_ALIVE`] and drops a peer silent for
//! [`IDLE_TIMEOUT`] (a client may ask for less), so a dead tablet's session detaches within 10 s
//! and its presence goes offline within 14 s (10 s + 4 s presence linger). Connection migration is on: a client whose address
//! changes (Wi-Fi to 4G) keeps its connection and session.
//!
//! Memory per connection is bounded by flow control, not by quinn's defaults (1.25 MB per stream,
//! an unbounded connection window, 4 streams of which only one was read — ~4 MB per session):
//! a client may open **one** bidirectional stream (a second `open_bi` waits for credit that never
//! comes) and no unidirectional ones; the stream's and the connection's receive windows are
//! [`RECEIVE_WINDOW`], one largest client frame with its header, so an unread or slow control
//! stream holds at most that much in quinn. What the shell then reads ahead is bounded by
//! [`crate::signal::READ_AHEAD`]. The send side is capped by [`SEND_WINDOW`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, IdleTimeout, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::debug;

use crate::identity::NodeIdentity;
use crate::signal::Hub;

/// ALPN protocol id of yiwang signaling.
pub const ALPN: &[u8] = signaling::proto::ALPN;

/// Keep-alive interval the node uses.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Idle timeout the node offers (the effective one is the smaller of both sides').
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive window of the control stream and of the whole connection: one largest client frame
/// (`MAX_FRAME`) and its 4-byte length prefix. A client can have no more than this in flight
/// beyond what the node has read.
pub const RECEIVE_WINDOW: u32 =
    (signaling::proto::FRAME_HEADER + signaling::proto::MAX_FRAME) as u32;

/// Data the node keeps buffered for sending on one connection (written, not yet acknowledged):
/// 1 MiB, a fraction of quinn's 10 MB default. Larger replies (up to 4 MiB) are written as the
/// client acknowledges; a client that reads nothing fills its outbound queue and is closed
/// `too_slow`.
pub const SEND_WINDOW: u64 = 1024 * 1024;

/// Binds the QUIC endpoint on `addr` with the node's certificate.
pub fn bind(addr: SocketAddr, identity: &NodeIdentity) -> anyhow::Result<Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = CertificateDer::from(identity.cert_der.clone());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::try_from(IDLE_TIMEOUT)?))
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(RECEIVE_WINDOW.into())
        .receive_window(RECEIVE_WINDOW.into())
        .send_window(SEND_WINDOW);
    server.transport_config(Arc::new(transport));
    server.migration(true);
    let socket = bind_socket(addr)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for QUIC"))?;
    Ok(Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )?)
}

/// Kernel buffers asked for on the QUIC socket: thousands of sessions' keep-alives and handshakes
/// arrive in bursts that overflow the default ~200 KiB (measured: hundreds of thousands of drops
/// while 10,000 sessions connected). The kernel caps this at `net.core.rmem_max`/`wmem_max`.
pub const QUIC_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

fn bind_socket(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    for (what, r) in [
        ("receive", socket.set_recv_buffer_size(QUIC_SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(QUIC_SOCKET_BUFFER)),
    ] {
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot enlarge the QUIC socket {what} buffer");
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Accepts connections until the endpoint is closed and hands each to the signaling hub.
pub async fn serve(endpoint: Endpoint, hub: Arc<Hub>) {
    while let Some(incoming) = endpoint.accept().await {
        let hub = hub.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => hub.serve_quic(conn).await,
                Err(e) => debug!(error = %e, "QUIC handshake failed"),
            }
        });
    }
}
