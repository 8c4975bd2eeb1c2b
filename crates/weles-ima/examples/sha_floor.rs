//! The physical floor of IMA verification: SHA-256 over exactly the bytes a verifier must hash.
//!
//!     cargo run --release -p weles-ima --example sha_floor -- LOG
//!
//! Per entry on PCR 10: the template data twice (SHA-1 template-hash check, SHA-256 bank digest)
//! and one 64-byte PCR extend. All of it is timed here as SHA-256 on one core, message by message,
//! and printed as JSON.

use std::time::Instant;

use sha2::{Digest as _, Sha256};
use weles_ima::log::parse_all;

fn main() {
    let path = std::env::args().nth(1).expect("usage: sha_floor LOG");
    let bytes = std::fs::read(&path).expect("read log");
    let (_, entries) = parse_all(&bytes, Default::default()).expect("parse log");
    let messages: Vec<Vec<u8>> = entries.iter().map(|e| e.data.to_vec()).collect();
    let extend = [0u8; 64];
    let mut best = f64::MAX;
    let mut sink = 0u8;
    for _ in 0..5 {
        let t = Instant::now();
        for m in &messages {
            sink ^= Sha256::digest(m)[0];
            sink ^= Sha256::digest(m)[0];
            sink ^= Sha256::digest(extend)[0];
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let hashed: usize = messages.iter().map(|m| 2 * m.len() + 64).sum();
    println!(
        "{{\"entries\": {}, \"bytes_hashed\": {hashed}, \"floor_s\": {best:.6}, \"floor_us_per_entry\": {:.4}, \"sink\": {sink}}}",
        messages.len(),
        best / messages.len() as f64 * 1e6
    );
}
