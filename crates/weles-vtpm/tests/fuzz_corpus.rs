//! Replays this crate's fuzz corpora (fuzz/corpus/) through their entry points on stable Rust.

use weles_test_support::replay_corpus;

#[test]
fn vtpm_ctrl_corpus() {
    replay_corpus("vtpm_ctrl", weles_vtpm::fuzz_targets::vtpm_ctrl);
}

#[test]
fn vtpm_frame_corpus() {
    replay_corpus("vtpm_frame", weles_vtpm::fuzz_targets::vtpm_frame);
}

#[test]
fn vtpm_events_corpus() {
    replay_corpus("vtpm_events", weles_vtpm::fuzz_targets::vtpm_events);
}
