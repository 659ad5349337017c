//! The bridge's errors and the exit codes they map to: 1 for a bad command line, a local
//! resource or a node that cannot be reached; 2 for a refusal by the node (token refused or
//! revoked, a role that may not bridge drones).

use signaling::client::ClientError;
use signaling::proto::ErrorCode;

/// Why the bridge stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line or one of its values is wrong (exit code 1).
    #[error("{0}")]
    Usage(String),
    /// The node could not be reached (exit code 1).
    #[error("{0}")]
    Connection(String),
    /// The node refused the session, or ended it (exit code 2).
    #[error("{message}")]
    Refused {
        /// The node's error code, if it gave one.
        code: Option<ErrorCode>,
        /// What to print.
        message: String,
    },
    /// A local resource failed: a MAVLink endpoint, the tlog (exit code 1).
    #[error("{0}")]
    Local(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Refused { .. } => 2,
            _ => 1,
        }
    }

    /// An error of opening a session with `node`.
    pub fn connecting(node: &str, e: ClientError) -> Error {
        match e {
            ClientError::Refused { code, message } => Error::Refused {
                code: Some(code),
                message: format!("the node at {node} refused the session ({code}): {message}"),
            },
            ClientError::Timeout => Error::Connection(format!(
                "no answer from the node at {node} (is it running, and does UDP reach its QUIC port?)"
            )),
            ClientError::BadToken(m) => Error::Usage(format!("bad token: {m}")),
            ClientError::Resolve(m) => Error::Usage(format!("cannot resolve --node {node}: {m}")),
            ClientError::InvalidConfig(m) => Error::Usage(m),
            other => Error::Connection(format!("cannot connect to the node at {node}: {other}")),
        }
    }
}
