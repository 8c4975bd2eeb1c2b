//! The event stream and management requests, with tpm2-tools playing the guest.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use weles_vtpm::events::{self, BankDigest, Event, Message, Request};

mod support;
use support::free_ports;

struct Vtpm {
    child: Child,
    data: u16,
    events: PathBuf,
    dir: PathBuf,
}

impl Drop for Vtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Vtpm {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weles-vtpm-events-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (data, ctrl) = free_ports();
    // The event socket is a Unix socket in this test's own directory, so a listener can never
    // reach another test's vTPM through a reused port.
    let ev = dir.join("events.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_weles-vtpm"))
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--server")
        .arg(format!("type=tcp,port={data}"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={ctrl}"))
        .arg("--events")
        .arg(format!("type=unixio,path={}", ev.display()))
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.join("state").display()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&ev).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    Vtpm {
        child,
        data,
        events: ev,
        dir,
    }
}

impl Vtpm {
    fn ok(&self, args: &[&str]) -> String {
        let o = Command::new(args[0])
            .args(&args[1..])
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:host=127.0.0.1,port={}", self.data),
            )
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn listen(&self) -> UnixStream {
        let s = UnixStream::connect(&self.events).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

fn send(s: &mut UnixStream, r: &Request) {
    s.write_all(&events::frame(r)).unwrap();
}

fn next(s: &mut UnixStream) -> Message {
    events::read_frame(s).unwrap().expect("a message")
}

fn event(s: &mut UnixStream) -> (u64, Event) {
    match next(s) {
        Message::Event(r) => (r.seq, r.event),
        other => panic!("expected an event, got {other:?}"),
    }
}

fn bank<'a>(v: &'a [BankDigest], name: &str) -> &'a str {
    &v.iter()
        .find(|b| b.bank == name)
        .unwrap_or_else(|| panic!("no {name} in {v:?}"))
        .hex
}

#[test]
fn events_report_every_extend_with_the_resulting_pcrs_and_resume_after_reconnect() {
    let t = start();
    let mut l = t.listen();
    send(&mut l, &Request::Subscribe { after: 0 });
    assert_eq!(event(&mut l), (1, Event::Init));
    assert_eq!(event(&mut l), (2, Event::Startup { clear: true }));

    let d1 = "11".repeat(20);
    let d256 = "22".repeat(32);
    t.ok(&["tpm2_pcrextend", &format!("10:sha1={d1},sha256={d256}")]);
    let (seq, ev) = event(&mut l);
    assert_eq!(seq, 3);
    let Event::Extend { pcr, digests, pcrs } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(pcr, 10);
    assert_eq!(
        (bank(&digests, "sha1"), bank(&digests, "sha256")),
        (d1.as_str(), d256.as_str())
    );
    let read = t.ok(&["tpm2_pcrread", "sha256:10"]).to_lowercase();
    assert!(read.contains(bank(&pcrs, "sha256")), "{read} vs {pcrs:?}");

    // Management requests run between guest commands.
    send(&mut l, &Request::ReadPcrs { pcr: 10 });
    match next(&mut l) {
        Message::Pcrs { pcr: 10, pcrs: now } => assert_eq!(now, pcrs),
        other => panic!("{other:?}"),
    }
    send(&mut l, &Request::ReadPcrs { pcr: 30 });
    assert!(matches!(next(&mut l), Message::Error { .. }));

    // The listener goes away; the TPM goes on; on reconnect nothing is missing.
    drop(l);
    for i in 0..3u8 {
        t.ok(&[
            "tpm2_pcrextend",
            &format!("16:sha256={}", format!("{i:02x}").repeat(32)),
        ]);
    }
    t.ok(&["tpm2_pcrreset", "16"]);
    let mut l = t.listen();
    send(&mut l, &Request::Subscribe { after: 3 });
    for want in 4..=6 {
        let (seq, ev) = event(&mut l);
        assert_eq!(seq, want);
        assert!(matches!(ev, Event::Extend { pcr: 16, .. }), "{ev:?}");
    }
    let (seq, ev) = event(&mut l);
    assert_eq!(seq, 7);
    let Event::Reset { pcr: 16, pcrs } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(bank(&pcrs, "sha256"), "00".repeat(32));

    // Public areas of persistent objects (the host key's, later) are readable; others refused.
    t.ok(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc",
        "-c",
        "p.ctx",
    ]);
    t.ok(&["tpm2_evictcontrol", "-C", "o", "-c", "p.ctx", "0x81000007"]);
    t.ok(&["tpm2_flushcontext", "-t"]);
    send(
        &mut l,
        &Request::ReadPublic {
            handle: 0x8100_0007,
        },
    );
    loop {
        match next(&mut l) {
            Message::Event(_) => continue,
            Message::Public {
                handle,
                public,
                name,
            } => {
                assert_eq!(handle, 0x8100_0007);
                assert!(public.len() > 100 && name.starts_with("000b"), "{name}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    send(
        &mut l,
        &Request::ReadPublic {
            handle: 0x4000_0001,
        },
    );
    loop {
        match next(&mut l) {
            Message::Event(_) => continue,
            Message::Error { error } => {
                assert!(error.contains("not a persistent handle"));
                break;
            }
            other => panic!("{other:?}"),
        }
    }

    // A frame claiming 4 GiB closes that connection only.
    let mut bad = t.listen();
    bad.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(matches!(next(&mut bad), Message::Error { .. }));
    t.ok(&["tpm2_pcrread", "sha256:10"]);
}

#[test]
fn computed_pcr_values_in_events_equal_the_tpms_own() {
    let t = start();
    let mut l = t.listen();
    send(&mut l, &Request::Subscribe { after: 0 });
    event(&mut l);
    event(&mut l);
    // Mixed banks: both, sha256 only, sha1 only; two PCRs; a reset in between.
    let specs = [
        format!("10:sha1={},sha256={}", "01".repeat(20), "02".repeat(32)),
        format!("10:sha256={}", "03".repeat(32)),
        format!("16:sha1={}", "04".repeat(20)),
        format!("10:sha1={}", "05".repeat(20)),
        format!("16:sha256={}", "06".repeat(32)),
    ];
    for round in 0..3 {
        for spec in &specs {
            t.ok(&["tpm2_pcrextend", spec]);
            let (_, ev) = event(&mut l);
            let Event::Extend { pcr, pcrs, .. } = ev else {
                panic!("{ev:?}")
            };
            send(&mut l, &Request::ReadPcrs { pcr });
            match next(&mut l) {
                Message::Pcrs { pcrs: actual, .. } => {
                    assert_eq!(pcrs, actual, "round {round}, {spec}")
                }
                other => panic!("{other:?}"),
            }
        }
        t.ok(&["tpm2_pcrreset", "16"]);
        assert!(matches!(event(&mut l).1, Event::Reset { pcr: 16, .. }));
    }
}
