//! The X.509 pieces both vendor chains need: PEM bundles, signatures (AMD: RSA-PSS/SHA-384;
//! Intel: ECDSA P-256/SHA-256), validity at an injected time, extensions, CRLs, and a small DER
//! walker for the vendor extensions that `x509-cert` does not model.
//!
//! Every input here is untrusted (it comes with the evidence or the collateral): errors are
//! strings naming what failed, for the caller to wrap with which certificate it was.

use sha2::Sha384;
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::der::{Decode, Encode};

const RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";

/// Every certificate of a PEM bundle, in order. Trailing NULs (Intel's quotes carry a
/// C string) and text between blocks are ignored.
pub(crate) fn parse_pem_chain(pem: &[u8]) -> Result<Vec<Certificate>, String> {
    use base64ct::Encoding;
    let text = std::str::from_utf8(pem.split(|&b| b == 0).next().unwrap_or_default())
        .map_err(|_| "the PEM bundle is not UTF-8".to_owned())?;
    let mut certs = Vec::new();
    let mut rest = text;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let end = after
            .find(END)
            .ok_or_else(|| format!("certificate {} has no END line", certs.len()))?;
        let body: String = after[..end].split_whitespace().collect();
        let der = base64ct::Base64::decode_vec(&body)
            .map_err(|_| format!("certificate {} is not base64", certs.len()))?;
        let cert =
            Certificate::from_der(&der).map_err(|e| format!("certificate {}: {e}", certs.len()))?;
        certs.push(cert);
        rest = &after[end + END.len()..];
    }
    if certs.is_empty() {
        return Err("no certificate in the PEM bundle".into());
    }
    Ok(certs)
}

/// Checks that `cert` is valid at `now` (seconds since the epoch).
pub(crate) fn check_validity(cert: &Certificate, now: u64) -> Result<(), String> {
    let v = cert.tbs_certificate().validity();
    let (from, until) = (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    );
    if now < from || now > until {
        return Err(format!("not valid at {now} (valid {from}..{until})"));
    }
    Ok(())
}

/// Verifies `signature` (as the certificate or CRL carries it) over `signed` with `issuer`'s
/// key, by the algorithm named.
fn verify_with_issuer(
    algorithm: &str,
    signed: &[u8],
    signature: &[u8],
    issuer: &Certificate,
) -> Result<(), String> {
    let spki = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    match algorithm {
        RSASSA_PSS => {
            use rsa::pkcs8::DecodePublicKey;
            use rsa::signature::Verifier;
            let key = rsa::PublicKey::from_public_key_der(&spki).map_err(|e| e.to_string())?;
            let key = rsa::pss::VerifyingKey::<Sha384>::new(key);
            let sig = rsa::pss::Signature::try_from(signature).map_err(|e| e.to_string())?;
            key.verify(signed, &sig)
                .map_err(|_| "the signature does not verify".to_owned())
        }
        ECDSA_WITH_SHA256 => {
            use p256::ecdsa::signature::Verifier;
            use p256::pkcs8::DecodePublicKey;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
                .map_err(|_| "the issuer's key is not a P-256 key".to_owned())?;
            let sig = p256::ecdsa::Signature::from_der(signature)
                .map_err(|_| "the signature is not a DER ECDSA signature".to_owned())?;
            key.verify(signed, &sig)
                .map_err(|_| "the signature does not verify".to_owned())
        }
        other => Err(format!("signature algorithm {other} is not one we accept")),
    }
}

/// Checks that `cert` is signed by `issuer` (RSA-PSS/SHA-384 or ECDSA P-256/SHA-256), names
/// it as issuer, and is valid at `now`.
pub(crate) fn check_signed(
    cert: &Certificate,
    issuer: &Certificate,
    now: u64,
) -> Result<(), String> {
    if cert.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
        return Err(format!(
            "issued by {}, not by {}",
            cert.tbs_certificate().issuer(),
            issuer.tbs_certificate().subject()
        ));
    }
    let tbs = cert.tbs_certificate().to_der().map_err(|e| e.to_string())?;
    verify_with_issuer(
        &cert.signature_algorithm().oid.to_string(),
        &tbs,
        cert.signature().raw_bytes(),
        issuer,
    )?;
    check_validity(cert, now)
}

/// A CRL checked against its issuer at `now`: signed by it, current (`next_update` not
/// passed). Returns the serial numbers it revokes.
pub(crate) fn check_crl(
    der: &[u8],
    issuer: &Certificate,
    now: u64,
) -> Result<Vec<Vec<u8>>, String> {
    let crl = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
        .map_err(|e| format!("not a CRL: {e}"))?;
    let tbs = &crl.tbs_cert_list;
    if &tbs.issuer != issuer.tbs_certificate().subject() {
        return Err(format!(
            "issued by {}, not by {}",
            tbs.issuer,
            issuer.tbs_certificate().subject()
        ));
    }
    let signed = tbs.to_der().map_err(|e| e.to_string())?;
    verify_with_issuer(
        &crl.signature_algorithm.oid.to_string(),
        &signed,
        crl.signature.raw_bytes(),
        issuer,
    )?;
    let this = tbs.this_update.to_unix_duration().as_secs();
    if now < this {
        return Err(format!("issued at {this}, after now ({now})"));
    }
    if let Some(next) = tbs.next_update {
        let next = next.to_unix_duration().as_secs();
        if now > next {
            return Err(format!(
                "expired at {next} (now {now}): fetch a current one"
            ));
        }
    }
    Ok(tbs
        .revoked_certificates
        .iter()
        .flatten()
        .map(|r| r.serial_number.as_bytes().to_vec())
        .collect())
}

/// Whether `cert` is among the serials a CRL revokes.
pub(crate) fn is_revoked(cert: &Certificate, revoked: &[Vec<u8>]) -> bool {
    let serial = cert.tbs_certificate().serial_number().as_bytes();
    revoked.iter().any(|r| r.as_slice() == serial)
}

/// An extension's value by OID (the DER inside the OCTET STRING).
pub(crate) fn extension<'a>(cert: &'a Certificate, oid: &str) -> Option<&'a [u8]> {
    cert.tbs_certificate()
        .extensions()?
        .iter()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// One DER element: its tag, its value, and what follows. Short and long lengths up to
/// 2^24; `None` for anything truncated.
pub(crate) fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A small DER INTEGER (the VCEK's SPL extensions) or OCTET STRING (hwID) value.
pub(crate) fn der_value(b: &[u8]) -> Option<&[u8]> {
    match tlv(b)? {
        (0x02 | 0x04, v, []) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_reads_short_and_long_lengths_and_refuses_truncation() {
        assert_eq!(
            tlv(&[0x04, 2, 1, 2, 9]),
            Some((0x04, &[1u8, 2][..], &[9u8][..]))
        );
        let mut long = vec![0x30, 0x81, 200];
        long.extend([7u8; 200]);
        assert_eq!(tlv(&long).map(|(_, v, _)| v.len()), Some(200));
        assert_eq!(tlv(&[0x30, 0x81]), None);
        assert_eq!(tlv(&[0x30, 5, 1]), None);
        assert_eq!(tlv(&[0x30, 0x80]), None);
        assert_eq!(tlv(&[0x30, 0x84, 0, 0, 0, 1, 0]), None);
    }

    #[test]
    fn pem_chain_needs_a_certificate() {
        assert!(parse_pem_chain(b"hello").is_err());
        assert!(parse_pem_chain(b"-----BEGIN CERTIFICATE-----\nAAAA").is_err());
        assert!(
            parse_pem_chain(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err()
        );
    }
}
