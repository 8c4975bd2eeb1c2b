#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_guest::ssh_agent::fuzz_request(data));
