//! The per-VM monitor: one VM's measured history, judged as it grows.
//!
//! Pure logic — no sockets, no clock of its own — so that every transition is unit-testable.
//! Three inputs drive it: the vTPM's events (each PCR 10 extend, each TPM2_Startup), the IMA log
//! bytes the guest delivers, and the passage of time. The guest's bytes are untrusted: they count
//! only once they replay to the PCR values the vTPM reported.
//!
//! The rule that decides between "late" and "forged": IMA extends PCR 10 once per log entry, and
//! the vTPM reports every extend, so the monitor knows exactly how many entries the log must have
//! (`E`, extends since the last TPM2_Startup(CLEAR)). With `n` entries delivered:
//! * `n ≥ E`: the replay after exactly `E` entries must equal the vTPM's PCR in every bank both
//!   sides have. Equal: `compliant` (entries beyond `E` are appraised too; the kernel appends an
//!   entry to the log just before it extends the PCR, so the log may lead by a few). Different: the
//!   log is not the one that was measured — `violated`.
//! * `n < E`: the guest has not delivered everything yet — `pending`, and after the grace period
//!   `unverifiable` (until the log catches up).
//!
//! Invariants: `violated` is left only by a reboot; nothing but a matching replay with no policy
//! finding ever yields `compliant`; anything unknown (lost vTPM events, no policy, no agent) is
//! not `compliant`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weles_ima::{Bank, ByteOrder, Config, Digest, LogFormat, State, Verifier};
use weles_policy::Policy;
use weles_proto::guest::Hello;
use weles_proto::vtpm_events::{BankDigest, Event, Record};

/// The PCR Linux IMA extends.
pub const IMA_PCR: u32 = 10;

/// Extends remembered behind the newest delivered entry (the log may lead the PCR by the
/// extends in flight: a handful; 256 is ample and costs ~40 KiB per VM).
const REPLAY_HISTORY: usize = 256;

/// Violations reported per delivery; the rest are counted.
const MAX_REPORTED: usize = 100;

/// A `pending` shorter than this is not announced. Every measurement passes through it — the
/// vTPM reports the extend before the guest's log bytes arrive — so announcing each would make
/// two events (and audit records, and webhook calls) of every program a VM runs.
pub const PENDING_QUIET: Duration = Duration::from_millis(500);

/// A VM's integrity state. The names are a stable interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// TPM2_Startup(CLEAR) seen: a new boot, waiting for its agent and log.
    Rebooted,
    /// The vTPM has measured entries the guest has not delivered yet (within the grace period).
    Pending,
    /// The whole measured history since boot replays to the vTPM and complies with the policy.
    Compliant,
    /// An entry broke the policy, or the log does not replay to the vTPM. Sticky until reboot.
    Violated,
    /// Compliance cannot be decided: log withheld past the grace period, no policy, lost events.
    Unverifiable,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Rebooted => "rebooted",
            VmState::Pending => "pending",
            VmState::Compliant => "compliant",
            VmState::Violated => "violated",
            VmState::Unverifiable => "unverifiable",
        }
    }
}

/// One reason a VM is violated, located in its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// 0-based entry index (for `pcr_mismatch`: the number of extends checked).
    pub index: u64,
    /// Byte offset of the entry in the log.
    pub offset: u64,
    pub path: String,
    /// `alg:hex`, when the entry has a file digest.
    pub digest: Option<String>,
    /// A `weles ima verify` reason, or `malformed_log` / `log_ahead_of_vtpm`.
    pub reason: String,
    pub detail: String,
}

/// What the monitor reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    State {
        from: VmState,
        to: VmState,
        /// Why the VM is in `to` (empty for `compliant`).
        reason: String,
    },
    Violation(Finding),
}

/// The result of one input.
#[derive(Debug, Default)]
pub struct Step {
    pub notices: Vec<Notice>,
    /// Ask the guest for the log from this byte on.
    pub want: Option<u64>,
}

/// Counters for status displays.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub state: VmState,
    pub reason: String,
    pub policy_version: Option<u64>,
    /// Entries delivered and verified since boot.
    pub entries: u64,
    /// PCR 10 extends the vTPM reported since boot.
    pub extends: u64,
    /// The last vTPM event seen.
    pub vtpm_seq: u64,
    pub boots: u64,
    pub violation: Option<Finding>,
}

pub struct Monitor {
    policy: Option<Arc<Policy>>,
    verifier: Verifier,
    state: VmState,
    reason: String,
    /// PCR 10 extends since the last TPM2_Startup(CLEAR).
    extends: u64,
    /// PCR 10 after those extends, per bank the vTPM reported.
    pcrs: Vec<Digest>,
    /// The last vTPM event sequence number processed.
    vtpm_seq: u64,
    /// vTPM events were lost (or PCR 10 was reset): this boot's history is unknown.
    history_lost: bool,
    /// The vTPM has started (TPM2_Startup(CLEAR) seen): until then nothing is known.
    started: bool,
    /// The boot id of the agent whose bytes count; `None` until its hello.
    boot_id: Option<String>,
    /// When that hello arrived (ms since the epoch, the host's clock — the vTPM's too).
    hello_ms: u64,
    /// A boot id that must *not* be accepted (the agent of the boot before the last reboot).
    stale_boot_id: Option<String>,
    pending_since: Option<Instant>,
    /// In `pending` that has not been announced yet: the state the tenant last heard of.
    quiet_pending_from: Option<VmState>,
    /// The host this VM runs on broke its host policy (enforced): no boot of this VM is
    /// compliant on it.
    host_violation: Option<Finding>,
    violation: Option<Finding>,
    boots: u64,
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new()
    }
}

impl Monitor {
    /// A monitor for a VM that has not started yet.
    pub fn new() -> Self {
        Monitor {
            policy: None,
            verifier: new_verifier(),
            state: VmState::Rebooted,
            reason: "waiting for the vTPM to start".into(),
            extends: 0,
            pcrs: Vec::new(),
            vtpm_seq: 0,
            history_lost: false,
            started: false,
            boot_id: None,
            hello_ms: 0,
            stale_boot_id: None,
            pending_since: None,
            quiet_pending_from: None,
            host_violation: None,
            violation: None,
            boots: 0,
        }
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    /// The policy in force.
    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.policy.clone()
    }

    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            reason: self.reason.clone(),
            policy_version: self.policy.as_ref().map(|p| p.version),
            entries: self.verifier.state().entries,
            extends: self.extends,
            vtpm_seq: self.vtpm_seq,
            boots: self.boots,
            violation: self.violation.clone(),
        }
    }

    /// The sequence number to resume the vTPM event stream after.
    pub fn vtpm_seq(&self) -> u64 {
        self.vtpm_seq
    }

    /// The byte of the log the monitor needs next.
    pub fn log_offset(&self) -> u64 {
        self.verifier.state().offset + self.verifier.pending_bytes() as u64
    }

    /// Installs a (newer) policy. It judges entries delivered from now on; history already
    /// judged stays judged. The first policy starts the log stream.
    pub fn set_policy(&mut self, policy: Arc<Policy>, now: Instant) -> Step {
        let first = self.policy.is_none();
        self.policy = Some(policy);
        let mut step = Step::default();
        if first && self.boot_id.is_some() {
            step.want = Some(self.log_offset());
        }
        self.evaluate(now, &mut step);
        step
    }

    /// One record from the vTPM's event socket.
    pub fn on_vtpm(&mut self, record: &Record, now: Instant) -> Step {
        let mut step = Step::default();
        if record.seq != 0 && record.seq <= self.vtpm_seq {
            return step; // a replay after a reconnect
        }
        self.vtpm_seq = record.seq;
        match &record.event {
            Event::Startup { clear: true } => self.reboot(record.time_ms, &mut step),
            Event::Extend { pcr, pcrs, .. } if *pcr == IMA_PCR => {
                self.extends += 1;
                match parse_pcrs(pcrs) {
                    Some(p) => self.pcrs = p,
                    None => {
                        self.history_lost = true;
                        self.reason = "the vTPM reported a PCR 10 value that cannot be read".into();
                    }
                }
            }
            Event::Reset { pcr, .. } if *pcr == IMA_PCR => {
                self.history_lost = true;
            }
            Event::Stop => {
                self.set_state(
                    VmState::Unverifiable,
                    "the vTPM stopped (the VM is off)",
                    &mut step,
                );
                return step;
            }
            _ => {}
        }
        self.evaluate(now, &mut step);
        step
    }

    /// A new vTPM process started (the VM was powered off and is starting again): its events are
    /// numbered from 1, and nothing is known until its TPM2_Startup(CLEAR).
    pub fn on_vtpm_restarted(&mut self) -> Step {
        self.vtpm_seq = 0;
        self.started = false;
        let mut step = Step::default();
        self.set_state(
            VmState::Rebooted,
            "the vTPM (re)started; waiting for the VM to start",
            &mut step,
        );
        self.enforce_host_violation(&mut step);
        step
    }

    /// A new boot on a host that broke its host policy is violated from its start.
    fn enforce_host_violation(&mut self, step: &mut Step) {
        if let Some(f) = self.host_violation.clone() {
            self.violate(f, step);
        }
    }

    /// The host broke its host policy. Enforced: the VM is `violated` (this boot and every
    /// later one, for as long as this manager runs on that host); otherwise: a notice only.
    pub fn on_host_violation(&mut self, f: Finding, enforce: bool, now: Instant) -> Step {
        let mut step = Step::default();
        if !enforce {
            step.notices.push(Notice::Violation(f));
            return step;
        }
        if self.host_violation.is_none() {
            self.host_violation = Some(f);
            self.evaluate(now, &mut step);
        }
        step
    }

    /// The vTPM event stream skipped events: the history of this boot is unknown until the
    /// next reboot.
    pub fn on_vtpm_lost(&mut self, now: Instant) -> Step {
        self.history_lost = true;
        let mut step = Step::default();
        self.evaluate(now, &mut step);
        step
    }

    /// The agent announced itself; `arrived_ms` is the host's wall clock (ms since the epoch),
    /// the clock the vTPM stamps its events with: it places the hello before or after a reboot
    /// even when the vTPM's events are read late (a backlog after a reconnect).
    pub fn on_hello(&mut self, hello: &Hello, arrived_ms: u64, now: Instant) -> Step {
        let mut step = Step::default();
        if self.stale_boot_id.as_deref() == Some(hello.boot_id.as_str()) {
            // The agent of the boot before the reboot: its bytes belong to a history that ended.
            return step;
        }
        // A new boot id without a TPM2_Startup(CLEAR) in between (the guest claims a reboot the
        // vTPM did not see) changes nothing: the history goes on and the bytes must still replay.
        self.boot_id = Some(hello.boot_id.clone());
        self.hello_ms = arrived_ms;
        if self.policy.is_some() {
            step.want = Some(self.log_offset());
        }
        self.evaluate(now, &mut step);
        step
    }

    /// Log bytes from the agent, starting at byte `offset` of its log.
    pub fn on_log(&mut self, offset: u64, bytes: &[u8], now: Instant) -> Step {
        let mut step = Step::default();
        let Some(policy) = self.policy.clone() else {
            return step;
        };
        if !self.started || self.boot_id.is_none() || self.state == VmState::Violated {
            return step;
        }
        let expected = self.log_offset();
        let end = offset.saturating_add(bytes.len() as u64);
        if offset > expected {
            // A gap: ask again from where we are.
            step.want = Some(expected);
            return step;
        }
        if end <= expected {
            return step; // already have these bytes
        }
        let fresh = &bytes[(expected - offset) as usize..];
        let result = self.verifier.feed(fresh, policy.as_ref());
        let found = self.verifier.take_violations();
        let total = found.len();
        for v in found.into_iter().take(MAX_REPORTED) {
            let f = Finding {
                index: v.index,
                offset: v.offset,
                path: v.path,
                digest: v.digest,
                reason: v.reason.as_str().to_owned(),
                detail: v.detail,
            };
            self.violate(f, &mut step);
        }
        if total > MAX_REPORTED {
            let more = total - MAX_REPORTED;
            self.reason = format!("{} (and {more} more findings)", self.reason);
        }
        if let Err(e) = result {
            let f = Finding {
                index: self.verifier.state().entries,
                offset: self.verifier.state().offset,
                path: String::new(),
                digest: None,
                reason: "malformed_log".into(),
                detail: e.to_string(),
            };
            self.violate(f, &mut step);
        }
        self.evaluate(now, &mut step);
        step
    }

    /// Time passed: ends grace periods.
    pub fn on_tick(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        if self.pending_since.is_some() {
            self.evaluate(now, &mut step);
        }
        step
    }

    fn grace(&self) -> Duration {
        self.policy
            .as_ref()
            .map_or(Duration::from_secs(2), |p| p.pending_grace)
    }

    fn reboot(&mut self, at_ms: u64, step: &mut Step) {
        self.boots += 1;
        self.started = true;
        self.verifier = new_verifier();
        self.extends = 0;
        self.pcrs = Vec::new();
        self.history_lost = false;
        self.violation = None;
        self.pending_since = None;
        // An agent that said hello before this reboot belongs to the boot that ended; one that
        // said hello after it (its events read late) belongs to this one.
        if self.boot_id.is_some() && self.hello_ms < at_ms {
            self.stale_boot_id = self.boot_id.take();
        }
        let fresh_agent = self.boot_id.is_some();
        // Leaving `violated` is allowed here and only here. `evaluate` moves on once the new
        // boot's agent shows up.
        self.set_state(
            VmState::Rebooted,
            "the VM rebooted (TPM2_Startup(CLEAR)); waiting for its agent",
            step,
        );
        if fresh_agent && self.policy.is_some() {
            step.want = Some(0);
        }
        self.enforce_host_violation(step);
    }

    fn violate(&mut self, f: Finding, step: &mut Step) {
        if self.violation.is_none() {
            self.violation = Some(f.clone());
        }
        step.notices.push(Notice::Violation(f.clone()));
        let reason = format!("{} at entry {} ({})", f.reason, f.index, f.path);
        self.pending_since = None;
        self.set_state(VmState::Violated, &reason, step);
    }

    /// Decides the state from what is known now.
    fn evaluate(&mut self, now: Instant, step: &mut Step) {
        if self.state == VmState::Violated {
            return;
        }
        if let Some(f) = self.host_violation.clone() {
            return self.violate(f, step);
        }
        if self.history_lost {
            self.pending_since = None;
            return self.set_state(
                VmState::Unverifiable,
                "vTPM events of this boot were lost: its history is unknown until it reboots",
                step,
            );
        }
        if !self.started {
            return; // `rebooted`, waiting for the vTPM to start
        }
        if self.policy.is_none() {
            return self.set_state(VmState::Unverifiable, "no policy uploaded", step);
        }
        if self.boot_id.is_none() {
            if self.state == VmState::Rebooted {
                return;
            }
            return self.set_state(VmState::Rebooted, "waiting for the guest agent", step);
        }
        let delivered = self.verifier.state().extends;
        if delivered >= self.extends {
            self.pending_since = None;
            let Some(replay) = self.verifier.replay_after(self.extends) else {
                let f = Finding {
                    index: self.extends,
                    offset: self.verifier.state().offset,
                    path: format!("PCR{IMA_PCR}"),
                    digest: None,
                    reason: "log_ahead_of_vtpm".into(),
                    detail: format!(
                        "the log has {delivered} entries but the vTPM measured only {}",
                        self.extends
                    ),
                };
                return self.violate(f, step);
            };
            match compare(replay, &self.pcrs, self.extends) {
                Ok(()) => self.set_state(VmState::Compliant, "", step),
                Err(detail) => {
                    let f = Finding {
                        index: self.extends,
                        offset: self.verifier.state().offset,
                        path: format!("PCR{IMA_PCR}"),
                        digest: None,
                        reason: "pcr_mismatch".into(),
                        detail,
                    };
                    self.violate(f, step);
                }
            }
        } else {
            let since = *self.pending_since.get_or_insert(now);
            let grace = self.grace();
            let reason = format!(
                "the vTPM measured {} entries, the guest delivered {delivered}",
                self.extends
            );
            if now.saturating_duration_since(since) >= grace {
                self.set_state(
                    VmState::Unverifiable,
                    &format!("{reason} (grace of {} ms passed)", grace.as_millis()),
                    step,
                );
            } else if self.state != VmState::Unverifiable {
                // Once unverifiable, only catching up (above) makes it compliant again.
                self.set_state(VmState::Pending, &reason, step);
                if now.saturating_duration_since(since) >= PENDING_QUIET
                    && let Some(from) = self.quiet_pending_from.take()
                {
                    step.notices.push(Notice::State {
                        from,
                        to: VmState::Pending,
                        reason,
                    });
                }
            }
        }
    }

    /// Moves to `to`; the change is a notice unless it enters `pending` (announced only once it
    /// lasts [`PENDING_QUIET`]) or leaves an unannounced `pending` for the state it came from.
    fn set_state(&mut self, to: VmState, reason: &str, step: &mut Step) {
        let from = self.state;
        self.state = to;
        self.reason = reason.to_owned();
        if from == to {
            return;
        }
        if to == VmState::Pending {
            self.quiet_pending_from = Some(from);
            return;
        }
        let from = self.quiet_pending_from.take().unwrap_or(from);
        if from != to {
            step.notices.push(Notice::State {
                from,
                to,
                reason: reason.to_owned(),
            });
        }
    }

    /// When the monitor next needs [`Monitor::on_tick`].
    pub fn deadline(&self) -> Option<Instant> {
        let since = self
            .pending_since
            .filter(|_| self.state == VmState::Pending)?;
        let grace = self.grace();
        Some(if self.quiet_pending_from.is_some() {
            since + grace.min(PENDING_QUIET)
        } else {
            since + grace
        })
    }
}

/// Everything a restarted manager needs to go on where the monitor was (recorded in the audit
/// log with each notice). The replay history is not kept: the vTPM's events and the guest's log
/// after the checkpoint are simply delivered again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub state: VmState,
    pub reason: String,
    pub vtpm_seq: u64,
    pub started: bool,
    pub history_lost: bool,
    pub boot_id: Option<String>,
    pub hello_ms: u64,
    pub stale_boot_id: Option<String>,
    pub extends: u64,
    /// The vTPM's PCR 10, `alg:hex` per bank.
    pub pcrs: Vec<String>,
    /// `binary-le`, `binary-be`, `ascii`.
    pub log_format: Option<String>,
    pub log_entries: u64,
    pub log_extends: u64,
    pub log_offset: u64,
    pub log_pcrs: Vec<String>,
    pub violation: Option<Finding>,
    pub boots: u64,
    pub pending: bool,
    /// In a `pending` not yet announced: the state the tenant last heard of.
    #[serde(default)]
    pub quiet_pending_from: Option<VmState>,
    /// The host's violation, when it is enforced on this VM.
    #[serde(default)]
    pub host_violation: Option<Finding>,
}

fn digest_text(d: &Digest) -> String {
    format!("{}:{}", d.algorithm().name(), d.to_hex())
}

impl Monitor {
    pub fn checkpoint(&self) -> Checkpoint {
        let st = self.verifier.state();
        Checkpoint {
            state: self.state,
            reason: self.reason.clone(),
            vtpm_seq: self.vtpm_seq,
            started: self.started,
            history_lost: self.history_lost,
            boot_id: self.boot_id.clone(),
            hello_ms: self.hello_ms,
            stale_boot_id: self.stale_boot_id.clone(),
            extends: self.extends,
            pcrs: self.pcrs.iter().map(digest_text).collect(),
            log_format: st.format.map(|f| {
                match f {
                    LogFormat::Binary(ByteOrder::Little) => "binary-le",
                    LogFormat::Binary(ByteOrder::Big) => "binary-be",
                    LogFormat::Ascii(_) => "ascii",
                }
                .to_owned()
            }),
            log_entries: st.entries,
            log_extends: st.extends,
            log_offset: st.offset,
            log_pcrs: st.pcrs.iter().map(digest_text).collect(),
            violation: self.violation.clone(),
            boots: self.boots,
            pending: self.pending_since.is_some(),
            quiet_pending_from: self.quiet_pending_from,
            host_violation: self.host_violation.clone(),
        }
    }

    /// A monitor that goes on from `cp`; a pending grace period starts again at `now`.
    pub fn restore(cp: &Checkpoint, now: Instant) -> Result<Monitor, String> {
        let parse = |v: &[String]| -> Result<Vec<Digest>, String> {
            v.iter()
                .map(|t| Digest::parse(t).map_err(|e| format!("checkpoint digest {t:?}: {e}")))
                .collect()
        };
        let format = match cp.log_format.as_deref() {
            None => None,
            Some("binary-le") => Some(LogFormat::Binary(ByteOrder::Little)),
            Some("binary-be") => Some(LogFormat::Binary(ByteOrder::Big)),
            Some("ascii") => Some(LogFormat::Ascii(ByteOrder::Little)),
            Some(other) => return Err(format!("checkpoint log format {other:?}")),
        };
        let verifier = Verifier::resume(
            verifier_config(),
            State {
                format,
                entries: cp.log_entries,
                extends: cp.log_extends,
                offset: cp.log_offset,
                pcrs: parse(&cp.log_pcrs)?,
            },
        );
        Ok(Monitor {
            policy: None,
            verifier,
            state: cp.state,
            reason: cp.reason.clone(),
            extends: cp.extends,
            pcrs: parse(&cp.pcrs)?,
            vtpm_seq: cp.vtpm_seq,
            history_lost: cp.history_lost,
            started: cp.started,
            boot_id: cp.boot_id.clone(),
            hello_ms: cp.hello_ms,
            stale_boot_id: cp.stale_boot_id.clone(),
            pending_since: cp.pending.then_some(now),
            quiet_pending_from: cp.quiet_pending_from,
            host_violation: cp.host_violation.clone(),
            violation: cp.violation.clone(),
            boots: cp.boots,
        })
    }
}

fn verifier_config() -> Config {
    Config {
        banks: vec![Bank::Sha1, Bank::Sha256],
        replay_history: REPLAY_HISTORY,
        ..Config::default()
    }
}

fn new_verifier() -> Verifier {
    Verifier::new(verifier_config())
}

fn parse_pcrs(pcrs: &[BankDigest]) -> Option<Vec<Digest>> {
    pcrs.iter()
        .map(|p| Digest::parse(&format!("{}:{}", p.bank, p.hex)).ok())
        .collect()
}

/// Every bank both the replay and the vTPM have must agree; at least one must exist. Before the
/// first extend the vTPM's PCR is all zeros, which the empty replay equals.
fn compare(replay: &[Digest], vtpm: &[Digest], extends: u64) -> Result<(), String> {
    if extends == 0 && vtpm.is_empty() {
        return Ok(());
    }
    let mut common = 0;
    for want in vtpm {
        if let Some(got) = replay.iter().find(|d| d.algorithm() == want.algorithm()) {
            common += 1;
            if got != want {
                return Err(format!(
                    "after {extends} extends the log replays to {} but the vTPM's PCR {IMA_PCR} is {}",
                    got.to_hex(),
                    want.to_hex()
                ));
            }
        }
    }
    if common == 0 {
        return Err("the vTPM reported no PCR bank the monitor replays (sha1, sha256)".into());
    }
    Ok(())
}
