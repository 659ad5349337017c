//! Drones: telemetry coalescing, link state, commands and their acks, per-drone rate limits.

use super::*;

const DRONE: &str = "pilot-3-drone1";

fn telem(time: u64, lat: f64) -> ClientMsg {
    ClientMsg::Telemetry {
        drone: DRONE.into(),
        t: Box::new(Telemetry {
            time: UnixMs(time),
            lat: Some(lat),
            lon: Some(114.3),
            alt_amsl: Some(80.0),
            ..Telemetry::default()
        }),
    }
}

fn log_of(h: &mut H, conn: ConnId, what: &str) -> Vec<Value> {
    let r = h.request(
        conn,
        ClientMsg::Log {
            id: 90_000,
            incident: duty(),
            after: 0,
            limit: None,
        },
    );
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    data["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["what"] == what)
        .cloned()
        .collect()
}

fn command(id: RequestId, drone: &str, command: DroneCommand) -> ClientMsg {
    ClientMsg::DroneCommand {
        id,
        drone: drone.into(),
        command,
        lat: None,
        lon: None,
        alt: None,
    }
}

fn error_code(m: &ServerMsg) -> Option<ErrorCode> {
    if let ServerMsg::Error { code, .. } = m {
        Some(*code)
    } else {
        None
    }
}

#[test]
fn telemetry_at_50hz_reaches_consoles_merged_at_5hz_and_units_show_the_drone() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, _) = h.connect("off-1", Role::Officer);
    let (pilot, _) = h.connect("pilot-3", Role::Pilot);
    h.take(op);
    h.take(off);
    // The first report carries the battery; later ones only the position.
    h.send(
        pilot,
        &ClientMsg::Telemetry {
            drone: DRONE.into(),
            t: Box::new(Telemetry {
                time: UnixMs(h.now),
                battery_pct: Some(88.0),
                mode: Some("GUIDED".into()),
                ..Telemetry::default()
            }),
        },
    );
    let mut seen: Vec<(u64, Value)> = Vec::new();
    let mut last_lat = 0.0;
    // 2 s at 50 Hz; the shell wakes whenever the core says a fan-out is due.
    for i in 0..100u32 {
        last_lat = 30.0 + f64::from(i) * 1e-4;
        h.send(pilot, &telem(h.now, last_lat));
        for e in kinds(&h.events(op), "telemetry") {
            seen.push((h.now, e));
        }
        let next = h.now + 20;
        while let Some(due) = h.core.next_fanout_due().filter(|d| d.as_millis() <= next) {
            h.now = due.as_millis().max(h.now);
            h.core.handle_timeout(UnixMs(h.now));
            h.pump();
            for e in kinds(&h.events(op), "telemetry") {
                seen.push((h.now, e));
            }
        }
        h.now = next;
    }
    h.advance(300);
    for e in kinds(&h.events(op), "telemetry") {
        seen.push((h.now, e));
    }
    assert!(
        (10..=12).contains(&seen.len()),
        "{} telemetry events in 2 s",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[1].0 >= w[0].0 + 200),
        "faster than 5 Hz: {:?}",
        seen.iter().map(|s| s.0 - T0).collect::<Vec<_>>()
    );
    let last = &seen.last().unwrap().1;
    assert_eq!(last["drone"], DRONE);
    assert_eq!(last["t"]["lat"], last_lat, "the newest state goes out last");
    assert_eq!(last["t"]["battery_pct"], 88.0, "fields are merged");
    assert_eq!(last["t"]["mode"], "GUIDED");
    assert!(
        kinds(&h.events(off), "telemetry").is_empty(),
        "only consoles get telemetry"
    );
    assert!(
        kinds(&h.events(pilot), "telemetry").is_empty(),
        "not the bridge itself"
    );
    // Units: the drone, with position and telemetry; people as before plus kind.
    let claims = h
        .core
        .authenticate(&h.token("op-1", Role::Operator), UnixMs(h.now))
        .unwrap();
    let units = serde_json::to_value(h.core.units_for(UnixMs(h.now), &claims, None)).unwrap();
    let units = units.as_array().unwrap();
    let d = units
        .iter()
        .find(|u| u["subject"] == DRONE)
        .expect("the drone is a unit");
    assert_eq!(
        (d["kind"].as_str(), d["bridge"].as_str(), d["link"].as_str()),
        (Some("drone"), Some("pilot-3"), Some("up"))
    );
    assert_eq!(
        (d["online"].as_bool(), d["role"].as_str()),
        (Some(true), Some("pilot"))
    );
    assert_eq!(
        (d["position"]["lat"].as_f64(), d["position"]["alt"].as_f64()),
        (Some(last_lat), Some(80.0))
    );
    assert_eq!(d["telemetry"]["battery_pct"], 88.0);
    assert_eq!(d["incidents"], json!(["duty"]));
    let p = units.iter().find(|u| u["subject"] == "off-1").unwrap();
    assert_eq!(p["kind"], "person");
    assert!(
        p.get("bridge").is_none() && p.get("link").is_none() && p.get("telemetry").is_none(),
        "{p}"
    );
    // Telemetry for someone else's drone, by a role without the right, or malformed: refused
    // without `re`, nothing changes.
    h.send(off, &telem(h.now, 1.0));
    assert!(matches!(
        &h.take(off)[..],
        [
            ..,
            ServerMsg::Error {
                re: None,
                code: ErrorCode::Forbidden,
                ..
            }
        ]
    ));
    let (p4, _) = h.connect("pilot-4", Role::Pilot);
    h.take(p4);
    h.send(p4, &telem(h.now, 1.0));
    assert!(matches!(
        &h.take(p4)[..],
        [ServerMsg::Error {
            re: None,
            code: ErrorCode::Forbidden,
            ..
        }]
    ));
    h.take(pilot);
    h.send(
        pilot,
        &ClientMsg::Telemetry {
            drone: DRONE.into(),
            t: Box::new(Telemetry {
                time: UnixMs(h.now),
                lat: Some(99.0),
                lon: Some(1.0),
                ..Telemetry::default()
            }),
        },
    );
    assert!(matches!(
        &h.take(pilot)[..],
        [ServerMsg::Error {
            re: None,
            code: ErrorCode::BadRequest,
            ..
        }]
    ));
    let units = h.core.units_for(UnixMs(h.now), &claims, None);
    let d = units.iter().find(|u| u.subject.as_str() == DRONE).unwrap();
    assert_eq!(d.position.as_ref().unwrap().lat, last_lat);
}

#[test]
fn drone_link_loss_is_an_event_and_a_log_entry_and_a_gone_bridge_means_offline() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (pilot, _) = h.connect("pilot-3", Role::Pilot);
    h.send(pilot, &telem(h.now, 30.0));
    h.take(op);
    h.take(pilot);
    h.send(
        pilot,
        &ClientMsg::DroneLink {
            drone: DRONE.into(),
            up: false,
        },
    );
    assert!(h.take(pilot).is_empty(), "no reply");
    assert_eq!(
        kinds(&h.events(op), "drone_link"),
        vec![json!({"kind": "drone_link", "drone": DRONE, "up": false})]
    );
    // The same state again is not news.
    h.send(
        pilot,
        &ClientMsg::DroneLink {
            drone: DRONE.into(),
            up: false,
        },
    );
    assert!(kinds(&h.events(op), "drone_link").is_empty());
    let claims = h
        .core
        .authenticate(&h.token("op-1", Role::Operator), UnixMs(h.now))
        .unwrap();
    let unit = |h: &H| {
        h.core
            .units_for(UnixMs(h.now), &claims, None)
            .into_iter()
            .find(|u| u.subject.as_str() == DRONE)
            .unwrap()
    };
    let u = unit(&h);
    assert_eq!((u.link, u.online), (Some(LinkState::Lost), false));
    h.send(
        pilot,
        &ClientMsg::DroneLink {
            drone: DRONE.into(),
            up: true,
        },
    );
    assert_eq!(kinds(&h.events(op), "drone_link")[0]["up"], true);
    assert!(unit(&h).online);
    let log = log_of(&mut h, op, "drone_link");
    let details: Vec<Value> = log.iter().map(|e| e["detail"].clone()).collect();
    assert_eq!(
        details,
        vec![
            json!({"drone": DRONE, "up": false}),
            json!({"drone": DRONE, "up": true})
        ]
    );
    assert_eq!(log[0]["who"], "pilot-3");
    // The bridge session ends: the drone stays listed, offline, in the incidents it was in.
    h.send(pilot, &ClientMsg::Bye);
    let u = unit(&h);
    assert_eq!(
        (u.online, u.link, u.incidents.clone()),
        (false, Some(LinkState::Up), vec![duty()])
    );
}

#[test]
fn drone_commands_go_to_the_bridge_and_acks_come_back_all_logged() {
    let mut h = H::new();
    let (cmdr, _) = h.connect("cmd-1", Role::Commander);
    let (pilot, _) = h.connect("pilot-3", Role::Pilot);
    let (off, _) = h.connect("off-1", Role::Officer);
    let (p4, _) = h.connect("pilot-4", Role::Pilot);
    h.take(p4);
    // Not connected yet.
    let r = h.request(cmdr, command(1, DRONE, DroneCommand::Rtl));
    assert_eq!(error_code(&r), Some(ErrorCode::NotFound), "{r:?}");
    h.send(pilot, &telem(h.now, 30.0));
    h.take(pilot);
    h.out.clear();
    // A commander's RTL: sent, on the bridge's urgent lane.
    let r = h.request(cmdr, command(2, DRONE, DroneCommand::Rtl));
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(data, json!({"cmd": "dc-1", "status": "sent"}));
    let urgent: Vec<Value> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Urgent {
                conn,
                msg: ServerMsg::Event { event, .. },
            } if *conn == pilot => Some(wire(event)),
            _ => None,
        })
        .collect();
    assert_eq!(
        urgent,
        vec![
            json!({"kind": "drone_command", "cmd": "dc-1", "drone": DRONE, "command": "rtl", "by": "cmd-1"})
        ]
    );
    h.take(pilot);
    // The bridge acknowledges: the commander learns it.
    h.send(
        pilot,
        &ClientMsg::DroneCommandAck {
            cmd: "dc-1".into(),
            result: DroneAckResult::Accepted,
            text: None,
        },
    );
    assert!(h.take(pilot).is_empty(), "no reply to an ack");
    assert_eq!(
        kinds(&h.events(cmdr), "drone_command_ack"),
        vec![
            json!({"kind": "drone_command_ack", "cmd": "dc-1", "drone": DRONE, "result": "accepted"})
        ]
    );
    // A final ack ends the command; unknown commands and other sessions get not_found.
    for (conn, cmd) in [(pilot, "dc-1"), (pilot, "dc-99"), (p4, "dc-1")] {
        h.send(
            conn,
            &ClientMsg::DroneCommandAck {
                cmd: cmd.into(),
                result: DroneAckResult::Failed,
                text: None,
            },
        );
        assert!(
            matches!(
                &h.take(conn)[..],
                [ServerMsg::Error {
                    re: None,
                    code: ErrorCode::NotFound,
                    ..
                }]
            ),
            "{cmd}"
        );
    }
    // The owning pilot may command it; in_progress keeps it open for the final ack.
    let r = h.request(pilot, command(3, DRONE, DroneCommand::Hold));
    assert!(
        matches!(&r, ServerMsg::Result { data, .. } if data["cmd"] == "dc-2"),
        "{r:?}"
    );
    h.send(
        pilot,
        &ClientMsg::DroneCommandAck {
            cmd: "dc-2".into(),
            result: DroneAckResult::InProgress,
            text: None,
        },
    );
    h.send(
        pilot,
        &ClientMsg::DroneCommandAck {
            cmd: "dc-2".into(),
            result: DroneAckResult::Denied,
            text: Some("not armed".into()),
        },
    );
    let acks = kinds(&h.events(pilot), "drone_command_ack");
    assert_eq!(
        acks.iter()
            .map(|a| a["result"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["in_progress", "denied"]
    );
    assert_eq!(acks[1]["text"], "not armed");
    // Refusals: an officer (role), another pilot (not its drone); both logged.
    let r = h.request(off, command(4, DRONE, DroneCommand::Land));
    assert_eq!(error_code(&r), Some(ErrorCode::Forbidden));
    let r = h.request(p4, command(5, DRONE, DroneCommand::Land));
    assert!(
        matches!(&r, ServerMsg::Error { code: ErrorCode::Forbidden, message, .. } if message.contains("not one of your drones")),
        "{r:?}"
    );
    // Guided needs a target.
    let r = h.request(
        cmdr,
        ClientMsg::DroneCommand {
            id: 6,
            drone: DRONE.into(),
            command: DroneCommand::Guided,
            lat: None,
            lon: Some(114.3),
            alt: Some(40.0),
        },
    );
    assert_eq!(error_code(&r), Some(ErrorCode::BadRequest), "{r:?}");
    let r = h.request(
        cmdr,
        ClientMsg::DroneCommand {
            id: 7,
            drone: DRONE.into(),
            command: DroneCommand::Guided,
            lat: Some(30.6),
            lon: Some(114.3),
            alt: Some(40.0),
        },
    );
    assert!(
        matches!(&r, ServerMsg::Result { data, .. } if data["cmd"] == "dc-3"),
        "{r:?}"
    );
    let ev = kinds(&h.events(pilot), "drone_command");
    assert_eq!(
        (
            ev[0]["lat"].as_f64(),
            ev[0]["lon"].as_f64(),
            ev[0]["alt"].as_f64()
        ),
        (Some(30.6), Some(114.3), Some(40.0))
    );
    // The log tells the story.
    let cmds: Vec<Value> = log_of(&mut h, cmdr, "drone_command")
        .into_iter()
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(
        cmds[0],
        json!({"cmd": "dc-1", "drone": DRONE, "command": "rtl", "by": "cmd-1"})
    );
    assert_eq!(cmds[2]["lat"], 30.6);
    let acks: Vec<Value> = log_of(&mut h, cmdr, "drone_command_ack")
        .into_iter()
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(
        acks[0],
        json!({"cmd": "dc-1", "drone": DRONE, "result": "accepted"})
    );
    assert_eq!(
        acks[2],
        json!({"cmd": "dc-2", "drone": DRONE, "result": "denied", "text": "not armed"})
    );
    let refused = log_of(&mut h, cmdr, "drone_command_refused");
    assert_eq!(refused.len(), 2);
    assert_eq!(
        (
            refused[0]["who"].as_str(),
            refused[0]["detail"]["by"].as_str()
        ),
        (Some("off-1"), Some("off-1"))
    );
    assert_eq!(
        (
            refused[0]["detail"]["drone"].as_str(),
            refused[0]["detail"]["command"].as_str()
        ),
        (Some(DRONE), Some("land"))
    );
    assert!(refused[0]["detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("officer"));
    assert_eq!(refused[1]["detail"]["by"], "pilot-4");
    // A refusal about an unknown drone goes to the requester's incidents.
    h.request(off, command(8, "pilot-9-drone2", DroneCommand::Rtl));
    assert_eq!(log_of(&mut h, cmdr, "drone_command_refused").len(), 3);
    // The bridge goes away: its pending commands die with it, and new ones find no drone.
    let r = h.request(cmdr, command(9, DRONE, DroneCommand::Rtl));
    assert!(matches!(&r, ServerMsg::Result { .. }), "{r:?}");
    h.send(pilot, &ClientMsg::Bye);
    let r = h.request(cmdr, command(10, DRONE, DroneCommand::Rtl));
    assert_eq!(error_code(&r), Some(ErrorCode::NotFound), "{r:?}");
}

#[test]
fn drone_commands_are_rate_limited_per_drone() {
    let mut h = H::new();
    let (cmdr, _) = h.connect("cmd-1", Role::Commander);
    let (pilot, _) = h.connect("pilot-3", Role::Pilot);
    h.send(pilot, &telem(h.now, 30.0));
    h.send(
        pilot,
        &ClientMsg::Telemetry {
            drone: "pilot-3-drone2".into(),
            t: Box::new(Telemetry {
                time: UnixMs(h.now),
                ..Telemetry::default()
            }),
        },
    );
    let mut id = 0;
    let mut cmd = |h: &mut H, drone: &str| {
        id += 1;
        error_code(&h.request(cmdr, command(id, drone, DroneCommand::Hold)))
    };
    for _ in 0..5 {
        assert_eq!(cmd(&mut h, DRONE), None, "burst of 5");
    }
    assert_eq!(cmd(&mut h, DRONE), Some(ErrorCode::RateLimited));
    assert_eq!(
        cmd(&mut h, "pilot-3-drone2"),
        None,
        "another drone has its own budget"
    );
    h.advance(1000);
    assert_eq!(cmd(&mut h, DRONE), None, "one more per second");
    assert_eq!(cmd(&mut h, DRONE), Some(ErrorCode::RateLimited));
    // A refused command was not sent.
    let sent = kinds(&h.events(pilot), "drone_command");
    assert_eq!(sent.iter().filter(|e| e["drone"] == DRONE).count(), 6);
    // One bridge cannot create drones without bound.
    h.take(pilot);
    for n in 3..=64 {
        h.send(
            pilot,
            &ClientMsg::DroneLink {
                drone: format!("pilot-3-drone{n}"),
                up: true,
            },
        );
    }
    assert!(h
        .take(pilot)
        .iter()
        .all(|m| matches!(m, ServerMsg::Event { .. })));
    h.send(
        pilot,
        &ClientMsg::DroneLink {
            drone: "pilot-3-drone65".into(),
            up: true,
        },
    );
    assert!(matches!(
        &h.take(pilot)[..],
        [ServerMsg::Error {
            re: None,
            code: ErrorCode::Conflict,
            ..
        }]
    ));
}
