//! Random bytes on a MAVLink port: never a panic, and the frames found do not depend on how the
//! bytes were chunked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| drone_bridge::frame::fuzz_decode(data));
