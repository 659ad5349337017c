//! One WebRTC publishing peer (the `webrtc` crate's async `PeerConnection` over the sans-IO
//! `rtc` core): sendonly tracks for the encoded video and Opus, a complete offer (the node is
//! ICE-lite and takes no trickled candidates), and keyframe requests (PLI/FIR) handed to the
//! caller.
//!
//! It knows nothing of GStreamer or signaling: samples come in through [`Peer::write_video`] /
//! [`Peer::write_audio`], the SDP goes out as a string.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hw_profiles::Codec;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, Notify};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry,
};

/// Bound on ICE gathering (host candidates only: milliseconds in practice).
const GATHER: Duration = Duration::from_secs(5);

/// A publishing peer connection.
pub struct Peer {
    pc: Arc<dyn PeerConnection>,
    video: Track,
    audio: Option<Track>,
    pollers: Vec<tokio::task::JoinHandle<()>>,
}

struct Track {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    /// Payload type once negotiated.
    pt: Option<u8>,
    sender: Arc<dyn webrtc::rtp_transceiver::RtpSender>,
}

impl Track {
    async fn write(&self, data: Bytes, duration: Duration) {
        let Some(pt) = self.pt else { return };
        let sample = Sample { data, duration, ..Sample::new(Instant::now()) };
        if let Err(e) = self.track.sample_writer(self.ssrc, pt).write_sample(&sample).await {
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
    RTCPFeedback { typ: typ.to_owned(), parameter: parameter.to_owned() }
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
            rtcp_feedback: vec![feedback("nack", ""), feedback("nack", "pli"), feedback("ccm", "fir")],
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
            let wanted: Vec<Box<dyn rtc::rtcp::Packet>> =
                packets.iter().filter(|p| is_keyframe_request(p.as_ref())).cloned().collect();
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

fn local_track(kind: RtpCodecKind, codec: &RTCRtpCodecParameters) -> Result<(Arc<TrackLocalStaticSample>, u32), String> {
    let ssrc = rand::random::<u32>();
    let name = kind.to_string();
    let track = MediaStreamTrack::new(
        "field-client".to_owned(),
        format!("field-client-{name}"),
        format!("field-client {name}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: codec.rtp_codec.clone(),
            ..Default::default()
        }],
    );
    let track = TrackLocalStaticSample::new(Instant::now(), track).map_err(|e| format!("{name} track: {e}"))?;
    Ok((Arc::new(track), ssrc))
}

impl Peer {
    /// A new peer bound to `bind_ip` (the address this host uses to reach the node), with a video
    /// track in `codec` and, with `audio`, an Opus track. Returns the peer, its complete offer and
    /// the receiver of its connection states.
    pub async fn offer(
        bind_ip: IpAddr,
        codec: Codec,
        audio: bool,
    ) -> Result<(Peer, String, mpsc::UnboundedReceiver<RTCPeerConnectionState>), String> {
        let video_params = video_codec(codec);
        let opus = opus_codec();
        let mut engine = MediaEngine::default();
        engine.register_codec(video_params.clone(), RtpCodecKind::Video).map_err(|e| e.to_string())?;
        if audio {
            engine.register_codec(opus.clone(), RtpCodecKind::Audio).map_err(|e| e.to_string())?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut engine).map_err(|e| e.to_string())?;
        // Last, so every interceptor has seen the inbound RTCP before it is narrowed down.
        let registry = registry.with(Slot::from(14_000), KeyframeRequests::default());

        let gathered = Arc::new(Notify::new());
        let (states_tx, states) = mpsc::unbounded_channel();
        let handler = Arc::new(Handler { gathered: gathered.clone(), states: states_tx });
        let pc = PeerConnectionBuilder::new()
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
        let add = |kind, params: RTCRtpCodecParameters| {
            let pc = pc.clone();
            async move {
                let (track, ssrc) = local_track(kind, &params)?;
                let t = pc
                    .add_transceiver_from_track(track.clone() as Arc<dyn TrackLocal>, Some(sendonly()))
                    .await
                    .map_err(|e| format!("{kind} transceiver: {e}"))?;
                let sender = t
                    .sender()
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{kind} transceiver without sender"))?;
                Ok::<_, String>(Track { track, ssrc, pt: None, sender })
            }
        };
        let video = add(RtpCodecKind::Video, video_params).await?;
        let audio = if audio { Some(add(RtpCodecKind::Audio, opus).await?) } else { None };

        let offer = pc.create_offer(None).await.map_err(|e| format!("offer: {e}"))?;
        pc.set_local_description(offer).await.map_err(|e| format!("local offer: {e}"))?;
        if tokio::time::timeout(GATHER, gathered.notified()).await.is_err() {
            return Err(format!("ICE gathering did not complete within {GATHER:?}"));
        }
        let sdp = pc
            .local_description()
            .await
            .ok_or("no local description after gathering")?
            .sdp;
        Ok((Peer { pc, video, audio, pollers: vec![] }, sdp, states))
    }

    /// Applies the node's answer; keyframe requests for the video then call `on_keyframe_request`.
    pub async fn answer(&mut self, sdp: String, on_keyframe_request: Arc<dyn Fn() + Send + Sync>) -> Result<(), String> {
        let answer = RTCSessionDescription::answer(sdp).map_err(|e| format!("answer: {e}"))?;
        self.pc.set_remote_description(answer).await.map_err(|e| format!("remote answer: {e}"))?;
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

    /// Sends one encoded video frame lasting `duration`.
    pub async fn write_video(&self, data: Bytes, duration: Duration) {
        self.video.write(data, duration).await;
    }

    /// Sends one Opus packet lasting `duration` (dropped without an audio track).
    pub async fn write_audio(&self, data: Bytes, duration: Duration) {
        if let Some(a) = &self.audio {
            a.write(data, duration).await;
        }
    }

    /// Closes the peer connection.
    pub async fn close(self) {
        for p in &self.pollers {
            p.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pc.close()).await;
    }
}
