//! Remote viewers: streams of other nodes watched here, and local streams sent to other nodes,
//! through the trunk media plane ([`trunk::media::TrunkPlane`]) the engine owns when the node
//! has trunks.
//!
//! - A local publisher's frames are tapped for the trunks (in [`crate::fanout`]); the router
//!   asks the local publisher for keyframes ([`Sfu::publisher_keyframe`]).
//! - A remote stream is pulled for a viewer ([`Sfu::watch_remote`], then [`Sfu::view_remote`]
//!   once its codecs are known) and fed to the forwarding core as a publisher named
//!   `NODE/STREAM` ([`RemotePublisher`]); its keyframe requests go back over the trunks.
//! - Only the layers someone here watches cross the trunks: each remote viewer's subscription
//!   follows the layers it needs ([`Sfu::update_remote_pulls`]); the others stay choosable on
//!   standby.
//!
//! What the trunk shell must do leaves as [`TrunkRequest`]s ([`Sfu::poll_trunk`]); this module
//! opens no connection and spawns nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ids::{StreamName, Subject};
use str0m::format::PayloadParams;
use str0m::media::MediaTime;
use trunk::media::{RemoteFrame, TrunkCounters, TrunkOutput, TrunkPlane};

use crate::fanout::MediaIn;
use crate::forward::{Layer, LayerPref, PeerId, TrackKind};
use crate::{SessionAnswer, Sfu, SfuError};

/// What the SFU needs from the trunk shell (see [`Sfu::poll_trunk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkRequest {
    /// A datagram, control message or path switch for the trunk media plane.
    Plane(TrunkOutput),
    /// Subscribe a local viewer to a remote stream (`TrunkHandle::subscribe`).
    Subscribe {
        /// The viewer (its session's peer id).
        viewer: trunk::ViewerId,
        /// The remote stream.
        addr: trunk::StreamAddr,
        /// The layers wanted.
        layers: trunk::LayerSet,
    },
    /// The viewer is gone (`TrunkHandle::unsubscribe`).
    Unsubscribe {
        /// The viewer.
        viewer: trunk::ViewerId,
        /// The remote stream.
        addr: trunk::StreamAddr,
    },
    /// A keyframe of a remote stream's layer is needed (`TrunkHandle::request_keyframe`; the
    /// router throttles).
    Keyframe {
        /// The remote stream.
        addr: trunk::StreamAddr,
        /// The layer.
        layer: trunk::LayerId,
    },
}

/// How long a layer a viewer of a remote stream pulls must have been unneeded before its trunk
/// subscription drops it (so a noisy estimate does not churn subscriptions). A new viewer
/// pulls every layer for at least this long, so all have arrived and been sized.
pub const NARROW_AFTER: Duration = Duration::from_secs(2);

/// A trunk subscription's layer set asking for every layer.
pub(crate) const ALL_LAYERS: u8 = u8::MAX;

/// How often remote viewers' layer needs are looked at besides every remote keyframe.
pub const REMOTE_PULL_TICK: Duration = Duration::from_millis(250);

/// A remote viewer whose layer has been silent this long also pulls the next lower layer, so
/// that layer flows by the time the forwarding core gives the silent one up
/// ([`crate::forward::LAYER_TIMEOUT`]) and moves the viewer down.
pub const REMOTE_FALLBACK_AFTER: Duration = Duration::from_millis(300);

/// The codec of a track, as a trunk `Flow` carries it from the origin node (JSON).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CodecDescriptor {
    pt: u8,
    resend: Option<u8>,
    spec: str0m::format::CodecSpec,
}

pub(crate) fn codec_descriptor(p: &PayloadParams) -> Arc<[u8]> {
    let d = CodecDescriptor {
        pt: *p.pt(),
        resend: p.resend().map(|r| *r),
        spec: p.spec(),
    };
    serde_json::to_vec(&d).unwrap_or_default().into()
}

fn params_of(descriptor: &[u8]) -> Option<PayloadParams> {
    let d: CodecDescriptor = serde_json::from_slice(descriptor).ok()?;
    Some(PayloadParams::new(
        d.pt.into(),
        d.resend.map(Into::into),
        d.spec,
    ))
}

/// A stream pulled from another node over a trunk, fed to local viewers as if published here
/// (under the forwarding core's name `NODE/STREAM`).
pub(crate) struct RemotePublisher {
    pub(crate) peer: PeerId,
    pub(crate) name: StreamName,
    pub(crate) video: Option<PayloadParams>,
    pub(crate) audio: Option<PayloadParams>,
    /// The codec descriptors `video` and `audio` were read from (a change is read again).
    pub(crate) video_codec: Arc<[u8]>,
    pub(crate) audio_codec: Arc<[u8]>,
    /// When its first frame arrived.
    pub(crate) since: Instant,
}

impl Sfu {
    /// Turns on the trunk media plane for node `node`: local streams can be sent to trunks and
    /// remote ones watched ([`Sfu::watch_remote`]).
    pub fn enable_trunks(&mut self, node: trunk::NodeName) {
        self.trunk = Some(TrunkPlane::new(node));
    }

    /// Counters of the trunk media plane (zero without trunks).
    pub fn trunk_counters(&self) -> TrunkCounters {
        self.trunk
            .as_ref()
            .map(|t| t.counters().clone())
            .unwrap_or_default()
    }

    /// The trunk router changed its forwarding of `addr`.
    pub fn trunk_route(&mut self, now: Instant, addr: trunk::StreamAddr, route: trunk::Route) {
        let local = route.outputs.iter().any(|(h, _)| *h == trunk::Hop::Local);
        if let Some(t) = self.trunk.as_mut() {
            t.set_route(addr.clone(), route);
        }
        if !local {
            if let Some(r) = self.remote.remove(&addr) {
                self.fwd.remove_peer(r.peer);
            }
        }
        self.after_input(now);
    }

    /// A datagram arrived on the trunk from `from`.
    pub fn trunk_datagram(&mut self, now: Instant, from: &trunk::NodeName, data: &[u8]) {
        if let Some(t) = self.trunk.as_mut() {
            t.handle_datagram(now, from, data);
        }
        self.after_input(now);
    }

    /// The trunk to `peer` measures round-trip time `rtt` (it paces repeated NACKs).
    pub fn trunk_rtt(&mut self, peer: &trunk::NodeName, rtt: Duration) {
        if let Some(t) = self.trunk.as_mut() {
            t.set_rtt(peer, rtt);
        }
    }

    /// A media-plane control message (`Flow`, `Nack`) arrived on the trunk from `from`.
    pub fn trunk_control(&mut self, now: Instant, from: &trunk::NodeName, msg: trunk::Message) {
        if let Some(t) = self.trunk.as_mut() {
            t.handle_control(now, from, msg);
        }
        self.after_input(now);
    }

    /// The trunk to `peer` came up or went down: its flow ids start afresh.
    pub fn trunk_reset(&mut self, peer: &trunk::NodeName) {
        if let Some(t) = self.trunk.as_mut() {
            t.trunk_reset(peer);
        }
    }

    /// The router asks the local publisher of `stream` for a keyframe of `layer`.
    pub fn publisher_keyframe(&mut self, now: Instant, stream: &StreamName, layer: u8) {
        if let Some(p) = self.fwd.publisher_of(stream) {
            self.request_publisher_keyframe(now, p, Layer(layer));
        }
        self.after_input(now);
    }

    /// Starts pulling the remote stream `addr` for a viewer to come: returns the viewer's peer
    /// id, to pass to [`Sfu::view_remote`] once [`Sfu::remote_codecs`] knows the stream's
    /// codecs, or to [`Sfu::unwatch`] if the viewer gives up.
    pub fn watch_remote(&mut self, addr: trunk::StreamAddr) -> PeerId {
        let peer = self.alloc_peer_id();
        self.trunk_out.push_back(TrunkRequest::Subscribe {
            viewer: trunk::ViewerId(peer.0),
            addr,
            layers: trunk::LayerSet(u8::MAX),
        });
        peer
    }

    /// Ends a pull started by [`Sfu::watch_remote`] that never became a session.
    pub fn unwatch(&mut self, peer: PeerId, addr: trunk::StreamAddr) {
        self.trunk_out.push_back(TrunkRequest::Unsubscribe {
            viewer: trunk::ViewerId(peer.0),
            addr,
        });
    }

    /// Whether media of the remote stream `addr` arrived yet: video codec known, audio codec
    /// known, and since when frames arrive (`None`: no frame yet).
    pub fn remote_codecs(&self, addr: &trunk::StreamAddr) -> (bool, bool, Option<Instant>) {
        self.remote.get(addr).map_or((false, false, None), |r| {
            (r.video.is_some(), r.audio.is_some(), Some(r.since))
        })
    }

    /// The next request for the trunk shell.
    pub fn poll_trunk(&mut self) -> Option<TrunkRequest> {
        self.trunk_out.pop_front()
    }

    /// The remote streams of the trunk catalog, each with the layer ids its origin announces as
    /// live (a layer its publisher paused is left out). Only those go on standby for remote
    /// viewers; a stream missing here (or announcing none) counts as announcing every layer.
    pub fn set_remote_catalog(
        &mut self,
        streams: impl IntoIterator<Item = (trunk::StreamAddr, trunk::LayerSet)>,
    ) {
        self.remote_live = streams.into_iter().map(|(a, l)| (a, l.0)).collect();
    }

    /// Carries the trunk plane's frames to the viewers and its outputs to the shell's queue.
    pub(crate) fn pump_trunk(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        loop {
            let Some(t) = self.trunk.as_mut() else {
                return progressed;
            };
            while let Some(o) = t.poll_output() {
                self.trunk_out.push_back(TrunkRequest::Plane(o));
            }
            let Some(f) = t.poll_frame() else {
                return progressed;
            };
            progressed = true;
            self.route_remote_frame(now, f);
        }
    }

    /// A whole frame of a remote stream: routed to local viewers as if from a local publisher.
    pub(crate) fn route_remote_frame(&mut self, now: Instant, f: RemoteFrame) {
        let addr = f.key.addr.clone();
        if !self.remote.contains_key(&addr) {
            let name = addr.to_stream_name();
            let peer = self.alloc_peer_id();
            let owner = Subject::parse("trunk").expect("valid subject");
            if self
                .fwd
                .add_publisher(now, name.clone(), owner, peer)
                .is_err()
            {
                return;
            }
            self.remote.insert(
                addr.clone(),
                RemotePublisher {
                    peer,
                    name,
                    video: None,
                    audio: None,
                    video_codec: Arc::from(&[][..]),
                    audio_codec: Arc::from(&[][..]),
                    since: now,
                },
            );
        }
        let Some(r) = self.remote.get_mut(&addr) else {
            return;
        };
        let (slot, seen) = if f.key.video {
            (&mut r.video, &mut r.video_codec)
        } else {
            (&mut r.audio, &mut r.audio_codec)
        };
        if slot.is_none() || !Arc::ptr_eq(seen, &f.codec) && seen[..] != f.codec[..] {
            *slot = params_of(&f.codec);
            *seen = f.codec.clone();
        }
        let Some(params) = *slot else { return };
        let peer = r.peer;
        let kind = if f.key.video {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        let layer = Layer(f.key.layer.0);
        if f.discontinuity && kind == TrackKind::Video {
            self.fwd.publisher_discontinuity(now, peer, layer);
        }
        let m = MediaIn {
            kind,
            layer,
            keyframe: f.keyframe,
            time: MediaTime::new(f.time, params.spec().clock_rate),
            network_time: now,
            params,
            data: f.data.into(),
        };
        self.route_media(now, peer, m);
        if kind == TrackKind::Video && f.keyframe {
            self.update_remote_pulls(now);
        }
    }

    /// Keeps each remote viewer's trunk subscription to the layers it needs, so only layers
    /// someone here watches cross the trunks.
    ///
    /// A viewer needs the layer it receives and the one its preference chooses now (`auto`: by
    /// its bandwidth estimate). A needed layer not pulled is added at once (the forwarding core
    /// keeps sending the current layer until the new one's keyframe arrives); a pulled layer no
    /// longer needed is dropped after [`NARROW_AFTER`]. A new viewer pulls every layer until
    /// every layer the stream has sent is sized, so preferences can be judged. The layers of a
    /// remote stream no local viewer pulls are put on standby in the forwarding core: they stay
    /// choosable (with their last size and bitrate) although silent, so a preference or
    /// estimate that moves to one makes this node pull it.
    pub(crate) fn update_remote_pulls(&mut self, now: Instant) {
        let mut union: HashMap<trunk::StreamAddr, u8> = HashMap::new();
        for (id, p) in &mut self.peers {
            let Some(addr) = p.remote.as_ref() else {
                continue;
            };
            let Some(r) = self.remote.get(addr) else {
                *union.entry(addr.clone()).or_default() |= p.pulled;
                continue;
            };
            let known = self.fwd.known_layers(&r.name);
            let sized = !known.is_empty() && known.iter().all(|l| l.dims.is_some());
            let current = self.fwd.viewer_layer(*id);
            // The current layer gone quiet (its origin may have paused it): the next lower one
            // is pulled too, ready when the forwarding core gives the quiet one up.
            let fallback = current.filter(|l| {
                self.fwd
                    .layer_silence(&r.name, *l, now)
                    .is_some_and(|s| s >= REMOTE_FALLBACK_AFTER)
            });
            let fallback = fallback.and_then(|l| {
                let ranked = self.fwd.layers(&r.name);
                let pos = ranked.iter().position(|x| x.layer == l)?;
                pos.checked_sub(1).map(|below| ranked[below].layer)
            });
            let mut needed = 0u8;
            for l in [current, self.fwd.viewer_choice(*id), fallback]
                .into_iter()
                .flatten()
            {
                needed |= 1u8.checked_shl(u32::from(l.0)).unwrap_or(0);
            }
            if needed == 0 || !sized {
                needed = ALL_LAYERS;
            }
            let changed = if needed & !p.pulled != 0 {
                p.pulled |= needed;
                p.surplus_since = (p.pulled != needed).then_some(now);
                true
            } else if needed == p.pulled {
                p.surplus_since = None;
                false
            } else {
                let since = *p.surplus_since.get_or_insert(now);
                let drop = now.saturating_duration_since(since) >= NARROW_AFTER;
                if drop {
                    p.pulled = needed;
                    p.surplus_since = None;
                }
                drop
            };
            if changed {
                self.trunk_out.push_back(TrunkRequest::Subscribe {
                    viewer: trunk::ViewerId(id.0),
                    addr: addr.clone(),
                    layers: trunk::LayerSet(p.pulled),
                });
            }
            *union.entry(addr.clone()).or_default() |= p.pulled;
        }
        // Only layers the origin announces as live go on standby (a layer its publisher paused
        // would otherwise be chosen, pulled and found silent over and over).
        for (addr, r) in &self.remote {
            let pulled = union.get(addr).copied().unwrap_or(0);
            let announced = self
                .remote_live
                .get(addr)
                .copied()
                .filter(|m| *m != 0)
                .unwrap_or(ALL_LAYERS);
            let bit = |l: &Layer| 1u8.checked_shl(u32::from(l.0)).unwrap_or(0);
            let standby: Vec<Layer> = self
                .fwd
                .known_layers(&r.name)
                .iter()
                .map(|l| l.layer)
                .filter(|l| pulled & bit(l) == 0 && announced & bit(l) != 0)
                .collect();
            self.fwd.set_standby(now, &r.name, &standby);
        }
    }

    /// Accepts a WHEP offer for the remote stream `addr`, pulled since [`Sfu::watch_remote`]
    /// returned `peer_id`; the answer offers the codecs its origin announced. The trunk
    /// subscription ends with the session.
    pub fn view_remote(
        &mut self,
        now: Instant,
        peer_id: PeerId,
        addr: &trunk::StreamAddr,
        offer: &str,
        pref: LayerPref,
    ) -> Result<SessionAnswer, SfuError> {
        let r = self.remote.get(addr).ok_or(SfuError::NotLive)?;
        let (name, video, audio) = (
            r.name.clone(),
            r.video.into_iter().collect(),
            r.audio.into_iter().collect(),
        );
        self.view_with(
            now,
            &name,
            peer_id,
            video,
            audio,
            offer,
            pref,
            Some(addr.clone()),
        )
    }
}
