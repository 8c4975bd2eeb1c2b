//! The real weles-guest binary against a manager played by this test on a Unix socket.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weles_proto::guest::{self, GuestMessage, ManagerMessage};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weles-guest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start(d: &std::path::Path, log: &str) -> (UnixListener, Agent) {
    let sock = d.join("guest.sock");
    let l = UnixListener::bind(&sock).unwrap();
    std::fs::write(d.join("boot_id"), "3f1c-boot\n").unwrap();
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_weles-guest"))
            .arg("--channel")
            .arg(&sock)
            .arg("--ima-log")
            .arg(d.join(log))
            .arg("--tpm")
            .arg(d.join("no-tpm"))
            .arg("--boot-id-file")
            .arg(d.join("boot_id"))
            .args(["--poll-ms", "5"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (l, agent)
}

fn next(s: &mut UnixStream) -> GuestMessage {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    guest::read_guest(s).unwrap().expect("a message")
}

/// Reads LOG frames until `want` bytes from `from` have arrived; checks offsets are contiguous.
fn collect(s: &mut UnixStream, from: u64, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        match next(s) {
            GuestMessage::Log { offset, bytes } => {
                assert_eq!(offset, from + got.len() as u64, "contiguous");
                got.extend_from_slice(&bytes);
            }
            other => panic!("{other:?}"),
        }
    }
    got
}

#[test]
fn streams_from_the_wanted_offset_follows_appends_and_reconnects() {
    let d = dir("stream");
    let log = d.join("log");
    std::fs::write(&log, b"0123456789").unwrap();
    let (l, _agent) = start(&d, "log");
    let (mut s, _) = l.accept().unwrap();
    match next(&mut s) {
        GuestMessage::Hello(h) => {
            assert_eq!(h.boot_id, "3f1c-boot");
            assert_eq!(h.version, guest::VERSION);
        }
        other => panic!("{other:?}"),
    }
    // Nothing is sent before the manager asks.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(guest::read_guest(&mut s).is_err(), "no bytes before WANT");
    guest::write_manager(&mut s, &ManagerMessage::Want { offset: 4 }).unwrap();
    assert_eq!(collect(&mut s, 4, 6), b"456789");
    // Appends arrive as they happen.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let t = Instant::now();
    f.write_all(b"abc").unwrap();
    assert_eq!(collect(&mut s, 10, 3), b"abc");
    assert!(t.elapsed() < Duration::from_secs(1));
    // A new WANT restarts from there.
    guest::write_manager(&mut s, &ManagerMessage::Want { offset: 0 }).unwrap();
    assert_eq!(collect(&mut s, 0, 13), b"0123456789abc");
    // The manager goes away; the agent comes back and says hello again.
    drop(s);
    let (mut s, _) = l.accept().unwrap();
    assert!(matches!(next(&mut s), GuestMessage::Hello(_)));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_unreadable_log_is_reported_by_name() {
    let d = dir("missing");
    let (l, _agent) = start(&d, "no-such-log");
    let (mut s, _) = l.accept().unwrap();
    assert!(matches!(next(&mut s), GuestMessage::Hello(_)));
    guest::write_manager(&mut s, &ManagerMessage::Want { offset: 0 }).unwrap();
    match next(&mut s) {
        GuestMessage::LogError(text) => assert!(text.contains("no-such-log"), "{text}"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_log_streams_on_while_the_tpm_makes_the_host_key() {
    let d = dir("keying");
    std::fs::write(d.join("log"), b"boot").unwrap();
    // A TPM that takes its time: it accepts the connection and answers nothing for 3 s.
    let tpm = UnixListener::bind(d.join("no-tpm")).unwrap();
    let slow = std::thread::spawn(move || {
        let (c, _) = tpm.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(c);
    });
    let (l, _agent) = start(&d, "log");
    let (mut s, _) = l.accept().unwrap();
    assert!(matches!(next(&mut s), GuestMessage::Hello(_)));
    guest::write_manager(&mut s, &ManagerMessage::Want { offset: 0 }).unwrap();
    assert_eq!(collect(&mut s, 0, 4), b"boot");
    guest::write_manager(
        &mut s,
        &ManagerMessage::SigningSetup(guest::SigningSetup {
            vm: "web-1".into(),
            authority: "00".into(),
            policy: "11".repeat(32),
            handle: 0x8100_0100,
        }),
    )
    .unwrap();
    // The kernel appends while the key is being made: the bytes arrive long before the TPM
    // answers.
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("log"))
        .unwrap()
        .write_all(b" more")
        .unwrap();
    assert_eq!(collect(&mut s, 4, 5), b" more");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Then the report: the TPM hung up, so no key, and why.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match guest::read_guest(&mut s).unwrap().expect("a report") {
        GuestMessage::HostKey(r) => {
            assert_eq!(r.handle, None);
            assert!(r.error.is_some(), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    slow.join().unwrap();
}
