//! Why the engine refused a request ([`SfuError`]). Each reason maps to one HTTP status and one
//! signaling error code in the shells; nothing here knows about either.

use ids::Subject;

/// Why a publish or view request was refused. Each maps to one HTTP status (see `docs/api.md`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The SDP offer could not be parsed or accepted.
    #[error("malformed SDP offer: {0}")]
    BadSdp(String),
    /// The offer carries nothing the node can receive or send (no H.264/VP8 video, no Opus audio).
    #[error("{0}")]
    NoUsableMedia(String),
    /// A publisher owned by another subject is live under this name.
    #[error("stream is live and published by another subject ({holder})")]
    Conflict {
        /// The subject holding the name.
        holder: Subject,
    },
    /// No publisher is live under this name.
    #[error("no live stream with that name")]
    NotLive,
    /// No session has this id.
    #[error("no such session")]
    NoSession,
    /// The media loop is gone (node shutting down).
    #[error("media engine unavailable")]
    Unavailable,
}
