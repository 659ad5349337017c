//! The WHIP/WHEP HTTP exchange (RFC 9725 and the WHEP draft), without any GStreamer.
//!
//! [`post_offer`] and [`delete_session`] return whatever the node answered, so tests can
//! assert status codes directly. The peers in [`super`] turn a non-`201` answer into a
//! [`WhipError::Http`], which stays downcastable from [`anyhow::Error`]:
//!
//! ```text
//! let err = WhipPublisher::start(base, "cam1", "bad-token", Default::default()).await.unwrap_err();
//! assert_eq!(http_status(&err), Some(401));
//! ```

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::Url;

/// Timeout of one HTTP request to the node.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The node answered the offer (or the `DELETE`) with something else than expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhipError {
    /// Unexpected HTTP status; `body` is the node's (short, textual) explanation.
    Http { status: u16, body: String },
    /// `201 Created` but without a `Location` header.
    MissingLocation,
}

impl fmt::Display for WhipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhipError::Http { status, body } => write!(f, "HTTP {status}: {}", body.trim()),
            WhipError::MissingLocation => f.write_str("201 Created without a Location header"),
        }
    }
}

impl std::error::Error for WhipError {}

/// The HTTP status carried by an error from this module or from the peers, if any.
pub fn http_status(err: &anyhow::Error) -> Option<u16> {
    err.chain()
        .find_map(|e| match e.downcast_ref::<WhipError>() {
            Some(WhipError::Http { status, .. }) => Some(*status),
            _ => None,
        })
}

/// The raw answer of the node to an SDP offer.
#[derive(Debug, Clone)]
pub struct OfferResponse {
    /// HTTP status code (`201` on success).
    pub status: u16,
    /// The `Location` header as sent (relative, e.g. `/session/{id}`).
    pub location: Option<String>,
    /// Absolute session URL: `location` resolved against the request URL.
    pub session_url: Option<Url>,
    /// `Content-Type` of the answer.
    pub content_type: Option<String>,
    /// The body: the SDP answer on `201`, a short error text otherwise.
    pub body: String,
}

impl OfferResponse {
    /// `Ok(answer SDP)` on `201 Created` with a `Location`, else a [`WhipError`].
    pub fn into_answer(self) -> Result<(String, Url, String), WhipError> {
        if self.status != 201 {
            return Err(WhipError::Http {
                status: self.status,
                body: self.body,
            });
        }
        match (self.location, self.session_url) {
            (Some(loc), Some(url)) => Ok((self.body, url, loc)),
            _ => Err(WhipError::MissingLocation),
        }
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// `{base}/{kind}/{stream}`, e.g. `endpoint_url("http://127.0.0.1:8080", "whip", "cam1")`.
pub fn endpoint_url(base_url: &str, kind: &str, stream: &str) -> anyhow::Result<Url> {
    let s = format!("{}/{kind}/{stream}", base_url.trim_end_matches('/'));
    Url::parse(&s).with_context(|| format!("invalid URL {s:?}"))
}

/// `POST`s an SDP offer to a WHIP or WHEP endpoint. An empty `token` sends no `Authorization`.
///
/// Only transport failures are errors; any HTTP status is returned in the [`OfferResponse`].
pub async fn post_offer(url: &Url, token: &str, offer_sdp: &str) -> anyhow::Result<OfferResponse> {
    let mut req = client()?
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/sdp")
        .body(offer_sdp.to_owned());
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let header = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = header(reqwest::header::LOCATION);
    let content_type = header(reqwest::header::CONTENT_TYPE);
    let session_url = location.as_deref().and_then(|l| url.join(l).ok());
    let body = resp
        .text()
        .await
        .with_context(|| format!("reading the answer of POST {url}"))?;
    Ok(OfferResponse {
        status,
        location,
        session_url,
        content_type,
        body,
    })
}

/// `DELETE`s a session (the resolved `Location`), returning the HTTP status.
pub async fn delete_session(session_url: &Url, token: &str) -> anyhow::Result<u16> {
    let mut req = client()?.delete(session_url.clone());
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("DELETE {session_url}"))?;
    Ok(resp.status().as_u16())
}
