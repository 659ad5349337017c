//! Four nodes' nats-servers on loopback, chained by TLS leaf connections as the province is:
//! province ← city-a / city-b ← county, the county's first parent city-a and its second city-b.
//! Each server is a real nats-server started and killed by the test, with the configuration
//! `bus::server::render` writes from the node's settings.
//!
//! One test (the servers take a second to join up; reused across the checks):
//! 1. mail from the county reaches a mailbox at the province, each message once;
//!    junk in the county's stream is skipped;
//! 2. a county node publishing under city-b's subjects is refused by city-a's permissions, and a
//!    message whose header claims another origin is refused by the receiver;
//! 3. city-a is killed (SIGKILL) with mail in flight; the county's leaf connection fails over to
//!    city-b; everything sent during the switch arrives, none twice, in order.

mod common;

use bus::{Bus, MsgId, Topic};
use common::n;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn t(s: &str) -> Topic {
    Topic::parse(s).unwrap()
}

async fn send_range(county: &bus::NatsBus, range: std::ops::Range<u32>) {
    let province = n("province");
    for i in range {
        let id = MsgId::parse(&format!("c-{i}")).unwrap();
        county
            .send(&province, &t("order.new"), &id, format!("order {i}").into())
            .await
            .unwrap();
    }
}

/// Reads `count` mails, acking each; returns their ids in arrival order.
async fn receive(mb: &mut bus::Mailbox, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < count {
        let m = tokio::time::timeout(WAIT, mb.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "mail {} of {count} within {WAIT:?} (got {ids:?})",
                    ids.len()
                )
            })
            .expect("mailbox open");
        assert_eq!(m.origin, n("county"));
        ids.push(m.id.to_string());
        m.ack().await.unwrap();
    }
    ids
}

fn expected(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("c-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn county_mail_reaches_the_province_once_through_a_failover_and_forgery_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::Ca::new(dir.path());
    let county_below: BTreeMap<_, _> = [(n("county"), vec![])].into_iter().collect();
    let cities: BTreeMap<_, _> = [
        (n("city-a"), vec![n("county")]),
        (n("city-b"), vec![n("county")]),
    ]
    .into_iter()
    .collect();
    let province = common::start(&ca, dir.path(), "province", true, vec![], cities).await;
    let mut city_a = common::start(
        &ca,
        dir.path(),
        "city-a",
        true,
        vec![province.leaf_url()],
        county_below.clone(),
    )
    .await;
    let city_b = common::start(
        &ca,
        dir.path(),
        "city-b",
        true,
        vec![province.leaf_url()],
        county_below,
    )
    .await;
    let county = common::start(
        &ca,
        dir.path(),
        "county",
        false,
        vec![city_a.leaf_url(), city_b.leaf_url()],
        BTreeMap::new(),
    )
    .await;
    common::wait_for("every leaf connection up", WAIT, || async {
        let counts = (
            province.leaf_count().await,
            city_a.leaf_count().await,
            city_b.leaf_count().await,
        );
        // Each city counts its own link to the province too.
        (counts == (2, 2, 1)).then_some(())
    })
    .await;
    let p = province.bus().await;
    let c = county.bus().await;

    // 1. Mail from the county, some sent before the province's mailbox exists.
    send_range(&c, 0..20).await;
    let mut mb = p.mailbox(&n("county"), "office").await.unwrap();
    send_range(&c, 20..40).await;
    assert_eq!(receive(&mut mb, 40).await, expected(0..40));

    // 2. Forgery. The county's server publishes under city-b's name: city-a's permissions for
    //    the certificate "county" refuse it. A header claiming city-b on the county's own subject
    //    passes the servers and is refused by the receiver. Then a genuine event: it must be the
    //    first the province sees.
    let mut alarms = p.subscribe(None, &t("alarm")).await.unwrap();
    let raw = c.client();
    let mut claims_b = async_nats::HeaderMap::new();
    claims_b.insert(bus::subject::ORIGIN_HEADER, "city-b");
    let deadline = Instant::now() + WAIT;
    let ev = loop {
        raw.publish_with_headers("yw.city-b.evt.alarm", claims_b.clone(), "forged".into())
            .await
            .unwrap();
        raw.publish_with_headers(
            "yw.county.evt.alarm",
            claims_b.clone(),
            "mislabelled".into(),
        )
        .await
        .unwrap();
        c.publish(&t("alarm"), "genuine".into()).await.unwrap();
        // Interest from the province reaches the county asynchronously: repeat until it has.
        if let Ok(ev) = tokio::time::timeout(Duration::from_millis(200), alarms.next()).await {
            break ev.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "an alarm from the county within {WAIT:?}"
        );
    };
    assert_eq!(
        (ev.origin.as_str(), &ev.payload[..]),
        ("county", &b"genuine"[..])
    );
    // Flush what is in flight with a final genuine marker: nothing forged in between.
    c.publish(&t("alarm"), "last".into()).await.unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, alarms.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ev.origin.as_str(),
            "county",
            "forged alarm delivered: {ev:?}"
        );
        assert!(
            &ev.payload[..] == b"genuine" || &ev.payload[..] == b"last",
            "forged alarm delivered: {ev:?}"
        );
        if &ev.payload[..] == b"last" {
            break;
        }
    }

    // Junk in the county's stream (a mislabelled origin, no id, bytes that are no subject of
    // ours are refused by the stream itself): the mailbox drops it with a log and goes on.
    let js = async_nats::jetstream::with_domain(raw.clone(), "county");
    let mut mislabelled = async_nats::HeaderMap::new();
    mislabelled.insert(bus::subject::ORIGIN_HEADER, "city-b");
    mislabelled.insert(bus::subject::MSG_ID_HEADER, "junk-1");
    js.publish_with_headers("yw.county.box.province.chat", mislabelled, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut no_id = async_nats::HeaderMap::new();
    no_id.insert(bus::subject::ORIGIN_HEADER, "county");
    js.publish_with_headers("yw.county.box.province.chat", no_id, "y".into())
        .await
        .unwrap()
        .await
        .unwrap();
    send_range(&c, 40..41).await;
    assert_eq!(receive(&mut mb, 1).await, expected(40..41), "junk skipped");

    // A request from the county answered by the province (its interest crosses both hops).
    let mut ping = p.serve(&t("ping")).await.unwrap();
    let server = tokio::spawn(async move {
        while let Some(req) = ping.next().await {
            let from = req.origin.to_string();
            req.respond(from.into()).await.unwrap();
        }
    });
    let answer = common::wait_for("the province's answer", WAIT, || async {
        c.request(
            &n("province"),
            &t("ping"),
            "?".into(),
            Duration::from_millis(500),
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(&answer[..], b"county");
    server.abort();

    // 3. Kill city-a with mail on the way; the county fails over to city-b.
    let sender = {
        let c = c.clone();
        tokio::spawn(async move { send_range(&c, 41..141).await })
    };
    city_a.process.kill().await.unwrap();
    let killed = Instant::now();
    tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
    common::wait_for("the county on city-b", WAIT, || async {
        (city_b.leaf_count().await == 2).then_some(())
    })
    .await;
    let ids = receive(&mut mb, 100).await;
    eprintln!(
        "failover: 100 mails sent across the kill arrived {:?} after it",
        killed.elapsed()
    );
    assert_eq!(ids, expected(41..141), "every mail once, in order");
    // Nothing more is pending: the next mail is the next new one.
    send_range(&c, 141..142).await;
    assert_eq!(receive(&mut mb, 1).await, expected(141..142));
}
