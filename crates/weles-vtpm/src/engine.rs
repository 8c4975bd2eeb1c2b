//! The TPM engine: libtpms behind one lock, with its persistent blobs in a state directory.
//!
//! libtpms has global state, so there is one [`Engine`] per process ([`Engine::open`] succeeds
//! once). Every call into libtpms holds the engine lock; libtpms calls back into [`BlobStore`]
//! (never into the engine) to load and store `permall`, `volatilestate` and `savestate`, which
//! are kept sealed by [`crate::sealed`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::events::{BankDigest, Event, EventLog};
use crate::ffi::{
    self, StateType, TPM_BAD_LOCALITY, TPM_BAD_ORDINAL, TPM_FAIL, TPM_SUCCESS, TpmResult,
};
use crate::sealed::{SealedState, StateError};
use crate::{frame, tpm_cmd};

/// Blob names libtpms uses.
pub const PERMANENT: &str = "permall";
pub const VOLATILE: &str = "volatilestate";
pub const SAVESTATE: &str = "savestate";

/// Where blobs live: in memory, sealed to the state directory on every change.
pub struct BlobStore {
    sealed: Mutex<Option<SealedState>>,
    blobs: Mutex<BTreeMap<String, Vec<u8>>>,
    locality: AtomicU32,
}

impl BlobStore {
    /// Persists the current blobs; `false` makes libtpms fail the command (fail closed).
    fn persist(&self, blobs: &BTreeMap<String, Vec<u8>>) -> bool {
        let Ok(mut sealed) = self.sealed.lock() else {
            return false;
        };
        match sealed.as_mut() {
            None => true,
            Some(s) => match s.store(blobs) {
                Ok(()) => true,
                Err(e) => {
                    crate::log::line(&format!("cannot store the TPM state: {e}"));
                    false
                }
            },
        }
    }
}

impl ffi::Host for Arc<BlobStore> {
    fn load(&self, name: &str) -> Option<Vec<u8>> {
        self.blobs.lock().ok()?.get(name).cloned()
    }

    fn store(&self, name: &str, data: &[u8]) -> bool {
        let Ok(mut blobs) = self.blobs.lock() else {
            return false;
        };
        if blobs.get(name).is_some_and(|b| b == data) {
            return true;
        }
        blobs.insert(name.to_string(), data.to_vec());
        self.persist(&blobs)
    }

    fn delete(&self, name: &str) {
        if let Ok(mut blobs) = self.blobs.lock()
            && blobs.remove(name).is_some()
        {
            self.persist(&blobs);
        }
    }

    fn locality(&self) -> u32 {
        self.locality.load(Ordering::Relaxed)
    }
}

/// Why the engine could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("only one TPM engine can exist per process (libtpms has global state)")]
    AlreadyOpen,
    #[error("libtpms refused the callbacks (error {0:#x})")]
    Register(TpmResult),
    #[error(transparent)]
    State(#[from] StateError),
}

struct Inner {
    running: bool,
    /// Whether commands are recorded as events. Off when nobody can ever listen (started
    /// without an event socket), so a plain swtpm replacement does no work for events.
    recording: bool,
    /// Last known value of each PCR (per bank), so an extend's event needs no PCR_Read round
    /// trip: the new value is computed as the TPM does. Cleared by anything else that can
    /// change PCRs; a PCR not in the cache is read from the TPM.
    pcrs: BTreeMap<u32, tpm_cmd::AlgDigests>,
}

/// The process's TPM.
pub struct Engine {
    inner: Mutex<Inner>,
    store: Arc<BlobStore>,
    events: Arc<EventLog>,
}

static OPENED: OnceLock<()> = OnceLock::new();

/// Events kept for a listener that reconnects (an IMA-heavy boot extends a few thousand times).
pub const EVENT_RING: usize = 65_536;

impl Engine {
    /// Opens the process's engine. With `state`, blobs are loaded from it (refusing rolled-back,
    /// foreign or tampered state) and sealed to it on every change; without, they stay in memory.
    pub fn open(state: Option<SealedState>) -> Result<Engine, EngineError> {
        if OPENED.set(()).is_err() {
            return Err(EngineError::AlreadyOpen);
        }
        let mut state = state;
        let blobs = match state.as_mut() {
            Some(s) => s.load()?,
            None => BTreeMap::new(),
        };
        let store = Arc::new(BlobStore {
            sealed: Mutex::new(state),
            blobs: Mutex::new(blobs),
            locality: AtomicU32::new(0),
        });
        ffi::register(Box::new(store.clone())).map_err(EngineError::Register)?;
        Ok(Engine {
            inner: Mutex::new(Inner {
                running: false,
                recording: true,
                pcrs: BTreeMap::new(),
            }),
            store,
            events: Arc::new(EventLog::new(EVENT_RING)),
        })
    }

    /// Stops (or resumes) recording events; for a process that has no event socket. The PCR
    /// cache is dropped with it, since extends are no longer followed.
    pub fn set_recording(&self, on: bool) {
        let mut g = self.lock();
        g.recording = on;
        g.pcrs.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the TPM state is still libtpms's own,
        // so continuing is no less safe than stopping, and keeps the guest's TPM answering.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_running(&self) -> bool {
        self.lock().running
    }

    /// (Re)initialises the TPM (CMD_INIT / power on). `delete_volatile`: drop the volatile state
    /// after reading it (PTM_INIT_FLAG_DELETE_VOLATILE).
    pub fn init(&self, delete_volatile: bool) -> TpmResult {
        let mut g = self.lock();
        ffi::terminate();
        g.running = false;
        g.pcrs.clear();
        let rc = ffi::main_init();
        if rc == TPM_SUCCESS {
            g.running = true;
            self.events.push(Event::Init);
            if delete_volatile {
                ffi::Host::delete(&self.store, VOLATILE);
            }
        }
        rc
    }

    /// Stops the TPM (CMD_STOP / CMD_SHUTDOWN); its state stays stored.
    pub fn stop(&self) {
        let mut g = self.lock();
        g.pcrs.clear();
        ffi::terminate();
        if g.running {
            self.events.push(Event::Stop);
        }
        g.running = false;
    }

    /// The event stream.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Executes one TPM command. Malformed frames and a stopped TPM get a TPM error response.
    pub fn process(&self, command: &[u8]) -> Vec<u8> {
        let mut g = self.lock();
        if let Err(rc) = frame::check_command(command) {
            return frame::error_response(rc);
        }
        if !g.running {
            return frame::error_response(frame::TPM_RC_FAILURE);
        }
        let response =
            ffi::process(command).unwrap_or_else(|_| frame::error_response(frame::TPM_RC_FAILURE));
        if g.recording && tpm_cmd::response_code(&response) == Some(0) {
            self.record(&mut g, command, &response);
        }
        response
    }

    /// Records the event of a successful command that changed PCRs or the power state.
    /// Runs under the engine lock, right after the command: events are in execution order.
    fn record(&self, g: &mut Inner, command: &[u8], response: &[u8]) {
        let event = match frame::code(command) {
            Some(tpm_cmd::CC_PCR_EXTEND) => {
                let Some(pcr) = tpm_cmd::pcr_handle(command) else {
                    return;
                };
                let digests = tpm_cmd::extend_digests(command).map(|(_, d)| d);
                self.extended(g, pcr, digests)
            }
            Some(tpm_cmd::CC_PCR_EVENT) => {
                let Some(pcr) = tpm_cmd::pcr_handle(command) else {
                    return;
                };
                self.extended(g, pcr, tpm_cmd::event_response_digests(response))
            }
            Some(tpm_cmd::CC_PCR_RESET) => {
                let Some(pcr) = tpm_cmd::pcr_handle(command) else {
                    return;
                };
                g.pcrs.remove(&pcr);
                Event::Reset {
                    pcr,
                    pcrs: named(self.cached_pcr(g, pcr)),
                }
            }
            Some(tpm_cmd::CC_STARTUP) => {
                g.pcrs.clear();
                Event::Startup {
                    clear: tpm_cmd::su_clear(command).unwrap_or(true),
                }
            }
            Some(tpm_cmd::CC_SHUTDOWN) => Event::Shutdown {
                state: tpm_cmd::su_clear(command) == Some(false),
            },
            _ => return,
        };
        self.events.push(event);
    }

    /// The event of a successful extend: the new values follow from the cached old ones by the
    /// TPM's rule `new = H(old || digest)` for each bank extended (others unchanged).
    fn extended(&self, g: &mut Inner, pcr: u32, digests: Option<tpm_cmd::AlgDigests>) -> Event {
        let Some(digests) = digests else {
            // Cannot tell what was extended: forget the PCR and read it back.
            g.pcrs.remove(&pcr);
            return Event::Extend {
                pcr,
                digests: Vec::new(),
                pcrs: named(self.cached_pcr(g, pcr)),
            };
        };
        let after = g
            .pcrs
            .get(&pcr)
            .and_then(|before| extend_all(before, &digests));
        let after = match after {
            Some(v) => {
                g.pcrs.insert(pcr, v.clone());
                v
            }
            None => {
                // Not cached yet (or an algorithm we cannot compute): the TPM's own value.
                g.pcrs.remove(&pcr);
                self.cached_pcr(g, pcr)
            }
        };
        Event::Extend {
            pcr,
            digests: named(digests),
            pcrs: named(after),
        }
    }

    /// The PCR's values from the cache, or read from the TPM and cached (caller holds the lock).
    fn cached_pcr(&self, g: &mut Inner, pcr: u32) -> tpm_cmd::AlgDigests {
        if let Some(v) = g.pcrs.get(&pcr) {
            return v.clone();
        }
        let v = ffi::process(&tpm_cmd::pcr_read(pcr))
            .ok()
            .and_then(|r| tpm_cmd::parse_pcr_read(&r))
            .unwrap_or_default();
        if !v.is_empty() {
            g.pcrs.insert(pcr, v.clone());
        }
        v
    }

    /// Management: one PCR in every allocated bank, between guest commands.
    pub fn read_pcrs(&self, pcr: u32) -> Result<Vec<BankDigest>, String> {
        let g = self.lock();
        if !g.running {
            return Err("the TPM is not running".into());
        }
        if pcr >= 24 {
            return Err(format!("PCR {pcr} does not exist"));
        }
        // Read from the TPM itself (not the cache): this is what the manager checks against.
        ffi::process(&tpm_cmd::pcr_read(pcr))
            .ok()
            .and_then(|r| tpm_cmd::parse_pcr_read(&r))
            .map(named)
            .ok_or_else(|| "TPM2_PCR_Read failed".to_string())
    }

    /// Management: the EK certificate (`rsa` or `ecc`) from its NV index, between guest commands.
    pub fn ek_certificate(&self, kind: &str) -> Result<Vec<u8>, String> {
        let nv = match kind {
            "rsa" => crate::manufacture::RSA_EK_CERT_NV,
            "ecc" => crate::manufacture::ECC_EK_CERT_NV,
            other => return Err(format!("no EK kind {other:?} (rsa, ecc)")),
        };
        if !self.is_running() {
            return Err("the TPM is not running".into());
        }
        // Commands go through `process`, which takes the lock per command; a guest command may
        // run between the chunks of a long certificate, never inside one.
        crate::manufacture::read_certificate(self, nv).map_err(|e| e.to_string())
    }

    /// Management: (public area, name) of a persistent object, between guest commands.
    pub fn read_public(&self, handle: u32) -> Result<(Vec<u8>, Vec<u8>), String> {
        let g = self.lock();
        if !g.running {
            return Err("the TPM is not running".into());
        }
        if handle >> 24 != 0x81 {
            return Err(format!(
                "{handle:#010x} is not a persistent handle (0x81xxxxxx)"
            ));
        }
        let resp = ffi::process(&tpm_cmd::read_public(handle))
            .map_err(|rc| format!("libtpms error {rc:#x}"))?;
        tpm_cmd::parse_read_public(&resp).ok_or_else(|| {
            format!(
                "TPM2_ReadPublic({handle:#010x}) failed: {:#x}",
                tpm_cmd::response_code(&resp).unwrap_or(0)
            )
        })
    }

    pub fn locality(&self) -> u32 {
        self.store.locality.load(Ordering::Relaxed)
    }

    pub fn set_locality(&self, loc: u8) -> TpmResult {
        if loc > 4 {
            return TPM_BAD_LOCALITY;
        }
        let _g = self.lock();
        self.store.locality.store(u32::from(loc), Ordering::Relaxed);
        TPM_SUCCESS
    }

    pub fn established(&self) -> Result<bool, TpmResult> {
        let g = self.lock();
        if !g.running {
            return Err(TPM_BAD_ORDINAL);
        }
        ffi::established_get()
    }

    /// Resets the TPM-established flag as if from locality `loc` (it requires locality 3 or 4).
    pub fn reset_established(&self, loc: u8) -> TpmResult {
        if loc > 4 {
            return TPM_BAD_LOCALITY;
        }
        let g = self.lock();
        if !g.running {
            return TPM_BAD_ORDINAL;
        }
        let before = self.store.locality.swap(u32::from(loc), Ordering::Relaxed);
        let rc = ffi::established_reset();
        self.store.locality.store(before, Ordering::Relaxed);
        rc
    }

    pub fn hash_start(&self) -> TpmResult {
        self.running_then(ffi::hash_start)
    }

    pub fn hash_data(&self, data: &[u8]) -> TpmResult {
        self.running_then(|| ffi::hash_data(data))
    }

    pub fn hash_end(&self) -> TpmResult {
        self.running_then(ffi::hash_end)
    }

    pub fn cancel(&self) -> TpmResult {
        // Commands run to completion under the lock; there is nothing in flight to cancel.
        if self.is_running() {
            TPM_FAIL
        } else {
            TPM_BAD_ORDINAL
        }
    }

    /// Writes the volatile state (CMD_STORE_VOLATILE), so a restart resumes from it.
    pub fn store_volatile(&self) -> TpmResult {
        let g = self.lock();
        if !g.running {
            return TPM_BAD_ORDINAL;
        }
        match ffi::volatile_all_store() {
            Ok(blob) if ffi::Host::store(&self.store, VOLATILE, &blob) => TPM_SUCCESS,
            Ok(_) => ffi::TPM_IOERROR,
            Err(rc) => rc,
        }
    }

    /// A state blob for migration (CMD_GET_STATEBLOB): 1 permanent, 2 volatile, 3 savestate.
    pub fn get_state_blob(&self, kind: u32) -> Result<Vec<u8>, TpmResult> {
        let st = state_type(kind)?;
        let _g = self.lock();
        if st == StateType::Volatile {
            // As swtpm: the volatile blob is produced now and not kept.
            return ffi::volatile_all_store();
        }
        ffi::get_state(st)
    }

    /// Installs a state blob (CMD_SET_STATEBLOB); only while the TPM is stopped.
    pub fn set_state_blob(&self, kind: u32, data: &[u8]) -> TpmResult {
        let Ok(st) = state_type(kind) else {
            return ffi::TPM_BAD_PARAMETER;
        };
        let g = self.lock();
        if g.running {
            return TPM_BAD_ORDINAL;
        }
        let name = match st {
            StateType::Permanent => PERMANENT,
            StateType::Volatile => VOLATILE,
            StateType::SaveState => SAVESTATE,
        };
        let rc = ffi::set_state(st, data);
        drop(g);
        self.lock().pcrs.clear();
        if rc == TPM_SUCCESS && !ffi::Host::store(&self.store, name, data) {
            return ffi::TPM_IOERROR;
        }
        rc
    }

    /// (in use, min, max) after asking for `wanted` bytes (0 queries); refused while running.
    pub fn set_buffer_size(&self, wanted: u32) -> Result<(u32, u32, u32), TpmResult> {
        let g = self.lock();
        if wanted > 0 && g.running {
            return Err(TPM_BAD_ORDINAL);
        }
        Ok(ffi::set_buffer_size(wanted))
    }

    pub fn info(&self, flags: u32) -> Option<String> {
        let _g = self.lock();
        ffi::get_info(flags)
    }

    fn running_then(&self, f: impl FnOnce() -> TpmResult) -> TpmResult {
        let g = self.lock();
        if g.running { f() } else { TPM_BAD_ORDINAL }
    }
}

/// Applies `new = H(old || digest)` per extended bank; `None` if a bank is unknown or uncomputable.
fn extend_all(
    before: &tpm_cmd::AlgDigests,
    digests: &tpm_cmd::AlgDigests,
) -> Option<tpm_cmd::AlgDigests> {
    use sha2::Digest as _;
    let mut after = before.clone();
    for (alg, d) in digests {
        let slot = after.iter_mut().find(|(a, _)| a == alg)?;
        let joined = [slot.1.as_slice(), d.as_slice()].concat();
        slot.1 = match alg {
            0x0004 => sha1::Sha1::digest(&joined).to_vec(),
            0x000b => sha2::Sha256::digest(&joined).to_vec(),
            0x000c => sha2::Sha384::digest(&joined).to_vec(),
            0x000d => sha2::Sha512::digest(&joined).to_vec(),
            _ => return None,
        };
    }
    Some(after)
}

fn named(v: tpm_cmd::AlgDigests) -> Vec<BankDigest> {
    v.into_iter()
        .map(|(alg, d)| BankDigest {
            bank: tpm_cmd::bank_name(alg),
            hex: hex::encode(d),
        })
        .collect()
}

fn state_type(kind: u32) -> Result<StateType, TpmResult> {
    match kind {
        1 => Ok(StateType::Permanent),
        2 => Ok(StateType::Volatile),
        3 => Ok(StateType::SaveState),
        _ => Err(ffi::TPM_BAD_PARAMETER),
    }
}
