//! The agent's side of the signing gate: asking the manager for an authorization over the
//! current guest channel, and using it in the TPM (`docs/signing-gate.md`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weles_proto::guest::{self, Authorization, AuthorizeRequest, GuestMessage, SigningSetup};
use weles_tpm::commands;
use weles_tpm::public::EccPublic;

use crate::channel::Channel;
use crate::tpm::Tpm;

/// Requests waiting for the manager's answer, by id.
pub type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Authorization>>>>;

/// The current connection to the manager (if any) and what it asked for.
#[derive(Default)]
pub struct Gate {
    link: Mutex<Option<(Arc<Mutex<Channel>>, Pending)>>,
    setup: Mutex<Option<SigningSetup>>,
    next_id: AtomicU64,
}

impl Gate {
    pub fn connected(&self, writer: Arc<Mutex<Channel>>, pending: Pending) {
        if let Ok(mut l) = self.link.lock() {
            *l = Some((writer, pending));
        }
    }

    pub fn disconnected(&self) {
        if let Ok(mut l) = self.link.lock() {
            *l = None;
        }
    }

    pub fn set_setup(&self, s: SigningSetup) {
        if let Ok(mut g) = self.setup.lock() {
            *g = Some(s);
        }
    }

    pub fn setup(&self) -> Option<SigningSetup> {
        self.setup.lock().ok().and_then(|s| s.clone())
    }

    fn ask(&self, handle: u32, nonce_tpm: &[u8], digest: &[u8]) -> Result<Authorization, String> {
        let (writer, pending) = self
            .link
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .ok_or("not connected to the manager")?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        pending.lock().map_err(|_| "poisoned")?.insert(id, tx);
        let req = GuestMessage::Authorize(AuthorizeRequest {
            id,
            handle,
            nonce_tpm: hex::encode(nonce_tpm),
            digest: hex::encode(digest),
        });
        let sent = writer
            .lock()
            .map_err(|_| "poisoned".to_owned())
            .and_then(|mut w| guest::write_guest(&mut *w, &req).map_err(|e| e.to_string()));
        let answer = sent.and_then(|()| {
            rx.recv_timeout(Duration::from_secs(5))
                .map_err(|_| "the manager did not answer".to_owned())
        });
        if let Ok(mut p) = pending.lock() {
            p.remove(&id);
        }
        answer
    }

    /// Signs `digest` with the host key, if the manager authorizes it now; returns (r, s).
    pub fn sign(
        &self,
        tpm_path: &std::path::Path,
        digest: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let setup = self.setup().ok_or("the manager has not set up signing")?;
        let authority = hex::decode(&setup.authority)
            .ok()
            .and_then(|b| EccPublic::parse(&b).ok())
            .ok_or("the manager's authority key is not a P-256 public area")?;
        let mut tpm =
            Tpm::open(tpm_path).map_err(|e| format!("TPM {}: {e}", tpm_path.display()))?;
        let mut call = |cmd: Vec<u8>| tpm.transmit(&cmd).map_err(|e| e.to_string());
        let mut nonce_caller = [0u8; 16];
        read_random(&mut nonce_caller)?;
        let (session, nonce_tpm) = commands::parse_start_auth_session(&call(
            commands::start_policy_session(&nonce_caller),
        )?)
        .map_err(|e| format!("StartAuthSession: {e}"))?;
        let result = (|| {
            let auth = self.ask(setup.handle, &nonce_tpm, digest)?;
            if !auth.granted {
                return Err(format!("the manager refused: {}", auth.reason));
            }
            let a = commands::parse_handle(&call(commands::load_external_public(&authority))?)
                .map_err(|e| format!("LoadExternal: {e}"))?;
            let dec =
                |h: &str| hex::decode(h).map_err(|_| "the manager's answer is not hex".to_owned());
            let signed = call(commands::policy_signed(
                a,
                session,
                &nonce_tpm,
                &dec(&auth.cp_hash)?,
                &dec(&auth.policy_ref)?,
                auth.expiration,
                &dec(&auth.signature)?,
            ))
            .and_then(|r| match commands::response_code(&r) {
                Ok(0) => Ok(()),
                Ok(rc) => Err(format!("PolicySigned: TPM error {rc:#x}")),
                Err(e) => Err(format!("PolicySigned: {e}")),
            });
            let _ = call(commands::flush_context(a));
            signed?;
            commands::parse_sign(&call(commands::sign_with_policy(
                setup.handle,
                session,
                digest,
            ))?)
            .map_err(|e| format!("Sign: {e}"))
        })();
        if result.is_err() {
            // A successful Sign ends the session itself (continueSession is clear).
            let _ = call(commands::flush_context(session));
        }
        result
    }
}

fn read_random(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("randomness: {e}"))
}
