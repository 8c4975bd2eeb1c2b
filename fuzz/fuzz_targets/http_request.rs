#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_proto::http::fuzz_request(data));
