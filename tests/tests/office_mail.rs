//! The mobile office's store-and-forward, end to end: a node in-process with its real SQLite
//! store, native clients (`signaling::client`) over QUIC, links cut by the project's relay.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start_node, TestNode, WAIT};
use media_server::impair::{ImpairConfig, UdpRelay};
use serde_json::Value;
use signaling::auth::Role;
use signaling::client::{self, ClientConfig, ClientError, ClientEvent};
use signaling::proto::{ClientMsg, ErrorCode, OrderAnswer};

async fn login(node: &TestNode, addr: String, sub: &str, role: Role, edit: impl FnOnce(&mut ClientConfig)) -> (client::Client, client::Events) {
    let mut cfg = ClientConfig::new(addr, node.token(sub, role));
    edit(&mut cfg);
    tokio::time::timeout(WAIT, client::connect(cfg)).await.expect("connect in time").expect("connect")
}

async fn relay_to(node: &TestNode) -> UdpRelay {
    UdpRelay::start("127.0.0.1:0".parse().unwrap(), node.node.quic_addr, ImpairConfig::perfect(), ImpairConfig::perfect())
        .await
        .unwrap()
}

/// Tablet settings for a bad link: notice a dead connection in 1 s, retry fast.
fn flaky(cfg: &mut ClientConfig) {
    cfg.idle_timeout = Duration::from_secs(1);
    cfg.keep_alive = Duration::from_millis(250);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(300);
    cfg.request_timeout = Duration::from_secs(5);
}

fn chat(msg_id: String, text: String) -> ClientMsg {
    ClientMsg::Chat { id: 0, msg_id: Some(msg_id), incident: Some("duty".parse().unwrap()), to: None, text }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_over_a_flapping_link_arrive_once_in_order_and_end_accepted() {
    let node = start_node().await;
    let relay = relay_to(&node).await;
    let (officer, mut oev) = login(&node, relay.local_addr().to_string(), "off-1", Role::Officer, flaky).await;
    let (cmd, mut cev) = login(&node, node.node.quic_addr.to_string(), "cmd-1", Role::Commander, |_| {}).await;

    // The link flaps: cut 100–1500 ms, up 200–600 ms, seeded.
    let stop = Arc::new(AtomicBool::new(false));
    let relay = Arc::new(relay);
    let flapper = {
        let (stop, relay) = (stop.clone(), relay.clone());
        tokio::spawn(async move {
            let mut x: u64 = 0x5EED_0FF1_A9C3;
            let mut next = move |lo: u64, hi: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                lo + x % (hi - lo)
            };
            let mut cuts = 0u32;
            while !stop.load(Ordering::Relaxed) {
                relay.set_cut(true);
                cuts += 1;
                tokio::time::sleep(Duration::from_millis(next(100, 1500))).await;
                relay.set_cut(false);
                tokio::time::sleep(Duration::from_millis(next(200, 600))).await;
            }
            cuts
        })
    };

    // The officer accepts every order it receives, one after the other, over the same bad link.
    let (ans_tx, mut ans_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let answerer = {
        let officer = officer.clone();
        tokio::spawn(async move {
            while let Some(order) = ans_rx.recv().await {
                let r = officer
                    .deliver(ClientMsg::OrderAnswer {
                        id: 0,
                        msg_id: Some(format!("ans-{order}")),
                        order: order.clone(),
                        answer: OrderAnswer::Accept,
                        eta_min: Some(10),
                        reason: None,
                    })
                    .await;
                r.unwrap_or_else(|e| panic!("answering {order}: {e}"));
            }
        })
    };
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut disconnects = 0;
        while got.len() < 1000 {
            match tokio::time::timeout(Duration::from_secs(120), oev.next()).await.expect("orders keep coming") {
                Some(ClientEvent::Mail { item, .. }) if item["kind"] == "order" => {
                    let id = item["order"].as_str().unwrap().to_owned();
                    ans_tx.send(id.clone()).unwrap();
                    got.push(id);
                }
                Some(ClientEvent::Disconnected { .. }) => disconnects += 1,
                Some(ClientEvent::Closed { code, reason }) => panic!("officer closed: {code:?} {reason}"),
                None => panic!("event stream ended"),
                Some(_) => {}
            }
        }
        (got, disconnects)
    });

    let mut sent = Vec::new();
    for i in 0..1000 {
        let data = tokio::time::timeout(
            WAIT,
            cmd.deliver(ClientMsg::Order {
                id: 0,
                msg_id: Some(format!("o-{i}")),
                incident: "duty".parse().unwrap(),
                to: "off-1".parse().unwrap(),
                text: format!("Sandbags to dike section {i}"),
            }),
        )
        .await
        .expect("order acknowledged in time")
        .expect("order acknowledged");
        sent.push(data["order"]["id"].as_str().unwrap().to_owned());
    }
    let (got, disconnects) = receiver.await.unwrap();
    assert_eq!(got.len(), 1000);
    assert_eq!(got, sent, "all 1,000 orders, each once, in the order sent");

    // Every order ends accepted, and the sender was told each state once.
    let mut accepted = HashSet::new();
    while accepted.len() < 1000 {
        match tokio::time::timeout(Duration::from_secs(120), cev.next()).await.expect("states keep coming") {
            Some(ClientEvent::Mail { item, .. }) if item["kind"] == "order_state" && item["state"] == "accepted" => {
                let id = item["order"].as_str().unwrap().to_owned();
                assert!(accepted.insert(id.clone()), "accepted state of {id} told twice");
            }
            Some(ClientEvent::Closed { code, reason }) => panic!("commander closed: {code:?} {reason}"),
            None => panic!("event stream ended"),
            Some(_) => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    let cuts = flapper.await.unwrap();
    drop(officer);
    let _ = tokio::time::timeout(WAIT, answerer).await;
    let orders: Value = reqwest::Client::new()
        .get(node.url("/api/orders"))
        .bearer_auth(node.token("cmd-1", Role::Commander))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let orders = orders["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1000);
    assert!(orders.iter().all(|o| o["state"] == "accepted" && o["eta_min"] == 10 && o["delivered_at"].is_u64()));
    let dropped = relay.stats().cut_dropped;
    eprintln!("link cut {cuts} times, {dropped} datagrams dropped, officer reconnected {disconnects} times");
    assert!(cuts >= 2 && dropped > 0, "the link really flapped");
    assert!(disconnects >= 1, "the officer's client lost its connection at least once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_offline_for_30_s_sends_50_chats_that_arrive_once() {
    let node = start_node().await;
    let relay = relay_to(&node).await;
    let (officer, mut oev) = login(&node, relay.local_addr().to_string(), "off-2", Role::Officer, |c| {
        c.idle_timeout = Duration::from_secs(2);
        c.keep_alive = Duration::from_millis(500);
        c.backoff_max = Duration::from_secs(2);
    })
    .await;
    let (_op, mut opev) = login(&node, node.node.quic_addr.to_string(), "op-2", Role::Operator, |_| {}).await;

    relay.set_cut(true);
    let offline_at = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(WAIT, oev.next()).await.expect("the client notices") {
            Some(ClientEvent::Disconnected { .. }) => break,
            Some(ClientEvent::Closed { .. }) | None => panic!("closed"),
            Some(_) => {}
        }
    }
    // In the tunnel: the officer keeps writing. Each message waits in the client until it is
    // acknowledged by the node.
    let mut pending = Vec::new();
    for i in 0..50 {
        let officer = officer.clone();
        pending.push(tokio::spawn(async move { officer.deliver(chat(format!("tunnel-{i}"), format!("note {i}"))).await }));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep_until(offline_at + Duration::from_secs(30)).await;
    relay.set_cut(false);
    for p in pending {
        let r = tokio::time::timeout(WAIT, p).await.expect("delivered after the reconnect").unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    // A marker sent last: everything before it has been stored.
    officer.deliver(chat("marker".into(), "end".into())).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, opev.next()).await.expect("chats arrive") {
            Some(ClientEvent::Mail { item, .. }) if item["kind"] == "chat" => {
                let id = item["msg_id"].as_str().unwrap().to_owned();
                if id == "marker" {
                    break;
                }
                seen.push(id);
            }
            Some(ClientEvent::Closed { .. }) | None => panic!("closed"),
            Some(_) => {}
        }
    }
    assert_eq!(seen.len(), 50, "each message once: {seen:?}");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sos_reaches_every_member_within_1_s_while_1000_chats_are_in_flight() {
    let node = start_node().await;
    let quic = node.node.quic_addr.to_string();
    let mut members = Vec::new();
    for (sub, role) in [("cmd-3", Role::Commander), ("op-3", Role::Operator), ("op-4", Role::Operator), ("off-4", Role::Officer)] {
        members.push((sub, login(&node, quic.clone(), sub, role, |_| {}).await));
    }
    let (raiser, _rev) = login(&node, quic.clone(), "off-3", Role::Officer, |_| {}).await;
    // Five chatty members, 200 messages each, all at once.
    let mut senders = Vec::new();
    for s in 0..5 {
        let (c, _e) = login(&node, quic.clone(), &format!("talk-{s}"), Role::Operator, |_| {}).await;
        senders.push(tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..200 {
                let c = c.clone();
                tasks.push(tokio::spawn(async move { c.deliver(chat(format!("t{s}-{i}"), format!("status {i}"))).await }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            drop(_e);
        }));
    }
    // Raise the SOS while the chat is flowing.
    let (first_sub, (_, ev)) = &mut members[1];
    loop {
        match tokio::time::timeout(WAIT, ev.next()).await.expect("chat flows") {
            Some(ClientEvent::Mail { item, .. }) if item["kind"] == "chat" => break,
            Some(_) => {}
            None => panic!("{first_sub} closed"),
        }
    }
    let raised_at = tokio::time::Instant::now();
    let r = raiser
        .deliver(ClientMsg::Sos { id: 0, msg_id: Some("help-1".into()), incident: None, text: Some("shots fired".into()) })
        .await
        .unwrap();
    let sos = r["sos"].as_str().unwrap().to_owned();
    for (sub, (_, ev)) in &mut members {
        let deadline = raised_at + Duration::from_secs(1);
        loop {
            let next = tokio::time::timeout_at(deadline, ev.next())
                .await
                .unwrap_or_else(|_| panic!("{sub} did not get the SOS within 1 s"));
            match next {
                Some(ClientEvent::Mail { item, .. }) if item["kind"] == "sos" => {
                    assert_eq!(item["sos"], sos.as_str());
                    assert_eq!(item["text"], "shots fired");
                    break;
                }
                Some(_) => {}
                None => panic!("{sub} closed"),
            }
        }
    }
    for s in senders {
        tokio::time::timeout(WAIT, s).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_addressee_answers_an_order() {
    let node = start_node().await;
    let quic = node.node.quic_addr.to_string();
    let (cmd, _c) = login(&node, quic.clone(), "cmd-5", Role::Commander, |_| {}).await;
    let (off, _o) = login(&node, quic.clone(), "off-5", Role::Officer, |_| {}).await;
    let (other, _x) = login(&node, quic.clone(), "off-6", Role::Officer, |_| {}).await;
    let data = cmd
        .deliver(ClientMsg::Order { id: 0, msg_id: Some("x".into()), incident: "duty".parse().unwrap(), to: "off-5".parse().unwrap(), text: "Hold the bridge".into() })
        .await
        .unwrap();
    let order = data["order"]["id"].as_str().unwrap().to_owned();
    let answer = |a| ClientMsg::OrderAnswer { id: 0, msg_id: None, order: order.clone(), answer: a, eta_min: Some(3), reason: Some("busy".into()) };
    for c in [&cmd, &other] {
        match c.request(answer(OrderAnswer::Accept)).await {
            Err(ClientError::Remote { code, .. }) => assert!(matches!(code, ErrorCode::Forbidden), "{code}"),
            other => panic!("{other:?}"),
        }
    }
    // Over HTTP: 403 for others, 200 for the addressee.
    let http = reqwest::Client::new();
    let url = node.url(&format!("/api/orders/{order}/answer"));
    let body = r#"{"answer":"decline","reason":"cut off by water"}"#;
    let r = http.post(&url).bearer_auth(node.token("off-6", Role::Officer)).body(body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = http.post(&url).bearer_auth(node.token("off-5", Role::Officer)).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Final: accepting a declined order is a conflict.
    match off.request(answer(OrderAnswer::Accept)).await {
        Err(ClientError::Remote { code, .. }) => assert!(matches!(code, ErrorCode::Conflict), "{code}"),
        other => panic!("{other:?}"),
    }
}
