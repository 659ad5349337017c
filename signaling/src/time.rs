//! Time as the protocol and the core see it: Unix **milliseconds** ([`UnixMs`]) for everything on
//! the wire and in the core, Unix **seconds** ([`UnixSecs`]) for token claims and revocations.
//!
//! Two types, so a seconds value can never be passed where milliseconds are meant (the mistake
//! is a factor of 1000, and it type-checks as `u64`). Both serialise as a plain JSON integer.
//! Nothing here reads the clock: the shells do, and pass `now` in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A point in time, Unix milliseconds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub u64);

/// A point in time, Unix seconds (token `iat`/`exp`, revocations).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixSecs(pub u64);

impl UnixMs {
    /// The raw number of milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// This time `ms` milliseconds later (saturating).
    pub fn plus_ms(self, ms: u64) -> UnixMs {
        UnixMs(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn ms_since(self, earlier: UnixMs) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The whole seconds of this time (rounded down).
    pub fn secs(self) -> UnixSecs {
        UnixSecs(self.0 / 1000)
    }
}

impl UnixSecs {
    /// The raw number of seconds.
    pub fn as_secs(self) -> u64 {
        self.0
    }
}

impl From<UnixSecs> for UnixMs {
    fn from(s: UnixSecs) -> UnixMs {
        UnixMs(s.0.saturating_mul(1000))
    }
}

impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

impl fmt::Display for UnixSecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} s", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_are_plain_integers_on_the_wire_and_convert_explicitly() {
        assert_eq!(
            serde_json::to_string(&UnixMs(1_764_180_000_350)).unwrap(),
            "1764180000350"
        );
        assert_eq!(
            serde_json::from_str::<UnixSecs>("1764180004").unwrap(),
            UnixSecs(1_764_180_004)
        );
        let t = UnixMs(1_764_180_004_999);
        assert_eq!(t.secs(), UnixSecs(1_764_180_004));
        assert_eq!(UnixMs::from(t.secs()), UnixMs(1_764_180_004_000));
        assert_eq!(t.plus_ms(1).ms_since(t), 1);
        assert_eq!(t.ms_since(t.plus_ms(5)), 0, "never negative");
    }
}
