//! What a VM's SSH host key must be (`docs/signing-gate.md`): created inside the vTPM (fixedTPM,
//! fixedParent, sensitiveDataOrigin), a signing key only, usable only through its policy —
//! no userWithAuth, and adminWithPolicy so that no administrative command bypasses it — and that
//! policy is `PolicySigned(A, vm id)`.

use crate::ids::*;
use crate::public::EccPublic;

/// Attributes the host key must have.
pub const REQUIRED: u32 =
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | SIGN | ADMIN_WITH_POLICY;
/// Attributes it must not have: a password or HMAC would sign without the manager; a decrypting
/// or restricted key is something else.
pub const FORBIDDEN: u32 = USER_WITH_AUTH | DECRYPT | RESTRICTED;

/// The creation template (TPM2_Create's inPublic): P-256, ECDSA-SHA256, the policy.
pub fn template(policy: &[u8; 32]) -> EccPublic {
    EccPublic {
        name_alg: ALG_SHA256,
        attributes: REQUIRED | NO_DA,
        auth_policy: policy.to_vec(),
        scheme: ALG_ECDSA,
        scheme_hash: ALG_SHA256,
        curve: ECC_NIST_P256,
        x: Vec::new(),
        y: Vec::new(),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostKeyError {
    #[error(
        "the key lacks attributes {0:#010x} (needs fixedTPM, fixedParent, sensitiveDataOrigin, sign, adminWithPolicy)"
    )]
    Missing(u32),
    #[error("the key has forbidden attributes {0:#010x} (userWithAuth, decrypt or restricted)")]
    Forbidden(u32),
    #[error("the key's policy is not PolicySigned(manager, this VM)")]
    WrongPolicy,
    #[error("the key's scheme is not ECDSA-SHA256")]
    WrongScheme,
    #[error("the key's public point is not on P-256")]
    BadPoint,
}

/// Checks a reported public area against what this VM's host key must be.
pub fn check(public: &EccPublic, policy: &[u8; 32]) -> Result<(), HostKeyError> {
    let missing = REQUIRED & !public.attributes;
    if missing != 0 {
        return Err(HostKeyError::Missing(missing));
    }
    let forbidden = FORBIDDEN & public.attributes;
    if forbidden != 0 {
        return Err(HostKeyError::Forbidden(forbidden));
    }
    if public.auth_policy.as_slice() != policy.as_slice() {
        return Err(HostKeyError::WrongPolicy);
    }
    if !(public.scheme == ALG_NULL
        || (public.scheme == ALG_ECDSA && public.scheme_hash == ALG_SHA256))
    {
        return Err(HostKeyError::WrongScheme);
    }
    public.verifying_key().ok_or(HostKeyError::BadPoint)?;
    Ok(())
}
