//! The mobile office end to end against a node in-process: attachments uploaded,
//! stored content-addressed and streamed back (`/api/attachments`). What is asserted is what a
//! client observes (statuses, headers, bytes) and what is left in the node's store directory.

mod common;

use std::path::PathBuf;

use common::{start_node, start_node_with, TestNode, WAIT};
use rand::RngCore as _;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use signaling::auth::Role;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MIB: usize = 1024 * 1024;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn store_dir(node: &TestNode) -> PathBuf {
    node.dir.path().join("data").join("attachments")
}

/// File names in the store directory, sorted.
fn stored_files(node: &TestNode) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store_dir(node))
        .expect("store dir exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn upload(
    node: &TestNode,
    token: Option<&str>,
    content_type: Option<&str>,
    sha256: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = client().post(node.url("/api/attachments")).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    if let Some(h) = sha256 {
        req = req.header("X-Yiwang-Sha256", h);
    }
    req.send().await.expect("upload answered")
}

async fn fetch(
    node: &TestNode,
    token: Option<&str>,
    path: &str,
    if_none_match: Option<&str>,
) -> reqwest::Response {
    let mut req = client().get(node.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(e) = if_none_match {
        req = req.header("If-None-Match", e);
    }
    req.send().await.expect("download answered")
}

/// Asserts the status and the JSON error code; returns the message.
async fn expect_error(resp: reqwest::Response, status: StatusCode, code: &str) -> String {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["error"], code, "{body}");
    body["message"].as_str().expect("message").to_owned()
}

#[tokio::test]
async fn a_3_mb_photo_round_trips_byte_identical_and_is_stored_once() {
    let node = start_node().await;
    let officer = node.token("off-12", Role::Officer);
    let bytes = random_bytes(3 * 1000 * 1000);
    let hex = sha256_hex(&bytes);

    let resp = upload(
        &node,
        Some(&officer),
        Some("image/jpeg"),
        Some(&hex),
        bytes.clone(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let url = format!("/api/attachments/{hex}");
    assert_eq!(resp.headers()["location"], url.as_str());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["sha256"], hex.as_str());
    assert_eq!(body["size"], bytes.len() as u64);
    assert_eq!(body["content_type"], "image/jpeg");
    assert_eq!(body["url"], url.as_str());
    assert_eq!(
        stored_files(&node),
        vec![hex.clone(), format!("{hex}.json")]
    );
    let sidecar: Value = serde_json::from_slice(
        &std::fs::read(store_dir(&node).join(format!("{hex}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["uploader"], "off-12");
    assert_eq!(sidecar["content_type"], "image/jpeg");
    assert_eq!(sidecar["size"], bytes.len() as u64);
    assert!(sidecar["uploaded_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);

    // Read back by someone who may read incidents (a viewer).
    let viewer = node.token("wall-1", Role::Viewer);
    let resp = fetch(&node, Some(&viewer), &url, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "image/jpeg");
    assert_eq!(h["content-length"], bytes.len().to_string().as_str());
    assert_eq!(h["etag"], format!("\"{hex}\"").as_str());
    assert_eq!(h["cache-control"], "private, max-age=31536000, immutable");
    // Never rendered as a page of the node's origin: a download, its type not sniffed.
    assert_eq!(
        h["content-disposition"],
        format!("attachment; filename=\"{hex}\"").as_str()
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), bytes.len());
    assert_eq!(sha256_hex(&got), hex);
    assert!(got == bytes, "bytes differ");

    // Revalidation: the same tag → 304, no body; a stale one → 200.
    let resp = fetch(&node, Some(&viewer), &url, Some(&format!("\"{hex}\""))).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()["etag"], format!("\"{hex}\"").as_str());
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = fetch(&node, Some(&viewer), &url, Some("\"0000\", W/\"1111\"")).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // The same bytes again, from someone else, without announcing the hash: same answer, one file.
    let other = node.token("off-13", Role::Officer);
    let resp = upload(&node, Some(&other), Some("image/jpeg"), None, bytes.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["sha256"], hex.as_str());
    assert_eq!(body["size"], bytes.len() as u64);
    assert_eq!(
        stored_files(&node),
        vec![hex.clone(), format!("{hex}.json")]
    );
    node.node.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_leaves_nothing() {
    let node = start_node_with(|c| c.office.attachment_max_bytes = MIB as u64).await;
    let officer = node.token("off-12", Role::Officer);
    let big = random_bytes(MIB + MIB / 2);

    // With Content-Length: refused before anything is written.
    let resp = upload(&node, Some(&officer), Some("video/mp4"), None, big.clone()).await;
    let message = expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;
    assert!(message.contains("1048576 bytes"), "{message}");
    assert!(stored_files(&node).is_empty(), "{:?}", stored_files(&node));

    // Chunked (no length announced): refused when the count crosses the limit, the partial
    // temporary file removed before the answer.
    let (status, body) = chunked_upload(&node, &officer, "video/mp4", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("too_large") && body.contains("1048576 bytes"),
        "{body}"
    );
    assert!(stored_files(&node).is_empty(), "{:?}", stored_files(&node));

    // Exactly the limit is accepted, chunked or not.
    let exact = random_bytes(MIB);
    let (status, body) = chunked_upload(&node, &officer, "video/mp4", &exact).await;
    assert_eq!(status, 201, "{body}");
    let resp = upload(
        &node,
        Some(&officer),
        Some("video/mp4"),
        None,
        exact.clone(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let hex = sha256_hex(&exact);
    assert_eq!(
        stored_files(&node),
        vec![hex.clone(), format!("{hex}.json")]
    );

    // The other API routes keep their own (smaller) limit.
    let resp = client()
        .post(node.url("/api/orders"))
        .bearer_auth(node.token("cmd-1", Role::Commander))
        .header("Content-Type", "application/json")
        .body(vec![b' '; 128 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    node.node.shutdown().await;
}

/// A raw HTTP/1.1 upload with `Transfer-Encoding: chunked`; returns the status and the body.
async fn chunked_upload(
    node: &TestNode,
    token: &str,
    content_type: &str,
    bytes: &[u8],
) -> (u16, String) {
    let stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(node.node.http_addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let mut out = format!(
        "POST /api/attachments HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        node.node.http_addr
    )
    .into_bytes();
    for chunk in bytes.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    // The node may answer before it has read everything: write and read at once.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&out).await;
        wr
    });
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, rd.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let _ = tokio::time::timeout(WAIT, writer).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn refused_uploads_store_nothing() {
    let node = start_node().await;
    let officer = node.token("off-12", Role::Officer);
    let bytes = random_bytes(100_000);

    // Announced hash differs from the body's.
    let wrong = sha256_hex(b"something else");
    let resp = upload(
        &node,
        Some(&officer),
        Some("image/png"),
        Some(&wrong),
        bytes.clone(),
    )
    .await;
    let message = expect_error(resp, StatusCode::BAD_REQUEST, "hash_mismatch").await;
    assert!(
        message.contains(&sha256_hex(&bytes)) && message.contains(&wrong),
        "{message}"
    );
    // A header that is no hash at all.
    let resp = upload(
        &node,
        Some(&officer),
        Some("image/png"),
        Some("abc"),
        bytes.clone(),
    )
    .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "bad_hash").await;

    // No token, a bad token, a role that may not chat.
    let resp = upload(&node, None, Some("image/png"), None, bytes.clone()).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    expect_error(resp, StatusCode::UNAUTHORIZED, "no_token").await;
    let resp = upload(
        &node,
        Some("not-a-token"),
        Some("image/png"),
        None,
        bytes.clone(),
    )
    .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "bad_token").await;
    let viewer = node.token("wall-1", Role::Viewer);
    let resp = upload(&node, Some(&viewer), Some("image/png"), None, bytes.clone()).await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;

    // Types outside the list, or none.
    for ct in [
        Some("text/html"),
        Some("image/svg+xml"),
        Some("application/octet-stream"),
        None,
    ] {
        let resp = upload(&node, Some(&officer), ct, None, bytes.clone()).await;
        let message =
            expect_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_content_type").await;
        assert!(message.contains("image/jpeg"), "{message}");
    }

    assert!(stored_files(&node).is_empty(), "{:?}", stored_files(&node));

    // Parameters and case in the type are fine; the canonical type is stored.
    let resp = upload(
        &node,
        Some(&officer),
        Some("Audio/Ogg; codecs=opus"),
        None,
        bytes.clone(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["content_type"], "audio/ogg");
    node.node.shutdown().await;
}

#[tokio::test]
async fn downloads_check_the_hash_and_the_token() {
    let node = start_node().await;
    let viewer = node.token("wall-1", Role::Viewer);
    let unknown = sha256_hex(b"never uploaded");

    for bad in [
        "abc".to_owned(),
        unknown.to_uppercase(),
        format!("{unknown}0"),
        format!("{}g", &unknown[..63]),
        format!("{unknown}.json"),
    ] {
        let resp = fetch(
            &node,
            Some(&viewer),
            &format!("/api/attachments/{bad}"),
            None,
        )
        .await;
        expect_error(resp, StatusCode::BAD_REQUEST, "bad_hash").await;
    }
    let url = format!("/api/attachments/{unknown}");
    let resp = fetch(&node, Some(&viewer), &url, None).await;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = fetch(&node, Some(&viewer), &url, Some("*")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;

    let resp = fetch(&node, None, &url, None).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "no_token").await;
    let device = node.token("cam-1", Role::Device);
    let resp = fetch(&node, Some(&device), &url, None).await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;

    // The preflight admits the hash header.
    let resp = client()
        .request(reqwest::Method::OPTIONS, node.url("/api/attachments"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-yiwang-sha256"), "{allowed}");
    node.node.shutdown().await;
}

/// Store-and-forward of chat, orders and SOS: the node's real SQLite store, native clients over
/// QUIC (`signaling::client`), links cut by the project's relay.
mod mail {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::common::{start_node, TestNode, WAIT};
    use netem::{ImpairConfig, UdpRelay};
    use serde_json::Value;
    use signaling::auth::Role;
    use signaling::client::{self, ClientConfig, ClientError, ClientEvent};
    use signaling::proto::{ClientMsg, ErrorCode, OrderAnswer};
    use signaling::proto::{MailItem, OrderState};

    async fn login(
        node: &TestNode,
        addr: String,
        sub: &str,
        role: Role,
        edit: impl FnOnce(&mut ClientConfig),
    ) -> (client::Client, client::Events) {
        let mut cfg = ClientConfig::new(addr, node.token(sub, role));
        edit(&mut cfg);
        tokio::time::timeout(WAIT, client::connect(cfg))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    async fn relay_to(node: &TestNode) -> UdpRelay {
        UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            node.node.quic_addr,
            ImpairConfig::perfect(),
            ImpairConfig::perfect(),
        )
        .await
        .unwrap()
    }

    /// Tablet settings for a bad link: notice a dead connection in 1 s, retry fast.
    fn flaky(cfg: &mut ClientConfig) {
        cfg.idle_timeout = Duration::from_secs(1);
        cfg.keep_alive = Duration::from_millis(250);
        cfg.backoff_min = Duration::from_millis(50);
        cfg.backoff_max = Duration::from_millis(300);
        cfg.request_timeout = Duration::from_secs(5);
    }

    fn chat(msg_id: String, text: String) -> ClientMsg {
        ClientMsg::Chat {
            id: 0,
            msg_id: Some(msg_id),
            incident: Some("duty".parse().unwrap()),
            to: None,
            text,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_orders_over_a_flapping_link_arrive_once_in_order_and_end_accepted() {
        let node = start_node().await;
        let relay = relay_to(&node).await;
        let (officer, mut oev) = login(
            &node,
            relay.local_addr().to_string(),
            "off-1",
            Role::Officer,
            flaky,
        )
        .await;
        let (cmd, mut cev) = login(
            &node,
            node.node.quic_addr.to_string(),
            "cmd-1",
            Role::Commander,
            |_| {},
        )
        .await;

        // The link flaps: cut 100–1500 ms, up 200–600 ms, seeded.
        let stop = Arc::new(AtomicBool::new(false));
        let relay = Arc::new(relay);
        let flapper = {
            let (stop, relay) = (stop.clone(), relay.clone());
            tokio::spawn(async move {
                let mut x: u64 = 0x5EED_0FF1_A9C3;
                let mut next = move |lo: u64, hi: u64| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    lo + x % (hi - lo)
                };
                let mut cuts = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    relay.set_cut(true);
                    cuts += 1;
                    tokio::time::sleep(Duration::from_millis(next(100, 1500))).await;
                    relay.set_cut(false);
                    tokio::time::sleep(Duration::from_millis(next(200, 600))).await;
                }
                cuts
            })
        };

        // The officer accepts every order it receives, one after the other, over the same bad link.
        let (ans_tx, mut ans_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let answerer = {
            let officer = officer.clone();
            tokio::spawn(async move {
                while let Some(order) = ans_rx.recv().await {
                    let r = officer
                        .deliver(ClientMsg::OrderAnswer {
                            id: 0,
                            msg_id: Some(format!("ans-{order}")),
                            order: order.clone(),
                            answer: OrderAnswer::Accept,
                            eta_min: Some(10),
                            reason: None,
                        })
                        .await;
                    r.unwrap_or_else(|e| panic!("answering {order}: {e}"));
                }
            })
        };
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut disconnects = 0;
            while got.len() < 1000 {
                match tokio::time::timeout(Duration::from_secs(120), oev.next())
                    .await
                    .expect("orders keep coming")
                {
                    Some(ClientEvent::Mail {
                        item: MailItem::Order { order: id, .. },
                        ..
                    }) => {
                        ans_tx.send(id.clone()).unwrap();
                        got.push(id);
                    }
                    Some(ClientEvent::Disconnected { .. }) => disconnects += 1,
                    Some(ClientEvent::Closed { code, reason }) => {
                        panic!("officer closed: {code:?} {reason}")
                    }
                    None => panic!("event stream ended"),
                    Some(_) => {}
                }
            }
            (got, disconnects)
        });

        let mut sent = Vec::new();
        for i in 0..1000 {
            let data = tokio::time::timeout(
                WAIT,
                cmd.deliver(ClientMsg::Order {
                    id: 0,
                    msg_id: Some(format!("o-{i}")),
                    incident: "duty".parse().unwrap(),
                    to: "off-1".parse().unwrap(),
                    text: format!("Sandbags to dike section {i}"),
                }),
            )
            .await
            .expect("order acknowledged in time")
            .expect("order acknowledged");
            sent.push(data["order"]["id"].as_str().unwrap().to_owned());
        }
        let (got, disconnects) = receiver.await.unwrap();
        assert_eq!(got.len(), 1000);
        assert_eq!(got, sent, "all 1,000 orders, each once, in the order sent");

        // Every order ends accepted, and the sender was told each state once.
        let mut accepted = HashSet::new();
        while accepted.len() < 1000 {
            match tokio::time::timeout(Duration::from_secs(120), cev.next())
                .await
                .expect("states keep coming")
            {
                Some(ClientEvent::Mail {
                    item:
                        MailItem::OrderState {
                            order: id,
                            state: OrderState::Accepted,
                            ..
                        },
                    ..
                }) => {
                    assert!(
                        accepted.insert(id.clone()),
                        "accepted state of {id} told twice"
                    );
                }
                Some(ClientEvent::Closed { code, reason }) => {
                    panic!("commander closed: {code:?} {reason}")
                }
                None => panic!("event stream ended"),
                Some(_) => {}
            }
        }
        stop.store(true, Ordering::Relaxed);
        let cuts = flapper.await.unwrap();
        drop(officer);
        let _ = tokio::time::timeout(WAIT, answerer).await;
        let orders: Value = reqwest::Client::new()
            .get(node.url("/api/orders"))
            .bearer_auth(node.token("cmd-1", Role::Commander))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let orders = orders["orders"].as_array().unwrap();
        assert_eq!(orders.len(), 1000);
        assert!(orders
            .iter()
            .all(|o| o["state"] == "accepted" && o["eta_min"] == 10 && o["delivered_at"].is_u64()));
        let dropped = relay.stats().cut_dropped;
        eprintln!("link cut {cuts} times, {dropped} datagrams dropped, officer reconnected {disconnects} times");
        assert!(cuts >= 2 && dropped > 0, "the link really flapped");
        assert!(
            disconnects >= 1,
            "the officer's client lost its connection at least once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_officer_offline_for_30_s_sends_50_chats_that_arrive_once() {
        let node = start_node().await;
        let relay = relay_to(&node).await;
        let (officer, mut oev) = login(
            &node,
            relay.local_addr().to_string(),
            "off-2",
            Role::Officer,
            |c| {
                c.idle_timeout = Duration::from_secs(2);
                c.keep_alive = Duration::from_millis(500);
                c.backoff_max = Duration::from_secs(2);
            },
        )
        .await;
        let (_op, mut opev) = login(
            &node,
            node.node.quic_addr.to_string(),
            "op-2",
            Role::Operator,
            |_| {},
        )
        .await;

        relay.set_cut(true);
        let offline_at = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout(WAIT, oev.next())
                .await
                .expect("the client notices")
            {
                Some(ClientEvent::Disconnected { .. }) => break,
                Some(ClientEvent::Closed { .. }) | None => panic!("closed"),
                Some(_) => {}
            }
        }
        // In the tunnel: the officer keeps writing. Each message waits in the client until it is
        // acknowledged by the node.
        let mut pending = Vec::new();
        for i in 0..50 {
            let officer = officer.clone();
            pending.push(tokio::spawn(async move {
                officer
                    .deliver(chat(format!("tunnel-{i}"), format!("note {i}")))
                    .await
            }));
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        tokio::time::sleep_until(offline_at + Duration::from_secs(30)).await;
        relay.set_cut(false);
        for p in pending {
            let r = tokio::time::timeout(WAIT, p)
                .await
                .expect("delivered after the reconnect")
                .unwrap();
            assert!(r.is_ok(), "{r:?}");
        }
        // A marker sent last: everything before it has been stored.
        officer
            .deliver(chat("marker".into(), "end".into()))
            .await
            .unwrap();
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, opev.next())
                .await
                .expect("chats arrive")
            {
                Some(ClientEvent::Mail {
                    item: MailItem::Chat { msg_id: id, .. },
                    ..
                }) => {
                    if id == "marker" {
                        break;
                    }
                    seen.push(id);
                }
                Some(ClientEvent::Closed { .. }) | None => panic!("closed"),
                Some(_) => {}
            }
        }
        assert_eq!(seen.len(), 50, "each message once: {seen:?}");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sos_reaches_every_member_within_1_s_while_1000_chats_are_in_flight() {
        let node = start_node().await;
        let quic = node.node.quic_addr.to_string();
        let mut members = Vec::new();
        for (sub, role) in [
            ("cmd-3", Role::Commander),
            ("op-3", Role::Operator),
            ("op-4", Role::Operator),
            ("off-4", Role::Officer),
        ] {
            members.push((sub, login(&node, quic.clone(), sub, role, |_| {}).await));
        }
        let (raiser, _rev) = login(&node, quic.clone(), "off-3", Role::Officer, |_| {}).await;
        // Five chatty members, 200 messages each, all at once.
        let mut senders = Vec::new();
        for s in 0..5 {
            let (c, _e) = login(
                &node,
                quic.clone(),
                &format!("talk-{s}"),
                Role::Operator,
                |_| {},
            )
            .await;
            senders.push(tokio::spawn(async move {
                let mut tasks = Vec::new();
                for i in 0..200 {
                    let c = c.clone();
                    tasks.push(tokio::spawn(async move {
                        c.deliver(chat(format!("t{s}-{i}"), format!("status {i}")))
                            .await
                    }));
                }
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
                drop(_e);
            }));
        }
        // Raise the SOS while the chat is flowing.
        let (first_sub, (_, ev)) = &mut members[1];
        loop {
            match tokio::time::timeout(WAIT, ev.next())
                .await
                .expect("chat flows")
            {
                Some(ClientEvent::Mail {
                    item: MailItem::Chat { .. },
                    ..
                }) => break,
                Some(_) => {}
                None => panic!("{first_sub} closed"),
            }
        }
        let raised_at = tokio::time::Instant::now();
        let r = raiser
            .deliver(ClientMsg::Sos {
                id: 0,
                msg_id: Some("help-1".into()),
                incident: None,
                text: Some("shots fired".into()),
            })
            .await
            .unwrap();
        let sos = r["sos"].as_str().unwrap().to_owned();
        for (sub, (_, ev)) in &mut members {
            let deadline = raised_at + Duration::from_secs(1);
            loop {
                let next = tokio::time::timeout_at(deadline, ev.next())
                    .await
                    .unwrap_or_else(|_| panic!("{sub} did not get the SOS within 1 s"));
                match next {
                    Some(ClientEvent::Mail {
                        item: MailItem::Sos { sos: got, text, .. },
                        ..
                    }) => {
                        assert_eq!(got, sos);
                        assert_eq!(text.as_deref(), Some("shots fired"));
                        break;
                    }
                    Some(_) => {}
                    None => panic!("{sub} closed"),
                }
            }
        }
        for s in senders {
            tokio::time::timeout(WAIT, s).await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_addressee_answers_an_order() {
        let node = start_node().await;
        let quic = node.node.quic_addr.to_string();
        let (cmd, _c) = login(&node, quic.clone(), "cmd-5", Role::Commander, |_| {}).await;
        let (off, _o) = login(&node, quic.clone(), "off-5", Role::Officer, |_| {}).await;
        let (other, _x) = login(&node, quic.clone(), "off-6", Role::Officer, |_| {}).await;
        let data = cmd
            .deliver(ClientMsg::Order {
                id: 0,
                msg_id: Some("x".into()),
                incident: "duty".parse().unwrap(),
                to: "off-5".parse().unwrap(),
                text: "Hold the bridge".into(),
            })
            .await
            .unwrap();
        let order = data["order"]["id"].as_str().unwrap().to_owned();
        let answer = |a| ClientMsg::OrderAnswer {
            id: 0,
            msg_id: None,
            order: order.clone(),
            answer: a,
            eta_min: Some(3),
            reason: Some("busy".into()),
        };
        for c in [&cmd, &other] {
            match c.request(answer(OrderAnswer::Accept)).await {
                Err(ClientError::Remote { code, .. }) => {
                    assert!(matches!(code, ErrorCode::Forbidden), "{code}")
                }
                other => panic!("{other:?}"),
            }
        }
        // Over HTTP: 403 for others, 200 for the addressee.
        let http = reqwest::Client::new();
        let url = node.url(&format!("/api/orders/{order}/answer"));
        let body = r#"{"answer":"decline","reason":"cut off by water"}"#;
        let r = http
            .post(&url)
            .bearer_auth(node.token("off-6", Role::Officer))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let r = http
            .post(&url)
            .bearer_auth(node.token("off-5", Role::Officer))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        // Final: accepting a declined order is a conflict.
        match off.request(answer(OrderAnswer::Accept)).await {
            Err(ClientError::Remote { code, .. }) => {
                assert!(matches!(code, ErrorCode::Conflict), "{code}")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Orders, chat and photos are not for other users of the machine: a data directory created
/// 0755 beforehand is made 0700, the office store's file 0600 and the attachments folder 0700.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_the_office_store_are_private_whatever_their_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let n = start_node_with(|c| {
        std::fs::create_dir_all(&c.node.data_dir).unwrap();
        std::fs::set_permissions(&c.node.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    })
    .await;
    let data = n.dir.path().join("data");
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data.clone()), 0o700, "data dir");
    assert_eq!(mode(data.join("office.db")), 0o600, "office.db");
    assert_eq!(mode(data.join("attachments")), 0o700, "attachments/");
    n.node.shutdown().await;
}
