//! drone-bridge against real peers: a pymavlink vehicle and ground station (tests/vehicle.py, in
//! the venv `scripts/install-deps.sh` makes under target/venv), real sockets on loopback with ephemeral
//! ports. Every wait is bounded; nothing sleeps to synchronise.
//!
//! The MAVLink-side tests drive the bridge's MAVLink half ([`drone_bridge::link`]) directly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drone_bridge::command::{AckResult, Action};
use drone_bridge::core::{CommandRequest, Config, Event, Stats};
use drone_bridge::frame::SysId;
use drone_bridge::link::{self, MavlinkHandle, MavlinkOptions};
use drone_bridge::signing::SigningKey;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Bound on any single wait.
const WAIT: Duration = Duration::from_secs(30);
const KEY_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The venv's python with pymavlink: `target/venv`, made by `scripts/install-deps.sh`. A test
/// never installs anything; without the venv it fails saying what to run.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv");
    venv_python(&venv).unwrap_or_else(|e| panic!("{e}"))
}

/// `venv`'s python if it imports pymavlink, else why not and what to run.
fn venv_python(venv: &Path) -> Result<PathBuf, String> {
    let py = venv.join("bin/python");
    let imports = std::process::Command::new(&py)
        .args(["-c", "import pymavlink"])
        .status()
        .is_ok_and(|s| s.success());
    if imports {
        Ok(py)
    } else {
        Err(format!(
            "{} cannot import pymavlink: run scripts/install-deps.sh (it makes target/venv)",
            py.display()
        ))
    }
}

#[test]
fn without_the_venv_a_test_fails_naming_install_deps_and_installs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let err = venv_python(&venv).expect_err("no venv there");
    assert!(err.contains("scripts/install-deps.sh"), "{err}");
    assert!(!venv.exists(), "a venv was made at test time");
}

/// A running vehicle.py.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    async fn start(role: &str, connect: &str, extra: &[&str]) -> Peer {
        Self::start_ready(role, connect, extra).await.0
    }

    /// Starts, and returns the `ready` line too (its `port` for listening connection strings).
    async fn start_ready(role: &str, connect: &str, extra: &[&str]) -> (Peer, Value) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vehicle.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--role", role, "--connect", connect])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("vehicle.py starts");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut p = Peer {
            child,
            stdin,
            lines,
        };
        let ready = p.line_where("ready", |v| v["kind"] == "ready").await;
        (p, ready)
    }

    async fn say(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn line_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("peer ended before {what}"));
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if pred(&v) {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn bridge(cfg: Config, gcs: bool, tlog: Option<&Path>) -> MavlinkHandle {
    bridge_on(
        "udpin:127.0.0.1:0",
        gcs.then_some("udpin:127.0.0.1:0"),
        cfg,
        tlog,
    )
    .await
}

async fn bridge_on(
    mavlink: &str,
    gcs: Option<&str>,
    cfg: Config,
    tlog: Option<&Path>,
) -> MavlinkHandle {
    link::start(MavlinkOptions {
        mavlink: mavlink.parse().unwrap(),
        gcs: gcs.map(|g| g.parse().unwrap()),
        tlog: tlog.map(Path::to_owned),
        core: cfg,
    })
    .await
    .expect("bridge starts")
}

/// Every event the bridge emitted so far (what `event_where` read past).
static LOG: Mutex<Vec<Event>> = Mutex::new(Vec::new());

/// The next event that satisfies `pred`.
async fn event_where(
    h: &mut MavlinkHandle,
    what: &str,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(within, async {
        loop {
            let e = h.events.recv().await.expect("bridge events end");
            LOG.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(e.clone());
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {within:?} waiting for {what}"))
}

async fn stats_where(h: &mut MavlinkHandle, what: &str, pred: impl Fn(&Stats) -> bool) -> Stats {
    let mut rx = h.stats.clone();
    let r = tokio::time::timeout(WAIT, async { rx.wait_for(|s| pred(s)).await.map(|s| *s) }).await;
    r.unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", *h.stats.borrow()))
        .expect("stats channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_the_ground_station_and_the_mesh_side_and_link_loss_is_seen_within_3_s() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = bridge(Config::default(), true, Some(dir.path())).await;
    let vehicle_port = h.mavlink_local.unwrap().port();
    let gcs_port = h.gcs_local.unwrap().port();
    let mut vehicle = Peer::start(
        "vehicle",
        &format!("udpout:127.0.0.1:{vehicle_port}"),
        &["--video", "rtsp://127.0.0.1:1/cam"],
    )
    .await;
    let mut gcs = Peer::start(
        "gcs",
        &format!("udpout:127.0.0.1:{gcs_port}"),
        &["--sysid", "255"],
    )
    .await;

    event_where(&mut h, "link up", WAIT, |e| {
        matches!(
            e,
            Event::Link {
                drone: SysId(1),
                up: true
            }
        )
    })
    .await;
    let Event::Telemetry { t, .. } = event_where(&mut h, "position and battery", WAIT, |e| {
        matches!(e, Event::Telemetry { t, .. } if t.lat.is_some() && t.battery_pct.is_some() && t.roll.is_some())
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(
        (t.mode.as_deref(), t.armed, t.vehicle.as_deref()),
        (Some("GUIDED"), Some(true), Some("quadrotor"))
    );
    assert!(
        (t.lat.unwrap() - 30.5).abs() < 0.001 && (t.lon.unwrap() - 114.3).abs() < 1e-6,
        "{t:?}"
    );
    assert_eq!(
        (t.battery_pct, t.alt_amsl, t.alt_rel),
        (Some(76.0), Some(52.0), Some(30.0))
    );
    assert!((t.voltage.unwrap() - 12.3).abs() < 1e-9);
    // Announced once, at the start.
    let videos: Vec<Event> = LOG
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Video { .. }))
        .cloned()
        .collect();
    assert_eq!(
        videos,
        vec![Event::Video {
            drone: SysId(1),
            uri: "rtsp://127.0.0.1:1/cam".into()
        }]
    );

    // Telemetry at the mesh rate: over 2 s of 50 Hz positions, at most 5 per second.
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(Event::Telemetry { .. })) =
            tokio::time::timeout(Duration::from_millis(100), h.events.recv()).await
        {
            n += 1;
        }
    }
    assert!((6..=11).contains(&n), "{n} telemetry events in 2 s");

    // The ground station sees the vehicle's full telemetry through the bridge.
    let counts = gcs
        .line_where("full telemetry at the GCS", |v| {
            let c = &v["counts"];
            v["kind"] == "counts"
                && [
                    "HEARTBEAT",
                    "GLOBAL_POSITION_INT",
                    "ATTITUDE",
                    "BATTERY_STATUS",
                    "VIDEO_STREAM_INFORMATION",
                ]
                .iter()
                .all(|k| c[k].as_u64().unwrap_or(0) > 0)
                && c["GLOBAL_POSITION_INT"].as_u64().unwrap_or(0) >= 50
        })
        .await;
    eprintln!("gcs counts: {counts}");
    // And the vehicle gets the GCS's heartbeats (routing both ways) and the bridge's own.
    vehicle
        .line_where("GCS heartbeats at the vehicle", |v| {
            v["kind"] == "counts" && v["counts"]["HEARTBEAT"].as_u64().unwrap_or(0) >= 2
        })
        .await;

    // Stop the vehicle: link lost within 3 s of its silence.
    vehicle.say("stop").await;
    vehicle
        .line_where("stop acknowledged", |v| {
            v["kind"] == "ok" && v["cmd"] == "stop"
        })
        .await;
    let stopped = Instant::now();
    event_where(&mut h, "link lost", Duration::from_secs(5), |e| {
        matches!(
            e,
            Event::Link {
                drone: SysId(1),
                up: false
            }
        )
    })
    .await;
    let lost_after = stopped.elapsed();
    assert!(
        lost_after <= Duration::from_millis(3300),
        "link lost {lost_after:?} after the vehicle stopped"
    );
    vehicle.say("start").await;
    event_where(&mut h, "link back", WAIT, |e| {
        matches!(
            e,
            Event::Link {
                drone: SysId(1),
                up: true
            }
        )
    })
    .await;

    // The tlog holds what was received, timestamped.
    let st = *h.stats.borrow();
    assert_eq!((st.decode.bad_crc, st.decode.truncated), (0, 0), "{st:?}");
    let path = h.tlog.clone().unwrap();
    h.stop();
    let records = drone_bridge::tlog::read(&std::fs::read(&path).unwrap());
    assert!(records.len() >= 100, "{} tlog records", records.len());
    assert!(records.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(
        records.iter().any(|(_, f)| f.msgid() == 33),
        "GLOBAL_POSITION_INT recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commands_are_verified_by_the_vehicle_and_wrongly_signed_frames_are_dropped() {
    let key = SigningKey::from_hex(KEY_HEX).unwrap();
    let mut h = bridge(
        Config {
            signing: Some(key),
            ..Config::default()
        },
        false,
        None,
    )
    .await;
    let port = h.mavlink_local.unwrap().port();
    let mut vehicle = Peer::start(
        "vehicle",
        &format!("udpout:127.0.0.1:{port}"),
        &["--key", KEY_HEX],
    )
    .await;
    event_where(&mut h, "link up", WAIT, |e| {
        matches!(
            e,
            Event::Link {
                drone: SysId(1),
                up: true
            }
        )
    })
    .await;

    h.commands
        .send(CommandRequest {
            cmd: "dc-1".into(),
            drone: SysId(1),
            action: Action::Rtl,
        })
        .unwrap();
    let c = vehicle
        .line_where("the command at the vehicle", |v| v["kind"] == "command")
        .await;
    assert_eq!(c["msg"], "COMMAND_LONG");
    assert_eq!(c["command"], 20, "MAV_CMD_NAV_RETURN_TO_LAUNCH");
    assert_eq!(
        (c["signed"].as_bool(), c["verified"].as_bool()),
        (Some(true), Some(true)),
        "{c}"
    );
    let ack = event_where(
        &mut h,
        "the ack",
        WAIT,
        |e| matches!(e, Event::Ack { cmd, .. } if cmd == "dc-1"),
    )
    .await;
    assert!(
        matches!(
            ack,
            Event::Ack {
                result: AckResult::Accepted,
                ..
            }
        ),
        "{ack:?}"
    );
    event_where(
        &mut h,
        "mode RTL",
        WAIT,
        |e| matches!(e, Event::Telemetry { t, .. } if t.mode.as_deref() == Some("RTL")),
    )
    .await;

    // Unknown drone: refused by the bridge, at once.
    h.commands
        .send(CommandRequest {
            cmd: "dc-2".into(),
            drone: SysId(42),
            action: Action::Land,
        })
        .unwrap();
    let ack = event_where(
        &mut h,
        "refusal",
        WAIT,
        |e| matches!(e, Event::Ack { cmd, .. } if cmd == "dc-2"),
    )
    .await;
    assert!(
        matches!(
            ack,
            Event::Ack {
                result: AckResult::Refused,
                ..
            }
        ),
        "{ack:?}"
    );

    // The vehicle signs with a wrong key: its frames are counted and dropped, the link is lost.
    let before = *h.stats.borrow();
    assert_eq!(before.bad_signature, 0, "{before:?}");
    vehicle.say("wrongkey").await;
    stats_where(&mut h, "bad signatures counted", |s| s.bad_signature >= 100).await;
    event_where(&mut h, "link lost", Duration::from_secs(5), |e| {
        matches!(e, Event::Link { up: false, .. })
    })
    .await;
}

/// With a signing key the ground-station link is no open path to the vehicle: unsigned ARM and
/// RTL from `--gcs` are counted and dropped at the bridge (the vehicle, which here reports every
/// command it is sent, signed or not, sees none of them); a ground station signing with the same
/// key (as QGroundControl and MAVProxy do) still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_signing_unsigned_ground_station_commands_never_reach_the_vehicle() {
    let key = SigningKey::from_hex(KEY_HEX).unwrap();
    let mut h = bridge(
        Config {
            signing: Some(key),
            ..Config::default()
        },
        true,
        None,
    )
    .await;
    let port = h.mavlink_local.unwrap().port();
    let gcs_port = h.gcs_local.unwrap().port();
    let mut vehicle = Peer::start(
        "vehicle",
        &format!("udpout:127.0.0.1:{port}"),
        &["--key", KEY_HEX, "--accept-unsigned"],
    )
    .await;
    event_where(&mut h, "link up", WAIT, |e| {
        matches!(
            e,
            Event::Link {
                drone: SysId(1),
                up: true
            }
        )
    })
    .await;

    // An unsigned ground station: 100 ARMs and an RTL. Its heartbeats (1 Hz) alone cannot reach
    // 100 unsigned frames within WAIT, so the count proves the commands themselves were dropped.
    let mut rogue = Peer::start("gcs", &format!("udpout:127.0.0.1:{gcs_port}"), &[]).await;
    rogue.say("arm 1 100").await;
    rogue.say("rtl 1").await;
    rogue
        .line_where("the rtl sent", |v| {
            v["kind"] == "sent" && v["command"] == "rtl"
        })
        .await;
    stats_where(&mut h, "unsigned ground-station frames dropped", |s| {
        s.gcs_unsigned >= 101
    })
    .await;

    // A ground station with the key: its RTL is the first command the vehicle ever sees.
    let mut gcs = Peer::start(
        "gcs",
        &format!("udpout:127.0.0.1:{gcs_port}"),
        &["--key", KEY_HEX],
    )
    .await;
    gcs.say("rtl 1").await;
    let c = vehicle
        .line_where("a command at the vehicle", |v| v["kind"] == "command")
        .await;
    assert_eq!(c["command"], 20, "the signed RTL, not a rogue ARM: {c}");
    assert_eq!(
        (c["signed"].as_bool(), c["verified"].as_bool()),
        (Some(true), Some(true)),
        "{c}"
    );
    let st = *h.stats.borrow();
    assert_eq!(st.gcs_bad_signature, 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_truncated_frames_and_bad_crcs_are_counted_and_the_bridge_keeps_working() {
    let mut h = bridge(Config::default(), false, None).await;
    let port = h.mavlink_local.unwrap().port();
    let mut vehicle = Peer::start("vehicle", &format!("udpout:127.0.0.1:{port}"), &[]).await;
    event_where(&mut h, "link up", WAIT, |e| {
        matches!(e, Event::Link { up: true, .. })
    })
    .await;

    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = h.mavlink_local.unwrap();
    // A valid frame to cut and corrupt.
    let hb = drone_bridge::frame::encode_v2(
        drone_bridge::frame::Sender {
            sysid: 7,
            compid: 1,
            seq: 0,
        },
        &mavlink::dialects::ardupilotmega::MavMessage::ATTITUDE(Default::default()),
        false,
    );
    let mut x: u32 = 12345;
    for i in 0..200usize {
        // Ten at a time, each batch counted before the next (a burst would overflow the
        // socket's receive buffer and the test would count the kernel's drops, not ours).
        if i % 10 == 0 && i > 0 {
            stats_where(&mut h, "a batch of junk counted", |s| {
                s.decode.truncated >= i as u64
            })
            .await;
        }
        let mut random = vec![0u8; 1 + i % 300];
        for b in random.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        junk.send_to(&random, to).await.unwrap();
        junk.send_to(&hb[..hb.len() - 1 - i % 5], to).await.unwrap();
        let mut bad = hb.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x5A;
        junk.send_to(&bad, to).await.unwrap();
    }
    let st = stats_where(&mut h, "junk counted", |s| {
        s.decode.truncated >= 200 && s.decode.bad_crc >= 200
    })
    .await;
    assert!(st.decode.garbage_bytes > 1000, "{st:?}");
    // Still up and mapping the vehicle.
    let t0 = Instant::now();
    event_where(&mut h, "telemetry after the junk", WAIT, |e| {
        matches!(e, Event::Telemetry { .. })
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(2));
    vehicle.say("quit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_vehicles_share_one_link_and_each_gets_its_own_commands() {
    let mut h = bridge(Config::default(), false, None).await;
    let port = h.mavlink_local.unwrap().port();
    let connect = format!("udpout:127.0.0.1:{port}");
    let mut one = Peer::start("vehicle", &connect, &["--sysid", "1"]).await;
    let mut two = Peer::start("vehicle", &connect, &["--sysid", "2"]).await;
    for id in [1, 2] {
        event_where(
            &mut h,
            "both links up",
            WAIT,
            |e| matches!(e, Event::Link { drone: SysId(d), up: true } if *d == id),
        )
        .await;
    }
    h.commands
        .send(CommandRequest {
            cmd: "dc-2".into(),
            drone: SysId(2),
            action: Action::Land,
        })
        .unwrap();
    let c = two
        .line_where("the LAND at vehicle 2", |v| v["kind"] == "command")
        .await;
    assert_eq!(c["command"], 21, "MAV_CMD_NAV_LAND: {c}");
    let ack = event_where(
        &mut h,
        "vehicle 2's ack",
        WAIT,
        |e| matches!(e, Event::Ack { cmd, .. } if cmd == "dc-2"),
    )
    .await;
    assert_eq!(
        ack,
        Event::Ack {
            cmd: "dc-2".into(),
            drone: SysId(2),
            result: AckResult::Accepted,
            text: None
        }
    );
    h.commands
        .send(CommandRequest {
            cmd: "dc-1".into(),
            drone: SysId(1),
            action: Action::Guided {
                lat: 30.6,
                lon: 114.4,
                alt: Some(40.0),
            },
        })
        .unwrap();
    let c = one
        .line_where("the reposition at vehicle 1", |v| v["kind"] == "command")
        .await;
    assert_eq!(
        (c["msg"].as_str(), c["command"].as_u64()),
        (Some("COMMAND_INT"), Some(192)),
        "MAV_CMD_DO_REPOSITION: {c}"
    );
    event_where(&mut h, "vehicle 1's ack", WAIT, |e| matches!(e, Event::Ack { cmd, drone: SysId(1), result: AckResult::Accepted, .. } if cmd == "dc-1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udpout_endpoints_carry_the_same_traffic() {
    // The vehicle listens on TCP, the bridge connects (tcpout); the GCS listens on UDP, the
    // bridge sends to it (udpout).
    let (mut vehicle, ready) = Peer::start_ready("vehicle", "tcpin:127.0.0.1:0", &[]).await;
    let vport = ready["port"].as_u64().expect("vehicle port");
    let (mut gcs, ready) = Peer::start_ready("gcs", "udpin:127.0.0.1:0", &["--sysid", "255"]).await;
    let gport = ready["port"].as_u64().expect("gcs port");
    let mut h = bridge_on(
        &format!("tcpout:127.0.0.1:{vport}"),
        Some(&format!("udpout:127.0.0.1:{gport}")),
        Config::default(),
        None,
    )
    .await;
    event_where(&mut h, "link up over tcpout", WAIT, |e| {
        matches!(
            e,
            Event::Link {
                drone: SysId(1),
                up: true
            }
        )
    })
    .await;
    event_where(
        &mut h,
        "telemetry over tcpout",
        WAIT,
        |e| matches!(e, Event::Telemetry { t, .. } if t.lat.is_some()),
    )
    .await;
    gcs.line_where("telemetry at the udpout GCS", |v| {
        v["kind"] == "counts" && v["counts"]["GLOBAL_POSITION_INT"].as_u64().unwrap_or(0) >= 20
    })
    .await;
    // The GCS's command reaches the vehicle through the bridge, and the vehicle's ACK the GCS.
    gcs.say("rtl 1").await;
    let c = vehicle
        .line_where("the GCS's command at the vehicle", |v| {
            v["kind"] == "command"
        })
        .await;
    assert_eq!(
        (c["command"].as_u64(), c["sender"][0].as_u64()),
        (Some(20), Some(255)),
        "{c}"
    );
    gcs.line_where("the ACK at the GCS", |v| {
        v["kind"] == "counts" && v["counts"]["COMMAND_ACK"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    drop(h);

    // The bridge listens on TCP (tcpin); the vehicle connects.
    let mut h = bridge_on("tcpin:127.0.0.1:0", None, Config::default(), None).await;
    let port = h.mavlink_local.unwrap().port();
    let _vehicle = Peer::start("vehicle", &format!("tcp:127.0.0.1:{port}"), &[]).await;
    event_where(&mut h, "link up over tcpin", WAIT, |e| {
        matches!(
            e,
            Event::Link {
                drone: SysId(1),
                up: true
            }
        )
    })
    .await;
    event_where(
        &mut h,
        "telemetry over tcpin",
        WAIT,
        |e| matches!(e, Event::Telemetry { t, .. } if t.battery_pct.is_some()),
    )
    .await;
    let st = *h.stats.borrow();
    assert_eq!(
        (st.decode.bad_crc, st.decode.garbage_bytes),
        (0, 0),
        "a TCP stream is parsed whole: {st:?}"
    );
}

// ---- Through a real node (in-process, as field-client's tests do), the binary as users run it.

mod e2e {
    use super::*;
    use media_server::config::NodeConfig;
    use media_server::node::RunningNode;
    use signaling::auth::{Role, TokenRequest};
    use signaling::client::{self, ClientConfig, ClientError, ClientEvent, Events};
    use signaling::proto::{ClientMsg, DroneCommand, ErrorCode};
    use std::time::{SystemTime, UNIX_EPOCH};

    const BIN: &str = env!("CARGO_BIN_EXE_drone-bridge");

    /// Video tests take turns: on 2 cores, encoding, transcoding and decoding side by side would
    /// measure the machine rather than the bridge.
    static MEDIA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

    impl TestNode {
        fn token(&self, sub: &str, role: Role) -> String {
            let id = &self.node.identity;
            let req = TokenRequest::new(
                sub.parse().unwrap(),
                role,
                id.node_id.to_string(),
                id.fingerprint.clone(),
            );
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            id.issuer().issue(&req, now)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, format!("{text}\n")).unwrap();
            p
        }

        fn quic(&self) -> String {
            self.node.quic_addr.to_string()
        }

        fn base(&self) -> String {
            format!("http://{}", self.node.http_addr)
        }

        async fn get(&self, path: &str, token: &str) -> Value {
            let r = reqwest::Client::new()
                .get(format!("{}{path}", self.base()))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "GET {path}");
            r.json().await.unwrap()
        }

        async fn drone_unit(&self, token: &str, name: &str) -> Option<Value> {
            let v = self.get("/api/units", token).await;
            v["units"]
                .as_array()?
                .iter()
                .find(|u| u["subject"] == name)
                .cloned()
        }

        async fn session(&self, sub: &str, role: Role) -> (client::Client, Events) {
            client::connect(ClientConfig::new(self.quic(), self.token(sub, role)))
                .await
                .expect("session")
        }
    }

    /// The running binary and its JSON lines.
    struct Bridge {
        child: Child,
        lines: Lines<BufReader<ChildStdout>>,
    }

    impl Bridge {
        fn spawn(args: &[&str]) -> Bridge {
            let mut child = Command::new(BIN)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("drone-bridge starts");
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            Bridge { child, lines }
        }

        async fn line_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
            tokio::time::timeout(WAIT, async {
                loop {
                    let line = self
                        .lines
                        .next_line()
                        .await
                        .unwrap()
                        .unwrap_or_else(|| panic!("drone-bridge ended before {what}"));
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    if pred(&v) {
                        return v;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what} from drone-bridge"))
        }

        async fn terminate(mut self) {
            let pid = self.child.id().expect("running").to_string();
            assert!(std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success());
            let st = tokio::time::timeout(WAIT, self.child.wait())
                .await
                .expect("exits in time")
                .unwrap();
            assert!(st.success(), "{st:?}");
        }
    }

    async fn event_of(
        events: &mut Events,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        tokio::time::timeout(within, async {
            loop {
                match events.next().await.expect("events end") {
                    ClientEvent::Event { event, .. } => {
                        // Asserted on as the wire JSON a console reads.
                        let event = serde_json::to_value(&event).unwrap();
                        if pred(&event) {
                            return event;
                        }
                    }
                    ClientEvent::Closed { reason, .. } => panic!("session closed: {reason}"),
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out after {within:?} waiting for {what}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn telemetry_reaches_operators_and_units_a_commanders_rtl_is_signed_and_acked_and_an_officers_is_refused(
    ) {
        let node = start_node().await;
        let pilot = node.file("pilot.token", &node.token("pilot-3", Role::Pilot));
        let key = node.file("drone.key", KEY_HEX);
        let op_token = node.token("op-1", Role::Operator);
        let (_op, mut op_events) = node.session("op-1", Role::Operator).await;
        let quic = node.quic();
        let mut bridge = Bridge::spawn(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token-file",
            pilot.to_str().unwrap(),
            "--signing-key",
            key.to_str().unwrap(),
        ]);
        let started = bridge
            .line_where("started", |v| v["kind"] == "started")
            .await;
        assert_eq!(
            (started["subject"].as_str(), started["signing"].as_bool()),
            (Some("pilot-3"), Some(true)),
            "{started}"
        );
        let mavlink = started["mavlink"].as_str().unwrap().to_owned();
        let mut vehicle =
            Peer::start("vehicle", &format!("udpout:{mavlink}"), &["--key", KEY_HEX]).await;
        bridge
            .line_where("link up", |v| {
                v["kind"] == "drone_link" && v["drone"] == "pilot-3-drone1" && v["up"] == true
            })
            .await;
        let t0 = Instant::now();

        // Position and battery at the operator and in /api/units within 1 s.
        let ev = event_of(&mut op_events, "telemetry at the operator", WAIT, |e| {
            e["kind"] == "telemetry"
                && e["drone"] == "pilot-3-drone1"
                && e["t"]["lat"].is_f64()
                && e["t"]["battery_pct"].is_f64()
        })
        .await;
        let at_operator = t0.elapsed();
        assert_eq!(ev["t"]["battery_pct"], 76.0, "{ev}");
        assert_eq!(ev["t"]["mode"], "GUIDED", "{ev}");
        let unit = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(u) = node.drone_unit(&op_token, "pilot-3-drone1").await {
                    if u["position"]["lat"].is_f64() && u["telemetry"]["battery_pct"].is_f64() {
                        return u;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the drone in /api/units");
        let in_units = t0.elapsed();
        eprintln!(
            "telemetry at the operator after {at_operator:?}, in /api/units after {in_units:?}"
        );
        assert!(
            at_operator <= Duration::from_secs(1) && in_units <= Duration::from_secs(1),
            "{at_operator:?} {in_units:?}"
        );
        assert_eq!(
            (
                unit["kind"].as_str(),
                unit["bridge"].as_str(),
                unit["link"].as_str()
            ),
            (Some("drone"), Some("pilot-3"), Some("up")),
            "{unit}"
        );
        assert!(
            (unit["position"]["lat"].as_f64().unwrap() - 30.5).abs() < 0.001,
            "{unit}"
        );

        // At the mesh rate: 50 Hz in, at most 5 per second out.
        let t1 = Instant::now();
        let mut n = 0;
        while t1.elapsed() < Duration::from_secs(2) {
            let left = Duration::from_secs(2).saturating_sub(t1.elapsed());
            if let Ok(Some(ClientEvent::Event {
                event: signaling::proto::Event::Telemetry { .. },
                ..
            })) = tokio::time::timeout(left, op_events.next()).await
            {
                n += 1;
            }
        }
        assert!(
            (5..=11).contains(&n),
            "{n} telemetry events in 2 s at the operator"
        );

        // A commander's RTL: signed, verified by the vehicle, acked back to the commander.
        let (cmdr, mut cmdr_events) = node.session("cmd-1", Role::Commander).await;
        let rtl = ClientMsg::DroneCommand {
            id: 0,
            drone: "pilot-3-drone1".into(),
            command: DroneCommand::Rtl,
            lat: None,
            lon: None,
            alt: None,
        };
        let sent = cmdr.request(rtl.clone()).await.expect("rtl sent");
        assert_eq!(sent["status"], "sent", "{sent}");
        let cmd = sent["cmd"].as_str().unwrap().to_owned();
        let c = vehicle
            .line_where("the RTL at the vehicle", |v| v["kind"] == "command")
            .await;
        assert_eq!(
            (c["msg"].as_str(), c["command"].as_u64()),
            (Some("COMMAND_LONG"), Some(20)),
            "{c}"
        );
        assert_eq!(
            (c["signed"].as_bool(), c["verified"].as_bool()),
            (Some(true), Some(true)),
            "{c}"
        );
        let ack = event_of(&mut cmdr_events, "the ack at the commander", WAIT, |e| {
            e["kind"] == "drone_command_ack" && e["cmd"] == cmd.as_str()
        })
        .await;
        assert_eq!(ack["result"], "accepted", "{ack}");

        // An officer's attempt: refused by the node, and logged.
        let (off, _off_events) = node.session("off-1", Role::Officer).await;
        match off.request(rtl).await {
            Err(ClientError::Remote {
                code: ErrorCode::Forbidden,
                ..
            }) => {}
            other => panic!("officer's command: {other:?}"),
        }
        let log = node.get("/api/incidents/duty/log", &op_token).await;
        let entries = log["entries"].as_array().unwrap();
        let what = |w: &str| {
            entries
                .iter()
                .filter(|e| e["what"] == w)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert!(
            what("drone_command_refused")
                .iter()
                .any(|e| e["detail"]["by"] == "off-1"),
            "{log}"
        );
        assert!(
            what("drone_command")
                .iter()
                .any(|e| e["detail"]["cmd"] == cmd.as_str()),
            "{log}"
        );
        assert!(
            what("drone_command_ack")
                .iter()
                .any(|e| e["detail"]["result"] == "accepted"),
            "{log}"
        );

        // The vehicle falls silent: link lost at the operator within 3 s.
        vehicle.say("stop").await;
        vehicle
            .line_where("stop acknowledged", |v| {
                v["kind"] == "ok" && v["cmd"] == "stop"
            })
            .await;
        let stopped = Instant::now();
        event_of(
            &mut op_events,
            "link lost at the operator",
            Duration::from_secs(5),
            |e| e["kind"] == "drone_link" && e["up"] == false,
        )
        .await;
        assert!(
            stopped.elapsed() <= Duration::from_millis(3300),
            "link lost after {:?}",
            stopped.elapsed()
        );
        let unit = node.drone_unit(&op_token, "pilot-3-drone1").await.unwrap();
        assert_eq!(unit["link"], "lost", "{unit}");
        bridge.terminate().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_endpoints_refused_tokens_and_unreachable_nodes_are_clear_errors() {
        let node = start_node().await;
        let quic = node.quic();
        let run = |args: Vec<String>| async move {
            let out = tokio::time::timeout(WAIT, Command::new(BIN).args(&args).output())
                .await
                .expect("exits")
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let pilot = node.token("pilot-3", Role::Pilot);
        let (code, err) = run(s(&[
            "--mavlink",
            "udp:1.2.3.4:5",
            "--node",
            &quic,
            "--token",
            &pilot,
        ]))
        .await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("bad endpoint \"udp:1.2.3.4:5\""), "{err}");
        // An officer's token: refused for bridging.
        let (code, err) = run(s(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &node.token("off-1", Role::Officer),
        ]))
        .await;
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("pilot's or an admin's"), "{err}");
        // A token of another node: the node refuses the session (certificate pin or signature).
        let other = start_node().await;
        let (code, err) = run(s(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &other.token("pilot-3", Role::Pilot),
        ]))
        .await;
        assert!(matches!(code, Some(1) | Some(2)), "{code:?} {err}");
        assert!(err.contains("node"), "{err}");
        // No node there.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let (code, err) = run(s(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &closed,
            "--token",
            &pilot,
        ]))
        .await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&closed), "{err}");
        // A malformed signing key.
        let bad_key = node.file("bad.key", "abc");
        let (code, err) = run(s(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &pilot,
            "--signing-key",
            bad_key.to_str().unwrap(),
        ]))
        .await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("64 hexadecimal"), "{err}");
        // Every option is in --help.
        let out = Command::new(BIN).arg("--help").output().await.unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        // A profile that is not a drone camera's.
        let (code, err) = run(s(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &pilot,
            "--profile",
            "tablet-software",
        ]))
        .await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("--profile tablet-software"), "{err}");
        for opt in [
            "--mavlink",
            "--node",
            "--token ",
            "--token-file",
            "--gcs",
            "--video",
            "--signing-key",
            "--tlog",
            "--heartbeat-timeout",
            "--telemetry-hz",
            "--profile",
            "--link",
        ] {
            assert!(help.contains(opt), "{opt} in --help");
        }
    }

    /// The test camera (tests/rtsp_camera.py under Debian's python3 with GI).
    struct Camera {
        child: Child,
        uri: String,
    }

    impl Camera {
        async fn start() -> Camera {
            Self::start_with(0, "h264").await
        }

        /// On `port` (0: any free one).
        async fn start_on(port: u16) -> Camera {
            Self::start_with(port, "h264").await
        }

        /// On `port`, serving `codec` (h264, h265).
        async fn start_with(port: u16, codec: &str) -> Camera {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rtsp_camera.py");
            let mut child = Command::new("/usr/bin/python3")
                .arg(script)
                .arg(port.to_string())
                .arg(codec)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("rtsp_camera.py starts (python3-gi, gir1.2-gst-rtsp-server-1.0)");
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("camera ready in time")
                .unwrap()
                .expect("camera ready line");
            let v: Value = serde_json::from_str(&line).unwrap();
            Camera {
                child,
                uri: v["uri"].as_str().unwrap().to_owned(),
            }
        }
    }

    impl Drop for Camera {
        fn drop(&mut self) {
            let _ = self.child.start_kill();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_camera_a_vehicle_announces_reaches_a_whep_viewer_without_re_encoding() {
        let _turn = MEDIA.lock().await;
        use yiwang_tests::gst_peer::{Pattern, ViewOptions, WhepViewer};
        let node = start_node().await;
        let camera = Camera::start().await;
        let pilot = node.token("pilot-3", Role::Pilot);
        let viewer_token = node.token("wall-1", Role::Viewer);
        let quic = node.quic();
        let mut bridge = Bridge::spawn(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &pilot,
        ]);
        let started = bridge
            .line_where("started", |v| v["kind"] == "started")
            .await;
        let mavlink = started["mavlink"].as_str().unwrap().to_owned();
        // The vehicle announces its camera in VIDEO_STREAM_INFORMATION.
        let _vehicle = Peer::start(
            "vehicle",
            &format!("udpout:{mavlink}"),
            &["--video", &camera.uri],
        )
        .await;
        let video = bridge.line_where("video", |v| v["kind"] == "video").await;
        assert_eq!(
            (video["drone"].as_str(), video["source"].as_str()),
            (Some("pilot-3-drone1"), Some(camera.uri.as_str())),
            "{video}"
        );
        let publishing = bridge
            .line_where("publishing", |v| v["kind"] == "publishing")
            .await;
        assert_eq!(publishing["stream"], "pilot-3-drone1", "{publishing}");

        let viewer = WhepViewer::start(
            &node.base(),
            "pilot-3-drone1",
            &viewer_token,
            ViewOptions::default(),
        )
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
        eprintln!("decoded {decoded} of the camera's 300 frames between t=2 s and t=12 s; {s:?}");
        assert!(decoded >= 285, "decoded {decoded} frames of 300: {s:?}");
        assert_eq!((s.width, s.height), (640, 480));
        assert_eq!(viewer.video_codec().as_deref(), Some("H264"));
        // The camera's picture, every slice of it: its white ball on black.
        viewer
            .expect_picture(Pattern::Ball, 12)
            .await
            .expect("the camera's ball on black");
        let catalog = node.get("/api/streams", &viewer_token).await;
        let stream = catalog["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "pilot-3-drone1")
            .cloned()
            .unwrap_or_else(|| panic!("{catalog}"));
        assert_eq!(
            (stream["owner"].as_str(), stream["video_codec"].as_str()),
            (Some("pilot-3"), Some("H264")),
            "{stream}"
        );
        viewer.stop().await.expect("viewer DELETE");
        bridge.terminate().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_video_option_camera_that_restarts_is_published_again() {
        let _turn = MEDIA.lock().await;
        use yiwang_tests::gst_peer::{Pattern, ViewOptions, WhepViewer};
        let node = start_node().await;
        let camera = Camera::start().await;
        let port: u16 = camera
            .uri
            .rsplit_once(':')
            .unwrap()
            .1
            .trim_end_matches("/cam")
            .parse()
            .unwrap();
        let pilot = node.token("pilot-3", Role::Pilot);
        let viewer_token = node.token("wall-1", Role::Viewer);
        let quic = node.quic();
        let uri = camera.uri.clone();
        let mut bridge = Bridge::spawn(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &pilot,
            "--video",
            &uri,
        ]);
        let started = bridge
            .line_where("started", |v| v["kind"] == "started")
            .await;
        let mavlink = started["mavlink"].as_str().unwrap().to_owned();
        // --video is published for the first vehicle seen.
        let _vehicle =
            Peer::start("vehicle", &format!("udpout:{mavlink}"), &["--sysid", "7"]).await;
        let first = bridge
            .line_where("publishing", |v| v["kind"] == "publishing")
            .await;
        assert_eq!(
            (first["stream"].as_str(), first["source"].as_str()),
            (Some("pilot-3-drone7"), Some(uri.as_str())),
            "{first}"
        );
        let viewer = WhepViewer::start(
            &node.base(),
            "pilot-3-drone7",
            &viewer_token,
            ViewOptions::default(),
        )
        .await
        .expect("view over WHEP");
        viewer
            .wait_frames(30, WAIT)
            .await
            .expect("frames before the restart");

        // The camera goes away and comes back on the same address.
        drop(camera);
        let cut = Instant::now();
        let _camera = Camera::start_on(port).await;
        let again = bridge
            .line_where("publishing again", |v| v["kind"] == "publishing")
            .await;
        assert_ne!(again["media"], first["media"], "{again}");
        let seen = viewer.stats().frames_decoded;
        let s = viewer
            .wait_frames(seen + 60, WAIT)
            .await
            .expect("the viewer plays again");
        eprintln!(
            "published again {:?} after the camera restarted; {s:?}",
            cut.elapsed()
        );
        viewer
            .expect_picture(Pattern::Ball, 12)
            .await
            .expect("the restarted camera's ball on black");
        viewer.stop().await.expect("viewer DELETE");
        bridge.terminate().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtp_h264_on_a_udp_port_is_published_too() {
        let _turn = MEDIA.lock().await;
        use yiwang_tests::gst_peer::{Pattern, ViewOptions, WhepViewer};
        let node = start_node().await;
        let pilot = node.token("pilot-3", Role::Pilot);
        let viewer_token = node.token("wall-1", Role::Viewer);
        let quic = node.quic();
        // A free port for the bridge's udpsrc (bound and released: the sender needs to know it).
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let video = format!("udp://127.0.0.1:{port}");
        let mut bridge = Bridge::spawn(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &pilot,
            "--video",
            &video,
        ]);
        let started = bridge
            .line_where("started", |v| v["kind"] == "started")
            .await;
        let mavlink = started["mavlink"].as_str().unwrap().to_owned();
        let _vehicle = Peer::start("vehicle", &format!("udpout:{mavlink}"), &[]).await;
        bridge
            .line_where("video", |v| {
                v["kind"] == "video" && v["source"] == video.as_str()
            })
            .await;
        let _camera = Command::new("gst-launch-1.0")
            .args([
                "-q",
                "videotestsrc",
                "is-live=true",
                "pattern=smpte",
                "!",
                "video/x-raw,width=640,height=480,framerate=30/1",
                "!",
                "x264enc",
                "tune=zerolatency",
                "speed-preset=ultrafast",
                "key-int-max=30",
                // Sliced threads: four slices per picture, SPS/PPS repeated before each.
                "threads=4",
                "!",
                "rtph264pay",
                "config-interval=-1",
                "pt=96",
                "!",
                "udpsink",
                "host=127.0.0.1",
                &format!("port={port}"),
            ])
            .kill_on_drop(true)
            .spawn()
            .expect("gst-launch-1.0 runs");
        let publishing = bridge
            .line_where("publishing", |v| v["kind"] == "publishing")
            .await;
        assert_eq!(publishing["stream"], "pilot-3-drone1", "{publishing}");
        let viewer = WhepViewer::start(
            &node.base(),
            "pilot-3-drone1",
            &viewer_token,
            ViewOptions::default(),
        )
        .await
        .expect("view over WHEP");
        let s = viewer
            .wait_frames(60, WAIT)
            .await
            .expect("frames from RTP/UDP");
        assert_eq!((s.width, s.height), (640, 480));
        viewer
            .expect_picture(Pattern::Smpte, 12)
            .await
            .expect("the sender's SMPTE bars, every slice of them");
        viewer.stop().await.expect("viewer DELETE");
        bridge.terminate().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_h265_camera_is_transcoded_only_when_the_profile_says() {
        let _turn = MEDIA.lock().await;
        use yiwang_tests::gst_peer::{Pattern, ViewOptions, WhepViewer};
        let node = start_node().await;
        let camera = Camera::start_with(0, "h265").await;
        let pilot = node.token("pilot-3", Role::Pilot);
        let viewer_token = node.token("wall-1", Role::Viewer);
        let quic = node.quic();
        let uri = camera.uri.clone();

        // The default profile forwards H.264 only: an H.265 camera is never published.
        let mut bridge = Bridge::spawn(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &pilot,
            "--video",
            &uri,
        ]);
        let started = bridge
            .line_where("started", |v| v["kind"] == "started")
            .await;
        let vehicle = Peer::start(
            "vehicle",
            &format!("udpout:{}", started["mavlink"].as_str().unwrap()),
            &[],
        )
        .await;
        let w = bridge
            .line_where("a warning instead of publishing", |v| {
                v["kind"] == "warning" || v["kind"] == "publishing"
            })
            .await;
        assert_eq!(w["kind"], "warning", "{w}");
        bridge.terminate().await;
        drop(vehicle);

        // drone-rtsp-h265 transcodes it to H.264.
        let mut bridge = Bridge::spawn(&[
            "--mavlink",
            "udpin:127.0.0.1:0",
            "--node",
            &quic,
            "--token",
            &pilot,
            "--video",
            &uri,
            "--profile",
            "drone-rtsp-h265",
        ]);
        let started = bridge
            .line_where("started", |v| v["kind"] == "started")
            .await;
        let _vehicle = Peer::start(
            "vehicle",
            &format!("udpout:{}", started["mavlink"].as_str().unwrap()),
            &[],
        )
        .await;
        let publishing = bridge
            .line_where("publishing", |v| v["kind"] == "publishing")
            .await;
        assert_eq!(
            (
                publishing["codec"].as_str(),
                publishing["transcode"]
                    .as_str()
                    .map(|t| t.starts_with("avdec_h265 -> "))
            ),
            (Some("h265"), Some(true)),
            "{publishing}"
        );
        let viewer = WhepViewer::start(
            &node.base(),
            "pilot-3-drone1",
            &viewer_token,
            ViewOptions::default(),
        )
        .await
        .expect("view over WHEP");
        let s = viewer
            .wait_frames(60, WAIT)
            .await
            .expect("transcoded frames");
        assert_eq!((s.width, s.height), (640, 480));
        assert_eq!(viewer.video_codec().as_deref(), Some("H264"));
        viewer
            .expect_picture(Pattern::Ball, 12)
            .await
            .expect("the H.265 camera's ball on black, transcoded");
        viewer.stop().await.expect("viewer DELETE");
        bridge.terminate().await;
    }
}
