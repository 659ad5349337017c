//! Lightweight str0m WebRTC clients: a WHIP publisher writing synthetic VP8 frames and WHEP
//! viewers that only count what arrives. No encoding or decoding; each client owns one loopback
//! UDP socket and runs on its own thread, blocking in `recv_from` until its next deadline.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::http;

/// Counters one client shares with the controller.
#[derive(Debug, Default)]
pub struct Stats {
    /// ICE reached connected.
    pub connected: AtomicBool,
    /// Frames received (viewer) or written (publisher).
    pub frames: AtomicU64,
    /// Frame payload bytes received or written.
    pub bytes: AtomicU64,
    /// Frames received after a gap (str0m's `contiguous == false`).
    pub gaps: AtomicU64,
    /// Keyframe requests received (publisher).
    pub keyframe_requests: AtomicU64,
    /// Set when the client's loop stopped on an error.
    pub error: Mutex<Option<String>>,
    /// When DTLS completed (str0m `Event::Connected`).
    pub dtls_connected_at: Stamp,
    /// When the first video frame arrived (viewer).
    pub first_frame_at: Stamp,
    /// Whether that first frame was a keyframe.
    pub first_frame_key: AtomicBool,
    /// When the first video keyframe arrived (viewer).
    pub first_keyframe_at: Stamp,
    /// While set, a viewer records each frame's one-way latency into `latencies`.
    pub record_latency: AtomicBool,
    /// Arrival − send of every frame received while `record_latency` was set, nanoseconds.
    pub latencies: Mutex<Vec<u64>>,
    /// Publisher, while `record_latency` is set: per frame, from `write` to the last datagram
    /// of more than 200 bytes handed to the socket before the next frame, nanoseconds (how
    /// long the generator itself took to put the frame on the wire).
    pub send_spans: Mutex<Vec<u64>>,
}

/// An instant set once, read from another thread.
#[derive(Debug, Default)]
pub struct Stamp(Mutex<Option<Instant>>);

impl Stamp {
    fn set_once(&self, t: Instant) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(t);
        }
    }

    /// The instant, if set.
    pub fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process-wide time base of the send stamps publishers write into frames.
pub fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Where in a frame's payload the publisher writes its send time (nanoseconds since
/// [`clock_base`], little endian); frames are at least `STAMP_AT + 8` bytes.
pub const STAMP_AT: usize = 16;

impl Stats {
    /// The error that stopped the client, if any.
    pub fn error(&self) -> Option<String> {
        self.error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// The synthetic video source: sizes and timing of the VP8 frames a publisher writes.
#[derive(Debug, Clone, Copy)]
pub struct VideoSpec {
    /// Target average bitrate, bits/s (frame payload).
    pub bitrate: u64,
    /// Frames per second.
    pub fps: u32,
    /// A keyframe every this many frames (plus one whenever the server asks).
    pub gop: u64,
    /// Keyframe size relative to a delta frame.
    pub keyframe_ratio: f64,
}

impl VideoSpec {
    /// (keyframe bytes, delta frame bytes) so that one GOP averages `bitrate`.
    pub fn frame_sizes(&self) -> (usize, usize) {
        let avg = self.bitrate as f64 / 8.0 / f64::from(self.fps);
        let gop = self.gop.max(1) as f64;
        let delta = avg * gop / (self.keyframe_ratio + gop - 1.0);
        let min = (STAMP_AT + 8) as f64;
        (
            (delta * self.keyframe_ratio).round().max(min) as usize,
            delta.round().max(min) as usize,
        )
    }
}

/// A client whose offer is made but not yet answered.
pub struct Pending {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    mid: Mid,
    offer: String,
    location: Option<String>,
}

/// A running client thread.
pub struct Running {
    pub stats: Arc<Stats>,
    pub thread: JoinHandle<()>,
    /// The session URL path from the answer's `Location` header (for `DELETE`).
    pub location: Option<String>,
}

impl Pending {
    /// A new client on its own loopback socket with a VP8-only offer for one video m-line
    /// (`SendOnly` for a publisher, `RecvOnly` for a viewer).
    pub fn new(dir: Direction) -> Result<Pending> {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Keyframes arrive as bursts of ~100 datagrams; a larger buffer avoids self-inflicted loss.
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>()?.into())?;
        let socket: UdpSocket = sock.into();
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_vp8(true)
            .set_stats_interval(None)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp").context("host candidate")?);
        let mut api = rtc.sdp_api();
        let mid = api.add_media(MediaKind::Video, dir, None, None, None);
        let (offer, pending) = api.apply().context("no offer")?;
        Ok(Pending {
            rtc,
            socket,
            local,
            pending: Some(pending),
            mid,
            offer: offer.to_sdp_string(),
            location: None,
        })
    }

    /// POSTs the offer to `path` (`/whip/S` or `/whep/S`) and applies the answer.
    pub fn exchange(mut self, http_addr: SocketAddr, path: &str, token: &str) -> Result<Pending> {
        let auth = format!("Bearer {token}");
        let r = http::request(
            http_addr,
            "POST",
            path,
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &auth),
            ],
            self.offer.as_bytes(),
            Duration::from_secs(10),
        )?;
        if r.status != 201 {
            bail!("POST {path} answered {}: {}", r.status, r.text().trim());
        }
        self.location = r.header("location").map(str::to_owned);
        let answer = SdpAnswer::from_sdp_string(&r.text()).context("answer is not SDP")?;
        let pending = self.pending.take().context("offer already answered")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .context("accept answer")?;
        Ok(self)
    }

    /// Runs the client on its own thread until `stop`; a publisher writes frames per `video`.
    pub fn spawn(self, stop: Arc<AtomicBool>, video: Option<VideoSpec>) -> Result<Running> {
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        let name = if video.is_some() {
            "publisher"
        } else {
            "viewer"
        };
        let location = self.location.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut client = Client {
                    rtc: self.rtc,
                    socket: self.socket,
                    local: self.local,
                    stats: s.clone(),
                    last_write: None,
                };
                let source = video.map(|v| Source::new(self.mid, v));
                if let Err(e) = client.run(&stop, source) {
                    *s.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
                }
            })?;
        Ok(Running {
            stats,
            thread,
            location,
        })
    }
}

struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    stats: Arc<Stats>,
    /// Publisher: when the last frame was written, and when its last media datagram left.
    last_write: Option<(Instant, Option<Instant>)>,
}

/// Writes synthetic VP8 frames on a fixed cadence.
struct Source {
    mid: Mid,
    pt: Option<Pt>,
    n: u64,
    next: Instant,
    interval: Duration,
    spec: VideoSpec,
    keyframe: Arc<[u8]>,
    delta: Arc<[u8]>,
    force_keyframe: bool,
}

impl Source {
    fn new(mid: Mid, spec: VideoSpec) -> Source {
        let (kb, db) = spec.frame_sizes();
        // VP8 payload header: bit 0 of the first byte is 0 for a keyframe; then the start code
        // and a 1280×720 size, as a real keyframe has. The rest is filler: nobody decodes it.
        let mut key = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02];
        key.resize(kb, 0x5a);
        let mut delta = vec![0x11, 0x02, 0x00];
        delta.resize(db, 0xa5);
        Source {
            mid,
            pt: None,
            n: 0,
            next: Instant::now(),
            interval: Duration::from_secs_f64(1.0 / f64::from(spec.fps.max(1))),
            spec,
            keyframe: key.into(),
            delta: delta.into(),
            force_keyframe: false,
        }
    }

    fn write(&mut self, rtc: &mut Rtc, now: Instant, stats: &Stats) -> Result<()> {
        let Some(w) = rtc.writer(self.mid) else {
            bail!("no writer for the video mid")
        };
        let pt = match self.pt {
            Some(pt) => pt,
            None => {
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Vp8)
                    .context("VP8 not negotiated")?
                    .pt();
                self.pt = Some(pt);
                pt
            }
        };
        let key =
            self.n.is_multiple_of(self.spec.gop.max(1)) || std::mem::take(&mut self.force_keyframe);
        let mut data = if key {
            self.keyframe.to_vec()
        } else {
            self.delta.to_vec()
        };
        // The send time, for the viewers' latency: nanoseconds since the shared base.
        let sent = now.saturating_duration_since(clock_base()).as_nanos() as u64;
        data[STAMP_AT..STAMP_AT + 8].copy_from_slice(&sent.to_le_bytes());
        let len = data.len() as u64;
        let rtp_time = MediaTime::new(
            self.n * 90_000 / u64::from(self.spec.fps.max(1)),
            Frequency::NINETY_KHZ,
        );
        w.write(pt, now, rtp_time, data).context("write frame")?;
        self.n += 1;
        stats.frames.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(len, Ordering::Relaxed);
        self.next += self.interval;
        // Fell far behind (descheduled): skip ahead rather than burst.
        if now.saturating_duration_since(self.next) > self.interval * 5 {
            self.next = now + self.interval;
        }
        Ok(())
    }
}

impl Client {
    fn run(&mut self, stop: &AtomicBool, mut source: Option<Source>) -> Result<()> {
        let mut buf = vec![0u8; 2048];
        let max_wait = Duration::from_millis(50);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Some(src) = source.as_mut() {
                let now = Instant::now();
                if self.stats.connected.load(Ordering::Relaxed) && now >= src.next {
                    if let Some((w, Some(last))) = self.last_write {
                        if self.stats.record_latency.load(Ordering::Relaxed) {
                            let span = last.saturating_duration_since(w).as_nanos() as u64;
                            self.stats
                                .send_spans
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(span);
                        }
                    }
                    src.write(&mut self.rtc, now, &self.stats)?;
                    self.last_write = Some((now, None));
                }
            }
            let mut wake = self.drain(source.as_mut())?;
            if let Some(src) = &source {
                if self.stats.connected.load(Ordering::Relaxed) {
                    wake = wake.min(src.next);
                }
            }
            let now = Instant::now();
            let wait = wake.saturating_duration_since(now).min(max_wait);
            if wait.is_zero() {
                self.rtc.handle_input(Input::Timeout(now))?;
                continue;
            }
            self.socket.set_read_timeout(Some(wait))?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let r = Receive::new(Protocol::Udp, from, self.local, &buf[..n])
                        .context("parse datagram")?;
                    self.rtc.handle_input(Input::Receive(Instant::now(), r))?;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                }
                // ICMP errors from a departed server surface here; the server's death is
                // noticed by the controller.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e).context("recv"),
            }
        }
    }

    /// Drains `poll_output` until it yields its next deadline.
    fn drain(&mut self, mut source: Option<&mut Source>) -> Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination) {
                        if !matches!(
                            e.kind(),
                            ErrorKind::ConnectionRefused | ErrorKind::WouldBlock
                        ) {
                            return Err(e).context("send");
                        }
                    }
                    if t.contents.len() > 200 {
                        if let Some((_, last)) = self.last_write.as_mut() {
                            *last = Some(Instant::now());
                        }
                    }
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Connected | IceConnectionState::Completed,
                )) => {
                    self.stats.connected.store(true, Ordering::Relaxed);
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => {
                    bail!("ICE disconnected");
                }
                Output::Event(Event::Connected) => {
                    self.stats.dtls_connected_at.set_once(Instant::now())
                }
                Output::Event(Event::MediaData(d)) => {
                    let now = Instant::now();
                    self.stats
                        .first_frame_at
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| {
                            self.stats
                                .first_frame_key
                                .store(d.is_keyframe(), Ordering::Relaxed);
                            now
                        });
                    if d.is_keyframe() {
                        self.stats.first_keyframe_at.set_once(now);
                    }
                    if self.stats.record_latency.load(Ordering::Relaxed) {
                        if let Some(b) = d.data.get(STAMP_AT..STAMP_AT + 8) {
                            let sent = u64::from_le_bytes(b.try_into().unwrap_or_default());
                            let arrived =
                                now.saturating_duration_since(clock_base()).as_nanos() as u64;
                            self.stats
                                .latencies
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(arrived.saturating_sub(sent));
                        }
                    }
                    self.stats.frames.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes
                        .fetch_add(d.data.len() as u64, Ordering::Relaxed);
                    if !d.contiguous {
                        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Event(Event::KeyframeRequest(_)) => {
                    self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(src) = source.as_deref_mut() {
                        src.force_keyframe = true;
                    }
                }
                Output::Event(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_average_to_the_bitrate() {
        let spec = VideoSpec {
            bitrate: 2_500_000,
            fps: 30,
            gop: 60,
            keyframe_ratio: 5.0,
        };
        let (k, d) = spec.frame_sizes();
        let gop_bits = (k + 59 * d) as f64 * 8.0;
        let rate = gop_bits / 2.0;
        assert!((rate - 2_500_000.0).abs() < 2_000.0, "{rate}");
        assert!(k > 4 * d);
    }
}
