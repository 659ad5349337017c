//! Path choice and trunk repair: which trunk a stream is pulled through, and how its path is
//! repaired when a trunk is cut or a route withdrawn.
//!
//! - **First path**: the cheapest announced route, or, for a stream not in the catalog (it lives
//!   above), the first working parent; parents and peers asking for a stream served from above
//!   are refused (it could loop).
//! - **Failover** (break-before-make): the upstream trunk went down or withdrew the route — the
//!   stream moves to the next route at once and keyframes are asked for.
//! - **Move back** (make-before-break): a better route (re)appeared — the new path is subscribed
//!   and the old one dropped only when the new one delivers ([`Router::next_path_ready`]) or at
//!   [`Router::SWITCH_TIMEOUT`].
//! - **Lost**: no path at all — viewers that have seen media wait ([`ViewerEvent::Waiting`],
//!   retried every [`Router::LOST_RETRY`]), everyone else fails.
//!
//! Lost packets on a working trunk are repaired by the trunk media plane (NACK hop by hop), not
//! here.

use std::time::Instant;

use tracing::debug;

use super::{Output, Router, Sub, TrunkRole, Upstream, ViewerEvent};
use crate::ids::{NodeName, StreamAddr, ViewerId};
use crate::wire::{FailReason, Message};

enum Selection {
    Local,
    Trunk(NodeName),
    Wait,
    Fail(FailReason),
}

impl Router {
    pub(super) fn promote(&mut self, now: Instant, addr: &StreamAddr) {
        let Some(sub) = self.subs.get_mut(addr) else {
            return;
        };
        if !sub.next.as_ref().is_some_and(|(_, u)| u.flowing) {
            return;
        }
        let (n, up) = sub.next.take().expect("checked");
        if let Some((old, _)) = sub.upstream.replace((n.clone(), up)) {
            debug!(node = %self.cfg.node, %addr, from = %old, to = %n, "moved to a better path");
            self.send(old, Message::Unsubscribe { addr: addr.clone() });
        }
        let _ = now;
        self.dirty_subs.insert(addr.clone());
    }

    pub(super) fn subscribe_failed(
        &mut self,
        now: Instant,
        peer: &NodeName,
        addr: StreamAddr,
        reason: FailReason,
    ) {
        let Some(sub) = self.subs.get_mut(&addr) else {
            return;
        };
        let learned = self.routes.get(&addr).is_some_and(|v| v.contains_key(peer));
        if sub.next.as_ref().is_some_and(|(n, _)| n == peer) {
            sub.next = None;
        } else if sub.upstream.as_ref().is_some_and(|(n, _)| n == peer) {
            sub.upstream = None;
            if !learned {
                // We asked a parent by default and it does not know the stream either.
                self.lose(now, &addr, reason);
                return;
            }
        } else {
            return;
        }
        if learned {
            // The announced route through `peer` is stale: forget it, use another.
            if let Some(via) = self.routes.get_mut(&addr) {
                via.remove(peer);
                if via.is_empty() {
                    self.routes.remove(&addr);
                }
            }
            self.dirty_routes.insert(addr.clone());
        }
        self.dirty_subs.insert(addr);
    }

    /// No path leads to `addr` now. If media flowed for it, its local viewers stay and wait
    /// (told `Waiting`): the path is looked for again when the stream is announced from below
    /// and every [`Router::LOST_RETRY`]; downstream trunks are told `SubscribeFailed` (their
    /// nodes do the same for their own viewers). Otherwise everyone fails.
    fn lose(&mut self, now: Instant, addr: &StreamAddr, reason: FailReason) {
        let Some(sub) = self.subs.get_mut(addr) else {
            return;
        };
        if !sub.flowed || sub.viewers.is_empty() {
            self.fail_all(addr, reason);
            return;
        }
        let downs: Vec<NodeName> = std::mem::take(&mut sub.downstream).into_keys().collect();
        let old: Vec<NodeName> = sub
            .upstream
            .take()
            .into_iter()
            .chain(sub.next.take())
            .map(|(n, _)| n)
            .collect();
        for d in downs {
            self.send(
                d,
                Message::SubscribeFailed {
                    addr: addr.clone(),
                    reason,
                },
            );
        }
        for n in old {
            self.send(n, Message::Unsubscribe { addr: addr.clone() });
        }
        if !self.retry_timers.iter().any(|(_, a)| a == addr) {
            self.retry_timers
                .insert((now + Self::LOST_RETRY, addr.clone()));
        }
        debug!(node = %self.cfg.node, %addr, ?reason, "path lost; viewers wait");
        self.notify_and_route(addr);
    }

    fn fail_all(&mut self, addr: &StreamAddr, reason: FailReason) {
        let Some(sub) = self.subs.get_mut(addr) else {
            return;
        };
        let viewers: Vec<ViewerId> = std::mem::take(&mut sub.viewers).into_keys().collect();
        let downs: Vec<NodeName> = std::mem::take(&mut sub.downstream).into_keys().collect();
        for viewer in viewers {
            self.out.push_back(Output::Viewer {
                viewer,
                addr: addr.clone(),
                event: ViewerEvent::Failed(reason),
            });
        }
        for d in downs {
            self.send(
                d,
                Message::SubscribeFailed {
                    addr: addr.clone(),
                    reason,
                },
            );
        }
        self.prune(addr);
    }

    fn select(&self, addr: &StreamAddr, sub: &Sub) -> Selection {
        if addr.node == self.cfg.node {
            return if self.published.contains_key(&addr.stream) {
                Selection::Local
            } else {
                Selection::Fail(FailReason::NotFound)
            };
        }
        let usable = |n: &NodeName| self.trunks.contains_key(n) && !sub.downstream.contains_key(n);
        if let Some(via) = self.routes.get(addr) {
            if let Some((n, _)) = via
                .iter()
                .filter(|(n, _)| usable(n))
                .min_by_key(|(n, (_, c))| (*c, (*n).clone()))
            {
                return Selection::Trunk(n.clone());
            }
        }
        // Not announced from below or by a peer: it lives above, if anywhere. Only local viewers
        // and children are served from above (a parent or peer asking us would loop); they are
        // refused in `recompute`.
        let below = !sub.viewers.is_empty()
            || sub.is_empty()
            || sub
                .downstream
                .keys()
                .any(|n| self.trunks.get(n) == Some(&TrunkRole::Child));
        if !below {
            return Selection::Fail(FailReason::NoRoute);
        }
        match self.cfg.parents.iter().find(|p| usable(p)) {
            Some(p) => Selection::Trunk(p.clone()),
            None if self.cfg.parents.is_empty() => Selection::Fail(FailReason::NotFound),
            None => Selection::Wait,
        }
    }

    /// Whether `n`, the current upstream of `addr`, still leads to it.
    fn still_valid(&self, addr: &StreamAddr, n: &NodeName) -> bool {
        // Gone, or now itself asking us for the stream (a stale route: it must not stay the
        // source of what we send it).
        if !self.trunks.contains_key(n)
            || self
                .subs
                .get(addr)
                .is_some_and(|s| s.downstream.contains_key(n))
        {
            return false;
        }
        match self.routes.get(addr) {
            Some(via) => via.contains_key(n),
            None => self.cfg.parents.contains(n),
        }
    }

    pub(super) fn recompute(&mut self, now: Instant, addr: &StreamAddr) {
        let Some(sub) = self.subs.get(addr) else {
            return;
        };
        if sub.is_empty() && sub.idle_deadline.is_none() {
            self.prune(addr);
            return;
        }
        let mut selection = self.select(addr, sub);
        // Served from above by default (no announced route): parents and peers asking us are
        // refused (they must find another path; serving them from above could loop), and the
        // path is chosen again without them.
        let learned = |r: &Router, sub: &Sub| {
            r.routes.get(addr).is_some_and(|v| {
                v.keys()
                    .any(|n| r.trunks.contains_key(n) && !sub.downstream.contains_key(n))
            })
        };
        if matches!(&selection, Selection::Trunk(_) | Selection::Wait) && !learned(self, sub) {
            let refused: Vec<NodeName> = sub
                .downstream
                .keys()
                .filter(|n| self.trunks.get(*n) != Some(&TrunkRole::Child))
                .cloned()
                .collect();
            if !refused.is_empty() {
                let sub = self.subs.get_mut(addr).expect("present");
                for d in &refused {
                    sub.downstream.remove(d);
                }
                for d in refused {
                    self.send(
                        d,
                        Message::SubscribeFailed {
                            addr: addr.clone(),
                            reason: FailReason::NoRoute,
                        },
                    );
                }
                let sub = &self.subs[addr];
                if sub.is_empty() && sub.idle_deadline.is_none() {
                    self.prune(addr);
                    return;
                }
                selection = self.select(addr, sub);
            }
        }
        let sub = &self.subs[addr];
        let needed = sub.needed();
        let in_grace = sub.is_empty();
        match selection {
            Selection::Fail(reason) => {
                self.lose(now, addr, reason);
                return;
            }
            Selection::Local => {
                let sub = self.subs.get_mut(addr).expect("present");
                sub.local = true;
                let old = sub.upstream.take().into_iter().chain(sub.next.take());
                let old: Vec<NodeName> = old.map(|(n, _)| n).collect();
                for n in old {
                    self.send(n, Message::Unsubscribe { addr: addr.clone() });
                }
            }
            Selection::Wait => {
                let sub = self.subs.get_mut(addr).expect("present");
                sub.local = false;
                let mut gone = Vec::new();
                if let Some((n, _)) = sub.upstream.take() {
                    gone.push(n);
                }
                for n in gone {
                    self.send(n, Message::Unsubscribe { addr: addr.clone() });
                }
                if in_grace {
                    self.prune(addr);
                    return;
                }
            }
            Selection::Trunk(best) => {
                let current = self.subs[addr]
                    .upstream
                    .as_ref()
                    .map(|(n, u)| (n.clone(), *u));
                let current_ok = current
                    .as_ref()
                    .is_some_and(|(n, _)| self.still_valid(addr, n));
                let sub = self.subs.get_mut(addr).expect("present");
                sub.local = false;
                let layers = if in_grace {
                    current.as_ref().map(|(_, u)| u.layers).unwrap_or(needed)
                } else {
                    needed
                };
                match current {
                    Some((n, up)) if n == best => {
                        sub.next = None;
                        if up.layers != layers {
                            sub.upstream = Some((n.clone(), Upstream { layers, ..up }));
                            self.send(
                                n,
                                Message::Subscribe {
                                    addr: addr.clone(),
                                    layers,
                                },
                            );
                        }
                    }
                    Some(_) if current_ok && !in_grace => {
                        // Make-before-break towards the better path.
                        let same_next = sub
                            .next
                            .as_ref()
                            .is_some_and(|(n, u)| *n == best && u.layers == layers);
                        if !same_next {
                            sub.next = Some((
                                best.clone(),
                                Upstream {
                                    layers,
                                    flowing: false,
                                },
                            ));
                            self.send(
                                best,
                                Message::Subscribe {
                                    addr: addr.clone(),
                                    layers,
                                },
                            );
                        }
                        // The current path keeps the layers in step too.
                        let sub = self.subs.get_mut(addr).expect("present");
                        if let Some((n, up)) = sub.upstream.as_mut() {
                            if up.layers != layers {
                                up.layers = layers;
                                let n = n.clone();
                                self.send(
                                    n,
                                    Message::Subscribe {
                                        addr: addr.clone(),
                                        layers,
                                    },
                                );
                            }
                        }
                    }
                    Some(_) if current_ok => {}
                    current => {
                        if in_grace {
                            self.prune(addr);
                            return;
                        }
                        // The current path is gone: switch now (break-before-make).
                        let promoted = sub.next.take().filter(|(n, _)| *n == best);
                        let switched = current.is_some();
                        if let Some((old, _)) = current {
                            debug!(node = %self.cfg.node, %addr, from = %old, to = %best, "failover");
                            self.send(old, Message::Unsubscribe { addr: addr.clone() });
                        }
                        let sub = self.subs.get_mut(addr).expect("present");
                        match promoted {
                            Some((n, up)) => {
                                sub.upstream = Some((n.clone(), up));
                                if up.layers != layers {
                                    sub.upstream = Some((n.clone(), Upstream { layers, ..up }));
                                    self.send(
                                        n,
                                        Message::Subscribe {
                                            addr: addr.clone(),
                                            layers,
                                        },
                                    );
                                }
                            }
                            None => {
                                sub.upstream = Some((
                                    best.clone(),
                                    Upstream {
                                        layers,
                                        flowing: false,
                                    },
                                ));
                                self.send(
                                    best,
                                    Message::Subscribe {
                                        addr: addr.clone(),
                                        layers,
                                    },
                                );
                            }
                        }
                        if switched {
                            self.keyframes_after_switch(now, addr);
                        }
                    }
                }
            }
        }
        self.notify_and_route(addr);
    }
}
