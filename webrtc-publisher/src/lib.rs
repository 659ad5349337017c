//! `webrtc-publisher`: the one WebRTC publishing peer of yiwang's apps, shared by `field-client`
//! (camera and microphone) and `drone-bridge` (the drone camera, not re-encoded).
//!
//! What lives here: [`Peer`], the `webrtc` crate's async `PeerConnection` over the sans-IO `rtc`
//! core, with sendonly tracks for the encoded video (one layer, or simulcast layers with RIDs)
//! and Opus, a complete offer (the node is ICE-lite and takes no trickled candidates), keyframe
//! requests (PLI/FIR) handed to the caller, and send-side congestion control (Google Congestion
//! Control over transport-wide feedback, with the crate's pacer) whose estimate the caller reads
//! through [`Estimate`]; and [`local_ip_towards`], the address to bind its sockets to.
//!
//! What it must not touch: GStreamer, signaling and the apps' command lines. Samples come in
//! through [`Peer::write_video`] / [`Peer::write_audio`], the SDP goes in and out as strings; the
//! caller negotiates it over its own signaling session.
#![warn(missing_docs)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hw_profiles::Codec;
use rtc::interceptor::{
    Attribute, BandwidthEstimator, EstimatorStats, Gcc, Interceptor, Packet, PacketReport, Slot,
    StreamInfo, TaggedPacket,
};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_congestion_control, configure_simulcast_extension_headers, CongestionFeedback,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::marshal::{Marshal, MarshalSize};
use tokio::sync::{mpsc, Notify};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCSessionDescription, Registry, SettingEngineBuilder,
};

/// The peer connection's state, as [`Peer::offer`]'s receiver reports it.
pub use webrtc::peer_connection::RTCPeerConnectionState;

/// Bound on ICE gathering (host candidates only: milliseconds in practice).
const GATHER: Duration = Duration::from_secs(5);

/// A publishing peer connection.
pub struct Peer {
    pc: Arc<dyn PeerConnection>,
    video: Track,
    audio: Option<Track>,
    pollers: Vec<tokio::task::JoinHandle<()>>,
    estimate: Estimate,
}

/// The congestion controller's current target, bits per second (shared with the estimator inside
/// the interceptor chain, which updates it on every feedback report and timeout).
#[derive(Debug, Clone)]
pub struct Estimate(Arc<AtomicU64>);

impl Estimate {
    /// The current target, bits per second.
    pub fn bps(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Google Congestion Control, publishing its target into an [`Estimate`] after every update.
struct Reporting {
    gcc: Gcc,
    target: Arc<AtomicU64>,
}

impl Reporting {
    fn publish(&self) {
        self.target
            .store(self.gcc.target_bitrate().to_bits(), Ordering::Relaxed);
    }
}

impl BandwidthEstimator for Reporting {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.gcc.on_reports(now, reports);
        self.publish();
    }

    fn target_bitrate(&self) -> f64 {
        self.gcc.target_bitrate()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.gcc.handle_timeout(now);
        self.publish();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.gcc.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.gcc.stats()
    }
}

/// A text header extension: the RTP stream id (RFC 8852) or the media id (RFC 9143) of a
/// simulcast layer's packets.
struct SdesExtension(Bytes);

impl MarshalSize for SdesExtension {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl Marshal for SdesExtension {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let n = self.0.len();
        if buf.len() < n {
            return Err(rtc::shared::error::Error::ErrBufferTooSmall);
        }
        buf[..n].copy_from_slice(&self.0);
        Ok(n)
    }
}

struct Track {
    track: Arc<TrackLocalStaticSample>,
    /// One per layer (full size first), with its RID for simulcast.
    ssrcs: Vec<(u32, Option<String>)>,
    /// Payload type once negotiated.
    pt: Option<u8>,
    sender: Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    transceiver: Arc<dyn webrtc::rtp_transceiver::RtpTransceiver>,
    /// The media id, once the offer is made (simulcast packets carry it with their RID: the SFU
    /// learns their SSRCs from these header extensions).
    mid: Option<String>,
}

impl Track {
    async fn write(&self, layer: usize, data: Bytes, duration: Duration) {
        let Some(pt) = self.pt else { return };
        let Some((ssrc, rid)) = self.ssrcs.get(layer) else {
            return;
        };
        let sample = Sample {
            data,
            duration,
            ..Sample::new(Instant::now())
        };
        let mut writer = self.track.sample_writer(*ssrc, pt);
        if let Some(rid) = rid {
            writer = writer.with_extension(HeaderExtension::Custom {
                uri: rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI.into(),
                extension: Box::new(SdesExtension(Bytes::copy_from_slice(rid.as_bytes()))),
            });
            if let Some(mid) = &self.mid {
                writer = writer.with_extension(HeaderExtension::Custom {
                    uri: rtc::sdp::extmap::SDES_MID_URI.into(),
                    extension: Box::new(SdesExtension(Bytes::copy_from_slice(mid.as_bytes()))),
                });
            }
        }
        if let Err(e) = writer.write_sample(&sample).await {
            tracing::trace!("sample not sent: {e}");
        }
    }
}

struct Handler {
    gathered: Arc<Notify>,
    states: mpsc::UnboundedSender<RTCPeerConnectionState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.states.send(state);
    }
}

fn feedback(typ: &str, parameter: &str) -> RTCPFeedback {
    RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    }
}

/// The video codec as the `rtc` media engine registers it.
fn video_codec(codec: Codec) -> RTCRtpCodecParameters {
    let (mime, fmtp, pt) = match codec {
        Codec::H264 => (
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            102,
        ),
        _ => (MIME_TYPE_VP8, "", 96),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![
                feedback("nack", ""),
                feedback("nack", "pli"),
                feedback("ccm", "fir"),
            ],
        },
        payload_type: pt,
    }
}

fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
    }
}

/// Hands inbound PLI and FIR to the application (marks them [`Attribute::DeliverToApplication`])
/// and drops every other inbound RTCP packet once the interceptors before it have seen it.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let wanted: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if wanted.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(wanted);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// A local track with one encoding per entry of `rids` (`None`: a single, non-simulcast one).
#[allow(clippy::type_complexity)]
fn local_track(
    kind: RtpCodecKind,
    codec: &RTCRtpCodecParameters,
    rids: &[Option<String>],
) -> Result<(Arc<TrackLocalStaticSample>, Vec<(u32, Option<String>)>), String> {
    let ssrcs: Vec<(u32, Option<String>)> = rids
        .iter()
        .map(|r| (rand::random::<u32>(), r.clone()))
        .collect();
    let name = kind.to_string();
    let track = MediaStreamTrack::new(
        "field-client".to_owned(),
        format!("field-client-{name}"),
        format!("field-client {name}"),
        kind,
        ssrcs
            .iter()
            .map(|(ssrc, rid)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(*ssrc),
                    rid: rid.clone().unwrap_or_default(),
                    ..Default::default()
                },
                codec: codec.rtp_codec.clone(),
                ..Default::default()
            })
            .collect(),
    );
    let track = TrackLocalStaticSample::new(Instant::now(), track)
        .map_err(|e| format!("{name} track: {e}"))?;
    Ok((Arc::new(track), ssrcs))
}

/// Congestion control settings for [`Peer::offer`]: where the estimate starts and its bounds,
/// bits per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Initial estimate.
    pub start: f64,
    /// Floor.
    pub min: f64,
    /// Ceiling.
    pub max: f64,
}

impl Peer {
    /// A new peer bound to `bind_ip` (the address this host uses to reach the node), with a video
    /// track in `codec` with one encoding per entry of `rids` (full size first; a single `None`
    /// for one layer, RIDs for simulcast) and, with `audio`, an Opus track; congestion control
    /// within `bounds`. Returns the peer, its complete offer and the receiver of its connection
    /// states.
    pub async fn offer(
        bind_ip: IpAddr,
        codec: Codec,
        rids: &[Option<String>],
        audio: bool,
        bounds: Bounds,
    ) -> Result<
        (
            Peer,
            String,
            mpsc::UnboundedReceiver<RTCPeerConnectionState>,
        ),
        String,
    > {
        if rids.is_empty() {
            return Err("no video layer".to_owned());
        }
        let video_params = video_codec(codec);
        let opus = opus_codec();
        let mut engine = MediaEngine::default();
        engine
            .register_codec(video_params.clone(), RtpCodecKind::Video)
            .map_err(|e| e.to_string())?;
        if audio {
            engine
                .register_codec(opus.clone(), RtpCodecKind::Audio)
                .map_err(|e| e.to_string())?;
        }
        if rids.len() > 1 {
            configure_simulcast_extension_headers(&mut engine).map_err(|e| e.to_string())?;
        }
        let target = Arc::new(AtomicU64::new(bounds.start.to_bits()));
        let estimator = Reporting {
            gcc: Gcc::new(bounds.start, bounds.min, bounds.max),
            target: target.clone(),
        };
        let registry = configure_congestion_control(
            Registry::new(),
            estimator,
            CongestionFeedback::Twcc,
            &mut engine,
        )
        .map_err(|e| format!("congestion control: {e}"))?;
        let registry =
            register_default_interceptors(registry, &mut engine).map_err(|e| e.to_string())?;
        // Last, so every interceptor has seen the inbound RTCP before it is narrowed down.
        let registry = registry.with(Slot::from(14_000), KeyframeRequests::default());

        let gathered = Arc::new(Notify::new());
        let (states_tx, states) = mpsc::unbounded_channel();
        let handler = Arc::new(Handler {
            gathered: gathered.clone(),
            states: states_tx,
        });
        // No mDNS: the node is ICE-lite with plain IP candidates, and mDNS would bind the fixed
        // port 5353 and join a multicast group (which fails with ENODEV on a network without a
        // multicast route, such as a tablet's link with no default route).
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![std::net::SocketAddr::new(bind_ip, 0)])
            .build()
            .await
            .map_err(|e| format!("peer connection: {e}"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let sendonly = || RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![],
            send_encodings: vec![],
        };
        let add = |kind, params: RTCRtpCodecParameters, rids: Vec<Option<String>>| {
            let pc = pc.clone();
            async move {
                let (track, ssrcs) = local_track(kind, &params, &rids)?;
                let t = pc
                    .add_transceiver_from_track(
                        track.clone() as Arc<dyn TrackLocal>,
                        Some(sendonly()),
                    )
                    .await
                    .map_err(|e| format!("{kind} transceiver: {e}"))?;
                let sender = t
                    .sender()
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{kind} transceiver without sender"))?;
                Ok::<_, String>(Track {
                    track,
                    ssrcs,
                    pt: None,
                    sender,
                    transceiver: t,
                    mid: None,
                })
            }
        };
        let video = add(RtpCodecKind::Video, video_params, rids.to_vec()).await?;
        let audio = if audio {
            Some(add(RtpCodecKind::Audio, opus, vec![None]).await?)
        } else {
            None
        };

        let offer = pc
            .create_offer(None)
            .await
            .map_err(|e| format!("offer: {e}"))?;
        pc.set_local_description(offer)
            .await
            .map_err(|e| format!("local offer: {e}"))?;
        if tokio::time::timeout(GATHER, gathered.notified())
            .await
            .is_err()
        {
            return Err(format!("ICE gathering did not complete within {GATHER:?}"));
        }
        let mut video = video;
        video.mid = video.transceiver.mid().await.ok().flatten();
        let sdp = pc
            .local_description()
            .await
            .ok_or("no local description after gathering")?
            .sdp;
        Ok((
            Peer {
                pc,
                video,
                audio,
                pollers: vec![],
                estimate: Estimate(target),
            },
            sdp,
            states,
        ))
    }

    /// Applies the node's answer; keyframe requests for the video then call `on_keyframe_request`.
    pub async fn answer(
        &mut self,
        sdp: String,
        on_keyframe_request: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<(), String> {
        let answer = RTCSessionDescription::answer(sdp).map_err(|e| format!("answer: {e}"))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|e| format!("remote answer: {e}"))?;
        for t in std::iter::once(&mut self.video).chain(self.audio.as_mut()) {
            let params = t.sender.get_parameters().await.map_err(|e| e.to_string())?;
            t.pt = params.rtp_parameters.codecs.first().map(|c| c.payload_type);
            if t.pt.is_none() {
                return Err("the answer accepted no codec of ours".to_owned());
            }
        }
        let track = self.video.track.clone();
        self.pollers.push(tokio::spawn(async move {
            loop {
                match track.poll().await {
                    Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                        if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                            tracing::debug!("keyframe requested by the node");
                            on_keyframe_request();
                        }
                    }
                    Some(_) => {}
                    // Not bound yet (or any longer): look again shortly; the task ends with the peer.
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
        Ok(())
    }

    /// Sends one encoded video frame of layer `layer` (0 = full size) lasting `duration`.
    pub async fn write_video(&self, layer: usize, data: Bytes, duration: Duration) {
        self.video.write(layer, data, duration).await;
    }

    /// Sends one Opus packet lasting `duration` (dropped without an audio track).
    pub async fn write_audio(&self, data: Bytes, duration: Duration) {
        if let Some(a) = &self.audio {
            a.write(0, data, duration).await;
        }
    }

    /// The congestion controller's estimate.
    pub fn estimate(&self) -> Estimate {
        self.estimate.clone()
    }

    /// Closes the peer connection.
    pub async fn close(self) {
        for p in &self.pollers {
            p.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pc.close()).await;
    }
}

/// The local address to bind the peer's sockets to: the one this host uses to reach `node`
/// (loopback for a loopback node).
pub async fn local_ip_towards(node: &str) -> std::io::Result<IpAddr> {
    let addr = tokio::net::lookup_host(node)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{node} resolves to no address")))?;
    if addr.ip().is_loopback() {
        return Ok(addr.ip());
    }
    let any: IpAddr = if addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let probe = tokio::net::UdpSocket::bind((any, 0)).await?;
    probe.connect(addr).await?;
    Ok(probe.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loopback_node_is_reached_from_loopback() {
        assert_eq!(
            local_ip_towards("127.0.0.1:4433").await.unwrap(),
            IpAddr::from(Ipv4Addr::LOCALHOST)
        );
        assert!(local_ip_towards("no-such-host.invalid:4433").await.is_err());
    }
}
