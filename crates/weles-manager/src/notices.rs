//! The numbered stream of what happened to every VM: state changes and violations.
//!
//! Subscribers (the event stream of the tenant API, tests, the audit log) read everything after a
//! sequence number; a bounded ring keeps the most recent for those that fall behind, and says when
//! something they asked for is gone.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::monitor::Notice;

/// One notice with its place in the stream.
#[derive(Clone, Debug, Serialize)]
pub struct NoticeRecord {
    /// 1, 2, 3, ... for the life of the process.
    pub seq: u64,
    pub time_ms: u64,
    pub vm: String,
    #[serde(flatten)]
    pub notice: Notice,
}

pub struct NoticeHub {
    ring: Mutex<Ring>,
    grew: Condvar,
}

struct Ring {
    /// The newest sequence number published.
    last: u64,
    /// The newest sequence number dropped from the ring (0: none).
    evicted: u64,
    records: VecDeque<NoticeRecord>,
    capacity: usize,
}

/// What a reader gets.
pub struct Batch {
    pub records: Vec<NoticeRecord>,
    /// `Some(first kept)` when records after the requested one were already dropped.
    pub lost_before: Option<u64>,
}

impl NoticeHub {
    pub fn new(capacity: usize) -> Self {
        NoticeHub {
            ring: Mutex::new(Ring {
                last: 0,
                evicted: 0,
                records: VecDeque::new(),
                capacity: capacity.max(1),
            }),
            grew: Condvar::new(),
        }
    }

    /// Publishes a notice under `seq` (its audit record's number; numbers only grow, with gaps
    /// where the audit log holds records that are not notices).
    pub fn publish(&self, seq: u64, vm: &str, notice: Notice) -> u64 {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let Ok(mut r) = self.ring.lock() else {
            return 0;
        };
        r.last = r.last.max(seq);
        if r.records.len() == r.capacity
            && let Some(old) = r.records.pop_front()
        {
            r.evicted = old.seq;
        }
        r.records.push_back(NoticeRecord {
            seq,
            time_ms,
            vm: vm.to_owned(),
            notice,
        });
        drop(r);
        self.grew.notify_all();
        seq
    }

    /// Everything after `after`, waiting up to `timeout` for something new.
    pub fn read_after(&self, after: u64, timeout: Duration) -> Batch {
        let empty = Batch {
            records: Vec::new(),
            lost_before: None,
        };
        let Ok(mut r) = self.ring.lock() else {
            return empty;
        };
        if r.last <= after {
            r = match self
                .grew
                .wait_timeout_while(r, timeout, |r| r.last <= after)
            {
                Ok((r, _)) => r,
                Err(_) => return empty,
            };
        }
        let skip = r.records.partition_point(|x| x.seq <= after);
        let first = r.records.front().map_or(r.last + 1, |x| x.seq);
        Batch {
            records: r.records.iter().skip(skip).cloned().collect(),
            lost_before: (after < r.evicted).then_some(first),
        }
    }

    /// The sequence number of the newest notice (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().map_or(0, |r| r.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::VmState;

    fn n() -> Notice {
        Notice::State {
            from: VmState::Rebooted,
            to: VmState::Pending,
            reason: String::new(),
        }
    }

    #[test]
    fn readers_resume_and_learn_of_losses() {
        let hub = NoticeHub::new(2);
        assert_eq!(hub.read_after(0, Duration::from_millis(1)).records.len(), 0);
        for seq in 1..=3 {
            hub.publish(seq, "vm", n());
        }
        let b = hub.read_after(0, Duration::ZERO);
        assert_eq!(b.lost_before, Some(2));
        assert_eq!(b.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
        let b = hub.read_after(2, Duration::ZERO);
        assert_eq!((b.records.len(), b.lost_before), (1, None));
        assert_eq!(hub.last_seq(), 3);
    }
}
