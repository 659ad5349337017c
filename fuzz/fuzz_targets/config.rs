//! The `config` target: see bodies/config.rs (the same body replays the corpus in `cargo test`).
#![no_main]
#[path = "../bodies/config.rs"]
mod body;
libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
