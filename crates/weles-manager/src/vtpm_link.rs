//! Follows one weles-vtpm's event socket (`docs/vtpm-protocol.md` §5) and feeds the VM's monitor.
//!
//! It subscribes after the last event the monitor processed, so a reconnect (the vTPM restarted
//! its listener, the manager's connection dropped) loses nothing the vTPM still keeps; if the vTPM
//! dropped events the monitor was never shown, the monitor is told so and stops trusting this boot.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use weles_proto::vtpm_events::{self, Message, Request};

use crate::vm::Vm;

/// Management requests on the event socket (`docs/vtpm-protocol.md` §5): answers come back on
/// the same connection, in order, between events; each is handed to the oldest waiting request.
#[derive(Default)]
pub struct Requester {
    out: Mutex<Option<UnixStream>>,
    waiting: Mutex<VecDeque<mpsc::Sender<Message>>>,
}

impl Requester {
    /// Sends `req` and waits up to `timeout` for its answer (and, before that, for the link to
    /// be connected: it may be reconnecting).
    pub fn request(&self, req: &Request, timeout: Duration) -> Result<Message, String> {
        let deadline = std::time::Instant::now() + timeout;
        let (tx, rx) = mpsc::channel();
        {
            let mut out = self.out.lock().map_err(|_| "vTPM link poisoned")?;
            while out.is_none() && std::time::Instant::now() < deadline {
                drop(out);
                std::thread::sleep(Duration::from_millis(10));
                out = self.out.lock().map_err(|_| "vTPM link poisoned")?;
            }
            let s = out
                .as_mut()
                .ok_or("the vTPM's event socket is not connected")?;
            // Queued before it is sent, under the same lock: answers match requests in order.
            self.waiting
                .lock()
                .map_err(|_| "vTPM link poisoned")?
                .push_back(tx);
            s.write_all(&vtpm_events::frame(req))
                .map_err(|e| format!("asking the vTPM: {e}"))?;
        }
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .map_err(|_| "the vTPM did not answer".to_owned())
    }

    fn connected(&self, s: Option<UnixStream>) {
        if let Ok(mut out) = self.out.lock() {
            *out = s;
        }
        // Requests sent on an old connection get no answer: drop them (their callers fail).
        if let Ok(mut w) = self.waiting.lock() {
            w.clear();
        }
    }

    fn answer(&self, m: Message) {
        if let Some(tx) = self.waiting.lock().ok().and_then(|mut w| w.pop_front()) {
            let _ = tx.send(m);
        }
    }
}

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
    let requester = vm.requester();
    requester.connected(s.try_clone().ok());
    let result = (|| loop {
        match vtpm_events::read_frame::<Message>(&mut s)? {
            None => return Ok(()),
            Some(Message::Event(record)) => vm.on_vtpm(&record),
            Some(Message::Lost { .. }) => vm.on_vtpm_lost(),
            Some(answer) => requester.answer(answer),
        }
    })();
    requester.connected(None);
    result
}
