//! The sans-IO forwarding core: which viewer gets which publisher's media, from which simulcast
//! layer, and when keyframes are asked for.
//!
//! Nothing here touches a socket, a task or a clock: every input carries `now`, and the decisions
//! come back as return values or as [`ForwardOutput`]s drained with [`Forwarder::poll_output`].
//! The WebRTC sessions themselves (str0m `Rtc`s) live in [`crate::Sfu`], which feeds this core and
//! carries out its decisions (including rewriting timestamps when a viewer changes layer).
//!
//! Rules it enforces:
//! - one live publisher per stream name; a second publisher with the same owner (a reconnect)
//!   takes the name over and the old one is closed; anyone else gets [`PublishConflict`];
//! - a publisher sends one or more video layers (RID simulcast). Layers are ranked from low to
//!   high by picture size (read from keyframes), or by bitrate while sizes are unknown, whatever
//!   the publisher calls them; a layer that has sent nothing for [`LAYER_TIMEOUT`] is out of the
//!   ranking, unless it is on standby (a remote stream's layer this node does not pull now but
//!   can, see [`Forwarder::set_standby`]);
//! - each viewer receives one layer, chosen by its [`LayerPref`]; it changes layer only on a
//!   keyframe of the new layer (asked for at once), keeping the old layer until then, so its
//!   decoder never sees a gap;
//! - a new viewer receives no video until a keyframe of its layer has arrived;
//! - keyframe requests are aggregated per publisher layer and sent at most once per
//!   [`ForwardConfig::keyframe_min_interval`]; a request inside the interval is held and sent
//!   when it ends, so none is lost and the publisher is not flooded;
//! - viewers outlive their publisher: when a publisher leaves, its viewers stay attached to the
//!   name and resume (from the next keyframe) when a publisher for that name comes back.

mod layers;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ids::{StreamName, Subject};

pub use layers::{LayerInfo, AUTO_UP_HOLD, LAYER_TIMEOUT};
use layers::{Publisher, Viewer};

/// Identifies one WebRTC session (publisher or viewer) inside a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer-{}", self.0)
    }
}

/// One video layer of a publisher, numbered by the engine in order of first appearance (a
/// publisher without simulcast has only `Layer(0)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Layer(pub u8);

/// Kind of a forwarded track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Audio (Opus).
    Audio,
    /// Video (H.264, VP8).
    Video,
}

/// Which layer a viewer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerPref {
    /// The smallest picture.
    Low,
    /// The middle one (of three; the lower of two).
    Mid,
    /// The largest picture.
    High,
    /// The largest picture at most this many rows high (the smallest if none is).
    MaxHeight(u32),
    /// The largest layer whose bitrate fits the viewer's bandwidth estimate; the largest while
    /// there is no estimate.
    #[default]
    Auto,
}

impl std::str::FromStr for LayerPref {
    type Err = String;
    /// `low`, `mid`, `high` or `auto`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(LayerPref::Low),
            "mid" => Ok(LayerPref::Mid),
            "high" => Ok(LayerPref::High),
            "auto" => Ok(LayerPref::Auto),
            _ => Err(format!("unknown layer {s:?} (low, mid, high or auto)")),
        }
    }
}

/// What the engine knows of one received frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Audio or video.
    pub kind: TrackKind,
    /// The video layer it belongs to (`Layer(0)` for audio and single-layer video).
    pub layer: Layer,
    /// Whether a decoder can start from it.
    pub keyframe: bool,
    /// Picture size, when read from a keyframe.
    pub dims: Option<(u32, u32)>,
    /// Payload size in bytes (for the layer's bitrate).
    pub bytes: usize,
}

/// Tunables of the forwarding core. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Minimum time between two keyframe requests for one publisher layer (default 500 ms).
    pub keyframe_min_interval: Duration,
    /// How long a viewer waits for a keyframe before it is asked for again (default 1 s).
    pub keyframe_retry: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            keyframe_min_interval: Duration::from_millis(500),
            keyframe_retry: Duration::from_secs(1),
        }
    }
}

/// Something the shell must do on behalf of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardOutput {
    /// Send a keyframe request (PLI) to this publisher for this layer.
    RequestKeyframe {
        /// The publisher to ask.
        publisher: PeerId,
        /// The layer wanted.
        layer: Layer,
    },
    /// Close this peer: it was displaced by a newer publisher of the same owner.
    Close {
        /// The peer to close.
        peer: PeerId,
    },
}

/// A second publisher tried to take a live name held by another subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishConflict {
    /// The subject that holds the name.
    pub holder: Subject,
}

/// Why a viewer could not be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewError {
    /// No publisher is live under that name.
    NotLive,
    /// The peer id is already in use.
    DuplicatePeer,
}

/// Counters the core keeps (monotonic); the shell exports them as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardCounters {
    /// Video frames not sent to a viewer because it was still waiting for a keyframe.
    pub dropped_waiting_keyframe: u64,
    /// Media from a peer that is not a live publisher (late packets after a takeover).
    pub dropped_not_publisher: u64,
    /// Keyframe requests sent upstream.
    pub keyframe_requests_sent: u64,
    /// Keyframe requests folded into one already sent or pending.
    pub keyframe_requests_aggregated: u64,
    /// Times a viewer moved to another layer.
    pub layer_switches: u64,
}

#[derive(Debug, Default)]
struct Stream {
    publisher: Option<Publisher>,
    viewers: Vec<Viewer>,
}

#[derive(Debug, Clone)]
enum PeerRole {
    Publisher(StreamName),
    Viewer(StreamName),
}

/// The forwarding core. See the module docs for its rules.
#[derive(Debug, Default)]
pub struct Forwarder {
    config: ForwardConfig,
    streams: HashMap<StreamName, Stream>,
    roles: HashMap<PeerId, PeerRole>,
    out: VecDeque<ForwardOutput>,
    counters: ForwardCounters,
    wanted: Vec<Layer>,
}

impl Forwarder {
    /// A core with the given tunables.
    pub fn new(config: ForwardConfig) -> Self {
        Forwarder {
            config,
            ..Default::default()
        }
    }

    /// Counters since start.
    pub fn counters(&self) -> &ForwardCounters {
        &self.counters
    }

    /// Whether a publisher is live under `name`, and who owns it.
    pub fn live_owner(&self, name: &StreamName) -> Option<&Subject> {
        self.streams.get(name)?.publisher.as_ref().map(|p| &p.owner)
    }

    /// The live publisher of `name`.
    pub fn publisher_of(&self, name: &StreamName) -> Option<PeerId> {
        self.streams.get(name)?.publisher.as_ref().map(|p| p.peer)
    }

    /// The active layers of `name`'s publisher, lowest first.
    pub fn layers(&self, name: &StreamName) -> Vec<LayerInfo> {
        let Some(p) = self.streams.get(name).and_then(|s| s.publisher.as_ref()) else {
            return Vec::new();
        };
        p.ranked
            .iter()
            .filter_map(|l| p.info(*l).cloned())
            .collect()
    }

    /// How long `layer` of `name`'s publisher has sent nothing (`None`: never seen).
    pub fn layer_silence(&self, name: &StreamName, layer: Layer, now: Instant) -> Option<Duration> {
        let p = self.streams.get(name)?.publisher.as_ref()?;
        let l = p.layers.iter().find(|l| l.info.layer == layer)?;
        Some(now.saturating_duration_since(l.last_seen))
    }

    /// Every layer `name`'s publisher has sent, active or not, in the order first seen (their
    /// last size and bitrate).
    pub fn known_layers(&self, name: &StreamName) -> Vec<LayerInfo> {
        let Some(p) = self.streams.get(name).and_then(|s| s.publisher.as_ref()) else {
            return Vec::new();
        };
        p.layers.iter().map(|l| l.info.clone()).collect()
    }

    /// Puts `layers` of `name`'s publisher on standby, taking the others off: a layer on standby
    /// stays in the ranking (with its last size and bitrate) although nothing arrives, because
    /// its absence is this node's choice: a remote stream's layer that no local viewer needs is
    /// not pulled over the trunk, yet a viewer's preference or estimate may choose it, which
    /// makes the node pull it. A layer taken off standby has [`LAYER_TIMEOUT`] from now to
    /// arrive before it leaves the ranking. Layers never seen are ignored.
    ///
    /// Also re-ranks the layers at `now` (a remote stream whose only pulled layer went silent
    /// has no frame to re-rank it), and re-evaluates its viewers if the ranking changed.
    pub fn set_standby(&mut self, now: Instant, name: &StreamName, layers: &[Layer]) {
        let Some(p) = self
            .streams
            .get_mut(name)
            .and_then(|s| s.publisher.as_mut())
        else {
            return;
        };
        let before = p.ranked.clone();
        if p.standby.len() == layers.len() && p.standby.iter().all(|l| layers.contains(l)) {
            p.rerank(now);
            if p.ranked != before {
                let name = name.clone();
                self.reselect(now, &name);
            }
            return;
        }
        for l in &mut p.layers {
            let (was, is) = (
                p.standby.contains(&l.info.layer),
                layers.contains(&l.info.layer),
            );
            if was && !is {
                // Pulled again: its bitrate window starts afresh when it arrives.
                l.last_seen = now;
                l.window_start = now;
                l.window_bytes = 0;
            }
        }
        p.standby.clear();
        p.standby.extend(
            layers
                .iter()
                .filter(|l| p.layers.iter().any(|k| k.info.layer == **l)),
        );
        p.rerank(now);
        let name = name.clone();
        self.reselect(now, &name);
    }

    /// The layer a viewer is receiving now, if any.
    pub fn viewer_layer(&self, viewer: PeerId) -> Option<Layer> {
        let Some(PeerRole::Viewer(name)) = self.roles.get(&viewer) else {
            return None;
        };
        self.streams
            .get(name)?
            .viewers
            .iter()
            .find(|v| v.peer == viewer)?
            .current
    }

    /// The layer a viewer's preference selects among its publisher's active layers now (it is
    /// forwarded from that layer's next keyframe on, if it is not [`Forwarder::viewer_layer`]
    /// already).
    pub fn viewer_choice(&self, viewer: PeerId) -> Option<Layer> {
        let Some(PeerRole::Viewer(name)) = self.roles.get(&viewer) else {
            return None;
        };
        let s = self.streams.get(name)?;
        let v = s.viewers.iter().find(|v| v.peer == viewer)?;
        s.publisher.as_ref()?.choose(v.pref, v.bandwidth)
    }

    /// For a viewer on [`LayerPref::Auto`] below its publisher's top layer: the bitrate (bits per
    /// second) it must sustain to move up one layer. The engine keeps that much traffic (padding
    /// included) flowing so the bandwidth estimate can grow to it; without it a viewer sent only
    /// the low layer would never learn that the link has recovered.
    pub fn probe_target(&self, viewer: PeerId) -> Option<u64> {
        let Some(PeerRole::Viewer(name)) = self.roles.get(&viewer) else {
            return None;
        };
        let s = self.streams.get(name)?;
        let v = s.viewers.iter().find(|v| v.peer == viewer)?;
        if v.pref != LayerPref::Auto {
            return None;
        }
        let p = s.publisher.as_ref()?;
        let pos = p.ranked.iter().position(|l| Some(*l) == v.current)?;
        let next = p.ranked.get(pos + 1)?;
        Some(p.info(*next)?.bitrate_bps * 11 / 10)
    }

    /// The highest bandwidth estimate among `name`'s viewers (bits per second), if any viewer
    /// has one: no single-layer publisher needs to send more than its best-connected viewer takes.
    pub fn viewer_demand(&self, name: &StreamName) -> Option<u64> {
        self.streams
            .get(name)?
            .viewers
            .iter()
            .filter_map(|v| v.bandwidth)
            .max()
    }

    /// Number of viewers attached to `name` (live or waiting for the publisher to return).
    pub fn viewer_count(&self, name: &StreamName) -> usize {
        self.streams.get(name).map_or(0, |s| s.viewers.len())
    }

    /// Checks whether `owner` may publish `name` now, without changing anything.
    pub fn check_publish(&self, name: &StreamName, owner: &Subject) -> Result<(), PublishConflict> {
        match self.live_owner(name) {
            Some(holder) if holder != owner => Err(PublishConflict {
                holder: holder.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Registers `peer` as the publisher of `name`.
    ///
    /// If the same owner already publishes the name, the old publisher is displaced (a
    /// [`ForwardOutput::Close`] is queued for it) and every viewer waits for the new publisher's
    /// first keyframe, which is asked for as soon as its layers are known.
    pub fn add_publisher(
        &mut self,
        _now: Instant,
        name: StreamName,
        owner: Subject,
        peer: PeerId,
    ) -> Result<(), PublishConflict> {
        self.check_publish(&name, &owner)?;
        let stream = self.streams.entry(name.clone()).or_default();
        if let Some(old) = stream.publisher.take() {
            self.roles.remove(&old.peer);
            self.out.push_back(ForwardOutput::Close { peer: old.peer });
        }
        stream.publisher = Some(Publisher {
            peer,
            owner,
            layers: Vec::new(),
            ranked: Vec::new(),
            standby: Vec::new(),
        });
        for v in &mut stream.viewers {
            v.current = None;
            v.asked_at = None;
        }
        self.roles.insert(peer, PeerRole::Publisher(name));
        Ok(())
    }

    /// Attaches `peer` as a viewer of the live stream `name` with a layer preference, and asks
    /// the publisher for a keyframe of that layer so the viewer gets a picture soon.
    pub fn add_viewer(
        &mut self,
        now: Instant,
        name: &StreamName,
        peer: PeerId,
        pref: LayerPref,
    ) -> Result<(), ViewError> {
        if self.roles.contains_key(&peer) {
            return Err(ViewError::DuplicatePeer);
        }
        let Some(stream) = self.streams.get_mut(name).filter(|s| s.publisher.is_some()) else {
            return Err(ViewError::NotLive);
        };
        stream.viewers.push(Viewer {
            peer,
            pref,
            bandwidth: None,
            current: None,
            asked_at: None,
            up_since: None,
        });
        self.roles.insert(peer, PeerRole::Viewer(name.clone()));
        self.reselect(now, name);
        Ok(())
    }

    /// Changes a viewer's layer preference (it switches at the new layer's next keyframe).
    pub fn set_viewer_pref(&mut self, now: Instant, viewer: PeerId, pref: LayerPref) {
        if let Some(name) = self.viewer_mut(viewer).map(|(name, v)| {
            v.pref = pref;
            name
        }) {
            self.reselect(now, &name);
        }
    }

    /// A viewer's bandwidth estimate changed (bits per second); drives [`LayerPref::Auto`].
    pub fn set_viewer_bandwidth(&mut self, now: Instant, viewer: PeerId, bps: u64) {
        if let Some(name) = self.viewer_mut(viewer).map(|(name, v)| {
            v.bandwidth = Some(bps);
            name
        }) {
            self.reselect(now, &name);
        }
    }

    fn viewer_mut(&mut self, viewer: PeerId) -> Option<(StreamName, &mut Viewer)> {
        let Some(PeerRole::Viewer(name)) = self.roles.get(&viewer) else {
            return None;
        };
        let name = name.clone();
        let v = self
            .streams
            .get_mut(&name)?
            .viewers
            .iter_mut()
            .find(|v| v.peer == viewer)?;
        Some((name, v))
    }

    /// Forgets `peer`, whatever its role. A publisher's viewers stay attached to the name.
    /// Returns the stream name the peer was attached to.
    pub fn remove_peer(&mut self, peer: PeerId) -> Option<StreamName> {
        let role = self.roles.remove(&peer)?;
        let name = match role {
            PeerRole::Publisher(name) => {
                if let Some(stream) = self.streams.get_mut(&name) {
                    if stream.publisher.as_ref().is_some_and(|p| p.peer == peer) {
                        stream.publisher = None;
                    }
                }
                name
            }
            PeerRole::Viewer(name) => {
                if let Some(stream) = self.streams.get_mut(&name) {
                    stream.viewers.retain(|v| v.peer != peer);
                }
                name
            }
        };
        if self
            .streams
            .get(&name)
            .is_some_and(|s| s.publisher.is_none() && s.viewers.is_empty())
        {
            self.streams.remove(&name);
        }
        Some(name)
    }

    /// A frame arrived from `from`. Fills `targets` with the viewers it must be written to.
    ///
    /// Audio goes to every viewer. A video frame goes to the viewers whose current layer it
    /// belongs to; a keyframe of a viewer's wanted layer moves it there. A viewer whose wanted
    /// layer differs from what it gets has a keyframe of the wanted layer asked for (again after
    /// [`ForwardConfig::keyframe_retry`]).
    pub fn route(&mut self, now: Instant, from: PeerId, frame: &Frame, targets: &mut Vec<PeerId>) {
        targets.clear();
        let Some(PeerRole::Publisher(name)) = self.roles.get(&from) else {
            self.counters.dropped_not_publisher += 1;
            return;
        };
        let name = name.clone();
        let Some(stream) = self.streams.get_mut(&name) else {
            return;
        };
        if frame.kind == TrackKind::Audio {
            targets.extend(stream.viewers.iter().map(|v| v.peer));
            return;
        }
        let Some(publisher) = stream.publisher.as_mut() else {
            return;
        };
        let known = publisher.layers.iter().any(|l| l.info.layer == frame.layer);
        let l = publisher.layer_mut(now, frame.layer);
        l.last_seen = now;
        l.window_bytes += frame.bytes as u64;
        let elapsed = now.saturating_duration_since(l.window_start);
        if elapsed >= Duration::from_secs(1) {
            l.info.bitrate_bps = l.window_bytes * 8 * 1000 / (elapsed.as_millis().max(1) as u64);
            l.window_start = now;
            l.window_bytes = 0;
        }
        if frame.keyframe && frame.dims.is_some() {
            l.info.dims = frame.dims;
        }
        // Compare rankings without allocating (a publisher has at most a handful of layers).
        let snapshot = |r: &[Layer]| -> (usize, [Layer; 8]) {
            let mut a = [Layer(u8::MAX); 8];
            for (slot, l) in a.iter_mut().zip(r) {
                *slot = *l;
            }
            (r.len(), a)
        };
        let before = snapshot(&publisher.ranked);
        publisher.rerank(now);
        let reranked = !known || before != snapshot(&publisher.ranked);

        self.wanted.clear();
        for v in &mut stream.viewers {
            let want = v.want(now, publisher);
            if v.current == Some(frame.layer) {
                targets.push(v.peer);
            } else if want == Some(frame.layer) && frame.keyframe {
                if v.current.is_some() {
                    self.counters.layer_switches += 1;
                }
                v.current = want;
                v.asked_at = None;
                targets.push(v.peer);
                continue;
            } else if v.current.is_none() {
                self.counters.dropped_waiting_keyframe += 1;
            }
            // Keep forwarding the current layer until the wanted one's keyframe arrives.
            if let Some(want) = want.filter(|w| Some(*w) != v.current) {
                let due = v
                    .asked_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.config.keyframe_retry);
                if due || reranked {
                    v.asked_at = Some(now);
                    self.wanted.push(want);
                }
            }
        }
        let wanted = std::mem::take(&mut self.wanted);
        for layer in &wanted {
            self.request_keyframe(now, &name, *layer);
        }
        self.wanted = wanted;
    }

    /// Re-evaluates every viewer of `name` after a preference or estimate change, asking for
    /// keyframes of newly wanted layers.
    fn reselect(&mut self, now: Instant, name: &StreamName) {
        let Some(stream) = self.streams.get_mut(name) else {
            return;
        };
        let Some(publisher) = stream.publisher.as_ref() else {
            return;
        };
        self.wanted.clear();
        for v in &mut stream.viewers {
            let want = v.want(now, publisher);
            if let Some(want) = want.filter(|w| Some(*w) != v.current) {
                if v.asked_at.is_none() {
                    v.asked_at = Some(now);
                    self.wanted.push(want);
                }
            }
        }
        let wanted = std::mem::take(&mut self.wanted);
        for layer in &wanted {
            self.request_keyframe(now, name, *layer);
        }
        self.wanted = wanted;
    }

    /// A viewer asked for a keyframe (PLI or FIR from its decoder): ask for its current layer.
    pub fn viewer_keyframe_request(&mut self, now: Instant, viewer: PeerId) {
        let Some(PeerRole::Viewer(name)) = self.roles.get(&viewer) else {
            return;
        };
        let name = name.clone();
        let layer = self.streams.get(&name).and_then(|s| {
            let v = s.viewers.iter().find(|v| v.peer == viewer)?;
            v.current
                .or_else(|| s.publisher.as_ref()?.choose(v.pref, v.bandwidth))
        });
        if let Some(layer) = layer {
            self.request_keyframe(now, &name, layer);
        }
    }

    /// A publisher's own stream of `layer` broke (loss not repaired): its viewers need a fresh
    /// keyframe of it.
    pub fn publisher_discontinuity(&mut self, now: Instant, publisher: PeerId, layer: Layer) {
        if let Some(PeerRole::Publisher(name)) = self.roles.get(&publisher) {
            let name = name.clone();
            self.request_keyframe(now, &name, layer);
        }
    }

    /// Asks the publisher of `name` for a keyframe of `layer`, honouring the minimum interval.
    fn request_keyframe(&mut self, now: Instant, name: &StreamName, layer: Layer) {
        let min = self.config.keyframe_min_interval;
        let Some(p) = self
            .streams
            .get_mut(name)
            .and_then(|s| s.publisher.as_mut())
        else {
            return;
        };
        let peer = p.peer;
        let l = p.layer_mut(now, layer);
        match l.last_request {
            Some(last) if now.saturating_duration_since(last) < min => {
                self.counters.keyframe_requests_aggregated += 1;
                l.pending_request = true;
            }
            _ => {
                l.last_request = Some(now);
                l.pending_request = false;
                self.counters.keyframe_requests_sent += 1;
                self.out.push_back(ForwardOutput::RequestKeyframe {
                    publisher: peer,
                    layer,
                });
            }
        }
    }

    /// Time passes: held keyframe requests whose interval ended are released.
    pub fn handle_timeout(&mut self, now: Instant) {
        let min = self.config.keyframe_min_interval;
        for s in self.streams.values_mut() {
            let Some(p) = s.publisher.as_mut() else {
                continue;
            };
            for l in &mut p.layers {
                if l.pending_request
                    && l.last_request
                        .is_none_or(|t| now.saturating_duration_since(t) >= min)
                {
                    l.pending_request = false;
                    l.last_request = Some(now);
                    self.counters.keyframe_requests_sent += 1;
                    self.out.push_back(ForwardOutput::RequestKeyframe {
                        publisher: p.peer,
                        layer: l.info.layer,
                    });
                }
            }
        }
    }

    /// When [`Forwarder::handle_timeout`] next has something to do, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let min = self.config.keyframe_min_interval;
        self.streams
            .values()
            .filter_map(|s| s.publisher.as_ref())
            .flat_map(|p| p.layers.iter())
            .filter(|l| l.pending_request)
            .filter_map(|l| l.last_request.map(|t| t + min))
            .min()
    }

    /// Next decision for the shell to carry out.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ForwardOutput> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests;
