//! Trunks over real QUIC on loopback: mutual authentication against the province CA.

use std::net::SocketAddr;
use std::time::Duration;

use media_server::trunk::ca::ProvinceCa;
use media_server::trunk::tls::{self, TrunkCredentials};
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
