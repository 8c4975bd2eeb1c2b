//! `weles audit verify`: checks a manager's audit log offline.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use weles_proto::api::AUDIT_NAMESPACE;
use weles_proto::audit::{self, Body, Record};

use crate::{Outcome, read_file};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log: every record signed by the manager key, numbered without gaps,
    /// chained to the one before. Exit 0: intact; 1: broken (names the line); 2: bad input.
    ///
    /// The manager key is the trusted manager's (`weles manager trust`), or --manager-key.
    /// The printed head (SHA-256 of the last line) lets you detect a truncated log later.
    Verify {
        /// The log (welesd's STATE_DIR/audit.log).
        log: PathBuf,
        /// The manager's public key (an `ssh-ed25519 …` line or a file holding one).
        #[arg(long)]
        manager_key: Option<String>,
        /// Your audit key file (`weles audit key -o F`): opens and authenticates your records.
        #[arg(long)]
        tenant_key: Option<PathBuf>,
        /// Print your records (needs --tenant-key), or only those about this VM.
        #[arg(long)]
        show: bool,
        #[arg(long)]
        vm: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Fetch your audit key from the trusted manager: your records in its audit log are sealed
    /// with it, so the host cannot read them. Written to FILE (mode 0600).
    Key {
        #[arg(short, long)]
        output: PathBuf,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<Outcome> {
    let (log, manager_key, tenant_key, show, vm, json) = match cmd {
        AuditCommand::Key { output } => return fetch_key(&output),
        AuditCommand::Verify {
            log,
            manager_key,
            tenant_key,
            show,
            vm,
            json,
        } => (log, manager_key, tenant_key, show, vm, json),
    };
    let tenant_key: Option<zeroize::Zeroizing<[u8; 32]>> = match &tenant_key {
        None => None,
        Some(path) => {
            let text = zeroize::Zeroizing::new(
                String::from_utf8_lossy(&read_file(path)?).trim().to_owned(),
            );
            let mut k = zeroize::Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.as_str(), k.as_mut())
                .with_context(|| format!("{}: expected 32 bytes of hex", path.display()))?;
            Some(k)
        }
    };
    let show = show || vm.is_some();
    let mut unopened = 0u64;
    let key_text = match manager_key {
        Some(k) if k.starts_with("ssh-") => k,
        Some(path) => {
            String::from_utf8_lossy(&read_file(std::path::Path::new(&path))?).into_owned()
        }
        None => weles_client::load_trust()?.manager_key,
    };
    let key = weles_policy::signing::load_public_key(&key_text).context("manager key")?;
    let f = std::fs::File::open(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut shown: Vec<(Record, Body)> = Vec::new();
    let result = audit::check_log(
        &mut BufReader::new(f),
        false,
        |json, blob| {
            weles_policy::signing::verify_blob(&key, AUDIT_NAMESPACE, json.as_bytes(), blob)
                .map_err(|e| format!("the manager key's signature: {e}"))
        },
        |rec| {
            if !show {
                return;
            }
            match rec.open(tenant_key.as_deref()) {
                Ok(Some(body)) => {
                    if vm.is_none() || body.vm == vm {
                        shown.push((rec, body));
                    }
                }
                Ok(None) => {}
                Err(_) => unopened += 1,
            }
        },
    );
    match result {
        Ok(v) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "intact": true,
                        "verified": v,
                        "records": shown.iter().map(|(r, b)| serde_json::json!({
                            "seq": r.seq, "time_ms": r.time_ms, "kind": r.kind,
                            "tenant": r.tenant, "vm": b.vm, "event": b.event,
                        })).collect::<Vec<_>>(),
                    }))?
                );
            } else {
                for (r, b) in &shown {
                    let mut e = b.event.clone();
                    if let Some(o) = e.as_object_mut() {
                        o.remove("kind");
                    }
                    println!(
                        "#{} {} {}: {e}",
                        r.seq,
                        r.kind,
                        b.vm.as_deref().unwrap_or("")
                    );
                }
                println!(
                    "{}: intact — {} records signed by {}, head {}",
                    log.display(),
                    v.records,
                    key.fingerprint(Default::default()),
                    v.head
                );
            }
            if unopened > 0 {
                eprintln!(
                    "weles: {unopened} sealed records did not open with this key (another tenant's, or altered)"
                );
            }
            Ok(Outcome::Success)
        }
        Err(b) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "intact": false, "line": b.line, "why": b.why })
                );
            } else {
                println!("{}: BROKEN at {b}", log.display());
            }
            Ok(Outcome::Negative)
        }
    }
}

fn fetch_key(output: &std::path::Path) -> anyhow::Result<Outcome> {
    let trust = weles_client::load_trust()?;
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&trust.tls_spki_sha256, &mut pin).context("the trust file's TLS pin")?;
    let mut conn = weles_client::Connection::open(&trust.url, Some(pin))?;
    let signer = weles_client::Signer::from_trust(&trust)?;
    let r = conn.request("GET", "/v1/audit-key", b"", Some(&signer))?;
    let v: serde_json::Value = weles_client::json(&r)?;
    let key = zeroize::Zeroizing::new(v["key"].as_str().unwrap_or_default().to_owned());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    std::io::Write::write_all(&mut f, format!("{}\n", key.as_str()).as_bytes())?;
    eprintln!(
        "audit key of tenant {} written to {}",
        trust.tenant,
        output.display()
    );
    Ok(Outcome::Success)
}
