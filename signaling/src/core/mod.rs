//! The sans-IO signaling core of a node: sessions, incidents, presence and positions, drones
//! and the office, as components that each own their state, coordinated by the dispatch here.
//!
//! # Driving it
//!
//! The shells (QUIC and WebSocket in `media-server`) only move frames. They call
//! [`Core::open`] when a connection arrives, [`Core::frame`] with each received message,
//! [`Core::closed`] when the transport is gone and [`Core::handle_timeout`] regularly (every
//! 100 ms, and at [`Core::next_fanout_due`]), then drain [`Core::poll_output`] and do what each
//! [`Output`] says. Time is always passed in, so every behaviour is testable without clocks.
//! The office store's calls block: run the core where blocking is allowed.
//!
//! ```no_run
//! use signaling::core::{Core, CoreConfig, Output};
//! use signaling::store::SqliteStore;
//! use signaling::{NodeId, TokenVerifier, UnixMs};
//!
//! let node = NodeId::parse("node-a").unwrap();
//! let verifier = TokenVerifier::new(node.clone()); // trust the issuers' keys
//! let store = SqliteStore::open_in_memory().unwrap();
//! let mut core = Core::new(CoreConfig::default(), node, verifier, store, UnixMs(0));
//! # let (now, conn, frame) = (UnixMs(1), 1, b"{}".to_vec());
//! core.open(now, conn);
//! core.frame(now, conn, &frame);
//! core.handle_timeout(now);
//! while let Some(out) = core.poll_output() {
//!     match out {
//!         Output::Send { conn, msg } | Output::Urgent { conn, msg } => { /* write it */ }
//!         Output::Close { conn, code, reason } => { /* close it */ }
//!         _ => { /* media, revocations, ended sessions */ }
//!     }
//! }
//! ```
//!
//! # Who owns what
//!
//! - [`session`]: the token gate, connections and rate limits, sessions with their events,
//!   detach, resume, grace, revocation and expiry;
//! - [`incidents`]: incidents, assignments and membership (which session is in which incident);
//! - [`presence`]: units, online state, positions and their coalescing;
//! - [`drones`]: drones, their telemetry and link, commands and their acks;
//! - [`office`]: chat, SOS, orders and order states, mailboxes (through the [`OfficeStore`]);
//! - [`queries`]: the read views, shaped from facts gathered here.
//!
//! The components never call each other: the dispatch asks one for a decision and passes what
//! another needs (claims, a session's incidents, whether a subject is online) as arguments.
//! Events leave through [`Output`]s; the core writes no table of the shell's.

use std::collections::{BTreeSet, VecDeque};

use serde_json::{json, Value};

use crate::auth::{Action, Claims, Role, TokenVerifier};
use crate::ids::{IncidentId, NodeId, StreamName, Subject};
use crate::proto::{
    decode_client, ClientMsg, ErrorCode, Event, Member, Position, ProtoError, RequestId, Resume,
    ServerMsg, StreamKind, Telemetry, UnitKind, Welcome, VERSION,
};
use crate::store::{Mail, OfficeStore, Order};
use crate::time::UnixMs;

mod config;
mod dispatch;
pub mod drones;
pub mod incidents;
pub mod office;
pub mod presence;
pub mod queries;
pub mod session;

use drones::{DroneLimits, Drones};
use incidents::Incidents;
use office::{Filed, Office};
use presence::Presence;
use session::{Admit, Due, SessionLimits, Sessions};

pub use crate::proto::{IncidentView, LinkState, LogEntry, UnitView};
pub use config::CoreConfig;
pub use drones::owns_drone;
pub use incidents::{duty, is_console, DUTY};
pub use office::MAIL_SYNC_BATCH;
pub use session::{ConnId, Revocation, TokenGate, VerifiedHello};

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
        owners: std::collections::BTreeMap<Subject, Role>,
        /// Every stream is visible (admin/commander without an incident filter).
        all: bool,
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
    /// Send `msg` on `conn` ahead of everything queued (SOS, drone commands).
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

/// The signaling state machine of one node. See the module docs.
pub struct Core {
    cfg: CoreConfig,
    node: NodeId,
    sessions: Sessions,
    incidents: Incidents,
    presence: Presence,
    drones: Drones,
    office: Office,
    store: Box<dyn OfficeStore>,
    store_errors: u64,
    out: VecDeque<Output>,
}

fn err(re: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> ProtoError {
    ProtoError::new(re, code, message)
}

fn need(claims: &Claims, action: Action, re: Option<RequestId>) -> Result<(), ProtoError> {
    if claims.may(action) {
        Ok(())
    } else {
        Err(err(
            re,
            ErrorCode::Forbidden,
            format!("role {} may not {}", claims.role, action),
        ))
    }
}

impl Core {
    /// A core for node `node`, verifying tokens with `verifier` and keeping the office in
    /// `store`. The incidents in the store are loaded; `duty` exists from the start.
    pub fn new(
        cfg: CoreConfig,
        node: NodeId,
        verifier: TokenVerifier,
        store: impl OfficeStore + 'static,
        now: UnixMs,
    ) -> Core {
        let mut store: Box<dyn OfficeStore> = Box::new(store);
        let mut store_errors = 0;
        let rows = store.incidents().unwrap_or_else(|_| {
            store_errors += 1;
            Vec::new()
        });
        let (incidents, created, bad) = Incidents::load(node.clone(), rows, now);
        store_errors += bad;
        if let Some(row) = created {
            if store.save_incident(&row).is_err() {
                store_errors += 1;
            }
        }
        Core {
            sessions: Sessions::new(
                SessionLimits {
                    hello_timeout_ms: cfg.hello_timeout_ms,
                    resume_grace_ms: cfg.resume_grace_ms,
                    presence_linger_ms: cfg.presence_linger_ms,
                    replay_buffer: cfg.replay_buffer,
                    rate_per_sec: cfg.rate_per_sec,
                    rate_burst: cfg.rate_burst,
                    flood_close_after: cfg.flood_close_after,
                    max_per_subject: cfg.max_sessions_per_subject,
                    max_per_console: cfg.max_sessions_per_console,
                    max_total: cfg.max_sessions,
                },
                verifier,
            ),
            presence: Presence::new(cfg.position_interval_ms),
            drones: Drones::new(DroneLimits {
                telemetry_hz: cfg.telemetry_hz,
                command_per_sec: cfg.drone_command_per_sec,
                command_burst: cfg.drone_command_burst,
                command_ttl_ms: cfg.drone_command_ttl_ms,
                max_per_bridge: cfg.max_drones_per_bridge,
            }),
            office: Office::new(),
            incidents,
            cfg,
            node,
            store,
            store_errors,
            out: VecDeque::new(),
        }
    }

    /// The next thing the shell must do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Live connections (with or without a session).
    pub fn connection_count(&self) -> usize {
        self.sessions.connection_count()
    }

    /// Sessions, attached or detached.
    pub fn session_count(&self) -> usize {
        self.sessions.session_count()
    }

    /// Store writes that failed (log entries, incident changes) since the node started.
    pub fn store_errors(&self) -> u64 {
        self.store_errors
    }

    /// A new transport connection.
    pub fn open(&mut self, now: UnixMs, conn: ConnId) {
        self.sessions.open(now, conn);
    }

    /// The transport of `conn` is gone. Its session stays resumable for the grace period.
    pub fn closed(&mut self, now: UnixMs, conn: ConnId) {
        self.sessions.closed(now, conn);
    }

    /// Verifies a bearer token as the handshake would (signature, audience, expiry, revocation);
    /// used by the HTTP API.
    pub fn authenticate(&self, token: &str, now: UnixMs) -> Result<Claims, ProtoError> {
        self.sessions.authenticate(token, now)
    }

    /// The token gate: what `hello` checks (the shell keeps a copy for its HTTP routes and
    /// applies to it the revocations it hands the core).
    pub fn token_gate(&self) -> &TokenGate {
        self.sessions.gate()
    }

    /// The subject and role of a session (for the shell's media ownership checks).
    pub fn session_claims(&self, session: &str) -> Option<&Claims> {
        self.sessions.claims(session)
    }

    // -- Outputs ------------------------------------------------------------------------------

    fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        self.out.push_back(Output::Send { conn, msg });
    }

    fn reply(&mut self, conn: ConnId, re: RequestId, data: Value) {
        self.send(conn, ServerMsg::Result { re, data });
    }

    fn send_err(&mut self, conn: ConnId, e: ProtoError) {
        let (code, reason, closes) = (e.code, e.message.clone(), e.code.closes());
        self.send(conn, e.to_msg());
        if closes {
            self.close_conn(conn, code, &reason);
        }
    }

    fn close_conn(&mut self, conn: ConnId, code: ErrorCode, reason: &str) {
        if self.sessions.start_closing(conn) {
            self.out.push_back(Output::Close {
                conn,
                code,
                reason: reason.to_owned(),
            });
        }
    }

    /// Appends to an incident's log; a store failure loses the entry and is counted.
    fn log(&mut self, now: UnixMs, incident: &IncidentId, who: &str, what: &str, detail: Value) {
        if self.incidents.exists(incident)
            && self
                .store
                .append_log(incident.as_str(), now, who, what, &detail)
                .is_err()
        {
            self.store_errors += 1;
        }
    }

    fn log_all(
        &mut self,
        now: UnixMs,
        incidents: &BTreeSet<IncidentId>,
        who: &Subject,
        what: &str,
        detail: &Value,
    ) {
        for i in incidents {
            self.log(now, i, who.as_str(), what, detail.clone());
        }
    }

    fn persist_incident(&mut self, id: &IncidentId) {
        if let Some(row) = self.incidents.row(id) {
            if self.store.save_incident(&row).is_err() {
                self.store_errors += 1;
            }
        }
    }

    /// Queues `event` to session `sid` (numbered, buffered for replay, sent if attached).
    fn push_event(&mut self, sid: &str, event: &Event, urgent: bool) {
        if let Some((conn, msg)) = self.sessions.push_event(sid, event) {
            self.out.push_back(if urgent {
                Output::Urgent { conn, msg }
            } else {
                Output::Send { conn, msg }
            });
        }
    }

    fn push_all(&mut self, targets: impl IntoIterator<Item = String>, event: &Event) {
        for t in targets {
            self.push_event(&t, event, false);
        }
    }

    /// Sends stored mail to every connection of each recipient that has synced its mailbox.
    fn deliver(&mut self, mails: &[(Subject, Mail)], urgent: bool) {
        for (r, m) in mails {
            for conn in self.sessions.mail_conns(r) {
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

    /// Delivers what the office filed and writes its log entry.
    fn file(&mut self, now: UnixMs, by: &Subject, filed: Filed) {
        if let Some((incident, what, detail)) = filed.log {
            self.log(now, &incident, by.as_str(), what, detail);
        }
        self.deliver(&filed.mails, false);
    }

    // -- Frames and the handshake -------------------------------------------------------------

    /// A frame the shell could not even read (too large, empty, binary): the typed error is
    /// sent and the connection closed.
    pub fn frame_error(&mut self, conn: ConnId, e: ProtoError) {
        self.send_err(conn, e);
        let closing = self
            .out
            .iter()
            .any(|o| matches!(o, Output::Close { conn: c, .. } if *c == conn));
        if !closing {
            self.close_conn(conn, ErrorCode::BadRequest, "unusable frame stream");
        }
    }

    /// One received message (a QUIC frame's payload or a WebSocket text frame). A `hello` that
    /// comes this way has its token verified here, on the core; the node's shells verify it
    /// themselves and hand it over with [`Core::hello_verified`] instead.
    pub fn frame(&mut self, now: UnixMs, conn: ConnId, bytes: &[u8]) {
        let re = || decode_client(bytes).ok().and_then(|m| m.id());
        let Some(session) = self.admit(now, conn, re) else {
            return;
        };
        let msg = match decode_client(bytes) {
            Ok(m) => m,
            Err(e) if session.is_none() => {
                let m = format!("the first message must be hello ({})", e.message);
                self.send_err(conn, err(None, ErrorCode::BadHello, m));
                return;
            }
            Err(e) => return self.send_err(conn, e),
        };
        match session {
            None => self.hello(now, conn, msg),
            Some(sid) => {
                if let Some(sub) = self.sessions.claims(&sid).map(|c| c.sub.clone()) {
                    self.presence.seen(now, &sub);
                }
                if let Err(e) = self.request(now, conn, &sid, msg) {
                    self.send_err(conn, e);
                }
            }
        }
    }

    /// A `hello` whose token the shell already verified off the core ([`VerifiedHello::check`]):
    /// the same as [`Core::frame`] with that `hello`, except that the core only adds what it
    /// alone knows — revocations applied since, and expiry by its clock.
    pub fn hello_verified(&mut self, now: UnixMs, conn: ConnId, hello: VerifiedHello) {
        let Some(session) = self.admit(now, conn, || None) else {
            return;
        };
        if session.is_some() {
            let m = "hello was already received on this connection";
            return self.send_err(conn, err(None, ErrorCode::BadHello, m));
        }
        let token = hello
            .token
            .and_then(|c| self.sessions.recheck(&c, now).map(|()| c));
        self.hello_with(now, conn, hello.v, token, hello.resume);
    }

    /// Charges one message to `conn`'s rate; `None` when the message is dropped or refused
    /// (the refusal is sent), else the connection's session, if it has one. `re` reads the
    /// request id for a refusal.
    fn admit(
        &mut self,
        now: UnixMs,
        conn: ConnId,
        re: impl FnOnce() -> Option<RequestId>,
    ) -> Option<Option<String>> {
        match self.sessions.admit(now, conn) {
            Admit::Drop => None,
            Admit::Yes(session) => Some(session),
            Admit::Refuse { flood } => {
                let re = re();
                if flood {
                    let e = err(
                        re,
                        ErrorCode::RateLimited,
                        "message flood: closing the session",
                    );
                    self.send_err(conn, e);
                    self.close_conn(conn, ErrorCode::RateLimited, "message flood");
                } else {
                    let m = format!(
                        "more than {} messages per second; slow down",
                        self.cfg.rate_per_sec
                    );
                    self.send_err(conn, err(re, ErrorCode::RateLimited, m));
                }
                None
            }
        }
    }

    fn hello(&mut self, now: UnixMs, conn: ConnId, msg: ClientMsg) {
        let ClientMsg::Hello { v, token, resume } = msg else {
            let e = err(
                msg.id(),
                ErrorCode::BadHello,
                "the first message must be hello",
            );
            return self.send_err(conn, e);
        };
        let token = if v == VERSION {
            self.sessions.authenticate(&token, now)
        } else {
            Err(err(None, ErrorCode::UnsupportedVersion, "not checked"))
        };
        self.hello_with(now, conn, v, token, resume);
    }

    /// The handshake once the token is checked: version, token, resume or a new session within
    /// the caps, `welcome` and the replay.
    fn hello_with(
        &mut self,
        now: UnixMs,
        conn: ConnId,
        v: u32,
        token: Result<Claims, ProtoError>,
        resume: Option<Resume>,
    ) {
        if v != VERSION {
            let m = format!("protocol version {v} is not supported; this node speaks [{VERSION}]");
            return self.send_err(conn, err(None, ErrorCode::UnsupportedVersion, m));
        }
        let claims = match token {
            Ok(c) => c,
            Err(e) => return self.send_err(conn, e),
        };
        let asked = resume.is_some();
        let resumed = resume.as_ref().and_then(|r| {
            let done = self.sessions.resume(conn, &r.session, &claims)?;
            Some((r.session.clone(), r.after, done.displaced))
        });
        let (sid, after) = match resumed {
            Some((sid, after, displaced)) => {
                if let Some(old) = displaced {
                    let why = "session resumed on another connection";
                    self.send(old, err(None, ErrorCode::SessionClosed, why).to_msg());
                    self.close_conn(old, ErrorCode::SessionClosed, why);
                }
                self.incidents.set_role(&sid, claims.role);
                (sid, Some(after))
            }
            None => {
                if let Err(e) = self.sessions.may_create(&claims) {
                    return self.send_err(conn, e);
                }
                (self.new_session(now, conn, &claims), None)
            }
        };
        self.presence.seen(now, &claims.sub);
        let (replay, lost) = match after {
            Some(a) => self.sessions.replay(&sid, a),
            None => (Vec::new(), false),
        };
        let welcome = Welcome {
            v: VERSION,
            session: sid.clone(),
            node: self.node.clone(),
            time: now,
            subject: claims.sub.clone(),
            role: claims.role,
            incidents: self
                .incidents
                .of_session(&sid)
                .map(|i| i.iter().cloned().collect())
                .unwrap_or_default(),
            resumed: after.is_some(),
            gap: lost || (asked && after.is_none()),
            last: self.sessions.last_seq(&sid),
            mail_last: self.store.last_seq(&claims.sub).unwrap_or(0),
            mail_acked: self.store.acked(&claims.sub).unwrap_or(0),
        };
        self.send(conn, ServerMsg::Welcome(welcome));
        for m in replay {
            self.send(conn, m);
        }
        self.refresh_presence(now, &claims.sub);
    }

    /// A new session on `conn`: the incidents its token names exist, and it joins its first ones.
    fn new_session(&mut self, now: UnixMs, conn: ConnId, claims: &Claims) -> String {
        for i in &claims.incidents {
            if self.incidents.ensure_named(now, i) {
                self.persist_incident(i);
                let node = self.node.to_string();
                self.log(
                    now,
                    i,
                    &node,
                    "created",
                    json!({"reason": "named in a token"}),
                );
            }
        }
        let first = self.incidents.initial(claims);
        let sid = self.sessions.create(conn, claims);
        self.incidents.register(&sid, &claims.sub, claims.role);
        if !self.presence.knows(&claims.sub) && self.store.note_subject(&claims.sub, now).is_err() {
            self.store_errors += 1;
        }
        self.presence.arrived(now, &claims.sub, claims.role);
        for i in first {
            self.join(now, &sid, &i);
        }
        sid
    }

    // -- Membership, presence and the events they make ---------------------------------------

    fn join(&mut self, now: UnixMs, sid: &str, id: &IncidentId) -> bool {
        let Some(first) = self.incidents.join(sid, id) else {
            return false;
        };
        if first {
            if let Some(c) = self.sessions.claims(sid) {
                let (subject, role) = (c.sub.clone(), c.role);
                self.log(now, id, subject.as_str(), "joined", json!({"role": role}));
                let targets = self.incidents.consoles_in(id, Some(sid));
                let ev = Event::Member(Member::Joined {
                    incident: id.clone(),
                    subject,
                    role,
                });
                self.push_all(targets, &ev);
            }
        }
        true
    }

    fn leave(&mut self, now: UnixMs, sid: &str, id: &IncidentId) -> bool {
        let Some(last) = self.incidents.leave(sid, id) else {
            return false;
        };
        if last {
            if let Some(subject) = self.sessions.claims(sid).map(|c| c.sub.clone()) {
                self.log(now, id, subject.as_str(), "left", Value::Null);
                let targets = self.incidents.consoles_in(id, None);
                let ev = Event::Member(Member::Left {
                    incident: id.clone(),
                    subject,
                });
                self.push_all(targets, &ev);
            }
        }
        true
    }

    /// The incidents of drone `name`: its bridge session's, or as they were when it ended.
    fn drone_incidents(&self, name: &Subject) -> BTreeSet<IncidentId> {
        let Some((bridge, kept)) = self.drones.bridge_of(name) else {
            return BTreeSet::new();
        };
        self.incidents.of_session(bridge).unwrap_or(kept).clone()
    }

    fn drone_event(&mut self, name: &Subject, ev: &Event) {
        let Some(bridge) = self.drones.bridge_of(name).map(|(b, _)| b.to_owned()) else {
            return;
        };
        let incidents = self.drone_incidents(name);
        let targets = self.incidents.consoles_in_any(&incidents, &bridge);
        self.push_all(targets, ev);
    }

    /// Announces a presence change of `sub` (to the consoles sharing an incident with it) and
    /// logs it in `log_in`.
    fn presence_changed(
        &mut self,
        now: UnixMs,
        sub: &Subject,
        online: bool,
        log_in: BTreeSet<IncidentId>,
    ) {
        let Some(change) = self.presence.set_online(sub, online) else {
            return;
        };
        let what = if online { "online" } else { "offline" };
        for i in &log_in {
            self.log(now, i, sub.as_str(), what, Value::Null);
        }
        let own = self.sessions.sessions_of(sub);
        let targets = self.incidents.audience(&own, true);
        let ev = Event::Presence {
            subject: sub.clone(),
            role: change.role,
            online,
            last_seen: change.last_seen,
        };
        self.push_all(targets, &ev);
    }

    /// Recomputes whether `sub` is online and announces a change.
    fn refresh_presence(&mut self, now: UnixMs, sub: &Subject) {
        let online = self.sessions.subject_online(now, sub, None);
        let own = self.sessions.sessions_of(sub);
        let incidents = self.incidents.of_sessions(&own);
        self.presence_changed(now, sub, online, incidents);
    }

    fn fan_out_position(&mut self, sub: &Subject, role: Role, pos: Position) {
        let own = self.sessions.sessions_of(sub);
        let targets = self.incidents.audience(&own, false);
        let ev = Event::Position {
            subject: sub.clone(),
            role,
            pos,
        };
        self.push_all(targets, &ev);
    }

    fn fan_out_telemetry(&mut self, name: &Subject, t: Telemetry) {
        let ev = Event::Telemetry {
            drone: name.clone(),
            t: Box::new(t),
        };
        self.drone_event(name, &ev);
    }

    /// Ends session `sid` for good: presence first (while it still links its subject to its
    /// incidents), then it leaves its incidents, then it is forgotten.
    fn end_session(&mut self, now: UnixMs, sid: &str) {
        let Some(sub) = self.sessions.claims(sid).map(|c| c.sub.clone()) else {
            return;
        };
        let incidents = self.incidents.of_session(sid).cloned().unwrap_or_default();
        self.drones.bridge_ended(sid, &incidents);
        let online = self.sessions.subject_online(now, &sub, Some(sid));
        self.presence_changed(now, &sub, online, incidents.clone());
        for i in &incidents {
            self.leave(now, sid, i);
        }
        self.incidents.forget(sid);
        self.sessions.end(sid);
        self.out.push_back(Output::SessionEnded {
            session: sid.to_owned(),
        });
    }

    /// Ends `sids`, telling an attached client why (a closing error).
    fn end_sessions(&mut self, now: UnixMs, sids: Vec<String>, code: ErrorCode, why: &str) {
        for sid in sids {
            if let Some(conn) = self.sessions.conn_of(&sid) {
                self.send_err(conn, err(None, code, why));
            }
            self.end_session(now, &sid);
        }
    }

    /// Applies a revocation (from `media-server revoke` or another node): refuses matching tokens
    /// from now on and ends matching sessions at once.
    pub fn apply_revocation(&mut self, now: UnixMs, r: &Revocation) {
        let victims = self.sessions.revoke(r);
        self.end_sessions(
            now,
            victims,
            ErrorCode::Revoked,
            "this token has been revoked",
        );
    }

    // -- Timers -------------------------------------------------------------------------------

    /// Timers: hello deadlines, presence linger, resume grace, token expiry, coalesced positions
    /// and telemetry, forgotten drone commands.
    pub fn handle_timeout(&mut self, now: UnixMs) {
        for conn in self.sessions.late_hellos(now) {
            let m = format!("no hello within {} ms", self.cfg.hello_timeout_ms);
            self.send_err(conn, err(None, ErrorCode::BadHello, m));
        }
        for due in self.sessions.detached_due(now) {
            match due {
                Due::GraceOver(sid) => self.end_session(now, &sid),
                Due::LingerOver(sub) => self.refresh_presence(now, &sub),
            }
        }
        let expired = self.sessions.expired(now);
        self.end_sessions(now, expired, ErrorCode::Unauthorized, "token has expired");
        for (sub, role, pos) in self.presence.due(now) {
            self.fan_out_position(&sub, role, pos);
        }
        for (name, t) in self.drones.due(now) {
            self.fan_out_telemetry(&name, t);
        }
        self.drones.expire(now);
    }

    /// When the next coalesced fan-out (a position or a drone's telemetry) is due: the shell
    /// wakes exactly then instead of on its next regular tick.
    pub fn next_fanout_due(&self) -> Option<UnixMs> {
        match (self.presence.next_due(), self.drones.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the next coalesced position is due.
    pub fn next_position_due(&self) -> Option<UnixMs> {
        self.presence.next_due()
    }

    // -- Reads for the HTTP API ---------------------------------------------------------------

    /// Orders visible to `claims` (`GET /api/orders`): admin and commander see every order,
    /// others the ones they sent or received. Newest first, at most `limit`.
    pub fn orders_for(&self, claims: &Claims, limit: usize) -> Result<Vec<Order>, ProtoError> {
        Office::orders_for(&*self.store, claims, limit)
    }

    /// Incidents `claims` may see (`GET /api/incidents`, `incidents`).
    pub fn incidents_for(&self, claims: &Claims) -> Vec<IncidentView> {
        self.incidents.views_for(claims)
    }

    /// Whether `claims` may read incident `id`: `not_found` if there is no such incident,
    /// `forbidden` if it is not accessible (for the HTTP API).
    pub fn check_readable(&self, claims: &Claims, id: &IncidentId) -> Result<(), ProtoError> {
        if !claims.may(Action::ReadIncident) {
            let m = format!("role {} may not read incidents", claims.role);
            return Err(err(None, ErrorCode::Forbidden, m));
        }
        self.incidents.readable(None, claims, id)
    }

    /// The log of an incident `claims` may read (`GET /api/incidents/{id}/log`).
    pub fn log_for(
        &self,
        claims: &Claims,
        id: &IncidentId,
        after: u64,
    ) -> Result<Vec<LogEntry>, ProtoError> {
        self.check_readable(claims, id)?;
        let max = self.cfg.log_page_max;
        Ok(queries::log_page(&*self.store, None, id, after, None, max)?.0)
    }

    /// Whose live streams `claims` sees in a catalog, optionally within one incident (`catalog`,
    /// `GET /api/streams`): the owners (visible units, with their roles) and whether every live
    /// stream is visible (admin and commander without `incident`; they alone see remote streams).
    pub fn catalog_scope(
        &self,
        claims: &Claims,
        incident: Option<&IncidentId>,
    ) -> (std::collections::BTreeMap<Subject, Role>, bool) {
        let all = incident.is_none() && matches!(claims.role, Role::Admin | Role::Commander);
        let visible = self.incidents.visible_subjects(claims, incident);
        let units = self.presence.people().map(|p| (p.subject, p.role));
        (queries::catalog_owners(units, visible.as_ref()), all)
    }

    /// Whether `sub` is a unit of this node (it had a signaling session): a stream whose owner is
    /// not one (a WHIP-only publisher, a fixed camera) is in no incident but the standing `duty`.
    pub fn knows_unit(&self, sub: &Subject) -> bool {
        self.presence.knows(sub)
    }

    /// Units `claims` may see, optionally within one incident (`GET /api/units`, `units`):
    /// subjects that connected and drones that bridges reported, ordered by subject.
    pub fn units_for(
        &self,
        now: UnixMs,
        claims: &Claims,
        incident: Option<&IncidentId>,
    ) -> Vec<UnitView> {
        let subjects = self.incidents.visible_subjects(claims, incident);
        let visible_incidents = self.incidents.visible_incidents(claims, incident);
        let people = self.presence.people().map(|p| {
            let own = self.sessions.sessions_of(&p.subject);
            UnitView {
                online: self.sessions.subject_online(now, &p.subject, None),
                incidents: self.incidents.of_sessions(&own).into_iter().collect(),
                subject: p.subject,
                kind: UnitKind::Person,
                role: p.role,
                last_seen: p.last_seen,
                position: p.position,
                bridge: None,
                link: None,
                telemetry: None,
            }
        });
        let drones = self.drones.list().map(|d| {
            let incidents = self
                .incidents
                .of_session(&d.bridge)
                .unwrap_or(&d.incidents)
                .clone();
            UnitView {
                online: d.link_up && self.sessions.live(now, &d.bridge),
                position: d.telemetry.as_ref().and_then(Telemetry::position),
                incidents: incidents.into_iter().collect(),
                subject: d.name,
                kind: UnitKind::Drone,
                role: d.bridge_role,
                last_seen: d.last_seen,
                bridge: Some(d.bridge_sub),
                link: Some(if d.link_up {
                    LinkState::Up
                } else {
                    LinkState::Lost
                }),
                telemetry: d.telemetry,
            }
        });
        queries::units(
            people,
            drones,
            subjects.as_ref(),
            visible_incidents.as_ref(),
        )
    }

    /// The shell reports a publish that the SFU accepted: it goes into the logs of the
    /// publisher's incidents.
    pub fn note_published(
        &mut self,
        now: UnixMs,
        session: &str,
        stream: &StreamName,
        kind: StreamKind,
    ) {
        let Some(who) = self.sessions.claims(session).map(|c| c.sub.clone()) else {
            return;
        };
        let incidents = self
            .incidents
            .of_session(session)
            .cloned()
            .unwrap_or_default();
        let detail = json!({"stream": stream, "kind": kind});
        self.log_all(now, &incidents, &who, "publish", &detail);
    }
}

#[cfg(test)]
mod tests;
