//! The few TPM 2.0 commands the guest agent issues to make and keep the host key, marshalled
//! by hand (Part 3), and their responses, parsed with every length checked.

use crate::ids::*;
use crate::public::{EccPublic, tpm2b};

pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
pub const TPM_ST_SESSIONS: u16 = 0x8002;
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
pub const TPM_RS_PW: u32 = 0x4000_0009;
pub const CC_CREATE_PRIMARY: u32 = 0x131;
pub const CC_CREATE: u32 = 0x153;
pub const CC_LOAD: u32 = 0x157;
pub const CC_EVICT_CONTROL: u32 = 0x120;
pub const CC_FLUSH_CONTEXT: u32 = 0x165;
pub const CC_READ_PUBLIC: u32 = 0x173;
/// TPM_RC_HANDLE for handle 1 (no object at that handle).
pub const RC_HANDLE_1: u32 = 0x18b;

/// A command; `authorized` handles each get an empty password session.
pub fn command(cc: u32, handles: &[u32], authorized: usize, params: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for h in handles {
        body.extend_from_slice(&h.to_be_bytes());
    }
    if authorized > 0 {
        let one = [0x40, 0, 0, 9, 0, 0, 0, 0, 0]; // TPM_RS_PW, no nonce, no attributes, empty password
        body.extend_from_slice(&((one.len() * authorized) as u32).to_be_bytes());
        for _ in 0..authorized {
            body.extend_from_slice(&one);
        }
    }
    body.extend_from_slice(params);
    let tag = if authorized > 0 {
        TPM_ST_SESSIONS
    } else {
        TPM_ST_NO_SESSIONS
    };
    let mut c = Vec::with_capacity(10 + body.len());
    c.extend_from_slice(&tag.to_be_bytes());
    c.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    c.extend_from_slice(&cc.to_be_bytes());
    c.extend_from_slice(&body);
    c
}

/// The storage primary under which the host key is made: the TCG's ECC P-256 SRK template
/// (restricted decryption key, AES-128-CFB), so it is the same key every time it is made.
pub fn srk_template() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&ALG_ECC.to_be_bytes());
    t.extend_from_slice(&ALG_SHA256.to_be_bytes());
    let attrs = FIXED_TPM
        | FIXED_PARENT
        | SENSITIVE_DATA_ORIGIN
        | USER_WITH_AUTH
        | NO_DA
        | RESTRICTED
        | DECRYPT;
    t.extend_from_slice(&attrs.to_be_bytes());
    tpm2b(&mut t, &[]);
    t.extend_from_slice(&0x0006u16.to_be_bytes()); // TPM_ALG_AES
    t.extend_from_slice(&128u16.to_be_bytes());
    t.extend_from_slice(&0x0043u16.to_be_bytes()); // TPM_ALG_CFB
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // scheme
    t.extend_from_slice(&ECC_NIST_P256.to_be_bytes());
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // kdf
    tpm2b(&mut t, &[]);
    tpm2b(&mut t, &[]);
    t
}

/// An empty TPM2B_SENSITIVE_CREATE (no password, no data) and the creation tail: empty
/// outsideInfo, no PCR selection.
fn creation_params(public: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 4, 0, 0, 0, 0];
    tpm2b(&mut p, public);
    tpm2b(&mut p, &[]);
    p.extend_from_slice(&0u32.to_be_bytes());
    p
}

pub fn create_primary_srk() -> Vec<u8> {
    command(
        CC_CREATE_PRIMARY,
        &[TPM_RH_OWNER],
        1,
        &creation_params(&srk_template()),
    )
}

pub fn create(parent: u32, template: &EccPublic) -> Vec<u8> {
    command(
        CC_CREATE,
        &[parent],
        1,
        &creation_params(&template.marshal()),
    )
}

pub fn load(parent: u32, private: &[u8], public: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    tpm2b(&mut p, private);
    tpm2b(&mut p, public);
    command(CC_LOAD, &[parent], 1, &p)
}

/// Makes `object` persistent at `persistent`, or (with `object == persistent`) removes it.
pub fn evict_control(object: u32, persistent: u32) -> Vec<u8> {
    command(
        CC_EVICT_CONTROL,
        &[TPM_RH_OWNER, object],
        1,
        &persistent.to_be_bytes(),
    )
}

pub fn flush_context(handle: u32) -> Vec<u8> {
    command(CC_FLUSH_CONTEXT, &[], 0, &handle.to_be_bytes())
}

pub fn read_public(handle: u32) -> Vec<u8> {
    command(CC_READ_PUBLIC, &[handle], 0, &[])
}

/// Why a response is not what was asked for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("TPM error {0:#x}")]
    Tpm(u32),
    #[error("malformed TPM response at byte {0}")]
    Malformed(usize),
}

struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ResponseError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(ResponseError::Malformed(self.at))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(ResponseError::Malformed(self.at))?;
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, ResponseError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, ResponseError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], ResponseError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// Checks the header; returns a cursor at the response's handles.
fn open(resp: &[u8]) -> Result<(Cur<'_>, u16), ResponseError> {
    let mut c = Cur { b: resp, at: 0 };
    let tag = c.u16()?;
    let size = c.u32()? as usize;
    if size != resp.len() {
        return Err(ResponseError::Malformed(2));
    }
    let rc = c.u32()?;
    if rc != 0 {
        return Err(ResponseError::Tpm(rc));
    }
    Ok((c, tag))
}

/// The response code of any response (0: success).
pub fn response_code(resp: &[u8]) -> Result<u32, ResponseError> {
    match open(resp) {
        Ok(_) => Ok(0),
        Err(ResponseError::Tpm(rc)) => Ok(rc),
        Err(e) => Err(e),
    }
}

/// The object handle of a CreatePrimary or Load response.
pub fn parse_handle(resp: &[u8]) -> Result<u32, ResponseError> {
    let (mut c, _) = open(resp)?;
    c.u32()
}

/// (TPM2B_PRIVATE contents, TPM2B_PUBLIC contents) of a Create response.
pub fn parse_create(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ResponseError> {
    let (mut c, tag) = open(resp)?;
    if tag == TPM_ST_SESSIONS {
        c.u32()?; // parameterSize
    }
    let private = c.tpm2b()?.to_vec();
    let public = c.tpm2b()?.to_vec();
    Ok((private, public))
}

/// (TPMT_PUBLIC, name) of a ReadPublic response.
pub fn parse_read_public(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ResponseError> {
    let (mut c, _) = open(resp)?;
    let public = c.tpm2b()?.to_vec();
    let name = c.tpm2b()?.to_vec();
    Ok((public, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_have_their_sizes_and_responses_are_bounds_checked() {
        for c in [
            create_primary_srk(),
            flush_context(0x8000_0000),
            read_public(0x8100_0100),
        ] {
            assert_eq!(
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]) as usize,
                c.len()
            );
        }
        let ok_handle = [0x80, 0x01, 0, 0, 0, 14, 0, 0, 0, 0, 0x80, 0, 0, 1];
        assert_eq!(parse_handle(&ok_handle), Ok(0x8000_0001));
        let err = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x8b];
        assert_eq!(parse_handle(&err), Err(ResponseError::Tpm(RC_HANDLE_1)));
        assert_eq!(response_code(&err), Ok(RC_HANDLE_1));
        // Lies about sizes are caught, not followed.
        let mut lie = ok_handle;
        lie[5] = 200;
        assert!(matches!(
            parse_handle(&lie),
            Err(ResponseError::Malformed(_))
        ));
        let short = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0, 0, 0xff, 0xff];
        assert!(matches!(
            parse_read_public(&short),
            Err(ResponseError::Malformed(_))
        ));
        for n in 0..ok_handle.len() {
            let _ = parse_handle(&ok_handle[..n]);
            let _ = parse_create(&ok_handle[..n]);
        }
    }
}
