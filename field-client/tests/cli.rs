//! The real `field-client` binary against a real node started in-process (ephemeral loopback
//! ports, fresh data dir), with an operator on the other side speaking through
//! `signaling::client`. Every wait is bounded; nothing sleeps to synchronise.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use media_server::config::NodeConfig;
use media_server::node::RunningNode;
use serde_json::Value;
use signaling::auth::{Role, TokenRequest};
use signaling::client::{self, ClientConfig, ClientEvent, Events};
use signaling::proto::ClientMsg;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Bound on any single wait.
const WAIT: Duration = Duration::from_secs(60);

const BIN: &str = env!("CARGO_BIN_EXE_field-client");

struct TestNode {
    node: RunningNode,
    dir: tempfile::TempDir,
}

async fn start_node() -> TestNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::default();
    config.node.data_dir = dir.path().join("data");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    let node = media_server::node::start(config)
        .await
        .expect("node starts");
    TestNode { node, dir }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl TestNode {
    fn token_at(&self, sub: &str, role: Role, iat: u64) -> String {
        let id = &self.node.identity;
        let req = TokenRequest::new(
            sub.parse().unwrap(),
            role,
            id.node_id.to_string(),
            id.fingerprint.clone(),
        );
        id.issuer().issue(&req, iat)
    }

    fn token(&self, sub: &str, role: Role) -> String {
        self.token_at(sub, role, now_unix())
    }

    fn quic(&self) -> String {
        self.node.quic_addr.to_string()
    }

    /// Writes `token` to a file in the node's temp dir.
    fn token_file(&self, name: &str, token: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }

    async fn units(&self, token: &str) -> Vec<Value> {
        let r = reqwest::Client::new()
            .get(format!("http://{}/api/units", self.node.http_addr))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["units"].as_array().unwrap().clone()
    }
}

/// Polls `f` until it returns `Some`, at most `within`.
async fn poll<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Fut,
) -> T {
    tokio::time::timeout(within, async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {within:?} waiting for {what}"))
}

/// The next mail at the operator that satisfies `pred`.
async fn mail_where(events: &mut Events, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await.expect("operator's events end") {
                ClientEvent::Mail { item, .. } => {
                    // Asserted on as the wire JSON the operator reads.
                    let item = serde_json::to_value(&item).unwrap();
                    if pred(&item) {
                        return item;
                    }
                }
                ClientEvent::Closed { reason, .. } => panic!("operator closed: {reason}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what} at the operator"))
}

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

/// Runs a one-shot command to the end (bounded); (exit code, stdout, stderr).
async fn one_shot(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("YIWANG_NODE")
        .env_remove("YIWANG_TOKEN")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("command ends in time")
        .expect("command runs");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn first_json(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().next().expect("a line on stdout")).unwrap()
}

fn spawn_run(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(BIN)
        .arg("run")
        .args(args)
        .env_remove("YIWANG_NODE")
        .env_remove("YIWANG_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("field-client run starts");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_positions_answers_chat_and_sos_between_run_and_an_operator() {
    let node = start_node().await;
    let op_token = node.token("op-1", Role::Operator);
    let (op, mut op_events) = tokio::time::timeout(
        WAIT,
        client::connect(ClientConfig::new(node.quic(), op_token.clone())),
    )
    .await
    .expect("operator connects in time")
    .expect("operator connects");

    let officer = node.token("off-1", Role::Officer);
    let token_file = node.token_file("off-1.token", &officer);
    let quic = node.quic();
    let (mut run, mut lines) = spawn_run(&[
        "--node",
        &quic,
        "--token-file",
        token_file.to_str().unwrap(),
        "--json",
        "--position",
        "fixed:30.59,114.30",
        "--source",
        "test",
    ]);
    let hello = line_where(&mut lines, "the connected line", |v| {
        v["kind"] == "connected"
    })
    .await;
    assert_eq!(
        (hello["subject"].as_str(), hello["role"].as_str()),
        (Some("off-1"), Some("officer"))
    );
    assert_eq!(hello["incidents"][0], "duty");
    let publishing = line_where(&mut lines, "the publishing line", |v| {
        v["kind"] == "publishing"
    })
    .await;
    assert_eq!(publishing["stream"], "off-1", "{publishing}");

    // An operator's order reaches `run` as a JSON line carrying the order id.
    let sent = op
        .deliver(ClientMsg::Order {
            id: 0,
            msg_id: Some("op-order-1".into()),
            incident: "duty".parse().unwrap(),
            to: "off-1".parse().unwrap(),
            text: "Sandbags to gate 3".into(),
        })
        .await
        .expect("order stored");
    let order_id = sent["order"]["id"].as_str().unwrap().to_owned();
    let got = line_where(&mut lines, "the order", |v| v["kind"] == "order").await;
    assert_eq!(got["order"], order_id.as_str());
    assert_eq!(
        (got["from"].as_str(), got["text"].as_str()),
        (Some("op-1"), Some("Sandbags to gate 3"))
    );
    assert!(got["seq"].as_u64().is_some(), "{got}");

    // The fixed position shows in /api/units.
    let unit = poll("off-1's position in /api/units", WAIT, || async {
        node.units(&op_token)
            .await
            .into_iter()
            .find(|u| u["subject"] == "off-1" && u["position"]["lat"].as_f64().is_some())
    })
    .await;
    assert_eq!(unit["position"]["lat"].as_f64(), Some(30.59));
    assert_eq!(unit["position"]["lon"].as_f64(), Some(114.30));

    // `accept ID --eta 7` (node and token from the environment this time) reaches the operator.
    let env = [
        ("YIWANG_NODE", quic.as_str()),
        ("YIWANG_TOKEN", officer.as_str()),
    ];
    let (code, stdout, stderr) =
        one_shot(&["accept", &order_id, "--eta", "7", "--json"], &env).await;
    assert_eq!(code, 0, "{stderr}");
    let result = first_json(&stdout);
    assert_eq!(
        (result["kind"].as_str(), result["command"].as_str()),
        (Some("result"), Some("accept"))
    );
    assert_eq!(result["order"]["state"], "accepted");
    assert!(
        result["msg_id"].as_str().unwrap().starts_with("fc-off-1-"),
        "{result}"
    );
    let state = mail_where(&mut op_events, "the accepted order_state", |m| {
        m["kind"] == "order_state" && m["state"] == "accepted"
    })
    .await;
    assert_eq!(state["order"], order_id.as_str());
    assert_eq!(state["eta_min"], 7);
    assert_eq!(state["by"], "off-1");

    // SOS and chat reach the operator.
    let (code, stdout, stderr) = one_shot(&["sos", "--text", "water rising", "--json"], &env).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first_json(&stdout)["command"], "sos");
    let sos = mail_where(&mut op_events, "the SOS", |m| m["kind"] == "sos").await;
    assert_eq!(
        (sos["from"].as_str(), sos["text"].as_str()),
        (Some("off-1"), Some("water rising"))
    );
    assert_eq!(sos["position"]["lat"].as_f64(), Some(30.59));

    let (code, stdout, stderr) = one_shot(&["say", "hello", "--json"], &env).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first_json(&stdout)["command"], "say");
    let chat = mail_where(&mut op_events, "the chat", |m| m["kind"] == "chat").await;
    assert_eq!(
        (
            chat["from"].as_str(),
            chat["text"].as_str(),
            chat["incident"].as_str()
        ),
        (Some("off-1"), Some("hello"), Some("duty"))
    );

    // The operator's chat reaches `run` too.
    op.deliver(ClientMsg::Chat {
        id: 0,
        msg_id: Some("op-chat-1".into()),
        incident: Some("duty".parse().unwrap()),
        to: None,
        text: "copy".into(),
    })
    .await
    .unwrap();
    let back = line_where(&mut lines, "the operator's chat", |v| v["kind"] == "chat").await;
    assert_eq!(
        (back["from"].as_str(), back["text"].as_str()),
        (Some("op-1"), Some("copy"))
    );

    // `orders` lists the order with its latest state, read without disturbing the mailbox.
    let (code, stdout, stderr) = one_shot(&["orders", "--json"], &env).await;
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{stdout}");
    assert_eq!(listed[0]["order"], order_id.as_str());
    assert_eq!(
        (listed[0]["state"].as_str(), listed[0]["eta_min"].as_u64()),
        (Some("accepted"), Some(7))
    );
    let (code, text, _) = one_shot(&["orders"], &env).await;
    assert_eq!(code, 0);
    assert!(
        text.contains(&order_id) && text.contains("accepted (ETA 7 min)"),
        "{text}"
    );

    // SIGTERM: `run` says bye, so the node ends its session at once (no 120 s grace).
    let pid = run.id().expect("run is running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let closed = line_where(&mut lines, "the closed line", |v| v["kind"] == "closed").await;
    assert!(closed["code"].is_null(), "{closed}");
    let status = tokio::time::timeout(WAIT, run.wait())
        .await
        .expect("run exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // (An admin sees every unit; the operator no longer sees one that shares no incident.)
    let admin = node.token("adm-1", Role::Admin);
    poll(
        "off-1 to leave every incident",
        Duration::from_secs(20),
        || async {
            node.units(&admin).await.into_iter().find(|u| {
                u["subject"] == "off-1"
                    && u["online"] == false
                    && u["incidents"].as_array().is_some_and(|a| a.is_empty())
            })
        },
    )
    .await;
    op.close().await;
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_usage_errors_have_clear_messages_and_exit_codes() {
    let node = start_node().await;
    let quic = node.quic();

    // A token the node refuses: exit code 2, one line naming why.
    let expired = node.token_at("off-2", Role::Officer, now_unix() - 2 * 86_400);
    let (code, stdout, stderr) =
        one_shot(&["say", "hi", "--node", &quic, "--token", &expired], &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("refused the session (unauthorized)") && stderr.contains("expired"),
        "{stderr}"
    );
    let (code, _, stderr) = one_shot(&["run", "--node", &quic, "--token", &expired], &[]).await;
    assert_eq!(code, 2, "{stderr}");

    // A request the node refuses: exit code 2 as well.
    let officer = node.token("off-3", Role::Officer);
    let (code, _, stderr) = one_shot(
        &["accept", "ord-999", "--node", &quic, "--token", &officer],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not_found") && stderr.contains("ord-999"),
        "{stderr}"
    );

    // Usage errors: exit code 1, one line.
    let (code, _, stderr) = one_shot(&["accept", "ord-1", "--token", &officer], &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--node"), "{stderr}");
    let (code, _, stderr) = one_shot(
        &["say", "hi", "--node", &quic, "--token", "not-a-token"],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("bad token"), "{stderr}");
    let (code, _, stderr) = one_shot(&["say", "hi", "--node", &quic], &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("YIWANG_TOKEN"), "{stderr}");
    let (code, _, stderr) = one_shot(
        &[
            "run",
            "--node",
            &quic,
            "--token",
            &officer,
            "--position",
            "fixed:95,0",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("lat must be within"), "{stderr}");
    let (code, stdout, _) = one_shot(&["--help"], &[]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("accept") && stdout.contains("Exit codes"),
        "{stdout}"
    );
    node.node.shutdown().await;
}

fn nmea(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{sum:02X}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmea_positions_reach_units_and_a_missing_gpsd_is_only_a_warning() {
    let node = start_node().await;
    let quic = node.quic();
    let admin = node.token("adm-1", Role::Admin);

    // An NMEA track file: a bad checksum is skipped, the good RMC + GGA give the fix.
    let track = node.dir.path().join("track.nmea");
    let mut bad = nmea("GPRMC,120000,A,3100.000,N,11430.000,E,0.0,0.0,261126,,");
    bad.replace_range(bad.len() - 2.., "00");
    let text = [
        bad,
        nmea("GPRMC,120001,A,3036.000,N,11418.000,E,1.944,90.0,261126,,"),
        nmea("GPGGA,120001,3036.000,N,11418.000,E,1,08,0.9,25.0,M,,M,,"),
    ]
    .join("\r\n")
        + "\r\n";
    std::fs::write(&track, text).unwrap();
    let officer = node.token("off-4", Role::Officer);
    let position = format!("nmea:{}", track.display());
    let (mut run, mut lines) = spawn_run(&[
        "--node",
        &quic,
        "--token",
        &officer,
        "--json",
        "--position",
        &position,
    ]);
    line_where(&mut lines, "the connected line", |v| {
        v["kind"] == "connected"
    })
    .await;
    // The default source is the camera; without one `run` says so and goes on without media.
    let has_camera = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("video"));
    if !has_camera {
        let w = line_where(&mut lines, "the no-camera warning", |v| {
            v["kind"] == "warning"
        })
        .await;
        assert!(
            w["message"]
                .as_str()
                .unwrap()
                .starts_with("no camera: no /dev/video* device"),
            "{w}"
        );
    }
    let unit = poll("off-4's NMEA position", WAIT, || async {
        node.units(&admin)
            .await
            .into_iter()
            .find(|u| u["subject"] == "off-4" && u["position"]["alt"].as_f64().is_some())
    })
    .await;
    let p = &unit["position"];
    assert!((p["lat"].as_f64().unwrap() - 30.6).abs() < 1e-9, "{p}");
    assert!((p["lon"].as_f64().unwrap() - 114.3).abs() < 1e-9, "{p}");
    assert!((p["speed"].as_f64().unwrap() - 1.0).abs() < 1e-3, "{p}");
    assert_eq!(
        (p["heading"].as_f64(), p["alt"].as_f64()),
        (Some(90.0), Some(25.0))
    );
    run.start_kill().unwrap();
    let _ = run.wait().await;

    // gpsd on a port where nothing listens: a warning, and `run` keeps going.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gpsd = format!("gpsd:{closed}");
    let officer = node.token("off-5", Role::Officer);
    let (mut run, mut lines) = spawn_run(&[
        "--node",
        &quic,
        "--token",
        &officer,
        "--json",
        "--position",
        &gpsd,
    ]);
    let warning = line_where(&mut lines, "the gpsd warning", |v| {
        v["kind"] == "warning"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("gpsd is not running"))
    })
    .await;
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("running without positions"),
        "{warning}"
    );
    let pid = run.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    line_where(&mut lines, "the closed line", |v| v["kind"] == "closed").await;
    let status = tokio::time::timeout(WAIT, run.wait())
        .await
        .expect("run exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    node.node.shutdown().await;
}

/// `profiles` on this machine (no GPU, no VPU): every tablet profile ends on a software encoder,
/// and each hardware element it passed over is named with the reason.
#[test]
fn profiles_pick_software_here_and_say_why_hardware_was_skipped() {
    let out = std::process::Command::new(BIN)
        .args(["profiles", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tablets = v["tablets"].as_array().unwrap();
    assert!(tablets.len() >= 5, "{v}");
    let mut hardware_skipped = 0;
    for t in tablets {
        assert_eq!(t["hardware"], false, "{t}");
        for s in t["skipped"].as_array().unwrap() {
            if s["hardware"] == true {
                hardware_skipped += 1;
                assert!(
                    s["reason"].as_str().unwrap().contains("not installed"),
                    "{s}"
                );
            }
        }
    }
    assert!(
        hardware_skipped >= 4,
        "every hardware tablet named what it skipped: {v}"
    );
    assert_eq!(v["picked"]["hardware"], false);
    assert_eq!(v["picked"]["profile"], "tablet-software");
    // An unknown profile is a usage error naming it.
    let out = std::process::Command::new(BIN)
        .args(["profiles", "--profile", "tablet-nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tablet-nope"));
}
