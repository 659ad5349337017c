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

/// The rows of the table under `heading` in docs/protocol.md, as cells.
fn table_rows(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let at = doc
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} is in docs/protocol.md"));
    doc[at..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its rule
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The error table is what a client written from the doc alone relies on: every code it lists,
/// whether it closes, its QUIC application code and its WebSocket close code (4000 + that) are
/// the node's, and every code the node has is listed.
#[test]
fn the_error_and_close_code_table_is_the_nodes() {
    use signaling::proto::ErrorCode;
    let doc = DOC;
    let rows = table_rows(doc, "## Errors and close codes");
    let mut listed = Vec::new();
    for row in &rows {
        let name = row[0].trim_matches('`');
        let code: ErrorCode = serde_json::from_value(Value::String(name.into()))
            .unwrap_or_else(|e| panic!("{name}: not a code of the node: {e}"));
        assert_eq!(code.as_str(), name);
        let closes = row[1].starts_with("yes");
        assert_eq!(
            code.closes(),
            closes,
            "{name}: closes column says {:?}",
            row[1]
        );
        let quic: u16 = row[2]
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {:?}", row[2]));
        assert_eq!(code.close_code(), quic, "{name}: QUIC code");
        let ws: u16 = row[3]
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {:?}", row[3]));
        assert_eq!(4000 + code.close_code(), ws, "{name}: WebSocket code");
        listed.push(code);
    }
    for code in [
        ErrorCode::UnsupportedVersion,
        ErrorCode::BadHello,
        ErrorCode::Unauthorized,
        ErrorCode::Revoked,
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::NotFound,
        ErrorCode::UnknownRecipient,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::NotImplemented,
        ErrorCode::SessionClosed,
        ErrorCode::TooSlow,
        ErrorCode::Idle,
        ErrorCode::TooManySessions,
    ] {
        assert!(
            listed.contains(&code),
            "{} is missing from the table",
            code.as_str()
        );
    }
    // The idle close code appears nowhere else with another number (4017 was written for it).
    for (n, line) in doc.lines().enumerate() {
        if line.contains("idle") && line.contains("401") && !line.contains("4021") {
            panic!(
                "docs/protocol.md:{}: idle with a code other than 4021: {line}",
                n + 1
            );
        }
    }
}
