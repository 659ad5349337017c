//! Tunables of the SFU engine ([`SfuConfig`]): timeouts, NACK buffers, bandwidth estimation and
//! pacing. Plain data with documented defaults; the node's TOML section maps onto it
//! (`media-server`'s `[sfu]`). Nothing here runs.

use std::time::Duration;

use crate::forward::ForwardConfig;

/// Tunables of the SFU engine. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Forwarding-core tunables (keyframe throttling).
    pub forward: ForwardConfig,
    /// A session that has not completed ICE + DTLS within this time is dropped (default 20 s).
    pub connect_timeout: Duration,
    /// A connected session from which nothing (media, RTCP, STUN) has arrived for this long is
    /// dropped (default 15 s). ICE consent alone is not used: libnice-based peers (GStreamer)
    /// refresh an ICE-lite server only every 25 s, past str0m's 15 s consent window.
    pub idle_timeout: Duration,
    /// Packets kept per outgoing video stream for answering NACKs (default 512: about 1.6 s at
    /// 2.5 Mbit/s, longer for lower layers; a NACK comes within one round trip).
    pub send_buffer_video: usize,
    /// Packets kept per outgoing audio stream for answering NACKs (default 100, 2 s of Opus).
    pub send_buffer_audio: usize,
    /// A viewer's bandwidth estimate starts here, kbit/s (default 2500: str0m paces a viewer's
    /// packets at its estimate, so a start below a 2.5 Mbit/s stream queues video for seconds).
    pub bwe_initial_kbps: u64,
    /// The rate a viewer's estimator probes towards, kbit/s (default 4000: above a browser's
    /// top simulcast layer, so the estimate can grow enough for it).
    pub bwe_desired_kbps: u64,
    /// The most a single-layer publisher is asked to send (REMB), kbit/s (default 2500). The
    /// target sent is the lower of this and the best viewer's bandwidth estimate, once a second,
    /// so an encoder without congestion control of its own follows what its viewers can take.
    pub publisher_max_kbps: u64,
    /// Whether str0m's pacer spreads a viewer's video at its bandwidth estimate (default true).
    /// When false, video goes out as soon as it is written (as audio always does); the estimator
    /// still runs on the TWCC feedback of every packet, and probing and padding stay paced.
    pub pace_video: bool,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            forward: ForwardConfig::default(),
            connect_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(15),
            send_buffer_video: 512,
            send_buffer_audio: 100,
            bwe_initial_kbps: 2500,
            bwe_desired_kbps: 4000,
            publisher_max_kbps: 2500,
            pace_video: true,
        }
    }
}
