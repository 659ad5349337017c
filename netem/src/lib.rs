//! `netem`: yiwang's impairment lab — what a bad field link does to datagrams (loss, bursts,
//! delay, jitter, reordering, a rate cap with a bounded queue), because `tc netem` is not
//! available on our kernels.
//!
//! Modules:
//! - [`config`]: [`ImpairConfig`], what one direction of a link does, with its defaults;
//! - [`spec`]: the spec-string syntax (`loss=5%,delay=50ms`) and [`SpecError`];
//! - [`link`]: the seeded model [`Impairment`] and its counters;
//! - `relay` (feature `relay`, on by default): the tokio `UdpRelay` and the `yiwang-relay`
//!   binary around it. Without the feature the crate has no tokio dependency.
//!
//! Two layers, in the project's core/shell shape:
//! - [`Impairment`] is the sans-IO core: a seeded, deterministic model of one direction of a link.
//!   It owns no socket, reads no clock and spawns no task; `now` comes in with every call, so it
//!   runs in virtual time in tests and simulations. Call order: [`Impairment::push`] each
//!   datagram as it arrives, then drain [`Impairment::poll`] until it returns `None`, then sleep
//!   until [`Impairment::poll_timeout`].
//! - `UdpRelay` is the tokio shell: a UDP relay between clients and one upstream address that
//!   runs one [`Impairment`] per direction. The `yiwang-relay` binary is a CLI around it.
//!
//! Configuration is an [`ImpairConfig`], built with setters or parsed from a compact spec string
//! (see [`ImpairConfig`]'s `FromStr`), e.g. `loss=5%,delay=50ms,jitter=20ms,rate=300kbit,seed=7`.
//!
//! This crate is a test and lab tool: nothing in the media plane (the SFU, the forwarding core,
//! the node's media task) may depend on it, and it must not depend on them.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use netem::{ImpairConfig, Impairment};
//!
//! let config: ImpairConfig = "loss=10%,delay=20ms,seed=7".parse().unwrap();
//! let mut link = Impairment::new(config);
//! let t0 = Instant::now();
//! for i in 0..100u32 {
//!     link.push(t0, i, 1200);
//! }
//! let mut delivered = 0;
//! while let Some(at) = link.poll_timeout() {
//!     while link.poll(at).is_some() {
//!         delivered += 1;
//!     }
//! }
//! assert_eq!(delivered, link.stats().delivered);
//! assert!(delivered > 80 && delivered < 100);
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod link;
#[cfg(feature = "relay")]
pub mod relay;
pub mod spec;

pub use config::{BurstLoss, ImpairConfig};
pub use link::{DropReason, ImpairStats, Impairment, Verdict, HELD_BYTES_LIMIT};
#[cfg(feature = "relay")]
pub use relay::{RelayStats, UdpRelay};
pub use spec::SpecError;
