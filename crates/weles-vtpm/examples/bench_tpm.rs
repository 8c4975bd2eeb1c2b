//! TPM command latency over swtpm-style data sockets: the same raw TPM 2.0 frames to each TPM.
//!
//!     cargo run --release -p weles-vtpm --example bench_tpm -- PORT[:LABEL] [PORT[:LABEL] ...]
//!
//! Times PCR_Extend (sha256, PCR 16), CreatePrimary (ECC P-256 signing key; FlushContext not
//! timed), Sign (ECDSA P-256 / SHA-256) and Quote (restricted ECC P-256 key, PCR 16) and prints
//! one JSON line per TPM with the median and 99th percentile of each, in microseconds.
//!
//! With several TPMs the commands are interleaved: iteration i sends one command to every TPM
//! in turn (the order rotating with i), so slow drifts of the machine (frequency, other load,
//! idle states) fall on all of them alike and the ratios compare like with like.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

fn command(tag: u16, cc: u32, handles: &[u32], with_pw_session: bool, params: &[u8]) -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(&tag.to_be_bytes());
    c.extend_from_slice(&0u32.to_be_bytes());
    c.extend_from_slice(&cc.to_be_bytes());
    for h in handles {
        c.extend_from_slice(&h.to_be_bytes());
    }
    if with_pw_session {
        // authorizationSize, TPM_RS_PW, empty nonce, attributes 0, empty password.
        c.extend_from_slice(&9u32.to_be_bytes());
        c.extend_from_slice(&0x4000_0009u32.to_be_bytes());
        c.extend_from_slice(&[0, 0, 0, 0, 0]);
    }
    c.extend_from_slice(params);
    let len = c.len() as u32;
    c[2..6].copy_from_slice(&len.to_be_bytes());
    c
}

/// Sends a command and returns its response; retries TPM_RC_RETRY (0x922) as clients must.
fn send(s: &mut TcpStream, cmd: &[u8]) -> Vec<u8> {
    for _ in 0..20 {
        let resp = send_once(s, cmd);
        if u32::from_be_bytes(resp[6..10].try_into().unwrap()) != 0x922 {
            let rc = u32::from_be_bytes(resp[6..10].try_into().unwrap());
            assert_eq!(rc, 0, "TPM error {rc:#x} for command {:02x?}", &cmd[6..10]);
            return resp;
        }
    }
    panic!("TPM kept answering TPM_RC_RETRY");
}

fn send_once(s: &mut TcpStream, cmd: &[u8]) -> Vec<u8> {
    s.write_all(cmd).unwrap();
    let mut head = [0u8; 10];
    s.read_exact(&mut head).unwrap();
    let size = u32::from_be_bytes(head[2..6].try_into().unwrap()) as usize;
    let mut resp = head.to_vec();
    resp.resize(size, 0);
    s.read_exact(&mut resp[10..]).unwrap();
    resp
}

/// TPM2B_PUBLIC of an ECC P-256 ECDSA/SHA-256 signing key; `restricted` for a quoting key.
fn ecc_signing_template(restricted: bool) -> Vec<u8> {
    let mut attrs: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 18);
    if restricted {
        attrs |= 1 << 16;
    }
    let mut t = Vec::new();
    t.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
    t.extend_from_slice(&0x000bu16.to_be_bytes()); // nameAlg sha256
    t.extend_from_slice(&attrs.to_be_bytes());
    t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric NULL
    t.extend_from_slice(&0x0018u16.to_be_bytes()); // ECDSA
    t.extend_from_slice(&0x000bu16.to_be_bytes()); // sha256
    t.extend_from_slice(&0x0003u16.to_be_bytes()); // NIST P-256
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // kdf NULL
    t.extend_from_slice(&[0, 0, 0, 0]); // unique x, y empty
    let mut out = (t.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

fn create_primary(restricted: bool) -> Vec<u8> {
    let mut p = vec![0, 4, 0, 0, 0, 0]; // TPM2B_SENSITIVE_CREATE: empty auth and data
    p.extend_from_slice(&ecc_signing_template(restricted));
    p.extend_from_slice(&[0, 0]); // outsideInfo
    p.extend_from_slice(&0u32.to_be_bytes()); // creationPCR: none
    command(0x8002, 0x131, &[0x4000_0001], true, &p)
}

fn handle_of(resp: &[u8]) -> u32 {
    u32::from_be_bytes(resp[10..14].try_into().unwrap())
}

fn flush(s: &mut TcpStream, h: u32) {
    send(s, &command(0x8001, 0x165, &[h], false, &[]));
}

fn stats(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    [p(0.5), p(0.99)]
}

struct Tpm {
    label: String,
    s: TcpStream,
}

/// Runs `n` iterations; in each, `f` once per TPM (rotating order). `f` returns the microseconds
/// of the part it times. Returns the samples per TPM.
fn interleaved(
    tpms: &mut [Tpm],
    n: usize,
    mut f: impl FnMut(usize, &mut TcpStream) -> f64,
) -> Vec<Vec<f64>> {
    let mut samples = vec![Vec::with_capacity(n); tpms.len()];
    for i in 0..n {
        for k in 0..tpms.len() {
            let j = (i + k) % tpms.len();
            samples[j].push(f(j, &mut tpms[j].s));
        }
    }
    samples
}

/// Microseconds `f` took.
fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e6
}

fn main() {
    let mut tpms: Vec<Tpm> = std::env::args()
        .skip(1)
        .map(|a| {
            let (port, label) = a.split_once(':').unwrap_or((&a, &a));
            let port: u16 = port.parse().expect("PORT[:LABEL]");
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_nodelay(true).unwrap();
            Tpm {
                label: label.to_string(),
                s,
            }
        })
        .collect();
    assert!(!tpms.is_empty(), "usage: bench_tpm PORT[:LABEL] ...");

    let mut ext = vec![0, 0, 0, 1, 0, 0x0b];
    ext.extend_from_slice(&[0x5a; 32]);
    let extend = command(0x8002, 0x182, &[16], true, &ext);
    interleaved(&mut tpms, 50, |_, s| {
        timed(|| {
            send(s, &extend);
        })
    });
    let extend_us = interleaved(&mut tpms, 2000, |_, s| {
        timed(|| {
            send(s, &extend);
        })
    });

    // CreatePrimary; the FlushContext after it is not timed.
    let cp = create_primary(false);
    let create_us = interleaved(&mut tpms, 100, |_, s| {
        let mut r = Vec::new();
        let us = timed(|| r = send(s, &cp));
        flush(s, handle_of(&r));
        us
    });

    let mut sp = vec![0, 32];
    sp.extend_from_slice(&[0x42; 32]);
    sp.extend_from_slice(&[0x00, 0x18, 0x00, 0x0b]); // ECDSA, sha256
    sp.extend_from_slice(&[0x80, 0x24, 0x40, 0x00, 0x00, 0x07, 0x00, 0x00]); // NULL ticket
    let signs: Vec<(u32, Vec<u8>)> = tpms
        .iter_mut()
        .map(|t| {
            let key = handle_of(&send(&mut t.s, &cp));
            (key, command(0x8002, 0x15d, &[key], true, &sp))
        })
        .collect();
    let sign_us = interleaved(&mut tpms, 500, |j, s| {
        timed(|| {
            send(s, &signs[j].1);
        })
    });
    for (t, (key, _)) in tpms.iter_mut().zip(&signs) {
        flush(&mut t.s, *key);
    }

    let mut qp = vec![0, 8];
    qp.extend_from_slice(b"noncenon");
    qp.extend_from_slice(&[0x00, 0x10]); // scheme NULL: the key's
    qp.extend_from_slice(&[0, 0, 0, 1, 0x00, 0x0b, 3, 0x00, 0x00, 0x01]); // sha256:16
    let quotes: Vec<(u32, Vec<u8>)> = tpms
        .iter_mut()
        .map(|t| {
            let ak = handle_of(&send(&mut t.s, &create_primary(true)));
            (ak, command(0x8002, 0x158, &[ak], true, &qp))
        })
        .collect();
    let quote_us = interleaved(&mut tpms, 500, |j, s| {
        timed(|| {
            send(s, &quotes[j].1);
        })
    });
    for (t, (ak, _)) in tpms.iter_mut().zip(&quotes) {
        flush(&mut t.s, *ak);
    }

    for (j, t) in tpms.iter().enumerate() {
        let [e50, e99] = stats(extend_us[j].clone());
        let [c50, c99] = stats(create_us[j].clone());
        let [s50, s99] = stats(sign_us[j].clone());
        let [q50, q99] = stats(quote_us[j].clone());
        println!(
            "{{\"label\": \"{}\", \"pcr_extend_us\": [{e50:.1}, {e99:.1}], \"create_primary_us\": [{c50:.1}, {c99:.1}], \"sign_us\": [{s50:.1}, {s99:.1}], \"quote_us\": [{q50:.1}, {q99:.1}]}}",
            t.label
        );
    }
}
