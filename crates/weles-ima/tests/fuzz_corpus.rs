//! Replays the fuzzing corpora (fuzz/corpus/) through the fuzz entry points on stable Rust, so
//! every input the fuzzer ever kept — including past crashes, once fixed — stays a regression test.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn ima_binary_corpus() {
    for (name, data) in corpus("ima_binary") {
        let t = std::time::Instant::now();
        weles_ima::fuzz_targets::ima_binary(&data);
        assert!(t.elapsed().as_secs() < 5, "{name} took {:?}", t.elapsed());
    }
}

#[test]
fn ima_ascii_corpus() {
    for (name, data) in corpus("ima_ascii") {
        let t = std::time::Instant::now();
        weles_ima::fuzz_targets::ima_ascii(&data);
        assert!(t.elapsed().as_secs() < 5, "{name} took {:?}", t.elapsed());
    }
}
