//! yiwang's site node: the shells around the sans-IO cores (the `sfu` engine, the `trunk`
//! cascade, the signaling core), WHIP/WHEP and the HTTP API, composed into one process by the
//! `media-server` binary.
//!
//! Layout, from the wire inward:
//! - [`node`]: composition (identity, listeners, tasks) — what `main` and the tests start;
//! - [`http`]: axum handlers (WHIP/WHEP, API, OpenAPI document, metrics, the wall's static files);
//! - [`listener`]: the accept loop of every HTTP listener — header, idle and body timeouts,
//!   global and per-IP connection caps;
//! - [`tls`]: HTTPS for the HTTP listener (PEM files or the node's own certificate);
//! - [`media`]: the tokio shell of the media plane — one UDP socket, one task driving the
//!   `sfu` engine (every WebRTC session, forwarding, simulcast; its own crate);
//! - [`streams`]: the live-stream table other planes read, kept from the engine's events;
//! - [`signal`]: the signaling shells (QUIC via [`quic`], WebSocket `/ws`) around the sans-IO
//!   `signaling::core`;
//! - [`attachments`]: the office's content-addressed attachment store;
//! - [`cascade`]: the cascade shell — trunks to other nodes (province CA, mutually authenticated
//!   QUIC) around the sans-IO `trunk` crate;
//! - [`health`]: the essential tasks' watchdog and the probes of `GET /healthz`;
//! - [`identity`], [`config`], [`metrics`].
//!
//! The cores (crates `sfu`, `trunk`, `signaling::core`) never read the clock or touch sockets:
//! `now` comes in with every input, so they are tested in virtual time.
#![warn(missing_docs)]

pub mod attachments;
pub mod cascade;
pub mod config;
pub mod health;
pub mod http;
pub mod identity;
pub mod listener;
pub mod media;
pub mod metrics;
pub mod natsd;
pub mod node;
pub mod peer_cap;
pub mod quic;
pub mod signal;
pub mod streams;
pub mod tls;
