//! TPM 2.0 structures for the SSH signing gate (`../../DESIGN.md` §3, §4.5): the VM's host key
//! lives in its vTPM and signs only with the manager's authorization, `PolicySigned(A, vm id)`.
//!
//! * [`public`] — TPMT_PUBLIC of ECC P-256 keys: built (the manager's authorization key A, the
//!   host key template) and parsed (a host key the vTPM reports: untrusted, bounds-checked,
//!   fuzzed), and object names.
//! * [`policy`] — the PolicySigned policy digest, the data the authority signs (aHash), the
//!   cpHash of TPM2_Sign, and TPMT_SIGNATURE.
//! * [`host_key`] — what a host key must be, checked against a reported public area.
//! * [`attest`] and [`credential`] — host attestation: quotes by an attestation key (parsed,
//!   verified) and the credential that proves the AK shares a TPM with a certified EK.
//! * [`event_log`] — the firmware's measured-boot event log (PCRs 0–9): parsed, replayed.
//!
//! Everything here is computation; the TPM itself is the oracle: tests load these structures
//! into libtpms (weles-vtpm) with tpm2-tools and require the TPM to agree.

pub mod attest;
pub mod commands;
pub mod credential;
pub mod event_log;
pub mod host_key;
pub mod policy;
pub mod public;

/// TPM algorithm and command identifiers used here (TPM 2.0 Part 2, §6).
pub mod ids {
    pub const ALG_ECC: u16 = 0x0023;
    pub const ALG_SHA256: u16 = 0x000b;
    pub const ALG_NULL: u16 = 0x0010;
    pub const ALG_ECDSA: u16 = 0x0018;
    pub const ECC_NIST_P256: u16 = 0x0003;
    pub const CC_POLICY_SIGNED: u32 = 0x0000_0160;
    pub const CC_SIGN: u32 = 0x0000_015d;
    pub const ST_HASHCHECK: u16 = 0x8024;
    pub const RH_NULL: u32 = 0x4000_0007;

    /// TPMA_OBJECT bits (Part 2, §8.3).
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}
