//! An in-memory network of [`Router`]s in virtual time: the shell the province-size simulation
//! and the router's scenario tests run on.
//!
//! Every trunk is a pair of directed links with a fixed one-way delay
//! ([`SimConfig::hop_delay`]). Control messages travel as encoded frames through a
//! [`FrameDecoder`] per direction, exactly as on a QUIC stream. Media is modelled as one packet
//! per layer of every published stream every [`SimConfig::media_interval`], forwarded by each
//! node's current [`Route`](crate::router::Route). A cut ([`Sim::cut`]) drops everything on the
//! link at once; the routers at both ends learn it [`SimConfig::detect_delay`] later (the QUIC
//! idle timeout), and after [`Sim::restore`] a new connection comes up
//! [`SimConfig::reconnect_delay`] later.
//!
//! The network checks on every packet sent on a trunk that no copy of the same packet (stream,
//! layer, sequence number) crossed that trunk direction before: "at most one copy of a stream
//! layer per trunk direction". [`SimStats::duplicates`] counts violations.
//!
//! Rooms: this file holds the network's state and the API a scenario drives (nodes, links, cuts,
//! publishers, viewers, the clock); `network` how events, media and control travel; `province`
//! the province-size scenario ([`province`], [`province_run`]); `rng` the seeded generator
//! ([`Rng`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::ids::{LayerId, LayerSet, NodeName, StreamAddr, StreamName, ViewerId};
use crate::router::{Router, RouterConfig};
use crate::wire::FrameDecoder;

mod network;
mod province;
mod rng;

pub use self::province::{
    province, province_run, random_viewers, ProvinceParams, ProvinceReport, SetupRow,
};
pub use self::rng::Rng;

/// Timing of the simulated network.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// One-way delay of every trunk. Default 20 ms.
    pub hop_delay: Duration,
    /// Interval between media packets of one layer. Default 100 ms.
    pub media_interval: Duration,
    /// How long after a cut both ends see the trunk down. Default 1 s (the trunk's QUIC idle
    /// timeout; see `media_server::cascade::tls::transport_config`).
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
    /// When its router reported
    /// [`ViewerEvent::Flowing`](crate::router::ViewerEvent::Flowing) (first time).
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
}
