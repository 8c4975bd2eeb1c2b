//! Verification cost with the policy already loaded, on one core:
//!
//! - the whole log through the sequential `Verifier` (template hashes, PCR replay and match, policy
//!   judgement of every entry): the number to hold against the SHA-256 floor (`sha_floor`);
//! - incremental: verify all but the last TAIL entries, save the state, then time resuming from it
//!   and verifying only the tail.
//!
//!     cargo run --release -p weles-cli --example bench_verify -- LOG POLICY PCR10 TAIL
//!
//! LOG is a binary measurement list; PCR10 is `BANK:HEX` after the whole log.

use std::time::Instant;

use weles_ima::log::parse_all;
use weles_ima::{Config, Digest, Verifier};
use weles_policy::Policy;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (log, policy, pcr, tail): (_, _, _, usize) =
        (&a[1], &a[2], &a[3], a[4].parse().expect("TAIL"));
    let bytes = std::fs::read(log).expect("read log");
    let policy =
        Policy::load(&std::fs::read(policy).expect("read policy"), policy).expect("policy");
    let pcr = Digest::parse(pcr).expect("PCR10");
    let (_, entries) = parse_all(&bytes, Default::default()).expect("parse");
    let cut = entries[entries.len() - tail].offset as usize;
    let config = Config {
        banks: vec![pcr.algorithm().bank().expect("bank")],
        ..Config::default()
    };
    let mut full = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut v = Verifier::new(config.clone());
        v.expect_pcr(pcr).expect("bank");
        v.verify_all(&bytes, &policy).expect("log");
        v.check_pcrs();
        assert_eq!(v.violations_total(), 0, "the benchmark log must comply");
        full = full.min(t.elapsed().as_secs_f64());
    }
    let mut head = Verifier::new(config.clone());
    head.feed(&bytes[..cut], &policy).expect("head");
    let saved = head.state().clone();
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        let mut v = Verifier::resume(config.clone(), saved.clone());
        v.expect_pcr(pcr).expect("bank");
        v.feed(&bytes[cut..], &policy).expect("tail");
        v.check_pcrs();
        assert_eq!(
            v.pcr_matched_at(),
            Some(entries.len() as u64),
            "tail must replay to the PCR"
        );
        assert_eq!(v.violations_total(), 0);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{{\"entries\": {}, \"verify_one_core_s\": {full:.6}, \"tail_entries\": {tail}, \"tail_best_of_20_ms\": {:.4}}}",
        entries.len(),
        best * 1e3
    );
}
