//! Streaming the IMA log: from the offset the manager wants, then whatever is appended.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::mpsc::{self, RecvTimeoutError};

use weles_proto::guest::{self, GuestMessage, Hello, HostKeyReport, ManagerMessage};

use std::sync::{Arc, Mutex};

use crate::Options;
use crate::channel::Channel;
use crate::gate::Gate;

/// Bytes read from the log per message: small enough to keep latency low, large enough that a
/// 10 MB log after a manager restart goes in a few hundred frames.
const CHUNK: usize = 64 * 1024;

/// Serves one connection until it ends.
pub fn serve(mut ch: Channel, opts: &Options, boot_id: &str, gate: &Gate) -> io::Result<()> {
    guest::write_guest(
        &mut ch,
        &GuestMessage::Hello(Hello {
            version: guest::VERSION,
            boot_id: boot_id.to_owned(),
            agent: format!("weles-guest {}", env!("CARGO_PKG_VERSION")),
        }),
    )?;
    // The manager's messages arrive on their own thread so that a `Want` interrupts polling;
    // authorizations go straight to the signing request waiting for them.
    let (tx, rx) = mpsc::channel::<io::Result<ManagerMessage>>();
    let mut reader = ch.try_clone()?;
    let pending: crate::gate::Pending = Default::default();
    let routes = pending.clone();
    std::thread::spawn(move || {
        loop {
            let msg = match guest::read_manager(&mut reader) {
                Ok(Some(ManagerMessage::Authorization(a))) => {
                    if let Some(waiter) = routes.lock().ok().and_then(|mut p| p.remove(&a.id)) {
                        let _ = waiter.send(a);
                    }
                    continue;
                }
                Ok(Some(m)) => Ok(m),
                Ok(None) => Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) => Err(e),
            };
            let end = msg.is_err();
            if tx.send(msg).is_err() || end {
                return;
            }
        }
    });
    let writer = Arc::new(Mutex::new(ch.try_clone()?));
    gate.connected(writer.clone(), pending);
    let result = pump(&writer, &rx, opts, gate);
    gate.disconnected();
    ch.shutdown();
    result
}

/// The log being streamed and the offset of its next byte.
struct Cursor {
    file: File,
    offset: u64,
}

/// One host key is made at a time (two setups in a row must not race for the same handle).
static MAKING_KEY: Mutex<()> = Mutex::new(());

fn pump(
    writer: &Arc<Mutex<Channel>>,
    rx: &mpsc::Receiver<io::Result<ManagerMessage>>,
    opts: &Options,
    gate: &Gate,
) -> io::Result<()> {
    let send = |m: &GuestMessage| -> io::Result<()> {
        let mut w = writer
            .lock()
            .map_err(|_| io::Error::other("channel writer poisoned"))?;
        guest::write_guest(&mut *w, m)
    };
    let mut cursor: Option<Cursor> = None;
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Send everything there is now.
        if let Some(c) = cursor.as_mut() {
            loop {
                let n = match c.file.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let text = format!("reading {} failed: {e}", opts.ima_log.display());
                        send(&GuestMessage::LogError(text))?;
                        cursor = None;
                        break;
                    }
                };
                if n == 0 {
                    break;
                }
                let msg = GuestMessage::Log {
                    offset: c.offset,
                    bytes: buf[..n].to_vec(),
                };
                send(&msg)?;
                c.offset += n as u64;
            }
        }
        // Then wait for a request or the next poll.
        match rx.recv_timeout(opts.poll) {
            Ok(Ok(ManagerMessage::Want { offset })) => match open_at(&opts.ima_log, offset) {
                Ok(c) => cursor = Some(c),
                Err(e) => {
                    let text = format!(
                        "cannot read {} from byte {offset}: {e}",
                        opts.ima_log.display()
                    );
                    send(&GuestMessage::LogError(text))?;
                    cursor = None;
                }
            },
            Ok(Ok(ManagerMessage::SigningSetup(setup))) => {
                gate.set_setup(setup.clone());
                // Making a key keeps the TPM busy for a while (long for a software TPM under
                // emulation): the log streams on meanwhile, and the report follows when done.
                let (writer, tpm) = (writer.clone(), opts.tpm.clone());
                std::thread::spawn(move || {
                    let _one = MAKING_KEY.lock().unwrap_or_else(|p| p.into_inner());
                    let report = match crate::tpm::Tpm::open(&tpm)
                        .map_err(|e| format!("cannot open the TPM {}: {e}", tpm.display()))
                        .and_then(|mut t| crate::host_key::ensure(&mut t, &setup))
                    {
                        Ok(handle) => HostKeyReport {
                            handle: Some(handle),
                            error: None,
                        },
                        Err(e) => HostKeyReport {
                            handle: None,
                            error: Some(e),
                        },
                    };
                    // A connection that ended meanwhile gets its setup again after the next hello.
                    if let Ok(mut w) = writer.lock() {
                        let _ = guest::write_guest(&mut *w, &GuestMessage::HostKey(report));
                    }
                });
            }
            Ok(Ok(ManagerMessage::HostKeyResult(r))) => {
                if r.accepted {
                    eprintln!(
                        "weles-guest: the manager accepted the host key {}",
                        r.fingerprint.as_deref().unwrap_or("")
                    );
                    if let Err(e) = install_host_key(opts, gate) {
                        eprintln!("weles-guest: host key: {e}");
                    }
                } else {
                    eprintln!(
                        "weles-guest: the manager refused the host key: {}",
                        r.reason
                    );
                }
            }
            Ok(Ok(ManagerMessage::Authorization(_))) => {} // routed by the reader
            Ok(Ok(ManagerMessage::HostCertificate { certificate })) => {
                if let Err(e) = install_certificate(opts, &certificate) {
                    eprintln!("weles-guest: host certificate: {e}");
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

fn open_at(path: &std::path::Path, offset: u64) -> io::Result<Cursor> {
    let mut file = File::open(path)?;
    if offset > 0 {
        // securityfs files seek by re-reading; a regular file seeks directly. Either way the
        // position must be exactly `offset`, or the manager would get misaligned bytes.
        let at = file.seek(SeekFrom::Start(offset))?;
        if at != offset {
            return Err(io::Error::other(format!(
                "seek reached byte {at}, not {offset}"
            )));
        }
    }
    Ok(Cursor { file, offset })
}

/// Writes the accepted host key's public line where sshd's `HostKey` names it.
fn install_host_key(opts: &Options, gate: &Gate) -> Result<(), String> {
    let Some(path) = &opts.host_key else {
        return Ok(());
    };
    let (_, public) = crate::ssh_agent::host_key(&opts.tpm, gate)?;
    write_atomically(path, &crate::ssh_agent::public_key_line(&public))
}

/// Replaces `path` whole: sshd never reads a half-written file. Mode 0600, because sshd tries
/// a `HostKey` path as a private key first and refuses group- or world-readable ones.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the certificate where sshd reads it (atomically), then runs the reload command.
fn install_certificate(opts: &Options, certificate: &str) -> Result<(), String> {
    let Some(path) = &opts.host_certificate else {
        return Ok(());
    };
    write_atomically(path, &format!("{}\n", certificate.trim()))?;
    if let Some(cmd) = &opts.on_certificate {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .map_err(|e| format!("{cmd}: {e}"))?;
        if !status.success() {
            return Err(format!("{cmd}: {status}"));
        }
    }
    Ok(())
}
