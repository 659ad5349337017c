//! The security regression suite (issue 16): what an attacker from outside can try against a
//! node, and what must hold. One test binary, one file per concern under `security/`:
//!
//! - `listeners` — HTTP: idle sockets, slow headers and bodies, connection caps, authentication
//!   before any body is read;
//! - `quotas` — attachments: quotas, trickling uploads, a full disk; durable office commits;
//! - `sessions` — QUIC and WebSocket signaling: one stream, receive windows, per-subject caps;
//! - `tokens` — forged, expired, over-long, wrong-issuer and `crit` tokens on every transport;
//! - `matrix` — the role × route matrix over HTTP, WebSocket and QUIC;
//! - `junk` — random bytes and malformed input on every port, traversal;
//! - `fuzz_corpus` — the committed fuzz corpus replayed through every decoder.
//!
//! Every wait is bounded; nothing sleeps to synchronise; ports are ephemeral.

mod common;

#[path = "security/fuzz_corpus.rs"]
mod fuzz_corpus;
#[path = "security/junk.rs"]
mod junk;
#[path = "security/listeners.rs"]
mod listeners;
#[path = "security/matrix.rs"]
mod matrix;
#[path = "security/quotas.rs"]
mod quotas;
#[path = "security/sessions.rs"]
mod sessions;
#[path = "security/tokens.rs"]
mod tokens;
