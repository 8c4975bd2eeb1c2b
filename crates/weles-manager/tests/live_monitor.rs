//! The monitor live, with real parts: a real weles-vtpm process (libtpms) whose events the
//! manager follows, a real weles-guest process streaming a log file over the guest channel, and
//! this test playing the guest kernel — it appends real IMA entries (captured from a Debian 6.1
//! guest) to that file and extends the vTPM's PCR 10 with TPM2_PCR_Extend on the data channel,
//! in the kernel's order (log first, then the extend).
//!
//! The binaries are taken from the workspace's target directory (`cargo test --workspace` builds
//! them).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weles_ima::Entry;
use weles_manager::guest_link::GuestLink;
use weles_manager::monitor::{Notice, Status, VmState};
use weles_manager::notices::{NoticeHub, NoticeRecord};
use weles_manager::vm::Vm;
use weles_manager::vtpm_link::VtpmLink;

mod support;
use support::{Kill, bin, policy, real_log, split, unlisted_entry};

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
    let vtpm = support::spawn_vtpm(&dir);
    let (ctrl, events) = (dir.join("ctrl.sock"), dir.join("events.sock"));
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
                .arg("--tpm")
                .arg(self.dir.join("no-tpm"))
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
        let log = self.dir.join("log");
        support::measure(&log, &mut self.data, entry, raw, log_it, extend_it);
    }

    /// Measures every entry of `log` (both steps unless told otherwise).
    fn measure_all(&mut self, log: &[u8], log_it: bool, extend_it: bool) {
        for (entry, raw) in split(log) {
            self.measure(&entry, &raw, log_it, extend_it);
        }
    }

    /// Waits for the VM to reach `want`; returns the notices on the way.
    fn wait_for(&mut self, want: VmState, within: Duration) -> Vec<NoticeRecord> {
        self.wait_notice(
            within,
            |n| matches!(n, Notice::State { to, .. } if *to == want),
        )
    }

    /// Waits for a notice `pred` accepts; returns the notices on the way, that one last.
    fn wait_notice(
        &mut self,
        within: Duration,
        pred: impl Fn(&Notice) -> bool,
    ) -> Vec<NoticeRecord> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let batch = self.hub.read_after(self.seen, Duration::from_millis(50));
            for r in batch.records {
                self.seen = r.seq;
                let reached = pred(&r.notice);
                got.push(r);
                if reached {
                    return got;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the awaited notice never came; status {:?}; notices {got:?}",
                self.vm.status()
            );
        }
    }

    /// Waits until the VM is compliant with `entries` entries verified (a VM whose agent said
    /// hello before any extend is compliant with an empty history first).
    fn wait_compliant(&mut self, entries: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.vm.status().unwrap();
            if s.state == VmState::Compliant && s.entries == entries && s.extends == entries {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never compliant with {entries} entries: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
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

    /// A power cycle as QEMU does it; the new boot's log starts empty.
    fn reboot_tpm(&mut self) {
        // The vTPM serves one data connection at a time: end this one first.
        let _ = self.data.shutdown(std::net::Shutdown::Both);
        self.data = support::power_on(&self.ctrl, &self.dir.join("data.sock"));
        std::fs::write(self.dir.join("log"), b"").unwrap();
    }
}

#[test]
fn compliant_then_an_unlisted_file_is_detected_within_milliseconds() {
    let mut w = start("violation");
    w.vm.set_policy(policy());
    w.start_guest("boot-1");
    w.measure_all(&real_log(), true, true);
    w.wait_compliant(9);

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
    // (An earlier `unverifiable` — no policy yet when the vTPM started — is not this one.)
    let notices = w.wait_notice(Duration::from_secs(10), |n| {
        matches!(n, Notice::State { to: VmState::Unverifiable, reason, .. } if reason.contains("grace"))
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "not before the grace: {notices:?}"
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
    w.wait_compliant(9);
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
    w.wait_compliant(9);
    let (miner, raw) = split(&unlisted_entry()).remove(0);
    w.measure(&miner, &raw, true, true);
    w.wait_for(VmState::Violated, Duration::from_secs(3));

    w.guest = None; // the old kernel and its agent are gone
    w.reboot_tpm();
    w.wait_for(VmState::Rebooted, Duration::from_secs(3));
    w.measure_all(&log, true, true);
    w.start_guest("boot-2");
    w.wait_compliant(9);
    let s = w.vm.status().unwrap();
    assert_eq!((s.boots, s.entries, s.violation), (2, 9, None));
}
