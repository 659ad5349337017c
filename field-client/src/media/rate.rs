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
//!   its own cap with 15 % to spare, so a noisy estimate at a boundary does not flap it.

use hw_profiles::{LinkClass, VideoBudget};

/// Headroom a layer needs above its cap before it is switched on (1.15 = 15 %).
const UP_MARGIN: f64 = 1.15;

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
}

impl Planner {
    /// A planner for `layers` (full size first; one entry with `rid: None` for single-layer
    /// publishing) on `link`.
    pub fn new(link: LinkClass, layers: Vec<LayerCap>) -> Self {
        Planner { link, layers, last: None }
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
        let min = f64::from(lowest + a.min_bitrate_kbps.unwrap_or(a.bitrate_kbps).min(a.bitrate_kbps)) * 1000.0;
        let max_video: u32 = if self.layers.len() > 1 {
            self.layers.iter().map(|l| l.max_kbps).sum()
        } else {
            self.link.video.ladder_kbps.last().copied().unwrap_or(lowest)
        };
        let margin = if self.layers.len() > 1 { UP_MARGIN } else { 1.0 };
        let max = (f64::from(max_video) * margin + f64::from(a.bitrate_kbps)) * 1000.0;
        let start = (f64::from(self.link.video.start_kbps + a.bitrate_kbps) * 1000.0).clamp(min, max);
        (start, min, max)
    }

    /// The plan for an estimate of `estimate_bps`.
    pub fn plan(&mut self, estimate_bps: f64) -> Plan {
        let estimate_kbps = if estimate_bps.is_finite() && estimate_bps > 0.0 { (estimate_bps / 1000.0) as u32 } else { 0 };
        let budget = self.link.split_budget(estimate_kbps);
        let rung = match budget.video {
            VideoBudget::Paused => None,
            VideoBudget::Rung(r) => Some(r),
        };
        let layers = match rung {
            None => vec![None; self.layers.len()],
            Some(rung) if self.layers.len() <= 1 => vec![Some(rung); self.layers.len()],
            Some(_) => self.simulcast(estimate_kbps.saturating_sub(budget.audio_kbps)),
        };
        let plan = Plan { audio_kbps: budget.audio_kbps, layers };
        self.last = Some(plan.clone());
        plan
    }

    /// Simulcast layers for `video_kbps`: smallest first, on while caps fit.
    fn simulcast(&self, video_kbps: u32) -> Vec<Option<u32>> {
        let n = self.layers.len();
        let was_on = |i: usize| self.last.as_ref().is_some_and(|p| p.layers.get(i).is_some_and(Option::is_some));
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
            let need = f64::from(used) + f64::from(cap) * if was_on(i) { 1.0 } else { UP_MARGIN };
            if f64::from(video_kbps) >= need {
                out[i] = Some(cap);
                used += cap;
            } else {
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
            .map(|(r, k)| LayerCap { rid: Some(r.to_owned()), max_kbps: k })
            .collect()
    }

    #[test]
    fn wifi_simulcast_drops_layers_from_the_top_as_the_estimate_falls() {
        let mut p = Planner::new(link("wifi"), wifi_layers());
        let (_, _, max) = p.estimator_bounds();
        let full = p.plan(max);
        assert_eq!(full.active(), [true, true, true]);
        assert_eq!(full.audio_kbps, 40);
        assert!(full.layers.iter().flatten().sum::<u32>() <= 2960, "{full:?}");

        let two = p.plan(1_000_000.0);
        assert_eq!(two.active(), [false, true, true], "{two:?}");

        // A 300 kbit/s uplink: only the smallest layer, within what is left after audio.
        let low = p.plan(300_000.0);
        assert_eq!(low.active(), [false, false, true], "{low:?}");
        assert_eq!(low.layers[2], Some(200));
        assert_eq!(low.audio_kbps, 40);

        // Far below everything: the smallest layer stays on at its floor, audio gives way.
        let floor = p.plan(50_000.0);
        assert_eq!(floor.active(), [false, false, true], "{floor:?}");
        assert!(floor.audio_kbps >= 24, "{floor:?}");
    }

    #[test]
    fn a_layer_comes_back_only_with_headroom() {
        let mut p = Planner::new(link("wifi"), wifi_layers());
        p.plan(300_000.0);
        // 200 + 600 × 1.15 = 890 kbit/s of video; 40 of audio on top.
        assert_eq!(p.plan(920_000.0).active(), [false, false, true]);
        assert_eq!(p.plan(1_000_000.0).active(), [false, true, true]);
        // Once on, it stays on down to its plain cap.
        assert_eq!(p.plan(850_000.0).active(), [false, true, true]);
    }

    #[test]
    fn audio_first_link_pauses_video_and_keeps_audio() {
        let l = link("4g-poor");
        let layers = vec![
            LayerCap { rid: Some("high".into()), max_kbps: 500 },
            LayerCap { rid: Some("low".into()), max_kbps: 150 },
        ];
        let mut p = Planner::new(l, layers);
        let paused = p.plan(60_000.0);
        assert!(!paused.video_on(), "{paused:?}");
        assert_eq!(paused.audio_kbps, 24);
        assert!(p.plan(300_000.0).video_on());
    }

    #[test]
    fn single_layer_walks_the_ladder() {
        let mut p = Planner::new(link("wifi"), vec![LayerCap { rid: None, max_kbps: 2500 }]);
        assert_eq!(p.plan(3_000_000.0).layers, [Some(2500)]);
        assert_eq!(p.plan(600_000.0).layers, [Some(500)]);
        assert_eq!(p.plan(300_000.0).layers, [Some(250)]);
        let (start, min, max) = p.estimator_bounds();
        assert_eq!((start, min, max), (1_840_000.0, 274_000.0, 2_540_000.0));
    }
}
