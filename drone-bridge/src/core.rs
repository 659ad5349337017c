//! The bridge's sans-IO core: bytes from the MAVLink links in, with `now` passed in; frames to
//! send, tlog records and mesh events out. No socket, task or clock inside.
//!
//! It holds the frame decoders (one per link peer), signature checks of both links (with a
//! signing key, a frame from the vehicles or the ground station that is unsigned, wrongly signed
//! or replayed goes nowhere: a ground station signs with the same key, as QGroundControl and
//! MAVProxy do), the routing decision between the vehicle link and the ground-station link, the link supervisor of
//! every vehicle (heartbeat loss after [`Config::heartbeat_timeout`]), telemetry merged per
//! vehicle and rate-limited to [`Config::telemetry_interval`], and commands re-sent until their
//! COMMAND_ACK or given up.
//!
//! Call order: after any `handle_*`, drain [`Core::poll_output`] until `None`, then wait until
//! [`Core::poll_timeout`] (or the next input) and call [`Core::handle_timeout`].
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use drone_bridge::core::{Config, Core, LinkId, Output, PeerKey};
//!
//! let start = Instant::now();
//! let mut core = Core::new(Config::default(), start, 1_800_000_000_000_000);
//! core.handle_bytes(start, LinkId::Vehicle, PeerKey(0), &[0xFD, 9, 0, 0]);
//! core.handle_timeout(start + Duration::from_millis(10));
//! while let Some(out) = core.poll_output() {
//!     match out {
//!         Output::Transmit { link, bytes } => { /* write to the link */ }
//!         Output::Record { unix_us, bytes } => { /* append to the tlog */ }
//!         Output::Event(ev) => { /* to the mesh */ }
//!         Output::Heard { link, peer } => { /* a peer that may be sent to */ }
//!     }
//! }
//! let _next = core.poll_timeout();
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use mavlink::dialects::ardupilotmega::{
    MavAutopilot, MavCmd, MavMessage, MavModeFlag, MavResult, MavState, MavType, HEARTBEAT_DATA,
};
use mavlink::Message as _;

use crate::command::{self, AckResult, Action, Target};
use crate::frame::{encode_v2, DecodeStats, Frame, FrameDecoder, Sender, SysId};
use crate::signing::{Rejected, Signer, SigningKey, Verifier};
use crate::telemetry::{apply, is_autopilot, Merged, Telemetry};

/// The bridge's own system id on the MAVLink network.
pub const BRIDGE_SYSID: u8 = 254;
/// The bridge's component id (MAV_COMP_ID_ONBOARD_COMPUTER).
pub const BRIDGE_COMPID: u8 = 191;

/// Core settings; [`Config::default`] documents the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// A vehicle whose autopilot sent no HEARTBEAT for this long is "link lost". Default 3 s.
    pub heartbeat_timeout: Duration,
    /// At most one telemetry event per vehicle per this interval. Default 200 ms (5 Hz).
    pub telemetry_interval: Duration,
    /// A command without COMMAND_ACK is sent again after this long. Default 1 s.
    pub command_retry: Duration,
    /// A command is sent at most this many times, then answered `timeout`. Default 5.
    pub command_attempts: u32,
    /// The bridge's own HEARTBEAT (to the vehicle link) every this long. Default 1 s.
    pub heartbeat_interval: Duration,
    /// MAVLink 2 signing: outgoing frames signed, frames of both links verified. Default none.
    pub signing: Option<SigningKey>,
    /// The signing link id of the bridge's frames. Default 0.
    pub link_id: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_timeout: Duration::from_secs(3),
            telemetry_interval: Duration::from_millis(200),
            command_retry: Duration::from_secs(1),
            command_attempts: 5,
            heartbeat_interval: Duration::from_secs(1),
            signing: None,
            link_id: 0,
        }
    }
}

/// The two MAVLink links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkId {
    /// `--mavlink`: the vehicles.
    Vehicle,
    /// `--gcs`: the ground station.
    Gcs,
}

impl LinkId {
    fn other(self) -> LinkId {
        match self {
            LinkId::Vehicle => LinkId::Gcs,
            LinkId::Gcs => LinkId::Vehicle,
        }
    }
}

/// One peer of a link (a TCP connection, a UDP source address): each has its own decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey(pub u64);

/// A command for a vehicle, from the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    /// The node's command id (`dc-N`), echoed in the ack.
    pub cmd: String,
    /// The vehicle.
    pub drone: SysId,
    /// What to do.
    pub action: Action,
}

/// Something for the mesh.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New telemetry of a vehicle (the whole merged state).
    Telemetry {
        /// The vehicle.
        drone: SysId,
        /// Its telemetry.
        t: Box<Telemetry>,
    },
    /// A vehicle's link came up (first or renewed HEARTBEAT) or was lost.
    Link {
        /// The vehicle.
        drone: SysId,
        /// Up or lost.
        up: bool,
    },
    /// The end (or progress) of a command.
    Ack {
        /// The node's command id.
        cmd: String,
        /// The vehicle.
        drone: SysId,
        /// How it ended.
        result: AckResult,
        /// Why, when the bridge says more than the result.
        text: Option<String>,
    },
    /// A camera stream the vehicle announced (VIDEO_STREAM_INFORMATION), once per URI.
    Video {
        /// The vehicle.
        drone: SysId,
        /// The stream's URI (`rtsp://…`, `udp://…`).
        uri: String,
    },
}

/// What the core asks of its shell.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send these bytes (one frame) to every peer of `link`.
    Transmit {
        /// Which link.
        link: LinkId,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Append this received frame to the tlog, stamped `unix_us`.
    Record {
        /// Unix time of reception, microseconds.
        unix_us: u64,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Tell the mesh.
    Event(Event),
    /// A frame from `peer` of `link` passed every check (its checksum and, with signing, its
    /// signature): a peer the shell may send to. A `udpin` endpoint adds a UDP source to the
    /// addresses it sends to only on this, so junk from other addresses takes no peer's place.
    Heard {
        /// Which link.
        link: LinkId,
        /// The peer.
        peer: PeerKey,
    },
}

/// Counters of everything the core dropped or did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Decoder counters of every peer, closed ones included.
    #[serde(flatten)]
    pub decode: DecodeStats,
    /// Vehicle-side frames dropped for having no signature (signing on).
    pub unsigned: u64,
    /// Vehicle-side frames dropped for a wrong signature.
    pub bad_signature: u64,
    /// Vehicle-side frames dropped as replays (old timestamp).
    pub replayed: u64,
    /// Ground-station frames dropped for having no signature (signing on): never sent on to a
    /// vehicle.
    pub gcs_unsigned: u64,
    /// Ground-station frames dropped for a wrong signature.
    pub gcs_bad_signature: u64,
    /// Ground-station frames dropped as replays.
    pub gcs_replayed: u64,
    /// Frames forwarded from the vehicle link to the ground station.
    pub to_gcs: u64,
    /// Frames forwarded from the ground station to the vehicle link.
    pub to_vehicle: u64,
    /// Telemetry events emitted.
    pub telemetry: u64,
}

struct Drone {
    /// The autopilot's component id and what it runs.
    target: Target,
    last_heartbeat: Instant,
    up: bool,
    telemetry: Telemetry,
    dirty: bool,
    next_telemetry: Instant,
    videos: Vec<String>,
}

struct Pending {
    cmd: String,
    drone: SysId,
    action: Action,
    mav_cmd: MavCmd,
    attempts: u32,
    /// Next re-send (None once the vehicle said in progress).
    next_retry: Option<Instant>,
    deadline: Instant,
}

/// The core. See the module documentation for the call order.
pub struct Core {
    cfg: Config,
    anchor: (Instant, u64),
    decoders: HashMap<(LinkId, PeerKey), FrameDecoder>,
    closed: DecodeStats,
    verifier: Option<Verifier>,
    signer: Option<Signer>,
    seq: u8,
    drones: BTreeMap<SysId, Drone>,
    /// Which link each system id was last heard on.
    seen_on: HashMap<u8, LinkId>,
    pending: Vec<Pending>,
    next_heartbeat: Instant,
    out: VecDeque<Output>,
    stats: Stats,
}

impl Core {
    /// A core started at `now`, when the Unix time was `unix_us` microseconds.
    pub fn new(cfg: Config, now: Instant, unix_us: u64) -> Core {
        let verifier = cfg.signing.clone().map(Verifier::new);
        let signer = cfg.signing.clone().map(|k| Signer::new(k, cfg.link_id));
        Core {
            cfg,
            anchor: (now, unix_us),
            decoders: HashMap::new(),
            closed: DecodeStats::default(),
            verifier,
            signer,
            seq: 0,
            drones: BTreeMap::new(),
            seen_on: HashMap::new(),
            pending: Vec::new(),
            next_heartbeat: now,
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn unix_us(&self, now: Instant) -> u64 {
        self.anchor.1 + now.saturating_duration_since(self.anchor.0).as_micros() as u64
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.decode = self.closed;
        for d in self.decoders.values() {
            s.decode.add(&d.stats());
        }
        s
    }

    /// The vehicles known (sent an autopilot HEARTBEAT), with their link state.
    pub fn drones(&self) -> impl Iterator<Item = (SysId, bool)> + '_ {
        self.drones.iter().map(|(s, d)| (*s, d.up))
    }

    /// Bytes received from `peer` on `link`.
    pub fn handle_bytes(&mut self, now: Instant, link: LinkId, peer: PeerKey, bytes: &[u8]) {
        let mut frames = Vec::new();
        let d = self.decoders.entry((link, peer)).or_default();
        d.push(bytes);
        while let Some(f) = d.next_frame() {
            frames.push(f);
        }
        for f in frames {
            self.handle_frame(now, link, peer, f);
        }
        self.handle_timeout(now);
    }

    /// The input of `peer` ended (end of a UDP datagram, a closed connection): a frame still
    /// incomplete is counted as truncated.
    pub fn handle_end(&mut self, link: LinkId, peer: PeerKey) {
        if let Some(mut d) = self.decoders.remove(&(link, peer)) {
            d.end_of_input();
            self.closed.add(&d.stats());
        }
    }

    fn handle_frame(&mut self, now: Instant, link: LinkId, peer: PeerKey, frame: Frame) {
        let unix_us = self.unix_us(now);
        // Both links: a ground station's unsigned ARM must not reach the vehicle any more than a
        // forged vehicle frame may reach the mesh.
        if let Some(v) = &mut self.verifier {
            if let Err(why) = v.verify(&frame, unix_us) {
                let st = &mut self.stats;
                let counter = match (link, why) {
                    (LinkId::Vehicle, Rejected::Unsigned) => &mut st.unsigned,
                    (LinkId::Vehicle, Rejected::BadSignature) => &mut st.bad_signature,
                    (LinkId::Vehicle, Rejected::Replay) => &mut st.replayed,
                    (LinkId::Gcs, Rejected::Unsigned) => &mut st.gcs_unsigned,
                    (LinkId::Gcs, Rejected::BadSignature) => &mut st.gcs_bad_signature,
                    (LinkId::Gcs, Rejected::Replay) => &mut st.gcs_replayed,
                };
                *counter += 1;
                tracing::debug!(?link, sysid = %frame.sysid(), msgid = frame.msgid(), ?why, "frame dropped");
                return;
            }
        }
        self.out.push_back(Output::Heard { link, peer });
        self.out.push_back(Output::Record {
            unix_us,
            bytes: frame.bytes().to_vec(),
        });
        self.seen_on.insert(frame.sysid().0, link);
        let msg = frame.decode().ok();
        // Routing: to the other link, unless addressed to the bridge or to a system known to be
        // on the link it came from.
        let target = msg.as_ref().and_then(|m| m.target_system_id()).unwrap_or(0);
        let to_bridge = target == BRIDGE_SYSID;
        let stays =
            target != 0 && self.seen_on.get(&target) == Some(&link) && target != frame.sysid().0;
        if !to_bridge && !stays {
            match link {
                LinkId::Vehicle => self.stats.to_gcs += 1,
                LinkId::Gcs => self.stats.to_vehicle += 1,
            }
            self.out.push_back(Output::Transmit {
                link: link.other(),
                bytes: frame.bytes().to_vec(),
            });
        }
        if link == LinkId::Vehicle {
            if let Some(msg) = msg {
                self.vehicle_message(now, frame.sysid(), frame.compid(), &msg);
            }
        }
    }

    fn vehicle_message(&mut self, now: Instant, sysid: SysId, compid: u8, msg: &MavMessage) {
        if let MavMessage::HEARTBEAT(h) = msg {
            if !is_autopilot(h.autopilot, h.mavtype) {
                return;
            }
            let target = Target {
                sysid: sysid.0,
                compid,
                autopilot: h.autopilot,
                mavtype: h.mavtype,
            };
            let d = self.drones.entry(sysid).or_insert_with(|| Drone {
                target,
                last_heartbeat: now,
                up: false,
                telemetry: Telemetry::default(),
                dirty: false,
                next_telemetry: now,
                videos: Vec::new(),
            });
            d.target = target;
            d.last_heartbeat = now;
            if !d.up {
                d.up = true;
                tracing::debug!(%sysid, "link up");
                self.out.push_back(Output::Event(Event::Link {
                    drone: sysid,
                    up: true,
                }));
            }
        }
        let Some(d) = self.drones.get_mut(&sysid) else {
            return;
        };
        match msg {
            MavMessage::COMMAND_ACK(ack) => self.command_ack(now, sysid, ack.command, ack.result),
            MavMessage::VIDEO_STREAM_INFORMATION(v) => {
                let uri = String::from_utf8_lossy(&v.uri[..])
                    .trim_end_matches('\0')
                    .trim()
                    .to_owned();
                if !uri.is_empty() && !d.videos.contains(&uri) {
                    d.videos.push(uri.clone());
                    self.out
                        .push_back(Output::Event(Event::Video { drone: sysid, uri }));
                }
            }
            // Telemetry only from the autopilot component (a camera's HEARTBEAT would say
            // nothing of the vehicle; its own messages are no telemetry either).
            _ if compid == d.target.compid && apply(&mut d.telemetry, msg) == Merged::Changed => {
                d.dirty = true
            }
            _ => {}
        }
    }

    fn command_ack(&mut self, _now: Instant, sysid: SysId, command: MavCmd, result: MavResult) {
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.drone == sysid && p.mav_cmd == command)
        else {
            return;
        };
        let result = AckResult::of(result);
        let p = &mut self.pending[i];
        let ev = Event::Ack {
            cmd: p.cmd.clone(),
            drone: sysid,
            result,
            text: None,
        };
        if result == AckResult::InProgress {
            // Wait for the final result without re-sending, until the deadline; say so once.
            let first = p.next_retry.take().is_some();
            if first {
                self.out.push_back(Output::Event(ev));
            }
            return;
        }
        self.pending.remove(i);
        self.out.push_back(Output::Event(ev));
    }

    /// A command from the mesh. Answered at once with `refused` when the drone is unknown or the
    /// command malformed; else sent (signed when signing is on) and answered with the vehicle's
    /// COMMAND_ACK or `timeout`. A newer command of the same kind to the same vehicle supersedes a
    /// pending one (answered `cancelled`).
    pub fn handle_command(&mut self, now: Instant, req: CommandRequest) {
        let refuse = |text: String| {
            Output::Event(Event::Ack {
                cmd: req.cmd.clone(),
                drone: req.drone,
                result: AckResult::Refused,
                text: Some(text),
            })
        };
        if let Err(why) = command::validate(&req.action) {
            self.out.push_back(refuse(why));
            return;
        }
        let Some(d) = self.drones.get(&req.drone) else {
            self.out.push_back(refuse(format!(
                "no vehicle with system id {} on the MAVLink link",
                req.drone
            )));
            return;
        };
        let msg = command::encode(req.action, d.target, 0);
        let Some(mav_cmd) = command::acked_command(&msg) else {
            return;
        };
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.drone == req.drone && p.mav_cmd == mav_cmd)
        {
            let old = self.pending.remove(i);
            self.out.push_back(Output::Event(Event::Ack {
                cmd: old.cmd,
                drone: old.drone,
                result: AckResult::Cancelled,
                text: Some(format!("superseded by {}", req.cmd)),
            }));
        }
        let deadline = now + self.cfg.command_retry * self.cfg.command_attempts;
        self.send_to_vehicle(now, &msg);
        self.pending.push(Pending {
            cmd: req.cmd,
            drone: req.drone,
            action: req.action,
            mav_cmd,
            attempts: 1,
            next_retry: Some(now + self.cfg.command_retry),
            deadline,
        });
    }

    fn send_to_vehicle(&mut self, now: Instant, msg: &MavMessage) {
        let sender = Sender {
            sysid: BRIDGE_SYSID,
            compid: BRIDGE_COMPID,
            seq: self.seq,
        };
        self.seq = self.seq.wrapping_add(1);
        let unix_us = self.unix_us(now);
        let mut bytes = encode_v2(sender, msg, self.signer.is_some());
        if let Some(s) = &mut self.signer {
            s.sign(&mut bytes, unix_us);
        }
        self.out.push_back(Output::Transmit {
            link: LinkId::Vehicle,
            bytes,
        });
    }

    /// The bridge's HEARTBEAT: every field set (the crate's default would claim "armed").
    fn own_heartbeat() -> MavMessage {
        MavMessage::HEARTBEAT(HEARTBEAT_DATA {
            custom_mode: 0,
            mavtype: MavType::MAV_TYPE_ONBOARD_CONTROLLER,
            autopilot: MavAutopilot::MAV_AUTOPILOT_INVALID,
            base_mode: MavModeFlag::empty(),
            system_status: MavState::MAV_STATE_ACTIVE,
            mavlink_version: 3,
        })
    }

    /// Time passed: heartbeats, link loss, telemetry due, command re-sends and give-ups.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_heartbeat {
            self.send_to_vehicle(now, &Self::own_heartbeat());
            self.next_heartbeat = now + self.cfg.heartbeat_interval;
        }
        let unix_ms = self.unix_us(now) / 1000;
        for (&sysid, d) in self.drones.iter_mut() {
            if d.up && now.saturating_duration_since(d.last_heartbeat) >= self.cfg.heartbeat_timeout
            {
                d.up = false;
                tracing::debug!(%sysid, "link lost");
                self.out.push_back(Output::Event(Event::Link {
                    drone: sysid,
                    up: false,
                }));
            }
            if d.dirty && now >= d.next_telemetry {
                d.dirty = false;
                d.next_telemetry = now + self.cfg.telemetry_interval;
                d.telemetry.time = signaling::UnixMs(unix_ms);
                self.stats.telemetry += 1;
                self.out.push_back(Output::Event(Event::Telemetry {
                    drone: sysid,
                    t: Box::new(d.telemetry.clone()),
                }));
            }
        }
        let mut resend = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            let retry_due = p.next_retry.is_some_and(|t| now >= t);
            if (retry_due && p.attempts >= self.cfg.command_attempts) || now >= p.deadline {
                let p = self.pending.remove(i);
                let text = format!(
                    "no COMMAND_ACK from the vehicle after {} attempts",
                    p.attempts
                );
                self.out.push_back(Output::Event(Event::Ack {
                    cmd: p.cmd,
                    drone: p.drone,
                    result: AckResult::Timeout,
                    text: Some(text),
                }));
                continue;
            }
            if retry_due {
                p.attempts += 1;
                p.next_retry = Some(now + self.cfg.command_retry);
                if let Some(d) = self.drones.get(&p.drone) {
                    resend.push(command::encode(
                        p.action,
                        d.target,
                        (p.attempts - 1).min(255) as u8,
                    ));
                }
            }
            i += 1;
        }
        for msg in resend {
            self.send_to_vehicle(now, &msg);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_heartbeat;
        for d in self.drones.values() {
            if d.up {
                t = t.min(d.last_heartbeat + self.cfg.heartbeat_timeout);
            }
            if d.dirty {
                t = t.min(d.next_telemetry);
            }
        }
        for p in &self.pending {
            t = t.min(p.deadline);
            if let Some(r) = p.next_retry {
                t = t.min(r);
            }
        }
        t
    }

    /// The next output, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{
        parse_one,
        tests::{heartbeat, position},
    };
    use mavlink::dialects::ardupilotmega::COMMAND_ACK_DATA;

    const UNIX: u64 = 1_800_000_000_000_000;
    const V: PeerKey = PeerKey(1);

    struct Sim {
        core: Core,
        now: Instant,
        vehicle_seq: u8,
        key: Option<Signer>,
        events: Vec<(Duration, Event)>,
        to_vehicle: Vec<Frame>,
        to_gcs: Vec<Vec<u8>>,
        start: Instant,
    }

    impl Sim {
        fn new(cfg: Config) -> Sim {
            let now = Instant::now();
            let key = cfg.signing.clone().map(|k| Signer::new(k, 7));
            Sim {
                core: Core::new(cfg, now, UNIX),
                now,
                vehicle_seq: 0,
                key,
                events: vec![],
                to_vehicle: vec![],
                to_gcs: vec![],
                start: now,
            }
        }

        fn drain(&mut self) {
            while let Some(o) = self.core.poll_output() {
                match o {
                    Output::Event(e) => self.events.push((self.now - self.start, e)),
                    Output::Transmit {
                        link: LinkId::Vehicle,
                        bytes,
                    } => self
                        .to_vehicle
                        .push(parse_one(&bytes).expect("a whole frame")),
                    Output::Transmit {
                        link: LinkId::Gcs,
                        bytes,
                    } => self.to_gcs.push(bytes),
                    Output::Record { .. } | Output::Heard { .. } => {}
                }
            }
        }

        fn vehicle_sends(&mut self, msg: &MavMessage) {
            let sender = Sender {
                sysid: 1,
                compid: 1,
                seq: self.vehicle_seq,
            };
            self.vehicle_seq = self.vehicle_seq.wrapping_add(1);
            let mut bytes = encode_v2(sender, msg, self.key.is_some());
            let unix = UNIX + (self.now - self.start).as_micros() as u64;
            if let Some(s) = &mut self.key {
                s.sign(&mut bytes, unix);
            }
            self.core.handle_bytes(self.now, LinkId::Vehicle, V, &bytes);
            self.core.handle_end(LinkId::Vehicle, V);
            self.drain();
        }

        /// Advances virtual time to `until`, waking the core at each of its deadlines.
        fn run_until(&mut self, until: Duration, mut each_20ms: impl FnMut(&mut Sim)) {
            let end = self.start + until;
            let mut next_tick = self.now;
            while self.now < end {
                let wake = self.core.poll_timeout().min(next_tick).min(end);
                self.now = wake.max(self.now);
                if self.now >= next_tick {
                    each_20ms(self);
                    next_tick = self.now + Duration::from_millis(20);
                }
                self.core.handle_timeout(self.now);
                self.drain();
            }
        }
    }

    fn links(events: &[(Duration, Event)]) -> Vec<(Duration, bool)> {
        events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Link { up, .. } => Some((*t, *up)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn link_lost_after_the_heartbeat_timeout_and_back_with_the_next_heartbeat() {
        let mut s = Sim::new(Config::default());
        // 50 Hz telemetry with a heartbeat every second for 5 s, then silence, then one heartbeat.
        let mut n = 0u32;
        s.run_until(Duration::from_secs(5), |s| {
            if n.is_multiple_of(50) {
                s.vehicle_sends(&heartbeat());
            }
            s.vehicle_sends(&position());
            n += 1;
        });
        s.run_until(Duration::from_secs(12), |_| {});
        s.vehicle_sends(&heartbeat());
        let l = links(&s.events);
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(l[0], (Duration::ZERO, true));
        assert!(!l[1].1);
        // The last heartbeat was at 5.0 s (ticks run through the end): lost at 8.0 s exactly, in
        // virtual time.
        assert_eq!(l[1].0, Duration::from_secs(8));
        assert_eq!(l[2], (Duration::from_secs(12), true));
    }

    #[test]
    fn telemetry_is_rate_limited_to_the_mesh_rate() {
        let mut s = Sim::new(Config::default());
        let mut n = 0u32;
        s.run_until(Duration::from_secs(2), |s| {
            if n.is_multiple_of(50) {
                s.vehicle_sends(&heartbeat());
            }
            let mut p = position();
            if let MavMessage::GLOBAL_POSITION_INT(g) = &mut p {
                g.lat += n as i32; // every sample new
            }
            s.vehicle_sends(&p);
            n += 1;
        });
        let times: Vec<Duration> = s
            .events
            .iter()
            .filter_map(|(t, e)| matches!(e, Event::Telemetry { .. }).then_some(*t))
            .collect();
        assert!((10..=11).contains(&times.len()), "5 Hz over 2 s: {times:?}");
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(200), "{times:?}");
        }
        let Some((_, Event::Telemetry { t, .. })) = s
            .events
            .iter()
            .rev()
            .find(|(_, e)| matches!(e, Event::Telemetry { .. }))
        else {
            panic!()
        };
        assert_eq!(t.mode.as_deref(), Some("GUIDED"));
        assert!(
            t.time.as_millis() >= UNIX / 1000 + 1800,
            "bridge Unix ms: {}",
            t.time
        );
        // Everything the vehicle sent went on to the ground station.
        // Ticks at 0, 20 ms, …, 2 s: 101 positions and 3 heartbeats.
        assert_eq!(s.to_gcs.len(), 101 + 3);
    }

    #[test]
    fn commands_are_resent_until_acked_or_given_up() {
        let mut s = Sim::new(Config::default());
        s.vehicle_sends(&heartbeat());
        s.to_vehicle.clear();
        s.core.handle_command(
            s.now,
            CommandRequest {
                cmd: "dc-1".into(),
                drone: SysId(1),
                action: Action::Rtl,
            },
        );
        s.drain();
        // No ack: 5 attempts one second apart, then timeout at 5 s.
        s.run_until(Duration::from_secs(7), |s| {
            if (s.now - s.start).as_millis().is_multiple_of(1000) {
                s.vehicle_sends(&heartbeat());
            }
        });
        let cmds: Vec<u8> = s
            .to_vehicle
            .iter()
            .filter_map(|f| match f.decode() {
                Ok(MavMessage::COMMAND_LONG(c)) => Some(c.confirmation),
                _ => None,
            })
            .collect();
        assert_eq!(cmds, vec![0, 1, 2, 3, 4]);
        let acks: Vec<_> = s
            .events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Ack { cmd, result, .. } => Some((*t, cmd.clone(), *result)),
                _ => None,
            })
            .collect();
        assert_eq!(
            acks,
            vec![(
                Duration::from_secs(5),
                "dc-1".to_owned(),
                AckResult::Timeout
            )]
        );

        // Acked on the second attempt.
        s.events.clear();
        s.core.handle_command(
            s.now,
            CommandRequest {
                cmd: "dc-2".into(),
                drone: SysId(1),
                action: Action::Land,
            },
        );
        s.drain();
        let t0 = s.now - s.start;
        s.run_until(t0 + Duration::from_millis(1500), |_| {});
        s.vehicle_sends(&MavMessage::COMMAND_ACK(COMMAND_ACK_DATA {
            command: MavCmd::MAV_CMD_NAV_LAND,
            result: MavResult::MAV_RESULT_ACCEPTED,
        }));
        s.run_until(t0 + Duration::from_secs(8), |_| {});
        let acks: Vec<_> = s
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Ack { cmd, result, .. } => Some((cmd.clone(), *result)),
                _ => None,
            })
            .collect();
        assert_eq!(acks, vec![("dc-2".to_owned(), AckResult::Accepted)]);

        // Unknown drone: refused at once.
        s.core.handle_command(
            s.now,
            CommandRequest {
                cmd: "dc-3".into(),
                drone: SysId(9),
                action: Action::Rtl,
            },
        );
        s.drain();
        assert!(matches!(
            &s.events.last().unwrap().1,
            Event::Ack {
                result: AckResult::Refused,
                ..
            }
        ));
    }

    #[test]
    fn with_signing_unsigned_and_wrongly_signed_frames_are_dropped_and_commands_signed() {
        let key = SigningKey([3; 32]);
        let mut s = Sim::new(Config {
            signing: Some(key.clone()),
            ..Config::default()
        });
        s.vehicle_sends(&heartbeat());
        assert_eq!(links(&s.events).len(), 1);
        // Unsigned.
        let unsigned = encode_v2(
            Sender {
                sysid: 1,
                compid: 1,
                seq: 50,
            },
            &position(),
            false,
        );
        s.core.handle_bytes(s.now, LinkId::Vehicle, V, &unsigned);
        // Wrong key.
        let mut wrong = encode_v2(
            Sender {
                sysid: 1,
                compid: 1,
                seq: 51,
            },
            &position(),
            true,
        );
        Signer::new(SigningKey([4; 32]), 7).sign(&mut wrong, UNIX);
        s.core.handle_bytes(s.now, LinkId::Vehicle, V, &wrong);
        s.drain();
        let st = s.core.stats();
        assert_eq!((st.unsigned, st.bad_signature), (1, 1));
        assert_eq!(s.to_gcs.len(), 1, "only the good heartbeat was forwarded");

        s.core.handle_command(
            s.now,
            CommandRequest {
                cmd: "dc-1".into(),
                drone: SysId(1),
                action: Action::Rtl,
            },
        );
        s.drain();
        let cmd = s
            .to_vehicle
            .iter()
            .find(|f| f.msgid() == 76)
            .expect("COMMAND_LONG sent");
        assert!(cmd.is_signed());
        let mut v = Verifier::new(key);
        assert_eq!(v.verify(cmd, UNIX), Ok(()));
        // Every heartbeat of the bridge is explicit and disarmed.
        let hb = s.to_vehicle.iter().find(|f| f.msgid() == 0).unwrap();
        let Ok(MavMessage::HEARTBEAT(h)) = hb.decode() else {
            panic!()
        };
        assert!(!h
            .base_mode
            .contains(MavModeFlag::MAV_MODE_FLAG_SAFETY_ARMED));
        assert_eq!(h.mavtype, MavType::MAV_TYPE_ONBOARD_CONTROLLER);
    }

    /// A ground station's COMMAND_LONG (ARM, RTL, …) to vehicle 1, signed with `key` or not.
    fn gcs_command(seq: u8, arm: bool, key: Option<&SigningKey>, unix: u64) -> Vec<u8> {
        use mavlink::dialects::ardupilotmega::COMMAND_LONG_DATA;
        let msg = MavMessage::COMMAND_LONG(COMMAND_LONG_DATA {
            target_system: 1,
            target_component: 1,
            command: if arm {
                MavCmd::MAV_CMD_COMPONENT_ARM_DISARM
            } else {
                MavCmd::MAV_CMD_NAV_RETURN_TO_LAUNCH
            },
            param1: if arm { 1.0 } else { 0.0 },
            ..COMMAND_LONG_DATA::default()
        });
        let sender = Sender {
            sysid: 255,
            compid: 190,
            seq,
        };
        let mut bytes = encode_v2(sender, &msg, key.is_some());
        if let Some(k) = key {
            Signer::new(k.clone(), 1).sign(&mut bytes, unix);
        }
        bytes
    }

    #[test]
    fn with_signing_a_ground_station_must_sign_or_reach_no_vehicle() {
        let key = SigningKey([3; 32]);
        let mut s = Sim::new(Config {
            signing: Some(key.clone()),
            ..Config::default()
        });
        s.vehicle_sends(&heartbeat());
        s.to_vehicle.clear();
        let g = PeerKey(9);
        // Unsigned ARM, unsigned RTL, and an ARM signed with another key: none goes on.
        s.core
            .handle_bytes(s.now, LinkId::Gcs, g, &gcs_command(0, true, None, UNIX));
        s.core
            .handle_bytes(s.now, LinkId::Gcs, g, &gcs_command(1, false, None, UNIX));
        let other = SigningKey([4; 32]);
        s.core.handle_bytes(
            s.now,
            LinkId::Gcs,
            g,
            &gcs_command(2, true, Some(&other), UNIX),
        );
        let mut heard = Vec::new();
        while let Some(o) = s.core.poll_output() {
            match o {
                Output::Transmit {
                    link: LinkId::Vehicle,
                    bytes,
                } => s.to_vehicle.push(parse_one(&bytes).unwrap()),
                Output::Heard { link, peer } => heard.push((link, peer)),
                _ => {}
            }
        }
        assert!(
            s.to_vehicle.iter().all(|f| f.msgid() != 76),
            "no ground-station command reached the vehicle"
        );
        assert!(
            heard.is_empty(),
            "a peer that sent only rejected frames is not heard"
        );
        let st = s.core.stats();
        assert_eq!((st.gcs_unsigned, st.gcs_bad_signature), (2, 1));
        assert_eq!(st.to_vehicle, 0);
        // Signed with the shared key, the ground station's RTL goes through untouched — once:
        // the same frame again is a replay.
        let good = gcs_command(3, false, Some(&key), UNIX + 1_000);
        s.core.handle_bytes(s.now, LinkId::Gcs, g, &good);
        s.core.handle_bytes(s.now, LinkId::Gcs, g, &good);
        while let Some(o) = s.core.poll_output() {
            match o {
                Output::Transmit {
                    link: LinkId::Vehicle,
                    bytes,
                } => s.to_vehicle.push(parse_one(&bytes).unwrap()),
                Output::Heard { link, peer } => heard.push((link, peer)),
                _ => {}
            }
        }
        let forwarded: Vec<_> = s.to_vehicle.iter().filter(|f| f.msgid() == 76).collect();
        assert_eq!(forwarded.len(), 1);
        assert_eq!(
            forwarded[0].bytes(),
            &good[..],
            "forwarded as signed by the station"
        );
        assert_eq!(heard, vec![(LinkId::Gcs, g)]);
        assert_eq!(s.core.stats().gcs_replayed, 1);
    }

    #[test]
    fn routing_follows_targets_and_several_vehicles_share_a_link() {
        let mut s = Sim::new(Config::default());
        s.vehicle_sends(&heartbeat());
        let hb2 = encode_v2(
            Sender {
                sysid: 2,
                compid: 1,
                seq: 0,
            },
            &heartbeat(),
            false,
        );
        s.core
            .handle_bytes(s.now, LinkId::Vehicle, PeerKey(2), &hb2);
        s.drain();
        assert_eq!(
            s.core.drones().collect::<Vec<_>>(),
            vec![(SysId(1), true), (SysId(2), true)]
        );
        // A GCS command to vehicle 2 goes to the vehicle link; one to the bridge does not.
        let gcs = |target: u8| {
            encode_v2(
                Sender {
                    sysid: 255,
                    compid: 190,
                    seq: 0,
                },
                &command::encode(
                    Action::Rtl,
                    Target {
                        sysid: target,
                        compid: 1,
                        autopilot: MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA,
                        mavtype: MavType::MAV_TYPE_QUADROTOR,
                    },
                    0,
                ),
                false,
            )
        };
        s.to_vehicle.clear();
        s.core.handle_bytes(s.now, LinkId::Gcs, PeerKey(9), &gcs(2));
        s.core
            .handle_bytes(s.now, LinkId::Gcs, PeerKey(9), &gcs(BRIDGE_SYSID));
        s.drain();
        let cmds: Vec<_> = s
            .to_vehicle
            .iter()
            .filter(|f| f.msgid() == 76)
            .map(|f| f.sysid())
            .collect();
        assert_eq!(cmds, vec![SysId(255)], "forwarded raw, sender kept");
        assert_eq!(s.core.stats().to_vehicle, 1);
    }

    #[test]
    fn garbage_is_counted_and_harmless() {
        let mut s = Sim::new(Config::default());
        s.core.handle_bytes(
            s.now,
            LinkId::Vehicle,
            V,
            &[
                0xFD, 0x05, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
            ],
        );
        s.core.handle_end(LinkId::Vehicle, V);
        s.core
            .handle_bytes(s.now, LinkId::Vehicle, V, b"hello world");
        s.core.handle_end(LinkId::Vehicle, V);
        s.vehicle_sends(&heartbeat());
        let st = s.core.stats();
        assert_eq!(st.decode.frames, 1);
        assert!(
            st.decode.truncated >= 1 && st.decode.garbage_bytes >= 11,
            "{st:?}"
        );
    }
}
