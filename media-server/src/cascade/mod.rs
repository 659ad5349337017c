//! The cascade shell: trunks between nodes — the province CA, the mutually authenticated QUIC
//! configuration tuned for media, and the tokio shell that drives the sans-IO [`trunk::Router`].
//!
//! - [`ca`]: `media-server ca init` / `ca issue NODE` — the province CA and per-node certificates;
//! - [`tls`]: rustls + quinn configuration: both ends present a certificate issued by the
//!   province CA and are checked against the node name they claim; BBR, a 1350-byte initial MTU,
//!   datagrams on, keep-alive 250 ms and idle timeout 1 s so a cut trunk is noticed within 1 s;
//! - [`shell`]: the tokio shell — endpoint, diallers, one task per trunk carrying the control
//!   stream and datagrams, and the actor owning the router (catalogs and subscriptions);
//! - [`status`]: what `GET /api/trunks` shows (uplinks, trunks, routes);
//!
//! The sans-IO media plane of trunks (RTP in QUIC datagrams) is [`trunk::media`], owned by the
//! SFU.
//!
//! The shell does not touch the SFU: it hands datagrams and routes to the media task through a
//! [`shell::MediaLink`] (docs/trunk.md).

pub mod ca;
pub mod shell;
pub mod status;
pub mod tls;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::TrunkConfig;
use crate::streams::LiveStreams;
use signaling::ids::{NodeId, StreamName};

/// How often the live-stream table is copied into the trunk catalog.
pub const CATALOG_SYNC: Duration = Duration::from_millis(500);

/// Starts the trunk shell for a node from its `[trunk]` section (`None` when trunks are not
/// configured), and a task that announces the node's live streams (one layer per received video
/// layer, at least one) as they come and go.
pub async fn start_for_node(
    cfg: &TrunkConfig,
    node_id: &NodeId,
    live: LiveStreams,
    media: Option<shell::MediaLink>,
) -> anyhow::Result<Option<(shell::TrunkHandle, tokio::task::JoinHandle<()>)>> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let need = |p: &Option<std::path::PathBuf>, what: &str| {
        p.clone()
            .with_context(|| format!("[trunk] {what} is required when trunks are configured"))
    };
    let credentials = tls::TrunkCredentials::load(
        &need(&cfg.ca, "ca")?,
        &need(&cfg.cert, "cert")?,
        &need(&cfg.key, "key")?,
    )?;
    let node = cfg.node.clone().unwrap_or_else(|| node_id.clone());
    let shell_cfg = shell::ShellConfig {
        node,
        listen: cfg.listen.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
        parents: cfg
            .parent
            .iter()
            .chain(cfg.second_parent.iter())
            .cloned()
            .collect(),
        peers: cfg.peers.clone(),
        grace: Duration::from_secs(cfg.grace_secs),
        credentials,
        media,
        revoked: cfg.revoked.clone(),
    };
    let handle = shell::start(shell_cfg).await?;
    let h = handle.clone();
    let task = tokio::spawn(async move {
        let mut known: BTreeMap<StreamName, u8> = BTreeMap::new();
        let mut tick = tokio::time::interval(CATALOG_SYNC);
        loop {
            tick.tick().await;
            // Each stream with the ids of its live layers: a layer its publisher pauses (congestion
            // control) leaves the announcement, so nodes that do not pull it stop offering it.
            // Only local names: a stream pulled from another node (`NODE/STREAM`) is not ours
            // to announce.
            let now: BTreeMap<StreamName, u8> = live
                .list()
                .into_iter()
                .filter(|s| s.name.split_remote().is_none())
                .map(|s| (s.name, crate::streams::announced_layers(&s.layers).0))
                .collect();
            for (name, layers) in &now {
                if known.get(name) != Some(layers) {
                    h.publish(name.clone(), trunk::LayerSet(*layers));
                }
            }
            for name in known.keys().filter(|n| !now.contains_key(*n)) {
                h.unpublish(name.clone());
            }
            known = now;
            let me = h.node().clone();
            let remote = h
                .catalog()
                .await
                .into_iter()
                .filter(|e| e.addr.node != me)
                .map(|e| crate::streams::RemoteStreamInfo {
                    name: e.addr.to_string(),
                    node: e.addr.node.as_str().to_owned(),
                    stream: e.addr.stream.as_str().to_owned(),
                    layers: e.layers.iter().count() as u8,
                    layer_ids: e.layers.0,
                    cost: e.cost,
                    remote: true,
                })
                .collect();
            live.set_remote(remote);
        }
    });
    Ok(Some((handle, task)))
}
