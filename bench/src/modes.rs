//! The `join`, `latency` and `memory` modes of the benchmark binary.
//!
//! - `join`: viewers join one at a time (each leaves with `DELETE` before the next joins), at
//!   random points of a 4 s GOP; join → first frame, median / p95 / max, and its split.
//! - `latency`: the publisher writes its send time into every frame; each viewer records
//!   arrival − send per frame; p50 / p99 / max per viewer count, and the increase over 1 viewer.
//! - `memory`: server RSS at 0, 25, … viewers with the default retransmission buffers and with
//!   1-packet buffers; the least-squares slope is the memory per viewer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use str0m::media::Direction;

use crate::peer::{Pending, Stats, VideoSpec};
use crate::server::Server;
use crate::{procfs, wait_until, Clients};

pub(crate) const STREAM: &str = "bench-pub";

/// What to measure instead of the fan-out table.
#[derive(clap::Subcommand, Debug)]
pub enum Mode {
    /// Join → first frame: viewers join one after another (each leaves before the next joins),
    /// at random points of the GOP.
    Join(JoinArgs),
    /// Added latency through the SFU: publisher send time → viewer frame arrival, every frame.
    Latency(LatencyArgs),
    /// Server memory per viewer (RSS slope over viewer counts), with the default retransmission
    /// buffers and with 1-packet buffers.
    Memory(MemoryArgs),
    /// Trunks: added latency per hop and trunk packets forwarded per CPU-second, on a chain of
    /// nodes (`bench/src/trunk.rs`).
    Trunk(crate::trunk::TrunkArgs),
}

/// The synthetic publisher.
#[derive(clap::Args, Debug, Clone)]
pub struct Video {
    /// Publisher video bitrate, bits/s (frame payload, averaged over a keyframe interval).
    #[arg(long, default_value_t = 2_500_000)]
    bitrate: u64,
    /// Publisher frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds between periodic keyframes [default: 4 for `join`, 2 otherwise].
    #[arg(long)]
    keyframe_interval: Option<f64>,
    /// Keyframe size relative to a delta frame.
    #[arg(long, default_value_t = 5.0)]
    keyframe_ratio: f64,
}

impl Video {
    fn spec(&self, default_interval: f64) -> VideoSpec {
        let interval = self.keyframe_interval.unwrap_or(default_interval);
        VideoSpec {
            bitrate: self.bitrate,
            fps: self.fps,
            gop: (interval * f64::from(self.fps)).round().max(1.0) as u64,
            keyframe_ratio: self.keyframe_ratio,
        }
    }
}

fn describe(spec: &VideoSpec) -> String {
    let (k, d) = spec.frame_sizes();
    format!(
        "{:.2} Mbit/s VP8, {} fps, keyframe every {} frames ({:.1} s; {k} B keyframe, {d} B delta), plus one whenever the server asks",
        spec.bitrate as f64 / 1e6,
        spec.fps,
        spec.gop,
        spec.gop as f64 / f64::from(spec.fps)
    )
}

#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    #[command(flatten)]
    video: Video,
    /// Number of joins (viewers, one at a time).
    #[arg(long, default_value_t = 30)]
    viewers: usize,
    /// Shortest pause before a join, seconds (the pause is uniform in [min, max]).
    #[arg(long, default_value_t = 0.6)]
    min_gap: f64,
    /// Longest pause before a join, seconds.
    #[arg(long, default_value_t = 4.6)]
    max_gap: f64,
    /// Seed of the pauses [default: from the clock; printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Bound on one join (POST to first keyframe), seconds.
    #[arg(long, default_value_t = 10)]
    join_timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    video: Video,
    /// Viewer counts, one fresh server each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,120")]
    viewers: Vec<usize>,
    /// Measurement window per viewer count, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bound on the warm-up (every viewer receiving), seconds.
    #[arg(long, default_value_t = 60)]
    warmup_timeout: u64,
    /// Extra seconds after every viewer received a frame, before measuring.
    #[arg(long, default_value_t = 3)]
    settle: u64,
}

#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    #[command(flatten)]
    video: Video,
    /// Viewer counts at which RSS is sampled (one server per buffer setting, viewers added).
    #[arg(long, value_delimiter = ',', default_value = "0,25,50,75,100")]
    steps: Vec<usize>,
    /// Buffer settings `VIDEO/AUDIO` (packets): `[sfu] send_buffer_video` / `send_buffer_audio`.
    #[arg(long, value_delimiter = ',', default_value = "1000/100,1/1")]
    buffers: Vec<String>,
    /// Seconds after a step's viewers all receive, before sampling (the video send buffer fills
    /// at the packet rate: 1000 packets take ~3.3 s at 2.5 Mbit/s).
    #[arg(long, default_value_t = 6)]
    settle: u64,
    /// Bound on each step's warm-up, seconds.
    #[arg(long, default_value_t = 60)]
    warmup_timeout: u64,
}

/// Runs `mode`; false when it failed (the error is printed).
/// `config` is the text of `--server-config`, if any (not allowed for `memory`, which writes
/// its own).
pub fn run(
    mode: &Mode,
    server: &Path,
    config: Option<&str>,
    json: Option<&Path>,
    ticks: u64,
) -> bool {
    let out = match mode {
        Mode::Join(a) => join(a, server, config).and_then(|v| Ok(serde_json::to_value(v)?)),
        Mode::Latency(a) => {
            latency(a, server, config, ticks).and_then(|v| Ok(serde_json::to_value(v)?))
        }
        Mode::Memory(_) if config.is_some() => Err(anyhow::anyhow!(
            "`memory` writes its own config; --server-config is not allowed"
        )),
        Mode::Memory(a) => memory(a, server).and_then(|v| Ok(serde_json::to_value(v)?)),
        Mode::Trunk(_) if config.is_some() => Err(anyhow::anyhow!(
            "`trunk` writes its own configs; --server-config is not allowed"
        )),
        Mode::Trunk(a) => {
            crate::trunk::trunk(a, server, ticks).and_then(|v| Ok(serde_json::to_value(v)?))
        }
    };
    match out {
        Ok(value) => {
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&value)
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                if let Err(e) = std::fs::write(path, text + "\n") {
                    eprintln!("fanout: cannot write {}: {e}", path.display());
                    return false;
                }
            }
            true
        }
        Err(e) => {
            eprintln!("fanout: failed: {e:#}");
            println!("error: {}", format!("{e:#}").replace('\n', " "));
            false
        }
    }
}

/// A fresh server with a connected publisher that has sent at least one frame.
pub(crate) fn start(
    binary: &Path,
    config: Option<&str>,
    spec: VideoSpec,
    warmup: Duration,
) -> Result<(Server, Clients, Arc<Stats>, String)> {
    let t = Duration::from_secs(20);
    let mut server = Server::start_with(binary, t, config)?;
    let pub_token = server.token("bench-pub", "officer", t)?;
    let view_token = server.token("bench-viewer", "viewer", t)?;
    let mut clients = Clients {
        stop: Arc::new(AtomicBool::new(false)),
        publisher: None,
        viewers: Vec::new(),
    };
    let publisher = Pending::new(Direction::SendOnly)?
        .exchange(server.http, &format!("/whip/{STREAM}"), &pub_token)
        .context("publisher")?
        .spawn(clients.stop.clone(), Some(spec))?;
    let pstats = publisher.stats.clone();
    clients.publisher = Some(publisher);
    wait_until(
        "the publisher to connect and send",
        warmup,
        &clients,
        &mut server,
        || pstats.frames.load(Ordering::Relaxed) > 0,
    )?;
    Ok((server, clients, pstats, view_token))
}

/// Adds viewers until there are `n`.
fn add_viewers(server: &Server, clients: &mut Clients, token: &str, n: usize) -> Result<()> {
    while clients.viewers.len() < n {
        let i = clients.viewers.len();
        let v = Pending::new(Direction::RecvOnly)?
            .exchange(server.http, &format!("/whep/{STREAM}"), token)
            .with_context(|| format!("viewer {i}"))?
            .spawn(clients.stop.clone(), None)?;
        clients.viewers.push(v);
    }
    Ok(())
}

fn wait_all_receiving(server: &mut Server, clients: &Clients, timeout: Duration) -> Result<()> {
    let stats: Vec<_> = clients.viewers.iter().map(|v| v.stats.clone()).collect();
    wait_until(
        "every viewer to receive frames",
        timeout,
        clients,
        server,
        || stats.iter().all(|s| s.frames.load(Ordering::Relaxed) > 0),
    )
}

/// Nearest-rank percentile of sorted `v` (`p` in 0..=100).
fn pct<T: Copy>(v: &[T], p: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

fn ms(d: Option<f64>) -> String {
    d.map_or_else(|| "–".into(), |d| format!("{d:.1}"))
}

fn header(cmd: &str, spec: &VideoSpec, binary: &Path, config: Option<&str>) {
    println!(
        "`fanout {cmd}`: 1 publisher ({}) through {}",
        describe(spec),
        binary.display()
    );
    if let Some(c) = config {
        println!();
        println!("Server config: `{}`", c.trim().replace('\n', "; "));
    }
    println!();
    println!(
        "Load average (1/5/15 min) when the run ended: {}.",
        procfs::load_average()
    );
    println!();
}

// ---------------------------------------------------------------------------------------------
// join

/// One join.
#[derive(Debug, Serialize)]
struct JoinSample {
    i: usize,
    /// Pause before this join, ms.
    gap_ms: f64,
    /// Time since the publisher's last periodic keyframe when the POST started, ms.
    gop_phase_ms: f64,
    post_to_answer_ms: f64,
    answer_to_connected_ms: Option<f64>,
    connected_to_first_frame_ms: Option<f64>,
    join_to_first_frame_ms: Option<f64>,
    join_to_first_keyframe_ms: Option<f64>,
    first_frame_was_keyframe: bool,
    /// Keyframe requests the publisher received from POST to first keyframe.
    publisher_keyframe_requests: u64,
    /// The session's DELETE answered 200/204.
    deleted: bool,
}

/// Picks one interval of a join, if it was measured.
type Pick = dyn Fn(&JoinSample) -> Option<f64>;

/// xorshift64*: enough for random pauses, no dependency.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn join(a: &JoinArgs, binary: &Path, config: Option<&str>) -> Result<Vec<JoinSample>> {
    let spec = a.video.spec(4.0);
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let mut rng = Rng(seed.max(1));
    eprintln!(
        "fanout join: {} joins, pauses {}–{} s, seed {seed}",
        a.viewers, a.min_gap, a.max_gap
    );
    let (mut server, clients, pstats, token) =
        start(binary, config, spec, Duration::from_secs(30))?;
    let m0 = server.metrics()?;
    let timeout = Duration::from_secs(a.join_timeout);
    let frame_ms = 1000.0 / f64::from(spec.fps.max(1));
    let mut samples = Vec::new();
    for i in 0..a.viewers {
        let gap = a.min_gap + (a.max_gap - a.min_gap).max(0.0) * rng.unit();
        std::thread::sleep(Duration::from_secs_f64(gap));
        if let Some(e) = clients.first_error() {
            bail!("{e}");
        }
        let pending = Pending::new(Direction::RecvOnly)?;
        let kreq0 = pstats.keyframe_requests.load(Ordering::Relaxed);
        let phase = (pstats.frames.load(Ordering::Relaxed).saturating_sub(1) % spec.gop.max(1))
            as f64
            * frame_ms;
        let t0 = Instant::now();
        let pending = pending
            .exchange(server.http, &format!("/whep/{STREAM}"), &token)
            .with_context(|| format!("join {i}"))?;
        let t_answer = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let v = pending.spawn(stop.clone(), None)?;
        let deadline = t0 + timeout;
        let outcome = loop {
            if v.stats.first_keyframe_at.get().is_some() {
                break Ok(());
            }
            if let Some(e) = v.stats.error() {
                break Err(anyhow::anyhow!("join {i}: viewer: {e}"));
            }
            if !server.alive() {
                break Err(anyhow::anyhow!(
                    "media-server exited during join {i}; log: {}",
                    server.log_tail()
                ));
            }
            if Instant::now() > deadline {
                break Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let kreq1 = pstats.keyframe_requests.load(Ordering::Relaxed);
        let deleted = match &v.location {
            Some(loc) => server.delete(loc).unwrap_or(false),
            None => false,
        };
        stop.store(true, Ordering::Relaxed);
        let s = v.stats.clone();
        let _ = v.thread.join();
        outcome?;
        let since = |from: Instant, to: Option<Instant>| {
            to.map(|t| t.saturating_duration_since(from).as_secs_f64() * 1e3)
        };
        let conn = s.dtls_connected_at.get();
        let first = s.first_frame_at.get();
        let sample = JoinSample {
            i,
            gap_ms: gap * 1e3,
            gop_phase_ms: phase,
            post_to_answer_ms: t_answer.duration_since(t0).as_secs_f64() * 1e3,
            answer_to_connected_ms: since(t_answer, conn),
            connected_to_first_frame_ms: conn.and_then(|c| since(c, first)),
            join_to_first_frame_ms: since(t0, first),
            join_to_first_keyframe_ms: since(t0, s.first_keyframe_at.get()),
            first_frame_was_keyframe: first.is_some() && s.first_frame_key.load(Ordering::Relaxed),
            publisher_keyframe_requests: kreq1 - kreq0,
            deleted,
        };
        eprintln!(
            "fanout join {i}: phase {:.0} ms, first frame {} ms (keyframe: {}), first keyframe {} ms",
            sample.gop_phase_ms,
            ms(sample.join_to_first_frame_ms),
            sample.first_frame_was_keyframe,
            ms(sample.join_to_first_keyframe_ms)
        );
        samples.push(sample);
    }
    let m1 = server.metrics()?;
    drop(clients);

    let col = |f: &Pick| -> (Vec<f64>, usize) {
        let mut v: Vec<f64> = samples.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        let missing = samples.len() - v.len();
        (v, missing)
    };
    header("join", &spec, binary, config);
    println!(
        "{} joins, one at a time (each viewer DELETEs its session before the next POSTs), pauses uniform in {}–{} s (seed {seed}); bound {} s per join.",
        samples.len(),
        a.min_gap,
        a.max_gap,
        a.join_timeout
    );
    println!();
    println!("| interval (ms) | median | p95 | max | min | missing |");
    println!("|---|---:|---:|---:|---:|---:|");
    let rows: [(&str, &Pick); 5] = [
        ("POST → answer", &|s| Some(s.post_to_answer_ms)),
        ("answer → ICE+DTLS connected", &|s| {
            s.answer_to_connected_ms
        }),
        ("connected → first video frame", &|s| {
            s.connected_to_first_frame_ms
        }),
        ("**join (POST) → first video frame**", &|s| {
            s.join_to_first_frame_ms
        }),
        ("join (POST) → first keyframe", &|s| {
            s.join_to_first_keyframe_ms
        }),
    ];
    for (name, f) in rows {
        let (v, missing) = col(f);
        println!(
            "| {name} | {} | {} | {} | {} | {missing} |",
            ms(pct(&v, 50.0)),
            ms(pct(&v, 95.0)),
            ms(v.last().copied()),
            ms(v.first().copied())
        );
    }
    let key_first = samples
        .iter()
        .filter(|s| s.first_frame_was_keyframe)
        .count();
    let kreqs: u64 = samples.iter().map(|s| s.publisher_keyframe_requests).sum();
    let delta = |name: &str| {
        m1.get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(m0.get(name).copied().unwrap_or(0))
    };
    println!();
    println!(
        "First frame was a keyframe in {key_first}/{} joins. Keyframe requests received by the publisher during joins: {kreqs} \
         (server: {} PLI sent upstream, {} keyframe requests from viewers). Sessions deleted: {}/{}.",
        samples.len(),
        delta("yiwang_keyframe_requests_out_total"),
        delta("yiwang_keyframe_requests_in_total"),
        samples.iter().filter(|s| s.deleted).count(),
        samples.len()
    );
    println!();
    println!("| join | pause s | GOP phase ms | POST→answer | answer→connected | connected→frame | POST→frame | POST→keyframe | 1st is key | PLIs at pub |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for s in &samples {
        println!(
            "| {} | {:.2} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} |",
            s.i,
            s.gap_ms / 1e3,
            s.gop_phase_ms,
            s.post_to_answer_ms,
            ms(s.answer_to_connected_ms),
            ms(s.connected_to_first_frame_ms),
            ms(s.join_to_first_frame_ms),
            ms(s.join_to_first_keyframe_ms),
            if s.first_frame_was_keyframe {
                "yes"
            } else {
                "no"
            },
            s.publisher_keyframe_requests
        );
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------------
// latency

#[derive(Debug, Default, Serialize)]
struct LatencyRow {
    viewers: usize,
    samples: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Publisher: `write` → its last media datagram sent, p50 and p99, ms.
    pub_span_p50_ms: f64,
    pub_span_p99_ms: f64,
    min_viewer_fps: f64,
    server_cpu_pct: f64,
    generator_cpu_pct: f64,
    load_avg: String,
    error: Option<String>,
}

fn latency(
    a: &LatencyArgs,
    binary: &Path,
    config: Option<&str>,
    ticks: u64,
) -> Result<Vec<LatencyRow>> {
    let spec = a.video.spec(2.0);
    let mut rows = Vec::new();
    for &n in &a.viewers {
        eprintln!("fanout latency: {n} viewer(s)…");
        let row = latency_one(a, binary, config, spec, n, ticks).unwrap_or_else(|e| {
            eprintln!("fanout latency: {n} viewer(s) failed: {e:#}");
            LatencyRow {
                viewers: n,
                error: Some(format!("{e:#}")),
                load_avg: procfs::load_average(),
                ..LatencyRow::default()
            }
        });
        rows.push(row);
    }
    header("latency", &spec, binary, config);
    println!(
        "Per frame: viewer arrival (str0m `MediaData` event: last packet in, SRTP-decrypted, depacketized) − publisher send \
         (the `Instant` passed to str0m's `write`, stamped into the payload). {} s window after every viewer received a frame + {} s settle; fresh server per row. \
         \"+ p50 / + p99\" = increase over the 1-viewer row.",
        a.seconds, a.settle
    );
    println!();
    println!("| viewers | frames measured | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | + p50 / + p99 ms | publisher write→last packet out p50 / p99 ms | min viewer fps | server CPU % | generator CPU % | load avg |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let floor = rows
        .iter()
        .find(|r| r.viewers == 1 && r.error.is_none())
        .map(|r| (r.p50_ms, r.p99_ms));
    for r in &rows {
        match &r.error {
            Some(e) => println!("| {} | error: {} ||||||||||| {} |", r.viewers, e.replace('|', "/"), r.load_avg),
            None => println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} / {:.2} | {:.1} | {:.1} | {:.1} | {} |",
                r.viewers,
                r.samples,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.p999_ms,
                r.max_ms,
                floor.map_or_else(|| "–".into(), |(p50, p99)| format!("{:+.2} / {:+.2}", r.p50_ms - p50, r.p99_ms - p99)),
                r.pub_span_p50_ms,
                r.pub_span_p99_ms,
                r.min_viewer_fps,
                r.server_cpu_pct,
                r.generator_cpu_pct,
                r.load_avg
            ),
        }
    }
    if rows.iter().any(|r| r.error.is_some()) {
        bail!("some rows failed");
    }
    Ok(rows)
}

fn latency_one(
    a: &LatencyArgs,
    binary: &Path,
    config: Option<&str>,
    spec: VideoSpec,
    n: usize,
    ticks: u64,
) -> Result<LatencyRow> {
    let warmup = Duration::from_secs(a.warmup_timeout);
    let (mut server, mut clients, pstats, token) = start(binary, config, spec, warmup)?;
    add_viewers(&server, &mut clients, &token, n)?;
    wait_all_receiving(&mut server, &clients, warmup)?;
    std::thread::sleep(Duration::from_secs(a.settle));
    pstats.record_latency.store(true, Ordering::Relaxed);
    let stats: Vec<_> = clients.viewers.iter().map(|v| v.stats.clone()).collect();
    let frames0: Vec<u64> = stats
        .iter()
        .map(|s| s.frames.load(Ordering::Relaxed))
        .collect();
    let cpu0 = procfs::cpu_time(&server.pid, ticks)?;
    let gen0 = procfs::cpu_time("self", ticks)?;
    let t0 = Instant::now();
    for s in &stats {
        s.record_latency.store(true, Ordering::Relaxed);
    }
    let end = t0 + Duration::from_secs(a.seconds);
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
    }
    for s in &stats {
        s.record_latency.store(false, Ordering::Relaxed);
    }
    pstats.record_latency.store(false, Ordering::Relaxed);
    let mut spans = pstats
        .send_spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    spans.sort_unstable();
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (procfs::cpu_time(&server.pid, ticks)? - cpu0).as_secs_f64();
    let gen = (procfs::cpu_time("self", ticks)? - gen0).as_secs_f64();
    let min_frames = stats
        .iter()
        .zip(&frames0)
        .map(|(s, f0)| s.frames.load(Ordering::Relaxed) - f0)
        .min()
        .unwrap_or(0);
    drop(clients);
    let mut all: Vec<u64> = Vec::new();
    for s in &stats {
        all.extend(s.latencies.lock().unwrap_or_else(|e| e.into_inner()).iter());
    }
    all.sort_unstable();
    if all.is_empty() {
        bail!("no frame arrived during the window");
    }
    let p = |q: f64| pct(&all, q).unwrap_or(0) as f64 / 1e6;
    Ok(LatencyRow {
        viewers: n,
        samples: all.len(),
        p50_ms: p(50.0),
        p90_ms: p(90.0),
        p99_ms: p(99.0),
        p999_ms: p(99.9),
        max_ms: p(100.0),
        pub_span_p50_ms: pct(&spans, 50.0).unwrap_or(0) as f64 / 1e6,
        pub_span_p99_ms: pct(&spans, 99.0).unwrap_or(0) as f64 / 1e6,
        min_viewer_fps: min_frames as f64 / secs,
        server_cpu_pct: cpu / secs * 100.0,
        generator_cpu_pct: gen / secs * 100.0,
        load_avg: procfs::load_average(),
        error: None,
    })
}

// ---------------------------------------------------------------------------------------------
// memory

#[derive(Debug, Serialize)]
struct MemoryRow {
    send_buffer_video: usize,
    send_buffer_audio: usize,
    /// (viewers, RSS KiB) at each step.
    rss_kib: Vec<(usize, f64)>,
    /// Least-squares slope, KiB per viewer.
    slope_kib_per_viewer: f64,
}

fn memory(a: &MemoryArgs, binary: &Path) -> Result<Vec<MemoryRow>> {
    let spec = a.video.spec(2.0);
    let mut steps = a.steps.clone();
    steps.sort_unstable();
    steps.dedup();
    if steps.len() < 2 {
        bail!("need at least two --steps");
    }
    let mut rows = Vec::new();
    for b in &a.buffers {
        let (v, au) = b
            .split_once('/')
            .with_context(|| format!("--buffers wants VIDEO/AUDIO, got {b:?}"))?;
        let (video, audio): (usize, usize) = (v.trim().parse()?, au.trim().parse()?);
        eprintln!("fanout memory: send_buffer_video = {video}, send_buffer_audio = {audio}");
        let config = format!("[sfu]\nsend_buffer_video = {video}\nsend_buffer_audio = {audio}\n");
        let warmup = Duration::from_secs(a.warmup_timeout);
        let (mut server, mut clients, _pstats, token) = start(binary, Some(&config), spec, warmup)?;
        let mut points = Vec::new();
        for &n in &steps {
            add_viewers(&server, &mut clients, &token, n)?;
            wait_all_receiving(&mut server, &clients, warmup)?;
            std::thread::sleep(Duration::from_secs(a.settle));
            if let Some(e) = clients.first_error() {
                bail!("{e}");
            }
            // The mean of 5 samples over 1 s.
            let mut sum = 0.0;
            for _ in 0..5 {
                sum += procfs::rss_kib(&server.pid)? as f64;
                std::thread::sleep(Duration::from_millis(200));
            }
            let rss = sum / 5.0;
            eprintln!("fanout memory: {n} viewer(s): RSS {:.1} MiB", rss / 1024.0);
            points.push((n, rss));
        }
        drop(clients);
        drop(server);
        let slope = slope(&points);
        rows.push(MemoryRow {
            send_buffer_video: video,
            send_buffer_audio: audio,
            rss_kib: points,
            slope_kib_per_viewer: slope,
        });
    }
    header("memory", &spec, binary, None);
    println!(
        "Server `VmRSS` (mean of 5 samples over 1 s), {} s after the step's last viewer received a frame; viewers added to one server per buffer setting (`[sfu]` in a `--config` file). Slope: least squares over the steps.",
        a.settle
    );
    println!();
    let cols: Vec<String> = steps.iter().map(|n| format!("RSS MiB @ {n}")).collect();
    println!(
        "| send_buffer_video / _audio | {} | slope KiB/viewer |",
        cols.join(" | ")
    );
    println!("|---|{}---:|", "---:|".repeat(steps.len()));
    for r in &rows {
        let cells: Vec<String> = r
            .rss_kib
            .iter()
            .map(|(_, k)| format!("{:.1}", k / 1024.0))
            .collect();
        println!(
            "| {} / {} | {} | {:.0} |",
            r.send_buffer_video,
            r.send_buffer_audio,
            cells.join(" | "),
            r.slope_kib_per_viewer
        );
    }
    if let (Some(big), Some(small)) = (
        rows.iter().max_by_key(|r| r.send_buffer_video),
        rows.iter().min_by_key(|r| r.send_buffer_video),
    ) {
        if big.send_buffer_video != small.send_buffer_video {
            println!();
            println!(
                "Retransmission buffers ({} → {} video packets): {:.0} KiB per viewer; the rest (buffers of {} packet): {:.0} KiB per viewer.",
                big.send_buffer_video,
                small.send_buffer_video,
                big.slope_kib_per_viewer - small.slope_kib_per_viewer,
                small.send_buffer_video,
                small.slope_kib_per_viewer
            );
        }
    }
    Ok(rows)
}

/// Least-squares slope of y over x.
fn slope(points: &[(usize, f64)]) -> f64 {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 as f64 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_slope() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(
            (pct(&v, 50.0), pct(&v, 95.0), pct(&v, 100.0)),
            (Some(50), Some(95), Some(100))
        );
        assert_eq!(pct::<u32>(&[], 50.0), None);
        let s = slope(&[(0, 10.0), (10, 30.0), (20, 50.0)]);
        assert!((s - 2.0).abs() < 1e-9);
    }
}
