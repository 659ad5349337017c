//! Virtual-time tests of the signaling core: no sockets, no clock.

use super::*;
use crate::auth::{TokenIssuer, TokenRequest};
use crate::proto::{encode, Resume};
use crate::proto::{DroneAckResult, OrderAnswer};
use crate::store::OrderState;
use crate::testkit;
use ed25519_dalek::SigningKey;

const T0: u64 = 1_780_000_000_000;

struct H {
    core: Core,
    issuer: TokenIssuer,
    now: u64,
    next_conn: ConnId,
    out: Vec<Output>,
}

impl H {
    fn new() -> H {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let node = NodeId::parse("node-a").unwrap();
        let issuer = TokenIssuer::new(key.clone(), node.clone());
        let mut v = TokenVerifier::new(node.clone());
        v.trust(key.verifying_key());
        H {
            core: Core::new(
                CoreConfig::default(),
                node,
                v,
                crate::store::Store::open_in_memory().unwrap(),
                T0,
            ),
            issuer,
            now: T0,
            next_conn: 1,
            out: Vec::new(),
        }
    }

    fn token_with(&self, sub: &str, role: Role, f: impl FnOnce(&mut TokenRequest)) -> String {
        let mut r = TokenRequest::new(Subject::parse(sub).unwrap(), role, "node-a", "00");
        f(&mut r);
        self.issuer.issue(&r, self.now / 1000)
    }

    fn token(&self, sub: &str, role: Role) -> String {
        self.token_with(sub, role, |_| {})
    }

    fn pump(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.out.push(o);
        }
    }

    fn send(&mut self, conn: ConnId, msg: &ClientMsg) {
        self.core.frame(self.now, conn, encode(msg).as_bytes());
        self.pump();
    }

    fn raw(&mut self, conn: ConnId, bytes: &[u8]) {
        self.core.frame(self.now, conn, bytes);
        self.pump();
    }

    /// Messages sent to `conn` since the last call (other outputs stay).
    fn take(&mut self, conn: ConnId) -> Vec<ServerMsg> {
        let mut mine = Vec::new();
        self.out.retain(|o| match o {
            Output::Send { conn: c, msg } | Output::Urgent { conn: c, msg } if *c == conn => {
                mine.push(msg.clone());
                false
            }
            _ => true,
        });
        mine
    }

    fn closed_with(&mut self, conn: ConnId) -> Option<ErrorCode> {
        self.out.iter().find_map(|o| match o {
            Output::Close { conn: c, code, .. } if *c == conn => Some(*code),
            _ => None,
        })
    }

    fn hello(&mut self, token: String, resume: Option<Resume>) -> (ConnId, Vec<ServerMsg>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.core.open(self.now, conn);
        self.send(
            conn,
            &ClientMsg::Hello {
                v: VERSION,
                token,
                resume,
            },
        );
        let msgs = self.take(conn);
        (conn, msgs)
    }

    /// Connects and syncs the mailbox, as the client library does.
    fn connect(&mut self, sub: &str, role: Role) -> (ConnId, Welcome) {
        let t = self.token(sub, role);
        let (conn, msgs) = self.hello(t, None);
        let w = match msgs.first() {
            Some(ServerMsg::Welcome(w)) => w.clone(),
            other => panic!("no welcome: {other:?}"),
        };
        self.send(conn, &ClientMsg::MailSync { id: 0, after: None });
        (conn, w)
    }

    /// Mail items delivered to `conn` since the last call, with their seqs.
    fn mails(&mut self, conn: ConnId) -> Vec<(u64, Value)> {
        self.take(conn)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Mail { seq, item } => Some((seq, wire(&item))),
                _ => None,
            })
            .collect()
    }

    fn request(&mut self, conn: ConnId, msg: ClientMsg) -> ServerMsg {
        let id = msg.id().expect("a request");
        self.send(conn, &msg);
        let msgs = self.take(conn);
        if let Some(m) = msgs.into_iter().find(|m| testkit::answers(m, id)) {
            return m;
        }
        // Authorised media requests go to the shell (the SFU); count them as allowed.
        let handed = self
            .out
            .iter()
            .any(|o| matches!(o, Output::Media { re, .. } if *re == id));
        assert!(handed, "no answer to {}", msg.kind());
        ServerMsg::Result {
            re: id,
            data: Value::String("handed to the media shell".into()),
        }
    }

    fn advance(&mut self, ms: u64) {
        // Timers run every 100 ms in the node; do the same.
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 100).min(end);
            self.core.handle_timeout(self.now);
            self.pump();
        }
    }

    fn events(&mut self, conn: ConnId) -> Vec<(u64, Value)> {
        self.take(conn)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Event { seq, event } => Some((seq, wire(&event))),
                _ => None,
            })
            .collect()
    }
}

/// An event or mail item as JSON, as a client reads it off the wire.
fn wire<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn kinds(evs: &[(u64, Value)], kind: &str) -> Vec<Value> {
    evs.iter()
        .filter(|(_, e)| e["kind"] == kind)
        .map(|(_, e)| e.clone())
        .collect()
}

fn pos(lat: f64) -> ClientMsg {
    ClientMsg::Position {
        id: None,
        pos: Position {
            lat,
            lon: 114.3,
            alt: Some(20.0),
            accuracy: Some(4.0),
            heading: Some(90.0),
            speed: Some(1.2),
            time: None,
        },
    }
}

#[test]
fn welcome_joins_duty_and_reports_identity() {
    let mut h = H::new();
    let (_c, w) = h.connect("off-1", Role::Officer);
    assert_eq!(w.v, 1);
    assert_eq!(w.node.as_str(), "node-a");
    assert_eq!(w.subject.as_str(), "off-1");
    assert_eq!(w.incidents, vec![duty()]);
    assert!(!w.resumed);
    assert_eq!(w.session.len(), 32);
}

#[test]
fn token_incidents_replace_duty() {
    let mut h = H::new();
    let t = h.token_with("off-1", Role::Officer, |r| {
        r.incidents = vec![IncidentId::parse("flood-3").unwrap()]
    });
    let (_c, msgs) = h.hello(t, None);
    let ServerMsg::Welcome(w) = &msgs[0] else {
        panic!()
    };
    assert_eq!(w.incidents, vec![IncidentId::parse("flood-3").unwrap()]);
}

#[test]
fn handshake_refusals_are_typed_and_close() {
    let mut h = H::new();
    // Wrong version.
    let conn = 100;
    h.core.open(h.now, conn);
    let t = h.token("off-1", Role::Officer);
    h.send(
        conn,
        &ClientMsg::Hello {
            v: 2,
            token: t,
            resume: None,
        },
    );
    let m = h.take(conn);
    assert!(
        matches!(&m[0], ServerMsg::Error { code: ErrorCode::UnsupportedVersion, message, .. } if message.contains("[1]"))
    );
    assert_eq!(h.closed_with(conn), Some(ErrorCode::UnsupportedVersion));
    // Not hello first.
    let conn = 101;
    h.core.open(h.now, conn);
    h.send(conn, &ClientMsg::Ping { id: 1 });
    assert!(matches!(
        &h.take(conn)[0],
        ServerMsg::Error {
            code: ErrorCode::BadHello,
            ..
        }
    ));
    assert_eq!(h.closed_with(conn), Some(ErrorCode::BadHello));
    // Forged: signed by another key.
    let other = TokenIssuer::new(
        SigningKey::from_bytes(&[9u8; 32]),
        NodeId::parse("node-a").unwrap(),
    );
    let forged = other.issue(
        &TokenRequest::new(
            Subject::parse("off-1").unwrap(),
            Role::Admin,
            "node-a",
            "00",
        ),
        h.now / 1000,
    );
    let (c, m) = h.hello(forged, None);
    assert!(
        matches!(
            &m[0],
            ServerMsg::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{m:?}"
    );
    assert_eq!(h.closed_with(c), Some(ErrorCode::Unauthorized));
    // Expired.
    let expired = h.token_with("off-1", Role::Officer, |r| r.ttl_secs = 1);
    h.now += 120_000;
    let (c, m) = h.hello(expired, None);
    assert!(
        matches!(&m[0], ServerMsg::Error { code: ErrorCode::Unauthorized, message, .. } if message.contains("expired"))
    );
    assert_eq!(h.closed_with(c), Some(ErrorCode::Unauthorized));
    // Wrong audience.
    let wrong = h.token_with("off-1", Role::Officer, |r| r.aud = "node-b".into());
    let (c, m) = h.hello(wrong, None);
    assert!(
        matches!(&m[0], ServerMsg::Error { code: ErrorCode::Unauthorized, message, .. } if message.contains("another node"))
    );
    assert_eq!(h.closed_with(c), Some(ErrorCode::Unauthorized));
    // No hello at all within the deadline.
    let conn = 102;
    h.core.open(h.now, conn);
    h.advance(10_100);
    assert_eq!(h.closed_with(conn), Some(ErrorCode::BadHello));
}

#[test]
fn every_cell_of_the_role_matrix() {
    let mut h = H::new();
    let mut id = 1;
    for role in Role::ALL {
        let sub = format!("{}-1", role.as_str());
        let (conn, _) = h.connect(&sub, role);
        for action in Action::ALL {
            id += 1;
            let reply = h.request(
                conn,
                testkit::probe(action, &Subject::parse(&sub).unwrap(), id),
            );
            let denied = testkit::is_forbidden(&reply, id);
            assert_eq!(denied, !role.may(action), "{role} {action}: {reply:?}");
            if let Some(msg) = testkit::probe_without_reply(action, &Subject::parse(&sub).unwrap())
            {
                h.send(conn, &msg);
                let answers = h.take(conn);
                let denied = answers.iter().any(testkit::is_forbidden_without_re);
                assert_eq!(
                    denied,
                    !role.may(action),
                    "{role} {action} ({}): {answers:?}",
                    msg.kind()
                );
                assert!(
                    denied || answers.iter().all(|m| matches!(m, ServerMsg::Event { .. })),
                    "{answers:?}"
                );
            }
        }
    }
}

#[test]
fn positions_reach_members_coalesced_and_units_show_them() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, _) = h.connect("off-1", Role::Officer);
    h.take(op);
    // Ten reports in 100 ms: one goes out at once, the newest at the end of the interval.
    for i in 0..10 {
        h.send(off, &pos(30.0 + f64::from(i) * 0.001));
        h.now += 10;
    }
    let evs = kinds(&h.events(op), "position");
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["lat"], 30.0);
    assert_eq!(evs[0]["subject"], "off-1");
    // The held one is due exactly at the end of the window.
    assert_eq!(h.core.next_position_due(), Some(T0 + 200));
    h.advance(200);
    assert_eq!(h.core.next_position_due(), None);
    let evs = kinds(&h.events(op), "position");
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["lat"], 30.009);
    assert!(
        h.events(off).is_empty(),
        "the sender does not get its own position"
    );
    let claims = h
        .core
        .authenticate(&h.token("op-1", Role::Operator), h.now)
        .unwrap();
    let units = h.core.units_for(h.now, &claims, None);
    let u = units
        .iter()
        .find(|u| u.subject.as_str() == "off-1")
        .unwrap();
    assert!(u.online);
    assert_eq!(u.position.as_ref().unwrap().lat, 30.009);
    // Bad coordinates are refused with a typed error (re: null without an id).
    h.send(off, &pos(123.0));
    assert!(matches!(
        &h.take(off)[0],
        ServerMsg::Error {
            re: None,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
}

#[test]
fn detached_session_resumes_with_replay_and_no_presence_flap() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, w) = h.connect("off-1", Role::Officer);
    h.take(op);
    h.send(op, &pos(31.0));
    let seen = h.events(off);
    let last = seen.last().unwrap().0;
    h.core.closed(h.now, off);
    // Cut off for 3 s: the operator keeps moving.
    for lat in [31.1, 31.2, 31.3] {
        h.advance(1000);
        h.send(op, &pos(lat));
    }
    let (off2, msgs) = h.hello(
        h.token("off-1", Role::Officer),
        Some(Resume {
            session: w.session.clone(),
            after: last,
        }),
    );
    let ServerMsg::Welcome(w2) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert!(w2.resumed && !w2.gap);
    assert_eq!(w2.session, w.session);
    let replay: Vec<f64> = msgs[1..]
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Event {
                event: Event::Position { pos, .. },
                ..
            } => Some(pos.lat),
            _ => None,
        })
        .collect();
    assert_eq!(replay, vec![31.1, 31.2, 31.3], "{msgs:?}");
    let seqs: Vec<u64> = msgs[1..]
        .iter()
        .filter_map(|m| {
            if let ServerMsg::Event { seq, .. } = m {
                Some(*seq)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(seqs.first(), Some(&(last + 1)));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    // The operator never saw the officer go offline.
    assert!(kinds(&h.events(op), "presence")
        .iter()
        .all(|e| e["online"] == true));
    let _ = off2;
}

#[test]
fn dead_client_goes_offline_after_linger_and_session_expires_after_grace() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, w) = h.connect("off-1", Role::Officer);
    h.take(op);
    h.core.closed(h.now, off);
    h.advance(3_900);
    assert!(kinds(&h.events(op), "presence").is_empty());
    h.advance(200);
    let p = kinds(&h.events(op), "presence");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["online"], false);
    h.advance(120_000);
    assert_eq!(h.core.session_count(), 1);
    // Too late to resume: a new session.
    let (_c, msgs) = h.hello(
        h.token("off-1", Role::Officer),
        Some(Resume {
            session: w.session,
            after: 0,
        }),
    );
    let ServerMsg::Welcome(w2) = &msgs[0] else {
        panic!()
    };
    assert!(!w2.resumed);
}

#[test]
fn resume_on_a_new_connection_replaces_a_half_dead_one() {
    let mut h = H::new();
    let (c1, w) = h.connect("off-1", Role::Officer);
    let (c2, msgs) = h.hello(
        h.token("off-1", Role::Officer),
        Some(Resume {
            session: w.session.clone(),
            after: 0,
        }),
    );
    assert!(matches!(&msgs[0], ServerMsg::Welcome(w2) if w2.resumed));
    assert_eq!(h.closed_with(c1), Some(ErrorCode::SessionClosed));
    // The old connection's close does not detach the resumed session.
    h.core.closed(h.now, c1);
    let r = h.request(c2, ClientMsg::Ping { id: 5 });
    assert!(matches!(r, ServerMsg::Result { .. }));
    // Another subject cannot take the session over.
    let (_c3, msgs) = h.hello(
        h.token("off-2", Role::Officer),
        Some(Resume {
            session: w.session,
            after: 0,
        }),
    );
    assert!(
        matches!(&msgs[0], ServerMsg::Welcome(w3) if !w3.resumed && w3.subject.as_str() == "off-2")
    );
}

#[test]
fn revocation_closes_live_sessions_and_refuses_old_tokens_only() {
    let mut h = H::new();
    let old = h.token("off-1", Role::Officer);
    let (c, _) = h.hello(old.clone(), None);
    let (admin, _) = h.connect("admin-1", Role::Admin);
    let r = h.request(
        admin,
        ClientMsg::Revoke {
            id: 1,
            sub: Some(Subject::parse("off-1").unwrap()),
            jti: None,
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    assert!(h.take(c).iter().any(|m| matches!(
        m,
        ServerMsg::Error {
            code: ErrorCode::Revoked,
            ..
        }
    )));
    assert_eq!(h.closed_with(c), Some(ErrorCode::Revoked));
    assert!(h
        .out
        .iter()
        .any(|o| matches!(o, Output::Revoked(Revocation::Subject { .. }))));
    let (_c, m) = h.hello(old, None);
    assert!(matches!(
        &m[0],
        ServerMsg::Error {
            code: ErrorCode::Revoked,
            ..
        }
    ));
    // A token issued after the revocation works.
    h.now += 2000;
    let (_c, m) = h.hello(h.token("off-1", Role::Officer), None);
    assert!(matches!(&m[0], ServerMsg::Welcome(_)), "{m:?}");
    // By token id.
    let t = h.token("off-2", Role::Officer);
    let jti = crate::auth::decode_unverified(&t).unwrap().jti;
    let (c2, _) = h.hello(t, None);
    h.core.apply_revocation(
        h.now,
        &Revocation::Token {
            jti: jti.to_string(),
        },
    );
    h.pump();
    assert_eq!(h.closed_with(c2), Some(ErrorCode::Revoked));
}

#[test]
fn incidents_create_assign_join_log() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    let (off2, _) = h.connect("off-2", Role::Officer);
    let r = h.request(
        cmd,
        ClientMsg::IncidentCreate {
            id: 1,
            incident: Some(IncidentId::parse("fire-9").unwrap()),
            name: "Warehouse fire".into(),
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    let fire = IncidentId::parse("fire-9").unwrap();
    // Not assigned: may not join.
    let r = h.request(
        off,
        ClientMsg::Join {
            id: 2,
            incident: fire.clone(),
        },
    );
    assert!(matches!(
        r,
        ServerMsg::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    // Assigning joins live sessions at once.
    h.request(
        cmd,
        ClientMsg::Assign {
            id: 3,
            incident: fire.clone(),
            subject: Subject::parse("off-1").unwrap(),
        },
    );
    assert!(kinds(&h.events(off), "assigned").len() == 1);
    // Chat reaches members of the incident only.
    h.take(off2);
    let r = h.request(
        cmd,
        ClientMsg::Chat {
            id: 4,
            msg_id: None,
            incident: Some(fire.clone()),
            to: None,
            text: "evacuate block B".into(),
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }));
    assert_eq!(kinds(&h.mails(off), "chat")[0]["text"], "evacuate block B");
    assert!(kinds(&h.mails(off2), "chat").is_empty());
    // An officer cannot read a log of an incident it is not in.
    let r = h.request(
        off2,
        ClientMsg::Log {
            id: 5,
            incident: fire.clone(),
            after: 0,
            limit: None,
        },
    );
    assert!(matches!(
        r,
        ServerMsg::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    h.request(
        cmd,
        ClientMsg::IncidentClose {
            id: 6,
            incident: fire.clone(),
        },
    );
    let r = h.request(
        cmd,
        ClientMsg::Log {
            id: 7,
            incident: fire.clone(),
            after: 0,
            limit: None,
        },
    );
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    let what: Vec<&str> = data["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        what,
        vec!["created", "joined", "assigned", "joined", "chat", "closed", "left", "left"]
    );
    assert!(data["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["time"].as_u64().unwrap() >= T0));
    // Closed: no joins; duty cannot be closed.
    let r = h.request(
        cmd,
        ClientMsg::Join {
            id: 8,
            incident: fire,
        },
    );
    assert!(matches!(
        r,
        ServerMsg::Error {
            code: ErrorCode::Conflict,
            ..
        }
    ));
    let r = h.request(
        cmd,
        ClientMsg::IncidentClose {
            id: 9,
            incident: duty(),
        },
    );
    assert!(matches!(
        r,
        ServerMsg::Error {
            code: ErrorCode::Conflict,
            ..
        }
    ));
}

#[test]
fn bad_input_gets_typed_errors_and_a_flood_closes_only_that_connection() {
    let mut h = H::new();
    let (a, _) = h.connect("off-1", Role::Officer);
    let (b, _) = h.connect("off-2", Role::Officer);
    let errors = |h: &mut H, c| -> Vec<(Option<u64>, ErrorCode)> {
        h.take(c)
            .into_iter()
            .filter_map(|m| {
                if let ServerMsg::Error { re, code, .. } = m {
                    Some((re, code))
                } else {
                    None
                }
            })
            .collect()
    };
    h.raw(a, b"{oops");
    assert_eq!(errors(&mut h, a), vec![(None, ErrorCode::BadRequest)]);
    h.raw(a, br#"{"type":"warp","id":3}"#);
    assert_eq!(errors(&mut h, a), vec![(Some(3), ErrorCode::UnknownType)]);
    h.raw(a, br#"{"type":"join","id":4}"#);
    assert_eq!(errors(&mut h, a), vec![(Some(4), ErrorCode::BadRequest)]);
    assert_eq!(
        h.closed_with(a),
        None,
        "a bad message does not end the session"
    );
    h.raw(a, br#"{"type":"hello","v":1,"token":"x"}"#);
    assert_eq!(errors(&mut h, a), vec![(None, ErrorCode::BadHello)]);
    assert_eq!(h.closed_with(a), Some(ErrorCode::BadHello));
    // Flood: 400 burst, then refusals, then the close.
    let (f, _) = h.connect("off-3", Role::Officer);
    for i in 0..1000 {
        h.send(f, &ClientMsg::Ping { id: i });
    }
    let msgs = h.take(f);
    assert!(msgs.iter().any(|m| matches!(
        m,
        ServerMsg::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    )));
    assert_eq!(h.closed_with(f), Some(ErrorCode::RateLimited));
    let r = h.request(b, ClientMsg::Ping { id: 1 });
    assert!(matches!(r, ServerMsg::Result { .. }));
}

#[test]
fn devices_send_into_incidents_but_receive_nothing_from_them() {
    let mut h = H::new();
    let (dev, _) = h.connect("cam-1", Role::Device);
    let (op, _) = h.connect("op-1", Role::Operator);
    h.take(op);
    h.request(
        op,
        ClientMsg::Chat {
            id: 1,
            msg_id: None,
            incident: Some(duty()),
            to: None,
            text: "for humans".into(),
        },
    );
    h.send(op, &pos(30.0));
    assert!(h.events(dev).is_empty(), "a device may not read incidents");
    // …but what it sends reaches members.
    h.send(dev, &pos(29.0));
    assert_eq!(kinds(&h.events(op), "position")[0]["subject"], "cam-1");
    let r = h.request(
        dev,
        ClientMsg::Sos {
            id: 2,
            msg_id: None,
            incident: None,
            text: None,
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    assert_eq!(kinds(&h.mails(op), "sos")[0]["from"], "cam-1");
}

#[test]
fn unassigning_tells_the_subject_and_sos_needs_an_incident() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    let fire = IncidentId::parse("fire-1").unwrap();
    h.request(
        cmd,
        ClientMsg::IncidentCreate {
            id: 1,
            incident: Some(fire.clone()),
            name: "Fire".into(),
        },
    );
    h.request(
        cmd,
        ClientMsg::Assign {
            id: 2,
            incident: fire.clone(),
            subject: Subject::parse("off-1").unwrap(),
        },
    );
    h.take(off);
    h.request(
        cmd,
        ClientMsg::Unassign {
            id: 3,
            incident: fire.clone(),
            subject: Subject::parse("off-1").unwrap(),
        },
    );
    let evs = h.events(off);
    assert_eq!(kinds(&evs, "unassigned")[0]["incident"], "fire-1");
    // Out of every incident: an SOS has nobody to reach, and says so.
    h.request(
        off,
        ClientMsg::Leave {
            id: 4,
            incident: duty(),
        },
    );
    let r = h.request(
        off,
        ClientMsg::Sos {
            id: 5,
            msg_id: None,
            incident: None,
            text: None,
        },
    );
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn orders_flow_sent_delivered_accepted_done_and_only_the_addressee_answers() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    let (other, _) = h.connect("off-2", Role::Officer);
    let order = |id, msg_id: &str| ClientMsg::Order {
        id,
        msg_id: Some(msg_id.into()),
        incident: duty(),
        to: Subject::parse("off-1").unwrap(),
        text: "Evacuate Jiefang Road 12".into(),
    };
    let r = h.request(cmd, order(1, "o-1"));
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    let oid = data["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(data["order"]["state"], "sent");
    // A retry (lost acknowledgement) stores nothing new.
    let r = h.request(cmd, order(2, "o-1"));
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(data["order"]["id"], oid.as_str());
    let m = h.mails(off);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].0, m[0].1["order"].as_str()), (1, Some(oid.as_str())));
    // The device acknowledges: delivered, and the sender is told.
    h.send(off, &ClientMsg::MailAck { upto: 1 });
    let states = |h: &mut H| -> Vec<String> {
        h.mails(cmd)
            .into_iter()
            .filter(|(_, i)| i["kind"] == "order_state")
            .map(|(_, i)| i["state"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(states(&mut h), vec!["delivered"]);
    // Someone else may not answer it.
    let ans = |id, a: OrderAnswer, eta: Option<u32>, reason: Option<&str>| ClientMsg::OrderAnswer {
        id,
        msg_id: None,
        order: oid.clone(),
        answer: a,
        eta_min: eta,
        reason: reason.map(str::to_owned),
    };
    let r = h.request(other, ans(3, OrderAnswer::Accept, Some(5), None));
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.request(cmd, ans(4, OrderAnswer::Accept, Some(5), None));
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{r:?}"
    );
    // Done before accepted is not a valid transition.
    let r = h.request(off, ans(5, OrderAnswer::Done, None, None));
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::Conflict,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.request(off, ans(6, OrderAnswer::Accept, Some(12), None));
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    // Answering twice the same way is a retry, not an error.
    let r = h.request(off, ans(7, OrderAnswer::Accept, Some(12), None));
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    h.request(off, ans(8, OrderAnswer::Done, None, None));
    assert_eq!(states(&mut h), vec!["accepted", "done"]);
    let claims = h
        .core
        .authenticate(&h.token("cmd-1", Role::Commander), h.now)
        .unwrap();
    let o = &h.core.orders_for(&claims, 10).unwrap()[0];
    assert_eq!((o.state, o.eta_min), (OrderState::Done, Some(12)));
    assert!(o.delivered_at.is_some() && o.accepted_at.is_some() && o.done_at.is_some());
    // Declining needs a reason.
    h.request(cmd, order(9, "o-2"));
    let oid2 = h.mails(off)[0].1["order"].as_str().unwrap().to_owned();
    let r = h.request(
        off,
        ClientMsg::OrderAnswer {
            id: 10,
            msg_id: None,
            order: oid2,
            answer: OrderAnswer::Decline,
            eta_min: None,
            reason: None,
        },
    );
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn a_chat_whose_msg_id_an_order_used_is_stored_and_delivered_not_acked_for_the_order() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    let r = h.request(
        cmd,
        ClientMsg::Order {
            id: 1,
            msg_id: Some("m-7".into()),
            incident: duty(),
            to: Subject::parse("off-1").unwrap(),
            text: "Go to gate 3".into(),
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    assert_eq!(kinds(&h.mails(off), "order").len(), 1);
    let r = h.request(
        cmd,
        ClientMsg::Chat {
            id: 2,
            msg_id: Some("m-7".into()),
            incident: None,
            to: Some(Subject::parse("off-1").unwrap()),
            text: "Bring sandbags".into(),
        },
    );
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    let chats = kinds(&h.mails(off), "chat");
    assert_eq!(chats.len(), 1, "the chat is delivered");
    assert_eq!(chats[0]["text"], "Bring sandbags");
    assert_eq!(
        data["item"], chats[0]["id"],
        "the ack names the chat, not the order"
    );
    // A retry of the chat is still a retry.
    let r = h.request(
        cmd,
        ClientMsg::Chat {
            id: 3,
            msg_id: Some("m-7".into()),
            incident: None,
            to: Some(Subject::parse("off-1").unwrap()),
            text: "Bring sandbags".into(),
        },
    );
    let ServerMsg::Result { data: again, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(again["item"], data["item"]);
    assert!(h.mails(off).is_empty(), "stored once");
}

#[test]
fn an_order_to_a_subject_that_never_connected_is_refused_and_not_stored() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    h.core.closed(h.now, off);
    let order = |id, to: &str| ClientMsg::Order {
        id,
        msg_id: Some(format!("o-{id}")),
        incident: duty(),
        to: Subject::parse(to).unwrap(),
        text: "Go to gate 3".into(),
    };
    let r = h.request(cmd, order(1, "off-99"));
    match &r {
        ServerMsg::Error { re, code, message } => {
            assert_eq!((*re, *code), (Some(1), ErrorCode::UnknownRecipient));
            assert!(message.contains("off-99"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let claims = h
        .core
        .authenticate(&h.token("cmd-1", Role::Commander), h.now)
        .unwrap();
    assert!(
        h.core.orders_for(&claims, 10).unwrap().is_empty(),
        "nothing stored"
    );
    // Offline now, but it has been here: the order waits in its mailbox.
    let r = h.request(cmd, order(2, "off-1"));
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    // The node remembers who has been here across a restart (the store does).
    let mut store = crate::store::Store::open_in_memory().unwrap();
    store
        .note_subject(&Subject::parse("off-5").unwrap(), UnixMs(T0))
        .unwrap();
    let mut h2 = H::new();
    h2.core = Core::new(
        CoreConfig::default(),
        NodeId::parse("node-a").unwrap(),
        {
            let mut v = TokenVerifier::new(NodeId::parse("node-a").unwrap());
            v.trust(SigningKey::from_bytes(&[7u8; 32]).verifying_key());
            v
        },
        store,
        T0,
    );
    let (cmd2, _) = h2.connect("cmd-1", Role::Commander);
    let r = h2.request(cmd2, order(3, "off-5"));
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
}

#[test]
fn mail_waits_for_offline_subjects_and_replays_from_the_cursor() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, _) = h.connect("off-1", Role::Officer);
    h.core.closed(h.now, off);
    for i in 0..5 {
        h.request(
            op,
            ClientMsg::Chat {
                id: i,
                msg_id: Some(format!("c{i}")),
                incident: None,
                to: Some(Subject::parse("off-1").unwrap()),
                text: format!("msg {i}"),
            },
        );
    }
    // Back, on a new session: nothing arrives until it syncs, then all five in order.
    let t = h.token("off-1", Role::Officer);
    let (c2, msgs) = h.hello(t, None);
    let ServerMsg::Welcome(w) = &msgs[0] else {
        panic!()
    };
    assert_eq!((w.mail_last, w.mail_acked), (5, 0));
    h.send(
        c2,
        &ClientMsg::MailSync {
            id: 1,
            after: Some(2),
        },
    );
    let m = h.mails(c2);
    assert_eq!(m.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4, 5]);
    h.send(c2, &ClientMsg::MailAck { upto: 5 });
    // A read receipt goes back to the sender.
    let item = m[0].1["id"].as_u64().unwrap();
    h.take(op);
    let r = h.request(c2, ClientMsg::Read { id: 2, item });
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    let rec = kinds(&h.mails(op), "read");
    assert_eq!(
        (rec[0]["item"].as_u64(), rec[0]["by"].as_str()),
        (Some(item), Some("off-1"))
    );
}

#[test]
fn sos_is_urgent_reaches_commanders_and_stays_raised_until_acknowledged() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, _) = h.connect("off-1", Role::Officer);
    h.send(off, &pos(30.5));
    h.out.clear();
    let r = h.request(
        off,
        ClientMsg::Sos {
            id: 1,
            msg_id: Some("s1".into()),
            incident: None,
            text: Some("trapped".into()),
        },
    );
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    let sos = data["sos"].as_str().unwrap().to_owned();
    assert!(h
        .out
        .iter()
        .any(|o| matches!(o, Output::Urgent { conn, .. } if *conn == cmd)));
    let m = kinds(&h.mails(op), "sos");
    assert_eq!(
        (m[0]["text"].as_str(), m[0]["position"]["lat"].as_f64()),
        (Some("trapped"), Some(30.5))
    );
    // Officers may not acknowledge; operators may.
    let r = h.request(
        off,
        ClientMsg::SosAck {
            id: 2,
            sos: sos.clone(),
        },
    );
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.request(
        op,
        ClientMsg::SosAck {
            id: 3,
            sos: sos.clone(),
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    assert_eq!(kinds(&h.mails(off), "sos_ack")[0]["by"], "op-1");
    assert_eq!(kinds(&h.mails(cmd), "sos_ack")[0]["sos"], sos.as_str());
    let r = h.request(cmd, ClientMsg::SosAck { id: 4, sos });
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Drones: telemetry, link, commands.

const DRONE: &str = "pilot-3-drone1";

fn telem(time: u64, lat: f64) -> ClientMsg {
    ClientMsg::Telemetry {
        drone: DRONE.into(),
        t: Box::new(Telemetry {
            time: UnixMs(time),
            lat: Some(lat),
            lon: Some(114.3),
            alt_amsl: Some(80.0),
            ..Telemetry::default()
        }),
    }
}

fn log_of(h: &mut H, conn: ConnId, what: &str) -> Vec<Value> {
    let r = h.request(
        conn,
        ClientMsg::Log {
            id: 90_000,
            incident: duty(),
            after: 0,
            limit: None,
        },
    );
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    data["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["what"] == what)
        .cloned()
        .collect()
}

fn command(id: RequestId, drone: &str, command: DroneCommand) -> ClientMsg {
    ClientMsg::DroneCommand {
        id,
        drone: drone.into(),
        command,
        lat: None,
        lon: None,
        alt: None,
    }
}

fn error_code(m: &ServerMsg) -> Option<ErrorCode> {
    if let ServerMsg::Error { code, .. } = m {
        Some(*code)
    } else {
        None
    }
}

#[test]
fn telemetry_at_50hz_reaches_consoles_merged_at_5hz_and_units_show_the_drone() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, _) = h.connect("off-1", Role::Officer);
    let (pilot, _) = h.connect("pilot-3", Role::Pilot);
    h.take(op);
    h.take(off);
    // The first report carries the battery; later ones only the position.
    h.send(
        pilot,
        &ClientMsg::Telemetry {
            drone: DRONE.into(),
            t: Box::new(Telemetry {
                time: UnixMs(h.now),
                battery_pct: Some(88.0),
                mode: Some("GUIDED".into()),
                ..Telemetry::default()
            }),
        },
    );
    let mut seen: Vec<(u64, Value)> = Vec::new();
    let mut last_lat = 0.0;
    // 2 s at 50 Hz; the shell wakes whenever the core says a fan-out is due.
    for i in 0..100u32 {
        last_lat = 30.0 + f64::from(i) * 1e-4;
        h.send(pilot, &telem(h.now, last_lat));
        for e in kinds(&h.events(op), "telemetry") {
            seen.push((h.now, e));
        }
        let next = h.now + 20;
        while let Some(due) = h.core.next_fanout_due().filter(|d| *d <= next) {
            h.now = due.max(h.now);
            h.core.handle_timeout(h.now);
            h.pump();
            for e in kinds(&h.events(op), "telemetry") {
                seen.push((h.now, e));
            }
        }
        h.now = next;
    }
    h.advance(300);
    for e in kinds(&h.events(op), "telemetry") {
        seen.push((h.now, e));
    }
    assert!(
        (10..=12).contains(&seen.len()),
        "{} telemetry events in 2 s",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[1].0 >= w[0].0 + 200),
        "faster than 5 Hz: {:?}",
        seen.iter().map(|s| s.0 - T0).collect::<Vec<_>>()
    );
    let last = &seen.last().unwrap().1;
    assert_eq!(last["drone"], DRONE);
    assert_eq!(last["t"]["lat"], last_lat, "the newest state goes out last");
    assert_eq!(last["t"]["battery_pct"], 88.0, "fields are merged");
    assert_eq!(last["t"]["mode"], "GUIDED");
    assert!(
        kinds(&h.events(off), "telemetry").is_empty(),
        "only consoles get telemetry"
    );
    assert!(
        kinds(&h.events(pilot), "telemetry").is_empty(),
        "not the bridge itself"
    );
    // Units: the drone, with position and telemetry; people as before plus kind.
    let claims = h
        .core
        .authenticate(&h.token("op-1", Role::Operator), h.now)
        .unwrap();
    let units = serde_json::to_value(h.core.units_for(h.now, &claims, None)).unwrap();
    let units = units.as_array().unwrap();
    let d = units
        .iter()
        .find(|u| u["subject"] == DRONE)
        .expect("the drone is a unit");
    assert_eq!(
        (d["kind"].as_str(), d["bridge"].as_str(), d["link"].as_str()),
        (Some("drone"), Some("pilot-3"), Some("up"))
    );
    assert_eq!(
        (d["online"].as_bool(), d["role"].as_str()),
        (Some(true), Some("pilot"))
    );
    assert_eq!(
        (d["position"]["lat"].as_f64(), d["position"]["alt"].as_f64()),
        (Some(last_lat), Some(80.0))
    );
    assert_eq!(d["telemetry"]["battery_pct"], 88.0);
    assert_eq!(d["incidents"], json!(["duty"]));
    let p = units.iter().find(|u| u["subject"] == "off-1").unwrap();
    assert_eq!(p["kind"], "person");
    assert!(
        p.get("bridge").is_none() && p.get("link").is_none() && p.get("telemetry").is_none(),
        "{p}"
    );
    // Telemetry for someone else's drone, by a role without the right, or malformed: refused
    // without `re`, nothing changes.
    h.send(off, &telem(h.now, 1.0));
    assert!(matches!(
        &h.take(off)[..],
        [
            ..,
            ServerMsg::Error {
                re: None,
                code: ErrorCode::Forbidden,
                ..
            }
        ]
    ));
    let (p4, _) = h.connect("pilot-4", Role::Pilot);
    h.take(p4);
    h.send(p4, &telem(h.now, 1.0));
    assert!(matches!(
        &h.take(p4)[..],
        [ServerMsg::Error {
            re: None,
            code: ErrorCode::Forbidden,
            ..
        }]
    ));
    h.take(pilot);
    h.send(
        pilot,
        &ClientMsg::Telemetry {
            drone: DRONE.into(),
            t: Box::new(Telemetry {
                time: UnixMs(h.now),
                lat: Some(99.0),
                lon: Some(1.0),
                ..Telemetry::default()
            }),
        },
    );
    assert!(matches!(
        &h.take(pilot)[..],
        [ServerMsg::Error {
            re: None,
            code: ErrorCode::BadRequest,
            ..
        }]
    ));
    let units = h.core.units_for(h.now, &claims, None);
    let d = units.iter().find(|u| u.subject.as_str() == DRONE).unwrap();
    assert_eq!(d.position.as_ref().unwrap().lat, last_lat);
}

#[test]
fn drone_link_loss_is_an_event_and_a_log_entry_and_a_gone_bridge_means_offline() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (pilot, _) = h.connect("pilot-3", Role::Pilot);
    h.send(pilot, &telem(h.now, 30.0));
    h.take(op);
    h.take(pilot);
    h.send(
        pilot,
        &ClientMsg::DroneLink {
            drone: DRONE.into(),
            up: false,
        },
    );
    assert!(h.take(pilot).is_empty(), "no reply");
    assert_eq!(
        kinds(&h.events(op), "drone_link"),
        vec![json!({"kind": "drone_link", "drone": DRONE, "up": false})]
    );
    // The same state again is not news.
    h.send(
        pilot,
        &ClientMsg::DroneLink {
            drone: DRONE.into(),
            up: false,
        },
    );
    assert!(kinds(&h.events(op), "drone_link").is_empty());
    let claims = h
        .core
        .authenticate(&h.token("op-1", Role::Operator), h.now)
        .unwrap();
    let unit = |h: &H| {
        h.core
            .units_for(h.now, &claims, None)
            .into_iter()
            .find(|u| u.subject.as_str() == DRONE)
            .unwrap()
    };
    let u = unit(&h);
    assert_eq!((u.link, u.online), (Some(LinkState::Lost), false));
    h.send(
        pilot,
        &ClientMsg::DroneLink {
            drone: DRONE.into(),
            up: true,
        },
    );
    assert_eq!(kinds(&h.events(op), "drone_link")[0]["up"], true);
    assert!(unit(&h).online);
    let log = log_of(&mut h, op, "drone_link");
    let details: Vec<Value> = log.iter().map(|e| e["detail"].clone()).collect();
    assert_eq!(
        details,
        vec![
            json!({"drone": DRONE, "up": false}),
            json!({"drone": DRONE, "up": true})
        ]
    );
    assert_eq!(log[0]["who"], "pilot-3");
    // The bridge session ends: the drone stays listed, offline, in the incidents it was in.
    h.send(pilot, &ClientMsg::Bye);
    let u = unit(&h);
    assert_eq!(
        (u.online, u.link, u.incidents.clone()),
        (false, Some(LinkState::Up), vec![duty()])
    );
}

#[test]
fn drone_commands_go_to_the_bridge_and_acks_come_back_all_logged() {
    let mut h = H::new();
    let (cmdr, _) = h.connect("cmd-1", Role::Commander);
    let (pilot, _) = h.connect("pilot-3", Role::Pilot);
    let (off, _) = h.connect("off-1", Role::Officer);
    let (p4, _) = h.connect("pilot-4", Role::Pilot);
    h.take(p4);
    // Not connected yet.
    let r = h.request(cmdr, command(1, DRONE, DroneCommand::Rtl));
    assert_eq!(error_code(&r), Some(ErrorCode::NotFound), "{r:?}");
    h.send(pilot, &telem(h.now, 30.0));
    h.take(pilot);
    h.out.clear();
    // A commander's RTL: sent, on the bridge's urgent lane.
    let r = h.request(cmdr, command(2, DRONE, DroneCommand::Rtl));
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(data, json!({"cmd": "dc-1", "status": "sent"}));
    let urgent: Vec<Value> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Urgent {
                conn,
                msg: ServerMsg::Event { event, .. },
            } if *conn == pilot => Some(wire(event)),
            _ => None,
        })
        .collect();
    assert_eq!(
        urgent,
        vec![
            json!({"kind": "drone_command", "cmd": "dc-1", "drone": DRONE, "command": "rtl", "by": "cmd-1"})
        ]
    );
    h.take(pilot);
    // The bridge acknowledges: the commander learns it.
    h.send(
        pilot,
        &ClientMsg::DroneCommandAck {
            cmd: "dc-1".into(),
            result: DroneAckResult::Accepted,
            text: None,
        },
    );
    assert!(h.take(pilot).is_empty(), "no reply to an ack");
    assert_eq!(
        kinds(&h.events(cmdr), "drone_command_ack"),
        vec![
            json!({"kind": "drone_command_ack", "cmd": "dc-1", "drone": DRONE, "result": "accepted"})
        ]
    );
    // A final ack ends the command; unknown commands and other sessions get not_found.
    for (conn, cmd) in [(pilot, "dc-1"), (pilot, "dc-99"), (p4, "dc-1")] {
        h.send(
            conn,
            &ClientMsg::DroneCommandAck {
                cmd: cmd.into(),
                result: DroneAckResult::Failed,
                text: None,
            },
        );
        assert!(
            matches!(
                &h.take(conn)[..],
                [ServerMsg::Error {
                    re: None,
                    code: ErrorCode::NotFound,
                    ..
                }]
            ),
            "{cmd}"
        );
    }
    // The owning pilot may command it; in_progress keeps it open for the final ack.
    let r = h.request(pilot, command(3, DRONE, DroneCommand::Hold));
    assert!(
        matches!(&r, ServerMsg::Result { data, .. } if data["cmd"] == "dc-2"),
        "{r:?}"
    );
    h.send(
        pilot,
        &ClientMsg::DroneCommandAck {
            cmd: "dc-2".into(),
            result: DroneAckResult::InProgress,
            text: None,
        },
    );
    h.send(
        pilot,
        &ClientMsg::DroneCommandAck {
            cmd: "dc-2".into(),
            result: DroneAckResult::Denied,
            text: Some("not armed".into()),
        },
    );
    let acks = kinds(&h.events(pilot), "drone_command_ack");
    assert_eq!(
        acks.iter()
            .map(|a| a["result"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["in_progress", "denied"]
    );
    assert_eq!(acks[1]["text"], "not armed");
    // Refusals: an officer (role), another pilot (not its drone); both logged.
    let r = h.request(off, command(4, DRONE, DroneCommand::Land));
    assert_eq!(error_code(&r), Some(ErrorCode::Forbidden));
    let r = h.request(p4, command(5, DRONE, DroneCommand::Land));
    assert!(
        matches!(&r, ServerMsg::Error { code: ErrorCode::Forbidden, message, .. } if message.contains("not one of your drones")),
        "{r:?}"
    );
    // Guided needs a target.
    let r = h.request(
        cmdr,
        ClientMsg::DroneCommand {
            id: 6,
            drone: DRONE.into(),
            command: DroneCommand::Guided,
            lat: None,
            lon: Some(114.3),
            alt: Some(40.0),
        },
    );
    assert_eq!(error_code(&r), Some(ErrorCode::BadRequest), "{r:?}");
    let r = h.request(
        cmdr,
        ClientMsg::DroneCommand {
            id: 7,
            drone: DRONE.into(),
            command: DroneCommand::Guided,
            lat: Some(30.6),
            lon: Some(114.3),
            alt: Some(40.0),
        },
    );
    assert!(
        matches!(&r, ServerMsg::Result { data, .. } if data["cmd"] == "dc-3"),
        "{r:?}"
    );
    let ev = kinds(&h.events(pilot), "drone_command");
    assert_eq!(
        (
            ev[0]["lat"].as_f64(),
            ev[0]["lon"].as_f64(),
            ev[0]["alt"].as_f64()
        ),
        (Some(30.6), Some(114.3), Some(40.0))
    );
    // The log tells the story.
    let cmds: Vec<Value> = log_of(&mut h, cmdr, "drone_command")
        .into_iter()
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(
        cmds[0],
        json!({"cmd": "dc-1", "drone": DRONE, "command": "rtl", "by": "cmd-1"})
    );
    assert_eq!(cmds[2]["lat"], 30.6);
    let acks: Vec<Value> = log_of(&mut h, cmdr, "drone_command_ack")
        .into_iter()
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(
        acks[0],
        json!({"cmd": "dc-1", "drone": DRONE, "result": "accepted"})
    );
    assert_eq!(
        acks[2],
        json!({"cmd": "dc-2", "drone": DRONE, "result": "denied", "text": "not armed"})
    );
    let refused = log_of(&mut h, cmdr, "drone_command_refused");
    assert_eq!(refused.len(), 2);
    assert_eq!(
        (
            refused[0]["who"].as_str(),
            refused[0]["detail"]["by"].as_str()
        ),
        (Some("off-1"), Some("off-1"))
    );
    assert_eq!(
        (
            refused[0]["detail"]["drone"].as_str(),
            refused[0]["detail"]["command"].as_str()
        ),
        (Some(DRONE), Some("land"))
    );
    assert!(refused[0]["detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("officer"));
    assert_eq!(refused[1]["detail"]["by"], "pilot-4");
    // A refusal about an unknown drone goes to the requester's incidents.
    h.request(off, command(8, "pilot-9-drone2", DroneCommand::Rtl));
    assert_eq!(log_of(&mut h, cmdr, "drone_command_refused").len(), 3);
    // The bridge goes away: its pending commands die with it, and new ones find no drone.
    let r = h.request(cmdr, command(9, DRONE, DroneCommand::Rtl));
    assert!(matches!(&r, ServerMsg::Result { .. }), "{r:?}");
    h.send(pilot, &ClientMsg::Bye);
    let r = h.request(cmdr, command(10, DRONE, DroneCommand::Rtl));
    assert_eq!(error_code(&r), Some(ErrorCode::NotFound), "{r:?}");
}

#[test]
fn drone_commands_are_rate_limited_per_drone() {
    let mut h = H::new();
    let (cmdr, _) = h.connect("cmd-1", Role::Commander);
    let (pilot, _) = h.connect("pilot-3", Role::Pilot);
    h.send(pilot, &telem(h.now, 30.0));
    h.send(
        pilot,
        &ClientMsg::Telemetry {
            drone: "pilot-3-drone2".into(),
            t: Box::new(Telemetry {
                time: UnixMs(h.now),
                ..Telemetry::default()
            }),
        },
    );
    let mut id = 0;
    let mut cmd = |h: &mut H, drone: &str| {
        id += 1;
        error_code(&h.request(cmdr, command(id, drone, DroneCommand::Hold)))
    };
    for _ in 0..5 {
        assert_eq!(cmd(&mut h, DRONE), None, "burst of 5");
    }
    assert_eq!(cmd(&mut h, DRONE), Some(ErrorCode::RateLimited));
    assert_eq!(
        cmd(&mut h, "pilot-3-drone2"),
        None,
        "another drone has its own budget"
    );
    h.advance(1000);
    assert_eq!(cmd(&mut h, DRONE), None, "one more per second");
    assert_eq!(cmd(&mut h, DRONE), Some(ErrorCode::RateLimited));
    // A refused command was not sent.
    let sent = kinds(&h.events(pilot), "drone_command");
    assert_eq!(sent.iter().filter(|e| e["drone"] == DRONE).count(), 6);
    // One bridge cannot create drones without bound.
    h.take(pilot);
    for n in 3..=64 {
        h.send(
            pilot,
            &ClientMsg::DroneLink {
                drone: format!("pilot-3-drone{n}"),
                up: true,
            },
        );
    }
    assert!(h
        .take(pilot)
        .iter()
        .all(|m| matches!(m, ServerMsg::Event { .. })));
    h.send(
        pilot,
        &ClientMsg::DroneLink {
            drone: "pilot-3-drone65".into(),
            up: true,
        },
    );
    assert!(matches!(
        &h.take(pilot)[..],
        [ServerMsg::Error {
            re: None,
            code: ErrorCode::Conflict,
            ..
        }]
    ));
}
