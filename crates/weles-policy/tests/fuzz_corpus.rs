//! Replays this crate's fuzz corpora (fuzz/corpus/) through their entry points on stable Rust.

use weles_test_support::replay_corpus;

#[test]
fn policy_toml_corpus() {
    replay_corpus("policy_toml", weles_policy::fuzz_targets::policy_toml);
}

#[test]
fn policy_keylime_corpus() {
    replay_corpus("policy_keylime", weles_policy::fuzz_targets::policy_keylime);
}

#[test]
fn ima_signature_corpus() {
    replay_corpus("ima_signature", weles_policy::fuzz_targets::ima_signature);
}
