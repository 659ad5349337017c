//! [`WhepViewer`]: receives and decodes whatever the node sends over WHEP, counting frames; the
//! decoded video ends in an appsink that keeps the latest frame, for checks of what the picture
//! shows ([`WhepViewer::picture`], [`WhepViewer::expect_picture`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_webrtc as gst_webrtc;

use super::core::Peer;
use super::http;
use super::picture::{Pattern, Picture};

/// Video offered by a viewer: H.264 (constrained baseline, packetization-mode 1) and VP8, so it
/// can be answered in whichever codec the publisher uses.
pub const VIEWER_VIDEO_CAPS: &str =
    "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,\
packetization-mode=(string)1,profile-level-id=(string)42e01f,level-asymmetry-allowed=(string)1,\
rtcp-fb-nack-pli=(boolean)true,rtcp-fb-nack=(boolean)true,rtcp-fb-ccm-fir=(boolean)true;\
application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000,\
rtcp-fb-nack-pli=(boolean)true,rtcp-fb-nack=(boolean)true,rtcp-fb-ccm-fir=(boolean)true";

/// Audio offered by a viewer: Opus.
pub const VIEWER_AUDIO_CAPS: &str =
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,encoding-params=(string)2";

/// What a [`WhepViewer`] asks for (each one recvonly m-section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewOptions {
    pub video: bool,
    pub audio: bool,
    /// Receive through this address (an impairment relay in front of the node's media port).
    pub via: Option<std::net::SocketAddr>,
    /// Jitter-buffer latency in ms (webrtcbin's default is 200). A receiver on a jittery,
    /// lossy link buffers more, as browsers' adaptive jitter buffers do, so that retransmissions
    /// arrive in time.
    pub latency_ms: Option<u32>,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            video: true,
            audio: true,
            via: None,
            latency_ms: None,
        }
    }
}

/// Counters of a [`WhepViewer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewerStats {
    /// Decoded video frames.
    pub frames_decoded: u64,
    /// Size of the last decoded frame (0 before the first one).
    pub width: u32,
    pub height: u32,
    /// Decoded audio buffers.
    pub audio_buffers: u64,
}

/// Called with every decoded video frame: its I420 bytes (rows padded to 4 bytes, as
/// `videoconvert` lays them out), width and height.
pub type FrameTap = Arc<dyn Fn(&[u8], usize, usize) + Send + Sync>;

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    width: AtomicU32,
    height: AtomicU32,
    audio: AtomicU64,
    video_codec: Mutex<Option<String>>,
    /// The appsink at the end of the video branch (latest decoded frame, I420), once linked.
    picture: Mutex<Option<gst_app::AppSink>>,
    /// See [`WhepViewer::on_frame`].
    tap: Mutex<Option<FrameTap>>,
}

/// A WHEP client decoding what it receives. See [`super`] for the network details.
pub struct WhepViewer {
    peer: Peer,
    counters: Arc<Counters>,
    /// What it views (the stream, or where the exchange went), for file names.
    label: String,
}

impl WhepViewer {
    /// Offers recvonly media to `{base_url}/whep/{stream}` and applies the answer.
    ///
    /// An empty `token` sends no `Authorization`. A non-`201` answer is a
    /// [`WhipError::Http`](super::WhipError) (see [`super::http_status`]).
    pub async fn start(
        base_url: &str,
        stream: &str,
        token: &str,
        opts: ViewOptions,
    ) -> anyhow::Result<WhepViewer> {
        let endpoint = http::endpoint_url(base_url, "whep", stream)?;
        let mut v = Self::prepare(&endpoint, token, opts)?;
        v.label = stream.to_owned();
        if let Err(e) = v.peer.negotiate(&endpoint).await {
            let _ = v.peer.stop().await;
            return Err(e.context(format!("viewing {endpoint}")));
        }
        tracing::info!(%endpoint, location = ?v.location(), "viewing");
        Ok(v)
    }

    /// Like [`start`](Self::start), but the offer/answer exchange is `exchange` (for example a
    /// `subscribe` request over signaling) instead of a WHEP POST. `base_url` is the node's
    /// HTTP base URL, used only to pick local addresses (loopback).
    pub async fn start_with<F, Fut>(
        base_url: &str,
        opts: ViewOptions,
        exchange: F,
    ) -> anyhow::Result<WhepViewer>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<String>>,
    {
        let endpoint = reqwest::Url::parse(base_url)?;
        let mut v = Self::prepare(&endpoint, "", opts)?;
        if let Err(e) = v.peer.negotiate_with(exchange).await {
            let _ = v.peer.stop().await;
            return Err(e.context("viewing over signaling"));
        }
        Ok(v)
    }

    pub(crate) fn prepare(
        endpoint: &reqwest::Url,
        token: &str,
        opts: ViewOptions,
    ) -> anyhow::Result<WhepViewer> {
        super::init()?;
        if !opts.video && !opts.audio {
            bail!("a viewer needs video or audio");
        }
        let pipeline = gst::Pipeline::with_name("whep-viewer");
        let webrtc = gst::ElementFactory::make("webrtcbin")
            .name("webrtc")
            .build()
            .context("webrtcbin")?;
        if let Some(ms) = opts.latency_ms {
            webrtc.set_property("latency", ms);
        }
        pipeline.add(&webrtc)?;
        let mut peer = Peer::new(pipeline, endpoint, token)?;
        peer.via = opts.via;

        let recvonly = gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly;
        for (wanted, caps) in [
            (opts.video, VIEWER_VIDEO_CAPS),
            (opts.audio, VIEWER_AUDIO_CAPS),
        ] {
            if wanted {
                let caps: gst::Caps = caps.parse().map_err(|e| anyhow!("caps {caps}: {e}"))?;
                let t = peer
                    .webrtc
                    .emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
                        "add-transceiver",
                        &[&recvonly, &caps],
                    );
                t.set_property("do-nack", true);
            }
        }

        peer.use_ecdsa_certificate()?;
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let pipeline_weak = peer.pipeline.downgrade();
        peer.webrtc.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pipeline_weak.upgrade() else {
                return;
            };
            if pad.direction() != gst::PadDirection::Src {
                return;
            }
            if let Err(e) = on_incoming_stream(&pipeline, pad, &c) {
                tracing::error!("cannot decode {}: {e:#}", pad.name());
            }
        });
        peer.play()?;
        Ok(WhepViewer {
            peer,
            counters,
            label: "viewer".to_owned(),
        })
    }

    #[cfg(test)]
    pub(crate) async fn offer(&self) -> anyhow::Result<String> {
        self.peer.local_offer().await
    }

    /// Current counters.
    pub fn stats(&self) -> ViewerStats {
        let c = &self.counters;
        ViewerStats {
            frames_decoded: c.frames.load(Ordering::Relaxed),
            width: c.width.load(Ordering::Relaxed),
            height: c.height.load(Ordering::Relaxed),
            audio_buffers: c.audio.load(Ordering::Relaxed),
        }
    }

    /// Calls `tap` with every video frame decoded from now on (replacing any earlier tap), on the
    /// pipeline's streaming thread: keep it short. For checks of every frame's content (a time
    /// code or frame number painted by the source), where [`picture`](Self::picture) samples.
    pub fn on_frame(&self, tap: impl Fn(&[u8], usize, usize) + Send + Sync + 'static) {
        *self.counters.tap.lock().unwrap() = Some(Arc::new(tap));
    }

    /// Encoding name (`H264`, `VP8`) of the received video, once its pad appeared.
    pub fn video_codec(&self) -> Option<String> {
        self.counters.video_codec.lock().unwrap().clone()
    }

    /// The next video frame decoded from now on (or the latest one, if it was not taken yet), as
    /// RGB; fails when none comes within `timeout`.
    pub async fn picture(&self, timeout: Duration) -> anyhow::Result<Picture> {
        let sink = self
            .counters
            .picture
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| anyhow!("no video decoded yet"))?;
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let sample = tokio::task::spawn_blocking(move || {
            sink.try_pull_sample(gst::ClockTime::from_nseconds(ns))
        })
        .await?
        .ok_or_else(|| anyhow!("no decoded frame within {timeout:?}: {:?}", self.stats()))?;
        let caps = sample.caps().ok_or_else(|| anyhow!("frame without caps"))?;
        let s = caps.structure(0).ok_or_else(|| anyhow!("empty caps"))?;
        let dim = |f: &str| {
            s.get::<i32>(f)
                .ok()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| anyhow!("frame caps without {f}: {caps}"))
        };
        let (w, h) = (dim("width")?, dim("height")?);
        let buffer = sample
            .buffer()
            .ok_or_else(|| anyhow!("sample without buffer"))?;
        let map = buffer.map_readable()?;
        Picture::from_i420(map.as_slice(), w, h)
    }

    /// Checks that the picture shows `pattern`: takes `frames` decoded frames about 250 ms apart
    /// (12 frames span 3 s, more than a GOP of the test sources) and fails at the first that does
    /// not, after writing it to `target/pictures/` for people to look at.
    pub async fn expect_picture(&self, pattern: Pattern, frames: usize) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        for i in 0..frames {
            tick.tick().await;
            let pic = self
                .picture(Duration::from_secs(5))
                .await
                .with_context(|| format!("frame {i} of {frames}"))?;
            if let Err(why) = pattern.check(&pic) {
                let dir =
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pictures");
                let name: String = self
                    .label
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                static SAVED: AtomicU64 = AtomicU64::new(0);
                let k = SAVED.fetch_add(1, Ordering::Relaxed);
                let path = dir.join(format!("{name}-{}-{k}.png", std::process::id()));
                let saved = std::fs::create_dir_all(&dir)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| pic.save_png(&path))
                    .map(|()| path.display().to_string())
                    .unwrap_or_else(|e| format!("not saved: {e:#}"));
                bail!("frame {i} of {frames} does not show {pattern:?}: {why} ({saved})");
            }
        }
        Ok(())
    }

    /// Waits until at least `n` video frames were decoded, polling every 20 ms; fails after
    /// `timeout` or on a pipeline error, reporting the counters and states reached.
    pub async fn wait_frames(&self, n: u64, timeout: Duration) -> anyhow::Result<ViewerStats> {
        self.wait_until(timeout, |s| s.frames_decoded >= n)
            .await
            .with_context(|| format!("waiting for {n} video frames"))
    }

    /// Like [`wait_frames`](Self::wait_frames) for decoded audio buffers.
    pub async fn wait_audio(&self, n: u64, timeout: Duration) -> anyhow::Result<ViewerStats> {
        self.wait_until(timeout, |s| s.audio_buffers >= n)
            .await
            .with_context(|| format!("waiting for {n} audio buffers"))
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&ViewerStats) -> bool,
    ) -> anyhow::Result<ViewerStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if done(&s) {
                return Ok(s);
            }
            if let Some(e) = self.error() {
                bail!("pipeline error: {e} (stats {s:?})");
            }
            if Instant::now() >= deadline {
                bail!(
                    "timeout after {timeout:?}: {s:?}, ice={:?}, connection={:?}, codec={:?}",
                    self.ice_connection_state(),
                    self.connection_state(),
                    self.video_codec()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// Links a new webrtcbin src pad to a depayloader + decoder, with a counting probe on the
/// decoder's output; decoded video goes on (as I420, which the decoders output anyway) to an
/// appsink that keeps only the latest frame, anything else to a fakesink.
fn on_incoming_stream(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    c: &Arc<Counters>,
) -> anyhow::Result<()> {
    let caps = pad
        .current_caps()
        .ok_or_else(|| anyhow!("pad without caps"))?;
    let s = caps.structure(0).ok_or_else(|| anyhow!("empty caps"))?;
    let media = s.get::<&str>("media").unwrap_or("");
    let enc = s
        .get::<&str>("encoding-name")
        .unwrap_or("")
        .to_ascii_uppercase();
    tracing::info!(pad = %pad.name(), media, encoding = %enc, "incoming stream");
    #[derive(Clone, Copy)]
    enum Kind {
        Video,
        Audio,
        Unknown,
    }
    let (desc, kind) = match enc.as_str() {
        "H264" => ("rtph264depay request-keyframe=true wait-for-keyframe=true ! h264parse ! avdec_h264 name=dec", Kind::Video),
        "VP8" => ("rtpvp8depay request-keyframe=true wait-for-keyframe=true ! vp8dec name=dec", Kind::Video),
        "OPUS" => ("rtpopusdepay ! opusdec name=dec", Kind::Audio),
        _ => {
            tracing::warn!(encoding = %enc, "no decoder for this encoding; discarding");
            ("identity name=dec", Kind::Unknown)
        }
    };
    if media == "video" {
        *c.video_codec.lock().unwrap() = Some(enc.clone());
    }
    let sink = match kind {
        Kind::Video => {
            "videoconvert ! video/x-raw,format=I420 \
             ! appsink name=picture sync=false async=false max-buffers=1 drop=true"
        }
        Kind::Audio | Kind::Unknown => "fakesink sync=false async=false",
    };
    let desc = format!("{desc} ! {sink}");
    let bin = gst::parse::bin_from_description(&desc, true).with_context(|| desc.clone())?;
    if let Some(sink) = bin
        .by_name("picture")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
    {
        let tapped = c.clone();
        if let Some(pad) = sink.static_pad("sink") {
            pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                let Some(tap) = tapped.tap.lock().unwrap().clone() else {
                    return gst::PadProbeReturn::Ok;
                };
                let size = pad
                    .current_caps()
                    .as_ref()
                    .and_then(|c| c.structure(0))
                    .map(|s| {
                        let dim =
                            |f: &str| usize::try_from(s.get::<i32>(f).unwrap_or(0)).unwrap_or(0);
                        (dim("width"), dim("height"))
                    });
                if let (Some((w, h)), Some(gst::PadProbeData::Buffer(b))) = (size, &info.data) {
                    if let Ok(map) = b.map_readable() {
                        tap(map.as_slice(), w, h);
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        *c.picture.lock().unwrap() = Some(sink);
    }
    let dec = bin.by_name("dec").ok_or_else(|| anyhow!("no dec"))?;
    let src = dec
        .static_pad("src")
        .ok_or_else(|| anyhow!("decoder without src pad"))?;
    let c = c.clone();
    src.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
        match kind {
            Kind::Video => {
                if let Some(s) = pad.current_caps().as_ref().and_then(|c| c.structure(0)) {
                    let dim = |f: &str| u32::try_from(s.get::<i32>(f).unwrap_or(0)).unwrap_or(0);
                    c.width.store(dim("width"), Ordering::Relaxed);
                    c.height.store(dim("height"), Ordering::Relaxed);
                }
                c.frames.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Audio => {
                c.audio.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Unknown => {}
        }
        gst::PadProbeReturn::Ok
    });
    pipeline.add(&bin)?;
    bin.sync_state_with_parent()?;
    let sink = bin
        .static_pad("sink")
        .ok_or_else(|| anyhow!("bin without sink pad"))?;
    pad.link(&sink)
        .map_err(|e| anyhow!("linking {}: {e:?}", pad.name()))?;
    Ok(())
}
