//! QUIC for trunks: mutual TLS against the province CA, and a transport tuned for media.
//!
//! Both ends of a trunk present a certificate issued by the province CA ([`super::ca`]); anything
//! else fails the handshake. The dialling node names the node it expects (the server name is the
//! parent's node name, checked against the certificate's DNS SAN); the accepting node checks the
//! name the dialler claims in its `Hello` with [`TrunkCredentials::verify_peer_name`]. A dialler
//! that knows only `HOST:PORT` uses [`TrunkCredentials::client_config_any_node`] and checks the
//! name from the server's `Hello` the same way.
//!
//! [`transport_config`] is the one place the trunk's QUIC tuning lives:
//!
//! | setting | value | why |
//! |---|---|---|
//! | congestion control | BBR | keeps queues short on long, lossy links; loss-based control (Cubic) halves the rate on random radio loss |
//! | initial MTU | [`INITIAL_MTU`] = 1350 | a ~1200-byte RTP packet plus the datagram frame, QUIC short header and AEAD tag (~45 bytes) fits from the first packet; quinn's default 1200 does not. 1350 still fits IPv6 inside WireGuard/IPsec tunnels. MTU discovery may raise it |
//! | datagrams | on, 4 MiB each way | media travels as RTP in QUIC datagrams (unreliable, no head-of-line blocking) |
//! | keep-alive | [`KEEP_ALIVE`] = 250 ms | a silent trunk still proves it is alive four times per idle timeout |
//! | idle timeout | [`IDLE_TIMEOUT`] = 1 s | a cut trunk is declared down within 1 s, leaving 2 s of the 3 s failover budget for rerouting (the simulation measured 1.3 s in all) |
//! | initial RTT | 100 ms | province links are tens of ms; quinn's 333 ms default slows the first loss recovery |
//! | streams | 1 bidirectional (control) | the router's control protocol runs on one ordered stream |

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::RootCertStore;

/// ALPN of the trunk protocol (distinct from the client protocol `yiwang/1`).
pub const ALPN: &[u8] = b"yiwang-trunk/1";
/// Keep-alive interval on trunks.
pub const KEEP_ALIVE: Duration = Duration::from_millis(250);
/// Idle timeout on trunks: a trunk silent this long is down.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Initial (and lowest probed) UDP payload size for trunk packets, bytes.
pub const INITIAL_MTU: u16 = 1350;
/// Datagram buffers each way, bytes.
pub const DATAGRAM_BUFFER: usize = 4 * 1024 * 1024;

/// Trunk TLS could not be set up, or a peer did not prove its name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrunkTlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration or the certificate.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The verifier could not be built (no usable CA certificate).
    #[error("verifier: {0}")]
    Verifier(String),
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The node name cannot be a TLS server name.
    #[error("node name {0:?} is not usable as a certificate name")]
    BadName(String),
    /// The peer's certificate is on the province's revocation list.
    #[error("the certificate of {0:?} is revoked")]
    Revoked(String),
    /// The revocation list could not be read or has a bad line.
    #[error("revocation list {path}: {reason}")]
    RevocationList {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// SHA-256 of a DER certificate: how the revocation list names certificates.
pub fn cert_fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(cert.as_ref()).into()
}

/// The fingerprint of the first certificate in PEM text.
pub fn pem_fingerprint(pem: &str) -> Result<[u8; 32], TrunkTlsError> {
    use rustls::pki_types::pem::PemObject as _;
    let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| pem_err("certificate", "no certificate"))?
        .map_err(|e| pem_err("certificate", e))?;
    Ok(cert_fingerprint(&cert))
}

/// Node certificates the province no longer trusts, by [`cert_fingerprint`]: the CA's
/// `revoked.txt` (`media-server ca revoke`), copied to every node (`[trunk] revoked`). One
/// fingerprint per line as 64 hex digits, anything after it a comment; blank lines and lines
/// starting with `#` are skipped. A trunk whose peer presents a listed certificate is refused,
/// and one already up is closed when the list changes (the shell rereads it).
#[derive(Debug, Default)]
pub struct RevocationList {
    set: RwLock<HashSet<[u8; 32]>>,
}

impl RevocationList {
    /// Parses the file format above; an error names the first bad line.
    pub fn parse(text: &str) -> Result<HashSet<[u8; 32]>, String> {
        let mut set = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hex_fpr = line.split_whitespace().next().unwrap_or_default();
            let mut fpr = [0u8; 32];
            hex::decode_to_slice(hex_fpr, &mut fpr).map_err(|_| {
                format!(
                    "line {}: expected a SHA-256 fingerprint (64 hex digits), found {hex_fpr:?}",
                    i + 1
                )
            })?;
            set.insert(fpr);
        }
        Ok(set)
    }

    /// Reads `path` (see [`RevocationList::parse`]).
    pub fn read(path: &Path) -> Result<HashSet<[u8; 32]>, TrunkTlsError> {
        let bad = |reason: String| TrunkTlsError::RevocationList {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        RevocationList::parse(&text).map_err(bad)
    }

    /// Replaces the listed fingerprints.
    pub fn replace(&self, set: HashSet<[u8; 32]>) {
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// Whether `fpr` is listed.
    pub fn contains(&self, fpr: &[u8; 32]) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fpr)
    }

    /// How many certificates are listed.
    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a node needs to speak on trunks: the province CA certificate, its own certificate chain
/// and key.
#[derive(Debug)]
pub struct TrunkCredentials {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    revoked: Arc<RevocationList>,
}

impl Clone for TrunkCredentials {
    fn clone(&self) -> Self {
        TrunkCredentials {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            revoked: self.revoked.clone(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_err(path: &str, reason: impl ToString) -> TrunkTlsError {
    TrunkTlsError::Pem {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl TrunkCredentials {
    /// From PEM text: the CA certificate, the node certificate (chain) and its private key.
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<TrunkCredentials, TrunkTlsError> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| pem_err("CA certificate", e))?)?;
        }
        if roots.is_empty() {
            return Err(pem_err("CA certificate", "no certificate"));
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| pem_err("node certificate", e))?;
        if chain.is_empty() {
            return Err(pem_err("node certificate", "no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| pem_err("node key", e))?;
        Ok(TrunkCredentials {
            roots: Arc::new(roots),
            chain,
            key,
            revoked: Arc::default(),
        })
    }

    /// The revocation list peers are checked against (empty unless configured).
    pub fn revocations(&self) -> &Arc<RevocationList> {
        &self.revoked
    }

    /// From PEM files (`[trunk] ca`, `cert`, `key` in the node config).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TrunkCredentials, TrunkTlsError> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| pem_err(&p.display().to_string(), e));
        TrunkCredentials::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    /// The accepting side: requires a client certificate issued by the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TrunkTlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| TrunkTlsError::Verifier(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TrunkTlsError::Verifier(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config()));
        Ok(server)
    }

    /// The dialling side: presents the node certificate, trusts only the CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TrunkTlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TrunkTlsError::Verifier(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport_config()));
        Ok(client)
    }

    /// The dialling side when the peer's name is not known in advance (config lists only
    /// `HOST:PORT`): the server certificate must chain to the CA, its name is checked after the
    /// handshake against the peer's `Hello` with [`verify_peer_name`](Self::verify_peer_name).
    /// Connect with server name [`ANY_NODE`].
    pub fn client_config_any_node(&self) -> Result<quinn::ClientConfig, TrunkTlsError> {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| TrunkTlsError::Verifier(e.to_string()))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CaOnly(inner)))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TrunkTlsError::Verifier(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport_config()));
        Ok(client)
    }

    /// Checks that the certificate `conn`'s peer presented (already verified against the CA
    /// during the handshake) names `node` and is not revoked. Both sides call this with the name
    /// the peer claims in its `Hello`.
    pub fn verify_peer_name(
        &self,
        conn: &quinn::Connection,
        node: &str,
    ) -> Result<(), TrunkTlsError> {
        let chain = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or(TrunkTlsError::NoPeerCertificate)?;
        let (end, intermediates) = chain
            .split_first()
            .ok_or(TrunkTlsError::NoPeerCertificate)?;
        let name = ServerName::try_from(node.to_owned())
            .map_err(|_| TrunkTlsError::BadName(node.to_owned()))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| TrunkTlsError::Verifier(e.to_string()))?;
        verifier.verify_server_cert(end, intermediates, &name, &[], UnixTime::now())?;
        if self.revoked.contains(&cert_fingerprint(end)) {
            return Err(TrunkTlsError::Revoked(node.to_owned()));
        }
        Ok(())
    }
}

/// Server name used with [`TrunkCredentials::client_config_any_node`].
pub const ANY_NODE: &str = "yiwang-node";

/// Verifies the chain to the CA (validity, signatures, usage) but leaves the name to
/// [`TrunkCredentials::verify_peer_name`].
#[derive(Debug)]
struct CaOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The QUIC transport settings of every trunk (see the table in the module docs).
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        .initial_mtu(INITIAL_MTU)
        .initial_rtt(Duration::from_millis(100))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            IDLE_TIMEOUT.as_millis() as u32,
        ))))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into());
    t
}

/// Binds a trunk endpoint on `addr` that both accepts trunks and dials (by default checking the
/// server name given to `connect`; see [`TrunkCredentials::client_config_any_node`]).
pub fn endpoint(addr: SocketAddr, creds: &TrunkCredentials) -> anyhow::Result<quinn::Endpoint> {
    endpoint_with(addr, creds, creds.client_config()?)
}

/// Binds a trunk endpoint on `addr` with `client` as its dialling configuration.
pub fn endpoint_with(
    addr: SocketAddr,
    creds: &TrunkCredentials,
    client: quinn::ClientConfig,
) -> anyhow::Result<quinn::Endpoint> {
    let mut ep = quinn::Endpoint::server(creds.server_config()?, addr)?;
    ep.set_default_client_config(client);
    Ok(ep)
}
