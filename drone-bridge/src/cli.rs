//! The command line: parsing (clap), exit codes, start-up order (node first, so a refused token
//! or an unreachable node is said at once; then the MAVLink endpoints), then [`crate::mesh::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::error::ErrorKind;
use clap::Parser;
use serde_json::json;
use signaling::auth::Role;
use signaling::client::{connect, load_token, ClientConfig};

use crate::core;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::link::{self, MavlinkOptions};
use crate::mesh::{self, emit};
use crate::signing::SigningKey;
use crate::video::VideoSource;

/// yiwang drone bridge: MAVLink telemetry and the drone camera into the mesh, signed and
/// authorised commands back out.
///
/// Sits beside the ground station: speaks MAVLink 1/2 to the vehicles on --mavlink, routes
/// everything transparently to the ground station on --gcs (by system/component id, as
/// mavlink-router does), reports each vehicle's telemetry (at most --telemetry-hz per vehicle)
/// and link state to the node as the drone SUBJECT-droneSYSID, publishes its camera, and carries
/// out the commands the node forwards (rtl, hold, land, guided), answering each.
///
/// The token must be a pilot's (its drones: SUBJECT-drone*, or those its `drones` claim lists) or
/// an admin's.
///
/// Prints JSON lines on stdout: started, connected, drone_link, command, ack, video, publishing,
/// stats, warning, closed. Runs until SIGINT or SIGTERM.
///
/// Exit codes: 0 stopped by a signal; 1 bad command line, an endpoint or file that cannot be
/// opened, or a node that cannot be reached; 2 the node refused the token or ended the session.
#[derive(Debug, Parser)]
#[command(name = "drone-bridge", version, max_term_width = 100)]
pub struct Cli {
    /// The vehicles' MAVLink link: udpin:HOST:PORT (listen; answer whoever sends),
    /// udpout:HOST:PORT (send to), tcpin:HOST:PORT (accept), tcpout:HOST:PORT (connect,
    /// reconnecting), serial:PATH:BAUD. Several vehicles may share it.
    #[arg(long, value_name = "ENDPOINT")]
    pub mavlink: Endpoint,
    /// The node's QUIC signaling address (its --quic listener).
    #[arg(long, env = "YIWANG_NODE", value_name = "HOST:PORT")]
    pub node: String,
    /// Bearer token. Visible to other users of this machine in the process list: prefer
    /// --token-file or YIWANG_TOKEN.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the bearer token. Without --token or --token-file: $YIWANG_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A ground station's MAVLink endpoint (same syntax as --mavlink, e.g. udpin:127.0.0.1:14550
    /// for QGroundControl or MAVProxy on this machine). Every frame is routed between the two
    /// links unless it is addressed to a system on the link it came from or to the bridge itself
    /// (system 254). With --signing-key the ground station must sign with the same key: its
    /// unsigned or wrongly signed frames are counted and never reach a vehicle. Without a key,
    /// whoever reaches this endpoint commands the vehicle: keep it on loopback.
    #[arg(long, value_name = "ENDPOINT")]
    pub gcs: Option<Endpoint>,
    /// The camera: rtsp://… (UDP, else TCP-interleaved) or udp://PORT (RTP/H.264), published
    /// for the first vehicle seen, without re-encoding. Without it: the URI a vehicle announces
    /// in VIDEO_STREAM_INFORMATION.
    #[arg(long, value_name = "URI")]
    pub video: Option<VideoSource>,
    /// The drone camera's hardware profile (hw-profiles, kind drone-camera): which codecs are
    /// ingested and whether H.265 is transcoded to H.264 (drone-rtsp-h265, drone-jetson-h265).
    /// The default forwards H.264 untouched and takes nothing else.
    #[arg(long, value_name = "NAME", default_value = "drone-rtsp-h264")]
    pub profile: String,
    /// The link class (hw-profiles) whose bitrate a transcode encodes at.
    #[arg(long, value_name = "CLASS", default_value = "wifi")]
    pub link: String,
    /// MAVLink 2 signing: a file holding the 32-byte secret as 64 hexadecimal characters (the
    /// key pymavlink's setup_signing and the autopilot use). The bridge's frames are signed;
    /// frames from either link that are unsigned, wrongly signed or replayed are counted and
    /// dropped.
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Record every accepted frame of both links as a .tlog (8-byte big-endian Unix
    /// microseconds, then the frame) in this directory, one file per run.
    #[arg(long, value_name = "DIR")]
    pub tlog: Option<PathBuf>,
    /// A vehicle without HEARTBEAT for this many seconds is reported "link lost".
    #[arg(long, value_name = "SECS", default_value_t = 3.0, value_parser = positive_secs)]
    pub heartbeat_timeout: f64,
    /// At most this many telemetry reports per vehicle per second to the node.
    #[arg(long, value_name = "HZ", default_value_t = 5.0, value_parser = rate_hz)]
    pub telemetry_hz: f64,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && (0.1..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("use 0.1 to 3600 seconds".to_owned())
    }
}

fn rate_hz(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && (0.1..=50.0).contains(&v) {
        Ok(v)
    } else {
        Err("use 0.1 to 50 per second".to_owned())
    }
}

/// Parses the command line and runs; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logs();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drone-bridge: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drone-bridge: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad command line")
        .trim();
    eprintln!("drone-bridge: {}", first.trim_start_matches("error: "));
    eprintln!("drone-bridge: see drone-bridge --help");
    ExitCode::from(1)
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rtc=error,webrtc=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the bridge with `cli`'s options.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let signing = match &cli.signing_key {
        Some(p) => Some(
            SigningKey::from_file(p).map_err(|e| Error::Usage(format!("--signing-key: {e}")))?,
        ),
        None => None,
    };
    let plans = camera_plans(&cli.profile, &cli.link)?;
    let token = load_token(cli.token.clone(), cli.token_file.as_deref())
        .map_err(|e| Error::Usage(e.to_string()))?;
    let (client, events) = connect(ClientConfig::new(cli.node.clone(), token))
        .await
        .map_err(|e| Error::connecting(&cli.node, e))?;
    let session = client.session();
    if !matches!(session.role, Role::Pilot | Role::Admin) {
        client.close().await;
        return Err(Error::Refused {
            code: None,
            message: format!(
                "the token is a {}'s; a drone bridge needs a pilot's or an admin's",
                session.role
            ),
        });
    }
    let signed = signing.is_some();
    let opts = MavlinkOptions {
        mavlink: cli.mavlink.clone(),
        gcs: cli.gcs.clone(),
        tlog: cli.tlog.clone(),
        core: core::Config {
            heartbeat_timeout: Duration::from_secs_f64(cli.heartbeat_timeout),
            telemetry_interval: Duration::from_secs_f64(1.0 / cli.telemetry_hz),
            signing,
            ..core::Config::default()
        },
    };
    let bridge = match link::start(opts).await {
        Ok(b) => b,
        Err(e) => {
            client.close().await;
            return Err(Error::Local(e.to_string()));
        }
    };
    if let (false, Some(a)) = (signed, bridge.gcs_local) {
        if !a.ip().is_loopback() {
            tracing::warn!(
                "--gcs listens on {a} without --signing-key: anyone who reaches it can command \
                 the vehicle; bind it to 127.0.0.1 or sign"
            );
        }
    }
    emit(&json!({
        "kind": "started",
        "subject": session.subject.as_str(),
        "node": session.node.as_str(),
        "mavlink": bridge.mavlink_local.map(|a| a.to_string()).unwrap_or_else(|| cli.mavlink.to_string()),
        "gcs": bridge.gcs_local.map(|a| a.to_string()).or_else(|| cli.gcs.as_ref().map(|g| g.to_string())),
        "tlog": bridge.tlog.as_ref().map(|p| p.display().to_string()),
        "signing": signed,
        "unix_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    }));
    mesh::run(
        client,
        events,
        cli.node.clone(),
        bridge,
        cli.video.clone(),
        plans,
    )
    .await
}

/// The camera ingest plans of `--profile` over `--link`. A bad profile or link is a usage error;
/// GStreamer missing only means no video (said once, as a warning line).
fn camera_plans(profile: &str, link: &str) -> Result<Vec<crate::video::Plan>, Error> {
    if let Err(e) = gstreamer::init() {
        emit(&json!({"kind": "warning", "message": format!("no video: GStreamer: {e}")}));
        return Ok(Vec::new());
    }
    let has_element = |name: &str| gstreamer::ElementFactory::find(name).is_some();
    crate::video::plans(profile, link, &has_element)
        .map_err(|e| Error::Usage(format!("--profile {profile} --link {link}: {e}")))
}
