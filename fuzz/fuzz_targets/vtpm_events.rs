#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_vtpm::fuzz_targets::vtpm_events(data));
