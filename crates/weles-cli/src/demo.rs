//! `weles demo`: the whole of WELES on one machine, with real parts.
//!
//! It runs what an operator and a tenant would type — welesd, `weles operator …`,
//! `weles policy …`, `weles manager trust`, QEMU with the vTPM and guest channel welesd hands
//! out, stock `ssh` — printing each command, what happened and how long it took. Every process
//! it starts runs in its own process group, so a Ctrl-C reaches only the demo, which then stops
//! them in order (QEMU, the VM's vTPM through welesd, welesd). `--keep` leaves them running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

use crate::Outcome;

const VM: &str = "web-1";
const TENANT: &str = "demo";
const HOSTNAME: &str = "web-1.demo.weles.test";
const STEPS: usize = 10;

#[derive(Args)]
pub struct DemoArgs {
    /// The guest image made by scripts/guest-image.sh (kernel, initramfs with sshd, weles-guest
    /// and an IMA policy; QEMU 7.2; the demo tenant's SSH key).
    #[arg(long, default_value = ".cache/guest")]
    image: PathBuf,
    /// Working directory for welesd's state, sockets, the tenant's files and logs (default: a
    /// new directory under /tmp). Kept afterwards for reading.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Leave welesd, the vTPM and the VM running at the end, and print how to explore and stop.
    #[arg(long)]
    keep: bool,
    /// How long the VM may take to boot and comply (TCG, no KVM: about 8 s on 2 cores).
    #[arg(long, default_value_t = 180)]
    boot_timeout: u64,
    /// Print one JSON object per step (title, seconds, ok) instead of the narration.
    #[arg(long)]
    json: bool,
}

/// image.json, written by scripts/guest-image.sh.
#[derive(Deserialize)]
struct Image {
    kernel: PathBuf,
    initrd: PathBuf,
    rootfs: PathBuf,
    tenant_key: PathBuf,
    qemu: PathBuf,
    firmware: Vec<PathBuf>,
    append: String,
}

pub fn run(a: DemoArgs) -> anyhow::Result<Outcome> {
    let image_json = a.image.join("image.json");
    let text = std::fs::read_to_string(&image_json).with_context(|| {
        format!(
            "no guest image at {} (build one with `bash scripts/guest-image.sh`, or pass --image)",
            a.image.display()
        )
    })?;
    let image: Image = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a guest image description", image_json.display()))?;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("weles-demo-{}", std::process::id())),
    };
    if dir.join("state").exists() {
        bail!(
            "{} already holds a demo (state/); pass another --dir or remove it",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let dir = dir.canonicalize()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())
            .context("cannot install the Ctrl-C handler")?;
    }
    let mut demo = Demo {
        dir,
        image,
        bin_dir: std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        json: a.json,
        interrupted,
        welesd: None,
        qemu: None,
        vm_created: false,
        step: 0,
        ssh_port: 0,
    };
    let result = demo.play(&a);
    match (&result, a.keep) {
        (Ok(()), true) => {
            demo.explain_kept();
            // Leave the children running: dropping a `Child` does not stop it.
            demo.welesd = None;
            demo.qemu = None;
        }
        _ => demo.stop_all(),
    }
    match result {
        Ok(()) => Ok(Outcome::Success),
        Err(e) => {
            eprintln!(
                "\nThe demo stopped: {e:#}\nLogs: {0}/welesd.log, {0}/console.log (the guest), \
                 {0}/qemu.log",
                demo.dir.display()
            );
            Ok(Outcome::Negative)
        }
    }
}

struct Demo {
    dir: PathBuf,
    image: Image,
    bin_dir: PathBuf,
    json: bool,
    interrupted: Arc<AtomicBool>,
    welesd: Option<Child>,
    qemu: Option<Child>,
    vm_created: bool,
    step: usize,
    ssh_port: u16,
}

impl Demo {
    fn play(&mut self, a: &DemoArgs) -> anyhow::Result<()> {
        if !self.json {
            println!(
                "WELES demo: one manager, one VM (QEMU, TCG), one tenant. Working directory: {}",
                self.dir.display()
            );
        }

        // 1. welesd.
        let t = self.begin("Start the manager, welesd (TEE backend: sim)");
        let tenant_api = self.start_welesd()?;
        self.say(&format!(
            "welesd is up; tenant API at https://{tenant_api}. Its TEE backend is `sim`: a \
             simulation that protects nothing (no SGX/SEV/TDX here). See docs/threat-model.md."
        ));
        self.end(t);

        // 2. Tenant and VM.
        let t = self.begin("The operator registers the tenant and creates the VM");
        let tenant_pub = self.image.tenant_key.with_extension("pub");
        self.weles_ok(&[
            "operator",
            "--socket",
            &self.path("run/operator.sock"),
            "tenant",
            "add",
            TENANT,
            "--ssh-key",
            &tenant_pub.display().to_string(),
        ])?;
        let created = self.weles_ok(&[
            "operator",
            "--socket",
            &self.path("run/operator.sock"),
            "vm",
            "create",
            VM,
            "--tenant",
            TENANT,
            "--json",
        ])?;
        let created: serde_json::Value =
            serde_json::from_str(&created).context("`weles operator vm create --json` output")?;
        let qemu_args: Vec<String> = created["vm"]["qemu_args"]
            .as_array()
            .context("no qemu_args in the VM's description")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        self.vm_created = true;
        self.say("welesd manufactured the VM's vTPM (EK certificate from its EK CA) and runs it.");
        self.end(t);

        // 3. Policy.
        let t = self.begin("The tenant writes the policy from the guest image and signs it");
        self.weles_ok(&[
            "policy",
            "generate",
            "--rootfs",
            &self.image.rootfs.display().to_string(),
            "--all-files",
            "--hostname",
            HOSTNAME,
            "--ignore",
            "^boot_aggregate$",
            "-o",
            &self.path("policy.toml"),
        ])?;
        let files = std::fs::read_to_string(self.dir.join("policy.toml"))
            .map(|p| p.lines().filter(|l| l.starts_with('"')).count())
            .unwrap_or(0);
        self.say(&format!(
            "{files} files of the image are allowed, each with its SHA-256. The VM boots its \
             kernel directly (no measured boot), so boot_aggregate is not checked."
        ));
        self.weles_ok(&[
            "policy",
            "sign",
            &self.path("policy.toml"),
            "--key",
            &self.image.tenant_key.display().to_string(),
        ])?;
        self.end(t);

        // 4. Trust and push.
        let t = self.begin("The tenant trusts the manager and pushes the signed policy");
        let out = self.weles_ok(&[
            "manager",
            "trust",
            &format!("https://{tenant_api}"),
            "--tenant",
            TENANT,
            "--key",
            &self.image.tenant_key.display().to_string(),
            "--allow-simulated",
        ])?;
        self.show(&out);
        let out = self.weles_ok(&["policy", "push", &self.path("policy.toml"), "--vm", VM])?;
        self.show(&out);
        self.end(t);

        // 5. Boot.
        let t = self.begin("Boot the VM: Linux 6.1 with IMA, our vTPM and weles-guest");
        self.boot(&qemu_args)?;
        let s = self.wait_status(Duration::from_secs(a.boot_timeout), |s| {
            s["state"] == "compliant" && s["host_certificate"].is_string()
        })?;
        self.say(&format!(
            "compliant: {} measurements verified against the policy and the vTPM's PCR 10; the \
             host key was made in the vTPM and certified by the tenant's SSH CA.",
            s["entries"]
        ));
        self.end(t);

        // 6. ssh.
        let t = self.begin("Log in with stock ssh (the handshake is the attestation)");
        self.weles_ok(&["ssh-config", VM, "--write", "--rekey", "10s"])?;
        let out = self.ssh_until_up(
            &["/usr/local/bin/weles-hello"],
            Duration::from_secs(a.boot_timeout),
        )?;
        self.show(&out);
        self.end(t);

        // 7. Tamper.
        let t = self.begin("Inside the VM, change a binary and run it");
        let o = self.ssh(&[
            "echo 'echo tampered' >> /usr/local/bin/weles-hello; /usr/local/bin/weles-hello",
        ])?;
        self.show(&String::from_utf8_lossy(&o.stdout));
        self.end(t);

        // 8. Violation.
        let t = self.begin("The manager sees it: the VM is violated");
        let s = self.wait_status(Duration::from_secs(30), |s| s["state"] == "violated")?;
        let v = &s["violation"];
        self.say(&format!(
            "violation: entry {} {} ({}), digest {}",
            v["index"],
            v["path"].as_str().unwrap_or("?"),
            v["reason"].as_str().unwrap_or("?"),
            v["digest"].as_str().unwrap_or("?")
        ));
        if v["path"] != "/usr/local/bin/weles-hello" {
            bail!(
                "the violation names {} instead of the tampered file",
                v["path"]
            );
        }
        let out = self.weles_ok(&["vm", "events", VM])?;
        self.show(&out);
        self.end(t);

        // 9. The next login fails.
        let t = self.begin("The next ssh login fails: the manager no longer authorizes the key");
        let o = self.ssh(&["true"])?;
        if o.status.success() {
            bail!("ssh to the violated VM succeeded");
        }
        self.show(&String::from_utf8_lossy(&o.stderr));
        // Failing is not enough: it must fail because the signature was refused.
        let refused = self.wait_console("agent refused operation", Duration::from_secs(5))?;
        self.say(&format!("the guest's sshd: {}", refused.trim()));
        self.say("sshd could not sign the handshake: the vTPM host key needs the manager's live authorization.");
        self.end(t);

        // 10. Audit.
        let t = self.begin("Verify the manager's audit log offline");
        let out = self.weles_ok(&["audit", "verify", &self.path("state/audit.log")])?;
        self.show(&out);
        self.end(t);
        Ok(())
    }

    // --- the parts -------------------------------------------------------------------------

    fn start_welesd(&mut self) -> anyhow::Result<String> {
        let log = std::fs::File::create(self.dir.join("welesd.log"))?;
        let mut c = Command::new(self.bin_dir.join("welesd"));
        c.args(["--state-dir", &self.path("state")])
            .args(["--run-dir", &self.path("run")])
            .args(["--tenant-api", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.cmd_line(&c);
        self.welesd = Some(spawn_alone(c).context("cannot start welesd (build it: cargo build)")?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.check_interrupted()?;
            if let Some(status) = self
                .welesd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "welesd exited ({status}); see {}/welesd.log",
                    self.dir.display()
                );
            }
            let o = self.weles(&[
                "operator",
                "--socket",
                &self.path("run/operator.sock"),
                "health",
                "--json",
            ])?;
            if o.status.success()
                && let Ok(h) = serde_json::from_slice::<serde_json::Value>(&o.stdout)
                && let Some(api) = h["health"]["tenant_api"].as_str()
            {
                return Ok(api.to_owned());
            }
            if Instant::now() > deadline {
                bail!("welesd did not come up within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn boot(&mut self, qemu_args: &[String]) -> anyhow::Result<()> {
        self.ssh_port = free_port()?;
        let mut c = Command::new(&self.image.qemu);
        for f in &self.image.firmware {
            c.arg("-L").arg(f);
        }
        c.args(["-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1"])
            .args(["-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", self.path("console.log")))
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.path("qemu-monitor.sock")
            ))
            .arg("-kernel")
            .arg(&self.image.kernel)
            .arg("-initrd")
            .arg(&self.image.initrd)
            .args(["-append", &self.image.append])
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:22",
                self.ssh_port
            ))
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
            .args(qemu_args)
            .stdin(Stdio::null());
        let log = std::fs::File::create(self.dir.join("qemu.log"))?;
        c.stdout(log.try_clone()?).stderr(log);
        self.cmd_line(&c);
        self.qemu = Some(spawn_alone(c).context("cannot start QEMU")?);
        self.say(&format!(
            "guest console: {}; sshd forwarded to 127.0.0.1:{}",
            self.path("console.log"),
            self.ssh_port
        ));
        Ok(())
    }

    /// Polls `weles vm status` until `done` holds, printing state changes.
    fn wait_status(
        &mut self,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        loop {
            self.check_interrupted()?;
            self.check_qemu()?;
            let o = self.weles(&["vm", "status", VM, "--json"])?;
            let s: serde_json::Value = serde_json::from_slice(&o.stdout).with_context(|| {
                format!(
                    "weles vm status: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            })?;
            let state = format!(
                "{} {}",
                s["state"].as_str().unwrap_or("?"),
                s["reason"].as_str().unwrap_or("")
            );
            if state != last {
                self.say(&format!(
                    "state: {} (entries verified: {})",
                    state.trim(),
                    s["entries"]
                ));
                last = state;
            }
            if done(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "gave up after {} s in state {}",
                    limit.as_secs(),
                    last.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ssh_command(&self, command: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(self.dir.join(format!("home/ssh/{VM}.conf")))
            .args(["-o", "HostName=127.0.0.1", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=20", "-o", "IdentitiesOnly=yes"])
            // The VM is reached through a loopback port; its certificate names its host name,
            // under which the tenant's known_hosts trusts the CA.
            .args(["-o", &format!("HostKeyAlias={HOSTNAME}")])
            .args(["-p", &self.ssh_port.to_string()])
            .arg("-i")
            .arg(&self.image.tenant_key)
            .arg(format!("root@{HOSTNAME}"))
            .args(command)
            .stdin(Stdio::null())
            .env("WELES_HOME", self.dir.join("home"));
        c
    }

    fn ssh(&self, command: &[&str]) -> anyhow::Result<Output> {
        self.check_interrupted()?;
        let mut c = self.ssh_command(command);
        self.cmd_line(&c);
        c.output().context("cannot run ssh (openssh-client)")
    }

    /// sshd starts a moment after the certificate arrives: retry a refused connection.
    fn ssh_until_up(&mut self, command: &[&str], limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        let mut c = self.ssh_command(command);
        self.cmd_line(&c);
        loop {
            self.check_interrupted()?;
            let o = c.output().context("cannot run ssh (openssh-client)")?;
            if o.status.success() {
                return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
            }
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            let starting = [
                "Connection refused",
                "Connection reset",
                "Connection closed",
            ]
            .iter()
            .any(|m| err.contains(m));
            if !starting || Instant::now() > deadline {
                bail!("ssh failed: {}", err.trim());
            }
            std::thread::sleep(Duration::from_millis(500));
            c = self.ssh_command(command);
        }
    }

    /// Waits for a line of the guest's console (its sshd logs there) containing `needle`.
    fn wait_console(&self, needle: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let console = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
            if let Some(line) = console.lines().rev().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "ssh failed, but the guest's sshd never reported the refused signature \
                     (\"{needle}\" in {}/console.log)",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // --- stopping --------------------------------------------------------------------------

    fn stop_all(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            let _ = q.wait();
        }
        if self.vm_created && self.welesd.is_some() {
            // Deleting the VM stops its vTPM (which would otherwise outlive welesd).
            let _ = self.weles(&[
                "operator",
                "--socket",
                &self.path("run/operator.sock"),
                "vm",
                "delete",
                VM,
            ]);
        }
        if let Some(mut w) = self.welesd.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // A vTPM welesd could not stop (welesd died first): its pid file says which.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("run/vms/{VM}/vtpm.pid")))
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        if !self.json {
            println!(
                "\nStopped everything the demo started. Its files stay in {}.",
                self.dir.display()
            );
        }
    }

    fn explain_kept(&self) {
        let welesd = self.welesd.as_ref().map(Child::id).unwrap_or(0);
        let qemu = self.qemu.as_ref().map(Child::id).unwrap_or(0);
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "kept": true, "dir": self.dir, "welesd_pid": welesd, "qemu_pid": qemu,
                    "ssh_port": self.ssh_port, "vm": VM, "hostname": HOSTNAME,
                    "operator_socket": self.dir.join("run/operator.sock"),
                    "weles_home": self.dir.join("home"),
                })
            );
            return;
        }
        let d = self.dir.display();
        println!(
            "\nStill running (--keep): welesd (pid {w}), the VM's vTPM, QEMU (pid {q}).\n\
             Explore:\n  \
             export WELES_HOME={d}/home\n  \
             weles vm status {VM}                 # violated until the VM reboots\n  \
             weles vm events {VM} --follow\n  \
             ssh -F {d}/home/ssh/{VM}.conf -o HostName=127.0.0.1 -p {p} -i {k} root@{HOSTNAME}\n  \
             weles operator --socket {d}/run/operator.sock vm list\n\
             Reboot the VM (a fresh initramfs: compliant again) through QEMU's monitor socket\n  \
             {d}/qemu-monitor.sock (`system_reset`).\n\
             Stop it all:\n  \
             kill {q}; weles operator --socket {d}/run/operator.sock vm delete {VM}; kill {w}",
            w = welesd,
            q = qemu,
            p = self.ssh_port,
            k = self.image.tenant_key.display(),
        );
    }

    // --- narration and helpers -------------------------------------------------------------

    fn begin(&mut self, title: &str) -> (Instant, String) {
        self.step += 1;
        if !self.json {
            println!("\n\x1b[1m[{}/{STEPS}] {title}\x1b[0m", self.step);
        }
        (Instant::now(), title.to_owned())
    }

    fn end(&self, (t, title): (Instant, String)) {
        let secs = t.elapsed().as_secs_f64();
        if self.json {
            println!(
                "{}",
                serde_json::json!({"step": self.step, "title": title, "seconds": secs, "ok": true})
            );
        } else {
            println!("      done in {secs:.2} s");
        }
    }

    fn say(&self, text: &str) {
        if !self.json {
            println!("      {text}");
        }
    }

    fn show(&self, output: &str) {
        if !self.json {
            for l in output.lines().filter(|l| !l.trim().is_empty()) {
                println!("      | {l}");
            }
        }
    }

    fn cmd_line(&self, c: &Command) {
        if self.json {
            return;
        }
        let prog = c.get_program().to_string_lossy().into_owned();
        let prog = prog.rsplit('/').next().unwrap_or(&prog).to_owned();
        let args: Vec<String> = c
            .get_args()
            .map(|a| {
                let a = a.to_string_lossy();
                if a.contains(' ') || a.contains('\'') || a.contains(';') {
                    format!("\"{a}\"")
                } else {
                    a.into_owned()
                }
            })
            .collect();
        println!("    $ {prog} {}", args.join(" "));
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// `weles ARGS` as the demo's tenant and operator (WELES_HOME in the demo directory).
    fn weles_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin_dir.join("weles"));
        c.args(args)
            .env("WELES_HOME", self.dir.join("home"))
            .stdin(Stdio::null());
        c
    }

    fn weles(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.weles_command(args)
            .output()
            .context("cannot run weles")
    }

    /// Runs a `weles` command the way a user would, printing it; fails with its error output.
    fn weles_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.check_interrupted()?;
        let mut c = self.weles_command(args);
        self.cmd_line(&c);
        let o = c.output().context("cannot run weles")?;
        if !o.status.success() {
            bail!(
                "`weles {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn check_interrupted(&self) -> anyhow::Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    fn check_qemu(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.qemu.as_mut().and_then(|q| q.try_wait().ok().flatten()) {
            self.qemu = None;
            bail!(
                "QEMU exited ({status}); see {}/qemu.log and console.log",
                self.dir.display()
            );
        }
        Ok(())
    }
}

/// Starts a child in its own process group: a Ctrl-C at the terminal reaches only the demo,
/// which then stops its children in order.
fn spawn_alone(mut c: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    c.process_group(0).spawn()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
