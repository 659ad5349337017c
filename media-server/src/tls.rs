//! HTTPS for the HTTP listener (`[http] https = true`): a TLS acceptor from PEM files or the
//! node's own self-signed certificate.
//!
//! `crate::listener` runs each handshake in its connection's task, bounded by the header
//! timeout, so a slow or silent client never holds up the accept loop. This module does no
//! HTTP.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::identity::NodeIdentity;

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
