//! The firmware's measured-boot event log (TCG PC Client Platform Firmware Profile, §10: the
//! "crypto agile" format a TPM 2.0 platform writes, as Linux exposes it in
//! `/sys/kernel/security/tpm0/binary_bios_measurements`), parsed and replayed to PCR values.
//!
//! ```text
//! first event (TCG_PCClientPCREvent, SHA-1 format)
//!   pcr u32 | type u32 (EV_NO_ACTION) | digest [20] (zero) | size u32 | TCG_EfiSpecIdEvent:
//!     "Spec ID Event03\0" | platformClass u32 | minor u8 | major u8 | errata u8 | uintnSize u8
//!     | numberOfAlgorithms u32 | { algorithmId u16 | digestSize u16 } × n | vendorInfoSize u8 | …
//! every later event (TCG_PCR_EVENT2)
//!   pcr u32 | type u32 | count u32 | { algorithmId u16 | digest [size from the table] } × count
//!   | size u32 | event [size]
//! ```
//!
//! All little-endian. `EV_NO_ACTION` events are not extended; the `StartupLocality` one sets
//! PCR 0's starting value to the locality the platform started in (H-CRTM). The log is
//! untrusted until its replay equals quoted PCRs: it is parsed with bounds checks, a limit on
//! events and on each event's size, and every error names the event and byte offset
//! (fuzzed: `fuzz/fuzz_targets/tpm_event_log.rs`).

pub const EV_NO_ACTION: u32 = 0x0000_0003;
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY: &[u8; 16] = b"StartupLocality\0";
/// More events than any firmware writes (real logs hold tens to a few hundred).
pub const MAX_EVENTS: usize = 65_536;
/// Larger than any single event (EFI variables, GPT tables, image paths).
pub const MAX_EVENT_SIZE: usize = 1 << 20;

pub const ALG_SHA1: u16 = 0x0004;
pub const ALG_SHA256: u16 = 0x000b;
pub const ALG_SHA384: u16 = 0x000c;
pub const ALG_SHA512: u16 = 0x000d;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the event log, event {event} at byte {offset} ({field}): {why}")]
pub struct EventLogError {
    pub event: usize,
    pub offset: usize,
    pub field: &'static str,
    pub why: String,
}

/// One measured event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the log (0 is the Spec ID event).
    pub index: usize,
    /// Byte offset of the event in the log.
    pub offset: usize,
    pub pcr: u32,
    pub event_type: u32,
    /// (algorithm, digest) as the firmware extended them.
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

/// A parsed log: the banks its header declares and its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLog {
    /// (algorithm, digest size) from the Spec ID event.
    pub algorithms: Vec<(u16, u16)>,
    pub events: Vec<Event>,
    /// PCR 0's starting locality (StartupLocality event), 0 without one.
    pub startup_locality: u8,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    event: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, offset: usize, field: &'static str, why: impl Into<String>) -> EventLogError {
        EventLogError {
            event: self.event,
            offset,
            field,
            why: why.into(),
        }
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EventLogError> {
        match self.at.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let v = &self.bytes[self.at..end];
                self.at = end;
                Ok(v)
            }
            _ => Err(self.err(
                self.at,
                field,
                format!(
                    "needs {n} bytes, {} left",
                    self.bytes.len().saturating_sub(self.at)
                ),
            )),
        }
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, EventLogError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, EventLogError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn sized(&mut self, field: &'static str) -> Result<&'a [u8], EventLogError> {
        let at = self.at;
        let size = self.u32(field)? as usize;
        if size > MAX_EVENT_SIZE {
            return Err(self.err(at, field, format!("{size} bytes, above {MAX_EVENT_SIZE}")));
        }
        self.take(size, field)
    }
}

fn digest_size(alg: u16) -> Option<usize> {
    match alg {
        ALG_SHA1 => Some(20),
        ALG_SHA256 => Some(32),
        ALG_SHA384 => Some(48),
        ALG_SHA512 => Some(64),
        _ => None,
    }
}

impl EventLog {
    /// Parses a crypto-agile event log.
    pub fn parse(bytes: &[u8]) -> Result<EventLog, EventLogError> {
        let mut r = Reader {
            bytes,
            at: 0,
            event: 0,
        };
        // The Spec ID event, in the old SHA-1 format.
        let pcr = r.u32("pcrIndex")?;
        let kind = r.u32("eventType")?;
        r.take(20, "digest")?;
        let data = r.sized("eventDataSize")?;
        if pcr != 0 || kind != EV_NO_ACTION || data.len() < 29 || &data[..16] != SPEC_ID_SIGNATURE {
            return Err(r.err(
                0,
                "Spec ID event",
                "the log does not start with a \"Spec ID Event03\" header (not a TPM 2.0 \
                 crypto-agile log)",
            ));
        }
        let base = r.at - data.len();
        let mut spec = Reader {
            bytes: data,
            at: 24,
            event: 0,
        };
        let n = spec.u32("numberOfAlgorithms")? as usize;
        if n == 0 || n > 16 {
            return Err(r.err(base + 24, "numberOfAlgorithms", format!("{n}")));
        }
        let mut algorithms = Vec::with_capacity(n);
        for _ in 0..n {
            let at = base + spec.at;
            let alg = spec.u16("algorithmId")?;
            let size = spec.u16("digestSize")?;
            if let Some(known) = digest_size(alg)
                && known != usize::from(size)
            {
                return Err(r.err(at, "digestSize", format!("{size} for algorithm {alg:#06x}")));
            }
            algorithms.push((alg, size));
        }

        let mut events = Vec::new();
        let mut startup_locality = 0;
        while r.at < bytes.len() {
            r.event = events.len() + 1;
            if r.event > MAX_EVENTS {
                return Err(r.err(r.at, "event", format!("more than {MAX_EVENTS} events")));
            }
            let offset = r.at;
            let pcr = r.u32("pcrIndex")?;
            let event_type = r.u32("eventType")?;
            let count = r.u32("digests.count")? as usize;
            if count > algorithms.len() {
                return Err(r.err(
                    offset + 8,
                    "digests.count",
                    format!(
                        "{count} digests, the header declares {} banks",
                        algorithms.len()
                    ),
                ));
            }
            let mut digests = Vec::with_capacity(count);
            for _ in 0..count {
                let at = r.at;
                let alg = r.u16("digests.algorithmId")?;
                let Some(&(_, size)) = algorithms.iter().find(|(a, _)| *a == alg) else {
                    return Err(r.err(
                        at,
                        "digests.algorithmId",
                        format!("{alg:#06x} is not a bank the header declares"),
                    ));
                };
                digests.push((alg, r.take(usize::from(size), "digest")?.to_vec()));
            }
            let data = r.sized("eventSize")?;
            if pcr == 0
                && event_type == EV_NO_ACTION
                && data.len() == 17
                && &data[..16] == STARTUP_LOCALITY
            {
                startup_locality = data[16];
            }
            events.push(Event {
                index: events.len() + 1,
                offset,
                pcr,
                event_type,
                digests,
                data: data.to_vec(),
            });
        }
        Ok(EventLog {
            algorithms,
            events,
            startup_locality,
        })
    }

    /// The PCR values the log's events extend to in bank `alg`, for every PCR it names (PCRs
    /// 0–23 only). An event that measures into a PCR without a digest for `alg` is an error:
    /// that bank could not be replayed.
    pub fn replay(
        &self,
        alg: u16,
    ) -> Result<std::collections::BTreeMap<u32, Vec<u8>>, EventLogError> {
        let size = digest_size(alg).ok_or_else(|| EventLogError {
            event: 0,
            offset: 0,
            field: "bank",
            why: format!("algorithm {alg:#06x} cannot be replayed here"),
        })?;
        let mut pcrs = std::collections::BTreeMap::new();
        for e in &self.events {
            if e.event_type == EV_NO_ACTION {
                continue;
            }
            if e.pcr > 23 {
                return Err(EventLogError {
                    event: e.index,
                    offset: e.offset,
                    field: "pcrIndex",
                    why: format!("PCR {}", e.pcr),
                });
            }
            let Some((_, digest)) = e.digests.iter().find(|(a, _)| *a == alg) else {
                return Err(EventLogError {
                    event: e.index,
                    offset: e.offset,
                    field: "digests",
                    why: format!("no digest for bank {alg:#06x}"),
                });
            };
            let pcr = pcrs.entry(e.pcr).or_insert_with(|| {
                let mut start = vec![0u8; size];
                if e.pcr == 0 {
                    start[size - 1] = self.startup_locality;
                }
                start
            });
            *pcr = extend(alg, pcr, digest);
        }
        Ok(pcrs)
    }
}

fn extend(alg: u16, pcr: &[u8], digest: &[u8]) -> Vec<u8> {
    fn h<D: sha2::Digest>(pcr: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut d = D::new();
        d.update(pcr);
        d.update(digest);
        d.finalize().to_vec()
    }
    match alg {
        ALG_SHA1 => h::<sha1::Sha1>(pcr, digest),
        ALG_SHA384 => h::<sha2::Sha384>(pcr, digest),
        ALG_SHA512 => h::<sha2::Sha512>(pcr, digest),
        _ => h::<sha2::Sha256>(pcr, digest),
    }
}

/// The name of an event type (PC Client Platform Firmware Profile, §10.4.1), for messages.
pub fn event_type_name(t: u32) -> &'static str {
    match t {
        0x0000_0001 => "EV_POST_CODE",
        0x0000_0003 => "EV_NO_ACTION",
        0x0000_0004 => "EV_SEPARATOR",
        0x0000_0005 => "EV_ACTION",
        0x0000_0006 => "EV_EVENT_TAG",
        0x0000_0007 => "EV_S_CRTM_CONTENTS",
        0x0000_0008 => "EV_S_CRTM_VERSION",
        0x0000_0009 => "EV_CPU_MICROCODE",
        0x0000_000a => "EV_PLATFORM_CONFIG_FLAGS",
        0x0000_000b => "EV_TABLE_OF_DEVICES",
        0x0000_000c => "EV_COMPACT_HASH",
        0x0000_000d => "EV_IPL",
        0x0000_000e => "EV_IPL_PARTITION_DATA",
        0x0000_000f => "EV_NONHOST_CODE",
        0x0000_0010 => "EV_NONHOST_CONFIG",
        0x0000_0011 => "EV_NONHOST_INFO",
        0x0000_0012 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00e1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00e2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        _ => "unknown",
    }
}

/// Fuzz entry point: parse and replay anything, never panic.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(log) = EventLog::parse(data) {
        for (alg, _) in &log.algorithms {
            let _ = log.replay(*alg);
        }
    }
}
