//! Security suite: `tokens` (see security.rs). Every kind of bad token an attacker can present —
//! forged, tampered, expired, early, too long-lived, wrong issuer, `crit`, `alg` none / HS256,
//! unknown `kid`, over 8 KiB, garbage, wrong audience, revoked by id and by subject — is sent on
//! every way in: HTTP (WHIP, WHEP, `/api/units`), the WebSocket `hello` and the QUIC `hello`.
//! Each must be refused with the code docs/api.md ("Authentication") and docs/protocol.md
//! ("Handshake", "Errors and close codes") document, with the reason in the message, and the
//! connection closed with the matching close code. One node for the whole table.
//!
//! The transport helpers here (`ws_*`, `quic_*`) are shared with the other files of the suite.

use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use futures_util::{SinkExt as _, StreamExt as _};
use media_server::signal::{RevocationFile, REVOCATION_FILE};
use serde_json::{json, Value};
use signaling::auth::{key_id, Role, TokenIssuer, TokenRequest};
use signaling::client::{self, ClientConfig};
use signaling::core::Revocation;
use signaling::proto::{encode, encode_frame, ClientMsg, ErrorCode, ServerMsg, VERSION};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, TestNode, WAIT};

/// Bound on one answer in this suite (a lock-out, not a timing figure).
pub(crate) const ANSWER: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Crafting tokens by hand.

/// base64url without padding (RFC 4648 §5), as JWS uses it.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A compact JWS of `header` and `claims` signed (Ed25519) with `key`, whatever the header says.
fn jws(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

/// HMAC-SHA256 (RFC 2104), for the `alg` confusion attack (HS256 keyed with the public key).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let pad = |x: u8| k.iter().map(|b| b ^ x).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Valid claims for `node`, issued now, as JSON (to be signed by hand).
fn claims(node: &TestNode, sub: &str) -> Value {
    let now = common::now_unix();
    json!({
        "sub": sub, "role": "admin", "iss": node.node.identity.node_id.as_str(),
        "aud": node.node.identity.node_id.as_str(), "iat": now, "exp": now + 3600,
        "jti": "0123456789abcdef0123456789abcdef", "fpr": node.node.identity.fingerprint,
    })
}

// ---------------------------------------------------------------------------------------------
// Transports: what a client observes.

/// An HTTP request with `token` as `Authorization: Bearer` (none if `None`).
pub(crate) async fn http(
    node: &TestNode,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new().request(method, node.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some((ct, b)) = body {
        req = req.header("content-type", ct).body(b);
    }
    let r = tokio::time::timeout(ANSWER, req.send())
        .await
        .unwrap_or_else(|_| panic!("{path} answered in time"))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

/// A WebSocket to the node's `/ws`.
pub(crate) type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn ws_open(node: &TestNode) -> WsStream {
    let url = format!("ws://{}/ws", node.node.http_addr);
    tokio::time::timeout(ANSWER, tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket connect in time")
        .expect("WebSocket upgrade")
        .0
}

/// The next server message, or the close code once the node closed.
pub(crate) async fn ws_recv(ws: &mut WsStream) -> Result<ServerMsg, Option<u16>> {
    loop {
        let next = tokio::time::timeout(ANSWER, ws.next())
            .await
            .expect("a WebSocket message in time");
        match next {
            Some(Ok(Message::Text(t))) => {
                return Ok(serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad JSON {t}: {e}")))
            }
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Sends `hello` with `token` over `/ws`: the first answer, and the close code if the node
/// closed right after it.
pub(crate) async fn ws_hello(node: &TestNode, token: &str) -> (ServerMsg, Option<u16>) {
    let mut ws = ws_open(node).await;
    let hello = ClientMsg::Hello {
        v: VERSION,
        token: token.to_owned(),
        resume: None,
    };
    ws.send(Message::Text(encode(&hello).into()))
        .await
        .expect("send hello");
    let first = ws_recv(&mut ws).await.expect("an answer to hello");
    if matches!(first, ServerMsg::Welcome(_)) {
        let _ = ws.close(None).await;
        return (first, None);
    }
    let close = loop {
        match ws_recv(&mut ws).await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    (first, close)
}

/// A raw QUIC control stream to the node, the certificate pinned by `pin`'s `fpr`.
pub(crate) struct RawQuic {
    _endpoint: quinn::Endpoint,
    pub(crate) conn: quinn::Connection,
    pub(crate) send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: signaling::proto::FrameDecoder,
}

impl RawQuic {
    pub(crate) async fn open(node: &TestNode, pin: &str) -> RawQuic {
        let cfg = ClientConfig::new(node.node.quic_addr.to_string(), pin);
        let qc = client::pinned_quic_config(&cfg).expect("QUIC config");
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(qc);
        let conn = tokio::time::timeout(
            ANSWER,
            endpoint
                .connect(node.node.quic_addr, client::SERVER_NAME)
                .unwrap(),
        )
        .await
        .expect("QUIC handshake in time")
        .expect("QUIC handshake");
        let (send, recv) = conn.open_bi().await.expect("control stream");
        RawQuic {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            decoder: Default::default(),
        }
    }

    pub(crate) async fn send(&mut self, msg: &ClientMsg) {
        self.send
            .write_all(&encode_frame(msg))
            .await
            .expect("QUIC write");
    }

    /// Sends `text` as one frame, whatever it holds.
    pub(crate) async fn send_text(&mut self, text: &str) {
        let mut f = (text.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(text.as_bytes());
        self.send.write_all(&f).await.expect("QUIC write");
    }

    /// The next message, or `None` once the stream or connection ended.
    pub(crate) async fn recv(&mut self) -> Option<ServerMsg> {
        loop {
            if let Some(f) = self.decoder.next_frame().expect("node frames are valid") {
                return Some(serde_json::from_slice(&f).expect("node JSON"));
            }
            let chunk = tokio::time::timeout(ANSWER, self.recv.read_chunk(65536, true))
                .await
                .expect("QUIC data in time");
            match chunk {
                Ok(Some(c)) => self.decoder.push(&c.bytes),
                _ => return None,
            }
        }
    }

    /// The QUIC application close code once the node closed.
    pub(crate) async fn closed(&mut self) -> Option<u64> {
        while self.recv().await.is_some() {}
        match tokio::time::timeout(ANSWER, self.conn.closed())
            .await
            .expect("closed in time")
        {
            quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
            _ => None,
        }
    }
}

/// Sends `hello` with `token` on a raw QUIC control stream: the first answer and the close code
/// (none after a welcome).
pub(crate) async fn quic_hello(
    node: &TestNode,
    pin: &str,
    token: &str,
) -> (ServerMsg, Option<u64>) {
    let mut q = RawQuic::open(node, pin).await;
    q.send(&ClientMsg::Hello {
        v: VERSION,
        token: token.to_owned(),
        resume: None,
    })
    .await;
    let first = q.recv().await.expect("an answer to hello");
    if matches!(first, ServerMsg::Welcome(_)) {
        q.conn.close(0u32.into(), b"done");
        return (first, None);
    }
    (first, q.closed().await)
}

// ---------------------------------------------------------------------------------------------

/// One bad token and what every transport must answer.
struct Case {
    what: &'static str,
    token: String,
    /// The HTTP `error` code (401).
    http: &'static str,
    /// The signaling error code (close code = its number; WebSocket 4000 + it).
    sig: ErrorCode,
    /// A fragment of the message every transport must carry.
    says: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_code_on_http_websocket_and_quic() {
    // A second issuer, trusted only for tokens whose `iss` is `county-9`.
    let bound = SigningKey::from_bytes(&[9; 32]);
    let bound_hex: String = bound
        .verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let node = common::start_node_with(|c| {
        c.auth.trusted_issuers = vec![format!("county-9={bound_hex}")];
    })
    .await;
    let id = &node.node.identity;
    let own = &id.signing_key;
    let kid = key_id(&own.verifying_key());
    let now = common::now_unix();
    let req = |sub: &str, edit: &dyn Fn(&mut TokenRequest)| {
        let mut r = TokenRequest::new(
            sub.parse().unwrap(),
            Role::Admin,
            id.node_id.to_string(),
            id.fingerprint.clone(),
        );
        edit(&mut r);
        r
    };
    let issue = |sub: &str, at: u64, edit: &dyn Fn(&mut TokenRequest)| {
        id.issuer().issue(&req(sub, edit), at)
    };
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});

    // Tampered: a viewer's token whose payload now says admin, the viewer's signature kept.
    let viewer = issue("tamper-1", now, &|r| r.role = Role::Viewer);
    let mut forged_claims = signaling::auth::decode_unverified(&viewer).unwrap();
    forged_claims.role = Role::Admin;
    let parts: Vec<&str> = viewer.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(&serde_json::to_vec(&forged_claims).unwrap()),
        parts[2]
    );
    // `alg` confusion: HS256 keyed with the node's public key; and `alg` none.
    let hs_input = format!(
        "{}.{}",
        b64url(
            json!({"alg": "HS256", "typ": "JWT", "kid": kid})
                .to_string()
                .as_bytes()
        ),
        b64url(claims(&node, "hs-1").to_string().as_bytes())
    );
    let hs256 = format!(
        "{hs_input}.{}",
        b64url(&hmac_sha256(
            own.verifying_key().as_bytes(),
            hs_input.as_bytes()
        ))
    );
    let alg_none = format!(
        "{}.{}.{}",
        b64url(json!({"alg": "none", "kid": kid}).to_string().as_bytes()),
        b64url(claims(&node, "none-1").to_string().as_bytes()),
        b64url(b"x")
    );
    // Over 8 KiB: a well-signed token with a bloated claim.
    let huge = issue("huge-1", now, &|r| {
        r.drones = (0..400).map(|i| format!("drone-{i:04}-padding")).collect()
    });
    assert!(huge.len() > 8192, "{}", huge.len());
    // Revoked by id and by subject.
    let revoked_jti = issue("rev-1", now, &|_| {});
    let revoked_sub = issue("rev-2", now - 10, &|_| {});
    let file = node.dir.path().join("data").join(REVOCATION_FILE);
    let jti = signaling::auth::decode_unverified(&revoked_jti)
        .unwrap()
        .jti;
    RevocationFile::append(
        &file,
        &Revocation::Token {
            jti: jti.to_string(),
        },
    )
    .unwrap();
    RevocationFile::append(
        &file,
        &Revocation::Subject {
            sub: "rev-2".parse().unwrap(),
            at: signaling::UnixSecs(now),
        },
    )
    .unwrap();

    let bad = |what, token, says| Case {
        what,
        token,
        http: "bad_token",
        sig: ErrorCode::Unauthorized,
        says,
    };
    let cases = [
        bad(
            "forged (untrusted key)",
            TokenIssuer::new(SigningKey::from_bytes(&[42; 32]), id.node_id.clone())
                .issue(&req("forged-1", &|_| {}), now),
            "untrusted key",
        ),
        bad("bad signature", tampered, "signature is invalid"),
        bad(
            "expired",
            issue("old-1", now - 13 * 3600, &|_| {}),
            "expired",
        ),
        bad(
            "not yet valid",
            issue("early-1", now + 3600, &|_| {}),
            "not valid yet",
        ),
        bad(
            "lifetime over the maximum",
            issue("long-1", now, &|r| r.ttl_secs = 8 * 24 * 3600),
            "lifetime exceeds",
        ),
        bad(
            "iss not the key's issuer",
            TokenIssuer::new(bound.clone(), "city-1".parse().unwrap())
                .issue(&req("wrongiss-1", &|_| {}), now),
            "iss does not name",
        ),
        bad(
            "crit header",
            jws(
                own,
                &json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"]}),
                &claims(&node, "crit-1"),
            ),
            "crit",
        ),
        bad("alg none", alg_none, "alg must be EdDSA"),
        bad("alg HS256", hs256, "alg must be EdDSA"),
        bad(
            "unknown kid",
            jws(
                own,
                &json!({"alg": "EdDSA", "kid": "0000000000000000"}),
                &claims(&node, "kid-1"),
            ),
            "untrusted key",
        ),
        bad("over 8 KiB", huge, "too large"),
        bad("garbage", "not-a-token".into(), "malformed token"),
        bad(
            "garbage JWS parts",
            format!("{}.%%%.AAAA", b64url(header.to_string().as_bytes())),
            "malformed token",
        ),
        bad(
            "wrong audience",
            issue("aud-1", now, &|r| r.aud = "some-other-node".into()),
            "another node",
        ),
        Case {
            what: "revoked jti",
            token: revoked_jti,
            http: "revoked",
            sig: ErrorCode::Revoked,
            says: "revoked",
        },
        Case {
            what: "revoked subject",
            token: revoked_sub,
            http: "revoked",
            sig: ErrorCode::Revoked,
            says: "revoked",
        },
    ];

    // The node polls the revocation file: wait until it applies (bounded).
    common::wait_for("the revocations to apply", WAIT, || async {
        let (s1, _, _) = http(
            &node,
            reqwest::Method::GET,
            "/api/units",
            Some(&cases[14].token),
            None,
        )
        .await;
        let (s2, _, _) = http(
            &node,
            reqwest::Method::GET,
            "/api/units",
            Some(&cases[15].token),
            None,
        )
        .await;
        (s1 == 401 && s2 == 401).then_some(())
    })
    .await;

    // The control: a good token (signed by the bound issuer, as bound) passes everywhere, so a
    // refusal below is the token's fault and not the harness's.
    let good = TokenIssuer::new(bound.clone(), "county-9".parse().unwrap())
        .issue(&req("good-1", &|r| r.aud = "*".into()), now);
    let pin = node.token("pin-holder", Role::Viewer);
    let (s, _, _) = http(&node, reqwest::Method::GET, "/api/units", Some(&good), None).await;
    assert_eq!(s, 200, "a good token on /api/units");
    assert!(matches!(
        ws_hello(&node, &good).await.0,
        ServerMsg::Welcome(_)
    ));
    assert!(matches!(
        quic_hello(&node, &pin, &good).await.0,
        ServerMsg::Welcome(_)
    ));

    let stream_of = |c: &Case| {
        // A name the token's subject would own, so only the token can be the reason.
        signaling::auth::decode_unverified(&c.token)
            .map(|cl| cl.sub.to_string())
            .unwrap_or_else(|_| "nobody-1".into())
    };
    for c in &cases {
        let name = stream_of(c);
        for (method, path, body) in [
            (
                reqwest::Method::POST,
                format!("/whip/{name}"),
                Some(("application/sdp", common::canned_offer())),
            ),
            (
                reqwest::Method::POST,
                format!("/whep/{name}"),
                Some(("application/sdp", common::canned_offer())),
            ),
            (reqwest::Method::GET, "/api/units".to_owned(), None),
        ] {
            let (status, body, headers) =
                http(&node, method.clone(), &path, Some(&c.token), body).await;
            assert_eq!(status, 401, "{} on {method} {path}: {body}", c.what);
            assert_eq!(
                body["error"], c.http,
                "{} on {method} {path}: {body}",
                c.what
            );
            let msg = body["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains(c.says),
                "{} on {method} {path}: {body}",
                c.what
            );
            assert_eq!(
                headers.get("www-authenticate").map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{} on {method} {path}",
                c.what
            );
        }
        let (first, close) = ws_hello(&node, &c.token).await;
        assert!(
            matches!(&first, ServerMsg::Error { re: None, code, message } if *code == c.sig && message.contains(c.says)),
            "/ws {}: {first:?}",
            c.what
        );
        assert_eq!(
            close,
            Some(4000 + c.sig.close_code()),
            "/ws close, {}",
            c.what
        );
        let (first, close) = quic_hello(&node, &pin, &c.token).await;
        assert!(
            matches!(&first, ServerMsg::Error { re: None, code, message } if *code == c.sig && message.contains(c.says)),
            "QUIC {}: {first:?}",
            c.what
        );
        assert_eq!(
            close,
            Some(u64::from(c.sig.close_code())),
            "QUIC close, {}",
            c.what
        );
    }
    // No token at all, or not a Bearer one, is `no_token` on HTTP.
    for auth in [None, Some("Basic YWRtaW46YWRtaW4=")] {
        let mut r = reqwest::Client::new().get(node.url("/api/units"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "no_token", "{auth:?}");
    }
    node.node.shutdown().await;
}
