//! WELES tenant policies: what a VM may run, and how the tenant vouches for it.
//!
//! - [`document`]: the TOML schema tenants write (`docs/policy.md`).
//! - [`keylime`]: Keylime runtime policy JSON (v1), accepted as-is and convertible to TOML.
//! - [`Policy`]: the validated, compiled form; it implements [`weles_ima::Appraise`], judging
//!   each IMA entry (allowlisted digests, excludes, trusted signing keys, boot_aggregate,
//!   templates, digest algorithms, violation entries).
//! - [`ima_keys`]: trusted IMA signing keys and signature checks (ima-sig, ima-sigv2, ima-modsig).
//! - [`signing`]: sshsig signatures over policy files (`ssh-keygen -Y` compatible).
//! - [`generate`]: policies from a guest root filesystem or a known-good log.

#![forbid(unsafe_code)]

pub mod allowlist;
mod der;
pub mod document;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod generate;
pub mod ima_keys;
pub mod keylime;
mod keylime_fast;
mod policy;
pub mod signing;

pub use document::PolicyDocument;
pub use error::PolicyError;
pub use policy::{
    DEFAULT_DIGEST_ALGORITHMS, Policy, PolicyFormat, SUPPORTED_TEMPLATES, parse_duration,
};

/// Renders a document as TOML.
pub fn to_toml(doc: &PolicyDocument) -> String {
    // Serialising plain maps and strings cannot fail; fall back to an empty string defensively.
    toml::to_string_pretty(doc).unwrap_or_default()
}
