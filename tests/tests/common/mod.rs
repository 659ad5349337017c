//! Shared helpers of the end-to-end tests: a node started in-process on ephemeral loopback
//! ports, tokens minted with its own issuer, and a lock that serialises media-heavy tests (two
//! cores cannot encode and decode several video streams for two tests at once).

#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use media_server::config::NodeConfig;
use media_server::node::RunningNode;
use signaling::auth::{Role, TokenRequest};

/// Held by every test that runs real media.
pub static MEDIA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct TestNode {
    pub node: RunningNode,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub dir: tempfile::TempDir,
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A node on 127.0.0.1 with port 0 everywhere and a fresh data dir.
pub async fn start_node() -> TestNode {
    start_node_with(|_| {}).await
}

pub async fn start_node_with(edit: impl FnOnce(&mut NodeConfig)) -> TestNode {
    init_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::default();
    config.node.data_dir = dir.path().join("data");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    edit(&mut config);
    let node = media_server::node::start(config)
        .await
        .expect("node starts");
    let base = format!("http://{}", node.http_addr);
    TestNode { node, base, dir }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl TestNode {
    /// A token for `sub` with `role`, for this node.
    pub fn token(&self, sub: &str, role: Role) -> String {
        self.token_with(sub, role, |_| {})
    }

    pub fn token_with(
        &self,
        sub: &str,
        role: Role,
        edit: impl FnOnce(&mut TokenRequest),
    ) -> String {
        let id = &self.node.identity;
        let mut req = TokenRequest::new(
            sub.parse().unwrap(),
            role,
            id.node_id.to_string(),
            id.fingerprint.clone(),
        );
        edit(&mut req);
        id.issuer().issue(&req, now_unix())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Current value of a metric line (exact name including labels).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A syntactically complete WebRTC offer (VP8, sendonly) that the node accepts. Nobody will
/// answer its ICE checks: it is for testing the HTTP contract, not media.
pub fn canned_offer() -> String {
    let fp: Vec<String> = (0..32).map(|i| format!("{:02X}", i * 7 % 256)).collect();
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:yWt1",
        "a=ice-pwd:0123456789abcdefghijklmn",
        &format!("a=fingerprint:sha-256 {}", fp.join(":")),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=ssrc:11111111 cname:yiwang-test",
        "",
    ]
    .join("\r\n")
}

/// A TLS client that accepts exactly the certificate `cert` (DER), whatever its names and dates:
/// how a client pins a node's self-signed certificate by its fingerprint.
pub fn pinned_connector(cert: Vec<u8>) -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct Exactly(Vec<u8>, rustls::crypto::WebPkiSupportedAlgorithms);
    impl ServerCertVerifier for Exactly {
        fn verify_server_cert(
            &self,
            ee: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if ee.as_ref() == self.0.as_slice() {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("not the node's certificate".into()))
            }
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.1)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.1)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.1.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Exactly(cert, algs)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}
