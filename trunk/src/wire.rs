//! The trunk control protocol: typed messages in versioned, length-prefixed frames.
//!
//! ```text
//! frame   = length:u32be body            (length = body bytes, 2 ..= MAX_FRAME)
//! body    = version:u8 (=1) type:u8 fields
//! string  = len:u8 bytes                 (validated as a node or stream name)
//! addr    = node:string stream:string    (NODE/STREAM)
//! layers  = u8 bitmask (bit n = layer n)
//! ```
//!
//! | type | message | fields |
//! |---|---|---|
//! | 1 | `Hello` | node:string |
//! | 2 | `Announce` | count:u16, count × (addr, layers, cost:u16) |
//! | 3 | `Withdraw` | count:u16, count × addr |
//! | 4 | `Subscribe` | addr, layers |
//! | 5 | `Unsubscribe` | addr |
//! | 6 | `Subscribed` | addr |
//! | 7 | `SubscribeFailed` | addr, reason:u8 (1 not found, 2 no route) |
//! | 8 | `KeyframeRequest` | addr, layer:u8 |
//! | 9 | `Flow` | flow:u16, addr, kind:u8 (0 audio, 1 video), layer:u8, len:u16, codec bytes, repair_ms:u16 |
//! | 10 | `Nack` | flow:u16, count:u8, count × seq:u16 |
//!
//! `Flow` and `Nack` belong to the media plane (RTP in QUIC datagrams, see
//! `docs/trunk.md`): a datagram is `flow:u16be` + an RTP packet, and `Flow` tells the receiver,
//! before the first datagram of a flow, which stream, track and layer the flow id stands for and
//! how its payload is coded (an opaque descriptor the media plane defines). The router ignores
//! both.
//!
//! A decoder never panics: an oversized length is fatal for the stream (close the trunk); any
//! other error skips just that frame. Senders split catalogs so each frame fits
//! [`MAX_FRAME`] ([`encode_announce`], [`encode_withdraw`]).

use crate::error::DecodeError;
use crate::ids::{LayerId, LayerSet, NodeName, StreamAddr, StreamName};

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;

/// Largest frame body accepted or produced, bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// Why a subscription could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// No node publishes this stream (as far as the answering node knows).
    NotFound,
    /// The stream exists but no working path leads to it right now.
    NoRoute,
}

/// One catalog entry: a stream reachable through the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The stream.
    pub addr: StreamAddr,
    /// The layers its publisher sends.
    pub layers: LayerSet,
    /// Route cost from the receiver through the sender (hops, plus a penalty for backup paths).
    pub cost: u16,
}

/// A control message on a trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message on a control stream: who is speaking (checked against its certificate).
    Hello {
        /// The sender's node name.
        node: NodeName,
    },
    /// These streams are reachable through the sender (added or changed).
    Announce(Vec<CatalogEntry>),
    /// These streams are no longer reachable through the sender.
    Withdraw(Vec<StreamAddr>),
    /// Send me these layers of this stream (replaces an earlier set).
    Subscribe {
        /// The stream.
        addr: StreamAddr,
        /// The layers wanted.
        layers: LayerSet,
    },
    /// Stop sending this stream.
    Unsubscribe {
        /// The stream.
        addr: StreamAddr,
    },
    /// The stream is flowing towards you (the path to its publisher is complete).
    Subscribed {
        /// The stream.
        addr: StreamAddr,
    },
    /// The subscription cannot be served; the receiver should try another path or give up.
    SubscribeFailed {
        /// The stream.
        addr: StreamAddr,
        /// Why.
        reason: FailReason,
    },
    /// A viewer downstream needs a keyframe of this layer.
    KeyframeRequest {
        /// The stream.
        addr: StreamAddr,
        /// The layer.
        layer: LayerId,
    },
    /// Media plane: datagrams starting with `flow` carry this track of this stream, from now on
    /// on this trunk direction.
    Flow {
        /// The per-trunk-direction flow id (the datagram's first two bytes).
        flow: u16,
        /// The stream.
        addr: StreamAddr,
        /// Video (true) or audio.
        video: bool,
        /// The video layer (0 for audio).
        layer: LayerId,
        /// How the payload is coded: a descriptor the media plane defines (at most 4 KiB).
        codec: Vec<u8>,
        /// How long the path up to the sender may still take to repair a lost packet, ms (0 at
        /// the origin; each hop adds its own repair time), so receivers wait long enough on
        /// slow (satellite) trunks before giving a gap up.
        repair_ms: u16,
    },
    /// Media plane: please resend these RTP sequence numbers of `flow` (hop-by-hop repair).
    Nack {
        /// The flow, as numbered by the receiver of this message (the sender of the media).
        flow: u16,
        /// Missing sequence numbers (at most 255).
        seqs: Vec<u16>,
    },
}

/// Largest codec descriptor in a [`Message::Flow`].
pub const MAX_CODEC_DESCRIPTOR: usize = 4096;

const T_HELLO: u8 = 1;
const T_ANNOUNCE: u8 = 2;
const T_WITHDRAW: u8 = 3;
const T_SUBSCRIBE: u8 = 4;
const T_UNSUBSCRIBE: u8 = 5;
const T_SUBSCRIBED: u8 = 6;
const T_FAILED: u8 = 7;
const T_KEYFRAME: u8 = 8;
const T_FLOW: u8 = 9;
const T_NACK: u8 = 10;

/// Largest encoding of one address (two length bytes plus the longest names).
const MAX_ADDR: usize = 2 + NodeName::MAX_LEN + StreamName::MAX_LEN;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are validated to at most 96 bytes, so the length fits a byte.
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn put_addr(out: &mut Vec<u8>, a: &StreamAddr) {
    put_str(out, a.node.as_str());
    put_str(out, a.stream.as_str());
}

/// Encodes one message as a complete frame (length prefix included).
///
/// An `Announce` or `Withdraw` too large for one frame is still encoded (and would be refused by
/// the receiver): build those with [`encode_announce`] / [`encode_withdraw`], which split.
pub fn encode(m: &Message) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 0, VERSION];
    match m {
        Message::Hello { node } => {
            b.push(T_HELLO);
            put_str(&mut b, node.as_str());
        }
        Message::Announce(entries) => {
            b.push(T_ANNOUNCE);
            b.extend_from_slice(&(entries.len().min(u16::MAX as usize) as u16).to_be_bytes());
            for e in entries.iter().take(u16::MAX as usize) {
                put_addr(&mut b, &e.addr);
                b.push(e.layers.0);
                b.extend_from_slice(&e.cost.to_be_bytes());
            }
        }
        Message::Withdraw(addrs) => {
            b.push(T_WITHDRAW);
            b.extend_from_slice(&(addrs.len().min(u16::MAX as usize) as u16).to_be_bytes());
            for a in addrs.iter().take(u16::MAX as usize) {
                put_addr(&mut b, a);
            }
        }
        Message::Subscribe { addr, layers } => {
            b.push(T_SUBSCRIBE);
            put_addr(&mut b, addr);
            b.push(layers.0);
        }
        Message::Unsubscribe { addr } => {
            b.push(T_UNSUBSCRIBE);
            put_addr(&mut b, addr);
        }
        Message::Subscribed { addr } => {
            b.push(T_SUBSCRIBED);
            put_addr(&mut b, addr);
        }
        Message::SubscribeFailed { addr, reason } => {
            b.push(T_FAILED);
            put_addr(&mut b, addr);
            b.push(match reason {
                FailReason::NotFound => 1,
                FailReason::NoRoute => 2,
            });
        }
        Message::KeyframeRequest { addr, layer } => {
            b.push(T_KEYFRAME);
            put_addr(&mut b, addr);
            b.push(layer.0);
        }
        Message::Flow {
            flow,
            addr,
            video,
            layer,
            codec,
            repair_ms,
        } => {
            b.push(T_FLOW);
            b.extend_from_slice(&flow.to_be_bytes());
            put_addr(&mut b, addr);
            b.push(u8::from(*video));
            b.push(layer.0);
            let n = codec.len().min(MAX_CODEC_DESCRIPTOR);
            b.extend_from_slice(&(n as u16).to_be_bytes());
            b.extend_from_slice(&codec[..n]);
            b.extend_from_slice(&repair_ms.to_be_bytes());
        }
        Message::Nack { flow, seqs } => {
            b.push(T_NACK);
            b.extend_from_slice(&flow.to_be_bytes());
            let n = seqs.len().min(255);
            b.push(n as u8);
            for s in &seqs[..n] {
                b.extend_from_slice(&s.to_be_bytes());
            }
        }
    }
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b
}

/// Splits a catalog into `Announce` messages that each fit one frame.
pub fn split_announce(entries: Vec<CatalogEntry>) -> Vec<Message> {
    let per = (MAX_FRAME - 8) / (MAX_ADDR + 3);
    let mut out = Vec::new();
    let mut it = entries.into_iter().peekable();
    while it.peek().is_some() {
        out.push(Message::Announce(it.by_ref().take(per).collect()));
    }
    out
}

/// Splits a withdrawal into `Withdraw` messages that each fit one frame.
pub fn split_withdraw(addrs: Vec<StreamAddr>) -> Vec<Message> {
    let per = (MAX_FRAME - 8) / MAX_ADDR;
    let mut out = Vec::new();
    let mut it = addrs.into_iter().peekable();
    while it.peek().is_some() {
        out.push(Message::Withdraw(it.by_ref().take(per).collect()));
    }
    out
}

/// Encodes a catalog as one or more frames, each within [`MAX_FRAME`].
pub fn encode_announce(entries: Vec<CatalogEntry>) -> Vec<Vec<u8>> {
    split_announce(entries).iter().map(encode).collect()
}

/// Encodes a withdrawal as one or more frames, each within [`MAX_FRAME`].
pub fn encode_withdraw(addrs: Vec<StreamAddr>) -> Vec<Vec<u8>> {
    split_withdraw(addrs).iter().map(encode).collect()
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&v, rest) = self.b.split_first().ok_or(DecodeError::Malformed)?;
        self.b = rest;
        Ok(v)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Malformed);
        }
        let (v, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(v)
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = usize::from(self.u8()?);
        std::str::from_utf8(self.bytes(n)?).map_err(|_| DecodeError::Malformed)
    }
    fn addr(&mut self) -> Result<StreamAddr, DecodeError> {
        let node = NodeName::parse(self.str()?)?;
        let stream = StreamName::parse(self.str()?)?;
        Ok(StreamAddr { node, stream })
    }
    fn layer(&mut self) -> Result<LayerId, DecodeError> {
        let l = self.u8()?;
        if l >= LayerId::MAX {
            return Err(DecodeError::Malformed);
        }
        Ok(LayerId(l))
    }
}

/// Decodes one frame body (after the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { b: body };
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let ty = r.u8()?;
    let m = match ty {
        T_HELLO => Message::Hello {
            node: NodeName::parse(r.str()?)?,
        },
        T_ANNOUNCE => {
            let n = usize::from(r.u16()?);
            // Each entry takes at least 7 bytes: refuse counts the frame cannot hold before
            // allocating for them.
            if n > r.b.len() / 7 {
                return Err(DecodeError::Malformed);
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let addr = r.addr()?;
                let layers = LayerSet(r.u8()?);
                let cost = r.u16()?;
                v.push(CatalogEntry { addr, layers, cost });
            }
            Message::Announce(v)
        }
        T_WITHDRAW => {
            let n = usize::from(r.u16()?);
            if n > r.b.len() / 4 {
                return Err(DecodeError::Malformed);
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(r.addr()?);
            }
            Message::Withdraw(v)
        }
        T_SUBSCRIBE => Message::Subscribe {
            addr: r.addr()?,
            layers: LayerSet(r.u8()?),
        },
        T_UNSUBSCRIBE => Message::Unsubscribe { addr: r.addr()? },
        T_SUBSCRIBED => Message::Subscribed { addr: r.addr()? },
        T_FAILED => Message::SubscribeFailed {
            addr: r.addr()?,
            reason: match r.u8()? {
                1 => FailReason::NotFound,
                2 => FailReason::NoRoute,
                _ => return Err(DecodeError::Malformed),
            },
        },
        T_KEYFRAME => Message::KeyframeRequest {
            addr: r.addr()?,
            layer: r.layer()?,
        },
        T_FLOW => {
            let flow = r.u16()?;
            let addr = r.addr()?;
            let video = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Malformed),
            };
            let layer = r.layer()?;
            let n = usize::from(r.u16()?);
            if n > MAX_CODEC_DESCRIPTOR {
                return Err(DecodeError::Malformed);
            }
            let codec = r.bytes(n)?.to_vec();
            Message::Flow {
                flow,
                addr,
                video,
                layer,
                codec,
                repair_ms: r.u16()?,
            }
        }
        T_NACK => {
            let flow = r.u16()?;
            let n = usize::from(r.u8()?);
            let mut seqs = Vec::with_capacity(n);
            for _ in 0..n {
                seqs.push(r.u16()?);
            }
            Message::Nack { flow, seqs }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    if !r.b.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(m)
}

/// Reassembles frames from a byte stream: [`push`](Self::push) what arrives, then call
/// [`next_message`](Self::next_message) until it returns `Ok(None)`.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    broken: bool,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends bytes received on the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message. `Ok(None)`: wait for more bytes. An `Err` other than
    /// [`DecodeError::FrameTooLarge`] skipped one bad frame and decoding may continue; after
    /// `FrameTooLarge` the decoder returns that error forever.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if self.broken || len > MAX_FRAME {
            self.broken = true;
            return Err(DecodeError::FrameTooLarge(len));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let body = &avail[4..4 + len];
        let result = decode_body(body);
        self.start += 4 + len;
        result.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> StreamAddr {
        StreamAddr::parse(s).unwrap()
    }

    pub(crate) fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                node: NodeName::parse("county-7").unwrap(),
            },
            Message::Announce(vec![
                CatalogEntry {
                    addr: addr("township-3/off-12"),
                    layers: LayerSet(7),
                    cost: 2,
                },
                CatalogEntry {
                    addr: addr("county-7/pilot-3-drone1"),
                    layers: LayerSet(1),
                    cost: 101,
                },
            ]),
            Message::Announce(vec![]),
            Message::Withdraw(vec![addr("a/b"), addr("c/d")]),
            Message::Subscribe {
                addr: addr("a/b"),
                layers: LayerSet(5),
            },
            Message::Unsubscribe { addr: addr("a/b") },
            Message::Subscribed { addr: addr("a/b") },
            Message::SubscribeFailed {
                addr: addr("a/b"),
                reason: FailReason::NoRoute,
            },
            Message::SubscribeFailed {
                addr: addr("a/b"),
                reason: FailReason::NotFound,
            },
            Message::KeyframeRequest {
                addr: addr("a/b"),
                layer: LayerId(2),
            },
            Message::Flow {
                flow: 7,
                addr: addr("a/b"),
                video: true,
                layer: LayerId(1),
                codec: b"{\"codec\":\"h264\"}".to_vec(),
                repair_ms: 780,
            },
            Message::Nack {
                flow: 7,
                seqs: vec![1, 65535, 3],
            },
        ]
    }

    #[test]
    fn every_message_round_trips_at_every_chunk_size() {
        let stream: Vec<u8> = samples().iter().flat_map(encode).collect();
        for chunk in 1..=stream.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, samples(), "chunk size {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn bad_frames_are_skipped_and_oversized_is_fatal() {
        let mut d = FrameDecoder::new();
        // Wrong version, unknown type, trailing byte, bad name: each skipped.
        d.push(&[0, 0, 0, 2, 9, 1]);
        d.push(&[0, 0, 0, 2, 1, 99]);
        let mut trailing = encode(&Message::Unsubscribe { addr: addr("a/b") });
        trailing.push(0);
        let n = (trailing.len() - 4) as u32;
        trailing[..4].copy_from_slice(&n.to_be_bytes());
        d.push(&trailing);
        d.push(&[0, 0, 0, 6, 1, 5, 1, b'.', 1, b'x']);
        d.push(&encode(&Message::Subscribed { addr: addr("a/b") }));
        assert_eq!(d.next_message(), Err(DecodeError::Version(9)));
        assert_eq!(d.next_message(), Err(DecodeError::UnknownType(99)));
        assert_eq!(d.next_message(), Err(DecodeError::Malformed));
        assert!(matches!(d.next_message(), Err(DecodeError::Name(_))));
        assert_eq!(
            d.next_message(),
            Ok(Some(Message::Subscribed { addr: addr("a/b") }))
        );
        assert_eq!(d.next_message(), Ok(None));
        d.push(&[0, 1, 0, 1]);
        assert_eq!(d.next_message(), Err(DecodeError::FrameTooLarge(65537)));
        d.push(&encode(&Message::Subscribed { addr: addr("a/b") }));
        assert!(d.next_message().is_err(), "stays broken");
        // A count larger than the frame can hold is refused before allocating.
        assert_eq!(
            decode_body(&[1, T_ANNOUNCE, 0xff, 0xff]),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn big_catalogs_split_into_frames_that_fit() {
        let long_node = "n".repeat(64);
        let entries: Vec<CatalogEntry> = (0..2000)
            .map(|i| CatalogEntry {
                addr: addr(&format!("{long_node}/{}{i:05}", "s".repeat(90))),
                layers: LayerSet(7),
                cost: 3,
            })
            .collect();
        let frames = encode_announce(entries.clone());
        assert!(frames.len() > 1);
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for f in &frames {
            assert!(f.len() - 4 <= MAX_FRAME);
            d.push(f);
            while let Some(Message::Announce(v)) = d.next_message().unwrap() {
                got.extend(v);
            }
        }
        assert_eq!(got, entries);
        let addrs: Vec<StreamAddr> = entries.into_iter().map(|e| e.addr).collect();
        let frames = encode_withdraw(addrs.clone());
        assert!(frames.iter().all(|f| f.len() - 4 <= MAX_FRAME));
        let mut got = Vec::new();
        for f in &frames {
            d.push(f);
            while let Some(Message::Withdraw(v)) = d.next_message().unwrap() {
                got.extend(v);
            }
        }
        assert_eq!(got, addrs);
    }
}
