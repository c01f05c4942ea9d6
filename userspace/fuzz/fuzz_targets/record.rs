//! The record parser: arbitrary bytes as a migration stream.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::record_stream(data));
