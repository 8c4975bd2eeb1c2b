//! What the TPM did, for the manager: every PCR change, startup, shutdown and reset, numbered.
//!
//! The engine records an [`Event`] right after libtpms executed a command that changed PCRs or
//! the TPM's power state — under the engine lock, so events are in execution order and carry the
//! PCR values *after* the command. Recording only appends to a bounded ring — no thread is woken
//! on the TPM's path; each listener's connection collects what is new at least every millisecond,
//! and can resume from a sequence number after a reconnect (`docs/vtpm-protocol.md` §5).

use std::collections::VecDeque;
use std::sync::Mutex;

pub use weles_proto::vtpm_events::{
    BankDigest, Event, MAX_MESSAGE, Message, Record, Request, frame, read_frame,
};

/// The bounded ring of recent events.
pub struct EventLog {
    inner: Mutex<Ring>,
}

struct Ring {
    next: u64,
    records: VecDeque<Record>,
    capacity: usize,
}

/// What a listener gets when it asks for everything after a sequence number.
pub struct Backlog {
    /// Records after the requested sequence number that are still kept.
    pub records: Vec<Record>,
    /// `Some(first kept)` if records the listener asked for were already dropped.
    pub lost_before: Option<u64>,
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        EventLog {
            inner: Mutex::new(Ring {
                next: 1,
                records: VecDeque::new(),
                capacity: capacity.max(1),
            }),
        }
    }

    /// Appends an event; returns its sequence number.
    pub fn push(&self, event: Event) -> u64 {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let Ok(mut r) = self.inner.lock() else {
            return 0;
        };
        let seq = r.next;
        r.next += 1;
        if r.records.len() == r.capacity {
            r.records.pop_front();
        }
        r.records.push_back(Record {
            seq,
            time_ms,
            event,
        });
        seq
    }

    /// Every kept record after `after`, and whether some it asked for were dropped.
    pub fn since(&self, after: u64) -> Backlog {
        let Ok(r) = self.inner.lock() else {
            return Backlog {
                records: Vec::new(),
                lost_before: None,
            };
        };
        let first = r.records.front().map_or(r.next, |x| x.seq);
        let lost_before = (after + 1 < first).then_some(first);
        let skip = r.records.partition_point(|x| x.seq <= after);
        Backlog {
            records: r.records.iter().skip(skip).cloned().collect(),
            lost_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_resumes_and_reports_losses() {
        let log = EventLog::new(3);
        for _ in 0..5 {
            log.push(Event::Init);
        }
        let b = log.since(1);
        assert_eq!(b.lost_before, Some(3));
        assert_eq!(
            b.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let b = log.since(4);
        assert_eq!((b.lost_before, b.records.len()), (None, 1));
        assert_eq!(log.since(5).records.len(), 0);
        assert_eq!(log.push(Event::Stop), 6);
    }
}
