//! Bandwidth estimation glue: str0m estimates, this module steers.
//!
//! - Viewers: send-side estimation (TWCC) on what the engine sends them, started at
//!   [`SfuConfig::bwe_initial_kbps`](crate::SfuConfig) and probing towards
//!   `bwe_desired_kbps`; an `auto` viewer's estimator is kept probing towards its next layer up
//!   ([`Forwarder::probe_target`]), and its estimate drives its layer choice (in the forwarding
//!   core). Video is paced at the estimate unless `pace_video` is off.
//! - Single-layer publishers: told by REMB, once per [`REMB_INTERVAL`], the rate their best
//!   viewer can take (capped at `publisher_max_kbps`); simulcast publishers run their own
//!   congestion control.
//!
//! Decisions about layers stay in [`crate::forward`]; nothing here touches sockets or the clock.

use std::time::Duration;

use str0m::bwe::Bitrate;
use str0m::RtcConfig;
use tracing::warn;

#[cfg(doc)]
use crate::forward::Forwarder;
use crate::session::{Peer, PeerRole};
use crate::Sfu;

/// How often publishers are told their target bitrate.
pub(crate) const REMB_INTERVAL: Duration = Duration::from_secs(1);

impl Sfu {
    /// A viewer session's configuration with send-side bandwidth estimation (TWCC) on: what
    /// the engine sends the viewer drives its `Auto` layer choice.
    pub(crate) fn viewer_bwe(&self, cfg: RtcConfig) -> RtcConfig {
        cfg.enable_bwe(Some(Bitrate::kbps(self.config.bwe_initial_kbps)))
    }

    /// Starts a new viewer's estimator probing towards `bwe_desired_kbps`, and leaves its video
    /// unpaced when `pace_video` is off.
    pub(crate) fn start_viewer_bwe(&self, peer: &mut Peer) {
        peer.rtc.bwe().set_bitrate(
            Bitrate::kbps(0),
            Bitrate::kbps(self.config.bwe_desired_kbps),
        );
        if !self.config.pace_video {
            if let Some(mid) = peer.video_mid {
                let mut api = peer.rtc.direct_api();
                match api.stream_tx_by_mid(mid, None) {
                    Some(tx) => tx.set_unpaced(true),
                    None => warn!("no video send stream to unpace"),
                }
            }
        }
    }

    /// Keeps each `Auto` viewer's estimator probing towards its next layer up (see
    /// [`Forwarder::probe_target`]); the floor is changed only when it moves by more than 10 %.
    pub(crate) fn update_probing(&mut self) {
        let desired = Bitrate::kbps(self.config.bwe_desired_kbps);
        for (id, peer) in self.peers.iter_mut() {
            if !matches!(peer.role, PeerRole::Viewer { .. }) || !peer.connected {
                continue;
            }
            let floor = self.fwd.probe_target(*id).unwrap_or(0);
            if floor.abs_diff(peer.probe_floor) * 10 > peer.probe_floor.max(1) {
                peer.probe_floor = floor;
                peer.rtc.bwe().set_bitrate(Bitrate::bps(floor), desired);
            }
        }
    }

    /// Tells each single-layer publisher the bitrate to aim for (REMB). Simulcast publishers are
    /// left to their own congestion control: their layers already serve weak viewers.
    pub(crate) fn send_remb(&mut self) {
        let max = self.config.publisher_max_kbps * 1000;
        for peer in self.peers.values_mut() {
            let PeerRole::Publisher { stream } = &peer.role else {
                continue;
            };
            let Some(mid) = peer
                .video_mid
                .filter(|_| peer.layers.count() <= 1 && peer.connected)
            else {
                continue;
            };
            let target = self
                .fwd
                .viewer_demand(stream)
                .map_or(max, |d| d.min(max))
                .max(50_000);
            if let Some(rx) = peer.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_remb(Bitrate::bps(target));
            }
        }
    }
}
