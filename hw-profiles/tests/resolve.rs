//! The resolver: what a machine with a given set of elements runs, and why.

mod common;

use common::{only, DEBIAN_SOFTWARE};
use hw_profiles::{
    pick_device, resolve, resolve_decoder, resolve_ingest, shipped, Codec, DeviceKind,
    ResolveError, SkipReason, VideoBudget,
};

const HARDWARE_TABLETS: [&str; 4] = [
    "tablet-rk3588",
    "tablet-qualcomm",
    "tablet-jetson",
    "tablet-x86-vaapi",
];

#[test]
fn a_software_only_machine_picks_x264enc_and_says_why_each_hardware_element_was_skipped() {
    let cat = shipped().unwrap();
    let link = cat.link("4g-good").unwrap();
    let has = only(DEBIAN_SOFTWARE);
    for name in HARDWARE_TABLETS {
        let tablet = cat.device(name).unwrap();
        let r = resolve(tablet, link, &has, None).unwrap();
        assert_eq!(r.encoder.element, "x264enc", "{name}");
        assert!(!r.encoder.hardware);
        let hw: Vec<&str> = tablet
            .video
            .encoders
            .iter()
            .filter(|e| e.hardware)
            .map(|e| e.element.as_str())
            .collect();
        let skipped: Vec<&str> = r.skipped.iter().map(|s| s.element.as_str()).collect();
        assert_eq!(skipped, hw, "{name}");
        for s in &r.skipped {
            assert_eq!(s.reason, SkipReason::NotInstalled);
            assert!(
                s.to_string().ends_with("not installed on this machine"),
                "{s}"
            );
        }
    }
    let r = resolve(cat.device("tablet-rk3588").unwrap(), link, &has, None).unwrap();
    assert_eq!(
        r.skipped[0].to_string(),
        "mpph264enc (hardware h264): not installed on this machine"
    );
    assert_eq!(
        r.encoder.pipeline,
        "x264enc tune=zerolatency speed-preset=ultrafast bitrate=800 key-int-max=60 vbv-buf-capacity=300 \
         ! video/x-h264,profile=constrained-baseline ! h264parse"
    );
    assert_eq!(r.encoder.convert, "videoconvert");
    assert_eq!(r.encoder.live_bitrate(400), Some(("bitrate", 400)));
}

#[test]
fn without_x264enc_openh264enc_is_taken() {
    let cat = shipped().unwrap();
    let has = |e: &str| e != "x264enc" && DEBIAN_SOFTWARE.contains(&e);
    let r = resolve(
        cat.device("tablet-jetson").unwrap(),
        cat.link("wifi").unwrap(),
        &has,
        None,
    )
    .unwrap();
    assert_eq!(r.encoder.element, "openh264enc");
    let skipped: Vec<String> = r.skipped.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        skipped,
        [
            "nvv4l2h264enc (hardware h264): not installed on this machine",
            "x264enc (software h264): not installed on this machine"
        ]
    );
    // openh264enc takes bit/s: wifi starts at 1800 kbit/s, keyframes every 2 s at 30 fps.
    assert!(
        r.encoder.pipeline.contains(" bitrate=1800000 gop-size=60 "),
        "{}",
        r.encoder.pipeline
    );
    assert_eq!(r.encoder.live_bitrate(500), Some(("bitrate", 500_000)));
}

#[test]
fn a_machine_with_mpp_picks_mpph264enc_on_the_rk3588_profile() {
    let has = only(&[
        "mpph264enc",
        "mppvideodec",
        "x264enc",
        "openh264enc",
        "vp8enc",
        "avdec_h264",
        "vp8dec",
    ]);
    let tablet = pick_device(&has).unwrap();
    assert_eq!(tablet.name, "tablet-rk3588");
    let r = resolve(
        tablet,
        shipped().unwrap().link("4g-good").unwrap(),
        &has,
        None,
    )
    .unwrap();
    assert_eq!(r.encoder.element, "mpph264enc");
    assert!(r.encoder.hardware);
    assert!(r.skipped.is_empty());
    assert_eq!(
        r.encoder.pipeline,
        "mpph264enc rc-mode=cbr bps=800000 gop=60 ! h264parse"
    );
    let dec = resolve_decoder(tablet, Codec::Vp8, &has).unwrap();
    assert_eq!(dec.element, "mppvideodec");
    assert_eq!(dec.pipeline, "rtpvp8depay ! mppvideodec");
}

#[test]
fn pick_device_matches_each_platform_and_falls_back_to_software() {
    let cases: [(&'static [&'static str], &str); 6] = [
        (&["v4l2h264enc", "x264enc"], "tablet-qualcomm"),
        (&["nvv4l2h264enc", "x264enc"], "tablet-jetson"),
        (&["vah264enc", "x264enc"], "tablet-x86-vaapi"),
        (&["vaapih264enc"], "tablet-x86-vaapi"),
        (DEBIAN_SOFTWARE, "tablet-software"),
        (&[], "tablet-software"),
    ];
    for (elements, want) in cases {
        assert_eq!(
            pick_device(&only(elements)).unwrap().name,
            want,
            "{elements:?}"
        );
    }
}

#[test]
fn a_preferred_codec_skips_the_others_with_a_reason() {
    let cat = shipped().unwrap();
    let has = only(&["mpph264enc", "x264enc", "openh264enc", "vp8enc"]);
    let r = resolve(
        cat.device("tablet-rk3588").unwrap(),
        cat.link("wired").unwrap(),
        &has,
        Some(Codec::Vp8),
    )
    .unwrap();
    assert_eq!(r.encoder.element, "vp8enc");
    assert_eq!(r.preferred_codec_unavailable, None);
    assert_eq!(r.skipped.len(), 3);
    for s in &r.skipped {
        assert_eq!(
            s.reason,
            SkipReason::CodecNotWanted {
                codec: Codec::H264,
                wanted: Codec::Vp8
            }
        );
        assert!(
            s.to_string()
                .ends_with("codec h264 not wanted (vp8 preferred)"),
            "{s}"
        );
    }
    assert!(
        r.encoder
            .pipeline
            .starts_with("vp8enc deadline=1 cpu-used=8 end-usage=cbr target-bitrate=2500000 "),
        "{}",
        r.encoder.pipeline
    );
    assert!(!r.encoder.pipeline.contains("parse"));

    // No VP8 encoder installed: the best installed encoder, flagged.
    let has = only(&["openh264enc"]);
    let r = resolve(
        cat.device("tablet-rk3588").unwrap(),
        cat.link("wired").unwrap(),
        &has,
        Some(Codec::Vp8),
    )
    .unwrap();
    assert_eq!(r.encoder.element, "openh264enc");
    assert_eq!(r.preferred_codec_unavailable, Some(Codec::Vp8));
    assert!(r
        .skipped
        .iter()
        .all(|s| s.reason == SkipReason::NotInstalled));
}

#[test]
fn nothing_installed_is_an_error_listing_every_element() {
    let cat = shipped().unwrap();
    let err = resolve(
        cat.device("tablet-software").unwrap(),
        cat.link("wifi").unwrap(),
        &|_| false,
        None,
    )
    .unwrap_err();
    match &err {
        ResolveError::NothingUsable { skipped, .. } => assert_eq!(skipped.len(), 3),
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().starts_with(
            "tablet-software: no usable encoder: x264enc (software h264): not installed"
        ),
        "{err}"
    );
    let err = resolve(
        cat.device("wall-software").unwrap(),
        cat.link("wifi").unwrap(),
        &|_| true,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, ResolveError::NotApplicable { .. }), "{err}");
}

#[test]
fn poor_links_get_fewer_layers_and_the_poorest_none() {
    let cat = shipped().unwrap();
    let tablet = cat.device("tablet-software").unwrap();
    let has = only(DEBIAN_SOFTWARE);
    let layers = |link: &str| {
        resolve(tablet, cat.link(link).unwrap(), &has, None)
            .unwrap()
            .layers
    };
    let wifi = layers("wifi");
    let poor = layers("4g-poor");
    assert_eq!(wifi.len(), 3);
    assert!(
        !poor.is_empty() && poor.len() < wifi.len(),
        "{} vs {}",
        poor.len(),
        wifi.len()
    );
    assert!(layers("satellite").is_empty());
    assert!(layers("mesh-radio").is_empty());

    let names: Vec<(&str, u32, u32, u32)> = wifi
        .iter()
        .map(|l| (l.rid.as_str(), l.width, l.height, l.max_bitrate_kbps))
        .collect();
    assert_eq!(
        names,
        [
            ("high", 1280, 720, 1800),
            ("mid", 640, 360, 600),
            ("low", 320, 180, 200)
        ]
    );
    assert!(
        wifi[2]
            .pipeline
            .starts_with("videoscale ! video/x-raw,width=320,height=180 ! x264enc "),
        "{}",
        wifi[2].pipeline
    );
    assert!(wifi[2].pipeline.contains(" bitrate=200 "));
}

#[test]
fn satellite_and_mesh_radio_are_audio_first() {
    let cat = shipped().unwrap();
    for name in ["satellite", "mesh-radio", "4g-poor"] {
        let link = cat.link(name).unwrap();
        assert!(link.audio.audio_first, "{name}");
        let pause = link.audio.video_pause_below_kbps.unwrap();
        let audio = link.audio.bitrate_kbps;
        // Plenty: audio at its bitrate, video on the top rung.
        let b = link.split_budget(10_000);
        assert_eq!(
            (b.audio_kbps, b.video),
            (
                audio,
                VideoBudget::Rung(*link.video.ladder_kbps.last().unwrap())
            )
        );
        // Just above the pause threshold: video on the lowest rung, audio untouched.
        let b = link.split_budget(audio + pause);
        assert_eq!(
            (b.audio_kbps, b.video),
            (audio, VideoBudget::Rung(link.video.ladder_kbps[0])),
            "{name}"
        );
        // Below it: video pauses, audio keeps its bitrate, even below the audio bitrate itself.
        for est in [audio + pause - 1, audio, 1, 0] {
            let b = link.split_budget(est);
            assert_eq!(
                (b.audio_kbps, b.video),
                (audio, VideoBudget::Paused),
                "{name} at {est}"
            );
        }
    }
    for name in ["wired", "wifi", "4g-good"] {
        let link = cat.link(name).unwrap();
        assert!(!link.audio.audio_first, "{name}");
        let min = link.audio.min_bitrate_kbps.unwrap();
        let b = link.split_budget(0);
        assert_eq!(
            (b.audio_kbps, b.video),
            (min, VideoBudget::Rung(link.video.ladder_kbps[0])),
            "{name}"
        );
        let b = link.split_budget(link.audio.bitrate_kbps + link.video.ladder_kbps[1] + 1);
        assert_eq!(
            (b.audio_kbps, b.video),
            (
                link.audio.bitrate_kbps,
                VideoBudget::Rung(link.video.ladder_kbps[1])
            )
        );
    }
    let r = resolve(
        cat.device("tablet-software").unwrap(),
        cat.link("satellite").unwrap(),
        &only(DEBIAN_SOFTWARE),
        None,
    )
    .unwrap();
    assert!(r.audio.audio_first);
    assert_eq!(r.audio.min_bitrate_kbps, r.audio.bitrate_kbps);
    assert_eq!(r.audio.pipeline, "opusenc bitrate=24000 frame-size=40 inband-fec=true packet-loss-percentage=1 audio-type=voice");
    assert_eq!(r.jitter_buffer_ms, 730);
    // Satellite keyframes every 4 s.
    assert!(
        r.encoder.pipeline.contains("key-int-max=120"),
        "{}",
        r.encoder.pipeline
    );
}

#[test]
fn wall_hosts_resolve_decoders_for_both_forwarded_codecs() {
    let cat = shipped().unwrap();
    let has = only(DEBIAN_SOFTWARE);
    for wall in cat.devices_of(DeviceKind::WallDecoder) {
        for codec in [Codec::H264, Codec::Vp8] {
            let d = resolve_decoder(wall, codec, &has).unwrap();
            assert!(!d.hardware, "{}", wall.name);
            assert!(d
                .skipped
                .iter()
                .all(|s| s.hardware && s.reason == SkipReason::NotInstalled));
        }
    }
    let wall = cat.device("wall-x86-vaapi").unwrap();
    let d = resolve_decoder(wall, Codec::H264, &has).unwrap();
    assert_eq!(d.pipeline, "rtph264depay ! h264parse ! avdec_h264");
    assert_eq!(d.skipped.len(), 2);
    let d = resolve_decoder(wall, Codec::H264, &only(&["vah264dec"])).unwrap();
    assert_eq!((d.element.as_str(), d.hardware), ("vah264dec", true));
    assert!(resolve_decoder(wall, Codec::H265, &has).is_err());
    assert_eq!(wall.wall.unwrap().max_tiles, 16);
}

#[test]
fn drone_h265_is_transcoded_and_h264_passes_through() {
    let cat = shipped().unwrap();
    let link = cat.link("4g-good").unwrap();
    let has = only(DEBIAN_SOFTWARE);
    let drone = cat.device("drone-rtsp-h265").unwrap();
    let plan = resolve_ingest(drone, Codec::H265, link, &has).unwrap();
    let (dec, enc) = plan.transcode.as_ref().unwrap();
    assert_eq!(dec.element, "avdec_h265");
    assert_eq!(enc.encoder.element, "x264enc");
    assert_eq!(enc.skipped[0].element, "vah264enc");
    assert!(
        plan.pipeline
            .starts_with("rtph265depay ! h265parse ! avdec_h265 ! videoconvert ! x264enc "),
        "{}",
        plan.pipeline
    );
    assert!(plan.pipeline.ends_with("! h264parse"));
    let plan = resolve_ingest(drone, Codec::H264, link, &has).unwrap();
    assert_eq!(plan.pipeline, "rtph264depay ! h264parse");
    assert!(plan.transcode.is_none());
    let plain = cat.device("drone-rtsp-h264").unwrap();
    assert!(matches!(
        resolve_ingest(plain, Codec::H265, link, &has),
        Err(ResolveError::NoIngest { .. })
    ));

    let jetson = cat.device("drone-jetson-h265").unwrap();
    let plan = resolve_ingest(
        jetson,
        Codec::H265,
        link,
        &only(&["nvv4l2decoder", "nvv4l2h264enc"]),
    )
    .unwrap();
    assert!(
        plan.pipeline
            .starts_with("rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv ! nvv4l2h264enc "),
        "{}",
        plan.pipeline
    );
}

#[test]
fn v4l2_extra_controls_are_quoted_and_not_live_settable() {
    let cat = shipped().unwrap();
    let r = resolve(
        cat.device("tablet-qualcomm").unwrap(),
        cat.link("wifi").unwrap(),
        &only(&["v4l2h264enc"]),
        None,
    )
    .unwrap();
    assert_eq!(
        r.encoder.pipeline,
        "v4l2h264enc extra-controls=\"controls,video_bitrate_mode=1,video_bitrate=1800000,video_gop_size=60,h264_i_frame_period=60,repeat_sequence_header=1\" \
         ! video/x-h264,profile=constrained-baseline ! h264parse"
    );
    assert_eq!(r.encoder.live_bitrate(500), None);
    assert!(r
        .encoder
        .at_bitrate(500)
        .pipeline
        .contains("video_bitrate=500000"));
}
