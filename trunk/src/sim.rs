//! An in-memory network of [`Router`]s in virtual time: the shell the province-size simulation
//! and the router's scenario tests run on.
//!
//! Every trunk is a pair of directed links with a fixed one-way delay
//! ([`SimConfig::hop_delay`]). Control messages travel as encoded frames through a
//! [`FrameDecoder`] per direction, exactly as on a QUIC stream. Media is modelled as one packet
//! per layer of every published stream every [`SimConfig::media_interval`], forwarded by each
//! node's current [`Route`]. A cut ([`Sim::cut`]) drops everything on the link at once; the
//! routers at both ends learn it [`SimConfig::detect_delay`] later (the QUIC idle timeout), and
//! after [`Sim::restore`] a new connection comes up [`SimConfig::reconnect_delay`] later.
//!
//! The network checks on every packet sent on a trunk that no copy of the same packet (stream,
//! layer, sequence number) crossed that trunk direction before: "at most one copy of a stream
//! layer per trunk direction". [`SimStats::duplicates`] counts violations.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::ids::{LayerId, LayerSet, NodeName, StreamAddr, StreamName, ViewerId};
use crate::router::{Hop, Output, Route, Router, RouterConfig, ViewerEvent};
use crate::testkit::Rng;
use crate::wire::{encode, FrameDecoder};

/// Timing of the simulated network.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// One-way delay of every trunk. Default 20 ms.
    pub hop_delay: Duration,
    /// Interval between media packets of one layer. Default 100 ms.
    pub media_interval: Duration,
    /// How long after a cut both ends see the trunk down. Default 1 s (the trunk's QUIC idle
    /// timeout; see `media_server::trunk::transport_config`).
    pub detect_delay: Duration,
    /// How long after a link returns the trunk is up again (a QUIC handshake). Default 3 hops.
    pub reconnect_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            hop_delay: Duration::from_millis(20),
            media_interval: Duration::from_millis(100),
            detect_delay: Duration::from_secs(1),
            reconnect_delay: Duration::from_millis(60),
        }
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    /// Media packets sent on trunks.
    pub trunk_packets: u64,
    /// Packets that crossed a trunk direction a second time (must stay 0).
    pub duplicates: u64,
    /// Packets that arrived from a hop other than the route's source and were dropped
    /// (the old path of a make-before-break switch, or in flight during a change).
    pub off_route: u64,
    /// Packets that arrived where nothing downstream wanted them (mostly a stream kept warm
    /// during the grace period).
    pub unwanted: u64,
    /// Packets dropped because a node had already forwarded that sequence number (the new path
    /// of a switch repeating what the old one delivered).
    pub repeated: u64,
    /// Control messages sent.
    pub control_messages: u64,
    /// Control bytes sent (frames, length prefix included).
    pub control_bytes: u64,
    /// Keyframe requests that reached a publisher.
    pub publisher_keyframes: u64,
    /// Events processed.
    pub events: u64,
}

/// A simulated viewer and what it saw.
#[derive(Debug, Clone)]
pub struct SimViewer {
    /// Node it watches at.
    pub node: usize,
    /// The stream.
    pub addr: StreamAddr,
    /// The layer it wants.
    pub layer: LayerId,
    /// Whether it is still subscribed.
    pub active: bool,
    /// When it subscribed.
    pub subscribed_at: Instant,
    /// When its router reported [`ViewerEvent::Flowing`] (first time).
    pub flowing_at: Option<Instant>,
    /// Failure reported, if any.
    pub failed: bool,
    /// First media packet.
    pub first_packet: Option<Instant>,
    /// Latest media packet.
    pub last_packet: Option<Instant>,
    /// Packets received.
    pub packets: u64,
    /// Longest gap between packets since [`Sim::reset_gaps`] (or the first packet).
    pub max_gap: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SimHop {
    Local,
    Node(usize),
}

#[derive(Debug, Clone, Default)]
struct SimRoute {
    source: Option<SimHop>,
    next: Option<SimHop>,
    outputs: Vec<(SimHop, LayerSet)>,
}

struct SimNode {
    router: Router,
    routes: HashMap<u32, SimRoute>,
    published: Vec<(u32, LayerSet)>,
    decoders: HashMap<usize, FrameDecoder>,
    timer: Option<Instant>,
    viewers: HashMap<u32, Vec<usize>>,
    /// Highest sequence number forwarded per (stream, layer): after a path switch the new path
    /// may repeat packets the old one already delivered (as RTP sequence numbers would tell a
    /// real forwarder); those are dropped.
    forwarded: HashMap<(u32, u8), u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Control {
        from: usize,
        to: usize,
        epoch: u64,
        frame: Vec<u8>,
    },
    Media {
        from: usize,
        to: usize,
        epoch: u64,
        addr: u32,
        layer: u8,
        seq: u64,
    },
    MediaTick,
    Timer {
        node: usize,
    },
    TrunkDown {
        node: usize,
        peer: usize,
        epoch: u64,
    },
    TrunkUp {
        node: usize,
        peer: usize,
        epoch: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Link {
    up: bool,
    epoch: u64,
}

/// The simulated network. Build it with [`Sim::add_node`] and [`Sim::link`] (or
/// [`province`]), drive it with [`Sim::run_until`] and the viewer methods.
pub struct Sim {
    cfg: SimConfig,
    t0: Instant,
    now: Instant,
    nodes: Vec<SimNode>,
    index: HashMap<NodeName, usize>,
    names: Vec<NodeName>,
    links: HashMap<(usize, usize), Link>,
    queue: BinaryHeap<Reverse<(Instant, u64, Ev)>>,
    seq: u64,
    addr_ids: HashMap<StreamAddr, u32>,
    addrs: Vec<StreamAddr>,
    viewers: Vec<SimViewer>,
    tick: u64,
    seen: HashSet<(u32, u32, u32, u8, u64)>,
    /// Counters.
    pub stats: SimStats,
    /// Media packets per trunk direction (from, to).
    pub per_direction: HashMap<(usize, usize), u64>,
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// An empty network at virtual time `t0`.
    pub fn new(cfg: SimConfig) -> Sim {
        let t0 = Instant::now();
        let mut sim = Sim {
            cfg,
            t0,
            now: t0,
            nodes: Vec::new(),
            index: HashMap::new(),
            names: Vec::new(),
            links: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            addr_ids: HashMap::new(),
            addrs: Vec::new(),
            viewers: Vec::new(),
            tick: 0,
            seen: HashSet::new(),
            stats: SimStats::default(),
            per_direction: HashMap::new(),
        };
        let at = sim.now + sim.cfg.media_interval;
        sim.push(at, Ev::MediaTick);
        sim
    }

    /// The simulated network's configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a node; returns its index.
    pub fn add_node(&mut self, cfg: RouterConfig) -> usize {
        let i = self.nodes.len();
        self.index.insert(cfg.node.clone(), i);
        self.names.push(cfg.node.clone());
        self.nodes.push(SimNode {
            router: Router::new(cfg),
            routes: HashMap::new(),
            published: Vec::new(),
            decoders: HashMap::new(),
            timer: None,
            viewers: HashMap::new(),
            forwarded: HashMap::new(),
        });
        i
    }

    /// The index of node `name`.
    pub fn node(&self, name: &str) -> Option<usize> {
        NodeName::parse(name)
            .ok()
            .and_then(|n| self.index.get(&n).copied())
    }

    /// The name of node `i`.
    pub fn name(&self, i: usize) -> &NodeName {
        &self.names[i]
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The router of node `i` (read-only).
    pub fn router(&self, i: usize) -> &Router {
        &self.nodes[i].router
    }

    /// Connects `a` and `b` with a trunk; it comes up after the reconnect delay.
    pub fn link(&mut self, a: usize, b: usize) {
        let l = self
            .links
            .entry(key(a, b))
            .or_insert(Link { up: true, epoch: 0 });
        l.up = true;
        l.epoch += 1;
        let epoch = l.epoch;
        let at = self.now + self.cfg.reconnect_delay;
        self.push(
            at,
            Ev::TrunkUp {
                node: a,
                peer: b,
                epoch,
            },
        );
        self.push(
            at,
            Ev::TrunkUp {
                node: b,
                peer: a,
                epoch,
            },
        );
    }

    /// Cuts the trunk between `a` and `b` (like `ip link set down`): packets on it are lost at
    /// once, both routers see the trunk down after the detection delay.
    pub fn cut(&mut self, a: usize, b: usize) {
        if let Some(l) = self.links.get_mut(&key(a, b)) {
            l.up = false;
            l.epoch += 1;
            let epoch = l.epoch;
            let at = self.now + self.cfg.detect_delay;
            self.push(
                at,
                Ev::TrunkDown {
                    node: a,
                    peer: b,
                    epoch,
                },
            );
            self.push(
                at,
                Ev::TrunkDown {
                    node: b,
                    peer: a,
                    epoch,
                },
            );
        }
    }

    /// Brings a cut trunk back (a new connection after the reconnect delay).
    pub fn restore(&mut self, a: usize, b: usize) {
        self.link(a, b);
    }

    /// Publishes `stream` with `layers` at node `i`.
    pub fn publish(&mut self, i: usize, stream: &str, layers: LayerSet) -> StreamAddr {
        let name = StreamName::parse(stream).expect("valid stream name");
        let addr = StreamAddr::new(self.names[i].clone(), name.clone());
        let id = self.addr_id(&addr);
        self.nodes[i].published.push((id, layers));
        let now = self.now;
        self.nodes[i].router.publish(now, name, layers);
        self.drain(i);
        addr
    }

    /// A new viewer at node `i` wanting `layer` of `addr`; returns its index.
    pub fn subscribe(&mut self, i: usize, addr: &StreamAddr, layer: LayerId) -> usize {
        let v = self.viewers.len();
        let id = self.addr_id(addr);
        self.viewers.push(SimViewer {
            node: i,
            addr: addr.clone(),
            layer,
            active: true,
            subscribed_at: self.now,
            flowing_at: None,
            failed: false,
            first_packet: None,
            last_packet: None,
            packets: 0,
            max_gap: Duration::ZERO,
        });
        self.nodes[i].viewers.entry(id).or_default().push(v);
        let now = self.now;
        self.nodes[i].router.subscribe(
            now,
            ViewerId(v as u64),
            addr.clone(),
            LayerSet::single(layer),
        );
        self.drain(i);
        v
    }

    /// Viewer `v` leaves.
    pub fn unsubscribe(&mut self, v: usize) {
        let viewer = &mut self.viewers[v];
        if !viewer.active {
            return;
        }
        viewer.active = false;
        let (i, addr) = (viewer.node, viewer.addr.clone());
        let id = self.addr_id(&addr);
        if let Some(list) = self.nodes[i].viewers.get_mut(&id) {
            list.retain(|x| *x != v);
        }
        let now = self.now;
        self.nodes[i]
            .router
            .unsubscribe(now, ViewerId(v as u64), &addr);
        self.drain(i);
    }

    /// Every viewer.
    pub fn viewers(&self) -> &[SimViewer] {
        &self.viewers
    }

    /// Starts measuring gaps afresh for every viewer.
    pub fn reset_gaps(&mut self) {
        for v in &mut self.viewers {
            v.max_gap = Duration::ZERO;
        }
    }

    /// The route node `i` uses for `addr`, as hops by node index (`None` = local).
    pub fn route_source(&self, i: usize, addr: &StreamAddr) -> Option<Option<usize>> {
        let id = self.addr_ids.get(addr)?;
        self.nodes[i].routes.get(id)?.source.map(|s| match s {
            SimHop::Local => None,
            SimHop::Node(n) => Some(n),
        })
    }

    /// Streams any node forwards on trunks right now (routes with a trunk output).
    pub fn trunk_flows(&self) -> usize {
        self.nodes
            .iter()
            .flat_map(|n| n.routes.values())
            .flat_map(|r| r.outputs.iter())
            .filter(|(h, _)| matches!(h, SimHop::Node(_)))
            .count()
    }

    /// Runs every event up to and including `t` (virtual time since the start).
    pub fn run_until(&mut self, t: Duration) {
        let end = self.t0 + t;
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > end {
                break;
            }
            let Reverse((at, _, ev)) = self.queue.pop().expect("peeked");
            self.now = at;
            self.stats.events += 1;
            self.handle(ev);
        }
        self.now = end;
    }

    fn addr_id(&mut self, addr: &StreamAddr) -> u32 {
        if let Some(id) = self.addr_ids.get(addr) {
            return *id;
        }
        let id = self.addrs.len() as u32;
        self.addrs.push(addr.clone());
        self.addr_ids.insert(addr.clone(), id);
        id
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn link_ok(&self, a: usize, b: usize, epoch: u64) -> bool {
        self.links
            .get(&key(a, b))
            .is_some_and(|l| l.up && l.epoch == epoch)
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::TrunkUp { node, peer, epoch } => {
                if self.link_ok(node, peer, epoch) {
                    self.nodes[node].decoders.insert(peer, FrameDecoder::new());
                    let name = self.names[peer].clone();
                    self.nodes[node].router.trunk_up(now, name);
                    self.drain(node);
                }
            }
            Ev::TrunkDown { node, peer, epoch } => {
                let current = self.links.get(&key(node, peer)).map(|l| l.epoch);
                if current == Some(epoch) {
                    self.nodes[node].decoders.remove(&peer);
                    let name = self.names[peer].clone();
                    self.nodes[node].router.trunk_down(now, &name);
                    self.drain(node);
                }
            }
            Ev::Control {
                from,
                to,
                epoch,
                frame,
            } => {
                if !self.link_ok(from, to, epoch) {
                    return;
                }
                let name = self.names[from].clone();
                let Some(dec) = self.nodes[to].decoders.get_mut(&from) else {
                    return;
                };
                dec.push(&frame);
                let mut msgs = Vec::new();
                while let Ok(Some(m)) = dec.next_message() {
                    msgs.push(m);
                }
                for m in msgs {
                    self.nodes[to].router.handle_message(now, &name, m);
                }
                self.drain(to);
            }
            Ev::Timer { node } => {
                if self.nodes[node].timer == Some(now) {
                    self.nodes[node].timer = None;
                    self.nodes[node].router.handle_timeout(now);
                    self.drain(node);
                }
            }
            Ev::MediaTick => {
                self.tick += 1;
                let seq = self.tick;
                for i in 0..self.nodes.len() {
                    for k in 0..self.nodes[i].published.len() {
                        let (id, layers) = self.nodes[i].published[k];
                        for l in layers.iter() {
                            self.forward(i, SimHop::Local, id, l.0, seq);
                        }
                    }
                }
                if seq.is_multiple_of(50) {
                    self.seen.retain(|k| k.4 + 50 > seq);
                }
                let at = now + self.cfg.media_interval;
                self.push(at, Ev::MediaTick);
            }
            Ev::Media {
                from,
                to,
                epoch,
                addr,
                layer,
                seq,
            } => {
                if self.link_ok(from, to, epoch) {
                    self.forward(to, SimHop::Node(from), addr, layer, seq);
                }
            }
        }
    }

    /// Node `i` got packet (`addr`, `layer`, `seq`) from `from`: forward along its route.
    fn forward(&mut self, i: usize, from: SimHop, addr: u32, layer: u8, seq: u64) {
        let now = self.now;
        let Some(route) = self.nodes[i].routes.get(&addr) else {
            if from != SimHop::Local {
                self.stats.unwanted += 1;
            }
            return;
        };
        if route.source != Some(from) && route.next == Some(from) {
            // The new path of a make-before-break switch delivers: switch now.
            let a = self.addrs[addr as usize].clone();
            self.nodes[i].router.next_path_ready(now, &a);
            self.drain(i);
        }
        let Some(route) = self.nodes[i].routes.get(&addr) else {
            return;
        };
        if route.source != Some(from) {
            if from != SimHop::Local {
                self.stats.off_route += 1;
            }
            return;
        }
        let lid = LayerId(layer);
        let outs: Vec<SimHop> = route
            .outputs
            .iter()
            .filter(|(_, l)| l.contains(lid))
            .map(|(h, _)| *h)
            .collect();
        let last = self.nodes[i].forwarded.entry((addr, layer)).or_insert(0);
        if seq <= *last {
            self.stats.repeated += 1;
            return;
        }
        *last = seq;
        if outs.is_empty() && from != SimHop::Local {
            self.stats.unwanted += 1;
        }
        for h in outs {
            match h {
                SimHop::Local => {
                    let vs = self.nodes[i]
                        .viewers
                        .get(&addr)
                        .cloned()
                        .unwrap_or_default();
                    for v in vs {
                        let viewer = &mut self.viewers[v];
                        if viewer.layer != lid || !viewer.active {
                            continue;
                        }
                        if let Some(last) = viewer.last_packet {
                            viewer.max_gap = viewer.max_gap.max(now - last);
                        }
                        viewer.first_packet.get_or_insert(now);
                        viewer.last_packet = Some(now);
                        viewer.packets += 1;
                    }
                }
                SimHop::Node(p) => {
                    let Some(link) = self.links.get(&key(i, p)).copied() else {
                        continue;
                    };
                    if !self.seen.insert((i as u32, p as u32, addr, layer, seq)) {
                        self.stats.duplicates += 1;
                    }
                    self.stats.trunk_packets += 1;
                    *self.per_direction.entry((i, p)).or_default() += 1;
                    if link.up {
                        let at = now + self.cfg.hop_delay;
                        self.push(
                            at,
                            Ev::Media {
                                from: i,
                                to: p,
                                epoch: link.epoch,
                                addr,
                                layer,
                                seq,
                            },
                        );
                    }
                }
            }
        }
    }

    fn to_sim_route(&self, r: &Route) -> SimRoute {
        let hop = |h: &Hop| match h {
            Hop::Local => SimHop::Local,
            Hop::Trunk(n) => SimHop::Node(self.index[n]),
        };
        SimRoute {
            source: r.source.as_ref().map(hop),
            next: r.next.as_ref().map(hop),
            outputs: r.outputs.iter().map(|(h, l)| (hop(h), *l)).collect(),
        }
    }

    /// Carries out everything node `i`'s router asked for.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some(out) = self.nodes[i].router.poll_output() {
            match out {
                Output::Send { trunk, msg } => {
                    let Some(&p) = self.index.get(&trunk) else {
                        continue;
                    };
                    let frame = encode(&msg);
                    self.stats.control_messages += 1;
                    self.stats.control_bytes += frame.len() as u64;
                    if let Some(link) = self.links.get(&key(i, p)).copied() {
                        if link.up {
                            let at = now + self.cfg.hop_delay;
                            self.push(
                                at,
                                Ev::Control {
                                    from: i,
                                    to: p,
                                    epoch: link.epoch,
                                    frame,
                                },
                            );
                        }
                    }
                }
                Output::Route { addr, route } => {
                    let id = self.addr_id(&addr);
                    if route == Route::default() {
                        self.nodes[i].routes.remove(&id);
                    } else {
                        let r = self.to_sim_route(&route);
                        self.nodes[i].routes.insert(id, r);
                    }
                }
                Output::PublisherKeyframe { .. } => self.stats.publisher_keyframes += 1,
                Output::Viewer { viewer, event, .. } => {
                    let v = &mut self.viewers[viewer.0 as usize];
                    match event {
                        ViewerEvent::Flowing => {
                            v.flowing_at.get_or_insert(now);
                        }
                        ViewerEvent::Failed(_) => v.failed = true,
                        ViewerEvent::Waiting => {}
                    }
                }
            }
        }
        if let Some(t) = self.nodes[i].router.poll_timeout() {
            if self.nodes[i].timer.is_none_or(|cur| t < cur) {
                self.nodes[i].timer = Some(t);
                self.push(t, Ev::Timer { node: i });
            }
        }
    }
}

/// The province of the issue: 1 province, 11 cities, 90 counties (county `k` under city
/// `k % 11`, with city `(k + 1) % 11` as its second parent), 1,360 townships (township `k` under
/// county `k % 90`). Returns the network with every trunk coming up.
pub fn province(cfg: SimConfig, grace: Duration) -> Sim {
    let mut sim = Sim::new(cfg);
    let name = |s: String| NodeName::parse(&s).expect("valid");
    let mk = |n: NodeName, parents: Vec<NodeName>| {
        let mut c = RouterConfig::new(n);
        c.parents = parents;
        c.grace = grace;
        c
    };
    let p = sim.add_node(mk(name("province".into()), vec![]));
    let cities: Vec<usize> = (0..11)
        .map(|k| sim.add_node(mk(name(format!("city-{k}")), vec![name("province".into())])))
        .collect();
    let counties: Vec<usize> = (0..90)
        .map(|k| {
            sim.add_node(mk(
                name(format!("county-{k}")),
                vec![
                    name(format!("city-{}", k % 11)),
                    name(format!("city-{}", (k + 1) % 11)),
                ],
            ))
        })
        .collect();
    let townships: Vec<usize> = (0..1360)
        .map(|k| {
            sim.add_node(mk(
                name(format!("township-{k}")),
                vec![name(format!("county-{}", k % 90))],
            ))
        })
        .collect();
    for &c in &cities {
        sim.link(p, c);
    }
    for (k, &c) in counties.iter().enumerate() {
        sim.link(c, cities[k % 11]);
        sim.link(c, cities[(k + 1) % 11]);
    }
    for (k, &t) in townships.iter().enumerate() {
        sim.link(t, counties[k % 90]);
    }
    sim
}

/// Picks `n` random viewers' (node, stream, layer) over the province's levels: 10 % at the
/// province, 15 % at cities, 25 % at counties, 50 % at townships; streams uniformly.
pub fn random_viewers(
    sim: &Sim,
    streams: &[StreamAddr],
    n: usize,
    rng: &mut Rng,
) -> Vec<(usize, StreamAddr, LayerId)> {
    let level = |r: u64| -> (usize, usize) {
        match r {
            0..=9 => (0, 1),
            10..=24 => (1, 11),
            25..=49 => (12, 90),
            _ => (102, 1360),
        }
    };
    (0..n)
        .map(|_| {
            let (start, count) = level(rng.below(100));
            let node = start + rng.below(count as u64) as usize;
            let addr = streams[rng.below(streams.len() as u64) as usize].clone();
            let layer = LayerId(rng.below(3) as u8);
            debug_assert!(node < sim.node_count());
            (node, addr, layer)
        })
        .collect()
}

/// Settings of [`province_run`].
#[derive(Debug, Clone)]
pub struct ProvinceParams {
    /// Random seed (placement of publishers and viewers).
    pub seed: u64,
    /// Streams published (at random townships), 3 layers each.
    pub streams: usize,
    /// Viewers (see [`random_viewers`]), each wanting one random layer.
    pub viewers: usize,
    /// Routers' prune grace.
    pub grace: Duration,
    /// The network.
    pub sim: SimConfig,
}

impl Default for ProvinceParams {
    fn default() -> Self {
        ProvinceParams {
            seed: 1,
            streams: 500,
            viewers: 2000,
            grace: Duration::from_secs(10),
            sim: SimConfig::default(),
        }
    }
}

/// Route setup times of viewers whose stream is `hops` trunks away (primary tree).
#[derive(Debug, Clone, Default)]
pub struct SetupRow {
    /// Trunks between the viewer's node and the publisher's.
    pub hops: usize,
    /// Viewers measured.
    pub viewers: usize,
    /// Subscribe → `Flowing`, median / 99th percentile / max.
    pub control: [Duration; 3],
    /// Subscribe → first media packet, median / 99th percentile / max.
    pub media: [Duration; 3],
}

/// What [`province_run`] measured.
#[derive(Debug, Clone, Default)]
pub struct ProvinceReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// Viewers that ever received media / that were reported failed.
    pub viewers_served: usize,
    /// Viewers reported failed.
    pub viewers_failed: usize,
    /// Setup times by distance.
    pub setup: Vec<SetupRow>,
    /// The cut trunk (county, its primary city).
    pub cut: (String, String),
    /// Viewers whose path crossed the cut trunk.
    pub failover_viewers: usize,
    /// Longest media gap among them from the cut on (detection + reroute + first packet).
    pub failover_max_gap: Duration,
    /// Longest media gap among them while flows moved back after the trunk returned.
    pub move_back_max_gap: Duration,
    /// Whether every node's route of the affected streams was the same as before the cut once
    /// flows moved back.
    pub moved_back: bool,
    /// Trunk packets sent in the last second before the grace ran out (must be > 0: warm).
    pub packets_before_grace_end: u64,
    /// Trunk packets sent from 1 s after the grace ran out to 3 s after (must be 0: pruned).
    pub packets_after_prune: u64,
    /// Streams still with forwarding state anywhere at the end (must be 0).
    pub leftover_state: usize,
    /// Largest number of trunk flows (stream × output) at once.
    pub peak_trunk_flows: usize,
    /// Counters (duplicates must be 0).
    pub stats: SimStats,
}

fn percentiles(mut v: Vec<Duration>) -> [Duration; 3] {
    if v.is_empty() {
        return [Duration::ZERO; 3];
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.99), *v.last().expect("non-empty")]
}

/// Runs the province scenario: build the province, publish, subscribe every viewer over 2 s,
/// cut the busiest county's primary trunk, restore it, then let every viewer leave and wait for
/// the prune. Virtual time; the result is deterministic for a seed.
pub fn province_run(p: &ProvinceParams) -> ProvinceReport {
    let mut rng = Rng::new(p.seed);
    let mut sim = province(p.sim.clone(), p.grace);
    let interval = p.sim.media_interval;
    let mut report = ProvinceReport {
        nodes: sim.node_count(),
        ..Default::default()
    };
    // Primary tree for distances.
    let parent: Vec<Option<usize>> = (0..sim.node_count())
        .map(|i| {
            sim.router(i)
                .config()
                .parents
                .first()
                .and_then(|n| sim.index.get(n).copied())
        })
        .collect();
    let ancestors = |mut i: usize| {
        let mut v = vec![i];
        while let Some(p) = parent[i] {
            v.push(p);
            i = p;
        }
        v
    };
    let hops = |a: usize, b: usize| {
        let (pa, pb) = (ancestors(a), ancestors(b));
        let (ia, ib) = pa
            .iter()
            .enumerate()
            .find_map(|(ia, x)| pb.iter().position(|y| y == x).map(|ib| (ia, ib)))
            .unwrap_or((pa.len(), pb.len()));
        ia + ib
    };
    sim.run_until(Duration::from_millis(200));
    let townships: Vec<usize> = (0..sim.node_count())
        .filter(|&i| sim.name(i).as_str().starts_with("township-"))
        .collect();
    let streams: Vec<StreamAddr> = (0..p.streams)
        .map(|k| {
            let t = townships[rng.below(townships.len() as u64) as usize];
            sim.publish(t, &format!("cam-{k}"), LayerSet::first(3))
        })
        .collect();
    // Let the catalog reach the province (3 hops).
    sim.run_until(Duration::from_secs(1));
    let wanted = random_viewers(&sim, &streams, p.viewers, &mut rng);
    let start = Duration::from_secs(1);
    let spread = Duration::from_secs(2);
    for (k, (node, addr, layer)) in wanted.iter().enumerate() {
        let at = start + spread * k as u32 / p.viewers.max(1) as u32;
        sim.run_until(at);
        sim.subscribe(*node, addr, *layer);
        report.peak_trunk_flows = report.peak_trunk_flows.max(sim.trunk_flows());
    }
    sim.run_until(Duration::from_secs(5));
    report.peak_trunk_flows = report.peak_trunk_flows.max(sim.trunk_flows());
    let publisher = |sim: &Sim, a: &StreamAddr| sim.index[&a.node];
    let mut by_hops: std::collections::BTreeMap<usize, (Vec<Duration>, Vec<Duration>)> =
        Default::default();
    for v in sim.viewers() {
        let h = hops(v.node, publisher(&sim, &v.addr));
        let e = by_hops.entry(h).or_default();
        if let Some(f) = v.flowing_at {
            e.0.push(f - v.subscribed_at);
        }
        if let Some(f) = v.first_packet {
            e.1.push(f - v.subscribed_at);
        }
    }
    report.setup = by_hops
        .into_iter()
        .map(|(h, (c, m))| SetupRow {
            hops: h,
            viewers: m.len(),
            control: percentiles(c),
            media: percentiles(m),
        })
        .collect();

    // Failover: the county whose trunk to its primary city carries the most viewers' paths.
    let county_of = |i: usize| {
        ancestors(i)
            .into_iter()
            .find(|&a| sim.name(a).as_str().starts_with("county-"))
    };
    let mut load: HashMap<usize, Vec<usize>> = HashMap::new();
    for (k, v) in sim.viewers().iter().enumerate() {
        let (cv, cp) = (county_of(v.node), county_of(publisher(&sim, &v.addr)));
        if cv != cp {
            for c in [cv, cp].into_iter().flatten() {
                load.entry(c).or_default().push(k);
            }
        }
    }
    let (county, affected) = load
        .into_iter()
        .max_by_key(|(c, v)| (v.len(), *c))
        .expect("some load");
    let city = parent[county].expect("county has a parent");
    report.cut = (sim.name(county).to_string(), sim.name(city).to_string());
    report.failover_viewers = affected.len();
    let affected_addrs: HashSet<StreamAddr> = affected
        .iter()
        .map(|&k| sim.viewers()[k].addr.clone())
        .collect();
    let snapshot = |sim: &Sim| {
        let mut v: Vec<(usize, StreamAddr, Option<Option<usize>>)> = Vec::new();
        for i in 0..sim.node_count() {
            for a in &affected_addrs {
                let s = sim.route_source(i, a);
                if s.is_some() {
                    v.push((i, a.clone(), s));
                }
            }
        }
        v.sort();
        v
    };
    let before = snapshot(&sim);
    sim.reset_gaps();
    let t_cut = sim.elapsed();
    sim.cut(county, city);
    sim.run_until(t_cut + Duration::from_secs(10));
    report.failover_max_gap = affected
        .iter()
        .map(|&k| {
            let v = &sim.viewers()[k];
            // A viewer that got nothing since the cut has a gap up to now.
            let since = v.last_packet.map_or(Duration::MAX, |l| sim.now() - l);
            if since > interval * 3 {
                sim.elapsed() - t_cut
            } else {
                v.max_gap
            }
        })
        .max()
        .unwrap_or_default();
    if std::env::var_os("TRUNK_SIM_DEBUG").is_some() {
        for &k in &affected {
            let v = &sim.viewers()[k];
            let since = v.last_packet.map_or(Duration::MAX, |l| sim.now() - l);
            if since > interval * 3 || v.max_gap > Duration::from_secs(3) {
                let pubn = publisher(&sim, &v.addr);
                eprintln!(
                    "viewer {k} at {} wants {} (pub {}), last {:?} ago, gap {:?}",
                    sim.name(v.node),
                    v.addr,
                    sim.name(pubn),
                    since,
                    v.max_gap
                );
                for i in ancestors(v.node)
                    .into_iter()
                    .chain(ancestors(pubn))
                    .chain([city, parent[county].unwrap()])
                {
                    eprintln!(
                        "   {}: source {:?} route {:?}",
                        sim.name(i),
                        sim.route_source(i, &v.addr),
                        sim.router(i).route(&v.addr)
                    );
                }
            }
        }
    }
    sim.reset_gaps();
    let t_back = sim.elapsed();
    sim.restore(county, city);
    sim.run_until(t_back + Duration::from_secs(5));
    report.move_back_max_gap = affected
        .iter()
        .map(|&k| sim.viewers()[k].max_gap)
        .max()
        .unwrap_or_default();
    report.moved_back = snapshot(&sim) == before;

    // Prune: everyone leaves.
    let t_leave = sim.elapsed();
    for k in 0..sim.viewers().len() {
        sim.unsubscribe(k);
    }
    sim.run_until(t_leave + p.grace - Duration::from_millis(1000));
    let a = sim.stats.trunk_packets;
    sim.run_until(t_leave + p.grace - Duration::from_millis(100));
    report.packets_before_grace_end = sim.stats.trunk_packets - a;
    sim.run_until(t_leave + p.grace + Duration::from_secs(1));
    let b = sim.stats.trunk_packets;
    sim.run_until(t_leave + p.grace + Duration::from_secs(3));
    report.packets_after_prune = sim.stats.trunk_packets - b;
    report.leftover_state = (0..sim.node_count())
        .map(|i| sim.router(i).active_streams().count())
        .sum();
    report.viewers_served = sim.viewers().iter().filter(|v| v.packets > 0).count();
    report.viewers_failed = sim.viewers().iter().filter(|v| v.failed).count();
    report.stats = sim.stats.clone();
    report
}
