//! The state at rest, end to end through the real binary and tpm2-tools: rollback and foreign
//! state are refused at start, and a crash at any point of a write loses nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{free_ports, listening};

struct Vtpm {
    child: Child,
    data: u16,
    dir: PathBuf,
}

/// weles-vtpm with swtpm's arguments on `dir/state`, output captured.
fn vtpm_command(dir: &Path, id: &str, data: u16, ctrl: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weles-vtpm"));
    cmd.args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .args(["--vtpm-id", id])
        .arg("--server")
        .arg(format!("type=tcp,port={data},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.join("state").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Spawns `cmd` and waits until it serves on `ctrl`; `Err(output)` if it exits instead.
fn serving(mut cmd: Command, data: u16, ctrl: u16, dir: &Path) -> Result<Vtpm, Output> {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if listening(ctrl) {
            return Ok(Vtpm {
                child,
                data,
                dir: dir.to_path_buf(),
            });
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(child.wait_with_output().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "weles-vtpm neither served nor exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts weles-vtpm on `dir`; `Err(output)` if it exits instead of serving.
fn start(dir: &Path, id: &str, fault: Option<&str>) -> Result<Vtpm, Output> {
    let (data, ctrl) = free_ports();
    let mut cmd = vtpm_command(dir, id, data, ctrl);
    cmd.arg("--seal")
        .arg(format!("sim,keyfile={}", dir.join("seal.key").display()))
        .arg("--monotonic")
        .arg(format!("file={}", dir.join("counter").display()));
    if let Some(f) = fault {
        cmd.env("WELES_VTPM_FAULT", f);
    }
    serving(cmd, data, ctrl, dir)
}

impl Vtpm {
    fn tool(&self, args: &[&str]) -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:host=127.0.0.1,port={}", self.data),
            )
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) {
        let o = self.tool(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn nv_read(&self) -> Option<Vec<u8>> {
        let o = self.tool(&[
            "tpm2_nvread",
            "0x1500030",
            "-C",
            "o",
            "-s",
            "8",
            "-o",
            "nv.out",
        ]);
        o.status
            .success()
            .then(|| std::fs::read(self.dir.join("nv.out")).unwrap())
    }

    /// Defines the 8-byte owner NV index the tests write and read.
    fn nv_define(&self) {
        self.ok(&[
            "tpm2_nvdefine",
            "0x1500030",
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "ownerread|ownerwrite",
        ]);
    }

    fn nv_write(&self, value: &[u8; 8]) -> Output {
        std::fs::write(self.dir.join("nv.in"), value).unwrap();
        self.tool(&["tpm2_nvwrite", "0x1500030", "-C", "o", "-i", "nv.in"])
    }

    /// Whether the process has exited (after a short grace period).
    fn child_exited(&self) -> Option<bool> {
        std::thread::sleep(Duration::from_millis(50));
        let pid = self.child.id();
        Some(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
        )
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weles-vtpm-sealed-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn with_nv(dir: &Path, id: &str, value: &[u8; 8]) {
    let t = start(dir, id, None).unwrap();
    t.nv_define();
    assert!(t.nv_write(value).status.success());
    t.kill();
}

#[test]
fn restored_old_state_and_foreign_state_are_refused() {
    let dir = tempdir("rollback");
    with_nv(&dir, "vm-1", b"version1");
    let old = std::fs::read(dir.join("state/tpm-state.sealed")).unwrap();
    let t = start(&dir, "vm-1", None).unwrap();
    assert!(t.nv_write(b"version2").status.success());
    t.kill();
    assert!(
        !std::fs::read(dir.join("state/tpm-state.sealed"))
            .unwrap()
            .is_empty()
    );
    assert!(
        std::fs::read(dir.join("state")).is_err(),
        "state is a directory"
    );
    let newest = std::fs::read(dir.join("state/tpm-state.sealed")).unwrap();

    std::fs::write(dir.join("state/tpm-state.sealed"), &old).unwrap();
    let out = start(&dir, "vm-1", None)
        .err()
        .expect("a rolled-back state must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("older than the recorded version") && err.contains("rolled-back"),
        "{err}"
    );

    std::fs::write(dir.join("state/tpm-state.sealed"), &newest).unwrap();
    let out = start(&dir, "vm-2", None)
        .err()
        .expect("another vTPM's state must not start");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another vTPM's state"));

    let t = start(&dir, "vm-1", None).unwrap();
    assert_eq!(t.nv_read().as_deref(), Some(&b"version2"[..]));
    t.kill();
}

#[test]
fn a_crash_at_each_point_of_a_write_leaves_old_or_new_state() {
    for point in ["before-rename", "after-rename", "after-counter"] {
        let dir = tempdir(point);
        with_nv(&dir, "vm", b"old-old!");
        // The fault aborts the process at its first state write: during start-up or the NV write.
        let died = match start(&dir, "vm", Some(point)) {
            Err(_) => true,
            Ok(t) => {
                let failed = !t.nv_write(b"new-new!").status.success();
                let exited = matches!(t.child_exited(), Some(true));
                t.kill();
                failed || exited
            }
        };
        assert!(died, "{point}: the injected crash never happened");
        let t = start(&dir, "vm", None)
            .unwrap_or_else(|o| panic!("{point}: {}", String::from_utf8_lossy(&o.stderr)));
        let v = t
            .nv_read()
            .unwrap_or_else(|| panic!("{point}: NV index lost"));
        assert!(v == b"old-old!" || v == b"new-new!", "{point}: {v:?}");
        t.kill();
    }
}

#[test]
fn killing_at_random_moments_during_writes_loses_nothing() {
    let dir = tempdir("kill");
    with_nv(&dir, "vm", b"00000000");
    let mut last_good = *b"00000000";
    for round in 0..12u32 {
        let t = start(&dir, "vm", None).unwrap();
        let value: [u8; 8] = format!("{round:08}").into_bytes().try_into().unwrap();
        std::fs::write(dir.join("nv.in"), value).unwrap();
        let writer = Command::new("tpm2_nvwrite")
            .args(["0x1500030", "-C", "o", "-i", "nv.in"])
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:host=127.0.0.1,port={}", t.data),
            )
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(u64::from(round % 6) * 2500));
        t.kill();
        let mut writer = writer;
        let _ = writer.wait();
        let t = start(&dir, "vm", None)
            .unwrap_or_else(|o| panic!("round {round}: {}", String::from_utf8_lossy(&o.stderr)));
        let v = t
            .nv_read()
            .unwrap_or_else(|| panic!("round {round}: NV index lost"));
        assert!(v == last_good || v == value, "round {round}: {v:?}");
        last_good = v.try_into().unwrap();
        t.kill();
    }
}

/// A swtpm playing the host TPM, reached through its TCP data socket.
struct HostTpm {
    child: Child,
    port: u16,
}

impl Drop for HostTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_tpm(dir: &Path) -> HostTpm {
    let (port, ctrl) = free_ports();
    std::fs::create_dir_all(dir.join("host-tpm")).unwrap();
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.join("host-tpm").display()))
        .spawn()
        .expect("swtpm is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(ctrl) {
        assert!(Instant::now() < deadline, "swtpm did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    HostTpm { child, port }
}

/// weles-vtpm with its version recorded in an NV counter of `host`.
fn start_with_host_counter(dir: &Path, host: &HostTpm, fresh: bool) -> Result<Vtpm, Output> {
    let (data, ctrl) = free_ports();
    let mut cmd = vtpm_command(dir, "vm", data, ctrl);
    cmd.arg("--monotonic").arg(format!(
        "type=tpm,host=127.0.0.1,port={},index=0x01500100",
        host.port
    ));
    if fresh {
        cmd.arg("--fresh-state");
    }
    serving(cmd, data, ctrl, dir)
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_host_tpm_counter_catches_restoring_the_whole_state_directory() {
    let dir = tempdir("host-counter");
    let host = host_tpm(&dir);

    // A new vTPM must be declared new: the host counter starts wherever the TPM's counters are.
    let out = start_with_host_counter(&dir, &host, false)
        .err()
        .expect("an unannounced empty state must be refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = start_with_host_counter(&dir, &host, true).unwrap();
    t.nv_define();
    assert!(t.nv_write(b"snapshot").status.success());
    t.kill();

    // The administrator snapshots the whole directory (sealed key and all), the VM goes on ...
    copy_dir(&dir.join("state"), &dir.join("snapshot"));
    let t = start_with_host_counter(&dir, &host, false).unwrap();
    assert!(t.nv_write(b"newer!!!").status.success());
    t.kill();

    // ... and the snapshot is put back: the host TPM's counter has moved on.
    copy_dir(&dir.join("snapshot"), &dir.join("state"));
    let out = start_with_host_counter(&dir, &host, false)
        .err()
        .expect("a restored snapshot must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("older than the recorded version"), "{err}");

    // Contrast: with the development file counter inside the same directory, the very same
    // attack goes unnoticed — which is why the host TPM counter exists.
    let dev = tempdir("file-counter-in-dir");
    let (data, ctrl) = free_ports();
    let run = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weles-vtpm"));
        c.args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--server")
            .arg(format!("type=tcp,port={data},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg("--tpmstate")
            .arg(format!("dir={}", dev.join("state").display()))
            .args(extra)
            .stderr(Stdio::null());
        c.spawn().unwrap()
    };
    let wait = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(ctrl) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut c = run(&[]);
    wait();
    let _ = c.kill();
    let _ = c.wait();
    copy_dir(&dev.join("state"), &dev.join("snapshot"));
    let mut c = run(&[]);
    wait();
    let _ = c.kill();
    let _ = c.wait();
    copy_dir(&dev.join("snapshot"), &dev.join("state"));
    let mut c = run(&[]);
    wait();
    assert!(
        c.try_wait().unwrap().is_none(),
        "the in-directory file counter cannot see a whole-directory restore"
    );
    let _ = c.kill();
    let _ = c.wait();
}
