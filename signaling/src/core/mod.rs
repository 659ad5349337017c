//! The sans-IO signaling core: sessions, incidents, authorisation, presence, positions.
//!
//! The shells (QUIC and WebSocket in `media-server`) only move frames: they call
//! [`Core::open`] when a connection arrives, [`Core::frame`] with each received message,
//! [`Core::closed`] when the transport is gone and [`Core::handle_timeout`] regularly (every
//! 100 ms is plenty), then drain [`Core::poll_output`] and do what each [`Output`] says. Time is
//! always passed in (`now`, Unix milliseconds), so every behaviour is testable without clocks.
//!
//! What the core decides:
//! - the handshake (version, token, revocation, resume of a detached session with event replay);
//! - every request's authorisation against [`Role::may`] and the "own"/incident rules;
//! - incidents (the standing [`DUTY`] incident, create/close, join/leave, assignment) and their
//!   append-only logs;
//! - presence (online while a connection is attached, and for [`CoreConfig::presence_linger_ms`]
//!   after it drops, so a roaming tablet does not flap) and positions, coalesced per sender to at
//!   most one fan-out per [`CoreConfig::position_interval_ms`];
//! - per-connection rate limits; a flood closes the connection;
//! - drones: telemetry and link reports from drone bridges (merged per drone, fanned out to
//!   consoles at most [`CoreConfig::telemetry_hz`] times a second), drone commands routed to the
//!   drone's bridge with a node-assigned `cmd` id (rate-limited per drone), and the bridge's acks
//!   routed back to the requester; all of it in the incident logs.
//!
//! Media requests are authorised here and handed to the shell as [`Output::Media`] (the SFU is
//! the shell's business); revocations are handed out as [`Output::Revoked`] for persistence.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::{Action, Claims, Role, TokenVerifier};
use crate::ids::{IncidentId, NodeId, StreamName, Subject};
use crate::proto::{
    decode_client, valid_msg_id, ClientMsg, CommandName, DroneCommand, DroneCommandAckEvent,
    DroneCommandEvent, ErrorCode, Event, IncidentState, MailItem, Member, OrderAnswer, Position,
    ProtoError, RequestId, ServerMsg, StreamKind, Telemetry, Welcome, VERSION,
};
pub use crate::proto::{IncidentView, LinkState, UnitKind, UnitView};
pub use crate::store::LogEntry;
use crate::store::{
    order_id, IncidentRow, Mail, NewItem, NewOrder, OfficeStore, Order, OrderState, StoreError,
};
use crate::time::UnixMs;

/// A connection handle chosen by the shell (unique for the node's lifetime).
pub type ConnId = u64;

/// The standing incident of every node.
pub const DUTY: &str = "duty";

/// Tunables of the core; the defaults are what the node runs with.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// A connection must send `hello` within this time (ms).
    pub hello_timeout_ms: u64,
    /// A detached session can be resumed for this long (ms).
    pub resume_grace_ms: u64,
    /// A detached session's subject stays "online" this long (ms), so a reconnect does not flap
    /// presence. With the transports' 10 s dead-peer detection a dead tablet shows offline
    /// within 10 + 4 = 14 s.
    pub presence_linger_ms: u64,
    /// At most one position fan-out per sender per this interval (ms); extra reports are
    /// coalesced and the newest goes out at the end of the interval.
    pub position_interval_ms: u64,
    /// Events kept per session for replay after a reconnect.
    pub replay_buffer: usize,
    /// Sustained messages per second per connection.
    pub rate_per_sec: f64,
    /// Burst of messages per connection.
    pub rate_burst: f64,
    /// Messages refused for rate in a row before the connection is closed.
    pub flood_close_after: u32,
    /// Largest log page.
    pub log_page_max: u32,
    /// At most this many `telemetry` events per drone per second to each console; extra reports
    /// are merged and the newest state goes out at the end of the interval.
    pub telemetry_hz: u32,
    /// Drone commands per drone: sustained rate per second.
    pub drone_command_per_sec: f64,
    /// Drone commands per drone: burst.
    pub drone_command_burst: f64,
    /// A command the bridge has not finally acknowledged is forgotten after this long (ms); a
    /// later ack for it is `not_found`.
    pub drone_command_ttl_ms: u64,
    /// Most drones one bridge subject may report (drones are never forgotten while the node
    /// runs, so one token must not be able to create them without bound).
    pub max_drones_per_bridge: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            hello_timeout_ms: 10_000,
            resume_grace_ms: 120_000,
            presence_linger_ms: 4_000,
            position_interval_ms: 200,
            replay_buffer: 4096,
            rate_per_sec: 100.0,
            rate_burst: 400.0,
            flood_close_after: 200,
            log_page_max: 500,
            telemetry_hz: 5,
            drone_command_per_sec: 1.0,
            drone_command_burst: 5.0,
            drone_command_ttl_ms: 60_000,
            max_drones_per_bridge: 64,
        }
    }
}

/// A media operation the shell performs after the core authorised it. The shell answers the
/// request `re` on `conn` itself (`result` with `{media, sdp, stream}` or an error).
#[derive(Debug, Clone, PartialEq)]
pub enum MediaOp {
    /// Publish `stream` for `owner` with an SDP offer.
    Publish {
        /// Stream name.
        stream: StreamName,
        /// Token subject of the publisher.
        owner: Subject,
        /// Source kind.
        kind: StreamKind,
        /// SDP offer.
        sdp: String,
    },
    /// Subscribe to `stream`.
    Subscribe {
        /// Stream name.
        stream: StreamName,
        /// `layer` as given.
        layer: Option<String>,
        /// `maxHeight` as given.
        max_height: Option<u32>,
        /// SDP offer.
        sdp: String,
    },
    /// Close a media session (the shell checks it belongs to `session`).
    Close {
        /// Media session id.
        media: String,
    },
    /// List live streams whose owner is one of `owners` (subject → role), for a catalog reply.
    Catalog {
        /// Subjects whose streams are visible, with their roles.
        owners: BTreeMap<Subject, Role>,
        /// Every stream is visible (admin/commander without an incident filter).
        all: bool,
    },
}

/// A revocation, as persisted and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Revocation {
    /// Every token of `sub` issued at or before `at` (Unix seconds).
    Subject {
        /// The subject.
        sub: Subject,
        /// Tokens with `iat <= at` are revoked; newer ones are not.
        at: u64,
    },
    /// One token.
    Token {
        /// Its `jti`.
        jti: String,
    },
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `msg` on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: ServerMsg,
    },
    /// Send `msg` on `conn` ahead of everything queued (SOS).
    Urgent {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: ServerMsg,
    },
    /// Close `conn` (after sending what was queued before) with this code and reason.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        code: ErrorCode,
        /// Human-readable reason.
        reason: String,
    },
    /// Perform a media operation for session `session` and answer `re` on `conn`.
    Media {
        /// The connection to answer on.
        conn: ConnId,
        /// The signaling session.
        session: String,
        /// The request id.
        re: RequestId,
        /// What to do.
        op: MediaOp,
    },
    /// Persist this revocation (it is already applied).
    Revoked(Revocation),
    /// A session ended for good: close its media sessions.
    SessionEnded {
        /// The session id.
        session: String,
    },
}

struct Incident {
    name: String,
    open: bool,
    created_by: String,
    created_at: u64,
    closed_at: Option<u64>,
    assigned: BTreeSet<Subject>,
}

struct Session {
    claims: Claims,
    conn: Option<ConnId>,
    detached_at: Option<u64>,
    incidents: BTreeSet<IncidentId>,
    events: VecDeque<(u64, Event)>,
    last_seq: u64,
}

struct Conn {
    session: Option<String>,
    opened_at: u64,
    tokens: f64,
    tokens_at: u64,
    strikes: u32,
    closing: bool,
    /// The session synced its mailbox on this connection: live mail may follow.
    mail_ready: bool,
}

struct Unit {
    role: Role,
    online: bool,
    last_seen: u64,
    position: Option<Position>,
    pending: Option<Position>,
    last_fanout: Option<u64>,
}

/// A drone some bridge session reported (`telemetry` or `drone_link`).
struct Drone {
    /// The session that last reported it: its bridge.
    bridge: String,
    bridge_sub: Subject,
    bridge_role: Role,
    /// The bridge session's incidents as of its last report (kept when the session ends).
    incidents: BTreeSet<IncidentId>,
    link_up: bool,
    telemetry: Option<Telemetry>,
    last_seen: u64,
    /// Telemetry changed since the last fan-out.
    pending: bool,
    last_fanout: Option<u64>,
    cmd_tokens: f64,
    cmd_tokens_at: u64,
}

/// A drone command sent to a bridge and not yet finally acknowledged.
struct DroneCmd {
    drone: Subject,
    bridge: String,
    requester: String,
    sent_at: u64,
}

/// The signaling state machine of one node. See the module docs.
pub struct Core {
    cfg: CoreConfig,
    node: NodeId,
    verifier: TokenVerifier,
    revoked_jti: BTreeSet<String>,
    revoked_sub: BTreeMap<Subject, u64>,
    conns: HashMap<ConnId, Conn>,
    sessions: HashMap<String, Session>,
    by_subject: HashMap<Subject, BTreeSet<String>>,
    members: HashMap<IncidentId, BTreeSet<String>>,
    incidents: BTreeMap<IncidentId, Incident>,
    units: BTreeMap<Subject, Unit>,
    detached: BTreeSet<String>,
    out: VecDeque<Output>,
    next_incident: u64,
    store: Box<dyn OfficeStore>,
    store_errors: u64,
    open_sos: BTreeMap<String, OpenSos>,
    drones: BTreeMap<Subject, Drone>,
    drone_cmds: HashMap<String, DroneCmd>,
    next_cmd: u64,
}

fn incident_row(id: &IncidentId, inc: &Incident) -> IncidentRow {
    IncidentRow {
        id: id.to_string(),
        name: inc.name.clone(),
        open: inc.open,
        created_by: inc.created_by.clone(),
        created_at: UnixMs(inc.created_at),
        closed_at: inc.closed_at.map(UnixMs),
        assigned: Vec::new(),
    }
}

/// A raised SOS not yet acknowledged (in memory: a node restart forgets the raised state; the
/// alert itself is stored and delivered).
struct OpenSos {
    from: Subject,
    recipients: Vec<Subject>,
    incidents: Vec<IncidentId>,
}

/// Mailbox entries sent per `mail_sync` reply at most; the reply says `more` when there are more.
pub const MAIL_SYNC_BATCH: usize = 1000;

fn duty() -> IncidentId {
    IncidentId::parse(DUTY).expect("`duty` is a valid incident id")
}

fn random_id() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn err(re: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> ProtoError {
    ProtoError::new(re, code, message)
}

fn forbidden(re: RequestId, claims: &Claims, action: Action) -> ProtoError {
    err(
        Some(re),
        ErrorCode::Forbidden,
        format!("role {} may not {}", claims.role, action),
    )
}

/// Roles that run consoles (the wall, the command post) and so receive presence and membership
/// events: admin, commander, operator, viewer. Field roles (officer, pilot, device) do not; they
/// can ask for `units`.
pub fn is_console(role: Role) -> bool {
    matches!(
        role,
        Role::Admin | Role::Commander | Role::Operator | Role::Viewer
    )
}

/// Whether `name` is one of the holder's drones: listed in the token's `drones`, or named
/// `SUBJECT-droneN`.
pub fn owns_drone(claims: &Claims, name: &str) -> bool {
    if claims.drones.iter().any(|d| d == name) {
        return true;
    }
    name.strip_prefix(claims.sub.as_str())
        .and_then(|rest| rest.strip_prefix("-drone"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Core {
    /// A core for node `node`, verifying tokens with `verifier`. The `duty` incident exists from
    /// the start.
    pub fn new(
        cfg: CoreConfig,
        node: NodeId,
        verifier: TokenVerifier,
        mut store: impl OfficeStore + 'static,
        now: u64,
    ) -> Core {
        let mut incidents = BTreeMap::new();
        let mut store_errors = 0;
        match store.incidents() {
            Ok(rows) => {
                for r in rows {
                    let Ok(id) = IncidentId::parse(&r.id) else {
                        store_errors += 1;
                        continue;
                    };
                    incidents.insert(
                        id,
                        Incident {
                            name: r.name,
                            open: r.open,
                            created_by: r.created_by,
                            created_at: r.created_at.as_millis(),
                            closed_at: r.closed_at.map(UnixMs::as_millis),
                            assigned: r
                                .assigned
                                .iter()
                                .filter_map(|s| Subject::parse(s).ok())
                                .collect(),
                        },
                    );
                }
            }
            Err(_) => store_errors += 1,
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = incidents.entry(duty()) {
            let inc = Incident {
                name: "Standing duty".into(),
                open: true,
                created_by: node.to_string(),
                created_at: now,
                closed_at: None,
                assigned: BTreeSet::new(),
            };
            if store.save_incident(&incident_row(&duty(), &inc)).is_err() {
                store_errors += 1;
            }
            slot.insert(inc);
        }
        let next_incident = incidents.len() as u64 + 1;
        Core {
            cfg,
            node,
            verifier,
            revoked_jti: BTreeSet::new(),
            revoked_sub: BTreeMap::new(),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            by_subject: HashMap::new(),
            members: HashMap::new(),
            incidents,
            units: BTreeMap::new(),
            detached: BTreeSet::new(),
            out: VecDeque::new(),
            next_incident,
            store: Box::new(store),
            store_errors,
            open_sos: BTreeMap::new(),
            drones: BTreeMap::new(),
            drone_cmds: HashMap::new(),
            next_cmd: 1,
        }
    }

    /// The next thing the shell must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Live connections (with or without a session).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Sessions, attached or detached.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A new transport connection.
    pub fn open(&mut self, now: u64, conn: ConnId) {
        self.conns.insert(
            conn,
            Conn {
                session: None,
                opened_at: now,
                tokens: self.cfg.rate_burst,
                tokens_at: now,
                strikes: 0,
                closing: false,
                mail_ready: false,
            },
        );
    }

    /// The transport of `conn` is gone. Its session stays resumable for the grace period.
    pub fn closed(&mut self, now: u64, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(sid) = c.session {
            if let Some(s) = self.sessions.get_mut(&sid) {
                if s.conn == Some(conn) {
                    s.conn = None;
                    s.detached_at = Some(now);
                    self.detached.insert(sid);
                }
            }
        }
    }

    /// Applies a revocation (from `media-server revoke` or another node): refuses matching tokens
    /// from now on and closes matching sessions at once.
    pub fn apply_revocation(&mut self, now: u64, r: &Revocation) {
        match r {
            Revocation::Token { jti } => {
                self.revoked_jti.insert(jti.clone());
            }
            Revocation::Subject { sub, at } => {
                let e = self.revoked_sub.entry(sub.clone()).or_insert(*at);
                *e = (*e).max(*at);
            }
        }
        let victims: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| self.is_revoked(&s.claims))
            .map(|(id, _)| id.clone())
            .collect();
        self.end_sessions(
            now,
            victims,
            ErrorCode::Revoked,
            "this token has been revoked",
        );
    }

    /// Ends `sessions` for good, telling an attached client why (a closing error).
    fn end_sessions(&mut self, now: u64, sessions: Vec<String>, code: ErrorCode, why: &str) {
        for sid in sessions {
            if let Some(conn) = self.sessions.get(&sid).and_then(|s| s.conn) {
                self.send_err(conn, err(None, code, why));
            }
            self.end_session(now, &sid, why);
        }
    }

    fn is_revoked(&self, c: &Claims) -> bool {
        self.revoked_jti.contains(c.jti.as_str())
            || self.revoked_sub.get(&c.sub).is_some_and(|at| c.iat <= *at)
    }

    /// Verifies a bearer token as the handshake would (signature, audience, expiry, revocation);
    /// used by the HTTP API.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<Claims, ProtoError> {
        let claims = self
            .verifier
            .verify(token, now / 1000)
            .map_err(|e| err(None, ErrorCode::Unauthorized, e.to_string()))?;
        if self.is_revoked(&claims) {
            return Err(err(None, ErrorCode::Revoked, "this token has been revoked"));
        }
        Ok(claims)
    }

    fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        self.out.push_back(Output::Send { conn, msg });
    }

    fn reply(&mut self, conn: ConnId, re: RequestId, data: Value) {
        self.send(conn, ServerMsg::Result { re, data });
    }

    fn send_err(&mut self, conn: ConnId, e: ProtoError) {
        let closes = e.code.closes();
        let code = e.code;
        let reason = e.message.clone();
        self.send(conn, e.to_msg());
        if closes {
            self.close_conn(conn, code, &reason);
        }
    }

    fn close_conn(&mut self, conn: ConnId, code: ErrorCode, reason: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.closing {
                return;
            }
            c.closing = true;
        }
        self.out.push_back(Output::Close {
            conn,
            code,
            reason: reason.to_owned(),
        });
    }

    /// A frame larger than the limit arrived on `conn` (the shell could not even read it): the
    /// typed error is sent and the connection closed.
    pub fn frame_error(&mut self, conn: ConnId, e: ProtoError) {
        self.send_err(conn, e);
        if !e_closes(&self.out, conn) {
            self.close_conn(conn, ErrorCode::BadRequest, "unusable frame stream");
        }
    }

    /// One received message (a QUIC frame's payload or a WebSocket text frame).
    pub fn frame(&mut self, now: u64, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        // Token bucket per connection.
        let elapsed = now.saturating_sub(c.tokens_at) as f64 / 1000.0;
        c.tokens = (c.tokens + elapsed * self.cfg.rate_per_sec).min(self.cfg.rate_burst);
        c.tokens_at = now;
        if c.tokens < 1.0 {
            c.strikes += 1;
            let strikes = c.strikes;
            let re = decode_client(bytes).ok().and_then(|m| m.id());
            if strikes >= self.cfg.flood_close_after {
                self.send_err(
                    conn,
                    err(
                        re,
                        ErrorCode::RateLimited,
                        "message flood: closing the session",
                    ),
                );
                self.close_conn(conn, ErrorCode::RateLimited, "message flood");
            } else {
                self.send_err(
                    conn,
                    err(
                        re,
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} messages per second; slow down",
                            self.cfg.rate_per_sec
                        ),
                    ),
                );
            }
            return;
        }
        c.tokens -= 1.0;
        c.strikes = 0;
        let session = c.session.clone();
        let msg = match decode_client(bytes) {
            Ok(m) => m,
            Err(e) => {
                let e = if session.is_none() {
                    err(
                        None,
                        ErrorCode::BadHello,
                        format!("the first message must be hello ({})", e.message),
                    )
                } else {
                    e
                };
                self.send_err(conn, e);
                return;
            }
        };
        match session {
            None => self.hello(now, conn, msg),
            Some(sid) => {
                if let Some(u) = self.sessions.get(&sid).map(|s| s.claims.sub.clone()) {
                    if let Some(unit) = self.units.get_mut(&u) {
                        unit.last_seen = now;
                    }
                }
                if let Err(e) = self.request(now, conn, &sid, msg) {
                    self.send_err(conn, e);
                }
            }
        }
    }

    fn hello(&mut self, now: u64, conn: ConnId, msg: ClientMsg) {
        let ClientMsg::Hello { v, token, resume } = msg else {
            self.send_err(
                conn,
                err(
                    msg.id(),
                    ErrorCode::BadHello,
                    "the first message must be hello",
                ),
            );
            return;
        };
        if v != VERSION {
            self.send_err(
                conn,
                err(
                    None,
                    ErrorCode::UnsupportedVersion,
                    format!("protocol version {v} is not supported; this node speaks [{VERSION}]"),
                ),
            );
            return;
        }
        let claims = match self.authenticate(&token, now) {
            Ok(c) => c,
            Err(e) => {
                self.send_err(conn, e);
                return;
            }
        };
        // Resume a session of the same subject, if it is still there.
        let mut resumed = None;
        let asked_resume = resume.is_some();
        if let Some(r) = resume {
            if self
                .sessions
                .get(&r.session)
                .is_some_and(|s| s.claims.sub == claims.sub)
            {
                resumed = Some((r.session, r.after));
            }
        }
        let (sid, after, was_resumed) = match resumed {
            Some((sid, after)) => {
                let old_conn = self.sessions.get(&sid).and_then(|s| s.conn);
                if let Some(old) = old_conn {
                    if old != conn {
                        self.send(
                            old,
                            err(
                                None,
                                ErrorCode::SessionClosed,
                                "session resumed on another connection",
                            )
                            .to_msg(),
                        );
                        self.close_conn(
                            old,
                            ErrorCode::SessionClosed,
                            "session resumed on another connection",
                        );
                        if let Some(c) = self.conns.get_mut(&old) {
                            c.session = None;
                        }
                    }
                }
                let s = self.sessions.get_mut(&sid).expect("checked above");
                s.claims = claims.clone();
                s.conn = Some(conn);
                s.detached_at = None;
                self.detached.remove(&sid);
                (sid, after, true)
            }
            None => {
                let sid = random_id();
                let mut incidents: BTreeSet<IncidentId> = BTreeSet::new();
                for i in &claims.incidents {
                    self.ensure_incident(now, i);
                    if self.incidents.get(i).is_some_and(|x| x.open) {
                        incidents.insert(i.clone());
                    }
                }
                for (id, inc) in &self.incidents {
                    if inc.open && inc.assigned.contains(&claims.sub) {
                        incidents.insert(id.clone());
                    }
                }
                if incidents.is_empty() {
                    incidents.insert(duty());
                }
                self.sessions.insert(
                    sid.clone(),
                    Session {
                        claims: claims.clone(),
                        conn: Some(conn),
                        detached_at: None,
                        incidents: BTreeSet::new(),
                        events: VecDeque::new(),
                        last_seq: 0,
                    },
                );
                self.by_subject
                    .entry(claims.sub.clone())
                    .or_default()
                    .insert(sid.clone());
                if !self.units.contains_key(&claims.sub)
                    && self.store.note_subject(&claims.sub, UnixMs(now)).is_err()
                {
                    self.store_errors += 1;
                }
                let unit = self.units.entry(claims.sub.clone()).or_insert(Unit {
                    role: claims.role,
                    online: false,
                    last_seen: now,
                    position: None,
                    pending: None,
                    last_fanout: None,
                });
                unit.role = claims.role;
                for i in incidents {
                    self.join_incident(now, &sid, &i);
                }
                (sid, 0, false)
            }
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(sid.clone());
        }
        if let Some(u) = self.units.get_mut(&claims.sub) {
            u.last_seen = now;
        }
        let s = &self.sessions[&sid];
        let oldest = s.events.front().map_or(s.last_seq + 1, |(q, _)| *q);
        let gap = (was_resumed && after + 1 < oldest) || (asked_resume && !was_resumed);
        let welcome = Welcome {
            v: VERSION,
            session: sid.clone(),
            node: self.node.clone(),
            time: UnixMs(now),
            subject: claims.sub.clone(),
            role: claims.role,
            incidents: s.incidents.iter().cloned().collect(),
            resumed: was_resumed,
            gap,
            last: s.last_seq,
            mail_last: self.store.last_seq(&claims.sub).unwrap_or(0),
            mail_acked: self.store.acked(&claims.sub).unwrap_or(0),
        };
        let replay: Vec<ServerMsg> = if was_resumed {
            s.events
                .iter()
                .filter(|(q, _)| *q > after)
                .map(|(q, e)| ServerMsg::Event {
                    seq: *q,
                    event: e.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        self.send(conn, ServerMsg::Welcome(welcome));
        for m in replay {
            self.send(conn, m);
        }
        self.refresh_presence(now, &claims.sub);
    }

    fn ensure_incident(&mut self, now: u64, id: &IncidentId) {
        if !self.incidents.contains_key(id) {
            self.incidents.insert(
                id.clone(),
                Incident {
                    name: id.to_string(),
                    open: true,
                    created_by: self.node.to_string(),
                    created_at: now,
                    closed_at: None,
                    assigned: BTreeSet::new(),
                },
            );
            self.persist_incident(id);
            self.log(
                now,
                id,
                self.node.as_str().to_owned(),
                "created",
                json!({"reason": "named in a token"}),
            );
        }
    }

    /// Appends to an incident's log in the store. A store failure loses the entry; it is
    /// counted ([`Core::store_errors`]) for the node's metrics.
    fn log(&mut self, now: u64, incident: &IncidentId, who: String, what: &str, detail: Value) {
        if self.incidents.contains_key(incident)
            && self
                .store
                .append_log(incident.as_str(), UnixMs(now), &who, what, &detail)
                .is_err()
        {
            self.store_errors += 1;
        }
    }

    fn persist_incident(&mut self, id: &IncidentId) {
        if let Some(inc) = self.incidents.get(id) {
            let row = incident_row(id, inc);
            if self.store.save_incident(&row).is_err() {
                self.store_errors += 1;
            }
        }
    }

    /// Store writes that failed (log entries, incident changes) since the node started.
    pub fn store_errors(&self) -> u64 {
        self.store_errors
    }

    /// Whether `claims` may access (join, read) incident `id`.
    fn may_access(&self, claims: &Claims, id: &IncidentId) -> bool {
        if matches!(claims.role, Role::Admin | Role::Commander) {
            return true;
        }
        id.as_str() == DUTY
            || claims.incidents.contains(id)
            || self
                .incidents
                .get(id)
                .is_some_and(|i| i.assigned.contains(&claims.sub))
    }

    fn join_incident(&mut self, now: u64, sid: &str, id: &IncidentId) -> bool {
        let Some(s) = self.sessions.get_mut(sid) else {
            return false;
        };
        if !s.incidents.insert(id.clone()) {
            return false;
        }
        let sub = s.claims.sub.clone();
        let role = s.claims.role;
        let first_of_subject = !self.subject_in(&sub, id, Some(sid));
        self.members
            .entry(id.clone())
            .or_default()
            .insert(sid.to_owned());
        if first_of_subject {
            self.log(now, id, sub.to_string(), "joined", json!({"role": role}));
            self.console_event(
                id,
                Some(sid),
                Event::Member(Member::Joined {
                    incident: id.clone(),
                    subject: sub,
                    role,
                }),
            );
        }
        true
    }

    fn leave_incident(&mut self, now: u64, sid: &str, id: &IncidentId) -> bool {
        let Some(s) = self.sessions.get_mut(sid) else {
            return false;
        };
        if !s.incidents.remove(id) {
            return false;
        }
        let sub = s.claims.sub.clone();
        if let Some(m) = self.members.get_mut(id) {
            m.remove(sid);
        }
        if !self.subject_in(&sub, id, None) {
            self.log(now, id, sub.to_string(), "left", Value::Null);
            self.console_event(
                id,
                None,
                Event::Member(Member::Left {
                    incident: id.clone(),
                    subject: sub,
                }),
            );
        }
        true
    }

    /// Whether another session of `sub` (not `except`) is in incident `id`.
    fn subject_in(&self, sub: &Subject, id: &IncidentId, except: Option<&str>) -> bool {
        self.by_subject.get(sub).is_some_and(|ss| {
            ss.iter().filter(|s| Some(s.as_str()) != except).any(|s| {
                self.sessions
                    .get(s)
                    .is_some_and(|x| x.incidents.contains(id))
            })
        })
    }

    /// Queues `event` to one session (numbered, buffered for replay, sent if attached).
    fn push_event(&mut self, sid: &str, event: &Event) {
        self.push_event_on(sid, event, false);
    }

    /// [`Core::push_event`], sent ahead of queued traffic when `urgent`.
    fn push_event_on(&mut self, sid: &str, event: &Event, urgent: bool) {
        let cap = self.cfg.replay_buffer;
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        // Roles that may not read incidents (devices) are members for what they send, but
        // receive nothing of what others do.
        if !s.claims.may(Action::ReadIncident) {
            return;
        }
        s.last_seq += 1;
        let seq = s.last_seq;
        s.events.push_back((seq, event.clone()));
        while s.events.len() > cap {
            s.events.pop_front();
        }
        if let Some(conn) = s.conn {
            let msg = ServerMsg::Event {
                seq,
                event: event.clone(),
            };
            self.out.push_back(if urgent {
                Output::Urgent { conn, msg }
            } else {
                Output::Send { conn, msg }
            });
        }
    }

    fn incident_event(&mut self, _now: u64, id: &IncidentId, except: Option<&str>, event: Event) {
        let targets: Vec<String> = self
            .members
            .get(id)
            .map(|m| {
                m.iter()
                    .filter(|s| Some(s.as_str()) != except)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for t in targets {
            self.push_event(&t, &event);
        }
    }

    /// Sessions sharing an incident with any session of `sub`, except `except`.
    fn audience(&self, sub: &Subject, except: Option<&str>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Some(ss) = self.by_subject.get(sub) {
            for s in ss {
                if let Some(sess) = self.sessions.get(s) {
                    for i in &sess.incidents {
                        if let Some(m) = self.members.get(i) {
                            out.extend(m.iter().filter(|x| Some(x.as_str()) != except).cloned());
                        }
                    }
                }
            }
        }
        out
    }

    /// A presence change of `sub`, to everyone sharing an incident with it except its own
    /// sessions.
    /// Only consoles (see [`is_console`]) receive it: presence of every tablet to every other
    /// tablet would grow with the square of the node's sessions.
    fn presence_event(&mut self, sub: &Subject, event: Event) {
        let mut targets = self.audience(sub, None);
        for own in self.by_subject.get(sub).into_iter().flatten() {
            targets.remove(own);
        }
        targets.retain(|t| {
            self.sessions
                .get(t)
                .is_some_and(|s| is_console(s.claims.role))
        });
        for t in targets {
            self.push_event(&t, &event);
        }
    }

    /// An incident event for the consoles in it (membership churn).
    fn console_event(&mut self, id: &IncidentId, except: Option<&str>, event: Event) {
        let targets: Vec<String> = self
            .members
            .get(id)
            .map(|m| {
                m.iter()
                    .filter(|s| Some(s.as_str()) != except)
                    .filter(|s| {
                        self.sessions
                            .get(*s)
                            .is_some_and(|x| is_console(x.claims.role))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for t in targets {
            self.push_event(&t, &event);
        }
    }

    /// Incidents any session of `sub` is in.
    fn subject_incidents(&self, sub: &Subject) -> BTreeSet<IncidentId> {
        self.by_subject
            .get(sub)
            .into_iter()
            .flatten()
            .filter_map(|s| self.sessions.get(s))
            .flat_map(|s| s.incidents.iter().cloned())
            .collect()
    }

    fn is_online(&self, now: u64, sub: &Subject) -> bool {
        self.by_subject.get(sub).is_some_and(|ss| {
            ss.iter().any(|s| {
                self.sessions.get(s).is_some_and(|x| {
                    x.conn.is_some()
                        || x.detached_at
                            .is_some_and(|d| now < d + self.cfg.presence_linger_ms)
                })
            })
        })
    }

    /// Recomputes presence of `sub`; announces a change to everyone sharing an incident.
    fn refresh_presence(&mut self, now: u64, sub: &Subject) {
        let online = self.is_online(now, sub);
        let Some(u) = self.units.get_mut(sub) else {
            return;
        };
        if u.online == online {
            return;
        }
        u.online = online;
        let role = u.role;
        let last_seen = u.last_seen;
        let incidents: BTreeSet<IncidentId> = self.subject_incidents(sub);
        for i in &incidents {
            self.log(
                now,
                i,
                sub.to_string(),
                if online { "online" } else { "offline" },
                Value::Null,
            );
        }
        self.presence_event(
            sub,
            Event::Presence {
                subject: sub.clone(),
                role,
                online,
                last_seen: UnixMs(last_seen),
            },
        );
    }

    fn end_session(&mut self, now: u64, sid: &str, why: &str) {
        let Some(s) = self.sessions.get(sid) else {
            return;
        };
        let sub = s.claims.sub.clone();
        let incidents: Vec<IncidentId> = s.incidents.iter().cloned().collect();
        // Its drones keep the incidents they were in (for `units`); commands waiting for its
        // acks are dropped.
        for d in self.drones.values_mut().filter(|d| d.bridge == sid) {
            d.incidents = incidents.iter().cloned().collect();
            d.pending = false;
        }
        self.drone_cmds.retain(|_, c| c.bridge != sid);
        // Presence first (while the session still links the subject to its incidents).
        if let Some(s) = self.sessions.get_mut(sid) {
            s.conn = None;
            s.detached_at = Some(0);
        }
        self.refresh_presence_without(now, &sub, sid);
        for i in &incidents {
            self.leave_incident(now, sid, i);
        }
        self.sessions.remove(sid);
        self.detached.remove(sid);
        if let Some(ss) = self.by_subject.get_mut(&sub) {
            ss.remove(sid);
            if ss.is_empty() {
                self.by_subject.remove(&sub);
            }
        }
        if let Some((conn, _)) = self
            .conns
            .iter()
            .find(|(_, c)| c.session.as_deref() == Some(sid))
        {
            let conn = *conn;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session = None;
            }
        }
        let _ = why;
        self.out.push_back(Output::SessionEnded {
            session: sid.to_owned(),
        });
    }

    /// Presence of `sub` as if session `sid` were already gone.
    fn refresh_presence_without(&mut self, now: u64, sub: &Subject, sid: &str) {
        let online = self.by_subject.get(sub).is_some_and(|ss| {
            ss.iter().filter(|s| s.as_str() != sid).any(|s| {
                self.sessions.get(s).is_some_and(|x| {
                    x.conn.is_some()
                        || x.detached_at
                            .is_some_and(|d| now < d + self.cfg.presence_linger_ms)
                })
            })
        });
        let Some(u) = self.units.get_mut(sub) else {
            return;
        };
        if u.online == online {
            return;
        }
        u.online = online;
        let (role, last_seen) = (u.role, u.last_seen);
        let incidents: BTreeSet<IncidentId> = self
            .sessions
            .get(sid)
            .map(|s| s.incidents.clone())
            .unwrap_or_default();
        for i in &incidents {
            self.log(
                now,
                i,
                sub.to_string(),
                if online { "online" } else { "offline" },
                Value::Null,
            );
        }
        self.presence_event(
            sub,
            Event::Presence {
                subject: sub.clone(),
                role,
                online,
                last_seen: UnixMs(last_seen),
            },
        );
    }

    /// Timers: hello deadlines, presence linger, resume grace, token expiry, coalesced positions.
    pub fn handle_timeout(&mut self, now: u64) {
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.session.is_none() && !c.closing && now >= c.opened_at + self.cfg.hello_timeout_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in late {
            self.send_err(
                conn,
                err(
                    None,
                    ErrorCode::BadHello,
                    format!("no hello within {} ms", self.cfg.hello_timeout_ms),
                ),
            );
        }
        let detached: Vec<String> = self.detached.iter().cloned().collect();
        for sid in detached {
            let Some(s) = self.sessions.get(&sid) else {
                self.detached.remove(&sid);
                continue;
            };
            let sub = s.claims.sub.clone();
            let d = s.detached_at.unwrap_or(now);
            if now >= d + self.cfg.resume_grace_ms {
                self.end_session(now, &sid, "resume grace expired");
            } else if now >= d + self.cfg.presence_linger_ms {
                self.refresh_presence(now, &sub);
            }
        }
        // Tokens that expire mid-session end the session.
        let leeway = self.verifier.leeway_secs();
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| now / 1000 > s.claims.exp + leeway)
            .map(|(id, _)| id.clone())
            .collect();
        self.end_sessions(now, expired, ErrorCode::Unauthorized, "token has expired");
        // Coalesced positions whose interval has passed.
        let due: Vec<Subject> = self
            .units
            .iter()
            .filter(|(_, u)| {
                u.pending.is_some()
                    && u.last_fanout
                        .is_none_or(|t| now >= t + self.cfg.position_interval_ms)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for sub in due {
            self.fan_out_position(now, &sub);
        }
        let interval = self.telemetry_interval();
        let due: Vec<Subject> = self
            .drones
            .iter()
            .filter(|(_, d)| d.pending && d.last_fanout.is_none_or(|t| now >= t + interval))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.fan_out_telemetry(now, &name);
        }
        let ttl = self.cfg.drone_command_ttl_ms;
        self.drone_cmds.retain(|_, c| now < c.sent_at + ttl);
    }

    /// When the next coalesced fan-out (a position or a drone's telemetry) is due (Unix ms): the
    /// shell wakes exactly then instead of on its next regular tick.
    pub fn next_fanout_due(&self) -> Option<u64> {
        let interval = self.telemetry_interval();
        let telemetry = self
            .drones
            .values()
            .filter(|d| d.pending)
            .map(|d| d.last_fanout.map_or(0, |t| t + interval))
            .min();
        match (self.next_position_due(), telemetry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn telemetry_interval(&self) -> u64 {
        1000 / u64::from(self.cfg.telemetry_hz.max(1))
    }

    /// When the next coalesced position is due (Unix ms), so the shell can wake exactly then
    /// instead of on its next regular tick.
    pub fn next_position_due(&self) -> Option<u64> {
        self.units
            .values()
            .filter(|u| u.pending.is_some())
            .map(|u| {
                u.last_fanout
                    .map_or(0, |t| t + self.cfg.position_interval_ms)
            })
            .min()
    }

    fn fan_out_position(&mut self, now: u64, sub: &Subject) {
        let Some(u) = self.units.get_mut(sub) else {
            return;
        };
        let Some(pos) = u.pending.take() else { return };
        u.last_fanout = Some(now);
        u.position = Some(pos.clone());
        let ev = Event::Position {
            subject: sub.clone(),
            role: u.role,
            pos,
        };
        let senders: Vec<String> = self
            .by_subject
            .get(sub)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut targets = self.audience(sub, None);
        for s in &senders {
            targets.remove(s);
        }
        for t in targets {
            self.push_event(&t, &ev);
        }
    }

    /// Whether session `sid` counts as live: attached, or detached for less than the presence
    /// linger.
    fn session_live(&self, now: u64, sid: &str) -> bool {
        self.sessions.get(sid).is_some_and(|x| {
            x.conn.is_some()
                || x.detached_at
                    .is_some_and(|d| now < d + self.cfg.presence_linger_ms)
        })
    }

    /// A drone's incidents: its bridge session's, or as they were when that session ended.
    fn drone_incidents(&self, d: &Drone) -> BTreeSet<IncidentId> {
        self.sessions
            .get(&d.bridge)
            .map_or_else(|| d.incidents.clone(), |s| s.incidents.clone())
    }

    /// `event` to the consoles in a drone's incidents, except its bridge session.
    fn drone_console_event(&mut self, name: &Subject, event: &Event) {
        let Some(d) = self.drones.get(name) else {
            return;
        };
        let bridge = d.bridge.clone();
        let mut targets: BTreeSet<String> = BTreeSet::new();
        for i in self.drone_incidents(d) {
            targets.extend(
                self.members
                    .get(&i)
                    .into_iter()
                    .flatten()
                    .filter(|s| **s != bridge)
                    .filter(|s| {
                        self.sessions
                            .get(*s)
                            .is_some_and(|x| is_console(x.claims.role))
                    })
                    .cloned(),
            );
        }
        for t in targets {
            self.push_event(&t, event);
        }
    }

    /// Appends a log entry to each of `incidents`.
    fn log_all(
        &mut self,
        now: u64,
        incidents: &BTreeSet<IncidentId>,
        who: &Subject,
        what: &str,
        detail: &Value,
    ) {
        for i in incidents {
            self.log(now, i, who.to_string(), what, detail.clone());
        }
    }

    fn fan_out_telemetry(&mut self, now: u64, name: &Subject) {
        let Some(d) = self.drones.get_mut(name) else {
            return;
        };
        d.pending = false;
        d.last_fanout = Some(now);
        let Some(t) = d.telemetry.clone() else {
            return;
        };
        let ev = Event::Telemetry {
            drone: name.clone(),
            t: Box::new(t),
        };
        self.drone_console_event(name, &ev);
    }

    /// Checks a bridge's report about drone `drone` (the right, ownership, the name, the
    /// telemetry if any) and records the reporting session as the drone's bridge. Returns the
    /// drone's name and whether it is new.
    fn drone_report(
        &mut self,
        now: u64,
        sid: &str,
        claims: &Claims,
        drone: &str,
        t: Option<&Telemetry>,
    ) -> Result<(Subject, bool), ProtoError> {
        if !claims.may(Action::PublishDrone) {
            return Err(err(
                None,
                ErrorCode::Forbidden,
                format!("role {} may not {}", claims.role, Action::PublishDrone),
            ));
        }
        if claims.role != Role::Admin && !owns_drone(claims, drone) {
            return Err(err(
                None,
                ErrorCode::Forbidden,
                format!("{drone} is not one of your drones"),
            ));
        }
        let name = Subject::parse(drone)
            .map_err(|e| err(None, ErrorCode::BadRequest, format!("drone: {e}")))?;
        if let Some(t) = t {
            t.validate()
                .map_err(|m| err(None, ErrorCode::BadRequest, format!("telemetry: {m}")))?;
        }
        if !self.drones.contains_key(&name) {
            let max = self.cfg.max_drones_per_bridge;
            if self
                .drones
                .values()
                .filter(|d| d.bridge_sub == claims.sub)
                .count()
                >= max
            {
                return Err(err(
                    None,
                    ErrorCode::Conflict,
                    format!(
                        "{} already reports {max} drones, the most a bridge may",
                        claims.sub
                    ),
                ));
            }
        }
        let incidents = self
            .sessions
            .get(sid)
            .map(|s| s.incidents.clone())
            .unwrap_or_default();
        let burst = self.cfg.drone_command_burst;
        let mut new = false;
        let d = self.drones.entry(name.clone()).or_insert_with(|| {
            new = true;
            Drone {
                bridge: sid.to_owned(),
                bridge_sub: claims.sub.clone(),
                bridge_role: claims.role,
                incidents: BTreeSet::new(),
                link_up: true,
                telemetry: None,
                last_seen: now,
                pending: false,
                last_fanout: None,
                cmd_tokens: burst,
                cmd_tokens_at: now,
            }
        });
        d.bridge = sid.to_owned();
        d.bridge_sub = claims.sub.clone();
        d.bridge_role = claims.role;
        d.incidents = incidents;
        d.last_seen = now;
        Ok((name, new))
    }

    /// `drone_command`: see docs/protocol.md. Returns the reply's data.
    #[allow(clippy::too_many_arguments)]
    fn drone_command(
        &mut self,
        now: u64,
        id: RequestId,
        claims: &Claims,
        requester: &str,
        drone: &str,
        command: DroneCommand,
        target: (Option<f64>, Option<f64>, Option<f64>),
    ) -> Result<Value, ProtoError> {
        let known = Subject::parse(drone)
            .ok()
            .filter(|n| self.drones.contains_key(n));
        let refusal = if !claims.may(Action::CommandDrone) {
            Some(format!(
                "role {} may not {}",
                claims.role,
                Action::CommandDrone
            ))
        } else if claims.role == Role::Pilot && !owns_drone(claims, drone) {
            Some(format!("{drone} is not one of your drones"))
        } else {
            None
        };
        if let Some(reason) = refusal {
            let incidents = match known.as_ref().and_then(|n| self.drones.get(n)) {
                Some(d) => self.drone_incidents(d),
                None => self
                    .sessions
                    .get(requester)
                    .map(|s| s.incidents.clone())
                    .unwrap_or_default(),
            };
            let detail =
                json!({"drone": drone, "command": command, "by": claims.sub, "reason": reason});
            self.log_all(
                now,
                &incidents,
                &claims.sub,
                "drone_command_refused",
                &detail,
            );
            return Err(err(Some(id), ErrorCode::Forbidden, reason));
        }
        let (lat, lon, alt) = target;
        if command == DroneCommand::Guided {
            let (Some(lat), Some(lon), Some(alt)) = (lat, lon, alt) else {
                return Err(err(
                    Some(id),
                    ErrorCode::BadRequest,
                    "guided needs lat, lon and alt",
                ));
            };
            let target = Position {
                lat,
                lon,
                alt: Some(alt),
                accuracy: None,
                heading: None,
                speed: None,
                time: None,
            };
            target
                .validate()
                .map_err(|m| err(Some(id), ErrorCode::BadRequest, m))?;
            if !alt.is_finite() {
                return Err(err(
                    Some(id),
                    ErrorCode::BadRequest,
                    "alt must be a finite number",
                ));
            }
        }
        let not_connected = || {
            err(
                Some(id),
                ErrorCode::NotFound,
                format!("drone {drone} is not connected to this node"),
            )
        };
        let name = known.ok_or_else(not_connected)?;
        let (bridge, incidents) = match self.drones.get(&name) {
            Some(d) if self.session_live(now, &d.bridge) => {
                (d.bridge.clone(), self.drone_incidents(d))
            }
            _ => return Err(not_connected()),
        };
        let (rate, burst) = (self.cfg.drone_command_per_sec, self.cfg.drone_command_burst);
        let d = self.drones.get_mut(&name).ok_or_else(not_connected)?;
        let elapsed = now.saturating_sub(d.cmd_tokens_at) as f64 / 1000.0;
        d.cmd_tokens = (d.cmd_tokens + elapsed * rate).min(burst);
        d.cmd_tokens_at = now;
        if d.cmd_tokens < 1.0 {
            return Err(err(
                Some(id),
                ErrorCode::RateLimited,
                format!("drone {drone} takes at most {rate} commands per second (burst {burst}); try again shortly"),
            ));
        }
        d.cmd_tokens -= 1.0;
        let cmd = format!("dc-{}", self.next_cmd);
        self.next_cmd += 1;
        let guided = command == DroneCommand::Guided;
        let event = DroneCommandEvent {
            cmd: cmd.clone(),
            drone: name.clone(),
            command: CommandName::Known(command),
            by: claims.sub.clone(),
            lat: lat.filter(|_| guided),
            lon: lon.filter(|_| guided),
            alt: alt.filter(|_| guided),
        };
        let detail = serde_json::to_value(&event).unwrap_or(Value::Null);
        self.log_all(now, &incidents, &claims.sub, "drone_command", &detail);
        self.push_event_on(&bridge, &Event::DroneCommand(event), true);
        self.drone_cmds.insert(
            cmd.clone(),
            DroneCmd {
                drone: name,
                bridge,
                requester: requester.to_owned(),
                sent_at: now,
            },
        );
        Ok(json!({"cmd": cmd, "status": "sent"}))
    }

    fn request(
        &mut self,
        now: u64,
        conn: ConnId,
        sid: &str,
        msg: ClientMsg,
    ) -> Result<(), ProtoError> {
        // A connection only names a live session (ending one clears it), but never trust that
        // with a panic on the request path.
        let Some(session) = self.sessions.get(sid) else {
            return Err(err(
                msg.id(),
                ErrorCode::SessionClosed,
                "this session has ended",
            ));
        };
        let claims = session.claims.clone();
        let need = |action: Action, re: RequestId| -> Result<(), ProtoError> {
            if claims.may(action) {
                Ok(())
            } else {
                Err(forbidden(re, &claims, action))
            }
        };
        match msg {
            ClientMsg::Hello { .. } => {
                return Err(err(
                    None,
                    ErrorCode::BadHello,
                    "hello was already received on this connection",
                ));
            }
            ClientMsg::Ping { id } => self.reply(conn, id, json!({"time": now})),
            ClientMsg::Ack { after } => {
                if let Some(s) = self.sessions.get_mut(sid) {
                    while s.events.front().is_some_and(|(q, _)| *q <= after) {
                        s.events.pop_front();
                    }
                }
            }
            ClientMsg::Bye => {
                self.close_conn(conn, ErrorCode::SessionClosed, "bye");
                self.end_session(now, sid, "bye");
            }
            ClientMsg::Position { id, mut pos } => {
                if !claims.may(Action::ReportPosition) {
                    return Err(err(
                        id,
                        ErrorCode::Forbidden,
                        format!("role {} may not {}", claims.role, Action::ReportPosition),
                    ));
                }
                pos.validate()
                    .map_err(|m| err(id, ErrorCode::BadRequest, m))?;
                if pos.time.is_none() {
                    pos.time = Some(UnixMs(now));
                }
                let interval = self.cfg.position_interval_ms;
                if let Some(u) = self.units.get_mut(&claims.sub) {
                    u.position = Some(pos.clone());
                    u.pending = Some(pos);
                    let due = u.last_fanout.is_none_or(|t| now >= t + interval);
                    if due {
                        self.fan_out_position(now, &claims.sub);
                    }
                }
                if let Some(id) = id {
                    self.reply(conn, id, Value::Null);
                }
            }
            ClientMsg::Incidents { id } => {
                need(Action::ReadIncident, id)?;
                let list = self.incidents_for(&claims);
                self.reply(conn, id, json!({"incidents": list}));
            }
            ClientMsg::IncidentCreate { id, incident, name } => {
                need(Action::ManageIncident, id)?;
                let name = name.trim().to_owned();
                if name.is_empty() || name.chars().count() > 200 {
                    return Err(err(
                        Some(id),
                        ErrorCode::BadRequest,
                        "name must be 1..=200 characters",
                    ));
                }
                let iid = match incident {
                    Some(i) => {
                        if self.incidents.contains_key(&i) {
                            return Err(err(
                                Some(id),
                                ErrorCode::Conflict,
                                format!("incident {i} exists"),
                            ));
                        }
                        i
                    }
                    None => loop {
                        let cand = IncidentId::parse(&format!("inc-{}", self.next_incident))
                            .expect("generated ids are valid");
                        self.next_incident += 1;
                        if !self.incidents.contains_key(&cand) {
                            break cand;
                        }
                    },
                };
                self.incidents.insert(
                    iid.clone(),
                    Incident {
                        name: name.clone(),
                        open: true,
                        created_by: claims.sub.to_string(),
                        created_at: now,
                        closed_at: None,
                        assigned: BTreeSet::new(),
                    },
                );
                self.persist_incident(&iid);
                self.log(
                    now,
                    &iid,
                    claims.sub.to_string(),
                    "created",
                    json!({"name": name}),
                );
                self.join_incident(now, sid, &iid);
                let view = self.incident_view(&iid);
                self.reply(conn, id, json!({"incident": view}));
            }
            ClientMsg::IncidentClose { id, incident } => {
                need(Action::ManageIncident, id)?;
                if incident.as_str() == DUTY {
                    return Err(err(
                        Some(id),
                        ErrorCode::Conflict,
                        "the standing duty incident cannot be closed",
                    ));
                }
                let inc = self.incidents.get_mut(&incident).ok_or_else(|| {
                    err(
                        Some(id),
                        ErrorCode::NotFound,
                        format!("no incident {incident}"),
                    )
                })?;
                if !inc.open {
                    return Err(err(
                        Some(id),
                        ErrorCode::Conflict,
                        format!("incident {incident} is already closed"),
                    ));
                }
                inc.open = false;
                inc.closed_at = Some(now);
                self.persist_incident(&incident);
                self.log(
                    now,
                    &incident,
                    claims.sub.to_string(),
                    "closed",
                    Value::Null,
                );
                self.incident_event(
                    now,
                    &incident,
                    None,
                    Event::Incident {
                        incident: incident.clone(),
                        state: IncidentState::Closed,
                        by: claims.sub.clone(),
                    },
                );
                let members: Vec<String> = self
                    .members
                    .get(&incident)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                for m in members {
                    self.leave_incident(now, &m, &incident);
                }
                self.reply(conn, id, Value::Null);
            }
            ClientMsg::Join { id, incident } => {
                let inc = self.incidents.get(&incident).ok_or_else(|| {
                    err(
                        Some(id),
                        ErrorCode::NotFound,
                        format!("no incident {incident}"),
                    )
                })?;
                if !self.may_access(&claims, &incident) {
                    return Err(err(
                        Some(id),
                        ErrorCode::Forbidden,
                        format!("not a member of incident {incident}"),
                    ));
                }
                if !inc.open {
                    return Err(err(
                        Some(id),
                        ErrorCode::Conflict,
                        format!("incident {incident} is closed"),
                    ));
                }
                self.join_incident(now, sid, &incident);
                self.reply(conn, id, json!({"incidents": self.sessions[sid].incidents}));
            }
            ClientMsg::Leave { id, incident } => {
                if !self.leave_incident(now, sid, &incident) {
                    return Err(err(
                        Some(id),
                        ErrorCode::NotFound,
                        format!("not in incident {incident}"),
                    ));
                }
                self.reply(conn, id, json!({"incidents": self.sessions[sid].incidents}));
            }
            ClientMsg::Assign {
                id,
                incident,
                subject,
            } => {
                need(Action::ManageIncident, id)?;
                let inc = self.incidents.get_mut(&incident).ok_or_else(|| {
                    err(
                        Some(id),
                        ErrorCode::NotFound,
                        format!("no incident {incident}"),
                    )
                })?;
                if !inc.open {
                    return Err(err(
                        Some(id),
                        ErrorCode::Conflict,
                        format!("incident {incident} is closed"),
                    ));
                }
                if inc.assigned.insert(subject.clone()) {
                    if self
                        .store
                        .set_assigned(incident.as_str(), subject.as_str(), true)
                        .is_err()
                    {
                        self.store_errors += 1;
                    }
                    self.log(
                        now,
                        &incident,
                        claims.sub.to_string(),
                        "assigned",
                        json!({"subject": subject}),
                    );
                    self.incident_event(
                        now,
                        &incident,
                        None,
                        Event::Member(Member::Assigned {
                            incident: incident.clone(),
                            subject: subject.clone(),
                            by: claims.sub.clone(),
                        }),
                    );
                    let theirs: Vec<String> = self
                        .by_subject
                        .get(&subject)
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect();
                    for s in theirs {
                        self.join_incident(now, &s, &incident);
                        self.push_event(
                            &s,
                            &Event::Assigned {
                                incident: incident.clone(),
                                by: claims.sub.clone(),
                            },
                        );
                    }
                }
                self.reply(conn, id, Value::Null);
            }
            ClientMsg::Unassign {
                id,
                incident,
                subject,
            } => {
                need(Action::ManageIncident, id)?;
                let inc = self.incidents.get_mut(&incident).ok_or_else(|| {
                    err(
                        Some(id),
                        ErrorCode::NotFound,
                        format!("no incident {incident}"),
                    )
                })?;
                if !inc.assigned.remove(&subject) {
                    return Err(err(
                        Some(id),
                        ErrorCode::NotFound,
                        format!("{subject} is not assigned to {incident}"),
                    ));
                }
                if self
                    .store
                    .set_assigned(incident.as_str(), subject.as_str(), false)
                    .is_err()
                {
                    self.store_errors += 1;
                }
                self.log(
                    now,
                    &incident,
                    claims.sub.to_string(),
                    "unassigned",
                    json!({"subject": subject}),
                );
                self.incident_event(
                    now,
                    &incident,
                    None,
                    Event::Member(Member::Unassigned {
                        incident: incident.clone(),
                        subject: subject.clone(),
                        by: claims.sub.clone(),
                    }),
                );
                let theirs: Vec<String> = self
                    .by_subject
                    .get(&subject)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                for s in &theirs {
                    self.push_event(
                        s,
                        &Event::Unassigned {
                            incident: incident.clone(),
                            by: claims.sub.clone(),
                        },
                    );
                }
                for s in theirs {
                    let keep = self.sessions.get(&s).is_some_and(|x| {
                        x.claims.incidents.contains(&incident)
                            || matches!(x.claims.role, Role::Admin | Role::Commander)
                    });
                    if !keep {
                        self.leave_incident(now, &s, &incident);
                    }
                }
                self.reply(conn, id, Value::Null);
            }
            ClientMsg::Log {
                id,
                incident,
                after,
                limit,
            } => {
                need(Action::ReadIncident, id)?;
                self.readable(id, &claims, &incident)?;
                let max = limit
                    .unwrap_or(self.cfg.log_page_max)
                    .min(self.cfg.log_page_max) as usize;
                let (entries, last) = self
                    .store
                    .log_after(incident.as_str(), after, max)
                    .map_err(|e| store_err(Some(id), e))?;
                let data = json!({"incident": incident, "entries": entries, "last": last});
                self.reply(conn, id, data);
            }
            ClientMsg::Units { id, incident } => {
                need(Action::ReadIncident, id)?;
                if let Some(i) = &incident {
                    self.readable(id, &claims, i)?;
                }
                let units = self.units_for(now, &claims, incident.as_ref());
                self.reply(conn, id, json!({"units": units}));
            }
            ClientMsg::Catalog { id, incident } => {
                need(Action::ReadIncident, id)?;
                if let Some(i) = &incident {
                    self.readable(id, &claims, i)?;
                }
                let all =
                    incident.is_none() && matches!(claims.role, Role::Admin | Role::Commander);
                let owners = self.owners_for(&claims, incident.as_ref());
                self.out.push_back(Output::Media {
                    conn,
                    session: sid.to_owned(),
                    re: id,
                    op: MediaOp::Catalog { owners, all },
                });
            }
            ClientMsg::Publish {
                id,
                stream,
                kind,
                sdp,
            } => {
                need(Action::PublishOwn, id)?;
                let stream = match stream {
                    Some(s) => s,
                    None => StreamName::parse(claims.sub.as_str())
                        .map_err(|e| err(Some(id), ErrorCode::BadRequest, e.to_string()))?,
                };
                if kind == StreamKind::Drone {
                    need(Action::PublishDrone, id)?;
                    if claims.role != Role::Admin && !owns_drone(&claims, stream.as_str()) {
                        return Err(err(
                            Some(id),
                            ErrorCode::Forbidden,
                            format!("{stream} is not one of your drones"),
                        ));
                    }
                }
                claims
                    .may_publish(&stream)
                    .map_err(|e| err(Some(id), ErrorCode::Forbidden, e.to_string()))?;
                self.out.push_back(Output::Media {
                    conn,
                    session: sid.to_owned(),
                    re: id,
                    op: MediaOp::Publish {
                        stream,
                        owner: claims.sub.clone(),
                        kind,
                        sdp,
                    },
                });
            }
            ClientMsg::Subscribe {
                id,
                stream,
                layer,
                max_height,
                sdp,
            } => {
                need(Action::ViewStream, id)?;
                self.out.push_back(Output::Media {
                    conn,
                    session: sid.to_owned(),
                    re: id,
                    op: MediaOp::Subscribe {
                        stream,
                        layer,
                        max_height,
                        sdp,
                    },
                });
            }
            ClientMsg::MediaClose { id, media } => {
                self.out.push_back(Output::Media {
                    conn,
                    session: sid.to_owned(),
                    re: id,
                    op: MediaOp::Close { media },
                });
            }
            ClientMsg::Chat {
                id,
                msg_id,
                incident,
                to,
                text,
            } => {
                need(Action::Chat, id)?;
                if text.trim().is_empty() || text.chars().count() > 4000 {
                    return Err(err(
                        Some(id),
                        ErrorCode::BadRequest,
                        "text must be 1..=4000 characters",
                    ));
                }
                let msg_id = self.msg_id(id, msg_id)?;
                let recipients = match (&incident, &to) {
                    (Some(i), None) => {
                        if !self.sessions[sid].incidents.contains(i) {
                            return Err(err(
                                Some(id),
                                ErrorCode::Forbidden,
                                format!("join incident {i} to chat in it"),
                            ));
                        }
                        self.incident_recipients(std::slice::from_ref(i), &claims.sub)
                    }
                    (None, Some(t)) if *t != claims.sub => vec![t.clone()],
                    (None, Some(_)) => {
                        return Err(err(
                            Some(id),
                            ErrorCode::BadRequest,
                            "a direct message needs another subject",
                        ))
                    }
                    _ => {
                        return Err(err(
                            Some(id),
                            ErrorCode::BadRequest,
                            "give exactly one of incident and to",
                        ))
                    }
                };
                let sub = claims.sub.clone();
                let stored = self
                    .store
                    .put(
                        NewItem {
                            sender: &sub,
                            client_id: &msg_id,
                            kind: "chat",
                            incident: incident.as_ref().map(IncidentId::as_str),
                            recipients: &recipients,
                            now: UnixMs(now),
                            order: None,
                        },
                        &mut |item| MailItem::Chat {
                            id: item as u64,
                            msg_id: msg_id.clone(),
                            from: sub.clone(),
                            incident: incident.clone(),
                            to: to.clone(),
                            text: text.clone(),
                            time: UnixMs(now),
                        },
                    )
                    .map_err(|e| store_err(Some(id), e))?;
                if stored.new {
                    if let Some(i) = &incident {
                        self.log(
                            now,
                            i,
                            claims.sub.to_string(),
                            "chat",
                            json!({"item": stored.item_id, "text": text}),
                        );
                    }
                    self.deliver_mail(&stored.mails, false);
                }
                self.reply(
                    conn,
                    id,
                    json!({"item": stored.item_id, "time": stored.item.time()}),
                );
            }
            ClientMsg::Sos {
                id,
                msg_id,
                incident,
                text,
            } => {
                need(Action::RaiseSos, id)?;
                let targets: Vec<IncidentId> = match incident {
                    Some(i) => {
                        if !self.sessions[sid].incidents.contains(&i) {
                            return Err(err(
                                Some(id),
                                ErrorCode::Forbidden,
                                format!("not in incident {i}"),
                            ));
                        }
                        vec![i]
                    }
                    None => self.sessions[sid].incidents.iter().cloned().collect(),
                };
                if targets.is_empty() {
                    return Err(err(
                        Some(id),
                        ErrorCode::NotFound,
                        "not in any incident: join one to raise SOS",
                    ));
                }
                let msg_id = self.msg_id(id, msg_id)?;
                let mut recipients = self.incident_recipients(&targets, &claims.sub);
                // Every commander and admin on the node hears it too.
                for (sub, u) in &self.units {
                    if matches!(u.role, Role::Admin | Role::Commander)
                        && *sub != claims.sub
                        && !recipients.contains(sub)
                    {
                        recipients.push(sub.clone());
                    }
                }
                let position = self.units.get(&claims.sub).and_then(|u| u.position.clone());
                let (sub, role) = (claims.sub.clone(), claims.role);
                let stored = self
                    .store
                    .put(
                        NewItem {
                            sender: &sub,
                            client_id: &msg_id,
                            kind: "sos",
                            incident: targets.first().map(IncidentId::as_str),
                            recipients: &recipients,
                            now: UnixMs(now),
                            order: None,
                        },
                        &mut |item| MailItem::Sos {
                            sos: format!("sos-{item}"),
                            from: sub.clone(),
                            role,
                            incidents: targets.clone(),
                            text: text.clone(),
                            position: position.clone(),
                            time: UnixMs(now),
                        },
                    )
                    .map_err(|e| store_err(Some(id), e))?;
                let sos = format!("sos-{}", stored.item_id);
                if stored.new {
                    for i in &targets {
                        self.log(
                            now,
                            i,
                            claims.sub.to_string(),
                            "sos",
                            json!({"sos": sos, "text": text, "position": position}),
                        );
                    }
                    self.open_sos.insert(
                        sos.clone(),
                        OpenSos {
                            from: claims.sub.clone(),
                            recipients: recipients.clone(),
                            incidents: targets.clone(),
                        },
                    );
                    self.deliver_mail(&stored.mails, true);
                }
                self.reply(
                    conn,
                    id,
                    json!({"sos": sos, "incidents": targets, "recipients": recipients.len()}),
                );
            }
            ClientMsg::SosAck { id, sos } => {
                need(Action::SendOrder, id)?;
                let Some(open) = self.open_sos.remove(&sos) else {
                    return Err(err(
                        Some(id),
                        ErrorCode::NotFound,
                        format!("no raised SOS {sos}"),
                    ));
                };
                let mut recipients: Vec<Subject> = open
                    .recipients
                    .iter()
                    .filter(|r| **r != claims.sub)
                    .cloned()
                    .collect();
                if open.from != claims.sub && !recipients.contains(&open.from) {
                    recipients.push(open.from.clone());
                }
                let sub = claims.sub.clone();
                let stored = self
                    .store
                    .put(
                        NewItem {
                            sender: &sub,
                            client_id: &format!("{sos}:ack"),
                            kind: "sos_ack",
                            incident: open.incidents.first().map(IncidentId::as_str),
                            recipients: &recipients,
                            now: UnixMs(now),
                            order: None,
                        },
                        &mut |_| MailItem::SosAck {
                            sos: sos.clone(),
                            by: sub.clone(),
                            time: UnixMs(now),
                        },
                    )
                    .map_err(|e| store_err(Some(id), e))?;
                for i in &open.incidents {
                    self.log(
                        now,
                        i,
                        claims.sub.to_string(),
                        "sos_ack",
                        json!({"sos": sos}),
                    );
                }
                self.deliver_mail(&stored.mails, true);
                self.reply(conn, id, json!({"sos": sos}));
            }
            ClientMsg::Order {
                id,
                msg_id,
                incident,
                to,
                text,
            } => {
                let data =
                    self.send_order(now, &claims, Some(id), msg_id, &incident, &to, &text)?;
                self.reply(conn, id, data);
            }
            ClientMsg::OrderAnswer {
                id,
                msg_id,
                order,
                answer,
                eta_min,
                reason,
            } => {
                let _ = msg_id; // answers are idempotent by (order, state) already
                let data =
                    self.answer_order(now, &claims, Some(id), &order, answer, eta_min, reason)?;
                self.reply(conn, id, data);
            }
            ClientMsg::Read { id, item } => {
                need(Action::Chat, id)?;
                let item_id = i64::try_from(item)
                    .map_err(|_| err(Some(id), ErrorCode::NotFound, "no such item"))?;
                let found = self
                    .store
                    .item_in_mailbox(&claims.sub, item_id)
                    .map_err(|e| store_err(Some(id), e))?;
                let Some((sender, kind)) = found.filter(|(_, k)| k == "chat") else {
                    return Err(err(
                        Some(id),
                        ErrorCode::NotFound,
                        format!("no chat item {item} in your mailbox"),
                    ));
                };
                let sender = Subject::parse(&sender)
                    .map_err(|e| err(Some(id), ErrorCode::Unavailable, e.to_string()))?;
                let _ = kind;
                let sub = claims.sub.clone();
                let stored = self
                    .store
                    .put(
                        NewItem {
                            sender: &sub,
                            client_id: &format!("read:{item}"),
                            kind: "read",
                            incident: None,
                            recipients: &[sender],
                            now: UnixMs(now),
                            order: None,
                        },
                        &mut |_| MailItem::Read {
                            item,
                            by: sub.clone(),
                            time: UnixMs(now),
                        },
                    )
                    .map_err(|e| store_err(Some(id), e))?;
                self.deliver_mail(&stored.mails, false);
                self.reply(conn, id, Value::Null);
            }
            ClientMsg::MailSync { id, after } => {
                let sub = claims.sub.clone();
                let after = match after {
                    Some(a) => a,
                    None => self.store.acked(&sub).map_err(|e| store_err(Some(id), e))?,
                };
                let mails = self
                    .store
                    .mail_after(&sub, after, MAIL_SYNC_BATCH)
                    .map_err(|e| store_err(Some(id), e))?;
                let last = self
                    .store
                    .last_seq(&sub)
                    .map_err(|e| store_err(Some(id), e))?;
                let sent_upto = mails.last().map_or(after, |m| m.seq);
                for m in mails {
                    self.send(
                        conn,
                        ServerMsg::Mail {
                            seq: m.seq,
                            item: m.item,
                        },
                    );
                }
                let more = sent_upto < last;
                if let Some(c) = self.conns.get_mut(&conn) {
                    // Live mail only once this connection has caught up, so it never overtakes.
                    c.mail_ready = !more;
                }
                self.reply(
                    conn,
                    id,
                    json!({"last": last, "sent_upto": sent_upto, "more": more}),
                );
            }
            ClientMsg::MailAck { upto } => {
                let delivered = self
                    .store
                    .ack(&claims.sub, upto, UnixMs(now))
                    .map_err(|e| store_err(None, e))?;
                for (order, _sender) in delivered {
                    self.order_state_mail(now, &order, &claims.sub)
                        .map_err(|e| store_err(None, e))?;
                }
            }
            ClientMsg::DroneCommand {
                id,
                drone,
                command,
                lat,
                lon,
                alt,
            } => {
                let data =
                    self.drone_command(now, id, &claims, sid, &drone, command, (lat, lon, alt))?;
                self.reply(conn, id, data);
            }
            ClientMsg::Telemetry { drone, t } => {
                let (name, _) = self.drone_report(now, sid, &claims, &drone, Some(&t))?;
                let interval = self.telemetry_interval();
                if let Some(d) = self.drones.get_mut(&name) {
                    d.telemetry.get_or_insert_with(Telemetry::default).merge(&t);
                    d.pending = true;
                    if d.last_fanout.is_none_or(|f| now >= f + interval) {
                        self.fan_out_telemetry(now, &name);
                    }
                }
            }
            ClientMsg::DroneLink { drone, up } => {
                let (name, new) = self.drone_report(now, sid, &claims, &drone, None)?;
                let Some(d) = self.drones.get_mut(&name) else {
                    return Ok(());
                };
                if new || d.link_up != up {
                    d.link_up = up;
                    let incidents = self.drone_incidents(&self.drones[&name]);
                    self.log_all(
                        now,
                        &incidents,
                        &claims.sub,
                        "drone_link",
                        &json!({"drone": name, "up": up}),
                    );
                    self.drone_console_event(
                        &name,
                        &Event::DroneLink {
                            drone: name.clone(),
                            up,
                        },
                    );
                }
            }
            ClientMsg::DroneCommandAck { cmd, result, text } => {
                if !claims.may(Action::PublishDrone) {
                    return Err(err(
                        None,
                        ErrorCode::Forbidden,
                        format!("role {} may not {}", claims.role, Action::PublishDrone),
                    ));
                }
                if text.as_ref().is_some_and(|t| t.chars().count() > 1000) {
                    return Err(err(
                        None,
                        ErrorCode::BadRequest,
                        "text must be at most 1000 characters",
                    ));
                }
                let Some(c) = self.drone_cmds.get(&cmd).filter(|c| c.bridge == sid) else {
                    let shown: String = cmd.chars().take(40).collect();
                    return Err(err(
                        None,
                        ErrorCode::NotFound,
                        format!("no pending drone command {shown:?} from this session"),
                    ));
                };
                let (drone, requester) = (c.drone.clone(), c.requester.clone());
                if result.is_final() {
                    self.drone_cmds.remove(&cmd);
                }
                let ack = DroneCommandAckEvent {
                    cmd,
                    drone: drone.clone(),
                    result,
                    text,
                };
                let detail = serde_json::to_value(&ack).unwrap_or(Value::Null);
                let incidents = self
                    .drones
                    .get(&drone)
                    .map(|d| self.drone_incidents(d))
                    .unwrap_or_default();
                self.log_all(now, &incidents, &claims.sub, "drone_command_ack", &detail);
                self.push_event(&requester, &Event::DroneCommandAck(ack));
            }
            ClientMsg::Revoke { id, sub, jti } => {
                need(Action::Revoke, id)?;
                let r = match (sub, jti) {
                    (Some(sub), None) => Revocation::Subject {
                        sub,
                        at: now / 1000,
                    },
                    (None, Some(jti)) if !jti.is_empty() && jti.len() <= 128 => {
                        Revocation::Token { jti }
                    }
                    _ => {
                        return Err(err(
                            Some(id),
                            ErrorCode::BadRequest,
                            "give exactly one of sub or jti",
                        ))
                    }
                };
                // Reply first: the admin may be revoking its own token.
                self.reply(conn, id, json!({"revoked": r}));
                for i in self.sessions[sid].incidents.clone() {
                    self.log(now, &i, claims.sub.to_string(), "revoked", json!(r));
                }
                self.out.push_back(Output::Revoked(r.clone()));
                self.apply_revocation(now, &r);
            }
        }
        Ok(())
    }

    /// The sender's `msg_id`, or a fresh one (then a retry would be stored twice).
    fn msg_id(&self, re: RequestId, msg_id: Option<String>) -> Result<String, ProtoError> {
        match msg_id {
            Some(m) if valid_msg_id(&m) => Ok(m),
            Some(_) => Err(err(
                Some(re),
                ErrorCode::BadRequest,
                "msg_id must be 1..=64 characters of A-Z a-z 0-9 . _ : -",
            )),
            None => Ok(format!("auto-{}", random_id())),
        }
    }

    /// Who receives an incident message: subjects with a session in any of `incidents`, and
    /// subjects assigned to them, except `sender` and roles that may not read incidents.
    fn incident_recipients(&self, incidents: &[IncidentId], sender: &Subject) -> Vec<Subject> {
        let mut subs: BTreeSet<Subject> = BTreeSet::new();
        for i in incidents {
            if let Some(inc) = self.incidents.get(i) {
                subs.extend(inc.assigned.iter().cloned());
            }
            for s in self.members.get(i).into_iter().flatten() {
                if let Some(x) = self.sessions.get(s) {
                    subs.insert(x.claims.sub.clone());
                }
            }
        }
        subs.remove(sender);
        subs.into_iter()
            .filter(|s| {
                self.units
                    .get(s)
                    .is_none_or(|u| u.role.may(Action::ReadIncident))
            })
            .collect()
    }

    /// Sends stored mail to every connection of each recipient that has synced its mailbox.
    fn deliver_mail(&mut self, mails: &[(Subject, Mail)], urgent: bool) {
        for (r, m) in mails {
            let conns: Vec<ConnId> = self
                .by_subject
                .get(r)
                .into_iter()
                .flatten()
                .filter_map(|s| self.sessions.get(s).and_then(|x| x.conn))
                .filter(|c| {
                    self.conns
                        .get(c)
                        .is_some_and(|x| x.mail_ready && !x.closing)
                })
                .collect();
            for conn in conns {
                let msg = ServerMsg::Mail {
                    seq: m.seq,
                    item: m.item.clone(),
                };
                self.out.push_back(if urgent {
                    Output::Urgent { conn, msg }
                } else {
                    Output::Send { conn, msg }
                });
            }
        }
    }

    /// Tells an order's sender its current state (stored and forwarded), and logs it.
    fn order_state_mail(&mut self, now: u64, order: &str, by: &Subject) -> Result<(), StoreError> {
        let Some(o) = self.store.order(order)? else {
            return Ok(());
        };
        let Ok(sender) = Subject::parse(&o.from) else {
            return Ok(());
        };
        let state = o.state;
        let stored = self.store.put(
            NewItem {
                sender: by,
                client_id: &format!("{order}:{}", state.as_str()),
                kind: "order_state",
                incident: Some(&o.incident),
                recipients: &[sender],
                now: UnixMs(now),
                order: None,
            },
            &mut |_| MailItem::OrderState {
                order: order.to_owned(),
                state,
                by: by.clone(),
                eta_min: o.eta_min,
                reason: o.reason.clone(),
                time: UnixMs(now),
            },
        )?;
        if stored.new {
            if let Ok(i) = IncidentId::parse(&o.incident) {
                self.log(now, &i, by.to_string(), "order_state", json!({"order": order, "state": state, "eta_min": o.eta_min, "reason": o.reason}));
            }
            self.deliver_mail(&stored.mails, false);
        }
        Ok(())
    }

    /// Sends an order (over signaling, or `POST /api/orders`): checks the right, the incident and
    /// that the addressee ever had a session here (`unknown_recipient` otherwise), stores it once
    /// per `(sender, msg_id)`, forwards it to the addressee's mailbox.
    #[allow(clippy::too_many_arguments)]
    pub fn send_order(
        &mut self,
        now: u64,
        claims: &Claims,
        re: Option<RequestId>,
        msg_id: Option<String>,
        incident: &IncidentId,
        to: &Subject,
        text: &str,
    ) -> Result<Value, ProtoError> {
        if !claims.may(Action::SendOrder) {
            return Err(err(
                re,
                ErrorCode::Forbidden,
                format!("role {} may not {}", claims.role, Action::SendOrder),
            ));
        }
        if text.trim().is_empty() || text.chars().count() > 4000 {
            return Err(err(
                re,
                ErrorCode::BadRequest,
                "text must be 1..=4000 characters",
            ));
        }
        if *to == claims.sub {
            return Err(err(
                re,
                ErrorCode::BadRequest,
                "an order needs another subject",
            ));
        }
        self.readable(re.unwrap_or(0), claims, incident)
            .map_err(|mut e| {
                e.re = re;
                e
            })?;
        if !self.incidents.get(incident).is_some_and(|i| i.open) {
            return Err(err(
                re,
                ErrorCode::Conflict,
                format!("incident {incident} is closed"),
            ));
        }
        let known = self.units.contains_key(to)
            || self.store.knows_subject(to).map_err(|e| store_err(re, e))?;
        if !known {
            return Err(err(
                re,
                ErrorCode::UnknownRecipient,
                format!("{to} has never connected to this node; nobody would read the order"),
            ));
        }
        let msg_id = match re {
            Some(r) => self.msg_id(r, msg_id)?,
            None => match msg_id {
                Some(m) if valid_msg_id(&m) => m,
                Some(_) => {
                    return Err(err(
                        None,
                        ErrorCode::BadRequest,
                        "id must be 1..=64 characters of A-Z a-z 0-9 . _ : -",
                    ))
                }
                None => format!("auto-{}", random_id()),
            },
        };
        let sub = claims.sub.clone();
        let stored = self
            .store
            .put(
                NewItem {
                    sender: &sub,
                    client_id: &msg_id,
                    kind: "order",
                    incident: Some(incident.as_str()),
                    recipients: std::slice::from_ref(to),
                    now: UnixMs(now),
                    order: Some(NewOrder {
                        incident: incident.as_str(),
                        to,
                        text,
                    }),
                },
                &mut |item| MailItem::Order {
                    order: order_id(item),
                    msg_id: msg_id.clone(),
                    from: sub.clone(),
                    to: to.clone(),
                    incident: incident.clone(),
                    text: text.to_owned(),
                    time: UnixMs(now),
                },
            )
            .map_err(|e| store_err(re, e))?;
        let order = order_id(stored.item_id);
        if stored.new {
            self.log(
                now,
                incident,
                claims.sub.to_string(),
                "order",
                json!({"order": order, "to": to, "text": text}),
            );
            self.deliver_mail(&stored.mails, false);
        }
        let o = self.store.order(&order).map_err(|e| store_err(re, e))?;
        Ok(json!({"order": o, "new": stored.new}))
    }

    /// Answers an order (over signaling, or `POST /api/orders/{id}/answer`): only its addressee
    /// may, along the state machine; the same answer twice is a retry, not an error.
    #[allow(clippy::too_many_arguments)]
    pub fn answer_order(
        &mut self,
        now: u64,
        claims: &Claims,
        re: Option<RequestId>,
        order: &str,
        answer: OrderAnswer,
        eta_min: Option<u32>,
        reason: Option<String>,
    ) -> Result<Value, ProtoError> {
        if !claims.may(Action::AnswerOrder) {
            return Err(err(
                re,
                ErrorCode::Forbidden,
                format!("role {} may not {}", claims.role, Action::AnswerOrder),
            ));
        }
        let o = self
            .store
            .order(order)
            .map_err(|e| store_err(re, e))?
            .ok_or_else(|| err(re, ErrorCode::NotFound, format!("no order {order}")))?;
        if o.to != claims.sub.as_str() {
            return Err(err(
                re,
                ErrorCode::Forbidden,
                format!("only {} may answer order {order}", o.to),
            ));
        }
        let target = match answer {
            OrderAnswer::Accept => OrderState::Accepted,
            OrderAnswer::Decline => OrderState::Declined,
            OrderAnswer::Done => OrderState::Done,
        };
        let reason = reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        if target == OrderState::Declined && reason.is_none() {
            return Err(err(re, ErrorCode::BadRequest, "declining needs a reason"));
        }
        if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
            return Err(err(
                re,
                ErrorCode::BadRequest,
                "reason must be at most 1000 characters",
            ));
        }
        if eta_min.is_some_and(|m| m > 7 * 24 * 60) {
            return Err(err(
                re,
                ErrorCode::BadRequest,
                "eta_min must be at most a week",
            ));
        }
        if o.state != target {
            if !o.state.may_become(target) {
                return Err(err(
                    re,
                    ErrorCode::Conflict,
                    format!(
                        "order {order} is {}; it cannot become {}",
                        o.state.as_str(),
                        target.as_str()
                    ),
                ));
            }
            self.store
                .set_order_state(order, target, UnixMs(now), eta_min, reason.as_deref())
                .map_err(|e| store_err(re, e))?;
            self.order_state_mail(now, order, &claims.sub)
                .map_err(|e| store_err(re, e))?;
        }
        let o = self.store.order(order).map_err(|e| store_err(re, e))?;
        Ok(json!({"order": o}))
    }

    /// Orders visible to `claims` (`GET /api/orders`): admin and commander see every order,
    /// others the ones they sent or received. Newest first, at most `limit`.
    pub fn orders_for(&self, claims: &Claims, limit: usize) -> Result<Vec<Order>, ProtoError> {
        let all = matches!(claims.role, Role::Admin | Role::Commander);
        self.store
            .orders(if all { None } else { Some(&claims.sub) }, limit)
            .map_err(|e| store_err(None, e))
    }

    fn readable(&self, re: RequestId, claims: &Claims, id: &IncidentId) -> Result<(), ProtoError> {
        if !self.incidents.contains_key(id) {
            return Err(err(
                Some(re),
                ErrorCode::NotFound,
                format!("no incident {id}"),
            ));
        }
        if !self.may_access(claims, id) {
            return Err(err(
                Some(re),
                ErrorCode::Forbidden,
                format!("not a member of incident {id}"),
            ));
        }
        Ok(())
    }

    fn incident_view(&self, id: &IncidentId) -> Option<IncidentView> {
        let inc = self.incidents.get(id)?;
        let members: BTreeSet<Subject> = self
            .members
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|s| self.sessions.get(s).map(|x| x.claims.sub.clone()))
            .collect();
        Some(IncidentView {
            id: id.clone(),
            name: inc.name.clone(),
            state: if inc.open {
                IncidentState::Open
            } else {
                IncidentState::Closed
            },
            created_by: inc.created_by.clone(),
            created_at: UnixMs(inc.created_at),
            closed_at: inc.closed_at.map(UnixMs),
            assigned: inc.assigned.iter().cloned().collect(),
            members: members.into_iter().collect(),
        })
    }

    /// Incidents `claims` may see (`GET /api/incidents`, `incidents`).
    pub fn incidents_for(&self, claims: &Claims) -> Vec<IncidentView> {
        self.incidents
            .keys()
            .filter(|id| self.may_access(claims, id))
            .filter_map(|id| self.incident_view(id))
            .collect()
    }

    /// The log of an incident `claims` may read (`GET /api/incidents/{id}/log`).
    pub fn log_for(
        &self,
        claims: &Claims,
        id: &IncidentId,
        after: u64,
    ) -> Result<Vec<LogEntry>, ProtoError> {
        if !claims.may(Action::ReadIncident) {
            return Err(err(
                None,
                ErrorCode::Forbidden,
                format!("role {} may not read incidents", claims.role),
            ));
        }
        self.readable(0, claims, id).map_err(|mut e| {
            e.re = None;
            e
        })?;
        let max = self.cfg.log_page_max as usize;
        Ok(self
            .store
            .log_after(id.as_str(), after, max)
            .map_err(|e| store_err(None, e))?
            .0)
    }

    fn visible_subjects(
        &self,
        claims: &Claims,
        incident: Option<&IncidentId>,
    ) -> Option<BTreeSet<Subject>> {
        let incidents: Vec<&IncidentId> = match incident {
            Some(i) => vec![i],
            None => {
                if matches!(claims.role, Role::Admin | Role::Commander) {
                    return None;
                }
                self.incidents
                    .keys()
                    .filter(|i| self.may_access(claims, i))
                    .collect()
            }
        };
        let mut subs = BTreeSet::new();
        for i in incidents {
            if let Some(inc) = self.incidents.get(i) {
                subs.extend(inc.assigned.iter().cloned());
            }
            for s in self.members.get(i).into_iter().flatten() {
                if let Some(x) = self.sessions.get(s) {
                    subs.insert(x.claims.sub.clone());
                }
            }
        }
        Some(subs)
    }

    fn owners_for(
        &self,
        claims: &Claims,
        incident: Option<&IncidentId>,
    ) -> BTreeMap<Subject, Role> {
        let subs = self.visible_subjects(claims, incident);
        self.units
            .iter()
            .filter(|(s, _)| subs.as_ref().is_none_or(|v| v.contains(*s)))
            .map(|(s, u)| (s.clone(), u.role))
            .collect()
    }

    /// Units `claims` may see, optionally within one incident (`GET /api/units`, `units`):
    /// subjects that connected and drones that bridges reported, ordered by subject.
    pub fn units_for(
        &self,
        now: u64,
        claims: &Claims,
        incident: Option<&IncidentId>,
    ) -> Vec<UnitView> {
        let subs = self.visible_subjects(claims, incident);
        let mut out: Vec<UnitView> = self
            .units
            .iter()
            .filter(|(s, _)| subs.as_ref().is_none_or(|v| v.contains(*s)))
            .map(|(s, u)| {
                let incidents = self.subject_incidents(s);
                UnitView {
                    subject: s.clone(),
                    kind: UnitKind::Person,
                    role: u.role,
                    online: self.is_online(now, s),
                    last_seen: UnixMs(u.last_seen),
                    position: u.position.clone(),
                    incidents: incidents.into_iter().collect(),
                    bridge: None,
                    link: None,
                    telemetry: None,
                }
            })
            .collect();
        let visible: Option<BTreeSet<&IncidentId>> = match incident {
            Some(i) => Some(BTreeSet::from([i])),
            None if matches!(claims.role, Role::Admin | Role::Commander) => None,
            None => Some(
                self.incidents
                    .keys()
                    .filter(|i| self.may_access(claims, i))
                    .collect(),
            ),
        };
        for (name, d) in &self.drones {
            let incidents = self.drone_incidents(d);
            if visible
                .as_ref()
                .is_some_and(|v| !incidents.iter().any(|i| v.contains(i)))
            {
                continue;
            }
            out.push(UnitView {
                subject: name.clone(),
                kind: UnitKind::Drone,
                role: d.bridge_role,
                online: d.link_up && self.session_live(now, &d.bridge),
                last_seen: UnixMs(d.last_seen),
                position: d.telemetry.as_ref().and_then(Telemetry::position),
                incidents: incidents.into_iter().collect(),
                bridge: Some(d.bridge_sub.clone()),
                link: Some(if d.link_up {
                    LinkState::Up
                } else {
                    LinkState::Lost
                }),
                telemetry: d.telemetry.clone(),
            });
        }
        out.sort_by(|a, b| a.subject.cmp(&b.subject));
        out
    }

    /// The shell reports a publish that the SFU accepted: it goes into the logs of the
    /// publisher's incidents.
    pub fn note_published(
        &mut self,
        now: u64,
        session: &str,
        stream: &StreamName,
        kind: StreamKind,
    ) {
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let who = s.claims.sub.to_string();
        let incidents: Vec<IncidentId> = s.incidents.iter().cloned().collect();
        for i in &incidents {
            self.log(
                now,
                i,
                who.clone(),
                "publish",
                json!({"stream": stream, "kind": kind}),
            );
        }
    }

    /// Whether `claims` may read incident `id`: `not_found` if there is no such incident,
    /// `forbidden` if it is not accessible (for the HTTP API).
    pub fn check_readable(&self, claims: &Claims, id: &IncidentId) -> Result<(), ProtoError> {
        if !claims.may(Action::ReadIncident) {
            return Err(err(
                None,
                ErrorCode::Forbidden,
                format!("role {} may not read incidents", claims.role),
            ));
        }
        self.readable(0, claims, id).map_err(|mut e| {
            e.re = None;
            e
        })
    }

    /// The subject and role of a session (for the shell's media ownership checks).
    pub fn session_claims(&self, session: &str) -> Option<&Claims> {
        self.sessions.get(session).map(|s| &s.claims)
    }
}

fn store_err(re: Option<RequestId>, e: StoreError) -> ProtoError {
    err(re, ErrorCode::Unavailable, e.to_string())
}

fn e_closes(out: &VecDeque<Output>, conn: ConnId) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Close { conn: c, .. } if *c == conn))
}

#[cfg(test)]
mod tests;
