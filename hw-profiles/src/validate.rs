//! Meaning checks on parsed profiles. Each check records an [`Issue`] naming the field path;
//! nothing here panics, whatever the input.

use crate::elements::{
    is_valid_element_name, is_valid_property_name, known_element, BitrateUnit, Codec, ElementKind,
    KnownElement,
};
use crate::error::Issue;
use crate::profile::{ChainEntry, DeviceKind, DeviceProfile, LinkClass, Profile, PropValue};

/// Placeholders a string property value of an encoder may hold, with what they render to.
///
/// - `{bitrate_kbps}`: the target bitrate in kbit/s (the link's `start_kbps` for a single stream,
///   a layer's `max_bitrate_kbps` for a simulcast layer);
/// - `{bitrate_bps}`: the same in bit/s;
/// - `{keyframe_frames}`: the keyframe interval in frames, capture framerate × the link's
///   `keyframe_interval_s`.
///
/// Braces are only allowed as part of a placeholder. Decoders take no placeholders. When an
/// encoder's registry entry names its bitrate property, that property must use the placeholder of
/// the right unit (`x264enc bitrate` is kbit/s, `openh264enc bitrate` is bit/s).
pub const PLACEHOLDERS: &[&str] = &["bitrate_kbps", "bitrate_bps", "keyframe_frames"];

/// A piece of a property string: literal text or a placeholder name.
#[derive(Debug, PartialEq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits a property string into literal text and placeholders; `Err` says what is wrong.
pub(crate) fn split_placeholders(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("{s:?} has a '}}' without '{{'"));
        }
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let Some(close) = after
            .find(['{', '}'])
            .filter(|&i| after[i..].starts_with('}'))
        else {
            return Err(format!("{s:?} has a '{{' without '}}'"));
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "{s:?} uses unknown placeholder {{{name}}} (known: {})",
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(Piece::Placeholder(name));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            field: field.into(),
            message: message.into(),
        });
    }

    fn range(&mut self, field: &str, value: u32, min: u32, max: u32) {
        if value < min || value > max {
            self.fail(field, format!("{value} is outside {min}..={max}"));
        }
    }

    fn text(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(field, "must not be empty");
        } else if value.chars().any(|c| c.is_control() && c != '\n') {
            self.fail(field, "must not contain control characters");
        }
    }
}

/// Validates a profile; returns every issue found (empty when valid).
pub(crate) fn check(profile: &Profile) -> Vec<Issue> {
    let mut c = Checker { issues: Vec::new() };
    match profile {
        Profile::Device(d) => check_device(&mut c, d),
        Profile::Link(l) => check_link(&mut c, l),
    }
    c.issues
}

fn check_device(c: &mut Checker, d: &DeviceProfile) {
    c.text("description", &d.description);
    let kind = d.kind;
    let must = |c: &mut Checker, present: bool, field: &str| {
        if !present {
            c.fail(field, format!("required for a {kind} profile"));
        }
    };
    let must_not = |c: &mut Checker, present: bool, field: &str| {
        if present {
            c.fail(field, format!("not allowed in a {kind} profile"));
        }
    };
    match kind {
        DeviceKind::Tablet => {
            must(c, d.capture.is_some(), "capture");
            must(c, !d.video.encoders.is_empty(), "video.encoders");
            must(c, !d.video.decoders.is_empty(), "video.decoders");
            must_not(c, d.wall.is_some(), "wall");
            must_not(c, d.camera.is_some(), "camera");
            must_not(c, !d.ingest.is_empty(), "ingest");
        }
        DeviceKind::WallDecoder => {
            must(c, d.wall.is_some(), "wall");
            must(c, !d.video.decoders.is_empty(), "video.decoders");
            must_not(c, !d.video.encoders.is_empty(), "video.encoders");
            must_not(c, d.capture.is_some(), "capture");
            must_not(c, d.camera.is_some(), "camera");
            must_not(c, !d.ingest.is_empty(), "ingest");
        }
        DeviceKind::DroneCamera => {
            must(c, d.capture.is_some(), "capture");
            must(c, d.camera.is_some(), "camera");
            must(c, !d.ingest.is_empty(), "ingest");
            must_not(c, d.wall.is_some(), "wall");
        }
    }

    if let Some(cap) = &d.capture {
        c.range("capture.width", cap.width, 16, 7680);
        c.range("capture.height", cap.height, 16, 4320);
        if cap.width % 2 == 1 {
            c.fail("capture.width", format!("{} must be even", cap.width));
        }
        if cap.height % 2 == 1 {
            c.fail("capture.height", format!("{} must be even", cap.height));
        }
        c.range("capture.framerate", cap.framerate, 1, 120);
    }
    if let Some(w) = &d.wall {
        c.range("wall.max_tiles", w.max_tiles, 1, 64);
        c.range("wall.max_tile_height", w.max_tile_height, 120, 4320);
    }
    if let Some(cam) = &d.camera {
        if cam.protocols.is_empty() {
            c.fail("camera.protocols", "must list at least one protocol");
        }
        for (i, p) in cam.protocols.iter().enumerate() {
            if cam.protocols[..i].contains(p) {
                c.fail(format!("camera.protocols[{i}]"), "listed twice");
            }
        }
        c.range("camera.latency_ms", cam.latency_ms, 0, 5000);
    }

    // Which codecs the chains must cover, and which they may hold.
    let transcoded: Vec<Codec> = d
        .ingest
        .iter()
        .filter(|i| i.transcode)
        .map(|i| i.codec)
        .collect();
    for (i, ing) in d.ingest.iter().enumerate() {
        let f = format!("ingest[{i}]");
        if d.ingest[..i].iter().any(|o| o.codec == ing.codec) {
            c.fail(
                format!("{f}.codec"),
                format!("codec {} has two ingest entries", ing.codec),
            );
        }
        if ing.codec == Codec::Vp8 {
            c.fail(format!("{f}.codec"), "drone cameras send h264 or h265");
        }
        check_named(
            c,
            &format!("{f}.depay"),
            &ing.depay,
            ElementKind::Depayloader,
            ing.codec,
        );
        check_named(
            c,
            &format!("{f}.parse"),
            &ing.parse,
            ElementKind::Parser,
            ing.codec,
        );
        if !ing.transcode && !ing.codec.forwardable() {
            c.fail(
                format!("{f}.transcode"),
                format!(
                    "must be true: the SFU forwards only h264 and vp8, so {} must be transcoded",
                    ing.codec
                ),
            );
        }
    }
    if kind == DeviceKind::DroneCamera {
        if transcoded.is_empty() {
            must_not(c, !d.video.encoders.is_empty(), "video.encoders");
            must_not(c, !d.video.decoders.is_empty(), "video.decoders");
        } else {
            if d.video.encoders.is_empty() {
                c.fail("video.encoders", "required: an ingest entry transcodes");
            }
            if d.video.decoders.is_empty() {
                c.fail("video.decoders", "required: an ingest entry transcodes");
            }
        }
    }

    check_chain(
        c,
        "video.encoders",
        &d.video.encoders,
        ElementKind::VideoEncoder,
    );
    check_chain(
        c,
        "video.decoders",
        &d.video.decoders,
        ElementKind::VideoDecoder,
    );

    // Codec coverage.
    for (i, e) in d.video.encoders.iter().enumerate() {
        if !e.codec.forwardable() {
            c.fail(
                format!("video.encoders[{i}].codec"),
                format!(
                    "{} cannot be published: the SFU forwards only h264 and vp8",
                    e.codec
                ),
            );
        }
    }
    if !d.video.encoders.is_empty() && !d.video.encoders.iter().any(|e| e.codec == Codec::H264) {
        c.fail("video.encoders", "must offer h264: every viewer decodes it");
    }
    for (i, e) in d.video.decoders.iter().enumerate() {
        let wanted = match kind {
            DeviceKind::DroneCamera => transcoded.contains(&e.codec),
            _ => e.codec.forwardable(),
        };
        if !wanted {
            let why = match kind {
                DeviceKind::DroneCamera => "no ingest entry transcodes it",
                _ => "the SFU never sends it (it forwards h264 and vp8)",
            };
            c.fail(
                format!("video.decoders[{i}].codec"),
                format!("a {} decoder is useless here: {why}", e.codec),
            );
        }
    }
    let need_decode: Vec<Codec> = match kind {
        DeviceKind::Tablet | DeviceKind::WallDecoder => Codec::FORWARDABLE.to_vec(),
        DeviceKind::DroneCamera => transcoded,
    };
    for codec in need_decode {
        if !d.video.decoders.is_empty() && !d.video.decoders.iter().any(|e| e.codec == codec) {
            c.fail("video.decoders", format!("has no {codec} decoder"));
        }
    }
}

/// Checks an element named by a plain string field (ingest depay/parse, encoder convert).
fn check_named(c: &mut Checker, field: &str, name: &str, kind: ElementKind, codec: Codec) {
    let Some(known) = check_element_name(c, field, name) else {
        return;
    };
    if known.kind != kind {
        c.fail(field, format!("{name} is a {}, not a {kind}", known.kind));
    } else if kind != ElementKind::Converter && !known.handles(codec) {
        c.fail(field, format!("{name} does not handle {codec}"));
    }
}

fn check_element_name(c: &mut Checker, field: &str, name: &str) -> Option<&'static KnownElement> {
    if !is_valid_element_name(name) {
        c.fail(
            field,
            format!("{name:?} is not a valid GStreamer element name"),
        );
        return None;
    }
    let known = known_element(name);
    if known.is_none() {
        c.fail(
            field,
            format!(
                "{name:?} is not an element yiwang knows (add it to hw_profiles::KNOWN_ELEMENTS \
                 first if it exists)"
            ),
        );
    }
    known
}

fn check_chain(c: &mut Checker, path: &str, chain: &[ChainEntry], kind: ElementKind) {
    let is_encoder = kind == ElementKind::VideoEncoder;
    let mut first_software: Option<usize> = None;
    for (i, e) in chain.iter().enumerate() {
        let f = format!("{path}[{i}]");
        if chain[..i]
            .iter()
            .any(|o| o.element == e.element && o.codec == e.codec)
        {
            c.fail(
                format!("{f}.element"),
                format!("{} is listed twice for {}", e.element, e.codec),
            );
        }
        if let Some(notes) = &e.notes {
            c.text(&format!("{f}.notes"), notes);
        }
        let known = check_element_name(c, &format!("{f}.element"), &e.element);
        if let Some(known) = known {
            if known.kind != kind {
                c.fail(
                    format!("{f}.element"),
                    format!("{} is a {}, not a {kind}", e.element, known.kind),
                );
            } else if !known.handles(e.codec) {
                let handles = known
                    .codecs
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                c.fail(
                    format!("{f}.codec"),
                    format!("{} handles {handles}, not {}", e.element, e.codec),
                );
            }
            if known.hardware != e.hardware {
                c.fail(
                    format!("{f}.hardware"),
                    format!(
                        "{} is {}a hardware element",
                        e.element,
                        if known.hardware { "" } else { "not " }
                    ),
                );
            }
        }
        check_properties(c, &f, e, known, is_encoder);

        match &e.caps {
            Some(_) if !is_encoder => c.fail(format!("{f}.caps"), "only encoders take caps"),
            Some(caps) => check_caps(c, &format!("{f}.caps"), caps, e.codec),
            None => {}
        }
        match &e.convert {
            Some(_) if !is_encoder => c.fail(format!("{f}.convert"), "only encoders take convert"),
            Some(conv) => {
                check_named(
                    c,
                    &format!("{f}.convert"),
                    conv,
                    ElementKind::Converter,
                    e.codec,
                );
                if !e.hardware && known_element(conv).is_some_and(|k| k.hardware) {
                    c.fail(
                        format!("{f}.convert"),
                        format!(
                            "{conv} outputs hardware memory; software encoder {} needs videoconvert",
                            e.element
                        ),
                    );
                }
            }
            None => {}
        }

        // Hardware first, software fallbacks last.
        if e.hardware {
            if let Some(sw) = first_software {
                c.fail(
                    format!("{f}.hardware"),
                    format!(
                        "hardware element {} comes after software element {} ({path}[{sw}]): \
                         the chain must end with its software fallbacks",
                        e.element, chain[sw].element
                    ),
                );
            }
        } else if first_software.is_none() {
            first_software = Some(i);
        }
    }
    for codec in Codec::ALL {
        if chain.iter().any(|e| e.codec == codec)
            && !chain.iter().any(|e| e.codec == codec && !e.hardware)
        {
            c.fail(path, format!("has no software {codec} fallback"));
        }
    }
}

fn check_caps(c: &mut Checker, field: &str, caps: &str, codec: Codec) {
    let media = codec.media_type();
    let ok_start = caps == media || caps.starts_with(&format!("{media},"));
    if !ok_start {
        c.fail(
            field,
            format!("{caps:?} must start with {media} (the entry's codec is {codec})"),
        );
    } else if caps
        .chars()
        .any(|ch| ch.is_whitespace() || matches!(ch, '!' | '"' | '\'' | '{' | '}'))
    {
        c.fail(
            field,
            format!("{caps:?} must not contain spaces, quotes, braces or '!'"),
        );
    }
}

fn check_properties(
    c: &mut Checker,
    f: &str,
    e: &ChainEntry,
    known: Option<&KnownElement>,
    is_encoder: bool,
) {
    let mut uses_bitrate = false;
    for (name, value) in e.properties.iter() {
        let pf = format!("{f}.properties.{name}");
        if !is_valid_property_name(name) {
            c.fail(&pf, format!("{name:?} is not a valid property name"));
            continue;
        }
        if let Some(props) = known.and_then(|k| k.properties) {
            if !props.contains(&name) {
                c.fail(&pf, format!("{} has no property {name:?}", e.element));
            }
        }
        let bitrate_prop = known.and_then(|k| k.bitrate).filter(|(p, _)| *p == name);
        match value {
            PropValue::Float(x) if !x.is_finite() => c.fail(&pf, "must be a finite number"),
            PropValue::Str(s) => {
                if s.chars().any(char::is_control) {
                    c.fail(&pf, "must not contain control characters");
                    continue;
                }
                let pieces = match split_placeholders(s) {
                    Ok(p) => p,
                    Err(msg) => {
                        c.fail(&pf, msg);
                        continue;
                    }
                };
                let placeholders: Vec<&str> = pieces
                    .iter()
                    .filter_map(|p| match p {
                        Piece::Placeholder(n) => Some(*n),
                        Piece::Text(_) => None,
                    })
                    .collect();
                if !placeholders.is_empty() && !is_encoder {
                    c.fail(&pf, "placeholders are only allowed in encoder properties");
                    continue;
                }
                if placeholders.iter().any(|p| p.starts_with("bitrate_")) {
                    uses_bitrate = true;
                }
                if let Some((_, unit)) = bitrate_prop {
                    let wrong = match unit {
                        BitrateUnit::Kbps => "bitrate_bps",
                        BitrateUnit::Bps => "bitrate_kbps",
                    };
                    if placeholders.contains(&wrong) {
                        c.fail(
                            &pf,
                            format!(
                                "{}'s {name} is in {}: use {} instead of {{{wrong}}}",
                                e.element,
                                match unit {
                                    BitrateUnit::Kbps => "kbit/s",
                                    BitrateUnit::Bps => "bit/s",
                                },
                                unit.placeholder()
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    if is_encoder && !uses_bitrate {
        let hint = known
            .and_then(|k| k.bitrate)
            .map(|(p, unit)| format!(" (set {p} = \"{}\")", unit.placeholder()))
            .unwrap_or_default();
        c.fail(
            format!("{f}.properties"),
            format!("no property uses the link's bitrate, so the ladder would be ignored{hint}"),
        );
    }
}

fn is_valid_rid(rid: &str) -> bool {
    (1..=16).contains(&rid.len())
        && rid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_link(c: &mut Checker, l: &LinkClass) {
    c.text("description", &l.description);
    c.range("expected_rtt_ms", l.expected_rtt_ms, 1, 5000);
    c.range("expected_jitter_ms", l.expected_jitter_ms, 0, 2000);
    if !(l.expected_loss_percent.is_finite() && (0.0..=50.0).contains(&l.expected_loss_percent)) {
        c.fail(
            "expected_loss_percent",
            format!("{} is outside 0..=50", l.expected_loss_percent),
        );
    }
    c.range("keyframe_interval_s", l.keyframe_interval_s, 1, 30);

    let ladder = &l.video.ladder_kbps;
    if ladder.is_empty() {
        c.fail("video.ladder_kbps", "must have at least one rung");
    }
    for (i, &r) in ladder.iter().enumerate() {
        c.range(&format!("video.ladder_kbps[{i}]"), r, 16, 50_000);
        if i > 0 && r <= ladder[i - 1] {
            c.fail(
                format!("video.ladder_kbps[{i}]"),
                format!(
                    "the ladder must rise: {r} is not above video.ladder_kbps[{}] = {}",
                    i - 1,
                    ladder[i - 1]
                ),
            );
        }
    }
    if !ladder.contains(&l.video.start_kbps) {
        c.fail(
            "video.start_kbps",
            format!("{} is not a rung of video.ladder_kbps", l.video.start_kbps),
        );
    }

    let layers = &l.video.simulcast;
    if layers.len() == 1 || layers.len() > 4 {
        c.fail(
            "video.simulcast",
            format!("has {} layers: use none or 2 to 4", layers.len()),
        );
    }
    let top = ladder.iter().copied().max().unwrap_or(0);
    for (i, layer) in layers.iter().enumerate() {
        let f = format!("video.simulcast[{i}]");
        if !is_valid_rid(&layer.rid) {
            c.fail(
                format!("{f}.rid"),
                format!(
                    "{:?} is not a valid RID (1-16 letters, digits, - or _)",
                    layer.rid
                ),
            );
        }
        if layers[..i].iter().any(|o| o.rid == layer.rid) {
            c.fail(format!("{f}.rid"), format!("{:?} is used twice", layer.rid));
        }
        let s = layer.scale_down_by;
        if !s.is_finite() || !(1.0..=16.0).contains(&s) {
            c.fail(
                format!("{f}.scale_down_by"),
                format!("{s} is outside 1..=16"),
            );
        }
        if i == 0 && s != 1.0 {
            c.fail(
                format!("{f}.scale_down_by"),
                "the first layer is the full picture: use 1",
            );
        }
        if i > 0 && s.partial_cmp(&layers[i - 1].scale_down_by) != Some(std::cmp::Ordering::Greater)
        {
            c.fail(
                format!("{f}.scale_down_by"),
                format!(
                    "{s} must be above the previous layer's {}",
                    layers[i - 1].scale_down_by
                ),
            );
        }
        c.range(
            &format!("{f}.max_bitrate_kbps"),
            layer.max_bitrate_kbps,
            16,
            50_000,
        );
        if layer.max_bitrate_kbps > top && top > 0 {
            c.fail(
                format!("{f}.max_bitrate_kbps"),
                format!(
                    "{} is above the ladder's top rung {top}",
                    layer.max_bitrate_kbps
                ),
            );
        }
        if i > 0 && layer.max_bitrate_kbps >= layers[i - 1].max_bitrate_kbps {
            c.fail(
                format!("{f}.max_bitrate_kbps"),
                format!(
                    "bitrates must fall from layer to layer: {} is not below {}",
                    layer.max_bitrate_kbps,
                    layers[i - 1].max_bitrate_kbps
                ),
            );
        }
    }

    let a = &l.audio;
    c.range("audio.bitrate_kbps", a.bitrate_kbps, 6, 510);
    if ![10, 20, 40, 60].contains(&a.frame_ms) {
        c.fail(
            "audio.frame_ms",
            format!("{} is not one of 10, 20, 40, 60", a.frame_ms),
        );
    }
    if a.audio_first {
        if a.min_bitrate_kbps.is_some() {
            c.fail(
                "audio.min_bitrate_kbps",
                "not allowed with audio_first: audio keeps its bitrate",
            );
        }
        match a.video_pause_below_kbps {
            None => c.fail(
                "audio.video_pause_below_kbps",
                "required with audio_first = true",
            ),
            Some(p) => {
                let lowest = ladder.first().copied().unwrap_or(0);
                if p > lowest {
                    c.fail(
                        "audio.video_pause_below_kbps",
                        format!("{p} is above the lowest ladder rung {lowest}"),
                    );
                }
            }
        }
    } else {
        if let Some(m) = a.min_bitrate_kbps {
            c.range("audio.min_bitrate_kbps", m, 6, a.bitrate_kbps.max(6));
        }
        if a.video_pause_below_kbps.is_some() {
            c.fail(
                "audio.video_pause_below_kbps",
                "only allowed with audio_first = true",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_split() {
        assert_eq!(
            split_placeholders("controls,video_bitrate={bitrate_bps}").unwrap(),
            vec![
                Piece::Text("controls,video_bitrate="),
                Piece::Placeholder("bitrate_bps")
            ]
        );
        assert_eq!(
            split_placeholders("{bitrate_kbps}").unwrap(),
            vec![Piece::Placeholder("bitrate_kbps")]
        );
        assert!(split_placeholders("{bitrate}")
            .unwrap_err()
            .contains("unknown placeholder {bitrate}"));
        assert!(split_placeholders("{bitrate_kbps").is_err());
        assert!(split_placeholders("a}b").is_err());
        assert!(split_placeholders("{{bitrate_kbps}}").is_err());
        assert_eq!(split_placeholders("").unwrap(), vec![]);
    }
}
