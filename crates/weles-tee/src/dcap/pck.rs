//! The PCK certificate chain and Intel's CRLs, and what the PCK certificate says about the
//! platform (Intel SGX PCK Certificate and CRL Profile): its FMSPC, PCE id and TCB, in the
//! SGX extension `1.2.840.113741.1.13.1`.
//!
//! Trust starts at Intel's SGX Root CA, built in (`certs/intel/sgx-root-ca.der`); a root that
//! travels with the quote or the collateral is ignored, never trusted.

use super::DcapError;
use crate::x509;
use x509_cert::Certificate;
use x509_cert::der::Decode;

const INTEL_SGX_ROOT_CA: &[u8] = include_bytes!("../../certs/intel/sgx-root-ca.der");

/// The SGX extension's OID, DER content bytes (1.2.840.113741.1.13.1).
const SGX_EXTENSIONS: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];

/// What the PCK certificate certifies about the platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformTcb {
    pub fmspc: [u8; 6],
    pub pce_id: [u8; 2],
    /// SGX TCB components 1–16 (the CPU SVN as the TCB info compares it).
    pub sgx_components: [u8; 16],
    pub pce_svn: u16,
}

fn cert_error(what: &'static str) -> impl Fn(String) -> DcapError {
    move |why| DcapError::Certificate { what, why }
}

/// Intel's SGX Root CA (built in).
pub(crate) fn intel_root() -> Result<Certificate, DcapError> {
    Certificate::from_der(INTEL_SGX_ROOT_CA)
        .map_err(|e| cert_error("Intel SGX Root CA (built in)")(e.to_string()))
}

/// The first certificate of a PEM chain, checked to be signed by the root at `now` and not in
/// the root CA's CRL: a TCB signing certificate or a PCK CA.
pub(crate) fn intermediate(
    what: &'static str,
    chain_pem: &[u8],
    root: &Certificate,
    root_revoked: &[Vec<u8>],
    now: u64,
) -> Result<Certificate, DcapError> {
    let chain = x509::parse_pem_chain(chain_pem).map_err(cert_error(what))?;
    let cert = chain
        .into_iter()
        .next()
        .ok_or_else(|| cert_error(what)("empty chain".into()))?;
    x509::check_signed(&cert, root, now).map_err(cert_error(what))?;
    if x509::is_revoked(&cert, root_revoked) {
        return Err(cert_error(what)("revoked by Intel's root CA CRL".into()));
    }
    Ok(cert)
}

/// The quote's PCK chain checked up to the built-in root: leaf and PCK CA signed, valid at
/// `now`, neither revoked (the PCK CRL must be the PCK CA's own). Returns the leaf.
pub(crate) fn verify_chain(
    chain_pem: &[u8],
    root: &Certificate,
    root_revoked: &[Vec<u8>],
    pck_crl_der: &[u8],
    now: u64,
) -> Result<Certificate, DcapError> {
    let chain = x509::parse_pem_chain(chain_pem).map_err(cert_error("the quote's PCK chain"))?;
    if chain.len() < 2 {
        return Err(cert_error("the quote's PCK chain")(format!(
            "{} certificate(s); a PCK certificate and its CA are needed",
            chain.len()
        )));
    }
    let (leaf, ca) = (&chain[0], &chain[1]);
    x509::check_signed(ca, root, now).map_err(cert_error("the PCK CA certificate"))?;
    if x509::is_revoked(ca, root_revoked) {
        return Err(cert_error("the PCK CA certificate")(
            "revoked by Intel's root CA CRL".into(),
        ));
    }
    x509::check_signed(leaf, ca, now).map_err(cert_error("the PCK certificate"))?;
    let pck_revoked = x509::check_crl(pck_crl_der, ca, now).map_err(cert_error("the PCK CRL"))?;
    if x509::is_revoked(leaf, &pck_revoked) {
        return Err(cert_error("the PCK certificate")(
            "revoked by its CA's CRL".into(),
        ));
    }
    Ok(leaf.clone())
}

/// A DER OID's content bytes and value, from `SEQUENCE { OID, value }`.
fn oid_and_value(seq_content: &[u8]) -> Option<(&[u8], u8, &[u8])> {
    let (tag, oid, rest) = x509::tlv(seq_content)?;
    if tag != 0x06 {
        return None;
    }
    let (vtag, value, _) = x509::tlv(rest)?;
    Some((oid, vtag, value))
}

/// An unsigned DER INTEGER up to 16 bits.
fn small_uint(v: &[u8]) -> Option<u16> {
    let v = match v {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => v,
    };
    match v {
        [a] => Some(u16::from(*a)),
        [a, b] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// The platform's FMSPC, PCE id and TCB from the PCK certificate's SGX extension.
pub(crate) fn platform_tcb(pck: &Certificate) -> Result<PlatformTcb, DcapError> {
    let bad = |why: &str| DcapError::Certificate {
        what: "the PCK certificate's SGX extension",
        why: why.to_owned(),
    };
    let ext = x509::extension(pck, "1.2.840.113741.1.13.1").ok_or_else(|| bad("missing"))?;
    let (0x30, mut items, _) = x509::tlv(ext).ok_or_else(|| bad("not a SEQUENCE"))? else {
        return Err(bad("not a SEQUENCE"));
    };
    let (mut fmspc, mut pce_id, mut tcb) = (None, None, None);
    while !items.is_empty() {
        let (tag, item, rest) = x509::tlv(items).ok_or_else(|| bad("truncated"))?;
        items = rest;
        let Some((oid, vtag, value)) = oid_and_value(item).filter(|_| tag == 0x30) else {
            return Err(bad("an entry is not SEQUENCE { OID, value }"));
        };
        let Some(sub) = oid.strip_prefix(&SGX_EXTENSIONS[..]) else {
            continue;
        };
        match (sub, vtag) {
            ([3], 0x04) => pce_id = <[u8; 2]>::try_from(value).ok(),
            ([4], 0x04) => fmspc = <[u8; 6]>::try_from(value).ok(),
            ([2], 0x30) => {
                tcb = Some(tcb_components(value).ok_or_else(|| bad("its TCB is malformed"))?)
            }
            _ => {}
        }
    }
    let (sgx_components, pce_svn) = tcb.ok_or_else(|| bad("no TCB (…1.13.1.2)"))?;
    Ok(PlatformTcb {
        fmspc: fmspc.ok_or_else(|| bad("no 6-byte FMSPC (…1.13.1.4)"))?,
        pce_id: pce_id.ok_or_else(|| bad("no 2-byte PCE-ID (…1.13.1.3)"))?,
        sgx_components,
        pce_svn,
    })
}

/// SGX TCB components 1–16 (…1.13.1.2.1–16) and the PCE SVN (…1.13.1.2.17); all required.
fn tcb_components(mut items: &[u8]) -> Option<([u8; 16], u16)> {
    let mut comps = [None::<u8>; 16];
    let mut pce_svn = None;
    while !items.is_empty() {
        let (tag, item, rest) = x509::tlv(items)?;
        items = rest;
        if tag != 0x30 {
            return None;
        }
        let (oid, vtag, value) = oid_and_value(item)?;
        let Some([2, n]) = oid.strip_prefix(&SGX_EXTENSIONS[..]) else {
            continue;
        };
        match (*n, vtag) {
            (1..=16, 0x02) => comps[usize::from(*n) - 1] = u8::try_from(small_uint(value)?).ok(),
            (17, 0x02) => pce_svn = small_uint(value),
            _ => {}
        }
    }
    let mut out = [0u8; 16];
    for (o, c) in out.iter_mut().zip(comps) {
        *o = c?;
    }
    Some((out, pce_svn?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_uint_reads_der_integers() {
        assert_eq!(small_uint(&[5]), Some(5));
        assert_eq!(small_uint(&[0, 0xff]), Some(255));
        assert_eq!(small_uint(&[0x01, 0x02]), Some(0x0102));
        assert_eq!(small_uint(&[0]), Some(0));
        assert_eq!(small_uint(&[1, 2, 3]), None);
        assert_eq!(small_uint(&[]), None);
    }

    #[test]
    fn the_built_in_root_is_intels() {
        let root = intel_root().unwrap();
        assert!(
            root.tbs_certificate()
                .subject()
                .to_string()
                .contains("CN=Intel SGX Root CA")
        );
        x509::check_signed(&root, &root, 1_750_000_000).unwrap();
    }
}
