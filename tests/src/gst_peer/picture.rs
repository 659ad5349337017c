//! What a decoded picture shows: a [`Picture`] (RGB, from a viewer's decoded I420 frame) checked
//! against the [`Pattern`] its source paints. A stream whose frames decode can still show garbage
//! (slices missing from a picture decode as green blocks, smeared until the next keyframe), so
//! tests that claim "decodes" compare the picture with its source here.
//!
//! The patterns are GStreamer's `videotestsrc` ones the test sources use: `pattern=ball` (a white
//! ball on black: the GStreamer publisher, the drone camera) and `pattern=smpte` (colour bars:
//! `field-client run --source test`). Only pixels are read here; no network, no pipeline state
//! (except [`Picture::save_png`], which runs a one-shot encoder pipeline).

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;

/// A decoded picture, 8-bit RGB, rows packed (`3 * width` bytes each).
#[derive(Clone, PartialEq, Eq)]
pub struct Picture {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` RGB triplets, row by row.
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Picture({}x{})", self.width, self.height)
    }
}

/// Rounds `n` up to a multiple of `m` (a power of two).
fn round_up(n: usize, m: usize) -> usize {
    (n + m - 1) & !(m - 1)
}

impl Picture {
    /// Converts an I420 frame in GStreamer's default layout (no video meta: luma rows of
    /// `round_up(width, 4)` bytes, chroma rows of `round_up(round_up(width, 2) / 2, 4)`) to RGB
    /// (BT.601, limited range, as the decoders output).
    pub fn from_i420(data: &[u8], width: usize, height: usize) -> anyhow::Result<Picture> {
        if width == 0 || height == 0 {
            bail!("empty picture {width}x{height}");
        }
        let ys = round_up(width, 4);
        let cs = round_up(round_up(width, 2) / 2, 4);
        let ch = round_up(height, 2) / 2;
        let u0 = ys * round_up(height, 2);
        let v0 = u0 + cs * ch;
        let size = v0 + cs * ch;
        if data.len() < size {
            bail!(
                "I420 {width}x{height}: {} bytes, the default layout needs {size}",
                data.len()
            );
        }
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                let l = f32::from(data[y * ys + x]) - 16.0;
                let u = f32::from(data[u0 + (y / 2) * cs + x / 2]) - 128.0;
                let v = f32::from(data[v0 + (y / 2) * cs + x / 2]) - 128.0;
                let px = |c: f32| c.round().clamp(0.0, 255.0) as u8;
                rgb.push(px(1.164 * l + 1.596 * v));
                rgb.push(px(1.164 * l - 0.392 * u - 0.813 * v));
                rgb.push(px(1.164 * l + 2.017 * u));
            }
        }
        Ok(Picture { width, height, rgb })
    }

    /// The pixel at (`x`, `y`).
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// The pixels of the rectangle given in fractions of the picture (`x0..x1`, `y0..y1`, each
    /// in 0..=1), at least one.
    fn region(&self, x0: f64, x1: f64, y0: f64, y1: f64) -> impl Iterator<Item = [u8; 3]> + '_ {
        let at = |f: f64, n: usize| ((f * n as f64) as usize).min(n - 1);
        let (xa, ya) = (at(x0, self.width), at(y0, self.height));
        let (xb, yb) = (
            at(x1, self.width).max(xa + 1).min(self.width),
            at(y1, self.height).max(ya + 1).min(self.height),
        );
        (ya..yb).flat_map(move |y| (xa..xb).map(move |x| self.pixel(x, y)))
    }

    /// Writes the picture as a PNG (GStreamer's `pngenc`), for people to look at.
    pub fn save_png(&self, path: &Path) -> anyhow::Result<()> {
        super::init()?;
        let desc = format!(
            "appsrc name=src caps=video/x-raw,format=RGB,width={},height={},framerate=0/1 \
             ! videoconvert ! pngenc ! filesink location=\"{}\"",
            self.width,
            self.height,
            path.display()
        );
        let pipeline = gst::parse::launch(&desc)
            .with_context(|| desc.clone())?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("not a pipeline"))?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| anyhow!("no appsrc"))?;
        pipeline.set_state(gst::State::Playing)?;
        // RGB rows in GStreamer's default layout are padded to 4 bytes.
        let stride = round_up(self.width * 3, 4);
        let mut data = vec![0u8; stride * self.height];
        for (y, row) in self.rgb.chunks(self.width * 3).enumerate() {
            data[y * stride..y * stride + row.len()].copy_from_slice(row);
        }
        src.push_buffer(gst::Buffer::from_mut_slice(data))
            .map_err(|e| anyhow!("appsrc: {e:?}"))?;
        src.end_of_stream().map_err(|e| anyhow!("appsrc: {e:?}"))?;
        let bus = pipeline.bus().ok_or_else(|| anyhow!("no bus"))?;
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        pipeline.set_state(gst::State::Null)?;
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => Ok(()),
            Some(gst::MessageView::Error(e)) => bail!("pngenc: {}", e.error()),
            _ => bail!("pngenc: no end within 10 s"),
        }
    }
}

/// A source pattern a [`Picture`] is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `videotestsrc pattern=ball`: one white ball on black.
    Ball,
    /// `videotestsrc pattern=smpte`: seven colour bars across the top two thirds (the top eighth
    /// may carry field-client's time code, so only rows from 20 % to 60 % of the height count).
    Smpte,
}

/// The seven top bars of GStreamer's `pattern=smpte`, left to right (100 % bars).
pub const SMPTE_BARS: [[u8; 3]; 7] = [
    [255, 255, 255],
    [255, 255, 0],
    [0, 255, 255],
    [0, 255, 0],
    [255, 0, 255],
    [255, 0, 0],
    [0, 0, 255],
];

/// A pixel is within this much of the expected colour in every channel (a healthy stream lands
/// within ~20, missing slices ~100 or more away).
pub const TOLERANCE: u8 = 60;

fn near(p: [u8; 3], want: [u8; 3]) -> bool {
    p.iter().zip(want).all(|(a, b)| a.abs_diff(b) <= TOLERANCE)
}

impl Pattern {
    /// Whether `pic` shows this pattern; the error says what it shows instead.
    pub fn check(self, pic: &Picture) -> Result<(), String> {
        match self {
            Pattern::Ball => check_ball(pic),
            Pattern::Smpte => check_smpte(pic),
        }
    }
}

/// Black (all channels ≤ 60) for all but the ball; the white pixels (all channels ≥ 170) form one
/// ball (their bounding box about as wide and tall as a disc of that many pixels); almost no
/// coloured pixel (channels more than 80 apart).
fn check_ball(pic: &Picture) -> Result<(), String> {
    let (w, h) = (pic.width, pic.height);
    let n = (w * h) as f64;
    let (mut dark, mut coloured, mut white) = (0usize, 0usize, 0usize);
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for y in 0..h {
        for x in 0..w {
            let p = pic.pixel(x, y);
            let (lo, hi) = (*p.iter().min().unwrap(), *p.iter().max().unwrap());
            if hi <= 60 {
                dark += 1;
            }
            if hi - lo > 80 {
                coloured += 1;
            }
            if lo >= 170 {
                white += 1;
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
        }
    }
    let (fd, fc) = (dark as f64 / n, coloured as f64 / n);
    let what = format!(
        "{w}x{h}: {:.1} % black, {:.2} % coloured, {white} white pixels",
        100.0 * fd,
        100.0 * fc
    );
    if fd < 0.85 || fc > 0.005 {
        return Err(format!(
            "not a ball on black ({what}; want ≥ 85 % black, ≤ 0.5 % coloured)"
        ));
    }
    if white < 12 {
        return Err(format!("no ball ({what})"));
    }
    // A disc of `white` pixels is 2·sqrt(white/π) ≈ 1.13·sqrt(white) across.
    let side = 2.0 * (white as f64).sqrt() + 4.0;
    let (bw, bh) = ((x1 - x0 + 1) as f64, (y1 - y0 + 1) as f64);
    if bw > side || bh > side {
        return Err(format!(
            "the white is not one ball ({what}, spread over {bw}x{bh} at {x0},{y0})"
        ));
    }
    Ok(())
}

/// In each of the seven bars (its middle 40 % across, rows 20–60 % of the height), at least 90 %
/// of the pixels within [`TOLERANCE`] of the bar's colour.
fn check_smpte(pic: &Picture) -> Result<(), String> {
    let mut bad = Vec::new();
    for (i, want) in SMPTE_BARS.iter().enumerate() {
        let (x0, x1) = ((i as f64 + 0.3) / 7.0, (i as f64 + 0.7) / 7.0);
        let (mut n, mut ok, mut sum) = (0usize, 0usize, [0u64; 3]);
        for p in pic.region(x0, x1, 0.2, 0.6) {
            n += 1;
            ok += usize::from(near(p, *want));
            for c in 0..3 {
                sum[c] += u64::from(p[c]);
            }
        }
        if ok * 10 < n * 9 {
            let mean = sum.map(|s| s / n.max(1) as u64);
            bad.push(format!(
                "bar {i} {want:?}: mean {mean:?}, {:.0} % near",
                100.0 * ok as f64 / n.max(1) as f64
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not the SMPTE bars ({}x{}): {}",
            pic.width,
            pic.height,
            bad.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame of `videotestsrc pattern=PATTERN` at `w`×`h`, decoded the way a viewer's frames
    /// are (I420), optionally with the top `green` fraction of the rows replaced by what missing
    /// slices decode to (all-zero YUV: green).
    fn source(pattern: &str, w: usize, h: usize, green: f64) -> Picture {
        super::super::init().unwrap();
        let desc = format!(
            "videotestsrc pattern={pattern} num-buffers=1 ! video/x-raw,format=I420,width={w},height={h} \
             ! appsink name=out sync=false"
        );
        let p = gst::parse::launch(&desc)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let sink = p
            .by_name("out")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        p.set_state(gst::State::Playing).unwrap();
        let sample = sink
            .try_pull_sample(gst::ClockTime::from_seconds(10))
            .expect("a frame");
        p.set_state(gst::State::Null).unwrap();
        let buf = sample.buffer().unwrap().map_readable().unwrap();
        let mut data = buf.as_slice().to_vec();
        let rows = (green * h as f64) as usize;
        let ys = round_up(w, 4);
        let cs = round_up(round_up(w, 2) / 2, 4);
        data[..rows * ys].fill(0);
        let u0 = ys * round_up(h, 2);
        let ch = round_up(h, 2) / 2;
        data[u0..u0 + rows / 2 * cs].fill(0);
        data[u0 + cs * ch..u0 + cs * ch + rows / 2 * cs].fill(0);
        Picture::from_i420(&data, w, h).unwrap()
    }

    #[test]
    fn the_sources_pass_and_missing_slices_fail_by_far() {
        for (w, h) in [(640, 480), (320, 240), (162, 122)] {
            let ball = source("ball", w, h, 0.0);
            assert_eq!(Pattern::Ball.check(&ball), Ok(()), "{w}x{h}");
            assert!(Pattern::Smpte.check(&ball).is_err());
            let bars = source("smpte", w, h, 0.0);
            assert_eq!(Pattern::Smpte.check(&bars), Ok(()), "{w}x{h}");
            assert!(Pattern::Ball.check(&bars).is_err());
            // The demo's defect: the top of the picture green.
            let e = Pattern::Ball.check(&source("ball", w, h, 0.4)).unwrap_err();
            assert!(e.contains("not a ball on black"), "{e}");
            let e = Pattern::Smpte
                .check(&source("smpte", w, h, 0.7))
                .unwrap_err();
            assert!(e.contains("bar 0"), "{e}");
        }
        // All black: the ball is missing.
        let black = Picture {
            width: 64,
            height: 48,
            rgb: vec![0; 64 * 48 * 3],
        };
        assert!(Pattern::Ball.check(&black).unwrap_err().contains("no ball"));
        // A bad I420 size is an error, not a panic.
        assert!(Picture::from_i420(&[0; 10], 64, 48).is_err());
        assert!(Picture::from_i420(&[], 0, 0).is_err());
    }

    #[test]
    fn a_picture_is_saved_as_png() {
        let dir = tempfile_dir();
        let path = dir.join("ball.png");
        source("ball", 64, 48, 0.0).save_png(&path).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{} bytes", png.len());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("yiwang-picture-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
