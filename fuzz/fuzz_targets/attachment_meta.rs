//! The `attachment_meta` target: see bodies/attachment_meta.rs (the same body replays the corpus in `cargo test`).
#![no_main]
#[path = "../bodies/attachment_meta.rs"]
mod body;
libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
