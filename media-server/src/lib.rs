//! yiwang's site node: the str0m SFU, WHIP/WHEP and the HTTP API, composed into one process by
//! the `media-server` binary.
//!
//! Layout, from the wire inward:
//! - [`node`]: composition (identity, listeners, tasks) — what `main` and the tests start;
//! - [`http`]: axum handlers (WHIP/WHEP, API, OpenAPI document, metrics, the wall's static files);
//! - [`tls`]: HTTPS for the HTTP listener (PEM files or the node's own certificate);
//! - [`media`]: the tokio shell of the media plane — one UDP socket, one task;
//! - [`sfu`]: the sans-IO SFU engine owning every WebRTC session (str0m `Rtc`);
//! - [`forward`]: the sans-IO forwarding core (routing, keyframe logic), no str0m inside;
//! - [`streams`]: the live-stream table other planes read;
//! - [`signal`]: the signaling shells (QUIC via [`quic`], WebSocket `/ws`) around the sans-IO
//!   `signaling::core`;
//! - [`attachments`]: the office's content-addressed attachment store;
//! - [`cascade`]: the cascade shell — trunks to other nodes (province CA, mutually authenticated
//!   QUIC) around the sans-IO `trunk` crate;
//! - [`identity`], [`config`], [`metrics`].
//!
//! The cores ([`sfu`], [`forward`]) never read the clock or touch sockets: `now` comes in with
//! every input, so they are tested in virtual time.
#![warn(missing_docs)]

pub mod attachments;
pub mod cascade;
pub mod codec;
pub mod config;
pub mod forward;
pub mod http;
pub mod identity;
pub mod media;
pub mod metrics;
pub mod node;
pub mod quic;
pub mod sfu;
pub mod signal;
pub mod streams;
pub mod tls;
