//! Choosing elements for this machine: pure functions of a validated profile, a link class and
//! what the caller says is installed (`has_element`, typically a GStreamer registry lookup done
//! by the caller). Nothing here probes devices or talks to GStreamer.

use std::fmt;

use crate::elements::{known_element, BitrateUnit, Codec};
use crate::error::ResolveError;
use crate::profile::{ChainEntry, DeviceKind, DeviceProfile, LinkClass, PropValue};
use crate::validate::{split_placeholders, Piece};

/// Why an element better placed in the chain than the chosen one was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// `has_element` said the element is not installed.
    NotInstalled,
    /// The caller preferred another codec.
    CodecNotWanted {
        /// The element's codec.
        codec: Codec,
        /// The codec the caller asked for.
        wanted: Codec,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotInstalled => f.write_str("not installed on this machine"),
            SkipReason::CodecNotWanted { codec, wanted } => {
                write!(f, "codec {codec} not wanted ({wanted} preferred)")
            }
        }
    }
}

/// A chain element that was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Element factory name.
    pub element: String,
    /// Its codec.
    pub codec: Codec,
    /// Whether it is hardware.
    pub hardware: bool,
    /// Why it was passed over.
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hw = if self.hardware {
            "hardware"
        } else {
            "software"
        };
        write!(f, "{} ({hw} {}): {}", self.element, self.codec, self.reason)
    }
}

/// The encoder chosen for this machine, with its properties rendered for one bitrate.
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenEncoder {
    /// Element factory name.
    pub element: String,
    /// Codec it produces.
    pub codec: Codec,
    /// Whether it is hardware.
    pub hardware: bool,
    /// Converter to put before it (`videoconvert` unless the profile says otherwise).
    pub convert: String,
    /// Caps filter after it, if any.
    pub caps: Option<String>,
    /// The bitrate the properties below were rendered for, kbit/s.
    pub bitrate_kbps: u32,
    /// Keyframe interval in frames used for `{keyframe_frames}`.
    pub keyframe_frames: u32,
    /// Properties with placeholders filled in, in file order.
    pub properties: Vec<(String, String)>,
    /// gst-launch-style fragment: encoder, properties, caps filter and parser, e.g.
    /// `x264enc tune=zerolatency bitrate=1500 key-int-max=60 ! h264parse`. Feed it raw video.
    pub pipeline: String,
    entry: ChainEntry,
}

impl ChosenEncoder {
    fn new(entry: &ChainEntry, bitrate_kbps: u32, keyframe_frames: u32) -> ChosenEncoder {
        let properties = render_properties(entry, bitrate_kbps, keyframe_frames);
        let pipeline = fragment(entry, &properties);
        ChosenEncoder {
            element: entry.element.clone(),
            codec: entry.codec,
            hardware: entry.hardware,
            convert: entry
                .convert
                .clone()
                .unwrap_or_else(|| "videoconvert".to_owned()),
            caps: entry.caps.clone(),
            bitrate_kbps,
            keyframe_frames,
            properties,
            pipeline,
            entry: entry.clone(),
        }
    }

    /// The same encoder rendered for another bitrate (a ladder rung or a simulcast layer).
    pub fn at_bitrate(&self, bitrate_kbps: u32) -> ChosenEncoder {
        ChosenEncoder::new(&self.entry, bitrate_kbps, self.keyframe_frames)
    }

    /// The property that sets the bitrate on a running encoder, with its value for
    /// `bitrate_kbps`, when it is a plain number property (`x264enc bitrate`, `openh264enc
    /// bitrate`, `vp8enc target-bitrate`, `nvv4l2h264enc bitrate`…). `None` when the bitrate sits
    /// inside a structure such as `v4l2h264enc extra-controls`: rebuild the encoder instead.
    pub fn live_bitrate(&self, bitrate_kbps: u32) -> Option<(&'static str, u64)> {
        let (prop, unit) = known_element(&self.element)?.bitrate?;
        match self.entry.properties.get(prop)? {
            PropValue::Str(s) if s == unit.placeholder() => {}
            _ => return None,
        }
        let v = match unit {
            BitrateUnit::Kbps => u64::from(bitrate_kbps),
            BitrateUnit::Bps => u64::from(bitrate_kbps) * 1000,
        };
        Some((prop, v))
    }
}

/// One simulcast layer to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    /// RTP stream id.
    pub rid: String,
    /// Picture size divisor.
    pub scale_down_by: f64,
    /// Width of this layer (capture width / scale, rounded down to even, at least 16).
    pub width: u32,
    /// Height of this layer (likewise).
    pub height: u32,
    /// Bitrate cap, kbit/s.
    pub max_bitrate_kbps: u32,
    /// The encoder rendered for this layer's bitrate.
    pub encoder: ChosenEncoder,
    /// gst-launch-style fragment: scale, caps, encoder, e.g.
    /// `videoscale ! video/x-raw,width=640,height=360 ! x264enc … ! h264parse`.
    pub pipeline: String,
}

/// Opus settings for a link.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioSettings {
    /// Opus bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// The lowest Opus may go under pressure (equals `bitrate_kbps` on audio-first links).
    pub min_bitrate_kbps: u32,
    /// Frame duration, ms.
    pub frame_ms: u32,
    /// Opus in-band FEC: on when the link's expected loss is above 0.
    pub inband_fec: bool,
    /// `packet-loss-percentage` for opusenc: the link's expected loss, rounded up.
    pub packet_loss_percent: u32,
    /// Audio-first rule in force.
    pub audio_first: bool,
    /// With the audio-first rule: video pauses when its share falls below this, kbit/s.
    pub video_pause_below_kbps: Option<u32>,
    /// gst-launch-style fragment, e.g.
    /// `opusenc bitrate=32000 frame-size=20 inband-fec=true packet-loss-percentage=2 audio-type=voice`.
    pub pipeline: String,
}

/// What to run on this machine for one device profile over one link class.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// Device profile name.
    pub device: String,
    /// Link class name.
    pub link: String,
    /// The encoder, rendered for the link's `start_kbps` (single-stream publishing).
    pub encoder: ChosenEncoder,
    /// Every element placed before the chosen one in the chain, with why it was passed over.
    pub skipped: Vec<Skipped>,
    /// Set when the caller preferred a codec that no installed encoder of the chain produces; the
    /// encoder is then the best installed one of any codec.
    pub preferred_codec_unavailable: Option<Codec>,
    /// Simulcast layers to publish, full size first; empty: publish one stream and walk the
    /// ladder.
    pub layers: Vec<LayerPlan>,
    /// The link's ladder, kbit/s, rising.
    pub ladder_kbps: Vec<u32>,
    /// Audio settings.
    pub audio: AudioSettings,
    /// Receive jitter-buffer latency default for this link, ms ([`LinkClass::jitter_buffer_ms`]).
    pub jitter_buffer_ms: u32,
}

/// A chosen decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenDecoder {
    /// Element factory name.
    pub element: String,
    /// Codec it decodes.
    pub codec: Codec,
    /// Whether it is hardware.
    pub hardware: bool,
    /// Elements placed before it in the chain that handle this codec, with why they were passed over.
    pub skipped: Vec<Skipped>,
    /// gst-launch-style fragment from RTP to raw video, e.g.
    /// `rtph264depay ! h264parse ! avdec_h264`.
    pub pipeline: String,
}

/// How a drone bridge ingests one codec from its camera.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestPlan {
    /// The camera's codec.
    pub codec: Codec,
    /// Decoder and encoder when the stream is transcoded.
    pub transcode: Option<(ChosenDecoder, Resolution)>,
    /// gst-launch-style fragment from RTP to the encoded stream to publish, e.g.
    /// `rtph264depay ! h264parse` or
    /// `rtph265depay ! h265parse ! avdec_h265 ! videoconvert ! x264enc … ! h264parse`.
    pub pipeline: String,
}

/// Quotes a rendered value for gst-launch when it holds anything but plain characters.
fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | ':' | '/'));
    if plain {
        v.to_owned()
    } else {
        let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    }
}

fn render_properties(
    e: &ChainEntry,
    bitrate_kbps: u32,
    keyframe_frames: u32,
) -> Vec<(String, String)> {
    e.properties
        .iter()
        .map(|(k, v)| {
            let rendered = match v {
                PropValue::Str(s) => match split_placeholders(s) {
                    Ok(pieces) => pieces
                        .iter()
                        .map(|p| match p {
                            Piece::Text(t) => (*t).to_owned(),
                            Piece::Placeholder("bitrate_kbps") => bitrate_kbps.to_string(),
                            Piece::Placeholder("bitrate_bps") => {
                                (u64::from(bitrate_kbps) * 1000).to_string()
                            }
                            Piece::Placeholder("keyframe_frames") => keyframe_frames.to_string(),
                            // Validation refuses other names; render them verbatim if unvalidated.
                            Piece::Placeholder(other) => format!("{{{other}}}"),
                        })
                        .collect(),
                    Err(_) => s.clone(),
                },
                PropValue::Int(i) => i.to_string(),
                PropValue::Float(x) => x.to_string(),
                PropValue::Bool(b) => b.to_string(),
            };
            (k.to_owned(), rendered)
        })
        .collect()
}

fn element_with_props(element: &str, props: &[(String, String)]) -> String {
    let mut s = element.to_owned();
    for (k, v) in props {
        s.push(' ');
        s.push_str(k);
        s.push('=');
        s.push_str(&quote(v));
    }
    s
}

fn fragment(e: &ChainEntry, props: &[(String, String)]) -> String {
    let mut s = element_with_props(&e.element, props);
    if let Some(caps) = &e.caps {
        s.push_str(" ! ");
        s.push_str(caps);
    }
    if let Some(parser) = e.codec.parser() {
        s.push_str(" ! ");
        s.push_str(parser);
    }
    s
}

fn keyframe_frames(device: &DeviceProfile, link: &LinkClass) -> u32 {
    let fps = device.capture.map_or(30, |c| c.framerate);
    fps.saturating_mul(link.keyframe_interval_s).max(1)
}

/// Chooses the encoder for `device` over `link` on a machine where `has_element` says which
/// elements are installed.
///
/// Walks `video.encoders` in order. With `prefer_codec`, elements of other codecs are passed over
/// ("codec vp8 not wanted"); if no installed element produces the preferred codec, the best
/// installed element of any codec is taken and `preferred_codec_unavailable` says so. Elements
/// `has_element` rejects are passed over as "not installed on this machine". Whether a hardware
/// element can actually open its device is not known here: the caller finds out when the pipeline
/// starts, and may call again with that element reported missing.
pub fn resolve(
    device: &DeviceProfile,
    link: &LinkClass,
    has_element: &dyn Fn(&str) -> bool,
    prefer_codec: Option<Codec>,
) -> Result<Resolution, ResolveError> {
    let chain = &device.video.encoders;
    if chain.is_empty() {
        return Err(ResolveError::NotApplicable {
            profile: device.name.clone(),
            what: format!(
                "a {} profile without video.encoders cannot publish",
                device.kind
            ),
        });
    }
    let installed: Vec<bool> = chain.iter().map(|e| has_element(&e.element)).collect();
    let wanted = |e: &ChainEntry| prefer_codec.is_none_or(|c| c == e.codec);

    let chosen = chain
        .iter()
        .zip(&installed)
        .position(|(e, &ok)| ok && wanted(e));
    let (index, preferred_codec_unavailable) = match chosen {
        Some(i) => (i, None),
        None => match installed.iter().position(|&ok| ok) {
            Some(i) => (i, prefer_codec),
            None => {
                let skipped = chain
                    .iter()
                    .map(|e| skipped(e, SkipReason::NotInstalled))
                    .collect();
                return Err(ResolveError::NothingUsable {
                    profile: device.name.clone(),
                    what: "encoder".to_owned(),
                    skipped,
                });
            }
        },
    };
    // Everything before the chosen element is either of an unwanted codec or not installed (an
    // installed element of the wanted codec would have been chosen).
    let skipped_list = chain[..index]
        .iter()
        .map(|e| {
            let reason = match prefer_codec {
                Some(w) if w != e.codec && preferred_codec_unavailable.is_none() => {
                    SkipReason::CodecNotWanted {
                        codec: e.codec,
                        wanted: w,
                    }
                }
                _ => SkipReason::NotInstalled,
            };
            skipped(e, reason)
        })
        .collect();

    let kf = keyframe_frames(device, link);
    let encoder = ChosenEncoder::new(&chain[index], link.video.start_kbps, kf);
    let layers = match device.capture {
        Some(cap) => link
            .video
            .simulcast
            .iter()
            .map(|l| {
                let scale = if l.scale_down_by.is_finite() && l.scale_down_by >= 1.0 {
                    l.scale_down_by
                } else {
                    1.0
                };
                let dim = |v: u32| (((f64::from(v) / scale) as u32) & !1).max(16);
                let (width, height) = (dim(cap.width), dim(cap.height));
                let enc = encoder.at_bitrate(l.max_bitrate_kbps);
                let pipeline = format!(
                    "videoscale ! video/x-raw,width={width},height={height} ! {}",
                    enc.pipeline
                );
                LayerPlan {
                    rid: l.rid.clone(),
                    scale_down_by: l.scale_down_by,
                    width,
                    height,
                    max_bitrate_kbps: l.max_bitrate_kbps,
                    encoder: enc,
                    pipeline,
                }
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Resolution {
        device: device.name.clone(),
        link: link.name.clone(),
        encoder,
        skipped: skipped_list,
        preferred_codec_unavailable,
        layers,
        ladder_kbps: link.video.ladder_kbps.clone(),
        audio: audio_settings(link),
        jitter_buffer_ms: link.jitter_buffer_ms(),
    })
}

fn skipped(e: &ChainEntry, reason: SkipReason) -> Skipped {
    Skipped {
        element: e.element.clone(),
        codec: e.codec,
        hardware: e.hardware,
        reason,
    }
}

fn audio_settings(link: &LinkClass) -> AudioSettings {
    let a = &link.audio;
    let packet_loss_percent = link.opus_packet_loss_percent();
    let inband_fec = packet_loss_percent > 0;
    let pipeline = format!(
        "opusenc bitrate={} frame-size={} inband-fec={inband_fec} packet-loss-percentage={packet_loss_percent} audio-type=voice",
        u64::from(a.bitrate_kbps) * 1000,
        a.frame_ms
    );
    AudioSettings {
        bitrate_kbps: a.bitrate_kbps,
        min_bitrate_kbps: if a.audio_first {
            a.bitrate_kbps
        } else {
            a.min_bitrate_kbps.unwrap_or(a.bitrate_kbps)
        },
        frame_ms: a.frame_ms,
        inband_fec,
        packet_loss_percent,
        audio_first: a.audio_first,
        video_pause_below_kbps: if a.audio_first {
            a.video_pause_below_kbps
        } else {
            None
        },
        pipeline,
    }
}

/// Chooses a decoder for `codec` from `device`'s `video.decoders` (tablets, wall decoder hosts,
/// and drone cameras for the transcode leg). Only entries of that codec are considered; those
/// passed over are listed with their reason.
pub fn resolve_decoder(
    device: &DeviceProfile,
    codec: Codec,
    has_element: &dyn Fn(&str) -> bool,
) -> Result<ChosenDecoder, ResolveError> {
    let candidates: Vec<&ChainEntry> = device
        .video
        .decoders
        .iter()
        .filter(|e| e.codec == codec)
        .collect();
    if candidates.is_empty() {
        return Err(ResolveError::NotApplicable {
            profile: device.name.clone(),
            what: format!("no {codec} decoder in video.decoders"),
        });
    }
    let mut skipped_list = Vec::new();
    for e in candidates {
        if !has_element(&e.element) {
            skipped_list.push(skipped(e, SkipReason::NotInstalled));
            continue;
        }
        let props = render_properties(e, 0, 0);
        let mut pipeline = codec.depayloader().to_owned();
        if let Some(parser) = codec.parser() {
            pipeline.push_str(" ! ");
            pipeline.push_str(parser);
        }
        pipeline.push_str(" ! ");
        pipeline.push_str(&element_with_props(&e.element, &props));
        return Ok(ChosenDecoder {
            element: e.element.clone(),
            codec,
            hardware: e.hardware,
            skipped: skipped_list,
            pipeline,
        });
    }
    Err(ResolveError::NothingUsable {
        profile: device.name.clone(),
        what: format!("{codec} decoder"),
        skipped: skipped_list,
    })
}

/// Plans how a drone bridge ingests `codec` from the camera of a drone-camera profile over
/// `link`: depayload and parse, and when the profile transcodes that codec, decode and re-encode
/// as an H.264 stream (or the best installed codec) at the link's bitrate.
pub fn resolve_ingest(
    device: &DeviceProfile,
    codec: Codec,
    link: &LinkClass,
    has_element: &dyn Fn(&str) -> bool,
) -> Result<IngestPlan, ResolveError> {
    if device.kind != DeviceKind::DroneCamera {
        return Err(ResolveError::NotApplicable {
            profile: device.name.clone(),
            what: format!("a {} profile has no camera ingest", device.kind),
        });
    }
    let Some(ing) = device.ingest.iter().find(|i| i.codec == codec) else {
        return Err(ResolveError::NoIngest {
            profile: device.name.clone(),
            codec,
        });
    };
    let mut pipeline = format!("{} ! {}", ing.depay, ing.parse);
    let transcode = if ing.transcode {
        let dec = resolve_decoder(device, codec, has_element)?;
        let enc = resolve(device, link, has_element, Some(Codec::H264))?;
        pipeline = format!(
            "{pipeline} ! {} ! {} ! {}",
            element_with_props(&dec.element, &[]),
            enc.encoder.convert,
            enc.encoder.pipeline
        );
        Some((dec, enc))
    } else {
        None
    };
    Ok(IngestPlan {
        codec,
        transcode,
        pipeline,
    })
}

/// What the link leaves for audio and video at a given bandwidth estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Opus bitrate to use, kbit/s.
    pub audio_kbps: u32,
    /// Video: a ladder rung, or paused.
    pub video: VideoBudget,
}

/// Video part of a [`Budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoBudget {
    /// Encode at this ladder rung, kbit/s.
    Rung(u32),
    /// Stop sending video (audio-first links only); resume when the estimate allows again.
    Paused,
}

impl LinkClass {
    /// Splits a bandwidth estimate (kbit/s) between audio and video.
    ///
    /// - Audio-first links: audio keeps `audio.bitrate_kbps` whatever the estimate; video gets
    ///   the rest: the highest rung that fits, the lowest rung if none fits, and
    ///   [`VideoBudget::Paused`] when the rest is below `audio.video_pause_below_kbps`.
    /// - Other links: while the estimate covers audio plus the lowest rung, audio keeps its
    ///   bitrate and video gets the highest rung that fits; below that, video holds the lowest
    ///   rung and audio gives way down to `audio.min_bitrate_kbps`. Video never pauses.
    pub fn split_budget(&self, estimate_kbps: u32) -> Budget {
        let a = &self.audio;
        let ladder = &self.video.ladder_kbps;
        let lowest = ladder.first().copied().unwrap_or(0);
        let rung_for = |budget: u32| {
            ladder
                .iter()
                .rev()
                .copied()
                .find(|&r| r <= budget)
                .unwrap_or(lowest)
        };
        if a.audio_first {
            let rest = estimate_kbps.saturating_sub(a.bitrate_kbps);
            let video = match a.video_pause_below_kbps {
                Some(p) if rest < p => VideoBudget::Paused,
                _ => VideoBudget::Rung(rung_for(rest)),
            };
            Budget {
                audio_kbps: a.bitrate_kbps,
                video,
            }
        } else if estimate_kbps >= a.bitrate_kbps.saturating_add(lowest) {
            Budget {
                audio_kbps: a.bitrate_kbps,
                video: VideoBudget::Rung(rung_for(estimate_kbps - a.bitrate_kbps)),
            }
        } else {
            let min = a
                .min_bitrate_kbps
                .unwrap_or(a.bitrate_kbps)
                .min(a.bitrate_kbps);
            let audio = estimate_kbps
                .saturating_sub(lowest)
                .clamp(min, a.bitrate_kbps);
            Budget {
                audio_kbps: audio,
                video: VideoBudget::Rung(lowest),
            }
        }
    }

    /// Default receive jitter-buffer latency for this link, ms: room for one retransmission
    /// (the expected RTT) plus twice the expected jitter, clamped to 50–2000 ms.
    pub fn jitter_buffer_ms(&self) -> u32 {
        self.expected_rtt_ms
            .saturating_add(self.expected_jitter_ms.saturating_mul(2))
            .clamp(50, 2000)
    }

    /// opusenc `packet-loss-percentage` default: the expected loss rounded up (0–100). In-band
    /// FEC is switched on whenever this is above 0.
    pub fn opus_packet_loss_percent(&self) -> u32 {
        let loss = self.expected_loss_percent;
        if loss.is_finite() && loss > 0.0 {
            loss.ceil().min(100.0) as u32
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("zerolatency"), "zerolatency");
        assert_eq!(
            quote("controls,video_bitrate=1500000"),
            "\"controls,video_bitrate=1500000\""
        );
        assert_eq!(quote("a \"b\""), "\"a \\\"b\\\"\"");
        assert_eq!(quote(""), "\"\"");
    }
}
