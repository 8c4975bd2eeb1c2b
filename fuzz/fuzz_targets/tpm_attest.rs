#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_tpm::attest::fuzz_parse(data));
