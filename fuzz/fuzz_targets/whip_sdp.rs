//! The `whip_sdp` target: see bodies/whip_sdp.rs (the same body replays the corpus in `cargo test`).
#![no_main]
#[path = "../bodies/whip_sdp.rs"]
mod body;
libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
