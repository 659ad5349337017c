//! `yiwang-relay`: a UDP relay that impairs traffic like a bad field link (loss, bursts, delay,
//! jitter, reordering, rate cap), for labs and tests where `tc netem` is not available. A thin
//! CLI around [`netem::UdpRelay`]; the model lives in [`netem`].
//!
//! stdout carries exactly one line, `relay listen=IP:PORT`, once the listen socket is bound; logs
//! (stats every 5 s) go to stderr. Stops on Ctrl-C or SIGTERM.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use netem::{ImpairConfig, RelayStats, UdpRelay};

const SPEC_HELP: &str = "\
SPEC syntax: comma-separated key=value items, each key at most once, e.g.
    loss=5%,delay=50ms,jitter=20ms,burst=0.01/0.3/0.8,reorder=1%/10ms,rate=300kbit,queue=64k,seed=7

  loss=P            independent loss probability
  burst=PE/PX[/PL]  Gilbert-Elliott bursts: enter the bad state with probability PE per
                    datagram, leave it with PX (mean burst 1/PX datagrams), lose PL of the
                    datagrams sent in it (default 100%); or off
  delay=D           one-way delay
  jitter=D          uniform +-D around the delay (never reorders on its own)
  reorder=P[/GAP]   hold a datagram back by GAP (default 10ms) with probability P, so later
                    ones overtake it
  rate=R            bottleneck rate: bit, kbit, mbit, gbit (powers of 1000), or off
  queue=B           bottleneck queue in bytes: plain, k/kib, m/mib (powers of 1024; default
                    64k); tail-drop when full (only with rate)
  seed=N            seed of the random stream (same seed, same traffic = same losses)

  P: fraction (0.05) or percentage (5%). D: number with ns, us, ms or s (50ms, 1.5s), or 0.
  An empty SPEC, 'none' or 'perfect' is a perfect link.

Order in the model: bottleneck queue, then loss on the air, then delay/jitter, then reordering.
The relay rewrites source addresses like a NAT: the upstream sees one relay address per client.
To bridge network namespaces, run it in a namespace that can reach both sides
(e.g. `ip netns exec lab yiwang-relay --listen 10.0.1.1:8443 --upstream 10.0.2.2:8443 ...`).";

#[derive(Parser, Debug)]
#[command(
    name = "yiwang-relay",
    version,
    about = "UDP relay that impairs traffic like a bad field link (netem-like, in user space)",
    long_about = "UDP relay that impairs traffic like a bad field link (netem-like, in user space).\n\n\
        Datagrams sent to --listen are impaired (up direction) and forwarded to --upstream from a \
        per-client socket; replies are impaired (down direction) and sent back to the client. \
        Prints exactly one line on stdout once bound: `relay listen=IP:PORT`. Stats go to stderr \
        every 5 s. Stops on Ctrl-C or SIGTERM.",
    after_long_help = SPEC_HELP,
    after_help = "Run with --help for the SPEC syntax."
)]
struct Cli {
    /// UDP address clients send to (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// UDP address everything is relayed to.
    #[arg(long, value_name = "ADDR")]
    upstream: SocketAddr,
    /// Impairment of the client → upstream direction (overrides --both).
    #[arg(long, value_name = "SPEC")]
    up: Option<ImpairConfig>,
    /// Impairment of the upstream → client direction (overrides --both).
    #[arg(long, value_name = "SPEC")]
    down: Option<ImpairConfig>,
    /// Impairment of both directions (each gets its own random stream).
    #[arg(long, value_name = "SPEC")]
    both: Option<ImpairConfig>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let up = cli.up.or_else(|| cli.both.clone()).unwrap_or_default();
    let down = cli.down.or(cli.both).unwrap_or_default();
    tracing::info!(up = %up, down = %down, "relay: starting");

    let relay = UdpRelay::start(cli.listen, cli.upstream, up, down)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "relay listen={}", relay.local_addr())?;
        stdout.flush()?;
    }

    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.tick().await;
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = every.tick() => log_stats(&relay.stats()),
        }
    }
    let last = relay.stats();
    relay.shutdown().await;
    log_stats(&last);
    tracing::info!("relay: stopped");
    Ok(())
}

fn log_stats(s: &RelayStats) {
    for (dir, d) in [("up", s.up), ("down", s.down)] {
        tracing::info!(
            dir,
            pushed = d.pushed,
            delivered = d.delivered,
            dropped_random = d.dropped_random,
            dropped_burst = d.dropped_burst,
            dropped_queue = d.dropped_queue,
            reordered = d.reordered,
            "relay: stats"
        );
    }
    tracing::info!(
        clients = s.clients,
        send_errors = s.send_errors,
        "relay: stats"
    );
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay: cannot watch SIGTERM, Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
