//! `field-client run --source test --no-audio` publishes through a real node started in-process
//! (ephemeral loopback ports, fresh data dir); a GStreamer WHEP viewer (`yiwang_tests`) decodes
//! what the node forwards, the node's catalog lists the stream under the officer's subject, and
//! `field-client watch` decodes it at full rate.
//! Then the same with audio: the viewer decodes Opus too; and when the node ends the media
//! session, `run` publishes again and the viewer plays on.
//!
//! The tablet on a bad link: `run` inside its own network namespace, joined to the node's by a
//! veth pair the test creates and removes. Cutting the link three times in a minute (the veth
//! taken down for 5 s), the viewer's frame counter resumes each time and every order sent
//! meanwhile arrives once; with the uplink capped at 300 kbit/s (a `tbf` qdisc: `netem` does not
//! exist on these kernels), congestion control switches every layer but the smallest off and the
//! viewer's audio stays continuous.
//!
//! The tests encode and decode live video, which the 2-core CI machines cannot do twice at once:
//! they take [`MEDIA`] in turn. Every wait is bounded; measuring windows are windows, not
//! synchronisation.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use media_server::config::NodeConfig;
use serde_json::Value;
use signaling::auth::{Role, TokenRequest};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use yiwang_tests::gst_peer::{Pattern, ViewOptions, WhepViewer};

/// Bound on any single wait.
const WAIT: Duration = Duration::from_secs(60);

const BIN: &str = env!("CARGO_BIN_EXE_field-client");

/// The next JSON line of `run` that satisfies `pred`.
async fn line_where(
    lines: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("run ended before {what}"));
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if pred(&v) {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what} from run"))
}

/// One media test at a time (each test has its own runtime, so the lock is async-aware and
/// unpoisoned: a failed test does not fail the next).
static MEDIA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_publishes_test_video_that_a_whep_viewer_decodes() {
    let _turn = MEDIA.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::default();
    config.node.data_dir = dir.path().join("data");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    let node = media_server::node::start(config)
        .await
        .expect("node starts");
    let base = format!("http://{}", node.http_addr);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |sub: &str, role| {
        let id = &node.identity;
        let req = TokenRequest::new(
            sub.parse().unwrap(),
            role,
            id.node_id.to_string(),
            id.fingerprint.clone(),
        );
        id.issuer().issue(&req, now)
    };
    let officer = token("off-42", Role::Officer);
    let viewer_token = token("wall-1", Role::Viewer);

    let quic = node.quic_addr.to_string();
    let mut run = spawn_run(&[
        "run",
        "--json",
        "--source",
        "test",
        "--no-audio",
        "--node",
        &quic,
        "--token",
        &officer,
    ]);
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();

    let note = line_where(&mut lines, "the encoder note", |v| {
        v["kind"] == "note"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("encoder "))
    })
    .await;
    let publishing = line_where(&mut lines, "the publishing line", |v| {
        v["kind"] == "publishing"
    })
    .await;
    assert_eq!(publishing["stream"], "off-42", "{publishing}");
    assert_eq!(publishing["audio"], false, "{publishing}");
    assert_eq!(
        publishing["media"].as_str().map(str::len),
        Some(32),
        "{publishing}"
    );
    let encoder = publishing["encoder"].as_str().expect("encoder named");
    assert!(
        note["message"].as_str().unwrap().contains(encoder),
        "{note} vs {publishing}"
    );

    let viewer = WhepViewer::start(&base, "off-42", &viewer_token, ViewOptions::default())
        .await
        .expect("view over WHEP");
    viewer
        .wait_frames(1, WAIT)
        .await
        .expect("first decoded frame");
    let first = Instant::now();
    tokio::time::sleep_until((first + Duration::from_secs(2)).into()).await;
    let seen0 = viewer.stats().frames_decoded;
    tokio::time::sleep_until((first + Duration::from_secs(12)).into()).await;
    let s = viewer.stats();
    let decoded = s.frames_decoded - seen0;
    eprintln!(
        "decoded {decoded} frames between t=2 s and t=12 s after the first one ({encoder}); {s:?}"
    );
    // 285 = 95 % of the 300 frames a 30 fps source produces in 10 s.
    assert!(
        decoded >= 285,
        "decoded {decoded} frames between t=2 s and t=12 s after the first one: {s:?}"
    );
    assert_eq!((s.width, s.height), (640, 480));
    assert_eq!(viewer.video_codec().as_deref(), Some("H264"));
    // What it decodes is the test source: the SMPTE bars (below the time code).
    viewer
        .expect_picture(Pattern::Smpte, 12)
        .await
        .expect("the test source's SMPTE bars");

    let r = reqwest::Client::new()
        .get(format!("{base}/api/streams"))
        .bearer_auth(&viewer_token)
        .send()
        .await
        .unwrap();
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

    // `watch` plays it too: the full-size layer at the source's rate.
    let watch = tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .args([
                "watch",
                "off-42",
                "--layer",
                "high",
                "--seconds",
                "4",
                "--json",
                "--node",
                &quic,
                "--token",
                &viewer_token,
            ])
            .env_remove("YIWANG_NODE")
            .env_remove("YIWANG_TOKEN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("watch ends by itself")
    .expect("watch runs");
    let stdout = String::from_utf8_lossy(&watch.stdout);
    assert!(
        watch.status.success(),
        "{:?}: {stdout} {}",
        watch.status,
        String::from_utf8_lossy(&watch.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seconds: Vec<Value> = lines
        .iter()
        .filter(|v| v["kind"] == "watch")
        .cloned()
        .collect();
    // The test source's time code survives encoding, the SFU and decoding: watch reads it back.
    let summary = lines
        .iter()
        .find(|v| v["kind"] == "watch_summary")
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert!(
        summary["latency_samples"].as_u64().unwrap() >= 30,
        "{summary}"
    );
    assert!(seconds[3]["latency_ms"].is_u64(), "{stdout}");
    eprintln!("watch: {seconds:?}");
    assert_eq!(seconds.len(), 4, "{stdout}");
    let last = &seconds[3];
    assert!(last["fps"].as_u64().unwrap() >= 25, "{stdout}");
    assert_eq!(
        (last["width"].as_u64(), last["height"].as_u64()),
        (Some(640), Some(480)),
        "{stdout}"
    );

    viewer.stop().await.expect("viewer DELETE");
    terminate(run).await;

    // With audio (the default): Opus ticks reach the viewer too, and the catalog says so.
    let mut run = spawn_run(&[
        "run", "--json", "--source", "test", "--node", &quic, "--token", &officer,
    ]);
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let publishing = line_where(&mut lines, "the publishing line with audio", |v| {
        v["kind"] == "publishing"
    })
    .await;
    assert_eq!(publishing["audio"], true, "{publishing}");
    let viewer = WhepViewer::start(&base, "off-42", &viewer_token, ViewOptions::default())
        .await
        .expect("view over WHEP");
    viewer
        .wait_frames(30, WAIT)
        .await
        .expect("video with audio");
    let s = viewer.wait_audio(50, WAIT).await.expect("Opus decoded");
    eprintln!("with audio: {s:?}");
    let r = reqwest::Client::new()
        .get(format!("{base}/api/streams"))
        .bearer_auth(&viewer_token)
        .send()
        .await
        .unwrap();
    let catalog: Value = r.json().await.unwrap();
    assert_eq!(catalog["streams"][0]["audio"], true, "{catalog}");

    // The node ends the media session (as a link cut would): the peer connection fails and `run`
    // publishes again with a new offer; the viewer, still attached to the name, plays on.
    let media = publishing["media"].as_str().unwrap().to_owned();
    let r = reqwest::Client::new()
        .delete(format!("{base}/session/{media}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cut = Instant::now();
    let again = line_where(&mut lines, "publishing again", |v| {
        v["kind"] == "publishing"
    })
    .await;
    assert_ne!(again["media"], media.as_str(), "{again}");
    let seen = viewer.stats().frames_decoded;
    let s = viewer
        .wait_frames(seen + 60, WAIT)
        .await
        .expect("the viewer plays again");
    eprintln!("published again {:?} after the cut; {s:?}", cut.elapsed());
    viewer
        .expect_picture(Pattern::Smpte, 12)
        .await
        .expect("the SMPTE bars after publishing again");
    viewer.stop().await.expect("viewer DELETE");
    terminate(run).await;
    node.shutdown().await;
}

fn spawn_run(args: &[&str]) -> Child {
    spawn_run_in(None, args)
}

/// `run` with `args`, inside network namespace `ns` when given.
fn spawn_run_in(ns: Option<&str>, args: &[&str]) -> Child {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args)
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
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, run.wait())
        .await
        .expect("run exits in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tablet's network: a namespace with one veth to the host. The node listens on the host end
/// (`host_ip`); the tablet has `tablet_ip`. Removed on drop.
struct TabletNet {
    ns: String,
    host_if: String,
    tablet_if: String,
    host_ip: String,
}

impl TabletNet {
    fn create(n: u8) -> TabletNet {
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 100_000);
        let net = TabletNet {
            ns: format!("ywfc{tag}"),
            host_if: format!("ywh{tag}"),
            tablet_if: format!("ywt{tag}"),
            host_ip: format!("10.{}.{}.1", 200 + n, pid % 250),
        };
        let tablet_ip = format!("10.{}.{}.2", 200 + n, pid % 250);
        // Leftovers of a killed earlier run with the same pid.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &net.ns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &net.host_if])
            .output();
        ip(&["netns", "add", &net.ns]);
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.tablet_if,
            "netns",
            &net.ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", net.host_ip),
            "dev",
            &net.host_if,
        ]);
        ip(&["link", "set", &net.host_if, "up"]);
        ip(&[
            "-n",
            &net.ns,
            "addr",
            "add",
            &format!("{tablet_ip}/30"),
            "dev",
            &net.tablet_if,
        ]);
        ip(&["-n", &net.ns, "link", "set", &net.tablet_if, "up"]);
        ip(&["-n", &net.ns, "link", "set", "lo", "up"]);
        net.wait_carrier();
        net
    }

    /// Waits (bounded) until the host end reports carrier: packets sent before are lost.
    fn wait_carrier(&self) {
        let path = format!("/sys/class/net/{}/operstate", self.host_if);
        let until = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path)
            .map(|s| s.trim() != "up")
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < until,
                "{} has no carrier after 10 s",
                self.host_if
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes the link down (`false`: the tablet loses coverage) or up again.
    fn set_link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
        if up {
            self.wait_carrier();
        }
    }

    /// Caps the tablet's uplink with a token bucket.
    fn cap_uplink(&self, kbit: u32) {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                &self.tablet_if,
                "root",
                "tbf",
            ])
            .args([
                "rate",
                &format!("{kbit}kbit"),
                "burst",
                "8kb",
                "latency",
                "150ms",
            ])
            .output()
            .expect("tc runs");
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TabletNet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A node listening on `ip` for QUIC, media and HTTP.
async fn node_on(ip: &str, dir: &std::path::Path) -> media_server::node::RunningNode {
    let mut config = NodeConfig::default();
    config.node.data_dir = dir.join("data");
    config.http.listen = format!("{ip}:0").parse().unwrap();
    config.media.listen = format!("{ip}:0").parse().unwrap();
    config.quic.listen = format!("{ip}:0").parse().unwrap();
    media_server::node::start(config)
        .await
        .expect("node starts")
}

fn token_for(node: &media_server::node::RunningNode, sub: &str, role: Role) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let id = &node.identity;
    let req = TokenRequest::new(
        sub.parse().unwrap(),
        role,
        id.node_id.to_string(),
        id.fingerprint.clone(),
    );
    id.issuer().issue(&req, now)
}

/// Every JSON line `run` prints, collected by a task, with a way to wait for one.
struct RunLines {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    more: std::sync::Arc<tokio::sync::Notify>,
}

impl RunLines {
    fn collect(run: &mut Child) -> RunLines {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let more = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
        let (s, m) = (seen.clone(), more.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                s.lock().unwrap().push(v);
                m.notify_waiters();
            }
        });
        RunLines { seen, more }
    }

    fn all(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// The first line from index `from` on that satisfies `pred`, waiting up to `wait`.
    async fn wait_for(
        &self,
        from: usize,
        what: &str,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (usize, Value) {
        tokio::time::timeout(wait, async {
            loop {
                let notified = self.more.notified();
                if let Some((i, v)) = self
                    .all()
                    .into_iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, v)| pred(v))
                {
                    return (i, v);
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what} from run; lines: {:?}",
                self.all()
            )
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_link_cuts_in_a_minute_the_picture_resumes_and_orders_arrive_once() {
    let _turn = MEDIA.lock().await;
    let net = TabletNet::create(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let node = node_on(&net.host_ip, dir.path()).await;
    let base = format!("http://{}", node.http_addr);
    let officer = token_for(&node, "off-7", Role::Officer);
    let operator = token_for(&node, "ops-1", Role::Operator);
    let viewer_token = token_for(&node, "wall-1", Role::Viewer);
    let quic = node.quic_addr.to_string();
    let mut run = spawn_run_in(
        Some(&net.ns),
        &[
            "run",
            "--json",
            "--source",
            "test",
            "--no-audio",
            "--node",
            &quic,
            "--token",
            &officer,
        ],
    );
    let lines = RunLines::collect(&mut run);
    lines
        .wait_for(0, "the publishing line", WAIT, |v| {
            v["kind"] == "publishing"
        })
        .await;
    let viewer = WhepViewer::start(&base, "off-7", &viewer_token, ViewOptions::default())
        .await
        .expect("view over WHEP");
    viewer
        .wait_frames(30, WAIT)
        .await
        .expect("the picture plays");

    let http = reqwest::Client::new();
    let mut sent = Vec::new();
    let t0 = Instant::now();
    for cut in 1..=3 {
        net.set_link(false);
        let down = Instant::now();
        // Orders while the tablet is out of coverage: stored by the node, delivered on return.
        for k in 1..=2 {
            let r = http
                .post(format!("{base}/api/orders"))
                .bearer_auth(&operator)
                .json(&serde_json::json!({"incident": "duty", "to": "off-7", "text": format!("cut {cut} order {k}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            sent.push(v["order"]["id"].as_str().unwrap().to_owned());
        }
        tokio::time::sleep_until((down + Duration::from_secs(5)).into()).await;
        let frames_at_return = viewer.stats().frames_decoded;
        net.set_link(true);
        let up = Instant::now();
        let s = viewer
            .wait_frames(frames_at_return + 30, WAIT)
            .await
            .unwrap_or_else(|e| panic!("cut {cut}: the picture did not resume: {e:#}"));
        eprintln!(
            "cut {cut}: 30 new frames {:?} after the link returned; {s:?}",
            up.elapsed()
        );
        viewer
            .expect_picture(Pattern::Smpte, 8)
            .await
            .unwrap_or_else(|e| panic!("cut {cut}: the picture resumed broken: {e:#}"));
        // Leave the link up for a while before the next cut (three cuts within the minute).
        tokio::time::sleep_until((up + Duration::from_secs(8)).into()).await;
    }
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "three cuts took {:?}",
        t0.elapsed()
    );

    // Every order reaches `run`, each exactly once.
    for id in &sent {
        lines
            .wait_for(0, &format!("order {id}"), WAIT, |v| {
                v["kind"] == "order" && v["order"] == id.as_str()
            })
            .await;
    }
    let all = lines.all();
    for id in &sent {
        let n = all
            .iter()
            .filter(|v| v["kind"] == "order" && v["order"] == id.as_str())
            .count();
        assert_eq!(n, 1, "order {id} printed {n} times: {all:?}");
    }
    viewer.stop().await.expect("viewer DELETE");
    terminate(run).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_kbit_uplink_keeps_the_smallest_layer_and_continuous_audio() {
    let _turn = MEDIA.lock().await;
    let net = TabletNet::create(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let node = node_on(&net.host_ip, dir.path()).await;
    let base = format!("http://{}", node.http_addr);
    let officer = token_for(&node, "off-8", Role::Officer);
    let viewer_token = token_for(&node, "wall-1", Role::Viewer);
    let quic = node.quic_addr.to_string();
    net.cap_uplink(300);
    let mut run = spawn_run_in(
        Some(&net.ns),
        &[
            "run", "--json", "--source", "test", "--node", &quic, "--token", &officer,
        ],
    );
    let lines = RunLines::collect(&mut run);
    let (_, publishing) = lines
        .wait_for(0, "the publishing line", WAIT, |v| {
            v["kind"] == "publishing"
        })
        .await;
    assert_eq!(
        publishing["layers"],
        serde_json::json!(["high", "mid", "low"]),
        "{publishing}"
    );
    let viewer = WhepViewer::start(&base, "off-8", &viewer_token, ViewOptions::default())
        .await
        .expect("view over WHEP");

    // Congestion control finds the cap: only the smallest layer stays on, audio at its rate.
    let only_low = |v: &Value| {
        v["kind"] == "bitrate"
            && v["layers"].as_array().is_some_and(|l| {
                l.iter()
                    .map(|l| l["on"].as_bool().unwrap_or(false))
                    .collect::<Vec<_>>()
                    == [false, false, true]
            })
    };
    let (i, low) = lines
        .wait_for(0, "only the smallest layer on", WAIT, only_low)
        .await;
    eprintln!("under the cap: {low}");
    assert_eq!(low["audio_kbps"], 40, "{low}");

    // Settled: the viewer decodes audio without gaps and the small picture keeps coming.
    viewer.wait_audio(50, WAIT).await.expect("audio plays");
    viewer.wait_frames(30, WAIT).await.expect("video plays");
    let start = Instant::now();
    let s0 = viewer.stats();
    tokio::time::sleep_until((start + Duration::from_secs(10)).into()).await;
    let s1 = viewer.stats();
    let audio = s1.audio_buffers - s0.audio_buffers;
    let frames = s1.frames_decoded - s0.frames_decoded;
    eprintln!("10 s under a 300 kbit/s cap: {audio} audio buffers, {frames} frames; {s1:?}");
    // 20 ms Opus frames: 500 in 10 s.
    assert!(
        audio >= 475,
        "audio not continuous under the cap: {audio} of 500 buffers in 10 s ({s1:?})"
    );
    assert!(
        frames >= 150,
        "video stalled under the cap: {frames} frames in 10 s ({s1:?})"
    );
    assert_eq!((s1.width, s1.height), (160, 120), "{s1:?}");
    viewer
        .expect_picture(Pattern::Smpte, 12)
        .await
        .expect("the smallest layer shows the SMPTE bars");
    // And it stayed down: no line after it switched a larger layer back on.
    let later: Vec<Value> = lines
        .all()
        .into_iter()
        .skip(i + 1)
        .filter(|v| v["kind"] == "bitrate")
        .collect();
    assert!(
        later.iter().all(only_low),
        "a larger layer came back on under the cap: {later:?}"
    );
    viewer.stop().await.expect("viewer DELETE");
    terminate(run).await;
    node.shutdown().await;
}
