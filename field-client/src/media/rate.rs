//! What to send for a bandwidth estimate: the Opus bitrate, which video layers are on, and the
//! bitrate of each (sans-IO, pure arithmetic over the link class; unit-tested).
//!
//! The estimate comes from send-side congestion control (Google Congestion Control over the SFU's
//! transport-wide feedback, in the `webrtc` crate's interceptor chain). [`Planner::plan`] turns it
//! into a [`Plan`]; the publisher applies a plan to the running encoders (bitrate properties) and
//! stops writing the frames of layers that are off.
//!
//! Rules:
//! - Audio first: the link class's [`LinkClass::split_budget`] decides the Opus bitrate and
//!   whether video is paused (audio-first links pause video below their threshold).
//! - Simulcast: layers are switched on from the smallest up while their caps fit what video may
//!   use; the smallest stays on (unless video is paused) and takes what is left, between the
//!   ladder's lowest rung and its cap. The largest layer that is on gets the remainder up to its
//!   cap.
//! - One layer: it walks the ladder (the rung `split_budget` chose).
//! - Hysteresis: a layer goes on only when what video may use covers the layers below it plus
//!   its own cap with 15 % to spare, continuously for [`UP_HOLD`]; and not within a back-off
//!   after it was last switched off. The back-off starts at [`BACKOFF_START`] and doubles (up to
//!   [`BACKOFF_MAX`]) each time a layer that came back is switched off again within
//!   [`STABLE_AFTER`] — a failed probe of a link that really is that narrow. Switching a layer
//!   on is the only way to learn the link got wider, and each failed try costs a burst of loss
//!   (audio included), so tries get rarer the more they fail.

use std::time::{Duration, Instant};

use hw_profiles::{LinkClass, VideoBudget};

/// Headroom a layer needs above its cap before it is switched on (1.15 = 15 %).
const UP_MARGIN: f64 = 1.15;
/// How long the estimate must allow a layer before it is switched on.
pub const UP_HOLD: Duration = Duration::from_secs(2);
/// The first back-off after a layer is switched off.
pub const BACKOFF_START: Duration = Duration::from_secs(30);
/// The longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(120);
/// A layer on for this long has proven the link: its back-off starts over.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Per-layer switching history.
#[derive(Debug, Clone, Copy, Default)]
struct Switching {
    /// Since when the estimate has allowed the layer while it was off.
    allowed_since: Option<Instant>,
    /// When the layer last went on.
    on_since: Option<Instant>,
    /// Not on again before this.
    blocked_until: Option<Instant>,
    /// The next back-off.
    backoff: Option<Duration>,
}

/// One video layer as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCap {
    /// RTP stream id (`None` for a single, non-simulcast layer).
    pub rid: Option<String>,
    /// Bitrate cap, kbit/s.
    pub max_kbps: u32,
}

/// What to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Opus bitrate, kbit/s.
    pub audio_kbps: u32,
    /// Per layer (same order as the planner's layers, full size first): `Some(kbit/s)` when on.
    pub layers: Vec<Option<u32>>,
}

impl Plan {
    /// Whether any video layer is on.
    pub fn video_on(&self) -> bool {
        self.layers.iter().any(Option::is_some)
    }

    /// Which layers are on.
    pub fn active(&self) -> Vec<bool> {
        self.layers.iter().map(Option::is_some).collect()
    }
}

/// Turns estimates into plans for one link class and one set of layers.
#[derive(Debug, Clone)]
pub struct Planner {
    link: LinkClass,
    /// Full size first.
    layers: Vec<LayerCap>,
    last: Option<Plan>,
    switching: Vec<Switching>,
}

impl Planner {
    /// A planner for `layers` (full size first; one entry with `rid: None` for single-layer
    /// publishing) on `link`.
    pub fn new(link: LinkClass, layers: Vec<LayerCap>) -> Self {
        let switching = vec![Switching::default(); layers.len()];
        Planner {
            link,
            layers,
            last: None,
            switching,
        }
    }

    /// The layers, full size first.
    pub fn layers(&self) -> &[LayerCap] {
        &self.layers
    }

    /// The estimate (bits per second) to start congestion control at, and its floor and
    /// ceiling: start at the link's start rung plus audio; never below the lowest rung plus the
    /// least audio; never above every layer at its cap (with the switch-on margin, so the
    /// largest layer can come on) plus audio.
    pub fn estimator_bounds(&self) -> (f64, f64, f64) {
        let a = &self.link.audio;
        let lowest = self.link.video.ladder_kbps.first().copied().unwrap_or(100);
        let min = f64::from(
            lowest
                + a.min_bitrate_kbps
                    .unwrap_or(a.bitrate_kbps)
                    .min(a.bitrate_kbps),
        ) * 1000.0;
        let max_video: u32 = if self.layers.len() > 1 {
            self.layers.iter().map(|l| l.max_kbps).sum()
        } else {
            self.link
                .video
                .ladder_kbps
                .last()
                .copied()
                .unwrap_or(lowest)
        };
        let margin = if self.layers.len() > 1 {
            UP_MARGIN
        } else {
            1.0
        };
        let max = (f64::from(max_video) * margin + f64::from(a.bitrate_kbps)) * 1000.0;
        let start =
            (f64::from(self.link.video.start_kbps + a.bitrate_kbps) * 1000.0).clamp(min, max);
        (start, min, max)
    }

    /// The plan for an estimate of `estimate_bps` at `now`.
    pub fn plan(&mut self, now: Instant, estimate_bps: f64) -> Plan {
        let estimate_kbps = if estimate_bps.is_finite() && estimate_bps > 0.0 {
            (estimate_bps / 1000.0) as u32
        } else {
            0
        };
        let budget = self.link.split_budget(estimate_kbps);
        let rung = match budget.video {
            VideoBudget::Paused => None,
            VideoBudget::Rung(r) => Some(r),
        };
        let layers = match rung {
            None => vec![None; self.layers.len()],
            Some(rung) if self.layers.len() <= 1 => vec![Some(rung); self.layers.len()],
            Some(_) => self.simulcast(now, estimate_kbps.saturating_sub(budget.audio_kbps)),
        };
        let plan = Plan {
            audio_kbps: budget.audio_kbps,
            layers,
        };
        self.record(now, &plan);
        self.last = Some(plan.clone());
        plan
    }

    /// Notes which layers went on and off at `now` (back-offs for the ones that went off).
    fn record(&mut self, now: Instant, plan: &Plan) {
        let before = self.last.as_ref().map(Plan::active);
        for (i, on) in plan.active().into_iter().enumerate() {
            let was = before.as_ref().is_some_and(|b| b[i]);
            let sw = &mut self.switching[i];
            match (was, on) {
                (false, true) => {
                    sw.on_since = Some(now);
                    sw.allowed_since = None;
                }
                (true, false) => {
                    let proven = sw
                        .on_since
                        .is_some_and(|t| now.duration_since(t) >= STABLE_AFTER);
                    let backoff = match sw.backoff {
                        Some(b) if !proven => (b * 2).min(BACKOFF_MAX),
                        _ => BACKOFF_START,
                    };
                    sw.blocked_until = Some(now + backoff);
                    sw.backoff = Some(backoff);
                    sw.on_since = None;
                }
                _ => {}
            }
        }
    }

    /// Simulcast layers for `video_kbps`: smallest first, on while caps fit (and, for a layer
    /// that is off, the hold and back-off allow).
    fn simulcast(&mut self, now: Instant, video_kbps: u32) -> Vec<Option<u32>> {
        let n = self.layers.len();
        let first = self.last.is_none();
        let was: Vec<bool> = self
            .last
            .as_ref()
            .map(Plan::active)
            .unwrap_or_else(|| vec![false; n]);
        let lowest_rung = self.link.video.ladder_kbps.first().copied().unwrap_or(0);
        let mut out = vec![None; n];
        let mut used = 0u32;
        // Smallest layer is the last one.
        for i in (0..n).rev() {
            let cap = self.layers[i].max_kbps;
            let smallest = i == n - 1;
            if smallest {
                out[i] = Some(video_kbps.clamp(lowest_rung.min(cap), cap));
                used = out[i].unwrap_or(0);
                continue;
            }
            let on = was[i];
            let need = f64::from(used) + f64::from(cap) * if on { 1.0 } else { UP_MARGIN };
            let fits = f64::from(video_kbps) >= need;
            let sw = &mut self.switching[i];
            let go = if on || first {
                // The first plan starts with what the estimate allows.
                fits
            } else if fits {
                let since = *sw.allowed_since.get_or_insert(now);
                now.duration_since(since) >= UP_HOLD && sw.blocked_until.is_none_or(|t| now >= t)
            } else {
                sw.allowed_since = None;
                false
            };
            if go {
                out[i] = Some(cap);
                used += cap;
            } else {
                // Larger layers wait for this one; their hold starts over.
                for sw in &mut self.switching[..i] {
                    sw.allowed_since = None;
                }
                break;
            }
        }
        // The largest layer that is on takes what is left, up to its cap; the smaller ones keep
        // their caps.
        if let Some(top) = out.iter().position(Option::is_some) {
            if top != n - 1 {
                let others: u32 = out.iter().skip(top + 1).flatten().sum();
                let cap = self.layers[top].max_kbps;
                let lowest = cap / 2;
                out[top] = Some(video_kbps.saturating_sub(others).clamp(lowest, cap));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str) -> LinkClass {
        hw_profiles::shipped().unwrap().link(name).unwrap().clone()
    }

    fn wifi_layers() -> Vec<LayerCap> {
        [("high", 1800), ("mid", 600), ("low", 200)]
            .into_iter()
            .map(|(r, k)| LayerCap {
                rid: Some(r.to_owned()),
                max_kbps: k,
            })
            .collect()
    }

    #[test]
    fn wifi_simulcast_drops_layers_from_the_top_as_the_estimate_falls() {
        let t = Instant::now();
        let mut p = Planner::new(link("wifi"), wifi_layers());
        let (_, _, max) = p.estimator_bounds();
        let full = p.plan(t, max);
        assert_eq!(full.active(), [true, true, true]);
        assert_eq!(full.audio_kbps, 40);
        assert!(
            full.layers.iter().flatten().sum::<u32>() <= 2960,
            "{full:?}"
        );

        let two = p.plan(t, 1_000_000.0);
        assert_eq!(two.active(), [false, true, true], "{two:?}");

        // A 300 kbit/s uplink: only the smallest layer, within what is left after audio.
        let low = p.plan(t, 300_000.0);
        assert_eq!(low.active(), [false, false, true], "{low:?}");
        assert_eq!(low.layers[2], Some(200));
        assert_eq!(low.audio_kbps, 40);

        // Far below everything: the smallest layer stays on at its floor, audio gives way.
        let floor = p.plan(t, 50_000.0);
        assert_eq!(floor.active(), [false, false, true], "{floor:?}");
        assert!(floor.audio_kbps >= 24, "{floor:?}");
    }

    #[test]
    fn a_layer_comes_back_only_with_headroom_held_and_after_its_back_off() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Planner::new(link("wifi"), wifi_layers());
        assert_eq!(p.plan(at(0), 300_000.0).active(), [false, false, true]);
        // 200 + 600 × 1.15 = 890 kbit/s of video; 40 of audio on top.
        assert_eq!(p.plan(at(1), 920_000.0).active(), [false, false, true]);
        // Enough, but not yet for UP_HOLD.
        assert_eq!(p.plan(at(1), 1_000_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(2), 1_000_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(3), 1_000_000.0).active(), [false, true, true]);
        // Once on, it stays on down to its plain cap.
        assert_eq!(p.plan(at(4), 850_000.0).active(), [false, true, true]);
        // A failed probe: off again at once; blocked for BACKOFF_START.
        assert_eq!(p.plan(at(5), 500_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(10), 1_000_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(34), 1_000_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(35), 1_000_000.0).active(), [false, true, true]);
        // Failed again within STABLE_AFTER: the back-off doubles to 60 s.
        assert_eq!(p.plan(at(36), 500_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(60), 1_000_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(95), 1_000_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(96), 1_000_000.0).active(), [false, true, true]);
        // Held for STABLE_AFTER, then off: back to BACKOFF_START.
        assert_eq!(p.plan(at(126), 1_000_000.0).active(), [false, true, true]);
        assert_eq!(p.plan(at(127), 500_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(155), 1_000_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(156), 1_000_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(at(157), 1_000_000.0).active(), [false, true, true]);
    }

    #[test]
    fn audio_first_link_pauses_video_and_keeps_audio() {
        let l = link("4g-poor");
        let layers = vec![
            LayerCap {
                rid: Some("high".into()),
                max_kbps: 500,
            },
            LayerCap {
                rid: Some("low".into()),
                max_kbps: 150,
            },
        ];
        let mut p = Planner::new(l, layers);
        let t = Instant::now();
        let paused = p.plan(t, 60_000.0);
        assert!(!paused.video_on(), "{paused:?}");
        assert_eq!(paused.audio_kbps, 24);
        assert!(p.plan(t, 300_000.0).video_on());
    }

    #[test]
    fn single_layer_walks_the_ladder() {
        let mut p = Planner::new(
            link("wifi"),
            vec![LayerCap {
                rid: None,
                max_kbps: 2500,
            }],
        );
        let t = Instant::now();
        assert_eq!(p.plan(t, 3_000_000.0).layers, [Some(2500)]);
        assert_eq!(p.plan(t, 600_000.0).layers, [Some(500)]);
        assert_eq!(p.plan(t, 300_000.0).layers, [Some(250)]);
        let (start, min, max) = p.estimator_bounds();
        assert_eq!((start, min, max), (1_840_000.0, 274_000.0, 2_540_000.0));
    }
}
