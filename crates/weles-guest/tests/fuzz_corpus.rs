//! Replays this crate's fuzz corpora (fuzz/corpus/) through their entry points on stable Rust.

use weles_test_support::replay_corpus;

#[test]
fn ssh_agent_corpus() {
    replay_corpus("ssh_agent", weles_guest::ssh_agent::fuzz_request);
}
