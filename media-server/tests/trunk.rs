//! Trunks over real QUIC on loopback: mutual authentication against the province CA.

use std::net::SocketAddr;
use std::time::Duration;

use media_server::cascade::ca::ProvinceCa;
use media_server::cascade::tls::{self, TrunkCredentials};
use trunk::NodeName;

const WAIT: Duration = Duration::from_secs(10);

fn creds(ca: &ProvinceCa, node: &str) -> TrunkCredentials {
    let c = ca.issue(&NodeName::parse(node).unwrap()).unwrap();
    TrunkCredentials::from_pem(ca.cert_pem(), &c.cert_pem, &c.key_pem).unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Dials `server` as `client` expecting node `expect`; returns whether both sides ended up with
/// a working connection (a stream round trip), bounded in time.
async fn handshake(
    server: &TrunkCredentials,
    client: &TrunkCredentials,
    expect: &str,
) -> (bool, bool) {
    let srv = tls::endpoint(loopback(), server).unwrap();
    let addr = srv.local_addr().unwrap();
    let cli = tls::endpoint(loopback(), client).unwrap();
    let accept = tokio::spawn(async move {
        let Some(incoming) = srv.accept().await else {
            return false;
        };
        let Ok(conn) = incoming.await else {
            return false;
        };
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return false;
        };
        let Ok(got) = recv.read_to_end(64).await else {
            return false;
        };
        send.write_all(&got).await.is_ok() && send.finish().is_ok() && {
            let _ = conn.closed().await;
            true
        }
    });
    let client_ok = async {
        let conn = cli.connect(addr, expect).ok()?.await.ok()?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(b"hello").await.ok()?;
        send.finish().ok()?;
        let echo = recv.read_to_end(64).await.ok()?;
        conn.close(0u32.into(), b"done");
        (echo == b"hello").then_some(())
    };
    let client_ok = tokio::time::timeout(WAIT, client_ok)
        .await
        .ok()
        .flatten()
        .is_some();
    cli.close(0u32.into(), b"done");
    let server_ok = tokio::time::timeout(WAIT, accept)
        .await
        .map(|r| r.unwrap_or(false))
        .unwrap_or(false);
    (server_ok, client_ok)
}

#[tokio::test]
async fn nodes_of_the_province_ca_connect_and_names_are_checked() {
    let ca = ProvinceCa::generate("test province").unwrap();
    let (city, county) = (creds(&ca, "city-a"), creds(&ca, "county-7"));
    assert_eq!(handshake(&city, &county, "city-a").await, (true, true));

    // The accepting side checks the name the dialler claims against its certificate, and the
    // transport is the media-tuned one: datagrams carry a 1200-byte RTP packet from the start.
    let srv = tls::endpoint(loopback(), &city).unwrap();
    let addr = srv.local_addr().unwrap();
    let cli = tls::endpoint(loopback(), &county).unwrap();
    let (server_conn, client_conn) = tokio::time::timeout(WAIT, async {
        let c = cli.connect(addr, "city-a").unwrap();
        let s = async { srv.accept().await.unwrap().await.unwrap() };
        let (s, c) = tokio::join!(s, c);
        (s, c.unwrap())
    })
    .await
    .expect("handshake in time");
    city.verify_peer_name(&server_conn, "county-7")
        .expect("certificate names county-7");
    assert!(
        city.verify_peer_name(&server_conn, "province").is_err(),
        "a claimed name the certificate does not carry"
    );
    county
        .verify_peer_name(&client_conn, "city-a")
        .expect("and the other way round");
    let max = client_conn.max_datagram_size().expect("datagrams enabled");
    assert!(
        max >= 1200 + 12,
        "a 1200-byte RTP payload plus its header fits: {max}"
    );
    client_conn.send_datagram(vec![0x80; 1212].into()).unwrap();
    let d = tokio::time::timeout(WAIT, server_conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.len(), 1212);
}

#[tokio::test]
async fn a_trunk_with_a_certificate_not_issued_by_the_province_ca_is_refused() {
    let ca = ProvinceCa::generate("test province").unwrap();
    let rogue = ProvinceCa::generate("test province").unwrap(); // same name, other key
    let city = creds(&ca, "city-a");
    // A dialler with a rogue certificate: the accepting node refuses it.
    let (server_ok, client_ok) = handshake(&city, &creds(&rogue, "county-7"), "city-a").await;
    assert!(
        !server_ok && !client_ok,
        "rogue client accepted: server {server_ok}, client {client_ok}"
    );
    // A rogue node answering as the parent: the dialler refuses it.
    let (server_ok, client_ok) =
        handshake(&creds(&rogue, "city-a"), &creds(&ca, "county-7"), "city-a").await;
    assert!(!server_ok && !client_ok, "rogue server accepted");
    // A genuine node that is not the expected parent: refused by name.
    let (server_ok, client_ok) =
        handshake(&creds(&ca, "city-b"), &creds(&ca, "county-7"), "city-a").await;
    assert!(!server_ok && !client_ok, "wrong parent accepted");
}

mod shell {
    use super::*;
    use media_server::cascade::shell::{self, ShellConfig, TrunkHandle};
    use std::future::Future;
    use trunk::{LayerSet, StreamAddr, StreamName, ViewerEvent, ViewerId};

    pub(super) async fn node(ca: &ProvinceCa, name: &str, parents: Vec<String>) -> TrunkHandle {
        shell::start(ShellConfig {
            node: NodeName::parse(name).unwrap(),
            listen: loopback(),
            parents,
            peers: vec![],
            grace: Duration::from_secs(10),
            credentials: creds(ca, name),
            media: None,
            revoked: None,
        })
        .await
        .unwrap()
    }

    /// Polls `cond` until it holds, at most `WAIT`.
    pub(super) async fn until<F, Fut>(what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let ok = tokio::time::timeout(WAIT, async {
            while !cond().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(ok.is_ok(), "timed out waiting for {what}");
    }

    async fn knows(h: &TrunkHandle, addr: &str) -> bool {
        h.catalog().await.iter().any(|e| e.addr.to_string() == addr)
    }

    #[tokio::test]
    async fn three_nodes_exchange_catalogs_and_set_up_a_pull_over_quic() {
        let ca = ProvinceCa::generate("test province").unwrap();
        let province = node(&ca, "province", vec![]).await;
        let city = node(&ca, "city-a", vec![province.local_addr().to_string()]).await;
        let county = node(&ca, "county-7", vec![city.local_addr().to_string()]).await;
        county.publish(StreamName::parse("cam-1").unwrap(), LayerSet::first(2));
        until("the province to learn county-7/cam-1", || {
            knows(&province, "county-7/cam-1")
        })
        .await;
        let entry = province
            .catalog()
            .await
            .into_iter()
            .find(|e| e.addr.to_string() == "county-7/cam-1")
            .unwrap();
        assert_eq!(
            (entry.layers, entry.cost),
            (LayerSet::first(2), 2),
            "two hops up, both layers"
        );
        assert_eq!(city.trunks().await.len(), 2);

        // A viewer at the province: the pull walks down and the path completes.
        let addr = StreamAddr::parse("county-7/cam-1").unwrap();
        province.subscribe(ViewerId(1), addr.clone(), LayerSet(1));
        until("the viewer's path to complete", || {
            let ev = province.take_events();
            async move {
                ev.iter()
                    .any(|(v, _, e)| *v == ViewerId(1) && *e == ViewerEvent::Flowing)
            }
        })
        .await;
        let route = county.route(&addr).expect("the county forwards the stream");
        assert_eq!(
            route.outputs,
            vec![(
                trunk::Hop::Trunk(NodeName::parse("city-a").unwrap()),
                LayerSet(1)
            )]
        );

        // Unpublished: withdrawn up the tree.
        county.unpublish(StreamName::parse("cam-1").unwrap());
        until("the withdrawal to reach the province", || async {
            !knows(&province, "county-7/cam-1").await
        })
        .await;

        // A node going away: its parent sees the trunk down.
        county.shutdown().await;
        until("city-a to drop the trunk", || async {
            city.trunks().await.len() == 1
        })
        .await;
        city.shutdown().await;
        province.shutdown().await;
    }
}

/// `[trunk]` in the node config: two whole nodes (media-server composition) link up as parent
/// and child over their trunk endpoints.
#[tokio::test]
async fn nodes_started_from_config_link_as_parent_and_child() {
    use media_server::config::NodeConfig;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ProvinceCa::init(&ca_dir, "test province").unwrap();
    let ca = ProvinceCa::load(&ca_dir).unwrap();
    let config = |name: &str, parent: Option<String>| {
        let (cert, key) = ca
            .issue_to(&NodeName::parse(name).unwrap(), &dir.path().join("certs"))
            .unwrap();
        let mut c = NodeConfig::default();
        c.node.id = Some(name.parse().unwrap());
        c.node.data_dir = dir.path().join(name);
        c.http.listen = loopback().to_string().parse().unwrap();
        c.media.listen = loopback();
        c.quic.listen = loopback();
        c.trunk.listen = Some(loopback());
        c.trunk.parent = parent;
        c.trunk.ca = Some(ca_dir.join("ca.pem"));
        c.trunk.cert = Some(cert);
        c.trunk.key = Some(key);
        c
    };
    let province = media_server::node::start(config("province", None))
        .await
        .unwrap();
    let parent = province.trunk.as_ref().unwrap().local_addr().to_string();
    let city = media_server::node::start(config("city-a", Some(parent)))
        .await
        .unwrap();
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            let p = province.trunk.as_ref().unwrap().trunks().await;
            let c = city.trunk.as_ref().unwrap().trunks().await;
            if p.iter().any(|n| n.as_str() == "city-a")
                && c.iter().any(|n| n.as_str() == "province")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "trunk between the nodes did not come up");
    let health = city.health().await;
    assert_eq!(health.status, "ok", "{health:?}");
    assert_eq!(health.trunks.as_ref().map(|t| t.status), Some("ok"));

    // The parent goes away: the city still serves its own users (200, `degraded`), and says
    // which trunk is down.
    province.shutdown().await;
    let degraded = tokio::time::timeout(WAIT, async {
        loop {
            let h = city.health().await;
            if h.status != "ok" {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the city's health notices its parent is gone");
    assert_eq!(degraded.status, "degraded", "{degraded:?}");
    assert_eq!(degraded.failed, vec!["trunks"]);
    let detail = degraded.trunks.unwrap().detail.unwrap();
    assert!(detail.contains("province"), "{detail}");
    assert_eq!(degraded.media.status, "ok");
    city.shutdown().await;
}

/// The issue's topology over real QUIC, the county–city-a trunk through the project's UDP relay
/// (20 ms each way): cut it and the province's pull moves to city-b within 3 s (idle timeout 1 s +
/// rerouting); restore it and the pull moves back.
#[tokio::test]
async fn a_cut_trunk_fails_over_to_the_second_parent_and_back() {
    use netem::{ImpairConfig, UdpRelay};
    use shell::{node, until};
    use trunk::{Hop, LayerSet, StreamAddr, StreamName, ViewerId};
    let ca = ProvinceCa::generate("test province").unwrap();
    let province = node(&ca, "province", vec![]).await;
    let city_a = node(&ca, "city-a", vec![province.local_addr().to_string()]).await;
    let city_b = node(&ca, "city-b", vec![province.local_addr().to_string()]).await;
    let hop = ImpairConfig::perfect().delay(Duration::from_millis(20));
    let relay = UdpRelay::start(loopback(), city_a.local_addr(), hop.clone(), hop)
        .await
        .unwrap();
    let county = node(
        &ca,
        "county",
        vec![
            relay.local_addr().to_string(),
            city_b.local_addr().to_string(),
        ],
    )
    .await;
    county.publish(StreamName::parse("cam").unwrap(), LayerSet(1));
    let addr = StreamAddr::parse("county/cam").unwrap();
    let trunk_to = |n: &str| Hop::Trunk(NodeName::parse(n).unwrap());
    let source_is =
        |h: &TrunkHandleRef, n: &str| h.route(&addr).and_then(|r| r.source) == Some(trunk_to(n));
    let sends_to = |h: &TrunkHandleRef, n: &str| {
        h.route(&addr)
            .is_some_and(|r| r.outputs.iter().any(|(o, _)| *o == trunk_to(n)))
    };
    // Both cities know it; the province prefers the primary path.
    until("the catalog to converge", || async {
        province
            .catalog()
            .await
            .iter()
            .any(|e| e.addr == addr && e.cost == 2)
    })
    .await;
    province.subscribe(ViewerId(1), addr.clone(), LayerSet(1));
    until("the pull via city-a", || async {
        source_is(&province, "city-a") && sends_to(&county, "city-a")
    })
    .await;

    relay.set_cut(true);
    let cut_at = std::time::Instant::now();
    until("the pull via city-b", || async {
        source_is(&province, "city-b")
            && sends_to(&county, "city-b")
            && sends_to(&city_b, "province")
    })
    .await;
    let failover = cut_at.elapsed();
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
    eprintln!("failover to city-b after {failover:?}");

    relay.set_cut(false);
    let back_at = std::time::Instant::now();
    until("the pull to move back to city-a", || async {
        source_is(&province, "city-a")
            && sends_to(&county, "city-a")
            && !sends_to(&county, "city-b")
    })
    .await;
    eprintln!("back on city-a after {:?}", back_at.elapsed());
    for h in [county, city_a, city_b, province] {
        h.shutdown().await;
    }
    relay.shutdown().await;
}

type TrunkHandleRef = media_server::cascade::shell::TrunkHandle;

/// A node of the province claiming another node's name in its `Hello` is closed, and so is a
/// connection that never opens its control stream; neither becomes a trunk.
#[tokio::test]
async fn a_node_claiming_a_name_its_certificate_does_not_carry_is_closed() {
    use trunk::wire::{encode, Message};
    let ca = ProvinceCa::generate("test province").unwrap();
    let city = shell::node(&ca, "city-a", vec![]).await;
    let liar = creds(&ca, "county-7");
    let ep = tls::endpoint_with(loopback(), &liar, liar.client_config_any_node().unwrap()).unwrap();
    let conn = tokio::time::timeout(WAIT, ep.connect(city.local_addr(), tls::ANY_NODE).unwrap())
        .await
        .unwrap()
        .expect("a CA-issued certificate completes the handshake");
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(&Message::Hello {
        node: NodeName::parse("province").unwrap(),
    }))
    .await
    .unwrap();
    let reason = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed in time");
    assert!(
        format!("{reason}").contains("name not in certificate"),
        "{reason}"
    );
    // Silent after the handshake: closed after the Hello timeout.
    let silent = tokio::time::timeout(WAIT, ep.connect(city.local_addr(), tls::ANY_NODE).unwrap())
        .await
        .unwrap()
        .unwrap();
    let reason = tokio::time::timeout(WAIT, silent.closed())
        .await
        .expect("closed in time");
    assert!(
        format!("{reason}").contains("no control stream"),
        "{reason}"
    );
    assert!(city.trunks().await.is_empty());
    city.shutdown().await;
}

/// A node whose certificate the province revokes (`ca revoke`, the list reread by the running
/// parent) loses its trunk within seconds and is refused from then on, backing off between
/// tries; a new certificate issued to it is accepted.
#[tokio::test]
async fn a_revoked_node_certificate_loses_its_trunk_and_is_refused() {
    use media_server::cascade::shell::{self as sh, ShellConfig};
    let dir = tempfile::tempdir().unwrap();
    ProvinceCa::init(dir.path(), "test province").unwrap();
    let ca = ProvinceCa::load(dir.path()).unwrap();
    let list = dir.path().join(media_server::cascade::ca::REVOKED);
    std::fs::write(&list, "# nothing revoked yet\n").unwrap();
    let cfg = |name: &str,
               parents: Vec<String>,
               credentials: TrunkCredentials,
               revoked: Option<std::path::PathBuf>| ShellConfig {
        node: NodeName::parse(name).unwrap(),
        listen: loopback(),
        parents,
        peers: vec![],
        grace: Duration::from_secs(10),
        credentials,
        media: None,
        revoked,
    };
    let province = sh::start(cfg(
        "province",
        vec![],
        creds(&ca, "province"),
        Some(list.clone()),
    ))
    .await
    .unwrap();
    let addr = province.local_addr().to_string();
    let stolen = ca.issue(&NodeName::parse("township").unwrap()).unwrap();
    let stolen_creds =
        TrunkCredentials::from_pem(ca.cert_pem(), &stolen.cert_pem, &stolen.key_pem).unwrap();
    let township = sh::start(cfg("township", vec![addr.clone()], stolen_creds, None))
        .await
        .unwrap();
    let up = |h: &TrunkHandleRef| {
        let h = h.clone();
        async move { h.trunks().await.iter().any(|p| p.as_str() == "township") }
    };
    shell::until("the township's trunk up", || up(&province)).await;

    ProvinceCa::revoke(dir.path(), &stolen.cert_pem, "township.pem").unwrap();
    shell::until("the province to close the revoked trunk", || async {
        !up(&province).await
    })
    .await;
    // The township keeps dialling; for the next 6 s every try is refused.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        assert!(
            !up(&province).await,
            "a revoked certificate got a trunk again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    township.shutdown().await;

    // A fresh certificate for the township is accepted.
    let renewed = shell::node(&ca, "township", vec![addr]).await;
    shell::until("the renewed township's trunk up", || up(&province)).await;
    renewed.shutdown().await;
    province.shutdown().await;

    // A list that does not parse stops a node from starting, with the line named.
    std::fs::write(&list, "not-a-fingerprint\n").unwrap();
    let err = sh::start(cfg("province", vec![], creds(&ca, "province"), Some(list)))
        .await
        .err()
        .expect("a bad list is refused");
    assert!(format!("{err:#}").contains("line 1"), "{err:#}");
}
