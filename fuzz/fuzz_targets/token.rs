//! The `token` target: see bodies/token.rs (the same body replays the corpus in `cargo test`).
#![no_main]
#[path = "../bodies/token.rs"]
mod body;
libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
