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
//! - per-connection rate limits; a flood closes the connection.
//!
//! Media requests are authorised here and handed to the shell as [`Output::Media`] (the SFU is
//! the shell's business); revocations are handed out as [`Output::Revoked`] for persistence.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::{Action, Claims, Role, TokenVerifier};
use crate::ids::{IncidentId, NodeId, StreamName, Subject};
use crate::proto::{
    decode_client, ClientMsg, ErrorCode, Position, ProtoError, RequestId, ServerMsg, StreamKind, Welcome, VERSION,
};

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

/// One entry of an incident's append-only log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Unix milliseconds.
    pub time: u64,
    /// Who did it (a subject, or the node id for the node itself).
    pub who: String,
    /// What happened (`created`, `joined`, `chat`, …).
    pub what: String,
    /// Details.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// An incident as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentView {
    /// Its id.
    pub id: IncidentId,
    /// Its name.
    pub name: String,
    /// `open` or `closed`.
    pub state: &'static str,
    /// Who created it (`node` id for `duty`).
    pub created_by: String,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms, when closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<u64>,
    /// Subjects assigned to it.
    pub assigned: Vec<Subject>,
    /// Subjects with a session in it now.
    pub members: Vec<Subject>,
}

/// A unit (anyone who has connected) as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitView {
    /// Token subject.
    pub subject: Subject,
    /// Role.
    pub role: Role,
    /// Online now.
    pub online: bool,
    /// Last message from it, Unix ms.
    pub last_seen: u64,
    /// Last reported position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Incidents its sessions are in.
    pub incidents: Vec<IncidentId>,
}

struct Incident {
    name: String,
    open: bool,
    created_by: String,
    created_at: u64,
    closed_at: Option<u64>,
    assigned: BTreeSet<Subject>,
    log: Vec<LogEntry>,
}

struct Session {
    claims: Claims,
    conn: Option<ConnId>,
    detached_at: Option<u64>,
    incidents: BTreeSet<IncidentId>,
    events: VecDeque<(u64, Value)>,
    last_seq: u64,
}

struct Conn {
    session: Option<String>,
    opened_at: u64,
    tokens: f64,
    tokens_at: u64,
    strikes: u32,
    closing: bool,
}

struct Unit {
    role: Role,
    online: bool,
    last_seen: u64,
    position: Option<Position>,
    pending: Option<Position>,
    last_fanout: Option<u64>,
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
}

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
    err(Some(re), ErrorCode::Forbidden, format!("role {} may not {}", claims.role, action))
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
    pub fn new(cfg: CoreConfig, node: NodeId, verifier: TokenVerifier, now: u64) -> Core {
        let mut incidents = BTreeMap::new();
        incidents.insert(
            duty(),
            Incident {
                name: "Standing duty".into(),
                open: true,
                created_by: node.to_string(),
                created_at: now,
                closed_at: None,
                assigned: BTreeSet::new(),
                log: Vec::new(),
            },
        );
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
            next_incident: 1,
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
            },
        );
    }

    /// The transport of `conn` is gone. Its session stays resumable for the grace period.
    pub fn closed(&mut self, now: u64, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
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
        for sid in victims {
            if let Some(conn) = self.sessions.get(&sid).and_then(|s| s.conn) {
                self.send_err(conn, err(None, ErrorCode::Revoked, "this token has been revoked"));
            }
            self.end_session(now, &sid, "revoked");
        }
    }

    fn is_revoked(&self, c: &Claims) -> bool {
        self.revoked_jti.contains(c.jti.as_str())
            || self.revoked_sub.get(&c.sub).is_some_and(|at| c.iat <= *at)
    }

    /// Verifies a bearer token as the handshake would (signature, audience, expiry, revocation);
    /// used by the HTTP API.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<Claims, ProtoError> {
        let claims = self.verifier.verify(token, now / 1000).map_err(|e| {
            err(None, ErrorCode::Unauthorized, e.to_string())
        })?;
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
        let Some(c) = self.conns.get_mut(&conn) else { return };
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
                    err(re, ErrorCode::RateLimited, "message flood: closing the session"),
                );
                self.close_conn(conn, ErrorCode::RateLimited, "message flood");
            } else {
                self.send_err(
                    conn,
                    err(
                        re,
                        ErrorCode::RateLimited,
                        format!("more than {} messages per second; slow down", self.cfg.rate_per_sec),
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
                    err(None, ErrorCode::BadHello, format!("the first message must be hello ({})", e.message))
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
            self.send_err(conn, err(msg.id(), ErrorCode::BadHello, "the first message must be hello"));
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
            if self.sessions.get(&r.session).is_some_and(|s| s.claims.sub == claims.sub) {
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
                            err(None, ErrorCode::SessionClosed, "session resumed on another connection").to_msg(),
                        );
                        self.close_conn(old, ErrorCode::SessionClosed, "session resumed on another connection");
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
                self.by_subject.entry(claims.sub.clone()).or_default().insert(sid.clone());
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
            time: now,
            subject: claims.sub.clone(),
            role: claims.role,
            incidents: s.incidents.iter().cloned().collect(),
            resumed: was_resumed,
            gap,
            last: s.last_seq,
        };
        let replay: Vec<ServerMsg> = if was_resumed {
            s.events
                .iter()
                .filter(|(q, _)| *q > after)
                .map(|(q, e)| ServerMsg::Event { seq: *q, event: e.clone() })
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
                    log: Vec::new(),
                },
            );
            self.log(now, id, self.node.as_str().to_owned(), "created", json!({"reason": "named in a token"}));
        }
    }

    fn log(&mut self, now: u64, incident: &IncidentId, who: String, what: &str, detail: Value) {
        if let Some(inc) = self.incidents.get_mut(incident) {
            let seq = inc.log.len() as u64 + 1;
            inc.log.push(LogEntry {
                seq,
                time: now,
                who,
                what: what.to_owned(),
                detail,
            });
        }
    }

    /// Whether `claims` may access (join, read) incident `id`.
    fn may_access(&self, claims: &Claims, id: &IncidentId) -> bool {
        if matches!(claims.role, Role::Admin | Role::Commander) {
            return true;
        }
        id.as_str() == DUTY
            || claims.incidents.contains(id)
            || self.incidents.get(id).is_some_and(|i| i.assigned.contains(&claims.sub))
    }

    fn join_incident(&mut self, now: u64, sid: &str, id: &IncidentId) -> bool {
        let Some(s) = self.sessions.get_mut(sid) else { return false };
        if !s.incidents.insert(id.clone()) {
            return false;
        }
        let sub = s.claims.sub.clone();
        let role = s.claims.role;
        let first_of_subject = !self.subject_in(&sub, id, Some(sid));
        self.members.entry(id.clone()).or_default().insert(sid.to_owned());
        if first_of_subject {
            self.log(now, id, sub.to_string(), "joined", json!({"role": role}));
            self.incident_event(now, id, Some(sid), json!({"kind": "member", "incident": id, "subject": sub, "role": role, "op": "joined"}));
        }
        true
    }

    fn leave_incident(&mut self, now: u64, sid: &str, id: &IncidentId) -> bool {
        let Some(s) = self.sessions.get_mut(sid) else { return false };
        if !s.incidents.remove(id) {
            return false;
        }
        let sub = s.claims.sub.clone();
        if let Some(m) = self.members.get_mut(id) {
            m.remove(sid);
        }
        if !self.subject_in(&sub, id, None) {
            self.log(now, id, sub.to_string(), "left", Value::Null);
            self.incident_event(now, id, None, json!({"kind": "member", "incident": id, "subject": sub, "op": "left"}));
        }
        true
    }

    /// Whether another session of `sub` (not `except`) is in incident `id`.
    fn subject_in(&self, sub: &Subject, id: &IncidentId, except: Option<&str>) -> bool {
        self.by_subject.get(sub).is_some_and(|ss| {
            ss.iter()
                .filter(|s| Some(s.as_str()) != except)
                .any(|s| self.sessions.get(s).is_some_and(|x| x.incidents.contains(id)))
        })
    }

    /// Queues `event` to one session (numbered, buffered for replay, sent if attached).
    fn push_event(&mut self, sid: &str, event: &Value) {
        let cap = self.cfg.replay_buffer;
        let Some(s) = self.sessions.get_mut(sid) else { return };
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
            self.out.push_back(Output::Send {
                conn,
                msg: ServerMsg::Event { seq, event: event.clone() },
            });
        }
    }

    fn incident_event(&mut self, _now: u64, id: &IncidentId, except: Option<&str>, event: Value) {
        let targets: Vec<String> = self
            .members
            .get(id)
            .map(|m| m.iter().filter(|s| Some(s.as_str()) != except).cloned().collect())
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
    fn presence_event(&mut self, sub: &Subject, event: Value) {
        let mut targets = self.audience(sub, None);
        for own in self.by_subject.get(sub).into_iter().flatten() {
            targets.remove(own);
        }
        for t in targets {
            self.push_event(&t, &event);
        }
    }

    fn is_online(&self, now: u64, sub: &Subject) -> bool {
        self.by_subject.get(sub).is_some_and(|ss| {
            ss.iter().any(|s| {
                self.sessions.get(s).is_some_and(|x| {
                    x.conn.is_some()
                        || x.detached_at.is_some_and(|d| now < d + self.cfg.presence_linger_ms)
                })
            })
        })
    }

    /// Recomputes presence of `sub`; announces a change to everyone sharing an incident.
    fn refresh_presence(&mut self, now: u64, sub: &Subject) {
        let online = self.is_online(now, sub);
        let Some(u) = self.units.get_mut(sub) else { return };
        if u.online == online {
            return;
        }
        u.online = online;
        let role = u.role;
        let last_seen = u.last_seen;
        let incidents: BTreeSet<IncidentId> = self
            .by_subject
            .get(sub)
            .into_iter()
            .flatten()
            .filter_map(|s| self.sessions.get(s))
            .flat_map(|s| s.incidents.iter().cloned())
            .collect();
        for i in &incidents {
            self.log(now, i, sub.to_string(), if online { "online" } else { "offline" }, Value::Null);
        }
        self.presence_event(sub, json!({"kind": "presence", "subject": sub, "role": role, "online": online, "last_seen": last_seen}));
    }

    fn end_session(&mut self, now: u64, sid: &str, why: &str) {
        let Some(s) = self.sessions.get(sid) else { return };
        let sub = s.claims.sub.clone();
        let incidents: Vec<IncidentId> = s.incidents.iter().cloned().collect();
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
        if let Some((conn, _)) = self.conns.iter().find(|(_, c)| c.session.as_deref() == Some(sid)) {
            let conn = *conn;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session = None;
            }
        }
        let _ = why;
        self.out.push_back(Output::SessionEnded { session: sid.to_owned() });
    }

    /// Presence of `sub` as if session `sid` were already gone.
    fn refresh_presence_without(&mut self, now: u64, sub: &Subject, sid: &str) {
        let online = self.by_subject.get(sub).is_some_and(|ss| {
            ss.iter().filter(|s| s.as_str() != sid).any(|s| {
                self.sessions.get(s).is_some_and(|x| {
                    x.conn.is_some() || x.detached_at.is_some_and(|d| now < d + self.cfg.presence_linger_ms)
                })
            })
        });
        let Some(u) = self.units.get_mut(sub) else { return };
        if u.online == online {
            return;
        }
        u.online = online;
        let (role, last_seen) = (u.role, u.last_seen);
        let incidents: BTreeSet<IncidentId> =
            self.sessions.get(sid).map(|s| s.incidents.clone()).unwrap_or_default();
        for i in &incidents {
            self.log(now, i, sub.to_string(), if online { "online" } else { "offline" }, Value::Null);
        }
        self.presence_event(sub, json!({"kind": "presence", "subject": sub, "role": role, "online": online, "last_seen": last_seen}));
    }

    /// Timers: hello deadlines, presence linger, resume grace, token expiry, coalesced positions.
    pub fn handle_timeout(&mut self, now: u64) {
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.is_none() && !c.closing && now >= c.opened_at + self.cfg.hello_timeout_ms)
            .map(|(id, _)| *id)
            .collect();
        for conn in late {
            self.send_err(
                conn,
                err(None, ErrorCode::BadHello, format!("no hello within {} ms", self.cfg.hello_timeout_ms)),
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
        for sid in expired {
            if let Some(conn) = self.sessions.get(&sid).and_then(|s| s.conn) {
                self.send_err(conn, err(None, ErrorCode::Unauthorized, "token has expired"));
            }
            self.end_session(now, &sid, "token expired");
        }
        // Coalesced positions whose interval has passed.
        let due: Vec<Subject> = self
            .units
            .iter()
            .filter(|(_, u)| {
                u.pending.is_some()
                    && u.last_fanout.is_none_or(|t| now >= t + self.cfg.position_interval_ms)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for sub in due {
            self.fan_out_position(now, &sub);
        }
    }

    fn fan_out_position(&mut self, now: u64, sub: &Subject) {
        let Some(u) = self.units.get_mut(sub) else { return };
        let Some(pos) = u.pending.take() else { return };
        u.last_fanout = Some(now);
        u.position = Some(pos.clone());
        let role = u.role;
        let mut ev = serde_json::to_value(&pos).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut ev {
            m.insert("kind".into(), json!("position"));
            m.insert("subject".into(), json!(sub));
            m.insert("role".into(), json!(role));
        }
        let senders: Vec<String> = self.by_subject.get(sub).into_iter().flatten().cloned().collect();
        let mut targets = self.audience(sub, None);
        for s in &senders {
            targets.remove(s);
        }
        for t in targets {
            self.push_event(&t, &ev);
        }
    }

    fn request(&mut self, now: u64, conn: ConnId, sid: &str, msg: ClientMsg) -> Result<(), ProtoError> {
        let claims = self.sessions[sid].claims.clone();
        let need = |action: Action, re: RequestId| -> Result<(), ProtoError> {
            if claims.may(action) {
                Ok(())
            } else {
                Err(forbidden(re, &claims, action))
            }
        };
        match msg {
            ClientMsg::Hello { .. } => {
                return Err(err(None, ErrorCode::BadHello, "hello was already received on this connection"));
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
                pos.validate().map_err(|m| err(id, ErrorCode::BadRequest, m))?;
                if pos.time.is_none() {
                    pos.time = Some(now);
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
                    return Err(err(Some(id), ErrorCode::BadRequest, "name must be 1..=200 characters"));
                }
                let iid = match incident {
                    Some(i) => {
                        if self.incidents.contains_key(&i) {
                            return Err(err(Some(id), ErrorCode::Conflict, format!("incident {i} exists")));
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
                        log: Vec::new(),
                    },
                );
                self.log(now, &iid, claims.sub.to_string(), "created", json!({"name": name}));
                self.join_incident(now, sid, &iid);
                let view = self.incident_view(&iid);
                self.reply(conn, id, json!({"incident": view}));
            }
            ClientMsg::IncidentClose { id, incident } => {
                need(Action::ManageIncident, id)?;
                if incident.as_str() == DUTY {
                    return Err(err(Some(id), ErrorCode::Conflict, "the standing duty incident cannot be closed"));
                }
                let inc = self
                    .incidents
                    .get_mut(&incident)
                    .ok_or_else(|| err(Some(id), ErrorCode::NotFound, format!("no incident {incident}")))?;
                if !inc.open {
                    return Err(err(Some(id), ErrorCode::Conflict, format!("incident {incident} is already closed")));
                }
                inc.open = false;
                inc.closed_at = Some(now);
                self.log(now, &incident, claims.sub.to_string(), "closed", Value::Null);
                self.incident_event(now, &incident, None, json!({"kind": "incident", "incident": incident, "state": "closed", "by": claims.sub}));
                let members: Vec<String> = self.members.get(&incident).into_iter().flatten().cloned().collect();
                for m in members {
                    self.leave_incident(now, &m, &incident);
                }
                self.reply(conn, id, Value::Null);
            }
            ClientMsg::Join { id, incident } => {
                let inc = self
                    .incidents
                    .get(&incident)
                    .ok_or_else(|| err(Some(id), ErrorCode::NotFound, format!("no incident {incident}")))?;
                if !self.may_access(&claims, &incident) {
                    return Err(err(Some(id), ErrorCode::Forbidden, format!("not a member of incident {incident}")));
                }
                if !inc.open {
                    return Err(err(Some(id), ErrorCode::Conflict, format!("incident {incident} is closed")));
                }
                self.join_incident(now, sid, &incident);
                self.reply(conn, id, json!({"incidents": self.sessions[sid].incidents}));
            }
            ClientMsg::Leave { id, incident } => {
                if !self.leave_incident(now, sid, &incident) {
                    return Err(err(Some(id), ErrorCode::NotFound, format!("not in incident {incident}")));
                }
                self.reply(conn, id, json!({"incidents": self.sessions[sid].incidents}));
            }
            ClientMsg::Assign { id, incident, subject } => {
                need(Action::ManageIncident, id)?;
                let inc = self
                    .incidents
                    .get_mut(&incident)
                    .ok_or_else(|| err(Some(id), ErrorCode::NotFound, format!("no incident {incident}")))?;
                if !inc.open {
                    return Err(err(Some(id), ErrorCode::Conflict, format!("incident {incident} is closed")));
                }
                if inc.assigned.insert(subject.clone()) {
                    self.log(now, &incident, claims.sub.to_string(), "assigned", json!({"subject": subject}));
                    self.incident_event(now, &incident, None, json!({"kind": "member", "incident": incident, "subject": subject, "op": "assigned", "by": claims.sub}));
                    let theirs: Vec<String> = self.by_subject.get(&subject).into_iter().flatten().cloned().collect();
                    for s in theirs {
                        self.join_incident(now, &s, &incident);
                        self.push_event(&s, &json!({"kind": "assigned", "incident": incident, "by": claims.sub}));
                    }
                }
                self.reply(conn, id, Value::Null);
            }
            ClientMsg::Unassign { id, incident, subject } => {
                need(Action::ManageIncident, id)?;
                let inc = self
                    .incidents
                    .get_mut(&incident)
                    .ok_or_else(|| err(Some(id), ErrorCode::NotFound, format!("no incident {incident}")))?;
                if !inc.assigned.remove(&subject) {
                    return Err(err(Some(id), ErrorCode::NotFound, format!("{subject} is not assigned to {incident}")));
                }
                self.log(now, &incident, claims.sub.to_string(), "unassigned", json!({"subject": subject}));
                self.incident_event(now, &incident, None, json!({"kind": "member", "incident": incident, "subject": subject, "op": "unassigned", "by": claims.sub}));
                let theirs: Vec<String> = self.by_subject.get(&subject).into_iter().flatten().cloned().collect();
                for s in &theirs {
                    self.push_event(s, &json!({"kind": "unassigned", "incident": incident, "by": claims.sub}));
                }
                for s in theirs {
                    let keep = self.sessions.get(&s).is_some_and(|x| {
                        x.claims.incidents.contains(&incident) || matches!(x.claims.role, Role::Admin | Role::Commander)
                    });
                    if !keep {
                        self.leave_incident(now, &s, &incident);
                    }
                }
                self.reply(conn, id, Value::Null);
            }
            ClientMsg::Log { id, incident, after, limit } => {
                need(Action::ReadIncident, id)?;
                self.readable(id, &claims, &incident)?;
                let max = limit.unwrap_or(self.cfg.log_page_max).min(self.cfg.log_page_max) as usize;
                let inc = &self.incidents[&incident];
                let entries: Vec<&LogEntry> = inc.log.iter().filter(|e| e.seq > after).take(max).collect();
                let data = json!({"incident": incident, "entries": entries, "last": inc.log.len()});
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
                let all = incident.is_none() && matches!(claims.role, Role::Admin | Role::Commander);
                let owners = self.owners_for(&claims, incident.as_ref());
                self.out.push_back(Output::Media {
                    conn,
                    session: sid.to_owned(),
                    re: id,
                    op: MediaOp::Catalog { owners, all },
                });
            }
            ClientMsg::Publish { id, stream, kind, sdp } => {
                need(Action::PublishOwn, id)?;
                let stream = match stream {
                    Some(s) => s,
                    None => StreamName::parse(claims.sub.as_str())
                        .map_err(|e| err(Some(id), ErrorCode::BadRequest, e.to_string()))?,
                };
                if kind == StreamKind::Drone {
                    need(Action::PublishDrone, id)?;
                    if claims.role != Role::Admin && !owns_drone(&claims, stream.as_str()) {
                        return Err(err(Some(id), ErrorCode::Forbidden, format!("{stream} is not one of your drones")));
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
            ClientMsg::Subscribe { id, stream, layer, max_height, sdp } => {
                need(Action::ViewStream, id)?;
                self.out.push_back(Output::Media {
                    conn,
                    session: sid.to_owned(),
                    re: id,
                    op: MediaOp::Subscribe { stream, layer, max_height, sdp },
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
            ClientMsg::Chat { id, incident, text } => {
                need(Action::Chat, id)?;
                if !self.sessions[sid].incidents.contains(&incident) {
                    return Err(err(Some(id), ErrorCode::Forbidden, format!("join incident {incident} to chat in it")));
                }
                if text.trim().is_empty() || text.chars().count() > 4000 {
                    return Err(err(Some(id), ErrorCode::BadRequest, "text must be 1..=4000 characters"));
                }
                self.log(now, &incident, claims.sub.to_string(), "chat", json!({"text": text}));
                self.incident_event(now, &incident, Some(sid), json!({"kind": "chat", "incident": incident, "from": claims.sub, "text": text, "time": now}));
                self.reply(conn, id, json!({"time": now}));
            }
            ClientMsg::Sos { id, incident, text } => {
                need(Action::RaiseSos, id)?;
                let targets: Vec<IncidentId> = match incident {
                    Some(i) => {
                        if !self.sessions[sid].incidents.contains(&i) {
                            return Err(err(Some(id), ErrorCode::Forbidden, format!("not in incident {i}")));
                        }
                        vec![i]
                    }
                    None => self.sessions[sid].incidents.iter().cloned().collect(),
                };
                if targets.is_empty() {
                    return Err(err(Some(id), ErrorCode::NotFound, "not in any incident: join one to raise SOS"));
                }
                let position = self.units.get(&claims.sub).and_then(|u| u.position.clone());
                for i in &targets {
                    self.log(now, i, claims.sub.to_string(), "sos", json!({"text": text, "position": position}));
                    self.incident_event(now, i, Some(sid), json!({"kind": "sos", "incident": i, "from": claims.sub, "role": claims.role, "text": text, "position": position, "time": now}));
                }
                self.reply(conn, id, json!({"incidents": targets}));
            }
            ClientMsg::Order { id, .. } => {
                need(Action::SendOrder, id)?;
                return Err(err(Some(id), ErrorCode::NotImplemented, "orders are not available on this node version yet"));
            }
            ClientMsg::OrderAnswer { id, order, .. } => {
                need(Action::AnswerOrder, id)?;
                return Err(err(Some(id), ErrorCode::NotFound, format!("no order {order} addressed to you")));
            }
            ClientMsg::DroneCommand { id, drone, command, .. } => {
                need(Action::CommandDrone, id)?;
                if claims.role == Role::Pilot && !owns_drone(&claims, &drone) {
                    return Err(err(Some(id), ErrorCode::Forbidden, format!("{drone} is not one of your drones")));
                }
                let _ = command;
                return Err(err(Some(id), ErrorCode::NotFound, format!("drone {drone} is not connected to this node")));
            }
            ClientMsg::Revoke { id, sub, jti } => {
                need(Action::Revoke, id)?;
                let r = match (sub, jti) {
                    (Some(sub), None) => Revocation::Subject { sub, at: now / 1000 },
                    (None, Some(jti)) if !jti.is_empty() && jti.len() <= 128 => Revocation::Token { jti },
                    _ => return Err(err(Some(id), ErrorCode::BadRequest, "give exactly one of sub or jti")),
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

    fn readable(&self, re: RequestId, claims: &Claims, id: &IncidentId) -> Result<(), ProtoError> {
        if !self.incidents.contains_key(id) {
            return Err(err(Some(re), ErrorCode::NotFound, format!("no incident {id}")));
        }
        if !self.may_access(claims, id) {
            return Err(err(Some(re), ErrorCode::Forbidden, format!("not a member of incident {id}")));
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
            state: if inc.open { "open" } else { "closed" },
            created_by: inc.created_by.clone(),
            created_at: inc.created_at,
            closed_at: inc.closed_at,
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
    pub fn log_for(&self, claims: &Claims, id: &IncidentId, after: u64) -> Result<Vec<LogEntry>, ProtoError> {
        if !claims.may(Action::ReadIncident) {
            return Err(err(None, ErrorCode::Forbidden, format!("role {} may not read incidents", claims.role)));
        }
        self.readable(0, claims, id).map_err(|mut e| {
            e.re = None;
            e
        })?;
        let max = self.cfg.log_page_max as usize;
        Ok(self.incidents[id].log.iter().filter(|e| e.seq > after).take(max).cloned().collect())
    }

    fn visible_subjects(&self, claims: &Claims, incident: Option<&IncidentId>) -> Option<BTreeSet<Subject>> {
        let incidents: Vec<&IncidentId> = match incident {
            Some(i) => vec![i],
            None => {
                if matches!(claims.role, Role::Admin | Role::Commander) {
                    return None;
                }
                self.incidents.keys().filter(|i| self.may_access(claims, i)).collect()
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

    fn owners_for(&self, claims: &Claims, incident: Option<&IncidentId>) -> BTreeMap<Subject, Role> {
        let subs = self.visible_subjects(claims, incident);
        self.units
            .iter()
            .filter(|(s, _)| subs.as_ref().is_none_or(|v| v.contains(*s)))
            .map(|(s, u)| (s.clone(), u.role))
            .collect()
    }

    /// Units `claims` may see, optionally within one incident (`GET /api/units`, `units`).
    pub fn units_for(&self, now: u64, claims: &Claims, incident: Option<&IncidentId>) -> Vec<UnitView> {
        let subs = self.visible_subjects(claims, incident);
        self.units
            .iter()
            .filter(|(s, _)| subs.as_ref().is_none_or(|v| v.contains(*s)))
            .map(|(s, u)| {
                let incidents: BTreeSet<IncidentId> = self
                    .by_subject
                    .get(s)
                    .into_iter()
                    .flatten()
                    .filter_map(|x| self.sessions.get(x))
                    .flat_map(|x| x.incidents.iter().cloned())
                    .collect();
                UnitView {
                    subject: s.clone(),
                    role: u.role,
                    online: self.is_online(now, s),
                    last_seen: u.last_seen,
                    position: u.position.clone(),
                    incidents: incidents.into_iter().collect(),
                }
            })
            .collect()
    }

    /// The shell reports a publish that the SFU accepted: it goes into the logs of the
    /// publisher's incidents.
    pub fn note_published(&mut self, now: u64, session: &str, stream: &StreamName, kind: StreamKind) {
        let Some(s) = self.sessions.get(session) else { return };
        let who = s.claims.sub.to_string();
        let incidents: Vec<IncidentId> = s.incidents.iter().cloned().collect();
        for i in &incidents {
            self.log(now, i, who.clone(), "publish", json!({"stream": stream, "kind": kind}));
        }
    }

    /// Whether `claims` may read incident `id`: `not_found` if there is no such incident,
    /// `forbidden` if it is not accessible (for the HTTP API).
    pub fn check_readable(&self, claims: &Claims, id: &IncidentId) -> Result<(), ProtoError> {
        if !claims.may(Action::ReadIncident) {
            return Err(err(None, ErrorCode::Forbidden, format!("role {} may not read incidents", claims.role)));
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

fn e_closes(out: &VecDeque<Output>, conn: ConnId) -> bool {
    out.iter().any(|o| matches!(o, Output::Close { conn: c, .. } if *c == conn))
}


#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
