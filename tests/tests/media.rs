//! End-to-end media tests: a real node on loopback, real WebRTC peers nobody here wrote
//! (GStreamer `webrtcbin`, headless Chromium), real decoding. One binary for all of them so the
//! whole stack links once; media-heavy tests hold [`common::MEDIA`] so they run one at a time.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{start_node, wait_for, TestNode, MEDIA, WAIT};
use rand::{Rng, SeedableRng};
use signaling::auth::Role;
use yiwang_tests::gst_peer::{self, PublishOptions, VideoCodec, ViewOptions, WhepViewer, WhipPublisher};

fn av() -> ViewOptions {
    ViewOptions::default()
}

/// GStreamer `webrtcbin` fed by `videotestsrc ! x264enc` publishes over WHIP; three WHEP viewers
/// each decode (avdec_h264) at least 95 % of 300 frames the publisher encodes while they watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_publisher_reaches_three_whep_viewers() {
    let _media = MEDIA.lock().await;
    let n = start_node().await;
    let publisher = WhipPublisher::start(
        &n.base,
        "cam1",
        &n.token("cam1", Role::Officer),
        PublishOptions { codec: VideoCodec::H264, width: 640, height: 480, fps: 30, audio: true, bitrate_kbps: 1500, via: None },
    )
    .await
    .expect("publish over WHIP");

    let view_token = n.token("wall-1", Role::Viewer);
    let mut viewers = Vec::new();
    for _ in 0..3 {
        viewers.push(WhepViewer::start(&n.base, "cam1", &view_token, av()).await.expect("view over WHEP"));
    }
    for v in &viewers {
        v.wait_frames(1, WAIT).await.expect("first decoded frame");
    }
    assert_eq!(n.node.live.list()[0].viewers, 3);

    let sent0 = publisher.frames_sent();
    let seen0: Vec<u64> = viewers.iter().map(|v| v.stats().frames_decoded).collect();
    wait_for("publisher to encode 300 more frames", WAIT, || async {
        (publisher.frames_sent() >= sent0 + 300).then_some(())
    })
    .await;
    for (v, seen) in viewers.iter().zip(&seen0) {
        // Frames still in flight get a few seconds to land; 285 = 95 % of 300.
        let s = v
            .wait_frames(seen + 285, Duration::from_secs(10))
            .await
            .expect("each viewer decodes at least 95 % of 300 frames");
        assert_eq!((s.width, s.height), (640, 480));
        assert_eq!(v.video_codec().as_deref(), Some("H264"));
        v.wait_audio(1, WAIT).await.expect("audio decoded too");
    }
    assert!(n.metric("yiwang_keyframe_requests_out_total").await >= 1, "viewers joining asked for keyframes");

    for v in viewers {
        v.stop().await.expect("viewer DELETE");
    }
    publisher.stop().await.expect("publisher DELETE");
    wait_for("stream to leave the table", WAIT, || async { n.node.live.list().is_empty().then_some(()) }).await;
    n.node.shutdown().await;
}

/// 5 % random loss plus ±50 ms jitter (both directions, seeded, through the project's relay)
/// between one side and the SFU: NACK/RTX repairs it, and the viewer decodes at least 99 % of the
/// frames the publisher encodes.
async fn impaired_link_is_repaired(publisher_side: bool) {
    use media_server::impair::{ImpairConfig, UdpRelay};
    let _media = MEDIA.lock().await;
    let n = start_node().await;
    let up: ImpairConfig = "loss=5%,jitter=50ms,seed=11".parse().unwrap();
    let down: ImpairConfig = "loss=5%,jitter=50ms,seed=12".parse().unwrap();
    let relay = UdpRelay::start("127.0.0.1:0".parse().unwrap(), n.node.media_addr, up, down).await.unwrap();
    let via = Some(relay.local_addr());
    let (pub_via, view_via) = if publisher_side { (via, None) } else { (None, via) };
    let publisher = WhipPublisher::start(
        &n.base,
        "cam1",
        &n.token("cam1", Role::Officer),
        PublishOptions { via: pub_via, ..Default::default() },
    )
    .await
    .expect("publish");
    // ±50 ms of jitter each way plus a NACK round trip: the viewer buffers 400 ms.
    let opts = ViewOptions { via: view_via, latency_ms: Some(400), ..Default::default() };
    let viewer = WhepViewer::start(&n.base, "cam1", &n.token("wall-1", Role::Viewer), opts)
        .await
        .expect("view");
    viewer.wait_frames(30, WAIT).await.expect("playing through the impaired link");
    let sent0 = publisher.frames_sent();
    let seen0 = viewer.stats().frames_decoded;
    let sent1 = wait_for("300 more frames", WAIT, || async {
        let s = publisher.frames_sent();
        (s >= sent0 + 300).then_some(s)
    })
    .await;
    let need = (sent1 - sent0) * 99 / 100;
    viewer
        .wait_frames(seen0 + need, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("fewer than 99 % of {} frames decoded: {e:#}", sent1 - sent0));
    let stats = relay.stats();
    // Media flows up (publisher → SFU) or down (SFU → viewer); the other way carries only RTCP.
    let media = if publisher_side { &stats.up } else { &stats.down };
    assert!(media.dropped() * 100 >= media.pushed * 3, "the relay really lost media packets: {stats:?}");
    assert!(n.metric(if publisher_side { "yiwang_nacks_out_total" } else { "yiwang_nacks_in_total" }).await > 0, "repaired by NACK");
    viewer.stop().await.unwrap();
    publisher.stop().await.unwrap();
    relay.shutdown().await;
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_jitter_between_publisher_and_sfu_are_repaired() {
    impaired_link_is_repaired(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_jitter_between_sfu_and_viewer_are_repaired() {
    impaired_link_is_repaired(false).await;
}

/// Runs the Playwright driver (tests/browser/run.mjs) against the node and returns its JSON.
async fn chromium(n: &TestNode, args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/run.mjs");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script).args(["--base", &n.base]).args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(150), cmd.output())
        .await
        .expect("browser run finishes within 150 s")
        .expect("node runs (npm install in tests/browser done by scripts/install-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_else(|| {
        panic!("no JSON from run.mjs; stderr:\n{}", String::from_utf8_lossy(&out.stderr))
    });
    serde_json::from_str(line).expect("run.mjs prints JSON")
}

async fn chromium_both_ways(codec: &str) {
    let _media = MEDIA.lock().await;
    let n = start_node().await;
    let stream = format!("officer-{codec}");
    let result = chromium(
        &n,
        &[
            "--stream",
            &stream,
            "--pub-token",
            &n.token(&stream, Role::Officer),
            "--view-token",
            &n.token("wall-1", Role::Viewer),
            "--codec",
            codec,
            "--timeout-ms",
            "90000",
        ],
    )
    .await;
    assert_eq!(result["ok"], true, "browser run failed: {result:#}");
    let viewer = &result["viewer"];
    assert!(viewer["framesDecoded"].as_u64().unwrap_or(0) > 100, "{result:#}");
    assert!(viewer["audioPacketsReceived"].as_u64().unwrap_or(0) > 0, "{result:#}");
    assert_eq!(result["negotiatedCodec"].as_str().map(str::to_lowercase).as_deref(), Some(codec), "{result:#}");
    n.node.shutdown().await;
}

/// Headless Chromium publishes its fake camera and mic in VP8 through WHIP from a page; another
/// page plays it through WHEP; getStats() shows frames decoded past 100 and audio received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_and_plays_vp8() {
    chromium_both_ways("vp8").await;
}

/// The same with H.264 (Chromium offers constrained baseline and main).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_and_plays_h264() {
    chromium_both_ways("h264").await;
}

/// run.mjs in simulcast mode on `stream`; asserts it succeeded and returns the widths the "low"
/// and "high" viewers decoded, with the whole result for messages.
async fn chromium_simulcast(n: &TestNode, stream: &str, extra: &[&str]) -> (u64, u64, serde_json::Value) {
    let (pub_token, view_token) = (n.token(stream, Role::Officer), n.token("wall-1", Role::Viewer));
    let mut args = vec!["--mode", "simulcast", "--stream", stream, "--pub-token", &pub_token];
    args.extend(["--view-token", &view_token, "--timeout-ms", "100000"]);
    args.extend_from_slice(extra);
    let result = chromium(n, &args).await;
    assert_eq!(result["ok"], true, "browser run failed: {result:#}");
    let width = |w: &str| result["widths"][w].as_u64().unwrap_or_else(|| panic!("no {w} width: {result:#}"));
    (width("low"), width("high"), result.clone())
}

/// Chromium publishes three simulcast layers (1280×720 asked for: fewer layers below ~960×540);
/// a viewer asking `layer=low` decodes a smaller picture than one asking `layer=high`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_simulcast_low_viewer_gets_a_smaller_picture() {
    let _media = MEDIA.lock().await;
    let n = start_node().await;
    let (low, high, result) = chromium_simulcast(&n, "officer-sc", &[]).await;
    assert!(low < high, "low layer {low} px wide, high {high} px: {result:#}");
    n.node.shutdown().await;
}

/// Chromium publishes three simulcast layers; two Chromium viewers choose their layer
/// automatically from the node's bandwidth estimate. One receives through the project's relay
/// capped at 300 kbit/s: it drops to a smaller layer and keeps decoding, while the uncapped one
/// stays on the larger picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_viewer_drops_to_a_smaller_layer_and_keeps_decoding() {
    use media_server::impair::{ImpairConfig, UdpRelay};
    let _media = MEDIA.lock().await;
    // A wall on a LAN: start estimates at 2.5 Mbit/s so uncapped viewers begin on the top layer.
    let n = common::start_node_with(|c| c.sfu.bwe_initial_kbps = 2500).await;
    let down: ImpairConfig = "rate=300kbit,queue=16k,seed=3".parse().unwrap();
    let relay = UdpRelay::start("127.0.0.1:0".parse().unwrap(), n.node.media_addr, ImpairConfig::default(), down)
        .await
        .unwrap();
    let via = relay.local_addr().to_string();
    let (capped, free, result) = chromium_simulcast(&n, "officer-cap", &["--cap-via", &via]).await;
    assert!(capped < free, "capped viewer {capped} px wide, uncapped {free} px: {result:#}");
    assert!(relay.stats().down.delivered > 0, "the capped viewer's media went through the relay");
    relay.shutdown().await;
    n.node.shutdown().await;
}

/// A GStreamer stream is played by Chromium (WHEP only): the wall's player against a
/// non-browser publisher, H.264 answered in the publisher's codec though Chromium lists VP8 first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_a_gstreamer_stream() {
    let _media = MEDIA.lock().await;
    let n = start_node().await;
    let publisher = WhipPublisher::start(&n.base, "cam9", &n.token("cam9", Role::Device), PublishOptions::default())
        .await
        .expect("publish");
    let result = chromium(
        &n,
        &["--mode", "play-only", "--stream", "cam9", "--view-token", &n.token("wall-1", Role::Viewer), "--timeout-ms", "90000"],
    )
    .await;
    assert_eq!(result["ok"], true, "browser run failed: {result:#}");
    assert_eq!(result["negotiatedCodec"].as_str().map(str::to_lowercase).as_deref(), Some("h264"));
    publisher.stop().await.unwrap();
    n.node.shutdown().await;
}

/// Every kind of junk for the media port: random bytes, and truncated STUN, DTLS and RTP.
fn udp_junk() -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut junk: Vec<Vec<u8>> = Vec::new();
    // STUN binding request header (20 bytes) cut short, and one whole but with an unknown ufrag.
    let stun: Vec<u8> = [0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42].iter().copied().chain([7u8; 12]).collect();
    junk.push(stun[..10].to_vec());
    let mut stun_user = stun.clone();
    stun_user.extend([0x00, 0x06, 0x00, 0x04, b'a', b'b', b':', b'c']);
    junk.push(stun_user);
    // DTLS ClientHello record header cut short.
    junk.push(vec![0x16, 0xfe, 0xfd, 0x00, 0x00]);
    junk.push(vec![0x16, 0xfe, 0xfd]);
    // RTP and RTCP headers cut short, and a full-looking RTP packet from an unknown source.
    junk.push(vec![0x80, 0x60, 0x00]);
    junk.push(vec![0x80, 0xc8]);
    let mut rtp = vec![0x80, 0x60, 0x00, 0x01, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    rtp.extend([0u8; 100]);
    junk.push(rtp);
    junk.push(Vec::new());
    for _ in 0..500 {
        let len = rng.gen_range(1..1400);
        junk.push((0..len).map(|_| rng.gen()).collect());
    }
    junk
}

/// Bad input of every kind while a stream plays: the node answers each with the right error,
/// stays up, and the viewer's decoded-frame counter keeps pace with the publisher throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_keeps_the_node_up_and_loses_nothing() {
    let _media = MEDIA.lock().await;
    let n = start_node().await;
    let publisher = WhipPublisher::start(&n.base, "cam1", &n.token("cam1", Role::Officer), PublishOptions::default())
        .await
        .expect("publish");
    let viewer = WhepViewer::start(&n.base, "cam1", &n.token("wall-1", Role::Viewer), av()).await.expect("view");
    viewer.wait_frames(30, WAIT).await.expect("playing");

    let sent0 = publisher.frames_sent();
    let seen0 = viewer.stats().frames_decoded;
    let drops0 = n.metric("yiwang_drops_total{reason=\"malformed\"}").await
        + n.metric("yiwang_drops_total{reason=\"unknown_source\"}").await;

    // Media port: junk in batches, each one counted as dropped (malformed or no session
    // accepts it) before the next is sent, so none is lost in the kernel and none goes unseen.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut counted = drops0;
    for batch in udp_junk().chunks(50) {
        for j in batch {
            sock.send_to(j, n.node.media_addr).unwrap();
        }
        counted += batch.len() as u64;
        wait_for("junk to be counted as dropped", WAIT, || async {
            let d = n.metric("yiwang_drops_total{reason=\"malformed\"}").await
                + n.metric("yiwang_drops_total{reason=\"unknown_source\"}").await;
            assert!(d <= counted, "a drop counted twice or media dropped: {d} > {counted}");
            (d == counted).then_some(())
        })
        .await;
    }

    // HTTP.
    let http = reqwest::Client::new();
    let offer = common::canned_offer();
    let post = |path: &str, token: Option<String>, body: String| {
        let mut r = http.post(n.url(path)).header("content-type", "application/sdp").body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let expect = |resp: reqwest::Response, status: u16| async move {
        let got = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(got, status, "body: {body}");
        body
    };
    let cam2 = n.token("cam2", Role::Officer);
    let body = expect(post("/whip/cam2", Some(cam2.clone()), "v=0\r\nthis is not an offer\r\n".into()).await.unwrap(), 400).await;
    assert!(body.contains("malformed SDP"), "400 says why: {body}");
    let body = expect(post("/whip/cam2", Some(cam2.clone()), "hello".into()).await.unwrap(), 400).await;
    assert!(body.contains("malformed SDP"), "{body}");
    let huge = format!("{offer}{}", "a=x-padding:0123456789abcdef\r\n".repeat(4000));
    expect(post("/whip/cam2", Some(cam2.clone()), huge).await.unwrap(), 413).await;
    let body = expect(post("/whip/cam2", None, offer.clone()).await.unwrap(), 401).await;
    assert!(body.contains("no_token"), "{body}");
    let body = expect(post("/whip/wall-1", Some(n.token("wall-1", Role::Viewer)), offer.clone()).await.unwrap(), 403).await;
    assert!(body.contains("may not"), "{body}");
    let body = expect(post("/whip/cam1", Some(cam2.clone()), offer.clone()).await.unwrap(), 403).await;
    assert!(body.contains("own subject"), "not own name: {body}");
    let body = expect(post("/whep/nobody", Some(n.token("wall-1", Role::Viewer)), offer.clone()).await.unwrap(), 404).await;
    assert!(body.contains("no_such_stream"), "{body}");
    let body = expect(post("/whip/cam1", Some(n.token("chief", Role::Admin)), offer.clone()).await.unwrap(), 409).await;
    assert!(body.contains("stream_taken"), "{body}");
    let body = expect(
        http.post(n.url("/whip/cam2")).bearer_auth(&cam2).header("content-type", "text/plain").body(offer.clone()).send().await.unwrap(),
        415,
    )
    .await;
    assert!(body.contains("application/sdp"), "{body}");
    expect(http.delete(n.url("/session/00000000000000000000000000000000")).send().await.unwrap(), 404).await;
    expect(http.delete(n.url("/session/%2e%2e%2fetc")).send().await.unwrap(), 404).await;
    // Random bytes at the HTTP port: the connection is refused by the parser, the node stays up.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(n.node.http_addr).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0xff, 0x00, 0x13, 0x37]).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    }
    // Meanwhile the stream kept playing: let the publisher encode 600 more frames (20 s, past
    // the 15 s after which str0m's ICE-lite consent lapses for libnice peers, whose keepalive
    // comes every 25 s), then the viewer must have decoded all but a handful of what was
    // encoded since before the abuse.
    let sent1 = wait_for("encoding to continue", WAIT, || async {
        let s = publisher.frames_sent();
        (s >= sent0 + 600).then_some(s)
    })
    .await;
    let encoded = sent1 - sent0;
    viewer
        .wait_frames(seen0 + encoded - 5, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("viewer fell behind during bad input ({encoded} encoded): {e:#}"));
    assert_eq!(n.metric("yiwang_session_errors_total").await, 0);
    let health = reqwest::get(n.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    viewer.stop().await.unwrap();
    publisher.stop().await.unwrap();
    n.node.shutdown().await;
}

/// Tokens from an untrusted key, expired ones and ones for another node are refused; `*` and
/// this node's id are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked() {
    let n = start_node().await;
    let http = reqwest::Client::new();
    let get = |token: String| http.get(n.url("/api/streams")).bearer_auth(token).send();
    let status_and_body = |r: reqwest::Response| async move { (r.status().as_u16(), r.text().await.unwrap()) };

    let good = n.token("wall-1", Role::Viewer);
    let (s, body) = status_and_body(get(good).await.unwrap()).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], n.node.node_id.as_str());
    assert!(v["streams"].as_array().unwrap().is_empty());

    let any = n.token_with("wall-1", Role::Viewer, |r| r.aud = "*".into());
    assert_eq!(get(any).await.unwrap().status(), 200);

    let stranger = {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let issuer = signaling::auth::TokenIssuer::new(key, n.node.node_id.clone());
        let id = &n.node.identity;
        let req = signaling::auth::TokenRequest::new("wall-1".parse().unwrap(), Role::Viewer, id.node_id.to_string(), id.fingerprint.clone());
        issuer.issue(&req, common::now_unix())
    };
    let (s, body) = status_and_body(get(stranger).await.unwrap()).await;
    assert_eq!((s, body.contains("untrusted")), (401, true), "{body}");

    let expired = {
        let id = &n.node.identity;
        let mut req = signaling::auth::TokenRequest::new("wall-1".parse().unwrap(), Role::Viewer, id.node_id.to_string(), id.fingerprint.clone());
        req.ttl_secs = 60;
        id.issuer().issue(&req, common::now_unix() - 3600)
    };
    let (s, body) = status_and_body(get(expired).await.unwrap()).await;
    assert_eq!((s, body.contains("expired")), (401, true), "{body}");

    let other = n.token_with("wall-1", Role::Viewer, |r| r.aud = "node-elsewhere".into());
    let (s, body) = status_and_body(get(other).await.unwrap()).await;
    assert_eq!((s, body.contains("another node")), (401, true), "{body}");

    let (s, _) = status_and_body(get("not.a.token".into()).await.unwrap()).await;
    assert_eq!(s, 401);
    assert_eq!(http.get(n.url("/api/streams")).send().await.unwrap().status(), 401);
    // A role without "view a stream" (device) may not list streams.
    assert_eq!(get(n.token("tablet-1", Role::Device)).await.unwrap().status(), 403);
    n.node.shutdown().await;
}

/// The WHIP/WHEP session resource and the open endpoints behave as docs/api.md pins them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_contract() {
    let n = start_node().await;
    let http = reqwest::Client::new();
    let offer = common::canned_offer();
    let resp = http
        .post(n.url("/whip/cam5"))
        .bearer_auth(n.token("cam5", Role::Officer))
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], "application/sdp");
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/session/") && location.len() == "/session/".len() + 32, "{location}");
    let answer = resp.text().await.unwrap();
    assert!(answer.starts_with("v=0") && answer.contains("a=ice-lite") && answer.contains("a=candidate"), "{answer}");
    assert!(answer.contains(&format!(" {} ", n.node.media_addr.port())), "answer carries the media port: {answer}");

    let listed: serde_json::Value = http
        .get(n.url("/api/streams"))
        .bearer_auth(n.token("wall-1", Role::Viewer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s = &listed["streams"][0];
    assert_eq!((s["name"].as_str(), s["owner"].as_str(), s["video_codec"].as_str()), (Some("cam5"), Some("cam5"), Some("VP8")));
    assert_eq!(s["audio"], false);
    assert_eq!(s["viewers"], 0);
    assert!(s["started_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);

    for (query, code) in [("?layer=huge", 400), ("?maxHeight=-5", 400), ("?layer=low&maxHeight=360", 400), ("?layer=mid", 201), ("?maxHeight=360", 201)] {
        let resp = http
            .post(n.url(&format!("/whep/cam5{query}")))
            .bearer_auth(n.token("wall-1", Role::Viewer))
            .header("content-type", "application/sdp")
            .body(common::canned_offer().replace("a=sendonly", "a=recvonly"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(status, code, "{query}: {body}");
        if code == 400 {
            assert!(body.contains("bad_layer"), "{body}");
        }
    }

    let pre = http.request(reqwest::Method::OPTIONS, n.url("/whip/cam5")).send().await.unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["accept-post"], "application/sdp");
    assert!(pre.headers()["access-control-allow-headers"].to_str().unwrap().contains("Authorization"));

    let patch = http.patch(n.url(&location)).body("a=end-of-candidates").send().await.unwrap();
    assert_eq!(patch.status(), 405);
    assert_eq!(http.delete(n.url(&location)).send().await.unwrap().status(), 200);
    assert_eq!(http.delete(n.url(&location)).send().await.unwrap().status(), 404);
    assert!(n.node.live.list().is_empty());

    let resp = http.post(n.url("/whip/node-x/cam5")).bearer_auth(n.token("cam5", Role::Officer)).body("v=0").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("reserved"));

    let health: serde_json::Value = http.get(n.url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = http.get(n.url("/metrics")).send().await.unwrap();
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    assert!(text.contains("yiwang_publishers 0\n"), "the deleted publisher is gone: {text}");
    for page in ["/", "/play.html", "/publish.html", "/yiwang.js"] {
        assert_eq!(http.get(n.url(page)).send().await.unwrap().status(), 200, "{page}");
    }
    n.node.shutdown().await;
}

/// `--advertise` puts the given IP in the ICE candidate when the media socket binds 0.0.0.0, and
/// `http.metrics_listen` moves `/metrics` off the main listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertise_and_separate_metrics_listener() {
    let n = common::start_node_with(|c| {
        c.media.listen = "0.0.0.0:0".parse().unwrap();
        c.media.advertise = Some("127.0.0.2".parse().unwrap());
        c.http.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let http = reqwest::Client::new();
    let answer = http
        .post(n.url("/whip/cam5"))
        .bearer_auth(n.token("cam5", Role::Officer))
        .header("content-type", "application/sdp")
        .body(common::canned_offer())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let port = n.node.media_addr.port();
    assert!(answer.contains(&format!("127.0.0.2 {port} typ host")), "{answer}");
    assert_eq!(http.get(n.url("/metrics")).send().await.unwrap().status(), 404);
    let metrics_addr = n.node.metrics_addr.expect("metrics listener bound");
    let text = http.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("yiwang_publishers 1"), "{text}");
    n.node.shutdown().await;
}

#[test]
fn gstreamer_elements_present() {
    gst_peer::init().expect("GStreamer with webrtcbin, x264enc, avdec_h264 … installed");
}

/// Trunks between whole nodes on loopback (docs/trunk.md): a node config linked to `parent`
/// with certificates of a province CA in `ca_dir`, prune grace `grace_secs`.
mod cascade {
    use super::*;
    use media_server::trunk::ca::ProvinceCa;
    use std::path::Path;

    pub async fn node(ca_dir: &Path, name: &str, parent: Option<String>, grace_secs: u64) -> TestNode {
        let ca = ProvinceCa::load(ca_dir).expect("CA");
        let (cert, key) = ca
            .issue_to(&trunk_name(name), &ca_dir.join("certs"))
            .expect("node certificate");
        common::start_node_with(|c| {
            c.node.id = Some(name.parse().unwrap());
            c.trunk.listen = Some("127.0.0.1:0".parse().unwrap());
            c.trunk.parent = parent;
            c.trunk.ca = Some(ca_dir.join("ca.pem"));
            c.trunk.cert = Some(cert);
            c.trunk.key = Some(key);
            c.trunk.grace_secs = grace_secs;
        })
        .await
    }

    pub fn trunk_name(s: &str) -> ::trunk::NodeName {
        ::trunk::NodeName::parse(s).unwrap()
    }

    pub fn trunk_addr(n: &TestNode) -> String {
        n.node.trunk.as_ref().expect("trunks on").local_addr().to_string()
    }

    /// Bytes this node has sent on its trunk to `peer` so far.
    pub fn tx_bytes(n: &TestNode, peer: &str) -> u64 {
        let stats = n.node.trunk.as_ref().unwrap().stats();
        stats.iter().find(|s| s.peer.as_str() == peer).map_or(0, |s| s.tx_bytes)
    }

    /// Bytes sent by `n` to `peer` while the publisher encodes `frames` more frames.
    pub async fn bytes_per_frames(n: &TestNode, peer: &str, publisher: &WhipPublisher, frames: u64) -> u64 {
        let (b0, f0) = (tx_bytes(n, peer), publisher.frames_sent());
        wait_for("the publisher to encode more frames", WAIT, || async {
            (publisher.frames_sent() >= f0 + frames).then_some(())
        })
        .await;
        tx_bytes(n, peer) - b0
    }
}

/// The cascade on loopback: a GStreamer publisher at a township node, WHEP viewers at its parent
/// (the province) ask for `/whep/township/cam1`; the stream is pulled over the QUIC trunk on
/// demand. One viewer decodes at least 95 % of the frames; with four viewers (one of them
/// subscribed over signaling as `township/cam1`) the trunk still
/// carries one copy (at most 1.2× the bytes of one viewer); after the last viewer leaves the
/// stream stops crossing the trunk within the prune grace (2 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_township_stream_is_watched_at_the_province_over_a_trunk() {
    use cascade::{bytes_per_frames, node, trunk_addr, trunk_name};
    let _media = MEDIA.lock().await;
    let ca = tempfile::tempdir().unwrap();
    media_server::trunk::ca::ProvinceCa::init(ca.path(), "test province").unwrap();
    let province = node(ca.path(), "province", None, 2).await;
    let township = node(ca.path(), "township", Some(trunk_addr(&province)), 2).await;
    let publisher = WhipPublisher::start(
        &township.base,
        "cam1",
        &township.token("cam1", Role::Officer),
        PublishOptions { bitrate_kbps: 800, ..PublishOptions::default() },
    )
    .await
    .expect("publish over WHIP at the township");
    let addr = ::trunk::StreamAddr::parse("township/cam1").unwrap();
    let p_trunk = province.node.trunk.clone().unwrap();
    let t_trunk = township.node.trunk.clone().unwrap();
    wait_for("the province to learn township/cam1", WAIT, || async {
        p_trunk.catalog().await.iter().any(|e| e.addr == addr).then_some(())
    })
    .await;
    assert_eq!(t_trunk.route(&addr), None, "nothing crosses the trunk before a viewer asks");
    let idle = bytes_per_frames(&township, "province", &publisher, 30).await;

    let token = province.token("wall-1", Role::Viewer);
    let asked = std::time::Instant::now();
    let first = WhepViewer::start(&province.base, "township/cam1", &token, av()).await.expect("WHEP for a remote stream");
    first.wait_frames(1, WAIT).await.expect("first decoded frame");
    let first_frame = asked.elapsed();
    let seen0 = first.stats().frames_decoded;
    let sent0 = publisher.frames_sent();
    wait_for("publisher to encode 300 more frames", WAIT, || async {
        (publisher.frames_sent() >= sent0 + 300).then_some(())
    })
    .await;
    let s = first
        .wait_frames(seen0 + 285, Duration::from_secs(10))
        .await
        .expect("the province viewer decodes at least 95 % of 300 frames");
    assert_eq!((s.width, s.height), (640, 480));
    assert_eq!(first.video_codec().as_deref(), Some("H264"));
    first.wait_audio(1, WAIT).await.expect("audio crosses the trunk too");
    let decoded = s.frames_decoded - seen0;

    let one = bytes_per_frames(&township, "province", &publisher, 90).await;
    let mut more = Vec::new();
    for _ in 0..2 {
        more.push(WhepViewer::start(&province.base, "township/cam1", &token, av()).await.expect("more viewers"));
    }
    // And one over signaling: `subscribe` with the cascade's name `NODE/STREAM`.
    let cfg = signaling::client::ClientConfig::new(province.node.quic_addr.to_string(), province.token("op-1", Role::Operator));
    let (client, _events) = tokio::time::timeout(WAIT, signaling::client::connect(cfg)).await.expect("connect in time").expect("connect");
    let remote = signaling::StreamName::remote(&"township".parse().unwrap(), &"cam1".parse().unwrap());
    // The media session lives as long as the signaling session: keep `client`.
    let c = client.clone();
    more.push(
        WhepViewer::start_with(&province.base, av(), move |offer| async move {
            let data = c
                .request(signaling::proto::ClientMsg::Subscribe { id: 0, stream: remote, layer: None, max_height: None, sdp: offer })
                .await?;
            assert_eq!(data["stream"], "township/cam1");
            Ok(data["sdp"].as_str().unwrap_or_default().to_owned())
        })
        .await
        .expect("subscribe to township/cam1 over signaling"),
    );
    for v in &more {
        v.wait_frames(1, WAIT).await.expect("each further viewer decodes");
    }
    let four = bytes_per_frames(&township, "province", &publisher, 90).await;
    eprintln!(
        "cascade: first frame {first_frame:?} after the WHEP POST; {decoded} frames decoded of 300 sent; \
         trunk bytes per 90 frames: idle {idle}, 1 viewer {one}, 4 viewers {four} ({:.2}x)",
        four as f64 / one as f64
    );
    assert!(one > 20 * idle.max(1000), "the stream crosses the trunk: {one} vs idle {idle}");
    assert!(four * 10 <= one * 12, "one copy on the trunk: 4 viewers {four} bytes vs 1 viewer {one}");

    for v in more {
        v.stop().await.expect("viewer DELETE");
    }
    first.stop().await.expect("viewer DELETE");
    drop(client);
    let left = std::time::Instant::now();
    wait_for("the stream to stop crossing the trunk", Duration::from_secs(10), || async {
        t_trunk
            .route(&addr)
            .is_none_or(|r| !r.outputs.iter().any(|(h, _)| *h == ::trunk::Hop::Trunk(trunk_name("province"))))
            .then_some(())
    })
    .await;
    let pruned = left.elapsed();
    let after = bytes_per_frames(&township, "province", &publisher, 30).await;
    eprintln!("cascade: pruned {pruned:?} after the last viewer left (grace 2 s); then {after} bytes per 30 frames");
    assert!(pruned < Duration::from_secs(4), "pruned after {pruned:?}");
    assert!(after * 10 < one / 3, "nothing but keep-alives cross after the prune: {after}");
    publisher.stop().await.expect("publisher DELETE");
    township.node.shutdown().await;
    province.node.shutdown().await;
}

/// Longest time `viewer` went without a new decoded frame during `window`, polled every 20 ms.
async fn longest_stall(viewer: &WhepViewer, window: Duration) -> Duration {
    let start = std::time::Instant::now();
    let (mut last_n, mut last_t, mut worst) = (viewer.stats().frames_decoded, start, Duration::ZERO);
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = viewer.stats().frames_decoded;
        let now = std::time::Instant::now();
        if n != last_n {
            worst = worst.max(now - last_t);
            (last_n, last_t) = (n, now);
        }
    }
    worst.max(start.elapsed() - last_t.duration_since(start))
}

/// The issue's topology on loopback, whole nodes: province; city-a and city-b below it; the
/// county with city-a as primary parent (through the project's UDP relay, 20 ms each way) and
/// city-b as second parent; a township below the county publishing. A WHEP viewer at the
/// province watches `township/cam1`. Cutting county–city-a moves the media to city-b and the
/// viewer's frame counter stalls less than 3 s; restoring it moves the media back without a
/// stall a viewer would notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_trunk_moves_the_media_to_the_second_parent_and_back() {
    use cascade::{node, trunk_addr, trunk_name};
    use media_server::impair::{ImpairConfig, UdpRelay};
    let _media = MEDIA.lock().await;
    let ca = tempfile::tempdir().unwrap();
    media_server::trunk::ca::ProvinceCa::init(ca.path(), "test province").unwrap();
    let province = node(ca.path(), "province", None, 10).await;
    let city_a = node(ca.path(), "city-a", Some(trunk_addr(&province)), 10).await;
    let city_b = node(ca.path(), "city-b", Some(trunk_addr(&province)), 10).await;
    let hop = ImpairConfig::perfect().delay(Duration::from_millis(20));
    let city_a_trunk: std::net::SocketAddr = trunk_addr(&city_a).parse().unwrap();
    let relay = UdpRelay::start("127.0.0.1:0".parse().unwrap(), city_a_trunk, hop.clone(), hop).await.unwrap();
    let county = {
        let ca_dir = ca.path();
        let c = media_server::trunk::ca::ProvinceCa::load(ca_dir).unwrap();
        let (cert, key) = c.issue_to(&trunk_name("county"), &ca_dir.join("certs")).unwrap();
        let (primary, second) = (relay.local_addr().to_string(), trunk_addr(&city_b));
        common::start_node_with(|c| {
            c.node.id = Some("county".parse().unwrap());
            c.trunk.listen = Some("127.0.0.1:0".parse().unwrap());
            c.trunk.parent = Some(primary);
            c.trunk.second_parent = Some(second);
            c.trunk.ca = Some(ca_dir.join("ca.pem"));
            c.trunk.cert = Some(cert);
            c.trunk.key = Some(key);
        })
        .await
    };
    let township = node(ca.path(), "township", Some(trunk_addr(&county)), 10).await;
    let publisher = WhipPublisher::start(
        &township.base,
        "cam1",
        &township.token("cam1", Role::Officer),
        PublishOptions { bitrate_kbps: 600, audio: false, ..PublishOptions::default() },
    )
    .await
    .expect("publish at the township");
    let addr = ::trunk::StreamAddr::parse("township/cam1").unwrap();
    let p_trunk = province.node.trunk.clone().unwrap();
    let source_is = |n: &str| p_trunk.route(&addr).and_then(|r| r.source) == Some(::trunk::Hop::Trunk(trunk_name(n)));
    wait_for("the province to learn township/cam1 via city-a", WAIT, || async {
        p_trunk.catalog().await.iter().any(|e| e.addr == addr && e.cost == 3).then_some(())
    })
    .await;
    let viewer = WhepViewer::start(&province.base, "township/cam1", &province.token("wall-1", Role::Viewer), ViewOptions { audio: false, ..av() })
        .await
        .expect("WHEP at the province");
    viewer.wait_frames(30, WAIT).await.expect("frames via city-a");
    assert!(source_is("city-a"), "primary path first: {:?}", p_trunk.route(&addr));

    relay.set_cut(true);
    let cut = std::time::Instant::now();
    let stall = longest_stall(&viewer, Duration::from_secs(6)).await;
    assert!(source_is("city-b"), "moved to city-b: {:?}", p_trunk.route(&addr));
    let n = viewer.stats().frames_decoded;
    if viewer.wait_frames(n + 30, Duration::from_secs(10)).await.is_err() {
        for node in [&province, &city_a, &city_b, &county, &township] {
            let m = reqwest::get(node.url("/metrics")).await.unwrap().text().await.unwrap();
            let t: Vec<&str> = m.lines().filter(|l| l.starts_with("yiwang_trunk") || l.starts_with("yiwang_frames")).collect();
            eprintln!("{}: {:?} {t:?}", node.node.node_id, node.node.trunk.as_ref().unwrap().route(&addr));
        }
        panic!("no frames via city-b");
    }
    eprintln!("failover: longest stall {stall:?} after the cut (measured over {:?})", cut.elapsed());
    assert!(stall < Duration::from_secs(3), "viewer stalled {stall:?} on failover");

    relay.set_cut(false);
    let back = std::time::Instant::now();
    let (stall_back, moved) = tokio::join!(longest_stall(&viewer, Duration::from_secs(6)), async {
        wait_for("the media to move back to city-a", Duration::from_secs(20), || async { source_is("city-a").then_some(()) }).await;
        back.elapsed()
    });
    eprintln!("move back: on city-a after {moved:?}; longest stall from the restore on {stall_back:?}");
    assert!(stall_back < Duration::from_millis(700), "viewer stalled {stall_back:?} when the media moved back");

    viewer.stop().await.expect("viewer DELETE");
    publisher.stop().await.expect("publisher DELETE");
    for n in [township, county, city_b, city_a, province] {
        n.node.shutdown().await;
    }
    relay.shutdown().await;
}

/// 3 % loss each way (and 20 ms delay) on the township–province trunk, through the project's
/// relay: the trunk repairs its losses hop by hop (NACK, resend from the sender's history), and the
/// province viewer decodes at least 99 % of the frames the township publisher encodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_on_a_trunk_is_repaired_hop_by_hop() {
    use cascade::{node, trunk_addr};
    use media_server::impair::{ImpairConfig, UdpRelay};
    let _media = MEDIA.lock().await;
    let ca = tempfile::tempdir().unwrap();
    media_server::trunk::ca::ProvinceCa::init(ca.path(), "test province").unwrap();
    let province = node(ca.path(), "province", None, 10).await;
    let hop = ImpairConfig::perfect().delay(Duration::from_millis(20)).loss(0.03).seed(7);
    let target: std::net::SocketAddr = trunk_addr(&province).parse().unwrap();
    let relay = UdpRelay::start("127.0.0.1:0".parse().unwrap(), target, hop.clone(), hop.seed(8)).await.unwrap();
    let township = node(ca.path(), "township", Some(relay.local_addr().to_string()), 10).await;
    let publisher = WhipPublisher::start(
        &township.base,
        "cam1",
        &township.token("cam1", Role::Officer),
        PublishOptions { bitrate_kbps: 800, audio: false, ..PublishOptions::default() },
    )
    .await
    .expect("publish at the township");
    let addr = ::trunk::StreamAddr::parse("township/cam1").unwrap();
    let p_trunk = province.node.trunk.clone().unwrap();
    wait_for("the province to learn township/cam1", WAIT, || async {
        p_trunk.catalog().await.iter().any(|e| e.addr == addr).then_some(())
    })
    .await;
    let viewer = WhepViewer::start(&province.base, "township/cam1", &province.token("wall-1", Role::Viewer), ViewOptions { audio: false, ..av() })
        .await
        .expect("WHEP at the province");
    viewer.wait_frames(1, WAIT).await.expect("first frame");
    let (seen0, sent0) = (viewer.stats().frames_decoded, publisher.frames_sent());
    wait_for("publisher to encode 300 more frames", WAIT, || async {
        (publisher.frames_sent() >= sent0 + 300).then_some(())
    })
    .await;
    let decoded = match viewer.wait_frames(seen0 + 297, Duration::from_secs(10)).await {
        Ok(s) => s.frames_decoded - seen0,
        Err(_) => viewer.stats().frames_decoded - seen0,
    };
    let nacks = township.metric("yiwang_trunk_retransmits_total").await;
    let after_loss = province.metric("yiwang_trunk_frames_after_loss_total").await;
    eprintln!("lossy trunk (3 % each way, 20 ms): {decoded} of 300 frames decoded; {nacks} packets resent; {after_loss} frames after an unrepaired loss");
    assert!(decoded >= 297, "viewer decoded {decoded} of 300 frames over a 3 % lossy trunk");
    assert!(nacks > 0, "losses were repaired by resending");
    viewer.stop().await.expect("viewer DELETE");
    publisher.stop().await.expect("publisher DELETE");
    township.node.shutdown().await;
    province.node.shutdown().await;
    relay.shutdown().await;
}

/// The issue's topology across Linux network namespaces, each node a real `media-server`
/// process in its own namespace (`ip netns exec`), joined by veth pairs the test creates and
/// removes; every trunk goes through a `yiwang-relay` in the child's namespace adding 20 ms each
/// way; the test's own namespace reaches the province, city-b and the township over three more
/// veths (WHEP viewers, WHIP publisher). Needs root and the binaries built
/// (`cargo build -p media-server --bins`).
///
/// ```text
///            province ─── (test: viewers)
///            /      \
///        city-a    city-b ─── (test: viewer)
///          |          |
///        county ──────┘  (second parent)
///          |
///       township ─── (test: publisher)
/// ```
///
/// Viewers at the province and at city-b decode ≥ 95 % of frames; the county–city-a veth taken
/// down (`ip link set down`) stalls the province viewer less than 3 s (media via city-b); back up,
/// the media returns without a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_province_in_network_namespaces_survives_a_cut_link() {
    use media_server::identity::NodeIdentity;
    use media_server::trunk::ca::ProvinceCa;
    use signaling::auth::TokenRequest;
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt as _;

    /// Namespaces and processes of this run; removed on drop, whatever happened.
    struct Topology {
        pid: u32,
        /// Where the processes' stderr goes (kept only while the test runs).
        logs: std::path::PathBuf,
        namespaces: Vec<String>,
        children: Vec<tokio::process::Child>,
    }
    impl Drop for Topology {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.start_kill();
            }
            for ns in &self.namespaces {
                let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip").args(args).output().expect("ip runs");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    impl Topology {
        fn ns(&self, n: &str) -> String {
            format!("yw{}-{n}", self.pid)
        }
        /// A veth pair between `a` and `b` ("" = the test's namespace) on subnet `net`:
        /// `a` gets .1, `b` gets .2. Returns the interface names (a side, b side).
        fn link(&self, a: &str, b: &str, net: &str, i: u32) -> (String, String) {
            let (ia, ib) = (format!("yw{}a{i}", self.pid % 100_000), format!("yw{}b{i}", self.pid % 100_000));
            ip(&["link", "add", &ia, "type", "veth", "peer", "name", &ib]);
            for (side, ifname, host) in [(a, &ia, 1), (b, &ib, 2)] {
                let addr = format!("{net}.{host}/24");
                if side.is_empty() {
                    ip(&["addr", "add", &addr, "dev", ifname]);
                    ip(&["link", "set", ifname, "up"]);
                } else {
                    let ns = self.ns(side);
                    ip(&["link", "set", ifname, "netns", &ns]);
                    ip(&["-n", &ns, "addr", "add", &addr, "dev", ifname]);
                    ip(&["-n", &ns, "link", "set", ifname, "up"]);
                }
            }
            (ia, ib)
        }
        /// Runs `bin args…` in namespace `n`, returns its first stdout line starting with `prefix`.
        async fn run(&mut self, n: &str, bin: &std::path::Path, args: &[&str], prefix: &str) -> String {
            let mut child = tokio::process::Command::new("ip")
                .args(["netns", "exec", &self.ns(n)])
                .arg(bin)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(self.logs.join(format!("{n}-{}.log", self.children.len()))).map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn in namespace");
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            self.children.push(child);
            let line = tokio::time::timeout(WAIT, async {
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                panic!("{} in {n} ended before printing {prefix:?}", bin.display());
            })
            .await
            .expect("ready line in time");
            // Keep draining stdout so the process never blocks on it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            line
        }
    }

    let _media = MEDIA.lock().await;
    let bins = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let (server, relay) = (bins.join("media-server"), bins.join("yiwang-relay"));
    assert!(server.exists() && relay.exists(), "build the binaries first: cargo build -p media-server --bins");
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let mut topo = Topology { pid, logs: dir.path().to_path_buf(), namespaces: Vec::new(), children: Vec::new() };
    let names = ["province", "city-a", "city-b", "county", "township"];
    for n in names {
        let ns = topo.ns(n);
        ip(&["netns", "add", &ns]);
        topo.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
    }
    // Subnets 10.X.L.0/24 with X from the pid, so concurrent runs do not clash.
    let x = 20 + pid % 200;
    let net = |l: u32| format!("10.{x}.{l}");
    topo.link("", "province", &net(0), 0);
    topo.link("province", "city-a", &net(1), 1);
    topo.link("province", "city-b", &net(2), 2);
    let (_, county_to_city_a) = topo.link("city-a", "county", &net(3), 3);
    topo.link("city-b", "county", &net(4), 4);
    topo.link("county", "township", &net(5), 5);
    topo.link("", "township", &net(6), 6);
    topo.link("", "city-b", &net(7), 7);

    let ca_dir = dir.path().join("ca");
    ProvinceCa::init(&ca_dir, "test province").unwrap();
    let ca = ProvinceCa::load(&ca_dir).unwrap();
    // Each child reaches a parent through a relay in its own namespace: 20 ms each way.
    let mut relay_port = 7000;
    let mut via = |topo_ns: &str, upstream: String, relays: &mut Vec<(String, String)>| {
        relay_port += 1;
        // The relay opens its upstream sockets on its listen IP: listen on all addresses of the
        // namespace, the node dials it on loopback.
        relays.push((topo_ns.to_owned(), format!("0.0.0.0:{relay_port} {upstream}")));
        format!("127.0.0.1:{relay_port}")
    };
    let mut relays = Vec::new();
    let parents: Vec<(&str, Option<String>, Option<String>)> = vec![
        ("province", None, None),
        ("city-a", Some(via("city-a", format!("{}.1:4434", net(1)), &mut relays)), None),
        ("city-b", Some(via("city-b", format!("{}.1:4434", net(2)), &mut relays)), None),
        (
            "county",
            Some(via("county", format!("{}.1:4434", net(3)), &mut relays)),
            Some(via("county", format!("{}.1:4434", net(4)), &mut relays)),
        ),
        ("township", Some(via("township", format!("{}.1:4434", net(5)), &mut relays)), None),
    ];
    for (n, spec) in &relays {
        let (listen, upstream) = spec.split_once(' ').unwrap();
        topo.run(n, &relay, &["--listen", listen, "--upstream", upstream, "--both", "delay=20ms"], "relay listen=").await;
    }
    let media_ip = |n: &str| match n {
        "province" => format!("{}.2", net(0)),
        "township" => format!("{}.2", net(6)),
        "city-b" => format!("{}.2", net(7)),
        _ => "0.0.0.0".into(),
    };
    let mut http = std::collections::HashMap::new();
    for (n, parent, second) in parents {
        let (cert, key) = ca.issue_to(&::trunk::NodeName::parse(n).unwrap(), &dir.path().join("certs")).unwrap();
        let mut c = media_server::config::NodeConfig::default();
        c.node.id = Some(n.parse().unwrap());
        c.node.data_dir = dir.path().join(n);
        c.http.listen = "0.0.0.0:8080".parse().unwrap();
        c.media.listen = format!("{}:8443", media_ip(n)).parse().unwrap();
        c.quic.listen = "0.0.0.0:4433".parse().unwrap();
        c.trunk.listen = Some("0.0.0.0:4434".parse().unwrap());
        c.trunk.parent = parent;
        c.trunk.second_parent = second;
        c.trunk.ca = Some(ca_dir.join("ca.pem"));
        c.trunk.cert = Some(cert);
        c.trunk.key = Some(key);
        let file = dir.path().join(format!("{n}.toml"));
        std::fs::write(&file, c.to_toml()).unwrap();
        topo.run(n, &server, &["--config", file.to_str().unwrap()], "ready ").await;
        http.insert(n, format!("http://{}:8080", media_ip(n)));
    }
    let token = |n: &str, sub: &str, role: Role| {
        let id = NodeIdentity::load_or_create(&dir.path().join(n), Some(&n.parse().unwrap())).unwrap();
        let req = TokenRequest::new(sub.parse().unwrap(), role, id.node_id.to_string(), id.fingerprint.clone());
        id.issuer().issue(&req, common::now_unix())
    };

    let publisher = WhipPublisher::start(
        &http["township"],
        "cam1",
        &token("township", "cam1", Role::Officer),
        PublishOptions { bitrate_kbps: 600, audio: false, ..PublishOptions::default() },
    )
    .await
    .expect("publish at the township");
    // The catalog needs a moment to climb four levels: retry the WHEP POST until it is there.
    let video = ViewOptions { audio: false, ..av() };
    let view = |n: &'static str| {
        let (base, t) = (http[n].clone(), token(n, "wall-1", Role::Viewer));
        async move {
            wait_for("a WHEP answer for township/cam1", WAIT, || {
                let (base, t) = (base.clone(), t.clone());
                async move {
                    match WhepViewer::start(&base, "township/cam1", &t, video).await {
                        Ok(v) => Some(v),
                        Err(e) => {
                            eprintln!("netns: WHEP at {base}: {e:#}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            None
                        }
                    }
                }
            })
            .await
        }
    };
    let at_province = view("province").await;
    let at_city_b = view("city-b").await;
    for v in [&at_province, &at_city_b] {
        v.wait_frames(1, WAIT).await.expect("first frame across the namespaces");
    }
    let seen: Vec<u64> = [&at_province, &at_city_b].iter().map(|v| v.stats().frames_decoded).collect();
    let sent0 = publisher.frames_sent();
    wait_for("publisher to encode 300 more frames", WAIT, || async {
        (publisher.frames_sent() >= sent0 + 300).then_some(())
    })
    .await;
    for (v, s) in [&at_province, &at_city_b].iter().zip(&seen) {
        let got = v.wait_frames(s + 285, Duration::from_secs(10)).await.expect("≥ 95 % of 300 frames, 20 ms per hop");
        eprintln!("netns: viewer decoded {} of 300 frames", got.frames_decoded - s);
    }

    // Bytes on the county → city-a veth (the province's path) for 1 vs 4 province viewers.
    let county_ns = topo.ns("county");
    let tx = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &county_ns, "cat", &format!("/sys/class/net/{county_to_city_a}/statistics/tx_bytes")])
            .output()
            .expect("read the veth counter");
        String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().expect("a byte count")
    };
    let per_90_frames = || async {
        let (b0, f0) = (tx(), publisher.frames_sent());
        wait_for("the publisher to encode 90 more frames", WAIT, || async { (publisher.frames_sent() >= f0 + 90).then_some(()) }).await;
        tx() - b0
    };
    let one = per_90_frames().await;
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(view("province").await);
    }
    for v in &more {
        v.wait_frames(1, WAIT).await.expect("each further province viewer decodes");
    }
    let four = per_90_frames().await;
    eprintln!("netns: county→city-a veth bytes per 90 frames: 1 province viewer {one}, 4 viewers {four} ({:.2}x)", four as f64 / one as f64);
    assert!(four * 10 <= one * 12, "one copy on the trunk: {four} vs {one}");
    for v in more {
        v.stop().await.expect("viewer DELETE");
    }

    ip(&["-n", &county_ns, "link", "set", &county_to_city_a, "down"]);
    let stall = longest_stall(&at_province, Duration::from_secs(6)).await;
    let n = at_province.stats().frames_decoded;
    at_province.wait_frames(n + 30, Duration::from_secs(10)).await.expect("frames via city-b after the cut");
    eprintln!("netns: county–city-a down, province viewer's longest stall {stall:?}");
    assert!(stall < Duration::from_secs(3), "stalled {stall:?}");
    ip(&["-n", &county_ns, "link", "set", &county_to_city_a, "up"]);
    let stall_back = longest_stall(&at_province, Duration::from_secs(8)).await;
    eprintln!("netns: link back up, longest stall over the next 8 s {stall_back:?}");
    assert!(stall_back < Duration::from_millis(700), "stalled {stall_back:?} when the link came back");

    at_province.stop().await.expect("viewer DELETE");
    at_city_b.stop().await.expect("viewer DELETE");
    publisher.stop().await.expect("publisher DELETE");
    drop(topo);
}
