//! `watch STREAM`: subscribe to a stream over signaling, decode it with GStreamer, and print the
//! frame rate and picture size each second (a drone feed on the tablet, or a check that a stream
//! plays).
//!
//! The receiving peer is the `webrtc` crate's (recvonly video and Opus, NACK and receiver
//! reports from its default interceptors, no mDNS); each received track's RTP goes into its own
//! GStreamer pipeline (`appsrc ! rtpjitterbuffer ! depayloader ! decoder ! appsink`) whose
//! appsink counts decoded frames.
//!
//! Lines: `watching` once the node answered (stream, media id); then one `watch` line per second:
//! `{"kind":"watch","stream","fps","width","height","audio_pps","frames","latency_ms"}`
//! (`audio_pps`: Opus packets decoded in that second; `latency_ms`: the median age of that
//! second's frames by the time code `run --source test` paints into them, see
//! [`crate::media::timecode`], or `null`). At the end a `watch_summary` line:
//! `{"kind":"watch_summary","stream","frames","latency_samples","latency_p50_ms","latency_p95_ms"}`.
//! Ends after `--seconds`, on SIGINT/SIGTERM, or with an error when the peer connection fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::shared::marshal::Marshal;
use serde_json::json;
use signaling::proto::ClientMsg;
use signaling::StreamName;
use tokio::sync::{mpsc, Notify};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

use crate::error::Error;
use crate::office::Target;
use crate::output::Output;
use webrtc_publisher::local_ip_towards;

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// The stream name.
    pub stream: StreamName,
    /// `low`, `mid`, `high` or `auto` (the node's default).
    pub layer: Option<String>,
    /// Highest layer height wanted, rows.
    pub max_height: Option<u32>,
    /// Stop after this long (default: until interrupted).
    pub seconds: Option<u64>,
}

/// Bound on ICE gathering and on the node's answer.
const SETUP: Duration = Duration::from_secs(10);
/// Latency samples of the first seconds are left out of the summary.
const WARM_UP: Duration = Duration::from_millis(2500);
/// A peer connection that does not connect within this is given up.
const CONNECT: Duration = Duration::from_secs(20);

struct Handler {
    gathered: Arc<Notify>,
    states: mpsc::UnboundedSender<RTCPeerConnectionState>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
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

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tracks.send(track);
    }
}

fn codec(
    mime: &str,
    clock_rate: u32,
    channels: u16,
    fmtp: &str,
    pt: u8,
    video: bool,
) -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: if video {
                vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")]
            } else {
                vec![]
            },
        },
        payload_type: pt,
    }
}

/// Decoded-frame counters shared with the appsinks.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    width: AtomicU32,
    height: AtomicU32,
    audio: AtomicU64,
    /// Ages (ms) of this second's time-coded frames.
    ages: std::sync::Mutex<Vec<u64>>,
}

/// Unix milliseconds now.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `q` quantile (0–1) of sorted `v`.
fn quantile(v: &[u64], q: f64) -> Option<u64> {
    (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize])
}

/// A running decode pipeline, stopped on drop.
struct Decoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The decode pipeline for a track of `mime` with payload type `pt`.
fn decoder(mime: &str, pt: u8, counters: Arc<Counters>) -> Result<Decoder, String> {
    let m = mime.to_ascii_lowercase();
    let (caps, tail, audio) = if m == MIME_TYPE_H264.to_ascii_lowercase() {
        (
            "media=video,clock-rate=90000,encoding-name=H264",
            "rtph264depay ! h264parse ! decodebin ! videoconvert ! video/x-raw,format=I420",
            false,
        )
    } else if m == MIME_TYPE_VP8.to_ascii_lowercase() {
        (
            "media=video,clock-rate=90000,encoding-name=VP8",
            "rtpvp8depay ! decodebin ! videoconvert ! video/x-raw,format=I420",
            false,
        )
    } else if m == MIME_TYPE_OPUS.to_ascii_lowercase() {
        (
            "media=audio,clock-rate=48000,encoding-name=OPUS",
            "rtpopusdepay ! opusdec",
            true,
        )
    } else {
        return Err(format!("cannot decode {mime}"));
    };
    let desc = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true caps=\"application/x-rtp,{caps},payload={pt}\" \
         ! rtpjitterbuffer latency=200 ! {tail} ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("{e} ({desc})"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or("no appsrc")?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("no appsink")?;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if audio {
                    counters.audio.fetch_add(1, Ordering::Relaxed);
                    return Ok(gst::FlowSuccess::Ok);
                }
                let now = unix_ms();
                counters.frames.fetch_add(1, Ordering::Relaxed);
                let Some(s) = sample.caps().and_then(|c| c.structure(0)) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height")) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let (w, h) = (w.max(0) as usize, h.max(0) as usize);
                counters.width.store(w as u32, Ordering::Relaxed);
                counters.height.store(h as u32, Ordering::Relaxed);
                // I420 from videoconvert: rows padded to 4 bytes.
                let stride = (w + 3) & !3;
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok()) {
                    if let Some(age) = crate::media::timecode::read(map.as_slice(), w, h, stride)
                        .and_then(|t| crate::media::timecode::age_ms(t, now))
                    {
                        counters
                            .ages
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(age);
                    }
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start the decoder: {e}"))?;
    Ok(Decoder { pipeline, src })
}

/// Feeds a track's RTP into a new decoder until the track ends.
async fn feed(track: Arc<dyn TrackRemote>, counters: Arc<Counters>, out: Output) {
    let first = loop {
        match track.poll().await {
            Some(TrackRemoteEvent::OnRtpPacket(p)) => break p,
            Some(TrackRemoteEvent::OnEnded) | None => return,
            Some(_) => {}
        }
    };
    let mime = match track.codec(first.header.ssrc).await {
        Some(c) => c.mime_type,
        None => match track.kind().await {
            RtpCodecKind::Audio => MIME_TYPE_OPUS.to_owned(),
            _ => MIME_TYPE_H264.to_owned(),
        },
    };
    let decoder = match decoder(&mime, first.header.payload_type, counters) {
        Ok(d) => d,
        Err(e) => {
            out.warning(&format!("{mime} track not decoded: {e}"));
            return;
        }
    };
    let mut next = Some(first);
    loop {
        let packet = match next.take() {
            Some(p) => p,
            None => match track.poll().await {
                Some(TrackRemoteEvent::OnRtpPacket(p)) => p,
                Some(TrackRemoteEvent::OnEnded) | None => return,
                Some(_) => continue,
            },
        };
        let Ok(bytes) = packet.marshal() else {
            continue;
        };
        if decoder
            .src
            .push_buffer(gst::Buffer::from_slice(bytes))
            .is_err()
        {
            return;
        }
    }
}

/// Runs `watch`.
pub async fn watch(target: &Target, out: Output, opts: WatchOptions) -> Result<(), Error> {
    // Installed first, so that a signal during setup ends the command cleanly.
    let signal = |kind| {
        tokio::signal::unix::signal(kind).map_err(|e| Error::Local(format!("signal handler: {e}")))
    };
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
    gst::init().map_err(|e| Error::Local(format!("GStreamer: {e}")))?;
    let (client, _events) = target.connect().await?;
    let ip = local_ip_towards(&target.node)
        .await
        .map_err(|e| Error::Connection(format!("no route to {}: {e}", target.node)))?;

    let mut engine = MediaEngine::default();
    let reg = |engine: &mut MediaEngine, c: RTCRtpCodecParameters, kind| {
        engine
            .register_codec(c, kind)
            .map_err(|e| Error::Local(format!("media engine: {e}")))
    };
    reg(
        &mut engine,
        codec(
            MIME_TYPE_H264,
            90_000,
            0,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            102,
            true,
        ),
        RtpCodecKind::Video,
    )?;
    reg(
        &mut engine,
        codec(MIME_TYPE_VP8, 90_000, 0, "", 96, true),
        RtpCodecKind::Video,
    )?;
    reg(
        &mut engine,
        codec(
            MIME_TYPE_OPUS,
            48_000,
            2,
            "minptime=10;useinbandfec=1",
            111,
            false,
        ),
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)
        .map_err(|e| Error::Local(e.to_string()))?;
    let gathered = Arc::new(Notify::new());
    let (states_tx, mut states) = mpsc::unbounded_channel();
    let (tracks_tx, mut tracks) = mpsc::unbounded_channel();
    let handler = Arc::new(Handler {
        gathered: gathered.clone(),
        states: states_tx,
        tracks: tracks_tx,
    });
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_setting_engine(settings)
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![SocketAddr::new(ip, 0)])
        .build()
        .await
        .map_err(|e| Error::Local(format!("peer connection: {e}")))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            streams: vec![],
            send_encodings: vec![],
        };
        pc.add_transceiver_from_kind(kind, Some(init))
            .await
            .map_err(|e| Error::Local(format!("{kind} transceiver: {e}")))?;
    }
    let offer = pc
        .create_offer(None)
        .await
        .map_err(|e| Error::Local(format!("offer: {e}")))?;
    pc.set_local_description(offer)
        .await
        .map_err(|e| Error::Local(format!("local offer: {e}")))?;
    if tokio::time::timeout(SETUP, gathered.notified())
        .await
        .is_err()
    {
        return Err(Error::Local(format!(
            "ICE gathering did not complete within {SETUP:?}"
        )));
    }
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| Error::Local("no local description".into()))?
        .sdp;
    let msg = ClientMsg::Subscribe {
        id: 0,
        stream: opts.stream.clone(),
        layer: opts.layer.clone(),
        max_height: opts.max_height,
        sdp,
    };
    let data = tokio::time::timeout(SETUP, client.request(msg))
        .await
        .map_err(|_| Error::Connection("no answer to subscribe from the node in time".into()))?
        .map_err(|e| Error::request("subscribe", e))?;
    let (Some(answer), Some(media)) = (data["sdp"].as_str(), data["media"].as_str()) else {
        return Err(Error::Connection(format!(
            "subscribe answered without sdp and media: {data}"
        )));
    };
    let answer = RTCSessionDescription::answer(answer.to_owned())
        .map_err(|e| Error::Connection(format!("answer: {e}")))?;
    pc.set_remote_description(answer)
        .await
        .map_err(|e| Error::Connection(format!("remote answer: {e}")))?;
    out.emit_as(
        &json!({"kind": "watching", "stream": opts.stream, "media": media}),
        || format!("watching {}", opts.stream),
    );

    let counters = Arc::new(Counters::default());
    let mut feeders = Vec::new();
    let started = Instant::now();
    let end = opts.seconds.map(|s| started + Duration::from_secs(s));
    let mut tick = tokio::time::interval_at(
        (started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut connected = false;
    let (mut frames0, mut audio0) = (0, 0);
    let mut all_ages: Vec<u64> = Vec::new();
    let result = loop {
        tokio::select! {
            Some(track) = tracks.recv() => feeders.push(tokio::spawn(feed(track, counters.clone(), out))),
            Some(state) = states.recv() => match state {
                RTCPeerConnectionState::Connected => connected = true,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    break Err(Error::Connection(format!("the media connection to the node {state}")));
                }
                _ => {}
            },
            _ = tick.tick() => {
                if !connected && started.elapsed() > CONNECT {
                    break Err(Error::Connection(format!("the media connection did not come up within {CONNECT:?}")));
                }
                let frames = counters.frames.load(Ordering::Relaxed);
                let audio = counters.audio.load(Ordering::Relaxed);
                let (w, h) = (counters.width.load(Ordering::Relaxed), counters.height.load(Ordering::Relaxed));
                let mut ages = std::mem::take(&mut *counters.ages.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                ages.sort_unstable();
                let latency = quantile(&ages, 0.5);
                // The first seconds hold the frames queued before the first keyframe decoded.
                if started.elapsed() > WARM_UP {
                    all_ages.extend_from_slice(&ages);
                }
                let line = json!({
                    "kind": "watch",
                    "stream": opts.stream,
                    "fps": frames - frames0,
                    "width": w,
                    "height": h,
                    "audio_pps": audio - audio0,
                    "frames": frames,
                    "latency_ms": latency,
                });
                out.emit_as(&line, || {
                    let lat = latency.map(|l| format!(", {l} ms old")).unwrap_or_default();
                    format!("{}: {} fps {w}x{h}{lat}, audio {} packets/s", opts.stream, frames - frames0, audio - audio0)
                });
                (frames0, audio0) = (frames, audio);
                if end.is_some_and(|e| Instant::now() >= e) {
                    break Ok(());
                }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    for f in &feeders {
        f.abort();
    }
    all_ages.sort_unstable();
    let (p50, p95) = (quantile(&all_ages, 0.5), quantile(&all_ages, 0.95));
    let summary = json!({
        "kind": "watch_summary",
        "stream": opts.stream,
        "frames": counters.frames.load(Ordering::Relaxed),
        "latency_samples": all_ages.len(),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
    });
    out.emit_as(&summary, || match (p50, p95) {
        (Some(a), Some(b)) => format!(
            "{}: latency p50 {a} ms, p95 {b} ms over {} frames",
            opts.stream,
            all_ages.len()
        ),
        _ => format!(
            "{}: {} frames",
            opts.stream,
            counters.frames.load(Ordering::Relaxed)
        ),
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(ClientMsg::MediaClose {
            id: 0,
            media: media.to_owned(),
        }),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
    client.close().await;
    result
}
