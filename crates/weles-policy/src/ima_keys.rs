//! Trusted IMA signing keys and the signatures IMA logs: `security.ima` (ima-sig, ima-sigv2)
//! and appended module signatures (ima-modsig).
//!
//! `security.ima` digital-signature layout (security/integrity/integrity.h):
//!
//! ```text
//! u8 type (3 = EVM_IMA_XATTR_DIGSIG, 6 = IMA_VERITY_DIGSIG) | u8 version (2, or 3 for verity)
//! u8 hash_algo | be32 keyid | be16 sig_size | sig[sig_size]
//! ```
//!
//! Version 2 signs the file digest itself; version 3 signs `H(type || algo || digest)` (the
//! kernel's `ima_file_id`). RSA signatures are PKCS#1 v1.5 over a DigestInfo; ECDSA ones are DER
//! `(r, s)` over the prehashed digest. The keyid is the low 32 bits of the certificate's subject
//! key identifier — as the kernel matches `id:%08x` — or, for a bare public key, of SHA-1 over the
//! public-key bits (what `evmctl` writes and what OpenSSL puts in the SKID by default).

use std::fmt;

use base64ct::{Base64, Encoding};
use ecdsa::signature::hazmat::PrehashVerifier;
use rsa::pkcs1v15::Pkcs1v15Sign;
use rsa::pkcs8::DecodePublicKey;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use weles_ima::HashAlgorithm;

use crate::der::{Der, DerError, oid, tag};

/// Signature header type bytes.
const EVM_IMA_XATTR_DIGSIG: u8 = 3;
const IMA_VERITY_DIGSIG: u8 = 6;

/// A public key the tenant trusts to sign files.
#[derive(Clone)]
pub struct TrustedKey {
    pub name: String,
    /// The 32-bit key identifier signatures carry.
    pub keyid: u32,
    /// SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
    key: KeyMaterial,
}

#[derive(Clone)]
enum KeyMaterial {
    Rsa(Box<rsa::PublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TrustedKey({:?}, {} keyid {:08x})",
            self.name,
            self.kind(),
            self.keyid
        )
    }
}

/// Why a key could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not PEM (expected BEGIN CERTIFICATE or BEGIN PUBLIC KEY): {0}")]
    Pem(String),
    #[error("certificate: {0}")]
    Certificate(DerError),
    #[error("unsupported public key (only RSA, ECDSA P-256 and P-384): {0}")]
    Unsupported(String),
}

impl TrustedKey {
    /// Loads a PEM certificate or public key (`-----BEGIN CERTIFICATE-----` / `PUBLIC KEY`),
    /// or DER of either.
    pub fn from_pem_or_der(name: &str, bytes: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(bytes)
            .ok()
            .filter(|t| t.contains("-----BEGIN"));
        let der = match text {
            Some(t) => pem_body(t)?,
            None => bytes.to_vec(),
        };
        Self::from_der(name, &der)
    }

    /// Loads PEM text (`CERTIFICATE` or `PUBLIC KEY`), as a policy file carries it.
    pub fn from_pem(name: &str, text: &str) -> Result<Self, KeyError> {
        Self::from_der(name, &pem_body(text)?)
    }

    /// Loads DER: an X.509 certificate or a SubjectPublicKeyInfo.
    pub fn from_der(name: &str, der: &[u8]) -> Result<Self, KeyError> {
        // A certificate is SEQUENCE { SEQUENCE tbs {...}, ... }; an SPKI is SEQUENCE { SEQUENCE
        // algorithm, BIT STRING }. Tell them apart by the second element.
        let mut outer = Der::new(der);
        let top = outer
            .expect(tag::SEQUENCE, "expected a SEQUENCE")
            .map_err(KeyError::Certificate)?;
        let mut c = top.contents();
        c.read().map_err(KeyError::Certificate)?;
        let second = c.read().map_err(KeyError::Certificate)?;
        let (spki, skid) = if second.tag == tag::BIT_STRING {
            (der.to_vec(), None)
        } else {
            let (spki, skid) = certificate_spki_and_skid(der).map_err(KeyError::Certificate)?;
            (spki.to_vec(), skid)
        };
        let key = parse_spki(&spki)?;
        let keyid_source = match skid {
            Some(s) => s,
            None => Sha1::digest(spki_key_bits(&spki).map_err(KeyError::Certificate)?).to_vec(),
        };
        let keyid = keyid_source
            .len()
            .checked_sub(4)
            .map(|at| {
                u32::from_be_bytes([
                    keyid_source[at],
                    keyid_source[at + 1],
                    keyid_source[at + 2],
                    keyid_source[at + 3],
                ])
            })
            .ok_or_else(|| {
                KeyError::Unsupported("subject key identifier shorter than 4 bytes".into())
            })?;
        Ok(TrustedKey {
            name: name.to_string(),
            keyid,
            spki,
            key,
        })
    }

    /// Overrides the keyid (for signers that computed it differently).
    pub fn with_keyid(mut self, keyid: u32) -> Self {
        self.keyid = keyid;
        self
    }

    pub fn kind(&self) -> &'static str {
        match self.key {
            KeyMaterial::Rsa(_) => "rsa",
            KeyMaterial::P256(_) => "ecdsa-p256",
            KeyMaterial::P384(_) => "ecdsa-p384",
        }
    }

    /// Verifies a signature over an already computed digest.
    pub fn verify_prehashed(&self, alg: HashAlgorithm, digest: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            KeyMaterial::Rsa(k) => {
                let scheme = match alg {
                    HashAlgorithm::Sha1 => Pkcs1v15Sign::new::<Sha1>(),
                    HashAlgorithm::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
                    HashAlgorithm::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
                    HashAlgorithm::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
                    _ => return false,
                };
                k.verify(scheme, digest, sig).is_ok()
            }
            KeyMaterial::P256(k) => p256::ecdsa::Signature::from_der(sig)
                .is_ok_and(|s| k.verify_prehash(digest, &s).is_ok()),
            KeyMaterial::P384(k) => p384::ecdsa::Signature::from_der(sig)
                .is_ok_and(|s| k.verify_prehash(digest, &s).is_ok()),
        }
    }
}

/// The DER inside the first PEM block (`CERTIFICATE` or `PUBLIC KEY`).
pub fn pem_body(text: &str) -> Result<Vec<u8>, KeyError> {
    let mut lines = text.lines().map(str::trim);
    let begin = lines
        .find(|l| l.starts_with("-----BEGIN "))
        .ok_or_else(|| KeyError::Pem("no BEGIN line".into()))?;
    let label = begin
        .trim_start_matches("-----BEGIN ")
        .trim_end_matches("-----");
    if label != "CERTIFICATE" && label != "PUBLIC KEY" {
        return Err(KeyError::Pem(format!("unexpected PEM label {label:?}")));
    }
    let body: String = lines.take_while(|l| !l.starts_with("-----END ")).collect();
    Base64::decode_vec(&body).map_err(|e| KeyError::Pem(format!("bad base64: {e}")))
}

/// The DER of every PEM block of a bundle (certificate chains), in order; DER input (no PEM
/// block at all) is returned as the one element.
pub fn pem_bodies(bytes: &[u8]) -> Result<Vec<Vec<u8>>, KeyError> {
    let Some(text) = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.contains("-----BEGIN "))
    else {
        return Ok(vec![bytes.to_vec()]);
    };
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let block = &rest[begin..];
        let end = block
            .find("-----END ")
            .ok_or_else(|| KeyError::Pem(format!("block {} has no END line", blocks.len())))?;
        let line_end = block[end..].find('\n').map_or(block.len(), |n| end + n);
        blocks.push(pem_body(&block[..line_end])?);
        rest = &block[line_end..];
    }
    Ok(blocks)
}

#[cfg(test)]
mod pem_tests {
    use super::pem_bodies;

    #[test]
    fn bundles_yield_every_block_in_order() {
        let one = "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n";
        let two = "-----BEGIN CERTIFICATE-----\nBAUG\n-----END CERTIFICATE-----";
        let bundle = format!("subject=x\n{one}issuer=y\n{two}");
        assert_eq!(
            pem_bodies(bundle.as_bytes()).unwrap(),
            [vec![1, 2, 3], vec![4, 5, 6]]
        );
        assert_eq!(pem_bodies(&[0x30, 0x03]).unwrap(), [vec![0x30, 0x03]]);
        assert!(pem_bodies(b"-----BEGIN CERTIFICATE-----\nAQID\n").is_err());
    }
}

/// Finds the SubjectPublicKeyInfo and, if present, the subject key identifier of a certificate.
fn certificate_spki_and_skid(der: &[u8]) -> Result<(&[u8], Option<Vec<u8>>), DerError> {
    let mut top = Der::new(der);
    let cert = top.expect(tag::SEQUENCE, "certificate is not a SEQUENCE")?;
    let mut c = cert.contents();
    let tbs = c.expect(tag::SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let mut t = tbs.contents();
    t.optional(tag::CONTEXT_0)?; // version
    t.expect(tag::INTEGER, "serialNumber")?;
    t.expect(tag::SEQUENCE, "signature algorithm")?;
    t.expect(tag::SEQUENCE, "issuer")?;
    t.expect(tag::SEQUENCE, "validity")?;
    t.expect(tag::SEQUENCE, "subject")?;
    let spki = t.expect(tag::SEQUENCE, "subjectPublicKeyInfo")?;
    let mut skid = None;
    while !t.is_empty() {
        let item = t.read()?;
        if item.tag != tag::CONTEXT_3 {
            continue;
        }
        let mut exts = item
            .contents()
            .expect(tag::SEQUENCE, "extensions")?
            .contents();
        while !exts.is_empty() {
            let ext = exts.expect(tag::SEQUENCE, "extension")?;
            let mut e = ext.contents();
            let id = e.expect(tag::OID, "extension id")?;
            e.optional(tag::BOOLEAN)?;
            let value = e.expect(tag::OCTET_STRING, "extension value")?;
            if id.value == oid::SUBJECT_KEY_IDENTIFIER {
                let inner = value
                    .contents()
                    .expect(tag::OCTET_STRING, "key identifier")?;
                skid = Some(inner.value.to_vec());
            }
        }
    }
    Ok((spki.raw, skid))
}

/// The subjectPublicKey bits of an SPKI (RSAPublicKey DER, or the EC point).
fn spki_key_bits(spki: &[u8]) -> Result<&[u8], DerError> {
    let mut d = Der::new(spki);
    let mut s = d.expect(tag::SEQUENCE, "SPKI")?.contents();
    s.expect(tag::SEQUENCE, "SPKI algorithm")?;
    let bits = s.expect(tag::BIT_STRING, "SPKI key")?;
    bits.value.split_first().map(|(_, b)| b).ok_or(DerError {
        what: "empty BIT STRING",
        offset: bits.offset,
    })
}

fn parse_spki(spki: &[u8]) -> Result<KeyMaterial, KeyError> {
    if let Ok(k) = rsa::PublicKey::from_public_key_der(spki) {
        return Ok(KeyMaterial::Rsa(Box::new(k)));
    }
    if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
        return Ok(KeyMaterial::P256(k));
    }
    if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(spki) {
        return Ok(KeyMaterial::P384(k));
    }
    Err(KeyError::Unsupported(
        "SubjectPublicKeyInfo is not RSA, P-256 or P-384".into(),
    ))
}

/// The outcome of checking a signature against the trusted keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Verified with the named key.
    Valid(String),
    /// Not verified; the text says why (no key with that keyid, bad signature, bad format).
    Invalid(String),
}

/// Checks a `security.ima` signature over a file digest of `digest_alg`.
/// `verity`: the digest is an fs-verity digest (d-ngv2 `verity:`).
pub fn check_xattr_signature(
    keys: &[TrustedKey],
    sig: &[u8],
    digest_alg: HashAlgorithm,
    digest: &[u8],
    verity: bool,
) -> SignatureCheck {
    let invalid = |s: String| SignatureCheck::Invalid(s);
    if sig.len() < 9 {
        return invalid(format!("signature header needs 9 bytes, has {}", sig.len()));
    }
    let (kind, version, algo) = (sig[0], sig[1], sig[2]);
    let keyid = u32::from_be_bytes([sig[3], sig[4], sig[5], sig[6]]);
    let size = usize::from(u16::from_be_bytes([sig[7], sig[8]]));
    let body = &sig[9..];
    if body.len() != size {
        return invalid(format!(
            "signature header says {size} bytes, {} present",
            body.len()
        ));
    }
    let Some(header_alg) = HashAlgorithm::from_number(algo) else {
        return invalid(format!("unknown hash algorithm number {algo}"));
    };
    if header_alg != digest_alg {
        return invalid(format!(
            "signature is over a {header_alg} digest but the measured digest is {digest_alg}"
        ));
    }
    // What was signed: the digest itself (v2), or H(ima_file_id) (v3, fs-verity).
    let file_id_hash;
    let signed: &[u8] = match (kind, version) {
        (EVM_IMA_XATTR_DIGSIG, 2) if !verity => digest,
        (IMA_VERITY_DIGSIG, 3) if verity => {
            let Some(bank) = header_alg.bank() else {
                return invalid(format!("cannot compute {header_alg} for a v3 signature"));
            };
            file_id_hash = bank.hash(&[&[IMA_VERITY_DIGSIG, algo], digest]);
            file_id_hash.as_bytes()
        }
        _ => {
            return invalid(format!(
                "unsupported signature type {kind} version {version} for a{} digest",
                if verity { " verity" } else { "n ima" }
            ));
        }
    };
    let candidates: Vec<&TrustedKey> = keys.iter().filter(|k| k.keyid == keyid).collect();
    if candidates.is_empty() {
        return invalid(format!("no trusted key has keyid {keyid:08x}"));
    }
    for k in candidates {
        if k.verify_prehashed(header_alg, signed, body) {
            return SignatureCheck::Valid(k.name.clone());
        }
    }
    invalid(format!(
        "signature does not verify with the trusted key(s) of keyid {keyid:08x}"
    ))
}

/// Checks an appended module signature (PKCS#7 / CMS SignedData, as `sign-file` writes it) over
/// `digest` (the `d-modsig` digest: the file without its signature).
pub fn check_modsig(
    keys: &[TrustedKey],
    pkcs7: &[u8],
    digest_alg: HashAlgorithm,
    digest: &[u8],
) -> SignatureCheck {
    match modsig_signer(pkcs7) {
        Err(e) => SignatureCheck::Invalid(format!("appended signature: {e}")),
        Ok(signer) => {
            let Some(alg) = signer.digest_alg else {
                return SignatureCheck::Invalid(
                    "appended signature uses an unsupported digest algorithm".into(),
                );
            };
            if alg != digest_alg {
                return SignatureCheck::Invalid(format!(
                    "appended signature is over {alg}, d-modsig is {digest_alg}"
                ));
            }
            // Without signed attributes the signature covers the content digest directly; with them
            // it covers H(attributes), and the messageDigest attribute must be our digest.
            let attrs_hash;
            let signed: &[u8] = match signer.signed_attrs {
                None => digest,
                Some((attrs, message_digest)) => {
                    if message_digest.as_deref() != Some(digest) {
                        return SignatureCheck::Invalid(
                            "appended signature's messageDigest is not the d-modsig digest".into(),
                        );
                    }
                    let Some(bank) = alg.bank() else {
                        return SignatureCheck::Invalid(format!("cannot compute {alg}"));
                    };
                    attrs_hash = bank.hash(&[&[tag::SET], &attrs[1..]]);
                    attrs_hash.as_bytes()
                }
            };
            for k in keys {
                if k.verify_prehashed(alg, signed, signer.signature) {
                    return SignatureCheck::Valid(k.name.clone());
                }
            }
            SignatureCheck::Invalid(
                "appended signature does not verify with any trusted key".into(),
            )
        }
    }
}

struct ModsigSigner<'a> {
    digest_alg: Option<HashAlgorithm>,
    /// Raw `[0] IMPLICIT SET OF Attribute` and the messageDigest value, if present.
    signed_attrs: Option<(&'a [u8], Option<Vec<u8>>)>,
    signature: &'a [u8],
}

fn digest_oid(oid_value: &[u8]) -> Option<HashAlgorithm> {
    Some(match oid_value {
        v if v == oid::SHA1 => HashAlgorithm::Sha1,
        v if v == oid::SHA256 => HashAlgorithm::Sha256,
        v if v == oid::SHA384 => HashAlgorithm::Sha384,
        v if v == oid::SHA512 => HashAlgorithm::Sha512,
        _ => return None,
    })
}

/// Extracts the (first) SignerInfo of a CMS SignedData.
fn modsig_signer(pkcs7: &[u8]) -> Result<ModsigSigner<'_>, DerError> {
    let mut top = Der::new(pkcs7);
    let mut ci = top.expect(tag::SEQUENCE, "ContentInfo")?.contents();
    let ct = ci.expect(tag::OID, "contentType")?;
    if ct.value != oid::SIGNED_DATA {
        return Err(DerError {
            what: "contentType is not signedData",
            offset: ct.offset,
        });
    }
    let explicit = ci.expect(tag::CONTEXT_0, "[0] content")?;
    let mut sd = explicit
        .contents()
        .expect(tag::SEQUENCE, "SignedData")?
        .contents();
    sd.expect(tag::INTEGER, "SignedData version")?;
    sd.expect(tag::SET, "digestAlgorithms")?;
    sd.expect(tag::SEQUENCE, "encapContentInfo")?;
    sd.optional(tag::CONTEXT_0)?; // certificates
    sd.optional(tag::CONTEXT_1)?; // crls
    let signer_infos = sd.expect(tag::SET, "signerInfos")?;
    let mut si = signer_infos
        .contents()
        .expect(tag::SEQUENCE, "SignerInfo")?
        .contents();
    si.expect(tag::INTEGER, "SignerInfo version")?;
    si.read()?; // sid: issuerAndSerialNumber or [0] subjectKeyIdentifier
    let dalg = si.expect(tag::SEQUENCE, "digestAlgorithm")?;
    let dalg_oid = dalg.contents().expect(tag::OID, "digestAlgorithm OID")?;
    let signed_attrs = match si.optional(tag::CONTEXT_0)? {
        None => None,
        Some(attrs) => {
            let mut message_digest = None;
            let mut a = attrs.contents();
            while !a.is_empty() {
                let mut attr = a.expect(tag::SEQUENCE, "Attribute")?.contents();
                let id = attr.expect(tag::OID, "attribute type")?;
                let values = attr.expect(tag::SET, "attribute values")?;
                if id.value == oid::MESSAGE_DIGEST {
                    message_digest = Some(
                        values
                            .contents()
                            .expect(tag::OCTET_STRING, "messageDigest")?
                            .value
                            .to_vec(),
                    );
                }
            }
            Some((attrs.raw, message_digest))
        }
    };
    si.expect(tag::SEQUENCE, "signatureAlgorithm")?;
    let sig = si.expect(tag::OCTET_STRING, "signature")?;
    Ok(ModsigSigner {
        digest_alg: digest_oid(dalg_oid.value),
        signed_attrs,
        signature: sig.value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_keys_and_signatures_are_refused_not_panicking() {
        assert!(TrustedKey::from_pem_or_der("x", b"").is_err());
        assert!(
            TrustedKey::from_pem_or_der(
                "x",
                b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"
            )
            .is_err()
        );
        assert!(TrustedKey::from_pem_or_der("x", &[0x30, 0x03, 0x30, 0x01, 0x00]).is_err());
        let d = [0u8; 32];
        for sig in [
            &[][..],
            &[3, 2, 4, 0, 0, 0, 0, 0, 5, 1],
            &[3, 2, 99, 0, 0, 0, 0, 0, 0],
        ] {
            assert!(matches!(
                check_xattr_signature(&[], sig, HashAlgorithm::Sha256, &d, false),
                SignatureCheck::Invalid(_)
            ));
        }
        assert!(matches!(
            check_modsig(&[], &[0x30, 0x00], HashAlgorithm::Sha256, &d),
            SignatureCheck::Invalid(_)
        ));
    }
}
