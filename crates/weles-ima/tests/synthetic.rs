//! Synthetic logs: every template, both byte orders, both formats, hostile input, and the
//! equivalence of the sequential, incremental and parallel verifiers.

use proptest::prelude::*;
use sha1::{Digest as _, Sha1};
use weles_ima::verify::{AcceptAll, Appraise, Finding};
use weles_ima::write::{
    self, ascii_line, binary_entry, binary_legacy_entry, d_ng, d_ngv2, n_ng, template_data,
};
use weles_ima::{
    Bank, ByteOrder, Config, Digest, Entry, HashAlgorithm, LogFormat, ParseErrorKind, Reason,
    Verifier, log::parse_all, verify_parallel,
};

const ORDERS: [ByteOrder; 2] = [ByteOrder::Little, ByteOrder::Big];

/// One entry of every supported template (plus a violation and a custom format).
fn every_template(order: ByteOrder) -> Vec<u8> {
    let mut log = Vec::new();
    let d256 = [0x11u8; 32];
    let sig = [3u8, 2, 4, 1, 2, 3, 4, 0, 2, 0xaa, 0xbb];
    binary_legacy_entry(&mut log, order, 10, &[0x22; 20], b"boot_aggregate", false);
    let ng = template_data(
        order,
        &[&d_ng(HashAlgorithm::Sha256, &d256), &n_ng(b"/usr/bin/ls")],
    );
    binary_entry(&mut log, order, 10, "ima-ng", &ng, false);
    let sigd = template_data(
        order,
        &[
            &d_ng(HashAlgorithm::Sha512, &[0x33; 64]),
            &n_ng(b"/bin/with space"),
            &sig,
        ],
    );
    binary_entry(&mut log, order, 10, "ima-sig", &sigd, false);
    let nosig = template_data(
        order,
        &[
            &d_ng(HashAlgorithm::Sha1, &[0x34; 20]),
            &n_ng(b"/bin/nosig"),
            b"",
        ],
    );
    binary_entry(&mut log, order, 10, "ima-sig", &nosig, false);
    let buf = b"root=/dev/vda ro";
    let bufd = template_data(
        order,
        &[
            &d_ng(HashAlgorithm::Sha256, Bank::Sha256.hash(&[buf]).as_bytes()),
            &n_ng(b"kexec-cmdline"),
            buf,
        ],
    );
    binary_entry(&mut log, order, 10, "ima-buf", &bufd, false);
    let ngv2 = template_data(
        order,
        &[
            &d_ngv2("ima", HashAlgorithm::Sha384, &[0x44; 48]),
            &n_ng(b"/etc/v2"),
        ],
    );
    binary_entry(&mut log, order, 10, "ima-ngv2", &ngv2, false);
    let sigv2 = template_data(
        order,
        &[
            &d_ngv2("verity", HashAlgorithm::Sha256, &d256),
            &n_ng(b"/etc/verity"),
            &sig,
        ],
    );
    binary_entry(&mut log, order, 10, "ima-sigv2", &sigv2, false);
    let modsig = template_data(
        order,
        &[
            &d_ng(HashAlgorithm::Sha256, &d256),
            &n_ng(b"/lib/modules/x.ko"),
            b"",
            &d_ng(HashAlgorithm::Sha256, &[0x55; 32]),
            &[0x30, 0x00],
        ],
    );
    binary_entry(&mut log, order, 10, "ima-modsig", &modsig, false);
    binary_entry(&mut log, order, 10, "d-ng|n-ng|sig", &sigd, false);
    let md5 = template_data(
        order,
        &[&d_ng(HashAlgorithm::Md5, &[0x66; 16]), &n_ng(b"/old")],
    );
    binary_entry(&mut log, order, 11, "ima-ng", &md5, false);
    let viol = template_data(
        order,
        &[&d_ng(HashAlgorithm::Sha256, &[0; 32]), &n_ng(b"/etc/raced")],
    );
    binary_entry(&mut log, order, 10, "ima-ng", &viol, true);
    log
}

fn ascii_of(bin: &[u8], order: ByteOrder) -> Vec<u8> {
    let (_, entries) = parse_all(bin, Default::default()).unwrap();
    let mut out = String::new();
    for e in &entries {
        out.push_str(&ascii_line(e, order).unwrap());
        out.push('\n');
    }
    out.into_bytes()
}

/// Replays `bank` over the entries on PCR 10 with the kernel's rules, written out independently.
fn manual_replay(entries: &[Entry<'_>], bank: Bank) -> Digest {
    let mut pcr = bank.zero();
    for e in entries.iter().filter(|e| e.pcr == 10) {
        let d = if e.template_hash == [0; 20] {
            Digest::filled(bank.algorithm(), 0xff)
        } else if &*e.template_name == "ima" {
            let mut padded = e.name_bytes().to_vec();
            padded.resize(256, 0);
            bank.hash(&[&e.data[..20], &padded])
        } else {
            bank.hash(&[&e.data])
        };
        pcr = bank.extend(&pcr, &d);
    }
    pcr
}

#[test]
fn every_template_parses_in_both_byte_orders_and_both_formats() {
    for order in ORDERS {
        let bin = every_template(order);
        assert_eq!(LogFormat::detect(&bin), LogFormat::Binary(order));
        let (_, entries) = parse_all(&bin, Default::default()).unwrap();
        assert_eq!(entries.len(), 11);
        for e in &entries {
            assert!(e.template.is_some(), "{}", e.template_name);
            assert!(e.template_hash_ok(), "{}", e.template_name);
        }
        assert_eq!(entries[0].name_bytes(), b"boot_aggregate");
        assert_eq!(entries[2].name_bytes(), b"/bin/with space");
        assert_eq!(entries[2].signature().unwrap().len(), 11);
        assert_eq!(entries[3].signature(), None);
        assert_eq!(entries[4].buffer(), Some(&b"root=/dev/vda ro"[..]));
        assert_eq!(
            entries[5].file_digest_value().unwrap().algorithm(),
            HashAlgorithm::Sha384
        );
        assert_eq!(
            entries[6].file_digest().unwrap().1,
            weles_ima::template::DigestType::Verity
        );
        assert!(entries[7].modsig().is_some());
        assert_eq!(entries[9].pcr, 11);
        assert_eq!(
            entries[9].file_digest_value().unwrap().algorithm(),
            HashAlgorithm::Md5
        );
        assert!(entries[10].is_violation());

        // The ASCII form rebuilds byte-identical template data (hence identical hashes).
        let asc = ascii_of(&bin, order);
        let mut v = Verifier::new(Config {
            banks: Bank::ALL.to_vec(),
            ..Config::default()
        });
        if order == ByteOrder::Big {
            // ASCII carries no byte order; a big-endian guest's hashes cover big-endian lengths.
            let e = v.verify_all(&asc, &AcceptAll);
            assert!(e.is_ok());
            assert!(
                v.violations()
                    .iter()
                    .all(|x| x.reason == Reason::TemplateHashMismatch)
            );
            continue;
        }
        v.verify_all(&asc, &AcceptAll).unwrap();
        assert!(v.violations().is_empty(), "{:?}", v.violations());
        let (_, asc_entries) = parse_all(&asc, Default::default()).unwrap();
        for (a, b) in asc_entries.iter().zip(&entries) {
            assert_eq!(a.data, b.data, "entry {}", a.index);
        }
        for bank in Bank::ALL {
            assert_eq!(
                v.state().pcr(bank),
                Some(&manual_replay(&entries, bank)),
                "{bank}"
            );
        }
    }
}

#[test]
fn big_endian_binary_replays_like_little_endian_by_the_same_rules() {
    let bin = every_template(ByteOrder::Big);
    let (_, entries) = parse_all(&bin, Default::default()).unwrap();
    let mut v = Verifier::new(Config {
        banks: Bank::ALL.to_vec(),
        ..Config::default()
    });
    v.verify_all(&bin, &AcceptAll).unwrap();
    assert!(v.violations().is_empty(), "{:?}", v.violations());
    for bank in Bank::ALL {
        assert_eq!(v.state().pcr(bank), Some(&manual_replay(&entries, bank)));
    }
}

#[test]
fn legacy_template_hash_pads_the_name_to_256_bytes() {
    let mut log = Vec::new();
    binary_legacy_entry(&mut log, ByteOrder::Little, 10, &[7; 20], b"/bin/sh", false);
    let (_, e) = parse_all(&log, Default::default()).unwrap();
    let mut expected = Sha1::new();
    expected.update([7u8; 20]);
    expected.update(b"/bin/sh");
    expected.update([0u8; 256 - 7]);
    assert_eq!(e[0].template_hash, <[u8; 20]>::from(expected.finalize()));
    assert!(e[0].template_hash_ok());
}

#[test]
fn every_truncation_is_reported_at_the_entry_it_cuts() {
    let bin = every_template(ByteOrder::Little);
    let (_, entries) = parse_all(&bin, Default::default()).unwrap();
    let starts: Vec<usize> = entries.iter().map(|e| e.offset as usize).collect();
    for cut in 1..bin.len() {
        match parse_all(&bin[..cut], Default::default()) {
            Ok(_) => assert!(starts.contains(&cut), "cut {cut} accepted"),
            Err(e) => {
                assert!(e.is_truncation(), "cut {cut}: {e}");
                let idx = starts.iter().rposition(|s| *s < cut).unwrap();
                assert_eq!(
                    (e.index, e.offset),
                    (idx as u64, starts[idx] as u64),
                    "cut {cut}"
                );
                assert!(
                    e.to_string()
                        .contains(&format!("byte offset {}", starts[idx]))
                );
            }
        }
    }
}

fn header(pcr: u32, name: &str) -> Vec<u8> {
    let mut v = pcr.to_le_bytes().to_vec();
    v.extend([1u8; 20]);
    v.extend((name.len() as u32).to_le_bytes());
    v.extend(name.as_bytes());
    v
}

#[test]
fn hostile_lengths_are_refused_without_allocating() {
    let mut huge = header(10, "ima-ng");
    huge.extend(u32::MAX.to_le_bytes());
    let e = parse_all(&huge, Default::default()).unwrap_err();
    assert!(
        matches!(
            e.kind,
            ParseErrorKind::TooLong {
                field: "template_data_len",
                len: 4294967295,
                ..
            }
        ),
        "{e}"
    );

    let mut name = 10u32.to_le_bytes().to_vec();
    name.extend([0u8; 20]);
    name.extend(0xffff_fff0u32.to_le_bytes());
    let e = parse_all(&name, Default::default()).unwrap_err();
    assert!(
        matches!(
            e.kind,
            ParseErrorKind::TooLong {
                field: "template_name_len",
                ..
            }
        ),
        "{e}"
    );

    let mut legacy = header(10, "ima");
    legacy.extend([0u8; 20]);
    legacy.extend(1000u32.to_le_bytes());
    let e = parse_all(&legacy, Default::default()).unwrap_err();
    assert!(
        matches!(e.kind, ParseErrorKind::TooLong { field: "n", .. }),
        "{e}"
    );
}

#[test]
fn malformed_entries_name_what_is_wrong() {
    let order = ByteOrder::Little;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (header(24, "ima-ng"), "PCR index 24"),
        (
            {
                let mut v = header(10, "ima\u{7}ng");
                v.extend(0u32.to_le_bytes());
                v
            },
            "template name",
        ),
        (
            {
                let mut v = header(10, "ima-ng");
                let data = [&40u32.to_le_bytes()[..], b"sha256:\0"].concat();
                v.extend((data.len() as u32).to_le_bytes());
                v.extend(data);
                v
            },
            "field d-ng claims 40 bytes",
        ),
        (
            {
                let mut v = header(10, "ima-ng");
                let mut data = template_data(
                    order,
                    &[&d_ng(HashAlgorithm::Sha256, &[0; 32]), &n_ng(b"/x")],
                );
                data.extend([9, 9]);
                v.extend((data.len() as u32).to_le_bytes());
                v.extend(data);
                v
            },
            "2 bytes of template data follow",
        ),
        (
            {
                let mut v = header(10, "ima-ng");
                let data =
                    template_data(order, &[&d_ng(HashAlgorithm::Sha256, &[0; 32]), b"/no-nul"]);
                v.extend((data.len() as u32).to_le_bytes());
                v.extend(data);
                v
            },
            "not NUL-terminated",
        ),
        (
            {
                let mut v = header(10, "ima-ng");
                let data = template_data(
                    order,
                    &[&d_ng(HashAlgorithm::Sha256, &[0; 31]), &n_ng(b"/x")],
                );
                v.extend((data.len() as u32).to_le_bytes());
                v.extend(data);
                v
            },
            "sha256 digest must be 32 bytes, found 31",
        ),
        (b"\xff\xff\xff\xff garbage".to_vec(), "not a TPM PCR"),
    ];
    for (bytes, want) in cases {
        let e = parse_all(&bytes, Default::default()).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        assert!(
            e.to_string().starts_with("entry 0 at byte offset 0: "),
            "{e}"
        );
    }
}

#[test]
fn ascii_errors_give_column_and_line_entry() {
    let good = format!(
        "10 {} ima-ng sha256:{} /bin/a\n",
        "ab".repeat(20),
        "00".repeat(32)
    );
    let cases = [
        (
            format!("{good}10 abc ima-ng sha256:00 /x\n"),
            "entry 1 at byte offset",
            "column 3: template hash is not 40 hex digits",
        ),
        (format!("{good}\n"), "entry 1", "empty line"),
        (
            format!(
                "{good}10 {} ima-sig sha256:{} /x zz\n",
                "ab".repeat(20),
                "00".repeat(32)
            ),
            "entry 1",
            "field sig is not hexadecimal",
        ),
        (
            format!("x {} ima-ng sha256:00 /x\n", "ab".repeat(20)),
            "entry 0",
            "not a TPM PCR",
        ),
        (
            format!("{good}10 {}\n", "ab".repeat(20)),
            "entry 1",
            "missing template name",
        ),
        (
            format!(
                "{good}10 {} ima-ng sha256:{}\n",
                "ab".repeat(20),
                "00".repeat(32)
            ),
            "entry 1",
            "missing field after d-ng",
        ),
    ];
    for (text, at, want) in cases {
        let e = parse_all(text.as_bytes(), Default::default()).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(at) && s.contains(want),
            "{s} (wanted {at:?} / {want:?})"
        );
    }
}

#[test]
fn unsupported_templates_are_reported_but_still_replayed() {
    let order = ByteOrder::Little;
    let mut log = Vec::new();
    let data = template_data(
        order,
        &[&d_ng(HashAlgorithm::Sha256, &[1; 32]), &n_ng(b"/x"), b"evm"],
    );
    binary_entry(&mut log, order, 10, "evm-sig", &data, false);
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let pcr = manual_replay(&entries, Bank::Sha256);
    let mut v = Verifier::new(Config::default());
    v.expect_pcr(pcr).unwrap();
    v.verify_all(&log, &AcceptAll).unwrap();
    v.check_pcrs();
    assert_eq!(v.violations().len(), 1);
    assert_eq!(v.violations()[0].reason, Reason::UnsupportedTemplate);
    assert_eq!(v.pcr_matched_at(), Some(1));
}

#[test]
fn forged_template_hash_is_caught_and_breaks_the_replay() {
    let order = ByteOrder::Little;
    let mut log = Vec::new();
    let good = template_data(
        order,
        &[&d_ng(HashAlgorithm::Sha256, &[1; 32]), &n_ng(b"/bin/good")],
    );
    binary_entry(&mut log, order, 10, "ima-ng", &good, false);
    let pcr_before = {
        let (_, e) = parse_all(&log, Default::default()).unwrap();
        manual_replay(&e, Bank::Sha256)
    };
    let evil = template_data(
        order,
        &[&d_ng(HashAlgorithm::Sha256, &[2; 32]), &n_ng(b"/bin/evil")],
    );
    let claimed: [u8; 20] = Sha1::digest(&good).into();
    write::binary_entry_with_hash(&mut log, order, 10, "ima-ng", &evil, claimed);
    let mut v = Verifier::new(Config::default());
    v.expect_pcr(pcr_before).unwrap();
    v.verify_all(&log, &AcceptAll).unwrap();
    v.check_pcrs();
    assert_eq!(v.violations()[0].reason, Reason::TemplateHashMismatch);
    assert_eq!(v.violations()[0].path, "/bin/evil");
    // The PCR attests only the first entry.
    assert_eq!(v.pcr_matched_at(), Some(1));
}

#[test]
fn violations_beyond_the_cap_are_counted_not_stored() {
    struct RejectAll;
    impl Appraise for RejectAll {
        fn appraise(&self, _: &Entry<'_>) -> Result<(), Finding> {
            Err(Finding::new(Reason::NotInPolicy, "no"))
        }
    }
    let order = ByteOrder::Little;
    let mut log = Vec::new();
    for i in 0..50u32 {
        let data = template_data(
            order,
            &[
                &d_ng(HashAlgorithm::Sha256, &[1; 32]),
                &n_ng(format!("/f{i}").as_bytes()),
            ],
        );
        binary_entry(&mut log, order, 10, "ima-ng", &data, false);
    }
    let mut v = Verifier::new(Config {
        max_violations: 10,
        ..Config::default()
    });
    v.verify_all(&log, &RejectAll).unwrap();
    assert_eq!(v.violations().len(), 10);
    assert_eq!(v.violations_total(), 50);
}

#[test]
fn incremental_feed_keeps_only_a_bounded_fragment() {
    let bin = every_template(ByteOrder::Little);
    let mut v = Verifier::new(Config::default());
    v.feed(&bin[..bin.len() - 3], &AcceptAll).unwrap();
    assert!(v.pending_bytes() > 0 && v.pending_bytes() < 200);
    assert_eq!(v.state().entries, 10);
    assert!(v.finish(&AcceptAll).unwrap_err().is_truncation());
    // A feed that claims a 4 GiB entry fails at once instead of waiting for 4 GiB.
    let mut w = Verifier::new(Config::default());
    let mut huge = header(10, "ima-ng");
    huge.extend(u32::MAX.to_le_bytes());
    assert!(matches!(
        w.feed(&huge, &AcceptAll).unwrap_err().kind,
        ParseErrorKind::TooLong { .. }
    ));
}

// --- property tests ---------------------------------------------------------------------------

/// Rejects paths whose last byte is even: a deterministic, content-dependent policy.
struct Picky;
impl Appraise for Picky {
    fn appraise(&self, e: &Entry<'_>) -> Result<(), Finding> {
        if e.is_violation() {
            return Err(Finding::new(Reason::ViolationEntry, "violation"));
        }
        match e.name_bytes().last() {
            Some(b) if b % 2 == 0 => Err(Finding::new(Reason::NotInPolicy, "even")),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
enum Spec {
    Ng {
        path: Vec<u8>,
        violation: bool,
        pcr: u32,
    },
    Legacy {
        path: Vec<u8>,
    },
    Sig {
        path: Vec<u8>,
        sig: Vec<u8>,
    },
    Unsupported,
    Forged {
        path: Vec<u8>,
    },
}

fn spec() -> impl Strategy<Value = Spec> {
    let path = proptest::collection::vec(b'!'..=b'~', 1..40).prop_map(|mut p| {
        p.insert(0, b'/');
        p
    });
    prop_oneof![
        6 => (path.clone(), any::<bool>(), prop_oneof![9 => Just(10u32), 1 => Just(11u32)]).prop_map(|(path, violation, pcr)| Spec::Ng { path, violation, pcr }),
        1 => path.clone().prop_map(|path| Spec::Legacy { path }),
        2 => (path.clone(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(path, sig)| Spec::Sig { path, sig }),
        1 => Just(Spec::Unsupported),
        1 => path.prop_map(|path| Spec::Forged { path }),
    ]
}

fn build(specs: &[Spec]) -> Vec<u8> {
    let o = ByteOrder::Little;
    let mut log = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let d = Bank::Sha256.hash(&[&i.to_le_bytes()]);
        match s {
            Spec::Ng {
                path,
                violation,
                pcr,
            } => {
                let data = template_data(
                    o,
                    &[&d_ng(HashAlgorithm::Sha256, d.as_bytes()), &n_ng(path)],
                );
                binary_entry(&mut log, o, *pcr, "ima-ng", &data, *violation);
            }
            Spec::Legacy { path } => {
                binary_legacy_entry(&mut log, o, 10, &[i as u8; 20], path, false)
            }
            Spec::Sig { path, sig } => {
                let data = template_data(
                    o,
                    &[&d_ng(HashAlgorithm::Sha256, d.as_bytes()), &n_ng(path), sig],
                );
                binary_entry(&mut log, o, 10, "ima-sig", &data, false);
            }
            Spec::Unsupported => binary_entry(&mut log, o, 10, "evm-sig", b"opaque", false),
            Spec::Forged { path } => {
                let data = template_data(
                    o,
                    &[&d_ng(HashAlgorithm::Sha256, d.as_bytes()), &n_ng(path)],
                );
                write::binary_entry_with_hash(&mut log, o, 10, "ima-ng", &data, [7; 20]);
            }
        }
    }
    log
}

fn sequential(bytes: &[u8], expected: &[Digest]) -> weles_ima::Report {
    let mut v = Verifier::new(Config {
        banks: vec![],
        ..Config::default()
    });
    for d in expected {
        v.expect_pcr(*d).unwrap();
    }
    v.verify_all(bytes, &Picky).unwrap();
    v.check_pcrs();
    v.report()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn parallel_and_incremental_equal_sequential(specs in proptest::collection::vec(spec(), 0..60),
                                                  prefix in 0usize..60, chunk in 1usize..600,
                                                  split in 1usize..300, ascii in any::<bool>()) {
        let bin = build(&specs);
        let bytes = if ascii && !specs.iter().any(|s| matches!(s, Spec::Unsupported)) {
            ascii_of(&bin, ByteOrder::Little)
        } else {
            bin.clone()
        };
        let (_, entries) = parse_all(&bin, Default::default()).unwrap();
        let upto = prefix.min(entries.len());
        let expected = [manual_replay(&entries[..upto], Bank::Sha256), manual_replay(&entries, Bank::Sha1)];
        let seq = sequential(&bytes, &expected);

        let config = Config { banks: vec![], chunk_bytes: chunk, ..Config::default() };
        for threads in [1, 2, 3] {
            let (par, _) = verify_parallel(&bytes, &config, &expected, threads, || Ok::<_, ()>(Picky)).unwrap();
            prop_assert_eq!(&par, &seq, "threads {}", threads);
        }

        let mut inc = Verifier::new(Config { banks: vec![], ..Config::default() });
        for d in &expected { inc.expect_pcr(*d).unwrap(); }
        for c in bytes.chunks(split) { inc.feed(c, &Picky).unwrap(); }
        inc.finish(&Picky).unwrap();
        inc.check_pcrs();
        prop_assert_eq!(&inc.report(), &seq);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_all(&bytes, Default::default());
        let mut v = Verifier::new(Config::default());
        let _ = v.verify_all(&bytes, &Picky);
        let _ = verify_parallel(&bytes, &Config { chunk_bytes: 16, ..Config::default() }, &[], 2, || Ok::<_, ()>(Picky));
    }

    #[test]
    fn mutated_logs_never_panic(specs in proptest::collection::vec(spec(), 1..8), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bin = build(&specs);
        let i = at.index(bin.len());
        bin[i] = byte;
        let _ = parse_all(&bin, Default::default());
        let _ = verify_parallel(&bin, &Config { chunk_bytes: 32, ..Config::default() }, &[], 2, || Ok::<_, ()>(Picky));
    }
}

#[test]
fn replay_after_finds_recent_extend_points_and_forgets_older_ones() {
    let log = every_template(ByteOrder::Little);
    let (_, entries) = parse_all(&log, Default::default()).expect("parses");
    let on_pcr10: Vec<&Entry<'_>> = entries.iter().filter(|e| e.pcr == 10).collect();
    assert!(
        on_pcr10.len() >= 4,
        "the fixture extends PCR 10 several times"
    );
    let mut v = Verifier::new(Config {
        banks: vec![Bank::Sha256],
        replay_history: 2,
        ..Config::default()
    });
    v.verify_all(&log, &AcceptAll).expect("verifies");
    let n = v.state().extends;
    assert_eq!(n, on_pcr10.len() as u64);
    let at = |k: usize| {
        manual_replay(
            &on_pcr10[..k]
                .iter()
                .map(|e| (*e).clone())
                .collect::<Vec<_>>(),
            Bank::Sha256,
        )
    };
    assert_eq!(v.replay_after(n), Some(&[at(n as usize)][..]));
    assert_eq!(v.replay_after(n - 1), Some(&[at(n as usize - 1)][..]));
    assert_eq!(v.replay_after(n - 2), Some(&[at(n as usize - 2)][..]));
    assert_eq!(v.replay_after(n - 3), None, "older than the history");
    assert_eq!(v.replay_after(n + 1), None, "ahead of the log");

    // Without a history only the current point is known.
    let mut v = Verifier::new(Config {
        banks: vec![Bank::Sha256],
        ..Config::default()
    });
    v.verify_all(&log, &AcceptAll).expect("verifies");
    assert!(v.replay_after(n).is_some());
    assert_eq!(v.replay_after(n - 1), None);
}
