//! Policies judging real guest logs (testdata/ima) and synthetic entries.

use std::path::{Path, PathBuf};
use std::process::Command;

use weles_ima::write::{binary_entry, d_ng, n_ng, template_data};
use weles_ima::{Bank, ByteOrder, Config, HashAlgorithm, Reason, Verifier, log::parse_all};
use weles_policy::generate::document_from_log;
use weles_policy::{Policy, PolicyDocument, to_toml};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/ima")
        .join(name)
}

fn log(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name).join("binary_runtime_measurements")).unwrap()
}

/// (index, reason) of every violation.
fn judge(log: &[u8], policy: &Policy) -> Vec<(u64, Reason)> {
    let mut v = Verifier::new(Config::default());
    v.verify_all(log, policy).unwrap();
    v.violations().iter().map(|x| (x.index, x.reason)).collect()
}

fn from_log(name: &str) -> PolicyDocument {
    let bytes = log(name);
    let (_, entries) = parse_all(&bytes, Default::default()).unwrap();
    document_from_log(entries, 1).0
}

fn compile(doc: &PolicyDocument) -> Policy {
    // Through TOML and back: what users write is what is tested.
    Policy::load(to_toml(doc).as_bytes(), "test.toml").unwrap()
}

fn cert(name: &str) -> String {
    std::fs::read_to_string(fixture("ima-sig-sha256").join("keys").join(name)).unwrap()
}

#[test]
fn known_good_run_complies_except_its_violation_entry() {
    for name in [
        "ima-ng-sha256",
        "ima-sig-sha256",
        "ima-sigv2-sha256",
        "ima-legacy-sha1",
    ] {
        let mut doc = from_log(name);
        let p = compile(&doc);
        assert_eq!(
            judge(&log(name), &p),
            vec![(8, Reason::ViolationEntry)],
            "{name}"
        );
        doc.ima.allow_violations = true;
        assert!(judge(&log(name), &compile(&doc)).is_empty(), "{name}");
    }
}

#[test]
fn unlisted_and_changed_files_are_named_with_their_reason() {
    let mut doc = from_log("ima-ng-sha256");
    doc.ima.allow_violations = true;
    doc.ima.digests.remove("/unsigned/hello.sh");
    doc.ima.digests.insert(
        "/bin/busybox".into(),
        vec![format!("sha256:{}", "00".repeat(32))],
    );
    let mut v = Verifier::new(Config::default());
    let p = compile(&doc);
    v.verify_all(&log("ima-ng-sha256"), &p).unwrap();
    let got: Vec<_> = v
        .violations()
        .iter()
        .map(|x| (x.index, x.reason, x.path.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, Reason::DigestMismatch, "/bin/busybox"),
            (5, Reason::NotInPolicy, "/unsigned/hello.sh")
        ]
    );
    assert!(
        v.violations()[0]
            .detail
            .contains("the policy allows sha256:0000")
    );
    assert_eq!(
        v.violations()[1].digest.as_deref(),
        Some("sha256:3c2391db1eeec0f13d33dd02fe76ef3c71ecf8b20be1231d8154841a228cac1a")
    );
}

#[test]
fn several_digests_per_path_excludes_and_boot_aggregate() {
    let mut doc = from_log("ima-ng-sha256");
    doc.ima.allow_violations = true;
    doc.ima
        .digests
        .get_mut("/bin/busybox")
        .unwrap()
        .insert(0, format!("sha256:{}", "11".repeat(32)));
    doc.ima.digests.remove("/tmp/s.sh");
    doc.ima.excludes = vec!["/tmp/".into()];
    assert!(judge(&log("ima-ng-sha256"), &compile(&doc)).is_empty());

    doc.ima.boot_aggregate = vec![format!("sha256:{}", "22".repeat(32))];
    assert_eq!(
        judge(&log("ima-ng-sha256"), &compile(&doc)),
        vec![(0, Reason::DigestMismatch)]
    );
}

#[test]
fn templates_and_digest_algorithms_can_be_restricted() {
    let mut doc = from_log("ima-sig-sha256");
    doc.ima.allow_violations = true;
    doc.ima.templates = Some(vec!["ima-ng".into()]);
    let got = judge(&log("ima-sig-sha256"), &compile(&doc));
    assert_eq!(got.len(), 9);
    assert!(got.iter().all(|(_, r)| *r == Reason::UnsupportedTemplate));

    let mut doc = from_log("ima-ng-sha256");
    doc.ima.allow_violations = true;
    doc.ima.digest_algorithms = Some(vec!["sha512".into()]);
    let got = judge(&log("ima-ng-sha256"), &compile(&doc));
    assert_eq!(got.len(), 8);
    assert!(got.iter().all(|(_, r)| *r == Reason::DigestMismatch));
}

fn signed_policy(keys: &[&str]) -> PolicyDocument {
    let mut doc = from_log("ima-sig-sha256");
    doc.ima.allow_violations = true;
    doc.ima.digests.retain(|p, _| !p.starts_with("/signed/"));
    for k in keys {
        doc.ima.keys.push(weles_policy::document::KeyEntry {
            name: Some(k.to_string()),
            pem: cert(k),
            keyid: None,
        });
    }
    doc
}

#[test]
fn files_signed_by_trusted_keys_pass_without_listing_digests() {
    let p = compile(&signed_policy(&["ima-rsa.crt", "ima-ec.crt"]));
    assert_eq!(p.keys.len(), 2);
    assert!(judge(&log("ima-sig-sha256"), &p).is_empty());
    assert!(judge(&log("ima-sigv2-sha256"), &p).is_empty());
    // Same files without signatures in the log (ima-ng): not in the policy.
    let got = judge(&log("ima-ng-sha256"), &p);
    assert_eq!(
        got,
        vec![
            (1, Reason::NotInPolicy),
            (3, Reason::NotInPolicy),
            (4, Reason::NotInPolicy)
        ]
    );
}

#[test]
fn signatures_by_untrusted_keys_are_bad_signatures() {
    let p = compile(&signed_policy(&["ima-rsa.crt"]));
    let mut v = Verifier::new(Config::default());
    v.verify_all(&log("ima-sig-sha256"), &p).unwrap();
    let got: Vec<_> = v.violations().iter().map(|x| (x.index, x.reason)).collect();
    assert_eq!(
        got,
        vec![(3, Reason::BadSignature), (4, Reason::BadSignature)]
    );
    assert!(
        v.violations()[0]
            .detail
            .contains("no trusted key has keyid f828b824"),
        "{}",
        v.violations()[0].detail
    );
}

/// Rewrites a real log with every signature's last byte flipped (and honest template hashes, as
/// an attacker controlling the guest would write them).
fn with_corrupted_signatures(name: &str) -> Vec<u8> {
    let bytes = log(name);
    let (_, entries) = parse_all(&bytes, Default::default()).unwrap();
    let mut out = Vec::new();
    for e in &entries {
        let mut data = e.data.to_vec();
        if let Some(r) = e.fields.sig.clone().filter(|r| !r.is_empty()) {
            data[r.end - 1] ^= 1;
        }
        binary_entry(
            &mut out,
            ByteOrder::Little,
            e.pcr,
            &e.template_name,
            &data,
            e.is_violation(),
        );
    }
    out
}

#[test]
fn corrupted_signatures_are_refused() {
    let p = compile(&signed_policy(&["ima-rsa.crt", "ima-ec.crt"]));
    let got = judge(&with_corrupted_signatures("ima-sig-sha256"), &p);
    assert_eq!(
        got,
        vec![
            (1, Reason::BadSignature),
            (3, Reason::BadSignature),
            (4, Reason::BadSignature)
        ]
    );
    // A corrupted signature on a file whose digest is listed still passes: the digest vouches.
    let mut doc = signed_policy(&["ima-rsa.crt", "ima-ec.crt"]);
    doc.ima
        .digests
        .extend(from_log("ima-sig-sha256").ima.digests);
    assert!(judge(&with_corrupted_signatures("ima-sig-sha256"), &compile(&doc)).is_empty());
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ima-modsig entry for `content` with an appended CMS signature made by `openssl cms`.
fn modsig_case(dir: &Path, key: &str, attrs: bool) -> (Vec<u8>, String) {
    match key {
        "rsa" => openssl(
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out",
                "c.pem", "-subj", "/CN=mod", "-days", "2",
            ],
            dir,
        ),
        _ => openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "k.pem",
                "-out",
                "c.pem",
                "-subj",
                "/CN=mod",
                "-days",
                "2",
            ],
            dir,
        ),
    }
    let content = b"\x7fELF pretend kernel module";
    std::fs::write(dir.join("m.ko"), content).unwrap();
    let mut args = vec![
        "cms", "-sign", "-binary", "-nocerts", "-md", "sha256", "-in", "m.ko", "-signer", "c.pem",
        "-inkey", "k.pem", "-outform", "DER", "-out", "m.p7s",
    ];
    if !attrs {
        args.push("-noattr");
    }
    openssl(&args, dir);
    let pkcs7 = std::fs::read(dir.join("m.p7s")).unwrap();
    let o = ByteOrder::Little;
    let whole = Bank::Sha256.hash(&[content, &pkcs7]);
    let unsigned = Bank::Sha256.hash(&[content]);
    let data = template_data(
        o,
        &[
            &d_ng(HashAlgorithm::Sha256, whole.as_bytes()),
            &n_ng(b"/lib/modules/m.ko"),
            b"",
            &d_ng(HashAlgorithm::Sha256, unsigned.as_bytes()),
            &pkcs7,
        ],
    );
    let mut log = Vec::new();
    binary_entry(&mut log, o, 10, "ima-modsig", &data, false);
    (log, std::fs::read_to_string(dir.join("c.pem")).unwrap())
}

#[test]
fn appended_module_signatures_verify_with_trusted_keys() {
    for (key, attrs) in [("rsa", false), ("rsa", true), ("ec", false), ("ec", true)] {
        let dir = tempdir();
        let (log, pem) = modsig_case(&dir, key, attrs);
        let mut doc = PolicyDocument::default();
        assert_eq!(judge(&log, &compile(&doc)), vec![(0, Reason::NotInPolicy)]);
        doc.ima.keys.push(weles_policy::document::KeyEntry {
            name: Some("modules".into()),
            pem,
            keyid: None,
        });
        assert!(
            judge(&log, &compile(&doc)).is_empty(),
            "{key} attrs={attrs}"
        );

        // The appended signature must cover the d-modsig digest.
        let (_, entries) = parse_all(&log, Default::default()).unwrap();
        let mut data = entries[0].data.to_vec();
        let r = entries[0]
            .fields
            .modsig_digest
            .as_ref()
            .unwrap()
            .bytes
            .clone();
        data[r.start] ^= 1;
        let mut forged = Vec::new();
        binary_entry(
            &mut forged,
            ByteOrder::Little,
            10,
            "ima-modsig",
            &data,
            false,
        );
        assert_eq!(
            judge(&forged, &compile(&doc)),
            vec![(0, Reason::BadSignature)],
            "{key} attrs={attrs}"
        );
    }
}

#[test]
fn ima_buf_entries_are_checked_by_name_and_content() {
    let o = ByteOrder::Little;
    let buf = b"BOOT_IMAGE=/vmlinuz root=/dev/vda";
    let good = Bank::Sha256.hash(&[buf]);
    let mut log = Vec::new();
    let data = template_data(
        o,
        &[
            &d_ng(HashAlgorithm::Sha256, good.as_bytes()),
            &n_ng(b"kexec-cmdline"),
            buf,
        ],
    );
    binary_entry(&mut log, o, 10, "ima-buf", &data, false);
    let mut lying = Vec::new();
    let data = template_data(
        o,
        &[
            &d_ng(HashAlgorithm::Sha256, good.as_bytes()),
            &n_ng(b"kexec-cmdline"),
            b"init=/bin/sh",
        ],
    );
    binary_entry(&mut lying, o, 10, "ima-buf", &data, false);

    let mut doc = PolicyDocument::default();
    assert_eq!(judge(&log, &compile(&doc)), vec![(0, Reason::NotInPolicy)]);
    doc.ima
        .buffers
        .insert("kexec-cmdline".into(), vec![good.to_string()]);
    assert!(judge(&log, &compile(&doc)).is_empty());
    assert_eq!(
        judge(&lying, &compile(&doc)),
        vec![(0, Reason::DigestMismatch)]
    );
}

#[test]
fn toml_errors_name_the_key_or_line() {
    let cases = [
        (
            "version = 1\nfoo = 2\n",
            "line 2, column 1",
            "unknown field",
        ),
        ("version = 0\n", "version", "at least 1"),
        (
            "version = 1\n[ima.digests]\n\"/bin/sh\" = [\"sha256:zz\"]\n",
            "ima.digests.\"/bin/sh\"[0]",
            "not hexadecimal",
        ),
        (
            "version = 1\n[ima]\nexcludes = [\"^/ok\", \"(unclosed\"]\n",
            "ima.excludes[1]",
            "regular expression",
        ),
        (
            "version = 1\n[ima]\ntemplates = [\"ima-ng\", \"evm-sig\"]\n",
            "ima.templates[1]",
            "unknown template",
        ),
        (
            "version = 1\n[[ima.keys]]\npem = \"nope\"\n",
            "ima.keys[0].pem",
            "not PEM",
        ),
        (
            "version = 1\n[enforcement]\npending_grace = \"2 weeks\"\n",
            "enforcement.pending_grace",
            "duration",
        ),
        (
            "version = 1\n[ssh]\nhostnames = [\"a b\"]\n",
            "ssh.hostnames[0]",
            "not a host name",
        ),
        (
            "schema = 2\nversion = 1\n",
            "schema",
            "unsupported schema 2",
        ),
        (
            "version = 1\n[ima.digests]\n\"/x\" = []\n",
            "ima.digests.\"/x\"",
            "lists no digest",
        ),
    ];
    for (text, location, message) in cases {
        let e = Policy::load(text.as_bytes(), "vm.toml").unwrap_err();
        assert_eq!(e.file, "vm.toml");
        assert!(
            e.location.contains(location) && e.message.contains(message),
            "{text:?}: {e}"
        );
    }
}

fn keylime(digests: &str, extra: &str) -> String {
    format!(
        r#"{{"meta": {{"version": 1, "generator": 0}}, "release": 0, "digests": {digests}, "excludes": [{extra}],
 "keyrings": {{}}, "ima": {{"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": null}},
 "ima-buf": {{}}, "verification-keys": ""}}"#
    )
}

#[test]
fn keylime_policies_are_read_as_is_and_errors_are_located() {
    let p = Policy::load(keylime(r#"{"boot_aggregate": ["6afd84b7558990aa4b9bdfc5e2f2c46ceb41f8de3591d5a29fe6528d5747cfda"]}"#, r#""^/(bin|etc|signed|unsigned|tmp)/""#).as_bytes(), "k.json").unwrap();
    assert_eq!(
        judge(&log("ima-ng-sha256"), &p),
        vec![(8, Reason::ViolationEntry)]
    );

    let cases = [
        (
            keylime(r#"{"/x": ["XYZ"]}"#, ""),
            "line 1, column",
            "digests[\"/x\"][0]",
        ),
        (
            keylime("{}", r#""(bad""#),
            "excludes[0]",
            "regular expression",
        ),
        (
            keylime("{}", "").replace(r#""release": 0,"#, ""),
            "document",
            "missing field `release`",
        ),
        (
            keylime("{}", "").replace(r#""dm_policy": null"#, r#""dm_policy": null, "x": 1"#),
            "ima",
            "unknown field",
        ),
        (
            keylime("{}", "").replace(r#""version": 1"#, r#""version": 2"#),
            "meta.version",
            "version 2",
        ),
        (
            format!("{} trailing", keylime("{}", "")),
            "line",
            "trailing",
        ),
    ];
    for (text, location, message) in cases {
        let e = Policy::load(text.as_bytes(), "k.json").unwrap_err();
        assert!(
            e.location.contains(location)
                && (e.message.contains(message) || e.location.contains(message)),
            "{e}"
        );
    }
}

#[test]
fn keylime_verification_keys_and_import_to_toml_keep_the_verdicts() {
    let dir = tempdir();
    let mut pubkeys = Vec::new();
    for k in ["ima-rsa.crt", "ima-ec.crt"] {
        std::fs::write(dir.join(k), cert(k)).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("openssl x509 -in {k} -pubkey -noout | openssl pkey -pubin -outform DER | base64 -w0"))
            .current_dir(&dir)
            .output()
            .unwrap();
        pubkeys.push(String::from_utf8(out.stdout).unwrap());
    }
    let vk = serde_json::json!({"keyids": [], "pubkeys": pubkeys}).to_string();
    let doc = signed_policy(&[]);
    let digests: serde_json::Map<String, serde_json::Value> = doc
        .ima
        .digests
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::json!(
                    v.iter()
                        .map(|d| d.split_once(':').unwrap().1)
                        .collect::<Vec<_>>()
                ),
            )
        })
        .collect();
    let mut kl = serde_json::json!({
        "meta": {"version": 1, "generator": 0}, "release": 3, "digests": digests, "excludes": [],
        "keyrings": {}, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": null},
        "ima-buf": {}, "verification-keys": vk,
    });
    kl["digests"]["boot_aggregate"] =
        serde_json::json!([doc.ima.boot_aggregate[0].split_once(':').unwrap().1]);
    let text = kl.to_string();
    let p = Policy::load(text.as_bytes(), "k.json").unwrap();
    assert_eq!(p.keys.len(), 2);
    assert_eq!(
        judge(&log("ima-sig-sha256"), &p),
        vec![(8, Reason::ViolationEntry)]
    );
    assert_eq!(
        judge(&log("ima-sigv2-sha256"), &p),
        vec![(8, Reason::ViolationEntry)]
    );

    let converted = weles_policy::keylime::to_document(text.as_bytes(), "k.json", 1).unwrap();
    assert_eq!(converted.version, 3);
    let toml = compile(&converted);
    for name in ["ima-sig-sha256", "ima-sigv2-sha256", "ima-ng-sha256"] {
        assert_eq!(judge(&log(name), &toml), judge(&log(name), &p), "{name}");
    }
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "weles-policy-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_003
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
}
