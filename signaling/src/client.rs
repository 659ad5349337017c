//! The async client of `yiwang/1` over QUIC, for native clients (field-client, drone-bridge).
//!
//! What lives here: certificate pinning (the token's `fpr` claim), the handshake, request/reply
//! routing by id, the event stream with per-session sequence numbers, acknowledgements, and
//! reconnection with session resume. [`connect`] returns a [`Client`] handle (cheap to clone) and
//! the [`Events`] receiver; a background task owns the QUIC connection.
//!
//! What it must not touch: protocol decisions. Messages, framing and error codes come from
//! [`crate::proto`] unchanged; authorisation is the node's business ([`crate::core`]). This module
//! is the only part of the crate that does I/O and it is compiled only with the `client` feature
//! (on by default).
//!
//! Guarantees to the application:
//! - every event is delivered at most once and in `seq` order, across reconnects (replayed events
//!   already delivered are dropped), except that an event the node sends on its urgent lane (a
//!   `drone_command` to a drone bridge) may come before lower-numbered events still queued
//!   behind it, which follow; [`ClientEvent::Connected`] says `gap: true` when the node could
//!   not replay everything, and the application should then re-read state;
//! - a request is sent once: if the connection drops while it is in flight it fails with
//!   [`ClientError::Disconnected`] (the node may or may not have acted on it); a request made
//!   while disconnected waits for the next connection, all bounded by
//!   [`ClientConfig::request_timeout`];
//! - a closing error of the node (`revoked`, `unauthorized`, `session_closed`, …) ends the client
//!   with a final [`ClientEvent::Closed`]; any other loss of the connection is retried with
//!   exponential backoff and jitter, resuming the session.
//!
//! ```no_run
//! # async fn run() -> Result<(), signaling::client::ClientError> {
//! use signaling::client::{connect, load_token, ClientConfig, ClientEvent};
//! use signaling::proto::ClientMsg;
//!
//! let token = load_token(None, None)?; // YIWANG_TOKEN
//! let (client, mut events) = connect(ClientConfig::new("node.example:4433", token)).await?;
//! let incidents = client.request(ClientMsg::Incidents { id: 0 }).await?;
//! println!("{incidents}");
//! while let Some(ev) = events.next().await {
//!     match ev {
//!         ClientEvent::Event { seq, event } => println!("{seq}: {}", event.kind()),
//!         ClientEvent::Closed { reason, .. } => {
//!             eprintln!("session over: {reason}");
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::{ConnectionError, ReadError, VarInt, WriteError};
use rand::Rng as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn, Instrument as _};

use crate::auth::{decode_unverified, Role};
use crate::ids::{IncidentId, NodeId, Subject};
use crate::proto::{
    encode_frame, ClientMsg, ErrorCode, Event, FrameDecoder, MailItem, RequestId, Resume,
    ServerMsg, Welcome, ALPN, FRAME_HEADER, MAX_FRAME, MAX_SERVER_FRAME, VERSION,
};

/// The TLS server name the client asks for. The certificate is pinned by fingerprint, so the name
/// is not checked; it only has to be a valid DNS name.
pub const SERVER_NAME: &str = "localhost";

/// Environment variable [`load_token`] falls back to.
pub const TOKEN_ENV: &str = "YIWANG_TOKEN";

/// Acknowledge events at least every this many.
const ACK_EVERY: u64 = 64;
/// Acknowledge outstanding events, and forget abandoned requests, this often.
const TICK: Duration = Duration::from_secs(1);
/// How long to wait for the node's close after `bye`, or for the close code after the node ends
/// the control stream.
const SETTLE: Duration = Duration::from_secs(2);
/// Read buffer size.
const READ_CHUNK: usize = 16 * 1024;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A local I/O failure (binding the UDP socket, reading a token file).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The node's address could not be resolved.
    #[error("cannot resolve the node address: {0}")]
    Resolve(String),
    /// The TLS handshake failed; most often the node's certificate is not the one the token pins.
    #[error("TLS handshake with the node failed: {0}")]
    Tls(String),
    /// The QUIC connection could not be set up (unreachable, refused, timed out).
    #[error("cannot connect to the node: {0}")]
    Connect(String),
    /// The node refused the handshake (`unauthorized`, `revoked`, `unsupported_version`, …).
    #[error("the node refused the session ({code}): {message}")]
    Refused {
        /// The node's error code.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// The node answered the request with an error.
    #[error("{code}: {message}")]
    Remote {
        /// The node's error code.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// No answer within [`ClientConfig::request_timeout`] (including time spent reconnecting).
    #[error("no answer from the node in time")]
    Timeout,
    /// The connection was lost while the request was in flight (the node may have acted on it), or
    /// a message without reply was sent while disconnected.
    #[error("the connection to the node was lost")]
    Disconnected,
    /// The client is closed: [`Client::close`] was called or the node ended the session.
    #[error("the signaling session is closed")]
    Closed,
    /// The token is missing, unreadable or malformed, or its `fpr` is not a SHA-256 digest.
    #[error("bad token: {0}")]
    BadToken(String),
    /// The message cannot be sent this way (e.g. `hello` or `bye`, a request given to
    /// [`Client::send`], or a message over [`MAX_FRAME`]).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A [`ClientConfig`] value is out of range.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// The node sent something that breaks the protocol.
    #[error("protocol violation by the node: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The node's error code, for [`ClientError::Refused`] and [`ClientError::Remote`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } | ClientError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Client settings. [`ClientConfig::new`] fills in the defaults documented on each field.
/// `Debug` leaves the token out.
#[derive(Clone)]
pub struct ClientConfig {
    /// The node, `HOST:PORT` (resolved with `tokio::net::lookup_host` on every (re)connect).
    pub node: String,
    /// The bearer token; its `fpr` claim pins the node's certificate.
    pub token: String,
    /// QUIC idle timeout: a connection silent this long is dead. Default 5 s.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (must be below `idle_timeout`). Default 1 s.
    pub keep_alive: Duration,
    /// First reconnect delay. Default 200 ms.
    pub backoff_min: Duration,
    /// Largest reconnect delay. Default 5 s.
    pub backoff_max: Duration,
    /// Bound of the handshake and of every request, including time spent waiting for a
    /// reconnect. Default 10 s.
    pub request_timeout: Duration,
    /// Local UDP address to bind; default: the unspecified address of the node's family, port 0.
    pub bind: Option<SocketAddr>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a bearer credential: never print it.
        f.debug_struct("ClientConfig")
            .field("node", &self.node)
            .field("token", &"<redacted>")
            .field("idle_timeout", &self.idle_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("request_timeout", &self.request_timeout)
            .field("bind", &self.bind)
            .finish()
    }
}

impl ClientConfig {
    /// A configuration with the default timings.
    pub fn new(node: impl Into<String>, token: impl Into<String>) -> Self {
        ClientConfig {
            node: node.into(),
            token: token.into(),
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            bind: None,
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        let bad = |m: &str| Err(ClientError::InvalidConfig(m.to_owned()));
        if self.idle_timeout.is_zero()
            || self.keep_alive.is_zero()
            || self.request_timeout.is_zero()
        {
            return bad("idle_timeout, keep_alive and request_timeout must be positive");
        }
        if self.keep_alive >= self.idle_timeout {
            return bad("keep_alive must be shorter than idle_timeout");
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return bad("backoff_min must be positive and at most backoff_max");
        }
        Ok(())
    }
}

/// The session as of the latest `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session id (what a resume names).
    pub session: String,
    /// The token's subject.
    pub subject: Subject,
    /// The token's role.
    pub role: Role,
    /// The node's id.
    pub node: NodeId,
    /// Incidents the session was in at the latest `welcome` (joins and leaves since then arrive as
    /// events).
    pub incidents: Vec<IncidentId>,
    /// Whether the latest `welcome` resumed an earlier session.
    pub resumed: bool,
    /// Whether a connection is up now.
    pub connected: bool,
}

impl SessionInfo {
    fn from_welcome(w: &Welcome) -> Self {
        SessionInfo {
            session: w.session.clone(),
            subject: w.subject.clone(),
            role: w.role,
            node: w.node.clone(),
            incidents: w.incidents.clone(),
            resumed: w.resumed,
            connected: true,
        }
    }
}

/// Events delivered ahead of a missing lower `seq` before the client stops waiting for it.
const MAX_AHEAD: usize = 4096;

/// Request id the client uses for its own `mail_sync` (applications' ids never reach it).
const MAIL_SYNC_ID: RequestId = u64::MAX;

/// What the client tells the application, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A stored office message for this subject (chat, order, order state, SOS, receipt).
    /// Delivered once per client, in mailbox order, across reconnects and node restarts; the
    /// client acknowledges it to the node when it hands it over.
    Mail {
        /// Position in the subject's mailbox.
        seq: u64,
        /// The item.
        item: MailItem,
    },
    /// An event of the session (`seq` strictly increasing, never delivered twice).
    Event {
        /// Per-session sequence number.
        seq: u64,
        /// The event ([`Event::Unknown`] for a kind this version does not know).
        event: Event,
    },
    /// A connection is up and the session is (re)established; the first event of every client.
    Connected {
        /// The session was resumed (false on the first connection, or when the node no longer
        /// had the session and started a new one).
        resumed: bool,
        /// Events were lost while disconnected (the node could not replay them all, or the session
        /// is new after a failed resume): re-read state (units, catalog, log).
        gap: bool,
    },
    /// The connection was lost; the client is reconnecting.
    Disconnected {
        /// What happened.
        reason: String,
    },
    /// The client has stopped for good; the last event.
    Closed {
        /// The node's closing error code (`revoked`, `session_closed`, …), or `None` when the
        /// application closed the client.
        code: Option<ErrorCode>,
        /// Why.
        reason: String,
    },
}

/// The receiving end of a client's [`ClientEvent`]s. Keep draining it: it is unbounded, so that a
/// slow application never stalls request replies.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` after [`ClientEvent::Closed`] has been delivered.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// The next event if one is already waiting.
    pub fn try_next(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }
}

/// Reads the bearer token: `token` if given, else the file `token_file` (trimmed), else the
/// environment variable [`TOKEN_ENV`]. The token's structure is checked (not its signature: the
/// node does that).
pub fn load_token(token: Option<String>, token_file: Option<&Path>) -> Result<String, ClientError> {
    let (token, source) = if let Some(t) = token {
        (t, "the token given".to_owned())
    } else if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::BadToken(format!("cannot read token file {}: {e}", path.display()))
        })?;
        (text, format!("token file {}", path.display()))
    } else {
        match std::env::var(TOKEN_ENV) {
            Ok(t) => (t, format!("${TOKEN_ENV}")),
            Err(std::env::VarError::NotPresent) => {
                return Err(ClientError::BadToken(format!(
                    "no token: give one explicitly, as a token file, or in ${TOKEN_ENV}"
                )))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ClientError::BadToken(format!(
                    "${TOKEN_ENV} is not valid UTF-8"
                )))
            }
        }
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(ClientError::BadToken(format!("{source} is empty")));
    }
    decode_unverified(token).map_err(|e| ClientError::BadToken(format!("{source}: {e}")))?;
    Ok(token.to_owned())
}

/// Parses the token's `fpr` claim into a SHA-256 digest.
fn pinned_fingerprint(token: &str) -> Result<[u8; 32], ClientError> {
    let claims = decode_unverified(token).map_err(|e| ClientError::BadToken(e.to_string()))?;
    let bytes = hex::decode(&claims.fpr)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            ClientError::BadToken("the fpr claim is not a hex SHA-256 digest".to_owned())
        })?;
    let mut fpr = [0u8; 32];
    fpr.copy_from_slice(&bytes);
    Ok(fpr)
}

/// Accepts exactly the certificate whose SHA-256 is the pinned fingerprint (whatever its names
/// and dates), and checks that the server holds its key (TLS 1.3 handshake signature).
#[derive(Debug)]
struct PinnedCert {
    fpr: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

#[derive(Debug, thiserror::Error)]
#[error("the node's certificate is not the one the token pins (fpr {expected}, got {got})")]
struct FingerprintMismatch {
    expected: String,
    got: String,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.fpr {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    FingerprintMismatch {
                        expected: hex::encode(self.fpr),
                        got: hex::encode(got),
                    },
                ))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled, so this is never reached; refuse rather than trust.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The quinn client configuration [`connect`] uses for `cfg`: TLS 1.3, the certificate pinned by
/// the token's `fpr`, ALPN `yiwang/1`, `cfg`'s idle timeout and keep-alive. For tools that speak
/// the protocol on their own (load generators, conformance tests).
pub fn pinned_quic_config(cfg: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    cfg.validate()?;
    quic_config(cfg, pinned_fingerprint(&cfg.token)?)
}

/// The QUIC client configuration: TLS 1.3 with the ring provider, the pinned certificate, ALPN
/// `yiwang/1`, and the configured idle timeout and keep-alive.
fn quic_config(cfg: &ClientConfig, fpr: [u8; 32]) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedCert {
        fpr,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
        .map_err(|_| ClientError::InvalidConfig("idle_timeout is too large".to_owned()))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(cfg.keep_alive));
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    quic.transport_config(Arc::new(transport));
    Ok(quic)
}

/// Resolves `node`, preferring an address the endpoint bound at `local` can reach.
async fn resolve(node: &str, local: Option<SocketAddr>) -> Result<SocketAddr, ClientError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(node)
        .await
        .map_err(|e| ClientError::Resolve(format!("{node}: {e}")))?
        .collect();
    let usable = |a: &&SocketAddr| match local {
        Some(l) if l.is_ipv4() => a.is_ipv4(),
        _ => true,
    };
    addrs
        .iter()
        .find(usable)
        .copied()
        .ok_or_else(|| ClientError::Resolve(format!("{node}: no usable address")))
}

/// The error code a closing QUIC application code stands for (the inverse of
/// [`ErrorCode::close_code`] for the closing codes).
fn code_from_close(code: u64) -> Option<ErrorCode> {
    [
        ErrorCode::UnsupportedVersion,
        ErrorCode::BadHello,
        ErrorCode::Unauthorized,
        ErrorCode::Revoked,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::SessionClosed,
        ErrorCode::TooSlow,
        ErrorCode::Idle,
        ErrorCode::TooManySessions,
    ]
    .into_iter()
    .find(|c| u64::from(c.close_code()) == code)
}

/// Errors after which reconnecting is pointless: the session (or the token) is over.
fn is_final(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Revoked
            | ErrorCode::Unauthorized
            | ErrorCode::SessionClosed
            | ErrorCode::BadHello
            | ErrorCode::UnsupportedVersion
    )
}

fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// A connection failure during the handshake, as a client error.
fn handshake_error(e: ConnectionError) -> ClientError {
    match &e {
        ConnectionError::ApplicationClosed(ac) => match code_from_close(ac.error_code.into_inner())
        {
            Some(code) => ClientError::Refused {
                code,
                message: String::from_utf8_lossy(&ac.reason).into_owned(),
            },
            None => ClientError::Connect(e.to_string()),
        },
        ConnectionError::TransportError(t) if is_crypto(t.code) => ClientError::Tls(e.to_string()),
        ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => {
            ClientError::Tls(e.to_string())
        }
        _ => ClientError::Connect(e.to_string()),
    }
}

/// Encodes `msg` as a frame, refusing one the node would refuse for size.
fn frame_of(msg: &ClientMsg) -> Result<Vec<u8>, ClientError> {
    let frame = encode_frame(msg);
    if frame.len() - FRAME_HEADER > MAX_FRAME {
        return Err(ClientError::InvalidMessage(format!(
            "{} message of {} bytes exceeds the {MAX_FRAME}-byte limit",
            msg.kind(),
            frame.len() - FRAME_HEADER
        )));
    }
    Ok(frame)
}

type Reply = oneshot::Sender<Result<Value, ClientError>>;

enum Command {
    /// A request frame with id `id`; the reply goes to `reply`.
    Request {
        id: RequestId,
        frame: Vec<u8>,
        reply: Reply,
    },
    /// A frame without reply.
    Send(Vec<u8>),
    /// Say `bye` and stop; signal when done.
    Close(oneshot::Sender<()>),
}

struct Shared {
    cmd: mpsc::UnboundedSender<Command>,
    info: Arc<Mutex<SessionInfo>>,
    next_id: AtomicU64,
    endpoint: quinn::Endpoint,
    request_timeout: Duration,
}

/// A handle on the signaling session. Clones share the session; when the last one is dropped the
/// session is ended (`bye`).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.session())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Sends a request and returns the `data` of its result. The `id` inside `msg` is replaced by a
    /// fresh one. Waits for a connection if there is none, then for the reply, in all at most
    /// [`ClientConfig::request_timeout`].
    ///
    /// Errors: [`ClientError::Remote`] when the node answers with an error,
    /// [`ClientError::Disconnected`] when the connection drops while the request is in flight,
    /// [`ClientError::Timeout`], [`ClientError::Closed`], and [`ClientError::InvalidMessage`] for
    /// messages without a reply (`hello`, `ack`, `bye`).
    pub async fn request(&self, mut msg: ClientMsg) -> Result<Value, ClientError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        if !msg.set_id(id) {
            return Err(ClientError::InvalidMessage(match msg {
                ClientMsg::Hello { .. } => "hello is sent by the client itself".to_owned(),
                ClientMsg::Bye => "use Client::close to say bye".to_owned(),
                other => format!("{} has no reply; use Client::send", other.kind()),
            }));
        }
        let frame = frame_of(&msg)?;
        let (reply, rx) = oneshot::channel();
        self.shared
            .cmd
            .send(Command::Request { id, frame, reply })
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.shared.request_timeout, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(result)) => result,
        }
    }

    /// Like [`request`](Self::request), but for store-and-forward messages that carry a
    /// `msg_id` (`chat`, `order`, `order_answer`, `sos`): retried until the node acknowledges
    /// it, across disconnections and timeouts, with the same `msg_id` — so it is stored exactly
    /// once however often it is sent. Ends only with the node's answer or
    /// [`ClientError::Closed`]. Messages without a `msg_id` are refused
    /// ([`ClientError::InvalidMessage`]): a retry could duplicate them.
    pub async fn deliver(&self, msg: ClientMsg) -> Result<Value, ClientError> {
        let has_id = matches!(
            &msg,
            ClientMsg::Chat {
                msg_id: Some(_),
                ..
            } | ClientMsg::Order {
                msg_id: Some(_),
                ..
            } | ClientMsg::OrderAnswer {
                msg_id: Some(_),
                ..
            } | ClientMsg::Sos {
                msg_id: Some(_),
                ..
            }
        );
        if !has_id {
            return Err(ClientError::InvalidMessage(format!(
                "{} needs a msg_id to be delivered with retries",
                msg.kind()
            )));
        }
        loop {
            match self.request(msg.clone()).await {
                Err(ClientError::Disconnected | ClientError::Timeout) => continue,
                Err(ClientError::Remote {
                    code: ErrorCode::RateLimited,
                    ..
                }) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    /// Sends a message that has no reply: `position` (its `id` is removed), `ack`, or a drone
    /// bridge's `telemetry`, `drone_link` and `drone_command_ack`. Best effort:
    /// refused with [`ClientError::Disconnected`] while there is no connection (a stale position is
    /// worth nothing after a reconnect), and lost if the connection drops before it is written.
    pub fn send(&self, mut msg: ClientMsg) -> Result<(), ClientError> {
        match &mut msg {
            ClientMsg::Position { id, .. } => *id = None,
            ClientMsg::Ack { .. }
            | ClientMsg::Telemetry { .. }
            | ClientMsg::DroneLink { .. }
            | ClientMsg::DroneCommandAck { .. } => {}
            ClientMsg::Hello { .. } => {
                return Err(ClientError::InvalidMessage(
                    "hello is sent by the client itself".to_owned(),
                ))
            }
            ClientMsg::Bye => {
                return Err(ClientError::InvalidMessage(
                    "use Client::close to say bye".to_owned(),
                ))
            }
            other => {
                return Err(ClientError::InvalidMessage(format!(
                    "{} has a reply; use Client::request",
                    other.kind()
                )))
            }
        }
        if !self.session().connected {
            return Err(ClientError::Disconnected);
        }
        let frame = frame_of(&msg)?;
        self.shared
            .cmd
            .send(Command::Send(frame))
            .map_err(|_| ClientError::Closed)
    }

    /// The session as of the latest `welcome`, and whether a connection is up.
    pub fn session(&self) -> SessionInfo {
        self.shared
            .info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Moves the QUIC endpoint to `socket` (e.g. after the device changed networks). The
    /// connection migrates: the session continues on the same connection, no resume needed.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> io::Result<()> {
        self.shared.endpoint.rebind(socket)
    }

    /// Ends the session: sends `bye`, waits (briefly) for the node to close, and stops the client.
    /// [`ClientEvent::Closed`] with `code: None` is the last event. Requests still waiting fail
    /// with [`ClientError::Closed`]. Does nothing if the client is already closed. While
    /// disconnected no `bye` can be sent: the client just stops and the node lets the detached
    /// session expire after its resume grace period.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.shared.cmd.send(Command::Close(done)).is_ok() {
            // The task bounds its own wait; this only guards against a task that is gone.
            let _ = tokio::time::timeout(self.shared.request_timeout + SETTLE, rx).await;
        }
    }
}

/// The control stream of one live connection.
struct Link {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// May already hold frames that followed the `welcome` (replayed events).
    decoder: FrameDecoder,
    welcome: Welcome,
}

/// Connects to `node`, sends `hello` and waits for `welcome`. Not bounded: the caller is.
async fn handshake(
    endpoint: &quinn::Endpoint,
    node: &str,
    quic: quinn::ClientConfig,
    hello: &ClientMsg,
) -> Result<Link, ClientError> {
    let addr = resolve(node, endpoint.local_addr().ok()).await?;
    let conn = endpoint
        .connect_with(quic, addr, SERVER_NAME)
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .await
        .map_err(handshake_error)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(handshake_error)?;
    send.write_all(&encode_frame(hello))
        .await
        .map_err(|e| match e {
            WriteError::ConnectionLost(c) => handshake_error(c),
            other => ClientError::Connect(other.to_string()),
        })?;
    let mut decoder = FrameDecoder::with_max(MAX_SERVER_FRAME);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let frame = decoder
            .next_frame()
            .map_err(|e| ClientError::Protocol(e.to_proto().message))?;
        if let Some(frame) = frame {
            let msg: ServerMsg = serde_json::from_slice(&frame)
                .map_err(|e| ClientError::Protocol(format!("unreadable answer to hello: {e}")))?;
            return match msg {
                ServerMsg::Welcome(welcome) => Ok(Link {
                    conn,
                    send,
                    recv,
                    decoder,
                    welcome,
                }),
                ServerMsg::Error { code, message, .. } => {
                    conn.close(VarInt::from_u32(0), b"refused");
                    Err(ClientError::Refused { code, message })
                }
                _ => {
                    conn.close(VarInt::from_u32(0), b"protocol");
                    Err(ClientError::Protocol(
                        "the answer to hello was not welcome".to_owned(),
                    ))
                }
            };
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => decoder.push(&buf[..n]),
            Ok(None) => {
                // The node ended the stream: its close code says why.
                return Err(match tokio::time::timeout(SETTLE, conn.closed()).await {
                    Ok(e) => handshake_error(e),
                    Err(_) => ClientError::Protocol(
                        "the node ended the stream without welcome".to_owned(),
                    ),
                });
            }
            Err(ReadError::ConnectionLost(e)) => return Err(handshake_error(e)),
            Err(e) => return Err(ClientError::Connect(e.to_string())),
        }
    }
}

/// Starts a session: resolves `cfg.node`, binds a QUIC endpoint, connects with the pinned
/// certificate, sends `hello` and waits for `welcome`, all within `cfg.request_timeout`. The first
/// event is [`ClientEvent::Connected`].
///
/// Errors: [`ClientError::BadToken`] (no usable `fpr`), [`ClientError::Resolve`],
/// [`ClientError::Io`] (bind), [`ClientError::Tls`] (wrong certificate), [`ClientError::Connect`],
/// [`ClientError::Refused`] (the node's `error`), [`ClientError::Timeout`].
pub async fn connect(cfg: ClientConfig) -> Result<(Client, Events), ClientError> {
    cfg.validate()?;
    let fpr = pinned_fingerprint(&cfg.token)?;
    let quic = quic_config(&cfg, fpr)?;
    let hello = ClientMsg::Hello {
        v: VERSION,
        token: cfg.token.clone(),
        resume: None,
    };
    let (endpoint, link) = tokio::time::timeout(cfg.request_timeout, async {
        let addr = resolve(&cfg.node, None).await?;
        let bind = cfg.bind.unwrap_or(match addr {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        });
        let endpoint = quinn::Endpoint::client(bind)?;
        let link = handshake(&endpoint, &cfg.node, quic.clone(), &hello).await?;
        Ok::<_, ClientError>((endpoint, link))
    })
    .await
    .map_err(|_| ClientError::Timeout)??;

    let info = Arc::new(Mutex::new(SessionInfo::from_welcome(&link.welcome)));
    let (cmd, cmd_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let span = tracing::debug_span!("signaling_client", subject = %link.welcome.subject);
    let shared = Arc::new(Shared {
        cmd,
        info: info.clone(),
        next_id: AtomicU64::new(1),
        endpoint: endpoint.clone(),
        request_timeout: cfg.request_timeout,
    });
    let mut task = Task {
        cfg,
        quic,
        endpoint,
        info,
        cmd_rx,
        events: events_tx,
        session: String::new(),
        last_seq: 0,
        ahead: BTreeSet::new(),
        skip_gap: false,
        acked: 0,
        mail_last: None,
        mail_acked: 0,
        mail_more: false,
        pending: HashMap::new(),
        queued: VecDeque::new(),
    };
    task.on_welcome(&link.welcome, false);
    tokio::spawn(task.run(link).instrument(span));
    Ok((Client { shared }, Events { rx: events_rx }))
}

/// Why a connection's loop ended.
enum End {
    /// The connection is gone; reconnect.
    Lost(String),
    /// The node ended the session for good.
    Closed { code: ErrorCode, reason: String },
    /// The application closed the client (`Some`), or dropped every handle (`None`).
    Stop(Option<oneshot::Sender<()>>),
}

fn end_from(e: ConnectionError) -> End {
    match &e {
        ConnectionError::ApplicationClosed(ac) => match code_from_close(ac.error_code.into_inner())
        {
            Some(code) if is_final(code) => End::Closed {
                code,
                reason: String::from_utf8_lossy(&ac.reason).into_owned(),
            },
            _ => End::Lost(e.to_string()),
        },
        ConnectionError::TimedOut => {
            End::Lost("no sign of life from the node (idle timeout)".to_owned())
        }
        _ => End::Lost(e.to_string()),
    }
}

fn write_end(e: WriteError) -> End {
    match e {
        WriteError::ConnectionLost(c) => end_from(c),
        other => End::Lost(format!("control stream: {other}")),
    }
}

/// The background task: owns the connection, reconnects, and keeps the event order.
struct Task {
    cfg: ClientConfig,
    quic: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    info: Arc<Mutex<SessionInfo>>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<ClientEvent>,
    /// Current session id.
    session: String,
    /// Every event up to this `seq` has been delivered.
    last_seq: u64,
    /// Events above `last_seq + 1` already delivered (urgent events overtake queued ones).
    ahead: BTreeSet<u64>,
    /// The node could not replay everything: the next event starts the numbering afresh.
    skip_gap: bool,
    /// Highest `seq` acknowledged to the node.
    acked: u64,
    /// Highest mailbox `seq` delivered to the application (`None`: nothing yet; the first sync
    /// then starts from the node's acknowledged position).
    mail_last: Option<u64>,
    /// Highest mailbox `seq` acknowledged to the node.
    mail_acked: u64,
    /// The node said a `mail_sync` reply did not hold everything: ask again.
    mail_more: bool,
    /// Requests written on the current connection, by id.
    pending: HashMap<RequestId, Reply>,
    /// Requests made while disconnected, sent after the next `welcome`.
    queued: VecDeque<(RequestId, Vec<u8>, Reply)>,
}

impl Task {
    fn emit(&self, ev: ClientEvent) {
        // The application may have dropped `Events`; nothing to do then.
        let _ = self.events.send(ev);
    }

    fn set_connected(&self, connected: bool) {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connected = connected;
    }

    /// Adopts a `welcome`: a new session restarts the event numbering.
    fn on_welcome(&mut self, w: &Welcome, asked_resume: bool) {
        let continued = w.resumed && w.session == self.session;
        if !continued {
            self.last_seq = 0;
            self.acked = 0;
        }
        self.ahead.clear();
        self.skip_gap = continued && w.gap;
        let gap = w.gap || (asked_resume && !continued);
        self.session = w.session.clone();
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) = SessionInfo::from_welcome(w);
        debug!(
            resumed = w.resumed,
            gap,
            last = w.last,
            "session established"
        );
        self.emit(ClientEvent::Connected {
            resumed: w.resumed,
            gap,
        });
    }

    async fn run(mut self, mut link: Link) {
        loop {
            let end = self.drive(&mut link).await;
            match end {
                End::Lost(reason) => {
                    link.conn.close(VarInt::from_u32(0), b"lost");
                    self.set_connected(false);
                    for (_, reply) in self.pending.drain() {
                        let _ = reply.send(Err(ClientError::Disconnected));
                    }
                    debug!(%reason, "connection lost; reconnecting");
                    self.emit(ClientEvent::Disconnected { reason });
                }
                End::Closed { code, reason } => {
                    debug!(%code, %reason, "the node ended the session");
                    link.conn.close(VarInt::from_u32(0), b"");
                    self.finish(Some(code), reason);
                    return;
                }
                End::Stop(done) => {
                    self.bye(&mut link).await;
                    self.finish(None, "closed by the client".to_owned());
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
            match self.reconnect().await {
                Some(new) => {
                    link = new;
                    let welcome = link.welcome.clone();
                    self.on_welcome(&welcome, true);
                }
                None => return,
            }
        }
    }

    /// Ends the task: fails what is waiting and delivers the final event.
    fn finish(&mut self, code: Option<ErrorCode>, reason: String) {
        self.set_connected(false);
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(ClientError::Closed));
        }
        for (_, _, reply) in self.queued.drain(..) {
            let _ = reply.send(Err(ClientError::Closed));
        }
        self.emit(ClientEvent::Closed { code, reason });
    }

    /// Says `bye` and waits (bounded) for the node to close the connection, so the `bye` is not
    /// discarded by our own close.
    async fn bye(&mut self, link: &mut Link) {
        let wait = self.cfg.request_timeout.min(SETTLE);
        let _ = tokio::time::timeout(wait, async {
            if link
                .send
                .write_all(&encode_frame(&ClientMsg::Bye))
                .await
                .is_ok()
            {
                let _ = link.send.finish();
                link.conn.closed().await;
            }
        })
        .await;
        link.conn.close(VarInt::from_u32(0), b"bye");
    }

    /// Runs one connection until it ends.
    async fn drive(&mut self, link: &mut Link) -> End {
        // Catch up on the mailbox first: everything after what was delivered (or acknowledged).
        let sync = encode_frame(&ClientMsg::MailSync {
            id: MAIL_SYNC_ID,
            after: self.mail_last,
        });
        if let Err(e) = link.send.write_all(&sync).await {
            return write_end(e);
        }
        while let Some((id, frame, reply)) = self.queued.pop_front() {
            if let Err(end) = self.write_request(link, id, frame, reply).await {
                return end;
            }
        }
        if let Some(end) = self.drain(link) {
            return end;
        }
        if let Err(end) = self.ack(link, false).await {
            return end;
        }
        let mut buf = vec![0u8; READ_CHUNK];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                read = link.recv.read(&mut buf) => match read {
                    Ok(Some(n)) => {
                        link.decoder.push(&buf[..n]);
                        if let Some(end) = self.drain(link) {
                            return end;
                        }
                        if let Err(end) = self.ack(link, false).await {
                            return end;
                        }
                    }
                    Ok(None) => return Self::settle(&link.conn, "the node ended the control stream").await,
                    Err(ReadError::ConnectionLost(e)) => return end_from(e),
                    Err(e) => return Self::settle(&link.conn, &format!("control stream: {e}")).await,
                },
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return End::Stop(None),
                    Some(Command::Close(done)) => return End::Stop(Some(done)),
                    Some(Command::Request { id, frame, reply }) => {
                        if let Err(end) = self.write_request(link, id, frame, reply).await {
                            return end;
                        }
                    }
                    Some(Command::Send(frame)) => {
                        if let Err(e) = link.send.write_all(&frame).await {
                            return write_end(e);
                        }
                    }
                },
                _ = tick.tick() => {
                    // Forget requests whose caller gave up (timed out) and got no reply.
                    self.pending.retain(|_, reply| !reply.is_closed());
                    if let Err(end) = self.ack(link, true).await {
                        return end;
                    }
                }
            }
        }
    }

    /// The control stream ended without a connection error: wait briefly for the close code.
    async fn settle(conn: &quinn::Connection, what: &str) -> End {
        match tokio::time::timeout(SETTLE, conn.closed()).await {
            Ok(e) => end_from(e),
            Err(_) => End::Lost(what.to_owned()),
        }
    }

    async fn write_request(
        &mut self,
        link: &mut Link,
        id: RequestId,
        frame: Vec<u8>,
        reply: Reply,
    ) -> Result<(), End> {
        if reply.is_closed() {
            return Ok(()); // the caller timed out while we were disconnected
        }
        self.pending.insert(id, reply);
        link.send.write_all(&frame).await.map_err(write_end)
    }

    /// Acknowledges delivered events: every [`ACK_EVERY`], or any outstanding on a tick; and
    /// mailbox entries at once (the node marks orders delivered on it).
    async fn ack(&mut self, link: &mut Link, tick: bool) -> Result<(), End> {
        if std::mem::take(&mut self.mail_more) {
            let sync = encode_frame(&ClientMsg::MailSync {
                id: MAIL_SYNC_ID,
                after: self.mail_last,
            });
            link.send.write_all(&sync).await.map_err(write_end)?;
        }
        if let Some(last) = self.mail_last.filter(|l| *l > self.mail_acked) {
            let frame = encode_frame(&ClientMsg::MailAck { upto: last });
            link.send.write_all(&frame).await.map_err(write_end)?;
            self.mail_acked = last;
        }
        let outstanding = self.last_seq.saturating_sub(self.acked);
        if outstanding == 0 || (!tick && outstanding < ACK_EVERY) {
            return Ok(());
        }
        let frame = encode_frame(&ClientMsg::Ack {
            after: self.last_seq,
        });
        link.send.write_all(&frame).await.map_err(write_end)?;
        self.acked = self.last_seq;
        Ok(())
    }

    /// Handles every complete frame in the decoder.
    fn drain(&mut self, link: &mut Link) -> Option<End> {
        loop {
            let frame = match link.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    return Some(End::Lost(format!(
                        "unusable frame stream: {}",
                        e.to_proto().message
                    )))
                }
            };
            let msg: ServerMsg = match serde_json::from_slice(&frame) {
                Ok(m) => m,
                Err(e) => {
                    // A newer node may send message types this client does not know.
                    warn!(%e, "ignoring a message this client does not understand");
                    continue;
                }
            };
            match msg {
                ServerMsg::Result {
                    re: MAIL_SYNC_ID,
                    data,
                } => self.mail_more = data["more"] == true,
                ServerMsg::Error {
                    re: Some(MAIL_SYNC_ID),
                    code,
                    message,
                } => {
                    warn!(%code, %message, "mailbox sync refused");
                }
                ServerMsg::Mail { seq, item } => {
                    if self.mail_last.is_some_and(|l| seq <= l) {
                        trace!(seq, "mail already delivered");
                        continue;
                    }
                    self.mail_last = Some(seq);
                    self.emit(ClientEvent::Mail { seq, item });
                }
                ServerMsg::Result { re, data } => match self.pending.remove(&re) {
                    Some(reply) => {
                        let _ = reply.send(Ok(data));
                    }
                    None => debug!(re, "result of an abandoned request"),
                },
                ServerMsg::Error { re, code, message } => {
                    match re.and_then(|re| self.pending.remove(&re)) {
                        Some(reply) => {
                            let _ = reply.send(Err(ClientError::Remote {
                                code,
                                message: message.clone(),
                            }));
                        }
                        None if !is_final(code) => warn!(%code, %message, "error from the node"),
                        None => {}
                    }
                    if is_final(code) {
                        return Some(End::Closed {
                            code,
                            reason: message,
                        });
                    }
                }
                ServerMsg::Event { seq, event } => {
                    if std::mem::take(&mut self.skip_gap) && seq > self.last_seq + 1 {
                        debug!(
                            from = self.last_seq + 1,
                            to = seq - 1,
                            "events lost in a gap"
                        );
                        self.last_seq = seq - 1;
                    }
                    if seq <= self.last_seq || self.ahead.contains(&seq) {
                        trace!(seq, "replayed event already delivered");
                        continue;
                    }
                    if seq == self.last_seq + 1 {
                        self.last_seq = seq;
                        while self.ahead.remove(&(self.last_seq + 1)) {
                            self.last_seq += 1;
                        }
                    } else {
                        // An urgent event overtook queued ones; they follow.
                        self.ahead.insert(seq);
                        if self.ahead.len() > MAX_AHEAD {
                            warn!(
                                expected = self.last_seq + 1,
                                seq, "events missing from the node's stream"
                            );
                            self.last_seq = self.ahead.pop_first().unwrap_or(seq);
                            while self.ahead.remove(&(self.last_seq + 1)) {
                                self.last_seq += 1;
                            }
                        }
                    }
                    self.emit(ClientEvent::Event { seq, event });
                }
                ServerMsg::Welcome(_) => warn!("ignoring a second welcome"),
            }
        }
    }

    /// Reconnects with backoff, resuming the session. `None` when the client must stop (the
    /// final event has then been delivered).
    async fn reconnect(&mut self) -> Option<Link> {
        let mut attempt: u32 = 0;
        loop {
            let delay = backoff(self.cfg.backoff_min, self.cfg.backoff_max, attempt);
            attempt = attempt.saturating_add(1);
            if let Err(stop) = self.wait(tokio::time::sleep(delay)).await {
                self.stopped(stop);
                return None;
            }
            let hello = ClientMsg::Hello {
                v: VERSION,
                token: self.cfg.token.clone(),
                resume: Some(Resume {
                    session: self.session.clone(),
                    after: self.last_seq,
                }),
            };
            let (endpoint, node, quic) = (
                self.endpoint.clone(),
                self.cfg.node.clone(),
                self.quic.clone(),
            );
            let limit = self.cfg.request_timeout;
            let attempt_fut = async move {
                tokio::time::timeout(limit, handshake(&endpoint, &node, quic, &hello))
                    .await
                    .unwrap_or(Err(ClientError::Timeout))
            };
            match self.wait(attempt_fut).await {
                Err(stop) => {
                    self.stopped(stop);
                    return None;
                }
                Ok(Ok(link)) => return Some(link),
                Ok(Err(ClientError::Refused { code, message })) if is_final(code) => {
                    debug!(%code, %message, "resume refused");
                    self.finish(Some(code), message);
                    return None;
                }
                Ok(Err(e)) => debug!(attempt, error = %e, "reconnect failed"),
            }
        }
    }

    fn stopped(&mut self, stop: Option<oneshot::Sender<()>>) {
        self.finish(None, "closed by the client".to_owned());
        if let Some(done) = stop {
            let _ = done.send(());
        }
    }

    /// Runs `fut` while disconnected, queueing requests meanwhile. `Err` when the application
    /// closes the client (or drops every handle).
    async fn wait<F: Future>(&mut self, fut: F) -> Result<F::Output, Option<oneshot::Sender<()>>> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return Err(None),
                    Some(Command::Close(done)) => return Err(Some(done)),
                    Some(Command::Request { id, frame, reply }) => self.queued.push_back((id, frame, reply)),
                    Some(Command::Send(_)) => debug!("message without reply dropped while disconnected"),
                },
            }
        }
    }
}

/// The delay before reconnect attempt `attempt` (0-based): `min · 2^attempt`, capped at `max`,
/// times a random factor in [0.5, 1], but never below `min`.
fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
        .max(min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{TokenIssuer, TokenRequest};
    use ed25519_dalek::SigningKey;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use serde_json::json;

    /// Bound of every wait in these tests.
    const T: Duration = Duration::from_secs(10);

    async fn within<F: Future>(what: &str, fut: F) -> F::Output {
        tokio::time::timeout(T, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// A node that speaks just enough `yiwang/1`, scripted step by step by each test.
    struct FakeNode {
        endpoint: quinn::Endpoint,
        fpr: String,
    }

    impl FakeNode {
        fn start() -> FakeNode {
            let ck = rcgen::generate_simple_self_signed(vec!["yiwang-node".to_owned()]).unwrap();
            let cert = ck.cert.der().clone();
            let fpr = hex::encode(Sha256::digest(cert.as_ref()));
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            tls.alpn_protocols = vec![ALPN.to_vec()];
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
            let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
            FakeNode { endpoint, fpr }
        }

        fn addr(&self) -> String {
            self.endpoint.local_addr().unwrap().to_string()
        }

        fn config(&self) -> ClientConfig {
            ClientConfig::new(self.addr(), token(&self.fpr))
        }

        /// Accepts the next connection and its control stream.
        async fn accept(&self) -> NodeConn {
            within("a connection", async {
                let conn = self
                    .endpoint
                    .accept()
                    .await
                    .expect("endpoint open")
                    .await
                    .unwrap();
                let (send, recv) = conn.accept_bi().await.unwrap();
                NodeConn {
                    conn,
                    send,
                    recv,
                    decoder: FrameDecoder::with_max(MAX_SERVER_FRAME),
                }
            })
            .await
        }

        /// Accepts a connection, checks its hello and welcomes it.
        async fn welcome(&self, session: &str, resumed: bool) -> (NodeConn, ClientMsg) {
            let mut c = self.accept().await;
            let hello = c.read().await;
            assert!(
                matches!(hello, ClientMsg::Hello { v: VERSION, .. }),
                "{hello:?}"
            );
            c.write(&welcome(session, resumed)).await;
            (c, hello)
        }
    }

    fn token(fpr: &str) -> String {
        let issuer = TokenIssuer::new(
            SigningKey::from_bytes(&[7; 32]),
            NodeId::parse("hq").unwrap(),
        );
        let req = TokenRequest::new(Subject::parse("off-1").unwrap(), Role::Officer, "hq", fpr);
        issuer.issue(&req, 1_800_000_000)
    }

    fn welcome(session: &str, resumed: bool) -> ServerMsg {
        ServerMsg::Welcome(Welcome {
            v: VERSION,
            session: session.to_owned(),
            node: NodeId::parse("hq").unwrap(),
            time: crate::time::UnixMs(1),
            subject: Subject::parse("off-1").unwrap(),
            role: Role::Officer,
            incidents: vec![IncidentId::parse("duty").unwrap()],
            resumed,
            gap: false,
            last: 0,
            mail_last: 0,
            mail_acked: 0,
        })
    }

    fn event(seq: u64) -> ServerMsg {
        // The event's `last_seen` carries its number, so a test can tell them apart.
        ServerMsg::Event {
            seq,
            event: Event::Presence {
                subject: Subject::parse("op-1").unwrap(),
                role: Role::Operator,
                online: true,
                last_seen: crate::time::UnixMs(seq),
            },
        }
    }

    /// The node's end of one connection.
    struct NodeConn {
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        decoder: FrameDecoder,
    }

    impl NodeConn {
        async fn read(&mut self) -> ClientMsg {
            within("a client message", async {
                let mut buf = [0u8; 4096];
                loop {
                    if let Some(f) = self.decoder.next_frame().unwrap() {
                        return crate::proto::decode_client(&f).unwrap();
                    }
                    let n = self
                        .recv
                        .read(&mut buf)
                        .await
                        .unwrap()
                        .expect("stream open");
                    self.decoder.push(&buf[..n]);
                }
            })
            .await
        }

        /// The next message that is not an `ack`.
        async fn read_request(&mut self) -> ClientMsg {
            loop {
                match self.read().await {
                    // The client's own bookkeeping, not the application's requests.
                    ClientMsg::Ack { .. }
                    | ClientMsg::MailSync { .. }
                    | ClientMsg::MailAck { .. } => continue,
                    m => return m,
                }
            }
        }

        async fn write(&mut self, msg: &ServerMsg) {
            self.send.write_all(&encode_frame(msg)).await.unwrap();
        }

        fn close(&self, code: u16, reason: &str) {
            self.conn
                .close(VarInt::from_u32(code.into()), reason.as_bytes());
        }
    }

    async fn next(events: &mut Events) -> ClientEvent {
        within("a client event", events.next())
            .await
            .expect("events open")
    }

    async fn expect_events(events: &mut Events, seqs: impl IntoIterator<Item = u64>) {
        for want in seqs {
            match next(events).await {
                ClientEvent::Event { seq, event } => {
                    assert_eq!(seq, want);
                    assert!(
                        matches!(event, Event::Presence { last_seen, .. } if last_seen.as_millis() == want),
                        "{event:?}"
                    );
                }
                other => panic!("expected event {want}, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn pinning_accepts_the_pinned_certificate() {
        let node = FakeNode::start();
        let (res, (c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (client, mut events) = res.unwrap();
        assert_eq!(
            next(&mut events).await,
            ClientEvent::Connected {
                resumed: false,
                gap: false
            }
        );
        let info = client.session();
        assert_eq!(info.session, "s1");
        assert_eq!(info.subject.as_str(), "off-1");
        assert_eq!(info.role, Role::Officer);
        assert_eq!(info.node.as_str(), "hq");
        assert!(info.connected && !info.resumed);
        // The ALPN was negotiated.
        let alpn = c
            .conn
            .handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap();
        assert_eq!(alpn.protocol.as_deref(), Some(ALPN));
        drop(c);
    }

    #[tokio::test]
    async fn pinning_rejects_another_certificate() {
        let node = FakeNode::start();
        let server = node.endpoint.clone();
        let accept = tokio::spawn(async move {
            if let Some(incoming) = server.accept().await {
                let _ = incoming.await; // fails: the client aborts the handshake
            }
        });
        let mut cfg = node.config();
        cfg.token = token(&hex::encode([0xab; 32]));
        let err = connect(cfg).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Tls(ref m) if m.contains("FingerprintMismatch")),
            "{err}"
        );
        within("the node's accept", accept).await.unwrap();

        // A token whose fpr is not a digest never reaches the network.
        let mut cfg = node.config();
        cfg.token = token("not-hex");
        assert!(matches!(connect(cfg).await, Err(ClientError::BadToken(_))));
    }

    #[tokio::test]
    async fn refusal_surfaces_as_refused() {
        let node = FakeNode::start();
        let refuse = async {
            let mut c = node.accept().await;
            let _ = c.read().await;
            c.write(&ServerMsg::Error {
                re: None,
                code: ErrorCode::Unauthorized,
                message: "token has expired".into(),
            })
            .await;
            let _ = c.send.finish();
            // Close only once the client has read the error (it closes on its side).
            c.conn.closed().await;
            c.close(ErrorCode::Unauthorized.close_code(), "token has expired");
        };
        let (res, ()) = tokio::join!(connect(node.config()), refuse);
        match res.unwrap_err() {
            ClientError::Refused { code, message } => {
                assert_eq!(code, ErrorCode::Unauthorized);
                assert_eq!(message, "token has expired");
            }
            other => panic!("{other:?}"),
        }

        // A close code without the error frame means the same.
        let refuse = async {
            let mut c = node.accept().await;
            let _ = c.read().await;
            c.close(
                ErrorCode::Revoked.close_code(),
                "this token has been revoked",
            );
            c
        };
        let (res, _c) = tokio::join!(connect(node.config()), refuse);
        let err = res.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Revoked), "{err}");
    }

    #[tokio::test]
    async fn requests_get_their_replies() {
        let node = FakeNode::start();
        let (res, (mut c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (client, _events) = res.unwrap();

        let serve = async {
            // Two requests in flight, answered in reverse order.
            let a = c.read_request().await;
            let b = c.read_request().await;
            for m in [b, a] {
                match m {
                    ClientMsg::Ping { id } => {
                        c.write(&ServerMsg::Result {
                            re: id,
                            data: json!({"time": 42}),
                        })
                        .await
                    }
                    ClientMsg::Join { id, .. } => {
                        c.write(&ServerMsg::Error {
                            re: Some(id),
                            code: ErrorCode::Forbidden,
                            message: "not a member of incident x".into(),
                        })
                        .await
                    }
                    other => panic!("{other:?}"),
                }
            }
        };
        let join = ClientMsg::Join {
            id: 0,
            incident: IncidentId::parse("x").unwrap(),
        };
        let (ping, joined, ()) = tokio::join!(
            client.request(ClientMsg::Ping { id: 0 }),
            client.request(join),
            serve
        );
        assert_eq!(ping.unwrap(), json!({"time": 42}));
        match joined.unwrap_err() {
            ClientError::Remote { code, message } => {
                assert_eq!(code, ErrorCode::Forbidden);
                assert!(message.contains("not a member"));
            }
            other => panic!("{other:?}"),
        }

        // Messages without reply go through `send`, and the API refuses mix-ups.
        let pos = crate::proto::Position {
            lat: 30.5,
            lon: 114.3,
            alt: None,
            accuracy: None,
            heading: None,
            speed: None,
            time: None,
        };
        client
            .send(ClientMsg::Position {
                id: Some(9),
                pos: pos.clone(),
            })
            .unwrap();
        assert_eq!(c.read().await, ClientMsg::Position { id: None, pos });
        assert!(matches!(
            client.send(ClientMsg::Ping { id: 1 }),
            Err(ClientError::InvalidMessage(_))
        ));
        assert!(matches!(
            client.request(ClientMsg::Bye).await,
            Err(ClientError::InvalidMessage(_))
        ));
        let huge = ClientMsg::Chat {
            id: 0,
            msg_id: None,
            to: None,
            incident: Some(IncidentId::parse("duty").unwrap()),
            text: "x".repeat(MAX_FRAME),
        };
        assert!(matches!(
            client.request(huge).await,
            Err(ClientError::InvalidMessage(_))
        ));
    }

    #[tokio::test]
    async fn events_arrive_in_order_and_are_acked() {
        let node = FakeNode::start();
        let (res, (mut c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (_client, mut events) = res.unwrap();
        for seq in 1..=100 {
            c.write(&event(seq)).await;
        }
        assert_eq!(
            next(&mut events).await,
            ClientEvent::Connected {
                resumed: false,
                gap: false
            }
        );
        expect_events(&mut events, 1..=100).await;
        // Acks: one after 64 events, the rest at the next tick.
        let mut acked = 0;
        while acked < 100 {
            match c.read().await {
                ClientMsg::Ack { after } => {
                    assert!(after > acked && after <= 100, "{after}");
                    acked = after;
                }
                ClientMsg::MailSync { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_urgent_event_may_overtake_and_the_overtaken_still_arrive_once() {
        let node = FakeNode::start();
        let (res, (mut c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (_client, mut events) = res.unwrap();
        // 3 and 6 came on the node's urgent lane, ahead of 2 and of 4..5; then a duplicate.
        for seq in [1, 3, 2, 6, 4, 5, 3, 7] {
            c.write(&event(seq)).await;
        }
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Connected { .. }
        ));
        expect_events(&mut events, [1, 3, 2, 6, 4, 5, 7]).await;
        // Acknowledged up to what is contiguous: everything.
        loop {
            match c.read().await {
                ClientMsg::Ack { after: 7 } => break,
                ClientMsg::Ack { after } => assert!(after < 7, "{after}"),
                ClientMsg::MailSync { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn reconnects_resumes_and_deduplicates() {
        let node = FakeNode::start();
        let (res, (mut c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (client, mut events) = res.unwrap();
        assert_eq!(
            next(&mut events).await,
            ClientEvent::Connected {
                resumed: false,
                gap: false
            }
        );
        for seq in 1..=5 {
            c.write(&event(seq)).await;
        }
        expect_events(&mut events, 1..=5).await;

        // A request in flight when the connection drops fails with Disconnected.
        let inflight = tokio::spawn({
            let client = client.clone();
            async move { client.request(ClientMsg::Ping { id: 0 }).await }
        });
        assert!(matches!(c.read_request().await, ClientMsg::Ping { .. }));
        c.close(0, "node restarting its socket");
        assert!(matches!(
            within("the ping", inflight).await.unwrap(),
            Err(ClientError::Disconnected)
        ));
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Disconnected { .. }
        ));
        assert!(!client.session().connected);

        // A request made while disconnected waits for the next connection.
        let waiting = tokio::spawn({
            let client = client.clone();
            async move { client.request(ClientMsg::Incidents { id: 0 }).await }
        });

        let (mut c2, hello) = node.welcome("s1", true).await;
        match hello {
            ClientMsg::Hello {
                resume: Some(r), ..
            } => assert_eq!(
                r,
                Resume {
                    session: "s1".into(),
                    after: 5
                }
            ),
            other => panic!("{other:?}"),
        }
        // The replay overlaps what the client has seen; new events follow.
        for seq in 3..=8 {
            c2.write(&event(seq)).await;
        }
        assert_eq!(
            next(&mut events).await,
            ClientEvent::Connected {
                resumed: true,
                gap: false
            }
        );
        expect_events(&mut events, 6..=8).await;
        match c2.read_request().await {
            ClientMsg::Incidents { id } => {
                c2.write(&ServerMsg::Result {
                    re: id,
                    data: json!({"incidents": []}),
                })
                .await
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            within("the queued request", waiting)
                .await
                .unwrap()
                .unwrap(),
            json!({"incidents": []})
        );
        // Late duplicates on the live connection are dropped as well.
        c2.write(&event(7)).await;
        c2.write(&event(9)).await;
        expect_events(&mut events, [9]).await;
        let info = client.session();
        assert!(info.connected && info.resumed);

        // The node lost the session: a new one starts, numbering restarts, and the gap is flagged.
        c2.close(0, "node restarted");
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Disconnected { .. }
        ));
        let (mut c3, _) = node.welcome("s2", false).await;
        c3.write(&event(1)).await;
        assert_eq!(
            next(&mut events).await,
            ClientEvent::Connected {
                resumed: false,
                gap: true
            }
        );
        expect_events(&mut events, [1]).await;
        assert_eq!(client.session().session, "s2");
    }

    #[tokio::test]
    async fn closing_errors_end_the_client() {
        let node = FakeNode::start();
        let (res, (mut c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (client, mut events) = res.unwrap();
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Connected { .. }
        ));
        c.write(&ServerMsg::Error {
            re: None,
            code: ErrorCode::Revoked,
            message: "this token has been revoked".into(),
        })
        .await;
        c.close(
            ErrorCode::Revoked.close_code(),
            "this token has been revoked",
        );
        match next(&mut events).await {
            ClientEvent::Closed { code, reason } => {
                assert_eq!(code, Some(ErrorCode::Revoked));
                assert_eq!(reason, "this token has been revoked");
            }
            other => panic!("{other:?}"),
        }
        // The task is gone: no reconnect, the stream ends, requests fail at once.
        assert_eq!(within("the end of events", events.next()).await, None);
        assert!(matches!(
            client.request(ClientMsg::Ping { id: 0 }).await,
            Err(ClientError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_refused_resume_ends_the_client() {
        let node = FakeNode::start();
        let (res, (c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (_client, mut events) = res.unwrap();
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Connected { .. }
        ));
        c.close(0, "gone");
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Disconnected { .. }
        ));
        let mut c2 = node.accept().await;
        let _ = c2.read().await;
        c2.close(ErrorCode::Unauthorized.close_code(), "token has expired");
        match next(&mut events).await {
            ClientEvent::Closed { code, .. } => assert_eq!(code, Some(ErrorCode::Unauthorized)),
            other => panic!("{other:?}"),
        }
        assert_eq!(within("the end of events", events.next()).await, None);
    }

    #[tokio::test]
    async fn close_says_bye() {
        let node = FakeNode::start();
        let (res, (mut c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (client, mut events) = res.unwrap();
        let serve = async {
            assert_eq!(c.read_request().await, ClientMsg::Bye);
            c.close(ErrorCode::SessionClosed.close_code(), "bye");
        };
        let ((), ()) = tokio::join!(within("close", client.close()), serve);
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Connected { .. }
        ));
        assert_eq!(
            next(&mut events).await,
            ClientEvent::Closed {
                code: None,
                reason: "closed by the client".into()
            }
        );
        assert!(matches!(
            client.request(ClientMsg::Ping { id: 0 }).await,
            Err(ClientError::Closed)
        ));
    }

    #[tokio::test]
    async fn rebind_migrates_the_connection() {
        let node = FakeNode::start();
        let (res, (mut c, _)) = tokio::join!(connect(node.config()), node.welcome("s1", false));
        let (client, mut events) = res.unwrap();
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Connected { .. }
        ));
        let before = c.conn.remote_address();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let after = socket.local_addr().unwrap();
        client.rebind(socket).unwrap();
        let serve = async {
            match c.read_request().await {
                ClientMsg::Ping { id } => {
                    c.write(&ServerMsg::Result {
                        re: id,
                        data: json!(1),
                    })
                    .await
                }
                other => panic!("{other:?}"),
            }
        };
        let (ping, ()) = tokio::join!(client.request(ClientMsg::Ping { id: 0 }), serve);
        assert_eq!(ping.unwrap(), json!(1));
        assert_ne!(before, after);
        assert_eq!(c.conn.remote_address(), after);
        // Same connection, same session: no reconnect happened.
        assert_eq!(events.try_next(), None);
        assert!(client.session().connected);
    }

    #[test]
    fn tokens_load_from_argument_file_or_environment() {
        let good = token(&"ab".repeat(32));
        assert_eq!(load_token(Some(format!(" {good}\n")), None).unwrap(), good);
        assert!(
            matches!(load_token(Some("  ".into()), None), Err(ClientError::BadToken(m)) if m.contains("empty"))
        );
        assert!(matches!(
            load_token(Some("a.b".into()), None),
            Err(ClientError::BadToken(_))
        ));

        let path = std::env::temp_dir().join(format!("yiwang-token-{}.txt", std::process::id()));
        std::fs::write(&path, format!("{good}\n")).unwrap();
        assert_eq!(load_token(None, Some(&path)).unwrap(), good);
        std::fs::remove_file(&path).unwrap();
        let err = load_token(None, Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("cannot read token file") && err.contains("yiwang-token"),
            "{err}"
        );

        // The only test that touches the variable.
        std::env::set_var(TOKEN_ENV, &good);
        assert_eq!(load_token(None, None).unwrap(), good);
        std::env::remove_var(TOKEN_ENV);
        let err = load_token(None, None).unwrap_err().to_string();
        assert!(err.contains(TOKEN_ENV), "{err}");
    }

    #[test]
    fn close_codes_round_trip_and_backoff_stays_in_range() {
        for code in [
            ErrorCode::UnsupportedVersion,
            ErrorCode::BadHello,
            ErrorCode::Unauthorized,
            ErrorCode::Revoked,
            ErrorCode::TooLarge,
            ErrorCode::SessionClosed,
        ] {
            assert!(code.closes());
            assert_eq!(code_from_close(code.close_code().into()), Some(code));
        }
        assert_eq!(code_from_close(0), None);
        assert_eq!(code_from_close(19), None);

        let (min, max) = (Duration::from_millis(200), Duration::from_secs(5));
        for attempt in 0..40 {
            let d = backoff(min, max, attempt);
            assert!(d >= min && d <= max, "{attempt}: {d:?}");
        }
        assert!(backoff(min, max, 10) >= max / 2);
    }

    #[test]
    fn debug_never_prints_the_token() {
        let cfg = ClientConfig::new("node:4433", "secret-token");
        let shown = format!("{cfg:?}");
        assert!(
            shown.contains("node:4433") && !shown.contains("secret-token"),
            "{shown}"
        );
    }

    #[test]
    fn every_request_type_gets_an_id() {
        let mut m = ClientMsg::Units {
            id: 0,
            incident: None,
        };
        assert!(m.set_id(7));
        assert_eq!(m.id(), Some(7));
        let mut m = ClientMsg::Ack { after: 1 };
        assert!(!m.set_id(7));
        let mut m = ClientMsg::Position {
            id: None,
            pos: crate::proto::Position {
                lat: 1.0,
                lon: 2.0,
                alt: None,
                accuracy: None,
                heading: None,
                speed: None,
                time: None,
            },
        };
        assert!(m.set_id(9));
        assert_eq!(m.id(), Some(9));
    }
}
