//! The signing gate's TPM side, with libtpms as the judge: weles-tpm's structures (the
//! manager's authority key A, the PolicySigned digest, the host key check, the data A signs,
//! the cpHash of TPM2_Sign) against what the TPM computes and accepts, driven by tpm2-tools.

use p256::ecdsa::SigningKey;
use weles_tpm::host_key::{self, HostKeyError};
use weles_tpm::policy::{AuthorityKey, authorization_data, sign_cp_hash};
use weles_tpm::public::EccPublic;

mod support;
use support::{Vtpm, tempdir};

fn authority() -> AuthorityKey {
    AuthorityKey::new(SigningKey::from_slice(&[0x5a; 32]).unwrap())
}

fn read(tpm: &Vtpm, f: &str) -> Vec<u8> {
    std::fs::read(tpm.dir.join(f)).unwrap()
}

fn write(tpm: &Vtpm, f: &str, b: &[u8]) {
    std::fs::write(tpm.dir.join(f), b).unwrap();
}

/// Creates and loads a host-key candidate under a fresh primary; returns its parsed public area
/// and the context file name.
fn create_key(tpm: &Vtpm, tag: &str, attributes: &str, policy: &[u8; 32]) -> (EccPublic, Vec<u8>) {
    write(tpm, &format!("{tag}.policy"), policy);
    // Without a resource manager every tool leaves the objects it loaded behind; the context
    // files bring them back when needed, and libtpms holds only three at once.
    tpm.ok(&["tpm2_flushcontext", "-t"]);
    tpm.ok(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc",
        "-c",
        "prim.ctx",
    ]);
    tpm.ok(&[
        "tpm2_create",
        "-C",
        "prim.ctx",
        "-G",
        "ecc256:ecdsa-sha256",
        "-a",
        attributes,
        "-L",
        &format!("{tag}.policy"),
        "-u",
        &format!("{tag}.pub"),
        "-r",
        &format!("{tag}.priv"),
    ]);
    tpm.ok(&["tpm2_flushcontext", "-t"]);
    tpm.ok(&[
        "tpm2_load",
        "-C",
        "prim.ctx",
        "-u",
        &format!("{tag}.pub"),
        "-r",
        &format!("{tag}.priv"),
        "-c",
        &format!("{tag}.ctx"),
    ]);
    tpm.ok(&[
        "tpm2_readpublic",
        "-c",
        &format!("{tag}.ctx"),
        "-o",
        &format!("{tag}.tss"),
        "-n",
        &format!("{tag}.name"),
    ]);
    tpm.ok(&["tpm2_flushcontext", "-t"]);
    let public = EccPublic::parse_tpm2b(&read(tpm, &format!("{tag}.tss")))
        .expect("the TPM's public area parses");
    (public, read(tpm, &format!("{tag}.name")))
}

/// The TPM said no, for the reason given (not, say, for lack of memory).
fn refused(o: &std::process::Output, why: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted, expected a refusal ({why})");
    assert!(err.contains(why), "refused, but not for {why:?}: {err}");
}

#[test]
fn the_tpm_agrees_with_our_names_policies_cphash_and_signed_authorizations() {
    let dir = tempdir("policysigned");
    let tpm = Vtpm::start(&dir);
    let a = authority();
    let vm = "vm-42";
    let vm_hex = hex::encode(vm);

    // A's public area loads, and the TPM names it as we do.
    write(&tpm, "A.tss", &a.public().marshal_tpm2b());
    tpm.ok(&["tpm2_loadexternal", "-C", "n", "-u", "A.tss", "-c", "A.ctx"]);
    tpm.ok(&["tpm2_readpublic", "-c", "A.ctx", "-n", "A.name"]);
    assert_eq!(read(&tpm, "A.name"), a.name());

    // PolicySigned(A, vm) in a trial session gives our policy digest.
    write(
        &tpm,
        "dummy.sig",
        a.authorize(&[], 0, &[], vm.as_bytes()).to_der().as_bytes(),
    );
    tpm.ok(&["tpm2_startauthsession", "-S", "trial.ctx"]);
    tpm.ok(&[
        "tpm2_policysigned",
        "-S",
        "trial.ctx",
        "-c",
        "A.ctx",
        "-g",
        "sha256",
        "-s",
        "dummy.sig",
        "-f",
        "ecdsa",
        "-q",
        &vm_hex,
        "-L",
        "trial.dgst",
    ]);
    tpm.ok(&["tpm2_flushcontext", "trial.ctx"]);
    let policy = a.host_key_policy(vm);
    assert_eq!(read(&tpm, "trial.dgst"), policy);

    // A host key made in the TPM with that policy passes our check; the name is ours too.
    let good = "fixedtpm|fixedparent|sensitivedataorigin|sign|adminwithpolicy|noda";
    let (key, key_name) = create_key(&tpm, "host", good, &policy);
    assert_eq!(host_key::check(&key, &policy), Ok(()));
    assert_eq!(key.name(), key_name);
    assert_eq!(key.attributes, host_key::template(&policy).attributes);
    // ...and keys that are not that key do not.
    let (with_password, _) = create_key(&tpm, "pw", &format!("{good}|userwithauth"), &policy);
    assert!(matches!(
        host_key::check(&with_password, &policy),
        Err(HostKeyError::Forbidden(_))
    ));
    let (other_vm, _) = create_key(&tpm, "other", good, &a.host_key_policy("vm-43"));
    assert_eq!(
        host_key::check(&other_vm, &policy),
        Err(HostKeyError::WrongPolicy)
    );
    let (no_admin, _) = create_key(
        &tpm,
        "admin",
        "fixedtpm|fixedparent|sensitivedataorigin|sign",
        &policy,
    );
    assert!(matches!(
        host_key::check(&no_admin, &policy),
        Err(HostKeyError::Missing(_))
    ));

    // The cpHash of TPM2_Sign(host key, digest) is ours.
    let digest: [u8; 32] = std::array::from_fn(|i| i as u8);
    write(&tpm, "digest.bin", &digest);
    tpm.ok(&[
        "tpm2_sign",
        "-c",
        "host.ctx",
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-d",
        "--cphash",
        "cp.bin",
        "digest.bin",
    ]);
    let cp = sign_cp_hash(&key_name, &digest);
    assert_eq!(
        read(&tpm, "cp.bin")[2..],
        cp,
        "tpm2-tools' cpHash (after its hash alg id)"
    );

    // A real policy session: the TPM takes A's signature over its nonce, the cpHash and the VM,
    // and then signs with the host key.
    let session = |name: &str, policy_ref: &str, cp_file: &str, old_nonce: Option<&[u8]>| {
        tpm.ok(&["tpm2_flushcontext", "-t"]);
        tpm.ok(&["tpm2_startauthsession", "--policy-session", "-S", name]);
        tpm.ok(&[
            "tpm2_policysigned",
            "-S",
            name,
            "-c",
            "A.ctx",
            "-g",
            "sha256",
            "-x",
            "-q",
            &hex::encode(policy_ref),
            "--cphash-input",
            cp_file,
            "--raw-data",
            "raw.bin",
        ]);
        let raw = read(&tpm, "raw.bin");
        let nonce = raw[..raw.len() - 4 - 32 - policy_ref.len()].to_vec();
        let cp = read(&tpm, cp_file)[2..].to_vec();
        assert_eq!(
            raw,
            authorization_data(&nonce, 0, &cp, policy_ref.as_bytes())
        );
        write(&tpm, &format!("{name}.nonce"), &nonce);
        let sig = a.authorize(old_nonce.unwrap_or(&nonce), 0, &cp, policy_ref.as_bytes());
        write(&tpm, "auth.sig", sig.to_der().as_bytes());
        tpm.tool(&[
            "tpm2_policysigned",
            "-S",
            name,
            "-c",
            "A.ctx",
            "-g",
            "sha256",
            "-x",
            "-q",
            &hex::encode(policy_ref),
            "--cphash-input",
            cp_file,
            "-s",
            "auth.sig",
            "-f",
            "ecdsa",
        ])
    };
    let sign = |name: &str, digest_file: &str| {
        tpm.ok(&["tpm2_flushcontext", "-t"]);
        tpm.tool(&[
            "tpm2_sign",
            "-c",
            "host.ctx",
            "-g",
            "sha256",
            "-s",
            "ecdsa",
            "-d",
            "-p",
            &format!("session:{name}"),
            "-o",
            "out.sig",
            digest_file,
        ])
    };
    assert!(session("s1.ctx", vm, "cp.bin", None).status.success());
    let signed = sign("s1.ctx", "digest.bin");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    tpm.ok(&["tpm2_flushcontext", "-t"]);
    tpm.ok(&[
        "tpm2_verifysignature",
        "-c",
        "host.ctx",
        "-d",
        "digest.bin",
        "-s",
        "out.sig",
    ]);

    // Refused by the TPM: an authorization for another VM (its policy does not match)...
    assert!(session("s2.ctx", "vm-43", "cp.bin", None).status.success());
    refused(&sign("s2.ctx", "digest.bin"), "policy check failed");
    tpm.ok(&["tpm2_flushcontext", "s2.ctx"]);
    // ...one for another digest than the one signed...
    write(&tpm, "other.bin", &[9u8; 32]);
    assert!(session("s3.ctx", vm, "cp.bin", None).status.success());
    refused(&sign("s3.ctx", "other.bin"), "policy check failed");
    tpm.ok(&["tpm2_flushcontext", "s3.ctx"]);
    // ...and a replayed one (signed over an earlier session's nonce).
    let old = read(&tpm, "s1.ctx.nonce");
    refused(&session("s4.ctx", vm, "cp.bin", Some(&old)), "signature");
    let _ = std::fs::remove_dir_all(&dir);
}
