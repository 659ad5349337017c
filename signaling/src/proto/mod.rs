//! The wire protocol `yiwang/1`: messages and framing, shared by every node and client.
//!
//! `docs/protocol.md` is the normative description; this module is its implementation. In short:
//!
//! - **Transports.** Native clients: QUIC (ALPN [`ALPN`]); the client opens one bidirectional
//!   stream, the *control stream*, and every message travels on it as a frame: a 4-byte big-endian
//!   length, then that many bytes of UTF-8 JSON. Browsers: WebSocket `GET /ws`, one message per
//!   text frame. Either way a message is at most [`MAX_FRAME`] bytes.
//! - **Handshake.** The first client message is [`ClientMsg::Hello`] with the protocol version and
//!   a token; the node answers [`ServerMsg::Welcome`] or an [`ServerMsg::Error`] and closes.
//! - **Requests** carry a client-chosen `id`; the node answers each with [`ServerMsg::Result`] or
//!   [`ServerMsg::Error`] carrying `re` = that id, in no guaranteed order relative to events.
//! - **Events** ([`ServerMsg::Event`], typed as [`Event`] in [`event`]) carry a per-session
//!   sequence number; a client that reconnects sends the last one it saw in `hello.resume` and
//!   the node replays what follows.
//! - **Mail** ([`ServerMsg::Mail`], typed as [`MailItem`] in [`mail`]): the office's stored
//!   messages, numbered per subject.
//!
//! Nothing here does I/O: [`FrameDecoder`] is fed bytes and yields frames; [`decode_client`] and
//! [`encode`] convert between frames and messages.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::auth::Role;
use crate::ids::{IncidentId, NodeId, StreamName, Subject};
use crate::time::UnixMs;

pub mod event;
mod frame;
pub mod mail;
mod telemetry;
pub mod view;

pub use event::{
    CommandName, DroneCommandAckEvent, DroneCommandEvent, Event, IncidentState, Member,
};
pub use frame::{encode_frame, FrameDecoder, FrameError};
pub use mail::{MailItem, OrderState};
pub use telemetry::{Position, Telemetry};
pub use view::{IncidentView, LinkState, LogEntry, Order, UnitKind, UnitView};

/// A `subscribe` stream name: local (`cam1`) or at another node (`township-3/cam1`).
fn local_or_remote_stream<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamName, D::Error> {
    use serde::de::Error as _;
    let s = String::deserialize(d)?;
    StreamName::parse_local_or_remote(&s).map_err(D::Error::custom)
}

/// The protocol version this crate speaks (the `v` of `hello`).
pub const VERSION: u32 = 1;

/// QUIC ALPN protocol id.
pub const ALPN: &[u8] = b"yiwang/1";

/// Largest message, in bytes of JSON (64 KiB). Larger frames are refused with
/// [`ErrorCode::TooLarge`] and the session is closed (the stream cannot be resynchronised).
pub const MAX_FRAME: usize = 64 * 1024;

/// Largest message from the node to a client (4 MiB): replies such as `units` or a `log` page
/// grow with the size of the operation. Clients must accept frames up to this size.
pub const MAX_SERVER_FRAME: usize = 4 * 1024 * 1024;

/// Length of the QUIC frame header (big-endian `u32` length).
pub const FRAME_HEADER: usize = 4;

/// A request id chosen by the client, echoed as `re` in the reply.
pub type RequestId = u64;

/// Where a resuming client left off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The `session` of the earlier `welcome`.
    pub session: String,
    /// The `seq` of the last event the client processed (0 if none).
    pub after: u64,
}

/// What kind of source a published stream is (shown in the catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// A person's camera (officer, operator, …).
    #[default]
    Camera,
    /// A drone's camera.
    Drone,
    /// A fixed camera or other unattended device.
    Fixed,
}

/// The allow-listed drone commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DroneCommand {
    /// Return to launch.
    Rtl,
    /// Hold / loiter where it is.
    Hold,
    /// Land where it is.
    Land,
    /// Fly to a target (guided mode).
    Guided,
}

/// How a drone command ended, as its bridge reports in `drone_command_ack`: the MAVLink
/// `MAV_RESULT` names, plus `timeout` (the vehicle never acknowledged) and `refused` (the bridge
/// itself refused, e.g. an unknown drone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DroneAckResult {
    /// `MAV_RESULT_ACCEPTED`.
    Accepted,
    /// `MAV_RESULT_TEMPORARILY_REJECTED`.
    TemporarilyRejected,
    /// `MAV_RESULT_DENIED`.
    Denied,
    /// `MAV_RESULT_UNSUPPORTED`.
    Unsupported,
    /// `MAV_RESULT_FAILED`.
    Failed,
    /// `MAV_RESULT_IN_PROGRESS`: a final result follows.
    InProgress,
    /// `MAV_RESULT_CANCELLED`.
    Cancelled,
    /// The vehicle never acknowledged the command.
    Timeout,
    /// The bridge refused the command itself (unknown drone, link down, …).
    Refused,
}

impl DroneAckResult {
    /// Whether more acks may follow for the same command (only `in_progress`).
    pub fn is_final(self) -> bool {
        self != DroneAckResult::InProgress
    }
}

/// How an order is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderAnswer {
    /// Accepted (with an ETA).
    Accept,
    /// Declined (with a reason).
    Decline,
    /// Done.
    Done,
}

/// A message from a client to the node. JSON objects tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First message of every connection.
    Hello {
        /// Protocol version; this node speaks [`VERSION`].
        v: u32,
        /// The bearer token (compact JWS).
        token: String,
        /// Resume an earlier session instead of starting a new one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// Liveness check; answered with `{"time": UNIX_MS}`.
    Ping {
        /// Request id.
        id: RequestId,
    },
    /// Acknowledges events up to `after` (lets the node trim its replay buffer). No reply.
    Ack {
        /// Highest event `seq` processed.
        after: u64,
    },
    /// Own position. Without `id` no reply is sent (an error is sent without `re`).
    Position {
        /// Request id (optional).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The position.
        #[serde(flatten)]
        pos: Position,
    },
    /// Incidents visible to the caller.
    Incidents {
        /// Request id.
        id: RequestId,
    },
    /// Create an incident; the creator joins it.
    IncidentCreate {
        /// Request id.
        id: RequestId,
        /// Id for the incident (generated when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<IncidentId>,
        /// Human-readable name.
        name: String,
    },
    /// Close an incident (no new joins; the log stays readable).
    IncidentClose {
        /// Request id.
        id: RequestId,
        /// The incident.
        incident: IncidentId,
    },
    /// Join an incident the caller may access.
    Join {
        /// Request id.
        id: RequestId,
        /// The incident.
        incident: IncidentId,
    },
    /// Leave an incident.
    Leave {
        /// Request id.
        id: RequestId,
        /// The incident.
        incident: IncidentId,
    },
    /// Assign a subject to an incident (it may then join; live sessions join at once).
    Assign {
        /// Request id.
        id: RequestId,
        /// The incident.
        incident: IncidentId,
        /// Who.
        subject: Subject,
    },
    /// Remove an assignment (live sessions of that subject leave the incident).
    Unassign {
        /// Request id.
        id: RequestId,
        /// The incident.
        incident: IncidentId,
        /// Who.
        subject: Subject,
    },
    /// Read an incident's log.
    Log {
        /// Request id.
        id: RequestId,
        /// The incident.
        incident: IncidentId,
        /// Only entries with `seq` greater than this.
        #[serde(default)]
        after: u64,
        /// At most this many entries (default and maximum 500).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Units (officers, drones, devices) of an incident, or of every visible incident.
    Units {
        /// Request id.
        id: RequestId,
        /// Restrict to one incident.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<IncidentId>,
    },
    /// Live streams published by members of an incident (or every visible incident).
    Catalog {
        /// Request id.
        id: RequestId,
        /// Restrict to one incident.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<IncidentId>,
    },
    /// Publish: an SDP offer in, an SDP answer out (as WHIP).
    Publish {
        /// Request id.
        id: RequestId,
        /// Stream name (default: the token's subject).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<StreamName>,
        /// What the source is.
        #[serde(default)]
        kind: StreamKind,
        /// The SDP offer.
        sdp: String,
    },
    /// Subscribe: an SDP offer in, an SDP answer out (as WHEP), with the same layer options.
    Subscribe {
        /// Request id.
        id: RequestId,
        /// The stream: a local name, or `NODE/STREAM` for a stream published at another node
        /// (pulled over the trunks; see [`StreamName::remote`]).
        #[serde(deserialize_with = "local_or_remote_stream")]
        stream: StreamName,
        /// `low`, `mid`, `high` or `auto` (default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<String>,
        /// Highest layer height wanted, in rows (instead of `layer`).
        #[serde(default, rename = "maxHeight", skip_serializing_if = "Option::is_none")]
        max_height: Option<u32>,
        /// The SDP offer.
        sdp: String,
    },
    /// End a media session opened with `publish` or `subscribe`.
    MediaClose {
        /// Request id.
        id: RequestId,
        /// The `media` id from the publish/subscribe result.
        media: String,
    },
    /// A chat message to an incident's members, or directly to one subject (exactly one of
    /// `incident` and `to`). Stored and forwarded: see `mail`.
    Chat {
        /// Request id.
        id: RequestId,
        /// Sender-chosen message id (see [`MsgId`]); a retry with the same id is stored once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<MsgId>,
        /// The incident.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<IncidentId>,
        /// The addressee of a direct message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Subject>,
        /// Text (at most 4,000 characters).
        text: String,
    },
    /// Raise an SOS to every member and commander of the incident (default: every incident the
    /// caller is in). Delivered ahead of other traffic; stays raised until acknowledged.
    Sos {
        /// Request id.
        id: RequestId,
        /// Sender-chosen message id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<MsgId>,
        /// The incident.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<IncidentId>,
        /// Optional text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// Acknowledge a raised SOS (command roles); every recipient learns it.
    SosAck {
        /// Request id.
        id: RequestId,
        /// The SOS id (`sos-N`).
        sos: String,
    },
    /// Send an order to an officer, pilot or unit.
    Order {
        /// Request id.
        id: RequestId,
        /// Sender-chosen message id; a retry with the same id is stored once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<MsgId>,
        /// The incident.
        incident: IncidentId,
        /// The addressee.
        to: Subject,
        /// What to do.
        text: String,
    },
    /// Answer an order addressed to the caller.
    OrderAnswer {
        /// Request id.
        id: RequestId,
        /// Sender-chosen message id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<MsgId>,
        /// The order id.
        order: String,
        /// The answer.
        answer: OrderAnswer,
        /// Minutes to arrival (accept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_min: Option<u32>,
        /// Why (decline).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Command a drone (allow-list only).
    DroneCommand {
        /// Request id.
        id: RequestId,
        /// The drone (`SUBJECT-droneSYSID`).
        drone: String,
        /// The command.
        command: DroneCommand,
        /// Target latitude (guided).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lat: Option<f64>,
        /// Target longitude (guided).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lon: Option<f64>,
        /// Target altitude, metres relative to home (guided).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alt: Option<f64>,
    },
    /// A drone bridge's telemetry for one of its drones (merged into the drone's last known
    /// telemetry). No reply; a refusal is an error without `re`.
    Telemetry {
        /// The drone (`SUBJECT-droneSYSID`).
        drone: String,
        /// The sample (fields present overwrite). Boxed: it is much larger than other messages.
        t: Box<Telemetry>,
    },
    /// A drone bridge reports that a drone's MAVLink heartbeat was lost (`up: false`) or is back.
    /// No reply.
    DroneLink {
        /// The drone.
        drone: String,
        /// Heartbeats are arriving.
        up: bool,
    },
    /// A drone bridge reports the outcome of a command it received as a `drone_command` event.
    /// No reply; an unknown `cmd` is an error without `re`.
    DroneCommandAck {
        /// The command id (`dc-N`) from the event.
        cmd: String,
        /// The outcome.
        result: DroneAckResult,
        /// Details (e.g. the vehicle's or the bridge's explanation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// Revoke every token of a subject, or one token by id; live sessions are closed at once.
    Revoke {
        /// Request id.
        id: RequestId,
        /// Revoke every token issued to this subject.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<Subject>,
        /// Revoke the token with this `jti`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<String>,
    },
    /// A read receipt for a chat item received in the caller's mailbox.
    Read {
        /// Request id.
        id: RequestId,
        /// The item id (`item.id` of the mail).
        item: u64,
    },
    /// Send the caller's mailbox entries after `after` (default: after the acknowledged
    /// position), then answer `{"last", "acked"}`.
    MailSync {
        /// Request id.
        id: RequestId,
        /// Send entries with a greater `seq`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// The caller processed its mailbox up to `upto`. No reply.
    MailAck {
        /// Highest mailbox `seq` processed.
        upto: u64,
    },
    /// Ends the session now (no grace period for a resume).
    Bye,
}

/// A sender-chosen message id: 1..=64 characters of `[A-Za-z0-9._:-]`. Unique per sender; the
/// node stores a message once per `(sender, msg_id)`.
pub type MsgId = String;

/// Checks a [`MsgId`].
pub fn valid_msg_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl ClientMsg {
    /// The request id, if the message has one.
    pub fn id(&self) -> Option<RequestId> {
        use ClientMsg::*;
        match self {
            Hello { .. } | Ack { .. } | MailAck { .. } | Bye => None,
            Telemetry { .. } | DroneLink { .. } | DroneCommandAck { .. } => None,
            Position { id, .. } => *id,
            Ping { id }
            | Incidents { id }
            | IncidentCreate { id, .. }
            | IncidentClose { id, .. }
            | Join { id, .. }
            | Leave { id, .. }
            | Assign { id, .. }
            | Unassign { id, .. }
            | Log { id, .. }
            | Units { id, .. }
            | Catalog { id, .. }
            | Publish { id, .. }
            | Subscribe { id, .. }
            | MediaClose { id, .. }
            | Chat { id, .. }
            | Sos { id, .. }
            | Order { id, .. }
            | OrderAnswer { id, .. }
            | DroneCommand { id, .. }
            | Revoke { id, .. }
            | SosAck { id, .. }
            | Read { id, .. }
            | MailSync { id, .. } => Some(*id),
        }
    }

    /// Replaces the request id; false for messages without one (`hello`, `ack`, `mail_ack`,
    /// `bye`, `telemetry`, `drone_link`, `drone_command_ack`). A `position` gets `Some(new)`.
    pub fn set_id(&mut self, new: RequestId) -> bool {
        if let ClientMsg::Position { id, .. } = self {
            *id = Some(new);
            return true;
        }
        match self.id_mut() {
            Some(id) => {
                *id = new;
                true
            }
            None => false,
        }
    }

    /// The request id field of messages that always carry one.
    fn id_mut(&mut self) -> Option<&mut RequestId> {
        use ClientMsg::*;
        match self {
            Hello { .. } | Ack { .. } | MailAck { .. } | Bye => None,
            Telemetry { .. } | DroneLink { .. } | DroneCommandAck { .. } => None,
            Position { id, .. } => id.as_mut(),
            Ping { id }
            | Incidents { id }
            | IncidentCreate { id, .. }
            | IncidentClose { id, .. }
            | Join { id, .. }
            | Leave { id, .. }
            | Assign { id, .. }
            | Unassign { id, .. }
            | Log { id, .. }
            | Units { id, .. }
            | Catalog { id, .. }
            | Publish { id, .. }
            | Subscribe { id, .. }
            | MediaClose { id, .. }
            | Chat { id, .. }
            | Sos { id, .. }
            | Order { id, .. }
            | OrderAnswer { id, .. }
            | DroneCommand { id, .. }
            | Revoke { id, .. }
            | SosAck { id, .. }
            | Read { id, .. }
            | MailSync { id, .. } => Some(id),
        }
    }

    /// The `type` string of the message.
    pub fn kind(&self) -> &'static str {
        use ClientMsg::*;
        match self {
            Hello { .. } => "hello",
            Ping { .. } => "ping",
            Ack { .. } => "ack",
            Position { .. } => "position",
            Incidents { .. } => "incidents",
            IncidentCreate { .. } => "incident_create",
            IncidentClose { .. } => "incident_close",
            Join { .. } => "join",
            Leave { .. } => "leave",
            Assign { .. } => "assign",
            Unassign { .. } => "unassign",
            Log { .. } => "log",
            Units { .. } => "units",
            Catalog { .. } => "catalog",
            Publish { .. } => "publish",
            Subscribe { .. } => "subscribe",
            MediaClose { .. } => "media_close",
            Chat { .. } => "chat",
            Sos { .. } => "sos",
            Order { .. } => "order",
            OrderAnswer { .. } => "order_answer",
            DroneCommand { .. } => "drone_command",
            Telemetry { .. } => "telemetry",
            DroneLink { .. } => "drone_link",
            DroneCommandAck { .. } => "drone_command_ack",
            Revoke { .. } => "revoke",
            SosAck { .. } => "sos_ack",
            Read { .. } => "read",
            MailSync { .. } => "mail_sync",
            MailAck { .. } => "mail_ack",
            Bye => "bye",
        }
    }
}

/// The `welcome` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version in use.
    pub v: u32,
    /// Session id (keep it to resume).
    pub session: String,
    /// This node's id.
    pub node: NodeId,
    /// Node time.
    pub time: UnixMs,
    /// The token's subject.
    pub subject: Subject,
    /// The token's role.
    pub role: Role,
    /// Incidents the session is in.
    pub incidents: Vec<IncidentId>,
    /// Whether an earlier session was resumed (false: a new session).
    pub resumed: bool,
    /// Events were lost: on a resume, the replay buffer no longer held all of them; or a resume
    /// was asked for but the session was gone (then `resumed` is false). Re-read state (units,
    /// catalog, log) instead of relying on the replay.
    #[serde(default)]
    pub gap: bool,
    /// `seq` of the newest event of the session so far.
    #[serde(default)]
    pub last: u64,
    /// The newest `seq` in the subject's mailbox.
    #[serde(default)]
    pub mail_last: u64,
    /// The highest mailbox `seq` the subject acknowledged.
    #[serde(default)]
    pub mail_acked: u64,
}

/// A message from the node to a client. JSON objects tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The handshake succeeded.
    Welcome(Welcome),
    /// The successful reply to request `re`; `data` depends on the request (docs/protocol.md).
    Result {
        /// The request id.
        re: RequestId,
        /// The reply body (`null` when there is nothing to say).
        data: serde_json::Value,
    },
    /// A refusal or failure; `re` is the request id, or absent when the message had none (or
    /// could not be parsed).
    Error {
        /// The request id, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<RequestId>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// A stored office message for the subject (chat, order, order state, SOS, receipt…),
    /// numbered per subject from 1 without gaps; acknowledge with `mail_ack`.
    Mail {
        /// Position in the subject's mailbox.
        seq: u64,
        /// The item.
        #[serde(serialize_with = "event::sorted")]
        item: MailItem,
    },
    /// Something happened that the session should know.
    Event {
        /// Per-session sequence number, from 1, without gaps.
        seq: u64,
        /// The event.
        #[serde(serialize_with = "event::sorted")]
        event: Event,
    },
}

/// Machine-readable error codes. Closing errors end the session (see [`ErrorCode::closes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `hello.v` is not supported; the message lists the supported versions. Closes.
    UnsupportedVersion,
    /// The first message was not a valid `hello`, or `hello` came twice. Closes.
    BadHello,
    /// The token is malformed, forged, expired, or for another node. Closes.
    Unauthorized,
    /// The token (or its subject) has been revoked. Closes.
    Revoked,
    /// The role may not do this, or the object is not the caller's.
    Forbidden,
    /// The frame is not valid JSON or not a valid message of a known type.
    BadRequest,
    /// The `type` is not one this node knows.
    UnknownType,
    /// A frame over [`MAX_FRAME`]. Closes.
    TooLarge,
    /// Too many messages too fast; repeated flooding closes.
    RateLimited,
    /// No such incident, stream, session or order.
    NotFound,
    /// The addressee of an order never had a session on this node: nobody would read it.
    UnknownRecipient,
    /// Conflicts with current state (a taken stream name, a closed incident, an existing id).
    Conflict,
    /// The node cannot do this now (media engine down, store unavailable).
    Unavailable,
    /// Authorised, but this node version does not implement it yet.
    NotImplemented,
    /// The session ended for good: `bye`, or it was resumed on another connection. Closes.
    SessionClosed,
    /// The connection did not read its messages fast enough and was closed; the session stays
    /// resumable (reconnect and resume to catch up). Closes.
    TooSlow,
    /// Nothing arrived on the connection for too long (a dead peer); the session stays
    /// resumable. Closes.
    Idle,
    /// `hello` would open a new session beyond the node's cap: the subject already holds as many
    /// sessions (attached or awaiting resume) as its role may, or the node holds its most.
    /// Resuming an existing session is never refused for this. Closes.
    TooManySessions,
}

impl ErrorCode {
    /// Whether the node closes the session after sending this error.
    pub fn closes(self) -> bool {
        matches!(
            self,
            ErrorCode::UnsupportedVersion
                | ErrorCode::BadHello
                | ErrorCode::Unauthorized
                | ErrorCode::Revoked
                | ErrorCode::TooLarge
                | ErrorCode::SessionClosed
                | ErrorCode::TooSlow
                | ErrorCode::Idle
                | ErrorCode::TooManySessions
        )
    }

    /// The snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::BadHello => "bad_hello",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Revoked => "revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownRecipient => "unknown_recipient",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::SessionClosed => "session_closed",
            ErrorCode::TooSlow => "too_slow",
            ErrorCode::Idle => "idle",
            ErrorCode::TooManySessions => "too_many_sessions",
        }
    }

    /// The transport close code that goes with a closing error: the QUIC application error code,
    /// and (plus 4000) the WebSocket close code.
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion => 11,
            ErrorCode::BadHello => 12,
            ErrorCode::Unauthorized => 13,
            ErrorCode::Revoked => 14,
            ErrorCode::TooLarge => 15,
            ErrorCode::RateLimited => 16,
            ErrorCode::SessionClosed => 17,
            ErrorCode::BadRequest | ErrorCode::UnknownType => 18,
            ErrorCode::TooSlow => 20,
            ErrorCode::Idle => 21,
            ErrorCode::TooManySessions => 22,
            _ => 19,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol error: what to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// The request id, when it could be read.
    pub re: Option<RequestId>,
    /// The code.
    pub code: ErrorCode,
    /// The explanation.
    pub message: String,
}

impl ProtoError {
    /// An error with a code and message.
    pub fn new(re: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError {
            re,
            code,
            message: message.into(),
        }
    }

    /// As a server message.
    pub fn to_msg(&self) -> ServerMsg {
        ServerMsg::Error {
            re: self.re,
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProtoError {}

/// Every `type` a client may send (for [`ErrorCode::UnknownType`] detection).
pub const CLIENT_TYPES: &[&str] = &[
    "hello",
    "ping",
    "ack",
    "position",
    "incidents",
    "incident_create",
    "incident_close",
    "join",
    "leave",
    "assign",
    "unassign",
    "log",
    "units",
    "catalog",
    "publish",
    "subscribe",
    "media_close",
    "chat",
    "sos",
    "order",
    "order_answer",
    "drone_command",
    "telemetry",
    "drone_link",
    "drone_command_ack",
    "revoke",
    "sos_ack",
    "read",
    "mail_sync",
    "mail_ack",
    "bye",
];

/// Decodes one client message from a frame's payload, with a typed error that keeps the request
/// id when the JSON had one.
pub fn decode_client(frame: &[u8]) -> Result<ClientMsg, ProtoError> {
    if frame.len() > MAX_FRAME {
        return Err(ProtoError::new(
            None,
            ErrorCode::TooLarge,
            format!(
                "message of {} bytes exceeds the {MAX_FRAME}-byte limit",
                frame.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(frame).map_err(|e| {
        ProtoError::new(None, ErrorCode::BadRequest, format!("not valid JSON: {e}"))
    })?;
    let obj = value.as_object().ok_or_else(|| {
        ProtoError::new(
            None,
            ErrorCode::BadRequest,
            "a message must be a JSON object",
        )
    })?;
    let re = obj.get("id").and_then(serde_json::Value::as_u64);
    let ty = match obj.get("type") {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(ProtoError::new(
                re,
                ErrorCode::BadRequest,
                "`type` must be a string",
            ))
        }
        None => return Err(ProtoError::new(re, ErrorCode::BadRequest, "missing `type`")),
    };
    if !CLIENT_TYPES.contains(&ty.as_str()) {
        let shown: String = ty.chars().take(40).collect();
        return Err(ProtoError::new(
            re,
            ErrorCode::UnknownType,
            format!("unknown message type {shown:?}"),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ProtoError::new(
            re,
            ErrorCode::BadRequest,
            format!("invalid {ty} message: {e}"),
        )
    })
}

/// Encodes a message as JSON text (a WebSocket text frame, or a QUIC frame's payload).
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serialising these types cannot fail: no maps with non-string keys, no foreign Serialize.
    serde_json::to_string(msg).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let m = ClientMsg::Hello {
            v: 1,
            token: "t".into(),
            resume: Some(Resume {
                session: "s".into(),
                after: 4,
            }),
        };
        let s = encode(&m);
        assert_eq!(
            s,
            r#"{"type":"hello","v":1,"token":"t","resume":{"session":"s","after":4}}"#
        );
        assert_eq!(decode_client(s.as_bytes()).unwrap(), m);
    }

    #[test]
    fn subscribe_takes_a_local_or_a_remote_stream_and_publish_only_local() {
        let m =
            decode_client(br#"{"type":"subscribe","id":1,"stream":"township-3/cam1","sdp":"v=0"}"#)
                .unwrap();
        let ClientMsg::Subscribe { stream, .. } = &m else {
            panic!("{m:?}")
        };
        assert_eq!(stream.split_remote(), Some(("township-3", "cam1")));
        assert_eq!(
            decode_client(encode(&m).as_bytes()).unwrap(),
            m,
            "round trip"
        );
        let m =
            decode_client(br#"{"type":"subscribe","id":1,"stream":"cam1","sdp":"v=0"}"#).unwrap();
        assert!(
            matches!(m, ClientMsg::Subscribe { stream, .. } if stream.split_remote().is_none())
        );
        for bad in ["a/b/c", "/cam", "node/", "-x/cam", "node/.cam"] {
            let frame = format!(r#"{{"type":"subscribe","id":1,"stream":"{bad}","sdp":"v=0"}}"#);
            assert!(decode_client(frame.as_bytes()).is_err(), "{bad}");
        }
        let publish = br#"{"type":"publish","id":1,"stream":"township-3/cam1","sdp":"v=0"}"#;
        assert!(
            decode_client(publish).is_err(),
            "a remote name is never published"
        );
    }

    #[test]
    fn position_is_flat() {
        let m =
            decode_client(br#"{"type":"position","lat":30.5,"lon":114.3,"speed":1.5}"#).unwrap();
        match m {
            ClientMsg::Position { id: None, pos } => {
                assert_eq!(pos.lat, 30.5);
                assert_eq!(pos.speed, Some(1.5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_are_typed_and_keep_the_id() {
        let e = decode_client(b"{not json").unwrap_err();
        assert_eq!((e.code, e.re), (ErrorCode::BadRequest, None));
        let e = decode_client(br#"{"type":"teleport","id":7}"#).unwrap_err();
        assert_eq!((e.code, e.re), (ErrorCode::UnknownType, Some(7)));
        let e = decode_client(br#"{"type":"join","id":8}"#).unwrap_err();
        assert_eq!((e.code, e.re), (ErrorCode::BadRequest, Some(8)));
        let e = decode_client(br#"[1,2]"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_client(br#"{"type":"join","id":8,"incident":"a b"}"#).unwrap_err();
        assert_eq!((e.code, e.re), (ErrorCode::BadRequest, Some(8)));
        // Unknown fields are ignored (a newer client may send more).
        assert_eq!(
            decode_client(br#"{"type":"ping","id":1,"extra":true}"#).unwrap(),
            ClientMsg::Ping { id: 1 }
        );
        let big = vec![b' '; MAX_FRAME + 1];
        assert_eq!(decode_client(&big).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator; the fuzz target in fuzz/ goes further.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = decode_client(&bytes);
            let mut d = FrameDecoder::new();
            d.push(&bytes);
            while let Ok(Some(f)) = d.next_frame() {
                let _ = decode_client(&f);
            }
        }
    }

    #[test]
    fn drone_messages_round_trip_in_the_agreed_shapes() {
        let cases: [(&str, ClientMsg); 4] = [
            (
                r#"{"type":"telemetry","drone":"pilot-3-drone1","t":{"time":1780000000000,"mode":"GUIDED","armed":true,"lat":30.5,"lon":114.3,"alt_amsl":52.5,"battery_pct":87.0,"gps_fix":3,"satellites":14,"status_text":"PreArm: ok"}}"#,
                ClientMsg::Telemetry {
                    drone: "pilot-3-drone1".into(),
                    t: Box::new(Telemetry {
                        time: crate::time::UnixMs(1_780_000_000_000),
                        mode: Some("GUIDED".into()),
                        armed: Some(true),
                        lat: Some(30.5),
                        lon: Some(114.3),
                        alt_amsl: Some(52.5),
                        battery_pct: Some(87.0),
                        gps_fix: Some(3),
                        satellites: Some(14),
                        status_text: Some("PreArm: ok".into()),
                        ..Telemetry::default()
                    }),
                },
            ),
            (
                r#"{"type":"drone_link","drone":"pilot-3-drone1","up":false}"#,
                ClientMsg::DroneLink {
                    drone: "pilot-3-drone1".into(),
                    up: false,
                },
            ),
            (
                r#"{"type":"drone_command_ack","cmd":"dc-7","result":"temporarily_rejected","text":"not armed"}"#,
                ClientMsg::DroneCommandAck {
                    cmd: "dc-7".into(),
                    result: DroneAckResult::TemporarilyRejected,
                    text: Some("not armed".into()),
                },
            ),
            (
                r#"{"type":"drone_command_ack","cmd":"dc-8","result":"in_progress"}"#,
                ClientMsg::DroneCommandAck {
                    cmd: "dc-8".into(),
                    result: DroneAckResult::InProgress,
                    text: None,
                },
            ),
        ];
        for (json, msg) in cases {
            assert_eq!(encode(&msg), json);
            assert_eq!(decode_client(json.as_bytes()).unwrap(), msg);
            assert_eq!(msg.id(), None);
            let mut m = msg.clone();
            assert!(!m.set_id(3), "{} has no request id", m.kind());
            assert_eq!(json.split('"').nth(3), Some(m.kind()));
        }
        for r in [
            "accepted",
            "temporarily_rejected",
            "denied",
            "unsupported",
            "failed",
            "in_progress",
            "cancelled",
            "timeout",
            "refused",
        ] {
            let json = format!(r#"{{"type":"drone_command_ack","cmd":"dc-1","result":"{r}"}}"#);
            assert!(decode_client(json.as_bytes()).is_ok(), "{r}");
        }
        // `time` is required; an unknown result is a bad request.
        let e = decode_client(br#"{"type":"telemetry","drone":"d","t":{"lat":1.0}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_client(br#"{"type":"drone_command_ack","cmd":"dc-1","result":"maybe"}"#)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
