//! The datagram format of the trunk media plane (see the module docs of [`super`]): a frame cut
//! into RTP packets of a private payload format at the origin ([`packetize`]), read back at
//! every hop ([`parse`]), with 16- and 32-bit numbers extended to 64 bits ([`extend16`],
//! [`extend32`]). Pure functions over bytes; no state, no I/O.

/// Largest frame fragment in one datagram, bytes: with the flow id, RTP header and flags the
/// datagram stays within 1,200 bytes (QUIC's datagram room at the 1350-byte initial MTU).
pub const FRAGMENT: usize = 1_150;

/// Flag: the first fragment of a frame.
pub(super) const F_FIRST: u8 = 1;
/// Flag: a fragment of a keyframe.
pub(super) const F_KEY: u8 = 2;
/// Flag (on the first fragment): something was lost before this frame at the origin.
pub(super) const F_DISCONT: u8 = 4;
/// Flow id, RTP fixed header and flags: the bytes of a datagram before its fragment.
pub(super) const HEADER: usize = 2 + 12 + 1;

/// What every packet of one frame carries besides its fragment.
pub(super) struct FrameHeader {
    /// RTP payload type (the origin's).
    pub(super) pt: u8,
    /// Media time; its low 32 bits are the RTP timestamp.
    pub(super) time: u64,
    /// The track's SSRC at the origin.
    pub(super) ssrc: u32,
    /// Whether the frame is a keyframe.
    pub(super) keyframe: bool,
    /// Whether something was lost before it at the origin.
    pub(super) discontinuity: bool,
}

/// Cuts a frame into packets of at most [`FRAGMENT`] payload bytes, numbered from `first_seq`
/// (an empty frame is one empty packet). The last one has the RTP marker bit.
pub(super) fn packetize(frame: &FrameHeader, first_seq: u16, data: &[u8]) -> Vec<Vec<u8>> {
    let n = data.len().div_ceil(FRAGMENT).max(1);
    let mut packets = Vec::with_capacity(n);
    let mut seq = first_seq;
    for i in 0..n {
        let chunk = &data[(i * FRAGMENT).min(data.len())..((i + 1) * FRAGMENT).min(data.len())];
        let mut p = Vec::with_capacity(13 + chunk.len());
        p.push(0x80);
        p.push(if i + 1 == n { 0x80 } else { 0 } | (frame.pt & 0x7f));
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(frame.time as u32).to_be_bytes());
        p.extend_from_slice(&frame.ssrc.to_be_bytes());
        let mut flags = 0;
        if i == 0 {
            flags |= F_FIRST;
            if frame.discontinuity {
                flags |= F_DISCONT;
            }
        }
        if frame.keyframe {
            flags |= F_KEY;
        }
        p.push(flags);
        p.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
        packets.push(p);
    }
    packets
}

/// `seq` extended to 64 bits next to `last` (RFC 3550 style: the nearest value).
pub(super) fn extend16(last: Option<u64>, seq: u16) -> u64 {
    let Some(last) = last else {
        return 1 << 16 | u64::from(seq);
    };
    let base = last & !0xffff;
    let cands = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
    cands
        .iter()
        .map(|b| b.wrapping_add(u64::from(seq)))
        .min_by_key(|c| c.abs_diff(last))
        .unwrap_or(base | u64::from(seq))
}

/// `ts` extended to 64 bits next to `last`.
pub(super) fn extend32(last: Option<u64>, ts: u32) -> u64 {
    let Some(last) = last else {
        return 1 << 32 | u64::from(ts);
    };
    let base = last & !0xffff_ffff;
    [base.wrapping_sub(1 << 32), base, base + (1 << 32)]
        .iter()
        .map(|b| b.wrapping_add(u64::from(ts)))
        .min_by_key(|c| c.abs_diff(last))
        .unwrap_or(base | u64::from(ts))
}

/// A parsed datagram body (after the flow id).
pub(super) struct Packet<'a> {
    pub(super) marker: bool,
    pub(super) seq: u16,
    pub(super) ts: u32,
    pub(super) flags: u8,
    pub(super) payload: &'a [u8],
}

/// Reads a datagram body (after the flow id); `None` if it is not one of ours.
pub(super) fn parse(rtp: &[u8]) -> Option<Packet<'_>> {
    if rtp.len() < 13 || rtp[0] != 0x80 {
        return None;
    }
    Some(Packet {
        marker: rtp[1] & 0x80 != 0,
        seq: u16::from_be_bytes([rtp[2], rtp[3]]),
        ts: u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]),
        flags: rtp[12],
        payload: &rtp[13..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_cut_into_numbered_fragments_and_read_back() {
        let frame = FrameHeader {
            pt: 96,
            time: 0x1_0000_0005,
            ssrc: 7,
            keyframe: true,
            discontinuity: true,
        };
        for len in [
            0,
            1,
            FRAGMENT - 1,
            FRAGMENT,
            FRAGMENT + 1,
            3 * FRAGMENT + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let packets = packetize(&frame, u16::MAX, &data);
            assert_eq!(packets.len(), len.div_ceil(FRAGMENT).max(1), "{len} bytes");
            let mut joined = Vec::new();
            for (i, p) in packets.iter().enumerate() {
                assert!(p.len() + 2 <= HEADER + FRAGMENT);
                let r = parse(p).expect("ours");
                assert_eq!(r.seq, u16::MAX.wrapping_add(i as u16));
                assert_eq!(r.ts, 5, "the low 32 bits of the time");
                assert_eq!(r.marker, i + 1 == packets.len());
                assert_eq!(r.flags & F_FIRST != 0, i == 0);
                assert_eq!(r.flags & F_DISCONT != 0, i == 0);
                assert_ne!(r.flags & F_KEY, 0);
                joined.extend_from_slice(r.payload);
            }
            assert_eq!(joined, data);
        }
        assert!(parse(&[0x80; 12]).is_none(), "too short");
        assert!(
            parse(&[0x90; 20]).is_none(),
            "not version 2 without extensions"
        );
    }
}
