//! Errors of the trunk crate.

/// A node name, stream name or `NODE/STREAM` address was not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name was empty.
    #[error("must not be empty")]
    Empty,
    /// The name was longer than allowed.
    #[error("must be at most {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A character outside `A-Z a-z 0-9 . _ -`.
    #[error("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    BadChar,
    /// The name started with `.` or `-`.
    #[error("must not start with '.' or '-'")]
    BadStart,
    /// An address without the `/` between node and stream.
    #[error("a stream address is NODE/STREAM")]
    NotAnAddress,
}

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
