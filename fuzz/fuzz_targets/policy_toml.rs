#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_policy::fuzz_targets::policy_toml(data));
