//! Linux configfs-tsm (`Documentation/ABI/testing/configfs-tsm`): a confidential VM's TEE report
//! (SEV-SNP, TDX) through `/sys/kernel/config/tsm/report`.
//!
//! One report: make a directory under the root, write the 64 bytes of report data to `inblob`,
//! read `outblob` (the report; reading it makes the kernel ask the TEE), `auxblob` (the
//! certificates the host supplied, if any) and `provider` (`sev_guest`, `tdx_guest`), then remove
//! the directory. `generation` counts writes: if it moved by more than our one write, someone
//! else wrote in between and the report may not be ours — try again.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TsmError {
    #[error("configfs-tsm {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("configfs-tsm: another writer raced us three times; no report")]
    Raced,
}

/// One report and what came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsmReport {
    /// `sev_guest` or `tdx_guest`.
    pub provider: String,
    /// The TEE's report (SEV-SNP: ATTESTATION_REPORT; TDX: a TD quote).
    pub outblob: Vec<u8>,
    /// Host-supplied certificates (SEV-SNP: the certificate table, VCEK included), if any.
    pub auxblob: Option<Vec<u8>>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TsmError + '_ {
    move |e| TsmError::Io {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

fn read_generation(dir: &Path) -> Result<u64, TsmError> {
    let p = dir.join("generation");
    let raw = read_attr(&p, true)?.unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    text.trim().parse().map_err(|_| TsmError::Io {
        path: p.clone(),
        why: format!("generation {:?} is not a number", text.trim()),
    })
}

/// Reads an attribute the kernel may still be producing: configfs makes it at once; a test
/// tree may be a moment late.
fn read_attr(p: &Path, required: bool) -> Result<Option<Vec<u8>>, TsmError> {
    for _ in 0..100 {
        match std::fs::read(p) {
            Ok(b) => return Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !required {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io(p)(e)),
        }
    }
    Err(TsmError::Io {
        path: p.to_path_buf(),
        why: "never appeared".into(),
    })
}

/// A report binding `report_data`, from the configfs-tsm root (`/sys/kernel/config/tsm/report`).
pub fn report(root: &Path, report_data: &[u8; 64]) -> Result<TsmReport, TsmError> {
    // One directory per report: concurrent requests (several tenants) must not share one.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("weles-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir).map_err(io(&dir))?;
    let result = (|| {
        for _ in 0..3 {
            let before = read_generation(&dir)?;
            let inblob = dir.join("inblob");
            std::fs::write(&inblob, report_data).map_err(io(&inblob))?;
            let outblob = read_attr(&dir.join("outblob"), true)?.unwrap_or_default();
            let auxblob = read_attr(&dir.join("auxblob"), false)?.filter(|a| !a.is_empty());
            let provider = read_attr(&dir.join("provider"), true)?.unwrap_or_default();
            if read_generation(&dir)? != before + 1 {
                continue;
            }
            return Ok(TsmReport {
                provider: String::from_utf8_lossy(&provider).trim().to_owned(),
                outblob,
                auxblob,
            });
        }
        Err(TsmError::Raced)
    })();
    // configfs removes the attributes with the directory; a plain directory (tests) needs them
    // gone first.
    if std::fs::remove_dir(&dir).is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
