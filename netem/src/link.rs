//! The sans-IO model of one link direction: [`Impairment`] (bottleneck queue, loss on the air,
//! delay and jitter, reordering), its counters ([`ImpairStats`]) and what it decides for each
//! datagram ([`Verdict`]). It owns no socket, reads no clock and spawns no task: `now` comes in
//! with every call. The tokio relay around it is [`crate::relay`].

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::config::ImpairConfig;

/// Hard cap on the bytes one [`Impairment`] holds (queued or in flight), whatever the
/// configuration: beyond it datagrams are tail-dropped and counted in
/// [`ImpairStats::dropped_queue`]. It bounds memory when there is no rate cap (a long delay times
/// a fast sender), and is far above anything a realistic configuration reaches.
pub const HELD_BYTES_LIMIT: usize = 16 << 20;

/// Counters of one [`Impairment`]. Every pushed datagram ends up in exactly one of `delivered`,
/// the three `dropped_*` counters, or [`Impairment::held`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImpairStats {
    /// Datagrams given to [`Impairment::push`].
    pub pushed: u64,
    /// Dropped by the independent loss ([`ImpairConfig::loss`]).
    pub dropped_random: u64,
    /// Dropped in the bad state of the burst chain ([`ImpairConfig::burst`]).
    pub dropped_burst: u64,
    /// Tail-dropped because the bottleneck queue ([`ImpairConfig::queue_limit`]) or the hard cap
    /// ([`HELD_BYTES_LIMIT`]) was full.
    pub dropped_queue: u64,
    /// Returned by [`Impairment::poll`].
    pub delivered: u64,
    /// Held back by [`ImpairConfig::reorder_gap`] (whether or not a later datagram overtook it).
    pub reordered: u64,
}

impl ImpairStats {
    /// All drops together.
    pub fn dropped(&self) -> u64 {
        self.dropped_random + self.dropped_burst + self.dropped_queue
    }
}

/// Why [`Impairment::push`] dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Independent loss.
    Random,
    /// Lost in a burst (bad state of the Gilbert–Elliott chain).
    Burst,
    /// Tail-dropped: bottleneck queue or [`HELD_BYTES_LIMIT`] full.
    Queue,
}

/// What [`Impairment::push`] decided for a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The datagram will be returned by [`Impairment::poll`] at or after `due`.
    Scheduled {
        /// When it becomes deliverable.
        due: Instant,
        /// Whether it was held back to be overtaken.
        reordered: bool,
    },
    /// The datagram was dropped.
    Dropped(DropReason),
}

/// SplitMix64: tiny, fast, and fixed forever, so a seed means the same losses in every version of
/// this code and of its dependencies.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `u < p`: true with probability `p` (clamped to 0..=1; NaN is 0).
fn chance(u: f64, p: f64) -> bool {
    u < p
}

/// A datagram waiting in the model.
#[derive(Debug)]
struct Held<T> {
    due: Instant,
    seq: u64,
    len: usize,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    /// Reversed, so the max-heap pops the earliest due first, ties in push order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The sans-IO impairment model of one link direction (see the [module docs](self) and
/// [`ImpairConfig`]).
///
/// `T` is the payload carried through, e.g. `(SocketAddr, Vec<u8>)`; the model only looks at the
/// length given with it. Deterministic: the same configuration (seed included) and the same calls
/// give the same results.
#[derive(Debug)]
pub struct Impairment<T> {
    config: ImpairConfig,
    rng: SplitMix64,
    in_burst: bool,
    /// When the bottleneck finishes serialising what it has accepted.
    busy_until: Option<Instant>,
    /// Due time of the last scheduled datagram not held back (jitter must not reorder).
    last_due: Option<Instant>,
    heap: BinaryHeap<Held<T>>,
    held_bytes: usize,
    seq: u64,
    stats: ImpairStats,
}

impl<T> Impairment<T> {
    /// A link direction with this configuration, empty.
    pub fn new(config: ImpairConfig) -> Self {
        Self {
            rng: SplitMix64(config.seed),
            config,
            in_burst: false,
            busy_until: None,
            last_due: None,
            heap: BinaryHeap::new(),
            held_bytes: 0,
            seq: 0,
            stats: ImpairStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ImpairConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> ImpairStats {
        self.stats
    }

    /// Datagrams and bytes currently held (queued, in flight, or due but not yet polled).
    pub fn held(&self) -> (usize, usize) {
        (self.heap.len(), self.held_bytes)
    }

    /// A datagram of `len` bytes arrives at `now`: drop it or schedule its delivery. `now` must
    /// not go backwards between calls (to this and to [`poll`](Self::poll)).
    pub fn push(&mut self, now: Instant, item: T, len: usize) -> Verdict {
        self.stats.pushed += 1;
        // Always the same draws, so configurations with the same seed share one random stream.
        let u_loss = self.rng.next_f64();
        let u_transition = self.rng.next_f64();
        let u_burst_loss = self.rng.next_f64();
        let u_jitter = self.rng.next_f64();
        let u_reorder = self.rng.next_f64();

        if self.held_bytes.saturating_add(len) > HELD_BYTES_LIMIT {
            tracing::trace!(
                len,
                held = self.held_bytes,
                "impair: hard cap reached, tail drop"
            );
            return self.drop_for(DropReason::Queue);
        }

        // 1. Bottleneck.
        let departure = match self.config.rate {
            None => now,
            Some(0) => return self.drop_for(DropReason::Queue),
            Some(rate) => {
                let start = self.busy_until.map_or(now, |b| b.max(now));
                let backlog = (start - now).as_nanos() * u128::from(rate) / 8_000_000_000;
                if backlog + len as u128 > self.config.queue_limit as u128 {
                    tracing::trace!(len, backlog, "impair: bottleneck queue full, tail drop");
                    return self.drop_for(DropReason::Queue);
                }
                let serialise = (len as u128 * 8_000_000_000).div_ceil(u128::from(rate));
                let end =
                    start + Duration::from_nanos(u64::try_from(serialise).unwrap_or(u64::MAX));
                self.busy_until = Some(end);
                end
            }
        };

        // 2. Air.
        if let Some(b) = self.config.burst {
            self.in_burst = if self.in_burst {
                !chance(u_transition, b.p_exit)
            } else {
                chance(u_transition, b.p_enter)
            };
            if self.in_burst && chance(u_burst_loss, b.loss_in_burst) {
                return self.drop_for(DropReason::Burst);
            }
        }
        if chance(u_loss, self.config.loss) {
            return self.drop_for(DropReason::Random);
        }

        // 3. Propagation; jitter never reorders.
        let jitter = self.config.jitter.as_nanos() as f64;
        let offset = (u_jitter * 2.0 - 1.0) * jitter;
        let delay_ns = (self.config.delay.as_nanos() as f64 + offset).max(0.0);
        let mut due = departure + Duration::from_nanos(delay_ns as u64);
        if let Some(last) = self.last_due {
            due = due.max(last);
        }
        self.last_due = Some(due);

        // 4. Reordering.
        let reordered = chance(u_reorder, self.config.reorder);
        if reordered {
            due += self.config.reorder_gap;
            self.stats.reordered += 1;
        }

        self.seq += 1;
        self.held_bytes += len;
        self.heap.push(Held {
            due,
            seq: self.seq,
            len,
            item,
        });
        Verdict::Scheduled { due, reordered }
    }

    fn drop_for(&mut self, reason: DropReason) -> Verdict {
        match reason {
            DropReason::Random => self.stats.dropped_random += 1,
            DropReason::Burst => self.stats.dropped_burst += 1,
            DropReason::Queue => self.stats.dropped_queue += 1,
        }
        Verdict::Dropped(reason)
    }

    /// The next datagram due at or before `now`, earliest due first (ties in push order), or
    /// `None`. Call until it returns `None`.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.due > now {
            return None;
        }
        let held = self.heap.pop()?;
        self.held_bytes -= held.len;
        self.stats.delivered += 1;
        Some(held.item)
    }

    /// When the next datagram becomes due (possibly already past), or `None` if nothing is held.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.due)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives `link` in virtual time: pushes `sends` (at, item, len) in order, polling at every
    /// deadline in between, then drains. Returns (delivery time, item) in delivery order.
    fn simulate<T>(
        link: &mut Impairment<T>,
        sends: impl IntoIterator<Item = (Instant, T, usize)>,
    ) -> Vec<(Instant, T)> {
        let mut out = Vec::new();
        let mut sends = sends.into_iter().peekable();
        loop {
            let next_send = sends.peek().map(|s| s.0);
            match (link.poll_timeout(), next_send) {
                (Some(due), Some(at)) if due <= at => {
                    while let Some(item) = link.poll(due) {
                        out.push((due, item));
                    }
                }
                (_, Some(_)) => {
                    let (at, item, len) = sends.next().unwrap();
                    link.push(at, item, len);
                }
                (Some(due), None) => {
                    while let Some(item) = link.poll(due) {
                        out.push((due, item));
                    }
                }
                (None, None) => return out,
            }
        }
    }

    /// `n` datagrams of `len` bytes every `every`, items are (index, send time).
    fn paced(
        t0: Instant,
        n: u64,
        every: Duration,
        len: usize,
    ) -> impl Iterator<Item = (Instant, (u64, Instant), usize)> {
        (0..n).map(move |i| {
            let at = t0 + every * i as u32;
            (at, (i, at), len)
        })
    }

    #[test]
    fn default_is_a_perfect_link() {
        let t0 = Instant::now();
        let mut link = Impairment::new(ImpairConfig::default());
        assert!(link.config().is_perfect());
        for i in 0..10 {
            assert_eq!(
                link.push(t0, i, 100),
                Verdict::Scheduled {
                    due: t0,
                    reordered: false
                }
            );
        }
        assert_eq!(link.poll_timeout(), Some(t0));
        let got: Vec<_> = std::iter::from_fn(|| link.poll(t0)).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(link.poll_timeout(), None);
        assert_eq!(link.held(), (0, 0));
        let s = link.stats();
        assert_eq!((s.pushed, s.delivered, s.dropped()), (10, 10, 0));
    }

    #[test]
    fn independent_loss_rate_within_tolerance() {
        let t0 = Instant::now();
        let mut link = Impairment::new(ImpairConfig::default().loss(0.05).seed(1));
        let out = simulate(&mut link, paced(t0, 100_000, MS, 100));
        let s = link.stats();
        assert_eq!(s.pushed, 100_000);
        assert_eq!(s.delivered as usize, out.len());
        assert_eq!(s.delivered + s.dropped_random, 100_000);
        assert_eq!((s.dropped_burst, s.dropped_queue), (0, 0));
        // 5% ± 0.4% (σ ≈ 0.07%).
        assert!((4_600..=5_400).contains(&s.dropped_random), "{s:?}");
    }

    #[test]
    fn burst_losses_cluster() {
        let t0 = Instant::now();
        let (p_enter, p_exit) = (0.01, 0.25);
        let mut link = Impairment::new(ImpairConfig::default().burst(p_enter, p_exit, 1.0).seed(3));
        let lost: Vec<bool> = (0..100_000u32)
            .map(|i| matches!(link.push(t0, i, 100), Verdict::Dropped(_)))
            .collect();
        let s = link.stats();
        assert_eq!(s.dropped_random, 0);
        assert_eq!(s.dropped_burst, lost.iter().filter(|&&l| l).count() as u64);
        // Runs of consecutive losses.
        let mut runs = Vec::new();
        let mut run = 0;
        for &l in &lost {
            if l {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        let mean = runs.iter().sum::<u32>() as f64 / runs.len() as f64;
        assert!(
            (mean - 1.0 / p_exit).abs() < 0.4,
            "mean burst length {mean}, expected {}",
            1.0 / p_exit
        );
        // Stationary loss fraction p_enter / (p_enter + p_exit) ≈ 3.85%.
        let rate = s.dropped_burst as f64 / 100_000.0;
        assert!(
            (rate - p_enter / (p_enter + p_exit)).abs() < 0.006,
            "loss rate {rate}"
        );
        // Clustered: a loss right after a loss is far likelier than a loss in general.
        let after_loss = lost.windows(2).filter(|w| w[0]).count() as f64;
        let loss_after_loss = lost.windows(2).filter(|w| w[0] && w[1]).count() as f64;
        assert!(loss_after_loss / after_loss > 10.0 * rate);
    }

    #[test]
    fn partial_loss_in_burst_and_independent_loss_add_up() {
        let t0 = Instant::now();
        let mut link = Impairment::new(
            ImpairConfig::default()
                .loss(0.02)
                .burst(0.02, 0.2, 0.5)
                .seed(9),
        );
        for i in 0..100_000u32 {
            link.push(t0, i, 10);
        }
        let s = link.stats();
        // Bad state ≈ 0.02/0.22 = 9.1% of datagrams, half of them lost: ≈ 4.5%.
        let burst = s.dropped_burst as f64 / 1e5;
        assert!(
            (burst - 0.02 / 0.22 * 0.5).abs() < 0.008,
            "burst loss {burst}"
        );
        // Independent loss applies to the rest: ≈ 2% of 95.5%.
        let random = s.dropped_random as f64 / 1e5;
        assert!(
            (random - 0.02 * (1.0 - burst)).abs() < 0.003,
            "random loss {random}"
        );
    }

    #[test]
    fn delay_and_jitter_stay_within_bounds() {
        let t0 = Instant::now();
        let (delay, jitter) = (50 * MS, 20 * MS);
        let latencies = |every: Duration| {
            let mut link =
                Impairment::new(ImpairConfig::default().delay(delay).jitter(jitter).seed(5));
            let out = simulate(&mut link, paced(t0, 10_000, every, 100));
            assert_eq!(out.len(), 10_000);
            out.iter()
                .map(|(at, (_, sent))| *at - *sent)
                .collect::<Vec<Duration>>()
        };
        // Sent further apart than the jitter range: uniform over the whole range, mean = delay.
        let sparse = latencies(100 * MS);
        let (min, max) = (*sparse.iter().min().unwrap(), *sparse.iter().max().unwrap());
        assert!(
            min >= delay - jitter && max <= delay + jitter,
            "min {min:?} max {max:?}"
        );
        assert!(
            min < delay - jitter + MS && max > delay + jitter - MS,
            "min {min:?} max {max:?}"
        );
        let mean = sparse.iter().sum::<Duration>() / sparse.len() as u32;
        assert!(mean.abs_diff(delay) < MS, "mean {mean:?}");
        // Sent 1 ms apart: keeping FIFO order pushes some up, but never beyond delay + jitter.
        let dense = latencies(MS);
        let (min, max) = (*dense.iter().min().unwrap(), *dense.iter().max().unwrap());
        assert!(
            min >= delay - jitter && max <= delay + jitter,
            "min {min:?} max {max:?}"
        );
    }

    #[test]
    fn jitter_without_reorder_keeps_fifo_order() {
        let t0 = Instant::now();
        let mut link = Impairment::new(
            ImpairConfig::default()
                .delay(30 * MS)
                .jitter(40 * MS)
                .seed(11),
        );
        let out = simulate(&mut link, paced(t0, 20_000, MS / 2, 100));
        assert_eq!(out.len(), 20_000);
        assert!(
            out.windows(2).all(|w| w[0].1 .0 < w[1].1 .0),
            "jitter reordered datagrams"
        );
        assert_eq!(link.stats().reordered, 0);
    }

    #[test]
    fn reorder_happens_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut link = Impairment::new(
            ImpairConfig::default()
                .delay(5 * MS)
                .reorder(0.01, 10 * MS)
                .seed(13),
        );
        let out = simulate(&mut link, paced(t0, 100_000, MS, 100));
        assert_eq!(out.len(), 100_000);
        let s = link.stats();
        assert!((850..=1_150).contains(&s.reordered), "{s:?}");
        // Each held-back datagram is overtaken (by the next ones, sent 1 ms apart < 10 ms gap).
        let mut max_seen = None;
        let mut late = 0u64;
        for (_, (i, _)) in &out {
            if max_seen.is_some_and(|m| *i < m) {
                late += 1;
            }
            max_seen = max_seen.max(Some(*i));
        }
        assert!(
            late.abs_diff(s.reordered) <= 2,
            "late {late}, reordered {}",
            s.reordered
        );
        // And held back by exactly the gap.
        for (at, (_, sent)) in &out {
            let latency = *at - *sent;
            assert!(latency == 5 * MS || latency == 15 * MS, "{latency:?}");
        }
    }

    #[test]
    fn rate_cap_delivers_the_configured_throughput() {
        let t0 = Instant::now();
        // 1 Mbit/s link, offered 2 Mbit/s (1000-byte datagrams every 4 ms) for 10 s.
        let mut link = Impairment::new(ImpairConfig::default().rate(1_000_000, 64 * 1024).seed(17));
        let out = simulate(&mut link, paced(t0, 2_500, 4 * MS, 1_000));
        let end = t0 + Duration::from_secs(10);
        let bytes: usize = out.iter().filter(|(at, _)| *at <= end).count() * 1_000;
        assert!(
            (1_240_000..=1_260_000).contains(&bytes),
            "delivered {bytes} bytes in 10 s"
        );
        let s = link.stats();
        assert!(s.dropped_queue > 1_000, "{s:?}");
        assert_eq!(s.delivered + s.dropped_queue, 2_500);
        // Queueing delay never exceeds a full queue plus one serialisation (524 ms + 8 ms).
        let max = out.iter().map(|(at, (_, sent))| *at - *sent).max().unwrap();
        assert!(max <= Duration::from_millis(533), "{max:?}");
        assert!(
            max >= Duration::from_millis(500),
            "queue never filled: {max:?}"
        );
    }

    #[test]
    fn rate_cap_below_capacity_only_adds_serialisation_delay() {
        let t0 = Instant::now();
        let mut link = Impairment::new(
            ImpairConfig::default()
                .rate(1_000_000, 64 * 1024)
                .delay(10 * MS),
        );
        let out = simulate(&mut link, paced(t0, 1_000, 10 * MS, 1_000));
        assert_eq!(out.len(), 1_000);
        assert!(out.iter().all(|(at, (_, sent))| *at - *sent == 18 * MS));
    }

    #[test]
    fn queue_limit_tail_drops() {
        let t0 = Instant::now();
        let mut link = Impairment::new(ImpairConfig::default().rate(1_000_000, 10_000));
        let verdicts: Vec<Verdict> = (0..100u32).map(|i| link.push(t0, i, 1_000)).collect();
        assert!(verdicts[..10]
            .iter()
            .all(|v| matches!(v, Verdict::Scheduled { .. })));
        assert!(verdicts[10..]
            .iter()
            .all(|v| *v == Verdict::Dropped(DropReason::Queue)));
        assert_eq!(link.held(), (10, 10_000));
        // Once the first has been serialised (8 ms), there is room for one more.
        assert_eq!(link.poll(t0 + 8 * MS), Some(0));
        assert!(matches!(
            link.push(t0 + 8 * MS, 100, 1_000),
            Verdict::Scheduled { .. }
        ));
        assert_eq!(
            link.push(t0 + 8 * MS, 101, 1_000),
            Verdict::Dropped(DropReason::Queue)
        );
    }

    #[test]
    fn held_bytes_are_capped_without_a_rate() {
        let t0 = Instant::now();
        let mut link = Impairment::new(ImpairConfig::default().delay(Duration::from_secs(1)));
        for i in 0..20_000u32 {
            link.push(t0, i, 1_000);
        }
        let (_, bytes) = link.held();
        assert!(bytes <= HELD_BYTES_LIMIT);
        assert_eq!(
            link.stats().dropped_queue,
            20_000 - (HELD_BYTES_LIMIT / 1_000) as u64
        );
    }

    #[test]
    fn zero_rate_lets_nothing_through_and_never_panics() {
        let t0 = Instant::now();
        let config = ImpairConfig {
            rate: Some(0),
            ..ImpairConfig::default()
        };
        assert!(config.validate().is_err());
        let mut link = Impairment::new(config);
        assert_eq!(link.push(t0, 1, 10), Verdict::Dropped(DropReason::Queue));
        // Out-of-range probabilities act as clamped.
        let mut link = Impairment::new(ImpairConfig::default().loss(2.0).reorder(f64::NAN, MS));
        assert_eq!(link.push(t0, 1, 10), Verdict::Dropped(DropReason::Random));
    }

    pub(crate) fn everything(seed: u64) -> ImpairConfig {
        ImpairConfig::default()
            .loss(0.03)
            .burst(0.01, 0.3, 0.8)
            .delay(40 * MS)
            .jitter(15 * MS)
            .reorder(0.02, 7 * MS)
            .rate(2_000_000, 32 * 1024)
            .seed(seed)
    }

    #[test]
    fn same_seed_same_inputs_same_outputs() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut link = Impairment::new(everything(seed));
            let sends = (0..20_000u64)
                .map(|i| (t0 + MS * (i as u32 / 3), i, 200 + (i as usize * 37) % 1_000));
            let out = simulate(&mut link, sends);
            (out, link.stats())
        };
        let (a, sa) = run(42);
        let (b, sb) = run(42);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert!(
            sa.dropped_random > 0
                && sa.dropped_burst > 0
                && sa.dropped_queue > 0
                && sa.reordered > 0,
            "{sa:?}"
        );
        let (c, _) = run(43);
        assert_ne!(a, c);
    }

    #[test]
    fn same_seed_gives_the_same_losses_whatever_the_delay() {
        let t0 = Instant::now();
        let lost = |config: ImpairConfig| {
            let mut link = Impairment::new(config);
            (0..1_000u32)
                .filter(|&i| matches!(link.push(t0, i, 10), Verdict::Dropped(_)))
                .collect::<Vec<_>>()
        };
        let base = ImpairConfig::default().loss(0.1).seed(7);
        assert_eq!(
            lost(base.clone()),
            lost(base.delay(50 * MS).jitter(10 * MS).reorder(0.05, MS))
        );
    }
}
