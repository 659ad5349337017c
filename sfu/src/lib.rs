//! yiwang's SFU engine: every WebRTC session of a node (str0m `Rtc`s) on one UDP socket, wired
//! to the forwarding core ([`forward`]) and, when the node has trunks, to the trunk media plane
//! (`trunk::media`).
//!
//! Sans-IO like str0m itself: the engine owns no socket, task or clock, and depends on no async
//! runtime. The shell (`media_server::media`) feeds it datagrams with [`Sfu::handle_receive`]
//! and time with [`Sfu::handle_timeout`], sends what [`Sfu::poll_transmit`] yields, applies
//! what [`Sfu::poll_event`] and [`Sfu::counters`] report to its own tables, and sleeps until
//! [`Sfu::poll_timeout`]. Because of that, tests drive whole publish/view exchanges, simulcast
//! switches and two nodes joined by a trunk in virtual time.
//!
//! # The run loop
//!
//! After every input, drain the polls: transmits, events, and the trunk requests
//! ([`Sfu::poll_trunk`]) when the node has trunks; then sleep until the next timeout or input.
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
//! Sessions are ICE-lite with one host candidate (the advertised address) and accept
//! peer-reflexive candidates, so clients behind NAT or with only mDNS candidates still connect.
//! A 5-tuple is bound to its session on first acceptance, so steady-state demultiplexing is one
//! hash lookup.
//!
//! # Rooms
//!
//! | module | what lives there |
//! |---|---|
//! | `engine` | the [`Sfu`] value: inputs, polls, datagram demux, timers, the decision loop |
//! | `session` | a publisher's or viewer's session: offer accepted, str0m drained, session ended |
//! | `sdp` | the codecs an answer offers, the codec an offer prefers, mids, negotiated codecs |
//! | `fanout` | a frame from one publisher written to its viewers, a slice at a time |
//! | `simulcast` | RID layers numbered as they arrive, late frames, timestamps across switches |
//! | [`forward`] | the forwarding core: who gets which layer, keyframe gating and throttling |
//! | `forward::layers` | layer ranking and choice (the decision of simulcast switching) |
//! | `bwe` | bandwidth estimation glue: viewer probing, REMB for single-layer publishers |
//! | `remote` | remote viewers and the trunk tap: streams pulled from and sent to other nodes |
//! | [`codec`] | picture sizes from VP8 keyframes and H.264 SPS |
//! | `output`, `config`, `error` | [`Event`], [`Counters`], [`Transmit`]; [`SfuConfig`]; [`SfuError`] |
//!
//! Nothing here knows about HTTP, signaling, metrics formats or the shell's tables.
#![deny(missing_docs)]

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
