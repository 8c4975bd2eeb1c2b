//! TEE backends: what the manager's evidence and sealing stand on.
//!
//! Callers use only [`TeeBackend`]: `sim` (no TEE), `sgx` (Gramine's `/dev/attestation`) and
//! `tsm` (a confidential VM's Linux configfs-tsm: SEV-SNP, TDX), chosen by name in [`backend`].

use std::path::Path;

use weles_vtpm::sealed::{SealingProvider, SimSealing, StateError};

#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    #[error("TEE backend {0:?} does not exist (sim, sgx, tsm)")]
    Unknown(String),
    #[error("sealing: {0}")]
    Sealing(#[from] StateError),
    #[error("report: {0}")]
    Report(String),
}

pub trait TeeBackend: Send + Sync {
    /// `sim`, `sgx`, `tsm`: the label evidence carries.
    fn kind(&self) -> &'static str;
    /// The TEE's report binding `report_data` (64 bytes), in the backend's own format,
    /// transport-encoded as text (hex or JSON).
    fn report(&self, report_data: &[u8; 64]) -> Result<String, TeeError>;
    /// The provider of the key that seals the manager's store. `created` tells whether a new
    /// key was made (worth a log line).
    fn sealing(&self, state_dir: &Path) -> Result<(Box<dyn SealingProvider>, bool), TeeError>;
}

/// No TEE at all: for development, tests and the demo. Its report is a plain statement with no
/// signature, its sealing key a file — it protects nothing from the host's root, and says so.
pub struct SimTee;

impl TeeBackend for SimTee {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<String, TeeError> {
        Ok(serde_json::json!({
            "tee": "sim",
            "report_data": hex::encode(report_data),
            "warning": "simulated TEE: no hardware protection, no measurement, proves nothing about the platform",
        })
        .to_string())
    }

    fn sealing(&self, state_dir: &Path) -> Result<(Box<dyn SealingProvider>, bool), TeeError> {
        let (p, created) = SimSealing::open(&state_dir.join("seal.key"))?;
        Ok((Box::new(p), created))
    }
}

/// welesd inside a confidential VM (SEV-SNP, TDX): reports through Linux configfs-tsm. The
/// report is the hardware's, over our report data; the sealing key is a file inside the CVM,
/// protected by the CVM's memory and disk encryption (the state directory must be on encrypted
/// storage that only this CVM unlocks).
pub struct TsmTee {
    pub root: std::path::PathBuf,
}

impl TeeBackend for TsmTee {
    fn kind(&self) -> &'static str {
        "tsm"
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<String, TeeError> {
        use base64ct::Encoding;
        let r = weles_tee::configfs_tsm::report(&self.root, report_data)
            .map_err(|e| TeeError::Report(e.to_string()))?;
        Ok(serde_json::json!({
            "tee": "tsm",
            "provider": r.provider,
            "outblob": base64ct::Base64::encode_string(&r.outblob),
            "auxblob": r.auxblob.map(|a| base64ct::Base64::encode_string(&a)),
        })
        .to_string())
    }

    fn sealing(&self, state_dir: &Path) -> Result<(Box<dyn SealingProvider>, bool), TeeError> {
        let (p, created) = SimSealing::open(&state_dir.join("seal.key"))?;
        Ok((Box::new(CvmSealing(p)), created))
    }
}

/// The sealing key of a CVM: a key file, labelled apart from `sim`'s (state sealed under one
/// backend never opens under another).
struct CvmSealing(SimSealing);

impl SealingProvider for CvmSealing {
    fn kind(&self) -> &'static str {
        "tsm-cvm-file"
    }
    fn key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StateError> {
        self.0.key()
    }
}

/// welesd inside a Gramine-SGX enclave: DCAP quotes and the MRENCLAVE sealing key through
/// `/dev/attestation` (docs/gramine/welesd.manifest.template; untested here: no SGX).
pub struct SgxTee {
    pub dev: std::path::PathBuf,
}

impl TeeBackend for SgxTee {
    fn kind(&self) -> &'static str {
        "sgx"
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<String, TeeError> {
        use base64ct::Encoding;
        let quote = weles_tee::gramine::quote(&self.dev, report_data)
            .map_err(|e| TeeError::Report(e.to_string()))?;
        Ok(serde_json::json!({
            "tee": "sgx",
            "attestation_type": "dcap",
            "quote": base64ct::Base64::encode_string(&quote),
        })
        .to_string())
    }

    fn sealing(&self, _state_dir: &Path) -> Result<(Box<dyn SealingProvider>, bool), TeeError> {
        use sha2::Digest;
        let k = weles_tee::gramine::mrenclave_key(&self.dev)
            .map_err(|e| TeeError::Report(e.to_string()))?;
        let mut h = sha2::Sha256::new();
        h.update(b"weles-sgx-sealing-v1\n");
        h.update(k.as_slice());
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&h.finalize());
        Ok((Box::new(SgxSealing(key)), false))
    }
}

/// A key derived from the enclave's MRENCLAVE sealing key: only this enclave build, on this
/// CPU, derives it again.
struct SgxSealing(zeroize::Zeroizing<[u8; 32]>);

impl SealingProvider for SgxSealing {
    fn kind(&self) -> &'static str {
        "sgx-mrenclave"
    }
    fn key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StateError> {
        Ok(self.0.clone())
    }
}

/// The backend named in the configuration, at `device` (or its standard place).
pub fn backend(name: &str, device: Option<&Path>) -> Result<Box<dyn TeeBackend>, TeeError> {
    let at = |default: &str| device.map_or_else(|| default.into(), Path::to_path_buf);
    match name {
        "sim" => Ok(Box::new(SimTee)),
        "tsm" => Ok(Box::new(TsmTee {
            root: at("/sys/kernel/config/tsm/report"),
        })),
        "sgx" => Ok(Box::new(SgxTee {
            dev: at("/dev/attestation"),
        })),
        other => Err(TeeError::Unknown(other.to_owned())),
    }
}
