//! Verdict parity with Keylime 7.14.3's `process_measurement_list` on identical inputs.
//!
//! Needs a Python with Keylime installed (scripts/keylime-venv.sh makes one); CI runs it with
//! `WELES_KEYLIME_PYTHON=... cargo test -- --ignored keylime`. Without the variable the test
//! fails rather than passing vacuously.
//!
//! Documented, deliberate differences (docs/keylime.md):
//! - A signature that does not verify is `bad_signature` here and `not_in_allowlist` in Keylime.
//! - Keylime tolerates ToMToU entries by a verifier setting (`ignore_tomtou_errors`); WELES by the
//!   policy field `ima.allow_violations`. Both fail them by default; the test pins both.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    std::env::var("WELES_KEYLIME_PYTHON").expect(
        "set WELES_KEYLIME_PYTHON to a python with keylime==7.14.3 (scripts/keylime-venv.sh)",
    )
}

/// Normalises Keylime event ids and WELES reasons to shared names.
fn normalise(reason: &str) -> &'static str {
    match reason.rsplit('.').next().unwrap_or(reason) {
        "not_in_allowlist" | "not_in_policy" | "bad_signature" => "not_allowed",
        "runtime_policy_hash" | "digest_mismatch" => "digest_mismatch",
        "pcr_mismatch" => "pcr_mismatch",
        "tomtou" | "violation_entry" => "violation_entry",
        "ima_hash" | "template_hash_mismatch" => "template_hash_mismatch",
        _ => "other",
    }
}

type Verdict = (bool, BTreeSet<&'static str>);

fn keylime(log: &Path, policy: &Path, pcr: Option<&str>, ignore_tomtou: bool) -> Verdict {
    let mut c = Command::new(python());
    c.arg(root().join("bench/keylime_verify.py"))
        .arg("--log")
        .arg(log)
        .arg("--policy")
        .arg(policy);
    if let Some(p) = pcr {
        c.arg("--pcr10").arg(p);
    }
    if ignore_tomtou {
        c.arg("--ignore-tomtou");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "keylime harness failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let reasons = j["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| normalise(r.as_str().unwrap()))
        .collect();
    (j["compliant"].as_bool().unwrap(), reasons)
}

fn weles(log: &Path, policy: &Path, pcr: Option<&str>) -> Verdict {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weles"));
    c.args(["ima", "verify", "--json", "--log"])
        .arg(log)
        .arg("--policy")
        .arg(policy);
    if let Some(p) = pcr {
        c.arg("--pcr10").arg(p);
    }
    let o = c.output().unwrap();
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "weles failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let reasons = j["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| normalise(v["reason"].as_str().unwrap()))
        .collect();
    (j["compliant"].as_bool().unwrap(), reasons)
}

/// A fresh directory per test (tests run in parallel threads of one process).
fn tempdir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weles-parity-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn generate(n: usize, dir: &Path, bank: &str) -> PathBuf {
    let out = dir.join(format!("gen-{n}-{bank}"));
    let o = Command::new("python3")
        .arg(root().join("bench/gen_ima.py"))
        .arg(n.to_string())
        .arg(&out)
        .args(["--bank", bank])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn edit_json(src: &Path, dst: &Path, f: impl FnOnce(&mut Value)) -> PathBuf {
    let mut v: Value = serde_json::from_slice(&std::fs::read(src).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(dst, v.to_string()).unwrap();
    dst.to_path_buf()
}

fn same(case: &str, k: Verdict, w: Verdict) {
    assert_eq!(k, w, "{case}: Keylime {k:?} vs WELES {w:?}");
    eprintln!("parity ok: {case}: compliant={} {:?}", w.0, w.1);
}

#[test]
#[ignore = "needs Keylime 7.14.3: set WELES_KEYLIME_PYTHON (scripts/test.sh does)"]
fn keylime_parity_on_generated_logs() {
    let dir = tempdir("generated");
    for bank in ["sha256", "sha1"] {
        let g = generate(2000, &dir, bank);
        let log = g.join("ascii");
        let policy = g.join("policy.json");
        let pcr = std::fs::read_to_string(g.join("pcr10"))
            .unwrap()
            .trim()
            .to_string();
        let lag = std::fs::read_to_string(generate(1997, &dir, bank).join("pcr10"))
            .unwrap()
            .trim()
            .to_string();
        let wrong = format!(
            "{bank}:{}",
            "ab".repeat(if bank == "sha1" { 20 } else { 32 })
        );
        for (case, pcr) in [
            ("full", &pcr),
            ("pcr lags by 3 entries", &lag),
            ("wrong pcr", &wrong),
        ] {
            same(
                &format!("{bank} {case}"),
                keylime(&log, &policy, Some(pcr), false),
                weles(&log, &policy, Some(pcr)),
            );
            same(
                &format!("{bank} {case} (binary log)"),
                keylime(&log, &policy, Some(pcr), false),
                weles(&g.join("binary"), &policy, Some(pcr)),
            );
        }
        let missing = edit_json(&policy, &dir.join("missing.json"), |v| {
            v["digests"]
                .as_object_mut()
                .unwrap()
                .remove("/usr/lib/x86_64-linux-gnu/lib0001234.so");
        });
        same(
            "missing path",
            keylime(&log, &missing, Some(&pcr), false),
            weles(&log, &missing, Some(&pcr)),
        );
        let changed = edit_json(&policy, &dir.join("changed.json"), |v| {
            v["digests"]["/usr/lib/x86_64-linux-gnu/lib0000042.so"] =
                serde_json::json!(["00".repeat(32)]);
        });
        same(
            "changed digest",
            keylime(&log, &changed, Some(&pcr), false),
            weles(&log, &changed, Some(&pcr)),
        );
        let excluded = edit_json(&missing, &dir.join("excluded.json"), |v| {
            v["excludes"] =
                serde_json::json!(["/usr/lib/x86_64-linux-gnu/lib00012[0-9][0-9]\\.so$"]);
        });
        same(
            "missing but excluded",
            keylime(&log, &excluded, Some(&pcr), false),
            weles(&log, &excluded, Some(&pcr)),
        );
        // A line whose file digest was altered while the template hash was kept.
        let text = std::fs::read_to_string(&log).unwrap();
        let forged: String = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i != 77 {
                    return format!("{l}\n");
                }
                let mut f: Vec<String> = l.split(' ').map(String::from).collect();
                let (alg, hex) = f[3].split_once(':').unwrap();
                let flipped = if hex.starts_with('f') { "0" } else { "f" };
                f[3] = format!("{alg}:{flipped}{}", &hex[1..]);
                format!("{}\n", f.join(" "))
            })
            .collect();
        let forged_log = dir.join("forged");
        std::fs::write(&forged_log, forged).unwrap();
        same(
            "forged entry",
            keylime(&forged_log, &policy, None, false),
            weles(&forged_log, &policy, None),
        );
    }
}

fn fixture(name: &str) -> PathBuf {
    root().join("testdata/ima").join(name)
}

fn fixture_pcr(name: &str) -> String {
    let t = std::fs::read_to_string(fixture(name).join("pcrs.txt")).unwrap();
    format!(
        "sha256:{}",
        t.lines()
            .find_map(|l| l.strip_prefix("sha256:10 "))
            .unwrap()
    )
}

fn keylime_policy_for(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{name}.json"));
    let o = Command::new(env!("CARGO_BIN_EXE_weles"))
        .args(["policy", "generate", "--format", "keylime", "--from-log"])
        .arg(fixture(name).join("binary_runtime_measurements"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The same Keylime policy as WELES TOML with violation entries tolerated.
fn tolerant_toml(json: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("tolerant.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_weles"))
        .args(["policy", "import-keylime"])
        .arg(json)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = std::fs::read_to_string(&out)
        .unwrap()
        .replace("allow_violations = false", "allow_violations = true");
    std::fs::write(&out, t).unwrap();
    out
}

#[test]
#[ignore = "needs Keylime 7.14.3: set WELES_KEYLIME_PYTHON (scripts/test.sh does)"]
fn keylime_parity_on_real_guest_logs() {
    let dir = tempdir("real");
    for name in ["ima-ng-sha256", "ima-sig-sha256", "ima-legacy-sha1"] {
        let log = fixture(name).join("ascii_runtime_measurements");
        let policy = keylime_policy_for(name, &dir);
        let pcr = fixture_pcr(name);
        same(
            &format!("{name} strict"),
            keylime(&log, &policy, Some(&pcr), false),
            weles(&log, &policy, Some(&pcr)),
        );
        same(
            &format!("{name} ToMToU tolerated"),
            keylime(&log, &policy, Some(&pcr), true),
            weles(&log, &tolerant_toml(&policy, &dir), Some(&pcr)),
        );
        let missing = edit_json(&policy, &dir.join("missing.json"), |v| {
            v["digests"]
                .as_object_mut()
                .unwrap()
                .remove("/unsigned/hello.sh");
        });
        same(
            &format!("{name} unlisted file"),
            keylime(&log, &missing, Some(&pcr), true),
            weles(&log, &tolerant_toml(&missing, &dir), Some(&pcr)),
        );
    }

    // Signed files pass with trusted keys in `verification-keys`, without listing digests.
    let name = "ima-sig-sha256";
    let mut pubkeys = Vec::new();
    for k in ["ima-rsa.crt", "ima-ec.crt"] {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform DER | base64 -w0", fixture(name).join("keys").join(k).display()))
            .output()
            .unwrap();
        pubkeys.push(String::from_utf8(o.stdout).unwrap());
    }
    let policy = keylime_policy_for(name, &dir);
    let signed = edit_json(&policy, &dir.join("signed.json"), |v| {
        let d = v["digests"].as_object_mut().unwrap();
        d.retain(|p, _| !p.starts_with("/signed/"));
        v["verification-keys"] =
            Value::String(serde_json::json!({"keyids": [], "pubkeys": pubkeys}).to_string());
    });
    let log = fixture(name).join("ascii_runtime_measurements");
    let pcr = fixture_pcr(name);
    same(
        "ima-sig trusted keys",
        keylime(&log, &signed, Some(&pcr), true),
        weles(&log, &tolerant_toml(&signed, &dir), Some(&pcr)),
    );
    let one_key = edit_json(&signed, &dir.join("one-key.json"), |v| {
        let vk: Value = serde_json::from_str(v["verification-keys"].as_str().unwrap()).unwrap();
        let first = vk["pubkeys"][0].clone();
        v["verification-keys"] =
            Value::String(serde_json::json!({"keyids": [], "pubkeys": [first]}).to_string());
    });
    same(
        "ima-sig one key missing",
        keylime(&log, &one_key, Some(&pcr), true),
        weles(&log, &tolerant_toml(&one_key, &dir), Some(&pcr)),
    );
}
