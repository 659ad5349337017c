//! Simulcast on the engine's side: a publisher's RID layers numbered as they arrive and frames
//! completed late kept out ([`PublisherLayers`]), and each viewer's video timestamps rewritten
//! so they run on across layer switches ([`TimestampMap`]).
//!
//! Which layer a viewer gets and when it switches (on a keyframe of the new layer) is the
//! forwarding core's decision ([`crate::forward`]); this module only carries it out. No str0m
//! session, no I/O: values in, values out.

use std::time::Instant;

use str0m::media::{MediaTime, Rid};

use crate::forward::Layer;

/// Most simulcast layers accepted from one publisher (browsers send at most three).
pub(crate) const MAX_LAYERS: usize = 4;

/// A publisher's video layers as they arrive: each RID gets the next [`Layer`] on its first
/// frame (so ids follow arrival, not size: the forwarding core ranks them), and each layer
/// remembers the media time of the last frame forwarded from it.
#[derive(Debug, Default)]
pub(crate) struct PublisherLayers {
    /// The RID of each layer, indexed by [`Layer`] (`None` without simulcast).
    rids: Vec<Option<Rid>>,
    /// The media time of the last video frame forwarded from each layer.
    last_time: [Option<u64>; MAX_LAYERS],
}

impl PublisherLayers {
    /// The layer of a frame sent with `rid`; a new RID takes the next layer, unless
    /// [`MAX_LAYERS`] are taken already (`None`: the frame is not forwarded).
    pub(crate) fn layer_of(&mut self, rid: Option<Rid>) -> Option<Layer> {
        match self.rids.iter().position(|r| *r == rid) {
            Some(i) => Some(Layer(i as u8)),
            None if self.rids.len() < MAX_LAYERS => {
                self.rids.push(rid);
                Some(Layer((self.rids.len() - 1) as u8))
            }
            None => None,
        }
    }

    /// The RID of `layer`, to ask for its keyframe (`None` without simulcast).
    pub(crate) fn rid(&self, layer: Layer) -> Option<Rid> {
        self.rids.get(usize::from(layer.0)).copied().flatten()
    }

    /// How many layers have sent video so far.
    pub(crate) fn count(&self) -> usize {
        self.rids.len()
    }

    /// Whether a frame of `layer` stamped `time` comes after one already forwarded from it (a
    /// frame completed late by a retransmission). If not, `time` is the layer's latest.
    pub(crate) fn is_late(&mut self, layer: Layer, time: u64) -> bool {
        let last = &mut self.last_time[usize::from(layer.0)];
        if last.is_some_and(|l| time <= l) {
            return true;
        }
        *last = Some(time);
        false
    }
}

/// Rewrites a viewer's video timestamps so they run on across layer switches: each layer of a
/// simulcast publisher has its own RTP timestamp base, and a decoder must not see a jump.
/// Sequence numbers need no such care: str0m packetizes each viewer's stream itself.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TimestampMap {
    /// (layer, offset added to its timestamps, last timestamp sent, when it was sent).
    state: Option<(Layer, u64, u64, Instant)>,
}

impl TimestampMap {
    /// The timestamp to send for a frame of `layer` stamped `time`, received at `wall`.
    pub(crate) fn map(&mut self, layer: Layer, time: MediaTime, wall: Instant) -> MediaTime {
        let input = time.numer();
        let offset = match self.state {
            Some((l, offset, _, _)) if l == layer => offset,
            Some((_, _, last, last_wall)) => {
                // A switch: continue from the last timestamp sent, advanced by the wall-clock
                // time since (at least one tick, so timestamps never repeat).
                let elapsed = wall.saturating_duration_since(last_wall);
                let ticks =
                    (elapsed.as_micros() as u64 * u64::from(time.denom()) / 1_000_000).max(1);
                last.wrapping_add(ticks).wrapping_sub(input)
            }
            None => 0,
        };
        let out = input.wrapping_add(offset);
        self.state = Some((layer, offset, out, wall));
        MediaTime::new(out, time.frequency())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use str0m::media::Frequency;

    use super::*;

    fn t90(n: u64) -> MediaTime {
        MediaTime::new(n, Frequency::NINETY_KHZ)
    }

    #[test]
    fn rids_get_layers_in_order_of_arrival_up_to_the_limit() {
        let mut l = PublisherLayers::default();
        let (f, h, q) = (
            Some(Rid::from("f")),
            Some(Rid::from("h")),
            Some(Rid::from("q")),
        );
        assert_eq!(l.layer_of(h), Some(Layer(0)));
        assert_eq!(l.layer_of(f), Some(Layer(1)));
        assert_eq!(l.layer_of(h), Some(Layer(0)));
        assert_eq!(l.layer_of(q), Some(Layer(2)));
        assert_eq!(l.layer_of(Some(Rid::from("x"))), Some(Layer(3)));
        assert_eq!(
            l.layer_of(Some(Rid::from("y"))),
            None,
            "a fifth layer is refused"
        );
        assert_eq!((l.count(), l.rid(Layer(1)), l.rid(Layer(7))), (4, f, None));
    }

    #[test]
    fn a_frame_not_newer_than_the_last_of_its_layer_is_late() {
        let mut l = PublisherLayers::default();
        assert!(!l.is_late(Layer(0), 3000));
        assert!(!l.is_late(Layer(1), 100), "each layer has its own clock");
        assert!(l.is_late(Layer(0), 3000));
        assert!(l.is_late(Layer(0), 2999));
        assert!(!l.is_late(Layer(0), 6000));
    }

    #[test]
    fn timestamps_run_on_across_a_layer_switch() {
        let start = Instant::now();
        let mut m = TimestampMap::default();
        // Layer 0 passes through unchanged until a switch.
        assert_eq!(m.map(Layer(0), t90(1_000), start).numer(), 1_000);
        let at = start + Duration::from_millis(33);
        assert_eq!(m.map(Layer(0), t90(4_000), at).numer(), 4_000);
        // Layer 1 has another base: it continues from 4000 plus the 33 ms since, in 90 kHz.
        let later = at + Duration::from_millis(33);
        assert_eq!(m.map(Layer(1), t90(900_000), later).numer(), 4_000 + 2_970);
        // And keeps its offset while it stays.
        let next = later + Duration::from_millis(33);
        assert_eq!(
            m.map(Layer(1), t90(903_000), next).numer(),
            4_000 + 2_970 + 3_000
        );
        // A switch with no time passed still moves on by one tick.
        assert_eq!(
            m.map(Layer(0), t90(7_000), next).numer(),
            4_000 + 2_970 + 3_001
        );
    }
}
