//! The client's errors and the exit codes they map to: 1 for a bad command line or a node that
//! cannot be reached, 2 for a refusal by the node (token refused or revoked, a request answered
//! with an error).

use signaling::client::ClientError;
use signaling::proto::ErrorCode;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line or one of its values is wrong (exit code 1).
    #[error("{0}")]
    Usage(String),
    /// The node could not be reached or stopped answering (exit code 1).
    #[error("{0}")]
    Connection(String),
    /// The node refused: the session (token) or the request (exit code 2).
    #[error("{message}")]
    Refused {
        /// The node's error code.
        code: ErrorCode,
        /// What to print.
        message: String,
    },
    /// A local resource failed (exit code 1).
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

    /// An error of a session that is being opened with `node`.
    pub fn connecting(node: &str, e: ClientError) -> Error {
        match e {
            ClientError::Refused { code, message } => Error::Refused {
                code,
                message: format!("the node at {node} refused the session ({code}): {message}"),
            },
            ClientError::Timeout => Error::Connection(format!(
                "no answer from the node at {node} (is it running, and does UDP reach its QUIC port?)"
            )),
            ClientError::BadToken(m) => Error::Usage(format!("bad token: {m}")),
            ClientError::Resolve(m) => Error::Usage(format!("cannot resolve --node: {m}")),
            ClientError::InvalidConfig(m) => Error::Usage(m),
            other => Error::Connection(format!("cannot connect to the node at {node}: {other}")),
        }
    }

    /// An error of a request made on an established session; `what` names the request.
    pub fn request(what: &str, e: ClientError) -> Error {
        match e {
            ClientError::Remote { code, message } | ClientError::Refused { code, message } => {
                Error::Refused {
                    code,
                    message: format!("{what}: the node refused ({code}): {message}"),
                }
            }
            ClientError::InvalidMessage(m) => Error::Usage(m),
            ClientError::Timeout => {
                Error::Connection(format!("no answer to {what} from the node in time"))
            }
            other => Error::Connection(format!("{what} failed: {other}")),
        }
    }
}
