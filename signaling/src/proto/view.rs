//! Read views of `yiwang/1`: how an incident, a unit, an order and a log entry look in replies
//! (`incidents`, `incident_create`, `units`, `order`, `log`) and in the HTTP API.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{IncidentState, OrderState, Position, Telemetry};
use crate::auth::Role;
use crate::ids::{IncidentId, Subject};
use crate::time::UnixMs;

/// An incident as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentView {
    /// Its id.
    pub id: IncidentId,
    /// Its name.
    pub name: String,
    /// `open` or `closed`.
    pub state: IncidentState,
    /// Who created it (`node` id for `duty`).
    pub created_by: String,
    /// When.
    pub created_at: UnixMs,
    /// When it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<UnixMs>,
    /// Subjects assigned to it.
    pub assigned: Vec<Subject>,
    /// Subjects with a session in it now.
    pub members: Vec<Subject>,
}

/// What a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// Anyone who connected with a token (officer, operator, pilot station, device, …).
    Person,
    /// A drone reported by a drone bridge.
    Drone,
}

/// A drone's MAVLink link, as its bridge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Heartbeats are arriving.
    Up,
    /// Heartbeats were lost.
    Lost,
}

/// A unit (anyone who has connected, and every drone a bridge reported) as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitView {
    /// Token subject; for a drone, its name (`SUBJECT-droneSYSID`).
    pub subject: Subject,
    /// `person` or `drone`.
    pub kind: UnitKind,
    /// Role; for a drone, the role of its bridge's token (`pilot` or `admin`).
    pub role: Role,
    /// Online now; for a drone: its bridge session is live and its link is up.
    pub online: bool,
    /// Last message from it (for a drone: last report of its bridge about it).
    pub last_seen: UnixMs,
    /// Last reported position; for a drone, from its telemetry (`lat`, `lon`, `alt_amsl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Incidents its sessions are in; for a drone, those of its bridge session.
    pub incidents: Vec<IncidentId>,
    /// Drones only: the subject of the bridge that reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Subject>,
    /// Drones only: `up` or `lost` (MAVLink heartbeats, as the bridge reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkState>,
    /// Drones only: the merged telemetry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
}

/// An order as the API shows it (ORDER in the protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The node's id, `ord-N`.
    pub id: String,
    /// The incident it belongs to.
    pub incident: String,
    /// Who sent it.
    pub from: String,
    /// The addressee.
    pub to: String,
    /// What to do.
    pub text: String,
    /// Current state.
    pub state: OrderState,
    /// Minutes to arrival, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_min: Option<u32>,
    /// Why, when declined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was stored.
    pub sent_at: UnixMs,
    /// When the addressee's device acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<UnixMs>,
    /// When it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<UnixMs>,
    /// When it was declined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declined_at: Option<UnixMs>,
    /// When it was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<UnixMs>,
}

/// One entry of an incident's append-only log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When.
    pub time: UnixMs,
    /// Who did it (a subject, or the node id for the node itself).
    pub who: String,
    /// What happened (`created`, `joined`, `chat`, …).
    pub what: String,
    /// Details (absent when there are none).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}
