//! The rendered fragments of the software elements run in real GStreamer. GStreamer's tools and
//! the software plugins are a requirement (`scripts/install-deps.sh` installs them): a missing
//! `gst-launch-1.0`, `gst-inspect-1.0` or software element fails the test with a message naming
//! that script, never a silent pass. Hardware fragments cannot be run here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use hw_profiles::{resolve, resolve_decoder, resolve_ingest, shipped, ChosenEncoder, Codec};

/// What every failure for a missing tool says.
const INSTALL: &str = "run scripts/install-deps.sh to install GStreamer's tools and plugins";

/// Fails unless GStreamer's command-line tools run.
fn require_gst() {
    for tool in ["gst-launch-1.0", "gst-inspect-1.0"] {
        let ran = Command::new(tool).arg("--version").output();
        assert!(
            ran.as_ref().is_ok_and(|o| o.status.success()),
            "{tool} is missing or does not run ({}): {INSTALL}",
            match ran {
                Ok(o) => format!("exit {}", o.status),
                Err(e) => e.to_string(),
            }
        );
    }
}

fn has_element(name: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .args(["--exists", name])
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails unless GStreamer has the element `name`.
#[track_caller]
fn require_element(name: &str) {
    assert!(
        has_element(name),
        "GStreamer element {name} is missing: {INSTALL}"
    );
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
    require_gst();
    let cat = shipped().unwrap();
    let tablet = cat.device("tablet-software").unwrap();
    let link = cat.link("wifi").unwrap();
    for e in &tablet.video.encoders {
        require_element(&e.element);
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
        require_element(pay);
        let d = resolve_decoder(tablet, codec, &has_element).unwrap();
        run(&format!(
            "videotestsrc num-buffers=15 ! video/x-raw,width=320,height=240 ! videoconvert ! {enc} ! {pay} ! {} ! fakesink",
            d.pipeline
        ));
    }
    // The drone bridge's H.265 -> H.264 transcode, fed by a real H.265 RTP stream.
    {
        require_element("x265enc");
        require_element("rtph265pay");
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

/// Runs `software_fragments_run_in_gstreamer` alone in a child of this test binary with `env`
/// set; returns whether it passed and what it printed.
fn check_alone(env: &[(&str, &Path)]) -> (bool, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "software_fragments_run_in_gstreamer",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .output()
        .expect("run this test binary again");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An empty directory of this process's own.
fn empty_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("yiwang-gst-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn without_gst_launch_the_check_fails_and_names_install_deps() {
    let empty = empty_dir("path");
    let (passed, text) = check_alone(&[("PATH", &empty)]);
    let _ = std::fs::remove_dir_all(&empty);
    assert!(!passed, "passed without gst-launch-1.0 on PATH:\n{text}");
    assert!(
        text.contains("gst-launch-1.0") && text.contains("scripts/install-deps.sh"),
        "{text}"
    );
}

#[test]
fn without_an_encoder_the_check_fails_and_names_install_deps() {
    require_gst();
    // GStreamer with no plugin directory at all (and a registry of its own, not the user's cache).
    let empty = empty_dir("plugins");
    let registry = empty.join("registry.bin");
    let (passed, text) = check_alone(&[
        ("GST_PLUGIN_SYSTEM_PATH_1_0", &empty),
        ("GST_PLUGIN_SYSTEM_PATH", &empty),
        ("GST_PLUGIN_PATH_1_0", &empty),
        ("GST_PLUGIN_PATH", &empty),
        ("GST_REGISTRY_1_0", &registry),
        ("GST_REGISTRY", &registry),
    ]);
    let _ = std::fs::remove_dir_all(&empty);
    assert!(!passed, "passed without GStreamer plugins:\n{text}");
    assert!(
        text.contains("x264enc is missing") && text.contains("scripts/install-deps.sh"),
        "{text}"
    );
}
