//! The sans-IO forwarding core: which viewer gets which publisher's media, and when keyframes are
//! asked for.
//!
//! Nothing here touches a socket, a task or a clock: every input carries `now`, and the decisions
//! come back as return values or as [`ForwardOutput`]s drained with [`Forwarder::poll_output`].
//! The WebRTC sessions themselves (str0m `Rtc`s) live in [`crate::sfu`], which feeds this core and
//! carries out its decisions.
//!
//! Rules it enforces:
//! - one live publisher per stream name; a second publisher with the same owner (a reconnect)
//!   takes the name over and the old one is closed; anyone else gets [`PublishConflict`];
//! - a new viewer receives no video until a keyframe has arrived (its decoder could do nothing
//!   with the frames before it), and a keyframe is asked from the publisher when it joins;
//! - keyframe requests from viewers are aggregated per publisher and sent upstream at most once
//!   per [`ForwardConfig::keyframe_min_interval`]; a request that falls inside the interval is
//!   held and sent when the interval ends, so none is lost and the publisher is not flooded;
//! - viewers outlive their publisher: when a publisher leaves, its viewers stay attached to the
//!   name and resume (from the next keyframe) when a publisher for that name comes back.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use signaling::ids::{StreamName, Subject};

/// Identifies one WebRTC session (publisher or viewer) inside a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer-{}", self.0)
    }
}

/// Kind of a forwarded track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Audio (Opus).
    Audio,
    /// Video (H.264, VP8).
    Video,
}

/// Tunables of the forwarding core. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Minimum time between two keyframe requests sent to one publisher (default 500 ms).
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
    /// Send a keyframe request (PLI) to this publisher's video track.
    RequestKeyframe {
        /// The publisher to ask.
        publisher: PeerId,
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
    /// Viewer keyframe requests folded into one already sent or pending.
    pub keyframe_requests_aggregated: u64,
}

#[derive(Debug)]
struct Publisher {
    peer: PeerId,
    owner: Subject,
    /// When the last keyframe request was sent upstream.
    last_request: Option<Instant>,
    /// A request is held until `last_request + keyframe_min_interval`.
    pending_request: bool,
}

#[derive(Debug)]
struct Viewer {
    peer: PeerId,
    /// No video until a keyframe has passed; `Some(since)` while waiting.
    waiting_since: Option<Instant>,
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
    /// first keyframe, which is asked for at once.
    pub fn add_publisher(
        &mut self,
        now: Instant,
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
            last_request: None,
            pending_request: false,
        });
        let has_viewers = !stream.viewers.is_empty();
        for v in &mut stream.viewers {
            v.waiting_since = Some(now);
        }
        self.roles.insert(peer, PeerRole::Publisher(name.clone()));
        if has_viewers {
            self.request_keyframe(now, &name);
        }
        Ok(())
    }

    /// Attaches `peer` as a viewer of the live stream `name` and asks the publisher for a
    /// keyframe so the viewer gets a picture soon.
    pub fn add_viewer(&mut self, now: Instant, name: &StreamName, peer: PeerId) -> Result<(), ViewError> {
        if self.roles.contains_key(&peer) {
            return Err(ViewError::DuplicatePeer);
        }
        let Some(stream) = self.streams.get_mut(name).filter(|s| s.publisher.is_some()) else {
            return Err(ViewError::NotLive);
        };
        stream.viewers.push(Viewer {
            peer,
            waiting_since: Some(now),
        });
        self.roles.insert(peer, PeerRole::Viewer(name.clone()));
        self.request_keyframe(now, name);
        Ok(())
    }

    /// Forgets `peer`, whatever its role. A publisher's viewers stay attached to the name.
    /// Returns the stream name the peer was attached to.
    pub fn remove_peer(&mut self, peer: PeerId) -> Option<StreamName> {
        let role = self.roles.remove(&peer)?;
        match role {
            PeerRole::Publisher(name) => {
                if let Some(stream) = self.streams.get_mut(&name) {
                    if stream.publisher.as_ref().is_some_and(|p| p.peer == peer) {
                        stream.publisher = None;
                    }
                }
                self.gc(&name);
                Some(name)
            }
            PeerRole::Viewer(name) => {
                if let Some(stream) = self.streams.get_mut(&name) {
                    stream.viewers.retain(|v| v.peer != peer);
                }
                self.gc(&name);
                Some(name)
            }
        }
    }

    fn gc(&mut self, name: &StreamName) {
        if let Some(s) = self.streams.get(name) {
            if s.publisher.is_none() && s.viewers.is_empty() {
                self.streams.remove(name);
            }
        }
    }

    /// A frame arrived from `from`. Fills `targets` with the viewers it must be written to.
    ///
    /// Audio goes to every viewer. Video goes to viewers that have seen a keyframe; a keyframe
    /// releases every waiting viewer. A viewer that has waited longer than
    /// [`ForwardConfig::keyframe_retry`] triggers a new (throttled) keyframe request.
    pub fn route(
        &mut self,
        now: Instant,
        from: PeerId,
        kind: TrackKind,
        keyframe: bool,
        targets: &mut Vec<PeerId>,
    ) {
        targets.clear();
        let Some(PeerRole::Publisher(name)) = self.roles.get(&from) else {
            self.counters.dropped_not_publisher += 1;
            return;
        };
        let Some(stream) = self.streams.get_mut(name) else {
            return;
        };
        let mut retry = false;
        for v in &mut stream.viewers {
            match (kind, v.waiting_since) {
                (TrackKind::Audio, _) | (TrackKind::Video, None) => targets.push(v.peer),
                (TrackKind::Video, Some(_)) if keyframe => {
                    v.waiting_since = None;
                    targets.push(v.peer);
                }
                (TrackKind::Video, Some(since)) => {
                    self.counters.dropped_waiting_keyframe += 1;
                    if now.saturating_duration_since(since) >= self.config.keyframe_retry {
                        v.waiting_since = Some(now);
                        retry = true;
                    }
                }
            }
        }
        if retry {
            let name = name.clone();
            self.request_keyframe(now, &name);
        }
    }

    /// A viewer asked for a keyframe (PLI or FIR from its decoder).
    pub fn viewer_keyframe_request(&mut self, now: Instant, viewer: PeerId) {
        if let Some(PeerRole::Viewer(name)) = self.roles.get(&viewer) {
            let name = name.clone();
            self.request_keyframe(now, &name);
        }
    }

    /// Asks the publisher of `name` for a keyframe, honouring the minimum interval.
    fn request_keyframe(&mut self, now: Instant, name: &StreamName) {
        let min = self.config.keyframe_min_interval;
        let Some(p) = self.streams.get_mut(name).and_then(|s| s.publisher.as_mut()) else {
            return;
        };
        match p.last_request {
            Some(last) if now.saturating_duration_since(last) < min => {
                self.counters.keyframe_requests_aggregated += 1;
                p.pending_request = true;
            }
            _ => {
                p.last_request = Some(now);
                p.pending_request = false;
                self.counters.keyframe_requests_sent += 1;
                self.out.push_back(ForwardOutput::RequestKeyframe { publisher: p.peer });
            }
        }
    }

    /// Time passes: held keyframe requests whose interval ended are released.
    pub fn handle_timeout(&mut self, now: Instant) {
        let min = self.config.keyframe_min_interval;
        for s in self.streams.values_mut() {
            let Some(p) = s.publisher.as_mut() else { continue };
            if p.pending_request && p.last_request.is_none_or(|l| now.saturating_duration_since(l) >= min) {
                p.pending_request = false;
                p.last_request = Some(now);
                self.counters.keyframe_requests_sent += 1;
                self.out.push_back(ForwardOutput::RequestKeyframe { publisher: p.peer });
            }
        }
    }

    /// When [`Forwarder::handle_timeout`] next has something to do, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let min = self.config.keyframe_min_interval;
        self.streams
            .values()
            .filter_map(|s| s.publisher.as_ref())
            .filter(|p| p.pending_request)
            .filter_map(|p| p.last_request.map(|l| l + min))
            .min()
    }

    /// Next decision for the shell to carry out.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ForwardOutput> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> StreamName {
        s.parse().unwrap()
    }
    fn subj(s: &str) -> Subject {
        s.parse().unwrap()
    }
    fn drain(f: &mut Forwarder) -> Vec<ForwardOutput> {
        std::iter::from_fn(|| f.poll_output()).collect()
    }

    #[test]
    fn viewer_waits_for_keyframe_and_asks_for_one() {
        let t0 = Instant::now();
        let mut f = Forwarder::default();
        f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1)).unwrap();
        assert!(drain(&mut f).is_empty(), "no viewer, no keyframe request");
        f.add_viewer(t0, &name("cam"), PeerId(2)).unwrap();
        assert_eq!(drain(&mut f), vec![ForwardOutput::RequestKeyframe { publisher: PeerId(1) }]);

        let mut targets = Vec::new();
        f.route(t0, PeerId(1), TrackKind::Video, false, &mut targets);
        assert!(targets.is_empty(), "delta frame withheld from a waiting viewer");
        f.route(t0, PeerId(1), TrackKind::Audio, false, &mut targets);
        assert_eq!(targets, vec![PeerId(2)], "audio is never withheld");
        f.route(t0, PeerId(1), TrackKind::Video, true, &mut targets);
        assert_eq!(targets, vec![PeerId(2)]);
        f.route(t0, PeerId(1), TrackKind::Video, false, &mut targets);
        assert_eq!(targets, vec![PeerId(2)], "after the keyframe, delta frames flow");
        assert_eq!(f.counters().dropped_waiting_keyframe, 1);
    }

    #[test]
    fn keyframe_requests_are_throttled_and_none_is_lost() {
        let t0 = Instant::now();
        let mut f = Forwarder::default();
        f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1)).unwrap();
        f.add_viewer(t0, &name("cam"), PeerId(2)).unwrap();
        f.add_viewer(t0, &name("cam"), PeerId(3)).unwrap();
        // Ten PLIs from viewers within 100 ms: one request went out at t0, the rest are held.
        for i in 0..10 {
            f.viewer_keyframe_request(t0 + Duration::from_millis(i * 10), PeerId(2 + i % 2));
        }
        assert_eq!(drain(&mut f).len(), 1);
        assert_eq!(f.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        f.handle_timeout(t0 + Duration::from_millis(499));
        assert!(drain(&mut f).is_empty());
        f.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(drain(&mut f), vec![ForwardOutput::RequestKeyframe { publisher: PeerId(1) }]);
        assert_eq!(f.poll_timeout(), None, "nothing held any more");
        assert_eq!(f.counters().keyframe_requests_sent, 2);
        assert_eq!(f.counters().keyframe_requests_aggregated, 11, "the second viewer's join and ten PLIs");
    }

    #[test]
    fn waiting_viewer_asks_again_after_retry_interval() {
        let t0 = Instant::now();
        let mut f = Forwarder::default();
        f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1)).unwrap();
        f.add_viewer(t0, &name("cam"), PeerId(2)).unwrap();
        drain(&mut f);
        let mut targets = Vec::new();
        f.route(t0 + Duration::from_millis(900), PeerId(1), TrackKind::Video, false, &mut targets);
        assert!(drain(&mut f).is_empty());
        f.route(t0 + Duration::from_millis(1000), PeerId(1), TrackKind::Video, false, &mut targets);
        assert_eq!(drain(&mut f), vec![ForwardOutput::RequestKeyframe { publisher: PeerId(1) }]);
    }

    #[test]
    fn second_publisher_conflicts_unless_same_owner() {
        let t0 = Instant::now();
        let mut f = Forwarder::default();
        f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1)).unwrap();
        assert_eq!(
            f.add_publisher(t0, name("cam"), subj("off-2"), PeerId(2)),
            Err(PublishConflict { holder: subj("off-1") })
        );
        f.add_viewer(t0, &name("cam"), PeerId(3)).unwrap();
        drain(&mut f);
        // The same owner reconnects: takes over, old publisher closed, viewer waits for a keyframe.
        f.add_publisher(t0 + Duration::from_secs(2), name("cam"), subj("off-1"), PeerId(4)).unwrap();
        assert_eq!(
            drain(&mut f),
            vec![
                ForwardOutput::Close { peer: PeerId(1) },
                ForwardOutput::RequestKeyframe { publisher: PeerId(4) }
            ]
        );
        let mut targets = Vec::new();
        f.route(t0, PeerId(1), TrackKind::Video, true, &mut targets);
        assert!(targets.is_empty(), "the displaced publisher forwards nothing");
        assert_eq!(f.counters().dropped_not_publisher, 1);
        f.route(t0, PeerId(4), TrackKind::Video, true, &mut targets);
        assert_eq!(targets, vec![PeerId(3)]);
    }

    #[test]
    fn viewers_outlive_their_publisher_and_resume() {
        let t0 = Instant::now();
        let mut f = Forwarder::default();
        f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1)).unwrap();
        f.add_viewer(t0, &name("cam"), PeerId(2)).unwrap();
        assert_eq!(f.remove_peer(PeerId(1)), Some(name("cam")));
        assert_eq!(f.live_owner(&name("cam")), None);
        assert_eq!(f.add_viewer(t0, &name("cam"), PeerId(3)), Err(ViewError::NotLive));
        assert_eq!(f.viewer_count(&name("cam")), 1);
        // Anyone may publish the name now that it is not live.
        f.add_publisher(t0, name("cam"), subj("off-9"), PeerId(5)).unwrap();
        let mut targets = Vec::new();
        f.route(t0, PeerId(5), TrackKind::Video, true, &mut targets);
        assert_eq!(targets, vec![PeerId(2)]);
        f.remove_peer(PeerId(2));
        f.remove_peer(PeerId(5));
        assert_eq!(f.viewer_count(&name("cam")), 0);
        assert!(f.streams.is_empty(), "empty streams are forgotten");
    }

    #[test]
    fn unknown_stream_or_duplicate_viewer_is_refused() {
        let t0 = Instant::now();
        let mut f = Forwarder::default();
        assert_eq!(f.add_viewer(t0, &name("nope"), PeerId(1)), Err(ViewError::NotLive));
        f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1)).unwrap();
        assert_eq!(f.add_viewer(t0, &name("cam"), PeerId(1)), Err(ViewError::DuplicatePeer));
    }
}
