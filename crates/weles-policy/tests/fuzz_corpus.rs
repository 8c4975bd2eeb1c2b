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
fn policy_toml_corpus() {
    for (name, data) in corpus("policy_toml") {
        let t = std::time::Instant::now();
        weles_policy::fuzz_targets::policy_toml(&data);
        assert!(t.elapsed().as_secs() < 5, "{name} took {:?}", t.elapsed());
    }
}

#[test]
fn policy_keylime_corpus() {
    for (name, data) in corpus("policy_keylime") {
        let t = std::time::Instant::now();
        weles_policy::fuzz_targets::policy_keylime(&data);
        assert!(t.elapsed().as_secs() < 5, "{name} took {:?}", t.elapsed());
    }
}

#[test]
fn ima_signature_corpus() {
    for (name, data) in corpus("ima_signature") {
        let t = std::time::Instant::now();
        weles_policy::fuzz_targets::ima_signature(&data);
        assert!(t.elapsed().as_secs() < 5, "{name} took {:?}", t.elapsed());
    }
}
