//! Just enough bitstream parsing to rank simulcast layers by resolution: the picture size of a
//! VP8 keyframe and of an H.264 sequence parameter set. Pure functions over bytes received from
//! the network: every read is bounds-checked and malformed input gives `None`, never a panic.

/// Width and height in pixels of a keyframe, when the codec's bitstream says so.
pub fn keyframe_dims(codec: VideoCodec, frame: &[u8]) -> Option<(u32, u32)> {
    match codec {
        VideoCodec::Vp8 => vp8_dims(frame),
        VideoCodec::H264 => h264_dims(frame),
    }
}

/// The video codecs whose bitstream this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (RFC 6386).
    Vp8,
    /// H.264 in Annex B byte-stream form (start codes), as str0m depacketizes it.
    H264,
}

/// VP8 keyframe: 3-byte frame tag (bit 0 of byte 0 clear), start code 9d 01 2a, then 14-bit
/// width and height (the top two bits are the scaling mode).
fn vp8_dims(f: &[u8]) -> Option<(u32, u32)> {
    if f.len() < 10 || f[0] & 1 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
    let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
    (w > 0 && h > 0).then_some((u32::from(w), u32::from(h)))
}

/// The first SPS (NAL type 7) of an Annex B access unit, parsed for its cropped picture size.
fn h264_dims(au: &[u8]) -> Option<(u32, u32)> {
    let mut i = 0;
    while i + 3 < au.len() {
        // Find a start code 00 00 01 (a 4-byte 00 00 00 01 ends the same way).
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            let start = i + 3;
            let end = (start..au.len().saturating_sub(2))
                .find(|&j| au[j] == 0 && au[j + 1] == 0 && (au[j + 2] == 1 || au[j + 2] == 0))
                .unwrap_or(au.len());
            if au.get(start).is_some_and(|b| b & 0x1f == 7) {
                return sps_dims(&unescape(&au[start + 1..end]));
            }
            i = end;
        } else {
            i += 1;
        }
    }
    None
}

/// Removes emulation-prevention bytes (00 00 03 → 00 00).
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut zeros = 0;
    for &x in b {
        if zeros >= 2 && x == 3 {
            zeros = 0;
            continue;
        }
        zeros = if x == 0 { zeros + 1 } else { 0 };
        out.push(x);
    }
    out
}

struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.b.get(self.pos / 8)?;
        let v = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(v))
    }
    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }
    /// Exp-Golomb unsigned.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k % 2 == 1 {
            k.div_ceil(2) as i32
        } else {
            -((k / 2) as i32)
        })
    }
}

/// Parses an SPS RBSP (after the NAL header byte) for the cropped luma size.
fn sps_dims(rbsp: &[u8]) -> Option<(u32, u32)> {
    let mut r = Bits { b: rbsp, pos: 0 };
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return None; // 0..=3 are the only formats (H.264 7.4.2.1.1)
        }
        if chroma_format_idc == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            // seq_scaling_matrix_present_flag: skip the scaling lists.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            // delta_scale is -128..=127 (7.4.2.1.1.1); beyond it the SPS lies.
                            let delta = r.se()?;
                            if !(-128..=127).contains(&delta) {
                                return None;
                            }
                            next = (last + delta + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_map_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut crop_x, mut crop_y) = (0, 0);
    if r.bit()? == 1 {
        let (l, rt, t, b) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (unit_x, unit_y) = match chroma_format_idc {
            0 => (1, 2 - frame_mbs_only),
            1 => (2, 2 * (2 - frame_mbs_only)),
            2 => (2, 2 - frame_mbs_only),
            _ => (1, 2 - frame_mbs_only),
        };
        crop_x = l.checked_add(rt)?.checked_mul(unit_x)?;
        crop_y = t.checked_add(b)?.checked_mul(unit_y)?;
    }
    let w = width_mbs.checked_mul(16)?.checked_sub(crop_x)?;
    let h = height_map_units
        .checked_mul(16)?
        .checked_mul(2 - frame_mbs_only)?
        .checked_sub(crop_y)?;
    (w > 0 && h > 0 && w <= 16384 && h <= 16384).then_some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn h264_sps_from_x264() {
        // Captured from GStreamer x264enc: constrained baseline 640x360 (cropped from 368 rows)
        // and main 1280x720, each an AUD then the SPS, with emulation prevention bytes.
        let baseline = hex(
            "000000010910000000016742c01ed900a02ff97016a0c0c0d4a0000003002000000791e2c5c900000001",
        );
        assert_eq!(keyframe_dims(VideoCodec::H264, &baseline), Some((640, 360)));
        let main = hex(
            "00000001091000000001674d401feca02802dd80b501010140000003004000000f23c60c658000000001",
        );
        assert_eq!(keyframe_dims(VideoCodec::H264, &main), Some((1280, 720)));
    }

    #[test]
    fn vp8_keyframe_header() {
        let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        f.extend(320u16.to_le_bytes());
        f.extend((180u16 | 0x4000).to_le_bytes()); // scaling bits are ignored
        assert_eq!(keyframe_dims(VideoCodec::Vp8, &f), Some((320, 180)));
        f[0] |= 1; // an interframe carries no size
        assert_eq!(keyframe_dims(VideoCodec::Vp8, &f), None);
    }

    /// An SPS written field by field, to craft values a real encoder never sends.
    #[derive(Default)]
    struct SpsWriter {
        bits: Vec<bool>,
    }

    impl SpsWriter {
        fn bits(&mut self, n: u32, v: u64) -> &mut Self {
            self.bits.extend((0..n).rev().map(|i| (v >> i) & 1 == 1));
            self
        }
        fn ue(&mut self, v: u64) -> &mut Self {
            let n = 64 - (v + 1).leading_zeros();
            self.bits(n - 1, 0).bits(n, v + 1)
        }
        fn ues(&mut self, vs: &[u64]) -> &mut Self {
            vs.iter().fold(self, |w, &v| w.ue(v))
        }
        fn se(&mut self, v: i64) -> &mut Self {
            let k = if v > 0 {
                2 * v.unsigned_abs() - 1
            } else {
                2 * v.unsigned_abs()
            };
            self.ue(k)
        }
        /// profile_idc, constraint flags and level_idc, seq_parameter_set_id 0.
        fn start(profile_idc: u64) -> Self {
            let mut w = SpsWriter::default();
            w.bits(8, profile_idc).bits(16, 30).ue(0);
            w
        }
        /// High profile fields: chroma_format_idc, 8-bit depths, no transform bypass.
        fn high(chroma_format_idc: u64) -> Self {
            let mut w = SpsWriter::start(100);
            w.ues(&[chroma_format_idc, 0, 0]).bits(1, 0);
            w
        }
        /// Frame numbering, POC type 2, one reference frame, 640x368 progressive, then the
        /// cropping window when given as (left, right, top, bottom).
        fn picture(&mut self, crop: Option<[u64; 4]>) -> &mut Self {
            self.ues(&[0, 2, 1]).bits(1, 0).ues(&[39, 22]).bits(2, 0b11);
            match crop {
                Some(offsets) => self.bits(1, 1).ues(&offsets),
                None => self.bits(1, 0),
            }
        }
        /// Ends the SPS after its cropping fields: no VUI, the RBSP stop bit, byte padding,
        /// emulation prevention and a start code in front.
        fn annex_b(&mut self) -> Vec<u8> {
            self.bits(1, 0).bits(1, 1);
            self.bits.resize(self.bits.len().next_multiple_of(8), false);
            let mut out = vec![0, 0, 0, 1, 0x67];
            let mut zeros = 0;
            for chunk in self.bits.chunks(8) {
                let b = chunk.iter().fold(0u8, |a, &bit| (a << 1) | u8::from(bit));
                if zeros >= 2 && b <= 3 {
                    out.push(3);
                    zeros = 0;
                }
                zeros = if b == 0 { zeros + 1 } else { 0 };
                out.push(b);
            }
            out
        }
    }

    fn baseline(crop: Option<[u64; 4]>) -> Vec<u8> {
        SpsWriter::start(66).picture(crop).annex_b()
    }

    #[test]
    fn a_written_sps_reads_back_its_size() {
        assert_eq!(
            keyframe_dims(VideoCodec::H264, &baseline(None)),
            Some((640, 368))
        );
        let cropped = baseline(Some([0, 0, 0, 4]));
        assert_eq!(keyframe_dims(VideoCodec::H264, &cropped), Some((640, 360)));
    }

    #[test]
    fn crop_offsets_that_overflow_are_rejected() {
        // 2 * 2^31 wraps to 0 in 32 bits: the old code panicked in debug and reported the
        // uncropped 640x368 in release.
        for crop in [
            [1 << 31, 0, 0, 0],
            [0, 0, 0, 1 << 31],
            [u32::MAX as u64 - 1, 2, 0, 0],
        ] {
            assert_eq!(keyframe_dims(VideoCodec::H264, &baseline(Some(crop))), None);
        }
    }

    #[test]
    fn a_scaling_list_delta_out_of_range_is_rejected() {
        // High profile, 4:2:0, the first scaling list present with a delta of 2^31 - 1 (the
        // standard allows -128..=127): the old code overflowed `last + delta`.
        let mut w = SpsWriter::high(1);
        w.bits(1, 1).bits(1, 1).se(i32::MAX as i64);
        assert_eq!(keyframe_dims(VideoCodec::H264, &w.annex_b()), None);
        // The same SPS with a delta in range (list 0 ends at once: next scale 0), the other
        // seven lists absent and the rest of the fields complete.
        let mut w = SpsWriter::high(1);
        w.bits(1, 1).bits(1, 1).se(-8).bits(7, 0).picture(None);
        assert_eq!(
            keyframe_dims(VideoCodec::H264, &w.annex_b()),
            Some((640, 368))
        );
    }

    #[test]
    fn an_impossible_chroma_format_is_rejected() {
        let mut w = SpsWriter::high(4);
        w.bits(1, 0).picture(None);
        assert_eq!(keyframe_dims(VideoCodec::H264, &w.annex_b()), None);
        let mut w = SpsWriter::high(1);
        w.bits(1, 0).picture(None);
        assert_eq!(
            keyframe_dims(VideoCodec::H264, &w.annex_b()),
            Some((640, 368))
        );
    }

    #[test]
    fn malformed_input_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            for _ in 0..50 {
                let mut f: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let _ = keyframe_dims(VideoCodec::Vp8, &f);
                let _ = keyframe_dims(VideoCodec::H264, &f);
                if len > 5 {
                    f[..5].copy_from_slice(&[0, 0, 0, 1, 0x67]);
                    let _ = keyframe_dims(VideoCodec::H264, &f);
                }
            }
        }
        // Every truncation of a real SPS.
        let main = hex("00000001674d401feca02802dd80b501010140000003004000000f23c60c6580");
        for n in 0..main.len() {
            let _ = keyframe_dims(VideoCodec::H264, &main[..n]);
        }
    }
}
