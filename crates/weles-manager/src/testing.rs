//! What a guest's kernel would have done, computed from a log: the vTPM events of replaying it.
//! For tests and benchmarks (a test plays the guest); not used by the daemon.

use weles_ima::{Bank, Digest, Entry};
use weles_proto::vtpm_events::{BankDigest, Event, Record};

/// The PCR 10 extends (sha1 and sha256 banks) IMA made for `entries`, as the vTPM reports them,
/// numbered from `first_seq`, continuing from `pcrs` (sha1, sha256), which is updated.
pub fn extend_records(
    entries: &[Entry<'_>],
    pcrs: &mut [Digest; 2],
    first_seq: u64,
) -> Vec<Record> {
    let banks = [Bank::Sha1, Bank::Sha256];
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.pcr == 10) {
        let mut digests = Vec::new();
        for (i, bank) in banks.iter().enumerate() {
            let d = e.template_digest(*bank);
            pcrs[i] = bank.extend(&pcrs[i], &d);
            digests.push(bank_digest(&d));
        }
        out.push(Record {
            seq: first_seq + out.len() as u64,
            time_ms: 0,
            event: Event::Extend {
                pcr: 10,
                digests,
                pcrs: pcrs.iter().map(bank_digest).collect(),
            },
        });
    }
    out
}

/// The starting PCR values of a boot.
pub fn zero_pcrs() -> [Digest; 2] {
    [Bank::Sha1.zero(), Bank::Sha256.zero()]
}

pub fn bank_digest(d: &Digest) -> BankDigest {
    BankDigest {
        bank: d.algorithm().name().to_owned(),
        hex: d.to_hex(),
    }
}
