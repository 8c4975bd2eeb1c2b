//! The monitor's decisions on a real guest's IMA log (testdata/ima, captured from a Debian 6.1
//! guest) with the vTPM events that log implies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weles_ima::write::{binary_entry, d_ng, n_ng, template_data};
use weles_ima::{ByteOrder, HashAlgorithm, log::parse_all};
use weles_manager::monitor::{Monitor, Notice, PENDING_QUIET, VmState};
use weles_manager::testing::{extend_records, zero_pcrs};
use weles_policy::Policy;
use weles_proto::guest::Hello;
use weles_proto::vtpm_events::{Event, Record};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn real_log() -> Vec<u8> {
    std::fs::read(format!(
        "{ROOT}/testdata/ima/ima-sig-sha256/binary_runtime_measurements"
    ))
    .expect("fixture")
}

fn policy() -> Arc<Policy> {
    let path = format!("{ROOT}/testdata/demo/policy-tolerant.toml");
    Arc::new(Policy::load(&std::fs::read(&path).expect("policy"), &path).expect("valid"))
}

fn hello(boot: &str) -> Hello {
    Hello {
        version: 1,
        boot_id: boot.into(),
        agent: "test".into(),
    }
}

/// TPM2_Startup(CLEAR) at `seq`; its time is `seq` ms, hellos are placed relative to it.
fn startup(seq: u64) -> Record {
    Record {
        seq,
        time_ms: seq,
        event: Event::Startup { clear: true },
    }
}

/// An `ima-ng` entry for a file the policy does not list.
fn unlisted_entry() -> Vec<u8> {
    let mut out = Vec::new();
    let data = template_data(
        ByteOrder::Little,
        &[
            &d_ng(HashAlgorithm::Sha256, &[0x66; 32]),
            &n_ng(b"/usr/local/bin/miner"),
        ],
    );
    binary_entry(&mut out, ByteOrder::Little, 10, "ima-ng", &data, false);
    out
}

fn states(notices: &[Notice]) -> Vec<VmState> {
    notices
        .iter()
        .filter_map(|n| match n {
            Notice::State { to, .. } => Some(*to),
            Notice::Violation(_) => None,
        })
        .collect()
}

/// A booted monitor with a policy and an agent: everything before the log arrives.
fn booted(records: &[Record], t: Instant) -> Monitor {
    let mut m = Monitor::new();
    m.set_policy(policy(), t);
    m.on_vtpm(&startup(1), t);
    for r in records {
        m.on_vtpm(r, t);
    }
    let step = m.on_hello(&hello("boot-1"), 10, t);
    assert_eq!(step.want, Some(0), "a new agent is asked for the whole log");
    m
}

#[test]
fn real_log_delivered_after_its_extends_is_compliant() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = booted(&records, t);
    assert_eq!(m.state(), VmState::Pending, "{:?}", m.status());
    // Delivered in awkward pieces: the monitor reassembles entries.
    let mut notices = Vec::new();
    for (i, chunk) in log.chunks(37).enumerate() {
        notices.extend(m.on_log((i * 37) as u64, chunk, t).notices);
    }
    assert_eq!(states(&notices), [VmState::Compliant]);
    let s = m.status();
    assert_eq!(
        (s.entries, s.extends),
        (entries.len() as u64, entries.len() as u64)
    );
}

#[test]
fn log_may_lead_the_pcr_by_the_extends_in_flight() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = booted(&records[..6], t);
    // The kernel appended all entries but extended only 6 so far.
    let step = m.on_log(0, &log, t);
    assert_eq!(states(&step.notices), [VmState::Compliant]);
    for r in &records[6..] {
        m.on_vtpm(r, t);
        assert_eq!(m.state(), VmState::Compliant);
    }
}

#[test]
fn an_unlisted_file_is_a_violation_naming_entry_path_and_reason_and_sticks() {
    let mut log = real_log();
    let good = log.len();
    log.extend_from_slice(&unlisted_entry());
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = booted(&records[..records.len() - 1], t);
    m.on_log(0, &log[..good], t);
    assert_eq!(m.state(), VmState::Compliant);
    m.on_vtpm(records.last().unwrap(), t);
    let step = m.on_log(good as u64, &log[good..], t);
    let v = step
        .notices
        .iter()
        .find_map(|n| match n {
            Notice::Violation(f) => Some(f.clone()),
            _ => None,
        })
        .expect("a violation notice");
    assert_eq!(v.index, entries.len() as u64 - 1);
    assert_eq!(v.offset, good as u64);
    assert_eq!(v.path, "/usr/local/bin/miner");
    assert_eq!(v.reason, "not_in_policy");
    assert_eq!(
        v.digest.as_deref(),
        Some(&*format!("sha256:{}", "66".repeat(32)))
    );
    assert_eq!(states(&step.notices), [VmState::Violated]);
    // Nothing but a reboot leaves `violated`: not time, not a new agent, not more good news.
    m.on_tick(t + Duration::from_secs(60));
    m.on_hello(&hello("boot-1"), 10, t);
    assert_eq!(m.state(), VmState::Violated);
    assert_eq!(m.status().violation, Some(v));
}

#[test]
fn a_withheld_log_is_pending_then_unverifiable_then_compliant_once_delivered() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = booted(&records, t);
    let half = log.len() / 2;
    let step = m.on_log(0, &log[..half], t);
    assert_eq!(m.state(), VmState::Pending);
    // A short pending is every measurement's lot: announced only once it lasts.
    assert_eq!(states(&step.notices), []);
    assert_eq!(m.deadline(), Some(t + PENDING_QUIET), "the quiet period");
    let step = m.on_tick(t + PENDING_QUIET);
    assert_eq!(states(&step.notices), [VmState::Pending]);
    assert_eq!(
        m.deadline(),
        Some(t + Duration::from_secs(2)),
        "the policy's grace"
    );
    m.on_tick(t + Duration::from_millis(1999));
    assert_eq!(m.state(), VmState::Pending);
    let step = m.on_tick(t + Duration::from_secs(2));
    assert_eq!(states(&step.notices), [VmState::Unverifiable]);
    assert!(
        m.status().reason.contains("guest delivered"),
        "{}",
        m.status().reason
    );
    // Late, but the whole history replays: compliant again.
    m.on_log(half as u64, &log[half..], t + Duration::from_secs(3));
    assert_eq!(m.state(), VmState::Compliant);
}

#[test]
fn a_log_that_catches_up_within_the_quiet_period_makes_no_event() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = booted(&records[..records.len() - 1], t);
    let last = entries.last().unwrap().offset as usize;
    m.on_log(0, &log[..last], t);
    assert_eq!(m.state(), VmState::Compliant);
    // The kernel extends the last entry; its bytes arrive 100 ms later.
    let mut step = m.on_vtpm(records.last().unwrap(), t);
    step.notices
        .extend(m.on_tick(t + Duration::from_millis(50)).notices);
    assert_eq!(m.state(), VmState::Pending, "the status shows it at once");
    step.notices.extend(
        m.on_log(last as u64, &log[last..], t + Duration::from_millis(100))
            .notices,
    );
    assert_eq!(m.state(), VmState::Compliant);
    assert_eq!(
        states(&step.notices),
        [],
        "compliant all along, to the tenant"
    );
    // Unannounced pending that ends in a violation: the tenant hears compliant → violated.
    let mut forged = log.clone();
    let at = forged.len() - 1;
    forged[at] ^= 1;
    let mut m = booted(&records[..records.len() - 1], t);
    m.on_log(0, &forged[..last], t);
    m.on_vtpm(records.last().unwrap(), t);
    let step = m.on_log(last as u64, &forged[last..], t + Duration::from_millis(100));
    assert_eq!(m.state(), VmState::Violated);
    let from: Vec<_> = step
        .notices
        .iter()
        .filter_map(|n| match n {
            Notice::State { from, .. } => Some(*from),
            _ => None,
        })
        .collect();
    assert_eq!(from, [VmState::Compliant]);
}

#[test]
fn a_forged_log_that_does_not_replay_is_violated_at_once() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    // The guest hides its last entry and sends a harmless-looking one in its place.
    let mut forged = log.clone();
    let (_, all) = parse_all(&log, Default::default()).unwrap();
    let last_len: usize = {
        let mut only_last = Vec::new();
        let d = &all[all.len() - 1];
        binary_entry(
            &mut only_last,
            ByteOrder::Little,
            10,
            &d.template_name,
            &d.data,
            false,
        );
        only_last.len()
    };
    forged.truncate(log.len() - last_len);
    let first = &all[1];
    binary_entry(
        &mut forged,
        ByteOrder::Little,
        10,
        &first.template_name,
        &first.data,
        false,
    );
    let t = Instant::now();
    let mut m = booted(&records, t);
    let step = m.on_log(0, &forged, t);
    let reasons: Vec<_> = step
        .notices
        .iter()
        .filter_map(|n| match n {
            Notice::Violation(f) => Some(f.reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["pcr_mismatch"]);
    assert_eq!(m.state(), VmState::Violated);
}

#[test]
fn a_log_claiming_more_than_was_measured_is_violated() {
    let mut log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = booted(&records, t);
    // 300 extra entries the vTPM never saw (beyond any extend in flight).
    for _ in 0..300 {
        let (_, e) = parse_all(&log, Default::default()).unwrap();
        let mut one = Vec::new();
        binary_entry(
            &mut one,
            ByteOrder::Little,
            10,
            &e[1].template_name,
            &e[1].data,
            false,
        );
        log.extend_from_slice(&one);
    }
    let step = m.on_log(0, &log, t);
    assert!(
        step.notices
            .iter()
            .any(|n| matches!(n, Notice::Violation(f) if f.reason == "log_ahead_of_vtpm")),
        "{:?}",
        step.notices
    );
}

#[test]
fn reboot_starts_over_and_ignores_the_previous_boots_agent() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let mut pcrs = zero_pcrs();
    let records = extend_records(&entries, &mut pcrs, 2);
    let t = Instant::now();
    let mut m = booted(&records, t);
    m.on_log(0, &log, t);
    assert_eq!(m.state(), VmState::Compliant);

    let seq = records.last().unwrap().seq + 1;
    let step = m.on_vtpm(&startup(seq), t);
    assert_eq!(states(&step.notices), [VmState::Rebooted]);
    // Bytes from the old agent, and the old agent's hello, change nothing.
    m.on_log(0, &log, t);
    assert_eq!(m.on_hello(&hello("boot-1"), 10, t).want, None);
    assert_eq!(m.state(), VmState::Rebooted);
    let again = extend_records(&entries, &mut zero_pcrs(), seq + 1);
    for r in &again {
        m.on_vtpm(r, t);
    }
    assert_eq!(m.state(), VmState::Rebooted, "no agent yet: not compliant");
    assert_eq!(m.on_hello(&hello("boot-2"), 30, t).want, Some(0));
    m.on_log(0, &log, t);
    assert_eq!(m.state(), VmState::Compliant);
    assert_eq!(m.status().boots, 2);
}

#[test]
fn without_policy_or_with_lost_events_nothing_is_compliant() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = Monitor::new();
    m.on_vtpm(&startup(1), t);
    for r in &records {
        m.on_vtpm(r, t);
    }
    assert_eq!(
        m.on_hello(&hello("b"), 10, t).want,
        None,
        "no policy: no log wanted"
    );
    m.on_log(0, &log, t);
    assert_eq!(m.state(), VmState::Unverifiable);
    assert_eq!(m.status().reason, "no policy uploaded");
    assert_eq!(m.set_policy(policy(), t).want, Some(0));
    m.on_log(0, &log, t);
    assert_eq!(m.state(), VmState::Compliant);
    m.on_vtpm_lost(t);
    assert_eq!(m.state(), VmState::Unverifiable);
    // Replayed events (seq already seen) are ignored, not double-counted.
    m.on_vtpm(&records[0], t);
    assert_eq!(m.status().extends, records.len() as u64);
}

#[test]
fn gaps_and_overlaps_in_delivery_are_handled() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = booted(&records, t);
    m.on_log(0, &log[..100], t);
    assert_eq!(
        m.on_log(200, &log[200..], t).want,
        Some(100),
        "a gap: ask again"
    );
    m.on_log(50, &log[50..], t); // overlaps what it has
    assert_eq!(m.state(), VmState::Compliant);
}

#[test]
fn nothing_is_judged_before_the_vtpm_started_and_late_events_keep_the_current_agent() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = Monitor::new();
    m.set_policy(policy(), t);
    // The agent is faster than the vTPM's event stream (e.g. the manager just reconnected):
    // an empty history must not look like a compliant one.
    m.on_hello(&hello("boot-1"), 10, t);
    m.on_log(0, &log, t);
    assert_eq!(m.state(), VmState::Rebooted);
    assert_eq!(
        m.status().entries,
        0,
        "bytes before the vTPM started are not taken"
    );
    // The startup happened at 1 ms, before the hello: the agent belongs to this boot, and is
    // asked for its log again.
    let step = m.on_vtpm(&startup(1), t);
    assert_eq!(step.want, Some(0));
    for r in &records {
        m.on_vtpm(r, t);
    }
    m.on_log(0, &log, t);
    assert_eq!(m.state(), VmState::Compliant);
}

#[test]
fn a_host_violation_violates_every_boot_or_in_audit_mode_is_only_reported() {
    let log = real_log();
    let (_, entries) = parse_all(&log, Default::default()).unwrap();
    let records = extend_records(&entries, &mut zero_pcrs(), 2);
    let t = Instant::now();
    let mut m = booted(&records, t);
    m.on_log(0, &log, t);
    assert_eq!(m.state(), VmState::Compliant);
    let f = weles_manager::monitor::Finding {
        index: 7,
        offset: 1234,
        path: "host:/etc/weles.conf".into(),
        digest: None,
        reason: "not_in_policy".into(),
        detail: "the host broke its host policy".into(),
    };
    // Audit mode: the tenant hears of it; the VM stays as it is.
    let step = m.on_host_violation(f.clone(), false, t);
    assert!(matches!(step.notices[..], [Notice::Violation(_)]));
    assert_eq!(m.state(), VmState::Compliant);
    // Enforced: violated at once, with the host's finding.
    let step = m.on_host_violation(f.clone(), true, t);
    assert_eq!(states(&step.notices), [VmState::Violated]);
    assert_eq!(m.status().violation.as_ref(), Some(&f));
    // A reboot does not help on that host: the new boot is violated from its start.
    let boots = m.status().boots;
    m.on_vtpm(&startup(records.len() as u64 + 10), t);
    assert_eq!(m.status().boots, boots + 1, "a real reboot");
    assert_eq!(m.state(), VmState::Violated);
    m.on_vtpm_restarted();
    assert_eq!(m.state(), VmState::Violated);
    // And it survives a manager restart through the checkpoint.
    let back = Monitor::restore(&m.checkpoint(), t).unwrap();
    assert_eq!(back.state(), VmState::Violated);
}
