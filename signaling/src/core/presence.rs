//! Presence and positions: every unit (subject) that has had a session, whether it is online,
//! when it was last seen, its last position, and the coalescing of position fan-outs.
//!
//! Owns the units. Whether a subject *is* online is a fact about its sessions, so the dispatch
//! asks the sessions and tells this component ([`Presence::set_online`]); this component decides
//! whether that is a change worth announcing, and when a held position is due.

use std::collections::BTreeMap;

use crate::auth::{Action, Role};
use crate::ids::Subject;
use crate::proto::Position;
use crate::time::UnixMs;

struct Unit {
    role: Role,
    online: bool,
    last_seen: UnixMs,
    position: Option<Position>,
    /// A report not fanned out yet (coalesced).
    pending: Option<Position>,
    last_fanout: Option<UnixMs>,
}

/// A unit as the read views need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// The subject.
    pub subject: Subject,
    /// Role of its latest session.
    pub role: Role,
    /// Its latest message.
    pub last_seen: UnixMs,
    /// Its newest position.
    pub position: Option<Position>,
}

/// A presence change to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The unit's role.
    pub role: Role,
    /// Online now.
    pub online: bool,
    /// Its latest message.
    pub last_seen: UnixMs,
}

/// Every unit of the node.
pub struct Presence {
    position_interval_ms: u64,
    units: BTreeMap<Subject, Unit>,
}

impl Presence {
    /// No units yet; positions fan out at most once per `position_interval_ms` per subject.
    pub fn new(position_interval_ms: u64) -> Presence {
        Presence {
            position_interval_ms,
            units: BTreeMap::new(),
        }
    }

    /// Whether `sub` ever had a session since the node started.
    pub fn knows(&self, sub: &Subject) -> bool {
        self.units.contains_key(sub)
    }

    /// A session of `sub` with `role` started; true when the unit is new.
    pub fn arrived(&mut self, now: UnixMs, sub: &Subject, role: Role) -> bool {
        let mut new = false;
        let u = self.units.entry(sub.clone()).or_insert_with(|| {
            new = true;
            Unit {
                role,
                online: false,
                last_seen: now,
                position: None,
                pending: None,
                last_fanout: None,
            }
        });
        u.role = role;
        new
    }

    /// `sub` sent something.
    pub fn seen(&mut self, now: UnixMs, sub: &Subject) {
        if let Some(u) = self.units.get_mut(sub) {
            u.last_seen = now;
        }
    }

    /// Records whether `sub` is online; returns the change when it is one.
    pub fn set_online(&mut self, sub: &Subject, online: bool) -> Option<Change> {
        let u = self.units.get_mut(sub)?;
        if u.online == online {
            return None;
        }
        u.online = online;
        Some(Change {
            role: u.role,
            online,
            last_seen: u.last_seen,
        })
    }

    /// The role of `sub`'s latest session.
    pub fn role_of(&self, sub: &Subject) -> Option<Role> {
        self.units.get(sub).map(|u| u.role)
    }

    /// Whether `sub` may receive incident traffic: unknown subjects are given the benefit of the
    /// doubt (an assigned subject that never connected), known ones by their role.
    pub fn reads_incidents(&self, sub: &Subject) -> bool {
        self.units
            .get(sub)
            .is_none_or(|u| u.role.may(Action::ReadIncident))
    }

    /// `sub`'s newest position.
    pub fn position_of(&self, sub: &Subject) -> Option<Position> {
        self.units.get(sub).and_then(|u| u.position.clone())
    }

    /// Every admin and commander unit (an SOS reaches them all).
    pub fn commanders(&self) -> impl Iterator<Item = &Subject> {
        self.units
            .iter()
            .filter(|(_, u)| matches!(u.role, Role::Admin | Role::Commander))
            .map(|(s, _)| s)
    }

    /// A position report of `sub`: stored at once; the position to fan out now if its interval
    /// has passed (else it is held and [`Presence::due`] releases it).
    pub fn report(
        &mut self,
        now: UnixMs,
        sub: &Subject,
        pos: Position,
    ) -> Option<(Role, Position)> {
        let u = self.units.get_mut(sub)?;
        u.position = Some(pos.clone());
        u.pending = Some(pos);
        let due = u
            .last_fanout
            .is_none_or(|t| now >= t.plus_ms(self.position_interval_ms));
        if due {
            self.fan_out(now, sub)
        } else {
            None
        }
    }

    fn fan_out(&mut self, now: UnixMs, sub: &Subject) -> Option<(Role, Position)> {
        let u = self.units.get_mut(sub)?;
        let pos = u.pending.take()?;
        u.last_fanout = Some(now);
        u.position = Some(pos.clone());
        Some((u.role, pos))
    }

    /// Held positions whose interval has passed, to fan out now.
    pub fn due(&mut self, now: UnixMs) -> Vec<(Subject, Role, Position)> {
        let interval = self.position_interval_ms;
        let due: Vec<Subject> = self
            .units
            .iter()
            .filter(|(_, u)| {
                u.pending.is_some() && u.last_fanout.is_none_or(|t| now >= t.plus_ms(interval))
            })
            .map(|(s, _)| s.clone())
            .collect();
        due.into_iter()
            .filter_map(|s| self.fan_out(now, &s).map(|(r, p)| (s, r, p)))
            .collect()
    }

    /// When the next held position is due.
    pub fn next_due(&self) -> Option<UnixMs> {
        self.units
            .values()
            .filter(|u| u.pending.is_some())
            .map(|u| {
                u.last_fanout
                    .map_or(UnixMs(0), |t| t.plus_ms(self.position_interval_ms))
            })
            .min()
    }

    /// Every unit, by subject.
    pub fn people(&self) -> impl Iterator<Item = Person> + '_ {
        self.units.iter().map(|(s, u)| Person {
            subject: s.clone(),
            role: u.role,
            last_seen: u.last_seen,
            position: u.position.clone(),
        })
    }
}
