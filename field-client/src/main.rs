//! `field-client`: the field officer's tablet client (camera and mic out over WebRTC, orders,
//! positions, SOS). Its commands land with the field-client issue; this build only answers
//! `--help` and `--version` and says so, rather than pretending to work.

use clap::Parser;

/// yiwang field client for rugged tablets.
///
/// This version has no commands yet: publishing, orders, positions and SOS arrive with the
/// field-client release. Until then, publish from a tablet's browser at the node's
/// /publish.html, or with any WHIP encoder (see docs/api.md).
#[derive(Parser, Debug)]
#[command(name = "field-client", version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _ = Cli::parse();
    eprintln!("field-client: no commands in this version; see `field-client --help`");
    std::process::ExitCode::from(2)
}
