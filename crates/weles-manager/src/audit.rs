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

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64ct::Encoding as _;
use ssh_key::PrivateKey;
use ssh_key::encoding::Encode as _;

pub use weles_proto::audit::{Record, line_hash};

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

/// Each VM's newest monitor checkpoint, by VM name.
pub type Checkpoints = std::collections::BTreeMap<String, serde_json::Value>;

use weles_proto::audit::GENESIS;

struct Tail {
    file: File,
    seq: u64,
    hash: String,
}

pub struct AuditLog {
    path: PathBuf,
    key: PrivateKey,
    tail: Mutex<Tail>,
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
    /// Returns the log and each VM's newest checkpoint.
    pub fn open(path: &Path, key: PrivateKey) -> Result<(AuditLog, Checkpoints), AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let public = key.public_key().clone();
        let mut checkpoints = Checkpoints::new();
        let (mut seq, mut hash, mut good_len) = (0u64, GENESIS.to_owned(), 0u64);
        if let Ok(f) = File::open(path) {
            let v = weles_proto::audit::check_log(
                &mut BufReader::new(f),
                true,
                signature_check(&public),
                |rec| {
                    if let (Some(vm), Some(cp)) = (rec.vm, rec.checkpoint) {
                        checkpoints.insert(vm, cp);
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
        Ok((
            AuditLog {
                path: path.to_owned(),
                key,
                tail: Mutex::new(Tail { file, seq, hash }),
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
        let rec = Record {
            seq: t.seq + 1,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            prev: t.hash.clone(),
            kind: kind.to_owned(),
            vm: vm.map(str::to_owned),
            tenant: tenant.map(str::to_owned),
            event,
            checkpoint,
        };
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
        then(rec.seq);
        Ok(rec.seq)
    }

    /// Records after `after` about `vm` (all VMs with `None`), at most `limit`, read from disk.
    pub fn read(
        &self,
        after: u64,
        vm: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let f = File::open(&self.path).map_err(io)?;
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line.map_err(io)?;
            let Some((json, _)) = line.rsplit_once('\t') else {
                continue;
            };
            let Ok(rec) = serde_json::from_str::<Record>(json) else {
                continue;
            };
            if rec.seq > after && (vm.is_none() || rec.vm.as_deref() == vm) {
                out.push(rec);
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
        let (log, old) = AuditLog::open(&path, k.clone()).unwrap();
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
        let (log, old) = AuditLog::open(&path, k.clone()).unwrap();
        assert_eq!(
            old.get("vm"),
            Some(&serde_json::json!({ "cp": 2 })),
            "the newest checkpoint"
        );
        assert_eq!(
            log.append("policy", None, None, serde_json::json!({}), None)
                .unwrap(),
            4
        );
        assert_eq!(log.read(2, Some("vm"), 10).unwrap().len(), 1);
        drop(log);
        let good = std::fs::read_to_string(&path).unwrap();
        // Changing a record breaks its signature; dropping one breaks the sequence.
        std::fs::write(&path, good.replacen("\"i\":1", "\"i\":7", 1)).unwrap();
        let e = verify_file(&path, &public).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("signature"), "{e}");
        assert!(
            AuditLog::open(&path, k.clone()).is_err(),
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
}
