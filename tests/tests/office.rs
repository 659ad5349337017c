//! The mobile office over HTTP, end to end against a node in-process: attachments uploaded,
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
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
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

async fn fetch(node: &TestNode, token: Option<&str>, path: &str, if_none_match: Option<&str>) -> reqwest::Response {
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

    let resp = upload(&node, Some(&officer), Some("image/jpeg"), Some(&hex), bytes.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let url = format!("/api/attachments/{hex}");
    assert_eq!(resp.headers()["location"], url.as_str());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["sha256"], hex.as_str());
    assert_eq!(body["size"], bytes.len() as u64);
    assert_eq!(body["content_type"], "image/jpeg");
    assert_eq!(body["url"], url.as_str());
    assert_eq!(stored_files(&node), vec![hex.clone(), format!("{hex}.json")]);
    let sidecar: Value = serde_json::from_slice(&std::fs::read(store_dir(&node).join(format!("{hex}.json"))).unwrap()).unwrap();
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
    assert_eq!(stored_files(&node), vec![hex.clone(), format!("{hex}.json")]);
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
    assert!(body.contains("too_large") && body.contains("1048576 bytes"), "{body}");
    assert!(stored_files(&node).is_empty(), "{:?}", stored_files(&node));

    // Exactly the limit is accepted, chunked or not.
    let exact = random_bytes(MIB);
    let (status, body) = chunked_upload(&node, &officer, "video/mp4", &exact).await;
    assert_eq!(status, 201, "{body}");
    let resp = upload(&node, Some(&officer), Some("video/mp4"), None, exact.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let hex = sha256_hex(&exact);
    assert_eq!(stored_files(&node), vec![hex.clone(), format!("{hex}.json")]);

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
async fn chunked_upload(node: &TestNode, token: &str, content_type: &str, bytes: &[u8]) -> (u16, String) {
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
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn refused_uploads_store_nothing() {
    let node = start_node().await;
    let officer = node.token("off-12", Role::Officer);
    let bytes = random_bytes(100_000);

    // Announced hash differs from the body's.
    let wrong = sha256_hex(b"something else");
    let resp = upload(&node, Some(&officer), Some("image/png"), Some(&wrong), bytes.clone()).await;
    let message = expect_error(resp, StatusCode::BAD_REQUEST, "hash_mismatch").await;
    assert!(message.contains(&sha256_hex(&bytes)) && message.contains(&wrong), "{message}");
    // A header that is no hash at all.
    let resp = upload(&node, Some(&officer), Some("image/png"), Some("abc"), bytes.clone()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "bad_hash").await;

    // No token, a bad token, a role that may not chat.
    let resp = upload(&node, None, Some("image/png"), None, bytes.clone()).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    expect_error(resp, StatusCode::UNAUTHORIZED, "no_token").await;
    let resp = upload(&node, Some("not-a-token"), Some("image/png"), None, bytes.clone()).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "bad_token").await;
    let viewer = node.token("wall-1", Role::Viewer);
    let resp = upload(&node, Some(&viewer), Some("image/png"), None, bytes.clone()).await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;

    // Types outside the list, or none.
    for ct in [Some("text/html"), Some("image/svg+xml"), Some("application/octet-stream"), None] {
        let resp = upload(&node, Some(&officer), ct, None, bytes.clone()).await;
        let message = expect_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_content_type").await;
        assert!(message.contains("image/jpeg"), "{message}");
    }

    assert!(stored_files(&node).is_empty(), "{:?}", stored_files(&node));

    // Parameters and case in the type are fine; the canonical type is stored.
    let resp = upload(&node, Some(&officer), Some("Audio/Ogg; codecs=opus"), None, bytes.clone()).await;
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
        let resp = fetch(&node, Some(&viewer), &format!("/api/attachments/{bad}"), None).await;
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
    let allowed = resp.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("x-yiwang-sha256"), "{allowed}");
    node.node.shutdown().await;
}
