//! The signaling protocol end to end: a node in-process, native clients over QUIC (the
//! `signaling::client` library, and raw quinn for bad input) and browsers' transport, WebSocket
//! `/ws` (tokio-tungstenite). What is asserted is what a client observes: replies, error codes,
//! close codes, events, decoded frames.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::{start_node, TestNode, WAIT};
use futures_util::{SinkExt as _, StreamExt as _};
use media_server::signal::{RevocationFile, REVOCATION_FILE};
use netem::{ImpairConfig, UdpRelay};
use serde_json::Value;
use signaling::auth::{Action, Role, TokenIssuer, TokenRequest};
use signaling::client::{self, ClientConfig, ClientError, ClientEvent};
use signaling::core::Revocation;
use signaling::proto::{
    encode, ClientMsg, DroneAckResult, DroneCommand, ErrorCode, Event, Position, ServerMsg,
    StreamKind, Telemetry, MAX_FRAME, VERSION,
};
use signaling::testkit;
use signaling::{IncidentId, StreamName, Subject};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ---------------------------------------------------------------------------------------------
// A WebSocket client, as a browser would speak the protocol.

struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages received while waiting for something else.
    pending: VecDeque<ServerMsg>,
    close: Option<(u16, String)>,
}

impl Ws {
    async fn open(node: &TestNode) -> Ws {
        let url = format!("ws://{}/ws", node.node.http_addr);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect in time")
            .expect("WebSocket upgrade");
        Ws {
            ws,
            pending: VecDeque::new(),
            close: None,
        }
    }

    async fn send(&mut self, msg: &ClientMsg) {
        self.send_raw(encode(msg)).await;
    }

    async fn send_raw(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next server message; `None` once the node closed (the close code is kept).
    async fn recv(&mut self) -> Option<ServerMsg> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Some(
                        serde_json::from_str(&t)
                            .unwrap_or_else(|e| panic!("bad server JSON {t}: {e}")),
                    );
                }
                Some(Ok(Message::Close(f))) => {
                    self.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return None;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Connects and says hello; returns the first answer.
    async fn hello(node: &TestNode, token: String) -> (Ws, ServerMsg) {
        let mut ws = Ws::open(node).await;
        ws.send(&ClientMsg::Hello {
            v: VERSION,
            token,
            resume: None,
        })
        .await;
        let first = ws.recv().await.expect("an answer to hello");
        (ws, first)
    }

    /// Connects, says hello and syncs the mailbox (as the wall does).
    async fn login(node: &TestNode, sub: &str, role: Role) -> Ws {
        let (mut ws, first) = Ws::hello(node, node.token(sub, role)).await;
        assert!(matches!(first, ServerMsg::Welcome(_)), "{first:?}");
        let r = ws
            .request(ClientMsg::MailSync {
                id: 999_999,
                after: None,
            })
            .await;
        assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
        ws
    }

    /// The next mail item of `kind` (everything else is dropped).
    async fn mail(&mut self, kind: &str) -> Value {
        loop {
            match self.recv().await {
                Some(ServerMsg::Mail { item, .. }) if item.kind() == kind => return wire(&item),
                Some(_) => continue,
                None => panic!("closed while waiting for {kind} mail: {:?}", self.close),
            }
        }
    }

    /// Sends a request and returns its answer; events that arrive meanwhile are kept.
    async fn request(&mut self, msg: ClientMsg) -> ServerMsg {
        let id = msg.id().expect("a request");
        self.send(&msg).await;
        let mut skipped = Vec::new();
        let answer = loop {
            let m = self.recv().await.unwrap_or_else(|| {
                panic!("closed before answering {}: {:?}", msg.kind(), self.close)
            });
            if testkit::answers(&m, id) {
                break m;
            }
            skipped.push(m);
        };
        self.pending.extend(skipped);
        answer
    }

    /// The next event of `kind` (others are dropped).
    async fn event(&mut self, kind: &str) -> Value {
        loop {
            match self.recv().await {
                Some(ServerMsg::Event { event, .. }) if event.kind() == kind => {
                    return wire(&event)
                }
                Some(_) => continue,
                None => panic!("closed while waiting for a {kind} event: {:?}", self.close),
            }
        }
    }

    /// Reads until the node closes; returns the error codes seen and the close code.
    async fn until_closed(&mut self) -> (Vec<ErrorCode>, Option<u16>) {
        let mut codes = Vec::new();
        while let Some(m) = self.recv().await {
            if let ServerMsg::Error { code, .. } = m {
                codes.push(code);
            }
        }
        (codes, self.close.as_ref().map(|c| c.0))
    }
}

fn ws_close(code: ErrorCode) -> u16 {
    4000 + code.close_code()
}

// ---------------------------------------------------------------------------------------------
// Native clients: the signaling client library over QUIC.

async fn quic(node: &TestNode, token: String) -> (client::Client, client::Events) {
    let cfg = ClientConfig::new(node.node.quic_addr.to_string(), token);
    tokio::time::timeout(WAIT, client::connect(cfg))
        .await
        .expect("connect in time")
        .expect("connect")
}

async fn quic_login(node: &TestNode, sub: &str, role: Role) -> (client::Client, client::Events) {
    quic(node, node.token(sub, role)).await
}

/// The outcome of a request as a server message, so both transports are checked alike.
async fn quic_request(c: &client::Client, msg: ClientMsg) -> ServerMsg {
    let id = msg.id().expect("a request");
    match tokio::time::timeout(WAIT, c.request(msg))
        .await
        .expect("answer in time")
    {
        Ok(data) => ServerMsg::Result { re: id, data },
        Err(ClientError::Remote { code, message }) => ServerMsg::Error {
            re: Some(id),
            code,
            message,
        },
        Err(e) => panic!("request failed locally: {e}"),
    }
}

/// An event or mail item as the JSON a client reads off the wire (what these tests assert on).
fn wire<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

async fn next_event(events: &mut client::Events, kind: &str) -> Value {
    loop {
        let e = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("event in time");
        match e {
            Some(ClientEvent::Event { event, .. }) if event.kind() == kind => return wire(&event),
            Some(ClientEvent::Closed { code, reason }) => {
                panic!("closed ({code:?}: {reason}) waiting for {kind}")
            }
            None => panic!("event stream ended waiting for {kind}"),
            Some(_) => continue,
        }
    }
}

async fn closed_with(events: &mut client::Events) -> Option<ErrorCode> {
    loop {
        match tokio::time::timeout(WAIT, events.next())
            .await
            .expect("close in time")
        {
            Some(ClientEvent::Closed { code, .. }) => return code,
            None => return None,
            Some(_) => continue,
        }
    }
}

fn position(lat: f64) -> ClientMsg {
    ClientMsg::Position {
        id: None,
        pos: Position {
            lat,
            lon: 114.305,
            alt: Some(23.0),
            accuracy: Some(3.5),
            heading: Some(180.0),
            speed: Some(1.4),
            time: None,
        },
    }
}

async fn api_units(node: &TestNode, token: &str) -> Vec<Value> {
    let r = reqwest::Client::new()
        .get(node.url("/api/units"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["units"].as_array().unwrap().clone()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_matrix_cell_over_quic_and_websocket() {
    let node = start_node().await;
    let mut id = 1000;
    for role in Role::ALL {
        let sub = format!("{}-7", role.as_str());
        let subject = Subject::parse(&sub).unwrap();
        let mut ws = Ws::login(&node, &sub, role).await;
        let (q, _events) = quic_login(&node, &sub, role).await;
        for action in Action::ALL {
            id += 1;
            let over_ws = ws.request(testkit::probe(action, &subject, id)).await;
            assert_eq!(
                testkit::is_forbidden(&over_ws, id),
                !role.may(action),
                "/ws {role} {action}: {over_ws:?}"
            );
            if let Some(msg) = testkit::probe_without_reply(action, &subject) {
                // No reply when allowed: a ping behind it bounds the wait (one stream, in order).
                ws.pending.clear();
                ws.send(&msg).await;
                id += 1;
                ws.request(ClientMsg::Ping { id }).await;
                let denied = ws.pending.iter().any(testkit::is_forbidden_without_re);
                assert_eq!(
                    denied,
                    !role.may(action),
                    "/ws {role} {action} ({}): {:?}",
                    msg.kind(),
                    ws.pending
                );
            }
            id += 1;
            let over_quic = quic_request(&q, testkit::probe(action, &subject, id)).await;
            assert_eq!(
                testkit::is_forbidden(&over_quic, id),
                !role.may(action),
                "QUIC {role} {action}: {over_quic:?}"
            );
        }
        q.close().await;
    }
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_revoked_and_wrong_audience_tokens_are_refused_on_both_transports() {
    let node = start_node().await;
    let id = &node.node.identity;
    let now = common::now_unix();
    let req = |sub: &str| {
        TokenRequest::new(
            sub.parse().unwrap(),
            Role::Officer,
            id.node_id.to_string(),
            id.fingerprint.clone(),
        )
    };
    let expired = id.issuer().issue(&req("off-1"), now - 13 * 3600);
    let forged = TokenIssuer::new(
        ed25519_dalek::SigningKey::from_bytes(&[42; 32]),
        id.node_id.clone(),
    )
    .issue(&req("off-1"), now);
    let mut other_aud = req("off-1");
    other_aud.aud = "some-other-node".into();
    let wrong_aud = id.issuer().issue(&other_aud, now);
    let revoked = node.token("off-2", Role::Officer);
    RevocationFile::append(
        &node.dir.path().join("data").join(REVOCATION_FILE),
        &Revocation::Token {
            jti: signaling::auth::decode_unverified(&revoked)
                .unwrap()
                .jti
                .to_string(),
        },
    )
    .unwrap();
    // The node polls the file; wait until it refuses over HTTP, then check both transports.
    common::wait_for("the revocation to apply", WAIT, || async {
        let r = reqwest::Client::new()
            .get(node.url("/api/units"))
            .bearer_auth(&revoked)
            .send()
            .await
            .ok()?;
        (r.status() == 401).then_some(())
    })
    .await;
    for (token, code, what) in [
        (expired, ErrorCode::Unauthorized, "expired"),
        (forged, ErrorCode::Unauthorized, "untrusted"),
        (wrong_aud, ErrorCode::Unauthorized, "another node"),
        (revoked, ErrorCode::Revoked, "revoked"),
    ] {
        let (mut ws, first) = Ws::hello(&node, token.clone()).await;
        assert!(
            matches!(&first, ServerMsg::Error { code: c, message, .. } if *c == code && message.contains(what)),
            "/ws {what}: {first:?}"
        );
        let (_, close) = ws.until_closed().await;
        assert_eq!(close, Some(ws_close(code)), "/ws {what}");
        let cfg = ClientConfig::new(node.node.quic_addr.to_string(), token);
        match tokio::time::timeout(WAIT, client::connect(cfg))
            .await
            .expect("refusal in time")
        {
            Err(ClientError::Refused { code: c, message }) => {
                assert_eq!(c, code, "QUIC {what}");
                assert!(message.contains(what), "QUIC {what}: {message}");
            }
            Err(e) if what == "untrusted" => panic!("QUIC {what}: {e}"),
            other => panic!("QUIC {what}: {:?}", other.map(|_| ())),
        }
    }
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_subject_closes_its_live_sessions_at_once() {
    let node = start_node().await;
    let mut ws = Ws::login(&node, "off-3", Role::Officer).await;
    let (_q, mut qev) = quic_login(&node, "off-3", Role::Officer).await;
    let (_other, _oev) = quic_login(&node, "off-4", Role::Officer).await;
    // What `media-server revoke --data DIR --sub off-3` does.
    RevocationFile::append(
        &node.dir.path().join("data").join(REVOCATION_FILE),
        &Revocation::Subject {
            sub: "off-3".parse().unwrap(),
            at: signaling::UnixSecs(common::now_unix()),
        },
    )
    .unwrap();
    let (codes, close) = ws.until_closed().await;
    assert_eq!(codes, vec![ErrorCode::Revoked]);
    assert_eq!(close, Some(ws_close(ErrorCode::Revoked)));
    assert_eq!(closed_with(&mut qev).await, Some(ErrorCode::Revoked));
    // Other sessions are untouched.
    let r = quic_request(&_other, ClientMsg::Ping { id: 1 }).await;
    assert!(matches!(r, ServerMsg::Result { .. }));
    // An admin can revoke over the protocol too.
    let mut admin = Ws::login(&node, "admin-1", Role::Admin).await;
    let mut victim = Ws::login(&node, "off-4", Role::Officer).await;
    let r = admin
        .request(ClientMsg::Revoke {
            id: 2,
            sub: Some("off-4".parse().unwrap()),
            jti: None,
        })
        .await;
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    assert_eq!(
        victim.until_closed().await.1,
        Some(ws_close(ErrorCode::Revoked))
    );
    let text = std::fs::read_to_string(node.dir.path().join("data").join(REVOCATION_FILE)).unwrap();
    assert_eq!(
        text.lines().count(),
        2,
        "both revocations persisted: {text}"
    );
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_reach_operators_and_the_units_api_and_survive_migration() {
    let node = start_node().await;
    let op_token = node.token("op-1", Role::Operator);
    let (mut op, first) = Ws::hello(&node, op_token.clone()).await;
    assert!(matches!(first, ServerMsg::Welcome(_)));
    let (officer, mut oev) = quic_login(&node, "off-9", Role::Officer).await;
    let session = officer.session().session;
    assert_eq!(op.event("presence").await["online"], true);

    officer.send(position(30.501)).unwrap();
    let p = op.event("position").await;
    assert_eq!(
        (p["subject"].as_str(), p["lat"].as_f64()),
        (Some("off-9"), Some(30.501))
    );

    // Wi-Fi to 4G: the client's UDP socket changes under the connection.
    let new_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let new_addr = new_socket.local_addr().unwrap();
    officer.rebind(new_socket).unwrap();
    // A request proves the path works from the new address (QUIC validates it).
    let r = quic_request(&officer, ClientMsg::Ping { id: 3 }).await;
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    officer.send(position(30.502)).unwrap();
    let p = op.event("position").await;
    assert_eq!(p["lat"].as_f64(), Some(30.502));
    assert_eq!(
        officer.session().session,
        session,
        "same session after migration"
    );
    // The connection never dropped, and the operator never saw the officer go offline.
    while let Some(e) = oev.try_next() {
        assert!(
            !matches!(
                e,
                ClientEvent::Disconnected { .. } | ClientEvent::Connected { resumed: true, .. }
            ),
            "{e:?}"
        );
    }
    for m in op.pending.iter() {
        if let ServerMsg::Event { event, .. } = m {
            assert!(
                !matches!(event, Event::Presence { online: false, .. }),
                "{event:?}"
            );
        }
    }
    let units = api_units(&node, &op_token).await;
    let u = units
        .iter()
        .find(|u| u["subject"] == "off-9")
        .expect("officer in /api/units");
    assert_eq!(u["online"], true);
    assert_eq!(u["role"], "officer");
    assert_eq!(u["position"]["lat"].as_f64(), Some(30.502));
    assert_eq!(u["incidents"][0], "duty");
    let _ = new_addr;
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_for_5_s_resumes_and_receives_the_positions_it_missed() {
    let node = start_node().await;
    let relay = UdpRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        node.node.quic_addr,
        ImpairConfig::perfect(),
        ImpairConfig::perfect(),
    )
    .await
    .unwrap();
    let mut cfg = ClientConfig::new(
        relay.local_addr().to_string(),
        node.token("off-5", Role::Officer),
    );
    // A tablet notices a dead link after 2 s of silence.
    cfg.idle_timeout = Duration::from_secs(2);
    cfg.keep_alive = Duration::from_millis(500);
    cfg.backoff_max = Duration::from_millis(500);
    let (officer, mut oev) = tokio::time::timeout(WAIT, client::connect(cfg))
        .await
        .unwrap()
        .unwrap();
    let session = officer.session().session;
    let op = quic_login(&node, "op-2", Role::Operator).await.0;

    op.send(position(31.0)).unwrap();
    assert_eq!(
        next_event(&mut oev, "position").await["lat"].as_f64(),
        Some(31.0)
    );

    relay.set_cut(true);
    let cut_at = tokio::time::Instant::now();
    // The operator moves while the officer is in the tunnel.
    let missed = [31.1, 31.2, 31.3, 31.4, 31.5];
    for lat in missed {
        op.send(position(lat)).unwrap();
        // Positions are coalesced per sender to 5 Hz; space them so each one goes out.
        quic_request(&op, ClientMsg::Ping { id: 1 }).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    tokio::time::sleep_until(cut_at + Duration::from_secs(5)).await;
    relay.set_cut(false);

    let mut got = Vec::new();
    let mut saw = (false, false);
    while got.len() < missed.len() {
        match tokio::time::timeout(WAIT, oev.next())
            .await
            .expect("events in time")
        {
            Some(ClientEvent::Disconnected { .. }) => saw.0 = true,
            Some(ClientEvent::Connected { resumed, gap }) => {
                assert!(resumed && !gap, "resumed without gap");
                saw.1 = true;
            }
            Some(ClientEvent::Event {
                event: Event::Position { pos, .. },
                ..
            }) => got.push(pos.lat),
            Some(ClientEvent::Closed { code, reason }) => panic!("closed: {code:?} {reason}"),
            Some(_) => {}
            None => panic!("event stream ended"),
        }
    }
    assert_eq!(got, missed, "every missed position, once, in order");
    assert!(
        saw.0 && saw.1,
        "the client noticed the cut and resumed: {saw:?}"
    );
    assert_eq!(officer.session().session, session);
    relay.shutdown().await;
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_websocket_gets_typed_errors_and_leaves_others_alone() {
    let node = start_node().await;
    let (bystander, _bev) = quic_login(&node, "off-1", Role::Officer).await;

    // Wrong version.
    let (mut ws, first) = Ws::hello(&node, String::new()).await;
    assert!(
        matches!(
            first,
            ServerMsg::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{first:?}"
    );
    assert_eq!(
        ws.until_closed().await.1,
        Some(ws_close(ErrorCode::Unauthorized))
    );
    let mut ws = Ws::open(&node).await;
    ws.send(&ClientMsg::Hello {
        v: 99,
        token: node.token("off-2", Role::Officer),
        resume: None,
    })
    .await;
    let (codes, close) = ws.until_closed().await;
    assert_eq!(
        (codes, close),
        (
            vec![ErrorCode::UnsupportedVersion],
            Some(ws_close(ErrorCode::UnsupportedVersion))
        )
    );

    // Junk inside a session: typed errors, the session continues.
    let mut ws = Ws::login(&node, "off-2", Role::Officer).await;
    for (junk, code) in [
        ("{not json", ErrorCode::BadRequest),
        ("[]", ErrorCode::BadRequest),
        (r#"{"type":"teleport","id":5}"#, ErrorCode::UnknownType),
        (r#"{"type":"join","id":6}"#, ErrorCode::BadRequest),
        (
            r#"{"type":"position","id":7,"lat":"north","lon":1}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"position","id":8,"lat":95,"lon":1}"#,
            ErrorCode::BadRequest,
        ),
    ] {
        ws.send_raw(junk.into()).await;
        loop {
            match ws.recv().await.expect("session stays open") {
                ServerMsg::Error { code: c, .. } => {
                    assert_eq!(c, code, "{junk}");
                    break;
                }
                ServerMsg::Event { .. } => continue,
                other => panic!("{junk}: {other:?}"),
            }
        }
    }
    assert!(matches!(
        ws.request(ClientMsg::Ping { id: 9 }).await,
        ServerMsg::Result { .. }
    ));

    // Over the limit: typed error, then closed.
    ws.send_raw(format!(
        r#"{{"type":"chat","id":10,"incident":"duty","text":"{}"}}"#,
        "x".repeat(MAX_FRAME)
    ))
    .await;
    let (codes, close) = ws.until_closed().await;
    assert_eq!(
        (codes, close),
        (
            vec![ErrorCode::TooLarge],
            Some(ws_close(ErrorCode::TooLarge))
        )
    );

    // Binary frames are not the protocol.
    let mut ws = Ws::login(&node, "off-2", Role::Officer).await;
    ws.ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let (codes, _) = ws.until_closed().await;
    assert_eq!(codes, vec![ErrorCode::BadRequest]);

    // A flood past the per-connection rate: refused, then closed.
    let mut ws = Ws::login(&node, "off-6", Role::Officer).await;
    for i in 0..1500u64 {
        if ws
            .ws
            .send(Message::Text(encode(&ClientMsg::Ping { id: i }).into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (codes, close) = ws.until_closed().await;
    assert!(
        codes.contains(&ErrorCode::RateLimited),
        "{:?}",
        &codes[..codes.len().min(5)]
    );
    assert_eq!(close, Some(ws_close(ErrorCode::RateLimited)));

    // Everyone else is fine, the node is up.
    let r = quic_request(&bystander, ClientMsg::Ping { id: 11 }).await;
    assert!(matches!(r, ServerMsg::Result { .. }));
    assert_eq!(
        reqwest::get(node.url("/healthz")).await.unwrap().status(),
        200
    );
    let _ = CloseCode::Normal;
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_over_the_protocol_and_the_http_api() {
    let node = start_node().await;
    let cmd_token = node.token("cmd-1", Role::Commander);
    let (cmd, _cev) = quic(&node, cmd_token.clone()).await;
    let mut off = Ws::login(&node, "off-8", Role::Officer).await;
    let r = quic_request(
        &cmd,
        ClientMsg::IncidentCreate {
            id: 1,
            incident: Some("flood-1".parse().unwrap()),
            name: "Flood, Dongxihu".into(),
        },
    )
    .await;
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    quic_request(
        &cmd,
        ClientMsg::Assign {
            id: 2,
            incident: "flood-1".parse().unwrap(),
            subject: "off-8".parse().unwrap(),
        },
    )
    .await;
    let e = off.event("assigned").await;
    assert_eq!(e["incident"], "flood-1");
    quic_request(
        &cmd,
        ClientMsg::Chat {
            id: 3,
            msg_id: None,
            incident: Some("flood-1".parse().unwrap()),
            to: None,
            text: "Boats to gate 3".into(),
        },
    )
    .await;
    assert_eq!(off.mail("chat").await["text"], "Boats to gate 3");
    // SOS from the officer reaches the commander.
    let r = off
        .request(ClientMsg::Sos {
            id: 4,
            msg_id: None,
            incident: Some("flood-1".parse().unwrap()),
            text: Some("trapped".into()),
        })
        .await;
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");

    let http = reqwest::Client::new();
    let v: Value = http
        .get(node.url("/api/incidents"))
        .bearer_auth(&cmd_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["duty", "flood-1"]);
    let v: Value = http
        .get(node.url("/api/incidents/flood-1/log"))
        .bearer_auth(&cmd_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let what: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    for w in ["created", "assigned", "chat", "sos"] {
        assert!(what.contains(&w), "{w} in {what:?}");
    }
    // An officer not in an incident sees neither it nor its log.
    let other = node.token("off-77", Role::Officer);
    let r = http
        .get(node.url("/api/incidents/flood-1/log"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Orders over HTTP: auth, validation, idempotent by id.
    let r = http
        .post(node.url("/api/orders"))
        .bearer_auth(&other)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(node.url("/api/orders"))
        .bearer_auth(&cmd_token)
        .body("{\"incident\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r#"{"id":"h-1","incident":"flood-1","to":"off-8","text":"Bring the pump"}"#;
    let r = http
        .post(node.url("/api/orders"))
        .bearer_auth(&cmd_token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let first: Value = r.json().await.unwrap();
    let r = http
        .post(node.url("/api/orders"))
        .bearer_auth(&cmd_token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a retry is not a second order");
    let again: Value = r.json().await.unwrap();
    assert_eq!(first["order"]["id"], again["order"]["id"]);
    assert_eq!(off.mail("order").await["text"], "Bring the pump");
    // An order to a name nobody ever connected with is refused, not stored for no one.
    let r = http
        .post(node.url("/api/orders"))
        .bearer_auth(&cmd_token)
        .body(r#"{"id":"h-2","incident":"flood-1","to":"of-8","text":"Bring the pump"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "unknown_recipient", "{refused}");
    let r = http
        .get(node.url("/api/orders"))
        .bearer_auth(&cmd_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["orders"].as_array().unwrap().len(), 1);
    let r = http.get(node.url("/api/incidents")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_through_signaling_decodes_frames() {
    use yiwang_tests::gst_peer::{Pattern, PublishOptions, ViewOptions, WhepViewer, WhipPublisher};
    let _media = common::MEDIA.lock().await;
    let node = start_node().await;
    let (publisher, _pev) = quic_login(&node, "off-11", Role::Officer).await;
    let (viewer, _vev) = quic_login(&node, "op-11", Role::Operator).await;

    let p = publisher.clone();
    let pubr = WhipPublisher::start_with(
        &node.base,
        PublishOptions::default(),
        move |offer| async move {
            let data = p
                .request(ClientMsg::Publish {
                    id: 0,
                    stream: None,
                    kind: StreamKind::Camera,
                    sdp: offer,
                })
                .await?;
            assert_eq!(data["stream"], "off-11");
            Ok(data["sdp"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await
    .expect("publish over signaling");
    pubr.wait_connected(WAIT).await.unwrap();

    // The catalog (from the live-stream table) shows it to the operator.
    let cat = common::wait_for("the stream and its layer in the catalog", WAIT, || async {
        let d = viewer
            .request(ClientMsg::Catalog {
                id: 0,
                incident: None,
            })
            .await
            .ok()?;
        d["streams"]
            .as_array()
            .filter(|s| s.len() == 1 && s[0]["layers"][0]["width"].is_u64())
            .cloned()
    })
    .await;
    assert_eq!(cat[0]["name"], "off-11");
    assert_eq!(cat[0]["video_codec"], "H264");
    assert_eq!(cat[0]["layers"].as_array().unwrap().len(), 1, "{}", cat[0]);
    assert!(cat[0]["layers"][0]["height"].as_u64().unwrap() > 0);
    assert_eq!(cat[0]["kind"], "camera");
    assert_eq!(cat[0]["owner_role"], "officer");

    let v = viewer.clone();
    let view = WhepViewer::start_with(
        &node.base,
        ViewOptions::default(),
        move |offer| async move {
            let data = v
                .request(ClientMsg::Subscribe {
                    id: 0,
                    stream: StreamName::parse("off-11").unwrap(),
                    layer: None,
                    max_height: None,
                    sdp: offer,
                })
                .await?;
            Ok(data["sdp"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await
    .expect("subscribe over signaling");
    let stats = view.wait_frames(60, WAIT).await.expect("frames decoded");
    assert!(stats.frames_decoded >= 60, "{stats:?}");
    view.expect_picture(Pattern::Ball, 12)
        .await
        .expect("the publisher's ball on black");
    view.stop().await.unwrap();
    pubr.stop().await.unwrap();
    let _ = IncidentId::parse("duty");
    node.node.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Raw QUIC: what a broken or hostile native client can send.

struct Raw {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: signaling::proto::FrameDecoder,
}

impl Raw {
    async fn open(node: &TestNode, token: &str) -> Raw {
        let cfg = ClientConfig::new(node.node.quic_addr.to_string(), token);
        let qc = client::pinned_quic_config(&cfg).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(qc);
        let conn = tokio::time::timeout(
            WAIT,
            endpoint
                .connect(node.node.quic_addr, client::SERVER_NAME)
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        Raw {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            decoder: Default::default(),
        }
    }

    /// The next frame from the node, or `None` when the stream or connection ended.
    async fn recv(&mut self) -> Option<ServerMsg> {
        loop {
            if let Some(f) = self.decoder.next_frame().expect("node frames are valid") {
                return Some(serde_json::from_slice(&f).unwrap());
            }
            let chunk = tokio::time::timeout(WAIT, self.recv.read_chunk(65536, true))
                .await
                .expect("data in time");
            match chunk {
                Ok(Some(c)) => self.decoder.push(&c.bytes),
                _ => return None,
            }
        }
    }

    /// Reads until the node closes; the error codes seen and the QUIC application close code.
    async fn until_closed(&mut self) -> (Vec<ErrorCode>, Option<u64>) {
        let mut codes = Vec::new();
        while let Some(m) = self.recv().await {
            if let ServerMsg::Error { code, .. } = m {
                codes.push(code);
            }
        }
        let reason = tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("closed in time");
        let code = match reason {
            quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
            _ => None,
        };
        (codes, code)
    }
}

fn frame(msg: &ClientMsg) -> Vec<u8> {
    signaling::proto::encode_frame(msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_quic_gets_typed_errors_and_leaves_others_alone() {
    // One token opens a session per chunk size below (64): above the per-subject cap.
    let node = common::start_node_with(|c| c.signaling.max_sessions_per_subject = 1000).await;
    let token = node.token("off-21", Role::Officer);
    let (bystander, _bev) = quic_login(&node, "op-21", Role::Operator).await;

    // Frames split at every chunk size up to 64 bytes are reassembled.
    let mut bytes = frame(&ClientMsg::Hello {
        v: VERSION,
        token: token.clone(),
        resume: None,
    });
    bytes.extend(frame(&ClientMsg::Ping { id: 1 }));
    for chunk in 1..=64 {
        let mut raw = Raw::open(&node, &token).await;
        for piece in bytes.chunks(chunk) {
            raw.send.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        let w = raw.recv().await;
        assert!(
            matches!(w, Some(ServerMsg::Welcome(_))),
            "chunk {chunk}: {w:?}"
        );
        let r = raw.recv().await;
        assert!(
            matches!(r, Some(ServerMsg::Result { re: 1, .. })),
            "chunk {chunk}: {r:?}"
        );
        raw.conn.close(0u32.into(), b"done");
    }

    // A frame truncated at every length, then the stream ends: the node drops the session, stays up.
    let hello = frame(&ClientMsg::Hello {
        v: VERSION,
        token: token.clone(),
        resume: None,
    });
    for cut in [1, 2, 3, 4, 5, hello.len() / 2, hello.len() - 1] {
        let mut raw = Raw::open(&node, &token).await;
        raw.send.write_all(&hello[..cut]).await.unwrap();
        raw.send.finish().unwrap();
        assert_eq!(raw.recv().await, None, "cut at {cut}: nothing answered");
    }

    // A length prefix over the limit: typed error, then closed with code too_large.
    let mut raw = Raw::open(&node, &token).await;
    raw.send
        .write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .await
        .unwrap();
    let (codes, close) = raw.until_closed().await;
    assert_eq!(codes, vec![ErrorCode::TooLarge]);
    assert_eq!(close, Some(u64::from(ErrorCode::TooLarge.close_code())));

    // A zero-length frame.
    let mut raw = Raw::open(&node, &token).await;
    raw.send.write_all(&[0, 0, 0, 0]).await.unwrap();
    let (codes, _) = raw.until_closed().await;
    assert_eq!(codes, vec![ErrorCode::BadRequest]);

    // Invalid JSON before hello is a bad hello; wrong version is refused with the versions.
    let mut raw = Raw::open(&node, &token).await;
    raw.send
        .write_all(&[0, 0, 0, 3, b'{', b'{', b'{'])
        .await
        .unwrap();
    assert_eq!(
        raw.until_closed().await,
        (
            vec![ErrorCode::BadHello],
            Some(u64::from(ErrorCode::BadHello.close_code()))
        )
    );
    let mut raw = Raw::open(&node, &token).await;
    raw.send
        .write_all(&frame(&ClientMsg::Hello {
            v: 0,
            token: token.clone(),
            resume: None,
        }))
        .await
        .unwrap();
    assert_eq!(
        raw.until_closed().await,
        (
            vec![ErrorCode::UnsupportedVersion],
            Some(u64::from(ErrorCode::UnsupportedVersion.close_code()))
        )
    );

    // Inside a session: invalid JSON and unknown types are answered, the session goes on.
    let mut raw = Raw::open(&node, &token).await;
    raw.send.write_all(&hello).await.unwrap();
    assert!(matches!(raw.recv().await, Some(ServerMsg::Welcome(_))));
    raw.send
        .write_all(&[0, 0, 0, 5, b'n', b'o', b'p', b'e', b'!'])
        .await
        .unwrap();
    raw.send.write_all(&[0, 0, 0, 16]).await.unwrap();
    raw.send.write_all(br#"{"type":"warp9"}"#).await.unwrap();
    raw.send
        .write_all(&frame(&ClientMsg::Ping { id: 2 }))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        match raw.recv().await.expect("session open") {
            ServerMsg::Error { code, .. } => got.push(format!("{code}")),
            ServerMsg::Result { re: 2, .. } => got.push("pong".into()),
            _ => {}
        }
    }
    assert_eq!(got, vec!["bad_request", "unknown_type", "pong"]);

    // A flood: refused past the rate, then closed.
    let mut flood = Vec::new();
    for i in 0..1500 {
        flood.extend(frame(&ClientMsg::Ping { id: 100 + i }));
    }
    raw.send.write_all(&flood).await.unwrap();
    let (codes, close) = raw.until_closed().await;
    assert!(codes.contains(&ErrorCode::RateLimited));
    assert_eq!(close, Some(u64::from(ErrorCode::RateLimited.close_code())));

    // Random datagrams at the QUIC port.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def0;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 1400) as usize;
        let d: Vec<u8> = (0..len)
            .map(|i| (x.rotate_left(i as u32 % 64) & 0xff) as u8)
            .collect();
        junk.send_to(&d, node.node.quic_addr).unwrap();
    }

    // The bystander never noticed; new sessions work.
    assert!(matches!(
        quic_request(&bystander, ClientMsg::Ping { id: 3 }).await,
        ServerMsg::Result { .. }
    ));
    let (fresh, _) = quic_login(&node, "off-22", Role::Officer).await;
    assert!(matches!(
        quic_request(&fresh, ClientMsg::Ping { id: 4 }).await,
        ServerMsg::Result { .. }
    ));
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_tablet_shows_offline_to_operators() {
    let node = start_node().await;
    let relay = UdpRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        node.node.quic_addr,
        ImpairConfig::perfect(),
        ImpairConfig::perfect(),
    )
    .await
    .unwrap();
    // Default client settings: what a tablet runs with.
    let cfg = ClientConfig::new(
        relay.local_addr().to_string(),
        node.token("off-31", Role::Officer),
    );
    let (_officer, _oev) = tokio::time::timeout(WAIT, client::connect(cfg))
        .await
        .unwrap()
        .unwrap();
    let op_token = node.token("op-31", Role::Operator);
    let (mut op, _) = Ws::hello(&node, op_token.clone()).await;
    // The tablet dies (battery out in a basement): nothing more from it, ever.
    relay.set_cut(true);
    let p = op.event("presence").await;
    assert_eq!(
        (p["subject"].as_str(), p["online"].as_bool()),
        (Some("off-31"), Some(false)),
        "{p}"
    );
    let units = api_units(&node, &op_token).await;
    let u = units.iter().find(|u| u["subject"] == "off-31").unwrap();
    assert_eq!(u["online"], false);
    relay.shutdown().await;
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drone_telemetry_reaches_operators_at_5_hz_and_commands_round_trip_to_the_bridge() {
    const DRONE: &str = "pilot-3-drone1";
    let node = start_node().await;
    let op_token = node.token("op-1", Role::Operator);
    let (_op, mut opev) = quic_login(&node, "op-1", Role::Operator).await;
    let (cmdr, mut cev) = quic_login(&node, "cmd-1", Role::Commander).await;
    let (pilot, mut pev) = quic_login(&node, "pilot-3", Role::Pilot).await;
    let lat = |i: u32| 30.5 + f64::from(i) * 1e-5;

    // The bridge: 50 Hz for 2 s; the battery only in the first report.
    let started = tokio::time::Instant::now();
    let sender = {
        let pilot = pilot.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..100u32 {
                tick.tick().await;
                let t = Telemetry {
                    time: signaling::UnixMs(common::now_unix() * 1000),
                    mode: Some("GUIDED".into()),
                    armed: Some(true),
                    lat: Some(lat(i)),
                    lon: Some(114.3),
                    alt_amsl: Some(60.0),
                    battery_pct: (i == 0).then_some(76.0),
                    ..Telemetry::default()
                };
                pilot
                    .send(ClientMsg::Telemetry {
                        drone: DRONE.into(),
                        t: Box::new(t),
                    })
                    .expect("bridge connected");
            }
            started.elapsed()
        })
    };
    // The operator: every telemetry event until the last report shows up.
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let e = next_event(&mut opev, "telemetry").await;
            let done = e["t"]["lat"].as_f64() == Some(lat(99));
            seen.push(e);
            if done {
                return seen;
            }
        }
    });
    // The units API shows the drone and where it is within a second.
    let unit = common::wait_for("the drone in /api/units", WAIT, || async {
        api_units(&node, &op_token)
            .await
            .into_iter()
            .find(|u| u["subject"] == DRONE && u["position"]["lat"].is_f64())
    })
    .await;
    let shown_after = started.elapsed();
    assert!(
        shown_after < Duration::from_secs(1),
        "position shown after {shown_after:?}"
    );
    assert_eq!(
        (
            unit["kind"].as_str(),
            unit["bridge"].as_str(),
            unit["link"].as_str()
        ),
        (Some("drone"), Some("pilot-3"), Some("up"))
    );
    assert_eq!(
        (unit["online"].as_bool(), unit["position"]["alt"].as_f64()),
        (Some(true), Some(60.0))
    );
    assert_eq!(unit["telemetry"]["battery_pct"], 76.0);

    let sent_for = tokio::time::timeout(WAIT, sender)
        .await
        .expect("sender in time")
        .unwrap();
    let seen = tokio::time::timeout(WAIT, collector)
        .await
        .expect("the last telemetry in time")
        .unwrap();
    // At most 5 a second (plus the first at once and the held one at the end), and not nothing.
    let max = (sent_for.as_millis() / 200) as usize + 2;
    assert!(
        (5..=max).contains(&seen.len()),
        "{} telemetry events while sending for {sent_for:?}",
        seen.len()
    );
    let last = seen.last().unwrap();
    assert_eq!(last["drone"], DRONE);
    assert_eq!(
        (last["t"]["mode"].as_str(), last["t"]["armed"].as_bool()),
        (Some("GUIDED"), Some(true))
    );
    assert_eq!(
        last["t"]["battery_pct"], 76.0,
        "merged from the first report"
    );
    let lats: Vec<f64> = seen
        .iter()
        .map(|e| e["t"]["lat"].as_f64().unwrap())
        .collect();
    assert!(lats.windows(2).all(|w| w[1] > w[0]), "in order: {lats:?}");
    let units = api_units(&node, &op_token).await;
    let u = units.iter().find(|u| u["subject"] == DRONE).unwrap();
    assert_eq!(u["position"]["lat"].as_f64(), Some(lat(99)));

    // A commander's RTL reaches the bridge; the bridge's ack reaches the commander.
    let r = quic_request(
        &cmdr,
        ClientMsg::DroneCommand {
            id: 1,
            drone: DRONE.into(),
            command: DroneCommand::Rtl,
            lat: None,
            lon: None,
            alt: None,
        },
    )
    .await;
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(data["status"], "sent");
    let cmd = data["cmd"].as_str().unwrap().to_owned();
    let ev = next_event(&mut pev, "drone_command").await;
    assert_eq!(
        (
            ev["cmd"].as_str(),
            ev["drone"].as_str(),
            ev["command"].as_str(),
            ev["by"].as_str()
        ),
        (Some(cmd.as_str()), Some(DRONE), Some("rtl"), Some("cmd-1"))
    );
    pilot
        .send(ClientMsg::DroneCommandAck {
            cmd: cmd.clone(),
            result: DroneAckResult::Accepted,
            text: None,
        })
        .unwrap();
    let ack = next_event(&mut cev, "drone_command_ack").await;
    assert_eq!(
        (
            ack["cmd"].as_str(),
            ack["drone"].as_str(),
            ack["result"].as_str()
        ),
        (Some(cmd.as_str()), Some(DRONE), Some("accepted"))
    );
    // Both are in the incident log.
    let v: Value = reqwest::Client::new()
        .get(node.url("/api/incidents/duty/log"))
        .bearer_auth(&op_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = v["entries"].as_array().unwrap();
    let find = |what: &str| {
        entries
            .iter()
            .find(|e| e["what"] == what)
            .map(|e| e["detail"].clone())
    };
    assert_eq!(find("drone_command").unwrap()["cmd"], cmd.as_str());
    assert_eq!(find("drone_command_ack").unwrap()["result"], "accepted");
    eprintln!("drone position in /api/units after {shown_after:?}; {} telemetry events for {sent_for:?} of 50 Hz input", seen.len());
    node.node.shutdown().await;
}
