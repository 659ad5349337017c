//! MAVLink 1 and 2 framing: a decoder fed arbitrary byte chunks, and the encoder of the frames the
//! bridge sends. Messages themselves (payload layouts) come from the `mavlink` crate's
//! `ardupilotmega` dialect (which includes `common`); framing is ours so that every frame keeps its
//! raw bytes for routing, the tlog and signature checks.
//!
//! It must not touch sockets or clocks: bytes in, [`Frame`]s out, counters on the side.
//!
//! Decoding rules (what is counted where, see [`DecodeStats`]):
//! - bytes before a start marker (`0xFE` MAVLink 1, `0xFD` MAVLink 2) are `garbage_bytes`;
//! - a MAVLink 2 header with incompatibility flags other than "signed" is not a frame: its start
//!   byte is garbage and the search goes on one byte later;
//! - a frame whose message id is not in the dialect cannot be checked (its CRC_EXTRA is unknown):
//!   `unknown_id`, and the search goes on one byte later;
//! - a frame whose checksum does not match is `bad_crc`, and the search goes on one byte later
//!   (so a frame cut short and followed by the next one shows up as one `bad_crc`, then the next
//!   frame is found);
//! - input that ends inside a frame ([`FrameDecoder::end_of_input`]: the end of a UDP datagram, a
//!   closed TCP connection) is `truncated`.

use std::sync::OnceLock;

use mavlink::dialects::ardupilotmega::MavMessage;
use mavlink::{MavlinkVersion, Message};

/// MAVLink 1 start marker.
pub const STX_V1: u8 = 0xFE;
/// MAVLink 2 start marker.
pub const STX_V2: u8 = 0xFD;
/// MAVLink 2 incompatibility flag: the frame carries a signature.
pub const IFLAG_SIGNED: u8 = 0x01;
/// Bytes of a MAVLink 2 signature (link id, 48-bit timestamp, 48-bit signature).
pub const SIGNATURE_LEN: usize = 13;
/// The largest frame (MAVLink 2, 255-byte payload, signed).
pub const MAX_FRAME_LEN: usize = 10 + 255 + 2 + SIGNATURE_LEN;

/// A MAVLink system id (1..=255; 0 is broadcast).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysId(pub u8);

impl std::fmt::Display for SysId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The CRC_EXTRA byte of every message id of the dialect (ids up to 65535), built once.
fn extra_crc_table() -> &'static [Option<u8>] {
    static TABLE: OnceLock<Vec<Option<u8>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX as u32)
            .map(|id| MavMessage::default_message_from_id(id).map(|_| MavMessage::extra_crc(id)))
            .collect()
    })
}

/// The CRC_EXTRA of `msgid`, if the dialect knows the message.
pub fn extra_crc(msgid: u32) -> Option<u8> {
    extra_crc_table().get(msgid as usize).copied().flatten()
}

/// CRC-16/MCRF4XX (X.25) as MAVLink uses it, over `data` then `extra`.
pub fn crc(data: &[u8], extra: u8) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data.iter().chain(std::iter::once(&extra)) {
        let mut tmp = b ^ (crc as u8);
        tmp ^= tmp << 4;
        crc = (crc >> 8) ^ (u16::from(tmp) << 8) ^ (u16::from(tmp) << 3) ^ (u16::from(tmp) >> 4);
    }
    crc
}

/// One checked frame with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Vec<u8>,
}

impl Frame {
    /// The frame's protocol version.
    pub fn version(&self) -> MavlinkVersion {
        if self.bytes[0] == STX_V2 {
            MavlinkVersion::V2
        } else {
            MavlinkVersion::V1
        }
    }

    fn is_v2(&self) -> bool {
        self.bytes[0] == STX_V2
    }

    /// Header length including the start marker.
    fn header_len(&self) -> usize {
        if self.is_v2() {
            10
        } else {
            6
        }
    }

    /// The raw frame, start marker to checksum (and signature).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Sequence number.
    pub fn seq(&self) -> u8 {
        self.bytes[if self.is_v2() { 4 } else { 2 }]
    }

    /// Sender system id.
    pub fn sysid(&self) -> SysId {
        SysId(self.bytes[if self.is_v2() { 5 } else { 3 }])
    }

    /// Sender component id.
    pub fn compid(&self) -> u8 {
        self.bytes[if self.is_v2() { 6 } else { 4 }]
    }

    /// Message id.
    pub fn msgid(&self) -> u32 {
        if self.is_v2() {
            u32::from_le_bytes([self.bytes[7], self.bytes[8], self.bytes[9], 0])
        } else {
            u32::from(self.bytes[5])
        }
    }

    /// The payload (MAVLink 2 payloads may be cut after their last non-zero byte).
    pub fn payload(&self) -> &[u8] {
        let h = self.header_len();
        &self.bytes[h..h + usize::from(self.bytes[1])]
    }

    /// Whether the frame is MAVLink 2 and signed.
    pub fn is_signed(&self) -> bool {
        self.is_v2() && self.bytes[2] & IFLAG_SIGNED != 0
    }

    /// The signature block (link id, timestamp, signature) of a signed frame.
    pub fn signature(&self) -> Option<&[u8]> {
        self.is_signed()
            .then(|| &self.bytes[self.bytes.len() - SIGNATURE_LEN..])
    }

    /// Decodes the payload as a message of the dialect.
    pub fn decode(&self) -> Result<MavMessage, mavlink::error::ParserError> {
        MavMessage::parse(self.version(), self.msgid(), self.payload())
    }

    /// Builds a frame from raw bytes that are already known to be one whole, checked frame.
    fn from_checked(bytes: Vec<u8>) -> Frame {
        Frame { bytes }
    }
}

/// What a decoder has seen, cumulatively.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecodeStats {
    /// Frames with a good checksum.
    pub frames: u64,
    /// Frames whose checksum did not match.
    pub bad_crc: u64,
    /// Frames of a message id the dialect does not know (not checkable, not forwarded).
    pub unknown_id: u64,
    /// Bytes outside any frame.
    pub garbage_bytes: u64,
    /// Frames cut off by the end of a datagram or connection.
    pub truncated: u64,
}

impl DecodeStats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &DecodeStats) {
        self.frames += other.frames;
        self.bad_crc += other.bad_crc;
        self.unknown_id += other.unknown_id;
        self.garbage_bytes += other.garbage_bytes;
        self.truncated += other.truncated;
    }
}

/// A buffer of received bytes that yields frames: [`push`](Self::push) bytes, then call
/// [`next_frame`](Self::next_frame) until it returns `None`.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    stats: DecodeStats,
}

/// Outcome of looking at the bytes at the current position.
enum Look {
    /// Not enough bytes yet.
    Wait,
    /// A frame of this many bytes.
    Frame(usize),
    /// Not a frame here: skip one byte.
    Skip,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Counters so far.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Bytes waiting for the rest of a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole, checked frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let rest = &self.buf[self.start..];
            let Some(at) = rest.iter().position(|&b| b == STX_V1 || b == STX_V2) else {
                self.stats.garbage_bytes += rest.len() as u64;
                self.buf.clear();
                self.start = 0;
                return None;
            };
            self.stats.garbage_bytes += at as u64;
            self.start += at;
            match self.look() {
                Look::Wait => return None,
                Look::Skip => self.start += 1,
                Look::Frame(len) => {
                    let bytes = self.buf[self.start..self.start + len].to_vec();
                    self.start += len;
                    self.stats.frames += 1;
                    return Some(Frame::from_checked(bytes));
                }
            }
        }
    }

    /// The input ended (end of a datagram, connection closed): bytes still waiting are a
    /// truncated frame. Call after draining [`next_frame`](Self::next_frame).
    pub fn end_of_input(&mut self) {
        if self.pending() > 0 {
            self.stats.truncated += 1;
        }
        self.buf.clear();
        self.start = 0;
    }

    fn look(&mut self) -> Look {
        let b = &self.buf[self.start..];
        let v2 = b[0] == STX_V2;
        let header = if v2 { 10 } else { 6 };
        if b.len() < header {
            return Look::Wait;
        }
        let payload = usize::from(b[1]);
        let mut len = header + payload + 2;
        if v2 {
            let incompat = b[2];
            if incompat & !IFLAG_SIGNED != 0 {
                self.stats.garbage_bytes += 1;
                return Look::Skip;
            }
            if incompat & IFLAG_SIGNED != 0 {
                len += SIGNATURE_LEN;
            }
        }
        if b.len() < len {
            return Look::Wait;
        }
        let msgid = if v2 {
            u32::from_le_bytes([b[7], b[8], b[9], 0])
        } else {
            u32::from(b[5])
        };
        let Some(extra) = extra_crc(msgid) else {
            self.stats.unknown_id += 1;
            return Look::Skip;
        };
        let end = header + payload;
        let want = u16::from_le_bytes([b[end], b[end + 1]]);
        if crc(&b[1..end], extra) != want {
            self.stats.bad_crc += 1;
            return Look::Skip;
        }
        Look::Frame(len)
    }
}

/// The sender fields of a frame the bridge builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// System id.
    pub sysid: u8,
    /// Component id.
    pub compid: u8,
    /// Sequence number.
    pub seq: u8,
}

/// Encodes `msg` as a MAVLink 2 frame from `sender`. With `signed`, the header says so and room is
/// left for the signature, which [`crate::signing::Signer::sign`] then fills in; without, the frame
/// is complete.
pub fn encode_v2(sender: Sender, msg: &MavMessage, signed: bool) -> Vec<u8> {
    let mut payload = [0u8; 255];
    let n = msg.ser(MavlinkVersion::V2, &mut payload);
    let id = msg.message_id();
    let mut out = Vec::with_capacity(10 + n + 2 + if signed { SIGNATURE_LEN } else { 0 });
    out.extend_from_slice(&[
        STX_V2,
        n as u8,
        if signed { IFLAG_SIGNED } else { 0 },
        0,
        sender.seq,
        sender.sysid,
        sender.compid,
    ]);
    out.extend_from_slice(&id.to_le_bytes()[..3]);
    out.extend_from_slice(&payload[..n]);
    let c = crc(&out[1..], MavMessage::extra_crc(id));
    out.extend_from_slice(&c.to_le_bytes());
    if signed {
        out.extend_from_slice(&[0; SIGNATURE_LEN]);
    }
    out
}

/// Encodes `msg` as a MAVLink 1 frame (message ids up to 255 only; `None` otherwise).
pub fn encode_v1(sender: Sender, msg: &MavMessage) -> Option<Vec<u8>> {
    let id = u8::try_from(msg.message_id()).ok()?;
    let mut payload = [0u8; 255];
    let n = msg.ser(MavlinkVersion::V1, &mut payload);
    let mut out = vec![STX_V1, n as u8, sender.seq, sender.sysid, sender.compid, id];
    out.extend_from_slice(&payload[..n]);
    let c = crc(&out[1..], MavMessage::extra_crc(u32::from(id)));
    out.extend_from_slice(&c.to_le_bytes());
    Some(out)
}

/// Parses bytes that hold exactly one frame (tests and tools).
pub fn parse_one(bytes: &[u8]) -> Option<Frame> {
    let mut d = FrameDecoder::new();
    d.push(bytes);
    let f = d.next_frame()?;
    (d.pending() == 0).then_some(f)
}

/// The fuzz target's body (`fuzz/fuzz_targets/mavlink_frames.rs`): `data` fed whole and in
/// chunks must give the same frames, never a panic, and every frame must decode or fail cleanly.
pub fn fuzz_decode(data: &[u8]) {
    let run = |chunk: usize| {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            d.push(c);
            while let Some(f) = d.next_frame() {
                let _ = f.decode();
                out.push(f);
            }
        }
        d.end_of_input();
        out
    };
    let whole = run(data.len());
    let split = run(1 + data.first().map_or(0, |b| usize::from(*b) % 17));
    assert_eq!(whole, split, "chunking changed the frames");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mavlink::dialects::ardupilotmega::*;

    /// Every HEARTBEAT field set explicitly (the crate's default claims "armed").
    pub(crate) fn heartbeat() -> MavMessage {
        MavMessage::HEARTBEAT(HEARTBEAT_DATA {
            custom_mode: 4,
            mavtype: MavType::MAV_TYPE_QUADROTOR,
            autopilot: MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA,
            base_mode: MavModeFlag::MAV_MODE_FLAG_CUSTOM_MODE_ENABLED,
            system_status: MavState::MAV_STATE_STANDBY,
            mavlink_version: 3,
        })
    }

    pub(crate) fn position() -> MavMessage {
        MavMessage::GLOBAL_POSITION_INT(GLOBAL_POSITION_INT_DATA {
            time_boot_ms: 1000,
            lat: 305_000_000,
            lon: 1_143_000_000,
            alt: 52_000,
            relative_alt: 30_000,
            vx: 100,
            vy: -50,
            vz: 0,
            hdg: 9000,
        })
    }

    /// A stream of frames of both versions, signed and not, with garbage in between; and the frames
    /// it holds.
    pub(crate) fn captured() -> (Vec<u8>, Vec<Vec<u8>>) {
        let s = |seq| Sender {
            sysid: 1,
            compid: 1,
            seq,
        };
        let mut frames = vec![
            encode_v2(s(0), &heartbeat(), false),
            encode_v1(s(1), &position()).unwrap(),
            encode_v2(s(2), &position(), false),
            encode_v2(
                s(3),
                &MavMessage::STATUSTEXT(STATUSTEXT_DATA {
                    severity: MavSeverity::MAV_SEVERITY_INFO,
                    text: "hello from the vehicle".into(),
                }),
                false,
            ),
        ];
        let mut signer = crate::signing::Signer::new(crate::signing::SigningKey([7; 32]), 1);
        let mut signed = encode_v2(s(4), &heartbeat(), true);
        signer.sign(&mut signed, 1_000_000);
        frames.push(signed);
        // An all-zero payload: MAVLink 2 cuts it to one byte.
        frames.push(encode_v2(
            s(5),
            &MavMessage::ATTITUDE(ATTITUDE_DATA {
                time_boot_ms: 0,
                roll: 0.0,
                pitch: 0.0,
                yaw: 0.0,
                rollspeed: 0.0,
                pitchspeed: 0.0,
                yawspeed: 0.0,
            }),
            false,
        ));
        let mut stream = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            stream.extend_from_slice(&[0x00, 0x42, 0x13][..i % 3]);
            stream.extend_from_slice(f);
        }
        (stream, frames)
    }

    #[test]
    fn the_same_frames_at_every_chunk_size() {
        let (stream, want) = captured();
        for chunk in 1..=stream.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                d.push(c);
                while let Some(f) = d.next_frame() {
                    got.push(f.bytes().to_vec());
                }
            }
            assert_eq!(got, want, "chunk size {chunk}");
            let st = d.stats();
            assert_eq!(
                (st.frames, st.bad_crc, st.unknown_id, st.truncated),
                (want.len() as u64, 0, 0, 0)
            );
            assert_eq!(
                st.garbage_bytes,
                (0..want.len()).map(|i| (i % 3) as u64).sum::<u64>()
            );
        }
    }

    #[test]
    fn frames_decode_to_their_messages() {
        let (_, frames) = captured();
        let f = parse_one(&frames[1]).unwrap();
        assert_eq!(f.version(), MavlinkVersion::V1);
        assert_eq!(f.decode().unwrap(), position());
        let f = parse_one(&frames[4]).unwrap();
        assert!(f.is_signed());
        assert_eq!(
            (f.sysid(), f.compid(), f.seq(), f.msgid()),
            (SysId(1), 1, 4, 0)
        );
        assert_eq!(f.decode().unwrap(), heartbeat());
        let f = parse_one(&frames[5]).unwrap();
        assert_eq!(f.payload().len(), 1);
        assert!(matches!(f.decode().unwrap(), MavMessage::ATTITUDE(_)));
    }

    #[test]
    fn bad_crc_truncation_and_unknown_ids_are_counted() {
        let (_, frames) = captured();
        let mut bad = frames[0].clone();
        let n = bad.len();
        bad[n - 1] ^= 0xFF;
        let mut d = FrameDecoder::new();
        d.push(&bad);
        d.push(&frames[2]);
        assert_eq!(d.next_frame().unwrap().bytes(), &frames[2][..]);
        assert!(d.next_frame().is_none());
        assert_eq!(d.stats().bad_crc, 1);

        // Cut short, then more frames: the cut one's length swallows the start of what follows
        // (one bad CRC), and decoding resumes at the next whole frame.
        let mut d = FrameDecoder::new();
        d.push(&frames[2][..10]);
        for _ in 0..3 {
            d.push(&frames[0]);
        }
        let mut got = Vec::new();
        while let Some(f) = d.next_frame() {
            got.push(f);
        }
        assert_eq!(d.stats().bad_crc, 1);
        assert!(
            !got.is_empty() && got.iter().all(|f| f.bytes() == &frames[0][..]),
            "{got:?}"
        );

        // A datagram that ends inside a frame.
        let mut d = FrameDecoder::new();
        d.push(&frames[2][..frames[2].len() - 3]);
        assert!(d.next_frame().is_none());
        d.end_of_input();
        assert_eq!(d.stats().truncated, 1);

        // Message id 0xFFFFFF is in no dialect.
        let mut unknown = frames[0].clone();
        unknown[7..10].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        let mut d = FrameDecoder::new();
        d.push(&unknown);
        assert!(d.next_frame().is_none());
        assert_eq!(d.stats().unknown_id, 1);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small xorshift: the same bytes every run.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut d = FrameDecoder::new();
        for round in 0..2000 {
            let mut chunk = Vec::new();
            for _ in 0..(round % 300) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.push(if x.is_multiple_of(7) { STX_V2 } else { x as u8 });
            }
            fuzz_decode(&chunk);
            d.push(&chunk);
            while let Some(f) = d.next_frame() {
                let _ = f.decode();
            }
        }
    }

    #[test]
    fn crc_matches_the_mavlink_crate() {
        let data = b"123456789abc";
        assert_eq!(crc(data, 50), mavlink::calculate_crc(data, 50));
    }
}
