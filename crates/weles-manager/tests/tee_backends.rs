//! The `tsm` and `sgx` TEE backends against directory trees that behave like the kernel's
//! configfs-tsm and Gramine's `/dev/attestation`, serving recorded real evidence (AMD's sample
//! SEV-SNP report, Intel's sample SGX and TDX DCAP quotes); and a real welesd on the `tsm`
//! (SEV-SNP, TDX) and `sgx` backends whose evidence the real `weles manager trust` and its
//! library verify as far as recorded evidence can go.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Kill, bin};
use weles_manager::tee::{SgxTee, TeeBackend, TsmTee};
use weles_proto::operator::{OperatorReply, OperatorRequest, call};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn snp_report() -> Vec<u8> {
    std::fs::read(format!("{ROOT}/testdata/tee/snp-report-milan.bin")).unwrap()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weles-tee-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Plays configfs-tsm under `root`: a new report directory gets `generation`; once `inblob` is
/// written, `provider`, the next generation (`extra_writes` more to play a racing writer) and
/// `outblob` appear. Records every inblob it saw.
struct FakeTsm {
    stop: Arc<AtomicBool>,
    inblobs: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeTsm {
    fn start(root: &Path, provider: &'static str, outblob: Vec<u8>, extra_writes: u64) -> FakeTsm {
        Self::start_with_aux(root, provider, outblob, None, extra_writes)
    }

    /// The same, with an `auxblob` (SEV-SNP: the host's certificate table).
    fn start_with_aux(
        root: &Path,
        provider: &'static str,
        outblob: Vec<u8>,
        auxblob: Option<Vec<u8>>,
        extra_writes: u64,
    ) -> FakeTsm {
        let stop = Arc::new(AtomicBool::new(false));
        let inblobs = Arc::new(Mutex::new(Vec::new()));
        let (s, seen, root) = (stop.clone(), inblobs.clone(), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut generations = std::collections::HashMap::<PathBuf, u64>::new();
            while !s.load(Ordering::SeqCst) {
                for e in std::fs::read_dir(&root).unwrap().flatten() {
                    let d = e.path();
                    // Report directories are never reused (one per report): a directory seen
                    // before is one we set up already — or one being removed, not to be touched.
                    // configfs attributes change at once: write aside, then rename.
                    let put = |name: &str, bytes: &[u8]| {
                        let tmp = d.join(format!(".{name}.tmp"));
                        let _ = std::fs::write(&tmp, bytes)
                            .and_then(|()| std::fs::rename(&tmp, d.join(name)));
                    };
                    let g = generations.entry(d.clone()).or_insert_with(|| {
                        put("generation", b"0\n");
                        0
                    });
                    // The kernel takes a write whole; a plain file may be read half-written.
                    if let Ok(inblob) = std::fs::read(d.join("inblob"))
                        && inblob.len() == 64
                    {
                        let _ = std::fs::remove_file(d.join("inblob"));
                        seen.lock().unwrap().push(inblob);
                        *g += 1 + extra_writes;
                        put("provider", format!("{provider}\n").as_bytes());
                        put("generation", format!("{g}\n").as_bytes());
                        if let Some(aux) = &auxblob {
                            put("auxblob", aux);
                        }
                        if let Some(aux) = &auxblob {
                            put("auxblob", aux);
                        }
                        put("outblob", &outblob);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        FakeTsm {
            stop,
            inblobs,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeTsm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn tsm_writes_our_report_data_and_returns_the_tees_report() {
    let root = temp("tsm");
    let fake = FakeTsm::start(&root, "sev_guest", snp_report(), 0);
    let tee = TsmTee { root: root.clone() };
    let rd = [0x5a; 64];
    let report: serde_json::Value = serde_json::from_str(&tee.report(&rd).unwrap()).unwrap();
    assert_eq!(report["tee"], "tsm");
    assert_eq!(report["provider"], "sev_guest");
    use base64ct::Encoding;
    let out = base64ct::Base64::decode_vec(report["outblob"].as_str().unwrap()).unwrap();
    assert_eq!(out, snp_report());
    assert!(report["auxblob"].is_null());
    assert_eq!(fake.inblobs.lock().unwrap().as_slice(), [rd.to_vec()]);
    // The report directory is gone again.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    drop(fake);

    // Another writer between our write and our read (generation moved by more than one):
    // no report is taken for ours.
    let racy = FakeTsm::start(&root, "sev_guest", snp_report(), 1);
    let e = tee.report(&rd).unwrap_err().to_string();
    assert!(e.contains("raced us"), "{e}");
    drop(racy);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn sgx_writes_our_report_data_returns_the_quote_and_seals_with_the_enclave_key() {
    let dev = temp("sgx");
    std::fs::create_dir_all(dev.join("keys")).unwrap();
    std::fs::write(dev.join("attestation_type"), "dcap").unwrap();
    let quote = std::fs::read(format!("{ROOT}/testdata/tee/sgx-quote-dcap.bin")).unwrap();
    std::fs::write(dev.join("quote"), &quote).unwrap();
    std::fs::write(dev.join("keys/_sgx_mrenclave"), [7u8; 16]).unwrap();
    let tee = SgxTee { dev: dev.clone() };
    let rd = [0xa5; 64];
    let report: serde_json::Value = serde_json::from_str(&tee.report(&rd).unwrap()).unwrap();
    assert_eq!(report["tee"], "sgx");
    use base64ct::Encoding;
    assert_eq!(
        base64ct::Base64::decode_vec(report["quote"].as_str().unwrap()).unwrap(),
        quote
    );
    assert_eq!(std::fs::read(dev.join("user_report_data")).unwrap(), rd);
    // The sealing key follows the enclave's key: the same enclave gets it again, another not.
    let k1 = tee.sealing(&dev).unwrap().0.key().unwrap();
    let k2 = tee.sealing(&dev).unwrap().0.key().unwrap();
    assert_eq!(*k1, *k2);
    assert_eq!(tee.sealing(&dev).unwrap().0.kind(), "sgx-mrenclave");
    std::fs::write(dev.join("keys/_sgx_mrenclave"), [8u8; 16]).unwrap();
    assert_ne!(*tee.sealing(&dev).unwrap().0.key().unwrap(), *k1);
    std::fs::write(dev.join("keys/_sgx_mrenclave"), [8u8; 15]).unwrap();
    assert!(tee.sealing(&dev).is_err());
    // An enclave without DCAP (EPID, or none) gives no evidence we could check.
    std::fs::write(dev.join("attestation_type"), "epid").unwrap();
    let e = tee.report(&rd).unwrap_err().to_string();
    assert!(e.contains("only \"dcap\""), "{e}");
    let _ = std::fs::remove_dir_all(&dev);
}

/// A real welesd on a real TEE backend whose device is a fake tree in `dir`.
struct TeeManager {
    dir: PathBuf,
    api: String,
    _welesd: Kill,
}

impl TeeManager {
    fn start(dir: &Path, tee: &str, device: &Path) -> TeeManager {
        std::fs::write(
            dir.join("welesd.toml"),
            format!(
                "state_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\ntenant_api = \"127.0.0.1:0\"\n\
                 tee = \"{tee}\"\ntee_device = \"{r}\"\n",
                d = dir.display(),
                r = device.display()
            ),
        )
        .unwrap();
        let welesd = Kill(
            Command::new(bin("welesd"))
                .arg("--config")
                .arg(dir.join("welesd.toml"))
                .stderr(support::child_stderr())
                .spawn()
                .unwrap(),
        );
        let socket = dir.join("run/operator.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        let api = loop {
            if let Ok(OperatorReply::Health(h)) = call(&socket, &OperatorRequest::Health)
                && let Some(a) = h.tenant_api
            {
                assert_eq!(h.tee, tee);
                break a;
            }
            assert!(Instant::now() < deadline, "welesd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        };
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join("acme"))
            .status()
            .unwrap();
        TeeManager {
            dir: dir.to_path_buf(),
            api,
            _welesd: welesd,
        }
    }

    /// `weles manager trust` with `extra` flags, which must refuse: its stderr.
    fn refused_trust(&self, extra: &[&str]) -> String {
        let o = Command::new(bin("weles"))
            .args([
                "manager",
                "trust",
                &format!("https://{}", self.api),
                "--tenant",
                "acme",
            ])
            .args(["--key", "acme"])
            .args(extra)
            .env("WELES_HOME", self.dir.join("home"))
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// The manager's evidence for `nonce`, and the TLS key this connection saw.
    fn evidence(&self, nonce: &str) -> (weles_proto::api::Evidence, String) {
        let mut conn =
            weles_client::Connection::open(&format!("https://{}", self.api), None).unwrap();
        let body = serde_json::to_vec(&weles_proto::api::EvidenceRequest {
            nonce: nonce.into(),
            credential: None,
        })
        .unwrap();
        let r = conn.request("POST", "/v1/evidence", &body, None).unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        (
            serde_json::from_slice(&r.body).unwrap(),
            hex::encode(conn.seen_spki),
        )
    }
}

#[test]
fn a_tenant_checks_a_tsm_managers_snp_report_itself() {
    let dir = temp("welesd");
    let root = dir.join("tsm");
    std::fs::create_dir_all(&root).unwrap();
    let _fake = FakeTsm::start(&root, "sev_guest", snp_report(), 0);
    let m = TeeManager::start(&dir, "tsm", &root);
    let vcek = format!("{ROOT}/testdata/tee/snp-vcek-milan.der");
    let measurement = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";
    // Without collateral: told what to give.
    assert!(m.refused_trust(&[]).contains("--snp-vcek"));
    // A measurement the tenant does not accept.
    let e = m.refused_trust(&["--snp-vcek", &vcek, "--snp-measurement", &"00".repeat(48)]);
    assert!(e.contains("launch measurement 7a1e5c26"), "{e}");
    // The real report passes AMD's chain and the measurement, and is still refused: it was
    // recorded for someone else's nonce (a replayed report), which is all recorded evidence
    // can be here.
    let e = m.refused_trust(&["--snp-vcek", &vcek, "--snp-measurement", measurement]);
    assert!(e.contains("does not carry our report data"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tsm_manager_whose_host_supplies_the_vcek_needs_no_vcek_from_the_tenant() {
    let dir = temp("welesd-aux");
    let root = dir.join("tsm");
    std::fs::create_dir_all(&root).unwrap();
    // The host's certificate table: the VCEK entry, the zero entry, the VCEK.
    let vcek = std::fs::read(format!("{ROOT}/testdata/tee/snp-vcek-milan.der")).unwrap();
    let mut table = hex::decode("63da758de6644564adc5f4b93be8accd").unwrap();
    table.extend_from_slice(&48u32.to_le_bytes());
    table.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
    table.extend_from_slice(&[0; 24]);
    table.extend_from_slice(&vcek);
    let _fake = FakeTsm::start_with_aux(&root, "sev_guest", snp_report(), Some(table), 0);
    let m = TeeManager::start(&dir, "tsm", &root);
    let measurement = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";
    // No --snp-vcek: AMD's chain verifies the host's VCEK, the measurement is checked, and the
    // recorded report is refused only for someone else's report data.
    let e = m.refused_trust(&["--snp-measurement", &"00".repeat(48)]);
    assert!(e.contains("launch measurement 7a1e5c26"), "{e}");
    let e = m.refused_trust(&["--snp-measurement", measurement]);
    assert!(e.contains("does not carry our report data"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The library's TEE trust with Intel's collateral from `file`, at a time inside its life
/// (June 2025).
fn dcap_trust(file: &str) -> weles_client::TeeTrust {
    weles_client::TeeTrust {
        now: 1_750_809_600,
        dcap_collateral: Some(
            weles_client::dcap::Collateral::from_json(&std::fs::read_to_string(file).unwrap())
                .unwrap(),
        ),
        ..Default::default()
    }
}

#[test]
fn a_tenant_checks_an_sgx_managers_dcap_quote_itself() {
    let dir = temp("welesd-sgx");
    let dev = dir.join("attestation");
    std::fs::create_dir_all(dev.join("keys")).unwrap();
    std::fs::write(dev.join("attestation_type"), "dcap").unwrap();
    std::fs::write(
        dev.join("quote"),
        std::fs::read(format!("{ROOT}/testdata/tee/sgx-quote-dcap.bin")).unwrap(),
    )
    .unwrap();
    std::fs::write(dev.join("keys/_sgx_mrenclave"), [7u8; 16]).unwrap();
    let m = TeeManager::start(&dir, "sgx", &dev);
    let collateral = format!("{ROOT}/testdata/tee/sgx-collateral.json");
    let quote = std::fs::read(dev.join("quote")).unwrap();
    let mrenclave = hex::encode(&quote[48 + 64..48 + 96]);

    // Without collateral: told what to give.
    let e = m.refused_trust(&[]);
    assert!(e.contains("--dcap-collateral"), "{e}");
    // Intel's collateral for this platform is from June 2025 and its root CA CRL expired in
    // April 2026: refused today, naming it.
    let e = m.refused_trust(&[
        "--dcap-collateral",
        &collateral,
        "--sgx-mrenclave",
        &mrenclave,
    ]);
    assert!(e.contains("the root CA CRL: expired at"), "{e}");
    // A malformed reference value is named.
    let e = m.refused_trust(&["--dcap-collateral", &collateral, "--sgx-mrenclave", "abcd"]);
    assert!(
        e.contains("MRENCLAVE (--sgx-mrenclave, [sgx] mrenclave): \"abcd\" is not 64 hex digits"),
        "{e}"
    );

    // The library the CLI uses, with a clock inside the collateral's life.
    let nonce = "22".repeat(32);
    let (ev, seen) = m.evidence(&nonce);
    assert_eq!(ev.tee, "sgx");
    let mut tee = dcap_trust(&collateral);
    tee.sgx_mrenclaves = vec![[0u8; 32]];
    // Intel rates this platform ConfigurationAndSWHardeningNeeded: refused unless accepted.
    let e = weles_client::verify_evidence(&ev, &nonce, &seen, &tee)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ConfigurationAndSWHardeningNeeded"), "{e}");
    tee.dcap_accept = vec!["ConfigurationAndSWHardeningNeeded".into()];
    let e = weles_client::verify_evidence(&ev, &nonce, &seen, &tee)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("MRENCLAVE {mrenclave} is not one you accept")),
        "{e}"
    );
    // Intel's chain, the collateral and the measurement pass; the recorded quote still is not
    // this manager's answer to this nonce.
    tee.sgx_mrenclaves = vec![quote[48 + 64..48 + 96].try_into().unwrap()];
    let e = weles_client::verify_evidence(&ev, &nonce, &seen, &tee)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not carry our report data"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tenant_checks_a_tdx_managers_quote_itself() {
    let dir = temp("welesd-tdx");
    let root = dir.join("tsm");
    std::fs::create_dir_all(&root).unwrap();
    let quote = std::fs::read(format!("{ROOT}/testdata/tee/tdx-quote-v4.bin")).unwrap();
    let _fake = FakeTsm::start(&root, "tdx_guest", quote.clone(), 0);
    let m = TeeManager::start(&dir, "tsm", &root);
    let collateral = format!("{ROOT}/testdata/tee/tdx-collateral.json");
    let mrtd = hex::encode(&quote[48 + 136..48 + 184]);

    let e = m.refused_trust(&["--snp-vcek", "/dev/null"]);
    assert!(
        e.contains("the manager runs in TDX: give Intel's collateral"),
        "{e}"
    );
    let e = m.refused_trust(&["--dcap-collateral", &collateral, "--tdx-mrtd", &mrtd]);
    assert!(
        e.contains("the TDX quote: the root CA CRL: expired at"),
        "{e}"
    );
    let e = m.refused_trust(&["--dcap-collateral", &collateral, "--tdx-rtmr", "4=00"]);
    assert!(
        e.contains("RTMR 4=00 (--tdx-rtmr, [tdx] rtmr): N=HEX, N 0–3"),
        "{e}"
    );

    let nonce = "33".repeat(32);
    let (ev, seen) = m.evidence(&nonce);
    let mut tee = dcap_trust(&collateral);
    let e = weles_client::verify_evidence(&ev, &nonce, &seen, &tee)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--tdx-mrtd"), "{e}");
    tee.tdx_mrtds = vec![quote[48 + 136..48 + 184].try_into().unwrap()];
    tee.tdx_rtmrs = vec![(2, [0x5a; 48])];
    let e = weles_client::verify_evidence(&ev, &nonce, &seen, &tee)
        .unwrap_err()
        .to_string();
    assert!(e.contains("RTMR2 is"), "{e}");
    tee.tdx_rtmrs = vec![(2, quote[48 + 424..48 + 472].try_into().unwrap())];
    let e = weles_client::verify_evidence(&ev, &nonce, &seen, &tee)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the TDX quote does not carry our report data"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
