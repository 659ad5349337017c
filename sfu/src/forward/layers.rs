//! Simulcast layer selection, the decision half of "simulcast switching": a publisher's layers
//! ranked from low to high (by picture size once every active layer is sized, by bitrate until
//! then; a layer silent for [`LAYER_TIMEOUT`] drops out unless on standby), the layer a
//! [`LayerPref`] chooses among them, and a viewer's wanted layer with the hold on `auto`
//! up-switches ([`AUTO_UP_HOLD`]).
//!
//! Pure functions of the state they are given and `now`; carrying a switch out (on a keyframe
//! of the new layer, with timestamps rewritten) is the rest of the core's and the engine's job.

use std::time::{Duration, Instant};

use ids::Subject;

use super::{Layer, LayerPref, PeerId};

/// A layer not heard from for this long is out of the ranking (the publisher stopped it, e.g. a
/// browser dropping its top layer under CPU load).
pub const LAYER_TIMEOUT: Duration = Duration::from_millis(1500);

/// What the core knows of one layer of a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The layer.
    pub layer: Layer,
    /// Picture size from its last keyframe, if readable.
    pub dims: Option<(u32, u32)>,
    /// Bitrate over the last full second, bits per second.
    pub bitrate_bps: u64,
}

/// One layer of a publisher as the core tracks it: what it knows, when it was last heard, its
/// bitrate window and its keyframe requests.
#[derive(Debug)]
pub(super) struct LayerState {
    pub(super) info: LayerInfo,
    pub(super) last_seen: Instant,
    pub(super) window_start: Instant,
    pub(super) window_bytes: u64,
    pub(super) last_request: Option<Instant>,
    pub(super) pending_request: bool,
}

/// A live publisher: its layers and their ranking.
#[derive(Debug)]
pub(super) struct Publisher {
    pub(super) peer: PeerId,
    pub(super) owner: Subject,
    pub(super) layers: Vec<LayerState>,
    /// Active layers, lowest first.
    pub(super) ranked: Vec<Layer>,
    /// Layers that stay ranked while silent (see [`Forwarder::set_standby`](super::Forwarder::set_standby)).
    pub(super) standby: Vec<Layer>,
}

impl Publisher {
    pub(super) fn layer_mut(&mut self, now: Instant, layer: Layer) -> &mut LayerState {
        let i = match self.layers.iter().position(|l| l.info.layer == layer) {
            Some(i) => i,
            None => {
                self.layers.push(LayerState {
                    info: LayerInfo {
                        layer,
                        dims: None,
                        bitrate_bps: 0,
                    },
                    last_seen: now,
                    window_start: now,
                    window_bytes: 0,
                    last_request: None,
                    pending_request: false,
                });
                self.layers.len() - 1
            }
        };
        &mut self.layers[i]
    }

    /// Re-ranks the active layers (called per video frame: no allocation once `ranked` has
    /// grown to the number of layers).
    pub(super) fn rerank(&mut self, now: Instant) {
        let standby = &self.standby;
        let active = |l: &&LayerState| {
            now.saturating_duration_since(l.last_seen) <= LAYER_TIMEOUT
                || standby.contains(&l.info.layer)
        };
        let all_sized = self
            .layers
            .iter()
            .filter(active)
            .all(|l| l.info.dims.is_some());
        let (layers, ranked) = (&self.layers, &mut self.ranked);
        ranked.clear();
        ranked.extend(layers.iter().filter(active).map(|l| l.info.layer));
        ranked.sort_by_key(|layer| {
            let info = layers
                .iter()
                .find(|l| l.info.layer == *layer)
                .map(|l| &l.info);
            let key = match (all_sized, info.and_then(|i| i.dims)) {
                (true, Some((w, h))) => u64::from(w) * u64::from(h),
                _ => info.map_or(0, |i| i.bitrate_bps),
            };
            (key, *layer)
        });
    }

    pub(super) fn info(&self, layer: Layer) -> Option<&LayerInfo> {
        self.layers
            .iter()
            .find(|l| l.info.layer == layer)
            .map(|l| &l.info)
    }

    /// The layer `pref` selects among the active ones.
    pub(super) fn choose(&self, pref: LayerPref, bandwidth: Option<u64>) -> Option<Layer> {
        let r = &self.ranked;
        let (first, last) = (*r.first()?, *r.last()?);
        let height = |l: &Layer| self.info(*l).and_then(|i| i.dims).map(|d| d.1);
        Some(match pref {
            LayerPref::Low => first,
            LayerPref::Mid => r[(r.len() - 1) / 2],
            LayerPref::High => last,
            LayerPref::MaxHeight(max) => r
                .iter()
                .rev()
                .find(|l| height(l).is_some_and(|h| h <= max))
                .copied()
                .unwrap_or(first),
            LayerPref::Auto => match bandwidth {
                None => last,
                Some(bw) => r
                    .iter()
                    .rev()
                    .find(|l| {
                        self.info(**l).is_some_and(|i| {
                            i.bitrate_bps.saturating_mul(10) <= bw.saturating_mul(9)
                        })
                    })
                    .copied()
                    .unwrap_or(first),
            },
        })
    }
}

/// A viewer: its preference, its estimate and the layer it is on.
#[derive(Debug)]
pub(super) struct Viewer {
    pub(super) peer: PeerId,
    pub(super) pref: LayerPref,
    pub(super) bandwidth: Option<u64>,
    /// The layer being forwarded; `None` until its first keyframe.
    pub(super) current: Option<Layer>,
    /// When a keyframe of the wanted layer was last asked for, while it differs from `current`.
    pub(super) asked_at: Option<Instant>,
    /// Since when [`LayerPref::Auto`] has pointed above `current` (up-switches must hold).
    pub(super) up_since: Option<Instant>,
}

impl Viewer {
    /// The layer this viewer should be on now. Explicit preferences apply at once. `Auto` goes
    /// down at once when the estimate falls but up only after the higher layer has fit for
    /// [`AUTO_UP_HOLD`], so a noisy estimate does not flap between layers.
    pub(super) fn want(&mut self, now: Instant, publisher: &Publisher) -> Option<Layer> {
        let want = publisher.choose(self.pref, self.bandwidth);
        let rank = |l: Option<Layer>| l.and_then(|l| publisher.ranked.iter().position(|r| *r == l));
        let (Some(want_rank), Some(cur_rank)) = (rank(want), rank(self.current)) else {
            self.up_since = None;
            return want;
        };
        if self.pref != LayerPref::Auto || self.bandwidth.is_none() || want_rank <= cur_rank {
            self.up_since = None;
            return want;
        }
        match self.up_since {
            None => {
                self.up_since = Some(now);
                self.current
            }
            Some(t) if now.saturating_duration_since(t) < AUTO_UP_HOLD => self.current,
            Some(_) => want,
        }
    }
}

/// How long a higher layer must fit a viewer's estimate before [`LayerPref::Auto`] moves up.
pub const AUTO_UP_HOLD: Duration = Duration::from_secs(2);
