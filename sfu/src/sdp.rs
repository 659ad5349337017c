//! What the engine reads and writes of SDP beyond str0m: which codecs an answer offers (a
//! publisher's in the order its offer prefers them, a viewer's exactly the publisher's), which
//! codec an offer prefers, the first accepted mids of an answer, and the codecs a session
//! negotiated. Pure functions over strings and str0m configurations; no session state.

use std::collections::HashMap;

use str0m::format::{Codec, PayloadParams};
use str0m::media::Mid;
use str0m::{Rtc, RtcConfig};

/// The codecs a publisher's answer offers: H.264 (packetization-mode 1) and VP8 in the order
/// the offer prefers them (`h264_first`: see [`offer_prefers_h264`]), and Opus.
pub(crate) fn publisher_codecs(mut cfg: RtcConfig, h264_first: bool) -> RtcConfig {
    let codecs = cfg.codec_config();
    if !h264_first {
        codecs.enable_vp8(true);
    }
    // Packetization-mode 1 only: constrained baseline, baseline, main (what browsers and
    // hardware encoders send). PT/RTX pairs as browsers number them.
    codecs.add_h264(108.into(), Some(109.into()), true, 0x42e01f);
    codecs.add_h264(127.into(), Some(121.into()), true, 0x42001f);
    codecs.add_h264(123.into(), Some(119.into()), true, 0x4d001f);
    if h264_first {
        codecs.enable_vp8(true);
    }
    codecs.enable_opus(true, false);
    cfg
}

/// The codecs a viewer's answer offers: exactly `params`, the publisher's (no transcoding).
pub(crate) fn viewer_codecs<'a>(
    mut cfg: RtcConfig,
    params: impl Iterator<Item = &'a PayloadParams>,
) -> RtcConfig {
    let codecs = cfg.codec_config();
    for p in params {
        let s = p.spec();
        codecs.add_config(
            p.pt(),
            p.resend(),
            s.codec,
            s.clock_rate,
            s.channels,
            s.format,
        );
    }
    cfg
}

/// Whether the offer's first video m-line lists an H.264 payload type before any VP8 one.
pub(crate) fn offer_prefers_h264(sdp: &str) -> bool {
    let mut order: Vec<&str> = Vec::new();
    let mut in_first_video = false;
    let mut codec_of: HashMap<&str, String> = HashMap::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            if order.is_empty() && rest.starts_with("video ") {
                in_first_video = true;
                order = rest.split(' ').skip(3).collect();
            } else {
                in_first_video = false;
            }
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:").filter(|_| in_first_video) {
            if let Some((pt, enc)) = rest.split_once(' ') {
                let name = enc.split('/').next().unwrap_or("").to_ascii_uppercase();
                codec_of.insert(pt, name);
            }
        }
    }
    order
        .iter()
        .filter_map(|pt| codec_of.get(pt))
        .find(|c| *c == "H264" || *c == "VP8")
        .is_some_and(|c| c == "H264")
}

/// The first accepted (port not 0, not inactive) video and audio mids of an SDP answer.
pub(crate) fn first_mids(sdp: &str) -> (Option<Mid>, Option<Mid>) {
    let (mut video, mut audio) = (None, None);
    let mut current: Option<(&str, bool)> = None; // (kind, accepted)
    let mut flush = |kind: Option<(&str, bool)>, mid: Option<&str>| {
        if let (Some((kind, true)), Some(mid)) = (kind, mid) {
            let slot = if kind == "video" {
                &mut video
            } else if kind == "audio" {
                &mut audio
            } else {
                return;
            };
            if slot.is_none() {
                *slot = Some(Mid::from(mid));
            }
        }
    };
    let mut mid: Option<&str> = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            flush(current, mid);
            let mut parts = rest.split(' ');
            let kind = parts.next().unwrap_or("");
            let accepted = parts.next().is_some_and(|port| port != "0");
            current = Some((kind, accepted));
            mid = None;
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m);
        } else if line == "a=inactive" {
            if let Some((_, accepted)) = current.as_mut() {
                *accepted = false;
            }
        }
    }
    flush(current, mid);
    (video, audio)
}

/// The payload parameters negotiated for `mid`, in the local configuration's order.
pub(crate) fn negotiated(rtc: &Rtc, mid: Mid) -> Vec<PayloadParams> {
    let Some(media) = rtc.media(mid) else {
        return Vec::new();
    };
    let pts = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| pts.contains(&p.pt()))
        .filter(|p| matches!(p.spec().codec, Codec::H264 | Codec::Vp8 | Codec::Opus))
        .copied()
        .collect()
}
