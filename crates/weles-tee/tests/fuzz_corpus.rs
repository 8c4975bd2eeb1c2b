//! Replays this crate's fuzz corpus (fuzz/corpus/) through its entry point on stable Rust.

use weles_test_support::replay_corpus;

#[test]
fn snp_report_corpus() {
    replay_corpus("snp_report", weles_tee::snp::fuzz_parse);
}

#[test]
fn dcap_quote_corpus() {
    replay_corpus("dcap_quote", weles_tee::dcap::fuzz_parse);
}
