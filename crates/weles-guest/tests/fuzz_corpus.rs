//! Replays the ssh_agent fuzz corpus (fuzz/corpus/ssh_agent) on stable Rust.

#[test]
fn ssh_agent_corpus() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ssh_agent");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        weles_guest::ssh_agent::fuzz_request(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
}
