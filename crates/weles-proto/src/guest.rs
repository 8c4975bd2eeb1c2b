//! The guest channel (`docs/guest-protocol.md`): weles-guest in the VM ↔ the manager on the host.
//!
//! Each message is one [`crate::framing`] frame whose body starts with a one-byte kind. Guest
//! messages have kinds below 0x80, manager messages 0x80 and above, so a frame sent the wrong way
//! is refused rather than misread. Everything the guest sends is untrusted: the manager believes
//! log bytes only once they replay to the PCR values it reads from the vTPM itself.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::framing::{self, MAX_FRAME};

/// The protocol version weles-guest announces in [`Hello`].
pub const VERSION: u32 = 1;

/// Most log bytes in one [`GuestMessage::Log`]: a frame less its kind byte and offset.
pub const MAX_LOG_CHUNK: usize = MAX_FRAME - 9;

const HELLO: u8 = 0x01;
const LOG: u8 = 0x02;
const LOG_ERROR: u8 = 0x03;
const HOST_KEY: u8 = 0x04;
const AUTHORIZE: u8 = 0x05;
const WANT: u8 = 0x81;
const SIGNING_SETUP: u8 = 0x82;
const HOST_KEY_RESULT: u8 = 0x83;
const AUTHORIZATION: u8 = 0x84;
const HOST_CERTIFICATE: u8 = 0x85;

/// The guest asks for one use of the host key: TPM2_Sign of `digest` in the policy session
/// whose nonceTPM is given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    /// Chosen by the guest; the answer carries it back.
    pub id: u64,
    pub handle: u32,
    /// Hex.
    pub nonce_tpm: String,
    /// The digest to sign, hex (32 bytes).
    pub digest: String,
}

/// The manager's answer: A's signature for TPM2_PolicySigned, or why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub id: u64,
    pub granted: bool,
    /// Why not, when refused.
    pub reason: String,
    /// TPMT_SIGNATURE by A, hex (when granted).
    pub signature: String,
    pub expiration: i32,
    /// The policyRef (the VM id), hex.
    pub policy_ref: String,
    /// The cpHash the signature covers (of that TPM2_Sign), hex.
    pub cp_hash: String,
}

/// What the guest needs to make the VM's host key in its vTPM (`docs/signing-gate.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSetup {
    /// The VM id: the policyRef of the host key's PolicySigned.
    pub vm: String,
    /// The manager's authority key A, TPMT_PUBLIC, hex.
    pub authority: String,
    /// The host key's authPolicy, hex (PolicySigned(A, vm)).
    pub policy: String,
    /// The persistent handle the host key lives at.
    pub handle: u32,
}

/// The guest's answer to a [`SigningSetup`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeyReport {
    /// The handle holding the host key, or `None` with `error` when it could not be made.
    pub handle: Option<u32>,
    pub error: Option<String>,
}

/// The manager's verdict on the reported host key, read from the vTPM itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeyResult {
    pub accepted: bool,
    /// Why not, when refused.
    pub reason: String,
    /// `SHA256:…` of the key, when accepted.
    pub fingerprint: Option<String>,
}

/// The guest's first message after connecting, and again after it restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// The guest kernel's `/proc/sys/kernel/random/boot_id`: a new value means a new boot.
    pub boot_id: String,
    /// `weles-guest <version>`.
    pub agent: String,
}

/// Guest → manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestMessage {
    Hello(Hello),
    /// IMA log bytes (`binary_runtime_measurements`) starting at byte `offset` of the log.
    Log {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The guest cannot read its IMA log; the text says why.
    LogError(String),
    HostKey(HostKeyReport),
    Authorize(AuthorizeRequest),
}

/// Manager → guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagerMessage {
    /// Send the log from byte `offset` on, then every byte appended to it, as it appears.
    Want {
        offset: u64,
    },
    /// Make (or keep) the VM's host key in the vTPM, and report its handle.
    SigningSetup(SigningSetup),
    HostKeyResult(HostKeyResult),
    Authorization(Authorization),
    /// A (renewed) OpenSSH host certificate for the host key, from the tenant's SSH CA.
    HostCertificate {
        certificate: String,
    },
}

/// Why a frame is not a valid message. Names the byte offset within the frame body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("empty frame: no message kind")]
    Empty,
    #[error("unknown message kind 0x{kind:02x} at byte 0")]
    UnknownKind { kind: u8 },
    #[error("{what} is {len} bytes, expected {expected} (from byte 1)")]
    BadLength {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{what} at byte 1 is not valid: {reason}")]
    BadBody { what: &'static str, reason: String },
}

impl GuestMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            GuestMessage::Hello(h) => {
                let mut out = vec![HELLO];
                out.extend_from_slice(&serde_json::to_vec(h).unwrap_or_default());
                out
            }
            GuestMessage::Log { offset, bytes } => {
                let mut out = Vec::with_capacity(9 + bytes.len());
                out.push(LOG);
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(bytes);
                out
            }
            GuestMessage::LogError(text) => {
                let mut out = vec![LOG_ERROR];
                out.extend_from_slice(text.as_bytes());
                out
            }
            GuestMessage::HostKey(r) => json_message(HOST_KEY, r),
            GuestMessage::Authorize(r) => json_message(AUTHORIZE, r),
        }
    }

    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let (&kind, rest) = body.split_first().ok_or(MessageError::Empty)?;
        match kind {
            HELLO => {
                let hello: Hello =
                    serde_json::from_slice(rest).map_err(|e| MessageError::BadBody {
                        what: "hello",
                        reason: e.to_string(),
                    })?;
                if hello.boot_id.len() > 128 || hello.agent.len() > 128 {
                    return Err(MessageError::BadBody {
                        what: "hello",
                        reason: "boot_id and agent are at most 128 bytes".into(),
                    });
                }
                Ok(GuestMessage::Hello(hello))
            }
            LOG => {
                if rest.len() < 8 {
                    return Err(MessageError::BadLength {
                        what: "log offset",
                        len: rest.len(),
                        expected: 8,
                    });
                }
                let (offset, bytes) = rest.split_at(8);
                let mut o = [0u8; 8];
                o.copy_from_slice(offset);
                Ok(GuestMessage::Log {
                    offset: u64::from_be_bytes(o),
                    bytes: bytes.to_vec(),
                })
            }
            LOG_ERROR => Ok(GuestMessage::LogError(
                String::from_utf8_lossy(&rest[..rest.len().min(4096)]).into_owned(),
            )),
            HOST_KEY => {
                let r: HostKeyReport = json_body("host key report", rest)?;
                if r.error.as_ref().is_some_and(|e| e.len() > 4096) {
                    return Err(MessageError::BadBody {
                        what: "host key report",
                        reason: "error text over 4 KiB".into(),
                    });
                }
                Ok(GuestMessage::HostKey(r))
            }
            AUTHORIZE => {
                let r: AuthorizeRequest = json_body("authorize", rest)?;
                if r.nonce_tpm.len() > 128 || r.digest.len() > 128 {
                    return Err(MessageError::BadBody {
                        what: "authorize",
                        reason: "nonce or digest over 64 bytes".into(),
                    });
                }
                Ok(GuestMessage::Authorize(r))
            }
            kind => Err(MessageError::UnknownKind { kind }),
        }
    }
}

fn json_message(kind: u8, v: &impl Serialize) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out
}

fn json_body<T: serde::de::DeserializeOwned>(
    what: &'static str,
    rest: &[u8],
) -> Result<T, MessageError> {
    serde_json::from_slice(rest).map_err(|e| MessageError::BadBody {
        what,
        reason: e.to_string(),
    })
}

impl ManagerMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ManagerMessage::Want { offset } => {
                let mut out = vec![WANT];
                out.extend_from_slice(&offset.to_be_bytes());
                out
            }
            ManagerMessage::SigningSetup(s) => json_message(SIGNING_SETUP, s),
            ManagerMessage::HostKeyResult(r) => json_message(HOST_KEY_RESULT, r),
            ManagerMessage::Authorization(a) => json_message(AUTHORIZATION, a),
            ManagerMessage::HostCertificate { certificate } => {
                let mut out = vec![HOST_CERTIFICATE];
                out.extend_from_slice(certificate.as_bytes());
                out
            }
        }
    }

    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let (&kind, rest) = body.split_first().ok_or(MessageError::Empty)?;
        match kind {
            WANT => {
                let o: [u8; 8] = rest.try_into().map_err(|_| MessageError::BadLength {
                    what: "want offset",
                    len: rest.len(),
                    expected: 8,
                })?;
                Ok(ManagerMessage::Want {
                    offset: u64::from_be_bytes(o),
                })
            }
            SIGNING_SETUP => Ok(ManagerMessage::SigningSetup(json_body(
                "signing setup",
                rest,
            )?)),
            HOST_KEY_RESULT => Ok(ManagerMessage::HostKeyResult(json_body(
                "host key result",
                rest,
            )?)),
            AUTHORIZATION => Ok(ManagerMessage::Authorization(json_body(
                "authorization",
                rest,
            )?)),
            HOST_CERTIFICATE => Ok(ManagerMessage::HostCertificate {
                certificate: String::from_utf8(rest.to_vec()).map_err(|_| {
                    MessageError::BadBody {
                        what: "host certificate",
                        reason: "not UTF-8".into(),
                    }
                })?,
            }),
            kind => Err(MessageError::UnknownKind { kind }),
        }
    }
}

/// Reads one guest message; `Ok(None)` at a clean end of stream. A malformed message is an
/// `InvalidData` error naming what is wrong.
pub fn read_guest(r: &mut impl Read) -> io::Result<Option<GuestMessage>> {
    read_with(r, GuestMessage::decode)
}

/// Reads one manager message; `Ok(None)` at a clean end of stream.
pub fn read_manager(r: &mut impl Read) -> io::Result<Option<ManagerMessage>> {
    read_with(r, ManagerMessage::decode)
}

fn read_with<T>(
    r: &mut impl Read,
    decode: fn(&[u8]) -> Result<T, MessageError>,
) -> io::Result<Option<T>> {
    match framing::read_frame(r)? {
        None => Ok(None),
        Some(body) => decode(&body)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

pub fn write_guest(w: &mut impl Write, msg: &GuestMessage) -> io::Result<()> {
    framing::write_frame(w, &msg.encode())
}

pub fn write_manager(w: &mut impl Write, msg: &ManagerMessage) -> io::Result<()> {
    framing::write_frame(w, &msg.encode())
}

/// Fuzz entry point: decoding arbitrary bytes as either side's message never panics, and what
/// decodes re-encodes to the same bytes (except lossy error text).
pub fn fuzz_decode(data: &[u8]) {
    // JSON and lossy text do not re-encode byte for byte; the binary messages do.
    if let Ok(m @ GuestMessage::Log { .. }) = GuestMessage::decode(data) {
        assert_eq!(m.encode(), data);
    }
    if let Ok(m @ ManagerMessage::Want { .. }) = ManagerMessage::decode(data) {
        assert_eq!(m.encode(), data);
    }
    let mut r = data;
    while let Ok(Some(_)) = read_guest(&mut r) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let msgs = [
            GuestMessage::Hello(Hello {
                version: VERSION,
                boot_id: "b0".into(),
                agent: "weles-guest 0.1.0".into(),
            }),
            GuestMessage::Log {
                offset: 77,
                bytes: vec![1, 2, 3],
            },
            GuestMessage::LogError("no securityfs".into()),
            GuestMessage::HostKey(HostKeyReport {
                handle: Some(0x8100_0100),
                error: None,
            }),
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_guest(&mut wire, m).unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            assert_eq!(&read_guest(&mut r).unwrap().unwrap(), m);
        }
        assert!(read_guest(&mut r).unwrap().is_none());
        let msgs = [
            ManagerMessage::Want { offset: 1 << 40 },
            ManagerMessage::SigningSetup(SigningSetup {
                vm: "vm-1".into(),
                authority: "0023".into(),
                policy: "00".repeat(32),
                handle: 0x8100_0100,
            }),
            ManagerMessage::HostKeyResult(HostKeyResult {
                accepted: false,
                reason: "wrong policy".into(),
                fingerprint: None,
            }),
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_manager(&mut wire, m).unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            assert_eq!(&read_manager(&mut r).unwrap().unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        assert_eq!(GuestMessage::decode(&[]), Err(MessageError::Empty));
        assert_eq!(
            GuestMessage::decode(&[0x81, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(MessageError::UnknownKind { kind: 0x81 }),
            "a manager message is not a guest message"
        );
        assert_eq!(
            GuestMessage::decode(&[LOG, 1, 2]),
            Err(MessageError::BadLength {
                what: "log offset",
                len: 2,
                expected: 8
            })
        );
        assert!(matches!(
            GuestMessage::decode(b"\x01{\"version\":1}"),
            Err(MessageError::BadBody { what: "hello", .. })
        ));
        let long = format!(
            "\x01{{\"version\":1,\"boot_id\":\"{}\",\"agent\":\"a\"}}",
            "x".repeat(200)
        );
        assert!(GuestMessage::decode(long.as_bytes()).is_err());
        assert!(ManagerMessage::decode(&[WANT, 0]).is_err());
        assert!(ManagerMessage::decode(&[LOG, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
