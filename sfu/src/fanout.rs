//! Fan-out: a frame from one publisher (local, or a remote stream over a trunk) written to every
//! viewer the forwarding core routes it to.
//!
//! A local publisher's frame is classified first ([`Sfu::route_frame`]: track, simulcast layer,
//! late or not, tapped for the trunks), then routed ([`Sfu::route_media`]: picture size sniffed
//! from keyframes, the forwarding core's decision) and written ([`Sfu::continue_fanout`]): one
//! copy of the payload shared by every viewer's send queue, in slices of [`MAX_FANOUT_SLICE`]
//! viewers so the first viewers' packets leave while later ones are still being made. Frames
//! reach each viewer in order: the rest of a frame is written before the next is routed.
//!
//! Which viewer gets which layer is decided in [`crate::forward`], not here; the engine's clock
//! is the `now` it is given.

use std::sync::Arc;
use std::time::Instant;

use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaData, MediaTime};
use tracing::debug;

use crate::codec::{keyframe_dims, VideoCodec};
use crate::forward::{Frame, Layer, PeerId, TrackKind};
use crate::remote::codec_descriptor;
use crate::session::PeerRole;
use crate::{DropReason, Sfu};

/// Most viewers a frame is written to before the shell gets to send what they produced. A frame
/// for a hundred viewers is packetized, encrypted and sent in slices this size, so the first
/// viewers' packets leave while the later ones are still being made, and the node never holds a
/// whole fan-out of encrypted packets. Each viewer's own packets are made and queued as before.
pub(crate) const MAX_FANOUT_SLICE: usize = 16;

/// A frame about to be routed to viewers, from a local publisher or a trunk.
pub(crate) struct MediaIn {
    pub(crate) kind: TrackKind,
    pub(crate) layer: Layer,
    pub(crate) keyframe: bool,
    pub(crate) time: MediaTime,
    pub(crate) network_time: Instant,
    pub(crate) params: PayloadParams,
    pub(crate) data: Arc<[u8]>,
}

/// A frame part-way through being written to its viewers ([`Sfu::continue_fanout`]).
#[derive(Default)]
pub(crate) struct FanOut {
    /// The frame and when it was routed (the engine is due again at once until it is written
    /// to every target).
    frame: Option<(Instant, MediaIn)>,
    targets: Vec<PeerId>,
    /// Index into `targets` of the next viewer.
    next: usize,
}

impl FanOut {
    /// Whether some viewers still wait for the frame.
    pub(crate) fn pending(&self) -> bool {
        self.frame.is_some() && self.next < self.targets.len()
    }

    /// Since when the frame waits, if some viewers still wait for it.
    pub(crate) fn pending_since(&self) -> Option<Instant> {
        self.frame
            .as_ref()
            .filter(|_| self.pending())
            .map(|(t, _)| *t)
    }
}

impl Sfu {
    pub(crate) fn route_frame(&mut self, now: Instant, from: PeerId, data: &MediaData) {
        // Frames reach every viewer in order: the rest of the previous one goes first.
        self.continue_fanout(now, usize::MAX);
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        let kind = if Some(data.mid) == p.video_mid {
            TrackKind::Video
        } else if Some(data.mid) == p.audio_mid {
            TrackKind::Audio
        } else {
            return;
        };
        let layer = match kind {
            TrackKind::Audio => Layer(0),
            TrackKind::Video => match p.layers.layer_of(data.rid) {
                Some(l) => l,
                None => return,
            },
        };
        // A frame completed late by a retransmission, after a newer one went out: decoders
        // must not get it out of order. Drop it and ask for a fresh keyframe instead.
        if kind == TrackKind::Video && p.layers.is_late(layer, data.time.numer()) {
            self.counters.count_drop(DropReason::Late);
            self.fwd.publisher_discontinuity(now, from, layer);
            return;
        }
        let keyframe = data.is_keyframe();
        if let (Some(t), PeerRole::Publisher { stream }) = (self.trunk.as_mut(), &p.role) {
            let params = data.params;
            t.send_local_frame(
                stream.as_str(),
                kind == TrackKind::Video,
                trunk::LayerId(layer.0),
                data.time.numer(),
                keyframe,
                !data.contiguous,
                *data.pt,
                || codec_descriptor(&params),
                &data.data,
            );
        }
        if kind == TrackKind::Video && !data.contiguous {
            // Loss NACK/RTX could not repair: the viewers' decoders need a fresh keyframe.
            self.fwd.publisher_discontinuity(now, from, layer);
        }
        let m = MediaIn {
            kind,
            layer,
            keyframe,
            time: data.time,
            network_time: data.network_time,
            params: data.params,
            data: data.data.clone(),
        };
        self.route_media(now, from, m);
    }

    /// Routes one frame from publisher `from` (local or remote) to its viewers.
    pub(crate) fn route_media(&mut self, now: Instant, from: PeerId, m: MediaIn) {
        let dims = match (m.kind, m.keyframe, m.params.spec().codec) {
            (TrackKind::Video, true, Codec::Vp8) => keyframe_dims(VideoCodec::Vp8, &m.data),
            (TrackKind::Video, true, Codec::H264) => keyframe_dims(VideoCodec::H264, &m.data),
            _ => None,
        };
        let frame = Frame {
            kind: m.kind,
            layer: m.layer,
            keyframe: m.keyframe,
            dims,
            bytes: m.data.len(),
        };
        let (waiting0, stray0) = {
            let c = self.fwd.counters();
            (c.dropped_waiting_keyframe, c.dropped_not_publisher)
        };
        let mut targets = std::mem::take(&mut self.targets);
        self.fwd.route(now, from, &frame, &mut targets);
        let c = self.fwd.counters();
        self.counters.count_drops(
            DropReason::WaitingKeyframe,
            c.dropped_waiting_keyframe - waiting0,
        );
        self.counters
            .count_drops(DropReason::NotPublisher, c.dropped_not_publisher - stray0);
        if targets.is_empty() {
            self.targets = targets;
            return;
        }
        // One copy of the frame shared by every viewer's send queue (str0m takes `Arc<[u8]>`).
        let mut fanout = std::mem::take(&mut self.fanout);
        fanout.frame = Some((now, m));
        fanout.next = 0;
        std::mem::swap(&mut fanout.targets, &mut targets);
        self.targets = targets;
        self.fanout = fanout;
        self.continue_fanout(now, MAX_FANOUT_SLICE);
    }

    /// Writes the pending frame to up to `max` more of its viewers, each driven at once so its
    /// packets are queued (paced, encrypted) before the next viewer's.
    pub(crate) fn continue_fanout(&mut self, now: Instant, max: usize) {
        let mut fanout = std::mem::take(&mut self.fanout);
        let Some((_, m)) = fanout.frame.as_ref() else {
            self.fanout = fanout;
            return;
        };
        let end = fanout.targets.len().min(fanout.next.saturating_add(max));
        for i in fanout.next..end {
            let viewer = fanout.targets[i];
            let Some(v) = self.peers.get_mut(&viewer) else {
                continue;
            };
            let (mid, time) = match m.kind {
                TrackKind::Video => (v.video_mid, v.video_ts.map(m.layer, m.time, m.network_time)),
                TrackKind::Audio => (v.audio_mid, m.time),
            };
            let Some(writer) = mid.and_then(|m| v.rtc.writer(m)) else {
                continue;
            };
            let Some(pt) = writer.match_params(m.params) else {
                self.counters.count_drop(DropReason::CodecMismatch);
                continue;
            };
            // The wall clock given is the time of this write, not when the frame's first packet
            // arrived: a frame completed by a late retransmission would otherwise carry an
            // earlier wall clock than the next frame, and str0m's send queue would put it after
            // that frame.
            match writer.write(pt, now, time, m.data.clone()) {
                Ok(()) => self.counters.frames_forwarded += 1,
                Err(e) => {
                    debug!(%viewer, error = %e, "write refused");
                    self.counters.count_drop(DropReason::WriteFailed);
                }
            }
            self.drain(viewer, now);
        }
        fanout.next = end;
        if fanout.next >= fanout.targets.len() {
            fanout.targets.clear();
            fanout.frame = None;
        }
        self.fanout = fanout;
    }
}
