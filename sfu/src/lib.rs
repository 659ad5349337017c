//! The SFU engine: every WebRTC session of the node (str0m `Rtc`s) on one UDP socket, wired to
//! the forwarding core ([`forward`]).
//!
//! Sans-IO like str0m itself: the engine owns no socket, task or clock. The shell
//! (`media_server::media`) feeds it datagrams with [`Sfu::handle_receive`] and time with
//! [`Sfu::handle_timeout`], sends what [`Sfu::poll_transmit`] yields, and sleeps until
//! [`Sfu::poll_timeout`]. Because of that, tests can drive a whole publish/view exchange in
//! virtual time.
//!
//! ```no_run
//! # use sfu::{Sfu, SfuConfig};
//! # use std::time::Instant;
//! # let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
//! let mut sfu = Sfu::new(SfuConfig::default(), socket.local_addr().unwrap());
//! let mut buf = vec![0; 65536];
//! loop {
//!     while let Some(t) = sfu.poll_transmit() {
//!         let _ = socket.send_to(&t.contents, t.destination);
//!     }
//!     let next = sfu.poll_timeout().unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
//!     let wait = next.saturating_duration_since(Instant::now());
//!     socket.set_read_timeout(Some(wait.max(std::time::Duration::from_millis(1)))).unwrap();
//!     match socket.recv_from(&mut buf) {
//!         Ok((n, from)) => sfu.handle_receive(Instant::now(), from, &buf[..n]),
//!         Err(_) => sfu.handle_timeout(Instant::now()),
//!     }
//!     while let Some(_event) = sfu.poll_event() {
//!         // a stream came or went, its viewers or layers changed: the shell's tables
//!     }
//!     let _counters = sfu.counters(); // the shell's metrics
//! }
//! ```
//!
//! The engine writes no table of the shell: what the shell shows (`/api/streams`, `/metrics`)
//! leaves through [`Sfu::poll_event`] and [`Sfu::counters`].
//!
//! Sessions are ICE-lite with one host candidate (the advertised address) and accept peer-reflexive
//! candidates, so clients behind NAT or with only mDNS candidates still connect. A 5-tuple is
//! bound to its session on first acceptance, so steady-state demultiplexing is one hash lookup.

mod bwe;
pub mod codec;
mod config;
mod engine;
mod error;
mod fanout;
pub mod forward;
mod output;
mod remote;
mod sdp;
mod session;
mod simulcast;

pub use config::SfuConfig;
pub use engine::Sfu;
pub use error::SfuError;
pub use output::{Counters, DropReason, Event, Transmit};
pub use remote::{TrunkRequest, NARROW_AFTER, REMOTE_FALLBACK_AFTER, REMOTE_PULL_TICK};
pub use session::SessionAnswer;

#[cfg(test)]
mod tests {
    //! The engine in virtual time against real str0m peers: no sockets, no sleeps; the clients
    //! are driven in 5 ms steps, the SFU also at its own deadlines in between (as the media task
    //! does), and every datagram is delivered by address.
    use super::*;
    use std::collections::{BTreeMap, VecDeque};
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use str0m::net::{Protocol, Receive};
    use str0m::Input;

    use signaling::ids::{StreamName, Subject};
    use str0m::bwe::BweKind;
    use str0m::format::Codec;
    use str0m::media::{MediaData, MediaKind, Mid};
    use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Output, Rtc, RtcConfig};

    use crate::fanout::MAX_FANOUT_SLICE;
    use crate::forward::{Layer, LayerPref};
    use crate::remote::ALL_LAYERS;
    use crate::sdp::{first_mids, offer_prefers_h264};
    use crate::session::PeerRole;

    use trunk::media::TrunkOutput;

    use crate::codec::{keyframe_dims, VideoCodec};
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, Frequency, MediaTime};

    const SFU: &str = "10.0.0.100:5000";
    const STEP: Duration = Duration::from_millis(5);

    /// (bits per second, when the link is free, datagrams with their arrival time, bytes queued).
    type DownCap = (u64, Instant, VecDeque<(Instant, Vec<u8>)>, usize);

    struct Client {
        addr: SocketAddr,
        rtc: Rtc,
        video_mid: Option<Mid>,
        audio_mid: Option<Mid>,
        connected: bool,
        /// A bottleneck on the SFU → client direction: (bits per second, when the link is free
        /// again, datagrams in flight with their arrival time, bytes queued).
        down_cap: Option<DownCap>,
        video: Vec<MediaData>,
        audio: usize,
        keyframe_requests: usize,
        /// REMB targets received (bits per second), in order.
        remb: Vec<u64>,
    }

    /// A live stream as the engine's events describe it (the shell's table, in miniature).
    #[derive(Debug)]
    struct Live {
        video_codec: Option<String>,
        viewers: usize,
    }

    struct World {
        now: Instant,
        sfu: Sfu,
        /// The streams the engine reported live, kept from its events by [`World::live`].
        live: BTreeMap<StreamName, Live>,
        clients: Vec<Client>,
        /// Probability that a datagram (either direction) is lost; seeded.
        loss: f64,
        rng: rand::rngs::StdRng,
    }

    impl World {
        fn new() -> World {
            static CRYPTO: std::sync::Once = std::sync::Once::new();
            CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
            let now = Instant::now();
            World {
                now,
                sfu: Sfu::new(SfuConfig::default(), SFU.parse().unwrap()),
                live: BTreeMap::new(),
                clients: Vec::new(),
                loss: 0.0,
                rng: rand::SeedableRng::seed_from_u64(42),
            }
        }

        /// Adds a client whose offer has the given media, returns (index, offer SDP, pending).
        fn client(
            &mut self,
            port: u16,
            media: &[(MediaKind, Direction)],
        ) -> (usize, String, str0m::change::SdpPendingOffer) {
            self.client_with(port, media, &[])
        }

        /// Like `client`, with the video sent as RID simulcast when `rids` is not empty.
        fn client_with(
            &mut self,
            port: u16,
            media: &[(MediaKind, Direction)],
            rids: &[&str],
        ) -> (usize, String, str0m::change::SdpPendingOffer) {
            let addr: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
            let mut rtc = RtcConfig::new().build(self.now);
            rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            let mut api = rtc.sdp_api();
            for (kind, dir) in media {
                let simulcast = (*kind == MediaKind::Video && !rids.is_empty()).then(|| {
                    let mut s = str0m::media::Simulcast::new();
                    for rid in rids {
                        s.add_send_layer(str0m::media::SimulcastLayer::new(rid));
                    }
                    s
                });
                api.add_media(*kind, *dir, None, None, simulcast);
            }
            let (offer, pending) = api.apply().unwrap();
            let offer = offer.to_sdp_string();
            let (video_mid, audio_mid) = first_mids(&offer);
            self.clients.push(Client {
                addr,
                rtc,
                video_mid,
                audio_mid,
                connected: false,
                down_cap: None,
                video: Vec::new(),
                audio: 0,
                keyframe_requests: 0,
                remb: Vec::new(),
            });
            (self.clients.len() - 1, offer, pending)
        }

        /// A publisher of "cam" (owner off-1) at `port`, connected. Returns its index.
        fn connected_publisher(
            &mut self,
            port: u16,
            media: &[(MediaKind, Direction)],
            rids: &[&str],
        ) -> usize {
            let (p, offer, pending) = self.client_with(port, media, rids);
            let now = self.now;
            let answer = self
                .sfu
                .publish(now, name("cam"), subj("off-1"), &offer)
                .unwrap();
            self.accept(p, pending, &answer.sdp);
            self.run_until("publisher connected", |w| w.clients[p].connected);
            p
        }

        /// A viewer of "cam" at `port` with `pref`, connected. Returns its index.
        fn connected_viewer(
            &mut self,
            port: u16,
            media: &[(MediaKind, Direction)],
            pref: LayerPref,
        ) -> usize {
            let (v, offer, pending) = self.client(port, media);
            let now = self.now;
            let answer = self.sfu.view(now, &name("cam"), &offer, pref).unwrap();
            self.accept(v, pending, &answer.sdp);
            self.run_until("viewer connected", |w| w.clients[v].connected);
            v
        }

        /// The live streams by name, after applying the engine's events so far.
        fn live(&mut self) -> Vec<&Live> {
            while let Some(e) = self.sfu.poll_event() {
                match e {
                    Event::StreamUp {
                        name,
                        video_codec,
                        viewers,
                        ..
                    } => {
                        let s = Live {
                            video_codec,
                            viewers,
                        };
                        self.live.insert(name, s);
                    }
                    Event::StreamDown { name } => {
                        self.live.remove(&name);
                    }
                    Event::Viewers { name, count } => {
                        if let Some(s) = self.live.get_mut(&name) {
                            s.viewers = count;
                        }
                    }
                    Event::Layers { .. } => {}
                }
            }
            self.live.values().collect()
        }

        fn accept(&mut self, i: usize, pending: str0m::change::SdpPendingOffer, answer: &str) {
            let answer = SdpAnswer::from_sdp_string(answer).unwrap();
            self.clients[i]
                .rtc
                .sdp_api()
                .accept_answer(pending, answer)
                .unwrap();
        }

        /// One step of virtual time: drive every client and the SFU, deliver every datagram.
        fn step(&mut self) {
            self.now += STEP;
            let now = self.now;
            let sfu_addr: SocketAddr = SFU.parse().unwrap();
            for c in &mut self.clients {
                c.rtc.handle_input(Input::Timeout(now)).unwrap();
                loop {
                    match c.rtc.poll_output().unwrap() {
                        Output::Timeout(_) => break,
                        Output::Transmit(t) => {
                            if !rand::Rng::gen_bool(&mut self.rng, self.loss) {
                                self.sfu.handle_receive(now, c.addr, &t.contents)
                            }
                        }
                        Output::Event(RtcEvent::IceConnectionStateChange(
                            IceConnectionState::Connected | IceConnectionState::Completed,
                        )) => c.connected = true,
                        Output::Event(RtcEvent::MediaData(d))
                            if d.params.spec().codec == Codec::Opus =>
                        {
                            c.audio += 1
                        }
                        Output::Event(RtcEvent::MediaData(d)) => c.video.push(d),
                        Output::Event(RtcEvent::KeyframeRequest(_)) => c.keyframe_requests += 1,
                        Output::Event(RtcEvent::EgressBitrateEstimate(BweKind::Remb {
                            estimate,
                            ..
                        })) => c.remb.push(estimate.as_u64()),
                        Output::Event(_) => {}
                    }
                }
            }
            self.sfu.handle_timeout(now);
            self.send_from_sfu(now);
            // Until the next step, wake the SFU at its own deadlines as the media task does
            // (`Sfu::poll_timeout`). str0m's pacer releases one packet per timeout and asks to be
            // woken again a microsecond later; woken only every 5 ms, a viewer session could send
            // at most ~200 packets a second, which starves padding and smears probes so much that
            // the estimate cannot recover once a cap is lifted. A capped link delivers each
            // datagram when its serialisation ends.
            let end = now + STEP;
            let mut t = now;
            loop {
                let sfu_at = self.sfu.poll_timeout().filter(|at| *at > t);
                let link_at = self
                    .clients
                    .iter()
                    .filter_map(|c| c.down_cap.as_ref()?.2.front().map(|(due, _)| *due))
                    .min();
                let Some(next) = [sfu_at, link_at]
                    .into_iter()
                    .flatten()
                    .min()
                    .filter(|at| *at < end)
                else {
                    break;
                };
                t = next.max(t);
                for c in &mut self.clients {
                    while let Some((_, _, queue, queued)) = c.down_cap.as_mut() {
                        if queue.front().is_none_or(|(due, _)| *due > t) {
                            break;
                        }
                        let (_, data) = queue.pop_front().unwrap();
                        *queued -= data.len();
                        let r = Receive::new(Protocol::Udp, sfu_addr, c.addr, &data).unwrap();
                        c.rtc.handle_input(Input::Receive(t, r)).unwrap();
                    }
                }
                if sfu_at == Some(next) {
                    self.sfu.handle_timeout(t);
                    self.send_from_sfu(t);
                }
            }
        }

        /// Delivers what the SFU has to send at `now`: at once, or into a capped link's queue.
        fn send_from_sfu(&mut self, now: Instant) {
            let sfu_addr: SocketAddr = SFU.parse().unwrap();
            while let Some(t) = self.sfu.poll_transmit() {
                if rand::Rng::gen_bool(&mut self.rng, self.loss) {
                    continue;
                }
                let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination) else {
                    continue;
                };
                if let Some((bps, free_at, queue, queued)) = c.down_cap.as_mut() {
                    // Serialise at the capped rate behind a 16 KiB buffer (~0.4 s at 300 kbit/s,
                    // a cellular-like bottleneck); tail-drop beyond.
                    if *queued + t.contents.len() > 16 * 1024 {
                        continue;
                    }
                    let start = (*free_at).max(now);
                    *free_at = start
                        + Duration::from_micros(t.contents.len() as u64 * 8 * 1_000_000 / *bps);
                    *queued += t.contents.len();
                    queue.push_back((*free_at, t.contents));
                    continue;
                }
                let r = Receive::new(Protocol::Udp, sfu_addr, c.addr, &t.contents).unwrap();
                c.rtc.handle_input(Input::Receive(now, r)).unwrap();
            }
        }

        fn run_until(&mut self, what: &str, mut done: impl FnMut(&World) -> bool) {
            for _ in 0..2000 {
                if done(self) {
                    return;
                }
                self.step();
            }
            panic!("not reached within 10 s of virtual time: {what}");
        }

        /// Writes one VP8 frame (keyframe or not) from client `i`'s first video track.
        fn write_vp8(&mut self, i: usize, n: u64, keyframe: bool) {
            let now = self.now;
            let c = &mut self.clients[i];
            let mid = c.video_mid.expect("client has video");
            let w = c.rtc.writer(mid).unwrap();
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == Codec::Vp8)
                .unwrap()
                .pt();
            // VP8 payload header: bit 0 of the first byte is 0 for a keyframe.
            let mut frame = vec![
                if keyframe { 0x10 } else { 0x11 },
                0x02,
                0x00,
                0x9d,
                0x01,
                0x2a,
            ];
            frame.extend(std::iter::repeat_n(n as u8, 1500));
            w.write(
                pt,
                now,
                MediaTime::new(n * 3000, Frequency::NINETY_KHZ),
                frame,
            )
            .unwrap();
        }

        /// Writes one VP8 frame of `width`×`height` on simulcast layer `rid`.
        /// `layer` = (rid, width, height, timestamp base).
        fn write_vp8_layer(
            &mut self,
            i: usize,
            layer: (&str, u16, u16, u64),
            n: u64,
            keyframe: bool,
        ) {
            let (rid, width, height, ts_base) = layer;
            let now = self.now;
            let c = &mut self.clients[i];
            let mid = c.video_mid.expect("client has video");
            let w = c.rtc.writer(mid).unwrap().rid(rid.into());
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == Codec::Vp8)
                .unwrap()
                .pt();
            let mut frame = vec![
                if keyframe { 0x10 } else { 0x11 },
                0x02,
                0x00,
                0x9d,
                0x01,
                0x2a,
            ];
            frame.extend(width.to_le_bytes());
            frame.extend(height.to_le_bytes());
            frame.extend(std::iter::repeat_n(n as u8, usize::from(width) / 4));
            w.write(
                pt,
                now,
                MediaTime::new(ts_base + n * 3000, Frequency::NINETY_KHZ),
                frame,
            )
            .unwrap();
        }

        /// Writes frame `n` of each simulcast layer `(rid, width, bytes)` from client `i` (16:9,
        /// each layer's timestamps offset so they differ); keyframes when `keyframe`.
        fn write_layers(
            &mut self,
            i: usize,
            layers: &[(&str, u16, usize)],
            n: u64,
            keyframe: bool,
        ) {
            for (l, (rid, width, size)) in layers.iter().enumerate() {
                let now = self.now;
                let c = &mut self.clients[i];
                let wr = c
                    .rtc
                    .writer(c.video_mid.unwrap())
                    .unwrap()
                    .rid((*rid).into());
                let pt = wr
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Vp8)
                    .unwrap()
                    .pt();
                let mut frame = vec![
                    if keyframe { 0x10 } else { 0x11 },
                    0x02,
                    0x00,
                    0x9d,
                    0x01,
                    0x2a,
                ];
                frame.extend(width.to_le_bytes());
                frame.extend((width * 9 / 16).to_le_bytes());
                frame.resize(size + 10, l as u8);
                wr.write(
                    pt,
                    now,
                    MediaTime::new(n * 3000 + l as u64 * 1_000_000, Frequency::NINETY_KHZ),
                    frame,
                )
                .unwrap();
            }
        }

        fn write_opus(&mut self, i: usize, n: u64) {
            let now = self.now;
            let c = &mut self.clients[i];
            let mid = c.audio_mid.expect("client has audio");
            let w = c.rtc.writer(mid).unwrap();
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == Codec::Opus)
                .unwrap()
                .pt();
            w.write(
                pt,
                now,
                MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ),
                vec![0xfc, 1, 2, 3],
            )
            .unwrap();
        }
    }

    #[test]
    fn codec_preference_follows_the_offer() {
        let h264 = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 108 96\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:108 H264/90000\r\n";
        let vp8 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 108\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:108 H264/90000\r\n";
        assert!(offer_prefers_h264(h264));
        assert!(!offer_prefers_h264(vp8));
        assert!(!offer_prefers_h264("garbage"));
    }

    fn name(s: &str) -> StreamName {
        s.parse().unwrap()
    }
    fn subj(s: &str) -> Subject {
        s.parse().unwrap()
    }

    #[test]
    fn viewer_gets_publisher_media_starting_at_a_keyframe() {
        let mut w = World::new();
        let av = [
            (MediaKind::Video, Direction::SendOnly),
            (MediaKind::Audio, Direction::SendOnly),
        ];
        let (p, offer, pending) = w.client(1000, &av);
        let now = w.now;
        let answer = w
            .sfu
            .publish(now, name("cam"), subj("off-1"), &offer)
            .unwrap();
        w.accept(p, pending, &answer.sdp);
        w.run_until("publisher connected", |w| w.clients[p].connected);
        assert_eq!(w.live().len(), 1);
        assert_eq!(w.live()[0].video_codec.as_deref(), Some("VP8"));

        // A live encoder: one frame per 30 ms, a keyframe only at the start and when asked.
        let mut n = 0u64;
        let mut answered = 0;
        let mut pump = |w: &mut World, frames: u64| {
            for _ in 0..frames {
                let asked = w.clients[p].keyframe_requests > answered;
                answered = w.clients[p].keyframe_requests;
                w.write_vp8(p, n, n == 0 || asked);
                w.write_opus(p, n);
                n += 1;
                for _ in 0..6 {
                    w.step();
                }
            }
        };
        pump(&mut w, 20);

        let rv = [
            (MediaKind::Video, Direction::RecvOnly),
            (MediaKind::Audio, Direction::RecvOnly),
        ];
        let (v, offer, pending) = w.client(2000, &rv);
        let now = w.now;
        let answer = w
            .sfu
            .view(now, &name("cam"), &offer, LayerPref::Auto)
            .unwrap();
        w.accept(v, pending, &answer.sdp);
        for _ in 0..100 {
            pump(&mut w, 1);
            if w.clients[v].video.len() >= 60 {
                break;
            }
        }
        let video = &w.clients[v].video;
        assert!(video.len() >= 60, "viewer got {} frames", video.len());
        assert!(
            video[0].is_keyframe(),
            "the first frame a viewer sees is a keyframe"
        );
        assert!(
            video.iter().all(|d| d.contiguous),
            "no gap after the keyframe"
        );
        assert!(
            w.clients[p].keyframe_requests >= 1,
            "the SFU asked the publisher for a keyframe"
        );
        // Fast join: the keyframe came within a few frames of the viewer connecting.
        assert!(
            n - 20 - video.len() as u64 <= 10,
            "{} frames passed before the viewer's first",
            n - 20 - video.len() as u64
        );
        assert!(
            w.clients[v].audio >= 60,
            "audio is never held back: {}",
            w.clients[v].audio
        );
        assert!(w.sfu.counters().drops(DropReason::WaitingKeyframe) >= 1);
        assert_eq!(w.live()[0].viewers, 1);
    }

    #[test]
    fn loss_is_repaired_by_nack_and_rtx_both_ways() {
        let mut w = World::new();
        let p = w.connected_publisher(1000, &[(MediaKind::Video, Direction::SendOnly)], &[]);
        let v = w.connected_viewer(
            2000,
            &[(MediaKind::Video, Direction::RecvOnly)],
            LayerPref::Auto,
        );

        // 5 % loss on every datagram in both directions, RTCP included, for 150 frames (5 s).
        w.loss = 0.05;
        for n in 0..150u64 {
            w.write_vp8(p, n, n == 0);
            for _ in 0..6 {
                w.step();
            }
        }
        w.loss = 0.0;
        // Two seconds more for the last repairs. At 5 % loss of every datagram, NACKs and
        // retransmissions included, a packet may stay lost after str0m's NACK retries; the
        // media-quality bar is 99 % of packets, so at least 98 % of these two-packet frames.
        for _ in 0..400 {
            w.step();
        }
        let video = &w.clients[v].video;
        let late = w.sfu.counters().drops(DropReason::Late) as usize;
        assert!(video.len() + late <= 150, "no frame delivered twice");
        assert!(
            video.len() >= 147,
            "at least 98 % of frames delivered: {} (+{late} late)",
            video.len()
        );
        let gaps = video.iter().filter(|d| !d.contiguous).count();
        assert!(
            gaps <= 150 - video.len(),
            "a gap only where a frame could not be repaired: {gaps}"
        );
        // The SFU sent them in order: by the sequence numbers it gave them, frames run 0..150.
        // (The test client's own str0m receiver may hand a frame repaired late to the test after
        // the next one; a browser's jitter buffer reorders, so arrival order is not checked.)
        let mut by_seq: Vec<(u64, u8)> = video
            .iter()
            .map(|d| (**d.seq_range.start(), d.data[6]))
            .collect();
        by_seq.sort();
        assert!(
            by_seq.windows(2).all(|p| p[0].1 < p[1].1),
            "sent in order: {by_seq:?}"
        );
        let m = w.sfu.counters();
        assert!(m.nacks_out > 0, "the SFU asked the publisher to repair");
        assert!(m.nacks_in > 0, "the viewer asked the SFU to repair");
    }

    #[test]
    fn simulcast_viewers_get_their_layer_and_switch_on_keyframes_without_timestamp_jumps() {
        let mut w = World::new();
        let (p, offer, pending) = w.client_with(
            1000,
            &[(MediaKind::Video, Direction::SendOnly)],
            &["q", "h", "f"],
        );
        assert!(offer.contains("a=simulcast:send"), "{offer}");
        let now = w.now;
        let answer = w
            .sfu
            .publish(now, name("cam"), subj("off-1"), &offer)
            .unwrap();
        assert!(answer.sdp.contains("a=simulcast:recv"), "{}", answer.sdp);
        w.accept(p, pending, &answer.sdp);
        w.run_until("publisher connected", |w| w.clients[p].connected);

        // Layers with their own timestamp bases, as real encoders have.
        let layers = [
            ("q", 320u16, 180u16, 1_000_000u64),
            ("h", 640, 360, 5_000_000),
            ("f", 1280, 720, 9_000_000),
        ];
        let mut n = 0u64;
        let mut answered = 0usize;
        let mut pump = |w: &mut World, frames: u64| {
            for _ in 0..frames {
                let asked = w.clients[p].keyframe_requests > answered;
                answered = w.clients[p].keyframe_requests;
                for layer in layers {
                    w.write_vp8_layer(p, layer, n, n == 0 || asked);
                }
                n += 1;
                for _ in 0..6 {
                    w.step();
                }
            }
        };
        pump(&mut w, 10);
        let rv = [(MediaKind::Video, Direction::RecvOnly)];
        let mut viewers = Vec::new();
        for (port, pref) in [(2000, LayerPref::Low), (2001, LayerPref::High)] {
            let (v, offer, pending) = w.client(port, &rv);
            let now = w.now;
            let answer = w.sfu.view(now, &name("cam"), &offer, pref).unwrap();
            w.accept(v, pending, &answer.sdp);
            viewers.push(v);
        }
        pump(&mut w, 40);
        let widths = |w: &World, v: usize| -> Vec<u32> {
            w.clients[v]
                .video
                .iter()
                .filter_map(|d| keyframe_dims(VideoCodec::Vp8, &d.data))
                .map(|d| d.0)
                .collect()
        };
        let (low, high) = (viewers[0], viewers[1]);
        assert!(w.clients[low].video.len() >= 30 && w.clients[high].video.len() >= 30);
        assert_eq!(
            widths(&w, low).first(),
            Some(&320),
            "the low viewer starts on the smallest layer"
        );
        assert_eq!(
            widths(&w, high).first(),
            Some(&1280),
            "the high viewer on the largest"
        );
        assert!(
            w.clients[low].video.iter().all(|d| d.data.len() < 200),
            "only low-layer frames"
        );

        // The low viewer asks for high: it moves at the next high keyframe, and its timestamps
        // run on without a jump (90 kHz, 30 fps: 3000 per frame; the switch may differ by the
        // wall-clock time between the two layers' frames).
        // Viewer peer ids are allocated in order: the low viewer's is the smaller.
        let low_peer = w
            .sfu
            .peers
            .iter()
            .filter(|(_, pe)| matches!(pe.role, PeerRole::Viewer { .. }))
            .map(|(id, _)| *id)
            .min()
            .unwrap();
        let now = w.now;
        w.sfu.fwd.set_viewer_pref(now, low_peer, LayerPref::High);
        w.sfu.after_input(now);
        let before = w.clients[low].video.len();
        pump(&mut w, 30);
        let after = &w.clients[low].video[before..];
        let first_big = after
            .iter()
            .position(|d| d.data.len() > 200)
            .expect("switched to high");
        assert!(
            after[first_big].is_keyframe(),
            "the switch lands on a keyframe"
        );
        assert!(
            first_big <= 3,
            "switch within a few frames of asking ({first_big})"
        );
        assert!(after.iter().all(|d| d.contiguous));
        let ts: Vec<u64> = w.clients[low]
            .video
            .iter()
            .map(|d| d.time.numer())
            .collect();
        for pair in ts.windows(2) {
            let step = pair[1].wrapping_sub(pair[0]);
            assert!(
                (1..=9000).contains(&step),
                "timestamps run on across the switch: {pair:?}"
            );
        }
        assert_eq!(w.sfu.forward_counters().layer_switches, 1);
    }

    #[test]
    fn auto_layer_follows_a_capped_link_down_on_keyframes() {
        let mut w = World::new();
        let p = w.connected_publisher(
            1000,
            &[(MediaKind::Video, Direction::SendOnly)],
            &["q", "h", "f"],
        );
        let v = w.connected_viewer(
            2000,
            &[(MediaKind::Video, Direction::RecvOnly)],
            LayerPref::Auto,
        );
        let viewer = w
            .sfu
            .peers
            .iter()
            .find(|(_, pe)| matches!(pe.role, PeerRole::Viewer { .. }))
            .map(|(id, _)| *id)
            .unwrap();

        // Browser-like layers: 150 / 500 / 1200 kbit/s at 30 fps; frame size tells them apart.
        let sizes = [("q", 320u16, 625usize), ("h", 640, 2083), ("f", 1280, 5000)];
        let layer_of = |len: usize| {
            sizes
                .iter()
                .position(|(_, _, s)| len.abs_diff(*s + 10) < 20)
        };
        let mut n = 0u64;
        let mut answered = 0usize;
        // Runs `secs` of virtual time; returns the layer index of each frame the viewer got, with
        // the virtual time it arrived and whether it was a keyframe, and when the SFU first
        // forwarded the low layer to the viewer.
        type Arrivals = Vec<(Instant, Option<usize>, bool)>;
        let mut run = |w: &mut World, secs: u64| -> (Arrivals, Option<Instant>) {
            let before = w.clients[v].video.len();
            let mut arrived = Vec::new();
            let mut sfu_low = None;
            for _ in 0..secs * 30 {
                let asked = w.clients[p].keyframe_requests > answered;
                answered = w.clients[p].keyframe_requests;
                w.write_layers(p, &sizes, n, n == 0 || asked);
                n += 1;
                for _ in 0..6 {
                    w.step();
                    if sfu_low.is_none() && w.sfu.fwd.viewer_layer(viewer) == Some(Layer(0)) {
                        sfu_low = Some(w.now);
                    }
                    let c = &w.clients[v];
                    for d in &c.video[before + arrived.len()..] {
                        arrived.push((w.now, layer_of(d.data.len()), d.is_keyframe()));
                    }
                }
            }
            (arrived, sfu_low)
        };
        let (open, _) = run(&mut w, 8);
        assert!(!open.is_empty());
        let top = open.last().unwrap().1;
        assert_eq!(
            top,
            Some(2),
            "on an open link the viewer climbs to the top layer"
        );

        // Cap the viewer's downlink at 300 kbit/s: within two seconds the SFU forwards it the low
        // layer (from a keyframe of it). What str0m's pacer already holds of the old layer (the
        // estimate it paces by falls within ~1 s, the smoothed one the SFU acts on lags it) still
        // drains through the 300 kbit/s link first, so the viewer sees the switch ~3 s later.
        let t_cap = w.now;
        w.clients[v].down_cap = Some((300_000, t_cap, VecDeque::new(), 0));
        let (capped, sfu_low) = run(&mut w, 6);
        let sfu_low = sfu_low.expect("the SFU moved the viewer to the low layer");
        assert!(
            sfu_low - t_cap <= Duration::from_secs(2),
            "SFU moved down within 2 s, took {:?}",
            sfu_low - t_cap
        );
        let first_low = capped
            .iter()
            .find(|(_, l, _)| *l == Some(0))
            .expect("the viewer got the low layer");
        assert!(
            first_low.0 - t_cap <= Duration::from_millis(4500),
            "low layer at the viewer within 4.5 s, took {:?}",
            first_low.0 - t_cap
        );
        assert_eq!(capped.last().unwrap().1, Some(0), "stays low while capped");

        // Lift the cap: padding towards the next layer (see `update_probing`) and str0m's probes
        // let the estimate grow again, and the viewer climbs back to at least the mid layer.
        let t_lift = w.now;
        w.clients[v].down_cap = None;
        let (lifted, _) = run(&mut w, 15);
        assert!(
            !lifted.is_empty(),
            "frames keep flowing after the cap is lifted"
        );
        let back_up = lifted
            .iter()
            .find(|(_, l, _)| *l >= Some(1))
            .expect("climbed back above the low layer");
        assert!(
            back_up.0 - t_lift <= Duration::from_secs(15),
            "back up within 15 s, took {:?}",
            back_up.0 - t_lift
        );
        assert!(
            lifted.last().unwrap().1 >= Some(1),
            "stays up on the open link: {:?}",
            lifted.last().unwrap().1
        );
        // Every change of layer the viewer saw landed on a keyframe.
        let all: Vec<_> = open.iter().chain(&capped).chain(&lifted).collect();
        for pair in all.windows(2) {
            if pair[0].1 != pair[1].1 {
                assert!(
                    pair[1].2,
                    "switch {:?} -> {:?} not on a keyframe",
                    pair[0].1, pair[1].1
                );
            }
        }
        assert!(
            all.iter().all(|(_, l, _)| l.is_some()),
            "every frame is one of the layers"
        );
    }

    fn tn(s: &str) -> trunk::NodeName {
        trunk::NodeName::parse(s).unwrap()
    }

    /// A township SFU and a province SFU joined by real trunk routers, in lock-step virtual
    /// time: their control messages, datagrams, routes and keyframe requests are carried in
    /// memory as the shells carry them over QUIC.
    struct Cascade {
        town: World,
        prov: World,
        r_town: trunk::Router,
        r_prov: trunk::Router,
        /// How many of its layers (lowest first) the township publisher sends.
        town_layers: usize,
    }

    impl Cascade {
        fn new() -> Cascade {
            let mut town = World::new();
            let mut prov = World::new();
            prov.now = town.now;
            town.sfu.enable_trunks(tn("township"));
            prov.sfu.enable_trunks(tn("province"));
            let mut cfg = trunk::RouterConfig::new(tn("township"));
            cfg.parents = vec![tn("province")];
            let mut r_town = trunk::Router::new(cfg);
            let mut r_prov = trunk::Router::new(trunk::RouterConfig::new(tn("province")));
            r_town.trunk_up(town.now, tn("province"));
            r_prov.trunk_up(town.now, tn("township"));
            let mut c = Cascade {
                town,
                prov,
                r_town,
                r_prov,
                town_layers: 3,
            };
            c.carry();
            c
        }

        /// Carries what each SFU and router has for the other side until nothing moves.
        fn carry(&mut self) {
            let now = self.town.now;
            loop {
                let mut moved = false;
                for side in 0..2 {
                    let (me, other, r_me, r_other, name) = if side == 0 {
                        (
                            &mut self.town,
                            &mut self.prov,
                            &mut self.r_town,
                            &mut self.r_prov,
                            tn("township"),
                        )
                    } else {
                        (
                            &mut self.prov,
                            &mut self.town,
                            &mut self.r_prov,
                            &mut self.r_town,
                            tn("province"),
                        )
                    };
                    while let Some(req) = me.sfu.poll_trunk() {
                        moved = true;
                        match req {
                            TrunkRequest::Plane(TrunkOutput::Datagram { data, .. }) => {
                                other.sfu.trunk_datagram(now, &name, &data)
                            }
                            TrunkRequest::Plane(TrunkOutput::Control { msg, .. }) => {
                                other.sfu.trunk_control(now, &name, msg)
                            }
                            TrunkRequest::Plane(TrunkOutput::NextPathReady(addr)) => {
                                r_me.next_path_ready(now, &addr)
                            }
                            TrunkRequest::Subscribe {
                                viewer,
                                addr,
                                layers,
                            } => r_me.subscribe(now, viewer, addr, layers),
                            TrunkRequest::Unsubscribe { viewer, addr } => {
                                r_me.unsubscribe(now, viewer, &addr)
                            }
                            TrunkRequest::Keyframe { addr, layer } => {
                                r_me.request_keyframe(now, &addr, layer)
                            }
                        }
                    }
                    r_me.handle_timeout(now);
                    while let Some(o) = r_me.poll_output() {
                        moved = true;
                        match o {
                            trunk::Output::Send { msg, .. } => {
                                r_other.handle_message(now, &name, msg)
                            }
                            trunk::Output::Route { addr, route } => {
                                me.sfu.trunk_route(now, addr, route)
                            }
                            trunk::Output::PublisherKeyframe { stream, layer } => {
                                me.sfu.publisher_keyframe(
                                    now,
                                    &stream.as_str().parse().unwrap(),
                                    layer.0,
                                )
                            }
                            trunk::Output::Viewer { .. } => {}
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        fn step(&mut self) {
            self.town.step();
            self.prov.step();
            self.carry();
        }

        /// The layers the township sends the province of `addr`.
        fn to_province(&self, addr: &trunk::StreamAddr) -> trunk::LayerSet {
            self.r_town
                .route(addr)
                .and_then(|r| {
                    r.outputs
                        .iter()
                        .find(|(h, _)| *h == trunk::Hop::Trunk(tn("province")))
                        .map(|(_, l)| *l)
                })
                .unwrap_or_default()
        }
    }

    /// An `auto` viewer of a remote simulcast stream pulls only the layer it receives (after the
    /// first seconds, when every layer is pulled and sized), yet follows its link down and up:
    /// the layers it does not pull stay choosable, and a choice of one pulls it over the trunk.
    #[test]
    fn a_remote_auto_viewer_pulls_only_its_layer_and_still_follows_its_link() {
        let mut c = Cascade::new();
        let p = c.town.connected_publisher(
            1000,
            &[(MediaKind::Video, Direction::SendOnly)],
            &["q", "h", "f"],
        );
        c.r_town.publish(
            c.town.now,
            trunk::StreamName::parse("cam").unwrap(),
            trunk::LayerSet(0b111),
        );
        c.carry();
        let addr = trunk::StreamAddr::parse("township/cam").unwrap();

        // Browser-like layers: 150 / 500 / 1200 kbit/s at 30 fps; frame size tells them apart.
        let sizes = [("q", 320u16, 625usize), ("h", 640, 2083), ("f", 1280, 5000)];
        let layer_of = |len: usize| {
            sizes
                .iter()
                .position(|(_, _, s)| len.abs_diff(*s + 10) < 20)
        };
        let (mut n, mut answered) = (0u64, 0usize);
        // One frame per layer at the township publisher (keyframes when asked), then 33 ms.
        let mut frame = |c: &mut Cascade| {
            let asked = c.town.clients[p].keyframe_requests > answered;
            answered = c.town.clients[p].keyframe_requests;
            let layers = c.town_layers;
            c.town.write_layers(p, &sizes[..layers], n, n == 0 || asked);
            n += 1;
            for _ in 0..6 {
                c.step();
            }
        };

        let peer = c.prov.sfu.watch_remote(addr.clone());
        c.carry();
        for _ in 0..300 {
            if c.prov.sfu.remote_codecs(&addr).0 {
                break;
            }
            frame(&mut c);
        }
        assert!(
            c.prov.sfu.remote_codecs(&addr).0,
            "the remote stream's video reached the province"
        );
        assert_eq!(
            c.to_province(&addr),
            trunk::LayerSet(ALL_LAYERS),
            "every layer is pulled at first"
        );
        let (v, offer, pending) = c
            .prov
            .client(2000, &[(MediaKind::Video, Direction::RecvOnly)]);
        let now = c.prov.now;
        let answer = c
            .prov
            .sfu
            .view_remote(now, peer, &addr, &offer, LayerPref::Auto)
            .unwrap();
        c.prov.accept(v, pending, &answer.sdp);
        for _ in 0..300 {
            if c.prov.clients[v].connected {
                break;
            }
            frame(&mut c);
        }
        assert!(c.prov.clients[v].connected, "the province viewer connected");

        // Runs `secs` of virtual time: the layer of each frame the viewer got (by size), and
        // whether the township's route to the province carried exactly the viewer's layer at
        // the end.
        let mut run = |c: &mut Cascade, secs: u64| -> Vec<Option<usize>> {
            let before = c.prov.clients[v].video.len();
            for _ in 0..secs * 30 {
                frame(c);
            }
            c.prov.clients[v].video[before..]
                .iter()
                .map(|d| layer_of(d.data.len()))
                .collect()
        };
        let pulled_is_viewers = |c: &Cascade| {
            let layer = c
                .prov
                .sfu
                .fwd
                .viewer_layer(peer)
                .map(|l| trunk::LayerId(l.0));
            (layer.map(trunk::LayerSet::single), c.to_province(&addr))
        };

        let open = run(&mut c, 8);
        assert_eq!(
            open.last().copied().flatten(),
            Some(2),
            "on an open link the viewer climbs to the top layer"
        );
        let (want, got) = pulled_is_viewers(&c);
        assert_eq!(Some(got), want, "only the top layer crosses the trunk");

        // Cap the viewer's downlink at 300 kbit/s: it moves down to the low layer, which the
        // province pulls again for it; then only the low layer crosses.
        c.prov.clients[v].down_cap = Some((300_000, c.prov.now, VecDeque::new(), 0));
        let capped = run(&mut c, 10);
        assert_eq!(
            capped.last().copied().flatten(),
            Some(0),
            "capped, the viewer gets the low layer"
        );
        let (want, got) = pulled_is_viewers(&c);
        assert_eq!(Some(got), want, "only the low layer crosses the trunk");

        // Lift the cap: the estimate grows towards the next layer's last known bitrate and the
        // viewer climbs again; the layer is pulled when chosen.
        c.prov.clients[v].down_cap = None;
        let lifted = run(&mut c, 15);
        assert!(
            lifted.last().copied().flatten() >= Some(1),
            "back above the low layer: {:?}",
            lifted.last()
        );
        let (want, got) = pulled_is_viewers(&c);
        assert_eq!(
            Some(got),
            want,
            "again only the viewer's layer crosses the trunk"
        );
        let all: Vec<_> = open.iter().chain(&capped).chain(&lifted).collect();
        assert!(
            all.iter().all(|l| l.is_some()),
            "every frame is one of the layers"
        );

        // The township's publisher pauses its top layer (its own congestion control), and the
        // trunk catalog announces the two others only: the viewer moves to a layer that flows
        // and the province never pulls the top one again, however well its estimate fits it.
        // Layer ids follow the order layers first arrived, not their size: find the top one.
        let name = c.prov.sfu.remote[&addr].name.clone();
        let known = c.prov.sfu.fwd.known_layers(&name);
        let top = known
            .iter()
            .max_by_key(|l| l.dims.map(|d| d.0))
            .map(|l| trunk::LayerId(l.layer.0))
            .unwrap();
        let others = known
            .iter()
            .filter(|l| l.layer.0 != top.0)
            .fold(0u8, |m, l| m | 1 << l.layer.0);
        c.town_layers = 2;
        c.prov
            .sfu
            .set_remote_catalog([(addr.clone(), trunk::LayerSet(others))]);
        let before = c.prov.clients[v].video.len();
        let t_pause = c.prov.now;
        let paused = run(&mut c, 4);
        // The longest time without a frame: the forwarding core's layer timeout (1.5 s) and a
        // keyframe of the layer moved to, which was already pulled (REMOTE_FALLBACK_AFTER).
        let times: Vec<Instant> = std::iter::once(t_pause)
            .chain(
                c.prov.clients[v].video[before..]
                    .iter()
                    .map(|d| d.network_time),
            )
            .collect();
        let gap = times
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default();
        assert!(
            gap < crate::forward::LAYER_TIMEOUT + Duration::from_millis(400),
            "the viewer went {gap:?} without a frame"
        );
        let now_on = paused.last().copied().flatten();
        assert!(
            matches!(now_on, Some(0 | 1)),
            "the viewer moved to a layer that flows: {now_on:?}"
        );
        // The top layer, pulled while the viewer was on it, is dropped 2 s after the switch ...
        for _ in 0..4 * 30 {
            if !c.to_province(&addr).contains(top) {
                break;
            }
            frame(&mut c);
        }
        assert!(
            !c.to_province(&addr).contains(top),
            "the paused layer is no longer pulled"
        );
        // ... and not pulled again.
        let mut pulled_top = 0;
        for _ in 0..8 * 30 {
            frame(&mut c);
            pulled_top += usize::from(c.to_province(&addr).contains(top));
        }
        assert_eq!(
            pulled_top, 0,
            "a layer the origin does not announce is not pulled again"
        );
        let on = c
            .prov
            .sfu
            .fwd
            .viewer_layer(peer)
            .map(|l| trunk::LayerId(l.0));
        assert!(
            on.is_some_and(|l| l != top && c.to_province(&addr).contains(l)),
            "the viewer's layer {on:?} flows"
        );
    }

    #[test]
    fn a_frame_for_more_viewers_than_a_slice_reaches_every_one_in_order() {
        let mut w = World::new();
        let p = w.connected_publisher(1000, &[(MediaKind::Video, Direction::SendOnly)], &[]);
        // Enough viewers for a frame to be written in three slices.
        let viewers: Vec<usize> = (0..2 * MAX_FANOUT_SLICE + 3)
            .map(|i| {
                w.connected_viewer(
                    2000 + i as u16,
                    &[(MediaKind::Video, Direction::RecvOnly)],
                    LayerPref::Auto,
                )
            })
            .collect();
        // Frames of one and of several packets, some written back to back so a frame arrives
        // while the previous one is still being written to its viewers.
        for n in 0..40u64 {
            w.write_vp8(p, n, n == 0);
            if n % 4 != 3 {
                for _ in 0..6 {
                    w.step();
                }
            }
        }
        for _ in 0..100 {
            w.step();
        }
        assert_eq!(w.sfu.counters().frames_forwarded, 40 * viewers.len() as u64);
        for &v in &viewers {
            let video = &w.clients[v].video;
            let frames: Vec<u8> = video.iter().map(|d| d.data[6]).collect();
            assert_eq!(
                frames,
                (0..40u8).collect::<Vec<_>>(),
                "viewer {v} got every frame, in order"
            );
            assert!(video.iter().all(|d| d.contiguous));
        }
        assert!(!w.sfu.fanout.pending());
    }

    #[test]
    fn single_layer_publisher_is_told_what_its_viewers_can_take() {
        let mut w = World::new();
        let p = w.connected_publisher(1000, &[(MediaKind::Video, Direction::SendOnly)], &[]);
        w.run_until("a first REMB", |w| !w.clients[p].remb.is_empty());
        assert_eq!(
            w.clients[p].remb.last(),
            Some(&2_500_000),
            "no viewer yet: the configured most"
        );
        let v = w.connected_viewer(
            2000,
            &[(MediaKind::Video, Direction::RecvOnly)],
            LayerPref::Auto,
        );
        let now = w.now;
        w.clients[v].down_cap = Some((300_000, now, VecDeque::new(), 0));
        // A 1.2 Mbit/s encoder that does not adapt: the viewer's estimate falls to its cap and
        // the publisher is asked for about that.
        for n in 0..300u64 {
            let now = w.now;
            let c = &mut w.clients[p];
            let wr = c.rtc.writer(c.video_mid.unwrap()).unwrap();
            let pt = wr
                .payload_params()
                .find(|p| p.spec().codec == Codec::Vp8)
                .unwrap()
                .pt();
            let mut frame = vec![
                if n % 60 == 0 { 0x10 } else { 0x11 },
                0x02,
                0x00,
                0x9d,
                0x01,
                0x2a,
                0x80,
                0x02,
                0x68,
                0x01,
            ];
            frame.resize(5000, n as u8);
            wr.write(
                pt,
                now,
                MediaTime::new(n * 3000, Frequency::NINETY_KHZ),
                frame,
            )
            .unwrap();
            for _ in 0..6 {
                w.step();
            }
        }
        let last = *w.clients[p].remb.last().unwrap();
        assert!(
            last < 600_000,
            "the publisher's target follows its capped viewer: {last}"
        );
        assert!(last >= 50_000);
    }

    #[test]
    fn conflicts_garbage_and_unknown_streams_are_refused_without_harm() {
        let mut w = World::new();
        let p = w.connected_publisher(1000, &[(MediaKind::Video, Direction::SendOnly)], &[]);

        let (_, offer2, _) = w.client(1001, &[(MediaKind::Video, Direction::SendOnly)]);
        let now = w.now;
        assert!(matches!(
            w.sfu.publish(now, name("cam"), subj("off-2"), &offer2),
            Err(SfuError::Conflict { holder }) if holder.as_str() == "off-1"
        ));
        assert!(matches!(
            w.sfu.view(now, &name("nope"), &offer2, LayerPref::Auto),
            Err(SfuError::NotLive)
        ));
        assert!(matches!(
            w.sfu.publish(now, name("x"), subj("x"), "v=0\r\ngarbage"),
            Err(SfuError::BadSdp(_))
        ));

        let peers_before = w.sfu.peer_count();
        let junk: [&[u8]; 4] = [
            &[],
            &[0xff; 3],
            &[0x00, 0x01, 0x00, 0x50],
            &[0x16, 0xfe, 0xfd, 0, 0],
        ];
        for j in junk {
            w.sfu.handle_receive(now, "10.9.9.9:9".parse().unwrap(), j);
        }
        assert_eq!(
            w.sfu.peer_count(),
            peers_before,
            "no session harmed by junk"
        );
        assert!(
            w.sfu.counters().drops(DropReason::Malformed)
                + w.sfu.counters().drops(DropReason::UnknownSource)
                >= 4
        );
        // The publisher keeps working.
        w.write_vp8(p, 0, true);
        w.step();
        assert!(w.clients[p].connected);
    }

    #[test]
    fn same_owner_reconnect_takes_over_the_name() {
        let mut w = World::new();
        let (p1, offer, pending) = w.client(1000, &[(MediaKind::Video, Direction::SendOnly)]);
        let now = w.now;
        let a = w
            .sfu
            .publish(now, name("cam"), subj("off-1"), &offer)
            .unwrap();
        w.accept(p1, pending, &a.sdp);
        w.run_until("first publisher connected", |w| w.clients[p1].connected);
        let (p2, offer, pending) = w.client(1001, &[(MediaKind::Video, Direction::SendOnly)]);
        let now = w.now;
        let b = w
            .sfu
            .publish(now, name("cam"), subj("off-1"), &offer)
            .unwrap();
        w.accept(p2, pending, &b.sdp);
        w.run_until("second publisher connected", |w| w.clients[p2].connected);
        assert_eq!(w.sfu.peer_count(), 1, "the displaced session is gone");
        assert!(matches!(
            w.sfu.close_session(w.now, &a.session_id),
            Err(SfuError::NoSession)
        ));
        w.sfu.close_session(w.now, &b.session_id).unwrap();
        assert!(w.live().is_empty());
    }
}
