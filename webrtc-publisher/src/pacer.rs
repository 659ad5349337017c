//! The send pacer: audio first, then bounded resends, then video, at congestion control's rate.
//!
//! It takes the place of the `rtc` crate's pacer (one FIFO for everything) at
//! [`Slot::Pacer`](rtc::interceptor::Slot::Pacer). With RTX on, the NACK responder's resends
//! would otherwise queue in front of the next Opus packets and, on a capped uplink, take the
//! capacity audio needs (issue 16: 398–423 of 500 audio buffers at 300 kbit/s). Here:
//!
//! - audio (every SSRC bound with an `audio/` codec) always leaves first;
//! - resends ([`Attribute::Retransmission`]) come next, but only within [`RESEND_SHARE`] of the
//!   rate, and one that waited longer than [`RESEND_MAX_WAIT`] is dropped (the receiver has
//!   given up on it or is about to);
//! - video media last.
//!
//! Everything leaves within one budget at congestion control's target, and the rate resends
//! actually took is published so the encoders can be aimed at the target minus it
//! ([`crate::Estimate::bps`]).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::marshal::MarshalSize;

/// The share of the rate resends may take at most.
pub const RESEND_SHARE: f64 = 0.3;
/// A resend that waited this long in the pacer is dropped.
pub const RESEND_MAX_WAIT: Duration = Duration::from_millis(150);
/// The window the published resend rate is measured over.
const RESEND_WINDOW: Duration = Duration::from_secs(1);
/// Smallest burst: one full-sized packet, bits.
const MIN_BURST_BITS: f64 = 8.0 * 1500.0;
/// Packets held per queue before new ones are refused.
const QUEUE_LIMIT: usize = 4096;

/// A token bucket in bits, refilled from the instants handed in.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    share: f64,
    bits: f64,
}

impl Bucket {
    fn burst(&self, rate: f64) -> f64 {
        // 50 ms of the rate: small enough that a burst of video does not hold audio for long.
        (rate * self.share * 0.05).max(MIN_BURST_BITS)
    }

    fn refill(&mut self, rate: f64, elapsed: f64) {
        self.rate = rate * self.share;
        self.bits = (self.bits + elapsed * self.rate).min(self.burst(rate));
    }

    /// Whether `bits` may go: a packet bigger than the burst goes once the bucket is full.
    fn allows(&self, rate: f64, bits: f64) -> bool {
        self.bits >= bits.min(self.burst(rate))
    }

    /// How long until `bits` may go, `None` at a zero rate.
    fn wait(&self, rate: f64, bits: f64) -> Option<Duration> {
        let need = bits.min(self.burst(rate)) - self.bits;
        if need <= 0.0 {
            return Some(Duration::ZERO);
        }
        let r = rate * self.share;
        // Rounded up by a microsecond: a wait rounded down to nothing would be a busy loop.
        (r > 0.0).then(|| Duration::from_secs_f64(need / r) + Duration::from_micros(1))
    }
}

/// See the module documentation.
pub(crate) struct PriorityPacer {
    rate: f64,
    last: Option<Instant>,
    all: Bucket,
    resend: Bucket,
    audio_ssrcs: HashSet<u32>,
    audio: VecDeque<TaggedPacket>,
    resends: VecDeque<TaggedPacket>,
    video: VecDeque<TaggedPacket>,
    released: VecDeque<TaggedPacket>,
    passed: VecDeque<TaggedPacket>,
    read: VecDeque<TaggedPacket>,
    /// Resends released within the last [`RESEND_WINDOW`]: when, bits.
    resent: VecDeque<(Instant, f64)>,
    resent_bits: f64,
    /// The resend rate over the window, bits per second (`f64` bits), for [`crate::Estimate`].
    resend_rate: Arc<AtomicU64>,
    /// Resends dropped for waiting too long.
    stale: Arc<AtomicU64>,
}

fn bits_of(p: &TaggedPacket) -> f64 {
    match &p.message.packet {
        Packet::Rtp(rtp) => (rtp.marshal_size() * 8) as f64,
        _ => 0.0,
    }
}

impl PriorityPacer {
    /// A pacer starting at `rate` bits per second, publishing the resend rate into
    /// `resend_rate` and counting dropped stale resends in `stale`.
    pub(crate) fn new(rate: f64, resend_rate: Arc<AtomicU64>, stale: Arc<AtomicU64>) -> Self {
        let mut all = Bucket {
            rate,
            share: 1.0,
            bits: 0.0,
        };
        all.bits = all.burst(rate);
        let mut resend = Bucket {
            rate: rate * RESEND_SHARE,
            share: RESEND_SHARE,
            bits: 0.0,
        };
        resend.bits = resend.burst(rate);
        PriorityPacer {
            rate: rate.max(0.0),
            last: None,
            all,
            resend,
            audio_ssrcs: HashSet::new(),
            audio: VecDeque::new(),
            resends: VecDeque::new(),
            video: VecDeque::new(),
            released: VecDeque::new(),
            passed: VecDeque::new(),
            read: VecDeque::new(),
            resent: VecDeque::new(),
            resent_bits: 0.0,
            resend_rate,
            stale,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        self.all.refill(self.rate, elapsed);
        self.resend.refill(self.rate, elapsed);
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    fn drop_stale(&mut self, now: Instant) {
        while let Some(head) = self.resends.front() {
            if now.saturating_duration_since(head.now) <= RESEND_MAX_WAIT {
                break;
            }
            self.resends.pop_front();
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn publish_resend_rate(&mut self, now: Instant) {
        while let Some(&(at, bits)) = self.resent.front() {
            if now.saturating_duration_since(at) <= RESEND_WINDOW {
                break;
            }
            self.resent.pop_front();
            self.resent_bits -= bits;
        }
        if self.resent.is_empty() {
            self.resent_bits = 0.0;
        }
        let rate = self.resent_bits.max(0.0) / RESEND_WINDOW.as_secs_f64();
        self.resend_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// The queue whose head goes next, and that head's size: audio, then a resend the resend
    /// budget allows, then video (then a resend waiting for its budget).
    fn next(&self) -> Option<(usize, f64)> {
        if let Some(p) = self.audio.front() {
            return Some((0, bits_of(p)));
        }
        if let Some(p) = self.resends.front() {
            let bits = bits_of(p);
            if self.resend.allows(self.rate, bits) || self.video.is_empty() {
                return Some((1, bits));
            }
        }
        self.video.front().map(|p| (2, bits_of(p)))
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for PriorityPacer {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        // The congestion controller's target rides inbound feedback past this slot (it sits
        // wire-ward of the pacer), as for the crate's pacer.
        if let Some(Attribute::TargetBitrateChanged { bits_per_second }) =
            msg.message.get(&Attribute::TargetBitrateChanged {
                bits_per_second: 0.0,
            })
        {
            self.refill(msg.now);
            self.rate = bits_per_second.max(0.0);
            let (all, resend) = (self.all.burst(self.rate), self.resend.burst(self.rate));
            self.all.bits = self.all.bits.min(all);
            self.resend.bits = self.resend.bits.min(resend);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        let Packet::Rtp(rtp) = &msg.message.packet else {
            // RTCP is only useful fresh: not paced.
            self.passed.push_back(msg);
            return Ok(());
        };
        self.refill(msg.now);
        let queue = if self.audio_ssrcs.contains(&rtp.header.ssrc) {
            &mut self.audio
        } else if msg.message.has(&Attribute::Retransmission) {
            &mut self.resends
        } else {
            &mut self.video
        };
        if queue.len() < QUEUE_LIMIT {
            queue.push_back(msg);
        }
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.passed
            .pop_front()
            .or_else(|| self.released.pop_front())
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.refill(now);
        self.drop_stale(now);
        while let Some((q, bits)) = self.next() {
            if !self.all.allows(self.rate, bits) || (q == 1 && !self.resend.allows(self.rate, bits))
            {
                break;
            }
            let queue = match q {
                0 => &mut self.audio,
                1 => &mut self.resends,
                _ => &mut self.video,
            };
            let mut p = queue.pop_front().expect("head just seen");
            self.all.bits -= bits;
            if q == 1 {
                self.resend.bits -= bits;
                self.resent.push_back((now, bits));
                self.resent_bits += bits;
            }
            // Departs now: the send history wire-ward must see the release instant.
            p.now = now;
            self.released.push_back(p);
        }
        self.publish_resend_rate(now);
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let last = self.last?;
        let (q, bits) = self.next()?;
        let mut wait = self.all.wait(self.rate, bits)?;
        if q == 1 {
            wait = wait.max(self.resend.wait(self.rate, bits)?);
        }
        let mut at = last + wait;
        if let Some(head) = self.resends.front() {
            at = at.min((head.now + RESEND_MAX_WAIT + Duration::from_millis(1)).max(last));
        }
        Some(at)
    }
}

impl Interceptor for PriorityPacer {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if info.mime_type.to_ascii_lowercase().starts_with("audio/") {
            self.audio_ssrcs.insert(info.ssrc);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.audio_ssrcs.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use rtc::shared::TransportContext;

    fn rtp(now: Instant, ssrc: u32, seq: u16, len: usize, resend: bool) -> TaggedPacket {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc,
                sequence_number: seq,
                ..Default::default()
            },
            payload: vec![0u8; len].into(),
        };
        let mut message = AttributedPacket::new(Packet::Rtp(packet));
        if resend {
            message = message.with(Attribute::Retransmission);
        }
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message,
        }
    }

    fn drain(p: &mut PriorityPacer) -> Vec<(u32, u16)> {
        let mut out = vec![];
        while let Some(t) = p.poll_write() {
            if let Packet::Rtp(r) = &t.message.packet {
                out.push((r.header.ssrc, r.header.sequence_number));
            }
        }
        out
    }

    fn pacer(rate: f64) -> (PriorityPacer, Arc<AtomicU64>, Arc<AtomicU64>) {
        let (r, s) = (Arc::default(), Arc::default());
        let mut p = PriorityPacer::new(rate, Arc::clone(&r), Arc::clone(&s));
        p.bind_local_stream(&StreamInfo {
            ssrc: 7,
            mime_type: "audio/opus".into(),
            ..Default::default()
        });
        (p, r, s)
    }

    #[test]
    fn audio_overtakes_queued_video_and_resends() {
        let t0 = Instant::now();
        let (mut p, _, _) = pacer(300_000.0);
        // Empty the budget with a burst of video, then queue more video, a resend and audio.
        for seq in 0..20 {
            p.handle_write(rtp(t0, 1, seq, 1000, false)).unwrap();
        }
        p.handle_write(rtp(t0, 1, 5, 1000, true)).unwrap();
        p.handle_write(rtp(t0, 7, 100, 120, false)).unwrap();
        p.handle_timeout(t0).unwrap();
        let first = drain(&mut p);
        assert!(first.len() < 20, "the burst is bounded: {first:?}");
        assert_eq!(first[0], (7, 100), "audio left first: {first:?}");
        assert_eq!(first[1], (1, 5), "then the resend: {first:?}");
        // The rest leaves at the rate, in order, within a second.
        let mut rest = vec![];
        let mut now = t0;
        while rest.len() + first.len() < 22 {
            now = p.poll_timeout().expect("a release is due");
            p.handle_timeout(now).unwrap();
            rest.extend(drain(&mut p));
        }
        assert!(now - t0 < Duration::from_secs(1), "{:?}", now - t0);
        assert!(now - t0 > Duration::from_millis(300), "{:?}", now - t0);
    }

    #[test]
    fn resends_stay_within_their_share_and_go_stale() {
        let t0 = Instant::now();
        let (mut p, rate, stale) = pacer(200_000.0);
        // 40 resends of 1000 bytes at once: 320 kbit, against a 60 kbit/s resend share.
        for seq in 0..40 {
            p.handle_write(rtp(t0, 1, seq, 1000, true)).unwrap();
        }
        let mut sent = 0;
        let mut now = t0;
        while let Some(at) = p.poll_timeout() {
            now = at;
            p.handle_timeout(now).unwrap();
            sent += drain(&mut p).len();
        }
        let resent = f64::from_bits(rate.load(Ordering::Relaxed));
        assert!(now - t0 <= RESEND_MAX_WAIT + Duration::from_millis(2));
        assert_eq!(sent as u64 + stale.load(Ordering::Relaxed), 40);
        assert!(stale.load(Ordering::Relaxed) > 20, "{stale:?}");
        assert!(
            resent > 0.0 && resent < 200_000.0 * RESEND_SHARE * 1.6,
            "{resent}"
        );
    }
}
