//! The mesh half: one signaling session ([`signaling::client`], reconnecting and resuming by
//! itself) between the node and the MAVLink half ([`crate::link`]).
//!
//! Out: `telemetry` (at the core's rate), `drone_link`, `drone_command_ack`, and each drone's
//! camera published as `SUBJECT-droneSYSID` ([`crate::video`]). In: `drone_command` events,
//! turned into MAVLink commands; a command for a drone this bridge does not have, or one it does
//! not know, is answered `refused` at once, so every command gets an answer.
//!
//! Lines on stdout (JSON, one object per line, `kind` first): `connected` (or `resumed`),
//! `drone_link`, `command`, `ack`, `video` (and the camera's `publishing`, from
//! [`crate::video`]), `stats` (at most once a second, when a counter changed), `disconnected`,
//! `closed`; `warning` and `note` when something goes wrong or changes on the way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signaling::client::{Client, ClientError, ClientEvent, Events};
use signaling::proto::{ClientMsg, CommandName, DroneAckResult, DroneCommand, Event as NodeEvent};

use crate::command::{AckResult, Action};
use crate::core::{CommandRequest, Event, Stats};
use crate::error::Error;
use crate::frame::SysId;
use crate::link::MavlinkHandle;
use crate::video::{self, Plan, Publisher, VideoSource};

/// Bound on the last events after `bye`.
const DRAIN: Duration = Duration::from_secs(3);

/// Prints one JSON line.
pub fn emit(v: &Value) {
    println!("{v}");
}

/// The mesh name of vehicle `sysid` of a bridge running as `subject`.
pub fn drone_name(subject: &str, sysid: SysId) -> String {
    format!("{subject}-drone{sysid}")
}

/// The vehicle a mesh name stands for, if it is one of this bridge's (`SUBJECT-droneN`).
pub fn sysid_of(subject: &str, name: &str) -> Option<SysId> {
    let n = name.strip_prefix(subject)?.strip_prefix("-drone")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse::<u8>().ok().filter(|s| *s > 0).map(SysId)
}

fn ack_result(r: AckResult) -> DroneAckResult {
    match r {
        AckResult::Accepted => DroneAckResult::Accepted,
        AckResult::TemporarilyRejected => DroneAckResult::TemporarilyRejected,
        AckResult::Denied => DroneAckResult::Denied,
        AckResult::Unsupported => DroneAckResult::Unsupported,
        AckResult::Failed => DroneAckResult::Failed,
        AckResult::InProgress => DroneAckResult::InProgress,
        AckResult::Cancelled => DroneAckResult::Cancelled,
        AckResult::Timeout => DroneAckResult::Timeout,
        AckResult::Refused => DroneAckResult::Refused,
    }
}

/// A `drone_command` event as the bridge understands it.
#[derive(Debug, Clone, PartialEq)]
pub struct DroneCommandEvent {
    /// The node's command id.
    pub cmd: String,
    /// The drone's mesh name.
    pub drone: String,
    /// Who sent it.
    pub by: String,
    /// The command, or why it cannot be carried out.
    pub action: Result<Action, String>,
}

/// Reads a `drone_command` event; `None` when the event is something else.
pub fn parse_command(event: &NodeEvent) -> Option<DroneCommandEvent> {
    let NodeEvent::DroneCommand(c) = event else {
        return None;
    };
    let action = match &c.command {
        CommandName::Known(DroneCommand::Rtl) => Ok(Action::Rtl),
        CommandName::Known(DroneCommand::Hold) => Ok(Action::Hold),
        CommandName::Known(DroneCommand::Land) => Ok(Action::Land),
        CommandName::Known(DroneCommand::Guided) => match (c.lat, c.lon) {
            (Some(lat), Some(lon)) => Ok(Action::Guided {
                lat,
                lon,
                alt: c.alt,
            }),
            _ => Err("guided needs lat and lon".to_owned()),
        },
        CommandName::Other(other) => Err(format!(
            "command {other:?} is not on the bridge's allow-list (rtl, hold, land, guided)"
        )),
    };
    Some(DroneCommandEvent {
        cmd: c.cmd.clone(),
        drone: c.drone.to_string(),
        by: c.by.to_string(),
        action,
    })
}

/// What the loop keeps.
struct Mesh {
    client: Client,
    node: String,
    subject: String,
    /// `--video`: published for the first vehicle seen.
    video_arg: Option<VideoSource>,
    /// How the camera's codecs are ingested (`--profile`); empty: no video.
    plans: Vec<Plan>,
    /// Link state per drone, re-sent after a reconnect.
    links: BTreeMap<SysId, bool>,
    /// Acks not yet sent (the connection was down).
    unsent: Vec<ClientMsg>,
    publishers: BTreeMap<SysId, Publisher>,
    last_stats: Option<(Instant, Stats)>,
}

impl Mesh {
    fn send(&mut self, msg: ClientMsg, keep: bool) {
        match self.client.send(msg.clone()) {
            Ok(()) => {}
            Err(ClientError::Disconnected) if keep => self.unsent.push(msg),
            Err(e) => tracing::debug!("{} not sent: {e}", msg.kind()),
        }
    }

    fn start_video(&mut self, drone: SysId, source: VideoSource) {
        if self.publishers.contains_key(&drone) {
            return;
        }
        let stream = drone_name(&self.subject, drone);
        emit(&json!({"kind": "video", "drone": stream, "source": source.to_string()}));
        match video::start(
            &self.client,
            &self.node,
            &stream,
            source,
            self.plans.clone(),
        ) {
            Ok(p) => {
                self.publishers.insert(drone, p);
            }
            Err(why) => emit(
                &json!({"kind": "warning", "message": format!("no video for {stream}: {why}")}),
            ),
        }
    }

    fn bridge_event(&mut self, e: Event) {
        match e {
            Event::Telemetry { drone, t } => {
                let name = drone_name(&self.subject, drone);
                self.send(ClientMsg::Telemetry { drone: name, t }, false);
            }
            Event::Link { drone, up } => {
                let name = drone_name(&self.subject, drone);
                emit(&json!({"kind": "drone_link", "drone": name, "up": up}));
                let first = self.links.insert(drone, up).is_none();
                self.send(ClientMsg::DroneLink { drone: name, up }, true);
                if first {
                    if let Some(v) = self.video_arg.take() {
                        self.start_video(drone, v);
                    }
                }
            }
            Event::Ack {
                cmd,
                drone,
                result,
                text,
            } => {
                emit(
                    &json!({"kind": "ack", "cmd": cmd, "drone": drone_name(&self.subject, drone), "result": result.as_str(), "text": text}),
                );
                self.send(
                    ClientMsg::DroneCommandAck {
                        cmd,
                        result: ack_result(result),
                        text,
                    },
                    true,
                );
            }
            Event::Video { drone, uri } => match uri.parse::<VideoSource>() {
                Ok(v) => self.start_video(drone, v),
                Err(why) => emit(
                    &json!({"kind": "warning", "message": format!("vehicle {drone} announced video {uri:?}: {why}")}),
                ),
            },
        }
    }

    fn command(&mut self, c: DroneCommandEvent, bridge: &MavlinkHandle) {
        emit(
            &json!({"kind": "command", "cmd": c.cmd, "drone": c.drone, "by": c.by,
            "command": c.action.as_ref().map(|a| a.name()).unwrap_or("?")}),
        );
        let refuse = |m: &mut Mesh, text: String| {
            emit(
                &json!({"kind": "ack", "cmd": c.cmd, "drone": c.drone, "result": "refused", "text": text}),
            );
            m.send(
                ClientMsg::DroneCommandAck {
                    cmd: c.cmd.clone(),
                    result: DroneAckResult::Refused,
                    text: Some(text),
                },
                true,
            );
        };
        let Some(sysid) = sysid_of(&self.subject, &c.drone) else {
            return refuse(
                self,
                format!(
                    "{} is not a drone of this bridge ({}-droneSYSID)",
                    c.drone, self.subject
                ),
            );
        };
        match &c.action {
            Ok(action) => {
                let req = CommandRequest {
                    cmd: c.cmd.clone(),
                    drone: sysid,
                    action: *action,
                };
                if bridge.commands.send(req).is_err() {
                    refuse(
                        self,
                        "the MAVLink side of the bridge has stopped".to_owned(),
                    );
                }
            }
            Err(why) => refuse(self, why.clone()),
        }
    }

    fn stats(&mut self, s: Stats) {
        let due = self
            .last_stats
            .is_none_or(|(at, old)| old != s && at.elapsed() >= Duration::from_secs(1));
        if due {
            self.last_stats = Some((Instant::now(), s));
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["kind"] = json!("stats");
            emit(&v);
        }
    }

    fn connected(&mut self, resumed: bool, gap: bool) {
        let s = self.client.session();
        emit(
            &json!({"kind": if resumed { "resumed" } else { "connected" }, "subject": s.subject.as_str(),
            "role": s.role.to_string(), "node": s.node.as_str(), "gap": gap}),
        );
        // The node may have missed link changes and acks while we were away.
        let links: Vec<(SysId, bool)> = self.links.iter().map(|(k, v)| (*k, *v)).collect();
        for (drone, up) in links {
            let name = drone_name(&self.subject, drone);
            self.send(ClientMsg::DroneLink { drone: name, up }, false);
        }
        for m in std::mem::take(&mut self.unsent) {
            self.send(m, true);
        }
    }
}

/// Runs until SIGINT/SIGTERM (`Ok`) or until the node ends the session (`Err(Refused)`).
/// `plans` are the camera ingest plans ([`video::plans`]); empty when video is unavailable.
pub async fn run(
    client: Client,
    mut events: Events,
    node: String,
    mut bridge: MavlinkHandle,
    video_arg: Option<VideoSource>,
    plans: Vec<Plan>,
) -> Result<(), Error> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Local(format!("cannot handle SIGTERM: {e}")))?;
    let subject = client.session().subject.as_str().to_owned();
    let mut m = Mesh {
        client: client.clone(),
        node,
        subject,
        video_arg,
        plans,
        links: BTreeMap::new(),
        unsent: Vec::new(),
        publishers: BTreeMap::new(),
        last_stats: None,
    };
    let mut stats = bridge.stats.clone();
    let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
    let stop = async {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::pin!(stop);
    let ended = loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(ClientEvent::Closed { code, reason }) => {
                    emit(&json!({"kind": "closed", "code": code.map(|c| c.as_str()), "reason": reason}));
                    break Some(Error::Refused { code, message: format!("the node ended the session: {reason}") });
                }
                Some(ClientEvent::Connected { resumed, gap }) => m.connected(resumed, gap),
                Some(ClientEvent::Disconnected { reason }) => emit(&json!({"kind": "disconnected", "reason": reason})),
                Some(ClientEvent::Event { event, .. }) => {
                    // The node's refusals of messages without reply (telemetry of a drone this
                    // token does not own, …) are logged by the client as warnings on stderr.
                    if let Some(c) = parse_command(&event) {
                        m.command(c, &bridge);
                    }
                }
                Some(ClientEvent::Mail { .. }) => {}
                None => break None,
            },
            e = bridge.events.recv() => match e {
                Some(e) => m.bridge_event(e),
                None => break Some(Error::Local("the MAVLink side of the bridge stopped".to_owned())),
            },
            _ = stats.changed() => {
                let s = *stats.borrow_and_update();
                m.stats(s);
            }
            _ = stats_tick.tick() => {
                let s = *stats.borrow();
                m.stats(s);
            }
            () = &mut stop => break None,
        }
    };
    for (_, p) in std::mem::take(&mut m.publishers) {
        p.stop().await;
    }
    bridge.stop();
    client.close().await;
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some(ev) = events.next().await {
            if let ClientEvent::Closed { .. } = ev {
                break;
            }
        }
    })
    .await;
    match ended {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_commands() {
        assert_eq!(drone_name("pilot-3", SysId(1)), "pilot-3-drone1");
        assert_eq!(sysid_of("pilot-3", "pilot-3-drone1"), Some(SysId(1)));
        for bad in [
            "pilot-3-drone",
            "pilot-3-drone0",
            "pilot-3-drone256",
            "pilot-4-drone1",
            "pilot-3-drone1x",
        ] {
            assert_eq!(sysid_of("pilot-3", bad), None, "{bad}");
        }
        let event = |v| serde_json::from_value::<NodeEvent>(v).unwrap();
        let e = event(
            json!({"kind": "drone_command", "cmd": "dc-4", "drone": "p-drone2", "command": "guided", "by": "cmd-1", "lat": 30.0, "lon": 114.0, "alt": 50.0}),
        );
        let c = parse_command(&e).unwrap();
        assert_eq!(
            c.action,
            Ok(Action::Guided {
                lat: 30.0,
                lon: 114.0,
                alt: Some(50.0)
            })
        );
        let e = event(
            json!({"kind": "drone_command", "cmd": "dc-5", "drone": "p-drone2", "command": "flip", "by": "cmd-1"}),
        );
        assert!(parse_command(&e).unwrap().action.is_err());
        let e = event(json!({"kind": "drone_link", "drone": "p-drone2", "up": true}));
        assert!(parse_command(&e).is_none());
    }
}
