//! The catalog: what this node announces to its parents and peers, what it learns from every
//! trunk, and the catalog it reports. A node announces every stream reachable through it — its
//! own and those learned from children — with a cost (hops, plus
//! [`RouterConfig::backup_penalty`](super::RouterConfig::backup_penalty) per rank for a second
//! parent or a peer); routes learned from parents or peers are used but never announced upward,
//! so announcements cannot loop.

use super::{Router, TrunkRole};
use crate::ids::{LayerSet, NodeName, StreamAddr};
use crate::wire::{split_announce, split_withdraw, CatalogEntry};

impl Router {
    /// Every stream this node can reach by an announced route (its own included), with the
    /// layers and the best cost.
    pub fn catalog(&self) -> Vec<CatalogEntry> {
        let mut v: Vec<CatalogEntry> = self
            .published
            .iter()
            .map(|(s, l)| CatalogEntry {
                addr: StreamAddr::new(self.cfg.node.clone(), s.clone()),
                layers: *l,
                cost: 0,
            })
            .collect();
        for (addr, via) in &self.routes {
            if let Some((_, (layers, cost))) =
                via.iter().min_by_key(|(n, (_, c))| (*c, (*n).clone()))
            {
                v.push(CatalogEntry {
                    addr: addr.clone(),
                    layers: *layers,
                    cost: *cost,
                });
            }
        }
        v.sort_by(|a, b| a.addr.cmp(&b.addr));
        v
    }

    /// An `Announce` from `peer`: routes through it (never our own streams back).
    pub(super) fn learn_announce(&mut self, peer: &NodeName, entries: Vec<CatalogEntry>) {
        for e in entries {
            if e.addr.node == self.cfg.node {
                continue;
            }
            let via = self.routes.entry(e.addr.clone()).or_default();
            if via.get(peer) != Some(&(e.layers, e.cost)) {
                via.insert(peer.clone(), (e.layers, e.cost));
                self.dirty_routes.insert(e.addr);
            }
        }
    }

    /// A `Withdraw` from `peer`: those streams are no longer reachable through it.
    pub(super) fn learn_withdraw(&mut self, peer: &NodeName, addrs: Vec<StreamAddr>) {
        for a in addrs {
            if let Some(via) = self.routes.get_mut(&a) {
                if via.remove(peer).is_some() {
                    if via.is_empty() {
                        self.routes.remove(&a);
                    }
                    self.dirty_routes.insert(a);
                }
            }
        }
    }

    /// Announces to every parent and peer what changed in `dirty`: the best announceable route
    /// (cost + 1 hop + the uplink's penalty), or a withdrawal of what it had been told.
    pub(super) fn announce(&mut self, dirty: &[StreamAddr]) {
        let ups: Vec<(NodeName, TrunkRole)> = self
            .trunks
            .iter()
            .filter(|(_, r)| **r != TrunkRole::Child)
            .map(|(n, r)| (n.clone(), *r))
            .collect();
        for (up, role) in ups {
            let penalty = self.penalty(role);
            let mut ann = Vec::new();
            let mut wd = Vec::new();
            for addr in dirty {
                let want = self
                    .upward_route(addr)
                    .map(|(l, c)| (l, c.saturating_add(1).saturating_add(penalty)));
                let adv = self.advertised.entry(up.clone()).or_default();
                match (want, adv.get(addr).copied()) {
                    (Some(w), Some(had)) if w == had => {}
                    (Some(w), _) => {
                        adv.insert(addr.clone(), w);
                        ann.push(CatalogEntry {
                            addr: addr.clone(),
                            layers: w.0,
                            cost: w.1,
                        });
                    }
                    (None, Some(_)) => {
                        adv.remove(addr);
                        wd.push(addr.clone());
                    }
                    (None, None) => {}
                }
            }
            for m in split_withdraw(wd).into_iter().chain(split_announce(ann)) {
                self.send(up.clone(), m);
            }
        }
    }

    fn penalty(&self, role: TrunkRole) -> u16 {
        match role {
            TrunkRole::Parent(r) => self.cfg.backup_penalty.saturating_mul(r.min(100) as u16),
            TrunkRole::Peer => self.cfg.backup_penalty,
            TrunkRole::Child => 0,
        }
    }

    /// Streams that may be announced upward: our own and those learned from children.
    pub(super) fn advertisable_addrs(&self) -> Vec<StreamAddr> {
        let mut v: Vec<StreamAddr> = self
            .published
            .keys()
            .map(|s| StreamAddr::new(self.cfg.node.clone(), s.clone()))
            .collect();
        v.extend(self.routes.keys().cloned());
        v
    }

    /// The best announceable route of `addr` (local or via a child): layers and cost here.
    fn upward_route(&self, addr: &StreamAddr) -> Option<(LayerSet, u16)> {
        if addr.node == self.cfg.node {
            return self.published.get(&addr.stream).map(|l| (*l, 0));
        }
        self.routes
            .get(addr)?
            .iter()
            .filter(|(n, _)| self.trunks.get(*n) == Some(&TrunkRole::Child))
            .map(|(_, v)| *v)
            .min_by_key(|(_, c)| *c)
    }
}
