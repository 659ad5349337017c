//! The office: orders and their states, chat, mail sync and receipts, SOS.

use super::*;

#[test]
fn orders_flow_sent_delivered_accepted_done_and_only_the_addressee_answers() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    let (other, _) = h.connect("off-2", Role::Officer);
    let order = |id, msg_id: &str| ClientMsg::Order {
        id,
        msg_id: Some(msg_id.into()),
        incident: duty(),
        to: Subject::parse("off-1").unwrap(),
        text: "Evacuate Jiefang Road 12".into(),
    };
    let r = h.request(cmd, order(1, "o-1"));
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    let oid = data["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(data["order"]["state"], "sent");
    // A retry (lost acknowledgement) stores nothing new.
    let r = h.request(cmd, order(2, "o-1"));
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(data["order"]["id"], oid.as_str());
    let m = h.mails(off);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].0, m[0].1["order"].as_str()), (1, Some(oid.as_str())));
    // The device acknowledges: delivered, and the sender is told.
    h.send(off, &ClientMsg::MailAck { upto: 1 });
    let states = |h: &mut H| -> Vec<String> {
        h.mails(cmd)
            .into_iter()
            .filter(|(_, i)| i["kind"] == "order_state")
            .map(|(_, i)| i["state"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(states(&mut h), vec!["delivered"]);
    // Someone else may not answer it.
    let ans = |id, a: OrderAnswer, eta: Option<u32>, reason: Option<&str>| ClientMsg::OrderAnswer {
        id,
        msg_id: None,
        order: oid.clone(),
        answer: a,
        eta_min: eta,
        reason: reason.map(str::to_owned),
    };
    let r = h.request(other, ans(3, OrderAnswer::Accept, Some(5), None));
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.request(cmd, ans(4, OrderAnswer::Accept, Some(5), None));
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{r:?}"
    );
    // Done before accepted is not a valid transition.
    let r = h.request(off, ans(5, OrderAnswer::Done, None, None));
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::Conflict,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.request(off, ans(6, OrderAnswer::Accept, Some(12), None));
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    // Answering twice the same way is a retry, not an error.
    let r = h.request(off, ans(7, OrderAnswer::Accept, Some(12), None));
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    h.request(off, ans(8, OrderAnswer::Done, None, None));
    assert_eq!(states(&mut h), vec!["accepted", "done"]);
    let claims = h
        .core
        .authenticate(&h.token("cmd-1", Role::Commander), UnixMs(h.now))
        .unwrap();
    let o = &h.core.orders_for(&claims, 10).unwrap()[0];
    assert_eq!((o.state, o.eta_min), (OrderState::Done, Some(12)));
    assert!(o.delivered_at.is_some() && o.accepted_at.is_some() && o.done_at.is_some());
    // Declining needs a reason.
    h.request(cmd, order(9, "o-2"));
    let oid2 = h.mails(off)[0].1["order"].as_str().unwrap().to_owned();
    let r = h.request(
        off,
        ClientMsg::OrderAnswer {
            id: 10,
            msg_id: None,
            order: oid2,
            answer: OrderAnswer::Decline,
            eta_min: None,
            reason: None,
        },
    );
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn a_chat_whose_msg_id_an_order_used_is_stored_and_delivered_not_acked_for_the_order() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    let r = h.request(
        cmd,
        ClientMsg::Order {
            id: 1,
            msg_id: Some("m-7".into()),
            incident: duty(),
            to: Subject::parse("off-1").unwrap(),
            text: "Go to gate 3".into(),
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    assert_eq!(kinds(&h.mails(off), "order").len(), 1);
    let r = h.request(
        cmd,
        ClientMsg::Chat {
            id: 2,
            msg_id: Some("m-7".into()),
            incident: None,
            to: Some(Subject::parse("off-1").unwrap()),
            text: "Bring sandbags".into(),
        },
    );
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    let chats = kinds(&h.mails(off), "chat");
    assert_eq!(chats.len(), 1, "the chat is delivered");
    assert_eq!(chats[0]["text"], "Bring sandbags");
    assert_eq!(
        data["item"], chats[0]["id"],
        "the ack names the chat, not the order"
    );
    // A retry of the chat is still a retry.
    let r = h.request(
        cmd,
        ClientMsg::Chat {
            id: 3,
            msg_id: Some("m-7".into()),
            incident: None,
            to: Some(Subject::parse("off-1").unwrap()),
            text: "Bring sandbags".into(),
        },
    );
    let ServerMsg::Result { data: again, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(again["item"], data["item"]);
    assert!(h.mails(off).is_empty(), "stored once");
}

#[test]
fn an_order_to_a_subject_that_never_connected_is_refused_and_not_stored() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (off, _) = h.connect("off-1", Role::Officer);
    h.core.closed(UnixMs(h.now), off);
    let order = |id, to: &str| ClientMsg::Order {
        id,
        msg_id: Some(format!("o-{id}")),
        incident: duty(),
        to: Subject::parse(to).unwrap(),
        text: "Go to gate 3".into(),
    };
    let r = h.request(cmd, order(1, "off-99"));
    match &r {
        ServerMsg::Error { re, code, message } => {
            assert_eq!((*re, *code), (Some(1), ErrorCode::UnknownRecipient));
            assert!(message.contains("off-99"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let claims = h
        .core
        .authenticate(&h.token("cmd-1", Role::Commander), UnixMs(h.now))
        .unwrap();
    assert!(
        h.core.orders_for(&claims, 10).unwrap().is_empty(),
        "nothing stored"
    );
    // Offline now, but it has been here: the order waits in its mailbox.
    let r = h.request(cmd, order(2, "off-1"));
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    // The node remembers who has been here across a restart (the store does).
    let mut store = crate::store::Store::open_in_memory().unwrap();
    store
        .note_subject(&Subject::parse("off-5").unwrap(), UnixMs(T0))
        .unwrap();
    let mut h2 = H::new();
    h2.core = Core::new(
        CoreConfig::default(),
        NodeId::parse("node-a").unwrap(),
        {
            let mut v = TokenVerifier::new(NodeId::parse("node-a").unwrap());
            v.trust(SigningKey::from_bytes(&[7u8; 32]).verifying_key());
            v
        },
        store,
        UnixMs(T0),
    );
    let (cmd2, _) = h2.connect("cmd-1", Role::Commander);
    let r = h2.request(cmd2, order(3, "off-5"));
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
}

#[test]
fn mail_waits_for_offline_subjects_and_replays_from_the_cursor() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, _) = h.connect("off-1", Role::Officer);
    h.core.closed(UnixMs(h.now), off);
    for i in 0..5 {
        h.request(
            op,
            ClientMsg::Chat {
                id: i,
                msg_id: Some(format!("c{i}")),
                incident: None,
                to: Some(Subject::parse("off-1").unwrap()),
                text: format!("msg {i}"),
            },
        );
    }
    // Back, on a new session: nothing arrives until it syncs, then all five in order.
    let t = h.token("off-1", Role::Officer);
    let (c2, msgs) = h.hello(t, None);
    let ServerMsg::Welcome(w) = &msgs[0] else {
        panic!()
    };
    assert_eq!((w.mail_last, w.mail_acked), (5, 0));
    h.send(
        c2,
        &ClientMsg::MailSync {
            id: 1,
            after: Some(2),
        },
    );
    let m = h.mails(c2);
    assert_eq!(m.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4, 5]);
    h.send(c2, &ClientMsg::MailAck { upto: 5 });
    // A read receipt goes back to the sender.
    let item = m[0].1["id"].as_u64().unwrap();
    h.take(op);
    let r = h.request(c2, ClientMsg::Read { id: 2, item });
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    let rec = kinds(&h.mails(op), "read");
    assert_eq!(
        (rec[0]["item"].as_u64(), rec[0]["by"].as_str()),
        (Some(item), Some("off-1"))
    );
}

#[test]
fn sos_is_urgent_reaches_commanders_and_stays_raised_until_acknowledged() {
    let mut h = H::new();
    let (cmd, _) = h.connect("cmd-1", Role::Commander);
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, _) = h.connect("off-1", Role::Officer);
    h.send(off, &pos(30.5));
    h.out.clear();
    let r = h.request(
        off,
        ClientMsg::Sos {
            id: 1,
            msg_id: Some("s1".into()),
            incident: None,
            text: Some("trapped".into()),
        },
    );
    let ServerMsg::Result { data, .. } = r else {
        panic!("{r:?}")
    };
    let sos = data["sos"].as_str().unwrap().to_owned();
    assert!(h
        .out
        .iter()
        .any(|o| matches!(o, Output::Urgent { conn, .. } if *conn == cmd)));
    let m = kinds(&h.mails(op), "sos");
    assert_eq!(
        (m[0]["text"].as_str(), m[0]["position"]["lat"].as_f64()),
        (Some("trapped"), Some(30.5))
    );
    // Officers may not acknowledge; operators may.
    let r = h.request(
        off,
        ClientMsg::SosAck {
            id: 2,
            sos: sos.clone(),
        },
    );
    assert!(
        matches!(
            r,
            ServerMsg::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.request(
        op,
        ClientMsg::SosAck {
            id: 3,
            sos: sos.clone(),
        },
    );
    assert!(matches!(r, ServerMsg::Result { .. }), "{r:?}");
    assert_eq!(kinds(&h.mails(off), "sos_ack")[0]["by"], "op-1");
    assert_eq!(kinds(&h.mails(cmd), "sos_ack")[0]["sos"], sos.as_str());
    let r = h.request(cmd, ClientMsg::SosAck { id: 4, sos });
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
