//! The events of `yiwang/1`: what a session is told ([`ServerMsg::Event`]'s `event`), one variant
//! per `kind` of the events table of `docs/protocol.md`.
//!
//! The node builds these and nothing else; clients match on the variants instead of on
//! `event["kind"]` strings. A kind this version does not know (a newer node) decodes as
//! [`Event::Unknown`], so its `seq` still counts and a client can ignore it, as the protocol
//! requires. On the wire an event is a JSON object tagged by `kind`; [`sorted`] writes its keys
//! in alphabetical order, as the node always has.
//!
//! [`ServerMsg::Event`]: super::ServerMsg::Event

use serde::{Deserialize, Serialize, Serializer};

use super::{DroneAckResult, DroneCommand, Position, Telemetry};
use crate::auth::Role;
use crate::ids::{IncidentId, Subject};
use crate::time::UnixMs;

/// Something that happened that a session should know (see the events table of the protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A subject went online or offline (to consoles sharing an incident with it).
    Presence {
        /// Whose presence changed.
        subject: Subject,
        /// Its role.
        role: Role,
        /// Online now.
        online: bool,
        /// Its latest message to the node.
        last_seen: UnixMs,
    },
    /// A subject's position (coalesced to at most one per interval per subject).
    Position {
        /// Who reported it.
        subject: Subject,
        /// Its role.
        role: Role,
        /// The report (`lat`, `lon`, `time` and the optional fields, flat in the event).
        #[serde(flatten)]
        pos: Position,
    },
    /// Membership of an incident changed (`op` says how).
    Member(Member),
    /// The session's subject was assigned to an incident (it has joined it).
    Assigned {
        /// The incident.
        incident: IncidentId,
        /// Who assigned.
        by: Subject,
    },
    /// The session's subject was unassigned from an incident.
    Unassigned {
        /// The incident.
        incident: IncidentId,
        /// Who unassigned.
        by: Subject,
    },
    /// An incident the session is in changed state (closed; its members leave it).
    Incident {
        /// The incident.
        incident: IncidentId,
        /// Its new state.
        state: IncidentState,
        /// Who changed it.
        by: Subject,
    },
    /// A drone's merged telemetry (coalesced per drone).
    Telemetry {
        /// The drone (`SUBJECT-droneSYSID`).
        drone: Subject,
        /// The merged telemetry.
        t: Box<Telemetry>,
    },
    /// A drone's MAVLink link went up or down.
    DroneLink {
        /// The drone.
        drone: Subject,
        /// Heartbeats are arriving.
        up: bool,
    },
    /// A command for the bridge session to carry out (urgent lane).
    DroneCommand(DroneCommandEvent),
    /// The bridge's outcome of a command this session sent.
    DroneCommandAck(DroneCommandAckEvent),
    /// A kind this version does not know (sent by a newer node): ignore it.
    #[serde(other)]
    Unknown,
}

/// The `member` event: `op` says what happened to `subject` in `incident`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Member {
    /// The subject's first session joined the incident.
    Joined {
        /// The incident.
        incident: IncidentId,
        /// Who joined.
        subject: Subject,
        /// Its role.
        role: Role,
    },
    /// The subject's last session left the incident.
    Left {
        /// The incident.
        incident: IncidentId,
        /// Who left.
        subject: Subject,
    },
    /// The subject was newly assigned to the incident.
    Assigned {
        /// The incident.
        incident: IncidentId,
        /// Who was assigned.
        subject: Subject,
        /// Who assigned.
        by: Subject,
    },
    /// The subject was unassigned from the incident.
    Unassigned {
        /// The incident.
        incident: IncidentId,
        /// Who was unassigned.
        subject: Subject,
        /// Who unassigned.
        by: Subject,
    },
    /// An `op` this version does not know (a newer node).
    #[serde(other)]
    Unknown,
}

/// An incident's state, as events and views show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Open: sessions may join, subjects may be assigned.
    Open,
    /// Closed for good; the log stays readable.
    Closed,
}

/// The `drone_command` event (also the detail of its log entry, without `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroneCommandEvent {
    /// The node's command id (`dc-N`), what the bridge's ack names.
    pub cmd: String,
    /// The drone.
    pub drone: Subject,
    /// The command: one of the allow-list, or a name a newer node sent (a bridge refuses it).
    pub command: CommandName,
    /// Who sent it.
    pub by: Subject,
    /// Target latitude (`guided` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Target longitude (`guided` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Target altitude, metres relative to home (`guided` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
}

/// The command of a `drone_command` event. The node only ever sends the allow-listed
/// [`DroneCommand`]s; a bridge keeps its own allow-list, so a name it does not know still decodes
/// (as [`CommandName::Other`]) and is refused by the bridge with a `refused` ack instead of
/// being dropped unanswered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandName {
    /// An allow-listed command.
    Known(DroneCommand),
    /// Any other name.
    Other(String),
}

/// The `drone_command_ack` event (also the detail of its log entry, without `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroneCommandAckEvent {
    /// The command id from the `drone_command` event.
    pub cmd: String,
    /// The drone.
    pub drone: Subject,
    /// The outcome.
    pub result: DroneAckResult,
    /// The bridge's or the vehicle's explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Event {
    /// The `kind` string, as on the wire (`"unknown"` for [`Event::Unknown`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Presence { .. } => "presence",
            Event::Position { .. } => "position",
            Event::Member(_) => "member",
            Event::Assigned { .. } => "assigned",
            Event::Unassigned { .. } => "unassigned",
            Event::Incident { .. } => "incident",
            Event::Telemetry { .. } => "telemetry",
            Event::DroneLink { .. } => "drone_link",
            Event::DroneCommand(_) => "drone_command",
            Event::DroneCommandAck(_) => "drone_command_ack",
            Event::Unknown => "unknown",
        }
    }
}

/// Serialises `v` with the keys of every object in alphabetical order: how the node has always
/// written events and mail items (they were `serde_json` maps), kept so the wire bytes do not
/// change with the typed representation.
pub fn sorted<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    serde_json::to_value(v)
        .map_err(S::Error::custom)?
        .serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn s(x: &str) -> Subject {
        Subject::parse(x).unwrap()
    }
    fn i(x: &str) -> IncidentId {
        IncidentId::parse(x).unwrap()
    }

    /// Each event next to the `json!` value the node built for it before events were typed.
    fn cases() -> Vec<(Event, Value)> {
        let pos = Position {
            lat: 30.5,
            lon: 114.3,
            alt: None,
            accuracy: Some(4.0),
            heading: None,
            speed: Some(1.2),
            time: Some(UnixMs(5)),
        };
        let mut position = serde_json::to_value(&pos).unwrap();
        position["kind"] = json!("position");
        position["subject"] = json!("off-1");
        position["role"] = json!("officer");
        let t = Telemetry {
            time: UnixMs(9),
            lat: Some(30.0),
            mode: Some("RTL".into()),
            ..Telemetry::default()
        };
        vec![
            (
                Event::Presence {
                    subject: s("off-1"),
                    role: Role::Officer,
                    online: true,
                    last_seen: UnixMs(7),
                },
                json!({"kind": "presence", "subject": "off-1", "role": Role::Officer, "online": true, "last_seen": 7}),
            ),
            (
                Event::Position {
                    subject: s("off-1"),
                    role: Role::Officer,
                    pos,
                },
                position,
            ),
            (
                Event::Member(Member::Joined {
                    incident: i("duty"),
                    subject: s("off-1"),
                    role: Role::Officer,
                }),
                json!({"kind": "member", "incident": "duty", "subject": "off-1", "role": "officer", "op": "joined"}),
            ),
            (
                Event::Member(Member::Left {
                    incident: i("duty"),
                    subject: s("off-1"),
                }),
                json!({"kind": "member", "incident": "duty", "subject": "off-1", "op": "left"}),
            ),
            (
                Event::Member(Member::Assigned {
                    incident: i("f-1"),
                    subject: s("off-1"),
                    by: s("cmd-1"),
                }),
                json!({"kind": "member", "incident": "f-1", "subject": "off-1", "op": "assigned", "by": "cmd-1"}),
            ),
            (
                Event::Member(Member::Unassigned {
                    incident: i("f-1"),
                    subject: s("off-1"),
                    by: s("cmd-1"),
                }),
                json!({"kind": "member", "incident": "f-1", "subject": "off-1", "op": "unassigned", "by": "cmd-1"}),
            ),
            (
                Event::Assigned {
                    incident: i("f-1"),
                    by: s("cmd-1"),
                },
                json!({"kind": "assigned", "incident": "f-1", "by": "cmd-1"}),
            ),
            (
                Event::Unassigned {
                    incident: i("f-1"),
                    by: s("cmd-1"),
                },
                json!({"kind": "unassigned", "incident": "f-1", "by": "cmd-1"}),
            ),
            (
                Event::Incident {
                    incident: i("f-1"),
                    state: IncidentState::Closed,
                    by: s("cmd-1"),
                },
                json!({"kind": "incident", "incident": "f-1", "state": "closed", "by": "cmd-1"}),
            ),
            (
                Event::Telemetry {
                    drone: s("p-drone1"),
                    t: Box::new(t.clone()),
                },
                json!({"kind": "telemetry", "drone": "p-drone1", "t": Some(t)}),
            ),
            (
                Event::DroneLink {
                    drone: s("p-drone1"),
                    up: false,
                },
                json!({"kind": "drone_link", "drone": "p-drone1", "up": false}),
            ),
            (
                Event::DroneCommand(DroneCommandEvent {
                    cmd: "dc-1".into(),
                    drone: s("p-drone1"),
                    command: CommandName::Known(DroneCommand::Guided),
                    by: s("cmd-1"),
                    lat: Some(30.6),
                    lon: Some(114.3),
                    alt: Some(40.0),
                }),
                json!({"kind": "drone_command", "cmd": "dc-1", "drone": "p-drone1", "command": "guided", "by": "cmd-1", "lat": 30.6, "lon": 114.3, "alt": 40.0}),
            ),
            (
                Event::DroneCommand(DroneCommandEvent {
                    cmd: "dc-2".into(),
                    drone: s("p-drone1"),
                    command: CommandName::Known(DroneCommand::Rtl),
                    by: s("cmd-1"),
                    lat: None,
                    lon: None,
                    alt: None,
                }),
                json!({"kind": "drone_command", "cmd": "dc-2", "drone": "p-drone1", "command": "rtl", "by": "cmd-1"}),
            ),
            (
                Event::DroneCommandAck(DroneCommandAckEvent {
                    cmd: "dc-1".into(),
                    drone: s("p-drone1"),
                    result: DroneAckResult::Accepted,
                    text: None,
                }),
                json!({"kind": "drone_command_ack", "cmd": "dc-1", "drone": "p-drone1", "result": "accepted"}),
            ),
            (
                Event::DroneCommandAck(DroneCommandAckEvent {
                    cmd: "dc-1".into(),
                    drone: s("p-drone1"),
                    result: DroneAckResult::Failed,
                    text: Some("no GPS".into()),
                }),
                json!({"kind": "drone_command_ack", "cmd": "dc-1", "drone": "p-drone1", "result": "failed", "text": "no GPS"}),
            ),
        ]
    }

    #[test]
    fn every_event_kind_encodes_as_the_json_the_node_always_sent() {
        for (event, before) in cases() {
            // The same bytes: keys sorted, as a `serde_json::Value` writes them.
            let mut bytes = Vec::new();
            sorted(&event, &mut serde_json::Serializer::new(&mut bytes)).unwrap();
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                before.to_string(),
                "{}",
                event.kind()
            );
            assert_eq!(event.kind(), before["kind"]);
            let back: Event = serde_json::from_value(before).unwrap();
            assert_eq!(back, event, "decodes back");
        }
    }

    #[test]
    fn kinds_and_ops_from_a_newer_node_decode_as_unknown() {
        let e: Event = serde_json::from_value(json!({"kind": "weather", "wind": 12})).unwrap();
        assert_eq!(e, Event::Unknown);
        let e: Event = serde_json::from_value(
            json!({"kind": "member", "op": "promoted", "incident": "duty", "subject": "a"}),
        )
        .unwrap();
        assert_eq!(e, Event::Member(Member::Unknown));
        // A command a newer node allows still decodes, for the bridge to refuse.
        let e: Event = serde_json::from_value(json!({"kind": "drone_command", "cmd": "dc-9", "drone": "p-drone1", "command": "flip", "by": "cmd-1"})).unwrap();
        assert!(
            matches!(&e, Event::DroneCommand(c) if c.command == CommandName::Other("flip".into())),
            "{e:?}"
        );
        // A known kind gains a field: still the known kind.
        let e: Event = serde_json::from_value(
            json!({"kind": "drone_link", "drone": "p-drone1", "up": true, "rssi": -60}),
        )
        .unwrap();
        assert!(matches!(e, Event::DroneLink { up: true, .. }));
    }
}
