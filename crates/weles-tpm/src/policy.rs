//! PolicySigned (TPM 2.0 Part 3, §23.3): the policy digest a host key carries, the data the
//! manager signs to authorize one use, the cpHash that ties that use to one TPM2_Sign, and the
//! signature format the TPM takes.

use p256::ecdsa::signature::Signer;
use sha2::{Digest, Sha256};

use crate::ids::*;
use crate::public::{EccPublic, tpm2b};

/// `PolicySigned(auth, policy_ref)` applied to `previous` (32 zero bytes for a fresh policy):
/// `d = H(previous ‖ TPM_CC_PolicySigned ‖ auth.name)`, then `H(d ‖ policy_ref)`.
pub fn policy_signed(previous: &[u8; 32], auth_name: &[u8], policy_ref: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(CC_POLICY_SIGNED.to_be_bytes());
    h.update(auth_name);
    let d = h.finalize();
    let mut h = Sha256::new();
    h.update(d);
    h.update(policy_ref);
    h.finalize().into()
}

/// What the authority signs: `nonceTPM ‖ expiration (INT32) ‖ cpHashA ‖ policyRef`
/// (its SHA-256 is the aHash the TPM checks the signature against).
pub fn authorization_data(
    nonce_tpm: &[u8],
    expiration: i32,
    cp_hash: &[u8],
    policy_ref: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(nonce_tpm.len() + 4 + cp_hash.len() + policy_ref.len());
    b.extend_from_slice(nonce_tpm);
    b.extend_from_slice(&expiration.to_be_bytes());
    b.extend_from_slice(cp_hash);
    b.extend_from_slice(policy_ref);
    b
}

/// The cpHash of `TPM2_Sign(key, digest, ECDSA-SHA256, null ticket)`: the one command a
/// signing authorization is good for.
pub fn sign_cp_hash(key_name: &[u8], digest: &[u8]) -> [u8; 32] {
    let mut params = Vec::new();
    tpm2b(&mut params, digest);
    params.extend_from_slice(&ALG_ECDSA.to_be_bytes());
    params.extend_from_slice(&ALG_SHA256.to_be_bytes());
    // TPMT_TK_HASHCHECK, the null ticket: a non-restricted key needs no proof of the digest.
    params.extend_from_slice(&ST_HASHCHECK.to_be_bytes());
    params.extend_from_slice(&RH_NULL.to_be_bytes());
    params.extend_from_slice(&0u16.to_be_bytes());
    let mut h = Sha256::new();
    h.update(CC_SIGN.to_be_bytes());
    h.update(key_name);
    h.update(&params);
    h.finalize().into()
}

/// TPMT_SIGNATURE of an ECDSA-SHA256 signature.
pub fn tpmt_signature(sig: &p256::ecdsa::Signature) -> Vec<u8> {
    let (r, s) = sig.split_bytes();
    let mut b = Vec::with_capacity(4 + 2 * 34);
    b.extend_from_slice(&ALG_ECDSA.to_be_bytes());
    b.extend_from_slice(&ALG_SHA256.to_be_bytes());
    tpm2b(&mut b, &r);
    tpm2b(&mut b, &s);
    b
}

/// The manager's authorization key A: an ECDSA P-256 key whose public area the guest loads
/// into its vTPM (TPM2_LoadExternal, public part only) to check authorizations.
pub struct AuthorityKey {
    key: p256::ecdsa::SigningKey,
}

/// A's attributes in its public area (they are part of its name, so both sides use these).
pub const AUTHORITY_ATTRIBUTES: u32 = SIGN | USER_WITH_AUTH;

impl AuthorityKey {
    pub fn new(key: p256::ecdsa::SigningKey) -> AuthorityKey {
        AuthorityKey { key }
    }

    pub fn public(&self) -> EccPublic {
        EccPublic::p256(self.key.verifying_key(), AUTHORITY_ATTRIBUTES, &[])
    }

    pub fn name(&self) -> Vec<u8> {
        self.public().name()
    }

    /// The policy digest of a host key only A can authorize, for the VM `vm_id`.
    pub fn host_key_policy(&self, vm_id: &str) -> [u8; 32] {
        policy_signed(&[0; 32], &self.name(), vm_id.as_bytes())
    }

    /// Authorizes one use: signs `nonceTPM ‖ expiration ‖ cpHash ‖ policyRef`.
    pub fn authorize(
        &self,
        nonce_tpm: &[u8],
        expiration: i32,
        cp_hash: &[u8],
        policy_ref: &[u8],
    ) -> p256::ecdsa::Signature {
        self.key.sign(&authorization_data(
            nonce_tpm, expiration, cp_hash, policy_ref,
        ))
    }
}
