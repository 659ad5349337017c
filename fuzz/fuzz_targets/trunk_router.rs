//! A script of random inputs (trunks, control messages, viewers, publishers, time) into one trunk
//! router: never a panic, and outputs stay sane.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| trunk::testkit::fuzz_router(data));
