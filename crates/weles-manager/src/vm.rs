//! One supervised VM: its monitor, the connection to its guest, and where its notices go.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use weles_policy::Policy;
use weles_proto::guest::{self, Hello, ManagerMessage};
use weles_proto::vtpm_events::Record;

use crate::vtpm_link::Requester;

use crate::audit::AuditLog;
use crate::monitor::{Monitor, Notice, Status, Step};
use crate::notices::NoticeHub;
pub use crate::signing::{HostCertificate, HostKeyInfo, Revoker, Signing};

pub struct Vm {
    pub id: String,
    pub tenant: String,
    pub(crate) monitor: Mutex<Monitor>,
    /// The current guest connection's writing half, for `Want`s from any input.
    guest_out: Mutex<Option<UnixStream>>,
    notices: Arc<NoticeHub>,
    /// Where notices are recorded (with the monitor's checkpoint) before anyone sees them.
    pub(crate) audit: Option<Arc<AuditLog>>,
    /// The number of the VM's newest notice (0: none).
    last_event: std::sync::atomic::AtomicU64,
    /// Management requests to the vTPM (answered on its event socket).
    pub(crate) requester: Arc<Requester>,
    /// What the guest needs to make the host key, when the manager authorizes signing.
    pub(crate) signing: Mutex<Option<Signing>>,
    /// The host key the manager read from the vTPM and accepted.
    pub(crate) host_key: Mutex<Option<HostKeyInfo>>,
    /// Its current certificate.
    pub(crate) host_cert: Mutex<Option<HostCertificate>>,
    /// Told of a host key the VM no longer uses (replaced by a new one), to revoke it.
    pub(crate) revoker: Mutex<Option<Revoker>>,
}

impl Vm {
    /// A VM without an audit log (tests of the monitor's wiring).
    pub fn new(id: &str, notices: Arc<NoticeHub>) -> Arc<Vm> {
        Self::with_monitor(id, "", Monitor::new(), notices, None)
    }

    pub fn with_monitor(
        id: &str,
        tenant: &str,
        monitor: Monitor,
        notices: Arc<NoticeHub>,
        audit: Option<Arc<AuditLog>>,
    ) -> Arc<Vm> {
        Arc::new(Vm {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            monitor: Mutex::new(monitor),
            guest_out: Mutex::new(None),
            notices,
            audit,
            last_event: std::sync::atomic::AtomicU64::new(0),
            requester: Arc::new(Requester::default()),
            signing: Mutex::new(None),
            host_key: Mutex::new(None),
            host_cert: Mutex::new(None),
            revoker: Mutex::new(None),
        })
    }

    pub fn requester(&self) -> Arc<Requester> {
        self.requester.clone()
    }

    pub fn last_event(&self) -> u64 {
        self.last_event.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn note_last_event(&self, seq: u64) {
        self.last_event
            .fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn status(&self) -> Option<Status> {
        self.monitor.lock().ok().map(|m| m.status())
    }

    /// Runs `f` on the monitor and carries out what it asks for. The monitor lock is held while
    /// notices are published, so they appear in the order the monitor made them.
    fn drive(&self, f: impl FnOnce(&mut Monitor) -> Step) {
        let Ok(mut m) = self.monitor.lock() else {
            return;
        };
        let step = f(&mut m);
        if !step.notices.is_empty() {
            let checkpoint = serde_json::to_value(m.checkpoint()).ok();
            let last = step.notices.len() - 1;
            for (i, n) in step.notices.into_iter().enumerate() {
                self.record(n, if i == last { checkpoint.clone() } else { None });
            }
        }
        drop(m);
        if let Some(offset) = step.want {
            self.send(&ManagerMessage::Want { offset });
        }
    }

    /// Records a notice in the audit log, then publishes it under the record's number. Without
    /// an audit log (tests) notices are numbered in memory.
    fn record(&self, n: Notice, checkpoint: Option<serde_json::Value>) {
        let Some(audit) = &self.audit else {
            let seq = self.notices.last_seq() + 1;
            self.note_last_event(seq);
            self.notices.publish(seq, &self.id, n);
            return;
        };
        let event = serde_json::to_value(&n).unwrap_or_default();
        let tenant = Some(self.tenant.as_str()).filter(|t| !t.is_empty());
        let hub = &self.notices;
        let result = audit.append_then(
            "vm_notice",
            Some(&self.id),
            tenant,
            event,
            checkpoint,
            |seq| {
                self.note_last_event(seq);
                hub.publish(seq, &self.id, n);
            },
        );
        if let Err(e) = result {
            // The VM's state stands (authorizations follow it); only the notice is missing.
            eprintln!("welesd: vm {}: cannot record a notice: {e}", self.id);
        }
    }

    pub fn set_policy(&self, policy: Arc<Policy>) {
        self.drive(|m| m.set_policy(policy, Instant::now()));
    }

    pub fn on_vtpm(&self, record: &Record) {
        self.drive(|m| m.on_vtpm(record, Instant::now()));
    }

    pub fn on_vtpm_restarted(&self) {
        self.drive(|m| m.on_vtpm_restarted());
    }

    pub fn on_host_violation(&self, f: crate::monitor::Finding, enforce: bool) {
        self.drive(|m| m.on_host_violation(f, enforce, Instant::now()));
    }

    pub fn on_vtpm_lost(&self) {
        self.drive(|m| m.on_vtpm_lost(Instant::now()));
    }

    pub fn on_hello(&self, hello: &Hello) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.drive(|m| m.on_hello(hello, ms, Instant::now()));
        let setup = self
            .signing
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.setup.clone()));
        if let Some(setup) = setup {
            self.send(&ManagerMessage::SigningSetup(setup));
        }
    }

    pub fn on_log(&self, offset: u64, bytes: &[u8]) {
        self.drive(|m| m.on_log(offset, bytes, Instant::now()));
    }

    pub fn on_tick(&self, now: Instant) {
        self.renew_certificate();
        let due = self
            .monitor
            .lock()
            .ok()
            .and_then(|m| m.deadline())
            .is_some_and(|d| d <= now);
        if due {
            self.drive(|m| m.on_tick(now));
        }
    }

    /// The sequence number to resume the vTPM's event stream after.
    pub fn vtpm_seq(&self) -> u64 {
        self.monitor.lock().map_or(0, |m| m.vtpm_seq())
    }

    pub(crate) fn attach_guest(&self, out: UnixStream) {
        if let Ok(mut g) = self.guest_out.lock()
            && let Some(old) = g.replace(out)
        {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
    }

    pub(crate) fn detach_guest(&self) {
        if let Ok(mut g) = self.guest_out.lock() {
            *g = None;
        }
    }

    pub(crate) fn send(&self, msg: &ManagerMessage) {
        let Ok(mut g) = self.guest_out.lock() else {
            return;
        };
        if let Some(s) = g.as_mut()
            && guest::write_manager(s, msg).is_err()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
            *g = None;
        }
    }
}
