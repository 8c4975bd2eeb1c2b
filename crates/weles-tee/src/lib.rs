//! Real TEE evidence for WELES's manager, both ends:
//!
//! * [`configfs_tsm`] — a confidential VM's report through Linux configfs-tsm (SEV-SNP, TDX);
//! * [`gramine`] — an SGX enclave's DCAP quote and sealing key through Gramine's
//!   `/dev/attestation`;
//! * [`snp`] — the tenant's offline verification of an SEV-SNP report against AMD's
//!   certificate chain;
//! * [`dcap`] — the tenant's offline verification of an SGX or TDX DCAP quote against Intel's
//!   certificate chain and collateral.
//!
//! No such hardware exists where this is developed: the producers are tested against directory
//! trees that serve recorded real evidence, the verifiers on
//! AMD's and Intel's published sample evidence.

pub mod configfs_tsm;
pub mod dcap;
pub mod gramine;
pub mod snp;
mod x509;
