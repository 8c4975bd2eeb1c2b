//! Replays the tpm_public fuzz corpus (fuzz/corpus/tpm_public) on stable Rust.

#[test]
fn tpm_public_corpus() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/tpm_public");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        weles_tpm::public::fuzz_parse(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
}
