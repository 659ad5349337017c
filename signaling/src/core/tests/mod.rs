//! Virtual-time tests of the signaling core: no sockets, no clock. The harness [`H`] drives a
//! core as the shells do; the tests live in one file per concern.

mod drones;
mod incidents;
mod office;
mod presence;
mod roles;
mod session;

use super::*;
use crate::auth::{TokenIssuer, TokenRequest};
use crate::proto::{encode, Resume};
use crate::proto::{DroneAckResult, DroneCommand, OrderAnswer};
use crate::store::OrderState;
use crate::testkit;
use ed25519_dalek::SigningKey;

const T0: u64 = 1_780_000_000_000;

struct H {
    core: Core,
    issuer: TokenIssuer,
    now: u64,
    next_conn: ConnId,
    out: Vec<Output>,
}

impl H {
    fn new() -> H {
        H::with_config(CoreConfig::default())
    }

    fn with_config(cfg: CoreConfig) -> H {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let node = NodeId::parse("node-a").unwrap();
        let issuer = TokenIssuer::new(key.clone(), node.clone());
        let mut v = TokenVerifier::new(node.clone());
        v.trust(key.verifying_key());
        H {
            core: Core::new(
                cfg,
                node,
                v,
                crate::store::Store::open_in_memory().unwrap(),
                UnixMs(T0),
            ),
            issuer,
            now: T0,
            next_conn: 1,
            out: Vec::new(),
        }
    }

    fn token_with(&self, sub: &str, role: Role, f: impl FnOnce(&mut TokenRequest)) -> String {
        let mut r = TokenRequest::new(Subject::parse(sub).unwrap(), role, "node-a", "00");
        f(&mut r);
        self.issuer.issue(&r, self.now / 1000)
    }

    fn token(&self, sub: &str, role: Role) -> String {
        self.token_with(sub, role, |_| {})
    }

    fn pump(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.out.push(o);
        }
    }

    fn send(&mut self, conn: ConnId, msg: &ClientMsg) {
        self.core
            .frame(UnixMs(self.now), conn, encode(msg).as_bytes());
        self.pump();
    }

    fn raw(&mut self, conn: ConnId, bytes: &[u8]) {
        self.core.frame(UnixMs(self.now), conn, bytes);
        self.pump();
    }

    /// Messages sent to `conn` since the last call (other outputs stay).
    fn take(&mut self, conn: ConnId) -> Vec<ServerMsg> {
        let mut mine = Vec::new();
        self.out.retain(|o| match o {
            Output::Send { conn: c, msg } | Output::Urgent { conn: c, msg } if *c == conn => {
                mine.push(msg.clone());
                false
            }
            _ => true,
        });
        mine
    }

    fn closed_with(&mut self, conn: ConnId) -> Option<ErrorCode> {
        self.out.iter().find_map(|o| match o {
            Output::Close { conn: c, code, .. } if *c == conn => Some(*code),
            _ => None,
        })
    }

    fn hello(&mut self, token: String, resume: Option<Resume>) -> (ConnId, Vec<ServerMsg>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.core.open(UnixMs(self.now), conn);
        self.send(
            conn,
            &ClientMsg::Hello {
                v: VERSION,
                token,
                resume,
            },
        );
        let msgs = self.take(conn);
        (conn, msgs)
    }

    /// A `hello` as the node's shells hand it over: its token verified outside the core (with a
    /// copy of the core's gate taken now), then [`Core::hello_verified`].
    fn hello_checked(&mut self, token: String, resume: Option<Resume>) -> (ConnId, Vec<ServerMsg>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.core.open(UnixMs(self.now), conn);
        let bytes = encode(&ClientMsg::Hello {
            v: VERSION,
            token,
            resume,
        });
        let gate = self.core.token_gate().clone();
        let hello = VerifiedHello::check(&gate, bytes.as_bytes(), UnixMs(self.now)).unwrap();
        self.core.hello_verified(UnixMs(self.now), conn, hello);
        self.pump();
        let msgs = self.take(conn);
        (conn, msgs)
    }

    /// Connects and syncs the mailbox, as the client library does.
    fn connect(&mut self, sub: &str, role: Role) -> (ConnId, Welcome) {
        let t = self.token(sub, role);
        let (conn, msgs) = self.hello(t, None);
        let w = match msgs.first() {
            Some(ServerMsg::Welcome(w)) => w.clone(),
            other => panic!("no welcome: {other:?}"),
        };
        self.send(conn, &ClientMsg::MailSync { id: 0, after: None });
        (conn, w)
    }

    /// Mail items delivered to `conn` since the last call, with their seqs.
    fn mails(&mut self, conn: ConnId) -> Vec<(u64, Value)> {
        self.take(conn)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Mail { seq, item } => Some((seq, wire(&item))),
                _ => None,
            })
            .collect()
    }

    fn request(&mut self, conn: ConnId, msg: ClientMsg) -> ServerMsg {
        let id = msg.id().expect("a request");
        self.send(conn, &msg);
        let msgs = self.take(conn);
        if let Some(m) = msgs.into_iter().find(|m| testkit::answers(m, id)) {
            return m;
        }
        // Authorised media requests go to the shell (the SFU); count them as allowed.
        let handed = self
            .out
            .iter()
            .any(|o| matches!(o, Output::Media { re, .. } if *re == id));
        assert!(handed, "no answer to {}", msg.kind());
        ServerMsg::Result {
            re: id,
            data: Value::String("handed to the media shell".into()),
        }
    }

    fn advance(&mut self, ms: u64) {
        // Timers run every 100 ms in the node; do the same.
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 100).min(end);
            self.core.handle_timeout(UnixMs(self.now));
            self.pump();
        }
    }

    fn events(&mut self, conn: ConnId) -> Vec<(u64, Value)> {
        self.take(conn)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Event { seq, event } => Some((seq, wire(&event))),
                _ => None,
            })
            .collect()
    }
}

/// An event or mail item as JSON, as a client reads it off the wire.
fn wire<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn kinds(evs: &[(u64, Value)], kind: &str) -> Vec<Value> {
    evs.iter()
        .filter(|(_, e)| e["kind"] == kind)
        .map(|(_, e)| e.clone())
        .collect()
}

fn pos(lat: f64) -> ClientMsg {
    ClientMsg::Position {
        id: None,
        pos: Position {
            lat,
            lon: 114.3,
            alt: Some(20.0),
            accuracy: Some(4.0),
            heading: Some(90.0),
            speed: Some(1.2),
            time: None,
        },
    }
}
