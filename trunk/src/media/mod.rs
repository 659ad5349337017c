//! The media plane of trunks, sans-IO: RTP in QUIC datagrams between nodes, applied from the
//! router's [`Route`]s. No sockets, no clock, no str0m: the SFU engine (crate `sfu`) owns one
//! [`TrunkPlane`], feeds it frames of local publishers and datagrams from trunks, and carries out
//! its [`TrunkOutput`]s.
//!
//! # Datagrams
//!
//! ```text
//! datagram = flow:u16be rtp
//! rtp      = RTP fixed header (12 bytes: V=2, M = last fragment of a frame, PT, seq, ts, SSRC)
//!            flags:u8 (bit 0 first fragment, bit 1 keyframe, bit 2 discontinuity at the origin)
//!            fragment of the frame's payload (at most FRAGMENT bytes)
//! ```
//!
//! The SFU works on whole frames (str0m depacketizes them), so the origin node cuts each frame
//! of a published track into RTP packets of a private payload format (the fragment flags above)
//! with its own sequence numbers and timestamps; those are kept end to end, and every hop
//! forwards the packets untouched except for the flow id. The flow id is per trunk direction and
//! announced with a `Flow` control message before its first datagram (datagrams that overtake
//! it wait, up to [`UNKNOWN_FLOW_WAIT`]).
//!
//! # Forwarding
//!
//! Per stream, a node accepts packets only from the route's `source`; it copies each to the
//! outputs whose layer set holds the packet's layer (audio goes with any layer), to downstream
//! trunks as datagrams and to local viewers through a reassembler that yields whole frames.
//! Packets already forwarded are dropped by sequence number, so when a make-before-break switch
//! moves the source to the new path nothing is forwarded twice. Packets from the route's `next`
//! path are not forwarded; the first keyframe start on it yields
//! [`TrunkOutput::NextPathReady`].
//!
//! # Where things live
//!
//! - this file: the [`TrunkPlane`] (routes, flows, forwarding, the make-before-break switch);
//! - `packet.rs`: the datagram format above — cutting a frame into packets and reading them;
//! - `repair.rs`: trunk repair, hop by hop — NACKs, repeats, history, the repair-time budget;
//! - `reassembly.rs`: whole frames for local viewers, gaps waited for and given up;
//! - `tests.rs`: planes of two or three nodes in virtual time.
//!
//! Nothing here opens a socket, reads the clock or knows str0m: the SFU engine (crate `sfu`)
//! owns the plane and the cascade shell carries its datagrams.

mod packet;
mod reassembly;
mod repair;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::wire::Message;
use crate::{Hop, LayerId, LayerSet, NodeName, Route, StreamAddr};
pub use packet::FRAGMENT;
use packet::{
    extend16, extend32, packetize, parse, FrameHeader, F_DISCONT, F_FIRST, F_KEY, HEADER,
};
use reassembly::{reassemble, Fragment};
use repair::History;
pub use repair::{hop_repair, nack_retry, DEFAULT_RTT, HISTORY, NACK_TRIES, REPAIR_WAIT};

/// Datagrams whose `Flow` has not arrived yet are kept this long.
pub const UNKNOWN_FLOW_WAIT: Duration = Duration::from_secs(1);
/// At most this many such datagrams are kept per trunk.
pub const UNKNOWN_FLOW_MAX: usize = 512;

/// A packet this far behind the last one forwarded is not a duplicate but a new numbering (the
/// origin restarted).
const RESTART_GAP: u64 = 4096;

/// One track of one stream: what a flow id stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrackKey {
    /// The stream.
    pub addr: StreamAddr,
    /// Video or audio.
    pub video: bool,
    /// The video layer (0 for audio).
    pub layer: LayerId,
}

/// A whole frame of a remote stream for the local viewers.
#[derive(Debug, Clone)]
pub struct RemoteFrame {
    /// The track.
    pub key: TrackKey,
    /// The codec descriptor its origin announced (see [`TrunkPlane::send_local_frame`]).
    pub codec: std::sync::Arc<[u8]>,
    /// RTP timestamp, extended to 64 bits.
    pub time: u64,
    /// Whether a decoder can start from it.
    pub keyframe: bool,
    /// Something was lost before it (here or upstream): viewers need a fresh keyframe.
    pub discontinuity: bool,
    /// The payload.
    pub data: Vec<u8>,
}

/// A command for the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkOutput {
    /// Send this datagram on the trunk to `to`.
    Datagram {
        /// The peer node.
        to: NodeName,
        /// The datagram.
        data: Vec<u8>,
    },
    /// Send this control message on the trunk to `to` (`Flow`).
    Control {
        /// The peer node.
        to: NodeName,
        /// The message.
        msg: Message,
    },
    /// The route's `next` path delivers (its first keyframe came): call
    /// `Router::next_path_ready`.
    NextPathReady(StreamAddr),
}

/// Counters of the trunk media plane (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkCounters {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes of datagrams sent.
    pub bytes_out: u64,
    /// Packets dropped because they were already forwarded (the other path of a switch).
    pub duplicates: u64,
    /// Packets dropped because they came from a hop that is not the route's source.
    pub not_source: u64,
    /// Datagrams dropped: malformed, or of a flow never announced.
    pub unknown: u64,
    /// Frames given to local viewers.
    pub frames_in: u64,
    /// Frames delivered after a gap (one or more frames before them were lost).
    pub frames_lost: u64,
    /// Packets of remote streams that reached local viewers (parts of whole frames).
    pub packets_delivered: u64,
    /// Packets of remote streams given up for local viewers: missing when their wait ran out,
    /// or part of a frame that could not be completed.
    pub packets_given_up: u64,
    /// NACKs sent upstream (gaps seen on a trunk, and repeats).
    pub nacks_sent: u64,
    /// NACKs that asked again for packets still missing after an earlier NACK.
    pub nacks_repeated: u64,
    /// Packets resent in answer to NACKs from downstream.
    pub retransmits: u64,
}

#[derive(Debug, Default)]
struct Track {
    /// Codec descriptor from the origin.
    codec: Option<std::sync::Arc<[u8]>>,
    /// Origin only: next sequence number, SSRC.
    next_seq: u16,
    ssrc: u32,
    /// Highest extended sequence number forwarded.
    last_fwd: Option<u64>,
    /// Which of the [`SEEN_WINDOW`] sequence numbers up to `last_fwd` were forwarded (bit n:
    /// `last_fwd - n`), so a retransmission fills a gap but nothing goes out twice.
    seen: u128,
    /// Extended timestamp of the last packet.
    last_ts: Option<u64>,
    /// Reassembly for local viewers: packets by extended sequence number, not yet part of a
    /// delivered frame.
    buf: BTreeMap<u64, Fragment>,
    /// The sequence number the next frame starts at (`None`: wait for a frame start).
    next: Option<u64>,
    /// A frame was lost since the last one delivered.
    lost: bool,
    /// How long the path above the hop it comes from may take to repair a loss (from its
    /// `Flow`; zero at the origin).
    upstream_repair: Duration,
}

/// Packets (track, RTP) from a route's `next` path, in arrival order.
type HeldPackets = VecDeque<(TrackKey, Vec<u8>)>;

/// Packets from a route's `next` path held per stream until the switch.
pub const NEXT_HELD: usize = 512;

/// Sequence numbers remembered behind the highest forwarded one (for late retransmissions).
const SEEN_WINDOW: u64 = 128;
/// The trunk media plane of one node. See the module docs.
#[derive(Debug)]
pub struct TrunkPlane {
    me: NodeName,
    routes: HashMap<StreamAddr, Route>,
    /// Routed streams published here, by local name.
    local: HashMap<String, StreamAddr>,
    tracks: HashMap<TrackKey, Track>,
    out_flows: HashMap<(NodeName, TrackKey), u16>,
    next_flow: HashMap<NodeName, u16>,
    in_flows: HashMap<(NodeName, u16), TrackKey>,
    /// Highest extended sequence number received per incoming flow (gap detection).
    rx_highest: HashMap<(NodeName, u16), u64>,
    /// Sequence numbers asked for and still missing, per incoming flow: when last asked, and
    /// how often.
    nacked: HashMap<(NodeName, u16), BTreeMap<u64, (Instant, u8)>>,
    /// Round-trip time per trunk (see [`TrunkPlane::set_rtt`]).
    rtt: HashMap<NodeName, Duration>,
    /// Sent datagrams per outgoing flow (NACK answers).
    history: HashMap<(NodeName, u16), History>,
    /// The latest time given with an input.
    clock: Option<Instant>,
    unknown: HashMap<NodeName, VecDeque<(Instant, Vec<u8>)>>,
    ready_sent: HashSet<StreamAddr>,
    /// Packets from a route's `next` path, held until the switch (at most [`NEXT_HELD`]).
    next_held: HashMap<StreamAddr, (NodeName, HeldPackets)>,
    frames: VecDeque<RemoteFrame>,
    out: VecDeque<TrunkOutput>,
    counters: TrunkCounters,
    next_ssrc: u32,
}

impl TrunkPlane {
    /// The plane of node `me`.
    pub fn new(me: NodeName) -> TrunkPlane {
        TrunkPlane {
            me,
            routes: HashMap::new(),
            local: HashMap::new(),
            tracks: HashMap::new(),
            out_flows: HashMap::new(),
            next_flow: HashMap::new(),
            in_flows: HashMap::new(),
            rx_highest: HashMap::new(),
            nacked: HashMap::new(),
            rtt: HashMap::new(),
            history: HashMap::new(),
            clock: None,
            unknown: HashMap::new(),
            ready_sent: HashSet::new(),
            next_held: HashMap::new(),
            frames: VecDeque::new(),
            out: VecDeque::new(),
            counters: TrunkCounters::default(),
            next_ssrc: 0x5900_0000,
        }
    }

    /// This node's name.
    pub fn node(&self) -> &NodeName {
        &self.me
    }

    /// Counters so far.
    pub fn counters(&self) -> &TrunkCounters {
        &self.counters
    }

    /// The router's forwarding of `addr` changed (an empty route removes it).
    pub fn set_route(&mut self, addr: StreamAddr, route: Route) {
        if route.next.is_none() {
            self.ready_sent.remove(&addr);
        }
        // Switched to the path that was `next`: what it delivered before the switch goes through
        // now (whatever the old path already forwarded is dropped as such), so no packet is lost
        // when the new path runs ahead of the old one.
        let replay = match (self.next_held.remove(&addr), &route.source) {
            (Some((from, held)), Some(Hop::Trunk(src))) if from == *src => Some((from, held)),
            (Some(h), _) if route.next.as_ref() == Some(&Hop::Trunk(h.0.clone())) => {
                self.next_held.insert(addr.clone(), h);
                None
            }
            _ => None,
        };
        if route == Route::default() {
            self.local.remove(addr.stream.as_str());
            self.routes.remove(&addr);
            // The tracks stay (codec, sequence state): flows announced to us keep their meaning,
            // and a route that comes back (a path switch passes through "no route") continues
            // without forwarding anything twice. Only a half-built frame is dropped.
            for (k, t) in self.tracks.iter_mut() {
                if k.addr == addr {
                    t.buf.clear();
                    t.next = None;
                }
            }
        } else {
            if addr.node == self.me {
                self.local
                    .insert(addr.stream.as_str().to_owned(), addr.clone());
            }
            self.routes.insert(addr, route);
        }
        if let Some((from, held)) = replay {
            for (key, rtp) in held {
                self.handle_packet(&from, &key, &rtp);
            }
        }
    }

    /// The current forwarding of `addr`.
    pub fn route(&self, addr: &StreamAddr) -> Option<&Route> {
        self.routes.get(addr)
    }

    /// Whether local viewers are fed `addr` from a trunk.
    pub fn feeds_local(&self, addr: &StreamAddr) -> bool {
        self.routes.get(addr).is_some_and(|r| {
            matches!(r.source, Some(Hop::Trunk(_)))
                && r.outputs.iter().any(|(h, _)| *h == Hop::Local)
        })
    }

    /// Whether a frame of local `stream`'s track goes to any trunk (so the caller can skip making
    /// a codec descriptor otherwise).
    pub fn wants_local(&self, stream: &str, video: bool, layer: LayerId) -> bool {
        let Some(addr) = self.local.get(stream) else {
            return false;
        };
        self.routes.get(addr).is_some_and(|r| {
            r.source == Some(Hop::Local)
                && r.outputs
                    .iter()
                    .any(|(h, l)| matches!(h, Hop::Trunk(_)) && carries(*l, video, layer))
        })
    }

    /// The trunk to `peer` measures `rtt` (QUIC's smoothed estimate): repeated NACKs wait
    /// [`nack_retry`] of it.
    pub fn set_rtt(&mut self, peer: &NodeName, rtt: Duration) {
        self.rtt.insert(peer.clone(), rtt);
    }

    /// A trunk came up or went down: flow ids on it start afresh.
    pub fn trunk_reset(&mut self, peer: &NodeName) {
        self.out_flows.retain(|(p, _), _| p != peer);
        self.next_flow.remove(peer);
        self.in_flows.retain(|(p, _), _| p != peer);
        self.rx_highest.retain(|(p, _), _| p != peer);
        self.nacked.retain(|(p, _), _| p != peer);
        self.history.retain(|(p, _), _| p != peer);
        self.unknown.remove(peer);
    }

    /// A frame of a local publisher: cut into packets and sent to the trunks the route names.
    /// `codec` describes the payload for the receivers (opaque here).
    #[allow(clippy::too_many_arguments)]
    pub fn send_local_frame(
        &mut self,
        stream: &str,
        video: bool,
        layer: LayerId,
        time: u64,
        keyframe: bool,
        discontinuity: bool,
        pt: u8,
        codec: impl FnOnce() -> std::sync::Arc<[u8]>,
        data: &[u8],
    ) {
        if !self.wants_local(stream, video, layer) {
            return;
        }
        let Some(addr) = self.local.get(stream) else {
            return;
        };
        let key = TrackKey {
            addr: addr.clone(),
            video,
            layer,
        };
        let next_ssrc = &mut self.next_ssrc;
        let track = self.tracks.entry(key.clone()).or_insert_with(|| {
            *next_ssrc = next_ssrc.wrapping_add(1);
            Track {
                ssrc: *next_ssrc,
                ..Track::default()
            }
        });
        // The codec is looked at again on every keyframe: a publisher that reconnects under
        // the same name may send another codec. A change is announced with new flow ids.
        if track.codec.is_none() || keyframe {
            let c = codec();
            if track.codec.as_deref() != Some(&c[..]) {
                track.codec = Some(c);
                self.out_flows.retain(|(_, k), _| *k != key);
            }
        }
        let frame = FrameHeader {
            pt,
            time,
            ssrc: track.ssrc,
            keyframe,
            discontinuity,
        };
        let packets = packetize(&frame, track.next_seq, data);
        track.next_seq = track.next_seq.wrapping_add(packets.len() as u16);
        for p in packets {
            self.forward(&key, &Hop::Local, &p);
        }
    }

    /// A datagram arrived on the trunk from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: &NodeName, data: &[u8]) {
        self.clock = Some(now);
        self.counters.datagrams_in += 1;
        if data.len() < HEADER {
            self.counters.unknown += 1;
            return;
        }
        let flow = u16::from_be_bytes([data[0], data[1]]);
        let Some(key) = self.in_flows.get(&(from.clone(), flow)).cloned() else {
            let q = self.unknown.entry(from.clone()).or_default();
            while q
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > UNKNOWN_FLOW_WAIT)
                || q.len() >= UNKNOWN_FLOW_MAX
            {
                q.pop_front();
                self.counters.unknown += 1;
            }
            q.push_back((now, data.to_vec()));
            return;
        };
        // Hop-by-hop repair: a gap in this flow is asked for at once, and again while it stays
        // missing (the retransmission may be lost too).
        let seq = u16::from_be_bytes([data[4], data[5]]);
        self.track_loss(now, from, flow, seq);
        self.handle_packet(from, &key, &data[2..]);
    }

    /// A media-plane control message from `from`: `Flow` (what a flow id stands for) or `Nack`
    /// (resend these packets, answered from the flow's history).
    pub fn handle_control(&mut self, now: Instant, from: &NodeName, msg: Message) {
        self.clock = Some(now);
        if let Message::Nack { flow, seqs } = &msg {
            self.answer_nack(from, *flow, seqs);
            return;
        }
        let Message::Flow {
            flow,
            addr,
            video,
            layer,
            codec,
            repair_ms,
        } = msg
        else {
            return;
        };
        let key = TrackKey { addr, video, layer };
        let track = self.tracks.entry(key.clone()).or_default();
        track.upstream_repair = Duration::from_millis(u64::from(repair_ms));
        if track.codec.as_deref() != Some(&codec[..]) {
            if track.codec.is_some() {
                // Another codec: downstream hears of it through new flows.
                self.out_flows.retain(|(_, k), _| *k != key);
            }
            track.codec = Some(codec.into());
        }
        self.in_flows.insert((from.clone(), flow), key);
        // Datagrams that overtook their Flow.
        if let Some(q) = self.unknown.remove(from) {
            let mut rest = VecDeque::new();
            for (t, d) in q {
                if now.saturating_duration_since(t) > UNKNOWN_FLOW_WAIT {
                    self.counters.unknown += 1;
                } else if u16::from_be_bytes([d[0], d[1]]) == flow {
                    self.handle_datagram(now, from, &d);
                } else {
                    rest.push_back((t, d));
                }
            }
            if !rest.is_empty() {
                self.unknown.insert(from.clone(), rest);
            }
        }
    }

    fn handle_packet(&mut self, from: &NodeName, key: &TrackKey, rtp: &[u8]) {
        let Some(p) = parse(rtp) else {
            self.counters.unknown += 1;
            return;
        };
        let hop = Hop::Trunk(from.clone());
        let Some(route) = self.routes.get(&key.addr) else {
            self.counters.not_source += 1;
            return;
        };
        if route.source.as_ref() != Some(&hop) {
            if route.next.as_ref() == Some(&hop) {
                if (!key.video || (p.flags & F_FIRST != 0 && p.flags & F_KEY != 0))
                    && self.ready_sent.insert(key.addr.clone())
                {
                    self.out
                        .push_back(TrunkOutput::NextPathReady(key.addr.clone()));
                }
                // Held until the switch (see `set_route`).
                let held = self
                    .next_held
                    .entry(key.addr.clone())
                    .or_insert_with(|| (from.clone(), VecDeque::new()));
                if held.0 != *from {
                    *held = (from.clone(), VecDeque::new());
                }
                if held.1.len() >= NEXT_HELD {
                    held.1.pop_front();
                }
                held.1.push_back((key.clone(), rtp.to_vec()));
            }
            self.counters.not_source += 1;
            return;
        }
        let track = self.tracks.entry(key.clone()).or_default();
        let ext = extend16(track.last_fwd, p.seq);
        if let Some(last) = track.last_fwd.filter(|l| ext <= *l) {
            let behind = last - ext;
            if behind >= RESTART_GAP {
                // Far behind: the origin started its numbering afresh (a restarted node).
                track.last_fwd = None;
                track.seen = 0;
            } else if behind >= SEEN_WINDOW || track.seen & (1 << behind) != 0 {
                self.counters.duplicates += 1;
                return;
            }
        }
        self.forward(key, &hop, rtp);
    }

    /// Copies one packet (already accepted from `from`) to the route's outputs.
    fn forward(&mut self, key: &TrackKey, from: &Hop, rtp: &[u8]) {
        let Some(route) = self.routes.get(&key.addr) else {
            return;
        };
        let Some(p) = parse(rtp) else { return };
        // The time a loss may take to be repaired up to here: the path above the source hop,
        // and the source hop itself.
        let source_repair = match &route.source {
            Some(Hop::Trunk(n)) => hop_repair(self.rtt.get(n).copied().unwrap_or(DEFAULT_RTT)),
            _ => Duration::ZERO,
        };
        let track = self.tracks.entry(key.clone()).or_default();
        let repair = track.upstream_repair + source_repair;
        let ext = extend16(track.last_fwd, p.seq);
        match track.last_fwd {
            Some(l) if ext <= l => track.seen |= 1 << (l - ext).min(SEEN_WINDOW - 1),
            Some(l) => {
                let shift = ext - l;
                track.seen = if shift >= SEEN_WINDOW {
                    1
                } else {
                    track.seen << shift | 1
                };
                track.last_fwd = Some(ext);
            }
            None => {
                track.seen = 1;
                track.last_fwd = Some(ext);
            }
        }
        let now = self.clock;
        for (hop, layers) in &route.outputs {
            if hop == from || !carries(*layers, key.video, key.layer) {
                continue;
            }
            match hop {
                Hop::Local => {
                    if *from == Hop::Local {
                        continue;
                    }
                    let ts = extend32(track.last_ts, p.ts);
                    if track.last_ts.is_none_or(|l| ts > l) {
                        track.last_ts = Some(ts);
                    }
                    let Some(now) = now else { continue };
                    let frag = Fragment {
                        arrived: now,
                        ts,
                        flags: p.flags,
                        marker: p.marker,
                        payload: p.payload.to_vec(),
                    };
                    let wait = repair.max(REPAIR_WAIT);
                    let (frames, delivered, given_up) =
                        reassemble(track, key, ext, frag, now, wait);
                    self.counters.packets_delivered += delivered;
                    self.counters.packets_given_up += given_up;
                    for f in frames {
                        self.counters.frames_in += 1;
                        if f.discontinuity {
                            self.counters.frames_lost += 1;
                        }
                        self.frames.push_back(f);
                    }
                }
                Hop::Trunk(to) => {
                    let fk = (to.clone(), key.clone());
                    let flow = match self.out_flows.get(&fk) {
                        Some(f) => *f,
                        None => {
                            let n = self.next_flow.entry(to.clone()).or_insert(0);
                            let flow = *n;
                            *n = n.wrapping_add(1);
                            self.out_flows.insert(fk, flow);
                            self.out.push_back(TrunkOutput::Control {
                                to: to.clone(),
                                msg: Message::Flow {
                                    flow,
                                    addr: key.addr.clone(),
                                    video: key.video,
                                    layer: key.layer,
                                    codec: track.codec.as_deref().unwrap_or_default().to_vec(),
                                    repair_ms: repair.as_millis().min(u128::from(u16::MAX)) as u16,
                                },
                            });
                            flow
                        }
                    };
                    let mut d = Vec::with_capacity(2 + rtp.len());
                    d.extend_from_slice(&flow.to_be_bytes());
                    d.extend_from_slice(rtp);
                    self.history
                        .entry((to.clone(), flow))
                        .or_insert_with(History::new)
                        .put(p.seq, d.clone());
                    self.counters.datagrams_out += 1;
                    self.counters.bytes_out += d.len() as u64;
                    self.out.push_back(TrunkOutput::Datagram {
                        to: to.clone(),
                        data: d,
                    });
                }
            }
        }
    }

    /// The next whole frame for local viewers.
    pub fn poll_frame(&mut self) -> Option<RemoteFrame> {
        self.frames.pop_front()
    }

    /// The next command for the shell.
    pub fn poll_output(&mut self) -> Option<TrunkOutput> {
        self.out.pop_front()
    }
}

/// Whether an output with `layers` carries this track (audio goes with any layer).
fn carries(layers: LayerSet, video: bool, layer: LayerId) -> bool {
    if video {
        layers.contains(layer)
    } else {
        !layers.is_empty()
    }
}

#[cfg(test)]
mod tests;
