//! Body of the `attachment_meta` fuzz target (and of its corpus replay in
//! `tests/tests/security/fuzz_corpus.rs`): what an attachment upload and the store read from
//! outside — the `Content-Type` header (`media_server::attachments::content_type`), the
//! `X-Yiwang-Sha256` header and the `{sha256}` path segment (`AttachmentId::parse`), and a
//! sidecar `<sha256>.json` read back from disk (`AttachmentMeta`).
//!
//! The input is three parts separated by newlines: content type, id, sidecar JSON.
//! Properties: never a panic; an accepted content type is one of `ALLOWED_TYPES` and accepted
//! again as itself; an id parses only from 64 lowercase hex characters and prints back as its
//! input; a sidecar that parses serialises and parses back to the same record.

use media_server::attachments::{content_type, AttachmentId, AttachmentMeta, ALLOWED_TYPES};

/// Runs one input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (ct, id, meta) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if let Some(t) = content_type(ct) {
        assert!(ALLOWED_TYPES.contains(&t), "{t} is not an allowed type");
        assert_eq!(
            content_type(t),
            Some(t),
            "canonical type not accepted as itself"
        );
    }
    if let Ok(parsed) = AttachmentId::parse(id) {
        assert_eq!(parsed.hex(), id, "an id prints differently from its input");
    }
    if let Ok(m) = serde_json::from_str::<AttachmentMeta>(meta) {
        let json = serde_json::to_string(&m).expect("a record serialises");
        let back: AttachmentMeta = serde_json::from_str(&json).expect("a record parses back");
        assert_eq!(back, m, "a sidecar round trip changed the record");
    }
}
