//! The `trunk` mode: added latency per trunk hop and trunk packets forwarded per CPU-second.
//!
//! A chain of `hops + 1` media-server processes on loopback, each with a certificate of a
//! province CA made here (`media-server ca init` / `ca issue`), node `n0` at the bottom, each
//! node's trunk parent the next one up. The synthetic publisher writes its send time into every
//! frame at `n0`; one viewer watches it locally at `n0` (`/whep/bench-pub`), one at the top
//! (`/whep/n0/bench-pub`, pulled over every hop). Both record arrival − send per frame; the
//! difference of the medians divided by the hops is the latency each hop adds (QUIC datagram
//! out, loopback, QUIC in, the relay's media plane). The relays between have no viewer of their
//! own, so their CPU time over the window divided by the trunk datagrams they sent
//! (`yiwang_trunk_datagrams_out_total`) is the cost of forwarding one packet on a trunk.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use str0m::media::Direction;

use crate::modes::STREAM;
use crate::peer::{Pending, VideoSpec};
use crate::server::Server;
use crate::{counter, procfs, wait_until, Clients};

/// Arguments of `fanout trunk`.
#[derive(clap::Args, Debug)]
pub struct TrunkArgs {
    /// Trunk hops between the publisher's node and the far viewer's node.
    #[arg(long, default_value_t = 3)]
    pub hops: usize,
    /// Publisher video bitrate, bits/s (frame payload).
    #[arg(long, default_value_t = 4_000_000)]
    pub bitrate: u64,
    /// Publisher frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Bound on the warm-up (trunks up, both viewers receiving), seconds.
    #[arg(long, default_value_t = 60)]
    pub warmup_timeout: u64,
    /// Extra seconds after both viewers received a frame, before measuring.
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
}

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct TrunkRow {
    hops: usize,
    samples_local: usize,
    samples_far: usize,
    local_p50_ms: f64,
    local_p99_ms: f64,
    far_p50_ms: f64,
    far_p99_ms: f64,
    added_per_hop_p50_ms: f64,
    added_per_hop_p99_ms: f64,
    relay_datagrams_out: u64,
    relay_cpu_s: f64,
    relay_packets_per_cpu_s: f64,
    relay_cpu_us_per_packet: f64,
    load_avg: String,
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn ca(binary: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(binary)
        .arg("ca")
        .args(args)
        .output()
        .context("run media-server ca")?;
    if !out.status.success() {
        bail!(
            "media-server ca {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1e6
}

/// Runs the chain once and prints its figures.
pub fn trunk(a: &TrunkArgs, binary: &Path, ticks: u64) -> Result<TrunkRow> {
    if a.hops < 1 {
        bail!("--hops must be at least 1");
    }
    let dir = tempfile::Builder::new()
        .prefix("yiwang-trunk-bench-")
        .tempdir()?;
    let d = dir.path().to_str().context("temp path")?.to_owned();
    let certs = format!("{d}/certs");
    ca(binary, &["init", "--dir", &d])?;
    let t = Duration::from_secs(20);
    // Started from the top down, so each node's parent is listening.
    let mut servers: Vec<Server> = Vec::new();
    let mut parent: Option<u16> = None;
    for i in (0..=a.hops).rev() {
        let name = format!("n{i}");
        ca(binary, &["issue", &name, "--dir", &d, "--out", &certs])?;
        let port = free_udp_port()?;
        let parent_line = parent
            .map(|p| format!("parent = \"127.0.0.1:{p}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "[node]\nid = \"{name}\"\n[trunk]\nlisten = \"127.0.0.1:{port}\"\n{parent_line}ca = \"{d}/ca.pem\"\n\
             cert = \"{certs}/{name}.pem\"\nkey = \"{certs}/{name}.key\"\n"
        );
        servers.push(
            Server::start_with(binary, t, Some(&config))
                .with_context(|| format!("start {name}"))?,
        );
        parent = Some(port);
    }
    servers.reverse(); // servers[i] is node n{i}
    let spec = VideoSpec {
        bitrate: a.bitrate,
        fps: a.fps,
        gop: u64::from(a.fps) * 2,
        keyframe_ratio: 5.0,
    };
    let warmup = Duration::from_secs(a.warmup_timeout);
    let mut clients = Clients {
        stop: Arc::new(AtomicBool::new(false)),
        publisher: None,
        viewers: Vec::new(),
    };
    let pub_token = servers[0].token("bench-pub", "officer", t)?;
    let publisher = Pending::new(Direction::SendOnly)?
        .exchange(servers[0].http, &format!("/whip/{STREAM}"), &pub_token)
        .context("publisher")?
        .spawn(clients.stop.clone(), Some(spec))?;
    let pstats = publisher.stats.clone();
    clients.publisher = Some(publisher);
    wait_until(
        "the publisher to send",
        warmup,
        &clients,
        &mut servers[0],
        || pstats.frames.load(Ordering::Relaxed) > 0,
    )?;
    let local_token = servers[0].token("bench-viewer", "viewer", t)?;
    clients.viewers.push(
        Pending::new(Direction::RecvOnly)?
            .exchange(servers[0].http, &format!("/whep/{STREAM}"), &local_token)
            .context("local viewer")?
            .spawn(clients.stop.clone(), None)?,
    );
    let top = a.hops;
    let far_token = servers[top].token("bench-viewer", "viewer", t)?;
    // The top node learns the stream from the catalog within a few announce rounds.
    let deadline = Instant::now() + warmup;
    let far = loop {
        match Pending::new(Direction::RecvOnly)?.exchange(
            servers[top].http,
            &format!("/whep/n0/{STREAM}"),
            &far_token,
        ) {
            Ok(p) => break p,
            Err(e) if Instant::now() < deadline => {
                eprintln!("trunk: far viewer not yet: {e:#}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.context("far viewer")),
        }
    };
    clients.viewers.push(far.spawn(clients.stop.clone(), None)?);
    let stats: Vec<_> = clients.viewers.iter().map(|v| v.stats.clone()).collect();
    wait_until(
        "both viewers to receive frames",
        warmup,
        &clients,
        &mut servers[top],
        || stats.iter().all(|s| s.frames.load(Ordering::Relaxed) > 0),
    )?;
    std::thread::sleep(Duration::from_secs(a.settle));

    let out0: u64 = servers[1..top]
        .iter()
        .map(|s| {
            s.metrics()
                .and_then(|m| counter(&m, "yiwang_trunk_datagrams_out_total"))
        })
        .sum::<Result<u64>>()?;
    let cpu0: Duration = servers[1..top]
        .iter()
        .map(|s| procfs::cpu_time(&s.pid, ticks))
        .sum::<Result<Duration>>()?;
    for s in &stats {
        s.record_latency.store(true, Ordering::Relaxed);
    }
    let end = Instant::now() + Duration::from_secs(a.seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(e) = clients.first_error() {
            bail!("{e} (during the measurement)");
        }
        for s in servers.iter_mut() {
            if !s.alive() {
                bail!(
                    "a media-server exited during the measurement; log: {}",
                    s.log_tail()
                );
            }
        }
    }
    for s in &stats {
        s.record_latency.store(false, Ordering::Relaxed);
    }
    let out1: u64 = servers[1..top]
        .iter()
        .map(|s| {
            s.metrics()
                .and_then(|m| counter(&m, "yiwang_trunk_datagrams_out_total"))
        })
        .sum::<Result<u64>>()?;
    let cpu1: Duration = servers[1..top]
        .iter()
        .map(|s| procfs::cpu_time(&s.pid, ticks))
        .sum::<Result<Duration>>()?;
    drop(clients);
    let lat = |i: usize| {
        let mut v = stats[i]
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_unstable();
        v
    };
    let (local, far) = (lat(0), lat(1));
    if local.is_empty() || far.is_empty() {
        bail!("no frame arrived at a viewer during the window");
    }
    let hops = top as f64;
    let relay_out = out1 - out0;
    let relay_cpu = (cpu1 - cpu0).as_secs_f64();
    let row = TrunkRow {
        hops: top,
        samples_local: local.len(),
        samples_far: far.len(),
        local_p50_ms: pct(&local, 50.0),
        local_p99_ms: pct(&local, 99.0),
        far_p50_ms: pct(&far, 50.0),
        far_p99_ms: pct(&far, 99.0),
        added_per_hop_p50_ms: (pct(&far, 50.0) - pct(&local, 50.0)) / hops,
        added_per_hop_p99_ms: (pct(&far, 99.0) - pct(&local, 99.0)) / hops,
        relay_datagrams_out: relay_out,
        relay_cpu_s: relay_cpu,
        relay_packets_per_cpu_s: if relay_cpu > 0.0 {
            relay_out as f64 / relay_cpu
        } else {
            0.0
        },
        relay_cpu_us_per_packet: if relay_out > 0 {
            relay_cpu * 1e6 / relay_out as f64
        } else {
            0.0
        },
        load_avg: procfs::load_average(),
    };
    println!("| hops | frames local / far | local p50 / p99 ms | far p50 / p99 ms | added per hop p50 / p99 ms | relay datagrams out | relay CPU s | packets per CPU-s | CPU µs per packet | load |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} / {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {:.2} | {:.0} | {:.1} | {} |",
        row.hops,
        row.samples_local,
        row.samples_far,
        row.local_p50_ms,
        row.local_p99_ms,
        row.far_p50_ms,
        row.far_p99_ms,
        row.added_per_hop_p50_ms,
        row.added_per_hop_p99_ms,
        row.relay_datagrams_out,
        row.relay_cpu_s,
        row.relay_packets_per_cpu_s,
        row.relay_cpu_us_per_packet,
        row.load_avg
    );
    Ok(row)
}
