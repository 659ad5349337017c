//! [`WhipPublisher`]: a live test pattern (plus an optional sine tone) sent over WHIP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_webrtc as gst_webrtc;

use super::core::{self, Peer};
use super::http;

/// Video codec of a [`WhipPublisher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoCodec {
    /// x264enc, constrained baseline, payload type 96.
    #[default]
    H264,
    /// vp8enc (realtime deadline), payload type 96.
    Vp8,
}

impl std::str::FromStr for VideoCodec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "h264" | "avc" => Ok(VideoCodec::H264),
            "vp8" => Ok(VideoCodec::Vp8),
            _ => Err(anyhow!("unknown codec {s:?} (h264 or vp8)")),
        }
    }
}

/// What a [`WhipPublisher`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    pub codec: VideoCodec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Also send an Opus sine tone.
    pub audio: bool,
    pub bitrate_kbps: u32,
    /// Send through this address (an impairment relay in front of the node's media port).
    pub via: Option<std::net::SocketAddr>,
}

impl Default for PublishOptions {
    /// H.264 640×480 at 30 fps, with audio, 1000 kbit/s.
    fn default() -> Self {
        PublishOptions {
            codec: VideoCodec::H264,
            width: 640,
            height: 480,
            fps: 30,
            audio: true,
            bitrate_kbps: 1000,
            via: None,
        }
    }
}

impl PublishOptions {
    /// The `gst-launch` description of the publishing pipeline.
    pub fn pipeline_description(&self) -> String {
        let PublishOptions {
            width,
            height,
            fps,
            bitrate_kbps,
            ..
        } = *self;
        let key_int = (fps * 2).max(1);
        let enc = match self.codec {
            VideoCodec::H264 => format!(
                "x264enc name=venc tune=zerolatency speed-preset=ultrafast key-int-max={key_int} bitrate={bitrate_kbps} \
                 ! video/x-h264,profile=constrained-baseline \
                 ! rtph264pay config-interval=-1 aggregate-mode=zero-latency \
                 ! application/x-rtp,media=video,encoding-name=H264,payload=96"
            ),
            VideoCodec::Vp8 => format!(
                "vp8enc name=venc deadline=1 keyframe-max-dist={key_int} target-bitrate={} \
                 ! rtpvp8pay ! application/x-rtp,media=video,encoding-name=VP8,payload=96",
                u64::from(bitrate_kbps) * 1000
            ),
        };
        let mut d = format!(
            "webrtcbin name=webrtc \
             videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 \
             ! {enc} ! webrtc."
        );
        if self.audio {
            d.push_str(
                " audiotestsrc is-live=true wave=sine volume=0.2 ! audioconvert ! audioresample ! opusenc \
                 ! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! webrtc.",
            );
        }
        d
    }
}

/// A WHIP client publishing a test pattern. See [`super`] for the network details.
pub struct WhipPublisher {
    peer: Peer,
    frames: Arc<AtomicU64>,
}

impl WhipPublisher {
    /// Builds the pipeline, offers to `{base_url}/whip/{stream}` and applies the answer.
    ///
    /// An empty `token` sends no `Authorization`. A non-`201` answer is a
    /// [`WhipError::Http`](super::WhipError) (see [`super::http_status`]).
    pub async fn start(
        base_url: &str,
        stream: &str,
        token: &str,
        opts: PublishOptions,
    ) -> anyhow::Result<WhipPublisher> {
        let endpoint = http::endpoint_url(base_url, "whip", stream)?;
        let mut p = Self::prepare(&endpoint, token, &opts)?;
        if let Err(e) = p.peer.negotiate(&endpoint).await {
            let _ = p.peer.stop().await;
            return Err(e.context(format!("publishing to {endpoint}")));
        }
        tracing::info!(%endpoint, location = ?p.location(), "publishing");
        Ok(p)
    }

    /// Like [`start`](Self::start), but the offer/answer exchange is `exchange` (for example a
    /// `publish` request over signaling) instead of a WHIP POST. `base_url` is the node's
    /// HTTP base URL, used only to pick local addresses (loopback).
    pub async fn start_with<F, Fut>(
        base_url: &str,
        opts: PublishOptions,
        exchange: F,
    ) -> anyhow::Result<WhipPublisher>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<String>>,
    {
        let endpoint = reqwest::Url::parse(base_url)?;
        let mut p = Self::prepare(&endpoint, "", &opts)?;
        if let Err(e) = p.peer.negotiate_with(exchange).await {
            let _ = p.peer.stop().await;
            return Err(e.context("publishing over signaling"));
        }
        Ok(p)
    }

    /// Pipeline built and PLAYING (encoding, not yet connected).
    pub(crate) fn prepare(
        endpoint: &reqwest::Url,
        token: &str,
        opts: &PublishOptions,
    ) -> anyhow::Result<WhipPublisher> {
        super::init()?;
        let desc = opts.pipeline_description();
        let pipeline = gst::parse::launch(&desc)
            .with_context(|| format!("building pipeline {desc:?}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("not a pipeline"))?;
        let mut peer = Peer::new(pipeline, endpoint, token)?;
        peer.via = opts.via;
        core::set_all_directions(
            &peer.webrtc,
            gst_webrtc::WebRTCRTPTransceiverDirection::Sendonly,
        );

        peer.use_ecdsa_certificate()?;
        let frames = Arc::new(AtomicU64::new(0));
        let venc = peer
            .pipeline
            .by_name("venc")
            .ok_or_else(|| anyhow!("no encoder"))?;
        let pad = venc
            .static_pad("src")
            .ok_or_else(|| anyhow!("encoder without src pad"))?;
        let f = frames.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            f.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
        peer.play()?;
        Ok(WhipPublisher { peer, frames })
    }

    #[cfg(test)]
    pub(crate) async fn offer(&self) -> anyhow::Result<String> {
        self.peer.local_offer().await
    }

    /// Encoded video frames produced so far (counted at the encoder's output).
    pub fn frames_sent(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// The `Location` the node returned (relative, e.g. `/session/{id}`).
    pub fn location(&self) -> Option<&str> {
        self.peer.location()
    }

    /// The first pipeline error posted on the bus, if any.
    pub fn error(&self) -> Option<String> {
        self.peer.error()
    }

    /// webrtcbin's ICE connection state.
    pub fn ice_connection_state(&self) -> gst_webrtc::WebRTCICEConnectionState {
        self.peer.webrtc.property("ice-connection-state")
    }

    /// webrtcbin's peer connection state (`Connected` once DTLS completed).
    pub fn connection_state(&self) -> gst_webrtc::WebRTCPeerConnectionState {
        self.peer.webrtc.property("connection-state")
    }

    /// Waits until ICE and DTLS completed (webrtcbin's connection state is `Connected`).
    pub async fn wait_connected(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        self.peer.wait_connected(timeout).await
    }

    /// `DELETE`s the session and stops the pipeline (also done, without `DELETE`, on drop).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.peer.stop().await
    }
}
