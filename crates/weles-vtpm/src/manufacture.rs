//! Manufacturing a new vTPM, as `swtpm_setup` does: PCR banks, the two endorsement keys and
//! their certificates, issued by a CA whose key the caller provides (the manager, later).
//!
//! - PCR banks: allocated with TPM2_PCR_Allocate (platform authorisation), then a TPM reset.
//! - EKs from the TCG default templates (EK Credential Profile: RSA-2048 "L-1" and ECC NIST
//!   P-256 "L-2", restricted decryption keys with the PolicySecret(endorsement) policy), made
//!   persistent at 0x81010001 (RSA) and 0x81010002 (ECC).
//! - EK certificates (X.509 v3, signed by the CA's ECDSA P-256 key) in NV indices 0x01c00002
//!   (RSA) and 0x01c0000a (ECC), platform-created and write-locked, as tpm2-tools' `tpm2_getekcertificate`
//!   and the Linux kernel's TPM tooling expect them.

use std::str::FromStr;
use std::time::Duration;

use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::Validity;
use x509_cert::{Certificate, TbsCertificate};

use crate::engine::Engine;
use crate::frame;
use crate::tpm_cmd::{self, command};

pub const RSA_EK_HANDLE: u32 = 0x8101_0001;
pub const ECC_EK_HANDLE: u32 = 0x8101_0002;
pub const RSA_EK_CERT_NV: u32 = 0x01c0_0002;
pub const ECC_EK_CERT_NV: u32 = 0x01c0_000a;

const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;
const TPM_RH_PLATFORM: u32 = 0x4000_000c;

/// PolicySecret(TPM_RH_ENDORSEMENT): the authPolicy of the default EK templates.
const EK_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];
/// fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt.
const EK_ATTRIBUTES: u32 = 0x0003_00b2;

/// Why manufacturing failed.
#[derive(Debug, thiserror::Error)]
pub enum ManufactureError {
    #[error("{step}: TPM error {rc:#x}")]
    Tpm { step: &'static str, rc: u32 },
    #[error("{step}: malformed TPM response")]
    Response { step: &'static str },
    #[error("CA key: {0} (expected a PKCS#8 PEM ECDSA P-256 private key)")]
    CaKey(String),
    #[error("CA certificate: {0}")]
    CaCert(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("unknown PCR bank {0:?} (sha1, sha256, sha384, sha512)")]
    Bank(String),
}

/// The CA that issues EK certificates: its signing key and its certificate's subject.
pub struct Ca {
    key: p256::ecdsa::SigningKey,
    subject: Name,
}

impl Ca {
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Ca, ManufactureError> {
        use p256::pkcs8::DecodePrivateKey;
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(key_pem)
            .map_err(|e| ManufactureError::CaKey(e.to_string()))?;
        let cert = Certificate::from_pem(cert_pem.as_bytes())
            .map_err(|e| ManufactureError::CaCert(e.to_string()))?;
        // Certificates signed by a key other than the certificate's would verify nowhere.
        let ours = key.verifying_key().to_sec1_point(false);
        let certified = cert
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes();
        if ours.as_bytes() != certified {
            return Err(ManufactureError::CaCert(
                "its public key is not the CA key's (wrong --ca-key or --ca-cert?)".into(),
            ));
        }
        Ok(Ca {
            key,
            subject: cert.tbs_certificate().subject().clone(),
        })
    }
}

/// A new random ECDSA P-256 key.
pub fn new_p256_key() -> Result<p256::ecdsa::SigningKey, String> {
    loop {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut()).map_err(|e| format!("randomness: {e}"))?;
        // Fails only for the zero scalar or one ≥ the group order (probability ~2^-32).
        if let Ok(k) = p256::ecdsa::SigningKey::from_slice(raw.as_ref()) {
            return Ok(k);
        }
    }
}

/// The SubjectPublicKeyInfo of a P-256 key.
pub fn p256_spki(key: &p256::ecdsa::SigningKey) -> Result<SubjectPublicKeyInfoOwned, String> {
    use p256::pkcs8::EncodePublicKey;
    let der = key
        .verifying_key()
        .to_public_key_der()
        .map_err(|e| e.to_string())?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| e.to_string())
}

/// Issues a certificate for `spki` shaped by `profile`, signed by `signer` (ECDSA P-256 with
/// SHA-256), valid from now for `days`, with a random positive 128-bit serial number.
pub fn issue(
    profile: impl BuilderProfile,
    spki: SubjectPublicKeyInfoOwned,
    signer: &p256::ecdsa::SigningKey,
    days: u64,
) -> Result<Certificate, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| err(&e))?;
    serial[0] &= 0x7f;
    let serial = SerialNumber::new(&serial).map_err(|e| err(&e))?;
    let validity = Validity::from_now(Duration::from_secs(days * 86_400)).map_err(|e| err(&e))?;
    CertificateBuilder::new(profile, serial, validity, spki)
        .map_err(|e| err(&e))?
        .build::<_, p256::ecdsa::DerSignature>(signer)
        .map_err(|e| err(&e))
}

/// A new self-signed EK CA (ECDSA P-256, 20 years), as the manager creates for its vTPMs:
/// its PKCS#8 private key and its certificate, both PEM.
pub fn new_ca(common_name: &str) -> Result<(zeroize::Zeroizing<String>, String), ManufactureError> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use x509_cert::der::EncodePem;
    let err = |e: &dyn std::fmt::Display| ManufactureError::Certificate(e.to_string());
    let key = new_p256_key().map_err(|e| err(&e))?;
    let subject =
        Name::from_str(&format!("CN={},O=WELES", escape(common_name))).map_err(|e| err(&e))?;
    let spki = p256_spki(&key).map_err(|e| err(&e))?;
    let profile = Profile {
        issuer: subject.clone(),
        subject,
        ca: true,
        key_usage: KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
        extra: Vec::new(),
    };
    let cert = issue(profile, spki, &key, 20 * 365).map_err(|e| err(&e))?;
    let cert_pem = cert.to_pem(LineEnding::LF).map_err(|e| err(&e))?;
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| err(&e))?;
    Ok((zeroize::Zeroizing::new(key_pem.to_string()), cert_pem))
}

/// The shape of every certificate WELES issues: issuer and subject, basic constraints (a CA
/// may issue only end-entity certificates: path length 0), key usage, further extensions.
pub struct Profile {
    pub issuer: Name,
    pub subject: Name,
    pub ca: bool,
    pub key_usage: KeyUsage,
    pub extra: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut extensions = vec![
            BasicConstraints {
                ca: self.ca,
                path_len_constraint: self.ca.then_some(0),
            }
            .to_extension(tbs.subject(), &[])?,
            self.key_usage.to_extension(tbs.subject(), &[])?,
        ];
        extensions.extend(self.extra.iter().cloned());
        Ok(extensions)
    }
}

/// One endorsement key: where it lives, its public area and its certificate (DER).
#[derive(Clone, Debug)]
pub struct Ek {
    pub kind: &'static str,
    pub handle: u32,
    pub nv_index: u32,
    pub public: Vec<u8>,
    pub certificate: Vec<u8>,
}

/// Bank names → TPM algorithm ids.
pub fn banks(names: &str) -> Result<Vec<u16>, ManufactureError> {
    names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| match n {
            "sha1" => Ok(0x0004),
            "sha256" => Ok(0x000b),
            "sha384" => Ok(0x000c),
            "sha512" => Ok(0x000d),
            other => Err(ManufactureError::Bank(other.into())),
        })
        .collect()
}

fn run(engine: &Engine, step: &'static str, cmd: &[u8]) -> Result<Vec<u8>, ManufactureError> {
    for _ in 0..20 {
        let resp = engine.process(cmd);
        match tpm_cmd::response_code(&resp) {
            Some(0) => return Ok(resp),
            Some(0x922) => continue, // TPM_RC_RETRY
            Some(rc) => return Err(ManufactureError::Tpm { step, rc }),
            None => return Err(ManufactureError::Response { step }),
        }
    }
    Err(ManufactureError::Tpm { step, rc: 0x922 })
}

/// Manufactures the TPM of `engine` (freshly initialised, empty state). The TPM is left running.
pub fn manufacture(
    engine: &Engine,
    pcr_banks: &[u16],
    ca: &Ca,
    vtpm_id: &str,
) -> Result<Vec<Ek>, ManufactureError> {
    let init = |step| -> Result<(), ManufactureError> {
        let rc = engine.init(false);
        if rc != 0 {
            return Err(ManufactureError::Tpm { step, rc });
        }
        run(engine, step, &frame::startup(true)).map(|_| ())
    };
    init("power on")?;

    // PCR banks: allocate, then reset the TPM so the allocation takes effect.
    let mut sel = (tpm_cmd::BANKS.len() as u32).to_be_bytes().to_vec();
    for alg in tpm_cmd::BANKS {
        sel.extend_from_slice(&alg.to_be_bytes());
        let on = if pcr_banks.contains(&alg) { 0xff } else { 0 };
        sel.extend_from_slice(&[3, on, on, on]);
    }
    run(
        engine,
        "PCR_Allocate",
        &command(0x12b, &[TPM_RH_PLATFORM], true, &sel),
    )?;
    run(engine, "Shutdown", &command(0x145, &[], false, &[0, 0]))?;
    init("reset after PCR_Allocate")?;

    let tpm = TpmIdentity::read(engine)?;
    let mut eks = Vec::new();
    for (kind, template, handle, nv) in [
        ("rsa", rsa_template(), RSA_EK_HANDLE, RSA_EK_CERT_NV),
        ("ecc", ecc_template(), ECC_EK_HANDLE, ECC_EK_CERT_NV),
    ] {
        let mut params = vec![0, 4, 0, 0, 0, 0]; // TPM2B_SENSITIVE_CREATE: empty
        params.extend_from_slice(&(template.len() as u16).to_be_bytes());
        params.extend_from_slice(&template);
        params.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // outsideInfo, creationPCR
        let resp = run(
            engine,
            "CreatePrimary (EK)",
            &command(0x131, &[TPM_RH_ENDORSEMENT], true, &params),
        )?;
        let transient = u32::from_be_bytes(
            resp.get(10..14)
                .ok_or(ManufactureError::Response {
                    step: "CreatePrimary",
                })?
                .try_into()
                .unwrap_or_default(),
        );
        let public = tpm2b_at(&resp, 18)
            .ok_or(ManufactureError::Response {
                step: "CreatePrimary",
            })?
            .to_vec();
        run(
            engine,
            "EvictControl (EK)",
            &command(
                0x120,
                &[TPM_RH_OWNER, transient],
                true,
                &handle.to_be_bytes(),
            ),
        )?;
        run(
            engine,
            "FlushContext",
            &command(0x165, &[transient], false, &[]),
        )?;
        let spki = spki_of(&public).ok_or(ManufactureError::Response {
            step: "EK public area",
        })?;
        let certificate = certificate(ca, spki, kind, vtpm_id, &tpm)?;
        store_certificate(engine, nv, &certificate)?;
        eks.push(Ek {
            kind,
            handle,
            nv_index: nv,
            public,
            certificate,
        });
    }
    Ok(eks)
}

fn tpm2b_at(b: &[u8], at: usize) -> Option<&[u8]> {
    let n = u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
    b.get(at + 2..at + 2 + n)
}

fn template_head(alg: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&alg.to_be_bytes());
    t.extend_from_slice(&0x000bu16.to_be_bytes()); // nameAlg sha256
    t.extend_from_slice(&EK_ATTRIBUTES.to_be_bytes());
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(&EK_POLICY);
    t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES-128-CFB
    t.extend_from_slice(&[0x00, 0x10]); // scheme NULL
    t
}

fn rsa_template() -> Vec<u8> {
    let mut t = template_head(0x0001);
    t.extend_from_slice(&2048u16.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // default exponent
    t.extend_from_slice(&256u16.to_be_bytes());
    t.extend_from_slice(&[0u8; 256]);
    t
}

fn ecc_template() -> Vec<u8> {
    let mut t = template_head(0x0023);
    t.extend_from_slice(&0x0003u16.to_be_bytes()); // NIST P-256
    t.extend_from_slice(&[0x00, 0x10]); // kdf NULL
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(&[0u8; 32]);
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(&[0u8; 32]);
    t
}

/// The SubjectPublicKeyInfo of an EK's public area (TPMT_PUBLIC), for its certificate.
pub fn spki_of(public: &[u8]) -> Option<SubjectPublicKeyInfoOwned> {
    let u16_at = |at: usize| Some(u16::from_be_bytes(public.get(at..at + 2)?.try_into().ok()?));
    let alg = u16_at(0)?;
    let policy_len = u16_at(8)? as usize;
    let mut pos = 10 + policy_len;
    if u16_at(pos)? != 0x0010 {
        pos += 6; // symmetric algorithm, key bits, mode
    } else {
        pos += 2;
    }
    pos += if u16_at(pos)? != 0x0010 { 4 } else { 2 }; // scheme (+ hash)
    let der = match alg {
        0x0001 => {
            pos += 2; // keyBits
            let exponent = u32::from_be_bytes(public.get(pos..pos + 4)?.try_into().ok()?);
            let modulus = tpm2b_at(public, pos + 4)?;
            rsa_spki(modulus, if exponent == 0 { 65537 } else { exponent })
        }
        0x0023 => {
            pos += 2; // curve
            pos += if u16_at(pos)? != 0x0010 { 4 } else { 2 }; // kdf
            let x = tpm2b_at(public, pos)?;
            let y = tpm2b_at(public, pos + 2 + x.len())?;
            let mut point = vec![4u8];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            let key = p256::PublicKey::from_sec1_bytes(&point).ok()?;
            p256::pkcs8::EncodePublicKey::to_public_key_der(&key)
                .ok()?
                .as_bytes()
                .to_vec()
        }
        _ => return None,
    };
    SubjectPublicKeyInfoOwned::from_der(&der).ok()
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::new();
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) || trimmed.is_empty() {
        content.push(0);
    }
    content.extend_from_slice(&trimmed);
    der_tlv(0x02, &content)
}

fn rsa_spki(modulus: &[u8], exponent: u32) -> Vec<u8> {
    const RSA_ENCRYPTION: [u8; 11] = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let key = der_tlv(
        0x30,
        &[der_uint(modulus), der_uint(&exponent.to_be_bytes())].concat(),
    );
    let mut bits = vec![0u8];
    bits.extend_from_slice(&key);
    let alg = der_tlv(0x30, &[&RSA_ENCRYPTION[..], &[0x05, 0x00]].concat());
    der_tlv(0x30, &[alg, der_tlv(0x03, &bits)].concat())
}

fn certificate(
    ca: &Ca,
    spki: SubjectPublicKeyInfoOwned,
    kind: &str,
    vtpm_id: &str,
    tpm: &TpmIdentity,
) -> Result<Vec<u8>, ManufactureError> {
    let err = |e: &dyn std::fmt::Display| ManufactureError::Certificate(e.to_string());
    let subject = Name::from_str(&format!(
        "CN=weles vTPM EK {kind},OU={},O=WELES",
        escape(vtpm_id)
    ))
    .map_err(|e| err(&e))?;
    // A leaf for a decryption-only key, with the TCG EK Credential Profile's extensions.
    let profile = Profile {
        issuer: ca.subject.clone(),
        subject,
        ca: false,
        key_usage: KeyUsage(
            if kind == "rsa" {
                KeyUsages::KeyEncipherment
            } else {
                KeyUsages::KeyAgreement
            }
            .into(),
        ),
        extra: tcg_extensions(tpm).map_err(|e| err(&e))?,
    };
    let cert = issue(profile, spki, &ca.key, 20 * 365).map_err(|e| err(&e))?;
    cert.to_der().map_err(|e| err(&e))
}

/// What the TPM reports about itself (TPM2_GetCapability, fixed properties): the EK
/// certificate states it, as the TCG EK Credential Profile asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmIdentity {
    /// TPM_PT_MANUFACTURER: the TCG vendor id (libtpms: "IBM").
    pub manufacturer: u32,
    /// TPM_PT_VENDOR_STRING_1..4, as text.
    pub model: String,
    /// TPM_PT_FIRMWARE_VERSION_1.
    pub firmware: u32,
    /// TPM_PT_FAMILY_INDICATOR ("2.0"), TPM_PT_LEVEL, TPM_PT_REVISION (e.g. 164 for 1.64).
    pub family: String,
    pub level: u32,
    pub revision: u32,
}

impl TpmIdentity {
    fn read(engine: &Engine) -> Result<TpmIdentity, ManufactureError> {
        let prop = |p: u32| tpm_property(engine, p);
        let text = |v: &[u32]| -> String {
            let bytes: Vec<u8> = v.iter().flat_map(|w| w.to_be_bytes()).collect();
            String::from_utf8_lossy(&bytes)
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim()
                .to_string()
        };
        let model = [prop(0x106)?, prop(0x107)?, prop(0x108)?, prop(0x109)?];
        Ok(TpmIdentity {
            manufacturer: prop(0x105)?,
            model: text(&model),
            firmware: prop(0x10b)?,
            family: text(&[prop(0x100)?]),
            level: prop(0x101)?,
            revision: prop(0x102)?,
        })
    }
}

/// One TPM_CAP_TPM_PROPERTIES value.
fn tpm_property(engine: &Engine, property: u32) -> Result<u32, ManufactureError> {
    let mut params = 6u32.to_be_bytes().to_vec(); // TPM_CAP_TPM_PROPERTIES
    params.extend_from_slice(&property.to_be_bytes());
    params.extend_from_slice(&1u32.to_be_bytes());
    let resp = run(
        engine,
        "GetCapability",
        &command(0x17a, &[], false, &params),
    )?;
    // header(10) moreData(1) capability(4) count(4) property(4) value(4)
    let word = |at: usize| {
        resp.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    match (word(19), word(23)) {
        (Some(p), Some(v)) if p == property => Ok(v),
        _ => Err(ManufactureError::Response {
            step: "GetCapability",
        }),
    }
}

// Object identifiers of the TCG EK Credential Profile, DER-encoded (tag 06 included).
const OID_TPM_MANUFACTURER: [u8; 7] = [0x06, 0x05, 0x67, 0x81, 0x05, 0x02, 0x01];
const OID_TPM_MODEL: [u8; 7] = [0x06, 0x05, 0x67, 0x81, 0x05, 0x02, 0x02];
const OID_TPM_VERSION: [u8; 7] = [0x06, 0x05, 0x67, 0x81, 0x05, 0x02, 0x03];
const OID_TPM_SPECIFICATION: [u8; 7] = [0x06, 0x05, 0x67, 0x81, 0x05, 0x02, 0x10];
const OID_EK_CERTIFICATE: [u8; 7] = [0x06, 0x05, 0x67, 0x81, 0x05, 0x08, 0x01];

/// The TCG EK Credential Profile's extensions:
/// - subjectAltName: a directoryName with tcg-at-tpmManufacturer ("id:" + 8 hex digits),
///   tcg-at-tpmModel and tcg-at-tpmVersion ("id:" + 8 hex digits), one attribute per RDN;
/// - subjectDirectoryAttributes: tcg-at-tpmSpecification { family, level, revision };
/// - extendedKeyUsage: tcg-kp-EKCertificate.
///
/// Not critical: the certificate has a subject, so verifiers that do not know them may ignore them.
fn tcg_extensions(tpm: &TpmIdentity) -> Result<Vec<Extension>, x509_cert::der::Error> {
    let utf8 = |s: &str| der_tlv(0x0c, s.as_bytes());
    let rdn =
        |oid: &[u8], value: &str| der_tlv(0x31, &der_tlv(0x30, &[oid, &utf8(value)[..]].concat()));
    let name = der_tlv(
        0x30,
        &[
            rdn(
                &OID_TPM_MANUFACTURER,
                &format!("id:{:08X}", tpm.manufacturer),
            ),
            rdn(&OID_TPM_MODEL, &tpm.model),
            rdn(&OID_TPM_VERSION, &format!("id:{:08X}", tpm.firmware)),
        ]
        .concat(),
    );
    let san = der_tlv(0x30, &der_tlv(0xa4, &name));
    let specification = der_tlv(
        0x30,
        &[
            utf8(&tpm.family),
            der_uint(&tpm.level.to_be_bytes()),
            der_uint(&tpm.revision.to_be_bytes()),
        ]
        .concat(),
    );
    let sda = der_tlv(
        0x30,
        &der_tlv(
            0x30,
            &[&OID_TPM_SPECIFICATION[..], &der_tlv(0x31, &specification)].concat(),
        ),
    );
    let eku = der_tlv(0x30, &OID_EK_CERTIFICATE);
    let ext = |oid: &str, value: Vec<u8>| -> Result<Extension, x509_cert::der::Error> {
        Ok(Extension {
            extn_id: oid
                .parse()
                .map_err(|_| x509_cert::der::ErrorKind::OidMalformed)?,
            critical: false,
            extn_value: x509_cert::der::asn1::OctetString::new(value)?,
        })
    };
    Ok(vec![
        ext("2.5.29.17", san)?,
        ext("2.5.29.9", sda)?,
        ext("2.5.29.37", eku)?,
    ])
}

/// RFC 4514 escaping for a value inside a distinguished name.
fn escape(v: &str) -> String {
    v.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| {
            if ",+\"\\<>;=".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Writes a certificate into a platform-created, write-locked NV index.
fn store_certificate(engine: &Engine, nv: u32, cert: &[u8]) -> Result<(), ManufactureError> {
    // PLATFORMCREATE | AUTHREAD | OWNERREAD | PPREAD | PPWRITE | NO_DA | WRITEDEFINE.
    let attrs: u32 = (1 << 30) | (1 << 18) | (1 << 17) | (1 << 16) | 1 | (1 << 25) | (1 << 13);
    let size = u16::try_from(cert.len())
        .map_err(|_| ManufactureError::Certificate("larger than 64 KiB".into()))?;
    let mut public = nv.to_be_bytes().to_vec();
    public.extend_from_slice(&0x000bu16.to_be_bytes());
    public.extend_from_slice(&attrs.to_be_bytes());
    public.extend_from_slice(&0u16.to_be_bytes());
    public.extend_from_slice(&size.to_be_bytes());
    let mut params = vec![0, 0];
    params.extend_from_slice(&(public.len() as u16).to_be_bytes());
    params.extend_from_slice(&public);
    run(
        engine,
        "NV_DefineSpace (EK certificate)",
        &command(0x12a, &[TPM_RH_PLATFORM], true, &params),
    )?;
    for (i, chunk) in cert.chunks(1024).enumerate() {
        let mut p = (chunk.len() as u16).to_be_bytes().to_vec();
        p.extend_from_slice(chunk);
        p.extend_from_slice(&((i * 1024) as u16).to_be_bytes());
        run(
            engine,
            "NV_Write (EK certificate)",
            &command(0x137, &[TPM_RH_PLATFORM, nv], true, &p),
        )?;
    }
    run(
        engine,
        "NV_WriteLock (EK certificate)",
        &command(0x138, &[TPM_RH_PLATFORM, nv], true, &[]),
    )?;
    Ok(())
}

/// Reads an EK certificate back from its NV index (management request; TPM must be running).
pub fn read_certificate(engine: &Engine, nv: u32) -> Result<Vec<u8>, ManufactureError> {
    let resp = run(engine, "NV_ReadPublic", &command(0x169, &[nv], false, &[]))?;
    // TPM2B_NV_PUBLIC: size, index(4), nameAlg(2), attributes(4), authPolicy (TPM2B), dataSize(2).
    let public = tpm2b_at(&resp, 10).ok_or(ManufactureError::Response {
        step: "NV_ReadPublic",
    })?;
    let policy_len = u16::from_be_bytes(
        public
            .get(10..12)
            .ok_or(ManufactureError::Response {
                step: "NV_ReadPublic",
            })?
            .try_into()
            .unwrap_or_default(),
    ) as usize;
    let size = u16::from_be_bytes(
        public
            .get(12 + policy_len..14 + policy_len)
            .ok_or(ManufactureError::Response {
                step: "NV_ReadPublic",
            })?
            .try_into()
            .unwrap_or_default(),
    ) as usize;
    let mut cert = Vec::with_capacity(size);
    while cert.len() < size {
        let n = (size - cert.len()).min(1024) as u16;
        let mut p = n.to_be_bytes().to_vec();
        p.extend_from_slice(&(cert.len() as u16).to_be_bytes());
        let resp = run(
            engine,
            "NV_Read (EK certificate)",
            &command(0x14e, &[nv, nv], true, &p),
        )?;
        let data = tpm2b_at(&resp, 14).ok_or(ManufactureError::Response { step: "NV_Read" })?;
        if data.is_empty() {
            return Err(ManufactureError::Response { step: "NV_Read" });
        }
        cert.extend_from_slice(data);
    }
    Ok(cert)
}
