//! The `weles` command line as users and scripts drive it, with the real `ssh-keygen`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use weles_ima::write::{binary_entry, d_ng, n_ng, template_data};
use weles_ima::{Bank, ByteOrder, HashAlgorithm};

fn weles(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weles"))
        .args(args)
        .output()
        .unwrap()
}

fn weles_env(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weles"));
    c.args(args).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/ima")
        .join(name)
}

fn pcr(name: &str, bank: &str) -> String {
    let t = std::fs::read_to_string(fixture(name).join("pcrs.txt")).unwrap();
    let hex = t
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{bank}:10 ")))
        .unwrap();
    format!("{bank}:{hex}")
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weles-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A policy allowlisting a fixture's run (optionally tolerating its violation entry).
fn policy_for(name: &str, dir: &Path, allow_violations: bool) -> PathBuf {
    let out = dir.join(format!(
        "{name}-{}.toml",
        if allow_violations {
            "tolerant"
        } else {
            "strict"
        }
    ));
    let log = fixture(name).join("binary_runtime_measurements");
    let o = weles(&[
        "policy",
        "generate",
        "--from-log",
        p(&log),
        "-o",
        p(&out),
        "--hostname",
        "vm1.example",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    if allow_violations {
        let t = std::fs::read_to_string(&out)
            .unwrap()
            .replace("allow_violations = false", "allow_violations = true");
        std::fs::write(&out, t).unwrap();
    }
    out
}

#[test]
fn verify_exit_codes_and_json_contract() {
    let dir = tempdir("verify");
    let name = "ima-ng-sha256";
    for file in ["binary_runtime_measurements", "ascii_runtime_measurements"] {
        let log = fixture(name).join(file);
        let ok = policy_for(name, &dir, true);
        let o = weles(&[
            "ima",
            "verify",
            "--log",
            p(&log),
            "--policy",
            p(&ok),
            "--pcr10",
            &pcr(name, "sha1"),
            "--pcr10",
            &pcr(name, "sha256"),
        ]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        assert!(text(&o).starts_with("COMPLIANT"));

        let strict = policy_for(name, &dir, false);
        let o = weles(&[
            "ima",
            "verify",
            "--log",
            p(&log),
            "--policy",
            p(&strict),
            "--pcr10",
            &pcr(name, "sha256"),
            "--json",
        ]);
        assert_eq!(code(&o), 1, "{}", text(&o));
        let j: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["compliant"], false);
        assert_eq!(j["entries"], 9);
        assert_eq!(j["pcr_matched_at"], 9);
        let v = &j["violations"][0];
        assert_eq!(
            (
                v["index"].as_u64(),
                v["path"].as_str(),
                v["reason"].as_str()
            ),
            (Some(8), Some("/etc/weles.conf"), Some("violation_entry"))
        );
        assert_eq!(j["violations"].as_array().unwrap().len(), 1);

        // A PCR value the log never reaches.
        let o = weles(&[
            "ima",
            "verify",
            "--log",
            p(&log),
            "--policy",
            p(&ok),
            "--pcr10",
            &format!("sha256:{}", "ab".repeat(32)),
            "--json",
        ]);
        assert_eq!(code(&o), 1);
        let j: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["pcr_matched_at"], Value::Null);
        assert_eq!(j["violations"][0]["reason"], "pcr_mismatch");
        assert_eq!(j["violations"][0]["index"], 9);
    }
}

#[test]
fn human_report_names_each_violation() {
    let dir = tempdir("human");
    let pol = policy_for("ima-ng-sha256", &dir, false);
    let t = std::fs::read_to_string(&pol).unwrap();
    let t: String = t
        .lines()
        .filter(|l| !l.starts_with("\"/unsigned/hello.sh\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&pol, t).unwrap();
    let o = weles(&[
        "ima",
        "verify",
        "--log",
        p(&fixture("ima-ng-sha256").join("ascii_runtime_measurements")),
        "--policy",
        p(&pol),
    ]);
    assert_eq!(code(&o), 1);
    let out = text(&o);
    assert!(out.starts_with("NOT COMPLIANT"), "{out}");
    assert!(
        out.contains("entry 5")
            && out.contains("not_in_policy")
            && out.contains("/unsigned/hello.sh"),
        "{out}"
    );
    assert!(
        out.contains("entry 8") && out.contains("violation_entry"),
        "{out}"
    );
    assert!(out.contains("not attested"), "{out}");
}

#[test]
fn invalid_input_exits_2_and_says_where() {
    let dir = tempdir("invalid");
    let pol = policy_for("ima-ng-sha256", &dir, true);
    let log = std::fs::read(fixture("ima-ng-sha256").join("binary_runtime_measurements")).unwrap();
    let cut = dir.join("truncated.bin");
    std::fs::write(&cut, &log[..log.len() - 10]).unwrap();
    let o = weles(&["ima", "verify", "--log", p(&cut), "--policy", p(&pol)]);
    assert_eq!(code(&o), 2);
    let e = text(&o);
    assert!(
        e.contains("truncated.bin")
            && e.contains("entry 8 at byte offset")
            && e.contains("truncated"),
        "{e}"
    );

    let bad_pol = dir.join("bad.toml");
    std::fs::write(
        &bad_pol,
        "version = 1\n[ima.digests]\n\"/bin/sh\" = [\"sha256:12\"]\n",
    )
    .unwrap();
    let o = weles(&[
        "ima",
        "verify",
        "--log",
        p(&fixture("ima-ng-sha256").join("binary_runtime_measurements")),
        "--policy",
        p(&bad_pol),
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o).contains("ima.digests.\"/bin/sh\"[0]"),
        "{}",
        text(&o)
    );

    let o = weles(&[
        "ima",
        "verify",
        "--log",
        "/nonexistent/log",
        "--policy",
        p(&pol),
    ]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("cannot read /nonexistent/log"));

    let o = weles(&[
        "ima",
        "verify",
        "--log",
        p(&cut),
        "--policy",
        p(&pol),
        "--pcr10",
        "sm3:00",
    ]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("--pcr10"), "{}", text(&o));

    let o = weles(&["ima", "verify", "--log", p(&cut)]);
    assert_eq!(code(&o), 2, "usage errors exit 2 as well");
}

#[test]
fn keylime_policies_work_directly_and_after_import() {
    let dir = tempdir("keylime");
    let toml = policy_for("ima-sig-sha256", &dir, false);
    let kl = dir.join("policy.json");
    let o = weles(&[
        "policy",
        "generate",
        "--from-log",
        p(&fixture("ima-sig-sha256").join("binary_runtime_measurements")),
        "--format",
        "keylime",
        "-o",
        p(&kl),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let imported = dir.join("imported.toml");
    let o = weles(&[
        "policy",
        "import-keylime",
        p(&kl),
        "-o",
        p(&imported),
        "--policy-version",
        "7",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = weles(&["policy", "check", p(&imported), "--json"]);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["version"], 7);
    assert_eq!(j["paths"], 7);

    let log = fixture("ima-sig-sha256").join("ascii_runtime_measurements");
    let mut verdicts = Vec::new();
    for pol in [&toml, &kl, &imported] {
        let o = weles(&[
            "ima",
            "verify",
            "--log",
            p(&log),
            "--policy",
            p(pol),
            "--json",
        ]);
        let j: Value = serde_json::from_slice(&o.stdout).unwrap();
        verdicts.push((code(&o), j["violations"].clone()));
    }
    assert_eq!(verdicts[0].0, 1);
    assert!(
        verdicts.iter().all(|v| v.0 == 1 && v.1[0]["index"] == 8),
        "{verdicts:?}"
    );
}

fn ssh_keygen(args: &[&str], dir: &Path, stdin: Option<&Path>) -> Output {
    let mut c = Command::new("ssh-keygen");
    c.args(args).current_dir(dir);
    if let Some(f) = stdin {
        c.stdin(Stdio::from(std::fs::File::open(f).unwrap()));
    }
    c.output().expect("ssh-keygen is installed")
}

#[test]
fn policy_signatures_interoperate_with_ssh_keygen() {
    let dir = tempdir("sshsig");
    let pol = policy_for("ima-ng-sha256", &dir, true);
    let policy_path = dir.join("vm.toml");
    std::fs::copy(&pol, &policy_path).unwrap();
    for (kind, bits) in [
        ("ed25519", None),
        ("ecdsa", Some("256")),
        ("rsa", Some("3072")),
    ] {
        let key = dir.join(format!("tenant_{kind}"));
        let _ = std::fs::remove_file(&key);
        let mut args = vec!["-q", "-t", kind, "-N", "", "-C", "tenant", "-f", p(&key)];
        if let Some(b) = bits {
            args.extend(["-b", b]);
        }
        assert!(ssh_keygen(&args, &dir, None).status.success());
        let pubkey = format!("{}.pub", p(&key));
        let allowed = dir.join("allowed_signers");
        std::fs::write(
            &allowed,
            format!(
                "tenant@example {}",
                std::fs::read_to_string(&pubkey).unwrap()
            ),
        )
        .unwrap();

        // weles signs, ssh-keygen verifies.
        let o = weles(&["policy", "sign", "-k", p(&key), p(&policy_path)]);
        assert_eq!(code(&o), 0, "{kind}: {}", text(&o));
        let sig = format!("{}.sig", p(&policy_path));
        let o = ssh_keygen(
            &[
                "-Y",
                "verify",
                "-f",
                p(&allowed),
                "-I",
                "tenant@example",
                "-n",
                "weles-policy",
                "-s",
                &sig,
            ],
            &dir,
            Some(&policy_path),
        );
        assert!(
            o.status.success(),
            "{kind}: ssh-keygen refused our signature: {}",
            text(&o)
        );
        // ... and checks the namespace.
        let o = ssh_keygen(
            &[
                "-Y",
                "verify",
                "-f",
                p(&allowed),
                "-I",
                "tenant@example",
                "-n",
                "file",
                "-s",
                &sig,
            ],
            &dir,
            Some(&policy_path),
        );
        assert!(!o.status.success());

        // ssh-keygen signs, weles verifies.
        std::fs::remove_file(&sig).unwrap();
        let o = ssh_keygen(
            &[
                "-Y",
                "sign",
                "-f",
                p(&key),
                "-n",
                "weles-policy",
                p(&policy_path),
            ],
            &dir,
            None,
        );
        assert!(o.status.success(), "{}", text(&o));
        let o = weles(&["policy", "verify", "--signer", &pubkey, p(&policy_path)]);
        assert_eq!(code(&o), 0, "{kind}: {}", text(&o));
        assert!(text(&o).contains("good signature"));
        let o = weles(&[
            "ima",
            "verify",
            "--log",
            p(&fixture("ima-ng-sha256").join("binary_runtime_measurements")),
            "--policy",
            p(&policy_path),
            "--signer",
            &pubkey,
        ]);
        assert_eq!(code(&o), 0, "{kind}: {}", text(&o));

        // Refusals: another namespace, another key, a changed policy.
        std::fs::remove_file(&sig).unwrap();
        let o = ssh_keygen(
            &[
                "-Y",
                "sign",
                "-f",
                p(&key),
                "-n",
                "file",
                "-O",
                "hashalg=sha256",
                p(&policy_path),
            ],
            &dir,
            None,
        );
        assert!(o.status.success());
        let o = weles(&["policy", "verify", "--signer", &pubkey, p(&policy_path)]);
        assert_eq!(code(&o), 1, "{kind}: wrong namespace accepted");
        assert!(text(&o).contains("BAD signature"));
    }
    // A signature by one key does not verify with another.
    std::fs::remove_file(format!("{}.sig", p(&policy_path))).unwrap();
    let o = ssh_keygen(
        &[
            "-Y",
            "sign",
            "-f",
            p(&dir.join("tenant_ed25519")),
            "-n",
            "weles-policy",
            p(&policy_path),
        ],
        &dir,
        None,
    );
    assert!(o.status.success());
    let o = weles(&[
        "policy",
        "verify",
        "--signer",
        &format!("{}.pub", p(&dir.join("tenant_rsa"))),
        p(&policy_path),
    ]);
    assert_eq!(code(&o), 1);
    // A changed policy no longer verifies, and verify --signer refuses to use it.
    let mut t = std::fs::read_to_string(&policy_path).unwrap();
    t.push_str("# changed\n");
    std::fs::write(&policy_path, t).unwrap();
    let o = weles(&[
        "policy",
        "verify",
        "--signer",
        &format!("{}.pub", p(&dir.join("tenant_ed25519"))),
        p(&policy_path),
    ]);
    assert_eq!(code(&o), 1);
    let o = weles(&[
        "ima",
        "verify",
        "--log",
        p(&fixture("ima-ng-sha256").join("binary_runtime_measurements")),
        "--policy",
        p(&policy_path),
        "--signer",
        &format!("{}.pub", p(&dir.join("tenant_ed25519"))),
    ]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("policy signature"), "{}", text(&o));
}

#[test]
fn encrypted_signing_keys_need_their_passphrase() {
    let dir = tempdir("passphrase");
    let pol = policy_for("ima-ng-sha256", &dir, true);
    let key = dir.join("enc");
    assert!(
        ssh_keygen(
            &["-q", "-t", "ed25519", "-N", "s3cret", "-f", p(&key)],
            &dir,
            None
        )
        .status
        .success()
    );
    let o = weles_env(&["policy", "sign", "-k", p(&key), p(&pol)], &[], &dir);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("encrypted"), "{}", text(&o));
    let o = weles_env(
        &["policy", "sign", "-k", p(&key), p(&pol)],
        &[("WELES_KEY_PASSPHRASE", "wrong")],
        &dir,
    );
    assert_eq!(code(&o), 2);
    let o = weles_env(
        &["policy", "sign", "-k", p(&key), p(&pol)],
        &[("WELES_KEY_PASSPHRASE", "s3cret")],
        &dir,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = weles(&[
        "policy",
        "verify",
        "--signer",
        &format!("{}.pub", p(&key)),
        p(&pol),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
}

fn sha256sum(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn rootfs_generation_selects_executables_libraries_and_included_files() {
    let dir = tempdir("rootfs");
    let root = dir.join("root");
    for d in ["usr/bin", "usr/lib", "etc/ssh", "proc/1", "var"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let write = |rel: &str, content: &[u8], mode: u32| {
        let f = root.join(rel);
        std::fs::write(&f, content).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755);
    write("usr/lib/libx.so.1", b"\x7fELF library", 0o644);
    write("usr/lib/notes.so.txt", b"not a library", 0o644);
    write("usr/lib/fake.so", b"no elf magic", 0o644);
    write("etc/ssh/sshd_config", b"Port 22\n", 0o644);
    write("etc/hostname", b"vm\n", 0o644);
    write("proc/1/exe", b"pseudo", 0o755);
    write("var/skipme", b"#!/bin/sh\n", 0o755);
    std::os::unix::fs::symlink("tool", root.join("usr/bin/alias")).unwrap();

    let out = dir.join("gen.toml");
    let o = weles(&[
        "policy",
        "generate",
        "--rootfs",
        p(&root),
        "--include",
        "^/etc/ssh/",
        "--exclude",
        "^/var/",
        "--ignore",
        "^/tmp/",
        "-o",
        p(&out),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let doc: toml::Value = toml::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let digests = doc["ima"]["digests"].as_table().unwrap();
    let mut paths: Vec<&str> = digests.keys().map(String::as_str).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/etc/ssh/sshd_config",
            "/usr/bin/tool",
            "/usr/lib/libx.so.1"
        ]
    );
    assert_eq!(
        digests["/usr/bin/tool"][0].as_str().unwrap(),
        format!("sha256:{}", sha256sum(&root.join("usr/bin/tool")))
    );
    assert_eq!(doc["ima"]["excludes"][0].as_str(), Some("^/tmp/"));

    // The generated policy accepts a log of those files and refuses a changed one.
    let mut log = Vec::new();
    for (path, file) in [
        ("/usr/bin/tool", "usr/bin/tool"),
        ("/usr/lib/libx.so.1", "usr/lib/libx.so.1"),
    ] {
        let d = Bank::Sha256.hash(&[&std::fs::read(root.join(file)).unwrap()]);
        let data = template_data(
            ByteOrder::Little,
            &[
                &d_ng(HashAlgorithm::Sha256, d.as_bytes()),
                &n_ng(path.as_bytes()),
            ],
        );
        binary_entry(&mut log, ByteOrder::Little, 10, "ima-ng", &data, false);
    }
    let log_path = dir.join("run.bin");
    std::fs::write(&log_path, &log).unwrap();
    let o = weles(&["ima", "verify", "--log", p(&log_path), "--policy", p(&out)]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    write("usr/bin/tool", b"#!/bin/sh\necho tampered\n", 0o755);
    let mut bad = Vec::new();
    let d = Bank::Sha256.hash(&[&std::fs::read(root.join("usr/bin/tool")).unwrap()]);
    let data = template_data(
        ByteOrder::Little,
        &[
            &d_ng(HashAlgorithm::Sha256, d.as_bytes()),
            &n_ng(b"/usr/bin/tool"),
        ],
    );
    binary_entry(&mut bad, ByteOrder::Little, 10, "ima-ng", &data, false);
    std::fs::write(&log_path, &bad).unwrap();
    let o = weles(&[
        "ima",
        "verify",
        "--log",
        p(&log_path),
        "--policy",
        p(&out),
        "--json",
    ]);
    assert_eq!(code(&o), 1);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["violations"][0]["reason"], "digest_mismatch");

    let o = weles(&["policy", "generate", "--rootfs", "/nonexistent"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn show_lists_entries() {
    let o = weles(&[
        "ima",
        "show",
        "--log",
        p(&fixture("ima-sig-sha256").join("binary_runtime_measurements")),
    ]);
    assert_eq!(code(&o), 0);
    let out = text(&o);
    assert_eq!(out.lines().count(), 9);
    assert!(
        out.contains("/signed/hello-ec.sh [signed]") && out.contains("[violation]"),
        "{out}"
    );
    let o = weles(&[
        "ima",
        "show",
        "--json",
        "--log",
        p(&fixture("ima-legacy-sha1").join("ascii_runtime_measurements")),
    ]);
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["path"], "boot_aggregate");
    assert_eq!(first["template_hash_ok"], true);
}
