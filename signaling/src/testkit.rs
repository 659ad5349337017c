//! Helpers for tests of nodes and clients: one request per row of the role matrix, and the
//! bodies of the fuzz targets in `fuzz/`.
//!
//! The role × action tests (in the core, and end to end over QUIC and WebSocket) send
//! [`probe`]`(action, …)` as each role and check that the node refuses it with
//! [`ErrorCode::Forbidden`] exactly when [`crate::Role::may`] says no. A probe is harmless: it
//! names streams that are not live, orders and drones that do not exist, a token id nobody holds.
//!
//! Some rows are also exercised by a message without a reply ([`probe_without_reply`]: `telemetry`
//! for "publish a drone feed + telemetry"); its refusal is an error without `re`
//! ([`is_forbidden_without_re`]), and an allowed one gets no answer at all.
//!
//! Compiled only for this crate's tests and with the feature `testkit` (the `tests` crate and the
//! fuzz crate turn it on), so it is not part of a release build of the node.

use crate::auth::Action;
use crate::ids::{IncidentId, StreamName, Subject};
use crate::proto::{
    ClientMsg, DroneCommand, ErrorCode, OrderAnswer, Position, RequestId, ServerMsg, StreamKind,
    Telemetry,
};

/// A request that exercises `action` for a token of subject `sub` (the "own" variant where the
/// matrix says "own").
pub fn probe(action: Action, sub: &Subject, id: RequestId) -> ClientMsg {
    let junk_sdp = String::from("v=0\r\n");
    let duty = || IncidentId::parse("duty").expect("valid");
    let own_drone = format!("{sub}-drone1");
    match action {
        Action::ViewStream => ClientMsg::Subscribe {
            id,
            stream: StreamName::parse("nobody-live-here").expect("valid"),
            layer: None,
            max_height: None,
            sdp: junk_sdp,
        },
        Action::PublishOwn => ClientMsg::Publish {
            id,
            stream: None,
            kind: StreamKind::Camera,
            sdp: junk_sdp,
        },
        Action::PublishDrone => ClientMsg::Publish {
            id,
            stream: Some(StreamName::parse(&own_drone).expect("valid")),
            kind: StreamKind::Drone,
            sdp: junk_sdp,
        },
        Action::PublishAnyName => ClientMsg::Publish {
            id,
            stream: Some(StreamName::parse("zz-someone-else").expect("valid")),
            kind: StreamKind::Camera,
            sdp: junk_sdp,
        },
        Action::ReportPosition => ClientMsg::Position {
            id: Some(id),
            pos: Position {
                lat: 30.59,
                lon: 114.30,
                alt: None,
                accuracy: Some(5.0),
                heading: None,
                speed: None,
                time: None,
            },
        },
        Action::ReadIncident => ClientMsg::Units {
            id,
            incident: Some(duty()),
        },
        Action::Chat => ClientMsg::Chat {
            id,
            msg_id: None,
            to: None,
            incident: Some(duty()),
            text: "probe".into(),
        },
        Action::SendOrder => ClientMsg::Order {
            id,
            msg_id: None,
            incident: duty(),
            to: Subject::parse("nobody").expect("valid"),
            text: "probe".into(),
        },
        Action::AnswerOrder => ClientMsg::OrderAnswer {
            id,
            msg_id: None,
            order: "no-such-order".into(),
            answer: OrderAnswer::Accept,
            eta_min: Some(5),
            reason: None,
        },
        Action::RaiseSos => ClientMsg::Sos {
            id,
            msg_id: None,
            incident: None,
            text: Some("probe".into()),
        },
        Action::ManageIncident => ClientMsg::IncidentCreate {
            id,
            incident: None,
            name: "probe".into(),
        },
        Action::CommandDrone => ClientMsg::DroneCommand {
            id,
            drone: own_drone,
            command: DroneCommand::Hold,
            lat: None,
            lon: None,
            alt: None,
        },
        Action::Revoke => ClientMsg::Revoke {
            id,
            sub: None,
            jti: Some("no-such-token-id".into()),
        },
    }
}

/// A message without a reply that exercises `action` too, for the rows that have one: `telemetry`
/// about the subject's own drone for [`Action::PublishDrone`] (the same drone [`probe`] names).
pub fn probe_without_reply(action: Action, sub: &Subject) -> Option<ClientMsg> {
    match action {
        Action::PublishDrone => Some(ClientMsg::Telemetry {
            drone: format!("{sub}-drone1"),
            t: Box::new(Telemetry {
                time: crate::time::UnixMs(1_780_000_000_000),
                mode: Some("LOITER".into()),
                lat: Some(30.59),
                lon: Some(114.30),
                ..Telemetry::default()
            }),
        }),
        _ => None,
    }
}

/// Whether `msg` is the refusal, for lack of rights, of a message without a request id.
pub fn is_forbidden_without_re(msg: &ServerMsg) -> bool {
    matches!(
        msg,
        ServerMsg::Error {
            re: None,
            code: ErrorCode::Forbidden,
            ..
        }
    )
}

/// Whether `reply` is the refusal of request `re` for lack of rights.
pub fn is_forbidden(reply: &ServerMsg, re: RequestId) -> bool {
    matches!(reply, ServerMsg::Error { re: Some(r), code: ErrorCode::Forbidden, .. } if *r == re)
}

/// Whether `reply` answers request `re` (a result or an error).
pub fn answers(reply: &ServerMsg, re: RequestId) -> bool {
    match reply {
        ServerMsg::Result { re: r, .. } => *r == re,
        ServerMsg::Error { re: Some(r), .. } => *r == re,
        _ => false,
    }
}

/// Fuzz body: `data` as a byte stream of QUIC frames and as single messages. Must never panic.
/// Used by `fuzz/fuzz_targets/decode.rs` and by a seeded unit test.
pub fn fuzz_decode(data: &[u8]) {
    let _ = crate::proto::decode_client(data);
    let mut d = crate::proto::FrameDecoder::new();
    // Feed in two uneven pieces, as a network would.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for piece in [&data[..split], &data[split..]] {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    if let Ok(m) = crate::proto::decode_client(&f) {
                        // Whatever decodes must encode and decode to the same message.
                        let again =
                            crate::proto::decode_client(crate::proto::encode(&m).as_bytes());
                        assert_eq!(
                            again.as_ref().ok(),
                            Some(&m),
                            "re-encoding changed the message"
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(feature = "server")]
/// Fuzz body: a signaling core receiving `data` split on `\n` as messages from one connection,
/// after a valid `hello`, with time advancing. Must never panic, and a second session must stay
/// served. Used by `fuzz/fuzz_targets/core.rs` and by a seeded unit test.
pub fn fuzz_core(data: &[u8]) {
    use crate::auth::{Role, TokenIssuer, TokenRequest, TokenVerifier};
    use crate::core::{Core, CoreConfig, Output};
    use crate::ids::NodeId;
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let node = NodeId::parse("fuzz-node").expect("valid");
    let mut verifier = TokenVerifier::new(node.clone());
    verifier.trust(key.verifying_key());
    let issuer = TokenIssuer::new(key, node.clone());
    let now0 = crate::time::UnixMs(1_780_000_000_000);
    let store = crate::store::Store::open_in_memory().expect("in-memory store");
    let mut core = Core::new(CoreConfig::default(), node, verifier, store, now0);
    let token = |sub: &str, role| {
        issuer.issue(
            &TokenRequest::new(Subject::parse(sub).expect("valid"), role, "fuzz-node", "00"),
            now0.secs().as_secs(),
        )
    };
    let hello = |t: String| {
        crate::proto::encode(&ClientMsg::Hello {
            v: crate::proto::VERSION,
            token: t,
            resume: None,
        })
    };
    core.open(now0, 1);
    core.frame(now0, 1, hello(token("fuzz-admin", Role::Admin)).as_bytes());
    core.open(now0, 2);
    core.frame(now0, 2, hello(token("bystander", Role::Officer)).as_bytes());
    let mut now = now0;
    // The admin may legitimately revoke the bystander; then it is closed, not unanswered.
    let mut bystander_closed = false;
    for (i, msg) in data.split(|b| *b == b'\n').enumerate() {
        now = now.plus_ms(7);
        core.frame(now, 1, msg);
        if i % 16 == 0 {
            core.handle_timeout(now);
        }
        while let Some(o) = core.poll_output() {
            bystander_closed |= matches!(o, Output::Close { conn: 2, .. });
        }
    }
    if bystander_closed {
        return;
    }
    core.frame(now.plus_ms(1), 2, br#"{"type":"ping","id":1}"#);
    let mut answered = false;
    while let Some(o) = core.poll_output() {
        if let Output::Send { conn: 2, msg } = o {
            answered |= answers(&msg, 1);
        }
    }
    assert!(answered, "the bystander session was not answered");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded stand-in for the fuzzers: valid messages of every type, mutated byte-wise, fed to
    /// both fuzz bodies.
    #[test]
    fn fuzz_bodies_survive_mutated_messages() {
        let sub = Subject::parse("fuzz-admin").unwrap();
        let mut seeds: Vec<Vec<u8>> = Action::ALL
            .iter()
            .enumerate()
            .map(|(i, a)| crate::proto::encode(&probe(*a, &sub, i as u64)).into_bytes())
            .collect();
        seeds.extend(
            Action::ALL
                .iter()
                .filter_map(|a| probe_without_reply(*a, &sub))
                .map(|m| crate::proto::encode(&m).into_bytes()),
        );
        seeds.push(br#"{"type":"drone_link","drone":"fuzz-admin-drone1","up":false}"#.to_vec());
        seeds.push(br#"{"type":"drone_command","id":4,"drone":"fuzz-admin-drone1","command":"guided","lat":1,"lon":2,"alt":3}"#.to_vec());
        seeds.push(
            br#"{"type":"drone_command_ack","cmd":"dc-1","result":"accepted","text":"ok"}"#
                .to_vec(),
        );
        seeds.push(br#"{"type":"incident_create","id":1,"incident":"x1","name":"n"}"#.to_vec());
        seeds.push(br#"{"type":"assign","id":2,"incident":"x1","subject":"bystander"}"#.to_vec());
        seeds.push(
            br#"{"type":"log","id":3,"incident":"x1","after":0,"limit":4294967295}"#.to_vec(),
        );
        seeds.push(br#"{"type":"ack","after":18446744073709551615}"#.to_vec());
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let mut batch = Vec::new();
            for _ in 0..20 {
                let mut m = seeds[(rnd() % seeds.len() as u64) as usize].clone();
                for _ in 0..(rnd() % 4) {
                    let at = (rnd() % m.len() as u64) as usize;
                    match rnd() % 3 {
                        0 => m[at] = rnd() as u8,
                        1 => {
                            m.remove(at);
                        }
                        _ => m.insert(at, b"{}[]\":,0-e\\"[(rnd() % 11) as usize]),
                    }
                }
                fuzz_decode(&m);
                m.retain(|b| *b != b'\n');
                batch.extend(m);
                batch.push(b'\n');
            }
            if round % 3 == 0 {
                fuzz_core(&batch);
            }
        }
    }
}
