//! Validated identifier newtypes, defined in the `ids` crate (which `trunk` shares, so a node or
//! stream name crosses from signaling to the cascade as it is) and re-exported here under their
//! signaling names.
//!
//! Every id that arrives from a token, a URL or a peer is parsed into one of these types before it
//! is used, so the rest of the system never sees an empty, overlong or path-like id. The syntax
//! (`A-Z a-z 0-9 . _ -`, not starting with `.` or `-`; 1..=64 characters, stream names 1..=96) is
//! written once, in the `ids` crate's root documentation, and for clients in `docs/protocol.md`.
//!
//! A stream name containing `/` is a remote name `NODE/STREAM`, reserved for the cascade between
//! nodes; [`StreamName::parse`] refuses it with [`NameError::Reserved`](crate::NameError).
//!
//! On the wire (serde) every id is a plain JSON string, exactly as with `#[serde(transparent)]`,
//! but deserialising validates it.

/// The id of a site node (media server), e.g. `hq` or `node-3fa2c01b`: the same type as the
/// trunk's node name ([`NodeName`]).
pub use ::ids::NodeName as NodeId;
pub use ::ids::{IncidentId, NodeName, StreamAddr, StreamName, Subject, TokenId};
