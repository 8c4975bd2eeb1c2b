//! swtpm's control-channel protocol (the `CMD_*` of swtpm's `tpm_ioctl.h`), as QEMU's
//! `-tpmdev emulator` and libvirt speak it. Documented in `docs/vtpm-protocol.md`.
//!
//! A request is `u32 command || body`; a response is the body of the command's `ptm_*`
//! response. Every integer is big-endian. Bodies have fixed sizes except HASH_DATA and
//! SET_STATEBLOB, which carry a length and that many bytes.

/// Command codes.
pub mod cmd {
    pub const GET_CAPABILITY: u32 = 0x01;
    pub const INIT: u32 = 0x02;
    pub const SHUTDOWN: u32 = 0x03;
    pub const GET_TPMESTABLISHED: u32 = 0x04;
    pub const SET_LOCALITY: u32 = 0x05;
    pub const HASH_START: u32 = 0x06;
    pub const HASH_DATA: u32 = 0x07;
    pub const HASH_END: u32 = 0x08;
    pub const CANCEL_TPM_CMD: u32 = 0x09;
    pub const STORE_VOLATILE: u32 = 0x0a;
    pub const RESET_TPMESTABLISHED: u32 = 0x0b;
    pub const GET_STATEBLOB: u32 = 0x0c;
    pub const SET_STATEBLOB: u32 = 0x0d;
    pub const STOP: u32 = 0x0e;
    pub const GET_CONFIG: u32 = 0x0f;
    pub const SET_DATAFD: u32 = 0x10;
    pub const SET_BUFFERSIZE: u32 = 0x11;
    pub const GET_INFO: u32 = 0x12;
}

/// `PTM_CAP_*` bits we implement.
pub const CAPABILITIES: u64 = (1 << 0) // INIT
    | (1 << 1) // SHUTDOWN
    | (1 << 2) // GET_TPMESTABLISHED
    | (1 << 3) // SET_LOCALITY
    | (1 << 4) // HASHING
    | (1 << 5) // CANCEL_TPM_CMD
    | (1 << 6) // STORE_VOLATILE
    | (1 << 7) // RESET_TPMESTABLISHED
    | (1 << 8) // GET_STATEBLOB
    | (1 << 9) // SET_STATEBLOB
    | (1 << 10) // STOP
    | (1 << 11) // GET_CONFIG
    | (1 << 12) // SET_DATAFD
    | (1 << 13) // SET_BUFFERSIZE
    | (1 << 14); // GET_INFO

/// Most data one HASH_DATA request carries (`ptm_hdata.u.req.data`).
pub const HASH_DATA_MAX: u32 = 4096;
/// Largest state blob accepted by SET_STATEBLOB.
pub const STATE_BLOB_MAX: u32 = 4 << 20;
/// Bytes of GET_STATEBLOB/GET_INFO data per response.
pub const GETINFO_CHUNK: usize = 3 * 1024;

/// A decoded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    GetCapability,
    Init {
        flags: u32,
    },
    Shutdown,
    GetTpmEstablished,
    SetLocality {
        locality: u8,
    },
    HashStart,
    HashData {
        data: Vec<u8>,
    },
    HashEnd,
    CancelTpmCmd,
    StoreVolatile,
    ResetTpmEstablished {
        locality: u8,
    },
    GetStateBlob {
        flags: u32,
        kind: u32,
        offset: u32,
    },
    SetStateBlob {
        flags: u32,
        kind: u32,
        data: Vec<u8>,
    },
    Stop,
    GetConfig,
    SetDataFd,
    SetBufferSize {
        size: u32,
    },
    GetInfo {
        flags: u64,
        offset: u32,
    },
    /// A command code we do not know: answered with TPM_BAD_ORDINAL.
    Unknown(u32),
}

/// Why bytes are not (yet) a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    /// More bytes are needed; the total needed so far is given.
    #[error("incomplete request: {needed} bytes needed")]
    Incomplete { needed: usize },
    /// The request cannot be valid (a length beyond its limit): answered with TPM_BAD_PARAMETER.
    #[error("invalid request {command:#x}: {why}")]
    Invalid { command: u32, why: &'static str },
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one request from the start of `buf`; returns it and the bytes it used.
///
/// Fixed-size bodies are as QEMU sends them (the whole `ptm_*` union); SET_LOCALITY and
/// RESET_TPMESTABLISHED need only their first byte, as swtpm accepts.
pub fn parse(buf: &[u8]) -> Result<(Request, usize), CtrlError> {
    if buf.len() < 4 {
        return Err(CtrlError::Incomplete { needed: 4 });
    }
    let command = be32(buf, 0);
    let body = &buf[4..];
    let need = |n: usize| -> Result<(), CtrlError> {
        if body.len() < n {
            Err(CtrlError::Incomplete { needed: 4 + n })
        } else {
            Ok(())
        }
    };
    let (req, used) = match command {
        cmd::GET_CAPABILITY => (Request::GetCapability, 0),
        cmd::INIT => {
            need(4)?;
            (
                Request::Init {
                    flags: be32(body, 0),
                },
                4,
            )
        }
        cmd::SHUTDOWN => (Request::Shutdown, 0),
        cmd::GET_TPMESTABLISHED => (Request::GetTpmEstablished, 0),
        cmd::SET_LOCALITY => {
            need(1)?;
            (
                Request::SetLocality { locality: body[0] },
                body.len().min(4),
            )
        }
        cmd::HASH_START => (Request::HashStart, 0),
        cmd::HASH_DATA => {
            need(4)?;
            let len = be32(body, 0);
            if len > HASH_DATA_MAX {
                return Err(CtrlError::Invalid {
                    command,
                    why: "hash data longer than 4096 bytes",
                });
            }
            need(4 + len as usize)?;
            (
                Request::HashData {
                    data: body[4..4 + len as usize].to_vec(),
                },
                4 + len as usize,
            )
        }
        cmd::HASH_END => (Request::HashEnd, 0),
        cmd::CANCEL_TPM_CMD => (Request::CancelTpmCmd, 0),
        cmd::STORE_VOLATILE => (Request::StoreVolatile, 0),
        cmd::RESET_TPMESTABLISHED => {
            need(1)?;
            (
                Request::ResetTpmEstablished { locality: body[0] },
                body.len().min(4),
            )
        }
        cmd::GET_STATEBLOB => {
            need(12)?;
            (
                Request::GetStateBlob {
                    flags: be32(body, 0),
                    kind: be32(body, 4),
                    offset: be32(body, 8),
                },
                12,
            )
        }
        cmd::SET_STATEBLOB => {
            need(12)?;
            let len = be32(body, 8);
            if len > STATE_BLOB_MAX {
                return Err(CtrlError::Invalid {
                    command,
                    why: "state blob larger than 4 MiB",
                });
            }
            need(12 + len as usize)?;
            let data = body[12..12 + len as usize].to_vec();
            (
                Request::SetStateBlob {
                    flags: be32(body, 0),
                    kind: be32(body, 4),
                    data,
                },
                12 + len as usize,
            )
        }
        cmd::STOP => (Request::Stop, 0),
        cmd::GET_CONFIG => (Request::GetConfig, 0),
        cmd::SET_DATAFD => (Request::SetDataFd, 0),
        cmd::SET_BUFFERSIZE => {
            need(4)?;
            (
                Request::SetBufferSize {
                    size: be32(body, 0),
                },
                4,
            )
        }
        cmd::GET_INFO => {
            need(16)?;
            let flags = u64::from_be_bytes(body[..8].try_into().unwrap_or_default());
            (
                Request::GetInfo {
                    flags,
                    offset: be32(body, 8),
                },
                16,
            )
        }
        other => (Request::Unknown(other), 0),
    };
    Ok((req, 4 + used))
}

/// Encodes a request (the client side: tools, tests).
pub fn encode(req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    let code = match req {
        Request::GetCapability => cmd::GET_CAPABILITY,
        Request::Init { .. } => cmd::INIT,
        Request::Shutdown => cmd::SHUTDOWN,
        Request::GetTpmEstablished => cmd::GET_TPMESTABLISHED,
        Request::SetLocality { .. } => cmd::SET_LOCALITY,
        Request::HashStart => cmd::HASH_START,
        Request::HashData { .. } => cmd::HASH_DATA,
        Request::HashEnd => cmd::HASH_END,
        Request::CancelTpmCmd => cmd::CANCEL_TPM_CMD,
        Request::StoreVolatile => cmd::STORE_VOLATILE,
        Request::ResetTpmEstablished { .. } => cmd::RESET_TPMESTABLISHED,
        Request::GetStateBlob { .. } => cmd::GET_STATEBLOB,
        Request::SetStateBlob { .. } => cmd::SET_STATEBLOB,
        Request::Stop => cmd::STOP,
        Request::GetConfig => cmd::GET_CONFIG,
        Request::SetDataFd => cmd::SET_DATAFD,
        Request::SetBufferSize { .. } => cmd::SET_BUFFERSIZE,
        Request::GetInfo { .. } => cmd::GET_INFO,
        Request::Unknown(c) => *c,
    };
    out.extend_from_slice(&code.to_be_bytes());
    match req {
        Request::Init { flags } => out.extend_from_slice(&flags.to_be_bytes()),
        Request::SetLocality { locality } | Request::ResetTpmEstablished { locality } => {
            out.extend_from_slice(&[*locality, 0, 0, 0])
        }
        Request::HashData { data } => {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
        }
        Request::GetStateBlob {
            flags,
            kind,
            offset,
        } => {
            for v in [flags, kind, offset] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        Request::SetStateBlob { flags, kind, data } => {
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
        }
        Request::SetBufferSize { size } => out.extend_from_slice(&size.to_be_bytes()),
        Request::GetInfo { flags, offset } => {
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
        }
        _ => {}
    }
    out
}

/// A response body from its parts (each field big-endian).
#[derive(Default)]
pub struct Response(pub Vec<u8>);

impl Response {
    pub fn result(rc: u32) -> Self {
        Response(rc.to_be_bytes().to_vec())
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_incomplete_input() {
        let reqs = [
            Request::GetCapability,
            Request::Init { flags: 1 },
            Request::SetLocality { locality: 3 },
            Request::HashData {
                data: vec![1, 2, 3],
            },
            Request::GetStateBlob {
                flags: 0,
                kind: 1,
                offset: 7,
            },
            Request::SetStateBlob {
                flags: 0,
                kind: 2,
                data: vec![9; 100],
            },
            Request::SetBufferSize { size: 4096 },
            Request::GetInfo {
                flags: 3,
                offset: 0,
            },
            Request::Unknown(0x99),
        ];
        for r in reqs {
            let bytes = encode(&r);
            assert_eq!(parse(&bytes), Ok((r.clone(), bytes.len())), "{r:?}");
            for cut in 0..bytes.len() {
                if let Err(e) = parse(&bytes[..cut]) {
                    assert!(
                        matches!(e, CtrlError::Incomplete { needed } if needed > cut),
                        "{r:?} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn oversized_lengths_are_invalid_at_once() {
        let mut hd = cmd::HASH_DATA.to_be_bytes().to_vec();
        hd.extend(u32::MAX.to_be_bytes());
        assert!(matches!(parse(&hd), Err(CtrlError::Invalid { .. })));
        let mut ss = cmd::SET_STATEBLOB.to_be_bytes().to_vec();
        ss.extend([0u8; 8]);
        ss.extend(u32::MAX.to_be_bytes());
        assert!(matches!(parse(&ss), Err(CtrlError::Invalid { .. })));
    }
}
