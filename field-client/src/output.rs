//! What the client prints: one line per thing that happened, readable text or (with `--json`) one
//! JSON object per line with a `kind` member.
//!
//! Kinds on stdout: the office's mail items as the node sends them (`order`, `chat`,
//! `order_state`, `sos`, `sos_ack`, `read`) plus `seq` (the mailbox position); session events
//! (`presence`, `member`, `assigned`, `unassigned`, `incident`); the connection (`connected`,
//! `resumed`, `disconnected`, `closed`); `result` for a one-shot command's answer; the
//! publisher's `publishing` and `bitrate` ([`crate::media`]); `watching`, `watch` and
//! `watch_summary` ([`crate::watch`]); `warning` and `note`. Warnings and notes also go to
//! stderr, so that a person watching the JSON still sees them. Errors only go to stderr (one
//! line) and set the exit code.

use std::io::Write as _;

use serde_json::{json, Value};
use signaling::proto::MailItem;

/// Where and how lines are printed. Cheap to copy into tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Text lines, or JSON lines when `json`.
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// Whether lines are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `v` as JSON, or as the readable line [`render`] makes of it.
    pub fn emit(&self, v: &Value) {
        self.emit_as(v, || render(v));
    }

    /// Prints `v` as JSON, or `text()` in text mode.
    pub fn emit_as(&self, v: &Value, text: impl FnOnce() -> String) {
        let line = if self.json { v.to_string() } else { text() };
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Something the user should know that does not stop the command.
    pub fn warning(&self, message: &str) {
        eprintln!("field-client: warning: {message}");
        if self.json {
            self.emit(&json!({"kind": "warning", "message": message}));
        }
    }

    /// A plain information line (stderr; also a `note` line in JSON mode).
    pub fn note(&self, message: &str) {
        eprintln!("field-client: {message}");
        if self.json {
            self.emit(&json!({"kind": "note", "message": message}));
        }
    }
}

/// A mail item as a line object: the item's fields (as on the wire) plus its mailbox `seq`.
pub fn mail_line(seq: u64, item: &MailItem) -> Value {
    let mut v = serde_json::to_value(item).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), json!(seq));
    }
    v
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("?")
}

/// The readable line for a line object.
pub fn render(v: &Value) -> String {
    match v["kind"].as_str().unwrap_or("") {
        "order" => format!(
            "ORDER {} from {} in {}: {}",
            s(v, "order"),
            s(v, "from"),
            s(v, "incident"),
            s(v, "text")
        ),
        "chat" => match v["incident"].as_str() {
            Some(i) => format!("chat [{i}] {}: {}", s(v, "from"), s(v, "text")),
            None => format!("chat (to you) {}: {}", s(v, "from"), s(v, "text")),
        },
        "order_state" => {
            let mut line = format!(
                "order {} {} by {}",
                s(v, "order"),
                s(v, "state"),
                s(v, "by")
            );
            if let Some(eta) = v["eta_min"].as_u64() {
                line += &format!(" (ETA {eta} min)");
            }
            if let Some(r) = v["reason"].as_str() {
                line += &format!(": {r}");
            }
            line
        }
        "sos" => {
            let incidents: Vec<&str> = v["incidents"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut line = format!(
                "SOS {} from {} ({}) in {}",
                s(v, "sos"),
                s(v, "from"),
                s(v, "role"),
                incidents.join(", ")
            );
            if let Some(t) = v["text"].as_str() {
                line += &format!(": {t}");
            }
            if let (Some(lat), Some(lon)) =
                (v["position"]["lat"].as_f64(), v["position"]["lon"].as_f64())
            {
                line += &format!(" (at {lat:.5},{lon:.5})");
            }
            line
        }
        "sos_ack" => format!("SOS {} acknowledged by {}", s(v, "sos"), s(v, "by")),
        "read" => format!("message {} read by {}", v["item"], s(v, "by")),
        "presence" => format!(
            "{} ({}) is {}",
            s(v, "subject"),
            s(v, "role"),
            if v["online"] == true {
                "online"
            } else {
                "offline"
            }
        ),
        "member" => {
            let mut line = format!(
                "{} {} incident {}",
                s(v, "subject"),
                s(v, "op"),
                s(v, "incident")
            );
            if let Some(by) = v["by"].as_str() {
                line += &format!(" (by {by})");
            }
            line
        }
        "assigned" => format!(
            "you were assigned to incident {} by {}",
            s(v, "incident"),
            s(v, "by")
        ),
        "unassigned" => format!(
            "you were unassigned from incident {} by {}",
            s(v, "incident"),
            s(v, "by")
        ),
        "incident" => format!(
            "incident {} is {} (by {})",
            s(v, "incident"),
            s(v, "state"),
            s(v, "by")
        ),
        "connected" => format!(
            "connected to node {} as {} ({}); incidents: {}",
            s(v, "node"),
            s(v, "subject"),
            s(v, "role"),
            list(&v["incidents"])
        ),
        "resumed" => {
            if v["gap"] == true {
                "connection back; session resumed, but some events were missed".to_owned()
            } else {
                "connection back; session resumed".to_owned()
            }
        }
        "disconnected" => format!("connection lost ({}); reconnecting", s(v, "reason")),
        "closed" => format!("session ended: {}", s(v, "reason")),
        "warning" => format!("warning: {}", s(v, "message")),
        "note" => s(v, "message").to_owned(),
        other => format!("{other}: {v}"),
    }
}

fn list(v: &Value) -> String {
    let items: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_lines_keep_the_item_and_add_seq() {
        let item = json!({"kind":"order","order":"ord-57","msg_id":"m1","from":"cmd-1","to":"off-12","incident":"duty","text":"Go to gate 3","time":1});
        let line = mail_line(4, &serde_json::from_value(item).unwrap());
        assert_eq!(line["order"], "ord-57");
        assert_eq!(line["seq"], 4);
        assert_eq!(
            render(&line),
            "ORDER ord-57 from cmd-1 in duty: Go to gate 3"
        );
    }

    #[test]
    fn every_kind_reads_well() {
        let cases = [
            (
                json!({"kind":"chat","from":"cmd-1","incident":"duty","to":null,"text":"hi"}),
                "chat [duty] cmd-1: hi",
            ),
            (
                json!({"kind":"chat","from":"cmd-1","incident":null,"to":"off-1","text":"hi"}),
                "chat (to you) cmd-1: hi",
            ),
            (
                json!({"kind":"order_state","order":"ord-1","state":"accepted","by":"off-1","eta_min":7,"reason":null}),
                "order ord-1 accepted by off-1 (ETA 7 min)",
            ),
            (
                json!({"kind":"order_state","order":"ord-1","state":"declined","by":"off-1","eta_min":null,"reason":"flooded"}),
                "order ord-1 declined by off-1: flooded",
            ),
            (
                json!({"kind":"sos","sos":"sos-3","from":"off-1","role":"officer","incidents":["duty"],"text":"trapped","position":{"lat":30.59,"lon":114.3}}),
                "SOS sos-3 from off-1 (officer) in duty: trapped (at 30.59000,114.30000)",
            ),
            (
                json!({"kind":"sos_ack","sos":"sos-3","by":"op-1"}),
                "SOS sos-3 acknowledged by op-1",
            ),
            (
                json!({"kind":"presence","subject":"op-1","role":"operator","online":false}),
                "op-1 (operator) is offline",
            ),
            (
                json!({"kind":"disconnected","reason":"timed out"}),
                "connection lost (timed out); reconnecting",
            ),
            (
                json!({"kind":"future_thing","x":1}),
                "future_thing: {\"kind\":\"future_thing\",\"x\":1}",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(render(&v), want);
        }
    }
}
