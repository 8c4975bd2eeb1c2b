//! Replays this crate's fuzz corpora (fuzz/corpus/) through their entry points on stable Rust.

use weles_test_support::replay_corpus;

#[test]
fn tpm_public_corpus() {
    replay_corpus("tpm_public", weles_tpm::public::fuzz_parse);
}
