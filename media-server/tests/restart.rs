//! The office store survives the node process being killed: orders acknowledged to their sender
//! (persisted) before a SIGKILL, but never delivered, reach the officer after a restart on the
//! same data directory. The real binary, real SQLite file, real QUIC clients.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use signaling::client::{self, ClientConfig, ClientEvent};
use signaling::proto::ClientMsg;

const BIN: &str = env!("CARGO_BIN_EXE_media-server");
const WAIT: Duration = Duration::from_secs(60);

struct Node {
    child: Child,
    quic: String,
    http: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &str) -> Node {
    let mut child = Command::new(BIN)
        .args([
            "--data",
            data,
            "--http",
            "127.0.0.1:0",
            "--media",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(WAIT).expect("ready line");
    let field = |key: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {line:?}"))
            .to_owned()
    };
    Node {
        child,
        quic: field("quic="),
        http: field("http="),
    }
}

fn token(data: &str, sub: &str, role: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--data", data, "--sub", sub, "--role", role])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_acknowledged_before_a_sigkill_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let mut node = start(data);
    let cmd_token = token(data, "cmd-1", "commander");
    let off_token = token(data, "off-1", "officer");

    let (cmd, _cev) = tokio::time::timeout(
        WAIT,
        client::connect(ClientConfig::new(node.quic.clone(), cmd_token)),
    )
    .await
    .unwrap()
    .unwrap();
    // An incident with an assignment: state that must outlive the process too.
    let r = cmd
        .request(ClientMsg::IncidentCreate {
            id: 0,
            incident: Some("flood-9".parse().unwrap()),
            name: "Flood, Hankou".into(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    let r = cmd
        .request(ClientMsg::Assign {
            id: 0,
            incident: "flood-9".parse().unwrap(),
            subject: "off-1".parse().unwrap(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    // The officer has been on this node once (orders to names nobody ever used are refused).
    let (off, _oev) = tokio::time::timeout(
        WAIT,
        client::connect(ClientConfig::new(node.quic.clone(), off_token.clone())),
    )
    .await
    .unwrap()
    .unwrap();
    off.close().await;
    let mut sent = Vec::new();
    for i in 0..25 {
        let data = tokio::time::timeout(
            WAIT,
            cmd.deliver(ClientMsg::Order {
                id: 0,
                msg_id: Some(format!("before-kill-{i}")),
                incident: "duty".parse().unwrap(),
                to: "off-1".parse().unwrap(),
                text: format!("Checkpoint {i}"),
            }),
        )
        .await
        .unwrap()
        .expect("order acknowledged");
        sent.push(data["order"]["id"].as_str().unwrap().to_owned());
    }
    // Acknowledged means stored: kill the node without warning (SIGKILL).
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    drop(cmd);

    let node = start(data);
    // The node remembers who has been here across the kill: an order to the officer, who has
    // not come back yet, is taken.
    let (cmd, _cev) = tokio::time::timeout(
        WAIT,
        client::connect(ClientConfig::new(
            node.quic.clone(),
            token(data, "cmd-1", "commander"),
        )),
    )
    .await
    .unwrap()
    .unwrap();
    let data_after = tokio::time::timeout(
        WAIT,
        cmd.deliver(ClientMsg::Order {
            id: 0,
            msg_id: Some("after-restart".into()),
            incident: "duty".parse().unwrap(),
            to: "off-1".parse().unwrap(),
            text: "Report in".into(),
        }),
    )
    .await
    .unwrap()
    .expect("an order to a subject seen before the restart is taken");
    sent.push(data_after["order"]["id"].as_str().unwrap().to_owned());
    let (off, mut events) = tokio::time::timeout(
        WAIT,
        client::connect(ClientConfig::new(node.quic.clone(), off_token.clone())),
    )
    .await
    .unwrap()
    .unwrap();
    let incidents: Vec<String> = off
        .session()
        .incidents
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        incidents,
        vec!["flood-9"],
        "the assignment survived the restart"
    );
    let mut got = Vec::new();
    while got.len() < sent.len() {
        match tokio::time::timeout(WAIT, events.next())
            .await
            .expect("mail in time")
        {
            Some(ClientEvent::Mail {
                item: signaling::proto::MailItem::Order { order, .. },
                ..
            }) => {
                got.push(order);
            }
            Some(ClientEvent::Closed { code, reason }) => panic!("closed: {code:?} {reason}"),
            None => panic!("event stream ended"),
            Some(_) => {}
        }
    }
    assert_eq!(got, sent, "every order, once, in order");
    // The incident log kept everything from before the kill, and goes on after it.
    let log = http_get(&node.http, "/api/incidents/flood-9/log", &off_token);
    for what in ["\"created\"", "\"assigned\"", "\"joined\""] {
        assert!(log.contains(what), "{what} in {log}");
    }
}

/// A GET with a bearer token over a plain TCP connection; the response body.
fn http_get(addr: &str, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp
}
