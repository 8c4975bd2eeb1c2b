//! Intel DCAP quotes (SGX enclaves and TDX trust domains), verified offline against Intel's
//! certificate chain and collateral the tenant supplies, in the order trust flows:
//!
//! 1. Intel's SGX Root CA (built in) → its CRL → the TCB signing certificate → the TCB info
//!    and the QE identity (signed JSON, current at `now`);
//! 2. root → PCK CA → PCK certificate (the quote carries them; neither revoked);
//! 3. the PCK key signed the quoting enclave's report, whose report data binds the
//!    attestation key (SHA-256 of key ‖ QE auth data);
//! 4. the attestation key signed the quote (header and body);
//! 5. the quoting enclave is Intel's (QE identity), the platform's TCB (PCK certificate, and for
//!    a TD its TEE_TCB_SVN) meets a level, the TDX module is Intel's;
//! 6. every component's status is one the tenant accepts (`UpToDate` unless told otherwise;
//!    `Revoked` never), and the TEE is not in debug mode.
//!
//! What the TEE measured (MRENCLAVE/MRSIGNER, MRTD/RTMRs) and its report data are returned
//! for the caller to compare with its reference values. Not modelled: TD 1.5's relaunch
//! advice (TEE_TCB_SVN2), quote body types beyond SGX/TD 1.0/TD 1.5, and quotes without an
//! embedded PCK chain (certification data types 1–4).

mod collateral;
mod pck;
pub mod quote;
mod tcb;
mod time;

pub use collateral::Collateral;
pub use quote::{Body, EnclaveReport, TdReport};
pub use tcb::Judged;

use p256::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DcapError {
    #[error("the quote, byte {offset} ({field}): {why}")]
    Quote {
        offset: usize,
        field: &'static str,
        why: String,
    },
    #[error("{what}: {why}")]
    Certificate { what: &'static str, why: String },
    #[error("{what}: {why}")]
    Collateral { what: &'static str, why: String },
    #[error("{0}")]
    Signature(&'static str),
    #[error("the {component}: {why}")]
    Tcb {
        component: &'static str,
        why: String,
    },
    #[error("the {component}'s TCB status is {status}{advisories}: not one you accept")]
    Status {
        component: &'static str,
        status: String,
        advisories: String,
    },
    #[error("the {0} runs in debug mode: its memory is open to the host")]
    Debug(&'static str),
}

/// What the tenant accepts beyond the chain.
#[derive(Clone, Debug)]
pub struct Policy {
    /// TCB statuses accepted for every component (`Revoked` is refused regardless).
    pub accepted_statuses: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            accepted_statuses: vec!["UpToDate".into()],
        }
    }
}

/// A verified quote: what the TEE measured, its report data, and how current its TCB is.
#[derive(Clone, Debug)]
pub struct Verified {
    pub body: Body,
    pub report_data: [u8; 64],
    pub fmspc: String,
    pub judged: Vec<Judged>,
}

fn p256_key(xy: &[u8; 64]) -> Result<p256::ecdsa::VerifyingKey, DcapError> {
    let mut sec1 = [0u8; 65];
    sec1[0] = 4;
    sec1[1..].copy_from_slice(xy);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
        .map_err(|_| DcapError::Signature("the quote's attestation key is not a P-256 point"))
}

fn crl_bytes(what: &'static str, hex_der: &str) -> Result<Vec<u8>, DcapError> {
    hex::decode(hex_der.trim()).map_err(|_| DcapError::Collateral {
        what,
        why: "not hex DER".into(),
    })
}

/// Verifies `quote` with `collateral` at `now` (seconds since the epoch) under `policy`.
pub fn verify(
    quote_bytes: &[u8],
    collateral: &Collateral,
    now: u64,
    policy: &Policy,
) -> Result<Verified, DcapError> {
    let q = quote::parse(quote_bytes)?;

    // 1. Intel's signed collateral, from the built-in root.
    let root = pck::intel_root()?;
    let root_revoked = crate::x509::check_crl(
        &crl_bytes("the root CA CRL", &collateral.root_ca_crl)?,
        &root,
        now,
    )
    .map_err(|why| DcapError::Collateral {
        what: "the root CA CRL",
        why,
    })?;
    let tcb_signer = pck::intermediate(
        "the TCB info's signing certificate",
        collateral.tcb_info_issuer_chain.as_bytes(),
        &root,
        &root_revoked,
        now,
    )?;
    let tcb_info: collateral::TcbInfo = collateral::signed_json(
        "the TCB info",
        &collateral.tcb_info,
        &collateral.tcb_info_signature,
        &tcb_signer,
        now,
    )?;
    let qe_signer = pck::intermediate(
        "the QE identity's signing certificate",
        collateral.qe_identity_issuer_chain.as_bytes(),
        &root,
        &root_revoked,
        now,
    )?;
    let qe_identity: collateral::QeIdentity = collateral::signed_json(
        "the QE identity",
        &collateral.qe_identity,
        &collateral.qe_identity_signature,
        &qe_signer,
        now,
    )?;

    // 2–4. The quote's own chain of signatures.
    let pck_leaf = pck::verify_chain(
        q.pck_chain,
        &root,
        &root_revoked,
        &crl_bytes("the PCK CRL", &collateral.pck_crl)?,
        now,
    )?;
    {
        use p256::pkcs8::DecodePublicKey;
        use x509_cert::der::Encode;
        let spki = pck_leaf
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| DcapError::Certificate {
                what: "the PCK certificate",
                why: e.to_string(),
            })?;
        let pck_key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).map_err(|_| {
            DcapError::Certificate {
                what: "the PCK certificate",
                why: "its key is not P-256".into(),
            }
        })?;
        let sig = p256::ecdsa::Signature::from_slice(&q.qe_report_signature)
            .map_err(|_| DcapError::Signature("the QE report's signature is malformed"))?;
        pck_key.verify(q.qe_report_raw, &sig).map_err(|_| {
            DcapError::Signature("the PCK key did not sign the quoting enclave's report")
        })?;
    }
    let mut binding = Sha256::new();
    binding.update(q.attestation_key);
    binding.update(q.qe_auth_data);
    let rd = &q.qe_report.report_data;
    if rd[..32] != binding.finalize()[..] || rd[32..].iter().any(|&b| b != 0) {
        return Err(DcapError::Signature(
            "the quoting enclave's report does not bind this attestation key",
        ));
    }
    let sig = p256::ecdsa::Signature::from_slice(&q.signature)
        .map_err(|_| DcapError::Signature("the quote's signature is malformed"))?;
    p256_key(&q.attestation_key)?
        .verify(q.signed, &sig)
        .map_err(|_| DcapError::Signature("the attestation key did not sign this quote"))?;

    // 5. Identities and TCB levels.
    let platform = pck::platform_tcb(&pck_leaf)?;
    let td = match &q.body {
        Body::Td(td) => Some(&**td),
        Body::Enclave(_) => None,
    };
    let mut judged = vec![
        tcb::platform(&tcb_info, &platform, td)?,
        tcb::quoting_enclave(&qe_identity, &q.qe_report, q.is_td())?,
    ];
    if let Some(td) = td {
        judged.extend(tcb::tdx_module(&tcb_info, td)?);
    }

    // 6. The tenant's policy.
    for j in &judged {
        if j.status == "Revoked" || !policy.accepted_statuses.contains(&j.status) {
            return Err(DcapError::Status {
                component: j.component,
                status: j.status.clone(),
                advisories: if j.advisory_ids.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", j.advisory_ids.join(", "))
                },
            });
        }
    }
    match &q.body {
        Body::Enclave(e) if e.attributes[0] & 0x02 != 0 => return Err(DcapError::Debug("enclave")),
        Body::Td(t) if t.td_attributes[0] & 0x01 != 0 => {
            return Err(DcapError::Debug("trust domain"));
        }
        _ => {}
    }
    Ok(Verified {
        report_data: *q.report_data(),
        body: q.body,
        fmspc: hex::encode_upper(platform.fmspc),
        judged,
    })
}

/// Fuzz entry point: parse anything — the quote, its PCK chain and the certificate's SGX
/// extension, or a collateral bundle — never panic.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(q) = quote::parse(data)
        && let Ok(chain) = crate::x509::parse_pem_chain(q.pck_chain)
    {
        let _ = pck::platform_tcb(&chain[0]);
    }
    let _ = Collateral::from_json(&String::from_utf8_lossy(data));
}
