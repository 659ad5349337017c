//! Security suite: `sessions` (see security.rs). What one client can hold of a node's signaling:
//! QUIC streams and receive windows, sessions per subject over QUIC and WebSocket together, and
//! the cost of a flood of forged hellos to everybody else.
//!
//! Clients here speak the wire protocol themselves (raw quinn, tokio-tungstenite) and read what
//! the node sends as JSON, as a client written from docs/protocol.md would: codes are compared
//! by their wire names.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use signaling::auth::Role;
use signaling::client::{self, ClientConfig};
use signaling::proto::{FrameDecoder, MAX_FRAME, MAX_SERVER_FRAME};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{start_node, start_node_with, TestNode, WAIT};

/// A bound that only catches a lock-out: a round trip that takes longer is a failure.
const ROUND_TRIP_BOUND: Duration = Duration::from_secs(2);

fn hello(token: &str) -> Value {
    json!({"type": "hello", "v": 1, "token": token})
}

fn frame(v: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(v).unwrap();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

// ---------------------------------------------------------------------------------------------
// A raw QUIC client: the node's certificate pinned as the client library does, nothing else.

struct Quic {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    rx: QuicRx,
}

/// The receiving half of a [`Quic`] control stream.
struct QuicRx {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl QuicRx {
    /// The next message, or `None` once the stream or the connection ended.
    async fn recv(&mut self) -> Option<Value> {
        loop {
            if let Some(f) = self.decoder.next_frame().expect("node frames are valid") {
                return Some(serde_json::from_slice(&f).unwrap());
            }
            let chunk = tokio::time::timeout(WAIT, self.recv.read_chunk(1 << 16, true))
                .await
                .expect("data in time");
            match chunk {
                Ok(Some(c)) => self.decoder.push(&c.bytes),
                _ => return None,
            }
        }
    }

    /// The answer to a request with this `id` (events in between are skipped).
    async fn answer(&mut self, id: u64) -> Value {
        loop {
            let m = self.recv().await.expect("an answer before the end");
            if m["re"] == id {
                return m;
            }
        }
    }
}

impl Quic {
    async fn open(node: &TestNode, token: &str) -> Quic {
        let cfg = ClientConfig::new(node.node.quic_addr.to_string(), token);
        let qc = client::pinned_quic_config(&cfg).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(qc);
        let connecting = endpoint
            .connect(node.node.quic_addr, client::SERVER_NAME)
            .unwrap();
        let conn = tokio::time::timeout(WAIT, connecting)
            .await
            .expect("QUIC handshake in time")
            .expect("QUIC handshake");
        let (send, recv) = tokio::time::timeout(WAIT, conn.open_bi())
            .await
            .expect("first stream in time")
            .expect("first stream");
        Quic {
            _endpoint: endpoint,
            conn,
            send,
            rx: QuicRx {
                recv,
                decoder: FrameDecoder::with_max(MAX_SERVER_FRAME),
            },
        }
    }

    async fn send(&mut self, v: &Value) {
        self.send.write_all(&frame(v)).await.expect("write");
    }

    /// Sends `hello` and returns the node's first answer.
    async fn login(node: &TestNode, token: &str) -> (Quic, Value) {
        let mut q = Quic::open(node, token).await;
        q.send(&hello(token)).await;
        let first = q.rx.recv().await.expect("an answer to hello");
        (q, first)
    }

    async fn answer(&mut self, id: u64) -> Value {
        self.rx.answer(id).await
    }

    /// The QUIC application close code once the node has closed the connection.
    async fn close_code(&self) -> Option<u64> {
        let reason = tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("closed in time");
        match reason {
            quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A WebSocket client, as a browser speaks the protocol.

struct Ws(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Ws {
    async fn open(node: &TestNode) -> Ws {
        let url = format!("ws://{}/ws", node.node.http_addr);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect in time")
            .expect("WebSocket upgrade");
        Ws(ws)
    }

    async fn send(&mut self, v: &Value) {
        self.0
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// The next message, or the close code when the node closed.
    async fn recv(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let next = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("a message in time");
            match next {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn login(node: &TestNode, token: &str) -> (Ws, Value) {
        let mut ws = Ws::open(node).await;
        ws.send(&hello(token)).await;
        let first = ws.recv().await.expect("an answer to hello");
        (ws, first)
    }

    /// Reads until the node closes; its close code.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Err(code) = self.recv().await {
                return code;
            }
        }
    }
}

fn is_welcome(m: &Value) -> bool {
    m["type"] == "welcome"
}

fn code(m: &Value) -> &str {
    assert_eq!(m["type"], "error", "{m}");
    m["code"].as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------

/// One bidirectional stream per connection, and a receive window of one frame: a second stream
/// cannot be opened at all, and a client writing far more than a frame while the node does not
/// take its messages is held by flow control near the window, not buffered in the node. The
/// node's core is kept busy for the second part (as a slow office commit on a field node would),
/// with a job that waits for the test to release it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_gets_one_stream_and_is_held_to_its_window() {
    let node = start_node().await;
    let token = node.token("off-1", Role::Officer);
    let (mut a, w) = Quic::login(&node, &token).await;
    assert!(is_welcome(&w), "{w}");
    let (mut b, w) = Quic::login(&node, &node.token("off-2", Role::Officer)).await;
    assert!(is_welcome(&w), "{w}");

    // A second stream: the node grants no credit for it; `open_bi` waits.
    let second = tokio::time::timeout(Duration::from_secs(1), a.conn.open_bi()).await;
    assert!(
        second.is_err(),
        "a second bidirectional stream was opened: {:?}",
        second.map(|r| r.map(|_| ()))
    );
    println!("second open_bi: still waiting after 1 s (no stream credit)");
    a.send(&json!({"type": "ping", "id": 1})).await;
    assert_eq!(a.answer(1).await["type"], "result");

    // The core is busy: nothing of A's is taken. A writes 4 MiB of (valid) messages.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let hub = node.node.hub.clone();
    let busy = tokio::spawn(async move {
        hub.call(move |_core| {
            let _ = entered_tx.send(());
            // Bounded: the core is never held longer than this, whatever the test does.
            let _ = release_rx.recv_timeout(Duration::from_secs(20));
        })
        .await
    });
    tokio::time::timeout(WAIT, entered_rx)
        .await
        .expect("core busy in time")
        .unwrap();
    let pad = "x".repeat(MAX_FRAME - 64);
    let mut bytes = Vec::new();
    for id in 100..164u64 {
        bytes.extend(frame(&json!({"type": "ping", "id": id, "pad": pad})));
    }
    let total = bytes.len();
    let (progress, mut written) = tokio::sync::watch::channel(0usize);
    let mut send = a.send;
    let writer = tokio::spawn(async move {
        let mut at = 0;
        while at < bytes.len() {
            at += send.write(&bytes[at..]).await.expect("write");
            progress.send_replace(at);
        }
        send
    });
    // The writes stop: no progress for 500 ms, within the bound on the whole wait.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "A's writes never stopped");
        match tokio::time::timeout(Duration::from_millis(500), written.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let stalled = *written.borrow();
    let window = 4 + MAX_FRAME;
    println!(
        "A's write of {total} bytes stalls at {stalled} bytes (receive window {window}, \
         read-ahead {}, a frame waiting for its turn and one being decoded)",
        2 * MAX_FRAME
    );
    assert!(
        stalled < total && stalled <= 5 * window + 16 * 1024,
        "the node took {stalled} of {total} bytes while its core took nothing"
    );

    // The core is back: B's session works as before, and A's writes complete (held, not lost).
    release_tx.send(()).unwrap();
    busy.await.unwrap().expect("the busy job ran");
    let t = Instant::now();
    b.send(&json!({"type": "ping", "id": 7})).await;
    let r = tokio::time::timeout(ROUND_TRIP_BOUND, b.answer(7))
        .await
        .expect("B answered in time");
    assert_eq!(r["type"], "result", "{r}");
    println!("B's ping after the stall: {:?}", t.elapsed());
    let mut send = tokio::time::timeout(WAIT, writer)
        .await
        .expect("A's writes complete once the core takes them")
        .unwrap();
    for id in 100..164u64 {
        assert_eq!(a.rx.answer(id).await["type"], "result");
    }
    send.write_all(&frame(&json!({"type": "ping", "id": 2})))
        .await
        .unwrap();
    assert_eq!(a.rx.answer(2).await["type"], "result");
}

/// The per-subject cap counts QUIC and WebSocket sessions together: the (cap+1)-th is refused
/// with `too_many_sessions` on either transport; another subject is not affected; a session that
/// ends frees its place; a detached session still counts, and resuming it works at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_one_subject_are_capped_over_quic_and_websocket_together() {
    let node = start_node().await;
    let cap = 8; // the default for a viewer
    let token = node.token("view-1", Role::Viewer);
    let mut ws = Vec::new();
    let mut quic = Vec::new();
    for _ in 0..cap / 2 {
        let (w, m) = Ws::login(&node, &token).await;
        assert!(is_welcome(&m), "{m}");
        ws.push((w, m["session"].as_str().unwrap().to_owned()));
        let (q, m) = Quic::login(&node, &token).await;
        assert!(is_welcome(&m), "{m}");
        quic.push(q);
    }

    // One more, over each transport: refused, typed, closed with code 22 (4022).
    let (mut w, m) = Ws::login(&node, &token).await;
    assert_eq!(code(&m), "too_many_sessions", "{m}");
    assert!(m["message"].as_str().unwrap().contains("8 sessions"), "{m}");
    assert_eq!(w.close_code().await, Some(4022));
    drop(w);
    let (q, m) = Quic::login(&node, &token).await;
    assert_eq!(code(&m), "too_many_sessions", "{m}");
    assert_eq!(q.close_code().await, Some(22));

    // Another subject is not affected.
    let (_other, m) = Ws::login(&node, &node.token("view-2", Role::Viewer)).await;
    assert!(is_welcome(&m), "{m}");

    // `bye` ends a session: its place is free at once.
    let (mut first, _) = ws.remove(0);
    first.send(&json!({"type": "bye"})).await;
    first.close_code().await;
    drop(first);
    let (_q5, m) = Quic::login(&node, &token).await;
    assert!(is_welcome(&m), "{m}");

    // A dropped connection leaves its session awaiting resume: it still counts…
    let connections = |n: usize| {
        let hub = node.node.hub.clone();
        crate::common::wait_for("the node's connection count", WAIT, move || {
            let hub = hub.clone();
            async move { (hub.call(|c| c.connection_count()).await.ok()? == n).then_some(()) }
        })
    };
    connections(3 + 4 + 1 + 1).await; // ws, quic, the fifth, view-2's
    let (dropped, session) = ws.remove(0);
    drop(dropped);
    connections(2 + 4 + 1 + 1).await;
    let (mut w, m) = Ws::login(&node, &token).await;
    assert_eq!(code(&m), "too_many_sessions", "{m}");
    assert_eq!(w.close_code().await, Some(4022));
    // …and resuming it works at the cap.
    let mut w = Ws::open(&node).await;
    w.send(&json!({"type": "hello", "v": 1, "token": token,
                   "resume": {"session": session, "after": 0}}))
        .await;
    let m = w.recv().await.unwrap();
    assert!(is_welcome(&m), "{m}");
    assert_eq!(m["resumed"], true, "{m}");
    assert_eq!(m["session"], session.as_str());
    w.send(&json!({"type": "ping", "id": 1})).await;
    loop {
        // The replay of what the session missed comes first.
        let r = w.recv().await.expect("the resumed session answers");
        if r["type"] != "event" {
            assert_eq!((&r["type"], &r["re"]), (&json!("result"), &json!(1)), "{r}");
            break;
        }
    }
    drop(quic);
}

/// A smaller cap from the configuration applies; console roles have their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_caps_come_from_the_configuration() {
    let node = start_node_with(|c| {
        c.signaling.max_sessions_per_subject = 1;
        c.signaling.max_sessions_per_console = 2;
    })
    .await;
    let off = node.token("off-1", Role::Officer);
    let (_a, m) = Ws::login(&node, &off).await;
    assert!(is_welcome(&m), "{m}");
    let (_b, m) = Quic::login(&node, &off).await;
    assert_eq!(code(&m), "too_many_sessions", "{m}");
    let op = node.token("op-1", Role::Operator);
    let (_c, m) = Ws::login(&node, &op).await;
    assert!(is_welcome(&m), "{m}");
    let (_d, m) = Quic::login(&node, &op).await;
    assert!(is_welcome(&m), "{m}");
    let (_e, m) = Ws::login(&node, &op).await;
    assert_eq!(code(&m), "too_many_sessions", "{m}");
}

/// 2,000 hellos with forged tokens (a trusted key id, a wrong signature: the full Ed25519 check
/// runs for each), 8 connections at a time, while a normal session's pings keep being answered.
/// Each forged hello costs the node a connection and one verification; the pings go through the
/// signaling core, which no longer verifies tokens itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_hellos_leaves_other_sessions_answered() {
    let node = start_node().await;
    let (mut ok, m) = Quic::login(&node, &node.token("op-1", Role::Operator)).await;
    assert!(is_welcome(&m), "{m}");

    let good = node.token("off-9", Role::Officer);
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flip = if sig.starts_with('A') { 'B' } else { 'A' };
    let forged = Arc::new(format!("{head}.{flip}{}", &sig[1..]));

    const HELLOS: usize = 2000;
    const AT_ONCE: usize = 8;
    let refused = Arc::new(AtomicUsize::new(0));
    let base = format!("ws://{}/ws", node.node.http_addr);
    let flood_started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..AT_ONCE {
        let (forged, refused, url) = (forged.clone(), refused.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..HELLOS / AT_ONCE {
                let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .expect("WebSocket upgrade");
                let mut ws = Ws(ws);
                ws.send(&hello(&forged)).await;
                let m = ws.recv().await.expect("an answer to hello");
                assert_eq!(code(&m), "unauthorized", "{m}");
                assert_eq!(ws.close_code().await, Some(4013));
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut rtts = Vec::new();
    let mut id = 0u64;
    // Pings paced 10 ms apart, well under the session's rate limit.
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while workers.iter().any(|w| !w.is_finished()) {
        pace.tick().await;
        id += 1;
        let t = Instant::now();
        ok.send(&json!({"type": "ping", "id": id})).await;
        let r = tokio::time::timeout(ROUND_TRIP_BOUND, ok.answer(id))
            .await
            .unwrap_or_else(|_| panic!("ping {id} not answered within {ROUND_TRIP_BOUND:?}"));
        assert_eq!(r["type"], "result", "{r}");
        rtts.push(t.elapsed());
    }
    let flood_time = flood_started.elapsed();
    for w in workers {
        w.await.expect("a flood worker");
    }
    assert_eq!(refused.load(Ordering::Relaxed), HELLOS);
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
    println!(
        "{HELLOS} forged hellos in {flood_time:?} ({:.0}/s, {AT_ONCE} at a time); \
         {} pings meanwhile: p50 {:?}, p99 {:?}, max {:?}",
        HELLOS as f64 / flood_time.as_secs_f64(),
        rtts.len(),
        pct(0.50),
        pct(0.99),
        rtts[rtts.len() - 1]
    );
    assert!(
        rtts.len() >= 10,
        "only {} pings during the flood",
        rtts.len()
    );
}
