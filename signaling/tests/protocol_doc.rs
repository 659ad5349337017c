//! `docs/protocol.md` is normative: every JSON example in it is read with the typed protocol
//! (the message, event or view it documents), written back, and compared with the example as
//! JSON values. An example the types cannot read, or that they would write differently, fails
//! here: either the doc or the code is wrong.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use signaling::core::Revocation;
use signaling::proto::{
    decode_client, Event, IncidentView, MailItem, Member, ServerMsg, UnitView, CLIENT_TYPES,
};
use signaling::store::{LogEntry, Order};

const DOC: &str = include_str!("../../docs/protocol.md");

/// The ```json blocks of the doc, with the line each starts on.
fn json_blocks(doc: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, line) in doc.lines().enumerate() {
        match &mut open {
            None if line.trim_start() == "```json" => open = Some((n + 1, String::new())),
            Some(_) if line.trim_start() == "```" => out.extend(open.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(open.is_none(), "an unclosed ```json block");
    out
}

/// Numbers compared by value (the doc writes `40` where the node writes `40.0`).
fn normal(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(normal).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), normal(v))).collect()),
        other => other.clone(),
    }
}

/// Reads `v` as `T` and writes it back.
fn through<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn same(what: &str, example: &Value, back: &Value) -> Result<(), String> {
    if normal(example) == normal(back) {
        Ok(())
    } else {
        Err(format!("{what} is written back as\n  {back}"))
    }
}

fn check_event(v: &Value) -> Result<(), String> {
    let e: Event = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    if matches!(e, Event::Unknown | Event::Member(Member::Unknown)) {
        return Err(format!(
            "kind {} is not an event this version knows",
            v["kind"]
        ));
    }
    same(
        "the event",
        v,
        &serde_json::to_value(&e).map_err(|e| e.to_string())?,
    )
}

/// A reply's `data`: its members that have a view type are checked as that type.
fn check_data(data: &Value) -> Result<(), String> {
    let Some(m) = data.as_object() else {
        return Ok(());
    };
    for (key, v) in m {
        let back = match (key.as_str(), v) {
            ("incident", Value::Object(_)) => through::<IncidentView>(v)?,
            ("incidents", Value::Array(a)) if a.iter().all(Value::is_object) => {
                through::<Vec<IncidentView>>(v)?
            }
            ("units", _) => through::<Vec<UnitView>>(v)?,
            ("entries", _) => through::<Vec<LogEntry>>(v)?,
            ("order", Value::Object(_)) => through::<Order>(v)?,
            ("revoked", _) => through::<Revocation>(v)?,
            _ => continue,
        };
        same(&format!("data.{key}"), v, &back)?;
    }
    Ok(())
}

/// Checks one example as what it documents; `Ok(kind)` names what it was read as.
fn check(v: &Value) -> Result<&'static str, String> {
    let Some(obj) = v.as_object() else {
        return Err("not a JSON object".into());
    };
    if let Some(ty) = obj.get("type").and_then(Value::as_str) {
        // A client message when the node reads it as one, else a node message.
        if let Ok(m) = decode_client(v.to_string().as_bytes()) {
            let back = serde_json::to_value(&m).map_err(|e| e.to_string())?;
            same(&format!("the {} message", m.kind()), v, &back)?;
            return Ok("client message");
        }
        if CLIENT_TYPES.contains(&ty) {
            return Err(decode_client(v.to_string().as_bytes())
                .unwrap_err()
                .to_string());
        }
        let m: ServerMsg = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        same(
            "the node message",
            v,
            &serde_json::to_value(&m).map_err(|e| e.to_string())?,
        )?;
        match (&m, obj.get("event"), obj.get("data")) {
            (ServerMsg::Event { .. }, Some(e), _) => check_event(e)?,
            (ServerMsg::Result { .. }, _, Some(d)) => check_data(d)?,
            _ => {}
        }
        return Ok("node message");
    }
    if obj.contains_key("kind") {
        // An event or a mail item on its own.
        if check_event(v).is_ok() {
            return Ok("event");
        }
        let item: MailItem = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        if item == MailItem::Unknown {
            return Err(format!(
                "kind {} is neither an event nor a mail item",
                v["kind"]
            ));
        }
        same(
            "the mail item",
            v,
            &serde_json::to_value(&item).map_err(|e| e.to_string())?,
        )?;
        return Ok("mail item");
    }
    // The views the doc shows on their own.
    let (what, back) = if obj.contains_key("what") {
        ("log entry", through::<LogEntry>(v)?)
    } else if obj.contains_key("members") {
        ("incident", through::<IncidentView>(v)?)
    } else if obj.contains_key("sent_at") {
        ("order", through::<Order>(v)?)
    } else {
        return Err("no type, kind or known shape: what does it document?".into());
    };
    same(what, v, &back)?;
    Ok(what)
}

#[test]
fn every_json_example_of_the_protocol_doc_round_trips_through_the_typed_protocol() {
    let blocks = json_blocks(DOC);
    assert!(
        blocks.len() >= 30,
        "found only {} ```json blocks",
        blocks.len()
    );
    let mut checked = 0;
    let mut failures = Vec::new();
    for (line, body) in &blocks {
        for v in serde_json::Deserializer::from_str(body).into_iter::<Value>() {
            match v {
                Ok(v) => {
                    checked += 1;
                    if let Err(why) = check(&v) {
                        failures.push(format!("docs/protocol.md:{line}: {v}\n  {why}"));
                    }
                }
                Err(e) => failures.push(format!("docs/protocol.md:{line}: not JSON: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    assert!(checked >= 60, "checked only {checked} examples");
}

#[test]
fn the_checker_refuses_what_the_types_do_not_say() {
    // A misspelt field of an event, an event kind that does not exist, a wrong reply shape.
    for bad in [
        r#"{"type":"event","seq":1,"event":{"kind":"presence","subject":"a","role":"officer","online":true,"lastSeen":1}}"#,
        r#"{"type":"event","seq":1,"event":{"kind":"chat","from":"a","text":"hi"}}"#,
        r#"{"type":"result","re":1,"data":{"incident":{"id":"x"}}}"#,
        r#"{"type":"welcome","v":1}"#,
        r#"{"seq":1}"#,
    ] {
        let v: Value = serde_json::from_str(bad).unwrap();
        assert!(check(&v).is_err(), "{bad} passed");
    }
}
