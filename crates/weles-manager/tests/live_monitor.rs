//! The monitor live, with real parts: a real weles-vtpm process (libtpms) whose events the
//! manager follows, a real weles-guest process streaming a log file over the guest channel, and
//! this test playing the guest kernel — it appends real IMA entries (captured from a Debian 6.1
//! guest) to that file and extends the vTPM's PCR 10 with TPM2_PCR_Extend on the data channel,
//! in the kernel's order (log first, then the extend).
//!
//! The binaries are taken from the workspace's target directory (`cargo test --workspace` builds
//! them).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weles_ima::write::{binary_entry, d_ng, n_ng, template_data};
use weles_ima::{Bank, ByteOrder, Entry, HashAlgorithm, log::parse_all};
use weles_manager::guest_link::GuestLink;
use weles_manager::monitor::{Notice, Status, VmState};
use weles_manager::notices::{NoticeHub, NoticeRecord};
use weles_manager::vm::Vm;
use weles_manager::vtpm_link::VtpmLink;
use weles_policy::Policy;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p {name}` (cargo test --workspace builds it)",
        p.display()
    );
    p
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One VM's worth of real processes and the manager's side of it.
struct World {
    dir: PathBuf,
    _vtpm: Kill,
    guest: Option<Kill>,
    data: UnixStream,
    ctrl: PathBuf,
    vm: Arc<Vm>,
    hub: Arc<NoticeHub>,
    links: Option<(VtpmLink, GuestLink)>,
    ticker: Arc<std::sync::atomic::AtomicBool>,
    seen: u64,
}

impl Drop for World {
    fn drop(&mut self) {
        self.ticker.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some((mut v, mut g)) = self.links.take() {
            v.stop();
            g.stop();
        }
        self.guest = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str) -> World {
    let dir = std::env::temp_dir().join(format!("weles-live-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (data, ctrl, events) = (
        dir.join("data.sock"),
        dir.join("ctrl.sock"),
        dir.join("events.sock"),
    );
    let vtpm = Kill(
        Command::new(bin("weles-vtpm"))
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--server")
            .arg(format!("type=unixio,path={}", data.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", ctrl.display()))
            .arg("--events")
            .arg(format!("type=unixio,path={}", events.display()))
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.join("state").display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&events).is_err() || UnixStream::connect(&data).is_err() {
        assert!(Instant::now() < deadline, "weles-vtpm did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let hub = Arc::new(NoticeHub::new(4096));
    let vm = Vm::new(name, hub.clone());
    let vlink = VtpmLink::spawn(vm.clone(), events);
    let glink = GuestLink::bind(vm.clone(), &dir.join("guest.sock")).unwrap();
    let ticker = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (vm, stop) = (vm.clone(), ticker.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                vm.on_tick(Instant::now());
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }
    std::fs::write(dir.join("log"), b"").unwrap();
    World {
        data: UnixStream::connect(dir.join("data.sock")).unwrap(),
        ctrl,
        dir,
        _vtpm: vtpm,
        guest: None,
        vm,
        hub,
        links: Some((vlink, glink)),
        ticker,
        seen: 0,
    }
}

fn policy() -> Arc<Policy> {
    let path = format!("{ROOT}/testdata/demo/policy-tolerant.toml");
    Arc::new(Policy::load(&std::fs::read(&path).unwrap(), &path).unwrap())
}

fn real_log() -> Vec<u8> {
    std::fs::read(format!(
        "{ROOT}/testdata/ima/ima-sig-sha256/binary_runtime_measurements"
    ))
    .unwrap()
}

fn unlisted_entry() -> Vec<u8> {
    let data = template_data(
        ByteOrder::Little,
        &[
            &d_ng(HashAlgorithm::Sha256, &[0x66; 32]),
            &n_ng(b"/usr/local/bin/miner"),
        ],
    );
    let mut out = Vec::new();
    binary_entry(&mut out, ByteOrder::Little, 10, "ima-ng", &data, false);
    out
}

impl World {
    fn start_guest(&mut self, boot_id: &str) {
        self.guest = None;
        let id = self.dir.join("boot_id");
        std::fs::write(&id, boot_id).unwrap();
        self.guest = Some(Kill(
            Command::new(bin("weles-guest"))
                .arg("--channel")
                .arg(self.dir.join("guest.sock"))
                .arg("--ima-log")
                .arg(self.dir.join("log"))
                .arg("--boot-id-file")
                .arg(&id)
                .args(["--poll-ms", "5"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }

    /// What IMA does for one entry: append it to the log, then extend PCR 10.
    fn measure(&mut self, entry: &Entry<'_>, raw: &[u8], log_it: bool, extend_it: bool) {
        if log_it {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.join("log"))
                .unwrap();
            f.write_all(raw).unwrap();
        }
        if extend_it {
            let digests = [Bank::Sha1, Bank::Sha256].map(|b| entry.template_digest(b));
            pcr_extend(&mut self.data, 10, &digests);
        }
    }

    /// Measures every entry of `log` (both steps unless told otherwise).
    fn measure_all(&mut self, log: &[u8], log_it: bool, extend_it: bool) {
        for (entry, raw) in split(log) {
            self.measure(&entry, &raw, log_it, extend_it);
        }
    }

    /// Waits for the VM to reach `want`; returns the notices on the way.
    fn wait_for(&mut self, want: VmState, within: Duration) -> Vec<NoticeRecord> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let batch = self.hub.read_after(self.seen, Duration::from_millis(50));
            for r in batch.records {
                self.seen = r.seq;
                let reached = matches!(r.notice, Notice::State { to, .. } if to == want);
                got.push(r);
                if reached {
                    return got;
                }
            }
            assert!(
                Instant::now() < deadline,
                "VM never became {want:?}; status {:?}; notices {got:?}",
                self.vm.status()
            );
        }
    }

    /// The status once the manager has seen `extends` extends.
    fn settled(&self, extends: u64) -> Status {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let s = self.vm.status().unwrap();
            if s.extends >= extends || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A power cycle as QEMU does it: CMD_INIT on the control channel, TPM2_Startup(CLEAR).
    fn reboot_tpm(&mut self) {
        let mut c = UnixStream::connect(&self.ctrl).unwrap();
        c.write_all(&[0, 0, 0, 2, 0, 0, 0, 0]).unwrap();
        let mut r = [0u8; 4];
        c.read_exact(&mut r).unwrap();
        assert_eq!(r, [0; 4], "CMD_INIT");
        self.data = UnixStream::connect(self.dir.join("data.sock")).unwrap();
        let rc = tpm(&mut self.data, &[0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x44, 0, 0]);
        assert_eq!(rc, 0, "TPM2_Startup(CLEAR)");
        std::fs::write(self.dir.join("log"), b"").unwrap();
    }
}

/// The log's entries with their raw bytes.
fn split(log: &[u8]) -> Vec<(Entry<'static>, Vec<u8>)> {
    let (_, entries) = parse_all(log, Default::default()).unwrap();
    entries
        .into_iter()
        .map(|e| {
            let mut raw = Vec::new();
            binary_entry(
                &mut raw,
                ByteOrder::Little,
                e.pcr,
                &e.template_name,
                &e.data,
                e.is_violation(),
            );
            (e.into_owned(), raw)
        })
        .collect()
}

/// Sends one command, returns the response code.
fn tpm(s: &mut UnixStream, cmd: &[u8]) -> u32 {
    s.write_all(cmd).unwrap();
    let mut head = [0u8; 10];
    s.read_exact(&mut head).unwrap();
    let size = u32::from_be_bytes(head[2..6].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; size - 10];
    s.read_exact(&mut rest).unwrap();
    u32::from_be_bytes(head[6..10].try_into().unwrap())
}

/// TPM2_PCR_Extend with a password session, one digest per bank.
fn pcr_extend(s: &mut UnixStream, pcr: u32, digests: &[weles_ima::Digest]) {
    let mut body = Vec::new();
    body.extend_from_slice(&pcr.to_be_bytes());
    body.extend_from_slice(&9u32.to_be_bytes());
    body.extend_from_slice(&[0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
    body.extend_from_slice(&(digests.len() as u32).to_be_bytes());
    for d in digests {
        let alg: u16 = match d.algorithm() {
            HashAlgorithm::Sha1 => 0x0004,
            HashAlgorithm::Sha256 => 0x000b,
            other => panic!("{other:?}"),
        };
        body.extend_from_slice(&alg.to_be_bytes());
        body.extend_from_slice(d.as_bytes());
    }
    let mut cmd = vec![0x80, 0x02];
    cmd.extend_from_slice(&((body.len() + 10) as u32).to_be_bytes());
    cmd.extend_from_slice(&0x182u32.to_be_bytes());
    cmd.extend_from_slice(&body);
    assert_eq!(tpm(s, &cmd), 0, "TPM2_PCR_Extend");
}

#[test]
fn compliant_then_an_unlisted_file_is_detected_within_milliseconds() {
    let mut w = start("violation");
    w.vm.set_policy(policy());
    w.start_guest("boot-1");
    w.measure_all(&real_log(), true, true);
    w.wait_for(VmState::Compliant, Duration::from_secs(10));

    let bad = unlisted_entry();
    let (entry, raw) = split(&bad).remove(0);
    let t = Instant::now();
    w.measure(&entry, &raw, true, true);
    let notices = w.wait_for(VmState::Violated, Duration::from_secs(2));
    let detected = t.elapsed();
    let finding = notices
        .iter()
        .find_map(|r| match &r.notice {
            Notice::Violation(f) => Some(f.clone()),
            _ => None,
        })
        .expect("a violation notice");
    assert_eq!(finding.path, "/usr/local/bin/miner");
    assert_eq!(finding.reason, "not_in_policy");
    assert_eq!(finding.index, 9);
    // Far inside the 2 s grace; the benchmark measures the distribution.
    assert!(detected < Duration::from_millis(1500), "{detected:?}");
    // The extend may reach the manager after the logged entry did (the kernel logs first).
    let s = w.settled(10);
    assert_eq!((s.entries, s.extends), (10, 10));
}

#[test]
fn a_withheld_log_becomes_unverifiable_after_the_grace() {
    let mut w = start("withheld");
    w.vm.set_policy(policy());
    w.start_guest("boot-1");
    let log = real_log();
    let entries = split(&log);
    for (i, (e, raw)) in entries.iter().enumerate() {
        // The guest "loses" the last three entries: measured, never logged.
        w.measure(e, raw, i < entries.len() - 3, true);
    }
    let t = Instant::now();
    let notices = w.wait_for(VmState::Unverifiable, Duration::from_secs(10));
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "not before the grace"
    );
    assert!(notices.iter().any(|r| matches!(
        r.notice,
        Notice::State {
            to: VmState::Pending,
            ..
        }
    )));
    assert!(w.vm.status().unwrap().reason.contains("grace"));
}

#[test]
fn a_forged_log_is_violated() {
    let mut w = start("forged");
    w.vm.set_policy(policy());
    w.start_guest("boot-1");
    let log = real_log();
    let entries = split(&log);
    // The vTPM measures the miner; the guest logs a listed file in its place.
    w.measure_all(&log, true, true);
    w.wait_for(VmState::Compliant, Duration::from_secs(10));
    let (miner, _) = split(&unlisted_entry()).remove(0);
    w.measure(&miner, &[], false, true);
    w.measure(&entries[1].0, &entries[1].1, true, false);
    let notices = w.wait_for(VmState::Violated, Duration::from_secs(3));
    assert!(
        notices
            .iter()
            .any(|r| matches!(&r.notice, Notice::Violation(f) if f.reason == "pcr_mismatch")),
        "{notices:?}"
    );
}

#[test]
fn reboot_starts_over_and_becomes_compliant_again() {
    let mut w = start("reboot");
    w.vm.set_policy(policy());
    w.start_guest("boot-1");
    let log = real_log();
    w.measure_all(&log, true, true);
    w.wait_for(VmState::Compliant, Duration::from_secs(10));
    let (miner, raw) = split(&unlisted_entry()).remove(0);
    w.measure(&miner, &raw, true, true);
    w.wait_for(VmState::Violated, Duration::from_secs(3));

    w.guest = None; // the old kernel and its agent are gone
    w.reboot_tpm();
    w.wait_for(VmState::Rebooted, Duration::from_secs(3));
    w.measure_all(&log, true, true);
    w.start_guest("boot-2");
    w.wait_for(VmState::Compliant, Duration::from_secs(10));
    let s = w.settled(9);
    assert_eq!((s.boots, s.entries, s.violation), (2, 9, None));
}
