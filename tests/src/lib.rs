//! Cross-crate integration and end-to-end test support for yiwang.
//!
//! [`gst_peer`] holds real GStreamer WebRTC peers (a WHIP publisher and a WHEP viewer) for
//! end-to-end tests of the node; the `demo-publisher` binary wraps the publisher.

pub mod gst_peer;
