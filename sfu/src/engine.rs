//! The engine's core: the [`Sfu`] value with its inputs (datagrams, time), its polls (transmits,
//! timeout, events, counters), the demultiplexing of datagrams to sessions, the timers
//! (housekeeping, REMB, remote pulls) and the loop that carries out the forwarding core's
//! decisions after every input.
//!
//! Sessions, fan-out, simulcast, bandwidth estimation and remote viewers are in their own
//! modules as further `impl Sfu` blocks; what they share lives in the struct here. Nothing
//! opens a socket or reads the clock: `now` comes with every input.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::config::DtlsCert;
use str0m::media::{KeyframeRequestKind, MediaData};
use str0m::net::{Protocol, Receive};
use str0m::Input;
use tracing::debug;

use crate::bwe::REMB_INTERVAL;
use crate::config::SfuConfig;
use crate::fanout::{FanOut, MAX_FANOUT_SLICE};
use crate::forward::{ForwardOutput, Forwarder, Layer, PeerId};
use crate::output::{Counters, DropReason, Event, Transmit};
use crate::remote::RemotePublisher;
use crate::remote::{TrunkRequest, REMOTE_PULL_TICK};
use crate::session::{drain_peer, Peer, PeerRole};
use trunk::media::TrunkPlane;

/// The SFU engine. See the crate docs for the run loop.
pub struct Sfu {
    pub(crate) config: SfuConfig,
    /// The address put in ICE candidates and expected as the destination of received datagrams.
    pub(crate) local: SocketAddr,
    pub(crate) peers: HashMap<PeerId, Peer>,
    pub(crate) sessions: HashMap<String, PeerId>,
    pub(crate) by_addr: HashMap<SocketAddr, PeerId>,
    pub(crate) fwd: Forwarder,
    pub(crate) next_peer: u64,
    pub(crate) transmits: VecDeque<Transmit>,
    /// Frames received from publishers, waiting to be routed.
    pub(crate) inbox: Vec<(PeerId, MediaData)>,
    /// The other half of a double buffer with `inbox`, kept to reuse its allocation.
    pub(crate) spare_inbox: Vec<(PeerId, MediaData)>,
    pub(crate) targets: Vec<PeerId>,
    pub(crate) counters: Counters,
    /// What happened that the shell shows, for [`Sfu::poll_event`].
    pub(crate) events: VecDeque<Event>,
    /// When publishers were last sent their REMB target.
    pub(crate) last_remb: Option<Instant>,
    /// When remote viewers' pulls were last updated on the timer.
    pub(crate) last_remote_pulls: Option<Instant>,
    /// When stale sessions, probing floors and REMB were last looked at.
    pub(crate) last_housekeeping: Option<Instant>,
    /// Scratch list of sessions due in `handle_timeout`.
    pub(crate) due: Vec<PeerId>,
    /// The frame being written to its viewers, a slice at a time.
    pub(crate) fanout: FanOut,
    /// The DTLS certificate every session presents, made once (its fingerprint goes in each
    /// answer, so sharing it costs no security; a key pair per session cost CPU at every join).
    /// `None` until the first session, or if the crypto provider could not make one (each
    /// session then makes its own, as str0m does by default).
    pub(crate) dtls_cert: Option<DtlsCert>,
    /// The trunk media plane, when this node has trunks.
    pub(crate) trunk: Option<TrunkPlane>,
    /// Streams pulled over trunks, by address.
    pub(crate) remote: HashMap<trunk::StreamAddr, RemotePublisher>,
    /// Requests for the trunk shell.
    pub(crate) trunk_out: VecDeque<TrunkRequest>,
    /// The layer ids each remote stream's origin announces as live (bit n: layer n), from the
    /// trunk catalog ([`Sfu::set_remote_catalog`]).
    pub(crate) remote_live: HashMap<trunk::StreamAddr, u8>,
}

/// How often `handle_timeout` looks for stale sessions and updates probing and REMB.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(20);

/// How far past `now` a session's wake-ups are served at once (see [`Sfu::drain`]). The media
/// task's timer ticks in milliseconds: a deadline closer than this is served now rather than
/// slept for, so a paced packet may leave up to this much early (well inside the pacer's own
/// 40 ms burst allowance), and the task does not wake or spin for every packet.
const BURST_AHEAD: Duration = Duration::from_millis(1);

/// Most wake-ups served for one session in one go, whatever their times.
const MAX_BURST_ROUNDS: usize = 256;

impl Sfu {
    /// An engine whose sessions advertise `local` as their one ICE candidate.
    pub fn new(config: SfuConfig, local: SocketAddr) -> Self {
        Sfu {
            fwd: Forwarder::new(config.forward.clone()),
            config,
            local,
            peers: HashMap::new(),
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            next_peer: 1,
            transmits: VecDeque::new(),
            inbox: Vec::new(),
            spare_inbox: Vec::new(),
            targets: Vec::new(),
            counters: Counters::default(),
            events: VecDeque::new(),
            last_remb: None,
            last_remote_pulls: None,
            last_housekeeping: None,
            due: Vec::new(),
            fanout: FanOut::default(),
            dtls_cert: None,
            trunk: None,
            remote: HashMap::new(),
            trunk_out: VecDeque::new(),
            remote_live: HashMap::new(),
        }
    }

    /// Asks a local publisher for a keyframe of `layer` (PLI).
    pub(crate) fn request_publisher_keyframe(
        &mut self,
        now: Instant,
        publisher: PeerId,
        layer: Layer,
    ) {
        if let Some(p) = self.peers.get_mut(&publisher) {
            let rid = p.layers.rid(layer);
            if let Some(mut w) = p.video_mid.and_then(|m| p.rtc.writer(m)) {
                if w.request_keyframe(rid, KeyframeRequestKind::Pli).is_ok() {
                    self.counters.keyframe_requests_out += 1;
                }
            }
            self.drain(publisher, now);
        }
    }

    /// The next change the shell shows (streams, viewers, layers), oldest first. Drain it after
    /// every input, as [`Sfu::poll_transmit`].
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The engine's counters and gauges.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Number of sessions (publishers and viewers, connected or not).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Counters of the forwarding core.
    pub fn forward_counters(&self) -> &crate::forward::ForwardCounters {
        self.fwd.counters()
    }

    /// A datagram arrived on the media socket from `source`.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += data.len() as u64;
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, data) else {
            self.counters.count_drop(DropReason::Malformed);
            return;
        };
        let input = Input::Receive(now, receive);

        let known = self
            .by_addr
            .get(&source)
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.rtc.accepts(&input)));
        let id = match known {
            Some(id) => id,
            None => {
                let Some(id) = self
                    .peers
                    .iter()
                    .find(|(_, p)| p.rtc.accepts(&input))
                    .map(|(id, _)| *id)
                else {
                    self.counters.count_drop(DropReason::UnknownSource);
                    return;
                };
                self.by_addr.insert(source, id);
                id
            }
        };
        let peer = self.peers.get_mut(&id).expect("found above");
        peer.last_rx = now;
        if let Err(e) = peer.rtc.handle_input(input) {
            debug!(%id, error = %e, "input refused; ending session");
            self.counters.session_errors += 1;
            self.close_peer(id, "protocol error");
        } else {
            self.drain(id, now);
        }
        self.after_input(now);
    }

    /// Time passed: every session whose deadline is due is driven, held keyframe requests are
    /// released, dead or never-connected sessions are removed.
    pub fn handle_timeout(&mut self, now: Instant) {
        // While pacers have packets queued this runs every few microseconds: keep it to the due
        // sessions, without allocating, and do the per-session housekeeping at most every
        // HOUSEKEEPING_INTERVAL.
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        due.extend(
            self.peers
                .iter()
                .filter(|(_, p)| p.next_timeout <= now + BURST_AHEAD)
                .map(|(id, _)| *id),
        );
        for &id in &due {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if let Err(e) = peer
                .rtc
                .handle_input(Input::Timeout(peer.next_timeout.max(now)))
            {
                debug!(%id, error = %e, "timeout handling failed; ending session");
                self.counters.session_errors += 1;
                self.close_peer(id, "protocol error");
                continue;
            }
            self.drain(id, now);
        }
        self.due = due;
        self.continue_fanout(now, MAX_FANOUT_SLICE);
        self.fwd.handle_timeout(now);
        if self
            .last_housekeeping
            .is_some_and(|t| now.saturating_duration_since(t) < HOUSEKEEPING_INTERVAL)
        {
            self.after_input(now);
            return;
        }
        self.last_housekeeping = Some(now);
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                !p.rtc.is_alive()
                    || (!p.connected
                        && now.saturating_duration_since(p.created) > self.config.connect_timeout)
                    || (p.connected
                        && now.saturating_duration_since(p.last_rx) > self.config.idle_timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close_peer(id, "closed, idle, or never connected");
        }
        self.update_probing();
        if self
            .last_remb
            .is_none_or(|t| now.saturating_duration_since(t) >= REMB_INTERVAL)
        {
            self.last_remb = Some(now);
            self.send_remb();
            self.publish_layers();
        }
        if !self.remote.is_empty()
            && self
                .last_remote_pulls
                .is_none_or(|t| now.saturating_duration_since(t) >= REMOTE_PULL_TICK)
        {
            self.last_remote_pulls = Some(now);
            self.update_remote_pulls(now);
        }
        self.after_input(now);
    }

    /// Reports each live stream's received layers (size, bitrate), for the catalog and
    /// `/api/streams`.
    pub(crate) fn publish_layers(&mut self) {
        for (id, peer) in &self.peers {
            let PeerRole::Publisher { stream } = &peer.role else {
                continue;
            };
            if self.fwd.publisher_of(stream) != Some(*id) {
                continue;
            }
            self.events.push_back(Event::Layers {
                name: stream.clone(),
                layers: self.fwd.layers(stream),
            });
        }
    }

    /// The next datagram to send, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.counters.packets_out += 1;
        self.counters.bytes_out += t.contents.len() as u64;
        Some(t)
    }

    /// When [`Sfu::handle_timeout`] must be called next; `None` when no session exists (the
    /// caller then waits for a datagram or a new session).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.values().map(|p| p.next_timeout).min();
        let fanout = self.fanout.pending_since();
        [peers, self.fwd.poll_timeout(), fanout]
            .into_iter()
            .flatten()
            .min()
    }

    /// Polls a session until it has nothing more to do before `now` + [`BURST_AHEAD`].
    ///
    /// str0m's pacer hands out one packet per timeout and asks to be woken again a microsecond
    /// later while it may send more. Serving those wake-ups here, one session after the other,
    /// puts a session's burst (a whole frame, most of the time) into the transmit queue back to
    /// back, so the shell sends it as one GSO train, and the engine is not scanned again for every
    /// packet. The times fed are the session's own deadlines, at most [`BURST_AHEAD`] past
    /// `now`.
    pub(crate) fn drain(&mut self, id: PeerId, now: Instant) {
        let mut rounds = 0;
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            let alive = drain_peer(
                id,
                peer,
                now,
                &mut self.transmits,
                &mut self.inbox,
                &mut self.fwd,
                &mut self.counters,
            );
            if !alive {
                self.close_peer(id, "session closed");
                return;
            }
            rounds += 1;
            if peer.next_timeout > now + BURST_AHEAD || rounds > MAX_BURST_ROUNDS {
                return;
            }
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(peer.next_timeout)) {
                debug!(%id, error = %e, "timeout handling failed; ending session");
                self.counters.session_errors += 1;
                self.close_peer(id, "protocol error");
                return;
            }
        }
    }

    /// Routes frames collected from publishers and carries out the core's decisions, until
    /// nothing is left (writing to a viewer can yield keyframe requests, which yield writes to a
    /// publisher, and so on).
    pub(crate) fn after_input(&mut self, now: Instant) {
        loop {
            // Swap the inbox with the spare buffer: no allocation per call.
            let mut inbox =
                std::mem::replace(&mut self.inbox, std::mem::take(&mut self.spare_inbox));
            let mut progressed = !inbox.is_empty();
            for (from, data) in inbox.drain(..) {
                self.route_frame(now, from, &data);
            }
            self.spare_inbox = inbox;
            while let Some(out) = self.fwd.poll_output() {
                progressed = true;
                match out {
                    ForwardOutput::RequestKeyframe { publisher, layer } => {
                        match self.remote.iter().find(|(_, r)| r.peer == publisher) {
                            Some((addr, _)) => self.trunk_out.push_back(TrunkRequest::Keyframe {
                                addr: addr.clone(),
                                layer: trunk::LayerId(layer.0),
                            }),
                            None => self.request_publisher_keyframe(now, publisher, layer),
                        }
                    }
                    ForwardOutput::Close { peer } => {
                        self.close_peer(peer, "taken over by a newer session")
                    }
                }
            }
            progressed |= self.pump_trunk(now);
            if !progressed {
                break;
            }
        }
    }
}
