//! The audit log (`docs/audit.md`): append-only, hash-chained, every record signed by the
//! manager key M — verifiable offline with `weles audit verify` (or record by record with
//! `ssh-keygen -Y verify`).
//!
//! One record per line: `JSON TAB base64(sshsig blob) LF`. The JSON holds `seq` (1, 2, …),
//! `time_ms`, `prev` (SHA-256 of the previous line, LF included; 64 zeros for the first), what
//! happened, and for VM notices the monitor's checkpoint after it, from which a restarted manager
//! resumes. The signature (namespace `weles-audit`) covers the JSON's exact bytes.
//!
//! A record is written (and fsynced) before the notice it carries is published anywhere: what a
//! tenant or webhook saw is on disk, and a crash before the write means the notice never
//! happened — the restarted monitor makes it again, once.
//!
//! Reads (a tenant's event history, the webhook's next event) go through an in-memory index —
//! each record's byte offset, and each tenant's record numbers — built when the log is opened
//! and extended on append, so they cost what they return, not the log's length.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64ct::Encoding as _;
use ssh_key::PrivateKey;
use ssh_key::encoding::Encode as _;

pub use weles_proto::audit::{Body, Record, line_hash};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}, line {line}: {why}")]
    Broken {
        path: PathBuf,
        line: u64,
        why: String,
    },
    #[error("audit log: signing: {0}")]
    Sign(String),
}

/// Each VM's newest monitor checkpoint and the number of the record carrying it (the VM's last
/// notice), by VM name.
pub type Checkpoints = std::collections::BTreeMap<String, (u64, serde_json::Value)>;

use weles_proto::audit::GENESIS;

struct Tail {
    file: File,
    seq: u64,
    hash: String,
    /// Byte offset of record `n` at index `n - 1`, and the log's length.
    offsets: Vec<u64>,
    len: u64,
    /// Each tenant's record numbers, ascending.
    by_tenant: std::collections::HashMap<String, Vec<u64>>,
}

/// Each tenant's audit key.
pub type TenantKeys = std::collections::BTreeMap<String, zeroize::Zeroizing<[u8; 32]>>;

pub struct AuditLog {
    path: PathBuf,
    key: PrivateKey,
    tail: Mutex<Tail>,
    tenant_keys: std::sync::RwLock<TenantKeys>,
}

/// A record read back and opened.
#[derive(Clone, Debug)]
pub struct Opened {
    pub seq: u64,
    pub time_ms: u64,
    pub kind: String,
    pub tenant: Option<String>,
    pub body: Body,
}

/// The signature check `weles_proto::audit::check_log` needs, with `key`.
pub fn signature_check(
    key: &ssh_key::PublicKey,
) -> impl Fn(&str, &[u8]) -> Result<(), String> + '_ {
    move |json, blob| {
        weles_policy::signing::verify_blob(
            key,
            weles_proto::api::AUDIT_NAMESPACE,
            json.as_bytes(),
            blob,
        )
        .map_err(|e| format!("the manager key's signature: {e}"))
    }
}

impl AuditLog {
    /// Opens (or starts) the log, checking every record's chain and signature. A torn last
    /// line (a crash in the middle of a write) is cut off; any other damage is refused.
    /// Returns the log and each VM's newest checkpoint (opened with the tenants' keys).
    pub fn open(
        path: &Path,
        key: PrivateKey,
        tenant_keys: TenantKeys,
    ) -> Result<(AuditLog, Checkpoints), AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let public = key.public_key().clone();
        let mut checkpoints = Checkpoints::new();
        let mut by_tenant = std::collections::HashMap::<String, Vec<u64>>::new();
        let (mut seq, mut hash, mut good_len) = (0u64, GENESIS.to_owned(), 0u64);
        if let Ok(f) = File::open(path) {
            let v = weles_proto::audit::check_log(
                &mut BufReader::new(f),
                true,
                signature_check(&public),
                |rec| {
                    if let Some(t) = &rec.tenant {
                        by_tenant.entry(t.clone()).or_default().push(rec.seq);
                    }
                    let key = rec.tenant.as_ref().and_then(|t| tenant_keys.get(t));
                    if let Ok(Some(body)) = rec.open(key.map(|k| &**k))
                        && let (Some(vm), Some(cp)) = (body.vm, body.checkpoint)
                    {
                        checkpoints.insert(vm, (rec.seq, cp));
                    }
                },
            )
            .map_err(|b| AuditError::Broken {
                path: path.to_owned(),
                line: b.line,
                why: b.why,
            })?;
            (seq, hash, good_len) = (v.records, v.head, v.good_len);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() > good_len {
            file.set_len(good_len).map_err(io)?;
        }
        // Where each (checked) record starts.
        let mut offsets = Vec::with_capacity(seq as usize);
        if good_len > 0 {
            let mut r =
                BufReader::new(std::io::Read::take(File::open(path).map_err(io)?, good_len));
            let (mut at, mut line) = (0u64, Vec::new());
            loop {
                line.clear();
                let n = r.read_until(b'\n', &mut line).map_err(io)?;
                if n == 0 {
                    break;
                }
                offsets.push(at);
                at += n as u64;
            }
        }
        if offsets.len() as u64 != seq {
            return Err(AuditError::Broken {
                path: path.to_owned(),
                line: offsets.len() as u64,
                why: format!("{} lines for {seq} records", offsets.len()),
            });
        }
        Ok((
            AuditLog {
                path: path.to_owned(),
                key,
                tail: Mutex::new(Tail {
                    file,
                    seq,
                    hash,
                    offsets,
                    len: good_len,
                    by_tenant,
                }),
                tenant_keys: std::sync::RwLock::new(tenant_keys),
            },
            checkpoints,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_seq(&self) -> u64 {
        self.tail.lock().map_or(0, |t| t.seq)
    }

    /// Appends a record (fsynced); returns its sequence number.
    pub fn append(
        &self,
        kind: &str,
        vm: Option<&str>,
        tenant: Option<&str>,
        event: serde_json::Value,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<u64, AuditError> {
        self.append_then(kind, vm, tenant, event, checkpoint, |_| ())
    }

    /// Appends a record, then calls `then` with its sequence number before the next record can
    /// be appended: whatever `then` publishes appears in sequence order.
    pub fn append_then(
        &self,
        kind: &str,
        vm: Option<&str>,
        tenant: Option<&str>,
        event: serde_json::Value,
        checkpoint: Option<serde_json::Value>,
        then: impl FnOnce(u64),
    ) -> Result<u64, AuditError> {
        let mut t = match self.tail.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let body = Body {
            vm: vm.map(str::to_owned),
            event,
            checkpoint,
        };
        let mut rec = Record {
            seq: t.seq + 1,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            prev: t.hash.clone(),
            kind: kind.to_owned(),
            tenant: tenant.map(str::to_owned),
            body: Some(body.clone()),
            sealed: None,
        };
        // A tenant's record is sealed for that tenant; the host reads only its outline.
        if let Some(t) = tenant {
            let keys = self
                .tenant_keys
                .read()
                .map_err(|_| AuditError::Sign("tenant keys".into()))?;
            if let Some(k) = keys.get(t) {
                let mut nonce = [0u8; 24];
                getrandom::fill(&mut nonce).map_err(|e| AuditError::Sign(e.to_string()))?;
                rec.seal(&body, k, nonce).map_err(AuditError::Sign)?;
            }
        }
        let json = serde_json::to_string(&rec).map_err(|e| AuditError::Sign(e.to_string()))?;
        let sig = self
            .key
            .sign(
                weles_proto::api::AUDIT_NAMESPACE,
                ssh_key::HashAlg::Sha512,
                json.as_bytes(),
            )
            .and_then(|s| s.encode_vec().map_err(Into::into))
            .map_err(|e| AuditError::Sign(e.to_string()))?;
        let line = format!("{json}\t{}\n", base64ct::Base64::encode_string(&sig));
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        t.file.write_all(line.as_bytes()).map_err(io)?;
        t.file.sync_data().map_err(io)?;
        t.seq = rec.seq;
        t.hash = line_hash(line.as_bytes());
        let at = t.len;
        t.offsets.push(at);
        t.len += line.len() as u64;
        if let Some(tenant) = tenant {
            t.by_tenant
                .entry(tenant.to_owned())
                .or_default()
                .push(rec.seq);
        }
        then(rec.seq);
        Ok(rec.seq)
    }

    /// Gives a new tenant's audit key (its records from now on are sealed with it).
    pub fn set_tenant_key(&self, tenant: &str, key: zeroize::Zeroizing<[u8; 32]>) {
        if let Ok(mut k) = self.tenant_keys.write() {
            k.insert(tenant.to_owned(), key);
        }
    }

    /// Records after `after` of `tenant` (and about `vm`), opened, at most `limit`, from disk:
    /// the index names which records and where they are, the file holds them.
    pub fn read(
        &self,
        after: u64,
        tenant: &str,
        vm: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Opened>, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = BufReader::new(File::open(&self.path).map_err(io)?);
        let keys = self
            .tenant_keys
            .read()
            .map_err(|_| AuditError::Sign("tenant keys".into()))?;
        let key = keys.get(tenant);
        let mut out = Vec::new();
        let mut cursor = after;
        let mut line = String::new();
        // Where the reader stands: records that follow each other are read on, not sought.
        let mut at = 0u64;
        while out.len() < limit {
            // The next few of this tenant's records, and where they start (the lock is held
            // only to copy them).
            let batch: Vec<(u64, u64)> = {
                let t = match self.tail.lock() {
                    Ok(t) => t,
                    Err(p) => p.into_inner(),
                };
                let Some(seqs) = t.by_tenant.get(tenant) else {
                    break;
                };
                let from = seqs.partition_point(|&s| s <= cursor);
                seqs[from..]
                    .iter()
                    .take(256)
                    .filter_map(|&s| Some((s, *t.offsets.get(s as usize - 1)?)))
                    .collect()
            };
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            cursor = last;
            for (seq, offset) in batch {
                if offset != at {
                    match offset.checked_sub(at).and_then(|d| i64::try_from(d).ok()) {
                        // Ahead: skip within what is buffered when it can.
                        Some(d) => f.seek_relative(d).map_err(io)?,
                        None => {
                            f.seek(SeekFrom::Start(offset)).map_err(io)?;
                        }
                    }
                }
                line.clear();
                at = offset + f.read_line(&mut line).map_err(io)? as u64;
                let Some((json, _)) = line.trim_end_matches('\n').rsplit_once('\t') else {
                    continue;
                };
                let Ok(rec) = serde_json::from_str::<Record>(json) else {
                    continue;
                };
                if rec.seq != seq || rec.tenant.as_deref() != Some(tenant) {
                    continue;
                }
                let Ok(Some(body)) = rec.open(key.map(|k| &**k)) else {
                    continue;
                };
                if vm.is_some() && body.vm.as_deref() != vm {
                    continue;
                }
                out.push(Opened {
                    seq: rec.seq,
                    time_ms: rec.time_ms,
                    kind: rec.kind,
                    tenant: rec.tenant,
                    body,
                });
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Verifies a whole log offline against the manager key: signatures, sequence, chain.
pub fn verify_file(
    path: &Path,
    key: &ssh_key::PublicKey,
) -> Result<weles_proto::audit::Verified, AuditError> {
    let f = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_owned(),
        source,
    })?;
    weles_proto::audit::check_log(&mut BufReader::new(f), false, signature_check(key), |_| ())
        .map_err(|b| AuditError::Broken {
            path: path.to_owned(),
            line: b.line,
            why: b.why,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        crate::identity::load_ssh_key(&crate::identity::new_ssh_key("t").unwrap()).unwrap()
    }

    #[test]
    fn chain_signatures_tears_and_tampering() {
        let dir = std::env::temp_dir().join(format!("weles-audit-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let k = key();
        let public = k.public_key().clone();
        let mut keys = TenantKeys::new();
        keys.insert("t".into(), zeroize::Zeroizing::new([7u8; 32]));
        let (log, old) = AuditLog::open(&path, k.clone(), keys.clone()).unwrap();
        assert!(old.is_empty());
        for i in 0..3 {
            let cp = serde_json::json!({ "cp": i });
            log.append(
                "vm_notice",
                Some("vm"),
                Some("t"),
                serde_json::json!({ "i": i }),
                Some(cp),
            )
            .unwrap();
        }
        assert_eq!(verify_file(&path, &public).unwrap().records, 3);
        drop(log);
        // A torn write is cut at reopen; the chain goes on.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":4,").unwrap();
        let (log, old) = AuditLog::open(&path, k.clone(), keys.clone()).unwrap();
        assert_eq!(
            old.get("vm"),
            Some(&(3, serde_json::json!({ "cp": 2 }))),
            "the newest checkpoint"
        );
        assert_eq!(
            log.append("policy", None, None, serde_json::json!({}), None)
                .unwrap(),
            4
        );
        let opened = log.read(2, "t", Some("vm"), 10).unwrap();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].body.event, serde_json::json!({ "i": 2 }));
        assert!(log.read(0, "other", None, 10).unwrap().is_empty());
        drop(log);
        // Without the tenant's key the checkpoints stay closed (and nothing is made up).
        let (_, old) = AuditLog::open(&path, k.clone(), TenantKeys::new()).unwrap();
        assert!(old.is_empty());
        let good = std::fs::read_to_string(&path).unwrap();
        // The host sees no tenant content: the notices are sealed.
        assert!(!good.contains("\"i\":"), "{good}");
        assert!(good.contains("\"sealed\""));
        // Changing a record breaks its signature; dropping one breaks the sequence.
        std::fs::write(&path, good.replacen("\"seq\":2", "\"seq\":7", 1)).unwrap();
        let e = verify_file(&path, &public).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("signature"), "{e}");
        assert!(
            AuditLog::open(&path, k.clone(), keys.clone()).is_err(),
            "a broken log is not continued"
        );
        let lines: Vec<&str> = good.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let e = verify_file(&path, &public).unwrap_err().to_string();
        assert!(e.contains("sequence 3 follows 1"), "{e}");
        // Another manager's key verifies nothing.
        std::fs::write(&path, &good).unwrap();
        assert!(verify_file(&path, key().public_key()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_through_the_index_match_a_full_scan_before_and_after_reopening() {
        let dir = std::env::temp_dir().join(format!("weles-audit-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let k = key();
        let mut keys = TenantKeys::new();
        keys.insert("a".into(), zeroize::Zeroizing::new([1u8; 32]));
        keys.insert("b".into(), zeroize::Zeroizing::new([2u8; 32]));
        let (log, _) = AuditLog::open(&path, k.clone(), keys.clone()).unwrap();
        // 700 records: tenant a's (two VMs, more than one index batch), b's, and the host's.
        let mut expected: Vec<(u64, &str, &str)> = Vec::new();
        for i in 0..700u64 {
            let (tenant, vm) = match i % 5 {
                0 => (None, None),
                1 | 2 => (Some("a"), Some("web")),
                3 => (Some("a"), Some("db")),
                _ => (Some("b"), Some("web")),
            };
            let seq = log
                .append("vm_notice", vm, tenant, serde_json::json!({ "i": i }), None)
                .unwrap();
            if let (Some(t), Some(v)) = (tenant, vm) {
                expected.push((seq, t, v));
            }
        }
        let want = |after: u64, t: &str, vm: Option<&str>, limit: usize| -> Vec<u64> {
            expected
                .iter()
                .filter(|(s, et, ev)| *s > after && *et == t && vm.is_none_or(|v| v == *ev))
                .map(|(s, _, _)| *s)
                .take(limit)
                .collect()
        };
        let got = |log: &AuditLog, after: u64, t: &str, vm: Option<&str>, limit: usize| {
            log.read(after, t, vm, limit)
                .unwrap()
                .iter()
                .map(|o| o.seq)
                .collect::<Vec<_>>()
        };
        let cases = [
            (0, "a", None, usize::MAX),
            (0, "a", Some("db"), usize::MAX),
            (333, "a", Some("web"), 7),
            (0, "b", None, 1),
            (699, "a", None, 10),
            (10_000, "a", None, 10),
            (0, "nobody", None, 10),
        ];
        for (after, t, vm, limit) in cases {
            assert_eq!(
                got(&log, after, t, vm, limit),
                want(after, t, vm, limit),
                "{after} {t} {vm:?}"
            );
        }
        assert_eq!(got(&log, 0, "a", None, usize::MAX).len(), 420);
        drop(log);
        // Reopened: the index is rebuilt from the file, and appends extend it.
        let (log, _) = AuditLog::open(&path, k.clone(), keys.clone()).unwrap();
        for (after, t, vm, limit) in cases {
            assert_eq!(
                got(&log, after, t, vm, limit),
                want(after, t, vm, limit),
                "{after} {t} {vm:?}"
            );
        }
        let seq = log
            .append(
                "vm_notice",
                Some("db"),
                Some("a"),
                serde_json::json!({}),
                None,
            )
            .unwrap();
        assert_eq!(got(&log, 690, "a", Some("db"), 10), {
            let mut w = want(690, "a", Some("db"), 10);
            w.push(seq);
            w
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
