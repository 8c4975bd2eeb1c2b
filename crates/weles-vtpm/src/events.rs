//! What the TPM did, for the manager: every PCR change, startup, shutdown and reset, numbered.
//!
//! The engine records an [`Event`] right after libtpms executed a command that changed PCRs or
//! the TPM's power state — under the engine lock, so events are in execution order and carry the
//! PCR values *after* the command. Recording only appends to a bounded ring — no thread is woken
//! on the TPM's path; each listener's connection collects what is new at least every millisecond,
//! and can resume from a sequence number after a reconnect (`docs/vtpm-protocol.md` §5).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A TPM algorithm id and a digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankDigest {
    /// `sha1`, `sha256`, `sha384`, `sha512`, or `alg:0xNNNN` for others.
    pub bank: String,
    pub hex: String,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// _TPM_Init (CMD_INIT / power on): PCRs are about to be reset by TPM2_Startup(CLEAR).
    Init,
    /// TPM2_Startup; `clear`: PCRs reset (a reboot), else resumed from saved state.
    Startup { clear: bool },
    /// TPM2_Shutdown; `state`: state saved for a resume.
    Shutdown { state: bool },
    /// PCR_Extend or PCR_Event: what was extended into `pcr`, and the PCR values afterwards.
    Extend {
        pcr: u32,
        digests: Vec<BankDigest>,
        pcrs: Vec<BankDigest>,
    },
    /// PCR_Reset of a resettable PCR, and its values afterwards.
    Reset { pcr: u32, pcrs: Vec<BankDigest> },
    /// The TPM was stopped (CMD_STOP / CMD_SHUTDOWN); nothing runs until the next Init.
    Stop,
}

/// An event with its place in the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// 1, 2, 3, ... without gaps for the life of the process.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

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

/// A management request from the listener, answered between guest commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start (or resume) the event stream after sequence number `after` (0: from the oldest kept).
    Subscribe { after: u64 },
    /// Read one PCR in every allocated bank.
    ReadPcrs { pcr: u32 },
    /// The public area (TPM2B_PUBLIC, hex) and name of a persistent object.
    ReadPublic { handle: u32 },
    /// The EK certificate (`rsa` or `ecc`), DER in hex, from its NV index.
    EkCertificate { kind: String },
}

/// Everything the server sends on the event socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Message {
    Event(Record),
    Lost {
        lost_before: u64,
    },
    Pcrs {
        pcr: u32,
        pcrs: Vec<BankDigest>,
    },
    Public {
        handle: u32,
        public: String,
        name: String,
    },
    Certificate {
        kind: String,
        certificate: String,
    },
    Error {
        error: String,
    },
}

/// Most bytes of one framed message.
pub const MAX_MESSAGE: usize = 1 << 20;

/// `u32` big-endian length, then JSON.
pub fn frame(msg: &impl Serialize) -> Vec<u8> {
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Reads one framed JSON message; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: serde::de::DeserializeOwned>(
    r: &mut impl std::io::Read,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds 1 MiB"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
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

    #[test]
    fn wire_format() {
        let r = Record {
            seq: 7,
            time_ms: 1,
            event: Event::Extend {
                pcr: 10,
                digests: vec![],
                pcrs: vec![],
            },
        };
        let bytes = frame(&Message::Event(r.clone()));
        let back: Message = read_frame(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(back, Message::Event(r));
        let req: Request = serde_json::from_str(r#"{"op":"read_pcrs","pcr":10}"#).unwrap();
        assert_eq!(req, Request::ReadPcrs { pcr: 10 });
        let mut huge = (u32::MAX).to_be_bytes().to_vec();
        huge.push(b'{');
        assert!(read_frame::<Message>(&mut &huge[..]).is_err());
    }
}
