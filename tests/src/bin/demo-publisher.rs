//! `demo-publisher`: publishes a GStreamer test pattern to a yiwang node over WHIP until Ctrl-C.
//!
//! ```text
//! demo-publisher --url http://127.0.0.1:8080 --stream cam1 --token "$TOKEN" --codec vp8
//! ```
//!
//! Prints `publishing STREAM` on stdout once the node accepted the offer; on Ctrl-C (or
//! SIGTERM) it `DELETE`s the session. Logs go to stderr (`RUST_LOG`, default `info`).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use yiwang_tests::gst_peer::{PublishOptions, VideoCodec, WhipPublisher};

/// Publish a live test pattern (bouncing ball + optional sine tone) to a yiwang node via WHIP.
#[derive(Parser, Debug)]
#[command(name = "demo-publisher", version)]
struct Args {
    /// Base URL of the node's HTTP endpoint, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "YIWANG_URL")]
    url: String,
    /// Stream name: the offer goes to {url}/whip/{stream}.
    #[arg(long)]
    stream: String,
    /// Bearer token (e.g. from `media-server token --sub cam1 --role officer`).
    #[arg(long, env = "YIWANG_TOKEN")]
    token: String,
    /// Video codec: h264 or vp8.
    #[arg(long, default_value = "h264")]
    codec: VideoCodec,
    /// Frame width in pixels.
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 480)]
    height: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Video bitrate in kbit/s.
    #[arg(long, default_value_t = 1000)]
    bitrate_kbps: u32,
    /// Do not send the Opus sine tone.
    #[arg(long)]
    no_audio: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let opts = PublishOptions {
        codec: args.codec,
        width: args.width,
        height: args.height,
        fps: args.fps,
        audio: !args.no_audio,
        bitrate_kbps: args.bitrate_kbps,
        via: None,
    };
    let publisher = WhipPublisher::start(&args.url, &args.stream, &args.token, opts)
        .await
        .context("WHIP publish failed")?;
    println!("publishing {}", args.stream);
    std::io::stdout().flush()?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let failure = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
            _ = tick.tick() => {
                if let Some(e) = publisher.error() {
                    break Some(e);
                }
            }
        }
    };
    tracing::info!(frames = publisher.frames_sent(), "stopping");
    publisher.stop().await.context("ending the WHIP session")?;
    match failure {
        Some(e) => anyhow::bail!("pipeline error: {e}"),
        None => Ok(()),
    }
}
