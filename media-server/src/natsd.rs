//! The node's nats-server (the province bus, `[nats]`): its configuration written from the
//! node's own `[trunk]` and `[nats]` sections, and the server run as a supervised child.
//!
//! One source of truth: the server's name and JetStream domain are the node's trunk name, its
//! TLS identity is the trunk's CA, certificate and key, and its leaf connection dials the trunk's
//! parent and then its second parent (at `[nats] parent_leaf_port`, or the addresses given in
//! `[nats] parent_leaf` / `second_parent_leaf`). Files live in `<data_dir>/nats/`: `nats.conf`
//! (0600, it holds the node's own password), `client.secret`, `jetstream/`, `nats-server.log`.

use std::path::PathBuf;

use anyhow::Context as _;
use bus::server::{self, ServerPlan};
use signaling::ids::NodeId;

use crate::config::NodeConfig;

/// Where the node keeps its nats-server's files.
pub fn dir(config: &NodeConfig) -> PathBuf {
    config.node.data_dir.join("nats")
}

/// The host part of `HOST:PORT` (`[v6]:port` → `[v6]`).
fn host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// The plan for this node's server; `node` is the node's id when `[trunk] node` is unset.
pub fn plan(config: &NodeConfig, node: &NodeId) -> anyhow::Result<ServerPlan> {
    let n = &config.nats;
    let name = config.trunk.node.clone().unwrap_or_else(|| node.clone());
    let leaf_url = |explicit: &Option<String>, trunk: &Option<String>| {
        explicit
            .clone()
            .or_else(|| {
                trunk
                    .as_deref()
                    .map(|t| format!("{}:{}", host(t), n.parent_leaf_port))
            })
            .map(|a| format!("tls://{a}"))
    };
    let parents: Vec<String> = [
        leaf_url(&n.parent_leaf, &config.trunk.parent),
        leaf_url(&n.second_parent_leaf, &config.trunk.second_parent),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut children = std::collections::BTreeMap::new();
    for (child, below) in &n.children {
        let parse =
            |s: &str| NodeId::parse(s).map_err(|e| anyhow::anyhow!("[nats] children: {s:?}: {e}"));
        let below = below
            .iter()
            .map(|s| parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        children.insert(parse(child)?, below);
    }
    let tls_needed = n.leaf_listen.is_some() || !parents.is_empty();
    let file = |key: &str, p: &Option<PathBuf>| -> anyhow::Result<PathBuf> {
        match p {
            Some(p) => Ok(p.clone()),
            None if tls_needed => anyhow::bail!(
                "[nats] leaf connections need [trunk] {key} (the province CA, the node's certificate and key)"
            ),
            None => Ok(PathBuf::new()),
        }
    };
    let home = dir(config);
    Ok(ServerPlan {
        node: name,
        client_listen: n.client_listen,
        leaf_listen: n.leaf_listen,
        parents,
        children,
        ca: file("ca", &config.trunk.ca)?,
        cert: file("cert", &config.trunk.cert)?,
        key: file("key", &config.trunk.key)?,
        store_dir: home.join("jetstream"),
        local_password: server::load_or_make_secret(&home.join("client.secret"))?,
        max_payload: n.max_payload,
        max_file_store: n.max_file_store,
        monitor_listen: n.monitor_listen,
    })
}

/// Writes `<data_dir>/nats/nats.conf` for this node; returns its path and the plan.
pub fn write(config: &NodeConfig, node: &NodeId) -> anyhow::Result<(PathBuf, ServerPlan)> {
    let plan = plan(config, node)?;
    let home = dir(config);
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let path = home.join("nats.conf");
    server::write_private(&path, server::render(&plan).as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((path, plan))
}

/// Writes the configuration and starts nats-server under supervision (restarted with backoff;
/// its log in `<data_dir>/nats/nats-server.log`). Aborting the task kills the server.
pub fn start(config: &NodeConfig, node: &NodeId) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (conf, _) = write(config, node)?;
    let log = dir(config).join("nats-server.log");
    Ok(server::supervise(config.nats.server_bin.clone(), conf, log))
}
