//! Security suite: `quotas` (see security.rs). What an upload may take of a node — size, quotas,
//! the free-space floor kept for the office store, uploads at once, the pace of a body — and that
//! an acknowledged order is stored durably and keeps being stored when the disk fills.
//!
//! Asserted is what a client sees (statuses, error codes, orders read back) and what is left in
//! the node's attachment directory (no `.upload-*` file outlives its upload).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::Value;
use signaling::auth::Role;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::{start_node_with, wait_for, TestNode, WAIT};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// `(data files, temporary files)` in an attachment directory, sorted.
fn files_in(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut all: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all.into_iter().partition(|n| !n.starts_with(".upload-"))
}

/// The attachment directory of a node started with the default data dir.
fn attachments_of(node: &TestNode) -> PathBuf {
    node.dir.path().join("data").join("attachments")
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {:?}", self.head, self.body))
    }
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body). A reset after the response
/// is not an error: the node may close a connection whose request it refused.
async fn read_response(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body_at) = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            // An interim `100 Continue` is not the answer.
            if head.starts_with("HTTP/1.1 100") {
                buf.drain(..i + 4);
                continue;
            }
            break (head, i + 4);
        }
        let n = rd.read(&mut chunk).await.unwrap_or(0);
        assert!(n > 0, "connection closed before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < body_at + len {
        let n = rd.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    RawResponse {
        status,
        body: String::from_utf8_lossy(&buf[body_at..]).into_owned(),
        head,
    }
}

/// Opens a connection and sends the head of `POST /api/attachments` with `extra` header lines.
async fn post_head(node: &TestNode, token: &str, extra: &str) -> TcpStream {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(node.node.http_addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let head = format!(
        "POST /api/attachments HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: video/mp4\r\n{extra}\r\n",
        node.node.http_addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Sends an endless body (as `chunked` framing or raw) until the node stops reading; returns the
/// response and how many body bytes got out.
async fn flood(node: &TestNode, token: &str, extra: &str, chunked: bool) -> (RawResponse, u64) {
    let s = post_head(node, token, extra).await;
    let (mut rd, mut wr) = s.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        let payload = vec![0u8; 64 * 1024];
        let mut framed = format!("{:x}\r\n", payload.len()).into_bytes();
        framed.extend_from_slice(&payload);
        framed.extend_from_slice(b"\r\n");
        let piece = if chunked { &framed } else { &payload };
        // 10 GiB at most; the node stops reading long before.
        while counter.load(Ordering::Relaxed) < 10 * GIB {
            if wr.write_all(piece).await.is_err() {
                break;
            }
            counter.fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
    });
    let resp = tokio::time::timeout(WAIT, read_response(&mut rd))
        .await
        .expect("an answer in time");
    writer.abort();
    (resp, sent.load(Ordering::Relaxed))
}

/// Says `hello` over `/ws` with `token`, so that the node knows its subject (orders to it are
/// accepted), and closes.
async fn greet(http_addr: std::net::SocketAddr, token: String) {
    let url = format!("ws://{http_addr}/ws");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("ws in time")
        .expect("ws");
    let hello = serde_json::json!({"type": "hello", "v": 1, "token": token});
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        hello.to_string().into(),
    ))
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("welcome in time")
            .expect("open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "welcome", "{v}");
            break;
        }
    }
    let _ = ws.close(None).await;
}

async fn post_order(base: &str, token: &str, id: &str) -> (StatusCode, Value) {
    let r = client()
        .post(format!("{base}/api/orders"))
        .bearer_auth(token)
        .json(&serde_json::json!({"id": id, "incident": "duty", "to": "off-9", "text": format!("order {id}")}))
        .send()
        .await
        .expect("order answered");
    let status = r.status();
    (status, r.json().await.expect("JSON answer"))
}

/// The sender ids (`msg_id`) of the orders the node lists.
async fn listed_orders(base: &str, token: &str) -> Vec<String> {
    let r = client()
        .get(format!("{base}/api/orders"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let mut ids: Vec<String> = v["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| {
            o["text"]
                .as_str()
                .unwrap()
                .trim_start_matches("order ")
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

async fn upload(node: &TestNode, token: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let r = client()
        .post(node.url("/api/attachments"))
        .bearer_auth(token)
        .header("Content-Type", "image/png")
        .body(body)
        .send()
        .await
        .expect("upload answered");
    let status = r.status();
    (status, r.json().await.expect("JSON answer"))
}

fn bytes(n: u64, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_gib_attachment_is_refused_at_once_or_at_the_limit_and_leaves_nothing() {
    let node = start_node_with(|c| c.office.attachment_max_bytes = MIB).await;
    let token = node.token("off-1", Role::Officer);
    let dir = attachments_of(&node);

    // Declared 10 GiB, the client waiting for `100 Continue`: refused before it sends a byte.
    let t0 = Instant::now();
    let mut s = post_head(
        &node,
        &token,
        &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", 10 * GIB),
    )
    .await;
    let resp = tokio::time::timeout(WAIT, read_response(&mut s))
        .await
        .expect("answer");
    let waited = t0.elapsed();
    assert_eq!(resp.status, 413, "{resp:?}");
    assert!(!resp.head.contains("100 Continue"), "{resp:?}");
    assert_eq!(resp.json()["error"], "too_large");
    assert!(
        resp.json()["message"]
            .as_str()
            .unwrap()
            .contains("1048576 bytes"),
        "{resp:?}"
    );
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");
    drop(s);

    // Declared 10 GiB, the client sending regardless: the answer comes after at most a bounded
    // drain, not after 10 GiB.
    let (resp, sent) = flood(
        &node,
        &token,
        &format!("Content-Length: {}\r\n", 10 * GIB),
        false,
    )
    .await;
    assert_eq!(
        (resp.status, resp.json()["error"].as_str()),
        (413, Some("too_large")),
        "{resp:?}"
    );
    assert!(sent < 64 * MIB, "{sent} bytes went out before the answer");

    // Chunked, no length: refused when the count crosses the limit.
    let (resp, sent) = flood(&node, &token, "Transfer-Encoding: chunked\r\n", true).await;
    assert_eq!(
        (resp.status, resp.json()["error"].as_str()),
        (413, Some("too_large")),
        "{resp:?}"
    );
    assert!(
        (MIB..64 * MIB).contains(&sent),
        "{sent} bytes went out before the answer"
    );

    wait_for("no upload left in progress", WAIT, || async {
        files_in(&dir).1.is_empty().then_some(())
    })
    .await;
    assert_eq!(files_in(&dir), (vec![], vec![]));
    // The node goes on: the limit itself is accepted.
    let (status, v) = upload(&node, &token, bytes(MIB, 1)).await;
    assert_eq!(status, 201, "{v}");
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickling_uploads_end_with_408_and_uploads_at_once_are_capped() {
    let node = start_node_with(|c| {
        c.office.attachment_idle_timeout_secs = 1;
        c.office.attachment_min_rate_bytes_per_sec = 1024;
        c.office.attachment_max_uploads_per_subject = 2;
        c.office.attachment_max_uploads = 3;
    })
    .await;
    let dir = attachments_of(&node);
    let (t1, t2) = (
        node.token("off-1", Role::Officer),
        node.token("off-2", Role::Officer),
    );

    // off-1: one upload stalls after a byte, one trickles a byte every 200 ms (never idle for
    // the 1 s timeout, but far below 1024 bytes/s).
    let started = Instant::now();
    let mut stalled = post_head(&node, &t1, "Content-Length: 1000\r\n").await;
    stalled.write_all(b"x").await.unwrap();
    let (mut trickle_rd, mut trickle_wr) = post_head(&node, &t1, "Content-Length: 100000\r\n")
        .await
        .into_split();
    let trickled = Arc::new(AtomicU64::new(0));
    let counter = trickled.clone();
    let trickler = tokio::spawn(async move {
        // The attacker's pace, not a synchronisation: one byte every 200 ms until cut off.
        for _ in 0..100 {
            if trickle_wr.write_all(b"y").await.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    wait_for("two uploads in progress", WAIT, || async {
        (files_in(&dir).1.len() == 2).then_some(())
    })
    .await;

    // A third from off-1 is refused at once; off-2 may still start one, which fills the node.
    let r = client()
        .post(node.url("/api/attachments"))
        .bearer_auth(&t1)
        .header("Content-Type", "image/png")
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "5");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "too_many_uploads", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("per uploader"),
        "{v}"
    );
    let mut other = post_head(&node, &t2, "Content-Length: 1000\r\n").await;
    other.write_all(b"z").await.unwrap();
    wait_for("three uploads in progress", WAIT, || async {
        (files_in(&dir).1.len() == 3).then_some(())
    })
    .await;
    let (status, v) = upload(&node, &node.token("off-3", Role::Officer), vec![2u8; 1000]).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (429, Some("too_many_uploads")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("for the node"),
        "{v}"
    );

    // All three are ended with 408 about a second after they began, their files gone.
    let (a, b, c) = tokio::join!(
        tokio::time::timeout(WAIT, read_response(&mut stalled)),
        tokio::time::timeout(WAIT, read_response(&mut trickle_rd)),
        tokio::time::timeout(WAIT, read_response(&mut other)),
    );
    let took = started.elapsed();
    for resp in [a.unwrap(), b.unwrap(), c.unwrap()] {
        assert_eq!(
            (resp.status, resp.json()["error"].as_str()),
            (408, Some("upload_timeout")),
            "{resp:?}"
        );
        assert!(
            resp.head.to_ascii_lowercase().contains("connection: close"),
            "{resp:?}"
        );
    }
    assert!(
        took < Duration::from_secs(5),
        "timed out only after {took:?}"
    );
    assert!(
        trickled.load(Ordering::Relaxed) >= 3,
        "the trickler was not idle"
    );
    trickler.abort();
    assert_eq!(files_in(&dir), (vec![], vec![]));

    // The places are free again.
    let (status, v) = upload(&node, &t1, bytes(4096, 7)).await;
    assert_eq!(status, 201, "{v}");
    node.node.shutdown().await;
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "yiwang-quotas",
            ])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount -t tmpfs (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a test failed with the node running): detach it anyway.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes `n` bytes into `path` (appending), or until the file system is full when `n` is
/// `u64::MAX`.
fn fill(path: &Path, n: u64) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let block = vec![0x5au8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let want = left.min(block.len() as u64) as usize;
        match f.write(&block[..want]) {
            Ok(0) => break,
            Ok(k) => left -= k as u64,
            Err(e) if n == u64::MAX && e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_filling_disk_uploads_are_refused_clearly_and_orders_keep_being_stored() {
    let fs = Tmpfs::mount("48m");
    let data = fs.path().join("data");
    let filler = fs.path().join("filler");
    let node = start_node_with(|c| {
        c.node.data_dir = data.clone();
        c.office.attachment_max_bytes = 4 * MIB;
        c.office.attachment_subject_quota_bytes = 8 * MIB;
        c.office.attachment_quota_bytes = 12 * MIB;
        c.office.min_free_bytes = 16 * MIB;
        c.office.min_free_percent = 100.0;
    })
    .await;
    let dir = data.join("attachments");
    let base = node.base.clone();
    let (off1, off2) = (
        node.token("off-1", Role::Officer),
        node.token("off-2", Role::Officer),
    );
    let cmd = node.token("cmd-1", Role::Commander);
    greet(node.node.http_addr, node.token("off-9", Role::Officer)).await;
    let free = || media_server::attachments::fs_space(fs.path()).unwrap().0;

    // Near the floor (16 MiB kept free, 18 MiB free): a 4 MiB upload is refused, declared or
    // chunked; a 1 MiB one still fits.
    fill(&filler, free() - 18 * MIB);
    let (status, v) = upload(&node, &off1, bytes(4 * MIB, 1)).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (507, Some("storage_full")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("office.min_free_bytes"),
        "{v}"
    );
    let (resp, _) = flood(&node, &off1, "Transfer-Encoding: chunked\r\n", true).await;
    assert_eq!(
        (resp.status, resp.json()["error"].as_str()),
        (507, Some("storage_full")),
        "{resp:?}"
    );
    let (status, v) = upload(&node, &off1, bytes(MIB, 2)).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(files_in(&dir).1, Vec::<String>::new());

    // Orders are stored all the while.
    let mut stored = Vec::new();
    for i in 0..5 {
        let id = format!("near-{i}");
        let (status, v) = post_order(&base, &cmd, &id).await;
        assert_eq!(status, 201, "{v}");
        stored.push(id);
    }

    // The disk full to the last byte (by something else than the node): uploads are refused,
    // and an order soon cannot be stored either — a clear 503, nothing stored, node up.
    fill(&filler, u64::MAX);
    let (status, v) = upload(&node, &off2, bytes(100_000, 3)).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (507, Some("storage_full")),
        "{v}"
    );
    let mut refused = None;
    for i in 0..5000 {
        let id = format!("full-{i}");
        let (status, v) = post_order(&base, &cmd, &id).await;
        if status == 201 {
            stored.push(id);
            continue;
        }
        assert_eq!(
            (status.as_u16(), v["error"].as_str()),
            (503, Some("unavailable")),
            "{v}"
        );
        assert!(
            v["message"].as_str().unwrap().contains("disk is full"),
            "{v}"
        );
        refused = Some(id);
        break;
    }
    let refused = refused.expect("a full disk refuses an order within 5000");
    stored.sort();
    assert_eq!(listed_orders(&base, &cmd).await, stored);

    // Room again: the refused order is stored when sent again, as new.
    std::fs::remove_file(&filler).unwrap();
    let (status, v) = post_order(&base, &cmd, &refused).await;
    assert_eq!(
        (status, &v["new"]),
        (StatusCode::CREATED, &Value::Bool(true)),
        "{v}"
    );
    stored.push(refused);
    stored.sort();
    assert_eq!(listed_orders(&base, &cmd).await, stored);

    // The quotas: off-1 has 1 MiB stored; 8 MiB per uploader, 12 MiB in all.
    let (status, v) = upload(&node, &off1, bytes(4 * MIB, 4)).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = upload(&node, &off1, bytes(4 * MIB, 5)).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (507, Some("quota_exceeded")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("per uploader"),
        "{v}"
    );
    let (status, v) = upload(&node, &off2, bytes(4 * MIB, 6)).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = upload(&node, &off2, bytes(4 * MIB, 7)).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (507, Some("quota_exceeded")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("for the node"),
        "{v}"
    );
    // Three attachments and their sidecars; no temporary file.
    let (data_files, temps) = files_in(&dir);
    assert_eq!(
        (data_files.len(), temps.len()),
        (6, 0),
        "{data_files:?} {temps:?}"
    );
    node.node.shutdown().await;
    drop(fs);
}

/// The `media-server` binary beside this test binary (built by `cargo build --workspace`; built
/// here when missing).
fn media_server_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/debug");
    let bin = dir.join("media-server");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", "media-server", "--bin", "media-server"])
            .status()
            .expect("cargo runs");
        assert!(ok.success(), "cargo build -p media-server");
    }
    bin
}

/// `media-server` as a child on loopback with port 0 everywhere; returns it and its HTTP address
/// (from its `ready` line).
async fn spawn_server(data: &Path, log: &Path) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(media_server_bin())
        .arg("--data")
        .arg(data)
        .args([
            "--http",
            "127.0.0.1:0",
            "--media",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("media-server starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let http = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("ready http=") {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!(
            "media-server exited before ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    })
    .await
    .expect("ready in time");
    (child, http)
}

/// A token minted by `media-server token` from the data dir's issuer key.
fn mint(data: &Path, sub: &str, role: &str) -> String {
    let out = std::process::Command::new(media_server_bin())
        .arg("token")
        .arg("--data")
        .arg(data)
        .args(["--sub", sub, "--role", role])
        .output()
        .expect("media-server token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_acknowledged_just_before_kill_9_is_there_after_the_restart() {
    crate::common::init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("media-server.log");
    let (mut child, http) = spawn_server(&data, &log).await;
    let base = format!("http://{http}");
    let cmd = mint(&data, "cmd-1", "commander");
    greet(http, mint(&data, "off-9", "officer")).await;

    // A burst of orders; SIGKILL the instant the last one is acknowledged.
    let mut sent = Vec::new();
    for i in 0..20 {
        let id = format!("k-{i:02}");
        let (status, v) = post_order(&base, &cmd, &id).await;
        assert_eq!(status, 201, "{v}");
        sent.push(id);
    }
    child.start_kill().unwrap();
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!exit.success(), "{exit:?}");

    // Restarted on the same data dir: every acknowledged order is there, and sending the last
    // again creates nothing new.
    let (mut child, http) = spawn_server(&data, &log).await;
    let base = format!("http://{http}");
    assert_eq!(listed_orders(&base, &cmd).await, sent);
    let (status, v) = post_order(&base, &cmd, sent.last().unwrap()).await;
    assert_eq!(
        (status, &v["new"]),
        (StatusCode::OK, &Value::Bool(false)),
        "{v}"
    );
    child.start_kill().unwrap();
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
}
