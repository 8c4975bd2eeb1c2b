//! One weles-vtpm process per VM: manufactured once, kept running, adopted across restarts of
//! the manager.
//!
//! A vTPM outlives the manager on purpose: QEMU holds its data channel, and a VM must not lose
//! its TPM because welesd was upgraded or crashed. A new welesd adopts the running process (its
//! pid file, checked against `/proc/PID/cmdline`) and resumes its event stream. When the vTPM
//! exits (QEMU closed the data channel: the VM is off), a new one is started for the next boot.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::EkCa;
use crate::vm::Vm;

/// Where one VM's files live.
#[derive(Clone, Debug)]
pub struct VmPaths {
    /// The vTPM's state directory (`--tpmstate dir=`).
    pub tpm_state: PathBuf,
    /// The vTPM's control socket: QEMU's `-chardev socket,path=`.
    pub vtpm_socket: PathBuf,
    pub events_socket: PathBuf,
    /// The data channel, when served on a socket (`vtpm.data_socket`).
    pub data_socket: PathBuf,
    pub guest_socket: PathBuf,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
}

impl VmPaths {
    pub fn new(state_dir: &Path, run_dir: &Path, vm: &str) -> VmPaths {
        let s = state_dir.join("vms").join(vm);
        let r = run_dir.join("vms").join(vm);
        VmPaths {
            tpm_state: s.join("tpm"),
            vtpm_socket: r.join("vtpm.sock"),
            events_socket: r.join("events.sock"),
            data_socket: r.join("data.sock"),
            guest_socket: r.join("guest.sock"),
            pid_file: r.join("vtpm.pid"),
            log_file: s.join("vtpm.log"),
        }
    }

    /// The QEMU arguments that attach this VM's vTPM and guest channel.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", self.vtpm_socket.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-crb,tpmdev=tpm0".into(),
            "-device".into(),
            "virtio-serial-pci,id=weles-serial".into(),
            "-chardev".into(),
            // reconnect: the manager may restart; QEMU dials its socket again.
            format!(
                "socket,id=weles-guest,path={},reconnect=1",
                self.guest_socket.display()
            ),
            "-device".into(),
            "virtserialport,bus=weles-serial.0,chardev=weles-guest,name=org.weles.guest.0".into(),
        ]
    }

    pub fn create_dirs(&self) -> std::io::Result<()> {
        for d in [self.tpm_state.parent(), self.vtpm_socket.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(d)?;
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        }
        Ok(())
    }
}

/// Manufactures a new vTPM (EKs and certificates from the manager's EK CA). The CA key goes to
/// `weles-vtpm manufacture` through a pipe; it never touches the disk.
pub fn manufacture(
    binary: &Path,
    paths: &VmPaths,
    vm: &str,
    banks: &[String],
    ca: &EkCa,
) -> Result<(), String> {
    let ca_cert = paths
        .tpm_state
        .parent()
        .map(|d| d.join("ek-ca.crt"))
        .ok_or("no VM directory")?;
    std::fs::write(&ca_cert, &ca.cert_pem).map_err(|e| format!("{}: {e}", ca_cert.display()))?;
    let mut child = Command::new(binary)
        .arg("manufacture")
        .arg("--tpmstate")
        .arg(format!("dir={}", paths.tpm_state.display()))
        .args(["--vtpm-id", vm, "--ca-key", "/dev/stdin", "--ca-cert"])
        .arg(&ca_cert)
        .arg("--pcr-banks")
        .arg(banks.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ca.key_pem.as_bytes())
            .map_err(|e| format!("passing the CA key: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for weles-vtpm manufacture: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "weles-vtpm manufacture failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A supervised vTPM process.
pub struct VtpmProcess {
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU64>,
    paths: VmPaths,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl VtpmProcess {
    /// Adopts the VM's running vTPM or starts one, and keeps one running.
    pub fn start(vm: Arc<Vm>, binary: PathBuf, paths: VmPaths, data_socket: bool) -> VtpmProcess {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU32::new(0));
        let restarts = Arc::new(AtomicU64::new(0));
        let (s, p, r, paths2) = (stop.clone(), pid.clone(), restarts.clone(), paths.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vtpm-proc-{}", vm.id))
            .spawn(move || supervise(&vm, &binary, &paths2, data_socket, &s, &p, &r))
            .ok();
        VtpmProcess {
            stop,
            pid,
            restarts,
            paths,
            thread: Mutex::new(thread),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Stops supervising; with `shutdown`, also ends the vTPM (CMD_SHUTDOWN on its control
    /// socket). Without it the vTPM keeps serving its VM for the next manager to adopt.
    pub fn stop(&self, shutdown: bool) {
        self.stop.store(true, Ordering::SeqCst);
        if shutdown {
            ctrl_shutdown(&self.paths.vtpm_socket);
        }
        if let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

/// CMD_SHUTDOWN (0x03): the vTPM stores its state and exits.
fn ctrl_shutdown(socket: &Path) {
    if let Ok(mut s) = UnixStream::connect(socket) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(&3u32.to_be_bytes());
        let mut r = [0u8; 4];
        let _ = s.read_exact(&mut r);
    }
}

fn supervise(
    vm: &Vm,
    binary: &Path,
    paths: &VmPaths,
    data_socket: bool,
    stop: &AtomicBool,
    pid: &AtomicU32,
    restarts: &AtomicU64,
) {
    let mut first = true;
    let mut quick_exits = 0u32;
    while !stop.load(Ordering::SeqCst) {
        if !first {
            restarts.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            if stop.load(Ordering::SeqCst) {
                return;
            }
        }
        if let Some(p) = adoptable(paths) {
            pid.store(p, Ordering::SeqCst);
            // Not our child: watch it through /proc.
            while Path::new(&format!("/proc/{p}")).exists() && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            // A new process numbers its events from 1 and has seen no boot yet — also the first
            // time, when the monitor may come from a checkpoint of an earlier process.
            vm.on_vtpm_restarted();
            let _ = std::fs::remove_file(&paths.vtpm_socket);
            let mut cmd = Command::new(binary);
            cmd.args(["socket", "--tpm2"]);
            if data_socket {
                cmd.arg("--server")
                    .arg(format!("type=unixio,path={}", paths.data_socket.display()));
            }
            // Its own complaints (a bad option, a refused state) go to its log, where the
            // operator looks.
            let stderr = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&paths.log_file)
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null());
            let started = std::time::Instant::now();
            let child = cmd
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", paths.vtpm_socket.display()))
                .arg("--events")
                .arg(format!(
                    "type=unixio,path={}",
                    paths.events_socket.display()
                ))
                .arg("--tpmstate")
                .arg(format!("dir={}", paths.tpm_state.display()))
                .args(["--vtpm-id", &vm.id])
                .arg("--pid")
                .arg(format!("file={}", paths.pid_file.display()))
                .arg("--log")
                .arg(format!("file={}", paths.log_file.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn();
            match child {
                Ok(mut c) => {
                    pid.store(c.id(), Ordering::SeqCst);
                    // The vTPM runs until QEMU closes its data channel or it is shut down.
                    while !stop.load(Ordering::SeqCst) {
                        match c.try_wait() {
                            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                            _ => break,
                        }
                    }
                    if !stop.load(Ordering::SeqCst) {
                        let status = c.wait();
                        if started.elapsed() < Duration::from_secs(1) {
                            eprintln!(
                                "welesd: vm {}: the vTPM exited at once ({}); see {}",
                                vm.id,
                                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                                paths.log_file.display()
                            );
                            quick_exits += 1;
                            std::thread::sleep(Duration::from_millis(200) * quick_exits.min(25));
                        } else {
                            quick_exits = 0;
                        }
                    } else {
                        // Leave it running for whoever adopts it; reap it if it already ended.
                        let _ = c.try_wait();
                    }
                }
                Err(e) => eprintln!(
                    "welesd: vm {}: cannot start {}: {e}",
                    vm.id,
                    binary.display()
                ),
            }
        }
        pid.store(0, Ordering::SeqCst);
        first = false;
    }
}

/// The pid of a running weles-vtpm serving this VM's state directory, from its pid file.
fn adoptable(paths: &VmPaths) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(&paths.pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.first().is_some_and(|a| a.ends_with(b"weles-vtpm"))
        && args
            .iter()
            .any(|a| *a == format!("dir={}", paths.tpm_state.display()).as_bytes());
    ours.then_some(pid)
}
