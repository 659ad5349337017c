//! Shared by the bus's integration tests: a province CA made like `media-server ca`, and real
//! nats-server processes on ephemeral loopback ports, killed when dropped (also on a failed
//! assertion: `ServerProcess` kills on drop).
#![allow(dead_code)]

use bus::server::{self, ServerPlan, ServerProcess};
use bus::NodeName;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The nats-server binary (`NATS_SERVER` or `nats-server` on PATH; scripts/install-deps.sh).
pub fn nats_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
                let p = Path::new(dir).join("nats-server");
                if p.exists() {
                    return p;
                }
            }
            PathBuf::from("nats-server")
        })
}

pub fn n(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}

/// Polls `f` until it yields, at most `within`.
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
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A province CA: node certificates as `media-server ca issue` makes them (CN and DNS name = the
/// node, server + client use), plus the loopback address as a SAN so a leaf URL of
/// `tls://127.0.0.1:PORT` verifies.
pub struct Ca {
    key: KeyPair,
    params: CertificateParams,
    pub dir: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "test province CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca {
            key,
            params,
            dir: dir.to_owned(),
        }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `(cert, key)` paths for `node`.
    pub fn issue(&self, node: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![node.to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::new(self.params.clone(), &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{node}.pem")),
            self.dir.join(format!("{node}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A running nats-server with the ports it took.
pub struct Server {
    pub node: NodeName,
    pub process: ServerProcess,
    pub client: SocketAddr,
    pub leaf: Option<SocketAddr>,
    pub monitor: SocketAddr,
    pub password: String,
    pub log: PathBuf,
}

impl Server {
    pub fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    pub fn leaf_url(&self) -> String {
        format!("tls://{}", self.leaf.expect("a leaf listener"))
    }

    pub fn options(&self) -> bus::NatsOptions {
        let mut o = bus::NatsOptions::new(self.url(), server::LOCAL_USER, &self.password);
        o.ack_wait = Duration::from_secs(1);
        o
    }

    pub async fn bus(&self) -> bus::NatsBus {
        tokio::time::timeout(
            Duration::from_secs(10),
            bus::NatsBus::connect(self.node.clone(), self.options()),
        )
        .await
        .expect("connect within 10 s")
        .expect("connect")
    }

    /// nats-server's monitoring JSON at `path` (e.g. `/leafz`), over plain HTTP/1.0.
    pub async fn monitor(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.monitor).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// How many leaf connections this server has, either way (`/leafz`; 2.9 does not name them).
    pub async fn leaf_count(&self) -> usize {
        let body = self.monitor("/leafz").await;
        body.split_once("\"leafnodes\":")
            .and_then(|(_, rest)| {
                rest.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|d| d.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// Starts `node`'s nats-server in `dir/node/` on ephemeral loopback ports.
pub async fn start(
    ca: &Ca,
    dir: &Path,
    node: &str,
    with_leaf_listener: bool,
    parents: Vec<String>,
    children: BTreeMap<NodeName, Vec<NodeName>>,
) -> Server {
    let (cert, key) = ca.issue(node);
    let home = dir.join(node);
    std::fs::create_dir_all(&home).unwrap();
    let password = server::load_or_make_secret(&home.join("client.secret")).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let plan = ServerPlan {
        node: n(node),
        client_listen: any,
        leaf_listen: with_leaf_listener.then_some(any),
        parents,
        children,
        ca: ca.ca_pem(),
        cert,
        key,
        store_dir: home.join("jetstream"),
        local_password: password.clone(),
        max_payload: bus::DEFAULT_MAX_PAYLOAD,
        max_file_store: 256 << 20,
        monitor_listen: Some(any),
    };
    let conf = home.join("nats.conf");
    server::write_private(&conf, server::render(&plan).as_bytes()).unwrap();
    let log = home.join("nats.log");
    let process = ServerProcess::spawn(&nats_bin(), &conf, &log).expect("nats-server runs");
    // The ports it took, from its log.
    let grab = |text: &str, what: &str| -> Option<SocketAddr> {
        text.lines()
            .find_map(|l| l.split_once(what).map(|(_, a)| a.trim().to_owned()))
            .and_then(|a| a.trim_start_matches("http://").parse().ok())
    };
    let (client, leaf, monitor) = wait_for("nats-server's ports", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let client = grab(&text, "Listening for client connections on ");
        let leaf = grab(&text, "Listening for leafnode connections on ");
        let monitor = grab(&text, "Starting http monitor on ");
        let ready = text.contains("Server is ready");
        async move {
            match (ready, client, monitor) {
                (true, Some(c), Some(m)) if leaf.is_some() || !with_leaf_listener => {
                    Some((c, leaf, m))
                }
                _ => None,
            }
        }
    })
    .await;
    Server {
        node: n(node),
        process,
        client,
        leaf,
        monitor,
        password,
        log,
    }
}
