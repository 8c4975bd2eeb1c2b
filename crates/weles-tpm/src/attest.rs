//! TPM2_Quote evidence: TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (Part 2, §10.12), its ECDSA
//! signature by an attestation key, and the PCR digest it commits to.
//!
//! The attestation structure comes from whoever relays the quote (the host's manager) and is
//! untrusted until its signature verifies with an AK the verifier has reason to trust; it is
//! parsed with every length checked and fuzzed (`fuzz/fuzz_targets/tpm_attest.rs`).

use sha2::{Digest, Sha256};

use crate::ids::*;
use crate::public::EccPublic;

/// TPM_GENERATED_VALUE: what the TPM puts first in everything it signs (and nothing else may).
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;

/// A parsed TPMS_ATTEST of a quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// The name of the key that signed (the AK's name).
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (at most 64 bytes).
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    /// (hash algorithm, selected PCR indices in ascending order), in the quote's order.
    pub selection: Vec<(u16, Vec<u32>)>,
    /// Digest (the AK's name algorithm) over the selected PCR values, in selection order.
    pub pcr_digest: Vec<u8>,
}

/// Why bytes are not a quote we accept, or a quote does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("byte {at}: {what}")]
    Invalid { at: usize, what: String },
    #[error("{0} trailing bytes after the attestation")]
    Trailing(usize),
    #[error("the signature is not ECDSA-SHA256 by a P-256 key: {0}")]
    Scheme(String),
    #[error("the signature does not verify with the attestation key")]
    BadSignature,
    #[error("the attestation key is not a complete P-256 key")]
    BadKey,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AttestError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(AttestError::Truncated(self.at))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(AttestError::Truncated(self.at))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, AttestError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, AttestError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, AttestError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, AttestError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    fn tpm2b(&mut self, what: &str, max: usize) -> Result<&'a [u8], AttestError> {
        let at = self.at;
        let n = self.u16()? as usize;
        if n > max {
            return Err(AttestError::Invalid {
                at,
                what: format!("{what} is {n} bytes, at most {max}"),
            });
        }
        self.take(n)
    }
}

/// The digest size of a PCR bank's algorithm, if we know it.
pub fn digest_size(alg: u16) -> Option<usize> {
    match alg {
        0x0004 => Some(20), // sha1
        ALG_SHA256 => Some(32),
        0x000c => Some(48), // sha384
        0x000d => Some(64), // sha512
        _ => None,
    }
}

impl Quote {
    /// Parses a TPMS_ATTEST that must be a quote. Untrusted input.
    pub fn parse(bytes: &[u8]) -> Result<Quote, AttestError> {
        let mut r = Reader { b: bytes, at: 0 };
        let magic = r.u32()?;
        if magic != TPM_GENERATED {
            return Err(AttestError::Invalid {
                at: 0,
                what: format!("magic is {magic:#010x}, not TPM_GENERATED_VALUE (0xff544347)"),
            });
        }
        let ty = r.u16()?;
        if ty != ST_ATTEST_QUOTE {
            return Err(AttestError::Invalid {
                at: 4,
                what: format!("type is {ty:#06x}, not TPM_ST_ATTEST_QUOTE (0x8018)"),
            });
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", 2 + 64)?.to_vec();
        let extra_data = r.tpm2b("extraData", 64)?.to_vec();
        let clock = r.u64()?;
        let reset_count = r.u32()?;
        let restart_count = r.u32()?;
        let at = r.at;
        let safe = match r.u8()? {
            0 => false,
            1 => true,
            v => {
                return Err(AttestError::Invalid {
                    at,
                    what: format!("safe is {v}, not 0 or 1"),
                });
            }
        };
        let firmware_version = r.u64()?;
        // TPMS_QUOTE_INFO: TPML_PCR_SELECTION, TPM2B_DIGEST.
        let at = r.at;
        let count = r.u32()?;
        if count > 16 {
            return Err(AttestError::Invalid {
                at,
                what: format!("{count} PCR banks selected, at most 16"),
            });
        }
        let mut selection = Vec::new();
        for _ in 0..count {
            let at = r.at;
            let alg = r.u16()?;
            if digest_size(alg).is_none() {
                return Err(AttestError::Invalid {
                    at,
                    what: format!("PCR bank algorithm {alg:#06x} is not sha1/256/384/512"),
                });
            }
            let at = r.at;
            let size = r.u8()? as usize;
            if size > 4 {
                return Err(AttestError::Invalid {
                    at,
                    what: format!("sizeofSelect is {size}, at most 4"),
                });
            }
            let bits = r.take(size)?;
            let mut pcrs = Vec::new();
            for (byte, b) in bits.iter().enumerate() {
                for bit in 0..8 {
                    if b & (1 << bit) != 0 {
                        pcrs.push((byte * 8 + bit) as u32);
                    }
                }
            }
            selection.push((alg, pcrs));
        }
        let pcr_digest = r.tpm2b("pcrDigest", 64)?.to_vec();
        if r.at != bytes.len() {
            return Err(AttestError::Trailing(bytes.len() - r.at));
        }
        Ok(Quote {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            selection,
            pcr_digest,
        })
    }
}

/// SHA-256 over PCR values concatenated in the quote's selection order: what `pcrDigest`
/// must be for a SHA-256 AK.
pub fn pcr_digest<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().into()
}

/// Verifies a TPMT_SIGNATURE (ECDSA, SHA-256) over `attest` by `ak`.
pub fn verify_signature(
    ak: &EccPublic,
    attest: &[u8],
    signature: &[u8],
) -> Result<(), AttestError> {
    let mut r = Reader {
        b: signature,
        at: 0,
    };
    let alg = r.u16()?;
    let hash = r.u16()?;
    if alg != ALG_ECDSA || hash != ALG_SHA256 {
        return Err(AttestError::Scheme(format!(
            "algorithm {alg:#06x}, hash {hash:#06x}"
        )));
    }
    let rr = r.tpm2b("signatureR", 32)?;
    let ss = r.tpm2b("signatureS", 32)?;
    if r.at != signature.len() {
        return Err(AttestError::Trailing(signature.len() - r.at));
    }
    let key = ak.verifying_key().ok_or(AttestError::BadKey)?;
    let mut fixed = [0u8; 64];
    fixed[32 - rr.len()..32].copy_from_slice(rr);
    fixed[64 - ss.len()..].copy_from_slice(ss);
    let sig = p256::ecdsa::Signature::from_slice(&fixed).map_err(|_| AttestError::BadSignature)?;
    use ecdsa::signature::hazmat::PrehashVerifier;
    key.verify_prehash(&Sha256::digest(attest), &sig)
        .map_err(|_| AttestError::BadSignature)
}

/// The attestation key template: a restricted ECDSA-SHA256 P-256 signing key that never leaves
/// this TPM (fixedTPM, fixedParent, sensitiveDataOrigin), usable with an empty password.
pub fn ak_template() -> EccPublic {
    EccPublic {
        name_alg: ALG_SHA256,
        attributes: FIXED_TPM
            | FIXED_PARENT
            | SENSITIVE_DATA_ORIGIN
            | USER_WITH_AUTH
            | RESTRICTED
            | SIGN,
        auth_policy: Vec::new(),
        scheme: ALG_ECDSA,
        scheme_hash: ALG_SHA256,
        curve: ECC_NIST_P256,
        x: Vec::new(),
        y: Vec::new(),
    }
}

/// Whether a public area is an attestation key we accept: the template's attributes exactly
/// (in particular restricted: it signs only what the TPM itself generated).
pub fn is_attestation_key(ak: &EccPublic) -> bool {
    let t = ak_template();
    ak.attributes == t.attributes
        && ak.scheme == ALG_ECDSA
        && ak.scheme_hash == ALG_SHA256
        && ak.auth_policy.is_empty()
        && ak.verifying_key().is_some()
}

/// Fuzz entry point: parse anything, never panic.
pub fn fuzz_parse(data: &[u8]) {
    let _ = Quote::parse(data);
    if let Some((a, b)) = data
        .split_first()
        .map(|(n, rest)| rest.split_at((*n as usize).min(rest.len())))
    {
        let _ = verify_signature(&ak_template(), a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = TPM_GENERATED.to_be_bytes().to_vec();
        b.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
        b.extend_from_slice(&[0, 2, 0, 0x0b]); // name: just an algorithm (too short is fine here)
        b.extend_from_slice(&[0, 3, 1, 2, 3]);
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&9u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&ALG_SHA256.to_be_bytes());
        b.extend_from_slice(&[3, 0xff, 0x07, 0]); // PCRs 0–10
        b.extend_from_slice(&[0, 32]);
        b.extend_from_slice(&[0xaa; 32]);
        b
    }

    #[test]
    fn a_quote_parses_and_every_truncation_or_lie_is_an_error() {
        let q = Quote::parse(&sample()).unwrap();
        assert_eq!(q.extra_data, [1, 2, 3]);
        assert_eq!(q.selection, [(ALG_SHA256, (0..=10).collect::<Vec<u32>>())]);
        assert_eq!(
            (q.clock, q.reset_count, q.restart_count, q.safe),
            (7, 1, 2, true)
        );
        let b = sample();
        for n in 0..b.len() {
            assert!(Quote::parse(&b[..n]).is_err(), "{n}");
        }
        let mut bad = b.clone();
        bad[0] = 0;
        assert!(matches!(
            Quote::parse(&bad),
            Err(AttestError::Invalid { at: 0, .. })
        ));
        let mut more = b.clone();
        more.push(0);
        assert_eq!(Quote::parse(&more), Err(AttestError::Trailing(1)));
    }
}
