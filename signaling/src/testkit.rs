//! Helpers for tests of nodes and clients: one request per row of the role matrix.
//!
//! The role × action tests (in the core, and end to end over QUIC and WebSocket) send
//! [`probe`]`(action, …)` as each role and check that the node refuses it with
//! [`ErrorCode::Forbidden`] exactly when [`crate::Role::may`] says no. A probe is harmless: it
//! names streams that are not live, orders and drones that do not exist, a token id nobody holds.

use crate::auth::Action;
use crate::ids::{IncidentId, StreamName, Subject};
use crate::proto::{ClientMsg, DroneCommand, ErrorCode, OrderAnswer, Position, RequestId, ServerMsg, StreamKind};

/// A request that exercises `action` for a token of subject `sub` (the "own" variant where the
/// matrix says "own").
pub fn probe(action: Action, sub: &Subject, id: RequestId) -> ClientMsg {
    let junk_sdp = String::from("v=0\r\n");
    let duty = || IncidentId::parse(crate::core::DUTY).expect("valid");
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
        Action::ReadIncident => ClientMsg::Units { id, incident: Some(duty()) },
        Action::Chat => ClientMsg::Chat {
            id,
            incident: duty(),
            text: "probe".into(),
        },
        Action::SendOrder => ClientMsg::Order {
            id,
            incident: duty(),
            to: Subject::parse("nobody").expect("valid"),
            text: "probe".into(),
        },
        Action::AnswerOrder => ClientMsg::OrderAnswer {
            id,
            order: "no-such-order".into(),
            answer: OrderAnswer::Accept,
            eta_min: Some(5),
            reason: None,
        },
        Action::RaiseSos => ClientMsg::Sos { id, incident: None, text: Some("probe".into()) },
        Action::ManageIncident => ClientMsg::IncidentCreate { id, incident: None, name: "probe".into() },
        Action::CommandDrone => ClientMsg::DroneCommand {
            id,
            drone: own_drone,
            command: DroneCommand::Hold,
            lat: None,
            lon: None,
            alt: None,
        },
        Action::Revoke => ClientMsg::Revoke { id, sub: None, jti: Some("no-such-token-id".into()) },
    }
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
