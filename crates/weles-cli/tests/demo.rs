//! `weles demo` end to end: a real welesd, weles-vtpm, QEMU guest (Debian's 6.1 kernel with IMA,
//! sshd, weles-guest) and stock ssh. Needs root, the workspace's binaries (`cargo build
//! --workspace --bins`) and the guest image (`bash scripts/guest-image.sh`): `scripts/test.sh`
//! builds both and runs these with `--ignored`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn image() -> PathBuf {
    let image = root().join(".cache/guest");
    assert!(
        image.join("image.json").exists(),
        "no guest image at {}: run `bash scripts/guest-image.sh` first",
        image.display()
    );
    image
}

fn demo_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weles-demo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn demo(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weles"));
    c.arg("demo")
        .arg("--image")
        .arg(image())
        .arg("--dir")
        .arg(dir)
        .arg("--json")
        .args(extra)
        .stdin(Stdio::null());
    c
}

/// Processes whose command line mentions `dir` (welesd, weles-vtpm and QEMU all name their
/// files under it).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // Not the demo itself (nor a `weles` command it is running).
            let program = cmd.split(' ').next().unwrap_or("");
            if cmd.contains(&needle) && program != env!("CARGO_BIN_EXE_weles") {
                found.push(format!("{name}: {cmd}"));
            }
        }
    }
    found
}

fn wait_gone(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left running: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn steps(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["step"].is_u64())
        .collect()
}

#[test]
#[ignore = "boots a QEMU guest: run by scripts/test.sh after scripts/guest-image.sh"]
fn the_demo_runs_every_step_and_leaves_nothing_running() {
    let dir = demo_dir("full");
    let o = demo(&dir, &[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "weles demo failed: {stderr}\n{stdout}\nguest console:\n{console}"
    );
    let steps = steps(&stdout);
    assert_eq!(steps.len(), 10, "{stdout}");
    assert!(steps.iter().all(|s| s["ok"] == true), "{stdout}");
    // The demo itself checks each outcome (compliant, login, violation on the tampered file,
    // refused login); here: what it left behind tells the same story.
    let audit = std::fs::read_to_string(dir.join("state/audit.log")).unwrap();
    assert!(audit.lines().count() >= 5, "{audit}");
    wait_gone(&dir);
    // The booted guest really measured with IMA into our vTPM and streamed it: the violation
    // names the entry of the tampered file, after the boot's own measurements.
    let policy = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    assert!(policy.contains("\"/usr/sbin/sshd\""), "{policy}");
    assert!(
        policy.contains("\"/usr/local/bin/weles-guest\""),
        "{policy}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots a QEMU guest: run by scripts/test.sh after scripts/guest-image.sh"]
fn ctrl_c_stops_everything_the_demo_started() {
    let dir = demo_dir("interrupt");
    let mut child = demo(&dir, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the VM is up (step 5 done): QEMU, welesd and the vTPM are all running.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("the demo ended before the VM was up")
            .unwrap();
        if line.contains("\"step\":5") {
            break;
        }
    }
    let running = processes_under(&dir);
    assert!(
        running.iter().any(|p| p.contains("qemu-system"))
            && running.iter().any(|p| p.contains("welesd"))
            && running.iter().any(|p| p.contains("weles-vtpm")),
        "{running:#?}"
    );
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    wait_gone(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots a QEMU guest: run by scripts/test.sh after scripts/guest-image.sh"]
fn keep_leaves_the_vm_and_manager_running_as_described() {
    let dir = demo_dir("keep");
    let o = demo(&dir, &["--keep"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let kept: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kept"] == true)
        .expect("--keep --json describes what it left running");
    let weles = env!("CARGO_BIN_EXE_weles");
    let socket = kept["operator_socket"].as_str().unwrap();
    // The manager still answers and still judges the VM (violated: the demo tampered with it).
    let status = Command::new(weles)
        .args(["vm", "status", "web-1", "--json"])
        .env("WELES_HOME", kept["weles_home"].as_str().unwrap())
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["state"], "violated", "{s}");
    // The instructions' stop sequence stops it all.
    let qemu = kept["qemu_pid"].as_u64().unwrap().to_string();
    let welesd = kept["welesd_pid"].as_u64().unwrap().to_string();
    assert!(Command::new("kill").arg(&qemu).status().unwrap().success());
    let del = Command::new(weles)
        .args(["operator", "--socket", socket, "vm", "delete", "web-1"])
        .output()
        .unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert!(
        Command::new("kill")
            .arg(&welesd)
            .status()
            .unwrap()
            .success()
    );
    wait_gone(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}
