//! Keyframe requests: from viewers and downstream trunks, forwarded upstream (or to the local
//! publisher) at most once per
//! [`RouterConfig::keyframe_min_interval`](super::RouterConfig::keyframe_min_interval) per layer;
//! forced after a path switch.

use std::time::Instant;

use super::{Output, Router};
use crate::ids::{LayerId, StreamAddr};
use crate::wire::Message;

impl Router {
    pub(super) fn keyframe(
        &mut self,
        now: Instant,
        addr: &StreamAddr,
        layer: LayerId,
        force: bool,
    ) {
        let key = (addr.clone(), layer);
        if !force {
            if let Some(last) = self.keyframe_last.get(&key) {
                if now.saturating_duration_since(*last) < self.cfg.keyframe_min_interval {
                    return;
                }
            }
        }
        let Some(sub) = self.subs.get(addr) else {
            return;
        };
        if sub.local {
            self.keyframe_last.insert(key, now);
            self.out.push_back(Output::PublisherKeyframe {
                stream: addr.stream.clone(),
                layer,
            });
        } else if let Some((n, _)) = &sub.upstream {
            let n = n.clone();
            self.keyframe_last.insert(key, now);
            self.send(
                n,
                Message::KeyframeRequest {
                    addr: addr.clone(),
                    layer,
                },
            );
        }
    }

    pub(super) fn keyframes_after_switch(&mut self, now: Instant, addr: &StreamAddr) {
        let needed = self.subs.get(addr).map(|s| s.needed()).unwrap_or_default();
        for l in needed.iter() {
            self.keyframe(now, addr, l, true);
        }
    }
}
