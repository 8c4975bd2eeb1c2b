//! AMD SEV-SNP attestation reports (SEV-SNP ABI spec, `ATTESTATION_REPORT`), verified offline
//! against AMD's certificate chain: ARK (self-signed) → ASK → VCEK (RSA-PSS, SHA-384), and the
//! VCEK's ECDSA P-384 signature over the report.
//!
//! The report and the VCEK come from whoever relays them and are untrusted: the report is parsed
//! with fixed offsets over exactly 1184 bytes (fuzzed: `fuzz/fuzz_targets/snp_report.rs`). AMD's
//! ARK and ASK for Milan and Genoa are built in (public certificates from AMD's key server),
//! chosen by the VCEK's issuer. The VCEK must belong to the chip and TCB the report names.

use crate::x509::{self, check_signed, der_value, extension};
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha384};
use x509_cert::Certificate;
use x509_cert::der::Decode;

/// Size of an attestation report (versions 2, 3 and 5 alike).
pub const REPORT_LEN: usize = 0x4a0;
/// The signed part: everything before the signature.
const SIGNED_LEN: usize = 0x2a0;

const ARK_MILAN: &str = include_str!("../certs/amd/milan/ark.pem");
const ASK_MILAN: &str = include_str!("../certs/amd/milan/ask.pem");
const ARK_GENOA: &str = include_str!("../certs/amd/genoa/ark.pem");
const ASK_GENOA: &str = include_str!("../certs/amd/genoa/ask.pem");

/// The fields of a report a verifier decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub vmpl: u32,
    pub signature_algo: u32,
    pub platform_info: u64,
    pub report_data: [u8; 64],
    /// The launch measurement of the guest.
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    /// boot loader, TEE, reserved ×4, SNP, microcode SVNs (Milan/Genoa layout).
    pub reported_tcb: [u8; 8],
    pub chip_id: [u8; 64],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnpError {
    #[error("the report is {0} bytes, not 1184")]
    Length(usize),
    #[error("report version {0} (expected 2 or later)")]
    Version(u32),
    #[error("signature algorithm {0} (expected 1: ECDSA P-384 with SHA-384)")]
    Algorithm(u32),
    #[error("{what}: {why}")]
    Certificate { what: &'static str, why: String },
    #[error("the VCEK is for chip {vcek}…, the report for chip {report}…")]
    Chip { vcek: String, report: String },
    #[error("the VCEK certifies TCB {vcek}, the report claims {report}")]
    Tcb { vcek: String, report: String },
    #[error("the report's signature does not verify with the VCEK")]
    Signature,
    #[error("debugging is allowed by the guest policy (bit 19): its memory is open to the host")]
    Debug,
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(arr(b, at))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(arr(b, at))
}

impl Report {
    /// Parses a report. Untrusted input: the length is checked first, then fixed offsets.
    pub fn parse(b: &[u8]) -> Result<Report, SnpError> {
        if b.len() != REPORT_LEN {
            return Err(SnpError::Length(b.len()));
        }
        let version = u32_at(b, 0);
        if version < 2 {
            return Err(SnpError::Version(version));
        }
        let signature_algo = u32_at(b, 0x34);
        if signature_algo != 1 {
            return Err(SnpError::Algorithm(signature_algo));
        }
        Ok(Report {
            version,
            guest_svn: u32_at(b, 4),
            policy: u64_at(b, 8),
            vmpl: u32_at(b, 0x30),
            signature_algo,
            platform_info: u64_at(b, 0x40),
            report_data: arr(b, 0x50),
            measurement: arr(b, 0x90),
            host_data: arr(b, 0xc0),
            id_key_digest: arr(b, 0xe0),
            author_key_digest: arr(b, 0x110),
            reported_tcb: arr(b, 0x180),
            chip_id: arr(b, 0x1a0),
        })
    }
}

fn cert_err(what: &'static str) -> impl Fn(String) -> SnpError {
    move |why| SnpError::Certificate { what, why }
}

fn parse_pem(pem: &str) -> Result<Certificate, String> {
    x509::parse_pem_chain(pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| "no certificate".to_owned())
}

/// Verifies `report` (1184 bytes) with the VCEK (DER) through AMD's built-in chain at `now`
/// (seconds since the epoch). Returns the report's fields; the caller compares
/// `report_data` and `measurement` with what it expects.
pub fn verify(report: &[u8], vcek_der: &[u8], now: u64) -> Result<Report, SnpError> {
    let parsed = Report::parse(report)?;
    let vcek = Certificate::from_der(vcek_der).map_err(|e| SnpError::Certificate {
        what: "VCEK",
        why: e.to_string(),
    })?;
    let issuer = vcek.tbs_certificate().issuer().to_string();
    let (ark, ask) = if issuer.contains("CN=SEV-Milan") {
        (ARK_MILAN, ASK_MILAN)
    } else if issuer.contains("CN=SEV-Genoa") {
        (ARK_GENOA, ASK_GENOA)
    } else {
        return Err(SnpError::Certificate {
            what: "VCEK",
            why: format!("issuer {issuer} is not AMD's Milan or Genoa ASK"),
        });
    };
    let ark = parse_pem(ark).map_err(cert_err("ARK"))?;
    let ask = parse_pem(ask).map_err(cert_err("ASK"))?;
    check_signed(&ark, &ark, now).map_err(cert_err("ARK"))?;
    check_signed(&ask, &ark, now).map_err(cert_err("ASK"))?;
    check_signed(&vcek, &ask, now).map_err(cert_err("VCEK"))?;

    // The VCEK is this chip's, at this TCB.
    // hwID is the raw 64-byte chip id (AMD does not wrap it in DER, unlike the SPLs).
    let hw = extension(&vcek, "1.3.6.1.4.1.3704.1.4")
        .map(|v| der_value(v).filter(|x| x.len() == 64).unwrap_or(v));
    if let Some(hw) = hw
        && hw != parsed.chip_id
    {
        return Err(SnpError::Chip {
            vcek: hex::encode(&hw[..hw.len().min(8)]),
            report: hex::encode(&parsed.chip_id[..8]),
        });
    }
    let spl = |oid: &str| {
        extension(&vcek, oid)
            .and_then(der_value)
            .and_then(|v| v.last().copied())
    };
    let tcb = &parsed.reported_tcb;
    for (oid, at, name) in [
        ("1.3.6.1.4.1.3704.1.3.1", 0, "boot loader"),
        ("1.3.6.1.4.1.3704.1.3.2", 1, "TEE"),
        ("1.3.6.1.4.1.3704.1.3.3", 6, "SNP"),
        ("1.3.6.1.4.1.3704.1.3.8", 7, "microcode"),
    ] {
        if let Some(v) = spl(oid)
            && v != tcb[at]
        {
            return Err(SnpError::Tcb {
                vcek: format!("{name} SVN {v}"),
                report: format!("{name} SVN {}", tcb[at]),
            });
        }
    }

    // The report's signature: r and s, 72 bytes little-endian each (P-384 uses 48).
    let spki = vcek.tbs_certificate().subject_public_key_info();
    let point = spki.subject_public_key.raw_bytes();
    let key =
        p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| SnpError::Certificate {
            what: "VCEK",
            why: format!("not a P-384 key: {e}"),
        })?;
    let mut r = report[SIGNED_LEN..SIGNED_LEN + 48].to_vec();
    let mut s = report[SIGNED_LEN + 72..SIGNED_LEN + 72 + 48].to_vec();
    r.reverse();
    s.reverse();
    let mut rs = r;
    rs.extend_from_slice(&s);
    let sig = p384::ecdsa::Signature::from_slice(&rs).map_err(|_| SnpError::Signature)?;
    key.verify_prehash(&Sha384::digest(&report[..SIGNED_LEN]), &sig)
        .map_err(|_| SnpError::Signature)?;
    if parsed.policy & (1 << 19) != 0 {
        return Err(SnpError::Debug);
    }
    Ok(parsed)
}

/// The VCEK's GUID in an extended report's certificate table (GHCB spec, "SNP Extended Guest
/// Request"), bytes in the order the UUID is written: 63da758d-e664-4564-adc5-f4b93be8accd.
const VCEK_GUID: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
/// A table names a handful of certificates (VCEK, ASK, ARK, VLEK…).
const MAX_TABLE_ENTRIES: usize = 64;

/// The VCEK (DER) the host put into an extended report's certificate table — configfs-tsm's
/// `auxblob` on SEV-SNP: entries `{ guid [16], offset u32, length u32 }` (little-endian),
/// ended by an all-zero entry, offsets from the table's start. `Ok(None)`: no VCEK in it. The
/// host supplies this, so it is untrusted: [`verify`] checks the VCEK against AMD's chain like
/// one the tenant fetched.
pub fn vcek_from_cert_table(table: &[u8]) -> Result<Option<&[u8]>, SnpError> {
    let bad = |why: String| SnpError::Certificate {
        what: "the certificate table (auxblob)",
        why,
    };
    for i in 0..MAX_TABLE_ENTRIES {
        let at = i * 24;
        let Some(entry) = table.get(at..at + 24) else {
            return Err(bad(format!(
                "entry {i} at byte {at} is cut short (no zero entry)"
            )));
        };
        let guid = &entry[..16];
        if guid.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if guid != VCEK_GUID {
            continue;
        }
        let offset = u32_at(entry, 16) as usize;
        let length = u32_at(entry, 20) as usize;
        return offset
            .checked_add(length)
            .and_then(|end| table.get(offset..end))
            .map(Some)
            .ok_or_else(|| {
                bad(format!(
                    "entry {i}: the VCEK at {offset}+{length} lies outside the {} bytes",
                    table.len()
                ))
            });
    }
    Err(bad(format!("more than {MAX_TABLE_ENTRIES} entries")))
}

/// Fuzz entry point: parse anything, never panic.
pub fn fuzz_parse(data: &[u8]) {
    let _ = Report::parse(data);
    let _ = vcek_from_cert_table(data);
}
