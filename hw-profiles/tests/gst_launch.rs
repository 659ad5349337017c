//! The rendered fragments of the software elements run in real GStreamer, when `gst-launch-1.0`
//! is installed (skipped with a note otherwise). Hardware fragments cannot be run here.

mod common;

use std::process::Command;

use hw_profiles::{resolve, resolve_decoder, resolve_ingest, shipped, ChosenEncoder, Codec};

fn gst_available() -> bool {
    Command::new("gst-launch-1.0")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn has_element(name: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .args(["--exists", name])
        .status()
        .is_ok_and(|s| s.success())
}

#[track_caller]
fn run(pipeline: &str) {
    eprintln!("running: {pipeline}");
    // As a person would paste it into a shell; `timeout` bounds a hung pipeline (every pipeline
    // here ends after a few buffers).
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("timeout 60 gst-launch-1.0 -q {pipeline}"))
        .output()
        .expect("spawn gst-launch-1.0");
    assert!(
        out.status.success(),
        "{pipeline}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn encode(enc: &ChosenEncoder, width: u32, height: u32) -> String {
    format!(
        "videotestsrc num-buffers=15 ! video/x-raw,width={width},height={height},framerate=30/1 ! {} ! {} ! fakesink",
        enc.convert, enc.pipeline
    )
}

#[test]
fn software_fragments_run_in_gstreamer() {
    if !gst_available() {
        eprintln!("gst-launch-1.0 not installed: skipping");
        return;
    }
    let cat = shipped().unwrap();
    let tablet = cat.device("tablet-software").unwrap();
    let link = cat.link("wifi").unwrap();
    for e in &tablet.video.encoders {
        if !has_element(&e.element) {
            eprintln!("{} not installed: skipping", e.element);
            continue;
        }
        let r = resolve(tablet, link, &|x: &str| x == e.element, Some(e.codec)).unwrap();
        assert_eq!(r.encoder.element, e.element);
        run(&encode(&r.encoder, 320, 240));
        let low = r.layers.last().unwrap();
        run(&format!(
            "videotestsrc num-buffers=15 ! video/x-raw,width=1280,height=720,framerate=30/1 ! videoconvert ! {} ! fakesink",
            low.pipeline
        ));
    }
    for link in cat.links() {
        let r = resolve(tablet, link, &has_element, None).unwrap();
        run(&format!(
            "audiotestsrc num-buffers=20 ! audioconvert ! audioresample ! {} ! fakesink",
            r.audio.pipeline
        ));
    }
    for (codec, pay, enc) in [
        (Codec::H264, "rtph264pay", "x264enc"),
        (Codec::Vp8, "rtpvp8pay", "vp8enc"),
    ] {
        let d = resolve_decoder(tablet, codec, &has_element).unwrap();
        run(&format!(
            "videotestsrc num-buffers=15 ! video/x-raw,width=320,height=240 ! videoconvert ! {enc} ! {pay} ! {} ! fakesink",
            d.pipeline
        ));
    }
    // The drone bridge's H.265 -> H.264 transcode, fed by a real H.265 RTP stream.
    if has_element("x265enc") && has_element("rtph265pay") {
        let drone = cat.device("drone-rtsp-h265").unwrap();
        let plan = resolve_ingest(
            drone,
            Codec::H265,
            cat.link("4g-good").unwrap(),
            &has_element,
        )
        .unwrap();
        run(&format!(
            "videotestsrc num-buffers=15 ! video/x-raw,width=640,height=360 ! x265enc tune=zerolatency ! rtph265pay ! {} ! fakesink",
            plan.pipeline
        ));
    }
}
