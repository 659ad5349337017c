//! The registry of GStreamer elements yiwang knows: their kind, the codecs they handle, whether
//! they are hardware, which property carries the bitrate (and in which unit) and, where it could
//! be checked against `gst-inspect-1.0` (GStreamer 1.22 on Debian 12), their property names.
//!
//! A profile may only name elements listed here. Adding a platform means adding its elements
//! here first, then its profile. Nothing in this module touches GStreamer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A video codec a chain entry produces or consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// H.264 / AVC. Every viewer (browsers, walls, tablets) decodes it.
    H264,
    /// H.265 / HEVC. Drone cameras send it; the SFU does not forward it, so it is transcoded.
    H265,
    /// VP8. Browsers' default; software-encoded on most tablets.
    Vp8,
}

impl Codec {
    /// Every codec, in a fixed order.
    pub const ALL: [Codec; 3] = [Codec::H264, Codec::H265, Codec::Vp8];

    /// The codecs the SFU forwards (see `docs/media.md`): a publisher must send one of these.
    pub const FORWARDABLE: [Codec; 2] = [Codec::H264, Codec::Vp8];

    /// The name used in profiles and messages (`h264`, `h265`, `vp8`).
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Vp8 => "vp8",
        }
    }

    /// Whether the SFU forwards this codec.
    pub fn forwardable(self) -> bool {
        Codec::FORWARDABLE.contains(&self)
    }

    /// The caps media type of the encoded stream (`video/x-h264`, …).
    pub fn media_type(self) -> &'static str {
        match self {
            Codec::H264 => "video/x-h264",
            Codec::H265 => "video/x-h265",
            Codec::Vp8 => "video/x-vp8",
        }
    }

    /// The parser placed after an encoder and before a decoder, if the codec needs one.
    pub fn parser(self) -> Option<&'static str> {
        match self {
            Codec::H264 => Some("h264parse"),
            Codec::H265 => Some("h265parse"),
            Codec::Vp8 => None,
        }
    }

    /// The RTP depayloader for this codec.
    pub fn depayloader(self) -> &'static str {
        match self {
            Codec::H264 => "rtph264depay",
            Codec::H265 => "rtph265depay",
            Codec::Vp8 => "rtpvp8depay",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an element does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementKind {
    /// Raw video in, encoded video out.
    VideoEncoder,
    /// Encoded video in, raw video out.
    VideoDecoder,
    /// Byte-stream parser (`h264parse`).
    Parser,
    /// RTP depayloader (`rtph264depay`).
    Depayloader,
    /// Raw video converter/scaler placed before an encoder (`videoconvert`, `nvvidconv`).
    Converter,
    /// Audio encoder (`opusenc`).
    AudioEncoder,
    /// Audio decoder (`opusdec`).
    AudioDecoder,
}

impl ElementKind {
    /// A short human name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ElementKind::VideoEncoder => "video encoder",
            ElementKind::VideoDecoder => "video decoder",
            ElementKind::Parser => "parser",
            ElementKind::Depayloader => "RTP depayloader",
            ElementKind::Converter => "converter",
            ElementKind::AudioEncoder => "audio encoder",
            ElementKind::AudioDecoder => "audio decoder",
        }
    }
}

impl fmt::Display for ElementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The unit an encoder's bitrate property takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BitrateUnit {
    /// kbit/s: use the `{bitrate_kbps}` placeholder.
    Kbps,
    /// bit/s: use the `{bitrate_bps}` placeholder.
    Bps,
}

impl BitrateUnit {
    /// The placeholder that renders a bitrate in this unit.
    pub fn placeholder(self) -> &'static str {
        match self {
            BitrateUnit::Kbps => "{bitrate_kbps}",
            BitrateUnit::Bps => "{bitrate_bps}",
        }
    }
}

/// One element yiwang knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownElement {
    /// The GStreamer factory name (`x264enc`).
    pub name: &'static str,
    /// What it does.
    pub kind: ElementKind,
    /// The video codecs it handles (empty for converters and audio elements).
    pub codecs: &'static [Codec],
    /// Whether it drives a hardware block (VA-API, MPP, V4L2 M2M, NVENC/NVDEC…).
    pub hardware: bool,
    /// For encoders: the property that sets the bitrate, and its unit.
    pub bitrate: Option<(&'static str, BitrateUnit)>,
    /// The property names it accepts, when they were checked with `gst-inspect-1.0` here; `None`
    /// for hardware elements that could not be inspected on the machines this was written on (any
    /// property name is then accepted).
    pub properties: Option<&'static [&'static str]>,
}

impl KnownElement {
    /// Whether this element handles `codec`.
    pub fn handles(&self, codec: Codec) -> bool {
        self.codecs.contains(&codec)
    }
}

use BitrateUnit::{Bps, Kbps};
use Codec::{Vp8, H264, H265};
use ElementKind::*;

const fn hw(
    name: &'static str,
    kind: ElementKind,
    codecs: &'static [Codec],
    bitrate: Option<(&'static str, BitrateUnit)>,
) -> KnownElement {
    KnownElement {
        name,
        kind,
        codecs,
        hardware: true,
        bitrate,
        properties: None,
    }
}

const fn sw(
    name: &'static str,
    kind: ElementKind,
    codecs: &'static [Codec],
    bitrate: Option<(&'static str, BitrateUnit)>,
    properties: &'static [&'static str],
) -> KnownElement {
    KnownElement {
        name,
        kind,
        codecs,
        hardware: false,
        bitrate,
        properties: Some(properties),
    }
}

const X264ENC_PROPS: &[&str] = &[
    "analyse",
    "aud",
    "b-adapt",
    "b-pyramid",
    "bframes",
    "bitrate",
    "byte-stream",
    "cabac",
    "dct8x8",
    "frame-packing",
    "insert-vui",
    "interlaced",
    "intra-refresh",
    "ip-factor",
    "key-int-max",
    "mb-tree",
    "me",
    "min-force-key-unit-interval",
    "multipass-cache-file",
    "noise-reduction",
    "option-string",
    "pass",
    "pb-factor",
    "psy-tune",
    "qos",
    "qp-max",
    "qp-min",
    "qp-step",
    "quantizer",
    "rc-lookahead",
    "ref",
    "sliced-threads",
    "speed-preset",
    "sps-id",
    "subme",
    "sync-lookahead",
    "threads",
    "trellis",
    "tune",
    "vbv-buf-capacity",
    "weightb",
];
const OPENH264ENC_PROPS: &[&str] = &[
    "adaptive-quantization",
    "background-detection",
    "bitrate",
    "complexity",
    "deblocking",
    "enable-denoise",
    "enable-frame-skip",
    "gop-size",
    "max-bitrate",
    "max-slice-size",
    "min-force-key-unit-interval",
    "multi-thread",
    "num-slices",
    "qos",
    "qp-max",
    "qp-min",
    "rate-control",
    "scene-change-detection",
    "slice-mode",
    "usage-type",
];
const VP8ENC_PROPS: &[&str] = &[
    "arnr-maxframes",
    "arnr-strength",
    "arnr-type",
    "auto-alt-ref",
    "bits-per-pixel",
    "buffer-initial-size",
    "buffer-optimal-size",
    "buffer-size",
    "cpu-used",
    "cq-level",
    "deadline",
    "dropframe-threshold",
    "end-usage",
    "error-resilient",
    "horizontal-scaling-mode",
    "keyframe-max-dist",
    "keyframe-mode",
    "lag-in-frames",
    "max-intra-bitrate",
    "max-quantizer",
    "min-force-key-unit-interval",
    "min-quantizer",
    "multipass-cache-file",
    "multipass-mode",
    "noise-sensitivity",
    "overshoot",
    "qos",
    "resize-allowed",
    "resize-down-threshold",
    "resize-up-threshold",
    "sharpness",
    "static-threshold",
    "target-bitrate",
    "threads",
    "timebase",
    "token-partitions",
    "tuning",
    "twopass-vbr-bias",
    "twopass-vbr-maxsection",
    "twopass-vbr-minsection",
    "undershoot",
    "vertical-scaling-mode",
];
const OPUSENC_PROPS: &[&str] = &[
    "audio-type",
    "bandwidth",
    "bitrate",
    "bitrate-type",
    "complexity",
    "dtx",
    "frame-size",
    "hard-resync",
    "inband-fec",
    "mark-granule",
    "max-payload-size",
    "packet-loss-percentage",
    "perfect-timestamp",
    "tolerance",
];
const AVDEC_PROPS: &[&str] = &[
    "automatic-request-sync-point-flags",
    "automatic-request-sync-points",
    "debug-mv",
    "direct-rendering",
    "discard-corrupted-frames",
    "lowres",
    "max-errors",
    "max-threads",
    "min-force-key-unit-interval",
    "output-corrupt",
    "qos",
    "skip-frame",
    "std-compliance",
    "thread-type",
];
const OPENH264DEC_PROPS: &[&str] = &[
    "automatic-request-sync-point-flags",
    "automatic-request-sync-points",
    "discard-corrupted-frames",
    "max-errors",
    "min-force-key-unit-interval",
    "qos",
];
const VP8DEC_PROPS: &[&str] = &[
    "automatic-request-sync-point-flags",
    "automatic-request-sync-points",
    "deblocking-level",
    "discard-corrupted-frames",
    "max-errors",
    "min-force-key-unit-interval",
    "noise-level",
    "post-processing",
    "post-processing-flags",
    "qos",
    "threads",
];
const LIBDE265DEC_PROPS: &[&str] = &[
    "automatic-request-sync-point-flags",
    "automatic-request-sync-points",
    "discard-corrupted-frames",
    "max-errors",
    "max-threads",
    "min-force-key-unit-interval",
    "qos",
];

/// Every element yiwang knows. Hardware entries were written from the vendors' plugin docs and
/// could not be inspected here (no GPU, VPU or `/dev/dri` on the build machines).
pub const KNOWN_ELEMENTS: &[KnownElement] = &[
    // Software encoders (Debian: gstreamer1.0-plugins-ugly / -bad / -good).
    sw(
        "x264enc",
        VideoEncoder,
        &[H264],
        Some(("bitrate", Kbps)),
        X264ENC_PROPS,
    ),
    sw(
        "openh264enc",
        VideoEncoder,
        &[H264],
        Some(("bitrate", Bps)),
        OPENH264ENC_PROPS,
    ),
    sw(
        "vp8enc",
        VideoEncoder,
        &[Vp8],
        Some(("target-bitrate", Bps)),
        VP8ENC_PROPS,
    ),
    KnownElement {
        name: "x265enc",
        kind: VideoEncoder,
        codecs: &[H265],
        hardware: false,
        bitrate: Some(("bitrate", Kbps)),
        properties: None,
    },
    // Hardware encoders.
    hw("vah264enc", VideoEncoder, &[H264], Some(("bitrate", Kbps))),
    hw("vah265enc", VideoEncoder, &[H265], Some(("bitrate", Kbps))),
    hw(
        "vaapih264enc",
        VideoEncoder,
        &[H264],
        Some(("bitrate", Kbps)),
    ),
    hw(
        "vaapih265enc",
        VideoEncoder,
        &[H265],
        Some(("bitrate", Kbps)),
    ),
    hw("mpph264enc", VideoEncoder, &[H264], Some(("bps", Bps))),
    hw("mpph265enc", VideoEncoder, &[H265], Some(("bps", Bps))),
    hw("mppvp8enc", VideoEncoder, &[Vp8], Some(("bps", Bps))),
    hw(
        "v4l2h264enc",
        VideoEncoder,
        &[H264],
        Some(("extra-controls", Bps)),
    ),
    hw(
        "v4l2h265enc",
        VideoEncoder,
        &[H265],
        Some(("extra-controls", Bps)),
    ),
    hw(
        "v4l2vp8enc",
        VideoEncoder,
        &[Vp8],
        Some(("extra-controls", Bps)),
    ),
    hw(
        "nvv4l2h264enc",
        VideoEncoder,
        &[H264],
        Some(("bitrate", Bps)),
    ),
    hw(
        "nvv4l2h265enc",
        VideoEncoder,
        &[H265],
        Some(("bitrate", Bps)),
    ),
    hw("nvh264enc", VideoEncoder, &[H264], Some(("bitrate", Kbps))),
    // Software decoders (gstreamer1.0-libav, -bad, -good).
    sw("avdec_h264", VideoDecoder, &[H264], None, AVDEC_PROPS),
    sw("avdec_h265", VideoDecoder, &[H265], None, AVDEC_PROPS),
    sw("avdec_vp8", VideoDecoder, &[Vp8], None, AVDEC_PROPS),
    sw(
        "openh264dec",
        VideoDecoder,
        &[H264],
        None,
        OPENH264DEC_PROPS,
    ),
    sw("vp8dec", VideoDecoder, &[Vp8], None, VP8DEC_PROPS),
    sw(
        "libde265dec",
        VideoDecoder,
        &[H265],
        None,
        LIBDE265DEC_PROPS,
    ),
    // Hardware decoders.
    hw("vah264dec", VideoDecoder, &[H264], None),
    hw("vah265dec", VideoDecoder, &[H265], None),
    hw("vavp8dec", VideoDecoder, &[Vp8], None),
    hw("vaapih264dec", VideoDecoder, &[H264], None),
    hw("vaapih265dec", VideoDecoder, &[H265], None),
    hw("vaapivp8dec", VideoDecoder, &[Vp8], None),
    hw("mppvideodec", VideoDecoder, &[H264, H265, Vp8], None),
    hw("v4l2h264dec", VideoDecoder, &[H264], None),
    hw("v4l2h265dec", VideoDecoder, &[H265], None),
    hw("v4l2vp8dec", VideoDecoder, &[Vp8], None),
    hw("nvv4l2decoder", VideoDecoder, &[H264, H265, Vp8], None),
    hw("nvh264dec", VideoDecoder, &[H264], None),
    hw("nvh265dec", VideoDecoder, &[H265], None),
    // Parsers and depayloaders.
    sw(
        "h264parse",
        Parser,
        &[H264],
        None,
        &["config-interval", "update-timecode", "qos"],
    ),
    sw(
        "h265parse",
        Parser,
        &[H265],
        None,
        &["config-interval", "qos"],
    ),
    KnownElement {
        name: "rtph264depay",
        kind: Depayloader,
        codecs: &[H264],
        hardware: false,
        bitrate: None,
        properties: None,
    },
    KnownElement {
        name: "rtph265depay",
        kind: Depayloader,
        codecs: &[H265],
        hardware: false,
        bitrate: None,
        properties: None,
    },
    KnownElement {
        name: "rtpvp8depay",
        kind: Depayloader,
        codecs: &[Vp8],
        hardware: false,
        bitrate: None,
        properties: None,
    },
    // Converters placed before an encoder.
    sw("videoconvert", Converter, &[], None, &[]),
    hw("vapostproc", Converter, &[], None),
    hw("nvvidconv", Converter, &[], None),
    hw("v4l2convert", Converter, &[], None),
    // Audio.
    sw(
        "opusenc",
        AudioEncoder,
        &[],
        Some(("bitrate", Bps)),
        OPUSENC_PROPS,
    ),
    sw(
        "opusdec",
        AudioDecoder,
        &[],
        None,
        &["apply-gain", "plc", "stereo", "use-inband-fec"],
    ),
];

/// Looks an element up in [`KNOWN_ELEMENTS`] by its exact factory name.
pub fn known_element(name: &str) -> Option<&'static KnownElement> {
    KNOWN_ELEMENTS.iter().find(|e| e.name == name)
}

/// Whether `name` is a syntactically valid GStreamer element factory name: a lowercase ASCII
/// letter, then lowercase letters, digits, `_` or `-`, at most 64 characters.
pub fn is_valid_element_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// Whether `name` is a syntactically valid GObject property name: an ASCII letter, then letters,
/// digits, `_` or `-`, at most 64 characters.
pub fn is_valid_property_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_has_no_duplicates_and_valid_names() {
        for (i, e) in KNOWN_ELEMENTS.iter().enumerate() {
            assert!(is_valid_element_name(e.name), "{}", e.name);
            assert!(
                KNOWN_ELEMENTS[..i].iter().all(|o| o.name != e.name),
                "duplicate {}",
                e.name
            );
            if e.kind == VideoEncoder {
                assert!(e.bitrate.is_some(), "{} has no bitrate property", e.name);
                assert_eq!(e.codecs.len(), 1, "{} encodes one codec", e.name);
            }
            if let (Some((prop, _)), Some(props)) = (e.bitrate, e.properties) {
                assert!(
                    props.contains(&prop),
                    "{}: {prop} not in its property list",
                    e.name
                );
            }
        }
    }

    #[test]
    fn element_name_syntax() {
        assert!(is_valid_element_name("avdec_h264"));
        assert!(is_valid_element_name("nvv4l2h264enc"));
        assert!(!is_valid_element_name("mpph264enc "));
        assert!(!is_valid_element_name("X264enc"));
        assert!(!is_valid_element_name(""));
        assert!(!is_valid_element_name("4enc"));
        assert!(!is_valid_element_name("x264enc ! fakesink"));
    }
}
