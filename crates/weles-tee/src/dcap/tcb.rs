//! Matching the platform and the quoting enclave against Intel's TCB levels. A level is met
//! when every component is at least the level's; levels come highest first (Intel signs them
//! in that order), and the first one met gives the status.

use super::DcapError;
use super::collateral::{IsvLevel, QeIdentity, TcbInfo, TcbLevel};
use super::pck::PlatformTcb;
use super::quote::{EnclaveReport, TdReport};

/// A status and the advisories behind it, for one component (platform, QE, TDX module).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Judged {
    pub component: &'static str,
    pub status: String,
    pub tcb_date: String,
    pub advisory_ids: Vec<String>,
}

fn hex_exact<const N: usize>(
    what: &'static str,
    field: &str,
    s: &str,
) -> Result<[u8; N], DcapError> {
    hex::decode(s)
        .ok()
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| DcapError::Collateral {
            what,
            why: format!("{field} is not {N} bytes of hex"),
        })
}

fn masked_equal(actual: &[u8], expected: &[u8], mask: &[u8]) -> bool {
    actual.len() == expected.len()
        && actual.len() == mask.len()
        && actual
            .iter()
            .zip(expected)
            .zip(mask)
            .all(|((a, e), m)| a & m == e & m)
}

/// The platform's level: SGX components and PCE SVN from the PCK certificate, and for a TD
/// the TDX components of TEE_TCB_SVN (its first two bytes are the TDX module's, judged by the
/// module identity instead when the module's major version is set).
pub(crate) fn platform(
    info: &TcbInfo,
    platform: &PlatformTcb,
    td: Option<&TdReport>,
) -> Result<Judged, DcapError> {
    let what = "the TCB info";
    let wrong = |why: String| DcapError::Collateral { what, why };
    let expected_id = if td.is_some() { "TDX" } else { "SGX" };
    if info.id != expected_id {
        return Err(wrong(format!(
            "it is for {:?}, the quote needs {expected_id:?}",
            info.id
        )));
    }
    if info.version != 3 {
        return Err(wrong(format!(
            "version {}: only version 3 (Intel PCS API v4) is read",
            info.version
        )));
    }
    if !info
        .fmspc
        .eq_ignore_ascii_case(&hex::encode(platform.fmspc))
    {
        return Err(wrong(format!(
            "it is for FMSPC {}, the PCK certificate names {}",
            info.fmspc,
            hex::encode_upper(platform.fmspc)
        )));
    }
    if !info
        .pce_id
        .eq_ignore_ascii_case(&hex::encode(platform.pce_id))
    {
        return Err(wrong(format!(
            "it is for PCE {}, the PCK certificate names {}",
            info.pce_id,
            hex::encode_upper(platform.pce_id)
        )));
    }
    let met = |level: &TcbLevel| -> Result<bool, DcapError> {
        let t = &level.tcb;
        if t.sgxtcbcomponents.len() != 16 {
            return Err(wrong("a level does not have 16 SGX components".into()));
        }
        let sgx_ok = platform
            .sgx_components
            .iter()
            .zip(&t.sgxtcbcomponents)
            .all(|(have, need)| *have >= need.svn);
        let mut ok = sgx_ok && platform.pce_svn >= t.pcesvn;
        if let Some(td) = td {
            if t.tdxtcbcomponents.len() != 16 {
                return Err(wrong("a level does not have 16 TDX components".into()));
            }
            let skip = if td.tee_tcb_svn[1] > 0 { 2 } else { 0 };
            ok &= td
                .tee_tcb_svn
                .iter()
                .zip(&t.tdxtcbcomponents)
                .skip(skip)
                .all(|(have, need)| *have >= need.svn);
        }
        Ok(ok)
    };
    for level in &info.tcb_levels {
        if met(level)? {
            return Ok(Judged {
                component: "platform",
                status: level.tcb_status.clone(),
                tcb_date: level.tcb_date.clone(),
                advisory_ids: level.advisory_ids.clone(),
            });
        }
    }
    Err(DcapError::Tcb {
        component: "platform",
        why: "below every TCB level Intel lists for this FMSPC".into(),
    })
}

fn isv_level(
    component: &'static str,
    levels: &[IsvLevel],
    isv_svn: u16,
) -> Result<Judged, DcapError> {
    levels
        .iter()
        .find(|l| isv_svn >= l.tcb.isvsvn)
        .map(|l| Judged {
            component,
            status: l.tcb_status.clone(),
            tcb_date: l.tcb_date.clone(),
            advisory_ids: l.advisory_ids.clone(),
        })
        .ok_or_else(|| DcapError::Tcb {
            component,
            why: format!("ISV SVN {isv_svn} is below every level"),
        })
}

/// The quoting enclave against Intel's QE identity: its signer, product, masked MISCSELECT and
/// attributes, and the level its ISV SVN meets.
pub(crate) fn quoting_enclave(
    id: &QeIdentity,
    qe: &EnclaveReport,
    td: bool,
) -> Result<Judged, DcapError> {
    let what = "the QE identity";
    let expected_id = if td { "TD_QE" } else { "QE" };
    if id.id != expected_id || id.version != 2 {
        return Err(DcapError::Collateral {
            what,
            why: format!(
                "it is {:?} version {}, the quote needs {expected_id:?} version 2",
                id.id, id.version
            ),
        });
    }
    let mismatch = |field: &str| DcapError::Tcb {
        component: "quoting enclave",
        why: format!("its {field} is not the one Intel's QE identity names"),
    };
    if qe.mr_signer != hex_exact::<32>(what, "mrsigner", &id.mrsigner)? {
        return Err(mismatch("MRSIGNER"));
    }
    if qe.isv_prod_id != id.isvprodid {
        return Err(mismatch("ISVPRODID"));
    }
    let misc = hex_exact::<4>(what, "miscselect", &id.miscselect)?;
    let misc_mask = hex_exact::<4>(what, "miscselectMask", &id.miscselect_mask)?;
    // Intel writes MISCSELECT big-endian in the JSON; the report holds it little-endian.
    if !masked_equal(&qe.misc_select.to_be_bytes(), &misc, &misc_mask) {
        return Err(mismatch("MISCSELECT"));
    }
    let attrs = hex_exact::<16>(what, "attributes", &id.attributes)?;
    let attrs_mask = hex_exact::<16>(what, "attributesMask", &id.attributes_mask)?;
    if !masked_equal(&qe.attributes, &attrs, &attrs_mask) {
        return Err(mismatch("attributes"));
    }
    isv_level("quoting enclave", &id.tcb_levels, qe.isv_svn)
}

/// The TDX module (SEAM) against the TCB info: its signer and masked attributes, and — when
/// its major version (TEE_TCB_SVN[1]) is set — the level its SVN (TEE_TCB_SVN[0]) meets in
/// the identity `TDX_<major>`.
pub(crate) fn tdx_module(info: &TcbInfo, td: &TdReport) -> Result<Option<Judged>, DcapError> {
    let what = "the TCB info";
    let base = info
        .tdx_module
        .as_ref()
        .ok_or_else(|| DcapError::Collateral {
            what,
            why: "no tdxModule for a TDX quote".into(),
        })?;
    let major = td.tee_tcb_svn[1];
    let identity = if major > 0 {
        let name = format!("TDX_{major:02X}");
        Some(
            info.tdx_module_identities
                .iter()
                .find(|i| i.id.eq_ignore_ascii_case(&name))
                .ok_or_else(|| DcapError::Tcb {
                    component: "TDX module",
                    why: format!("no identity {name} in the TCB info"),
                })?,
        )
    } else {
        None
    };
    let (signer, attrs, mask) = match identity {
        Some(i) => (&i.mrsigner, &i.attributes, &i.attributes_mask),
        None => (&base.mrsigner, &base.attributes, &base.attributes_mask),
    };
    if td.mr_signer_seam != hex_exact::<48>(what, "tdxModule mrsigner", signer)? {
        return Err(DcapError::Tcb {
            component: "TDX module",
            why: "MRSIGNER_SEAM is not Intel's".into(),
        });
    }
    let attrs = hex_exact::<8>(what, "tdxModule attributes", attrs)?;
    let mask = hex_exact::<8>(what, "tdxModule attributesMask", mask)?;
    if !masked_equal(&td.seam_attributes, &attrs, &mask)
        || td
            .seam_attributes
            .iter()
            .zip(mask)
            .any(|(a, m)| a & !m != 0)
    {
        return Err(DcapError::Tcb {
            component: "TDX module",
            why: "SEAM attributes differ from Intel's".into(),
        });
    }
    identity
        .map(|i| isv_level("TDX module", &i.tcb_levels, u16::from(td.tee_tcb_svn[0])))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::masked_equal;

    #[test]
    fn masks_compare_only_masked_bits() {
        assert!(masked_equal(&[0x13], &[0x11], &[0xfd]));
        assert!(!masked_equal(&[0x13], &[0x11], &[0xff]));
        assert!(!masked_equal(&[0x13, 0], &[0x11], &[0xfd]));
    }
}
