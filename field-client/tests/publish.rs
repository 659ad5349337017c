//! `field-client run --source test --no-audio` publishes through a real node started in-process
//! (ephemeral loopback ports, fresh data dir); a GStreamer WHEP viewer (`yiwang_tests`) decodes
//! what the node forwards, and the node's catalog lists the stream under the officer's subject.
//! Then the same with audio: the viewer decodes Opus too; and when the node ends the media
//! session, `run` publishes again and the viewer plays on.
//!
//! One test in this binary: it encodes and decodes live video, which the 2-core CI machines
//! cannot do twice at once. Every wait is bounded; the 10 s measuring window is a window, not a
//! synchronisation.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use media_server::config::NodeConfig;
use serde_json::Value;
use signaling::auth::{Role, TokenRequest};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use yiwang_tests::gst_peer::{ViewOptions, WhepViewer};

/// Bound on any single wait.
const WAIT: Duration = Duration::from_secs(60);

const BIN: &str = env!("CARGO_BIN_EXE_field-client");

/// The next JSON line of `run` that satisfies `pred`.
async fn line_where(lines: &mut Lines<BufReader<ChildStdout>>, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap_or_else(|| panic!("run ended before {what}"));
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if pred(&v) {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what} from run"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_publishes_test_video_that_a_whep_viewer_decodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::default();
    config.node.data_dir = dir.path().join("data");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    let node = media_server::node::start(config).await.expect("node starts");
    let base = format!("http://{}", node.http_addr);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let token = |sub: &str, role| {
        let id = &node.identity;
        let req = TokenRequest::new(sub.parse().unwrap(), role, id.node_id.to_string(), id.fingerprint.clone());
        id.issuer().issue(&req, now)
    };
    let officer = token("off-42", Role::Officer);
    let viewer_token = token("wall-1", Role::Viewer);

    let quic = node.quic_addr.to_string();
    let mut run = spawn_run(&["run", "--json", "--source", "test", "--no-audio", "--node", &quic, "--token", &officer]);
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();

    let note = line_where(&mut lines, "the encoder note", |v| {
        v["kind"] == "note" && v["message"].as_str().is_some_and(|m| m.starts_with("encoder "))
    })
    .await;
    let publishing = line_where(&mut lines, "the publishing line", |v| v["kind"] == "publishing").await;
    assert_eq!(publishing["stream"], "off-42", "{publishing}");
    assert_eq!(publishing["audio"], false, "{publishing}");
    assert_eq!(publishing["media"].as_str().map(str::len), Some(32), "{publishing}");
    let encoder = publishing["encoder"].as_str().expect("encoder named");
    assert!(note["message"].as_str().unwrap().contains(encoder), "{note} vs {publishing}");

    let viewer = WhepViewer::start(&base, "off-42", &viewer_token, ViewOptions::default()).await.expect("view over WHEP");
    viewer.wait_frames(1, WAIT).await.expect("first decoded frame");
    let first = Instant::now();
    tokio::time::sleep_until((first + Duration::from_secs(2)).into()).await;
    let seen0 = viewer.stats().frames_decoded;
    tokio::time::sleep_until((first + Duration::from_secs(12)).into()).await;
    let s = viewer.stats();
    let decoded = s.frames_decoded - seen0;
    eprintln!("decoded {decoded} frames between t=2 s and t=12 s after the first one ({encoder}); {s:?}");
    // 285 = 95 % of the 300 frames a 30 fps source produces in 10 s.
    assert!(decoded >= 285, "decoded {decoded} frames between t=2 s and t=12 s after the first one: {s:?}");
    assert_eq!((s.width, s.height), (640, 480));
    assert_eq!(viewer.video_codec().as_deref(), Some("H264"));

    let r = reqwest::Client::new().get(format!("{base}/api/streams")).bearer_auth(&viewer_token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let catalog: Value = r.json().await.unwrap();
    let stream = catalog["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "off-42")
        .unwrap_or_else(|| panic!("off-42 not in the catalog: {catalog}"))
        .clone();
    assert_eq!(stream["owner"], "off-42", "{stream}");
    assert_eq!(stream["video_codec"], "H264", "{stream}");
    assert_eq!(stream["audio"], false, "{stream}");

    viewer.stop().await.expect("viewer DELETE");
    terminate(run).await;

    // With audio (the default): Opus ticks reach the viewer too, and the catalog says so.
    let mut run = spawn_run(&["run", "--json", "--source", "test", "--node", &quic, "--token", &officer]);
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let publishing = line_where(&mut lines, "the publishing line with audio", |v| v["kind"] == "publishing").await;
    assert_eq!(publishing["audio"], true, "{publishing}");
    let viewer = WhepViewer::start(&base, "off-42", &viewer_token, ViewOptions::default()).await.expect("view over WHEP");
    viewer.wait_frames(30, WAIT).await.expect("video with audio");
    let s = viewer.wait_audio(50, WAIT).await.expect("Opus decoded");
    eprintln!("with audio: {s:?}");
    let r = reqwest::Client::new().get(format!("{base}/api/streams")).bearer_auth(&viewer_token).send().await.unwrap();
    let catalog: Value = r.json().await.unwrap();
    assert_eq!(catalog["streams"][0]["audio"], true, "{catalog}");

    // The node ends the media session (as a link cut would): the peer connection fails and `run`
    // publishes again with a new offer; the viewer, still attached to the name, plays on.
    let media = publishing["media"].as_str().unwrap().to_owned();
    let r = reqwest::Client::new().delete(format!("{base}/session/{media}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cut = Instant::now();
    let again = line_where(&mut lines, "publishing again", |v| v["kind"] == "publishing").await;
    assert_ne!(again["media"], media.as_str(), "{again}");
    let seen = viewer.stats().frames_decoded;
    let s = viewer.wait_frames(seen + 60, WAIT).await.expect("the viewer plays again");
    eprintln!("published again {:?} after the cut; {s:?}", cut.elapsed());
    viewer.stop().await.expect("viewer DELETE");
    terminate(run).await;
    node.shutdown().await;
}

fn spawn_run(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .env_remove("YIWANG_NODE")
        .env_remove("YIWANG_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("field-client run starts")
}

/// SIGTERM: `run` closes its media session, says bye and exits 0.
async fn terminate(mut run: Child) {
    let pid = run.id().expect("run is running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(WAIT, run.wait()).await.expect("run exits in time").unwrap();
    assert!(status.success(), "{status:?}");
}
