//! HTTPS for the HTTP listener (`[http] https = true`): a TLS acceptor from PEM files or the
//! node's own self-signed certificate, and an [`axum::serve::Listener`] that hands axum only
//! connections whose handshake finished.
//!
//! Handshakes run in their own tasks (at most [`HANDSHAKE_TIMEOUT`] each), so a slow or silent
//! client never holds up the accept loop. This module does no HTTP; `node.rs` composes it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::identity::NodeIdentity;

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for axum; beyond this the accept loop waits.
const QUEUE: usize = 64;

/// The server TLS configuration: TLS 1.2 and 1.3 with the ring provider, ALPN `h2` is not
/// offered (axum serves HTTP/1.1 here, which WebSocket upgrades need), `http/1.1` is.
///
/// With `cert` and `key` (PEM files) those are used; with neither, the node's own certificate
/// (`node.crt`, the one QUIC clients pin). Giving only one of them is an error.
pub fn acceptor(
    cert: Option<&Path>,
    key: Option<&Path>,
    identity: &NodeIdentity,
) -> anyhow::Result<TlsAcceptor> {
    let (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("http.tls_cert {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| {
                    format!("http.tls_cert {}: not PEM certificates", cert.display())
                })?;
            anyhow::ensure!(
                !chain.is_empty(),
                "http.tls_cert {}: no certificate in it",
                cert.display()
            );
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("http.tls_key {}: no PEM private key", key.display()))?;
            (chain, key)
        }
        (None, None) => (
            vec![CertificateDer::from(identity.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone())),
        ),
        _ => anyhow::bail!(
            "give both http.tls_cert and http.tls_key, or neither (the node's own certificate)"
        ),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the HTTPS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TCP listener whose connections come out TLS-handshaken.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    /// Stops accepting (and frees the port) when axum's server is dropped.
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl TlsListener {
    /// Starts the accept loop on `listener`; it ends when the returned listener is dropped.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let accept_loop = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            accept_loop,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop never ends while this listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
