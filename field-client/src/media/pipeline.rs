//! The capture-and-encode pipeline as a gst-launch description: pure text, no GStreamer calls,
//! so that what `run` builds can be checked in unit tests.
//!
//! The raw picture is teed into one branch per video layer (one for single-layer publishing,
//! two to four for simulcast): scale, encode, and an appsink named [`video_sink`]`(i)` that
//! yields whole encoded frames (H.264 as byte-stream access units with SPS/PPS before every IDR,
//! or VP8 frames). Layer `i`'s encoder is named [`video_encoder`]`(i)` so its bitrate can be
//! changed while it runs. Audio ends in an appsink named [`AUDIO_SINK`] that yields Opus packets,
//! from an encoder named [`AUDIO_ENCODER`].

use hw_profiles::{AudioSettings, ChosenEncoder, Codec};

use super::Source;

/// Name of the element (test source only) after which the time code is painted.
pub const TIMECODE: &str = "stamp";
/// Name of the audio appsink.
pub const AUDIO_SINK: &str = "audio";
/// Name of the Opus encoder element.
pub const AUDIO_ENCODER: &str = "aenc";

/// Name of layer `i`'s appsink (0 = full size).
pub fn video_sink(i: usize) -> String {
    format!("video{i}")
}

/// Name of layer `i`'s encoder element.
pub fn video_encoder(i: usize) -> String {
    format!("venc{i}")
}

/// Picture size and rate of the capture (the full-size layer).
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
        Picture {
            width: 640,
            height: 480,
            fps: 30,
        }
    }
}

impl std::str::FromStr for Picture {
    type Err = String;

    /// `WIDTHxHEIGHT@FPS`, e.g. `1280x720@30` (even sizes 160x120 to 3840x2160, 1 to 60 fps).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not WIDTHxHEIGHT@FPS (e.g. 1280x720@30)");
        let (size, fps) = s.split_once('@').ok_or_else(bad)?;
        let (w, h) = size.split_once('x').ok_or_else(bad)?;
        let (width, height, fps): (u32, u32, u32) = (
            w.parse().map_err(|_| bad())?,
            h.parse().map_err(|_| bad())?,
            fps.parse().map_err(|_| bad())?,
        );
        if !(160..=3840).contains(&width)
            || !(120..=2160).contains(&height)
            || width % 2 + height % 2 != 0
        {
            return Err(format!(
                "{s:?}: width 160–3840 and height 120–2160, both even"
            ));
        }
        if !(1..=60).contains(&fps) {
            return Err(format!("{s:?}: 1–60 frames per second"));
        }
        Ok(Picture { width, height, fps })
    }
}

impl Picture {
    /// The size of a layer scaled down by `by` (even, at least 16×16).
    pub fn scaled(&self, by: f64) -> (u32, u32) {
        let by = if by.is_finite() && by >= 1.0 { by } else { 1.0 };
        let even = |v: u32| ((f64::from(v) / by) as u32 & !1).max(16);
        (even(self.width), even(self.height))
    }
}

/// One video layer to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoLayer {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// The encoder, rendered for the layer's starting bitrate.
    pub encoder: ChosenEncoder,
}

/// Quotes a path for gst-launch.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The raw video caps every source is brought to.
fn raw_caps(p: Picture) -> String {
    format!(
        "video/x-raw,width={},height={},framerate={}/1",
        p.width, p.height, p.fps
    )
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

/// `fragment` (starting with `element`) with `name=NAME` after the element.
fn named(fragment: &str, element: &str, name: &str) -> String {
    match fragment.strip_prefix(element) {
        Some(rest) => format!("{element} name={name}{rest}"),
        None => fragment.to_owned(),
    }
}

/// The whole pipeline: video from `source` through each of `layers` (full size first) to
/// [`video_sink`]`(i)`, and with `audio`, Opus to [`AUDIO_SINK`].
pub fn describe(
    source: &Source,
    layers: &[VideoLayer],
    audio: Option<&AudioSettings>,
    picture: Picture,
) -> String {
    let caps = raw_caps(picture);
    let video_in = match source {
        // I420 so that the time code can be painted into the luma plane (see `timecode`).
        Source::Test => format!(
            "videotestsrc is-live=true pattern=smpte ! {},format=I420 ! identity name={TIMECODE}",
            caps
        ),
        Source::Camera => {
            format!("v4l2src ! videoconvert ! videoscale ! videorate ! {caps}")
        }
        Source::File(path) => format!(
            "filesrc location={} ! decodebin name=file file. ! queue ! videoconvert ! videoscale ! videorate ! {caps}",
            quoted(&path.to_string_lossy())
        ),
    };
    let sink = |name: &str| format!("appsink name={name} sync=false max-buffers=30 drop=true");
    let mut desc = format!("{video_in} ! tee name=raw");
    for (i, l) in layers.iter().enumerate() {
        let e = &l.encoder;
        let scale = if (l.width, l.height) == (picture.width, picture.height) {
            String::new()
        } else {
            format!(
                "videoscale ! video/x-raw,width={},height={} ! ",
                l.width, l.height
            )
        };
        desc.push_str(&format!(
            " raw. ! queue max-size-buffers=2 leaky=downstream ! {scale}{} ! {} ! {} ! {}",
            e.convert,
            named(&e.pipeline, &e.element, &video_encoder(i)),
            encoded_tail(e.codec),
            sink(&video_sink(i))
        ));
    }
    if let Some(a) = audio {
        let audio_in = match source {
            Source::Test => "audiotestsrc is-live=true wave=ticks".to_owned(),
            Source::Camera => "autoaudiosrc".to_owned(),
            Source::File(_) => "file. ! queue".to_owned(),
        };
        desc.push_str(&format!(
            " {audio_in} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 ! {} ! {}",
            named(&a.pipeline, "opusenc", AUDIO_ENCODER),
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

    fn one(r: &hw_profiles::Resolution, p: Picture) -> Vec<VideoLayer> {
        vec![VideoLayer {
            width: p.width,
            height: p.height,
            encoder: r.encoder.clone(),
        }]
    }

    #[test]
    fn test_source_with_software_h264_and_opus() {
        let r = resolution(&|e| e == "x264enc" || e == "openh264enc");
        let p = Picture::default();
        let d = describe(&Source::Test, &one(&r, p), Some(&r.audio), p);
        assert!(d.starts_with("videotestsrc is-live=true pattern=smpte ! video/x-raw,width=640,height=480,framerate=30/1,format=I420 ! identity name=stamp ! tee name=raw raw. ! queue max-size-buffers=2 leaky=downstream ! videoconvert ! x264enc name=venc0 "), "{d}");
        assert!(d.contains("h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=video0 "), "{d}");
        assert!(
            d.contains(" audiotestsrc is-live=true wave=ticks ! "),
            "{d}"
        );
        assert!(
            d.contains("opusenc name=aenc ")
                && d.ends_with("appsink name=audio sync=false max-buffers=30 drop=true"),
            "{d}"
        );
    }

    #[test]
    fn simulcast_layers_are_scaled_branches_of_one_tee() {
        let r = resolution(&|e| e == "x264enc");
        let p = Picture::default();
        let layers: Vec<VideoLayer> = [1.0, 2.0, 4.0]
            .iter()
            .map(|&by| {
                let (width, height) = p.scaled(by);
                VideoLayer {
                    width,
                    height,
                    encoder: r.encoder.at_bitrate(200),
                }
            })
            .collect();
        let d = describe(&Source::Test, &layers, None, p);
        assert_eq!(d.matches(" raw. ! ").count(), 3, "{d}");
        assert!(d.contains("videoscale ! video/x-raw,width=320,height=240 ! videoconvert ! x264enc name=venc1 "), "{d}");
        assert!(d.contains("videoscale ! video/x-raw,width=160,height=120 ! videoconvert ! x264enc name=venc2 "), "{d}");
        assert!(d.contains("appsink name=video2 "), "{d}");
        assert_eq!(Picture::default().scaled(64.0), (16, 16));
    }

    #[test]
    fn pictures_parse() {
        assert_eq!(
            "1280x720@30".parse(),
            Ok(Picture {
                width: 1280,
                height: 720,
                fps: 30
            })
        );
        for bad in [
            "1280x720",
            "1280@30",
            "axb@c",
            "1281x720@30",
            "1280x720@0",
            "100x100@30",
            "1280x720@61",
        ] {
            assert!(bad.parse::<Picture>().is_err(), "{bad}");
        }
    }

    #[test]
    fn no_audio_means_no_audio_branch() {
        let r = resolution(&|e| e == "x264enc");
        let p = Picture {
            width: 320,
            height: 240,
            fps: 15,
        };
        let d = describe(&Source::Camera, &one(&r, p), None, p);
        assert!(d.starts_with("v4l2src ! videoconvert ! videoscale ! videorate ! video/x-raw,width=320,height=240,framerate=15/1"), "{d}");
        assert!(!d.contains("opusenc") && !d.contains("name=audio"), "{d}");
    }

    #[test]
    fn file_source_shares_one_decodebin() {
        let r = resolution(&|e| e == "x264enc");
        let p = Picture::default();
        let d = describe(
            &Source::File("/tmp/a b.mp4".into()),
            &one(&r, p),
            Some(&r.audio),
            p,
        );
        assert!(
            d.starts_with(
                "filesrc location=\"/tmp/a b.mp4\" ! decodebin name=file file. ! queue ! "
            ),
            "{d}"
        );
        assert!(d.contains(" file. ! queue ! audioconvert "), "{d}");
    }

    #[test]
    fn vp8_has_no_h264_tail() {
        let r = resolution(&|e| e == "vp8enc");
        assert_eq!(r.encoder.codec, Codec::Vp8);
        let p = Picture::default();
        let d = describe(&Source::Test, &one(&r, p), None, p);
        assert!(
            !d.contains("h264parse") && d.contains("vp8enc name=venc0 "),
            "{d}"
        );
    }
}
