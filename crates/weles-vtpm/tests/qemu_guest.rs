//! A real guest: Debian's 6.1 kernel under QEMU 7.2 (TCG) with weles-vtpm as its TPM (CRB and
//! TIS), IMA on. The guest's measurement list must replay to the PCR 10 values it read through
//! weles-vtpm, in both banks.
//!
//! Needs root and Debian's package archive (QEMU and the kernel are fetched with
//! `apt-get download` into .cache/): `scripts/test.sh` runs it with `--ignored`.

use std::path::PathBuf;
use std::process::Command;

use weles_ima::verify::AcceptAll;
use weles_ima::{Config, Digest, Verifier};

#[test]
#[ignore = "boots a QEMU guest: run by scripts/test.sh (needs root and Debian's archive)"]
fn guest_ima_log_replays_to_the_pcrs_weles_vtpm_holds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for device in ["tpm-crb", "tpm-tis"] {
        let out =
            std::env::temp_dir().join(format!("weles-vtpm-qemu-{device}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let status = Command::new("bash")
            .arg(root.join("scripts/capture-ima-fixtures.sh"))
            .arg(&out)
            .env("VTPM", env!("CARGO_BIN_EXE_weles-vtpm"))
            .env("DEVICE", device)
            .env("CONFIGS", "ima-ng-sha256")
            .status()
            .unwrap();
        assert!(status.success(), "{device}: guest capture failed");
        let dir = out.join("ima-ng-sha256");
        let log = std::fs::read(dir.join("binary_runtime_measurements")).unwrap();
        let pcrs = std::fs::read_to_string(dir.join("pcrs.txt")).unwrap();
        let mut v = Verifier::new(Config {
            banks: vec![],
            ..Config::default()
        });
        for bank in ["sha1", "sha256"] {
            let hex = pcrs
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{bank}:10 ")))
                .unwrap();
            v.expect_pcr(Digest::parse(&format!("{bank}:{hex}")).unwrap())
                .unwrap();
        }
        let entries = v.verify_all(&log, &AcceptAll).unwrap();
        v.check_pcrs();
        assert!(entries >= 5, "{device}: only {entries} entries");
        assert_eq!(
            v.pcr_matched_at(),
            Some(entries),
            "{device}: {:?}",
            v.violations()
        );
        assert!(
            std::fs::read_to_string(dir.join("vtpm.log"))
                .unwrap()
                .contains("sealed state")
        );
    }
}
