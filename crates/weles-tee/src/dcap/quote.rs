//! The DCAP quote's byte layout (Intel SGX ECDSA Quote Library API, appendix "Quote Format";
//! Intel TDX DCAP Quote Generation Library, "TD Quote Format"): version 3 (SGX enclaves),
//! version 4 (enclaves or TDs) and version 5 (either, with a body descriptor). All
//! little-endian.
//!
//! ```text
//! header (48)  version u16 | att_key_type u16 (2: ECDSA P-256) | tee_type u32 (0 SGX, 0x81 TDX)
//!              | qe_svn u16 | pce_svn u16 | qe_vendor_id [16] | user_data [20]
//! v5 only      body_type u16 (1 SGX, 2 TD 1.0, 3 TD 1.5) | body_size u32
//! body         SGX report body (384) or TD report (584; TD 1.5: 648)
//! sig_len u32, then
//!   v3         signature [64] | attestation_key [64] | qe_report [384] | qe_report_sig [64]
//!              | qe_auth_len u16 | qe_auth | cert_type u16 (5) | cert_len u32 | PCK chain (PEM)
//!   v4, v5     signature [64] | attestation_key [64] | cert_type u16 (6) | cert_len u32 |
//!              { qe_report [384] | qe_report_sig [64] | qe_auth_len u16 | qe_auth
//!                | cert_type u16 (5) | cert_len u32 | PCK chain (PEM) }
//! ```
//!
//! The quote's signature covers the header, the v5 descriptor and the body. Parsing is by a
//! bounds-checked reader over untrusted bytes: every error names the field and its offset
//! (fuzzed: `fuzz/fuzz_targets/dcap_quote.rs`). Bytes after the signature data are not
//! signed and not read (recorded quotes carry zero padding there).

use super::DcapError;

/// Intel's quoting enclave vendor id.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
const ATT_KEY_ECDSA_P256: u16 = 2;
const TEE_SGX: u32 = 0;
const TEE_TDX: u32 = 0x81;
const CERT_PCK_CHAIN: u16 = 5;
const CERT_QE_REPORT: u16 = 6;
pub(crate) const REPORT_BODY_LEN: usize = 384;
const TD10_LEN: usize = 584;
const TD15_LEN: usize = 648;

/// An SGX enclave's report body (also the quoting enclave's own report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnclaveReport {
    pub cpu_svn: [u8; 16],
    pub misc_select: u32,
    pub attributes: [u8; 16],
    pub mr_enclave: [u8; 32],
    pub mr_signer: [u8; 32],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    pub report_data: [u8; 64],
}

/// A trust domain's report (TD 1.0; TD 1.5 adds the last two fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReport {
    pub tee_tcb_svn: [u8; 16],
    pub mr_seam: [u8; 48],
    pub mr_signer_seam: [u8; 48],
    pub seam_attributes: [u8; 8],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    pub tee_tcb_svn2: Option<[u8; 16]>,
    pub mr_service_td: Option<[u8; 48]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Enclave(EnclaveReport),
    Td(Box<TdReport>),
}

/// A parsed quote, borrowing the variable parts.
#[derive(Clone, Debug)]
pub struct Quote<'a> {
    pub version: u16,
    pub qe_svn: u16,
    pub pce_svn: u16,
    pub body: Body,
    /// What the attestation key signed: header, descriptor and body.
    pub signed: &'a [u8],
    pub signature: [u8; 64],
    pub attestation_key: [u8; 64],
    /// The quoting enclave's report, raw (signed by the PCK key) and parsed.
    pub qe_report_raw: &'a [u8],
    pub qe_report: EnclaveReport,
    pub qe_report_signature: [u8; 64],
    pub qe_auth_data: &'a [u8],
    /// The PCK certificate chain, PEM: leaf, intermediate CA, root.
    pub pck_chain: &'a [u8],
}

impl Quote<'_> {
    pub fn is_td(&self) -> bool {
        matches!(self.body, Body::Td(_))
    }
    pub fn report_data(&self) -> &[u8; 64] {
        match &self.body {
            Body::Enclave(r) => &r.report_data,
            Body::Td(r) => &r.report_data,
        }
    }
}

/// A cursor over untrusted bytes; every read is bounds-checked and named.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DcapError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(DcapError::Quote {
                offset: self.at,
                field,
                why: format!(
                    "needs {n} bytes, {} left",
                    self.bytes.len().saturating_sub(self.at)
                ),
            });
        };
        let v = &self.bytes[self.at..end];
        self.at = end;
        Ok(v)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DcapError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DcapError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DcapError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn bad(&self, offset: usize, field: &'static str, why: String) -> DcapError {
        DcapError::Quote { offset, field, why }
    }
}

fn fixed<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// An enclave report body from exactly 384 bytes (the caller took them).
pub(crate) fn enclave_report(b: &[u8]) -> EnclaveReport {
    debug_assert_eq!(b.len(), REPORT_BODY_LEN);
    EnclaveReport {
        cpu_svn: fixed(b, 0),
        misc_select: u32::from_le_bytes(fixed(b, 16)),
        attributes: fixed(b, 48),
        mr_enclave: fixed(b, 64),
        mr_signer: fixed(b, 128),
        isv_prod_id: u16::from_le_bytes(fixed(b, 256)),
        isv_svn: u16::from_le_bytes(fixed(b, 258)),
        report_data: fixed(b, 320),
    }
}

fn td_report(b: &[u8]) -> TdReport {
    let rtmr = |i: usize| fixed::<48>(b, 328 + 48 * i);
    let td15 = b.len() == TD15_LEN;
    TdReport {
        tee_tcb_svn: fixed(b, 0),
        mr_seam: fixed(b, 16),
        mr_signer_seam: fixed(b, 64),
        seam_attributes: fixed(b, 112),
        td_attributes: fixed(b, 120),
        xfam: fixed(b, 128),
        mr_td: fixed(b, 136),
        mr_config_id: fixed(b, 184),
        mr_owner: fixed(b, 232),
        mr_owner_config: fixed(b, 280),
        rtmr: [rtmr(0), rtmr(1), rtmr(2), rtmr(3)],
        report_data: fixed(b, 520),
        tee_tcb_svn2: td15.then(|| fixed(b, 584)),
        mr_service_td: td15.then(|| fixed(b, 600)),
    }
}

/// Parses a quote (untrusted bytes). Checks structure only; [`super::verify`] checks the rest.
pub fn parse(bytes: &[u8]) -> Result<Quote<'_>, DcapError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u16("header.version")?;
    let key_type = r.u16("header.att_key_type")?;
    let tee_type = r.u32("header.tee_type")?;
    let qe_svn = r.u16("header.qe_svn")?;
    let pce_svn = r.u16("header.pce_svn")?;
    let vendor: [u8; 16] = r.array("header.qe_vendor_id")?;
    r.take(20, "header.user_data")?;
    if key_type != ATT_KEY_ECDSA_P256 {
        return Err(r.bad(
            2,
            "header.att_key_type",
            format!("{key_type}, not 2 (ECDSA P-256)"),
        ));
    }
    if vendor != INTEL_QE_VENDOR_ID {
        return Err(r.bad(
            12,
            "header.qe_vendor_id",
            format!("{} is not Intel's", hex::encode(vendor)),
        ));
    }
    let body_len = match (version, tee_type) {
        (3 | 4, TEE_SGX) => REPORT_BODY_LEN,
        (4, TEE_TDX) => TD10_LEN,
        (5, TEE_SGX | TEE_TDX) => {
            let at = r.at;
            let body_type = r.u16("body.type")?;
            let size = r.u32("body.size")?;
            let len = match (body_type, tee_type) {
                (1, TEE_SGX) => REPORT_BODY_LEN,
                (2, TEE_TDX) => TD10_LEN,
                (3, TEE_TDX) => TD15_LEN,
                _ => {
                    return Err(r.bad(
                        at,
                        "body.type",
                        format!(
                            "body type {body_type} for TEE type {tee_type:#x} is not one we know"
                        ),
                    ));
                }
            };
            if size as usize != len {
                return Err(r.bad(at + 2, "body.size", format!("{size}, not {len}")));
            }
            len
        }
        _ => {
            return Err(r.bad(
                0,
                "header.version",
                format!(
                    "version {version} with TEE type {tee_type:#x} (expected 3, 4 or 5 for SGX; 4 or 5 for TDX)"
                ),
            ));
        }
    };
    let body_bytes = r.take(body_len, "body")?;
    let signed = &bytes[..r.at];
    let body = if tee_type == TEE_SGX {
        Body::Enclave(enclave_report(body_bytes))
    } else {
        Body::Td(Box::new(td_report(body_bytes)))
    };

    let sig_len = r.u32("signature_data_len")? as usize;
    let sig_data = r.take(sig_len, "signature_data")?;
    let base = r.at - sig_len;
    let mut s = Reader {
        bytes: sig_data,
        at: 0,
    };
    // Offsets in errors below are relative to the whole quote.
    let rebase = |e: DcapError| match e {
        DcapError::Quote { offset, field, why } => DcapError::Quote {
            offset: base + offset,
            field,
            why,
        },
        other => other,
    };
    let signature = s.array("signature").map_err(rebase)?;
    let attestation_key = s.array("attestation_key").map_err(rebase)?;
    let qe = if version >= 4 {
        let at = s.at;
        let kind = s.u16("certification_data.type").map_err(rebase)?;
        if kind != CERT_QE_REPORT {
            return Err(rebase(s.bad(
                at,
                "certification_data.type",
                format!("{kind}, not 6 (QE report)"),
            )));
        }
        let len = s.u32("certification_data.size").map_err(rebase)? as usize;
        let inner = s.take(len, "certification_data").map_err(rebase)?;
        let inner_base = base + s.at - len;
        qe_part(&mut Reader {
            bytes: inner,
            at: 0,
        })
        .map_err(|e| match e {
            DcapError::Quote { offset, field, why } => DcapError::Quote {
                offset: inner_base + offset,
                field,
                why,
            },
            other => other,
        })?
    } else {
        qe_part(&mut s).map_err(rebase)?
    };
    Ok(Quote {
        version,
        qe_svn,
        pce_svn,
        body,
        signed,
        signature,
        attestation_key,
        qe_report_raw: qe.report_raw,
        qe_report: enclave_report(qe.report_raw),
        qe_report_signature: qe.report_signature,
        qe_auth_data: qe.auth_data,
        pck_chain: qe.pck_chain,
    })
}

struct QePart<'a> {
    report_raw: &'a [u8],
    report_signature: [u8; 64],
    auth_data: &'a [u8],
    pck_chain: &'a [u8],
}

/// QE report, its signature, the QE's authentication data and the PCK chain.
fn qe_part<'a>(r: &mut Reader<'a>) -> Result<QePart<'a>, DcapError> {
    let report_raw = r.take(REPORT_BODY_LEN, "qe_report")?;
    let report_signature = r.array("qe_report_signature")?;
    let auth_len = r.u16("qe_auth_data.size")? as usize;
    let auth_data = r.take(auth_len, "qe_auth_data")?;
    let at = r.at;
    let kind = r.u16("pck_certification_data.type")?;
    if kind != CERT_PCK_CHAIN {
        return Err(r.bad(
            at,
            "pck_certification_data.type",
            format!("{kind}, not 5 (PCK certificate chain): only quotes that carry their chain are verifiable offline"),
        ));
    }
    let len = r.u32("pck_certification_data.size")? as usize;
    let pck_chain = r.take(len, "pck_certification_data")?;
    Ok(QePart {
        report_raw,
        report_signature,
        auth_data,
        pck_chain,
    })
}
