//! Intel DCAP quotes from real SGX and TDX machines (the `dcap-qvl` project's published samples,
//! testdata/tee/README.md) with the collateral Intel's PCS served for them, verified at an
//! injected time within the collateral's life; tampered copies are refused.

use weles_tee::dcap::{self, Body, Collateral, DcapError, Policy};

const NOW: u64 = 1_750_809_600; // 2025-06-25, inside the SGX and TDX collaterals' lives
const NOW_OUTDATED: u64 = 1_772_323_200; // 2026-03-01, inside the outdated TD's collateral's
const NOT_REVOKED: [&str; 6] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
];

fn data(name: &str) -> Vec<u8> {
    let p = format!("{}/../../testdata/tee/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn collateral(name: &str) -> Collateral {
    Collateral::from_json(&String::from_utf8(data(name)).unwrap()).unwrap()
}

fn accepting(statuses: &[&str]) -> Policy {
    Policy {
        accepted_statuses: statuses.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn sgx_quote_verifies_and_reports_what_the_enclave_measured() {
    let quote = data("sgx-quote-dcap.bin");
    let c = collateral("sgx-collateral.json");
    // This platform needs configuration and SW hardening: refused by default, naming why.
    let e = dcap::verify(&quote, &c, NOW, &Policy::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the platform's TCB status is ConfigurationAndSWHardeningNeeded (INTEL-SA-00289, \
         INTEL-SA-00615): not one you accept"
    );
    let e = dcap::verify(
        &quote,
        &c,
        NOW,
        &accepting(&["UpToDate", "SWHardeningNeeded"]),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DcapError::Status {
                component: "platform",
                ..
            }
        ),
        "{e}"
    );
    let v = dcap::verify(
        &quote,
        &c,
        NOW,
        &accepting(&["UpToDate", "ConfigurationAndSWHardeningNeeded"]),
    )
    .unwrap();
    let Body::Enclave(e) = &v.body else {
        panic!("not an enclave quote")
    };
    // Fixed offsets of the v3 quote: header 48, then MRENCLAVE at 64 and MRSIGNER at 128 of the body.
    assert_eq!(e.mr_enclave[..], quote[48 + 64..48 + 96]);
    assert_eq!(e.mr_signer[..], quote[48 + 128..48 + 160]);
    assert_eq!(v.report_data[..], quote[48 + 320..48 + 384]);
    assert_eq!(v.fmspc, "00A067110000");
    let statuses: Vec<_> = v
        .judged
        .iter()
        .map(|j| (j.component, j.status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("platform", "ConfigurationAndSWHardeningNeeded"),
            ("quoting enclave", "UpToDate")
        ]
    );
}

#[test]
fn tdx_quotes_v4_and_v5_verify_and_report_mrtd_and_rtmrs() {
    let quote = data("tdx-quote-v4.bin");
    let v = dcap::verify(
        &quote,
        &collateral("tdx-collateral.json"),
        NOW,
        &Policy::default(),
    )
    .unwrap();
    let statuses: Vec<_> = v
        .judged
        .iter()
        .map(|j| (j.component, j.status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("platform", "UpToDate"),
            ("quoting enclave", "UpToDate"),
            ("TDX module", "UpToDate")
        ]
    );
    let Body::Td(td) = &v.body else {
        panic!("not a TD quote")
    };
    assert_eq!(td.mr_td[..], quote[48 + 136..48 + 184]);
    assert_eq!(td.rtmr[3][..], quote[48 + 472..48 + 520]);
    assert_eq!(v.report_data[..], quote[48 + 520..48 + 584]);

    // A TD 1.5 quote (version 5) whose platform's PCK TCB (SGX component 8 is 3) is below every
    // level Intel lists for its FMSPC (all need 5): every signature checks out, the TCB does not.
    let quote = data("tdx-quote-v5-outdated.bin");
    let c = collateral("tdx-outdated-collateral.json");
    let e = dcap::verify(&quote, &c, NOW_OUTDATED, &accepting(&NOT_REVOKED)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the platform: below every TCB level Intel lists for this FMSPC"
    );
    let parsed = dcap::quote::parse(&quote).unwrap();
    assert_eq!(parsed.version, 5);
    let Body::Td(td) = &parsed.body else {
        panic!("not a TD quote")
    };
    assert!(td.tee_tcb_svn2.is_some(), "a TD 1.5 body");
    // Its report data edited: the version-5 signature covers the body descriptor and body.
    let mut q = quote.clone();
    q[54 + 520] ^= 1;
    assert_eq!(
        dcap::verify(&q, &c, NOW_OUTDATED, &accepting(&NOT_REVOKED)).unwrap_err(),
        DcapError::Signature("the attestation key did not sign this quote")
    );
}

#[test]
fn tampered_quotes_are_refused() {
    let quote = data("sgx-quote-dcap.bin");
    let c = collateral("sgx-collateral.json");
    let p = accepting(&NOT_REVOKED);
    // The report data (what binds the manager's nonce and keys).
    let mut q = quote.clone();
    q[48 + 320] ^= 1;
    assert_eq!(
        dcap::verify(&q, &c, NOW, &p).unwrap_err(),
        DcapError::Signature("the attestation key did not sign this quote")
    );
    // The quoting enclave's report (after header, body, length, signature, key).
    let mut q = quote.clone();
    q[48 + 384 + 4 + 128 + 10] ^= 1;
    assert_eq!(
        dcap::verify(&q, &c, NOW, &p).unwrap_err(),
        DcapError::Signature("the PCK key did not sign the quoting enclave's report")
    );
    // The attestation key itself (the QE report no longer binds it).
    let mut q = quote.clone();
    q[48 + 384 + 4 + 64 + 5] ^= 1;
    assert!(dcap::verify(&q, &c, NOW, &p).is_err());
    // A PCK chain byte inside a certificate.
    let mut q = quote.clone();
    let at = q
        .windows(27)
        .position(|w| w == b"-----BEGIN CERTIFICATE-----")
        .unwrap()
        + 300;
    q[at] = if q[at] == b'A' { b'B' } else { b'A' };
    assert!(matches!(
        dcap::verify(&q, &c, NOW, &p).unwrap_err(),
        DcapError::Certificate { .. }
    ));
    // Every truncation is an error naming a field, never a panic.
    for n in 0..quote.len() {
        let e = dcap::quote::parse(&quote[..n]);
        assert!(
            matches!(e, Err(DcapError::Quote { .. })),
            "truncated at {n}"
        );
    }
    assert_eq!(
        dcap::quote::parse(&quote[..100]).unwrap_err().to_string(),
        "the quote, byte 48 (body): needs 384 bytes, 52 left"
    );
}

#[test]
fn collateral_must_be_intels_current_and_for_this_platform() {
    let quote = data("sgx-quote-dcap.bin");
    let p = accepting(&NOT_REVOKED);
    let c = collateral("sgx-collateral.json");
    // Expired (after nextUpdate) and not yet issued.
    let e = dcap::verify(&quote, &c, 1_760_000_000, &p).unwrap_err();
    assert!(
        e.to_string().contains("expired") || e.to_string().contains("not valid"),
        "{e}"
    );
    let e = dcap::verify(&quote, &c, 1_700_000_000, &p).unwrap_err();
    assert!(matches!(e, DcapError::Collateral { .. }), "{e}");
    // A TCB info edited after Intel signed it.
    let mut edited = c.clone();
    edited.tcb_info = edited
        .tcb_info
        .replace("ConfigurationAndSWHardeningNeeded", "UpToDate");
    let e = dcap::verify(&quote, &edited, NOW, &p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the TCB info: Intel's signature over it does not verify"
    );
    // A signed TCB info and QE identity, but for TDX: wrong platform.
    let tdx = collateral("tdx-collateral.json");
    let mut mixed = c.clone();
    mixed.tcb_info = tdx.tcb_info.clone();
    mixed.tcb_info_signature = tdx.tcb_info_signature.clone();
    let e = dcap::verify(&quote, &mixed, NOW, &p).unwrap_err();
    assert!(
        e.to_string().contains("the TCB info: it is for \"TDX\""),
        "{e}"
    );
    let mut mixed = c.clone();
    mixed.qe_identity = tdx.qe_identity.clone();
    mixed.qe_identity_signature = tdx.qe_identity_signature.clone();
    let e = dcap::verify(&quote, &mixed, NOW, &p).unwrap_err();
    assert!(e.to_string().contains("TD_QE"), "{e}");
    // The PCK CRL of another CA (TDX's platform CA, not this quote's processor CA).
    let mut mixed = c.clone();
    mixed.pck_crl = tdx.pck_crl.clone();
    let e = dcap::verify(&quote, &mixed, NOW, &p).unwrap_err();
    assert!(e.to_string().starts_with("the PCK CRL: issued by"), "{e}");
    // A root CA CRL that is not Intel's root's (a CRL signed by the PCK CA).
    let mut mixed = c.clone();
    mixed.root_ca_crl = c.pck_crl.clone();
    let e = dcap::verify(&quote, &mixed, NOW, &p).unwrap_err();
    assert!(e.to_string().starts_with("the root CA CRL"), "{e}");
    // Not a bundle at all.
    assert!(Collateral::from_json("{}").is_err());
}
