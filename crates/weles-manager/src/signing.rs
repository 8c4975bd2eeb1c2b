//! The signing gate on the manager's side (`docs/signing-gate.md`): a VM's host key read from
//! its vTPM and checked, authorizations for single signatures while the VM complies, and host
//! certificates from the tenant's SSH CA.

use std::sync::Arc;
use std::time::Instant;

use weles_proto::guest::{
    Authorization, AuthorizeRequest, HostKeyReport, HostKeyResult, ManagerMessage, SigningSetup,
};
use weles_proto::vtpm_events::{Message, Request};

use crate::vm::Vm;

/// Receives host keys to revoke (OpenSSH lines).
pub type Revoker = Box<dyn Fn(&str) + Send + Sync>;

/// The host key's expected shape for this VM, and the key that authorizes its use.
#[derive(Clone)]
pub struct Signing {
    pub setup: SigningSetup,
    pub policy: [u8; 32],
    pub authority: Arc<weles_tpm::policy::AuthorityKey>,
    /// The tenant's SSH CA, which certifies the host key.
    pub ca: Arc<ssh_key::PrivateKey>,
    /// The manager key's fingerprint, stated in certificates.
    pub manager: String,
}

/// A host certificate handed out.
#[derive(Clone, Debug)]
pub struct HostCertificate {
    /// The OpenSSH certificate line.
    pub openssh: String,
    pub issued_at: u64,
    pub valid_after: u64,
    pub valid_before: u64,
}

/// How long (seconds after the session's nonce) an authorization is good for.
pub const AUTHORIZATION_SECONDS: i32 = 10;
/// How long a signing request waits for a VM that is `pending` to become compliant.
const PENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An accepted host key.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostKeyInfo {
    pub handle: u32,
    /// The key's TPM name (nameAlg ‖ digest), which a cpHash binds.
    #[serde(skip)]
    pub name: Vec<u8>,
    /// `ecdsa-sha2-nistp256 AAAA…`.
    pub openssh: String,
    pub fingerprint: String,
}

impl Vm {
    pub fn set_revoker(&self, r: Revoker) {
        if let Ok(mut g) = self.revoker.lock() {
            *g = Some(r);
        }
    }

    pub fn host_certificate(&self) -> Option<HostCertificate> {
        self.host_cert.lock().ok().and_then(|c| c.clone())
    }

    /// The host names the policy in force gives this VM.
    pub fn hostnames(&self) -> Vec<String> {
        self.monitor
            .lock()
            .ok()
            .and_then(|m| m.policy().map(|p| p.hostnames.clone()))
            .unwrap_or_default()
    }

    /// Certifies the accepted host key with the tenant's SSH CA — only while the VM is
    /// compliant — for the policy's host names and validity, states WELES facts in extensions
    /// only (stock clients refuse unknown critical options), records it, and sends it to the
    /// guest for sshd's `HostCertificate`.
    pub fn issue_certificate(&self) -> Result<HostCertificate, String> {
        let (signing, key) = self.signing_and_key()?;
        let (state, policy) = self
            .monitor
            .lock()
            .map(|m| (m.state(), m.policy()))
            .map_err(|_| "monitor unavailable")?;
        if state != crate::monitor::VmState::Compliant {
            return Err(format!("the VM is {}", state.as_str()));
        }
        let policy = policy.ok_or("no policy")?;
        if policy.hostnames.is_empty() {
            return Err("the policy names no host names ([ssh] hostnames)".into());
        }
        let public = ssh_key::PublicKey::from_openssh(&key.openssh).map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        // A minute of slack for clocks a little behind.
        let (after, before) = (
            now.saturating_sub(60),
            now + policy.certificate_validity.as_secs(),
        );
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let serial = u64::from_be_bytes([
            nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7],
        ]);
        let err = |e: ssh_key::Error| e.to_string();
        let mut b = ssh_key::certificate::Builder::new(
            nonce.to_vec(),
            public.key_data().clone(),
            after,
            before,
        )
        .map_err(err)?;
        b.serial(serial).map_err(err)?;
        b.cert_type(ssh_key::certificate::CertType::Host)
            .map_err(err)?;
        b.key_id(format!("weles:{}/{}", self.tenant, self.id))
            .map_err(err)?;
        for h in &policy.hostnames {
            b.valid_principal(h.clone()).map_err(err)?;
        }
        b.extension("vm@weles", self.id.clone()).map_err(err)?;
        b.extension("policy@weles", policy.version.to_string())
            .map_err(err)?;
        b.extension("manager@weles", signing.manager.clone())
            .map_err(err)?;
        let cert = b.sign(&*signing.ca).map_err(err)?;
        let cert = HostCertificate {
            openssh: cert.to_openssh().map_err(err)?,
            issued_at: now,
            valid_after: after,
            valid_before: before,
        };
        if let Ok(mut c) = self.host_cert.lock() {
            *c = Some(cert.clone());
        }
        if let Some(audit) = &self.audit {
            let tenant = Some(self.tenant.as_str()).filter(|t| !t.is_empty());
            let event = serde_json::json!({
                "serial": serial, "principals": policy.hostnames, "valid_before": before,
                "policy_version": policy.version,
            });
            if let Err(e) = audit.append("host_certificate", Some(&self.id), tenant, event, None) {
                eprintln!("welesd: vm {}: cannot record a certificate: {e}", self.id);
            }
        }
        self.send(&ManagerMessage::HostCertificate {
            certificate: cert.openssh.clone(),
        });
        Ok(cert)
    }

    /// Renews the certificate once half its validity has passed, while the VM complies.
    pub(crate) fn renew_certificate(&self) {
        let Some(cert) = self.host_certificate() else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Half of its lifetime (from issue, not from the back-dated start) has passed.
        let half = cert.valid_before.saturating_sub(cert.issued_at) / 2;
        if now >= cert.issued_at + half.max(1)
            && self
                .status()
                .is_some_and(|s| s.state == crate::monitor::VmState::Compliant)
        {
            let _ = self.issue_certificate();
        }
    }

    /// From now on, each agent that says hello is asked to make the host key.
    pub fn enable_signing(&self, signing: Signing) {
        if let Ok(mut s) = self.signing.lock() {
            *s = Some(signing);
        }
    }

    pub fn host_key(&self) -> Option<HostKeyInfo> {
        self.host_key.lock().ok().and_then(|h| h.clone())
    }

    /// What signing for this VM needs: its setup and its accepted host key.
    fn signing_and_key(&self) -> Result<(Signing, HostKeyInfo), String> {
        let signing = self
            .signing
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or("signing is not set up for this VM")?;
        let key = self
            .host_key()
            .ok_or("no host key has been accepted for this VM")?;
        Ok((signing, key))
    }

    /// The agent reported the host key's handle: read its public area from the vTPM itself,
    /// check it, record the verdict, and tell the agent. Runs on its own thread (the vTPM
    /// answers on the event link, which must not wait for this).
    pub fn on_host_key(self: &Arc<Self>, report: HostKeyReport) {
        let vm = self.clone();
        let _ = std::thread::Builder::new()
            .name(format!("hostkey-{}", self.id))
            .spawn(move || {
                let verdict = match report.handle {
                    None => Err(format!(
                        "the guest could not make it: {}",
                        report.error.as_deref().unwrap_or("no reason given")
                    )),
                    Some(h) => vm.check_host_key(h),
                };
                let (result, event) = match &verdict {
                    Ok(info) => (
                        HostKeyResult {
                            accepted: true,
                            reason: String::new(),
                            fingerprint: Some(info.fingerprint.clone()),
                        },
                        serde_json::json!({ "accepted": true, "handle": info.handle, "key": info.openssh, "fingerprint": info.fingerprint }),
                    ),
                    Err(why) => (
                        HostKeyResult {
                            accepted: false,
                            reason: why.clone(),
                            fingerprint: None,
                        },
                        serde_json::json!({ "accepted": false, "handle": report.handle, "reason": why }),
                    ),
                };
                let accepted = verdict.is_ok();
                let replaced = match (&verdict, vm.host_key()) {
                    (Ok(new), Some(old)) if old.openssh != new.openssh => Some(old.openssh),
                    _ => None,
                };
                if let Ok(mut h) = vm.host_key.lock() {
                    *h = verdict.ok();
                }
                if let (Some(old), Ok(r)) = (replaced, vm.revoker.lock())
                    && let Some(revoke) = r.as_ref()
                {
                    revoke(&old);
                }
                if let Some(audit) = &vm.audit {
                    let tenant = Some(vm.tenant.as_str()).filter(|t| !t.is_empty());
                    if let Err(e) = audit.append("host_key", Some(&vm.id), tenant, event, None) {
                        eprintln!("welesd: vm {}: cannot record the host key verdict: {e}", vm.id);
                    }
                }
                vm.send(&ManagerMessage::HostKeyResult(result));
                if accepted && let Err(e) = vm.issue_certificate() {
                    eprintln!("welesd: vm {}: no host certificate yet: {e}", vm.id);
                }
            });
    }

    /// The guest asks to use the host key once. Granted only for this VM's accepted host key,
    /// only while the VM is compliant after every vTPM event so far (a read over the event
    /// socket is the barrier), only for TPM2_Sign of that digest in that session. Every answer
    /// is recorded in the audit log.
    pub fn on_authorize(self: &Arc<Self>, req: AuthorizeRequest) {
        let vm = self.clone();
        let _ = std::thread::Builder::new()
            .name(format!("authz-{}", self.id))
            .spawn(move || {
                let answer = vm.authorize(&req).unwrap_or_else(|reason| Authorization {
                    id: req.id,
                    granted: false,
                    reason,
                    signature: String::new(),
                    expiration: 0,
                    policy_ref: String::new(),
                    cp_hash: String::new(),
                });
                if let Some(audit) = &vm.audit {
                    let tenant = Some(vm.tenant.as_str()).filter(|t| !t.is_empty());
                    let event = serde_json::json!({
                        "granted": answer.granted,
                        "reason": answer.reason,
                        "digest": req.digest,
                    });
                    if let Err(e) = audit.append("authorization", Some(&vm.id), tenant, event, None)
                    {
                        eprintln!("welesd: vm {}: cannot record an authorization: {e}", vm.id);
                    }
                }
                vm.send(&ManagerMessage::Authorization(answer));
            });
    }

    fn authorize(&self, req: &AuthorizeRequest) -> Result<Authorization, String> {
        let (signing, key) = self.signing_and_key()?;
        if req.handle != key.handle {
            return Err(format!("{:#x} is not this VM's host key", req.handle));
        }
        let nonce = hex::decode(&req.nonce_tpm).map_err(|_| "nonceTPM is not hex")?;
        let digest = hex::decode(&req.digest).map_err(|_| "digest is not hex")?;
        if nonce.len() < 16 || digest.len() != 32 {
            return Err("nonceTPM must be at least 16 bytes and the digest 32".into());
        }
        // Barrier: the answer comes after every event the vTPM recorded before it.
        self.requester.request(
            &Request::ReadPcrs { pcr: 10 },
            std::time::Duration::from_secs(2),
        )?;
        let deadline = Instant::now() + PENDING_WAIT;
        loop {
            let st = self.status().ok_or("monitor unavailable")?;
            match st.state {
                crate::monitor::VmState::Compliant => break,
                crate::monitor::VmState::Pending if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                state => {
                    return Err(format!("the VM is {}: {}", state.as_str(), st.reason));
                }
            }
        }
        let cp = weles_tpm::policy::sign_cp_hash(&key.name, &digest);
        let policy_ref = signing.setup.vm.as_bytes();
        let sig = signing
            .authority
            .authorize(&nonce, AUTHORIZATION_SECONDS, &cp, policy_ref);
        Ok(Authorization {
            id: req.id,
            granted: true,
            reason: String::new(),
            signature: hex::encode(weles_tpm::policy::tpmt_signature(&sig)),
            expiration: AUTHORIZATION_SECONDS,
            policy_ref: hex::encode(policy_ref),
            cp_hash: hex::encode(cp),
        })
    }

    fn check_host_key(&self, handle: u32) -> Result<HostKeyInfo, String> {
        let policy = self
            .signing
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.policy))
            .ok_or("signing is not set up for this VM")?;
        let answer = self.requester.request(
            &Request::ReadPublic { handle },
            std::time::Duration::from_secs(5),
        )?;
        let (public, name) = match answer {
            Message::Public { public, name, .. } => (
                hex::decode(public).map_err(|_| "the vTPM's answer is not hex")?,
                hex::decode(name).map_err(|_| "the vTPM's answer is not hex")?,
            ),
            Message::Error { error } => {
                return Err(format!("the vTPM has no key at {handle:#x}: {error}"));
            }
            other => return Err(format!("unexpected answer from the vTPM: {other:?}")),
        };
        let key = weles_tpm::public::EccPublic::parse(&public)
            .map_err(|e| format!("the key at {handle:#x} is not an ECC P-256 key: {e}"))?;
        weles_tpm::host_key::check(&key, &policy).map_err(|e| e.to_string())?;
        let mut sec1 = vec![0x04];
        sec1.extend_from_slice(&key.x);
        sec1.extend_from_slice(&key.y);
        let ecdsa =
            ssh_key::public::EcdsaPublicKey::from_sec1_bytes(&sec1).map_err(|e| e.to_string())?;
        let ssh = ssh_key::PublicKey::from(ssh_key::public::KeyData::Ecdsa(ecdsa));
        if name != key.name() {
            return Err("the vTPM's name for the key is not its public area's".into());
        }
        Ok(HostKeyInfo {
            handle,
            name,
            openssh: ssh.to_openssh().map_err(|e| e.to_string())?,
            fingerprint: ssh.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        })
    }
}
