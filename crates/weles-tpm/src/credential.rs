//! Endorsement keys and credential activation (TPM 2.0 Part 1, §24; Part 3, TPM2_MakeCredential).
//!
//! A verifier that trusts an EK (its certificate chains to the TPM maker) learns that an
//! attestation key lives in the *same* TPM by sending a credential: a secret encrypted to the
//! EK and bound to the AK's name. Only that TPM can decrypt it (TPM2_ActivateCredential), and only
//! when the object named is loaded in it. This module is the verifier's side, in software: it
//! parses the EK's public area — RSA 2048 (the TCG's template L-1, which every TPM certifies) or
//! ECC NIST P-256 (template L-2) — and makes the credential: the seed travels RSA-OAEP
//! encrypted to an RSA EK, or as an ephemeral ECDH point for an ECC EK (Part 1, §C.6.4).

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::ids::*;

const ALG_RSA: u16 = 0x0001;
const ALG_ECC: u16 = 0x0023;
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;

/// The TCG EK template L-1's policy: PolicySecret(TPM_RH_ENDORSEMENT).
pub const EK_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// An RSA EK's public area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsaEkPublic {
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub key_bits: u16,
    /// 0 means 65537, as in the TPM.
    pub exponent: u32,
    pub modulus: Vec<u8>,
    /// The marshalled TPMT_PUBLIC it was parsed from (its name is over these bytes).
    pub marshalled: Vec<u8>,
}

/// An ECC EK's public area (template L-2: NIST P-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EccEkPublic {
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    /// Affine coordinates, 32 bytes each.
    pub x: [u8; 32],
    pub y: [u8; 32],
    /// The marshalled TPMT_PUBLIC it was parsed from.
    pub marshalled: Vec<u8>,
}

/// An endorsement key we can make credentials for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EkPublic {
    Rsa(RsaEkPublic),
    Ecc(EccEkPublic),
}

/// Why bytes are not an EK we can make credentials for, or making one failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("byte {at}: {what}")]
    Invalid { at: usize, what: String },
    #[error("{0} trailing bytes after the public area")]
    Trailing(usize),
    #[error("RSA: {0}")]
    Rsa(String),
}

fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], CredentialError> {
    let end = at.checked_add(n).ok_or(CredentialError::Truncated(*at))?;
    let s = b.get(*at..end).ok_or(CredentialError::Truncated(*at))?;
    *at = end;
    Ok(s)
}

fn u16_at(b: &[u8], at: &mut usize) -> Result<u16, CredentialError> {
    let s = take(b, at, 2)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn expect(b: &[u8], at: &mut usize, what: &str, want: u16) -> Result<(), CredentialError> {
    let here = *at;
    let got = u16_at(b, at)?;
    if got != want {
        return Err(CredentialError::Invalid {
            at: here,
            what: format!("{what} is {got:#06x}, expected {want:#06x}"),
        });
    }
    Ok(())
}

/// What templates L-1 and L-2 share, up to the key's own parameters: the type, a SHA-256 name,
/// the attributes, the authPolicy (at most 64 bytes), AES-128-CFB, no scheme. Returns
/// (attributes, authPolicy).
fn ek_header(b: &[u8], at: &mut usize, kind: u16) -> Result<(u32, Vec<u8>), CredentialError> {
    expect(b, at, "type", kind)?;
    expect(b, at, "nameAlg", ALG_SHA256)?;
    let a = take(b, at, 4)?;
    let attributes = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
    let n = u16_at(b, at)? as usize;
    if n > 64 {
        return Err(CredentialError::Invalid {
            at: *at - 2,
            what: format!("authPolicy is {n} bytes"),
        });
    }
    let auth_policy = take(b, at, n)?.to_vec();
    expect(b, at, "symmetric algorithm", ALG_AES)?;
    expect(b, at, "symmetric key bits", 128)?;
    expect(b, at, "symmetric mode", ALG_CFB)?;
    expect(b, at, "scheme", ALG_NULL)?;
    Ok((attributes, auth_policy))
}

/// A TPM2B coordinate of at most 32 bytes, left-padded to 32.
fn coordinate(b: &[u8], at: &mut usize, what: &str) -> Result<[u8; 32], CredentialError> {
    let n = u16_at(b, at)? as usize;
    if n == 0 || n > 32 {
        return Err(CredentialError::Invalid {
            at: *at - 2,
            what: format!("{what} is {n} bytes, expected 1–32"),
        });
    }
    let v = take(b, at, n)?;
    let mut out = [0u8; 32];
    out[32 - n..].copy_from_slice(v);
    Ok(out)
}

impl EccEkPublic {
    /// Parses a TPMT_PUBLIC that must be a NIST P-256 storage key with a SHA-256 name and an
    /// AES-128-CFB inner wrapper (the EK template L-2). Untrusted input.
    pub fn parse(bytes: &[u8]) -> Result<EccEkPublic, CredentialError> {
        let b = bytes;
        let mut at = 0;
        let (attributes, auth_policy) = ek_header(b, &mut at, ALG_ECC)?;
        expect(b, &mut at, "curveID", ECC_NIST_P256)?;
        expect(b, &mut at, "kdf", ALG_NULL)?;
        let x = coordinate(b, &mut at, "x")?;
        let y = coordinate(b, &mut at, "y")?;
        if at != b.len() {
            return Err(CredentialError::Trailing(b.len() - at));
        }
        let ek = EccEkPublic {
            attributes,
            auth_policy,
            x,
            y,
            marshalled: bytes.to_vec(),
        };
        ek.point()?;
        Ok(ek)
    }

    fn point(&self) -> Result<p256::PublicKey, CredentialError> {
        let mut sec1 = [4u8; 65];
        sec1[1..33].copy_from_slice(&self.x);
        sec1[33..].copy_from_slice(&self.y);
        p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| CredentialError::Invalid {
            at: 0,
            what: "the EK's point is not on P-256".into(),
        })
    }
}

impl EkPublic {
    /// Parses an EK's TPMT_PUBLIC: template L-1 (RSA 2048) or L-2 (ECC P-256), by its type.
    pub fn parse(bytes: &[u8]) -> Result<EkPublic, CredentialError> {
        match bytes.get(..2) {
            Some([0x00, 0x23]) => EccEkPublic::parse(bytes).map(EkPublic::Ecc),
            _ => RsaEkPublic::parse(bytes).map(EkPublic::Rsa),
        }
    }

    /// The object's name: `TPM_ALG_SHA256 ‖ SHA-256(TPMT_PUBLIC)`.
    pub fn name(&self) -> Vec<u8> {
        let marshalled = match self {
            EkPublic::Rsa(k) => &k.marshalled,
            EkPublic::Ecc(k) => &k.marshalled,
        };
        let mut n = ALG_SHA256.to_be_bytes().to_vec();
        n.extend_from_slice(&Sha256::digest(marshalled));
        n
    }

    /// The key as an X.509 SubjectPublicKeyInfo (DER): what its certificate must certify.
    pub fn spki_der(&self) -> Result<Vec<u8>, CredentialError> {
        match self {
            EkPublic::Rsa(k) => {
                use rsa::pkcs8::EncodePublicKey;
                k.public_key()?
                    .to_public_key_der()
                    .map(|d| d.as_bytes().to_vec())
                    .map_err(|e| CredentialError::Rsa(e.to_string()))
            }
            EkPublic::Ecc(k) => {
                use p256::pkcs8::EncodePublicKey;
                k.point()?
                    .to_public_key_der()
                    .map(|d| d.as_bytes().to_vec())
                    .map_err(|e| CredentialError::Invalid {
                        at: 0,
                        what: e.to_string(),
                    })
            }
        }
    }

    /// "RSA 2048 (L-1)" or "ECC P-256 (L-2)", for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            EkPublic::Rsa(_) => "RSA 2048 (template L-1)",
            EkPublic::Ecc(_) => "ECC P-256 (template L-2)",
        }
    }
}

impl RsaEkPublic {
    /// Parses a TPMT_PUBLIC that must be an RSA-2048 storage key with a SHA-256 name and an
    /// AES-128-CFB inner wrapper (the EK template L-1). Untrusted input.
    pub fn parse(bytes: &[u8]) -> Result<RsaEkPublic, CredentialError> {
        let b = bytes;
        let mut at = 0;
        let (attributes, auth_policy) = ek_header(b, &mut at, ALG_RSA)?;
        let key_bits = u16_at(b, &mut at)?;
        if key_bits != 2048 {
            return Err(CredentialError::Invalid {
                at: at - 2,
                what: format!("keyBits is {key_bits}, expected 2048"),
            });
        }
        let e = take(b, &mut at, 4)?;
        let exponent = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
        let n = u16_at(b, &mut at)? as usize;
        if n != 256 {
            return Err(CredentialError::Invalid {
                at: at - 2,
                what: format!("modulus is {n} bytes, expected 256"),
            });
        }
        let modulus = take(b, &mut at, n)?.to_vec();
        if at != b.len() {
            return Err(CredentialError::Trailing(b.len() - at));
        }
        Ok(RsaEkPublic {
            attributes,
            auth_policy,
            key_bits,
            exponent,
            modulus,
            marshalled: bytes.to_vec(),
        })
    }

    /// The object's name: `TPM_ALG_SHA256 ‖ SHA-256(TPMT_PUBLIC)`.
    pub fn name(&self) -> Vec<u8> {
        let mut n = ALG_SHA256.to_be_bytes().to_vec();
        n.extend_from_slice(&Sha256::digest(&self.marshalled));
        n
    }

    fn public_key(&self) -> Result<rsa::PublicKey, CredentialError> {
        let n = rsa::BoxedUint::from_be_slice(&self.modulus, 2048)
            .map_err(|e| CredentialError::Rsa(e.to_string()))?;
        let e = rsa::BoxedUint::from(u64::from(self.exponent_value()));
        rsa::PublicKey::new(n, e).map_err(|e| CredentialError::Rsa(e.to_string()))
    }

    /// The public exponent as the RSA key has it.
    pub fn exponent_value(&self) -> u32 {
        if self.exponent == 0 {
            65537
        } else {
            self.exponent
        }
    }
}

fn hmac_sha256(key: &[u8]) -> hmac::Hmac<Sha256> {
    <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// KDFa (Part 1, §11.4.10.2) with SHA-256: `bits` of key material for `label`.
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter = 1u32;
    while out.len() < bytes {
        let mut h = hmac_sha256(key);
        h.update(&counter.to_be_bytes());
        h.update(label.as_bytes());
        h.update(&[0]);
        h.update(context_u);
        h.update(context_v);
        h.update(&bits.to_be_bytes());
        out.extend_from_slice(&h.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// KDFe (Part 1, §11.4.10.3) with SHA-256: `bits` of key material from the ECDH secret `z`.
pub fn kdfe(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter = 1u32;
    while out.len() < bytes {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(label.as_bytes());
        h.update([0]);
        h.update(party_u);
        h.update(party_v);
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// The credential's seed and how it travels to the EK: RSA-OAEP (label "IDENTITY") for an RSA
/// EK; for an ECC EK, an ephemeral key's point, the seed being KDFe over the ECDH secret.
fn seed_for(ek: &EkPublic) -> Result<(zeroize::Zeroizing<Vec<u8>>, Vec<u8>), CredentialError> {
    let random = |n: usize| -> Result<zeroize::Zeroizing<Vec<u8>>, CredentialError> {
        let mut v = zeroize::Zeroizing::new(vec![0u8; n]);
        getrandom::fill(&mut v[..]).map_err(|e| CredentialError::Rsa(e.to_string()))?;
        Ok(v)
    };
    match ek {
        EkPublic::Rsa(k) => {
            let seed = random(32)?;
            let padding = rsa::Oaep::<Sha256>::new_with_label(&b"IDENTITY\0"[..]);
            let encrypted = k
                .public_key()?
                .encrypt(&mut getrandom::SysRng, padding, &seed[..])
                .map_err(|e| CredentialError::Rsa(e.to_string()))?;
            Ok((seed, encrypted))
        }
        EkPublic::Ecc(k) => {
            use p256::elliptic_curve::point::AffineCoordinates;
            let ek_point = k.point()?;
            // A random scalar (retried in the negligible case it is 0 or ≥ n).
            let ephemeral = loop {
                if let Ok(sk) = p256::SecretKey::from_slice(&random(32)?) {
                    break sk;
                }
            };
            let shared = (p256::ProjectivePoint::from(*ek_point.as_affine())
                * *ephemeral.to_nonzero_scalar())
            .to_affine();
            let z = zeroize::Zeroizing::new(shared.x().to_vec());
            let q = ephemeral.public_key().as_affine().to_owned();
            let (qx, qy) = {
                use p256::elliptic_curve::sec1::ToSec1Point;
                let sec1 = q.to_sec1_point(false);
                let b = sec1.as_bytes().to_vec();
                (b[1..33].to_vec(), b[33..65].to_vec())
            };
            let seed = zeroize::Zeroizing::new(kdfe(&z, "IDENTITY", &qx, &k.x, 256));
            // TPMS_ECC_POINT: x and y as TPM2Bs.
            let mut point = Vec::with_capacity(68);
            for c in [&qx, &qy] {
                point.extend_from_slice(&(c.len() as u16).to_be_bytes());
                point.extend_from_slice(c);
            }
            Ok((seed, point))
        }
    }
}

/// AES-128 in CFB mode with a zero IV (the TPM's inner wrapper for credentials).
fn aes128_cfb_encrypt(key: &[u8], data: &[u8]) -> Vec<u8> {
    use aes::cipher::{Array, BlockCipherEncrypt, KeyInit as _};
    let cipher = aes::Aes128::new(&Array::from(<[u8; 16]>::try_from(key).unwrap_or([0; 16])));
    let mut feedback = [0u8; 16];
    let mut out = Vec::with_capacity(data.len());
    for chunk in data.chunks(16) {
        let mut block = Array::from(feedback);
        cipher.encrypt_block(&mut block);
        let c: Vec<u8> = chunk.iter().zip(block.iter()).map(|(p, k)| p ^ k).collect();
        feedback[..c.len()].copy_from_slice(&c);
        out.extend_from_slice(&c);
    }
    out
}

/// A credential for `object_name` (the AK's name) carrying `secret`, decryptable only by the
/// TPM holding `ek`. Returns (TPM2B_ID_OBJECT contents, TPM2B_ENCRYPTED_SECRET contents): the
/// `credentialBlob` and `secret` parameters of TPM2_ActivateCredential, without their size
/// prefixes.
pub fn make_credential(
    ek: &EkPublic,
    object_name: &[u8],
    secret: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    if secret.len() > 32 {
        return Err(CredentialError::Invalid {
            at: 0,
            what: format!(
                "a credential carries at most 32 bytes, not {}",
                secret.len()
            ),
        });
    }
    let (seed, encrypted_seed) = seed_for(ek)?;

    let sym_key = zeroize::Zeroizing::new(kdfa(&seed[..], "STORAGE", object_name, &[], 128));
    let mut plain = (secret.len() as u16).to_be_bytes().to_vec();
    plain.extend_from_slice(secret);
    let enc_identity = aes128_cfb_encrypt(&sym_key, &plain);
    let hmac_key = zeroize::Zeroizing::new(kdfa(&seed[..], "INTEGRITY", &[], &[], 256));
    let mut h = hmac_sha256(&hmac_key);
    h.update(&enc_identity);
    h.update(object_name);
    let outer = h.finalize().into_bytes();
    let mut blob = (outer.len() as u16).to_be_bytes().to_vec();
    blob.extend_from_slice(&outer);
    blob.extend_from_slice(&enc_identity);
    Ok((blob, encrypted_seed))
}

/// Fuzz entry point: parse anything, never panic.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(ek) = EkPublic::parse(data) {
        let _ = ek.spki_der();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_matches_the_tpm_reference_construction() {
        // Two blocks, truncated; the requested length is part of every block's input.
        let k = kdfa(b"key", "STORAGE", b"u", b"v", 384);
        assert_eq!(k.len(), 48);
        assert_ne!(&kdfa(b"key", "STORAGE", b"u", b"v", 256)[..], &k[..32]);
        // The first block by hand: HMAC(key, 1 ‖ "STORAGE" ‖ 0 ‖ u ‖ v ‖ 384).
        let mut h = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(b"key").unwrap();
        h.update(b"\0\0\0\x01STORAGE\0uv\0\0\x01\x80");
        assert_eq!(&h.finalize().into_bytes()[..], &k[..32]);
        assert_ne!(kdfa(b"key", "INTEGRITY", b"u", b"v", 384), k);
        // The real check is the TPM's: tests/host_attestation.rs activates credentials on swtpm.
    }

    #[test]
    fn cfb_with_a_zero_iv_round_trips() {
        let key = [7u8; 16];
        let data = b"an odd-length message of 37 bytes...";
        let c = aes128_cfb_encrypt(&key, data);
        assert_eq!(c.len(), data.len());
        assert_ne!(&c[..], &data[..]);
        // CFB decryption is encryption of the ciphertext's feedback: check against one block.
        use aes::cipher::{Array, BlockCipherEncrypt, KeyInit as _};
        let cipher = aes::Aes128::new(&Array::from(key));
        let mut b = Array::from([0u8; 16]);
        cipher.encrypt_block(&mut b);
        let first: Vec<u8> = c[..16].iter().zip(b.iter()).map(|(x, k)| x ^ k).collect();
        assert_eq!(&first[..], &data[..16]);
    }

    /// An L-2 EK public area for a software key (what a TPM would report for its own).
    fn ecc_ek(key: &p256::SecretKey) -> Vec<u8> {
        use p256::elliptic_curve::sec1::ToSec1Point;
        let sec1 = key.public_key().as_affine().to_sec1_point(false);
        let xy = sec1.as_bytes();
        let mut b = Vec::new();
        b.extend_from_slice(&ALG_ECC.to_be_bytes());
        b.extend_from_slice(&ALG_SHA256.to_be_bytes());
        b.extend_from_slice(&0x0003_00b2u32.to_be_bytes());
        b.extend_from_slice(&32u16.to_be_bytes());
        b.extend_from_slice(&EK_POLICY);
        for v in [ALG_AES, 128, ALG_CFB, ALG_NULL, ECC_NIST_P256, ALG_NULL, 32] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&xy[1..33]);
        b.extend_from_slice(&32u16.to_be_bytes());
        b.extend_from_slice(&xy[33..]);
        b
    }

    #[test]
    fn an_ecc_eks_seed_is_the_one_its_private_key_derives() {
        let ek_key = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
        let bytes = ecc_ek(&ek_key);
        let ek = EkPublic::parse(&bytes).unwrap();
        assert!(matches!(ek, EkPublic::Ecc(_)));
        assert_eq!(ek.kind(), "ECC P-256 (template L-2)");
        let (seed, point) = seed_for(&ek).unwrap();
        assert_eq!(point.len(), 68);
        // The TPM's side: Z = d_EK · Q_e, seed = KDFe(Z, "IDENTITY", Q_e.x, EK.x).
        let (qx, qy) = (&point[2..34], &point[36..68]);
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(qx);
        sec1.extend_from_slice(qy);
        let q_e = p256::PublicKey::from_sec1_bytes(&sec1).unwrap();
        use p256::elliptic_curve::point::AffineCoordinates;
        let z = (p256::ProjectivePoint::from(*q_e.as_affine()) * *ek_key.to_nonzero_scalar())
            .to_affine()
            .x();
        let EkPublic::Ecc(e) = &ek else {
            unreachable!()
        };
        assert_eq!(&seed[..], &kdfe(&z, "IDENTITY", qx, &e.x, 256)[..]);
        // Each credential has its own ephemeral key.
        assert_ne!(seed_for(&ek).unwrap().1, point);
        // The certificate comparison sees the same key.
        use p256::pkcs8::EncodePublicKey;
        assert_eq!(
            ek.spki_der().unwrap(),
            ek_key.public_key().to_public_key_der().unwrap().as_bytes()
        );
        // Every truncation, a point off the curve, another curve: refused.
        for n in 0..bytes.len() {
            assert!(EkPublic::parse(&bytes[..n]).is_err(), "{n}");
        }
        let mut off = bytes.clone();
        let last = off.len() - 1;
        off[last] ^= 1;
        assert!(EkPublic::parse(&off).is_err());
        let mut p384 = bytes.clone();
        p384[10 + 32 + 9] = 4;
        assert!(EkPublic::parse(&p384).is_err());
    }

    #[test]
    fn ek_parse_checks_every_field() {
        let mut b = Vec::new();
        b.extend_from_slice(&ALG_RSA.to_be_bytes());
        b.extend_from_slice(&ALG_SHA256.to_be_bytes());
        b.extend_from_slice(&0x0003_00b2u32.to_be_bytes());
        b.extend_from_slice(&32u16.to_be_bytes());
        b.extend_from_slice(&EK_POLICY);
        for v in [ALG_AES, 128, ALG_CFB, ALG_NULL, 2048] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&256u16.to_be_bytes());
        b.extend_from_slice(&[0xc5; 256]);
        let ek = RsaEkPublic::parse(&b).unwrap();
        assert_eq!(ek.exponent_value(), 65537);
        assert_eq!(ek.name().len(), 34);
        for n in 0..b.len() {
            assert!(RsaEkPublic::parse(&b[..n]).is_err());
        }
        let mut ecc = b.clone();
        ecc[1] = 0x23;
        assert!(matches!(
            RsaEkPublic::parse(&ecc),
            Err(CredentialError::Invalid { at: 0, .. })
        ));
    }
}
