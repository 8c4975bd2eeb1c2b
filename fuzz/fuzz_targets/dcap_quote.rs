#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_tee::dcap::fuzz_parse(data));
