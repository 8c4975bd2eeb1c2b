//! Helpers shared by the WELES crates' tests. Not shipped: only `[dev-dependencies]` name it.

use std::path::PathBuf;

/// Replays every input the fuzzer kept for `target` (fuzz/corpus/TARGET, in name order) through
/// its fuzz entry point on stable Rust, so each — including past crashes, once fixed — stays a
/// regression test. An input that takes over 5 s is a failure too (a hang is a bug); an empty or
/// missing corpus is a failure.
pub fn replay_corpus(target: &str, entry: impl Fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    for f in files {
        let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let t = std::time::Instant::now();
        entry(&data);
        assert!(
            t.elapsed().as_secs() < 5,
            "{} took {:?}",
            f.display(),
            t.elapsed()
        );
    }
}
