//! Keylime runtime policy JSON (format version 1), read as-is.
//!
//! Keylime's schema (keylime/ima/ima.py, `RUNTIME_POLICY_SCHEMA`): eight required keys —
//! `meta` (`version`, `generator`, `timestamp`), `release`, `digests` (path → hex digests),
//! `excludes` (regexes), `keyrings` (keyring → key digests), `ima` (`ignored_keyrings`,
//! `log_hash_alg`, `dm_policy`), `ima-buf` (name → digests) and `verification-keys` (a JSON
//! *string* holding `{"keyids": [...], "pubkeys": [base64 DER, ...]}`).
//!
//! Digests are bare lowercase hex of 40–128 digits; like Keylime we compare their bytes with the
//! entry's digest whatever its algorithm. The big maps are read by [`keylime_fast`] straight into
//! allowlists: a 100k-path policy is parsed without building an intermediate tree.

use std::collections::BTreeMap;

use base64ct::{Base64, Encoding};
use serde::Deserialize;

use crate::document::{ImaSection, KeyEntry, PolicyDocument};
use crate::error::PolicyError;
use crate::ima_keys::TrustedKey;
use crate::keylime_fast;
use crate::policy::{Policy, PolicyFormat};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    version: u64,
    #[allow(dead_code)]
    generator: u64,
    #[serde(default)]
    #[allow(dead_code)]
    timestamp: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImaOptions {
    ignored_keyrings: Vec<String>,
    log_hash_alg: String,
    #[allow(dead_code)]
    dm_policy: Option<serde_json::Value>,
}

/// The same document as plain maps, for conversion to TOML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain {
    meta: Meta,
    release: u64,
    digests: BTreeMap<String, Vec<String>>,
    excludes: Vec<String>,
    keyrings: BTreeMap<String, Vec<String>>,
    ima: ImaOptions,
    #[serde(rename = "ima-buf")]
    ima_buf: BTreeMap<String, Vec<String>>,
    #[serde(rename = "verification-keys")]
    verification_keys: String,
}

#[derive(Deserialize)]
struct VerificationKeys {
    #[serde(default)]
    keyids: Vec<u64>,
    pubkeys: Vec<String>,
}

fn json_error(source: &str, e: &serde_json::Error) -> PolicyError {
    let msg = e.to_string();
    // serde_json appends " at line L column C"; move it into the location.
    let (message, _) = msg.rsplit_once(" at line ").unwrap_or((&msg, ""));
    PolicyError::new(
        source,
        format!("line {}, column {}", e.line(), e.column()),
        format!("Keylime runtime policy: {message}"),
    )
}

fn check_common(source: &str, meta: &Meta, ima: &ImaOptions) -> Result<(), PolicyError> {
    if meta.version != 1 {
        return Err(PolicyError::new(
            source,
            "meta.version",
            format!(
                "Keylime runtime policy version {} is not supported (only 1)",
                meta.version
            ),
        ));
    }
    if !["sha1", "sha256", "sha384", "sha512"].contains(&ima.log_hash_alg.as_str()) {
        return Err(PolicyError::new(
            source,
            "ima.log_hash_alg",
            format!(
                "{:?} is not sha1, sha256, sha384 or sha512",
                ima.log_hash_alg
            ),
        ));
    }
    Ok(())
}

/// Line and column (1-based) of a byte offset.
fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.len()
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

/// Loads a Keylime runtime policy as a [`Policy`].
pub fn load(bytes: &[u8], source: &str) -> Result<Policy, PolicyError> {
    let at = |offset: usize| {
        let (l, c) = line_column(bytes, offset);
        format!("line {l}, column {c}")
    };
    let top = keylime_fast::read(bytes).map_err(|e| {
        PolicyError::new(
            source,
            at(e.offset),
            format!("Keylime runtime policy: {}", e.message),
        )
    })?;
    let mut meta = None;
    let mut release = None;
    let mut excludes = None;
    let mut ima = None;
    let mut vkeys = None;
    for (key, raw, offset) in &top.others {
        let bad = |e: serde_json::Error| {
            PolicyError::new(
                source,
                format!("{key} ({})", at(*offset)),
                format!("Keylime runtime policy: {e}"),
            )
        };
        match key.as_ref() {
            "meta" => meta = Some(serde_json::from_slice::<Meta>(raw).map_err(bad)?),
            "release" => release = Some(serde_json::from_slice::<u64>(raw).map_err(bad)?),
            "excludes" => excludes = Some(serde_json::from_slice::<Vec<String>>(raw).map_err(bad)?),
            "ima" => ima = Some(serde_json::from_slice::<ImaOptions>(raw).map_err(bad)?),
            "verification-keys" => {
                vkeys = Some(serde_json::from_slice::<String>(raw).map_err(bad)?)
            }
            other => {
                return Err(PolicyError::new(
                    source,
                    at(*offset),
                    format!("Keylime runtime policy: unknown field `{other}`"),
                ));
            }
        }
    }
    let missing = |name: &str| {
        PolicyError::new(
            source,
            "document",
            format!("Keylime runtime policy: missing field `{name}`"),
        )
    };
    let meta = meta.ok_or_else(|| missing("meta"))?;
    let ima = ima.ok_or_else(|| missing("ima"))?;
    check_common(source, &meta, &ima)?;
    let mut p = Policy::empty(PolicyFormat::Keylime);
    p.version = release.ok_or_else(|| missing("release"))?;
    p.digests = top.digests;
    p.keyrings = top.keyrings;
    p.buffers = top.ima_buf;
    // Keylime compares digests whatever their algorithm.
    p.digest_algorithms = None;
    p.set_excludes(&excludes.ok_or_else(|| missing("excludes"))?)
        .map_err(|(i, m)| PolicyError::new(source, format!("excludes[{i}]"), m))?;
    p.ignored_keyrings = ima.ignored_keyrings;
    p.keys = verification_keys(&vkeys.ok_or_else(|| missing("verification-keys"))?, source)?
        .into_iter()
        .enumerate()
        .map(|(i, (name, der, keyid))| {
            let k = TrustedKey::from_der(&name, &der).map_err(|e| {
                PolicyError::new(
                    source,
                    format!("verification-keys.pubkeys[{i}]"),
                    e.to_string(),
                )
            })?;
            Ok(match keyid {
                Some(id) => k.with_keyid(id),
                None => k,
            })
        })
        .collect::<Result<_, PolicyError>>()?;
    Ok(p)
}

/// A verification key as Keylime lists it: (name, DER, keyid override).
type RawKey = (String, Vec<u8>, Option<u32>);

fn verification_keys(text: &str, source: &str) -> Result<Vec<RawKey>, PolicyError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let vk: VerificationKeys = serde_json::from_str(text).map_err(|e| {
        PolicyError::new(
            source,
            "verification-keys",
            format!("not the keyring JSON Keylime expects: {e}"),
        )
    })?;
    vk.pubkeys
        .iter()
        .enumerate()
        .map(|(i, b64)| {
            let der = Base64::decode_vec(b64.trim()).map_err(|e| {
                PolicyError::new(
                    source,
                    format!("verification-keys.pubkeys[{i}]"),
                    format!("not base64: {e}"),
                )
            })?;
            let keyid = vk.keyids.get(i).map(|k| *k as u32);
            Ok((format!("key {i}"), der, keyid))
        })
        .collect()
}

/// Converts a Keylime runtime policy to a WELES TOML document.
///
/// Bare digests get their algorithm from their length (40 hex digits sha1, 64 sha256, 96
/// sha384, 128 sha512); the TOML policy is algorithm-exact from then on.
pub fn to_document(
    bytes: &[u8],
    source: &str,
    version: u64,
) -> Result<PolicyDocument, PolicyError> {
    let doc: Plain = serde_json::from_slice(bytes).map_err(|e| json_error(source, &e))?;
    check_common(source, &doc.meta, &doc.ima)?;
    let convert = |map: BTreeMap<String, Vec<String>>,
                   key: &str|
     -> Result<BTreeMap<String, Vec<String>>, PolicyError> {
        map.into_iter()
            .map(|(path, ds)| {
                let out = ds
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        with_algorithm(d).ok_or_else(|| {
                            PolicyError::new(
                                source,
                                format!("{key}[{path:?}][{i}]"),
                                format!(
                                    "{d:?} is not a digest of 40, 56, 64, 96 or 128 hex digits"
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((path, out))
            })
            .collect()
    };
    let mut keys = Vec::new();
    for (name, der, keyid) in verification_keys(&doc.verification_keys, source)? {
        // Validate now, so a bad key fails the import, not the first verification.
        TrustedKey::from_der(&name, &der)
            .map_err(|e| PolicyError::new(source, "verification-keys", e.to_string()))?;
        keys.push(KeyEntry {
            name: Some(name),
            pem: pem_public_key(&der),
            keyid: keyid.map(|k| format!("{k:08x}")),
        });
    }
    let mut boot_aggregate = Vec::new();
    let mut digests = convert(doc.digests, "digests")?;
    if let Some(b) = digests.remove("boot_aggregate") {
        boot_aggregate = b;
    }
    Ok(PolicyDocument {
        schema: crate::document::SCHEMA,
        version: version.max(doc.release).max(1),
        name: None,
        description: Some(format!("imported from Keylime runtime policy {source}")),
        ima: ImaSection {
            digest_algorithms: Some(vec![
                "md5".into(),
                "sha1".into(),
                "sha256".into(),
                "sha384".into(),
                "sha512".into(),
            ]),
            boot_aggregate,
            excludes: doc.excludes,
            ignored_keyrings: doc.ima.ignored_keyrings,
            keys,
            digests,
            buffers: convert(doc.ima_buf, "ima-buf")?,
            keyrings: convert(doc.keyrings, "keyrings")?,
            ..ImaSection::default()
        },
        ..PolicyDocument::default()
    })
}

fn with_algorithm(hex_digest: &str) -> Option<String> {
    let alg = match hex_digest.len() {
        40 => "sha1",
        56 => "sha224",
        64 => "sha256",
        96 => "sha384",
        128 => "sha512",
        _ => return None,
    };
    hex_digest
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| format!("{alg}:{}", hex_digest.to_ascii_lowercase()))
}

fn pem_public_key(der: &[u8]) -> String {
    let b64 = Base64::encode_string(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}
