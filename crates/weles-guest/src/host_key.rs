//! Making and keeping the VM's SSH host key inside its vTPM (`docs/signing-gate.md`): a P-256
//! signing key whose only authorization is the manager's PolicySigned, persisted at the handle
//! the manager names. An existing key with the right policy is kept (the same host key across
//! reboots); anything else at that handle is replaced.

use weles_proto::guest::SigningSetup;
use weles_tpm::commands::{self, RC_HANDLE_1};
use weles_tpm::host_key;
use weles_tpm::public::EccPublic;

use crate::tpm::Tpm;

/// Ensures the host key exists; returns its handle.
pub fn ensure(tpm: &mut Tpm, setup: &SigningSetup) -> Result<u32, String> {
    let policy: [u8; 32] = hex::decode(&setup.policy)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or("the manager's policy is not 32 bytes of hex")?;
    let call = |tpm: &mut Tpm, cmd: Vec<u8>, what: &str| {
        tpm.transmit(&cmd).map_err(|e| format!("{what}: {e}"))
    };
    let resp = call(tpm, commands::read_public(setup.handle), "ReadPublic")?;
    match commands::parse_read_public(&resp) {
        Ok((public, _)) => {
            if EccPublic::parse(&public).is_ok_and(|p| host_key::check(&p, &policy).is_ok()) {
                return Ok(setup.handle);
            }
            // Something else lives there: remove it.
            let r = call(
                tpm,
                commands::evict_control(setup.handle, setup.handle),
                "EvictControl",
            )?;
            rc(&r, "removing the old key")?;
        }
        Err(commands::ResponseError::Tpm(RC_HANDLE_1)) => {}
        Err(e) => return Err(format!("ReadPublic: {e}")),
    }
    let r = call(tpm, commands::create_primary_srk(), "CreatePrimary")?;
    let srk = commands::parse_handle(&r).map_err(|e| format!("CreatePrimary: {e}"))?;
    let result = (|| {
        let r = call(
            tpm,
            commands::create(srk, &host_key::template(&policy)),
            "Create",
        )?;
        let (private, public) = commands::parse_create(&r).map_err(|e| format!("Create: {e}"))?;
        let r = call(tpm, commands::load(srk, &private, &public), "Load")?;
        let key = commands::parse_handle(&r).map_err(|e| format!("Load: {e}"))?;
        let r = call(
            tpm,
            commands::evict_control(key, setup.handle),
            "EvictControl",
        )?;
        let persisted = rc(&r, "persisting the key");
        let _ = call(tpm, commands::flush_context(key), "FlushContext");
        persisted.map(|()| setup.handle)
    })();
    let _ = call(tpm, commands::flush_context(srk), "FlushContext");
    result
}

fn rc(resp: &[u8], what: &str) -> Result<(), String> {
    match commands::response_code(resp) {
        Ok(0) => Ok(()),
        Ok(code) => Err(format!("{what}: TPM error {code:#x}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}
