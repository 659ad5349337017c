//! Security suite: `matrix` (see security.rs). The role × route matrix, with docs/roles.md as
//! the normative source: its first table (action × role) is read and must equal
//! `Role::may` cell by cell; its second table names the HTTP routes that check each row, and
//! every route of docs/api.md that says `(token with "ROW")` must be listed there under that row.
//! Then every such route is sent as every role: 403 `forbidden` exactly where the table has no
//! mark, anything but 401/403/5xx where it has one. (The same matrix over QUIC and `/ws`, one
//! request per row and role, is `every_role_matrix_cell_over_quic_and_websocket` in
//! tests/signaling.rs; it asserts against `Role::may`, which this file ties to the doc.)
//!
//! Also here, the two read routes whose exposure issue 16 questioned: `GET /api/streams` is
//! scoped by incident as the signaling `catalog` is, and `GET /api/wall/config` gives the tile
//! settings (a URL that may carry a provider key) only to a caller with a token.

use std::collections::BTreeMap;

use futures_util::SinkExt as _;
use reqwest::Method;
use serde_json::Value;
use signaling::auth::{Action, Role};
use signaling::proto::{encode, ClientMsg, ServerMsg, VERSION};
use signaling::IncidentId;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, TestNode};
use crate::tokens::{http, ws_open, ws_recv, WsStream};

const ROLES_MD: &str = include_str!("../../../docs/roles.md");
const API_MD: &str = include_str!("../../../docs/api.md");

/// The label a row of docs/roles.md starts with, for each action.
const ROWS: [(&str, Action); 13] = [
    ("view a stream", Action::ViewStream),
    ("publish own camera/mic", Action::PublishOwn),
    ("publish a drone feed", Action::PublishDrone),
    ("publish under any stream name", Action::PublishAnyName),
    ("report own position", Action::ReportPosition),
    ("read incident", Action::ReadIncident),
    ("chat", Action::Chat),
    ("send an order", Action::SendOrder),
    ("answer an order", Action::AnswerOrder),
    ("raise SOS", Action::RaiseSos),
    ("create / close incident", Action::ManageIncident),
    ("command a drone", Action::CommandDrone),
    ("revoke a token", Action::Revoke),
];

fn action_of(label: &str) -> Action {
    ROWS.iter()
        .find(|(prefix, _)| label.starts_with(prefix))
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("docs/roles.md row {label:?} names no known action"))
}

/// The markdown table of `doc` whose header row is `header`: its body rows, cells trimmed.
fn table(doc: &str, header: &[&str]) -> Vec<Vec<String>> {
    let cells = |l: &str| -> Vec<String> {
        let l = l.trim().trim_start_matches('|').trim_end_matches('|');
        l.split('|').map(|c| c.trim().to_owned()).collect()
    };
    let mut lines = doc.lines().skip_while(|l| {
        !(l.starts_with('|')
            && cells(l)
                .iter()
                .map(String::as_str)
                .eq(header.iter().copied()))
    });
    assert!(lines.next().is_some(), "no table with header {header:?}");
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .map(cells)
        .collect()
}

/// docs/roles.md's first table: (action, role) → allowed (a mark, `✓` or `own …`).
fn doc_matrix() -> BTreeMap<(Action, Role), bool> {
    let mut header = vec!["action"];
    header.extend(Role::ALL.iter().map(|r| r.as_str()));
    let mut m = BTreeMap::new();
    for row in table(ROLES_MD, &header) {
        let action = action_of(&row[0]);
        for (role, cell) in Role::ALL.iter().zip(&row[1..]) {
            assert!(
                cell.is_empty() || cell == "✓" || cell.starts_with("own"),
                "docs/roles.md {action} × {role}: unknown mark {cell:?}"
            );
            assert!(
                m.insert((action, *role), !cell.is_empty()).is_none(),
                "docs/roles.md lists {action} twice"
            );
        }
    }
    m
}

/// `METHOD /path` items in backticks within `text` (optional query parts `[...]` dropped).
fn routes_in(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|r| r.split('[').next().unwrap().trim().to_owned())
        .filter(|r| {
            ["GET /", "POST /", "PATCH /", "DELETE /"]
                .iter()
                .any(|m| r.starts_with(m))
        })
        .collect()
}

/// docs/roles.md's second table: for each action, the HTTP routes that check it.
fn doc_routes() -> Vec<(Action, String)> {
    let rows = table(
        ROLES_MD,
        &["row", "signaling messages that check it", "HTTP"],
    );
    let mut out = Vec::new();
    for row in rows {
        let action = action_of(&row[0]);
        for route in routes_in(&row[2]) {
            out.push((action, route));
        }
    }
    out
}

#[test]
fn the_role_table_of_docs_roles_md_is_what_the_code_enforces() {
    let doc = doc_matrix();
    for action in Action::ALL {
        for role in Role::ALL {
            let cell = doc
                .get(&(action, role))
                .unwrap_or_else(|| panic!("docs/roles.md has no cell {action} × {role}"));
            assert_eq!(
                *cell,
                role.may(action),
                "docs/roles.md says {role} {} {action}; the code says otherwise",
                if *cell { "may" } else { "may not" }
            );
        }
    }
    // Every route docs/api.md says needs a row's right is listed under that row in roles.md.
    let listed = doc_routes();
    let mut seen = 0;
    for line in API_MD.lines().filter(|l| l.starts_with('#')) {
        let Some((_, rest)) = line.split_once("(token with \"") else {
            continue;
        };
        let row = rest.split('"').next().unwrap();
        let action = action_of(row);
        for route in routes_in(line.split('(').next().unwrap()) {
            seen += 1;
            assert!(
                listed.contains(&(action, route.clone())),
                "docs/api.md: {route} needs \"{row}\", but docs/roles.md does not list it there"
            );
        }
    }
    assert!(seen >= 8, "only {seen} token routes found in docs/api.md");
}

/// A harmless request on `route` exercising `action` as `sub`: names nothing live, nobody's
/// order, no stored attachment.
fn probe(
    action: Action,
    route: &str,
    sub: &str,
) -> (Method, String, Option<(&'static str, String)>) {
    let sdp = || Some(("application/sdp", common::canned_offer()));
    let json = |v: Value| Some(("application/json", v.to_string()));
    match (route, action) {
        ("POST /whep/{stream}", _) => (Method::POST, "/whep/nobody-live-here".into(), sdp()),
        ("POST /whip/{stream}", Action::PublishAnyName) => {
            (Method::POST, format!("/whip/zz-not-{sub}"), sdp())
        }
        ("POST /whip/{stream}", _) => (Method::POST, format!("/whip/{sub}"), sdp()),
        ("GET /api/incidents/{id}/log", _) => (Method::GET, "/api/incidents/duty/log".into(), None),
        ("POST /api/orders", _) => (
            Method::POST,
            "/api/orders".into(),
            json(serde_json::json!({"incident": "duty", "to": "nobody", "text": "probe"})),
        ),
        ("POST /api/orders/{id}/answer", _) => (
            Method::POST,
            "/api/orders/ord-999999/answer".into(),
            json(serde_json::json!({"answer": "accept"})),
        ),
        ("POST /api/attachments", _) => (
            Method::POST,
            "/api/attachments".into(),
            Some(("image/png", format!("probe from {sub}"))),
        ),
        ("GET /api/attachments/{sha256}", _) => (
            Method::GET,
            format!("/api/attachments/{}", "0".repeat(64)),
            None,
        ),
        (r, _) if r.starts_with("GET /api/") && !r.contains('{') => {
            (Method::GET, r["GET ".len()..].to_owned(), None)
        }
        (r, a) => {
            panic!("no probe for {r} ({a}): docs/roles.md lists a route this test does not know")
        }
    }
}

/// Says `hello` over `/ws` with `token`, expecting a welcome.
async fn ws_login(node: &TestNode, token: String) -> WsStream {
    let mut ws = ws_open(node).await;
    let hello = ClientMsg::Hello {
        v: VERSION,
        token,
        resume: None,
    };
    ws.send(Message::Text(encode(&hello).into())).await.unwrap();
    let first = ws_recv(&mut ws).await.expect("an answer to hello");
    assert!(matches!(first, ServerMsg::Welcome(_)), "{first:?}");
    ws
}

async fn stream_names(node: &TestNode, token: &str) -> Vec<String> {
    let (s, v, _) = http(node, Method::GET, "/api/streams", Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    let mut names: Vec<String> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_on_every_http_route_is_allowed_exactly_where_docs_roles_md_says() {
    const TILES: &str = "https://t{s}.tiles.example/{z}/{x}/{y}.png?key=SECRET-tile-key-42";
    let node = common::start_node_with(|c| c.wall.tile_url = Some(TILES.into())).await;
    let doc = doc_matrix();
    let routes = doc_routes();
    assert!(routes.len() >= 10, "{routes:?}");
    for role in Role::ALL {
        let sub = format!("{}-7", role.as_str());
        let token = node.token(&sub, role);
        for (action, route) in &routes {
            let allowed = doc[&(*action, role)];
            let (method, path, body) = probe(*action, route, &sub);
            let (status, v, _) = http(&node, method, &path, Some(&token), body).await;
            if allowed {
                assert!(
                    status != 401 && status != 403 && status < 500,
                    "{role} on {route} ({action}) is allowed by docs/roles.md: {status} {v}"
                );
            } else {
                assert_eq!(status, 403, "{role} on {route} ({action}): {v}");
                assert_eq!(v["error"], "forbidden", "{role} on {route}: {v}");
            }
        }
    }

    // `GET /api/streams` is scoped as the signaling catalog is. An officer whose session is
    // in `secret-1` only publishes; so does one in `duty`, and a fixed camera over WHIP alone.
    let secret_tok = node.token_with("off-s", Role::Officer, |r| {
        r.incidents = vec![IncidentId::parse("secret-1").unwrap()]
    });
    let _secret_ws = ws_login(&node, secret_tok.clone()).await;
    let duty_tok = node.token("off-d", Role::Officer);
    let _duty_ws = ws_login(&node, duty_tok.clone()).await;
    for (name, token) in [
        ("off-s", secret_tok),
        ("off-d", duty_tok),
        ("cam-f", node.token("cam-f", Role::Device)),
    ] {
        let path = format!("/whip/{name}");
        let body = Some(("application/sdp", common::canned_offer()));
        let (s, v, _) = http(&node, Method::POST, &path, Some(&token), body).await;
        assert_eq!(s, 201, "{name}: {v}");
    }
    let everyone = |names: Vec<String>| {
        names
            .into_iter()
            .filter(|n| ["off-s", "off-d", "cam-f"].contains(&n.as_str()))
            .collect::<Vec<_>>()
    };
    let viewer_duty = node.token("wall-d", Role::Viewer);
    let viewer_secret = node.token_with("wall-s", Role::Viewer, |r| {
        r.incidents = vec![IncidentId::parse("secret-1").unwrap()]
    });
    let commander = node.token("cmd-1", Role::Commander);
    assert_eq!(
        everyone(stream_names(&node, &viewer_duty).await),
        ["cam-f", "off-d"],
        "a duty viewer does not see the camera of an incident it has no access to"
    );
    assert_eq!(
        everyone(stream_names(&node, &viewer_secret).await),
        ["cam-f", "off-d", "off-s"]
    );
    assert_eq!(
        everyone(stream_names(&node, &commander).await),
        ["cam-f", "off-d", "off-s"]
    );
    // The signaling catalog agrees for the duty viewer: no `off-s` there either.
    let mut ws = ws_login(&node, viewer_duty.clone()).await;
    ws.send(Message::Text(
        encode(&ClientMsg::Catalog {
            id: 1,
            incident: None,
        })
        .into(),
    ))
    .await
    .unwrap();
    let catalog = loop {
        match ws_recv(&mut ws).await.expect("catalog answer") {
            ServerMsg::Result { re: 1, data } => break data,
            _ => continue,
        }
    };
    let in_catalog: Vec<&str> = catalog["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        in_catalog.contains(&"off-d") && !in_catalog.contains(&"off-s"),
        "{catalog}"
    );

    // `GET /api/wall/config`: open, but the tile URL (and its key) only with a token.
    let (s, v, _) = http(&node, Method::GET, "/api/wall/config", None, None).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["tiles"].is_null(), "{v}");
    assert!(!v.to_string().contains("SECRET"), "{v}");
    assert_eq!(v["zoom"], 12, "{v}");
    let (s, v, _) = http(
        &node,
        Method::GET,
        "/api/wall/config",
        Some(&viewer_duty),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tiles"]["url"], TILES, "{v}");
    let (s, v, h) = http(
        &node,
        Method::GET,
        "/api/wall/config",
        Some("not-a-token"),
        None,
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("bad_token")), "{v}");
    assert!(!v.to_string().contains("SECRET") && h.contains_key("www-authenticate"));
    // Nothing else open serves the key either.
    for path in [
        "/",
        "/index.html",
        "/wall.js",
        "/healthz",
        "/metrics",
        "/api/openapi.json",
    ] {
        let (s, v, _) = http(&node, Method::GET, path, None, None).await;
        assert!(s == 200 && !v.to_string().contains("SECRET"), "{path}: {s}");
    }
    node.node.shutdown().await;
}

const PROTOCOL_MD: &str = include_str!("../../../docs/protocol.md");

/// Messages of docs/protocol.md's summary that name a row but have no harmless probe where the
/// row allows: `drone_command_ack` is refused unless the command was sent to that very session
/// (covered in tests/signaling.rs, drone round trip).
const NO_PROBE: [&str; 1] = ["drone_command_ack"];

/// A harmless message of type `kind` as `sub`, as wire JSON; `None` if it has no reply.
fn signaling_probe(kind: &str, sub: &str, id: u64) -> (String, bool) {
    use signaling::testkit::{probe, probe_without_reply};
    let subject = signaling::Subject::parse(sub).unwrap();
    let typed = |a: Action| (encode(&probe(a, &subject, id)), true);
    let raw = |v: Value| (v.to_string(), true);
    match kind {
        "position" => typed(Action::ReportPosition),
        "units" => typed(Action::ReadIncident),
        "publish" => typed(Action::PublishOwn),
        "subscribe" => typed(Action::ViewStream),
        "chat" => typed(Action::Chat),
        "order" => typed(Action::SendOrder),
        "order_answer" => typed(Action::AnswerOrder),
        "sos" => typed(Action::RaiseSos),
        "incident_create" => typed(Action::ManageIncident),
        "drone_command" => typed(Action::CommandDrone),
        "revoke" => typed(Action::Revoke),
        "incidents" => raw(serde_json::json!({"type": kind, "id": id})),
        "catalog" => raw(serde_json::json!({"type": kind, "id": id})),
        "log" => raw(serde_json::json!({"type": kind, "id": id, "incident": "duty"})),
        "incident_close" => {
            raw(serde_json::json!({"type": kind, "id": id, "incident": "no-such-incident"}))
        }
        "assign" | "unassign" => raw(
            serde_json::json!({"type": kind, "id": id, "incident": "duty", "subject": "nobody-else"}),
        ),
        "read" => raw(serde_json::json!({"type": kind, "id": id, "item": 999_999})),
        "sos_ack" => raw(serde_json::json!({"type": kind, "id": id, "sos": "no-such-sos"})),
        "telemetry" => (
            encode(&probe_without_reply(Action::PublishDrone, &subject).unwrap()),
            false,
        ),
        "drone_link" => (
            serde_json::json!({"type": kind, "drone": format!("{sub}-drone1"), "up": true})
                .to_string(),
            false,
        ),
        other => panic!("docs/protocol.md: {other} names a row, and this test has no probe for it"),
    }
}

/// One signaling session over `/ws` or raw QUIC, speaking wire JSON.
enum Sig {
    Ws(WsStream),
    Quic(crate::tokens::RawQuic),
}

impl Sig {
    async fn send(&mut self, text: &str) {
        match self {
            Sig::Ws(ws) => ws
                .send(Message::Text(text.to_owned().into()))
                .await
                .unwrap(),
            Sig::Quic(q) => q.send_text(text).await,
        }
    }

    async fn recv(&mut self) -> ServerMsg {
        match self {
            Sig::Ws(ws) => ws_recv(ws)
                .await
                .unwrap_or_else(|c| panic!("closed: {c:?}")),
            Sig::Quic(q) => q.recv().await.expect("QUIC session open"),
        }
    }

    /// Sends `text` and returns whether the node refused it for lack of rights: for a request the
    /// answer to `id`; for a message without reply any `forbidden` before a ping's answer.
    async fn refused(&mut self, text: &str, id: u64, has_reply: bool) -> (bool, String) {
        self.send(text).await;
        let ping = id + 500_000;
        if !has_reply {
            self.send(&encode(&ClientMsg::Ping { id: ping })).await;
        }
        let mut seen = Vec::new();
        loop {
            let m = self.recv().await;
            if has_reply && signaling::testkit::answers(&m, id) {
                return (signaling::testkit::is_forbidden(&m, id), format!("{m:?}"));
            }
            if !has_reply {
                if signaling::testkit::answers(&m, ping) {
                    let denied = seen.iter().any(signaling::testkit::is_forbidden_without_re);
                    return (denied, format!("{seen:?}"));
                }
                seen.push(m);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signaling_request_of_protocol_md_is_checked_by_its_row_over_websocket_and_quic() {
    let doc = doc_matrix();
    // docs/protocol.md's summary: message type → the row it checks ("—" rows check none).
    let checked: Vec<(String, Action)> =
        table(PROTOCOL_MD, &["type", "id", "row checked", "reply `data`"])
            .into_iter()
            .filter(|r| !r[2].starts_with('—') && !NO_PROBE.contains(&r[0].trim_matches('`')))
            .map(|r| (r[0].trim_matches('`').to_owned(), action_of(&r[2])))
            .collect();
    assert!(checked.len() >= 20, "{checked:?}");
    let node = common::start_node().await;
    let mut id = 1;
    for role in Role::ALL {
        let sub = format!("{}-8", role.as_str());
        let token = node.token(&sub, role);
        let mut q = crate::tokens::RawQuic::open(&node, &token).await;
        q.send(&ClientMsg::Hello {
            v: VERSION,
            token: token.clone(),
            resume: None,
        })
        .await;
        assert!(matches!(q.recv().await, Some(ServerMsg::Welcome(_))));
        let mut sessions = [
            ("/ws", Sig::Ws(ws_login(&node, token).await)),
            ("QUIC", Sig::Quic(q)),
        ];
        for (kind, action) in &checked {
            let allowed = doc[&(*action, role)];
            for (transport, s) in sessions.iter_mut() {
                id += 1;
                let (text, has_reply) = signaling_probe(kind, &sub, id);
                let (denied, got) = s.refused(&text, id, has_reply).await;
                assert_eq!(
                    denied,
                    !allowed,
                    "{transport} {role} `{kind}` (row {action}): docs/roles.md says {}; got {got}",
                    if allowed { "allowed" } else { "forbidden" }
                );
            }
        }
    }
    node.node.shutdown().await;
}
