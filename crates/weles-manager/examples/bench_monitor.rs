//! Manager benchmarks (run by `bench/manager_monitor.sh`; not a test):
//!
//! * `capacity VMS ROUNDS` — one thread (pin it to one core) does all the manager's work per
//!   IMA entry for VMS VMs round robin: decode the vTPM's extend event (its JSON frame, as it
//!   arrives), advance the monitor, verify the guest's log bytes (template hash, sha1+sha256
//!   replay, policy lookup), compare with the PCR. Reports µs per entry, the VMs one core
//!   sustains at 100 entries/s each, and resident memory per VM.
//! * `load VMS RATE SECONDS` — VMS VMs each extending RATE entries/s, paced in real time on one
//!   thread; every 50 ms one VM runs an unlisted file. Reports the violation-to-notice latency
//!   (from the moment the entry was due) p50/p99/max.
//! * `live SAMPLES POLL_MS` — real processes: a weles-vtpm, a weles-guest polling every POLL_MS,
//!   the manager's links in this process; the bench plays the kernel. Each sample boots, replays
//!   a real 9-entry log, waits for compliant, runs an unlisted file and times log write →
//!   violation notice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weles_ima::write::{binary_entry, d_ng, n_ng, template_data};
use weles_ima::{Bank, ByteOrder, Digest, HashAlgorithm};
use weles_manager::monitor::{Notice, VmState};
use weles_manager::notices::NoticeHub;
use weles_manager::testing::bank_digest;
use weles_manager::vm::Vm;
use weles_policy::Policy;
use weles_proto::guest::Hello;
use weles_proto::vtpm_events::{self, Event, Message, Record};

#[path = "../tests/support/mod.rs"]
mod support;

const FILES: usize = 1000;

/// An entry's bytes and its template digests (sha1, sha256).
type Measured = (Vec<u8>, [Digest; 2]);

/// A policy of FILES files, and the ima-ng entry of each.
fn workload() -> (Arc<Policy>, Vec<Measured>) {
    let mut toml = String::from(
        "schema = 1\nversion = 1\n[ima]\ntemplates = [\"ima-ng\"]\ndigest_algorithms = [\"sha256\"]\n[ima.digests]\n",
    );
    let mut entries = Vec::new();
    for i in 0..FILES {
        let path = format!("/usr/lib/app/module-{i:04}.so");
        let digest = Bank::Sha256.hash(&[path.as_bytes()]);
        toml.push_str(&format!("\"{path}\" = [\"sha256:{}\"]\n", digest.to_hex()));
        let data = template_data(
            ByteOrder::Little,
            &[
                &d_ng(HashAlgorithm::Sha256, digest.as_bytes()),
                &n_ng(path.as_bytes()),
            ],
        );
        let mut raw = Vec::new();
        binary_entry(&mut raw, ByteOrder::Little, 10, "ima-ng", &data, false);
        let digests = [Bank::Sha1.hash(&[&data]), Bank::Sha256.hash(&[&data])];
        entries.push((raw, digests));
    }
    let policy = Policy::load(toml.as_bytes(), "bench policy").expect("bench policy");
    (Arc::new(policy), entries)
}

fn unlisted() -> Measured {
    let data = template_data(
        ByteOrder::Little,
        &[
            &d_ng(HashAlgorithm::Sha256, &[0x66; 32]),
            &n_ng(b"/tmp/miner"),
        ],
    );
    let mut raw = Vec::new();
    binary_entry(&mut raw, ByteOrder::Little, 10, "ima-ng", &data, false);
    (
        raw,
        [Bank::Sha1.hash(&[&data]), Bank::Sha256.hash(&[&data])],
    )
}

/// One simulated VM: its manager-side object and what its vTPM and guest have done.
struct SimVm {
    vm: Arc<Vm>,
    pcrs: [Digest; 2],
    seq: u64,
    offset: u64,
}

impl SimVm {
    fn boot(name: &str, hub: &Arc<NoticeHub>, policy: &Arc<Policy>) -> SimVm {
        let vm = Vm::new(name, hub.clone());
        vm.set_policy(policy.clone());
        vm.on_vtpm(&Record {
            seq: 1,
            time_ms: 1,
            event: Event::Startup { clear: true },
        });
        vm.on_hello(&Hello {
            version: 1,
            boot_id: format!("{name}-boot"),
            agent: "bench".into(),
        });
        SimVm {
            vm,
            pcrs: [Bank::Sha1.zero(), Bank::Sha256.zero()],
            seq: 1,
            offset: 0,
        }
    }

    /// The kernel logs the entry and extends; the manager gets the extend event (a JSON frame,
    /// decoded here as the vTPM link does) and the log bytes.
    fn measure(&mut self, raw: &[u8], digests: &[Digest; 2]) {
        self.seq += 1;
        for (i, b) in [Bank::Sha1, Bank::Sha256].iter().enumerate() {
            self.pcrs[i] = b.extend(&self.pcrs[i], &digests[i]);
        }
        let frame = vtpm_events::frame(&Message::Event(Record {
            seq: self.seq,
            time_ms: 0,
            event: Event::Extend {
                pcr: 10,
                digests: digests.iter().map(bank_digest).collect(),
                pcrs: self.pcrs.iter().map(bank_digest).collect(),
            },
        }));
        self.vm.on_log(self.offset, raw);
        self.offset += raw.len() as u64;
        if let Ok(Some(Message::Event(r))) = vtpm_events::read_frame::<Message>(&mut &frame[..]) {
            self.vm.on_vtpm(&r);
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn capacity(vms: usize, rounds: usize) {
    let (policy, entries) = workload();
    let hub = Arc::new(NoticeHub::new(65_536));
    let before = rss_kib();
    let mut sims: Vec<SimVm> = (0..vms)
        .map(|i| SimVm::boot(&format!("vm-{i}"), &hub, &policy))
        .collect();
    // Warm up: every VM compliant with a few entries.
    for (i, s) in sims.iter_mut().enumerate() {
        let (raw, d) = &entries[i % FILES];
        s.measure(raw, d);
    }
    let t = Instant::now();
    let mut n = 0u64;
    for r in 0..rounds {
        for (i, s) in sims.iter_mut().enumerate() {
            let (raw, d) = &entries[(i * 7 + r) % FILES];
            s.measure(raw, d);
            n += 1;
        }
    }
    let elapsed = t.elapsed();
    let after = rss_kib();
    let compliant = sims
        .iter()
        .filter(|s| {
            s.vm.status()
                .is_some_and(|st| st.state == VmState::Compliant)
        })
        .count();
    assert_eq!(compliant, vms, "every VM stays compliant");
    let us = elapsed.as_secs_f64() * 1e6 / n as f64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "capacity",
            "vms": vms,
            "entries": n,
            "us_per_entry": (us * 100.0).round() / 100.0,
            "entries_per_s_one_core": (1e6 / us).round(),
            "vms_at_100_per_s_one_core": (1e4 / us).round(),
            "rss_kib_per_vm": (after.saturating_sub(before) as f64 / vms as f64).round(),
        })
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn load(vms: usize, rate: u64, seconds: u64) {
    let (policy, entries) = workload();
    let bad = unlisted();
    let hub = Arc::new(NoticeHub::new(1 << 20));
    let mut sims: Vec<SimVm> = (0..vms)
        .map(|i| SimVm::boot(&format!("vm-{i}"), &hub, &policy))
        .collect();
    // Entries are due evenly spread: VM i's k-th entry at (k + i / vms) / rate seconds.
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut latencies = Vec::new();
    let mut next_violation = start + Duration::from_millis(50);
    let mut victim = 0usize;
    let mut k = 0u64;
    let mut done = 0u64;
    let mut behind_max = Duration::ZERO;
    while Instant::now() < end {
        for (i, s) in sims.iter_mut().enumerate() {
            let due = start + period.mul_f64(k as f64 + i as f64 / vms as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else {
                behind_max = behind_max.max(now - due);
            }
            if i == victim && due >= next_violation {
                let seen = hub.last_seq();
                s.measure(&bad.0, &bad.1);
                let batch = hub.read_after(seen, Duration::ZERO);
                if batch
                    .records
                    .iter()
                    .any(|r| r.vm == s.vm.id && matches!(r.notice, Notice::Violation(_)))
                {
                    latencies.push(due.elapsed().as_secs_f64() * 1e3);
                }
                // Reboot the victim so it can be violated again later.
                *s = SimVm::boot(&s.vm.id.clone(), &hub, &policy);
                victim = (victim + 97) % vms;
                next_violation += Duration::from_millis(50);
            } else {
                let (raw, d) = &entries[(i + k as usize) % FILES];
                s.measure(raw, d);
            }
            done += 1;
        }
        k += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "bench": "load",
            "vms": vms,
            "rate_per_vm": rate,
            "entries_per_s": (done as f64 / secs).round(),
            "target_entries_per_s": vms as u64 * rate,
            "violations": latencies.len(),
            "detect_ms_p50": (percentile(&latencies, 0.5) * 1000.0).round() / 1000.0,
            "detect_ms_p99": (percentile(&latencies, 0.99) * 1000.0).round() / 1000.0,
            "detect_ms_max": (latencies.last().copied().unwrap_or(f64::NAN) * 1000.0).round() / 1000.0,
            "max_behind_ms": (behind_max.as_secs_f64() * 1e6).round() / 1e3,
        })
    );
}

fn live(samples: usize, poll_ms: u64) {
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    use support::{Kill, bin, split};
    use weles_manager::guest_link::GuestLink;
    use weles_manager::vtpm_link::VtpmLink;

    let dir = std::env::temp_dir().join(format!("weles-bench-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _vtpm = support::spawn_vtpm(&dir);
    let (data_sock, ctrl, events) = (
        dir.join("data.sock"),
        dir.join("ctrl.sock"),
        dir.join("events.sock"),
    );
    let hub = Arc::new(NoticeHub::new(65_536));
    let vm = Vm::new("live", hub.clone());
    vm.set_policy(support::policy());
    let _vlink = VtpmLink::spawn(vm.clone(), events);
    let _glink = GuestLink::bind(vm.clone(), &dir.join("guest.sock")).expect("guest socket");
    let log_path = dir.join("log");
    let real = split(&support::real_log());
    let (miner, miner_raw) = split(&support::unlisted_entry()).remove(0);
    let mut latencies = Vec::new();
    let mut data = UnixStream::connect(&data_sock).expect("data");
    for n in 0..samples {
        // A new boot: TPM reset, empty log, a new agent.
        let _ = data.shutdown(std::net::Shutdown::Both);
        data = support::power_on(&ctrl, &data_sock);
        std::fs::write(&log_path, b"").expect("log");
        std::fs::write(dir.join("boot_id"), format!("boot-{n}")).expect("boot id");
        let _guest = Kill(
            Command::new(bin("weles-guest"))
                .arg("--channel")
                .arg(dir.join("guest.sock"))
                .arg("--ima-log")
                .arg(&log_path)
                .arg("--tpm")
                .arg(dir.join("no-tpm"))
                .arg("--boot-id-file")
                .arg(dir.join("boot_id"))
                .args(["--poll-ms", &poll_ms.to_string()])
                .stderr(Stdio::null())
                .spawn()
                .expect("weles-guest"),
        );
        for (e, raw) in &real {
            support::measure(&log_path, &mut data, e, raw, true, true);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vm
            .status()
            .is_some_and(|s| s.state == VmState::Compliant && s.entries == 9)
        {
            assert!(
                Instant::now() < deadline,
                "never compliant: {:?}",
                vm.status()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let seen = hub.last_seq();
        let t = Instant::now();
        support::measure(&log_path, &mut data, &miner, &miner_raw, true, true);
        'wait: loop {
            let batch = hub.read_after(seen, Duration::from_secs(5));
            assert!(!batch.records.is_empty(), "no violation within 5 s");
            for r in batch.records {
                if matches!(r.notice, Notice::Violation(_)) {
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                    break 'wait;
                }
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "bench": "live",
            "samples": latencies.len(),
            "guest_poll_ms": poll_ms,
            "detect_ms_p50": (percentile(&latencies, 0.5) * 1000.0).round() / 1000.0,
            "detect_ms_p99": (percentile(&latencies, 0.99) * 1000.0).round() / 1000.0,
            "detect_ms_max": (latencies.last().copied().unwrap_or(f64::NAN) * 1000.0).round() / 1000.0,
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("capacity") => capacity(num(1, 1000) as usize, num(2, 100) as usize),
        Some("load") => load(num(1, 1000) as usize, num(2, 100), num(3, 10)),
        Some("live") => live(num(1, 200) as usize, num(2, 10)),
        _ => eprintln!(
            "usage: bench_monitor capacity VMS ROUNDS | load VMS RATE SECONDS | live SAMPLES POLL_MS"
        ),
    }
}
