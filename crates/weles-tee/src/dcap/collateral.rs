//! DCAP collateral, supplied offline by the tenant: Intel's TCB info and QE identity (JSON,
//! each signed by Intel's TCB signing key), their issuer chains, and the CRLs of the root and
//! PCK CAs. The bundle is the JSON object Intel's PCS/PCCS answers become when gathered into
//! one file (the field names `dcap-qvl` and Phala's tools use; docs/tee.md §DCAP):
//!
//! ```json
//! { "tcb_info": "<JSON text exactly as signed>", "tcb_info_signature": "<hex r||s>",
//!   "tcb_info_issuer_chain": "<PEM>", "qe_identity": "…", "qe_identity_signature": "…",
//!   "qe_identity_issuer_chain": "<PEM>", "root_ca_crl": "<hex DER>", "pck_crl": "<hex DER>",
//!   "pck_crl_issuer_chain": "<PEM>" }
//! ```
//!
//! The signed JSON is kept as text: the signature covers its exact bytes, so it is verified
//! before it is parsed.

use super::{DcapError, time::rfc3339_seconds};
use serde::Deserialize;

/// The bundle as read from the tenant's file.
#[derive(Clone, Debug, Deserialize)]
pub struct Collateral {
    pub tcb_info: String,
    pub tcb_info_signature: String,
    pub tcb_info_issuer_chain: String,
    pub qe_identity: String,
    pub qe_identity_signature: String,
    pub qe_identity_issuer_chain: String,
    pub root_ca_crl: String,
    pub pck_crl: String,
    #[serde(default)]
    pub pck_crl_issuer_chain: String,
}

impl Collateral {
    pub fn from_json(text: &str) -> Result<Collateral, DcapError> {
        serde_json::from_str(text).map_err(|e| DcapError::Collateral {
            what: "the collateral bundle",
            why: e.to_string(),
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbInfo {
    pub id: String,
    pub version: u32,
    pub fmspc: String,
    pub pce_id: String,
    #[serde(default)]
    pub tdx_module: Option<TdxModule>,
    #[serde(default)]
    pub tdx_module_identities: Vec<TdxModuleIdentity>,
    pub tcb_levels: Vec<TcbLevel>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModule {
    pub mrsigner: String,
    pub attributes: String,
    pub attributes_mask: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModuleIdentity {
    pub id: String,
    pub mrsigner: String,
    pub attributes: String,
    pub attributes_mask: String,
    pub tcb_levels: Vec<IsvLevel>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Svn {
    pub svn: u8,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Tcb {
    pub sgxtcbcomponents: Vec<Svn>,
    pub pcesvn: u16,
    #[serde(default)]
    pub tdxtcbcomponents: Vec<Svn>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbLevel {
    pub tcb: Tcb,
    pub tcb_date: String,
    pub tcb_status: String,
    #[serde(rename = "advisoryIDs", default)]
    pub advisory_ids: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct IsvSvn {
    pub isvsvn: u16,
}

/// A level of the QE identity or of a TDX module identity: met when the ISV SVN is at least
/// `tcb.isvsvn`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IsvLevel {
    pub tcb: IsvSvn,
    pub tcb_date: String,
    pub tcb_status: String,
    #[serde(rename = "advisoryIDs", default)]
    pub advisory_ids: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QeIdentity {
    pub id: String,
    pub version: u32,
    pub miscselect: String,
    pub miscselect_mask: String,
    pub attributes: String,
    pub attributes_mask: String,
    pub mrsigner: String,
    pub isvprodid: u16,
    pub tcb_levels: Vec<IsvLevel>,
}

/// Verifies a signed JSON structure with its signer's certificate (already checked by the
/// caller), checks it is current at `now` (issueDate, nextUpdate), and parses it.
pub(crate) fn signed_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: &str,
    signature_hex: &str,
    signer: &x509_cert::Certificate,
    now: u64,
) -> Result<T, DcapError> {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    use x509_cert::der::Encode;
    let bad = |why: String| DcapError::Collateral { what, why };
    let spki = signer
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| bad(e.to_string()))?;
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
        .map_err(|_| bad("its signer's key is not P-256".into()))?;
    let sig = hex::decode(signature_hex.trim())
        .ok()
        .and_then(|b| p256::ecdsa::Signature::from_slice(&b).ok())
        .ok_or_else(|| bad("the signature is not 64 bytes of hex (r || s)".into()))?;
    key.verify(text.as_bytes(), &sig)
        .map_err(|_| bad("Intel's signature over it does not verify".into()))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    for (field, is_next) in [("issueDate", false), ("nextUpdate", true)] {
        let t = value[field]
            .as_str()
            .and_then(rfc3339_seconds)
            .ok_or_else(|| bad(format!("{field} is missing or not an RFC 3339 time")))?;
        if is_next && now > t {
            return Err(bad(format!(
                "expired: its nextUpdate ({}) has passed; fetch current collateral",
                value[field].as_str().unwrap_or_default()
            )));
        }
        if !is_next && now < t {
            return Err(bad(format!(
                "issued in the future ({})",
                value[field].as_str().unwrap_or_default()
            )));
        }
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}
