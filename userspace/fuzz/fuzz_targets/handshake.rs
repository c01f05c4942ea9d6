//! The destination's handshake: arbitrary bytes as a client hello.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::handshake(data));
