//! Random bytes on a GPS receiver's serial line: never a panic, the lines found do not depend on
//! how the bytes were chunked, and every fix is a valid position.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| field_client::nmea::fuzz_parse(data));
