//! Replays this crate's fuzz corpora (fuzz/corpus/) through their entry points on stable Rust.

use weles_test_support::replay_corpus;

#[test]
fn guest_channel_corpus() {
    replay_corpus("guest_channel", weles_proto::guest::fuzz_decode);
}

#[test]
fn http_request_corpus() {
    replay_corpus("http_request", weles_proto::http::fuzz_request);
}

#[test]
fn audit_log_corpus() {
    replay_corpus("audit_log", weles_proto::audit::fuzz_check_log);
}
