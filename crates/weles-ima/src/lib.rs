//! Linux IMA measurement lists, exactly as the kernel writes them.
//!
//! - [`log`]: format detection and a reader over both forms of the list;
//!   [`binary`] (`binary_runtime_measurements`, either byte order) and [`ascii`]
//!   (`ascii_runtime_measurements`).
//! - [`template`]: the templates (`ima`, `ima-ng`, `ima-sig`, `ima-buf`, `ima-ngv2`, `ima-sigv2`,
//!   `ima-modsig`, and custom `d-ng|n-ng|...` formats) and their fields.
//! - [`entry`]: a decoded entry and its template digest per PCR bank.
//! - [`verify`]: the incremental verifier — template hashes, PCR replay per bank, PCR matching at
//!   any prefix, and appraisal of each entry through the [`verify::Appraise`] trait.
//! - [`parallel`]: the same verification of a complete log on several threads, overlapping the
//!   loading of the policy.
//! - [`write`]: entries in the kernel's layouts (test vectors, conversion, replay).
//! - [`boot_aggregate`]: the value of the first entry, from PCRs 0–9.
//!
//! Nothing here panics or allocates on the say-so of a length field in untrusted input; see
//! `docs/ima-formats.md` for the byte layouts and the rules this crate implements.

#![forbid(unsafe_code)]

pub mod ascii;
pub mod binary;
pub mod digest;
pub mod entry;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod hexdec;
pub mod log;
pub mod parallel;
pub mod template;
pub mod verify;
pub mod write;

pub use binary::{ByteOrder, Limits};
pub use digest::{Bank, Digest, HashAlgorithm};
pub use entry::Entry;
pub use error::{ParseError, ParseErrorKind};
pub use log::{LogFormat, Reader};
pub use parallel::{Report, verify_parallel};
pub use verify::{Appraise, Config, Finding, Reason, State, Verifier, Violation};

/// The boot_aggregate the kernel logs as the first entry, for `bank`, from PCRs 0–9 of that bank.
///
/// The SHA-1 bank hashes PCRs 0–7 only; every other bank hashes PCRs 0–9
/// (`ima_calc_boot_aggregate`). `pcrs` must hold at least 8 (SHA-1) or 10 values of the bank's
/// length; returns `None` otherwise.
pub fn boot_aggregate(bank: Bank, pcrs: &[Digest]) -> Option<Digest> {
    let n = if bank == Bank::Sha1 { 8 } else { 10 };
    let used = pcrs.get(..n)?;
    if used.iter().any(|d| d.algorithm() != bank.algorithm()) {
        return None;
    }
    let parts: Vec<&[u8]> = used.iter().map(Digest::as_bytes).collect();
    Some(bank.hash(&parts))
}
