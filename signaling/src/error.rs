//! Error types of the `signaling` crate.
//!
//! Every `Display` message is written to be shown to a client as is (for example in an HTTP 400 or
//! 401 body): short, specific, and free of internals such as key material or parser state.

use crate::auth::{Action, Role};
use thiserror::Error;

/// Why a string was refused as an id or a stream name (defined in the `ids` crate).
pub use ::ids::NameError;

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseRoleError {
    /// The string is not a known role.
    #[error(
        "unknown role; valid roles are admin, commander, operator, officer, pilot, device, viewer"
    )]
    Unknown,
}

/// Why a token was refused. Each message is suitable for an HTTP 401 body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is not a well-formed EdDSA compact JWS carrying yiwang claims.
    #[error("malformed token: {reason}")]
    Malformed {
        /// What is wrong with the token's structure.
        reason: &'static str,
    },
    /// The token was signed by a key this node does not trust.
    #[error("token signed by an untrusted key")]
    UntrustedKey,
    /// The signature does not match the token's contents.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token's `exp` has passed (beyond the allowed clock leeway).
    #[error("token has expired")]
    Expired,
    /// The token's `iat` is in the future (beyond the allowed clock leeway).
    #[error("token is not valid yet (issued in the future; check clocks)")]
    NotYetValid,
    /// The token was issued for another node.
    #[error("token was issued for another node")]
    WrongAudience,
    /// The token's lifetime (`exp` − `iat`) is longer than the node accepts
    /// ([`crate::auth::DEFAULT_MAX_LIFETIME_SECS`] unless configured otherwise).
    #[error("token lifetime exceeds this node's maximum of {max_secs} s")]
    TooLongLived {
        /// The longest lifetime accepted, in seconds.
        max_secs: u64,
    },
    /// The token's `iss` is not the issuer its signing key is bound to.
    #[error("token iss does not name the holder of its signing key")]
    WrongIssuer,
    /// The token is longer than [`crate::auth::MAX_TOKEN_LEN`] bytes.
    #[error("token is too large")]
    TooLarge,
}

/// Why a token holder may not do something.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Denied {
    /// The holder's role does not have this right at all.
    #[error("role {role} may not {action}")]
    Role {
        /// The holder's role.
        role: Role,
        /// The action that was refused.
        action: Action,
    },
    /// A non-admin publisher asked for a stream name that is neither its subject nor `SUBJECT-*`.
    #[error("a publisher may only use its own subject or SUBJECT-* as stream name")]
    NotOwnName,
}
