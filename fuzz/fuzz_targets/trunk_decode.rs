//! Random bytes as a trunk control stream: never a panic, and whatever decodes re-encodes to the
//! same message.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| trunk::testkit::fuzz_decode(data));
