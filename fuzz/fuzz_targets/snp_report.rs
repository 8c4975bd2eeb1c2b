#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_tee::snp::fuzz_parse(data));
