//! weles-vtpm started with swtpm's own arguments, driven by the real tpm2-tools and by raw
//! control-channel requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use weles_vtpm::ctrl::{self, Request};

mod support;
use support::{Vtpm, tempdir};

fn sha256_hex(data: &[u8]) -> String {
    let o = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut o = o;
    o.stdin.take().unwrap().write_all(data).unwrap();
    String::from_utf8(o.wait_with_output().unwrap().stdout).unwrap()[..64].to_string()
}

#[test]
fn tpm2_tools_work_as_with_swtpm() {
    let dir = tempdir("tools");
    let t = Vtpm::start(&dir);
    assert!(
        t.ok(&["tpm2_getcap", "properties-fixed"])
            .contains("value: \"2.0\"")
    );

    // PCR 10: one extend from zero is sha256(zero || digest).
    let d = sha256_hex(b"weles");
    t.ok(&["tpm2_pcrextend", &format!("10:sha256={d}")]);
    let mut pre = vec![0u8; 32];
    pre.extend(hex_bytes(&d));
    let expected = sha256_hex(&pre).to_uppercase();
    assert!(
        t.ok(&["tpm2_pcrread", "sha256:10"]).contains(&expected),
        "PCR 10 is not {expected}"
    );

    t.ok(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    t.ok(&["tpm2_flushcontext", "-t"]);
    t.ok(&["tpm2_flushcontext", "-s"]);
    t.ok(&[
        "tpm2_createak",
        "-C",
        "ek.ctx",
        "-c",
        "ak.ctx",
        "-G",
        "ecc",
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-u",
        "ak.pub",
        "-f",
        "pem",
        "-n",
        "ak.name",
    ]);
    t.ok(&["tpm2_flushcontext", "-t"]);
    t.ok(&["tpm2_flushcontext", "-s"]);
    t.ok(&[
        "tpm2_quote",
        "-c",
        "ak.ctx",
        "-l",
        "sha256:0,10",
        "-q",
        "0011223344",
        "-m",
        "q.msg",
        "-s",
        "q.sig",
        "-o",
        "q.pcrs",
        "-g",
        "sha256",
    ]);
    let checkquote = |nonce: &str| {
        let args = ["-u", "ak.pub", "-m", "q.msg", "-s", "q.sig", "-f", "q.pcrs"];
        let mut cmd = vec!["tpm2_checkquote"];
        cmd.extend(args);
        cmd.extend(["-g", "sha256", "-q", nonce]);
        t.tool(&cmd)
    };
    let good = checkquote("0011223344");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(!checkquote("0011223345").status.success());
    t.ok(&["tpm2_flushcontext", "-t"]);

    t.ok(&[
        "tpm2_nvdefine",
        "0x1500016",
        "-C",
        "o",
        "-s",
        "32",
        "-a",
        "ownerread|ownerwrite|authread|authwrite",
    ]);
    std::fs::write(dir.join("nv.in"), b"weles nv data").unwrap();
    t.ok(&["tpm2_nvwrite", "0x1500016", "-C", "o", "-i", "nv.in"]);
    t.ok(&[
        "tpm2_nvread",
        "0x1500016",
        "-C",
        "o",
        "-s",
        "13",
        "-o",
        "nv.out",
    ]);
    assert_eq!(std::fs::read(dir.join("nv.out")).unwrap(), b"weles nv data");

    // No resource manager (as with swtpm): tools leave transient objects loaded; flush them.
    t.ok(&["tpm2_flushcontext", "-t"]);
    t.ok(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc",
        "-c",
        "primary.ctx",
    ]);
    t.ok(&["tpm2_flushcontext", "-t"]);
    t.ok(&[
        "tpm2_create",
        "-C",
        "primary.ctx",
        "-G",
        "ecc",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
    ]);
    t.ok(&["tpm2_flushcontext", "-t"]);
    t.ok(&[
        "tpm2_load",
        "-C",
        "primary.ctx",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
        "-c",
        "key.ctx",
    ]);
    t.ok(&["tpm2_flushcontext", "-t"]);
    t.ok(&[
        "tpm2_sign",
        "-c",
        "key.ctx",
        "-g",
        "sha256",
        "-o",
        "sig.bin",
        "nv.in",
    ]);
    t.ok(&["tpm2_flushcontext", "-t"]);
    t.ok(&[
        "tpm2_verifysignature",
        "-c",
        "key.ctx",
        "-g",
        "sha256",
        "-m",
        "nv.in",
        "-s",
        "sig.bin",
    ]);
    t.ok(&["tpm2_flushcontext", "-t"]);
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn keys_and_nv_survive_a_restart() {
    let dir = tempdir("restart");
    {
        let t = Vtpm::start(&dir);
        t.ok(&[
            "tpm2_createprimary",
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc",
            "-c",
            "primary.ctx",
        ]);
        t.ok(&[
            "tpm2_evictcontrol",
            "-C",
            "o",
            "-c",
            "primary.ctx",
            "0x81000005",
        ]);
        t.ok(&["tpm2_flushcontext", "-t"]);
        t.ok(&[
            "tpm2_nvdefine",
            "0x1500020",
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "ownerread|ownerwrite",
        ]);
        std::fs::write(dir.join("nv.in"), b"survives").unwrap();
        t.ok(&["tpm2_nvwrite", "0x1500020", "-C", "o", "-i", "nv.in"]);
        // Dropping kills the process (SIGKILL): only what libtpms already stored survives.
    }
    let t = Vtpm::start(&dir);
    assert!(
        t.ok(&["tpm2_readpublic", "-c", "0x81000005"])
            .contains("name:")
    );
    t.ok(&[
        "tpm2_nvread",
        "0x1500020",
        "-C",
        "o",
        "-s",
        "8",
        "-o",
        "nv.out",
    ]);
    assert_eq!(std::fs::read(dir.join("nv.out")).unwrap(), b"survives");
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

#[test]
fn control_channel_answers_like_swtpm_and_refuses_garbage() {
    let dir = tempdir("ctrl");
    let t = Vtpm::start(&dir);
    let caps = u64::from_be_bytes(t.ctrl(&Request::GetCapability, 8).try_into().unwrap());
    assert_eq!(caps, ctrl::CAPABILITIES);
    let est = t.ctrl(&Request::GetTpmEstablished, 8);
    assert_eq!(be32(&est), 0);
    assert_eq!(
        be32(&t.ctrl(&Request::SetLocality { locality: 5 }, 4)),
        61,
        "TPM_BAD_LOCALITY"
    );
    assert_eq!(be32(&t.ctrl(&Request::SetLocality { locality: 0 }, 4)), 0);
    assert_eq!(
        be32(&t.ctrl(&Request::Unknown(0x99), 4)),
        10,
        "TPM_BAD_ORDINAL"
    );
    let bs = t.ctrl(&Request::SetBufferSize { size: 0 }, 16);
    assert_eq!((be32(&bs), be32(&bs[4..])), (0, 4096));
    assert_eq!(
        be32(&t.ctrl(&Request::SetBufferSize { size: 2048 }, 4)),
        10,
        "refused while running"
    );
    let info = t.ctrl(
        &Request::GetInfo {
            flags: 1,
            offset: 0,
        },
        12,
    );
    assert_eq!(be32(&info), 0);
    let blob = t.ctrl(
        &Request::GetStateBlob {
            flags: 0,
            kind: 1,
            offset: 0,
        },
        16,
    );
    assert_eq!(be32(&blob), 0);
    assert!(be32(&blob[12..]) > 1000, "permanent state blob");

    // A hash-data request claiming 4 GiB is refused at once, not awaited.
    let mut s = TcpStream::connect(("127.0.0.1", t.ctrl)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut evil = ctrl::cmd::HASH_DATA.to_be_bytes().to_vec();
    evil.extend(u32::MAX.to_be_bytes());
    s.write_all(&evil).unwrap();
    let mut r = [0u8; 4];
    s.read_exact(&mut r).unwrap();
    assert_eq!(be32(&r), 3, "TPM_BAD_PARAMETER");

    // Data channel: a frame claiming 3 bytes cannot be delimited: error response, then closed.
    let mut d = TcpStream::connect(("127.0.0.1", t.data)).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    d.write_all(&[0x80, 0x01, 0, 0, 0, 3, 0, 0, 1, 0x44])
        .unwrap();
    let mut resp = Vec::new();
    d.read_to_end(&mut resp).unwrap();
    assert_eq!(resp, [0x80, 1, 0, 0, 0, 10, 0, 0, 1, 0x42]);
    // Garbage that is a well-sized frame goes to the TPM, which answers with an error code.
    let mut d = TcpStream::connect(("127.0.0.1", t.data)).unwrap();
    d.write_all(&[0xde, 0xad, 0, 0, 0, 12, 0xff, 0xff, 0xff, 0xff, 1, 2])
        .unwrap();
    let mut head = [0u8; 10];
    d.read_exact(&mut head).unwrap();
    assert_ne!(be32(&head[6..]), 0);
    drop(d);

    // Still serving: STOP makes commands fail, INIT brings the TPM back.
    assert_eq!(be32(&t.ctrl(&Request::Stop, 4)), 0);
    assert!(!t.tool(&["tpm2_pcrread", "sha256:10"]).status.success());
    assert_eq!(be32(&t.ctrl(&Request::Init { flags: 0 }, 4)), 0);
    t.ok(&["tpm2_startup", "-c"]);
    t.ok(&["tpm2_pcrread", "sha256:10"]);
}
