//! The tenant's whole path through a real welesd, with the real `weles` CLI: trust the manager
//! (sim evidence refused without --allow-simulated), push a signed policy, watch the VM become
//! compliant while this test plays its kernel on the vTPM welesd runs, see the violation, and
//! get clear refusals — wrong tenant, bad signature, older version, replayed request, unknown VM
//! — that change nothing. Then SIGKILL welesd: the restarted manager recovers the VM's state.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weles_proto::operator::{OperatorReply, OperatorRequest, call};

mod support;
use support::{Kill, bin, real_log, split, unlisted_entry};

struct Env {
    dir: PathBuf,
}

impl Drop for Env {
    /// Tests drop their welesd first (declared after the Env), so no supervisor restarts these.
    fn drop(&mut self) {
        support::stop_vtpms(&self.dir.join("run"));
    }
}

impl Env {
    fn weles(&self, home: &str, args: &[&str]) -> Output {
        Command::new(bin("weles"))
            .args(args)
            .env("WELES_HOME", self.dir.join(format!("home-{home}")))
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    fn ok(&self, home: &str, args: &[&str]) -> String {
        let o = self.weles(home, args);
        assert!(
            o.status.success(),
            "weles {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `weles` expecting failure with `code`; returns stderr.
    fn refused(&self, home: &str, args: &[&str], exit: i32) -> String {
        let o = self.weles(home, args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(exit), "weles {args:?}: {err}");
        err
    }

    fn sh(&self, cmd: &str) {
        let o = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn start_welesd(&self) -> Kill {
        let child = Command::new(env!("CARGO_BIN_EXE_welesd"))
            .arg("--config")
            .arg(self.dir.join("welesd.toml"))
            .stderr(support::child_stderr())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(OperatorReply::Health(h)) = call(&self.socket(), &OperatorRequest::Health)
                && h.tenant_api.is_some()
            {
                break;
            }
            assert!(Instant::now() < deadline, "welesd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Kill(child)
    }

    /// Makes an SSH key for `tenant` (files TENANT, TENANT.pub) and registers the tenant.
    fn register(&self, tenant: &str) {
        self.sh(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C {tenant} -f {tenant}"
        ));
        let key = std::fs::read_to_string(self.dir.join(format!("{tenant}.pub"))).unwrap();
        assert!(matches!(
            self.operator(OperatorRequest::RegisterTenant {
                name: tenant.into(),
                ssh_key: key
            }),
            OperatorReply::Tenant(_)
        ));
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/operator.sock")
    }

    fn api_url(&self) -> String {
        match call(&self.socket(), &OperatorRequest::Health).unwrap() {
            OperatorReply::Health(h) => format!("https://{}", h.tenant_api.unwrap()),
            other => panic!("{other:?}"),
        }
    }

    fn operator(&self, req: OperatorRequest) -> OperatorReply {
        call(&self.socket(), &req).unwrap()
    }

    fn vm_run(&self, f: &str) -> PathBuf {
        self.vm_path("web-1", f)
    }

    fn vm_path(&self, vm: &str, f: &str) -> PathBuf {
        self.dir.join("run/vms").join(vm).join(f)
    }

    /// `weles vm status web-1 --json` as acme.
    fn status(&self) -> serde_json::Value {
        self.status_of("web-1")
    }

    fn status_of(&self, vm: &str) -> serde_json::Value {
        let o = self.weles("acme", &["vm", "status", vm, "--json"]);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("status: {}", String::from_utf8_lossy(&o.stderr)))
    }

    fn wait_state(&self, state: &str, entries: u64) -> serde_json::Value {
        self.wait_vm("web-1", |s| s["state"] == state && s["entries"] == entries)
    }

    fn wait_vm(&self, vm: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.status_of(vm);
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "VM {vm} never got there: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates a VM for acme and pushes the signed policy v4.toml to it.
    fn vm_with_policy(&self, vm: &str) {
        assert!(matches!(
            self.operator(OperatorRequest::CreateVm {
                tenant: "acme".into(),
                name: vm.into()
            }),
            OperatorReply::Vm(_)
        ));
        self.ok("acme", &["policy", "push", "v4.toml", "--vm", vm]);
    }

    /// Powers the VM on (its vTPM) and starts its agent on an empty log. The agent gets no TPM
    /// (its host key requests fail) unless `with_tpm`: the vTPM's data socket, which it can use
    /// once the test lets go of it.
    fn boot(&self, vm: &str, boot_id: &str) -> Running {
        self.boot_with(vm, boot_id, false)
    }

    fn boot_with(&self, vm: &str, boot_id: &str, with_tpm: bool) -> Running {
        self.boot_agent(vm, boot_id, with_tpm, None)
    }

    /// As `boot_with`, the agent also serving sshd's `HostKeyAgent` at `agent`.
    fn boot_agent(&self, vm: &str, boot_id: &str, with_tpm: bool, agent: Option<&Path>) -> Running {
        // A VM just created: its vTPM may still be starting.
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(self.vm_path(vm, "data.sock")).is_err() {
            assert!(Instant::now() < deadline, "the vTPM of {vm} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let data = support::power_on(
            &self.vm_path(vm, "vtpm.sock"),
            &self.vm_path(vm, "data.sock"),
        );
        let log = self.dir.join(format!("{vm}.log"));
        std::fs::write(&log, b"").unwrap();
        let id = self.dir.join(format!("{vm}.boot_id"));
        std::fs::write(&id, boot_id).unwrap();
        let guest = Kill(
            Command::new(bin("weles-guest"))
                .arg("--channel")
                .arg(self.vm_path(vm, "guest.sock"))
                .arg("--ima-log")
                .arg(&log)
                .arg("--tpm")
                .arg(if with_tpm {
                    self.vm_path(vm, "data.sock")
                } else {
                    self.dir.join("no-tpm")
                })
                .arg("--boot-id-file")
                .arg(&id)
                .args(
                    agent
                        .map(|a| {
                            vec![
                                std::ffi::OsString::from("--agent-socket"),
                                a.into(),
                                "--host-certificate".into(),
                                self.dir.join(format!("{vm}-cert.pub")).into(),
                                "--host-key".into(),
                                self.dir.join(format!("{vm}-key.pub")).into(),
                            ]
                        })
                        .unwrap_or_default(),
                )
                .stderr(support::child_stderr())
                .spawn()
                .unwrap(),
        );
        Running {
            data,
            log,
            _guest: guest,
        }
    }
}

/// A booted VM as this test plays it: its vTPM data channel, its log, its agent.
struct Running {
    data: UnixStream,
    log: PathBuf,
    _guest: Kill,
}

impl Running {
    fn measure(&mut self, e: &weles_ima::Entry<'_>, raw: &[u8], log_it: bool, extend_it: bool) {
        support::measure(&self.log, &mut self.data, e, raw, log_it, extend_it);
    }
}

fn write_policy(dir: &Path, name: &str, version: u64) {
    let text = std::fs::read_to_string(format!(
        "{}/testdata/demo/policy-tolerant.toml",
        support::ROOT
    ))
    .unwrap()
    .replace("version = 4", &format!("version = {version}"));
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn a_tenant_trusts_pushes_watches_and_is_refused_where_it_must_be() {
    let (env, welesd) = manager_env("tenant-flow");
    let dir = env.dir.clone();
    let mut welesd = Some(welesd);
    env.register("acme");
    env.register("bob");
    assert!(matches!(
        env.operator(OperatorRequest::CreateVm {
            tenant: "acme".into(),
            name: "web-1".into()
        }),
        OperatorReply::Vm(_)
    ));
    let url = env.api_url();

    // Trust: sim evidence is refused unless asked for, and nothing is pinned.
    let err = env.refused(
        "acme",
        &[
            "manager", "trust", &url, "--tenant", "acme", "--key", "acme",
        ],
        1,
    );
    assert!(err.contains("--allow-simulated"), "{err}");
    assert!(!dir.join("home-acme/manager.json").exists());
    for t in ["acme", "bob"] {
        env.ok(
            t,
            &[
                "manager",
                "trust",
                &url,
                "--tenant",
                t,
                "--key",
                t,
                "--allow-simulated",
            ],
        );
    }

    // Policies: acme's signed v4 goes in; the refusals change nothing.
    write_policy(&dir, "v4.toml", 4);
    env.ok("acme", &["policy", "sign", "v4.toml", "--key", "acme"]);
    env.ok("acme", &["policy", "push", "v4.toml", "--vm", "web-1"]);
    let err = env.refused("acme", &["policy", "push", "v4.toml", "--vm", "web-1"], 2);
    assert!(err.contains("stale_version"), "{err}");
    write_policy(&dir, "v3.toml", 3);
    env.ok("acme", &["policy", "sign", "v3.toml", "--key", "acme"]);
    assert!(
        env.refused("acme", &["policy", "push", "v3.toml", "--vm", "web-1"], 2)
            .contains("stale_version")
    );
    // A signature that does not cover this text.
    write_policy(&dir, "v5.toml", 5);
    std::fs::copy(dir.join("v4.toml.sig"), dir.join("v5.toml.sig")).unwrap();
    assert!(
        env.refused("acme", &["policy", "push", "v5.toml", "--vm", "web-1"], 2)
            .contains("bad_signature")
    );
    // Bob's own valid signature, on acme's VM.
    env.ok("bob", &["policy", "sign", "v5.toml", "--key", "bob"]);
    let err = env.refused("bob", &["policy", "push", "v5.toml", "--vm", "web-1"], 2);
    assert!(err.contains("unknown_vm"), "{err}");
    assert!(
        env.refused("bob", &["vm", "status", "web-1"], 2)
            .contains("unknown_vm")
    );
    assert!(
        env.refused("acme", &["vm", "status", "nope"], 2)
            .contains("unknown_vm")
    );
    assert_eq!(
        env.status()["policy_version"],
        4,
        "refusals changed nothing"
    );

    // A replayed request is refused; so is a signature reused for another path.
    let trust: weles_client::Trust =
        serde_json::from_str(&std::fs::read_to_string(dir.join("home-acme/manager.json")).unwrap())
            .unwrap();
    let signer = weles_client::Signer::from_trust(&trust).unwrap();
    let pin = {
        let mut p = [0u8; 32];
        hex::decode_to_slice(&trust.tls_spki_sha256, &mut p).unwrap();
        p
    };
    let headers = signer.headers("GET", "/v1/vms/web-1", b"").unwrap();
    let mut c = weles_client::Connection::open(&trust.url, Some(pin)).unwrap();
    assert_eq!(
        c.request_with("GET", "/v1/vms/web-1", b"", headers.clone())
            .unwrap()
            .status,
        200
    );
    let again = c
        .request_with("GET", "/v1/vms/web-1", b"", headers.clone())
        .unwrap();
    assert_eq!(again.status, 401);
    assert!(String::from_utf8_lossy(&again.body).contains("replayed"));
    let other = c
        .request_with(
            "GET",
            "/v1/vms",
            b"",
            signer.headers("GET", "/v1/vms/web-1", b"").unwrap(),
        )
        .unwrap();
    assert_eq!(other.status, 401);
    // A client pinned to another key does not talk to this manager.
    assert!(weles_client::Connection::open(&trust.url, Some([7; 32])).is_err());

    // A webhook receiver that fails its first delivery (the manager must retry).
    let received = start_receiver();
    let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    std::fs::write(dir.join("hook.secret"), secret).unwrap();
    let hook_url = format!("http://{}/hooks/weles", received.addr);
    // An https:// receiver with the CA that issued its certificate is accepted (deliveries over
    // TLS are tested in the webhook module); a CA for an http:// URL, a CA that is no
    // certificate and another scheme are refused.
    let ca = dir.join("receiver-ca.pem");
    std::fs::copy(dir.join("state/ek-ca.crt"), &ca).unwrap();
    std::fs::write(dir.join("not-a-ca.pem"), "hello").unwrap();
    let set = |url: &str, ca: Option<&str>| {
        let mut args = vec!["webhook", "set", url, "--secret-file", "hook.secret"];
        if let Some(c) = ca {
            args.extend(["--ca", c]);
        }
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let args = set(
        "https://hooks.example.com/weles",
        Some(ca.to_str().unwrap()),
    );
    env.ok("acme", &args.iter().map(String::as_str).collect::<Vec<_>>());
    for (url, ca, why) in [
        (
            hook_url.as_str(),
            Some(ca.to_str().unwrap()),
            "a CA is for https://",
        ),
        ("https://x/", Some("not-a-ca.pem"), "the webhook's CA"),
        ("ftp://x:1/", None, "expected http:// or https://"),
    ] {
        let args = set(url, ca);
        let e = env.refused(
            "acme",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            2,
        );
        assert!(e.contains(why), "{url}: {e}");
    }
    env.ok(
        "acme",
        &["webhook", "set", &hook_url, "--secret-file", "hook.secret"],
    );

    // The VM runs: power on, its agent streams the log, this test plays the kernel.
    let mut data = support::power_on(&env.vm_run("vtpm.sock"), &env.vm_run("data.sock"));
    let log = dir.join("guest-log");
    std::fs::write(&log, b"").unwrap();
    std::fs::write(dir.join("boot_id"), "boot-1").unwrap();
    let _guest = Kill(
        Command::new(bin("weles-guest"))
            .arg("--channel")
            .arg(env.vm_run("guest.sock"))
            .arg("--ima-log")
            .arg(&log)
            .arg("--tpm")
            .arg(dir.join("no-tpm"))
            .arg("--boot-id-file")
            .arg(dir.join("boot_id"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for (e, raw) in split(&real_log()) {
        support::measure(&log, &mut data, &e, &raw, true, true);
    }
    let s = env.wait_state("compliant", 9);
    assert_eq!(s["policy_version"], 4);
    assert!(s["ek_certificate"].as_str().is_some_and(|c| c.len() > 100));
    env.ok("acme", &["vm", "status", "web-1"]); // exit 0: compliant

    // Follow the events while the VM runs something unlisted.
    let mut follower = Kill(
        Command::new(bin("weles"))
            .args(["vm", "events", "web-1", "--follow", "--json"])
            .args([
                "--after",
                &s["last_event"].as_u64().unwrap_or(0).to_string(),
            ])
            .env("WELES_HOME", dir.join("home-acme"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let (miner, raw) = split(&unlisted_entry()).remove(0);
    support::measure(&log, &mut data, &miner, &raw, true, true);
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &serde_json::Value| e["to"] == "violated")
    {
        events.push(
            rx.recv_timeout(Duration::from_secs(5))
                .expect("the violation streamed"),
        );
    }
    drop(follower);
    let v = events
        .iter()
        .find(|e| e["kind"] == "violation")
        .expect("a violation event");
    assert_eq!(v["path"], "/usr/local/bin/miner");
    assert_eq!(v["reason"], "not_in_policy");
    assert_eq!(v["index"], 9);
    assert_eq!(v["digest"], format!("sha256:{}", "66".repeat(32)));
    let err = env.refused("acme", &["vm", "status", "web-1"], 1);
    assert!(err.is_empty(), "{err}");
    let page = env.ok("acme", &["vm", "events", "web-1", "--json"]);
    assert!(page.contains("/usr/local/bin/miner"));

    // The webhook got every event once, in order, signed (checked here with openssl), the
    // first after a refused attempt.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received
        .accepted()
        .iter()
        .any(|(_, b, _)| b.contains("\"to\":\"violated\""))
    {
        assert!(
            Instant::now() < deadline,
            "the webhook never got the violation"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let accepted = received.accepted();
    assert!(*received.refused.lock().unwrap() >= 1);
    let seqs: Vec<u64> = accepted.iter().map(|(n, _, _)| *n).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats: {seqs:?}"
    );
    let (_, body, sig) = accepted
        .iter()
        .find(|(_, b, _)| b.contains("miner"))
        .unwrap();
    std::fs::write(dir.join("body.json"), body).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl dgst -sha256 -mac HMAC -macopt hexkey:{secret} -r body.json"
        ))
        .current_dir(&dir)
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(sig, &format!("sha256={expected}"));
    let delivered_before = accepted.len();
    // The receiver has answered; wait until the manager has sealed that answer in its cursor.
    // (A manager killed between the two sends that one event again, under the same
    // X-Weles-Event number: the documented at-least-once window.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let show = env.ok("acme", &["webhook", "show", "--json"]);
        let show: serde_json::Value = serde_json::from_str(&show).unwrap();
        if show["delivered"].as_u64() == seqs.last().copied() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cursor never caught up: {show}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // welesd dies without warning; the vTPM and the agent carry on; the new welesd rebuilds the
    // VM's state from the vTPM's event backlog and the agent's log.
    welesd.take();
    let _welesd = env.start_welesd();
    let s = env.wait_state("violated", 10);
    assert_eq!(s["violation"]["path"], "/usr/local/bin/miner");
    assert_eq!(s["policy_version"], 4);
    assert_eq!(s["last_event"].as_u64(), seqs.last().copied(), "{s}");
    // Nothing was lost and nothing doubled: one violation in the history, as before.
    std::thread::sleep(Duration::from_millis(300));
    let page = env.ok("acme", &["vm", "events", "web-1", "--json"]);
    assert_eq!(page.matches("\"kind\":\"violation\"").count(), 1, "{page}");
    assert_eq!(page.matches("\"to\":\"violated\"").count(), 1, "{page}");

    // The webhook got nothing twice across the restart.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(received.accepted().len(), delivered_before);
    let show = env.ok("acme", &["webhook", "show", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["delivered"], *seqs.last().unwrap());
    assert!(show["pending"].is_null());

    // The audit log checks out offline against the pinned manager key; an edit does not.
    let audit = dir.join("state/audit.log");
    let text = std::fs::read_to_string(&audit).unwrap();
    // The host reads no tenant content: acme's records are sealed with acme's audit key.
    assert!(
        !text.contains("not_in_policy") && !text.contains("miner"),
        "{text}"
    );
    let out = env.ok("acme", &["audit", "verify", audit.to_str().unwrap()]);
    assert!(out.contains("intact"), "{out}");
    // With its key, acme reads (and authenticates) its own records; bob's key opens none.
    env.ok("acme", &["audit", "key", "-o", "acme.audit-key"]);
    env.ok("bob", &["audit", "key", "-o", "bob.audit-key"]);
    let path = audit.to_str().unwrap();
    let out = env.ok(
        "acme",
        &[
            "audit",
            "verify",
            path,
            "--tenant-key",
            "acme.audit-key",
            "--vm",
            "web-1",
        ],
    );
    assert!(
        out.contains("not_in_policy") && out.contains("/usr/local/bin/miner"),
        "{out}"
    );
    let o = env.weles(
        "bob",
        &[
            "audit",
            "verify",
            path,
            "--tenant-key",
            "bob.audit-key",
            "--show",
        ],
    );
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stdout).contains("miner"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("did not open"));
    // A changed byte anywhere in a record breaks it.
    let line3 = text.lines().nth(2).unwrap();
    let pos = line3.find("\"ciphertext\":\"").unwrap_or(10) + 20;
    let mut bad = line3.as_bytes().to_vec();
    bad[pos] = if bad[pos] == b'A' { b'B' } else { b'A' };
    let edited = text.replacen(line3, &String::from_utf8(bad).unwrap(), 1);
    std::fs::write(dir.join("edited.log"), edited).unwrap();
    let o = env.weles("acme", &["audit", "verify", "edited.log"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("BROKEN at line"));
    drop(data);
    let _ = UnixStream::connect(env.vm_run("vtpm.sock"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A webhook receiver on loopback: answers 500 to the first request, 200 after.
struct Receiver {
    addr: std::net::SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<(u64, String, String)>>>,
    refused: std::sync::Arc<std::sync::Mutex<u32>>,
}

impl Receiver {
    fn accepted(&self) -> Vec<(u64, String, String)> {
        self.got.lock().unwrap().clone()
    }
}

fn start_receiver() -> Receiver {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let refused = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let (g, r) = (got.clone(), refused.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let Ok(Some(req)) = weles_proto::http::read_request(&mut reader) else {
                continue;
            };
            assert_eq!(
                (req.method.as_str(), req.path.as_str()),
                ("POST", "/hooks/weles")
            );
            let first = { *r.lock().unwrap() == 0 };
            if first {
                *r.lock().unwrap() += 1;
                let _ = weles_proto::http::write_response(&mut conn, 500, "text/plain", b"not yet");
                continue;
            }
            let seq: u64 = req.header("x-weles-event").unwrap().parse().unwrap();
            let sig = req.header("x-weles-signature").unwrap().to_owned();
            g.lock()
                .unwrap()
                .push((seq, String::from_utf8(req.body.clone()).unwrap(), sig));
            let _ = weles_proto::http::write_response(&mut conn, 200, "text/plain", b"ok");
        }
    });
    Receiver { addr, got, refused }
}

/// A fresh directory and a welesd on it (its tenant API on a fixed port: the trust names it, and
/// it must survive a manager restart; each vTPM's data channel on a socket, for the tests to
/// play the kernel).
fn manager_env(name: &str) -> (Env, Kill) {
    let dir = std::env::temp_dir().join(format!("weles-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let env = Env { dir: dir.clone() };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("welesd.toml"),
        format!(
            "state_dir = \"{0}/state\"\nrun_dir = \"{0}/run\"\ntenant_api = \"127.0.0.1:{port}\"\n[vtpm]\ndata_socket = true\n",
            dir.display()
        ),
    )
    .unwrap();
    let welesd = env.start_welesd();
    (env, welesd)
}

/// welesd with tenant acme registered and trusted, and acme's signed policy v4.toml.
fn setup(name: &str) -> (Env, Kill) {
    let (env, welesd) = manager_env(name);
    let dir = env.dir.clone();
    env.register("acme");
    let url = env.api_url();
    env.ok(
        "acme",
        &[
            "manager",
            "trust",
            &url,
            "--tenant",
            "acme",
            "--key",
            "acme",
            "--allow-simulated",
        ],
    );
    write_policy(&dir, "v4.toml", 4);
    env.ok("acme", &["policy", "sign", "v4.toml", "--key", "acme"]);
    (env, welesd)
}

#[test]
fn through_welesd_a_withheld_log_is_unverifiable_a_forged_one_violated_and_a_reboot_starts_over() {
    let (env, welesd) = setup("lifecycle");
    let real = split(&real_log());
    let (miner, miner_raw) = split(&unlisted_entry()).remove(0);

    // Withheld: the last three entries are measured but never logged.
    env.vm_with_policy("withheld");
    let mut vm = env.boot("withheld", "boot-1");
    for (i, (e, raw)) in real.iter().enumerate() {
        vm.measure(e, raw, i < real.len() - 3, true);
    }
    let s = env.wait_vm("withheld", |s| s["state"] == "unverifiable");
    assert!(s["reason"].as_str().unwrap().contains("grace"), "{s}");
    assert_eq!(
        (s["entries"].as_u64(), s["extends"].as_u64()),
        (Some(6), Some(9))
    );
    assert_eq!(
        env.weles("acme", &["vm", "status", "withheld"])
            .status
            .code(),
        Some(1)
    );

    // Forged: the vTPM measures the miner, the guest logs a listed file in its place.
    env.vm_with_policy("forged");
    let mut vm = env.boot("forged", "boot-1");
    for (e, raw) in &real {
        vm.measure(e, raw, true, true);
    }
    env.wait_vm("forged", |s| s["state"] == "compliant" && s["entries"] == 9);
    vm.measure(&miner, &[], false, true);
    vm.measure(&real[1].0, &real[1].1, true, false);
    let s = env.wait_vm("forged", |s| s["state"] == "violated");
    assert_eq!(s["violation"]["reason"], "pcr_mismatch", "{s}");

    // Reboot: violated, power cycle, rebooted, the new boot complies again.
    env.vm_with_policy("reboot");
    let mut vm = env.boot("reboot", "boot-1");
    for (e, raw) in &real {
        vm.measure(e, raw, true, true);
    }
    vm.measure(&miner, &miner_raw, true, true);
    env.wait_vm("reboot", |s| s["state"] == "violated");
    drop(vm); // the old kernel and its agent are gone
    let mut vm = env.boot("reboot", "boot-2");
    env.wait_vm("reboot", |s| s["state"] != "violated" && s["boots"] == 2);
    for (e, raw) in &real {
        vm.measure(e, raw, true, true);
    }
    let s = env.wait_vm("reboot", |s| s["state"] == "compliant" && s["entries"] == 9);
    assert!(s["violation"].is_null());
    let events = env.ok("acme", &["vm", "events", "reboot", "--json"]);
    assert!(events.contains("\"to\":\"rebooted\""), "{events}");

    // While welesd is down, the VM powers off and its vTPM ends; the new welesd starts a new
    // vTPM, whose events start again from 1 — the monitor, resumed from a checkpoint of the old
    // process, must not skip them.
    drop(vm);
    let pid = match env.operator(OperatorRequest::VmStatus {
        name: "reboot".into(),
    }) {
        OperatorReply::Vm(v) => v.vtpm_pid.unwrap(),
        other => panic!("{other:?}"),
    };
    drop(welesd);
    env.sh(&format!("kill -9 {pid}"));
    let _welesd = env.start_welesd();
    let mut vm = env.boot("reboot", "boot-3");
    for (e, raw) in &real {
        vm.measure(e, raw, true, true);
    }
    let s = env.wait_vm("reboot", |s| s["state"] == "compliant" && s["entries"] == 9);
    assert_eq!(s["boots"], 3, "{s}");
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn the_host_key_is_made_in_the_vtpm_read_back_checked_and_shown_or_refused() {
    let (env, _welesd) = setup("hostkey");
    env.vm_with_policy("hk");
    let mut vm = env.boot_with("hk", "boot-1", true);
    for (e, raw) in &split(&real_log()) {
        vm.measure(e, raw, true, true);
    }
    // The agent makes the key once the test lets go of the vTPM's data channel.
    let Running {
        data, log, _guest, ..
    } = vm;
    drop(data);
    let s = env.wait_vm("hk", |s| s["host_key"].is_string());
    let key = s["host_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ecdsa-sha2-nistp256 "), "{key}");
    assert_eq!(s["state"], "compliant");

    // tpm2-tools, reading the persistent handle from the vTPM itself, see the same key with
    // the attributes the manager demands (their swtpm TCTI wants the control socket at
    // DATA.ctrl).
    std::os::unix::fs::symlink(
        env.vm_path("hk", "vtpm.sock"),
        env.vm_path("hk", "data.sock.ctrl"),
    )
    .unwrap();
    let tpm = |args: &[&str]| {
        let o = Command::new(args[0])
            .args(&args[1..])
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:path={}", env.vm_path("hk", "data.sock").display()),
            )
            .current_dir(&env.dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = tpm(&[
        "tpm2_readpublic",
        "-c",
        "0x81000100",
        "-f",
        "pem",
        "-o",
        "hk.pem",
    ]);
    for a in [
        "fixedtpm",
        "fixedparent",
        "sensitivedataorigin",
        "adminwithpolicy",
        "sign",
    ] {
        assert!(text.contains(a), "{a}: {text}");
    }
    assert!(!text.contains("userwithauth"), "{text}");
    env.sh("ssh-keygen -i -m PKCS8 -f hk.pem > hk.ssh");
    let from_tpm = std::fs::read_to_string(env.dir.join("hk.ssh")).unwrap();
    let blob = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(blob(&from_tpm), blob(&key));

    // A guest (the agent replaced by this test) reporting a key the manager did not ask for —
    // one a password can use — or no key at all is refused, and the VM shows no host key.
    tpm(&["tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", "p.ctx"]);
    tpm(&[
        "tpm2_create",
        "-C",
        "p.ctx",
        "-G",
        "ecc256:ecdsa-sha256",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|sign|adminwithpolicy|userwithauth",
        "-u",
        "pw.pub",
        "-r",
        "pw.priv",
    ]);
    tpm(&["tpm2_flushcontext", "-t"]);
    tpm(&[
        "tpm2_load",
        "-C",
        "p.ctx",
        "-u",
        "pw.pub",
        "-r",
        "pw.priv",
        "-c",
        "pw.ctx",
    ]);
    tpm(&["tpm2_evictcontrol", "-C", "o", "-c", "pw.ctx", "0x81000200"]);
    tpm(&["tpm2_flushcontext", "-t"]);
    drop(_guest);
    let mut fake = UnixStream::connect(env.vm_path("hk", "guest.sock")).unwrap();
    fake.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let hello = weles_proto::guest::Hello {
        version: 1,
        boot_id: "boot-1".into(),
        agent: "a test".into(),
    };
    weles_proto::guest::write_guest(&mut fake, &weles_proto::guest::GuestMessage::Hello(hello))
        .unwrap();
    let setup = std::cell::RefCell::new(None::<weles_proto::guest::SigningSetup>);
    let verdict = |fake: &mut UnixStream, handle: Option<u32>| {
        let report = weles_proto::guest::HostKeyReport {
            handle,
            error: None,
        };
        weles_proto::guest::write_guest(fake, &weles_proto::guest::GuestMessage::HostKey(report))
            .unwrap();
        loop {
            match weles_proto::guest::read_manager(fake).unwrap().unwrap() {
                weles_proto::guest::ManagerMessage::HostKeyResult(r) => return r,
                weles_proto::guest::ManagerMessage::SigningSetup(s) => {
                    *setup.borrow_mut() = Some(s);
                }
                _ => continue, // WANT, HOST_CERTIFICATE
            }
        }
    };
    let r = verdict(&mut fake, Some(0x8100_0200));
    assert!(
        !r.accepted && r.reason.contains("forbidden attributes"),
        "{r:?}"
    );
    assert!(env.status_of("hk")["host_key"].is_null());
    let r = verdict(&mut fake, Some(0x8100_0300));
    assert!(!r.accepted && r.reason.contains("no key"), "{r:?}");
    let r = verdict(&mut fake, None);
    assert!(!r.accepted, "{r:?}");
    // The real one is accepted again.
    let r = verdict(&mut fake, Some(0x8100_0100));
    assert!(r.accepted, "{r:?}");
    assert_eq!(
        env.status_of("hk")["host_key"].as_str().map(blob),
        Some(blob(&key))
    );
    // tpm2-tools see the policy the manager asked for in the key the vTPM holds.
    let policy = setup
        .borrow()
        .as_ref()
        .map(|s| s.policy.clone())
        .expect("a signing setup");
    assert!(
        text.contains(&format!("authorization policy: {policy}")),
        "{policy}: {text}"
    );

    // A request to authorize another key than this VM's accepted one is refused.
    let ask = weles_proto::guest::AuthorizeRequest {
        id: 7,
        handle: 0x8100_0200,
        nonce_tpm: "11".repeat(32),
        digest: "22".repeat(32),
    };
    weles_proto::guest::write_guest(&mut fake, &weles_proto::guest::GuestMessage::Authorize(ask))
        .unwrap();
    let answer = loop {
        if let weles_proto::guest::ManagerMessage::Authorization(a) =
            weles_proto::guest::read_manager(&mut fake)
                .unwrap()
                .unwrap()
        {
            break a;
        }
    };
    assert!(
        !answer.granted && answer.reason.contains("not this VM's host key"),
        "{answer:?}"
    );
    assert_eq!(answer.id, 7);

    // A second valid key (made with the same policy) replaces the first, which is revoked.
    std::fs::write(env.dir.join("policy.bin"), hex::decode(&policy).unwrap()).unwrap();
    tpm(&["tpm2_flushcontext", "-t"]);
    tpm(&["tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", "p2.ctx"]);
    tpm(&[
        "tpm2_create",
        "-C",
        "p2.ctx",
        "-G",
        "ecc256:ecdsa-sha256",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|sign|adminwithpolicy|noda",
        "-L",
        "policy.bin",
        "-u",
        "k2.pub",
        "-r",
        "k2.priv",
    ]);
    tpm(&["tpm2_flushcontext", "-t"]);
    tpm(&[
        "tpm2_load",
        "-C",
        "p2.ctx",
        "-u",
        "k2.pub",
        "-r",
        "k2.priv",
        "-c",
        "k2.ctx",
    ]);
    tpm(&["tpm2_evictcontrol", "-C", "o", "-c", "k2.ctx", "0x81000400"]);
    tpm(&["tpm2_flushcontext", "-t"]);
    let r = verdict(&mut fake, Some(0x8100_0400));
    assert!(r.accepted, "{r:?}");
    let second = env.status_of("hk")["host_key"].as_str().unwrap().to_owned();
    assert_ne!(blob(&second), blob(&key));

    // Deleting the VM revokes its host key too: the tenant's KRL lists both keys, nothing else.
    drop(fake);
    assert!(matches!(
        env.operator(OperatorRequest::DeleteVm { name: "hk".into() }),
        OperatorReply::Deleted { .. }
    ));
    let trust: weles_client::Trust = serde_json::from_str(
        &std::fs::read_to_string(env.dir.join("home-acme/manager.json")).unwrap(),
    )
    .unwrap();
    let signer = weles_client::Signer::from_trust(&trust).unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&trust.tls_spki_sha256, &mut pin).unwrap();
    let mut c = weles_client::Connection::open(&trust.url, Some(pin)).unwrap();
    let krl = c.request("GET", "/v1/krl", b"", Some(&signer)).unwrap();
    assert_eq!(krl.status, 200);
    std::fs::write(env.dir.join("krl"), &krl.body).unwrap();
    std::fs::write(env.dir.join("first.pub"), format!("{key}\n")).unwrap();
    std::fs::write(env.dir.join("second.pub"), format!("{second}\n")).unwrap();
    env.sh("ssh-keygen -q -t ecdsa -b 256 -N '' -f unrelated");
    for (file, revoked) in [
        ("first.pub", true),
        ("second.pub", true),
        ("unrelated.pub", false),
    ] {
        let q = Command::new("ssh-keygen")
            .args(["-Q", "-f", "krl", file])
            .current_dir(&env.dir)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&q.stdout);
        assert_eq!(
            q.status.code(),
            Some(if revoked { 1 } else { 0 }),
            "{file}: {out}"
        );
        assert_eq!(out.contains("REVOKED"), revoked, "{file}: {out}");
    }
    let _ = log;
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// sshd from Debian's openssh-server on a loopback port, with its own configuration: its host
/// key is the VM's, held by weles-guest's agent (`HostKeyAgent`), nothing else.
struct Sshd {
    _child: Kill,
    port: u16,
}

fn start_sshd(env: &Env, host_pub: &Path, host_cert: &Path, agent: &Path) -> Sshd {
    let host = format!(
        "HostKey {}\nHostCertificate {}\nHostKeyAgent {}\n",
        host_pub.display(),
        host_cert.display(),
        agent.display()
    );
    start_sshd_with(env, "sshd_config", &host)
}

/// sshd with the given host key lines, its own config file `name`, on a free port.
fn start_sshd_with(env: &Env, name: &str, host_lines: &str) -> Sshd {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = &env.dir;
    if !d.join("userkey").exists() {
        env.sh(
            "ssh-keygen -q -t ed25519 -N '' -C user -f userkey && cp userkey.pub authorized_keys",
        );
    }
    std::fs::create_dir_all("/run/sshd").unwrap(); // sshd's privilege separation directory
    let cfg = format!(
        "Port {port}\nListenAddress 127.0.0.1\n{host_lines}AuthorizedKeysFile {}/authorized_keys\n\
         PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         UsePAM no\nStrictModes no\nPidFile none\nPermitRootLogin prohibit-password\nMaxStartups 100\n",
        d.display()
    );
    std::fs::write(d.join(name), cfg).unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join(name))
        .stderr(support::child_stderr())
        .spawn()
        .expect("sshd (openssh-server) is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Up when it greets: a bare connect has been seen to succeed before a server had bound.
    let greets = || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut hello = [0u8; 4];
            std::io::Read::read_exact(&mut s, &mut hello).is_ok() && &hello == b"SSH-"
        })
    };
    while !greets() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Sshd {
        _child: Kill(child),
        port,
    }
}

/// A stock ssh client as the tenant runs it: `weles ssh-config`'s block (certificates from the
/// tenant's CA only, frequent re-keying), the VM's host name, sshd's loopback port.
fn ssh(env: &Env, sshd: &Sshd, conf: &Path, command: &[&str]) -> Command {
    ssh_with(env, sshd, conf, &[], command)
}

fn ssh_with(env: &Env, sshd: &Sshd, conf: &Path, options: &[&str], command: &[&str]) -> Command {
    let mut c = Command::new("ssh");
    c.args(options)
        .arg("-F")
        .arg(conf)
        .args([
            "-o",
            "HostName=127.0.0.1",
            "-p",
            &sshd.port.to_string(),
            "-i",
            "userkey",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
        ])
        // The VM is reached through a loopback port here; its certificate names its real host
        // name, under which the tenant's known_hosts trusts the CA.
        .args(["-o", "HostKeyAlias=demo-guest.example.com"])
        .args(["root@demo-guest.example.com"])
        .args(command)
        .current_dir(&env.dir);
    c
}

/// Logs in and runs `echo`; returns (success, stderr).
fn ssh_login(env: &Env, sshd: &Sshd, conf: &Path) -> (bool, String) {
    let o = ssh(env, sshd, conf, &["echo", "weles-login-ok"])
        .output()
        .unwrap();
    let ok = o.status.success() && String::from_utf8_lossy(&o.stdout).contains("weles-login-ok");
    (ok, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn a_stock_ssh_login_succeeds_only_while_the_vm_complies() {
    let (env, _welesd) = setup("ssh");
    env.vm_with_policy("web");
    let agent = env.dir.join("agent.sock");
    let vm = env.boot_agent("web", "boot-1", true, Some(&agent));
    let Running {
        data, log, _guest, ..
    } = vm;
    let mut data = Some(data);
    for (e, raw) in &split(&real_log()) {
        support::measure(&log, data.as_mut().unwrap(), e, raw, true, true);
    }
    // The vTPM serves one data connection at a time: the agent needs it for the host key and
    // for every signature, so the test (playing the kernel) holds it only while measuring.
    drop(data.take());
    let s = env.wait_vm("web", |s| {
        s["host_certificate"].is_string() && s["state"] == "compliant"
    });

    // The certificate the guest got: for the policy's host name, from the tenant's CA, WELES
    // facts in extensions and no critical options.
    let cert = env.dir.join("web-cert.pub");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cert.exists() {
        assert!(
            Instant::now() < deadline,
            "the guest never wrote its certificate"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The agent wrote the accepted host key for sshd's HostKey line: the key the manager shows.
    let key = s["host_key"].as_str().unwrap().to_owned();
    let host_pub = env.dir.join("web-key.pub");
    let written = std::fs::read_to_string(&host_pub).unwrap();
    assert!(written.starts_with(&key), "{written} vs {key}");
    let listing = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.contains("host certificate"), "{listing}");
    assert!(listing.contains("demo-guest.example.com"), "{listing}");
    assert!(
        listing.contains("vm@weles") && listing.contains("manager@weles"),
        "{listing}"
    );
    assert!(listing.contains("Critical Options: (none)"), "{listing}");
    let sshd = start_sshd(&env, &host_pub, &cert, &agent);

    // The tenant's ssh configuration, from the trusted manager only.
    env.ok("acme", &["ssh-config", "web", "--write", "--rekey", "2s"]);
    let conf = env.dir.join("home-acme/ssh/web.conf");
    let (ok, err) = ssh_login(&env, &sshd, &conf);
    assert!(ok, "a compliant VM's login fails: {err}");

    // A client that trusts another CA does not accept the VM's certificate.
    env.sh("ssh-keygen -q -t ed25519 -N '' -f otherca");
    let other = std::fs::read_to_string(env.dir.join("otherca.pub")).unwrap();
    std::fs::write(
        env.dir.join("other_known_hosts"),
        format!("@cert-authority demo-guest.example.com {other}"),
    )
    .unwrap();
    let o = ssh_with(
        &env,
        &sshd,
        &conf,
        &["-o", "UserKnownHostsFile=other_known_hosts"],
        &["true"],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Host key verification failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // A host key not made in the vTPM — an ordinary key file, uncertified — is refused by the
    // tenant's configuration.
    env.sh("ssh-keygen -q -t ecdsa -b 256 -N '' -f filehost");
    let file_sshd = start_sshd_with(
        &env,
        "file_sshd_config",
        &format!("HostKey {}/filehost\n", env.dir.display()),
    );
    let (ok, err) = ssh_login(&env, &file_sshd, &conf);
    assert!(!ok, "a plain file host key is accepted");
    // The client offers only certificate host keys: it does not even negotiate with it.
    assert!(err.contains("no matching host key type"), "{err}");
    drop(file_sshd);

    // An expired certificate is refused by the client even while the VM complies: a VM whose
    // policy gives 3-second certificates, and an sshd that keeps the first one it got.
    let short = std::fs::read_to_string(env.dir.join("v4.toml"))
        .unwrap()
        .replace(
            "certificate_validity = \"24h\"",
            "certificate_validity = \"3s\"",
        );
    assert!(short.contains("\"3s\""));
    std::fs::write(env.dir.join("short.toml"), short).unwrap();
    env.ok("acme", &["policy", "sign", "short.toml", "--key", "acme"]);
    assert!(matches!(
        env.operator(OperatorRequest::CreateVm {
            tenant: "acme".into(),
            name: "short".into()
        }),
        OperatorReply::Vm(_)
    ));
    env.ok("acme", &["policy", "push", "short.toml", "--vm", "short"]);
    let agent2 = env.dir.join("agent2.sock");
    let vm2 = env.boot_agent("short", "boot-1", true, Some(&agent2));
    let Running {
        data: mut data2,
        log: log2,
        _guest: _guest2,
        ..
    } = vm2;
    for (e, raw) in &split(&real_log()) {
        support::measure(&log2, &mut data2, e, raw, true, true);
    }
    drop(data2);
    let s2 = env.wait_vm("short", |s| {
        s["host_certificate"].is_string() && s["state"] == "compliant"
    });
    let short_pub = env.dir.join("short-hostkey.pub");
    std::fs::write(
        &short_pub,
        format!("{}\n", s2["host_key"].as_str().unwrap()),
    )
    .unwrap();
    std::fs::set_permissions(
        &short_pub,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let live = env.dir.join("short-cert.pub");
    while !live.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let frozen = env.dir.join("frozen-cert.pub");
    std::fs::copy(&live, &frozen).unwrap();
    let frozen_sshd = start_sshd_with(
        &env,
        "frozen_sshd_config",
        &format!(
            "HostKey {}\nHostCertificate {}\nHostKeyAgent {}\n",
            short_pub.display(),
            frozen.display(),
            agent2.display()
        ),
    );
    let (ok, err) = ssh_login(&env, &frozen_sshd, &conf);
    assert!(ok, "a fresh short certificate is accepted: {err}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(env.status_of("short")["state"], "compliant");
    let (ok, err) = ssh_login(&env, &frozen_sshd, &conf);
    assert!(!ok, "an expired certificate is accepted");
    assert!(err.contains("expired"), "{err}");
    drop(frozen_sshd);

    // An open session, re-keying every 2 s.
    let mut session = Kill(
        ssh(&env, &sshd, &conf, &["sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        session.0.try_wait().unwrap().is_none(),
        "the session survives re-keys while compliant"
    );

    // The VM runs an unlisted file.
    let mut d = UnixStream::connect(env.vm_path("web", "data.sock")).unwrap();
    let (miner, raw) = split(&unlisted_entry()).remove(0);
    support::measure(&log, &mut d, &miner, &raw, true, true);
    drop(d);
    env.wait_vm("web", |s| s["state"] == "violated");
    // The next login fails (sshd cannot sign the key exchange) ...
    let (ok, err) = ssh_login(&env, &sshd, &conf);
    assert!(!ok, "a violated VM's login succeeds");
    assert!(!err.contains("Host key verification failed"), "{err}");
    // ... and the open session dies at its next re-key.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = session.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the open session outlived the violation"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());

    // The decisions are in the audit log, sealed for the tenant.
    env.ok("acme", &["audit", "key", "-o", "acme.audit-key"]);
    let shown = env.ok(
        "acme",
        &[
            "audit",
            "verify",
            env.dir.join("state/audit.log").to_str().unwrap(),
            "--tenant-key",
            "acme.audit-key",
            "--vm",
            "web",
        ],
    );
    assert!(shown.contains("\"granted\":true"), "{shown}");
    assert!(shown.contains("\"granted\":false"), "{shown}");
    assert!(shown.contains("host_certificate"), "{shown}");
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// The SSH login benchmark (not a test: `bash bench/ssh_login.sh` runs it in release mode and
/// records the numbers in docs/performance.md). Side by side in one run, interleaved: sshd with a
/// plain host key file, and sshd whose host key is the VM's in the vTPM, each signature
/// authorized by welesd; then 20 concurrent WELES logins.
#[test]
#[ignore = "a benchmark: bash bench/ssh_login.sh"]
fn bench_ssh_login_plain_vs_weles() {
    let n: usize = std::env::var("WELES_BENCH_LOGINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (env, _welesd) = setup("sshbench");
    env.vm_with_policy("web");
    let agent = env.dir.join("agent.sock");
    let vm = env.boot_agent("web", "boot-1", true, Some(&agent));
    let Running {
        data, log, _guest, ..
    } = vm;
    let mut data = data;
    for (e, raw) in &split(&real_log()) {
        support::measure(&log, &mut data, e, raw, true, true);
    }
    drop(data);
    let s = env.wait_vm("web", |s| {
        s["host_certificate"].is_string() && s["state"] == "compliant"
    });
    let host_pub = env.dir.join("hostkey.pub");
    std::fs::write(&host_pub, format!("{}\n", s["host_key"].as_str().unwrap())).unwrap();
    std::fs::set_permissions(
        &host_pub,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cert = env.dir.join("web-cert.pub");
    while !cert.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let weles = start_sshd(&env, &host_pub, &cert, &agent);
    env.sh("ssh-keygen -q -t ecdsa -b 256 -N '' -f plainhost");
    let plain = start_sshd_with(
        &env,
        "plain_sshd_config",
        &format!("HostKey {}/plainhost\n", env.dir.display()),
    );
    let plain_pub = std::fs::read_to_string(env.dir.join("plainhost.pub")).unwrap();
    std::fs::write(
        env.dir.join("plain_known_hosts"),
        format!("plainhost {plain_pub}"),
    )
    .unwrap();
    let plain_opts = [
        "-o",
        "HostKeyAlias=plainhost",
        "-o",
        "UserKnownHostsFile=plain_known_hosts",
        "-o",
        "HostKeyAlgorithms=ecdsa-sha2-nistp256",
    ];
    env.ok("acme", &["ssh-config", "web", "--write"]);
    let conf = env.dir.join("home-acme/ssh/web.conf");
    let login = |sshd: &Sshd, opts: &[&str]| {
        let t = Instant::now();
        let o = ssh_with(&env, sshd, &conf, opts, &["true"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        t.elapsed().as_secs_f64() * 1e3
    };
    for _ in 0..5 {
        login(&plain, &plain_opts);
        login(&weles, &[]);
    }
    let (mut p, mut w) = (Vec::new(), Vec::new());
    for i in 0..n {
        if i % 2 == 0 {
            p.push(login(&plain, &plain_opts));
            w.push(login(&weles, &[]));
        } else {
            w.push(login(&weles, &[]));
            p.push(login(&plain, &plain_opts));
        }
    }
    p.sort_by(f64::total_cmp);
    w.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    // 20 logins at once.
    let t = Instant::now();
    let concurrent: usize = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    ssh_with(&env, &weles, &conf, &[], &["true"])
                        .output()
                        .is_ok_and(|o| o.status.success())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(false))
            .filter(|ok| *ok)
            .count()
    });
    let concurrent_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        serde_json::json!({
            "bench": "ssh_login",
            "logins_each": n,
            "plain_ms_p50": (pct(&p, 0.5) * 10.0).round() / 10.0,
            "plain_ms_p99": (pct(&p, 0.99) * 10.0).round() / 10.0,
            "weles_ms_p50": (pct(&w, 0.5) * 10.0).round() / 10.0,
            "weles_ms_p99": (pct(&w, 0.99) * 10.0).round() / 10.0,
            "overhead_ms_p50": ((pct(&w, 0.5) - pct(&p, 0.5)) * 10.0).round() / 10.0,
            "overhead_ms_p99": ((pct(&w, 0.99) - pct(&p, 0.99)) * 10.0).round() / 10.0,
            "ratio_p50": ((pct(&w, 0.5) / pct(&p, 0.5)) * 100.0).round() / 100.0,
            "concurrent_logins": 20,
            "concurrent_ok": concurrent,
            "concurrent_total_ms": concurrent_ms.round(),
        })
    );
    assert_eq!(concurrent, 20, "every concurrent login succeeds");
    let _ = std::fs::remove_dir_all(&env.dir);
}
