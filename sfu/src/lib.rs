//! The SFU engine: every WebRTC session of the node (str0m `Rtc`s) on one UDP socket, wired to
//! the forwarding core ([`forward`]).
//!
//! Sans-IO like str0m itself: the engine owns no socket, task or clock. The shell
//! (`media_server::media`) feeds it datagrams with [`Sfu::handle_receive`] and time with
//! [`Sfu::handle_timeout`], sends what [`Sfu::poll_transmit`] yields, and sleeps until
//! [`Sfu::poll_timeout`]. Because of that, tests can drive a whole publish/view exchange in
//! virtual time.
//!
//! ```no_run
//! # use sfu::{Sfu, SfuConfig};
//! # use std::time::Instant;
//! # let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
//! let mut sfu = Sfu::new(SfuConfig::default(), socket.local_addr().unwrap());
//! let mut buf = vec![0; 65536];
//! loop {
//!     while let Some(t) = sfu.poll_transmit() {
//!         let _ = socket.send_to(&t.contents, t.destination);
//!     }
//!     let next = sfu.poll_timeout().unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
//!     let wait = next.saturating_duration_since(Instant::now());
//!     socket.set_read_timeout(Some(wait.max(std::time::Duration::from_millis(1)))).unwrap();
//!     match socket.recv_from(&mut buf) {
//!         Ok((n, from)) => sfu.handle_receive(Instant::now(), from, &buf[..n]),
//!         Err(_) => sfu.handle_timeout(Instant::now()),
//!     }
//!     while let Some(_event) = sfu.poll_event() {
//!         // a stream came or went, its viewers or layers changed: the shell's tables
//!     }
//!     let _counters = sfu.counters(); // the shell's metrics
//! }
//! ```
//!
//! The engine writes no table of the shell: what the shell shows (`/api/streams`, `/metrics`)
//! leaves through [`Sfu::poll_event`] and [`Sfu::counters`].
//!
//! Sessions are ICE-lite with one host candidate (the advertised address) and accept peer-reflexive
//! candidates, so clients behind NAT or with only mDNS candidates still connect. A 5-tuple is
//! bound to its session on first acceptance, so steady-state demultiplexing is one hash lookup.

mod bwe;
pub mod codec;
mod config;
mod engine;
mod error;
mod fanout;
pub mod forward;
mod output;
mod remote;
mod sdp;
mod session;
mod simulcast;

pub use config::SfuConfig;
pub use engine::Sfu;
pub use error::SfuError;
pub use output::{Counters, DropReason, Event, Transmit};
pub use remote::{TrunkRequest, NARROW_AFTER, REMOTE_FALLBACK_AFTER, REMOTE_PULL_TICK};
pub use session::SessionAnswer;

#[cfg(test)]
mod tests;
