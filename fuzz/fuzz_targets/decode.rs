//! Random bytes as yiwang/1 frames and messages: never a panic, and whatever decodes re-encodes
//! to the same message.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signaling::testkit::fuzz_decode(data));
