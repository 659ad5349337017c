//! `sigbench`: benchmarks of the signaling server (`yiwang/1` over QUIC) against the real
//! `media-server` binary on loopback.
//!
//! - `sigbench sessions`: how many concurrent QUIC sessions one node holds. A lean client (many
//!   connections on a few quinn endpoints, one task per connection: `hello`, `welcome`, draining
//!   events with acks, keep-alive every 2 s) ramps up in batches; then the node's RSS growth per
//!   session (`VmRSS`) and its CPU while idly holding them are measured, a sample answers `ping`,
//!   and every connection lost along the way is counted.
//! - `sigbench fanout`: one officer's position updates fanned out to N operators, with the
//!   library client (`signaling::client`); the send → receive time of every position at every
//!   operator (one process, one monotonic clock).
//! - `sigbench orders`: `POST /api/orders` from N clients for a while: orders stored per second
//!   and the time to each acknowledgement (every order is committed to the office store before
//!   its 201). Run it once per binary to compare store settings side by side.
//!
//! Tokens are minted in-process with the node's own identity (created in the temp data dir before
//! the node starts); the clients pin the node certificate by the token's `fpr`, as real clients do.
//! Markdown on stdout, progress on stderr, `--json FILE` for the raw figures. Every wait is bounded.

// Only `request` is used here.
#[allow(dead_code)]
#[path = "../http.rs"]
mod http;
#[path = "../procfs.rs"]
mod procfs;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use media_server::identity::NodeIdentity;
use serde::Serialize;
use signaling::auth::{Role, TokenIssuer, TokenRequest};
use signaling::client::{self, ClientConfig, ClientEvent};
use signaling::proto::{
    encode_frame, ClientMsg, Event, FrameDecoder, Position, ServerMsg, MAX_FRAME, VERSION,
};
use signaling::{IncidentId, Subject};
use tokio::sync::{mpsc, watch};

/// Signaling benchmarks against the real media-server (loopback).
#[derive(Parser, Debug)]
#[command(name = "sigbench", version)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// The media-server binary.
    #[arg(long, global = true, default_value = "target/release/media-server")]
    server: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Concurrent QUIC sessions held by one node: ramp time, memory per session, idle CPU.
    Sessions(SessionsArgs),
    /// Position updates of one officer fanned out to N operators: delivery latency.
    Fanout(FanoutArgs),
    /// Orders over `POST /api/orders`: stored per second, time to the acknowledgement.
    Orders(OrdersArgs),
}

#[derive(ClapArgs, Debug)]
struct OrdersArgs {
    /// HTTP clients sending orders at once (each waits for its 201 before the next).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds of sending measured.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(ClapArgs, Debug)]
struct SessionsArgs {
    /// Sessions to open (distinct subjects, role officer).
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Sessions per incident: each token names incident `g<k>` for its group, so presence and
    /// member events go to the group only. 0 = no incident in the token: every session lands in
    /// the standing `duty` incident (the node's default) and every join reaches every session.
    #[arg(long, default_value_t = 100)]
    group: usize,
    /// Connections opened concurrently per ramp batch; the next batch starts when every
    /// connection of this one has its `welcome` (or failed). Larger batches overflow the node's
    /// UDP receive buffer (lost Initials, slow retransmits): 50 ramped faster than 250 here.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// QUIC client endpoints (UDP sockets) the connections are spread over.
    #[arg(long, default_value_t = 8)]
    endpoints: usize,
    /// Client keep-alive interval, ms (the node's own is 2 s).
    #[arg(long, default_value_t = 2000)]
    keep_alive_ms: u64,
    /// Seconds to wait after the ramp before measuring (events settle, queues drain).
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Seconds of idle holding measured (node CPU, RSS).
    #[arg(long, default_value_t = 30)]
    hold: u64,
    /// Sessions that must answer a `ping` at the end (spread evenly over all sessions).
    #[arg(long, default_value_t = 100)]
    sample: usize,
    /// Bound on one ramp batch, seconds.
    #[arg(long, default_value_t = 60)]
    batch_timeout: u64,
}

#[derive(ClapArgs, Debug)]
struct FanoutArgs {
    /// Operators receiving the positions (role operator, all in `duty`).
    #[arg(long, default_value_t = 100)]
    operators: usize,
    /// Position updates the officer sends.
    #[arg(long, default_value_t = 200)]
    updates: usize,
    /// Interval between updates, ms. The node fans out at most one position per sender per
    /// 200 ms (coalescing the rest); above that every update goes out at once.
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
    /// Seconds to wait after the last update for stragglers.
    #[arg(long, default_value_t = 3)]
    drain: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let json = match &args.mode {
        Mode::Sessions(a) => {
            let r = rt.block_on(sessions(&args.server, a))?;
            print_sessions(&r);
            serde_json::to_value(&r)?
        }
        Mode::Fanout(a) => {
            let r = rt.block_on(fanout(&args.server, a))?;
            print_fanout(&r);
            serde_json::to_value(&r)?
        }
        Mode::Orders(a) => {
            let r = rt.block_on(orders(&args.server, a))?;
            print_orders(&r);
            serde_json::to_value(&r)?
        }
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    // Tasks still holding connections are not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The node

/// The real media-server as a child: its identity is created here first, so tokens can be minted
/// in-process. Killed on drop.
struct Node {
    child: Child,
    _dir: tempfile::TempDir,
    pid: String,
    quic: SocketAddr,
    http: SocketAddr,
    issuer: TokenIssuer,
    node_id: String,
    fpr: String,
}

impl Node {
    fn start(binary: &Path, timeout: Duration) -> Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("yiwang-sigbench-")
            .tempdir()?;
        let data = dir.path().join("data");
        let identity = NodeIdentity::load_or_create(&data, None).context("node identity")?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut child = Command::new(binary)
            .arg("--data")
            .arg(&data)
            .args([
                "--http",
                "127.0.0.1:0",
                "--media",
                "127.0.0.1:0",
                "--quic",
                "127.0.0.1:0",
            ])
            .env(
                "RUST_LOG",
                std::env::var("YIWANG_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let pid = child.id().to_string();
        let line = match rx.recv_timeout(timeout) {
            Ok(Some(Ok(l))) => l,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                bail!(
                    "no ready line from media-server; log: {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                );
            }
        };
        let quic = line
            .split(' ')
            .find_map(|kv| kv.strip_prefix("quic="))
            .with_context(|| format!("no quic= in {line:?}"))?
            .parse()?;
        let http = line
            .split(' ')
            .find_map(|kv| kv.strip_prefix("http="))
            .with_context(|| format!("no http= in {line:?}"))?
            .parse()?;
        Ok(Node {
            child,
            _dir: dir,
            pid,
            quic,
            http,
            issuer: identity.issuer(),
            node_id: identity.node_id.to_string(),
            fpr: identity.fingerprint.clone(),
        })
    }

    fn token(&self, sub: &str, role: Role, incident: Option<&str>) -> Result<String> {
        let mut req = TokenRequest::new(
            Subject::parse(sub)?,
            role,
            self.node_id.clone(),
            self.fpr.clone(),
        );
        if let Some(i) = incident {
            req.incidents = vec![IncidentId::parse(i)?];
        }
        Ok(self.issuer.issue(&req, unix_secs()))
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn rss_kib(&self) -> u64 {
        procfs::rss_kib(&self.pid).unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Percentiles of a sample, ms.
#[derive(Debug, Serialize, Default, Clone)]
struct Dist {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Dist {
            n,
            p50: pct(&v, 50.0),
            p90: pct(&v, 90.0),
            p99: pct(&v, 99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
            mean: if n == 0 {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / n as f64
            },
        }
    }
}

/// The system-wide UDP `RcvbufErrors` counter (`/proc/net/snmp`): datagrams dropped because a
/// socket's receive buffer was full (any process's; loopback drops show up here).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Datagrams dropped by the IPv4 UDP socket bound to `port` (the `drops` column of
/// `/proc/net/udp`): receive-buffer overflows of that one socket.
fn udp_socket_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1)?.ends_with(&want)).then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

fn cpu_s(pid: &str, ticks: u64) -> f64 {
    procfs::cpu_time(pid, ticks).map_or(0.0, |d| d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// sessions

/// Counters shared by every session task.
#[derive(Default)]
struct Stats {
    events: AtomicU64,
    /// Events that arrived before `welcome` (a protocol-order violation by the node).
    before_welcome: AtomicU64,
    /// Events whose `seq` was not above every earlier one on the connection.
    out_of_order: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    lost_reasons: Mutex<BTreeMap<String, u64>>,
    pings_ok: AtomicU64,
    /// Sampled sessions that got their welcome.
    sampled_up: AtomicU64,
    ping_ms: Mutex<Vec<f64>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Hold,
    Ping,
    Stop,
}

/// One bench session: connect, `hello`, wait for `welcome` (reported on `ready`), then drain events
/// (acking like the library client: every 64 events or within 1 s), answer the ping phase if
/// sampled, and close on stop.
#[allow(clippy::too_many_arguments)]
async fn session_task(
    ep: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    node: SocketAddr,
    token: String,
    sampled: bool,
    stats: Arc<Stats>,
    mut phase: watch::Receiver<Phase>,
    ready: mpsc::UnboundedSender<Result<f64, String>>,
) {
    let t0 = Instant::now();
    let hs = async {
        let conn = ep
            .connect_with(cfg, node, client::SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
        let hello = ClientMsg::Hello {
            v: VERSION,
            token,
            resume: None,
        };
        send.write_all(&encode_frame(&hello))
            .await
            .map_err(|e| format!("hello: {e}"))?;
        let mut dec = FrameDecoder::new();
        loop {
            if let Some(f) = dec.next_frame().map_err(|e| format!("{e:?}"))? {
                match serde_json::from_slice::<ServerMsg>(&f) {
                    Ok(ServerMsg::Welcome(_)) => return Ok((conn, send, recv, dec)),
                    // The protocol says welcome comes first; count violations instead of failing.
                    Ok(ServerMsg::Event { .. }) => {
                        stats.before_welcome.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(other) => {
                        return Err(format!(
                            "answer to hello: {}",
                            serde_json::to_string(&other).unwrap_or_default()
                        ))
                    }
                    Err(e) => return Err(format!("unreadable answer to hello: {e}")),
                }
            }
            match recv.read_chunk(MAX_FRAME, true).await {
                Ok(Some(c)) => dec.push(&c.bytes),
                Ok(None) => return Err("stream ended before welcome".to_owned()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    };
    let (conn, mut send, mut recv, mut dec) = match hs.await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if sampled {
        stats.sampled_up.fetch_add(1, Ordering::Relaxed);
    }
    let _ = ready.send(Ok(t0.elapsed().as_secs_f64() * 1e3));
    drop(ready);
    let mut last_seq = 0u64;
    let mut acked = 0u64;
    let mut ack_due: Option<tokio::time::Instant> = None;
    let mut ping_sent: Option<Instant> = None;
    const PING_ID: u64 = 1;
    let lost = |why: String| {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        let key: String = why.chars().take(80).collect();
        *stats
            .lost_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    };
    // Frames that arrived with the welcome.
    let mut pending: Vec<Vec<u8>> = Vec::new();
    while let Ok(Some(f)) = dec.next_frame() {
        pending.push(f);
    }
    loop {
        for f in pending.drain(..) {
            match serde_json::from_slice::<ServerMsg>(&f) {
                Ok(ServerMsg::Event { seq, .. }) => {
                    if seq <= last_seq {
                        stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    last_seq = last_seq.max(seq);
                    stats.events.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ServerMsg::Result { re, .. }) if re == PING_ID => {
                    if let Some(t) = ping_sent.take() {
                        stats.pings_ok.fetch_add(1, Ordering::Relaxed);
                        stats
                            .ping_ms
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                Ok(ServerMsg::Error { .. }) | Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
            }
        }
        if last_seq > acked {
            if last_seq - acked >= 64 || ack_due.is_some_and(|d| d <= tokio::time::Instant::now()) {
                if send
                    .write_all(&encode_frame(&ClientMsg::Ack { after: last_seq }))
                    .await
                    .is_err()
                {
                    lost("ack write failed".to_owned());
                    return;
                }
                stats.acks.fetch_add(1, Ordering::Relaxed);
                acked = last_seq;
                ack_due = None;
            } else if ack_due.is_none() {
                ack_due = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
        }
        let sleep_until =
            ack_due.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = recv.read_chunk(MAX_FRAME, true) => match r {
                Ok(Some(c)) => {
                    dec.push(&c.bytes);
                    loop {
                        match dec.next_frame() {
                            Ok(Some(f)) => pending.push(f),
                            Ok(None) => break,
                            Err(e) => {
                                lost(format!("bad frame {e:?}"));
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {
                    let why = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await
                        .map_or_else(|_| "stream finished".to_owned(), |e| e.to_string());
                    lost(why);
                    return;
                }
                Err(e) => {
                    lost(e.to_string());
                    return;
                }
            },
            _ = tokio::time::sleep_until(sleep_until), if ack_due.is_some() => {}
            ch = phase.changed() => {
                let p = if ch.is_ok() { *phase.borrow_and_update() } else { Phase::Stop };
                match p {
                    Phase::Ping if sampled => {
                        ping_sent = Some(Instant::now());
                        if send.write_all(&encode_frame(&ClientMsg::Ping { id: PING_ID })).await.is_err() {
                            lost("ping write failed".to_owned());
                            return;
                        }
                    }
                    Phase::Stop => {
                        conn.close(0u32.into(), b"bench over");
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct BatchRow {
    sessions: usize,
    elapsed_s: f64,
    node_rss_mib: f64,
    failed: usize,
}

#[derive(Debug, Serialize)]
struct SessionsResult {
    count: usize,
    group: usize,
    batch: usize,
    endpoints: usize,
    established: usize,
    failed: usize,
    failure_reasons: BTreeMap<String, u64>,
    ramp_s: f64,
    ramp_rate_per_s: f64,
    ramp_node_cpu_pct: f64,
    ramp_bench_cpu_pct: f64,
    ramp_udp_rcvbuf_drops: u64,
    ramp_node_socket_drops: u64,
    handshake_ms: Dist,
    events_received: u64,
    events_before_welcome: u64,
    events_out_of_order: u64,
    acks_sent: u64,
    error_msgs: u64,
    node_rss_base_mib: f64,
    node_rss_held_mib: f64,
    node_rss_peak_mib: f64,
    rss_per_session_kib: f64,
    hold_s: f64,
    hold_node_cpu_pct: f64,
    hold_node_socket_drops: u64,
    hold_bench_cpu_pct: f64,
    bench_rss_mib: f64,
    sampled: usize,
    pings_ok: u64,
    ping_ms: Dist,
    lost: u64,
    lost_reasons: BTreeMap<String, u64>,
    alive_at_end: usize,
    node_alive: bool,
    load_start: String,
    load_end: String,
    batches: Vec<BatchRow>,
}

fn endpoint() -> Result<quinn::Endpoint> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Room for a ramp batch of handshake packets; capped by net.core.rmem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>()?.into())?;
    let ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        s.into(),
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(ep)
}

async fn sessions(binary: &Path, a: &SessionsArgs) -> Result<SessionsResult> {
    let load_start = procfs::load_average();
    let ticks = procfs::clock_ticks();
    let mut node = Node::start(binary, Duration::from_secs(20))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_base = node.rss_kib();
    eprintln!(
        "node up (pid {}, quic {}), RSS {} KiB",
        node.pid, node.quic, rss_base
    );

    let t = Instant::now();
    let tokens: Vec<String> = (0..a.count)
        .map(|i| {
            let group = (a.group > 0).then(|| format!("g{}", i / a.group));
            node.token(&format!("u{i}"), Role::Officer, group.as_deref())
        })
        .collect::<Result<_>>()?;
    eprintln!(
        "minted {} tokens in {:.1} s",
        tokens.len(),
        t.elapsed().as_secs_f64()
    );

    let mut probe = ClientConfig::new(node.quic.to_string(), tokens[0].clone());
    probe.keep_alive = Duration::from_millis(a.keep_alive_ms);
    probe.idle_timeout = Duration::from_secs(10);
    let qcfg = client::pinned_quic_config(&probe)?;
    let eps: Vec<quinn::Endpoint> = (0..a.endpoints.max(1))
        .map(|_| endpoint())
        .collect::<Result<_>>()?;

    let stats = Arc::new(Stats::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Hold);
    let stride = (a.count / a.sample.max(1)).max(1);
    let mut sampled = 0usize;
    let mut hs_ms = Vec::with_capacity(a.count);
    let mut failed = 0usize;
    let mut failure_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut batches = Vec::new();
    let mut rss_peak = rss_base;

    let cpu_ramp0 = cpu_s(&node.pid, ticks);
    let me_ramp0 = cpu_s("self", ticks);
    let drops0 = udp_rcvbuf_errors();
    let node_drops0 = udp_socket_drops(node.quic.port());
    let ramp0 = Instant::now();
    let mut tokens = tokens.into_iter().enumerate();
    let mut opened = 0usize;
    while opened < a.count {
        let n = a.batch.min(a.count - opened);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (i, token) in tokens.by_ref().take(n) {
            let is_sample = i % stride == 0 && sampled < a.sample;
            if is_sample {
                sampled += 1;
            }
            tokio::spawn(session_task(
                eps[i % eps.len()].clone(),
                qcfg.clone(),
                node.quic,
                token,
                is_sample,
                stats.clone(),
                phase_rx.clone(),
                tx.clone(),
            ));
        }
        drop(tx);
        opened += n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.batch_timeout);
        let mut got = 0;
        let mut batch_failed = 0;
        while got < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Ok(ms))) => hs_ms.push(ms),
                Ok(Some(Err(e))) => {
                    batch_failed += 1;
                    let key: String = e.chars().take(80).collect();
                    *failure_reasons.entry(key).or_default() += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    let missing = n - got;
                    batch_failed += missing;
                    *failure_reasons
                        .entry("no welcome within --batch-timeout".into())
                        .or_default() += missing as u64;
                    break;
                }
            }
            got += 1;
        }
        failed += batch_failed;
        let rss = node.rss_kib();
        rss_peak = rss_peak.max(rss);
        let row = BatchRow {
            sessions: opened,
            elapsed_s: ramp0.elapsed().as_secs_f64(),
            node_rss_mib: rss as f64 / 1024.0,
            failed: batch_failed,
        };
        if opened.is_multiple_of((a.batch * 4).max(1000)) || opened == a.count || batch_failed > 0 {
            eprintln!(
                "{:>6} opened, {:>6} welcomed, {:>5} failed, {:6.1} s, node RSS {:7.1} MiB, events {}",
                opened,
                hs_ms.len(),
                failed,
                row.elapsed_s,
                row.node_rss_mib,
                stats.events.load(Ordering::Relaxed)
            );
        }
        batches.push(row);
        if !node.alive() {
            eprintln!("node exited during the ramp");
            break;
        }
        if batch_failed == n {
            eprintln!("a whole batch failed; stopping the ramp");
            break;
        }
    }
    let ramp_s = ramp0.elapsed().as_secs_f64();
    let ramp_cpu = cpu_s(&node.pid, ticks) - cpu_ramp0;
    let ramp_me = cpu_s("self", ticks) - me_ramp0;
    let ramp_drops = udp_rcvbuf_errors().saturating_sub(drops0);
    let ramp_node_drops = udp_socket_drops(node.quic.port()).saturating_sub(node_drops0);
    let established = hs_ms.len();
    eprintln!(
        "ramp: {established} sessions in {ramp_s:.1} s; settling {} s",
        a.settle
    );

    tokio::time::sleep(Duration::from_secs(a.settle)).await;
    let hold0 = Instant::now();
    let hold_drops0 = udp_socket_drops(node.quic.port());
    let cpu0 = cpu_s(&node.pid, ticks);
    let me0 = cpu_s("self", ticks);
    let mut rss_samples = Vec::new();
    while hold0.elapsed() < Duration::from_secs(a.hold) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = node.rss_kib();
        rss_peak = rss_peak.max(r);
        rss_samples.push(r);
    }
    let hold_s = hold0.elapsed().as_secs_f64();
    let hold_cpu = cpu_s(&node.pid, ticks) - cpu0;
    let hold_drops = udp_socket_drops(node.quic.port()).saturating_sub(hold_drops0);
    let me_cpu = cpu_s("self", ticks) - me0;
    let tail = &rss_samples[rss_samples.len().saturating_sub(5)..];
    let rss_held = if tail.is_empty() {
        node.rss_kib()
    } else {
        tail.iter().sum::<u64>() / tail.len() as u64
    };
    let bench_rss = procfs::rss_kib("self").unwrap_or(0);
    eprintln!(
        "hold: node CPU {:.1} % over {:.0} s, RSS {:.1} MiB",
        hold_cpu / hold_s * 100.0,
        hold_s,
        rss_held as f64 / 1024.0
    );

    // Ping a sample; every other session keeps counting losses.
    phase_tx.send_replace(Phase::Ping);
    let ping_deadline = Instant::now() + Duration::from_secs(10);
    let sampled_up = stats.sampled_up.load(Ordering::Relaxed);
    while stats.pings_ok.load(Ordering::Relaxed) < sampled_up && Instant::now() < ping_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A last look at losses after the pings.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lost = stats.lost.load(Ordering::Relaxed);
    let lost_reasons = stats
        .lost_reasons
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let node_alive = node.alive();
    phase_tx.send_replace(Phase::Stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ep in &eps {
        ep.close(0u32.into(), b"bench over");
    }

    let ping_ms = Dist::of(
        stats
            .ping_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    );
    let alive_at_end = established.saturating_sub(lost as usize);
    Ok(SessionsResult {
        count: a.count,
        group: a.group,
        batch: a.batch,
        endpoints: eps.len(),
        established,
        failed,
        failure_reasons,
        ramp_s,
        ramp_rate_per_s: established as f64 / ramp_s,
        ramp_node_cpu_pct: ramp_cpu / ramp_s * 100.0,
        ramp_bench_cpu_pct: ramp_me / ramp_s * 100.0,
        ramp_udp_rcvbuf_drops: ramp_drops,
        ramp_node_socket_drops: ramp_node_drops,
        handshake_ms: Dist::of(hs_ms),
        events_received: stats.events.load(Ordering::Relaxed),
        events_before_welcome: stats.before_welcome.load(Ordering::Relaxed),
        events_out_of_order: stats.out_of_order.load(Ordering::Relaxed),
        acks_sent: stats.acks.load(Ordering::Relaxed),
        error_msgs: stats.errors.load(Ordering::Relaxed),
        node_rss_base_mib: rss_base as f64 / 1024.0,
        node_rss_held_mib: rss_held as f64 / 1024.0,
        node_rss_peak_mib: rss_peak as f64 / 1024.0,
        rss_per_session_kib: if alive_at_end == 0 {
            f64::NAN
        } else {
            (rss_held.saturating_sub(rss_base)) as f64 / alive_at_end as f64
        },
        hold_s,
        hold_node_cpu_pct: hold_cpu / hold_s * 100.0,
        hold_node_socket_drops: hold_drops,
        hold_bench_cpu_pct: me_cpu / hold_s * 100.0,
        bench_rss_mib: bench_rss as f64 / 1024.0,
        sampled: sampled_up as usize,
        pings_ok: stats.pings_ok.load(Ordering::Relaxed),
        ping_ms,
        lost,
        lost_reasons,
        alive_at_end,
        node_alive,
        load_start,
        load_end: procfs::load_average(),
        batches,
    })
}

fn print_sessions(r: &SessionsResult) {
    println!("## sigbench sessions\n");
    println!(
        "{} sessions requested, {} per incident ({}), batches of {}, {} client endpoints; load average {} → {}\n",
        r.count,
        r.group,
        if r.group == 0 { "all in duty" } else { "groups" },
        r.batch,
        r.endpoints,
        r.load_start,
        r.load_end
    );
    println!("| established | failed | alive at end | ramp s | sessions/s | node / bench CPU % (ramp) | drops at node socket / system-wide (ramp) | handshake p50 / p99 / max ms | events rx |");
    println!("|---:|---:|---:|---:|---:|---|---:|---|---:|");
    println!(
        "| {} | {} | {} | {:.1} | {:.0} | {:.0} / {:.0} | {} / {} | {:.1} / {:.1} / {:.1} | {} |\n",
        r.established,
        r.failed,
        r.alive_at_end,
        r.ramp_s,
        r.ramp_rate_per_s,
        r.ramp_node_cpu_pct,
        r.ramp_bench_cpu_pct,
        r.ramp_node_socket_drops,
        r.ramp_udp_rcvbuf_drops,
        r.handshake_ms.p50,
        r.handshake_ms.p99,
        r.handshake_ms.max,
        r.events_received
    );
    println!("| node RSS base MiB | held MiB | peak MiB | KiB per session | node CPU % idle-holding ({:.0} s) | bench CPU % | pings ok / sampled | ping p50 / max ms | lost |", r.hold_s);
    println!("|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} / {} | {:.1} / {:.1} | {} |",
        r.node_rss_base_mib,
        r.node_rss_held_mib,
        r.node_rss_peak_mib,
        r.rss_per_session_kib,
        r.hold_node_cpu_pct,
        r.hold_bench_cpu_pct,
        r.pings_ok,
        r.sampled,
        r.ping_ms.p50,
        r.ping_ms.max,
        r.lost
    );
    println!(
        "\nnode socket drops while holding: {}. events: {} received, {} before their connection's welcome, {} with a seq not above an earlier one; {} acks sent",
        r.hold_node_socket_drops, r.events_received, r.events_before_welcome, r.events_out_of_order, r.acks_sent
    );
    if !r.failure_reasons.is_empty() {
        println!("\nhandshake failures: {:?}", r.failure_reasons);
    }
    if !r.lost_reasons.is_empty() {
        println!("\nconnections lost after welcome: {:?}", r.lost_reasons);
    }
    if !r.node_alive {
        println!("\n**the node exited**");
    }
}

// ---------------------------------------------------------------------------------------------
// fanout

#[derive(Debug, Serialize)]
struct FanoutResult {
    operators: usize,
    updates: usize,
    interval_ms: u64,
    connected_s: f64,
    connect_retries: u64,
    sent: usize,
    fanned_out: usize,
    expected: usize,
    delivered: usize,
    latency_ms: Dist,
    per_update_last_ms: Dist,
    node_cpu_pct: f64,
    bench_cpu_pct: f64,
    node_rss_mib: f64,
    load_start: String,
    load_end: String,
}

async fn fanout(binary: &Path, a: &FanoutArgs) -> Result<FanoutResult> {
    let load_start = procfs::load_average();
    let ticks = procfs::clock_ticks();
    let node = Node::start(binary, Duration::from_secs(20))?;
    const SENDER: &str = "off-1";
    let t0 = Instant::now();
    let retries = Arc::new(AtomicU64::new(0));
    let mut joins = Vec::new();
    for i in 0..a.operators {
        let token = node.token(&format!("op-{i}"), Role::Operator, None)?;
        let cfg = ClientConfig::new(node.quic.to_string(), token);
        let retries = retries.clone();
        // A connect that fails (e.g. an event overtook the welcome) is retried up to 3 times and
        // counted.
        joins.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                match client::connect(cfg.clone()).await {
                    Ok(c) => return Ok(c),
                    Err(e) if n < 3 => {
                        n += 1;
                        retries.fetch_add(1, Ordering::Relaxed);
                        eprintln!("operator connect failed ({e}); retrying");
                    }
                    Err(e) => return Err(e),
                }
            }
        }));
    }
    let mut ops = Vec::new();
    for j in joins {
        ops.push(j.await?.context("operator connect")?);
    }
    let (sender, mut sender_events) = client::connect(ClientConfig::new(
        node.quic.to_string(),
        node.token(SENDER, Role::Officer, None)?,
    ))
    .await?;
    let connected_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} operators and the officer connected in {connected_s:.1} s",
        a.operators
    );
    // The officer's own events (presence of operators) are drained and ignored.
    tokio::spawn(async move { while sender_events.next().await.is_some() {} });

    // Each operator records (update index, arrival) for the officer's positions.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut recorders = Vec::new();
    let mut clients = Vec::new();
    for (client, mut events) in ops {
        clients.push(client);
        let mut stop = stop_rx.clone();
        recorders.push(tokio::spawn(async move {
            let mut got: Vec<(usize, Instant)> = Vec::new();
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(ClientEvent::Event {
                            event: Event::Position { subject, pos, .. },
                            ..
                        }) => {
                            let at = Instant::now();
                            if subject.as_str() == SENDER {
                                if let Some(k) = pos.alt {
                                    got.push((k as usize, at));
                                }
                            }
                        }
                        Some(ClientEvent::Closed { reason, .. }) => {
                            eprintln!("an operator was closed: {reason}");
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            got
        }));
    }
    // Let the join/presence events settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cpu0 = cpu_s(&node.pid, ticks);
    let me0 = cpu_s("self", ticks);
    let w0 = Instant::now();
    let mut sent_at: Vec<Option<Instant>> = vec![None; a.updates];
    let mut tick = tokio::time::interval(Duration::from_millis(a.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (k, slot) in sent_at.iter_mut().enumerate() {
        tick.tick().await;
        let pos = Position {
            lat: 30.5 + k as f64 * 1e-5,
            lon: 114.3,
            alt: Some(k as f64),
            accuracy: Some(5.0),
            heading: None,
            speed: None,
            time: None,
        };
        let at = Instant::now();
        match sender.send(ClientMsg::Position { id: None, pos }) {
            Ok(()) => *slot = Some(at),
            Err(e) => eprintln!("position {k} not sent: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(a.drain)).await;
    let wall = w0.elapsed().as_secs_f64();
    let node_cpu = cpu_s(&node.pid, ticks) - cpu0;
    let me_cpu = cpu_s("self", ticks) - me0;
    let node_rss = node.rss_kib() as f64 / 1024.0;
    stop_tx.send_replace(true);

    let mut lat = Vec::new();
    let mut last_per_update: Vec<Option<f64>> = vec![None; a.updates];
    let mut seen = vec![false; a.updates];
    for r in recorders {
        for (k, at) in r.await? {
            let Some(Some(sent)) = sent_at.get(k) else {
                continue;
            };
            let ms = at.saturating_duration_since(*sent).as_secs_f64() * 1e3;
            lat.push(ms);
            seen[k] = true;
            let l = &mut last_per_update[k];
            *l = Some(l.map_or(ms, |x: f64| x.max(ms)));
        }
    }
    for c in &clients {
        c.close().await;
    }
    sender.close().await;
    let fanned_out = seen.iter().filter(|s| **s).count();
    let delivered = lat.len();
    Ok(FanoutResult {
        operators: a.operators,
        updates: a.updates,
        interval_ms: a.interval_ms,
        connected_s,
        connect_retries: retries.load(Ordering::Relaxed),
        sent: sent_at.iter().filter(|s| s.is_some()).count(),
        fanned_out,
        expected: fanned_out * a.operators,
        delivered,
        latency_ms: Dist::of(lat),
        per_update_last_ms: Dist::of(last_per_update.into_iter().flatten().collect()),
        node_cpu_pct: node_cpu / wall * 100.0,
        bench_cpu_pct: me_cpu / wall * 100.0,
        node_rss_mib: node_rss,
        load_start,
        load_end: procfs::load_average(),
    })
}

fn print_fanout(r: &FanoutResult) {
    println!("## sigbench fanout\n");
    println!(
        "{} operators, {} updates every {} ms; connected in {:.1} s ({} connect retries); load average {} → {}\n",
        r.operators, r.updates, r.interval_ms, r.connected_s, r.connect_retries, r.load_start, r.load_end
    );
    println!("| sent | fanned out | delivered / expected | p50 ms | p90 ms | p99 ms | max ms | last operator per update p50 / p99 / max ms | node CPU % | bench CPU % |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    let d = &r.latency_ms;
    let l = &r.per_update_last_ms;
    println!(
        "| {} | {} | {} / {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} | {:.1} | {:.1} |",
        r.sent, r.fanned_out, r.delivered, r.expected, d.p50, d.p90, d.p99, d.max, l.p50, l.p99, l.max, r.node_cpu_pct, r.bench_cpu_pct
    );
}

// ---------------------------------------------------------------------------------------------
// orders

#[derive(Debug, Serialize)]
struct OrdersResult {
    clients: usize,
    seconds: f64,
    stored: u64,
    orders_per_s: f64,
    /// Time from sending the request to its 201, ms.
    ack_ms: Dist,
    errors: u64,
    /// The node's CPU time over the run, seconds.
    node_cpu_s: f64,
    load_start: String,
}

async fn orders(binary: &Path, a: &OrdersArgs) -> Result<OrdersResult> {
    let load_start = procfs::load_average();
    let ticks = procfs::clock_ticks();
    let node = Node::start(binary, Duration::from_secs(20))?;
    // The addressee must be known to the node: it holds a session for the whole run.
    let (_addressee, mut events) = client::connect(ClientConfig::new(
        node.quic.to_string(),
        node.token("off-1", Role::Officer, None)?,
    ))
    .await?;
    tokio::spawn(async move { while events.next().await.is_some() {} });
    let token = node.token("cmd-1", Role::Commander, None)?;
    let http = node.http;
    let cpu0 = cpu_s(&node.pid, ticks);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(a.seconds);
    let mut workers = Vec::new();
    for c in 0..a.clients {
        let token = token.clone();
        workers.push(std::thread::spawn(move || {
            let auth = format!("Bearer {token}");
            let (mut acks, mut errors) = (Vec::new(), 0u64);
            let mut i = 0u64;
            while Instant::now() < until {
                let body = format!(
                    r#"{{"id":"b{c}-{i}","incident":"duty","to":"off-1","text":"bench order {i}"}}"#
                );
                i += 1;
                let sent = Instant::now();
                match http::request(
                    http,
                    "POST",
                    "/api/orders",
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                    Duration::from_secs(10),
                ) {
                    Ok(r) if r.status == 201 => acks.push(sent.elapsed().as_secs_f64() * 1e3),
                    _ => errors += 1,
                }
            }
            (acks, errors)
        }));
    }
    let (mut acks, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (a, e) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        acks.extend(a);
        errors += e;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let node_cpu_s = cpu_s(&node.pid, ticks) - cpu0;
    let stored = acks.len() as u64;
    Ok(OrdersResult {
        clients: a.clients,
        seconds,
        stored,
        orders_per_s: stored as f64 / seconds,
        ack_ms: Dist::of(acks),
        errors,
        node_cpu_s,
        load_start,
    })
}

fn print_orders(r: &OrdersResult) {
    println!("| clients | seconds | orders stored | **orders/s** | ack p50 / p99 / max ms | errors | node CPU s | load |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} | {} | **{:.0}** | {:.2} / {:.2} / {:.2} | {} | {:.2} | {} |",
        r.clients,
        r.seconds,
        r.stored,
        r.orders_per_s,
        r.ack_ms.p50,
        r.ack_ms.p99,
        r.ack_ms.max,
        r.errors,
        r.node_cpu_s,
        r.load_start
    );
}
