//! Real GStreamer WebRTC peers for end-to-end tests of the node's WHIP/WHEP endpoints.
//!
//! * [`WhipPublisher`] sends a live test pattern (H.264 or VP8, optional Opus tone) to
//!   `POST {base}/whip/{stream}`.
//! * [`WhepViewer`] offers recvonly video (H.264 *and* VP8) and Opus to
//!   `POST {base}/whep/{stream}` and counts decoded frames ([`ViewerStats`]); what the decoded
//!   picture shows is checked against the source's pattern ([`picture`]).
//! * [`post_offer`] / [`delete_session`] are the bare HTTP exchange, for tests that assert
//!   status codes; a peer's failed `start` carries a [`WhipError::Http`] (see [`http_status`]).
//!
//! # How the exchange is driven
//!
//! Each peer is one pipeline with one `webrtcbin` (`bundle-policy=max-bundle`). webrtcbin runs
//! its operations on its own thread, so no GLib main loop is needed: offers and descriptions go
//! through `gst::Promise::with_change_func` into tokio oneshot channels, every step bounded by a
//! timeout. A thread per pipeline pops Error/Warning/EOS messages off the bus (no bus watch, no
//! main context), logs them with `tracing` and keeps the first error for `error()`.
//!
//! There is no trickle ICE: the offer is set locally, ICE gathering is awaited until
//! `Complete` (≤ 5 s; host candidates only, no STUN), and the offer is POSTed with its
//! `a=candidate` lines. The node's answer carries its single ICE-lite host candidate.
//!
//! # Loopback
//!
//! libnice (webrtcbin's ICE agent) does not gather on loopback interfaces: on a machine with a
//! real interface the offer only lists e.g. `192.0.2.2`, and on a loopback-only machine (a
//! fresh network namespace) it lists **no candidate at all** and has no socket to check from.
//! Therefore, when the node's URL host is loopback (`127.0.0.0/8`, `::1`, `localhost`), the
//! peers call `add-local-ip-address("127.0.0.1")` on webrtcbin's `ice-agent`, which makes libnice
//! gather (only) a `127.0.0.1` host candidate. This assumes the node's media address is loopback
//! too when its HTTP address is. Without it, on a host with another interface, the client would
//! still check the node's `127.0.0.1` candidate from its `192.0.2.2` socket and the ICE-lite
//! node would see a peer-reflexive address; that works as well, but only if the node accepts
//! peer-reflexive candidates.
//!
//! # DTLS certificate
//!
//! GStreamer generates an RSA certificate; the node's DTLS server (str0m 0.25 / dimpl) only
//! advertises ECDSA signature algorithms in its CertificateRequest, so OpenSSL sends no client
//! certificate and the node ends the session ("no client certificate received"). The peers
//! therefore set an rcgen ECDSA P-256 certificate on webrtcbin's `dtlssrtpdec`s (`pem`) as
//! they are created.
//!
//! # Teardown
//!
//! `stop()` sends `DELETE {session URL}` (the `Location`, resolved against the request URL) and
//! sets the pipeline to NULL. Dropping a peer only sets the pipeline to NULL.

mod core;
pub mod http;
pub mod picture;
mod publisher;
mod viewer;

use std::sync::OnceLock;

use gstreamer as gst;

pub use http::{delete_session, endpoint_url, http_status, post_offer, OfferResponse, WhipError};
pub use picture::{Pattern, Picture};
pub use publisher::{PublishOptions, VideoCodec, WhipPublisher};
pub use viewer::{
    FrameTap, ViewOptions, ViewerStats, WhepViewer, VIEWER_AUDIO_CAPS, VIEWER_VIDEO_CAPS,
};

/// Initialises GStreamer once per process and checks the elements the peers need.
pub fn init() -> anyhow::Result<()> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().map_err(|e| format!("gst::init: {e}"))?;
        let needed = [
            "webrtcbin", "nicesrc", "dtlssrtpenc", "videotestsrc", "audiotestsrc", "x264enc", "vp8enc",
            "opusenc", "rtph264pay", "rtpvp8pay", "rtpopuspay", "rtph264depay", "h264parse", "avdec_h264",
            "rtpvp8depay", "vp8dec", "rtpopusdepay", "opusdec", "videoconvert", "pngenc",
        ];
        let missing: Vec<_> = needed.into_iter().filter(|e| gst::ElementFactory::find(e).is_none()).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("GStreamer elements missing: {missing:?} (install gstreamer1.0-plugins-{{good,bad,ugly}}, -libav, -nice)"))
        }
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> reqwest::Url {
        // Loopback, so the peers gather a 127.0.0.1 candidate (see the module docs).
        endpoint_url("http://127.0.0.1:9", "whip", "t").unwrap()
    }

    fn count(sdp: &str, prefix: &str) -> usize {
        sdp.lines().filter(|l| l.starts_with(prefix)).count()
    }

    async fn publisher_offer(opts: PublishOptions) -> String {
        let p = WhipPublisher::prepare(&url(), "", &opts).unwrap();
        let sdp = p.offer().await.unwrap();
        assert!(p.error().is_none(), "{:?}", p.error());
        sdp
    }

    #[tokio::test]
    async fn h264_publisher_offer() {
        let sdp = publisher_offer(PublishOptions::default()).await;
        assert_eq!(count(&sdp, "m=video"), 1, "{sdp}");
        assert_eq!(count(&sdp, "m=audio"), 1, "{sdp}");
        assert!(
            sdp.contains("H264/90000") && sdp.contains("OPUS/48000"),
            "{sdp}"
        );
        assert!(sdp.contains("profile-level-id=42"), "{sdp}");
        assert_eq!(count(&sdp, "a=sendonly"), 2, "{sdp}");
        assert!(sdp.contains("a=group:BUNDLE"), "{sdp}");
        assert!(
            sdp.contains("a=candidate:") && sdp.contains("127.0.0.1"),
            "{sdp}"
        );
    }

    #[tokio::test]
    async fn vp8_publisher_offer_without_audio() {
        let opts = PublishOptions {
            codec: VideoCodec::Vp8,
            audio: false,
            width: 320,
            height: 240,
            ..Default::default()
        };
        let sdp = publisher_offer(opts).await;
        assert_eq!(count(&sdp, "m=video"), 1, "{sdp}");
        assert_eq!(count(&sdp, "m=audio"), 0, "{sdp}");
        assert!(sdp.contains("VP8/90000") && !sdp.contains("H264"), "{sdp}");
        assert_eq!(count(&sdp, "a=sendonly"), 1, "{sdp}");
        assert!(sdp.contains("a=candidate:"), "{sdp}");
    }

    #[tokio::test]
    async fn viewer_offer() {
        let v = WhepViewer::prepare(&url(), "", ViewOptions::default()).unwrap();
        let sdp = v.offer().await.unwrap();
        assert_eq!(count(&sdp, "m=video"), 1, "{sdp}");
        assert_eq!(count(&sdp, "m=audio"), 1, "{sdp}");
        assert!(
            sdp.contains("H264/90000") && sdp.contains("VP8/90000") && sdp.contains("OPUS/48000"),
            "{sdp}"
        );
        assert!(
            sdp.contains("packetization-mode=1") && sdp.contains("profile-level-id=42e01f"),
            "{sdp}"
        );
        assert_eq!(count(&sdp, "a=recvonly"), 2, "{sdp}");
        assert!(sdp.contains("a=candidate:"), "{sdp}");
        assert_eq!(v.stats(), ViewerStats::default());
    }

    #[test]
    fn codec_parsing_and_status() {
        assert_eq!("VP8".parse::<VideoCodec>().unwrap(), VideoCodec::Vp8);
        assert!("av1".parse::<VideoCodec>().is_err());
        let e = anyhow::Error::new(WhipError::Http {
            status: 403,
            body: "forbidden".into(),
        })
        .context("publishing");
        assert_eq!(http_status(&e), Some(403));
    }
}
