//! Shared by the tests that run real processes: binaries, kill-on-drop, and playing the guest
//! kernel (IMA entries from a real captured log, TPM2_PCR_Extend on a vTPM's data channel).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;

use weles_ima::write::{binary_entry, d_ng, n_ng, template_data};
use weles_ima::{Bank, ByteOrder, Entry, HashAlgorithm, log::parse_all};
use weles_policy::Policy;

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A workspace binary (`cargo test --workspace` builds them all).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p {name}` (cargo test --workspace builds it)",
        p.display()
    );
    p
}

/// Kills the process when dropped.
/// Where a started process's stderr goes: shown with WELES_TEST_VERBOSE=1, else dropped.
pub fn child_stderr() -> std::process::Stdio {
    if std::env::var_os("WELES_TEST_VERBOSE").is_some() {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    }
}

/// Ends the vTPMs a welesd started under `run_dir`: they outlive welesd by design, and a test
/// must not leave them behind. Found by their command lines (the test may have removed their
/// pid files with its directory already).
pub fn stop_vtpms(run_dir: &Path) {
    let needle = run_dir.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        let program = cmd.split('\0').next().unwrap_or("");
        if program.ends_with("/weles-vtpm") && cmd.contains(&needle) {
            let _ = std::process::Command::new("kill")
                .arg(p.file_name())
                .status();
        }
    }
}

pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn policy() -> Arc<Policy> {
    let path = format!("{ROOT}/testdata/demo/policy-tolerant.toml");
    Arc::new(Policy::load(&std::fs::read(&path).unwrap(), &path).unwrap())
}

pub fn real_log() -> Vec<u8> {
    std::fs::read(format!(
        "{ROOT}/testdata/ima/ima-sig-sha256/binary_runtime_measurements"
    ))
    .unwrap()
}

/// An `ima-ng` entry for a file no test policy lists.
pub fn unlisted_entry() -> Vec<u8> {
    let data = template_data(
        ByteOrder::Little,
        &[
            &d_ng(HashAlgorithm::Sha256, &[0x66; 32]),
            &n_ng(b"/usr/local/bin/miner"),
        ],
    );
    let mut out = Vec::new();
    binary_entry(&mut out, ByteOrder::Little, 10, "ima-ng", &data, false);
    out
}

/// The log's entries with their raw bytes.
pub fn split(log: &[u8]) -> Vec<(Entry<'static>, Vec<u8>)> {
    let (_, entries) = parse_all(log, Default::default()).unwrap();
    entries
        .into_iter()
        .map(|e| {
            let mut raw = Vec::new();
            binary_entry(
                &mut raw,
                ByteOrder::Little,
                e.pcr,
                &e.template_name,
                &e.data,
                e.is_violation(),
            );
            (e.into_owned(), raw)
        })
        .collect()
}

/// Sends one command, returns the response code.
pub fn tpm<S: Read + Write>(s: &mut S, cmd: &[u8]) -> u32 {
    s.write_all(cmd).unwrap();
    let mut head = [0u8; 10];
    s.read_exact(&mut head).unwrap();
    let size = u32::from_be_bytes(head[2..6].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; size - 10];
    s.read_exact(&mut rest).unwrap();
    u32::from_be_bytes(head[6..10].try_into().unwrap())
}

/// TPM2_PCR_Extend with a password session, one digest per bank.
pub fn pcr_extend<S: Read + Write>(s: &mut S, pcr: u32, digests: &[weles_ima::Digest]) {
    let mut body = Vec::new();
    body.extend_from_slice(&pcr.to_be_bytes());
    body.extend_from_slice(&9u32.to_be_bytes());
    body.extend_from_slice(&[0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
    body.extend_from_slice(&(digests.len() as u32).to_be_bytes());
    for d in digests {
        let alg: u16 = match d.algorithm() {
            HashAlgorithm::Sha1 => 0x0004,
            HashAlgorithm::Sha256 => 0x000b,
            other => panic!("{other:?}"),
        };
        body.extend_from_slice(&alg.to_be_bytes());
        body.extend_from_slice(d.as_bytes());
    }
    let mut cmd = vec![0x80, 0x02];
    cmd.extend_from_slice(&((body.len() + 10) as u32).to_be_bytes());
    cmd.extend_from_slice(&0x182u32.to_be_bytes());
    cmd.extend_from_slice(&body);
    assert_eq!(tpm(s, &cmd), 0, "TPM2_PCR_Extend");
}

/// What IMA does for one entry: append it to the log file, then extend PCR 10 (sha1, sha256).
pub fn measure(
    log: &Path,
    data: &mut UnixStream,
    entry: &Entry<'_>,
    raw: &[u8],
    log_it: bool,
    extend_it: bool,
) {
    if log_it {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .unwrap();
        f.write_all(raw).unwrap();
    }
    if extend_it {
        let digests = [Bank::Sha1, Bank::Sha256].map(|b| entry.template_digest(b));
        pcr_extend(data, 10, &digests);
    }
}

/// A power-on as QEMU and the firmware do it: CMD_INIT on the control channel, then
/// TPM2_Startup(CLEAR) on the data channel (a new connection, returned).
pub fn power_on(ctrl: &Path, data: &Path) -> UnixStream {
    // The vTPM may still be starting (welesd spawns it): wait for its control socket.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut c = loop {
        match UnixStream::connect(ctrl) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}: {e}",
                    ctrl.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    };
    c.write_all(&[0, 0, 0, 2, 0, 0, 0, 0]).unwrap();
    let mut r = [0u8; 4];
    c.read_exact(&mut r).unwrap();
    assert_eq!(r, [0; 4], "CMD_INIT");
    let mut d = UnixStream::connect(data).unwrap();
    let rc = tpm(&mut d, &[0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x44, 0, 0]);
    assert_eq!(rc, 0, "TPM2_Startup(CLEAR)");
    d
}

/// A weles-vtpm with its data, control and event sockets in `dir` (data.sock, ctrl.sock,
/// events.sock), started as QEMU would find it running, and ready.
pub fn spawn_vtpm(dir: &Path) -> Kill {
    let (data, ctrl, events) = (
        dir.join("data.sock"),
        dir.join("ctrl.sock"),
        dir.join("events.sock"),
    );
    let vtpm = Kill(
        std::process::Command::new(bin("weles-vtpm"))
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--server")
            .arg(format!("type=unixio,path={}", data.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", ctrl.display()))
            .arg("--events")
            .arg(format!("type=unixio,path={}", events.display()))
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.join("state").display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("weles-vtpm"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while UnixStream::connect(&events).is_err() || UnixStream::connect(&data).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "weles-vtpm did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    vtpm
}
