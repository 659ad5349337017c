//! Incidents: the standing `duty` incident, created and token-named ones, their assignments,
//! and **membership** — which session is in which incident.
//!
//! Owns every incident's state and the membership of every live session (with the subject and
//! role it joined as), so it alone answers "who is in incident X" and "whom does this reach".
//! It does not send anything or touch the store: it returns the rows to persist and the facts
//! (first of its subject to join, last to leave) from which the dispatch makes events and logs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::auth::{Claims, Role};
use crate::ids::{IncidentId, NodeId, Subject};
use crate::proto::{ErrorCode, IncidentState, IncidentView, ProtoError, RequestId};
use crate::store::IncidentRow;
use crate::time::UnixMs;

/// The standing incident of every node.
pub const DUTY: &str = "duty";

/// `duty` as an id.
pub fn duty() -> IncidentId {
    IncidentId::parse(DUTY).expect("`duty` is a valid incident id")
}

/// Roles that run consoles (the wall, the command post) and so receive presence and membership
/// events: admin, commander, operator, viewer. Field roles (officer, pilot, device) do not; they
/// can ask for `units`.
pub fn is_console(role: Role) -> bool {
    matches!(
        role,
        Role::Admin | Role::Commander | Role::Operator | Role::Viewer
    )
}

struct Incident {
    name: String,
    open: bool,
    created_by: String,
    created_at: UnixMs,
    closed_at: Option<UnixMs>,
    assigned: BTreeSet<Subject>,
}

/// A live session as membership knows it.
struct Member {
    subject: Subject,
    role: Role,
    incidents: BTreeSet<IncidentId>,
}

/// Every incident of the node and who is in it.
pub struct Incidents {
    node: NodeId,
    incidents: BTreeMap<IncidentId, Incident>,
    next: u64,
    /// Sessions in each incident.
    members: HashMap<IncidentId, BTreeSet<String>>,
    /// How many sessions of each subject are in each incident.
    subjects: HashMap<IncidentId, HashMap<Subject, usize>>,
    /// Every live session.
    sessions: HashMap<String, Member>,
}

fn not_found(re: Option<RequestId>, id: &IncidentId) -> ProtoError {
    ProtoError::new(re, ErrorCode::NotFound, format!("no incident {id}"))
}

fn closed(re: Option<RequestId>, id: &IncidentId) -> ProtoError {
    ProtoError::new(re, ErrorCode::Conflict, format!("incident {id} is closed"))
}

impl Incidents {
    /// The incidents stored in `rows`, and `duty`. Returns the row of `duty` when it had to be
    /// created (to persist), and how many stored rows were unreadable.
    pub fn load(
        node: NodeId,
        rows: Vec<IncidentRow>,
        now: UnixMs,
    ) -> (Incidents, Option<IncidentRow>, u64) {
        let mut bad = 0;
        let mut incidents = BTreeMap::new();
        for r in rows {
            let Ok(id) = IncidentId::parse(&r.id) else {
                bad += 1;
                continue;
            };
            incidents.insert(
                id,
                Incident {
                    name: r.name,
                    open: r.open,
                    created_by: r.created_by,
                    created_at: r.created_at,
                    closed_at: r.closed_at,
                    assigned: r
                        .assigned
                        .iter()
                        .filter_map(|s| Subject::parse(s).ok())
                        .collect(),
                },
            );
        }
        let mut me = Incidents {
            next: incidents.len() as u64 + 1,
            node,
            incidents,
            members: HashMap::new(),
            subjects: HashMap::new(),
            sessions: HashMap::new(),
        };
        let created = if me.incidents.contains_key(&duty()) {
            None
        } else {
            me.insert(duty(), "Standing duty".into(), me.node.to_string(), now);
            me.row(&duty())
        };
        me.next = me.incidents.len() as u64 + 1;
        (me, created, bad)
    }

    fn insert(&mut self, id: IncidentId, name: String, by: String, now: UnixMs) {
        self.incidents.insert(
            id,
            Incident {
                name,
                open: true,
                created_by: by,
                created_at: now,
                closed_at: None,
                assigned: BTreeSet::new(),
            },
        );
    }

    /// The row to persist for `id` (without its assignments, which are stored one by one).
    pub fn row(&self, id: &IncidentId) -> Option<IncidentRow> {
        let inc = self.incidents.get(id)?;
        Some(IncidentRow {
            id: id.to_string(),
            name: inc.name.clone(),
            open: inc.open,
            created_by: inc.created_by.clone(),
            created_at: inc.created_at,
            closed_at: inc.closed_at,
            assigned: Vec::new(),
        })
    }

    /// Whether incident `id` exists.
    pub fn exists(&self, id: &IncidentId) -> bool {
        self.incidents.contains_key(id)
    }

    /// Whether incident `id` exists and is open.
    pub fn is_open(&self, id: &IncidentId) -> bool {
        self.incidents.get(id).is_some_and(|i| i.open)
    }

    /// Creates the incident a token names if the node does not know it; true when created.
    pub fn ensure_named(&mut self, now: UnixMs, id: &IncidentId) -> bool {
        if self.incidents.contains_key(id) {
            return false;
        }
        self.insert(id.clone(), id.to_string(), self.node.to_string(), now);
        true
    }

    /// The incidents a new session of `claims` starts in: the open ones its token grants or its
    /// subject is assigned to, else `duty`.
    pub fn initial(&self, claims: &Claims) -> BTreeSet<IncidentId> {
        let mut out: BTreeSet<IncidentId> = claims
            .incidents
            .iter()
            .filter(|i| self.is_open(i))
            .cloned()
            .collect();
        for (id, inc) in &self.incidents {
            if inc.open && inc.assigned.contains(&claims.sub) {
                out.insert(id.clone());
            }
        }
        if out.is_empty() {
            out.insert(duty());
        }
        out
    }

    /// Whether `claims` may access (join, read) incident `id`.
    pub fn may_access(&self, claims: &Claims, id: &IncidentId) -> bool {
        if matches!(claims.role, Role::Admin | Role::Commander) {
            return true;
        }
        id.as_str() == DUTY
            || claims.incidents.contains(id)
            || self
                .incidents
                .get(id)
                .is_some_and(|i| i.assigned.contains(&claims.sub))
    }

    /// `not_found` if there is no incident `id`, `forbidden` if `claims` may not access it.
    pub fn readable(
        &self,
        re: Option<RequestId>,
        claims: &Claims,
        id: &IncidentId,
    ) -> Result<(), ProtoError> {
        if !self.incidents.contains_key(id) {
            return Err(not_found(re, id));
        }
        if !self.may_access(claims, id) {
            return Err(ProtoError::new(
                re,
                ErrorCode::Forbidden,
                format!("not a member of incident {id}"),
            ));
        }
        Ok(())
    }

    /// `join`'s checks, in order: the incident exists, is accessible, is open.
    pub fn may_join(
        &self,
        re: RequestId,
        claims: &Claims,
        id: &IncidentId,
    ) -> Result<(), ProtoError> {
        self.readable(Some(re), claims, id)?;
        if !self.is_open(id) {
            return Err(closed(Some(re), id));
        }
        Ok(())
    }

    /// `incident_create`: a new open incident named `name`, with the given id or the next
    /// `inc-N`. Returns its id.
    pub fn create(
        &mut self,
        now: UnixMs,
        re: RequestId,
        id: Option<IncidentId>,
        name: &str,
        by: &Subject,
    ) -> Result<IncidentId, ProtoError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ProtoError::new(
                Some(re),
                ErrorCode::BadRequest,
                "name must be 1..=200 characters",
            ));
        }
        let id = match id {
            Some(i) if self.incidents.contains_key(&i) => {
                return Err(ProtoError::new(
                    Some(re),
                    ErrorCode::Conflict,
                    format!("incident {i} exists"),
                ))
            }
            Some(i) => i,
            None => loop {
                let cand = IncidentId::parse(&format!("inc-{}", self.next))
                    .expect("generated ids are valid");
                self.next += 1;
                if !self.incidents.contains_key(&cand) {
                    break cand;
                }
            },
        };
        self.insert(id.clone(), name.to_owned(), by.to_string(), now);
        Ok(id)
    }

    /// `incident_close`: closes an open incident other than `duty`. Returns the sessions that
    /// were in it (they must leave it).
    pub fn close(
        &mut self,
        now: UnixMs,
        re: RequestId,
        id: &IncidentId,
    ) -> Result<Vec<String>, ProtoError> {
        if id.as_str() == DUTY {
            return Err(ProtoError::new(
                Some(re),
                ErrorCode::Conflict,
                "the standing duty incident cannot be closed",
            ));
        }
        let inc = self
            .incidents
            .get_mut(id)
            .ok_or_else(|| not_found(Some(re), id))?;
        if !inc.open {
            return Err(ProtoError::new(
                Some(re),
                ErrorCode::Conflict,
                format!("incident {id} is already closed"),
            ));
        }
        inc.open = false;
        inc.closed_at = Some(now);
        Ok(self.members_of(id))
    }

    /// `assign`: true when `subject` was not assigned yet.
    pub fn assign(
        &mut self,
        re: RequestId,
        id: &IncidentId,
        subject: &Subject,
    ) -> Result<bool, ProtoError> {
        let inc = self
            .incidents
            .get_mut(id)
            .ok_or_else(|| not_found(Some(re), id))?;
        if !inc.open {
            return Err(closed(Some(re), id));
        }
        Ok(inc.assigned.insert(subject.clone()))
    }

    /// `unassign` (also on closed incidents).
    pub fn unassign(
        &mut self,
        re: RequestId,
        id: &IncidentId,
        subject: &Subject,
    ) -> Result<(), ProtoError> {
        let inc = self
            .incidents
            .get_mut(id)
            .ok_or_else(|| not_found(Some(re), id))?;
        if !inc.assigned.remove(subject) {
            return Err(ProtoError::new(
                Some(re),
                ErrorCode::NotFound,
                format!("{subject} is not assigned to {id}"),
            ));
        }
        Ok(())
    }

    /// A new live session of `subject` with `role`, in no incident yet.
    pub fn register(&mut self, sid: &str, subject: &Subject, role: Role) {
        self.sessions.insert(
            sid.to_owned(),
            Member {
                subject: subject.clone(),
                role,
                incidents: BTreeSet::new(),
            },
        );
    }

    /// A resumed session's token may carry another role.
    pub fn set_role(&mut self, sid: &str, role: Role) {
        if let Some(m) = self.sessions.get_mut(sid) {
            m.role = role;
        }
    }

    /// Session `sid` joins incident `id`. `None` if it is unknown or already in it, else
    /// whether it is the first session of its subject in the incident.
    pub fn join(&mut self, sid: &str, id: &IncidentId) -> Option<bool> {
        let m = self.sessions.get_mut(sid)?;
        if !m.incidents.insert(id.clone()) {
            return None;
        }
        self.members
            .entry(id.clone())
            .or_default()
            .insert(sid.to_owned());
        let n = self
            .subjects
            .entry(id.clone())
            .or_default()
            .entry(m.subject.clone())
            .or_insert(0);
        *n += 1;
        Some(*n == 1)
    }

    /// Session `sid` leaves incident `id`. `None` if it was not in it, else whether it was the
    /// last session of its subject there.
    pub fn leave(&mut self, sid: &str, id: &IncidentId) -> Option<bool> {
        let m = self.sessions.get_mut(sid)?;
        if !m.incidents.remove(id) {
            return None;
        }
        if let Some(ms) = self.members.get_mut(id) {
            ms.remove(sid);
            if ms.is_empty() {
                self.members.remove(id);
            }
        }
        let counts = self.subjects.entry(id.clone()).or_default();
        let left = match counts.get_mut(&m.subject) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                counts.remove(&m.subject);
                true
            }
        };
        if counts.is_empty() {
            self.subjects.remove(id);
        }
        Some(left)
    }

    /// Forgets a session that ended (after it left its incidents).
    pub fn forget(&mut self, sid: &str) {
        self.sessions.remove(sid);
    }

    /// The incidents session `sid` is in; `None` for a session that is not live.
    pub fn of_session(&self, sid: &str) -> Option<&BTreeSet<IncidentId>> {
        self.sessions.get(sid).map(|m| &m.incidents)
    }

    /// The incidents any of `sids` is in.
    pub fn of_sessions<'a>(
        &self,
        sids: impl IntoIterator<Item = &'a String>,
    ) -> BTreeSet<IncidentId> {
        sids.into_iter()
            .filter_map(|s| self.sessions.get(s))
            .flat_map(|m| m.incidents.iter().cloned())
            .collect()
    }

    /// The sessions in incident `id`.
    pub fn members_of(&self, id: &IncidentId) -> Vec<String> {
        self.members
            .get(id)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The console sessions in incident `id`, except `except`.
    pub fn consoles_in(&self, id: &IncidentId, except: Option<&str>) -> Vec<String> {
        self.members
            .get(id)
            .into_iter()
            .flatten()
            .filter(|s| Some(s.as_str()) != except)
            .filter(|s| self.sessions.get(*s).is_some_and(|m| is_console(m.role)))
            .cloned()
            .collect()
    }

    /// Sessions sharing an incident with any of `sids`, minus `sids` themselves; only consoles
    /// when `consoles`.
    pub fn audience(&self, sids: &[String], consoles: bool) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for i in self.of_sessions(sids) {
            out.extend(self.members.get(&i).into_iter().flatten().cloned());
        }
        for s in sids {
            out.remove(s);
        }
        if consoles {
            out.retain(|s| self.sessions.get(s).is_some_and(|m| is_console(m.role)));
        }
        out
    }

    /// The console sessions in any of `incidents`, except `except`.
    pub fn consoles_in_any(
        &self,
        incidents: &BTreeSet<IncidentId>,
        except: &str,
    ) -> BTreeSet<String> {
        incidents
            .iter()
            .flat_map(|i| self.consoles_in(i, Some(except)))
            .collect()
    }

    /// Subjects assigned to any of `incidents` or with a session in one, except `sender`.
    pub fn subjects_in(&self, incidents: &[IncidentId], sender: &Subject) -> BTreeSet<Subject> {
        let mut subs: BTreeSet<Subject> = BTreeSet::new();
        for i in incidents {
            if let Some(inc) = self.incidents.get(i) {
                subs.extend(inc.assigned.iter().cloned());
            }
            if let Some(counts) = self.subjects.get(i) {
                subs.extend(counts.keys().cloned());
            }
        }
        subs.remove(sender);
        subs
    }

    /// The subjects `claims` may see within `incident` (or every accessible incident); `None`
    /// means every subject (admin and commander without an incident).
    pub fn visible_subjects(
        &self,
        claims: &Claims,
        incident: Option<&IncidentId>,
    ) -> Option<BTreeSet<Subject>> {
        let incidents: Vec<IncidentId> = match incident {
            Some(i) => vec![i.clone()],
            None if matches!(claims.role, Role::Admin | Role::Commander) => return None,
            None => self.accessible(claims).into_iter().collect(),
        };
        let mut subs = BTreeSet::new();
        for i in &incidents {
            if let Some(inc) = self.incidents.get(i) {
                subs.extend(inc.assigned.iter().cloned());
            }
            if let Some(counts) = self.subjects.get(i) {
                subs.extend(counts.keys().cloned());
            }
        }
        Some(subs)
    }

    /// The incidents `claims` may see within `incident` (or all accessible); `None` means all.
    pub fn visible_incidents(
        &self,
        claims: &Claims,
        incident: Option<&IncidentId>,
    ) -> Option<BTreeSet<IncidentId>> {
        match incident {
            Some(i) => Some(BTreeSet::from([i.clone()])),
            None if matches!(claims.role, Role::Admin | Role::Commander) => None,
            None => Some(self.accessible(claims)),
        }
    }

    fn accessible(&self, claims: &Claims) -> BTreeSet<IncidentId> {
        self.incidents
            .keys()
            .filter(|i| self.may_access(claims, i))
            .cloned()
            .collect()
    }

    /// Incident `id` as the API shows it.
    pub fn view(&self, id: &IncidentId) -> Option<IncidentView> {
        let inc = self.incidents.get(id)?;
        let members: BTreeSet<Subject> = self
            .subjects
            .get(id)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        Some(IncidentView {
            id: id.clone(),
            name: inc.name.clone(),
            state: if inc.open {
                IncidentState::Open
            } else {
                IncidentState::Closed
            },
            created_by: inc.created_by.clone(),
            created_at: inc.created_at,
            closed_at: inc.closed_at,
            assigned: inc.assigned.iter().cloned().collect(),
            members: members.into_iter().collect(),
        })
    }

    /// Incidents `claims` may see (`incidents`, `GET /api/incidents`), by id.
    pub fn views_for(&self, claims: &Claims) -> Vec<IncidentView> {
        self.incidents
            .keys()
            .filter(|id| self.may_access(claims, id))
            .filter_map(|id| self.view(id))
            .collect()
    }

    /// Whether the sessions of `subject` keep incident `id` after an `unassign`: their token
    /// grants it, or their role sees every incident.
    pub fn keeps_after_unassign(claims: &Claims, id: &IncidentId) -> bool {
        claims.incidents.contains(id) || matches!(claims.role, Role::Admin | Role::Commander)
    }
}
