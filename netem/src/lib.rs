//! Link impairment: what a bad field link does to datagrams (loss, bursts, delay, jitter,
//! reordering, a rate cap with a bounded queue), because `tc netem` is not available on our
//! kernels.
//!
//! Two layers, in the project's core/shell shape:
//! - [`Impairment`] is the sans-IO core: a seeded, deterministic model of one direction of a link.
//!   It owns no socket, reads no clock and spawns no task; `now` comes in with every call, so it
//!   runs in virtual time in tests and simulations. Call order: [`Impairment::push`] each
//!   datagram as it arrives, then drain [`Impairment::poll`] until it returns `None`, then sleep
//!   until [`Impairment::poll_timeout`].
//! - [`UdpRelay`] is the tokio shell: a UDP relay between clients and one upstream address that
//!   runs one [`Impairment`] per direction. The `yiwang-relay` binary is a CLI around it.
//!
//! Configuration is an [`ImpairConfig`], built with setters or parsed from a compact spec string
//! (see [`ImpairConfig`]'s `FromStr`), e.g. `loss=5%,delay=50ms,jitter=20ms,rate=300kbit,seed=7`.
//!
//! This crate is a test and lab tool: nothing in the media plane (the SFU, the forwarding core,
//! the node's media task) may depend on it, and it must not depend on them.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use netem::{ImpairConfig, Impairment};
//!
//! let config: ImpairConfig = "loss=10%,delay=20ms,seed=7".parse().unwrap();
//! let mut link = Impairment::new(config);
//! let t0 = Instant::now();
//! for i in 0..100u32 {
//!     link.push(t0, i, 1200);
//! }
//! let mut delivered = 0;
//! while let Some(at) = link.poll_timeout() {
//!     while link.poll(at).is_some() {
//!         delivered += 1;
//!     }
//! }
//! assert_eq!(delivered, link.stats().delivered);
//! assert!(delivered > 80 && delivered < 100);
//! ```

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{self, AtomicBool};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

/// Hard cap on the bytes one [`Impairment`] holds (queued or in flight), whatever the
/// configuration: beyond it datagrams are tail-dropped and counted in
/// [`ImpairStats::dropped_queue`]. It bounds memory when there is no rate cap (a long delay times
/// a fast sender), and is far above anything a realistic configuration reaches.
pub const HELD_BYTES_LIMIT: usize = 16 << 20;

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

const DEFAULT_REORDER_GAP: Duration = Duration::from_millis(10);
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

/// Why a spec string, or a configuration, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// An item of the comma-separated list is not `key=value`.
    #[error("impairment spec item {item:?} is not key=value (e.g. loss=5%)")]
    NotKeyValue {
        /// The offending item.
        item: String,
    },
    /// The key is not one of the known ones.
    #[error("unknown impairment key {key:?}; known keys: loss, burst, delay, jitter, reorder, rate, queue, seed")]
    UnknownKey {
        /// The offending key.
        key: String,
    },
    /// The same key appears twice.
    #[error("impairment key {key:?} given more than once")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// The value does not parse or is out of range for its key.
    #[error("bad value {value:?} for {key}: expected {expected}")]
    BadValue {
        /// The key whose value is wrong.
        key: &'static str,
        /// The offending value.
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
}

const PROBABILITY: &str = "a probability: a fraction in 0..=1 (0.05) or a percentage (5%)";
const DURATION: &str = "a duration: a number with a unit ns, us, ms or s (50ms, 1.5s), or 0";
const RATE: &str = "a rate above 0: a number with a unit bit, kbit, mbit or gbit (300kbit), or off";
const BYTES: &str = "a size in bytes: a number, optionally with k/kib or m/mib (64k)";
const BURST: &str = "P_ENTER/P_EXIT[/LOSS_IN_BURST], probabilities (1%/30%/80%), or off";
const REORDER: &str = "PROBABILITY[/GAP] (1%/10ms)";
const SEED: &str = "an unsigned 64-bit integer";

impl FromStr for ImpairConfig {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut config = ImpairConfig::default();
        let spec = spec.trim();
        if spec.is_empty()
            || spec.eq_ignore_ascii_case("none")
            || spec.eq_ignore_ascii_case("perfect")
        {
            return Ok(config);
        }
        let mut seen: Vec<&'static str> = Vec::new();
        for item in spec.split(',') {
            let item = item.trim();
            let Some((key, value)) = item.split_once('=') else {
                return Err(SpecError::NotKeyValue {
                    item: item.to_owned(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |k: &'static str, expected: &'static str| SpecError::BadValue {
                key: k,
                value: value.to_owned(),
                expected,
            };
            let key: &'static str = match key.to_ascii_lowercase().as_str() {
                "loss" => {
                    config.loss =
                        parse_probability(value).ok_or_else(|| bad("loss", PROBABILITY))?;
                    "loss"
                }
                "burst" => {
                    config.burst = if is_off(value) {
                        None
                    } else {
                        Some(parse_burst(value).ok_or_else(|| bad("burst", BURST))?)
                    };
                    "burst"
                }
                "delay" => {
                    config.delay = parse_duration(value).ok_or_else(|| bad("delay", DURATION))?;
                    "delay"
                }
                "jitter" => {
                    config.jitter = parse_duration(value).ok_or_else(|| bad("jitter", DURATION))?;
                    "jitter"
                }
                "reorder" => {
                    let (p, gap) = match value.split_once('/') {
                        Some((p, gap)) => (p, Some(gap)),
                        None => (value, None),
                    };
                    config.reorder = parse_probability(p).ok_or_else(|| bad("reorder", REORDER))?;
                    if let Some(gap) = gap {
                        config.reorder_gap =
                            parse_duration(gap).ok_or_else(|| bad("reorder", REORDER))?;
                    }
                    "reorder"
                }
                "rate" => {
                    config.rate = if is_off(value) {
                        None
                    } else {
                        Some(
                            parse_rate(value)
                                .filter(|&r| r > 0)
                                .ok_or_else(|| bad("rate", RATE))?,
                        )
                    };
                    "rate"
                }
                "queue" => {
                    config.queue_limit = parse_bytes(value).ok_or_else(|| bad("queue", BYTES))?;
                    "queue"
                }
                "seed" => {
                    config.seed = value.parse().map_err(|_| bad("seed", SEED))?;
                    "seed"
                }
                _ => {
                    return Err(SpecError::UnknownKey {
                        key: key.to_owned(),
                    })
                }
            };
            if seen.contains(&key) {
                return Err(SpecError::DuplicateKey {
                    key: key.to_owned(),
                });
            }
            seen.push(key);
        }
        Ok(config)
    }
}

impl fmt::Display for ImpairConfig {
    /// Writes the spec string (only the keys that differ from the default; `none` for a perfect
    /// default link). It parses back to an equal configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = ImpairConfig::default();
        let mut items: Vec<String> = Vec::new();
        if self.loss != d.loss {
            items.push(format!("loss={}", self.loss));
        }
        if let Some(b) = self.burst {
            items.push(format!(
                "burst={}/{}/{}",
                b.p_enter, b.p_exit, b.loss_in_burst
            ));
        }
        if self.delay != d.delay {
            items.push(format!("delay={}", DisplayDuration(self.delay)));
        }
        if self.jitter != d.jitter {
            items.push(format!("jitter={}", DisplayDuration(self.jitter)));
        }
        if self.reorder != d.reorder || self.reorder_gap != d.reorder_gap {
            items.push(format!(
                "reorder={}/{}",
                self.reorder,
                DisplayDuration(self.reorder_gap)
            ));
        }
        if let Some(rate) = self.rate {
            items.push(format!("rate={}", DisplayRate(rate)));
        }
        if self.queue_limit != d.queue_limit {
            items.push(format!("queue={}", DisplayBytes(self.queue_limit)));
        }
        if self.seed != d.seed {
            items.push(format!("seed={}", self.seed));
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

fn is_off(value: &str) -> bool {
    value.eq_ignore_ascii_case("off") || value.eq_ignore_ascii_case("none")
}

fn parse_probability(value: &str) -> Option<f64> {
    let p = match value.strip_suffix('%') {
        Some(pct) => parse_plain_f64(pct.trim())? / 100.0,
        None => parse_plain_f64(value)?,
    };
    (0.0..=1.0).contains(&p).then_some(p)
}

/// `f64::from_str`, minus `inf`, `nan` and friends.
fn parse_plain_f64(value: &str) -> Option<f64> {
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
    {
        return None;
    }
    value.parse::<f64>().ok().filter(|p| p.is_finite())
}

fn parse_burst(value: &str) -> Option<BurstLoss> {
    let parts: Vec<&str> = value.split('/').map(str::trim).collect();
    let (p_enter, p_exit, loss_in_burst) = match parts.as_slice() {
        [a, b] => (*a, *b, "1"),
        [a, b, c] => (*a, *b, *c),
        _ => return None,
    };
    Some(BurstLoss {
        p_enter: parse_probability(p_enter)?,
        p_exit: parse_probability(p_exit)?,
        loss_in_burst: parse_probability(loss_in_burst)?,
    })
}

/// Splits `"1.5ms"` into `("1.5", "ms")`.
fn split_unit(value: &str) -> (&str, &str) {
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    (value[..end].trim(), value[end..].trim())
}

/// Parses a non-negative decimal number (`"12"`, `"1.5"`, `".5"`) times `scale`, exactly in
/// integers (digits beyond the scale's precision are truncated).
fn parse_scaled(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(scale)?;
    let mut place = scale;
    for digit in frac.bytes() {
        place /= 10;
        if place == 0 {
            break;
        }
        value = value.checked_add(u128::from(digit - b'0') * place)?;
    }
    Some(value)
}

fn parse_duration(value: &str) -> Option<Duration> {
    let (number, unit) = split_unit(value);
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "" if parse_scaled(number, 1) == Some(0) => 1,
        _ => return None,
    };
    let nanos = u64::try_from(parse_scaled(number, scale)?).ok()?;
    Some(Duration::from_nanos(nanos))
}

fn parse_rate(value: &str) -> Option<u64> {
    let (number, unit) = split_unit(value);
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        _ => return None,
    };
    u64::try_from(parse_scaled(number, scale)?).ok()
}

fn parse_bytes(value: &str) -> Option<usize> {
    let (number, unit) = split_unit(value);
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        _ => return None,
    };
    usize::try_from(parse_scaled(number, scale)?).ok()
}

/// `d` divides `n` (`d > 0`); `is_multiple_of` is newer than our MSRV.
fn divides(d: u128, n: u128) -> bool {
    n / d * d == n
}

struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        match ns {
            0 => f.write_str("0"),
            _ if divides(1_000_000_000, ns) => write!(f, "{}s", ns / 1_000_000_000),
            _ if divides(1_000_000, ns) => write!(f, "{}ms", ns / 1_000_000),
            _ if divides(1_000, ns) => write!(f, "{}us", ns / 1_000),
            _ => write!(f, "{ns}ns"),
        }
    }
}

struct DisplayRate(u64);

impl fmt::Display for DisplayRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = u128::from(self.0);
        match r {
            0 => f.write_str("0bit"),
            _ if divides(1_000_000_000, r) => write!(f, "{}gbit", r / 1_000_000_000),
            _ if divides(1_000_000, r) => write!(f, "{}mbit", r / 1_000_000),
            _ if divides(1_000, r) => write!(f, "{}kbit", r / 1_000),
            _ => write!(f, "{r}bit"),
        }
    }
}

struct DisplayBytes(usize);

impl fmt::Display for DisplayBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as u128;
        match b {
            0 => f.write_str("0"),
            _ if divides(1 << 20, b) => write!(f, "{}m", b >> 20),
            _ if divides(1 << 10, b) => write!(f, "{}k", b >> 10),
            _ => write!(f, "{b}"),
        }
    }
}

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
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
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

// ---------------------------------------------------------------------------------------------
// Tokio shell.

/// How long a client's mapping (its upstream socket) lives without traffic either way.
const CLIENT_IDLE: Duration = Duration::from_secs(120);
/// How often idle mappings are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// At most this many clients at once; datagrams of further clients are dropped.
const MAX_CLIENTS: usize = 4096;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Mixed into the down direction's seed so the two directions never share a random stream, even
/// when given the same configuration (`--both`).
const DOWN_SEED_SALT: u64 = 0xD0_57_EA_11_5A_17_00_01;

/// Counters of a [`UdpRelay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Client → upstream direction.
    pub up: ImpairStats,
    /// Upstream → client direction.
    pub down: ImpairStats,
    /// Clients currently mapped (each with its own upstream socket).
    pub clients: usize,
    /// Datagrams the model delivered but the relay could not send (socket errors, client table
    /// full).
    pub send_errors: u64,
    /// Datagrams dropped (both directions) while the link was cut ([`UdpRelay::set_cut`]).
    pub cut_dropped: u64,
}

/// A UDP relay that impairs traffic between clients and one upstream address, like a NAT on a bad
/// link.
///
/// Datagrams from any client to the listen address go through the `up` [`Impairment`] and are
/// then sent to the upstream from a socket of that client's own, bound to the listen IP with an
/// ephemeral port. **The relay rewrites the source address**: the upstream sees one address per
/// client (the relay's), as behind a NAT, never the client's. Replies from the upstream to that
/// socket go through the `down` [`Impairment`] and back to the client from the listen socket.
/// (WebRTC works through it because the SFU is ICE-lite and accepts peer-reflexive candidates.)
///
/// Both directions are single shared links: all clients share one bottleneck, one loss process.
/// A client's mapping expires after 120 s without traffic; at most 4096 clients at once. Memory
/// is bounded by [`HELD_BYTES_LIMIT`] per direction plus small channels.
#[derive(Debug)]
pub struct UdpRelay {
    local_addr: SocketAddr,
    stats: Arc<Mutex<RelayStats>>,
    cut: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl UdpRelay {
    /// Binds `listen` (port 0 for an ephemeral port) and starts relaying to `upstream`.
    ///
    /// The down direction's seed is mixed with a constant so that the same configuration in both
    /// directions does not give both the same random stream. Must be called inside a tokio
    /// runtime; the relay runs as one task (plus one receive task per client) until
    /// [`shutdown`](Self::shutdown) or drop.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        up: ImpairConfig,
        mut down: ImpairConfig,
    ) -> io::Result<UdpRelay> {
        let socket = UdpSocket::bind(listen).await?;
        let local_addr = socket.local_addr()?;
        down.seed ^= DOWN_SEED_SALT;
        let stats = Arc::new(Mutex::new(RelayStats::default()));
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let bind_ip = match (local_addr.ip(), upstream.ip()) {
            (IpAddr::V4(ip), IpAddr::V4(_)) => IpAddr::V4(ip),
            (IpAddr::V6(ip), IpAddr::V6(_)) => IpAddr::V6(ip),
            (_, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (_, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let cut = Arc::new(AtomicBool::new(false));
        let shell = RelayShell {
            cut: cut.clone(),
            cut_dropped: 0,
            socket,
            upstream,
            bind_ip,
            up: Impairment::new(up),
            down: Impairment::new(down),
            clients: HashMap::new(),
            readers: JoinSet::new(),
            stats: stats.clone(),
            send_errors: 0,
        };
        let task = tokio::spawn(shell.run(shutdown_rx));
        Ok(UdpRelay {
            local_addr,
            stats,
            cut,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// The bound listen address (clients send here).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cuts the link (`true`: every datagram in either direction is dropped as it arrives) or
    /// restores it. Datagrams already held by the model (delayed) are still delivered. For tests
    /// of tunnels and dead zones: the cut is total and instant, as when a tablet loses coverage.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, atomic::Ordering::Relaxed);
    }

    /// Counters of both directions (updated by the relay task after every event).
    pub fn stats(&self) -> RelayStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the relay and waits for its task to end; every socket is closed on return.
    /// Datagrams still held by the model are discarded.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// One client's mapping.
struct Client {
    socket: Arc<UdpSocket>,
    last_active: tokio::time::Instant,
    reader: AbortHandle,
}

/// The relay task's state.
struct RelayShell {
    cut: Arc<AtomicBool>,
    cut_dropped: u64,
    socket: UdpSocket,
    upstream: SocketAddr,
    bind_ip: IpAddr,
    up: Impairment<(SocketAddr, Vec<u8>)>,
    down: Impairment<(SocketAddr, Vec<u8>)>,
    clients: HashMap<SocketAddr, Client>,
    readers: JoinSet<()>,
    stats: Arc<Mutex<RelayStats>>,
    send_errors: u64,
}

impl RelayShell {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        let (down_tx, mut down_rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(1024);
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let up_timer = tokio::time::sleep_until(far());
        let down_timer = tokio::time::sleep_until(far());
        tokio::pin!(up_timer, down_timer);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = tokio::time::Instant::now();
            while let Some((client, data)) = self.up.poll(now.into_std()) {
                self.send_up(client, &data, &down_tx).await;
            }
            while let Some((client, data)) = self.down.poll(now.into_std()) {
                if let Err(e) = self.socket.send_to(&data, client).await {
                    tracing::debug!(%client, error = %e, "relay: send to client failed");
                    self.send_errors += 1;
                }
            }
            self.publish();
            let up_due = self.up.poll_timeout().map(tokio::time::Instant::from_std);
            let down_due = self.down.poll_timeout().map(tokio::time::Instant::from_std);
            if let Some(at) = up_due {
                up_timer.as_mut().reset(at);
            }
            if let Some(at) = down_due {
                down_timer.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                () = &mut up_timer, if up_due.is_some() => {}
                () = &mut down_timer, if down_due.is_some() => {}
                Some((client, data)) = down_rx.recv() => {
                    if self.cut.load(atomic::Ordering::Relaxed) {
                        self.cut_dropped += 1;
                        continue;
                    }
                    let now = tokio::time::Instant::now();
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.last_active = now;
                    }
                    let len = data.len();
                    self.down.push(now.into_std(), (client, data), len);
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        if self.cut.load(atomic::Ordering::Relaxed) {
                            self.cut_dropped += 1;
                            continue;
                        }
                        let now = tokio::time::Instant::now().into_std();
                        self.up.push(now, (from, buf[..n].to_vec()), n);
                    }
                    Err(e) => tracing::debug!(error = %e, "relay: receive on listen socket failed"),
                },
                Some(_) = self.readers.join_next() => {}
                _ = sweep.tick() => self.expire_idle(),
            }
        }
        self.readers.abort_all();
    }

    /// Sends a datagram the up model delivered, creating the client's mapping if needed.
    async fn send_up(
        &mut self,
        client: SocketAddr,
        data: &[u8],
        down_tx: &mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ) {
        let now = tokio::time::Instant::now();
        if !self.clients.contains_key(&client) {
            if self.clients.len() >= MAX_CLIENTS {
                tracing::warn!(
                    "relay: client table full ({MAX_CLIENTS}), dropping a new client's datagram"
                );
                self.send_errors += 1;
                return;
            }
            match self.map_client(client, down_tx).await {
                Ok(c) => {
                    self.clients.insert(client, c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay: cannot open an upstream socket for a client");
                    self.send_errors += 1;
                    return;
                }
            }
        }
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        c.last_active = now;
        if let Err(e) = c.socket.send(data).await {
            tracing::debug!(%client, error = %e, "relay: send upstream failed");
            self.send_errors += 1;
        }
    }

    async fn map_client(
        &mut self,
        client: SocketAddr,
        down_tx: &mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ) -> io::Result<Client> {
        let socket = UdpSocket::bind(SocketAddr::new(self.bind_ip, 0)).await?;
        // Connected: the kernel drops anything not from the upstream (endpoint-dependent filtering).
        socket.connect(self.upstream).await?;
        tracing::debug!(%client, mapped = %socket.local_addr()?, "relay: new client mapping");
        let socket = Arc::new(socket);
        let reader_socket = socket.clone();
        let tx = down_tx.clone();
        let reader = self.readers.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match reader_socket.recv(&mut buf).await {
                    Ok(n) => {
                        if tx.send((client, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                    // ICMP port unreachable from the upstream, reported on the connected socket.
                    Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {}
                    Err(e) => {
                        tracing::debug!(%client, error = %e, "relay: upstream socket receive failed");
                        break;
                    }
                }
            }
        });
        Ok(Client {
            socket,
            last_active: tokio::time::Instant::now(),
            reader,
        })
    }

    fn expire_idle(&mut self) {
        let now = tokio::time::Instant::now();
        self.clients.retain(|client, c| {
            let keep = now.duration_since(c.last_active) < CLIENT_IDLE;
            if !keep {
                tracing::debug!(%client, "relay: client mapping expired");
                c.reader.abort();
            }
            keep
        });
    }

    fn publish(&self) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        *stats = RelayStats {
            up: self.up.stats(),
            down: self.down.stats(),
            clients: self.clients.len(),
            send_errors: self.send_errors,
            cut_dropped: self.cut_dropped,
        };
    }
}

#[cfg(test)]
mod tests {
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

    fn everything(seed: u64) -> ImpairConfig {
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

    #[test]
    fn parses_the_documented_example() {
        let c: ImpairConfig = "loss=5%,delay=50ms,jitter=20ms,burst=0.01/0.3/0.8,reorder=1%/10ms,rate=300kbit,queue=64k,seed=7"
            .parse()
            .unwrap();
        assert_eq!(
            c,
            ImpairConfig {
                loss: 0.05,
                burst: Some(BurstLoss {
                    p_enter: 0.01,
                    p_exit: 0.3,
                    loss_in_burst: 0.8
                }),
                delay: 50 * MS,
                jitter: 20 * MS,
                reorder: 0.01,
                reorder_gap: 10 * MS,
                rate: Some(300_000),
                queue_limit: 65_536,
                seed: 7,
            }
        );
        c.validate().unwrap();
    }

    #[test]
    fn parses_variants() {
        let p = |s: &str| s.parse::<ImpairConfig>().unwrap();
        assert_eq!(p(""), ImpairConfig::default());
        assert_eq!(p("none"), ImpairConfig::default());
        assert_eq!(p(" Perfect "), ImpairConfig::default());
        assert_eq!(p("loss=0.1"), ImpairConfig::default().loss(0.1));
        assert_eq!(p(" LOSS = 10% "), ImpairConfig::default().loss(0.1));
        assert_eq!(
            p("delay=1.5s"),
            ImpairConfig::default().delay(Duration::from_millis(1_500))
        );
        assert_eq!(
            p("delay=250us,jitter=0"),
            ImpairConfig::default().delay(Duration::from_micros(250))
        );
        assert_eq!(
            p("delay=.5ms"),
            ImpairConfig::default().delay(Duration::from_micros(500))
        );
        assert_eq!(
            p("burst=1%/25%").burst,
            Some(BurstLoss {
                p_enter: 0.01,
                p_exit: 0.25,
                loss_in_burst: 1.0
            })
        );
        assert_eq!(p("burst=off").burst, None);
        assert_eq!(
            p("reorder=2%"),
            ImpairConfig::default().reorder(0.02, DEFAULT_REORDER_GAP)
        );
        assert_eq!(p("rate=1.5mbit").rate, Some(1_500_000));
        assert_eq!(p("rate=64000").rate, Some(64_000));
        assert_eq!(p("rate=1Gbit").rate, Some(1_000_000_000));
        assert_eq!(p("rate=off").rate, None);
        assert_eq!(p("queue=1m").queue_limit, 1 << 20);
        assert_eq!(p("queue=1500").queue_limit, 1_500);
        assert_eq!(p("seed=18446744073709551615").seed, u64::MAX);
    }

    #[test]
    fn display_round_trips() {
        let configs = [
            ImpairConfig::default(),
            everything(7),
            ImpairConfig::default().loss(1.0 / 3.0),
            ImpairConfig::default().delay(Duration::from_nanos(1_234_567_891)).jitter(Duration::from_micros(3)),
            ImpairConfig::default().rate(1_234_567, 1_500).seed(u64::MAX),
            ImpairConfig::default().reorder(0.0, 3 * MS),
            ImpairConfig::default().rate(3_000_000, 3 << 20),
            "loss=5%,delay=50ms,jitter=20ms,burst=0.01/0.3/0.8,reorder=1%/10ms,rate=300kbit,queue=64k,seed=7".parse().unwrap(),
        ];
        for c in configs {
            let spec = c.to_string();
            assert_eq!(spec.parse::<ImpairConfig>().as_ref(), Ok(&c), "{spec}");
        }
        assert_eq!(ImpairConfig::default().to_string(), "none");
        assert_eq!(
            ImpairConfig::default()
                .loss(0.05)
                .delay(50 * MS)
                .to_string(),
            "loss=0.05,delay=50ms"
        );
    }

    #[test]
    fn rejects_bad_specs_with_clear_errors() {
        let bad = [
            "loss=5",
            "loss=-1%",
            "loss=101%",
            "loss=abc",
            "loss=nan",
            "loss=inf%",
            "loss=",
            "loss",
            "=5%",
            "delay=50",
            "delay=5parsecs",
            "delay=-5ms",
            "delay=1..5ms",
            "delay=99999999999s",
            "jitter=ms",
            "burst=0.1",
            "burst=0.1/0.2/0.3/0.4",
            "burst=0.1/2",
            "reorder=1%/x",
            "reorder=/10ms",
            "rate=0",
            "rate=0kbit",
            "rate=fast",
            "rate=10kbps",
            "rate=99999999999gbit",
            "queue=-1",
            "queue=64q",
            "seed=x",
            "seed=-1",
            "foo=1",
            "loss=1%,loss=2%",
            "loss=1%,,delay=1ms",
            "loss=1%;delay=1ms",
        ];
        for spec in bad {
            let err = spec.parse::<ImpairConfig>().expect_err(spec);
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(
            "loss=5".parse::<ImpairConfig>(),
            Err(SpecError::BadValue {
                key: "loss",
                value: "5".into(),
                expected: PROBABILITY
            })
        );
        assert_eq!(
            "foo=1".parse::<ImpairConfig>(),
            Err(SpecError::UnknownKey { key: "foo".into() })
        );
        assert_eq!(
            "seed=1,seed=2".parse::<ImpairConfig>(),
            Err(SpecError::DuplicateKey { key: "seed".into() })
        );
        assert_eq!(
            "loss".parse::<ImpairConfig>(),
            Err(SpecError::NotKeyValue {
                item: "loss".into()
            })
        );
        let msg = "delay=50".parse::<ImpairConfig>().unwrap_err().to_string();
        assert!(msg.contains("delay") && msg.contains("50ms"), "{msg}");
    }

    #[test]
    fn parser_never_panics_on_garbage() {
        let spec = "loss=5%,delay=50ms,jitter=20ms,burst=0.01/0.3/0.8,reorder=1%/10ms,rate=300kbit,queue=64k,seed=7";
        // Every prefix and suffix, char-boundary safe.
        for (i, _) in spec.char_indices() {
            let _ = spec[..i].parse::<ImpairConfig>();
            let _ = spec[i..].parse::<ImpairConfig>();
        }
        // Seeded random byte soup from the spec alphabet plus a few odd characters.
        let alphabet: Vec<char> = "loss=%,./0123456789msuµkbitgKMG-+eE =;burstdelay"
            .chars()
            .collect();
        let mut rng = SplitMix64(99);
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 24) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
                .collect();
            let _ = s.parse::<ImpairConfig>();
        }
    }

    // --- shell ---------------------------------------------------------------------------------

    const WAIT: Duration = Duration::from_secs(10);

    /// An echo server on an ephemeral loopback port; returns its address and the set of source
    /// addresses it has seen.
    async fn echo_server() -> (
        SocketAddr,
        Arc<Mutex<std::collections::HashSet<SocketAddr>>>,
    ) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                seen2.lock().unwrap().insert(from);
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        (addr, seen)
    }

    async fn client(relay: &UdpRelay) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(relay.local_addr()).await.unwrap();
        socket
    }

    #[tokio::test]
    async fn relay_without_loss_echoes_everything_in_order() {
        let (echo, seen) = echo_server().await;
        let relay = UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            ImpairConfig::default(),
            ImpairConfig::default(),
        )
        .await
        .unwrap();
        let listen = relay.local_addr();
        let c = client(&relay).await;
        let mut buf = [0u8; 64];
        for i in 0..1_000u32 {
            c.send(&i.to_be_bytes()).await.unwrap();
            let n = tokio::time::timeout(WAIT, c.recv(&mut buf))
                .await
                .expect("echo timed out")
                .unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes());
        }
        let s = relay.stats();
        assert_eq!(
            (s.up.pushed, s.up.delivered, s.down.pushed, s.down.delivered),
            (1_000, 1_000, 1_000, 1_000)
        );
        assert_eq!((s.clients, s.send_errors), (1, 0));
        // The upstream saw the relay's per-client address, not the client's.
        let seen: Vec<SocketAddr> = seen.lock().unwrap().iter().copied().collect();
        assert_eq!(seen.len(), 1);
        assert_ne!(seen[0], c.local_addr().unwrap());
        assert_eq!(seen[0].ip(), listen.ip());
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
        // Every socket is closed: the listen port can be bound again.
        UdpSocket::bind(listen).await.unwrap();
    }

    #[tokio::test]
    async fn relay_gives_each_client_its_own_upstream_address() {
        let (echo, seen) = echo_server().await;
        let relay = UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            ImpairConfig::default(),
            ImpairConfig::default(),
        )
        .await
        .unwrap();
        let (a, b) = (client(&relay).await, client(&relay).await);
        let mut buf = [0u8; 16];
        for (c, msg) in [(&a, b"a"), (&b, b"b"), (&a, b"A")] {
            c.send(msg).await.unwrap();
            let n = tokio::time::timeout(WAIT, c.recv(&mut buf))
                .await
                .expect("echo timed out")
                .unwrap();
            assert_eq!(&buf[..n], msg);
        }
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(relay.stats().clients, 2);
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
    }

    #[tokio::test]
    async fn relay_with_ten_percent_loss_each_way_returns_about_81_percent() {
        let (echo, _) = echo_server().await;
        let lossy: ImpairConfig = "loss=10%,seed=1".parse().unwrap();
        let relay = UdpRelay::start("127.0.0.1:0".parse().unwrap(), echo, lossy.clone(), lossy)
            .await
            .unwrap();
        let c = client(&relay).await;
        let mut received = 0u64;
        let mut buf = [0u8; 64];
        let mut sent = 0u64;
        // Windows of 50 so no kernel buffer overflows; after each, wait until every datagram is
        // accounted for (delivered or dropped by the model, and every echo read).
        for window in 0..20u32 {
            for i in window * 50..(window + 1) * 50 {
                c.send(&i.to_be_bytes()).await.unwrap();
                sent += 1;
            }
            tokio::time::timeout(WAIT, async {
                loop {
                    while c.try_recv(&mut buf).is_ok() {
                        received += 1;
                    }
                    let s = relay.stats();
                    let settled = s.up.pushed == sent
                        && s.up.delivered + s.up.dropped() == sent
                        && s.down.pushed == s.up.delivered
                        && s.down.delivered + s.down.dropped() == s.down.pushed
                        && received == s.down.delivered;
                    if settled {
                        break;
                    }
                    tokio::time::sleep(MS).await;
                }
            })
            .await
            .expect("relay did not settle");
        }
        let s = relay.stats();
        assert_eq!(s.up.dropped(), s.up.dropped_random);
        assert!(
            (760..=860).contains(&received),
            "{received} echoes of 1000; {s:?}"
        );
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
    }

    #[tokio::test]
    async fn relay_delays_in_real_time() {
        let (echo, _) = echo_server().await;
        let delayed = ImpairConfig::default().delay(30 * MS);
        let relay = UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            delayed.clone(),
            delayed,
        )
        .await
        .unwrap();
        let c = client(&relay).await;
        let mut buf = [0u8; 16];
        let start = tokio::time::Instant::now();
        c.send(b"x").await.unwrap();
        tokio::time::timeout(WAIT, c.recv(&mut buf))
            .await
            .expect("echo timed out")
            .unwrap();
        assert!(start.elapsed() >= 60 * MS, "{:?}", start.elapsed());
        tokio::time::timeout(WAIT, relay.shutdown()).await.unwrap();
    }
}
