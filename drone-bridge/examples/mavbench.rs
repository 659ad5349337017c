//! drone-bridge benchmarks (bench/RESULTS.md, "drone-bridge").
//!
//! ```sh
//! cargo run --release -p drone-bridge --example mavbench -- parse   [--frames N]
//! cargo run --release -p drone-bridge --example mavbench -- latency [--secs S]
//! ```
//!
//! `parse`: MAVLink frames per second through the sans-IO core on one thread — decode, route to
//! the ground-station link, tlog record, telemetry mapping — for a realistic telemetry mix of
//! four vehicles, each frame handed over as its own UDP datagram would be; also the frame decoder
//! alone and decode + message parse. CPU seconds from /proc/self/stat.
//!
//! `latency`: a node in-process, the bridge (`cli::run`) in-process, a vehicle sending
//! GLOBAL_POSITION_INT at 50 Hz whose latitude encodes a sequence number, and an operator session:
//! vehicle → operator latency of each telemetry event (send time of the sample it carries to its
//! arrival), p50/p90/p99/max.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drone_bridge::core::{Config, Core, LinkId, PeerKey};
use drone_bridge::frame::{encode_v2, FrameDecoder, Sender};
use mavlink::dialects::ardupilotmega::*;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn heartbeat() -> MavMessage {
    MavMessage::HEARTBEAT(HEARTBEAT_DATA {
        custom_mode: 4,
        mavtype: MavType::MAV_TYPE_QUADROTOR,
        autopilot: MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA,
        base_mode: MavModeFlag::MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
            | MavModeFlag::MAV_MODE_FLAG_SAFETY_ARMED,
        system_status: MavState::MAV_STATE_ACTIVE,
        mavlink_version: 3,
    })
}

fn position(seq: u32) -> MavMessage {
    MavMessage::GLOBAL_POSITION_INT(GLOBAL_POSITION_INT_DATA {
        time_boot_ms: seq * 20,
        lat: 300_000_000 + seq as i32,
        lon: 1_143_000_000,
        alt: 52_000,
        relative_alt: 30_000,
        vx: 100,
        vy: 0,
        vz: 0,
        hdg: 9000,
    })
}

/// One second of a vehicle's telemetry: 50 Hz position and attitude, 10 Hz VFR_HUD, 2 Hz
/// SYS_STATUS, BATTERY_STATUS, GPS_RAW_INT, 1 Hz HEARTBEAT.
fn second_of(sysid: u8, seq: &mut u8, t: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |m: MavMessage, out: &mut Vec<Vec<u8>>| {
        out.push(encode_v2(
            Sender {
                sysid,
                compid: 1,
                seq: *seq,
            },
            &m,
            false,
        ));
        *seq = seq.wrapping_add(1);
    };
    push(heartbeat(), &mut out);
    for i in 0..50u32 {
        push(position(t * 50 + i), &mut out);
        push(
            MavMessage::ATTITUDE(ATTITUDE_DATA {
                time_boot_ms: i,
                roll: 0.1,
                pitch: -0.05,
                yaw: 1.5 + i as f32 * 0.001,
                ..ATTITUDE_DATA::DEFAULT
            }),
            &mut out,
        );
        if i % 5 == 0 {
            push(
                MavMessage::VFR_HUD(VFR_HUD_DATA {
                    airspeed: 10.0,
                    groundspeed: 9.5,
                    alt: 52.0,
                    climb: 0.1,
                    heading: 90,
                    throttle: 40,
                }),
                &mut out,
            );
        }
        if i % 25 == 0 {
            push(
                MavMessage::SYS_STATUS(SYS_STATUS_DATA {
                    voltage_battery: 12300,
                    current_battery: 1200,
                    battery_remaining: 76,
                    ..SYS_STATUS_DATA::DEFAULT
                }),
                &mut out,
            );
            push(
                MavMessage::BATTERY_STATUS(BATTERY_STATUS_DATA {
                    voltages: [
                        4100,
                        4100,
                        4100,
                        u16::MAX,
                        u16::MAX,
                        u16::MAX,
                        u16::MAX,
                        u16::MAX,
                        u16::MAX,
                        u16::MAX,
                    ],
                    battery_remaining: 76,
                    ..BATTERY_STATUS_DATA::DEFAULT
                }),
                &mut out,
            );
            push(
                MavMessage::GPS_RAW_INT(GPS_RAW_INT_DATA {
                    fix_type: GpsFixType::GPS_FIX_TYPE_3D_FIX,
                    satellites_visible: 14,
                    ..GPS_RAW_INT_DATA::DEFAULT
                }),
                &mut out,
            );
        }
    }
    out
}

fn parse_bench(total: usize) {
    let mut frames = Vec::new();
    let mut seqs = [0u8; 4];
    let mut t = 0;
    while frames.len() < 20_000 {
        for (v, seq) in seqs.iter_mut().enumerate() {
            frames.extend(second_of(v as u8 + 1, seq, t));
        }
        t += 1;
    }
    let bytes: usize = frames.iter().map(Vec::len).sum();
    println!(
        "mix: {} frames, {:.1} bytes/frame, 4 vehicles",
        frames.len(),
        bytes as f64 / frames.len() as f64
    );

    // The decoder alone, one stream.
    let stream: Vec<u8> = frames.concat();
    let (c0, w0) = (cpu_seconds(), Instant::now());
    let mut n = 0usize;
    while n < total {
        let mut d = FrameDecoder::new();
        for chunk in stream.chunks(1500) {
            d.push(chunk);
            while let Some(f) = d.next_frame() {
                std::hint::black_box(&f);
                n += 1;
            }
        }
    }
    let (w, c) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    println!(
        "decoder only:          {:>10.0} frames/s wall, {:>10.0} frames per CPU-second",
        n as f64 / w,
        n as f64 / c.max(1e-9)
    );

    // Decode + parse the message.
    let (c0, w0) = (cpu_seconds(), Instant::now());
    let mut n = 0usize;
    while n < total {
        let mut d = FrameDecoder::new();
        for chunk in stream.chunks(1500) {
            d.push(chunk);
            while let Some(f) = d.next_frame() {
                std::hint::black_box(f.decode().ok());
                n += 1;
            }
        }
    }
    let (w, c) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    println!(
        "decoder + parse:       {:>10.0} frames/s wall, {:>10.0} frames per CPU-second",
        n as f64 / w,
        n as f64 / c.max(1e-9)
    );

    // The whole core: one datagram per frame, routed to the GCS, recorded, mapped.
    let start = Instant::now();
    let mut core = Core::new(Config::default(), start, 1_800_000_000_000_000);
    let (c0, w0) = (cpu_seconds(), Instant::now());
    let mut n = 0usize;
    let mut now = start;
    let mut outputs = 0usize;
    while n < total {
        for f in &frames {
            core.handle_bytes(now, LinkId::Vehicle, PeerKey(1), f);
            core.handle_end(LinkId::Vehicle, PeerKey(1));
            while let Some(o) = core.poll_output() {
                std::hint::black_box(&o);
                outputs += 1;
            }
            n += 1;
            // 4 vehicles x ~130 frames/s: about 2 ms of real time per frame.
            now += Duration::from_micros(1900);
        }
    }
    let (w, c) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    let st = core.stats();
    println!(
        "core (route+tlog+map): {:>10.0} frames/s wall, {:>10.0} frames per CPU-second ({} outputs, {} telemetry events, {} forwarded)",
        n as f64 / w,
        n as f64 / c.max(1e-9),
        outputs,
        st.telemetry,
        st.to_gcs
    );
}

async fn latency_bench(secs: u64) {
    use media_server::config::NodeConfig;
    use signaling::auth::{Role, TokenRequest};
    use signaling::client::{connect, ClientConfig, ClientEvent};

    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::default();
    config.node.data_dir = dir.path().join("data");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    let node = media_server::node::start(config).await.expect("node");
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |sub: &str, role| {
        let id = &node.identity;
        id.issuer().issue(
            &TokenRequest::new(
                sub.parse().unwrap(),
                role,
                id.node_id.to_string(),
                id.fingerprint.clone(),
            ),
            now_s,
        )
    };
    let (_op, mut events) = connect(ClientConfig::new(
        node.quic_addr.to_string(),
        token("op-1", Role::Operator),
    ))
    .await
    .unwrap();

    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cli = <drone_bridge::cli::Cli as clap::Parser>::parse_from([
        "drone-bridge",
        "--mavlink",
        &format!("udpin:127.0.0.1:{port}"),
        "--node",
        &node.quic_addr.to_string(),
        "--token",
        &token("pilot-3", Role::Pilot),
    ]);
    tokio::spawn(drone_bridge::cli::run(cli));

    // The vehicle: 50 Hz, the send time of each sequence number kept.
    let sent: std::sync::Arc<std::sync::Mutex<Vec<Instant>>> = Default::default();
    let s2 = sent.clone();
    let vehicle = tokio::spawn(async move {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut seq = 0u8;
        for i in 0u32.. {
            tick.tick().await;
            if i % 50 == 0 {
                let hb = encode_v2(
                    Sender {
                        sysid: 1,
                        compid: 1,
                        seq,
                    },
                    &heartbeat(),
                    false,
                );
                seq = seq.wrapping_add(1);
                let _ = sock.send_to(&hb, ("127.0.0.1", port)).await;
            }
            let f = encode_v2(
                Sender {
                    sysid: 1,
                    compid: 1,
                    seq,
                },
                &position(i),
                false,
            );
            seq = seq.wrapping_add(1);
            s2.lock().unwrap().push(Instant::now());
            let _ = sock.send_to(&f, ("127.0.0.1", port)).await;
        }
    });

    let mut lat_ms = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let warm = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(1), events.next()).await else {
            continue;
        };
        let ClientEvent::Event {
            event: signaling::proto::Event::Telemetry { t, .. },
            ..
        } = ev
        else {
            continue;
        };
        let at = Instant::now();
        let Some(lat) = t.lat else {
            continue;
        };
        let i = ((lat - 30.0) * 1e7).round() as usize;
        let sent_at = sent.lock().unwrap().get(i).copied();
        if let (Some(s), true) = (sent_at, at > warm) {
            lat_ms.push(at.duration_since(s).as_secs_f64() * 1000.0);
        }
    }
    vehicle.abort();
    lat_ms.sort_by(f64::total_cmp);
    let p = |q: f64| lat_ms[((lat_ms.len() as f64 - 1.0) * q).round() as usize];
    if lat_ms.is_empty() {
        println!("no telemetry reached the operator");
        return;
    }
    println!(
        "vehicle -> operator telemetry latency over {} events: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat_ms.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        lat_ms[lat_ms.len() - 1]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match args.get(1).map(String::as_str) {
        Some("parse") => parse_bench(arg("--frames", 2_000_000) as usize),
        Some("latency") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(latency_bench(arg("--secs", 30)));
        }
        _ => eprintln!("usage: mavbench parse [--frames N] | latency [--secs S]"),
    }
}
