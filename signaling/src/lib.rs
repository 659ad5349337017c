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
//! - [`proto`]: the wire protocol `yiwang/1` (messages, framing, error codes, the typed
//!   [`proto::Event`]s and [`proto::MailItem`]s); `docs/protocol.md` describes it for implementers
//!   in other languages.
//! - [`time`]: [`UnixMs`] and [`UnixSecs`], the two kinds of timestamps.
//! - [`core`] (feature `server`): the sans-IO signaling core that the node's QUIC and WebSocket
//!   shells drive: components owning sessions, incidents, presence, drones and the office,
//!   coordinated by one dispatch.
//! - [`client`] (feature `client`, on by default): the async QUIC client of `yiwang/1` for native
//!   clients (pinning, reconnect and resume); the one module that does I/O.
//! - [`store`] (feature `server`): the office store behind the [`store::OfficeStore`] trait
//!   (mailboxes, orders, incidents, logs); [`store::SqliteStore`] is the node's implementation.
//! - `testkit` (feature `testkit`, and this crate's tests): one harmless request per row of the
//!   role matrix, and the bodies of the fuzz targets; not in a release build of the node.
//!
//! What this crate must not touch: sockets, files, the clock and async runtimes (except
//! [`client`], and the SQLite file behind [`store::SqliteStore`]). Every function that needs the
//! time takes `now` as an argument ([`UnixMs`] in the core, Unix seconds for tokens), so all of
//! it is deterministic and testable with a table. The only ambient input is randomness for token
//! and session ids.
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
pub mod time;

pub use crate::ids::{IncidentId, NodeId, StreamName, Subject, TokenId};
pub use auth::{Action, Claims, Role, TokenIssuer, TokenRequest, TokenVerifier};
pub use error::{AuthError, Denied, NameError, ParseRoleError};
pub use time::{UnixMs, UnixSecs};
