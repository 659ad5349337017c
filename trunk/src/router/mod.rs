//! The sans-IO trunk router: one per node, no sockets, no clock, no tasks.
//!
//! Inputs are method calls with `now` passed in ([`Router::trunk_up`], [`Router::handle_message`],
//! [`Router::subscribe`], [`Router::handle_timeout`], …); outputs are drained with
//! [`Router::poll_output`] until it returns `None`, and the next timer comes from
//! [`Router::poll_timeout`]. The shell (QUIC in media-server, or the in-memory network of
//! [`crate::sim`]) carries [`Output::Send`] messages on trunks and applies [`Output::Route`]
//! tables to media packets.
//!
//! # What it decides
//!
//! - **Catalog.** A node announces, to each parent (and peer), every stream reachable through it:
//!   its own and those learned from children, with a cost (hops, plus
//!   [`RouterConfig::backup_penalty`] per rank for a second parent or a peer). Routes learned from
//!   parents or peers are used but never announced upward, so announcements cannot loop.
//! - **On-demand pull.** A stream with local viewers or downstream trunks subscribed is
//!   subscribed once upstream — on the cheapest announced route, or, for a stream not in the
//!   catalog (it lives above), on the first working parent — and fanned out locally. Only the
//!   union of the layers needed downstream is requested.
//! - **Failover.** When the upstream trunk goes down or withdraws the route, the stream moves to
//!   the next route at once. When a better route (re)appears it moves back make-before-break: the
//!   new path is subscribed, and the old one is dropped only when the new one answers
//!   `Subscribed`, so viewers see no gap.
//! - **Prune.** After the last local viewer leaves, the upstream subscription lives on for
//!   [`RouterConfig::grace`] (a viewer coming back finds it warm); a downstream trunk's
//!   `Unsubscribe` prunes at once (that node already waited its own grace).
//! - **Keyframes.** Requests from viewers or downstream trunks go upstream (or to the local
//!   publisher) at most once per [`RouterConfig::keyframe_min_interval`] per layer.
//!
//! # Rooms
//!
//! This file holds the types, the router's state and its inputs and timers; each decision has a
//! room of its own, all of them `impl Router` blocks on the same state:
//!
//! - `catalog`: announcements up and what is learned from every trunk;
//! - `pull`: on-demand pull and prune — `Subscribed` answers, demand dropping, grace, and what
//!   viewers, downstream trunks and the forwarding table are told;
//! - `failover`: path choice and trunk repair — first path, failover, make-before-break move
//!   back, lost streams whose viewers wait;
//! - `keyframes`: the keyframe throttle.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, trace};

use crate::ids::{LayerId, LayerSet, NodeName, StreamAddr, StreamName, ViewerId};
use crate::wire::{FailReason, Message};

mod catalog;
mod failover;
mod keyframes;
mod pull;

/// Settings of one node's router. `RouterConfig::new(name)` gives the defaults.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This node's name.
    pub node: NodeName,
    /// Parents in order of preference: the first is the primary path, the next ones backups.
    /// Default none (the root of the province).
    pub parents: Vec<NodeName>,
    /// Peers (siblings): both sides announce their subtree to each other and may pull from it,
    /// nothing learned from a peer travels further. Default none.
    pub peers: Vec<NodeName>,
    /// How long an upstream subscription outlives its last local viewer. Default 10 s.
    pub grace: Duration,
    /// Keyframe requests forwarded per stream layer at most this often. Default 500 ms.
    pub keyframe_min_interval: Duration,
    /// Cost added to announcements towards the n-th parent (n × penalty) and towards peers
    /// (1 × penalty), so backup paths are chosen only when the primary is gone. Default 100.
    pub backup_penalty: u16,
}

impl RouterConfig {
    /// Defaults for node `node`.
    pub fn new(node: NodeName) -> RouterConfig {
        RouterConfig {
            node,
            parents: Vec::new(),
            peers: Vec::new(),
            grace: Duration::from_secs(10),
            keyframe_min_interval: Duration::from_millis(500),
            backup_penalty: 100,
        }
    }
}

/// Where media of a stream comes from or goes to, seen from one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hop {
    /// This node's SFU: the local publisher (as a source) or local viewers (as an output).
    Local,
    /// The trunk to this peer node.
    Trunk(NodeName),
}

/// How one node forwards one stream: accept packets only from `source`, copy each layer to
/// every output whose set holds it. An empty route (no source, no outputs) means drop.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The one accepted source; packets of this stream from anywhere else are dropped (during a
    /// make-before-break switch both paths deliver, and only this one is forwarded).
    pub source: Option<Hop>,
    /// Outputs and the layers each gets, in a stable order.
    pub outputs: Vec<(Hop, LayerSet)>,
    /// A better path being switched to (make-before-break). Both paths carry the stream for a
    /// moment, so after the switch the shell must drop packets it already forwarded (by RTP
    /// sequence number). Packets from `next` are not forwarded yet:
    /// when the first one arrives (for video, the first keyframe), call
    /// [`Router::next_path_ready`] and the route switches to it.
    pub next: Option<Hop>,
}

impl Route {
    /// Whether packets of `layer` arriving from `from` go to `to`.
    pub fn forwards(&self, from: &Hop, layer: LayerId, to: &Hop) -> bool {
        self.source.as_ref() == Some(from)
            && self
                .outputs
                .iter()
                .any(|(h, l)| h == to && l.contains(layer))
    }
}

/// What happened to a local viewer's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewerEvent {
    /// The path to the publisher is complete; media is (or is about to be) flowing.
    Flowing,
    /// The path was lost; the router is looking for another and will report `Flowing` again.
    Waiting,
    /// The stream cannot be served; the subscription is gone.
    Failed(FailReason),
}

/// A command for the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a control message on the trunk to `trunk`.
    Send {
        /// The peer node.
        trunk: NodeName,
        /// The message.
        msg: Message,
    },
    /// Replace this node's forwarding of `addr` with `route`.
    Route {
        /// The stream.
        addr: StreamAddr,
        /// Its new forwarding; empty means forward nothing.
        route: Route,
    },
    /// Ask the local publisher of `stream` for a keyframe of `layer` (already throttled).
    PublisherKeyframe {
        /// The local stream.
        stream: StreamName,
        /// The layer.
        layer: LayerId,
    },
    /// News for a local viewer.
    Viewer {
        /// The viewer.
        viewer: ViewerId,
        /// The stream it subscribed.
        addr: StreamAddr,
        /// What happened.
        event: ViewerEvent,
    },
}

/// The role a trunk plays for this node (from this node's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrunkRole {
    /// A configured parent, with its rank (0 = primary).
    Parent(usize),
    /// A configured peer.
    Peer,
    /// Anyone else who connected to us: a child (we may be its primary or its backup parent).
    Child,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Upstream {
    layers: LayerSet,
    flowing: bool,
}

#[derive(Debug, Default)]
struct Sub {
    /// Local viewers: wanted layers and whether they were told `Flowing`.
    viewers: BTreeMap<ViewerId, (LayerSet, bool)>,
    /// Downstream trunks: wanted layers and whether they were sent `Subscribed`.
    downstream: BTreeMap<NodeName, (LayerSet, bool)>,
    /// The stream is published here.
    local: bool,
    /// The current upstream trunk.
    upstream: Option<(NodeName, Upstream)>,
    /// A better path being set up (make-before-break).
    next: Option<(NodeName, Upstream)>,
    /// Empty of demand since: prune at this instant.
    idle_deadline: Option<Instant>,
    /// The route last given to the shell.
    route: Route,
    /// Media has flowed for it: when its path is lost its local viewers wait for the stream to
    /// come back instead of failing (see [`Router::LOST_RETRY`]).
    flowed: bool,
}

impl Sub {
    fn needed(&self) -> LayerSet {
        let v = self
            .viewers
            .values()
            .fold(LayerSet::EMPTY, |a, (l, _)| a.union(*l));
        self.downstream.values().fold(v, |a, (l, _)| a.union(*l))
    }
    fn is_empty(&self) -> bool {
        self.viewers.is_empty() && self.downstream.is_empty()
    }
    fn flowing(&self) -> bool {
        self.local || self.upstream.as_ref().is_some_and(|(_, u)| u.flowing)
    }
}

/// One node's trunk router. See the [module docs](self) for what it decides.
///
/// ```
/// use std::time::Instant;
/// use trunk::{Router, RouterConfig, NodeName, Output};
/// let mut r = Router::new(RouterConfig::new(NodeName::parse("province").unwrap()));
/// let now = Instant::now();
/// r.trunk_up(now, NodeName::parse("city-a").unwrap());
/// while let Some(out) = r.poll_output() {
///     match out {
///         Output::Send { trunk, msg } => { /* write trunk::wire::encode(&msg) on that trunk */ }
///         Output::Route { addr, route } => { /* install in the media forwarder */ }
///         _ => {}
///     }
/// }
/// // Wake at r.poll_timeout() and call r.handle_timeout(then).
/// ```
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    trunks: BTreeMap<NodeName, TrunkRole>,
    published: HashMap<StreamName, LayerSet>,
    /// Learned routes: stream → trunk → (layers, cost through that trunk).
    routes: HashMap<StreamAddr, BTreeMap<NodeName, (LayerSet, u16)>>,
    /// What was announced to each parent/peer.
    advertised: HashMap<NodeName, HashMap<StreamAddr, (LayerSet, u16)>>,
    subs: HashMap<StreamAddr, Sub>,
    grace_timers: BTreeSet<(Instant, StreamAddr)>,
    /// Lost streams whose local viewers wait: look for a path again at this instant.
    retry_timers: BTreeSet<(Instant, StreamAddr)>,
    /// Make-before-break switches that happen at this instant even if the new path delivered
    /// nothing (a silent stream).
    switch_timers: BTreeSet<(Instant, StreamAddr)>,
    keyframe_last: HashMap<(StreamAddr, LayerId), Instant>,
    dirty_routes: BTreeSet<StreamAddr>,
    dirty_subs: BTreeSet<StreamAddr>,
    out: VecDeque<Output>,
}

impl Router {
    /// A router with no trunks up, no streams and no viewers.
    pub fn new(cfg: RouterConfig) -> Router {
        Router {
            cfg,
            trunks: BTreeMap::new(),
            published: HashMap::new(),
            routes: HashMap::new(),
            advertised: HashMap::new(),
            subs: HashMap::new(),
            grace_timers: BTreeSet::new(),
            retry_timers: BTreeSet::new(),
            switch_timers: BTreeSet::new(),
            keyframe_last: HashMap::new(),
            dirty_routes: BTreeSet::new(),
            dirty_subs: BTreeSet::new(),
            out: VecDeque::new(),
        }
    }

    /// This node's configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// The role `peer` plays for this node.
    pub fn role_of(&self, peer: &NodeName) -> TrunkRole {
        if let Some(rank) = self.cfg.parents.iter().position(|p| p == peer) {
            TrunkRole::Parent(rank)
        } else if self.cfg.peers.contains(peer) {
            TrunkRole::Peer
        } else {
            TrunkRole::Child
        }
    }

    /// Trunks currently up.
    pub fn trunks(&self) -> impl Iterator<Item = (&NodeName, TrunkRole)> {
        self.trunks.iter().map(|(n, r)| (n, *r))
    }

    /// The next output, or `None` when drained. Call after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let g = self.grace_timers.first().map(|(t, _)| *t);
        let s = self.switch_timers.first().map(|(t, _)| *t);
        let r = self.retry_timers.first().map(|(t, _)| *t);
        [g, s, r].into_iter().flatten().min()
    }

    /// How often a lost stream's waiting viewers make their node look for a path again (a new
    /// announcement of the stream from below triggers it at once).
    pub const LOST_RETRY: Duration = Duration::from_secs(2);

    /// How long a make-before-break switch waits for the new path's first packet before it
    /// switches anyway.
    pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(2);

    /// The route currently given to the shell for `addr` (empty if none).
    pub fn route(&self, addr: &StreamAddr) -> Option<&Route> {
        self.subs.get(addr).map(|s| &s.route)
    }

    /// Streams with forwarding state here (viewers, downstream trunks or in grace).
    pub fn active_streams(&self) -> impl Iterator<Item = &StreamAddr> {
        self.subs.keys()
    }

    // ---- inputs ----------------------------------------------------------------------------

    /// Replaces the configured parents (in order of preference) and peers — for a shell that
    /// learns their names from their certificates when it connects. Trunks already up whose
    /// role changes are taken down and up again (catalog re-announced, paths re-chosen).
    pub fn set_uplinks(&mut self, now: Instant, parents: Vec<NodeName>, peers: Vec<NodeName>) {
        self.cfg.parents = parents;
        self.cfg.peers = peers;
        let changed: Vec<NodeName> = self
            .trunks
            .iter()
            .filter(|(n, r)| self.role_of(n) != **r)
            .map(|(n, _)| n.clone())
            .collect();
        for n in changed {
            self.trunk_down(now, &n);
            self.trunk_up(now, n);
        }
        self.flush(now);
    }

    /// The trunk to `peer` is connected (and authenticated as `peer`).
    pub fn trunk_up(&mut self, now: Instant, peer: NodeName) {
        if peer == self.cfg.node {
            return;
        }
        let role = self.role_of(&peer);
        debug!(node = %self.cfg.node, %peer, ?role, "trunk up");
        self.trunks.insert(peer.clone(), role);
        if role != TrunkRole::Child {
            self.advertised.insert(peer, HashMap::new());
            let all: Vec<StreamAddr> = self.advertisable_addrs();
            self.dirty_routes.extend(all);
        }
        // A better or a first path may now exist for every stream.
        self.dirty_subs.extend(self.subs.keys().cloned());
        self.flush(now);
    }

    /// The trunk to `peer` is gone (closed, timed out or refused).
    pub fn trunk_down(&mut self, now: Instant, peer: &NodeName) {
        if self.trunks.remove(peer).is_none() {
            return;
        }
        debug!(node = %self.cfg.node, %peer, "trunk down");
        self.advertised.remove(peer);
        for (addr, via) in self.routes.iter_mut() {
            if via.remove(peer).is_some() {
                self.dirty_routes.insert(addr.clone());
            }
        }
        self.routes.retain(|_, via| !via.is_empty());
        let addrs: Vec<StreamAddr> = self.subs.keys().cloned().collect();
        for addr in addrs {
            let Some(sub) = self.subs.get_mut(&addr) else {
                continue;
            };
            if sub.next.as_ref().is_some_and(|(n, _)| n == peer) {
                sub.next = None;
            }
            if sub.upstream.as_ref().is_some_and(|(n, _)| n == peer) {
                sub.upstream = None;
                self.dirty_subs.insert(addr.clone());
            }
            if sub.downstream.remove(peer).is_some() {
                self.dirty_subs.insert(addr.clone());
                self.demand_dropped(now, &addr, false);
            }
        }
        self.flush(now);
    }

    /// A control message arrived on the trunk from `peer`.
    pub fn handle_message(&mut self, now: Instant, peer: &NodeName, msg: Message) {
        if !self.trunks.contains_key(peer) {
            trace!(%peer, "message on a trunk that is not up; ignored");
            return;
        }
        match msg {
            Message::Hello { .. } => {}
            Message::Announce(entries) => self.learn_announce(peer, entries),
            Message::Withdraw(addrs) => self.learn_withdraw(peer, addrs),
            Message::Subscribe { addr, layers } => {
                if layers.is_empty() {
                    self.unsubscribe_from(now, peer, &addr);
                } else {
                    let sub = self.subs.entry(addr.clone()).or_default();
                    sub.downstream.insert(peer.clone(), (layers, false));
                    sub.idle_deadline = None;
                    self.dirty_subs.insert(addr);
                }
            }
            Message::Unsubscribe { addr } => self.unsubscribe_from(now, peer, &addr),
            Message::Subscribed { addr } => self.subscribed(now, peer, addr),
            Message::SubscribeFailed { addr, reason } => {
                self.subscribe_failed(now, peer, addr, reason)
            }
            Message::KeyframeRequest { addr, layer } => self.keyframe(now, &addr, layer, false),
            // The media plane's messages: the shell handles them.
            Message::Flow { .. } | Message::Nack { .. } => {}
        }
        self.flush(now);
    }

    /// A local publisher started (or changed its layers): `stream` is now `NODE/stream`.
    pub fn publish(&mut self, now: Instant, stream: StreamName, layers: LayerSet) {
        let addr = StreamAddr::new(self.cfg.node.clone(), stream.clone());
        self.published.insert(stream, layers);
        self.dirty_routes.insert(addr);
        self.flush(now);
    }

    /// The local publisher of `stream` stopped.
    pub fn unpublish(&mut self, now: Instant, stream: &StreamName) {
        if self.published.remove(stream).is_some() {
            self.dirty_routes
                .insert(StreamAddr::new(self.cfg.node.clone(), stream.clone()));
        }
        self.flush(now);
    }

    /// A local viewer wants `layers` of `addr` (again: replaces its earlier set).
    pub fn subscribe(
        &mut self,
        now: Instant,
        viewer: ViewerId,
        addr: StreamAddr,
        layers: LayerSet,
    ) {
        let sub = self.subs.entry(addr.clone()).or_default();
        let notified = sub.viewers.get(&viewer).is_some_and(|(_, n)| *n);
        sub.viewers.insert(viewer, (layers, notified));
        sub.idle_deadline = None;
        self.dirty_subs.insert(addr);
        self.flush(now);
    }

    /// A local viewer left `addr`.
    pub fn unsubscribe(&mut self, now: Instant, viewer: ViewerId, addr: &StreamAddr) {
        if let Some(sub) = self.subs.get_mut(addr) {
            if sub.viewers.remove(&viewer).is_some() {
                self.dirty_subs.insert(addr.clone());
                self.demand_dropped(now, addr, true);
            }
        }
        self.flush(now);
    }

    /// A local viewer of `addr` needs a keyframe of `layer` (throttled here).
    pub fn request_keyframe(&mut self, now: Instant, addr: &StreamAddr, layer: LayerId) {
        self.keyframe(now, addr, layer, false);
        self.flush(now);
    }

    /// The path in [`Route::next`] of `addr` delivered its first packet (or keyframe): switch
    /// to it and drop the old one.
    pub fn next_path_ready(&mut self, now: Instant, addr: &StreamAddr) {
        self.promote(now, addr);
        self.flush(now);
    }

    /// Time passed: prunes subscriptions whose grace ran out, completes path switches, looks
    /// again for lost streams' paths.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((t, addr)) = self.retry_timers.first().cloned() {
            if t > now {
                break;
            }
            self.retry_timers.remove(&(t, addr.clone()));
            if self
                .subs
                .get(&addr)
                .is_some_and(|s| s.upstream.is_none() && !s.local)
            {
                self.dirty_subs.insert(addr);
            }
        }
        while let Some((t, addr)) = self.switch_timers.first().cloned() {
            if t > now {
                break;
            }
            self.switch_timers.remove(&(t, addr.clone()));
            self.promote(now, &addr);
        }
        while let Some((t, addr)) = self.grace_timers.first().cloned() {
            if t > now {
                break;
            }
            self.grace_timers.remove(&(t, addr.clone()));
            let due = self
                .subs
                .get(&addr)
                .is_some_and(|s| s.idle_deadline == Some(t) && s.is_empty());
            if due {
                debug!(node = %self.cfg.node, %addr, "grace over; pruning");
                self.prune(&addr);
            }
        }
        self.flush(now);
    }

    // ---- internals -------------------------------------------------------------------------

    fn send(&mut self, trunk: NodeName, msg: Message) {
        if self.trunks.contains_key(&trunk) {
            self.out.push_back(Output::Send { trunk, msg });
        }
    }

    /// Re-announces changed routes and re-evaluates touched subscriptions.
    fn flush(&mut self, now: Instant) {
        let dirty: Vec<StreamAddr> = std::mem::take(&mut self.dirty_routes).into_iter().collect();
        if !dirty.is_empty() {
            self.announce(&dirty);
            for addr in dirty {
                if self.subs.contains_key(&addr) {
                    self.dirty_subs.insert(addr);
                }
            }
        }
        while let Some(addr) = self.dirty_subs.pop_first() {
            self.recompute(now, &addr);
        }
    }
}
