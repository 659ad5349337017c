//! The command line: parsing (clap), exit codes, and dispatch to [`crate::run`] and
//! [`crate::office`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use signaling::client::load_token;
use signaling::{IncidentId, Subject};

use crate::error::Error;
use crate::media::{MediaOptions, Source};
use crate::office::{self, Command as OfficeCommand, Target};
use crate::output::Output;
use crate::position::PositionSource;
use crate::run::{self, RunOptions};

/// yiwang field client for rugged tablets.
///
/// Talks to a yiwang node over its signaling protocol (QUIC, the node's `--quic` port): takes
/// orders, answers them, chats, reports positions, raises SOS. `run` stays connected and prints
/// what arrives; the other commands do one thing and exit.
///
/// Exit codes: 0 done; 1 bad command line, or the node cannot be reached; 2 the node refused
/// (token refused or revoked, or the request answered with an error).
///
/// `run` also publishes camera and microphone (or a test pattern) through the node, following
/// the link's capacity; `watch` plays a stream (a drone feed) and reports its frame rate;
/// `profiles` shows what this machine would encode with.
#[derive(Debug, Parser)]
#[command(name = "field-client", version, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The node's QUIC signaling address (its `--quic` listener).
    #[arg(long, env = "YIWANG_NODE", value_name = "HOST:PORT")]
    pub node: String,
    /// Bearer token. Visible to other users of this machine in the process list: prefer
    /// --token-file or YIWANG_TOKEN.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the bearer token. Without --token or --token-file: $YIWANG_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON lines on stdout (one object per line, with a "kind" member).
    #[arg(long)]
    pub json: bool,
}

/// Options of the one-shot commands.
#[derive(Debug, Args)]
pub struct OneShot {
    /// Give up after this many seconds without an answer.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// Options of the commands that store a message at the node.
#[derive(Debug, Args)]
pub struct Delivery {
    /// Message id (default: a fresh one, printed with the result). Repeating a command with the
    /// same id is stored once: use it to retry after a timeout.
    #[arg(long, value_name = "ID")]
    pub msg_id: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
#[allow(missing_docs)] // the flattened option groups are documented on their types
pub enum Command {
    /// Stay connected: print orders, chat and alerts as they arrive, report positions. Runs until
    /// SIGINT or SIGTERM.
    Run(RunArgs),
    /// Play a stream: subscribe, decode, and print frames per second and picture size each
    /// second. Runs until SIGINT or SIGTERM, or for --seconds.
    Watch {
        /// The stream name (see the node's catalog, e.g. off-12 or pilot-3-drone1), or
        /// NODE/STREAM for a stream published at another node of the province (pulled over the
        /// trunks, e.g. county-7/pilot-3-drone1).
        #[arg(value_parser = |s: &str| signaling::StreamName::parse_local_or_remote(s))]
        stream: signaling::StreamName,
        /// Simulcast layer: low, mid, high or auto (the node picks by bandwidth).
        #[arg(long, value_name = "LAYER", value_parser = ["low", "mid", "high", "auto"])]
        layer: Option<String>,
        /// The tallest layer wanted, in rows (instead of --layer).
        #[arg(long, value_name = "ROWS", conflicts_with = "layer", value_parser = clap::value_parser!(u32).range(16..=4320))]
        max_height: Option<u32>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
        seconds: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// List the orders addressed to you, oldest first, with their latest state.
    Orders {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        one_shot: OneShot,
    },
    /// Accept an order.
    Accept {
        /// The order id (ord-N).
        order: String,
        /// Minutes until you are there.
        #[arg(long, value_name = "MIN", value_parser = clap::value_parser!(u32).range(0..=10080))]
        eta: Option<u32>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        one_shot: OneShot,
        #[command(flatten)]
        delivery: Delivery,
    },
    /// Decline an order, saying why.
    Decline {
        /// The order id (ord-N).
        order: String,
        /// Why (required, at most 1000 characters).
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        one_shot: OneShot,
        #[command(flatten)]
        delivery: Delivery,
    },
    /// Report an accepted order done.
    Done {
        /// The order id (ord-N).
        order: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        one_shot: OneShot,
        #[command(flatten)]
        delivery: Delivery,
    },
    /// Send a chat message to an incident (default: duty, joined if needed) or to one person.
    Say {
        /// The message (several words are joined with spaces).
        #[arg(required = true, value_name = "TEXT")]
        text: Vec<String>,
        /// The incident to chat in.
        #[arg(long, value_name = "ID", conflicts_with = "to")]
        incident: Option<IncidentId>,
        /// A person (token subject) to message directly.
        #[arg(long, value_name = "SUBJECT")]
        to: Option<Subject>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        one_shot: OneShot,
        #[command(flatten)]
        delivery: Delivery,
    },
    /// List the shipped hardware profiles and link classes, and what this machine would pick:
    /// the encoder, and why each better one was skipped. Needs no node.
    Profiles {
        /// Resolve this tablet profile instead of the one picked for this machine.
        #[arg(long, value_name = "PROFILE")]
        profile: Option<String>,
        /// Link class to resolve for (default: wifi).
        #[arg(long, value_name = "LINK")]
        link: Option<String>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Raise an SOS to your incidents' members and every commander.
    Sos {
        /// What is happening.
        #[arg(long, value_name = "TEXT")]
        text: Option<String>,
        /// Only this incident (default: every incident you are in).
        #[arg(long, value_name = "ID")]
        incident: Option<IncidentId>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        one_shot: OneShot,
        #[command(flatten)]
        delivery: Delivery,
    },
}

/// `run`'s options.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub common: Common,
    /// Hardware profile (hw-profiles tablet name); default: the first tablet whose hardware
    /// encoder is installed, else tablet-software.
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Link class (wired, wifi, 4g-good, 4g-poor, satellite, mesh-radio): sets the bitrate and
    /// Opus settings. Default: wifi.
    #[arg(long, value_name = "LINK")]
    pub link: Option<String>,
    /// What to publish: camera (v4l2src and the default microphone), test (test pattern with a
    /// time code that `watch` reads for latency, and ticks) or file:PATH (played once).
    #[arg(long, value_name = "SOURCE", default_value = "camera")]
    pub source: Source,
    /// Publish video only.
    #[arg(long)]
    pub no_audio: bool,
    /// Capture size and rate, WIDTHxHEIGHT@FPS (simulcast layers are scaled from it).
    #[arg(long, value_name = "WxH@FPS", default_value = "640x480@30")]
    pub video: crate::media::Picture,
    /// Where positions come from: fixed:LAT,LON (every second), nmea:PATH (NMEA 0183 RMC/GGA
    /// from a file, device or FIFO), gpsd (localhost:2947) or gpsd:HOST:PORT.
    #[arg(long, value_name = "SOURCE")]
    pub position: Option<PositionSource>,
}

/// Parses the command line and runs the command; the process's exit code.
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
            eprintln!("field-client: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // A blocked read of a FIFO must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("field-client: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `--help` and `--version` go to stdout with code 0; anything else is a one-line message on
/// stderr with code 1.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    eprintln!("field-client: {}", one_line(&e.render().to_string()));
    ExitCode::from(1)
}

/// Clap's message up to its usage block, on one line, pointing at `--help`.
fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line).to_owned());
        }
    }
    format!("{} (see --help)", parts.join(" "))
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rtc's DTLS warns on every handshake that it has no server name, and its interceptor
        // registry that congestion control and the defaults both add a TWCC receiver: noise.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rtc_dtls::config=error,rtc_interceptor::registry=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn target(common: &Common) -> Result<Target, Error> {
    let token = load_token(common.token.clone(), common.token_file.as_deref())
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(Target {
        node: common.node.clone(),
        token,
    })
}

/// Runs a parsed command line.
pub async fn dispatch(cli: Cli) -> Result<(), Error> {
    let secs = |o: &OneShot| Duration::from_secs(o.timeout);
    let (common, cmd, one_shot, delivery) = match cli.command {
        Command::Run(args) => {
            let out = Output::new(args.common.json);
            let opts = RunOptions {
                media: MediaOptions {
                    source: args.source,
                    audio: !args.no_audio,
                    profile: args.profile,
                    link: args.link,
                    picture: Some(args.video),
                },
                position: args.position,
            };
            return run::run(&target(&args.common)?, out, opts).await;
        }
        Command::Watch {
            stream,
            layer,
            max_height,
            seconds,
            common,
        } => {
            let out = Output::new(common.json);
            let opts = crate::watch::WatchOptions {
                stream,
                layer,
                max_height,
                seconds,
            };
            return crate::watch::watch(&target(&common)?, out, opts).await;
        }
        Command::Profiles {
            profile,
            link,
            json,
        } => {
            return crate::media::print_profiles(profile.as_deref(), link.as_deref(), json);
        }
        Command::Orders { common, one_shot } => {
            let out = Output::new(common.json);
            return office::list_orders(&target(&common)?, out, secs(&one_shot)).await;
        }
        Command::Accept {
            order,
            eta,
            common,
            one_shot,
            delivery,
        } => (
            common,
            OfficeCommand::Accept {
                order,
                eta_min: eta,
            },
            one_shot,
            delivery,
        ),
        Command::Decline {
            order,
            reason,
            common,
            one_shot,
            delivery,
        } => (
            common,
            OfficeCommand::Decline { order, reason },
            one_shot,
            delivery,
        ),
        Command::Done {
            order,
            common,
            one_shot,
            delivery,
        } => (common, OfficeCommand::Done { order }, one_shot, delivery),
        Command::Say {
            text,
            incident,
            to,
            common,
            one_shot,
            delivery,
        } => (
            common,
            OfficeCommand::Say {
                text: text.join(" "),
                incident,
                to,
            },
            one_shot,
            delivery,
        ),
        Command::Sos {
            text,
            incident,
            common,
            one_shot,
            delivery,
        } => (
            common,
            OfficeCommand::Sos { text, incident },
            one_shot,
            delivery,
        ),
    };
    let out = Output::new(common.json);
    office::one_shot(
        &target(&common)?,
        out,
        cmd,
        delivery.msg_id,
        secs(&one_shot),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        // Independent of YIWANG_NODE: the order id is missing either way.
        let e = Cli::try_parse_from(["field-client", "accept", "--node", "n:1"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("<ORDER>") && line.ends_with("(see --help)"),
            "{line}"
        );
    }

    #[test]
    fn watch_takes_a_local_or_a_remote_stream() {
        let stream =
            |s: &str| match Cli::try_parse_from(["field-client", "watch", "--node", "n:1", s])
                .map(|c| c.command)
            {
                Ok(Command::Watch { stream, .. }) => Ok(stream),
                Ok(_) => unreachable!(),
                Err(e) => Err(one_line(&e.render().to_string())),
            };
        assert_eq!(stream("off-12").unwrap().as_str(), "off-12");
        let remote = stream("county-7/pilot-3-drone1").unwrap();
        assert_eq!(remote.split_remote(), Some(("county-7", "pilot-3-drone1")));
        assert!(stream("a/b/c")
            .unwrap_err()
            .contains("reserved for the cascade"));
        assert!(stream("bad node/x").unwrap_err().contains("node id"));
    }
}
