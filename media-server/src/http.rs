//! The node's HTTP surface on axum: WHIP/WHEP (RFC 9725 and the WHEP draft), the API, health,
//! metrics and the static wall pages. Formats are pinned in `docs/api.md`.
//!
//! Handlers only check, translate and forward: media work happens in the media task reached via
//! [`MediaHandle`]; authorisation uses the `signaling` crate's token verifier and role matrix.
//! Every error is a status plus a short JSON body `{"error": CODE, "message": TEXT}` that says
//! what was wrong without leaking internals.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use signaling::auth::{Action, Claims, TokenVerifier};
use signaling::error::NameError;
use signaling::ids::{IncidentId, NodeId, StreamName, Subject};
use signaling::proto::MAX_FRAME;

use crate::attachments::{AttachmentError, AttachmentId, AttachmentStore};
use crate::media::MediaHandle;
use crate::metrics::Metrics;
use crate::signal::Hub;
use crate::streams::{LiveStreams, StreamInfo};
use sfu::forward::LayerPref;
use sfu::SfuError;
use signaling::proto::ErrorCode;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// This node's id (the `NODE` of `NODE/STREAM`).
    pub node_id: NodeId,
    /// Token verification (trusted issuers, audience).
    pub verifier: Arc<TokenVerifier>,
    /// The media task.
    pub media: MediaHandle,
    /// The live-stream table.
    pub live: LiveStreams,
    /// Node counters.
    pub metrics: Arc<Metrics>,
    /// Serve `/metrics` on this router (false when it has its own listener).
    pub metrics_here: bool,
    /// The signaling server (sessions, incidents, units, revocations).
    pub hub: Arc<Hub>,
    /// The office's attachment store (`/api/attachments`).
    pub attachments: Arc<AttachmentStore>,
    /// What `GET /healthz` probes.
    pub probes: crate::health::Probes,
    /// The wall's map settings (`/api/wall/config`).
    pub wall: Arc<crate::config::WallConfig>,
    /// The trunk shell, when `[trunk]` is configured (`/api/trunks`).
    pub trunk: Option<crate::cascade::shell::TrunkHandle>,
    /// WHIP and WHEP sessions per token subject (`[http] media_peers_per_subject`).
    pub media_peers: Arc<crate::peer_cap::MediaPeers>,
}

/// An API error: a status and a message safe to show to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a late body may still come: this connection is done.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<SfuError> for ApiError {
    fn from(e: SfuError) -> Self {
        let (status, code) = match &e {
            SfuError::BadSdp(_) => (StatusCode::BAD_REQUEST, "bad_sdp"),
            SfuError::NoUsableMedia(_) => (StatusCode::NOT_ACCEPTABLE, "no_usable_media"),
            SfuError::Conflict { .. } => (StatusCode::CONFLICT, "stream_taken"),
            SfuError::NotLive => (StatusCode::NOT_FOUND, "no_such_stream"),
            SfuError::NoSession => (StatusCode::NOT_FOUND, "no_such_session"),
            // `SfuError` is non-exhaustive: a reason added later is the media plane's.
            _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Verifies the `Authorization: Bearer` token of a request.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "missing Authorization: Bearer token",
        )
    })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "Authorization must be `Bearer TOKEN`",
            )
        })?;
    state.hub.authenticate(token).map_err(|e| {
        let code = if e.code == ErrorCode::Revoked {
            "revoked"
        } else {
            "bad_token"
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.message)
    })
}

fn require(claims: &Claims, action: Action) -> Result<(), ApiError> {
    if claims.may(action) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} may not {}", claims.role, action),
        ))
    }
}

fn stream_name(raw: &str) -> Result<StreamName, ApiError> {
    StreamName::parse(raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_stream_name", e.to_string()))
}

/// The largest body [`LazyBody`] reads (`[http] max_body_bytes`), set by [`router`].
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

/// Body deadline when no listener set one (a router driven without `crate::listener`).
const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// After a refused over-limit body, at most this much more of it is read and discarded (for at
/// most [`BODY_DRAIN_TIME`]) so that a client still sending sees the 413 rather than a reset.
const BODY_DRAIN_BYTES: usize = 1024 * 1024;
/// See [`BODY_DRAIN_BYTES`].
const BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// A request body not read yet. Handlers check the token and every header first and only then
/// [`read`](LazyBody::read) it, bounded by `[http] max_body_bytes` (413 `too_large`) and the
/// body deadline the listener set (408 `body_timeout`, connection closed): a request without a
/// valid token never makes the node wait for, or hold, its body.
pub struct LazyBody {
    body: axum::body::Body,
    limit: usize,
    declared: Option<u64>,
    deadline: tokio::time::Instant,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for LazyBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(64 * 1024, |l| l.0);
        let deadline = req
            .extensions()
            .get::<crate::listener::BodyDeadline>()
            .map_or_else(
                || tokio::time::Instant::now() + DEFAULT_BODY_TIMEOUT,
                |d| d.0,
            );
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok(LazyBody {
            body: req.into_body(),
            limit,
            declared,
            deadline,
        })
    }
}

impl LazyBody {
    /// Reads the whole body within the limit and the deadline.
    pub async fn read(self) -> Result<Bytes, ApiError> {
        use http_body_util::BodyExt as _;
        let LazyBody {
            mut body,
            limit,
            declared,
            deadline,
        } = self;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body larger than {limit} bytes (http.max_body_bytes)"),
            )
        };
        let mut buf = bytes::BytesMut::new();
        let over = if declared.is_some_and(|n| n > limit as u64) {
            true
        } else {
            let read = async {
                while let Some(frame) = body.frame().await {
                    let Ok(data) = frame?.into_data() else {
                        continue;
                    };
                    if buf.len() + data.len() > limit {
                        return Ok(true);
                    }
                    buf.extend_from_slice(&data);
                }
                Ok::<_, axum::Error>(false)
            };
            match tokio::time::timeout_at(deadline, read).await {
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the request body did not arrive in time (http.body_timeout_secs)",
                    ))
                }
                Ok(Err(_)) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        "the request body was interrupted",
                    ))
                }
                Ok(Ok(over)) => over,
            }
        };
        if over {
            let drain_until = deadline.min(tokio::time::Instant::now() + BODY_DRAIN_TIME);
            let _ = tokio::time::timeout_at(drain_until, async {
                let mut left = BODY_DRAIN_BYTES;
                while let Some(Ok(frame)) = body.frame().await {
                    let n = frame.data_ref().map_or(0, |d| d.len());
                    match left.checked_sub(n) {
                        Some(l) => left = l,
                        None => break,
                    }
                }
            })
            .await;
            return Err(too_large());
        }
        Ok(buf.freeze())
    }
}

fn too_many_sessions(sub: &Subject, full: crate::peer_cap::Full) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_sessions",
        format!(
            "{sub} holds {} WHIP/WHEP sessions already (http.media_peers_per_subject); end one first",
            full.limit
        ),
    )
}

/// Checks that a request carries an SDP offer: `Content-Type: application/sdp` (headers only).
fn sdp_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "body must be an SDP offer with Content-Type: application/sdp",
        ));
    }
    Ok(())
}

/// Reads an SDP offer body: UTF-8, starting with `v=0`.
fn sdp_text(body: &Bytes) -> Result<String, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "malformed SDP offer: not UTF-8",
        )
    })?;
    if !text.trim_start().starts_with("v=0") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "malformed SDP offer: must start with v=0",
        ));
    }
    Ok(text.to_owned())
}

fn created(session_id: &str, sdp: String) -> Response {
    let location = format!("/session/{session_id}");
    let mut resp = (StatusCode::CREATED, sdp).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    resp
}

async fn whip(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: LazyBody,
) -> Result<Response, ApiError> {
    let claims = authenticate(&state, &headers)?;
    let name = stream_name(&stream)?;
    claims
        .may_publish(&name)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()))?;
    sdp_type(&headers)?;
    let slot = state
        .media_peers
        .reserve(&claims.sub, &state.media)
        .await
        .map_err(|full| too_many_sessions(&claims.sub, full))?;
    let offer = sdp_text(&body.read().await?)?;
    let answer = state.media.publish(name, claims.sub.clone(), offer).await?;
    slot.commit(&answer.session_id);
    Ok(created(&answer.session_id, answer.sdp))
}

async fn whip_remote(Path((_node, _stream)): Path<(String, String)>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_stream_name",
        NameError::Reserved.to_string(),
    )
}

/// Query options of `POST /whep/…`: `layer=low|mid|high|auto` or `maxHeight=N`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ViewQuery {
    layer: Option<String>,
    #[serde(rename = "maxHeight")]
    max_height: Option<String>,
}

impl ViewQuery {
    fn pref(&self) -> Result<LayerPref, ApiError> {
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_layer", m);
        match (&self.layer, &self.max_height) {
            (Some(_), Some(_)) => Err(bad("give layer or maxHeight, not both".into())),
            (Some(l), None) => l.parse().map_err(bad),
            (None, Some(h)) => h
                .parse::<u32>()
                .ok()
                .filter(|h| *h > 0)
                .map(LayerPref::MaxHeight)
                .ok_or_else(|| {
                    bad(format!(
                        "maxHeight must be a positive number of rows, not {h:?}"
                    ))
                }),
            (None, None) => Ok(LayerPref::Auto),
        }
    }
}

async fn whep(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(query): Query<ViewQuery>,
    headers: HeaderMap,
    body: LazyBody,
) -> Result<Response, ApiError> {
    view(&state, &stream, &query, &headers, body).await
}

async fn whep_remote(
    State(state): State<AppState>,
    Path((node, stream)): Path<(String, String)>,
    Query(query): Query<ViewQuery>,
    headers: HeaderMap,
    body: LazyBody,
) -> Result<Response, ApiError> {
    if node != state.node_id.as_str() {
        // A stream at another node: pulled over the trunks (docs/trunk.md).
        let claims = authenticate(&state, &headers)?;
        require(&claims, Action::ViewStream)?;
        let addr = trunk::StreamAddr::parse(&format!("{node}/{stream}")).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_stream_name", e.to_string())
        })?;
        let pref = query.pref()?;
        sdp_type(&headers)?;
        let slot = state
            .media_peers
            .reserve(&claims.sub, &state.media)
            .await
            .map_err(|full| too_many_sessions(&claims.sub, full))?;
        let offer = sdp_text(&body.read().await?)?;
        let answer = state.media.view_remote(addr, offer, pref).await?;
        slot.commit(&answer.session_id);
        return Ok(created(&answer.session_id, answer.sdp));
    }
    view(&state, &stream, &query, &headers, body).await
}

async fn view(
    state: &AppState,
    stream: &str,
    query: &ViewQuery,
    headers: &HeaderMap,
    body: LazyBody,
) -> Result<Response, ApiError> {
    let claims = authenticate(state, headers)?;
    require(&claims, Action::ViewStream)?;
    let name = stream_name(stream)?;
    let pref = query.pref()?;
    sdp_type(headers)?;
    let slot = state
        .media_peers
        .reserve(&claims.sub, &state.media)
        .await
        .map_err(|full| too_many_sessions(&claims.sub, full))?;
    let offer = sdp_text(&body.read().await?)?;
    let answer = state.media.view(name, offer, pref).await?;
    slot.commit(&answer.session_id);
    Ok(created(&answer.session_id, answer.sdp))
}

/// `DELETE /session/{id}`: the session URL is the capability (128 random bits), as in RFC 9725.
async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_session",
            "no such session",
        ));
    }
    state.media.close(id.clone()).await?;
    state.media_peers.ended(&id);
    Ok(StatusCode::OK)
}

/// `PATCH /session/{id}`: trickle ICE and ICE restarts are not supported (the node is ICE-lite
/// with its candidate in the answer); RFC 9725 says to answer 405.
async fn patch_session() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "DELETE, OPTIONS")],
        Json(ErrorBody {
            error: "not_supported",
            message: "trickle ICE is not supported; send all candidates in the offer",
        }),
    )
        .into_response()
}

/// `GET /healthz`: every part of the node probed (docs/api.md); 503 when one has failed.
async fn healthz(State(state): State<AppState>) -> Response {
    let health = crate::health::check(state.node_id.as_str(), &state.probes).await;
    let code = if health.status == "failed" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, [(header::CACHE_CONTROL, "no-store")], Json(health)).into_response()
}

/// `GET /metrics`, Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct StreamList {
    node: String,
    streams: Vec<StreamInfo>,
    remote: Vec<crate::streams::RemoteStreamInfo>,
}

async fn api_streams(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StreamList>, ApiError> {
    let claims = authenticate(&state, &headers)?;
    require(&claims, Action::ViewStream)?;
    // Scoped as the signaling `catalog` is (docs/roles.md): admin and commander see every
    // stream; anyone else the streams whose owner is a unit visible to them, and those whose
    // owner never had a signaling session (WHIP-only publishers: the standing `duty` incident,
    // which every token may access).
    let live = state.live.clone();
    let streams = state
        .hub
        .try_call(move |c| {
            let (owners, all) = c.catalog_scope(&claims, None);
            let mut streams = live.list();
            streams.retain(|s| all || owners.contains_key(&s.owner) || !c.knows_unit(&s.owner));
            Ok(streams)
        })
        .await
        .map_err(proto_to_api)?;
    Ok(Json(StreamList {
        node: state.node_id.to_string(),
        streams,
        remote: state.live.remote_list(),
    }))
}

/// `GET /api/trunks`: the state of this node's trunks (docs/trunk.md): configured uplinks, the
/// trunks up with their round-trip time and byte counters, and the route of every stream that
/// crosses this node. Open to every role that may view streams (it tells what the remote
/// stream list tells, and whether the way to it is up); the configured addresses are shown to
/// admins only.
async fn api_trunks(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers)?;
    require(&claims, Action::ViewStream)?;
    let Some(trunk) = &state.trunk else {
        return Ok(Json(serde_json::json!({
            "node": state.node_id.as_str(), "enabled": false, "uplinks": [], "trunks": [], "routes": []
        })));
    };
    let mut status = trunk.status().await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the trunk shell is not running",
        )
    })?;
    if claims.role != signaling::auth::Role::Admin {
        for u in &mut status.uplinks {
            u.addr = None;
        }
    }
    let mut v = serde_json::to_value(&status)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    v["enabled"] = serde_json::Value::Bool(true);
    Ok(Json(v))
}

/// The OpenAPI 3 document of this API (`docs/openapi.json`, kept in step with `docs/api.md`;
/// `tests/tests/media.rs` checks real responses against it).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `GET /api/openapi.json` (open).
async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        OPENAPI,
    )
        .into_response()
}

/// `GET /api/wall/config` (open): the wall's map settings from `[wall]`. The tile settings go
/// only to a caller with a valid token: a tile URL may carry the provider's API key, which is
/// not for anyone who can reach the port. A token that is present but bad is refused (401).
async fn wall_config(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut doc = state.wall.to_json();
    if !headers.contains_key(header::AUTHORIZATION) {
        doc["tiles"] = serde_json::Value::Null;
    } else {
        authenticate(&state, &headers)?;
    }
    Ok(Json(doc))
}

/// `GET /ws`: the signaling protocol over WebSocket (docs/protocol.md); the token travels in
/// the first message (`hello`), not in the upgrade request.
async fn ws(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    // Allow more than the protocol limit so an oversized message gets a typed error from the
    // core rather than a bare transport close.
    upgrade
        .max_message_size(4 * MAX_FRAME)
        .max_frame_size(4 * MAX_FRAME)
        .on_upgrade(move |socket| state.hub.clone().serve_ws(socket))
}

/// `GET /api/incidents`: incidents the token may see.
async fn api_incidents(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers)?;
    require(&claims, Action::ReadIncident)?;
    let list = state
        .hub
        .call(move |c| c.incidents_for(&claims))
        .await
        .map_err(proto_to_api)?;
    Ok(Json(serde_json::json!({ "incidents": list })))
}

/// Query of `GET /api/incidents/{id}/log`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    after: u64,
}

/// `GET /api/incidents/{id}/log?after=N`: the incident log, oldest first, at most 500 entries.
async fn api_incident_log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers)?;
    let id = IncidentId::parse(&id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_incident", e.to_string()))?;
    let (incident, after) = (id.clone(), q.after);
    let entries = state
        .hub
        .try_call(move |c| c.log_for(&claims, &incident, after))
        .await
        .map_err(proto_to_api)?;
    Ok(Json(
        serde_json::json!({ "incident": id, "entries": entries }),
    ))
}

/// Query of `GET /api/units`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct UnitsQuery {
    incident: Option<String>,
}

/// `GET /api/units[?incident=ID]`: officers, drones and devices with presence and last position.
async fn api_units(
    State(state): State<AppState>,
    Query(q): Query<UnitsQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers)?;
    require(&claims, Action::ReadIncident)?;
    let incident = match q.incident {
        Some(i) => {
            let i = IncidentId::parse(&i).map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_incident", e.to_string())
            })?;
            Some(i)
        }
        None => None,
    };
    let now = crate::signal::now();
    let units = state
        .hub
        .try_call(move |c| {
            if let Some(i) = &incident {
                c.check_readable(&claims, i)?;
            }
            Ok(c.units_for(now, &claims, incident.as_ref()))
        })
        .await
        .map_err(proto_to_api)?;
    Ok(Json(serde_json::json!({ "units": units })))
}

/// Most orders one `GET /api/orders` returns.
const ORDERS_PAGE: usize = 1000;

/// `GET /api/orders`: orders visible to the token, newest first (admin and commander: every
/// order; others: those they sent or received), at most 1000.
async fn api_orders(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers)?;
    require(&claims, Action::ReadIncident)?;
    let orders = state
        .hub
        .try_call(move |c| c.orders_for(&claims, ORDERS_PAGE))
        .await
        .map_err(proto_to_api)?;
    Ok(Json(serde_json::json!({ "orders": orders })))
}

/// Body of `POST /api/orders`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// Sender-chosen id: a retry with the same id creates no second order.
    pub id: Option<String>,
    /// The incident.
    pub incident: IncidentId,
    /// The addressee's subject.
    pub to: Subject,
    /// What to do (1..=4000 characters).
    pub text: String,
}

/// `POST /api/orders`: sends an order (stored, then forwarded to the addressee's mailbox);
/// 201 with the order. The same `id` again returns the same order (200).
async fn api_orders_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: LazyBody,
) -> Result<Response, ApiError> {
    let claims = authenticate(&state, &headers)?;
    require(&claims, Action::SendOrder)?;
    let order: NewOrder = serde_json::from_slice(&body.read().await?).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_order",
            format!("invalid order: {e}"),
        )
    })?;
    let now = crate::signal::now();
    let data = state
        .hub
        .try_call(move |c| {
            c.send_order(
                now,
                &claims,
                None,
                order.id,
                &order.incident,
                &order.to,
                &order.text,
            )
        })
        .await
        .map_err(proto_to_api)?;
    let fresh = data["new"] == true;
    let status = if fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(data)).into_response())
}

/// Body of `POST /api/orders/{id}/answer`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderAnswerBody {
    /// `accept`, `decline` or `done`.
    pub answer: signaling::proto::OrderAnswer,
    /// Minutes to arrival (accept).
    pub eta_min: Option<u32>,
    /// Why (decline; required there).
    pub reason: Option<String>,
}

/// `POST /api/orders/{id}/answer`: the addressee accepts, declines or completes an order; 200 with
/// the order; 403 for anyone else; 409 for a transition the state machine does not allow.
async fn api_order_answer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: LazyBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers)?;
    let a: OrderAnswerBody = serde_json::from_slice(&body.read().await?).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_answer",
            format!("invalid answer: {e}"),
        )
    })?;
    let now = crate::signal::now();
    let data = state
        .hub
        .try_call(move |c| c.answer_order(now, &claims, None, &id, a.answer, a.eta_min, a.reason))
        .await
        .map_err(proto_to_api)?;
    Ok(Json(data))
}

fn proto_to_api(e: signaling::proto::ProtoError) -> ApiError {
    let status = match e.code {
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::UnknownRecipient => StatusCode::NOT_FOUND,
        ErrorCode::Unauthorized | ErrorCode::Revoked => StatusCode::UNAUTHORIZED,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.code.as_str(), e.message)
}

// ---------------------------------------------------------------------------------------------
// Attachments of the mobile office (`crate::attachments` stores them).

/// Header in which an uploader may announce the SHA-256 of the body.
const SHA256_HEADER: &str = "x-yiwang-sha256";

/// After refusing an over-limit body, the node still reads (and discards) up to this many more
/// bytes, for at most [`DRAIN_TIME`], so that the client, still sending, gets the 413 rather than
/// a connection reset.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// See [`DRAIN_BYTES`].
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "attachment larger than the limit of {limit} bytes ({:.1} MiB, office.attachment_max_bytes)",
            limit as f64 / (1024.0 * 1024.0)
        ),
    )
}

fn storage_error(e: AttachmentError) -> ApiError {
    match e {
        AttachmentError::TooLarge { limit } => too_large(limit),
        AttachmentError::HashMismatch { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "hash_mismatch", e.to_string())
        }
        AttachmentError::BadId => ApiError::new(StatusCode::BAD_REQUEST, "bad_hash", e.to_string()),
        AttachmentError::QuotaExceeded { scope, .. } => {
            let key = match scope {
                crate::attachments::Scope::Subject => "office.attachment_subject_quota_bytes",
                _ => "office.attachment_quota_bytes",
            };
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "quota_exceeded",
                format!("{e} ({key})"),
            )
        }
        AttachmentError::LowOnSpace { floor, .. } => {
            tracing::warn!(error = %e, "attachment refused: the data dir is at its free-space floor");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                format!(
                    "the node's disk is at its free-space floor of {floor} bytes kept for the \
                     office store (office.min_free_bytes, office.min_free_percent)"
                ),
            )
        }
        AttachmentError::TooManyUploads { .. } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            e.to_string(),
        ),
        AttachmentError::Io(ref io) if io.kind() == std::io::ErrorKind::StorageFull => {
            tracing::error!(error = %e, "attachment store is full");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                "the node's attachment store is full",
            )
        }
        e => {
            tracing::error!(error = %e, "attachment store failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_error",
                "the attachment could not be stored or read",
            )
        }
    }
}

/// An upload refused: the error as a response, with `Retry-After` for 429.
fn refused(e: AttachmentError) -> Response {
    let busy = matches!(e, AttachmentError::TooManyUploads { .. });
    let mut resp = storage_error(e).into_response();
    if busy {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

/// Reads and discards what is left of a refused body, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(mut stream: axum::body::BodyDataStream) {
    use futures_util::StreamExt as _;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut left = DRAIN_BYTES;
        while let Some(Ok(chunk)) = stream.next().await {
            match left.checked_sub(chunk.len() as u64) {
                Some(l) => left = l,
                None => break,
            }
        }
    })
    .await;
}

/// `POST /api/attachments`: the raw body is streamed to the store while hashed; 201 with where
/// to fetch it. Refused before the body is read when the declared length, the uploader's or the
/// node's quota, the free-space floor or the number of uploads in progress says no; a body that
/// stalls or trickles ends with 408. Whatever is refused leaves no file behind.
async fn api_attachments_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use futures_util::StreamExt as _;
    let claims = authenticate(&state, &headers)?;
    require(&claims, Action::Chat)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::attachments::content_type)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_content_type",
                format!(
                    "Content-Type must be one of {}",
                    crate::attachments::ALLOWED_TYPES.join(", ")
                ),
            )
        })?;
    let expected = match headers.get(SHA256_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| AttachmentId::parse(s.trim()).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_hash",
                        "X-Yiwang-Sha256 must be 64 lowercase hex characters",
                    )
                })?,
        ),
    };
    let mut stream = body.into_data_stream();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A client that sent `Expect: 100-continue` waits for the answer before sending the body:
    // refuse it at once. Others are already sending; read a little of it so they see the answer.
    let waits = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    let mut upload = match state.attachments.begin(&claims.sub, declared).await {
        Ok(u) => u,
        Err(e) => {
            if !waits && !matches!(e, AttachmentError::Io(_)) {
                drain(stream).await;
            }
            return Ok(refused(e));
        }
    };
    let limits = state.attachments.limits().clone();
    let started = std::time::Instant::now();
    let mut last = started;
    loop {
        let deadline = limits.body_deadline(started, last, upload.size());
        let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
        let Ok(next) = next else {
            let size = upload.size();
            // Dropping the upload removes its temporary file.
            drop(upload);
            tracing::debug!(size, "attachment upload timed out");
            let mut resp = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload_timeout",
                format!(
                    "the body stalled: nothing for {} s, or slower than {} bytes/s on average \
                     (office.attachment_idle_timeout_secs, office.attachment_min_rate_bytes_per_sec)",
                    limits.idle_timeout.as_secs(),
                    limits.min_rate_bytes_per_sec
                ),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(resp);
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the upload was interrupted",
            )
        })?;
        last = std::time::Instant::now();
        if let Err(e) = upload.write(&chunk).await {
            // Dropping the upload removes its temporary file.
            drop(upload);
            if !matches!(e, AttachmentError::Io(_)) {
                drain(stream).await;
            }
            return Ok(refused(e));
        }
    }
    let stored = upload
        .finish(
            expected,
            content_type,
            claims.sub.clone(),
            crate::signal::now_ms(),
        )
        .await
        .map_err(storage_error)?;
    let hex = stored.meta.sha256.hex();
    let url = format!("/api/attachments/{hex}");
    tracing::debug!(sha256 = %hex, size = stored.meta.size, created = stored.created, "attachment stored");
    let mut resp = (
        StatusCode::CREATED,
        Json(serde_json::json!({
            "sha256": hex,
            "size": stored.meta.size,
            "content_type": stored.meta.content_type,
            "url": url,
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Whether an `If-None-Match` header lists `etag` (or `*`); weak tags compare equal.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// `GET /api/attachments/{sha256}`: the stored bytes, streamed; immutable, so cacheable forever.
async fn api_attachment_get(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = authenticate(&state, &headers)?;
    require(&claims, Action::ReadIncident)?;
    let id = AttachmentId::parse(&sha256).map_err(storage_error)?;
    let attachment = state
        .attachments
        .open_attachment(&id)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such attachment"))?;
    let etag = format!("\"{id}\"");
    let cache = HeaderValue::from_static("private, max-age=31536000, immutable");
    let mut resp = if etag_matches(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let size = attachment.meta.size;
        let ct = HeaderValue::from_str(&attachment.meta.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        let mut resp = axum::body::Body::from_stream(attachment.into_stream()).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, ct);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // An uploaded HTML or SVG file opened from a link must not run as a page of the node's
        // origin (where the wall keeps its token): always a download. The id is hex, so the
        // header value is always valid.
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        resp
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, cache);
    Ok(resp)
}

/// The wall's static files, compiled into the binary (`build.rs` lists `web/`).
mod web {
    include!(concat!(env!("OUT_DIR"), "/web_files.rs"));
}

/// The embedded file served at `path` (`/` is `/index.html`): (content type, bytes).
pub fn web_file(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/" { "/index.html" } else { path };
    web::WEB_FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, ct, body)| (*ct, *body))
}

async fn static_file(uri: axum::http::Uri, method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        )
        .into_response();
    }
    match web_file(uri.path()) {
        Some((ct, body)) => (
            [
                (header::CONTENT_TYPE, ct),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found").into_response(),
    }
}

/// CORS for every response (WHIP/WHEP pages may be served from elsewhere), and a 204 answer to
/// every preflight.
async fn cors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let is_whip = req.uri().path().starts_with("/whip/") || req.uri().path().starts_with("/whep/");
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Authorization, Content-Type, If-Match, If-None-Match, X-Yiwang-Sha256",
        ),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link, ETag"),
    );
    if preflight && is_whip {
        h.insert(
            HeaderName::from_static("accept-post"),
            HeaderValue::from_static("application/sdp"),
        );
    }
    resp
}

/// The node's router. `max_body` bounds request bodies (413 beyond).
pub fn router(state: AppState, max_body: usize) -> Router {
    let mut r = Router::new()
        .route("/whip/{stream}", post(whip))
        .route("/whip/{node}/{stream}", post(whip_remote))
        .route("/whep/{stream}", post(whep))
        .route("/whep/{node}/{stream}", post(whep_remote))
        .route(
            "/session/{id}",
            axum::routing::delete(delete_session).patch(patch_session),
        )
        .route("/healthz", get(healthz))
        .route("/api/streams", get(api_streams))
        .route("/api/trunks", get(api_trunks))
        .route("/api/incidents", get(api_incidents))
        .route("/api/incidents/{id}/log", get(api_incident_log))
        .route("/api/units", get(api_units))
        .route("/api/orders", get(api_orders).post(api_orders_post))
        .route("/api/orders/{id}/answer", post(api_order_answer))
        .route(
            "/api/attachments",
            // Not bounded by `max_body`: the handler streams and counts up to its own limit.
            post(api_attachments_post).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/attachments/{sha256}", get(api_attachment_get))
        .route("/api/wall/config", get(wall_config))
        .route("/api/openapi.json", get(openapi))
        .route("/ws", get(ws));
    if state.metrics_here {
        r = r.route("/metrics", get(metrics));
    }
    r.fallback(static_file)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::Extension(BodyLimit(max_body)))
        .layer(axum::middleware::from_fn(cors))
        .with_state(state)
}

/// A router with only `/metrics`, for a separate metrics listener.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}
