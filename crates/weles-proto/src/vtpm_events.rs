//! weles-vtpm's event socket (`docs/vtpm-protocol.md` §5): events and management requests.
//!
//! weles-vtpm writes [`Message`]s and reads [`Request`]s; the manager does the reverse. Both are
//! JSON objects in [`crate::framing`] frames.

use serde::{Deserialize, Serialize};

use crate::framing;

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
pub const MAX_MESSAGE: usize = framing::MAX_FRAME;

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
    let Some(body) = framing::read_frame(r)? else {
        return Ok(None);
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
