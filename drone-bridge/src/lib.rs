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
//! What it must not touch: the node's side (it depends on `signaling`'s client only), and it
//! never decides who may command a drone (the node does; the bridge only refuses what it cannot
//! do).
#![warn(missing_docs)]

pub mod command;
pub mod core;
pub mod frame;
pub mod signing;
pub mod telemetry;
