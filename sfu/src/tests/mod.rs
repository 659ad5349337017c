//! The engine in virtual time against real str0m peers: no sockets, no sleeps; the clients
//! are driven in 5 ms steps, the SFU also at its own deadlines in between (as the media task
//! does), and every datagram is delivered by address.
//!
//! This module is the harness ([`World`]: an engine and its clients); the tests sit in one file
//! per room of the engine.

mod bwe;
mod fanout;
mod remote;
mod session;
mod simulcast;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ids::{StreamName, Subject};
use str0m::bwe::BweKind;
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaData, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Input, Output, Rtc, RtcConfig};
use trunk::media::TrunkOutput;

use crate::codec::{keyframe_dims, VideoCodec};
use crate::fanout::MAX_FANOUT_SLICE;
use crate::forward::{Layer, LayerPref};
use crate::remote::ALL_LAYERS;
use crate::sdp::{first_mids, offer_prefers_h264};
use crate::session::PeerRole;
use crate::{Event, Sfu, SfuConfig, SfuError, TrunkRequest};

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
                *free_at =
                    start + Duration::from_micros(t.contents.len() as u64 * 8 * 1_000_000 / *bps);
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
    fn write_vp8_layer(&mut self, i: usize, layer: (&str, u16, u16, u64), n: u64, keyframe: bool) {
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
    fn write_layers(&mut self, i: usize, layers: &[(&str, u16, usize)], n: u64, keyframe: bool) {
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

fn name(s: &str) -> StreamName {
    s.parse().unwrap()
}
fn subj(s: &str) -> Subject {
    s.parse().unwrap()
}
