//! The QUIC framing of `yiwang/1`: a 4-byte big-endian length, then that many bytes of JSON.
//! [`FrameDecoder`] is fed whatever chunks arrive and yields whole frames; it refuses a length
//! over its limit as soon as it reads the prefix, and an empty frame.

use serde::Serialize;

use super::{encode, ErrorCode, ProtoError, FRAME_HEADER, MAX_FRAME};

/// Encodes a message as a QUIC frame: length prefix plus JSON.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let json = encode(msg);
    let mut out = Vec::with_capacity(FRAME_HEADER + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

/// Why the frame stream cannot continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    TooLarge(usize),
    /// A zero-length frame.
    Empty,
}

impl FrameError {
    /// The protocol error to send before closing.
    pub fn to_proto(&self) -> ProtoError {
        match self {
            FrameError::TooLarge(n) => ProtoError::new(
                None,
                ErrorCode::TooLarge,
                format!("frame of {n} bytes exceeds the {MAX_FRAME}-byte limit"),
            ),
            FrameError::Empty => ProtoError::new(None, ErrorCode::BadRequest, "empty frame"),
        }
    }
}

/// Splits a byte stream into length-prefixed frames. Feed it whatever chunks arrive (the shell
/// reads at most [`MAX_FRAME`] bytes at a time and drains every complete frame before reading
/// again, so it holds at most about two frames).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder of client frames (at most [`MAX_FRAME`] bytes each), as the node uses.
    pub fn new() -> Self {
        FrameDecoder::with_max(MAX_FRAME)
    }

    /// A decoder accepting frames up to `max` bytes (clients use [`MAX_SERVER_FRAME`](super::MAX_SERVER_FRAME)).
    pub fn with_max(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame's payload, `Ok(None)` if more bytes are needed, or an error when
    /// the stream is unusable (the caller sends the error and closes).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge(len));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if self.buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let frame = self.buf[FRAME_HEADER..FRAME_HEADER + len].to_vec();
        self.buf.drain(..FRAME_HEADER + len);
        Ok(Some(frame))
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{decode_client, ClientMsg};

    #[test]
    fn frames_reassemble_at_every_chunk_size() {
        let msgs: Vec<Vec<u8>> = (0..5)
            .map(|i| encode_frame(&ClientMsg::Ping { id: i }))
            .collect();
        let all: Vec<u8> = msgs.concat();
        for chunk in 1..=all.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for c in all.chunks(chunk) {
                d.push(c);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(decode_client(&f).unwrap());
                }
            }
            assert_eq!(got.len(), 5, "chunk size {chunk}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn oversized_and_empty_frames_are_refused_before_buffering() {
        let mut d = FrameDecoder::new();
        d.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
    }
}
