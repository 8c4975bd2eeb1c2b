//! Replays the control-channel and framing fuzz corpora (fuzz/corpus/) on stable Rust.

use std::path::PathBuf;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        f(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
}

#[test]
fn vtpm_ctrl_corpus() {
    replay("vtpm_ctrl", weles_vtpm::fuzz_targets::vtpm_ctrl);
}

#[test]
fn vtpm_frame_corpus() {
    replay("vtpm_frame", weles_vtpm::fuzz_targets::vtpm_frame);
}

#[test]
fn vtpm_events_corpus() {
    replay("vtpm_events", weles_vtpm::fuzz_targets::vtpm_events);
}
