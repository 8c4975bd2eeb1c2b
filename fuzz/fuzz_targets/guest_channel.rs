#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_proto::guest::fuzz_decode(data));
