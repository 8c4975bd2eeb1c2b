//! A real welesd process, driven over its operator socket: tenants and VMs, each VM's real
//! weles-vtpm (manufactured with the manager's EK CA), restarts that adopt running vTPMs, and a
//! rolled-back store refused.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use weles_proto::operator::{OperatorReply, OperatorRequest, VmInfo, call};

struct Welesd {
    child: Child,
    dir: PathBuf,
}

impl Drop for Welesd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// welesd on this test's directories, the tenant API on any free port.
fn welesd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_welesd"));
    c.arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(["--tenant-api", "127.0.0.1:0"]);
    c
}

fn start(dir: &Path) -> Welesd {
    let child = welesd(dir).stderr(Stdio::null()).spawn().unwrap();
    let mut d = Welesd {
        child,
        dir: dir.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&d.socket(), &OperatorRequest::Health).is_err() {
        assert!(d.child.try_wait().unwrap().is_none(), "welesd exited");
        assert!(Instant::now() < deadline, "welesd did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

impl Welesd {
    fn socket(&self) -> PathBuf {
        self.dir.join("run/operator.sock")
    }

    fn ask(&self, req: OperatorRequest) -> OperatorReply {
        call(&self.socket(), &req).unwrap()
    }

    fn vm(&self, name: &str) -> VmInfo {
        match self.ask(OperatorRequest::VmStatus { name: name.into() }) {
            OperatorReply::Vm(v) => *v,
            other => panic!("{other:?}"),
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_code(r: &OperatorReply) -> &str {
    match r {
        OperatorReply::Error(e) => &e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn sh(dir: &Path, cmd: &str) -> Output {
    let o = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("welesd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tenant_key(dir: &Path) -> String {
    sh(dir, "ssh-keygen -q -t ed25519 -N '' -C acme -f tenant");
    std::fs::read_to_string(dir.join("tenant.pub")).unwrap()
}

/// GET_CAPABILITY on a vTPM's control socket: the vTPM is up and speaks swtpm's protocol.
fn vtpm_answers(socket: &str) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap();
    let mut caps = [0u8; 8];
    s.read_exact(&mut caps).is_ok() && caps != [0; 8]
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tenants_and_vms_through_the_operator_socket_with_clear_refusals() {
    let dir = temp("ops");
    let key = tenant_key(&dir);
    let d = start(&dir);
    match d.ask(OperatorRequest::Health) {
        OperatorReply::Health(h) => assert_eq!((h.tee.as_str(), h.tenants, h.vms), ("sim", 0, 0)),
        other => panic!("{other:?}"),
    }
    let add = |name: &str, k: &str| {
        d.ask(OperatorRequest::RegisterTenant {
            name: name.into(),
            ssh_key: k.into(),
        })
    };
    assert!(
        matches!(add("acme", &key), OperatorReply::Tenant(t) if t.ssh_key_fingerprint.starts_with("SHA256:"))
    );
    assert_eq!(error_code(&add("acme", &key)), "exists");
    assert_eq!(
        error_code(&add("other", "ssh-ed25519 AAAAnotakey")),
        "invalid"
    );
    assert_eq!(error_code(&add("Bad/Name", &key)), "invalid");
    let create = |tenant: &str, name: &str| {
        d.ask(OperatorRequest::CreateVm {
            tenant: tenant.into(),
            name: name.into(),
        })
    };
    assert_eq!(error_code(&create("nobody", "web-1")), "unknown_tenant");
    assert_eq!(error_code(&create("acme", "../etc")), "invalid");
    let OperatorReply::Vm(vm) = create("acme", "web-1") else {
        panic!("create failed")
    };
    assert_eq!(error_code(&create("acme", "web-1")), "exists");
    assert_eq!(vm.state, "rebooted", "not compliant before it even ran");
    assert!(vm.qemu_args.iter().any(|a| a.contains("emulator,id=tpm0")));
    assert!(
        vm.qemu_args
            .iter()
            .any(|a| a.ends_with("name=org.weles.guest.0"))
    );
    wait_until("the vTPM answers", || vtpm_answers(&vm.vtpm_socket));
    // The vTPM's EK certificates were issued by this manager's EK CA.
    let state = dir.join("state");
    sh(
        &state,
        "openssl x509 -inform DER -in vms/web-1/tpm/ek-ecc.der -out ek.pem && openssl verify -CAfile ek-ca.crt ek.pem",
    );
    // Malformed requests are refused, the connection answered.
    let mut s = UnixStream::connect(d.socket()).unwrap();
    weles_proto::framing::write_frame(&mut s, br#"{"op":"reboot_host"}"#).unwrap();
    let reply = weles_proto::framing::read_frame(&mut s).unwrap().unwrap();
    assert!(String::from_utf8_lossy(&reply).contains("bad_request"));

    assert!(matches!(
        d.ask(OperatorRequest::DeleteVm {
            name: "web-1".into()
        }),
        OperatorReply::Deleted { .. }
    ));
    assert_eq!(
        error_code(&d.ask(OperatorRequest::VmStatus {
            name: "web-1".into()
        })),
        "unknown_vm"
    );
    assert_eq!(
        error_code(&d.ask(OperatorRequest::DeleteVm {
            name: "web-1".into()
        })),
        "unknown_vm"
    );
    wait_until("the vTPM is gone", || !vtpm_answers(&vm.vtpm_socket));
    assert!(!state.join("vms/web-1").exists(), "its state is deleted");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restarted_manager_adopts_the_running_vtpm_and_refuses_a_rolled_back_store() {
    let dir = temp("restart");
    let key = tenant_key(&dir);
    let d = start(&dir);
    d.ask(OperatorRequest::RegisterTenant {
        name: "acme".into(),
        ssh_key: key,
    });
    let store = dir.join("state/welesd.sealed");
    let old = std::fs::read(&store).unwrap();
    let OperatorReply::Vm(vm) = d.ask(OperatorRequest::CreateVm {
        tenant: "acme".into(),
        name: "db".into(),
    }) else {
        panic!()
    };
    wait_until("vTPM up", || {
        d.vm("db").vtpm_pid.is_some() && vtpm_answers(&vm.vtpm_socket)
    });
    let pid = d.vm("db").vtpm_pid;
    d.kill(); // SIGKILL: no goodbye

    // The VM's vTPM kept serving; the new manager adopts it instead of starting another.
    assert!(vtpm_answers(&vm.vtpm_socket));
    let d = start(&dir);
    // Supervision runs on its own thread: the adoption shows a moment after the start.
    wait_until("vTPM adopted", || d.vm("db").vtpm_pid.is_some());
    let again = d.vm("db");
    assert_eq!((again.vtpm_pid, again.vtpm_restarts), (pid, 0));
    d.kill();

    // The host's administrator restores the store from before the VM existed.
    let newer = std::fs::read(&store).unwrap();
    std::fs::write(&store, &old).unwrap();
    let out = welesd(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("welesd.sealed"), "{err}");
    assert!(err.contains("rolled") || err.contains("older"), "{err}");
    // Nothing was lost: the real store still opens.
    std::fs::write(&store, &newer).unwrap();

    // The audit log cut back to its first record is refused too.
    let audit = dir.join("state/audit.log");
    let full = std::fs::read_to_string(&audit).unwrap();
    let first = full.lines().next().unwrap();
    std::fs::write(&audit, format!("{first}\n")).unwrap();
    let out = welesd(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.log") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&audit, &full).unwrap();
    let d = start(&dir);
    assert_eq!(d.vm("db").tenant, "acme");
    d.ask(OperatorRequest::DeleteVm { name: "db".into() });
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
