#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_tpm::event_log::fuzz_parse(data));
