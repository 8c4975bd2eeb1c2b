//! Replays this crate's fuzz corpora (fuzz/corpus/) through their entry points on stable Rust.

use weles_test_support::replay_corpus;

#[test]
fn ima_binary_corpus() {
    replay_corpus("ima_binary", weles_ima::fuzz_targets::ima_binary);
}

#[test]
fn ima_ascii_corpus() {
    replay_corpus("ima_ascii", weles_ima::fuzz_targets::ima_ascii);
}
