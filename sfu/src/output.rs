//! What leaves the engine besides SDP answers: datagrams to send ([`Transmit`]), changes the
//! shell shows ([`Event`]: a stream came or went, its viewers, its layers) and the engine's
//! [`Counters`] with their [`DropReason`]s. The shell turns them into its tables and metrics;
//! nothing here knows what those are.

use std::net::SocketAddr;

use ids::{StreamName, Subject};

use crate::forward::LayerInfo;
#[cfg(doc)]
use crate::Sfu;

/// A datagram to send from the media socket.
#[derive(Debug)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The payload.
    pub contents: Vec<u8>,
}

/// Something the shell shows changed (see [`Sfu::poll_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A publisher went live under `name` (a takeover by the same owner is a new `StreamUp`
    /// without a `StreamDown` before it).
    StreamUp {
        /// The stream.
        name: StreamName,
        /// The subject publishing it.
        owner: Subject,
        /// Video codec MIME subtype (`H264`, `VP8`), if the stream has video.
        video_codec: Option<String>,
        /// Whether the stream carries audio (Opus).
        audio: bool,
        /// Viewers attached already (viewers outlive their publisher).
        viewers: usize,
    },
    /// The live publisher of `name` is gone.
    StreamDown {
        /// The stream.
        name: StreamName,
    },
    /// The number of viewers attached to `name` changed.
    Viewers {
        /// The stream (a remote one is named `NODE/STREAM`).
        name: StreamName,
        /// Viewers attached now.
        count: usize,
    },
    /// The video layers received from the live publisher of `name`, ranked lowest first.
    /// Reported for every live stream once a second.
    Layers {
        /// The stream.
        name: StreamName,
        /// Its layers (size, bitrate), lowest first.
        layers: Vec<LayerInfo>,
    },
}

/// Why the engine dropped a datagram or frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Bytes on the media port that are not STUN, DTLS, RTP or RTCP.
    Malformed,
    /// A well-formed datagram no session accepts (unknown 5-tuple and ICE credentials).
    UnknownSource,
    /// A video frame held back from a viewer still waiting for its first keyframe.
    WaitingKeyframe,
    /// A frame whose codec the viewer's session did not negotiate.
    CodecMismatch,
    /// A frame the viewer's WebRTC session refused to send.
    WriteFailed,
    /// Media from a peer that is not (or no longer) the stream's publisher.
    NotPublisher,
    /// A video frame older than one already forwarded from its layer (completed late by a
    /// retransmission): forwarding it would hand decoders frames out of order.
    Late,
}

impl DropReason {
    /// Every reason, in a fixed order.
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::UnknownSource,
        DropReason::WaitingKeyframe,
        DropReason::CodecMismatch,
        DropReason::WriteFailed,
        DropReason::NotPublisher,
        DropReason::Late,
    ];
}

/// The engine's counters (monotonic) and gauges, read by the shell with [`Sfu::counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connected WebRTC sessions (gauge).
    pub peers: u64,
    /// Publisher sessions (gauge).
    pub publishers: u64,
    /// Viewer sessions (gauge).
    pub viewers: u64,
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes of datagrams received.
    pub bytes_in: u64,
    /// Datagrams handed out by [`Sfu::poll_transmit`].
    pub packets_out: u64,
    /// Bytes of datagrams handed out by [`Sfu::poll_transmit`].
    pub bytes_out: u64,
    /// Media frames written to viewers.
    pub frames_forwarded: u64,
    /// NACKs received from viewers (their losses we repaired).
    pub nacks_in: u64,
    /// NACKs sent to publishers (our losses we asked them to repair).
    pub nacks_out: u64,
    /// PLIs and FIRs received from viewers.
    pub keyframe_requests_in: u64,
    /// PLIs sent to publishers after aggregation and throttling.
    pub keyframe_requests_out: u64,
    /// Sessions ended because of an error.
    pub session_errors: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    /// Drops counted so far for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.count_drops(reason, 1);
    }

    /// Counts `n` drops for `reason`.
    pub fn count_drops(&mut self, reason: DropReason, n: u64) {
        self.drops[reason as usize] += n;
    }
}
