//! Reassembly for local viewers: a remote track's packets put back into whole frames, in order
//! ([`reassemble`]). A gap is waited for (a NACK may bring the packet, see `repair.rs`) up to
//! the path's repair budget; then the frames it broke are given up and the next whole frame is
//! delivered marked as a discontinuity, so the viewers' decoders ask for a keyframe.
//!
//! Works on one track's buffer at a time, with the `now` it is given; it sends nothing.

use std::time::{Duration, Instant};

use super::{RemoteFrame, Track, TrackKey, F_DISCONT, F_FIRST, F_KEY, HISTORY};

/// A packet waiting in a reassembly buffer.
#[derive(Debug)]
pub(super) struct Fragment {
    pub(super) arrived: Instant,
    pub(super) ts: u64,
    pub(super) flags: u8,
    pub(super) marker: bool,
    pub(super) payload: Vec<u8>,
}

/// Adds a packet (extended sequence number `ext`) to the track's reassembly buffer and returns
/// the frames it completes, in order. A gap is waited for up to `wait` (a NACK may bring
/// the packet); then the frames it broke are given up and the next whole frame is delivered
/// marked as a discontinuity. Also returns how many packets the frames hold and how many
/// sequence numbers were given up (missing, or in a frame that was dropped).
pub(super) fn reassemble(
    track: &mut Track,
    key: &TrackKey,
    ext: u64,
    frag: Fragment,
    now: Instant,
    wait: Duration,
) -> (Vec<RemoteFrame>, u64, u64) {
    let mut out = Vec::new();
    let (mut delivered, mut given_up) = (0, 0);
    if track.next.is_none() {
        if frag.flags & F_FIRST == 0 {
            // Joined mid-frame: wait for a frame start.
            track.lost = true;
            return (out, 0, 1);
        }
        track.next = Some(ext);
    }
    if track.next.is_some_and(|n| ext < n) {
        return (out, 0, 0); // too late: its frame was delivered or given up
    }
    track.buf.insert(ext, frag);
    while let Some(next) = track.next {
        // A whole frame at the head?
        let mut end = None;
        let mut s = next;
        while let Some(f) = track.buf.get(&s) {
            if s != next && f.flags & F_FIRST != 0 {
                break;
            }
            if f.marker {
                end = Some(s);
                break;
            }
            s += 1;
        }
        let head_ok = track.buf.get(&next).is_some_and(|f| f.flags & F_FIRST != 0);
        if let (true, Some(end)) = (head_ok, end) {
            let mut data = Vec::new();
            let (mut ts, mut flags) = (0, 0);
            for s in next..=end {
                if let Some(f) = track.buf.remove(&s) {
                    if s == next {
                        (ts, flags) = (f.ts, f.flags);
                    }
                    data.extend_from_slice(&f.payload);
                }
            }
            track.next = Some(end + 1);
            delivered += end + 1 - next;
            out.push(RemoteFrame {
                key: key.clone(),
                codec: track
                    .codec
                    .clone()
                    .unwrap_or_else(|| std::sync::Arc::from(&[][..])),
                time: ts,
                keyframe: flags & F_KEY != 0,
                discontinuity: std::mem::take(&mut track.lost) || flags & F_DISCONT != 0,
                data,
            });
            continue;
        }
        // Incomplete: give up once the oldest packet waiting has waited long enough.
        let oldest = track.buf.values().map(|f| f.arrived).min();
        let overdue = oldest.is_some_and(|t| now.saturating_duration_since(t) >= wait)
            || track.buf.len() > 4 * HISTORY;
        if !overdue {
            break;
        }
        let restart = track
            .buf
            .iter()
            .find(|(s, f)| **s > next && f.flags & F_FIRST != 0)
            .map(|(s, _)| *s);
        track.lost = true;
        match restart {
            Some(r) => {
                given_up += r - next;
                track.buf.retain(|s, _| *s >= r);
                track.next = Some(r);
            }
            None => {
                let last = track.buf.keys().next_back().copied().unwrap_or(next);
                given_up += last + 1 - next;
                track.buf.clear();
                track.next = None;
            }
        }
    }
    (out, delivered, given_up)
}
