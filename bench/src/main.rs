//! `fanout`: the fan-out benchmark of yiwang's SFU.
//!
//! One publisher sends synthetic VP8 (default 2.5 Mbit/s, 30 fps, a keyframe every 2 s) over WHIP
//! to the real `media-server` binary on loopback; N viewers pull it over WHEP. For each N in
//! `--viewers` a fresh server is started, every viewer must receive frames (bounded warm-up), and
//! then for `--seconds` the benchmark measures:
//!
//! - the server's forwarded packets (`yiwang_packets_out_total` and friends from `/metrics`),
//! - its CPU time (`utime + stime` from `/proc/PID/stat`) and so packets out per CPU-second,
//! - its resident memory (`VmRSS`, sampled: peak and end),
//! - frames received per viewer per second (the minimum over viewers: proof of delivery),
//! - the load generator's own CPU (this process), which shares the machine with the server.
//!
//! The load generators are str0m clients in this process, one thread each, with no codec work:
//! frames are filler bytes behind a VP8 payload header. Output: a Markdown table on stdout
//! (progress on stderr), optionally JSON with `--json FILE`. A failed run becomes an error row
//! and the exit status is non-zero.

mod http;
mod modes;
mod peer;
mod procfs;
mod server;
mod trunk;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde::Serialize;
use str0m::media::Direction;

use peer::{Pending, Running, VideoSpec};
use server::Server;

/// Fan-out benchmark: 1 WHIP publisher → N WHEP viewers through the real media-server.
///
/// Without a subcommand: the fan-out table. `join`, `latency` and `memory` measure join → first
/// frame, added latency through the SFU, and memory per viewer.
#[derive(Parser, Debug)]
#[command(name = "fanout", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    mode: Option<modes::Mode>,
    /// The media-server binary.
    #[arg(long, global = true, default_value = "target/release/media-server")]
    server: PathBuf,
    /// Viewer counts to measure, one fresh server each.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10,20,40")]
    viewers: Vec<usize>,
    /// Measurement window per viewer count, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Publisher video bitrate, bits/s (frame payload, averaged over a keyframe interval).
    #[arg(long, default_value_t = 2_500_000)]
    bitrate: u64,
    /// Publisher frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds between periodic keyframes.
    #[arg(long, default_value_t = 2.0)]
    keyframe_interval: f64,
    /// Keyframe size relative to a delta frame.
    #[arg(long, default_value_t = 5.0)]
    keyframe_ratio: f64,
    /// Bound on the warm-up (publisher connected, every viewer receiving), seconds.
    #[arg(long, default_value_t = 30)]
    warmup_timeout: u64,
    /// Extra seconds after every viewer received its first frame, before measuring.
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// A media-server config file (TOML) for `join` and `latency` (passed as `--config`).
    #[arg(long, global = true, value_name = "FILE")]
    server_config: Option<PathBuf>,
    /// Also write the rows as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// One measured viewer count.
#[derive(Debug, Default, Serialize)]
struct Row {
    viewers: usize,
    /// Measured wall time, seconds.
    seconds: f64,
    packets_in_per_s: f64,
    packets_out_per_s: f64,
    /// Server egress, Mbit/s of UDP payload.
    mbit_out_per_s: f64,
    frames_forwarded_per_s: f64,
    /// Server CPU time over the window, seconds.
    server_cpu_s: f64,
    /// Server CPU, percent of one core.
    server_cpu_pct: f64,
    /// Packets out per second of server CPU time.
    packets_out_per_cpu_s: f64,
    rss_peak_mib: f64,
    rss_end_mib: f64,
    /// Frames per second sent by the publisher.
    sent_fps: f64,
    /// Publisher payload bitrate actually sent, Mbit/s.
    sent_mbit_per_s: f64,
    /// Minimum over viewers of frames received per second.
    min_viewer_fps: f64,
    /// Frames received after a gap, all viewers together.
    viewer_gaps: u64,
    /// Load generator (this process) CPU, percent of one core.
    generator_cpu_pct: f64,
    /// Load average when the window ended.
    load_avg: String,
    error: Option<String>,
}

fn main() {
    let args = Args::parse();
    str0m::crypto::from_feature_flags().install_process_default();
    let _ = peer::clock_base();
    let ticks = procfs::clock_ticks();
    if let Some(mode) = &args.mode {
        let config = match args
            .server_config
            .as_deref()
            .map(std::fs::read_to_string)
            .transpose()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fanout: cannot read --server-config: {e}");
                std::process::exit(1);
            }
        };
        let ok = modes::run(
            mode,
            &args.server,
            config.as_deref(),
            args.json.as_deref(),
            ticks,
        );
        std::process::exit(if ok { 0 } else { 1 });
    }
    let load_before = procfs::load_average();
    eprintln!(
        "fanout: server {}, viewers {:?}, {} s each, load average {load_before}",
        args.server.display(),
        args.viewers,
        args.seconds
    );
    let mut rows = Vec::new();
    for &n in &args.viewers {
        eprintln!("fanout: {n} viewer(s)…");
        let row = match run_one(&args, n, ticks) {
            Ok(row) => row,
            Err(e) => {
                eprintln!("fanout: {n} viewer(s) failed: {e:#}");
                Row {
                    viewers: n,
                    error: Some(format!("{e:#}")),
                    load_avg: procfs::load_average(),
                    ..Row::default()
                }
            }
        };
        if row.error.is_none() {
            eprintln!(
                "fanout: {n} viewer(s): {:.0} pkts out/s, server CPU {:.1} %, {:.0} pkts/CPU-s, min viewer {:.1} fps",
                row.packets_out_per_s, row.server_cpu_pct, row.packets_out_per_cpu_s, row.min_viewer_fps
            );
        }
        rows.push(row);
    }
    print_table(&args, &rows, &load_before);
    let mut failed = rows.iter().any(|r| r.error.is_some());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&rows)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("fanout: cannot write {}: {e}", path.display());
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// Every client thread of one run; stops and joins them on drop.
struct Clients {
    stop: Arc<AtomicBool>,
    publisher: Option<Running>,
    viewers: Vec<Running>,
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Each loop checks `stop` at least every 50 ms.
        for r in self
            .publisher
            .take()
            .into_iter()
            .chain(self.viewers.drain(..))
        {
            let _ = r.thread.join();
        }
    }
}

impl Clients {
    fn first_error(&self) -> Option<String> {
        if let Some(e) = self.publisher.as_ref().and_then(|p| p.stats.error()) {
            return Some(format!("publisher: {e}"));
        }
        self.viewers
            .iter()
            .enumerate()
            .find_map(|(i, v)| v.stats.error().map(|e| format!("viewer {i}: {e}")))
    }
}

fn wait_until(
    what: &str,
    timeout: Duration,
    clients: &Clients,
    server: &mut Server,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return Ok(());
        }
        if let Some(e) = clients.first_error() {
            bail!("{e} (while waiting for {what})");
        }
        if !server.alive() {
            bail!(
                "media-server exited while waiting for {what}; log: {}",
                server.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn counter(m: &HashMap<String, u64>, name: &str) -> Result<u64> {
    m.get(name)
        .copied()
        .with_context(|| format!("/metrics has no {name}"))
}

fn run_one(args: &Args, n: usize, ticks: u64) -> Result<Row> {
    let warmup = Duration::from_secs(args.warmup_timeout);
    let spec = VideoSpec {
        bitrate: args.bitrate,
        fps: args.fps,
        gop: (args.keyframe_interval * f64::from(args.fps))
            .round()
            .max(1.0) as u64,
        keyframe_ratio: args.keyframe_ratio,
    };

    let (mut server, mut clients, pstats, view_token) =
        modes::start(&args.server, None, spec, warmup)?;
    let stream = modes::STREAM;

    for i in 0..n {
        let v = Pending::new(Direction::RecvOnly)?
            .exchange(server.http, &format!("/whep/{stream}"), &view_token)
            .with_context(|| format!("viewer {i}"))?
            .spawn(clients.stop.clone(), None)?;
        clients.viewers.push(v);
    }
    let vstats: Vec<_> = clients.viewers.iter().map(|v| v.stats.clone()).collect();
    wait_until(
        "every viewer to receive frames",
        warmup,
        &clients,
        &mut server,
        || vstats.iter().all(|s| s.frames.load(Ordering::Relaxed) > 0),
    )?;
    std::thread::sleep(Duration::from_secs(args.settle));

    // The window.
    let m0 = server.metrics()?;
    let cpu0 = procfs::cpu_time(&server.pid, ticks)?;
    let gen0 = procfs::cpu_time("self", ticks)?;
    let frames0: Vec<u64> = vstats
        .iter()
        .map(|s| s.frames.load(Ordering::Relaxed))
        .collect();
    let gaps0: u64 = vstats.iter().map(|s| s.gaps.load(Ordering::Relaxed)).sum();
    let (pf0, pb0) = (
        pstats.frames.load(Ordering::Relaxed),
        pstats.bytes.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    let mut rss_peak = procfs::rss_kib(&server.pid)?;
    let end = t0 + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        );
        if !server.alive() {
            bail!(
                "media-server exited during the measurement; log: {}",
                server.log_tail()
            );
        }
        if let Some(e) = clients.first_error() {
            bail!("{e} (during the measurement)");
        }
        rss_peak = rss_peak.max(procfs::rss_kib(&server.pid)?);
    }
    let cpu1 = procfs::cpu_time(&server.pid, ticks)?;
    let gen1 = procfs::cpu_time("self", ticks)?;
    let m1 = server.metrics()?;
    let secs = t0.elapsed().as_secs_f64();
    let rss_end = procfs::rss_kib(&server.pid)?;
    rss_peak = rss_peak.max(rss_end);
    let min_frames = vstats
        .iter()
        .zip(&frames0)
        .map(|(s, f0)| s.frames.load(Ordering::Relaxed) - f0)
        .min()
        .unwrap_or(0);
    let gaps = vstats
        .iter()
        .map(|s| s.gaps.load(Ordering::Relaxed))
        .sum::<u64>()
        - gaps0;
    let (pf1, pb1) = (
        pstats.frames.load(Ordering::Relaxed),
        pstats.bytes.load(Ordering::Relaxed),
    );
    drop(clients);

    let delta = |name: &str| -> Result<f64> {
        Ok(counter(&m1, name)?.saturating_sub(counter(&m0, name)?) as f64)
    };
    let packets_out = delta("yiwang_packets_out_total")?;
    let cpu = (cpu1 - cpu0).as_secs_f64();
    Ok(Row {
        viewers: n,
        seconds: secs,
        packets_in_per_s: delta("yiwang_packets_in_total")? / secs,
        packets_out_per_s: packets_out / secs,
        mbit_out_per_s: delta("yiwang_bytes_out_total")? * 8.0 / secs / 1e6,
        frames_forwarded_per_s: delta("yiwang_frames_forwarded_total")? / secs,
        server_cpu_s: cpu,
        server_cpu_pct: cpu / secs * 100.0,
        packets_out_per_cpu_s: if cpu > 0.0 { packets_out / cpu } else { 0.0 },
        rss_peak_mib: rss_peak as f64 / 1024.0,
        rss_end_mib: rss_end as f64 / 1024.0,
        sent_fps: (pf1 - pf0) as f64 / secs,
        sent_mbit_per_s: (pb1 - pb0) as f64 * 8.0 / secs / 1e6,
        min_viewer_fps: min_frames as f64 / secs,
        viewer_gaps: gaps,
        generator_cpu_pct: (gen1 - gen0).as_secs_f64() / secs * 100.0,
        load_avg: procfs::load_average(),
        error: None,
    })
}

fn print_table(args: &Args, rows: &[Row], load_before: &str) {
    println!(
        "Fan-out: 1 publisher ({:.2} Mbit/s VP8, {} fps, keyframe every {} s) → N viewers, {} s per row, media-server {}",
        args.bitrate as f64 / 1e6,
        args.fps,
        args.keyframe_interval,
        args.seconds,
        args.server.display()
    );
    println!();
    println!("| viewers | pkts in/s | pkts out/s | Mbit/s out | frames fwd/s | server CPU % (1 core) | pkts out per CPU-s | RSS peak / end MiB | min viewer fps | sent fps / Mbit/s | viewer gaps | generator CPU % | load avg |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        match &r.error {
            Some(e) => println!("| {} | error: {} |||||||||||| {} |", r.viewers, e.replace('|', "/"), r.load_avg),
            None => println!(
                "| {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} / {:.1} | {:.1} | {:.1} / {:.2} | {} | {:.1} | {} |",
                r.viewers,
                r.packets_in_per_s,
                r.packets_out_per_s,
                r.mbit_out_per_s,
                r.frames_forwarded_per_s,
                r.server_cpu_pct,
                r.packets_out_per_cpu_s,
                r.rss_peak_mib,
                r.rss_end_mib,
                r.min_viewer_fps,
                r.sent_fps,
                r.sent_mbit_per_s,
                r.viewer_gaps,
                r.generator_cpu_pct,
                r.load_avg
            ),
        }
    }
    println!();
    println!(
        "Load average before: {load_before}; after: {}.",
        procfs::load_average()
    );
}
