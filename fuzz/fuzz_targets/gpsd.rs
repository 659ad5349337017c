//! Random bytes as gpsd's JSON reports: never a panic, and every fix is a valid position.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| field_client::gpsd::fuzz_parse(data));
