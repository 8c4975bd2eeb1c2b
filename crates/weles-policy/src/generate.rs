//! Policy generation: from a guest root filesystem, or from the log of a known-good run.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use regex::bytes::Regex;
use weles_ima::{Bank, Entry};

use crate::document::{ImaSection, PolicyDocument};
use crate::policy::BOOT_AGGREGATE;

/// Which files of a root filesystem go into the policy.
#[derive(Clone, Debug)]
pub struct RootfsRules {
    /// Extra files (not executable, not a library) to hash, by guest path regex (e.g. `^/etc/ssh/`).
    pub include: Vec<Regex>,
    /// Files never hashed, by guest path regex. Matched before `include`.
    pub exclude: Vec<Regex>,
    /// Hash every regular file, not just executables and libraries.
    pub all_files: bool,
    /// Directories skipped at the top of the tree (pseudo filesystems in a running guest).
    pub skip_top: Vec<String>,
}

impl Default for RootfsRules {
    fn default() -> Self {
        RootfsRules {
            include: Vec::new(),
            exclude: Vec::new(),
            all_files: false,
            skip_top: ["proc", "sys", "dev", "run", "tmp"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// A file chosen for the policy.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The path as the guest kernel will log it (`/usr/bin/ls`).
    pub guest_path: Vec<u8>,
    pub fs_path: PathBuf,
    pub size: u64,
}

/// Errors while scanning or hashing.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Walks `root` (without following symlinks: IMA logs the resolved path, which the walk reaches
/// on its own) and selects executables (any `x` bit), shared libraries (ELF `.so` files) and
/// files matching `rules.include`.
pub fn scan_rootfs(root: &Path, rules: &RootfsRules) -> Result<Vec<Candidate>, GenerateError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), Vec::from(&b""[..]))];
    while let Some((dir, guest_dir)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let mut guest = guest_dir.clone();
            guest.push(b'/');
            guest.extend_from_slice(name.as_encoded_bytes());
            let path = e.path();
            let ft = e.file_type().map_err(io(&path))?;
            if ft.is_dir() {
                if guest_dir.is_empty()
                    && rules
                        .skip_top
                        .iter()
                        .any(|s| s.as_bytes() == name.as_encoded_bytes())
                {
                    continue;
                }
                stack.push((path, guest));
                continue;
            }
            if !ft.is_file() || rules.exclude.iter().any(|r| r.is_match(&guest)) {
                continue;
            }
            let meta = e.metadata().map_err(io(&path))?;
            let wanted = rules.all_files
                || meta.permissions().mode() & 0o111 != 0
                || rules.include.iter().any(|r| r.is_match(&guest))
                || is_shared_library(&guest, &path);
            if wanted {
                out.push(Candidate {
                    guest_path: guest,
                    fs_path: path,
                    size: meta.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.guest_path.cmp(&b.guest_path));
    Ok(out)
}

fn is_shared_library(guest: &[u8], path: &Path) -> bool {
    let name = guest.rsplit(|b| *b == b'/').next().unwrap_or(guest);
    let so = name.windows(3).any(|w| w == b".so")
        && name
            .split(|b| *b == b'.')
            .skip_while(|p| *p != b"so")
            .skip(1)
            .all(|p| p.iter().all(u8::is_ascii_digit));
    if !so {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

/// Hashes candidates on `threads` threads. `progress(bytes, files)` is called as work completes.
pub fn hash_files(
    files: &[Candidate],
    bank: Bank,
    threads: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<(Vec<u8>, weles_ima::Digest)>, GenerateError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<weles_ima::Digest>>> = Mutex::new(vec![None; files.len()]);
    let first_error: Mutex<Option<GenerateError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = files.get(i) else { break };
                    match hash_file(&c.fs_path, bank, &mut buf) {
                        Ok(d) => {
                            if let Ok(mut r) = results.lock() {
                                r[i] = Some(d);
                            }
                            progress(c.size, 1);
                        }
                        Err(e) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                            next.store(files.len(), Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let digests = results.into_inner().unwrap_or_default();
    Ok(files
        .iter()
        .zip(digests)
        .filter_map(|(c, d)| Some((c.guest_path.clone(), d?)))
        .collect())
}

fn hash_file(path: &Path, bank: Bank, buf: &mut [u8]) -> Result<weles_ima::Digest, GenerateError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = bank.hasher();
    loop {
        let n = f.read(buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

/// A policy document allowing exactly `files`.
pub fn document_from_files(files: &[(Vec<u8>, weles_ima::Digest)], version: u64) -> PolicyDocument {
    let mut digests: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, d) in files {
        let list = digests
            .entry(String::from_utf8_lossy(path).into_owned())
            .or_default();
        let text = d.to_string();
        if !list.contains(&text) {
            list.push(text);
        }
    }
    PolicyDocument {
        version,
        ima: ImaSection {
            digests,
            ..ImaSection::default()
        },
        ..PolicyDocument::default()
    }
}

/// What a known-good log contributed, besides the document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FromLogSummary {
    pub entries: u64,
    pub paths: usize,
    pub buffers: usize,
    /// Violation entries seen (they are never allowlisted).
    pub violations_skipped: u64,
    /// Entries whose template hash did not verify (never allowlisted).
    pub corrupt_skipped: u64,
    /// Entries of unsupported templates (never allowlisted).
    pub unsupported_skipped: u64,
}

/// Allowlists every measurement of a known-good run.
pub fn document_from_log<'a>(
    entries: impl IntoIterator<Item = Entry<'a>>,
    version: u64,
) -> (PolicyDocument, FromLogSummary) {
    let mut doc = PolicyDocument {
        version,
        ..PolicyDocument::default()
    };
    let mut s = FromLogSummary::default();
    for e in entries {
        s.entries += 1;
        if e.is_violation() {
            s.violations_skipped += 1;
            continue;
        }
        if e.template.is_none() {
            s.unsupported_skipped += 1;
            continue;
        }
        if !e.template_hash_ok() {
            s.corrupt_skipped += 1;
            continue;
        }
        let Some(d) = e.file_digest_value() else {
            s.unsupported_skipped += 1;
            continue;
        };
        let text = d.to_string();
        let name = e.name_lossy().into_owned();
        let target = if e.name_bytes() == BOOT_AGGREGATE {
            if !doc.ima.boot_aggregate.contains(&text) {
                doc.ima.boot_aggregate.push(text);
            }
            continue;
        } else if e.buffer().is_some() {
            doc.ima.buffers.entry(name).or_default()
        } else {
            doc.ima.digests.entry(name).or_default()
        };
        if !target.contains(&text) {
            target.push(text);
        }
    }
    s.paths = doc.ima.digests.len();
    s.buffers = doc.ima.buffers.len();
    (doc, s)
}
