//! Sessions: the token gate (verification and revocation), connections and their rate limits,
//! and sessions with their event numbering, replay buffer, detach, **resume** and end.
//!
//! Owns which connection carries which session and every session's claims and events. It does
//! not know incidents, presence, drones or the office: the dispatch ([`super::Core`]) asks it
//! for decisions (is this frame within the rate, may this `hello` resume, whose grace is over,
//! whom does a revocation end) and hands the answers to the other components.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::auth::{Action, Claims, Role, TokenVerifier};
use crate::ids::Subject;
use crate::proto::{
    decode_client, ClientMsg, ErrorCode, Event, ProtoError, Resume, ServerMsg, VERSION,
};
use crate::time::{UnixMs, UnixSecs};

/// A connection handle chosen by the shell (unique for the node's lifetime).
pub type ConnId = u64;

/// The limits the sessions run with (see [`super::CoreConfig`] for each).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// A connection must send `hello` within this time (ms).
    pub hello_timeout_ms: u64,
    /// A detached session can be resumed for this long (ms).
    pub resume_grace_ms: u64,
    /// A detached session still counts as live this long (ms).
    pub presence_linger_ms: u64,
    /// Events kept per session for replay.
    pub replay_buffer: usize,
    /// Sustained messages per second per connection.
    pub rate_per_sec: f64,
    /// Burst of messages per connection.
    pub rate_burst: f64,
    /// Refusals for rate in a row before the connection is closed.
    pub flood_close_after: u32,
    /// Most sessions per subject, console roles excepted.
    pub max_per_subject: usize,
    /// Most sessions per subject of a console role (admin, commander, operator).
    pub max_per_console: usize,
    /// Most sessions on the node.
    pub max_total: usize,
}

/// A revocation, as persisted and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Revocation {
    /// Every token of `sub` issued at or before `at`.
    Subject {
        /// The subject.
        sub: Subject,
        /// Tokens with `iat <= at` are revoked; newer ones are not.
        at: UnixSecs,
    },
    /// One token.
    Token {
        /// Its `jti`.
        jti: String,
    },
}

/// Verifies bearer tokens and remembers revocations: what a `hello` and the HTTP API check.
/// The shell keeps a copy for its HTTP routes and applies to it the same revocations it hands
/// the core.
#[derive(Debug, Clone)]
pub struct TokenGate {
    verifier: TokenVerifier,
    jti: BTreeSet<String>,
    sub: BTreeMap<Subject, UnixSecs>,
}

impl TokenGate {
    /// A gate that trusts what `verifier` trusts and has revoked nothing.
    pub fn new(verifier: TokenVerifier) -> TokenGate {
        TokenGate {
            verifier,
            jti: BTreeSet::new(),
            sub: BTreeMap::new(),
        }
    }

    /// Refuses the tokens `r` names from now on.
    pub fn apply(&mut self, r: &Revocation) {
        match r {
            Revocation::Token { jti } => {
                self.jti.insert(jti.clone());
            }
            Revocation::Subject { sub, at } => {
                let e = self.sub.entry(sub.clone()).or_insert(*at);
                *e = (*e).max(*at);
            }
        }
    }

    /// Whether the token behind `c` has been revoked.
    pub fn is_revoked(&self, c: &Claims) -> bool {
        self.jti.contains(c.jti.as_str())
            || self.sub.get(&c.sub).is_some_and(|at| c.iat <= at.as_secs())
    }

    /// Verifies `token` as the handshake does (signature, audience, expiry, revocation).
    pub fn authenticate(&self, token: &str, now: UnixMs) -> Result<Claims, ProtoError> {
        let claims = self
            .verifier
            .verify(token, now.secs().as_secs())
            .map_err(|e| ProtoError::new(None, ErrorCode::Unauthorized, e.to_string()))?;
        if self.is_revoked(&claims) {
            return Err(ProtoError::new(
                None,
                ErrorCode::Revoked,
                "this token has been revoked",
            ));
        }
        Ok(claims)
    }

    /// What only the holder of the revocations and the clock adds to a token verified elsewhere
    /// ([`VerifiedHello::check`]): refused if revoked since, or expired by `now`.
    pub fn recheck(&self, c: &Claims, now: UnixMs) -> Result<(), ProtoError> {
        if self.is_revoked(c) {
            return Err(ProtoError::new(
                None,
                ErrorCode::Revoked,
                "this token has been revoked",
            ));
        }
        if self.expired(c, now) {
            return Err(ProtoError::new(
                None,
                ErrorCode::Unauthorized,
                "token has expired",
            ));
        }
        Ok(())
    }

    /// Whether `c` expired before `now` (beyond the clock leeway).
    pub fn expired(&self, c: &Claims, now: UnixMs) -> bool {
        now.secs().as_secs() > c.exp + self.verifier.leeway_secs()
    }
}

/// A `hello` whose token was verified outside the core: the shells read a connection's first
/// frames with [`VerifiedHello::check`] on the connection's own task, so the Ed25519 work of a
/// flood of hellos never queues in front of other sessions' messages, and hand the result to
/// [`super::Core::hello_verified`].
#[derive(Debug, Clone)]
pub struct VerifiedHello {
    /// `hello.v`.
    pub v: u32,
    /// `hello.resume`.
    pub resume: Option<Resume>,
    /// The token's claims, or why it was refused (not checked when `v` is not spoken: that
    /// refusal comes first).
    pub token: Result<Claims, ProtoError>,
}

impl VerifiedHello {
    /// Reads `bytes` as a client message: `None` unless it is a `hello`, whose token is then
    /// verified with `gate` at `now` (signature, claims, revocations the gate knows).
    pub fn check(gate: &TokenGate, bytes: &[u8], now: UnixMs) -> Option<VerifiedHello> {
        let Ok(ClientMsg::Hello { v, token, resume }) = decode_client(bytes) else {
            return None;
        };
        let token = if v == VERSION {
            gate.authenticate(&token, now)
        } else {
            Err(ProtoError::new(
                None,
                ErrorCode::UnsupportedVersion,
                "not checked",
            ))
        };
        Some(VerifiedHello { v, resume, token })
    }
}

struct Conn {
    session: Option<String>,
    opened_at: UnixMs,
    tokens: f64,
    tokens_at: UnixMs,
    strikes: u32,
    closing: bool,
    /// The session synced its mailbox on this connection: live mail may follow.
    mail_ready: bool,
}

struct Session {
    claims: Claims,
    conn: Option<ConnId>,
    detached_at: Option<UnixMs>,
    events: VecDeque<(u64, Event)>,
    last_seq: u64,
}

/// The rate decision for one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// No such connection, or it is closing: drop the message.
    Drop,
    /// Within the rate; the connection's session, if it completed `hello`.
    Yes(Option<String>),
    /// Over the rate: refuse it; `flood` when this refusal closes the connection.
    Refuse {
        /// The refusal closes the connection.
        flood: bool,
    },
}

/// A `hello` that resumed a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The half-dead connection the session was still attached to: it must be told and closed.
    pub displaced: Option<ConnId>,
}

/// What the timers found due, in the order to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Detached longer than the resume grace: end it.
    GraceOver(String),
    /// Detached longer than the presence linger: its subject's presence may have changed.
    LingerOver(Subject),
}

/// A session that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Its claims.
    pub claims: Claims,
}

/// Every connection and session of the node.
pub struct Sessions {
    limits: SessionLimits,
    gate: TokenGate,
    conns: HashMap<ConnId, Conn>,
    sessions: HashMap<String, Session>,
    by_subject: HashMap<Subject, BTreeSet<String>>,
    detached: BTreeSet<String>,
}

fn random_id() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    /// No connections yet.
    pub fn new(limits: SessionLimits, verifier: TokenVerifier) -> Sessions {
        Sessions {
            limits,
            gate: TokenGate::new(verifier),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            by_subject: HashMap::new(),
            detached: BTreeSet::new(),
        }
    }

    /// The token gate.
    pub fn gate(&self) -> &TokenGate {
        &self.gate
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Sessions, attached or detached.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A new connection; it must send `hello` within the limit.
    pub fn open(&mut self, now: UnixMs, conn: ConnId) {
        self.conns.insert(
            conn,
            Conn {
                session: None,
                opened_at: now,
                tokens: self.limits.rate_burst,
                tokens_at: now,
                strikes: 0,
                closing: false,
                mail_ready: false,
            },
        );
    }

    /// The transport of `conn` is gone; its session (if still its own) is detached.
    pub fn closed(&mut self, now: UnixMs, conn: ConnId) {
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

    /// Charges one message to `conn`'s token bucket.
    pub fn admit(&mut self, now: UnixMs, conn: ConnId) -> Admit {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Admit::Drop;
        };
        if c.closing {
            return Admit::Drop;
        }
        let elapsed = now.ms_since(c.tokens_at) as f64 / 1000.0;
        c.tokens = (c.tokens + elapsed * self.limits.rate_per_sec).min(self.limits.rate_burst);
        c.tokens_at = now;
        if c.tokens < 1.0 {
            c.strikes += 1;
            return Admit::Refuse {
                flood: c.strikes >= self.limits.flood_close_after,
            };
        }
        c.tokens -= 1.0;
        c.strikes = 0;
        Admit::Yes(c.session.clone())
    }

    /// Marks `conn` closing; false if it already was (the close was already decided).
    pub fn start_closing(&mut self, conn: ConnId) -> bool {
        match self.conns.get_mut(&conn) {
            Some(c) if c.closing => false,
            Some(c) => {
                c.closing = true;
                true
            }
            None => true,
        }
    }

    /// Whether a close of `conn` has been decided.
    pub fn is_closing(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.closing)
    }

    /// See [`TokenGate::recheck`].
    pub fn recheck(&self, c: &Claims, now: UnixMs) -> Result<(), ProtoError> {
        self.gate.recheck(c, now)
    }

    /// Verifies a bearer token (see [`TokenGate::authenticate`]).
    pub fn authenticate(&self, token: &str, now: UnixMs) -> Result<Claims, ProtoError> {
        self.gate.authenticate(token, now)
    }

    /// Resumes session `sid` on `conn` with the (possibly newer) `claims`, when it exists and
    /// belongs to the same subject.
    pub fn resume(&mut self, conn: ConnId, sid: &str, claims: &Claims) -> Option<Resumed> {
        let s = self.sessions.get_mut(sid)?;
        if s.claims.sub != claims.sub {
            return None;
        }
        let displaced = s.conn.filter(|old| *old != conn);
        s.claims = claims.clone();
        s.conn = Some(conn);
        s.detached_at = None;
        self.detached.remove(sid);
        if let Some(old) = displaced {
            if let Some(c) = self.conns.get_mut(&old) {
                c.session = None;
            }
        }
        self.attach(conn, sid);
        Some(Resumed { displaced })
    }

    /// Whether a new session for `claims` fits the caps: the subject's own (by role) and the
    /// node's. Sessions awaiting resume count until they are resumed or their grace ends; a
    /// resume does not come here.
    pub fn may_create(&self, claims: &Claims) -> Result<(), ProtoError> {
        let cap = if matches!(claims.role, Role::Admin | Role::Commander | Role::Operator) {
            self.limits.max_per_console
        } else {
            self.limits.max_per_subject
        };
        let held = self.by_subject.get(&claims.sub).map_or(0, BTreeSet::len);
        if held >= cap {
            let m = format!(
                "{} already holds {held} sessions, the most its role ({}) may (close one, or resume it)",
                claims.sub, claims.role
            );
            return Err(ProtoError::new(None, ErrorCode::TooManySessions, m));
        }
        if self.sessions.len() >= self.limits.max_total {
            let m = format!(
                "this node holds its most sessions ({}); try again later",
                self.limits.max_total
            );
            return Err(ProtoError::new(None, ErrorCode::TooManySessions, m));
        }
        Ok(())
    }

    /// A new session for `claims` on `conn`; returns its id.
    pub fn create(&mut self, conn: ConnId, claims: &Claims) -> String {
        let sid = random_id();
        self.sessions.insert(
            sid.clone(),
            Session {
                claims: claims.clone(),
                conn: Some(conn),
                detached_at: None,
                events: VecDeque::new(),
                last_seq: 0,
            },
        );
        self.by_subject
            .entry(claims.sub.clone())
            .or_default()
            .insert(sid.clone());
        self.attach(conn, &sid);
        sid
    }

    fn attach(&mut self, conn: ConnId, sid: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(sid.to_owned());
        }
    }

    /// `seq` of the session's newest event.
    pub fn last_seq(&self, sid: &str) -> u64 {
        self.sessions.get(sid).map_or(0, |s| s.last_seq)
    }

    /// The events to replay to a client that processed up to `after`, and whether some were
    /// already dropped from the buffer (a gap).
    pub fn replay(&self, sid: &str, after: u64) -> (Vec<ServerMsg>, bool) {
        let Some(s) = self.sessions.get(sid) else {
            return (Vec::new(), false);
        };
        let oldest = s.events.front().map_or(s.last_seq + 1, |(q, _)| *q);
        let replay = s
            .events
            .iter()
            .filter(|(q, _)| *q > after)
            .map(|(q, e)| ServerMsg::Event {
                seq: *q,
                event: e.clone(),
            })
            .collect();
        (replay, after + 1 < oldest)
    }

    /// Numbers `event` for session `sid` and buffers it for replay; returns where to send it now
    /// (when attached). Roles that may not read incidents (devices) receive no events.
    pub fn push_event(&mut self, sid: &str, event: &Event) -> Option<(ConnId, ServerMsg)> {
        let cap = self.limits.replay_buffer;
        let s = self.sessions.get_mut(sid)?;
        if !s.claims.may(Action::ReadIncident) {
            return None;
        }
        s.last_seq += 1;
        let seq = s.last_seq;
        s.events.push_back((seq, event.clone()));
        while s.events.len() > cap {
            s.events.pop_front();
        }
        let conn = s.conn?;
        Some((
            conn,
            ServerMsg::Event {
                seq,
                event: event.clone(),
            },
        ))
    }

    /// The client processed events up to `after`: they leave the replay buffer.
    pub fn ack(&mut self, sid: &str, after: u64) {
        if let Some(s) = self.sessions.get_mut(sid) {
            while s.events.front().is_some_and(|(q, _)| *q <= after) {
                s.events.pop_front();
            }
        }
    }

    /// The claims of session `sid`.
    pub fn claims(&self, sid: &str) -> Option<&Claims> {
        self.sessions.get(sid).map(|s| &s.claims)
    }

    /// The connection session `sid` is attached to.
    pub fn conn_of(&self, sid: &str) -> Option<ConnId> {
        self.sessions.get(sid).and_then(|s| s.conn)
    }

    /// The sessions of `sub` (attached or detached).
    pub fn sessions_of(&self, sub: &Subject) -> Vec<String> {
        self.by_subject
            .get(sub)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Whether session `sid` counts as live: attached, or detached less than the linger ago.
    pub fn live(&self, now: UnixMs, sid: &str) -> bool {
        self.sessions
            .get(sid)
            .is_some_and(|s| self.attached_or_lingering(now, s))
    }

    fn attached_or_lingering(&self, now: UnixMs, s: &Session) -> bool {
        s.conn.is_some()
            || s.detached_at
                .is_some_and(|d| now < d.plus_ms(self.limits.presence_linger_ms))
    }

    /// Whether `sub` is online: one of its sessions other than `except` is live.
    pub fn subject_online(&self, now: UnixMs, sub: &Subject, except: Option<&str>) -> bool {
        self.by_subject.get(sub).is_some_and(|ss| {
            ss.iter()
                .filter(|s| Some(s.as_str()) != except)
                .filter_map(|s| self.sessions.get(s))
                .any(|s| self.attached_or_lingering(now, s))
        })
    }

    /// Connections of `sub` that may get live mail now (synced, not closing).
    pub fn mail_conns(&self, sub: &Subject) -> Vec<ConnId> {
        self.by_subject
            .get(sub)
            .into_iter()
            .flatten()
            .filter_map(|s| self.sessions.get(s).and_then(|x| x.conn))
            .filter(|c| {
                self.conns
                    .get(c)
                    .is_some_and(|x| x.mail_ready && !x.closing)
            })
            .collect()
    }

    /// Whether `conn` may get live mail (it synced its mailbox to the end).
    pub fn set_mail_ready(&mut self, conn: ConnId, ready: bool) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.mail_ready = ready;
        }
    }

    /// Applies `r`; returns the sessions it ends.
    pub fn revoke(&mut self, r: &Revocation) -> Vec<String> {
        self.gate.apply(r);
        let mut victims: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| self.gate.is_revoked(&s.claims))
            .map(|(id, _)| id.clone())
            .collect();
        victims.sort();
        victims
    }

    /// Connections that have not sent `hello` in time (and are not closing yet).
    pub fn late_hellos(&self, now: UnixMs) -> Vec<ConnId> {
        let mut late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.session.is_none()
                    && !c.closing
                    && now >= c.opened_at.plus_ms(self.limits.hello_timeout_ms)
            })
            .map(|(id, _)| *id)
            .collect();
        late.sort_unstable();
        late
    }

    /// Detached sessions whose grace or linger is over, in session order.
    pub fn detached_due(&mut self, now: UnixMs) -> Vec<Due> {
        let mut due = Vec::new();
        let detached: Vec<String> = self.detached.iter().cloned().collect();
        for sid in detached {
            let Some(s) = self.sessions.get(&sid) else {
                self.detached.remove(&sid);
                continue;
            };
            let d = s.detached_at.unwrap_or(now);
            if now >= d.plus_ms(self.limits.resume_grace_ms) {
                due.push(Due::GraceOver(sid));
            } else if now >= d.plus_ms(self.limits.presence_linger_ms) {
                due.push(Due::LingerOver(s.claims.sub.clone()));
            }
        }
        due
    }

    /// Sessions whose token has expired.
    pub fn expired(&self, now: UnixMs) -> Vec<String> {
        let mut out: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| self.gate.expired(&s.claims, now))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// Forgets session `sid` for good (its connection, if any, stays open without a session).
    pub fn end(&mut self, sid: &str) -> Option<Ended> {
        let s = self.sessions.remove(sid)?;
        self.detached.remove(sid);
        if let Some(ss) = self.by_subject.get_mut(&s.claims.sub) {
            ss.remove(sid);
            if ss.is_empty() {
                self.by_subject.remove(&s.claims.sub);
            }
        }
        if let Some(c) = self
            .conns
            .values_mut()
            .find(|c| c.session.as_deref() == Some(sid))
        {
            c.session = None;
        }
        Some(Ended { claims: s.claims })
    }
}
