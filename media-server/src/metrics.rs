//! Node counters exported at `GET /metrics` in the Prometheus text format.
//!
//! Plain atomics: the media task copies the SFU engine's counters in ([`Metrics::record`]), the
//! HTTP handler reads them; no locks on the hot path. Names and meanings are pinned in
//! `docs/api.md`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use sfu::Counters;
pub use sfu::DropReason;

/// The label value of `yiwang_drops_total` for each reason.
fn label(reason: DropReason) -> &'static str {
    match reason {
        DropReason::Malformed => "malformed",
        DropReason::UnknownSource => "unknown_source",
        DropReason::WaitingKeyframe => "waiting_keyframe",
        DropReason::CodecMismatch => "codec_mismatch",
        DropReason::WriteFailed => "write_failed",
        DropReason::NotPublisher => "not_publisher",
        DropReason::Late => "late",
    }
}

/// All counters and gauges of a node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Live WebRTC sessions (gauge).
    pub peers: AtomicU64,
    /// Live publishers (gauge).
    pub publishers: AtomicU64,
    /// Live viewers (gauge).
    pub viewers: AtomicU64,
    /// UDP datagrams received on the media socket.
    pub packets_in: AtomicU64,
    /// UDP payload bytes received on the media socket.
    pub bytes_in: AtomicU64,
    /// UDP datagrams sent from the media socket.
    pub packets_out: AtomicU64,
    /// UDP payload bytes sent from the media socket.
    pub bytes_out: AtomicU64,
    /// Media frames forwarded to viewers.
    pub frames_forwarded: AtomicU64,
    /// NACKs received from viewers (their losses we repaired).
    pub nacks_in: AtomicU64,
    /// NACKs sent to publishers (our losses we asked them to repair).
    pub nacks_out: AtomicU64,
    /// PLIs and FIRs received from viewers.
    pub keyframe_requests_in: AtomicU64,
    /// PLIs sent to publishers after aggregation and throttling.
    pub keyframe_requests_out: AtomicU64,
    /// WebRTC sessions ended because of an error.
    pub session_errors: AtomicU64,
    /// The trunk media plane's counters (copied by the media task every 20 ms).
    pub trunk: std::sync::Mutex<trunk::media::TrunkCounters>,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Metrics {
    /// Takes over the SFU engine's counters and gauges (they are the engine's own totals).
    pub fn record(&self, c: &Counters) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.peers, c.peers);
        set(&self.publishers, c.publishers);
        set(&self.viewers, c.viewers);
        set(&self.packets_in, c.packets_in);
        set(&self.bytes_in, c.bytes_in);
        set(&self.packets_out, c.packets_out);
        set(&self.bytes_out, c.bytes_out);
        set(&self.frames_forwarded, c.frames_forwarded);
        set(&self.nacks_in, c.nacks_in);
        set(&self.nacks_out, c.nacks_out);
        set(&self.keyframe_requests_in, c.keyframe_requests_in);
        set(&self.keyframe_requests_out, c.keyframe_requests_out);
        set(&self.session_errors, c.session_errors);
        for (slot, r) in self.drops.iter().zip(DropReason::ALL) {
            set(slot, c.drops(r));
        }
    }

    /// Drops counted so far for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (version 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "yiwang_peers",
            "gauge",
            "Live WebRTC sessions.",
            get(&self.peers),
        );
        one(
            "yiwang_publishers",
            "gauge",
            "Live publishers.",
            get(&self.publishers),
        );
        one(
            "yiwang_viewers",
            "gauge",
            "Live viewers.",
            get(&self.viewers),
        );
        one(
            "yiwang_packets_in_total",
            "counter",
            "UDP datagrams received on the media socket.",
            get(&self.packets_in),
        );
        one(
            "yiwang_bytes_in_total",
            "counter",
            "UDP payload bytes received on the media socket.",
            get(&self.bytes_in),
        );
        one(
            "yiwang_packets_out_total",
            "counter",
            "UDP datagrams sent from the media socket.",
            get(&self.packets_out),
        );
        one(
            "yiwang_bytes_out_total",
            "counter",
            "UDP payload bytes sent from the media socket.",
            get(&self.bytes_out),
        );
        one(
            "yiwang_frames_forwarded_total",
            "counter",
            "Media frames written to viewers.",
            get(&self.frames_forwarded),
        );
        one(
            "yiwang_nacks_in_total",
            "counter",
            "NACKs received from viewers.",
            get(&self.nacks_in),
        );
        one(
            "yiwang_nacks_out_total",
            "counter",
            "NACKs sent to publishers.",
            get(&self.nacks_out),
        );
        one(
            "yiwang_keyframe_requests_in_total",
            "counter",
            "PLI/FIR received from viewers.",
            get(&self.keyframe_requests_in),
        );
        one(
            "yiwang_keyframe_requests_out_total",
            "counter",
            "PLI sent to publishers after aggregation.",
            get(&self.keyframe_requests_out),
        );
        one(
            "yiwang_session_errors_total",
            "counter",
            "WebRTC sessions ended by an error.",
            get(&self.session_errors),
        );
        let t = self.trunk.lock().map(|t| t.clone()).unwrap_or_default();
        one(
            "yiwang_trunk_datagrams_in_total",
            "counter",
            "Media datagrams received on trunks.",
            t.datagrams_in,
        );
        one(
            "yiwang_trunk_datagrams_out_total",
            "counter",
            "Media datagrams sent on trunks.",
            t.datagrams_out,
        );
        one(
            "yiwang_trunk_bytes_out_total",
            "counter",
            "Bytes of media datagrams sent on trunks.",
            t.bytes_out,
        );
        one(
            "yiwang_trunk_frames_in_total",
            "counter",
            "Frames of remote streams given to local viewers.",
            t.frames_in,
        );
        one(
            "yiwang_trunk_frames_after_loss_total",
            "counter",
            "Remote frames delivered after a loss on the way.",
            t.frames_lost,
        );
        one(
            "yiwang_trunk_packets_delivered_total",
            "counter",
            "Packets of remote streams in frames given to local viewers.",
            t.packets_delivered,
        );
        one(
            "yiwang_trunk_packets_given_up_total",
            "counter",
            "Packets of remote streams lost for local viewers (not repaired in time).",
            t.packets_given_up,
        );
        one(
            "yiwang_trunk_nacks_sent_total",
            "counter",
            "NACKs sent on trunks (gaps seen).",
            t.nacks_sent,
        );
        one(
            "yiwang_trunk_nacks_repeated_total",
            "counter",
            "NACKs asking again for packets still missing.",
            t.nacks_repeated,
        );
        one(
            "yiwang_trunk_retransmits_total",
            "counter",
            "Trunk packets resent in answer to NACKs.",
            t.retransmits,
        );
        one(
            "yiwang_trunk_duplicates_total",
            "counter",
            "Trunk packets dropped as already forwarded (path switch).",
            t.duplicates,
        );
        one(
            "yiwang_trunk_not_source_total",
            "counter",
            "Trunk packets dropped: not from the route's source.",
            t.not_source,
        );
        one(
            "yiwang_trunk_unknown_total",
            "counter",
            "Trunk datagrams dropped: malformed or of an unknown flow.",
            t.unknown,
        );
        let _ = writeln!(
            s,
            "# HELP yiwang_drops_total Datagrams or frames dropped, by reason."
        );
        let _ = writeln!(s, "# TYPE yiwang_drops_total counter");
        for r in DropReason::ALL {
            let _ = writeln!(
                s,
                "yiwang_drops_total{{reason=\"{}\"}} {}",
                label(r),
                self.drops(r)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_drop_reason_and_counter() {
        let m = Metrics::default();
        let mut c = Counters::default();
        c.packets_in = 3;
        c.count_drops(DropReason::Malformed, 2);
        m.record(&c);
        let text = m.render();
        assert!(text.contains("yiwang_packets_in_total 3\n"));
        assert!(text.contains("yiwang_drops_total{reason=\"malformed\"} 2\n"));
        assert!(text.contains("yiwang_drops_total{reason=\"not_publisher\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().expect("every sample is an integer");
        }
    }
}
