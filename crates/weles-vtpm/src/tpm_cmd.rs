//! The few TPM 2.0 structures the vTPM reads itself: which PCR a command changed and with what,
//! and the commands it issues for events and management requests (PCR_Read, ReadPublic).
//!
//! Command bytes come from the guest: every read is bounds-checked and anything unexpected
//! yields `None` (no event is better than a wrong one; the manager then sees a PCR it cannot
//! explain and fails closed).

pub const CC_PCR_EXTEND: u32 = 0x182;
pub const CC_PCR_EVENT: u32 = 0x13c;
pub const CC_PCR_RESET: u32 = 0x13d;
pub const CC_STARTUP: u32 = 0x144;
pub const CC_SHUTDOWN: u32 = 0x145;
pub const CC_PCR_READ: u32 = 0x17e;
pub const CC_READ_PUBLIC: u32 = 0x173;

/// Banks a PCR_Read asks for (the TPM answers with the allocated ones).
pub const BANKS: [u16; 4] = [0x0004, 0x000b, 0x000c, 0x000d];

/// (TPM algorithm id, digest) pairs, as a TPML_DIGEST_VALUES or a PCR_Read lists them.
pub type AlgDigests = Vec<(u16, Vec<u8>)>;

pub fn bank_name(alg: u16) -> String {
    match alg {
        0x0004 => "sha1".into(),
        0x000b => "sha256".into(),
        0x000c => "sha384".into(),
        0x000d => "sha512".into(),
        0x0012 => "sm3_256".into(),
        other => format!("alg:{other:#06x}"),
    }
}

fn digest_len(alg: u16) -> Option<usize> {
    Some(match alg {
        0x0004 => 20,
        0x000b | 0x0012 => 32,
        0x000c => 48,
        0x000d => 64,
        _ => return None,
    })
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// A TPML_DIGEST_VALUES: (algorithm, digest) pairs.
fn digest_values(r: &mut R<'_>) -> Option<AlgDigests> {
    let count = r.u32()?;
    if count > 16 {
        return None;
    }
    (0..count)
        .map(|_| {
            let alg = r.u16()?;
            Some((alg, r.take(digest_len(alg)?)?.to_vec()))
        })
        .collect()
}

/// The PCR handle of a command that names one first (PCR_Extend, PCR_Event, PCR_Reset).
pub fn pcr_handle(cmd: &[u8]) -> Option<u32> {
    let h = R { b: cmd, pos: 10 }.u32()?;
    (h < 24).then_some(h)
}

/// TPM2_PCR_Extend: the PCR and the digests extended into it.
pub fn extend_digests(cmd: &[u8]) -> Option<(u32, AlgDigests)> {
    let pcr = pcr_handle(cmd)?;
    let mut r = R { b: cmd, pos: 14 };
    let auth = r.u32()? as usize;
    r.take(auth)?;
    Some((pcr, digest_values(&mut r)?))
}

/// TPM2_PCR_Event's response: the digests the TPM computed and extended.
pub fn event_response_digests(resp: &[u8]) -> Option<AlgDigests> {
    let mut r = R { b: resp, pos: 10 };
    r.u32()?; // parameterSize (the command has a session)
    digest_values(&mut r)
}

/// TPM2_Startup / TPM2_Shutdown: whether the type is CLEAR (0) rather than STATE (1).
pub fn su_clear(cmd: &[u8]) -> Option<bool> {
    match (R { b: cmd, pos: 10 }).u16()? {
        0 => Some(true),
        1 => Some(false),
        _ => None,
    }
}

/// The response code of a response.
pub fn response_code(resp: &[u8]) -> Option<u32> {
    R { b: resp, pos: 6 }.u32()
}

/// A command frame: `handles`, then (if `password_session`) one TPM_RS_PW session with an empty
/// password, then `params` — weles-tpm's builder, which the guest uses too.
pub fn command(cc: u32, handles: &[u32], password_session: bool, params: &[u8]) -> Vec<u8> {
    weles_tpm::commands::command(cc, handles, usize::from(password_session), params)
}

/// TPM2_PCR_Read of one PCR in every bank.
pub fn pcr_read(pcr: u32) -> Vec<u8> {
    let mut c = Vec::with_capacity(40);
    c.extend_from_slice(&0x8001u16.to_be_bytes());
    c.extend_from_slice(&0u32.to_be_bytes());
    c.extend_from_slice(&CC_PCR_READ.to_be_bytes());
    c.extend_from_slice(&(BANKS.len() as u32).to_be_bytes());
    for alg in BANKS {
        c.extend_from_slice(&alg.to_be_bytes());
        let mut select = [3u8, 0, 0, 0];
        if pcr < 24 {
            select[1 + (pcr / 8) as usize] = 1 << (pcr % 8);
        }
        c.extend_from_slice(&select);
    }
    let len = c.len() as u32;
    c[2..6].copy_from_slice(&len.to_be_bytes());
    c
}

/// The (algorithm, value) pairs of a PCR_Read response for a single PCR.
pub fn parse_pcr_read(resp: &[u8]) -> Option<AlgDigests> {
    if response_code(resp)? != 0 {
        return None;
    }
    let mut r = R { b: resp, pos: 10 };
    r.u32()?; // pcrUpdateCounter
    let count = r.u32()?;
    if count > 16 {
        return None;
    }
    let mut banks = Vec::new();
    for _ in 0..count {
        let alg = r.u16()?;
        let size = r.u8()? as usize;
        let select = r.take(size)?;
        if select.iter().any(|b| *b != 0) {
            banks.push(alg);
        }
    }
    let digests = r.u32()?;
    if digests as usize != banks.len() {
        return None;
    }
    banks
        .into_iter()
        .map(|alg| {
            let len = r.u16()? as usize;
            Some((alg, r.take(len)?.to_vec()))
        })
        .collect()
}

/// TPM2_ReadPublic of `handle`.
pub fn read_public(handle: u32) -> Vec<u8> {
    let mut c = Vec::with_capacity(14);
    c.extend_from_slice(&0x8001u16.to_be_bytes());
    c.extend_from_slice(&14u32.to_be_bytes());
    c.extend_from_slice(&CC_READ_PUBLIC.to_be_bytes());
    c.extend_from_slice(&handle.to_be_bytes());
    c
}

/// (TPM2B_PUBLIC contents, name) of a ReadPublic response.
pub fn parse_read_public(resp: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if response_code(resp)? != 0 {
        return None;
    }
    let mut r = R { b: resp, pos: 10 };
    let n = r.u16()? as usize;
    let public = r.take(n)?.to_vec();
    let n = r.u16()? as usize;
    let name = r.take(n)?.to_vec();
    Some((public, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_extend_and_refuses_garbage() {
        // PCR_Extend(10, sha256) with a password session.
        let mut c = vec![
            0x80, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x82, 0, 0, 0, 10, 0, 0, 0, 9,
        ];
        c.extend([0x40, 0, 0, 9, 0, 0, 1, 0, 0]);
        c.extend([0, 0, 0, 1, 0, 0x0b]);
        c.extend([7u8; 32]);
        let (pcr, d) = extend_digests(&c).unwrap();
        assert_eq!((pcr, d[0].0, d[0].1.len()), (10, 0x0b, 32));
        assert!(extend_digests(&c[..c.len() - 1]).is_none());
        let mut bad = c.clone();
        bad[13] = 99;
        assert!(extend_digests(&bad).is_none());
        let mut huge_auth = c.clone();
        huge_auth[14..18].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(extend_digests(&huge_auth).is_none());
        assert!(parse_pcr_read(&[0x80, 1, 0, 0, 0, 10, 0, 0, 0, 0]).is_none());
        assert_eq!(pcr_read(10).len(), 10 + 4 + 4 * 6);
    }
}
