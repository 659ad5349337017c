//! Security suite: `listeners` (see security.rs) — the node's HTTP listeners under a flood of
//! idle sockets and slow bodies from one address, authentication before any body is read, and
//! the per-subject cap on media peers (issue 16, items 3, 4 and 7).
//!
//! The attack comes from 127.0.0.1, as does the `/healthz` probe: the node must not lock the
//! probe out while it sheds the attacker's sockets (docs/api.md, "Connections").

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use media_server::config::NodeConfig;
use signaling::auth::Role;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use yiwang_tests::gst_peer::{
    Pattern, PublishOptions, VideoCodec, ViewOptions, WhepViewer, WhipPublisher,
};

use crate::common::{canned_offer, start_node_with, TestNode, MEDIA, WAIT};

/// Timeouts set short in these tests so that they stay quick (defaults: 10, 30, 30 s).
const HEADER_SECS: u64 = 2;
const IDLE_SECS: u64 = 2;
const BODY_SECS: u64 = 3;
/// Slack on top of a configured timeout for the node to act on it (timer, scheduling on two
/// busy cores): a lock-out bound, not a timing figure.
const SLACK: Duration = Duration::from_secs(3);
/// `/healthz` must answer within this throughout the attack (a lock-out, not a timing figure;
/// the figures go to bench/RESULTS.md).
const HEALTH_BOUND: Duration = Duration::from_secs(2);

const IDLE_SOCKETS: usize = 1000;
/// Slow bodies of each kind (tokenless to WHIP, tokened to the orders): 300 in all.
const SLOW_EACH: usize = 150;
/// Over HTTPS fewer (each costs a TLS handshake of the debug build, on two shared cores).
const SLOW_EACH_TLS: usize = 50;

fn short_timeouts(c: &mut NodeConfig) {
    c.http.header_timeout_secs = HEADER_SECS;
    c.http.idle_timeout_secs = IDLE_SECS;
    c.http.body_timeout_secs = BODY_SECS;
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How the tests reach the listener: plain TCP or TLS pinned to the node's certificate.
#[derive(Clone)]
struct Dialer {
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Dialer {
    fn plain(addr: SocketAddr) -> Dialer {
        Dialer { addr, tls: None }
    }

    fn tls(addr: SocketAddr, cert: Vec<u8>) -> Dialer {
        Dialer {
            addr,
            tls: Some(crate::common::pinned_connector(cert)),
        }
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                Ok(Box::new(c.connect(name, tcp).await?))
            }
        }
    }
}

/// Sends `head` (a request without its body, or with all of it) and reads until the node
/// closes: (status, the whole answer, time to the first answer byte).
async fn exchange(dialer: &Dialer, head: &str) -> (u16, String, Duration) {
    let mut s = dialer.connect().await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("send request");
    let t0 = Instant::now();
    let mut first = None;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                first.get_or_insert_with(|| t0.elapsed());
                text.extend_from_slice(&buf[..n]);
            }
        }
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text, first.unwrap_or(Duration::MAX))
}

/// Polls `GET /healthz` on a fresh connection every 50 ms until `stop`: panics on an answer
/// that is not 200 within [`HEALTH_BOUND`]; returns (polls, slowest answer).
async fn probe_health(dialer: Dialer, stop: Arc<AtomicBool>) -> (usize, Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let (mut polls, mut slowest) = (0, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t0 = Instant::now();
        let (status, text, _) = tokio::time::timeout(
            HEALTH_BOUND,
            exchange(
                &dialer,
                "GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n",
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("/healthz locked out: no answer within {HEALTH_BOUND:?}"));
        assert_eq!(status, 200, "/healthz under attack: {text}");
        polls += 1;
        slowest = slowest.max(t0.elapsed());
    }
    (polls, slowest)
}

/// What a slow body saw: (status, answer, first answer byte after the headers, closed after).
type Slow = (u16, String, Duration, Duration);

/// Sends the headers of a 60,000-byte body to `path`, then trickles it at a few bytes per
/// second until the node answers and closes.
async fn slow_body(dialer: Dialer, path: &'static str, token: Option<String>) -> Slow {
    let s = dialer.connect().await.expect("connect");
    let (mut rd, mut wr) = tokio::io::split(s);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let ct = if path.starts_with("/whip") {
        "application/sdp"
    } else {
        "application/json"
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: {ct}\r\nContent-Length: 60000\r\n{auth}\r\n"
    );
    wr.write_all(head.as_bytes()).await.expect("send headers");
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let (mut text, mut first) = (Vec::new(), None);
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return t0.elapsed(),
                    Ok(n) => {
                        first.get_or_insert_with(|| t0.elapsed());
                        text.extend_from_slice(&buf[..n]);
                    }
                },
                _ = tick.tick(), if first.is_none() => {
                    let _ = wr.write_all(b"{").await;
                }
            }
        }
    })
    .await
    .expect("the node closes a slow body's connection");
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text, first.unwrap_or(Duration::MAX), closed)
}

/// Opens `n` TCP connections that never send a byte; resolves to how long after its opening
/// each one was closed by the node (bounded by the header timeout plus slack).
async fn idle_sockets(addr: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<Duration>> {
    let mut waits = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("idle connect");
        let t0 = Instant::now();
        waits.push(tokio::spawn(async move {
            let mut b = [0u8; 64];
            let within = Duration::from_secs(HEADER_SECS) + SLACK;
            match tokio::time::timeout(within, s.read(&mut b)).await {
                Ok(Ok(0) | Err(_)) => t0.elapsed(),
                Ok(Ok(_)) => panic!("the node sent bytes to a silent socket"),
                Err(_) => panic!("an idle socket was still open after {within:?}"),
            }
        }));
    }
    waits
}

/// Figures of one attack run.
struct Outcome {
    polls: usize,
    slowest_health: Duration,
    slowest_idle_close: Duration,
    slowest_401: Duration,
    slowest_408_close: Duration,
}

/// 1,000 idle sockets and 300 slow bodies (half without a token, to WHIP; half with one, to
/// the orders) against `n` through `dialer`, `/healthz` polled throughout. Asserts what each
/// must see; `during` runs meanwhile (a viewer's check), until the attack is over.
async fn attack(
    n: &TestNode,
    dialer: Dialer,
    slow_each: usize,
    during: impl FnMut() -> bool,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(probe_health(dialer.clone(), stop.clone()));
    let token = n.token("cmd-1", Role::Commander);
    let run = {
        let dialer = dialer.clone();
        tokio::spawn(async move {
            let idle = idle_sockets(dialer.addr, IDLE_SOCKETS).await;
            let mut slow = Vec::new();
            for i in 0..2 * slow_each {
                let (path, token) = if i % 2 == 0 {
                    ("/whip/cam-slow", None)
                } else {
                    ("/api/orders", Some(token.clone()))
                };
                slow.push(tokio::spawn(slow_body(dialer.clone(), path, token)));
            }
            let mut idle_closed = Vec::new();
            for w in idle {
                idle_closed.push(w.await.expect("idle socket task"));
            }
            let mut answers = Vec::new();
            for s in slow {
                answers.push(s.await.expect("slow body task"));
            }
            (idle_closed, answers)
        })
    };
    let mut during = during;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !run.is_finished() {
        tick.tick().await;
        assert!(during(), "the check running during the attack failed");
    }
    let (idle_closed, answers) = run.await.expect("attack");
    stop.store(true, Ordering::Relaxed);
    let (polls, slowest_health) = health.await.expect("/healthz probe");

    let slowest_idle_close = idle_closed.iter().max().copied().unwrap();
    let (mut slowest_401, mut slowest_408_close) = (Duration::ZERO, Duration::ZERO);
    for (status, text, first, closed) in &answers {
        if text.contains("no_token") {
            assert_eq!(*status, 401, "{text}");
            slowest_401 = slowest_401.max(*first);
        } else {
            assert_eq!(*status, 408, "a trickled tokened body: {text}");
            assert!(text.contains("body_timeout"), "{text}");
            assert!(
                text.to_ascii_lowercase().contains("connection: close"),
                "{text}"
            );
            slowest_408_close = slowest_408_close.max(*closed);
        }
    }
    let tokenless = answers.iter().filter(|a| a.1.contains("no_token")).count();
    assert_eq!(tokenless, slow_each, "every tokenless body got its 401");
    assert!(
        slowest_401 < HEALTH_BOUND,
        "401 before the body: {slowest_401:?}"
    );
    assert!(
        slowest_408_close <= Duration::from_secs(BODY_SECS) + SLACK,
        "slow bodies closed at the body timeout: {slowest_408_close:?}"
    );
    assert!(polls > 0);
    Outcome {
        polls,
        slowest_health,
        slowest_idle_close,
        slowest_401,
        slowest_408_close,
    }
}

fn report(what: &str, n: &TestNode, o: &Outcome) {
    let s = n.node.connections.stats();
    println!(
        "{what}: /healthz {} polls, slowest {:?}; idle sockets closed by {:?} \
         ({} evicted, {} timed out, {} refused); 401 within {:?}; 408 + close by {:?}",
        o.polls,
        o.slowest_health,
        o.slowest_idle_close,
        s.evicted,
        s.timed_out,
        s.refused,
        o.slowest_401,
        o.slowest_408_close
    );
}

/// 1,000 idle sockets and 300 slow bodies from 127.0.0.1: `/healthz`, probed from the same
/// address on fresh connections, answers every time; a WHEP viewer of a real GStreamer
/// publisher keeps decoding; the node closes the idle sockets within the header timeout and
/// answers the tokenless bodies 401 at once and the trickled tokened ones 408 at the body
/// timeout. The same attack once more against the HTTPS listener (1,000 idle sockets, 100 slow
/// bodies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_slow_bodies_lock_out_neither_health_nor_a_viewer() {
    let _media = MEDIA.lock().await;
    let n = start_node_with(short_timeouts).await;
    let publisher = WhipPublisher::start(
        &n.base,
        "cam1",
        &n.token("cam1", Role::Officer),
        PublishOptions {
            codec: VideoCodec::H264,
            width: 320,
            height: 240,
            fps: 15,
            audio: false,
            bitrate_kbps: 300,
            via: None,
        },
    )
    .await
    .expect("publish over WHIP");
    let viewer = WhepViewer::start(
        &n.base,
        "cam1",
        &n.token("wall-1", Role::Viewer),
        ViewOptions {
            audio: false,
            ..ViewOptions::default()
        },
    )
    .await
    .expect("view over WHEP");
    viewer
        .wait_frames(1, WAIT)
        .await
        .expect("first decoded frame");

    // The viewer keeps decoding: never more than this without a new frame during the attack.
    let freeze_bound = Duration::from_secs(3);
    let (mut last_frames, mut last_new) = (viewer.stats().frames_decoded, Instant::now());
    let mut longest_freeze = Duration::ZERO;
    let first_frames = last_frames;
    let o = attack(&n, Dialer::plain(n.node.http_addr), SLOW_EACH, || {
        let f = viewer.stats().frames_decoded;
        if f > last_frames {
            (last_frames, last_new) = (f, Instant::now());
        }
        longest_freeze = longest_freeze.max(last_new.elapsed());
        longest_freeze < freeze_bound
    })
    .await;
    report("HTTP", &n, &o);
    println!(
        "viewer: {} frames decoded during the attack, longest freeze {longest_freeze:?}",
        last_frames - first_frames
    );
    assert!(
        last_frames > first_frames,
        "the viewer decoded during the attack"
    );
    // What it decoded is still the publisher's picture (corrupt frames decode too).
    viewer
        .expect_picture(Pattern::Ball, 4)
        .await
        .expect("the viewer shows the publisher's ball after the attack");
    assert!(
        o.slowest_idle_close <= Duration::from_secs(HEADER_SECS) + SLACK,
        "{:?}",
        o.slowest_idle_close
    );
    let s = n.node.connections.stats();
    assert!(s.evicted > 0 && s.timed_out > 0, "{s:?}");
    viewer.stop().await.unwrap();
    publisher.stop().await.unwrap();
    n.node.shutdown().await;

    // HTTPS: the idle sockets never start a handshake, the header timeout covers it; 100 slow
    // bodies after a full handshake each.
    let n = start_node_with(|c| {
        short_timeouts(c);
        c.http.https = true;
    })
    .await;
    let dialer = Dialer::tls(n.node.http_addr, n.node.identity.cert_der.clone());
    let o = attack(&n, dialer, SLOW_EACH_TLS, || true).await;
    report("HTTPS", &n, &o);
    assert!(
        o.slowest_idle_close <= Duration::from_secs(HEADER_SECS) + SLACK,
        "{:?}",
        o.slowest_idle_close
    );
    n.node.shutdown().await;
}

/// A request without a token that announces a 60,000-byte body and sends none of it gets its
/// 401 at once on every route that takes a token and a body; a keep-alive connection is closed
/// at the idle timeout; one subject's WHIP/WHEP sessions are capped (429 `too_many_sessions`)
/// and a new one is allowed once one is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_wait_for_the_token_and_media_peers_are_capped_per_subject() {
    let n = start_node_with(|c| {
        short_timeouts(c);
        c.http.media_peers_per_subject = 2;
    })
    .await;
    let dialer = Dialer::plain(n.node.http_addr);
    for (path, ct) in [
        ("/whip/cam1", "application/sdp"),
        ("/whep/cam1", "application/sdp"),
        ("/api/orders", "application/json"),
        ("/api/orders/o-1/answer", "application/json"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: {ct}\r\nContent-Length: 60000\r\n\r\n"
        );
        let (status, text, first) = tokio::time::timeout(HEALTH_BOUND, exchange(&dialer, &head))
            .await
            .unwrap_or_else(|_| panic!("{path}: no 401 (and close) without the body"));
        assert_eq!(status, 401, "{path}: {text}");
        assert!(text.contains("\"no_token\""), "{path}: {text}");
        assert!(first < HEALTH_BOUND, "{path}: {first:?}");
    }

    // Keep-alive: one request answered, then the node closes the idle connection.
    let mut s = dialer.connect().await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let within = Duration::from_secs(IDLE_SECS) + SLACK;
    tokio::time::timeout(within, async {
        let mut b = [0u8; 4096];
        while let Ok(k) = s.read(&mut b).await {
            if k == 0 {
                break;
            }
            got.extend_from_slice(&b[..k]);
        }
    })
    .await
    .expect("the idle keep-alive connection is closed at the idle timeout");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(t0.elapsed() >= Duration::from_secs(IDLE_SECS) - Duration::from_millis(100));

    // The media-peer cap: two sessions of off-1, the third refused, again after a delete.
    let http = reqwest::Client::new();
    let token = n.token("off-1", Role::Officer);
    let post = |kind: &str, stream: &str| {
        http.post(n.url(&format!("/{kind}/{stream}")))
            .bearer_auth(&token)
            .header("content-type", "application/sdp")
            .body(canned_offer())
            .send()
    };
    let a = post("whip", "off-1-a").await.unwrap();
    assert_eq!(a.status(), 201);
    let a_url = a.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(post("whip", "off-1-b").await.unwrap().status(), 201);
    for (kind, stream) in [("whip", "off-1-c"), ("whep", "off-1-a")] {
        let r = post(kind, stream).await.unwrap();
        assert_eq!(r.status(), 429, "{kind} {stream}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "too_many_sessions", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("media_peers_per_subject"),
            "{body}"
        );
    }
    // Another subject is not affected.
    let other = http
        .post(n.url("/whip/off-2"))
        .bearer_auth(n.token("off-2", Role::Officer))
        .header("content-type", "application/sdp")
        .body(canned_offer())
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 201);
    let del = http
        .delete(n.url(&a_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(post("whip", "off-1-c").await.unwrap().status(), 201);
    n.node.shutdown().await;
}
