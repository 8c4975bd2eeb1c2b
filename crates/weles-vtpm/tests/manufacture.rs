//! Manufacturing with a CA made by openssl, checked by openssl and tpm2-tools.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use weles_vtpm::events::{self, Message, Request};

mod support;
use support::{free_ports, listening};

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

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn manufactured_eks_and_certificates_check_out_with_openssl_and_tpm2_tools() {
    let dir = std::env::temp_dir().join(format!("weles-vtpm-mfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    sh(
        &dir,
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null",
    );
    sh(
        &dir,
        "openssl req -x509 -key ca.key -subj '/CN=WELES test vTPM CA' -days 2 -out ca.crt",
    );

    let manufacture = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weles-vtpm"))
            .args([
                "manufacture",
                "--tpmstate",
                "dir=state",
                "--vtpm-id",
                "vm-42",
                "--ca-key",
                "ca.key",
                "--ca-cert",
                "ca.crt",
            ])
            .args(extra)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    // A CA key that is not the CA certificate's is refused before anything is created.
    sh(
        &dir,
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key 2>/dev/null",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_weles-vtpm"))
        .args(["manufacture", "--tpmstate", "dir=mismatch"])
        .args(["--ca-key", "other.key", "--ca-cert", "ca.crt"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not the CA key's"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!dir.join("mismatch/tpm-state.sealed").exists());

    let o = manufacture(&["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["vtpm_id"], "vm-42");
    assert_eq!(j["pcr_banks"], serde_json::json!(["sha1", "sha256"]));
    let eks = j["eks"].as_array().unwrap();
    assert_eq!(eks.len(), 2);
    assert_eq!(eks[0]["kind"], "rsa");
    assert_eq!(eks[0]["handle"], "0x81010001");
    assert_eq!(eks[0]["certificate_nv"], "0x01c00002");
    assert_eq!(eks[1]["kind"], "ecc");
    assert_eq!(eks[1]["handle"], "0x81010002");
    assert_eq!(eks[1]["certificate_nv"], "0x01c0000a");
    let again = manufacture(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a TPM"));

    for kind in ["rsa", "ecc"] {
        sh(
            &dir,
            &format!("openssl x509 -inform DER -in state/ek-{kind}.der -out ek-{kind}.pem"),
        );
        let v = sh(
            &dir,
            &format!("openssl verify -CAfile ca.crt ek-{kind}.pem"),
        );
        assert!(String::from_utf8_lossy(&v.stdout).contains("OK"));
        let text = sh(
            &dir,
            &format!("openssl x509 -in ek-{kind}.pem -noout -subject -issuer"),
        );
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("vm-42") && text.contains("WELES test vTPM CA"),
            "{text}"
        );
    }

    let (data, ctrl) = free_ports();
    let (ev, _) = free_ports();
    let _vtpm = Running(
        Command::new(env!("CARGO_BIN_EXE_weles-vtpm"))
            .args([
                "socket",
                "--tpm2",
                "--flags",
                "not-need-init,startup-clear",
                "--vtpm-id",
                "vm-42",
                "--tpmstate",
                "dir=state",
            ])
            .arg("--server")
            .arg(format!("type=tcp,port={data}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl}"))
            .arg("--events")
            .arg(format!("type=tcp,port={ev}"))
            .current_dir(&dir)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    // The control channel is bound last: once it answers, so do the others.
    while !listening(ctrl) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let tcti = format!("TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port={data}");

    // The persistent EKs are the certificates' keys, and are exactly the default-template EKs.
    for (kind, handle, alg) in [("rsa", "0x81010001", "rsa"), ("ecc", "0x81010002", "ecc")] {
        sh(
            &dir,
            &format!(
                "{tcti} tpm2_readpublic -c {handle} -f pem -o tpm-{kind}.pem > tpm-{kind}.txt"
            ),
        );
        sh(
            &dir,
            &format!("openssl x509 -in ek-{kind}.pem -pubkey -noout > cert-{kind}.pem"),
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("tpm-{kind}.pem"))).unwrap(),
            std::fs::read_to_string(dir.join(format!("cert-{kind}.pem"))).unwrap(),
            "{kind} EK certificate does not certify the persistent EK"
        );
        sh(
            &dir,
            &format!("{tcti} tpm2_createek -c ek-{kind}.ctx -G {alg} -u ek-{kind}.pub"),
        );
        sh(
            &dir,
            &format!(
                "{tcti} tpm2_readpublic -c ek-{kind}.ctx > re-{kind}.txt; {tcti} tpm2_flushcontext -t; {tcti} tpm2_flushcontext -s"
            ),
        );
        let name = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .lines()
                .find(|l| l.starts_with("name:"))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            name(&format!("tpm-{kind}.txt")),
            name(&format!("re-{kind}.txt")),
            "{kind} EK is not the default-template EK"
        );
    }

    // Certificates are in the standard NV indices.
    sh(
        &dir,
        &format!("{tcti} tpm2_nvread 0x01c00002 -C o -o nv-rsa.der"),
    );
    assert_eq!(
        std::fs::read(dir.join("nv-rsa.der")).unwrap(),
        std::fs::read(dir.join("state/ek-rsa.der")).unwrap()
    );

    // PCR banks: sha1 and sha256 allocated, nothing else.
    let pcrs =
        String::from_utf8_lossy(&sh(&dir, &format!("{tcti} tpm2_getcap pcrs")).stdout).into_owned();
    assert!(
        pcrs.contains("sha1: [ 0, 1, 2") && pcrs.contains("sha256: [ 0, 1, 2"),
        "{pcrs}"
    );
    assert!(
        !pcrs.contains("sha384: [ 0") && !pcrs.contains("sha512: [ 0"),
        "{pcrs}"
    );

    // The certificates state what the TPM reports about itself (TCG EK Credential Profile):
    // manufacturer and firmware version in the subjectAltName, the EK purpose in the EKU.
    let fixed =
        String::from_utf8_lossy(&sh(&dir, &format!("{tcti} tpm2_getcap properties-fixed")).stdout)
            .into_owned();
    let raw = |prop: &str| {
        let after = fixed
            .split(&format!("{prop}:"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {prop} in {fixed}"));
        let line = after.lines().find(|l| l.contains("raw:")).unwrap();
        let hex = line.trim().trim_start_matches("raw: 0x").to_uppercase();
        format!("{hex:0>8}")
    };
    let (manufacturer, firmware) = (
        raw("TPM2_PT_MANUFACTURER"),
        raw("TPM2_PT_FIRMWARE_VERSION_1"),
    );
    for kind in ["rsa", "ecc"] {
        let text = String::from_utf8_lossy(
            &sh(
                &dir,
                &format!("openssl x509 -in ek-{kind}.pem -noout -text"),
            )
            .stdout,
        )
        .into_owned();
        assert!(
            text.contains(&format!(
                "DirName:/2.23.133.2.1=id:{manufacturer}/2.23.133.2.2="
            )) && text.contains(&format!("/2.23.133.2.3=id:{firmware}")),
            "{kind}: {text}"
        );
        assert!(text.contains("Subject Directory Attributes"), "{text}");
        assert!(
            text.contains("X509v3 Extended Key Usage: \n                2.23.133.8.1"),
            "{text}"
        );
    }

    // The manager reads the EK certificate through the event socket.
    let mut s = TcpStream::connect(("127.0.0.1", ev)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&events::frame(&Request::EkCertificate {
        kind: "ecc".into(),
    }))
    .unwrap();
    match events::read_frame::<Message>(&mut s).unwrap().unwrap() {
        Message::Certificate { kind, certificate } => {
            assert_eq!(kind, "ecc");
            assert_eq!(
                hex::decode(certificate).unwrap(),
                std::fs::read(dir.join("state/ek-ecc.der")).unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Keylime's own EK check (`keylime.cert_utils.verify_ek`, the registrar's test against its
/// `tpm_cert_store`) accepts the certificates when the store holds our CA, and refuses them
/// when it holds another. Needs `WELES_KEYLIME_PYTHON` (a Python with keylime installed);
/// `scripts/test.sh` provides it.
#[test]
#[ignore = "needs WELES_KEYLIME_PYTHON (scripts/test.sh sets it)"]
fn keylime_accepts_the_ek_certificates_under_our_ca_only() {
    let python = std::env::var("WELES_KEYLIME_PYTHON").expect("WELES_KEYLIME_PYTHON");
    let dir = std::env::temp_dir().join(format!("weles-vtpm-mfg-kl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ours")).unwrap();
    std::fs::create_dir_all(dir.join("other")).unwrap();
    for ca in ["ca", "other-ca"] {
        sh(
            &dir,
            &format!(
                "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {ca}.key 2>/dev/null \
                 && openssl req -x509 -key {ca}.key -subj '/CN=WELES test vTPM CA' -days 2 -out {ca}.crt"
            ),
        );
    }
    // Same subject, different key: the store must match on the signature, not the name.
    sh(
        &dir,
        "cp ca.crt ours/ca.pem && cp other-ca.crt other/ca.pem",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_weles-vtpm"))
        .args([
            "manufacture",
            "--tpmstate",
            "dir=state",
            "--vtpm-id",
            "vm-7",
            "--ca-key",
            "ca.key",
            "--ca-cert",
            "ca.crt",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let check = r#"
import sys
from keylime import cert_utils
for store in ("ours", "other"):
    for kind in ("rsa", "ecc"):
        with open(f"state/ek-{kind}.der", "rb") as f:
            print(store, kind, cert_utils.verify_ek(f.read(), store))
"#;
    let o = Command::new(python)
        .args(["-c", check])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    for line in [
        "ours rsa True",
        "ours ecc True",
        "other rsa False",
        "other ecc False",
    ] {
        assert!(out.contains(line), "expected {line:?} in:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_generated_ca_is_a_ca_to_openssl_and_issues_verifiable_ek_certificates() {
    let dir = std::env::temp_dir().join(format!("weles-vtpm-newca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = weles_vtpm::manufacture::new_ca("welesd EK CA test").unwrap();
    weles_vtpm::manufacture::Ca::from_pem(&key, &cert)
        .expect("key and certificate belong together");
    std::fs::write(dir.join("ca.crt"), &cert).unwrap();
    let text = sh(&dir, "openssl x509 -in ca.crt -noout -text").stdout;
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(
        text.contains("Subject: O = WELES, CN = welesd EK CA test"),
        "{text}"
    );
    // The key goes in through a pipe, as welesd passes it (never written to disk).
    let mut child = Command::new(env!("CARGO_BIN_EXE_weles-vtpm"))
        .args([
            "manufacture",
            "--tpmstate",
            "dir=state",
            "--vtpm-id",
            "vm-ca",
        ])
        .args(["--ca-key", "/dev/stdin", "--ca-cert", "ca.crt"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    for ek in ["ek-rsa.der", "ek-ecc.der"] {
        sh(
            &dir,
            &format!(
                "openssl x509 -inform DER -in state/{ek} -out {ek}.pem && openssl verify -CAfile ca.crt {ek}.pem"
            ),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
