//! The per-subject cap on media peers: how many WHIP and WHEP sessions one token subject may
//! hold at once (`[http] media_peers_per_subject`). Beyond it `POST /whip/…` and `POST /whep/…`
//! answer 429 `too_many_sessions` (docs/api.md) until one of the subject's sessions ends.
//!
//! The table is kept by the HTTP handlers: a slot is reserved before the offer is read and
//! committed with the session id the media task answers. Sessions end by `DELETE /session/{id}`
//! ([`MediaPeers::ended`]) or inside the media task (ICE timeout, takeover); the latter are
//! found when the subject reaches its cap, by asking the media task which of its sessions are
//! still alive. Nothing here touches media.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use signaling::ids::Subject;

use crate::media::MediaHandle;

/// The table of media sessions per subject.
#[derive(Debug)]
pub struct MediaPeers {
    limit: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_subject: HashMap<Subject, Held>,
    owner: HashMap<String, Subject>,
}

#[derive(Debug, Default)]
struct Held {
    sessions: Vec<String>,
    /// Slots reserved by requests still being answered.
    pending: usize,
}

/// The subject holds `limit` sessions already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The cap.
    pub limit: usize,
}

/// A reserved place for one more session; freed on drop unless [`Slot::commit`]ted.
#[derive(Debug)]
pub struct Slot {
    peers: Arc<MediaPeers>,
    sub: Subject,
    done: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MediaPeers {
    /// A table allowing `limit` sessions per subject (at least 1).
    pub fn new(limit: usize) -> Arc<MediaPeers> {
        Arc::new(MediaPeers {
            limit: limit.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The cap.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Sessions `sub` holds or is being answered for.
    pub fn held(&self, sub: &Subject) -> usize {
        lock(&self.inner)
            .by_subject
            .get(sub)
            .map_or(0, |h| h.sessions.len() + h.pending)
    }

    fn try_reserve(self: &Arc<Self>, sub: &Subject) -> Option<Slot> {
        let mut inner = lock(&self.inner);
        let held = inner.by_subject.entry(sub.clone()).or_default();
        if held.sessions.len() + held.pending >= self.limit {
            return None;
        }
        held.pending += 1;
        Some(Slot {
            peers: self.clone(),
            sub: sub.clone(),
            done: false,
        })
    }

    /// Reserves a slot for one more session of `sub`; at the cap, first forgets the sessions
    /// the media task no longer has.
    pub async fn reserve(
        self: &Arc<Self>,
        sub: &Subject,
        media: &MediaHandle,
    ) -> Result<Slot, Full> {
        if let Some(slot) = self.try_reserve(sub) {
            return Ok(slot);
        }
        let ids = lock(&self.inner)
            .by_subject
            .get(sub)
            .map(|h| h.sessions.clone())
            .unwrap_or_default();
        if let Ok(alive) = media.alive(ids.clone()).await {
            for (id, alive) in ids.iter().zip(alive) {
                if !alive {
                    self.ended(id);
                }
            }
        }
        self.try_reserve(sub).ok_or(Full { limit: self.limit })
    }

    /// The session `session_id` ended (`DELETE /session/{id}`).
    pub fn ended(&self, session_id: &str) {
        let mut inner = lock(&self.inner);
        let Some(sub) = inner.owner.remove(session_id) else {
            return;
        };
        if let Some(held) = inner.by_subject.get_mut(&sub) {
            held.sessions.retain(|s| s != session_id);
            if held.sessions.is_empty() && held.pending == 0 {
                inner.by_subject.remove(&sub);
            }
        }
    }
}

impl Slot {
    /// The session was created: it holds this slot until it ends.
    pub fn commit(mut self, session_id: &str) {
        self.done = true;
        let mut inner = lock(&self.peers.inner);
        let held = inner.by_subject.entry(self.sub.clone()).or_default();
        held.pending = held.pending.saturating_sub(1);
        held.sessions.push(session_id.to_owned());
        inner.owner.insert(session_id.to_owned(), self.sub.clone());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = lock(&self.peers.inner);
        if let Some(held) = inner.by_subject.get_mut(&self.sub) {
            held.pending = held.pending.saturating_sub(1);
            if held.sessions.is_empty() && held.pending == 0 {
                inner.by_subject.remove(&self.sub);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_at_its_cap_gets_a_slot_again_once_a_session_ends() {
        let peers = MediaPeers::new(2);
        let (a, b): (Subject, Subject) = ("off-a".parse().unwrap(), "off-b".parse().unwrap());
        peers.try_reserve(&a).unwrap().commit("s1");
        let pending = peers.try_reserve(&a).unwrap();
        assert!(peers.try_reserve(&a).is_none(), "one held, one pending");
        assert!(
            peers.try_reserve(&b).is_some(),
            "another subject is not affected"
        );
        drop(pending);
        peers.try_reserve(&a).unwrap().commit("s2");
        assert!(peers.try_reserve(&a).is_none());
        assert_eq!(peers.held(&a), 2);
        peers.ended("s1");
        peers.ended("unknown");
        assert_eq!(peers.held(&a), 1);
        assert!(peers.try_reserve(&a).is_some());
    }
}
