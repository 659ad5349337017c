//! The drone camera into the SFU without re-encoding: GStreamer ingests H.264 over RTSP
//! (`rtspsrc`, UDP or TCP-interleaved) or RTP/UDP, depayloads and parses it
//! (`h264parse config-interval=-1`: SPS/PPS before every keyframe), and the shared WebRTC
//! publishing peer ([`webrtc_publisher::Peer`]) publishes the access units through signaling's
//! `publish` (kind `drone`, stream `SUBJECT-droneSYSID`) on the bridge's session.
//!
//! When the source fails or ends (camera rebooting, RTSP server gone) or the peer connection
//! fails, everything is torn down and started again with backoff (1 s doubling to 30 s): that is
//! the reconnection. A keyframe request from the node cannot be forced on a camera that is not
//! ours to encode; the next keyframe of the camera's own GOP serves it.
//!
//! H.265: the SFU forwards only H.264 and VP8, so an H.265 camera is decoded and re-encoded as
//! H.264 — only when the drone-camera hardware profile (`--profile`, from `hw-profiles`) says so
//! for that codec (`drone-rtsp-h265`, `drone-jetson-h265`); the default profile
//! `drone-rtsp-h264` forwards H.264 untouched and ingests nothing else. The profile's ingest
//! entries are [`Plan`]s tried in order: an RTSP camera whose stream does not link to the current
//! plan's depayloader (`not-linked`/`not-negotiated`) is tried with the next one. RTP/UDP has no
//! SDP, so a `udp://` source is taken to carry the first plan's codec.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use hw_profiles::Codec;
use serde_json::json;
use signaling::client::{Client, ClientError};
use signaling::proto::{ClientMsg, ErrorCode, StreamKind};
use signaling::StreamName;
use tokio::sync::{mpsc, oneshot};
use webrtc_publisher::{local_ip_towards, Bounds, Peer, RTCPeerConnectionState};

use crate::mesh::emit;

/// Where the camera's H.264 comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSource {
    /// An RTSP URL (`rtsp://…`, `rtsps://…`).
    Rtsp(String),
    /// RTP/H.264 arriving on a local UDP port (`udp://PORT`, or `udp://HOST:PORT` to bind an
    /// address).
    Udp {
        /// Address to bind (default all).
        host: Option<String>,
        /// Port.
        port: u16,
    },
}

impl FromStr for VideoSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("rtsp://") || s.starts_with("rtsps://") || s.starts_with("rtspt://") {
            if s.contains(char::is_whitespace) || s.contains('"') {
                return Err(format!("bad video URI {s:?}"));
            }
            return Ok(VideoSource::Rtsp(s.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("udp://") {
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (
                    Some(h.trim_start_matches('@').to_owned()).filter(|h| !h.is_empty()),
                    p,
                ),
                None => (None, rest),
            };
            if host.as_deref().is_some_and(|h| {
                !h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            }) {
                return Err(format!("bad video URI {s:?}: bad host"));
            }
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("bad video URI {s:?}: bad port"))?;
            return Ok(VideoSource::Udp { host, port });
        }
        Err(format!("bad video URI {s:?}: use rtsp://… or udp://PORT"))
    }
}

impl std::fmt::Display for VideoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VideoSource::Rtsp(u) => f.write_str(u),
            VideoSource::Udp {
                host: Some(h),
                port,
            } => write!(f, "udp://{h}:{port}"),
            VideoSource::Udp { host: None, port } => write!(f, "udp://{port}"),
        }
    }
}

const SINK: &str = "video";

/// How one codec of the camera becomes the H.264 published: from RTP to H.264 access units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The camera's codec.
    pub codec: Codec,
    /// gst-launch fragment from RTP to parsed H.264.
    pub fragment: String,
    /// Whether it decodes and re-encodes (H.265 → H.264), and with which elements.
    pub transcode: Option<String>,
}

/// The plans of drone-camera profile `profile` over link class `link`, in the profile's order.
pub fn plans(
    profile: &str,
    link: &str,
    has_element: &dyn Fn(&str) -> bool,
) -> Result<Vec<Plan>, String> {
    let catalog = hw_profiles::shipped().map_err(|e| e.to_string())?;
    let device = catalog.device(profile).map_err(|e| e.to_string())?;
    let link = catalog.link(link).map_err(|e| e.to_string())?;
    if device.ingest.is_empty() {
        return Err(format!(
            "profile {profile} is a {} profile, not a drone camera's",
            device.kind
        ));
    }
    let mut out = Vec::new();
    for ing in &device.ingest {
        let plan = hw_profiles::resolve_ingest(device, ing.codec, link, has_element)
            .map_err(|e| e.to_string())?;
        match &plan.transcode {
            None if plan.codec == Codec::H264 => out.push(Plan {
                codec: Codec::H264,
                fragment: format!("{} ! {} config-interval=-1", ing.depay, ing.parse),
                transcode: None,
            }),
            None => {
                return Err(format!(
                    "profile {profile} forwards {} untouched, which the node does not take",
                    plan.codec.as_str()
                ))
            }
            Some((dec, enc)) => out.push(Plan {
                codec: plan.codec,
                fragment: format!("{} ! h264parse config-interval=-1", plan.pipeline),
                transcode: Some(format!("{} -> {}", dec.element, enc.encoder.element)),
            }),
        }
    }
    Ok(out)
}

/// The default plan: H.264 depayloaded and parsed, forwarded untouched.
pub fn h264_passthrough() -> Plan {
    Plan {
        codec: Codec::H264,
        fragment: "rtph264depay ! h264parse config-interval=-1".to_owned(),
        transcode: None,
    }
}

/// The gst-launch description for `source` with `plan`: depayload and parse (and, only when the
/// plan transcodes, decode and encode).
pub fn describe(source: &VideoSource, plan: &Plan) -> String {
    let tail = format!(
        "{} ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name={SINK} sync=false max-buffers=64 drop=true",
        plan.fragment
    );
    match source {
        VideoSource::Rtsp(uri) => {
            format!("rtspsrc location=\"{uri}\" protocols=udp+tcp latency=200 ! {tail}")
        }
        VideoSource::Udp { host, port } => {
            let addr = host
                .as_ref()
                .map(|h| format!(" address={h}"))
                .unwrap_or_default();
            let name = if plan.codec == Codec::H265 {
                "H265"
            } else {
                "H264"
            };
            format!(
                "udpsrc port={port}{addr} caps=\"application/x-rtp,media=video,clock-rate=90000,encoding-name={name}\" ! rtpjitterbuffer latency=200 ! {tail}"
            )
        }
    }
}

/// A running publisher of one drone's camera.
#[derive(Debug)]
pub struct Publisher {
    task: tokio::task::JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Publisher {
    /// Stops: closes the peer and the node's media session, stops the pipeline.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Starts publishing `source` as `stream` over `client`'s session to `node` (its QUIC
/// `HOST:PORT`, which picks the local address of the peer), with `plans` tried in order.
pub fn start(
    client: &Client,
    node: &str,
    stream: &str,
    source: VideoSource,
    plans: Vec<Plan>,
) -> Result<Publisher, String> {
    gst::init().map_err(|e| format!("GStreamer: {e}"))?;
    let stream = StreamName::parse(stream).map_err(|e| format!("stream name {stream}: {e}"))?;
    if plans.is_empty() {
        return Err("no ingest plan".to_owned());
    }
    let job = Job {
        client: client.clone(),
        node: node.to_owned(),
        stream,
        source,
        plans,
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(job.run(stop_rx));
    Ok(Publisher {
        task,
        stop: Some(stop_tx),
    })
}

/// An access unit and how long it lasts.
type Frame = (Bytes, Duration);

/// The pipeline, stopped when dropped.
struct Running {
    pipeline: gst::Pipeline,
    stopped: Arc<AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// How long a frame waits for the rest of itself (see [`join_slices`]).
const JOIN_WINDOW: Duration = Duration::from_millis(4);

/// Joins the parts of one picture into one frame. A camera whose encoder cuts a picture into
/// several slices and repeats SPS/PPS before each (x264 with sliced threads behind
/// `rtph264pay config-interval=-1`) makes `h264parse` cut the picture at every repeated SPS and
/// emit each part as an access unit of its own, the first with the picture's timestamp and the
/// others with none. Sent as separate samples they get separate RTP timestamps, and a viewer
/// decodes each part as a picture of its own, the rest of it missing (green blocks until the next
/// keyframe). A part joins the frame before it when its first slice does not start the picture
/// (`first_mb_in_slice` > 0, see [`continues_picture`]) or when it has the same timestamp. The
/// parts arrive back to back, so each frame waits at most [`JOIN_WINDOW`] for a next part.
fn join_slices(mut rx: mpsc::Receiver<(Bytes, Duration, Option<u64>)>) -> mpsc::Receiver<Frame> {
    let (tx, out) = mpsc::channel::<Frame>(64);
    tokio::spawn(async move {
        let Some(mut cur) = rx.recv().await else {
            return;
        };
        loop {
            match tokio::time::timeout(JOIN_WINDOW, rx.recv()).await {
                Ok(Some(next))
                    if (next.2.is_some() && next.2 == cur.2) || continues_picture(&next.0) =>
                {
                    let mut joined = Vec::with_capacity(cur.0.len() + next.0.len());
                    joined.extend_from_slice(&cur.0);
                    joined.extend_from_slice(&next.0);
                    cur.0 = Bytes::from(joined);
                }
                Ok(Some(next)) => {
                    let _ = tx.try_send((std::mem::take(&mut cur.0), cur.1));
                    cur = next;
                }
                Ok(None) => {
                    let _ = tx.try_send((cur.0, cur.1));
                    return;
                }
                Err(_) => {
                    let _ = tx.try_send((std::mem::take(&mut cur.0), cur.1));
                    match rx.recv().await {
                        Some(f) => cur = f,
                        None => return,
                    }
                }
            }
        }
    });
    out
}

/// Whether the H.264 access unit `au` (Annex B) continues a picture begun before it: its first
/// slice (NAL type 1 or 5) has `first_mb_in_slice` > 0. Without a slice, or when the slice header
/// cannot be read, it does not.
fn continues_picture(au: &[u8]) -> bool {
    let mut i = 0;
    while let Some(at) = au
        .get(i..)
        .and_then(|r| r.windows(3).position(|w| w == [0, 0, 1]))
    {
        let nal = &au[i + at + 3..];
        match nal.first().map(|b| b & 0x1f) {
            Some(1 | 5) => return first_mb_in_slice(&nal[1..]).is_some_and(|mb| mb > 0),
            Some(_) => i += at + 3,
            None => return false,
        }
    }
    false
}

/// The first Exp-Golomb number (`ue(v)`) of a NAL unit's payload `rbsp`, skipping emulation
/// prevention bytes (`00 00 03`); `None` when the bytes end first or it is out of range.
fn first_mb_in_slice(rbsp: &[u8]) -> Option<u32> {
    let mut bits = Vec::with_capacity(8 * rbsp.len().min(12));
    let mut zeros = 0;
    for &b in rbsp.iter().take(12) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        bits.extend((0..8).rev().map(|k| (b >> k) & 1));
    }
    let lead = bits.iter().position(|&b| b == 1)?;
    if lead > 31 {
        return None;
    }
    let tail = bits.get(lead + 1..lead + 1 + lead)?;
    let v = tail.iter().fold(0u64, |v, &b| (v << 1) | u64::from(b));
    u32::try_from((1u64 << lead) - 1 + v).ok()
}

/// Starts the pipeline: access units into the channel; a message into `failed` on error or end.
fn run_pipeline(
    source: &VideoSource,
    plan: &Plan,
) -> Result<(Running, mpsc::Receiver<Frame>, mpsc::Receiver<String>), String> {
    let desc = describe(source, plan);
    tracing::debug!(pipeline = %desc, "video pipeline");
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("{e} ({desc})"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let sink = pipeline
        .by_name(SINK)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("no appsink")?;
    let (tx, rx) = mpsc::channel::<(Bytes, Duration, Option<u64>)>(64);
    let mut last_pts: Option<gst::ClockTime> = None;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                // The camera's own frame interval (PTS to PTS), else 30 fps.
                let mut d = Duration::from_millis(33);
                if let Some(pts) = buffer.pts() {
                    if let Some(prev) = last_pts.filter(|p| *p < pts) {
                        let gap = Duration::from_nanos((pts - prev).nseconds());
                        if gap < Duration::from_secs(1) {
                            d = gap;
                        }
                    }
                    last_pts = Some(pts);
                }
                let pts = buffer.pts().map(|p| p.nseconds());
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let _ = tx.try_send((Bytes::copy_from_slice(map.as_slice()), d, pts));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start {desc}: {e}"))?;
    let running = Running {
        pipeline,
        stopped: Arc::default(),
    };
    let rx = join_slices(rx);
    let (fail_tx, fail_rx) = mpsc::channel(1);
    if let Some(bus) = running.pipeline.bus() {
        let stopped = running.stopped.clone();
        std::thread::spawn(move || {
            use gst::MessageView;
            while !stopped.load(Ordering::Relaxed) {
                let Some(msg) = bus.timed_pop_filtered(
                    gst::ClockTime::from_mseconds(200),
                    &[gst::MessageType::Error, gst::MessageType::Eos],
                ) else {
                    continue;
                };
                let why = match msg.view() {
                    MessageView::Error(e) => format!("{} ({:?})", e.error(), e.debug()),
                    _ => "the source ended".to_owned(),
                };
                let _ = fail_tx.blocking_send(why);
                return;
            }
        });
    }
    Ok((running, rx, fail_rx))
}

struct Job {
    client: Client,
    node: String,
    stream: StreamName,
    source: VideoSource,
    plans: Vec<Plan>,
}

/// Whether a pipeline failure says the stream is not in the plan's codec.
fn codec_mismatch(why: &str) -> bool {
    why.contains("not-linked") || why.contains("not-negotiated")
}

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// No frame for this long: the source is stalled, start again.
const STALL: Duration = Duration::from_secs(10);

impl Job {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut backoff = BACKOFF_MIN;
        let mut plan = 0;
        loop {
            match self
                .attempt(&self.plans[plan], &mut stop, &mut backoff)
                .await
            {
                Ok(()) => return,
                Err(Fatal(why)) => {
                    emit(
                        &json!({"kind": "warning", "message": format!("cannot publish {}: {why}", self.stream)}),
                    );
                    let _ = stop.await;
                    return;
                }
                Err(Retry(why))
                    if codec_mismatch(&why)
                        && self.plans.len() > 1
                        && matches!(self.source, VideoSource::Rtsp(_)) =>
                {
                    let from = self.plans[plan].codec.as_str();
                    plan = (plan + 1) % self.plans.len();
                    emit(
                        &json!({"kind": "note", "message": format!("video {}: not {from} ({why}); trying {}", self.stream, self.plans[plan].codec.as_str())}),
                    );
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Err(Retry(why)) => {
                    emit(
                        &json!({"kind": "warning", "message": format!("video {}: {why}; again in {} s", self.stream, backoff.as_secs())}),
                    );
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = &mut stop => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One run: pipeline, first frame, peer, publish, pump. `Ok` only when stopped.
    async fn attempt(
        &self,
        plan: &Plan,
        stop: &mut oneshot::Receiver<()>,
        backoff: &mut Duration,
    ) -> Result<(), AttemptError> {
        let (_running, mut frames, mut failed) = run_pipeline(&self.source, plan).map_err(Fatal)?;
        // Publish only once the camera delivers: a dead source is not a stream.
        let first = tokio::select! {
            _ = &mut *stop => return Ok(()),
            f = frames.recv() => f.ok_or_else(|| Retry("the source ended".to_owned()))?,
            why = failed.recv() => return Err(Retry(why.unwrap_or_default())),
            () = tokio::time::sleep(STALL) => return Err(Retry(format!("no frame from {} within {} s", self.source, STALL.as_secs()))),
        };
        let ip = local_ip_towards(&self.node)
            .await
            .map_err(|e| Retry(format!("no route to {}: {e}", self.node)))?;
        let bounds = Bounds {
            start: 2_000_000.0,
            min: 300_000.0,
            max: 8_000_000.0,
        };
        let (mut peer, offer, mut states) =
            Peer::offer(ip, hw_profiles::Codec::H264, &[None], false, bounds)
                .await
                .map_err(Retry)?;
        let msg = ClientMsg::Publish {
            id: 0,
            stream: Some(self.stream.clone()),
            kind: StreamKind::Drone,
            sdp: offer,
        };
        let data = match self.client.request(msg).await {
            Ok(d) => d,
            Err(e) => {
                peer.close().await;
                return Err(match e {
                    ClientError::Remote {
                        code: ErrorCode::Forbidden | ErrorCode::BadRequest,
                        ..
                    }
                    | ClientError::Closed => Fatal(e.to_string()),
                    _ => Retry(e.to_string()),
                });
            }
        };
        let (Some(sdp), Some(media)) = (data["sdp"].as_str(), data["media"].as_str()) else {
            peer.close().await;
            return Err(Retry(format!(
                "publish answered without sdp and media: {data}"
            )));
        };
        let media = media.to_owned();
        let on_keyframe: Arc<dyn Fn() + Send + Sync> =
            Arc::new(|| tracing::debug!("keyframe requested; the camera's next keyframe will do"));
        if let Err(e) = peer.answer(sdp.to_owned(), on_keyframe).await {
            peer.close().await;
            let _ = self
                .client
                .request(ClientMsg::MediaClose { id: 0, media })
                .await;
            return Err(Retry(e));
        }
        emit(
            &json!({"kind": "publishing", "stream": self.stream.as_str(), "media": media, "source": self.source.to_string(),
            "codec": plan.codec.as_str(), "transcode": plan.transcode}),
        );
        let session = self.client.session().session;
        let mut connected = false;
        let mut pending = Some(first);
        let mut last_frame = Instant::now();
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let ended: Result<(), AttemptError> = loop {
            tokio::select! {
                _ = &mut *stop => break Ok(()),
                f = frames.recv() => match f {
                    Some((data, d)) => {
                        last_frame = Instant::now();
                        if connected {
                            peer.write_video(0, data, d).await;
                        } else {
                            pending = Some((data, d));
                        }
                    }
                    None => break Err(Retry("the source ended".to_owned())),
                },
                why = failed.recv() => break Err(Retry(why.unwrap_or_default())),
                st = states.recv() => match st {
                    Some(RTCPeerConnectionState::Connected) => {
                        connected = true;
                        *backoff = BACKOFF_MIN;
                        if let Some((data, d)) = pending.take() {
                            peer.write_video(0, data, d).await;
                        }
                    }
                    Some(s @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)) => break Err(Retry(format!("peer connection {s}"))),
                    Some(_) => {}
                    None => break Err(Retry("peer connection gone".to_owned())),
                },
                _ = check.tick() => {
                    if self.client.session().session != session {
                        break Err(Retry("new signaling session".to_owned()));
                    }
                    if last_frame.elapsed() >= STALL {
                        break Err(Retry(format!("no frame from {} for {} s", self.source, STALL.as_secs())));
                    }
                }
            }
        };
        peer.close().await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.request(ClientMsg::MediaClose { id: 0, media }),
        )
        .await;
        ended
    }
}

/// Whether a failed attempt is worth repeating.
enum AttemptError {
    Retry(String),
    Fatal(String),
}
use AttemptError::{Fatal, Retry};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_describe_without_a_decoder() {
        let r: VideoSource = "rtsp://10.0.0.5:8554/cam".parse().unwrap();
        let d = describe(&r, &h264_passthrough());
        assert!(
            d.starts_with("rtspsrc location=\"rtsp://10.0.0.5:8554/cam\" protocols=udp+tcp"),
            "{d}"
        );
        let elements: Vec<&str> = d
            .split('!')
            .filter_map(|e| e.split_whitespace().next())
            .collect();
        assert!(
            elements
                .iter()
                .all(|e| !e.ends_with("dec") && !e.ends_with("enc")),
            "{d}"
        );
        assert_eq!(
            "udp://5600".parse(),
            Ok(VideoSource::Udp {
                host: None,
                port: 5600
            })
        );
        assert_eq!(
            "udp://127.0.0.1:5600"
                .parse::<VideoSource>()
                .unwrap()
                .to_string(),
            "udp://127.0.0.1:5600"
        );
        assert!(
            describe(&"udp://5600".parse().unwrap(), &h264_passthrough())
                .starts_with("udpsrc port=5600 caps=")
        );
        for bad in [
            "http://x",
            "udp://",
            "udp://0",
            "udp://h\"x:5",
            "rtsp://a b",
        ] {
            assert!(bad.parse::<VideoSource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_parts_of_a_multi_slice_picture_are_told_from_a_new_picture() {
        // As h264parse cuts an x264 keyframe of two slices (first_mb_in_slice 0 and 600) where
        // rtph264pay repeated SPS/PPS before the second: AUD, SPS, PPS, IDR slice.
        let sps_pps = [
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
        ];
        let part = |slice: &[u8]| {
            let mut v = vec![0, 0, 0, 1, 0x09, 0xf0];
            v.extend_from_slice(&sps_pps);
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(slice);
            v
        };
        // ue(0) = "1"; ue(600) = 9 zeros, "1", then 600 + 1 - 512 = 89 in 9 bits.
        let mb0 = part(&[0x65, 0x88, 0x84, 0x00]);
        let mb600 = part(&[0x65, 0x00, 0x4b, 0x20, 0x40]);
        assert!(!continues_picture(&mb0));
        assert!(continues_picture(&mb600));
        // A P slice at macroblock 40 (the second row) without SPS/PPS.
        assert!(continues_picture(&[0, 0, 1, 0x41, 0x05, 0x24]));
        assert_eq!(first_mb_in_slice(&[0x00, 0x4b, 0x20]), Some(600));
        // An emulation prevention byte inside the number is skipped: 00 00 03 01 = 23 zeros, 1.
        assert_eq!(
            first_mb_in_slice(&[0x00, 0x00, 0x03, 0x01, 0xff, 0xff, 0xfe]),
            Some((1 << 23) - 1 + 0x7fffff)
        );
        // No slice, a cut-off header, too many zeros: not a continuation, no panic.
        assert!(!continues_picture(&sps_pps));
        assert!(!continues_picture(&[0, 0, 1, 0x65]));
        assert!(!continues_picture(&[0, 0, 1]));
        assert!(!continues_picture(&[]));
        assert_eq!(first_mb_in_slice(&[0; 12]), None);
        assert_eq!(first_mb_in_slice(&[0x00, 0x01]), None);
    }

    #[test]
    fn profiles_decide_whether_h265_is_transcoded() {
        let has = |e: &str| ["avdec_h265", "x264enc", "openh264enc"].contains(&e);
        let p = plans("drone-rtsp-h264", "wifi", &has).unwrap();
        assert_eq!(p, vec![h264_passthrough()]);
        let p = plans("drone-rtsp-h265", "wifi", &has).unwrap();
        assert_eq!(
            p.iter().map(|p| p.codec).collect::<Vec<_>>(),
            vec![Codec::H264, Codec::H265]
        );
        assert_eq!(p[0].transcode, None);
        assert_eq!(p[1].transcode.as_deref(), Some("avdec_h265 -> x264enc"));
        assert!(
            p[1].fragment
                .starts_with("rtph265depay ! h265parse ! avdec_h265 ! videoconvert ! x264enc"),
            "{}",
            p[1].fragment
        );
        let d = describe(&"udp://5600".parse().unwrap(), &p[1]);
        assert!(d.contains("encoding-name=H265"), "{d}");
        assert!(plans("tablet-software", "wifi", &has).is_err());
        assert!(plans("no-such-profile", "wifi", &has).is_err());
    }
}
