//! Body of the `drone_core` fuzz target (and of its corpus replay in
//! `tests/tests/security/fuzz_corpus.rs`): a script of inputs into drone-bridge's sans-IO core —
//! bytes from the vehicle and ground-station links (raw, or as valid frames built from fuzzed
//! message ids and payloads, so telemetry, COMMAND_ACKs and routing are reached), drone commands
//! from the mesh with fuzzed coordinates (the command mapping), link ends and time.
//!
//! Properties: never a panic; every frame the core transmits or records is one whole, valid
//! MAVLink frame; a command whose
//! coordinates are out of range is answered `refused` at once; every ack names a command that was
//! given.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use drone_bridge::command::{validate, AckResult, Action};
use drone_bridge::core::{CommandRequest, Config, Core, Event, LinkId, Output, PeerKey};
use drone_bridge::frame::{crc, encode_v2, extra_crc, parse_one, Sender, SysId};
use mavlink::dialects::ardupilotmega::{
    MavAutopilot, MavMessage, MavModeFlag, MavState, MavType, HEARTBEAT_DATA,
};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn f64(&mut self) -> f64 {
        let mut b = [0u8; 8];
        let t = self.take(8);
        b[..t.len()].copy_from_slice(t);
        f64::from_le_bytes(b)
    }
}

/// A valid MAVLink 2 frame of message `msgid` with `payload` (CRC right; the decoder then reads
/// the payload as the message, with MAVLink 2's zero-extension).
fn frame(sysid: u8, compid: u8, seq: u8, msgid: u32, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(255)];
    let mut out = vec![0xFD, payload.len() as u8, 0, 0, seq, sysid, compid];
    out.extend_from_slice(&msgid.to_le_bytes()[..3]);
    out.extend_from_slice(payload);
    let c = crc(&out[1..], extra_crc(msgid).unwrap_or(0));
    out.extend_from_slice(&c.to_le_bytes());
    out
}

fn heartbeat(sysid: u8) -> Vec<u8> {
    let hb = MavMessage::HEARTBEAT(HEARTBEAT_DATA {
        custom_mode: 4,
        mavtype: MavType::MAV_TYPE_QUADROTOR,
        autopilot: MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA,
        base_mode: MavModeFlag::MAV_MODE_FLAG_CUSTOM_MODE_ENABLED,
        system_status: MavState::MAV_STATE_STANDBY,
        mavlink_version: 3,
    });
    encode_v2(
        Sender {
            sysid,
            compid: 1,
            seq: 0,
        },
        &hb,
        false,
    )
}

/// Message ids worth building valid frames of (what the core reads), and any other by number.
const MSGIDS: [u32; 8] = [0, 1, 24, 33, 74, 77, 253, 269];

/// Runs one input.
pub fn run(data: &[u8]) {
    let start = Instant::now();
    let mut now = start;
    let mut core = Core::new(Config::default(), start, 1_800_000_000_000_000);
    // A vehicle is known from the start, so commands are sent rather than refused.
    core.handle_bytes(now, LinkId::Vehicle, PeerKey(0), &heartbeat(1));
    let mut given: HashSet<String> = HashSet::new();
    let mut refused_now: Option<String> = None;
    let mut input = Bytes(data);
    let mut n = 0u32;
    while let Some(op) = input.u8() {
        n += 1;
        let link = if op & 0x80 == 0 {
            LinkId::Vehicle
        } else {
            LinkId::Gcs
        };
        let peer = PeerKey(u64::from(op >> 4 & 0x3));
        match op & 0x7 {
            0 => {
                let len = input.u8().unwrap_or(0) as usize;
                let bytes = input.take(len).to_vec();
                core.handle_bytes(now, link, peer, &bytes);
            }
            1 | 2 => {
                let sysid = input.u8().unwrap_or(1) % 4;
                let compid = input.u8().unwrap_or(1);
                let sel = input.u8().unwrap_or(0);
                let msgid = match MSGIDS.get(usize::from(sel & 0x7)) {
                    Some(&id) if sel < 0xF0 => id,
                    _ => u32::from(input.u8().unwrap_or(0)),
                };
                let len = input.u8().unwrap_or(0) as usize % 64;
                let payload = input.take(len).to_vec();
                let f = frame(sysid, compid, n as u8, msgid, &payload);
                core.handle_bytes(now, link, peer, &f);
            }
            3 => {
                let drone = input.u8().unwrap_or(1) % 4;
                let kind = input.u8().unwrap_or(0);
                let action = match kind % 4 {
                    0 => Action::Rtl,
                    1 => Action::Hold,
                    2 => Action::Land,
                    _ => {
                        let (lat, lon) = (input.f64(), input.f64());
                        let alt = (kind & 0x10 != 0).then(|| input.f64());
                        Action::Guided { lat, lon, alt }
                    }
                };
                let cmd = format!("dc-{n}");
                given.insert(cmd.clone());
                refused_now = validate(&action).is_err().then(|| cmd.clone());
                core.handle_command(
                    now,
                    CommandRequest {
                        cmd,
                        drone: SysId(drone),
                        action,
                    },
                );
            }
            4 => core.handle_end(link, peer),
            _ => {
                let ms = u64::from(input.u8().unwrap_or(0)) * 40;
                now += Duration::from_millis(ms);
                core.handle_timeout(now);
            }
        }
        let mut refused_seen = false;
        while let Some(out) = core.poll_output() {
            match out {
                Output::Transmit { bytes, .. } => {
                    parse_one(&bytes).expect("transmitted bytes are one valid frame");
                }
                Output::Record { bytes, .. } => {
                    parse_one(&bytes).expect("recorded bytes are one valid frame");
                }
                Output::Event(Event::Ack { cmd, result, .. }) => {
                    assert!(given.contains(&cmd), "ack for a command never given: {cmd}");
                    if refused_now.as_deref() == Some(cmd.as_str()) {
                        assert_eq!(result, AckResult::Refused, "out-of-range command sent");
                        refused_seen = true;
                    }
                }
                Output::Event(_) | Output::Heard { .. } => {}
            }
        }
        if let Some(cmd) = refused_now.take() {
            assert!(
                refused_seen,
                "out-of-range command {cmd} not refused at once"
            );
        }
    }
    let _ = core.stats();
}
