//! Camera and microphone out (`--source`, `--no-audio`, `--video`, `--profile`, `--link`):
//! capture and encode with GStreamer, publish with WebRTC (the `webrtc` crate), negotiate through
//! signaling's `publish` on the session `run` holds.
//!
//! - [`pipeline`]: the gst-launch description (pure, unit-tested).
//! - [`rate`]: what to send for a bandwidth estimate (Opus bitrate, layers on, their bitrates).
//! - [`timecode`]: the time code `--source test` paints for glass-to-glass latency.
//! - [`webrtc_publisher`] (its own crate): the WebRTC peer (tracks, complete offer, keyframe
//!   requests, congestion control).
//! - here: the encoder choice (`hw-profiles`), the running pipeline, the publishing task that
//!   re-publishes with backoff when the peer connection fails or the signaling session is new,
//!   and the plans of [`rate`] applied to the running encoders.
//!
//! Capture is 640×480 at 30 fps unless `--video WxH@FPS` says otherwise; the link class decides
//! the layers (simulcast where it lists them, scaled from the capture) and their start bitrates;
//! `file:PATH` plays once (no loop).
//!
//! It must not touch the office side (mail, orders) nor print anything but `publishing`,
//! `bitrate`, `warning` and `note` lines.

pub mod pipeline;
pub mod rate;
pub mod timecode;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use hw_profiles::Codec;
use serde_json::json;
use signaling::client::{Client, ClientError};
use signaling::proto::{ClientMsg, ErrorCode, StreamKind};
use tokio::sync::{mpsc, oneshot};
use webrtc::peer_connection::RTCPeerConnectionState;
use webrtc_publisher::{local_ip_towards, Bounds, Peer};

use crate::output::Output;
pub use pipeline::Picture;
use pipeline::{VideoLayer, AUDIO_SINK};
use rate::{LayerCap, Plan, Planner};

/// `--source`: what to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// The tablet's camera (and microphone).
    #[default]
    Camera,
    /// A generated test pattern (and tone).
    Test,
    /// A media file, played once.
    File(PathBuf),
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "camera" => Ok(Source::Camera),
            "test" => Ok(Source::Test),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Source::File(PathBuf::from(p))),
                _ => Err(format!("unknown source {s:?} (camera, test or file:PATH)")),
            },
        }
    }
}

/// How to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MediaOptions {
    /// What to publish.
    pub source: Source,
    /// Publish Opus audio too.
    pub audio: bool,
    /// The hardware profile (`hw-profiles`), if named.
    pub profile: Option<String>,
    /// The link class (`hw-profiles`), if named.
    pub link: Option<String>,
    /// Capture size and rate (default 640×480 at 30 fps).
    pub picture: Option<Picture>,
}

/// Why no publisher runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// GStreamer could not be initialised.
    #[error("GStreamer: {0}")]
    Gstreamer(String),
    /// The hardware profile or link class is unknown, or no encoder fits.
    #[error("{0}")]
    Profile(String),
    /// The source cannot be captured (no camera).
    #[error("{0}")]
    Source(String),
    /// The capture-and-encode pipeline could not be built or started.
    #[error("media pipeline: {0}")]
    Pipeline(String),
}

/// A running publisher.
#[derive(Debug)]
pub struct Publisher {
    task: tokio::task::JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Publisher {
    /// Stops publishing: closes the peer and the node's media session, stops the pipeline.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

/// Link class used without `--link`.
pub const DEFAULT_LINK: &str = "wifi";

/// Backoff between publishing attempts.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A peer connection `Disconnected` for this long is given up and re-published.
const DISCONNECTED_GRACE: Duration = Duration::from_secs(5);
/// At most one forced keyframe per this interval.
const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// The encoder for this machine: `profile` (else the first tablet profile with installed hardware,
/// else `tablet-software`) over `link` (else [`DEFAULT_LINK`]), H.264 preferred.
pub fn choose_encoder(
    profile: Option<&str>,
    link: Option<&str>,
    has_element: &dyn Fn(&str) -> bool,
) -> Result<hw_profiles::Resolution, Unavailable> {
    let catalog = hw_profiles::shipped().map_err(|e| Unavailable::Profile(e.to_string()))?;
    let device = match profile {
        Some(name) => catalog.device(name),
        None => hw_profiles::pick_device(has_element),
    }
    .map_err(|e| Unavailable::Profile(e.to_string()))?;
    let link = catalog
        .link(link.unwrap_or(DEFAULT_LINK))
        .map_err(|e| Unavailable::Profile(e.to_string()))?;
    let r = hw_profiles::resolve(device, link, has_element, Some(Codec::H264))
        .map_err(|e| Unavailable::Profile(e.to_string()))?;
    if !matches!(r.encoder.codec, Codec::H264 | Codec::Vp8) {
        return Err(Unavailable::Profile(format!(
            "{} produces {}, which the node does not forward",
            r.encoder.element,
            r.encoder.codec.as_str()
        )));
    }
    Ok(r)
}

/// `field-client profiles`: the shipped profiles and link classes; what every tablet profile would
/// use on this machine (GStreamer's registry answers which elements exist), with the reason each
/// better encoder was skipped; and the profile `run` picks here.
pub fn print_profiles(
    profile: Option<&str>,
    link: Option<&str>,
    json: bool,
) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    use hw_profiles::DeviceKind;
    gst::init().map_err(|e| Error::Local(format!("GStreamer: {e}")))?;
    let has_element = |name: &str| gst::ElementFactory::find(name).is_some();
    let catalog = hw_profiles::shipped().map_err(|e| Error::Local(e.to_string()))?;
    let picked =
        choose_encoder(profile, link, &has_element).map_err(|e| Error::Usage(e.to_string()))?;
    let mut tablets = Vec::new();
    for d in catalog.devices_of(DeviceKind::Tablet) {
        tablets.push(
            choose_encoder(Some(&d.name), link, &has_element)
                .map_err(|e| Error::Local(e.to_string()))?,
        );
    }
    let as_json = |r: &hw_profiles::Resolution| {
        let skipped: Vec<serde_json::Value> = r
            .skipped
            .iter()
            .map(|s| {
                serde_json::json!({
                    "element": s.element,
                    "codec": s.codec.as_str(),
                    "hardware": s.hardware,
                    "reason": s.reason.to_string(),
                })
            })
            .collect();
        serde_json::json!({
            "profile": r.device,
            "link": r.link,
            "encoder": r.encoder.element,
            "codec": r.encoder.codec.as_str(),
            "hardware": r.encoder.hardware,
            "bitrate_kbps": r.encoder.bitrate_kbps,
            "skipped": skipped,
        })
    };
    let devices: Vec<&str> = catalog.devices().map(|d| d.name.as_str()).collect();
    let links: Vec<&str> = catalog.links().map(|l| l.name.as_str()).collect();
    if json {
        let v = serde_json::json!({
            "devices": devices,
            "links": links,
            "tablets": tablets.iter().map(as_json).collect::<Vec<_>>(),
            "picked": as_json(&picked),
        });
        println!("{v}");
        return Ok(());
    }
    println!("profiles: {}", devices.join(", "));
    println!("links: {}", links.join(", "));
    for r in &tablets {
        println!(
            "{} on {}: {} ({}, {})",
            r.device,
            r.link,
            r.encoder.element,
            if r.encoder.hardware {
                "hardware"
            } else {
                "software"
            },
            r.encoder.codec.as_str()
        );
        for s in &r.skipped {
            println!("  skipped {s}");
        }
    }
    println!(
        "run picks: profile {} on link {}: {} ({}, {}) at {} kbit/s",
        picked.device,
        picked.link,
        picked.encoder.element,
        if picked.encoder.hardware {
            "hardware"
        } else {
            "software"
        },
        picked.encoder.codec.as_str(),
        picked.encoder.bitrate_kbps
    );
    Ok(())
}

/// The `note` that says which encoder was chosen and what was passed over.
pub fn encoder_note(r: &hw_profiles::Resolution, layers: &[VideoLayer]) -> String {
    let sizes: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                "{}x{} at {} kbit/s",
                l.width, l.height, l.encoder.bitrate_kbps
            )
        })
        .collect();
    let mut s = format!(
        "encoder {} ({}, {}) from profile {} on link {}: {} {}",
        r.encoder.element,
        if r.encoder.hardware {
            "hardware"
        } else {
            "software"
        },
        r.encoder.codec.as_str(),
        r.device,
        r.link,
        if layers.len() > 1 {
            "simulcast"
        } else {
            "one layer"
        },
        sizes.join(", ")
    );
    if let Some(c) = r.preferred_codec_unavailable {
        s.push_str(&format!("; no {} encoder installed", c.as_str()));
    }
    for skipped in &r.skipped {
        s.push_str(&format!("; skipped {skipped}"));
    }
    s
}

/// An encoded frame or packet and how long it lasts.
type Frame = (Bytes, Duration);

/// The pipeline, set to NULL when dropped.
struct Running {
    pipeline: gst::Pipeline,
    stopped: Arc<std::sync::atomic::AtomicBool>,
    /// Per layer: the encoder element and what it was built from.
    encoders: Vec<(gst::Element, hw_profiles::ChosenEncoder)>,
    audio_encoder: Option<gst::Element>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Hands an appsink's buffers to `send` (which drops when its channel is full: a late frame is
/// worth nothing).
fn drain_appsink(
    sink: &gst_app::AppSink,
    default: Duration,
    send: impl Fn(Frame) -> bool + Send + Sync + 'static,
) {
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let duration = buffer
                    .duration()
                    .map_or(default, |d| Duration::from_nanos(d.nseconds()));
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let _ = send((Bytes::copy_from_slice(map.as_slice()), duration));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// Asks every layer's encoder for a keyframe (with SPS/PPS), at most once per
/// [`KEYFRAME_MIN_INTERVAL`].
fn keyframe_forcer(video_sinks: Vec<gst::Element>) -> Arc<dyn Fn() + Send + Sync> {
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move || {
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < KEYFRAME_MIN_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        for sink in &video_sinks {
            let s = gst::Structure::builder("GstForceKeyUnit")
                .field("all-headers", true)
                .build();
            // Upstream from the appsink through the parser to the encoder.
            sink.send_event(gst::event::CustomUpstream::new(s));
        }
    })
}

/// Paints the wall-clock time into every frame leaving `stamp` (I420, `picture` sized).
fn paint_timecode(stamp: &gst::Element, picture: Picture) -> Result<(), Unavailable> {
    let pad = stamp
        .static_pad("src")
        .ok_or_else(|| Unavailable::Pipeline("time code element without src pad".into()))?;
    let (w, h) = (picture.width as usize, picture.height as usize);
    // GStreamer's default I420 row stride: the width rounded up to 4 bytes.
    let stride = (w + 3) & !3;
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = info.data.as_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let buffer = buffer.make_mut();
            if let Ok(mut map) = buffer.map_writable() {
                if map.len() >= stride * h {
                    timecode::paint(map.as_mut_slice(), w, h, stride, now);
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// The layers to publish for `r`: its simulcast layers scaled from `picture`, or one layer that
/// walks the link's ladder.
fn plan_layers(r: &hw_profiles::Resolution, picture: Picture) -> (Vec<VideoLayer>, Vec<LayerCap>) {
    if r.layers.len() > 1 {
        r.layers
            .iter()
            .map(|l| {
                let (width, height) = picture.scaled(l.scale_down_by);
                (
                    VideoLayer {
                        width,
                        height,
                        encoder: l.encoder.clone(),
                    },
                    LayerCap {
                        rid: Some(l.rid.clone()),
                        max_kbps: l.max_bitrate_kbps,
                    },
                )
            })
            .unzip()
    } else {
        let max = r
            .ladder_kbps
            .last()
            .copied()
            .unwrap_or(r.encoder.bitrate_kbps);
        (
            vec![VideoLayer {
                width: picture.width,
                height: picture.height,
                encoder: r.encoder.clone(),
            }],
            vec![LayerCap {
                rid: None,
                max_kbps: max,
            }],
        )
    }
}

/// Starts publishing `opts` over `client`'s session to `node` (its QUIC `HOST:PORT`, used to pick
/// the local address). Prints the encoder choice as a `note`; `publishing` lines follow as the
/// node accepts each offer, and `bitrate` lines as congestion control moves what is sent.
///
/// An encoder that fails to start (an error from it within [`ENCODER_PROBE`] of going to
/// PLAYING) is put aside with a warning and the profile's chain is resolved again without it.
pub fn start(
    client: &Client,
    node: &str,
    opts: &MediaOptions,
    out: Output,
) -> Result<Publisher, Unavailable> {
    gst::init().map_err(|e| Unavailable::Gstreamer(e.to_string()))?;
    if opts.source == Source::Camera {
        check_camera()?;
    }
    let mut failed: Vec<String> = Vec::new();
    let (running, resolution, planner, video_rx, audio_rx, keyframe) = loop {
        let has_element = |name: &str| {
            !failed.iter().any(|f| f == name) && gst::ElementFactory::find(name).is_some()
        };
        let resolution = choose_encoder(
            opts.profile.as_deref(),
            opts.link.as_deref(),
            &has_element,
        )
        .map_err(|e| {
            if failed.is_empty() {
                e
            } else {
                Unavailable::Profile(format!("{e} (failed to start: {})", failed.join(", ")))
            }
        })?;
        match launch(opts, &resolution, out) {
            Ok((running, planner, video_rx, audio_rx, keyframe)) => {
                break (running, resolution, planner, video_rx, audio_rx, keyframe)
            }
            Err(Launch::Encoder(why)) => {
                out.warning(&format!(
                    "encoder {} failed to start ({why}); trying the next one of profile {}",
                    resolution.encoder.element, resolution.device
                ));
                failed.push(resolution.encoder.element.clone());
            }
            Err(Launch::Other(e)) => return Err(e),
        }
    };
    let rids = planner.layers().iter().map(|l| l.rid.clone()).collect();
    let (stop_tx, stop_rx) = oneshot::channel();
    let (encoders, audio_encoder) = (running.encoders.clone(), running.audio_encoder.clone());
    let job = Job {
        client: client.clone(),
        node: node.to_owned(),
        codec: resolution.encoder.codec,
        encoder: resolution.encoder.element.clone(),
        out,
        keyframe,
        rids,
        rate: Mutex::new(Rate {
            planner,
            encoders,
            audio_encoder,
            applied: None,
            last_estimate: None,
        }),
    };
    let task = tokio::spawn(async move {
        job.publish(video_rx, audio_rx, stop_rx).await;
        drop(running);
    });
    Ok(Publisher {
        task,
        stop: Some(stop_tx),
    })
}

/// How long after PLAYING an encoder error counts as "failed to start".
pub const ENCODER_PROBE: Duration = Duration::from_millis(700);

/// `--source camera` needs a V4L2 device.
fn check_camera() -> Result<(), Unavailable> {
    let any = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("video"))
        })
        .unwrap_or(false);
    if any {
        Ok(())
    } else {
        Err(Unavailable::Source(
            "no camera: no /dev/video* device on this machine (publish --source test or file:PATH instead)".to_owned(),
        ))
    }
}

/// Why [`launch`] failed.
enum Launch {
    /// The video encoder reported an error on start: try the next one.
    Encoder(String),
    Other(Unavailable),
}

impl From<Unavailable> for Launch {
    fn from(e: Unavailable) -> Self {
        Launch::Other(e)
    }
}

type Launched = (
    Running,
    Planner,
    mpsc::Receiver<(usize, Frame)>,
    Option<mpsc::Receiver<Frame>>,
    Arc<dyn Fn() + Send + Sync>,
);

/// Builds the pipeline for `resolution`, starts it and watches its first moments for an encoder
/// error.
fn launch(
    opts: &MediaOptions,
    resolution: &hw_profiles::Resolution,
    out: Output,
) -> Result<Launched, Launch> {
    let link = hw_profiles::shipped()
        .and_then(|c| c.link(&resolution.link).cloned())
        .map_err(|e| Unavailable::Profile(e.to_string()))?;
    let picture = opts.picture.unwrap_or_default();
    let (layers, caps) = plan_layers(resolution, picture);
    out.note(&encoder_note(resolution, &layers));
    let desc = pipeline::describe(
        &opts.source,
        &layers,
        opts.audio.then_some(&resolution.audio),
        picture,
    );
    tracing::debug!(pipeline = %desc, "media pipeline");
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| Unavailable::Pipeline(format!("{e} ({desc})")))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| Unavailable::Pipeline("not a pipeline".to_owned()))?;
    let element = |name: &str| {
        pipeline
            .by_name(name)
            .ok_or_else(|| Unavailable::Pipeline(format!("no element {name}")))
    };
    let appsink = |name: &str| {
        element(name)?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| Unavailable::Pipeline(format!("{name} is not an appsink")))
    };
    let (video_tx, video_rx) = mpsc::channel::<(usize, Frame)>(64);
    let mut sinks = Vec::new();
    let mut encoders = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let sink = appsink(&pipeline::video_sink(i))?;
        let tx = video_tx.clone();
        drain_appsink(&sink, Duration::from_secs(1) / picture.fps, move |f| {
            tx.try_send((i, f)).is_ok()
        });
        sinks.push(sink.upcast::<gst::Element>());
        encoders.push((element(&pipeline::video_encoder(i))?, l.encoder.clone()));
    }
    drop(video_tx);
    let (audio_rx, audio_encoder) = if opts.audio {
        let frame = Duration::from_millis(u64::from(resolution.audio.frame_ms));
        let (tx, rx) = mpsc::channel::<Frame>(64);
        drain_appsink(&appsink(AUDIO_SINK)?, frame, move |f| {
            tx.try_send(f).is_ok()
        });
        (Some(rx), Some(element(pipeline::AUDIO_ENCODER)?))
    } else {
        (None, None)
    };
    if opts.source == Source::Test {
        paint_timecode(&element(pipeline::TIMECODE)?, picture)?;
    }
    let keyframe = keyframe_forcer(sinks);
    let running = Running {
        pipeline,
        stopped: Default::default(),
        encoders,
        audio_encoder,
    };
    let started = running.pipeline.set_state(gst::State::Playing);
    // An encoder that cannot open its device fails now or on its first frames.
    let bus = running
        .pipeline
        .bus()
        .ok_or_else(|| Unavailable::Pipeline("pipeline without a bus".to_owned()))?;
    let probe = gst::ClockTime::from_mseconds(ENCODER_PROBE.as_millis() as u64);
    if let Some(msg) = bus.timed_pop_filtered(probe, &[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            let from = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
            let why = format!("{} ({:?})", e.error(), e.debug());
            if from.starts_with("venc") {
                return Err(Launch::Encoder(why));
            }
            return Err(Unavailable::Pipeline(format!("{from}: {why}")).into());
        }
    }
    started.map_err(|e| Unavailable::Pipeline(format!("cannot start: {e}")))?;
    watch_bus(&running, out);
    Ok((
        running,
        Planner::new(link, caps),
        video_rx,
        audio_rx,
        keyframe,
    ))
}

/// The running encoders and what congestion control last made of them.
struct Rate {
    planner: Planner,
    /// Per layer: the element and what it was built from.
    encoders: Vec<(gst::Element, hw_profiles::ChosenEncoder)>,
    audio_encoder: Option<gst::Element>,
    /// The plan in force.
    applied: Option<Plan>,
    /// The last estimate seen (the next peer connection starts there), bits per second.
    last_estimate: Option<f64>,
}

impl Rate {
    /// Plans for `estimate_bps` and applies what changed to the encoders. Returns the plan when
    /// it differs enough from the one in force to be worth a `bitrate` line.
    fn update(&mut self, estimate_bps: f64) -> Option<Plan> {
        self.last_estimate = Some(estimate_bps);
        let plan = self.planner.plan(Instant::now(), estimate_bps);
        let old = self.applied.clone();
        for (i, (el, enc)) in self.encoders.iter().enumerate() {
            let (Some(kbps), before) = (plan.layers[i], old.as_ref().and_then(|o| o.layers[i]))
            else {
                continue;
            };
            if before == Some(kbps) {
                continue;
            }
            // The property comes from the element table the profile was built with; look it up
            // anyway, since setting a missing property panics in the bindings.
            match enc.live_bitrate(kbps) {
                Some((prop, value)) if el.find_property(prop).is_some() => {
                    el.set_property_from_str(prop, &value.to_string());
                }
                _ => tracing::debug!(
                    "{} has no live bitrate property: layer {i} stays at its start",
                    enc.element
                ),
            }
        }
        if old.as_ref().is_none_or(|o| o.audio_kbps != plan.audio_kbps) {
            if let Some(a) = self
                .audio_encoder
                .as_ref()
                .filter(|a| a.find_property("bitrate").is_some())
            {
                a.set_property_from_str(
                    "bitrate",
                    &(u64::from(plan.audio_kbps) * 1000).to_string(),
                );
            }
        }
        self.applied = Some(plan.clone());
        let notable = match &old {
            None => true,
            Some(o) => {
                o.active() != plan.active()
                    || o.audio_kbps != plan.audio_kbps
                    || o.layers
                        .iter()
                        .zip(&plan.layers)
                        .any(|(a, b)| match (a, b) {
                            (Some(a), Some(b)) => a.abs_diff(*b) * 100 >= a.max(b) * 15,
                            _ => false,
                        })
            }
        };
        notable.then_some(plan)
    }
}

/// Reports pipeline errors and the end of a file source (a thread, until the pipeline stops).
fn watch_bus(running: &Running, out: Output) {
    let Some(bus) = running.pipeline.bus() else {
        return;
    };
    let stopped = running.stopped.clone();
    std::thread::spawn(move || {
        use gst::MessageView;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let Some(msg) = bus.timed_pop_filtered(
                gst::ClockTime::from_mseconds(200),
                &[gst::MessageType::Error, gst::MessageType::Eos],
            ) else {
                continue;
            };
            match msg.view() {
                MessageView::Error(e) => {
                    out.warning(&format!(
                        "media pipeline error: {} ({:?})",
                        e.error(),
                        e.debug()
                    ));
                    break;
                }
                MessageView::Eos(_) => {
                    out.note("media source ended");
                    break;
                }
                _ => {}
            }
        }
    });
}

struct Job {
    client: Client,
    node: String,
    codec: Codec,
    encoder: String,
    out: Output,
    keyframe: Arc<dyn Fn() + Send + Sync>,
    /// Per video layer, full size first (`None` for a single layer).
    rids: Vec<Option<String>>,
    rate: Mutex<Rate>,
}

/// Why a publishing attempt ended.
enum Ended {
    Stop,
    Retry(String),
}

impl Job {
    async fn publish(
        &self,
        mut video: mpsc::Receiver<(usize, Frame)>,
        mut audio: Option<mpsc::Receiver<Frame>>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let attempt = tokio::select! {
                r = self.negotiate(audio.is_some()) => r,
                _ = &mut stop => return,
            };
            match attempt {
                Ok((mut peer, states, media)) => {
                    while video.try_recv().is_ok() {}
                    if let Some(a) = audio.as_mut() {
                        while a.try_recv().is_ok() {}
                    }
                    let ended = self
                        .pump(
                            &mut peer,
                            states,
                            &mut video,
                            audio.as_mut(),
                            &mut stop,
                            &mut backoff,
                        )
                        .await;
                    peer.close().await;
                    let close = ClientMsg::MediaClose { id: 0, media };
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), self.client.request(close))
                            .await;
                    match ended {
                        Ended::Stop => return,
                        Ended::Retry(why) => self
                            .out
                            .warning(&format!("publishing interrupted ({why}); publishing again")),
                    }
                }
                Err(Fatal(why)) => {
                    self.out.warning(&format!("cannot publish: {why}"));
                    // Nothing will change by retrying: idle until stopped.
                    let _ = stop.await;
                    return;
                }
                Err(Retry(why)) => {
                    self.out.warning(&format!(
                        "cannot publish ({why}); retrying in {} s",
                        backoff.as_secs()
                    ));
                }
            }
            // Wait, discarding what the encoder produces meanwhile.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    _ = &mut stop => return,
                    _ = video.recv() => {}
                    Some(_) = async { match audio.as_mut() { Some(a) => a.recv().await, None => None } } => {}
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One offer/answer: a new peer, `publish`, the answer applied.
    async fn negotiate(
        &self,
        audio: bool,
    ) -> Result<
        (
            Peer,
            mpsc::UnboundedReceiver<RTCPeerConnectionState>,
            String,
        ),
        AttemptError,
    > {
        let ip = local_ip_towards(&self.node)
            .await
            .map_err(|e| Retry(format!("no route to {}: {e}", self.node)))?;
        let bounds = {
            let rate = self
                .rate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (start, min, max) = rate.planner.estimator_bounds();
            // A new connection over the same link starts where the last one ended.
            Bounds {
                start: rate.last_estimate.unwrap_or(start).clamp(min, max),
                min,
                max,
            }
        };
        let (mut peer, offer, states) = Peer::offer(ip, self.codec, &self.rids, audio, bounds)
            .await
            .map_err(Retry)?;
        tracing::debug!(%offer, "publish offer");
        let msg = ClientMsg::Publish {
            id: 0,
            stream: None,
            kind: StreamKind::Camera,
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
                    } => Fatal(e.to_string()),
                    ClientError::Closed => Fatal(e.to_string()),
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
        if let Err(e) = peer.answer(sdp.to_owned(), self.keyframe.clone()).await {
            peer.close().await;
            let _ = self
                .client
                .request(ClientMsg::MediaClose {
                    id: 0,
                    media: media.to_owned(),
                })
                .await;
            return Err(Retry(e));
        }
        self.out.emit(&json!({
            "kind": "publishing",
            "stream": data["stream"],
            "media": media,
            "encoder": self.encoder,
            "audio": audio,
            "layers": self.rids.iter().flatten().collect::<Vec<_>>(),
        }));
        Ok((peer, states, media.to_owned()))
    }

    /// Applies congestion control's estimate to the encoders; prints a `bitrate` line when what
    /// is sent changes. Returns which layers are on.
    fn retune(&self, estimate_bps: f64) -> Vec<bool> {
        let mut rate = self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(plan) = rate.update(estimate_bps) {
            let layers: Vec<serde_json::Value> = plan
                .layers
                .iter()
                .zip(&self.rids)
                .map(|(kbps, rid)| json!({"rid": rid, "on": kbps.is_some(), "kbps": kbps}))
                .collect();
            let line = json!({
                "kind": "bitrate",
                "estimate_kbps": (estimate_bps / 1000.0).round() as u64,
                "audio_kbps": plan.audio_kbps,
                "video": plan.video_on(),
                "layers": layers,
            });
            self.out.emit_as(&line, || {
                let on: Vec<String> = plan
                    .layers
                    .iter()
                    .zip(&self.rids)
                    .filter_map(|(k, r)| {
                        k.map(|k| format!("{} {k}", r.as_deref().unwrap_or("video")))
                    })
                    .collect();
                format!(
                    "bitrate: estimate {} kbit/s; audio {}; video {}",
                    (estimate_bps / 1000.0).round(),
                    plan.audio_kbps,
                    if on.is_empty() {
                        "paused".to_owned()
                    } else {
                        on.join(", ")
                    }
                )
            });
        }
        rate.applied.as_ref().map(Plan::active).unwrap_or_default()
    }

    /// Moves frames into the peer until it fails, the signaling session is a new one, or stop.
    async fn pump(
        &self,
        peer: &mut Peer,
        mut states: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
        video: &mut mpsc::Receiver<(usize, Frame)>,
        mut audio: Option<&mut mpsc::Receiver<Frame>>,
        stop: &mut oneshot::Receiver<()>,
        backoff: &mut Duration,
    ) -> Ended {
        let session = self.client.session().session;
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let mut disconnected_since: Option<Instant> = None;
        let mut connected = false;
        let estimate = peer.estimate();
        let mut active = self.retune(estimate.bps());
        loop {
            tokio::select! {
                _ = &mut *stop => return Ended::Stop,
                // Frames before DTLS completes have no SRTP keys: they are dropped here. Frames of
                // layers congestion control switched off are not sent.
                f = video.recv() => match f {
                    Some((layer, (data, d))) => {
                        if connected && active.get(layer).copied().unwrap_or(false) {
                            peer.write_video(layer, data, d).await;
                        }
                    }
                    None => return Ended::Retry("the video source ended".to_owned()),
                },
                Some((data, d)) = async { match audio.as_deref_mut() { Some(a) => a.recv().await, None => None } } => {
                    if connected {
                        peer.write_audio(data, d).await;
                    }
                }
                st = states.recv() => match st {
                    Some(RTCPeerConnectionState::Connected) => {
                        connected = true;
                        disconnected_since = None;
                        *backoff = BACKOFF_MIN;
                        (self.keyframe)();
                    }
                    Some(RTCPeerConnectionState::Disconnected) => {
                        disconnected_since.get_or_insert_with(Instant::now);
                    }
                    Some(s @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)) => {
                        return Ended::Retry(format!("peer connection {s}"));
                    }
                    Some(_) => {}
                    None => return Ended::Retry("peer connection gone".to_owned()),
                },
                _ = check.tick() => {
                    let now_active = self.retune(estimate.bps());
                    if now_active.iter().zip(&active).any(|(now, was)| *now && !*was) {
                        // A layer came back: its viewers need a keyframe to switch to it.
                        (self.keyframe)();
                    }
                    active = now_active;
                    let now = self.client.session();
                    if now.session != session {
                        return Ended::Retry("new signaling session".to_owned());
                    }
                    if disconnected_since.is_some_and(|t| t.elapsed() >= DISCONNECTED_GRACE) {
                        return Ended::Retry(format!("peer connection disconnected for {} s", DISCONNECTED_GRACE.as_secs()));
                    }
                }
            }
        }
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
    fn sources_parse() {
        assert_eq!("camera".parse(), Ok(Source::Camera));
        assert_eq!("test".parse(), Ok(Source::Test));
        assert_eq!(
            "file:/tmp/a.mp4".parse(),
            Ok(Source::File("/tmp/a.mp4".into()))
        );
        assert!("file:".parse::<Source>().is_err());
        assert!("webcam".parse::<Source>().is_err());
    }

    #[test]
    fn encoder_choice_falls_back_to_software_and_says_why() {
        let has = |e: &str| e == "x264enc" || e == "opusenc";
        let r = choose_encoder(None, None, &has).unwrap();
        assert_eq!(
            (
                r.device.as_str(),
                r.link.as_str(),
                r.encoder.element.as_str()
            ),
            ("tablet-software", "wifi", "x264enc")
        );
        let (layers, caps) = plan_layers(&r, Picture::default());
        assert_eq!(
            caps.iter()
                .map(|c| c.rid.as_deref().unwrap())
                .collect::<Vec<_>>(),
            ["high", "mid", "low"]
        );
        let note = encoder_note(&r, &layers);
        assert!(note.starts_with("encoder x264enc (software, h264) from profile tablet-software on link wifi: simulcast 640x480 at 1800 kbit/s, 320x240 at 600 kbit/s, 160x120 at 200 kbit/s"), "{note}");

        let r = choose_encoder(Some("tablet-x86-vaapi"), Some("4g-good"), &has).unwrap();
        assert_eq!(r.encoder.element, "x264enc");
        let (layers, _) = plan_layers(&r, Picture::default());
        let note = encoder_note(&r, &layers);
        assert!(
            note.contains("; skipped vah264enc") && note.contains("not installed on this machine"),
            "{note}"
        );

        assert!(matches!(
            choose_encoder(Some("no-such-tablet"), None, &has),
            Err(Unavailable::Profile(_))
        ));
        assert!(matches!(
            choose_encoder(None, Some("carrier-pigeon"), &has),
            Err(Unavailable::Profile(_))
        ));
    }
}
