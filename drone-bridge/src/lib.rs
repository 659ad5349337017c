//! `drone-bridge`: MAVLink telemetry and the drone camera into the yiwang mesh, signed and
//! authorised commands back out.
//!
//! The sans-IO core (no sockets, no clock):
//! - [`frame`]: MAVLink 1/2 framing (decoder fed arbitrary chunks, encoder);
//! - [`signing`]: MAVLink 2 signing and verification;
//! - [`telemetry`]: messages → the mesh's `Telemetry`;
//! - [`command`]: the allow-list and what each command sends;
//! - [`core`]: routing, link supervision, telemetry rate, command retries, with `now` passed in.
//!
//! The tokio shell (feature `app`, on by default; without it the crate is the core above plus
//! [`tlog`], as the fuzz targets use it):
//! - [`endpoint`]: `udpin:`, `udpout:`, `tcpin:`, `tcpout:`, `serial:` links;
//! - [`tlog`]: `.tlog` recording;
//! - [`link`]: the MAVLink half as a task (endpoints + tlog + core), driven through a handle;
//! - [`mesh`]: the signaling half (telemetry, link, acks out; commands in);
//! - [`video`]: the camera published without re-encoding;
//! - [`cli`]: the command line; [`error`]: errors and exit codes.
//!
//! What it must not touch: the node's side (it depends on `signaling`'s client only), and it
//! never decides who may command a drone (the node does; the bridge only refuses what it cannot
//! do).
#![warn(missing_docs)]

#[cfg(feature = "app")]
pub mod cli;
pub mod command;
pub mod core;
#[cfg(feature = "app")]
pub mod endpoint;
#[cfg(feature = "app")]
pub mod error;
pub mod frame;
#[cfg(feature = "app")]
pub mod link;
#[cfg(feature = "app")]
pub mod mesh;
pub mod signing;
pub mod telemetry;
pub mod tlog;
#[cfg(feature = "app")]
pub mod video;
