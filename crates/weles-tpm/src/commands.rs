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
pub const CC_START_AUTH_SESSION: u32 = 0x176;
pub const CC_LOAD_EXTERNAL: u32 = 0x167;
pub const TPM_SE_POLICY: u8 = 0x01;

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

/// An unsalted, unbound policy session with SHA-256 and no parameter encryption.
pub fn start_policy_session(nonce_caller: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    tpm2b(&mut p, nonce_caller);
    tpm2b(&mut p, &[]); // encryptedSalt
    p.push(TPM_SE_POLICY);
    p.extend_from_slice(&ALG_NULL.to_be_bytes()); // symmetric
    p.extend_from_slice(&ALG_SHA256.to_be_bytes());
    command(CC_START_AUTH_SESSION, &[RH_NULL, RH_NULL], 0, &p)
}

/// Loads a public area alone (no private part) in the NULL hierarchy: A, to check signatures.
pub fn load_external_public(public: &EccPublic) -> Vec<u8> {
    let mut p = vec![0, 0]; // no sensitive part
    tpm2b(&mut p, &public.marshal());
    p.extend_from_slice(&RH_NULL.to_be_bytes());
    command(CC_LOAD_EXTERNAL, &[], 0, &p)
}

/// TPM2_PolicySigned with `auth_object` (A) over `session`.
pub fn policy_signed(
    auth_object: u32,
    session: u32,
    nonce_tpm: &[u8],
    cp_hash: &[u8],
    policy_ref: &[u8],
    expiration: i32,
    signature: &[u8],
) -> Vec<u8> {
    let mut p = Vec::new();
    tpm2b(&mut p, nonce_tpm);
    tpm2b(&mut p, cp_hash);
    tpm2b(&mut p, policy_ref);
    p.extend_from_slice(&expiration.to_be_bytes());
    p.extend_from_slice(signature);
    command(CC_POLICY_SIGNED, &[auth_object, session], 0, &p)
}

/// TPM2_Sign of `digest` with `key`, authorized by the policy `session` (which ends with it).
pub fn sign_with_policy(key: u32, session: u32, digest: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    tpm2b(&mut p, digest);
    p.extend_from_slice(&ALG_ECDSA.to_be_bytes());
    p.extend_from_slice(&ALG_SHA256.to_be_bytes());
    p.extend_from_slice(&ST_HASHCHECK.to_be_bytes());
    p.extend_from_slice(&RH_NULL.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    let mut body = Vec::new();
    body.extend_from_slice(&key.to_be_bytes());
    // Authorization area: the policy session, no nonce, no attributes, no HMAC.
    let area = [&session.to_be_bytes()[..], &[0, 0, 0, 0, 0][..]].concat();
    body.extend_from_slice(&(area.len() as u32).to_be_bytes());
    body.extend_from_slice(&area);
    body.extend_from_slice(&p);
    let mut c = Vec::with_capacity(10 + body.len());
    c.extend_from_slice(&TPM_ST_SESSIONS.to_be_bytes());
    c.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    c.extend_from_slice(&CC_SIGN.to_be_bytes());
    c.extend_from_slice(&body);
    c
}

// --- host attestation: EK certificate, AK, credential activation, quote --------------------

pub const CC_NV_READ: u32 = 0x14e;
pub const CC_NV_READ_PUBLIC: u32 = 0x169;
pub const CC_QUOTE: u32 = 0x158;
pub const CC_PCR_READ: u32 = 0x17e;
pub const CC_POLICY_SECRET: u32 = 0x151;
pub const CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;

/// A command whose authorization area has one entry per session handle in `sessions`: the
/// password session (TPM_RS_PW) with an empty password, or a policy session that already holds
/// its policy (no nonce, no attributes: it ends with the command).
pub fn command_with_sessions(cc: u32, handles: &[u32], sessions: &[u32], params: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for h in handles {
        body.extend_from_slice(&h.to_be_bytes());
    }
    let mut area = Vec::new();
    for s in sessions {
        area.extend_from_slice(&s.to_be_bytes());
        area.extend_from_slice(&[0, 0, 0, 0, 0]); // nonce, attributes, hmac/password
    }
    body.extend_from_slice(&(area.len() as u32).to_be_bytes());
    body.extend_from_slice(&area);
    body.extend_from_slice(params);
    let mut c = Vec::with_capacity(10 + body.len());
    c.extend_from_slice(&TPM_ST_SESSIONS.to_be_bytes());
    c.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    c.extend_from_slice(&cc.to_be_bytes());
    c.extend_from_slice(&body);
    c
}

/// TPML_PCR_SELECTION of `pcrs` (each < 24) in each bank of `algs`.
pub fn pcr_selection(algs: &[u16], pcrs: &[u32]) -> Vec<u8> {
    let mut b = (algs.len() as u32).to_be_bytes().to_vec();
    let mut bits = [0u8; 3];
    for p in pcrs.iter().filter(|p| **p < 24) {
        bits[(*p / 8) as usize] |= 1 << (p % 8);
    }
    for a in algs {
        b.extend_from_slice(&a.to_be_bytes());
        b.push(3);
        b.extend_from_slice(&bits);
    }
    b
}

pub fn nv_read_public(index: u32) -> Vec<u8> {
    command(CC_NV_READ_PUBLIC, &[index], 0, &[])
}

/// Reads `size` bytes at `offset` of NV index `index`, authorized by `auth` (the owner, or the
/// index itself).
pub fn nv_read(auth: u32, index: u32, size: u16, offset: u16) -> Vec<u8> {
    let mut p = size.to_be_bytes().to_vec();
    p.extend_from_slice(&offset.to_be_bytes());
    command(CC_NV_READ, &[auth, index], 1, &p)
}

/// TPM2_Quote by `ak` (ECDSA-SHA256) over `selection` (a TPML_PCR_SELECTION).
pub fn quote(ak: u32, qualifying_data: &[u8], selection: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    tpm2b(&mut p, qualifying_data);
    p.extend_from_slice(&ALG_ECDSA.to_be_bytes());
    p.extend_from_slice(&ALG_SHA256.to_be_bytes());
    p.extend_from_slice(selection);
    command(CC_QUOTE, &[ak], 1, &p)
}

pub fn pcr_read(selection: &[u8]) -> Vec<u8> {
    command(CC_PCR_READ, &[], 0, selection)
}

/// TPM2_PolicySecret(TPM_RH_ENDORSEMENT) into `session`: what the EK's policy asks for.
pub fn policy_secret_endorsement(session: u32) -> Vec<u8> {
    let mut p = Vec::new();
    tpm2b(&mut p, &[]); // nonceTPM
    tpm2b(&mut p, &[]); // cpHashA
    tpm2b(&mut p, &[]); // policyRef
    p.extend_from_slice(&0i32.to_be_bytes());
    command(CC_POLICY_SECRET, &[TPM_RH_ENDORSEMENT, session], 1, &p)
}

/// TPM2_ActivateCredential: `ak` with its (empty) password, `ek` with the policy `session`.
pub fn activate_credential(ak: u32, ek: u32, session: u32, blob: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    tpm2b(&mut p, blob);
    tpm2b(&mut p, secret);
    command_with_sessions(CC_ACTIVATE_CREDENTIAL, &[ak, ek], &[TPM_RS_PW, session], &p)
}

/// (size, attributes) of an NV_ReadPublic response.
pub fn parse_nv_read_public(resp: &[u8]) -> Result<(u16, u32), ResponseError> {
    let (mut c, _) = open(resp)?;
    let public = c.tpm2b()?;
    // TPMS_NV_PUBLIC: index u32, nameAlg u16, attributes u32, authPolicy TPM2B, dataSize u16.
    let mut p = Cur { b: public, at: 0 };
    p.u32()?;
    p.u16()?;
    let attributes = p.u32()?;
    p.tpm2b()?;
    Ok((p.u16()?, attributes))
}

/// The data of an NV_Read response.
pub fn parse_nv_read(resp: &[u8]) -> Result<Vec<u8>, ResponseError> {
    let (mut c, _) = open(resp)?;
    c.u32()?; // parameterSize
    Ok(c.tpm2b()?.to_vec())
}

/// (TPMS_ATTEST, TPMT_SIGNATURE) of a Quote response.
pub fn parse_quote(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ResponseError> {
    let (mut c, _) = open(resp)?;
    let size = c.u32()? as usize; // parameterSize
    let start = c.at;
    let attest = c.tpm2b()?.to_vec();
    let end = start
        .checked_add(size)
        .filter(|e| *e <= resp.len())
        .ok_or(ResponseError::Malformed(start))?;
    let signature = c.take(end.saturating_sub(c.at))?.to_vec();
    Ok((attest, signature))
}

/// The PCR values of a PCR_Read response, in selection order.
pub fn parse_pcr_read(resp: &[u8]) -> Result<Vec<Vec<u8>>, ResponseError> {
    let (mut c, _) = open(resp)?;
    c.u32()?; // pcrUpdateCounter
    let banks = c.u32()?;
    if banks > 16 {
        return Err(ResponseError::Malformed(c.at));
    }
    for _ in 0..banks {
        c.u16()?;
        let n = c.take(1)?[0] as usize;
        c.take(n)?;
    }
    let count = c.u32()?;
    if count > 64 {
        return Err(ResponseError::Malformed(c.at));
    }
    (0..count).map(|_| c.tpm2b().map(<[u8]>::to_vec)).collect()
}

/// The secret of an ActivateCredential response.
pub fn parse_activate_credential(resp: &[u8]) -> Result<Vec<u8>, ResponseError> {
    parse_nv_read(resp)
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

/// (session handle, nonceTPM) of a StartAuthSession response.
pub fn parse_start_auth_session(resp: &[u8]) -> Result<(u32, Vec<u8>), ResponseError> {
    let (mut c, _) = open(resp)?;
    let handle = c.u32()?;
    Ok((handle, c.tpm2b()?.to_vec()))
}

/// (r, s) of a Sign response's ECDSA signature.
pub fn parse_sign(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ResponseError> {
    let (mut c, tag) = open(resp)?;
    if tag == TPM_ST_SESSIONS {
        c.u32()?; // parameterSize
    }
    let at = c.at;
    if c.u16()? != ALG_ECDSA || c.u16()? != ALG_SHA256 {
        return Err(ResponseError::Malformed(at));
    }
    let r = c.tpm2b()?.to_vec();
    let s = c.tpm2b()?.to_vec();
    Ok((r, s))
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

    #[test]
    fn host_tpm_responses_are_bounds_checked() {
        // A Quote response: parameterSize, TPM2B_ATTEST, then the signature.
        let mut q = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&9u32.to_be_bytes());
        q.extend_from_slice(&[0, 3, 1, 2, 3, 0xaa, 0xbb, 0xcc, 0xdd]);
        let n = q.len() as u32;
        q[2..6].copy_from_slice(&n.to_be_bytes());
        assert_eq!(
            parse_quote(&q),
            Ok((vec![1, 2, 3], vec![0xaa, 0xbb, 0xcc, 0xdd]))
        );
        // A parameterSize that claims more than the response holds is an error, not a read.
        let mut lie = q.clone();
        lie[13] = 200;
        assert!(matches!(
            parse_quote(&lie),
            Err(ResponseError::Malformed(_))
        ));
        // A PCR_Read claiming 70 digests, and every truncation of both.
        let mut p = vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&70u32.to_be_bytes());
        let n = p.len() as u32;
        p[2..6].copy_from_slice(&n.to_be_bytes());
        assert!(matches!(
            parse_pcr_read(&p),
            Err(ResponseError::Malformed(_))
        ));
        for n in 0..q.len() {
            assert!(parse_quote(&q[..n]).is_err());
            let _ = parse_nv_read(&q[..n]);
            let _ = parse_nv_read_public(&q[..n]);
            let _ = parse_pcr_read(&p[..n.min(p.len())]);
        }
    }
}
