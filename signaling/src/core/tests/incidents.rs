//! Incidents: token-named and created incidents, assignment, membership, what devices get.

use super::*;

#[test]
fn token_incidents_replace_duty() {
    let mut h = H::new();
    let t = h.token_with("off-1", Role::Officer, |r| {
        r.incidents = vec![IncidentId::parse("flood-3").unwrap()]
    });
    let (_c, msgs) = h.hello(t, None);
    let ServerMsg::Welcome(w) = &msgs[0] else {
        panic!()
    };
    assert_eq!(w.incidents, vec![IncidentId::parse("flood-3").unwrap()]);
}

#[test]
fn incidents_create_assign_join_log() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    let (off2, _) = h.connect("off-2", Role::Officer);
    let r = h.request(
        cmd,
        ClientMsg::IncidentCreate {
            id: 1,
            incident: Some(IncidentId::parse("fire-9").unwrap()),
            name: "Warehouse fire".into(),
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    let fire = IncidentId::parse("fire-9").unwrap();
    // Not assigned: may not join.
    let r = h.request(
        off,
        ClientMsg::Join {
            id: 2,
            incident: fire.clone(),
        },
    );
    assert!(matches!(
        r,
        ServerMsg::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    // Assigning joins live sessions at once.
    h.request(
        cmd,
        ClientMsg::Assign {
            id: 3,
            incident: fire.clone(),
            subject: Subject::parse("off-1").unwrap(),
        },
    );
    assert!(kinds(&h.events(off), "assigned").len() == 1);
    // Chat reaches members of the incident only.
    h.take(off2);
    let r = h.request(
        cmd,
        ClientMsg::Chat {
            id: 4,
            msg_id: None,
            incident: Some(fire.clone()),
            to: None,
            text: "evacuate block B".into(),
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }));
    assert_eq!(kinds(&h.mails(off), "chat")[0]["text"], "evacuate block B");
    assert!(kinds(&h.mails(off2), "chat").is_empty());
    // An officer cannot read a log of an incident it is not in.
    let r = h.request(
        off2,
        ClientMsg::Log {
            id: 5,
            incident: fire.clone(),
            after: 0,
            limit: None,
        },
    );
    assert!(matches!(
        r,
        ServerMsg::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    h.request(
        cmd,
        ClientMsg::IncidentClose {
            id: 6,
            incident: fire.clone(),
        },
    );
    let r = h.request(
        cmd,
        ClientMsg::Log {
            id: 7,
            incident: fire.clone(),
            after: 0,
            limit: None,
        },
    );
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    let what: Vec<&str> = data["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        what,
        vec!["created", "joined", "assigned", "joined", "chat", "closed", "left", "left"]
    );
    assert!(data["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["time"].as_u64().unwrap() >= T0));
    // Closed: no joins; duty cannot be closed.
    let r = h.request(
        cmd,
        ClientMsg::Join {
            id: 8,
            incident: fire,
        },
    );
    assert!(matches!(
        r,
        ServerMsg::Error {
            code: ErrorCode::Conflict,
            ..
        }
    ));
    let r = h.request(
        cmd,
        ClientMsg::IncidentClose {
            id: 9,
            incident: duty(),
        },
    );
    assert!(matches!(
        r,
        ServerMsg::Error {
            code: ErrorCode::Conflict,
            ..
        }
    ));
}

#[test]
fn devices_send_into_incidents_but_receive_nothing_from_them() {
    let mut h = H::new();
    let (dev, _) = h.connect("cam-1", Role::Device);
    let (op, _) = h.connect("op-1", Role::Operator);
    h.take(op);
    h.request(
        op,
        ClientMsg::Chat {
            id: 1,
            msg_id: None,
            incident: Some(duty()),
            to: None,
            text: "for humans".into(),
        },
    );
    h.send(op, &pos(30.0));
    assert!(h.events(dev).is_empty(), "a device may not read incidents");
    // …but what it sends reaches members.
    h.send(dev, &pos(29.0));
    assert_eq!(kinds(&h.events(op), "position")[0]["subject"], "cam-1");
    let r = h.request(
        dev,
        ClientMsg::Sos {
            id: 2,
            msg_id: None,
            incident: None,
            text: None,
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    assert_eq!(kinds(&h.mails(op), "sos")[0]["from"], "cam-1");
}

#[test]
fn unassigning_tells_the_subject_and_sos_needs_an_incident() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    let fire = IncidentId::parse("fire-1").unwrap();
    h.request(
        cmd,
        ClientMsg::IncidentCreate {
            id: 1,
            incident: Some(fire.clone()),
            name: "Fire".into(),
        },
    );
    h.request(
        cmd,
        ClientMsg::Assign {
            id: 2,
            incident: fire.clone(),
            subject: Subject::parse("off-1").unwrap(),
        },
    );
    h.take(off);
    h.request(
        cmd,
        ClientMsg::Unassign {
            id: 3,
            incident: fire.clone(),
            subject: Subject::parse("off-1").unwrap(),
        },
    );
    let evs = h.events(off);
    assert_eq!(kinds(&evs, "unassigned")[0]["incident"], "fire-1");
    // Out of every incident: an SOS has nobody to reach, and says so.
    h.request(
        off,
        ClientMsg::Leave {
            id: 4,
            incident: duty(),
        },
    );
    let r = h.request(
        off,
        ClientMsg::Sos {
            id: 5,
            msg_id: None,
            incident: None,
            text: None,
        },
    );
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{r:?}"
    );
}
