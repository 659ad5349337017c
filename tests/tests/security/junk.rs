//! Security suite: `junk` (see security.rs). Seeded random bytes and malformed input on every
//! port a node opens — HTTP, HTTPS, the media UDP socket, the signaling QUIC endpoint, the trunk
//! QUIC endpoint and the separate metrics listener — while a signaling session is in progress:
//! the node stays up, `/healthz` stays 200, the session still answers, and the media socket's
//! drop counter counts the junk; a trunk handshake with another CA's certificate is refused by
//! the node's TLS. Then path traversal on every route that takes a path: 400 or
//! 404, never a file from outside.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use signaling::auth::Role;
use signaling::proto::{encode, ClientMsg, ServerMsg, VERSION};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, TestNode, WAIT};
use crate::tokens::{ws_open, ws_recv, RawQuic, WsStream, ANSWER};

/// Junk blobs per port; their sizes are random up to 1500 (UDP) or 8192 (TCP) bytes.
const BLOBS: usize = 64;

/// Byte strings that are almost a valid request, for the HTTP listeners.
fn malformed_http() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "GET / HTTP/9.9\r\n\r\n",
        "GET\r\n\r\n",
        "BREW /coffee HTCPCP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "POST /whip/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde",
        "POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
        "GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "\u{16}\u{3}\u{1}\u{0}\u{5}hello",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    v.push(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200_000)).into_bytes());
    v
}

/// Sends `bytes` on a new TCP connection to `addr`, then reads whatever comes back (bounded).
async fn tcp_junk(addr: SocketAddr, bytes: Vec<u8>) {
    let Ok(Ok(mut s)) = tokio::time::timeout(ANSWER, tokio::net::TcpStream::connect(addr)).await
    else {
        panic!("{addr} refused a TCP connection");
    };
    let _ = s.write_all(&bytes).await;
    let _ = s.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
}

/// Fires seeded TCP junk (random blobs and `malformed_http`) at `addr`, all at once.
async fn tcp_junk_all(addr: SocketAddr, rng: &mut StdRng, malformed: bool) {
    let mut blobs: Vec<Vec<u8>> = (0..BLOBS)
        .map(|_| {
            let n = rng.gen_range(1..8192);
            (0..n).map(|_| rng.gen()).collect()
        })
        .collect();
    if malformed {
        blobs.extend(malformed_http());
    }
    let tasks: Vec<_> = blobs
        .into_iter()
        .map(|b| tokio::spawn(tcp_junk(addr, b)))
        .collect();
    for t in tasks {
        t.await.expect("junk task");
    }
}

/// Sends seeded random datagrams to `addr`; `first` bounds the first byte's range.
async fn udp_junk(
    addr: SocketAddr,
    rng: &mut StdRng,
    n: usize,
    first: std::ops::RangeInclusive<u8>,
) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..n {
        let len = rng.gen_range(1..1500);
        let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        d[0] = rng.gen_range(first.clone());
        sock.send_to(&d, addr).await.unwrap();
    }
}

/// QUIC-shaped junk: long-header Initial packets (version 1) with random connection ids and a
/// random body, padded to 1200 bytes as a real Initial is, and short-header packets.
async fn quic_junk(addr: SocketAddr, rng: &mut StdRng) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..BLOBS {
        let mut d = if i % 2 == 0 {
            let mut d = vec![0xc0 | rng.gen_range(0..4u8), 0, 0, 0, 1];
            for _ in 0..2 {
                let cid = rng.gen_range(0..=20u8);
                d.push(cid);
                d.extend((0..cid).map(|_| rng.gen::<u8>()));
            }
            d
        } else {
            vec![0x40 | rng.gen_range(0..64u8)]
        };
        d.extend((d.len()..1200).map(|_| rng.gen::<u8>()));
        sock.send_to(&d, addr).await.unwrap();
    }
    udp_junk(addr, rng, BLOBS, 0..=255).await;
}

/// `GET /healthz` (plain HTTP) is 200.
async fn healthy(node: &TestNode) {
    let r = tokio::time::timeout(ANSWER, reqwest::get(node.url("/healthz")))
        .await
        .expect("/healthz in time")
        .expect("/healthz answers");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// A raw HTTP/1.1 request line on its own connection: (status, body).
async fn raw_get(addr: SocketAddr, target: &[u8], token: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(ANSWER, s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:.200}"));
    (status, text)
}

/// Says hello over `/ws` (a session in progress) and returns the stream.
async fn ws_session(node: &TestNode, sub: &str) -> WsStream {
    let mut ws = ws_open(node).await;
    let hello = ClientMsg::Hello {
        v: VERSION,
        token: node.token(sub, Role::Operator),
        resume: None,
    };
    ws.send(Message::Text(encode(&hello).into())).await.unwrap();
    assert!(matches!(ws_recv(&mut ws).await, Ok(ServerMsg::Welcome(_))));
    ws
}

async fn ws_ping(ws: &mut WsStream, id: u64) {
    ws.send(Message::Text(encode(&ClientMsg::Ping { id }).into()))
        .await
        .expect("the session is still open");
    loop {
        match ws_recv(ws).await {
            Ok(ServerMsg::Result { re, .. }) if re == id => return,
            Ok(_) => continue,
            Err(code) => panic!("the /ws session was closed ({code:?})"),
        }
    }
}

async fn quic_session(node: &TestNode, sub: &str) -> RawQuic {
    let token = node.token(sub, Role::Operator);
    let mut q = RawQuic::open(node, &token).await;
    q.send(&ClientMsg::Hello {
        v: VERSION,
        token,
        resume: None,
    })
    .await;
    assert!(matches!(q.recv().await, Some(ServerMsg::Welcome(_))));
    q
}

async fn quic_ping(q: &mut RawQuic, id: u64) {
    q.send(&ClientMsg::Ping { id }).await;
    loop {
        match q.recv().await {
            Some(ServerMsg::Result { re, .. }) if re == id => return,
            Some(_) => continue,
            None => panic!("the QUIC session was closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_every_port_leaves_the_node_and_its_sessions_standing() {
    let ca = tempfile::tempdir().unwrap();
    media_server::cascade::ca::ProvinceCa::init(ca.path(), "junk province").unwrap();
    let (cert, key) = media_server::cascade::ca::ProvinceCa::load(ca.path())
        .unwrap()
        .issue_to(
            &trunk::NodeName::parse("junk-1").unwrap(),
            &ca.path().join("certs"),
        )
        .unwrap();
    let node = common::start_node_with(|c| {
        c.node.id = Some("junk-1".parse().unwrap());
        c.http.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.trunk.listen = Some("127.0.0.1:0".parse().unwrap());
        c.trunk.ca = Some(ca.path().join("ca.pem"));
        c.trunk.cert = Some(cert);
        c.trunk.key = Some(key);
    })
    .await;
    let n = &node.node;
    let metrics_addr = n.metrics_addr.expect("metrics listener");
    let trunk_addr = n.trunk.as_ref().expect("trunk").local_addr();
    let mut ws = ws_session(&node, "op-ws").await;
    let mut q = quic_session(&node, "op-quic").await;
    let metric = |name: &'static str| async move {
        let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    };
    let malformed = "yiwang_drops_total{reason=\"malformed\"}";
    let before = metric(malformed).await;
    let packets_before = metric("yiwang_packets_in_total").await;

    let mut rng = StdRng::seed_from_u64(16);
    tcp_junk_all(n.http_addr, &mut rng, true).await;
    tcp_junk_all(metrics_addr, &mut rng, true).await;
    // Media socket: first bytes 64..=127 are none of STUN, DTLS, RTP/RTCP (RFC 7983): each one
    // must be counted as malformed. Then anything at all, which must merely be survived.
    udp_junk(n.media_addr, &mut rng, BLOBS, 64..=127).await;
    udp_junk(n.media_addr, &mut rng, BLOBS, 0..=255).await;
    quic_junk(n.quic_addr, &mut rng).await;
    quic_junk(trunk_addr, &mut rng).await;
    // A trunk handshake with a certificate from another CA is refused by the node.
    let rogue_ca = tempfile::tempdir().unwrap();
    media_server::cascade::ca::ProvinceCa::init(rogue_ca.path(), "rogue").unwrap();
    let (rcert, rkey) = media_server::cascade::ca::ProvinceCa::load(rogue_ca.path())
        .unwrap()
        .issue_to(
            &trunk::NodeName::parse("mallory").unwrap(),
            &rogue_ca.path().join("certs"),
        )
        .unwrap();
    let rogue = media_server::cascade::tls::TrunkCredentials::load(
        &ca.path().join("ca.pem"),
        &rcert,
        &rkey,
    )
    .expect("rogue credentials");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(rogue.client_config_any_node().unwrap());
    let refused = tokio::time::timeout(ANSWER, async {
        let conn = ep
            .connect(trunk_addr, media_server::cascade::tls::ANY_NODE)
            .unwrap()
            .await?;
        // TLS 1.3: the server's refusal of the client certificate may come after the client
        // considers the handshake done; the first stream then fails.
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"hello?").await?;
        let mut buf = [0u8; 1];
        recv.read_exact(&mut buf).await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
    .expect("the rogue trunk is answered in time");
    let err = refused.expect_err("a trunk with another CA's certificate was accepted");
    // The node's TLS refuses the certificate itself ("invalid peer certificate: UnknownIssuer").
    assert!(format!("{err}").contains("certificate"), "{err}");

    common::wait_for("the junk counted as malformed", WAIT, || async {
        (metric(malformed).await >= before + BLOBS as u64).then_some(())
    })
    .await;
    assert!(metric("yiwang_packets_in_total").await >= packets_before + 2 * BLOBS as u64);
    healthy(&node).await;
    ws_ping(&mut ws, 1).await;
    quic_ping(&mut q, 2).await;
    // A QUIC connection that speaks junk on its control stream is closed; others are not.
    let mut bad = RawQuic::open(&node, &node.token("x", Role::Viewer)).await;
    let blob: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    let _ = bad.send.write_all(&blob).await;
    assert!(
        bad.closed().await.is_some(),
        "a junk control stream is closed by the node"
    );
    quic_ping(&mut q, 3).await;

    // Path traversal on every route that takes a path, and over-long or NUL paths: 400 or 404
    // (414/431 from the HTTP layer for the over-long), never a file.
    let token = node.token("admin-t", Role::Admin);
    let long = format!("/{}", "a/".repeat(6000));
    let mut targets: Vec<Vec<u8>> = [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/vendor/../../data/issuer.key",
        "/vendor/leaflet/%2e%2e%2f%2e%2e%2f%2e%2e%2fdata%2fissuer.key",
        "/data/issuer.key",
        "/issuer.key",
        "/revoked.jsonl",
        "/index.html%00.png",
        "/%00",
        "/..\\..\\data\\issuer.key",
        "/api/attachments/..%2f..%2fissuer.key",
        "/api/attachments/%2e%2e%2f%2e%2e%2fnode.key",
        "/api/attachments/../../issuer.key",
        "/api/attachments/..",
        "/api/incidents/..%2f..%2fissuer.key/log",
        "/api/incidents/%00/log",
        "/whep/..%2f..%2fissuer.key",
        "/whip/%2e%2e",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    targets.push(long.into_bytes());
    targets.push(b"/index.html\0".to_vec());
    let secret = std::fs::read(node.dir.path().join("data").join("issuer.key")).unwrap();
    for t in targets {
        let shown = String::from_utf8_lossy(&t)
            .chars()
            .take(80)
            .collect::<String>();
        let (status, text) = raw_get(n.http_addr, &t, &token).await;
        assert!(
            [400, 404, 405, 414, 431].contains(&status),
            "{shown}: {status} {text:.300}"
        );
        assert!(
            !text.contains("root:") && !text.contains("PRIVATE KEY"),
            "{shown}: {text:.300}"
        );
        assert!(
            secret.len() < 16 || !text.as_bytes().windows(16).any(|w| w == &secret[..16]),
            "{shown} served the issuer key"
        );
    }
    healthy(&node).await;
    ws_ping(&mut ws, 4).await;
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_the_https_listener_leaves_it_serving() {
    let node = common::start_node_with(|c| c.http.https = true).await;
    let n = &node.node;
    let mut q = quic_session(&node, "op-q").await;
    let mut rng = StdRng::seed_from_u64(443);
    // Random bytes, plain HTTP on the TLS port, and a truncated ClientHello.
    tcp_junk_all(n.http_addr, &mut rng, true).await;
    let truncated = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    tcp_junk(n.http_addr, truncated).await;
    let (_, text) = https_get(n.http_addr, n.identity.cert_der.clone(), "/healthz").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.300}");
    // Junk inside a good TLS session is an HTTP 400 or a close, and the listener still serves.
    let (_, text) = https_raw(
        n.http_addr,
        n.identity.cert_der.clone(),
        b"\x00\xffjunk\r\n\r\n".to_vec(),
    )
    .await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text:.300}"
    );
    let (_, text) = https_get(
        n.http_addr,
        n.identity.cert_der.clone(),
        "/%2e%2e/%2e%2e/etc/passwd",
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 404") || text.starts_with("HTTP/1.1 400"),
        "{text:.300}"
    );
    let (_, text) = https_get(n.http_addr, n.identity.cert_der.clone(), "/healthz").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.300}");
    quic_ping(&mut q, 1).await;
    node.node.shutdown().await;
}

async fn https_get(addr: SocketAddr, cert: Vec<u8>, path: &str) -> (Vec<u8>, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    https_raw(addr, cert, req.into_bytes()).await
}

/// Sends `bytes` over TLS to `addr`, accepting exactly the certificate `cert` (DER); returns the
/// certificate presented and what came back.
async fn https_raw(addr: SocketAddr, cert: Vec<u8>, bytes: Vec<u8>) -> (Vec<u8>, String) {
    use rustls::pki_types::ServerName;
    let connector = crate::common::pinned_connector(cert);
    tokio::time::timeout(ANSWER, async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake with the node's certificate");
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec();
        tls.write_all(&bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        (presented, String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .expect("HTTPS exchange in time")
}
