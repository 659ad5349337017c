//! How the simulated network carries things: the events of the virtual clock (trunks up and
//! down, control frames, media ticks, router timers), media forwarded along each node's
//! [`Route`] with the "one copy per trunk direction" check, and the routers' outputs carried
//! out.

use super::{key, Ev, Sim, SimHop, SimRoute};
use crate::ids::LayerId;
use crate::router::{Hop, Output, Route, ViewerEvent};
use crate::wire::{encode, FrameDecoder};

impl Sim {
    pub(super) fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::TrunkUp { node, peer, epoch } => {
                if self.link_ok(node, peer, epoch) {
                    self.nodes[node].decoders.insert(peer, FrameDecoder::new());
                    let name = self.names[peer].clone();
                    self.nodes[node].router.trunk_up(now, name);
                    self.drain(node);
                }
            }
            Ev::TrunkDown { node, peer, epoch } => {
                let current = self.links.get(&key(node, peer)).map(|l| l.epoch);
                if current == Some(epoch) {
                    self.nodes[node].decoders.remove(&peer);
                    let name = self.names[peer].clone();
                    self.nodes[node].router.trunk_down(now, &name);
                    self.drain(node);
                }
            }
            Ev::Control {
                from,
                to,
                epoch,
                frame,
            } => {
                if !self.link_ok(from, to, epoch) {
                    return;
                }
                let name = self.names[from].clone();
                let Some(dec) = self.nodes[to].decoders.get_mut(&from) else {
                    return;
                };
                dec.push(&frame);
                let mut msgs = Vec::new();
                while let Ok(Some(m)) = dec.next_message() {
                    msgs.push(m);
                }
                for m in msgs {
                    self.nodes[to].router.handle_message(now, &name, m);
                }
                self.drain(to);
            }
            Ev::Timer { node } => {
                if self.nodes[node].timer == Some(now) {
                    self.nodes[node].timer = None;
                    self.nodes[node].router.handle_timeout(now);
                    self.drain(node);
                }
            }
            Ev::MediaTick => {
                self.tick += 1;
                let seq = self.tick;
                for i in 0..self.nodes.len() {
                    for k in 0..self.nodes[i].published.len() {
                        let (id, layers) = self.nodes[i].published[k];
                        for l in layers.iter() {
                            self.forward(i, SimHop::Local, id, l.0, seq);
                        }
                    }
                }
                if seq.is_multiple_of(50) {
                    self.seen.retain(|k| k.4 + 50 > seq);
                }
                let at = now + self.cfg.media_interval;
                self.push(at, Ev::MediaTick);
            }
            Ev::Media {
                from,
                to,
                epoch,
                addr,
                layer,
                seq,
            } => {
                if self.link_ok(from, to, epoch) {
                    self.forward(to, SimHop::Node(from), addr, layer, seq);
                }
            }
        }
    }

    /// Node `i` got packet (`addr`, `layer`, `seq`) from `from`: forward along its route.
    fn forward(&mut self, i: usize, from: SimHop, addr: u32, layer: u8, seq: u64) {
        let now = self.now;
        let Some(route) = self.nodes[i].routes.get(&addr) else {
            if from != SimHop::Local {
                self.stats.unwanted += 1;
            }
            return;
        };
        if route.source != Some(from) && route.next == Some(from) {
            // The new path of a make-before-break switch delivers: switch now.
            let a = self.addrs[addr as usize].clone();
            self.nodes[i].router.next_path_ready(now, &a);
            self.drain(i);
        }
        let Some(route) = self.nodes[i].routes.get(&addr) else {
            return;
        };
        if route.source != Some(from) {
            if from != SimHop::Local {
                self.stats.off_route += 1;
            }
            return;
        }
        let lid = LayerId(layer);
        let outs: Vec<SimHop> = route
            .outputs
            .iter()
            .filter(|(_, l)| l.contains(lid))
            .map(|(h, _)| *h)
            .collect();
        let last = self.nodes[i].forwarded.entry((addr, layer)).or_insert(0);
        if seq <= *last {
            self.stats.repeated += 1;
            return;
        }
        *last = seq;
        if outs.is_empty() && from != SimHop::Local {
            self.stats.unwanted += 1;
        }
        for h in outs {
            match h {
                SimHop::Local => {
                    let vs = self.nodes[i]
                        .viewers
                        .get(&addr)
                        .cloned()
                        .unwrap_or_default();
                    for v in vs {
                        let viewer = &mut self.viewers[v];
                        if viewer.layer != lid || !viewer.active {
                            continue;
                        }
                        if let Some(last) = viewer.last_packet {
                            viewer.max_gap = viewer.max_gap.max(now - last);
                        }
                        viewer.first_packet.get_or_insert(now);
                        viewer.last_packet = Some(now);
                        viewer.packets += 1;
                    }
                }
                SimHop::Node(p) => {
                    let Some(link) = self.links.get(&key(i, p)).copied() else {
                        continue;
                    };
                    if !self.seen.insert((i as u32, p as u32, addr, layer, seq)) {
                        self.stats.duplicates += 1;
                    }
                    self.stats.trunk_packets += 1;
                    *self.per_direction.entry((i, p)).or_default() += 1;
                    if link.up {
                        let at = now + self.cfg.hop_delay;
                        self.push(
                            at,
                            Ev::Media {
                                from: i,
                                to: p,
                                epoch: link.epoch,
                                addr,
                                layer,
                                seq,
                            },
                        );
                    }
                }
            }
        }
    }

    fn to_sim_route(&self, r: &Route) -> SimRoute {
        let hop = |h: &Hop| match h {
            Hop::Local => SimHop::Local,
            Hop::Trunk(n) => SimHop::Node(self.index[n]),
        };
        SimRoute {
            source: r.source.as_ref().map(hop),
            next: r.next.as_ref().map(hop),
            outputs: r.outputs.iter().map(|(h, l)| (hop(h), *l)).collect(),
        }
    }

    /// Carries out everything node `i`'s router asked for.
    pub(super) fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some(out) = self.nodes[i].router.poll_output() {
            match out {
                Output::Send { trunk, msg } => {
                    let Some(&p) = self.index.get(&trunk) else {
                        continue;
                    };
                    let frame = encode(&msg);
                    self.stats.control_messages += 1;
                    self.stats.control_bytes += frame.len() as u64;
                    if let Some(link) = self.links.get(&key(i, p)).copied() {
                        if link.up {
                            let at = now + self.cfg.hop_delay;
                            self.push(
                                at,
                                Ev::Control {
                                    from: i,
                                    to: p,
                                    epoch: link.epoch,
                                    frame,
                                },
                            );
                        }
                    }
                }
                Output::Route { addr, route } => {
                    let id = self.addr_id(&addr);
                    if route == Route::default() {
                        self.nodes[i].routes.remove(&id);
                    } else {
                        let r = self.to_sim_route(&route);
                        self.nodes[i].routes.insert(id, r);
                    }
                }
                Output::PublisherKeyframe { .. } => self.stats.publisher_keyframes += 1,
                Output::Viewer { viewer, event, .. } => {
                    let v = &mut self.viewers[viewer.0 as usize];
                    match event {
                        ViewerEvent::Flowing => {
                            v.flowing_at.get_or_insert(now);
                        }
                        ViewerEvent::Failed(_) => v.failed = true,
                        ViewerEvent::Waiting => {}
                    }
                }
            }
        }
        if let Some(t) = self.nodes[i].router.poll_timeout() {
            if self.nodes[i].timer.is_none_or(|cur| t < cur) {
                self.nodes[i].timer = Some(t);
                self.push(t, Ev::Timer { node: i });
            }
        }
    }
}
