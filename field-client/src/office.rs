//! The one-shot office commands: connect, do one thing, print the answer, say `bye`.
//!
//! Every message that is stored by the node (`order_answer`, `chat`, `sos`) goes through
//! [`Client::deliver`] with a fresh `msg_id` (or the one given with `--msg-id`): retried across
//! reconnects until the node acknowledges it, and stored once however often it is sent. When a
//! command gives up (`--timeout`), repeating it with the printed `--msg-id` is safe.
//!
//! Connecting syncs the subject's mailbox like any session, and the node then counts that mail
//! as delivered; so a one-shot command prints the mail it was handed after its own answer
//! (`run` shows it as it comes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use signaling::client::{connect, Client, ClientConfig, ClientEvent, Events};
use signaling::proto::{valid_msg_id, ClientMsg, MailItem, OrderAnswer};
use signaling::{IncidentId, Subject};

use crate::error::Error;
use crate::mailbox::RawSession;
use crate::output::{mail_line, Output};

/// Bound on draining the session's last events after `bye`.
const DRAIN: Duration = Duration::from_secs(5);

/// How to reach the node.
#[derive(Debug, Clone)]
pub struct Target {
    /// `HOST:PORT` of the node's QUIC listener.
    pub node: String,
    /// The bearer token.
    pub token: String,
}

impl Target {
    /// The client configuration (default timings).
    pub fn config(&self) -> ClientConfig {
        ClientConfig::new(self.node.clone(), self.token.clone())
    }

    /// Opens a session.
    pub async fn connect(&self) -> Result<(Client, Events), Error> {
        connect(self.config())
            .await
            .map_err(|e| Error::connecting(&self.node, e))
    }
}

/// A one-shot command that stores a message at the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Accept an order, optionally with an ETA in minutes.
    Accept {
        /// The order id (`ord-N`).
        order: String,
        /// Minutes to arrival.
        eta_min: Option<u32>,
    },
    /// Decline an order.
    Decline {
        /// The order id.
        order: String,
        /// Why.
        reason: String,
    },
    /// Report an accepted order done.
    Done {
        /// The order id.
        order: String,
    },
    /// Chat in an incident or directly to someone.
    Say {
        /// The text.
        text: String,
        /// The incident (joined first if the session is not in it).
        incident: Option<IncidentId>,
        /// A direct message's addressee (instead of `incident`).
        to: Option<Subject>,
    },
    /// Raise an SOS.
    Sos {
        /// Optional text.
        text: Option<String>,
        /// Only this incident (default: every incident the session is in).
        incident: Option<IncidentId>,
    },
}

impl Command {
    /// The command's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Accept { .. } => "accept",
            Command::Decline { .. } => "decline",
            Command::Done { .. } => "done",
            Command::Say { .. } => "say",
            Command::Sos { .. } => "sos",
        }
    }

    /// The protocol message, with `msg_id`.
    fn message(&self, msg_id: String) -> ClientMsg {
        let answer = |order: &str, answer, eta_min, reason| ClientMsg::OrderAnswer {
            id: 0,
            msg_id: Some(msg_id.clone()),
            order: order.to_owned(),
            answer,
            eta_min,
            reason,
        };
        match self {
            Command::Accept { order, eta_min } => {
                answer(order, OrderAnswer::Accept, *eta_min, None)
            }
            Command::Decline { order, reason } => {
                answer(order, OrderAnswer::Decline, None, Some(reason.clone()))
            }
            Command::Done { order } => answer(order, OrderAnswer::Done, None, None),
            Command::Say { text, incident, to } => ClientMsg::Chat {
                id: 0,
                msg_id: Some(msg_id),
                incident: if to.is_some() {
                    None
                } else {
                    Some(incident.clone().unwrap_or_else(duty))
                },
                to: to.clone(),
                text: text.clone(),
            },
            Command::Sos { text, incident } => ClientMsg::Sos {
                id: 0,
                msg_id: Some(msg_id),
                incident: incident.clone(),
                text: text.clone(),
            },
        }
    }
}

fn duty() -> IncidentId {
    "duty".parse().expect("duty is a valid incident id")
}

/// A fresh message id: `fc-SUBJECT-UNIXMS-RANDOM`, at most 64 characters (the subject is cut to
/// 30), unique enough that two commands never share one.
pub fn new_msg_id(subject: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let sub: String = subject.chars().take(30).collect();
    format!("fc-{sub}-{ms}-{:08x}", rand::random::<u32>())
}

/// Runs `cmd` against the node: connect, deliver, print the answer and any mail, `bye`.
pub async fn one_shot(
    target: &Target,
    out: Output,
    cmd: Command,
    msg_id: Option<String>,
    timeout: Duration,
) -> Result<(), Error> {
    if let Some(m) = &msg_id {
        if !valid_msg_id(m) {
            return Err(Error::Usage(format!(
                "--msg-id {m:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ : -"
            )));
        }
    }
    let (client, events) = target.connect().await?;
    let msg_id = msg_id.unwrap_or_else(|| new_msg_id(client.session().subject.as_str()));
    let what = cmd.name();
    let result = tokio::time::timeout(timeout, async {
        if let Command::Say { incident, to: None, .. } = &cmd {
            let incident = incident.clone().unwrap_or_else(duty);
            if !client.session().incidents.contains(&incident) {
                client
                    .request(ClientMsg::Join {
                        id: 0,
                        incident: incident.clone(),
                    })
                    .await
                    .map_err(|e| Error::request(&format!("joining incident {incident}"), e))?;
            }
        }
        client
            .deliver(cmd.message(msg_id.clone()))
            .await
            .map_err(|e| Error::request(what, e))
    })
    .await
    .unwrap_or_else(|_| {
        Err(Error::Connection(format!(
            "no answer from the node within {} s; the {what} may or may not be stored: repeat the command with --msg-id {msg_id} so that it is stored once",
            timeout.as_secs()
        )))
    });
    let outcome = result.map(|data| {
        let mut line = Map::new();
        line.insert("kind".into(), json!("result"));
        line.insert("command".into(), json!(what));
        line.insert("msg_id".into(), json!(msg_id));
        if let Value::Object(fields) = &data {
            line.extend(fields.clone());
        }
        let line = Value::Object(line);
        out.emit_as(&line, || result_text(&cmd, &data));
    });
    finish(client, events, out).await;
    outcome
}

/// The readable answer of a one-shot command.
fn result_text(cmd: &Command, data: &Value) -> String {
    match cmd {
        Command::Accept { .. } | Command::Decline { .. } | Command::Done { .. } => {
            order_text(&data["order"])
        }
        Command::Say { .. } => format!("message stored for delivery (item {})", data["item"]),
        Command::Sos { .. } => {
            let incidents: Vec<&str> = data["incidents"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!(
                "SOS {} raised in {}; {} recipients",
                data["sos"].as_str().unwrap_or("?"),
                incidents.join(", "),
                data["recipients"]
            )
        }
    }
}

/// `order ord-57 is accepted (ETA 7 min)` from an ORDER object.
fn order_text(o: &Value) -> String {
    let mut line = format!(
        "order {} is {}",
        o["id"].as_str().unwrap_or("?"),
        o["state"].as_str().unwrap_or("?")
    );
    if let Some(eta) = o["eta_min"].as_u64() {
        line += &format!(" (ETA {eta} min)");
    }
    if let Some(r) = o["reason"].as_str() {
        line += &format!(": {r}");
    }
    line
}

/// Says `bye`, then prints the mail the session was handed (the node counts it delivered).
async fn finish(client: Client, mut events: Events, out: Output) {
    client.close().await;
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some(ev) = events.next().await {
            match ev {
                ClientEvent::Mail { seq, item } => out.emit(&mail_line(seq, &item)),
                ClientEvent::Closed { .. } => return,
                _ => {}
            }
        }
    })
    .await;
}

/// `orders`: the orders addressed to this subject, oldest first, each with its latest state.
///
/// The mailbox holds the orders (synced from the beginning on a read-only session, see
/// [`crate::mailbox`]); their states after `sent` are mailed to the orders' senders, not to the
/// addressee, so they are read from the incidents' logs (`order_state` entries). An incident whose
/// log this subject may not read leaves its orders' state unknown (`null`).
pub async fn list_orders(target: &Target, out: Output, timeout: Duration) -> Result<(), Error> {
    let orders = tokio::time::timeout(timeout, async {
        let mut session = RawSession::open(&target.config())
            .await
            .map_err(|e| Error::connecting(&target.node, e))?;
        let orders = read_orders(&mut session).await;
        session.bye().await;
        orders
    })
    .await
    .unwrap_or_else(|_| {
        Err(Error::Connection(format!(
            "the node at {} did not answer within {} s",
            target.node,
            timeout.as_secs()
        )))
    })?;
    if orders.is_empty() && !out.is_json() {
        out.emit_as(&Value::Null, || "no orders addressed to you".to_owned());
    }
    for o in &orders {
        out.emit_as(o, || listing_text(o));
    }
    Ok(())
}

async fn read_orders(session: &mut RawSession) -> Result<Vec<Value>, Error> {
    let mut orders: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let (mail, data) = session
            .request(|id| ClientMsg::MailSync {
                id,
                after: Some(after),
            })
            .await
            .map_err(|e| Error::request("the mailbox sync", e))?;
        for (seq, item) in mail {
            if matches!(item, MailItem::Order { .. }) {
                let mut line = mail_line(seq, &item);
                line["state"] = json!("sent");
                orders.push(line);
            }
        }
        if data["more"] != true {
            break;
        }
        let upto = data["sent_upto"].as_u64().unwrap_or(after);
        if upto <= after {
            break;
        }
        after = upto;
    }
    let mut incidents: Vec<String> = orders
        .iter()
        .filter_map(|o| o["incident"].as_str().map(str::to_owned))
        .collect();
    incidents.sort();
    incidents.dedup();
    for name in incidents {
        let Ok(incident) = name.parse::<IncidentId>() else {
            continue;
        };
        let mut after = 0u64;
        loop {
            let page = session
                .request(|id| ClientMsg::Log {
                    id,
                    incident: incident.clone(),
                    after,
                    limit: None,
                })
                .await;
            let data = match page {
                Ok((_, data)) => data,
                Err(e) if e.code().is_some() => {
                    // Not readable by this subject: the state stays unknown.
                    for o in orders.iter_mut().filter(|o| o["incident"] == name.as_str()) {
                        o["state"] = Value::Null;
                    }
                    break;
                }
                Err(e) => return Err(Error::request("reading an incident log", e)),
            };
            let entries = data["entries"].as_array().cloned().unwrap_or_default();
            for e in &entries {
                if e["what"] != "order_state" {
                    continue;
                }
                let d = &e["detail"];
                if let Some(o) = orders.iter_mut().find(|o| o["order"] == d["order"]) {
                    o["state"] = d["state"].clone();
                    o["eta_min"] = d["eta_min"].clone();
                    o["reason"] = d["reason"].clone();
                    o["state_time"] = e["time"].clone();
                }
            }
            let last_seen = entries.last().and_then(|e| e["seq"].as_u64());
            match last_seen {
                Some(seq) if seq > after && seq < data["last"].as_u64().unwrap_or(0) => after = seq,
                _ => break,
            }
        }
    }
    Ok(orders)
}

fn listing_text(o: &Value) -> String {
    let mut state = o["state"].as_str().unwrap_or("state unknown").to_owned();
    if let Some(eta) = o["eta_min"].as_u64() {
        state += &format!(" (ETA {eta} min)");
    }
    if let Some(r) = o["reason"].as_str() {
        state += &format!(" ({r})");
    }
    format!(
        "{}  {}  from {} in {}: {}",
        o["order"].as_str().unwrap_or("?"),
        state,
        o["from"].as_str().unwrap_or("?"),
        o["incident"].as_str().unwrap_or("?"),
        o["text"].as_str().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_valid_and_fresh() {
        let long = "a".repeat(64);
        for sub in ["off-12", long.as_str()] {
            let a = new_msg_id(sub);
            let b = new_msg_id(sub);
            assert!(valid_msg_id(&a), "{a}");
            assert_ne!(a, b);
            assert!(a.starts_with("fc-"));
        }
    }

    #[test]
    fn say_defaults_to_duty_and_direct_messages_have_no_incident() {
        let say = Command::Say {
            text: "hello".into(),
            incident: None,
            to: None,
        };
        match say.message("m".into()) {
            ClientMsg::Chat {
                incident,
                to,
                msg_id,
                ..
            } => {
                assert_eq!(incident.unwrap().as_str(), "duty");
                assert_eq!((to, msg_id.as_deref()), (None, Some("m")));
            }
            other => panic!("{other:?}"),
        }
        let direct = Command::Say {
            text: "hello".into(),
            incident: None,
            to: Some("cmd-1".parse().unwrap()),
        };
        assert!(matches!(
            direct.message("m".into()),
            ClientMsg::Chat {
                incident: None,
                to: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn answers_read_well() {
        let o = json!({"id":"ord-5","state":"accepted","eta_min":7});
        assert_eq!(order_text(&o), "order ord-5 is accepted (ETA 7 min)");
        let listed = json!({"order":"ord-5","state":"declined","reason":"bridge out","from":"cmd-1","incident":"duty","text":"go"});
        assert_eq!(
            listing_text(&listed),
            "ord-5  declined (bridge out)  from cmd-1 in duty: go"
        );
    }
}
