//! The `sfu_codec` target: see bodies/sfu_codec.rs (the same body replays the corpus in `cargo test`).
#![no_main]
#[path = "../bodies/sfu_codec.rs"]
mod body;
libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
