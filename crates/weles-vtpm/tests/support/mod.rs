//! Helpers shared by the integration tests that start weles-vtpm (or swtpm) on loopback ports.

#![allow(dead_code)] // each test file uses its own part of these

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use weles_vtpm::ctrl::{self, Request};

/// Two adjacent free ports: tpm2-tools' swtpm TCTI expects the control channel at data + 1.
///
/// Taken from a process-wide counter below the kernel's ephemeral range (32768 and up): ports
/// found by binding port 0 and letting go could be handed out again to a test running in
/// parallel before its TPM binds them, and then one TPM serves both tests. Here no two tests of
/// this binary get the same port, and bind(0) never gives these out; a port some other program
/// holds is skipped.
pub fn free_ports() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 3_000) as u16 * 2;
    loop {
        let p = base + NEXT.fetch_add(2, Ordering::Relaxed) % 6_000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return (p, p + 1);
        }
    }
}

/// Whether a TPM serves its control channel on `port`: it answers CMD_GET_CAPABILITY. A mere
/// connect is not proof — it was seen to succeed, rarely, before the TPM had bound anything
/// (and a connect to a free loopback port can even reach itself, by TCP simultaneous open) —
/// and then the test's first command met a closed port.
pub fn listening(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.local_addr().map(|a| a.port()).ok() == Some(port) {
        return false;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut caps = [0u8; 8];
    s.write_all(&1u32.to_be_bytes()).is_ok() && s.read_exact(&mut caps).is_ok()
}

/// A weles-vtpm on loopback TCP ports, started as swtpm would be, driven by tpm2-tools.
pub struct Vtpm {
    pub child: Child,
    pub data: u16,
    pub ctrl: u16,
    pub dir: PathBuf,
}

impl Vtpm {
    pub fn start(dir: &Path) -> Vtpm {
        let (data, ctrl) = free_ports();
        let child = Command::new(env!("CARGO_BIN_EXE_weles-vtpm"))
            .args(["socket", "--tpm2"])
            .arg("--server")
            .arg(format!("type=tcp,port={data},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .args(["--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.join("state").display()))
            .arg("--log")
            .arg(format!("file={}", dir.join("vtpm.log").display()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(ctrl) {
            assert!(Instant::now() < deadline, "weles-vtpm did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Vtpm {
            child,
            data,
            ctrl,
            dir: dir.to_path_buf(),
        }
    }

    pub fn tool(&self, args: &[&str]) -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:host=127.0.0.1,port={}", self.data),
            )
            .current_dir(&self.dir)
            .output()
            .expect("tpm2-tools are installed")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tool(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn ctrl(&self, req: &Request, response_len: usize) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.ctrl)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&ctrl::encode(req)).unwrap();
        let mut r = vec![0u8; response_len];
        s.read_exact(&mut r).unwrap();
        r
    }
}

impl Drop for Vtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory for one test.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weles-vtpm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
