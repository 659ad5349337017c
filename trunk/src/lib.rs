//! yiwang's trunk router: how cascaded media-servers (province → city → county → township) pull
//! streams from each other over trunks, one copy per trunk, and reroute when a trunk is cut.
//!
//! - [`ids`]: node and stream names and the `NODE/STREAM` address (the `ids` crate's, shared with
//!   `signaling`), layers and viewers;
//! - [`wire`]: the control protocol on a trunk's QUIC stream (typed, versioned, length-prefixed);
//! - [`router`]: the sans-IO router — catalog, on-demand pull, failover, prune, keyframes;
//! - [`media`]: the trunk media plane — RTP in QUIC datagrams, forwarding by route, repair;
//! - [`sim`]: an in-memory network of routers in virtual time (the province-size simulation);
//! - [`error`]: the crate's errors;
//! - `testkit` (feature `testkit`, and this crate's tests): the fuzz bodies of `fuzz/`.
//!
//! Nothing here opens a socket, spawns a task or reads the clock: `now` comes with every input.
//! The QUIC shell and the TLS setup live in `media-server` (`media_server::cascade`).
//!
//! The run loop of a shell:
//!
//! ```no_run
//! use std::time::Instant;
//! use trunk::{NodeName, Output, Router, RouterConfig};
//! let mut cfg = RouterConfig::new(NodeName::parse("county-7").unwrap());
//! cfg.parents = vec![NodeName::parse("city-a").unwrap(), NodeName::parse("city-b").unwrap()];
//! let mut router = Router::new(cfg);
//! loop {
//!     // 1. one input: router.trunk_up(now, peer), router.handle_message(now, &peer, msg),
//!     //    router.subscribe(now, viewer, addr, layers), router.handle_timeout(now), …
//!     let now = Instant::now();
//!     router.handle_timeout(now);
//!     // 2. drain every output
//!     while let Some(out) = router.poll_output() {
//!         match out {
//!             Output::Send { trunk, msg } => { let _frame = trunk::wire::encode(&msg); }
//!             Output::Route { addr, route } => { /* forwarding table of the media plane */ }
//!             Output::PublisherKeyframe { stream, layer } => { /* PLI to the local publisher */ }
//!             Output::Viewer { viewer, addr, event } => { /* tell the WHEP session */ }
//!         }
//!     }
//!     // 3. sleep until router.poll_timeout() or the next input
//!     # break;
//! }
//! ```
#![deny(missing_docs)]

pub mod error;
pub mod ids;
pub mod media;
pub mod router;
pub mod sim;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod wire;

pub use crate::ids::{LayerId, LayerSet, NodeName, StreamAddr, StreamName, ViewerId};
pub use error::{DecodeError, NameError};
pub use router::{Hop, Output, Route, Router, RouterConfig, TrunkRole, ViewerEvent};
pub use wire::{CatalogEntry, FailReason, FrameDecoder, Message};
