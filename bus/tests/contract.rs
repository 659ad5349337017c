//! The same contract, run against the in-process bus and the NATS bus (a real nats-server).
//!
//! Two nodes, `a` and `b`, on one medium: events reach subscribers with their origin and only
//! the origin asked for; a request is answered or refused as unanswered; mail is stored at the
//! sender, delivered once per id, in order, and what was not acknowledged comes back to the same
//! mailbox name.

mod common;

use bus::{Bus, BusError, MemoryBus, MemoryHub, MsgId, Topic};
use bytes::Bytes;
use common::n;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn t(s: &str) -> Topic {
    Topic::parse(s).unwrap()
}

fn id(s: &str) -> MsgId {
    MsgId::parse(s).unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}"))
}

async fn contract(a: &dyn Bus, b: &dyn Bus) {
    let (na, nb) = (a.node().clone(), b.node().clone());

    // Events: with their origin; a subscription to one origin sees only that origin.
    let mut any = b.subscribe(None, &t("pos")).await.unwrap();
    let mut only_b = b.subscribe(Some(&nb), &t("pos")).await.unwrap();
    // Interest crosses servers asynchronously: a publishes until b's subscription has one.
    let deadline = tokio::time::Instant::now() + WAIT;
    let ev = loop {
        a.publish(&t("pos"), Bytes::from_static(b"from a"))
            .await
            .unwrap();
        if let Ok(ev) = tokio::time::timeout(Duration::from_millis(100), any.next()).await {
            break ev.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's event at b within {WAIT:?}"
        );
    };
    assert_eq!(
        (ev.origin.clone(), &ev.payload[..]),
        (na.clone(), &b"from a"[..])
    );
    b.publish(&t("pos"), Bytes::from_static(b"from b"))
        .await
        .unwrap();
    loop {
        let ev = within("b's event", any.next()).await.unwrap();
        if &ev.payload[..] == b"from b" {
            assert_eq!(ev.origin, nb);
            break;
        }
        assert_eq!(ev.origin, na, "only a's repeats before b's event");
    }
    let ev = within("b's event on b's filter", only_b.next())
        .await
        .unwrap();
    assert_eq!(
        &ev.payload[..],
        b"from b",
        "a's event must not reach a subscription to b"
    );

    // Oversized: refused before it leaves.
    let big = Bytes::from(vec![0u8; bus::DEFAULT_MAX_PAYLOAD + 1]);
    assert!(matches!(
        a.publish(&t("pos"), big.clone()).await,
        Err(BusError::TooLarge(..))
    ));
    assert!(matches!(
        a.send(&nb, &t("chat"), &id("big"), big).await,
        Err(BusError::TooLarge(..))
    ));

    // Requests: answered by the target, with the asker's origin; unanswered ones say so.
    let mut echo = b.serve(&t("echo")).await.unwrap();
    let server = tokio::spawn(async move {
        while let Some(req) = echo.next().await {
            let answer = format!("{} asked {:?}", req.origin, req.payload);
            req.respond(Bytes::from(answer)).await.unwrap();
        }
    });
    let answer = common::wait_for("b's answer", WAIT, || async {
        a.request(
            &nb,
            &t("echo"),
            Bytes::from_static(b"hi"),
            Duration::from_millis(500),
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(&answer[..], format!("{na} asked b\"hi\"").as_bytes());
    let started = std::time::Instant::now();
    assert!(matches!(
        a.request(&nb, &t("nobody"), Bytes::new(), Duration::from_millis(500))
            .await,
        Err(BusError::NoAnswer(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused promptly"
    );
    server.abort();

    // Mail: stored before the mailbox exists; each id once, in order; other recipients' mail is
    // not in this mailbox.
    a.send(&nb, &t("chat"), &id("m1"), "one".into())
        .await
        .unwrap();
    a.send(&nb, &t("chat"), &id("m2"), "two".into())
        .await
        .unwrap();
    a.send(&nb, &t("chat"), &id("m1"), "one again".into())
        .await
        .unwrap();
    a.send(&n("elsewhere"), &t("chat"), &id("x1"), "not for b".into())
        .await
        .unwrap();
    a.send(&nb, &t("order.new"), &id("m3"), "three".into())
        .await
        .unwrap();
    let mut mb = b.mailbox(&na, "office").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = within("mail", mb.next()).await.unwrap();
        assert_eq!(m.origin, na);
        got.push((m.id.to_string(), m.topic.to_string(), m.payload.clone()));
        if m.id.as_str() != "m3" {
            m.ack().await.unwrap();
        }
    }
    assert_eq!(
        got,
        vec![
            ("m1".into(), "chat".into(), Bytes::from("one")),
            ("m2".into(), "chat".into(), Bytes::from("two")),
            ("m3".into(), "order.new".into(), Bytes::from("three")),
        ]
    );
    // m3 was not acknowledged: the same mailbox name gets it again, then new mail, nothing else.
    drop(mb);
    a.send(&nb, &t("chat"), &id("m4"), "four".into())
        .await
        .unwrap();
    let mut mb = b.mailbox(&na, "office").await.unwrap();
    let m = within("m3 again", mb.next()).await.unwrap();
    assert_eq!(m.id.as_str(), "m3");
    m.ack().await.unwrap();
    let m = within("m4", mb.next()).await.unwrap();
    assert_eq!(m.id.as_str(), "m4");
    m.ack().await.unwrap();
    // Another mailbox name has its own cursor: it reads everything from the start.
    let mut audit = b.mailbox(&na, "audit").await.unwrap();
    let m = within("audit's first", audit.next()).await.unwrap();
    assert_eq!(m.id.as_str(), "m1");
}

#[tokio::test]
async fn the_in_process_bus_keeps_the_contract() {
    let hub = Arc::new(MemoryHub::default());
    let a = MemoryBus::on_hub(n("a"), hub.clone());
    let b = MemoryBus::on_hub(n("b"), hub);
    contract(&a, &b).await;
}

#[tokio::test]
async fn the_nats_bus_keeps_the_contract() {
    // Each node beside its own server, b's a leaf of a's: the province's shape, two levels.
    let dir = tempfile::tempdir().unwrap();
    let ca = common::Ca::new(dir.path());
    let children = [(n("b"), vec![])].into_iter().collect();
    let sa = common::start(&ca, dir.path(), "a", true, vec![], children).await;
    let sb = common::start(
        &ca,
        dir.path(),
        "b",
        false,
        vec![sa.leaf_url()],
        Default::default(),
    )
    .await;
    common::wait_for("b's leaf connection to a", WAIT, || async {
        (sa.leaf_count().await == 1).then_some(())
    })
    .await;
    let a = sa.bus().await;
    let b = sb.bus().await;
    contract(&a, &b).await;
}

#[tokio::test]
async fn a_nats_event_whose_origin_header_disagrees_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::Ca::new(dir.path());
    let server = common::start(&ca, dir.path(), "solo", false, vec![], Default::default()).await;
    let a = server.bus().await;
    let mut sub = a.subscribe(None, &t("sos")).await.unwrap();
    // A raw client on the same server claims in the header to be someone else.
    let mut h = async_nats::HeaderMap::new();
    h.insert(bus::subject::ORIGIN_HEADER, "someone-else");
    let raw = a.client();
    raw.publish_with_headers("yw.solo.evt.sos", h, "forged".into())
        .await
        .unwrap();
    raw.publish("yw.solo.evt.sos", "no header".into())
        .await
        .unwrap();
    raw.publish_with_headers(
        "yw.solo.evt.sos",
        async_nats::HeaderMap::new(),
        vec![0; 8].into(),
    )
    .await
    .unwrap();
    a.publish(&t("sos"), "genuine".into()).await.unwrap();
    let ev = within("the genuine event", sub.next()).await.unwrap();
    assert_eq!(&ev.payload[..], b"genuine");
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(!log.contains("[FTL]"), "server stayed up");
}
