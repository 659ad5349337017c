//! The read queries: `units`, `catalog` owners and `log` pages, shaped from facts the dispatch
//! gathers from the components (who is online is the sessions', who is where the incidents',
//! positions the presence's, drones the drones'). Pure functions: no state, no other component.

use std::collections::{BTreeMap, BTreeSet};

use crate::auth::Role;
use crate::ids::{IncidentId, Subject};
use crate::proto::{ErrorCode, LogEntry, ProtoError, RequestId, UnitView};
use crate::store::OfficeStore;

/// The units a caller sees: the people whose subject is visible (`None`: all), the drones in a
/// visible incident (`None`: all), ordered by subject.
pub fn units(
    people: impl IntoIterator<Item = UnitView>,
    drones: impl IntoIterator<Item = UnitView>,
    subjects: Option<&BTreeSet<Subject>>,
    incidents: Option<&BTreeSet<IncidentId>>,
) -> Vec<UnitView> {
    let mut out: Vec<UnitView> = people
        .into_iter()
        .filter(|u| subjects.is_none_or(|v| v.contains(&u.subject)))
        .collect();
    out.extend(
        drones
            .into_iter()
            .filter(|d| incidents.is_none_or(|v| d.incidents.iter().any(|i| v.contains(i)))),
    );
    out.sort_by(|a, b| a.subject.cmp(&b.subject));
    out
}

/// The owners whose live streams a caller sees in the catalog: the units whose subject is
/// visible (`None`: all), with their roles.
pub fn catalog_owners(
    units: impl IntoIterator<Item = (Subject, Role)>,
    subjects: Option<&BTreeSet<Subject>>,
) -> BTreeMap<Subject, Role> {
    units
        .into_iter()
        .filter(|(s, _)| subjects.is_none_or(|v| v.contains(s)))
        .collect()
}

/// A page of incident `id`'s log after `after`, at most `limit` (default and cap `max`), and
/// the newest `seq` of the whole log.
pub fn log_page(
    store: &dyn OfficeStore,
    re: Option<RequestId>,
    id: &IncidentId,
    after: u64,
    limit: Option<u32>,
    max: u32,
) -> Result<(Vec<LogEntry>, u64), ProtoError> {
    let limit = limit.unwrap_or(max).min(max) as usize;
    store
        .log_after(id.as_str(), after, limit)
        .map_err(|e| ProtoError::new(re, ErrorCode::Unavailable, e.to_string()))
}
