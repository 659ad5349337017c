//! Sessions: a WHIP publisher or WHEP viewer accepted from its SDP offer, its str0m `Rtc`
//! driven until it has nothing more to say ([`drain_peer`]), and its end.
//!
//! A session is ICE-lite with one host candidate and presents the engine's one DTLS
//! certificate. Its str0m events become the engine's: media for the fan-out, keyframe requests
//! and bandwidth estimates for the forwarding core, NACK statistics for the counters. What a
//! session's answer offers is decided in [`crate::sdp`]; demultiplexing datagrams to sessions
//! and their timers is the engine's ([`Sfu::handle_receive`], [`Sfu::handle_timeout`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ids::{StreamName, Subject};
use rand::RngCore;
use str0m::bwe::BweKind;
use str0m::change::SdpOffer;
use str0m::format::PayloadParams;
use str0m::media::{MediaData, MediaKind, Mid};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Output, Rtc, RtcConfig};
use tracing::{debug, warn};

use crate::forward::{Forwarder, LayerPref, PeerId, PublishConflict, ViewError};
use crate::remote::ALL_LAYERS;
#[cfg(doc)]
use crate::remote::NARROW_AFTER;
use crate::sdp::{first_mids, negotiated, offer_prefers_h264, publisher_codecs, viewer_codecs};
use crate::simulcast::{PublisherLayers, TimestampMap};
use crate::{Counters, Event, Sfu, SfuError, Transmit, TrunkRequest};

/// The SDP answer for a new session and the id under which it can be ended.
#[derive(Debug, Clone)]
pub struct SessionAnswer {
    /// Opaque session id (128 random bits, hex): the last segment of the `Location` URL.
    pub session_id: String,
    /// The SDP answer.
    pub sdp: String,
}

/// What a session does, and for which stream.
#[derive(Debug)]
pub(crate) enum PeerRole {
    Publisher { stream: StreamName },
    Viewer { stream: StreamName },
}

/// One WebRTC session: a publisher or a viewer, its str0m `Rtc` and what the engine keeps
/// beside it.
pub(crate) struct Peer {
    pub(crate) session_id: String,
    pub(crate) rtc: Rtc,
    pub(crate) role: PeerRole,
    pub(crate) video_mid: Option<Mid>,
    pub(crate) audio_mid: Option<Mid>,
    pub(crate) next_timeout: Instant,
    pub(crate) connected: bool,
    pub(crate) created: Instant,
    /// When a datagram of this session last arrived.
    pub(crate) last_rx: Instant,
    /// Publisher: its video layers (RIDs) and the last frame forwarded from each.
    pub(crate) layers: PublisherLayers,
    /// Viewer: how the video timestamps it is sent map from the publisher's layers.
    pub(crate) video_ts: TimestampMap,
    /// Viewer: the minimum send rate last given to its bandwidth estimator (bits per second).
    pub(crate) probe_floor: u64,
    /// Last cumulative NACK count seen per mid, to turn str0m's stats into counters.
    pub(crate) egress_seen: HashMap<Mid, u64>,
    pub(crate) ingress_seen: HashMap<Mid, u64>,
    /// Viewer of a remote stream: its trunk subscription, ended with the session.
    pub(crate) remote: Option<trunk::StreamAddr>,
    /// Viewer of a remote stream: the layers its trunk subscription pulls (bit n: layer n;
    /// [`ALL_LAYERS`] at first), and since when it pulls more than it needs (dropped after
    /// [`NARROW_AFTER`]).
    pub(crate) pulled: u8,
    pub(crate) surplus_since: Option<Instant>,
}

impl Sfu {
    pub(crate) fn base_config(&mut self) -> RtcConfig {
        if self.dtls_cert.is_none() {
            self.dtls_cert = str0m::crypto::CryptoProvider::get_default()
                .and_then(|p| p.dtls_provider.generate_certificate());
        }
        let cfg = match &self.dtls_cert {
            Some(cert) => RtcConfig::new().set_dtls_cert(cert.clone()),
            None => RtcConfig::new(),
        };
        cfg.set_ice_lite(true)
            .set_send_buffer_video(self.config.send_buffer_video)
            .set_send_buffer_audio(self.config.send_buffer_audio)
            .set_stats_interval(Some(Duration::from_secs(1)))
    }

    pub(crate) fn new_session_id() -> String {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        hex::encode(b)
    }

    /// Accepts a WHIP offer: `owner` publishes `stream`.
    ///
    /// The node receives H.264 (packetization-mode 1: constrained baseline, baseline, main), VP8
    /// and Opus, with NACK/RTX. A live stream of the same owner is taken over (the old session is
    /// closed); one of another owner is a [`SfuError::Conflict`].
    pub fn publish(
        &mut self,
        now: Instant,
        stream: StreamName,
        owner: Subject,
        offer: &str,
    ) -> Result<SessionAnswer, SfuError> {
        self.fwd
            .check_publish(&stream, &owner)
            .map_err(|PublishConflict { holder }| SfuError::Conflict { holder })?;

        // Our answer lists codecs in our configuration's order and the publisher sends the first,
        // so configure them in the order the offer prefers them.
        let h264_first = offer_prefers_h264(offer);
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let cfg = publisher_codecs(self.base_config().clear_codecs(), h264_first);
        let peer_id = self.alloc_peer_id();
        let (mut peer, sdp) = self.new_peer(
            now,
            cfg,
            offer,
            PeerRole::Publisher {
                stream: stream.clone(),
            },
        )?;
        self.drain_events_only(peer_id, &mut peer, now);

        let video = peer
            .video_mid
            .and_then(|m| negotiated(&peer.rtc, m).into_iter().next());
        let audio = peer
            .audio_mid
            .is_some_and(|m| !negotiated(&peer.rtc, m).is_empty());
        if video.is_none() && !audio {
            return Err(SfuError::NoUsableMedia(
                "offer has no media the node can receive (H.264 packetization-mode=1, VP8, Opus)"
                    .into(),
            ));
        }
        let video_codec = video.map(|p| p.spec().codec.to_string().to_uppercase());
        let session_id = peer.session_id.clone();
        self.fwd
            .add_publisher(now, stream.clone(), owner.clone(), peer_id)
            .map_err(|PublishConflict { holder }| SfuError::Conflict { holder })?;
        self.sessions.insert(session_id.clone(), peer_id);
        self.peers.insert(peer_id, peer);
        self.counters.publishers += 1;
        self.events.push_back(Event::StreamUp {
            viewers: self.fwd.viewer_count(&stream),
            name: stream,
            owner,
            video_codec,
            audio,
        });
        self.after_input(now);
        Ok(SessionAnswer { session_id, sdp })
    }

    /// Accepts a WHEP offer: a viewer of the live `stream`.
    ///
    /// The answer offers exactly the codecs the publisher negotiated, so a viewer whose offer
    /// lists VP8 first still gets the publisher's H.264 (no transcoding happens here).
    pub fn view(
        &mut self,
        now: Instant,
        stream: &StreamName,
        offer: &str,
        pref: LayerPref,
    ) -> Result<SessionAnswer, SfuError> {
        let publisher = self.fwd.publisher_of(stream).ok_or(SfuError::NotLive)?;
        let (video_params, audio_params) = {
            let p = self.peers.get(&publisher).ok_or(SfuError::NotLive)?;
            (
                p.video_mid
                    .map(|m| negotiated(&p.rtc, m))
                    .unwrap_or_default(),
                p.audio_mid
                    .map(|m| negotiated(&p.rtc, m))
                    .unwrap_or_default(),
            )
        };
        let peer_id = self.alloc_peer_id();
        self.view_with(
            now,
            stream,
            peer_id,
            video_params,
            audio_params,
            offer,
            pref,
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn view_with(
        &mut self,
        now: Instant,
        stream: &StreamName,
        peer_id: PeerId,
        video_params: Vec<PayloadParams>,
        audio_params: Vec<PayloadParams>,
        offer: &str,
        pref: LayerPref,
        remote: Option<trunk::StreamAddr>,
    ) -> Result<SessionAnswer, SfuError> {
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let cfg = self.base_config().clear_codecs();
        let cfg = self.viewer_bwe(cfg);
        let cfg = viewer_codecs(cfg, video_params.iter().chain(audio_params.iter()));
        let (mut peer, sdp) = self.new_peer(
            now,
            cfg,
            offer,
            PeerRole::Viewer {
                stream: stream.clone(),
            },
        )?;
        peer.remote = remote;
        self.start_viewer_bwe(&mut peer);
        self.drain_events_only(peer_id, &mut peer, now);
        let gets_video = peer
            .video_mid
            .is_some_and(|m| !negotiated(&peer.rtc, m).is_empty());
        let gets_audio = peer
            .audio_mid
            .is_some_and(|m| !negotiated(&peer.rtc, m).is_empty());
        if !gets_video && !gets_audio {
            let have: Vec<String> = video_params
                .iter()
                .chain(audio_params.iter())
                .map(|p| p.spec().codec.to_string())
                .collect();
            return Err(SfuError::NoUsableMedia(format!(
                "offer has no recvonly media in a codec the publisher sends ({})",
                have.join(", ")
            )));
        }
        self.fwd
            .add_viewer(now, stream, peer_id, pref)
            .map_err(|e| match e {
                ViewError::NotLive | ViewError::DuplicatePeer => SfuError::NotLive,
            })?;
        let session_id = peer.session_id.clone();
        self.sessions.insert(session_id.clone(), peer_id);
        self.peers.insert(peer_id, peer);
        self.counters.viewers += 1;
        self.events.push_back(Event::Viewers {
            name: stream.clone(),
            count: self.fwd.viewer_count(stream),
        });
        self.after_input(now);
        Ok(SessionAnswer { session_id, sdp })
    }

    /// Ends a session by the id returned in its [`SessionAnswer`].
    pub fn close_session(&mut self, now: Instant, session_id: &str) -> Result<(), SfuError> {
        let peer = *self.sessions.get(session_id).ok_or(SfuError::NoSession)?;
        self.close_peer(peer, "ended by client");
        self.after_input(now);
        Ok(())
    }

    /// Whether the session `session_id` still exists (not ended by its client, not timed out).
    pub fn has_session(&self, session_id: &str) -> bool {
        self.sessions.contains_key(session_id)
    }

    pub(crate) fn alloc_peer_id(&mut self) -> PeerId {
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        id
    }

    pub(crate) fn new_peer(
        &mut self,
        now: Instant,
        cfg: RtcConfig,
        offer: SdpOffer,
        role: PeerRole,
    ) -> Result<(Peer, String), SfuError> {
        let mut rtc = cfg.build(now);
        let candidate = Candidate::host(self.local, "udp")
            .map_err(|e| SfuError::BadSdp(format!("local candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let sdp = answer.to_sdp_string();
        let (video_mid, audio_mid) = first_mids(&sdp);
        let peer = Peer {
            session_id: Self::new_session_id(),
            rtc,
            role,
            video_mid,
            audio_mid,
            next_timeout: now,
            connected: false,
            created: now,
            last_rx: now,
            layers: PublisherLayers::default(),
            video_ts: TimestampMap::default(),
            probe_floor: 0,
            egress_seen: HashMap::new(),
            ingress_seen: HashMap::new(),
            remote: None,
            pulled: ALL_LAYERS,
            surplus_since: Some(now),
        };
        Ok((peer, sdp))
    }

    /// Drains a peer that is not yet in the table (right after accepting its offer): transmits
    /// are queued, media events recorded; there can be no media yet.
    pub(crate) fn drain_events_only(&mut self, id: PeerId, peer: &mut Peer, now: Instant) {
        drain_peer(
            id,
            peer,
            now,
            &mut self.transmits,
            &mut self.inbox,
            &mut self.fwd,
            &mut self.counters,
        );
    }

    pub(crate) fn close_peer(&mut self, id: PeerId, why: &str) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        debug!(%id, why, "session closed");
        peer.rtc.disconnect();
        self.sessions.remove(&peer.session_id);
        self.by_addr.retain(|_, p| *p != id);
        let was_live_publisher = matches!(&peer.role, PeerRole::Publisher { stream } if self.fwd.publisher_of(stream) == Some(id));
        self.fwd.remove_peer(id);
        match &peer.role {
            PeerRole::Publisher { stream } => {
                self.counters.publishers = self.counters.publishers.saturating_sub(1);
                if was_live_publisher {
                    self.events.push_back(Event::StreamDown {
                        name: stream.clone(),
                    });
                }
            }
            PeerRole::Viewer { stream } => {
                self.counters.viewers = self.counters.viewers.saturating_sub(1);
                self.events.push_back(Event::Viewers {
                    name: stream.clone(),
                    count: self.fwd.viewer_count(stream),
                });
            }
        }
        if let Some(addr) = peer.remote.take() {
            self.trunk_out.push_back(TrunkRequest::Unsubscribe {
                viewer: trunk::ViewerId(id.0),
                addr,
            });
        }
        if peer.connected {
            self.counters.peers = self.counters.peers.saturating_sub(1);
        }
    }
}

/// Polls one session until it returns a timeout. Returns false when the session died.
pub(crate) fn drain_peer(
    id: PeerId,
    peer: &mut Peer,
    now: Instant,
    transmits: &mut VecDeque<Transmit>,
    inbox: &mut Vec<(PeerId, MediaData)>,
    fwd: &mut Forwarder,
    counters: &mut Counters,
) -> bool {
    loop {
        if !peer.rtc.is_alive() {
            return false;
        }
        let out = match peer.rtc.poll_output() {
            Ok(o) => o,
            Err(e) => {
                warn!(%id, error = %e, "session failed");
                counters.session_errors += 1;
                return false;
            }
        };
        match out {
            Output::Timeout(t) => {
                peer.next_timeout = t.max(now);
                return true;
            }
            Output::Transmit(t) => transmits.push_back(Transmit {
                destination: t.destination,
                contents: t.contents.into(),
            }),
            Output::Event(ev) => match ev {
                RtcEvent::IceConnectionStateChange(state) => match state {
                    IceConnectionState::Connected | IceConnectionState::Completed
                        if !peer.connected =>
                    {
                        peer.connected = true;
                        counters.peers += 1;
                    }
                    // Not fatal: an ICE-lite server loses "consent" when a libnice client's
                    // 25 s keepalive comes after str0m's 15 s window, yet media still flows.
                    // Liveness is judged by traffic instead (`SfuConfig::idle_timeout`).
                    IceConnectionState::Disconnected => {
                        debug!(%id, "ICE consent lapsed; waiting for traffic")
                    }
                    _ => {}
                },
                RtcEvent::MediaAdded(m) => match m.kind {
                    MediaKind::Video if peer.video_mid.is_none() => peer.video_mid = Some(m.mid),
                    MediaKind::Audio if peer.audio_mid.is_none() => peer.audio_mid = Some(m.mid),
                    _ => {}
                },
                RtcEvent::MediaData(data) => {
                    if matches!(peer.role, PeerRole::Publisher { .. }) {
                        inbox.push((id, data));
                    }
                }
                RtcEvent::KeyframeRequest(_) => {
                    counters.keyframe_requests_in += 1;
                    fwd.viewer_keyframe_request(now, id);
                }
                RtcEvent::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                    if matches!(peer.role, PeerRole::Viewer { .. }) {
                        debug!(%id, bps = estimate.as_u64(), "viewer bandwidth estimate");
                        fwd.set_viewer_bandwidth(now, id, estimate.as_u64());
                    }
                }
                RtcEvent::MediaEgressStats(s) => {
                    let seen = peer.egress_seen.entry(s.mid).or_default();
                    counters.nacks_in += s.nacks.saturating_sub(*seen);
                    *seen = s.nacks.max(*seen);
                }
                RtcEvent::MediaIngressStats(s) => {
                    let seen = peer.ingress_seen.entry(s.mid).or_default();
                    counters.nacks_out += s.nacks.saturating_sub(*seen);
                    *seen = s.nacks.max(*seen);
                }
                _ => {}
            },
        }
    }
}
