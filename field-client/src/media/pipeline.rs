//! The capture-and-encode pipeline as a gst-launch description: pure text, no GStreamer calls,
//! so that what `run` builds can be checked in unit tests.
//!
//! Video ends in an appsink named [`VIDEO_SINK`] that yields whole encoded frames (H.264 as
//! byte-stream access units with SPS/PPS before every IDR, or VP8 frames); audio ends in an
//! appsink named [`AUDIO_SINK`] that yields Opus packets.

use hw_profiles::{AudioSettings, ChosenEncoder, Codec};

use super::Source;

/// Name of the video appsink.
pub const VIDEO_SINK: &str = "video";
/// Name of the audio appsink.
pub const AUDIO_SINK: &str = "audio";

/// Picture size and rate of the first slice: one layer (no simulcast yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picture {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
}

impl Default for Picture {
    fn default() -> Self {
        Picture { width: 640, height: 480, fps: 30 }
    }
}

/// Quotes a path for gst-launch.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The raw video caps every source is brought to.
fn raw_caps(p: Picture) -> String {
    format!("video/x-raw,width={},height={},framerate={}/1", p.width, p.height, p.fps)
}

/// What follows the encoder fragment, by codec: H.264 re-parsed so that every IDR carries its
/// SPS/PPS (a viewer may join at any keyframe) and cut into access units.
fn encoded_tail(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => {
            "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au"
        }
        _ => "queue max-size-buffers=2",
    }
}

/// The whole pipeline: video from `source` through `encoder` to [`VIDEO_SINK`], and with
/// `audio`, Opus to [`AUDIO_SINK`].
pub fn describe(
    source: &Source,
    encoder: &ChosenEncoder,
    audio: Option<&AudioSettings>,
    picture: Picture,
) -> String {
    let caps = raw_caps(picture);
    let video_in = match source {
        Source::Test => format!("videotestsrc is-live=true pattern=smpte ! {caps}"),
        Source::Camera => {
            format!("v4l2src ! videoconvert ! videoscale ! videorate ! {caps}")
        }
        Source::File(path) => format!(
            "filesrc location={} ! decodebin name=file file. ! queue ! videoconvert ! videoscale ! videorate ! {caps}",
            quoted(&path.to_string_lossy())
        ),
    };
    let sink = |name: &str| {
        format!("appsink name={name} sync=false max-buffers=30 drop=true")
    };
    let mut desc = format!(
        "{video_in} ! {} ! {} ! {} ! {}",
        encoder.convert,
        encoder.pipeline,
        encoded_tail(encoder.codec),
        sink(VIDEO_SINK)
    );
    if let Some(a) = audio {
        let audio_in = match source {
            Source::Test => "audiotestsrc is-live=true wave=ticks".to_owned(),
            Source::Camera => "autoaudiosrc".to_owned(),
            Source::File(_) => "file. ! queue".to_owned(),
        };
        desc.push_str(&format!(
            " {audio_in} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 ! {} ! {}",
            a.pipeline,
            sink(AUDIO_SINK)
        ));
    }
    desc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolution(has: &dyn Fn(&str) -> bool) -> hw_profiles::Resolution {
        let cat = hw_profiles::shipped().unwrap();
        let device = hw_profiles::pick_device(has).unwrap();
        hw_profiles::resolve(device, cat.link("wifi").unwrap(), has, Some(Codec::H264)).unwrap()
    }

    #[test]
    fn test_source_with_software_h264_and_opus() {
        let r = resolution(&|e| e == "x264enc" || e == "openh264enc");
        let d = describe(&Source::Test, &r.encoder, Some(&r.audio), Picture::default());
        assert!(d.starts_with("videotestsrc is-live=true pattern=smpte ! video/x-raw,width=640,height=480,framerate=30/1 ! videoconvert ! x264enc "), "{d}");
        assert!(d.contains("h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=video "), "{d}");
        assert!(d.contains(" audiotestsrc is-live=true wave=ticks ! "), "{d}");
        assert!(d.contains("opusenc ") && d.ends_with("appsink name=audio sync=false max-buffers=30 drop=true"), "{d}");
    }

    #[test]
    fn no_audio_means_no_audio_branch() {
        let r = resolution(&|e| e == "x264enc");
        let d = describe(&Source::Camera, &r.encoder, None, Picture { width: 320, height: 240, fps: 15 });
        assert!(d.starts_with("v4l2src ! videoconvert ! videoscale ! videorate ! video/x-raw,width=320,height=240,framerate=15/1"), "{d}");
        assert!(!d.contains("opusenc") && !d.contains("name=audio"), "{d}");
    }

    #[test]
    fn file_source_shares_one_decodebin() {
        let r = resolution(&|e| e == "x264enc");
        let d = describe(&Source::File("/tmp/a b.mp4".into()), &r.encoder, Some(&r.audio), Picture::default());
        assert!(d.starts_with("filesrc location=\"/tmp/a b.mp4\" ! decodebin name=file file. ! queue ! "), "{d}");
        assert!(d.contains(" file. ! queue ! audioconvert "), "{d}");
    }

    #[test]
    fn vp8_has_no_h264_tail() {
        let r = resolution(&|e| e == "vp8enc");
        assert_eq!(r.encoder.codec, Codec::Vp8);
        let d = describe(&Source::Test, &r.encoder, None, Picture::default());
        assert!(!d.contains("h264parse") && d.contains("vp8enc "), "{d}");
    }
}
