//! TEE backends: what the manager's evidence and sealing stand on.
//!
//! Callers use only [`TeeBackend`]; a backend for SGX (Gramine's `/dev/attestation`) or for
//! confidential VMs (Linux configfs-tsm: SEV-SNP, TDX) is added by implementing it and naming it
//! in [`backend`], without touching the callers.

use std::path::Path;

use weles_vtpm::sealed::{SealingProvider, SimSealing, StateError};

#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    #[error("TEE backend {0:?} is not available in this build (sim only; sgx and tsm come later)")]
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

/// The backend named in the configuration.
pub fn backend(name: &str) -> Result<Box<dyn TeeBackend>, TeeError> {
    match name {
        "sim" => Ok(Box::new(SimTee)),
        other => Err(TeeError::Unknown(other.to_owned())),
    }
}
