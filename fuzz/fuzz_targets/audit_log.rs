#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weles_proto::audit::fuzz_check_log(data));
