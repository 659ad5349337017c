//! Drones: what drone bridges report (merged telemetry, link state), which bridge session each
//! drone belongs to, the coalescing of telemetry fan-outs, and drone commands — the allow-list
//! checks, the per-drone rate limit, the node's `dc-N` ids and the commands awaiting an ack.
//!
//! Owns the drones and the pending commands. A drone is "in" its bridge session's incidents;
//! membership is not this component's, so the dispatch passes the bridge session's incidents
//! with every report and when the session ends (kept as a snapshot for `units`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::auth::{Action, Claims, Role};
use crate::ids::{IncidentId, Subject};
use crate::proto::{DroneAckResult, ErrorCode, Position, ProtoError, RequestId, Telemetry};
use crate::time::UnixMs;

/// The limits drones run with (see [`super::CoreConfig`] for each).
#[derive(Debug, Clone)]
pub struct DroneLimits {
    /// At most this many `telemetry` fan-outs per drone per second.
    pub telemetry_hz: u32,
    /// Drone commands per drone: sustained rate per second.
    pub command_per_sec: f64,
    /// Drone commands per drone: burst.
    pub command_burst: f64,
    /// A command not finally acknowledged is forgotten after this long (ms).
    pub command_ttl_ms: u64,
    /// Most drones one bridge subject may report.
    pub max_per_bridge: usize,
}

/// Whether `name` is one of the holder's drones: listed in the token's `drones`, or named
/// `SUBJECT-droneN`.
pub fn owns_drone(claims: &Claims, name: &str) -> bool {
    if claims.drones.iter().any(|d| d == name) {
        return true;
    }
    name.strip_prefix(claims.sub.as_str())
        .and_then(|rest| rest.strip_prefix("-drone"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

struct Drone {
    /// The session that last reported it: its bridge.
    bridge: String,
    bridge_sub: Subject,
    bridge_role: Role,
    /// The bridge session's incidents as of its last report (kept when the session ends).
    incidents: BTreeSet<IncidentId>,
    link_up: bool,
    telemetry: Option<Telemetry>,
    last_seen: UnixMs,
    /// Telemetry changed since the last fan-out.
    pending: bool,
    last_fanout: Option<UnixMs>,
    cmd_tokens: f64,
    cmd_tokens_at: UnixMs,
}

/// A command sent to a bridge and not yet finally acknowledged.
struct PendingCommand {
    drone: Subject,
    bridge: String,
    requester: String,
    sent_at: UnixMs,
}

/// A drone as the read views need it.
#[derive(Debug, Clone, PartialEq)]
pub struct DroneFacts {
    /// Its name.
    pub name: Subject,
    /// Its bridge session.
    pub bridge: String,
    /// The bridge's subject.
    pub bridge_sub: Subject,
    /// The bridge token's role.
    pub bridge_role: Role,
    /// Its link is up.
    pub link_up: bool,
    /// Latest report about it.
    pub last_seen: UnixMs,
    /// Merged telemetry.
    pub telemetry: Option<Telemetry>,
    /// Its incidents when the bridge last reported (or when its session ended).
    pub incidents: BTreeSet<IncidentId>,
}

/// A command the dispatch may send: where to, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The node's command id (`dc-N`).
    pub cmd: String,
    /// The drone.
    pub drone: Subject,
}

/// Every drone the node has heard of, and the commands in flight.
pub struct Drones {
    limits: DroneLimits,
    drones: BTreeMap<Subject, Drone>,
    commands: HashMap<String, PendingCommand>,
    next_cmd: u64,
}

fn forbidden(re: Option<RequestId>, m: String) -> ProtoError {
    ProtoError::new(re, ErrorCode::Forbidden, m)
}

impl Drones {
    /// No drones yet.
    pub fn new(limits: DroneLimits) -> Drones {
        Drones {
            limits,
            drones: BTreeMap::new(),
            commands: HashMap::new(),
            next_cmd: 1,
        }
    }

    fn telemetry_interval(&self) -> u64 {
        1000 / u64::from(self.limits.telemetry_hz.max(1))
    }

    /// Checks a bridge's report about `drone` (the right, ownership, the name, the telemetry)
    /// and records session `sid` (in `incidents`) as its bridge. Returns the drone's name and
    /// whether it is new.
    pub fn report(
        &mut self,
        now: UnixMs,
        sid: &str,
        claims: &Claims,
        drone: &str,
        t: Option<&Telemetry>,
        incidents: BTreeSet<IncidentId>,
    ) -> Result<(Subject, bool), ProtoError> {
        if !claims.may(Action::PublishDrone) {
            return Err(forbidden(
                None,
                format!("role {} may not {}", claims.role, Action::PublishDrone),
            ));
        }
        if claims.role != Role::Admin && !owns_drone(claims, drone) {
            return Err(forbidden(
                None,
                format!("{drone} is not one of your drones"),
            ));
        }
        let name = Subject::parse(drone)
            .map_err(|e| ProtoError::new(None, ErrorCode::BadRequest, format!("drone: {e}")))?;
        if let Some(t) = t {
            t.validate().map_err(|m| {
                ProtoError::new(None, ErrorCode::BadRequest, format!("telemetry: {m}"))
            })?;
        }
        if !self.drones.contains_key(&name) {
            let max = self.limits.max_per_bridge;
            let theirs = self
                .drones
                .values()
                .filter(|d| d.bridge_sub == claims.sub)
                .count();
            if theirs >= max {
                return Err(ProtoError::new(
                    None,
                    ErrorCode::Conflict,
                    format!(
                        "{} already reports {max} drones, the most a bridge may",
                        claims.sub
                    ),
                ));
            }
        }
        let burst = self.limits.command_burst;
        let mut new = false;
        let d = self.drones.entry(name.clone()).or_insert_with(|| {
            new = true;
            Drone {
                bridge: sid.to_owned(),
                bridge_sub: claims.sub.clone(),
                bridge_role: claims.role,
                incidents: BTreeSet::new(),
                link_up: true,
                telemetry: None,
                last_seen: now,
                pending: false,
                last_fanout: None,
                cmd_tokens: burst,
                cmd_tokens_at: now,
            }
        });
        d.bridge = sid.to_owned();
        d.bridge_sub = claims.sub.clone();
        d.bridge_role = claims.role;
        d.incidents = incidents;
        d.last_seen = now;
        Ok((name, new))
    }

    /// Merges a telemetry sample into `name`'s; the merged telemetry to fan out now when the
    /// interval has passed (else it waits for [`Drones::due`]).
    pub fn merge(&mut self, now: UnixMs, name: &Subject, t: &Telemetry) -> Option<Telemetry> {
        let interval = self.telemetry_interval();
        let d = self.drones.get_mut(name)?;
        d.telemetry.get_or_insert_with(Telemetry::default).merge(t);
        d.pending = true;
        if d.last_fanout.is_none_or(|f| now >= f.plus_ms(interval)) {
            self.fan_out(now, name)
        } else {
            None
        }
    }

    fn fan_out(&mut self, now: UnixMs, name: &Subject) -> Option<Telemetry> {
        let d = self.drones.get_mut(name)?;
        d.pending = false;
        d.last_fanout = Some(now);
        d.telemetry.clone()
    }

    /// Held telemetry whose interval has passed, to fan out now.
    pub fn due(&mut self, now: UnixMs) -> Vec<(Subject, Telemetry)> {
        let interval = self.telemetry_interval();
        let due: Vec<Subject> = self
            .drones
            .iter()
            .filter(|(_, d)| d.pending && d.last_fanout.is_none_or(|t| now >= t.plus_ms(interval)))
            .map(|(n, _)| n.clone())
            .collect();
        due.into_iter()
            .filter_map(|n| self.fan_out(now, &n).map(|t| (n, t)))
            .collect()
    }

    /// When the next held telemetry is due.
    pub fn next_due(&self) -> Option<UnixMs> {
        let interval = self.telemetry_interval();
        self.drones
            .values()
            .filter(|d| d.pending)
            .map(|d| d.last_fanout.map_or(UnixMs(0), |t| t.plus_ms(interval)))
            .min()
    }

    /// The bridge's link report; true when it changes the state (or the drone is `new`).
    pub fn link(&mut self, name: &Subject, up: bool, new: bool) -> bool {
        let Some(d) = self.drones.get_mut(name) else {
            return false;
        };
        if new || d.link_up != up {
            d.link_up = up;
            true
        } else {
            false
        }
    }

    /// The bridge session of `name` and the incidents it had at its last report.
    pub fn bridge_of(&self, name: &Subject) -> Option<(&str, &BTreeSet<IncidentId>)> {
        self.drones
            .get(name)
            .map(|d| (d.bridge.as_str(), &d.incidents))
    }

    /// Why `claims` may not command `drone`, if it may not: the right (admin, commander, pilot)
    /// and, for a pilot, ownership.
    pub fn refusal(claims: &Claims, drone: &str) -> Option<String> {
        if !claims.may(Action::CommandDrone) {
            Some(format!(
                "role {} may not {}",
                claims.role,
                Action::CommandDrone
            ))
        } else if claims.role == Role::Pilot && !owns_drone(claims, drone) {
            Some(format!("{drone} is not one of your drones"))
        } else {
            None
        }
    }

    /// A known drone's name (`None` for a name no bridge reported).
    pub fn known(&self, drone: &str) -> Option<Subject> {
        Subject::parse(drone)
            .ok()
            .filter(|n| self.drones.contains_key(n))
    }

    /// Checks a `guided` target: all of `lat`, `lon`, `alt`, in range.
    pub fn guided_target(
        re: RequestId,
        lat: Option<f64>,
        lon: Option<f64>,
        alt: Option<f64>,
    ) -> Result<(), ProtoError> {
        let bad = |m: &str| ProtoError::new(Some(re), ErrorCode::BadRequest, m);
        let (Some(lat), Some(lon), Some(alt)) = (lat, lon, alt) else {
            return Err(bad("guided needs lat, lon and alt"));
        };
        let target = Position {
            lat,
            lon,
            alt: Some(alt),
            accuracy: None,
            heading: None,
            speed: None,
            time: None,
        };
        target.validate().map_err(|m| bad(&m))?;
        if !alt.is_finite() {
            return Err(bad("alt must be a finite number"));
        }
        Ok(())
    }

    /// Takes one command from `name`'s bucket and gives the command its id, recording it as
    /// awaiting the ack of bridge session `bridge` for `requester`.
    pub fn accept(
        &mut self,
        now: UnixMs,
        re: RequestId,
        name: &Subject,
        bridge: &str,
        requester: &str,
    ) -> Result<Accepted, ProtoError> {
        let (rate, burst) = (self.limits.command_per_sec, self.limits.command_burst);
        let d = self.drones.get_mut(name).ok_or_else(|| {
            ProtoError::new(
                Some(re),
                ErrorCode::NotFound,
                format!("drone {name} is not connected to this node"),
            )
        })?;
        let elapsed = now.ms_since(d.cmd_tokens_at) as f64 / 1000.0;
        d.cmd_tokens = (d.cmd_tokens + elapsed * rate).min(burst);
        d.cmd_tokens_at = now;
        if d.cmd_tokens < 1.0 {
            return Err(ProtoError::new(
                Some(re),
                ErrorCode::RateLimited,
                format!("drone {name} takes at most {rate} commands per second (burst {burst}); try again shortly"),
            ));
        }
        d.cmd_tokens -= 1.0;
        let cmd = format!("dc-{}", self.next_cmd);
        self.next_cmd += 1;
        self.commands.insert(
            cmd.clone(),
            PendingCommand {
                drone: name.clone(),
                bridge: bridge.to_owned(),
                requester: requester.to_owned(),
                sent_at: now,
            },
        );
        Ok(Accepted {
            cmd,
            drone: name.clone(),
        })
    }

    /// A bridge's ack of `cmd` from session `sid`: the drone and the requesting session, or
    /// `None` when no such command is pending for that session. A final result ends it.
    pub fn ack(
        &mut self,
        cmd: &str,
        sid: &str,
        result: DroneAckResult,
    ) -> Option<(Subject, String)> {
        let c = self.commands.get(cmd).filter(|c| c.bridge == sid)?;
        let found = (c.drone.clone(), c.requester.clone());
        if result.is_final() {
            self.commands.remove(cmd);
        }
        Some(found)
    }

    /// Bridge session `sid` ended in `incidents`: its drones keep them (for `units`), their held
    /// telemetry is dropped, and commands awaiting its acks are forgotten.
    pub fn bridge_ended(&mut self, sid: &str, incidents: &BTreeSet<IncidentId>) {
        for d in self.drones.values_mut().filter(|d| d.bridge == sid) {
            d.incidents = incidents.clone();
            d.pending = false;
        }
        self.commands.retain(|_, c| c.bridge != sid);
    }

    /// Forgets commands older than their time to live.
    pub fn expire(&mut self, now: UnixMs) {
        let ttl = self.limits.command_ttl_ms;
        self.commands.retain(|_, c| now < c.sent_at.plus_ms(ttl));
    }

    /// Every drone, by name.
    pub fn list(&self) -> impl Iterator<Item = DroneFacts> + '_ {
        self.drones.iter().map(|(n, d)| DroneFacts {
            name: n.clone(),
            bridge: d.bridge.clone(),
            bridge_sub: d.bridge_sub.clone(),
            bridge_role: d.bridge_role,
            link_up: d.link_up,
            last_seen: d.last_seen,
            telemetry: d.telemetry.clone(),
            incidents: d.incidents.clone(),
        })
    }
}
