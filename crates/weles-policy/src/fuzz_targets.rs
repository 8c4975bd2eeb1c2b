//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the tests that replay their
//! corpora on stable Rust.

use weles_ima::HashAlgorithm;

use crate::Policy;
use crate::ima_keys::{TrustedKey, check_modsig, check_xattr_signature};

/// A WELES TOML policy.
pub fn policy_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::load(text.as_bytes(), "fuzz.toml");
    }
}

/// A Keylime runtime policy (JSON).
pub fn policy_keylime(data: &[u8]) {
    let _ = crate::keylime::load(data, "fuzz.json");
    let _ = crate::keylime::to_document(data, "fuzz.json", 1);
}

/// Key material (DER/PEM certificates and public keys) and the signature parsers: `security.ima`
/// headers and CMS SignedData. The first byte chooses how the rest is read.
pub fn ima_signature(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let digest = [0x5au8; 32];
    match selector % 3 {
        0 => {
            let _ = TrustedKey::from_pem_or_der("fuzz", rest);
        }
        1 => {
            let _ =
                check_xattr_signature(&[], rest, HashAlgorithm::Sha256, &digest, selector & 4 != 0);
        }
        _ => {
            let _ = check_modsig(&[], rest, HashAlgorithm::Sha256, &digest);
        }
    }
}
