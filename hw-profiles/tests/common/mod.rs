//! Helpers shared by the integration tests.
#![allow(dead_code)]

use hw_profiles::{load, ProfileError, SHIPPED};

/// The text of a shipped profile.
pub fn text(file: &str) -> &'static str {
    SHIPPED
        .iter()
        .find(|(n, _)| *n == file)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no {file}"))
}

/// Loads `file` after replacing the first occurrence of `from` with `to`; expects failure.
pub fn mutated_err(file: &str, from: &str, to: &str) -> ProfileError {
    let original = text(file);
    assert!(original.contains(from), "{file} has no {from:?}");
    let mutated = original.replacen(from, to, 1);
    match load(file, &mutated) {
        Ok(_) => panic!("{file} with {from:?} -> {to:?} should fail"),
        Err(e) => e,
    }
}

/// A `has_element` that says yes only to the listed elements.
pub fn only(elements: &'static [&'static str]) -> impl Fn(&str) -> bool {
    move |e| elements.contains(&e)
}

/// What Debian 12's GStreamer packages give on a machine without GPU or VPU.
pub const DEBIAN_SOFTWARE: &[&str] = &[
    "x264enc",
    "openh264enc",
    "vp8enc",
    "avdec_h264",
    "avdec_h265",
    "avdec_vp8",
    "openh264dec",
    "vp8dec",
    "libde265dec",
    "h264parse",
    "h265parse",
    "rtph264depay",
    "rtph265depay",
    "rtpvp8depay",
    "videoconvert",
    "opusenc",
    "opusdec",
];
