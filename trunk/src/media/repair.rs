//! Trunk repair, hop by hop: a gap in an incoming flow is asked for at once with a `Nack`
//! ([`TrunkPlane::track_loss`]), and again while it stays missing, each [`nack_retry`] of the
//! trunk's round trip, up to [`NACK_TRIES`] in all; a `Nack` from downstream is answered from
//! the flow's [`History`] ([`TrunkPlane::answer_nack`]). How long a receiver waits for a gap
//! before giving its frames up is the path's repair budget ([`hop_repair`] summed along the
//! path, at least [`REPAIR_WAIT`]); the waiting itself is the reassembler's.
//!
//! No timers of its own: repeats are looked at when the flow's next datagram arrives, with the
//! `now` it comes with.

use std::time::{Duration, Instant};

use super::{extend16, TrunkOutput, TrunkPlane};
use crate::wire::Message;
use crate::NodeName;

/// A gap in a reassembly buffer is waited for at least this long (a NACK and its retransmission
/// need one hop round trip) before the frames around it are given up; longer when the path's
/// repair time says so (see [`hop_repair`]).
pub const REPAIR_WAIT: Duration = Duration::from_millis(250);
/// Datagrams kept per outgoing flow for answering NACKs.
pub const HISTORY: usize = 512;
/// Most sequence numbers asked for in one NACK (a longer gap is an outage, not loss).
pub(super) const NACK_MAX: u64 = 64;
/// How often a missing packet is asked for in all (the first NACK and repeats while it stays
/// missing, each [`nack_retry`] after the last; a retransmission can be lost too).
pub const NACK_TRIES: u8 = 3;
/// Round-trip time assumed for a trunk until [`TrunkPlane::set_rtt`] tells it.
pub const DEFAULT_RTT: Duration = Duration::from_millis(100);

/// The wait before asking again for a packet still missing: 1.5 round trips, at least 20 ms.
pub fn nack_retry(rtt: Duration) -> Duration {
    (rtt * 3 / 2).max(Duration::from_millis(20))
}

/// How long one hop with round-trip time `rtt` may take to repair a lost packet: the NACK and
/// its answer (one round trip) with a quarter to spare, plus 30 ms. Summed along a path (the
/// `repair_ms` of `Flow`), it is how long a receiver waits for a gap before giving its frames
/// up, at least [`REPAIR_WAIT`]: on a satellite hop (600 ms round trip) a loss is repaired in
/// ~0.8 s instead of given up at 250 ms and answered with a keyframe.
pub fn hop_repair(rtt: Duration) -> Duration {
    rtt * 5 / 4 + Duration::from_millis(30)
}

/// Sent datagrams of one outgoing flow, by sequence number.
#[derive(Debug)]
pub(super) struct History {
    slots: Vec<Option<(u16, Vec<u8>)>>,
}

impl History {
    pub(super) fn new() -> History {
        History {
            slots: (0..HISTORY).map(|_| None).collect(),
        }
    }
    pub(super) fn put(&mut self, seq: u16, d: Vec<u8>) {
        self.slots[usize::from(seq) % HISTORY] = Some((seq, d));
    }
    pub(super) fn get(&self, seq: u16) -> Option<&Vec<u8>> {
        match &self.slots[usize::from(seq) % HISTORY] {
            Some((s, d)) if *s == seq => Some(d),
            _ => None,
        }
    }
}

impl TrunkPlane {
    /// Notes the packet `seq` of `flow` from `from`: a gap before it is NACKed at once, and
    /// packets still missing after an earlier NACK are asked for again when due.
    pub(super) fn track_loss(&mut self, now: Instant, from: &NodeName, flow: u16, seq: u16) {
        let fk = (from.clone(), flow);
        let last = self.rx_highest.get(&fk).copied();
        let ext = extend16(last, seq);
        if last.is_none_or(|l| ext > l) {
            if let Some(l) = last.filter(|l| ext > l + 1 && ext - l - 1 <= NACK_MAX) {
                let seqs: Vec<u16> = (l + 1..ext).map(|s| s as u16).collect();
                let pending = self.nacked.entry(fk.clone()).or_default();
                for s in l + 1..ext {
                    pending.insert(s, (now, 1));
                }
                self.counters.nacks_sent += 1;
                self.out.push_back(TrunkOutput::Control {
                    to: from.clone(),
                    msg: Message::Nack { flow, seqs },
                });
            }
            match self.rx_highest.get_mut(&fk) {
                Some(h) => *h = ext,
                None => {
                    self.rx_highest.insert(fk.clone(), ext);
                }
            }
        } else if let Some(p) = self.nacked.get_mut(&fk) {
            p.remove(&ext);
        }
        // Nothing outstanding on this flow (the usual case): done.
        let Some(pending) = self.nacked.get_mut(&fk).filter(|p| !p.is_empty()) else {
            return;
        };
        let retry = nack_retry(self.rtt.get(from).copied().unwrap_or(DEFAULT_RTT));
        let mut again = Vec::new();
        pending.retain(|s, (at, tries)| {
            if now.saturating_duration_since(*at) < retry {
                return true;
            }
            if *tries >= NACK_TRIES {
                return false;
            }
            *at = now;
            *tries += 1;
            again.push(*s as u16);
            true
        });
        if !again.is_empty() {
            self.counters.nacks_sent += 1;
            self.counters.nacks_repeated += 1;
            self.out.push_back(TrunkOutput::Control {
                to: from.clone(),
                msg: Message::Nack { flow, seqs: again },
            });
        }
    }

    /// Resends to `from` the packets of our `flow` it asks for, those still in the history.
    pub(super) fn answer_nack(&mut self, from: &NodeName, flow: u16, seqs: &[u16]) {
        let Some(h) = self.history.get(&(from.clone(), flow)) else {
            return;
        };
        for s in seqs {
            if let Some(d) = h.get(*s) {
                self.counters.retransmits += 1;
                self.counters.datagrams_out += 1;
                self.counters.bytes_out += d.len() as u64;
                self.out.push_back(TrunkOutput::Datagram {
                    to: from.clone(),
                    data: d.clone(),
                });
            }
        }
    }
}
