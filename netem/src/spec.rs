//! The compact spec-string syntax of an [`ImpairConfig`] (`loss=5%,delay=50ms,seed=7`):
//! `FromStr`, `Display` (which parses back to an equal configuration) and [`SpecError`]. Pure
//! text handling: it must not touch the model ([`crate::link`]) or sockets.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::config::{BurstLoss, ImpairConfig};

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

pub(crate) const PROBABILITY: &str =
    "a probability: a fraction in 0..=1 (0.05) or a percentage (5%)";
const DURATION: &str = "a duration: a number with a unit ns, us, ms or s (50ms, 1.5s), or 0";
pub(crate) const RATE: &str =
    "a rate above 0: a number with a unit bit, kbit, mbit or gbit (300kbit), or off";
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_REORDER_GAP;
    use crate::link::tests::everything;
    use crate::link::SplitMix64;

    const MS: Duration = Duration::from_millis(1);

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
}
