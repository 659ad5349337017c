//! The node's QUIC endpoint (quinn, ALPN `yiwang/1`), authenticated by the node certificate that
//! tokens pin by fingerprint.
//!
//! This is where native clients (field-client, drone-bridge) will speak the signaling protocol.
//! Until the signaling server is composed in, the endpoint completes the TLS handshake (so a client
//! can already check the pinned certificate) and then closes the connection with
//! [`CLOSE_NOT_AVAILABLE`] and a reason, rather than leaving the client to time out.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{Endpoint, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::debug;

use crate::identity::NodeIdentity;

/// ALPN protocol id of yiwang signaling.
pub const ALPN: &[u8] = b"yiwang/1";

/// Application close code: the service behind the endpoint is not available.
pub const CLOSE_NOT_AVAILABLE: u32 = 0x10;

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
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    Ok(Endpoint::server(server, addr)?)
}

/// Accepts connections until the endpoint is closed, closing each with a clear reason.
pub async fn serve(endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => conn.close(
                    VarInt::from_u32(CLOSE_NOT_AVAILABLE),
                    b"signaling is not available on this node version",
                ),
                Err(e) => debug!(error = %e, "QUIC handshake failed"),
            }
        });
    }
}
