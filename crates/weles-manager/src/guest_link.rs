//! Serves one VM's guest channel: a Unix socket QEMU connects to (a virtio-serial port in the
//! guest), or weles-guest directly in tests. One connection at a time; a new one replaces the old.
//! A malformed frame closes the connection — the agent reconnects and the monitor asks again
//! from the byte it needs.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weles_proto::guest::{self, GuestMessage};

use crate::vm::Vm;

pub struct GuestLink {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GuestLink {
    /// Listens on `path` (replacing a stale socket file) for `vm`'s guest.
    pub fn bind(vm: Arc<Vm>, path: &Path) -> std::io::Result<GuestLink> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("guest-{}", vm.id))
            .spawn(move || accept_loop(&vm, &listener, &s2))?;
        Ok(GuestLink {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(vm: &Arc<Vm>, listener: &UnixListener, stop: &Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            vm.detach_guest();
            return;
        }
        let Ok(conn) = conn else { continue };
        let Ok(out) = conn.try_clone() else { continue };
        vm.attach_guest(out);
        let vm = vm.clone();
        let _ = std::thread::Builder::new()
            .name(format!("guest-rx-{}", vm.id))
            .spawn(move || {
                if let Err(e) = read_loop(&vm, conn) {
                    eprintln!("welesd: vm {}: guest channel closed: {e}", vm.id);
                }
            });
    }
}

fn read_loop(vm: &Arc<Vm>, mut conn: UnixStream) -> std::io::Result<()> {
    loop {
        match guest::read_guest(&mut conn)? {
            None => return Ok(()),
            Some(GuestMessage::Hello(h)) => vm.on_hello(&h),
            Some(GuestMessage::Log { offset, bytes }) => vm.on_log(offset, &bytes),
            Some(GuestMessage::LogError(text)) => {
                eprintln!(
                    "welesd: vm {}: the guest cannot read its log: {text}",
                    vm.id
                );
            }
            Some(GuestMessage::HostKey(report)) => vm.on_host_key(report),
            Some(GuestMessage::Authorize(req)) => vm.on_authorize(req),
        }
    }
}
