//! Replays the guest-channel and HTTP fuzz corpora (fuzz/corpus/) on stable Rust.

fn replay(target: &str, f: fn(&[u8])) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
fn guest_channel_corpus() {
    replay("guest_channel", weles_proto::guest::fuzz_decode);
}

#[test]
fn http_request_corpus() {
    replay("http_request", weles_proto::http::fuzz_request);
}

#[test]
fn audit_log_corpus() {
    replay("audit_log", weles_proto::audit::fuzz_check_log);
}
