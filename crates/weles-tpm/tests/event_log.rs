//! A real UEFI event log (OVMF with swtpm, testdata/host/README.md) replays to the PCRs its
//! TPM held; tpm2-tools' own replay agrees on every bank; damaged logs are refused by name.

use std::collections::BTreeMap;
use weles_tpm::event_log::{
    ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512, EventLog, event_type_name,
};

fn log_bytes() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/host/uefi-event-log.bin"
    ))
    .unwrap()
}

/// The TPM's own sha256 PCRs after that boot, as the guest kernel read them.
fn tpm_pcrs() -> BTreeMap<u32, Vec<u8>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/host/uefi-pcrs-sha256.txt"
    ))
    .unwrap();
    text.lines()
        .map(|l| {
            let (i, h) = l.split_once(' ').unwrap();
            (i.parse().unwrap(), hex::decode(h).unwrap())
        })
        .collect()
}

#[test]
fn a_real_uefi_log_replays_to_the_tpms_pcrs() {
    let log = EventLog::parse(&log_bytes()).unwrap();
    assert_eq!(
        log.algorithms,
        [
            (ALG_SHA1, 20),
            (ALG_SHA256, 32),
            (ALG_SHA384, 48),
            (ALG_SHA512, 64)
        ]
    );
    assert_eq!(log.startup_locality, 0);
    let kinds: Vec<_> = log
        .events
        .iter()
        .map(|e| event_type_name(e.event_type))
        .collect();
    assert!(
        kinds.contains(&"EV_EFI_BOOT_SERVICES_APPLICATION"),
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "EV_SEPARATOR").count(), 8);
    let replayed = log.replay(ALG_SHA256).unwrap();
    let tpm = tpm_pcrs();
    for pcr in 0..=9u32 {
        match replayed.get(&pcr) {
            Some(v) => assert_eq!(v, &tpm[&pcr], "PCR {pcr}"),
            // Never extended: still zero in the TPM.
            None => assert!(tpm[&pcr].iter().all(|&b| b == 0), "PCR {pcr}"),
        }
    }
}

/// tpm2_eventlog's YAML: bank name → PCR → value.
fn tpm2_tools_replay() -> BTreeMap<String, BTreeMap<u32, String>> {
    let out = std::process::Command::new("tpm2_eventlog")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/host/uefi-event-log.bin"
        ))
        .output()
        .expect("tpm2_eventlog (tpm2-tools) must be installed");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut banks = BTreeMap::new();
    let mut bank = None;
    let mut in_pcrs = false;
    for line in text.lines() {
        if line == "pcrs:" {
            in_pcrs = true;
        } else if in_pcrs
            && line.starts_with("  ")
            && line.trim_end().ends_with(':')
            && !line.starts_with("    ")
        {
            bank = Some(line.trim().trim_end_matches(':').to_owned());
        } else if in_pcrs && let (Some(b), Some((i, v))) = (&bank, line.trim().split_once(" : 0x"))
        {
            banks
                .entry(b.clone())
                .or_insert_with(BTreeMap::new)
                .insert(i.trim().parse().unwrap(), v.to_owned());
        }
    }
    banks
}

#[test]
fn every_bank_agrees_with_tpm2_tools() {
    let log = EventLog::parse(&log_bytes()).unwrap();
    let theirs = tpm2_tools_replay();
    for (alg, name) in [
        (ALG_SHA1, "sha1"),
        (ALG_SHA256, "sha256"),
        (ALG_SHA384, "sha384"),
        (ALG_SHA512, "sha512"),
    ] {
        let ours: BTreeMap<u32, String> = log
            .replay(alg)
            .unwrap()
            .into_iter()
            .map(|(i, v)| (i, hex::encode(v)))
            .collect();
        assert_eq!(Some(&ours), theirs.get(name), "bank {name}");
    }
}

#[test]
fn damaged_logs_are_refused_by_name() {
    let bytes = log_bytes();
    // Every truncation inside an event is an error, never a panic.
    let log = EventLog::parse(&bytes).unwrap();
    let starts: Vec<usize> = log.events.iter().map(|e| e.offset).collect();
    for n in 0..bytes.len() {
        let r = EventLog::parse(&bytes[..n]);
        if starts.contains(&n) {
            assert!(r.is_ok(), "a log cut between events parses ({n})");
        } else {
            assert!(r.is_err(), "cut at {n}");
        }
    }
    let e = EventLog::parse(&bytes[..100]).unwrap_err();
    assert_eq!(e.event, 1);
    assert!(
        e.to_string().starts_with("the event log, event 1 at byte"),
        "{e}"
    );
    // Not a crypto-agile log.
    let mut b = bytes.clone();
    b[32] ^= 1; // inside "Spec ID Event03"
    assert_eq!(EventLog::parse(&b).unwrap_err().field, "Spec ID event");
    // A digest for a bank the header does not declare.
    let second = log.events[1].offset;
    let mut b = bytes.clone();
    b[second + 12] = 0x12;
    assert_eq!(
        EventLog::parse(&b).unwrap_err().field,
        "digests.algorithmId"
    );
    // An absurd event size.
    let mut b = bytes.clone();
    let e1 = &log.events[1];
    let size_at = e1.offset
        + 12
        + log
            .algorithms
            .iter()
            .map(|(_, s)| 2 + usize::from(*s))
            .sum::<usize>();
    b[size_at + 3] = 0x7f;
    assert_eq!(EventLog::parse(&b).unwrap_err().field, "eventSize");
    // A changed digest still parses, and replays to other PCRs: the quote is what catches it.
    let mut b = bytes.clone();
    b[e1.offset + 12 + 2] ^= 1; // first byte of its sha1 digest
    let changed = EventLog::parse(&b).unwrap();
    assert_ne!(
        changed.replay(ALG_SHA1).unwrap()[&e1.pcr],
        log.replay(ALG_SHA1).unwrap()[&e1.pcr]
    );
    assert_eq!(
        changed.replay(ALG_SHA256).unwrap(),
        log.replay(ALG_SHA256).unwrap()
    );
    // A bank that cannot be replayed.
    assert_eq!(log.replay(0x0012).unwrap_err().field, "bank");
}
