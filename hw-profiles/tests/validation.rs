//! Validation: every mutation of a good profile fails naming the file and the field.

mod common;

use common::{mutated_err, text};
use hw_profiles::{load, ProfileError, SHIPPED};

#[track_caller]
fn assert_mentions(err: &ProfileError, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(msg.contains(p), "{p:?} not in error:\n{msg}");
    }
}

#[test]
fn a_profile_naming_a_non_existent_element_fails_naming_file_and_field() {
    let err = mutated_err(
        "tablet-rk3588.toml",
        "element = \"x264enc\"",
        "element = \"x265turboenc\"",
    );
    assert_mentions(
        &err,
        &["tablet-rk3588.toml: video.encoders[1].element: \"x265turboenc\" is not an element yiwang knows"],
    );
    assert_eq!(err.issues().len(), 1, "{err}");
    assert_eq!(err.issues()[0].field, "video.encoders[1].element");
}

#[test]
fn an_invalid_element_name_is_reported_as_such() {
    let err = mutated_err(
        "tablet-rk3588.toml",
        "element = \"x264enc\"",
        "element = \"mpph264enc \"",
    );
    assert_eq!(
        err.to_string(),
        "tablet-rk3588.toml: video.encoders[1].element: \"mpph264enc \" is not a valid GStreamer element name"
    );
}

#[test]
fn an_unknown_key_fails_with_its_path_and_line() {
    let err = mutated_err(
        "tablet-software.toml",
        "hardware = false\nproperties = { tune",
        "hardwere = false\nproperties = { tune",
    );
    let msg = err.to_string();
    assert!(matches!(err, ProfileError::Parse { .. }), "{msg}");
    assert_mentions(
        &err,
        &[
            "tablet-software.toml: ",
            "video.encoders[0]",
            "unknown field `hardwere`",
            "line ",
        ],
    );

    let err = mutated_err(
        "wifi.toml",
        "audio_first = false",
        "audio_first = false\nvolume = 11",
    );
    assert_mentions(&err, &["wifi.toml: audio", "unknown field `volume`"]);

    let err = mutated_err(
        "wifi.toml",
        "expected_rtt_ms = 20",
        "expected_rtt_ms = 20\nbogus = 1",
    );
    assert_mentions(&err, &["wifi.toml: ", "unknown field `bogus`"]);
}

#[test]
fn a_wrong_type_names_the_field() {
    let err = mutated_err("satellite.toml", "start_kbps = 150", "start_kbps = \"150\"");
    assert_mentions(
        &err,
        &["satellite.toml: video.start_kbps: ", "line 11, column 14"],
    );
}

#[test]
fn a_non_monotonic_ladder_fails() {
    let err = mutated_err(
        "4g-good.toml",
        "[200, 400, 800, 1500]",
        "[200, 800, 400, 1500]",
    );
    assert_mentions(
        &err,
        &["4g-good.toml: video.ladder_kbps[2]: the ladder must rise: 400 is not above video.ladder_kbps[1] = 800"],
    );
    let err = mutated_err(
        "4g-good.toml",
        "[200, 400, 800, 1500]",
        "[200, 400, 400, 1500]",
    );
    assert_mentions(&err, &["video.ladder_kbps[2]"]);
    let err = mutated_err("4g-good.toml", "[200, 400, 800, 1500]", "[]");
    assert_mentions(
        &err,
        &[
            "video.ladder_kbps: must have at least one rung",
            "video.start_kbps",
        ],
    );
}

#[test]
fn simulcast_layers_must_be_sane() {
    let err = mutated_err("wifi.toml", "scale_down_by = 2.0", "scale_down_by = 0.5");
    assert_mentions(
        &err,
        &["wifi.toml: video.simulcast[1].scale_down_by: 0.5 is outside 1..=16"],
    );
    let err = mutated_err(
        "wifi.toml",
        "max_bitrate_kbps = 600",
        "max_bitrate_kbps = 1900",
    );
    assert_mentions(
        &err,
        &["video.simulcast[1].max_bitrate_kbps: bitrates must fall"],
    );
    let err = mutated_err("wifi.toml", "rid = \"mid\"", "rid = \"high\"");
    assert_mentions(&err, &["video.simulcast[1].rid: \"high\" is used twice"]);
    let err = mutated_err("wifi.toml", "rid = \"mid\"", "rid = \"mid layer\"");
    assert_mentions(
        &err,
        &["video.simulcast[1].rid: \"mid layer\" is not a valid RID"],
    );
    let err = mutated_err("wifi.toml", "scale_down_by = 4.0", "scale_down_by = 2.0");
    assert_mentions(&err, &["video.simulcast[2].scale_down_by: 2 must be above"]);
    let err = mutated_err(
        "4g-poor.toml",
        "  { rid = \"low\", scale_down_by = 2.0, max_bitrate_kbps = 150 },\n",
        "",
    );
    assert_mentions(&err, &["video.simulcast: has 1 layers"]);
}

#[test]
fn chains_keep_hardware_first_and_a_software_fallback_per_codec() {
    // Swap x264enc's hardware flag: the registry disagrees, and it now follows nothing software.
    let err = mutated_err(
        "tablet-rk3588.toml",
        "element = \"x264enc\"\ncodec = \"h264\"\nhardware = false",
        "element = \"x264enc\"\ncodec = \"h264\"\nhardware = true",
    );
    assert_mentions(
        &err,
        &["video.encoders[1].hardware: x264enc is not a hardware element"],
    );

    // A chain whose only VP8 decoders are hardware.
    let t = text("tablet-jetson.toml")
        .replace(
            "[[video.decoders]]\nelement = \"vp8dec\"\ncodec = \"vp8\"\nhardware = false\n",
            "",
        )
        .replace(
            "[[video.decoders]]\nelement = \"avdec_vp8\"\ncodec = \"vp8\"\nhardware = false\n",
            "",
        );
    let err = load("tablet-jetson.toml", &t).unwrap_err();
    assert_mentions(
        &err,
        &["tablet-jetson.toml: video.decoders: has no software vp8 fallback"],
    );

    // Hardware after software: move v4l2h264enc's block to the end of the encoder chain.
    let t = text("tablet-qualcomm.toml");
    let start = t
        .find("[[video.encoders]]\nelement = \"v4l2h264enc\"")
        .unwrap();
    let end = t.find("# Software fallbacks").unwrap();
    let decoders = t.find("[[video.decoders]]").unwrap();
    let moved = format!(
        "{}{}{}{}",
        &t[..start],
        &t[end..decoders],
        &t[start..end],
        &t[decoders..]
    );
    let err = load("tablet-qualcomm.toml", &moved).unwrap_err();
    assert_mentions(
        &err,
        &["video.encoders[3].hardware: hardware element v4l2h264enc comes after software element x264enc"],
    );

    // A software encoder fed by a hardware converter.
    let err = mutated_err(
        "tablet-software.toml",
        "caps = \"video/x-h264,profile=constrained-baseline\"\nnotes = \"Constrained",
        "caps = \"video/x-h264,profile=constrained-baseline\"\nconvert = \"nvvidconv\"\nnotes = \"Constrained",
    );
    assert_mentions(
        &err,
        &["video.encoders[0].convert: nvvidconv outputs hardware memory"],
    );
}

#[test]
fn codecs_must_agree_with_the_registry_and_the_sfu() {
    let err = mutated_err(
        "tablet-software.toml",
        "element = \"x264enc\"\ncodec = \"h264\"",
        "element = \"x264enc\"\ncodec = \"vp8\"",
    );
    assert_mentions(
        &err,
        &["video.encoders[0].codec: x264enc handles h264, not vp8"],
    );
    let err = mutated_err(
        "drone-rtsp-h265.toml",
        "codec = \"h265\"\ndepay = \"rtph265depay\"\nparse = \"h265parse\"\ntranscode = true",
        "codec = \"h265\"\ndepay = \"rtph265depay\"\nparse = \"h265parse\"\ntranscode = false",
    );
    assert_mentions(
        &err,
        &["drone-rtsp-h265.toml: ingest[1].transcode: must be true"],
    );
    let err = mutated_err(
        "drone-rtsp-h264.toml",
        "depay = \"rtph264depay\"",
        "depay = \"rtph265depay\"",
    );
    assert_mentions(
        &err,
        &["ingest[0].depay: rtph265depay does not handle h264"],
    );
    let err = mutated_err(
        "drone-rtsp-h264.toml",
        "parse = \"h264parse\"",
        "parse = \"avdec_h264\"",
    );
    assert_mentions(
        &err,
        &["ingest[0].parse: avdec_h264 is a video decoder, not a parser"],
    );
    let err = mutated_err(
        "wall-software.toml",
        "element = \"avdec_h264\"",
        "element = \"x264enc\"",
    );
    assert_mentions(
        &err,
        &["video.decoders[0].element: x264enc is a video encoder, not a video decoder"],
    );
}

#[test]
fn placeholders_and_bitrate_units_are_checked() {
    let err = mutated_err(
        "tablet-software.toml",
        "bitrate = \"{bitrate_kbps}\"",
        "bitrate = \"{bitrate_bps}\"",
    );
    assert_mentions(&err, &["video.encoders[0].properties.bitrate: x264enc's bitrate is in kbit/s: use {bitrate_kbps} instead of {bitrate_bps}"]);
    let err = mutated_err(
        "tablet-software.toml",
        "bitrate = \"{bitrate_kbps}\"",
        "bitrate = \"{bitrate}\"",
    );
    assert_mentions(&err, &["video.encoders[0].properties.bitrate: \"{bitrate}\" uses unknown placeholder {bitrate}"]);
    let err = mutated_err(
        "tablet-software.toml",
        "bitrate = \"{bitrate_kbps}\"",
        "bitrate = 1500",
    );
    assert_mentions(
        &err,
        &[
            "video.encoders[0].properties: no property uses the link's bitrate",
            "set bitrate = \"{bitrate_kbps}\"",
        ],
    );
    let err = mutated_err("tablet-software.toml", "speed-preset = ", "speed_preset = ");
    assert_mentions(
        &err,
        &["video.encoders[0].properties.speed_preset: x264enc has no property \"speed_preset\""],
    );
    let t = text("wall-software.toml").replacen("element = \"avdec_h264\"\ncodec = \"h264\"\nhardware = false", "element = \"avdec_h264\"\ncodec = \"h264\"\nhardware = false\nproperties = { max-threads = \"{bitrate_kbps}\" }", 1);
    let err = load("wall-software.toml", &t).unwrap_err();
    assert_mentions(&err, &["video.decoders[0].properties.max-threads: placeholders are only allowed in encoder properties"]);
    let err = mutated_err(
        "tablet-software.toml",
        "caps = \"video/x-h264,",
        "caps = \"video/x-vp8,",
    );
    assert_mentions(&err, &["video.encoders[0].caps: \"video/x-vp8,profile=constrained-baseline\" must start with video/x-h264"]);
    let err = mutated_err(
        "tablet-software.toml",
        "vbv-buf-capacity = 300",
        "vbv-buf-capacity = [300]",
    );
    assert_mentions(
        &err,
        &[
            "tablet-software.toml: video.encoders[0].properties.vbv-buf-capacity: ",
            "a string, integer, float or boolean",
        ],
    );
}

#[test]
fn link_rules() {
    let err = mutated_err("satellite.toml", "video_pause_below_kbps = 64\n", "");
    assert_mentions(
        &err,
        &["satellite.toml: audio.video_pause_below_kbps: required with audio_first = true"],
    );
    let err = mutated_err(
        "satellite.toml",
        "video_pause_below_kbps = 64",
        "video_pause_below_kbps = 90",
    );
    assert_mentions(
        &err,
        &["audio.video_pause_below_kbps: 90 is above the lowest ladder rung 80"],
    );
    let err = mutated_err("wired.toml", "frame_ms = 20", "frame_ms = 25");
    assert_mentions(&err, &["audio.frame_ms: 25 is not one of 10, 20, 40, 60"]);
    let err = mutated_err("wired.toml", "start_kbps = 2500", "start_kbps = 2000");
    assert_mentions(&err, &["video.start_kbps: 2000 is not a rung"]);
    let err = mutated_err(
        "wired.toml",
        "expected_loss_percent = 0.0",
        "expected_loss_percent = nan",
    );
    assert_mentions(&err, &["expected_loss_percent: NaN is outside 0..=50"]);
    let err = mutated_err(
        "mesh-radio.toml",
        "audio_first = true",
        "audio_first = false",
    );
    assert_mentions(
        &err,
        &["audio.video_pause_below_kbps: only allowed with audio_first = true"],
    );
}

#[test]
fn device_sections_follow_the_kind() {
    let err = mutated_err(
        "wall-software.toml",
        "kind = \"wall-decoder\"",
        "kind = \"tablet\"",
    );
    assert_mentions(
        &err,
        &[
            "wall-software.toml: capture: required for a tablet profile",
            "wall: not allowed in a tablet profile",
        ],
    );
    let err = mutated_err(
        "wall-software.toml",
        "kind = \"wall-decoder\"",
        "kind = \"wall\"",
    );
    assert_mentions(&err, &["wall-software.toml: kind: \"wall\" is not one of tablet, wall-decoder, drone-camera or link"]);
    let err = mutated_err("wall-software.toml", "kind = \"wall-decoder\"\n", "");
    assert_mentions(&err, &["wall-software.toml: kind: missing"]);
    let err = mutated_err("wall-software.toml", "max_tiles = 4", "max_tiles = 0");
    assert_mentions(&err, &["wall.max_tiles: 0 is outside 1..=64"]);
}

#[test]
fn toml_syntax_errors_give_a_line() {
    let err = mutated_err(
        "wired.toml",
        "keyframe_interval_s = 2",
        "keyframe_interval_s = ",
    );
    match &err {
        ProfileError::Parse { file, line, .. } => {
            assert_eq!(file, "wired.toml");
            assert_eq!(*line, 7, "{err}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn every_issue_is_reported_not_just_the_first() {
    let t = text("4g-good.toml")
        .replace("[200, 400, 800, 1500]", "[200, 100, 800, 1500]")
        .replace("frame_ms = 20", "frame_ms = 7");
    let err = load("4g-good.toml", &t).unwrap_err();
    let fields: Vec<&str> = err.issues().iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["video.ladder_kbps[1]", "audio.frame_ms"], "{err}");
    assert_eq!(err.to_string().lines().count(), 2);
}

#[test]
fn bad_input_never_panics() {
    // Every prefix of every shipped profile, cut at every line: Ok or Err, never a panic.
    for (name, t) in SHIPPED {
        for (i, _) in t.match_indices('\n') {
            let _ = load(name, &t[..i]);
            let _ = load(name, &t[i..]);
        }
    }
    for junk in [
        "",
        "=",
        "kind = 3",
        "kind = \"link\"",
        "kind = \"tablet\"\n[capture]\nwidth = -1",
        "\u{0}",
    ] {
        assert!(load("x.toml", junk).is_err(), "{junk:?}");
    }
    assert!(load("Bad Name.toml", text("wired.toml")).is_err());
}
