//! One supervised VM: its monitor, the connection to its guest, and where its notices go.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use weles_policy::Policy;
use weles_proto::guest::{self, Hello, ManagerMessage};
use weles_proto::vtpm_events::Record;

use crate::monitor::{Monitor, Status, Step};
use crate::notices::NoticeHub;

pub struct Vm {
    pub id: String,
    monitor: Mutex<Monitor>,
    /// The current guest connection's writing half, for `Want`s from any input.
    guest_out: Mutex<Option<UnixStream>>,
    notices: Arc<NoticeHub>,
}

impl Vm {
    pub fn new(id: &str, notices: Arc<NoticeHub>) -> Arc<Vm> {
        Arc::new(Vm {
            id: id.to_owned(),
            monitor: Mutex::new(Monitor::new()),
            guest_out: Mutex::new(None),
            notices,
        })
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
        for n in step.notices {
            self.notices.publish(&self.id, n);
        }
        drop(m);
        if let Some(offset) = step.want {
            self.send(&ManagerMessage::Want { offset });
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

    pub fn on_vtpm_lost(&self) {
        self.drive(|m| m.on_vtpm_lost(Instant::now()));
    }

    pub fn on_hello(&self, hello: &Hello) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.drive(|m| m.on_hello(hello, ms, Instant::now()));
    }

    pub fn on_log(&self, offset: u64, bytes: &[u8]) {
        self.drive(|m| m.on_log(offset, bytes, Instant::now()));
    }

    pub fn on_tick(&self, now: Instant) {
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

    fn send(&self, msg: &ManagerMessage) {
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
