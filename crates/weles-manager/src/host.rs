//! Host attestation: the host's own TPM vouches for the platform welesd runs on.
//!
//! At start welesd reads the host TPM's endorsement key (EK, the persistent RSA EK of the TCG
//! template L-1) and its certificate from NV, and makes — once, then keeps at a persistent
//! handle — an attestation key (AK: restricted ECDSA P-256 under the owner's storage key). For
//! each tenant's evidence request it:
//! * activates the tenant's credential (TPM2_ActivateCredential with the EK's policy, so only
//!   the TPM that holds this EK *and* this AK can answer: the AK is proven to live there);
//! * quotes sha256 PCRs 0–10 with qualifying data binding the tenant's nonce and the manager key;
//! * reads the PCRs and the host's IMA log after the quote (the log may only have grown).
//!
//! welesd judges none of it: the tenant verifies everything itself (`weles manager trust
//! --host-ca`). The TPM is reached through a swtpm-style data socket (`HOST:PORT`) or a device
//! (`/dev/tpmrm0`); every exchange holds a lock, since a TPM serves one command at a time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64ct::Encoding;
use weles_proto::api::{HostEvidence, HostKeys};
use weles_tpm::attest::{ak_template, is_attestation_key};
use weles_tpm::commands::{self as cmd, ResponseError, TPM_RH_OWNER};
use weles_tpm::public::EccPublic;

/// PCRs the quote covers: 0–7 measured boot, 8–9 boot loader, 10 IMA.
pub const QUOTED_PCRS: std::ops::RangeInclusive<u32> = 0..=10;
/// The largest IMA log welesd sends (a host that measured more is a host to look at).
const MAX_IMA_LOG: u64 = 64 << 20;
/// The largest firmware event log welesd sends (real ones are tens of KiB).
const MAX_EVENT_LOG: u64 = 4 << 20;
const RC_RETRY: u32 = 0x922;

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// The host TPM: `HOST:PORT` (a swtpm-style data socket) or a device (`/dev/tpmrm0`).
    /// Unset: no host attestation (evidence then says nothing about the host).
    pub tpm: Option<String>,
    /// The persistent EK (RSA 2048, template L-1).
    pub ek_handle: u32,
    /// The NV index of its certificate.
    pub ek_certificate_index: u32,
    /// The TPM maker's intermediate CA certificates (PEM bundle), sent to tenants so they can
    /// build the path from the EK certificate to the maker's root they trust.
    pub ek_chain: Option<PathBuf>,
    /// Where welesd keeps its AK.
    pub ak_handle: u32,
    /// The host's IMA measurement list.
    pub ima_log: PathBuf,
    /// The firmware's measured-boot event log (PCRs 0–9), sent when the file exists.
    pub event_log: PathBuf,
    /// Quote the sha1 bank too (beside sha256), for tenants whose reference values or
    /// tools use it; the TPM must have the sha1 bank allocated.
    pub sha1: bool,
    /// The operator's host policy (TOML, as a VM policy): with it, welesd watches its own host
    /// — the IMA log as it grows, replayed against the TPM's PCR 10 — and a host violation makes
    /// every VM on this host violated (`enforcement.mode = "enforce"`, the default) or is only
    /// reported to each tenant (`"audit"`).
    pub policy: Option<PathBuf>,
    /// How often the host log and PCR 10 are looked at, in milliseconds.
    pub poll_ms: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            tpm: None,
            ek_handle: 0x8101_0001,
            ek_certificate_index: 0x01c0_0002,
            ek_chain: None,
            ak_handle: 0x8101_0057,
            ima_log: PathBuf::from("/sys/kernel/security/ima/binary_runtime_measurements"),
            event_log: PathBuf::from("/sys/kernel/security/tpm0/binary_bios_measurements"),
            sha1: false,
            policy: None,
            poll_ms: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host TPM {tpm}: {why}")]
    Tpm { tpm: String, why: String },
    #[error("host TPM {tpm}: {what}: {err}")]
    Command {
        tpm: String,
        what: &'static str,
        err: ResponseError,
    },
    #[error("host IMA log {path}: {why}")]
    Log { path: PathBuf, why: String },
}

/// The host TPM, its keys, and a lock for exchanges with it.
pub struct HostAttestor {
    pub(crate) cfg: HostConfig,
    tpm: String,
    keys: HostKeys,
    lock: Mutex<()>,
}

enum Link {
    Tcp(TcpStream),
    Device(std::fs::File),
}

impl HostAttestor {
    /// Reads the EK and its certificate and makes (or finds) the AK.
    pub fn enroll(cfg: &HostConfig) -> Result<Option<HostAttestor>, HostError> {
        let Some(tpm) = cfg.tpm.clone() else {
            return Ok(None);
        };
        let mut a = HostAttestor {
            cfg: cfg.clone(),
            tpm,
            keys: HostKeys {
                ek_public: String::new(),
                ek_certificate: String::new(),
                ak_public: String::new(),
                ek_chain: Vec::new(),
            },
            lock: Mutex::new(()),
        };
        let mut link = a.connect()?;
        let (ek_public, _) = a
            .call(
                &mut link,
                &cmd::read_public(cfg.ek_handle),
                "ReadPublic(EK)",
            )
            .and_then(|r| a.parse(cmd::parse_read_public(&r), "ReadPublic(EK)"))?;
        weles_tpm::credential::EkPublic::parse(&ek_public).map_err(|e| {
            a.err(format!(
                "the key at {:#010x} is not an EK of template L-1 (RSA 2048) or L-2 (ECC \
                 P-256): {e}",
                cfg.ek_handle
            ))
        })?;
        let certificate = a.read_nv(&mut link, cfg.ek_certificate_index)?;
        let ek_chain = match &cfg.ek_chain {
            Some(path) => {
                let bad = |why: String| HostError::Log {
                    path: path.clone(),
                    why,
                };
                let bytes = read_bounded(path, 1 << 20).map_err(bad)?;
                weles_policy::ima_keys::pem_bodies(&bytes)
                    .map_err(|e| bad(e.to_string()))?
                    .iter()
                    .map(hex::encode)
                    .collect()
            }
            None => Vec::new(),
        };
        let ak = a.ensure_ak(&mut link)?;
        a.keys = HostKeys {
            ek_public: hex::encode(&ek_public),
            ek_certificate: hex::encode(&certificate),
            ak_public: hex::encode(ak.marshal()),
            ek_chain,
        };
        Ok(Some(a))
    }

    pub fn keys(&self) -> &HostKeys {
        &self.keys
    }

    /// The AK's TPMT_PUBLIC.
    pub fn ak_public(&self) -> Vec<u8> {
        hex::decode(&self.keys.ak_public).unwrap_or_default()
    }

    /// Evidence for one request: the credential answered (if any), a quote over PCRs 0–10 with
    /// `qualifying_data`, the PCR values and the IMA log.
    pub fn evidence(
        &self,
        qualifying_data: &[u8],
        credential: Option<(&[u8], &[u8])>,
    ) -> Result<HostEvidence, HostError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut link = self.connect()?;
        let activated = match credential {
            Some((blob, secret)) => Some(hex::encode(self.activate(&mut link, blob, secret)?)),
            None => None,
        };
        let pcrs: Vec<u32> = QUOTED_PCRS.collect();
        let banks: &[u16] = if self.cfg.sha1 {
            &[weles_tpm::ids::ALG_SHA256, weles_tpm::event_log::ALG_SHA1]
        } else {
            &[weles_tpm::ids::ALG_SHA256]
        };
        let selection = cmd::pcr_selection(banks, &pcrs);
        let r = self.call(
            &mut link,
            &cmd::quote(self.cfg.ak_handle, qualifying_data, &selection),
            "Quote",
        )?;
        let (attest, signature) = self.parse(cmd::parse_quote(&r), "Quote")?;
        // PCR_Read answers at most 8 values: reads per bank, in chunks.
        let mut values: Vec<Vec<String>> = Vec::new();
        for bank in banks {
            let mut bank_values = Vec::new();
            for chunk in pcrs.chunks(8) {
                let sel = cmd::pcr_selection(&[*bank], chunk);
                let r = self.call(&mut link, &cmd::pcr_read(&sel), "PCR_Read")?;
                bank_values.extend(self.parse(cmd::parse_pcr_read(&r), "PCR_Read")?);
            }
            values.push(bank_values.iter().map(hex::encode).collect());
        }
        drop(link);
        let log = read_bounded(&self.cfg.ima_log, MAX_IMA_LOG).map_err(|why| HostError::Log {
            path: self.cfg.ima_log.clone(),
            why,
        })?;
        let event_log = if self.cfg.event_log.exists() {
            let bytes =
                read_bounded(&self.cfg.event_log, MAX_EVENT_LOG).map_err(|why| HostError::Log {
                    path: self.cfg.event_log.clone(),
                    why,
                })?;
            Some(base64ct::Base64::encode_string(&bytes))
        } else {
            None
        };
        let mut values = values.into_iter();
        Ok(HostEvidence {
            keys: self.keys.clone(),
            activated,
            quote: hex::encode(attest),
            signature: hex::encode(signature),
            pcrs: values.next().unwrap_or_default(),
            pcrs_sha1: values.next(),
            ima_log: base64ct::Base64::encode_string(&log),
            event_log,
        })
    }

    /// The host TPM's sha256 PCR 10 now.
    pub fn pcr10(&self) -> Result<Vec<u8>, HostError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut link = self.connect()?;
        let sel = cmd::pcr_selection(&[weles_tpm::ids::ALG_SHA256], &[10]);
        let r = self.call(&mut link, &cmd::pcr_read(&sel), "PCR_Read")?;
        self.parse(cmd::parse_pcr_read(&r), "PCR_Read")?
            .into_iter()
            .next()
            .ok_or_else(|| self.err("PCR_Read returned no value".into()))
    }

    fn activate(&self, link: &mut Link, blob: &[u8], secret: &[u8]) -> Result<Vec<u8>, HostError> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| self.err(format!("randomness: {e}")))?;
        let r = self.call(link, &cmd::start_policy_session(&nonce), "StartAuthSession")?;
        let (session, _) = self.parse(cmd::parse_start_auth_session(&r), "StartAuthSession")?;
        let result = self
            .call(
                link,
                &cmd::policy_secret_endorsement(session),
                "PolicySecret",
            )
            .and_then(|_| {
                self.call(
                    link,
                    &cmd::activate_credential(
                        self.cfg.ak_handle,
                        self.cfg.ek_handle,
                        session,
                        blob,
                        secret,
                    ),
                    "ActivateCredential",
                )
            });
        match result {
            Ok(r) => self.parse(cmd::parse_activate_credential(&r), "ActivateCredential"),
            Err(e) => {
                // The session ends with a successful ActivateCredential; not after a failure.
                let _ = self.send(link, &cmd::flush_context(session));
                Err(e)
            }
        }
    }

    /// The AK at its persistent handle, made under the owner's storage key on first use.
    fn ensure_ak(&self, link: &mut Link) -> Result<EccPublic, HostError> {
        let h = self.cfg.ak_handle;
        let r = self.send(link, &cmd::read_public(h))?;
        if cmd::response_code(&r) == Ok(0) {
            let (public, _) = self.parse(cmd::parse_read_public(&r), "ReadPublic(AK)")?;
            let ak = EccPublic::parse(&public)
                .ok()
                .filter(is_attestation_key)
                .ok_or_else(|| {
                    self.err(format!(
                        "{h:#010x} holds a key that is not a WELES attestation key; free the \
                         handle (tpm2_evictcontrol -C o -c {h:#x}) or set host.ak_handle"
                    ))
                })?;
            return Ok(ak);
        }
        let r = self.call(link, &cmd::create_primary_srk(), "CreatePrimary(SRK)")?;
        let srk = self.parse(cmd::parse_handle(&r), "CreatePrimary(SRK)")?;
        let made = self
            .call(link, &cmd::create(srk, &ak_template()), "Create(AK)")
            .and_then(|r| self.parse(cmd::parse_create(&r), "Create(AK)"))
            .and_then(|(private, public)| {
                let r = self.call(link, &cmd::load(srk, &private, &public), "Load(AK)")?;
                let loaded = self.parse(cmd::parse_handle(&r), "Load(AK)")?;
                let kept = self.call(link, &cmd::evict_control(loaded, h), "EvictControl(AK)");
                let _ = self.send(link, &cmd::flush_context(loaded));
                kept.map(|_| public)
            });
        let _ = self.send(link, &cmd::flush_context(srk));
        let public = made?;
        EccPublic::parse(&public).map_err(|e| self.err(format!("the new AK: {e}")))
    }

    /// An NV index's whole contents (owner authorization), in chunks the TPM accepts.
    fn read_nv(&self, link: &mut Link, index: u32) -> Result<Vec<u8>, HostError> {
        let r = self.call(
            link,
            &cmd::nv_read_public(index),
            "NV_ReadPublic(EK certificate)",
        )?;
        let (size, _) = self.parse(cmd::parse_nv_read_public(&r), "NV_ReadPublic")?;
        let mut out = Vec::with_capacity(size.into());
        while out.len() < usize::from(size) {
            let n = (usize::from(size) - out.len()).min(512) as u16;
            let r = self.call(
                link,
                &cmd::nv_read(TPM_RH_OWNER, index, n, out.len() as u16),
                "NV_Read(EK certificate)",
            )?;
            let data = self.parse(cmd::parse_nv_read(&r), "NV_Read")?;
            if data.is_empty() || data.len() > usize::from(n) {
                return Err(self.err("NV_Read returned no data or too much".into()));
            }
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    // --- the link -----------------------------------------------------------------------

    fn connect(&self) -> Result<Link, HostError> {
        let link = if self.tpm.starts_with('/') {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.tpm)
                .map(Link::Device)
        } else {
            TcpStream::connect(&self.tpm).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                Ok(Link::Tcp(s))
            })
        };
        link.map_err(|e| self.err(format!("unreachable: {e}")))
    }

    /// One command, one response (bounded, size-checked). Retries TPM_RC_RETRY.
    fn send(&self, link: &mut Link, command: &[u8]) -> Result<Vec<u8>, HostError> {
        for _ in 0..10 {
            let resp = match link {
                Link::Tcp(s) => {
                    s.write_all(command)
                        .map_err(|e| self.err(format!("write: {e}")))?;
                    let mut head = [0u8; 10];
                    s.read_exact(&mut head)
                        .map_err(|e| self.err(format!("read: {e}")))?;
                    let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
                    if !(10..=8192).contains(&size) {
                        return Err(self.err(format!("a {size}-byte response frame")));
                    }
                    let mut r = head.to_vec();
                    r.resize(size, 0);
                    s.read_exact(&mut r[10..])
                        .map_err(|e| self.err(format!("read: {e}")))?;
                    r
                }
                Link::Device(f) => {
                    f.write_all(command)
                        .map_err(|e| self.err(format!("write: {e}")))?;
                    let mut r = vec![0u8; 8192];
                    let n = f.read(&mut r).map_err(|e| self.err(format!("read: {e}")))?;
                    r.truncate(n);
                    r
                }
            };
            if cmd::response_code(&resp) != Ok(RC_RETRY) {
                return Ok(resp);
            }
        }
        Err(self.err("the TPM kept answering TPM_RC_RETRY".into()))
    }

    /// [`Self::send`], and the response must be a success.
    fn call(
        &self,
        link: &mut Link,
        command: &[u8],
        what: &'static str,
    ) -> Result<Vec<u8>, HostError> {
        let r = self.send(link, command)?;
        match cmd::response_code(&r) {
            Ok(0) => Ok(r),
            Ok(rc) => Err(HostError::Command {
                tpm: self.tpm.clone(),
                what,
                err: ResponseError::Tpm(rc),
            }),
            Err(err) => Err(HostError::Command {
                tpm: self.tpm.clone(),
                what,
                err,
            }),
        }
    }

    fn parse<T>(&self, r: Result<T, ResponseError>, what: &'static str) -> Result<T, HostError> {
        r.map_err(|err| HostError::Command {
            tpm: self.tpm.clone(),
            what,
            err,
        })
    }

    fn err(&self, why: String) -> HostError {
        HostError::Tpm {
            tpm: self.tpm.clone(),
            why,
        }
    }
}

/// Reads a file (securityfs files report no size: read to the end), at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > max {
        return Err(format!("larger than {} MiB", max >> 20));
    }
    Ok(out)
}

/// How long the host log may disagree with PCR 10 (an entry appended, its extend not yet done,
/// or the reverse) before that is a violation.
const HOST_PCR_GRACE: Duration = Duration::from_secs(3);

/// Watches the host until `stop`: feeds the host IMA log to a verifier as it grows, judges each
/// entry by `policy`, and compares the replay with the TPM's PCR 10. Calls `on_violation` once,
/// with the first finding, and ends.
pub fn watch(
    attestor: std::sync::Arc<HostAttestor>,
    policy: std::sync::Arc<weles_policy::Policy>,
    poll: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    on_violation: impl Fn(crate::monitor::Finding),
) {
    use std::io::{Seek, SeekFrom};
    use weles_ima::{Bank, Config, Verifier};
    // The PCR is read before the log: the kernel appends an entry, then extends, so every
    // extend the PCR holds has its entry in the log read after it. The PCR must equal the
    // replay after some recent prefix.
    let mut verifier = Verifier::new(Config {
        banks: vec![Bank::Sha256],
        replay_history: 256,
        ..Config::default()
    });
    let mut mismatch_since: Option<std::time::Instant> = None;
    let path = attestor.cfg.ima_log.clone();
    let finding = |index: u64, offset: u64, path: String, reason: &str, detail: String| {
        crate::monitor::Finding {
            index,
            offset,
            path: format!("host:{path}"),
            digest: None,
            reason: reason.into(),
            detail,
        }
    };
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let pcr = match attestor.pcr10() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("welesd: {e}");
                std::thread::sleep(poll);
                continue;
            }
        };
        let offset = verifier.state().offset + verifier.pending_bytes() as u64;
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&path).and_then(|mut f| {
            if offset > 0 {
                f.seek(SeekFrom::Start(offset))?;
            }
            f.take(4 << 20).read_to_end(&mut bytes)
        });
        if let Err(e) = read {
            eprintln!("welesd: host IMA log {}: {e}", path.display());
        }
        if let Err(e) = verifier.feed(&bytes, policy.as_ref()) {
            let st = verifier.state();
            return on_violation(finding(
                st.entries,
                st.offset,
                path.display().to_string(),
                "malformed_log",
                e.to_string(),
            ));
        }
        if let Some(v) = verifier.take_violations().into_iter().next() {
            return on_violation(crate::monitor::Finding {
                index: v.index,
                offset: v.offset,
                path: format!("host:{}", v.path),
                digest: v.digest,
                reason: v.reason.as_str().to_owned(),
                detail: format!("the host broke its host policy: {}", v.detail),
            });
        }
        let extends = verifier.state().extends;
        let replays = (0..=256u64)
            .filter_map(|k| extends.checked_sub(k))
            .filter_map(|n| verifier.replay_after(n))
            .any(|r| r.first().map(|d| d.as_bytes()) == Some(pcr.as_slice()));
        if replays {
            mismatch_since = None;
        } else {
            let since = *mismatch_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= HOST_PCR_GRACE {
                let st = verifier.state();
                return on_violation(finding(
                    st.entries,
                    st.offset,
                    "PCR10".into(),
                    "pcr_mismatch",
                    format!(
                        "the host IMA log ({} entries) does not replay to the host TPM's PCR 10 \
                         (sha256:{})",
                        st.entries,
                        hex::encode(&pcr)
                    ),
                ));
            }
        }
        std::thread::sleep(poll);
    }
}
