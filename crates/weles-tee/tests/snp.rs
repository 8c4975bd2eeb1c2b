//! AMD's published sample Milan report and its VCEK (from AMD's key server), verified against
//! the built-in ARK/ASK with an injected clock; tampered copies are refused.

use weles_tee::snp::{self, SnpError};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn sample() -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(format!("{ROOT}/testdata/tee/snp-report-milan.bin")).unwrap(),
        std::fs::read(format!("{ROOT}/testdata/tee/snp-vcek-milan.der")).unwrap(),
    )
}

/// 2027-01-01: inside the sample VCEK's validity (2023-04-03 .. 2030-04-03).
const NOW: u64 = 1_798_761_600;

#[test]
fn the_sample_report_verifies_through_amds_chain() {
    let (report, vcek) = sample();
    let r = snp::verify(&report, &vcek, NOW).unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(
        hex::encode(r.measurement),
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    );
    assert_eq!(r.reported_tcb, [3, 0, 0, 0, 0, 0, 8, 0x73]);
}

#[test]
fn tampered_reports_expired_certificates_and_foreign_chips_are_refused() {
    let (report, vcek) = sample();
    // Any signed byte: the report data, the measurement, the policy.
    for at in [0x08, 0x50, 0x90, 0x29f] {
        let mut t = report.clone();
        t[at] ^= 1;
        assert_eq!(
            snp::verify(&t, &vcek, NOW),
            Err(SnpError::Signature),
            "byte {at:#x}"
        );
    }
    // The signature itself.
    let mut t = report.clone();
    t[0x2a0] ^= 1;
    assert_eq!(snp::verify(&t, &vcek, NOW), Err(SnpError::Signature));
    // Another chip than the VCEK's.
    let mut t = report.clone();
    t[0x1a0] ^= 1;
    assert!(matches!(
        snp::verify(&t, &vcek, NOW),
        Err(SnpError::Chip { .. })
    ));
    // Another TCB than the VCEK certifies.
    let mut t = report.clone();
    t[0x187] = 0x74;
    assert!(matches!(
        snp::verify(&t, &vcek, NOW),
        Err(SnpError::Tcb { .. })
    ));
    // After the VCEK expired; before it was issued.
    for now in [2_000_000_000, 1_650_000_000] {
        assert!(matches!(
            snp::verify(&report, &vcek, now),
            Err(SnpError::Certificate { what: "VCEK", .. })
        ));
    }
    // A VCEK whose signature was tampered with.
    let mut v = vcek.clone();
    let n = v.len();
    v[n - 10] ^= 1;
    assert!(matches!(
        snp::verify(&report, &v, NOW),
        Err(SnpError::Certificate { what: "VCEK", .. })
    ));
    // Not a report at all.
    assert_eq!(
        snp::verify(&report[..100], &vcek, NOW),
        Err(SnpError::Length(100))
    );
    for n in [0, 1, 1183, 1185] {
        let mut b = report.clone();
        b.resize(n, 0);
        assert_eq!(snp::Report::parse(&b), Err(SnpError::Length(n)));
    }
}

/// A certificate table as the host hands it to the guest: VCEK, then an ASK entry, then the
/// zero entry, then the certificates.
fn cert_table(vcek: &[u8]) -> Vec<u8> {
    let vcek_guid = hex::decode("63da758de6644564adc5f4b93be8accd").unwrap();
    let ask_guid = hex::decode("4ab7b379bbac4fe4a02f05aef327c782").unwrap();
    let header = 3 * 24;
    let mut t = Vec::new();
    for (guid, offset, len) in [
        (&ask_guid, header + vcek.len(), 4usize),
        (&vcek_guid, header, vcek.len()),
    ] {
        t.extend_from_slice(guid);
        t.extend_from_slice(&(offset as u32).to_le_bytes());
        t.extend_from_slice(&(len as u32).to_le_bytes());
    }
    t.extend_from_slice(&[0; 24]);
    t.extend_from_slice(vcek);
    t.extend_from_slice(b"ASK!");
    t
}

#[test]
fn the_vcek_comes_from_the_hosts_certificate_table() {
    let (report, vcek) = sample();
    let table = cert_table(&vcek);
    let found = snp::vcek_from_cert_table(&table).unwrap().unwrap();
    assert_eq!(found, vcek.as_slice());
    snp::verify(&report, found, NOW).unwrap();
    // No VCEK entry.
    assert_eq!(snp::vcek_from_cert_table(&[0; 24]), Ok(None));
    // Cut short, or pointing outside the table: named, never a panic.
    for n in 0..table.len() {
        let _ = snp::vcek_from_cert_table(&table[..n]);
    }
    let e = snp::vcek_from_cert_table(&table[..30])
        .unwrap_err()
        .to_string();
    assert!(e.contains("entry 1 at byte 24 is cut short"), "{e}");
    let e = snp::vcek_from_cert_table(&table[..100])
        .unwrap_err()
        .to_string();
    assert!(e.contains("lies outside"), "{e}");
    // A table whose "VCEK" is another certificate is caught by AMD's chain, not trusted.
    let mut forged = table.clone();
    forged[3 * 24 + 200] ^= 1;
    let other = snp::vcek_from_cert_table(&forged).unwrap().unwrap();
    assert!(snp::verify(&report, other, NOW).is_err());
}
