//! An ssh-agent (draft-miller-ssh-agent) serving exactly one key — the VM's host key in the
//! vTPM — to sshd's `HostKeyAgent`. Each signature needs the manager's authorization.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use weles_tpm::commands;
use weles_tpm::public::EccPublic;

use crate::gate::Gate;
use crate::tpm::Tpm;

const FAILURE: u8 = 5;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
/// Agent messages are small; anything larger is not one of ours.
const MAX_MESSAGE: usize = 256 * 1024;

const ALG: &str = "ecdsa-sha2-nistp256";

fn string(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s);
}

fn mpint(b: &mut Vec<u8>, v: &[u8]) {
    let v = {
        let z = v.iter().take_while(|x| **x == 0).count();
        &v[z..]
    };
    if v.first().is_some_and(|x| x & 0x80 != 0) {
        let mut p = vec![0];
        p.extend_from_slice(v);
        string(b, &p);
    } else {
        string(b, v);
    }
}

/// The OpenSSH key blob of a P-256 public area.
pub fn key_blob(public: &EccPublic) -> Vec<u8> {
    let mut q = vec![0x04];
    q.extend_from_slice(&public.x);
    q.extend_from_slice(&public.y);
    let mut b = Vec::new();
    string(&mut b, ALG.as_bytes());
    string(&mut b, b"nistp256");
    string(&mut b, &q);
    b
}

/// The host key as an OpenSSH public key line (what sshd's `HostKey` names beside
/// `HostKeyAgent`).
pub fn public_key_line(public: &EccPublic) -> String {
    use base64ct::Encoding;
    format!(
        "{ALG} {} weles-vtpm-host-key\n",
        base64ct::Base64::encode_string(&key_blob(public))
    )
}

/// Serves the agent socket until the process ends.
pub fn serve(path: &Path, tpm: PathBuf, gate: Arc<Gate>) -> io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("ssh-agent".into())
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let (tpm, gate) = (tpm.clone(), gate.clone());
                let _ = std::thread::Builder::new()
                    .name("ssh-agent-conn".into())
                    .spawn(move || connection(conn, &tpm, &gate));
            }
        })?;
    Ok(())
}

fn connection(mut s: UnixStream, tpm: &Path, gate: &Gate) {
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_MESSAGE {
            return;
        }
        let mut msg = vec![0u8; len];
        if s.read_exact(&mut msg).is_err() {
            return;
        }
        let reply = handle(&msg, tpm, gate).unwrap_or_else(|e| {
            eprintln!("weles-guest: ssh-agent: {e}");
            vec![FAILURE]
        });
        let mut out = (reply.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// The host key the manager set up: its handle and public area, read from the TPM.
pub fn host_key(tpm: &Path, gate: &Gate) -> Result<(u32, EccPublic), String> {
    let setup = gate.setup().ok_or("the manager has not set up signing")?;
    let mut t = Tpm::open(tpm).map_err(|e| format!("TPM {}: {e}", tpm.display()))?;
    let r = t
        .transmit(&commands::read_public(setup.handle))
        .map_err(|e| e.to_string())?;
    let (public, _) = commands::parse_read_public(&r).map_err(|e| format!("ReadPublic: {e}"))?;
    let public = EccPublic::parse(&public).map_err(|e| e.to_string())?;
    Ok((setup.handle, public))
}

fn handle(msg: &[u8], tpm: &Path, gate: &Gate) -> Result<Vec<u8>, String> {
    match msg[0] {
        REQUEST_IDENTITIES => {
            let (_, public) = host_key(tpm, gate)?;
            let mut r = vec![IDENTITIES_ANSWER];
            r.extend_from_slice(&1u32.to_be_bytes());
            string(&mut r, &key_blob(&public));
            string(&mut r, b"weles vTPM host key");
            Ok(r)
        }
        SIGN_REQUEST => {
            let (blob, data) = parse_sign_request(msg)?;
            let (_, public) = host_key(tpm, gate)?;
            if !is_our_key(blob, &public) {
                return Err("asked to sign with a key this agent does not hold".into());
            }
            // ecdsa-sha2-nistp256 signs SHA-256 of the data.
            let digest = Sha256::digest(data);
            let (r, s) = gate.sign(tpm, &digest)?;
            let mut inner = Vec::new();
            mpint(&mut inner, &r);
            mpint(&mut inner, &s);
            let mut sig = Vec::new();
            string(&mut sig, ALG.as_bytes());
            string(&mut sig, &inner);
            let mut out = vec![SIGN_RESPONSE];
            string(&mut out, &sig);
            Ok(out)
        }
        other => Err(format!("unsupported agent request {other}")),
    }
}

/// (key blob, data) of an SSH_AGENTC_SIGN_REQUEST (the flags that follow are not needed: an
/// ECDSA signature has one form).
pub fn parse_sign_request(msg: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let mut c = msg.get(1..).ok_or("empty agent request")?;
    let blob = take_string(&mut c)?;
    let data = take_string(&mut c)?;
    Ok((blob, data))
}

/// Fuzz entry point: agent requests and key blobs of any shape are refused without panicking.
pub fn fuzz_request(data: &[u8]) {
    if let Ok((blob, _)) = parse_sign_request(data) {
        let public = EccPublic {
            name_alg: 0x000b,
            attributes: 0,
            auth_policy: Vec::new(),
            scheme: 0x0018,
            scheme_hash: 0x000b,
            curve: 0x0003,
            x: vec![1; 32],
            y: vec![2; 32],
        };
        let _ = is_our_key(blob, &public);
    }
}

/// Whether `blob` is our key, plain or inside an OpenSSH certificate (sshd names the
/// certificate when it re-keys with one).
fn is_our_key(blob: &[u8], public: &EccPublic) -> bool {
    if blob == key_blob(public) {
        return true;
    }
    let mut c = blob;
    let (Ok(kind), Ok(_nonce), Ok(curve), Ok(q)) = (
        take_string(&mut c),
        take_string(&mut c),
        take_string(&mut c),
        take_string(&mut c),
    ) else {
        return false;
    };
    let mut ours = vec![0x04];
    ours.extend_from_slice(&public.x);
    ours.extend_from_slice(&public.y);
    kind == b"ecdsa-sha2-nistp256-cert-v01@openssh.com"
        && curve == b"nistp256"
        && q == ours.as_slice()
}

fn take_string<'a>(c: &mut &'a [u8]) -> Result<&'a [u8], String> {
    if c.len() < 4 {
        return Err("truncated agent request".into());
    }
    let n = u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize;
    let rest = &c[4..];
    if rest.len() < n {
        return Err("truncated agent request".into());
    }
    let (s, tail) = rest.split_at(n);
    *c = tail;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpints_follow_rfc4251() {
        let mut b = Vec::new();
        mpint(&mut b, &[0, 0, 0x7f]);
        assert_eq!(b, [0, 0, 0, 1, 0x7f]);
        let mut b = Vec::new();
        mpint(&mut b, &[0x80, 1]);
        assert_eq!(b, [0, 0, 0, 3, 0, 0x80, 1]);
        let mut b = Vec::new();
        mpint(&mut b, &[0, 0]);
        assert_eq!(b, [0, 0, 0, 0]);
        let mut c: &[u8] = &[0, 0, 0, 9, 1];
        assert!(take_string(&mut c).is_err());
    }
}
