//! `field-client`: the field officer's tablet client of yiwang.
//!
//! A session with the node over QUIC ([`signaling::client`]): orders, chat, SOS and positions,
//! and, in `run`, camera and microphone published over WebRTC ([`media`]). The binary (`src/main.rs`) only calls [`cli::main`].
//!
//! - [`cli`]: the command line, exit codes, dispatch.
//! - [`run`]: `field-client run`, the long-running client.
//! - [`office`]: the one-shot commands (`orders`, `accept`, `decline`, `done`, `say`, `sos`).
//! - [`mailbox`]: the read-only session `orders` uses to read the whole mailbox.
//! - [`position`], [`nmea`], [`gpsd`]: where positions come from and how they are reported.
//! - [`media`]: the publisher (GStreamer capture and encode, WebRTC, `publish` over signaling).
//! - [`watch`]: `field-client watch STREAM`, the viewer (WebRTC in, GStreamer decode, fps and
//!   latency lines).
//! - [`output`]: text and JSON lines. [`error`]: errors and exit codes.
//!
//! The application needs the feature `app` (on by default). Without it the crate is the pure
//! position parsers only, [`nmea`], [`gpsd::parse_tpv`] and [`position::Fix`], as the fuzz
//! targets use them.
//!
//! What it must not touch: the node's side. It depends on `signaling` with its default `client`
//! feature only, never on `media-server` or the `server` feature (those are dev-dependencies of the
//! tests). Native clients stay off the node's HTTP API.
#![warn(missing_docs)]

#[cfg(feature = "app")]
pub mod cli;
#[cfg(feature = "app")]
pub mod error;
pub mod gpsd;
#[cfg(feature = "app")]
pub mod mailbox;
#[cfg(feature = "app")]
pub mod media;
pub mod nmea;
#[cfg(feature = "app")]
pub mod office;
#[cfg(feature = "app")]
pub mod output;
pub mod position;
#[cfg(feature = "app")]
pub mod run;
#[cfg(feature = "app")]
pub mod watch;
