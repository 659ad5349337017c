//! `drone-bridge`: MAVLink telemetry and the drone camera into the mesh, signed commands back.
//! Its commands land with the drone-bridge issue; this build only answers `--help` and
//! `--version` and says so, rather than pretending to work.

use clap::Parser;

/// yiwang drone bridge (MAVLink ↔ mesh).
///
/// This version has no commands yet: the MAVLink link, telemetry, video ingest and the command
/// gate arrive with the drone-bridge release. Until then, a drone camera can be published with
/// any WHIP encoder (see docs/api.md).
#[derive(Parser, Debug)]
#[command(name = "drone-bridge", version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _ = Cli::parse();
    eprintln!("drone-bridge: no commands in this version; see `drone-bridge --help`");
    std::process::ExitCode::from(2)
}
