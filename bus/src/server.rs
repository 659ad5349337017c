//! The node's nats-server: its configuration, written from the node's own settings, and the
//! process, run as a supervised child.
//!
//! One source of truth: everything here comes from the node's `[trunk]` section (name, CA,
//! certificate, key, parents) and its `[nats]` section (ports, children). The configuration turns
//! on JetStream with the node's own domain, dials the first parent's leaf port and fails over to
//! the second (in that order, never randomised), and authenticates leaf connections both ways
//! with the province CA. A child's leaf connection is mapped to a user by its certificate's name
//! (`verify_and_map`), and that user may publish only under its own and its subtree's subjects
//! (`yw.<name>.>`), plus the reply and JetStream API subjects mail needs. The node itself connects
//! on the client port as [`LOCAL_USER`] with a secret written beside the configuration.
//!
//! Needs nats-server ≥ 2.9 (JetStream domains, leaf-node TLS maps, `allowed_connection_types`);
//! Debian 12's package is 2.9.10. See docs/province.md.

use crate::subject::{domain, node_token};
use crate::BusError;
use ids::NodeName;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The node's own user on its server. It has a space, which node names cannot, so no
/// certificate can map to it.
pub const LOCAL_USER: &str = "node local";

/// What the nats-server configuration is made from.
#[derive(Debug, Clone)]
pub struct ServerPlan {
    /// This node (server name, JetStream domain, its own subjects).
    pub node: NodeName,
    /// The client listener the node connects to (keep it on loopback).
    pub client_listen: SocketAddr,
    /// Where children's servers dial in; `None` for a node without children.
    pub leaf_listen: Option<SocketAddr>,
    /// Parents' leaf URLs (`tls://HOST:PORT`) in order of preference: first parent, then the
    /// second. The host must be a name or address in the parent's certificate.
    pub parents: Vec<String>,
    /// Children allowed to dial in, each with the nodes below it (they may publish under those
    /// names too: their mail and events pass through the child).
    pub children: BTreeMap<NodeName, Vec<NodeName>>,
    /// Province CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued by the CA for its name.
    pub cert: PathBuf,
    /// This node's key (PEM).
    pub key: PathBuf,
    /// JetStream's store.
    pub store_dir: PathBuf,
    /// The local user's password.
    pub local_password: String,
    /// Largest message, bytes.
    pub max_payload: usize,
    /// JetStream file store limit, bytes.
    pub max_file_store: u64,
    /// nats-server's HTTP monitoring endpoint (`/varz`, `/leafz`, …); `None` for none.
    pub monitor_listen: Option<SocketAddr>,
}

/// A listen address as nats-server wants it: port 0 means "its default" there, so an ephemeral
/// port is written as `-1` (nats-server then logs the port it took).
fn listen(addr: SocketAddr) -> String {
    if addr.port() == 0 {
        let ip = addr.ip().to_string();
        if addr.is_ipv6() {
            format!("[{ip}]:-1")
        } else {
            format!("{ip}:-1")
        }
    } else {
        addr.to_string()
    }
}

/// A NATS configuration string (JSON-style, which nats-server's parser reads).
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

/// The subjects a child's leaf connection may publish: its subtree's own, replies, JetStream.
pub fn child_publish_allow(child: &NodeName, subtree: &[NodeName]) -> Vec<String> {
    // One entry per kind (not `yw.<name>.>`): nats-server passes a wildcard interest such as
    // `yw.*.evt.>` down to a leaf only if an allow entry has the same shape (seen with 2.9.10).
    let mut allow: Vec<String> = std::iter::once(child)
        .chain(subtree)
        .flat_map(|n| {
            let t = node_token(n);
            ["evt", "rpc", "box"].map(|k| format!("yw.{t}.{k}.>"))
        })
        .collect();
    allow.push("_INBOX.>".into());
    allow.push("$JS.>".into());
    allow
}

/// Renders the nats-server configuration for `plan`.
pub fn render(plan: &ServerPlan) -> String {
    let mut c = String::new();
    let tls = |c: &mut String, indent: &str, extra: &str| {
        let _ = writeln!(
            c,
            "{indent}tls {{ cert_file: {}, key_file: {}, ca_file: {}{extra} }}",
            qp(&plan.cert),
            qp(&plan.key),
            qp(&plan.ca)
        );
    };
    let _ = writeln!(
        c,
        "# Written by media-server nats-config from the node's [trunk] and [nats] sections.\n\
         # Do not edit: it is rewritten when the node starts."
    );
    let _ = writeln!(c, "server_name: {}", q(&node_token(&plan.node)));
    let _ = writeln!(c, "listen: {}", q(&listen(plan.client_listen)));
    if let Some(m) = plan.monitor_listen {
        let _ = writeln!(c, "http: {}", q(&listen(m)));
    }
    let _ = writeln!(c, "max_payload: {}", plan.max_payload);
    let _ = writeln!(
        c,
        "jetstream {{ domain: {}, store_dir: {}, max_memory_store: 67108864, max_file_store: {} }}",
        q(&domain(&plan.node)),
        qp(&plan.store_dir),
        plan.max_file_store
    );
    let _ = writeln!(c, "authorization {{\n  users: [");
    let _ = writeln!(
        c,
        "    {{ user: {}, password: {}, allowed_connection_types: [\"STANDARD\"] }}",
        q(LOCAL_USER),
        q(&plan.local_password)
    );
    for (child, subtree) in &plan.children {
        let allow: Vec<String> = child_publish_allow(child, subtree)
            .iter()
            .map(|s| q(s))
            .collect();
        let _ = writeln!(
            c,
            "    {{ user: {}, allowed_connection_types: [\"LEAFNODE\"], permissions: {{ publish: {{ allow: [{}] }} }} }}",
            q(child.as_str()),
            allow.join(", ")
        );
    }
    let _ = writeln!(c, "  ]\n}}");
    if plan.leaf_listen.is_some() || !plan.parents.is_empty() {
        let _ = writeln!(c, "leafnodes {{\n  reconnect: 1");
        if let Some(l) = plan.leaf_listen {
            let _ = writeln!(c, "  listen: {}", q(&listen(l)));
            tls(&mut c, "  ", ", verify_and_map: true, timeout: 2");
        }
        if !plan.parents.is_empty() {
            let urls: Vec<String> = plan.parents.iter().map(|u| q(u)).collect();
            let _ = writeln!(
                c,
                "  remotes: [ {{\n    urls: [{}]\n    dont_randomize: true",
                urls.join(", ")
            );
            tls(&mut c, "    ", ", timeout: 2");
            let _ = writeln!(c, "  }} ]");
        }
        let _ = writeln!(c, "}}");
    }
    c
}

/// A random secret for the local user (hex, 32 bytes of the OS's randomness).
pub fn new_secret() -> Result<String, BusError> {
    use std::io::Read as _;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads the local secret from `path`, making it (mode 0600) if missing.
pub fn load_or_make_secret(path: &Path) -> Result<String, BusError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let secret = new_secret()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(path, secret.as_bytes())?;
    Ok(secret)
}

/// Writes `bytes` to `path` readable by the owner only (the configuration holds the secret).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BusError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A running nats-server child; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts `bin -c config -l log`.
    pub fn spawn(bin: &Path, config: &Path, log: &Path) -> Result<ServerProcess, BusError> {
        let child = Command::new(bin)
            .arg("-c")
            .arg(config)
            .arg("-l")
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(ServerProcess { child })
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the client port accepts connections, up to `timeout`.
    pub async fn wait_ready(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(BusError::Io(std::io::Error::other(format!(
                    "nats-server exited: {status}"
                ))));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("nats-server not listening on {addr} within {timeout:?}"),
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub async fn kill(&mut self) -> Result<(), BusError> {
        self.child.kill().await?;
        Ok(())
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> Result<std::process::ExitStatus, BusError> {
        Ok(self.child.wait().await?)
    }
}

/// Runs nats-server until the returned task is aborted (which kills it), restarting it when it
/// exits: after 0.5 s, doubling up to 30 s, back to 0.5 s once it has run a minute.
pub fn supervise(bin: PathBuf, config: PathBuf, log: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let started = tokio::time::Instant::now();
            match ServerProcess::spawn(&bin, &config, &log) {
                Ok(mut p) => {
                    tracing::info!(pid = ?p.id(), "nats-server started");
                    match p.wait().await {
                        Ok(status) => tracing::error!(%status, "nats-server exited; restarting"),
                        Err(e) => tracing::error!(error = %e, "nats-server lost; restarting"),
                    }
                }
                Err(e) => {
                    tracing::error!(bin = %bin.display(), error = %e, "nats-server does not start")
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_millis(500);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    fn plan() -> ServerPlan {
        ServerPlan {
            node: n("county"),
            client_listen: "127.0.0.1:4222".parse().unwrap(),
            leaf_listen: Some("0.0.0.0:7422".parse().unwrap()),
            parents: vec!["tls://city-a:7422".into(), "tls://city-b:7422".into()],
            children: [(n("town.1"), vec![n("village")])].into_iter().collect(),
            ca: "/etc/yw/ca.pem".into(),
            cert: "/etc/yw/county.pem".into(),
            key: "/etc/yw/county.key".into(),
            store_dir: "/var/lib/yw/nats".into(),
            local_password: "s\"ecret".into(),
            max_payload: 1 << 20,
            max_file_store: 1 << 30,
            monitor_listen: None,
        }
    }

    #[test]
    fn the_config_names_the_domain_parents_in_order_and_the_childs_subtree() {
        let c = render(&plan());
        assert!(c.contains("domain: \"county\""), "{c}");
        assert!(
            c.contains("urls: [\"tls://city-a:7422\", \"tls://city-b:7422\"]"),
            "{c}"
        );
        assert!(c.contains("dont_randomize: true"), "{c}");
        assert!(c.contains("verify_and_map: true"), "{c}");
        assert!(
            c.contains("allow: [\"yw.town~1.evt.>\", \"yw.town~1.rpc.>\", \"yw.town~1.box.>\", \"yw.village.evt.>\""),
            "{c}"
        );
        assert!(c.contains("password: \"s\\\"ecret\""), "{c}");
        let mut p = plan();
        p.client_listen = "127.0.0.1:0".parse().unwrap();
        assert!(
            render(&p).contains("listen: \"127.0.0.1:-1\""),
            "ephemeral port"
        );
    }

    #[test]
    fn a_root_without_children_has_no_leafnodes_block() {
        let mut p = plan();
        p.leaf_listen = None;
        p.parents.clear();
        p.children.clear();
        assert!(!render(&p).contains("leafnodes"));
    }
}
