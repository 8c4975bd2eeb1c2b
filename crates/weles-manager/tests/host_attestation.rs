//! Host attestation with real parts: swtpm plays the host TPM (EK certificates from
//! `swtpm_setup` and its local CA), the test plays the host kernel (a real captured IMA log,
//! each entry extended into the TPM's PCR 10), a real welesd attests its host, and the tenant
//! verifies it with the real `weles manager trust --host-ca` — and, for evidence a lying manager
//! might send, with the same verifier the CLI uses.

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Kill, bin, pcr_extend, real_log, split};
use weles_client::host_verify::{self, HostTrust};
use weles_ima::Bank;
use weles_proto::api::{self, Evidence, EvidenceRequest, HostKeys};
use weles_proto::operator::{OperatorReply, OperatorRequest, call};

fn free_port() -> u16 {
    // swtpm needs two consecutive ports (data, control): find a pair that is free now.
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// A manufactured swtpm with EK certificates from a local CA in `dir/ca`, serving raw TPM
/// commands on 127.0.0.1:port (control on port + 1).
struct HostTpm {
    _swtpm: Kill,
    port: u16,
    ca: PathBuf,
}

fn host_tpm(dir: &Path) -> HostTpm {
    host_tpm_with_banks(dir, "sha256")
}

fn host_tpm_with_banks(dir: &Path, banks: &str) -> HostTpm {
    std::fs::create_dir_all(dir.join("tpm")).unwrap();
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    let ca = dir.join("ca");
    std::fs::write(
        dir.join("localca.conf"),
        format!(
            "statedir = {c}\nsigningkey = {c}/signkey.pem\nissuercert = {c}/issuercert.pem\n\
             certserial = {c}/certserial\n",
            c = ca.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("setup.conf"),
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\n\
             create_certs_tool_options = /etc/swtpm-localca.options\n",
            dir.join("localca.conf").display()
        ),
    )
    .unwrap();
    let out = Command::new("swtpm_setup")
        .args([
            "--tpm2",
            "--create-ek-cert",
            "--pcr-banks",
            banks,
            "--overwrite",
        ])
        .arg("--tpmstate")
        .arg(dir.join("tpm"))
        .arg("--config")
        .arg(dir.join("setup.conf"))
        .output()
        .expect("swtpm_setup (Debian swtpm-tools) is installed");
    assert!(
        out.status.success(),
        "swtpm_setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.join("tpm").display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .stderr(Stdio::null())
        .spawn()
        .expect("swtpm is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Up when its control channel answers CMD_GET_CAPABILITY (bound after the data socket): a
    // bare connect has been seen to succeed before a server had bound anything.
    let answers = || {
        TcpStream::connect(("127.0.0.1", port + 1)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut caps = [0u8; 8];
            s.write_all(&1u32.to_be_bytes()).is_ok() && s.read_exact(&mut caps).is_ok()
        })
    };
    while !answers() {
        assert!(Instant::now() < deadline, "swtpm did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    HostTpm {
        _swtpm: Kill(child),
        port,
        ca,
    }
}

/// Plays the host kernel: writes the first `n` entries of a real IMA log to `log` and extends
/// each into the TPM's PCR 10 (sha256 and sha1 banks; the TPM ignores a bank it does not
/// have), as IMA does.
fn measure_host(tpm: &HostTpm, log: &Path, n: usize) {
    measure_host_range(tpm, log, 0..n, true, true);
}

/// The same for entries `range`, appended; with `log_it`/`extend_it` false, a host that forgets
/// one half.
fn measure_host_range(
    tpm: &HostTpm,
    log: &Path,
    range: std::ops::Range<usize>,
    log_it: bool,
    extend_it: bool,
) {
    let mut data = TcpStream::connect(("127.0.0.1", tpm.port)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    for (e, raw) in split(&real_log())
        .iter()
        .skip(range.start)
        .take(range.len())
    {
        if log_it {
            std::io::Write::write_all(&mut f, raw).unwrap();
        }
        if extend_it {
            pcr_extend(
                &mut data,
                10,
                &[
                    e.template_digest(Bank::Sha256),
                    e.template_digest(Bank::Sha1),
                ],
            );
        }
    }
}

struct Manager {
    welesd: Option<Kill>,
    url: String,
    dir: PathBuf,
}

impl Drop for Manager {
    fn drop(&mut self) {
        // welesd first, so that its supervisor does not start the vTPMs again.
        drop(self.welesd.take());
        support::stop_vtpms(&self.dir.join("run"));
    }
}

fn start_welesd(dir: &Path, tpm: &HostTpm, log: &Path) -> Manager {
    start_welesd_with(dir, tpm, log, "")
}

fn start_welesd_with(dir: &Path, tpm: &HostTpm, log: &Path, host_extra: &str) -> Manager {
    std::fs::write(
        dir.join("welesd.toml"),
        format!(
            "state_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\ntenant_api = \"127.0.0.1:0\"\n\
             [host]\ntpm = \"127.0.0.1:{p}\"\nima_log = \"{l}\"\n\
             event_log = \"{d}/event_log.bin\"\n{host_extra}",
            d = dir.display(),
            p = tpm.port,
            l = log.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin("welesd"))
        .arg("--config")
        .arg(dir.join("welesd.toml"))
        .stderr(support::child_stderr())
        .spawn()
        .unwrap();
    let socket = dir.join("run/operator.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let api = loop {
        if let Ok(OperatorReply::Health(h)) = call(&socket, &OperatorRequest::Health)
            && let Some(a) = h.tenant_api
        {
            break a;
        }
        assert!(Instant::now() < deadline, "welesd did not come up");
        std::thread::sleep(Duration::from_millis(20));
    };
    Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "acme", "-f"])
        .arg(dir.join("acme"))
        .status()
        .unwrap();
    let key = std::fs::read_to_string(dir.join("acme.pub")).unwrap();
    assert!(matches!(
        call(
            &socket,
            &OperatorRequest::RegisterTenant {
                name: "acme".into(),
                ssh_key: key
            }
        ),
        Ok(OperatorReply::Tenant(_))
    ));
    Manager {
        welesd: Some(Kill(child)),
        url: format!("https://{api}"),
        dir: dir.to_path_buf(),
    }
}

fn weles(m: &Manager, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(bin("weles"))
        .args(args)
        .env("WELES_HOME", m.dir.join("home"))
        .current_dir(&m.dir)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn trust(m: &Manager, ca: &Path, policy: &str) -> (bool, String, String) {
    trust_with(m, ca, policy, &[])
}

fn trust_with(m: &Manager, ca: &Path, policy: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "manager",
        "trust",
        &m.url,
        "--tenant",
        "acme",
        "--key",
        "acme",
        "--allow-simulated",
        "--host-ca",
        ca.to_str().unwrap(),
        "--host-policy",
        policy,
    ];
    args.extend_from_slice(extra);
    weles(m, &args)
}

/// The evidence for `nonce`, fetched as the CLI does, with or without a credential.
fn evidence(m: &Manager, nonce: &str, credential: Option<api::Credential>) -> (Evidence, String) {
    let mut conn = weles_client::Connection::open(&m.url, None).unwrap();
    let body = serde_json::to_vec(&EvidenceRequest {
        nonce: nonce.into(),
        credential,
    })
    .unwrap();
    let r = conn.request("POST", "/v1/evidence", &body, None).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    (
        serde_json::from_slice(&r.body).unwrap(),
        hex::encode(conn.seen_spki),
    )
}

fn host_keys(m: &Manager) -> HostKeys {
    let mut conn = weles_client::Connection::open(&m.url, None).unwrap();
    let r = conn.request("GET", "/v1/host", b"", None).unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

/// `weles policy generate --from-log LOG -o OUT` in the manager's directory: a host policy
/// from a known-good host log.
fn generate_host_policy(m: &Manager, log: &Path, out: &str) {
    let (ok, _, err) = weles(
        m,
        &[
            "policy",
            "generate",
            "--from-log",
            log.to_str().unwrap(),
            "-o",
            out,
        ],
    );
    assert!(ok, "{err}");
}

/// The trust the CLI would build from `--host-ca CA --host-policy POLICY`, for the library,
/// with a clock `ahead` seconds from now.
fn host_trust_for(m: &Manager, ca: &Path, policy: &str, ahead: u64) -> HostTrust {
    let text = std::fs::read(m.dir.join(policy)).unwrap();
    HostTrust {
        ek_cas: vec![der_of(ca)],
        ek_intermediates: Vec::new(),
        policy: weles_policy::Policy::load(&text, policy).unwrap(),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + ahead,
    }
}

fn der_of(pem: &Path) -> Vec<u8> {
    use base64ct::Encoding;
    let text = std::fs::read_to_string(pem).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64ct::Base64::decode_vec(&body).unwrap()
}

#[test]
fn the_tenant_verifies_the_host_tpm_itself_and_refuses_every_lie() {
    let dir = std::env::temp_dir().join(format!("weles-host-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tpm = host_tpm(&dir.join("host1"));
    let log = dir.join("host-ima.bin");
    // The first 8 entries of a real guest log (the 9th is an open-writers violation).
    measure_host(&tpm, &log, 8);
    let m = start_welesd(&dir, &tpm, &log);
    let ca = tpm.ca.join("issuercert.pem");

    // The host policy: generated from a known-good host log; PCR 0 must be what this host's
    // firmware (none: swtpm) leaves there.
    generate_host_policy(&m, &log, "host.toml");
    let good = std::fs::read_to_string(dir.join("host.toml")).unwrap();
    let zero = "0".repeat(64);
    std::fs::write(
        dir.join("host.toml"),
        format!("{good}\n[host]\npcrs = {{ \"0\" = [\"sha256:{zero}\"] }}\n"),
    )
    .unwrap();

    // The CLI: verified and pinned.
    let (ok, out, err) = trust(&m, &ca, "host.toml");
    assert!(ok, "{out}{err}");
    assert!(out.contains("host attested by its TPM"), "{out}");
    assert!(out.contains("8 IMA entries comply"), "{out}");
    let pinned = std::fs::read_to_string(dir.join("home/manager.json")).unwrap();
    assert!(pinned.contains("ak_sha256"), "{pinned}");

    // A host log with a file the host policy does not list.
    let unlisted: String = good
        .lines()
        .filter(|l| !l.contains("/tmp/s.sh"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("unlisted.toml"), unlisted).unwrap();
    let (ok, _, err) = trust(&m, &ca, "unlisted.toml");
    assert!(!ok);
    assert!(
        err.contains("entry 6") && err.contains("/tmp/s.sh") && err.contains("not_in_policy"),
        "{err}"
    );
    // A measured-boot reference value the host does not meet.
    std::fs::write(
        dir.join("pcr.toml"),
        format!(
            "{good}\n[host]\npcrs = {{ \"0\" = [\"sha256:{}\"] }}\n",
            "1".repeat(64)
        ),
    )
    .unwrap();
    let (ok, _, err) = trust(&m, &ca, "pcr.toml");
    assert!(!ok);
    assert!(err.contains("PCR 0"), "{err}");
    // The maker's root alone: the EK certificate's issuer (the local CA's intermediate) is
    // missing from the path, and the message says how to give it.
    let root = tpm.ca.join("swtpm-localca-rootca-cert.pem");
    let (ok, _, err) = trust(&m, &root, "host.toml");
    assert!(!ok);
    assert!(
        err.contains("does not chain to any configured TPM maker CA")
            && err.contains("--host-ca-intermediate"),
        "{err}"
    );
    // With the intermediate as path material, the root is enough.
    let (ok, out, err) = trust_with(
        &m,
        &root,
        "host.toml",
        &["--host-ca-intermediate", ca.to_str().unwrap()],
    );
    assert!(ok, "{out}{err}");
    // The same trust in one reviewed file (paths relative to it), no flags.
    std::fs::create_dir_all(dir.join("trust")).unwrap();
    std::fs::copy(&root, dir.join("trust/maker-root.pem")).unwrap();
    std::fs::copy(&ca, dir.join("trust/maker-intermediate.pem")).unwrap();
    std::fs::copy(dir.join("host.toml"), dir.join("trust/host.toml")).unwrap();
    std::fs::write(
        dir.join("trust/weles-trust.toml"),
        "allow_simulated = true\n[host]\nca = [\"maker-root.pem\"]\n\
         intermediates = [\"maker-intermediate.pem\"]\npolicy = \"host.toml\"\n",
    )
    .unwrap();
    let (ok, out, err) = weles(
        &m,
        &[
            "manager",
            "trust",
            &m.url,
            "--tenant",
            "acme",
            "--key",
            "acme",
            "--trust-config",
            "trust/weles-trust.toml",
        ],
    );
    assert!(ok && out.contains("host attested by its TPM"), "{out}{err}");
    // An intermediate is not a trust anchor: the intermediate offered with an unrelated root
    // (the EK certificate itself as "root" is not a CA's) does not make a path.
    std::fs::write(
        dir.join("ek.der"),
        hex::decode(&host_keys(&m).ek_certificate).unwrap(),
    )
    .unwrap();
    let (ok, _, err) = trust_with(
        &m,
        &dir.join("ek.der"),
        "host.toml",
        &["--host-ca-intermediate", ca.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(err.contains("does not chain"), "{err}");

    // The library the CLI uses, against evidence a lying manager might send.
    // An injected clock: ten minutes from now, so that the second host TPM's EK certificate,
    // made later in this test, is already valid.
    std::fs::write(dir.join("good.toml"), &good).unwrap();
    let trust_cfg = host_trust_for(&m, &ca, "good.toml", 600);
    let keys = host_keys(&m);
    let nonce = "11".repeat(32);
    let (cred, secret) = host_verify::make_challenge(&keys).unwrap();
    let (ev, seen) = evidence(&m, &nonce, Some(cred.clone()));
    weles_client::verify_evidence(&ev, &nonce, &seen, &Default::default()).unwrap();
    let host = ev.host.clone().unwrap();
    host_verify::verify(&host, &nonce, &ev.manager_key, &secret, &trust_cfg).unwrap();
    // tpm2-tools agree: the quote verifies with the AK and carries our qualifying data.
    let ak = hex::decode(&host.keys.ak_public).unwrap();
    let mut tss = (ak.len() as u16).to_be_bytes().to_vec();
    tss.extend_from_slice(&ak);
    std::fs::write(dir.join("ak.pub"), tss).unwrap();
    std::fs::write(dir.join("quote.msg"), hex::decode(&host.quote).unwrap()).unwrap();
    std::fs::write(dir.join("quote.sig"), hex::decode(&host.signature).unwrap()).unwrap();
    let checkquote = |qualifying: &str| {
        Command::new("tpm2_checkquote")
            .args([
                "-u",
                "ak.pub",
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-g",
                "sha256",
            ])
            .args(["-q", qualifying])
            .current_dir(&dir)
            .output()
            .expect("tpm2-tools is installed")
            .status
            .success()
    };
    assert!(checkquote(&hex::encode(api::host_qualifying_data(
        &nonce,
        &ev.manager_key
    ))));
    assert!(!checkquote(&hex::encode(api::host_qualifying_data(
        &"22".repeat(32),
        &ev.manager_key
    ))));
    let refused = |h: &api::HostEvidence, nonce: &str, secret: &[u8]| {
        host_verify::verify(h, nonce, &ev.manager_key, secret, &trust_cfg)
            .unwrap_err()
            .to_string()
    };
    // Replayed evidence: the quote binds another nonce.
    assert!(refused(&host, &"22".repeat(32), &secret).contains("qualifying data"));
    // An AK that was not activated: no answer, or a wrong one.
    let mut h = host.clone();
    h.activated = None;
    assert!(refused(&h, &nonce, &secret).contains("not activated"));
    assert!(refused(&host, &nonce, &[0u8; 32]).contains("not in the TPM"));
    let (plain, _) = evidence(&m, &nonce, None);
    assert!(plain.host.unwrap().activated.is_none());
    // Reported PCR values that are not the quoted ones.
    let mut h = host.clone();
    h.pcrs[3] = "ab".repeat(32);
    assert!(refused(&h, &nonce, &secret).contains("not the ones quoted"));
    // A log that does not replay to the quoted PCR 10 (an entry dropped).
    let mut h = host.clone();
    let full = std::fs::read(&log).unwrap();
    let shorter = split(&full[..])
        .iter()
        .take(7)
        .flat_map(|(_, raw)| raw.clone())
        .collect::<Vec<u8>>();
    h.ima_log = {
        use base64ct::Encoding;
        base64ct::Base64::encode_string(&shorter)
    };
    assert!(refused(&h, &nonce, &secret).contains("does not replay"));

    // Another host TPM, same maker CA: its quote, its EK, its AK do not fit this evidence.
    let tpm2 = host_tpm_with_ca(&dir.join("host2"), &tpm.ca);
    let log2 = dir.join("host2-ima.bin");
    measure_host(&tpm2, &log2, 8);
    let dir2 = dir.join("m2");
    std::fs::create_dir_all(&dir2).unwrap();
    let m2 = start_welesd(&dir2, &tpm2, &log2);
    let keys2 = host_keys(&m2);
    let (cred2, secret2) = host_verify::make_challenge(&keys2).unwrap();
    let (ev2, _) = evidence(&m2, &nonce, Some(cred2));
    let other = ev2.host.clone().unwrap();
    // That host checks out on its own (same maker CA): what follows is refused for the lies,
    // not for the second TPM.
    host_verify::verify(&other, &nonce, &ev2.manager_key, &secret2, &trust_cfg).unwrap();
    // A quote from another TPM: it does not verify with this host's AK.
    let mut h = host.clone();
    h.quote = other.quote.clone();
    h.signature = other.signature.clone();
    assert!(refused(&h, &nonce, &secret).contains("does not verify"));
    // A certified EK of another TPM presented as this one's: its certificate checks out, but
    // the credential made for it cannot be activated here.
    let mut lying_keys = keys.clone();
    lying_keys.ek_public = keys2.ek_public.clone();
    lying_keys.ek_certificate = keys2.ek_certificate.clone();
    let (cred_other, _) = host_verify::make_challenge(&lying_keys).unwrap();
    let mut conn = weles_client::Connection::open(&m.url, None).unwrap();
    let body = serde_json::to_vec(&EvidenceRequest {
        nonce: nonce.clone(),
        credential: Some(cred_other),
    })
    .unwrap();
    let r = conn.request("POST", "/v1/evidence", &body, None).unwrap();
    assert_ne!(
        r.status, 200,
        "a credential for another TPM's EK was activated"
    );
    // The EK certificate of another TPM with this EK: certifies another key.
    let mut h = host.clone();
    h.keys.ek_certificate = keys2.ek_certificate.clone();
    assert!(refused(&h, &nonce, &secret).contains("certifies another key"));

    // The TEE report binds the AK: evidence whose AK was swapped no longer fits its report data.
    let mut swapped = ev.clone();
    if let Some(h) = swapped.host.as_mut() {
        h.keys.ak_public = keys2.ak_public.clone();
    }
    let err = weles_client::verify_evidence(&swapped, &nonce, &seen, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("report data"), "{err}");
    drop(m2);
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second host TPM whose EK certificate the same local CA signs.
fn host_tpm_with_ca(dir: &Path, ca: &Path) -> HostTpm {
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    for f in std::fs::read_dir(ca).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join("ca").join(f.file_name())).unwrap();
    }
    host_tpm(dir)
}

fn health(m: &Manager) -> weles_proto::operator::Health {
    match call(&m.dir.join("run/operator.sock"), &OperatorRequest::Health) {
        Ok(OperatorReply::Health(h)) => h,
        other => panic!("{other:?}"),
    }
}

/// Creates a VM of tenant acme through the operator socket.
fn create_vm(m: &Manager, name: &str) {
    let created = call(
        &m.dir.join("run/operator.sock"),
        &OperatorRequest::CreateVm {
            tenant: "acme".into(),
            name: name.into(),
        },
    );
    assert!(matches!(created, Ok(OperatorReply::Vm(_))), "{created:?}");
}

fn vm_status(m: &Manager, vm: &str) -> weles_proto::operator::VmInfo {
    match call(
        &m.dir.join("run/operator.sock"),
        &OperatorRequest::VmStatus { name: vm.into() },
    ) {
        Ok(OperatorReply::Vm(v)) => *v,
        other => panic!("{other:?}"),
    }
}

fn wait_host(m: &Manager, starts: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = health(m).host.unwrap_or_default();
        if h.starts_with(starts) {
            return h;
        }
        assert!(Instant::now() < deadline, "host state stayed {h:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn welesd_watches_its_host_and_a_host_violation_violates_every_vm() {
    let dir = std::env::temp_dir().join(format!("weles-hostwatch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tpm = host_tpm(&dir.join("host1"));
    let log = dir.join("host-ima.bin");
    // The operator's host policy: the first 7 entries of a known-good host run.
    measure_host(&tpm, &log, 7);
    let out = Command::new(bin("weles"))
        .args(["policy", "generate", "--from-log"])
        .arg(&log)
        .arg("-o")
        .arg(dir.join("host.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = start_welesd_with(
        &dir,
        &tpm,
        &log,
        &format!(
            "policy = \"{}\"\npoll_ms = 100\n",
            dir.join("host.toml").display()
        ),
    );
    let h = wait_host(&m, "watched");
    assert!(h.contains("complies"), "{h}");
    create_vm(&m, "web-1");
    assert_ne!(vm_status(&m, "web-1").state, "violated");

    // The host runs something its policy does not list (entry 7: /etc/weles.conf read by root).
    measure_host_range(&tpm, &log, 7..8, true, true);
    let h = wait_host(&m, "violated");
    assert!(
        h.contains("not_in_policy") && h.contains("/etc/weles.conf"),
        "{h}"
    );
    // Every VM on the host is violated, for its tenant to see; no authorization follows.
    let v = vm_status(&m, "web-1");
    assert_eq!(v.state, "violated", "{v:?}");
    assert!(v.reason.contains("host:/etc/weles.conf"), "{}", v.reason);
    let audit = std::fs::read_to_string(dir.join("state/audit.log")).unwrap();
    assert!(audit.contains("host_violation"), "{audit}");
    // A VM created afterwards starts violated too.
    create_vm(&m, "web-2");
    assert_eq!(vm_status(&m, "web-2").state, "violated");
    drop(m);

    // A host whose log and PCR 10 part ways (an extend with no entry: a hidden measurement).
    let dir2 = dir.join("m2");
    std::fs::create_dir_all(&dir2).unwrap();
    let tpm2 = host_tpm(&dir2.join("host"));
    let log2 = dir2.join("host-ima.bin");
    measure_host(&tpm2, &log2, 7);
    let m2 = start_welesd_with(
        &dir2,
        &tpm2,
        &log2,
        &format!(
            "policy = \"{}\"\npoll_ms = 100\n",
            dir.join("host.toml").display()
        ),
    );
    wait_host(&m2, "watched");
    measure_host_range(&tpm2, &log2, 7..8, false, true);
    let h = wait_host(&m2, "violated");
    assert!(h.contains("pcr_mismatch"), "{h}");
    drop(m2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Plays the firmware: extends every event of a real UEFI event log into the host TPM (sha256
/// and sha1 digests, as the firmware did), so the TPM's PCRs 0–9 are that boot's.
fn boot_host(tpm: &HostTpm, event_log: &[u8]) {
    use weles_ima::{Digest, HashAlgorithm};
    use weles_tpm::event_log::{ALG_SHA1, ALG_SHA256, EV_NO_ACTION, EventLog};
    let log = EventLog::parse(event_log).unwrap();
    let mut data = TcpStream::connect(("127.0.0.1", tpm.port)).unwrap();
    for e in log.events.iter().filter(|e| e.event_type != EV_NO_ACTION) {
        let digest = |alg: u16, h: HashAlgorithm| {
            let (_, d) = e.digests.iter().find(|(a, _)| *a == alg).unwrap();
            Digest::new(h, d).unwrap()
        };
        pcr_extend(
            &mut data,
            e.pcr,
            &[
                digest(ALG_SHA256, HashAlgorithm::Sha256),
                digest(ALG_SHA1, HashAlgorithm::Sha1),
            ],
        );
    }
}

#[test]
fn a_uefi_event_log_replays_to_the_host_quote_in_both_banks_and_meets_reference_values() {
    let dir = std::env::temp_dir().join(format!("weles-host-boot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tpm = host_tpm_with_banks(&dir.join("host1"), "sha256,sha1");
    let uefi = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/host/uefi-event-log.bin"
    ))
    .unwrap();
    boot_host(&tpm, &uefi);
    let log = dir.join("host-ima.bin");
    measure_host(&tpm, &log, 8);
    std::fs::write(dir.join("event_log.bin"), &uefi).unwrap();
    // The operator configures the TPM maker's intermediate, so tenants need only the root.
    let m = start_welesd_with(
        &dir,
        &tpm,
        &log,
        &format!(
            "sha1 = true\nek_chain = \"{}\"\n",
            tpm.ca.join("issuercert.pem").display()
        ),
    );
    let ca = tpm.ca.join("swtpm-localca-rootca-cert.pem");

    // The host policy: IMA entries from a known-good log, PCRs 0–7 from a known-good boot.
    generate_host_policy(&m, &log, "ima.toml");
    let (ok, reference, err) = weles(
        &m,
        &[
            "policy",
            "host-pcrs",
            "--event-log",
            dir.join("event_log.bin").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        reference.contains("\"7\" = [\"sha256:65caf8dd"),
        "{reference}"
    );
    let ima = std::fs::read_to_string(dir.join("ima.toml")).unwrap();
    std::fs::write(
        dir.join("host.toml"),
        format!("{ima}\n{reference}event_log_required = true\n"),
    )
    .unwrap();
    let (ok, out, err) = trust(&m, &ca, "host.toml");
    assert!(ok, "{out}{err}");
    assert!(out.contains("25 boot events replay"), "{out}");
    assert!(out.contains("banks sha256, sha1"), "{out}");
    assert!(
        out.contains("reference PCRs [0, 1, 2, 3, 4, 5, 6, 7]"),
        "{out}"
    );

    // The manager sends a log of another boot (one digest changed): it no longer replays.
    let parsed = weles_tpm::event_log::EventLog::parse(&uefi).unwrap();
    let ev4 = parsed
        .events
        .iter()
        .find(|e| e.pcr == 4 && e.event_type != weles_tpm::event_log::EV_NO_ACTION)
        .unwrap();
    let mut other = uefi.clone();
    other[ev4.offset + 12 + 2 + 20 + 2] ^= 1; // its sha256 digest's first byte
    std::fs::write(dir.join("event_log.bin"), &other).unwrap();
    let (ok, _, err) = trust(&m, &ca, "host.toml");
    assert!(!ok);
    assert!(
        err.contains("does not replay to the quoted sha256 PCR 4")
            && err.contains("EV_EFI_BOOT_SERVICES_APPLICATION"),
        "{err}"
    );
    // No event log at all, which this policy requires.
    std::fs::remove_file(dir.join("event_log.bin")).unwrap();
    let (ok, _, err) = trust(&m, &ca, "host.toml");
    assert!(!ok);
    assert!(err.contains("sent no firmware event log"), "{err}");
    std::fs::write(dir.join("event_log.bin"), &uefi).unwrap();

    // Reference values of another firmware build (PCR 0 differs): refused, and the message
    // shows what the host's firmware measured into that PCR.
    let other_firmware = std::fs::read_to_string(dir.join("host.toml"))
        .unwrap()
        .replace("177e29c417b6b61c", "077e29c417b6b61c");
    std::fs::write(dir.join("other.toml"), other_firmware).unwrap();
    let (ok, _, err) = trust(&m, &ca, "other.toml");
    assert!(!ok);
    assert!(
        err.contains("PCR 0 is sha256:177e29c4")
            && err.contains("the event log measured into PCR 0: #")
            && err.contains("EV_S_CRTM_VERSION"),
        "{err}"
    );

    // The library, against a manager that lies about the sha1 bank.
    let trust_cfg = host_trust_for(&m, &ca, "host.toml", 0);
    let keys = host_keys(&m);
    let nonce = "44".repeat(32);
    let (cred, secret) = host_verify::make_challenge(&keys).unwrap();
    let (ev, _) = evidence(&m, &nonce, Some(cred));
    let host = ev.host.clone().unwrap();
    let verdict = host_verify::verify(&host, &nonce, &ev.manager_key, &secret, &trust_cfg).unwrap();
    assert_eq!(verdict.boot_events, Some(25));
    assert_eq!(verdict.banks, ["sha256", "sha1"]);
    let refused = |h: &api::HostEvidence| {
        host_verify::verify(h, &nonce, &ev.manager_key, &secret, &trust_cfg)
            .unwrap_err()
            .to_string()
    };
    let mut lie = host.clone();
    lie.pcrs_sha1.as_mut().unwrap()[0] = "00".repeat(20);
    assert!(
        refused(&lie).contains("not the ones quoted"),
        "{}",
        refused(&lie)
    );
    let mut lie = host.clone();
    lie.pcrs_sha1 = None;
    assert!(
        refused(&lie).contains("sha1 PCR values do not match"),
        "{}",
        refused(&lie)
    );
    // A log whose sha1 digest of an event was changed (sha256 intact): the sha1 bank catches it.
    let mut sha1_edit = uefi.clone();
    sha1_edit[ev4.offset + 12 + 2] ^= 1;
    let mut lie = host.clone();
    lie.event_log = Some({
        use base64ct::Encoding;
        base64ct::Base64::encode_string(&sha1_edit)
    });
    assert!(
        refused(&lie).contains("does not replay to the quoted sha1 PCR 4"),
        "{}",
        refused(&lie)
    );
    let mut lie = host.clone();
    lie.event_log = Some("!!".into());
    assert!(refused(&lie).contains("event_log is not base64"));
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
}

/// tpm2-tools against the swtpm that plays the host TPM.
fn tpm2(tpm: &HostTpm, dir: &Path, args: &[&str]) -> Vec<u8> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .env("TPM2TOOLS_TCTI", format!("swtpm:port={}", tpm.port))
        .current_dir(dir)
        .output()
        .expect("tpm2-tools is installed");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn a_host_with_an_ecc_ek_is_attested_through_ecdh_credential_activation() {
    let dir = std::env::temp_dir().join(format!("weles-host-ecc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tpm = host_tpm(&dir.join("host1"));
    // The TPM maker's part: an ECC P-256 EK (template L-2, tpm2_createek) at 0x81010002 and its
    // certificate, issued by the same local CA as the RSA EK's, at NV 0x01c0000a.
    tpm2(
        &tpm,
        &dir,
        &[
            "tpm2_createek",
            "-G",
            "ecc",
            "-c",
            "0x81010002",
            "-u",
            "ek.pem",
            "-f",
            "pem",
        ],
    );
    let ca_dir = &tpm.ca;
    let o = Command::new("openssl")
        .args([
            "x509",
            "-new",
            "-force_pubkey",
            "ek.pem",
            "-subj",
            "/CN=weles test ECC EK",
        ])
        .arg("-CA")
        .arg(ca_dir.join("issuercert.pem"))
        .arg("-CAkey")
        .arg(ca_dir.join("signkey.pem"))
        .args(["-days", "30", "-outform", "der", "-out", "ek-ecc.der"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let size = std::fs::metadata(dir.join("ek-ecc.der"))
        .unwrap()
        .len()
        .to_string();
    tpm2(
        &tpm,
        &dir,
        &[
            "tpm2_nvdefine",
            "0x01c0000a",
            "-C",
            "o",
            "-s",
            &size,
            "-a",
            "ownerread|ownerwrite|authread|authwrite",
        ],
    );
    tpm2(
        &tpm,
        &dir,
        &["tpm2_nvwrite", "0x01c0000a", "-C", "o", "-i", "ek-ecc.der"],
    );
    let log = dir.join("host-ima.bin");
    measure_host(&tpm, &log, 8);
    let m = start_welesd_with(
        &dir,
        &tpm,
        &log,
        "ek_handle = 0x81010002\nek_certificate_index = 0x01c0000a\n",
    );
    let ca = tpm.ca.join("issuercert.pem");
    generate_host_policy(&m, &log, "host.toml");

    // The CLI: the credential is sealed to the ECC EK by ECDH; only this TPM could open it.
    let (ok, out, err) = trust(&m, &ca, "host.toml");
    assert!(ok, "{out}{err}");
    assert!(out.contains("EK ECC P-256 (template L-2)"), "{out}");

    // The library, against a manager that lies.
    let trust_cfg = host_trust_for(&m, &ca, "host.toml", 0);
    let keys = host_keys(&m);
    let nonce = "55".repeat(32);
    let (cred, secret) = host_verify::make_challenge(&keys).unwrap();
    let (ev, _) = evidence(&m, &nonce, Some(cred));
    let host = ev.host.clone().unwrap();
    let verdict = host_verify::verify(&host, &nonce, &ev.manager_key, &secret, &trust_cfg).unwrap();
    assert_eq!(verdict.ek_kind, "ECC P-256 (template L-2)");
    // The RSA EK's certificate (same CA, same TPM) offered for the ECC EK: another key.
    let rsa_cert = tpm2(&tpm, &dir, &["tpm2_nvread", "0x01c00002", "-C", "o"]);
    let mut lie = host.clone();
    lie.keys.ek_certificate = hex::encode(&rsa_cert);
    let e = host_verify::verify(&lie, &nonce, &ev.manager_key, &secret, &trust_cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("certifies another key than the host's EK"),
        "{e}"
    );
    // A credential sealed to another P-256 key (a software key's point in the EK's public
    // area): it makes a valid credential, but this TPM cannot open it — no evidence.
    let o = Command::new("sh")
        .args([
            "-c",
            "openssl ecparam -name prime256v1 -genkey -noout | openssl ec -pubout -outform DER",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let point = &o.stdout[o.stdout.len() - 64..];
    let mut public = hex::decode(&keys.ek_public).unwrap();
    let n = public.len();
    public[n - 66..n - 34].copy_from_slice(&point[..32]);
    public[n - 32..].copy_from_slice(&point[32..]);
    let mut other = keys.clone();
    other.ek_public = hex::encode(&public);
    let (cred, _) = host_verify::make_challenge(&other).unwrap();
    let mut conn = weles_client::Connection::open(&m.url, None).unwrap();
    let body = serde_json::to_vec(&EvidenceRequest {
        nonce: nonce.clone(),
        credential: Some(cred),
    })
    .unwrap();
    let r = conn.request("POST", "/v1/evidence", &body, None).unwrap();
    let text = String::from_utf8_lossy(&r.body);
    assert_ne!(r.status, 200, "{text}");
    assert!(text.contains("ActivateCredential"), "{text}");
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
}
