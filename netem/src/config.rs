//! What one direction of an impaired link does: [`ImpairConfig`] (with [`BurstLoss`]), its
//! defaults, setters and [`ImpairConfig::validate`]. The spec-string syntax is in
//! [`crate::spec`], the model that applies it in [`crate::link`]. Plain data: no clock, no I/O.

use std::time::Duration;

use crate::spec::{SpecError, PROBABILITY, RATE};
#[cfg(doc)]
use crate::Impairment;

/// Gilbert–Elliott burst loss: a two-state (good/bad) Markov chain advanced once per datagram
/// that reaches the link.
///
/// Before each datagram the chain moves: good → bad with probability `p_enter`, bad → good with
/// probability `p_exit`. A datagram that finds the chain in the bad state is lost with
/// probability `loss_in_burst`. The bad state lasts `1 / p_exit` datagrams on average (so with
/// `loss_in_burst = 1` losses come in runs of mean length `1 / p_exit`), and the chain spends a
/// fraction `p_enter / (p_enter + p_exit)` of datagrams in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstLoss {
    /// Probability, per datagram, of going from the good to the bad state (0..=1).
    pub p_enter: f64,
    /// Probability, per datagram, of going from the bad back to the good state (0..=1).
    pub p_exit: f64,
    /// Probability that a datagram sent in the bad state is lost (0..=1; usually 1 or close).
    pub loss_in_burst: f64,
}

/// Configuration of one direction of an impaired link. [`Default`] is a perfect link: no loss,
/// no delay, no rate cap.
///
/// The model, in the order a datagram meets it:
/// 1. **Bottleneck** (only with [`rate`](Self::rate)): a FIFO queue drained at `rate` bits/s.
///    If the bytes still waiting to be serialised plus this datagram exceed
///    [`queue_limit`](Self::queue_limit), the datagram is tail-dropped. Otherwise it leaves the
///    bottleneck when its last bit has been serialised.
/// 2. **Air**: the burst chain ([`burst`](Self::burst)) and the independent loss
///    ([`loss`](Self::loss)) may drop it. Losses happen after the bottleneck, so lost datagrams
///    still used link capacity, as on a radio link.
/// 3. **Propagation**: it arrives `delay + U(-jitter, +jitter)` later (uniform, clamped at 0).
///    Jitter never reorders: a datagram is never due before the one pushed before it.
/// 4. **Reordering**: with probability [`reorder`](Self::reorder) it is held back an extra
///    [`reorder_gap`](Self::reorder_gap), so datagrams pushed within that gap after it overtake it.
///
/// Every [`Impairment::push`] draws the same number of random numbers whatever the configuration,
/// so two configurations with the same seed see the same random stream: adding `delay=50ms` to
/// `loss=5%,seed=7` loses exactly the same datagrams.
///
/// # Spec strings
///
/// `FromStr` and `Display` use a compact comma-separated `key=value` syntax; `Display` output
/// parses back to an equal configuration. Keys (each at most once, any order):
///
/// | key       | value                                     | example            |
/// |-----------|-------------------------------------------|--------------------|
/// | `loss`    | probability                               | `loss=5%`          |
/// | `burst`   | `P_ENTER/P_EXIT[/LOSS_IN_BURST]` (default loss in burst 100%), or `off` | `burst=1%/30%/80%` |
/// | `delay`   | duration                                  | `delay=50ms`       |
/// | `jitter`  | duration (uniform ±)                      | `jitter=20ms`      |
/// | `reorder` | `PROBABILITY[/GAP]` (default gap 10ms)    | `reorder=1%/10ms`  |
/// | `rate`    | bits per second: `bit`, `kbit`, `mbit`, `gbit` (powers of 1000), or `off` | `rate=300kbit` |
/// | `queue`   | bytes: plain, `k`/`kib`, `m`/`mib` (powers of 1024) | `queue=64k` |
/// | `seed`    | unsigned 64-bit integer                   | `seed=7`           |
///
/// A probability is a fraction (`0.05`) or a percentage (`5%`), within 0..=1. A duration is a
/// number (decimals allowed) with a unit `ns`, `us`, `ms` or `s`; `0` needs none. The empty
/// string, `none` and `perfect` mean the default (perfect) link.
#[derive(Debug, Clone, PartialEq)]
pub struct ImpairConfig {
    /// Independent (Bernoulli) loss probability per datagram, 0..=1. Default 0.
    pub loss: f64,
    /// Gilbert–Elliott burst loss on top of [`loss`](Self::loss). Default none.
    pub burst: Option<BurstLoss>,
    /// Fixed one-way propagation delay. Default 0.
    pub delay: Duration,
    /// Jitter amplitude: each datagram's delay is `delay + U(-jitter, +jitter)`, clamped at 0,
    /// and never earlier than the previous datagram's. Default 0.
    pub jitter: Duration,
    /// Probability, 0..=1, that a datagram is held back by [`reorder_gap`](Self::reorder_gap)
    /// so later ones overtake it. Default 0.
    pub reorder: f64,
    /// Extra delay of a held-back datagram. Default 10 ms.
    pub reorder_gap: Duration,
    /// Bottleneck rate in bits per second (serialisation delay, queueing). Default none
    /// (unlimited). `Some(0)` lets nothing through.
    pub rate: Option<u64>,
    /// Bottleneck queue size in bytes; a datagram that would take the backlog above it is
    /// tail-dropped. Only used with [`rate`](Self::rate); must be at least the largest datagram.
    /// Default 64 KiB.
    pub queue_limit: usize,
    /// Seed of the random stream. Default 0.
    pub seed: u64,
}

impl Default for ImpairConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_gap: DEFAULT_REORDER_GAP,
            rate: None,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            seed: 0,
        }
    }
}

pub(crate) const DEFAULT_REORDER_GAP: Duration = Duration::from_millis(10);
const DEFAULT_QUEUE_LIMIT: usize = 64 * 1024;

impl ImpairConfig {
    /// A perfect link (same as [`Default`]).
    pub fn perfect() -> Self {
        Self::default()
    }

    /// Sets the independent loss probability (0..=1).
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }

    /// Sets Gilbert–Elliott burst loss (see [`BurstLoss`]).
    pub fn burst(mut self, p_enter: f64, p_exit: f64, loss_in_burst: f64) -> Self {
        self.burst = Some(BurstLoss {
            p_enter,
            p_exit,
            loss_in_burst,
        });
        self
    }

    /// Sets the fixed propagation delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the jitter amplitude (uniform ±`jitter` around the delay, never reordering).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the reordering probability (0..=1) and the extra delay of held-back datagrams.
    pub fn reorder(mut self, p: f64, gap: Duration) -> Self {
        self.reorder = p;
        self.reorder_gap = gap;
        self
    }

    /// Caps the link at `bits_per_second`, with a bottleneck queue of `queue_limit` bytes.
    pub fn rate(mut self, bits_per_second: u64, queue_limit: usize) -> Self {
        self.rate = Some(bits_per_second);
        self.queue_limit = queue_limit;
        self
    }

    /// Sets the seed of the random stream.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether this is a perfect link (nothing lost, delayed or capped).
    pub fn is_perfect(&self) -> bool {
        self.loss <= 0.0
            && self
                .burst
                .is_none_or(|b| b.p_enter <= 0.0 || b.loss_in_burst <= 0.0)
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.reorder <= 0.0
            && self.rate.is_none()
    }

    /// Checks that every probability is within 0..=1 (the parser already guarantees it; use this
    /// on configurations built with setters). [`Impairment`] never panics on an invalid
    /// configuration: a probability above 1 acts as 1, below 0 or NaN as 0.
    pub fn validate(&self) -> Result<(), SpecError> {
        let check = |key: &'static str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(SpecError::BadValue {
                    key,
                    value: p.to_string(),
                    expected: PROBABILITY,
                })
            }
        };
        check("loss", self.loss)?;
        check("reorder", self.reorder)?;
        if let Some(b) = self.burst {
            check("burst", b.p_enter)?;
            check("burst", b.p_exit)?;
            check("burst", b.loss_in_burst)?;
        }
        if self.rate == Some(0) {
            return Err(SpecError::BadValue {
                key: "rate",
                value: "0".into(),
                expected: RATE,
            });
        }
        Ok(())
    }
}
