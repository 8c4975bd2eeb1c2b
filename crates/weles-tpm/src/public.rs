//! TPMT_PUBLIC for ECC NIST P-256 signing keys, and object names.

use sha2::{Digest, Sha256};

use crate::ids::*;

/// An ECC P-256 key's public area, as the TPM holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EccPublic {
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    /// `TPM_ALG_ECDSA` (with `scheme_hash`) or `TPM_ALG_NULL`.
    pub scheme: u16,
    pub scheme_hash: u16,
    pub curve: u16,
    /// Affine coordinates, 32 bytes each for a complete key (empty in a creation template).
    pub x: Vec<u8>,
    pub y: Vec<u8>,
}

/// Why bytes are not the public area of an ECC P-256 signing key. Names the byte offset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublicError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("byte {at}: {what} is {got:#06x}, expected {expected}")]
    Unexpected {
        at: usize,
        what: &'static str,
        got: u32,
        expected: &'static str,
    },
    #[error("byte {at}: {what} is {len} bytes, at most {max}")]
    TooLong {
        at: usize,
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} trailing bytes after the public area")]
    Trailing(usize),
}

impl EccPublic {
    /// The public area of a P-256 key with the given attributes and policy, ECDSA-SHA256.
    pub fn p256(key: &p256::ecdsa::VerifyingKey, attributes: u32, auth_policy: &[u8]) -> EccPublic {
        // SEC1 uncompressed: 0x04 ‖ x ‖ y.
        let sec1 = key.to_sec1_point(false);
        let b = sec1.as_bytes();
        let (x, y) = if b.len() == 65 {
            (b[1..33].to_vec(), b[33..].to_vec())
        } else {
            (Vec::new(), Vec::new())
        };
        EccPublic {
            name_alg: ALG_SHA256,
            attributes,
            auth_policy: auth_policy.to_vec(),
            scheme: ALG_ECDSA,
            scheme_hash: ALG_SHA256,
            curve: ECC_NIST_P256,
            x,
            y,
        }
    }

    /// TPMT_PUBLIC, marshalled.
    pub fn marshal(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&ALG_ECC.to_be_bytes());
        b.extend_from_slice(&self.name_alg.to_be_bytes());
        b.extend_from_slice(&self.attributes.to_be_bytes());
        tpm2b(&mut b, &self.auth_policy);
        b.extend_from_slice(&ALG_NULL.to_be_bytes()); // symmetric: none
        b.extend_from_slice(&self.scheme.to_be_bytes());
        if self.scheme != ALG_NULL {
            b.extend_from_slice(&self.scheme_hash.to_be_bytes());
        }
        b.extend_from_slice(&self.curve.to_be_bytes());
        b.extend_from_slice(&ALG_NULL.to_be_bytes()); // kdf: none
        tpm2b(&mut b, &self.x);
        tpm2b(&mut b, &self.y);
        b
    }

    /// TPM2B_PUBLIC (a `u16` size, then TPMT_PUBLIC): the TSS file format of tpm2-tools.
    pub fn marshal_tpm2b(&self) -> Vec<u8> {
        let t = self.marshal();
        let mut b = (t.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&t);
        b
    }

    /// The object's name: `nameAlg ‖ SHA-256(TPMT_PUBLIC)`.
    pub fn name(&self) -> Vec<u8> {
        let mut n = self.name_alg.to_be_bytes().to_vec();
        n.extend_from_slice(&Sha256::digest(self.marshal()));
        n
    }

    /// Parses a TPMT_PUBLIC that must be an ECC P-256 key with a SHA-256 name. Untrusted input:
    /// every length is checked before use; nothing else (RSA, other curves, symmetric parts)
    /// is accepted.
    pub fn parse(bytes: &[u8]) -> Result<EccPublic, PublicError> {
        let mut r = Reader { b: bytes, at: 0 };
        r.expect_u16("type", ALG_ECC, "TPM_ALG_ECC (0x0023)")?;
        let name_alg = r.expect_u16("nameAlg", ALG_SHA256, "TPM_ALG_SHA256 (0x000b)")?;
        let attributes = r.u32()?;
        let auth_policy = r.tpm2b("authPolicy", 64)?;
        r.expect_u16("symmetric", ALG_NULL, "TPM_ALG_NULL (a signing key)")?;
        let at = r.at;
        let scheme = r.u16()?;
        let scheme_hash = match scheme {
            ALG_ECDSA => r.u16()?,
            ALG_NULL => ALG_NULL,
            got => {
                return Err(PublicError::Unexpected {
                    at,
                    what: "scheme",
                    got: got.into(),
                    expected: "TPM_ALG_ECDSA or TPM_ALG_NULL",
                });
            }
        };
        let curve = r.expect_u16("curveID", ECC_NIST_P256, "TPM_ECC_NIST_P256 (0x0003)")?;
        r.expect_u16("kdf", ALG_NULL, "TPM_ALG_NULL")?;
        let x = r.tpm2b("x", 32)?;
        let y = r.tpm2b("y", 32)?;
        if r.at != bytes.len() {
            return Err(PublicError::Trailing(bytes.len() - r.at));
        }
        Ok(EccPublic {
            name_alg,
            attributes,
            auth_policy,
            scheme,
            scheme_hash,
            curve,
            x,
            y,
        })
    }

    /// Parses a TPM2B_PUBLIC (size-prefixed).
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<EccPublic, PublicError> {
        let size = bytes.get(..2).ok_or(PublicError::Truncated(0))?;
        let size = u16::from_be_bytes([size[0], size[1]]) as usize;
        let rest = &bytes[2..];
        if rest.len() < size {
            return Err(PublicError::Truncated(bytes.len()));
        }
        if rest.len() > size {
            return Err(PublicError::Trailing(rest.len() - size));
        }
        EccPublic::parse(rest)
    }

    /// The key as a P-256 point, if it is a complete key on the curve.
    pub fn verifying_key(&self) -> Option<p256::ecdsa::VerifyingKey> {
        if self.x.len() != 32 || self.y.len() != 32 {
            return None;
        }
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(0x04);
        sec1.extend_from_slice(&self.x);
        sec1.extend_from_slice(&self.y);
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()
    }
}

pub(crate) fn tpm2b(b: &mut Vec<u8>, data: &[u8]) {
    b.extend_from_slice(&(data.len() as u16).to_be_bytes());
    b.extend_from_slice(data);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PublicError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(PublicError::Truncated(self.at))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(PublicError::Truncated(self.at))?;
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, PublicError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32, PublicError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn expect_u16(
        &mut self,
        what: &'static str,
        want: u16,
        expected: &'static str,
    ) -> Result<u16, PublicError> {
        let at = self.at;
        let got = self.u16()?;
        if got != want {
            return Err(PublicError::Unexpected {
                at,
                what,
                got: got.into(),
                expected,
            });
        }
        Ok(got)
    }

    fn tpm2b(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, PublicError> {
        let at = self.at;
        let len = self.u16()? as usize;
        if len > max {
            return Err(PublicError::TooLong { at, what, len, max });
        }
        Ok(self.take(len)?.to_vec())
    }
}

/// Fuzz entry point: parsing arbitrary bytes never panics, and what parses re-marshals to the
/// same bytes.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(p) = EccPublic::parse(data) {
        assert_eq!(p.marshal(), data);
        let _ = p.verifying_key();
    }
    let _ = EccPublic::parse_tpm2b(data);
    // The guest parses its TPM's responses with the same care.
    let _ = crate::commands::parse_handle(data);
    let _ = crate::commands::parse_create(data);
    let _ = crate::commands::parse_read_public(data);
    let _ = crate::commands::parse_start_auth_session(data);
    let _ = crate::commands::parse_sign(data);
    let _ = crate::commands::response_code(data);
    // So does welesd with the host TPM's.
    let _ = crate::commands::parse_nv_read_public(data);
    let _ = crate::commands::parse_nv_read(data);
    let _ = crate::commands::parse_quote(data);
    let _ = crate::commands::parse_pcr_read(data);
    let _ = crate::commands::parse_activate_credential(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EccPublic {
        let k = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        EccPublic::p256(k.verifying_key(), SIGN, &[0xab; 32])
    }

    #[test]
    fn round_trips_and_names() {
        let k = key();
        assert_eq!(EccPublic::parse(&k.marshal()).unwrap(), k);
        assert_eq!(EccPublic::parse_tpm2b(&k.marshal_tpm2b()).unwrap(), k);
        assert_eq!(k.name().len(), 34);
        assert_eq!(&k.name()[..2], &[0x00, 0x0b]);
        assert!(k.verifying_key().is_some());
    }

    #[test]
    fn refuses_what_it_is_not_with_the_offset() {
        let good = key().marshal();
        let mut rsa = good.clone();
        rsa[1] = 0x01; // TPM_ALG_RSA
        assert!(matches!(
            EccPublic::parse(&rsa),
            Err(PublicError::Unexpected {
                at: 0,
                what: "type",
                ..
            })
        ));
        for cut in 0..good.len() {
            assert!(EccPublic::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(EccPublic::parse(&long), Err(PublicError::Trailing(1)));
        // A policy longer than any digest is refused before it is read.
        let mut big = good[..8].to_vec();
        big.extend_from_slice(&[0xff, 0xff]);
        assert!(matches!(
            EccPublic::parse(&big),
            Err(PublicError::TooLong {
                at: 8,
                what: "authPolicy",
                ..
            })
        ));
        // A point off the curve is not a key.
        let mut off = key();
        off.y[31] ^= 1;
        assert!(off.verifying_key().is_none());
    }
}
