//! On-demand pull and prune: the upstream's answers (`Subscribed`), demand that drops (a local
//! viewer or a downstream trunk leaving: grace period or prune at once), and what viewers,
//! downstream trunks and the shell's forwarding table are told when a stream's state changes.

use std::time::{Duration, Instant};

use super::{Hop, Output, Route, Router, ViewerEvent};
use crate::ids::{LayerSet, NodeName, StreamAddr};
use crate::wire::Message;

impl Router {
    pub(super) fn unsubscribe_from(&mut self, now: Instant, peer: &NodeName, addr: &StreamAddr) {
        if let Some(sub) = self.subs.get_mut(addr) {
            if sub.downstream.remove(peer).is_some() {
                self.dirty_subs.insert(addr.clone());
                self.demand_dropped(now, addr, false);
            }
        }
    }

    /// Demand for `addr` went down; if none is left, start the grace period (a local viewer
    /// left) or prune now (a downstream trunk left; it waited its own grace).
    pub(super) fn demand_dropped(&mut self, now: Instant, addr: &StreamAddr, viewer_left: bool) {
        let Some(sub) = self.subs.get_mut(addr) else {
            return;
        };
        if !sub.is_empty() || sub.idle_deadline.is_some() {
            return;
        }
        if viewer_left && !sub.local && self.cfg.grace > Duration::ZERO {
            let t = now + self.cfg.grace;
            sub.idle_deadline = Some(t);
            self.grace_timers.insert((t, addr.clone()));
        } else {
            self.prune(addr);
        }
    }

    pub(super) fn prune(&mut self, addr: &StreamAddr) {
        let Some(sub) = self.subs.remove(addr) else {
            return;
        };
        self.dirty_subs.remove(addr);
        for (n, _) in sub.upstream.iter().chain(sub.next.iter()) {
            self.send(n.clone(), Message::Unsubscribe { addr: addr.clone() });
        }
        if sub.route != Route::default() {
            self.out.push_back(Output::Route {
                addr: addr.clone(),
                route: Route::default(),
            });
        }
    }

    pub(super) fn subscribed(&mut self, now: Instant, peer: &NodeName, addr: StreamAddr) {
        let Some(sub) = self.subs.get_mut(&addr) else {
            self.send(peer.clone(), Message::Unsubscribe { addr });
            return;
        };
        if let Some((n, up)) = sub.upstream.as_mut().filter(|(n, _)| n == peer) {
            let _ = n;
            up.flowing = true;
        } else if let Some((_, up)) = sub.next.as_mut().filter(|(n, _)| n == peer) {
            // Make-before-break: the new path is complete. Ask it for keyframes; the switch
            // happens when it delivers (`next_path_ready`) or at the switch timeout.
            up.flowing = true;
            self.switch_timers
                .insert((now + Self::SWITCH_TIMEOUT, addr.clone()));
            let needed = sub.needed();
            for l in needed.iter() {
                let key = (addr.clone(), l);
                self.keyframe_last.insert(key, now);
                self.send(
                    peer.clone(),
                    Message::KeyframeRequest {
                        addr: addr.clone(),
                        layer: l,
                    },
                );
            }
        } else {
            self.send(peer.clone(), Message::Unsubscribe { addr });
            return;
        }
        self.dirty_subs.insert(addr);
    }

    pub(super) fn notify_and_route(&mut self, addr: &StreamAddr) {
        let Some(sub) = self.subs.get_mut(addr) else {
            return;
        };
        let flowing = sub.flowing();
        sub.flowed |= flowing;
        let mut events = Vec::new();
        let mut acks = Vec::new();
        for (v, (_, told)) in sub.viewers.iter_mut() {
            if flowing && !*told {
                *told = true;
                events.push((*v, ViewerEvent::Flowing));
            } else if !flowing && *told && sub.upstream.is_none() {
                *told = false;
                events.push((*v, ViewerEvent::Waiting));
            }
        }
        for (d, (_, acked)) in sub.downstream.iter_mut() {
            if flowing && !*acked {
                *acked = true;
                acks.push(d.clone());
            }
        }
        let source = if sub.local {
            Some(Hop::Local)
        } else {
            sub.upstream.as_ref().map(|(n, _)| Hop::Trunk(n.clone()))
        };
        let mut outputs = Vec::new();
        let local = sub
            .viewers
            .values()
            .fold(LayerSet::EMPTY, |a, (l, _)| a.union(*l));
        if !local.is_empty() {
            outputs.push((Hop::Local, local));
        }
        for (d, (l, _)) in &sub.downstream {
            outputs.push((Hop::Trunk(d.clone()), *l));
        }
        let next = sub
            .next
            .as_ref()
            .filter(|(_, u)| u.flowing)
            .map(|(n, _)| Hop::Trunk(n.clone()));
        let route = Route {
            source,
            outputs,
            next,
        };
        let changed = sub.route != route;
        if changed {
            sub.route = route.clone();
        }
        for (viewer, event) in events {
            self.out.push_back(Output::Viewer {
                viewer,
                addr: addr.clone(),
                event,
            });
        }
        for d in acks {
            self.send(d, Message::Subscribed { addr: addr.clone() });
        }
        if changed {
            self.out.push_back(Output::Route {
                addr: addr.clone(),
                route,
            });
        }
    }
}
