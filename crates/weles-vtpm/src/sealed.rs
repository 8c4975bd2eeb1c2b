//! The vTPM's state at rest: sealed (encrypted and authenticated) and rollback-protected.
//!
//! All of libtpms's blobs (`permall`, `volatilestate`, `savestate`) live in one file,
//! `tpm-state.sealed`:
//!
//! ```text
//! "WVTPMST1" || u64 version || u8[24] nonce || XChaCha20-Poly1305(key, nonce, aad, blobs)
//! aad   = "WVTPMST1" || u16 len || identity || u64 version || u16 len || provider kind
//! blobs = u32 count || count × (u16 name_len || name || u32 len || data)
//! ```
//!
//! - The key comes from a [`SealingProvider`]: `sim` reads a key file (no protection beyond file
//!   permissions; for development and tests); a TEE provider derives it from the enclave.
//! - The vTPM's identity is in the associated data: another vTPM's state does not open here.
//! - Every write uses the next version and records it in a [`MonotonicStore`] *after* the file is
//!   in place. Loading refuses a file older than the recorded version (rollback) and a missing file
//!   once a version was recorded (deletion); a file newer than the record (a crash between the two
//!   steps) is accepted and the record advanced.
//! - Writes go to a temporary file that is fsynced and renamed over the old one, so a crash at any
//!   point leaves the old or the new state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

const MAGIC: &[u8; 8] = b"WVTPMST1";
const HEADER: usize = 8 + 8 + 24;
const MAX_BLOBS: u32 = 16;
const MAX_STATE: usize = 64 << 20;

/// Why state could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: state version {found} is older than the recorded version {recorded}: refusing a rolled-back state"
    )]
    Rollback {
        path: PathBuf,
        found: u64,
        recorded: u64,
    },
    #[error(
        "{path}: missing, but version {recorded} was recorded: refusing to start from an empty TPM"
    )]
    Missing { path: PathBuf, recorded: u64 },
    #[error(
        "{path}: does not open with this vTPM's key and identity {identity:?} (another vTPM's state, or tampered)"
    )]
    NotOurs { path: PathBuf, identity: String },
    #[error("{path}: malformed state file: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("monotonic store {path}: {why}")]
    Monotonic { path: PathBuf, why: String },
    #[error("sealing key {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("randomness unavailable: {0}")]
    Random(String),
}

/// Where the state key comes from.
pub trait SealingProvider: Send + Sync {
    /// Recorded in the associated data: state sealed by one provider never opens under another.
    fn kind(&self) -> &'static str;
    fn key(&self) -> Result<Zeroizing<[u8; 32]>, StateError>;
}

/// The `sim` provider: a 32-byte key in a file (created, mode 0600, if absent). It protects
/// nothing a root user on the host cannot read; it stands in for TEE sealing.
pub struct SimSealing {
    path: PathBuf,
}

impl SimSealing {
    /// Opens (or creates) the key file; returns the provider and whether it created the key.
    pub fn open(path: &Path) -> Result<(SimSealing, bool), StateError> {
        let created = !path.exists();
        if created {
            let mut key = Zeroizing::new([0u8; 32]);
            getrandom::fill(key.as_mut()).map_err(|e| StateError::Random(e.to_string()))?;
            let err = |source| StateError::Io {
                path: path.to_path_buf(),
                source,
            };
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(path).map_err(err)?;
            f.write_all(key.as_ref()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        Ok((
            SimSealing {
                path: path.to_path_buf(),
            },
            created,
        ))
    }
}

impl SealingProvider for SimSealing {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn key(&self) -> Result<Zeroizing<[u8; 32]>, StateError> {
        let bytes = Zeroizing::new(std::fs::read(&self.path).map_err(|source| StateError::Io {
            path: self.path.clone(),
            source,
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(StateError::Key {
                path: self.path.clone(),
                why: format!("must hold 32 bytes, holds {}", bytes.len()),
            });
        }
        key.copy_from_slice(&bytes);
        Ok(key)
    }
}

/// A counter that only goes up: the record of the newest state version.
pub trait MonotonicStore: Send + Sync {
    fn current(&self) -> Result<u64, StateError>;
    /// Records `version`; refuses to go down.
    fn advance(&self, version: u64) -> Result<(), StateError>;
}

/// A counter in a file (development only: whoever can restore the state directory's files can
/// restore this one too, unless it lives elsewhere). The host TPM's NV counter is the real one.
pub struct FileCounter {
    path: PathBuf,
}

impl FileCounter {
    pub fn new(path: &Path) -> Self {
        FileCounter {
            path: path.to_path_buf(),
        }
    }
}

impl MonotonicStore for FileCounter {
    fn current(&self) -> Result<u64, StateError> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => t.trim().parse().map_err(|_| StateError::Monotonic {
                path: self.path.clone(),
                why: "not a number".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(StateError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn advance(&self, version: u64) -> Result<(), StateError> {
        let now = self.current()?;
        if version < now {
            return Err(StateError::Monotonic {
                path: self.path.clone(),
                why: format!("refusing to go from {now} down to {version}"),
            });
        }
        write_atomically(&self.path, format!("{version}\n").as_bytes())
    }
}

/// Test hook: `WELES_VTPM_FAULT=<point>` aborts the process at that point of a state write, to
/// prove a crash there loses nothing (tests only; harmless otherwise: the process just dies).
fn fault(point: &str) {
    if std::env::var("WELES_VTPM_FAULT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    fault("before-rename");
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// The sealed state of one vTPM.
pub struct SealedState {
    path: PathBuf,
    identity: String,
    provider: Box<dyn SealingProvider>,
    counter: Box<dyn MonotonicStore>,
    version: u64,
    /// A new vTPM: no state yet, whatever the monotonic store recorded (see [`Self::fresh`]).
    fresh: bool,
}

impl SealedState {
    pub fn new(
        dir: &Path,
        identity: &str,
        provider: Box<dyn SealingProvider>,
        counter: Box<dyn MonotonicStore>,
    ) -> Self {
        Self::at(dir.join("tpm-state.sealed"), identity, provider, counter)
    }

    /// Sealed state in the file `path` (the manager keeps its store this way).
    pub fn at(
        path: std::path::PathBuf,
        identity: &str,
        provider: Box<dyn SealingProvider>,
        counter: Box<dyn MonotonicStore>,
    ) -> Self {
        SealedState {
            path,
            identity: identity.to_string(),
            provider,
            counter,
            version: 0,
            fresh: false,
        }
    }

    /// Declares the vTPM new: a missing state file is accepted even though the monotonic store
    /// holds a version (a host TPM counter starts wherever the TPM's counters are). Only the one
    /// who creates vTPMs (the manager) may say so; otherwise a deleted state is refused.
    pub fn fresh(mut self) -> Self {
        self.fresh = true;
        self
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    fn aad(&self, version: u64) -> Vec<u8> {
        let mut a = MAGIC.to_vec();
        a.extend_from_slice(&(self.identity.len() as u16).to_be_bytes());
        a.extend_from_slice(self.identity.as_bytes());
        a.extend_from_slice(&version.to_be_bytes());
        let kind = self.provider.kind();
        a.extend_from_slice(&(kind.len() as u16).to_be_bytes());
        a.extend_from_slice(kind.as_bytes());
        a
    }

    fn cipher(&self) -> Result<XChaCha20Poly1305, StateError> {
        let key = self.provider.key()?;
        XChaCha20Poly1305::new_from_slice(key.as_ref()).map_err(|_| StateError::Malformed {
            path: self.path.clone(),
            why: "sealing key length".into(),
        })
    }

    /// Loads the blobs, refusing rolled-back, missing, foreign or tampered state.
    pub fn load(&mut self) -> Result<BTreeMap<String, Vec<u8>>, StateError> {
        let recorded = self.counter.current()?;
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if recorded > 0 && !self.fresh {
                    return Err(StateError::Missing {
                        path: self.path.clone(),
                        recorded,
                    });
                }
                // A new vTPM's first version follows whatever the store recorded.
                self.version = recorded;
                return Ok(BTreeMap::new());
            }
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let malformed = |why: &str| StateError::Malformed {
            path: self.path.clone(),
            why: why.into(),
        };
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(malformed("not a weles-vtpm state file"));
        }
        let version = u64::from_be_bytes(bytes[8..16].try_into().map_err(|_| malformed("header"))?);
        if version < recorded {
            return Err(StateError::Rollback {
                path: self.path.clone(),
                found: version,
                recorded,
            });
        }
        let cipher = self.cipher()?;
        let nonce = XNonce::try_from(&bytes[16..HEADER]).map_err(|_| malformed("nonce"))?;
        let aad = self.aad(version);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &nonce,
                    Payload {
                        msg: &bytes[HEADER..],
                        aad: &aad,
                    },
                )
                .map_err(|_| StateError::NotOurs {
                    path: self.path.clone(),
                    identity: self.identity.clone(),
                })?,
        );
        let blobs = decode_blobs(&plain).map_err(|why| malformed(&why))?;
        if version > recorded {
            // The previous run stopped between writing the file and recording its version.
            self.counter.advance(version)?;
        }
        self.version = version;
        Ok(blobs)
    }

    /// Seals `blobs` as the next version and records it.
    pub fn store(&mut self, blobs: &BTreeMap<String, Vec<u8>>) -> Result<(), StateError> {
        let version = self.version.max(self.counter.current()?) + 1;
        let cipher = self.cipher()?;
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| StateError::Random(e.to_string()))?;
        let plain = Zeroizing::new(encode_blobs(blobs));
        let aad = self.aad(version);
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| StateError::Malformed {
                path: self.path.clone(),
                why: "encryption failed".into(),
            })?;
        let mut file = Vec::with_capacity(HEADER + sealed.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&version.to_be_bytes());
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&sealed);
        write_atomically(&self.path, &file)?;
        fault("after-rename");
        self.counter.advance(version)?;
        fault("after-counter");
        self.version = version;
        Ok(())
    }
}

fn encode_blobs(blobs: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = (blobs.len() as u32).to_be_bytes().to_vec();
    for (name, data) in blobs {
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

fn decode_blobs(b: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    if b.len() > MAX_STATE {
        return Err("state larger than 64 MiB".into());
    }
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = b
            .get(pos..pos + n)
            .ok_or_else(|| format!("truncated at byte {pos}"))?;
        pos += n;
        Ok(s)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| "count")?);
    if count > MAX_BLOBS {
        return Err(format!("{count} blobs (at most {MAX_BLOBS})"));
    }
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let n = u16::from_be_bytes(take(2)?.try_into().map_err(|_| "name length")?) as usize;
        let name = String::from_utf8(take(n)?.to_vec()).map_err(|_| "blob name is not UTF-8")?;
        let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| "blob length")?) as usize;
        out.insert(name, take(len)?.to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weles-sealed-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn state(d: &Path, id: &str, counter: &Path) -> SealedState {
        let (sim, _) = SimSealing::open(&d.join("seal.key")).unwrap();
        SealedState::new(d, id, Box::new(sim), Box::new(FileCounter::new(counter)))
    }

    #[test]
    fn round_trip_rollback_foreign_and_tampered_state() {
        let d = dir("rt");
        let c = d.join("counter");
        let mut s = state(&d, "vm-a", &c);
        assert!(s.load().unwrap().is_empty());
        let mut blobs = BTreeMap::new();
        blobs.insert("permall".to_string(), vec![1u8; 300]);
        s.store(&blobs).unwrap();
        let old = std::fs::read(d.join("tpm-state.sealed")).unwrap();
        blobs.insert("permall".to_string(), vec![2u8; 300]);
        s.store(&blobs).unwrap();
        assert_eq!(state(&d, "vm-a", &c).load().unwrap(), blobs);

        // Rollback: the old file comes back.
        let newest = std::fs::read(d.join("tpm-state.sealed")).unwrap();
        std::fs::write(d.join("tpm-state.sealed"), &old).unwrap();
        assert!(matches!(
            state(&d, "vm-a", &c).load(),
            Err(StateError::Rollback {
                found: 1,
                recorded: 2,
                ..
            })
        ));
        // Deletion.
        std::fs::remove_file(d.join("tpm-state.sealed")).unwrap();
        assert!(matches!(
            state(&d, "vm-a", &c).load(),
            Err(StateError::Missing { recorded: 2, .. })
        ));
        // Another vTPM's identity, or one flipped bit.
        std::fs::write(d.join("tpm-state.sealed"), &newest).unwrap();
        assert!(matches!(
            state(&d, "vm-b", &c).load(),
            Err(StateError::NotOurs { .. })
        ));
        let mut bad = newest.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(d.join("tpm-state.sealed"), &bad).unwrap();
        assert!(matches!(
            state(&d, "vm-a", &c).load(),
            Err(StateError::NotOurs { .. })
        ));
        // A version field raised by hand is covered by the authentication too.
        let mut raised = newest.clone();
        raised[15] = 9;
        std::fs::write(d.join("tpm-state.sealed"), &raised).unwrap();
        assert!(matches!(
            state(&d, "vm-a", &c).load(),
            Err(StateError::NotOurs { .. })
        ));
    }

    #[test]
    fn counters_only_go_up_and_a_newer_file_advances_them() {
        let d = dir("ctr");
        let c = FileCounter::new(&d.join("counter"));
        c.advance(5).unwrap();
        assert!(c.advance(4).is_err());
        let mut s = state(&d, "vm", &d.join("counter2"));
        s.store(&BTreeMap::new()).unwrap();
        s.store(&BTreeMap::new()).unwrap();
        // The record fell behind (crash between rename and record): accepted, record advanced.
        std::fs::write(d.join("counter2"), "1\n").unwrap();
        let mut again = state(&d, "vm", &d.join("counter2"));
        again.load().unwrap();
        assert_eq!(FileCounter::new(&d.join("counter2")).current().unwrap(), 2);
    }

    #[test]
    fn malformed_blob_lists_are_refused() {
        assert!(decode_blobs(&[0, 0, 0, 99]).is_err());
        assert!(decode_blobs(&[0, 0, 0, 1, 0, 5, b'a']).is_err());
        assert!(decode_blobs(&[0, 0, 0, 1, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(decode_blobs(&[0, 0, 0, 0]).unwrap().len(), 0);
    }
}
