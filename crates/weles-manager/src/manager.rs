//! The manager: the store, the running VMs, and the operator requests that change them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weles_policy::Policy;
use weles_proto::operator::{Health, OperatorReply, OperatorRequest, TenantInfo, VmInfo};

use crate::config::Config;
use crate::guest_link::GuestLink;
use crate::notices::NoticeHub;
use crate::store::{Registry, Store, StoreError, Tenant, VmRecord};
use crate::supervisor::{self, VmPaths, VtpmProcess};
use crate::vm::Vm;
use crate::vtpm_link::VtpmLink;

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
}

impl ManagerError {
    pub fn code(&self) -> &'static str {
        match self {
            ManagerError::Invalid(_) => "invalid",
            ManagerError::UnknownTenant(_) => "unknown_tenant",
            ManagerError::UnknownVm(_) => "unknown_vm",
            ManagerError::Exists(_) => "exists",
            ManagerError::Store(_) | ManagerError::Internal(_) => "internal",
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
    cfg: Config,
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
        let mgr = Arc::new(Manager {
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
            mgr.start_vm(&rec)?;
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
        }
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
        };
        self.with_store(|s| {
            s.update(|r: &mut Registry| {
                if r.tenants.contains_key(name) {
                    return Err(ManagerError::Exists(format!("tenant {name:?}")));
                }
                r.tenants.insert(name.to_owned(), tenant.clone());
                Ok(())
            })
        })?;
        Ok(tenant_info(&tenant))
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
        self.start_vm(&rec)
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
        let running = self.running.lock().ok().and_then(|mut r| r.remove(name));
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

    /// Starts monitoring a registered VM: its vTPM, the event link, the guest channel.
    fn start_vm(&self, rec: &VmRecord) -> anyhow::Result<()> {
        let paths = VmPaths::new(&self.cfg.state_dir, &self.cfg.run_dir, &rec.name);
        paths.create_dirs()?;
        let vm = Vm::new(&rec.name, self.notices.clone());
        if let Some(p) = &rec.policy {
            let policy = Policy::load(p.policy.as_bytes(), &format!("policy of VM {}", rec.name))?;
            vm.set_policy(Arc::new(policy));
        }
        let guest_link = GuestLink::bind(vm.clone(), &paths.guest_socket)?;
        let vtpm_link = VtpmLink::spawn(vm.clone(), paths.events_socket.clone());
        let vtpm = VtpmProcess::start(vm.clone(), self.cfg.vtpm_binary(), paths.clone());
        let running = Running {
            vm,
            paths,
            vtpm,
            vtpm_link,
            guest_link,
        };
        if let Ok(mut r) = self.running.lock() {
            r.insert(rec.name.clone(), running);
        }
        Ok(())
    }
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
