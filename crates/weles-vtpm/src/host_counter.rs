//! The monotonic store on the host's TPM: an NV counter (`TPM_NT_COUNTER`), which the TPM only
//! ever increments. Restoring the vTPM's whole state directory cannot restore it.
//!
//! The host TPM is reached through a swtpm-style data socket (raw TPM 2.0 frames over TCP); the
//! counter is defined on first use in the owner hierarchy (empty owner authorisation, as on a
//! host TPM the manager owns) and incremented once right away: a TPM initialises a counter on its
//! first increment to the largest value any counter ever had, so only from then on does each
//! increment add exactly one. A state version *is* the counter's value.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::sealed::{MonotonicStore, StateError};
use crate::tpm_cmd;

const TPM_RH_OWNER: u32 = 0x4000_0001;
const CC_NV_DEFINE_SPACE: u32 = 0x12a;
const CC_NV_INCREMENT: u32 = 0x134;
const CC_NV_READ: u32 = 0x14e;
const CC_NV_READ_PUBLIC: u32 = 0x169;
/// TPM_NT_COUNTER | OWNERWRITE | OWNERREAD | NO_DA.
const COUNTER_ATTRIBUTES: u32 = 0x10 | (1 << 1) | (1 << 17) | (1 << 25);
const TPM_RC_NV_UNINITIALIZED: u32 = 0x14a;
const TPM_RC_RETRY: u32 = 0x922;

/// An NV counter on a TPM reachable at `host:port`.
pub struct HostTpmCounter {
    host: String,
    port: u16,
    index: u32,
}

impl HostTpmCounter {
    /// `index` must be an NV index (0x01xxxxxx), e.g. one reserved per vTPM by the manager.
    pub fn new(host: &str, port: u16, index: u32) -> Result<Self, StateError> {
        let c = HostTpmCounter {
            host: host.into(),
            port,
            index,
        };
        if index >> 24 != 0x01 {
            return Err(c.err(format!("{index:#010x} is not an NV index (0x01xxxxxx)")));
        }
        Ok(c)
    }

    fn err(&self, why: impl Into<String>) -> StateError {
        StateError::Monotonic {
            path: format!("tpm://{}:{}/nv/{:#010x}", self.host, self.port, self.index).into(),
            why: why.into(),
        }
    }

    /// Sends one command; returns (response code, response). Retries TPM_RC_RETRY.
    fn send(&self, cmd: &[u8]) -> Result<(u32, Vec<u8>), StateError> {
        let io = |e: std::io::Error| self.err(format!("host TPM unreachable: {e}"));
        for _ in 0..10 {
            let mut s = TcpStream::connect((self.host.as_str(), self.port)).map_err(io)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(io)?;
            s.write_all(cmd).map_err(io)?;
            let mut head = [0u8; 10];
            s.read_exact(&mut head).map_err(io)?;
            let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
            if !(10..=4096).contains(&size) {
                return Err(self.err(format!("host TPM answered a {size}-byte frame")));
            }
            let mut resp = head.to_vec();
            resp.resize(size, 0);
            s.read_exact(&mut resp[10..]).map_err(io)?;
            let rc = u32::from_be_bytes([head[6], head[7], head[8], head[9]]);
            if rc != TPM_RC_RETRY {
                return Ok((rc, resp));
            }
        }
        Err(self.err("host TPM kept answering TPM_RC_RETRY"))
    }

    fn exists(&self) -> Result<bool, StateError> {
        let (rc, _) = self.send(&tpm_cmd::command(
            CC_NV_READ_PUBLIC,
            &[self.index],
            false,
            &[],
        ))?;
        Ok(rc == 0)
    }

    fn define(&self) -> Result<(), StateError> {
        let mut public = Vec::new();
        public.extend_from_slice(&self.index.to_be_bytes());
        public.extend_from_slice(&0x000bu16.to_be_bytes()); // nameAlg sha256
        public.extend_from_slice(&COUNTER_ATTRIBUTES.to_be_bytes());
        public.extend_from_slice(&0u16.to_be_bytes()); // authPolicy
        public.extend_from_slice(&8u16.to_be_bytes()); // dataSize
        let mut params = vec![0, 0]; // empty index auth
        params.extend_from_slice(&(public.len() as u16).to_be_bytes());
        params.extend_from_slice(&public);
        let (rc, _) = self.send(&tpm_cmd::command(
            CC_NV_DEFINE_SPACE,
            &[TPM_RH_OWNER],
            true,
            &params,
        ))?;
        if rc != 0 {
            return Err(self.err(format!("TPM2_NV_DefineSpace failed: {rc:#x}")));
        }
        Ok(())
    }

    fn increment(&self) -> Result<(), StateError> {
        let (rc, _) = self.send(&tpm_cmd::command(
            CC_NV_INCREMENT,
            &[TPM_RH_OWNER, self.index],
            true,
            &[],
        ))?;
        if rc != 0 {
            return Err(self.err(format!("TPM2_NV_Increment failed: {rc:#x}")));
        }
        Ok(())
    }

    /// The counter's value; `None` if it was defined but never incremented.
    fn read(&self) -> Result<Option<u64>, StateError> {
        let params = [0, 8, 0, 0]; // size 8, offset 0
        let (rc, resp) = self.send(&tpm_cmd::command(
            CC_NV_READ,
            &[TPM_RH_OWNER, self.index],
            true,
            &params,
        ))?;
        if rc == TPM_RC_NV_UNINITIALIZED {
            return Ok(None);
        }
        if rc != 0 {
            return Err(self.err(format!("TPM2_NV_Read failed: {rc:#x}")));
        }
        // parameterSize u32 || TPM2B_MAX_NV_BUFFER (u16 8 || value).
        let value = resp
            .get(14..24)
            .filter(|b| b[..2] == [0, 8])
            .ok_or_else(|| self.err("malformed TPM2_NV_Read response"))?;
        Ok(Some(u64::from_be_bytes(
            value[2..10]
                .try_into()
                .map_err(|_| self.err("malformed counter"))?,
        )))
    }
}

impl MonotonicStore for HostTpmCounter {
    fn current(&self) -> Result<u64, StateError> {
        if !self.exists()? {
            self.define()?;
        }
        match self.read()? {
            Some(v) => Ok(v),
            None => {
                // Defined but never incremented (also after a crash right after defining it).
                self.increment()?;
                self.read()?
                    .ok_or_else(|| self.err("counter still uninitialised after TPM2_NV_Increment"))
            }
        }
    }

    /// Increments until the counter reaches `version` (normally once). Refuses to go down, and
    /// refuses a version far ahead of the counter (a TPM counter moves one step at a time).
    fn advance(&self, version: u64) -> Result<(), StateError> {
        let now = self.current()?;
        if version < now {
            return Err(self.err(format!("refusing to go from {now} down to {version}")));
        }
        if version - now > 16 {
            return Err(self.err(format!(
                "cannot advance from {now} to {version}: the counter moves one step at a time"
            )));
        }
        for _ in now..version {
            self.increment()?;
        }
        match self.read()? {
            Some(v) if v == version => Ok(()),
            other => Err(self.err(format!("counter is at {other:?}, expected {version}"))),
        }
    }
}
