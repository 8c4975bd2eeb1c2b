//! Gramine's SGX attestation pseudo-files (`/dev/attestation`, Gramine's "Attestation and
//! Secret Provisioning" documentation): write 64 bytes to `user_report_data`, read `quote`; the
//! sealing keys are `keys/_sgx_mrenclave` (this enclave only) and `keys/_sgx_mrsigner`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GramineError {
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("attestation type {0:?}: only \"dcap\" quotes are supported")]
    Type(String),
}

fn read(p: &Path) -> Result<Vec<u8>, GramineError> {
    std::fs::read(p).map_err(|e| GramineError::Io {
        path: p.to_path_buf(),
        why: e.to_string(),
    })
}

/// A DCAP quote over `report_data`, from the attestation directory (`/dev/attestation`).
pub fn quote(dev: &Path, report_data: &[u8; 64]) -> Result<Vec<u8>, GramineError> {
    let kind = read(&dev.join("attestation_type"))?;
    let kind = String::from_utf8_lossy(&kind).trim().to_owned();
    if kind != "dcap" {
        return Err(GramineError::Type(kind));
    }
    let p = dev.join("user_report_data");
    std::fs::write(&p, report_data).map_err(|e| GramineError::Io {
        path: p.clone(),
        why: e.to_string(),
    })?;
    read(&dev.join("quote"))
}

/// The enclave's MRENCLAVE sealing key (16 bytes): only this enclave, on this CPU, derives it.
pub fn mrenclave_key(dev: &Path) -> Result<zeroize::Zeroizing<[u8; 16]>, GramineError> {
    let p = dev.join("keys/_sgx_mrenclave");
    let raw = zeroize::Zeroizing::new(read(&p)?);
    let key: [u8; 16] = raw.as_slice().try_into().map_err(|_| GramineError::Io {
        path: p.clone(),
        why: format!("{} bytes, not 16", raw.len()),
    })?;
    Ok(zeroize::Zeroizing::new(key))
}
