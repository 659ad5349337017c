//! The bus's errors.

use thiserror::Error;

/// What can go wrong on the bus.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BusError {
    /// A name cannot be used as a subject token (empty, too long, or a character NATS reserves).
    #[error("invalid bus name {0:?}: {1}")]
    InvalidName(String, &'static str),
    /// A message exceeds the bus's size limit.
    #[error("message of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    /// Nobody answered a request in time (or nobody serves it).
    #[error("no answer from {0} within the timeout")]
    NoAnswer(String),
    /// The bus is closed (the node is shutting down or the server is gone for good).
    #[error("bus closed")]
    Closed,
    /// The NATS server refused or failed an operation.
    #[error("nats: {0}")]
    Nats(String),
    /// Writing or reading the nats-server configuration or its files failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
