//! Errors of the trunk crate.

/// A node name, stream name or `NODE/STREAM` address was not valid (the `ids` crate's error,
/// shared with `signaling`).
pub use ::ids::NameError;

/// Bytes from a trunk's control stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A frame header announced more than [`crate::wire::MAX_FRAME`] bytes. Fatal: the stream
    /// cannot be resynchronised; close the trunk.
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    /// The frame's protocol version is not one this build speaks. The frame was skipped.
    #[error("unsupported trunk protocol version {0}")]
    Version(u8),
    /// An unknown message type. The frame was skipped.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The frame ended inside a field, or had bytes left over. The frame was skipped.
    #[error("malformed message")]
    Malformed,
    /// A name in the frame was invalid. The frame was skipped.
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
}
