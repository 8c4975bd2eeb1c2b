//! The audit log's format (`docs/audit.md`), shared by welesd (which writes it) and
//! `weles audit verify` (which checks it offline).
//!
//! One record per line: `JSON TAB base64(sshsig blob) LF`. The JSON is a [`Record`]; `prev` is
//! the SHA-256 of the previous line (its LF included), 64 zeros for the first; the signature
//! (sshsig, namespace `weles-audit`, by the manager key) covers the JSON's exact bytes. Checking
//! the signature needs an SSH library; callers pass it in.
//!
//! A tenant's records are sealed: what happened ([`Body`]) is encrypted with that tenant's audit
//! key (XChaCha20-Poly1305), so the host sees only numbers, times, kinds and tenant names, while
//! anyone can still check the chain and the signatures, and the tenant — who can fetch its key —
//! can read and authenticate its own records.

use std::io::BufRead;

use base64ct::Encoding as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The JSON part of a record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time_ms: u64,
    /// SHA-256 (hex) of the previous line.
    pub prev: String,
    /// `vm_notice`, `policy`, `tenant_registered`, `vm_created`, `vm_deleted`, `webhook_set`,
    /// `webhook_deleted`, `manager_started`.
    pub kind: String,
    pub tenant: Option<String>,
    /// What happened, in the clear (records of no tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// What happened, sealed with the tenant's audit key (a tenant's records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Body {
    pub vm: Option<String>,
    /// The details (for `vm_notice`: the monitor's notice).
    pub event: serde_json::Value,
    /// The VM monitor's state after the event (`vm_notice` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<serde_json::Value>,
}

/// A [`Body`] encrypted with XChaCha20-Poly1305 under the tenant's audit key; the associated
/// data binds it to its place: `"weles-audit-v1\n" seq "\n" prev "\n" kind "\n" tenant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// 24 bytes, hex.
    pub nonce: String,
    /// Standard base64.
    pub ciphertext: String,
}

fn aad(seq: u64, prev: &str, kind: &str, tenant: &str) -> Vec<u8> {
    format!("weles-audit-v1\n{seq}\n{prev}\n{kind}\n{tenant}").into_bytes()
}

impl Record {
    /// Seals `body` for `tenant` with `key` and a fresh `nonce`.
    pub fn seal(&mut self, body: &Body, key: &[u8; 32], nonce: [u8; 24]) -> Result<(), String> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let tenant = self.tenant.clone().unwrap_or_default();
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(body).map_err(|e| e.to_string())?);
        let cipher =
            chacha20poly1305::XChaCha20Poly1305::new_from_slice(key).map_err(|e| e.to_string())?;
        let ct = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &plain,
                    aad: &aad(self.seq, &self.prev, &self.kind, &tenant),
                },
            )
            .map_err(|_| "sealing failed".to_owned())?;
        self.body = None;
        self.sealed = Some(Sealed {
            nonce: hex::encode(nonce),
            ciphertext: base64ct::Base64::encode_string(&ct),
        });
        Ok(())
    }

    /// What happened: the clear body, or the sealed one opened with `key` (`None` when the
    /// record is sealed and no key is given; an error when the key does not open it).
    pub fn open(&self, key: Option<&[u8; 32]>) -> Result<Option<Body>, String> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        if let Some(b) = &self.body {
            return Ok(Some(b.clone()));
        }
        let (Some(sealed), Some(key)) = (&self.sealed, key) else {
            return Ok(None);
        };
        let nonce: [u8; 24] = hex::decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or("sealed nonce is not 24 bytes of hex")?;
        let ct = base64ct::Base64::decode_vec(&sealed.ciphertext)
            .map_err(|_| "sealed ciphertext is not base64")?;
        let cipher =
            chacha20poly1305::XChaCha20Poly1305::new_from_slice(key).map_err(|e| e.to_string())?;
        let tenant = self.tenant.clone().unwrap_or_default();
        let plain = zeroize::Zeroizing::new(
            cipher
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: &ct,
                        aad: &aad(self.seq, &self.prev, &self.kind, &tenant),
                    },
                )
                .map_err(|_| "the tenant's audit key does not open this record (another tenant's key, or altered)")?,
        );
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| format!("sealed body: {e}"))
    }
}

/// SHA-256 of a line (LF included), hex: the next record's `prev`.
pub fn line_hash(line_with_lf: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(line_with_lf))
}

/// Splits a line (without LF) into the JSON and the decoded signature blob.
pub fn split_line(line: &str) -> Result<(&str, Vec<u8>), String> {
    let (json, sig) = line
        .rsplit_once('\t')
        .ok_or("no TAB between the record and its signature")?;
    let blob = base64ct::Base64::decode_vec(sig).map_err(|_| "the signature is not base64")?;
    Ok((json, blob))
}

/// Where a log stops checking out.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct Broken {
    pub line: u64,
    pub why: String,
}

/// A log that checked out.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub records: u64,
    pub first_time_ms: Option<u64>,
    pub last_time_ms: Option<u64>,
    /// SHA-256 of the last line: compare with a head saved earlier to detect truncation.
    pub head: String,
    /// How many bytes of the input the good records span (a torn last line is after them).
    pub good_len: u64,
}

/// Reads a log, checking each record's signature (with `verify(json, sig_blob)`), sequence and
/// chain; calls `each` for every good record. With `allow_torn_tail`, an incomplete last line
/// (a crash in the middle of a write) ends the log instead of breaking it.
pub fn check_log(
    r: &mut impl BufRead,
    allow_torn_tail: bool,
    verify: impl Fn(&str, &[u8]) -> Result<(), String>,
    mut each: impl FnMut(Record),
) -> Result<Verified, Broken> {
    let (mut seq, mut hash) = (0u64, GENESIS.to_owned());
    let (mut first, mut last, mut good_len) = (None, None, 0u64);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let broken = |why: String| Broken { line: seq + 1, why };
        let n = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| broken(e.to_string()))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            if allow_torn_tail {
                break;
            }
            return Err(broken("the last line is incomplete".into()));
        }
        let text = std::str::from_utf8(&buf[..n - 1]).map_err(|_| broken("not UTF-8".into()))?;
        let (json, sig) = split_line(text).map_err(|e| broken(e.to_owned()))?;
        verify(json, &sig).map_err(broken)?;
        let rec: Record = serde_json::from_str(json).map_err(|e| broken(format!("record: {e}")))?;
        if rec.seq != seq + 1 {
            return Err(broken(format!(
                "sequence {} follows {seq}: records are missing or reordered",
                rec.seq
            )));
        }
        if rec.prev != hash {
            return Err(broken(
                "it does not chain to the line before: a record was changed or removed".into(),
            ));
        }
        first.get_or_insert(rec.time_ms);
        last = Some(rec.time_ms);
        seq = rec.seq;
        hash = line_hash(&buf);
        good_len += n as u64;
        each(rec);
    }
    Ok(Verified {
        records: seq,
        first_time_ms: first,
        last_time_ms: last,
        head: hash,
        good_len,
    })
}

/// Fuzz entry point: checking arbitrary bytes as a log (signatures taken as valid, so the
/// parser and the chain rules are what is exercised) never panics.
pub fn fuzz_check_log(data: &[u8]) {
    for torn in [false, true] {
        let _ = check_log(&mut &data[..], torn, |_, _| Ok(()), |_| ());
    }
}
