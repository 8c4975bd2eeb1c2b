//! Follows one weles-vtpm's event socket (`docs/vtpm-protocol.md` §5) and feeds the VM's monitor.
//!
//! It subscribes after the last event the monitor processed, so a reconnect (the vTPM restarted
//! its listener, the manager's connection dropped) loses nothing the vTPM still keeps; if the vTPM
//! dropped events the monitor was never shown, the monitor is told so and stops trusting this boot.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weles_proto::vtpm_events::{self, Message, Request};

use crate::vm::Vm;

/// A running follower; dropping it does not stop it, [`VtpmLink::stop`] does.
pub struct VtpmLink {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    stream: Arc<std::sync::Mutex<Option<UnixStream>>>,
}

impl VtpmLink {
    /// Starts following the event socket at `path` for `vm`.
    pub fn spawn(vm: Arc<Vm>, path: PathBuf) -> VtpmLink {
        let stop = Arc::new(AtomicBool::new(false));
        let stream = Arc::new(std::sync::Mutex::new(None::<UnixStream>));
        let (s2, st2) = (stop.clone(), stream.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vtpm-{}", vm.id))
            .spawn(move || follow(&vm, &path, &s2, &st2))
            .ok();
        VtpmLink {
            stop,
            thread,
            stream,
        }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(Some(s)) = self
            .stream
            .lock()
            .map(|g| g.as_ref().and_then(|s| s.try_clone().ok()))
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn follow(
    vm: &Vm,
    path: &PathBuf,
    stop: &AtomicBool,
    current: &std::sync::Mutex<Option<UnixStream>>,
) {
    let mut backoff = Duration::from_millis(20);
    while !stop.load(Ordering::SeqCst) {
        match UnixStream::connect(path) {
            Ok(s) => {
                backoff = Duration::from_millis(20);
                if let (Ok(mut g), Ok(c)) = (current.lock(), s.try_clone()) {
                    *g = Some(c);
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = session(vm, s)
                    && !stop.load(Ordering::SeqCst)
                {
                    eprintln!("welesd: vm {}: vTPM event socket: {e}", vm.id);
                }
            }
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

fn session(vm: &Vm, mut s: UnixStream) -> std::io::Result<()> {
    let after = vm.vtpm_seq();
    s.write_all(&vtpm_events::frame(&Request::Subscribe { after }))?;
    loop {
        match vtpm_events::read_frame::<Message>(&mut s)? {
            None => return Ok(()),
            Some(Message::Event(record)) => vm.on_vtpm(&record),
            Some(Message::Lost { .. }) => vm.on_vtpm_lost(),
            Some(Message::Error { error }) => {
                return Err(std::io::Error::other(format!("the vTPM said: {error}")));
            }
            Some(_) => {}
        }
    }
}
