//! Replay of real guest logs (testdata/ima, captured by scripts/capture-ima-fixtures.sh): Debian's
//! 6.1 kernel under QEMU with a swtpm vTPM. The PCR values are what the vTPM reported to the guest.

use std::collections::HashMap;
use std::path::PathBuf;

use weles_ima::verify::AcceptAll;
use weles_ima::{Bank, Config, Digest, HashAlgorithm, LogFormat, Reason, Verifier, boot_aggregate};

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/ima")
        .join(name)
}

fn pcrs(name: &str) -> HashMap<(Bank, u32), Digest> {
    let text = std::fs::read_to_string(fixture_dir(name).join("pcrs.txt")).unwrap();
    text.lines()
        .map(|l| {
            let (key, hex) = l.split_once(' ').unwrap();
            let (bank, idx) = key.split_once(':').unwrap();
            let bank = Bank::from_name(bank).unwrap();
            let d = Digest::parse(&format!("{bank}:{hex}")).unwrap();
            ((bank, idx.parse().unwrap()), d)
        })
        .collect()
}

const CONFIGS: [&str; 4] = [
    "ima-ng-sha256",
    "ima-sig-sha256",
    "ima-sigv2-sha256",
    "ima-legacy-sha1",
];

fn verify(name: &str, file: &str, banks: &[Bank]) -> Verifier {
    let bytes = std::fs::read(fixture_dir(name).join(file)).unwrap();
    let p = pcrs(name);
    let mut v = Verifier::new(Config::default());
    for b in banks {
        v.expect_pcr(p[&(*b, 10)]).unwrap();
    }
    v.verify_all(&bytes, &AcceptAll).unwrap();
    v.check_pcrs();
    v
}

#[test]
fn binary_and_ascii_replay_to_the_vtpm_pcrs_in_both_banks() {
    for name in CONFIGS {
        for file in ["binary_runtime_measurements", "ascii_runtime_measurements"] {
            let v = verify(name, file, &[Bank::Sha1, Bank::Sha256]);
            assert_eq!(v.state().entries, 9, "{name}/{file}");
            assert_eq!(
                v.pcr_matched_at(),
                Some(9),
                "{name}/{file}: {:?}",
                v.violations()
            );
            assert!(
                v.violations().is_empty(),
                "{name}/{file}: {:?}",
                v.violations()
            );
        }
    }
}

#[test]
fn formats_are_detected() {
    for name in CONFIGS {
        let bin = std::fs::read(fixture_dir(name).join("binary_runtime_measurements")).unwrap();
        let asc = std::fs::read(fixture_dir(name).join("ascii_runtime_measurements")).unwrap();
        assert!(matches!(LogFormat::detect(&bin), LogFormat::Binary(_)));
        assert!(matches!(LogFormat::detect(&asc), LogFormat::Ascii(_)));
    }
}

#[test]
fn binary_and_ascii_decode_to_the_same_entries() {
    for name in CONFIGS {
        let bin = std::fs::read(fixture_dir(name).join("binary_runtime_measurements")).unwrap();
        let asc = std::fs::read(fixture_dir(name).join("ascii_runtime_measurements")).unwrap();
        let (_, b) = weles_ima::log::parse_all(&bin, Default::default()).unwrap();
        let (_, a) = weles_ima::log::parse_all(&asc, Default::default()).unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.data, y.data, "{name} entry {}", x.index);
            assert_eq!(x.fields, y.fields);
            assert_eq!(x.template_hash, y.template_hash);
        }
    }
}

#[test]
fn boot_aggregate_is_recomputed_from_pcrs_0_to_9() {
    let p = pcrs("ima-ng-sha256");
    let bank_pcrs: Vec<Digest> = (0..10).map(|i| p[&(Bank::Sha256, i)]).collect();
    let expected = boot_aggregate(Bank::Sha256, &bank_pcrs).unwrap();
    let bin =
        std::fs::read(fixture_dir("ima-ng-sha256").join("binary_runtime_measurements")).unwrap();
    let (_, entries) = weles_ima::log::parse_all(&bin, Default::default()).unwrap();
    assert_eq!(entries[0].name_bytes(), b"boot_aggregate");
    assert_eq!(entries[0].file_digest_value(), Some(expected));

    // Legacy template: SHA-1 over PCRs 0-7 of the sha1 bank.
    let p = pcrs("ima-legacy-sha1");
    let sha1_pcrs: Vec<Digest> = (0..8).map(|i| p[&(Bank::Sha1, i)]).collect();
    let expected = boot_aggregate(Bank::Sha1, &sha1_pcrs).unwrap();
    let bin =
        std::fs::read(fixture_dir("ima-legacy-sha1").join("binary_runtime_measurements")).unwrap();
    let (_, entries) = weles_ima::log::parse_all(&bin, Default::default()).unwrap();
    assert_eq!(entries[0].file_digest_value(), Some(expected));
    assert_eq!(
        entries[0].file_digest_value().unwrap().algorithm(),
        HashAlgorithm::Sha1
    );
}

#[test]
fn violation_entry_extends_all_ones() {
    let bin =
        std::fs::read(fixture_dir("ima-ng-sha256").join("binary_runtime_measurements")).unwrap();
    let (_, entries) = weles_ima::log::parse_all(&bin, Default::default()).unwrap();
    let last = entries.last().unwrap();
    assert!(last.is_violation());
    assert_eq!(last.name_bytes(), b"/etc/weles.conf");
    assert!(last.template_digest(Bank::Sha256).is_all(0xff));
}

#[test]
fn lagging_pcr_matches_at_a_prefix_and_a_wrong_pcr_is_reported() {
    // A PCR read before the last two entries were extended: replay the first 7 entries.
    let bin =
        std::fs::read(fixture_dir("ima-ng-sha256").join("binary_runtime_measurements")).unwrap();
    let (_, entries) = weles_ima::log::parse_all(&bin, Default::default()).unwrap();
    let mut pcr = Bank::Sha256.zero();
    for e in &entries[..7] {
        pcr = Bank::Sha256.extend(&pcr, &e.template_digest(Bank::Sha256));
    }
    let mut v = Verifier::new(Config::default());
    v.expect_pcr(pcr).unwrap();
    v.verify_all(&bin, &AcceptAll).unwrap();
    v.check_pcrs();
    assert_eq!(v.pcr_matched_at(), Some(7));
    assert!(v.violations().is_empty());

    let mut v = Verifier::new(Config::default());
    v.expect_pcr(Digest::filled(HashAlgorithm::Sha256, 0xab))
        .unwrap();
    v.verify_all(&bin, &AcceptAll).unwrap();
    v.check_pcrs();
    assert_eq!(v.pcr_matched_at(), None);
    assert_eq!(v.violations().len(), 1);
    assert_eq!(v.violations()[0].reason, Reason::PcrMismatch);
    assert_eq!(v.violations()[0].index, 9);
}

#[test]
fn tampered_entry_is_a_template_hash_mismatch_at_its_index() {
    let mut bin =
        std::fs::read(fixture_dir("ima-ng-sha256").join("binary_runtime_measurements")).unwrap();
    let (_, entries) = weles_ima::log::parse_all(&bin, Default::default()).unwrap();
    // Flip one byte of entry 2's file digest.
    let e = &entries[2];
    let digest_at = e.offset as usize
        + 4
        + 20
        + 4
        + e.template_name.len()
        + 4
        + e.fields.digest.as_ref().unwrap().bytes.start;
    drop(entries);
    bin[digest_at] ^= 1;
    let mut v = Verifier::new(Config::default());
    v.verify_all(&bin, &AcceptAll).unwrap();
    assert_eq!(v.violations().len(), 1);
    assert_eq!(v.violations()[0].index, 2);
    assert_eq!(v.violations()[0].reason, Reason::TemplateHashMismatch);
    assert_eq!(v.violations()[0].path, "/bin/busybox");
}

#[test]
fn incremental_feeding_in_any_split_equals_one_shot() {
    for name in CONFIGS {
        for file in ["binary_runtime_measurements", "ascii_runtime_measurements"] {
            let bytes = std::fs::read(fixture_dir(name).join(file)).unwrap();
            let one = verify(name, file, &[Bank::Sha256]);
            for chunk in [1usize, 3, 7, 64, 500] {
                let mut v = Verifier::new(Config::default());
                v.expect_pcr(pcrs(name)[&(Bank::Sha256, 10)]).unwrap();
                for c in bytes.chunks(chunk) {
                    v.feed(c, &AcceptAll).unwrap();
                }
                v.finish(&AcceptAll).unwrap();
                assert_eq!(v.state(), one.state(), "{name}/{file} chunk {chunk}");
                assert_eq!(v.pcr_matched_at(), Some(9));
            }
            // Resume from a saved state in the middle.
            let mut first = Verifier::new(Config::default());
            first.feed(&bytes[..bytes.len() / 2], &AcceptAll).unwrap();
            let saved = first.state().clone();
            let rest = &bytes[saved.offset as usize..];
            let mut second = Verifier::resume(Config::default(), saved);
            second.expect_pcr(pcrs(name)[&(Bank::Sha256, 10)]).unwrap();
            second.verify_all(rest, &AcceptAll).unwrap();
            assert_eq!(second.state(), one.state());
            assert_eq!(second.pcr_matched_at(), Some(9));
        }
    }
}
