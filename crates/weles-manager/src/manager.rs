//! The manager: the store, the running VMs, and the operator requests that change them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weles_policy::Policy;
use weles_proto::operator::{Health, OperatorReply, OperatorRequest, TenantInfo, VmInfo};

use weles_proto::api::{Evidence, PolicyUpload, VmStatus};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::guest_link::GuestLink;
use crate::monitor::{Checkpoint, Monitor};
use crate::notices::NoticeHub;
use crate::store::{Registry, Store, StoreError, Tenant, VmRecord};
use crate::supervisor::{self, VmPaths, VtpmProcess};
use crate::tee::TeeBackend;
use crate::vm::Vm;
use crate::vtpm_link::VtpmLink;
use crate::webhook::{Deliverer, DeliveryState, Webhook};

/// Where the guest keeps the VM's host key (persistent, owner hierarchy).
pub const HOST_KEY_HANDLE: u32 = 0x8100_0100;

/// Why a request was refused; `code` is the operator API's error code.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{0}")]
    Invalid(String),
    #[error("no tenant named {0:?}")]
    UnknownTenant(String),
    #[error("no VM named {0:?}")]
    UnknownVm(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
    #[error("policy signature: {0}")]
    BadSignature(String),
    #[error("{0}")]
    StaleVersion(String),
    #[error("{0}")]
    InvalidPolicy(String),
}

impl ManagerError {
    pub fn code(&self) -> &'static str {
        match self {
            ManagerError::Invalid(_) => "invalid",
            ManagerError::UnknownTenant(_) => "unknown_tenant",
            ManagerError::UnknownVm(_) => "unknown_vm",
            ManagerError::Exists(_) => "exists",
            ManagerError::Store(_) | ManagerError::Internal(_) => "internal",
            ManagerError::BadSignature(_) => "bad_signature",
            ManagerError::StaleVersion(_) => "stale_version",
            ManagerError::InvalidPolicy(_) => "invalid_policy",
        }
    }
}

/// A VM being monitored.
struct Running {
    vm: Arc<Vm>,
    paths: VmPaths,
    vtpm: VtpmProcess,
    vtpm_link: VtpmLink,
    guest_link: GuestLink,
}

impl Running {
    fn stop(mut self, shutdown_vtpm: bool) {
        self.guest_link.stop();
        self.vtpm.stop(shutdown_vtpm);
        self.vtpm_link.stop();
    }
}

pub struct Manager {
    /// Itself, for callbacks that must not keep it alive.
    me: std::sync::Weak<Manager>,
    cfg: Config,
    webhooks: Mutex<BTreeMap<String, Deliverer>>,
    audit: Arc<AuditLog>,
    tee: Box<dyn TeeBackend>,
    /// The host TPM, when the host is attested.
    host: Option<Arc<crate::host::HostAttestor>>,
    /// The host's violation of its host policy, once the watcher found one, and whether it is
    /// enforced on every VM.
    host_violation: Mutex<Option<(crate::monitor::Finding, bool)>>,
    /// The tenant API's bound address, once listening.
    api_addr: Mutex<Option<std::net::SocketAddr>>,
    store: Mutex<Store>,
    running: Mutex<BTreeMap<String, Running>>,
    notices: Arc<NoticeHub>,
    started: Instant,
    stop: Arc<AtomicBool>,
}

impl Manager {
    /// Opens the store and starts monitoring every registered VM (adopting running vTPMs).
    pub fn open(cfg: Config) -> anyhow::Result<(Arc<Manager>, Vec<String>)> {
        let (store, notes) = Store::open(&cfg)?;
        let tee = crate::tee::backend(&cfg.tee, cfg.tee_device.as_deref())?;
        let host = crate::host::HostAttestor::enroll(&cfg.host)?.map(Arc::new);
        let host_policy = match (&host, &cfg.host.policy) {
            (Some(_), Some(p)) => {
                let text = std::fs::read(p)
                    .map_err(|e| anyhow::anyhow!("host policy {}: {e}", p.display()))?;
                Some(Arc::new(Policy::load(&text, &p.display().to_string())?))
            }
            (None, Some(p)) => anyhow::bail!(
                "host policy {} given, but no host TPM ([host] tpm) to check it against",
                p.display()
            ),
            _ => None,
        };
        let key = crate::identity::load_ssh_key(&store.secrets().manager_key)
            .map_err(|e| anyhow::anyhow!(e))?;
        let (audit, checkpoints) = AuditLog::open(
            &cfg.state_dir.join("audit.log"),
            key,
            store.secrets().tenant_audit_keys.clone(),
        )?;
        let recorded = store.registry().audit_seq;
        if audit.last_seq() < recorded {
            anyhow::bail!(
                "{}: the audit log ends at record {} but the sealed store saw record {recorded}: \
                 it was truncated or replaced (restore the newer log; a manager never drops records)",
                audit.path().display(),
                audit.last_seq()
            );
        }
        let audit = Arc::new(audit);
        audit.append(
            "manager_started",
            None,
            None,
            serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "tee": tee.kind() }),
            None,
        )?;
        let mgr = Arc::new_cyclic(|me| Manager {
            me: me.clone(),
            webhooks: Mutex::new(BTreeMap::new()),
            audit,
            tee,
            host,
            host_violation: Mutex::new(None),
            api_addr: Mutex::new(None),
            cfg,
            store: Mutex::new(store),
            running: Mutex::new(BTreeMap::new()),
            notices: Arc::new(NoticeHub::new(65_536)),
            started: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let records: Vec<VmRecord> =
            mgr.with_store(|s| s.registry().vms.values().cloned().collect());
        for rec in records {
            mgr.start_vm(&rec, checkpoints.get(&rec.name))?;
        }
        let hooks: Vec<(String, Webhook)> = mgr.with_store(|s| {
            s.registry()
                .tenants
                .values()
                .filter_map(|t| t.webhook.clone().map(|w| (t.name.clone(), w)))
                .collect()
        });
        for (tenant, hook) in hooks {
            mgr.start_webhook(&tenant, hook);
        }
        if let (Some(host), Some(policy)) = (mgr.host.clone(), host_policy) {
            let m = Arc::downgrade(&mgr);
            let stop = mgr.stop.clone();
            let enforce = policy.mode == weles_policy::document::Mode::Enforce;
            let poll = std::time::Duration::from_millis(mgr.cfg.host.poll_ms.max(10));
            std::thread::Builder::new()
                .name("host-watch".into())
                .spawn(move || {
                    crate::host::watch(host, policy, poll, stop, |f| {
                        if let Some(m) = m.upgrade() {
                            m.on_host_violation(f, enforce);
                        }
                    })
                })?;
        }
        let m = Arc::downgrade(&mgr);
        let stop = mgr.stop.clone();
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Some(m) = m.upgrade() else { return };
                    let now = Instant::now();
                    let vms: Vec<Arc<Vm>> = m
                        .running
                        .lock()
                        .map(|r| r.values().map(|x| x.vm.clone()).collect())
                        .unwrap_or_default();
                    drop(m);
                    for vm in vms {
                        vm.on_tick(now);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })?;
        Ok((mgr, notes))
    }

    pub fn notices(&self) -> &Arc<NoticeHub> {
        &self.notices
    }

    fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut g = match self.store.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.note_audit_seq(self.audit.last_seq());
        f(&mut g)
    }

    /// Stops monitoring; vTPMs keep running for the next manager to adopt.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let all = self
            .running
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for (_, r) in all {
            r.stop(false);
        }
        let hooks = self
            .webhooks
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        for (_, d) in hooks {
            d.stop();
        }
    }

    pub fn handle(&self, req: OperatorRequest) -> OperatorReply {
        let result = match req {
            OperatorRequest::Health => Ok(OperatorReply::Health(self.health())),
            OperatorRequest::RegisterTenant { name, ssh_key } => self
                .register_tenant(&name, &ssh_key)
                .map(OperatorReply::Tenant),
            OperatorRequest::ListTenants => {
                Ok(OperatorReply::Tenants(self.with_store(|s| {
                    s.registry().tenants.values().map(tenant_info).collect()
                })))
            }
            OperatorRequest::CreateVm { tenant, name } => self
                .create_vm(&tenant, &name)
                .map(|v| OperatorReply::Vm(Box::new(v))),
            OperatorRequest::DeleteVm { name } => self
                .delete_vm(&name)
                .map(|()| OperatorReply::Deleted { name }),
            OperatorRequest::ListVms => Ok(OperatorReply::Vms(self.list_vms())),
            OperatorRequest::VmStatus { name } => {
                self.vm_info(&name).map(|v| OperatorReply::Vm(Box::new(v)))
            }
        };
        result.unwrap_or_else(|e| OperatorReply::error(e.code(), e.to_string()))
    }

    pub fn health(&self) -> Health {
        let (tenants, vms, store_version) = self.with_store(|s| {
            (
                s.registry().tenants.len(),
                s.registry().vms.len(),
                s.version(),
            )
        });
        Health {
            version: env!("CARGO_PKG_VERSION").into(),
            tee: self.cfg.tee.clone(),
            tenants,
            vms,
            uptime_s: self.started.elapsed().as_secs(),
            store_version,
            tenant_api: self
                .api_addr
                .lock()
                .ok()
                .and_then(|a| a.map(|a| a.to_string())),
            host: self.host_state(),
        }
    }

    pub fn set_api_addr(&self, addr: std::net::SocketAddr) {
        if let Ok(mut a) = self.api_addr.lock() {
            *a = Some(addr);
        }
    }

    /// The manager identity key M, public (OpenSSH).
    pub fn manager_public_key(&self) -> String {
        self.with_store(|s| {
            crate::identity::load_ssh_key(&s.secrets().manager_key)
                .ok()
                .and_then(|k| k.public_key().to_openssh().ok())
                .unwrap_or_default()
        })
    }

    /// The tenant API's TLS key and certificate (PKCS#8 DER, DER).
    pub fn tls_identity(&self) -> (zeroize::Zeroizing<Vec<u8>>, Vec<u8>) {
        self.with_store(|s| (s.secrets().tls_key.clone(), s.secrets().tls_cert.clone()))
    }

    /// The host broke its host policy: recorded, then every VM on it is told (and, enforced,
    /// becomes violated: no authorization, an event for its tenant).
    fn on_host_violation(&self, f: crate::monitor::Finding, enforce: bool) {
        eprintln!(
            "welesd: HOST VIOLATION: {} at entry {} ({}): {}{}",
            f.reason,
            f.index,
            f.path,
            f.detail,
            if enforce {
                "; every VM on this host is now violated"
            } else {
                " (host policy in audit mode: reported only)"
            }
        );
        self.log(
            "host_violation",
            None,
            None,
            serde_json::json!({ "finding": f, "enforced": enforce }),
        );
        // Held while every VM is told: a VM started meanwhile either is among them or reads
        // the finding after (start_vm), and the host's state reads "violated" only once all
        // VMs are.
        let mut recorded = self
            .host_violation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *recorded = Some((f.clone(), enforce));
        let vms: Vec<Arc<Vm>> = self
            .running
            .lock()
            .map(|r| r.values().map(|x| x.vm.clone()).collect())
            .unwrap_or_default();
        for vm in vms {
            vm.on_host_violation(f.clone(), enforce);
        }
        drop(recorded);
    }

    /// The host's state for operators: `None` without host attestation.
    pub fn host_state(&self) -> Option<String> {
        self.host.as_ref()?;
        let v = self.host_violation.lock().ok().and_then(|h| h.clone());
        Some(match v {
            None if self.cfg.host.policy.is_some() => {
                "watched: complies with the host policy".into()
            }
            None => "attested (no host policy: the tenant judges the evidence)".into(),
            Some((f, _)) => format!("violated: {} at entry {} ({})", f.reason, f.index, f.path),
        })
    }

    /// The host TPM's keys (`GET /v1/host`), when the host is attested.
    pub fn host_keys(&self) -> Option<weles_proto::api::HostKeys> {
        self.host.as_ref().map(|h| h.keys().clone())
    }

    /// Evidence for a tenant's nonce: the TEE report binds the nonce, M, the TLS key and (with
    /// host attestation) the host AK; the host TPM's quote binds the nonce and M.
    pub fn evidence(
        &self,
        nonce: &str,
        credential: Option<&weles_proto::api::Credential>,
    ) -> Result<Evidence, ManagerError> {
        let raw = hex::decode(nonce)
            .ok()
            .filter(|n| (16..=64).contains(&n.len()))
            .ok_or_else(|| ManagerError::Invalid("nonce: 16–64 bytes, hex".into()))?;
        let nonce = hex::encode(raw);
        let (key_pem, cert) = self.with_store(|s| {
            (
                s.secrets().manager_key.clone(),
                s.secrets().tls_cert.clone(),
            )
        });
        let key = crate::identity::load_ssh_key(&key_pem).map_err(ManagerError::Internal)?;
        let manager_key = key
            .public_key()
            .to_openssh()
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        let spki =
            hex::encode(crate::identity::spki_sha256(&cert).map_err(ManagerError::Internal)?);
        let host = match &self.host {
            Some(h) => {
                let credential = match credential {
                    Some(c) => Some((
                        hex::decode(&c.blob)
                            .map_err(|_| ManagerError::Invalid("credential.blob: hex".into()))?,
                        hex::decode(&c.secret)
                            .map_err(|_| ManagerError::Invalid("credential.secret: hex".into()))?,
                    )),
                    None => None,
                };
                let qualifying = weles_proto::api::host_qualifying_data(&nonce, &manager_key);
                let ev = h
                    .evidence(
                        &qualifying,
                        credential
                            .as_ref()
                            .map(|(b, s)| (b.as_slice(), s.as_slice())),
                    )
                    .map_err(|e| ManagerError::Internal(e.to_string()))?;
                Some(ev)
            }
            None => None,
        };
        let ak_hash = self
            .host
            .as_ref()
            .map(|h| weles_proto::api::ak_sha256(&h.ak_public()));
        let report_data =
            weles_proto::api::report_data(&nonce, &manager_key, &spki, ak_hash.as_deref());
        let mut rd = [0u8; 64];
        hex::decode_to_slice(&report_data, &mut rd)
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        let report = self
            .tee
            .report(&rd)
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        let signature = crate::identity::sshsig(
            &key,
            weles_proto::api::EVIDENCE_NAMESPACE,
            report_data.as_bytes(),
        )
        .map_err(ManagerError::Internal)?;
        Ok(Evidence {
            tee: self.tee.kind().to_owned(),
            nonce,
            manager_key,
            tls_spki_sha256: spki,
            report_data,
            report,
            signature,
            manager_version: env!("CARGO_PKG_VERSION").to_owned(),
            host,
        })
    }

    /// A tenant's registered SSH public key.
    pub fn tenant_key(&self, tenant: &str) -> Option<ssh_key::PublicKey> {
        self.with_store(|s| {
            s.registry()
                .tenants
                .get(tenant)
                .and_then(|t| ssh_key::PublicKey::from_openssh(&t.ssh_key).ok())
        })
    }

    /// The manager's authority key A.
    fn authority(&self) -> anyhow::Result<weles_tpm::policy::AuthorityKey> {
        let key = self
            .with_store(|s| p256::ecdsa::SigningKey::from_slice(s.secrets().authority_key.as_ref()))
            .map_err(|e| anyhow::anyhow!("authority key: {e}"))?;
        Ok(weles_tpm::policy::AuthorityKey::new(key))
    }

    /// What VM `name` (of `tenant`)'s host key must be, where it lives, who certifies it.
    fn signing_for(&self, name: &str, tenant: &str) -> anyhow::Result<crate::vm::Signing> {
        let a = self.authority()?;
        let policy = a.host_key_policy(name);
        Ok(crate::vm::Signing {
            setup: weles_proto::guest::SigningSetup {
                vm: name.to_owned(),
                authority: hex::encode(a.public().marshal()),
                policy: hex::encode(policy),
                handle: HOST_KEY_HANDLE,
            },
            policy,
            authority: std::sync::Arc::new(a),
            ca: std::sync::Arc::new(self.tenant_ca_key(tenant)?),
            manager: self.manager_fingerprint(),
        })
    }

    fn tenant_ca_key(&self, tenant: &str) -> anyhow::Result<ssh_key::PrivateKey> {
        self.with_store(|s| {
            s.secrets()
                .tenant_cas
                .get(tenant)
                .map(|pem| crate::identity::load_ssh_key(pem))
        })
        .ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no SSH CA"))?
        .map_err(|e| anyhow::anyhow!(e))
    }

    fn manager_fingerprint(&self) -> String {
        ssh_key::PublicKey::from_openssh(&self.manager_public_key())
            .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
            .unwrap_or_default()
    }

    /// Adds a host key to the tenant's revocation list.
    pub fn revoke_host_key(&self, tenant: &str, key: &str) {
        let r = self.with_store(|s| {
            s.update(|r: &mut Registry| {
                let list = r.revoked_host_keys.entry(tenant.to_owned()).or_default();
                if !list.iter().any(|k| k == key) {
                    list.push(key.to_owned());
                    r.krl_version += 1;
                }
                Ok::<(), ManagerError>(())
            })
        });
        match r {
            Ok(()) => self.log(
                "host_key_revoked",
                None,
                Some(tenant),
                serde_json::json!({ "key": key }),
            ),
            Err(e) => eprintln!("welesd: cannot revoke a host key of {tenant}: {e}"),
        }
    }

    /// The tenant's KRL (PROTOCOL.krl) of revoked host keys.
    pub fn tenant_krl(&self, tenant: &str) -> Vec<u8> {
        let (keys, version) = self.with_store(|s| {
            (
                s.registry()
                    .revoked_host_keys
                    .get(tenant)
                    .cloned()
                    .unwrap_or_default(),
                s.registry().krl_version,
            )
        });
        crate::krl::from_openssh(
            &keys,
            version,
            now_ms() / 1000,
            &format!("weles: revoked host keys of {tenant}"),
        )
    }

    /// The tenant's audit key, hex: it opens the tenant's records in the audit log.
    pub fn tenant_audit_key(
        &self,
        tenant: &str,
    ) -> Result<zeroize::Zeroizing<String>, ManagerError> {
        self.with_store(|s| {
            s.secrets()
                .tenant_audit_keys
                .get(tenant)
                .map(|k| zeroize::Zeroizing::new(hex::encode(k.as_ref())))
                .ok_or_else(|| ManagerError::UnknownTenant(tenant.to_owned()))
        })
    }

    /// The tenant's SSH CA public key (OpenSSH).
    pub fn tenant_ca(&self, tenant: &str) -> Result<String, ManagerError> {
        self.with_store(|s| {
            let pem = s
                .secrets()
                .tenant_cas
                .get(tenant)
                .ok_or_else(|| ManagerError::UnknownTenant(tenant.to_owned()))?;
            let key = crate::identity::load_ssh_key(pem).map_err(ManagerError::Internal)?;
            key.public_key()
                .to_openssh()
                .map_err(|e| ManagerError::Internal(e.to_string()))
        })
    }

    /// The VM `name` if `tenant` owns it; another tenant's VM is as unknown as a missing one.
    fn owned(&self, tenant: &str, name: &str) -> Result<VmRecord, ManagerError> {
        self.with_store(|s| s.registry().vms.get(name).cloned())
            .filter(|r| r.tenant == tenant)
            .ok_or_else(|| ManagerError::UnknownVm(format!("{name} (among tenant {tenant}'s VMs)")))
    }

    /// Installs a signed policy: the tenant's own VM, a valid signature by the tenant's key, a
    /// policy that loads, a version above the current one. Sealed before it takes effect;
    /// refused requests change nothing.
    pub fn upload_policy(
        &self,
        tenant: &str,
        name: &str,
        upload: &PolicyUpload,
    ) -> Result<u64, ManagerError> {
        self.owned(tenant, name)?;
        let key = self
            .tenant_key(tenant)
            .ok_or_else(|| ManagerError::UnknownTenant(tenant.to_owned()))?;
        weles_policy::signing::verify(&key, upload.policy.as_bytes(), upload.signature.as_bytes())
            .map_err(|e| ManagerError::BadSignature(e.to_string()))?;
        let policy = Policy::load(upload.policy.as_bytes(), "uploaded policy")
            .map_err(|e| ManagerError::InvalidPolicy(e.to_string()))?;
        let version = policy.version;
        self.with_store(|s| {
            s.update(|r: &mut Registry| {
                let rec = r
                    .vms
                    .get_mut(name)
                    .ok_or_else(|| ManagerError::UnknownVm(name.to_owned()))?;
                if let Some(cur) = &rec.policy
                    && version <= cur.version
                {
                    return Err(ManagerError::StaleVersion(format!(
                        "policy version {version} is not newer than the current version {}",
                        cur.version
                    )));
                }
                rec.policy = Some(crate::store::StoredPolicy {
                    version,
                    policy: upload.policy.clone(),
                    signature: upload.signature.clone(),
                });
                Ok(())
            })
        })?;
        self.log(
            "policy",
            Some(name),
            Some(tenant),
            serde_json::json!({
                "version": version,
                "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(upload.policy.as_bytes())),
            }),
        );
        if let Some(vm) = self.running_vm(name) {
            vm.set_policy(Arc::new(policy));
        }
        Ok(version)
    }

    /// Records an operation in the audit log (a failure to record is reported, not fatal: the
    /// operation itself is already sealed in the store).
    fn log(&self, kind: &str, vm: Option<&str>, tenant: Option<&str>, event: serde_json::Value) {
        if let Err(e) = self.audit.append(kind, vm, tenant, event, None) {
            eprintln!("welesd: cannot record {kind}: {e}");
        }
    }

    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// A VM's notices after `after`, from the audit log, as the event stream shows them.
    pub fn events_history(
        &self,
        tenant: &str,
        vm: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, ManagerError> {
        let records = self
            .audit
            .read(after, tenant, Some(vm), usize::MAX)
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        Ok(records
            .into_iter()
            .filter(|r| r.kind == "vm_notice")
            .take(limit)
            .map(event_json)
            .collect())
    }

    /// A tenant's VM notices after `after` (all its VMs), from the audit log.
    pub fn tenant_events_after(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
    ) -> Vec<serde_json::Value> {
        self.audit
            .read(after, tenant, None, usize::MAX)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.kind == "vm_notice")
            .take(limit)
            .map(event_json)
            .collect()
    }

    /// Sets a tenant's webhook; it receives the events from now on.
    pub fn set_webhook(
        self: &Arc<Self>,
        tenant: &str,
        url: &str,
        secret: &str,
        ca: Option<&str>,
    ) -> Result<DeliveryState, ManagerError> {
        let target = crate::webhook::parse_url(url).map_err(ManagerError::Invalid)?;
        crate::webhook::check_secret(secret).map_err(ManagerError::Invalid)?;
        match (target.tls, ca) {
            (true, Some(pem)) => {
                crate::webhook::roots(Some(pem)).map_err(ManagerError::Invalid)?;
            }
            (false, Some(_)) => {
                return Err(ManagerError::Invalid(format!(
                    "{url}: a CA is for https:// receivers"
                )));
            }
            _ => {}
        }
        let hook = Webhook {
            url: url.to_owned(),
            secret: secret.to_owned(),
            delivered: self.audit.last_seq(),
            ca: ca.map(str::to_owned),
        };
        self.with_store(|s| {
            s.update(|r: &mut Registry| {
                let t = r
                    .tenants
                    .get_mut(tenant)
                    .ok_or_else(|| ManagerError::UnknownTenant(tenant.to_owned()))?;
                t.webhook = Some(hook.clone());
                Ok::<(), ManagerError>(())
            })
        })?;
        self.log(
            "webhook_set",
            None,
            Some(tenant),
            serde_json::json!({ "url": url }),
        );
        Ok(self.start_webhook(tenant, hook))
    }

    pub fn delete_webhook(&self, tenant: &str) -> Result<(), ManagerError> {
        self.with_store(|s| {
            s.update(|r: &mut Registry| {
                if let Some(t) = r.tenants.get_mut(tenant) {
                    t.webhook = None;
                }
                Ok::<(), ManagerError>(())
            })
        })?;
        if let Some(d) = self.webhooks.lock().ok().and_then(|mut w| w.remove(tenant)) {
            d.stop();
        }
        self.log("webhook_deleted", None, Some(tenant), serde_json::json!({}));
        Ok(())
    }

    pub fn webhook_state(&self, tenant: &str) -> Option<DeliveryState> {
        self.webhooks.lock().ok().and_then(|w| {
            w.get(tenant)
                .and_then(|d| d.state.lock().ok().map(|s| s.clone()))
        })
    }

    /// Seals a delivery cursor (called by the deliverer after each accepted event).
    pub fn webhook_delivered(&self, tenant: &str, seq: u64) {
        let r = self.with_store(|s| {
            s.update(|r: &mut Registry| {
                if let Some(w) = r.tenants.get_mut(tenant).and_then(|t| t.webhook.as_mut()) {
                    w.delivered = w.delivered.max(seq);
                }
                Ok::<(), ManagerError>(())
            })
        });
        if let Err(e) = r {
            eprintln!("welesd: tenant {tenant}: cannot record a webhook delivery: {e}");
        }
    }

    fn start_webhook(self: &Arc<Self>, tenant: &str, hook: Webhook) -> DeliveryState {
        let d = Deliverer::start(Arc::downgrade(self), tenant.to_owned(), hook);
        let state = d.state.lock().map(|s| s.clone()).unwrap_or_default();
        let old = self
            .webhooks
            .lock()
            .ok()
            .and_then(|mut w| w.insert(tenant.to_owned(), d));
        if let Some(old) = old {
            old.stop();
        }
        state
    }

    fn running_vm(&self, name: &str) -> Option<Arc<Vm>> {
        self.running
            .lock()
            .ok()
            .and_then(|r| r.get(name).map(|x| x.vm.clone()))
    }

    /// A VM's status as its tenant sees it.
    pub fn tenant_vm_status(&self, tenant: &str, name: &str) -> Result<VmStatus, ManagerError> {
        self.owned(tenant, name)?;
        let vm = self
            .running_vm(name)
            .ok_or_else(|| ManagerError::Internal(format!("VM {name} is not running")))?;
        let st = vm
            .status()
            .ok_or_else(|| ManagerError::Internal("lock".into()))?;
        let paths = VmPaths::new(&self.cfg.state_dir, &self.cfg.run_dir, name);
        let ek = std::fs::read(paths.tpm_state.join("ek-ecc.der"))
            .ok()
            .map(hex::encode);
        Ok(VmStatus {
            name: name.to_owned(),
            state: st.state.as_str().to_owned(),
            reason: st.reason,
            policy_version: st.policy_version,
            entries: st.entries,
            extends: st.extends,
            boots: st.boots,
            last_event: Some(vm.last_event()).filter(|n| *n > 0),
            violation: st.violation.and_then(|v| serde_json::to_value(v).ok()),
            ek_certificate: ek,
            host_key: vm.host_key().map(|h| h.openssh),
            host_certificate: vm.host_certificate().map(|c| c.openssh),
            hostnames: vm.hostnames(),
        })
    }

    /// The tenant's VMs.
    pub fn tenant_vms(&self, tenant: &str) -> Vec<VmStatus> {
        let names: Vec<String> = self.with_store(|s| {
            s.registry()
                .vms
                .values()
                .filter(|v| v.tenant == tenant)
                .map(|v| v.name.clone())
                .collect()
        });
        names
            .iter()
            .filter_map(|n| self.tenant_vm_status(tenant, n).ok())
            .collect()
    }

    /// Checks that `tenant` owns `name` (for event reads).
    pub fn check_owner(&self, tenant: &str, name: &str) -> Result<(), ManagerError> {
        self.owned(tenant, name).map(|_| ())
    }

    pub fn register_tenant(&self, name: &str, ssh_key: &str) -> Result<TenantInfo, ManagerError> {
        check_name("tenant", name)?;
        let key = ssh_key::PublicKey::from_openssh(ssh_key.trim()).map_err(|e| {
            ManagerError::Invalid(format!(
                "ssh_key is not an OpenSSH public key (\"ssh-ed25519 AAAA…\"): {e}"
            ))
        })?;
        let tenant = Tenant {
            name: name.to_owned(),
            ssh_key: key
                .to_openssh()
                .map_err(|e| ManagerError::Invalid(e.to_string()))?,
            created_ms: now_ms(),
            webhook: None,
        };
        let ca = crate::identity::new_ssh_key(&format!("weles SSH CA of tenant {name}"))
            .map_err(ManagerError::Internal)?;
        let mut audit_key = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(audit_key.as_mut())
            .map_err(|e| ManagerError::Internal(format!("randomness: {e}")))?;
        let secrets = crate::store::TenantSecrets {
            ca,
            audit_key: audit_key.clone(),
        };
        self.with_store(|s| {
            if s.registry().tenants.contains_key(name) {
                return Err(ManagerError::Exists(format!("tenant {name:?}")));
            }
            s.update_with_tenant_secrets(name, Some(secrets), |r: &mut Registry| {
                if r.tenants.contains_key(name) {
                    return Err(ManagerError::Exists(format!("tenant {name:?}")));
                }
                r.tenants.insert(name.to_owned(), tenant.clone());
                Ok(())
            })
        })?;
        self.audit.set_tenant_key(name, audit_key);
        let info = tenant_info(&tenant);
        self.log(
            "tenant_registered",
            None,
            Some(name),
            serde_json::json!({ "ssh_key_fingerprint": info.ssh_key_fingerprint }),
        );
        Ok(info)
    }

    pub fn create_vm(&self, tenant: &str, name: &str) -> Result<VmInfo, ManagerError> {
        check_name("VM", name)?;
        self.with_store(|s| {
            let r = s.registry();
            if !r.tenants.contains_key(tenant) {
                return Err(ManagerError::UnknownTenant(tenant.to_owned()));
            }
            if r.vms.contains_key(name) {
                return Err(ManagerError::Exists(format!("VM {name:?}")));
            }
            Ok(())
        })?;
        let paths = VmPaths::new(&self.cfg.state_dir, &self.cfg.run_dir, name);
        if paths.tpm_state.exists() {
            return Err(ManagerError::Exists(format!(
                "vTPM state {} (left from an earlier VM of that name; remove it to reuse the name)",
                paths.tpm_state.display()
            )));
        }
        paths
            .create_dirs()
            .map_err(|e| ManagerError::Internal(format!("creating the VM's directories: {e}")))?;
        let binary = self.cfg.vtpm_binary();
        let made = self.with_store(|s| {
            supervisor::manufacture(&binary, &paths, name, &self.cfg.vtpm.pcr_banks, s.ek_ca())
        });
        if let Err(e) = made {
            remove_vm_dirs(&paths);
            return Err(ManagerError::Internal(e));
        }
        let rec = VmRecord {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            created_ms: now_ms(),
            policy: None,
        };
        let stored = self.with_store(|s| {
            s.update(|r: &mut Registry| {
                r.vms.insert(name.to_owned(), rec.clone());
                Ok::<(), ManagerError>(())
            })
        });
        if let Err(e) = stored {
            remove_vm_dirs(&paths);
            return Err(e);
        }
        self.log(
            "vm_created",
            Some(name),
            Some(tenant),
            serde_json::json!({}),
        );
        self.start_vm(&rec, None)
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        self.vm_info(name)
    }

    pub fn delete_vm(&self, name: &str) -> Result<(), ManagerError> {
        self.with_store(|s| {
            s.update(|r: &mut Registry| {
                r.vms
                    .remove(name)
                    .map(|_| ())
                    .ok_or_else(|| ManagerError::UnknownVm(name.to_owned()))
            })
        })?;
        self.log("vm_deleted", Some(name), None, serde_json::json!({}));
        let running = self.running.lock().ok().and_then(|mut r| r.remove(name));
        if let Some(key) = running.as_ref().and_then(|r| r.vm.host_key()) {
            let tenant = running
                .as_ref()
                .map(|r| r.vm.tenant.clone())
                .unwrap_or_default();
            self.revoke_host_key(&tenant, &key.openssh);
        }
        let paths = VmPaths::new(&self.cfg.state_dir, &self.cfg.run_dir, name);
        if let Some(r) = running {
            r.stop(true);
        }
        remove_vm_dirs(&paths);
        Ok(())
    }

    pub fn list_vms(&self) -> Vec<VmInfo> {
        let names: Vec<String> = self.with_store(|s| s.registry().vms.keys().cloned().collect());
        names.iter().filter_map(|n| self.vm_info(n).ok()).collect()
    }

    pub fn vm_info(&self, name: &str) -> Result<VmInfo, ManagerError> {
        let rec = self
            .with_store(|s| s.registry().vms.get(name).cloned())
            .ok_or_else(|| ManagerError::UnknownVm(name.to_owned()))?;
        let running = self
            .running
            .lock()
            .map_err(|_| ManagerError::Internal("lock".into()))?;
        let r = running
            .get(name)
            .ok_or_else(|| ManagerError::Internal(format!("VM {name:?} is not running")))?;
        let st =
            r.vm.status()
                .ok_or_else(|| ManagerError::Internal("lock".into()))?;
        Ok(VmInfo {
            name: rec.name.clone(),
            tenant: rec.tenant.clone(),
            state: st.state.as_str().into(),
            reason: st.reason,
            policy_version: st.policy_version,
            entries: st.entries,
            extends: st.extends,
            boots: st.boots,
            vtpm_pid: r.vtpm.pid(),
            vtpm_restarts: r.vtpm.restarts(),
            vtpm_socket: r.paths.vtpm_socket.display().to_string(),
            guest_socket: r.paths.guest_socket.display().to_string(),
            qemu_args: r.paths.qemu_args(),
            created_ms: rec.created_ms,
        })
    }

    /// Starts monitoring a registered VM: its vTPM, the event link, the guest channel. With a
    /// checkpoint from the audit log, the monitor goes on from there.
    fn start_vm(
        &self,
        rec: &VmRecord,
        checkpoint: Option<&(u64, serde_json::Value)>,
    ) -> anyhow::Result<()> {
        let paths = VmPaths::new(&self.cfg.state_dir, &self.cfg.run_dir, &rec.name);
        paths.create_dirs()?;
        let monitor = match checkpoint.map(|(_, cp)| cp) {
            None => Monitor::new(),
            Some(cp) => {
                let cp: Checkpoint = serde_json::from_value(cp.clone()).map_err(|e| {
                    anyhow::anyhow!("VM {}: checkpoint in the audit log: {e}", rec.name)
                })?;
                Monitor::restore(&cp, Instant::now())
                    .map_err(|e| anyhow::anyhow!("VM {}: {e}", rec.name))?
            }
        };
        let vm = Vm::with_monitor(
            &rec.name,
            &rec.tenant,
            monitor,
            self.notices.clone(),
            Some(self.audit.clone()),
        );
        if let Some((seq, _)) = checkpoint {
            vm.note_last_event(*seq);
        }
        vm.enable_signing(self.signing_for(&rec.name, &rec.tenant)?);
        let (me, tenant) = (self.me.clone(), rec.tenant.clone());
        vm.set_revoker(Box::new(move |key| {
            if let Some(m) = me.upgrade() {
                m.revoke_host_key(&tenant, key);
            }
        }));
        if let Some(p) = &rec.policy {
            let policy = Policy::load(p.policy.as_bytes(), &format!("policy of VM {}", rec.name))?;
            vm.set_policy(Arc::new(policy));
        }
        let guest_link = GuestLink::bind(vm.clone(), &paths.guest_socket)?;
        let vtpm_link = VtpmLink::spawn(vm.clone(), paths.events_socket.clone());
        let vtpm = VtpmProcess::start(
            vm.clone(),
            self.cfg.vtpm_binary(),
            paths.clone(),
            self.cfg.vtpm.data_socket,
        );
        let running = Running {
            vm,
            paths,
            vtpm,
            vtpm_link,
            guest_link,
        };
        let vm = running.vm.clone();
        if let Ok(mut r) = self.running.lock() {
            r.insert(rec.name.clone(), running);
        }
        // After the insert: either the host watcher's round over `running` sees this VM, or
        // its finding is already recorded here (it holds the lock while it tells every VM).
        if let Some((f, enforce)) = self.host_violation.lock().ok().and_then(|h| h.clone()) {
            vm.on_host_violation(f, enforce);
        }
        Ok(())
    }
}

/// An audit record of a VM notice as tenants see it: the notice with `seq`, `time_ms`, `vm`.
fn event_json(r: crate::audit::Opened) -> serde_json::Value {
    let mut e = r.body.event;
    if let Some(o) = e.as_object_mut() {
        o.insert("seq".into(), r.seq.into());
        o.insert("time_ms".into(), r.time_ms.into());
        o.insert("vm".into(), r.body.vm.unwrap_or_default().into());
    }
    e
}

fn tenant_info(t: &Tenant) -> TenantInfo {
    let fingerprint = ssh_key::PublicKey::from_openssh(&t.ssh_key)
        .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
        .unwrap_or_default();
    TenantInfo {
        name: t.name.clone(),
        ssh_key_fingerprint: fingerprint,
        created_ms: t.created_ms,
    }
}

/// Names become directory names and appear in certificates: `[a-z0-9][a-z0-9-]{0,62}`.
fn check_name(what: &str, name: &str) -> Result<(), ManagerError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ManagerError::Invalid(format!(
            "{what} name {name:?}: use 1–63 of a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

fn remove_vm_dirs(paths: &VmPaths) {
    for d in [paths.tpm_state.parent(), paths.vtpm_socket.parent()]
        .into_iter()
        .flatten()
    {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
