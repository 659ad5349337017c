//! yiwang control plane: the vocabulary every node and client shares.
//!
//! What lives here today:
//! - [`ids`]: validated newtypes for node ids, stream names, token subjects, incidents and token
//!   ids (re-exported from the `ids` crate, shared with `trunk`). Anything that crosses a trust
//!   boundary is parsed into one of these first.
//! - [`auth`]: roles and the action matrix of `ROLES.md`, token claims, the publish-name rule, and
//!   the Ed25519 JWT issuer and verifier.
//! - [`error`]: the error enums of this crate.
//!
//! - [`proto`]: the wire protocol `yiwang/1` (messages, framing, error codes); `docs/protocol.md`
//!   describes it for implementers in other languages.
//! - [`core`]: the sans-IO signaling state machine (sessions, incidents, presence, positions,
//!   authorisation) that the node's QUIC and WebSocket shells drive.
//! - [`client`] (feature `client`, on by default): the async QUIC client of `yiwang/1` for native
//!   clients (pinning, reconnect and resume); the one module that does I/O.
//! - [`store`] (feature `server`): the node's SQLite office store (mailboxes, orders).
//! - `testkit` (feature `testkit`, and this crate's tests): one harmless request per row of the
//!   role matrix, and the bodies of the fuzz targets; not in a release build of the node.
//!
//! What this crate must not touch: sockets, files, the clock and async runtimes. Every function that
//! needs the time takes `now` (unix seconds) as an argument, so all of it is deterministic and
//! testable with a table. The only ambient input is randomness for token ids.
#![warn(missing_docs)]

pub mod auth;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod core;
pub mod error;
pub mod ids;
pub mod proto;
#[cfg(feature = "server")]
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use crate::ids::{IncidentId, NodeId, StreamName, Subject, TokenId};
pub use auth::{Action, Claims, Role, TokenIssuer, TokenRequest, TokenVerifier};
pub use error::{AuthError, Denied, NameError, ParseRoleError};
