//! Body of the `whip_sdp` fuzz target (and of its corpus replay in
//! `tests/tests/security/fuzz_corpus.rs`): WHIP and WHEP offer bodies into the SFU engine
//! (`sfu::Sfu::publish` and `view`: the offer's codec preference, str0m's SDP parser, the answer,
//! the negotiated codecs).
//!
//! The input is a publisher's offer, optionally followed by a line `--` and a viewer's offer.
//! Properties: never a panic; an accepted offer gets a non-empty session id and an answer that is
//! itself SDP (starts `v=0`, has an m-line); sessions close again.

use std::net::SocketAddr;
use std::time::Instant;

use ids::{StreamName, Subject};
use sfu::forward::LayerPref;
use sfu::{SessionAnswer, Sfu, SfuConfig};

fn check(answer: &SessionAnswer) {
    assert!(!answer.session_id.is_empty(), "empty session id");
    assert!(answer.sdp.starts_with("v=0"), "answer is not SDP");
    assert!(answer.sdp.contains("\nm="), "answer has no m-line");
}

thread_local! {
    /// One engine for every input (its DTLS certificate is made once); sessions are closed after
    /// each input.
    static SFU: std::cell::RefCell<Option<Sfu>> = const { std::cell::RefCell::new(None) };
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (offer, view) = match text.split_once("\n--\n") {
        Some((a, b)) => (a, Some(b)),
        None => (&*text, None),
    };
    SFU.with(|cell| {
        let mut cell = cell.borrow_mut();
        let sfu = cell.get_or_insert_with(|| {
            static CRYPTO: std::sync::Once = std::sync::Once::new();
            CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
            let local: SocketAddr = "127.0.0.1:40000".parse().expect("valid address");
            Sfu::new(SfuConfig::default(), local)
        });
        let now = Instant::now();
        let stream = StreamName::parse("fuzz-cam").expect("valid stream name");
        let owner = Subject::parse("fuzz").expect("valid subject");
        let mut sessions = Vec::new();
        if let Ok(answer) = sfu.publish(now, stream.clone(), owner, offer) {
            check(&answer);
            sessions.push(answer.session_id);
            if let Some(view) = view {
                if let Ok(answer) = sfu.view(now, &stream, view, LayerPref::Auto) {
                    check(&answer);
                    sessions.push(answer.session_id);
                }
            }
        }
        for s in sessions.iter().rev() {
            sfu.close_session(now, s).expect("an open session closes");
        }
        sfu.handle_timeout(now);
        while sfu.poll_transmit().is_some() {}
        while sfu.poll_event().is_some() {}
        assert_eq!(sfu.peer_count(), 0, "a closed session is still a peer");
    });
}
