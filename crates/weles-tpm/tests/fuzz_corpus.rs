//! Replays this crate's fuzz corpora (fuzz/corpus/) through their entry points on stable Rust.

use weles_test_support::replay_corpus;

#[test]
fn tpm_public_corpus() {
    replay_corpus("tpm_public", weles_tpm::public::fuzz_parse);
}

#[test]
fn tpm_attest_corpus() {
    replay_corpus("tpm_attest", weles_tpm::attest::fuzz_parse);
}

#[test]
fn tpm_ek_public_corpus() {
    replay_corpus("tpm_ek_public", weles_tpm::credential::fuzz_parse);
}

#[test]
fn tpm_event_log_corpus() {
    replay_corpus("tpm_event_log", weles_tpm::event_log::fuzz_parse);
}
