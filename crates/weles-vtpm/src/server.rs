//! The control channel and the data channel, on Unix or TCP sockets, as swtpm serves them.
//!
//! - Control: one client at a time; requests of [`crate::ctrl`]. On a Unix socket a request may
//!   carry a file descriptor (`SCM_RIGHTS`): CMD_SET_DATAFD hands over the data channel, which is
//!   how QEMU's `-tpmdev emulator` connects. When that channel closes the process ends, as swtpm
//!   does, so the next VM start gets a fresh process.
//! - Data: TPM command frames back to back (`--server`, or the descriptor from SET_DATAFD).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::ctrl::{self, CtrlError, Request, Response};
use crate::engine::Engine;
use crate::ffi::{self, TPM_BAD_ORDINAL, TPM_BAD_PARAMETER, TPM_IOERROR, TPM_SUCCESS};
use crate::{frame, log};

/// Where a channel listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { bind: String, port: u16 },
    Unix(PathBuf),
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connected stream of either kind.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Option<Duration>) {
        let _ = match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
        };
    }
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Listener {
    fn bind(ep: &Endpoint) -> std::io::Result<Listener> {
        Ok(match ep {
            Endpoint::Tcp { bind, port } => {
                Listener::Tcp(TcpListener::bind((bind.as_str(), *port))?)
            }
            Endpoint::Unix(path) => {
                // A stale socket file from an earlier run would make bind fail.
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                Listener::Unix(UnixListener::bind(path)?)
            }
        })
    }

    fn accept(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            Listener::Unix(l) => Stream::Unix(l.accept()?.0),
        })
    }
}

/// How the process behaves, from swtpm's options.
#[derive(Clone, Debug)]
pub struct Options {
    pub ctrl: Option<Endpoint>,
    pub server: Option<Endpoint>,
    /// WELES `--events`: where the manager listens to events and sends management requests.
    pub events: Option<Endpoint>,
    /// `--flags not-need-init`: initialise the TPM at start instead of waiting for CMD_INIT.
    pub init_at_start: bool,
    /// `--flags startup-clear|startup-state`: send TPM2_Startup after initialising.
    pub startup: Option<bool>,
}

/// Runs until CMD_SHUTDOWN, or until a data channel handed over by SET_DATAFD closes.
pub fn run(engine: Arc<Engine>, opts: Options) -> anyhow::Result<()> {
    // Without an event socket nobody can ever read the events: do not record them.
    engine.set_recording(opts.events.is_some());
    if opts.init_at_start {
        start_tpm(&engine, opts.startup)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    if let Some(ep) = &opts.server {
        let listener = Listener::bind(ep).map_err(|e| anyhow::anyhow!("--server {ep:?}: {e}"))?;
        let engine = engine.clone();
        threads.push(std::thread::spawn(move || {
            while let Some(stream) = next_connection(&listener, "data") {
                serve_data(&engine, stream);
            }
        }));
    }
    if let Some(ep) = &opts.events {
        let listener = Listener::bind(ep).map_err(|e| anyhow::anyhow!("--events {ep:?}: {e}"))?;
        let engine = engine.clone();
        threads.push(std::thread::spawn(move || {
            while let Some(stream) = next_connection(&listener, "events") {
                let engine = engine.clone();
                std::thread::spawn(move || serve_events(&engine, stream));
            }
        }));
    }
    if let Some(ep) = &opts.ctrl {
        let listener = Listener::bind(ep).map_err(|e| anyhow::anyhow!("--ctrl {ep:?}: {e}"))?;
        let (engine, stop) = (engine.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while let Some(stream) = next_connection(&listener, "control") {
                serve_ctrl(&engine, stream, &stop);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }));
    }
    log::line(&format!(
        "ready (ctrl {:?}, server {:?})",
        opts.ctrl, opts.server
    ));
    for t in threads {
        let _ = t.join();
    }
    engine.stop();
    Ok(())
}

/// The next connection on `listener`. A failed accept — a client gone before it was accepted,
/// an interrupted call, a moment without free descriptors — costs that one connection, never
/// the listener: ending the loop would close the socket and refuse every later client (QEMU's
/// reconnect, tpm2-tools, the manager) for the VM's life. `None` only when the listener itself
/// is unusable.
fn next_connection(listener: &Listener, what: &str) -> Option<Stream> {
    use std::io::ErrorKind;
    let mut failures = 0u32;
    loop {
        match listener.accept() {
            Ok(stream) => return Some(stream),
            Err(e) => {
                let transient = matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                        | ErrorKind::Interrupted
                        | ErrorKind::WouldBlock
                        | ErrorKind::TimedOut
                ) || matches!(
                    e.raw_os_error(),
                    Some(
                        libc_errno::EMFILE
                            | libc_errno::ENFILE
                            | libc_errno::ENOBUFS
                            | libc_errno::ENOMEM
                            | libc_errno::EPROTO
                    )
                );
                log::line(&format!("{what} channel: accept failed: {e}"));
                failures += 1;
                if !transient || failures > 1000 {
                    return None;
                }
                // Out of descriptors or memory: give the process a moment to free some.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The errno values of resource exhaustion, which accept(2) reports and which pass.
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const EPROTO: i32 = 71;
    pub const ENOBUFS: i32 = 105;
}

fn start_tpm(engine: &Engine, startup: Option<bool>) -> anyhow::Result<()> {
    let rc = engine.init(false);
    if rc != TPM_SUCCESS {
        anyhow::bail!(
            "the TPM did not initialise (libtpms error {rc:#x}); is the state directory from another TPM?"
        );
    }
    if let Some(clear) = startup {
        let resp = engine.process(&frame::startup(clear));
        let rc = frame::code(&resp).unwrap_or(u32::MAX);
        // TPM_RC_INITIALIZE (0x100): already started from the resumed state; not an error.
        if rc != 0 && rc != 0x100 {
            anyhow::bail!("TPM2_Startup failed: {rc:#x}");
        }
        log::line(&format!(
            "TPM2_Startup({}) -> {rc:#x}",
            if clear { "CLEAR" } else { "STATE" }
        ));
    }
    Ok(())
}

/// Serves TPM command frames until the peer closes or sends a frame that cannot be delimited.
///
/// A command normally arrives in one read and costs one read and one write. Only a frame that
/// arrives in pieces arms a 10 s timeout for its remainder: an idle channel (a quiet VM) may wait
/// forever, a started command may not.
pub fn serve_data(engine: &Engine, mut stream: Stream) {
    let mut buf = vec![0u8; frame::MAX_COMMAND];
    let mut have = 0usize;
    let mut timeout_armed = false;
    loop {
        // Complete one frame in buf[..size].
        let size = loop {
            if have >= frame::HEADER {
                let header: [u8; frame::HEADER] = buf[..frame::HEADER]
                    .try_into()
                    .unwrap_or([0; frame::HEADER]);
                match frame::frame_size(&header) {
                    Ok(size) if have >= size => break size,
                    Ok(_) => {}
                    Err(rc) => {
                        log::line(&format!(
                            "data channel: undelimitable command (size field {:02x?}); closing",
                            &header[2..6]
                        ));
                        let _ = stream.write_all(&frame::error_response(rc));
                        return;
                    }
                }
            }
            if have > 0 && !timeout_armed {
                stream.set_read_timeout(Some(Duration::from_secs(10)));
                timeout_armed = true;
            }
            match stream.read(&mut buf[have..]) {
                Ok(0) => return,
                Ok(n) => have += n,
                Err(_) => {
                    if have > 0 {
                        log::line("data channel: truncated command; closing");
                    }
                    return;
                }
            }
        };
        if timeout_armed {
            stream.set_read_timeout(None);
            timeout_armed = false;
        }
        let response = engine.process(&buf[..size]);
        if stream.write_all(&response).is_err() {
            return;
        }
        // Keep any bytes of a following command.
        buf.copy_within(size..have, 0);
        have -= size;
    }
}

/// Reads one control request (and a passed descriptor, on Unix sockets); `None` at EOF or on a
/// stalled partial request.
fn read_request(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
) -> Option<(Result<Request, CtrlError>, Option<std::os::fd::OwnedFd>)> {
    let mut passed = None;
    let mut chunk = vec![0u8; 8192];
    stream.set_read_timeout(None);
    loop {
        match ctrl::parse(buf) {
            Ok((req, used)) => {
                buf.drain(..used);
                return Some((Ok(req), passed));
            }
            Err(e @ CtrlError::Invalid { .. }) => {
                buf.clear();
                return Some((Err(e), passed));
            }
            Err(CtrlError::Incomplete { .. }) => {}
        }
        let n = match stream {
            Stream::Unix(s) => match ffi::recv_with_fd(s.as_raw_fd(), &mut chunk) {
                Ok((n, fd)) => {
                    if fd.is_some() {
                        passed = fd;
                    }
                    n
                }
                Err(_) => return None,
            },
            Stream::Tcp(s) => s.read(&mut chunk).ok()?,
        };
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        // The rest of a started request must follow promptly (swtpm allows 500 ms).
        stream.set_read_timeout(Some(Duration::from_millis(500)));
    }
}

fn serve_ctrl(engine: &Arc<Engine>, mut stream: Stream, stop: &AtomicBool) {
    let mut buf = Vec::new();
    while let Some((req, fd)) = read_request(&mut stream, &mut buf) {
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                log::line(&format!("control channel: {e}"));
                let _ = stream.write_all(&Response::result(TPM_BAD_PARAMETER).0);
                return;
            }
        };
        let running = engine.is_running();
        let not_running = Response::result(TPM_BAD_ORDINAL);
        let response = match req {
            Request::GetCapability => Response(ctrl::CAPABILITIES.to_be_bytes().to_vec()),
            Request::Init { flags } => Response::result(engine.init(flags & 1 != 0)),
            Request::Stop => {
                engine.stop();
                Response::result(TPM_SUCCESS)
            }
            Request::Shutdown => {
                engine.stop();
                let _ = stream.write_all(&Response::result(TPM_SUCCESS).0);
                log::line("CMD_SHUTDOWN: exiting");
                stop.store(true, Ordering::Relaxed);
                std::process::exit(0);
            }
            Request::GetTpmEstablished => match engine.established() {
                Ok(bit) => Response::result(TPM_SUCCESS).bytes(&[u8::from(bit), 0, 0, 0]),
                Err(rc) => Response::result(rc).bytes(&[0, 0, 0, 0]),
            },
            Request::SetLocality { locality } => Response::result(engine.set_locality(locality)),
            Request::ResetTpmEstablished { locality } => {
                Response::result(engine.reset_established(locality))
            }
            Request::HashStart => Response::result(engine.hash_start()),
            Request::HashData { data } => Response::result(engine.hash_data(&data)),
            Request::HashEnd => Response::result(engine.hash_end()),
            Request::CancelTpmCmd => Response::result(engine.cancel()),
            Request::StoreVolatile => Response::result(engine.store_volatile()),
            Request::GetStateBlob { kind, offset, .. } if running => {
                match engine.get_state_blob(kind) {
                    Ok(blob) => {
                        let rest = blob.get(offset as usize..).unwrap_or(&[]);
                        Response::result(TPM_SUCCESS)
                            .u32(0)
                            .u32(rest.len() as u32)
                            .u32(rest.len() as u32)
                            .bytes(rest)
                    }
                    Err(rc) => Response::result(rc).u32(0).u32(0).u32(0),
                }
            }
            Request::GetStateBlob { .. } => not_running.u32(0).u32(0).u32(0),
            Request::SetStateBlob { flags, kind, data } => {
                if flags & 2 != 0 {
                    // Blobs encrypted with a swtpm migration key: we hold no such key.
                    Response::result(TPM_BAD_PARAMETER)
                } else {
                    Response::result(engine.set_state_blob(kind, &data))
                }
            }
            Request::GetConfig => Response::result(TPM_SUCCESS).u32(0),
            Request::SetDataFd => match fd {
                Some(fd) => {
                    let data = Stream::Unix(UnixStream::from(fd));
                    let engine = engine.clone();
                    std::thread::spawn(move || {
                        serve_data(&engine, data);
                        // As swtpm: the VM is gone; a new start gets a new process.
                        log::line("data channel closed: exiting");
                        engine.stop();
                        std::process::exit(0);
                    });
                    Response::result(TPM_SUCCESS)
                }
                None => Response::result(TPM_BAD_PARAMETER),
            },
            Request::SetBufferSize { size } => match engine.set_buffer_size(size) {
                Ok((in_use, min, max)) => {
                    Response::result(TPM_SUCCESS).u32(in_use).u32(min).u32(max)
                }
                Err(rc) => Response::result(rc),
            },
            Request::GetInfo { flags, offset } => match engine.info(flags as u32) {
                Some(info) => {
                    let mut bytes = info.into_bytes();
                    bytes.push(0);
                    // As swtpm: an offset at or past the terminating NUL is an error.
                    match bytes.get(offset as usize..).filter(|rest| rest.len() > 1) {
                        Some(rest) => {
                            let chunk = &rest[..rest.len().min(ctrl::GETINFO_CHUNK)];
                            Response::result(TPM_SUCCESS)
                                .u32(bytes.len() as u32)
                                .u32(chunk.len() as u32)
                                .bytes(chunk)
                        }
                        None => Response::result(TPM_BAD_PARAMETER),
                    }
                }
                None => Response::result(TPM_IOERROR),
            },
            Request::Unknown(code) => {
                log::line(&format!("control channel: unknown command {code:#x}"));
                Response::result(TPM_BAD_ORDINAL)
            }
        };
        if stream.write_all(&response.0).is_err() {
            return;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Serves one event listener: events from the requested sequence number on, and management
/// requests answered between guest commands. Messages are `u32` length + JSON (`events` module).
///
/// The TPM's path never waits for or wakes this connection: the writer collects new events from
/// the ring at least every millisecond (sooner when it has an answer to send) and writes them in
/// one batch.
pub fn serve_events(engine: &Arc<Engine>, stream: Stream) {
    use crate::events::{self, Message, Request as EvRequest};
    enum ToWriter {
        Subscribe(u64),
        Reply(Message),
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = stream;
    let (out, queue) = std::sync::mpsc::channel::<ToWriter>();
    let ring = engine.events().clone();
    let writer_thread = std::thread::spawn(move || {
        let mut cursor: Option<u64> = None;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match queue.recv_timeout(Duration::from_millis(1)) {
                Ok(ToWriter::Subscribe(after)) => cursor = Some(after),
                Ok(ToWriter::Reply(m)) => buf.extend_from_slice(&events::frame(&m)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if let Some(after) = cursor {
                let backlog = ring.since(after);
                if let Some(first) = backlog.lost_before {
                    buf.extend_from_slice(&events::frame(&Message::Lost { lost_before: first }));
                }
                if let Some(last) = backlog.records.last() {
                    cursor = Some(last.seq);
                } else if let Some(first) = backlog.lost_before {
                    cursor = Some(first - 1);
                }
                for r in backlog.records {
                    buf.extend_from_slice(&events::frame(&Message::Event(r)));
                }
            }
            if !buf.is_empty() && writer.write_all(&buf).is_err() {
                return;
            }
        }
    });
    loop {
        let req: EvRequest = match events::read_frame(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                let _ = out.send(ToWriter::Reply(Message::Error {
                    error: format!("bad request: {e}"),
                }));
                if e.kind() != std::io::ErrorKind::InvalidData || e.to_string().contains("exceeds")
                {
                    break;
                }
                continue;
            }
        };
        let reply = match req {
            EvRequest::Subscribe { after } => ToWriter::Subscribe(after),
            EvRequest::ReadPcrs { pcr } => ToWriter::Reply(match engine.read_pcrs(pcr) {
                Ok(pcrs) => Message::Pcrs { pcr, pcrs },
                Err(error) => Message::Error { error },
            }),
            EvRequest::EkCertificate { kind } => {
                ToWriter::Reply(match engine.ek_certificate(&kind) {
                    Ok(der) => Message::Certificate {
                        kind,
                        certificate: hex::encode(der),
                    },
                    Err(error) => Message::Error { error },
                })
            }
            EvRequest::ReadPublic { handle } => ToWriter::Reply(match engine.read_public(handle) {
                Ok((public, name)) => Message::Public {
                    handle,
                    public: hex::encode(public),
                    name: hex::encode(name),
                },
                Err(error) => Message::Error { error },
            }),
        };
        if out.send(reply).is_err() {
            break;
        }
    }
    drop(out);
    let _ = writer_thread.join();
}
