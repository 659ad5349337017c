//! Sessions: the handshake and its refusals, resume with replay, detach and grace, revocation,
//! rate limits.

use super::*;

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
fn handshake_refusals_are_typed_and_close() {
    let mut h = H::new();
    // Wrong version.
    let conn = 100;
    h.core.open(UnixMs(h.now), conn);
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
    h.core.open(UnixMs(h.now), conn);
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
    h.core.open(UnixMs(h.now), conn);
    h.advance(10_100);
    assert_eq!(h.closed_with(conn), Some(ErrorCode::BadHello));
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
    h.core.closed(UnixMs(h.now), off);
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
    h.core.closed(UnixMs(h.now), off);
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
    h.core.closed(UnixMs(h.now), c1);
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
        UnixMs(h.now),
        &Revocation::Token {
            jti: jti.to_string(),
        },
    );
    h.pump();
    assert_eq!(h.closed_with(c2), Some(ErrorCode::Revoked));
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

fn refused(msgs: &[ServerMsg]) -> Option<ErrorCode> {
    match msgs.first() {
        Some(ServerMsg::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

fn welcome(msgs: &[ServerMsg]) -> Welcome {
    match msgs.first() {
        Some(ServerMsg::Welcome(w)) => w.clone(),
        other => panic!("no welcome: {other:?}"),
    }
}

#[test]
fn sessions_beyond_a_subjects_cap_are_refused_and_resume_is_not() {
    let mut h = H::with_config(CoreConfig {
        max_sessions_per_subject: 2,
        max_sessions_per_console: 3,
        ..CoreConfig::default()
    });
    let t = h.token("view-1", Role::Viewer);
    let (a, m) = h.hello(t.clone(), None);
    let wa = welcome(&m);
    let (b, m) = h.hello_checked(t.clone(), None);
    welcome(&m);
    // The third is refused, typed, and its connection closed; over either path.
    let (c, m) = h.hello(t.clone(), None);
    assert_eq!(refused(&m), Some(ErrorCode::TooManySessions), "{m:?}");
    assert_eq!(h.closed_with(c), Some(ErrorCode::TooManySessions));
    let (c, m) = h.hello_checked(t.clone(), None);
    assert_eq!(refused(&m), Some(ErrorCode::TooManySessions), "{m:?}");
    assert_eq!(h.closed_with(c), Some(ErrorCode::TooManySessions));
    // Another subject is not affected; a console role has its own, larger cap.
    let (_, m) = h.hello(h.token("view-2", Role::Viewer), None);
    welcome(&m);
    let op = h.token("op-1", Role::Operator);
    for _ in 0..3 {
        welcome(&h.hello(op.clone(), None).1);
    }
    assert_eq!(
        refused(&h.hello(op.clone(), None).1),
        Some(ErrorCode::TooManySessions)
    );
    // A detached session still counts; resuming it is never refused, even at the cap.
    h.core.closed(UnixMs(h.now), a);
    assert_eq!(
        refused(&h.hello(t.clone(), None).1),
        Some(ErrorCode::TooManySessions)
    );
    let resume = Resume {
        session: wa.session.clone(),
        after: 0,
    };
    let (a2, m) = h.hello_checked(t.clone(), Some(resume));
    assert!(welcome(&m).resumed);
    // A session that ends frees its place: `bye` at once, a detached one when its grace ends.
    h.send(b, &ClientMsg::Bye);
    welcome(&h.hello(t.clone(), None).1);
    h.core.closed(UnixMs(h.now), a2);
    h.advance(CoreConfig::default().resume_grace_ms + 200);
    welcome(&h.hello(t.clone(), None).1);
}

#[test]
fn the_node_wide_cap_counts_every_subject() {
    let mut h = H::with_config(CoreConfig {
        max_sessions: 3,
        ..CoreConfig::default()
    });
    for s in ["off-1", "off-2", "off-3"] {
        welcome(&h.hello(h.token(s, Role::Officer), None).1);
    }
    let (_, m) = h.hello(h.token("off-4", Role::Officer), None);
    assert_eq!(refused(&m), Some(ErrorCode::TooManySessions));
    match &m[0] {
        ServerMsg::Error { message, .. } => assert!(message.contains("its most"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hello_verified_outside_the_core_is_still_checked_for_revocation_and_expiry() {
    let mut h = H::new();
    let t = h.token("off-1", Role::Officer);
    let w = welcome(&h.hello_checked(t.clone(), None).1);
    assert_eq!(w.subject.as_str(), "off-1");
    // Verified by the shell, then revoked before the core takes it: the core refuses it.
    let bytes = encode(&ClientMsg::Hello {
        v: VERSION,
        token: t.clone(),
        resume: None,
    });
    let gate = h.core.token_gate().clone();
    let hello = VerifiedHello::check(&gate, bytes.as_bytes(), UnixMs(h.now)).unwrap();
    assert!(hello.token.is_ok());
    let later = h.token("off-9", Role::Officer);
    let short = h.token_with("off-2", Role::Officer, |r| r.ttl_secs = 1);
    let short_hello = encode(&ClientMsg::Hello {
        v: VERSION,
        token: short,
        resume: None,
    });
    let short_hello = VerifiedHello::check(&gate, short_hello.as_bytes(), UnixMs(h.now)).unwrap();
    h.core.apply_revocation(
        UnixMs(h.now),
        &Revocation::Subject {
            sub: Subject::parse("off-1").unwrap(),
            at: UnixMs(h.now).secs(),
        },
    );
    h.pump();
    let conn = 500;
    h.core.open(UnixMs(h.now), conn);
    h.core.hello_verified(UnixMs(h.now), conn, hello);
    h.pump();
    assert_eq!(refused(&h.take(conn)), Some(ErrorCode::Revoked));
    assert_eq!(h.closed_with(conn), Some(ErrorCode::Revoked));
    // Verified while valid, taken by the core after it expired (by the core's clock).
    h.now += 60_000;
    let conn = 501;
    h.core.open(UnixMs(h.now), conn);
    h.core.hello_verified(UnixMs(h.now), conn, short_hello);
    h.pump();
    assert_eq!(refused(&h.take(conn)), Some(ErrorCode::Unauthorized));
    // A forged token is refused by the check itself; the core passes its refusal on.
    let flip = if later.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{flip}", &later[..later.len() - 1]);
    let (c, m) = h.hello_checked(forged, None);
    assert_eq!(refused(&m), Some(ErrorCode::Unauthorized), "{m:?}");
    assert_eq!(h.closed_with(c), Some(ErrorCode::Unauthorized));
    // Not a hello: nothing to verify, the frame goes to the core as it is.
    assert!(VerifiedHello::check(&gate, br#"{"type":"ping","id":1}"#, UnixMs(h.now)).is_none());
}
