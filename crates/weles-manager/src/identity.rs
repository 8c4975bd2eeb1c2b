//! The manager's own keys: the identity key M (Ed25519, OpenSSH format: it signs evidence and
//! audit records as sshsig, which `ssh-keygen -Y verify` can check too) and the TLS key and
//! certificate of the tenant API (P-256, self-signed: tenants pin its key, bound into the
//! evidence, rather than trusting any CA). Both are created once and kept in the sealed store.

use std::str::FromStr;

use sha2::Digest as _;
use ssh_key::private::Ed25519Keypair;
use ssh_key::{HashAlg, LineEnding, PrivateKey};
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::ToExtension;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use zeroize::Zeroizing;

fn random32() -> Result<Zeroizing<[u8; 32]>, String> {
    let mut b = Zeroizing::new([0u8; 32]);
    getrandom::fill(b.as_mut()).map_err(|e| format!("randomness: {e}"))?;
    Ok(b)
}

/// A new Ed25519 key, as an OpenSSH private key (PEM).
pub fn new_ssh_key(comment: &str) -> Result<Zeroizing<String>, String> {
    let seed = random32()?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    key.to_openssh(LineEnding::LF)
        .map(|s| Zeroizing::new(s.to_string()))
        .map_err(|e| e.to_string())
}

pub fn load_ssh_key(pem: &str) -> Result<PrivateKey, String> {
    PrivateKey::from_openssh(pem).map_err(|e| format!("stored key: {e}"))
}

/// Signs `msg` as sshsig in `namespace`; armored.
pub fn sshsig(key: &PrivateKey, namespace: &str, msg: &[u8]) -> Result<String, String> {
    key.sign(namespace, HashAlg::Sha512, msg)
        .and_then(|s| s.to_pem(LineEnding::LF))
        .map_err(|e| e.to_string())
}

/// A new TLS key (PKCS#8 DER) and its self-signed certificate (DER), ten years.
pub fn new_tls() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), String> {
    use p256::pkcs8::EncodePrivateKey;
    use weles_vtpm::manufacture::{Profile, issue, new_p256_key, p256_spki};
    let key = new_p256_key()?;
    let subject = Name::from_str("CN=welesd tenant API,O=WELES").map_err(|e| e.to_string())?;
    let eku = ExtendedKeyUsage(vec![x509_cert::der::oid::db::rfc5280::ID_KP_SERVER_AUTH])
        .to_extension(&subject, &[])
        .map_err(|e| e.to_string())?;
    let profile = Profile {
        issuer: subject.clone(),
        subject,
        ca: false,
        key_usage: KeyUsage(KeyUsages::DigitalSignature.into()),
        extra: vec![eku],
    };
    let cert = issue(profile, p256_spki(&key)?, &key, 10 * 365)?;
    let der = cert.to_der().map_err(|e| e.to_string())?;
    let key_der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    Ok((Zeroizing::new(key_der.as_bytes().to_vec()), der))
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (DER): what tenants pin.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], String> {
    let cert = Certificate::from_der(cert_der).map_err(|e| format!("certificate: {e}"))?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    Ok(sha2::Sha256::digest(&spki).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_usable() {
        let a = new_ssh_key("welesd").unwrap();
        let b = new_ssh_key("welesd").unwrap();
        assert_ne!(*a, *b);
        let k = load_ssh_key(&a).unwrap();
        let sig = sshsig(&k, "weles-test", b"hello").unwrap();
        let parsed = ssh_key::SshSig::from_pem(sig.as_bytes()).unwrap();
        k.public_key()
            .verify("weles-test", b"hello", &parsed)
            .unwrap();
        assert!(k.public_key().verify("other", b"hello", &parsed).is_err());
        let (_key, cert) = new_tls().unwrap();
        assert_eq!(spki_sha256(&cert).unwrap().len(), 32);
    }
}
