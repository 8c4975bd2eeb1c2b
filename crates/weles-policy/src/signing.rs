//! Policy signatures in OpenSSH's `sshsig` format (PROTOCOL.sshsig), namespace `weles-policy`.
//!
//! A signature made here verifies with `ssh-keygen -Y verify -n weles-policy`, and one made with
//! `ssh-keygen -Y sign -n weles-policy` verifies here: the tenant can sign with the tools and keys
//! they already have. The signature covers the policy file's exact bytes.

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The sshsig namespace of policy signatures. Distinct namespaces keep a signature made for one
/// purpose (e.g. a git commit) from being replayed as a policy signature.
pub const NAMESPACE: &str = "weles-policy";

/// Why signing or verification failed.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("not an OpenSSH private key: {0}")]
    PrivateKey(ssh_key::Error),
    #[error("the private key is encrypted: give its passphrase")]
    NeedPassphrase,
    #[error("wrong passphrase, or the key cannot be decrypted: {0}")]
    Decrypt(ssh_key::Error),
    #[error("not an OpenSSH public key line: {0}")]
    PublicKey(ssh_key::Error),
    #[error("not an SSH signature (-----BEGIN SSH SIGNATURE-----): {0}")]
    Format(ssh_key::Error),
    #[error("signing failed: {0}")]
    Sign(ssh_key::Error),
    #[error("signature does not verify: {0}")]
    Invalid(ssh_key::Error),
}

/// Loads an OpenSSH private key, decrypting it with `passphrase` if it is encrypted.
pub fn load_private_key(
    text: &[u8],
    passphrase: Option<&[u8]>,
) -> Result<PrivateKey, SignatureError> {
    let key = PrivateKey::from_openssh(text).map_err(SignatureError::PrivateKey)?;
    if !key.is_encrypted() {
        return Ok(key);
    }
    let pass = passphrase.ok_or(SignatureError::NeedPassphrase)?;
    key.decrypt(pass).map_err(SignatureError::Decrypt)
}

/// Loads the first key of a public-key file (`ssh-ed25519 AAAA... comment`), skipping blank and
/// comment lines.
pub fn load_public_key(text: &str) -> Result<PublicKey, SignatureError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    PublicKey::from_openssh(line).map_err(SignatureError::PublicKey)
}

/// Signs `policy` and returns the armored signature (what `ssh-keygen -Y sign` writes to `.sig`).
pub fn sign(key: &PrivateKey, policy: &[u8]) -> Result<String, SignatureError> {
    let sig = key
        .sign(NAMESPACE, HashAlg::Sha512, policy)
        .map_err(SignatureError::Sign)?;
    sig.to_pem(LineEnding::LF).map_err(SignatureError::Sign)
}

/// Verifies an armored signature over `policy` made by `signer`.
pub fn verify(signer: &PublicKey, policy: &[u8], armored: &[u8]) -> Result<(), SignatureError> {
    let sig = SshSig::from_pem(armored).map_err(SignatureError::Format)?;
    signer
        .verify(NAMESPACE, policy, &sig)
        .map_err(SignatureError::Invalid)
}

/// Verifies a binary sshsig blob (not armored) over `msg` in `namespace`: API requests and
/// audit records carry their signatures this way.
pub fn verify_blob(
    signer: &PublicKey,
    namespace: &str,
    msg: &[u8],
    blob: &[u8],
) -> Result<(), SignatureError> {
    use ssh_key::encoding::Decode as _;
    let sig = SshSig::decode(&mut &blob[..]).map_err(SignatureError::Format)?;
    signer
        .verify(namespace, msg, &sig)
        .map_err(SignatureError::Invalid)
}
