//! Body of the `token` fuzz target (and of its corpus replay in `tests/tests/security/fuzz_corpus.rs`):
//! yiwang's JWS tokens (`Authorization: Bearer`, `?token=`, the `hello` message) through
//! `signaling::auth`.
//!
//! The first byte picks the mode:
//! - even: the rest, as a string, is a token from outside: `verify` and `decode_unverified` never
//!   panic, and a token that verifies decodes (unverified) to the same claims;
//! - odd: the rest is `HEADER\nPAYLOAD`, signed with the trusted key, so the fuzzer gets past the
//!   signature to the header, claims, time, lifetime and audience checks. What verifies keeps the
//!   documented rules (`exp` after `iat`, lifetime within the maximum, valid at `NOW`, audience
//!   this node or `*`), and the claims signed again verify to the same claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use signaling::auth::{decode_unverified, TokenIssuer, TokenVerifier, ANY_AUDIENCE};
use signaling::NodeId;

/// The verifier's clock, unix seconds.
const NOW: u64 = 1_750_000_000;

/// The signing key, its issuer and a verifier trusting it: made once (key set-up costs more
/// than a verification).
fn keys() -> &'static (SigningKey, TokenIssuer, TokenVerifier) {
    static KEYS: std::sync::OnceLock<(SigningKey, TokenIssuer, TokenVerifier)> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let node = NodeId::parse("hq").expect("valid node id");
        let issuer = TokenIssuer::new(key.clone(), node.clone());
        let mut verifier = TokenVerifier::new(node);
        verifier.trust(issuer.verifying_key());
        (key, issuer, verifier)
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (key, issuer, verifier) = keys();

    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (header, payload) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let sig = key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        token
    };
    let unverified = decode_unverified(&token);
    let Ok(claims) = verifier.verify(&token, NOW) else {
        return;
    };
    assert_eq!(
        unverified.as_ref().ok(),
        Some(&claims),
        "verified but not decodable"
    );
    assert!(claims.exp > claims.iat, "exp not after iat");
    assert!(
        claims.exp - claims.iat <= verifier.max_lifetime_secs(),
        "too long-lived"
    );
    assert!(
        NOW < claims.exp.saturating_add(verifier.leeway_secs()),
        "expired"
    );
    assert!(
        claims.iat <= NOW.saturating_add(verifier.leeway_secs()),
        "not yet valid"
    );
    assert!(
        claims.aud == ANY_AUDIENCE || claims.aud == "hq",
        "wrong audience"
    );
    let again = issuer.sign(&claims);
    assert_eq!(
        verifier.verify(&again, NOW).ok(),
        Some(claims),
        "re-signed claims differ"
    );
}
