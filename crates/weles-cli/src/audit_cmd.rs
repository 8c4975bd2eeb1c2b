//! `weles audit verify`: checks a manager's audit log offline.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use weles_proto::api::AUDIT_NAMESPACE;
use weles_proto::audit::{self, Record};

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
        /// Also print the records about this VM.
        #[arg(long)]
        vm: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<Outcome> {
    let AuditCommand::Verify {
        log,
        manager_key,
        vm,
        json,
    } = cmd;
    let key_text = match manager_key {
        Some(k) if k.starts_with("ssh-") => k,
        Some(path) => {
            String::from_utf8_lossy(&read_file(std::path::Path::new(&path))?).into_owned()
        }
        None => weles_client::load_trust()?.manager_key,
    };
    let key = weles_policy::signing::load_public_key(&key_text).context("manager key")?;
    let f = std::fs::File::open(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut shown: Vec<Record> = Vec::new();
    let result = audit::check_log(
        &mut BufReader::new(f),
        false,
        |json, blob| {
            weles_policy::signing::verify_blob(&key, AUDIT_NAMESPACE, json.as_bytes(), blob)
                .map_err(|e| format!("the manager key's signature: {e}"))
        },
        |rec| {
            if vm.is_some() && rec.vm == vm {
                shown.push(rec);
            }
        },
    );
    match result {
        Ok(v) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "intact": true, "verified": v, "records": shown
                    }))?
                );
            } else {
                for r in &shown {
                    let mut e = r.event.clone();
                    if let Some(o) = e.as_object_mut() {
                        o.remove("kind");
                    }
                    println!(
                        "#{} {} {}: {e}",
                        r.seq,
                        r.kind,
                        r.vm.as_deref().unwrap_or("")
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
