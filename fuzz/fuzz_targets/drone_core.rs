//! The `drone_core` target: see bodies/drone_core.rs (the same body replays the corpus in `cargo test`).
#![no_main]
#[path = "../bodies/drone_core.rs"]
mod body;
libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
