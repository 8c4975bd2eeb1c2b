#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_ima::fuzz_targets::ima_ascii(data));
