#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_tpm::credential::fuzz_parse(data));
