//! Verification of a measurement list: template hashes, PCR replay, PCR matching, appraisal.
//!
//! [`Verifier`] is incremental. It consumes log bytes as they arrive (whole files or a stream of
//! appended tails), keeps only a [`State`] — entries seen, bytes consumed, the running PCR value
//! per bank — and can be rebuilt from a saved `State` to verify just the new tail.
//!
//! PCR matching follows the kernel's ordering: IMA appends to the log *before* it extends the
//! TPM, so a PCR read may lag the log. An expected PCR value therefore matches if the replay
//! equals it after *any* prefix of the log, including the empty prefix. Entries after the match
//! are still appraised; they are simply not yet attested by that PCR value.

use crate::binary::Limits;
use crate::digest::{Bank, Digest};
use crate::entry::Entry;
use crate::error::ParseError;
use crate::log::{LogFormat, Reader};

/// Why an entry (or the log) does not comply. The names are a stable interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The path is not in the policy and not excluded.
    NotInPolicy,
    /// The path is in the policy but with other digests (or a forbidden algorithm).
    DigestMismatch,
    /// The logged template hash is not the hash of the entry's data: the log was altered.
    TemplateHashMismatch,
    /// A signature field did not verify with any trusted key.
    BadSignature,
    /// The log does not replay to an expected PCR value at any prefix.
    PcrMismatch,
    /// A ToMToU / open-writers violation entry, not tolerated by the policy.
    ViolationEntry,
    /// A template (or field content) this verifier cannot judge.
    UnsupportedTemplate,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::NotInPolicy,
        Reason::DigestMismatch,
        Reason::TemplateHashMismatch,
        Reason::BadSignature,
        Reason::PcrMismatch,
        Reason::ViolationEntry,
        Reason::UnsupportedTemplate,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NotInPolicy => "not_in_policy",
            Reason::DigestMismatch => "digest_mismatch",
            Reason::TemplateHashMismatch => "template_hash_mismatch",
            Reason::BadSignature => "bad_signature",
            Reason::PcrMismatch => "pcr_mismatch",
            Reason::ViolationEntry => "violation_entry",
            Reason::UnsupportedTemplate => "unsupported_template",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy's judgement of one entry that does not comply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub reason: Reason,
    /// Human detail: which digest, which key, which rule.
    pub detail: String,
}

impl Finding {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Finding {
            reason,
            detail: detail.into(),
        }
    }
}

/// Decides whether one entry complies. Implemented by the tenant policy.
///
/// The verifier calls it for every entry whose template it could decode and whose template hash
/// is right, including violation entries (the policy decides whether to tolerate them).
pub trait Appraise {
    fn appraise(&self, entry: &Entry<'_>) -> Result<(), Finding>;
}

/// Accepts everything: for replay-only checks.
pub struct AcceptAll;

impl Appraise for AcceptAll {
    fn appraise(&self, _: &Entry<'_>) -> Result<(), Finding> {
        Ok(())
    }
}

/// One non-compliance, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// 0-based entry index (for `pcr_mismatch`: the number of entries, i.e. one past the last).
    pub index: u64,
    /// Byte offset of the entry in the log.
    pub offset: u64,
    /// The entry's path, lossily decoded (for `pcr_mismatch`: `PCR10:<bank>`).
    pub path: String,
    pub reason: Reason,
    /// The entry's file digest as `alg:hex`, if it has one.
    pub digest: Option<String>,
    pub detail: String,
}

/// Verifier settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Banks to replay. Banks with an expected value are added automatically.
    pub banks: Vec<Bank>,
    /// The PCR IMA extends (10 unless the IMA policy uses `pcr=`).
    pub pcr_index: u32,
    pub limits: Limits,
    /// Keep at most this many violations in memory; the rest are only counted.
    pub max_violations: usize,
    /// Bytes of log per work unit in [`crate::verify_parallel`].
    pub chunk_bytes: usize,
    /// Keep the replayed PCR values after each of the last this-many extends, so that a PCR value
    /// read *after* the log was fed can be located ([`Verifier::replay_after`]). 0: keep none.
    pub replay_history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            banks: vec![Bank::Sha1, Bank::Sha256],
            pcr_index: 10,
            limits: Limits::default(),
            max_violations: 10_000,
            chunk_bytes: 128 * 1024,
            replay_history: 0,
        }
    }
}

/// Everything needed to resume verification at the end of the consumed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The log's format, once known.
    pub format: Option<LogFormat>,
    /// Entries consumed.
    pub entries: u64,
    /// Entries consumed that extend the verified PCR: each one is one TPM extend of it.
    pub extends: u64,
    /// Bytes of the log consumed (the offset the next entry starts at).
    pub offset: u64,
    /// Running PCR value per replayed bank after `entries` entries.
    pub pcrs: Vec<Digest>,
}

impl State {
    /// The state of a fresh log: nothing consumed, every bank's PCR at zero.
    pub fn new(banks: &[Bank]) -> Self {
        State {
            format: None,
            entries: 0,
            extends: 0,
            offset: 0,
            pcrs: banks.iter().map(|b| b.zero()).collect(),
        }
    }

    /// The running PCR value of `bank`, if it is replayed.
    pub fn pcr(&self, bank: Bank) -> Option<&Digest> {
        self.pcrs.iter().find(|d| d.algorithm() == bank.algorithm())
    }
}

/// Outcome of matching one expected PCR value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankMatch {
    pub bank: Bank,
    pub expected: Digest,
    /// Length of the prefix whose replay equals `expected` (the last such prefix seen).
    pub matched_at: Option<u64>,
}

/// Incremental verifier; see the module documentation.
pub struct Verifier {
    config: Config,
    banks: Vec<Bank>,
    state: State,
    expected: Vec<BankMatch>,
    violations: Vec<Violation>,
    violations_total: u64,
    /// Bytes of an incomplete trailing entry, kept until the rest arrives.
    pending: Vec<u8>,
    /// `(extends, pcrs)` after each of the last `config.replay_history` extends, oldest first.
    history: std::collections::VecDeque<(u64, Vec<Digest>)>,
}

impl Verifier {
    /// A verifier for a new log.
    pub fn new(config: Config) -> Self {
        let banks = normalise_banks(&config.banks);
        let state = State::new(&banks);
        Verifier {
            config,
            banks,
            state,
            expected: Vec::new(),
            violations: Vec::new(),
            violations_total: 0,
            pending: Vec::new(),
            history: std::collections::VecDeque::new(),
        }
    }

    /// A verifier continuing from a saved state. Banks come from the state.
    pub fn resume(mut config: Config, state: State) -> Self {
        config.banks = state
            .pcrs
            .iter()
            .filter_map(|d| d.algorithm().bank())
            .collect();
        let mut v = Verifier::new(config);
        v.state = state;
        v
    }

    /// Expects the PCR of `bank` to reach `value` at some prefix from the current one on.
    /// Replaces an earlier expectation for the same bank.
    pub fn expect_pcr(&mut self, value: Digest) -> Result<(), UnsupportedBank> {
        let bank = value.algorithm().bank().ok_or(UnsupportedBank(value))?;
        if !self.banks.contains(&bank) {
            if self.state.entries > 0 {
                // We cannot replay a bank we did not track from the start.
                return Err(UnsupportedBank(value));
            }
            self.banks.push(bank);
            self.banks.sort();
            self.state = State {
                pcrs: self.banks.iter().map(|b| b.zero()).collect(),
                ..self.state.clone()
            };
        }
        self.expected.retain(|m| m.bank != bank);
        let matched_at = (self.state.pcr(bank) == Some(&value)).then_some(self.state.entries);
        self.expected.push(BankMatch {
            bank,
            expected: value,
            matched_at,
        });
        Ok(())
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Expected PCR values and where each matched.
    pub fn pcr_matches(&self) -> &[BankMatch] {
        &self.expected
    }

    /// The prefix attested by every expected PCR value: the smallest per-bank match point.
    /// `None` if nothing is expected or some bank never matched.
    pub fn pcr_matched_at(&self) -> Option<u64> {
        attested_prefix(&self.expected)
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Every violation found, including those beyond `max_violations`.
    pub fn violations_total(&self) -> u64 {
        self.violations_total
    }

    /// Takes the violations found so far (a monitor drains them after each feed).
    pub fn take_violations(&mut self) -> Vec<Violation> {
        std::mem::take(&mut self.violations)
    }

    /// The replayed PCR values (one per bank, in [`State::pcrs`] order) after exactly `extends`
    /// extends: the current state's, or one kept in the bounded history. `None` if that point is
    /// ahead of the log or older than the history.
    pub fn replay_after(&self, extends: u64) -> Option<&[Digest]> {
        if extends == self.state.extends {
            return Some(&self.state.pcrs);
        }
        self.history
            .iter()
            .rev()
            .find(|(n, _)| *n == extends)
            .map(|(_, pcrs)| pcrs.as_slice())
    }

    /// Bytes waiting for the rest of their entry.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Consumes appended log bytes: every complete entry is verified and the state advances.
    ///
    /// An incomplete trailing entry is kept (bounded by the entry size limits) until more bytes
    /// arrive. On a parse error the entries before it stay verified and the state points at the
    /// failing entry; nothing already verified is lost.
    pub fn feed(&mut self, bytes: &[u8], appraiser: &dyn Appraise) -> Result<u64, ParseError> {
        self.consume(bytes, appraiser, false)
    }

    /// Declares the end of the log: a pending fragment is now an error (truncated log).
    pub fn finish(&mut self, appraiser: &dyn Appraise) -> Result<u64, ParseError> {
        self.consume(&[], appraiser, true)
    }

    /// Feeds a whole log and finishes it.
    pub fn verify_all(
        &mut self,
        bytes: &[u8],
        appraiser: &dyn Appraise,
    ) -> Result<u64, ParseError> {
        self.consume(bytes, appraiser, true)
    }

    fn consume(
        &mut self,
        bytes: &[u8],
        appraiser: &dyn Appraise,
        complete: bool,
    ) -> Result<u64, ParseError> {
        // Invariant: `pending` holds the unconsumed bytes that start at `state.offset`.
        let buf;
        let input: &[u8] = if self.pending.is_empty() {
            bytes
        } else {
            let mut b = std::mem::take(&mut self.pending);
            b.extend_from_slice(bytes);
            buf = b;
            &buf
        };
        let (used, result) = self.run(input, appraiser, complete);
        if result.is_ok() && !complete {
            // Bounded: the readers refuse entries larger than the limits before reporting truncation.
            self.pending = input[used..].to_vec();
        }
        result
    }

    /// Verifies the complete entries of `input` (which starts at `state.offset`); returns the bytes
    /// used and the number of entries verified, or the first parse error.
    fn run(
        &mut self,
        input: &[u8],
        appraiser: &dyn Appraise,
        complete: bool,
    ) -> (usize, Result<u64, ParseError>) {
        if input.is_empty() {
            return (0, Ok(0));
        }
        let format = match self.state.format {
            Some(f) => f,
            // Only input starting with a digit may still turn out to be an ASCII line; a binary
            // header is recognisable (and refusable) from its first bytes.
            None if !complete && input.len() < 64 && input[0].is_ascii_digit() => {
                return (0, Ok(0));
            }
            None => LogFormat::detect(input),
        };
        self.state.format = Some(format);
        let base = self.state.offset;
        let mut reader = Reader::new(
            format,
            input,
            base,
            self.state.entries,
            self.config.limits,
            complete,
        );
        let mut count = 0u64;
        loop {
            match reader.next_entry() {
                None => return (reader.consumed(), Ok(count)),
                Some(Ok(entry)) => {
                    self.verify_entry(&entry, appraiser);
                    self.state.entries += 1;
                    self.state.offset = base + reader.consumed() as u64;
                    count += 1;
                }
                // The rest of this entry has not arrived yet.
                Some(Err(e)) if e.is_truncation() && !complete => {
                    return (reader.consumed(), Ok(count));
                }
                Some(Err(e)) => return (reader.consumed(), Err(e)),
            }
        }
    }

    fn verify_entry(&mut self, entry: &Entry<'_>, appraiser: &dyn Appraise) {
        let (hash_ok, sha1) = check_template_hash(entry);
        if entry.pcr == self.config.pcr_index {
            if self.config.replay_history > 0 {
                if self.history.len() >= self.config.replay_history {
                    self.history.pop_front();
                }
                self.history
                    .push_back((self.state.extends, self.state.pcrs.clone()));
            }
            for (i, bank) in self.banks.iter().enumerate() {
                let d = bank_digest(entry, *bank, sha1.as_ref());
                self.state.pcrs[i] = bank.extend(&self.state.pcrs[i], &d);
            }
            self.state.extends += 1;
            let entries_after = self.state.entries + 1;
            for m in &mut self.expected {
                if self.state.pcr(m.bank) == Some(&m.expected) {
                    m.matched_at = Some(entries_after);
                }
            }
        }
        let finding =
            structural_finding(entry, hash_ok).or_else(|| appraiser.appraise(entry).err());
        if let Some(f) = finding {
            self.record(violation(entry, f));
        }
    }

    fn record(&mut self, v: Violation) {
        self.violations_total += 1;
        if self.violations.len() < self.config.max_violations {
            self.violations.push(v);
        }
    }

    /// Records a `pcr_mismatch` for every expected bank that never matched. Call once, at the end.
    pub fn check_pcrs(&mut self) {
        let unmatched: Vec<BankMatch> = self
            .expected
            .iter()
            .filter(|m| m.matched_at.is_none())
            .cloned()
            .collect();
        for m in unmatched {
            let replayed = self
                .state
                .pcr(m.bank)
                .map(|d| d.to_hex())
                .unwrap_or_default();
            let v = pcr_mismatch_violation(
                self.config.pcr_index,
                &m,
                self.state.entries,
                self.state.offset,
                &replayed,
            );
            self.record(v);
        }
    }

    /// The verdict so far (call [`Verifier::check_pcrs`] first for a final one).
    pub fn report(&self) -> crate::parallel::Report {
        crate::parallel::Report {
            state: self.state.clone(),
            pcr_matches: self.expected.clone(),
            violations: self.violations.clone(),
            violations_total: self.violations_total,
        }
    }
}

pub(crate) fn pcr_mismatch_violation(
    pcr_index: u32,
    m: &BankMatch,
    entries: u64,
    offset: u64,
    replayed: &str,
) -> Violation {
    Violation {
        index: entries,
        offset,
        path: format!("PCR{pcr_index}:{}", m.bank),
        reason: Reason::PcrMismatch,
        digest: None,
        detail: format!(
            "no prefix of the log replays to the expected {} value {}; after all {entries} entries the replay is {replayed}",
            m.bank,
            m.expected.to_hex(),
        ),
    }
}

/// The prefix attested by every expected PCR value: the smallest per-bank match point. `None` if
/// nothing is expected or some bank never matched.
pub(crate) fn attested_prefix(matches: &[BankMatch]) -> Option<u64> {
    if matches.is_empty() {
        return None;
    }
    matches
        .iter()
        .map(|m| m.matched_at)
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min())
}

/// Whether the logged SHA-1 template hash is right, and the SHA-1 template digest computed on the
/// way (it doubles as the sha1 bank's digest). Violation entries have no digest to check.
pub(crate) fn check_template_hash(entry: &Entry<'_>) -> (bool, Option<Digest>) {
    if entry.is_violation() {
        return (true, None);
    }
    let sha1 = entry.computed_template_digest(Bank::Sha1);
    (sha1.as_bytes() == entry.template_hash, Some(sha1))
}

/// The digest `bank` was extended with for this entry, reusing a computed SHA-1.
pub(crate) fn bank_digest(entry: &Entry<'_>, bank: Bank, sha1: Option<&Digest>) -> Digest {
    match (bank, sha1) {
        (Bank::Sha1, Some(d)) => *d,
        _ => entry.template_digest(bank),
    }
}

/// Findings that need no policy: a wrong template hash, an unsupported template. Entries with
/// such a finding are not appraised.
pub(crate) fn structural_finding(entry: &Entry<'_>, hash_ok: bool) -> Option<Finding> {
    if !hash_ok {
        Some(Finding::new(
            Reason::TemplateHashMismatch,
            format!(
                "logged template hash {} is not sha1 of the template data ({})",
                hex::encode(entry.template_hash),
                entry.computed_template_digest(Bank::Sha1).to_hex()
            ),
        ))
    } else if entry.template.is_none() {
        Some(Finding::new(
            Reason::UnsupportedTemplate,
            format!("template {:?} is not supported", entry.template_name),
        ))
    } else {
        None
    }
}

pub(crate) fn violation(entry: &Entry<'_>, f: Finding) -> Violation {
    Violation {
        index: entry.index,
        offset: entry.offset,
        path: entry.name_lossy().into_owned(),
        reason: f.reason,
        digest: entry.file_digest_value().map(|d| d.to_string()),
        detail: f.detail,
    }
}

/// A PCR value of an algorithm we cannot replay, or a bank added after entries were consumed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot replay PCR bank {}: only sha1, sha256, sha384 and sha512 tracked from the first entry", .0.algorithm())]
pub struct UnsupportedBank(pub Digest);

fn normalise_banks(banks: &[Bank]) -> Vec<Bank> {
    let mut b = banks.to_vec();
    b.sort();
    b.dedup();
    b
}
