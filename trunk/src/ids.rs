//! Names on the trunk: node names, stream names, the `NODE/STREAM` address, layers and viewers.
//!
//! Syntax matches `signaling::ids` (ASCII letters, digits, `.`, `_`, `-`, not starting with `.`
//! or `-`; node names 1..=64, stream names 1..=96) so a signaling `NodeId` or `StreamName` always
//! converts. This crate does not depend on `signaling`, to stay light.

use std::fmt;
use std::str::FromStr;

use crate::error::NameError;

fn check(s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > max {
        return Err(NameError::TooLong { max });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(NameError::BadChar);
    }
    if s.starts_with(['.', '-']) {
        return Err(NameError::BadStart);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $max:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses and validates `s`.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check(s, $max)?;
                Ok(Self(s.to_owned()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
    };
}

name_type!(
    /// A node (one site's media-server), e.g. `county-7`. Also names the trunk to that node: a
    /// node has at most one trunk to each peer.
    NodeName,
    64
);
name_type!(
    /// A stream as its publishing node names it, e.g. `off-12`.
    StreamName,
    96
);

/// A stream anywhere in the province: `NODE/STREAM`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamAddr {
    /// The node the stream is published at.
    pub node: NodeName,
    /// Its name there.
    pub stream: StreamName,
}

impl StreamAddr {
    /// The address of `stream` at `node`.
    pub fn new(node: NodeName, stream: StreamName) -> StreamAddr {
        StreamAddr { node, stream }
    }

    /// Parses `NODE/STREAM`.
    pub fn parse(s: &str) -> Result<StreamAddr, NameError> {
        let (node, stream) = s.split_once('/').ok_or(NameError::NotAnAddress)?;
        Ok(StreamAddr {
            node: NodeName::parse(node)?,
            stream: StreamName::parse(stream)?,
        })
    }
}

impl fmt::Display for StreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.stream)
    }
}

impl FromStr for StreamAddr {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

/// A simulcast layer of a stream: 0 is the lowest quality (the only one of a single-layer
/// stream); audio is layer 0 of its own stream entry in the SFU and needs no special case here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerId(pub u8);

impl LayerId {
    /// Layers are 0..MAX (a [`LayerSet`] is one byte).
    pub const MAX: u8 = 8;
}

/// A set of layers (bit `n` = layer `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LayerSet(pub u8);

impl LayerSet {
    /// No layer.
    pub const EMPTY: LayerSet = LayerSet(0);

    /// The set holding only `l` (empty if `l` is out of range).
    pub fn single(l: LayerId) -> LayerSet {
        if l.0 < LayerId::MAX {
            LayerSet(1 << l.0)
        } else {
            LayerSet::EMPTY
        }
    }

    /// Layers `0..n`.
    pub fn first(n: u8) -> LayerSet {
        LayerSet(((1u16 << n.min(8)) - 1) as u8)
    }

    /// Whether `l` is in the set.
    pub fn contains(self, l: LayerId) -> bool {
        l.0 < LayerId::MAX && self.0 & (1 << l.0) != 0
    }

    /// Union.
    pub fn union(self, o: LayerSet) -> LayerSet {
        LayerSet(self.0 | o.0)
    }

    /// Whether no layer is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The layers, lowest first.
    pub fn iter(self) -> impl Iterator<Item = LayerId> {
        (0..LayerId::MAX)
            .filter(move |n| self.0 & (1 << n) != 0)
            .map(LayerId)
    }
}

/// A local viewer, numbered by the shell (one per WHEP session or subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewerId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert!(NodeName::parse("county-7").is_ok());
        assert_eq!(NodeName::parse(""), Err(NameError::Empty));
        assert_eq!(NodeName::parse(".x"), Err(NameError::BadStart));
        assert_eq!(NodeName::parse("a/b"), Err(NameError::BadChar));
        assert!(NodeName::parse(&"n".repeat(64)).is_ok());
        assert!(NodeName::parse(&"n".repeat(65)).is_err());
        let a = StreamAddr::parse("township-3/off-12").unwrap();
        assert_eq!(a.to_string(), "township-3/off-12");
        assert_eq!(StreamAddr::parse("x"), Err(NameError::NotAnAddress));
        assert!(StreamAddr::parse("a/b/c").is_err());
    }

    #[test]
    fn layer_sets() {
        let s = LayerSet::single(LayerId(2)).union(LayerSet::single(LayerId(0)));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![LayerId(0), LayerId(2)]);
        assert!(!s.contains(LayerId(1)));
        assert_eq!(LayerSet::first(3), LayerSet(7));
        assert_eq!(LayerSet::first(8), LayerSet(255));
        assert!(LayerSet::single(LayerId(9)).is_empty());
    }
}
