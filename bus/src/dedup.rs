//! The idempotent consumer: at-least-once delivery in, exactly once out. Pure, no I/O.
//!
//! A durable stream redelivers what was not acknowledged (a lost ack, a consumer restart, a leaf
//! connection that failed over mid-delivery). The mailbox remembers the ids it has already handed
//! to the application, per origin, and drops a second copy. The window is bounded: the last
//! `capacity` ids per origin are kept (redeliveries come soon after the first copy); an office
//! that must survive a restart also keeps the id in its store (its unique key) and seeds the
//! window with [`Dedup::remember`].

use crate::subject::MsgId;
use ids::NodeName;
use std::collections::{HashMap, HashSet, VecDeque};

/// Ids seen per origin, bounded.
#[derive(Debug)]
pub struct Dedup {
    capacity: usize,
    seen: HashMap<NodeName, (HashSet<MsgId>, VecDeque<MsgId>)>,
}

impl Dedup {
    /// Keeps the last `capacity` ids per origin (at least 1).
    pub fn new(capacity: usize) -> Dedup {
        Dedup {
            capacity: capacity.max(1),
            seen: HashMap::new(),
        }
    }

    /// Whether `id` from `origin` is new; records it. `false` means: a duplicate, drop it.
    #[must_use]
    pub fn first_time(&mut self, origin: &NodeName, id: &MsgId) -> bool {
        let (set, order) = self.seen.entry(origin.clone()).or_default();
        if set.contains(id) {
            return false;
        }
        set.insert(id.clone());
        order.push_back(id.clone());
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    /// Records `id` as already delivered (from the application's own store).
    pub fn remember(&mut self, origin: &NodeName, id: &MsgId) {
        let _ = self.first_time(origin, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_copy_is_dropped_and_origins_are_apart() {
        let (a, b) = (NodeName::parse("a").unwrap(), NodeName::parse("b").unwrap());
        let id = MsgId::parse("1").unwrap();
        let mut d = Dedup::new(2);
        assert!(d.first_time(&a, &id));
        assert!(!d.first_time(&a, &id));
        assert!(
            d.first_time(&b, &id),
            "the same id from another origin is another message"
        );
    }

    #[test]
    fn the_window_forgets_the_oldest_beyond_capacity() {
        let a = NodeName::parse("a").unwrap();
        let ids: Vec<MsgId> = (0..3)
            .map(|i| MsgId::parse(&i.to_string()).unwrap())
            .collect();
        let mut d = Dedup::new(2);
        for id in &ids {
            assert!(d.first_time(&a, id));
        }
        assert!(!d.first_time(&a, &ids[2]));
        assert!(d.first_time(&a, &ids[0]), "forgotten beyond the window");
    }
}
