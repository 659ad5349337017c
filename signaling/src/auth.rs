//! Roles, rights and tokens.
//!
//! - [`Role`] and [`Action`], with [`Role::may`] implementing the matrix of `ROLES.md` (deny by
//!   default). The "own" qualifiers of that matrix (own drones, own orders) are checked where the
//!   drone or order is known; `may` answers whether the role has the right at all.
//! - [`Claims`], the body of a yiwang token, and [`Claims::may_publish`], the stream-name rule.
//! - [`TokenIssuer`] and [`TokenVerifier`]: compact JWS (JWT) signed with Ed25519 (`alg` `EdDSA`),
//!   `kid` = [`key_id`] of the signing key, base64url without padding.
//!
//! Nothing here reads the clock: `now_unix` (seconds since the epoch) is always an argument.

use crate::error::{AuthError, Denied, ParseRoleError};
use crate::ids::{IncidentId, NodeId, StreamName, Subject, TokenId};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// Default lifetime of an issued token: 12 hours, one long shift. A token cannot be shortened
/// after issue except by revocation, so keep it no longer than a shift.
pub const DEFAULT_TTL_SECS: u64 = 12 * 3600;

/// Default clock leeway of a [`TokenVerifier`], in seconds, applied to `exp` and `iat`: field
/// devices without good time sync should not be locked out by a few seconds of drift.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Default longest token lifetime (`exp` − `iat`) a [`TokenVerifier`] accepts: 7 days. A token
/// cannot be withdrawn from a device that went missing except by revocation, and a node cut off
/// from its issuer cannot learn of that: the lifetime bounds the damage.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// Longest token a verifier looks at, in bytes (8 KiB). Longer input is refused with
/// [`AuthError::TooLarge`] before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The `aud` value that makes a token valid on every node that trusts its issuer.
pub const ANY_AUDIENCE: &str = "*";

/// What a token holder is. Serialised in lowercase (`"commander"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the node: everything, including publishing under any name and revoking tokens.
    Admin,
    /// Leads an incident: views, orders, manages incidents, commands drones.
    Commander,
    /// Works the command post console: views, chats, sends orders.
    Operator,
    /// A field officer with a body camera or phone.
    Officer,
    /// A drone pilot station: publishes and commands its own drones.
    Pilot,
    /// An unattended device (fixed camera, sensor): publishes, reports position, raises SOS.
    Device,
    /// Read-only: views streams and incidents.
    Viewer,
}

impl Role {
    /// Every role, in matrix column order.
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::Commander,
        Role::Operator,
        Role::Officer,
        Role::Pilot,
        Role::Device,
        Role::Viewer,
    ];

    /// The lowercase name, as in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Commander => "commander",
            Role::Operator => "operator",
            Role::Officer => "officer",
            Role::Pilot => "pilot",
            Role::Device => "device",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role has the right to `action` at all (the `ROLES.md` matrix; deny by
    /// default). "Own" qualifiers are checked by the caller.
    pub fn may(self, action: Action) -> bool {
        use Action::*;
        use Role::*;
        match action {
            ViewStream | ReadIncident => !matches!(self, Device),
            PublishOwn | ReportPosition | RaiseSos => !matches!(self, Viewer),
            PublishDrone => matches!(self, Admin | Pilot),
            PublishAnyName | Revoke => matches!(self, Admin),
            Chat => matches!(self, Admin | Commander | Operator | Officer | Pilot),
            SendOrder => matches!(self, Admin | Commander | Operator),
            AnswerOrder => matches!(self, Officer | Pilot),
            ManageIncident => matches!(self, Admin | Commander),
            CommandDrone => matches!(self, Admin | Commander | Pilot),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseRoleError;
    /// Parses a lowercase role name; the error lists the valid ones.
    fn from_str(s: &str) -> Result<Self, ParseRoleError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(ParseRoleError::Unknown)
    }
}

/// Something a token holder may try to do; the rows of the `ROLES.md` matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// View a stream (WHEP / subscribe).
    ViewStream,
    /// Publish own camera/mic (under the own subject or `SUBJECT-*`).
    PublishOwn,
    /// Publish a drone feed and telemetry (pilots: own drones only).
    PublishDrone,
    /// Publish under any stream name.
    PublishAnyName,
    /// Report own position.
    ReportPosition,
    /// Read an incident: catalog, units, log.
    ReadIncident,
    /// Chat.
    Chat,
    /// Send an order.
    SendOrder,
    /// Answer an order (accept / decline / done); own orders only.
    AnswerOrder,
    /// Raise an SOS (emergency alert).
    RaiseSos,
    /// Create or close an incident, assign members.
    ManageIncident,
    /// Command a drone (allow-list: RTL, hold, land, guided target); pilots: own drones only.
    CommandDrone,
    /// Revoke a token or session.
    Revoke,
}

impl Action {
    /// Every action, in matrix row order.
    pub const ALL: [Action; 13] = [
        Action::ViewStream,
        Action::PublishOwn,
        Action::PublishDrone,
        Action::PublishAnyName,
        Action::ReportPosition,
        Action::ReadIncident,
        Action::Chat,
        Action::SendOrder,
        Action::AnswerOrder,
        Action::RaiseSos,
        Action::ManageIncident,
        Action::CommandDrone,
        Action::Revoke,
    ];

    /// A short human phrase, used in [`Denied`] messages ("role viewer may not publish").
    pub fn describe(self) -> &'static str {
        match self {
            Action::ViewStream => "view streams",
            Action::PublishOwn => "publish",
            Action::PublishDrone => "publish drone feeds",
            Action::PublishAnyName => "publish under any name",
            Action::ReportPosition => "report positions",
            Action::ReadIncident => "read incidents",
            Action::Chat => "chat",
            Action::SendOrder => "send orders",
            Action::AnswerOrder => "answer orders",
            Action::RaiseSos => "raise SOS",
            Action::ManageIncident => "manage incidents",
            Action::CommandDrone => "command drones",
            Action::Revoke => "revoke tokens",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The claims (payload) of a yiwang token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to; also the default stream name when publishing.
    pub sub: Subject,
    /// What the holder is.
    pub role: Role,
    /// The node that issued (signed) the token.
    pub iss: NodeId,
    /// The node the token is for: a node id, or [`ANY_AUDIENCE`] (`*`) for every node that
    /// trusts the issuer.
    pub aud: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Unique token id, the handle for revocation.
    pub jti: TokenId,
    /// Incidents granted beyond the node's standing `duty` incident.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incidents: Vec<IncidentId>,
    /// Drones granted to the holder ("own drones" for pilots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drones: Vec<String>,
    /// Lowercase hex SHA-256 of the issuing node's TLS certificate (DER), so a client can pin
    /// the node's self-signed certificate.
    pub fpr: String,
}

impl Claims {
    /// Whether the holder's role has the right to `action` at all; see [`Role::may`].
    pub fn may(&self, action: Action) -> bool {
        self.role.may(action)
    }

    /// Whether the holder may publish under `name`.
    ///
    /// An admin may publish under any (local) name. Any other role needs
    /// [`Action::PublishOwn`] and may publish its subject itself or a name starting with
    /// `"{sub}-"` (drone feeds `SUBJECT-droneSYSID` are of that form). Whether a live name is
    /// taken is decided by the caller (409 unless the same subject).
    pub fn may_publish(&self, name: &StreamName) -> Result<(), Denied> {
        if self.may(Action::PublishAnyName) {
            return Ok(());
        }
        if !self.may(Action::PublishOwn) {
            return Err(Denied::Role {
                role: self.role,
                action: Action::PublishOwn,
            });
        }
        let sub = self.sub.as_str();
        let name = name.as_str();
        let own = name == sub
            || (name.len() > sub.len() + 1
                && name.starts_with(sub)
                && name.as_bytes()[sub.len()] == b'-');
        if own {
            Ok(())
        } else {
            Err(Denied::NotOwnName)
        }
    }
}

/// What to put in a token; see [`TokenIssuer::issue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Who the token is for.
    pub sub: Subject,
    /// The holder's role.
    pub role: Role,
    /// Lifetime in seconds; [`TokenRequest::new`] sets [`DEFAULT_TTL_SECS`].
    pub ttl_secs: u64,
    /// A node id, or [`ANY_AUDIENCE`].
    pub aud: String,
    /// Incidents granted.
    pub incidents: Vec<IncidentId>,
    /// Drones granted.
    pub drones: Vec<String>,
    /// Lowercase hex SHA-256 of the issuing node's TLS certificate DER.
    pub fpr: String,
}

impl TokenRequest {
    /// A request with the default TTL and no incidents or drones.
    pub fn new(sub: Subject, role: Role, aud: impl Into<String>, fpr: impl Into<String>) -> Self {
        TokenRequest {
            sub,
            role,
            ttl_secs: DEFAULT_TTL_SECS,
            aud: aud.into(),
            incidents: Vec::new(),
            drones: Vec::new(),
            fpr: fpr.into(),
        }
    }
}

/// The key id of an Ed25519 public key: the first 16 lowercase hex characters of the SHA-256 of
/// its 32 bytes. Used as the JWS `kid`.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// JWS protected header.
#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    /// JWS extensions the verifier must understand (RFC 7515 §4.1.11): yiwang understands none,
    /// so a token that carries `crit` at all is refused rather than half-understood.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

const ALG: &str = "EdDSA";

/// Signs tokens for one node.
#[derive(Clone)]
pub struct TokenIssuer {
    key: SigningKey,
    issuer: NodeId,
    kid: String,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret key.
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An issuer signing with `key` and naming `issuer` in `iss`.
    pub fn new(key: SigningKey, issuer: NodeId) -> Self {
        let kid = key_id(&key.verifying_key());
        TokenIssuer { key, issuer, kid }
    }

    /// The issuer's node id.
    pub fn issuer(&self) -> &NodeId {
        &self.issuer
    }

    /// The public half of the signing key, for [`TokenVerifier::trust`].
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The `kid` put in every token's header.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Issues a signed token: `iat` = `now_unix`, `exp` = `now_unix + ttl_secs` (saturating),
    /// `jti` = 16 random bytes in hex.
    pub fn issue(&self, req: &TokenRequest, now_unix: u64) -> String {
        let claims = Claims {
            sub: req.sub.clone(),
            role: req.role,
            iss: self.issuer.clone(),
            aud: req.aud.clone(),
            iat: now_unix,
            exp: now_unix.saturating_add(req.ttl_secs),
            jti: new_jti(),
            incidents: req.incidents.clone(),
            drones: req.drones.clone(),
            fpr: req.fpr.clone(),
        };
        self.sign(&claims)
    }

    /// Signs `claims` as they are (no field is filled in). For tests and tools.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: ALG.to_owned(),
            typ: Some("JWT".to_owned()),
            kid: Some(self.kid.clone()),
            crit: None,
        };
        // Serialising plain structs of strings and integers into JSON cannot fail.
        let header = serde_json::to_vec(&header).expect("header serialises");
        let payload = serde_json::to_vec(claims).expect("claims serialise");
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        token
    }
}

fn new_jti() -> TokenId {
    let bytes: [u8; 16] = rand::random();
    TokenId::parse(&hex::encode(bytes)).expect("32 hex characters are a valid token id")
}

/// The three decoded parts of a compact JWS.
struct Parts<'a> {
    signing_input: &'a str,
    header: Header,
    payload: Vec<u8>,
    signature: &'a str,
}

fn malformed(reason: &'static str) -> AuthError {
    AuthError::Malformed { reason }
}

fn split(token: &str) -> Result<Parts<'_>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLarge);
    }
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(malformed("expected three dot-separated parts"));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(malformed("empty part"));
    }
    let header = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: Header =
        serde_json::from_slice(&header).map_err(|_| malformed("header is not a JWS header"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| malformed("payload is not base64url"))?;
    Ok(Parts {
        signing_input: &token[..h.len() + 1 + p.len()],
        header,
        payload,
        signature: s,
    })
}

fn parse_claims(payload: &[u8]) -> Result<Claims, AuthError> {
    serde_json::from_slice(payload).map_err(|_| malformed("payload is not valid yiwang claims"))
}

/// Decodes a token's claims WITHOUT checking its signature, issuer key, time or audience.
///
/// Only for clients that need `fpr` (or `iss`) to pin the node certificate before they can talk
/// to the node at all; the node verifies the token anyway. Never base an authorisation decision on
/// the result.
pub fn decode_unverified(token: &str) -> Result<Claims, AuthError> {
    let parts = split(token)?;
    parse_claims(&parts.payload)
}

/// Verifies tokens on one node.
///
/// Defaults: no trusted key (every token is [`AuthError::UntrustedKey`] until [`trust`] is
/// called), leeway [`DEFAULT_LEEWAY_SECS`].
///
/// [`trust`]: TokenVerifier::trust
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: Vec<VerifyingKey>,
    /// The issuer each key is bound to (same index as `keys`); `None`: any `iss`.
    issuers: Vec<Option<NodeId>>,
    audience: NodeId,
    leeway_secs: u64,
    max_lifetime_secs: u64,
}

impl TokenVerifier {
    /// A verifier for the node `audience`, trusting no key yet.
    pub fn new(audience: NodeId) -> Self {
        TokenVerifier {
            keys: Vec::new(),
            issuers: Vec::new(),
            audience,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        }
    }

    /// Trusts tokens signed by `key`, whatever their `iss` (idempotent; a key already bound to
    /// an issuer stays bound).
    pub fn trust(&mut self, key: VerifyingKey) -> &mut Self {
        if !self.keys.contains(&key) {
            self.keys.push(key);
            self.issuers.push(None);
        }
        self
    }

    /// Trusts tokens signed by `key` only when their `iss` is `issuer`: a key cannot mint tokens
    /// in another node's name.
    pub fn trust_issuer(&mut self, key: VerifyingKey, issuer: NodeId) -> &mut Self {
        match self.keys.iter().position(|k| *k == key) {
            Some(i) => self.issuers[i] = Some(issuer),
            None => {
                self.keys.push(key);
                self.issuers.push(Some(issuer));
            }
        }
        self
    }

    /// Sets the longest token lifetime (`exp` − `iat`) accepted (default
    /// [`DEFAULT_MAX_LIFETIME_SECS`]).
    pub fn set_max_lifetime_secs(&mut self, secs: u64) -> &mut Self {
        self.max_lifetime_secs = secs;
        self
    }

    /// The longest token lifetime accepted, in seconds.
    pub fn max_lifetime_secs(&self) -> u64 {
        self.max_lifetime_secs
    }

    /// Sets the clock leeway for `exp` and `iat` (default [`DEFAULT_LEEWAY_SECS`]).
    pub fn set_leeway_secs(&mut self, secs: u64) -> &mut Self {
        self.leeway_secs = secs;
        self
    }

    /// The clock leeway in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// The node id tokens must be addressed to (or `*`).
    pub fn audience(&self) -> &NodeId {
        &self.audience
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    /// Verifies `token` at time `now_unix` and returns its claims.
    ///
    /// Checks, in order: size ([`MAX_TOKEN_LEN`]), structure, `alg` = `EdDSA`, `kid` names a
    /// trusted key, no `crit`, the signature (strict Ed25519), `iss` = the issuer the key is bound
    /// to (if it is), the lifetime (`exp` − `iat` at most the maximum), `exp` and `iat` (each with
    /// the leeway), and `aud` = this node or `*`. Never panics, whatever the input.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
        let parts = split(token)?;
        if parts.header.alg != ALG {
            return Err(malformed("alg must be EdDSA"));
        }
        let kid = parts
            .header
            .kid
            .as_deref()
            .ok_or(malformed("header has no kid"))?;
        if parts.header.crit.is_some() {
            return Err(malformed("crit is not supported"));
        }
        let at = self
            .keys
            .iter()
            .position(|k| key_id(k) == kid)
            .ok_or(AuthError::UntrustedKey)?;
        let key = &self.keys[at];
        let signature = URL_SAFE_NO_PAD
            .decode(parts.signature)
            .map_err(|_| malformed("signature is not base64url"))?;
        let signature = Signature::from_slice(&signature)
            .map_err(|_| malformed("signature must be 64 bytes"))?;
        key.verify_strict(parts.signing_input.as_bytes(), &signature)
            .map_err(|_| AuthError::BadSignature)?;

        let claims = parse_claims(&parts.payload)?;
        if claims.exp <= claims.iat {
            return Err(malformed("exp is not after iat"));
        }
        if let Some(bound) = &self.issuers[at] {
            if claims.iss != *bound {
                return Err(AuthError::WrongIssuer);
            }
        }
        if claims.exp - claims.iat > self.max_lifetime_secs {
            return Err(AuthError::TooLongLived {
                max_secs: self.max_lifetime_secs,
            });
        }
        if now_unix >= claims.exp.saturating_add(self.leeway_secs) {
            return Err(AuthError::Expired);
        }
        if claims.iat > now_unix.saturating_add(self.leeway_secs) {
            return Err(AuthError::NotYetValid);
        }
        if claims.aud != ANY_AUDIENCE && claims.aud != self.audience.as_str() {
            return Err(AuthError::WrongAudience);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const NOW: u64 = 1_750_000_000;
    const FPR: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut StdRng::seed_from_u64(seed))
    }

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(key(1), node("hq"))
    }

    fn verifier() -> TokenVerifier {
        let mut v = TokenVerifier::new(node("hq"));
        v.trust(issuer().verifying_key());
        v
    }

    fn request(role: Role, aud: &str) -> TokenRequest {
        TokenRequest::new(Subject::parse("off-12").unwrap(), role, aud, FPR)
    }

    fn claims(role: Role, sub: &str) -> Claims {
        Claims {
            sub: Subject::parse(sub).unwrap(),
            role,
            iss: node("hq"),
            aud: "hq".into(),
            iat: NOW,
            exp: NOW + 60,
            jti: TokenId::parse("j1").unwrap(),
            incidents: vec![],
            drones: vec![],
            fpr: FPR.into(),
        }
    }

    /// The ROLES.md matrix, written out cell by cell. Columns: admin, commander, operator,
    /// officer, pilot, device, viewer. "own" cells count as having the right.
    #[test]
    fn role_matrix_every_cell() {
        use Action::*;
        const Y: bool = true;
        const N: bool = false;
        let table: [(Action, [bool; 7]); 13] = [
            (ViewStream, /*      */ [Y, Y, Y, Y, Y, N, Y]),
            (PublishOwn, /*      */ [Y, Y, Y, Y, Y, Y, N]),
            (PublishDrone, /*    */ [Y, N, N, N, Y, N, N]),
            (PublishAnyName, /*  */ [Y, N, N, N, N, N, N]),
            (ReportPosition, /*  */ [Y, Y, Y, Y, Y, Y, N]),
            (ReadIncident, /*    */ [Y, Y, Y, Y, Y, N, Y]),
            (Chat, /*            */ [Y, Y, Y, Y, Y, N, N]),
            (SendOrder, /*       */ [Y, Y, Y, N, N, N, N]),
            (AnswerOrder, /*     */ [N, N, N, Y, Y, N, N]),
            (RaiseSos, /*        */ [Y, Y, Y, Y, Y, Y, N]),
            (ManageIncident, /*  */ [Y, Y, N, N, N, N, N]),
            (CommandDrone, /*    */ [Y, Y, N, N, Y, N, N]),
            (Revoke, /*          */ [Y, N, N, N, N, N, N]),
        ];
        // The table covers every action exactly once, in order.
        assert_eq!(table.map(|(a, _)| a), Action::ALL);
        let mut cells = 0;
        for (action, row) in table {
            for (role, expected) in Role::ALL.into_iter().zip(row) {
                assert_eq!(role.may(action), expected, "{role} × {action:?}");
                assert_eq!(
                    claims(role, "x").may(action),
                    expected,
                    "{role} × {action:?}"
                );
                cells += 1;
            }
        }
        assert_eq!(cells, 7 * 13);
    }

    #[test]
    fn role_text_forms() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        assert_eq!("pilot".parse::<Role>(), Ok(Role::Pilot));
        let err = "root".parse::<Role>().unwrap_err().to_string();
        for role in Role::ALL {
            assert!(err.contains(role.as_str()), "{err}");
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!(serde_json::from_str::<Role>("\"superuser\"").is_err());
    }

    #[test]
    fn publish_own_subject_and_dash_names() {
        let sn = |s| StreamName::parse(s).unwrap();
        for role in [
            Role::Commander,
            Role::Operator,
            Role::Officer,
            Role::Pilot,
            Role::Device,
        ] {
            let c = claims(role, "pilot-3");
            assert_eq!(c.may_publish(&sn("pilot-3")), Ok(()), "{role}");
            assert_eq!(c.may_publish(&sn("pilot-3-drone1")), Ok(()), "{role}");
            assert_eq!(c.may_publish(&sn("pilot-3-helmet")), Ok(()), "{role}");
            for other in [
                "pilot-4",
                "pilot-33",
                "pilot-3x",
                "pilot-",
                "pilot",
                "x-pilot-3",
            ] {
                assert_eq!(
                    c.may_publish(&sn(other)),
                    Err(Denied::NotOwnName),
                    "{role} {other}"
                );
            }
        }
    }

    #[test]
    fn publish_admin_any_name_viewer_none() {
        let sn = |s| StreamName::parse(s).unwrap();
        let admin = claims(Role::Admin, "root");
        for name in ["root", "off-12", "anything.else"] {
            assert_eq!(admin.may_publish(&sn(name)), Ok(()));
        }
        let viewer = claims(Role::Viewer, "v1");
        let denied = viewer.may_publish(&sn("v1")).unwrap_err();
        assert_eq!(
            denied,
            Denied::Role {
                role: Role::Viewer,
                action: Action::PublishOwn
            }
        );
        assert_eq!(denied.to_string(), "role viewer may not publish");
    }

    #[test]
    fn round_trip() {
        let mut req = request(Role::Pilot, "hq");
        req.incidents = vec![IncidentId::parse("flood-3").unwrap()];
        req.drones = vec!["1".into(), "7".into()];
        let token = issuer().issue(&req, NOW);
        let c = verifier().verify(&token, NOW + 10).unwrap();
        assert_eq!(c.sub, req.sub);
        assert_eq!(c.role, Role::Pilot);
        assert_eq!(c.iss, node("hq"));
        assert_eq!(c.aud, "hq");
        assert_eq!(c.iat, NOW);
        assert_eq!(c.exp, NOW + DEFAULT_TTL_SECS);
        assert_eq!(c.incidents, req.incidents);
        assert_eq!(c.drones, req.drones);
        assert_eq!(c.fpr, FPR);
        assert_eq!(c.jti.as_str().len(), 32);
        assert!(c
            .jti
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(decode_unverified(&token).unwrap(), c);
    }

    #[test]
    fn header_and_encoding() {
        let i = issuer();
        let token = i.issue(&request(Role::Officer, "hq"), NOW);
        assert!(!token.contains('='));
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": key_id(&i.verifying_key())})
        );
        let kid = key_id(&i.verifying_key());
        assert_eq!(kid.len(), 16);
        assert_eq!(
            kid,
            hex::encode(&Sha256::digest(i.verifying_key().as_bytes())[..8])
        );
        // Empty vectors are left out of the payload.
        let payload = token.split('.').nth(1).unwrap();
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(payload.get("incidents").is_none() && payload.get("drones").is_none());
    }

    #[test]
    fn jti_is_unique() {
        let i = issuer();
        let a = decode_unverified(&i.issue(&request(Role::Officer, "hq"), NOW)).unwrap();
        let b = decode_unverified(&i.issue(&request(Role::Officer, "hq"), NOW)).unwrap();
        assert_ne!(a.jti, b.jti);
    }

    #[test]
    fn untrusted_key_refused() {
        let other = TokenIssuer::new(key(2), node("hq"));
        let token = other.issue(&request(Role::Admin, "hq"), NOW);
        assert_eq!(verifier().verify(&token, NOW), Err(AuthError::UntrustedKey));
        assert_eq!(
            TokenVerifier::new(node("hq")).verify(&token, NOW),
            Err(AuthError::UntrustedKey)
        );
        // Trusting several keys works.
        let mut v = verifier();
        v.trust(other.verifying_key()).trust(other.verifying_key());
        assert_eq!(v.keys().len(), 2);
        assert!(v.verify(&token, NOW).is_ok());
    }

    #[test]
    fn forged_kid_with_wrong_key_is_bad_signature() {
        // An attacker copies the trusted kid but signs with its own key.
        let mut c = claims(Role::Admin, "root");
        c.exp = NOW + 100;
        let forged = TokenIssuer {
            key: key(2),
            issuer: node("hq"),
            kid: issuer().key_id().to_owned(),
        }
        .sign(&c);
        assert_eq!(
            verifier().verify(&forged, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn expiry_and_leeway() {
        let mut req = request(Role::Officer, "hq");
        req.ttl_secs = 100;
        let token = issuer().issue(&req, NOW);
        let v = verifier();
        assert!(v.verify(&token, NOW + 100).is_ok(), "within leeway");
        assert!(v.verify(&token, NOW + 129).is_ok(), "within leeway");
        assert_eq!(v.verify(&token, NOW + 130), Err(AuthError::Expired));
        assert_eq!(v.verify(&token, u64::MAX), Err(AuthError::Expired));
        let mut strict = verifier();
        strict.set_leeway_secs(0);
        assert_eq!(strict.verify(&token, NOW + 100), Err(AuthError::Expired));
        assert!(strict.verify(&token, NOW + 99).is_ok());
    }

    #[test]
    fn issued_in_the_future_refused() {
        let token = issuer().issue(&request(Role::Officer, "hq"), NOW);
        let v = verifier();
        assert!(v.verify(&token, NOW - 30).is_ok());
        assert_eq!(v.verify(&token, NOW - 31), Err(AuthError::NotYetValid));
        assert_eq!(v.verify(&token, 0), Err(AuthError::NotYetValid));
    }

    #[test]
    fn exp_not_after_iat_is_malformed() {
        let mut c = claims(Role::Officer, "off-1");
        c.exp = c.iat;
        let token = issuer().sign(&c);
        assert!(matches!(
            verifier().verify(&token, NOW),
            Err(AuthError::Malformed { .. })
        ));
    }

    #[test]
    fn other_audience_refused_star_accepted() {
        let i = issuer();
        let v = verifier();
        let other = i.issue(&request(Role::Officer, "field-2"), NOW);
        assert_eq!(v.verify(&other, NOW), Err(AuthError::WrongAudience));
        let any = i.issue(&request(Role::Officer, ANY_AUDIENCE), NOW);
        assert_eq!(v.verify(&any, NOW).unwrap().aud, "*");
        // The star is accepted by every node that trusts the key.
        let mut v2 = TokenVerifier::new(node("field-2"));
        v2.trust(i.verifying_key());
        assert!(v2.verify(&any, NOW).is_ok());
        assert!(v2.verify(&other, NOW).is_ok());
    }

    #[test]
    fn tampered_payload_refused() {
        let token = issuer().issue(&request(Role::Viewer, "hq"), NOW);
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = decode_unverified(&token).unwrap();
        c.role = Role::Admin;
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_eq!(
            verifier().verify(&tampered, NOW),
            Err(AuthError::BadSignature)
        );
        // decode_unverified does not notice: that is its documented contract.
        assert_eq!(decode_unverified(&tampered).unwrap().role, Role::Admin);
    }

    #[test]
    fn wrong_alg_refused() {
        let token = issuer().issue(&request(Role::Viewer, "hq"), NOW);
        let parts: Vec<&str> = token.split('.').collect();
        for header in [
            r#"{"alg":"none","kid":"x"}"#.to_owned(),
            format!(r#"{{"alg":"HS256","kid":"{}"}}"#, issuer().key_id()),
            r#"{"alg":"EdDSA"}"#.to_owned(),
        ] {
            let h = URL_SAFE_NO_PAD.encode(header);
            for t in [
                format!("{h}.{}.{}", parts[1], parts[2]),
                format!("{h}.{}.", parts[1]),
            ] {
                assert!(
                    matches!(verifier().verify(&t, NOW), Err(AuthError::Malformed { .. })),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn a_token_living_longer_than_the_maximum_is_refused() {
        let mut req = request(Role::Viewer, "hq");
        req.ttl_secs = DEFAULT_MAX_LIFETIME_SECS;
        assert!(verifier().verify(&issuer().issue(&req, NOW), NOW).is_ok());
        req.ttl_secs = DEFAULT_MAX_LIFETIME_SECS + 1;
        let long = issuer().issue(&req, NOW);
        assert_eq!(
            verifier().verify(&long, NOW),
            Err(AuthError::TooLongLived {
                max_secs: DEFAULT_MAX_LIFETIME_SECS
            })
        );
        // exp = 2^63: no longer "valid for ever".
        let mut c = claims(Role::Viewer, "off-1");
        c.iat = NOW;
        c.exp = 1 << 63;
        assert!(matches!(
            verifier().verify(&issuer().sign(&c), NOW),
            Err(AuthError::TooLongLived { .. })
        ));
        let mut v = verifier();
        v.set_max_lifetime_secs(30 * 24 * 3600);
        assert!(v.verify(&long, NOW).is_ok());
    }

    #[test]
    fn a_key_bound_to_an_issuer_cannot_mint_in_another_nodes_name() {
        let mut v = TokenVerifier::new(node("hq"));
        v.trust_issuer(issuer().verifying_key(), node("hq"));
        assert!(v
            .verify(&issuer().issue(&request(Role::Viewer, "hq"), NOW), NOW)
            .is_ok());
        let impostor = TokenIssuer::new(key(1), node("city-b"));
        let t = impostor.issue(&request(Role::Viewer, "hq"), NOW);
        assert_eq!(v.verify(&t, NOW), Err(AuthError::WrongIssuer));
        // An unbound key (a configured issuer without a name) still takes any iss.
        assert!(verifier().verify(&t, NOW).is_ok());
    }

    #[test]
    fn a_token_with_crit_is_refused() {
        let token = issuer().issue(&request(Role::Viewer, "hq"), NOW);
        let parts: Vec<&str> = token.split('.').collect();
        let header = format!(
            r#"{{"alg":"EdDSA","kid":"{}","crit":["exp2"],"exp2":1}}"#,
            issuer().key_id()
        );
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), parts[1]);
        let sig = key(1).sign(input.as_bytes());
        let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        assert_eq!(
            verifier().verify(&t, NOW),
            Err(AuthError::Malformed {
                reason: "crit is not supported"
            })
        );
    }

    #[test]
    fn too_large_refused() {
        let v = verifier();
        assert_eq!(
            v.verify(&"a".repeat(MAX_TOKEN_LEN + 1), NOW),
            Err(AuthError::TooLarge)
        );
        assert_eq!(
            decode_unverified(&"a".repeat(100_000)),
            Err(AuthError::TooLarge)
        );
        // A genuine token with huge claims is refused on size too.
        let mut req = request(Role::Pilot, "hq");
        req.drones = (0..2000).map(|i| i.to_string()).collect();
        let token = issuer().issue(&req, NOW);
        assert_eq!(v.verify(&token, NOW), Err(AuthError::TooLarge));
    }

    #[test]
    fn structural_garbage_refused() {
        let token = issuer().issue(&request(Role::Officer, "hq"), NOW);
        let p: Vec<&str> = token.split('.').collect();
        let v = verifier();
        let cases = [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            format!("{}.{}", p[0], p[1]),
            format!("{}.{}.{}.{}", p[0], p[1], p[2], p[2]),
            format!("{}.{}.{}", p[1], p[0], p[2]),
            format!("{}.{}.{}", p[0], p[2], p[1]),
            format!("{}.{}.{}", p[2], p[1], p[0]),
            format!("{}=.{}.{}", p[0], p[1], p[2]),
            format!("{}.{}.{}", p[0], p[1], &p[2][..p[2].len() - 1]),
            format!("{}.{}.{}A", p[0], p[1], p[2]),
            format!(" {token}"),
            format!("{token}\n"),
            token.replace('-', "+"),
        ];
        for t in cases {
            if t == token {
                continue;
            }
            assert!(v.verify(&t, NOW).is_err(), "{t:?}");
        }
        // Every prefix of a valid token fails cleanly.
        for n in 0..token.len() {
            assert!(v.verify(&token[..n], NOW).is_err());
            let _ = decode_unverified(&token[..n]);
        }
        assert!(v.verify(&token, NOW).is_ok());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let v = verifier();
        let token = issuer().issue(&request(Role::Officer, "hq"), NOW);
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/{}\":, ";
        for _ in 0..3000 {
            // Random text over the token alphabet, with and without dots.
            let len = rng.gen_range(0..300);
            let s: String = (0..len)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect();
            assert!(v.verify(&s, NOW).is_err());
            let _ = decode_unverified(&s);

            // Random bytes (lossily made into a str).
            let bytes: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
            let s = String::from_utf8_lossy(&bytes);
            assert!(v.verify(&s, NOW).is_err());
            let _ = decode_unverified(&s);

            // One character of a valid token changed: never accepted.
            let mut t = token.clone().into_bytes();
            let i = rng.gen_range(0..t.len());
            let c = ALPHABET[rng.gen_range(0..ALPHABET.len())];
            if t[i] != c {
                t[i] = c;
                let t = String::from_utf8(t).unwrap();
                assert!(v.verify(&t, NOW).is_err(), "{t}");
            }

            // Random valid base64url segments.
            let seg = |rng: &mut StdRng| {
                let n = rng.gen_range(0..120);
                let b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                URL_SAFE_NO_PAD.encode(b)
            };
            let t = format!("{}.{}.{}", seg(&mut rng), seg(&mut rng), seg(&mut rng));
            assert!(v.verify(&t, NOW).is_err());
        }
    }

    #[test]
    fn error_messages_are_human() {
        for e in [
            AuthError::Malformed { reason: "x" },
            AuthError::UntrustedKey,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::WrongAudience,
            AuthError::TooLarge,
        ] {
            let m = e.to_string();
            assert!(
                m.starts_with("token") || m.starts_with("malformed token"),
                "{m}"
            );
        }
    }

    #[test]
    fn issuer_debug_hides_secret() {
        let i = issuer();
        let dbg = format!("{i:?}");
        assert!(dbg.contains("hq"));
        assert!(!dbg.contains(&hex::encode(i.key.to_bytes())));
    }
}
