//! Verifying a complete log on several threads, while the appraiser (the policy) is still loading.
//!
//! Everything about an entry except the PCR chain is independent of the other entries: parsing,
//! the template-hash check, the per-bank template digests and the policy judgement. So the log
//! is cut into chunks at entry boundaries and the chunks are spread over the workers; worker 0
//! first builds the appraiser. A chunk hashed before the appraiser exists keeps only its compact
//! per-entry digests and is queued; it is parsed once more for appraisal when the appraiser is
//! ready, which bounds memory without holding entries. At the end the PCR chain runs over the
//! digests in log order.
//!
//! The result is exactly what [`Verifier`](crate::Verifier) produces for the same input
//! (tested), only faster.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::binary::{ByteOrder, Limits, NUM_PCRS};
use crate::digest::{Bank, Digest};
use crate::error::ParseError;
use crate::log::{LogFormat, Reader};
use crate::verify::{
    Appraise, BankMatch, Config, State, UnsupportedBank, Violation, bank_digest,
    check_template_hash, structural_finding, violation,
};

/// The outcome of verifying a complete log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub state: State,
    pub pcr_matches: Vec<BankMatch>,
    /// Violations in entry order (at most `Config::max_violations`; `pcr_mismatch` last).
    pub violations: Vec<Violation>,
    pub violations_total: u64,
}

impl Report {
    pub fn compliant(&self) -> bool {
        self.violations_total == 0
    }

    /// The prefix attested by every expected PCR value (see [`crate::Verifier::pcr_matched_at`]).
    pub fn pcr_matched_at(&self) -> Option<u64> {
        crate::verify::attested_prefix(&self.pcr_matches)
    }
}

/// Why a parallel verification could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum ParallelError<E> {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Bank(#[from] UnsupportedBank),
    /// Building the appraiser failed (e.g. the policy does not load).
    #[error("{0}")]
    Appraiser(E),
    /// A worker thread panicked (a bug: no input should cause it). Fails closed.
    #[error("internal error: a verification worker failed")]
    WorkerFailed,
}

#[derive(Clone, Copy, Debug)]
struct Chunk {
    start: usize,
    end: usize,
    first_index: u64,
}

/// What the hashing pass found in a chunk.
#[derive(Default)]
struct ChunkResult {
    entries: u64,
    /// Bytes of the chunk consumed by complete entries.
    consumed: usize,
    /// Per entry: on the replayed PCR?
    on_pcr: Vec<bool>,
    /// Per entry extended into the PCR: one digest per bank, concatenated.
    digests: Vec<u8>,
    violations: Vec<Violation>,
    violations_total: u64,
    /// Entry indices with a structural finding (not appraised).
    skip: Vec<u64>,
    error: Option<ParseError>,
    appraised: bool,
}

/// The PCR chain, advanced in log order as chunks finish hashing.
struct Chain {
    next_chunk: usize,
    state: State,
    matches: Vec<BankMatch>,
    /// A chunk ended in a parse error: nothing after it is chained.
    stopped: bool,
}

impl Chain {
    /// Extends the PCRs with every consecutive hashed chunk from `next_chunk` on.
    fn advance(
        &mut self,
        chunks: &[Chunk],
        results: &[Mutex<ChunkResult>],
        hashed: &[AtomicBool],
        banks: &[Bank],
    ) {
        while !self.stopped
            && self.next_chunk < chunks.len()
            && hashed[self.next_chunk].load(Ordering::Acquire)
        {
            let i = self.next_chunk;
            let Ok(mut r) = results[i].lock() else {
                self.stopped = true;
                return;
            };
            let digests = std::mem::take(&mut r.digests);
            let mut at = 0usize;
            for on in &r.on_pcr {
                self.state.entries += 1;
                if !*on {
                    continue;
                }
                self.state.extends += 1;
                for (b, bank) in banks.iter().enumerate() {
                    let len = bank.digest_len();
                    let d = Digest::new(bank.algorithm(), &digests[at..at + len])
                        .unwrap_or_else(|| bank.zero());
                    at += len;
                    self.state.pcrs[b] = bank.extend(&self.state.pcrs[b], &d);
                }
                for m in &mut self.matches {
                    if self.state.pcr(m.bank) == Some(&m.expected) {
                        m.matched_at = Some(self.state.entries);
                    }
                }
            }
            self.state.offset = (chunks[i].start + r.consumed) as u64;
            self.stopped = r.error.is_some();
            self.next_chunk += 1;
        }
    }
}

/// Verifies a complete log on `threads` threads; `make_appraiser` runs on one of them,
/// concurrently with hashing. Returns the report and the appraiser.
pub fn verify_parallel<A, E, F>(
    bytes: &[u8],
    config: &Config,
    expected: &[Digest],
    threads: usize,
    make_appraiser: F,
) -> Result<(Report, A), ParallelError<E>>
where
    A: Appraise + Sync + Send,
    E: Send,
    F: FnOnce() -> Result<A, E> + Send,
{
    let mut banks = config.banks.clone();
    for d in expected {
        banks.push(d.algorithm().bank().ok_or(UnsupportedBank(*d))?);
    }
    banks.sort();
    banks.dedup();
    let format = if bytes.is_empty() {
        None
    } else {
        Some(LogFormat::detect(bytes))
    };
    let chunks = match format {
        None => Vec::new(),
        Some(f) => split(f, bytes, config.limits, config.chunk_bytes.max(1)),
    };

    let appraiser: OnceLock<A> = OnceLock::new();
    let maker = Mutex::new(Some(make_appraiser));
    let maker_error: Mutex<Option<E>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    let stop_after = AtomicU64::new(u64::MAX);
    let pending: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let results: Vec<Mutex<ChunkResult>> = chunks.iter().map(|_| Mutex::default()).collect();
    let hashed: Vec<AtomicBool> = chunks.iter().map(|_| AtomicBool::new(false)).collect();
    let chain = Mutex::new(Chain {
        next_chunk: 0,
        state: State {
            format,
            entries: 0,
            extends: 0,
            offset: 0,
            pcrs: banks.iter().map(|b| b.zero()).collect(),
        },
        matches: expected
            .iter()
            .map(|d| {
                let bank = d.algorithm().bank().unwrap_or(Bank::Sha256);
                BankMatch {
                    bank,
                    expected: *d,
                    matched_at: (bank.zero() == *d).then_some(0),
                }
            })
            .collect(),
        stopped: false,
    });

    let work = |worker: usize| {
        if worker == 0 {
            let made = maker.lock().ok().and_then(|mut m| m.take()).map(|f| f());
            match made {
                Some(Ok(a)) => {
                    let _ = appraiser.set(a);
                }
                Some(Err(e)) => {
                    if let Ok(mut slot) = maker_error.lock() {
                        *slot = Some(e);
                    }
                    stop_after.store(0, Ordering::Relaxed);
                    return;
                }
                None => return,
            }
        }
        loop {
            let ready = appraiser.get();
            if let Some(a) = ready {
                let queued = pending.lock().ok().and_then(|mut p| p.pop());
                if let Some(i) = queued {
                    if let Ok(mut r) = results[i].lock() {
                        appraise_chunk(bytes, format, chunks[i], config.limits, a, &mut r);
                    }
                    continue;
                }
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= chunks.len() || chunks[i].first_index > stop_after.load(Ordering::Relaxed) {
                // Chunks still queued are drained by whoever sees the appraiser ready: this worker
                // if it is ready now (loop again until the queue is empty), else worker 0 after it
                // has built the appraiser.
                let empty = pending.lock().map(|p| p.is_empty()).unwrap_or(true);
                if ready.is_some() && !empty {
                    continue;
                }
                break;
            }
            let r = hash_chunk(bytes, format, chunks[i], config, &banks, ready);
            if let Some(e) = &r.error {
                stop_after.fetch_min(e.index, Ordering::Relaxed);
            }
            let appraised = r.appraised;
            if let Ok(mut slot) = results[i].lock() {
                *slot = r;
            }
            hashed[i].store(true, Ordering::Release);
            if !appraised && let Ok(mut p) = pending.lock() {
                p.push(i);
            }
            // Chain whatever is ready in order; if another worker is chaining, it (or the final
            // pass) will pick this chunk up.
            if let Ok(mut c) = chain.try_lock() {
                c.advance(&chunks, &results, &hashed, &banks);
            }
        }
    };
    std::thread::scope(|s| {
        for w in 1..threads.max(1) {
            let work = &work;
            s.spawn(move || work(w));
        }
        work(0);
    });

    if let Some(e) = maker_error.into_inner().ok().flatten() {
        return Err(ParallelError::Appraiser(e));
    }
    let appraiser = appraiser.into_inner().ok_or(ParallelError::WorkerFailed)?;

    let mut chain = chain
        .into_inner()
        .map_err(|_| ParallelError::WorkerFailed)?;
    chain.advance(&chunks, &results, &hashed, &banks);
    let mut violations = Vec::new();
    let mut total = 0u64;
    for result in results {
        let r = result
            .into_inner()
            .map_err(|_| ParallelError::WorkerFailed)?;
        total += r.violations_total;
        violations.extend(r.violations);
        if let Some(e) = r.error {
            return Err(ParallelError::Parse(e));
        }
        // Every entry before the first error must have been judged; a chunk that was not would
        // mean a violation could go unreported. The scheduling above guarantees it; fail closed
        // if it ever did not.
        if r.entries > 0 && !r.appraised {
            return Err(ParallelError::WorkerFailed);
        }
    }
    let (state, matches) = (chain.state, chain.matches);
    violations.truncate(config.max_violations);
    let mut report = Report {
        state,
        pcr_matches: matches,
        violations,
        violations_total: total,
    };
    add_pcr_mismatches(&mut report, config);
    Ok((report, appraiser))
}

/// Records a `pcr_mismatch` for every expected value no prefix reached (as
/// [`crate::Verifier::check_pcrs`]).
fn add_pcr_mismatches(report: &mut Report, config: &Config) {
    for m in report.pcr_matches.iter().filter(|m| m.matched_at.is_none()) {
        let replayed = report
            .state
            .pcr(m.bank)
            .map(|d| d.to_hex())
            .unwrap_or_default();
        report.violations_total += 1;
        if report.violations.len() < config.max_violations {
            report
                .violations
                .push(crate::verify::pcr_mismatch_violation(
                    config.pcr_index,
                    m,
                    report.state.entries,
                    report.state.offset,
                    &replayed,
                ));
        }
    }
}

/// Parses and hashes one chunk; appraises it too if the appraiser is ready.
fn hash_chunk<A: Appraise>(
    bytes: &[u8],
    format: Option<LogFormat>,
    chunk: Chunk,
    config: &Config,
    banks: &[Bank],
    appraiser: Option<&A>,
) -> ChunkResult {
    let mut r = ChunkResult {
        appraised: appraiser.is_some(),
        ..ChunkResult::default()
    };
    let Some(format) = format else { return r };
    let input = &bytes[chunk.start..chunk.end];
    let mut reader = Reader::new(
        format,
        input,
        chunk.start as u64,
        chunk.first_index,
        config.limits,
        true,
    );
    while let Some(item) = reader.next_entry() {
        let entry = match item {
            Ok(e) => e,
            Err(e) => {
                r.error = Some(e);
                break;
            }
        };
        let (hash_ok, sha1) = check_template_hash(&entry);
        let on = entry.pcr == config.pcr_index;
        r.on_pcr.push(on);
        if on {
            for bank in banks {
                r.digests
                    .extend_from_slice(bank_digest(&entry, *bank, sha1.as_ref()).as_bytes());
            }
        }
        r.entries += 1;
        let finding = match structural_finding(&entry, hash_ok) {
            Some(f) => {
                r.skip.push(entry.index);
                Some(f)
            }
            None => appraiser.and_then(|a| a.appraise(&entry).err()),
        };
        if let Some(f) = finding {
            r.violations_total += 1;
            if r.violations.len() < config.max_violations {
                r.violations.push(violation(&entry, f));
            }
        }
    }
    r.consumed = reader.consumed();
    r
}

/// Appraises a chunk hashed before the appraiser existed (parsing it once more).
fn appraise_chunk<A: Appraise>(
    bytes: &[u8],
    format: Option<LogFormat>,
    chunk: Chunk,
    limits: Limits,
    appraiser: &A,
    r: &mut ChunkResult,
) {
    let Some(format) = format else { return };
    let input = &bytes[chunk.start..chunk.start + r.consumed];
    let mut reader = Reader::new(
        format,
        input,
        chunk.start as u64,
        chunk.first_index,
        limits,
        true,
    );
    let mut found = Vec::new();
    while let Some(Ok(entry)) = reader.next_entry() {
        if r.skip.binary_search(&entry.index).is_ok() {
            continue;
        }
        if let Err(f) = appraiser.appraise(&entry) {
            found.push(violation(&entry, f));
        }
    }
    r.violations_total += found.len() as u64;
    r.violations.extend(found);
    r.violations.sort_by_key(|v| v.index);
    r.appraised = true;
}

/// Cuts the log into chunks of about `target` bytes at entry boundaries.
///
/// A malformed entry ends the scan; the rest of the log becomes the last chunk, whose reader then
/// reports the precise error.
fn split(format: LogFormat, bytes: &[u8], limits: Limits, target: usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut first_index = 0u64;
    match format {
        LogFormat::Binary(order) => {
            let mut pos = 0usize;
            let mut index = 0u64;
            while pos < bytes.len() {
                let Some(len) = binary_entry_len(&bytes[pos..], order, limits) else {
                    break;
                };
                pos += len;
                index += 1;
                if pos - start >= target {
                    chunks.push(Chunk {
                        start,
                        end: pos,
                        first_index,
                    });
                    start = pos;
                    first_index = index;
                }
            }
        }
        LogFormat::Ascii(_) => {
            while bytes.len() - start > target {
                let probe = start + target;
                let Some(nl) = bytes[probe..].iter().position(|b| *b == b'\n') else {
                    break;
                };
                let end = probe + nl + 1;
                let lines = memchr::memchr_iter(b'\n', &bytes[start..end]).count() as u64;
                chunks.push(Chunk {
                    start,
                    end,
                    first_index,
                });
                start = end;
                first_index += lines;
            }
        }
    }
    if start < bytes.len() || chunks.is_empty() {
        chunks.push(Chunk {
            start,
            end: bytes.len(),
            first_index,
        });
    }
    chunks
}

/// The length of the binary entry at the start of `b`, if its header is well formed.
fn binary_entry_len(b: &[u8], order: ByteOrder, limits: Limits) -> Option<usize> {
    let u32_at = |at: usize| -> Option<u32> {
        let s = b.get(at..at + 4)?;
        Some(order.u32([s[0], s[1], s[2], s[3]]))
    };
    if u32_at(0)? >= NUM_PCRS {
        return None;
    }
    let name_len = u32_at(24)?;
    if name_len > limits.max_template_name {
        return None;
    }
    let name_end = 28 + name_len as usize;
    let name = b.get(28..name_end)?;
    let len = if name == b"ima" {
        let n = u32_at(name_end + 20)?;
        if n > 255 {
            return None;
        }
        name_end + 24 + n as usize
    } else {
        let d = u32_at(name_end)?;
        if d > limits.max_template_data {
            return None;
        }
        name_end + 4 + d as usize
    };
    (len <= b.len()).then_some(len)
}
