//! Random messages (split on newlines) into a signaling core after a valid hello: never a panic,
//! and another session stays served.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signaling::testkit::fuzz_core(data));
