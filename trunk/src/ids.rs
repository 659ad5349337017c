//! Names on the trunk: node names, stream names and the `NODE/STREAM` address (the `ids` crate's
//! types, shared with `signaling`, so a signaling `NodeId` or `StreamName` is a trunk one as it
//! is), and the trunk's own layers and viewers.
//!
//! A [`StreamName`] on the trunk is always a local name (the wire decoder parses it with
//! [`StreamName::parse`], which refuses `/`); a stream elsewhere is a [`StreamAddr`].

pub use ::ids::{NodeName, StreamAddr, StreamName};

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
    fn layer_sets() {
        let s = LayerSet::single(LayerId(2)).union(LayerSet::single(LayerId(0)));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![LayerId(0), LayerId(2)]);
        assert!(!s.contains(LayerId(1)));
        assert_eq!(LayerSet::first(3), LayerSet(7));
        assert_eq!(LayerSet::first(8), LayerSet(255));
        assert!(LayerSet::single(LayerId(9)).is_empty());
    }
}
