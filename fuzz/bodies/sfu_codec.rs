//! Body of the `sfu_codec` fuzz target (and of its corpus replay in
//! `tests/tests/security/fuzz_corpus.rs`): the SFU's codec sniffing (`sfu::codec::keyframe_dims`,
//! which reads the picture size of simulcast layers out of frames from the network) on random
//! VP8 frames and H.264 access units.
//!
//! Properties: never a panic; a size found is at least 1×1, and a VP8 size fits its 14 bits.

use sfu::codec::{keyframe_dims, VideoCodec};

/// Runs one input: the first byte picks the codec, the rest is the frame.
pub fn run(data: &[u8]) {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let codec = if sel % 2 == 0 {
        VideoCodec::Vp8
    } else {
        VideoCodec::H264
    };
    if let Some((w, h)) = keyframe_dims(codec, frame) {
        assert!(w > 0 && h > 0, "empty picture {w}x{h}");
        if codec == VideoCodec::Vp8 {
            assert!(
                w <= 0x3fff && h <= 0x3fff,
                "VP8 size beyond 14 bits: {w}x{h}"
            );
        }
    }
}
