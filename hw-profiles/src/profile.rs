//! The profile data model, exactly as the TOML files spell it. Every struct refuses unknown keys.
//! Parsing only checks shapes and types; [`crate::validate`] checks meaning.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::elements::Codec;

/// A loaded profile: a device class or a link class.
#[derive(Debug, Clone, PartialEq)]
pub enum Profile {
    /// A tablet, a video-wall decoder host or a drone camera.
    Device(DeviceProfile),
    /// A network link class with its bitrate ladder.
    Link(LinkClass),
}

impl Profile {
    /// The profile's name (its file name without `.toml`).
    pub fn name(&self) -> &str {
        match self {
            Profile::Device(d) => &d.name,
            Profile::Link(l) => &l.name,
        }
    }

    /// The device profile, if this is one.
    pub fn as_device(&self) -> Option<&DeviceProfile> {
        match self {
            Profile::Device(d) => Some(d),
            Profile::Link(_) => None,
        }
    }

    /// The link class, if this is one.
    pub fn as_link(&self) -> Option<&LinkClass> {
        match self {
            Profile::Link(l) => Some(l),
            Profile::Device(_) => None,
        }
    }
}

/// What sort of device a [`DeviceProfile`] describes (the `kind` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// A field tablet: captures, encodes and publishes; decodes the streams it subscribes to.
    Tablet,
    /// A video-wall decoder host: decodes many tiles.
    WallDecoder,
    /// A drone camera as seen by the drone bridge: RTSP/RTP in, maybe transcoded, published.
    DroneCamera,
}

impl DeviceKind {
    /// The `kind` value in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Tablet => "tablet",
            DeviceKind::WallDecoder => "wall-decoder",
            DeviceKind::DroneCamera => "drone-camera",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device class: its encoder and decoder preference chains plus kind-specific sections.
///
/// Which sections are required depends on [`DeviceKind`]: a tablet needs `capture`,
/// `video.encoders` and `video.decoders`; a wall decoder needs `wall` and `video.decoders`; a drone
/// camera needs `capture`, `camera` and `ingest`, plus both chains when some ingest transcodes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// The profile name: the file name without `.toml` (not a TOML key).
    #[serde(skip)]
    pub name: String,
    /// What sort of device this is.
    pub kind: DeviceKind,
    /// One line for people choosing a profile.
    pub description: String,
    /// Nominal picture the device captures (tablets) or the camera sends (drones).
    #[serde(default)]
    pub capture: Option<Capture>,
    /// Encoder and decoder preference chains, best first.
    #[serde(default)]
    pub video: VideoChains,
    /// Wall decoder hosts only.
    #[serde(default)]
    pub wall: Option<WallSettings>,
    /// Drone cameras only: how the camera is reached.
    #[serde(default)]
    pub camera: Option<CameraSettings>,
    /// Drone cameras only: one entry per codec the camera may send.
    #[serde(default)]
    pub ingest: Vec<Ingest>,
}

/// Nominal capture format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Width in pixels (even, 16–7680).
    pub width: u32,
    /// Height in pixels (even, 16–4320).
    pub height: u32,
    /// Frames per second (1–120).
    pub framerate: u32,
}

/// Encoder and decoder chains: ordered preference lists, hardware first, software fallbacks last.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoChains {
    /// Encoders, best first (`[[video.encoders]]`).
    #[serde(default)]
    pub encoders: Vec<ChainEntry>,
    /// Decoders, best first (`[[video.decoders]]`).
    #[serde(default)]
    pub decoders: Vec<ChainEntry>,
}

/// One encoder or decoder in a chain.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainEntry {
    /// GStreamer element factory name; must be in [`crate::KNOWN_ELEMENTS`].
    pub element: String,
    /// The codec it encodes or decodes; must be one the element handles.
    pub codec: Codec,
    /// Whether it is a hardware element; must agree with the registry.
    pub hardware: bool,
    /// Element properties in file order. String values may hold placeholders (encoders only):
    /// `{bitrate_kbps}`, `{bitrate_bps}`, `{keyframe_frames}`; see [`crate::PLACEHOLDERS`].
    #[serde(default)]
    pub properties: Properties,
    /// Encoders only: a caps filter placed right after the encoder, e.g.
    /// `video/x-h264,profile=constrained-baseline`. Must start with the codec's media type.
    #[serde(default)]
    pub caps: Option<String>,
    /// Encoders only: the converter placed before the encoder (default `videoconvert`).
    #[serde(default)]
    pub convert: Option<String>,
    /// Free text for people (why this entry, what was or was not tested).
    #[serde(default)]
    pub notes: Option<String>,
}

/// A property value as written in TOML.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    /// A string; may contain placeholders.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float (must be finite).
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for PropValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropValue::Str(s) => write!(f, "{s:?}"),
            PropValue::Int(i) => write!(f, "{i}"),
            PropValue::Float(x) => write!(f, "{x}"),
            PropValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl<'de> Deserialize<'de> for PropValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PropValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, integer, float or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PropValue, E> {
                Ok(PropValue::Str(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PropValue, E> {
                Ok(PropValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PropValue, E> {
                i64::try_from(v)
                    .map(PropValue::Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PropValue, E> {
                Ok(PropValue::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PropValue, E> {
                Ok(PropValue::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Element properties, in the order the file lists them (so rendered pipelines read like the file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties(pub Vec<(String, PropValue)>);

impl Properties {
    /// Iterates over `(name, value)` pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PropValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of property `name`, if set.
    pub fn get(&self, name: &str) -> Option<&PropValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Properties;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of element properties")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Properties, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, PropValue>()? {
                    out.push((k, v));
                }
                Ok(Properties(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Wall decoder host settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WallSettings {
    /// How many tiles this host decodes at once (1–64).
    pub max_tiles: u32,
    /// The tallest picture one tile should ask the SFU for when the wall is full (the `maxHeight`
    /// of a subscribe), 120–4320.
    pub max_tile_height: u32,
}

/// How a drone camera is reached.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSettings {
    /// Transports the camera offers, in preference order (`rtsp`, `rtp`).
    pub protocols: Vec<CameraProtocol>,
    /// Jitter-buffer latency for the camera leg (`rtspsrc latency=` / `rtpjitterbuffer`), ≤ 5000.
    pub latency_ms: u32,
}

/// Camera transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraProtocol {
    /// RTSP (pulled with `rtspsrc`).
    Rtsp,
    /// Plain RTP over UDP (pushed by the camera to `udpsrc`).
    Rtp,
}

/// How the drone bridge ingests one codec a camera may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    /// The codec the camera sends (`h264` or `h265`).
    pub codec: Codec,
    /// RTP depayloader for it (`rtph264depay`).
    pub depay: String,
    /// Parser for it (`h264parse`).
    pub parse: String,
    /// Whether it is decoded and re-encoded (with `video.decoders` / `video.encoders`) before
    /// publishing. Required for H.265: the SFU forwards only H.264 and VP8.
    pub transcode: bool,
}

/// The `kind` key of a link class file: always `link`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A link class.
    Link,
}

/// A network link class: what a tablet or bridge may send over it, and how to behave when the
/// bandwidth estimate falls.
///
/// `expected_rtt_ms`, `expected_jitter_ms` and `expected_loss_percent` describe the link as
/// measured or specified; they are used for defaults only (see [`LinkClass::jitter_buffer_ms`],
/// [`LinkClass::opus_packet_loss_percent`]), never as limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkClass {
    /// The profile name: the file name without `.toml` (not a TOML key).
    #[serde(skip)]
    pub name: String,
    /// Always `link`.
    pub kind: LinkKind,
    /// One line for people choosing a class.
    pub description: String,
    /// Typical round-trip time, ms (1–5000).
    pub expected_rtt_ms: u32,
    /// Typical jitter, ms (0–2000).
    pub expected_jitter_ms: u32,
    /// Typical packet loss, percent (0–50).
    pub expected_loss_percent: f64,
    /// Keyframe interval for encoders, seconds (1–30); renders `{keyframe_frames}`.
    pub keyframe_interval_s: u32,
    /// Video ladder and simulcast layers.
    pub video: LinkVideo,
    /// Opus settings and the audio-first rule.
    pub audio: LinkAudio,
}

/// Video settings of a link class.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkVideo {
    /// Single-stream bitrate ladder, kbit/s, strictly rising. The sender steps between rungs as
    /// its bandwidth estimate moves (see [`LinkClass::split_budget`]).
    pub ladder_kbps: Vec<u32>,
    /// The rung to start on (one of `ladder_kbps`).
    pub start_kbps: u32,
    /// Simulcast layers, full size first; empty means publish a single stream. 0 or 2–4 layers.
    #[serde(default)]
    pub simulcast: Vec<SimulcastLayer>,
}

/// One simulcast layer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulcastLayer {
    /// RTP stream id (RFC 8851 syntax: letters, digits, `-`, `_`; 1–16 characters).
    pub rid: String,
    /// Picture size divisor (≥ 1, rising from layer to layer; the first layer is 1).
    pub scale_down_by: f64,
    /// Bitrate cap, kbit/s (falling from layer to layer).
    pub max_bitrate_kbps: u32,
}

/// Audio settings of a link class. Audio is always Opus.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkAudio {
    /// Opus bitrate, kbit/s (6–510).
    pub bitrate_kbps: u32,
    /// The lowest Opus may go when the link is short and audio is not first (6–`bitrate_kbps`).
    /// Must be absent when `audio_first` is true: audio then keeps its bitrate.
    #[serde(default)]
    pub min_bitrate_kbps: Option<u32>,
    /// Opus frame duration, ms: 10, 20, 40 or 60 (longer frames cost less header on slow links).
    pub frame_ms: u32,
    /// Audio-first rule: audio keeps its full bitrate whatever the estimate; video takes what is
    /// left and pauses below `video_pause_below_kbps`.
    pub audio_first: bool,
    /// With `audio_first`: pause video when its share of the estimate falls below this many
    /// kbit/s (at most the lowest ladder rung). Must be absent otherwise.
    #[serde(default)]
    pub video_pause_below_kbps: Option<u32>,
}
