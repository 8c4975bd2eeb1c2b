//! The manager's store: tenants, VMs, policies and the EK CA — sealed and rollback-protected
//! exactly like a vTPM's state (`docs/vtpm-protocol.md` §4): one file, XChaCha20-Poly1305 with
//! the sealing provider's key, every write a new version recorded in a monotonic store. An older
//! store (restored from a backup by the host's administrator) is refused at start.
//!
//! Every change is written before it takes effect: [`Store::update`] seals the new registry and
//! only then replaces the one in memory, so a failed write loses nothing already stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weles_vtpm::host_counter::HostTpmCounter;
use weles_vtpm::sealed::{FileCounter, MonotonicStore, SealedState, StateError};
use zeroize::Zeroizing;

use crate::config::Config;

/// The store's identity in the sealed file's associated data: a vTPM's state never opens as a
/// manager's store, nor the reverse.
const IDENTITY: &str = "welesd-store";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Registry {
    pub tenants: BTreeMap<String, Tenant>,
    pub vms: BTreeMap<String, VmRecord>,
    /// How many records the audit log had when the store was last written: a shorter audit log
    /// at start has been truncated or replaced.
    #[serde(default)]
    pub audit_seq: u64,
    /// Per tenant, the host keys no longer in use (deleted VMs, replaced keys), OpenSSH lines.
    #[serde(default)]
    pub revoked_host_keys: BTreeMap<String, Vec<String>>,
    /// Bumped with each revocation (the KRL's version).
    #[serde(default)]
    pub krl_version: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    /// OpenSSH public key (`ssh-ed25519 AAAA… comment`).
    pub ssh_key: String,
    pub created_ms: u64,
    #[serde(default)]
    pub webhook: Option<crate::webhook::Webhook>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: String,
    pub tenant: String,
    pub created_ms: u64,
    /// The tenant's current policy for this VM, as signed.
    pub policy: Option<StoredPolicy>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub version: u64,
    pub policy: String,
    /// The sshsig signature (armored) by the tenant's key.
    pub signature: String,
}

/// The EK CA the manager issues vTPM EK certificates with.
pub struct EkCa {
    pub key_pem: Zeroizing<String>,
    pub cert_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sealed(#[from] StateError),
    #[error("store {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{0}")]
    Ca(String),
}

/// The manager's secrets; created on first start, sealed with the registry.
pub struct Secrets {
    pub ek_ca: EkCa,
    /// The identity key M (OpenSSH private key).
    pub manager_key: Zeroizing<String>,
    /// The tenant API's TLS key (PKCS#8 DER) and certificate (DER).
    pub tls_key: Zeroizing<Vec<u8>>,
    pub tls_cert: Vec<u8>,
    /// Each tenant's SSH CA key (OpenSSH private key).
    pub tenant_cas: BTreeMap<String, Zeroizing<String>>,
    /// Each tenant's audit key: its audit records are sealed with it.
    pub tenant_audit_keys: crate::audit::TenantKeys,
    /// The authority key A (P-256 scalar) that authorizes host-key signatures.
    pub authority_key: Zeroizing<[u8; 32]>,
}

/// A new tenant's secrets.
pub struct TenantSecrets {
    pub ca: Zeroizing<String>,
    pub audit_key: Zeroizing<[u8; 32]>,
}

pub struct Store {
    sealed: SealedState,
    registry: Registry,
    secrets: Secrets,
    /// The audit log's length, recorded with the next write.
    audit_seq: u64,
}

impl Store {
    /// Opens the store in `cfg.state_dir`, creating it (with a new sim sealing key and EK CA)
    /// on first start. Returns the store and notes worth logging.
    pub fn open(cfg: &Config) -> Result<(Store, Vec<String>), StoreError> {
        let dir = &cfg.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut notes = Vec::new();
        let tee = crate::tee::backend(&cfg.tee, cfg.tee_device.as_deref())
            .map_err(|e| StoreError::Ca(e.to_string()))?;
        let (provider, created) = tee
            .sealing(dir)
            .map_err(|e| StoreError::Ca(e.to_string()))?;
        if created {
            let protection = match tee.kind() {
                "sim" => "sim: protected by file permissions only, not by a TEE",
                _ => "a file inside the confidential VM: as safe as the CVM's encrypted storage",
            };
            notes.push(format!(
                "created the {} sealing key in {} ({protection})",
                tee.kind(),
                dir.display()
            ));
        }
        let counter: Box<dyn MonotonicStore> = match &cfg.store.host_tpm {
            Some(addr) => {
                let (host, port) = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .ok_or_else(|| StoreError::Corrupt {
                        path: dir.clone(),
                        why: format!("store.host_tpm {addr:?} is not HOST:PORT"),
                    })?;
                Box::new(HostTpmCounter::new(host, port, cfg.store.host_tpm_index)?)
            }
            None => Box::new(FileCounter::new(&dir.join("store.counter"))),
        };
        let path = dir.join("welesd.sealed");
        let mut sealed = SealedState::at(path.clone(), IDENTITY, provider, counter);
        let mut blobs = sealed.load()?;
        let registry = match blobs.get("registry") {
            Some(b) => serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                why: format!("registry: {e}"),
            })?,
            None => Registry::default(),
        };
        let secret = |blobs: &mut BTreeMap<String, Vec<u8>>, name: &str| {
            blobs.remove(name).map(|b| {
                let s = Zeroizing::new(String::from_utf8_lossy(&b).into_owned());
                let mut b = b;
                zeroize::Zeroize::zeroize(&mut b);
                s
            })
        };
        let manager_key = match secret(&mut blobs, "manager.key") {
            Some(k) => k,
            None => {
                notes.push("created the manager identity key".into());
                crate::identity::new_ssh_key("welesd").map_err(StoreError::Ca)?
            }
        };
        let (tls_key, tls_cert) = match (blobs.remove("tls.key"), blobs.get("tls.crt")) {
            (Some(k), Some(c)) => (Zeroizing::new(k), c.clone()),
            _ => crate::identity::new_tls().map_err(StoreError::Ca)?,
        };
        let tenant_cas = match secret(&mut blobs, "tenant-cas") {
            Some(json) => {
                let map: BTreeMap<String, String> =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                        path: path.clone(),
                        why: format!("tenant CAs: {e}"),
                    })?;
                map.into_iter()
                    .map(|(k, v)| (k, Zeroizing::new(v)))
                    .collect()
            }
            None => BTreeMap::new(),
        };
        let had_authority = blobs.contains_key("authority.key");
        let authority_key = match secret(&mut blobs, "authority.key") {
            Some(hexkey) => {
                let mut k = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(hexkey.trim(), k.as_mut()).map_err(|_| {
                    StoreError::Corrupt {
                        path: path.clone(),
                        why: "authority key".into(),
                    }
                })?;
                k
            }
            None => {
                let key = weles_vtpm::manufacture::new_p256_key().map_err(StoreError::Ca)?;
                let mut k = Zeroizing::new([0u8; 32]);
                k.copy_from_slice(&key.to_bytes());
                notes.push("created the authority key for host-key signatures".into());
                k
            }
        };
        let tenant_audit_keys = match secret(&mut blobs, "tenant-audit-keys") {
            Some(json) => {
                let map: BTreeMap<String, String> =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                        path: path.clone(),
                        why: format!("tenant audit keys: {e}"),
                    })?;
                let mut keys = crate::audit::TenantKeys::new();
                for (t, hexkey) in map {
                    let mut k = Zeroizing::new([0u8; 32]);
                    hex::decode_to_slice(&hexkey, k.as_mut()).map_err(|_| StoreError::Corrupt {
                        path: path.clone(),
                        why: format!("tenant audit key of {t}"),
                    })?;
                    keys.insert(t, k);
                }
                keys
            }
            None => crate::audit::TenantKeys::new(),
        };
        let ek_ca = match (blobs.remove("ek-ca.key"), blobs.get("ek-ca.crt")) {
            (Some(key), Some(cert)) => EkCa {
                key_pem: Zeroizing::new(
                    String::from_utf8(key).map_err(|_| StoreError::Ca("key is not PEM".into()))?,
                ),
                cert_pem: String::from_utf8_lossy(cert).into_owned(),
            },
            _ => {
                let (key_pem, cert_pem) = weles_vtpm::manufacture::new_ca("welesd vTPM EK CA")
                    .map_err(|e| StoreError::Ca(e.to_string()))?;
                notes.push("created the EK CA for this manager's vTPMs".into());
                EkCa { key_pem, cert_pem }
            }
        };
        let fresh =
            !blobs.contains_key("registry") || !blobs.contains_key("tls.crt") || !had_authority;
        let mut store = Store {
            audit_seq: registry.audit_seq,
            sealed,
            registry,
            secrets: Secrets {
                ek_ca,
                manager_key,
                tls_key,
                tls_cert,
                tenant_cas,
                tenant_audit_keys,
                authority_key,
            },
        };
        if fresh {
            store.write(&store.registry.clone())?;
        }
        let cert_path = dir.join("ek-ca.crt");
        std::fs::write(&cert_path, &store.secrets.ek_ca.cert_pem).map_err(|source| {
            StateError::Io {
                path: cert_path,
                source,
            }
        })?;
        Ok((store, notes))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn ek_ca(&self) -> &EkCa {
        &self.secrets.ek_ca
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Like [`Store::update`], and also sets (`Some`) or removes (`None`) a tenant's secrets.
    pub fn update_with_tenant_secrets<T, E: From<StoreError>>(
        &mut self,
        tenant: &str,
        secrets: Option<TenantSecrets>,
        change: impl FnOnce(&mut Registry) -> Result<T, E>,
    ) -> Result<T, E> {
        let (old_ca, old_key) = match secrets {
            Some(n) => (
                self.secrets.tenant_cas.insert(tenant.to_owned(), n.ca),
                self.secrets
                    .tenant_audit_keys
                    .insert(tenant.to_owned(), n.audit_key),
            ),
            None => (
                self.secrets.tenant_cas.remove(tenant),
                self.secrets.tenant_audit_keys.remove(tenant),
            ),
        };
        let result = self.update(change);
        if result.is_err() {
            match old_ca {
                Some(k) => self.secrets.tenant_cas.insert(tenant.to_owned(), k),
                None => self.secrets.tenant_cas.remove(tenant),
            };
            match old_key {
                Some(k) => self.secrets.tenant_audit_keys.insert(tenant.to_owned(), k),
                None => self.secrets.tenant_audit_keys.remove(tenant),
            };
        }
        result
    }

    /// Notes the audit log's current length; the next write records it.
    pub fn note_audit_seq(&mut self, seq: u64) {
        self.audit_seq = self.audit_seq.max(seq);
    }

    pub fn version(&self) -> u64 {
        self.sealed.version()
    }

    /// Applies `change` to a copy of the registry, seals the copy, then keeps it. If `change`
    /// or the write fails, the registry is as it was.
    pub fn update<T, E: From<StoreError>>(
        &mut self,
        change: impl FnOnce(&mut Registry) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut next = self.registry.clone();
        let out = change(&mut next)?;
        next.audit_seq = next.audit_seq.max(self.audit_seq);
        self.write(&next)?;
        self.registry = next;
        Ok(out)
    }

    fn write(&mut self, registry: &Registry) -> Result<(), StoreError> {
        let mut blobs = BTreeMap::new();
        blobs.insert(
            "registry".to_owned(),
            serde_json::to_vec(registry).map_err(|e| StoreError::Corrupt {
                path: PathBuf::new(),
                why: e.to_string(),
            })?,
        );
        let s = &self.secrets;
        blobs.insert("ek-ca.key".to_owned(), s.ek_ca.key_pem.as_bytes().to_vec());
        blobs.insert("ek-ca.crt".to_owned(), s.ek_ca.cert_pem.as_bytes().to_vec());
        blobs.insert("manager.key".to_owned(), s.manager_key.as_bytes().to_vec());
        blobs.insert("tls.key".to_owned(), s.tls_key.to_vec());
        blobs.insert("tls.crt".to_owned(), s.tls_cert.clone());
        let cas: BTreeMap<&str, &str> = s
            .tenant_cas
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        blobs.insert(
            "tenant-cas".to_owned(),
            serde_json::to_vec(&cas).unwrap_or_default(),
        );
        let audit_keys: BTreeMap<&str, Zeroizing<String>> = s
            .tenant_audit_keys
            .iter()
            .map(|(k, v)| (k.as_str(), Zeroizing::new(hex::encode(v.as_ref()))))
            .collect();
        let audit_json: BTreeMap<&str, &str> =
            audit_keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
        blobs.insert(
            "tenant-audit-keys".to_owned(),
            serde_json::to_vec(&audit_json).unwrap_or_default(),
        );
        let result = self.sealed.store(&blobs);
        for name in [
            "ek-ca.key",
            "manager.key",
            "tls.key",
            "tenant-cas",
            "tenant-audit-keys",
        ] {
            if let Some(k) = blobs.get_mut(name) {
                zeroize::Zeroize::zeroize(k);
            }
        }
        Ok(result?)
    }
}

/// The sealed store file in `state_dir` (for messages and tests).
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join("welesd.sealed")
}
