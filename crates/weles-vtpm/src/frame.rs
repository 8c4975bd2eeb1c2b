//! TPM 2.0 command and response framing: `u16 tag || u32 size || u32 code || body`, big-endian.
//!
//! The data channel carries these frames back to back. A frame whose size field is below the
//! header size or above the buffer limit cannot be delimited, so the channel answers with an
//! error response and is closed; everything else is handed to libtpms, which validates the rest.

/// Largest command accepted (libtpms's default buffer size).
pub const MAX_COMMAND: usize = 4096;
pub const HEADER: usize = 10;

pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
pub const TPM_RC_FAILURE: u32 = 0x101;
pub const TPM_RC_COMMAND_SIZE: u32 = 0x142;

/// The size field of a frame header, or why it cannot be used.
pub fn frame_size(header: &[u8; HEADER]) -> Result<usize, u32> {
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if !(HEADER..=MAX_COMMAND).contains(&size) {
        Err(TPM_RC_COMMAND_SIZE)
    } else {
        Ok(size)
    }
}

/// Checks that `cmd` is exactly one well-sized frame.
pub fn check_command(cmd: &[u8]) -> Result<(), u32> {
    let header: &[u8; HEADER] = cmd
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(TPM_RC_COMMAND_SIZE)?;
    let size = frame_size(header)?;
    if size == cmd.len() {
        Ok(())
    } else {
        Err(TPM_RC_COMMAND_SIZE)
    }
}

/// The command code of a command frame (response code of a response).
pub fn code(frame: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(frame.get(6..10)?.try_into().ok()?))
}

/// A bare error response.
pub fn error_response(rc: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER);
    r.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    r.extend_from_slice(&(HEADER as u32).to_be_bytes());
    r.extend_from_slice(&rc.to_be_bytes());
    r
}

/// TPM2_Startup(CLEAR) or (STATE).
pub fn startup(clear: bool) -> Vec<u8> {
    let mut c = Vec::with_capacity(12);
    c.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    c.extend_from_slice(&12u32.to_be_bytes());
    c.extend_from_slice(&0x144u32.to_be_bytes());
    c.extend_from_slice(&(if clear { 0u16 } else { 1u16 }).to_be_bytes());
    c
}

/// TPM2_Shutdown(STATE), sent before the TPM is stopped so a restart can resume.
pub fn shutdown_state() -> Vec<u8> {
    let mut c = Vec::with_capacity(12);
    c.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    c.extend_from_slice(&12u32.to_be_bytes());
    c.extend_from_slice(&0x145u32.to_be_bytes());
    c.extend_from_slice(&1u16.to_be_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        assert_eq!(check_command(&startup(true)), Ok(()));
        assert_eq!(code(&startup(true)), Some(0x144));
        let mut short = startup(true);
        short.pop();
        assert_eq!(check_command(&short), Err(TPM_RC_COMMAND_SIZE));
        assert_eq!(check_command(&[0x80]), Err(TPM_RC_COMMAND_SIZE));
        let mut huge = [0u8; HEADER];
        huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(frame_size(&huge), Err(TPM_RC_COMMAND_SIZE));
        assert_eq!(error_response(0x101), [0x80, 1, 0, 0, 0, 10, 0, 0, 1, 1]);
    }
}
